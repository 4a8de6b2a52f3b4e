//! The `tidepool` command line. This is the only layer of the daemon that reads files named
//! on the command line (config, cluster file, credentials) and the environment (`RUST_LOG`, and
//! `TIDEPOOL_FAULT_POINTS` for crash tests; `NOTIFY_SOCKET` and `WATCHDOG_USEC` through
//! `service::Notifier`). It sets up the log, handles the signals (SIGTERM and SIGINT stop the
//! pool, SIGHUP re-reads the config, the cluster file and the credentials) and talks to systemd.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tidepool_p2p::auth::Service;
use tidepool_p2p::cluster::{ClusterFile, PoolEntry};
use tidepool_p2p::conn::Connection;
use tidepool_p2p::frame::WireError;
use tidepool_p2p::membership::{Backend, Source, SourceFuture};
use tidepool_p2p::message::{CommitState, PoolCost, PutRequest};
use tidepool_p2p::model::{NEVER, StickyRecord};
use tidepool_p2p::tls::{Credentials, Role, TlsFiles};
use tidepool_p2p::{PnfsId, PoolName};
use tokio::net::TcpListener;
use tracing::Instrument;

use super::args::{Ca, Cli, Command, Generate, LogArgs, MembershipCommand, Target};
use super::files::{read_cluster, read_config, read_credentials, warn_if_expiring, warn_if_key_readable};
use crate::client;
use crate::credentials::{self, CredentialChange, CredentialSource, ReloadFuture, ReloadRefused};
use crate::daemon::{Daemon, Settings};
use crate::faults::{self, FaultPoints};
use crate::migration_env::PoolEnv;
use crate::pool::{Pool, now_ms};
use crate::process::config::{MembershipBackend, MembershipConfig, PoolConfig};
use crate::process::logging::{FilterSource, LogControl, LogFormat, LogLevels, Reloaded};
use crate::process::pool_dir::{self, DirError, DirState, Initialised};
use crate::process::service::{self, NofileLimit, Notifier, VERSION};
use tidepool_etcd::EtcdSource;

/// Runs the command line; errors are printed by the caller.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pool { config, check: false, log } => run_pool(&config, &log),
        Command::Pool { config, check: true, log } => check_pool(&config, &log),
        Command::Init { config } => init_pool(&config),
        Command::Generate { what } => generate(what),
        Command::Ca { what: Ca::Init { dir } } => crate::process::ca::run_init(&dir).map(|()| ExitCode::SUCCESS),
        Command::Ca { what: Ca::Issue { role, name, days, dir } } => {
            crate::process::ca::run_issue(&dir, role, &name, days).map(|()| ExitCode::SUCCESS)
        }
        Command::Put { target, storage, cached: _, precious, sticky, files } => {
            block_on(put(target, storage, precious, sticky, files))
        }
        Command::Get { target, pnfsid, out } => block_on(get(target, pnfsid, out)),
        Command::Demo { keep } => crate::process::demo::run(keep),
        Command::Membership { what: MembershipCommand::Import { cluster, config, endpoints, prefix } } => {
            block_on(import(cluster, config, endpoints, prefix))
        }
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

/// The filter in force at start and where it came from: `--log-filter`, else `RUST_LOG` (an
/// empty one counts as unset), else the config's `[log] filter` if it has one (`configured`),
/// else the default (which `config` then holds). A filter that does not parse is refused: the
/// pool does not start with a log it was not asked for.
fn resolve_filter(
    flag: Option<&str>,
    env: Option<&str>,
    config: &LogLevels,
    configured: bool,
) -> anyhow::Result<(LogLevels, FilterSource)> {
    let parse = |text: &str, from: &str| {
        text.parse::<LogLevels>().map_err(|e| anyhow::anyhow!("invalid log filter {text:?} in {from}: {e}"))
    };
    if let Some(text) = flag {
        return Ok((parse(text, "--log-filter")?, FilterSource::Flag));
    }
    if let Some(text) = env.filter(|t| !t.trim().is_empty()) {
        return Ok((parse(text, "RUST_LOG")?, FilterSource::Env));
    }
    Ok((config.clone(), if configured { FilterSource::Config } else { FilterSource::Default }))
}

