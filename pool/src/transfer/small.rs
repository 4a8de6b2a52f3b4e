//! Small replicas fetched in batches. Transfers from one source that are under way at the same
//! time wait here together, and one exchange (`FetchSmall`) asks for up to
//! [`MAX_SMALL_ITEMS`] of them: one request, one read on the source's blocking pool, one
//! stream of answers. That replaces two round trips and several thread hand-offs per file on
//! each side.
//!
//! Each transfer still commits on its own (the data of a batch is handed to each transfer,
//! which checks size and checksum and joins a group commit), so cancel, `pp ls` and the
//! error of each file stay per transfer. A file the batch cannot carry (larger than one chunk,
//! or from a source that does not know `FetchSmall`) goes through the per-file exchange in
//! `mod.rs`. A connection that breaks is replaced and the unanswered files asked again,
//! as the per-file exchange resumes.
//!
//! At most `RUNNERS` exchanges per source are under way; while they are, new transfers
//! gather, so batches grow with the load (like group commit) and a lone transfer is not
//! delayed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tidepool_p2p::PoolName;
use tidepool_p2p::auth::Features;
use tidepool_p2p::conn::Connection;
use tidepool_p2p::frame::{Frame, MAX_DATA_CHUNK, WireError};
use tidepool_p2p::message::{DataReply, DataRequest, MAX_SMALL_ITEMS, SmallFetch, SmallOutcome};
use tidepool_p2p::model::FileAttributes;
use tokio::sync::oneshot;

use crate::transfer::{
    Breach, PullRequest, RESUMES, TransferEntry, TransferError, Transfers, cancelled, connection_broke, protocol,
    stalled, unexpected,
};

/// Exchanges under way per source at once.
const RUNNERS: usize = 2;
/// The most bytes of data one exchange asks for (a source gives at most 4 MiB anyway).
const BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// How long a source that did not know `FetchSmall` is read one file at a time before it is
/// asked again (it may have been upgraded).
const UNSUPPORTED_FOR: Duration = Duration::from_secs(600);

/// What a transfer gets from the batcher.
pub(crate) enum Fetched {
    /// The whole replica as the source sent it: its size is checked, its checksum not yet.
    Data { attrs: FileAttributes, bytes: Bytes },
    /// Use the per-file exchange: the replica is larger than one chunk, the source does not
    /// know `FetchSmall`, or the pool is shutting down.
    PerFile,
    /// The transfer failed (the source refused this file, a stall, a protocol error).
    Failed(TransferError),
}

struct Waiter {
    item: SmallFetch,
    reply: oneshot::Sender<Fetched>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    runners: usize,
    /// When a connection to the source was made without the `FETCH_SMALL` feature (a pool
    /// built without it, see `docs/protocol.md`): for [`UNSUPPORTED_FOR`] after that,
    /// transfers from it use the per-file exchange.
    unsupported: Option<Instant>,
}

impl Queue {
    fn per_file_only(&self) -> bool {
        self.unsupported.is_some_and(|since| since.elapsed() < UNSUPPORTED_FOR)
    }
}

/// The queues of transfers waiting for a batch, per source.
#[derive(Default)]
pub struct SmallFetches {
    queues: Mutex<HashMap<PoolName, Queue>>,
    /// `FetchSmall` exchanges so far, the replicas they asked for (one put off and asked again
    /// counts twice), the replicas they delivered, and the answers `Later` (asked again in a
    /// later exchange).
    pub exchanges: AtomicU64,
    pub asked: AtomicU64,
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
        self.queues.lock().get(source).is_some_and(Queue::per_file_only)
    }
}

impl std::fmt::Debug for SmallFetches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmallFetches").finish_non_exhaustive()
    }
}

/// Fetches one replica within a batch from its source, or says why not: a batch of one,
/// which waits with the other transfers from the same source.
pub(crate) async fn fetch(transfers: &Arc<Transfers>, entry: &TransferEntry, req: &PullRequest) -> Fetched {
    fetch_many(transfers, vec![(entry, req)]).await.pop().unwrap_or(Fetched::PerFile)
}

