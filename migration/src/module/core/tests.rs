//! The job core's tables. Each row takes a job to a given point by feeding events to
//! [`decide`] over a [`TestWorld`] of plain data (a fixed clock, a map of replicas, a lock
//! table), delivers one more event, and checks the job's state, figures and actions:
//! `"STATE q=<queued> w=<waiting> r=<running> u=[<files of each unit>] | <actions>"`.

use std::collections::BTreeMap;

use tidepool_p2p::model::{FileAttributes, SpaceInfo};

use super::*;
use crate::definition::JobKind;
use crate::task::TaskFailure;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const T0: EpochMillis = 1_700_000_000_000;

fn pool(n: u32) -> PoolName {
    format!("pool{n}").parse().unwrap()
}

fn file(n: u32) -> PnfsId {
    let mut b = [0u8; 16];
    b[12..].copy_from_slice(&n.to_be_bytes());
    PnfsId::from_random(b)
}

fn cost(run: u64, used: u64) -> PoolCost {
    let space = SpaceInfo { total: 1 << 40, used, free: (1 << 40) - used, precious: 0, removable: 0 };
    PoolCost { space, load: 0, accepts: true, enabled: true, run }
}

fn entry(id: PnfsId, size: u64, state: ReplicaState) -> Entry {
    let attrs = FileAttributes {
        pnfsid: id,
        size,
        checksum: None,
        storage_class: None,
        cache_class: None,
        access_latency: None,
        retention_policy: None,
        hsm: None,
        creation_time: T0,
        access_time: T0,
    };
    Entry { attrs, state, sticky: Vec::new() }
}

/// The world as plain data.
struct TestWorld {
    now: EpochMillis,
    t0: tokio::time::Instant,
    /// The runtime's clock is `t0 + after`.
    after: Duration,
    pool: PoolName,
    cost: PoolCost,
    entries: HashMap<PnfsId, Entry>,
    /// The file locks of the pool: `true` held by the job under test, `false` by another job.
    locks: HashMap<PnfsId, bool>,
    next_task: u64,
}

impl World for TestWorld {
    fn now(&self) -> EpochMillis {
        self.now
    }
    fn tick(&self) -> tokio::time::Instant {
        self.t0 + self.after
    }
    fn rate_clock(&self) -> Instant {
        self.tick().into_std()
    }
    fn local_time(&self) -> chrono::NaiveDateTime {
        chrono::DateTime::from_timestamp_millis(self.now).expect("a valid time").naive_utc()
    }
    fn pool(&self) -> &PoolName {
        &self.pool
    }
    fn cost(&self) -> PoolCost {
        self.cost
    }
    fn pin_prefix(&self) -> &str {
        "pin:"
    }
    fn entry(&self, id: &PnfsId) -> Result<Option<Entry>, EnvError> {
        Ok(self.entries.get(id).cloned())
    }
    fn next_task(&mut self) -> TaskId {
        self.next_task += 1;
        TaskId(self.next_task)
    }
    fn claim(&mut self, id: &PnfsId) -> bool {
        *self.locks.entry(*id).or_insert(true)
    }
    fn release(&mut self, id: &PnfsId) {
        if self.locks.get(id) == Some(&true) {
            self.locks.remove(id);
        }
    }
    fn release_all(&mut self) {
        self.locks.retain(|_, ours| !*ours);
    }
}

/// A job under test, with its world.
struct TestJob {
    def: JobDefinition,
    settings: Settings,
    s: JobInner,
    w: TestWorld,
    /// The files of the repository at the scan, in queue order, with their sizes.
    files: Vec<(PnfsId, u64)>,
    /// The actions of the last event.
    last: Vec<Action>,
    /// Every copy asked for: file -> (target, attempt).
    copies: HashMap<PnfsId, (PoolName, AttemptId)>,
    /// The last location question asked.
    asked: Option<(Vec<PnfsId>, Vec<PoolName>)>,
}

impl TestJob {
    /// A job of `words` (targets pool2 and pool3) over precious files 1.. of `sizes`, created.
    fn new(words: &[&str], sizes: &[u64], concurrency: usize) -> TestJob {
        let def = crate::grammar::parse_words(JobKind::Copy, words, &["pool2", "pool3"]).unwrap().def;
        let files: Vec<(PnfsId, u64)> = sizes.iter().enumerate().map(|(i, s)| (file(i as u32 + 1), *s)).collect();
        let entries = files.iter().map(|(id, size)| (*id, entry(*id, *size, ReplicaState::Precious))).collect();
        let w = TestWorld {
            now: T0,
            t0: tokio::time::Instant::from_std(std::time::Instant::now()),
            after: Duration::ZERO,
            pool: pool(1),
            cost: cost(1, 0),
            entries,
            locks: HashMap::new(),
            next_task: 0,
        };
        let s = JobInner::new(concurrency, 1);
        TestJob {
            def,
            settings: Settings::default(),
            s,
            w,
            files,
            last: Vec::new(),
            copies: HashMap::new(),
            asked: None,
        }
    }

    fn batch_files(mut self, n: usize) -> TestJob {
        self.settings.batch_files = n;
        self
    }

    fn send(&mut self, event: JobEvent) -> Result<(), MigrationError> {
        let view = JobView { id: "7".parse().unwrap(), def: &self.def, tmode: &[], settings: &self.settings, epoch: 0 };
        let d = decide(&view, &mut self.s, event, &mut self.w);
        for a in &d.actions {
            match a {
                Action::Copy { to, pnfsid, attempt, .. } => {
                    self.copies.insert(*pnfsid, (to.clone(), *attempt));
                }
                Action::Locate { ids, pools } => self.asked = Some((ids.clone(), pools.clone())),
                _ => {}
            }
        }
        self.last = d.actions;
        d.reply
    }

    /// Started and scanned (the files the filter accepts): RUNNING, but no target known yet
    /// (so SLEEPING).
    fn scanned(mut self) -> TestJob {
        self.send(JobEvent::Start).unwrap();
        let found: Vec<(PnfsId, u64)> = (self.files.iter())
            .filter(|(id, _)| self.def.filter.accepts(&candidate(&self.w.entries[id]), self.w.now))
            .copied()
            .collect();
        let mut queue = Queue::default();
        for (id, size) in &found {
            queue.add(*id, *size);
        }
        self.send(JobEvent::Scanned(Ok((found, queue)))).unwrap();
        self
    }

    /// Both targets answered: the first units started and wait for a location answer.
    fn online(mut self) -> TestJob {
        self.send(refreshed(1, 1)).unwrap();
        self
    }

