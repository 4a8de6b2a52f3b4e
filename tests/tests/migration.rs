//! The migration module between real `tidepool pool` daemons, driven as an operator drives it:
//! `migration ...` commands through `tidepool-admin` scripts, data in with `tidepool put` and
//! back out with `tidepool get`. Every wait polls `migration info` (or `pp ls`) for a state,
//! with a deadline; nothing sleeps to let a job get somewhere.
//!
//! Where a test needs a job caught in the middle, it holds the job there rather than racing
//! it: `pp set max active 0` on the target queues its transfers (the target's admission gate
//! admits none), and [`Cluster::freeze`] (SIGSTOP) stops a target that is receiving a file, so
//! that it can neither commit the file nor confirm it to the job.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use tidepool_p2p::ErrorCode;
use tidepool_tests::{
    CACHED, CACHED_STICKY, Cluster, JobLine, PRECIOUS, PRECIOUS_STICKY, RepLine, assert_bytes,
    assert_no_partial_replica, create, info_field, ok, rc, refused, report_field, started, two_pools, wait_until,
};

/// How long a small job may take to finish (a few seconds at most in a debug build).
const JOB_WAIT: Duration = Duration::from_secs(20);
/// How long a test waits for something it has caused to show (a queued transfer, a state).
const SHOW_WAIT: Duration = Duration::from_secs(10);

fn sorted(mut lines: Vec<RepLine>) -> Vec<RepLine> {
    lines.sort();
    lines
}

