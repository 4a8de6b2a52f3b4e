//! A job's files: queued, running, waiting to be retried, and what happened to them
//! (docs/dcache-compatibility.md#scheduling), with two fixes over dCache: a file that failed waits a
//! capped, exponentially growing time before its next try instead of being retried at once
//! in a hot loop (docs/dcache-compatibility.md#dcache-defects-not-reproduced), and the last error of every
//! failing file is kept for `migration info`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use tidepool_p2p::model::EpochMillis;
use tidepool_p2p::{PnfsId, RemoteError, TaskId};

use crate::ledger::{Fate, Ledger, Placed};

/// How long a failed file waits before its next try: `base * 2^(failures-1)`, at most `cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_secs(10), cap: Duration::from_secs(600) }
    }
}

impl Backoff {
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << doublings).min(self.cap)
    }
}

/// A file that failed at least once, kept for as long as the job is listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Failed tries.
    pub attempts: u32,
    pub last_error: RemoteError,
    pub last_at: EpochMillis,
    /// Dropped from the job for good.
    pub permanent: bool,
    /// The file's size, in bytes.
    pub size: u64,
    /// What became of the file since its last failure.
    pub since: AfterFailure,
}

/// What became of a file after its last failed try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Waiting for its retry, or tried again now (`permanent`: given up).
    Pending,
    /// A later try succeeded.
    Done,
    /// Its task was cancelled (the job was cancelled).
    Cancelled,
}

/// Counters for `migration info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Tasks started.
    pub attempts: u64,
    /// Files completed.
    pub completed: u64,
    /// Bytes of completed files.
    pub transferred: u64,
    /// Bytes ever added.
    pub total: u64,
}

/// What `remove` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    NotHere,
    /// It was waiting; now it is gone.
    Dropped,
    /// A task works on it; the caller cancels the task.
    Running(TaskId),
}

#[derive(Clone, Debug, Default)]
pub struct Queue {
    /// Queued files in order, each with the ticket it was queued under. An entry whose ticket
    /// is no longer the file's (the file started, left the job, or was queued again) is
    /// skipped and dropped lazily: removing a file costs the same however long the queue.
    queued: VecDeque<(PnfsId, u64)>,
    /// The files queued now, with their ticket.
    tickets: HashMap<PnfsId, u64>,
    next_ticket: u64,
    sizes: HashMap<PnfsId, u64>,
    running: BTreeMap<PnfsId, TaskId>,
    /// Files waiting out their backoff, soonest first; an entry that `due` no longer names is
    /// stale.
    retry: BTreeSet<(EpochMillis, PnfsId)>,
    /// When each waiting file is due.
    due: HashMap<PnfsId, EpochMillis>,
    failures: HashMap<PnfsId, Failure>,
    stats: Stats,
    /// The sum of `sizes`, kept as files come and go (`-pause-when`/`-stop-when` read it on
    /// every scheduling pass).
    left: u64,
    /// The sum of the sizes of the files queued now (`tickets`), kept likewise.
    queued_bytes: u64,
    /// What became of every file ever added: the completion report (boxed: a queue travels in
    /// a job event).
    ledger: Box<Ledger>,
}

impl Queue {
    /// An empty queue with room for `n` files (an initial scan knows how many it found).
    pub fn with_capacity(n: usize) -> Queue {
        Queue {
            queued: VecDeque::with_capacity(n),
            tickets: HashMap::with_capacity(n),
            sizes: HashMap::with_capacity(n),
            ..Queue::default()
        }
    }

    /// Adds a file unless it is already queued, running or waiting (docs/dcache-compatibility.md#scheduling).
    pub fn add(&mut self, id: PnfsId, size: u64) -> bool {
        if self.sizes.contains_key(&id) {
            return false;
        }
        self.sizes.insert(id, size);
        self.enqueue(id);
        self.ledger.set(id, Fate::Queued);
        self.stats.total += size;
        self.left += size;
        true
    }

