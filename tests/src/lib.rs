//! A harness for cluster tests against the real binaries: `tidepool pool` daemons run as child
//! processes in a temporary directory, driven the way an operator drives them, through
//! `tidepool-admin`, `tidepool put` and `tidepool get`.
//!
//! The binaries are the ones `cargo build --workspace --bins` leaves in `target/<profile>/`,
//! next to the test executable's `deps/` folder. `cargo test -p tidepool-tests` does not rebuild
//! them (cargo has no stable way to depend on another package's binary); `cargo test
//! --workspace` does, because the pool and the shell have integration tests of their own.
//!
//! Every wait is for an observable state (a pool answering `info`, a process exiting, a line in
//! a log) with a deadline; nothing sleeps to let something happen. A [`Cluster`] kills whatever
//! still runs when it is dropped and, if the test is failing, prints every pool's log first.
//!
//! [`fuzz`] holds the fuzz targets and their input generators (the harness binary is
//! `src/bin/fuzz.rs`; `tests/fuzz.rs` runs a fixed-seed slice of each in `cargo test`).

pub mod etcd;
pub mod fuzz;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

pub use rustix::process::Signal;

use tidepool_p2p::PnfsId;
use tidepool_p2p::cluster::{ClusterFile, PoolEntry};

/// How long a pool may take from spawn to answering `info`.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long a pool may take to exit after SIGTERM (its shutdown grace is [`SHUTDOWN_GRACE_SECONDS`]).
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// How long one `tidepool-admin`, `tidepool put` or `tidepool get` may run.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(30);
/// The pause between two looks at a state being waited for.
const POLL_PAUSE: Duration = Duration::from_millis(20);
/// What each pool's config file sets as `shutdown_grace_seconds`.
pub const SHUTDOWN_GRACE_SECONDS: u64 = 5;
/// What each pool's config file sets as `capacity`.
pub const CAPACITY: &str = "256Mi";

/// The two binaries under test.
#[derive(Debug)]
pub struct Binaries {
    pub tidepool: PathBuf,
    pub admin: PathBuf,
    /// Set when a source file of the daemon, the shell or p2p is newer than a binary: the
    /// tests may then be running yesterday's code. Printed with the logs of a failing test.
    pub stale: Option<String>,
}

/// `target/<profile>/tidepool` and `target/<profile>/tidepool-admin`, found from the test
/// executable (`target/<profile>/deps/<test>-<hash>`). Panics if either is missing.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .unwrap_or_else(|| panic!("{} is not in target/<profile>/deps", exe.display()));
        let find = |name: &str| {
            let path = dir.join(name);
            assert!(path.is_file(), "{} is missing: run `cargo build --workspace --bins` first", path.display());
            path
        };
        let (tidepool, admin) = (find("tidepool"), find("tidepool-admin"));
        let stale = staleness(&tidepool, &admin);
        Binaries { tidepool, admin, stale }
    })
}

/// A note naming a source file newer than the binary built from it, if there is one.
fn staleness(tidepool: &Path, admin: &Path) -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let sources: [(&Path, &[&str]); 2] = [
        (tidepool, &["pool/src", "migration/src", "admin-shell/src", "p2p/src"]),
        (admin, &["admin-shell/src", "p2p/src"]),
    ];
    for (binary, dirs) in sources {
        let built = binary.metadata().and_then(|m| m.modified()).ok()?;
        let mut dirs: Vec<PathBuf> = dirs.iter().map(|d| root.join(d)).collect();
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    dirs.push(path);
                } else if meta.modified().is_ok_and(|m| m > built) {
                    return Some(format!(
                        "note: {} is newer than {}; run `cargo build --workspace --bins`",
                        path.display(),
                        binary.display()
                    ));
                }
            }
        }
    }
    None
}

/// What a finished command printed, and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
}

impl Output {
    /// Panics, showing both streams, unless the command exited with 0.
    #[track_caller]
    pub fn assert_success(&self, what: &str) -> &Self {
        assert_eq!(self.code, Some(0), "{what} failed\n{self}");
        self
    }

    /// Panics, showing both streams, unless the command exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32, what: &str) -> &Self {
        assert_eq!(self.code, Some(code), "{what}: wrong exit code\n{self}");
        self
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code: {:?}\n--- stdout ---\n{}--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `cmd` with `stdin` as its input, within [`COMMAND_DEADLINE`]; a command still running
/// then is killed and the test fails.
pub fn run(mut cmd: Command, stdin: &str) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut input = child.stdin.take().expect("piped stdin");
    let text = stdin.to_owned();
    // A command may exit without reading all of its input; a broken pipe is then fine.
    let feeder = thread::spawn(move || drop(input.write_all(text.as_bytes())));
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + COMMAND_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("wait for {what}: {e}")) {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still ran after {COMMAND_DEADLINE:?}; killed it");
        }
        thread::sleep(POLL_PAUSE / 4);
    };
    let _ = feeder.join();
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    Output { stdout, stderr, code: status.code() }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Reserves `n` distinct free loopback ports: binds port 0 `n` times (holding every listener
/// until all are chosen, so no port comes up twice), reads the ports the kernel chose, and
/// closes the listeners again so the daemons can bind them. Between the close and a daemon's
/// bind another process could take a port; the window is milliseconds, the kernel does not
/// hand a port it just gave out straight back to the next `bind(0)`, and the consequence would
/// be a failed start with a clear "listen for ..." error in the pool's log. (A daemon cannot
/// bind port 0 itself: the cluster file must name every address before anything starts.)
pub fn free_ports(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local address")).collect()
}

/// `len` bytes of deterministic, varied content (xorshift64*), different for each `seed`.
/// How an error's code appears in what the shell and `tidepool` print: `(rc=N)`.
pub fn rc(code: tidepool_p2p::ErrorCode) -> String {
    format!("(rc={})", code.as_u32())
}

pub fn sample_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One `rep ls` line, split into its fields.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RepLine {
    pub pnfsid: String,
    pub flags: String,
    pub size: u64,
    pub storage_class: String,
}

impl RepLine {
    /// Parses `<pnfsid> <flags> <size> si={<class>}`; `None` for any other line.
    pub fn parse(line: &str) -> Option<RepLine> {
        let mut words = line.split(' ');
        let pnfsid = words.next()?;
        pnfsid.parse::<PnfsId>().ok()?;
        let flags = words.next()?;
        if !(flags.starts_with('<') && flags.ends_with('>')) {
            return None;
        }
        let size = words.next()?.parse().ok()?;
        let class = words.next()?.strip_prefix("si={")?.strip_suffix('}')?;
        if words.next().is_some() {
            return None;
        }
        Some(RepLine { pnfsid: pnfsid.into(), flags: flags.into(), size, storage_class: class.into() })
    }
}

/// Every `rep ls` line of `text`, sorted by pnfsid; panics on a line that is not one.
#[track_caller]
pub fn parse_rep_ls(text: &str) -> Vec<RepLine> {
    let mut lines: Vec<RepLine> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| RepLine::parse(l).unwrap_or_else(|| panic!("not a `rep ls` line: {l:?} in\n{text}")))
        .collect();
    lines.sort();
    lines
}