/// The dCache book's session (docs/dcache-compatibility.md#commands, docs/dcache-compatibility.md#output):
/// create a copy job, list it, suspend and resume it, follow it to FINISHED, then the commands on a finished
/// job, `clear`, and the concurrency commands.
#[test]
fn the_dcache_book_session() {
    let cluster = two_pools();
    let files = cluster.put_samples("pool1", &[(10_000, 1), (20_000, 2), (30_000, 3)], &["--storage", "test:disk"]);
    let id = files[0].0.clone();
    // pool2 admits no transfer: the job's one copy waits in its queue until this is undone.
    ok(&cluster, "pool2", "pp set max active 0\n");

    let command = format!("migration copy -pnfsid={id} pool2");
    let out = ok(&cluster, "pool1", &format!("{command}\n"));
    let stored = format!("migration copy -pnfsid={id} -- pool2");
    let reply = JobLine::parse(out.trim_end()).unwrap_or_else(|| panic!("not a summary line: {out:?}"));
    assert_eq!((reply.id.as_str(), reply.command.as_str()), ("1", stored.as_str()), "{out}");
    // Just created, the job may still scan, run, or sleep until it knows its targets' space.
    assert!(["INITIALIZING", "RUNNING", "SLEEPING"].contains(&reply.state.as_str()), "{out}");
    assert_eq!(out, format!("[1] {:<12} {stored}\n", reply.state));

    let listed = cluster.migration_ls("pool1");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0].id.as_str(), listed[0].command.as_str()), ("1", stored.as_str()));

    // The copy reaches pool2 and waits there; the job runs (its task is under way).
    wait_until("the job's transfer queued in pool2", SHOW_WAIT, || {
        cluster.pp_ls("pool2").transfers.iter().any(|t| t.pnfsid == id && t.source == "pool1").then_some(())
    });
    assert_eq!(ok(&cluster, "pool1", "migration suspend 1\n"), format!("[1] SUSPENDED    {stored}\n"));
    let info = cluster.migration_info("pool1", "1");
    assert_eq!(report_field(&info, "State"), Some("SUSPENDED"), "{info}");
    assert_eq!(report_field(&info, "Completed"), Some("0 files; 0 bytes; 0%"), "{info}");
    let tasks: Vec<&str> = info.lines().skip_while(|l| *l != "Running tasks:").skip(1).collect();
    let task = tasks.first().unwrap_or_else(|| panic!("no running task while suspended:\n{info}"));
    assert!(
        task.starts_with('[') && task.contains(&format!("] {id}: TASK.")) && task.ends_with(" -> [pool2@local]"),
        "a running task: [<task>] <pnfsid>: TASK.<State> -> [pool2@local]\n{info}"
    );
    // Suspending twice is allowed (SUSPENDED -> SUSPENDED).
    assert_eq!(ok(&cluster, "pool1", "migration suspend 1\n"), format!("[1] SUSPENDED    {stored}\n"));
    assert_eq!(ok(&cluster, "pool1", "migration resume 1\n"), format!("[1] RUNNING      {stored}\n"));
    ok(&cluster, "pool2", "pp set max active 8\n");

    let info = cluster.wait_for_job("pool1", "1", "FINISHED", JOB_WAIT);
    // The layout of docs/dcache-compatibility.md#output: these lines first and in this order (Tidepool's
    // additions come after Concurrency), then the running tasks (none).
    let size = files[0].1.len();
    let head: Vec<&str> = info.lines().take(8).collect();
    assert_eq!(
        head,
        [
            format!("Command    : {stored}"),
            "State      : FINISHED".to_string(),
            "Queued     : 0".to_string(),
            "Attempts   : 1".to_string(),
            "Targets    : pool2".to_string(),
            format!("Completed  : 1 files; {size} bytes"),
            format!("Total      : {size} bytes"),
            "Concurrency: 1".to_string(),
        ],
        "{info}"
    );
    let tasks_at = info.lines().position(|l| l == "Running tasks:").unwrap_or_else(|| panic!("{info}"));
    let after: Vec<&str> = info.lines().skip(tasks_at + 1).collect();
    assert!(after.iter().all(|l| !l.contains(": TASK.")), "no task runs in a finished job:\n{info}");
    let pool_info = cluster.info("pool1");
    assert!(
        pool_info
            .contains(&format!("--- migration (Replica migration module client) ---\n[1] FINISHED     {stored}\n")),
        "the pool's info lists the job:\n{pool_info}"
    );

    // Only that file was copied, byte for byte, as CACHED (copy keeps the source's state).
    let copied = cluster.rep_ls("pool2");
    assert_eq!(
        copied,
        vec![RepLine {
            pnfsid: id.clone(),
            flags: CACHED.into(),
            size: size as u64,
            storage_class: "test:disk".into()
        }]
    );
    assert_bytes(&cluster, "pool2", &files[..1]);
    assert_eq!(cluster.rep_ls("pool1").len(), 3, "a copy leaves the source alone");

    // A finished job: suspend and resume are refused, cancel changes nothing.
    let err = refused(&cluster, "pool1", "migration suspend 1");
    assert!(err.contains("Cannot suspend a job that does not run"), "{err}");
    let err = refused(&cluster, "pool1", "migration resume 1");
    assert!(err.contains("Cannot resume a job that does not run"), "{err}");
    assert_eq!(ok(&cluster, "pool1", "migration cancel 1\n"), format!("[1] FINISHED     {stored}\n"));
    assert_eq!(
        ok(&cluster, "pool1", "migration concurrency 1 2\n"),
        "[1] Concurrency set to 2 (Warning: this command is deprecated, please use 'migration set concurrency')\n"
    );
    assert_eq!(ok(&cluster, "pool1", "migration set concurrency 1 3\n"), "[1] Concurrency set to 3\n");
    let err = refused(&cluster, "pool1", "migration info 7");
    assert!(err.contains(&rc(ErrorCode::JobNotFound)), "{err}");

    assert_eq!(ok(&cluster, "pool1", "migration clear\n"), "");
    assert_eq!(cluster.migration_ls("pool1"), vec![]);
    let err = refused(&cluster, "pool1", "migration info 1");
    assert!(err.contains(&rc(ErrorCode::JobNotFound)), "{err}");

    // The default concurrency applies to jobs created afterwards.
    assert_eq!(
        ok(
            &cluster,
            "pool1",
            "migration get concurrency-default\nmigration set concurrency-default 3\nmigration get concurrency-default\n"
        ),
        "Current default concurrency: 1\nDefault concurrency set to 3\nCurrent default concurrency: 3\n"
    );
    let err = refused(&cluster, "pool1", "migration set concurrency-default 0");
    assert!(err.contains("Default concurrency must be positive."), "{err}");
    let job = create(&cluster, "pool1", "migration copy pool2");
    assert_eq!(job, "2", "the id counter goes on after a clear");
    let info = cluster.wait_for_job("pool1", &job, "FINISHED", JOB_WAIT);
    assert_eq!(report_field(&info, "Concurrency"), Some("3"), "{info}");
    assert_eq!(cluster.rep_ls("pool2").len(), 3, "{:?}", cluster.rep_ls("pool2"));
    assert_bytes(&cluster, "pool2", &files);
}

