//! The `tidepool` command line. This is the only layer of the daemon that reads files named
//! on the command line (config, cluster file, key) and the environment (`RUST_LOG`, and
//! `TIDEPOOL_FAULT_POINTS` for crash tests).

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};
use tidepool_p2p::auth::{ClusterKey, Service};
use tidepool_p2p::cluster::ClusterFile;
use tidepool_p2p::conn::Connection;
use tidepool_p2p::frame::WireError;
use tidepool_p2p::message::{CommitState, PutRequest};
use tidepool_p2p::model::{NEVER, StickyRecord};
use tidepool_p2p::{PnfsId, PoolName};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::client;
use crate::config::PoolConfig;
use crate::daemon::{Daemon, Settings};
use crate::faults::{self, FaultPoints};
use crate::pool::now_ms;
use crate::pool_dir::{self, DirError, DirState, Initialised};

#[derive(Parser)]
#[command(name = "tidepool", version, about = "Tidepool storage pool daemon and tools")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one pool daemon.
    Pool {
        /// The pool's config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Check the config, the cluster file, the key and the data directory, print a summary
        /// and exit (0 if the daemon would start, 1 with the daemon's message if not).
        #[arg(long)]
        check: bool,
    },
    /// Create the pool's data directory and mark it as the pool's (a pool never creates it at
    /// start, so a disk that is not mounted never becomes an empty pool).
    Init {
        /// The pool's config file (TOML); its `name` and `data_dir` are used.
        #[arg(long)]
        config: PathBuf,
    },
    /// Write a new random cluster key file, readable by its owner only.
    Keygen {
        #[arg(default_value = "cluster.key")]
        path: PathBuf,
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

#[derive(Subcommand)]
enum Generate {
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
struct Target {
    /// The cluster file.
    #[arg(long)]
    cluster: PathBuf,
    /// The cluster key file (default: cluster.key beside the cluster file).
    #[arg(long)]
    key: Option<PathBuf>,
    /// The pool to talk to.
    #[arg(long)]
    pool: PoolName,
}

/// The clap definition of `tidepool`, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Runs the command line; errors are printed by the caller.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pool { config, check: false } => run_pool(&config),
        Command::Pool { config, check: true } => check_pool(&config),
        Command::Init { config } => init_pool(&config),
        Command::Generate { what } => generate(what),
        Command::Keygen { path } => keygen(&path).map(|()| ExitCode::SUCCESS),
        Command::Put { target, storage, cached: _, precious, sticky, files } => {
            block_on(put(target, storage, precious, sticky, files))
        }
        Command::Get { target, pnfsid, out } => block_on(get(target, pnfsid, out)),
        Command::Demo { keep } => crate::demo::run(keep),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tidepool: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start the async runtime")
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn read_cluster(path: &Path) -> anyhow::Result<ClusterFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read cluster file {}", path.display()))?;
    ClusterFile::parse(&text).map_err(|e| anyhow::anyhow!("cluster file {}: {e}", path.display()))
}

pub fn read_key(path: &Path) -> anyhow::Result<ClusterKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read cluster key file {}", path.display()))?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(file = %path.display(), "cluster key file is readable by others; `chmod 600` it");
    }
    ClusterKey::parse(&text).map_err(|e| anyhow::anyhow!("cluster key file {}: {e}", path.display()))
}

/// Writes a new key file with mode 0600; refuses to overwrite one.
pub fn write_key(path: &Path, key: &ClusterKey) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create key file {} (an existing key is never overwritten)", path.display()))?;
    file.write_all(key.to_file_text().as_bytes())?;
    file.sync_all()?;
    Ok(())
}

fn keygen(path: &Path) -> anyhow::Result<()> {
    write_key(path, &ClusterKey::generate()?)?;
    println!("wrote a new cluster key to {} (mode 0600); copy it to every pool host and the shell", path.display());
    Ok(())
}

fn read_config(config_path: &Path) -> anyhow::Result<PoolConfig> {
    let text =
        std::fs::read_to_string(config_path).with_context(|| format!("read config {}", config_path.display()))?;
    let base = config_path.parent().unwrap_or(Path::new("."));
    PoolConfig::parse(&text, base).map_err(|e| anyhow::anyhow!("config {}: {e}", config_path.display()))
}

/// What `tidepool pool` reads and checks before it opens the repository.
struct Resolved {
    config: PoolConfig,
    cluster: ClusterFile,
    key: ClusterKey,
    admin_addr: SocketAddr,
    data_addr: SocketAddr,
    dir: DirState,
}

