//! Group commit. Replicas that finish at about the same time share one data sync and one
//! metadata flush: the commit thread takes every commit waiting when it becomes free (their
//! files already moved into the data area), syncs the data area once, writes their records,
//! flushes the metadata once, and only then answers each of them. A replica is therefore
//! acknowledged only after its batch is durable, and a busy pool pays one sync for many
//! replicas instead of several per replica.
//!
//! Two threads make a pipeline. The *placing* thread puts each job's file in the data area (a
//! small replica received whole travels with its content, and this thread writes its file);
//! the *commit* thread takes every placed job waiting, syncs, writes the records and flushes.
//! So the files of the next batch are written while the disk syncs the last one, the caller
//! of a whole replica needs no thread of its own while its batch syncs, and one thread creates
//! all those files (no contention on the incoming directory). Each job ends by calling its
//! `done` on the commit thread, with its batch's outcome.
//!
//! A failed batch leaves nothing of its replicas: no index entry (their `done` gets the error),
//! no record, no data file. Each undo step is tried [`UNDO_TRIES`] times. A data file whose
//! record was written first becomes the mark of a failed commit (`mark_failed`), so that if
//! the record's deletion cannot be made durable, restart recovery knows the record was never
//! acknowledged and deletes it instead of marking it BROKEN; until then the record is a
//! *ghost* ([`Ghosts`]): hidden from listings, its deletion retried with every batch.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use bytes::Bytes;
use tidepool_p2p::PnfsId;

use super::store::{ReplicaStore, StoreError, StoreResult};

/// The most commits that share one sync.
const MAX_BATCH: usize = 512;
/// A batch of at least this many means a busy pool: the next batch gathers for [`GATHER`].
const BUSY: usize = 4;
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);
/// How many times each step of an undo is tried before it is left to later batches and to
/// restart recovery.
const UNDO_TRIES: u32 = 3;

/// Replicas whose failed commit left a record that could not be deleted durably (yet). The
/// repository hides their records from listings; every batch tries to delete them again, and
/// restart recovery deletes them (their data file was turned into a failed-commit mark).
pub(super) type Ghosts = Arc<parking_lot::Mutex<HashSet<PnfsId>>>;

/// Told of every batch the commit thread ends, durable or failed: how many replicas it held
/// and how long its sync, record writes and metadata flush took. Called on the commit thread,
/// so it must be quick (the daemon's metrics update a histogram).
pub trait BatchObserver: Send + Sync {
    fn batch(&self, replicas: usize, took: std::time::Duration);
}

/// The observer of the batches, once one is set ([`Repository::observe_batches`](super::Repository::observe_batches)).
pub(super) type Observer = Arc<std::sync::OnceLock<Box<dyn BatchObserver>>>;

/// What runs on the commit thread once a job's batch is durable (or failed). It runs exactly
/// once: a job dropped unanswered (a thread that panicked, a queue that closed) answers with an
/// error as it goes.
pub(super) struct Done(Option<Box<dyn FnOnce(StoreResult<()>) + Send>>);

impl Done {
    pub fn new(f: impl FnOnce(StoreResult<()>) + Send + 'static) -> Done {
        Done(Some(Box::new(f)))
    }

    fn call(mut self, result: StoreResult<()>) {
        if let Some(f) = self.0.take() {
            f(result);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(gone()));
        }
    }
}

pub(super) struct Job {
    pub id: PnfsId,
    pub record: Vec<u8>,
    /// The whole content of a small replica, written into the incoming area by the placing
    /// thread; `None` when the caller wrote the incoming file itself.
    pub data: Option<Bytes>,
    /// Replicas evicted to make room for this one: the placing thread deletes their records
    /// durably, then their data files, before it places this one.
    pub evicted: Vec<PnfsId>,
    pub done: Done,
}

/// A job whose file is in the data area (or why not).
struct Placed {
    job: Job,
    placed: StoreResult<()>,
    /// Its place in the placing order (1, 2, ...).
    seq: u64,
}

pub(super) struct Committer {
    tx: Option<mpsc::Sender<Job>>,
    /// The placing thread, then the commit thread (joined in that order).
    threads: Vec<JoinHandle<()>>,
}