/// The value of an `info` line such as `Used           : 6000 bytes` (here for `Used`).
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        let (name, value) = l.split_once(" : ")?;
        (name.trim_end() == field).then(|| value.trim())
    })
}

/// Polls `probe` (with a short pause between looks) until it returns `Some`, and returns that
/// value; panics naming `what` if `timeout` passes first. For waiting on an observable state,
/// never for letting time pass.
#[track_caller]
pub fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("{what}: not seen within {timeout:?}");
        }
        thread::sleep(POLL_PAUSE);
    }
}

/// One migration job's summary line (docs/dcache-compatibility.md#output), as `migration ls`, `migration copy`,
/// `suspend`, `resume` and `cancel` print it: `[<id>] <STATE padded to 12> <command>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLine {
    pub id: String,
    pub state: String,
    /// The stored command line, e.g. `migration copy -pnfsid=0000... -- pool2`.
    pub command: String,
}

impl JobLine {
    /// Parses one summary line; `None` unless the state is upper case, left-aligned in 12
    /// columns and followed by one space and a `migration ...` command.
    pub fn parse(line: &str) -> Option<JobLine> {
        let (id, rest) = line.strip_prefix('[')?.split_once("] ")?;
        if id.is_empty() || rest.len() < 13 || !rest.is_char_boundary(12) {
            return None;
        }
        let (column, command) = rest.split_at(12);
        let state = column.trim_end_matches(' ');
        let command = command.strip_prefix(' ')?;
        if state.is_empty() || !state.bytes().all(|b| b.is_ascii_uppercase()) || !command.starts_with("migration ") {
            return None;
        }
        Some(JobLine { id: id.into(), state: state.into(), command: command.into() })
    }

    /// The command without the mark `migration ls` puts after a permanent job whose saved
    /// form is out of date, and the mark's text without its parentheses: `not saved`, or
    /// ``saved <STATE>: comes back at restart until the next `save` ``. `None` when the line
    /// has no such mark.
    pub fn saved_mark(&self) -> (&str, Option<&str>) {
        if let Some(command) = self.command.strip_suffix(" (not saved)") {
            return (command, Some("not saved"));
        }
        if self.command.ends_with(": comes back at restart until the next `save`)")
            && let Some(at) = self.command.rfind(" (saved ")
        {
            let mark = &self.command[at + 2..self.command.len() - 1];
            return (&self.command[..at], Some(mark));
        }
        (&self.command, None)
    }
}

/// A value of a `key: value` report such as `migration info` (`State      : RUNNING`,
/// `Concurrency: 1`): the key is what comes before the first `:`, trimmed, as the REST frontend
/// of dCache reads it (docs/dcache-compatibility.md#output).
pub fn report_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        (name.trim_end() == key).then(|| value.trim())
    })
}

/// The counters of `pp ls`'s first line (`incoming: 1 active of max 8, 0 queued; outgoing: 0
/// active of max 16, 0 queued; connections opened: 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PpCounts {
    pub active: u64,
    pub max_active: u64,
    pub queued: u64,
    pub outgoing: u64,
    pub max_outgoing: u64,
    pub outgoing_queued: u64,
    pub connections_opened: u64,
}

/// What one `pp ls` line says about a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PpState {
    Active { done: u64, size: u64 },
    Queued,
    Done { bytes: u64 },
    Failed { message: String },
}

/// One transfer line of `pp ls` (`[<id>] <pnfsid> from <pool> <state...>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PpLine {
    pub id: u64,
    pub pnfsid: String,
    pub source: String,
    pub state: PpState,
}

/// `pp ls` (or `pp ls -l`) output, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PpListing {
    pub counts: PpCounts,
    pub transfers: Vec<PpLine>,
}

impl PpListing {
    /// Parses the whole output; `None` if any line is not what `pp ls` prints.
    pub fn parse(text: &str) -> Option<PpListing> {
        let mut lines = text.lines();
        let counts = PpCounts::parse(lines.next()?)?;
        let transfers = lines.map(PpLine::parse).collect::<Option<Vec<_>>>()?;
        Some(PpListing { counts, transfers })
    }

    /// The lines about `pnfsid`, oldest first.
    pub fn of(&self, pnfsid: &str) -> Vec<&PpLine> {
        self.transfers.iter().filter(|t| t.pnfsid == pnfsid).collect()
    }
}

impl PpCounts {
    /// Parses the first line of `pp ls`; `None` for any other line.
    pub fn parse(line: &str) -> Option<PpCounts> {
        let rest = line.strip_prefix("incoming: ")?;
        let (incoming, rest) = rest.split_once("; outgoing: ")?;
        let (outgoing, opened) = rest.split_once("; connections opened: ")?;
        // `<n> active of max <m>, <q> queued`
        let triple = |text: &str| -> Option<(u64, u64, u64)> {
            let (active, rest) = text.split_once(" active of max ")?;
            let (max, queued) = rest.split_once(", ")?;
            Some((active.parse().ok()?, max.parse().ok()?, queued.strip_suffix(" queued")?.parse().ok()?))
        };
        let (active, max_active, queued) = triple(incoming)?;
        let (outgoing, max_outgoing, outgoing_queued) = triple(outgoing)?;
        Some(PpCounts {
            active,
            max_active,
            queued,
            outgoing,
            max_outgoing,
            outgoing_queued,
            connections_opened: opened.parse().ok()?,
        })
    }
}

impl PpLine {
    /// Parses one transfer line of `pp ls -l`; `None` for any other line.
    pub fn parse(line: &str) -> Option<PpLine> {
        let rest = line.strip_prefix('[')?;
        let (id, rest) = rest.split_once("] ")?;
        let (pnfsid, rest) = rest.split_once(" from ")?;
        pnfsid.parse::<PnfsId>().ok()?;
        let (source, rest) = rest.split_once(' ')?;
        let state = if let Some(failed) = rest.strip_prefix("FAILED: ") {
            PpState::Failed { message: failed.to_string() }
        } else {
            let words: Vec<&str> = rest.split(' ').collect();
            match words.as_slice() {
                ["ACTIVE", progress, "bytes", _rate, "MiB/s", _age, "s"] => {
                    let (done, size) = progress.split_once('/')?;
                    PpState::Active { done: done.parse().ok()?, size: size.parse().ok()? }
                }
                ["QUEUED", age, "s"] => {
                    age.parse::<u64>().ok()?;
                    PpState::Queued
                }
                ["DONE", bytes, "bytes", "in", _secs, "s"] => PpState::Done { bytes: bytes.parse().ok()? },
                _ => return None,
            }
        };
        Some(PpLine { id: id.parse().ok()?, pnfsid: pnfsid.into(), source: source.into(), state })
    }
}

/// Connects to `addr`, sends `bytes` (which may be nothing) instead of a handshake, and expects
/// the pool to hang up within `timeout`: reading past whatever the pool says ends with EOF or
/// a reset, not with the timeout. Returns how long the pool took after the bytes were sent.
#[track_caller]
pub fn expect_hang_up(addr: SocketAddr, bytes: &[u8], timeout: Duration, what: &str) -> Duration {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{what}: connect to {addr}: {e}"));
    expect_closed(&mut stream, bytes, timeout, what)
}

