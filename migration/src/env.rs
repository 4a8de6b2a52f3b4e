//! What the migration module needs from the pool it runs in: the pool's own repository, the
//! cluster, and a way to talk to other pools. The pool daemon implements [`Env`] over sled,
//! files and TCP; the simulated cluster in `tests/` implements it in memory, with a network
//! that delays, reorders, duplicates and drops messages.
//!
//! Every method that touches the repository may block (disk); the module calls them from
//! blocking threads or, for single-entry reads and writes, briefly from the runtime.

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;

use tidepool_p2p::message::{MigrationReply, MigrationRequest, PoolCost};
use tidepool_p2p::model::{Checksum, EpochMillis, FileAttributes, ReplicaState, StickyMode, StickyRecord};
use tidepool_p2p::{AttemptId, ErrorCode, JobId, PnfsId, PoolName, RemoteError, TaskId};
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
    fn scan(&self, visit: &mut dyn FnMut(Entry) -> ControlFlow<()>) -> Result<(), EnvError>;

    /// One replica, or `None` if the pool does not hold it.
    fn entry(&self, id: &PnfsId) -> Result<Option<Entry>, EnvError>;

    fn set_state(&self, id: &PnfsId, state: ReplicaState) -> Result<(), EnvError>;

    fn set_sticky(&self, id: &PnfsId, record: StickyRecord, mode: StickyMode) -> Result<(), EnvError>;

    /// Deletes a replica (its data and its record).
    fn remove(&self, id: &PnfsId) -> Result<(), EnvError>;

    /// Clears, in one step, the pins of a replica that `moved` covers (a moved pin covers a
    /// source pin of the same owner that expires no later): a pin extended meanwhile stays.
    fn clear_covered_pins(&self, id: &PnfsId, moved: &[StickyRecord]) -> Result<(), EnvError>;

    /// Deletes a moved source replica unless, at that moment, [`source_removal`] says it must
    /// stay: a valid pin that `moved` does not cover, or a state or sticky records that no
    /// longer match `snapshot` (what the copy was made from). The check and the delete are one
    /// step, so a pin set or a change made meanwhile is never deleted with the replica.
    fn remove_unless(
        &self,
        id: &PnfsId,
        moved: &[StickyRecord],
        snapshot: &Snapshot,
    ) -> Result<SourceRemoval, EnvError>;

    /// [`Env::remove_unless`] for several moved sources at once (a batch of a job), with one
    /// durable flush for all of them: each verdict is the one `remove_unless` would give, and
    /// every `Removed` one is durable when this returns. The default asks one at a time.
    fn remove_many_unless(&self, items: &[Removal<'_>]) -> Vec<Result<SourceRemoval, EnvError>> {
        items.iter().map(|r| self.remove_unless(r.id, r.moved, r.snapshot)).collect()
    }

    /// Reads a replica whole and returns its checksum (blocking; for `-verify`).
    fn compute_checksum(&self, id: &PnfsId) -> Result<Checksum, EnvError>;

    /// Records a checksum for a replica that has none.
    fn set_checksum(&self, id: &PnfsId, checksum: Checksum) -> Result<(), EnvError>;

    /// Keeps these replicas from eviction until `until` (a later hold wins). Held replicas do
    /// not count as removable space. The hold is for `owner`'s copies and survives a restart
    /// of this pool, which hands it back to [`crate::Module::restore_holds`]. A hold on a
    /// replica that is here is durable when this returns. For a [`HoldKind::Delivery`], a
    /// replica not here yet is covered once it arrives, and its hold is durable with the
    /// commit that brings it; a [`HoldKind::Renewal`] skips replicas that are not here.
    fn hold(&self, ids: &[PnfsId], until: EpochMillis, owner: &HoldOwner, kind: HoldKind) -> Result<(), EnvError>;

    /// Refuses if the pool mode forbids receiving replicas from other pools.
    fn check_p2p_client(&self) -> Result<(), EnvError>;

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

    /// The latest costs the membership publishes for `pools`, in that order, read at once
    /// (etcd: one range read); `None` when it publishes none or cannot be read now: the job
    /// asks each target (docs/operator-guide.md, "Membership").
    fn costs(&self, pools: &[PoolName]) -> impl Future<Output = Option<Vec<(PoolName, Option<PoolCost>)>>> + Send {
        let _ = pools;
        async { None }
    }

    /// Sends a request to another pool and waits (bounded) for its reply.
    fn request(
        &self,
        to: &PoolName,
        req: MigrationRequest,
    ) -> impl Future<Output = Result<MigrationReply, Unanswered>> + Send;

    /// Pulls a new replica from `pull.source` and commits it (durably) in the wanted state;
    /// on failure or cancel nothing is left behind.
    fn pull(&self, pull: Pull, cancel: CancellationToken) -> impl Future<Output = Result<(), EnvError>> + Send;

    /// Pulls several small replicas from one source together (a batch of a job), each as
    /// [`Env::pull`] would, with its own cancel and its own result (in the order given). The
    /// pool fetches them in one exchange under one transfer place.
    fn pull_batch(
        &self,
        pulls: Vec<(Pull, CancellationToken)>,
    ) -> impl Future<Output = Vec<Result<(), EnvError>>> + Send;
}

