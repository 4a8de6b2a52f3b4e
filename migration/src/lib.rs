//! The migration module: jobs that copy, move or cache a pool's replicas onto other pools.
//!
//! **Invariant:** this crate never names sled and opens no sockets; it works through the
//! repository and transport traits the pool daemon implements.

pub mod completion;
pub mod definition;
pub mod env;
pub mod expr;
pub mod filter;
pub mod grammar;
pub mod job_state;
pub mod ledger;
pub mod mode;
pub mod module;
pub mod plan;
pub mod queue;
pub mod rate;
pub mod report;
pub mod safety;
pub mod select;
pub mod targets;
pub mod task;
pub mod update;

/// A migration command or job that cannot go ahead, with the operator-facing message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    /// An option value or combination is invalid (the message is dCache's where it has one).
    #[error("{0}")]
    Invalid(String),
    /// No job of this pool has the id (dCache's message).
    #[error("Job not found")]
    JobNotFound,
}

impl MigrationError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        MigrationError::Invalid(msg.into())
    }

    /// The stable code an operator sees.
    pub fn code(&self) -> tidepool_p2p::ErrorCode {
        match self {
            MigrationError::Invalid(_) => tidepool_p2p::ErrorCode::InvalidArgument,
            MigrationError::JobNotFound => tidepool_p2p::ErrorCode::JobNotFound,
        }
    }
}