/// [`expect_hang_up`] on a stream connected earlier (a client that has said nothing so far);
/// returns how long the pool took from now.
#[track_caller]
pub fn expect_closed(stream: &mut TcpStream, bytes: &[u8], timeout: Duration, what: &str) -> Duration {
    let started = Instant::now();
    stream.set_read_timeout(Some(timeout)).expect("set a read timeout");
    // A peer that stops reading may make our write fail with a reset; that is being dropped too.
    if !bytes.is_empty() {
        let _ = stream.write_all(bytes);
    }
    let mut sink = Vec::new();
    match stream.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
        Err(e) => panic!("{what}: the pool did not hang up within {timeout:?}: {e}"),
    }
    let _ = stream.shutdown(Shutdown::Both);
    started.elapsed()
}

/// A process's memory as `/proc/<pid>/status` gives it, in KiB: resident now (`VmRSS`) and the
/// most it has been resident (`VmHWM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

/// Reads [`Memory`] of process `pid`. Panics if `/proc` does not say (Linux only).
#[track_caller]
pub fn memory(pid: u32) -> Memory {
    let status = i32::try_from(pid)
        .map_err(|e| e.to_string())
        .and_then(|pid| procfs::process::Process::new(pid).and_then(|p| p.status()).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let field = |name: &str, value: Option<u64>| -> u64 {
        value.unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status: {status:?}"))
    };
    Memory { rss_kib: field("VmRSS", status.vmrss), peak_kib: field("VmHWM", status.vmhwm) }
}

/// One pool of a [`Cluster`].
#[derive(Debug, Clone)]
pub struct PoolSpec {
    pub name: String,
    pub admin: SocketAddr,
    pub p2p: SocketAddr,
    pub groups: Vec<String>,
}

/// Pools described by a cluster file, credentials and config files in a temporary directory,
/// each run as a `tidepool pool` child process on demand; every connection runs over TLS.
///
/// Layout of [`Cluster::dir`]: `cluster.toml`, a CA from `tidepool ca init` (`ca.crt`,
/// `ca.key`) and credentials from `tidepool ca issue`: `<pool>.pool.crt`/`.key` for each pool,
/// `admin.admin.crt`/`.key` for the shell and `client.client.crt`/`.key` for put and get,
/// `<pool>.toml`, the pool's data in `<pool>/`, its log (stdout and stderr, every run
/// appended) in `<pool>.log`.
pub struct Cluster {
    /// File systems mounted for pools (before `dir`: unmounted before it is removed, and
    /// after the pools are killed in `drop`).
    mounts: Vec<TinyFs>,
    dir: tempfile::TempDir,
    pools: Vec<PoolSpec>,
    running: BTreeMap<String, Child>,
}

impl Cluster {
    /// Writes the files for `pools` (name, groups); starts nothing.
    pub fn new(pools: &[(&str, &[&str])]) -> Cluster {
        let dir = tempfile::Builder::new().prefix("tidepool-test-").tempdir().expect("create a temp dir");
        let ports = free_ports(2 * pools.len());
        let specs: Vec<PoolSpec> = pools
            .iter()
            .zip(ports.chunks(2))
            .map(|((name, groups), ports)| PoolSpec {
                name: name.to_string(),
                admin: ports[0],
                p2p: ports[1],
                groups: groups.iter().map(|g| g.to_string()).collect(),
            })
            .collect();
        let file = ClusterFile {
            pools: specs
                .iter()
                .map(|p| PoolEntry {
                    name: p.name.parse().expect("a valid pool name"),
                    p2p: p.p2p,
                    admin: p.admin,
                    groups: p.groups.clone(),
                    tags: BTreeMap::new(),
                    hsm: Vec::new(),
                })
                .collect(),
            links: Vec::new(),
        };
        std::fs::write(dir.path().join("cluster.toml"), file.to_toml()).expect("write cluster.toml");
        let cluster = Cluster { mounts: Vec::new(), dir, pools: specs, running: BTreeMap::new() };
        let dir = cluster.dir().to_str().expect("a UTF-8 temp dir").to_string();
        cluster.tidepool(&["ca", "init", &dir], &[]).assert_success("tidepool ca init");
        for (role, name) in [("admin", "admin"), ("client", "client")] {
            cluster.issue(role, name, &dir);
        }
        for p in &cluster.pools {
            cluster.issue("pool", &p.name, &dir);
            let config = format!(
                "name = \"{name}\"\n\
                 data_dir = \"{name}\"\n\
                 capacity = \"{CAPACITY}\"\n\
                 cluster_file = \"cluster.toml\"\n\
                 shutdown_grace_seconds = {SHUTDOWN_GRACE_SECONDS}\n",
                name = p.name
            );
            std::fs::write(cluster.config_path(&p.name), config).expect("write a pool config");
            cluster.init(&p.name).assert_success("tidepool init");
        }
        cluster
    }

    /// `tidepool init --config <pool>.toml`: creates and marks the pool's data directory.
    /// [`Cluster::new`] does this for every pool.
    pub fn init(&self, pool: &str) -> Output {
        self.tidepool(&["init", "--config"], &[self.config_path(pool).as_os_str()])
    }

    /// `tidepool pool --check --config <pool>.toml`.
    pub fn check(&self, pool: &str) -> Output {
        self.tidepool(&["pool", "--check", "--config"], &[self.config_path(pool).as_os_str()])
    }

    /// Runs `tidepool pool --config <pool>.toml` in the foreground, for a pool expected to
    /// refuse to start; a daemon that does start is killed after [`COMMAND_DEADLINE`] and the
    /// test fails.
    pub fn start_refused(&self, pool: &str) -> Output {
        self.tidepool(&["pool", "--config"], &[self.config_path(pool).as_os_str()])
    }

    /// Runs `tidepool ARGS PATHS` to its end, in [`Cluster::dir`].
    pub fn tidepool(&self, args: &[&str], paths: &[&std::ffi::OsStr]) -> Output {
        let mut cmd = Command::new(&binaries().tidepool);
        cmd.args(args).args(paths).current_dir(self.dir()).env("NO_COLOR", "1");
        run(cmd, "")
    }

    /// Sets the pool's `capacity` (a byte size with units); it applies from the pool's next
    /// start.
    pub fn set_capacity(&self, pool: &str, capacity: &str) {
        let path = self.config_path(pool);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let text: String =
            text.lines()
                .map(|l| {
                    if l.starts_with("capacity = ") { format!("capacity = \"{capacity}\"\n") } else { format!("{l}\n") }
                })
                .collect();
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Appends `toml` to the pool's config file; it applies from the pool's next start. For a
    /// setting the harness does not write, such as a `[migration]` table.
    pub fn append_config(&self, pool: &str, toml: &str) {
        let path = self.config_path(pool);
        let mut file =
            OpenOptions::new().append(true).open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        file.write_all(toml.as_bytes()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The temporary directory holding everything.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside [`Cluster::dir`].
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cluster_file(&self) -> PathBuf {
        self.path("cluster.toml")
    }

    pub fn config_path(&self, pool: &str) -> PathBuf {
        self.path(&format!("{pool}.toml"))
    }

    /// The pool's data directory (`meta/`, `data/`, `incoming/`).
    pub fn data_dir(&self, pool: &str) -> PathBuf {
        self.path(pool)
    }

    /// The files in the pool's `incoming/` (partial data of uploads and transfers under way),
    /// with their sizes, sorted by name. A file that vanishes while being listed is left out.
    pub fn incoming(&self, pool: &str) -> Vec<(String, u64)> {
        let dir = self.data_dir(pool).join("incoming");
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        let mut files: Vec<(String, u64)> = entries
            .map(|e| e.unwrap_or_else(|e| panic!("read {}: {e}", dir.display())))
            .filter_map(|e| Some((e.file_name().to_string_lossy().into_owned(), e.metadata().ok()?.len())))
            .collect();
        files.sort();
        files
    }

    /// The size of `incoming/<pnfsid>` in the pool's data directory, if it is there.
    pub fn incoming_len(&self, pool: &str, pnfsid: &str) -> Option<u64> {
        let path = self.data_dir(pool).join("incoming").join(pnfsid);
        std::fs::metadata(path).ok().map(|m| m.len())
    }

    /// Waits (up to `timeout`) until the pool's `incoming/` holds part of a file, freezes the pool
    /// (SIGSTOP) and checks that the file is still partial (fewer than `size` bytes). Returns its
    /// name: the pool can now neither commit nor confirm it.
    #[track_caller]
    pub fn freeze_while_receiving(&mut self, pool: &str, size: u64, timeout: Duration) -> String {
        let (name, _) = wait_until(&format!("part of a file in {pool}'s incoming/"), timeout, || {
            self.incoming(pool).into_iter().find(|(_, len)| *len > 0)
        });
        self.freeze(pool);
        let partial = self.incoming_len(pool, &name);
        assert!(
            partial.is_some_and(|n| n < size),
            "{pool} was frozen while receiving {name}: {partial:?} of {size} bytes in incoming/"
        );
        name
    }

    pub fn log_path(&self, pool: &str) -> PathBuf {
        self.path(&format!("{pool}.log"))
    }

    /// Everything the pool has logged so far, over all its runs.
    pub fn log(&self, pool: &str) -> String {
        std::fs::read_to_string(self.log_path(pool)).unwrap_or_default()
    }

    #[track_caller]
    pub fn spec(&self, pool: &str) -> &PoolSpec {
        self.pools.iter().find(|p| p.name == pool).unwrap_or_else(|| panic!("no pool {pool} in this cluster"))
    }

    /// Writes a file into [`Cluster::dir`] and returns its path.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// A certificate for `name` with `role` from another CA (made in `other-ca/` on first use),
    /// which the cluster's pools do not trust; its key is beside it. Returns the certificate.
    #[track_caller]
    pub fn foreign_cert(&self, role: &str, name: &str) -> PathBuf {
        let dir = self.path("other-ca");
        let text = dir.to_str().expect("a UTF-8 temp dir").to_string();
        if !dir.join("ca.crt").exists() {
            self.tidepool(&["ca", "init", &text], &[]).assert_success("tidepool ca init");
        }
        self.issue(role, name, &text);
        dir.join(format!("{name}.{role}.crt"))
    }

    /// `tidepool ca issue --role ROLE --name NAME DIR`; panics unless it succeeds.
    #[track_caller]
    pub fn issue(&self, role: &str, name: &str, dir: &str) {
        self.tidepool(&["ca", "issue", "--role", role, "--name", name, dir], &[]).assert_success("tidepool ca issue");
    }

    /// Starts the pool's daemon and waits until it answers `info` through `tidepool-admin`.
    ///
    /// Readiness is probed with the admin shell rather than a bare TCP connect: the listeners
    /// are bound before the repository is opened, so a connect proves little, and a probe that
    /// hangs up mid-handshake would leave a "refused connection" warning in the pool's log,
    /// which tests look for.
    #[track_caller]
    pub fn start(&mut self, pool: &str) {
        self.start_with_env(pool, &[]);
    }

    /// [`Cluster::start`] with extra environment variables, such as `TIDEPOOL_FAULT_POINTS`.
    #[track_caller]
    pub fn start_with_env(&mut self, pool: &str, env: &[(&str, &str)]) {
        assert!(!self.running.contains_key(pool), "{pool} is already running");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(pool))
            .unwrap_or_else(|e| panic!("open the log of {pool}: {e}"));
        writeln!(log, "=== tidepool-tests: starting {pool} ===").expect("write the log");
        let stderr = log.try_clone().expect("clone the log handle");
        let child = Command::new(&binaries().tidepool)
            .arg("pool")
            .arg("--config")
            .arg(self.config_path(pool))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binaries().tidepool.display()));
        self.running.insert(pool.to_string(), child);
        self.wait_until_ready(pool);
    }

    #[track_caller]
    fn wait_until_ready(&mut self, pool: &str) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let child = self.running.get_mut(pool).expect("just started");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.running.remove(pool);
                panic!("{pool} exited during start-up ({status}); its log:\n{}", self.log(pool));
            }
            let probe = self.admin_args(&["--pool", pool, "-e", "info"], "");
            if probe.code == Some(0) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{pool} did not answer `info` within {START_DEADLINE:?}; last attempt:\n{probe}\nits log:\n{}",
                    self.log(pool)
                );
            }
            thread::sleep(POLL_PAUSE);
        }
    }

    /// The process id of a running pool.
    #[track_caller]
    pub fn pid(&self, pool: &str) -> u32 {
        self.running.get(pool).unwrap_or_else(|| panic!("{pool} is not running")).id()
    }

    /// Whether the pool's process is running (started and not seen to exit).
    pub fn is_running(&mut self, pool: &str) -> bool {
        match self.running.get_mut(pool) {
            None => false,
            Some(child) => child.try_wait().expect("try_wait").is_none(),
        }
    }

    /// Kills the pool with SIGKILL and reaps it.
    #[track_caller]
    pub fn kill9(&mut self, pool: &str) -> ExitStatus {
        let mut child = self.running.remove(pool).unwrap_or_else(|| panic!("{pool} is not running"));
        child.kill().unwrap_or_else(|e| panic!("kill -9 {pool}: {e}"));
        child.wait().unwrap_or_else(|e| panic!("reap {pool}: {e}"))
    }

    /// Waits (up to `timeout`) for the pool's process to exit on its own (a fault point that
    /// aborts it, say), reaps it and returns how it exited. Panics if it still runs then.
    #[track_caller]
    pub fn wait_for_exit(&mut self, pool: &str, timeout: Duration) -> ExitStatus {
        let child = self.running.remove(pool).unwrap_or_else(|| panic!("{pool} is not running"));
        self.reap(pool, child, timeout, "")
    }

    /// Waits up to `timeout` for `child` (the pool `pool`) to exit and returns how it did;
    /// kills it and panics (with `why` and its log) if it does not.
    #[track_caller]
    fn reap(&self, pool: &str, mut child: Child, timeout: Duration, why: &str) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{pool} did not exit within {timeout:?}{why}; its log:\n{}", self.log(pool));
            }
            thread::sleep(POLL_PAUSE);
        }
    }

    /// Mounts a tmpfs of `mib` MiB on the pool's data directory, before the pool first starts,
    /// for tests of a full disk; it is unmounted when the cluster is dropped, after its pools
    /// are killed. Returns false, having printed that the test is skipped and why, when the
    /// test does not run as root; as root, a mount that fails fails the test.
    #[track_caller]
    pub fn mount_tmpfs(&mut self, pool: &str, mib: u64) -> bool {
        if !is_root() {
            eprintln!("SKIPPED: this test mounts a {mib} MiB tmpfs for {pool}, which needs root (CI runs as root)");
            return false;
        }
        let dir = self.data_dir(pool);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        self.mounts.push(TinyFs::mount(&dir, mib));
        // The mount hides the marker `tidepool init` wrote; mark the new file system.
        self.init(pool).assert_success("tidepool init on the tmpfs");
        true
    }

    /// Stops the pool's process with SIGSTOP: it keeps its sockets and files but does nothing
    /// until [`Cluster::thaw`] (or [`Cluster::kill9`], which works on a frozen process). Peers
    /// see a pool that stopped reading and writing, as with a stalled machine; the pool's own
    /// timers count the frozen time once it runs again. Do not [`Cluster::stop`] a frozen pool:
    /// SIGTERM waits for SIGCONT.
    #[track_caller]
    pub fn freeze(&mut self, pool: &str) {
        let child = self.running.get(pool).unwrap_or_else(|| panic!("{pool} is not running"));
        signal(child, Signal::STOP);
    }

    /// Resumes a pool stopped with [`Cluster::freeze`] (SIGCONT).
    #[track_caller]
    pub fn thaw(&mut self, pool: &str) {
        let child = self.running.get(pool).unwrap_or_else(|| panic!("{pool} is not running"));
        signal(child, Signal::CONT);
    }

    /// Moves the membership of every pool to etcd at `endpoint` under `prefix`: each config
    /// gets its addresses and a `[membership]` table (a lease of `lease_seconds`, the cost
    /// published every second), and `tidepool membership import` writes the cluster file into
    /// etcd. The shell and `tidepool put` keep using the cluster file for the addresses.
    pub fn use_etcd(&self, endpoint: &str, prefix: &str, lease_seconds: u64) {
        self.etcd_configs(endpoint, prefix, lease_seconds);
        let out = self.tidepool(
            &["membership", "import", "--endpoints", endpoint, "--prefix", prefix],
            &[self.cluster_file().as_os_str()],
        );
        out.assert_success("tidepool membership import");
    }

    /// The config part of [`Cluster::use_etcd`], without the import.
    pub fn etcd_configs(&self, endpoint: &str, prefix: &str, lease_seconds: u64) {
        for p in &self.pools {
            self.append_config(
                &p.name,
                &format!(
                    "admin_listen = \"{}\"\np2p_listen = \"{}\"\n[membership]\nbackend = \"etcd\"\n\
                     endpoints = [\"{endpoint}\"]\nprefix = \"{prefix}\"\nlease_seconds = {lease_seconds}\n\
                     publish_seconds = 1\n",
                    p.admin, p.p2p
                ),
            );
        }
    }

    /// Rewrites the cluster file with `pool` in `groups` (every pool and the shell read the
    /// same file; a running pool takes it up on SIGHUP or `psu reload`).
    pub fn set_groups(&mut self, pool: &str, groups: &[&str]) {
        let path = self.cluster_file();
        let text = std::fs::read_to_string(&path).expect("read cluster.toml");
        let mut file = ClusterFile::parse(&text).expect("a valid cluster.toml");
        let name: tidepool_p2p::PoolName = pool.parse().expect("a pool name");
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let entry = file.pools.iter_mut().find(|p| p.name == name).unwrap_or_else(|| panic!("no pool {pool}"));
        entry.groups = groups.clone();
        std::fs::write(&path, file.to_toml()).expect("write cluster.toml");
        if let Some(spec) = self.pools.iter_mut().find(|p| p.name == pool) {
            spec.groups = groups;
        }
    }

    /// Sends SIGHUP to a running pool (it reads its config and cluster file again).
    #[track_caller]
    pub fn hangup(&self, pool: &str) {
        let child = self.running.get(pool).unwrap_or_else(|| panic!("{pool} is not running"));
        signal(child, Signal::HUP);
    }

    /// Sends SIGTERM and waits (up to [`STOP_DEADLINE`]) for the pool to exit; returns how it
    /// exited. A pool that does not exit in time is killed and the test fails.
    #[track_caller]
    pub fn stop(&mut self, pool: &str) -> ExitStatus {
        let child = self.running.remove(pool).unwrap_or_else(|| panic!("{pool} is not running"));
        signal(&child, Signal::TERM);
        self.reap(pool, child, STOP_DEADLINE, " of SIGTERM")
    }

    /// Waits (up to `timeout`) until the pool's log has a line containing every one of
    /// `needles`, and returns that line. Log lines are written after the event they describe
    /// is visible to a client, so a test looks for them with this rather than at once.
    #[track_caller]
    pub fn wait_for_log_line(&self, pool: &str, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log(pool);
            if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_string();
            }
            if Instant::now() > deadline {
                panic!("no line with {needles:?} in the log of {pool} within {timeout:?}:\n{log}");
            }
            thread::sleep(POLL_PAUSE);
        }
    }

    /// Runs `tidepool-admin` with the cluster's admin credentials, the script on stdin.
    pub fn admin(&self, script: &str) -> Output {
        self.admin_args(&[], script)
    }

    /// Runs `tidepool-admin --cert CERT` (its key beside it, ending in `.key`) with the script
    /// on stdin.
    pub fn admin_with_cert(&self, cert: &Path, script: &str) -> Output {
        let cert = cert.to_str().expect("a UTF-8 certificate path");
        self.admin_args(&["--cert", cert], script)
    }

    /// Runs `tidepool-admin --cluster <file> --history <dir>/history ARGS`, `stdin` as input.
    pub fn admin_args(&self, args: &[&str], stdin: &str) -> Output {
        let mut cmd = Command::new(&binaries().admin);
        cmd.arg("--cluster").arg(self.cluster_file()).arg("--history").arg(self.path("admin-history")).args(args);
        run(cmd, stdin)
    }

    /// `cd <pool>` then `rep ls`; the replicas, sorted by pnfsid. Panics if the shell fails.
    #[track_caller]
    pub fn rep_ls(&self, pool: &str) -> Vec<RepLine> {
        let out = self.admin(&format!("cd {pool}\nrep ls\n"));
        out.assert_success("rep ls");
        parse_rep_ls(&out.stdout)
    }

    /// `cd <pool>` then `info`; its text. Panics if the shell fails.
    #[track_caller]
    pub fn info(&self, pool: &str) -> String {
        let out = self.admin(&format!("cd {pool}\ninfo\n"));
        out.assert_success("info");
        out.stdout
    }

    /// `cd <pool>` then `pp ls -l`, parsed. Panics if the shell fails or prints something
    /// else.
    #[track_caller]
    pub fn pp_ls(&self, pool: &str) -> PpListing {
        let out = self.admin(&format!("cd {pool}\npp ls -l\n"));
        out.assert_success("pp ls -l");
        PpListing::parse(&out.stdout).unwrap_or_else(|| panic!("not `pp ls -l` output:\n{out}"))
    }

    /// Runs `cd <pool>` then `commands` (lines ending in `\n`) in one `tidepool-admin`.
    pub fn admin_in(&self, pool: &str, commands: &str) -> Output {
        self.admin(&format!("cd {pool}\n{commands}"))
    }

    /// `migration ls` on the pool, parsed. Panics if the shell fails or a line is not a
    /// summary line.
    #[track_caller]
    pub fn migration_ls(&self, pool: &str) -> Vec<JobLine> {
        let out = self.admin_in(pool, "migration ls\n");
        out.assert_success("migration ls");
        out.stdout
            .lines()
            .map(|l| JobLine::parse(l).unwrap_or_else(|| panic!("not a job summary line: {l:?}\n{out}")))
            .collect()
    }

    /// `migration info <job>` on the pool; its text. Panics if the shell fails.
    #[track_caller]
    pub fn migration_info(&self, pool: &str, job: &str) -> String {
        let out = self.admin_in(pool, &format!("migration info {job}\n"));
        out.assert_success("migration info");
        out.stdout
    }

    /// Polls `migration info <job>` until its `State` is `state`, and returns that report.
    /// Panics if the job ends in another state (FINISHED, CANCELLED, FAILED) or `timeout`
    /// passes first, showing the last report.
    #[track_caller]
    pub fn wait_for_job(&self, pool: &str, job: &str, state: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.migration_info(pool, job);
            match report_field(&report, "State") {
                Some(s) if s == state => return report,
                Some("FINISHED" | "CANCELLED" | "FAILED") => {
                    panic!("job {job} on {pool} ended, but not {state}:\n{report}")
                }
                _ => {}
            }
            if Instant::now() > deadline {
                panic!("job {job} on {pool} not {state} within {timeout:?}; last report:\n{report}");
            }
            thread::sleep(POLL_PAUSE);
        }
    }

    /// Puts one file of `len` bytes of [`sample_bytes`] content per `(len, seed)`, all with
    /// `args`, in one `tidepool put`; returns each pnfsid with its bytes, in order. The local
    /// copies are removed again, so large files do not pile up in [`Cluster::dir`].
    #[track_caller]
    pub fn put_samples(&self, pool: &str, files: &[(usize, u64)], args: &[&str]) -> Vec<(String, Vec<u8>)> {
        let contents: Vec<Vec<u8>> = files.iter().map(|&(len, seed)| sample_bytes(len, seed)).collect();
        let paths: Vec<PathBuf> = files
            .iter()
            .zip(&contents)
            .map(|(&(_, seed), bytes)| self.write_file(&format!("sample-{seed}.dat"), bytes))
            .collect();
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let ids = self.put_ok(pool, &refs, args);
        for path in &paths {
            let _ = std::fs::remove_file(path);
        }
        ids.into_iter().zip(contents).collect()
    }

    /// `tidepool put --cluster <file> --pool POOL ARGS... FILES...`.
    pub fn put(&self, pool: &str, files: &[&Path], args: &[&str]) -> Output {
        self.put_with_cert(None, pool, files, args)
    }

    /// [`Cluster::put`] with `--cert CERT` (its key beside it) when given.
    pub fn put_with_cert(&self, cert: Option<&Path>, pool: &str, files: &[&Path], args: &[&str]) -> Output {
        run(self.put_command(cert, pool, files, args), "")
    }

    /// The `tidepool put` command line, for a test that runs it itself.
    pub fn put_command(&self, cert: Option<&Path>, pool: &str, files: &[&Path], args: &[&str]) -> Command {
        let mut cmd = Command::new(&binaries().tidepool);
        cmd.arg("put").arg("--cluster").arg(self.cluster_file()).arg("--pool").arg(pool);
        if let Some(cert) = cert {
            cmd.arg("--cert").arg(cert);
        }
        cmd.args(args).arg("--").args(files);
        cmd
    }

    /// Puts `files` and returns their new pnfsids in the order given; panics unless `put`
    /// succeeded and printed exactly one `<pnfsid> <file>` line per file.
    #[track_caller]
    pub fn put_ok(&self, pool: &str, files: &[&Path], args: &[&str]) -> Vec<String> {
        let out = self.put(pool, files, args);
        out.assert_success("tidepool put");
        parse_put(&out.stdout, files)
    }

    /// `tidepool get --cluster <file> --pool POOL PNFSID OUT`.
    pub fn get(&self, pool: &str, pnfsid: &str, out: &Path) -> Output {
        let mut cmd = Command::new(&binaries().tidepool);
        cmd.arg("get").arg("--cluster").arg(self.cluster_file()).arg("--pool").arg(pool).arg(pnfsid).arg(out);
        run(cmd, "")
    }

    /// Gets the replica into a new file in [`Cluster::dir`] and returns its bytes; panics
    /// unless `get` succeeded.
    #[track_caller]
    pub fn get_bytes(&self, pool: &str, pnfsid: &str) -> Vec<u8> {
        let out_path = self.path(&format!("got-{pool}-{pnfsid}"));
        let _ = std::fs::remove_file(&out_path);
        self.get(pool, pnfsid, &out_path).assert_success("tidepool get");
        std::fs::read(&out_path).unwrap_or_else(|e| panic!("read {}: {e}", out_path.display()))
    }

    /// Every pool's log, for a failing test's output.
    fn all_logs(&self) -> String {
        let mut text = String::new();
        for p in &self.pools {
            let _ = write!(
                text,
                "===== log of {} ({}) =====\n{}",
                p.name,
                self.log_path(&p.name).display(),
                self.log(&p.name)
            );
        }
        text
    }
}