/// Fetches the replicas of a batch from their one source: queued together, so that one
/// exchange asks for all of them (up to [`MAX_SMALL_ITEMS`]). The answers are in the order
/// given; each transfer's cancel ends its own wait.
pub(crate) async fn fetch_many(transfers: &Arc<Transfers>, batch: Vec<(&TransferEntry, &PullRequest)>) -> Vec<Fetched> {
    let pool = &transfers.pool;
    let Some(source) = batch.first().map(|(_, req)| req.source.clone()) else { return Vec::new() };
    debug_assert!(batch.iter().all(|(_, req)| req.source == source), "a batch comes from one source");
    let mut answers = Vec::with_capacity(batch.len());
    let start = {
        let mut queues = transfers.small.queues.lock();
        let q = queues.entry(source.clone()).or_default();
        if q.per_file_only() {
            return batch.iter().map(|_| Fetched::PerFile).collect();
        }
        for (entry, req) in &batch {
            let (reply, answer) = oneshot::channel();
            let item = SmallFetch { transfer: entry.id, pnfsid: req.pnfsid, force_source_mode: req.force_source_mode };
            q.waiting.push_back(Waiter { item, reply });
            answers.push(answer);
        }
        let start = q.runners < RUNNERS;
        if start {
            q.runners += 1;
        }
        start
    };
    if start {
        pool.tasks.spawn(run(transfers.clone(), source));
    }
    let mut fetched = Vec::with_capacity(batch.len());
    for ((entry, req), answer) in batch.iter().zip(answers) {
        fetched.push(tokio::select! {
            // A runner that went away without answering (shutdown) leaves the per-file
            // exchange, which sees the cancel.
            r = answer => r.unwrap_or(Fetched::PerFile),
            // The waiter stays queued; the runner skips it, or drops its answer.
            _ = entry.cancel.cancelled() => Fetched::Failed(cancelled(req.pnfsid)),
        });
    }
    fetched
}

