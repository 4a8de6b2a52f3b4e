//! The daemon as a site service: its log (format, filter, levels changed at run time), the
//! version and resolved config at start and in `info`, systemd's notification protocol
//! (readiness, watchdog, stopping), SIGHUP, the open-file limit and the unit file.

use std::fs::OpenOptions;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use procfs::process::LimitValue;
use tidepool_tests::*;

/// How long any awaited state may take.
const WAIT: Duration = Duration::from_secs(30);

/// The workspace's version, which the daemon reports.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `tidepool pool --config <pool>.toml` with `env` and without `RUST_LOG`, run to its end.
fn run_pool(cluster: &Cluster, pool: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(&binaries().tidepool);
    cmd.arg("pool")
        .arg("--config")
        .arg(cluster.config_path(pool))
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied());
    run(cmd, "")
}

#[test]
fn an_invalid_log_filter_is_refused_at_start_with_a_clear_message() {
    let cluster = Cluster::new(&[("pool1", &["disk"])]);
    let refused = |args: &[&str], env: &[(&str, &str)], want: &str| {
        let out = run_pool(&cluster, "pool1", args, env);
        assert_ne!(out.code, Some(0), "{args:?} {env:?} started\n{out}");
        assert!(out.stderr.contains(want), "{args:?} {env:?}: no {want:?}\n{out}");
    };
    refused(
        &[],
        &[("RUST_LOG", "verbose")],
        "invalid log filter \"verbose\" in RUST_LOG: 'verbose' is not a level (levels: off, error, warn, info, debug, trace)",
    );
    refused(
        &["--log-filter", "info,tidepool_pool=loud"],
        &[("RUST_LOG", "info")],
        "invalid log filter \"info,tidepool_pool=loud\" in --log-filter: 'loud' is not a level",
    );
    // `--check` refuses it with the daemon's own message.
    refused(
        &["--check"],
        &[("RUST_LOG", "verbose")],
        "invalid log filter \"verbose\" in RUST_LOG: 'verbose' is not a level",
    );
    cluster.append_config("pool1", "[log]\nfilter = \"chatty\"\n");
    refused(&[], &[], "log.filter \"chatty\": 'chatty' is not a level");
    // `Cluster::new` ran `tidepool init`: the directory holds its marker and nothing else.
    let left: Vec<String> = std::fs::read_dir(cluster.data_dir("pool1"))
        .expect("the initialised data directory")
        .map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![".tidepool-pool".to_string()], "a refused start wrote into the data directory");
}

#[test]
fn json_log_lines_parse_as_json_and_the_start_line_has_the_resolved_config() {
    let mut cluster = Cluster::new(&[("pool1", &["disk"])]);
    cluster.append_config("pool1", "[log]\nformat = \"json\"\n");
    // The harness sets RUST_LOG=info; the format comes from the config all the same.
    cluster.start("pool1");
    cluster.wait_for_log_line("pool1", &["pool started"], WAIT);
    cluster.stop("pool1");
    let log = cluster.log("pool1");
    let mut started = None;
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.starts_with("=== tidepool-tests")) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\nlog:\n{log}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string() && v["target"].is_string(), "{line}");
        lines += 1;
        if v["fields"]["message"] == "pool started" {
            started = Some(v);
        }
    }
    assert!(lines >= 3, "{log}");
    let started = started.unwrap_or_else(|| panic!("no pool started line:\n{log}"));
    let spec = cluster.spec("pool1");
    assert_eq!(started["fields"]["version"], VERSION, "{started}");
    assert_eq!(started["fields"]["capacity"], 256u64 << 20, "{started}");
    assert_eq!(started["fields"]["admin_addr"], spec.admin.to_string(), "{started}");
    assert_eq!(started["fields"]["data_addr"], spec.p2p.to_string(), "{started}");
    let data_dir = started["fields"]["data_dir"].as_str().unwrap_or_default();
    assert!(data_dir.ends_with("pool1"), "{started}");
}

