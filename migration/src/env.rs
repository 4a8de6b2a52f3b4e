//! What the migration module needs from the pool it runs in: the pool's own repository, the
//! cluster, and a way to talk to other pools. The pool daemon implements [`Env`] over sled,
//! files and TCP; the simulated cluster in `tests/` implements it in memory, with a network
//! that delays, reorders, duplicates and drops messages.
//!
//! Every method that touches the repository may block (disk); the module calls them from
//! blocking threads or, for single-entry reads and writes, briefly from the runtime.

use std::future::Future;
use std::ops::ControlFlow;

use tidepool_p2p::message::{MigrationReply, MigrationRequest};
use tidepool_p2p::model::{Checksum, EpochMillis, FileAttributes, ReplicaState, StickyMode, StickyRecord};
use tidepool_p2p::{AttemptId, JobId, PnfsId, PoolName, RemoteError, TaskId};
use tokio_util::sync::CancellationToken;

/// One replica of the local repository as the module sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub attrs: FileAttributes,
    pub state: ReplicaState,
    pub sticky: Vec<StickyRecord>,
}

impl Entry {
    pub fn pnfsid(&self) -> PnfsId {
        self.attrs.pnfsid
    }
}

pub use crate::task::Unanswered;

/// The job whose delivered copies a hold protects: the pool that runs it and its id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HoldOwner {
    pub pool: PoolName,
    pub job: JobId,
}

impl HoldOwner {
    /// The owner as the repository stores it: `<pool>` and `<job>` on two lines (neither holds
    /// a line break).
    pub fn encode(&self) -> Vec<u8> {
        format!("{}\n{}", self.pool, self.job).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<HoldOwner> {
        let (pool, job) = std::str::from_utf8(bytes).ok()?.split_once('\n')?;
        Some(HoldOwner { pool: pool.parse().ok()?, job: job.parse().ok()? })
    }
}

/// Why a hold is placed ([`Env::hold`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldKind {
    /// Before a copy is made or updated: the replica may not be here yet.
    Delivery,
    /// Extending the holds of a job's earlier deliveries: only replicas still here.
    Renewal,
}

/// A hold found when the pool started again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedHold {
    pub id: PnfsId,
    pub until: EpochMillis,
    pub owner: HoldOwner,
}

/// A new copy the target must pull from the source (docs/dcache-compatibility.md#the-target-side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pull {
    pub pnfsid: PnfsId,
    pub source: PoolName,
    /// CACHED or PRECIOUS.
    pub state: ReplicaState,
    pub sticky: Vec<StickyRecord>,
    pub atime: Option<EpochMillis>,
    pub force_source_mode: bool,
    /// The migration attempt this pull carries out (`None` for `pp get file`): the transfer's
    /// log lines name it, so one grep follows a file across its source and its target.
    pub copy_of: Option<CopyOf>,
}

/// The migration copy a pull is for, as the transfer's log lines name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyOf {
    pub job: JobId,
    pub task: TaskId,
    pub attempt: AttemptId,
}

