//! Why a pool-to-pool transfer failed, as the transfer layer's callers match on it. The wire's
//! [`RemoteError`] (code and message) is made from it only where a reply is written or a line
//! rendered for the operator (`From<TransferError> for RemoteError`); the codes are those of
//! docs/errors.md and did not change.

use std::sync::Arc;
use std::time::Duration;

use tidepool_p2p::frame::WireError;
use tidepool_p2p::{ErrorCode, PnfsId, PoolName, RemoteError};

use crate::pool::ModeRefused;
use crate::repository::RepoError;

/// Why a transfer (either side) ended without its replica.
#[derive(Clone, Debug, thiserror::Error)]
pub enum TransferError {
    /// This pool's mode refuses the transfer (`p2p-client` on the target, `fetch` on the
    /// source).
    #[error(transparent)]
    Mode(#[from] ModeRefused),
    /// The target already holds a replica of the file.
    #[error("replica {pnfsid} already exists in {pool}")]
    Exists { pnfsid: PnfsId, pool: PoolName },
    /// The cluster file names no such pool.
    #[error("no pool named {0} in the cluster file")]
    UnknownPool(PoolName),
    /// Nothing answered at the source's address.
    #[error("source pool {from} is offline: {reason} at {addr}")]
    Offline { from: PoolName, addr: String, reason: Arc<WireError> },
    /// Another pool answers at the source's address (the cluster file is wrong on one side).
    #[error("the pool at {addr} calls itself {actual}, not {from}; check the cluster file")]
    WrongPool { from: PoolName, addr: String, actual: String },
    /// The source refused the connection (a wrong key, a protocol it does not speak): its
    /// answer, as it came.
    #[error("{}", .0.message)]
    Refused(RemoteError),
    /// The source answered the request with an error: wire data, kept as it came.
    #[error("source {from}: {}", error.message)]
    Source { from: PoolName, error: RemoteError },
    /// The connection to the source broke (a new one may resume the transfer).
    #[error("connection to {from}: {error}")]
    ConnectionBroke { from: PoolName, error: Arc<WireError> },
    /// Nothing arrived from the source for the `no_progress` time.
    #[error("no progress for {} s (source {from})", after.as_secs())]
    Stalled { from: PoolName, after: Duration },
    /// The source broke the protocol: which rule.
    #[error("source {from}: {breach}")]
    Protocol { from: PoolName, breach: Breach },
    /// The source's replica changed between two connections of one transfer.
    #[error("replica {pnfsid} changed on {from} during the transfer")]
    Changed { pnfsid: PnfsId, from: PoolName },
    /// `pp remove`, a cancelled copy, or shutdown; the partial data was removed.
    #[error("transfer of {0} cancelled; partial data removed")]
    Cancelled(PnfsId),
    /// The pool is shutting down: a batch under way was ended.
    #[error("pool shutting down")]
    ShuttingDown,
    /// The repository refused or failed (pool full, checksum mismatch, short data, a disk
    /// error, no such replica on the source, ...).
    #[error(transparent)]
    Repository(Arc<RepoError>),
    /// The source: the target asked to start past the end of the replica.
    #[error("offset {offset} is past the end of {pnfsid} ({size} bytes)")]
    OffsetPastEnd { pnfsid: PnfsId, offset: u64, size: u64 },
    /// The source: the data file is shorter than its record says.
    #[error("data file of {pnfsid} ends {missing} bytes early")]
    DataShort { pnfsid: PnfsId, missing: u64 },
    /// The source: reading the data file failed.
    #[error("file {pnfsid}: read failed: {error}")]
    ReadFailed { pnfsid: PnfsId, error: Arc<std::io::Error> },
    /// A bug: a task ended abnormally, or a state that cannot be.
    #[error("{0}")]
    Internal(String),
}

/// The rule of the transfer protocol (docs/protocol.md) a source broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Breach {
    /// It sent the attributes or the data of another replica.
    #[error("answered for {answered} when asked for {asked}")]
    WrongReplica { asked: PnfsId, answered: PnfsId },
    /// It sent a message that does not belong here (shown in its debug form).
    #[error("expected {expected}, got {got}")]
    Unexpected { expected: String, got: String },
    /// It sent more data than the replica's announced size.
    #[error("sent more than {size} bytes")]
    TooMuchData { size: u64 },
    /// A replica of a batch did not come as one frame of its size.
    #[error("the data of {pnfsid} is not one frame of {size} bytes")]
    NotOneFrame { pnfsid: PnfsId, size: u64 },
    /// It put a replica of a batch off before it had sent any (nothing would ever come).
    #[error("put off {pnfsid} without sending anything first")]
    PutOffFirst { pnfsid: PnfsId },
}

