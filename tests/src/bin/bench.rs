//! The benchmark harness. Not a test: it measures and prints; results go to docs/benchmarks.md.
//!
//! ```text
//! cargo run --release -p tidepool-tests --bin bench -- repo [--records N] [--dir DIR]
//! cargo run --release -p tidepool-tests --bin bench -- p2p [--set large|small|both] [--concurrency N[,N..]]
//!     [--window W[,W..]] [--batch B[,B..]] [--runs R] [--cache cold|warm] [--dir DIR] [--keep]
//! cargo run --release -p tidepool-tests --bin bench -- migration [--parts move,rerun,init] [--set large|small|both]
//!     [--concurrency N] [--runs R] [--records N] [--cache cold|warm] [--dir DIR] [--keep]
//! ```
//!
//! `repo`: fills a sled repository with N records (default 1,000,000) and a data file each
//! (unless `--dir` already holds one, which is then reused), then, in a fresh process so peak memory is its own, opens it (restart recovery included),
//! iterates every record, and runs `rep ls` (into a sink that counts bytes) and `rep ls -s`.
//!
//! `p2p`: pool-to-pool copies against `cp -r` + `sync`, `rsync -a` and an rsync daemon on
//! loopback, over the same files; see [`p2p`].
//!
//! `migration`: `migration move` vacating a pool against `rsync -a` over the same files, the
//! rerun of a finished copy job, and a job's initialisation on a pool of a million replicas;
//! see [`migration`] (in `bench/migration.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use tidepool_p2p::PnfsId;
use tidepool_p2p::cluster::ClusterFile;
use tidepool_p2p::model::{AccessLatency, Checksum, FileAttributes, ReplicaState, RetentionPolicy, StickyRecord};
use tidepool_pool::admin::exec::{self, Gone, Output};
use tidepool_pool::pool::Pool;
use tidepool_repository::{Replica, ReplicaStore, Repository, SledStore, record};

/// In `bench/migration.rs`: this file is a crate root, whose modules would sit beside it.
#[path = "bench/migration.rs"]
mod migration;

const CAPACITY: u64 = 1 << 50;
const DATA_BYTES: usize = 512;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("repo") => repo(&args[1..]),
        Some("repo-measure") => measure(Path::new(&args[1])),
        Some("p2p") => p2p::run(&args[1..]),
        Some("migration") => migration::run(&args[1..]),
        _ => bail!("usage: bench repo [--records N] [--dir DIR]\n       {}\n       {}", p2p::USAGE, migration::USAGE),
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn repo(args: &[String]) -> anyhow::Result<()> {
    let records: u64 = flag(args, "--records").unwrap_or("1000000").parse()?;
    let temp;
    let dir = match flag(args, "--dir") {
        Some(d) => PathBuf::from(d),
        None => {
            temp = tempfile::Builder::new().prefix("tidepool-bench-").tempdir_in(".")?;
            temp.path().to_path_buf()
        }
    };
    if dir.join("meta").exists() {
        println!("reusing the repository in {} (delete it to fill anew)", dir.display());
    } else {
        let started = Instant::now();
        fill(&dir, records)?;
        println!("fill: {records} records and data files in {:.1} s", started.elapsed().as_secs_f64());
    }
    let status = Command::new(std::env::current_exe()?).arg("repo-measure").arg(&dir).status()?;
    if !status.success() {
        bail!("measurement failed");
    }
    Ok(())
}

