//! The typed requests and replies of each service. Every request gets exactly one terminal
//! reply (`Finished`, `PutCommitted`, `GetEnd` or `Error`); streamed output comes before it.

use serde::{Deserialize, Serialize};

use crate::error::RemoteError;
use crate::ids::{AttemptId, JobId, PnfsId, PoolName, TaskId, TransferId};
use crate::model::{
    AccessLatency, Checksum, EpochMillis, FileAttributes, ReplicaState, RetentionPolicy, SpaceInfo, StickyRecord,
};

/// The longest admin command line a pool runs, in bytes (see `docs/admin-commands.md`): a
/// longer line is refused before it is parsed, and the shell refuses it before sending it.
pub const MAX_ADMIN_LINE: usize = 64 * 1024;

/// Why a line is refused for its length, with the same words in the shell and in the pool.
pub fn line_too_long(len: usize) -> Option<String> {
    (len > MAX_ADMIN_LINE).then(|| format!("command line too long: {len} bytes, at most {MAX_ADMIN_LINE}"))
}

/// The longest error message a pool sends in one reply, in bytes: a longer one is cut (and says
/// so), so that no reply can outgrow a frame whatever it quotes.
pub const MAX_ERROR_MESSAGE: usize = 16 * 1024;

/// Admin service: the shell sends one request at a time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Run one command line (at most [`MAX_ADMIN_LINE`] bytes; a longer one is refused).
    Run { line: String },
    /// List the commands this pool declares (for completion and `help`).
    Describe,
}

/// Admin service replies. A `Run` produces any number of `Output` chunks, then `Finished`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminReply {
    Output(String),
    Finished { error: Option<RemoteError> },
    Commands(Vec<CommandDescription>),
}

/// One declared admin command, as the shell sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandDescription {
    /// The command words, e.g. `rep set sticky`.
    pub name: String,
    /// The one-line help.
    pub summary: String,
    /// Option names without the leading `-`.
    pub options: Vec<String>,
}

/// The state a client asks for when storing a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitState {
    Cached,
    Precious,
}

/// Data service requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DataRequest {
    /// Store a new replica; the pool answers `PutReady`, then the client sends exactly `size`
    /// bytes as data frames, then `PutEnd`.
    Put(PutRequest),
    /// The client's checksum of what it sent; the pool commits only when its own agrees.
    PutEnd { checksum: Checksum },
    /// Read a committed replica: `GetReady`, data frames, `GetEnd`.
    Get { pnfsid: PnfsId },
    /// Pool to pool: the target asks the source for a replica. The source answers
    /// `FetchReady` (the replica's attributes, size and checksum included) or `Error`.
    Fetch { transfer: TransferId, pnfsid: PnfsId, force_source_mode: bool },
    /// The target has room for the replica: send bytes `offset..size` as data frames, then
    /// `FetchEnd`. An offset above zero resumes a transfer that broke.
    FetchStart { transfer: TransferId, offset: u64 },
    /// The target gives up before `FetchStart`; the connection stays usable.
    FetchAbort { transfer: TransferId },
    /// Pool to pool: the migration module (answered by one `DataReply::Migration`).
    Migration(MigrationRequest),
    /// Pool to pool: several small replicas in one exchange (at most [`MAX_SMALL_ITEMS`]).
    /// The source answers one `SmallItem` per item, in order, each `Sent` one followed by
    /// exactly one data frame holding the whole replica, then `FetchSmallEnd`. It sends at
    /// least the first item whatever its size up to `max_size`, then stops sending data once
    /// `max_bytes` would be passed (the rest are `Later`).
    FetchSmall { items: Vec<SmallFetch>, max_size: u64, max_bytes: u64 },
}

/// The most items one `FetchSmall` may carry.
pub const MAX_SMALL_ITEMS: usize = 64;

/// One replica asked for in a `FetchSmall`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmallFetch {
    pub transfer: TransferId,
    pub pnfsid: PnfsId,
    pub force_source_mode: bool,
}

/// The source's answer for one item of a `FetchSmall`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SmallOutcome {
    /// The replica's attributes (size and checksum included); one data frame of `size`
    /// bytes follows.
    Sent(FileAttributes),
    /// Larger than `max_size`: the target fetches it with `Fetch`.
    TooLarge { size: u64 },
    /// Not sent in this exchange because the batch reached `max_bytes`: ask again.
    Later,
    /// Why this replica cannot be sent; the other items are not affected.
    Refused(RemoteError),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutRequest {
    pub size: u64,
    pub storage_class: Option<String>,
    pub cache_class: Option<String>,
    pub access_latency: Option<AccessLatency>,
    pub retention_policy: Option<RetentionPolicy>,
    pub hsm: Option<String>,
    pub state: CommitState,
    pub sticky: Vec<StickyRecord>,
}

