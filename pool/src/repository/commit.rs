//! Group commit. Replicas that finish at about the same time share one data sync and one
//! metadata flush: the committer thread takes every commit waiting when it becomes free,
//! moves their files into the data area, syncs the data area once, writes their records,
//! flushes the metadata once, and only then answers each of them. A replica is therefore
//! acknowledged only after its batch is durable, and a busy pool pays one sync for many
//! replicas instead of several per replica.
//!
//! A small replica received whole travels with its content: the commit thread writes its file
//! too, so the caller needs no thread of its own while the batch syncs, and every file of a
//! batch is created by one thread (no contention on the incoming directory). Each job ends by
//! calling its `done` on the commit thread, with the batch's outcome for it.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use bytes::Bytes;
use tidepool_p2p::PnfsId;

use super::store::{ReplicaStore, StoreError, StoreResult};

/// The most commits that share one sync.
const MAX_BATCH: usize = 512;

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

pub(super) struct Committer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    pub fn spawn(store: Arc<dyn ReplicaStore>) -> StoreResult<Committer> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("tidepool-commit".into())
            .spawn(move || run(&*store, rx))
            .map_err(|e| StoreError::new("start the commit thread", e))?;
        Ok(Committer { tx: Some(tx), thread: Some(thread) })
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
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(store: &dyn ReplicaStore, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = commit_batch(store, &batch);
        for (job, result) in batch.into_iter().zip(results) {
            (job.done)(result);
        }
    }
}

fn commit_batch(store: &dyn ReplicaStore, batch: &[Job]) -> Vec<StoreResult<()>> {
    // 0. Room made for the batch.
    let evicted: Vec<PnfsId> = batch.iter().flat_map(|j| j.evicted.iter().copied()).collect();
    if !evicted.is_empty() {
        discard(store, &evicted);
    }
    // 1. Write the whole replicas that came with their content, then move each file into the
    // data area.
    let mut results: Vec<StoreResult<()>> = batch
        .iter()
        .map(|j| match &j.data {
            Some(data) => store.put_incoming(&j.id, data).and_then(|()| store.publish(&j.id)),
            None => store.publish(&j.id),
        })
        .collect();
    // 2. One sync makes the data of the whole batch durable, before any record names it.
    if let Err(e) = store.sync_data() {
        return undo(store, batch, &results, e, false);
    }
    // 3. The records, then one flush. A replica whose record cannot be written loses its
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
