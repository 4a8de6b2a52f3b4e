//! `bench scale`: many real pool daemons on one machine, one loopback address each, in one
//! pool group, with the cluster file or etcd as their membership (docs/operator-guide.md,
//! "Membership"). Three phases, each sampled: idle; one `rebalance pgroup` and several drains
//! at once; and "rest", a permanent job on every pool over the group with nothing to copy, so
//! that what remains is the refresh traffic (each job asks its N-1 targets, or reads their
//! published costs, every 10 s), sampled again as "settled" 150 s after those jobs started,
//! when connections idle for 2 minutes have been closed. Figures: resident memory, open descriptors, TCP connections
//! and CPU of each daemon, the `pool_info` requests the pools answered (their metrics) and,
//! with etcd, the range reads etcd served (its metrics). Not in CI: it takes minutes.
//!
//! Layout: pool K (1..N) is `poolK` on 127.0.1.K, its admin endpoint on port [`ADMIN_PORT`],
//! its data endpoint on [`P2P_PORT`] and its metrics on [`METRICS_PORT`], every pool in the
//! group [`GROUP`]. The first `--filled` pools get `--files` files of `--size` bytes each,
//! written through their stores before they start. Everything lives in a temporary directory
//! under `--dir`, removed at the end; the daemons (and etcd) are stopped at the end, on an
//! error and on Ctrl-C.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tidepool_p2p::cluster::{ClusterFile, PoolEntry};
use tidepool_p2p::tls::{Credentials, Role, TlsFiles};
use tidepool_pool::process::service::{NofileLimit, raise_nofile_limit};
use tidepool_repository::{ReplicaStore, SledStore};

use crate::dataset::check_args;
use crate::process::{Admin, Binaries, Proc, run_ok};
use crate::system::{self, Who};
use crate::{chrono_now, flag};
use procfs::Current;

pub(crate) const USAGE: &str = "bench scale [--pools N[,N..]] [--membership file|etcd[,..]] [--filled K] \
     [--files F] [--size BYTES] [--drains D] [--idle-secs S] [--max-load-secs S] [--rest-secs S] [--dir DIR]";

/// Every pool's ports, one loopback address each.
const ADMIN_PORT: u16 = 24001;
const P2P_PORT: u16 = 24002;
const METRICS_PORT: u16 = 24003;

/// The pool group of every pool.
const GROUP: &str = "scale";

/// How long a daemon may take from spawn to answering `info` (100 start at once on 2 CPUs).
const START_DEADLINE: Duration = Duration::from_secs(120);

/// How long every pool may take to see every other alive (etcd).
const REGISTER_DEADLINE: Duration = Duration::from_secs(120);

/// The `-refresh` of the jobs of the rest phase.
const REST_REFRESH: Duration = Duration::from_secs(10);

/// When the settled look at the rest phase's jobs starts, after they were created (past the
/// 2 minutes after which a pool closes an idle peer connection, `PEER_IDLE`), and how long
/// it samples.
const SETTLED_AFTER: Duration = Duration::from_secs(150);
const SETTLED_FOR: Duration = Duration::from_secs(20);

/// The pause between two samples while the jobs run.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Set by Ctrl-C (SIGINT) or SIGTERM: the run stops at its next look and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    File,
    Etcd,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::File => "file",
            Backend::Etcd => "etcd",
        }
    }
}

struct Options {
    pools: Vec<usize>,
    backends: Vec<Backend>,
    filled: usize,
    files: usize,
    size: usize,
    drains: usize,
    idle: Duration,
    max_load: Duration,
    rest: Duration,
    dir: PathBuf,
}

