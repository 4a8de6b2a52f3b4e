//! A crash at every commit boundary: real daemons started with a named fault point armed
//! (`TIDEPOOL_FAULT_POINTS`, see pool/src/faults.rs) are driven to it, abort there (SIGABRT),
//! and are started again without it. After each restart: nothing acknowledged is lost (every
//! put acknowledged before the crash reads back byte for byte, its ADLER32 checked end to end;
//! a moved file is on the source or the target), nothing partial is visible (no replica listed
//! without its data, nothing in `incoming/`), and no ghost record is left. A data file without
//! a record (left by a crash after a rename, or between a removal's record and its data file)
//! is never served: the restart deletes it and its recovery report says so, and no such file
//! is left.
//!
//! The points and what a crash there leaves are listed in docs/testing.md.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use tidepool_tests::{Cluster, assert_bytes, assert_no_partial_replica, create, ok, sample_bytes, started};

const CRASH_WAIT: Duration = Duration::from_secs(30);
const ENV: &str = "TIDEPOOL_FAULT_POINTS";

type Files = Vec<(String, Vec<u8>)>;

/// Starts `pool` with `points` armed, runs `trigger` (which drives it to the point), and
/// checks that it aborted there; then starts it again with nothing armed.
#[track_caller]
fn crash_at(cluster: &mut Cluster, pool: &str, points: &str, abort_at: &str, trigger: impl FnOnce(&Cluster)) {
    if cluster.is_running(pool) {
        cluster.stop(pool);
    }
    cluster.start_with_env(pool, &[(ENV, points)]);
    trigger(cluster);
    let status = cluster.wait_for_exit(pool, CRASH_WAIT);
    assert_eq!(
        status.signal(),
        Some(rustix::process::Signal::ABORT.as_raw()),
        "{pool} aborted at {abort_at}: {status}"
    );
    let needle = format!("fault point {abort_at} reached: aborting");
    assert!(cluster.log(pool).contains(&needle), "the log of {pool} says it reached {abort_at}");
    cluster.start(pool);
}

