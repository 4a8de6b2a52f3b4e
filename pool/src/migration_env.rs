//! The migration module's view of this pool: [`PoolEnv`] implements the module's [`Env`] over
//! the pool's repository, mode, cluster file and pool-to-pool transfers, and [`Peers`] carries
//! its requests to other pools.
//!
//! The transport: one request, one reply, on an authenticated data connection to the other
//! pool (`DataRequest::Migration` -> `DataReply::Migration`). Connections are kept per pool
//! and reused; requests to one pool run side by side, each on its own connection. What the
//! module learns of a request that got no reply is deliberately coarse:
//! - [`Unanswered::NotDelivered`]: no connection (unknown pool, refused, handshake failed, or
//!   the request could not be written): the other pool surely did nothing;
//! - [`Unanswered::NoAnswer`]: the request went out but no reply came within
//!   [`REPLY_TIMEOUT`], or the connection broke while waiting: the other pool may be working
//!   on it. That connection is dropped, never reused.
//!
//! A kept connection the other pool has closed in the meantime (it restarted, or dropped an
//! idle connection) is noticed before the request is written and replaced, so a restart of a
//! peer does not turn the next request into a `NoAnswer`.

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::ops::ControlFlow;

use std::sync::{Arc, Weak};
use std::time::Duration;

use tidepool_migration::env::{
    Entry, Env, EnvError, HoldKind, HoldOwner, Pull, Removal, SavedHold, Snapshot, SourceRemoval, Unanswered,
    source_removal,
};
use tidepool_migration::module::{Module, RepoChange};
use tidepool_migration::safety::pin_clearable;
use tidepool_p2p::auth::Service;
use tidepool_p2p::cluster::ClusterFile;
use tidepool_p2p::conn::Connection;
use tidepool_p2p::frame::WireError;
use tidepool_p2p::membership::Membership;
use tidepool_p2p::message::{DataReply, DataRequest, MigrationReply, MigrationRequest, PoolCost};
use tidepool_p2p::model::{Checksum, ChecksumWriter, EpochMillis, ReplicaState, SpaceInfo, StickyMode, StickyRecord};
use tidepool_p2p::peer::{DialError, Dialer, REUSE_IDLE};
use tidepool_p2p::tls::Credentials;
use tidepool_p2p::{ErrorCode, PnfsId, PoolName, RemoteError};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::pool::{Activity, ModeRefused, Pool, now_ms};
use crate::repository::{Change, ChangeKind, Protection, Replica, RepoError, Repository};
use crate::transfer::{self, TransferError, Transfers};

/// How long a request waits for its reply (writing it included) before it counts as
/// [`Unanswered::NoAnswer`].
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Kept connections per pool; more are closed when they come back.
const MAX_IDLE: usize = 8;

/// The pool around the migration module. It holds the pool's transfers (and through them the
/// pool) weakly: the root object (`node.rs`) owns the module, which owns this.
pub struct PoolEnv {
    /// The pool's transfers, which hold the pool (weakly: the root object owns the module,
    /// which owns this).
    transfers: Weak<Transfers>,
    name: PoolName,
    pin_prefix: String,
    cluster: Arc<Membership>,
    peers: Peers,
}

impl std::fmt::Debug for PoolEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolEnv").field("name", &self.name).finish_non_exhaustive()
    }
}

impl PoolEnv {
    pub fn new(transfers: &Arc<Transfers>) -> PoolEnv {
        let pool = &transfers.pool;
        PoolEnv {
            transfers: Arc::downgrade(transfers),
            name: pool.name.clone(),
            pin_prefix: pool.pin_prefix.clone(),
            cluster: pool.cluster.clone(),
            peers: Peers::with_view(pool.name.clone(), pool.credentials.clone(), pool.cluster.clone(), REPLY_TIMEOUT),
        }
    }

    /// The transport to other pools.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    fn transfers(&self) -> Result<Arc<Transfers>, EnvError> {
        self.transfers.upgrade().ok_or_else(|| EnvError::ShuttingDown(self.name.clone()))
    }

    fn pool(&self) -> Result<Arc<Pool>, EnvError> {
        Ok(self.transfers()?.pool.clone())
    }
}

fn entry(r: Replica) -> Entry {
    Entry { attrs: r.attrs, state: r.state, sticky: r.sticky }
}