/// The pnfsids of `put`'s stdout, checking there is one `<pnfsid> <file>` line per file, in order.
#[track_caller]
pub fn parse_put(stdout: &str, files: &[&Path]) -> Vec<String> {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), files.len(), "one line per stored file expected:\n{stdout}");
    lines
        .iter()
        .zip(files)
        .map(|(line, file)| {
            let (id, name) = line.split_once(' ').unwrap_or_else(|| panic!("not `<pnfsid> <file>`: {line:?}"));
            id.parse::<PnfsId>().unwrap_or_else(|e| panic!("{id:?} in {line:?} is not a pnfsid: {e}"));
            assert_eq!(Path::new(name), *file, "put lines come in the order of the files: {line:?}");
            id.to_string()
        })
        .collect()
}

/// `rep ls` flags of a complete CACHED replica.
pub const CACHED: &str = "<C----------L(0)[0]>";
/// `rep ls` flags of a complete CACHED replica with a sticky record.
pub const CACHED_STICKY: &str = "<C-------X--L(0)[0]>";
/// `rep ls` flags of a complete PRECIOUS replica.
pub const PRECIOUS: &str = "<-P---------L(0)[0]>";
/// `rep ls` flags of a complete PRECIOUS replica with a sticky record.
pub const PRECIOUS_STICKY: &str = "<-P------X--L(0)[0]>";

