//! Real daemons outside the happy envelope: a target that runs out of room during a move, an
//! operator who changes a file while it moves, and a target killed in the middle of a drain.
//! Each test holds the job where it needs it (`pp set max active 0` on the target queues its
//! transfers, SIGSTOP freezes it mid-stream) and waits on states with a deadline; nothing
//! sleeps to let a job get somewhere.

use std::collections::BTreeSet;
use std::time::Duration;

use tidepool_tests::{
    CACHED, CACHED_STICKY, Cluster, PRECIOUS, assert_bytes, assert_bytes_many, assert_no_partial_replica, create,
    info_field, ok, report_field, wait_until,
};

/// How long a test waits for a job to get somewhere (a few seconds in a debug build).
const JOB_WAIT: Duration = Duration::from_secs(60);
const SHOW_WAIT: Duration = Duration::from_secs(10);

fn completed_files(info: &str) -> usize {
    report_field(info, "Completed").and_then(|c| c.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The bytes of `Completed  : 222 files; 909312 bytes; 1%`.
fn completed_bytes(info: &str) -> u64 {
    report_field(info, "Completed").and_then(|c| c.split_whitespace().nth(2)).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// A move into a target with room for only half the files (the demo's data-loss case): the
/// target evicts its own cached files to make room, never the copies the move delivered
/// (whose sources are gone, and which carry the sources' older access times). Once only those
/// are left, the job notes "All target pools are full" and keeps waiting; every file is still
/// on exactly one pool with its bytes, also after the target is killed and started again.
#[test]
fn a_move_into_a_small_target_never_evicts_what_it_moved() {
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    cluster.set_capacity("pool2", "1Mi");
    for pool in ["pool1", "pool2"] {
        cluster.append_config(pool, "[migration]\nretry_base_seconds = 1\nretry_cap_seconds = 1\n");
        cluster.start(pool);
    }
    // The files to move first, so their access times are older than the target's own files.
    let sizes: Vec<(usize, u64)> = (0..20).map(|i| (100_000, 100 + i)).collect();
    let files = cluster.put_samples("pool1", &sizes, &["--storage", "test:disk"]);
    let filler = cluster.put_samples("pool2", &[(100_000, 1), (100_000, 2), (100_000, 3), (100_000, 4)], &[]);
    ok(&cluster, "pool1", "pool disable -rdonly\n");

    let job = create(&cluster, "pool1", "migration move -refresh=2 -concurrency=4 pool2");
    // 1 MiB holds 10 of the 100,000-byte files once the 4 of pool2's own are evicted.
    let info = wait_until("the target to fill up", JOB_WAIT, || {
        let info = cluster.migration_info("pool1", &job);
        (completed_files(&info) == 10 && info.contains("All target pools are full")).then_some(info)
    });
    // More tries come and go (retries every second, refreshes every 2 s) without taking room
    // from what was moved.
    let attempts = |info: &str| -> usize {
        report_field(info, "Attempts").and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{info}"))
    };
    let first = attempts(&info);
    let info = wait_until("more attempts", JOB_WAIT, || {
        let info = cluster.migration_info("pool1", &job);
        (attempts(&info) >= first + 8).then_some(info)
    });
    assert_eq!(completed_files(&info), 10, "{info}");
    let state = report_field(&info, "State").unwrap_or_default();
    assert!(["RUNNING", "SLEEPING"].contains(&state), "the job waits for room: {info}");
    // The target says why nothing is removable: its cached files are held.
    let info2 = cluster.info("pool2");
    assert_eq!(info_field(&info2, "Removable"), Some("0 bytes"), "{info2}");
    assert!(info_field(&info2, "Held").is_some_and(|h| h.starts_with("1000000 bytes in 10 ")), "{info2}");
    // The target dies and comes back: the holds were flushed with the copies, so they come back
    // with it, and the job's next tries still take no room from what it moved.
    cluster.kill9("pool2");
    cluster.start("pool2");
    let info2 = cluster.info("pool2");
    assert_eq!(info_field(&info2, "Removable"), Some("0 bytes"), "after the restart: {info2}");
    assert!(info_field(&info2, "Held").is_some_and(|h| h.starts_with("1000000 bytes in 10 ")), "{info2}");
    let first = attempts(&cluster.migration_info("pool1", &job));
    let info = wait_until("more attempts after the restart", JOB_WAIT, || {
        let info = cluster.migration_info("pool1", &job);
        (attempts(&info) >= first + 8).then_some(info)
    });
    assert_eq!(completed_files(&info), 10, "{info}");
    ok(&cluster, "pool1", &format!("migration cancel {job}\n"));
    cluster.wait_for_job("pool1", &job, "CANCELLED", JOB_WAIT);

    let on1: BTreeSet<String> = cluster.rep_ls("pool1").into_iter().map(|r| r.pnfsid).collect();
    let on2: BTreeSet<String> = cluster.rep_ls("pool2").into_iter().map(|r| r.pnfsid).collect();
    for (id, _) in &filler {
        assert!(!on2.contains(id), "pool2's own cached file {id} made room");
    }
    for (id, _) in &files {
        assert!(on1.contains(id) ^ on2.contains(id), "{id} is on exactly one pool (pool1: {on1:?}, pool2: {on2:?})");
    }
    assert_eq!(on2.len(), 10);
    let (moved, kept): (Vec<_>, Vec<_>) = files.iter().cloned().partition(|(id, _)| on2.contains(id));
    assert_bytes(&cluster, "pool2", &moved);
    assert_bytes(&cluster, "pool1", &kept);
    assert_no_partial_replica(&cluster, "pool2");
}

/// An operator runs `rep set precious` and `rep set sticky` on files whose copies are under
/// way (queued on the target). The copies were asked for as the files were (CACHED, no
/// record); the sources are not deleted against them: the job copies the files again, the
/// target's replicas are brought up to the new state and records, and only then do the
/// sources go.
#[test]
fn a_change_to_a_moving_file_reaches_its_copy_before_the_source_goes() {
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    for pool in ["pool1", "pool2"] {
        cluster.start(pool);
    }
    let files = cluster.put_samples("pool1", &[(5_000, 1), (6_000, 2), (7_000, 3)], &["--storage", "test:disk"]);
    let (a, b, c) = (files[0].0.clone(), files[1].0.clone(), files[2].0.clone());
    ok(&cluster, "pool2", "pp set max active 0\n");
    let job = create(&cluster, "pool1", "migration move -concurrency=3 pool2");
    wait_until("the three copies queued in pool2", SHOW_WAIT, || {
        (cluster.pp_ls("pool2").transfers.iter().filter(|t| t.source == "pool1").count() == 3).then_some(())
    });
    ok(&cluster, "pool1", &format!("rep set precious {a}\nrep set sticky -o=ops {b} on\n"));
    ok(&cluster, "pool2", "pp set max active 8\n");
    let info = cluster.wait_for_job("pool1", &job, "FINISHED", JOB_WAIT);
    assert_eq!(completed_files(&info), 3, "{info}");
    assert!(info.contains("Source replica changed while it was copied"), "{info}");

    assert_eq!(cluster.rep_ls("pool1"), vec![], "the sources went once their copies were up to date");
    let flags =
        |id: &str| cluster.rep_ls("pool2").into_iter().find(|r| r.pnfsid == id).map(|r| r.flags).unwrap_or_default();
    assert_eq!(flags(&a), PRECIOUS, "the operator's `rep set precious` reached the copy");
    assert_eq!(flags(&c), CACHED);
    assert_eq!(ok(&cluster, "pool2", &format!("rep sticky ls {b}\n")), "ops : never expires\n");
    assert_eq!(flags(&b), CACHED_STICKY);
    assert_bytes(&cluster, "pool2", &files);
    assert_no_partial_replica(&cluster, "pool2");
}

/// The size of the large files of the kill test.
const LARGE: usize = 12 << 20;

/// Issue 12: a drain whose target dies. `migration move -concurrency=8` of 2,000 small files
/// and 4 large ones; once a few hundred have moved, the target is killed with `kill -9` while
/// it receives one of the large files, and started again. The job carries on by itself and
/// finishes; a second `migration move`, run as an operator would to be sure, finds nothing
/// left. Every file is then on the target exactly once, in its state, with its bytes; the
/// source holds none of them and the target nothing half-made.
///
/// The job learns of the restart at its next refresh (the target answers with a new run) and
/// tries the copies the kill cut off again at once, instead of waiting for its pings (2 minutes)
/// and for finished messages that cannot come (1 more): the test takes seconds, not minutes.
#[test]
fn a_move_whose_target_is_killed_midway_finishes_with_every_file_moved_once() {
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    for pool in ["pool1", "pool2"] {
        cluster.append_config(pool, "[migration]\nretry_base_seconds = 1\nretry_cap_seconds = 1\n");
        cluster.start(pool);
    }
    // 2,000 cached files of 4 KiB (in a few `put`s, each well inside its deadline) and four
    // precious ones of 12 MiB: the state of both kinds must survive the kill.
    let mut files = Vec::new();
    for part in 0..4 {
        let sizes: Vec<(usize, u64)> = (0..500).map(|i| (4096, 1000 + part * 500 + i)).collect();
        files.extend(cluster.put_samples("pool1", &sizes, &["--storage", "test:disk"]));
    }
    let sizes: Vec<(usize, u64)> = (0..4).map(|i| (LARGE, 10 + i)).collect();
    let large = cluster.put_samples("pool1", &sizes, &["--storage", "test:disk", "--precious"]);
    let large_ids: BTreeSet<String> = large.iter().map(|(id, _)| id.clone()).collect();
    files.extend(large);
    let total = files.len();

    let job = create(&cluster, "pool1", "migration move -refresh=2 -concurrency=8 pool2");
    // A few hundred files in, pool2 is frozen (SIGSTOP) while part of a large file is in its
    // incoming/, so that the kill certainly cuts a stream off. (Should all four large files
    // have moved by then, which is rare, the kill comes at once.)
    let cut_off = wait_until("a large file streaming into pool2, a few hundred files in", JOB_WAIT, || {
        let info = cluster.migration_info("pool1", &job);
        if completed_files(&info) <= 200 {
            return None;
        }
        if completed_bytes(&info) >= (4 * LARGE) as u64 {
            return Some(None);
        }
        let (name, _) =
            cluster.incoming("pool2").into_iter().find(|(name, len)| large_ids.contains(name) && *len > 0)?;
        cluster.freeze("pool2");
        if cluster.incoming_len("pool2", &name).is_some_and(|n| n < LARGE as u64) {
            return Some(Some(name));
        }
        // It arrived whole just before the freeze: wait for another.
        cluster.thaw("pool2");
        None
    });
    cluster.kill9("pool2");
    let info = cluster.migration_info("pool1", &job);
    assert!(completed_files(&info) < total, "the kill came before the job had moved everything: {info}");
    if let Some(name) = &cut_off {
        let left = cluster.incoming_len("pool2", name);
        assert!(left.is_some_and(|n| n < LARGE as u64), "the kill left part of {name} in incoming/: {left:?}");
    }

    cluster.start("pool2");
    // The job carries on by itself: it sees the restart, tries the files the kill cut off
    // again, and moves the rest, well within the three minutes its pings and the wait for
    // finished messages would take (the restart's note may have left the last 15 by then).
    let info = cluster.wait_for_job("pool1", &job, "FINISHED", JOB_WAIT);
    assert_eq!(completed_files(&info), total, "{info}");
    let again = create(&cluster, "pool1", "migration move -concurrency=8 pool2");
    let info = cluster.wait_for_job("pool1", &again, "FINISHED", JOB_WAIT);
    assert_eq!(completed_files(&info), 0, "a second move finds nothing left to move: {info}");

    assert_eq!(cluster.rep_ls("pool1"), vec![], "the source holds none of the files");
    let on2 = cluster.rep_ls("pool2");
    let listed: Vec<&str> = on2.iter().map(|r| r.pnfsid.as_str()).collect();
    let mut expected: Vec<&str> = files.iter().map(|(id, _)| id.as_str()).collect();
    expected.sort();
    assert_eq!(listed, expected, "every file is on the target exactly once, and nothing else");
    for r in &on2 {
        let (state, size) = if large_ids.contains(&r.pnfsid) { (PRECIOUS, LARGE) } else { (CACHED, 4096) };
        assert_eq!((r.flags.as_str(), r.size, r.storage_class.as_str()), (state, size as u64, "test:disk"), "{r:?}");
    }
    assert_bytes_many(&cluster, "pool2", &files);
    assert_no_partial_replica(&cluster, "pool2");
}

/// `migration cancel -force` of a move whose target is frozen (SIGSTOP) while it receives a
/// large file: the job is CANCELLED within 5 seconds, without waiting for the target. Once the
/// target runs again the cancel reaches it (the source sends it until it is answered): the
/// copy is dropped with its partial data and never committed, and the source keeps the file,
/// in its state, with its bytes.
#[test]
fn a_forced_cancel_does_not_wait_for_a_frozen_target() {
    const BIG: usize = 64 << 20;
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    for pool in ["pool1", "pool2"] {
        cluster.start(pool);
    }
    let files = cluster.put_samples("pool1", &[(BIG, 7)], &["--storage", "test:disk", "--precious"]);
    let job = create(&cluster, "pool1", "migration move pool2");
    let name = cluster.freeze_while_receiving("pool2", BIG as u64, JOB_WAIT);
    assert_eq!(name, files[0].0);

    let asked = std::time::Instant::now();
    ok(&cluster, "pool1", &format!("migration cancel -force {job}\n"));
    cluster.wait_for_job("pool1", &job, "CANCELLED", Duration::from_secs(5));
    assert!(asked.elapsed() < Duration::from_secs(5), "CANCELLED after {:?}", asked.elapsed());
    cluster.thaw("pool2");
    wait_until("pool2 to drop the cancelled copy", JOB_WAIT, || {
        let counts = cluster.pp_ls("pool2").counts;
        (cluster.incoming("pool2").is_empty() && counts.active == 0 && counts.queued == 0).then_some(())
    });
    assert_no_partial_replica(&cluster, "pool2");
    assert_eq!(cluster.rep_ls("pool2"), vec![], "no copy of the cancelled move was committed");
    let on1 = cluster.rep_ls("pool1");
    assert_eq!(on1.len(), 1, "{on1:?}");
    assert_eq!((on1[0].pnfsid.as_str(), on1[0].flags.as_str()), (files[0].0.as_str(), PRECIOUS));
    assert_bytes(&cluster, "pool1", &files);
}