/// The repository's refusal or failure as the module gets it: its code, and the `RepoError`
/// itself (the module's callers in this pool may downcast it).
fn repo(e: RepoError) -> EnvError {
    EnvError::repository(e.code(), e)
}

/// The pool mode's refusal as the module gets it, kept whole.
impl From<ModeRefused> for EnvError {
    fn from(e: ModeRefused) -> Self {
        EnvError::Mode(Arc::new(e))
    }
}

/// A pull's failure as the module gets it: the transfer's error kept whole, with the code it
/// crosses the wire with (a source's answer keeps the source's code).
impl From<TransferError> for EnvError {
    fn from(e: TransferError) -> Self {
        let code = RemoteError::from(&e).code;
        EnvError::Transfer { code, cause: Arc::new(e) }
    }
}

impl Env for PoolEnv {
    fn name(&self) -> &PoolName {
        &self.name
    }

    fn now(&self) -> EpochMillis {
        now_ms()
    }

    fn pin_prefix(&self) -> &str {
        &self.pin_prefix
    }

    fn scan(&self, visit: &mut dyn FnMut(Entry) -> ControlFlow<()>) -> Result<(), EnvError> {
        let pool = self.pool()?;
        pool.repo.scan(&mut |r| visit(entry(r))).map_err(repo)?;
        Ok(())
    }

    fn entry(&self, id: &PnfsId) -> Result<Option<Entry>, EnvError> {
        Ok(self.pool()?.repo.get(id).map_err(repo)?.map(entry))
    }

    fn set_state(&self, id: &PnfsId, state: ReplicaState) -> Result<(), EnvError> {
        self.pool()?.repo.set_state(id, state, now_ms()).map_err(repo)
    }

    fn set_sticky(&self, id: &PnfsId, record: StickyRecord, mode: StickyMode) -> Result<(), EnvError> {
        self.pool()?.repo.set_sticky(id, record, mode, now_ms()).map_err(repo)?;
        Ok(())
    }

    fn remove(&self, id: &PnfsId) -> Result<(), EnvError> {
        // The migration decides (a moved precious or pinned replica goes once its target is
        // confirmed): no protection applies here.
        fail::fail_point!("source-before-remove");
        self.pool()?.repo.remove(id, true, now_ms()).map_err(repo)?;
        fail::fail_point!("source-after-remove");
        Ok(())
    }

    fn clear_covered_pins(&self, id: &PnfsId, moved: &[StickyRecord]) -> Result<(), EnvError> {
        let pool = self.pool()?;
        let prefix = pool.pin_prefix.clone();
        pool.repo.drop_sticky_if(id, now_ms(), |pin| pin_clearable(pin, &prefix, moved)).map_err(repo)?;
        Ok(())
    }

    fn remove_unless(
        &self,
        id: &PnfsId,
        moved: &[StickyRecord],
        snapshot: &Snapshot,
    ) -> Result<SourceRemoval, EnvError> {
        // One removal is a batch of one: the same check, under the same lock, one flush.
        let item = Removal { id, moved, snapshot };
        let mut verdicts = self.remove_many_unless(std::slice::from_ref(&item));
        verdicts.pop().unwrap_or(Ok(SourceRemoval::Removed))
    }

    fn remove_many_unless(&self, items: &[Removal<'_>]) -> Vec<Result<SourceRemoval, EnvError>> {
        let pool = match self.pool() {
            Ok(pool) => pool,
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        let now = now_ms();
        let prefix = pool.pin_prefix.clone();
        let ids: Vec<PnfsId> = items.iter().map(|r| *r.id).collect();
        let mut kept: Vec<Option<SourceRemoval>> = vec![None; items.len()];
        fail::fail_point!("source-before-remove");
        let results = pool.repo.remove_many_if(&ids, |at, r| {
            let item = &items[at];
            kept[at] = source_removal(r.state, &r.sticky, item.moved, item.snapshot, &prefix, now);
            match kept[at] {
                Some(_) => Err(RepoError::Protected { id: *item.id, why: Protection::Changed }),
                None => Ok(()),
            }
        });
        let verdicts: Vec<Result<SourceRemoval, EnvError>> = results
            .into_iter()
            .zip(kept)
            .map(|(result, kept)| match (result, kept) {
                (Ok(()), _) => Ok(SourceRemoval::Removed),
                (Err(RepoError::Protected { .. }), Some(verdict)) => Ok(verdict),
                (Err(e), _) => Err(repo(e)),
            })
            .collect();
        if verdicts.iter().any(|v| matches!(v, Ok(SourceRemoval::Removed))) {
            fail::fail_point!("source-after-remove");
        }
        verdicts
    }

    fn hold(&self, ids: &[PnfsId], until: EpochMillis, owner: &HoldOwner, kind: HoldKind) -> Result<(), EnvError> {
        let arriving = kind == HoldKind::Delivery;
        self.pool()?.repo.hold(ids, until, &owner.encode(), arriving, now_ms()).map_err(repo)
    }

    fn compute_checksum(&self, id: &PnfsId) -> Result<Checksum, EnvError> {
        // A verification is not a use: the access time stays.
        let (replica, mut data) = self.pool()?.repo.open_for_copy(id).map_err(repo)?;
        let io = |e: std::io::Error| EnvError::ChecksumRead { id: *id, error: Arc::new(e) };
        let mut sum = ChecksumWriter::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            };
            sum.update(&buf[..n]);
            total += n as u64;
        }
        if total != replica.attrs.size {
            return Err(EnvError::DataSize { id: *id, found: total, recorded: replica.attrs.size });
        }
        Ok(sum.finish())
    }