    fn enqueue(&mut self, id: PnfsId) {
        self.queued_bytes += self.sizes.get(&id).copied().unwrap_or(0);
        self.next_ticket += 1;
        self.tickets.insert(id, self.next_ticket);
        self.queued.push_back((id, self.next_ticket));
    }

    fn current(&self, entry: &(PnfsId, u64)) -> bool {
        self.tickets.get(&entry.0) == Some(&entry.1)
    }

    /// Drops stale entries from the front, and all of them once they are most of the queue.
    fn tidy(&mut self) {
        while self.queued.front().is_some_and(|e| !self.current(e)) {
            self.queued.pop_front();
        }
        if self.queued.len() > 2 * self.tickets.len() + 1024 {
            let tickets = &self.tickets;
            self.queued.retain(|(id, t)| tickets.get(id) == Some(t));
        }
    }

    /// Whether the file is queued, running or waiting.
    pub fn contains(&self, id: &PnfsId) -> bool {
        self.sizes.contains_key(id)
    }

    /// Takes a file out of the job: it no longer matches the selection. See
    /// [`Queue::remove_because`].
    pub fn remove(&mut self, id: &PnfsId) -> Removal {
        self.remove_because(id, Fate::NoLongerSelected)
    }

    /// Takes a file out of the job, to be reported with `fate` ([`Fate::GoneFromSource`],
    /// [`Fate::NoLongerSelected`]); a running file gets it when its task ends cancelled.
    pub fn remove_because(&mut self, id: &PnfsId, fate: Fate) -> Removal {
        if let Some(task) = self.running.get(id) {
            self.ledger.leaving.insert(*id, fate);
            return Removal::Running(*task);
        }
        if self.sizes.contains_key(id) {
            self.ledger.set(*id, fate);
        }
        let Some(size) = self.sizes.remove(id) else { return Removal::NotHere };
        self.left -= size;
        if self.tickets.remove(id).is_some() {
            self.queued_bytes -= size;
        }
        if let Some(at) = self.due.remove(id) {
            self.retry.remove(&(at, *id));
        }
        // A file that left the job is no longer a failure of it.
        self.failures.remove(id);
        self.tidy();
        Removal::Dropped
    }

    /// Moves files whose backoff ended by `now` to the end of the queue.
    pub fn wake(&mut self, now: EpochMillis) {
        while let Some(&(at, id)) = self.retry.first() {
            if at > now {
                break;
            }
            self.retry.pop_first();
            if self.due.get(&id) == Some(&at) {
                self.due.remove(&id);
                self.enqueue(id);
                self.ledger.set(id, Fate::Queued);
            }
        }
    }

    /// The queued files in order (the scheduler tries them in turn, skipping locked ones).
    pub fn queued(&self) -> impl Iterator<Item = &PnfsId> {
        self.queued.iter().filter(|e| self.current(e)).map(|(id, _)| id)
    }

    /// The size of a file of the job (queued, running or waiting); 0 for another file.
    pub fn size(&self, id: &PnfsId) -> u64 {
        self.sizes.get(id).copied().unwrap_or(0)
    }

    /// Takes a queued file for a task.
    pub fn start(&mut self, id: PnfsId, task: TaskId) -> bool {
        if self.tickets.remove(&id).is_none() {
            return false;
        }
        self.queued_bytes -= self.sizes.get(&id).copied().unwrap_or(0);
        self.running.insert(id, task);
        self.ledger.set(id, Fate::Running);
        self.stats.attempts += 1;
        self.tidy();
        true
    }

    pub fn completed(&mut self, id: &PnfsId) {
        if self.running.remove(id).is_some() {
            self.ledger.set(*id, Fate::Done);
            self.ledger.leaving.remove(id);
            let size = self.sizes.remove(id).unwrap_or(0);
            self.left -= size;
            self.stats.completed += 1;
            self.stats.transferred += size;
            if let Some(f) = self.failures.get_mut(id) {
                f.since = AfterFailure::Done;
            }
        }
    }

