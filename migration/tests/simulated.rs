//! The migration module in simulated clusters (see `sim/mod.rs`): whole jobs over several
//! pools, with messages delayed, reordered, duplicated and lost, pools going offline, pulls
//! breaking, and an invariant checker that looks after every repository change. Each scenario
//! runs over several seeds; a failure prints its seed, and `SIM_SEED=<n>` reruns only that one.

mod sim;

use std::collections::BTreeSet;
use std::time::Duration;

use sim::{Faults, FileSpec, PIN_PREFIX, Sim, SimConfig, pool, run};
use tidepool_migration::definition::JobKind;
use tidepool_migration::job_state::JobState;
use tidepool_migration::plan::{Outcome, Reason};
use tidepool_migration::report::{FailureState, NoteLine, Noted};
use tidepool_migration::select::NoTarget;
use tidepool_migration::task::TaskFailure;
use tidepool_p2p::model::{NEVER, PoolMode, ReplicaState, StickyRecord};
use tidepool_p2p::{ErrorCode, PnfsId};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const SEEDS: u64 = 20;

fn valid_non_pins(records: &[StickyRecord], now: i64) -> BTreeSet<(String, i64)> {
    records.iter().filter(|r| !r.is_pin(PIN_PREFIX) && r.is_valid(now)).map(|r| (r.owner.clone(), r.expire)).collect()
}

fn records(rs: &[StickyRecord]) -> BTreeSet<(String, i64)> {
    rs.iter().map(|r| (r.owner.clone(), r.expire)).collect()
}

/// Every file of `files` that was on the source: on exactly `n` (or, if `at_least`, at least
/// `n`) distinct pools other than `source`, with the source's bytes; returns the holders.
fn check_copies(
    sim: &Sim,
    source: &str,
    files: &[PnfsId],
    before: &std::collections::BTreeMap<PnfsId, sim::Replica>,
    n: usize,
    at_least: bool,
) {
    for id in files {
        let src = &before[id];
        let targets: Vec<_> = sim.holders(id).into_iter().filter(|(p, _)| *p != pool(source)).collect();
        let names: Vec<String> = targets.iter().map(|(p, _)| p.to_string()).collect();
        if at_least {
            assert!(targets.len() >= n, "{id} is on {names:?}, wanted at least {n} targets");
        } else {
            assert_eq!(targets.len(), n, "{id} is on {names:?}, wanted {n} distinct targets");
        }
        for (p, r) in &targets {
            assert_eq!(r.data, src.data, "{id} on {p}: the bytes differ");
            assert_eq!(r.entry.attrs.size, src.entry.attrs.size, "{id} on {p}: size");
            assert_eq!(r.entry.attrs.checksum, src.entry.attrs.checksum, "{id} on {p}: checksum");
        }
    }
}

// ------------------------------------------------------------------------------ copy, move, cache