/// Vacating a pool: `pool disable -rdonly`, then `migration move pool2`. Afterwards the source
/// is empty and the target holds every file with the same state, sticky records, size,
/// storage class and bytes.
#[test]
fn move_vacates_a_read_only_pool() {
    let cluster = two_pools();
    let mut files = Vec::new();
    // 30 files: cached, precious, sticky cached and sticky precious, of sizes from 0 bytes to
    // over 1 MiB (more than one data frame).
    let sizes = |base: u64| -> Vec<(usize, u64)> {
        [0usize, 1, 4096, 65_536, 100_000, 1_500_000, 7, 300_000]
            .iter()
            .enumerate()
            .map(|(i, &len)| (len, base + i as u64))
            .collect()
    };
    files.extend(cluster.put_samples("pool1", &sizes(100), &["--storage", "test:disk"]));
    files.extend(cluster.put_samples("pool1", &sizes(200), &["--storage", "test:tape", "--precious"]));
    files.extend(cluster.put_samples("pool1", &sizes(300)[..7], &["--storage", "test:disk", "--sticky", "alice"]));
    files.extend(cluster.put_samples(
        "pool1",
        &sizes(400)[..7],
        &["--storage", "test:tape", "--precious", "--sticky", "bob", "--sticky", "carol:86400"],
    ));
    assert_eq!(files.len(), 30);
    let before = cluster.rep_ls("pool1");
    let flags: BTreeSet<&str> = before.iter().map(|r| r.flags.as_str()).collect();
    assert_eq!(flags, BTreeSet::from([CACHED, CACHED_STICKY, PRECIOUS, PRECIOUS_STICKY]));
    let sticky_before: Vec<String> = before
        .iter()
        .filter(|r| r.flags.contains('X'))
        .map(|r| ok(&cluster, "pool1", &format!("rep sticky ls {}\n", r.pnfsid)))
        .collect();

    assert_eq!(ok(&cluster, "pool1", "pool disable -rdonly\n"), "Pool disabled\n");
    let job = create(&cluster, "pool1", "migration move pool2");
    let info = cluster.wait_for_job("pool1", &job, "FINISHED", JOB_WAIT);
    let total: usize = files.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(report_field(&info, "Completed"), Some(format!("30 files; {total} bytes").as_str()), "{info}");
    assert_eq!(report_field(&info, "Total"), Some(format!("{total} bytes").as_str()), "{info}");

    assert_eq!(cluster.rep_ls("pool1"), vec![], "the vacated pool is empty");
    let info1 = cluster.info("pool1");
    assert_eq!(info_field(&info1, "Used"), Some("0 bytes"), "{info1}");
    assert_eq!(info_field(&info1, "Mode"), Some("disabled(store,stage,p2p-client)"), "{info1}");
    assert_eq!(cluster.rep_ls("pool2"), before, "the same replicas, states, sizes and classes");
    let sticky_after: Vec<String> = before
        .iter()
        .filter(|r| r.flags.contains('X'))
        .map(|r| ok(&cluster, "pool2", &format!("rep sticky ls {}\n", r.pnfsid)))
        .collect();
    for (b, a) in sticky_before.iter().zip(&sticky_after) {
        // Lifetimes are absolute times: the same expiry on both sides.
        assert_eq!(a, b, "the sticky records moved with the file");
    }
    assert!(sticky_after.iter().any(|s| s == "alice : never expires\n"), "{sticky_after:?}");
    assert!(sticky_after.iter().any(|s| s.starts_with("bob : never expires\ncarol : expires ")), "{sticky_after:?}");
    assert_bytes(&cluster, "pool2", &files);
    assert_no_partial_replica(&cluster, "pool2");
}