impl Committer {
    pub fn spawn(store: Arc<dyn ReplicaStore>, ghosts: Ghosts, observer: Observer) -> StoreResult<Committer> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (placed_tx, placed_rx) = mpsc::channel::<Placed>();
        let placed_count = Arc::new(AtomicU64::new(0));
        let (commit_store, commit_count) = (store.clone(), placed_count.clone());
        let commit = std::thread::Builder::new()
            .name("tidepool-commit".into())
            .spawn(move || run(&*commit_store, placed_rx, &commit_count, &ghosts, &observer))
            .map_err(|e| StoreError::new("start the commit thread", e))?;
        let place = std::thread::Builder::new()
            .name("tidepool-place".into())
            .spawn(move || place(&*store, rx, placed_tx, &placed_count))
            .map_err(|e| StoreError::new("start the placing thread", e))?;
        Ok(Committer { tx: Some(tx), threads: vec![place, commit] })
    }

    /// Publishes the incoming data of `id` and stores its record; returns once both are
    /// durable. On error neither is left behind.
    pub fn commit(&self, id: PnfsId, record: Vec<u8>) -> StoreResult<()> {
        let (tell, wait) = mpsc::sync_channel(1);
        let done = Done::new(move |r| {
            let _ = tell.send(r);
        });
        self.submit(Job { id, record, data: None, evicted: Vec::new(), done });
        wait.recv().map_err(|_| gone())?
    }

    /// Queues a job without waiting; its `done` runs on the commit thread (or here, with an
    /// error, if the thread has stopped).
    pub fn submit(&self, job: Job) {
        // A job that cannot be queued is dropped, which answers it with an error.
        if let Some(tx) = self.tx.as_ref() {
            let _ = tx.send(job);
        }
    }
}

/// The error of a commit whose threads have stopped.
pub(super) fn gone() -> StoreError {
    StoreError::new("commit", std::io::Error::other("the commit thread has stopped"))
}