/// A cluster of `pools` (name, groups), every pool started.
#[track_caller]
pub fn started(pools: &[(&str, &[&str])]) -> Cluster {
    let mut cluster = Cluster::new(pools);
    for (name, _) in pools {
        cluster.start(name);
    }
    cluster
}

/// Two started pools, `pool1` and `pool2`, both in group `disk`: most real-daemon tests begin so.
#[track_caller]
pub fn two_pools() -> Cluster {
    started(&[("pool1", &["disk"]), ("pool2", &["disk"])])
}

/// Runs `commands` in `pool`; panics unless every one succeeded and nothing was written to
/// stderr. Returns stdout.
#[track_caller]
pub fn ok(cluster: &Cluster, pool: &str, commands: &str) -> String {
    let out = cluster.admin_in(pool, commands);
    out.assert_success(commands.trim_end());
    assert_eq!(out.stderr, "", "nothing failed, so nothing on stderr\n{out}");
    out.stdout
}

/// Runs one command in `pool` that must fail; returns its error text (stderr).
#[track_caller]
pub fn refused(cluster: &Cluster, pool: &str, command: &str) -> String {
    let out = cluster.admin_in(pool, &format!("{command}\n"));
    out.assert_code(1, command);
    assert_eq!(out.stdout, "", "{command}: a refusal prints nothing on stdout\n{out}");
    out.stderr
}

