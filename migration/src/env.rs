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
use tidepool_p2p::{PnfsId, PoolName, RemoteError};
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

/// A new copy the target must pull from the source (reference §5.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pull {
    pub pnfsid: PnfsId,
    pub source: PoolName,
    /// CACHED or PRECIOUS.
    pub state: ReplicaState,
    pub sticky: Vec<StickyRecord>,
    pub atime: Option<EpochMillis>,
    pub force_source_mode: bool,
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

    /// Deletes a replica unless, at that moment, it holds a valid pin that `moved` does not
    /// cover (a moved pin covers a source pin of the same owner that expires no later). The
    /// check and the delete are one step, so a pin set meanwhile is never deleted with the
    /// replica. True if it was deleted (or was already gone).
    fn remove_unless_pinned(&self, id: &PnfsId, moved: &[StickyRecord]) -> Result<bool, RemoteError>;

    /// Reads a replica whole and returns its checksum (blocking; for `-verify`).
    fn compute_checksum(&self, id: &PnfsId) -> Result<Checksum, RemoteError>;

    /// Records a checksum for a replica that has none.
    fn set_checksum(&self, id: &PnfsId, checksum: Checksum) -> Result<(), RemoteError>;

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
}