/// Data service replies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DataReply {
    PutReady {
        pnfsid: PnfsId,
    },
    PutCommitted {
        pnfsid: PnfsId,
        checksum: Checksum,
    },
    GetReady {
        attributes: FileAttributes,
    },
    GetEnd,
    Error(RemoteError),
    FetchReady {
        transfer: TransferId,
        attributes: FileAttributes,
    },
    FetchEnd {
        transfer: TransferId,
    },
    Migration(MigrationReply),
    /// One item of a `FetchSmall`, in the order asked.
    SmallItem {
        transfer: TransferId,
        outcome: SmallOutcome,
    },
    /// The end of a `FetchSmall` exchange; the connection is free again.
    FetchSmallEnd,
}

/// What one pool's migration module asks another. The asking pool is the authenticated peer
/// of the connection, so a request cannot speak for another pool. Every request gets exactly
/// one [`MigrationReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationRequest {
    /// The pool's space and load, for target selection. -> `PoolInfo`. A job asking names
    /// itself: that keeps the replicas it delivered from eviction while it runs (see
    /// `CopyRequest::releases_source`).
    PoolInfo { job: Option<JobId> },
    /// Which of these files the pool holds as a committed (CACHED or PRECIOUS) replica.
    /// Batched: a job asks about many files at once. -> `Located`.
    Locate { pnfsids: Vec<PnfsId> },
    /// Make the pool hold the file: update the replica it has, or pull a new copy from the
    /// asking pool. -> `Accepted` or `Error`; the outcome follows as `Finished`.
    Copy(CopyRequest),
    /// Does the pool still work on this attempt? -> `Alive`.
    Ping { attempt: AttemptId },
    /// Stop working on this attempt and remove anything half made. -> `Alive` (whether the
    /// attempt was known).
    Cancel { attempt: AttemptId, reason: String },
    /// The outcome of a copy, sent by the target to the source. -> `Ack`.
    Finished(CopyFinished),
    /// Several copies at once (a job's batch of small files bound for this pool): each is
    /// decided on its own, exactly as if it had come alone. -> `Batch`, one answer per request
    /// in the same order (`Accepted` or `Error`); each outcome follows as a `Finished` (or
    /// within a `FinishedBatch`).
    CopyBatch(Vec<CopyRequest>),
    /// The outcomes of several copies for the asking pool's jobs, sent by the target to the
    /// source. -> `Ack`.
    FinishedBatch(Vec<CopyFinished>),
}

/// The most copy requests in one `CopyBatch`, and outcomes in one `FinishedBatch`.
pub const MAX_COPY_BATCH: usize = 1024;
/// The most bytes of files one `CopyBatch` may ask for (the target holds a batch's new copies
/// in memory until they are committed).
pub const MAX_COPY_BATCH_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRequest {
    /// The correlation id: every later message about this copy carries it.
    pub attempt: AttemptId,
    /// For log lines on the target.
    pub job: JobId,
    pub task: TaskId,
    /// The source's attributes (size and checksum included).
    pub attributes: FileAttributes,
    /// CACHED or PRECIOUS.
    pub state: ReplicaState,
    /// Records to set (extend-only on an existing replica); pins that move are among them.
    pub sticky: Vec<StickyRecord>,
    /// Verify the checksum of an existing replica before updating it.
    pub verify: bool,
    /// The access time for a new replica (`-atime`).
    pub atime: Option<EpochMillis>,
    pub force_source_mode: bool,
    /// Only update an existing replica; never copy.
    pub meta_only: bool,
    /// The source replica will be deleted or made removable once this copy is confirmed (a
    /// move): the target keeps its replica from eviction while the job runs and for a while
    /// after, so that making room for the job's next copies never destroys what it moved.
    pub releases_source: bool,
}

/// A target's report on one attempt. `target` names the reporting pool so that a report is
/// never credited to another pool's attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyFinished {
    pub attempt: AttemptId,
    pub target: PoolName,
    pub pnfsid: PnfsId,
    pub result: Result<(), RemoteError>,
}

/// A pool's cost figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolCost {
    pub space: SpaceInfo,
    /// Transfers it is receiving now.
    pub load: u32,
    /// Whether it accepts new replicas from other pools (not disabled for p2p-client).
    pub accepts: bool,
    /// Whether the pool is enabled (no `pool disable` in force).
    pub enabled: bool,
    /// The pool's run: a random value new at every start of its migration module (0 where
    /// unknown). A job that sees it change knows the pool restarted and forgot every copy it
    /// was making for the job.
    pub run: u64,
}

/// A committed replica a pool holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub pnfsid: PnfsId,
    pub state: ReplicaState,
    pub sticky: Vec<StickyRecord>,
    /// The replica's recorded checksum, if it has one.
    pub checksum: Option<Checksum>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationReply {
    PoolInfo(PoolCost),
    /// The asked-about files the pool holds, with their state and sticky records (so that a
    /// job can see that a replica needs no update and skip the copy request).
    Located {
        held: Vec<Held>,
    },
    Accepted,
    Alive(bool),
    Ack,
    Error(RemoteError),
    /// The answers to a `CopyBatch`, in its order.
    Batch(Vec<CopyAnswer>),
}

/// The answer to one request of a `CopyBatch` (not itself a reply, so a batch cannot nest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyAnswer {
    Accepted,
    Refused(RemoteError),
}
