//! The process: the `tidepool` command line and what it reads (arguments, config, cluster file,
//! credentials), the log, the data directory's safe start, systemd, the demo and the generated man pages
//! and completions. Nothing else in the pool reads files named on the command line or the
//! environment.

pub mod args;
pub mod ca;
pub mod cli;
pub mod config;
pub mod demo;
pub mod files;
pub mod generate;
pub mod logging;
pub mod pool_dir;
pub mod service;
