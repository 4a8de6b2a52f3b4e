//! Small replicas fetched in batches. Transfers from one source that are under way at the same
//! time wait here together, and one exchange (`FetchSmall`) asks for up to
//! [`MAX_SMALL_ITEMS`] of them: one request, one read on the source's blocking pool, one
//! stream of answers. That replaces two round trips and several thread hand-offs per file on
//! each side.
//!
//! Each transfer still commits on its own (the data of a batch is handed to each transfer,
//! which checks size and checksum and joins a group commit), so cancel, `pp ls` and the
//! error of each file stay per transfer. A file the batch cannot carry (larger than one
//! chunk, a connection that broke, a source that does not know `FetchSmall`) falls back to
//! the per-file exchange in `transfer.rs`, which knows how to resume.
//!
//! At most [`RUNNERS`] exchanges per source are under way; while they are, new transfers
//! gather, so batches grow with the load (like group commit) and a lone transfer is not
//! delayed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tidepool_p2p::conn::Connection;
use tidepool_p2p::frame::{Frame, MAX_DATA_CHUNK, WireError};
use tidepool_p2p::message::{DataReply, DataRequest, MAX_SMALL_ITEMS, SmallFetch, SmallOutcome};
use tidepool_p2p::model::FileAttributes;
use tidepool_p2p::{ErrorCode, PoolName, RemoteError};
use tokio::sync::oneshot;

use crate::pool::Pool;
use crate::transfer::{PullRequest, RESUMES, TransferEntry, cancelled};

/// Exchanges under way per source at once.
const RUNNERS: usize = 2;
/// The most bytes of data one exchange asks for.
const BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// What a transfer gets from the batcher.
pub(crate) enum Fetched {
    /// The whole replica as the source sent it: its size is checked, its checksum not yet.
    Data { attrs: FileAttributes, bytes: Bytes },
    /// Use the per-file exchange: the replica is larger than one chunk, the batch's
    /// connection broke, or the source does not know `FetchSmall`.
    PerFile,
    /// The transfer failed (the source refused this file, a stall, a protocol error).
    Failed(RemoteError),
}

struct Waiter {
    item: SmallFetch,
    reply: oneshot::Sender<Fetched>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    runners: usize,
    /// The source answered `FetchSmall` with a protocol error (a pool built before it): every
    /// later transfer from it uses the per-file exchange.
    unsupported: bool,
}

/// The queues of transfers waiting for a batch, per source.
#[derive(Default)]
pub struct SmallFetches {
    queues: Mutex<HashMap<PoolName, Queue>>,
    /// `FetchSmall` exchanges so far, the replicas they delivered, and the answers `Later`
    /// (asked again in a later exchange).
    pub exchanges: AtomicU64,
    pub delivered: AtomicU64,
    pub deferred: AtomicU64,
}

impl SmallFetches {
    /// Transfers waiting for an exchange, from all sources.
    pub fn waiting(&self) -> usize {
        self.queues.lock().values().map(|q| q.waiting.len()).sum()
    }

    /// Whether `source` was found not to take batches.
    pub fn per_file_only(&self, source: &PoolName) -> bool {
        self.queues.lock().get(source).is_some_and(|q| q.unsupported)
    }
}

impl std::fmt::Debug for SmallFetches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmallFetches").finish_non_exhaustive()
    }
}

/// Fetches one replica within a batch from its source, or says why not.
pub(crate) async fn fetch(pool: &Arc<Pool>, entry: &TransferEntry, req: &PullRequest) -> Fetched {
    let (reply, answer) = oneshot::channel();
    let item = SmallFetch { transfer: entry.id, pnfsid: req.pnfsid, force_source_mode: req.force_source_mode };
    let start = {
        let mut queues = pool.transfers.small.queues.lock();
        let q = queues.entry(req.source.clone()).or_default();
        if q.unsupported {
            return Fetched::PerFile;
        }
        q.waiting.push_back(Waiter { item, reply });
        let start = q.runners < RUNNERS;
        if start {
            q.runners += 1;
        }
        start
    };
    if start {
        tokio::spawn(run(pool.clone(), req.source.clone()));
    }
    tokio::select! {
        // A runner that went away without answering (shutdown) leaves the per-file exchange,
        // which sees the cancel.
        r = answer => r.unwrap_or(Fetched::PerFile),
        // The waiter stays queued; the runner skips it, or drops its answer.
        _ = entry.cancel.cancelled() => Fetched::Failed(cancelled(req.pnfsid)),
    }
}