#[test]
fn log_set_and_log_ls_change_and_show_the_levels_at_run_time() {
    let cluster = started(&[("pool1", &["disk"])]);
    // The harness runs pools with RUST_LOG=info.
    assert_eq!(ok(&cluster, "pool1", "log ls\n").trim_end(), format!("{:<32} info", "all"));
    // Every admin connection logs "connection authenticated" at debug: not yet.
    assert!(!cluster.log("pool1").contains("connection authenticated"), "debug line before `log set`");
    let reply = ok(&cluster, "pool1", "log set tidepool_pool::daemon debug\n");
    assert_eq!(reply.trim_end(), "Log filter: info,tidepool_pool::daemon=debug");
    let ls = ok(&cluster, "pool1", "log ls\n");
    assert_eq!(ls, format!("{:<32} info\n{:<32} debug\n", "all", "tidepool_pool::daemon"));
    let line = cluster.wait_for_log_line("pool1", &["DEBUG", "connection authenticated"], WAIT);
    assert!(line.contains("tidepool_pool::daemon"), "{line}");

    // `all` replaces every level; the debug line stops.
    ok(&cluster, "pool1", "log set all warn\n");
    let before = cluster.log("pool1").matches("connection authenticated").count();
    assert_eq!(ok(&cluster, "pool1", "log ls\n").trim_end(), format!("{:<32} warn", "all"));
    let info = cluster.info("pool1");
    assert_eq!(info_field(&info, "Log filter"), Some("warn"), "{info}");
    assert_eq!(cluster.log("pool1").matches("connection authenticated").count(), before);

    let err = refused(&cluster, "pool1", "log set tidepool_pool loud");
    assert!(err.contains("'loud' is not a level"), "{err}");
    let err = refused(&cluster, "pool1", "log set a/b info");
    assert!(err.contains("'a/b' is not a target"), "{err}");
}

#[test]
fn info_shows_the_version_and_the_resolved_config() {
    let cluster = started(&[("pool1", &["disk"])]);
    let info = cluster.info("pool1");
    let spec = cluster.spec("pool1");
    assert_eq!(info_field(&info, "Version"), Some(VERSION), "{info}");
    assert_eq!(info_field(&info, "Capacity"), Some(format!("{} bytes", 256u64 << 20).as_str()), "{info}");
    let dir = cluster.data_dir("pool1");
    assert_eq!(info_field(&info, "Data directory").map(PathBuf::from), Some(dir), "{info}");
    assert_eq!(info_field(&info, "Admin listener"), Some(spec.admin.to_string().as_str()), "{info}");
    assert_eq!(info_field(&info, "Data listener"), Some(spec.p2p.to_string().as_str()), "{info}");
    let started_at = info_field(&info, "Started").unwrap_or_else(|| panic!("no Started line:\n{info}"));
    assert!(started_at.contains(" s)"), "{info}");
    assert!(info_field(&info, "Start-up took").is_some_and(|t| t.ends_with(" s")), "{info}");
    // The existing lines keep their order: the new section comes last.
    assert!(info.find("--- space ---") < info.find("--- service ---"), "{info}");
    let line = cluster.wait_for_log_line("pool1", &["tidepool starting"], WAIT);
    assert!(line.contains(&format!("version=\"{VERSION}\"")) || line.contains(&format!("version={VERSION}")), "{line}");
}