/// The pool's own error behind an [`EnvError`], kept whole: the pool's `RepoError` (with its
/// `Protected` reason), its mode's refusal or its transfer's error, which the pool can get back
/// by downcasting ([`EnvError::cause`]).
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why the pool could not do what the module asked of it. The module decides on the variant
/// (and, for the repository's refusals, on their stable code); the wire's [`RemoteError`] is
/// made from it (`From<&EnvError>`, the codes and texts of docs/errors.md) only where a reply
/// goes out to a peer or a failure is rendered for the operator.
#[derive(Clone, Debug, thiserror::Error)]
pub enum EnvError {
    /// The pool's repository refused or failed (no such replica, an illegal transition, a
    /// protected replica, a full pool, a disk error, ...): its stable code and its own error.
    #[error("{cause}")]
    Repository { code: ErrorCode, cause: Cause },
    /// The pool's mode forbids receiving replicas from other pools (`p2p-client`): the pool's
    /// refusal.
    #[error("{0}")]
    Mode(Cause),
    /// A pull failed: the transfer's own error, and the code it crosses the wire with (a
    /// source's answer keeps the source's code, even one this pool does not know).
    #[error("{cause}")]
    Transfer { code: u32, cause: Cause },
    /// The pool is shutting down (the module outlived it).
    #[error("pool {0} is shutting down")]
    ShuttingDown(PoolName),
    /// Reading a replica's data to compute its checksum failed.
    #[error("I/O error during checksum calculation of {id}: {error}")]
    ChecksumRead { id: PnfsId, error: Arc<std::io::Error> },
    /// A replica's data file does not hold the size its record gives.
    #[error("data file of {id} holds {found} bytes; its record says {recorded}")]
    DataSize { id: PnfsId, found: u64, recorded: u64 },
    /// Another pool's answer: wire data, kept as it came.
    #[error("{}", .0.message)]
    Remote(RemoteError),
    /// A bug: a blocking task of the module ended abnormally.
    #[error("{0}")]
    Internal(String),
}

impl EnvError {
    /// A refusal or failure of the pool's repository, with its stable code.
    pub fn repository(code: ErrorCode, cause: impl std::error::Error + Send + Sync + 'static) -> EnvError {
        EnvError::Repository { code, cause: Arc::new(cause) }
    }

    /// The code's number, as it crosses the wire (a peer's answer keeps the peer's number).
    pub fn number(&self) -> u32 {
        match self {
            EnvError::Repository { code, .. } => code.as_u32(),
            EnvError::Mode(_) => ErrorCode::PoolDisabled.as_u32(),
            EnvError::Transfer { code, .. } => *code,
            EnvError::ShuttingDown(_) => ErrorCode::ShuttingDown.as_u32(),
            EnvError::ChecksumRead { .. } | EnvError::DataSize { .. } => ErrorCode::Io.as_u32(),
            EnvError::Remote(e) => e.code,
            EnvError::Internal(_) => ErrorCode::Internal.as_u32(),
        }
    }

