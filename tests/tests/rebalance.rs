//! `rebalance pgroup` and `rebalance cancel pgroup` between real `tidepool pool` daemons,
//! driven through `tidepool-admin`: one command on any pool of a group starts a
//! `migration move -id=rebalance` on every enabled pool of the group, and the pools end level.
//! Every wait polls `migration info`, `migration ls` or `pp ls` for a state, with a deadline.
//!
//! How level the pools end is worked out from the algorithm (docs/dcache-compatibility.md#rebalance), not measured:
//! with `-metric=relative`, F = sum(used) / sum(total). A source evaluates its `-stop-when`
//! (`source.used <= F * source.total`) with its live used space before each new task; with the
//! pools' default concurrency of 1, a source stops at the first file that takes it to F or
//! below, so it ends within one file below F * total. A target takes files only while
//! `target.used < F * target.total`, but it sees the target's used space as of the job's last
//! refresh (every `-refresh` seconds), so a target chosen among several could get more than
//! its share between two refreshes: how much depends on timing. The levelling test therefore
//! starts with one pool below the level and two above it: the pool below is the only target
//! of both sources (the others never drop below F * total, and the include condition is
//! strict), it receives exactly what they shed, and the outcome does not depend on timing.
//! The file size and the capacity make F * total a whole number of files in binary floating
//! point, so every pool ends exactly at F * total: the test checks the general bounds first,
//! then that exact result.

use std::collections::BTreeMap;
use std::time::Duration;

use tidepool_tests::{
    CACHED, CACHED_STICKY, Cluster, JobLine, PRECIOUS, PRECIOUS_STICKY, PpLine, PpState, RepLine, assert_bytes,
    assert_no_partial_replica, info_field, ok, started, wait_until,
};

/// How long the rebalance jobs may take (tens of MiB moved on loopback, a debug build).
const JOB_WAIT: Duration = Duration::from_secs(20);
/// How long a test waits for something it has caused to show.
const SHOW_WAIT: Duration = Duration::from_secs(10);
/// Every file's size: 2 MiB, so that used/total differs clearly between the pools (the
/// harness's capacity is 256 MiB).
const SIZE: usize = 2 << 20;
/// The harness's `CAPACITY` in bytes.
const TOTAL: u64 = 256 << 20;
/// The pools' default concurrency: each source has at most this many files in flight.
const CONCURRENCY: u64 = 1;

fn disk_group() -> Cluster {
    started(&[("pool1", &["disk"]), ("pool2", &["disk"]), ("pool3", &["disk"])])
}

/// Puts `n` files of [`SIZE`] into `pool`: a quarter each cached, precious, cached and sticky,
/// precious and sticky. Seeds start at `seed`. Returns each file's pnfsid and bytes.
fn fill(cluster: &Cluster, pool: &str, n: u64, seed: u64) -> Vec<(String, Vec<u8>)> {
    let kinds: [&[&str]; 4] = [
        &["--storage", "test:disk"],
        &["--storage", "test:tape", "--precious"],
        &["--storage", "test:disk", "--sticky", "alice"],
        &["--storage", "test:tape", "--precious", "--sticky", "bob", "--sticky", "carol:86400"],
    ];
    let mut files = Vec::new();
    for (k, args) in kinds.iter().enumerate() {
        let seeds: Vec<(usize, u64)> = (0..n).filter(|i| i % 4 == k as u64).map(|i| (SIZE, seed + i)).collect();
        if !seeds.is_empty() {
            files.extend(cluster.put_samples(pool, &seeds, args));
        }
    }
    files
}