    /// The location question answered (no target holds anything): the copies are asked for.
    fn located(mut self) -> TestJob {
        let (ids, pools) = self.asked.take().expect("a location question");
        let answers = pools.iter().map(|p| (p.clone(), Some(HashMap::new()))).collect();
        let event = JobEvent::Located { ids, pools, answers };
        self.send(event).unwrap();
        self
    }

    /// The targets accepted the copies asked for: every running task is Copying.
    fn copying(mut self) -> TestJob {
        let mut by_pool: BTreeMap<PoolName, Vec<(PnfsId, TaskEvent)>> = BTreeMap::new();
        for a in &self.last {
            if let Action::Copy { to, pnfsid, attempt, .. } = a {
                by_pool.entry(to.clone()).or_default().push((*pnfsid, TaskEvent::CopyAccepted { attempt: *attempt }));
            }
        }
        for (to, answers) in by_pool {
            self.send(JobEvent::CopyAnswered { to, undelivered: false, answers }).unwrap();
        }
        self
    }

    /// The target of a running file's copy and its finished message.
    fn finished(&self, n: u32, result: Result<(), RemoteError>) -> (PnfsId, TaskEvent) {
        let (target, attempt) = self.copies[&file(n)].clone();
        (file(n), TaskEvent::Finished { attempt, target, result })
    }

    fn done(&self, files: &[u32]) -> JobEvent {
        JobEvent::Tasks(files.iter().map(|n| self.finished(*n, Ok(()))).collect())
    }

    /// The one pool every copy asked for so far went to.
    fn target(&self) -> PoolName {
        let targets: BTreeSet<&PoolName> = self.copies.values().map(|(t, _)| t).collect();
        assert_eq!(targets.len(), 1, "the copies went to {targets:?}");
        targets.into_iter().next().unwrap().clone()
    }

    fn figures(&self) -> String {
        let mut units: Vec<usize> = self.s.units.values().map(|u| u.files).collect();
        units.sort_unstable();
        format!(
            "{} q={} w={} r={} u={units:?}",
            self.s.state,
            self.s.queue.queued_count(),
            self.s.queue.waiting(),
            self.s.running.len()
        )
    }

    /// The notes as the operator reads them.
    fn notes(&self) -> Vec<String> {
        self.s.notes.iter().map(|n| n.message.clone()).collect()
    }

    /// What the notes are about.
    fn noted(&self) -> Vec<Noted> {
        self.s.notes.iter().map(|n| n.about.clone()).collect()
    }
}

fn refreshed(run2: u64, run3: u64) -> JobEvent {
    JobEvent::Refreshed(vec![(pool(2), Some(cost(run2, 0))), (pool(3), Some(cost(run3, 0)))], Vec::new())
}

/// The kinds of `actions` with their counts, in name order: `Copy*3 Locate(2) TimerSet`.
fn summary(actions: &[Action]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for a in actions {
        let kind = match a {
            Action::Copy { .. } => "Copy".to_string(),
            Action::CopyBatch { items, .. } => format!("CopyBatch({})", items.len()),
            Action::Ping { .. } => "Ping".into(),
            Action::Cancel { .. } => "Cancel".into(),
            Action::TimerSet => "TimerSet".into(),
            Action::Wake { after, .. } => format!("Wake+{}s", after.as_secs()),
            Action::Locate { ids, .. } => format!("Locate({})", ids.len()),
            Action::SourceModes(items) => format!("SourceModes({})", items.len()),
            Action::Refresh => "Refresh".into(),
            Action::Halt => "Halt".into(),
            Action::Ended => "Ended".into(),
        };
        *counts.entry(kind).or_default() += 1;
    }
    let parts: Vec<String> = counts.into_iter().map(|(k, n)| if n == 1 { k } else { format!("{k}*{n}") }).collect();
    parts.join(" ")
}

/// One row: a job brought to a point, the event, what the job looks like after it.
struct Row {
    name: &'static str,
    given: fn() -> TestJob,
    event: fn(&mut TestJob) -> JobEvent,
    want: &'static str,
}

/// Runs the rows; returns each row's job for further checks.
fn check(rows: Vec<Row>) -> Vec<TestJob> {
    rows.into_iter()
        .map(|row| {
            let mut job = (row.given)();
            let event = (row.event)(&mut job);
            let reply = job.send(event);
            assert!(reply.is_ok(), "row {:?}: {reply:?}", row.name);
            let got = format!("{} | {}", job.figures(), summary(&job.last));
            assert_eq!(got, row.want, "row {:?}", row.name);
            job
        })
        .collect()
}

fn small(n: usize) -> Vec<u64> {
    vec![KIB; n]
}

#[test]
fn units_are_batches_of_small_files_in_queue_order() {
    fn online(words: &[&str], sizes: &[u64], concurrency: usize) -> TestJob {
        TestJob::new(words, sizes, concurrency).scanned()
    }
    let rows = vec![
        Row {
            name: "at most 64 files a batch",
            given: || online(&[], &small(100), 2),
            event: |_| refreshed(1, 1),
            want: "RUNNING q=0 w=0 r=100 u=[36, 64] | Locate(100)",
        },
        Row {
            name: "at most 4 MiB a batch",
            given: || online(&[], &[MIB; 10], 1),
            event: |_| refreshed(1, 1),
            want: "RUNNING q=6 w=0 r=4 u=[4] | Locate(10)",
        },
        Row {
            name: "a large file is a unit of its own, between two batches",
            given: || online(&[], &[KIB, KIB, 2 * MIB, KIB], 3),
            event: |_| refreshed(1, 1),
            want: "RUNNING q=0 w=0 r=4 u=[1, 1, 2] | Locate(4)",
        },
        Row {
            name: "a large file closes the batch: files start in queue order",
            given: || online(&[], &[KIB, 2 * MIB, KIB], 1),
            event: |_| refreshed(1, 1),
            want: "RUNNING q=2 w=0 r=1 u=[1] | Locate(3)",
        },
        Row {
            name: "a job with a condition on the pools is not batched",
            given: || online(&["-stop-when=queue.files < 0"], &small(5), 2),
            event: |_| refreshed(1, 1),
            want: "RUNNING q=3 w=0 r=2 u=[1, 1] | Locate(5)",
        },
        Row {
            name: "nor is one with -include-when",
            given: || online(&["-include-when=target.free > 0"], &small(5), 2),
            event: |_| refreshed(1, 1),
            want: "RUNNING q=3 w=0 r=2 u=[1, 1] | Locate(5)",
        },
        Row {
            name: "a file locked by another job is passed over, the batch takes the next",
            given: || {
                let mut job = online(&[], &small(5), 1);
                job.w.locks.insert(file(2), false);
                job
            },
            event: |_| refreshed(1, 1),
            want: "RUNNING q=1 w=0 r=4 u=[4] | Locate(5)",
        },
        Row {
            name: "a file deleted before its unit started is dropped, the rest of the batch starts",
            given: || {
                let mut job = online(&[], &small(3), 1);
                job.w.entries.remove(&file(2));
                job
            },
            event: |_| refreshed(1, 1),
            want: "RUNNING q=0 w=0 r=2 u=[2] | Locate(2)",
        },
        Row {
            name: "no concurrency: nothing starts, the job sleeps",
            given: || online(&[], &small(3), 0),
            event: |_| refreshed(1, 1),
            want: "SLEEPING q=3 w=0 r=0 u=[] | ",
        },
        Row {
            name: "no target online: the job sleeps",
            given: || online(&[], &small(3), 1),
            event: |_| JobEvent::Refreshed(vec![(pool(2), None), (pool(3), None)], Vec::new()),
            want: "SLEEPING q=3 w=0 r=0 u=[] | ",
        },
    ];
    let jobs = check(rows);
    // The locked file is noted once, and neither claimed nor released by this job.
    let locked = &jobs[6];
    assert_eq!(locked.noted(), [Noted::FileLocked]);
    assert_eq!(locked.w.locks.get(&file(2)), Some(&false));
    assert_eq!(locked.w.locks.values().filter(|ours| **ours).count(), 4);
    // The deleted file's lock went back at once.
    assert!(!jobs[7].w.locks.contains_key(&file(2)));
}