#[test]
fn copy_job_places_the_wanted_replicas_on_distinct_pools() {
    run("copy_job_places_the_wanted_replicas_on_distinct_pools", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3", "p4"], Faults::jitter()));
        let files = sim.fill("p1", 15);
        let before = sim.repo("p1");
        let tmode = ["same", "cached", "precious+keeper(3600)"][(seed % 3) as usize];
        let created = sim.world.now();
        let job = sim.create(
            "p1",
            JobKind::Copy,
            &["-replicas=2", &format!("-tmode={tmode}"), "-concurrency=3"],
            &["p2", "p3", "p4"],
        );
        assert_eq!(sim.wait_end("p1", &job, HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        assert!(sim.partial().is_empty(), "partial replicas: {:?}", sim.partial());

        // The source is untouched.
        let after = sim.repo("p1");
        assert_eq!(after.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>());
        for (id, r) in &after {
            assert_eq!(r.entry, before[id].entry, "source replica {id} changed");
            assert_eq!(r.data, before[id].data);
        }
        check_copies(&sim, "p1", &files, &before, 2, false);
        for id in &files {
            let src = &before[id];
            for (p, r) in sim.holders(id).into_iter().filter(|(p, _)| *p != pool("p1")) {
                match tmode {
                    "same" => {
                        assert_eq!(r.state(), src.state(), "{id} on {p}");
                        assert_eq!(records(r.sticky()), valid_non_pins(src.sticky(), created), "{id} on {p}");
                    }
                    "cached" => {
                        assert_eq!(r.state(), ReplicaState::Cached, "{id} on {p}");
                        assert!(r.sticky().is_empty(), "{id} on {p}: {:?}", r.sticky());
                    }
                    _ => {
                        assert_eq!(r.state(), ReplicaState::Precious, "{id} on {p}");
                        let want = BTreeSet::from([("keeper".to_string(), created + 3_600_000)]);
                        assert_eq!(records(r.sticky()), want, "{id} on {p}");
                    }
                }
            }
        }
        let report = sim.report("p1", &job);
        assert_eq!(report.completed_files, files.len() as u64, "{report:?}");
    });
}

/// A move without faults: the source ends empty, each file is on exactly one target with the
/// source's state, bytes, records (pins included: `-pins=move` is the default) and atime.
#[test]
fn move_job_vacates_the_source() {
    run("move_job_vacates_the_source", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3", "p4"], Faults::jitter()));
        let files = sim.fill("p1", 15);
        let before = sim.repo("p1");
        let now = sim.world.now();
        let job = sim.create("p1", JobKind::Move, &["-concurrency=4"], &["p2", "p3", "p4"]);
        assert_eq!(sim.wait_end("p1", &job, HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        assert!(sim.repo("p1").is_empty(), "source still holds {:?}", sim.repo("p1").keys());
        assert!(sim.partial().is_empty(), "partial replicas: {:?}", sim.partial());
        check_copies(&sim, "p1", &files, &before, 1, false);
        for id in &files {
            let src = &before[id];
            let (p, r) = &sim.holders(id)[0];
            assert_eq!(r.state(), src.state(), "{id} on {p}");
            let src_records: BTreeSet<_> =
                src.sticky().iter().filter(|r| r.is_valid(now)).map(|r| (r.owner.clone(), r.expire)).collect();
            assert_eq!(records(r.sticky()), src_records, "{id} on {p}: records (pins moved)");
            assert_eq!(r.entry.attrs.access_time, src.entry.attrs.access_time, "{id} on {p}: -atime");
            assert!(!sim.module("p1").is_locked(id));
        }
    });
}

/// A run is reproducible in what it does to the files: the same seed, under faults (delays,
/// duplicates, lost messages, late copies, broken pulls), twice, ends with the same replicas
/// (state, sticky records, size, checksum, each on one target) and the same job report.
/// Which target a file lands on, and how many faults met the run, may differ: the module's
/// blocking work runs on real threads, so its messages are not always interleaved alike, and
/// the pools' figures that target choice reads differ with them (see `sim/mod.rs`).
#[test]
fn the_same_seed_gives_the_same_run() {
    async fn once(seed: u64) -> String {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3"], Faults::chaos()));
        sim.fill("p1", 12);
        let job = sim.create("p1", JobKind::Move, &["-concurrency=3"], &["p2", "p3"]);
        assert_eq!(sim.wait_end("p1", &job, 6 * HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        let report = sim.report("p1", &job);
        let mut lines = Vec::new();
        for p in ["p1", "p2", "p3"] {
            for (id, r) in sim.repo(p) {
                let sticky: Vec<String> = r.sticky().iter().map(|s| format!("{}={}", s.owner, s.expire)).collect();
                let (state, size, sum) = (r.state(), r.data.len(), r.data_sum);
                let on = if p == "p1" { "the source" } else { "a target" };
                lines.push(format!("{id} on {on}: {state} [{}] {size} {sum}", sticky.join(",")));
            }
        }
        lines.sort();
        format!("{}\ncompleted {} of {} bytes", lines.join("\n"), report.completed_files, report.completed_bytes)
    }
    run("the_same_seed_gives_the_same_run", SEEDS / 2, |seed| async move {
        let (first, second) = (once(seed).await, once(seed).await);
        assert_eq!(first, second, "two runs of seed {seed} differ");
    });
}

/// A move while the network delays, duplicates and loses messages, pulls break, and a target
/// (or the source itself) is offline for a while. The checker asserts after every repository
/// change that each file is committed somewhere; at the end the source is empty and every
/// file is on a target with its state and bytes.
#[test]
fn move_job_under_faults_never_loses_a_file() {
    run("move_job_under_faults_never_loses_a_file", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3", "p4"], Faults::chaos()));
        let files = sim.fill("p1", 15);
        let before = sim.repo("p1");
        let job = sim.create("p1", JobKind::Move, &["-concurrency=3"], &["p2", "p3", "p4"]);
        let victim = ["p3", "p1"][(seed % 2) as usize];
        let down_at = Duration::from_secs(2 + sim.world.random_below(30));
        let down_for = Duration::from_secs(30 + sim.world.random_below(300));
        let outage = async {
            tokio::time::sleep(down_at).await;
            sim.set_offline(victim, true);
            tokio::time::sleep(down_for).await;
            sim.set_offline(victim, false);
        };
        let (_, end) = tokio::join!(outage, sim.wait_end("p1", &job, 6 * HOUR));
        assert_eq!(end, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        assert!(sim.repo("p1").is_empty(), "source still holds {:?}", sim.repo("p1").keys());
        assert!(sim.partial().is_empty(), "partial replicas: {:?}", sim.partial());
        check_copies(&sim, "p1", &files, &before, 1, true);
        for id in &files {
            for (p, r) in sim.holders(id) {
                assert_eq!(r.state(), before[id].state(), "{id} on {p}");
            }
            assert!(!sim.module("p1").is_locked(id));
        }
        let report = sim.report("p1", &job);
        assert_eq!(report.completed_files, files.len() as u64, "{report:?}");
    });
}

#[test]
fn pins_stay_with_keep_and_travel_with_move() {
    run("pins_stay_with_keep_and_travel_with_move", SEEDS, |seed| async move {
        let faults = Faults { duplicate: 0.3, ..Faults::jitter() };
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3"], faults));
        let pin = format!("{PIN_PREFIX}-abc");
        let spec = FileSpec::precious(1000).with_sticky(&pin, NEVER).with_sticky("alice", NEVER);
        let kept = sim.add_file("p1", spec.clone());
        let moved = sim.add_file("p1", spec);
        let other = sim.fill("p1", 3);

        let keep = sim.create("p1", JobKind::Move, &["-pins=keep", &format!("-pnfsid={kept}")], &["p2", "p3"]);
        assert_eq!(sim.wait_end("p1", &keep, HOUR).await, JobState::Finished);
        let mv = sim.create("p1", JobKind::Move, &[&format!("-pnfsid={moved}")], &["p2", "p3"]);
        assert_eq!(sim.wait_end("p1", &mv, HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();

        // -pins=keep: the source keeps a CACHED replica with its pin only; the copy has no pin.
        let src = sim.repo("p1");
        let k = src.get(&kept).expect("a pinned replica is never deleted");
        assert_eq!(k.state(), ReplicaState::Cached);
        assert_eq!(records(k.sticky()), BTreeSet::from([(pin.clone(), NEVER)]));
        let copies: Vec<_> = sim.holders(&kept).into_iter().filter(|(p, _)| *p != pool("p1")).collect();
        assert_eq!(copies.len(), 1, "{copies:?}");
        assert_eq!(copies[0].1.state(), ReplicaState::Precious);
        assert_eq!(records(copies[0].1.sticky()), BTreeSet::from([("alice".to_string(), NEVER)]));

        // -pins=move (the default): the pin went with the copy and the source is gone.
        assert!(!src.contains_key(&moved), "the source of a moved pin is deleted");
        let holders = sim.holders(&moved);
        assert_eq!(holders.len(), 1, "{holders:?}");
        assert_eq!(records(holders[0].1.sticky()), BTreeSet::from([(pin, NEVER), ("alice".to_string(), NEVER)]));

        // The other files were not selected.
        for id in &other {
            assert!(src.contains_key(id));
            assert_eq!(sim.holders(id).len(), 1);
        }
    });
}

#[test]
fn cache_job_leaves_the_source_and_makes_cached_copies() {
    run("cache_job_leaves_the_source_and_makes_cached_copies", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3"], Faults::jitter()));
        let files = sim.fill("p1", 10);
        let before = sim.repo("p1");
        let job = sim.create("p1", JobKind::Cache, &["-replicas=2"], &["p2", "p3"]);
        assert_eq!(sim.wait_end("p1", &job, HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        for (id, r) in sim.repo("p1") {
            assert_eq!(r.entry, before[&id].entry, "source replica {id} changed");
        }
        check_copies(&sim, "p1", &files, &before, 2, false);
        for id in &files {
            for (p, r) in sim.holders(id).into_iter().filter(|(p, _)| *p != pool("p1")) {
                assert_eq!(r.state(), ReplicaState::Cached, "{id} on {p}");
                assert!(r.sticky().is_empty(), "{id} on {p}: {:?}", r.sticky());
            }
        }
    });
}

#[test]
fn rerunning_a_copy_job_transfers_nothing() {
    run("rerunning_a_copy_job_transfers_nothing", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3", "p4"], Faults::jitter()));
        let files = sim.fill("p1", 12);
        let words = ["-replicas=2", "-concurrency=3"];
        let first = sim.create("p1", JobKind::Copy, &words, &["p2", "p3", "p4"]);
        assert_eq!(sim.wait_end("p1", &first, HOUR).await, JobState::Finished);
        sim.settle().await;
        let stats = sim.world.stats();
        assert_eq!(stats.pulls_committed, 2 * files.len() as u64);

        let again = sim.create("p1", JobKind::Copy, &words, &["p2", "p3", "p4"]);
        assert_eq!(sim.wait_end("p1", &again, HOUR).await, JobState::Finished);
        sim.settle().await;
        let now = sim.world.stats();
        assert_eq!((now.pulls_started, now.bytes_committed), (stats.pulls_started, stats.bytes_committed));
        let report = sim.report("p1", &again);
        assert_eq!(report.completed_files, files.len() as u64, "{report:?}");
        sim.assert_no_violations();
    });
}

/// `migration cancel -force` while pulls are under way: the job is CANCELLED in bounded
/// time, no partial replica is left anywhere, no file stays locked, and a rerun completes.
#[test]
fn cancel_force_mid_way_is_bounded_and_leaves_nothing_half_made() {
    run("cancel_force_mid_way_is_bounded_and_leaves_nothing_half_made", SEEDS, |seed| async move {
        let faults = Faults { duplicate: 0.2, ..Faults::jitter() };
        let mut config = SimConfig::new(&["p1", "p2", "p3"], faults);
        config.pull_time = Duration::from_secs(20);
        config.pull_jitter = Duration::from_secs(20);
        let mut sim = Sim::new(seed, config);
        let files = sim.fill("p1", 16);
        let before = sim.repo("p1");
        let job = sim.create("p1", JobKind::Move, &["-concurrency=4"], &["p2", "p3"]);
        let done_before = 1 + sim.world.random_below(6);
        sim.wait_until(HOUR, "some copies done and more under way", || {
            let s = sim.world.stats();
            s.pulls_committed >= done_before && s.pulls_active.get(&pool("p1")).copied().unwrap_or(0) > 0
        })
        .await;
        sim.module("p1").cancel(&job, true, "operator").expect("the job exists");
        let end = sim.wait_end("p1", &job, 3 * MINUTE).await;
        assert_eq!(end, JobState::Cancelled);
        for id in &files {
            assert!(!sim.module("p1").is_locked(id), "{id} still locked after the cancel");
        }
        sim.settle().await;
        assert!(sim.partial().is_empty(), "partial replicas after the cancel: {:?}", sim.partial());
        sim.assert_no_violations();
        let stats = sim.world.stats();
        assert!(stats.pulls_failed > 0 || stats.pulls_committed == files.len() as u64, "no pull was cancelled");

        let again = sim.create("p1", JobKind::Move, &["-concurrency=4"], &["p2", "p3"]);
        assert_eq!(sim.wait_end("p1", &again, 2 * HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        assert!(sim.repo("p1").is_empty(), "source still holds {:?}", sim.repo("p1").keys());
        check_copies(&sim, "p1", &files, &before, 1, false);
    });
}

/// Copy and finished messages delivered twice, finished messages delivered again minutes
/// later: no report is credited to another attempt, so each file ends on exactly the wanted
/// number of distinct pools, and a move still loses nothing.
#[test]
fn duplicated_and_late_finished_messages_are_never_miscredited() {
    run("duplicated_and_late_finished_messages_are_never_miscredited", SEEDS, |seed| async move {
        let faults =
            Faults { duplicate: 0.5, late_finished: 0.5, late_delay: Duration::from_secs(300), ..Faults::jitter() };
        let mut config = SimConfig::new(&["p1", "p2", "p3", "p4", "p5"], faults);
        // Batches of two: enough messages that some are surely duplicated and late.
        config.settings.batch_files = 2;
        let mut sim = Sim::new(seed, config);
        let copied = sim.fill("p1", 10);
        let moved = sim.fill("p5", 10);
        let before_copy = sim.repo("p1");
        let before_move = sim.repo("p5");
        let copy = sim.create("p1", JobKind::Copy, &["-replicas=2", "-concurrency=3"], &["p2", "p3", "p4"]);
        let mv = sim.create("p5", JobKind::Move, &["-replicas=2", "-concurrency=3"], &["p2", "p3", "p4"]);
        assert_eq!(sim.wait_end("p1", &copy, HOUR).await, JobState::Finished);
        assert_eq!(sim.wait_end("p5", &mv, HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        assert!(sim.world.stats().late > 0 && sim.world.stats().duplicated > 0);
        check_copies(&sim, "p1", &copied, &before_copy, 2, false);
        check_copies(&sim, "p5", &moved, &before_move, 2, false);
        assert!(sim.repo("p5").is_empty());
        for (on, job, n) in [("p1", &copy, copied.len()), ("p5", &mv, moved.len())] {
            let report = sim.report(on, job);
            assert_eq!(report.completed_files, n as u64, "{report:?}");
        }
    });
}

/// The target's own job works on the file (it answers LOCKED): the task tries the next holder
/// or a new copy elsewhere, or fails for a later retry; the file is never lost and both jobs
/// finish.
#[test]
fn a_locked_holder_is_skipped_and_nothing_is_lost() {
    run("a_locked_holder_is_skipped_and_nothing_is_lost", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3", "p4"], Faults::jitter()));
        let x = sim.add_file("p1", FileSpec::precious(2000));
        sim.add_replica("p2", x, FileSpec::precious(2000));
        // p2 moves its replica to a slow p3: it holds its file lock for minutes.
        sim.slow_pulls("p3", Duration::from_secs(300));
        let theirs = sim.create("p2", JobKind::Move, &[], &["p3"]);
        sim.wait_until(MINUTE, "p2's job holds the file", || sim.module("p2").is_locked(&x)).await;
        // Half the seeds give p1 another target (a new copy there), half only p2 (retry).
        let targets: &[&str] = if seed % 2 == 0 { &["p2", "p4"] } else { &["p2"] };
        let ours = sim.create("p1", JobKind::Move, &[], targets);
        assert_eq!(sim.wait_end("p1", &ours, 2 * HOUR).await, JobState::Finished);
        assert_eq!(sim.wait_end("p2", &theirs, 2 * HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        assert!(!sim.repo("p1").contains_key(&x), "p1's move completed");
        let holders: Vec<String> = sim.holders(&x).iter().map(|(p, _)| p.to_string()).collect();
        assert!(holders.contains(&"p3".to_string()), "p2's move completed: {holders:?}");
        if seed % 2 == 0 {
            assert!(holders.contains(&"p4".to_string()), "the locked holder was skipped for p4: {holders:?}");
        } else {
            let report = sim.report("p1", &ours);
            assert!(report.attempts >= 2, "a locked holder fails the task for a retry:\n{report:?}");
        }
    });
}

// ------------------------------------------------------------------------------ the scheduler

/// Pulls that take minutes, so tasks stay running long enough to be counted; one file per
/// unit of concurrency (no batches), so that a unit is a task, as in dCache.
fn slow_sim(seed: u64, names: &[&str]) -> Sim {
    let mut config = SimConfig::new(names, Faults::jitter());
    config.pull_time = Duration::from_secs(100);
    config.settings.batch_files = 1;
    Sim::new(seed, config)
}

#[test]
fn scheduler_concurrency_limits_running_tasks_and_can_be_raised() {
    run("scheduler_concurrency_limits_running_tasks_and_can_be_raised", 4, |seed| async move {
        let mut sim = slow_sim(seed, &["p1", "p2", "p3"]);
        let files = sim.fill("p1", 12);
        let job = sim.create("p1", JobKind::Copy, &["-concurrency=3"], &["p2", "p3"]);
        let mut most = 0;
        for _ in 0..150 {
            let running = sim.report("p1", &job).running.len();
            assert!(running <= 3, "{}", sim.info("p1", &job));
            most = most.max(running);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(most, 3, "concurrency 3 runs 3 tasks");
        assert_eq!(sim.world.stats().pulls_peak.get(&pool("p1")).copied(), Some(3));
        sim.module("p1").set_concurrency(&job, 5).expect("the job exists");
        sim.wait_until(MINUTE, "5 running tasks", || sim.report("p1", &job).running.len() == 5).await;
        assert_eq!(sim.wait_end("p1", &job, HOUR).await, JobState::Finished);
        assert!(sim.world.stats().pulls_peak[&pool("p1")] <= 5);
        let report = sim.report("p1", &job);
        assert_eq!(report.completed_files, files.len() as u64, "{report:?}");
    });
}

#[test]
fn scheduler_suspend_stops_new_tasks_and_resume_restarts() {
    run("scheduler_suspend_stops_new_tasks_and_resume_restarts", 4, |seed| async move {
        let mut sim = slow_sim(seed, &["p1", "p2", "p3"]);
        let files = sim.fill("p1", 8);
        let job = sim.create("p1", JobKind::Copy, &["-concurrency=2"], &["p2", "p3"]);
        sim.wait_until(MINUTE, "2 running tasks", || sim.report("p1", &job).running.len() == 2).await;
        sim.module("p1").suspend(&job).expect("the job exists");
        assert_eq!(sim.state("p1", &job), JobState::Suspended);
        sim.wait_until(10 * MINUTE, "running tasks to finish", || sim.report("p1", &job).running.is_empty()).await;
        let started = sim.world.stats().pulls_started;
        tokio::time::sleep(10 * MINUTE).await;
        assert_eq!(sim.state("p1", &job), JobState::Suspended);
        assert_eq!(sim.world.stats().pulls_started, started, "a suspended job starts nothing");
        assert!(sim.report("p1", &job).queued > 0);
        sim.module("p1").resume(&job).expect("the job exists");
        assert_eq!(sim.wait_end("p1", &job, HOUR).await, JobState::Finished);
        let report = sim.report("p1", &job);
        assert_eq!(report.completed_files, files.len() as u64, "{report:?}");
    });
}

#[test]
fn scheduler_a_job_with_nothing_to_do_finishes() {
    run("scheduler_a_job_with_nothing_to_do_finishes", 4, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3"], Faults::jitter()));
        let empty = sim.create("p1", JobKind::Move, &[], &["p2"]);
        assert_eq!(sim.wait_end("p1", &empty, MINUTE).await, JobState::Finished);
        sim.add_file("p3", FileSpec::cached(10));
        let unmatched = sim.create("p3", JobKind::Copy, &["-state=precious"], &["p2"]);
        assert_eq!(sim.wait_end("p3", &unmatched, MINUTE).await, JobState::Finished);
        assert_eq!(sim.report("p3", &unmatched).attempts, 0);
        assert_eq!(sim.world.stats().pulls_started, 0);
    });
}

#[test]
fn scheduler_a_job_whose_targets_are_offline_sleeps_and_continues() {
    run("scheduler_a_job_whose_targets_are_offline_sleeps_and_continues", 4, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3"], Faults::jitter()));
        let files = sim.fill("p1", 6);
        let before = sim.repo("p1");
        sim.set_offline("p2", true);
        sim.set_offline("p3", true);
        let job = sim.create("p1", JobKind::Copy, &[], &["p2", "p3"]);
        assert_eq!(sim.wait("p1", &job, MINUTE, |s| s == JobState::Sleeping).await, JobState::Sleeping);
        tokio::time::sleep(5 * MINUTE).await;
        assert!(!sim.state("p1", &job).is_terminal());
        assert_eq!(sim.world.stats().pulls_started, 0);
        sim.set_offline("p2", false);
        sim.set_offline("p3", false);
        assert_eq!(sim.wait_end("p1", &job, 10 * MINUTE).await, JobState::Finished);
        check_copies(&sim, "p1", &files, &before, 1, false);
    });
}

/// A file whose pulls break is retried after its backoff (10 s, then 20 s); `Attempts` grows
/// and `migration info -failed` shows the attempts and the last error until it succeeds.
#[test]
fn scheduler_a_failed_file_is_retried_after_its_backoff() {
    run("scheduler_a_failed_file_is_retried_after_its_backoff", 4, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2"], Faults::jitter()));
        let x = sim.add_file("p1", FileSpec::precious(100));
        sim.fail_pulls(x, 2);
        let job = sim.create("p1", JobKind::Copy, &[], &["p2"]);
        let m = sim.module("p1").clone();
        let tried_twice =
            || m.reports().iter().filter(|r| r.id == job).flat_map(|r| &r.failures).any(|f| f.attempts == 2);
        sim.wait_until(5 * MINUTE, "two failures", tried_twice).await;
        let failed = m.info_failed(&job).unwrap();
        assert!(failed.starts_with(&x.to_string()), "{failed}");
        assert!(failed.contains("Transfer to p2 failed (connection to p1 broke)"), "{failed}");
        assert!(failed.contains("retry at"), "{failed}");
        let report = sim.report("p1", &job);
        assert_eq!(report.attempts, 2, "{report:?}");
        assert_eq!(report.waiting, 1, "{report:?}");

        assert_eq!(sim.wait_end("p1", &job, 10 * MINUTE).await, JobState::Finished);
        let report = sim.report("p1", &job);
        assert_eq!(report.attempts, 3, "{report:?}");
        assert_eq!(report.completed_files, 1, "{report:?}");
        let starts = sim.world.stats().pull_starts[&x].clone();
        assert_eq!(starts.len(), 3, "{starts:?}");
        // Each pull breaks after half of at most 3 s; the waits are 10 s and 20 s.
        assert!(starts[1] - starts[0] >= Duration::from_secs(10), "{starts:?}");
        assert!(starts[2] - starts[1] >= Duration::from_secs(20), "{starts:?}");
        assert!(sim.holders(&x).iter().any(|(p, _)| *p == pool("p2")));
    });
}

/// Pool modes: a target disabled for p2p-client is never used; a source disabled for fetch
/// serves a job only with `-force-source-mode`.
#[test]
fn pool_modes_are_respected() {
    run("pool_modes_are_respected", 4, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3"], Faults::jitter()));
        let files = sim.fill("p1", 6);
        let before = sim.repo("p1");
        sim.set_mode("p2", PoolMode::disabled(PoolMode::RDONLY));
        let job = sim.create("p1", JobKind::Copy, &[], &["p2", "p3"]);
        assert_eq!(sim.wait_end("p1", &job, HOUR).await, JobState::Finished);
        check_copies(&sim, "p1", &files, &before, 1, false);
        assert!(sim.repo("p2").is_empty(), "a pool disabled for p2p-client received copies");

        sim.set_mode("p1", PoolMode::disabled(PoolMode::FETCH));
        sim.set_mode("p2", PoolMode::ENABLED);
        let refused = sim.create("p1", JobKind::Copy, &["-replicas=2", "-concurrency=6"], &["p2", "p3"]);
        sim.wait_until(5 * MINUTE, "failures", || {
            sim.report("p1", &refused).failures.iter().any(|f| f.code == ErrorCode::PoolDisabled.as_u32())
        })
        .await;
        sim.module("p1").cancel(&refused, true, "test").unwrap();
        sim.wait_end("p1", &refused, 5 * MINUTE).await;
        assert!(sim.repo("p2").is_empty());
        let forced = sim.create("p1", JobKind::Copy, &["-replicas=2", "-force-source-mode"], &["p2", "p3"]);
        assert_eq!(sim.wait_end("p1", &forced, HOUR).await, JobState::Finished);
        check_copies(&sim, "p1", &files, &before, 2, false);
        sim.assert_no_violations();
    });
}

// ------------------------------------------------------------------------------ crashes and races

/// A pool crashes mid-move (the source or a target) and restarts later: its module starts
/// over without jobs, its partial replicas are removed, and everything in flight for the old
/// incarnation goes nowhere. After a rerun of the move (the source's job died with it) the
/// source is empty and no file was ever without a committed replica.
#[test]
fn a_pool_crash_mid_move_loses_nothing() {
    run("a_pool_crash_mid_move_loses_nothing", SEEDS, |seed| async move {
        let mut config = SimConfig::new(&["p1", "p2", "p3", "p4"], Faults::chaos());
        config.pull_time = Duration::from_secs(5);
        let mut sim = Sim::new(seed, config);
        let files = sim.fill("p1", 15);
        let before = sim.repo("p1");
        let job = sim.create("p1", JobKind::Move, &["-concurrency=4"], &["p2", "p3", "p4"]);
        let victim = ["p1", "p2", "p3", "p4"][sim.world.random_below(4) as usize];
        tokio::time::sleep(Duration::from_secs(1 + sim.world.random_below(30))).await;
        sim.crash(victim);
        tokio::time::sleep(Duration::from_secs(1 + sim.world.random_below(400))).await;
        sim.restart(victim);
        let job = if victim == "p1" {
            sim.create("p1", JobKind::Move, &["-concurrency=4"], &["p2", "p3", "p4"])
        } else {
            job
        };
        assert_eq!(sim.wait_end("p1", &job, 6 * HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        assert!(sim.repo("p1").is_empty(), "source still holds {:?}", sim.repo("p1").keys());
        assert!(sim.partial().is_empty(), "partial replicas: {:?}", sim.partial());
        check_copies(&sim, "p1", &files, &before, 1, true);
    });
}

/// Two pools move the same files to each other at the same time (the dCache case that could
/// delete both copies): every file survives and both jobs finish.
#[test]
fn mutual_moves_never_lose_a_file() {
    run("mutual_moves_never_lose_a_file", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3"], Faults::chaos()));
        let shared: Vec<PnfsId> = (0..8).map(|_| sim.add_file("p1", FileSpec::precious(1000))).collect();
        for id in &shared {
            sim.add_replica("p2", *id, FileSpec::precious(1000));
        }
        let targets: &[&str] = if seed % 2 == 0 { &["p3"] } else { &[] };
        let t1: Vec<&str> = ["p2"].iter().chain(targets).copied().collect();
        let t2: Vec<&str> = ["p1"].iter().chain(targets).copied().collect();
        let a = sim.create("p1", JobKind::Move, &["-concurrency=4"], &t1);
        let b = sim.create("p2", JobKind::Move, &["-concurrency=4"], &t2);
        assert_eq!(sim.wait_end("p1", &a, 12 * HOUR).await, JobState::Finished, "{}", sim.info("p1", &a));
        assert_eq!(sim.wait_end("p2", &b, 12 * HOUR).await, JobState::Finished, "{}", sim.info("p2", &b));
        sim.settle().await;
        sim.assert_no_violations();
        for id in &shared {
            assert!(!sim.holders(id).is_empty(), "{id} lost");
        }
    });
}

/// `-verify` (the default of move) finds a target's existing replica damaged: the task makes a
/// new copy elsewhere instead of trusting it, and the damaged replica is taken out of service
/// (BROKEN: never read, never counted, never made more volatile). Without another target the
/// file stays on the source, and the job says why: the holder's failed verification.
#[test]
fn a_damaged_existing_replica_is_not_trusted() {
    run("a_damaged_existing_replica_is_not_trusted", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3"], Faults::jitter()));
        let x = sim.add_file("p1", FileSpec::precious(3000));
        let y = sim.add_file("p1", FileSpec::precious(3000));
        sim.add_corrupt_replica("p2", x, FileSpec::precious(3000));
        sim.add_corrupt_replica("p2", y, FileSpec::precious(3000));
        let job = sim.create("p1", JobKind::Move, &[&format!("-pnfsid={x}")], &["p2", "p3"]);
        assert_eq!(sim.wait_end("p1", &job, HOUR).await, JobState::Finished);
        let holders: Vec<String> = sim.holders(&x).iter().map(|(p, _)| p.to_string()).collect();
        assert!(holders.contains(&"p3".to_string()), "{holders:?}");
        let damaged = &sim.repo("p2")[&x];
        assert!(damaged.corrupt);
        assert_eq!(damaged.state(), ReplicaState::Broken, "the damaged replica is out of service");

        let stuck = sim.create("p1", JobKind::Move, &[&format!("-pnfsid={y}")], &["p2"]);
        let tried_twice = || sim.report("p1", &stuck).failures.iter().any(|f| f.attempts == 2);
        sim.wait_until(HOUR, "a failure", tried_twice).await;
        assert!(sim.repo("p1").contains_key(&y), "the only good copy stays");
        assert_eq!(sim.repo("p2")[&y].state(), ReplicaState::Broken);
        let report = sim.report("p1", &stuck);
        let failed = report.failures.iter().find(|f| f.pnfsid == y.to_string()).expect("the file failed");
        let damaged = [ErrorCode::ChecksumMismatch.as_u32(), ErrorCode::FileBroken.as_u32()];
        assert!(damaged.contains(&failed.code), "the reason is the damaged replica: {failed:?}");
        // Its last failure: the holder refused it, not "no pools available".
        let last = report.notes.iter().rev().find(|n| n.pnfsid == Some(y.to_string())).expect("a note about it");
        let no_pools = |f: &TaskFailure| matches!(f, TaskFailure::NoTarget { reason: NoTarget::NoPools, .. });
        assert!(!matches!(&last.about, Noted::Failed(f) if no_pools(f)), "{last:?}");
        sim.module("p1").cancel(&stuck, true, "test").unwrap();
        assert_eq!(sim.wait_end("p1", &stuck, 5 * MINUTE).await, JobState::Cancelled);
        assert!(sim.repo("p1").contains_key(&y));
        sim.settle().await;
        sim.assert_no_violations();
    });
}

/// A target too small for the files: its refusals are retried elsewhere; nothing is lost.
#[test]
fn a_full_target_is_avoided() {
    run("a_full_target_is_avoided", SEEDS, |seed| async move {
        let mut config = SimConfig::new(&["p1", "p2", "p3"], Faults::jitter());
        config.pools[1].capacity = 6000;
        let mut sim = Sim::new(seed, config);
        let files = sim.fill("p1", 12);
        let before = sim.repo("p1");
        let job = sim.create("p1", JobKind::Move, &["-concurrency=4"], &["p2", "p3"]);
        assert_eq!(sim.wait_end("p1", &job, 2 * HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        assert!(sim.repo("p1").is_empty());
        check_copies(&sim, "p1", &files, &before, 1, false);
        let used: u64 = sim.repo("p2").values().map(|r| r.entry.attrs.size).sum();
        assert!(used <= 6000);
    });
}

/// Eager jobs under faults: unanswered holders are replaced by new copies; `-replicas=2`
/// still counts distinct pools, and a move loses nothing.
#[test]
fn eager_moves_under_faults_keep_distinct_replicas() {
    run("eager_moves_under_faults_keep_distinct_replicas", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3", "p4"], Faults::chaos()));
        let files = sim.fill("p1", 12);
        let before = sim.repo("p1");
        let job = sim.create("p1", JobKind::Move, &["-eager", "-replicas=2", "-concurrency=3"], &["p2", "p3", "p4"]);
        assert_eq!(sim.wait_end("p1", &job, 6 * HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        assert!(sim.repo("p1").is_empty());
        check_copies(&sim, "p1", &files, &before, 2, true);
    });
}

/// `migration cancel -force` while messages are lost and duplicated: still bounded, still no
/// partial replica once things settle, still nothing lost.
#[test]
fn cancel_under_faults_is_bounded() {
    run("cancel_under_faults_is_bounded", SEEDS, |seed| async move {
        let mut config = SimConfig::new(&["p1", "p2", "p3"], Faults::chaos());
        config.pull_time = Duration::from_secs(20);
        let mut sim = Sim::new(seed, config);
        sim.fill("p1", 12);
        let job = sim.create("p1", JobKind::Move, &["-concurrency=4"], &["p2", "p3"]);
        tokio::time::sleep(Duration::from_secs(5 + sim.world.random_below(60))).await;
        sim.module("p1").cancel(&job, true, "operator").expect("the job exists");
        let end = sim.wait_end("p1", &job, 5 * MINUTE).await;
        assert!(matches!(end, JobState::Cancelled | JobState::Finished), "{end}");
        sim.settle().await;
        assert!(sim.partial().is_empty(), "partial replicas after the cancel: {:?}", sim.partial());
        sim.assert_no_violations();
    });
}

/// Two sources copy the same file to the same target at once: one pull wins, the other
/// attempt sees a replica being received and retries later; the target ends with one whole
/// replica.
#[test]
fn two_sources_copying_one_file_to_one_target() {
    run("two_sources_copying_one_file_to_one_target", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3"], Faults::jitter()));
        let files: Vec<PnfsId> = (0..6).map(|_| sim.add_file("p1", FileSpec::precious(2000))).collect();
        for id in &files {
            sim.add_replica("p2", *id, FileSpec::cached(2000));
        }
        let a = sim.create("p1", JobKind::Copy, &["-concurrency=6"], &["p3"]);
        let b = sim.create("p2", JobKind::Copy, &["-concurrency=6"], &["p3"]);
        assert_eq!(sim.wait_end("p1", &a, HOUR).await, JobState::Finished);
        assert_eq!(sim.wait_end("p2", &b, HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        for id in &files {
            let on_p3 = sim.repo("p3").get(id).cloned().expect("copied");
            assert_eq!(on_p3.state(), ReplicaState::Precious, "p1's PRECIOUS wins over p2's CACHED");
        }
    });
}

// Regressions: the target remembers attempts that ended or were cancelled before their copy
// request arrived, so late and duplicated requests are never carried out twice.

#[test]
fn late_duplicate_copies_keep_replicas_exact() {
    run("late_duplicate_copies_keep_replicas_exact", 40, |seed| async move {
        let faults = Faults { late_copy: 0.5, late_delay: Duration::from_secs(300), ..Faults::chaos() };
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3", "p4"], faults));
        let files = sim.fill("p1", 10);
        let job = sim.create("p1", JobKind::Copy, &["-replicas=2", "-concurrency=3"], &["p2", "p3", "p4"]);
        assert_eq!(sim.wait_end("p1", &job, 6 * HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        for id in &files {
            let n = sim.holders(id).len() - 1;
            assert_eq!(n, 2, "{id} on {n} targets");
        }
    });
}

#[test]
fn a_late_duplicate_copy_is_not_executed_again() {
    run("a_late_duplicate_copy_is_not_executed_again", 40, |seed| async move {
        let faults = Faults { late_copy: 1.0, late_delay: Duration::from_secs(300), ..Faults::jitter() };
        let mut config = SimConfig::new(&["p1", "p2", "p3"], faults);
        config.pull_time = Duration::from_secs(20);
        let mut sim = Sim::new(seed, config);
        sim.fill("p1", 6);
        let job = sim.create("p1", JobKind::Copy, &["-concurrency=6"], &["p2", "p3"]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        sim.module("p1").cancel(&job, true, "operator").unwrap();
        assert_eq!(sim.wait_end("p1", &job, HOUR).await, JobState::Cancelled);
        // The job does not wait for its targets to confirm the cancel: their partial copies
        // may still be there when it is CANCELLED, and go soon after.
        let committed = |on: &str| sim.repo(on).values().filter(|r| r.state().is_committed()).count();
        let after_cancel = committed("p2") + committed("p3");
        sim.settle().await;
        let later = committed("p2") + committed("p3");
        assert_eq!(later, after_cancel, "copies appeared after the job was CANCELLED");
        assert!(sim.partial().is_empty(), "{:?}", sim.partial());
    });
}

/// No duplicates: the Copy request is only slow (held up 50 s, longer than the 30 s reply
/// timeout), the operator cancels, the Cancel overtakes the Copy. The target remembers the
/// cancel and refuses the Copy when it arrives, so no replica appears after CANCELLED.
#[test]
fn a_cancel_that_overtakes_its_copy_still_stops_it() {
    run("a_cancel_that_overtakes_its_copy_still_stops_it", 1, |seed| async move {
        let mut config = SimConfig::new(&["p1", "p2"], Faults::none());
        config.pull_time = Duration::from_secs(20);
        config.pull_jitter = Duration::ZERO;
        let mut sim = Sim::new(seed, config);
        let x = sim.add_file("p1", FileSpec::precious(100));
        sim.stall_next("Copy", "p2", Duration::from_secs(50));
        let job = sim.create("p1", JobKind::Copy, &[], &["p2"]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        sim.module("p1").cancel(&job, true, "operator").unwrap();
        assert_eq!(sim.wait_end("p1", &job, HOUR).await, JobState::Cancelled);
        let at_cancelled = sim.partial();
        sim.settle().await;
        eprintln!(
            "partial replicas when CANCELLED: {at_cancelled:?}; p2 after: {:?}",
            sim.repo("p2").values().map(|r| r.state()).collect::<Vec<_>>()
        );
        assert!(!sim.repo("p2").contains_key(&x), "p2 made a copy for a cancelled attempt after the job was CANCELLED");
    });
}

// Permanent jobs (docs/dcache-compatibility.md#permanent-jobs-and-save).

/// A permanent copy keeps copying the files of its storage class that arrive after it
/// started, ignores other classes, drops a queued file that is deleted, never finishes, and
/// sleeps (no tasks, no timers) while there is nothing to do.
#[test]
fn a_permanent_job_follows_the_pool() {
    run("a_permanent_job_follows_the_pool", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2"], Faults::jitter()));
        let old = sim.add_file("p1", FileSpec::precious(100).in_class("atlas:raw"));
        let other = sim.add_file("p1", FileSpec::precious(100).in_class("cms:raw"));
        let job = sim.create("p1", JobKind::Copy, &["-permanent", "-storage=atlas:raw"], &["p2"]);
        sim.wait_until(HOUR, "the old file copied", || sim.repo("p2").contains_key(&old)).await;
        sim.wait("p1", &job, HOUR, |s| s == JobState::Sleeping).await;
        let pulls = sim.world.stats().pulls_started;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(sim.state("p1", &job), JobState::Sleeping, "an idle permanent job sleeps");
        assert_eq!(sim.world.stats().pulls_started, pulls, "and copies nothing while idle");

        // New files: one of its class, one of another.
        let new = sim.add_file("p1", FileSpec::cached(200).in_class("atlas:raw"));
        let new_other = sim.add_file("p1", FileSpec::cached(200).in_class("cms:raw"));
        sim.wait_until(HOUR, "the new file copied", || sim.repo("p2").contains_key(&new)).await;
        assert!(!sim.repo("p2").contains_key(&other) && !sim.repo("p2").contains_key(&new_other));

        // A file that arrives while the target is offline waits in the queue; deleted before
        // the target is back, it leaves the queue and is never copied.
        sim.set_offline("p2", true);
        let doomed = sim.add_file("p1", FileSpec::cached(300).in_class("atlas:raw"));
        tokio::time::sleep(Duration::from_secs(30)).await;
        sim.delete_file("p1", doomed);
        sim.set_offline("p2", false);
        let last = sim.add_file("p1", FileSpec::cached(300).in_class("atlas:raw"));
        sim.wait_until(HOUR, "the last file copied", || sim.repo("p2").contains_key(&last)).await;
        sim.settle().await;
        assert!(!sim.repo("p2").contains_key(&doomed), "a deleted file is never copied");
        assert!(!sim.state("p1", &job).is_terminal(), "a permanent job never finishes by itself");
        let report = sim.report("p1", &job);
        assert_eq!(report.queued, 0, "{report:?}");
        sim.assert_no_violations();
    });
}

/// Several target pools that restart together with their source (offline for a while, then
/// back) do not make a non-eager permanent job create extra copies of files they hold: the
/// job (recreated at the source's start, as a saved job is) waits for them instead.
#[test]
fn targets_restarting_together_cause_no_extra_copies_for_a_non_eager_job() {
    run("targets_restarting_together_cause_no_extra_copies_for_a_non_eager_job", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3", "p4"], Faults::jitter()));
        let files = sim.fill("p1", 12);
        let words = ["-permanent", "-concurrency=4"];
        let first = sim.create("p1", JobKind::Copy, &words, &["p2", "p3", "p4"]);
        sim.wait_until(6 * HOUR, "every file copied once", || files.iter().all(|f| sim.holders(f).len() == 2)).await;
        sim.settle().await;
        let copies = sim.world.stats().pulls_committed;
        let _ = first;

        // The whole cluster restarts; p2 and p3 take a few minutes longer than p1.
        for p in ["p1", "p2", "p3"] {
            sim.crash(p);
        }
        sim.restart("p1");
        let again = sim.create("p1", JobKind::Copy, &words, &["p2", "p3", "p4"]);
        tokio::time::sleep(Duration::from_secs(180)).await;
        sim.restart("p2");
        sim.restart("p3");
        sim.wait_until(6 * HOUR, "every file looked at", || {
            let report = sim.report("p1", &again);
            report.queued == 0 && report.running.is_empty() && report.waiting == 0
        })
        .await;
        sim.settle().await;
        for f in &files {
            let pools: Vec<_> = sim.holders(f).into_iter().map(|(p, _)| p).collect();
            assert_eq!(pools.len(), 2, "{f} has exactly one copy: {pools:?}");
        }
        assert_eq!(sim.world.stats().pulls_committed, copies, "no new copies after the restart");
        sim.assert_no_violations();
    });
}

// Lifetime conditions and the deficit mode (docs/dcache-compatibility.md#scheduling; issue 5).

/// `-pause-when` pauses the job while the condition holds, keeps checking every 10 s (dCache
/// checked once), and resumes when it no longer holds.
#[test]
fn pause_when_pauses_and_resumes_as_the_condition_changes() {
    run("pause_when_pauses_and_resumes_as_the_condition_changes", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2"], Faults::jitter()));
        let files = sim.fill("p1", 6);
        // A big file on p1 makes the condition true.
        let ballast = sim.add_file("p1", FileSpec::precious(300_000));
        let job = sim.create("p1", JobKind::Copy, &["-pause-when=source.used > 200000"], &["p2"]);
        sim.wait("p1", &job, HOUR, |s| s == JobState::Paused).await;
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(sim.state("p1", &job), JobState::Paused, "still paused: the condition still holds");
        assert_eq!(sim.world.stats().pulls_started, 0, "a paused job starts nothing");

        sim.delete_file("p1", ballast);
        assert_eq!(sim.wait_end("p1", &job, HOUR).await, JobState::Finished, "resumed once it no longer held");
        sim.settle().await;
        for f in &files {
            assert!(sim.repo("p2").contains_key(f), "{f} copied after the pause");
        }
        sim.assert_no_violations();
    });
}

/// `-stop-when='source.used <= X'` stops a move at the threshold: the job finishes once its
/// running tasks end, the source keeps the rest, and no file is lost or half made.
#[test]
fn stop_when_ends_a_move_at_its_threshold() {
    run("stop_when_ends_a_move_at_its_threshold", SEEDS, |seed| async move {
        let mut config = SimConfig::new(&["p1", "p2"], Faults::jitter());
        config.pull_time = Duration::from_secs(5);
        let mut sim = Sim::new(seed, config);
        let files: Vec<PnfsId> = (0..20).map(|_| sim.add_file("p1", FileSpec::cached(10_000))).collect();
        let job = sim.create("p1", JobKind::Move, &["-stop-when=source.used <= 100000", "-concurrency=3"], &["p2"]);
        assert_eq!(sim.wait_end("p1", &job, HOUR).await, JobState::Finished);
        sim.settle().await;
        let left = sim.repo("p1").len();
        let moved = sim.repo("p2").len();
        assert!(left > 0 && left <= 10, "the move stopped at the threshold: {left} files left on p1");
        assert!(left >= 10 - 3, "it stopped soon after: only the running tasks went on ({left} left)");
        assert_eq!(left + moved, files.len(), "every file is in exactly one place");
        assert!(sim.partial().is_empty(), "no half-made replica: {:?}", sim.partial());
        let report = sim.report("p1", &job);
        assert!(report.running.is_empty(), "{report:?}");
        sim.assert_no_violations();
    });
}

/// `-target-deficit-mode=limit` makes the replicas it can and notes the shortfall, but a
/// move never deletes a source that is short of its copies (dCache could delete the only one).
#[test]
fn deficit_limit_never_deletes_a_source_short_of_its_copies() {
    run("deficit_limit_never_deletes_a_source_short_of_its_copies", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3"], Faults::jitter()));
        let files = sim.fill("p1", 5);
        sim.set_offline("p3", true);
        let words = ["-target-deficit-mode=limit", "-replicas=2"];
        let job = sim.create("p1", JobKind::Move, &words, &["p2", "p3"]);
        assert_eq!(sim.wait_end("p1", &job, HOUR).await, JobState::Finished);
        sim.settle().await;
        for f in &files {
            assert!(sim.repo("p1").contains_key(f), "{f}: the source is kept with one copy of two");
            assert!(sim.repo("p2").contains_key(f), "{f}: the one copy possible was made");
        }
        // Listed with the failures, for good, as short of targets (the note in `migration info`
        // reads "File replicas truncated at 1 due to pool availability (2 requested)").
        let report = sim.report("p1", &job);
        for f in &files {
            let line = report.failures.iter().find(|l| l.pnfsid == f.to_string()).expect("a failure line per file");
            assert_eq!((line.code, line.state), (ErrorCode::NoTargets.as_u32(), FailureState::GivenUp), "{line:?}");
        }

        // No usable target at all: nothing is copied, nothing deleted, and the job ends.
        sim.set_offline("p2", true);
        let more = sim.fill("p1", 3);
        let ids: Vec<String> = more.iter().map(|i| i.to_string()).collect();
        let only = format!("-pnfsid={}", ids.join(","));
        let job = sim.create("p1", JobKind::Move, &["-target-deficit-mode=limit", &only], &["p2", "p3"]);
        assert_eq!(sim.wait_end("p1", &job, HOUR).await, JobState::Finished);
        sim.settle().await;
        for f in &more {
            assert_eq!(sim.holders(f).len(), 1, "{f}: no copy, and the source kept");
            assert!(sim.repo("p1").contains_key(f));
        }
        let report = sim.report("p1", &job);
        assert_eq!(report.completed_files, 0, "{report:?}");
        for f in &more {
            let line = report.failures.iter().find(|l| l.pnfsid == f.to_string()).expect("listed, not counted as done");
            assert_eq!((line.code, line.state), (ErrorCode::NoTargets.as_u32(), FailureState::GivenUp), "{line:?}");
        }

        // -smode=cached would make a precious source evictable: not for a file short of copies.
        let precious = sim.add_file("p1", FileSpec::precious(100));
        let only = format!("-pnfsid={precious}");
        let job =
            sim.create("p1", JobKind::Copy, &["-target-deficit-mode=limit", "-smode=cached", &only], &["p2", "p3"]);
        assert_eq!(sim.wait_end("p1", &job, HOUR).await, JobState::Finished);
        assert_eq!(sim.repo("p1")[&precious].state(), ReplicaState::Precious, "the source stays precious");
        sim.assert_no_violations();
    });
}

/// What `rebalance pgroup` starts (docs/dcache-compatibility.md#rebalance, relative metric) levels three pools of
/// unequal fill, also with two pools below the level: each job counts the copies it sends
/// against its targets' figures at once, so a pool below the level is not overfilled between
/// two refreshes. Every file ends on exactly one pool.
#[test]
fn a_relative_rebalance_levels_three_pools() {
    run("a_relative_rebalance_levels_three_pools", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3"], Faults::jitter()));
        const SIZE: usize = 50_000;
        let mut files = Vec::new();
        for _ in 0..60 {
            files.push(sim.add_file("p1", FileSpec::cached(SIZE)));
        }
        for _ in 0..20 {
            files.push(sim.add_file("p2", FileSpec::cached(SIZE)));
        }
        let total: u64 = 10_000_000; // SimConfig::new gives every pool 10 MB
        let f = (80 * SIZE) as f64 / (3 * total) as f64;
        let include = format!("-include-when=target.used < {f} * target.total");
        let stop = format!("-stop-when=targets == 0 or source.used <= {f} * source.total");
        let words = ["-id=rebalance", "-refresh=300", include.as_str(), stop.as_str()];
        let jobs: Vec<(&str, String)> = ["p1", "p2", "p3"]
            .into_iter()
            .map(|p| (p, sim.create(p, JobKind::Move, &words, &["p1", "p2", "p3"])))
            .collect();
        for (p, job) in &jobs {
            assert_eq!(sim.wait_end(p, job, 6 * HOUR).await, JobState::Finished, "{p}");
        }
        sim.settle().await;
        let level = f * total as f64 / SIZE as f64;
        for p in ["p1", "p2", "p3"] {
            let n = sim.repo(p).len() as f64;
            assert!((n - level).abs() <= 2.0, "{p} holds {n} files; the level is {level:.2}");
        }
        for id in &files {
            assert_eq!(sim.holders(id).len(), 1, "{id} is on exactly one pool");
        }
        sim.assert_no_violations();
    });
}

// ------------------------------------------------------------------------------ outside the happy envelope

/// A move into a target that runs out of room: the target makes room by evicting its own
/// cached replicas, never the copies the move delivered (their sources are gone, and with
/// `-atime` they look the oldest). Once only such copies are left, the job says "All target
/// pools are full" and waits; nothing is lost. (Before holds, the target evicted the job's own
/// deliveries: files vanished while `migration info` counted them as completed.)
#[test]
fn a_move_into_a_full_target_never_evicts_what_it_moved() {
    run("a_move_into_a_full_target_never_evicts_what_it_moved", SEEDS, |seed| async move {
        let (mut sim, filler, files, job) = full_target_move(seed);
        wait_full(&sim, &job).await;
        // It waits rather than making room out of what it moved: still 13 after more refreshes.
        tokio::time::sleep(30 * MINUTE).await;
        assert!(!sim.state("p1", &job).is_terminal());
        end_full_target_move(&mut sim, &filler, &files, &job).await;
    });
}

/// The full target of a move crashes (or loses power) while the job runs and comes back: the
/// holds on what the job delivered come back with it (as far as they were flushed), the job's
/// refreshes keep renewing them, and hours later nothing it moved has been evicted.
#[test]
fn a_full_target_that_restarts_still_never_evicts_what_a_move_delivered() {
    run("a_full_target_that_restarts_still_never_evicts_what_a_move_delivered", SEEDS, |seed| async move {
        let (mut sim, filler, files, job) = full_target_move(seed);
        // The target goes down after some copies (a random number of them), for a random while.
        let before = 3 + sim.world.random_below(8);
        sim.wait_until(HOUR, "some copies", || sim.report("p1", &job).completed_files >= before).await;
        sim.crash("p2");
        tokio::time::sleep(Duration::from_secs(1 + sim.world.random_below(600))).await;
        sim.restart("p2");
        wait_full(&sim, &job).await;
        // Longer than a hold lasts without renewal: only the job's renewals keep them.
        tokio::time::sleep(3 * HOUR).await;
        end_full_target_move(&mut sim, &filler, &files, &job).await;
    });
}

/// p2 holds 40,000 bytes: five 4,000-byte cached files of its own (recently used, evictable)
/// and room for 13 of the twenty 3,000-byte files that p1 moves to it (old access times, so
/// they would be evicted first but for the holds). Returns the sim, p2's files, p1's, the job.
fn full_target_move(seed: u64) -> (Sim, Vec<PnfsId>, Vec<PnfsId>, String) {
    let mut config = SimConfig::new(&["p1", "p2"], Faults::jitter());
    config.pools[1].capacity = 40_000;
    let mut sim = Sim::new(seed, config);
    let mut filler = Vec::new();
    for _ in 0..5 {
        let mut spec = FileSpec::cached(4000);
        spec.accessed_ago = 10;
        let id = sim.add_file("p2", spec);
        sim.unprotect(&id);
        filler.push(id);
    }
    let files: Vec<PnfsId> = (0..20)
        .map(|_| {
            let mut spec = FileSpec::cached(3000);
            spec.accessed_ago = 864_000;
            sim.add_file("p1", spec)
        })
        .collect();
    let job = sim.create("p1", JobKind::Move, &["-concurrency=4", "-refresh=30"], &["p2"]);
    (sim, filler, files, job)
}

/// A note that a file found every target full.
fn all_full(note: &NoteLine) -> bool {
    matches!(&note.about, Noted::Failed(f) if matches!(**f, TaskFailure::NoTarget { reason: NoTarget::AllFull, .. }))
}

/// Until the target holds 13 moved files and the job says why it waits.
async fn wait_full(sim: &Sim, job: &str) {
    sim.wait_until(2 * HOUR, "the target to fill up", || {
        let report = sim.report("p1", job);
        report.completed_files == 13 && report.notes.iter().any(all_full)
    })
    .await;
}

/// Still 13 moved; cancel; only p2's own files were evicted, and every moved file is on
/// exactly one pool.
async fn end_full_target_move(sim: &mut Sim, filler: &[PnfsId], files: &[PnfsId], job: &str) {
    assert_eq!(sim.report("p1", job).completed_files, 13);
    sim.module("p1").cancel(job, false, "operator").unwrap();
    assert_eq!(sim.wait_end("p1", job, HOUR).await, JobState::Cancelled);
    sim.settle().await;
    sim.assert_no_violations();
    let evicted = sim.evicted("p2");
    assert_eq!(evicted.iter().copied().collect::<BTreeSet<_>>(), filler.iter().copied().collect());
    let (on_source, on_target) = (sim.repo("p1"), sim.repo("p2"));
    for id in files {
        assert!(on_source.contains_key(id) ^ on_target.contains_key(id), "{id} on exactly one pool");
    }
    assert_eq!(on_target.len(), 13);
}

/// An operator changes sources while they move: `rep set precious`, `rep set sticky`, a new
/// pin, `rep rm`. Every change the operator was told was done stays true of some committed
/// replica at every moment (the checker looks after each change): a source changed after its
/// task began is not deleted against the older copy; the copy is updated first.
#[test]
fn operator_changes_during_a_move_are_never_lost() {
    run("operator_changes_during_a_move_are_never_lost", SEEDS, |seed| async move {
        let mut config = SimConfig::new(&["p1", "p2", "p3"], Faults::jitter());
        config.pull_time = Duration::from_secs(20);
        let mut sim = Sim::new(seed, config);
        let files: Vec<PnfsId> = (0..12).map(|_| sim.add_file("p1", FileSpec::cached(1000))).collect();
        let job = sim.create("p1", JobKind::Move, &["-concurrency=6"], &["p2", "p3"]);
        tokio::time::sleep(Duration::from_secs(3 + sim.world.random_below(20))).await;
        let mut acked = 0;
        for (i, id) in files.iter().enumerate() {
            let done = match i % 4 {
                0 => sim.operator_set_precious("p1", *id),
                1 => sim.operator_set_sticky("p1", *id, StickyRecord::new("ops", NEVER)),
                2 => sim.operator_set_sticky("p1", *id, StickyRecord::new(format!("{PIN_PREFIX}-ops"), NEVER)),
                _ => {
                    if i == 11 {
                        sim.delete_file("p1", *id);
                    }
                    false
                }
            };
            acked += usize::from(done);
        }
        assert!(acked > 0, "some changes reached sources that were still there");
        assert_eq!(sim.wait_end("p1", &job, 2 * HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        assert!(sim.partial().is_empty(), "{:?}", sim.partial());
        // Whatever the operator changed was moved with it. Only a pin set during the move (not
        // there to travel when the task began) keeps its source, as CACHED with the pin.
        let pin = format!("{PIN_PREFIX}-ops");
        for (id, r) in sim.repo("p1") {
            assert_eq!(r.state(), ReplicaState::Cached, "{id}");
            assert!(r.sticky().iter().any(|s| s.owner == pin), "{id} left on the source: {:?}", r.sticky());
        }
    });
}

/// A target that stops answering mid-copy (a frozen process): its tasks give up after the
/// second unanswered ping instead of pinging for ever, the files are copied elsewhere, and the
/// job finishes; a plain cancel ends in bounded time. Nothing is lost.
#[test]
fn a_target_that_never_answers_is_given_up() {
    run("a_target_that_never_answers_is_given_up", SEEDS, |seed| async move {
        let mut config = SimConfig::new(&["p1", "p2", "p3"], Faults::jitter());
        config.pull_time = Duration::from_secs(600);
        // One file per unit, so that the copies spread over both targets.
        config.settings.batch_files = 1;
        let mut sim = Sim::new(seed, config);
        let files = sim.fill("p1", 8);
        let before = sim.repo("p1");
        let job = sim.create("p1", JobKind::Move, &["-concurrency=8"], &["p2", "p3"]);
        let copying = |target: &str| sim.copying("p1", &job, target);
        sim.wait_until(HOUR, "copies under way", || copying("p2") + copying("p3") == 8).await;
        assert!(copying("p3") > 0, "some copies go to the target that will freeze");
        sim.freeze("p3", true);
        if seed % 2 == 0 {
            assert_eq!(sim.wait_end("p1", &job, 6 * HOUR).await, JobState::Finished);
            sim.settle().await;
            sim.assert_no_violations();
            assert!(sim.repo("p1").is_empty(), "{:?}", sim.repo("p1").keys());
            check_copies(&sim, "p1", &files, &before, 1, false);
            for id in &files {
                assert_eq!(sim.holders(id)[0].0, pool("p2"), "{id}");
            }
        } else {
            sim.module("p1").cancel(&job, false, "operator").unwrap();
            // Bounded: two ping rounds and their timeouts, not "until the target comes back".
            assert_eq!(sim.wait_end("p1", &job, 30 * MINUTE).await, JobState::Cancelled);
            sim.settle().await;
            sim.assert_no_violations();
        }
    });
}

/// `migration cancel -force` with a frozen target: the job is CANCELLED within 5 simulated
/// seconds (it does not wait for the target) and holds no file lock; the move leaves every
/// source where it was. When the target thaws, the cancel it missed reaches it (the source
/// keeps sending it), so the copies it was making are dropped with their partial data: no
/// copy of a cancelled attempt is committed afterwards, nothing partial is left, nothing is
/// lost.
#[test]
fn a_forced_cancel_does_not_wait_for_a_frozen_target() {
    run("a_forced_cancel_does_not_wait_for_a_frozen_target", SEEDS, |seed| async move {
        let mut config = SimConfig::new(&["p1", "p2", "p3"], Faults::jitter());
        // Copies outlast the freeze: a copy on the frozen target would commit after the thaw
        // if the cancel never reached it.
        config.pull_time = Duration::from_secs(600);
        config.settings.batch_files = 1;
        let mut sim = Sim::new(seed, config);
        let files = sim.fill("p1", 8);
        let before = sim.repo("p1");
        let job = sim.create("p1", JobKind::Move, &["-concurrency=8"], &["p2", "p3"]);
        let copying = |target: &str| sim.copying("p1", &job, target);
        sim.wait_until(HOUR, "copies under way", || copying("p2") + copying("p3") == 8).await;
        assert!(copying("p3") > 0, "some copies go to the target that will freeze");
        sim.freeze("p3", true);
        sim.module("p1").cancel(&job, true, "operator").unwrap();
        assert_eq!(sim.wait_end("p1", &job, Duration::from_secs(5)).await, JobState::Cancelled);
        // The locks went with the tasks: another job may take the files at once.
        let again = sim.create("p1", JobKind::Copy, &["-concurrency=8"], &["p2"]);
        sim.wait_until(MINUTE, "the second job starts its copies", || sim.copying("p1", &again, "p2") == 8).await;
        sim.module("p1").cancel(&again, true, "operator").unwrap();
        assert_eq!(sim.wait_end("p1", &again, Duration::from_secs(5)).await, JobState::Cancelled);
        // The target stays frozen for a while (longer than a request's timeout), then thaws
        // with its copies still running.
        tokio::time::sleep(2 * MINUTE).await;
        sim.freeze("p3", false);
        sim.settle().await;
        sim.assert_no_violations();
        assert!(sim.partial().is_empty(), "{:?}", sim.partial());
        assert_eq!(sim.world.stats().pulls_committed, 0, "no cancelled copy was committed");
        // A cancelled move leaves its sources in place, untouched.
        assert_eq!(sim.repo("p1").keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>());
        for id in &files {
            let holders: Vec<_> = sim.holders(id).into_iter().map(|(p, _)| p).collect();
            assert_eq!(holders, vec![pool("p1")], "{id}");
            assert_eq!(sim.repo("p1")[id].state(), before[id].state(), "{id}");
        }
    });
}

/// Targets whose disks fail the commit's sync and sometimes the undo too: a failed commit
/// keeps nothing visible, a stuck receiving entry blocks only its own file on its own pool
/// until that pool restarts, and the move ends with every file intact on a target.
/// Metadata flushes fail on every pool (30% of the module's changes: states, sticky
/// records, source removals, checksums), half of them after the change reached the disk, so
/// the module cannot tell whether a change was made. Nothing is lost, nothing partial shows,
/// and once the disks behave the move finishes with one copy of each file.
#[test]
fn metadata_flushes_that_fail_lose_nothing() {
    run("metadata_flushes_that_fail_lose_nothing", SEEDS, |seed| async move {
        let faults = Faults { meta_failure: 0.3, ..Faults::jitter() };
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3"], faults));
        let files = sim.fill("p1", 24);
        let before = sim.repo("p1");
        let job = sim.create("p1", JobKind::Move, &["-concurrency=4"], &["p2", "p3"]);
        sim.wait_until(HOUR, "failed flushes of both kinds, or the end", || {
            let stats = sim.world.stats();
            (stats.meta_failed_made > 0 && stats.meta_failed > stats.meta_failed_made)
                || sim.state("p1", &job).is_terminal()
        })
        .await;
        assert!(sim.world.stats().meta_failed > 0, "some flushes failed");
        sim.world.set_faults(Faults::jitter());
        assert_eq!(sim.wait_end("p1", &job, 6 * HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        assert!(sim.partial().is_empty(), "{:?}", sim.partial());
        assert!(sim.repo("p1").is_empty(), "{:?}", sim.repo("p1").keys());
        check_copies(&sim, "p1", &files, &before, 1, false);
    });
}

#[test]
fn disks_that_fail_a_commit_or_its_undo_lose_nothing() {
    run("disks_that_fail_a_commit_or_its_undo_lose_nothing", SEEDS, |seed| async move {
        let faults = Faults { disk_failure: 0.3, undo_failure: 0.5, ..Faults::jitter() };
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2", "p3"], faults));
        let files = sim.fill("p1", 12);
        let before = sim.repo("p1");
        let job = sim.create("p1", JobKind::Move, &["-concurrency=4"], &["p2", "p3"]);
        sim.wait_until(HOUR, "a failed commit", || sim.stuck() > 0 || sim.state("p1", &job).is_terminal()).await;
        sim.world.set_faults(Faults::jitter());
        // The operator restarts the targets: restart recovery removes the stuck entries.
        for target in ["p2", "p3"] {
            sim.crash(target);
            tokio::time::sleep(Duration::from_secs(30)).await;
            sim.restart(target);
        }
        assert_eq!(sim.stuck(), 0);
        assert_eq!(sim.wait_end("p1", &job, 6 * HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        assert!(sim.partial().is_empty(), "{:?}", sim.partial());
        assert!(sim.repo("p1").is_empty(), "{:?}", sim.repo("p1").keys());
        check_copies(&sim, "p1", &files, &before, 1, false);
    });
}

// ------------------------------------------------------------------------------ batches

/// A config whose jobs carry at most `files` small files per unit, with pulls slow enough
/// that batches are seen under way.
fn batched(names: &[&str], faults: Faults, files: usize) -> SimConfig {
    let mut config = SimConfig::new(names, faults);
    config.settings.batch_files = files;
    config.pull_time = Duration::from_secs(3);
    config
}

/// A move of small and large files in one job under a network that delays, duplicates,
/// reorders and loses messages (batches and their finished messages included): small files go
/// in batches, large ones alone, and every file ends on exactly one target with its bytes,
/// checksum, state and records; the source is empty and nothing was ever lost on the way.
#[test]
fn batches_of_mixed_sizes_move_every_file_once() {
    run("batches_of_mixed_sizes_move_every_file_once", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, batched(&["p1", "p2", "p3", "p4"], Faults::chaos(), 8));
        let mut files = sim.fill("p1", 40);
        for _ in 0..3 {
            files.push(sim.add_file("p1", FileSpec::precious(1_500_000)));
        }
        let before = sim.repo("p1");
        let now = sim.world.now();
        let job = sim.create("p1", JobKind::Move, &["-concurrency=3"], &["p2", "p3", "p4"]);
        let mut saw_batch = false;
        while !sim.state("p1", &job).is_terminal() {
            saw_batch |= sim.report("p1", &job).batches > 0;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(sim.state("p1", &job), JobState::Finished);
        assert!(saw_batch, "small files went in batches");
        sim.settle().await;
        sim.assert_no_violations();
        assert!(sim.repo("p1").is_empty(), "source still holds {:?}", sim.repo("p1").keys());
        assert!(sim.partial().is_empty(), "partial replicas: {:?}", sim.partial());
        check_copies(&sim, "p1", &files, &before, 1, false);
        for id in &files {
            let (p, r) = &sim.holders(id)[0];
            assert_eq!(r.state(), before[id].state(), "{id} on {p}");
            let src_records: BTreeSet<_> =
                before[id].sticky().iter().filter(|r| r.is_valid(now)).map(|r| (r.owner.clone(), r.expire)).collect();
            assert_eq!(records(r.sticky()), src_records, "{id} on {p}: records (pins moved)");
        }
        let report = sim.report("p1", &job);
        assert_eq!(report.completed_files, files.len() as u64, "{report:?}");
    });
}

/// Inside one batch, one file's pull breaks (twice), one is deleted by an operator while the
/// batch is under way, and one is locked by another job of the pool: each fails or waits on
/// its own, the rest of the batch completes, and in the end every file that still exists is
/// moved and the deleted one is nowhere.
#[test]
fn one_file_of_a_batch_fails_alone() {
    run("one_file_of_a_batch_fails_alone", SEEDS, |seed| async move {
        let mut sim = Sim::new(seed, batched(&["p1", "p2", "p3"], Faults::jitter(), 16));
        let files: Vec<PnfsId> = (0..16).map(|_| sim.add_file("p1", FileSpec::cached(1000))).collect();
        let before = sim.repo("p1");
        let (broken, deleted, locked) = (files[3], files[7], files[11]);
        sim.fail_pulls(broken, 2);
        // Another job copies `locked` to p3, slowly: it holds the file's lock meanwhile.
        sim.slow_pulls("p3", Duration::from_secs(60));
        let other = sim.create("p1", JobKind::Copy, &[&format!("-pnfsid={locked}")], &["p3"]);
        sim.wait_until(MINUTE, "the other job to take its file", || sim.module("p1").is_locked(&locked)).await;
        let job = sim.create("p1", JobKind::Move, &["-concurrency=1"], &["p2"]);
        sim.wait_until(MINUTE, "the batch under way", || sim.module("p1").is_locked(&deleted)).await;
        sim.delete_file("p1", deleted);
        assert_eq!(sim.wait_end("p1", &job, 6 * HOUR).await, JobState::Finished);
        assert_eq!(sim.wait_end("p1", &other, HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        assert!(sim.repo("p1").is_empty(), "source still holds {:?}", sim.repo("p1").keys());
        assert!(sim.partial().is_empty(), "partial replicas: {:?}", sim.partial());
        let kept: Vec<PnfsId> = files.iter().copied().filter(|f| *f != deleted).collect();
        for id in &kept {
            let on2 = sim.repo("p2");
            let r = on2.get(id).unwrap_or_else(|| panic!("{id} is not on p2"));
            assert_eq!(r.data, before[id].data, "{id}: bytes");
            assert_eq!(r.entry.attrs.checksum, before[id].entry.attrs.checksum, "{id}: checksum");
        }
        assert!(sim.holders(&deleted).is_empty(), "the deleted file is nowhere");
        let report = sim.report("p1", &job);
        // The broken file took three tries, each a file of its own after the first.
        assert!(report.attempts >= kept.len() as u64 + 2, "{report:?}");
        let locked_noted = report.notes.iter().any(|n| n.about == Noted::FileLocked);
        assert!(locked_noted || sim.repo("p3").contains_key(&locked), "{report:?}");
    });
}

/// The target crashes after it committed part of a batch and restarts: the job sees the
/// restart, tries the rest again, and every file ends on exactly one target once; no source
/// was removed without its committed copy.
#[test]
fn a_target_crash_after_half_a_batch_loses_nothing() {
    run("a_target_crash_after_half_a_batch_loses_nothing", SEEDS, |seed| async move {
        let mut config = batched(&["p1", "p2", "p3"], Faults::jitter(), 20);
        config.pull_jitter = Duration::from_secs(20);
        config.settings.refresh = Duration::from_secs(10);
        let mut sim = Sim::new(seed, config);
        let files: Vec<PnfsId> = (0..20).map(|_| sim.add_file("p1", FileSpec::precious(2000))).collect();
        let before = sim.repo("p1");
        let job = sim.create("p1", JobKind::Move, &["-concurrency=1"], &["p2"]);
        sim.wait_until(HOUR, "part of the batch committed on p2", || {
            let n = sim.repo("p2").values().filter(|r| r.state().is_committed()).count();
            n > 0 && n < files.len()
        })
        .await;
        sim.crash("p2");
        tokio::time::sleep(Duration::from_secs(5 + sim.world.random_below(60))).await;
        sim.restart("p2");
        // Well within the 3 minutes that the copies' pings (2) and the wait for finished
        // messages (1 more) would take: the job sees the restart at its next refresh.
        assert_eq!(sim.wait_end("p1", &job, 100 * Duration::from_secs(1)).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        assert!(sim.repo("p1").is_empty(), "source still holds {:?}", sim.repo("p1").keys());
        assert!(sim.partial().is_empty(), "partial replicas: {:?}", sim.partial());
        check_copies(&sim, "p1", &files, &before, 1, false);
        for id in &files {
            assert_eq!(sim.holders(id)[0].1.state(), ReplicaState::Precious, "{id}");
        }
        let report = sim.report("p1", &job);
        assert_eq!(report.completed_files, files.len() as u64, "{report:?}");
    });
}

/// Batches and their finished messages duplicated, delivered late and out of order, many of
/// them: no copy is made twice on one pool, no outcome is credited to another attempt, and
/// each file is on exactly the two distinct pools `-replicas=2` asks for.
#[test]
fn duplicated_and_late_batches_keep_replicas_exact() {
    run("duplicated_and_late_batches_keep_replicas_exact", SEEDS, |seed| async move {
        let mut faults = Faults::chaos();
        faults.duplicate = 0.3;
        faults.late_copy = 0.3;
        faults.late_finished = 0.3;
        let mut sim = Sim::new(seed, batched(&["p1", "p2", "p3", "p4"], faults, 6));
        let files = sim.fill("p1", 30);
        let before = sim.repo("p1");
        let job = sim.create("p1", JobKind::Copy, &["-replicas=2", "-concurrency=2"], &["p2", "p3", "p4"]);
        assert_eq!(sim.wait_end("p1", &job, 6 * HOUR).await, JobState::Finished);
        sim.settle().await;
        sim.assert_no_violations();
        assert!(sim.partial().is_empty(), "partial replicas: {:?}", sim.partial());
        check_copies(&sim, "p1", &files, &before, 2, false);
        assert_eq!(sim.repo("p1").len(), files.len(), "a copy keeps its sources");
    });
}

/// A target refuses a batch of copies that asks for more than it holds in memory at once
/// (`MAX_COPY_BATCH_BYTES`), and takes on none of its copies; a batch within the bound is
/// answered one answer per request.
#[test]
fn a_batch_of_copies_too_large_is_refused_whole() {
    use tidepool_p2p::message::{CopyAnswer, CopyRequest, MAX_COPY_BATCH_BYTES, MigrationReply, MigrationRequest};
    use tidepool_p2p::model::FileAttributes;
    use tidepool_p2p::{AttemptId, ErrorCode, TaskId};
    run("a_batch_of_copies_too_large_is_refused_whole", 1, |seed| async move {
        let mut sim = Sim::new(seed, SimConfig::new(&["p1", "p2"], Faults::none()));
        let files: Vec<PnfsId> = (0..3).map(|_| sim.add_file("p1", FileSpec::cached(100))).collect();
        let request = |n: usize, size: u64| CopyRequest {
            attempt: AttemptId(n as u64 + 1),
            job: "1".parse().unwrap(),
            task: TaskId(n as u64 + 1),
            attributes: FileAttributes {
                pnfsid: files[n],
                size,
                checksum: None,
                storage_class: None,
                cache_class: None,
                access_latency: None,
                retention_policy: None,
                hsm: None,
                creation_time: 0,
                access_time: 0,
            },
            state: ReplicaState::Cached,
            sticky: vec![],
            verify: false,
            atime: None,
            force_source_mode: false,
            meta_only: false,
            releases_source: false,
        };
        let half = MAX_COPY_BATCH_BYTES / 2;
        let big = vec![request(0, half), request(1, half), request(2, 1)];
        match sim.module("p2").serve(pool("p1"), MigrationRequest::CopyBatch(big)).await {
            MigrationReply::Error(e) => assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e:?}"),
            other => panic!("a batch over the bound is refused whole, not {other:?}"),
        }
        sim.settle().await;
        assert!(sim.repo("p2").is_empty(), "none of its copies was taken on");
        let fits = vec![request(0, 100), request(1, 100)];
        match sim.module("p2").serve(pool("p1"), MigrationRequest::CopyBatch(fits)).await {
            MigrationReply::Batch(answers) => assert_eq!(answers, vec![CopyAnswer::Accepted, CopyAnswer::Accepted]),
            other => panic!("a batch within the bound is answered per request, not {other:?}"),
        }
    });
}

/// A copy whose copies land cached (evictable) on a target with room for 13 of its 20 files:
/// the job's own count of what it sent says the target is full, while the target can make
/// room for every one. The job asks the target again before deciding there is no room, so it
/// never notes "All target pools are full" and no file fails or waits a backoff for want of
/// room: each file goes as soon as the one before it landed (docs/operator-guide.md, "Full
/// targets").
#[test]
fn a_job_asks_again_before_it_decides_that_no_target_has_room() {
    run("a_job_asks_again_before_it_decides_that_no_target_has_room", SEEDS / 4, |seed| async move {
        const SIZE: usize = 2_000_000;
        let mut config = SimConfig::new(&["p1", "p2"], Faults::none());
        // The source holds all twenty (its repository makes room by eviction too).
        config.pools[0].capacity = 20 * SIZE as u64;
        config.pools[1].capacity = 13 * SIZE as u64 + SIZE as u64 / 2;
        let mut sim = Sim::new(seed, config);
        let files: Vec<PnfsId> = (0..20).map(|_| sim.add_file("p1", FileSpec::cached(SIZE))).collect();
        for id in &files {
            sim.unprotect(id);
        }
        let start = tokio::time::Instant::now();
        let job = sim.create("p1", JobKind::Copy, &["-tmode=cached", "-concurrency=1", "-refresh=300"], &["p2"]);
        assert_eq!(sim.wait_end("p1", &job, HOUR).await, JobState::Finished);
        let took = start.elapsed();
        let report = sim.report("p1", &job);
        assert_eq!(report.completed_files, 20, "{report:?}");
        assert!(!report.notes.iter().any(all_full), "decided on a stale view:\n{report:?}");
        assert!(report.failures.is_empty(), "no file failed:\n{report:?}");
        // Twenty copies of about two seconds each, one at a time, and a refresh round trip
        // now and then; far from the 300 s to the next periodic refresh.
        assert!(took < Duration::from_secs(120), "the job took {took:?}");
        assert_eq!(sim.evicted("p2").len(), 7, "the target made room by evicting its cached copies");
        sim.settle().await;
        sim.assert_no_violations();
    });
}

/// A dry run of a move with `-stop-when` plans the files the move makes before it stops, and
/// the job (one file at a time, the same seed) then moves exactly those; the rest are skipped
/// because the condition holds first. The dry run itself changes nothing.
#[test]
fn a_dry_run_plans_where_a_move_stops_and_the_job_agrees() {
    run("a_dry_run_plans_where_a_move_stops_and_the_job_agrees", 5, |seed| async move {
        let config = SimConfig::new(&["p1", "p2", "p3"], Faults::none());
        let mut sim = Sim::new(seed, config);
        let files: Vec<PnfsId> = (0..20).map(|_| sim.add_file("p1", FileSpec::cached(10_000))).collect();
        let words = ["-stop-when=source.used <= 100000", "-concurrency=1", "-seed=3"];
        let look = |sim: &Sim| -> Vec<Vec<(PnfsId, ReplicaState)>> {
            ["p1", "p2", "p3"].iter().map(|p| sim.repo(p).iter().map(|(id, r)| (*id, r.state())).collect()).collect()
        };
        let before = look(&sim);
        let plan = sim.dry_run("p1", JobKind::Move, &words, &["p2", "p3"]).await.expect("a plan");
        assert_eq!(look(&sim), before, "a dry run changes nothing");
        assert_eq!(plan.selected.files, 20);
        assert_eq!(plan.placed.files + plan.skipped.files, 20);
        assert!((10..=11).contains(&plan.placed.files), "placed {}", plan.placed.files);
        for f in plan.files.iter().filter(|f| !matches!(f.outcome, Outcome::Placed)) {
            assert_eq!(f.outcome, Outcome::Skipped { reason: Reason::Stopped }, "{f:?}");
        }
        let job = sim.create("p1", JobKind::Move, &words, &["p2", "p3"]);
        assert_eq!(sim.wait_end("p1", &job, HOUR).await, JobState::Finished);
        sim.settle().await;
        for f in &plan.files {
            let want: BTreeSet<String> = f.copies.iter().map(|c| c.pool.to_string()).collect();
            let got: BTreeSet<String> =
                ["p2", "p3"].into_iter().filter(|p| sim.repo(p).contains_key(&f.pnfsid)).map(String::from).collect();
            assert_eq!(got, want, "{}: the job put it where the plan did", f.pnfsid);
        }
        assert_eq!(sim.repo("p1").len() + plan.placed.files as usize, files.len());
        sim.assert_no_violations();
    });
}

/// A target without room for every file: the plan counts the bytes it already gave the target,
/// so the files that no longer fit are unplaced, with the job's reason.
#[test]
fn a_dry_run_counts_what_it_gave_each_target() {
    run("a_dry_run_counts_what_it_gave_each_target", 3, |seed| async move {
        let mut config = SimConfig::new(&["p1", "p2"], Faults::none());
        config.pools[1].capacity = 6000;
        let mut sim = Sim::new(seed, config);
        for _ in 0..3 {
            sim.add_file("p1", FileSpec::cached(4000));
        }
        let plan = sim.dry_run("p1", JobKind::Copy, &[], &["p2"]).await.expect("a plan");
        assert_eq!((plan.placed.files, plan.unplaced.files), (1, 2), "{}", plan.render());
        assert_eq!((plan.targets[0].files, plan.targets[0].bytes), (1, 4000));
        // The job never starts a file its targets have no room for (it asks them again and
        // waits), so the plan leaves these unplaced for want of a target with room.
        for f in plan.files.iter().filter(|f| f.copies.is_empty()) {
            assert_eq!(f.outcome, Outcome::Unplaced { reason: Reason::NoTarget }, "{f:?}");
        }
        assert!(sim.repo("p2").is_empty());
        let err = sim.dry_run("p1", JobKind::Copy, &["-replicas=2"], &["p2"]).await.unwrap_err();
        assert!(err.to_string().contains("-replicas=2 needs as many target pools"), "{err}");
    });
}

// ------------------------------------------------------------------------------ scale

/// What one job's refreshes cost over its targets during a span of simulated time.
#[derive(Debug)]
struct RefreshTraffic {
    /// Cost questions the targets answered (`PoolInfo`).
    pool_info: u64,
    /// Reads of the published costs (`Env::costs`), and the pools they covered in all.
    cost_reads: u64,
    cost_read_pools: u64,
}

/// A permanent copy job of `src` over the pool group of `src` and `targets` other pools, for
/// `span`: its 20 files are copied once each, and its refreshes (every minute, the simulations'
/// setting) ask every target, or read the published costs when `publish` (as with etcd).
async fn refresh_traffic(seed: u64, targets: usize, publish: bool, span: Duration) -> RefreshTraffic {
    let names: Vec<String> = std::iter::once("src".to_string()).chain((1..=targets).map(|i| format!("t{i}"))).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut config = SimConfig::new(&names, Faults::none());
    config.publish_costs = publish;
    let mut sim = Sim::new(seed, config);
    let files: Vec<PnfsId> = (0..20).map(|_| sim.add_file("src", FileSpec::cached(1000))).collect();
    let job = sim.create("src", JobKind::Copy, &["-permanent", "-target=pgroup"], &["all"]);
    tokio::time::sleep(span).await;
    assert!(!sim.state("src", &job).is_terminal(), "a permanent job runs on: {}", sim.info("src", &job));
    sim.assert_no_violations();
    for id in &files {
        let holders = sim.holders(id);
        assert_eq!(holders.len(), 2, "{id} on the source and one target: {holders:?}");
    }
    let stats = sim.world.stats();
    RefreshTraffic {
        pool_info: stats.messages.get("PoolInfo").copied().unwrap_or(0),
        cost_reads: stats.cost_reads,
        cost_read_pools: stats.cost_read_pools,
    }
}

/// One job over a group of `TARGETS` target pools, 30 simulated minutes, refreshed every
/// minute: asking the targets costs one request per target and refresh; with published costs
/// (etcd) a refresh is one read, and the targets are asked themselves only every ten minutes
/// (which renews the holds of a move).
async fn refresh_traffic_over(seed: u64, targets: u64) {
    // Refreshes at 0, 1, ..., 30 minutes: 31.
    let span = 30 * MINUTE + MINUTE / 2;
    let refreshes = 31;
    let started = std::time::Instant::now();
    let direct = refresh_traffic(seed, targets as usize, false, span).await;
    let direct_took = started.elapsed();
    let started = std::time::Instant::now();
    let published = refresh_traffic(seed, targets as usize, true, span).await;
    let published_took = started.elapsed();
    println!(
        "{targets} targets, asked directly: {direct:?} in {direct_took:?}; published: {published:?} in {published_took:?}"
    );
    // Each refresh asks every target once (a refresh the job asks for sooner may add a round).
    assert_eq!(direct.cost_reads, 0);
    assert_eq!(direct.pool_info % targets, 0, "{direct:?}");
    assert!((refreshes..=refreshes + 2).contains(&(direct.pool_info / targets)), "{direct:?}");
    // Published: one read per refresh, and the targets asked themselves as well at 0, 10, 20
    // and 30 minutes (each is due ten minutes after its last answer).
    assert_eq!(published.pool_info % targets, 0, "{published:?}");
    assert!((3..=4).contains(&(published.pool_info / targets)), "{published:?}");
    assert!((refreshes..=refreshes + 2).contains(&published.cost_reads), "{published:?}");
    assert_eq!(published.cost_read_pools, published.cost_reads * targets, "every read covers every target");
}

#[test]
fn a_job_over_100_targets_reads_the_published_costs_once_per_refresh() {
    run("a_job_over_100_targets_reads_the_published_costs_once_per_refresh", 1, |seed| async move {
        refresh_traffic_over(seed, 100).await;
    });
}

/// The same over 1,000 target pools: about 6 s in a debug build, so not in CI; run it with
/// `cargo test --release -p tidepool-migration --test simulated over_1000 -- --ignored --nocapture`
/// (docs/benchmarks.md records the figures).
#[test]
#[ignore = "a benchmark: 1,000 simulated pools"]
fn a_job_over_1000_targets_reads_the_published_costs_once_per_refresh() {
    run("a_job_over_1000_targets_reads_the_published_costs_once_per_refresh", 1, |seed| async move {
        refresh_traffic_over(seed, 1000).await;
    });
}