/// The `Used` line of the pool's `info`, in bytes.
#[track_caller]
fn used(cluster: &Cluster, pool: &str) -> u64 {
    let info = cluster.info(pool);
    info_field(&info, "Used")
        .and_then(|v| v.strip_suffix(" bytes"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Used line in the info of {pool}:\n{info}"))
}

/// The reply of a `rebalance` command: `<pool>: <rest>` per line, in order.
#[track_caller]
fn per_pool(reply: &str) -> Vec<(String, String)> {
    reply
        .lines()
        .map(|l| {
            let (pool, rest) = l.split_once(": ").unwrap_or_else(|| panic!("not `<pool>: ...`: {l:?} in\n{reply}"));
            (pool.to_string(), rest.to_string())
        })
        .collect()
}

/// Polls `migration ls` on every pool until no job there is still under way, and returns
/// each pool's jobs. Panics after `timeout`, showing the last listing.
#[track_caller]
fn wait_all_ended(cluster: &Cluster, pools: &[&str], timeout: Duration) -> BTreeMap<String, Vec<JobLine>> {
    let mut last = BTreeMap::new();
    let ended = |j: &JobLine| ["FINISHED", "CANCELLED", "FAILED"].contains(&j.state.as_str());
    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("every job ended", timeout, || {
            last = pools.iter().map(|p| (p.to_string(), cluster.migration_ls(p))).collect();
            last.values().all(|jobs: &Vec<JobLine>| jobs.iter().all(ended)).then_some(())
        })
    }));
    if done.is_err() {
        panic!("jobs still under way after {timeout:?}: {last:#?}");
    }
    last
}

/// Every file of `files` is held by exactly one of `pools`, with the flags (state and sticky)
/// and the size it had when it was put, and reads back byte for byte from that pool. Returns
/// how many files each pool holds.
#[track_caller]
fn assert_each_file_once(
    cluster: &Cluster,
    pools: &[&str],
    files: &[(String, Vec<u8>)],
    flags: &BTreeMap<String, RepLine>,
) -> BTreeMap<String, usize> {
    let mut holders: BTreeMap<String, Vec<(&str, RepLine)>> = BTreeMap::new();
    for pool in pools {
        for r in cluster.rep_ls(pool) {
            holders.entry(r.pnfsid.clone()).or_default().push((pool, r));
        }
    }
    let mut counts = BTreeMap::new();
    for (id, bytes) in files {
        let held = holders.remove(id).unwrap_or_default();
        assert_eq!(held.len(), 1, "{id} is held by exactly one pool, not {held:?}");
        let (pool, line) = &held[0];
        assert_eq!(line, &flags[id], "{id} in {pool} has the state, sticky flag, size and class it was put with");
        let got = cluster.get_bytes(pool, id);
        assert!(got == *bytes, "{id} in {pool}: {} bytes that differ from the {} stored", got.len(), bytes.len());
        *counts.entry(pool.to_string()).or_insert(0) += 1;
    }
    assert!(holders.is_empty(), "replicas that were never put: {holders:?}");
    counts
}

/// Every sticky record of every sticky file, by pnfsid (`rep sticky ls` on the pool holding it).
fn sticky_records(cluster: &Cluster, pools: &[&str]) -> BTreeMap<String, String> {
    let mut records = BTreeMap::new();
    for pool in pools {
        for r in cluster.rep_ls(pool).into_iter().filter(|r| r.flags.contains('X')) {
            records.insert(r.pnfsid.clone(), ok(cluster, pool, &format!("rep sticky ls {}\n", r.pnfsid)));
        }
    }
    records
}