/// Five small files, batches of three, one unit at a time: a batch of 1..=3 copying, 4 and 5
/// queued.
fn mid_batch() -> TestJob {
    TestJob::new(&[], &small(5), 1).batch_files(3).scanned().online().located().copying()
}

#[test]
fn a_batch_of_copies_goes_to_one_target_in_one_visit() {
    let job = TestJob::new(&[], &small(5), 1).batch_files(3).scanned().online().located();
    assert_eq!(job.figures(), "RUNNING q=2 w=0 r=3 u=[3]");
    // One Copy per file, all to the unit's target (the driver sends them as one CopyBatch).
    assert_eq!(summary(&job.last), "Copy*3");
    job.target();
}

#[test]
fn operator_commands_mid_batch() {
    let rows = vec![
        Row {
            name: "suspend while a batch runs: the batch goes on, nothing new starts",
            given: mid_batch,
            event: |_| JobEvent::Operator(Command::Suspend),
            want: "SUSPENDED q=2 w=0 r=3 u=[3] | ",
        },
        Row {
            name: "a suspended job's batch ends: no new unit",
            given: || {
                let mut job = mid_batch();
                job.send(JobEvent::Operator(Command::Suspend)).unwrap();
                job
            },
            event: |job| job.done(&[1, 2, 3]),
            want: "SUSPENDED q=2 w=0 r=3 u=[] | SourceModes(1)*3",
        },
        Row {
            name: "resume: the next unit starts",
            given: || {
                let mut job = mid_batch();
                job.send(JobEvent::Operator(Command::Suspend)).unwrap();
                let done = job.done(&[1, 2, 3]);
                job.send(done).unwrap();
                job
            },
            event: |_| JobEvent::Operator(Command::Resume),
            want: "RUNNING q=0 w=0 r=5 u=[2] | Copy*2",
        },
        Row {
            name: "cancel -force mid-batch: each copy is cancelled on its target, CANCELLED at once",
            given: mid_batch,
            event: |_| JobEvent::Operator(Command::Cancel { force: true, reason: "operator".into() }),
            want: "CANCELLED q=0 w=0 r=0 u=[] | Cancel*3 Ended Halt",
        },
        Row {
            name: "late reports of the cancelled copies, even done ones: nothing counted, no source mode",
            given: || {
                let mut job = mid_batch();
                job.send(JobEvent::Operator(Command::Cancel { force: true, reason: "operator".into() })).unwrap();
                job
            },
            event: |job| {
                let gone = Err(RemoteError::new(ErrorCode::Cancelled, "Task was cancelled"));
                JobEvent::Tasks(vec![job.finished(1, Ok(())), job.finished(2, gone), job.finished(3, Ok(()))])
            },
            want: "CANCELLED q=0 w=0 r=0 u=[] | ",
        },
        Row {
            name: "cancel -force while one file's source mode is applied: that one is awaited, the copies are not",
            given: || {
                let mut job = mid_batch();
                let done = job.done(&[1]);
                job.send(done).unwrap();
                job
            },
            event: |_| JobEvent::Operator(Command::Cancel { force: true, reason: "operator".into() }),
            want: "CANCELLING q=0 w=0 r=1 u=[] | Cancel*2 Halt",
        },
        Row {
            name: "cancel without force: the batch finishes first",
            given: mid_batch,
            event: |_| JobEvent::Operator(Command::Cancel { force: false, reason: "operator".into() }),
            want: "CANCELLING q=0 w=0 r=3 u=[3] | Halt",
        },
        Row {
            name: "cancel of a job with nothing running: CANCELLED at once",
            given: || TestJob::new(&[], &small(3), 0).scanned().online(),
            event: |_| JobEvent::Operator(Command::Cancel { force: false, reason: "operator".into() }),
            want: "CANCELLED q=0 w=0 r=0 u=[] | Ended",
        },
        Row {
            name: "cancel during the scan: CANCELLED, the scan halted (its result is ignored)",
            given: || {
                let mut job = TestJob::new(&[], &small(3), 1);
                job.send(JobEvent::Start).unwrap();
                job
            },
            event: |_| JobEvent::Operator(Command::Cancel { force: true, reason: "pool shutdown".into() }),
            want: "CANCELLED q=0 w=0 r=0 u=[] | Ended Halt",
        },
        Row {
            name: "more concurrency: a second unit starts",
            given: mid_batch,
            event: |_| JobEvent::Operator(Command::SetConcurrency(2)),
            want: "RUNNING q=0 w=0 r=5 u=[2, 3] | Copy*2",
        },
    ];
    let jobs = check(rows);
    // A cancelled job holds no file lock, at once even with its targets silent.
    assert!(jobs[3].w.locks.is_empty());
    assert!(jobs[4].w.locks.is_empty());
    assert!(jobs[7].w.locks.is_empty());
    assert!(jobs[8].w.locks.is_empty());
    // Only the file whose source mode is being applied keeps its lock until that is done.
    assert_eq!(jobs[5].w.locks.keys().collect::<Vec<_>>(), vec![&file(1)]);
    // Resume and suspend say no where they do not apply.
    let mut job = mid_batch();
    assert!(job.send(JobEvent::Operator(Command::Resume)).is_err());
    job.send(JobEvent::Operator(Command::Cancel { force: true, reason: "x".into() })).unwrap();
    assert!(job.send(JobEvent::Operator(Command::Suspend)).is_err());
}