    /// A running file completed, with where and how its copies are (the report).
    pub fn completed_as(&mut self, id: &PnfsId, placed: Placed) {
        if self.running.contains_key(id) {
            self.completed(id);
            self.ledger.placed(*id, placed);
        }
    }

    /// Records a failed task. A transient failure waits out its backoff; returns when it
    /// will be tried again (`None` for a permanent one, which leaves the job).
    pub fn failed(
        &mut self,
        id: &PnfsId,
        permanent: bool,
        error: RemoteError,
        now: EpochMillis,
        backoff: &Backoff,
    ) -> Option<EpochMillis> {
        self.running.remove(id)?;
        let size = self.sizes.get(id).copied().unwrap_or(0);
        let entry = self.failures.entry(*id).or_insert(Failure {
            attempts: 0,
            last_error: error.clone(),
            last_at: now,
            permanent,
            size,
            since: AfterFailure::Pending,
        });
        entry.attempts += 1;
        entry.last_error = error;
        entry.last_at = now;
        entry.permanent = permanent;
        entry.since = AfterFailure::Pending;
        self.ledger.leaving.remove(id);
        if permanent {
            self.left -= self.sizes.remove(id).unwrap_or(0);
            self.ledger.set(*id, Fate::GivenUp);
            return None;
        }
        self.ledger.set(*id, Fate::Waiting);
        let at = now.saturating_add(backoff.delay(entry.attempts).as_millis() as i64);
        self.retry.insert((at, *id));
        self.due.insert(*id, at);
        Some(at)
    }

    /// A running file goes back to the end of the queue, not as a failure: its task found
    /// that it must run again (the source changed while it was copied).
    pub fn requeue(&mut self, id: &PnfsId) {
        if self.running.remove(id).is_some() {
            self.enqueue(*id);
            self.ledger.leaving.remove(id);
            self.ledger.set(*id, Fate::Queued);
        }
    }

    /// A cancelled task's file leaves the job (docs/dcache-compatibility.md#scheduling).
    pub fn cancelled(&mut self, id: &PnfsId) {
        let fate = self.ledger.leaving.remove(id).unwrap_or(Fate::Cancelled);
        self.cancelled_as(id, fate);
    }

    /// A running file was found gone from the source when its turn came: it leaves the job.
    pub fn gone(&mut self, id: &PnfsId) {
        self.cancelled_as(id, Fate::GoneFromSource);
    }

    fn cancelled_as(&mut self, id: &PnfsId, fate: Fate) {
        if self.running.remove(id).is_some() {
            self.ledger.set(*id, fate);
            self.left -= self.sizes.remove(id).unwrap_or(0);
            if let Some(f) = self.failures.get_mut(id) {
                f.since = AfterFailure::Cancelled;
            }
        }
    }

