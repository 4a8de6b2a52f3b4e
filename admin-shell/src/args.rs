//! The `tidepool-admin` command line, declared here rather than in the binary so that
//! `tidepool generate` can write its man page and shell completions from the same definition.

use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use tidepool_p2p::PoolName;

/// The Tidepool operator shell: `cd <pool>` talks to that pool's admin endpoint.
///
/// Interactive when stdin is a terminal; otherwise it runs the commands on stdin (one per line,
/// `#` comments and blank lines skipped) and exits with status 1 if any failed.
#[derive(Debug, Parser)]
#[command(name = "tidepool-admin", version)]
pub struct Args {
    /// The cluster file listing every pool.
    #[arg(long, value_name = "FILE", required_unless_present = "etcd")]
    pub cluster: Option<PathBuf>,
    /// Find the pools in etcd instead (client URLs, comma-separated; the membership of pools
    /// configured with `[membership] backend = "etcd"`).
    #[arg(long, value_name = "URLS", value_delimiter = ',', conflicts_with = "cluster")]
    pub etcd: Vec<String>,
    /// The key prefix of the cluster of pools in etcd.
    #[arg(long, value_name = "PREFIX", default_value = "/tidepool/")]
    pub etcd_prefix: String,
    /// Our admin certificate [default: admin.admin.crt next to the cluster file; needed with
    /// --etcd].
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Its private key [default: the certificate's path ending in .key].
    #[arg(long, value_name = "FILE")]
    pub cert_key: Option<PathBuf>,
    /// A CA certificate to trust pools from, repeatable [default: ca.crt next to the cluster
    /// file].
    #[arg(long, value_name = "FILE")]
    pub trust: Vec<PathBuf>,
    /// Run this command and exit; repeat to run several in order.
    #[arg(short = 'e', long = "execute", value_name = "CMD")]
    pub execute: Vec<String>,
    /// The history file [default: $HOME/.tidepool_admin_history].
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Start inside this pool, as if `cd POOL` were the first command.
    #[arg(long, value_name = "POOL")]
    pub pool: Option<PoolName>,
}

/// The clap definition of `tidepool-admin`, for man pages and completions.
pub fn command() -> clap::Command {
    Args::command()
}
