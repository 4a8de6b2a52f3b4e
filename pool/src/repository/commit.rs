//! Group commit. Replicas that finish at about the same time share one data sync and one
//! metadata flush: the committer thread takes every commit waiting when it becomes free,
//! moves their files into the data area, syncs the data area once, writes their records,
//! flushes the metadata once, and only then answers each of them. A replica is therefore
//! acknowledged only after its batch is durable, and a busy pool pays one sync for many
//! replicas instead of several per replica.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tidepool_p2p::PnfsId;

use super::store::{ReplicaStore, StoreError, StoreResult};

/// The most commits that share one sync.
const MAX_BATCH: usize = 512;

struct Job {
    id: PnfsId,
    record: Vec<u8>,
    done: mpsc::SyncSender<StoreResult<()>>,
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
        let gone = || StoreError::new("commit", std::io::Error::other("the commit thread has stopped"));
        let (done, wait) = mpsc::sync_channel(1);
        self.tx.as_ref().ok_or_else(gone)?.send(Job { id, record, done }).map_err(|_| gone())?;
        wait.recv().map_err(|_| gone())?
    }
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
            // A committer whose caller went away has nobody to tell.
            let _ = job.done.send(result);
        }
    }
}

fn commit_batch(store: &dyn ReplicaStore, batch: &[Job]) -> Vec<StoreResult<()>> {
    // 1. Move each file into the data area.
    let mut results: Vec<StoreResult<()>> = batch.iter().map(|j| store.publish(&j.id)).collect();
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