impl From<RepoError> for TransferError {
    fn from(e: RepoError) -> Self {
        TransferError::Repository(Arc::new(e))
    }
}

impl TransferError {
    /// The stable code an operator sees (docs/errors.md).
    pub fn code(&self) -> ErrorCode {
        match self {
            TransferError::Mode(_) => ErrorCode::PoolDisabled,
            TransferError::Exists { .. } => ErrorCode::FileExists,
            TransferError::UnknownPool(_) | TransferError::WrongPool { .. } => ErrorCode::InvalidArgument,
            TransferError::OffsetPastEnd { .. } => ErrorCode::InvalidArgument,
            TransferError::Offline { .. } | TransferError::ConnectionBroke { .. } => ErrorCode::Offline,
            TransferError::Refused(e) | TransferError::Source { error: e, .. } => {
                e.code().unwrap_or(ErrorCode::Internal)
            }
            TransferError::Stalled { .. } => ErrorCode::Timeout,
            TransferError::Protocol { .. } => ErrorCode::Protocol,
            TransferError::Changed { .. } => ErrorCode::ChecksumMismatch,
            TransferError::Cancelled(_) | TransferError::ShuttingDown => ErrorCode::Cancelled,
            TransferError::Repository(e) => e.code(),
            TransferError::DataShort { .. } | TransferError::ReadFailed { .. } => ErrorCode::Io,
            TransferError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The repository's error, if it is one.
    pub fn repo(&self) -> Option<&RepoError> {
        match self {
            TransferError::Repository(e) => Some(e),
            _ => None,
        }
    }

    /// The error the source answered with, if it is one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            TransferError::Refused(e) | TransferError::Source { error: e, .. } => Some(e),
            _ => None,
        }
    }
}

/// How a transfer's failure crosses the wire or reaches the operator: its code and message. A
/// peer's answer keeps the peer's own code, even one this pool does not know.
impl From<TransferError> for RemoteError {
    fn from(e: TransferError) -> Self {
        RemoteError::from(&e)
    }
}

impl From<&TransferError> for RemoteError {
    fn from(e: &TransferError) -> Self {
        let code = match e {
            TransferError::Refused(r) | TransferError::Source { error: r, .. } => r.code,
            other => other.code().as_u32(),
        };
        RemoteError { code, message: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_answer_keeps_its_code_and_gains_its_source() {
        let from: PoolName = "pool1".parse().unwrap();
        let e = TransferError::Source { from, error: RemoteError { code: 777, message: "odd".into() } };
        assert_eq!(RemoteError::from(&e), RemoteError { code: 777, message: "source pool1: odd".into() });
        assert_eq!(e.code(), ErrorCode::Internal, "an unknown code is not one of ours");
    }

    #[test]
    fn each_local_cause_has_its_code() {
        let id = PnfsId::from_random([1; 16]);
        let pool: PoolName = "pool1".parse().unwrap();
        let table: Vec<(TransferError, ErrorCode)> = vec![
            (TransferError::Exists { pnfsid: id, pool: pool.clone() }, ErrorCode::FileExists),
            (TransferError::UnknownPool(pool.clone()), ErrorCode::InvalidArgument),
            (TransferError::Stalled { from: pool.clone(), after: Duration::from_secs(1) }, ErrorCode::Timeout),
            (TransferError::Changed { pnfsid: id, from: pool.clone() }, ErrorCode::ChecksumMismatch),
            (TransferError::Cancelled(id), ErrorCode::Cancelled),
            (TransferError::ShuttingDown, ErrorCode::Cancelled),
            (
                TransferError::Protocol { from: pool.clone(), breach: Breach::PutOffFirst { pnfsid: id } },
                ErrorCode::Protocol,
            ),
            (RepoError::PoolFull { needed: 2, free: 1, removable: 0, total: 1 }.into(), ErrorCode::PoolFull),
            (TransferError::DataShort { pnfsid: id, missing: 3 }, ErrorCode::Io),
        ];
        for (e, code) in table {
            assert_eq!(e.code(), code, "{e}");
            assert_eq!(RemoteError::from(&e).code(), Some(code), "{e}");
        }
    }
}