/// The pool around the module.
pub trait Env: Send + Sync + 'static {
    /// This pool's name.
    fn name(&self) -> &PoolName;

    fn now(&self) -> EpochMillis;

    /// Owners starting with this are pins.
    fn pin_prefix(&self) -> &str;

    // --- The local repository.

    /// Visits every replica (any state). Used by a job's initial scan, on a blocking thread.
    fn scan(&self, visit: &mut dyn FnMut(Entry) -> ControlFlow<()>) -> Result<(), RemoteError>;

    /// One replica, or `None` if the pool does not hold it.
    fn entry(&self, id: &PnfsId) -> Result<Option<Entry>, RemoteError>;

    fn set_state(&self, id: &PnfsId, state: ReplicaState) -> Result<(), RemoteError>;

    fn set_sticky(&self, id: &PnfsId, record: StickyRecord, mode: StickyMode) -> Result<(), RemoteError>;

    /// Deletes a replica (its data and its record).
    fn remove(&self, id: &PnfsId) -> Result<(), RemoteError>;

    /// Clears, in one step, the pins of a replica that `moved` covers (a moved pin covers a
    /// source pin of the same owner that expires no later): a pin extended meanwhile stays.
    fn clear_covered_pins(&self, id: &PnfsId, moved: &[StickyRecord]) -> Result<(), RemoteError>;

    /// Deletes a moved source replica unless, at that moment, [`source_removal`] says it must
    /// stay: a valid pin that `moved` does not cover, or a state or sticky records that no
    /// longer match `snapshot` (what the copy was made from). The check and the delete are one
    /// step, so a pin set or a change made meanwhile is never deleted with the replica.
    fn remove_unless(
        &self,
        id: &PnfsId,
        moved: &[StickyRecord],
        snapshot: &Snapshot,
    ) -> Result<SourceRemoval, RemoteError>;

    /// [`Env::remove_unless`] for several moved sources at once (a batch of a job), with one
    /// durable flush for all of them: each verdict is the one `remove_unless` would give, and
    /// every `Removed` one is durable when this returns. The default asks one at a time.
    fn remove_many_unless(&self, items: &[Removal<'_>]) -> Vec<Result<SourceRemoval, RemoteError>> {
        items.iter().map(|r| self.remove_unless(r.id, r.moved, r.snapshot)).collect()
    }

    /// Reads a replica whole and returns its checksum (blocking; for `-verify`).
    fn compute_checksum(&self, id: &PnfsId) -> Result<Checksum, RemoteError>;

    /// Records a checksum for a replica that has none.
    fn set_checksum(&self, id: &PnfsId, checksum: Checksum) -> Result<(), RemoteError>;

    /// Keeps these replicas from eviction until `until` (a later hold wins). Held replicas do
    /// not count as removable space. The hold is for `owner`'s copies and survives a restart
    /// of this pool, which hands it back to [`crate::Module::restore_holds`]. A hold on a
    /// replica that is here is durable when this returns. For a [`HoldKind::Delivery`], a
    /// replica not here yet is covered once it arrives, and its hold is durable with the
    /// commit that brings it; a [`HoldKind::Renewal`] skips replicas that are not here.
    fn hold(&self, ids: &[PnfsId], until: EpochMillis, owner: &HoldOwner, kind: HoldKind) -> Result<(), RemoteError>;

    /// Refuses if the pool mode forbids receiving replicas from other pools.
    fn check_p2p_client(&self) -> Result<(), RemoteError>;

    /// Space and load, as `PoolInfo` answers.
    fn cost(&self) -> tidepool_p2p::message::PoolCost;

    // --- The cluster.

    /// Every pool of the cluster file, in its order.
    fn pools(&self) -> Vec<PoolName>;

    /// The pools of a pool group, in cluster-file order.
    fn pool_group(&self, group: &str) -> Vec<PoolName>;

    /// The pool groups `pool` belongs to.
    fn groups_of(&self, pool: &PoolName) -> Vec<String>;

    /// The pool groups of a link of the cluster file; `None` if there is no such link.
    fn link(&self, name: &str) -> Option<Vec<String>>;

    /// The pools attached to an HSM instance, in cluster-file order.
    fn hsm_pools(&self, hsm: &str) -> Vec<PoolName>;

    /// Sends a request to another pool and waits (bounded) for its reply.
    fn request(
        &self,
        to: &PoolName,
        req: MigrationRequest,
    ) -> impl Future<Output = Result<MigrationReply, Unanswered>> + Send;

    /// Pulls a new replica from `pull.source` and commits it (durably) in the wanted state;
    /// on failure or cancel nothing is left behind.
    fn pull(&self, pull: Pull, cancel: CancellationToken) -> impl Future<Output = Result<(), RemoteError>> + Send;

    /// Pulls several small replicas from one source together (a batch of a job), each as
    /// [`Env::pull`] would, with its own cancel and its own result (in the order given). The
    /// pool fetches them in one exchange under one transfer place.
    fn pull_batch(
        &self,
        pulls: Vec<(Pull, CancellationToken)>,
    ) -> impl Future<Output = Vec<Result<(), RemoteError>>> + Send;
}

/// One moved source replica to remove ([`Env::remove_many_unless`]).
#[derive(Clone, Copy, Debug)]
pub struct Removal<'a> {
    pub id: &'a PnfsId,
    /// The pins that went with the copy.
    pub moved: &'a [StickyRecord],
    /// What the copy was made from.
    pub snapshot: &'a Snapshot,
}

pub use crate::safety::{Snapshot, SourceRemoval, pin_covered, source_removal};