/// The files in the pool's `data/`.
fn data_files(cluster: &Cluster, pool: &str) -> BTreeSet<String> {
    let dir = cluster.data_dir(pool).join("data");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// Nothing partial, no replica listed without its data, and no data file without a record.
/// Returns the listed pnfsids.
#[track_caller]
fn assert_consistent(cluster: &Cluster, pool: &str) -> BTreeSet<String> {
    assert_no_partial_replica(cluster, pool);
    let listed: BTreeSet<String> = cluster.rep_ls(pool).into_iter().map(|r| r.pnfsid).collect();
    let data = data_files(cluster, pool);
    let ghosts: Vec<&String> = listed.difference(&data).collect();
    assert!(ghosts.is_empty(), "{pool} lists replicas without data: {ghosts:?}");
    let orphans: Vec<&String> = data.difference(&listed).collect();
    assert!(orphans.is_empty(), "{pool}: data files without a record are left: {orphans:?}\n{}", cluster.info(pool));
    listed
}

/// The recovery report of the pool's last start says it deleted a data file that no record
/// names (what a crash between a data file and its record leaves).
#[track_caller]
fn assert_orphan_deleted(cluster: &Cluster, pool: &str, at: &str) {
    let info = cluster.info(pool);
    let recovery = info.split("--- recovery at start ---").nth(1).unwrap_or("");
    assert!(recovery.contains("data file(s) that no record names"), "{at}: the orphan is reported deleted:\n{info}");
}

/// Puts `n` files of a few sizes (up to 2 MiB) into `pool`; returns them.
fn put_some(cluster: &Cluster, pool: &str, n: u64, seed: u64) -> Files {
    let sizes: Vec<(usize, u64)> = (0..n).map(|i| ([100, 70_000, 2 << 20][(i % 3) as usize], seed + i)).collect();
    cluster.put_samples(pool, &sizes, &[])
}

/// A put that the crash interrupts: it must not succeed. Returns the bytes it tried to store.
fn interrupted_put(cluster: &Cluster, pool: &str, seed: u64) -> Vec<u8> {
    let bytes = sample_bytes(300_000, seed);
    let path = cluster.write_file(&format!("crash-{seed}.dat"), &bytes);
    let out = cluster.put(pool, &[path.as_path()], &[]);
    assert_ne!(out.code, Some(0), "a put whose commit crashed is not acknowledged\n{out}");
    bytes
}

/// Every commit boundary, one after the other on the same pool (so recovery also runs over
/// earlier recoveries): files acknowledged before each crash survive it; the interrupted put
/// is either absent or complete.
#[test]
fn a_crash_at_each_commit_boundary_loses_nothing_acknowledged() {
    let mut cluster = started(&[("pool1", &[])]);
    let mut acked: Files = Vec::new();
    // A failed sync needs no undo (no record names the batch yet): its data files are deleted
    // at once, which a_failed_sync_or_flush_keeps_nothing_of_the_batch checks.
    let cases: [(&str, &str); 6] = [
        ("commit-before-rename=abort", "commit-before-rename"),
        ("commit-after-rename=abort", "commit-after-rename"),
        ("commit-after-sync=abort", "commit-after-sync"),
        ("commit-after-records=abort", "commit-after-records"),
        ("commit-after-flush=abort", "commit-after-flush"),
        ("commit-fail-flush=fail,commit-undo-before-flush=abort", "commit-undo-before-flush"),
    ];
    for (i, (points, at)) in cases.iter().enumerate() {
        let seed = 1000 * (i as u64 + 1);
        acked.extend(put_some(&cluster, "pool1", 3, seed));
        let listed_before = assert_consistent(&cluster, "pool1");
        let mut attempted = Vec::new();
        crash_at(&mut cluster, "pool1", points, at, |c| attempted = interrupted_put(c, "pool1", seed + 500));
        assert_bytes(&cluster, "pool1", &acked);
        let listed = assert_consistent(&cluster, "pool1");
        let new: Vec<&String> = listed.difference(&listed_before).collect();
        assert!(new.len() <= 1, "{at}: at most the interrupted put is new: {new:?}");
        for id in new {
            // Committed although never acknowledged (the crash came after the flush): whole.
            assert_eq!(cluster.get_bytes("pool1", id), attempted, "{at}: {id} is the interrupted put, complete");
            acked.push((id.clone(), attempted.clone()));
        }
        if at.starts_with("commit-undo") || *at == "commit-before-rename" {
            assert_eq!(listed, listed_before, "{at}: nothing of the interrupted put is kept");
        }
        if ["commit-after-rename", "commit-after-sync"].contains(at) {
            assert_orphan_deleted(&cluster, "pool1", at);
        }
    }
}

/// A commit whose sync or flush fails (a fault point fails it) is undone while the pool runs:
/// the client is told, nothing of the replica is listed or left in `data/`.
#[test]
fn a_failed_sync_or_flush_keeps_nothing_of_the_batch() {
    let mut cluster = started(&[("pool1", &[])]);
    let acked = put_some(&cluster, "pool1", 2, 1);
    for points in ["commit-fail-sync=fail", "commit-fail-flush=fail"] {
        cluster.stop("pool1");
        cluster.start_with_env("pool1", &[(ENV, points)]);
        let bytes = sample_bytes(5000, 77);
        let path = cluster.write_file("failing.dat", &bytes);
        let out = cluster.put("pool1", &[path.as_path()], &[]);
        assert_eq!(out.code, Some(1), "{points}: the put fails\n{out}");
        assert!(out.stderr.contains("injected by a fault point"), "{points}: the client is told why\n{out}");
        let listed = assert_consistent(&cluster, "pool1");
        assert_eq!(listed, acked.iter().map(|(id, _)| id.clone()).collect(), "{points}: nothing new is listed");
        assert_eq!(data_files(&cluster, "pool1"), listed, "{points}: no data file is left");
        assert_bytes(&cluster, "pool1", &acked);
    }
}

/// A migration source crashing around the removal of its replica after a confirmed copy, and
/// `save` crashing around the write of the saved jobs.
#[test]
fn a_crash_in_the_source_mode_or_the_saved_job_write_loses_nothing() {
    let mut cluster = started(&[("pool1", &[]), ("pool2", &[])]);

    // `save`: before the write, the previous saved set comes back; after it, the new one.
    // (`crash_at` restarts the pool first, so the jobs are created in the armed process.)
    let job_a = "migration copy -permanent -pnfsid=0000AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA pool2";
    let job_b = "migration copy -permanent -pnfsid=0000BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB pool2";
    let mut first = String::new();
    crash_at(&mut cluster, "pool1", "save-after-write=abort", "save-after-write", |c| {
        first = create(c, "pool1", job_a);
        let out = c.admin_in("pool1", "save\n");
        assert_ne!(out.code, Some(0), "the pool died in `save`\n{out}");
    });
    let ids: Vec<String> = cluster.migration_ls("pool1").into_iter().map(|j| j.id).collect();
    assert_eq!(ids, vec![first.clone()], "a save that reached the disk comes back");
    // Saved again from this process, so that stopping it for the next crash keeps job A.
    ok(&cluster, "pool1", "save\n");
    crash_at(&mut cluster, "pool1", "save-before-write=abort", "save-before-write", |c| {
        let second = create(c, "pool1", job_b);
        assert_ne!(second, first);
        let out = c.admin_in("pool1", "save\n");
        assert_ne!(out.code, Some(0), "the pool died in `save`\n{out}");
    });
    let jobs = cluster.migration_ls("pool1");
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    assert_eq!(ids, vec![first.clone()], "the save that never reached the disk changed nothing: {jobs:?}");
    assert!(jobs.iter().all(|j| j.state != "UNRESTORED"), "{jobs:?}");
    ok(&cluster, "pool1", &format!("migration cancel {first}\nsave\n"));

    // The source mode: a crash before, between (record gone, data file not yet), and after the
    // removal of a moved replica.
    let mut files: Files = Vec::new();
    for (i, at) in ["source-before-remove", "remove-before-data-delete", "source-after-remove"].iter().enumerate() {
        files.extend(put_some(&cluster, "pool1", 2, 5000 + 100 * i as u64));
        crash_at(&mut cluster, "pool1", &format!("{at}=abort"), at, |c| {
            create(c, "pool1", "migration move -concurrency=1 pool2");
        });
        let source = assert_consistent(&cluster, "pool1");
        let target = assert_consistent(&cluster, "pool2");
        if *at == "remove-before-data-delete" {
            assert_orphan_deleted(&cluster, "pool1", at);
        }
        for (id, bytes) in &files {
            let pool = if target.contains(id) {
                "pool2"
            } else {
                assert!(source.contains(id), "{at}: {id} is on neither pool");
                "pool1"
            };
            assert_bytes(&cluster, pool, &[(id.clone(), bytes.clone())]);
        }
        assert!(!target.is_empty(), "{at}: the copy was confirmed before the crash");
    }
}
