//! Pool-to-pool transfers. The target pulls:
//!
//! ```text
//! target                                   source
//!   Fetch { transfer, pnfsid, force }  ->
//!                                      <-  FetchReady { transfer, attributes } | Error
//!   (create the entry in FROM_POOL, making room)
//!   FetchStart { transfer, offset }    ->  (or FetchAbort)
//!                                      <-  data frames from `offset` ...
//!                                      <-  FetchEnd { transfer }
//!   (check size and checksum, group commit, then acknowledge)
//! ```
//!
//! Connections to a source are kept and reused across transfers (one handshake, not one per
//! file). A connection that breaks mid-stream is replaced and the transfer resumes at the
//! offset already written. A transfer that receives nothing for `no_progress` fails; a
//! cancel (`pp remove`, shutdown) ends it at once and removes its partial data. The target
//! bounds its concurrent transfers (`pp set max active`; the rest queue), the source its
//! concurrent outgoing streams (`pp set max outgoing`).
//!
//! Every transfer first asks for its replica within a small-file batch (`FetchSmall`, see
//! `small.rs`, served here by [`serve_fetch_small`]); only a replica larger than one
//! chunk, or a source that does not know batches, takes the exchange above.

pub mod error;
pub mod gate;
pub mod small;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tidepool_migration::rate::RateLimit;
use tidepool_p2p::auth::Service;
use tidepool_p2p::conn::Connection;
use tidepool_p2p::frame::{Frame, FrameReader, FrameWriter, MAX_DATA_CHUNK, WireError, decode};
use tidepool_p2p::message::{DataReply, DataRequest, MAX_SMALL_ITEMS, SmallFetch, SmallOutcome};
use tidepool_p2p::model::{FileAttributes, ReplicaState};
use tidepool_p2p::peer::{DialError, Dialer};
use tidepool_p2p::{ErrorCode, PnfsId, PoolName, RemoteError, TransferId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::io::blocking;
use crate::pool::{Activity, Pool, now_ms};
use crate::repository::{Incoming, Replica};
pub use error::{Breach, TransferError};
use gate::Gate;
use small::{Fetched, SmallFetches};

/// Tunables of pool-to-pool transfers.
#[derive(Clone, Debug)]
pub struct TransferSettings {
    /// Concurrent incoming transfers; the rest queue.
    pub max_active: usize,
    /// Concurrent outgoing streams when this pool is the source.
    pub max_outgoing: usize,
    /// A transfer that receives nothing for this long fails.
    pub no_progress: Duration,
}

impl Default for TransferSettings {
    fn default() -> Self {
        TransferSettings { max_active: 8, max_outgoing: 16, no_progress: Duration::from_secs(120) }
    }
}

/// Finds the rate limit of the migration job that copies each file, if one does.
pub type RateLimits = Box<dyn Fn(&[&PnfsId]) -> Vec<Option<Arc<RateLimit>>> + Send + Sync>;

/// How often a running transfer reports its rate; below [`SLOW_RATE`] the report is a
/// warning-level "slow transfer" line.
const RATE_REPORT: Duration = Duration::from_secs(10);
const SLOW_RATE: f64 = 1024.0 * 1024.0;
/// A source closes a pool-to-pool connection that sends nothing for this long.
pub const PEER_IDLE: Duration = Duration::from_secs(120);
/// How many times a broken connection is replaced within one transfer.
pub(crate) const RESUMES: u32 = 3;
/// How many finished transfers `pp ls -l` remembers.
const RECENT: usize = 50;
/// Received replicas that may wait for their commit at once (see [`Transfers::committing`]).
const COMMIT_BACKLOG: usize = 256;

/// A small replica received whole, to be created, written and committed in one go.
struct Received {
    attrs: FileAttributes,
    bytes: Bytes,
}

/// What a target asks for: the migration module's [`Pull`](tidepool_migration::env::Pull) (`pp get file` asks the same).
pub use tidepool_migration::env::Pull as PullRequest;

/// One transfer as `pp ls` shows it.
#[derive(Debug)]
pub struct TransferEntry {
    pub id: TransferId,
    pub pnfsid: PnfsId,
    pub source: PoolName,
    pub created: Instant,
    pub started: OnceLock<Instant>,
    pub size: AtomicU64,
    pub done: AtomicU64,
    pub cancel: CancellationToken,
}

/// A finished transfer, for `pp ls -l`.
#[derive(Clone, Debug)]
pub struct Finished {
    pub id: TransferId,
    pub pnfsid: PnfsId,
    pub source: PoolName,
    pub bytes: u64,
    pub seconds: f64,
    /// How it failed, as `pp ls -l` shows it (code and message).
    pub error: Option<RemoteError>,
}

/// Running totals of pool-to-pool transfers since start, both sides (the metrics page).
#[derive(Debug, Default)]
pub struct TransferStats {
    /// Bytes received by incoming transfers that ended, whatever their outcome.
    pub in_bytes: AtomicU64,
    /// Incoming transfers that ended with their replica committed.
    pub in_done: AtomicU64,
    /// Incoming transfers that failed, by error code.
    pub in_failed: Mutex<BTreeMap<u32, u64>>,
    /// Bytes of replica data sent to other pools.
    pub out_bytes: AtomicU64,
    /// Replicas sent whole to other pools.
    pub out_done: AtomicU64,
    /// Outgoing transfers refused or failed with an error sent to the target, by error code.
    pub out_failed: Mutex<BTreeMap<u32, u64>>,
}

impl TransferStats {
    fn count(map: &Mutex<BTreeMap<u32, u64>>, e: &TransferError) {
        *map.lock().entry(RemoteError::from(e).code).or_default() += 1;
    }
}

/// The target side: transfers under way and queued, and connections to sources.
pub struct Transfers {
    next: AtomicU64,
    entries: Mutex<BTreeMap<TransferId, Arc<TransferEntry>>>,
    recent: Mutex<VecDeque<Finished>>,
    /// Incoming transfers (`pp set max active`).
    pub incoming: Gate,
    /// Received replicas waiting for their commit. A transfer leaves `incoming` once its data
    /// is here, so the next one starts while the commit waits for its batch's sync (commits
    /// then share bigger batches); this bounds how many wait (small replicas wait in memory).
    pub committing: Gate,
    /// Outgoing streams (`pp set max outgoing`).
    pub outgoing: Gate,
    no_progress: Duration,
    /// The pool these are the transfers of.
    pub pool: Arc<Pool>,
    /// Connections to sources: made, checked and kept for reuse.
    dialer: Dialer,
    /// The rate limit of the migration job that copies each file, if one does (set when the
    /// module starts, `Node::start_migration`).
    rate_limits: OnceLock<RateLimits>,
    #[cfg(test)]
    pub faults: Faults,
    /// Transfers waiting for a small-file batch, per source.
    pub(crate) small: SmallFetches,
    /// Cancelled at shutdown: ends the small-file batches under way.
    pub(crate) closing: CancellationToken,
    /// Totals since start, both sides.
    pub stats: TransferStats,
}

impl std::fmt::Debug for Transfers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfers").field("incoming", &self.incoming).field("outgoing", &self.outgoing).finish()
    }
}

