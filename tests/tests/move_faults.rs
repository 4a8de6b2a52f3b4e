//! Real daemons outside the happy envelope: a target that runs out of room during a move, and
//! an operator who changes a file while it moves. Each test holds the job where it needs it
//! (`pp set max active 0` on the target queues its transfers) and waits on states with a
//! deadline; nothing sleeps to let a job get somewhere.

use std::collections::BTreeSet;
use std::time::Duration;

use tidepool_tests::{
    CACHED, CACHED_STICKY, Cluster, PRECIOUS, assert_bytes, assert_no_partial_replica, create, info_field, ok,
    report_field, wait_until,
};

/// How long a test waits for a job to get somewhere (a few seconds in a debug build).
const JOB_WAIT: Duration = Duration::from_secs(60);
const SHOW_WAIT: Duration = Duration::from_secs(10);

fn completed_files(info: &str) -> usize {
    report_field(info, "Completed").and_then(|c| c.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0)
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
