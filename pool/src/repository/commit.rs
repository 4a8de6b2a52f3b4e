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

use std::sync::Arc;
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

/// What runs on the commit thread once a job's batch is durable (or failed).
pub(super) type Done = Box<dyn FnOnce(StoreResult<()>) + Send>;

pub(super) struct Job {
    pub id: PnfsId,
    pub record: Vec<u8>,
    /// The whole content of a small replica, written into the incoming area by the commit
    /// thread; `None` when the caller wrote the incoming file itself.
    pub data: Option<Bytes>,
    /// Replicas evicted to make room for this one: their records are deleted durably, then
    /// their data files, before anything of the batch is written.
    pub evicted: Vec<PnfsId>,
    pub done: Done,
}

/// A job whose file is in the data area (or why not).
struct Placed {
    job: Job,
    placed: StoreResult<()>,
}

pub(super) struct Committer {
    tx: Option<mpsc::Sender<Job>>,
    /// The placing thread, then the commit thread (joined in that order).
    threads: Vec<JoinHandle<()>>,
}

impl Committer {
    pub fn spawn(store: Arc<dyn ReplicaStore>) -> StoreResult<Committer> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (placed_tx, placed_rx) = mpsc::channel::<Placed>();
        let commit_store = store.clone();
        let commit = std::thread::Builder::new()
            .name("tidepool-commit".into())
            .spawn(move || run(&*commit_store, placed_rx))
            .map_err(|e| StoreError::new("start the commit thread", e))?;
        let place = std::thread::Builder::new()
            .name("tidepool-place".into())
            .spawn(move || place(&*store, rx, placed_tx))
            .map_err(|e| StoreError::new("start the placing thread", e))?;
        Ok(Committer { tx: Some(tx), threads: vec![place, commit] })
    }

    /// Publishes the incoming data of `id` and stores its record; returns once both are
    /// durable. On error neither is left behind.
    pub fn commit(&self, id: PnfsId, record: Vec<u8>) -> StoreResult<()> {
        let (tell, wait) = mpsc::sync_channel(1);
        let done: Done = Box::new(move |r| {
            let _ = tell.send(r);
        });
        self.submit(Job { id, record, data: None, evicted: Vec::new(), done });
        wait.recv().map_err(|_| gone())?
    }

    /// Queues a job without waiting; its `done` runs on the commit thread (or here, with an
    /// error, if the thread has stopped).
    pub fn submit(&self, job: Job) {
        let Some(tx) = self.tx.as_ref() else { return (job.done)(Err(gone())) };
        if let Err(mpsc::SendError(job)) = tx.send(job) {
            (job.done)(Err(gone()));
        }
    }
}

fn gone() -> StoreError {
    StoreError::new("commit", std::io::Error::other("the commit thread has stopped"))
}

impl Drop for Committer {
    fn drop(&mut self) {
        // The placing thread ends when its queue closes, which closes the commit thread's.
        drop(self.tx.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The placing thread: discards what was evicted for a job, writes a whole replica's file,
/// and moves the file into the data area, one job at a time, in order.
fn place(store: &dyn ReplicaStore, rx: mpsc::Receiver<Job>, placed: mpsc::Sender<Placed>) {
    while let Ok(job) = rx.recv() {
        if !job.evicted.is_empty() {
            discard(store, &job.evicted);
        }
        let result = match &job.data {
            Some(data) => store.put_incoming(&job.id, data).and_then(|()| store.publish(&job.id)),
            None => store.publish(&job.id),
        };
        if let Err(mpsc::SendError(p)) = placed.send(Placed { job, placed: result }) {
            (p.job.done)(Err(gone()));
        }
    }
}

/// The commit thread: every placed job waiting shares one sync and one flush.
fn run(store: &dyn ReplicaStore, rx: mpsc::Receiver<Placed>) {
    let mut busy = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // A busy pool (the last batch was not small) waits a moment for more, so that one sync
        // serves more replicas; a replica that comes alone is never delayed.
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
        let (jobs, placed): (Vec<Job>, Vec<StoreResult<()>>) = batch.into_iter().map(|p| (p.job, p.placed)).unzip();
        let results = commit_batch(store, &jobs, placed);
        for (job, result) in jobs.into_iter().zip(results) {
            (job.done)(result);
        }
    }
}

/// Makes a batch of placed jobs durable: `results` holds how the placing went for each.
fn commit_batch(store: &dyn ReplicaStore, batch: &[Job], mut results: Vec<StoreResult<()>>) -> Vec<StoreResult<()>> {
    // 1. One sync makes the data of the whole batch durable, before any record names it.
    if let Err(e) = store.sync_data() {
        return undo(store, batch, &results, e, false);
    }
    // 2. The records, then one flush. A replica whose record cannot be written loses its
    // data file too, so nothing of it stays behind.
    for (job, result) in batch.iter().zip(results.iter_mut()) {
        if result.is_ok() {
            *result = store.put_record(&job.id, &job.record);
            if result.is_err() {
                let _ = store.remove_data(&job.id);
            }
        }
    }
    if let Err(e) = store.flush() {
        return undo(store, batch, &results, e, true);
    }
    results
}

/// Fails the whole batch after a sync or flush error, removing what it had put in place.
fn undo(
    store: &dyn ReplicaStore,
    batch: &[Job],
    results: &[StoreResult<()>],
    error: StoreError,
    records_written: bool,
) -> Vec<StoreResult<()>> {
    tracing::error!(error = %error, replicas = batch.len(), "commit failed; nothing of this batch was kept");
    for (job, result) in batch.iter().zip(results) {
        if result.is_ok() {
            if records_written {
                let _ = store.delete_record(&job.id);
            }
            let _ = store.remove_data(&job.id);
        }
    }
    let _ = store.flush();
    batch
        .iter()
        .map(|_| {
            Err(StoreError::new(error.op.clone(), std::io::Error::new(error.source.kind(), error.source.to_string())))
        })
        .collect()
}

/// Deletes the records of replicas already gone from the index (durably), then their data
/// files. A record that cannot be deleted leaves its data in place: the replica comes back after
/// a restart rather than as a record without data.
pub(super) fn discard(store: &dyn ReplicaStore, ids: &[PnfsId]) {
    let result = ids.iter().try_for_each(|id| store.delete_record(id)).and_then(|()| store.flush());
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