/// Three pools of group `disk` with 48, 30 and 0 files of 2 MiB (37.5 %, 23.4 % and 0 % of
/// 256 MiB): `rebalance pgroup disk`, given on pool2, levels them at F = 156 MiB / 768 MiB
/// = 0.203125, that is 26 files each, moving files from pool1 and pool2 to pool3. Every file is
/// then on exactly one pool, with its bytes, state and sticky records.
#[test]
fn rebalance_pgroup_levels_a_pool_group() {
    let pools = ["pool1", "pool2", "pool3"];
    let cluster = disk_group();
    let mut files = fill(&cluster, "pool1", 48, 1000);
    files.extend(fill(&cluster, "pool2", 30, 2000));
    let before: BTreeMap<String, RepLine> =
        pools.iter().flat_map(|p| cluster.rep_ls(p)).map(|r| (r.pnfsid.clone(), r)).collect();
    assert_eq!(before.len(), 78);
    let kinds: std::collections::BTreeSet<&str> = before.values().map(|r| r.flags.as_str()).collect();
    assert_eq!(kinds, [CACHED, CACHED_STICKY, PRECIOUS, PRECIOUS_STICKY].into_iter().collect());
    let sticky_before = sticky_records(&cluster, &pools);
    let size = SIZE as u64;
    assert_eq!([used(&cluster, "pool1"), used(&cluster, "pool2"), used(&cluster, "pool3")], [48 * size, 30 * size, 0]);

    // Any pool of the group accepts the command; pool2 is neither the fullest nor the emptiest.
    let reply = ok(&cluster, "pool2", "rebalance pgroup disk\n");
    let f = "0.203125";
    let stored = format!(
        "migration move -id=rebalance -refresh=30 -include\\-when=target.used\\ <\\ {f}\\ *\\ target.total \
         -stop\\-when=targets\\ \\=\\=\\ 0\\ or\\ source.used\\ <\\=\\ {f}\\ *\\ source.total -target=pool \
         -- pool1 pool2 pool3"
    );
    let lines = per_pool(&reply);
    assert_eq!(lines.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), pools, "one line per pool:\n{reply}");
    for (pool, rest) in &lines {
        let job = JobLine::parse(rest).unwrap_or_else(|| panic!("{pool}: not a summary line: {rest:?}"));
        assert_eq!((job.id.as_str(), job.command.as_str()), ("rebalance", stored.as_str()), "{pool}: {rest}");
    }

    // pool3 has nothing to give and pool2 little: their jobs may have finished at once.
    for pool in pools {
        let info = cluster.wait_for_job(pool, "rebalance", "FINISHED", JOB_WAIT);
        assert!(info.starts_with(&format!("Command    : {stored}\n")), "{info}");
    }
    let jobs = wait_all_ended(&cluster, &pools, SHOW_WAIT);
    for (pool, listed) in &jobs {
        assert_eq!(listed.len(), 1, "one job on {pool}: {listed:?}");
    }

    // Each source stopped within CONCURRENCY files below F * total; pool3, the one target,
    // took what they shed, so it is at most (sources x CONCURRENCY) files above. Here F * total
    // is exactly 26 files, so each pool ends at 26 files.
    let level = TOTAL * 13 / 64;
    assert_eq!(level, 26 * size);
    for pool in ["pool1", "pool2"] {
        let u = used(&cluster, pool);
        assert!(level - CONCURRENCY * size < u && u <= level, "{pool}: used {u}, level {level}");
    }
    let u3 = used(&cluster, "pool3");
    assert!(level <= u3 && u3 < level + 2 * CONCURRENCY * size, "pool3: used {u3}, level {level}");
    let all: Vec<u64> = pools.iter().map(|p| used(&cluster, p)).collect();
    assert_eq!(all, [level, level, level], "each pool at F * total exactly (26 files of 2 MiB)");

    let counts = assert_each_file_once(&cluster, &pools, &files, &before);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [26, 26, 26], "{counts:?}");
    assert_eq!(sticky_records(&cluster, &pools), sticky_before, "the sticky records moved with their files");
    for pool in pools {
        assert_no_partial_replica(&cluster, pool);
    }
}