    /// The stable code an operator sees with it (docs/errors.md), if it is one of ours.
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u32(self.number())
    }

    /// The pool's own error behind it, to downcast (the repository's, the mode's, the
    /// transfer's).
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            EnvError::Repository { cause, .. } | EnvError::Mode(cause) | EnvError::Transfer { cause, .. } => {
                Some(&**cause)
            }
            _ => None,
        }
    }

    /// The repository holds no such replica, or it is changing state under us: the replica
    /// went away.
    pub fn replica_gone(&self) -> bool {
        matches!(self, EnvError::Repository { code: ErrorCode::FileNotFound | ErrorCode::IllegalTransition, .. })
    }
}

/// How the pool's error crosses the wire or reaches the operator: its code and its text; a
/// peer's answer as it came.
impl From<&EnvError> for RemoteError {
    fn from(e: &EnvError) -> Self {
        match e {
            EnvError::Remote(r) => r.clone(),
            other => RemoteError { code: other.number(), message: other.to_string() },
        }
    }
}

impl From<EnvError> for RemoteError {
    fn from(e: EnvError) -> Self {
        match e {
            EnvError::Remote(r) => r,
            other => RemoteError::from(&other),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A local cause, as a pool's repository or transfer layer would give it.
    #[derive(Debug)]
    struct Cause(&'static str);

    impl std::fmt::Display for Cause {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Cause {}

    #[test]
    fn each_cause_has_its_code_and_its_text() {
        let id = PnfsId::from_random([1; 16]);
        let pool: PoolName = "pool1".parse().unwrap();
        let table: Vec<(EnvError, u32, String)> = vec![
            (EnvError::repository(ErrorCode::FileNotFound, Cause("file gone")), 10001, "file gone".into()),
            (EnvError::Mode(Arc::new(Cause("Pool is disabled"))), 104, "Pool is disabled".into()),
            (
                EnvError::Transfer { code: 777, cause: Arc::new(Cause("source pool2: odd")) },
                777,
                "source pool2: odd".into(),
            ),
            (EnvError::ShuttingDown(pool), 20005, "pool pool1 is shutting down".into()),
            (
                EnvError::DataSize { id, found: 3, recorded: 4 },
                10008,
                format!("data file of {id} holds 3 bytes; its record says 4"),
            ),
            (EnvError::Internal("task panicked".into()), 99, "task panicked".into()),
        ];
        for (e, code, text) in table {
            assert_eq!(RemoteError::from(&e), RemoteError { code, message: text }, "{e:?}");
        }
    }

    #[test]
    fn a_peer_answer_crosses_the_wire_as_it_came() {
        let answer = RemoteError { code: 12345, message: "the peer's words".into() };
        let e = EnvError::Remote(answer.clone());
        assert_eq!(e.code(), None, "not one of ours");
        assert_eq!(e.number(), 12345);
        assert_eq!(e.to_string(), "the peer's words");
        assert_eq!(RemoteError::from(e), answer);
    }

    #[test]
    fn the_local_cause_is_kept_to_look_at() {
        let e = EnvError::repository(ErrorCode::IllegalTransition, Cause("BROKEN -> CACHED"));
        assert!(e.replica_gone());
        assert_eq!(e.cause().and_then(|c| c.downcast_ref::<Cause>()).map(|c| c.0), Some("BROKEN -> CACHED"));
        let table: &[(EnvError, bool)] = &[
            (EnvError::repository(ErrorCode::FileNotFound, Cause("gone")), true),
            (EnvError::repository(ErrorCode::PoolFull, Cause("full")), false),
            (EnvError::Transfer { code: ErrorCode::FileNotFound.as_u32(), cause: Arc::new(Cause("src")) }, false),
            (EnvError::Internal("x".into()), false),
        ];
        for (e, gone) in table {
            assert_eq!(e.replica_gone(), *gone, "{e:?}");
        }
    }
}
