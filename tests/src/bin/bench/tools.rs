//! The tools Tidepool is compared with: `cp -r` + `sync`, `rsync -a` and an rsync daemon on
//! loopback, each copying `plain/` of a data set.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::dataset::{Bench, verify_tree};
use crate::process::{Proc, START_DEADLINE, run_ok};
use crate::report::Measure;
use crate::system::{Who, busy_secs, cpu_secs, delta, wait_quiet};

/// Whether `rsync` runs here; if not, says so and what is skipped (`skipped`).
pub(crate) fn have_rsync(skipped: &str) -> bool {
    let rsync = Command::new("rsync").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if !rsync {
        println!("note: rsync is not installed (Debian: `apt-get install rsync`); {skipped}");
    }
    rsync
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tool {
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

/// Times one tool copying `plain/` into a fresh `dst-<tool>/`. CPU is that of every
/// process of the tool, which this process reaps (the rsync daemon, and with it the
/// server processes it reaped, is stopped before the figure is read).
pub(crate) fn run_tool(b: &Bench, tool: Tool) -> anyhow::Result<Measure> {
    let dst = b.dir.join(format!("dst-{}", tool.slug()));
    if dst.exists() {
        fs::remove_dir_all(&dst)?;
    }
    let src = format!("{}/", b.plain().display());
    let cpu0 = cpu_secs(Who::Me, true) - cpu_secs(Who::Me, false);
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
    let (disk0, busy0, self0) = (b.disk(), busy_secs(), cpu_secs(Who::Me, false));
    let t0 = Instant::now();
    run_ok(&mut cmd)?;
    if tool == Tool::Cp {
        run_ok(&mut Command::new("sync"))?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let (disk, busy1, self1) = (delta(disk0, b.disk()), busy_secs(), cpu_secs(Who::Me, false));
    if let Some(d) = daemon {
        let status = d.stop()?;
        // rsync's daemon exits with 20 ("received SIGINT, SIGTERM") when told to stop.
        if !(status.success() || status.code() == Some(20)) {
            bail!("the rsync daemon exited with {status}");
        }
    }
    let cpu = cpu_secs(Who::Me, true) - cpu_secs(Who::Me, false) - cpu0;
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
pub(crate) fn warm_up(b: &Bench) -> anyhow::Result<()> {
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