/// `migration move -pins=keep`: a pinned file stays on the source, as a CACHED replica with
/// only its pin (the other sticky records go, as with `-smode=removable`), and is copied too;
/// files without a pin are moved.
#[test]
fn move_with_pins_kept_leaves_pinned_files_cached_with_only_their_pin() {
    let cluster = two_pools();
    let files = cluster.put_samples("pool1", &[(5000, 1), (6000, 2), (7000, 3)], &["--precious", "--sticky", "alice"]);
    let [pinned, sticky, plain] = [&files[0].0, &files[1].0, &files[2].0];
    ok(
        &cluster,
        "pool1",
        &format!(
            "rep set sticky -o=PinManager-test1 {pinned} on\nrep set sticky -o=alice {plain} off\nrep set cached {plain}\n"
        ),
    );
    assert_eq!(
        ok(&cluster, "pool1", &format!("rep sticky ls {pinned}\n")),
        "alice : never expires\nPinManager-test1 : never expires\n"
    );
    let line = |id: &str, flags: &str, size: u64| RepLine {
        pnfsid: id.into(),
        flags: flags.into(),
        size,
        storage_class: "<unknown>".into(),
    };
    assert_eq!(
        cluster.rep_ls("pool1"),
        sorted(vec![
            line(pinned, PRECIOUS_STICKY, 5000),
            line(sticky, PRECIOUS_STICKY, 6000),
            line(plain, CACHED, 7000)
        ])
    );

    let job = create(&cluster, "pool1", "migration move -pins=keep pool2");
    cluster.wait_for_job("pool1", &job, "FINISHED", JOB_WAIT);

    assert_eq!(cluster.rep_ls("pool1"), vec![line(pinned, CACHED_STICKY, 5000)], "only the pinned file stays");
    assert_eq!(ok(&cluster, "pool1", &format!("rep sticky ls {pinned}\n")), "PinManager-test1 : never expires\n");
    // The target gets the source's state and its sticky records but not the pin (-pins=keep).
    assert_eq!(
        cluster.rep_ls("pool2"),
        sorted(vec![
            line(pinned, PRECIOUS_STICKY, 5000),
            line(sticky, PRECIOUS_STICKY, 6000),
            line(plain, CACHED, 7000)
        ])
    );
    assert_eq!(ok(&cluster, "pool2", &format!("rep sticky ls {pinned}\n")), "alice : never expires\n");
    assert_eq!(ok(&cluster, "pool2", &format!("rep sticky ls {sticky}\n")), "alice : never expires\n");
    assert_bytes(&cluster, "pool2", &files);
    assert_bytes(&cluster, "pool1", &files[..1]);
}

/// `migration cache -target=pgroup cache`: the source keeps everything; every file gets one
/// CACHED, non-sticky copy on one pool of the group.
#[test]
fn cache_to_a_pool_group_places_each_file_once() {
    let cluster = started(&[("pool1", &["disk"]), ("pool2", &["cache"]), ("pool3", &["cache"])]);
    let seeds: Vec<(usize, u64)> = (0..12).map(|i| (1000 + 997 * i as usize, 50 + i)).collect();
    let mut files = cluster.put_samples("pool1", &seeds[..6], &["--storage", "test:disk"]);
    files.extend(cluster.put_samples("pool1", &seeds[6..10], &["--storage", "test:tape", "--precious"]));
    files.extend(cluster.put_samples("pool1", &seeds[10..], &["--storage", "test:disk", "--sticky", "alice"]));
    let before = cluster.rep_ls("pool1");

    let job = create(&cluster, "pool1", "migration cache -target=pgroup cache");
    let info = cluster.wait_for_job("pool1", &job, "FINISHED", JOB_WAIT);
    assert_eq!(report_field(&info, "Targets"), Some("pool2,pool3"), "{info}");

    assert_eq!(cluster.rep_ls("pool1"), before, "a cache job leaves the source untouched");
    let mut copies: Vec<RepLine> = cluster.rep_ls("pool2");
    copies.extend(cluster.rep_ls("pool3"));
    let expected: Vec<RepLine> = before.iter().map(|r| RepLine { flags: CACHED.into(), ..r.clone() }).collect();
    assert_eq!(sorted(copies), expected, "each file exactly once over pool2 and pool3, CACHED and not sticky");
    for pool in ["pool2", "pool3"] {
        let held: Vec<(String, Vec<u8>)> = {
            let ids: BTreeSet<String> = cluster.rep_ls(pool).into_iter().map(|r| r.pnfsid).collect();
            files.iter().filter(|(id, _)| ids.contains(id)).cloned().collect()
        };
        assert_bytes(&cluster, pool, &held);
        assert_no_partial_replica(&cluster, pool);
    }
}