/// Reads and checks the config, the cluster file, the key and the data directory: the one
/// path both the daemon and `tidepool pool --check` take, so both fail with the same message.
fn resolve(config_path: &Path) -> anyhow::Result<Resolved> {
    let config = read_config(config_path)?;
    let cluster = read_cluster(&config.cluster_file)?;
    let key = read_key(&config.key_file)?;
    let (admin_addr, data_addr) = config.listen_addresses(&cluster).map_err(anyhow::Error::msg)?;
    let dir = pool_dir::inspect(&config.data_dir, &config.name).map_err(|e| dir_error(e, config_path))?;
    Ok(Resolved { config, cluster, key, admin_addr, data_addr, dir })
}

/// A data-directory error, with the way out when `tidepool init` is it.
fn dir_error(e: DirError, config_path: &Path) -> anyhow::Error {
    if e.needs_init() {
        anyhow::anyhow!(
            "{e}; mount its disk if it is not mounted, or, for a new pool, run `tidepool init --config {}`",
            config_path.display()
        )
    } else {
        e.into()
    }
}

/// `tidepool pool --check`.
fn check_pool(config_path: &Path) -> anyhow::Result<ExitCode> {
    init_logging();
    let r = resolve(config_path)?;
    let c = &r.config;
    let dir = match r.dir {
        DirState::Marked => "marked",
        DirState::Unmarked => "pool metadata without a marker; the daemon marks it at start",
    };
    println!("{}: ok, pool {} would start", config_path.display(), c.name);
    println!("  capacity  {} bytes", c.capacity);
    println!("  data_dir  {} ({dir})", c.data_dir.display());
    println!("  cluster   {} (pools listed: {})", c.cluster_file.display(), r.cluster.pools.len());
    println!("  key       {}", c.key_file.display());
    println!("  admin     {}", r.admin_addr);
    println!("  data      {}", r.data_addr);
    if let Some(m) = &c.metrics {
        println!("  metrics   http://{}/metrics", m.listen);
    }
    Ok(ExitCode::SUCCESS)
}