fn options(args: &[String]) -> anyhow::Result<Options> {
    check_args(
        args,
        &[
            "--pools",
            "--membership",
            "--filled",
            "--files",
            "--size",
            "--drains",
            "--idle-secs",
            "--max-load-secs",
            "--rest-secs",
            "--dir",
        ],
        USAGE,
    )?;
    let number = |name: &str, default: usize| -> anyhow::Result<usize> {
        flag(args, name)
            .map(|v| v.parse().map_err(|_| anyhow!("{name} takes a number, not {v:?}\nusage: {USAGE}")))
            .unwrap_or(Ok(default))
    };
    let pools = flag(args, "--pools")
        .unwrap_or("100")
        .split(',')
        .map(|v| match v.parse::<usize>() {
            Ok(n) if (2..=250).contains(&n) => Ok(n),
            _ => Err(anyhow!("--pools takes numbers from 2 to 250 (one address 127.0.1.N each), not {v:?}")),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let backends = flag(args, "--membership")
        .unwrap_or("file,etcd")
        .split(',')
        .map(|v| match v {
            "file" => Ok(Backend::File),
            "etcd" => Ok(Backend::Etcd),
            _ => Err(anyhow!("--membership takes file, etcd or file,etcd, not {v:?}")),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let o = Options {
        pools,
        backends,
        filled: number("--filled", 6)?,
        files: number("--files", 1000)?,
        size: number("--size", 64 << 10)?,
        drains: number("--drains", 3)?,
        idle: Duration::from_secs(number("--idle-secs", 30)? as u64),
        max_load: Duration::from_secs(number("--max-load-secs", 600)? as u64),
        rest: Duration::from_secs(number("--rest-secs", 60)? as u64),
        dir: PathBuf::from(flag(args, "--dir").unwrap_or(".")),
    };
    let smallest = o.pools.iter().min().copied().unwrap_or(0);
    if o.drains > o.filled || o.filled >= smallest {
        bail!("need --drains <= --filled < --pools (got {}, {}, {smallest})", o.drains, o.filled);
    }
    Ok(o)
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let o = options(args)?;
    let bins = Binaries::find()?;
    // The bench holds a log file and a pipe or two per daemon, and connects to each.
    match raise_nofile_limit() {
        Ok(NofileLimit::Raised { from, to }) => println!("open-file limit of the bench raised from {from} to {to}"),
        Ok(NofileLimit::AlreadyAtMax(n)) => println!("open-file limit of the bench: {n}"),
        Err(e) => println!("cannot raise the open-file limit of the bench: {e}"),
    }
    watch_signals();
    print_machine(&bins);
    println!(
        "each run: {} pools in one group; pools 1..{} hold {} files of {} bytes each; \
         drains on pools 1..{} (pool disable -draining + migration move -target=pgroup {GROUP}) \
         and rebalance pgroup {GROUP} at once",
        o.pools.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
        o.filled,
        o.files,
        o.size,
        o.drains
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut results = Vec::new();
    for &n in &o.pools {
        for &backend in &o.backends {
            println!("\n=== {n} pools, membership {} ===", backend.name());
            let result = one_run(&o, &bins, &rt, n, backend)?;
            print_result(&result);
            results.push(result);
        }
    }
    println!("\n=== summary ===");
    print!("{}", summary(&results));
    Ok(())
}

fn print_machine(bins: &Binaries) {
    let mem = procfs::Meminfo::current().map(|m| m.mem_total as f64 / (1u64 << 30) as f64).unwrap_or(f64::NAN);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = rustix::system::uname();
    println!("machine: {cpus} CPUs, {mem:.1} GiB RAM, Linux {}", kernel.release().to_string_lossy());
    let head = crate::system::workspace_head();
    println!("tidepool: {} (workspace at {head})", bins.tidepool.display());
    if let Some(etcd) = tidepool_tests::etcd::binary() {
        let version = Command::new(&etcd)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
            .unwrap_or_default();
        println!("etcd: {} ({version})", etcd.display());
    }
}

/// Ctrl-C and SIGTERM set [`INTERRUPTED`]; every wait of the run looks at it and ends the run,
/// whose drops stop the daemons and remove the directory.
fn watch_signals() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                eprintln!("interrupted: stopping the daemons and removing the run's directory");
                INTERRUPTED.store(true, Ordering::SeqCst);
            }
        });
    });
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, in short steps that look at [`INTERRUPTED`].
fn pause(d: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        check_interrupted()?;
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
    }
    check_interrupted()
}