/// Runs exchanges with `source` while transfers wait for one.
async fn run(transfers: Arc<Transfers>, source: PoolName) {
    loop {
        let batch: Vec<Waiter> = {
            let mut queues = transfers.small.queues.lock();
            let Some(q) = queues.get_mut(&source) else { return };
            q.waiting.retain(|w| !w.reply.is_closed());
            if q.per_file_only() {
                // Found out meanwhile: the ones still waiting need not ask again.
                answer_all(q.waiting.drain(..), || Fetched::PerFile);
            }
            if q.waiting.is_empty() {
                q.runners -= 1;
                if q.runners == 0 && !q.per_file_only() {
                    queues.remove(&source);
                }
                return;
            }
            let n = q.waiting.len().min(MAX_SMALL_ITEMS);
            q.waiting.drain(..n).collect()
        };
        let later = exchange(&transfers, &source, batch).await;
        if !later.is_empty() {
            let mut queues = transfers.small.queues.lock();
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
    Broken(TransferError),
    /// The rest fail with this error.
    Fatal(TransferError),
    /// The rest use the per-file exchange (the source does not know batches, or shutdown).
    PerFile,
}

/// Asks `source` for every waiter of `batch`. Each is answered, except the ones the source put
/// off for lack of room in the exchange, which are returned to be asked again. A connection
/// that breaks is replaced (at most [`RESUMES`] times) and the unanswered rest asked again.
async fn exchange(transfers: &Arc<Transfers>, source: &PoolName, batch: Vec<Waiter>) -> Vec<Waiter> {
    let pool = &transfers.pool;
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
            _ = transfers.closing.cancelled() => Err(TransferError::ShuttingDown),
        };
        let mut conn = match connected {
            Ok(c) => c,
            Err(e) => {
                answer_all(pending, || Fetched::Failed(e.clone()));
                return later;
            }
        };
        match ask(transfers, source, &mut conn, &mut pending, &mut later).await {
            Ok(()) => {
                transfers.give_back(source, conn);
                return later;
            }
            Err(Stop::Broken(e)) if breaks < RESUMES => {
                breaks += 1;
                transfers.forget_idle(source);
                let pnfsids = pending.iter().map(|w| w.item.pnfsid.to_string()).collect::<Vec<_>>().join(" ");
                tracing::warn!(%source, files = pending.len(), %pnfsids, "connection to the source broke ({e}); trying a new one");
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
    transfers: &Arc<Transfers>,
    source: &PoolName,
    conn: &mut Connection,
    pending: &mut VecDeque<Waiter>,
    later: &mut Vec<Waiter>,
) -> Result<(), Stop> {
    let broken = |e: WireError| Stop::Broken(connection_broke(source, e));
    let no_progress = transfers.no_progress();
    let stalled = || Stop::Fatal(stalled(no_progress, source));
    let protocol = |breach: Breach| Stop::Fatal(protocol(source, breach));
    // The next message or frame from the source, within `no_progress`, or why not.
    macro_rules! next {
        ($what:expr) => {
            tokio::select! {
                r = tokio::time::timeout(no_progress, $what) => r.map_err(|_| stalled())?.map_err(broken)?,
                _ = transfers.closing.cancelled() => return Err(Stop::PerFile),
            }
        };
    }
    // Batches only where the handshake agreed on them.
    if !conn.features.contains(Features::FETCH_SMALL) {
        tracing::info!(%source, "source does not take small-file batches; fetching one file at a time");
        if let Some(q) = transfers.small.queues.lock().get_mut(source) {
            q.unsupported = Some(Instant::now());
        }
        return Err(Stop::PerFile);
    }
    transfers.small.exchanges.fetch_add(1, Ordering::Relaxed);
    transfers.small.asked.fetch_add(pending.len() as u64, Ordering::Relaxed);
    let items = pending.iter().map(|w| w.item.clone()).collect();
    let request = DataRequest::FetchSmall { items, max_size: MAX_DATA_CHUNK as u64, max_bytes: BATCH_BYTES };
    conn.send(&request).await.map_err(broken)?;
    let mut sent_any = false;
    while let Some((transfer, pnfsid)) = pending.front().map(|w| (w.item.transfer, w.item.pnfsid)) {
        let outcome = match next!(conn.recv::<DataReply>()) {
            DataReply::SmallItem { transfer: t, outcome } if t == transfer => outcome,
            other => return Err(protocol(unexpected(&format!("the answer for transfer {transfer}"), &other))),
        };
        let data = match &outcome {
            SmallOutcome::Sent(attrs) if attrs.pnfsid != pnfsid => {
                return Err(protocol(Breach::WrongReplica { asked: pnfsid, answered: attrs.pnfsid }));
            }
            SmallOutcome::Sent(attrs) => match next!(conn.next_frame()) {
                Frame::Data(bytes) if bytes.len() as u64 == attrs.size => Some(bytes),
                _ => return Err(protocol(Breach::NotOneFrame { pnfsid, size: attrs.size })),
            },
            // Only a batch that has sent something may put the rest off; otherwise nothing
            // would ever come.
            SmallOutcome::Later if !sent_any => {
                return Err(protocol(Breach::PutOffFirst { pnfsid }));
            }
            _ => None,
        };
        let Some(w) = pending.pop_front() else { break };
        let answer = match (outcome, data) {
            (SmallOutcome::Sent(attrs), Some(bytes)) => {
                sent_any = true;
                transfers.small.delivered.fetch_add(1, Ordering::Relaxed);
                Fetched::Data { attrs, bytes }
            }
            (SmallOutcome::Later, _) => {
                transfers.small.deferred.fetch_add(1, Ordering::Relaxed);
                later.push(w);
                continue;
            }
            (SmallOutcome::Refused(e), _) => Fetched::Failed(TransferError::Source { from: source.clone(), error: e }),
            (SmallOutcome::TooLarge { .. } | SmallOutcome::Sent(_), _) => Fetched::PerFile,
        };
        let _ = w.reply.send(answer);
    }
    match next!(conn.recv::<DataReply>()) {
        DataReply::FetchSmallEnd => Ok(()),
        other => Err(protocol(unexpected("the end of the batch", &other))),
    }
}