    fn set_checksum(&self, id: &PnfsId, checksum: Checksum) -> Result<(), EnvError> {
        self.pool()?.repo.set_checksum(id, checksum, now_ms()).map_err(repo)
    }

    fn check_p2p_client(&self) -> Result<(), EnvError> {
        Ok(self.pool()?.check_mode(Activity::P2pClient, false)?)
    }

    fn cost(&self) -> PoolCost {
        match self.transfers.upgrade() {
            Some(transfers) => PoolCost {
                space: transfers.pool.repo.space(now_ms()),
                // Transfers receiving data and received ones waiting for their commit.
                load: u32::try_from(transfers.incoming.counts().0 + transfers.committing.counts().0)
                    .unwrap_or(u32::MAX),
                accepts: transfers.pool.check_mode(Activity::P2pClient, false).is_ok(),
                enabled: transfers.pool.mode().mode.is_enabled(),
                // The migration module answers for its run (`Module::serve`).
                run: 0,
            },
            None => PoolCost { space: SpaceInfo::default(), load: 0, accepts: false, enabled: false, run: 0 },
        }
    }

    fn pools(&self) -> Vec<PoolName> {
        self.cluster.get().pools.iter().map(|p| p.name.clone()).collect()
    }

    fn pool_group(&self, group: &str) -> Vec<PoolName> {
        self.cluster
            .get()
            .pools
            .iter()
            .filter(|p| p.groups.iter().any(|g| g == group))
            .map(|p| p.name.clone())
            .collect()
    }

    fn groups_of(&self, pool: &PoolName) -> Vec<String> {
        self.cluster.pool(pool).map(|p| p.groups).unwrap_or_default()
    }

    fn link(&self, name: &str) -> Option<Vec<String>> {
        self.cluster.get().links.iter().find(|l| l.name == name).map(|l| l.groups.clone())
    }

    fn hsm_pools(&self, hsm: &str) -> Vec<PoolName> {
        self.cluster.get().pools.iter().filter(|p| p.hsm.iter().any(|h| h == hsm)).map(|p| p.name.clone()).collect()
    }

    fn costs(&self, pools: &[PoolName]) -> impl Future<Output = Option<Vec<(PoolName, Option<PoolCost>)>>> + Send {
        self.cluster.costs(pools)
    }

    fn request(
        &self,
        to: &PoolName,
        req: MigrationRequest,
    ) -> impl Future<Output = Result<MigrationReply, Unanswered>> + Send {
        self.peers.request(to, req)
    }

    async fn pull(&self, pull: Pull, cancel: CancellationToken) -> Result<(), EnvError> {
        let transfers = self.transfers()?;
        let entry = transfers.register(pull.pnfsid, pull.source.clone());
        let mut transfer = std::pin::pin!(transfer::run(&transfers, entry.clone(), pull));
        let result = tokio::select! {
            r = &mut transfer => r,
            _ = cancel.cancelled() => {
                // The transfer notices its own token at every wait and removes its partial
                // data before it returns: wait for that, so nothing is left behind.
                entry.cancel.cancel();
                transfer.await
            }
        };
        // The transfer's error, kept whole; the module makes the source's `Finished` of it.
        result.map(|_| ()).map_err(EnvError::from)
    }

