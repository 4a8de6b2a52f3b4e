//! The wire of Tidepool: model types that cross process boundaries, framing, the authenticated
//! handshake, typed messages, and the lexical syntax of admin command lines.
//!
//! **Invariant:** this crate knows nothing of jobs, filters or storage engines.

pub mod auth;
pub mod cluster;
pub mod cmdline;
pub mod conn;
pub mod error;
pub mod frame;
pub mod identity;
pub mod ids;
pub mod membership;
pub mod message;
pub mod model;
pub mod peer;
pub mod random;
pub mod tls;
pub mod units;

pub use error::{ErrorCode, RemoteError};
pub use ids::{AttemptId, JobId, PnfsId, PoolName, TaskId, TransferId};
