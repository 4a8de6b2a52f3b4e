//! Process control shared by the benchmarks: the daemon binary, starting pool daemons (and
//! waiting until they answer), stopping them with SIGTERM (through `rustix`, no `unsafe`), and
//! an admin connection.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tidepool_p2p::auth::Service;
use tidepool_p2p::cluster::{ClusterFile, PoolEntry};
use tidepool_p2p::conn::Connection;
use tidepool_p2p::message::{AdminReply, AdminRequest};
use tidepool_p2p::tls::{Credentials, Role, TlsFiles};

use crate::system;

/// How long a daemon (or the rsync daemon) may take to answer after it was started.
pub(crate) const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long a daemon may take to exit after SIGTERM (its grace is 5 s).
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// The pause between two `info` polls of the target while replicas arrive.
pub(crate) const POLL: Duration = Duration::from_millis(10);

/// The daemon's binaries, beside this one in `target/<profile>/`.
pub(crate) struct Binaries {
    pub(crate) tidepool: PathBuf,
}

impl Binaries {
    pub(crate) fn find() -> anyhow::Result<Binaries> {
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

/// The credentials in `dir`: a CA (`tidepool ca init`) and certificates for pool1, pool2 and
/// the bench's admin connections (`tidepool ca issue`), each made unless it exists. Returns the
/// admin credentials.
pub(crate) fn credentials_in(dir: &Path, bins: &Binaries) -> anyhow::Result<Credentials> {
    let tidepool = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new(&bins.tidepool).args(args).arg(dir).stdout(Stdio::null()).status()?;
        if !status.success() {
            bail!("tidepool {} {} failed", args.join(" "), dir.display());
        }
        Ok(())
    };
    if !dir.join("ca.crt").exists() {
        tidepool(&["ca", "init"])?;
    }
    for (role, name) in [(Role::Pool, "pool1"), (Role::Pool, "pool2"), (Role::Admin, "bench")] {
        if !TlsFiles::in_dir(dir, role, name).cert.exists() {
            tidepool(&["ca", "issue", "--role", role.as_str(), "--name", name])?;
        }
    }
    Credentials::load(&TlsFiles::in_dir(dir, Role::Admin, "bench")).map_err(anyhow::Error::msg)
}

/// A child process that is killed if it is still running when dropped.
pub(crate) struct Proc {
    what: String,
    child: Option<Child>,
}

impl Proc {
    pub(crate) fn spawn(what: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
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

    /// The process, for the figures of [`system`] (pid 0, which has none, once it is gone).
    pub(crate) fn who(&self) -> system::Who {
        system::Who::Pid(self.child.as_ref().map_or(0, Child::id))
    }

    /// Fails if the process has exited.
    pub(crate) fn check_running(&mut self, log: &Path) -> anyhow::Result<()> {
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
    pub(crate) fn peak_rss_mib(&self) -> f64 {
        system::peak_rss_mib(self.who())
    }

    pub(crate) fn cpu(&self) -> f64 {
        system::cpu_secs(self.who(), false)
    }

    /// Sends SIGTERM without waiting (to stop many at once; [`Proc::stop`] then waits).
    pub(crate) fn terminate(&self) {
        if let Some(child) = &self.child {
            let _ = terminate(child);
        }
    }

    /// SIGTERM, then waits for the exit.
    pub(crate) fn stop(mut self) -> anyhow::Result<ExitStatus> {
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
fn terminate(child: &Child) -> anyhow::Result<()> {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        .with_context(|| format!("kill -TERM {}", child.id()))?;
    Ok(())
}

/// One authenticated admin connection.
pub(crate) struct Admin {
    conn: Connection,
}

impl Admin {
    pub(crate) async fn open(addr: SocketAddr, key: &Credentials) -> anyhow::Result<Admin> {
        let conn = Connection::open(addr, key, "bench", Service::Admin).await?;
        Ok(Admin { conn })
    }

    /// Runs one command line; its output, or an error if it failed.
    pub(crate) async fn run(&mut self, line: &str) -> anyhow::Result<String> {
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
pub(crate) fn write_cluster(dir: &Path) -> anyhow::Result<[(SocketAddr, SocketAddr); 2]> {
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
             shutdown_grace_seconds = 5\n"
        );
        fs::write(dir.join(format!("{name}.toml")), config)?;
        // What `tidepool init` does: a pool starts only in a marked directory.
        let pool = name.parse().map_err(|e| anyhow!("{e}"))?;
        tidepool_pool::process::pool_dir::init(&dir.join(name), &pool)?;
    }
    Ok(pools)
}

/// Starts a pool daemon whose config (from [`write_cluster`]) is in `dir` and returns it with an
/// admin connection once it answers `info`.
pub(crate) fn start_pool_in(
    dir: &Path,
    bins: &Binaries,
    rt: &tokio::runtime::Runtime,
    key: &Credentials,
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

pub(crate) fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