/// The same copy job run a second time finds every file on the target already: it finishes
/// without a single transfer, and the target's data files are not rewritten.
#[test]
fn a_second_run_of_a_copy_job_transfers_nothing() {
    let cluster = two_pools();
    let seeds: Vec<(usize, u64)> = (0..8).map(|i| (50_000 + 1000 * i as usize, 700 + i)).collect();
    let files = cluster.put_samples("pool1", &seeds, &["--storage", "test:disk"]);

    let first = create(&cluster, "pool1", "migration copy -concurrency=2 pool2");
    cluster.wait_for_job("pool1", &first, "FINISHED", JOB_WAIT);
    let copied = cluster.rep_ls("pool2");
    assert_eq!(copied, cluster.rep_ls("pool1"));
    let transfers = cluster.pp_ls("pool2").transfers;
    assert_eq!(transfers.len(), files.len(), "one transfer per file: {transfers:?}");
    let inodes = |cluster: &Cluster| -> Vec<(u64, i64, i64)> {
        files
            .iter()
            .map(|(id, _)| {
                let path = cluster.data_dir("pool2").join("data").join(id);
                let m = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                (m.ino(), m.mtime(), m.mtime_nsec())
            })
            .collect()
    };
    let data_before = inodes(&cluster);

    let second = create(&cluster, "pool1", "migration copy -concurrency=2 pool2");
    assert_ne!(second, first);
    let info = cluster.wait_for_job("pool1", &second, "FINISHED", JOB_WAIT);
    assert_eq!(report_field(&info, "Queued"), Some("0"), "{info}");
    assert!(report_field(&info, "Completed").is_some_and(|c| c.starts_with("8 files;")), "{info}");

    assert_eq!(cluster.pp_ls("pool2").transfers, transfers, "no new transfer on the target");
    assert_eq!(inodes(&cluster), data_before, "the target's data files were not rewritten");
    assert_eq!(cluster.rep_ls("pool2"), copied);
    assert_bytes(&cluster, "pool2", &files);
}