/// `rebalance cancel pgroup disk` while the rebalance jobs wait for their targets: every job
/// ends CANCELLED or FINISHED, the targets drop the copies they had queued, and every file is
/// still where it was. Also: a second `rebalance pgroup` while the first runs replaces it (the
/// old job is cancelled and, if still cancelling, renamed), and a pool without a job is fine.
#[test]
fn rebalance_cancel_pgroup_stops_every_job_and_leaves_nothing_half_made() {
    let pools = ["pool1", "pool2", "pool3"];
    let cluster = disk_group();
    let files = fill(&cluster, "pool1", 12, 3000);
    let before = cluster.rep_ls("pool1");
    // The targets admit no transfer: the jobs' copies wait in their queues.
    for pool in ["pool2", "pool3"] {
        ok(&cluster, pool, "pp set max active 0\n");
    }
    // Transfers from pool1 that the targets have queued or are running (not the finished ones
    // `pp ls -l` lists too).
    let queued_from_pool1 = || -> usize {
        let under_way =
            |t: &&PpLine| t.source == "pool1" && matches!(t.state, PpState::Active { .. } | PpState::Queued);
        ["pool2", "pool3"].iter().map(|p| cluster.pp_ls(p).transfers.iter().filter(under_way).count()).sum()
    };

    let reply = ok(&cluster, "pool3", "rebalance pgroup -metric=free -refresh=5 disk\n");
    let stored = "migration move -id=rebalance -refresh=5 -include\\-when=target.free\\ >\\ source.free \
                  -stop\\-when=targets\\ \\=\\=\\ 0 -target=pool -- pool1 pool2 pool3";
    for (pool, rest) in per_pool(&reply) {
        let job = JobLine::parse(&rest).unwrap_or_else(|| panic!("{pool}: not a summary line: {rest:?}"));
        assert_eq!(job.command, stored, "{pool}");
    }
    wait_until("a copy from pool1 queued on a target", SHOW_WAIT, || (queued_from_pool1() > 0).then_some(()));
    let job = &cluster.migration_ls("pool1")[0];
    assert_eq!((job.id.as_str(), job.state.as_str()), ("rebalance", "RUNNING"), "{job:?}");

    // Again, while it runs: pool1's job is cancelled (-force) and a new one takes the id.
    let reply = ok(&cluster, "pool1", "rebalance pgroup -metric=free -refresh=5 disk\n");
    assert_eq!(per_pool(&reply).len(), 3, "{reply}");
    let listed = cluster.migration_ls("pool1");
    let current: Vec<&JobLine> = listed.iter().filter(|j| j.id == "rebalance").collect();
    assert_eq!(current.len(), 1, "{listed:?}");
    for old in listed.iter().filter(|j| j.id != "rebalance") {
        // The first job, renamed because it was still CANCELLING when the second came.
        assert_eq!(old.command, stored, "{listed:?}");
        assert!(["CANCELLING", "CANCELLED"].contains(&old.state.as_str()), "{listed:?}");
    }
    wait_until("a copy of the new job queued on a target", SHOW_WAIT, || {
        let info = cluster.migration_info("pool1", "rebalance");
        info.contains(": TASK.").then_some(())
    });

    let reply = ok(&cluster, "pool2", "rebalance cancel pgroup disk\n");
    let lines = per_pool(&reply);
    assert_eq!(lines.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), pools, "{reply}");
    for (pool, rest) in &lines {
        let job = JobLine::parse(rest).unwrap_or_else(|| panic!("{pool}: not a summary line: {rest:?}"));
        assert_eq!((job.id.as_str(), job.command.as_str()), ("rebalance", stored), "{pool}");
        // pool1's job was waiting for its targets; the others had nothing to move.
        let want: &[&str] = if pool == "pool1" { &["CANCELLING", "CANCELLED"] } else { &["FINISHED"] };
        assert!(want.contains(&job.state.as_str()), "{pool}: {rest}");
    }
    let jobs = wait_all_ended(&cluster, &pools, JOB_WAIT);
    for (pool, listed) in &jobs {
        let want = if pool == "pool1" { "CANCELLED" } else { "FINISHED" };
        for job in listed {
            assert_eq!(job.state, want, "{pool}: {listed:?}");
        }
    }
    // The targets drop what they had queued; nothing was moved, nothing is half made.
    wait_until("the targets' queues empty", SHOW_WAIT, || (queued_from_pool1() == 0).then_some(()));
    for pool in pools {
        assert_no_partial_replica(&cluster, pool);
    }
    assert_eq!(cluster.rep_ls("pool1"), before, "every file is still on pool1, as it was");
    assert_eq!(cluster.rep_ls("pool2"), vec![]);
    assert_eq!(cluster.rep_ls("pool3"), vec![]);
    assert_bytes(&cluster, "pool1", &files);

    // Cancelling again is harmless: the jobs have ended; a pool that never had one says so.
    ok(&cluster, "pool3", "migration clear\n");
    let reply = ok(&cluster, "pool1", "rebalance cancel pgroup disk\n");
    let lines = per_pool(&reply);
    assert_eq!(lines[2], ("pool3".to_string(), "no rebalance job".to_string()), "{reply}");
    assert!(lines[0].1.starts_with("[rebalance] CANCELLED "), "{reply}");
}
