//! `tidepool demo`: three pools on loopback with sample data, then the admin shell.
//!
//! pool1 and pool2 are in group `disk`, pool3 in `cache_pools`. pool1 gets sample replicas in
//! several storage classes, cached and precious, some sticky and some pinned. With `--keep DIR`
//! the cluster is written to DIR (cluster file, a CA with a certificate for each pool, one
//! admin and one client, one config per pool, their data) and can be run again as separate
//! daemons: `tidepool pool --config DIR/pool1.toml`, `tidepool-admin --cluster DIR/cluster.toml`.
//! Every connection runs over TLS with these credentials (`docs/security.md`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tidepool_p2p::PnfsId;
use tidepool_p2p::cluster::{ClusterFile, LinkEntry, PoolEntry};
use tidepool_p2p::model::{AccessLatency, FileAttributes, NEVER, ReplicaState, RetentionPolicy, StickyRecord};
use tidepool_p2p::tls::{Credentials, Role};
use tokio::net::TcpListener;

use crate::daemon::{Daemon, Settings};
use crate::io::blocking;
use crate::pool::now_ms;
use crate::process::ca;
use crate::process::config::{MetricsConfig, PoolConfig, TlsConfig};
use crate::process::files::read_credentials;
use crate::repository::Repository;
use crate::transfer::TransferSettings;

const POOLS: [(&str, &str); 3] = [("pool1", "disk"), ("pool2", "disk"), ("pool3", "cache_pools")];
const CAPACITY: u64 = 1 << 30;
/// How many sample replicas pool1 gets.
pub const SAMPLE_REPLICAS: u32 = 240;

const TOUR: &str = "\
Tidepool demo: pool1, pool2 (group disk) and pool3 (group cache_pools) are running; pool1 holds sample replicas.
try: cd pool1; info; rep ls; rep ls -s; rep ls -l=s; help rep set sticky
     rep set sticky -o=alice <pnfsid> on; rep sticky ls <pnfsid>; pool disable -rdonly; pool enable
     migration move -concurrency=2 -rate=1M pool2; migration ls; migration info 1; help migration copy
     .. goes back; ls lists the pools; exit (or Ctrl-D) stops the demo";

