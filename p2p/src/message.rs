//! The typed requests and replies of each service. Every request gets exactly one terminal
//! reply (`Finished`, `PutCommitted`, `GetEnd` or `Error`); streamed output comes before it.

use serde::{Deserialize, Serialize};

use crate::error::RemoteError;
use crate::ids::{PnfsId, TransferId};
use crate::model::{AccessLatency, Checksum, FileAttributes, RetentionPolicy, StickyRecord};

/// Admin service: the shell sends one request at a time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Run one command line.
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
    PutReady { pnfsid: PnfsId },
    PutCommitted { pnfsid: PnfsId, checksum: Checksum },
    GetReady { attributes: FileAttributes },
    GetEnd,
    Error(RemoteError),
    FetchReady { transfer: TransferId, attributes: FileAttributes },
    FetchEnd { transfer: TransferId },
}