#[test]
fn tasks_timers_and_units() {
    let rows = vec![
        Row {
            name: "one file of a batch done: its source mode, the unit goes on",
            given: mid_batch,
            event: |job| job.done(&[1]),
            want: "RUNNING q=2 w=0 r=3 u=[3] | SourceModes(1)",
        },
        Row {
            name: "the unit is free when its last task ends: the next starts",
            given: || {
                let mut job = mid_batch();
                let done = job.done(&[1]);
                job.send(done).unwrap();
                job
            },
            event: |job| job.done(&[2, 3]),
            want: "RUNNING q=0 w=0 r=5 u=[2] | Copy*2 SourceModes(1)*2",
        },
        Row {
            name: "twice what the units carry waiting for their source modes: no new unit",
            given: || {
                let mut job = TestJob::new(&[], &small(8), 1).batch_files(2).scanned().online().located().copying();
                let done = job.done(&[1, 2]);
                job.send(done).unwrap();
                job
            },
            event: |job| job.done(&[3, 4]),
            want: "RUNNING q=4 w=0 r=4 u=[] | SourceModes(1)*2",
        },
        Row {
            name: "source modes applied: the files are done",
            given: || {
                let mut job = mid_batch();
                let done = job.done(&[1, 2, 3]);
                job.send(done).unwrap();
                job
            },
            event: |_| JobEvent::SourceModesApplied((1..=3).map(|n| (file(n), Ok(Applied::Done))).collect()),
            want: "RUNNING q=0 w=0 r=2 u=[2] | ",
        },
        Row {
            name: "a failed file waits out its backoff; the rest of the batch goes on",
            given: mid_batch,
            event: |job| {
                JobEvent::Tasks(vec![job.finished(2, Err(RemoteError::new(ErrorCode::Internal, "disk on fire")))])
            },
            want: "RUNNING q=2 w=1 r=2 u=[3] | ",
        },
        Row {
            name: "the ping timers run out: one ping per copy",
            given: || {
                let mut job = mid_batch();
                job.w.after = Duration::from_secs(121);
                job
            },
            event: |_| JobEvent::TimersDue,
            want: "RUNNING q=2 w=0 r=3 u=[3] | Ping*3",
        },
        Row {
            name: "timers not yet due do nothing",
            given: mid_batch,
            event: |_| JobEvent::TimersDue,
            want: "RUNNING q=2 w=0 r=3 u=[3] | ",
        },
        Row {
            name: "a stale wake-up does nothing",
            given: mid_batch,
            event: |_| JobEvent::Wake(99),
            want: "RUNNING q=2 w=0 r=3 u=[3] | ",
        },
        Row {
            name: "an unbatched job's unit is held until its file's source mode is applied",
            given: || {
                TestJob::new(&["-stop-when=queue.files < 0"], &small(3), 1).scanned().online().located().copying()
            },
            event: |job| job.done(&[1]),
            want: "RUNNING q=2 w=0 r=1 u=[1] | SourceModes(1)",
        },
        Row {
            name: "...and then freed",
            given: || {
                let mut job =
                    TestJob::new(&["-stop-when=queue.files < 0"], &small(3), 1).scanned().online().located().copying();
                let done = job.done(&[1]);
                job.send(done).unwrap();
                job
            },
            event: |_| JobEvent::SourceModesApplied(vec![(file(1), Ok(Applied::Done))]),
            want: "RUNNING q=1 w=0 r=1 u=[1] | Copy",
        },
        Row {
            name: "a source changed while it moved goes round again (queued behind the running unit)",
            given: || {
                let mut job = mid_batch();
                let done = job.done(&[1, 2, 3]);
                job.send(done).unwrap();
                job
            },
            event: |_| JobEvent::SourceModesApplied(vec![(file(1), Ok(Applied::Changed))]),
            want: "RUNNING q=1 w=0 r=4 u=[2] | ",
        },
        Row {
            name: "the last file done: FINISHED",
            given: || {
                let mut job = TestJob::new(&[], &small(2), 1).scanned().online().located().copying();
                let done = job.done(&[1, 2]);
                job.send(done).unwrap();
                job
            },
            event: |_| JobEvent::SourceModesApplied((1..=2).map(|n| (file(n), Ok(Applied::Done))).collect()),
            want: "FINISHED q=0 w=0 r=0 u=[] | Ended",
        },
    ];
    let jobs = check(rows);
    assert_eq!(jobs[4].notes().len(), 1);
    assert_eq!(jobs[10].noted(), [Noted::SourceChanged]);
    assert!(jobs[11].w.locks.is_empty());
}

#[test]
fn targets_going_offline_mid_batch() {
    let rows = vec![
        Row {
            name: "one missed refresh: the target keeps its figures, the batch goes on",
            given: mid_batch,
            event: |job| {
                let t = job.target();
                JobEvent::Refreshed(
                    vec![(pool(2), Some(cost(1, 0))), (pool(3), Some(cost(1, 0)))]
                        .into_iter()
                        .map(|(p, c)| if p == t { (p, None) } else { (p, c) })
                        .collect(),
                    Vec::new(),
                )
            },
            want: "RUNNING q=2 w=0 r=3 u=[3] | ",
        },
        Row {
            name: "the target restarted: the batch's copies are lost and retried later",
            given: mid_batch,
            event: |job| if job.target() == pool(2) { refreshed(2, 1) } else { refreshed(1, 2) },
            want: "RUNNING q=0 w=3 r=2 u=[2] | Copy*2",
        },
        Row {
            name: "a restarted pool that was not in use: nothing happens",
            given: mid_batch,
            event: |job| if job.target() == pool(2) { refreshed(1, 2) } else { refreshed(2, 1) },
            want: "RUNNING q=2 w=0 r=3 u=[3] | ",
        },
        Row {
            name: "the batch's request could not be delivered: the target is offline, the files retried",
            given: || TestJob::new(&[], &small(5), 1).batch_files(3).scanned().online().located(),
            event: |job| {
                let to = job.target();
                let answers = (1..=3)
                    .map(|n| {
                        let attempt = job.copies[&file(n)].1;
                        (file(n), TaskEvent::CopyUnanswered { attempt, how: Unanswered::NotDelivered })
                    })
                    .collect();
                JobEvent::CopyAnswered { to, undelivered: true, answers }
            },
            want: "RUNNING q=0 w=3 r=2 u=[2] | Copy*2 Refresh",
        },
    ];
    let jobs = check(rows);
    assert!(matches!(jobs[1].noted()[0], Noted::TargetRestarted(_)), "{:?}", jobs[1].notes());
    // The unreachable pool gets nothing more until it answers again: the next batch goes to
    // the other target.
    let job = &jobs[3];
    let gone = &job.copies[&file(1)].0;
    assert_eq!(job.noted()[0], Noted::TargetUnreachable(gone.clone()), "{:?}", job.notes());
    let next: BTreeSet<&PoolName> = [4, 5].iter().map(|n| &job.copies[&file(*n)].0).collect();
    assert!(!next.contains(gone), "the next batch went to {next:?}, {gone} is unreachable");
    assert_eq!(next.len(), 1);
}