/// Creates a job with `command` (a `migration copy|move|cache` line without escapes) in
/// `pool`, checks its summary line against the command ([`stored`]), and returns the job's id.
#[track_caller]
pub fn create(cluster: &Cluster, pool: &str, command: &str) -> String {
    let out = ok(cluster, pool, &format!("{command}\n"));
    let line = out.strip_suffix('\n').unwrap_or_else(|| panic!("one line expected: {out:?}"));
    let job = JobLine::parse(line).unwrap_or_else(|| panic!("{command}: not a summary line: {line:?}"));
    assert_eq!(job.command, stored(command), "{line}");
    job.id
}

/// The stored form of a command line without escapes: options as given, then `--` and the
/// targets (docs/dcache-compatibility.md#permanent-jobs-and-save).
pub fn stored(command: &str) -> String {
    let words: Vec<&str> = command.split(' ').collect();
    let (name, rest) = words.split_at(2);
    let (options, targets): (Vec<&str>, Vec<&str>) = rest.iter().partition(|w| w.starts_with('-'));
    let mut line = name.join(" ");
    for o in options {
        line.push(' ');
        line.push_str(o);
    }
    line.push_str(" --");
    for t in targets {
        line.push(' ');
        line.push_str(t);
    }
    line
}

/// The pool holds nothing half-made: no partial data in `incoming/`, no replica being received
/// (`rep ls -l=l`), no transfer active or queued, and every replica listed is CACHED or
/// PRECIOUS.
#[track_caller]
pub fn assert_no_partial_replica(cluster: &Cluster, pool: &str) {
    assert_eq!(cluster.incoming(pool), vec![], "no partial data in {pool}'s incoming/");
    assert_eq!(ok(cluster, pool, "rep ls -l=l\n"), "", "no replica in {pool} is being received");
    let counts = cluster.pp_ls(pool).counts;
    assert_eq!((counts.active, counts.queued), (0, 0), "no transfer under way in {pool}: {counts:?}");
    for r in cluster.rep_ls(pool) {
        assert!(
            [CACHED, CACHED_STICKY, PRECIOUS, PRECIOUS_STICKY].contains(&r.flags.as_str()),
            "{pool} lists a replica that is not complete: {r:?}"
        );
    }
}