/// Logs to stderr in `format`, through a filter that `log set` and SIGHUP can replace.
fn init_logging(format: LogFormat, levels: LogLevels, source: FilterSource, config: LogLevels) -> Arc<LogControl> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(levels.env_filter());
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
    });
    let json =
        (format == LogFormat::Json).then(|| tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr));
    let _ = tracing_subscriber::registry().with(filter).with(text).with(json).try_init();
    LogControl::new(levels, source, config, move |f| handle.reload(f).map_err(|e| e.to_string()))
}

/// What `tidepool pool` reads and checks before it opens the repository.
struct Resolved {
    config: PoolConfig,
    cluster: ClusterFile,
    credentials: Credentials,
    admin_addr: SocketAddr,
    data_addr: SocketAddr,
    dir: DirState,
    /// The log filter in force at start, where it came from, and the config's own.
    levels: LogLevels,
    source: FilterSource,
    config_levels: LogLevels,
}

/// Reads and checks the config, the log filter, the cluster file, the credentials and the data
/// directory: the one path both the daemon and `tidepool pool --check` take, so both fail
/// with the same message.
fn resolve(config_path: &Path, log: &LogArgs) -> anyhow::Result<Resolved> {
    let config = read_config(config_path)?;
    let config_levels = config.log.levels().map_err(anyhow::Error::msg)?;
    let env = match std::env::var("RUST_LOG") {
        Ok(text) => Some(text),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => bail!("invalid log filter in RUST_LOG: not UTF-8"),
    };
    let configured = config.log.filter.is_some();
    let (levels, source) = resolve_filter(log.log_filter.as_deref(), env.as_deref(), &config_levels, configured)?;
    // With etcd the membership is read once the runtime runs (`run_pool`); the listen
    // addresses are the config's own.
    let cluster = match &config.cluster_file {
        Some(path) if config.membership.backend == MembershipBackend::File => read_cluster(path)?,
        _ => ClusterFile { pools: Vec::new(), links: Vec::new() },
    };
    let credentials = read_credentials(&config.tls.files())?;
    let ours = credentials.identity();
    if ours.role != Role::Pool || ours.name != config.name.as_str() {
        bail!(
            "config {}: the certificate {} is {ours}, not pool:{}; issue one with `tidepool ca issue --role pool --name {}`",
            config_path.display(),
            config.tls.cert.display(),
            config.name,
            config.name
        );
    }
    let (admin_addr, data_addr) = config.listen_addresses(&cluster).map_err(anyhow::Error::msg)?;
    if let Some(m) = config.metrics.as_ref().filter(|m| m.listen == admin_addr || m.listen == data_addr) {
        bail!("config {}: metrics.listen {} is also the pool's admin or data address", config_path.display(), m.listen);
    }
    let dir = pool_dir::inspect(&config.data_dir, &config.name).map_err(|e| dir_error(e, config_path))?;
    Ok(Resolved { config, cluster, credentials, admin_addr, data_addr, dir, levels, source, config_levels })
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
fn check_pool(config_path: &Path, log: &LogArgs) -> anyhow::Result<ExitCode> {
    let r = resolve(config_path, log)?;
    let c = &r.config;
    let dir = match r.dir {
        DirState::Marked => "marked",
        DirState::Unmarked => "pool metadata without a marker; the daemon marks it at start",
    };
    println!("{}: ok, pool {} would start", config_path.display(), c.name);
    println!("  capacity  {} bytes", c.capacity);
    println!("  data_dir  {} ({dir})", c.data_dir.display());
    match (&c.cluster_file, c.membership.backend) {
        (Some(file), MembershipBackend::File) => {
            println!("  cluster   {} (pools listed: {})", file.display(), r.cluster.pools.len())
        }
        _ => println!("  cluster   etcd at {} (prefix {})", c.membership.endpoints.join(","), c.membership.prefix),
    }
    let info = r.credentials.info();
    println!("  cert      {} ({}, valid until {})", c.tls.cert.display(), info.identity, info.expiry_date());
    if let Some(warning) = tidepool_p2p::tls::key_mode_warning(&c.tls.key) {
        println!("  warning   {warning}");
    }
    for t in &c.tls.trust {
        println!("  trust     {}", t.display());
    }
    println!("  admin     {}", r.admin_addr);
    println!("  data      {}", r.data_addr);
    if let Some(m) = &c.metrics {
        println!("  metrics   http://{}/metrics", m.listen);
    }
    println!("  log       {} (from {})", r.levels, r.source);
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
    // A marker written on the root file system would let the pool start there whenever its
    // own disk is not mounted: say so (small sites and tests may mean it).
    use std::os::unix::fs::MetadataExt;
    if let (Ok(d), Ok(root)) = (std::fs::metadata(dir), std::fs::metadata("/"))
        && d.dev() == root.dev()
    {
        eprintln!(
            "tidepool: note: {} is on the root file system; if the pool's disk is to be mounted there, mount it \
             and run `tidepool init` again, or the pool would start on the root file system while the disk is \
             not mounted",
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `tidepool generate`.
fn generate(what: Generate) -> anyhow::Result<ExitCode> {
    let (written, out) = match what {
        Generate::Man { out } => (crate::process::generate::man_pages(&out), out),
        Generate::Completions { shell, out } => (crate::process::generate::completions(shell, &out), out),
        Generate::All { out } => (crate::process::generate::all(&out), out),
    };
    let written = written.with_context(|| format!("write into {}", out.display()))?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_pool(config_path: &Path, log: &LogArgs) -> anyhow::Result<ExitCode> {
    let Resolved { config, cluster, credentials, admin_addr, data_addr, dir, levels, source, config_levels } =
        resolve(config_path, log)?;
    let format = log.log_format.unwrap_or(config.log.format);
    let shown = levels.to_string();
    let log_control = init_logging(format, levels, source, config_levels);
    tracing::info!(version = VERSION, config = %config_path.display(), %format, filter = %shown, from = %source, "tidepool starting");
    // `resolve` read the credentials before the log was set up: its warnings are given now.
    warn_if_key_readable(&config.tls.key);
    warn_if_expiring(&credentials);
    match service::raise_nofile_limit() {
        Ok(NofileLimit::Raised { from, to }) => tracing::info!("open-file limit raised from {from} to {to}"),
        Ok(NofileLimit::AlreadyAtMax(n)) => tracing::info!("open-file limit is {n}, the hard limit"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
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
    let notifier = Notifier;
    rt.block_on(async move {
        // SIGHUP is caught before the repository opens: one during restart recovery waits for
        // the loop below instead of killing the pool. SIGTERM and SIGINT keep their default
        // action until the pool serves, so a pool stopped during a long recovery stops at once
        // (which is safe: recovery runs again at the next start).
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        // etcd: reached before the repository opens; unreachable is a clear error
        // (docs/operator-guide.md, "When etcd is lost").
        let (cluster, etcd) = match config.membership.backend {
            MembershipBackend::File => (cluster, None),
            MembershipBackend::Etcd => {
                let (cluster, etcd) = connect_etcd(&config, admin_addr, data_addr).await?;
                (cluster, Some(etcd))
            }
        };
        let transfers = config.transfer_settings();
        let settings = Settings {
            transfers,
            name: config.name.clone(),
            data_dir: config.data_dir.clone(),
            capacity: config.capacity,
            cluster,
            credentials,
            pin_owner_prefix: config.pin_owner_prefix.clone(),
            shutdown_grace: Duration::from_secs(config.shutdown_grace_seconds),
            migration: config.migration.settings(),
            fault_points,
        };
        let opened = Daemon::open(settings).await?;
        let _ = opened.pool().log.set(log_control.clone());
        let pool = opened.pool().clone();
        match (&etcd, &config.cluster_file) {
            (Some((etcd, _)), _) => {
                let _ = pool.etcd.set(etcd.clone());
                pool.cluster.set_source(Arc::new(EtcdSource::new(etcd.clone(), &pool.cluster, config.name.clone())))
            }
            (None, Some(path)) => {
                pool.cluster.set_source(Arc::new(FileSource { path: path.clone(), pool: Arc::downgrade(&pool) }))
            }
            (None, None) => {}
        }
        if let Some((_, alive)) = &etcd {
            pool.cluster.set_alive(alive.clone());
        }
        let _ = pool
            .credential_source
            .set(Arc::new(TlsSource { config_path: config_path.to_path_buf(), pool: Arc::downgrade(&pool) }));
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
        // In etcd: registered under a lease, the cost published, the membership watched.
        let registration = etcd.map(|(etcd, _)| {
            let node = daemon.node().clone();
            let entry = PoolEntry {
                name: config.name.clone(),
                p2p: data_addr,
                admin: admin_addr,
                groups: Vec::new(),
                tags: config.membership.tags.clone(),
                hsm: config.membership.hsm.clone(),
            };
            let cost = Box::new(move || match node.try_migration() {
                Some(m) => m.cost(),
                None => tidepool_migration::env::Env::cost(&PoolEnv::new(&node.transfers)),
            });
            let stop = tokio_util::sync::CancellationToken::new();
            let me = tidepool_etcd::Registration { entry, cost };
            let task = tokio::spawn(
                tidepool_etcd::run(etcd, daemon.pool().cluster.clone(), me, stop.clone())
                    .instrument(daemon.span().clone()),
            );
            (stop, task)
        });
        let mut signals = Signals::new(hup)?;
        // The repository is open and both listeners accept: ready.
        notifier.ready(&format!("serving {} on admin {admin_addr}, data {data_addr}", config.name));
        let mut in_force = Reloadable {
            config_path: config_path.to_path_buf(),
            config,
            pool: daemon.pool().clone(),
            log: log_control,
        };
        let mut watchdog = notifier.watchdog_interval().map(tokio::time::interval);
        if let Some(w) = &watchdog {
            daemon.span().in_scope(|| tracing::info!(every = ?w.period(), "feeding the systemd watchdog"));
        }
        loop {
            let tick = async {
                match watchdog.as_mut() {
                    Some(w) => w.tick().await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                s = signals.next() => s,
                _ = tick => {
                    notifier.watchdog();
                    continue;
                }
            };
            match event {
                Signal::Stop(name) => {
                    daemon.span().in_scope(|| tracing::info!("{name} received"));
                    break;
                }
                Signal::Reload => in_force.reload().instrument(daemon.span().clone()).await,
            }
        }
        notifier.stopping();
        // Out of etcd first: the other pools stop choosing this one at once.
        if let Some((stop, mut task)) = registration {
            stop.cancel();
            if tokio::time::timeout(Duration::from_secs(3), &mut task).await.is_err() {
                task.abort();
            }
        }
        daemon.shutdown().await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `tidepool membership import`: a cluster file into etcd.
async fn import(
    cluster: PathBuf,
    config: Option<PathBuf>,
    endpoints: Vec<String>,
    prefix: Option<String>,
) -> anyhow::Result<ExitCode> {
    let file = read_cluster(&cluster)?;
    let settings = match config {
        Some(path) => etcd_settings(&read_config(&path)?.membership)?,
        None => {
            let mut s = tidepool_etcd::EtcdSettings::new(endpoints);
            if let Some(p) = prefix {
                s.prefix = p;
            }
            s
        }
    };
    let etcd = tidepool_etcd::Etcd::connect(&settings).await?;
    let lines = etcd.import(&file).await?;
    for l in &lines {
        println!("{l}");
    }
    println!(
        "imported {} into etcd at {} (prefix {}): {} pools, {} pool groups, {} links; {} keys written",
        cluster.display(),
        settings.endpoints.join(","),
        settings.prefix,
        file.pools.len(),
        file.groups().len(),
        file.links.len(),
        lines.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Connects to etcd as `[membership]` says, registers this pool's addresses and reads the
/// membership: the view and the pools alive. A clear error if etcd cannot be reached.
async fn connect_etcd(
    config: &PoolConfig,
    admin: SocketAddr,
    data: SocketAddr,
) -> anyhow::Result<(ClusterFile, (tidepool_etcd::Etcd, std::collections::BTreeSet<PoolName>))> {
    let settings = etcd_settings(&config.membership)?;
    let etcd = tidepool_etcd::Etcd::connect(&settings).await.map_err(|e| {
        anyhow::anyhow!(
            "{e}; the pool does not start without its membership (docs/operator-guide.md, \"When etcd is lost\")"
        )
    })?;
    let entry = PoolEntry {
        name: config.name.clone(),
        p2p: data,
        admin,
        groups: Vec::new(),
        tags: config.membership.tags.clone(),
        hsm: config.membership.hsm.clone(),
    };
    // Another daemon registered under this name refuses the start; one killed lately (its
    // lease not yet lapsed) is waited for.
    etcd.wait_until_free(&config.name, settings.lease + Duration::from_secs(2)).await?;
    etcd.put_pool(&entry).await?;
    let snap = etcd.load().await?;
    tracing::info!(
        endpoints = %settings.endpoints.join(","),
        pools = snap.cluster.pools.len(),
        alive = snap.alive.len(),
        "membership read from etcd"
    );
    Ok((snap.cluster, (etcd, snap.alive)))
}

/// The etcd settings of a `[membership]` table, with the password and TLS files read.
pub fn etcd_settings(m: &MembershipConfig) -> anyhow::Result<tidepool_etcd::EtcdSettings> {
    let read = |p: &Path, what: &str| std::fs::read(p).with_context(|| format!("read {what} {}", p.display()));
    // The password and the private key: refused if group or others may read them.
    let secret = |p: &Path, what: &str| super::files::read_secret(p, what);
    let mut s = tidepool_etcd::EtcdSettings::new(m.endpoints.clone());
    s.prefix = m.prefix.clone();
    s.lease = Duration::from_secs(m.lease_seconds);
    s.publish = Duration::from_secs(m.publish_seconds);
    if let (Some(user), Some(file)) = (&m.user, &m.password_file) {
        let password = String::from_utf8(secret(file, "membership.password_file")?)
            .map_err(|_| anyhow::anyhow!("membership.password_file {} is not UTF-8", file.display()))?;
        s.user = Some((user.clone(), password.trim_end_matches(['\n', '\r']).to_string()));
    }
    if let Some(ca) = &m.ca_file {
        let identity = match (&m.cert_file, &m.key_file) {
            (Some(c), Some(k)) => Some((read(c, "membership.cert_file")?, secret(k, "membership.key_file")?)),
            _ => None,
        };
        s.tls = Some(tidepool_etcd::TlsFiles { ca: read(ca, "membership.ca_file")?, identity });
    }
    Ok(s)
}

/// The signals the daemon acts on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

enum Signal {
    /// SIGTERM or SIGINT: stop the pool.
    Stop(&'static str),
    /// SIGHUP: read the config and the cluster file again.
    Reload,
}

impl Signals {
    /// Catches SIGTERM and SIGINT from now on; `hup` catches SIGHUP already.
    fn new(hup: tokio::signal::unix::Signal) -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())?, hup })
    }

    /// The next signal (cancel-safe: `Signal::recv` is).
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.int.recv() => Signal::Stop("SIGINT"),
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// What SIGHUP compares against and changes: the config in force, the pool (its cluster
/// view) and the log control.
struct Reloadable {
    config_path: PathBuf,
    config: PoolConfig,
    pool: Arc<Pool>,
    log: Arc<LogControl>,
}

impl Reloadable {
    /// Reads the config and the cluster file again. The log filter and the cluster file apply
    /// at once; every other config change is logged as waiting for a restart. A file that
    /// cannot be read or parsed changes nothing (and is logged); the pool keeps running either
    /// way.
    async fn reload(&mut self) {
        tracing::info!(config = %self.config_path.display(), "SIGHUP received: reading the config and the cluster file again");
        // One reload at a time, from reading the config to putting it in force: a SIGHUP that
        // read the files before an edit cannot finish after a `tls reload` that read them after.
        let _one = RELOAD.lock().await;
        let config = match read_config_again(&self.config_path).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("SIGHUP: {e}; nothing changed");
                return;
            }
        };
        match config
            .log
            .levels()
            .map_err(anyhow::Error::msg)
            .and_then(|l| self.log.reload(l).map_err(anyhow::Error::msg))
        {
            Ok(Reloaded::Applied { from, to }) => tracing::info!("SIGHUP: log filter changed from {from} to {to}"),
            Ok(Reloaded::Unchanged) => tracing::info!("SIGHUP: log filter unchanged ({})", self.log.levels()),
            Ok(Reloaded::Overridden(source)) => {
                tracing::info!("SIGHUP: log filter kept: {source} overrides the config's [log] filter")
            }
            Err(e) => tracing::error!("SIGHUP: log filter not changed: {e:#}"),
        }
        for key in config_changes(&self.config, &config) {
            tracing::warn!("SIGHUP: config key {key} changed; it takes effect at the next restart");
        }
        // New credentials (a renewed certificate, another trust anchor during a change of CA,
        // a longer deny list) apply to the connections made from now on.
        let _ = apply_credentials(&self.pool, config.tls.files(), "SIGHUP").await;
        let Some(path) = self.config.cluster_file.clone().filter(|_| self.pool.cluster.backend() == Backend::File)
        else {
            tracing::info!("SIGHUP: the membership comes from etcd; `psu reload` reads it again");
            return;
        };
        match tokio::task::spawn_blocking(move || read_cluster(&path)).await {
            Ok(Ok(cluster)) => {
                let _ = apply_cluster(&self.pool, cluster, "SIGHUP");
            }
            Ok(Err(e)) => {
                let e = format!("{e:#}").split_whitespace().collect::<Vec<_>>().join(" ");
                tracing::error!("SIGHUP: {e}; the cluster file in force is unchanged")
            }
            Err(e) => tracing::error!("SIGHUP: reading the cluster file failed: {e}"),
        }
    }
}

/// The config read again off the runtime (SIGHUP, `tls reload`); why not, on one line (a TOML
/// error spans several).
async fn read_config_again(path: &Path) -> Result<PoolConfig, String> {
    let path = path.to_path_buf();
    match tokio::task::spawn_blocking(move || read_config(&path)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("{e:#}").split_whitespace().collect::<Vec<_>>().join(" ")),
        Err(e) => Err(format!("reading the config failed: {e}")),
    }
}

/// Held by a reload (SIGHUP, `tls reload`, `psu reload` of the cluster file) from reading its
/// files to putting them in force: one that read them before an edit cannot land after one that
/// read them after.
static RELOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Loads the `[tls]` files of the config read again and puts them in force if they pass
/// [`credentials::check`] (unexpired, this pool's identity, chaining to the new trust anchors), and logs
/// what changed or why the credentials in force were kept, each line starting with `why`
/// (`SIGHUP`, `tls reload`): the one path of both.
async fn apply_credentials(pool: &Pool, files: TlsFiles, why: &str) -> Result<CredentialChange, ReloadRefused> {
    let loaded = tokio::task::spawn_blocking(move || {
        warn_if_key_readable(&files.key);
        Credentials::load(&files)
    })
    .await;
    let result = match loaded {
        Ok(Ok(creds)) => credentials::check(&pool.credentials, &creds, chrono::Utc::now().timestamp()).map(|()| {
            let change = CredentialChange::between(&pool.credentials, &creds);
            pool.credentials.reload(&creds);
            warn_if_expiring(&creds);
            change
        }),
        Ok(Err(e)) => Err(ReloadRefused::Files(e.to_string())),
        Err(e) => Err(ReloadRefused::Files(format!("reading them failed: {e}"))),
    };
    match &result {
        Ok(change) => tracing::info!(
            identity = %change.identity,
            "{why}: credentials reloaded: {}",
            change.lines()[1..].join("; ")
        ),
        Err(e) => tracing::error!("{why}: {e}; the credentials in force are unchanged"),
    }
    result
}

/// The config's `[tls]` as the source `tls reload` reads the credentials again from.
struct TlsSource {
    config_path: PathBuf,
    pool: std::sync::Weak<Pool>,
}

impl CredentialSource for TlsSource {
    fn reload(&self) -> ReloadFuture<'_> {
        Box::pin(async move {
            let Some(pool) = self.pool.upgrade() else {
                tracing::error!("tls reload: the pool is shutting down; the credentials in force are unchanged");
                return Err(ReloadRefused::Config("the pool is shutting down".into()));
            };
            let _one = RELOAD.lock().await;
            let config = match read_config_again(&self.config_path).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("tls reload: {e}; the credentials in force are unchanged");
                    return Err(ReloadRefused::Config(e));
                }
            };
            apply_credentials(&pool, config.tls.files(), "tls reload").await
        })
    }
}

/// Puts the cluster file read again in force, unless it no longer lists this pool, and logs
/// what changed, each line starting with `why` (`SIGHUP`, `psu reload`). The pool's own
/// addresses stay where its listeners are bound until a restart. The lines of what changed, or
/// why nothing was applied.
fn apply_cluster(pool: &Pool, cluster: ClusterFile, why: &str) -> Result<Vec<String>, String> {
    let changes = tidepool_p2p::membership::cluster_changes(&pool.cluster.get(), &cluster);
    if changes.is_empty() {
        tracing::info!("{why}: cluster file unchanged");
        return Ok(changes);
    }
    let Some(me) = cluster.pool(&pool.name) else {
        let e = format!(
            "the cluster file no longer lists this pool ({}); it was not applied (a restart would fail)",
            pool.name
        );
        tracing::error!("{why}: {e}");
        return Err(e);
    };
    if let Some(started) = pool.started.get()
        && (me.p2p != started.data || me.admin.port() != started.admin.port())
    {
        tracing::warn!(
            "{why}: this pool's addresses changed in the cluster file; its listeners stay on admin {} and data {} until a restart",
            started.admin,
            started.data
        );
    }
    pool.cluster.replace(cluster);
    for change in &changes {
        tracing::info!("{why}: cluster file: {change}; applied");
    }
    Ok(changes)
}

/// The cluster file as the pool's membership source: `psu reload` reads it again (as SIGHUP
/// does); costs are asked of the pools themselves.
struct FileSource {
    path: PathBuf,
    pool: std::sync::Weak<Pool>,
}

impl Source for FileSource {
    fn backend(&self) -> Backend {
        Backend::File
    }

    #[allow(clippy::type_complexity)] // the shape of a job's refresh answers
    fn costs<'a>(&'a self, _pools: &'a [PoolName]) -> SourceFuture<'a, Option<Vec<(PoolName, Option<PoolCost>)>>> {
        Box::pin(async { None })
    }

    fn reload(&self) -> SourceFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move {
            let Some(pool) = self.pool.upgrade() else {
                return Err("the pool is shutting down".into());
            };
            let _one = RELOAD.lock().await;
            let path = self.path.clone();
            let read = tokio::task::spawn_blocking(move || read_cluster(&path)).await;
            match read {
                Ok(Ok(cluster)) => apply_cluster(&pool, cluster, "psu reload"),
                Ok(Err(e)) => Err(format!("{e:#}; the cluster file in force is unchanged")),
                Err(e) => Err(format!("reading the cluster file failed: {e}")),
            }
        })
    }
}

/// The config keys (`key` or `table.key`) whose values differ, except `log.filter`, which
/// SIGHUP applies.
fn config_changes(old: &PoolConfig, new: &PoolConfig) -> Vec<String> {
    fn flatten(prefix: &str, value: &toml::Value, into: &mut std::collections::BTreeMap<String, String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    flatten(&key, v, into);
                }
            }
            other => {
                into.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let table = |c: &PoolConfig| {
        let mut keys = std::collections::BTreeMap::new();
        if let Ok(v) = toml::Value::try_from(c) {
            flatten("", &v, &mut keys);
        }
        keys
    };
    let (a, b) = (table(old), table(new));
    let mut keys: Vec<String> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect();
    keys.sort();
    keys.dedup();
    keys.retain(|k| k != "log.filter" && !k.starts_with("tls."));
    keys
}

fn block_on(f: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

/// Opens a data connection to the target pool.
async fn connect(
    cluster: &ClusterFile,
    creds: &Credentials,
    pool: &PoolName,
    client: &str,
) -> anyhow::Result<Connection> {
    let entry = cluster.pool(pool).ok_or_else(|| anyhow::anyhow!("no pool named {pool} in the cluster file"))?;
    let conn = Connection::open(entry.p2p, creds, client, Service::Data).await.map_err(|e| match e {
        // The pool answered and refused us: not offline.
        WireError::Remote(_) | WireError::Handshake(_) => {
            anyhow::anyhow!("{pool} at {} refused the connection: {e}", entry.p2p)
        }
        _ => anyhow::anyhow!("{pool} is offline: {e} at {}", entry.p2p),
    })?;
    // Another pool's certificate at that address is not the pool we meant: nothing is sent
    // to it or taken from it.
    if conn.pool != pool.as_str() {
        anyhow::bail!(
            "{} answered at {}, not {pool}: check the cluster file's address for {pool}",
            conn.pool,
            entry.p2p
        );
    }
    Ok(conn)
}

/// The cluster file and our client credentials: `--cert`, `--cert-key` and `--trust`, or by
/// default `client.client.crt`, `client.client.key` and `ca.crt` beside the cluster file
/// (`docs/security.md`).
fn load_target(t: &Target) -> anyhow::Result<(ClusterFile, Credentials)> {
    let cluster = read_cluster(&t.cluster)?;
    let beside = t.cluster.parent().unwrap_or(Path::new(""));
    let mut files = TlsFiles::in_dir(beside, Role::Client, "client");
    if let Some(cert) = &t.cert {
        files.cert = cert.clone();
        files.key = cert.with_extension("key");
    }
    if let Some(key) = &t.cert_key {
        files.key = key.clone();
    }
    if !t.trust.is_empty() {
        files.trust = t.trust.clone();
    }
    // `put` and `get` log nowhere: the warning goes to stderr.
    if let Some(warning) = tidepool_p2p::tls::key_mode_warning(&files.key) {
        eprintln!("tidepool: warning: {warning}");
    }
    Ok((cluster, read_credentials(&files)?))
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
    fn the_log_filter_comes_from_the_flag_then_rust_log_then_the_config() {
        let config: LogLevels = "info,sled=warn".parse().unwrap();
        let check = |flag, env, want: &str, from| {
            let (levels, source) = resolve_filter(flag, env, &config, true).unwrap();
            assert_eq!((levels.to_string().as_str(), source), (want, from), "{flag:?} {env:?}");
        };
        let (_, source) = resolve_filter(None, None, &config, false).unwrap();
        assert_eq!(source, FilterSource::Default, "a config without [log] filter has the default");
        check(None, None, "info,sled=warn", FilterSource::Config);
        check(None, Some(""), "info,sled=warn", FilterSource::Config);
        check(None, Some("debug"), "debug", FilterSource::Env);
        check(Some("trace"), Some("debug"), "trace", FilterSource::Flag);
        let err = resolve_filter(None, Some("verbose"), &config, true).unwrap_err().to_string();
        assert!(err.starts_with("invalid log filter \"verbose\" in RUST_LOG: 'verbose' is not a level"), "{err}");
        let err = resolve_filter(Some("x=loud"), None, &config, true).unwrap_err().to_string();
        assert!(err.contains("in --log-filter"), "{err}");
    }

    #[test]
    fn the_pool_command_takes_the_log_flags() {
        let cli = Cli::try_parse_from([
            "tidepool",
            "pool",
            "--config",
            "p.toml",
            "--log-format",
            "json",
            "--log-filter",
            "debug",
        ])
        .unwrap();
        let Command::Pool { log, .. } = cli.command else { panic!("not the pool command") };
        assert_eq!((log.log_format, log.log_filter.as_deref()), (Some(LogFormat::Json), Some("debug")));
        assert!(Cli::try_parse_from(["tidepool", "pool", "--config", "p.toml", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn config_changes_name_the_keys() {
        let base = "name = \"p\"\ndata_dir = \"d\"\ncapacity = 10\ncluster_file = \"c\"\n";
        let a = PoolConfig::parse(base, Path::new("/")).unwrap();
        let b = PoolConfig::parse(
            &format!("{base}p2p_max_active = 3\n[migration]\nrefresh_seconds = 5\n[log]\nfilter = \"debug\"\n"),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(config_changes(&a, &a), Vec::<String>::new());
        assert_eq!(config_changes(&a, &b), ["migration.refresh_seconds", "p2p_max_active"]);
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
