//! The arguments of the `tidepool` program (clap): one definition for the parser, the man pages
//! and the shell completions.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};
use tidepool_p2p::tls::Role;
use tidepool_p2p::{PnfsId, PoolName};

use super::logging::LogFormat;

#[derive(Parser)]
#[command(name = "tidepool", version, about = "Tidepool storage pool daemon and tools")]
pub struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand)]
pub(super) enum Command {
    /// Run one pool daemon.
    Pool {
        /// The pool's config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Check the config, the cluster file, the credentials, the log filter and the data directory,
        /// print a summary and exit (0 if the daemon would start, 1 with the daemon's message
        /// if not).
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Create the pool's data directory and mark it as the pool's (a pool never creates it at
    /// start, so a disk that is not mounted never becomes an empty pool).
    Init {
        /// The pool's config file (TOML); its `name` and `data_dir` are used.
        #[arg(long)]
        config: PathBuf,
    },
    /// A small cluster CA: make one, issue pool, admin and client credentials from it.
    Ca {
        #[command(subcommand)]
        what: Ca,
    },
    /// Store files in a pool and print their new PnfsIds, one `<pnfsid> <file>` line each.
    Put {
        #[command(flatten)]
        target: Target,
        /// Storage class of the new replicas, e.g. atlas:default.
        #[arg(long)]
        storage: Option<String>,
        /// Store as CACHED (the default).
        #[arg(long, conflicts_with = "precious")]
        cached: bool,
        /// Store as PRECIOUS.
        #[arg(long)]
        precious: bool,
        /// Add a sticky record OWNER, for ever or for SECONDS (repeatable).
        #[arg(long, value_name = "OWNER[:SECONDS]")]
        sticky: Vec<String>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Read a replica into a file, verifying its checksum.
    Get {
        #[command(flatten)]
        target: Target,
        pnfsid: PnfsId,
        out: PathBuf,
    },
    /// Membership through etcd (docs/operator-guide.md, "Membership through etcd").
    Membership {
        #[command(subcommand)]
        what: MembershipCommand,
    },
    /// Start a three-pool demo cluster with sample data and open the admin shell.
    Demo {
        /// Keep the cluster in DIR (new or empty) so it can run again as separate daemons.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// Write man pages or shell completion scripts for tidepool and tidepool-admin.
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
}

/// `tidepool membership ...`.
#[derive(Debug, Subcommand)]
pub(super) enum MembershipCommand {
    /// Write every pool (addresses, tags, HSMs), pool group, group membership and link of a
    /// cluster file into etcd; what etcd holds besides stays. Prints what it wrote.
    Import {
        /// The cluster file to import.
        cluster: PathBuf,
        /// A pool config whose [membership] table says how to reach etcd (endpoints, prefix,
        /// user, TLS).
        #[arg(long, conflicts_with_all = ["endpoints", "prefix"], required_unless_present = "endpoints")]
        config: Option<PathBuf>,
        /// etcd's client URLs, comma-separated (instead of --config).
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        /// The key prefix of this cluster of pools (with --endpoints).
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Subcommand)]
pub(super) enum Ca {
    /// Make a new CA in DIR: ca.crt (the trust anchor to copy everywhere) and ca.key (0600).
    Init { dir: PathBuf },
    /// Issue a credential from the CA in DIR: DIR/<name>.<role>.crt and .key (0600).
    Issue {
        /// pool, admin or client.
        #[arg(long)]
        role: Role,
        /// The name the certificate carries (a pool's name for role pool).
        #[arg(long)]
        name: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = super::ca::DEFAULT_DAYS)]
        days: u32,
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub(super) enum Generate {
    /// Man pages (section 1) for every command and subcommand.
    Man {
        /// The directory to write them into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Completion scripts for one shell.
    Completions {
        shell: clap_complete::Shell,
        /// The directory to write them into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Everything the package installs: DIR/man/ and DIR/completions/{bash,zsh,fish}/.
    All {
        /// The directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Args)]
pub(super) struct LogArgs {
    /// Log lines as text or as JSON objects (default: the config's [log] format, else text).
    #[arg(long, value_name = "FORMAT")]
    pub(super) log_format: Option<LogFormat>,
    /// The log filter, e.g. `info,tidepool_pool::transfer=debug`; wins over RUST_LOG and the
    /// config's [log] filter (default: warn for dependencies, info for Tidepool).
    #[arg(long, value_name = "FILTER")]
    pub(super) log_filter: Option<String>,
}

#[derive(Args)]
pub(super) struct Target {
    /// The cluster file.
    #[arg(long)]
    pub(super) cluster: PathBuf,
    /// Our certificate (default: client.client.crt beside the cluster file).
    #[arg(long, value_name = "FILE")]
    pub(super) cert: Option<PathBuf>,
    /// Its private key (default: the certificate's path ending in .key).
    #[arg(long, value_name = "FILE")]
    pub(super) cert_key: Option<PathBuf>,
    /// A CA certificate to trust pools from, repeatable (default: ca.crt beside the cluster
    /// file).
    #[arg(long, value_name = "FILE")]
    pub(super) trust: Vec<PathBuf>,
    /// The pool to talk to.
    #[arg(long)]
    pub(super) pool: PoolName,
}

/// The clap definition of `tidepool`, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}