    async fn pull_batch(&self, pulls: Vec<(Pull, CancellationToken)>) -> Vec<Result<(), EnvError>> {
        let transfers = match self.transfers() {
            Ok(transfers) => transfers,
            Err(e) => return pulls.iter().map(|_| Err(e.clone())).collect(),
        };
        // Each transfer is cancelled with its copy (its token is a child of the copy's), and
        // removes its partial data before `pull_batch` returns.
        let mut by_source: Vec<(PoolName, Vec<usize>)> = Vec::new();
        for (i, (pull, _)) in pulls.iter().enumerate() {
            match by_source.iter_mut().find(|(s, _)| *s == pull.source) {
                Some((_, at)) => at.push(i),
                None => by_source.push((pull.source.clone(), vec![i])),
            }
        }
        let mut results: Vec<Option<Result<(), EnvError>>> = pulls.iter().map(|_| None).collect();
        for (_, at) in by_source {
            let batch: Vec<(Arc<transfer::TransferEntry>, Pull)> = at
                .iter()
                .map(|i| {
                    let (pull, cancel) = &pulls[*i];
                    let entry = transfers.register_under(pull.pnfsid, pull.source.clone(), cancel.child_token());
                    (entry, pull.clone())
                })
                .collect();
            for (i, result) in at.into_iter().zip(transfer::pull_batch(&transfers, batch).await) {
                results[i] = Some(result.map(|_| ()).map_err(EnvError::from));
            }
        }
        results.into_iter().map(|r| r.expect("every pull has its result")).collect()
    }
}

/// Feeds the repository's changes to the module until `stop` (or until the repository is
/// gone).
pub(crate) async fn forward_changes(
    mut changes: broadcast::Receiver<Change>,
    module: Arc<Module<PoolEnv>>,
    stop: CancellationToken,
) {
    loop {
        // `recv` is cancel-safe.
        let change = tokio::select! {
            _ = stop.cancelled() => return,
            c = changes.recv() => c,
        };
        match change {
            Ok(Change { pnfsid, kind }) => {
                let change = match kind {
                    ChangeKind::State { to: ReplicaState::Removed, .. } => RepoChange::Removed,
                    ChangeKind::State { from, .. } => RepoChange::State { from },
                    ChangeKind::Sticky(_) => RepoChange::Sticky,
                    ChangeKind::AccessTime(_) => RepoChange::AccessTime,
                    ChangeKind::Checksum(_) => RepoChange::Other,
                };
                module.repository_changed(pnfsid, change);
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "the migration module fell behind the repository's changes; permanent jobs look again"
                );
                module.changes_missed();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Requests to other pools' migration modules, over kept authenticated data connections.
pub struct Peers {
    me: PoolName,
    /// Where the pools are (the pool's cluster view: SIGHUP may change it).
    cluster: Arc<Membership>,
    reply_timeout: Duration,
    /// Connections to the other pools' data service: made, checked and kept for reuse.
    dialer: Dialer,
}

/// Closes the kept connections to other pools that are past their time, every
/// [`REUSE_IDLE`], until `stop`: a pool whose jobs ask nobody for a while (the costs published in
/// etcd) keeps no descriptor of a connection the other pool has closed.
pub async fn prune_kept_connections(env: Arc<PoolEnv>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REUSE_IDLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => env.peers.dialer.prune_idle(),
        }
    }
}

/// Tells the module of every change of the membership (its jobs look at their targets again)
/// until `stop`.
pub async fn forward_membership(
    mut changes: tokio::sync::watch::Receiver<u64>,
    module: Arc<Module<PoolEnv>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                module.membership_changed();
            }
        }
    }
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").field("me", &self.me).field("reply_timeout", &self.reply_timeout).finish()
    }
}

/// How one exchange on one connection ended without a reply.
enum Failed {
    /// The request was not written whole: the other pool cannot have acted on it.
    NotSent(WireError),
    /// The request went out; the reply did not come.
    NoReply(WireError),
}

impl Peers {
    /// A transport for pool `me` to the pools of `cluster`; a request without a reply within
    /// `reply_timeout` counts as unanswered ([`REPLY_TIMEOUT`] in the daemon).
    pub fn new(me: PoolName, key: Credentials, cluster: &ClusterFile, reply_timeout: Duration) -> Peers {
        Peers::with_view(me, key, Membership::file(cluster.clone()), reply_timeout)
    }