/// Runs exchanges with `source` while transfers wait for one.
async fn run(pool: Arc<Pool>, source: PoolName) {
    loop {
        let batch: Vec<Waiter> = {
            let mut queues = pool.transfers.small.queues.lock();
            let Some(q) = queues.get_mut(&source) else { return };
            q.waiting.retain(|w| !w.reply.is_closed());
            if q.waiting.is_empty() {
                q.runners -= 1;
                if q.runners == 0 && !q.unsupported {
                    queues.remove(&source);
                }
                return;
            }
            let n = q.waiting.len().min(MAX_SMALL_ITEMS);
            q.waiting.drain(..n).collect()
        };
        let later = exchange(&pool, &source, batch).await;
        if !later.is_empty() {
            let mut queues = pool.transfers.small.queues.lock();
            if let Some(q) = queues.get_mut(&source) {
                for w in later.into_iter().rev() {
                    q.waiting.push_front(w);
                }
            }
        }
    }
}

/// Answers every waiter of `rest` with what `what` makes of it.
fn answer_all(rest: impl IntoIterator<Item = Waiter>, what: impl Fn() -> Fetched) {
    for w in rest {
        // A transfer that was cancelled meanwhile has nobody listening.
        let _ = w.reply.send(what());
    }
}

/// Why an exchange ended before every item was answered.
enum Stop {
    /// The connection broke: the rest may be asked again on a new one.
    Broken(RemoteError),
    /// The rest fail with this error.
    Fatal(RemoteError),
    /// The rest use the per-file exchange (the source does not know batches, or shutdown).
    PerFile,
}

/// Asks `source` for every waiter of `batch`. Each is answered, except the ones the source put
/// off for lack of room in the exchange, which are returned to be asked again. A connection
/// that breaks is replaced (at most [`RESUMES`] times) and the unanswered rest asked again.
async fn exchange(pool: &Arc<Pool>, source: &PoolName, batch: Vec<Waiter>) -> Vec<Waiter> {
    let transfers = &pool.transfers;
    let mut pending: VecDeque<Waiter> = batch.into();
    let mut later = Vec::new();
    let mut breaks = 0;
    loop {
        pending.retain(|w| !w.reply.is_closed());
        if pending.is_empty() {
            return later;
        }
        let connected = tokio::select! {
            c = transfers.connection(pool, source) => c,
            _ = transfers.closing.cancelled() => Err(RemoteError::new(ErrorCode::Cancelled, "pool shutting down")),
        };
        let mut conn = match connected {
            Ok(c) => c,
            Err(e) => {
                answer_all(pending, || Fetched::Failed(e.clone()));
                return later;
            }
        };
        match ask(pool, source, &mut conn, &mut pending, &mut later).await {
            Ok(()) => {
                transfers.give_back(source, conn);
                return later;
            }
            Err(Stop::Broken(e)) if breaks < RESUMES => {
                breaks += 1;
                transfers.forget_idle(source);
                let pnfsids = pending.iter().map(|w| w.item.pnfsid.to_string()).collect::<Vec<_>>().join(" ");
                tracing::warn!(%source, files = pending.len(), %pnfsids, "connection to the source broke ({}); trying a new one", e.message);
            }
            Err(Stop::Broken(e) | Stop::Fatal(e)) => {
                answer_all(pending, || Fetched::Failed(e.clone()));
                return later;
            }
            Err(Stop::PerFile) => {
                answer_all(pending, || Fetched::PerFile);
                return later;
            }
        }
    }
}

