//! Real daemons on real tiny file systems: a pool whose data directory is a tmpfs of a few tens
//! of MiB, smaller than its configured capacity (256 MiB), so that the disk, not the capacity,
//! runs out. The tests mount the tmpfs themselves; they need root, as CI has. Without root
//! they print that they are skipped and why, and return; as root a mount that fails fails the
//! test. The tmpfs is unmounted when the test ends, passed or failed (`Cluster` drops it after
//! killing its pools).
//!
//! See docs/durability.md ("A full disk") for what the pool does when its disk fills up.

use std::time::Duration;

use tidepool_tests::{
    Cluster, assert_bytes, assert_no_partial_replica, create, fill_disk, ok, report_field, sample_bytes, wait_until,
};

/// Files stored in a pool: pnfsid and bytes.
type Files = Vec<(String, Vec<u8>)>;

/// The size of each test's tmpfs, in MiB: room for the pool's disk reserve (8 MiB) and a few
/// tens of MiB of data.
const TMPFS_MIB: u64 = 40;
/// How long a test waits for something it has caused to show.
const SHOW_WAIT: Duration = Duration::from_secs(30);

/// The names of the files in the pool's `data/`, sorted.
fn data_files(cluster: &Cluster, pool: &str) -> Vec<String> {
    let dir = cluster.data_dir(pool).join("data");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every replica the pool lists is complete and has its data file, and every data file belongs
/// to a listed replica: no record without data, no data without a record, nothing partial.
#[track_caller]
fn assert_listing_matches_data(cluster: &Cluster, pool: &str) {
    assert_no_partial_replica(cluster, pool);
    let listed: Vec<String> = cluster.rep_ls(pool).into_iter().map(|r| r.pnfsid).collect();
    assert_eq!(listed, data_files(cluster, pool), "{pool}: the replicas listed are exactly the data files");
}

/// Puts one file of `len` sample bytes (seed `seed`); returns its pnfsid and bytes, or the
/// error `tidepool put` printed.
fn try_put(cluster: &Cluster, pool: &str, len: usize, seed: u64) -> Result<(String, Vec<u8>), String> {
    let bytes = sample_bytes(len, seed);
    let path = cluster.write_file(&format!("sample-{seed}.dat"), &bytes);
    let out = cluster.put(pool, &[path.as_path()], &[]);
    let _ = std::fs::remove_file(&path);
    match out.code {
        Some(0) => Ok((tidepool_tests::parse_put(&out.stdout, &[path.as_path()]).remove(0), bytes)),
        _ => Err(out.stderr),
    }
}

/// D5: a pool whose disk is full restarts, and the operator frees space with `rep rm`; then
/// new data is accepted again. Before the fix, sled could not open its metadata on the full
/// disk ("No space left on device") and nothing could be freed through Tidepool.
#[test]
fn a_pool_restarts_on_a_full_disk_and_rep_rm_frees_space() {
    let mut cluster = Cluster::new(&[("pool1", &[])]);
    if !cluster.mount_tmpfs("pool1", TMPFS_MIB) {
        return;
    }
    cluster.start("pool1");
    let reserve = cluster.data_dir("pool1").join("reserve");
    assert!(reserve.is_file(), "the pool keeps a disk reserve in {}", reserve.display());

    // Fill the disk through the pool: 4 MiB files until a put is refused for lack of disk.
    const LEN: usize = 4 << 20;
    let mut stored = Vec::new();
    let refusal = loop {
        match try_put(&cluster, "pool1", LEN, stored.len() as u64) {
            Ok(file) => stored.push(file),
            Err(e) => break e,
        }
        assert!(stored.len() < 20, "a {TMPFS_MIB} MiB disk took {} files of 4 MiB", stored.len());
    };
    assert!(refusal.contains("disk full") && refusal.contains("rc=10005"), "{refusal}");
    assert!(stored.len() >= 3, "only {} files fitted", stored.len());
    assert_listing_matches_data(&cluster, "pool1");

    // The pool dies, and another writer takes every byte left on the file system.
    cluster.kill9("pool1");
    let filler = cluster.data_dir("pool1").join("filler");
    fill_disk(&filler);

    // It starts all the same, saying why it had to release its reserve.
    cluster.start("pool1");
    cluster.wait_for_log_line("pool1", &["released the disk reserve", "opening the metadata failed"], SHOW_WAIT);
    assert!(!reserve.exists(), "the reserve was released");
    assert_bytes(&cluster, "pool1", &stored);
    let refusal = try_put(&cluster, "pool1", 1000, 100).expect_err("a full disk takes no new data");
    assert!(refusal.contains("disk reserve is released") && refusal.contains("rc=10005"), "{refusal}");

    // The operator frees space through the pool.
    for (id, _) in stored.drain(..3) {
        assert_eq!(ok(&cluster, "pool1", &format!("rep rm {id}\n")), format!("Removed {id}\n"));
    }
    let (id, bytes) = try_put(&cluster, "pool1", LEN, 200).expect("new data is accepted once space is freed");
    cluster.wait_for_log_line("pool1", &["disk reserve in place"], SHOW_WAIT);
    assert!(reserve.is_file(), "the reserve is back");
    stored.push((id, bytes));
    assert_bytes(&cluster, "pool1", &stored);
    assert_listing_matches_data(&cluster, "pool1");

    // And it restarts cleanly.
    cluster.stop("pool1");
    cluster.start("pool1");
    assert_bytes(&cluster, "pool1", &stored);
    assert_listing_matches_data(&cluster, "pool1");
}

/// Two pools: pool1 on the ordinary disk with `files`, pool2 on a tmpfs of [`TMPFS_MIB`] MiB
/// (its capacity 256 MiB). `None` when the test is skipped. Failed files are tried again after
/// 1 s, then 2 s; jobs do not batch.
fn source_and_tiny_target(files: &[(usize, u64)]) -> Option<(Cluster, Files)> {
    let mut cluster = Cluster::new(&[("pool1", &[]), ("pool2", &[])]);
    if !cluster.mount_tmpfs("pool2", TMPFS_MIB) {
        return None;
    }
    // One file per unit of the job's concurrency: the tests hold the copies a few at a time
    // (a batch of small files would take a fifth of the files in one step).
    cluster.append_config("pool1", "[migration]\nretry_base_seconds = 1\nretry_cap_seconds = 2\nbatch_files = 1\n");
    cluster.start("pool1");
    cluster.start("pool2");
    let stored = cluster.put_samples("pool1", files, &[]);
    Some((cluster, stored))
}

/// Waits until the job has given every file a try, some failed for lack of disk on the target
/// and are waiting to be tried again; returns `migration info -failed`.
#[track_caller]
fn wait_for_disk_full_failures(cluster: &Cluster, job: &str, files: usize) -> String {
    wait_until("the job to fail files for lack of disk on the target", SHOW_WAIT, || {
        let info = cluster.migration_info("pool1", job);
        let completed: usize = report_field(&info, "Completed")
            .and_then(|c| c.split_once(" files"))
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or(0);
        let failed: usize = report_field(&info, "Failed")
            .and_then(|c| c.split_once(" files"))
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or(0);
        assert_ne!(report_field(&info, "State"), Some("FINISHED"), "a full target cannot take every file:\n{info}");
        (failed > 0 && completed + failed >= files)
            .then(|| ok(cluster, "pool1", &format!("migration info -failed {job}\n")))
    })
}

/// Every file is on the source or on the target, intact, and the target lists exactly the
/// replicas whose data it has; returns how many are on the target.
#[track_caller]
fn assert_every_file_somewhere(cluster: &Cluster, files: &[(String, Vec<u8>)]) -> usize {
    assert_listing_matches_data(cluster, "pool2");
    let on = |pool: &str| -> Vec<String> { cluster.rep_ls(pool).into_iter().map(|r| r.pnfsid).collect() };
    let (source, target) = (on("pool1"), on("pool2"));
    for (id, bytes) in files {
        let pool = if target.contains(id) {
            "pool2"
        } else {
            assert!(source.contains(id), "{id} is lost: on neither pool");
            "pool1"
        };
        assert_bytes(cluster, pool, &[(id.clone(), bytes.clone())]);
    }
    target.len()
}

/// `migration move` onto a pool whose disk fills up: no file is lost, each is on the source or
/// committed intact on the target, nothing partial stays on the target, and the job reports
/// the files that did not fit as failed, with the reason, instead of finishing.
#[test]
fn a_move_onto_a_disk_that_fills_up_loses_nothing_and_says_why() {
    const FILES: usize = 14;
    let sizes: Vec<(usize, u64)> = (0..FILES as u64).map(|i| (3 << 20, 10 + i)).collect();
    let Some((mut cluster, files)) = source_and_tiny_target(&sizes) else { return };
    let job = create(&cluster, "pool1", "migration move -concurrency=3 pool2");
    let failed = wait_for_disk_full_failures(&cluster, &job, FILES);
    assert!(failed.contains("disk full") && failed.contains("rc=10005"), "{failed}");

    let out = ok(&cluster, "pool1", &format!("migration cancel {job}\n"));
    assert!(out.contains("CANCEL"), "{out}");
    cluster.wait_for_job("pool1", &job, "CANCELLED", SHOW_WAIT);
    wait_until("pool2 ending its transfers", SHOW_WAIT, || {
        let counts = cluster.pp_ls("pool2").counts;
        (counts.active + counts.queued == 0).then_some(())
    });
    let moved = assert_every_file_somewhere(&cluster, &files);
    assert!((1..FILES).contains(&moved), "some files, not all, fit on pool2: {moved}");

    // The same after the target restarts.
    cluster.kill9("pool2");
    cluster.start("pool2");
    assert_eq!(assert_every_file_somewhere(&cluster, &files), moved);
}

/// Another writer fills the disk of a pool while small replicas (received whole, their files
/// written by the group commit) are being copied onto it. Wherever the disk runs out for a
/// replica (the admission check, the commit's write of its file, its metadata), nothing of it
/// stays: every replica the target lists has its data, before and after a restart. Once the
/// other writer's file is deleted, the pool takes the rest without a restart (its metadata
/// store never hit the full disk), and the job finishes.
#[test]
fn commits_on_a_disk_filled_by_another_writer_leave_no_replica_without_data() {
    const FILES: usize = 100;
    let sizes: Vec<(usize, u64)> = (0..FILES as u64).map(|i| (200_000, 100 + i)).collect();
    let Some((mut cluster, files)) = source_and_tiny_target(&sizes) else { return };
    let job = create(&cluster, "pool1", "migration copy -concurrency=4 pool2");
    wait_until("the first replicas on pool2", SHOW_WAIT, || (!cluster.rep_ls("pool2").is_empty()).then_some(()));
    // Hold the rest of the copies (pool2 admits no new transfer) while the disk fills, so that
    // they all meet the full disk.
    ok(&cluster, "pool2", "pp set max active 0\n");
    let filler = cluster.data_dir("pool2").join("filler");
    fill_disk(&filler);
    ok(&cluster, "pool2", "pp set max active 8\n");
    let failed = wait_for_disk_full_failures(&cluster, &job, FILES);
    assert!(failed.contains("disk full") && failed.contains("rc=10005"), "{failed}");
    let copied = assert_every_file_somewhere(&cluster, &files);
    assert!(copied < FILES, "the disk filled before every file was copied: {copied}");

    // The other writer's file goes: the job takes the rest, without a restart.
    std::fs::remove_file(&filler).expect("remove the filler");
    cluster.wait_for_job("pool1", &job, "FINISHED", Duration::from_secs(60));
    assert_eq!(assert_every_file_somewhere(&cluster, &files), FILES);
    assert_eq!(cluster.rep_ls("pool1").len(), FILES, "a copy leaves the source alone");

    cluster.kill9("pool2");
    cluster.start("pool2");
    assert_eq!(assert_every_file_somewhere(&cluster, &files), FILES);
    let info = cluster.info("pool2");
    assert!(info.contains("clean: nothing to report"), "nothing to recover after failed commits:\n{info}");
}
