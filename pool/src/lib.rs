//! The Tidepool pool daemon.

pub mod admin;
pub mod admission;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod faults;
pub mod gate;
pub mod generate;
pub mod logging;
pub mod metrics;
pub mod migration_env;
pub mod pool;
pub mod pool_dir;
pub mod rebalance;
pub mod service;
pub mod small_fetch;
pub mod transfer;

/// The replica repository (crate `tidepool-repository`), under the name the pool's code uses.
pub use tidepool_repository as repository;