#[test]
fn sighup_during_transfers_changes_the_log_level_and_loses_nothing() {
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    // Without RUST_LOG the config's [log] filter (here: none, so the default) is in force.
    cluster.start_with_env("pool1", &[("RUST_LOG", "")]);
    cluster.start_with_env("pool2", &[("RUST_LOG", "")]);
    let sizes: Vec<(usize, u64)> = (0..24).map(|i| (1000 + i * 37_000, i as u64)).collect();
    let files = cluster.put_samples("pool1", &sizes, &[]);
    // Hold the copies at pool2's incoming gate, so that the SIGHUPs find them in flight.
    ok(&cluster, "pool2", "pp set max active 0\n");
    let job = create(&cluster, "pool1", "migration copy -concurrency=4 pool2");
    wait_until("transfers queued on pool2", WAIT, || (cluster.pp_ls("pool2").counts.queued > 0).then_some(()));
    assert!(!cluster.log("pool2").contains("DEBUG"), "debug lines before the SIGHUP");

    cluster.append_config("pool2", "[log]\nfilter = \"info,tidepool_pool=debug\"\n");
    cluster.hangup("pool2");
    cluster.hangup("pool1");
    let line = cluster.wait_for_log_line("pool2", &["SIGHUP: log filter changed from"], WAIT);
    assert!(line.contains("to info,tidepool_pool=debug"), "{line}");
    cluster.wait_for_log_line("pool1", &["SIGHUP: log filter unchanged"], WAIT);
    cluster.wait_for_log_line("pool1", &["SIGHUP: cluster file unchanged"], WAIT);

    ok(&cluster, "pool2", "pp set max active 8\n");
    // Another SIGHUP while the copies run.
    cluster.hangup("pool2");
    cluster.hangup("pool1");
    cluster.wait_for_job("pool1", &job, "FINISHED", WAIT);
    cluster.wait_for_log_line("pool2", &["DEBUG", "tidepool_pool"], WAIT);
    assert!(cluster.is_running("pool1") && cluster.is_running("pool2"));
    assert_eq!(
        ok(&cluster, "pool2", "log ls\n")
            .lines()
            .find(|l| l.starts_with("tidepool_pool "))
            .map(str::split_whitespace)
            .and_then(|mut w| w.nth(1)),
        Some("debug")
    );
    // Every file arrived whole: the target's copy reads back with its checksum verified.
    let listed: Vec<String> = cluster.rep_ls("pool2").into_iter().map(|r| r.pnfsid).collect();
    for (id, _) in &files {
        assert!(listed.contains(id), "{id} missing on pool2");
    }
    assert_bytes(&cluster, "pool2", &files);
    assert_bytes(&cluster, "pool1", &files);
    assert_no_partial_replica(&cluster, "pool2");
}

#[test]
fn sighup_applies_cluster_file_changes_and_survives_a_broken_config() {
    let mut cluster = started(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    let path = cluster.cluster_file();
    let text = std::fs::read_to_string(&path).expect("read cluster.toml");
    std::fs::write(&path, text.replace("groups = [\"disk\"]", "groups = [\"fast\"]")).expect("write cluster.toml");
    cluster.hangup("pool1");
    cluster.wait_for_log_line(
        "pool1",
        &["SIGHUP: cluster file: pool pool2 changed: groups disk -> fast; applied"],
        WAIT,
    );
    // The new view is in force: this pool's groups, and the members of a group.
    assert_eq!(info_field(&cluster.info("pool1"), "Pool groups"), Some("fast"));
    let err = refused(&cluster, "pool1", "rebalance pgroup disk");
    assert!(err.contains("no pool group named disk"), "{err}");
    // A cluster file without this pool is not applied.
    let fast = std::fs::read_to_string(&path).expect("read cluster.toml");
    std::fs::write(&path, "").expect("empty cluster.toml");
    cluster.hangup("pool1");
    cluster.wait_for_log_line(
        "pool1",
        &["SIGHUP: the cluster file no longer lists this pool (pool1); it was not applied"],
        WAIT,
    );
    // (The shell reads the cluster file too.)
    std::fs::write(&path, fast).expect("write cluster.toml");
    assert_eq!(info_field(&cluster.info("pool1"), "Pool groups"), Some("fast"));
    // A config that no longer parses changes nothing, and the pool runs on.
    cluster.append_config("pool1", "colour = \"red\"\n");
    cluster.hangup("pool1");
    cluster.wait_for_log_line("pool1", &["SIGHUP:", "colour", "nothing changed"], WAIT);
    cluster.info("pool1");
    assert!(cluster.is_running("pool1"));
    assert_eq!(cluster.stop("pool1").code(), Some(0));
}

/// A daemon the test starts itself (through `sh`, to set its own environment), killed if the
/// test ends early.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tidepool pool` for `pool` through `sh -c`, which first runs `prelude` (e.g. a
/// `ulimit`) and exports WATCHDOG_PID as its own pid (the daemon's, after `exec`).
fn spawn_daemon(cluster: &Cluster, pool: &str, prelude: &str, env: &[(&str, &str)]) -> Daemon {
    let log = OpenOptions::new().create(true).append(true).open(cluster.log_path(pool)).expect("open the log");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("{prelude} WATCHDOG_PID=$$ exec \"$0\" pool --config \"$1\""))
        .arg(&binaries().tidepool)
        .arg(cluster.config_path(pool))
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log"))
        .stderr(log)
        .spawn()
        .expect("start sh");
    Daemon(child)
}