/// Every `(pnfsid, bytes)` reads back from `pool` byte for byte.
#[track_caller]
pub fn assert_bytes(cluster: &Cluster, pool: &str, files: &[(String, Vec<u8>)]) {
    for (id, bytes) in files {
        let got = cluster.get_bytes(pool, id);
        assert!(got == *bytes, "{id} in {pool}: {} bytes that differ from the {} stored", got.len(), bytes.len());
    }
}

/// [`assert_bytes`] for thousands of files: the `tidepool get`s (a process each, which
/// verifies the checksum) run from a few threads at once, and every file that does not read
/// back is named, not only the first.
#[track_caller]
pub fn assert_bytes_many(cluster: &Cluster, pool: &str, files: &[(String, Vec<u8>)]) {
    const THREADS: usize = 4;
    let per_thread = files.len().div_ceil(THREADS).max(1);
    let bad: Vec<String> = thread::scope(|s| {
        let workers: Vec<_> = files
            .chunks(per_thread)
            .map(|part| {
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for (id, bytes) in part {
                        let path = cluster.path(&format!("got-{pool}-{id}"));
                        let _ = std::fs::remove_file(&path);
                        let out = cluster.get(pool, id, &path);
                        match std::fs::read(&path) {
                            Ok(got) if out.code == Some(0) && got == *bytes => {}
                            Ok(got) => bad.push(format!(
                                "{id}: {} bytes that differ from the {} stored\n{out}",
                                got.len(),
                                bytes.len()
                            )),
                            Err(e) => bad.push(format!("{id}: {e}\n{out}")),
                        }
                        let _ = std::fs::remove_file(&path);
                    }
                    bad
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a thread running `tidepool get`")).collect()
    });
    assert!(bad.is_empty(), "{} of {} files do not read back from {pool}:\n{}", bad.len(), files.len(), bad.join("\n"));
}

/// A tmpfs mounted by a test; unmounted when dropped (lazily if something still holds it).
#[derive(Debug)]
pub struct TinyFs {
    dir: PathBuf,
}

impl TinyFs {
    /// Mounts a tmpfs of `mib` MiB on `dir`; panics if that fails.
    #[track_caller]
    pub fn mount(dir: &Path, mib: u64) -> TinyFs {
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"]).arg(dir);
        let out = run(cmd, "");
        out.assert_success(&format!("mount a {mib} MiB tmpfs on {}", dir.display()));
        TinyFs { dir: dir.to_path_buf() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            cmd.arg(&self.dir).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!("could not unmount the tmpfs on {}", self.dir.display());
        }
    }
}

/// Whether this process runs as root (and so may mount file systems).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Writes zeros into a new file `path` until the file system is full; returns how many bytes
/// it wrote. For a test that plays another writer filling the disk of a pool.
#[track_caller]
pub fn fill_disk(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => break,
            Err(e) => panic!("fill {}: {e}", path.display()),
        }
    }
    // Whatever is left is smaller than a block; a byte at a time takes it.
    while let Ok(1) = file.write(&[0]) {
        written += 1;
    }
    written
}