impl Drop for Committer {
    fn drop(&mut self) {
        // The placing thread ends when its queue closes, which closes the commit thread's.
        drop(self.tx.take());
        for t in self.threads.drain(..) {
            // A `done` that drops the last handle of the repository drops this on the commit
            // thread itself, which must not wait for itself (it is ending anyway).
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// The placing thread: discards what was evicted for a job, writes a whole replica's file,
/// and moves the file into the data area, one job at a time, in order.
fn place(store: &dyn ReplicaStore, rx: mpsc::Receiver<Job>, placed: mpsc::Sender<Placed>, count: &AtomicU64) {
    while let Ok(job) = rx.recv() {
        if !job.evicted.is_empty() {
            discard(store, &job.evicted);
        }
        let written = match &job.data {
            Some(data) => store.put_incoming(&job.id, data),
            None => Ok(()),
        };
        let result = written.and_then(|()| {
            fail::fail_point!("commit-before-rename");
            store.publish(&job.id)?;
            fail::fail_point!("commit-after-rename");
            Ok(())
        });
        let seq = count.fetch_add(1, Ordering::SeqCst) + 1;
        // If the commit thread has gone, the job is dropped and answers with an error.
        let _ = placed.send(Placed { job, placed: result, seq });
    }
}

/// The commit thread: every placed job waiting shares one sync and one flush.
///
/// A failed sync may concern any file written before it returned, including files of the next
/// batches that the placing thread wrote meanwhile; `syncfs` reports such an error only once.
/// So every job placed before a failed sync returned fails with it, whatever its batch.
fn run(
    store: &dyn ReplicaStore,
    rx: mpsc::Receiver<Placed>,
    placed_count: &AtomicU64,
    ghosts: &Ghosts,
    observer: &Observer,
) {
    let mut busy = false;
    // After a failed sync: the jobs placed up to this one fail with its error.
    let mut poisoned: Option<(u64, StoreError)> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // A busy pool (the last batch was not small) waits a moment for more, so that one sync
        // serves more replicas; a pool that is not busy never delays a commit.
        if busy {
            let until = std::time::Instant::now() + GATHER;
            while batch.len() < MAX_BATCH {
                let left = until.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
        }
        busy = batch.len() >= BUSY;
        let last_seq = batch.last().map_or(0, |p| p.seq);
        let mut jobs = Vec::with_capacity(batch.len());
        let mut placed = Vec::with_capacity(batch.len());
        let mut failed_too = 0;
        for p in batch {
            let result = match &poisoned {
                Some((through, error)) if p.seq <= *through && p.placed.is_ok() => {
                    failed_too += 1;
                    remove_unsynced(store, &p.job.id);
                    Err(copy(error))
                }
                _ => p.placed,
            };
            jobs.push(p.job);
            placed.push(result);
        }
        if failed_too > 0 {
            tracing::error!(
                replicas = failed_too,
                "written before a sync failed, so failed with it; nothing of them was kept"
            );
        }
        if poisoned.as_ref().is_some_and(|(through, _)| last_seq >= *through) {
            poisoned = None;
        }
        let started = std::time::Instant::now();
        let (results, sync_failed) = commit_batch(store, &jobs, placed, ghosts);
        if let Some(o) = observer.get() {
            o.batch(jobs.len(), started.elapsed());
        }
        if let Some(e) = sync_failed {
            poisoned = Some((placed_count.load(Ordering::SeqCst), e));
        }
        for (job, result) in jobs.into_iter().zip(results) {
            job.done.call(result);
        }
    }
}

/// Makes a batch of placed jobs durable: `results` holds how the placing went for each.
/// Returns each job's outcome, and the error of the sync if that is what failed.
fn commit_batch(
    store: &dyn ReplicaStore,
    batch: &[Job],
    mut results: Vec<StoreResult<()>>,
    ghosts: &Ghosts,
) -> (Vec<StoreResult<()>>, Option<StoreError>) {
    // 1. One sync makes the data of the whole batch durable, before any record names it.
    let synced = (|| {
        fail::fail_point!("commit-fail-sync", |_| Err(injected("sync data")));
        store.sync_data()
    })();
    if let Err(e) = synced {
        let seen = copy(&e);
        tracing::error!(error = %e, replicas = batch.len(), "commit failed; nothing of this batch was kept");
        for (job, result) in batch.iter().zip(&results) {
            if result.is_ok() {
                remove_unsynced(store, &job.id);
            }
        }
        return (batch.iter().map(|_| Err(copy(&e))).collect(), Some(seen));
    }
    fail::fail_point!("commit-after-sync");
    // Records left by earlier failed commits are deleted again, made durable by this batch's
    // flush. A replica of this batch overwrites its own.
    let retried: Vec<PnfsId> = {
        let g = ghosts.lock();
        g.iter().filter(|id| !batch.iter().any(|j| j.id == **id)).copied().collect()
    };
    let retried: Vec<PnfsId> = retried
        .into_iter()
        .filter(|id| match store.delete_record(id) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(pnfsid = %id, error = %e, "could not delete the record of a failed commit yet; tried again later");
                false
            }
        })
        .collect();
    // 2. The records, then one flush.
    let mut unwritten = Vec::new();
    for (job, result) in batch.iter().zip(results.iter_mut()) {
        if result.is_ok() {
            *result = store.put_record(&job.id, &job.record);
            if result.is_err() {
                unwritten.push(job.id);
            }
        }
    }
    fail::fail_point!("commit-after-records");
    let flushed = (|| {
        fail::fail_point!("commit-fail-flush", |_| Err(injected("flush metadata")));
        store.flush()
    })();
    if let Err(e) = flushed {
        tracing::error!(error = %e, replicas = batch.len(), "commit failed; nothing of this batch was kept");
        let placed: Vec<PnfsId> =
            batch.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(j, _)| j.id).chain(unwritten).collect();
        undo_records(store, &placed, ghosts);
        return (batch.iter().map(|_| Err(copy(&e))).collect(), None);
    }
    // The flush made the retried deletions and this batch's records durable: none of those is
    // a ghost any more, and their marks can go.
    let cleared: Vec<PnfsId> = {
        let mut g = ghosts.lock();
        let committed = batch.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(j, _)| j.id);
        retried.into_iter().chain(committed).filter(|id| g.remove(id)).collect()
    };
    for id in &cleared {
        if let Err(e) = retry(|| store.remove_failed_mark(id)) {
            tracing::warn!(pnfsid = %id, error = %e, "could not remove the mark of a failed commit; restart recovery will");
        }
    }
    // A replica whose record could not be written fails alone; nothing of it stays.
    if !unwritten.is_empty() {
        undo_records(store, &unwritten, ghosts);
    }
    fail::fail_point!("commit-after-flush");
    (results, None)
}

/// The error a `commit-fail-*` fault point injects (`faults.rs`).
fn injected(op: &str) -> StoreError {
    StoreError::new(op, std::io::Error::other("injected by a fault point"))
}

/// The same error again (an `io::Error` cannot be cloned), with its OS error number if it
/// has one.
fn copy(e: &StoreError) -> StoreError {
    let source = match e.source.raw_os_error() {
        Some(n) => std::io::Error::from_raw_os_error(n),
        None => std::io::Error::new(e.source.kind(), e.source.to_string()),
    };
    StoreError::new(e.op.clone(), source)
}

/// Tries an undo step up to [`UNDO_TRIES`] times.
fn retry(mut step: impl FnMut() -> StoreResult<()>) -> StoreResult<()> {
    let mut tries = 1;
    loop {
        match step() {
            Ok(()) => return Ok(()),
            Err(e) if tries >= UNDO_TRIES => return Err(e),
            Err(_) => tries += 1,
        }
    }
}