#[test]
fn deleted_files() {
    let rows = vec![
        Row {
            name: "a file of a batch deleted while it is located: its task ends, the others go on",
            given: || TestJob::new(&[], &small(5), 1).batch_files(3).scanned().online(),
            event: |_| JobEvent::RepoChanged { id: file(2), change: RepoChange::Removed, entry: None },
            want: "RUNNING q=2 w=0 r=2 u=[3] | ",
        },
        Row {
            name: "a file of a batch deleted while it is copied: cancelled on the target",
            given: mid_batch,
            event: |_| JobEvent::RepoChanged { id: file(2), change: RepoChange::Removed, entry: None },
            want: "RUNNING q=2 w=0 r=2 u=[3] | Cancel",
        },
        Row {
            name: "a queued file deleted leaves the queue",
            given: mid_batch,
            event: |_| JobEvent::RepoChanged { id: file(5), change: RepoChange::Removed, entry: None },
            want: "RUNNING q=1 w=0 r=3 u=[3] | ",
        },
        Row {
            name: "a queued file that no longer matches leaves the queue",
            given: || {
                let mut job = TestJob::new(&["-state=precious"], &small(5), 1).batch_files(3).scanned().online();
                job.w.entries.get_mut(&file(5)).unwrap().state = ReplicaState::Cached;
                job
            },
            event: |job| {
                let entry = job.w.entries.get(&file(5)).cloned();
                JobEvent::RepoChanged { id: file(5), change: RepoChange::State { from: ReplicaState::Precious }, entry }
            },
            want: "RUNNING q=1 w=0 r=3 u=[3] | ",
        },
    ];
    let jobs = check(rows);
    // The deleted file is not asked about: the answer starts copies of the two others only.
    let job = jobs.into_iter().next().unwrap().located();
    assert_eq!(summary(&job.last), "Copy*2");
    assert!(!job.copies.contains_key(&file(2)));
    assert!(!job.w.locks.contains_key(&file(2)));
}

/// `-pause-when` and `-stop-when` on the source's used space; two units of one file each
/// copying, three files queued.
fn conditional(option: &str) -> TestJob {
    let words = [option, "-stop-when=source.used > 1000"];
    let (words, n) = if option.starts_with("-stop") { (&words[..1], 1) } else { (&words[..], 2) };
    TestJob::new(words, &small(5), n).scanned().online().located().copying()
}

#[test]
fn pause_and_stop_conditions() {
    let rows = vec![
        Row {
            name: "the pause condition holds: PAUSED, the copies under way go on, a look in 10 s",
            given: || conditional("-pause-when=source.used > 100"),
            event: |job| {
                job.w.cost = cost(1, 200);
                JobEvent::Wake(99)
            },
            want: "PAUSED q=3 w=0 r=2 u=[1, 1] | Wake+10s",
        },
        Row {
            name: "still holds at the look: PAUSED, the next look armed",
            given: || {
                let mut job = conditional("-pause-when=source.used > 100");
                job.w.cost = cost(1, 200);
                job.send(JobEvent::Wake(99)).unwrap();
                job
            },
            event: |job| JobEvent::Wake(job.s.wake_seq),
            want: "PAUSED q=3 w=0 r=2 u=[1, 1] | Wake+10s",
        },
        Row {
            name: "no longer holds: RUNNING",
            given: || {
                let mut job = conditional("-pause-when=source.used > 100");
                job.w.cost = cost(1, 200);
                job.send(JobEvent::Wake(99)).unwrap();
                job.w.cost = cost(1, 0);
                job
            },
            event: |job| JobEvent::Wake(job.s.wake_seq),
            want: "RUNNING q=3 w=0 r=2 u=[1, 1] | ",
        },
        Row {
            name: "the stop condition holds while paused: STOPPING",
            given: || {
                let mut job = conditional("-pause-when=source.used > 100");
                job.w.cost = cost(1, 200);
                job.send(JobEvent::Wake(99)).unwrap();
                job.w.cost = cost(1, 2000);
                job
            },
            event: |job| JobEvent::Wake(job.s.wake_seq),
            want: "STOPPING q=3 w=0 r=2 u=[1, 1] | ",
        },
        Row {
            name: "the stop condition holds: STOPPING, the copy under way finishes",
            given: || conditional("-stop-when=source.used > 100"),
            event: |job| {
                job.w.cost = cost(1, 200);
                JobEvent::Wake(99)
            },
            want: "STOPPING q=4 w=0 r=1 u=[1] | ",
        },
        Row {
            name: "a STOPPING job's last file through: FINISHED",
            given: || {
                let mut job = conditional("-stop-when=source.used > 100");
                job.w.cost = cost(1, 200);
                job.send(JobEvent::Wake(99)).unwrap();
                let done = job.done(&[1]);
                job.send(done).unwrap();
                job
            },
            event: |_| JobEvent::SourceModesApplied(vec![(file(1), Ok(Applied::Done))]),
            want: "FINISHED q=0 w=0 r=0 u=[] | Ended",
        },
        Row {
            name: "the stop condition holds with nothing running: FINISHED at once",
            given: || {
                let mut job = TestJob::new(&["-stop-when=source.used > 100"], &small(3), 0).scanned().online();
                job.w.cost = cost(1, 200);
                job
            },
            event: |job| JobEvent::Wake(job.s.wake_seq),
            want: "FINISHED q=0 w=0 r=0 u=[] | Ended",
        },
    ];
    check(rows);
}

/// A permanent job for cached replicas over a pool of precious ones: idle, SLEEPING.
fn permanent() -> TestJob {
    TestJob::new(&["-permanent", "-state=cached"], &small(3), 1).scanned().online()
}

fn cached(job: &TestJob, n: u32) -> Option<Entry> {
    let mut e = job.w.entries.get(&file(n)).cloned()?;
    e.state = ReplicaState::Cached;
    Some(e)
}