/// Runs the demo; returns the shell's exit code.
pub fn run(keep: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let temp;
    let dir = match &keep {
        Some(dir) => {
            if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
                bail!(
                    "{} is not empty; a kept demo runs again with `tidepool pool --config {}/pool1.toml` (and pool2, pool3)",
                    dir.display(),
                    dir.display()
                );
            }
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            dir.canonicalize()?
        }
        None => {
            temp = tempfile::Builder::new().prefix("tidepool-demo-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    init_demo_logging(&dir.join("demo.log"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (daemons, cluster, admin, metrics) = rt.block_on(start_cluster(&dir))?;
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".tidepool_admin_history"));
    let mut banner = TOUR.to_string();
    banner.push_str("\nPrometheus metrics (docs/metrics.md):");
    for (name, addr) in &metrics {
        banner.push_str(&format!(" {name} http://{addr}/metrics"));
    }
    if let Some(dir) = &keep {
        banner.push_str(&format!(
            "\nkept in {}: run it again with `tidepool pool --config {}/pool1.toml` (and pool2, pool3)",
            dir.display(),
            dir.display()
        ));
    }
    let options = tidepool_admin::ShellOptions {
        cluster,
        credentials: admin,
        commands: Vec::new(),
        history,
        banner: Some(banner),
        start_in: None,
    };
    let shell = std::thread::spawn(move || tidepool_admin::run(options));
    let code = match shell.join() {
        Ok(result) => result?,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    rt.block_on(async {
        for d in daemons {
            d.shutdown().await?;
        }
        anyhow::Ok(())
    })?;
    Ok(code)
}

fn init_demo_logging(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

/// Binds the listeners, writes the cluster file, a CA and credentials (each pool's, one admin's
/// and one client's) and the pool configs to `dir`, starts the pools and fills pool1. Returns
/// the admin credentials for the shell.
/// Each pool also serves its metrics on a free loopback port (returned, by pool name).
async fn start_cluster(
    dir: &Path,
) -> anyhow::Result<(Vec<Daemon>, ClusterFile, Credentials, Vec<(String, SocketAddr)>)> {
    let mut listeners = Vec::new();
    let mut entries = Vec::new();
    for (name, group) in POOLS {
        let admin = TcpListener::bind("127.0.0.1:0").await?;
        let data = TcpListener::bind("127.0.0.1:0").await?;
        let metrics = TcpListener::bind("127.0.0.1:0").await?;
        entries.push(PoolEntry {
            name: name.parse()?,
            p2p: data.local_addr()?,
            admin: admin.local_addr()?,
            groups: vec![group.to_string()],
            tags: [("host".to_string(), "localhost".to_string())].into(),
            hsm: if name == "pool3" { Vec::new() } else { vec!["osm".to_string()] },
        });
        listeners.push((admin, data, metrics));
    }
    let cluster = ClusterFile {
        pools: entries,
        links: vec![
            LinkEntry { name: "disk-link".into(), groups: vec!["disk".into()] },
            LinkEntry { name: "cache-link".into(), groups: vec!["cache_pools".into()] },
        ],
    };
    let authority = ca::init(dir)?;
    for (role, name) in [(Role::Admin, "admin"), (Role::Client, "client")] {
        ca::issue_into(&authority, dir, role, name, ca::DEFAULT_DAYS)?;
    }
    let admin = read_credentials(&tidepool_p2p::tls::TlsFiles::in_dir(dir, Role::Admin, "admin"))?;
    std::fs::write(dir.join("cluster.toml"), cluster.to_toml())?;
    let mut daemons = Vec::new();
    let mut metrics_at = Vec::new();
    for ((name, _), (admin, data, metrics)) in POOLS.iter().zip(listeners) {
        let config = PoolConfig {
            name: name.parse()?,
            data_dir: PathBuf::from(name),
            capacity: CAPACITY,
            cluster_file: Some(PathBuf::from("cluster.toml")),
            tls: TlsConfig {
                cert: PathBuf::from(format!("{name}.pool.crt")),
                key: PathBuf::from(format!("{name}.pool.key")),
                trust: vec![PathBuf::from("ca.crt")],
                deny: Vec::new(),
            },
            admin_listen: None,
            p2p_listen: None,
            pin_owner_prefix: "PinManager".into(),
            shutdown_grace_seconds: 10,
            p2p_max_active: TransferSettings::default().max_active,
            p2p_max_outgoing: TransferSettings::default().max_outgoing,
            p2p_no_progress_seconds: TransferSettings::default().no_progress.as_secs(),
            migration: Default::default(),
            membership: Default::default(),
            metrics: Some(MetricsConfig { listen: metrics.local_addr()? }),
            log: Default::default(),
        };
        std::fs::write(dir.join(format!("{name}.toml")), toml::to_string_pretty(&config)?)?;
        let files = ca::issue_into(&authority, dir, Role::Pool, name, ca::DEFAULT_DAYS)?;
        let credentials = read_credentials(&files)?;
        // As `tidepool init` would: a kept demo then runs again as separate daemons.
        crate::process::pool_dir::init(&dir.join(name), &config.name)?;
        let settings = Settings {
            transfers: config.transfer_settings(),
            name: config.name,
            data_dir: dir.join(name),
            capacity: CAPACITY,
            cluster: cluster.clone(),
            credentials,
            pin_owner_prefix: config.pin_owner_prefix,
            shutdown_grace: Duration::from_secs(config.shutdown_grace_seconds),
            migration: config.migration.settings(),
            fault_points: Default::default(),
        };
        let daemon = Daemon::start(settings, admin, data).await?;
        metrics_at.push((name.to_string(), daemon.serve_metrics(metrics)?));
        daemons.push(daemon);
    }
    let repo = daemons[0].pool().repo.clone();
    blocking(move || fill(&repo, SAMPLE_REPLICAS)).await?;
    Ok((daemons, cluster, admin, metrics_at))
}

/// A small deterministic generator, so every demo has the same kinds of files.
struct Sample(u64);

impl Sample {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Writes `count` sample replicas into `repo`.
pub fn fill(repo: &Arc<Repository>, count: u32) -> anyhow::Result<()> {
    let classes = [
        ("atlas:default", RetentionPolicy::Replica, AccessLatency::Online),
        ("atlas:raw", RetentionPolicy::Custodial, AccessLatency::Nearline),
        ("cms:raw", RetentionPolicy::Custodial, AccessLatency::Nearline),
        ("cms:user", RetentionPolicy::Replica, AccessLatency::Online),
        ("lhcb:dst", RetentionPolicy::Replica, AccessLatency::Online),
    ];
    let mut rng = Sample(0x7469_6465_706f_6f6c);
    let now = now_ms();
    for i in 0..count {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&rng.next().to_be_bytes());
        raw[8..].copy_from_slice(&rng.next().to_be_bytes());
        let pnfsid = PnfsId::from_random(raw);
        let (class, rp, al) = classes[i as usize % classes.len()];
        let size = 1024 + rng.next() % (256 * 1024);
        let age = (rng.next() % (30 * 86_400)) as i64 * 1000;
        let attrs = FileAttributes {
            pnfsid,
            size,
            checksum: None,
            storage_class: Some(class.to_string()),
            cache_class: None,
            access_latency: Some(al),
            retention_policy: Some(rp),
            hsm: (rp == RetentionPolicy::Custodial).then(|| "osm".to_string()),
            creation_time: now - age,
            access_time: now - age / 2,
        };
        let state =
            if rp == RetentionPolicy::Custodial && i % 3 != 0 { ReplicaState::Precious } else { ReplicaState::Cached };
        let mut sticky = Vec::new();
        if i % 7 == 0 {
            sticky.push(StickyRecord::new("system", NEVER));
        }
        if i % 11 == 0 {
            sticky.push(StickyRecord::new(format!("PinManager-{}", 1000 + i), now + 7 * 86_400_000));
        }
        if i % 13 == 0 {
            sticky.push(StickyRecord::new("alice", now + 3_600_000));
        }
        let mut data = vec![0u8; size as usize];
        for chunk in data.chunks_mut(8) {
            let word = rng.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        let mut incoming = repo.create(attrs, ReplicaState::FromClient, now)?;
        incoming.write(&data)?;
        incoming.commit(state, sticky, None, now)?;
    }
    Ok(())
}
