//! What the benchmarks read from the kernel: CPU time of a process and of the whole machine,
//! a process's disk I/O and peak memory, the data disk's counters, and dropping the page
//! cache. Through `procfs` (parsed /proc files) and `rustix` (device numbers), not by hand.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use procfs::process::Process;
use procfs::{Current, CurrentSI};

/// Other processes may use this much CPU (in CPUs) before a timed run starts...
const QUIET_CPU: f64 = 0.15;

/// ...waiting at most this long for it.
const QUIET_WAIT: Duration = Duration::from_secs(300);

/// A run during which everything else used more than this share of the CPUs is marked
/// (Tidepool's own runs show about 10%: kernel threads writing back and moving packets).
pub(crate) const DISTURBED: f64 = 0.2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CacheMode {
    /// `sync` and drop the page cache before each timed run: every tool reads from disk.
    Cold,
    /// `sync` and read every source file before each timed run: every tool reads from memory.
    Warm,
}

/// The workspace's commit as `git describe --always --dirty` names it (empty if git cannot).
pub(crate) fn workspace_head() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."));
    Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["describe", "--always", "--dirty"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn print_machine(tidepool: &Path, base: &Path, cache: CacheMode) {
    let mem = procfs::Meminfo::current()
        .map(|m| format!("{:.1} GiB", m.mem_total as f64 / (1u64 << 30) as f64))
        .unwrap_or_else(|_| "?".into());
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = rustix::system::uname();
    println!("machine: {cpus} CPUs, {mem} RAM, Linux {}", kernel.release().to_string_lossy());
    println!("data under {} (device {})", base.display(), disk_name(base).unwrap_or_else(|| "?".into()));
    println!(
        "page cache before each timed run: {}",
        match cache {
            CacheMode::Cold => "sync + drop_caches (every tool reads its source from disk)",
            CacheMode::Warm => "sync + every source file read once (every tool reads its source from memory)",
        }
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."));
    let head = workspace_head();
    println!("tidepool: {} (workspace at {head})", tidepool.display());
    if let Some(note) = stale(tidepool, root) {
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

/// Which process a figure is about.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Who {
    /// The benchmark harness itself.
    Me,
    /// A child process.
    Pid(u32),
}

impl Who {
    fn process(self) -> procfs::ProcResult<Process> {
        match self {
            Who::Me => Process::myself(),
            Who::Pid(pid) => Process::new(i32::try_from(pid).unwrap_or(i32::MAX)),
        }
    }
}

/// The device numbers of the disk holding `path` and its `/proc/diskstats` entry.
fn disk_stat(path: &Path) -> Option<procfs::DiskStat> {
    let dev = rustix::fs::stat(path).ok()?.st_dev;
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    procfs::diskstats()
        .ok()?
        .into_iter()
        .find(|d| u32::try_from(d.major) == Ok(major) && u32::try_from(d.minor) == Ok(minor))
}

/// Bytes read and written so far by the disk holding `path` (/proc/diskstats counts
/// 512-byte sectors).
pub(crate) fn disk_bytes(path: &Path) -> Option<(u64, u64)> {
    disk_stat(path).map(|d| (d.sectors_read * 512, d.sectors_written * 512))
}

fn disk_name(path: &Path) -> Option<String> {
    disk_stat(path).map(|d| d.name)
}

pub(crate) fn delta(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<(u64, u64)> {
    let ((r0, w0), (r1, w1)) = (before?, after?);
    Some((r1.saturating_sub(r0), w1.saturating_sub(w0)))
}

/// CPU seconds (user + system) of a process from `/proc/<pid>/stat`: its own (`utime`,
/// `stime`) and, with `children`, also those of the children it has reaped (`cutime`,
/// `cstime`). The kernel reports clock ticks.
pub(crate) fn cpu_secs(who: Who, children: bool) -> f64 {
    let Ok(stat) = who.process().and_then(|p| p.stat()) else { return f64::NAN };
    let own = stat.utime + stat.stime;
    let reaped = if children { u64::try_from(stat.cutime + stat.cstime).unwrap_or(0) } else { 0 };
    (own + reaped) as f64 / procfs::ticks_per_second() as f64
}

/// Bytes a process had the storage layer read and write so far (`read_bytes` and
/// `write_bytes` of `/proc/<pid>/io`: what reached or came from the disk, not the page cache).
pub(crate) fn proc_io(who: Who) -> (u64, u64) {
    who.process().and_then(|p| p.io()).map(|io| (io.read_bytes, io.write_bytes)).unwrap_or((0, 0))
}

/// Peak resident memory (`VmHWM` of `/proc/<pid>/status`) in MiB.
pub(crate) fn peak_rss_mib(who: Who) -> f64 {
    who.process().and_then(|p| p.status()).ok().and_then(|s| s.vmhwm).map(|kib| kib as f64 / 1024.0).unwrap_or(f64::NAN)
}

/// Resident memory now (`VmRSS` of `/proc/<pid>/status`) in MiB.
pub(crate) fn rss_mib(who: Who) -> f64 {
    who.process().and_then(|p| p.status()).ok().and_then(|s| s.vmrss).map(|kib| kib as f64 / 1024.0).unwrap_or(f64::NAN)
}

/// CPU seconds the whole machine spent busy (neither idle nor waiting for I/O) since boot,
/// from the first line of /proc/stat (clock ticks).
pub(crate) fn busy_secs() -> f64 {
    let Ok(stats) = procfs::KernelStats::current() else { return f64::NAN };
    let t = stats.total;
    // Guest time is already in user.
    let ticks = t.user + t.nice + t.system + t.irq.unwrap_or(0) + t.softirq.unwrap_or(0) + t.steal.unwrap_or(0);
    ticks as f64 / procfs::ticks_per_second() as f64
}

/// Writes what the page cache holds to disk and drops it (`sync`, then
/// `echo 3 > /proc/sys/vm/drop_caches`, which needs root).
pub(crate) fn drop_page_cache() -> anyhow::Result<()> {
    let status = Command::new("sync").status()?;
    if !status.success() {
        anyhow::bail!("sync failed: {status}");
    }
    procfs::sys::vm::drop_caches(procfs::sys::vm::DropCache::All)?;
    Ok(())
}

/// The machine is shared: waits until other processes use less than [`QUIET_CPU`] of a
/// CPU over one second, for at most [`QUIET_WAIT`]. Returns a note if it never was.
pub(crate) fn wait_quiet() -> Option<String> {
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
