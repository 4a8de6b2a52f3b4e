//! The Tidepool pool daemon.

pub mod admin;
pub mod admission;
pub mod client;
pub mod credentials;
pub mod daemon;
pub mod faults;
pub mod io;
pub mod metrics;
pub mod migration_env;
pub mod node;
pub mod pool;
pub mod process;
pub mod transfer;

/// The replica repository (crate `tidepool-repository`), under the name the pool's code uses.
pub use tidepool_repository as repository;