    /// Files a task works on.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn queued_count(&self) -> usize {
        self.tickets.len()
    }

    /// Bytes of the files queued now.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes
    }

    /// Files waiting out a backoff.
    pub fn waiting(&self) -> usize {
        self.due.len()
    }

    /// When the next waiting file is due.
    pub fn next_retry(&self) -> Option<EpochMillis> {
        self.retry.iter().find(|(at, id)| self.due.get(id) == Some(at)).map(|(at, _)| *at)
    }

    /// Nothing queued, running or waiting.
    pub fn is_empty(&self) -> bool {
        self.tickets.is_empty() && self.running.is_empty() && self.due.is_empty()
    }

    /// Bytes still to transfer (queued, running and waiting files): what dCache meant by
    /// `queue.bytes` (docs/dcache-compatibility.md#dcache-defects-not-reproduced).
    pub fn bytes_left(&self) -> u64 {
        self.left
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Every file that failed at least once, by pnfsid, with what became of it since (a file
    /// that left the job, deleted or no longer selected, is no longer listed).
    pub fn failures(&self) -> impl Iterator<Item = (&PnfsId, &Failure)> {
        self.failures.iter()
    }

    /// What became of every file the job selected (`migration report`).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Drops everything still to do (a job reaching a terminal state): the files queued or
    /// waiting are reported as not tried.
    pub fn clear(&mut self) {
        for id in self.tickets.keys().chain(self.due.keys()) {
            self.ledger.set(*id, Fate::NotTried);
        }
        self.queued.clear();
        self.tickets.clear();
        self.queued_bytes = 0;
        self.retry.clear();
        self.due.clear();
        self.sizes.retain(|id, _| self.running.contains_key(id));
        self.left = self.sizes.values().sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidepool_p2p::ErrorCode;

    fn id(n: u8) -> PnfsId {
        PnfsId::from_random([n; 16])
    }

    fn boom() -> RemoteError {
        RemoteError::new(ErrorCode::Timeout, "Pool pool2 failed (no response)")
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff { base: Duration::from_secs(10), cap: Duration::from_secs(60) };
        let delays: Vec<u64> = (1..=6).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 60, 60, 60]);
        assert_eq!(b.delay(1000).as_secs(), 60);
    }

    /// Queued bytes follow the files in and out of the queue, row by row; a failure keeps the
    /// file's size.
    #[test]
    fn queued_bytes_follow_the_queue() {
        let b = Backoff { base: Duration::from_secs(10), cap: Duration::from_secs(60) };
        let mut q = Queue::default();
        type Step = fn(&mut Queue, &Backoff);
        let rows: [(&str, Step, u64); 9] = [
            ("add 1 (100)", |q, _| assert!(q.add(id(1), 100)), 100),
            ("add 2 (50)", |q, _| assert!(q.add(id(2), 50)), 150),
            ("add 3 (7)", |q, _| assert!(q.add(id(3), 7)), 157),
            ("start 1", |q, _| assert!(q.start(id(1), TaskId(1))), 57),
            ("1 fails, waits", |q, b| assert!(q.failed(&id(1), false, boom(), 0, b).is_some()), 57),
            ("1 due again", |q, _| q.wake(60_000), 157),
            ("remove 3", |q, _| assert_eq!(q.remove(&id(3)), Removal::Dropped), 150),
            (
                "start 2, requeued",
                |q, _| {
                    assert!(q.start(id(2), TaskId(2)));
                    q.requeue(&id(2));
                },
                150,
            ),
            ("clear", |q, _| q.clear(), 0),
        ];
        for (what, step, want) in rows {
            step(&mut q, &b);
            assert_eq!(q.queued_bytes(), want, "after {what}");
        }
        assert_eq!(q.failures().map(|(_, f)| f.size).collect::<Vec<_>>(), [100]);
    }

    #[test]
    fn files_are_added_once_and_counted() {
        let mut q = Queue::default();
        assert!(q.add(id(1), 100));
        assert!(!q.add(id(1), 100), "already queued");
        assert!(q.add(id(2), 50));
        assert!(q.start(id(1), TaskId(7)));
        assert!(!q.add(id(1), 100), "already running");
        assert_eq!(q.stats().total, 150);
        q.completed(&id(1));
        assert_eq!(q.stats(), Stats { attempts: 1, completed: 1, transferred: 100, total: 150 });
        assert_eq!(q.failures().count(), 0, "never failed");
        assert_eq!(q.bytes_left(), 50);
        assert!(q.add(id(1), 100), "a permanent job may add a completed file again");
    }

    #[test]
    fn a_transient_failure_waits_its_backoff_and_keeps_its_last_error() {
        let b = Backoff::default();
        let mut q = Queue::default();
        q.add(id(1), 10);
        q.start(id(1), TaskId(1));
        assert_eq!(q.failed(&id(1), false, boom(), 1000, &b), Some(11_000));
        assert_eq!((q.queued_count(), q.waiting(), q.running()), (0, 1, 0));
        q.wake(10_999);
        assert_eq!(q.queued_count(), 0, "not before its time");
        q.wake(11_000);
        assert_eq!(q.queued().collect::<Vec<_>>(), vec![&id(1)]);
        q.start(id(1), TaskId(2));
        assert_eq!(q.failed(&id(1), false, boom(), 20_000, &b), Some(40_000), "the second wait is twice as long");
        let (_, f) = q.failures().next().unwrap();
        assert_eq!((f.attempts, f.last_at, f.permanent), (2, 20_000, false));
        assert_eq!(f.last_error, boom());
        assert!(!q.is_empty());
        assert_eq!(q.next_retry(), Some(40_000));
    }

    #[test]
    fn permanent_failures_and_cancels_leave_the_job() {
        let b = Backoff::default();
        let mut q = Queue::default();
        q.add(id(1), 10);
        q.add(id(2), 10);
        q.start(id(1), TaskId(1));
        q.start(id(2), TaskId(2));
        assert_eq!(q.failed(&id(1), true, boom(), 0, &b), None);
        q.cancelled(&id(2));
        assert!(q.is_empty());
        assert!(q.failures().any(|(i, f)| *i == id(1) && f.permanent));
    }

    /// A file that failed and then completed, or whose task was cancelled, stays listed with
    /// what became of it: the job's failures outlive the job.
    #[test]
    fn failures_are_kept_with_what_became_of_the_file() {
        let b = Backoff::default();
        let mut q = Queue::default();
        for n in 1..=2 {
            q.add(id(n), 10);
            q.start(id(n), TaskId(n.into()));
            q.failed(&id(n), false, boom(), 0, &b);
            q.wake(1_000_000);
            q.start(id(n), TaskId(10 + u64::from(n)));
        }
        q.completed(&id(1));
        q.cancelled(&id(2));
        let seen: HashMap<PnfsId, (u32, AfterFailure)> =
            q.failures().map(|(i, f)| (*i, (f.attempts, f.since))).collect();
        let want = HashMap::from([(id(1), (1, AfterFailure::Done)), (id(2), (1, AfterFailure::Cancelled))]);
        assert_eq!(seen, want);
        assert_eq!(q.stats().completed, 1);
    }

    #[test]
    fn removing_and_re_adding_keeps_one_entry_per_file() {
        let b = Backoff::default();
        let mut q = Queue::default();
        for n in 0..50 {
            q.add(id(n), 1);
        }
        for n in (0..50).step_by(2) {
            assert_eq!(q.remove(&id(n)), Removal::Dropped);
        }
        assert!(q.add(id(4), 1), "a permanent job may queue a file again");
        let order: Vec<PnfsId> = q.queued().copied().collect();
        assert_eq!(order.len(), 26);
        assert_eq!(order.last(), Some(&id(4)), "at the end, and only once");
        assert_eq!(q.queued_count(), 26);
        // A waiting file that leaves the job is not woken later.
        q.start(id(1), TaskId(1));
        q.failed(&id(1), false, boom(), 0, &b);
        assert_eq!(q.remove(&id(1)), Removal::Dropped);
        q.wake(i64::MAX);
        assert_eq!(q.queued().filter(|i| **i == id(1)).count(), 0);
        assert_eq!((q.waiting(), q.next_retry()), (0, None));
    }

    #[test]
    fn removal_of_queued_waiting_and_running_files() {
        let b = Backoff::default();
        let mut q = Queue::default();
        q.add(id(1), 1);
        q.add(id(2), 1);
        q.add(id(3), 1);
        q.start(id(2), TaskId(9));
        q.start(id(3), TaskId(10));
        q.failed(&id(3), false, boom(), 0, &b);
        assert_eq!(q.remove(&id(1)), Removal::Dropped);
        assert_eq!(q.remove(&id(2)), Removal::Running(TaskId(9)));
        assert_eq!(q.remove(&id(3)), Removal::Dropped, "a waiting file goes too");
        assert_eq!(q.remove(&id(4)), Removal::NotHere);
        assert_eq!((q.queued_count(), q.waiting(), q.running()), (0, 0, 1));
    }
}