/// `tidepool init`.
fn init_pool(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = read_config(config_path)?;
    let (dir, name) = (&config.data_dir, &config.name);
    let done = match pool_dir::init(dir, name)? {
        Initialised::Created => "created",
        Initialised::MarkedEmpty => "marked the existing directory",
        Initialised::MarkedExisting => "marked the existing pool directory (its replicas are kept)",
        Initialised::AlreadyMarked => "already initialised; nothing changed",
    };
    println!("{}: {done}; pool {name} can start there", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// `tidepool generate`.
fn generate(what: Generate) -> anyhow::Result<ExitCode> {
    let (written, out) = match what {
        Generate::Man { out } => (crate::generate::man_pages(&out), out),
        Generate::Completions { shell, out } => (crate::generate::completions(shell, &out), out),
        Generate::All { out } => (crate::generate::all(&out), out),
    };
    let written = written.with_context(|| format!("write into {}", out.display()))?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_pool(config_path: &Path) -> anyhow::Result<ExitCode> {
    init_logging();
    let Resolved { config, cluster, key, admin_addr, data_addr, dir } = resolve(config_path)?;
    if dir == DirState::Unmarked {
        pool_dir::mark(&config.data_dir, &config.name)?;
        tracing::info!(
            data_dir = %config.data_dir.display(),
            "marked the pool directory (it held pool metadata from before markers)"
        );
    }
    let metrics_addr = config.metrics.as_ref().map(|m| m.listen);
    // Crash tests arm fault points here (docs/testing.md); nothing else reads it.
    let fault_points = match std::env::var(faults::ENV_VAR) {
        Ok(spec) => spec.parse().map_err(|e| anyhow::anyhow!("{}: {e}", faults::ENV_VAR))?,
        Err(_) => FaultPoints::default(),
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let transfers = config.transfer_settings();
        let settings = Settings {
            transfers,
            name: config.name,
            data_dir: config.data_dir,
            capacity: config.capacity,
            cluster,
            key,
            pin_owner_prefix: config.pin_owner_prefix,
            shutdown_grace: Duration::from_secs(config.shutdown_grace_seconds),
            migration: config.migration.settings(),
            fault_points,
        };
        let opened = Daemon::open(settings).await?;
        let admin = TcpListener::bind(admin_addr).await.with_context(|| format!("listen for admin on {admin_addr}"))?;
        let data = TcpListener::bind(data_addr).await.with_context(|| format!("listen for data on {data_addr}"))?;
        let metrics = match metrics_addr {
            Some(a) => Some(TcpListener::bind(a).await.with_context(|| format!("listen for metrics on {a}"))?),
            None => None,
        };
        let daemon = opened.serve(admin, data)?;
        if let Some(listener) = metrics {
            daemon.serve_metrics(listener)?;
        }
        wait_for_signal().instrument(daemon.span().clone()).await?;
        daemon.shutdown().await?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

fn block_on(f: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

/// Opens a data connection to the target pool.
async fn connect(cluster: &ClusterFile, key: &ClusterKey, pool: &PoolName, client: &str) -> anyhow::Result<Connection> {
    let entry = cluster.pool(pool).ok_or_else(|| anyhow::anyhow!("no pool named {pool} in the cluster file"))?;
    Connection::open(entry.p2p, key, client, Service::Data).await.map_err(|e| match e {
        // The pool answered and refused us: not offline.
        WireError::Remote(_) | WireError::Handshake(_) => {
            anyhow::anyhow!("{pool} at {} refused the connection: {e}", entry.p2p)
        }
        _ => anyhow::anyhow!("{pool} is offline: {e} at {}", entry.p2p),
    })
}

fn load_target(t: &Target) -> anyhow::Result<(ClusterFile, ClusterKey)> {
    let cluster = read_cluster(&t.cluster)?;
    let key_path = t.key.clone().unwrap_or_else(|| t.cluster.with_file_name("cluster.key"));
    Ok((cluster, read_key(&key_path)?))
}

fn parse_sticky(spec: &str) -> anyhow::Result<StickyRecord> {
    let (owner, expire) = match spec.split_once(':') {
        None => (spec, NEVER),
        Some((owner, secs)) => {
            let secs: i64 = secs.parse().with_context(|| format!("--sticky {spec}: SECONDS must be a whole number"))?;
            if secs <= 0 {
                bail!("--sticky {spec}: SECONDS must be positive (omit it for ever)");
            }
            (owner, now_ms() + secs * 1000)
        }
    };
    if owner.is_empty() {
        bail!("--sticky {spec}: the owner must not be empty");
    }
    Ok(StickyRecord::new(owner, expire))
}

async fn put(
    target: Target,
    storage: Option<String>,
    precious: bool,
    sticky: Vec<String>,
    files: Vec<PathBuf>,
) -> anyhow::Result<ExitCode> {
    if let Some(class) = &storage {
        tidepool_p2p::model::check_storage_class(class).with_context(|| "--storage: nothing stored")?;
    }
    let (cluster, key) = load_target(&target)?;
    let sticky = sticky.iter().map(|s| parse_sticky(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let template = PutRequest {
        size: 0,
        storage_class: storage,
        cache_class: None,
        access_latency: None,
        retention_policy: None,
        hsm: None,
        state: if precious { CommitState::Precious } else { CommitState::Cached },
        sticky,
    };
    let mut conn = Some(connect(&cluster, &key, &target.pool, "tidepool-put").await?);
    let mut failed = 0;
    for file in &files {
        if conn.is_none() {
            // The previous file broke the connection; every later file needs a fresh one.
            match connect(&cluster, &key, &target.pool, "tidepool-put").await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    failed += 1;
                    eprintln!("tidepool: {}: not stored: {e:#}", file.display());
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match client::put_file(c, file, &template).await {
            Ok((id, _)) => println!("{id} {}", file.display()),
            Err(e) => {
                failed += 1;
                eprintln!("tidepool: {}: not stored: {e}", file.display());
                if matches!(e, client::ClientError::Wire(_)) {
                    conn = None;
                }
            }
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn get(target: Target, pnfsid: PnfsId, out: PathBuf) -> anyhow::Result<ExitCode> {
    let (cluster, key) = load_target(&target)?;
    {
        let mut conn = connect(&cluster, &key, &target.pool, "tidepool-get").await?;
        let attrs = client::get_file(&mut conn, pnfsid, &out).await?;
        let checksum = attrs.checksum.map(|c| c.to_string()).unwrap_or_else(|| "no checksum".into());
        eprintln!("{pnfsid}: {} bytes, {checksum} verified, written to {}", attrs.size, out.display());
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let key = ClusterKey::generate().unwrap();
        write_key(&path, &key).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let before = std::fs::read(&path).unwrap();
        assert!(write_key(&path, &ClusterKey::generate().unwrap()).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before, "an existing key is left alone");
        assert!(read_key(&path).is_ok());
        std::fs::write(dir.path().join("bad.key"), "not a key").unwrap();
        let err = read_key(&dir.path().join("bad.key")).unwrap_err().to_string();
        assert!(err.contains("bad.key") && err.contains("64 hex digits"), "{err}");
    }

    #[test]
    fn sticky_specs() {
        assert_eq!(parse_sticky("alice").unwrap(), StickyRecord::new("alice", NEVER));
        let timed = parse_sticky("bob:60").unwrap();
        assert_eq!(timed.owner, "bob");
        assert!(timed.expire > now_ms() + 50_000);
        for bad in [":60", "bob:0", "bob:-5", "bob:x"] {
            assert!(parse_sticky(bad).is_err(), "{bad}");
        }
    }
}