fn ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, u8::try_from(k).expect("at most 250 pools"))
}

fn name(k: usize) -> String {
    format!("pool{k}")
}

/// The daemons of one run; stopped (SIGTERM to all, then each waited for) when dropped.
struct Daemons {
    procs: Vec<Proc>,
}

impl Daemons {
    fn stop_all(&mut self) {
        for p in &self.procs {
            p.terminate();
        }
        let stopped = self.procs.drain(..).filter_map(|p| p.stop().err()).count();
        if stopped > 0 {
            eprintln!("{stopped} daemons had to be killed");
        }
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The figures of one phase, per daemon.
#[derive(Clone, Debug, Default)]
struct Phase {
    secs: f64,
    /// Per daemon, the largest value seen over the phase's samples.
    rss_mib: Vec<f64>,
    /// Per daemon, the largest anonymous (private) resident memory seen: `RssAnon`, without
    /// the pages of the binary and libraries every daemon shares.
    anon_mib: Vec<f64>,
    fds: Vec<f64>,
    tcp: Vec<f64>,
    /// Per daemon, CPU seconds over the phase, as a percentage of one CPU.
    cpu_pct: Vec<f64>,
    /// `pool_info` requests answered by all pools during the phase.
    pool_info: u64,
    /// Other migration requests answered (locate, copy, finished, ...).
    other_requests: u64,
    /// etcd: range reads and puts it served during the phase, and its own CPU and memory.
    etcd: Option<EtcdFigures>,
}

#[derive(Clone, Copy, Debug, Default)]
struct EtcdFigures {
    ranges: u64,
    puts: u64,
    cpu_pct: f64,
    rss_mib: f64,
}

struct RunResult {
    pools: usize,
    backend: Backend,
    start_secs: f64,
    idle: Phase,
    load: Phase,
    /// A permanent job with nothing to copy on every pool, over the whole group, refreshed
    /// every [`REST_REFRESH`]: the refresh traffic alone.
    rest: Phase,
    /// The same jobs later, once connections idle since the load and the first refresh are
    /// closed ([`SETTLED_AFTER`] after the jobs started).
    settled: Phase,
    /// Jobs started by the load phase, and whether all of them ended within `--max-load-secs`.
    jobs: usize,
    finished: bool,
    moved_files: u64,
}

fn one_run(
    o: &Options,
    bins: &Binaries,
    rt: &tokio::runtime::Runtime,
    n: usize,
    backend: Backend,
) -> anyhow::Result<RunResult> {
    fs::create_dir_all(&o.dir)?;
    let tmp = tempfile::Builder::new().prefix("tidepool-bench-scale-").tempdir_in(&o.dir)?;
    let dir = tmp.path();
    let admin_key = credentials(dir, bins, n)?;
    let etcd = match backend {
        Backend::File => None,
        Backend::Etcd => Some(
            tidepool_tests::etcd::Etcd::start("bench scale")
                .context("no etcd binary here (Debian: apt-get install etcd-server)")?,
        ),
    };
    write_configs(dir, n, etcd.as_ref().map(|e| e.endpoint()))?;
    if let Some(etcd) = &etcd {
        let mut import = Command::new(&bins.tidepool);
        import.args(["membership", "import", "--endpoints", &etcd.endpoint(), "--prefix", "/scale/"]);
        import.arg(dir.join("cluster.toml")).stdout(std::process::Stdio::null());
        run_ok(&mut import)?;
    }
    for k in 1..=o.filled {
        fill(&dir.join(name(k)), k, o.files, o.size)?;
    }
    // Start every daemon at once, then wait until each answers.
    let started = Instant::now();
    let mut daemons = Daemons { procs: Vec::with_capacity(n) };
    for k in 1..=n {
        let mut cmd = Command::new(&bins.tidepool);
        cmd.arg("pool").arg("--config").arg(dir.join(format!("{}.toml", name(k))));
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
        daemons.procs.push(Proc::spawn(&name(k), &mut cmd, &dir.join(format!("{}.log", name(k))))?);
    }
    for k in 1..=n {
        wait_ready(rt, &admin_key, k, &mut daemons.procs[k - 1], dir)?;
    }
    if backend == Backend::Etcd {
        for k in 1..=n {
            wait_registered(rt, &admin_key, k, n)?;
        }
    }
    let start_secs = started.elapsed().as_secs_f64();
    println!("{n} daemons up{} in {start_secs:.1} s", if etcd.is_some() { " and registered in etcd" } else { "" });
    let who: Vec<Who> = daemons.procs.iter().map(Proc::who).collect();
    let etcd_who = etcd.as_ref().and_then(|e| e.pid()).map(Who::Pid);
    let etcd_url = etcd.as_ref().map(|e| e.endpoint());

    // Idle: nothing runs; sample at the start and the end of the window.
    let before = Counters::read(n, etcd_url.as_deref(), etcd_who)?;
    let mut idle = Sampler::new(&who, etcd_who);
    idle.sample();
    pause(o.idle)?;
    idle.sample();
    let after = Counters::read(n, etcd_url.as_deref(), etcd_who)?;
    let idle = idle.phase(&before, &after);

    // Load: the drains and the rebalance at once, sampled until every job has ended.
    let before = Counters::read(n, etcd_url.as_deref(), etcd_who)?;
    let mut load = Sampler::new(&who, etcd_who);
    load.sample();
    let mut jobs = 0;
    rt.block_on(async {
        for k in 1..=o.drains {
            let mut a = Admin::open(SocketAddr::new(ip(k).into(), ADMIN_PORT), &admin_key).await?;
            a.run("pool disable -draining").await?;
            a.run(&format!("migration move -concurrency=4 -target=pgroup {GROUP}")).await?;
            jobs += 1;
        }
        // From a pool that is no source: the rebalance asks every pool of the group.
        let mut a = Admin::open(SocketAddr::new(ip(n).into(), ADMIN_PORT), &admin_key).await?;
        let out = a.run(&format!("rebalance pgroup {GROUP}")).await?;
        jobs += out.lines().filter(|l| l.contains("[rebalance]")).count();
        anyhow::Ok(())
    })?;
    println!("load: {jobs} jobs started ({} drains, the rest rebalance)", o.drains);
    let mut finished = false;
    while load.started.elapsed() < o.max_load {
        pause(SAMPLE_EVERY)?;
        load.sample();
        let active = active_jobs(n)?;
        if active == 0 {
            finished = true;
            break;
        }
    }
    let after = Counters::read(n, etcd_url.as_deref(), etcd_who)?;
    let load = load.phase(&before, &after);
    let moved_files = (1..=n)
        .map(|k| scrape(k).map(|m| metric_sum(&m, "tidepool_p2p_in_transfers_total")))
        .sum::<anyhow::Result<u64>>()?;
    let drained = (1..=o.drains)
        .map(|k| scrape(k).map(|m| metric_sum(&m, "tidepool_replicas{state=\"CACHED\"}")))
        .sum::<anyhow::Result<u64>>()?;
    if finished && drained != 0 {
        println!("note: {drained} replicas are still on the drained pools");
    }

    // Rest: one permanent job on every pool over the group, selecting nothing (no file has
    // the storage class), so that what remains is each job's refresh of its N-1 targets.
    rt.block_on(async {
        for k in 1..=n {
            let mut a = Admin::open(SocketAddr::new(ip(k).into(), ADMIN_PORT), &admin_key).await?;
            a.run(&format!(
                "migration copy -id=rest -permanent -refresh={} -storage=bench:nothing -target=pgroup {GROUP}",
                REST_REFRESH.as_secs()
            ))
            .await?;
        }
        anyhow::Ok(())
    })?;
    let rest_started = Instant::now();
    // Past the first refresh of each (which asks every target, with etcd too) and the
    // connections it opens.
    pause(2 * REST_REFRESH)?;
    let before = Counters::read(n, etcd_url.as_deref(), etcd_who)?;
    let mut rest = Sampler::new(&who, etcd_who);
    rest.sample();
    while rest.started.elapsed() < o.rest {
        pause(SAMPLE_EVERY)?;
        rest.sample();
    }
    let after = Counters::read(n, etcd_url.as_deref(), etcd_who)?;
    let rest = rest.phase(&before, &after);
    // Settled: a pool closes a peer connection idle for `PEER_IDLE` (2 min); with etcd the jobs
    // ask their targets themselves only every ten minutes, so only then does it show.
    pause(SETTLED_AFTER.saturating_sub(rest_started.elapsed()))?;
    let before = Counters::read(n, etcd_url.as_deref(), etcd_who)?;
    let mut settled = Sampler::new(&who, etcd_who);
    settled.sample();
    while settled.started.elapsed() < SETTLED_FOR {
        pause(SAMPLE_EVERY)?;
        settled.sample();
    }
    let after = Counters::read(n, etcd_url.as_deref(), etcd_who)?;
    let settled = settled.phase(&before, &after);
    daemons.stop_all();
    drop(etcd);
    Ok(RunResult { pools: n, backend, start_secs, idle, load, rest, settled, jobs, finished, moved_files })
}

/// The CA, a certificate per pool and the bench's admin certificate, made with `tidepool ca`.
fn credentials(dir: &Path, bins: &Binaries, n: usize) -> anyhow::Result<Credentials> {
    let tidepool = |args: &[&str]| -> anyhow::Result<()> {
        let mut cmd = Command::new(&bins.tidepool);
        cmd.args(args).arg(dir).stdout(std::process::Stdio::null());
        run_ok(&mut cmd)
    };
    tidepool(&["ca", "init"])?;
    tidepool(&["ca", "issue", "--role", "admin", "--name", "bench"])?;
    for k in 1..=n {
        check_interrupted()?;
        tidepool(&["ca", "issue", "--role", "pool", "--name", &name(k)])?;
    }
    Credentials::load(&TlsFiles::in_dir(dir, Role::Admin, "bench")).map_err(anyhow::Error::msg)
}

/// `cluster.toml` (every pool in [`GROUP`]) and each pool's config; etcd's `[membership]`
/// when `etcd` names its endpoint. Marks each pool's directory as `tidepool init` does.
fn write_configs(dir: &Path, n: usize, etcd: Option<String>) -> anyhow::Result<()> {
    let file = ClusterFile {
        pools: (1..=n)
            .map(|k| {
                Ok(PoolEntry {
                    name: name(k).parse().map_err(|e| anyhow!("{e}"))?,
                    p2p: SocketAddr::new(ip(k).into(), P2P_PORT),
                    admin: SocketAddr::new(ip(k).into(), ADMIN_PORT),
                    groups: vec![GROUP.into()],
                    tags: Default::default(),
                    hsm: Vec::new(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        links: Vec::new(),
    };
    fs::write(dir.join("cluster.toml"), file.to_toml())?;
    for k in 1..=n {
        let pool = name(k);
        let mut config = format!(
            "name = \"{pool}\"\ndata_dir = \"{pool}\"\ncapacity = \"1Gi\"\nshutdown_grace_seconds = 5\n\
             admin_listen = \"{ip}:{ADMIN_PORT}\"\np2p_listen = \"{ip}:{P2P_PORT}\"\n",
            ip = ip(k)
        );
        match &etcd {
            None => config.push_str("cluster_file = \"cluster.toml\"\n"),
            Some(endpoint) => {
                let _ = write!(
                    config,
                    "[membership]\nbackend = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"/scale/\"\n"
                );
            }
        }
        let _ = write!(config, "[metrics]\nlisten = \"{}:{METRICS_PORT}\"\n", ip(k));
        fs::write(dir.join(format!("{pool}.toml")), config)?;
        tidepool_pool::process::pool_dir::init(&dir.join(&pool), &pool.parse().map_err(|e| anyhow!("{e}"))?)?;
    }
    Ok(())
}

/// Writes `files` cached replicas of `size` bytes straight into the pool's store (before it
/// starts), as the other benchmarks fill their source pools.
fn fill(pool_dir: &Path, k: usize, files: usize, size: usize) -> anyhow::Result<()> {
    let store = SledStore::open(pool_dir)?;
    let now = chrono_now();
    for i in 0..files {
        crate::dataset::write_cached(&store, pool_dir, ((k as u64) << 32) + i as u64, size, "bench:scale", now)?;
    }
    store.flush()?;
    Ok(())
}

/// Waits until pool `k` answers `info` (each admin connection is closed again: the figures
/// count none of the bench's).
fn wait_ready(
    rt: &tokio::runtime::Runtime,
    key: &Credentials,
    k: usize,
    proc: &mut Proc,
    dir: &Path,
) -> anyhow::Result<()> {
    let addr = SocketAddr::new(ip(k).into(), ADMIN_PORT);
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        check_interrupted()?;
        proc.check_running(&dir.join(format!("{}.log", name(k))))?;
        let answered = rt.block_on(async {
            let mut a = Admin::open(addr, key).await?;
            a.run("info").await
        });
        if answered.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} did not answer on {addr} within {START_DEADLINE:?}", name(k));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until pool `k`'s view (etcd) lists all `n` pools alive.
fn wait_registered(rt: &tokio::runtime::Runtime, key: &Credentials, k: usize, n: usize) -> anyhow::Result<()> {
    let addr = SocketAddr::new(ip(k).into(), ADMIN_PORT);
    let deadline = Instant::now() + REGISTER_DEADLINE;
    loop {
        check_interrupted()?;
        let listed = rt.block_on(async {
            let mut a = Admin::open(addr, key).await?;
            a.run("psu ls pool").await
        })?;
        let alive = listed.lines().filter(|l| l.ends_with(" alive")).count();
        if alive == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} sees {alive} of {n} pools alive after {REGISTER_DEADLINE:?}", name(k));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `GET /metrics` of pool `k`.
fn scrape(k: usize) -> anyhow::Result<String> {
    http_get(SocketAddr::new(ip(k).into(), METRICS_PORT), "/metrics")
}

fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text).with_context(|| format!("read {path} from {addr}"))?;
    let (head, body) = text.split_once("\r\n\r\n").with_context(|| format!("no HTTP reply from {addr}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path} from {addr}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// The sum of the samples of the lines that start with `prefix` (a metric name, or a name
/// and the start of its labels).
fn metric_sum(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

/// Jobs not yet ended on any of the `n` pools.
fn active_jobs(n: usize) -> anyhow::Result<u64> {
    let mut active = 0;
    for k in 1..=n {
        let m = scrape(k)?;
        for state in ["NEW", "INITIALIZING", "RUNNING", "SLEEPING", "PAUSED", "STOPPING", "CANCELLING"] {
            active += metric_sum(&m, &format!("tidepool_migration_jobs{{state=\"{state}\"}}"));
        }
    }
    Ok(active)
}

/// The counters read at the start and the end of a phase.
struct Counters {
    pool_info: u64,
    other: u64,
    etcd_ranges: u64,
    etcd_puts: u64,
    etcd_cpu: f64,
}

impl Counters {
    fn read(n: usize, etcd: Option<&str>, etcd_who: Option<Who>) -> anyhow::Result<Counters> {
        let (mut pool_info, mut all) = (0, 0);
        for k in 1..=n {
            let m = scrape(k)?;
            pool_info += metric_sum(&m, "tidepool_migration_requests_served_total{kind=\"pool_info\"}");
            all += metric_sum(&m, "tidepool_migration_requests_served_total");
        }
        let (mut etcd_ranges, mut etcd_puts) = (0, 0);
        if let Some(url) = etcd {
            let addr: SocketAddr = url.trim_start_matches("http://").parse()?;
            let m = http_get(addr, "/metrics")?;
            // The gRPC counters, by method; etcd_debugging_mvcc_range_total where they are
            // off (`--metrics` below `basic`).
            for l in m.lines().filter(|l| l.starts_with("grpc_server_handled_total{")) {
                let v = l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
                if l.contains("grpc_method=\"Range\"") {
                    etcd_ranges += v;
                } else if l.contains("grpc_method=\"Put\"") || l.contains("grpc_method=\"Txn\"") {
                    etcd_puts += v;
                }
            }
            if etcd_ranges == 0 {
                etcd_ranges = metric_sum(&m, "etcd_debugging_mvcc_range_total");
            }
        }
        let etcd_cpu = etcd_who.map_or(0.0, |w| system::cpu_secs(w, false));
        Ok(Counters { pool_info, other: all - pool_info, etcd_ranges, etcd_puts, etcd_cpu })
    }
}

/// Samples of every daemon over one phase.
struct Sampler<'a> {
    who: &'a [Who],
    started: Instant,
    cpu0: Vec<f64>,
    rss: Vec<f64>,
    anon: Vec<f64>,
    fds: Vec<f64>,
    tcp: Vec<f64>,
    etcd_rss: f64,
    etcd_who: Option<Who>,
}

impl<'a> Sampler<'a> {
    fn new(who: &'a [Who], etcd_who: Option<Who>) -> Sampler<'a> {
        let n = who.len();
        Sampler {
            who,
            started: Instant::now(),
            cpu0: who.iter().map(|w| system::cpu_secs(*w, false)).collect(),
            rss: vec![0.0; n],
            anon: vec![0.0; n],
            fds: vec![0.0; n],
            tcp: vec![0.0; n],
            etcd_rss: 0.0,
            etcd_who,
        }
    }

    /// One look at every daemon: resident memory, descriptors, established TCP connections.
    fn sample(&mut self) {
        let established: BTreeMap<u64, ()> = procfs::net::tcp()
            .unwrap_or_default()
            .into_iter()
            .chain(procfs::net::tcp6().unwrap_or_default())
            .filter(|e| e.state == procfs::net::TcpState::Established)
            .map(|e| (e.inode, ()))
            .collect();
        for (i, w) in self.who.iter().enumerate() {
            let Who::Pid(pid) = *w else { continue };
            let Ok(p) = procfs::process::Process::new(pid as i32) else { continue };
            if let Ok(status) = p.status() {
                let mib = |kib: Option<u64>| kib.map_or(f64::NAN, |k| k as f64 / 1024.0);
                self.rss[i] = self.rss[i].max(mib(status.vmrss));
                self.anon[i] = self.anon[i].max(mib(status.rssanon));
            }
            let (mut fds, mut tcp) = (0.0, 0.0);
            if let Ok(iter) = p.fd() {
                for fd in iter.flatten() {
                    fds += 1.0;
                    if let procfs::process::FDTarget::Socket(inode) = fd.target
                        && established.contains_key(&inode)
                    {
                        tcp += 1.0;
                    }
                }
            }
            self.fds[i] = self.fds[i].max(fds);
            self.tcp[i] = self.tcp[i].max(tcp);
        }
        if let Some(w) = self.etcd_who {
            self.etcd_rss = self.etcd_rss.max(system::rss_mib(w));
        }
    }

    fn phase(mut self, before: &Counters, after: &Counters) -> Phase {
        let secs = self.started.elapsed().as_secs_f64();
        let cpu_pct =
            self.who.iter().zip(&self.cpu0).map(|(w, c0)| 100.0 * (system::cpu_secs(*w, false) - c0) / secs).collect();
        let etcd = self.etcd_who.is_some().then(|| EtcdFigures {
            ranges: after.etcd_ranges - before.etcd_ranges,
            puts: after.etcd_puts - before.etcd_puts,
            cpu_pct: 100.0 * (after.etcd_cpu - before.etcd_cpu) / secs,
            rss_mib: std::mem::take(&mut self.etcd_rss),
        });
        Phase {
            secs,
            rss_mib: self.rss,
            anon_mib: self.anon,
            fds: self.fds,
            tcp: self.tcp,
            cpu_pct,
            pool_info: after.pool_info - before.pool_info,
            other_requests: after.other - before.other,
            etcd,
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().filter(|x| x.is_finite()).fold(f64::NAN, f64::max)
}

fn sum(v: &[f64]) -> f64 {
    v.iter().copied().filter(|x| x.is_finite()).sum()
}

fn print_result(r: &RunResult) {
    for (label, p) in [("idle", &r.idle), ("load", &r.load), ("rest", &r.rest), ("settled", &r.settled)] {
        println!(
            "{label} ({:.0} s): RSS MiB median {:.1} max {:.1} (sum {:.0}); private (RssAnon) MiB median {:.1} \
             max {:.1} (sum {:.0}); fds median {:.0} max {:.0}; \
             TCP median {:.0} max {:.0}; CPU % median {:.2} max {:.2} sum {:.1}; pool_info {} ({:.0}/min); \
             other migration requests {}",
            p.secs,
            median(&p.rss_mib),
            max(&p.rss_mib),
            sum(&p.rss_mib),
            median(&p.anon_mib),
            max(&p.anon_mib),
            sum(&p.anon_mib),
            median(&p.fds),
            max(&p.fds),
            median(&p.tcp),
            max(&p.tcp),
            median(&p.cpu_pct),
            max(&p.cpu_pct),
            sum(&p.cpu_pct),
            p.pool_info,
            p.pool_info as f64 * 60.0 / p.secs,
            p.other_requests
        );
        if let Some(e) = p.etcd {
            println!(
                "  etcd: {} range reads ({:.0}/min), {} puts/txns, CPU {:.1} %, RSS {:.0} MiB",
                e.ranges,
                e.ranges as f64 * 60.0 / p.secs,
                e.puts,
                e.cpu_pct,
                e.rss_mib
            );
        }
    }
    println!(
        "load: {} jobs, {}; {} replicas received by the pools",
        r.jobs,
        if r.finished { "all ended" } else { "NOT all ended within --max-load-secs" },
        r.moved_files
    );
}

/// One Markdown table of every run.
fn summary(results: &[RunResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| pools | membership | phase | s | RSS MiB median / max | private MiB median / max / sum | fds median / max | TCP median / max | \
         CPU % median / max / sum | pool_info answered (per min) | etcd range reads (per min) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        for (label, p) in [("idle", &r.idle), ("load", &r.load), ("rest", &r.rest), ("settled", &r.settled)] {
            let etcd =
                p.etcd.map_or("–".to_string(), |e| format!("{} ({:.0})", e.ranges, e.ranges as f64 * 60.0 / p.secs));
            let _ = writeln!(
                s,
                "| {} | {} | {label} | {:.0} | {:.1} / {:.1} | {:.1} / {:.1} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} / {:.2} / {:.1} | {} ({:.0}) | {etcd} |",
                r.pools,
                r.backend.name(),
                p.secs,
                median(&p.rss_mib),
                max(&p.rss_mib),
                median(&p.anon_mib),
                max(&p.anon_mib),
                sum(&p.anon_mib),
                median(&p.fds),
                max(&p.fds),
                median(&p.tcp),
                max(&p.tcp),
                median(&p.cpu_pct),
                max(&p.cpu_pct),
                sum(&p.cpu_pct),
                p.pool_info,
                p.pool_info as f64 * 60.0 / p.secs,
            );
        }
    }
    for r in results {
        let _ = writeln!(
            s,
            "{} pools, {}: started (and registered) in {:.1} s; load: {} jobs, {}, {} replicas received",
            r.pools,
            r.backend.name(),
            r.start_secs,
            r.jobs,
            if r.finished { "all ended" } else { "not all ended" },
            r.moved_files
        );
    }
    s
}