/// Sends `sig` to a child that has not been reaped, so its pid cannot have been reused.
#[track_caller]
pub fn signal(child: &Child, sig: Signal) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, sig).unwrap_or_else(|e| panic!("kill -{} {}: {e}", sig.as_raw(), child.id()));
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.running) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!("{}", self.all_logs());
            if let Some(note) = &binaries().stale {
                eprintln!("{note}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rep_ls_lines_parse_and_others_do_not() {
        let id = "0000A1B2C3D4E5F60718293A4B5C6D7E8F90";
        let check = |line: &str, want: Option<(&str, u64, &str)>| {
            let got = RepLine::parse(line);
            let got = got.as_ref().map(|r| (r.flags.as_str(), r.size, r.storage_class.as_str()));
            assert_eq!(got, want, "{line:?}");
        };
        check(
            &format!("{id} <C----------L(0)[0]> 5242880 si={{test:tape}}"),
            Some(("<C----------L(0)[0]>", 5242880, "test:tape")),
        );
        check(&format!("{id} <-P------X--L(0)[0]> 0 si={{<unknown>}}"), Some(("<-P------X--L(0)[0]>", 0, "<unknown>")));
        check(&format!("{id} <C----------L(0)[0]> 12 si={{a}} extra"), None);
        check(&format!("{id} C----------L(0)[0] 12 si={{a}}"), None);
        check(&format!("{id} <C----------L(0)[0]> -1 si={{a}}"), None);
        check("0000XYZ <C----------L(0)[0]> 1 si={a}", None);
        check("Pool disabled", None);
        check("", None);
    }

    #[test]
    fn pp_ls_lines_parse_and_others_do_not() {
        let id = "0000A1B2C3D4E5F60718293A4B5C6D7E8F90";
        let check = |line: &str, want: Option<PpState>| {
            let got = PpLine::parse(line);
            if let Some(got) = &got {
                assert_eq!((got.id, got.pnfsid.as_str(), got.source.as_str()), (3, id, "pool1"), "{line:?}");
            }
            assert_eq!(got.map(|l| l.state), want, "{line:?}");
        };
        check(
            &format!("[3] {id} from pool1 ACTIVE 1048576/67108864 bytes 12.5 MiB/s 2 s"),
            Some(PpState::Active { done: 1 << 20, size: 64 << 20 }),
        );
        check(&format!("[3] {id} from pool1 QUEUED 0 s"), Some(PpState::Queued));
        check(&format!("[3] {id} from pool1 DONE 5000 bytes in 0.1 s"), Some(PpState::Done { bytes: 5000 }));
        check(
            &format!("[3] {id} from pool1 FAILED: source pool pool1 is offline: x (rc=20004)"),
            Some(PpState::Failed { message: "source pool pool1 is offline: x (rc=20004)".into() }),
        );
        check(&format!("[3] {id} from pool1 DONE many bytes in 0.1 s"), None);
        check(&format!("[3] {id} from pool1 ACTIVE 1/2 bytes"), None);
        check(&format!("[x] {id} from pool1 QUEUED 0 s"), None);
        check("[3] 0000XYZ from pool1 QUEUED 0 s", None);
        check("incoming: 0 active of max 8, 0 queued", None);
        check("", None);

        let header =
            "incoming: 1 active of max 8, 2 queued; outgoing: 3 active of max 16, 4 queued; connections opened: 5";
        let listing = PpListing::parse(&format!("{header}\n[3] {id} from pool1 QUEUED 0 s\n")).expect("parses");
        assert_eq!(
            listing.counts,
            PpCounts {
                active: 1,
                max_active: 8,
                queued: 2,
                outgoing: 3,
                max_outgoing: 16,
                outgoing_queued: 4,
                connections_opened: 5
            }
        );
        assert_eq!(listing.of(id).len(), 1);
        assert_eq!(listing.of("0000FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF").len(), 0);
        assert_eq!(PpListing::parse(&format!("{header}\nsomething else\n")), None);
        assert_eq!(PpListing::parse("incoming: 1 active of max 8, 2 queued\n"), None);
    }

    #[test]
    fn job_summary_lines_parse_and_others_do_not() {
        let id = "0000A1B2C3D4E5F60718293A4B5C6D7E8F90";
        let check = |line: &str, want: Option<(&str, &str, &str)>| {
            let got = JobLine::parse(line);
            let got = got.as_ref().map(|j| (j.id.as_str(), j.state.as_str(), j.command.as_str()));
            assert_eq!(got, want, "{line:?}");
        };
        let copy = format!("migration copy -pnfsid={id} -- pool2");
        check(&format!("[1] RUNNING      {copy}"), Some(("1", "RUNNING", &copy)));
        check(
            "[rebalance] FINISHED     migration move -id=rebalance -- pool2",
            Some(("rebalance", "FINISHED", "migration move -id=rebalance -- pool2")),
        );
        check("[2] INITIALIZING migration cache -- p", Some(("2", "INITIALIZING", "migration cache -- p")));
        check(&format!("[1] RUNNING {copy}"), None);
        check(&format!("[1] RUNNING       {copy}"), None);
        check(&format!("[1]  RUNNING     {copy}"), None);
        check(&format!("[] RUNNING      {copy}"), None);
        check("[1] Concurrency set to 2", None);
        check("[1] running      migration copy -- p", None);
        check("", None);
    }

    #[test]
    fn saved_marks_are_split_off_the_command() {
        let check = |line: &str, want: (&str, Option<&str>)| {
            let job = JobLine::parse(line).unwrap_or_else(|| panic!("{line:?} parses"));
            assert_eq!(job.saved_mark(), want, "{line:?}");
        };
        check("[1] SLEEPING     migration copy -permanent -- pool2", ("migration copy -permanent -- pool2", None));
        check(
            "[2] RUNNING      migration copy -permanent -- pool2 (not saved)",
            ("migration copy -permanent -- pool2", Some("not saved")),
        );
        check(
            "[3] CANCELLED    migration move -permanent -- pool9 (saved CANCELLED: comes back at restart until the next `save`)",
            (
                "migration move -permanent -- pool9",
                Some("saved CANCELLED: comes back at restart until the next `save`"),
            ),
        );
        check("[4] FINISHED     migration copy -- pool2 (x)", ("migration copy -- pool2 (x)", None));
    }

    #[test]
    fn report_fields_split_at_the_first_colon() {
        let info =
            "Command    : migration copy -pnfsid=x:y -- p\nState      : RUNNING\nConcurrency: 2\nRunning tasks:\n";
        assert_eq!(report_field(info, "Command"), Some("migration copy -pnfsid=x:y -- p"));
        assert_eq!(report_field(info, "State"), Some("RUNNING"));
        assert_eq!(report_field(info, "Concurrency"), Some("2"));
        assert_eq!(report_field(info, "Running tasks"), Some(""));
        assert_eq!(report_field(info, "Total"), None);
    }

    #[test]
    fn info_fields_are_found_by_name() {
        let info = "--- space ---\nUsed           : 6000 bytes\nMode           : enabled\nPool name      : p\n";
        assert_eq!(info_field(info, "Used"), Some("6000 bytes"));
        assert_eq!(info_field(info, "Mode"), Some("enabled"));
        assert_eq!(info_field(info, "Pool name"), Some("p"));
        assert_eq!(info_field(info, "Free"), None);
    }

    #[test]
    fn sample_bytes_are_deterministic_and_differ_by_seed() {
        assert_eq!(sample_bytes(1001, 5), sample_bytes(1001, 5));
        assert_ne!(sample_bytes(64, 5), sample_bytes(64, 6));
        assert_eq!(sample_bytes(13, 1).len(), 13);
        assert!(sample_bytes(0, 1).is_empty());
    }

    #[test]
    fn a_binary_older_than_its_sources_is_noted() {
        let old = tempfile::NamedTempFile::new().expect("a temp file");
        old.as_file().set_modified(std::time::UNIX_EPOCH).expect("set the mtime");
        let note = staleness(old.path(), old.path()).expect("the sources are newer than 1970");
        assert!(note.contains("cargo build --workspace --bins"), "{note}");
        let new = tempfile::NamedTempFile::new().expect("a temp file");
        let future = std::time::SystemTime::now() + Duration::from_secs(86_400);
        new.as_file().set_modified(future).expect("set the mtime");
        assert_eq!(staleness(new.path(), new.path()), None);
    }
}