/// Writes records straight through the store (one flush at the end), with a small data file
/// each, as a pool that had received them one by one would have.
fn fill(dir: &Path, n: u64) -> anyhow::Result<()> {
    let store = SledStore::open(dir)?;
    let classes = ["atlas:default", "atlas:raw", "cms:raw", "cms:user", "lhcb:dst"];
    let payload = vec![0x5Au8; DATA_BYTES];
    let mut sum = tidepool_p2p::model::ChecksumWriter::new();
    sum.update(&payload);
    let checksum: Checksum = sum.finish();
    let now = chrono_now();
    for i in 0..n {
        let mut raw = [0u8; 16];
        raw[8..].copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_be_bytes());
        raw[..8].copy_from_slice(&i.to_be_bytes());
        let pnfsid = PnfsId::from_random(raw);
        let replica = Replica {
            attrs: FileAttributes {
                pnfsid,
                size: DATA_BYTES as u64,
                checksum: Some(checksum),
                storage_class: Some(classes[(i % 5) as usize].to_string()),
                cache_class: None,
                access_latency: Some(AccessLatency::Online),
                retention_policy: Some(RetentionPolicy::Replica),
                hsm: None,
                creation_time: now,
                access_time: now - (i as i64 % 86_400_000),
            },
            state: if i % 4 == 0 { ReplicaState::Precious } else { ReplicaState::Cached },
            sticky: if i % 10 == 0 { vec![StickyRecord::new("PinManager-1", -1)] } else { vec![] },
        };
        store.put_record(&pnfsid, &record::encode(&replica))?;
        std::fs::write(dir.join("data").join(pnfsid.to_string()), &payload)?;
        if i % 100_000 == 99_999 {
            eprint!(".");
        }
    }
    eprintln!();
    store.flush()?;
    Ok(())
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A memory figure of this process from /proc/self/status (`VmHWM` is the peak, `VmRSS` the
/// current resident size), in MiB.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

struct Count(u64);

impl Output for Count {
    fn write(&mut self, text: &str) -> Result<(), Gone> {
        self.0 += text.len() as u64;
        Ok(())
    }
}

fn measure(dir: &Path) -> anyhow::Result<()> {
    let t = Instant::now();
    let store = SledStore::open(dir)?;
    println!("sled opened: {:.2} s, RSS {:.0} MiB", t.elapsed().as_secs_f64(), status_mib("VmRSS:"));
    let (repo, recovery) = Repository::open(Arc::new(store), CAPACITY, chrono_now())?;
    println!("repository opened: RSS {:.0} MiB", status_mib("VmRSS:"));
    let open_s = t.elapsed().as_secs_f64();
    println!(
        "open: {} records in {open_s:.2} s (recovery clean: {}), peak RSS {:.0} MiB",
        recovery.loaded,
        recovery.is_clean(),
        peak_rss_mib()
    );

    let t = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0u64;
    repo.scan(&mut |r| {
        n += 1;
        bytes += r.attrs.size;
        std::ops::ControlFlow::Continue(())
    })?;
    let iter_s = t.elapsed().as_secs_f64();
    println!("iterate: {n} records ({bytes} bytes) in {iter_s:.2} s, peak RSS {:.0} MiB", peak_rss_mib());

    let pool = Arc::new(Pool::new(
        "bench".parse()?,
        repo,
        recovery,
        ClusterFile { pools: vec![], links: vec![] },
        tidepool_p2p::auth::ClusterKey::generate()?,
        "PinManager".into(),
        &Default::default(),
    )?);
    let t = Instant::now();
    let mut out = Count(0);
    exec::run_line(&pool, "rep ls", &mut out).map_err(|e| anyhow::anyhow!(e.render()))?;
    let ls_s = t.elapsed().as_secs_f64();
    println!("rep ls: {} bytes of output in {ls_s:.2} s, peak RSS {:.0} MiB", out.0, peak_rss_mib());

    let t = Instant::now();
    let mut stats = String::new();
    exec::run_line(&pool, "rep ls -s -sum", &mut stats).map_err(|e| anyhow::anyhow!(e.render()))?;
    println!("rep ls -s -sum: {:.2} s, peak RSS {:.0} MiB", t.elapsed().as_secs_f64(), peak_rss_mib());
    std::io::stdout().flush().context("flush")?;
    print!("{stats}");
    Ok(())
}

/// `p2p`: two real pool daemons on loopback; the target copies every replica of the source
/// with `pp get file`, and in the same run `cp -r` + `sync`, `rsync -a` and an rsync daemon on
/// 127.0.0.1 copy the very same files.
///
/// Data sets (`--set`): `large`, 16 files of 256 MiB; `small`, 20,000 files of 4 KiB; random
/// content. Layout of `<dir>/<set>/`: `pool1/` (the source pool, filled directly through its
/// store before it starts), `plain/` (hard links to the source pool's data files: the same
/// inodes, so every tool reads the same bytes from the same place), `manifest.txt`,
/// `cluster.toml`, `cluster.key`, `pool1.toml`, `pool2.toml`, the logs, and during a run
/// `pool2/` or `dst-*/`, which are removed after each measurement. A filled set is reused by a
/// later run with the same `--dir` if it was kept (`--keep`).
///
/// Each of `--runs` rounds (default 3) measures every variant of Tidepool, then each tool.
/// Tidepool: both daemons are started afresh (so peak RSS is that run's), the target gets
/// `pp set max active <c>` for each `--concurrency` (default 4 for large files, 8 for small),
/// the source `pp set max outgoing max(c, 16)`; then the clock starts, every `pp get file` is
/// sent on one admin connection (pipelined), and another connection polls `info` every 10 ms
/// until every replica is CACHED: the time is from the first command to the poll that sees
/// the last replica committed (a replica is acknowledged only once it is durable). With
/// `--window W` (a list; 0, the default, sends everything at once) at most W replicas are
/// asked for and not yet CACHED, which keeps the target's queue short; with `--batch B` (a
/// list; default 1) each `pp get file` names B pnfsids. Afterwards the stopped target's
/// records and every data file's checksum are compared with the source's.
///
/// Before every timed run: wait until the machine is quiet (it is shared), `sync`, then
/// `echo 3 > /proc/sys/vm/drop_caches` (`--cache cold`, the default), or, where that is not
/// permitted or `--cache warm` is asked for, read every source file once so that every tool
/// reads from the page cache.
mod p2p {
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::fmt::Write as _;
    use std::fs;
    use std::io::Read;
    use std::net::SocketAddr;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::time::{Duration, Instant};

    use anyhow::{Context, anyhow, bail};
    use tidepool_p2p::PnfsId;
    use tidepool_p2p::auth::{ClusterKey, Service};
    use tidepool_p2p::cluster::{ClusterFile, PoolEntry};
    use tidepool_p2p::conn::Connection;
    use tidepool_p2p::message::{AdminReply, AdminRequest};
    use tidepool_p2p::model::{AccessLatency, Checksum, ChecksumWriter, FileAttributes, ReplicaState, RetentionPolicy};
    use tidepool_repository::{Replica, ReplicaStore, SledStore, record};

    use super::{chrono_now, flag};

    pub const USAGE: &str = "bench p2p [--set large|small|both] [--concurrency N[,N..]] [--window W[,W..]] \
                             [--batch B[,B..]] [--runs R] [--cache cold|warm] [--dir DIR] [--keep]";

    /// How long a daemon (or the rsync daemon) may take to answer after it was started.
    pub(super) const START_DEADLINE: Duration = Duration::from_secs(30);
    /// How long a daemon may take to exit after SIGTERM (its grace is 5 s).
    const STOP_DEADLINE: Duration = Duration::from_secs(30);
    /// The pause between two `info` polls of the target while replicas arrive.
    pub(super) const POLL: Duration = Duration::from_millis(10);
    /// With every command queued and no replica arriving for this long, the harness looks
    /// whether any transfer is left at all.
    const STALL_CHECK: Duration = Duration::from_secs(3);
    /// Other processes may use this much CPU (in CPUs) before a timed run starts...
    const QUIET_CPU: f64 = 0.15;
    /// ...waiting at most this long for it.
    const QUIET_WAIT: Duration = Duration::from_secs(300);
    /// A run during which everything else used more than this share of the CPUs is marked
    /// (Tidepool's own runs show about 10%: kernel threads writing back and moving packets).
    pub(super) const DISTURBED: f64 = 0.2;

    /// One data set.
    #[derive(Clone, Copy, Debug)]
    pub(super) struct DataSet {
        pub(super) name: &'static str,
        pub(super) files: usize,
        pub(super) size: usize,
        /// The default `pp set max active` of the target.
        concurrency: usize,
        /// The seed of the first file's content (`sample_bytes`); the others follow.
        seed: u64,
    }

    pub(super) const LARGE: DataSet =
        DataSet { name: "large", files: 16, size: 256 << 20, concurrency: 4, seed: 1 << 40 };
    pub(super) const SMALL: DataSet =
        DataSet { name: "small", files: 20_000, size: 4 << 10, concurrency: 8, seed: 2 << 40 };

    impl DataSet {
        pub(super) fn bytes(&self) -> u64 {
            (self.files * self.size) as u64
        }

        pub(super) fn describe(&self) -> String {
            format!("{} files of {}", self.files, human(self.size as u64))
        }

        /// What `filled` holds once the set is complete: a set left half-written is redone.
        fn marker(&self) -> String {
            format!("set={} files={} size={} seed={}\n", self.name, self.files, self.size, self.seed)
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum CacheMode {
        /// `sync` and drop the page cache before each timed run: every tool reads from disk.
        Cold,
        /// `sync` and read every source file before each timed run: every tool reads from memory.
        Warm,
    }

    struct Options {
        sets: Vec<DataSet>,
        concurrency: Option<Vec<usize>>,
        windows: Vec<usize>,
        batches: Vec<usize>,
        runs: usize,
        cache: CacheMode,
        dir: Option<PathBuf>,
        keep: bool,
    }

    /// Refuses arguments other than `takes_value` (each followed by its value) and `--keep`.
    pub(super) fn check_args(args: &[String], takes_value: &[&str], usage: &str) -> anyhow::Result<()> {
        let mut i = 0;
        while i < args.len() {
            match args[i].as_str() {
                a if takes_value.contains(&a) => i += 2,
                "--keep" => i += 1,
                other => bail!("unknown argument {other:?}\nusage: {usage}"),
            }
        }
        Ok(())
    }

    /// `--set large|small|both` (default both).
    pub(super) fn data_sets(args: &[String]) -> anyhow::Result<Vec<DataSet>> {
        Ok(match flag(args, "--set").unwrap_or("both") {
            "large" => vec![LARGE],
            "small" => vec![SMALL],
            "both" => vec![LARGE, SMALL],
            other => bail!("--set {other}: expected large, small or both"),
        })
    }

    /// `--cache cold|warm` (default cold).
    pub(super) fn cache_option(args: &[String]) -> anyhow::Result<CacheMode> {
        Ok(match flag(args, "--cache").unwrap_or("cold") {
            "cold" => CacheMode::Cold,
            "warm" => CacheMode::Warm,
            other => bail!("--cache {other}: expected cold or warm"),
        })
    }

    fn options(args: &[String]) -> anyhow::Result<Options> {
        let takes_value = ["--set", "--concurrency", "--window", "--batch", "--runs", "--cache", "--dir"];
        check_args(args, &takes_value, USAGE)?;
        let sets = data_sets(args)?;
        let numbers = |name: &str, list: &str, min: usize| {
            list.split(',')
                .map(|n| n.trim().parse::<usize>().ok().filter(|&n| n >= min).ok_or_else(|| anyhow!("{name} {list}")))
                .collect::<anyhow::Result<Vec<usize>>>()
        };
        let concurrency = flag(args, "--concurrency").map(|l| numbers("--concurrency", l, 1)).transpose()?;
        let windows = numbers("--window", flag(args, "--window").unwrap_or("0"), 0)?;
        let batches = numbers("--batch", flag(args, "--batch").unwrap_or("1"), 1)?;
        let runs: usize = flag(args, "--runs").unwrap_or("3").parse().context("--runs")?;
        if runs == 0 {
            bail!("--runs must be at least 1");
        }
        let cache = cache_option(args)?;
        Ok(Options {
            sets,
            concurrency,
            windows,
            batches,
            runs,
            cache,
            dir: flag(args, "--dir").map(PathBuf::from),
            keep: args.iter().any(|a| a == "--keep"),
        })
    }

    pub fn run(args: &[String]) -> anyhow::Result<()> {
        let mut opts = options(args)?;
        let bins = Binaries::find()?;
        opts.cache = cache_mode(opts.cache);
        let rsync = have_rsync("the `rsync -a` and rsync daemon comparisons are skipped");
        let temp;
        let base = match &opts.dir {
            Some(d) => d.clone(),
            None => {
                temp = tempfile::Builder::new().prefix("tidepool-bench-p2p-").tempdir_in(".")?;
                temp.path().to_path_buf()
            }
        };
        fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
        let base = base.canonicalize()?;
        print_machine(&bins, &base, opts.cache);
        for set in &opts.sets {
            let concurrency = opts.concurrency.clone().unwrap_or_else(|| vec![set.concurrency]);
            let variants: Vec<Variant> = concurrency
                .iter()
                .flat_map(|&concurrency| opts.windows.iter().map(move |&window| (concurrency, window)))
                .flat_map(|(concurrency, window)| {
                    opts.batches.iter().map(move |&batch| Variant { concurrency, window, batch })
                })
                .collect();
            let dir = base.join(set.name);
            let result = run_set(*set, &dir, &bins, &opts, &variants, rsync);
            if !opts.keep {
                let _ = fs::remove_dir_all(&dir);
            }
            result?;
        }
        if opts.keep {
            println!("kept the data sets in {} (--keep); later runs with --dir reuse them", base.display());
        }
        Ok(())
    }

    /// `cache`, or `Warm` (with a note) when `Cold` is asked for and the page cache cannot be
    /// dropped here.
    pub(super) fn cache_mode(cache: CacheMode) -> CacheMode {
        if cache == CacheMode::Warm {
            return cache;
        }
        let dropped = Command::new("sync")
            .status()
            .map_err(anyhow::Error::from)
            .and_then(|_| fs::write("/proc/sys/vm/drop_caches", "3").map_err(anyhow::Error::from));
        match dropped {
            Ok(()) => CacheMode::Cold,
            Err(e) => {
                println!(
                    "note: cannot drop the page cache ({e}); falling back to --cache warm: every source file is \
                     read once before each timed run, so every tool reads from memory"
                );
                CacheMode::Warm
            }
        }
    }

    /// Whether `rsync` runs here; if not, says so and what is skipped (`skipped`).
    pub(super) fn have_rsync(skipped: &str) -> bool {
        let rsync = Command::new("rsync").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
        if !rsync {
            println!("note: rsync is not installed (Debian: `apt-get install rsync`); {skipped}");
        }
        rsync
    }

    /// The daemon's binaries, beside this one in `target/<profile>/`.
    pub(super) struct Binaries {
        pub(super) tidepool: PathBuf,
    }

    impl Binaries {
        pub(super) fn find() -> anyhow::Result<Binaries> {
            let exe = std::env::current_exe()?;
            let dir = exe.parent().context("the bench binary's folder")?;
            let tidepool = dir.join("tidepool");
            if !tidepool.is_file() {
                bail!(
                    "{} is missing: run `cargo build --release --bin tidepool --bin tidepool-admin` first",
                    tidepool.display()
                );
            }
            Ok(Binaries { tidepool })
        }
    }

    pub(super) fn print_machine(bins: &Binaries, base: &Path, cache: CacheMode) {
        let mem = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines().find(|l| l.starts_with("MemTotal:")).map(|l| l.split_whitespace().nth(1).map(str::to_owned))
            })
            .flatten()
            .and_then(|kib| kib.parse::<f64>().ok())
            .map(|kib| format!("{:.1} GiB", kib / 1048576.0))
            .unwrap_or_else(|| "?".into());
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        println!("machine: {cpus} CPUs, {mem} RAM, Linux {}", kernel.trim());
        println!("data under {} (device {})", base.display(), disk_name(base).unwrap_or_else(|| "?".into()));
        println!(
            "page cache before each timed run: {}",
            match cache {
                CacheMode::Cold => "sync + drop_caches (every tool reads its source from disk)",
                CacheMode::Warm => "sync + every source file read once (every tool reads its source from memory)",
            }
        );
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."));
        let head = Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["describe", "--always", "--dirty"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        println!("tidepool: {} (workspace at {head})", bins.tidepool.display());
        if let Some(note) = stale(&bins.tidepool, root) {
            println!("{note}");
        }
    }

    /// A note naming a daemon source file newer than the binary, if there is one.
    fn stale(binary: &Path, root: &Path) -> Option<String> {
        let built = binary.metadata().and_then(|m| m.modified()).ok()?;
        let mut dirs: Vec<PathBuf> = ["pool/src", "migration/src", "p2p/src"].iter().map(|d| root.join(d)).collect();
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir).ok()?.flatten() {
                let meta = entry.metadata().ok()?;
                if meta.is_dir() {
                    dirs.push(entry.path());
                } else if meta.modified().is_ok_and(|m| m > built) {
                    return Some(format!(
                        "note: {} is newer than the binary; `cargo build --release --bin tidepool` measures it",
                        entry.path().display()
                    ));
                }
            }
        }
        None
    }

    /// How the target is driven.
    #[derive(Clone, Copy, Debug)]
    struct Variant {
        /// `pp set max active` on the target.
        concurrency: usize,
        /// At most this many replicas asked for and not yet CACHED; 0: every command at once.
        window: usize,
        /// Pnfsids per `pp get file`.
        batch: usize,
    }

    impl Variant {
        fn label(&self) -> String {
            let mut label = format!("tidepool c={}", self.concurrency);
            if self.window > 0 {
                let _ = write!(label, " w={}", self.window);
            }
            if self.batch > 1 {
                let _ = write!(label, " b={}", self.batch);
            }
            label
        }
    }

    /// What one tool did in one run.
    #[derive(Clone, Debug)]
    pub(super) struct Measure {
        pub(super) tool: String,
        pub(super) secs: f64,
        pub(super) bytes: u64,
        pub(super) files: u64,
        /// CPU seconds (user + system) of every process of the tool.
        pub(super) cpu: f64,
        /// CPU seconds of everything else on the machine during the timed run (other users,
        /// kernel threads such as writeback).
        pub(super) others: f64,
        /// Peak resident memory of the source and target daemons, in MiB (Tidepool only).
        pub(super) rss: Option<(f64, f64)>,
        /// Bytes read from and written to the data's disk during the timed run.
        pub(super) disk: Option<(u64, u64)>,
        pub(super) note: String,
    }

    impl Measure {
        pub(super) fn mb_s(&self) -> f64 {
            self.bytes as f64 / self.secs / 1e6
        }

        pub(super) fn files_s(&self) -> f64 {
            self.files as f64 / self.secs
        }

        /// Whether other processes used more than [`DISTURBED`] of the machine's CPUs during
        /// the timed run.
        pub(super) fn disturbed(&self) -> bool {
            let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
            self.others > DISTURBED * cpus * self.secs
        }

        pub(super) fn line(&self) -> String {
            let disk = match self.disk {
                Some((r, w)) => format!("device read {:>5.0} MB, written {:>5.0} MB", r as f64 / 1e6, w as f64 / 1e6),
                None => "disk n/a".into(),
            };
            format!(
                "{:<22} {:>8.2} s {:>8.1} MB/s {:>8.0} files/s  cpu {:>6.1} s (others {:>5.1} s)  {disk}  {}",
                self.tool,
                self.secs,
                self.mb_s(),
                self.files_s(),
                self.cpu,
                self.others,
                self.note
            )
        }
    }

    /// Everything one data set's runs share.
    pub(super) struct Bench<'a> {
        pub(super) set: DataSet,
        pub(super) dir: PathBuf,
        pub(super) bins: &'a Binaries,
        pub(super) cache: CacheMode,
        pub(super) key: ClusterKey,
        pub(super) manifest: Vec<(PnfsId, Checksum)>,
        pub(super) rt: tokio::runtime::Runtime,
    }

    fn run_set(
        set: DataSet,
        dir: &Path,
        bins: &Binaries,
        opts: &Options,
        variants: &[Variant],
        rsync: bool,
    ) -> anyhow::Result<()> {
        println!("\n=== {} set: {} ({} in all) ===", set.name, set.describe(), human(set.bytes()));
        let b = open_bench(set, dir, bins, opts.cache)?;
        let mut tools: Vec<Tool> = vec![Tool::Cp];
        if rsync {
            tools.extend([Tool::Rsync, Tool::RsyncDaemon]);
        }
        warm_up(&b)?;
        let mut rounds: Vec<Vec<Measure>> = Vec::new();
        for run in 1..=opts.runs {
            let mut round = Vec::new();
            for &v in variants {
                let m = run_tidepool(&b, v)?;
                println!("[{} {run}/{}] {}", set.name, opts.runs, m.line());
                round.push(m);
            }
            for &tool in &tools {
                let m = run_tool(&b, tool)?;
                println!("[{} {run}/{}] {}", set.name, opts.runs, m.line());
                round.push(m);
            }
            rounds.push(round);
        }
        summarise(set, &rounds, variants);
        Ok(())
    }

    /// Fills the set (see [`prepare`]) and makes a cluster key for it unless there is one.
    pub(super) fn open_bench<'a>(
        set: DataSet,
        dir: &Path,
        bins: &'a Binaries,
        cache: CacheMode,
    ) -> anyhow::Result<Bench<'a>> {
        let manifest = prepare(set, dir)?;
        let key = cluster_key(dir, bins)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Bench { set, dir: dir.to_path_buf(), bins, cache, key, manifest, rt })
    }

    /// `<dir>/cluster.key`, made with `tidepool keygen` unless it exists.
    pub(super) fn cluster_key(dir: &Path, bins: &Binaries) -> anyhow::Result<ClusterKey> {
        let key_path = dir.join("cluster.key");
        if !key_path.exists() {
            let status = Command::new(&bins.tidepool).arg("keygen").arg(&key_path).stdout(Stdio::null()).status()?;
            if !status.success() {
                bail!("tidepool keygen {} failed", key_path.display());
            }
        }
        ClusterKey::parse(&fs::read_to_string(&key_path)?).map_err(anyhow::Error::msg)
    }

    /// Fills the source pool and `plain/` unless `dir` already holds this very set; returns
    /// every replica's pnfsid and checksum.
    pub(super) fn prepare(set: DataSet, dir: &Path) -> anyhow::Result<Vec<(PnfsId, Checksum)>> {
        let marker = dir.join("filled");
        if fs::read_to_string(&marker).is_ok_and(|m| m == set.marker()) {
            println!("reusing the data set in {}", dir.display());
            return read_manifest(&dir.join("manifest.txt"));
        }
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("remove the incomplete {}", dir.display()))?;
        }
        fs::create_dir_all(dir.join("plain"))?;
        let started = Instant::now();
        let pool_dir = dir.join("pool1");
        let store = SledStore::open(&pool_dir)?;
        let now = chrono_now();
        let mut manifest = Vec::with_capacity(set.files);
        let mut text = String::new();
        for i in 0..set.files {
            let seed = set.seed + i as u64;
            let content = tidepool_tests::sample_bytes(set.size, seed);
            let mut sum = ChecksumWriter::new();
            sum.update(&content);
            let checksum = sum.finish();
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&seed.to_be_bytes());
            raw[8..].copy_from_slice(&seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
            let pnfsid = PnfsId::from_random(raw);
            let replica = Replica {
                attrs: FileAttributes {
                    pnfsid,
                    size: set.size as u64,
                    checksum: Some(checksum),
                    storage_class: Some("bench:p2p".into()),
                    cache_class: None,
                    access_latency: Some(AccessLatency::Online),
                    retention_policy: Some(RetentionPolicy::Replica),
                    hsm: None,
                    creation_time: now,
                    access_time: now,
                },
                state: ReplicaState::Cached,
                sticky: vec![],
            };
            let data = pool_dir.join("data").join(pnfsid.to_string());
            fs::write(&data, &content).with_context(|| format!("write {}", data.display()))?;
            fs::hard_link(&data, dir.join("plain").join(format!("f{i:05}")))?;
            store.put_record(&pnfsid, &record::encode(&replica))?;
            let _ = writeln!(text, "{pnfsid} {checksum}");
            manifest.push((pnfsid, checksum));
        }
        store.flush()?;
        drop(store);
        fs::write(dir.join("manifest.txt"), text)?;
        let status = Command::new("sync").status()?;
        if !status.success() {
            bail!("sync failed");
        }
        fs::write(&marker, set.marker())?;
        println!(
            "filled the source pool and plain/ (hard links to its data files) in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(manifest)
    }

    fn read_manifest(path: &Path) -> anyhow::Result<Vec<(PnfsId, Checksum)>> {
        let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        text.lines()
            .map(|l| {
                let (id, sum) = l.split_once(' ').ok_or_else(|| anyhow!("bad manifest line {l:?}"))?;
                Ok((id.parse().map_err(|e| anyhow!("{e}"))?, sum.parse().map_err(anyhow::Error::msg)?))
            })
            .collect()
    }

    impl Bench<'_> {
        /// Makes the caches the same for every tool: everything written so far goes to disk,
        /// then the page cache is dropped (cold) or every source file is read (warm).
        pub(super) fn settle(&self) -> anyhow::Result<()> {
            let status = Command::new("sync").status()?;
            if !status.success() {
                bail!("sync failed");
            }
            match self.cache {
                CacheMode::Cold => fs::write("/proc/sys/vm/drop_caches", "3").context("drop the page cache")?,
                CacheMode::Warm => {
                    let mut buf = vec![0u8; 1 << 20];
                    for entry in fs::read_dir(self.dir.join("plain"))? {
                        let mut f = fs::File::open(entry?.path())?;
                        while f.read(&mut buf)? > 0 {}
                    }
                }
            }
            Ok(())
        }

        pub(super) fn plain(&self) -> PathBuf {
            self.dir.join("plain")
        }

        pub(super) fn disk(&self) -> Option<(u64, u64)> {
            disk_bytes(&self.dir)
        }
    }

    /// Bytes read and written so far by the disk holding `path` (/proc/diskstats counts
    /// 512-byte sectors).
    fn disk_bytes(path: &Path) -> Option<(u64, u64)> {
        let (major, minor) = dev_numbers(path)?;
        let stats = fs::read_to_string("/proc/diskstats").ok()?;
        stats.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[0] != major.to_string() || f[1] != minor.to_string() {
                return None;
            }
            Some((f[5].parse::<u64>().ok()? * 512, f[9].parse::<u64>().ok()? * 512))
        })
    }

    fn disk_name(path: &Path) -> Option<String> {
        let (major, minor) = dev_numbers(path)?;
        let stats = fs::read_to_string("/proc/diskstats").ok()?;
        stats.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[0] == major.to_string() && f[1] == minor.to_string()).then(|| f[2].to_string())
        })
    }

    fn dev_numbers(path: &Path) -> Option<(u64, u64)> {
        let dev = fs::metadata(path).ok()?.dev();
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        Some((major, minor))
    }

    pub(super) fn delta(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<(u64, u64)> {
        let ((r0, w0), (r1, w1)) = (before?, after?);
        Some((r1.saturating_sub(r0), w1.saturating_sub(w0)))
    }

    /// CPU seconds (user + system) of a process from `/proc/<pid>/stat`: its own (`utime`,
    /// `stime`) and, with `children`, also those of the children it has reaped (`cutime`,
    /// `cstime`). The kernel reports clock ticks, 100 per second on Linux.
    pub(super) fn cpu_secs(pid: &str, children: bool) -> f64 {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
        // The fields after the command name in parentheses, from field 3 (state) on.
        let Some((_, rest)) = stat.rsplit_once(')') else { return f64::NAN };
        let f: Vec<u64> = rest.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
        // utime, stime, cutime, cstime are fields 14..=17, i.e. 10..=13 here.
        if f.len() < 14 {
            return f64::NAN;
        }
        let ticks = if children { f[10] + f[11] + f[12] + f[13] } else { f[10] + f[11] };
        ticks as f64 / 100.0
    }

    /// Bytes a process had the storage layer read and write so far (`read_bytes` and
    /// `write_bytes` of `/proc/<pid>/io`: what reached or came from the disk, not the page cache).
    pub(super) fn proc_io(pid: &str) -> (u64, u64) {
        let text = fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let field =
            |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok()).unwrap_or(0);
        (field("read_bytes:"), field("write_bytes:"))
    }

    /// CPU seconds the whole machine spent busy (neither idle nor waiting for I/O) since boot,
    /// from the first line of /proc/stat (clock ticks, 100 per second).
    pub(super) fn busy_secs() -> f64 {
        let text = fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(cpu) = text.lines().next() else { return f64::NAN };
        let f: Vec<u64> = cpu.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        if f.len() < 8 {
            return f64::NAN;
        }
        (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) as f64 / 100.0
    }

    /// The machine is shared: waits until other processes use less than [`QUIET_CPU`] of a
    /// CPU over one second, for at most [`QUIET_WAIT`]. Returns a note if it never was.
    pub(super) fn wait_quiet() -> Option<String> {
        let started = Instant::now();
        loop {
            let before = busy_secs();
            std::thread::sleep(Duration::from_secs(1));
            let busy = busy_secs() - before;
            if busy < QUIET_CPU {
                return None;
            }
            if started.elapsed() > QUIET_WAIT {
                return Some(format!("machine busy: {busy:.2} CPUs in use before the run"));
            }
        }
    }

    /// A child process that is killed if it is still running when dropped.
    pub(super) struct Proc {
        what: String,
        child: Option<Child>,
    }

    impl Proc {
        pub(super) fn spawn(what: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
            let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
            let err = out.try_clone()?;
            let child = cmd
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .with_context(|| format!("start {what}: {cmd:?}"))?;
            Ok(Proc { what: what.into(), child: Some(child) })
        }

        pub(super) fn pid(&self) -> String {
            self.child.as_ref().map(|c| c.id().to_string()).unwrap_or_default()
        }

        /// Fails if the process has exited.
        pub(super) fn check_running(&mut self, log: &Path) -> anyhow::Result<()> {
            let child = self.child.as_mut().context("not started")?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                let text = fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                bail!(
                    "{} exited ({status}); the end of {}:\n{}",
                    self.what,
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            Ok(())
        }

        /// `VmHWM` (peak resident memory) in MiB.
        pub(super) fn peak_rss_mib(&self) -> f64 {
            fs::read_to_string(format!("/proc/{}/status", self.pid()))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmHWM:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                })
                .map(|kib| kib / 1024.0)
                .unwrap_or(f64::NAN)
        }

        pub(super) fn cpu(&self) -> f64 {
            cpu_secs(&self.pid(), false)
        }

        /// SIGTERM, then waits for the exit.
        pub(super) fn stop(mut self) -> anyhow::Result<ExitStatus> {
            let mut child = self.child.take().context("not running")?;
            terminate(&child)?;
            let deadline = Instant::now() + STOP_DEADLINE;
            loop {
                if let Some(status) = child.try_wait()? {
                    return Ok(status);
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("{} did not exit within {STOP_DEADLINE:?} of SIGTERM; killed it", self.what);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    impl Drop for Proc {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Sends SIGTERM to a child that has not been reaped, so its pid cannot have been reused.
    #[allow(unsafe_code)]
    fn terminate(child: &Child) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: kill(2) takes two integers and touches no memory of ours; the pid is our own
        // un-reaped child, so it names that process and no other.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        if rc != 0 {
            bail!("kill -TERM {pid}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// One authenticated admin connection.
    pub(super) struct Admin {
        conn: Connection,
    }

    impl Admin {
        pub(super) async fn open(addr: SocketAddr, key: &ClusterKey) -> anyhow::Result<Admin> {
            let conn = Connection::open(addr, key, "bench", Service::Admin).await?;
            Ok(Admin { conn })
        }

        /// Runs one command line; its output, or an error if it failed.
        pub(super) async fn run(&mut self, line: &str) -> anyhow::Result<String> {
            self.conn.send(&AdminRequest::Run { line: line.into() }).await?;
            let mut out = String::new();
            loop {
                match self.conn.recv::<AdminReply>().await? {
                    AdminReply::Output(text) => out.push_str(&text),
                    AdminReply::Finished { error: None } => return Ok(out),
                    AdminReply::Finished { error: Some(e) } => bail!("`{line}`: {} (rc={})", e.message, e.code),
                    AdminReply::Commands(_) | AdminReply::CommandDetails(_) => bail!("`{line}`: unexpected reply"),
                }
            }
        }
    }

    /// Writes the cluster file (fresh loopback ports) and both pools' configs.
    pub(super) fn write_cluster(dir: &Path) -> anyhow::Result<[(SocketAddr, SocketAddr); 2]> {
        let ports = tidepool_tests::free_ports(4);
        let pools = [(ports[0], ports[1]), (ports[2], ports[3])];
        let file = ClusterFile {
            pools: pools
                .iter()
                .enumerate()
                .map(|(i, &(admin, p2p))| {
                    Ok(PoolEntry {
                        name: format!("pool{}", i + 1).parse().map_err(|e| anyhow!("{e}"))?,
                        p2p,
                        admin,
                        groups: vec!["bench".into()],
                        tags: Default::default(),
                        hsm: Vec::new(),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
            links: Vec::new(),
        };
        fs::write(dir.join("cluster.toml"), file.to_toml())?;
        for name in ["pool1", "pool2"] {
            let config = format!(
                "name = \"{name}\"\ndata_dir = \"{name}\"\ncapacity = \"1Ti\"\ncluster_file = \"cluster.toml\"\n\
                 key_file = \"cluster.key\"\nshutdown_grace_seconds = 5\n"
            );
            fs::write(dir.join(format!("{name}.toml")), config)?;
            // What `tidepool init` does: a pool starts only in a marked directory.
            let pool = name.parse().map_err(|e| anyhow!("{e}"))?;
            tidepool_pool::process::pool_dir::init(&dir.join(name), &pool)?;
        }
        Ok(pools)
    }

    /// Starts a pool daemon and returns it with an admin connection once it answers `info`.
    pub(super) fn start_pool(b: &Bench, name: &str, admin: SocketAddr) -> anyhow::Result<(Proc, Admin)> {
        start_pool_in(&b.dir, b.bins, &b.rt, &b.key, name, admin)
    }

    /// [`start_pool`] for a pool whose config (from [`write_cluster`]) is in `dir`.
    pub(super) fn start_pool_in(
        dir: &Path,
        bins: &Binaries,
        rt: &tokio::runtime::Runtime,
        key: &ClusterKey,
        name: &str,
        admin: SocketAddr,
    ) -> anyhow::Result<(Proc, Admin)> {
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(&bins.tidepool);
        cmd.arg("pool").arg("--config").arg(dir.join(format!("{name}.toml")));
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
        let mut proc = Proc::spawn(name, &mut cmd, &log)?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            proc.check_running(&log)?;
            // The listeners are bound once the repository is open: until then connecting fails.
            if let Ok(mut a) = rt.block_on(Admin::open(admin, key)) {
                rt.block_on(a.run("info"))?;
                return Ok((proc, a));
            }
            if Instant::now() > deadline {
                bail!("{name} did not answer on {admin} within {START_DEADLINE:?}; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// When the replicas arrived, counted from the first `pp get file`.
    struct Phases {
        /// The target had answered every `pp get file`.
        queued: Duration,
        /// The first replica was committed (seen by a poll).
        first: Duration,
        /// The last replica was committed (seen by a poll, at most [`POLL`] late).
        done: Duration,
    }

    fn run_tidepool(b: &Bench, variant: Variant) -> anyhow::Result<Measure> {
        let concurrency = variant.concurrency;
        let target_dir = b.dir.join("pool2");
        if target_dir.exists() {
            fs::remove_dir_all(&target_dir)?;
        }
        let [(src_admin, _), (tgt_admin, _)] = write_cluster(&b.dir)?;
        let (source, mut src) = start_pool(b, "pool1", src_admin)?;
        let (target, mut tgt) = start_pool(b, "pool2", tgt_admin)?;
        b.rt.block_on(tgt.run(&format!("pp set max active {concurrency}")))?;
        b.rt.block_on(src.run(&format!("pp set max outgoing {}", concurrency.max(16))))?;
        let pipe = b.rt.block_on(Connection::open(tgt_admin, &b.key, "bench", Service::Admin))?;
        let lines: Vec<(String, usize)> = b
            .manifest
            .chunks(variant.batch)
            .map(|ids| {
                let names: Vec<String> = ids.iter().map(|(id, _)| id.to_string()).collect();
                (format!("pp get file {} pool1", names.join(" ")), ids.len())
            })
            .collect();
        let busy = wait_quiet();
        b.settle()?;
        let cpu0 = (source.cpu(), target.cpu(), cpu_secs("self", false));
        let io0 = (proc_io(&source.pid()).0, proc_io(&target.pid()).1);
        let (disk0, busy0) = (b.disk(), busy_secs());
        let t0 = Instant::now();
        // Generous: 20 MB/s and 100 files/s would be a broken pool, not a slow one.
        let deadline = Duration::from_secs(60 + b.set.bytes() / 20_000_000 + b.set.files as u64 / 100);
        let phases = b.rt.block_on(copy_all(pipe, &mut tgt, lines, variant.window, t0, deadline))?;
        let (disk, busy1) = (delta(disk0, b.disk()), busy_secs());
        let cpu = (source.cpu() - cpu0.0, target.cpu() - cpu0.1, cpu_secs("self", false) - cpu0.2);
        let io = (proc_io(&source.pid()).0 - io0.0, proc_io(&target.pid()).1 - io0.1);
        let rss = (source.peak_rss_mib(), target.peak_rss_mib());
        drop((src, tgt));
        let target_exit = target.stop()?;
        let source_exit = source.stop()?;
        if !target_exit.success() || !source_exit.success() {
            bail!("the pools exited with {source_exit} (pool1) and {target_exit} (pool2); see their logs");
        }
        verify_pool(&target_dir, &b.manifest, b.set.size as u64)?;
        fs::remove_dir_all(&target_dir)?;
        Ok(Measure {
            tool: variant.label(),
            secs: phases.done.as_secs_f64(),
            bytes: b.set.bytes(),
            files: b.set.files as u64,
            cpu: cpu.0 + cpu.1,
            others: busy1 - busy0 - cpu.0 - cpu.1 - cpu.2,
            rss: Some(rss),
            disk,
            note: format!(
                "[cpu source {:.1} s, target {:.1} s, bench client {:.1} s; peak RSS source {:.0} MiB, target {:.0} MiB; \
                 source read {:.0} MB from disk, target wrote {:.0} MB; all queued at {:.2} s, first replica at \
                 {:.2} s]{}",
                cpu.0,
                cpu.1,
                cpu.2,
                rss.0,
                rss.1,
                io.0 as f64 / 1e6,
                io.1 as f64 / 1e6,
                phases.queued.as_secs_f64(),
                phases.first.as_secs_f64(),
                busy.map(|b| format!(" {b}")).unwrap_or_default()
            ),
        })
    }

    /// Queues every `pp get file` on one connection (pipelined: the commands are written
    /// without waiting for each answer, and the answers are read as they come) while another
    /// connection polls `info` until every replica is CACHED. With a `window` above 0, a
    /// command is sent only while fewer than `window` replicas asked for are not CACHED yet.
    /// Each line comes with the number of replicas it asks for.
    async fn copy_all(
        conn: Connection,
        poll: &mut Admin,
        lines: Vec<(String, usize)>,
        window: usize,
        t0: Instant,
        deadline: Duration,
    ) -> anyhow::Result<Phases> {
        let n: usize = lines.iter().map(|(_, files)| files).sum();
        let commands = lines.len();
        let all_queued = Cell::new(false);
        let cached_now = Cell::new(0usize);
        let progress = tokio::sync::Notify::new();
        let Connection { mut reader, mut writer, .. } = conn;
        let send = async {
            let mut asked = 0;
            for (line, files) in lines {
                // One task: nothing runs between the check and the wait's registration.
                while window > 0 && asked >= cached_now.get() + window {
                    progress.notified().await;
                }
                writer.send(&AdminRequest::Run { line }).await?;
                asked += files;
            }
            anyhow::Ok(())
        };
        let receive = async {
            let mut finished = 0;
            while finished < commands {
                match reader.recv::<AdminReply>().await? {
                    AdminReply::Output(_) => {}
                    AdminReply::Finished { error: None } => finished += 1,
                    AdminReply::Finished { error: Some(e) } => {
                        bail!("a `pp get file` failed: {} (rc={})", e.message, e.code)
                    }
                    AdminReply::Commands(_) | AdminReply::CommandDetails(_) => {
                        bail!("unexpected reply to `pp get file`")
                    }
                }
            }
            all_queued.set(true);
            anyhow::Ok(t0.elapsed())
        };
        let watch = async {
            let mut first = None;
            let mut seen = 0;
            let mut changed = Instant::now();
            loop {
                let info = poll.run("info").await?;
                let cached = cached_count(&info);
                let now = t0.elapsed();
                if cached > 0 && first.is_none() {
                    first = Some(now);
                }
                if cached >= n {
                    return anyhow::Ok((first.unwrap_or(now), now));
                }
                if cached != seen {
                    seen = cached;
                    changed = Instant::now();
                    cached_now.set(cached);
                    progress.notify_waiters();
                } else if all_queued.get() && changed.elapsed() > STALL_CHECK {
                    let ls = poll.run("pp ls").await?;
                    if ls.starts_with("incoming: 0 active") && ls.contains(", 0 queued;") {
                        let long = poll.run("pp ls -l").await?;
                        let failed: Vec<&str> = long.lines().filter(|l| l.contains("FAILED")).collect();
                        bail!(
                            "only {cached} of {n} replicas arrived and no transfer is left; recent failures:\n{}",
                            failed.join("\n")
                        );
                    }
                    changed = Instant::now();
                }
                if now > deadline {
                    bail!("only {cached} of {n} replicas arrived within {deadline:?}");
                }
                tokio::time::sleep(POLL).await;
            }
        };
        let ((), queued, (first, done)) = tokio::try_join!(send, receive, watch)?;
        Ok(Phases { queued, first, done })
    }

    /// The CACHED count of `info`'s `Replicas : 20000 (CACHED 19990, FROM_POOL 10)` line.
    fn cached_count(info: &str) -> usize {
        tidepool_tests::info_field(info, "Replicas")
            .and_then(|v| v.split_once("CACHED "))
            .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Checks the stopped target pool: one CACHED record per source replica with the source's
    /// size and checksum, and a data file whose content has that checksum.
    pub(super) fn verify_pool(dir: &Path, manifest: &[(PnfsId, Checksum)], size: u64) -> anyhow::Result<()> {
        let store = SledStore::open(dir)?;
        let mut records: HashMap<PnfsId, Result<Replica, String>> = HashMap::new();
        store.scan_records(&mut |k, v| {
            if let Ok(id) = PnfsId::from_bytes(k) {
                records.insert(id, record::decode(id, v));
            }
            std::ops::ControlFlow::Continue(())
        })?;
        drop(store);
        if records.len() != manifest.len() {
            bail!("the target holds {} records, the source {}", records.len(), manifest.len());
        }
        let mut buf = vec![0u8; 1 << 20];
        for (id, sum) in manifest {
            let r = match records.get(id) {
                Some(Ok(r)) => r,
                Some(Err(e)) => bail!("record of {id} in the target: {e}"),
                None => bail!("{id} is missing in the target"),
            };
            if r.state != ReplicaState::Cached || r.attrs.size != size || r.attrs.checksum != Some(*sum) {
                bail!(
                    "{id} in the target: {} {} bytes {:?}, expected CACHED {size} {sum}",
                    r.state.as_str(),
                    r.attrs.size,
                    r.attrs.checksum
                );
            }
            let mut f = fs::File::open(dir.join("data").join(id.to_string()))?;
            let mut got = ChecksumWriter::new();
            let mut len = 0;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got.update(&buf[..n]);
                len += n as u64;
            }
            if len != size || got.finish() != *sum {
                bail!(
                    "the data file of {id} in the target has {len} bytes and {}, expected {size} and {sum}",
                    got.finish()
                );
            }
        }
        Ok(())
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Tool {
        Cp,
        Rsync,
        RsyncDaemon,
    }

    impl Tool {
        fn name(self) -> &'static str {
            match self {
                Tool::Cp => "cp -r + sync",
                Tool::Rsync => "rsync -a",
                Tool::RsyncDaemon => "rsync daemon",
            }
        }

        fn slug(self) -> &'static str {
            match self {
                Tool::Cp => "cp",
                Tool::Rsync => "rsync",
                Tool::RsyncDaemon => "rsyncd",
            }
        }
    }

    pub(super) fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
        let status = cmd.status().with_context(|| format!("run {cmd:?}"))?;
        if !status.success() {
            bail!("{cmd:?} failed: {status}");
        }
        Ok(())
    }

    /// Times one tool copying `plain/` into a fresh `dst-<tool>/`. CPU is that of every
    /// process of the tool, which this process reaps (the rsync daemon, and with it the
    /// server processes it reaped, is stopped before the figure is read).
    pub(super) fn run_tool(b: &Bench, tool: Tool) -> anyhow::Result<Measure> {
        let dst = b.dir.join(format!("dst-{}", tool.slug()));
        if dst.exists() {
            fs::remove_dir_all(&dst)?;
        }
        let src = format!("{}/", b.plain().display());
        let cpu0 = cpu_secs("self", true) - cpu_secs("self", false);
        let mut daemon = None;
        let mut cmd = match tool {
            Tool::Cp => {
                let mut c = Command::new("cp");
                c.arg("-r").arg(b.plain()).arg(&dst);
                c
            }
            Tool::Rsync => {
                let mut c = Command::new("rsync");
                c.arg("-a").arg(&src).arg(format!("{}/", dst.display()));
                c
            }
            Tool::RsyncDaemon => {
                fs::create_dir_all(&dst)?;
                let (proc, port) = start_rsyncd(b, &dst)?;
                daemon = Some(proc);
                let mut c = Command::new("rsync");
                c.arg("-a").arg(&src).arg(format!("rsync://127.0.0.1:{port}/bench/"));
                c
            }
        };
        let busy = wait_quiet();
        b.settle()?;
        let (disk0, busy0, self0) = (b.disk(), busy_secs(), cpu_secs("self", false));
        let t0 = Instant::now();
        run_ok(&mut cmd)?;
        if tool == Tool::Cp {
            run_ok(&mut Command::new("sync"))?;
        }
        let secs = t0.elapsed().as_secs_f64();
        let (disk, busy1, self1) = (delta(disk0, b.disk()), busy_secs(), cpu_secs("self", false));
        if let Some(d) = daemon {
            let status = d.stop()?;
            // rsync's daemon exits with 20 ("received SIGINT, SIGTERM") when told to stop.
            if !(status.success() || status.code() == Some(20)) {
                bail!("the rsync daemon exited with {status}");
            }
        }
        let cpu = cpu_secs("self", true) - cpu_secs("self", false) - cpu0;
        // The rsync daemon's own figure includes a little CPU from outside the timed run (its
        // start and stop); everything else of the tool ran inside it.
        let others = busy1 - busy0 - cpu - (self1 - self0);
        verify_tree(&dst, b.set)?;
        fs::remove_dir_all(&dst)?;
        Ok(Measure {
            tool: tool.name().into(),
            secs,
            bytes: b.set.bytes(),
            files: b.set.files as u64,
            cpu,
            others,
            rss: None,
            disk,
            note: match tool {
                Tool::Cp => "[data on disk at the end: sync]".to_string(),
                _ => "[no fsync: data may still be in the page cache at the end]".to_string(),
            } + &busy.map(|b| format!(" {b}")).unwrap_or_default(),
        })
    }

    /// Starts `rsync --daemon` on a free loopback port with a module `bench` writing into
    /// `dst`, and waits until it lists its modules.
    fn start_rsyncd(b: &Bench, dst: &Path) -> anyhow::Result<(Proc, u16)> {
        let port = tidepool_tests::free_ports(1)[0].port();
        let meta = fs::metadata(&b.dir)?;
        let conf = b.dir.join("rsyncd.conf");
        fs::write(
            &conf,
            format!(
                "use chroot = no\nlog file = {log}\n\n[bench]\n    path = {path}\n    read only = no\n    \
                 uid = {uid}\n    gid = {gid}\n",
                log = b.dir.join("rsyncd.log").display(),
                path = dst.display(),
                uid = meta.uid(),
                gid = meta.gid()
            ),
        )?;
        let log = b.dir.join("rsyncd.out");
        let mut cmd = Command::new("rsync");
        cmd.arg("--daemon")
            .arg("--no-detach")
            .arg(format!("--config={}", conf.display()))
            .arg("--address=127.0.0.1")
            .arg(format!("--port={port}"));
        let mut proc = Proc::spawn("rsync daemon", &mut cmd, &log)?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            proc.check_running(&log)?;
            let listed = Command::new("rsync")
                .arg("--list-only")
                .arg(format!("rsync://127.0.0.1:{port}/"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if listed.success() {
                return Ok((proc, port));
            }
            if Instant::now() > deadline {
                bail!("the rsync daemon did not answer on port {port} within {START_DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An untimed `cp -r` + `sync` of the whole set before the first measurement. Without it
    /// the first run of an invocation, whichever tool it is, took up to twice as long and twice
    /// the CPU (seen on a Firecracker VM; presumably memory the guest has not touched for a
    /// while is slow to touch again).
    pub(super) fn warm_up(b: &Bench) -> anyhow::Result<()> {
        let dst = b.dir.join("dst-warm-up");
        if dst.exists() {
            fs::remove_dir_all(&dst)?;
        }
        let t0 = Instant::now();
        run_ok(Command::new("cp").arg("-r").arg(b.plain()).arg(&dst))?;
        run_ok(&mut Command::new("sync"))?;
        println!("warm-up (untimed): cp -r + sync in {:.2} s", t0.elapsed().as_secs_f64());
        fs::remove_dir_all(&dst)?;
        Ok(())
    }

    /// Checks that a copy holds as many files and bytes as the set.
    fn verify_tree(dir: &Path, set: DataSet) -> anyhow::Result<()> {
        let (mut files, mut bytes) = (0usize, 0u64);
        for entry in fs::read_dir(dir)? {
            let meta = entry?.metadata()?;
            if meta.is_file() {
                files += 1;
                bytes += meta.len();
            }
        }
        if files != set.files || bytes != set.bytes() {
            bail!(
                "{} holds {files} files and {bytes} bytes, expected {} and {}",
                dir.display(),
                set.files,
                set.bytes()
            );
        }
        Ok(())
    }

    pub(super) fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub(super) fn list(v: &[f64], digits: usize) -> String {
        v.iter().map(|x| format!("{x:.digits$}")).collect::<Vec<_>>().join(", ")
    }

    /// Medians per tool, per-run ratios of Tidepool to each tool, and the goals.
    fn summarise(set: DataSet, rounds: &[Vec<Measure>], variants: &[Variant]) {
        let tools: Vec<String> = rounds[0].iter().map(|m| m.tool.clone()).collect();
        let of =
            |tool: &str| -> Vec<&Measure> { rounds.iter().filter_map(|r| r.iter().find(|m| m.tool == tool)).collect() };
        println!("\n--- {} set: {}, {} run(s) ---", set.name, set.describe(), rounds.len());
        println!("| tool | wall time per run | median time | MB/s | files/s | CPU s | peak RSS source / target |");
        println!("|---|---|---|---|---|---|---|");
        for t in &tools {
            let ms = of(t);
            let secs: Vec<f64> = ms.iter().map(|m| m.secs).collect();
            let per_run: Vec<String> =
                ms.iter().map(|m| format!("{:.2}{}", m.secs, if m.disturbed() { "*" } else { "" })).collect();
            let rss = if ms.iter().all(|m| m.rss.is_some()) {
                let (s, t): (Vec<f64>, Vec<f64>) = ms.iter().filter_map(|m| m.rss).unzip();
                format!("{:.0} / {:.0} MiB", median(s), median(t))
            } else {
                "–".into()
            };
            println!(
                "| {t} | {} s | {:.2} s | {:.1} | {:.0} | {:.1} | {rss} |",
                per_run.join(", "),
                median(secs.clone()),
                median(ms.iter().map(|m| m.mb_s()).collect()),
                median(ms.iter().map(|m| m.files_s()).collect()),
                median(ms.iter().map(|m| m.cpu).collect()),
            );
        }
        println!("(* other processes used more than {:.0}% of the CPUs during that run)", DISTURBED * 100.0);
        let baselines: Vec<&String> = tools.iter().filter(|t| !t.starts_with("tidepool")).collect();
        println!("\nTidepool's throughput over each tool's (the same for MB/s and files/s), per run:");
        for v in variants {
            let tp = v.label();
            for base in &baselines {
                let ratios: Vec<f64> =
                    rounds.iter().filter_map(|r| Some(time_of(r, base)? / time_of(r, &tp)?)).collect();
                println!("  {tp} / {base}: {} (median {:.2})", list(&ratios, 2), median(ratios.clone()));
            }
            let goals: &[(&str, f64)] = match set.name {
                "large" => &[("cp -r + sync", 0.9), ("rsync daemon", 1.5)],
                _ => &[("rsync daemon", 1.0)],
            };
            let met = rounds
                .iter()
                .filter(|r| {
                    goals.iter().all(|(base, want)| {
                        matches!((time_of(r, base), time_of(r, &tp)), (Some(b), Some(t)) if b / t >= *want)
                    })
                })
                .count();
            let wanted: Vec<String> = goals.iter().map(|(b, w)| format!(">= {w}x {b}")).collect();
            let missing: Vec<&str> = goals.iter().map(|(b, _)| *b).filter(|b| !tools.iter().any(|t| t == b)).collect();
            if missing.is_empty() {
                println!("  goal ({}): met in {met} of {} run(s)", wanted.join(" and "), rounds.len());
            } else {
                println!("  goal ({}): not measured ({} did not run)", wanted.join(" and "), missing.join(", "));
            }
        }
    }

    fn time_of(round: &[Measure], tool: &str) -> Option<f64> {
        round.iter().find(|m| m.tool == tool).map(|m| m.secs)
    }

    pub(super) fn human(bytes: u64) -> String {
        match bytes {
            b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
            b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
            b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
            b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
            b => format!("{b} bytes"),
        }
    }
}