impl Transfers {
    /// The transfers of `pool`, which fetches from sources under its own name and credentials.
    pub fn new(pool: Arc<Pool>, settings: &TransferSettings) -> Transfers {
        let dialer = Dialer::new(pool.name.as_str(), pool.credentials.clone(), Service::Data);
        Transfers {
            pool,
            rate_limits: OnceLock::new(),
            #[cfg(test)]
            faults: Faults::default(),
            next: AtomicU64::new(1),
            entries: Mutex::new(BTreeMap::new()),
            recent: Mutex::new(VecDeque::new()),
            incoming: Gate::new(settings.max_active),
            committing: Gate::new(COMMIT_BACKLOG),
            outgoing: Gate::new(settings.max_outgoing),
            no_progress: settings.no_progress,
            dialer,
            small: SmallFetches::default(),
            stats: TransferStats::default(),
            closing: CancellationToken::new(),
        }
    }

    /// Where the rate limits of the files' migration jobs come from (once).
    pub fn set_rate_limits(&self, limits: RateLimits) {
        let _ = self.rate_limits.set(limits);
    }

    /// The rate limit of the job that copies each of `ids`, if one does.
    fn rate_limits_of(&self, ids: &[&PnfsId]) -> Vec<Option<Arc<RateLimit>>> {
        match self.rate_limits.get() {
            Some(limits) => limits(ids),
            None => vec![None; ids.len()],
        }
    }

    pub fn no_progress(&self) -> Duration {
        self.no_progress
    }

    /// Registers a transfer (queued until `pull` admits it).
    pub fn register(&self, pnfsid: PnfsId, source: PoolName) -> Arc<TransferEntry> {
        self.register_under(pnfsid, source, CancellationToken::new())
    }

    /// Registers a transfer that `cancel` also cancels (`pp remove` cancels only it).
    pub fn register_under(&self, pnfsid: PnfsId, source: PoolName, cancel: CancellationToken) -> Arc<TransferEntry> {
        let id = TransferId(self.next.fetch_add(1, Ordering::Relaxed));
        let entry = Arc::new(TransferEntry {
            id,
            pnfsid,
            source,
            created: Instant::now(),
            started: OnceLock::new(),
            size: AtomicU64::new(0),
            done: AtomicU64::new(0),
            cancel,
        });
        self.entries.lock().insert(id, entry.clone());
        entry
    }

    /// Transfers under way and queued, by id.
    pub fn list(&self) -> Vec<Arc<TransferEntry>> {
        self.entries.lock().values().cloned().collect()
    }

    /// The most recent finished transfers, oldest first.
    pub fn recent(&self) -> Vec<Finished> {
        self.recent.lock().iter().cloned().collect()
    }

