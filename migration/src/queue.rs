//! A job's files: queued, running, waiting to be retried, and what happened to them
//! (reference §3.1, §3.6, §3.7), with two fixes over dCache: a file that failed waits a
//! capped, exponentially growing time before its next try instead of being retried at once
//! in a hot loop (§10 item 9), and the last error of every failing file is kept for
//! `migration info`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use tidepool_p2p::model::EpochMillis;
use tidepool_p2p::{PnfsId, RemoteError, TaskId};

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

/// A file that failed at least once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub attempts: u32,
    pub last_error: RemoteError,
    pub last_at: EpochMillis,
    /// Dropped from the job for good.
    pub permanent: bool,
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
    queued: VecDeque<PnfsId>,
    sizes: HashMap<PnfsId, u64>,
    running: BTreeMap<PnfsId, TaskId>,
    /// Files waiting out their backoff, soonest first.
    retry: BTreeSet<(EpochMillis, PnfsId)>,
    failures: HashMap<PnfsId, Failure>,
    stats: Stats,
    /// The sum of `sizes`, kept as files come and go (`-pause-when`/`-stop-when` read it on
    /// every scheduling pass).
    left: u64,
}

impl Queue {
    /// Adds a file unless it is already queued, running or waiting (§3.6).
    pub fn add(&mut self, id: PnfsId, size: u64) -> bool {
        if self.sizes.contains_key(&id) {
            return false;
        }
        self.queued.push_back(id);
        self.sizes.insert(id, size);
        self.stats.total += size;
        self.left += size;
        true
    }

    /// Whether the file is queued, running or waiting.
    pub fn contains(&self, id: &PnfsId) -> bool {
        self.sizes.contains_key(id)
    }

    pub fn remove(&mut self, id: &PnfsId) -> Removal {
        if let Some(task) = self.running.get(id) {
            return Removal::Running(*task);
        }
        let Some(size) = self.sizes.remove(id) else { return Removal::NotHere };
        self.left -= size;
        self.queued.retain(|q| q != id);
        self.retry.retain(|(_, q)| q != id);
        // A file that left the job is no longer a failure of it.
        self.failures.remove(id);
        Removal::Dropped
    }

    /// Moves files whose backoff ended by `now` to the end of the queue.
    pub fn wake(&mut self, now: EpochMillis) {
        while let Some(&(at, id)) = self.retry.first() {
            if at > now {
                break;
            }
            self.retry.pop_first();
            self.queued.push_back(id);
        }
    }

    /// The queued files in order (the scheduler tries them in turn, skipping locked ones).
    pub fn queued(&self) -> impl Iterator<Item = &PnfsId> {
        self.queued.iter()
    }

    /// Takes a queued file for a task.
    pub fn start(&mut self, id: PnfsId, task: TaskId) -> bool {
        let Some(pos) = self.queued.iter().position(|q| *q == id) else { return false };
        self.queued.remove(pos);
        self.running.insert(id, task);
        self.stats.attempts += 1;
        true
    }

    pub fn completed(&mut self, id: &PnfsId) {
        if self.running.remove(id).is_some() {
            let size = self.sizes.remove(id).unwrap_or(0);
            self.left -= size;
            self.stats.completed += 1;
            self.stats.transferred += size;
            self.failures.remove(id);
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
        let entry = self.failures.entry(*id).or_insert(Failure {
            attempts: 0,
            last_error: error.clone(),
            last_at: now,
            permanent,
        });
        entry.attempts += 1;
        entry.last_error = error;
        entry.last_at = now;
        entry.permanent = permanent;
        if permanent {
            self.left -= self.sizes.remove(id).unwrap_or(0);
            return None;
        }
        let at = now.saturating_add(backoff.delay(entry.attempts).as_millis() as i64);
        self.retry.insert((at, *id));
        Some(at)
    }

    /// A cancelled task's file leaves the job (§3.7).
    pub fn cancelled(&mut self, id: &PnfsId) {
        if self.running.remove(id).is_some() {
            self.left -= self.sizes.remove(id).unwrap_or(0);
            self.failures.remove(id);
        }
    }

    /// Files a task works on.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn queued_count(&self) -> usize {
        self.queued.len()
    }

    /// Files waiting out a backoff.
    pub fn waiting(&self) -> usize {
        self.retry.len()
    }

    /// When the next waiting file is due.
    pub fn next_retry(&self) -> Option<EpochMillis> {
        self.retry.first().map(|(at, _)| *at)
    }

    /// Nothing queued, running or waiting.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty() && self.running.is_empty() && self.retry.is_empty()
    }

    /// Bytes still to transfer (queued, running and waiting files): what dCache meant by
    /// `queue.bytes` (§10 item 27).
    pub fn bytes_left(&self) -> u64 {
        self.left
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Every file that failed at least once, by pnfsid.
    pub fn failures(&self) -> impl Iterator<Item = (&PnfsId, &Failure)> {
        self.failures.iter()
    }

    /// Drops everything still to do (a job reaching a terminal state).
    pub fn clear(&mut self) {
        self.queued.clear();
        self.retry.clear();
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
