//! Why an admin command failed, typed: the executor and rebalance return [`AdminError`], callers
//! match on its variants or its [`ErrorCode`], and the wire's `RemoteError` (code and message,
//! `docs/errors.md`) is made from it only where the reply is written (`daemon.rs`, and
//! rebalance's per-pool lines).

use tidepool_migration::MigrationError;
use tidepool_p2p::{ErrorCode, PoolName, RemoteError, TransferId};

use super::output::Gone;
use crate::repository::RepoError;

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The line did not parse; the message points at the bad token.
    #[error("{message}")]
    Syntax { code: ErrorCode, message: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The migration module refused (`JobNotFound`, or a state or value it does not allow).
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error(transparent)]
    Rebalance(#[from] RebalanceError),
    /// A `psu` command (the membership) refused or could not reach etcd.
    #[error(transparent)]
    Psu(#[from] super::psu::PsuError),
    /// `tls reload` kept the credentials in force.
    #[error(transparent)]
    Tls(#[from] super::tls::TlsCommandError),
    /// An error another layer (the transfers, the pool's mode) returns in its wire form.
    #[error("{}", .0.message)]
    Remote(RemoteError),
    /// The client went away; nothing more is written.
    #[error("the client went away")]
    Gone,
    #[error("no command '{0}'; `help` lists them")]
    UnknownTopic(String),
    #[error("{0} is this pool; name another pool")]
    SourceIsHere(PoolName),
    #[error("no pool named {0} in the cluster file")]
    UnknownPool(PoolName),
    #[error("no transfer {0}; `pp ls` lists them")]
    NoTransfer(TransferId),
    #[error("not in this pool: {}", .0.join(" "))]
    NotInPool(Vec<String>),
    /// `pp get file -wait` with several files, some of which failed (each is listed above);
    /// `first` is the code of the first failure, as its layer (or the source pool) gave it.
    #[error("{failures} of {count} transfers failed")]
    TransfersFailed { failures: usize, count: usize, first: u32 },
    #[error("transfer task failed: {0}")]
    TransferTask(String),
    #[error("this pool has no migration module running")]
    NoMigration,
    #[error("this pool has no runtime to transfer with")]
    NoRuntime,
    #[error("this pool shares its process's log (the demo, a test); run it with `tidepool pool` to change log levels")]
    SharedLog,
    #[error("cannot change the log filter: {0}")]
    LogFilter(String),
    #[error("cannot write JSON: {0}")]
    Json(String),
}

impl AdminError {
    /// The stable code an operator and a script see (`docs/errors.md`).
    pub fn code(&self) -> ErrorCode {
        match self {
            AdminError::Syntax { code, .. } => *code,
            AdminError::Repo(e) => e.code(),
            AdminError::Migration(e) => e.code(),
            AdminError::Rebalance(e) => e.code(),
            AdminError::Psu(e) => e.code(),
            AdminError::Tls(e) => e.code(),
            AdminError::Remote(e) => e.code().unwrap_or(ErrorCode::Internal),
            AdminError::UnknownTopic(_) => ErrorCode::UnknownCommand,
            AdminError::SourceIsHere(_)
            | AdminError::UnknownPool(_)
            | AdminError::NoTransfer(_)
            | AdminError::SharedLog => ErrorCode::InvalidArgument,
            AdminError::NotInPool(_) => ErrorCode::FileNotFound,
            AdminError::TransfersFailed { first, .. } => ErrorCode::from_u32(*first).unwrap_or(ErrorCode::Internal),
            AdminError::Gone
            | AdminError::TransferTask(_)
            | AdminError::NoMigration
            | AdminError::NoRuntime
            | AdminError::LogFilter(_)
            | AdminError::Json(_) => ErrorCode::Internal,
        }
    }

    /// The wire form, made where the reply is written.
    pub fn to_remote(&self) -> RemoteError {
        match self {
            // Keeps a code this build does not know, as it came.
            AdminError::Remote(e) => e.clone(),
            AdminError::Rebalance(e) => e.to_remote(),
            AdminError::TransfersFailed { first, .. } => RemoteError { code: *first, message: self.to_string() },
            other => RemoteError::new(other.code(), other.to_string()),
        }
    }
}

impl From<Gone> for AdminError {
    fn from(_: Gone) -> Self {
        AdminError::Gone
    }
}

/// What the transfer layer and the pool's mode check return today.
impl From<RemoteError> for AdminError {
    fn from(e: RemoteError) -> Self {
        AdminError::Remote(e)
    }
}

impl From<AdminError> for RemoteError {
    fn from(e: AdminError) -> Self {
        e.to_remote()
    }
}

/// Why `rebalance` as a whole failed (each pool's own failure is on its line of the reply).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RebalanceError {
    #[error("no pool group named {0} in the cluster file")]
    UnknownGroup(String),
    /// No enabled pool answered; `all_disabled` if every pool answered, disabled.
    #[error("no pool of pool group {group} is enabled and answers")]
    NoPool { group: String, all_disabled: bool },
    #[error("{pool} is the only enabled pool of pool group {group} that answers: nothing to level")]
    OnlyOne { pool: PoolName, group: String },
    /// Some pools failed; `first` is the code of the first failure.
    #[error("pool group {group}: {failed} of {total} pools failed (see above); {done} on the others")]
    PoolsFailed { group: String, failed: usize, total: usize, done: &'static str, first: u32 },
}

impl RebalanceError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RebalanceError::UnknownGroup(_) | RebalanceError::OnlyOne { .. } => ErrorCode::InvalidArgument,
            RebalanceError::NoPool { all_disabled: true, .. } => ErrorCode::PoolDisabled,
            RebalanceError::NoPool { all_disabled: false, .. } => ErrorCode::Offline,
            RebalanceError::PoolsFailed { first, .. } => ErrorCode::from_u32(*first).unwrap_or(ErrorCode::Internal),
        }
    }

    /// The wire form (the code of a failed pool as that pool gave it).
    pub fn to_remote(&self) -> RemoteError {
        match self {
            RebalanceError::PoolsFailed { first, .. } => RemoteError { code: *first, message: self.to_string() },
            other => RemoteError::new(other.code(), other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_keeps_its_code_on_the_wire() {
        let pool: PoolName = "pool2".parse().unwrap();
        for (e, code, message) in [
            (
                AdminError::UnknownPool(pool.clone()),
                ErrorCode::InvalidArgument,
                "no pool named pool2 in the cluster file",
            ),
            (AdminError::NoTransfer(TransferId(7)), ErrorCode::InvalidArgument, "no transfer 7; `pp ls` lists them"),
            (AdminError::NotInPool(vec!["a".into(), "b".into()]), ErrorCode::FileNotFound, "not in this pool: a b"),
            (
                AdminError::TransfersFailed { failures: 1, count: 2, first: ErrorCode::Offline.as_u32() },
                ErrorCode::Offline,
                "1 of 2 transfers failed",
            ),
            (AdminError::Migration(MigrationError::JobNotFound), ErrorCode::JobNotFound, "Job not found"),
            (AdminError::Gone, ErrorCode::Internal, "the client went away"),
        ] {
            assert_eq!(e.code(), code, "{e:?}");
            assert_eq!(e.to_remote(), RemoteError::new(code, message));
        }
        // An error from another layer crosses unchanged, even with a code this build lacks.
        let odd = RemoteError { code: 9999, message: "from a newer pool".into() };
        assert_eq!(AdminError::from(odd.clone()).to_remote(), odd);
    }
}