#[test]
fn permanent_jobs_receive_changes() {
    let rows = vec![
        Row {
            name: "idle: SLEEPING with no wake-up (it waits for a change)",
            given: || TestJob::new(&["-permanent", "-state=cached"], &small(3), 1).scanned(),
            event: |_| refreshed(1, 1),
            want: "SLEEPING q=0 w=0 r=0 u=[] | ",
        },
        Row {
            name: "a replica comes to match: it is queued and started",
            given: permanent,
            event: |job| {
                let entry = cached(job, 1);
                JobEvent::RepoChanged { id: file(1), change: RepoChange::State { from: ReplicaState::Precious }, entry }
            },
            want: "RUNNING q=0 w=0 r=1 u=[1] | Locate(1)",
        },
        Row {
            name: "a change the filter does not look at: not queued",
            given: permanent,
            event: |job| {
                let entry = cached(job, 1);
                JobEvent::RepoChanged { id: file(1), change: RepoChange::Sticky, entry }
            },
            want: "SLEEPING q=0 w=0 r=0 u=[] | ",
        },
        Row {
            name: "a change to a replica that does not match: nothing",
            given: permanent,
            event: |job| {
                let entry = job.w.entries.get(&file(1)).cloned();
                JobEvent::RepoChanged { id: file(1), change: RepoChange::Other, entry }
            },
            want: "SLEEPING q=0 w=0 r=0 u=[] | ",
        },
        Row {
            name: "a rescan after lost changes queues what it found, in one batch",
            given: permanent,
            event: |_| JobEvent::Rescanned(vec![(file(1), KIB), (file(2), KIB)]),
            want: "RUNNING q=0 w=0 r=2 u=[2] | Locate(2)",
        },
        Row {
            name: "a file deleted while its copy runs: cancelled on the target",
            given: || {
                let mut job = permanent();
                job.send(JobEvent::Rescanned(vec![(file(1), KIB), (file(2), KIB)])).unwrap();
                job.located().copying()
            },
            event: |_| JobEvent::RepoChanged { id: file(1), change: RepoChange::Removed, entry: None },
            want: "RUNNING q=0 w=0 r=1 u=[2] | Cancel",
        },
        Row {
            name: "its work done, a permanent job goes back to sleep, not to FINISHED",
            given: || {
                let mut job = permanent();
                job.send(JobEvent::Rescanned(vec![(file(1), KIB)])).unwrap();
                let mut job = job.located().copying();
                let done = job.done(&[1]);
                job.send(done).unwrap();
                job
            },
            event: |_| JobEvent::SourceModesApplied(vec![(file(1), Ok(Applied::Done))]),
            want: "SLEEPING q=0 w=0 r=0 u=[] | ",
        },
        Row {
            name: "a change reaching a cancelled job: nothing",
            given: || {
                let mut job = permanent();
                job.send(JobEvent::Operator(Command::Cancel { force: false, reason: "x".into() })).unwrap();
                job
            },
            event: |_| JobEvent::Rescanned(vec![(file(1), KIB)]),
            want: "CANCELLED q=0 w=0 r=0 u=[] | ",
        },
    ];
    check(rows);
}

#[test]
fn scans_refreshes_and_wake_ups() {
    let rows = vec![
        Row {
            name: "the scan found the files: RUNNING, but no target known yet: SLEEPING",
            given: || {
                let mut job = TestJob::new(&[], &small(3), 1);
                job.send(JobEvent::Start).unwrap();
                job
            },
            event: |job| {
                let mut queue = Queue::default();
                for (id, size) in &job.files {
                    queue.add(*id, *size);
                }
                JobEvent::Scanned(Ok((job.files.clone(), queue)))
            },
            want: "SLEEPING q=3 w=0 r=0 u=[] | Wake+10s",
        },
        Row {
            name: "the scan failed: FAILED",
            given: || {
                let mut job = TestJob::new(&[], &small(3), 1);
                job.send(JobEvent::Start).unwrap();
                job
            },
            event: |_| JobEvent::Scanned(Err(EnvError::Internal("disk gone".into()))),
            want: "FAILED q=0 w=0 r=0 u=[] | Ended",
        },
        Row {
            name: "the refresh is due",
            given: || TestJob::new(&[], &small(3), 1).scanned(),
            event: |_| JobEvent::RefreshDue,
            want: "SLEEPING q=3 w=0 r=0 u=[] | Refresh",
        },
        Row {
            name: "one refresh at a time",
            given: || {
                let mut job = TestJob::new(&[], &small(3), 1).scanned();
                job.send(JobEvent::RefreshDue).unwrap();
                job
            },
            event: |_| JobEvent::RefreshDue,
            want: "SLEEPING q=3 w=0 r=0 u=[] | ",
        },
        Row {
            name: "a wake-up with no target online asks the targets again",
            given: || TestJob::new(&[], &small(3), 1).scanned(),
            event: |job| JobEvent::Wake(job.s.wake_seq),
            want: "SLEEPING q=3 w=0 r=0 u=[] | Refresh Wake+10s",
        },
        Row {
            name: "a holder that did not answer may hold the files: a non-eager job asks it to update",
            given: || TestJob::new(&[], &small(3), 1).scanned().online(),
            event: |job| {
                let (ids, pools) = job.asked.take().unwrap();
                let answers = [(pool(2), None), (pool(3), Some(HashMap::new()))].into_iter().collect();
                JobEvent::Located { ids, pools, answers }
            },
            want: "RUNNING q=0 w=0 r=3 u=[3] | Copy*3",
        },
        Row {
            name: "an eager job copies anew instead",
            given: || TestJob::new(&["-eager"], &small(3), 1).scanned().online(),
            event: |job| {
                let (ids, pools) = job.asked.take().unwrap();
                let answers = [(pool(2), None), (pool(3), Some(HashMap::new()))].into_iter().collect();
                JobEvent::Located { ids, pools, answers }
            },
            want: "RUNNING q=0 w=0 r=3 u=[3] | Copy*3",
        },
        Row {
            name: "a holder with the file exactly as wanted: no copy, the source mode at once",
            given: || TestJob::new(&[], &small(3), 1).scanned().online(),
            event: |job| {
                let (ids, pools) = job.asked.take().unwrap();
                let held = Held { pnfsid: file(1), state: ReplicaState::Precious, sticky: Vec::new(), checksum: None };
                let answers =
                    [(pool(2), Some([(file(1), held)].into_iter().collect())), (pool(3), Some(HashMap::new()))]
                        .into_iter()
                        .collect();
                JobEvent::Located { ids, pools, answers }
            },
            want: "RUNNING q=0 w=0 r=3 u=[3] | Copy*2 SourceModes(1)",
        },
    ];
    let jobs = check(rows);
    let requests = |job: &TestJob| -> Vec<(PoolName, bool)> {
        let mut r: Vec<(PoolName, bool)> = (job.last.iter())
            .filter_map(|a| match a {
                Action::Copy { to, req, .. } => Some((to.clone(), req.meta_only)),
                _ => None,
            })
            .collect();
        r.sort();
        r.dedup();
        r
    };
    // The silent pool is asked to update a replica it may hold, never to make a new one.
    assert_eq!(requests(&jobs[5]), [(pool(2), true)]);
    // The eager job sends the whole batch to one pool, as new copies.
    let eager = requests(&jobs[6]);
    assert!(eager.len() == 1 && !eager[0].1, "{eager:?}");
}