/// The next notification datagram, within [`WAIT`].
fn next_notification(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).unwrap_or_else(|e| panic!("no notification within {WAIT:?}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn readiness_comes_once_the_pool_answers_then_the_watchdog_and_stopping() {
    let cluster = Cluster::new(&[("pool1", &["disk"])]);
    let path = cluster.path("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket.set_read_timeout(Some(WAIT)).expect("set a read timeout");
    let notify = path.to_str().expect("a UTF-8 path");
    let mut daemon = spawn_daemon(&cluster, "pool1", "", &[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "400000")]);

    let first = next_notification(&socket);
    assert!(first.lines().any(|l| l == "READY=1"), "first notification: {first:?}");
    // READY=1 came: the pool answers at once, on both ports, without a retry.
    let spec = cluster.spec("pool1");
    std::net::TcpStream::connect(spec.p2p).expect("the data port accepts after READY=1");
    let info = cluster.admin_args(&["--pool", "pool1", "-e", "info"], "");
    info.assert_success("info right after READY=1");
    assert!(info.stdout.contains("Pool name      : pool1"), "{info}");

    let deadline = Instant::now() + WAIT;
    loop {
        let n = next_notification(&socket);
        if n.lines().any(|l| l == "WATCHDOG=1") {
            break;
        }
        assert!(Instant::now() < deadline, "no WATCHDOG=1 within {WAIT:?}");
    }

    tidepool_tests::signal(&daemon.0, Signal::TERM);
    loop {
        let n = next_notification(&socket);
        if n.lines().any(|l| l == "STOPPING=1") {
            break;
        }
        assert!(n.lines().all(|l| l == "WATCHDOG=1"), "unexpected notification before STOPPING=1: {n:?}");
    }
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = daemon.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the pool did not exit within {WAIT:?} of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{}", cluster.log("pool1"));
}

/// The soft and hard limit on open files of a process, from `/proc/<pid>/limits`.
fn nofile_limits(pid: u32) -> (String, String) {
    let pid = i32::try_from(pid).expect("a pid");
    let limits = procfs::process::Process::new(pid).and_then(|p| p.limits()).expect("read /proc/<pid>/limits");
    let text = |v: LimitValue| match v {
        LimitValue::Unlimited => "unlimited".to_string(),
        LimitValue::Value(n) => n.to_string(),
    };
    (text(limits.max_open_files.soft_limit), text(limits.max_open_files.hard_limit))
}

#[test]
fn the_open_file_soft_limit_is_raised_to_the_hard_limit() {
    let cluster = Cluster::new(&[("pool1", &["disk"])]);
    let daemon = spawn_daemon(&cluster, "pool1", "ulimit -S -n 256 &&", &[]);
    cluster.wait_for_log_line("pool1", &["pool started"], WAIT);
    let (soft, hard) = nofile_limits(daemon.0.id());
    assert_eq!(soft, hard, "the soft limit was not raised");
    if hard != "256" {
        cluster.wait_for_log_line("pool1", &[&format!("open-file limit raised from 256 to {hard}")], WAIT);
    }
}

fn unit_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/tidepool@.service")
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let text = std::fs::read_to_string(unit_file()).expect("read dist/tidepool@.service");
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "LimitNOFILE=1048576",
        "ExecStart=/usr/bin/tidepool pool --config /etc/tidepool/%i.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(text.lines().any(|l| l == line), "the unit file lacks {line:?}");
    }
    let present = Command::new("systemd-analyze").arg("--version").stdout(Stdio::null()).status();
    if !present.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: systemd-analyze is not installed; the unit file was not verified");
        return;
    }
    // Verified as installed, but with ExecStart naming the binary under test (verify checks
    // that the command exists).
    let dir = tempfile::tempdir().expect("a temp dir");
    let local = text.replace("/usr/bin/tidepool", binaries().tidepool.to_str().expect("a UTF-8 path"));
    std::fs::write(dir.path().join("tidepool@.service"), local).expect("write the unit");
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify").arg(dir.path().join("tidepool@pool1.service"));
    let out = run(cmd, "");
    out.assert_success("systemd-analyze verify");
    // verify exits 0 on unknown keys and bad values, with a warning: there must be none.
    assert!(!out.stderr.contains("tidepool@"), "systemd-analyze verify warned:\n{out}");
}