/// One `FetchSmall` exchange over `conn` for the waiters of `pending`, which are taken off it
/// as they are answered (or put into `later`).
async fn ask(
    pool: &Arc<Pool>,
    source: &PoolName,
    conn: &mut Connection,
    pending: &mut VecDeque<Waiter>,
    later: &mut Vec<Waiter>,
) -> Result<(), Stop> {
    let transfers = &pool.transfers;
    let broken =
        |e: WireError| Stop::Broken(RemoteError::new(ErrorCode::Offline, format!("connection to {source}: {e}")));
    let no_progress = transfers.no_progress();
    let stalled = || {
        Stop::Fatal(RemoteError::new(
            ErrorCode::Timeout,
            format!("no progress for {} s (source {source})", no_progress.as_secs()),
        ))
    };
    let protocol = |msg: String| Stop::Fatal(RemoteError::new(ErrorCode::Protocol, format!("source {source}: {msg}")));
    transfers.small.exchanges.fetch_add(1, Ordering::Relaxed);
    let items = pending.iter().map(|w| w.item.clone()).collect();
    let request = DataRequest::FetchSmall { items, max_size: MAX_DATA_CHUNK as u64, max_bytes: BATCH_BYTES };
    conn.send(&request).await.map_err(broken)?;
    let mut first = true;
    while let Some(transfer) = pending.front().map(|w| w.item.transfer) {
        let reply = tokio::select! {
            r = tokio::time::timeout(no_progress, conn.recv::<DataReply>()) => r,
            _ = transfers.closing.cancelled() => return Err(Stop::PerFile),
        };
        let outcome = match reply.map_err(|_| stalled())?.map_err(broken)? {
            DataReply::SmallItem { transfer: t, outcome } if t == transfer => outcome,
            DataReply::Error(e) if first && e.code() == Some(ErrorCode::Protocol) => {
                tracing::info!(%source, "source does not take small-file batches ({}); fetching one file at a time", e.message);
                if let Some(q) = transfers.small.queues.lock().get_mut(source) {
                    q.unsupported = true;
                }
                return Err(Stop::PerFile);
            }
            other => return Err(protocol(format!("expected the answer for transfer {transfer}, got {other:?}"))),
        };
        first = false;
        let data = match &outcome {
            SmallOutcome::Sent(attrs) => {
                let frame = tokio::select! {
                    f = tokio::time::timeout(no_progress, conn.next_frame()) => f,
                    _ = transfers.closing.cancelled() => return Err(Stop::PerFile),
                };
                match frame.map_err(|_| stalled())?.map_err(broken)? {
                    Frame::Data(bytes) if bytes.len() as u64 == attrs.size => Some(bytes),
                    _ => {
                        return Err(protocol(format!(
                            "the data of {} is not one frame of {} bytes",
                            attrs.pnfsid, attrs.size
                        )));
                    }
                }
            }
            _ => None,
        };
        let Some(w) = pending.pop_front() else { break };
        let answer = match (outcome, data) {
            (SmallOutcome::Sent(attrs), Some(bytes)) => {
                transfers.small.delivered.fetch_add(1, Ordering::Relaxed);
                Fetched::Data { attrs, bytes }
            }
            (SmallOutcome::Later, _) => {
                transfers.small.deferred.fetch_add(1, Ordering::Relaxed);
                later.push(w);
                continue;
            }
            (SmallOutcome::Refused(e), _) => {
                Fetched::Failed(RemoteError { code: e.code, message: format!("source {source}: {}", e.message) })
            }
            (SmallOutcome::TooLarge { .. } | SmallOutcome::Sent(_), _) => Fetched::PerFile,
        };
        let _ = w.reply.send(answer);
    }
    let end = tokio::time::timeout(no_progress, conn.recv::<DataReply>()).await.map_err(|_| stalled())?;
    match end.map_err(broken)? {
        DataReply::FetchSmallEnd => Ok(()),
        other => Err(protocol(format!("expected the end of the batch, got {other:?}"))),
    }
}