/// A lost copy request keeps new copies away from the pool until it answers a refresh again,
/// but the pool is still asked who holds what (a lost request does not make its replicas
/// unknown).
#[test]
fn an_unreachable_target_gets_no_new_copies_but_is_still_asked_who_holds_what() {
    let mut job = TestJob::new(&[], &small(5), 1).batch_files(3);
    job.settings.locate_batch = 3;
    let mut job = job.scanned().online().located();
    let gone = job.target();
    let answers = (1..=3)
        .map(|n| {
            (file(n), TaskEvent::CopyUnanswered { attempt: job.copies[&file(n)].1, how: Unanswered::NotDelivered })
        })
        .collect();
    job.send(JobEvent::CopyAnswered { to: gone.clone(), undelivered: true, answers }).unwrap();
    // The failures ask the targets again at once (the next refresh is not waited for).
    assert_eq!(format!("{} | {}", job.figures(), summary(&job.last)), "RUNNING q=0 w=3 r=2 u=[2] | Locate(2) Refresh");
    let unreachable =
        |job: &TestJob, pool: &PoolName| job.s.infos.iter().flatten().find(|t| t.name == *pool).map(|t| t.unreachable);
    assert_eq!(unreachable(&job, &gone), Some(true));
    // Each failure names the targets that were out, and why.
    let out = format!("(targets out: {gone} not reachable)");
    assert!(job.notes().iter().filter(|n| n.contains(&out)).count() == 3, "{:?}", job.notes());
    assert!(job.asked.as_ref().unwrap().1.contains(&gone), "the unreachable pool is asked who holds what");
    let mut job = job.located();
    for n in [4, 5] {
        assert_ne!(job.copies[&file(n)].0, gone, "file {n}: a new copy went to the unreachable pool");
    }
    // Still silent at the next refresh: it stays unreachable, whatever figures it keeps.
    let answers: Vec<(PoolName, Option<PoolCost>)> =
        [pool(2), pool(3)].into_iter().map(|p| if p == gone { (p, None) } else { (p, Some(cost(1, 0))) }).collect();
    job.send(JobEvent::Refreshed(answers, Vec::new())).unwrap();
    assert_eq!(unreachable(&job, &gone), Some(true));
    // It answers: new copies may go there again.
    job.send(refreshed(1, 1)).unwrap();
    assert_eq!(unreachable(&job, &gone), Some(false));
}

/// A silent target keeps its figures for one refresh (an answer lost on its way), unless the
/// membership says it is not alive (etcd: its lease lapsed): then it is offline at once, and
/// the next files go to the other target.
#[test]
fn a_silent_target_the_membership_says_is_gone_gets_no_grace() {
    let cost_of =
        |job: &TestJob, pool: &PoolName| job.s.infos.iter().flatten().find(|t| t.name == *pool).map(|t| t.cost);
    let silent = |gone: &PoolName| -> Vec<(PoolName, Option<PoolCost>)> {
        [pool(2), pool(3)].into_iter().map(|p| if p == *gone { (p, None) } else { (p, Some(cost(1, 0))) }).collect()
    };
    for (membership_says_gone, figures_kept) in [(false, true), (true, false)] {
        let mut job = TestJob::new(&[], &small(2), 1).scanned().online();
        let gone = pool(3);
        let said = if membership_says_gone { vec![gone.clone()] } else { Vec::new() };
        job.send(JobEvent::Refreshed(silent(&gone), said)).unwrap();
        assert_eq!(
            cost_of(&job, &gone).unwrap().is_some(),
            figures_kept,
            "membership says gone: {membership_says_gone}"
        );
    }
}

/// The completion report's counts (docs/admin-commands.md, `migration report`):
/// `done in_place gone unselected given_up cancelled not_tried | queued running waiting`.
fn accounted(job: &TestJob) -> String {
    let l = job.s.queue.ledger();
    let n = |f| l.count(f);
    let sum: u64 = crate::ledger::Fate::ALL.iter().map(|f| l.count(*f)).sum();
    assert_eq!(sum, l.len(), "the counts add up to the files");
    use crate::ledger::Fate::*;
    format!(
        "{} {} {} {} {} {} {} | {} {} {}",
        n(Done),
        n(InPlace),
        n(GoneFromSource),
        n(NoLongerSelected),
        n(GivenUp),
        n(Cancelled),
        n(NotTried),
        n(Queued),
        n(Running),
        n(Waiting)
    )
}

impl TestJob {
    /// The source modes asked for by the last event applied.
    fn applied(&mut self) {
        let items: Vec<PnfsId> = (self.last.iter())
            .filter_map(|a| if let Action::SourceModes(items) = a { Some(items) } else { None })
            .flatten()
            .map(|i| i.pnfsid)
            .collect();
        let results = items.into_iter().map(|id| (id, Ok(Applied::Done))).collect();
        self.send(JobEvent::SourceModesApplied(results)).unwrap();
    }
}