/// `migration cancel -force` while a file is half received: the job ends CANCELLED, the target
/// keeps no partial replica, and the job can be run again to completion.
///
/// The cancel lands mid-way for certain: pool2 is frozen (SIGSTOP) once it holds part of a
/// file, so it can neither commit that file nor tell the job it has it; the job cannot have
/// finished. pool2 is thawed after the cancel was accepted, so it sees the cancel while its
/// transfer is still open (or, if the rest of the file was already in the socket buffers,
/// completes that one file first, which leaves a complete replica: also allowed).
#[test]
fn a_forced_cancel_mid_way_leaves_no_partial_replica_and_the_job_can_run_again() {
    const FILES: u64 = 6;
    const SIZE: usize = 32 << 20;
    let mut cluster = two_pools();
    let seeds: Vec<(usize, u64)> = (0..FILES).map(|i| (SIZE, 900 + i)).collect();
    let files = cluster.put_samples("pool1", &seeds, &[]);
    let source_before = cluster.rep_ls("pool1");

    let job = create(&cluster, "pool1", "migration copy -concurrency=1 pool2");
    cluster.freeze_while_receiving("pool2", SIZE as u64, JOB_WAIT);
    let running = cluster.migration_ls("pool1");
    assert_eq!(running.len(), 1);
    assert!(!["FINISHED", "CANCELLED", "FAILED"].contains(&running[0].state.as_str()), "{running:?}");

    let out = ok(&cluster, "pool1", &format!("migration cancel -force {job}\n"));
    let reply = JobLine::parse(out.trim_end()).unwrap_or_else(|| panic!("not a summary line: {out:?}"));
    assert!(["CANCELLING", "CANCELLED"].contains(&reply.state.as_str()), "{out}");
    cluster.thaw("pool2");
    let info = cluster.wait_for_job("pool1", &job, "CANCELLED", JOB_WAIT);
    let completed: u64 = report_field(&info, "Completed")
        .and_then(|c| c.split_once(" files;"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0);
    assert!(completed < FILES, "the job was cancelled before it copied every file:\n{info}");
    assert_eq!(report_field(&info, "Total"), None, "a CANCELLED job shows no Total line:\n{info}");

    // The target ends its side of the copy too, and nothing half-made is left.
    wait_until("pool2 ending its transfers", SHOW_WAIT, || {
        let counts = cluster.pp_ls("pool2").counts;
        (counts.active + counts.queued == 0).then_some(())
    });
    assert_no_partial_replica(&cluster, "pool2");
    let kept = cluster.rep_ls("pool2");
    assert!(kept.len() < FILES as usize, "{kept:?}");
    for r in &kept {
        assert_eq!((r.flags.as_str(), r.size), (CACHED, SIZE as u64), "{r:?}");
    }
    let kept_files: Vec<(String, Vec<u8>)> =
        files.iter().filter(|(id, _)| kept.iter().any(|r| r.pnfsid == *id)).cloned().collect();
    assert_bytes(&cluster, "pool2", &kept_files);
    assert_eq!(cluster.rep_ls("pool1"), source_before, "a copy changes nothing on the source");
    wait_until("pool1 ending its outgoing stream", SHOW_WAIT, || {
        (cluster.pp_ls("pool1").counts.outgoing == 0).then_some(())
    });

    // Run again: it completes, and pool2 holds every file.
    let again = create(&cluster, "pool1", "migration copy -concurrency=2 pool2");
    cluster.wait_for_job("pool1", &again, "FINISHED", JOB_WAIT);
    assert_eq!(cluster.rep_ls("pool2"), source_before);
    assert_bytes(&cluster, "pool2", &files);
    assert_no_partial_replica(&cluster, "pool2");
}

/// One file's journey (docs/troubleshooting.md, "Following one file"): with the migration
/// module at debug on both pools, every line about the file's copy, on the source and on the
/// target, names its attempt (with the job, the task and the pnfsid) and its pool, so one grep
/// per pool follows it from the command to the target's commit.
#[test]
fn one_files_journey_shares_its_attempt_id_in_the_logs_of_both_pools() {
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    let filter = [("RUST_LOG", "info,tidepool_migration=debug,tidepool_pool::transfer=debug")];
    cluster.start_with_env("pool1", &filter);
    cluster.start_with_env("pool2", &filter);
    // Two small files (copied in one batch) and a large one (copied on its own).
    let files = cluster.put_samples("pool1", &[(10_000, 1), (20_000, 2), (1_500_000, 3)], &["--storage", "test:disk"]);
    let job = create(&cluster, "pool1", "migration move pool2");
    cluster.wait_for_job("pool1", &job, "FINISHED", JOB_WAIT);
    let (source, target) = (cluster.log("pool1"), cluster.log("pool2"));
    for id in [&files[0].0, &files[2].0] {
        follow(&job, id, &source, &target);
    }
}

/// One grep for the attempt of `id` per pool finds each step of its copy, and every line
/// names its pool, job, task and pnfsid.
#[track_caller]
fn follow(job: &str, id: &str, source: &str, target: &str) {
    let sent = source
        .lines()
        .find(|l| l.contains("copy sent") && l.contains(&format!("pnfsid={id} ")))
        .unwrap_or_else(|| panic!("no `copy sent` line for {id} in the source's log:\n{source}"));
    let attempt = sent.split("attempt=").nth(1).and_then(|rest| rest.split(' ').next()).expect("an attempt field");
    let needle = format!("attempt={attempt}");
    for (pool, log, steps) in [
        (
            "pool1",
            source,
            &["copy sent", "copy accepted", "finished received: copy done", "task done", "source mode applied"][..],
        ),
        ("pool2", target, &["copy admitted", "replica received", "copy done"][..]),
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&needle)).collect();
        for step in steps {
            assert!(lines.iter().any(|l| l.contains(step)), "{pool}: no `{step}` line for {needle}:\n{log}");
        }
        for line in &lines {
            assert!(
                line.contains(&format!("pool{{name={pool}}}"))
                    && line.contains(&format!("job={job}"))
                    && line.contains("task=")
                    && line.contains(&format!("pnfsid={id}")),
                "{pool}: a line of {needle} without its pool, job, task or pnfsid: {line}"
            );
        }
        // Every line about the file names its pool, whatever it is about.
        for line in log.lines().filter(|l| l.contains(id)) {
            assert!(line.contains(&format!("pool{{name={pool}}}")), "{pool}: a line without its pool: {line}");
        }
    }
}