    /// [`Peers::new`] over a cluster view that may change (the pool's).
    pub fn with_view(me: PoolName, key: Credentials, cluster: Arc<Membership>, reply_timeout: Duration) -> Peers {
        let dialer = Dialer::new(me.as_str(), key, Service::Data).keeping(REUSE_IDLE, MAX_IDLE);
        Peers { me, cluster, reply_timeout, dialer }
    }

    /// The connections this transport makes and keeps.
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Connections opened so far (each one handshake).
    pub fn connections_opened(&self) -> u64 {
        self.dialer.connections_opened()
    }

    /// Sends `req` to pool `to` and waits for its reply.
    pub async fn request(&self, to: &PoolName, req: MigrationRequest) -> Result<MigrationReply, Unanswered> {
        let Some(addr) = self.cluster.pool(to).map(|p| p.p2p) else {
            tracing::warn!(pool = %to, "no pool of that name in the cluster file; migration request not sent");
            return Err(Unanswered::NotDelivered);
        };
        let msg = DataRequest::Migration(req);
        let mut fresh_only = false;
        loop {
            let kept = if fresh_only { None } else { self.dialer.take_idle(to).await };
            let reused = kept.is_some();
            let mut conn = match kept {
                Some(c) => c,
                None => self.open(to, addr).await?,
            };
            match self.exchange(&mut conn, &msg).await {
                Ok(DataReply::Migration(reply)) => {
                    self.dialer.give_back(to, conn);
                    return Ok(reply);
                }
                // The other pool could not read the request (it may speak an older version);
                // it closes the connection after saying so.
                Ok(DataReply::Error(e)) => {
                    tracing::warn!(pool = %to, "migration request refused: {}", e.render());
                    return Ok(MigrationReply::Error(e));
                }
                Ok(other) => {
                    let e = RemoteError::new(
                        ErrorCode::Protocol,
                        format!("pool {to} answered a migration request with {other:?}"),
                    );
                    tracing::warn!(pool = %to, "{}", e.message);
                    return Ok(MigrationReply::Error(e));
                }
                Err(Failed::NotSent(e)) if reused => {
                    tracing::debug!(pool = %to, "kept connection is closed ({e}); trying a new one");
                    fresh_only = true;
                }
                Err(Failed::NotSent(e)) => {
                    tracing::debug!(pool = %to, "migration request not delivered: {e}");
                    return Err(Unanswered::NotDelivered);
                }
                Err(Failed::NoReply(e)) => {
                    tracing::debug!(pool = %to, "no reply to a migration request: {e}");
                    return Err(Unanswered::NoAnswer);
                }
            }
        }
    }

    /// Writes the request and reads one reply, both within the reply timeout.
    async fn exchange(&self, conn: &mut Connection, msg: &DataRequest) -> Result<DataReply, Failed> {
        let deadline = tokio::time::Instant::now() + self.reply_timeout;
        let timed_out = || WireError::Timeout(self.reply_timeout);
        match tokio::time::timeout_at(deadline, conn.send(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Failed::NotSent(e)),
            // Part of it may have gone out.
            Err(_) => return Err(Failed::NoReply(timed_out())),
        }
        match tokio::time::timeout_at(deadline, conn.recv::<DataReply>()).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(Failed::NoReply(e)),
            Err(_) => Err(Failed::NoReply(timed_out())),
        }
    }

    async fn open(&self, to: &PoolName, addr: SocketAddr) -> Result<Connection, Unanswered> {
        self.dialer.open(to, addr).await.map_err(|e| {
            match &e {
                DialError::Unreachable { .. } => tracing::debug!(pool = %to, %addr, "cannot connect: {e}"),
                DialError::Refused { .. } | DialError::WrongPool { .. } => tracing::warn!(pool = %to, %addr, "{e}"),
            }
            Unanswered::NotDelivered
        })
    }

    /// Kept connections to `to` (open or not).
    #[cfg(test)]
    fn idle_count(&self, to: &PoolName) -> usize {
        self.dialer.idle_count(to)
    }
}

#[cfg(test)]
#[path = "migration_env_tests.rs"]
mod tests;

/// Where `save` keeps the migration module's settings and permanent jobs (one key, so a save
/// replaces the previous set atomically).
const SAVED_KEY: &str = "migration-saved";