/// Every file the job selected is accounted for, once, whatever became of it; the counts add
/// up to the files selected at every step.
#[test]
fn completion_report_accounts_for_every_file() {
    type Given = fn() -> TestJob;
    let rows: Vec<(&str, Given, &str, &str)> = vec![
        (
            "all three copied",
            || {
                let mut job = TestJob::new(&[], &small(3), 1).scanned().online().located().copying();
                job.send(job.done(&[1, 2, 3])).unwrap();
                job.applied();
                job
            },
            "FINISHED",
            "3 0 0 0 0 0 0 | 0 0 0",
        ),
        (
            "the targets already hold the first file as wanted: nothing sent for it",
            || {
                let mut job = TestJob::new(&[], &small(2), 1).scanned().online();
                let (ids, pools) = job.asked.take().unwrap();
                let held = Held { pnfsid: file(1), state: ReplicaState::Precious, sticky: Vec::new(), checksum: None };
                let mut answers: HashMap<PoolName, Option<HashMap<PnfsId, Held>>> =
                    pools.iter().map(|p| (p.clone(), Some(HashMap::new()))).collect();
                answers.insert(pool(2), Some(HashMap::from([(file(1), held)])));
                job.send(JobEvent::Located { ids, pools, answers }).unwrap();
                job.applied();
                job = job.copying();
                job.send(job.done(&[2])).unwrap();
                job.applied();
                job
            },
            "FINISHED",
            "1 1 0 0 0 0 0 | 0 0 0",
        ),
        (
            "one deleted while queued, one deleted while copied, one gone before its turn",
            || {
                let mut job = TestJob::new(&[], &small(4), 1).batch_files(2).scanned();
                job.w.entries.remove(&file(4));
                job = job.online().located().copying();
                for n in [1, 3] {
                    job.w.entries.remove(&file(n));
                    job.send(JobEvent::RepoChanged { id: file(n), change: RepoChange::Removed, entry: None }).unwrap();
                }
                job.send(job.done(&[2])).unwrap();
                job.applied();
                job
            },
            "FINISHED",
            "1 0 3 0 0 0 0 | 0 0 0",
        ),
        (
            "one that changed while queued and no longer matches",
            || {
                let mut job = TestJob::new(&["-state=precious"], &small(3), 1).batch_files(1).scanned().online();
                job.w.entries.get_mut(&file(3)).unwrap().state = ReplicaState::Cached;
                let entry = job.w.entries.get(&file(3)).cloned();
                let from = ReplicaState::Precious;
                job.send(JobEvent::RepoChanged { id: file(3), change: RepoChange::State { from }, entry }).unwrap();
                job
            },
            "RUNNING",
            "0 0 0 1 0 0 0 | 1 1 0",
        ),
        (
            "given up (the target says the source file does not exist) and failed, waiting",
            || {
                let mut job = TestJob::new(&[], &small(3), 1).scanned().online().located().copying();
                let gone = RemoteError::new(ErrorCode::FileNotFound, "no such file");
                let full = RemoteError::new(ErrorCode::Timeout, "no room");
                let events = vec![job.finished(1, Err(gone)), job.finished(2, Err(full)), job.finished(3, Ok(()))];
                job.send(JobEvent::Tasks(events)).unwrap();
                job.applied();
                job
            },
            "SLEEPING",
            "1 0 0 0 1 0 0 | 0 0 1",
        ),
        (
            "cancelled with -force: the running file cancelled, the queued ones not tried",
            || {
                let mut job = TestJob::new(&[], &small(3), 1).batch_files(1).scanned().online().located().copying();
                let cancel = Command::Cancel { force: true, reason: "test".into() };
                job.send(JobEvent::Operator(cancel)).unwrap();
                job
            },
            "CANCELLED",
            "0 0 0 0 0 1 2 | 0 0 0",
        ),
        (
            "cancelled while a failed file waits (the next one running): not tried again",
            || {
                let mut job = TestJob::new(&[], &small(3), 1).batch_files(1).scanned().online().located().copying();
                let full = RemoteError::new(ErrorCode::Timeout, "no room");
                job.send(JobEvent::Tasks(vec![job.finished(1, Err(full))])).unwrap();
                let cancel = Command::Cancel { force: true, reason: "test".into() };
                job.send(JobEvent::Operator(cancel)).unwrap();
                job
            },
            "CANCELLED",
            "0 0 0 0 0 1 2 | 0 0 0",
        ),
    ];
    for (name, given, state, want) in rows {
        let job = given();
        assert_eq!((job.s.state.as_str(), accounted(&job).as_str()), (state, want), "row {name:?}");
    }
}

/// pool2 with `free` bytes of room, pool3 full.
fn room(free: u64) -> JobEvent {
    let with = |free: u64| {
        let total = 1 << 40;
        let space = SpaceInfo { total, used: total - free, free, precious: 0, removable: 0 };
        Some(PoolCost { space, load: 0, accepts: true, enabled: true, run: 1 })
    };
    JobEvent::Refreshed(vec![(pool(2), with(free)), (pool(3), with(0))], Vec::new())
}

/// Files of 2 MiB (a unit each), `n` at a time; pool2 had room for two of them at the
/// refresh; the first one or two copied there, their source modes under way: the job's
/// view of pool2 is its own count, with no room left.
fn counted_full(concurrency: usize) -> TestJob {
    let mut job = TestJob::new(&[], &[2 * MIB; 4], concurrency).scanned();
    job.send(room(concurrency as u64 * 2 * MIB + MIB / 2)).unwrap();
    job = job.located().copying();
    job
}

/// A job never decides that no target has room on a stale view: it asks the targets again
/// first (one refresh at a time, at most one per 2 s), and decides on their answer.
#[test]
fn no_room_is_decided_on_a_fresh_view_only() {
    let rows = vec![
        Row {
            name: "no room as the job counted its own copies: the targets are asked first, nothing starts",
            given: || counted_full(1),
            event: |job| job.done(&[1]),
            want: "RUNNING q=3 w=0 r=1 u=[] | Refresh SourceModes(1)",
        },
        Row {
            name: "while the question is out, nothing starts and nothing more is asked",
            given: || {
                let mut job = counted_full(1);
                job.send(job.done(&[1])).unwrap();
                job
            },
            event: |_| JobEvent::SourceModesApplied(vec![(file(1), Ok(Applied::Done))]),
            want: "RUNNING q=3 w=0 r=0 u=[] | ",
        },
        Row {
            name: "the fresh answer shows room: the next file starts at once",
            given: || {
                let mut job = counted_full(1);
                job.send(job.done(&[1])).unwrap();
                job
            },
            event: |_| room(3 * MIB),
            want: "RUNNING q=2 w=0 r=2 u=[1] | Copy",
        },
        Row {
            name: "the fresh answer still says full: the file is tried and fails for want of room, noted; no refresh again",
            given: || {
                let mut job = counted_full(1);
                job.send(job.done(&[1])).unwrap();
                job
            },
            event: |_| room(MIB),
            want: "RUNNING q=2 w=1 r=1 u=[] | ",
        },
        Row {
            name: "stale again within 2 s of the last question: a wake-up when the next may go",
            given: || {
                let mut job = counted_full(2);
                job.send(job.done(&[1])).unwrap();
                job.send(room(3 * MIB)).unwrap();
                job = job.copying();
                job.w.now += 500;
                job
            },
            event: |job| job.done(&[2]),
            want: "RUNNING q=1 w=0 r=3 u=[1] | SourceModes(1) Wake+1s",
        },
        Row {
            name: "a batch takes no more bytes than the targets have room for as last seen",
            given: || TestJob::new(&[], &small(10), 1).scanned(),
            event: |_| room(3 * KIB + KIB / 2),
            want: "RUNNING q=7 w=0 r=3 u=[3] | Locate(10)",
        },
    ];
    let jobs = check(rows);
    assert!(jobs[0].notes().is_empty(), "nothing noted on a stale view: {:?}", jobs[0].notes());
    let all_full = TaskFailure::NoTarget { reason: NoTarget::AllFull, holder: None };
    assert_eq!(jobs[3].noted(), [Noted::Failed(Box::new(all_full))]);
}