    /// Cancels a transfer; false if there is none with that id.
    pub fn cancel(&self, id: TransferId) -> bool {
        match self.entries.lock().get(&id) {
            Some(e) => {
                e.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Cancels every transfer (shutdown).
    pub fn cancel_all(&self) {
        self.closing.cancel();
        for e in self.entries.lock().values() {
            e.cancel.cancel();
        }
    }

    fn finish(&self, entry: &TransferEntry, error: Option<&TransferError>) {
        self.entries.lock().remove(&entry.id);
        let seconds = entry.started.get().map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
        self.stats.in_bytes.fetch_add(entry.done.load(Ordering::Relaxed), Ordering::Relaxed);
        match error {
            None => drop(self.stats.in_done.fetch_add(1, Ordering::Relaxed)),
            Some(e) => TransferStats::count(&self.stats.in_failed, e),
        }
        // Kept as `pp ls -l` shows it.
        let error = error.map(RemoteError::from);
        let mut recent = self.recent.lock();
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(Finished {
            id: entry.id,
            pnfsid: entry.pnfsid,
            source: entry.source.clone(),
            bytes: entry.done.load(Ordering::Relaxed),
            seconds,
            error,
        });
    }

    /// A connection to `source` for a fetch: a kept one that is still open, else a new one.
    pub(crate) async fn connection(&self, pool: &Pool, source: &PoolName) -> Result<Connection, TransferError> {
        let entry = pool.cluster.pool(source).ok_or_else(|| TransferError::UnknownPool(source.clone()))?;
        match self.dialer.checkout(source, entry.p2p).await {
            Ok((conn, _)) => Ok(conn),
            Err(DialError::Refused { error, .. }) => Err(TransferError::Refused(error)),
            Err(DialError::Unreachable { addr, source: e, .. }) => {
                Err(TransferError::Offline { from: source.clone(), addr: addr.to_string(), reason: Arc::new(e) })
            }
            Err(DialError::WrongPool { addr, actual, .. }) => {
                Err(TransferError::WrongPool { from: source.clone(), addr: addr.to_string(), actual })
            }
        }
    }

    /// Drops the kept connections to `source`: one of them broke, so the source has probably
    /// restarted and the others are dead too.
    pub(crate) fn forget_idle(&self, source: &PoolName) {
        self.dialer.forget(source);
    }

    /// Keeps a connection whose exchange ended cleanly, for the next fetch from `source`.
    pub(crate) fn give_back(&self, source: &PoolName, conn: Connection) {
        self.dialer.give_back(source, conn);
    }

    /// Connections opened to sources so far (each one handshake).
    pub fn connections_opened(&self) -> u64 {
        self.dialer.connections_opened()
    }
}

pub(crate) fn cancelled(id: PnfsId) -> TransferError {
    TransferError::Cancelled(id)
}

/// Why one attempt over one connection ended without the whole file.
enum Stop {
    /// Give up: the error is final.
    Fatal(TransferError),
    /// The connection broke; a new one may resume at the written offset.
    Broken(TransferError),
}

/// Runs a registered transfer to the end: the new replica, committed and durable, or an error
/// with nothing left behind.
pub async fn run(
    transfers: &Arc<Transfers>,
    entry: Arc<TransferEntry>,
    req: PullRequest,
) -> Result<Replica, TransferError> {
    let span = transfer_span(&entry, &req);
    let result = tracing::Instrument::instrument(pull_inner(transfers, &entry, &req), span.clone()).await;
    span.in_scope(|| match &result {
        Ok(r) => tracing::info!(size = r.attrs.size, state = %r.state, "replica received"),
        Err(e) => tracing::warn!("transfer failed: {e}"),
    });
    transfers.finish(&entry, result.as_ref().err());
    result
}

/// [`run`] for `pp get file`, whose result goes to the operator: the error as the shell shows
/// it (code and message).
pub async fn pull(
    transfers: &Arc<Transfers>,
    entry: Arc<TransferEntry>,
    req: PullRequest,
) -> Result<Replica, RemoteError> {
    run(transfers, entry, req).await.map_err(RemoteError::from)
}

/// Pulls several small replicas from one source under one transfer place (a migration job's
/// batch): one `FetchSmall` exchange asks for all of them, each is committed on its own (one
/// group commit usually takes them all), and each has its own result, in the order given.
/// A replica the exchange cannot carry (it grew past one chunk, or the source does not know
/// batches) is pulled on its own, as [`pull`] does.
pub async fn pull_batch(
    transfers: &Arc<Transfers>,
    batch: Vec<(Arc<TransferEntry>, PullRequest)>,
) -> Vec<Result<Replica, TransferError>> {
    let results = pull_batch_inner(transfers, &batch).await;
    let (mut received, mut bytes) = (0usize, 0u64);
    for ((entry, req), result) in batch.iter().zip(&results) {
        // Each replica's own line at debug (its failure as a warning), in its transfer's span;
        // the batch's at info: a drain of a million files does not flood the log.
        // The span only where a line is written (a failure, or debug on): a batch of small
        // files is otherwise one line, and a span per replica cost as much CPU as the copy.
        let span = if result.is_err() || tracing::enabled!(tracing::Level::DEBUG) {
            transfer_span(entry, req)
        } else {
            tracing::Span::none()
        };
        span.in_scope(|| match result {
            Ok(r) => {
                received += 1;
                bytes += r.attrs.size;
                tracing::debug!(size = r.attrs.size, state = %r.state, "replica received")
            }
            Err(e) => tracing::warn!("transfer failed: {e}"),
        });
        transfers.finish(entry, result.as_ref().err());
    }
    if let Some((_, first)) = batch.first() {
        let failed = batch.len() - received;
        tracing::info!(source = %first.source, files = batch.len(), received, failed, bytes, "batch of replicas received");
    }
    results
}

/// The span of one transfer on its target: `p2p{transfer pnfsid source}`, with the job, task
/// and attempt of the migration copy it carries out, if any. It opens inside the caller's span
/// (the pool's), so its lines name the pool.
fn transfer_span(entry: &TransferEntry, req: &PullRequest) -> tracing::Span {
    let copy = req.copy_of.as_ref();
    tracing::info_span!(
        "p2p",
        transfer = %entry.id,
        pnfsid = %req.pnfsid,
        source = %req.source,
        job = copy.map(|c| tracing::field::display(&c.job)),
        task = copy.map(|c| tracing::field::display(c.task)),
        attempt = copy.map(|c| tracing::field::display(c.attempt)),
    )
}

async fn pull_batch_inner(
    transfers: &Arc<Transfers>,
    batch: &[(Arc<TransferEntry>, PullRequest)],
) -> Vec<Result<Replica, TransferError>> {
    let pool = &transfers.pool;
    let mut results: Vec<Option<Result<Replica, TransferError>>> = batch.iter().map(|_| None).collect();
    if let Err(e) = pool.check_mode(Activity::P2pClient, false) {
        return batch.iter().map(|_| Err(e.clone().into())).collect();
    }
    let mut asked: Vec<usize> = Vec::with_capacity(batch.len());
    for (i, (_, req)) in batch.iter().enumerate() {
        assert!(req.state.is_committed());
        if pool.repo.contains(&req.pnfsid) {
            results[i] = Some(Err(TransferError::Exists { pnfsid: req.pnfsid, pool: pool.name.clone() }));
        } else {
            asked.push(i);
        }
    }
    let all_cancelled = async {
        for i in &asked {
            batch[*i].0.cancel.cancelled().await;
        }
    };
    let pass = tokio::select! {
        pass = transfers.incoming.enter() => Some(pass),
        _ = all_cancelled => None,
    };
    let fetched = match pass {
        Some(_) => {
            let now = Instant::now();
            for i in &asked {
                let _ = batch[*i].0.started.set(now);
            }
            small::fetch_many(transfers, asked.iter().map(|i| (&*batch[*i].0, &batch[*i].1)).collect()).await
        }
        None => asked.iter().map(|i| Fetched::Failed(cancelled(batch[*i].1.pnfsid))).collect(),
    };
    // The place is given back once the data are here: the commits wait without it.
    drop(pass);
    let mut commits = Vec::new();
    let mut alone = Vec::new();
    for (i, got) in asked.into_iter().zip(fetched) {
        let (entry, _) = &batch[i];
        match got {
            Fetched::Data { attrs, bytes } => {
                entry.size.store(attrs.size, Ordering::Relaxed);
                entry.done.store(bytes.len() as u64, Ordering::Relaxed);
                commits.push((i, Received { attrs, bytes }));
            }
            Fetched::Failed(e) => results[i] = Some(Err(e)),
            Fetched::PerFile => alone.push(i),
        }
    }
    let committed = commit_all(transfers, batch, commits).await;
    for (i, result) in committed {
        results[i] = Some(result);
    }
    for i in alone {
        let (entry, req) = &batch[i];
        results[i] = Some(pull_inner(transfers, entry, req).await);
    }
    results.into_iter().map(|r| r.expect("every replica of the batch has its result")).collect()
}

/// Commits the replicas of a batch received whole, side by side (they join one group commit).
async fn commit_all(
    transfers: &Arc<Transfers>,
    batch: &[(Arc<TransferEntry>, PullRequest)],
    commits: Vec<(usize, Received)>,
) -> Vec<(usize, Result<Replica, TransferError>)> {
    // Each commit waits in its own task so that all of them are queued at once; each task is
    // awaited here, so none outlives the batch.
    let handles: Vec<(usize, tokio::task::JoinHandle<Result<Replica, TransferError>>)> = commits
        .into_iter()
        .map(|(i, received)| {
            let (transfers, entry, req) = (transfers.clone(), batch[i].0.clone(), batch[i].1.clone());
            let handle = tokio::spawn(async move {
                let _committing = tokio::select! {
                    c = transfers.committing.enter() => c,
                    _ = entry.cancel.cancelled() => return Err(cancelled(req.pnfsid)),
                };
                commit_small(&transfers, &req, received).await
            });
            (i, handle)
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for (i, handle) in handles {
        let result =
            handle.await.unwrap_or_else(|e| Err(TransferError::Internal(format!("the commit ended abnormally: {e}"))));
        out.push((i, result));
    }
    out
}

async fn pull_inner(
    transfers: &Arc<Transfers>,
    entry: &TransferEntry,
    req: &PullRequest,
) -> Result<Replica, TransferError> {
    let pool = &transfers.pool;
    assert!(req.state.is_committed());
    pool.check_mode(Activity::P2pClient, false)?;
    if pool.repo.contains(&req.pnfsid) {
        return Err(TransferError::Exists { pnfsid: req.pnfsid, pool: pool.name.clone() });
    }
    let pass = tokio::select! {
        pass = transfers.incoming.enter() => pass,
        _ = entry.cancel.cancelled() => return Err(cancelled(req.pnfsid)),
    };
    let _ = entry.started.set(Instant::now());
    match small::fetch(transfers, entry, req).await {
        Fetched::Data { attrs, bytes } => {
            entry.size.store(attrs.size, Ordering::Relaxed);
            entry.done.store(bytes.len() as u64, Ordering::Relaxed);
            // Received whole: its commit waits without a transfer place.
            let _committing = tokio::select! {
                c = transfers.committing.enter() => c,
                _ = entry.cancel.cancelled() => return Err(cancelled(req.pnfsid)),
            };
            drop(pass);
            return commit_small(transfers, req, Received { attrs, bytes }).await;
        }
        Fetched::Failed(e) => return Err(e),
        Fetched::PerFile => {}
    }
    let mut incoming: Option<Incoming> = None;
    let mut source_attrs: Option<FileAttributes> = None;
    let mut breaks = 0;
    let outcome = loop {
        let connected = tokio::select! {
            c = transfers.connection(pool, &req.source) => c,
            _ = entry.cancel.cancelled() => break Err(cancelled(req.pnfsid)),
        };
        let mut conn = match connected {
            Ok(c) => c,
            Err(e) => break Err(e),
        };
        match attempt(transfers, entry, req, &mut conn, &mut incoming, &mut source_attrs).await {
            Ok(Some(received)) => {
                // A small replica, received whole: its commit waits without a transfer place.
                transfers.give_back(&req.source, conn);
                let _committing = tokio::select! {
                    c = transfers.committing.enter() => c,
                    _ = entry.cancel.cancelled() => return Err(cancelled(req.pnfsid)),
                };
                drop(pass);
                return commit_small(transfers, req, received).await;
            }
            Ok(None) => {
                transfers.give_back(&req.source, conn);
                break Ok(());
            }
            // A reused connection the source has since closed breaks before any data: a fresh
            // one is tried too.
            Err(Stop::Broken(e)) if breaks < RESUMES => {
                breaks += 1;
                transfers.forget_idle(&req.source);
                let at = incoming.as_ref().map(|i| i.written()).unwrap_or(0);
                tracing::warn!(offset = at, "connection to the source broke ({e}); trying a new one");
            }
            Err(Stop::Broken(e) | Stop::Fatal(e)) => break Err(e),
        }
    };
    if let Err(e) = outcome {
        if let Some(i) = incoming.take() {
            blocking(move || drop(i)).await;
        }
        return Err(e);
    }
    let (Some(incoming), Some(attrs)) = (incoming, source_attrs) else {
        return Err(TransferError::Internal("transfer ended without data".into()));
    };
    let (state, sticky) = (req.state, req.sticky.clone());
    // The data is all here: the next transfer may start while this one waits for its commit.
    let _committing = tokio::select! {
        c = transfers.committing.enter() => c,
        _ = entry.cancel.cancelled() => {
            blocking(move || drop(incoming)).await;
            return Err(cancelled(req.pnfsid));
        }
    };
    drop(pass);
    // Size and the source's checksum are checked here; on a mismatch nothing is committed.
    let replica = blocking(move || incoming.commit(state, sticky, attrs.checksum, now_ms())).await?;
    Ok(replica)
}

/// One exchange over one connection: from `Fetch` to `FetchEnd`. A replica of at most one
/// chunk comes back committed (`Some`); a larger one is left written in `incoming`.
async fn attempt(
    transfers: &Arc<Transfers>,
    entry: &TransferEntry,
    req: &PullRequest,
    conn: &mut Connection,
    incoming: &mut Option<Incoming>,
    source_attrs: &mut Option<FileAttributes>,
) -> Result<Option<Received>, Stop> {
    let pool = &transfers.pool;
    let no_progress = transfers.no_progress();
    let fetch = DataRequest::Fetch { transfer: entry.id, pnfsid: req.pnfsid, force_source_mode: req.force_source_mode };
    conn.send(&fetch).await.map_err(|e| broken(req, e))?;
    let ready = tokio::select! {
        _ = entry.cancel.cancelled() => return Err(Stop::Fatal(cancelled(req.pnfsid))),
        r = tokio::time::timeout(no_progress, conn.recv::<DataReply>()) => r,
    };
    let attrs = match ready {
        Err(_) => return Err(Stop::Fatal(stalled(no_progress, &req.source))),
        Ok(Err(e)) => return Err(broken(req, e)),
        Ok(Ok(DataReply::FetchReady { transfer, attributes })) if transfer == entry.id => {
            if attributes.pnfsid != req.pnfsid {
                let breach = Breach::WrongReplica { asked: req.pnfsid, answered: attributes.pnfsid };
                return Err(Stop::Fatal(protocol(&req.source, breach)));
            }
            attributes
        }
        Ok(Ok(DataReply::Error(e))) => {
            return Err(Stop::Fatal(TransferError::Source { from: req.source.clone(), error: e }));
        }
        Ok(Ok(other)) => return Err(Stop::Fatal(protocol(&req.source, unexpected("FetchReady", &other)))),
    };
    match source_attrs {
        Some(before) if before.size != attrs.size || before.checksum != attrs.checksum => {
            return Err(Stop::Fatal(TransferError::Changed { pnfsid: req.pnfsid, from: req.source.clone() }));
        }
        Some(_) => {}
        None if attrs.size <= MAX_DATA_CHUNK as u64 => {
            entry.size.store(attrs.size, Ordering::Relaxed);
            return receive_small(no_progress, entry, req, conn, attrs).await.map(Some);
        }
        None => {
            let now = now_ms();
            let mine = FileAttributes {
                checksum: None,
                creation_time: now,
                access_time: req.atime.unwrap_or(now),
                ..attrs.clone()
            };
            let repo = pool.repo.clone();
            match blocking(move || repo.create(mine, ReplicaState::FromPool, now)).await {
                Ok(i) => *incoming = Some(i),
                Err(e) => {
                    // Tell the source we will not read; the connection stays usable.
                    let _ = conn.send(&DataRequest::FetchAbort { transfer: entry.id }).await;
                    return Err(Stop::Fatal(e.into()));
                }
            }
            entry.size.store(attrs.size, Ordering::Relaxed);
            *source_attrs = Some(attrs.clone());
        }
    }
    receive(transfers, entry, req, conn, incoming, attrs.size).await.map(|()| None)
}

/// A replica of at most one chunk: its bytes are received into memory first, then handed to
/// the group committer whole (see [`commit_small`]); a full pool costs only the read of a
/// small file.
async fn receive_small(
    no_progress: Duration,
    entry: &TransferEntry,
    req: &PullRequest,
    conn: &mut Connection,
    attrs: FileAttributes,
) -> Result<Received, Stop> {
    conn.send(&DataRequest::FetchStart { transfer: entry.id, offset: 0 }).await.map_err(|e| broken(req, e))?;
    let mut bytes = BytesMut::with_capacity(attrs.size as usize);
    loop {
        match next_frame(conn, entry, req, no_progress).await? {
            Frame::Data(chunk) => {
                if bytes.len() + chunk.len() > attrs.size as usize {
                    return Err(Stop::Fatal(protocol(&req.source, Breach::TooMuchData { size: attrs.size })));
                }
                bytes.extend_from_slice(&chunk);
                entry.done.store(bytes.len() as u64, Ordering::Relaxed);
            }
            Frame::Message(body) => {
                end_of_data(entry, req, &body)?;
                break;
            }
        }
    }
    Ok(Received { attrs, bytes: bytes.freeze() })
}

/// Stores a small replica received whole. The group committer writes and commits it, so no
/// thread waits here for the batch's sync.
async fn commit_small(
    transfers: &Arc<Transfers>,
    req: &PullRequest,
    received: Received,
) -> Result<Replica, TransferError> {
    let pool = &transfers.pool;
    let Received { attrs, bytes } = received;
    let now = now_ms();
    let expected = attrs.checksum;
    let mine = FileAttributes { checksum: None, creation_time: now, access_time: req.atime.unwrap_or(now), ..attrs };
    // Size and the source's checksum are checked first; on a mismatch nothing is kept.
    pool.repo
        .store_whole(mine, ReplicaState::FromPool, bytes, req.state, req.sticky.clone(), expected, now)
        .await
        .map_err(TransferError::from)
}

async fn receive(
    transfers: &Arc<Transfers>,
    entry: &TransferEntry,
    req: &PullRequest,
    conn: &mut Connection,
    slot: &mut Option<Incoming>,
    size: u64,
) -> Result<(), Stop> {
    let pool = &transfers.pool;
    let written = |slot: &Option<Incoming>| slot.as_ref().map(|i| i.written()).unwrap_or(0);
    let offset = written(slot);
    let no_progress = transfers.no_progress();
    conn.send(&DataRequest::FetchStart { transfer: entry.id, offset }).await.map_err(|e| broken(req, e))?;
    let mut report = Instant::now();
    let mut reported_bytes = offset;
    loop {
        match next_frame(conn, entry, req, no_progress).await? {
            Frame::Data(chunk) => {
                // Move the entry to a blocking thread for the write, and back.
                let Some(mut inc) = slot.take() else {
                    return Err(Stop::Fatal(TransferError::Internal("no entry to write into".into())));
                };
                let (back, result) = blocking(move || {
                    let r = inc.write(&chunk);
                    (inc, r)
                })
                .await;
                *slot = Some(back);
                result.map_err(|e| Stop::Fatal(e.into()))?;
                let done = written(slot);
                entry.done.store(done, Ordering::Relaxed);
                if report.elapsed() >= RATE_REPORT {
                    let rate = (done - reported_bytes) as f64 / report.elapsed().as_secs_f64();
                    let mib_s = rate / 1048576.0;
                    if rate < SLOW_RATE {
                        tracing::warn!(target_pool = %pool.name, done, size, mib_s, "slow transfer");
                    } else {
                        tracing::info!(target_pool = %pool.name, done, size, mib_s, "transfer progress");
                    }
                    report = Instant::now();
                    reported_bytes = done;
                }
            }
            Frame::Message(body) => return end_of_data(entry, req, &body),
        }
    }
}

/// The connection to the source broke: a new one may be tried.
fn broken(req: &PullRequest, e: WireError) -> Stop {
    Stop::Broken(connection_broke(&req.source, e))
}

pub(crate) fn connection_broke(source: &PoolName, e: WireError) -> TransferError {
    TransferError::ConnectionBroke { from: source.clone(), error: Arc::new(e) }
}

/// The next frame of a transfer's data, or why there is none: a cancel, a stall or a break.
async fn next_frame(
    conn: &mut Connection,
    entry: &TransferEntry,
    req: &PullRequest,
    no_progress: Duration,
) -> Result<Frame, Stop> {
    tokio::select! {
        _ = entry.cancel.cancelled() => Err(Stop::Fatal(cancelled(req.pnfsid))),
        f = tokio::time::timeout(no_progress, conn.next_frame()) => match f {
            Err(_) => Err(Stop::Fatal(stalled(no_progress, &req.source))),
            Ok(Err(e)) => Err(broken(req, e)),
            Ok(Ok(frame)) => Ok(frame),
        },
    }
}

/// A message among a transfer's data frames: its `FetchEnd`, or why not.
fn end_of_data(entry: &TransferEntry, req: &PullRequest, body: &[u8]) -> Result<(), Stop> {
    match decode::<DataReply>(body) {
        Ok(DataReply::FetchEnd { transfer }) if transfer == entry.id => Ok(()),
        Ok(DataReply::Error(e)) => Err(Stop::Fatal(TransferError::Source { from: req.source.clone(), error: e })),
        Ok(other) => Err(Stop::Fatal(protocol(&req.source, unexpected("data or FetchEnd", &other)))),
        Err(e) => Err(broken(req, e)),
    }
}

pub(crate) fn stalled(no_progress: Duration, source: &PoolName) -> TransferError {
    TransferError::Stalled { from: source.clone(), after: no_progress }
}

pub(crate) fn protocol(source: &PoolName, breach: Breach) -> TransferError {
    TransferError::Protocol { from: source.clone(), breach }
}

/// A message from a source where `expected` belongs.
pub(crate) fn unexpected(expected: &str, got: &DataReply) -> Breach {
    Breach::Unexpected { expected: expected.to_string(), got: format!("{got:?}") }
}

/// The source side of one transfer, on a data connection whose request was
/// `Fetch { transfer, pnfsid, force_source_mode }`.
pub async fn serve_fetch<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    transfers: &Arc<Transfers>,
    shutdown: &CancellationToken,
    transfer: TransferId,
    pnfsid: PnfsId,
    force_source_mode: bool,
) -> Result<(), WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let pool = &transfers.pool;
    if let Err(e) = pool.check_mode(Activity::Fetch, force_source_mode) {
        return refuse(transfers, writer, e.into()).await;
    }
    let _pass = tokio::select! {
        pass = transfers.outgoing.enter() => pass,
        _ = shutdown.cancelled() => return Err(WireError::Closed),
        // The target sends nothing while it waits; anything (usually its hanging up) means it
        // gave up, and its place in the queue goes to the next.
        _ = reader.next() => return Err(WireError::Closed),
    };
    let repo = pool.repo.clone();
    let (replica, data) = match blocking(move || repo.open_for_copy(&pnfsid)).await {
        Ok(x) => x,
        Err(e) => return refuse(transfers, writer, e.into()).await,
    };
    let size = replica.attrs.size;
    writer.send(&DataReply::FetchReady { transfer, attributes: replica.attrs }).await?;
    let next = tokio::select! {
        _ = shutdown.cancelled() => return Err(WireError::Closed),
        r = tokio::time::timeout(PEER_IDLE, reader.recv::<DataRequest>()) => r,
    };
    let offset = match next {
        Err(_) => return Err(WireError::Timeout(PEER_IDLE)),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(DataRequest::FetchStart { transfer: t, offset })) if t == transfer => offset,
        Ok(Ok(DataRequest::FetchAbort { transfer: t })) if t == transfer => return Ok(()),
        Ok(Ok(_)) => {
            return Err(WireError::Unexpected { expected: "FetchStart or FetchAbort", got: "another request" });
        }
    };
    if offset > size {
        return refuse(transfers, writer, TransferError::OffsetPastEnd { pnfsid, offset, size }).await;
    }
    // The rate limit of the migration job that copies the file, if one does (one look per
    // file; unlimited costs one atomic load per chunk after that).
    let limit = transfers.rate_limits_of(&[&pnfsid]).pop().flatten();
    // Two buffers: the next chunk is read from disk while the current one is sent.
    let chunk = MAX_DATA_CHUNK.min(size.saturating_sub(offset) as usize).max(1);
    let mut spare = vec![0u8; chunk];
    let mut pending =
        (offset < size).then(|| read_ahead(data, vec![0u8; chunk], chunk.min((size - offset) as usize), Some(offset)));
    let mut pos = offset;
    while let Some(reading) = pending.take() {
        let (data, buf, result) = tokio::select! {
            _ = shutdown.cancelled() => return Err(WireError::Closed),
            r = reading => match r {
                Ok(x) => x,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            },
        };
        let want = chunk.min((size - pos) as usize);
        let n = match result {
            Ok(n) if n == want => n,
            Ok(n) => {
                let e = TransferError::DataShort { pnfsid, missing: size - pos - n as u64 };
                tracing::error!(%pnfsid, "{e}");
                return refuse(transfers, writer, e).await;
            }
            Err(e) => {
                let e = TransferError::ReadFailed { pnfsid, error: Arc::new(e) };
                tracing::error!(%pnfsid, "{e}");
                return refuse(transfers, writer, e).await;
            }
        };
        pos += n as u64;
        if pos < size {
            let next = chunk.min((size - pos) as usize);
            pending = Some(read_ahead(data, std::mem::take(&mut spare), next, None));
        }
        #[cfg(test)]
        let mut buf = buf;
        #[cfg(test)]
        {
            transfers.faults.apply(&pnfsid, &mut buf[..n]);
            if let Some(pause) = transfers.faults.pause() {
                tokio::time::sleep(pause).await;
            }
        }
        match &limit {
            Some(limit) if limit.is_limited() => {
                send_limited(limit, reader, writer, shutdown, transfers.no_progress(), &buf[..n]).await?
            }
            _ => guarded(shutdown, transfers.no_progress(), writer.send_data(&buf[..n])).await?,
        }
        transfers.stats.out_bytes.fetch_add(n as u64, Ordering::Relaxed);
        spare = buf;
    }
    guarded(shutdown, transfers.no_progress(), async {
        writer.flush().await?;
        writer.send(&DataReply::FetchEnd { transfer }).await
    })
    .await?;
    transfers.stats.out_done.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Sends `data` under a migration job's rate limit: in pieces of the limit's grain, each once
/// its bytes were taken from the job's bucket, and flushed, so that the target sees steady
/// progress (docs/admin-commands.md, "migration set rate").
async fn send_limited<R, W>(
    limit: &RateLimit,
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    shutdown: &CancellationToken,
    no_progress: Duration,
    data: &[u8],
) -> Result<(), WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    for piece in data.chunks(limit.grain() as usize) {
        wait_for_rate(limit, reader, shutdown, piece.len() as u64).await?;
        guarded(shutdown, no_progress, async {
            writer.send_data(piece).await?;
            writer.flush().await
        })
        .await?;
    }
    Ok(())
}

/// Waits until a job's rate limit lets `n` bytes go. The wait ends at shutdown, or when the
/// target hangs up or says anything (it sends nothing while it receives): a cancelled copy
/// never waits here for its bytes.
async fn wait_for_rate<R: AsyncRead + Unpin>(
    limit: &RateLimit,
    reader: &mut FrameReader<R>,
    shutdown: &CancellationToken,
    n: u64,
) -> Result<(), WireError> {
    tokio::select! {
        () = limit.acquire(n) => Ok(()),
        _ = shutdown.cancelled() => Err(WireError::Closed),
        _ = reader.next() => Err(WireError::Closed),
    }
}

/// Sends `e` to the target of a transfer this pool serves, and counts it: here the error
/// becomes the wire's.
async fn refuse<W: AsyncWrite + Unpin>(
    transfers: &Transfers,
    writer: &mut FrameWriter<W>,
    e: TransferError,
) -> Result<(), WireError> {
    TransferStats::count(&transfers.stats.out_failed, &e);
    writer.send(&DataReply::Error(e.into())).await
}

/// The most bytes of data a source reads for one `FetchSmall` (whatever the target asks): with
/// `pp set max outgoing 16`, at most 64 MiB are held for batches at once.
const SMALL_BATCH_BYTES_LIMIT: u64 = 4 * 1024 * 1024;

/// The source side of a `FetchSmall`: every item is read in one blocking call, then all the
/// answers and their data go out together. The exchange holds one outgoing place.
#[allow(clippy::too_many_arguments)]
pub async fn serve_fetch_small<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    transfers: &Arc<Transfers>,
    shutdown: &CancellationToken,
    items: Vec<SmallFetch>,
    max_size: u64,
    max_bytes: u64,
) -> Result<(), WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if items.len() > MAX_SMALL_ITEMS {
        let e = RemoteError::new(
            ErrorCode::Protocol,
            format!("a FetchSmall carries at most {MAX_SMALL_ITEMS} items, not {}", items.len()),
        );
        writer.send(&DataReply::Error(e)).await?;
        return Err(WireError::Unexpected { expected: "a FetchSmall within its limits", got: "too many items" });
    }
    let _pass = tokio::select! {
        pass = transfers.outgoing.enter() => pass,
        _ = shutdown.cancelled() => return Err(WireError::Closed),
        _ = reader.next() => return Err(WireError::Closed),
    };
    let max_size = max_size.min(MAX_DATA_CHUNK as u64);
    let budget = max_bytes.min(SMALL_BATCH_BYTES_LIMIT);
    let source = transfers.clone();
    let answers = blocking(move || read_small(&source, items, max_size, budget)).await;
    // Each answer (with its data) gets its own `no_progress` to be taken, as each chunk of a
    // single transfer does.
    let limit = transfers.no_progress();
    // The rate limits of the jobs that copy the files sent, in order (one look at the module's
    // lock table for the batch).
    let sent: Vec<&PnfsId> = answers
        .iter()
        .filter_map(|(_, outcome, _)| match outcome {
            SmallOutcome::Sent(attrs) => Some(&attrs.pnfsid),
            _ => None,
        })
        .collect();
    let mut rates = transfers.rate_limits_of(&sent).into_iter();
    for (transfer, mut outcome, data) in answers {
        let mut sent = match &outcome {
            SmallOutcome::Sent(attrs) => Some(attrs.pnfsid),
            _ => None,
        };
        if let Some(rate) = sent.and_then(|_| rates.next().flatten()).filter(|r| r.is_limited()) {
            if data.len() as u64 > rate.grain() {
                // More than one piece of the job's rate: waiting for all of it here would leave
                // the target without progress for long at a low rate (and every transfer of the
                // job shares the rate). The per-file exchange sends it in pieces instead.
                outcome = SmallOutcome::TooLarge { size: data.len() as u64 };
                sent = None;
            } else {
                // What was queued goes out before the wait.
                guarded(shutdown, limit, writer.flush()).await?;
                wait_for_rate(&rate, reader, shutdown, data.len() as u64).await?;
            }
        }
        guarded(shutdown, limit, async {
            writer.queue(&DataReply::SmallItem { transfer, outcome }).await?;
            if let Some(_pnfsid) = sent {
                #[cfg(test)]
                let data = {
                    let mut data = data;
                    transfers.faults.apply(&_pnfsid, &mut data);
                    if let Some(pause) = transfers.faults.pause() {
                        writer.flush().await?;
                        tokio::time::sleep(pause).await;
                    }
                    data
                };
                writer.send_data(&data).await?;
                let stats = &transfers.stats;
                stats.out_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                stats.out_done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .await?;
    }
    guarded(shutdown, limit, writer.send(&DataReply::FetchSmallEnd)).await
}

/// Reads the items of a `FetchSmall`, in order: each one's answer and, when sent, its bytes.
/// The first replica up to `max_size` is always sent; after it, data stops once `budget`
/// would be passed and the rest are `Later`. Every file is opened (and its read started by the
/// operating system) before any is read, so the disk serves the batch's reads together rather
/// than one after another.
fn read_small(
    transfers: &Transfers,
    items: Vec<SmallFetch>,
    max_size: u64,
    budget: u64,
) -> Vec<(TransferId, SmallOutcome, Vec<u8>)> {
    let pool = &transfers.pool;
    enum Step {
        Answer(SmallOutcome),
        Read(Box<FileAttributes>, crate::repository::DataRead),
    }
    let mut used = 0u64;
    let mut full = false;
    let mut open = |item: &SmallFetch| -> Result<Step, TransferError> {
        if full {
            return Ok(Step::Answer(SmallOutcome::Later));
        }
        pool.check_mode(Activity::Fetch, item.force_source_mode)?;
        let (replica, data) = pool.repo.open_for_copy_ahead(&item.pnfsid, max_size)?;
        let size = replica.attrs.size;
        if size > max_size {
            return Ok(Step::Answer(SmallOutcome::TooLarge { size }));
        }
        if used > 0 && used + size > budget {
            full = true;
            return Ok(Step::Answer(SmallOutcome::Later));
        }
        used += size;
        Ok(Step::Read(Box::new(replica.attrs), data))
    };
    let opened: Vec<Result<Step, TransferError>> = items.iter().map(&mut open).collect();
    let read = |attrs: FileAttributes, mut data: crate::repository::DataRead| {
        let (id, size) = (attrs.pnfsid, attrs.size);
        let mut bytes = vec![0u8; size as usize];
        let n = crate::io::read_full(&mut data, &mut bytes)
            .map_err(|e| TransferError::ReadFailed { pnfsid: id, error: Arc::new(e) })?;
        if n as u64 != size {
            return Err(TransferError::DataShort { pnfsid: id, missing: size - n as u64 });
        }
        Ok((SmallOutcome::Sent(attrs), bytes))
    };
    items
        .iter()
        .zip(opened)
        .map(|(item, step)| {
            let answer = step.and_then(|step| match step {
                Step::Answer(outcome) => Ok((outcome, Vec::new())),
                Step::Read(attrs, data) => read(*attrs, data),
            });
            match answer {
                Ok((outcome, bytes)) => (item.transfer, outcome, bytes),
                Err(e) => {
                    if e.code() == ErrorCode::Io {
                        tracing::error!(pnfsid = %item.pnfsid, "{e}");
                    }
                    TransferStats::count(&transfers.stats.out_failed, &e);
                    (item.transfer, SmallOutcome::Refused(e.into()), Vec::new())
                }
            }
        })
        .collect()
}

type ReadResult = (crate::repository::DataRead, Vec<u8>, std::io::Result<usize>);

/// Reads the next `want` bytes (after seeking to `seek`, if given) on the blocking pool.
fn read_ahead(
    mut data: crate::repository::DataRead,
    mut buf: Vec<u8>,
    want: usize,
    seek: Option<u64>,
) -> tokio::task::JoinHandle<ReadResult> {
    tokio::task::spawn_blocking(move || {
        let result = (|| {
            if let Some(at) = seek {
                std::io::Seek::seek(&mut data, std::io::SeekFrom::Start(at))?;
            }
            crate::io::read_full(&mut data, &mut buf[..want])
        })();
        (data, buf, result)
    })
}

/// Runs a write to a target that may have stopped reading: it gives up at shutdown, or when
/// the target takes nothing for `limit`. Either way the connection is dropped (a write cut
/// short leaves a torn frame), which frees the outgoing place.
async fn guarded(
    shutdown: &CancellationToken,
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), WireError>>,
) -> Result<(), WireError> {
    tokio::select! {
        _ = shutdown.cancelled() => Err(WireError::Closed),
        r = tokio::time::timeout(limit, write) => r.unwrap_or(Err(WireError::Timeout(limit))),
    }
}

/// Test-only fault injection: flips a byte of the next transfer of a chosen replica as the
/// source sends it.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct Faults {
    corrupt: Mutex<Option<PnfsId>>,
    /// A pause after every chunk sent: a slow source.
    pause: Mutex<Option<Duration>>,
    /// Offer no `FETCH_SMALL` in the handshake, as a pool built without it would.
    before_batches: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
impl Faults {
    pub fn corrupt_next(&self, id: PnfsId) {
        *self.corrupt.lock() = Some(id);
    }

    pub fn act_as_before_batches(&self, yes: bool) {
        self.before_batches.store(yes, Ordering::Relaxed);
    }

    pub(crate) fn before_batches(&self) -> bool {
        self.before_batches.load(Ordering::Relaxed)
    }

    pub fn slow_down(&self, pause: Option<Duration>) {
        *self.pause.lock() = pause;
    }

    pub(crate) fn pause(&self) -> Option<Duration> {
        *self.pause.lock()
    }

    pub(crate) fn apply(&self, id: &PnfsId, chunk: &mut [u8]) {
        let mut corrupt = self.corrupt.lock();
        if corrupt.as_ref() == Some(id) && !chunk.is_empty() {
            chunk[chunk.len() / 2] ^= 0x40;
            *corrupt = None;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