/// `save`: stores the module's settings and permanent jobs durably, replacing the previous
/// set in one write. Returns the reply.
pub fn save(repo: &Repository, module: &Module<PoolEnv>) -> Result<String, RemoteError> {
    let (text, jobs) = module.save_text();
    fail::fail_point!("save-before-write");
    repo.put_setting(SAVED_KEY, text.as_bytes()).map_err(RemoteError::from)?;
    fail::fail_point!("save-after-write");
    let n = jobs.len();
    let idle = module.unrestored_count();
    module.saved(jobs);
    tracing::info!(jobs = n, not_restored = idle, "migration settings and permanent jobs saved");
    let mut reply = format!(
        "Saved: default concurrency {}, {n} permanent migration job{}",
        module.default_concurrency(),
        if n == 1 { "" } else { "s" }
    );
    if idle > 0 {
        reply.push_str(&format!(
            " ({idle} of them could not be restored at start and {}; `migration ls` shows {})",
            if idle == 1 { "does not run" } else { "do not run" },
            if idle == 1 { "it" } else { "them" }
        ));
    }
    Ok(reply)
}

/// A saved job's command read back into its definition, or why it cannot be. `save` never
/// stores `-dry-run` or `-json`: a line with them was edited by hand, and is not a job.
pub(crate) fn restorable(command: &str) -> Result<tidepool_migration::definition::JobDefinition, String> {
    let line = tidepool_migration::grammar::parse_command(command).map_err(|e| e.to_string())?;
    if line.dry_run || line.json {
        return Err("a dry run (-dry-run or -json) is not a job".to_string());
    }
    Ok(line.def)
}

/// The holds the repository kept across the restart, for [`Module::restore_holds`]; a hold
/// whose owner cannot be read still protects its replica until it ends, but no job renews it.
pub fn saved_holds(repo: &Repository) -> Vec<SavedHold> {
    let mut unreadable = 0usize;
    let holds = repo
        .take_saved_holds()
        .into_iter()
        .filter_map(|h| {
            let owner = HoldOwner::decode(&h.owner);
            unreadable += usize::from(owner.is_none());
            Some(SavedHold { id: h.id, until: h.until, owner: owner? })
        })
        .collect();
    if unreadable > 0 {
        tracing::warn!(unreadable, "holds whose job cannot be read: kept until they end, never renewed");
    }
    holds
}

/// Pool start: recreates the saved permanent jobs with their ids and concurrency. A job that
/// cannot be recreated is reported (log and `info`) and skipped; the pool starts anyway.
/// A saved job's command line is read by the migration module's job grammar
/// ([`tidepool_migration::grammar::parse_command`]), not by the admin command table.
pub fn restore(repo: &Repository, module: &Arc<Module<PoolEnv>>) {
    let text = match repo.setting(SAVED_KEY) {
        Ok(None) => return,
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            module.report_problem(format!("saved migration jobs unreadable, none restored: {e}"));
            return;
        }
    };
    let set = match Module::<PoolEnv>::parse_saved(&text) {
        Ok(set) => set,
        Err(e) => {
            module.report_problem(format!("saved migration jobs unreadable, none restored: {e}"));
            return;
        }
    };
    match set.default_concurrency {
        Some(0) => module.report_problem("the saved default concurrency 0 was ignored".to_string()),
        Some(c) => module.set_default_concurrency(c),
        None => {}
    }
    if let Some(r) = set.default_refresh {
        module.set_default_refresh(r);
    }
    let mut kept = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for job in set.jobs {
        let job = match job {
            Ok(j) => j,
            Err(e) => {
                module.report_problem(format!("a saved migration job was skipped: {e}"));
                continue;
            }
        };
        // Entries the operator could not name or tell apart cannot be kept: the next `save`
        // drops them.
        if job.id.parse::<tidepool_p2p::JobId>().is_err() || !seen.insert(job.id.clone()) {
            module.report_problem(format!(
                "saved job [{}] `{}` was skipped: its id is not valid or appears twice; the next `save` drops it",
                job.id, job.command
            ));
            continue;
        }
        match restorable(&job.command).and_then(|d| module.restore(&job, d).map_err(|e| e.to_string())) {
            Ok(line) => tracing::info!("restored migration job {line}"),
            Err(e) => {
                module.report_problem(format!(
                    "saved job [{}] `{}` was skipped: {e}; it stays saved (`save` keeps it) and is tried again at \
                     the next start; `migration cancel {}` drops it",
                    job.id, job.command, job.id
                ));
                module.keep_unrestored(job.clone(), e);
            }
        }
        kept.push(job);
    }
    module.saved(kept);
}