/// Removes the data file of a replica whose batch failed before any record named it. A file
/// that cannot be removed has no record: restart recovery deletes it as an orphan, and a new
/// copy of the same replica replaces it.
fn remove_unsynced(store: &dyn ReplicaStore, id: &PnfsId) {
    if let Err(e) = retry(|| store.remove_data(id)) {
        tracing::error!(pnfsid = %id, error = %e, "could not delete the data file of a failed commit; restart recovery will");
    }
}

/// Undoes replicas whose records were written (or may have been) by a batch that failed:
/// each data file becomes a failed-commit mark, the records are deleted and flushed, then the
/// marks go. If the deletions cannot be made durable, the replicas become ghosts: hidden, their
/// deletion retried by later batches, their marks left for restart recovery. A data file that
/// could not be turned into a mark stays until its record is gone (it is complete and synced,
/// so a record that survives names a whole replica, never a missing one).
fn undo_records(store: &dyn ReplicaStore, ids: &[PnfsId], ghosts: &Ghosts) {
    let marked: Vec<bool> = ids
        .iter()
        .map(|id| match retry(|| store.mark_failed(id)) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(pnfsid = %id, error = %e, "could not mark the data file of a failed commit");
                false
            }
        })
        .collect();
    let durable = ids.iter().try_for_each(|id| retry(|| store.delete_record(id))).and_then(|()| {
        fail::fail_point!("commit-undo-before-flush");
        retry(|| store.flush())
    });
    if let Err(e) = durable {
        tracing::error!(
            error = %e,
            replicas = ids.len(),
            "could not delete the records of a failed commit; hidden and retried, and removed at the next start"
        );
        ghosts.lock().extend(ids);
        return;
    }
    {
        let mut g = ghosts.lock();
        for id in ids {
            g.remove(id);
        }
    }
    for (id, marked) in ids.iter().zip(marked) {
        let removed = if marked { retry(|| store.remove_failed_mark(id)) } else { retry(|| store.remove_data(id)) };
        if let Err(e) = removed {
            tracing::error!(pnfsid = %id, error = %e, "could not remove what a failed commit left; restart recovery will");
        }
    }
}

/// Deletes the records of replicas already gone from the index (durably), then their data
/// files. A record that cannot be deleted leaves its data in place: the replica comes back after
/// a restart rather than as a record without data.
pub(super) fn discard(store: &dyn ReplicaStore, ids: &[PnfsId]) {
    let result = ids
        .iter()
        .try_for_each(|id| store.delete_record(id).and_then(|()| store.delete_hold(id)))
        .and_then(|()| store.flush());
    if let Err(e) = result {
        tracing::error!(error = %e, "could not delete the records of evicted replicas; they come back after a restart");
        return;
    }
    for id in ids {
        if let Err(e) = store.remove_data(id) {
            tracing::error!(pnfsid = %id, error = %e, "could not delete data file");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::MemStore;

    fn id(n: u8) -> PnfsId {
        PnfsId::from_random([n; 16])
    }

    /// A whole replica's job; its outcome arrives on the returned receiver.
    fn whole(c: &Committer, n: u8) -> mpsc::Receiver<StoreResult<()>> {
        let (tell, outcome) = mpsc::channel();
        let done = Done::new(move |r| {
            let _ = tell.send(r);
        });
        c.submit(Job { id: id(n), record: vec![n], data: Some(Bytes::from(vec![n; 10])), evicted: vec![], done });
        outcome
    }

    fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_failed_sync_fails_the_replicas_written_while_it_ran_and_no_later_ones() {
        let store = MemStore::new();
        let c = Committer::spawn(store.clone(), Ghosts::default(), Observer::default()).unwrap();
        let release = store.fail_next_sync();
        let a = whole(&c, 1);
        until("the first batch's sync", || store.is_syncing());
        // Written while the failing sync runs: its data may be what the error was about.
        let b = whole(&c, 2);
        until("the second replica to be placed", || store.has_data(&id(2).to_string()));
        release.send(()).unwrap();
        for outcome in [a, b] {
            let err = outcome.recv().unwrap().unwrap_err();
            assert_eq!(err.source.raw_os_error(), Some(libc::EIO), "{err}");
        }
        for n in [1, 2] {
            assert!(!store.has_data(&id(n).to_string()), "nothing of a failed replica is kept");
            assert!(store.get_record(&id(n)).unwrap().is_none());
        }
        // Written after the failure was seen: committed as usual.
        whole(&c, 3).recv().unwrap().unwrap();
        assert!(store.has_data(&id(3).to_string()));
        assert_eq!(store.get_record(&id(3)).unwrap(), Some(vec![3]));
    }

    #[test]
    fn a_job_left_unanswered_answers_with_an_error() {
        let (tell, outcome) = mpsc::channel();
        drop(Done::new(move |r| {
            let _ = tell.send(r);
        }));
        assert!(outcome.recv().unwrap().is_err());
    }
}
