//! Pool daemons started from their config files as separate processes, driven as an operator
//! drives them: `tidepool put` and `tidepool get` for data, `tidepool-admin` scripts on stdin
//! for everything else. Each test has its own cluster in its own temporary directory.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tidepool_p2p::ErrorCode;
use tidepool_tests::{Cluster, RepLine, info_field, parse_put, parse_rep_ls, rc, sample_bytes, two_pools};

const CACHED: &str = "<C----------L(0)[0]>";
const CACHED_STICKY: &str = "<C-------X--L(0)[0]>";
const PRECIOUS: &str = "<-P---------L(0)[0]>";
const PRECIOUS_STICKY: &str = "<-P------X--L(0)[0]>";
const RDONLY_MODE: &str = "disabled(store,stage,p2p-client)";

/// How long a test waits for a log line describing something it has already seen happen.
const LOG_WAIT: Duration = Duration::from_secs(10);

fn line(pnfsid: &str, flags: &str, size: u64, class: &str) -> RepLine {
    RepLine { pnfsid: pnfsid.into(), flags: flags.into(), size, storage_class: class.into() }
}

fn sorted(mut lines: Vec<RepLine>) -> Vec<RepLine> {
    lines.sort();
    lines
}

/// Three replicas in pool1: a cached one, a precious one and a sticky one (owner alice), with
/// two storage classes; returns their pnfsids in that order.
fn fill_pool1(cluster: &Cluster) -> [String; 3] {
    let plain = cluster.write_file("plain.dat", &sample_bytes(1000, 1));
    let precious = cluster.write_file("precious.dat", &sample_bytes(2000, 2));
    let sticky = cluster.write_file("sticky.dat", &sample_bytes(3000, 3));
    let a = cluster.put_ok("pool1", &[&plain], &["--storage", "test:disk"]);
    let b = cluster.put_ok("pool1", &[&precious], &["--storage", "test:tape", "--precious"]);
    let c = cluster.put_ok("pool1", &[&sticky], &["--storage", "test:disk", "--sticky", "alice"]);
    [a[0].clone(), b[0].clone(), c[0].clone()]
}

#[test]
fn operator_session_lists_marks_and_disables() {
    let cluster = two_pools();
    let [plain, precious, sticky] = fill_pool1(&cluster);

    let script = format!(
        "# an operator's session, as a script\n\
         cd pool1\n\
         rep ls\n\
         rep set sticky -o=bob {precious} on\n\
         rep sticky ls {precious}\n\
         rep sticky ls {sticky}\n\
         rep ls {precious}\n\
         pool disable -rdonly\n\
         info\n\
         cd pool2\n\
         rep ls\n"
    );
    let out = cluster.admin(&script);
    out.assert_success("the operator's script");
    assert_eq!(out.stderr, "", "no command failed, so nothing on stderr\n{out}");

    // stdout holds each command's output in order; `info` starts with its header line, and
    // pool2's empty `rep ls` adds nothing after it.
    let lines: Vec<&str> = out.stdout.lines().collect();
    let (listing, rest) = lines.split_at(3);
    assert_eq!(
        parse_rep_ls(&listing.join("\n")),
        sorted(vec![
            line(&plain, CACHED, 1000, "test:disk"),
            line(&precious, PRECIOUS, 2000, "test:tape"),
            line(&sticky, CACHED_STICKY, 3000, "test:disk"),
        ]),
        "{out}"
    );
    let info_at = rest.iter().position(|l| l.starts_with("--- pool ")).unwrap_or_else(|| panic!("no info in\n{out}"));
    assert_eq!(
        rest[..info_at],
        [
            "bob : never expires".to_string(),
            "alice : never expires".to_string(),
            format!("{precious} {PRECIOUS_STICKY} 2000 si={{test:tape}}"),
            "Pool disabled".to_string(),
        ],
        "{out}"
    );
    let info = rest[info_at..].join("\n");
    assert_eq!(info_field(&info, "Pool name"), Some("pool1"), "{info}");
    assert_eq!(info_field(&info, "Mode"), Some(RDONLY_MODE), "{info}");
    assert!(info.contains(&format!("Mode           : {RDONLY_MODE}\n")), "{info}");
    assert_eq!(info_field(&info, "Disabled with"), Some("[1] Operator intervention"), "{info}");
    assert_eq!(info_field(&info, "Pool groups"), Some("disk"), "{info}");
    assert_eq!(info_field(&info, "Used"), Some("6000 bytes"), "{info}");
    assert_eq!(info_field(&info, "Precious"), Some("2000 bytes"), "{info}");
    assert!(
        rest[info_at..].iter().all(|l| RepLine::parse(l).is_none()),
        "pool2's `rep ls` printed replicas, or info did:\n{out}"
    );

    // pool2 really is empty and enabled; the disable did not leak to it.
    assert_eq!(cluster.rep_ls("pool2"), vec![]);
    assert_eq!(info_field(&cluster.info("pool2"), "Mode"), Some("enabled"));
}

#[test]
fn get_returns_the_stored_bytes() {
    let cluster = two_pools();
    // Larger than one 1 MiB data frame, and not a multiple of it; plus a tiny and an empty file.
    let files = [
        ("big.dat", sample_bytes((1 << 20) * 2 + 12345, 7)),
        ("small.dat", sample_bytes(17, 8)),
        ("empty.dat", Vec::new()),
    ];
    let paths: Vec<_> = files.iter().map(|(name, bytes)| cluster.write_file(name, bytes)).collect();
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let ids = cluster.put_ok("pool1", &refs, &[]);

    for ((name, bytes), id) in files.iter().zip(&ids) {
        let got = cluster.get_bytes("pool1", id);
        assert!(got == *bytes, "{name}: got {} bytes back, not the {} stored", got.len(), bytes.len());
    }
    let listed = cluster.rep_ls("pool1");
    let expected: Vec<RepLine> =
        files.iter().zip(&ids).map(|((_, bytes), id)| line(id, CACHED, bytes.len() as u64, "<unknown>")).collect();
    assert_eq!(listed, sorted(expected));

    // A pnfsid the pool does not hold: an error naming it, and no output file.
    let missing = "0000FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF";
    let out_path = cluster.path("missing.out");
    let out = cluster.get("pool1", missing, &out_path);
    out.assert_code(1, "get of a pnfsid pool1 does not hold");
    assert!(out.stderr.contains(missing), "{out}");
    assert!(!out_path.exists(), "a failed get leaves no file behind");
    // The replica is in pool1, not pool2.
    let out = cluster.get("pool2", &ids[1], &out_path);
    out.assert_code(1, "get from the wrong pool");
    assert!(!out_path.exists(), "a failed get leaves no file behind");
}

#[test]
fn restart_keeps_replicas_flags_and_mode() {
    let mut cluster = two_pools();
    let [plain, precious, sticky] = fill_pool1(&cluster);
    let out = cluster.admin(&format!("cd pool1\nrep set sticky -o=bob {precious} on\npool disable -rdonly\n"));
    out.assert_success("sticky and disable");
    let before = cluster.rep_ls("pool1");
    assert_eq!(
        before,
        sorted(vec![
            line(&plain, CACHED, 1000, "test:disk"),
            line(&precious, PRECIOUS_STICKY, 2000, "test:tape"),
            line(&sticky, CACHED_STICKY, 3000, "test:disk"),
        ])
    );

    let status = cluster.stop("pool1");
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean shutdown: {status}");
    cluster.wait_for_log_line("pool1", &["pool stopped"], LOG_WAIT);
    assert!(!cluster.log("pool1").contains("grace period"), "nothing was in flight to abandon");
    cluster.start("pool1");

    assert_eq!(cluster.rep_ls("pool1"), before, "the same replicas, sizes and flags after a restart");
    let out = cluster.admin(&format!("cd pool1\nrep sticky ls {precious}\nrep sticky ls {sticky}\n"));
    out.assert_success("rep sticky ls");
    assert_eq!(out.stdout, "bob : never expires\nalice : never expires\n");
    let info = cluster.info("pool1");
    assert_eq!(info_field(&info, "Mode"), Some(RDONLY_MODE), "the mode is saved:\n{info}");
    assert_eq!(info_field(&info, "Used"), Some("6000 bytes"), "{info}");
    assert!(info.contains("clean: nothing to report (3 replicas loaded)"), "{info}");
    // ...and it is enforced, not only shown.
    let file = cluster.write_file("after-restart.dat", b"refused");
    let out = cluster.put("pool1", &[&file], &[]);
    out.assert_code(1, "put to a pool disabled before the restart");
    assert!(out.stderr.contains(&rc(ErrorCode::PoolDisabled)), "{out}");
    assert_eq!(cluster.rep_ls("pool1"), before);
}

#[test]
fn a_certificate_from_another_ca_is_refused_and_changes_nothing() {
    let cluster = two_pools();
    let [plain, ..] = fill_pool1(&cluster);
    let before = cluster.rep_ls("pool1");
    let other_admin = cluster.foreign_cert("admin", "admin");

    let out = cluster.admin_with_cert(&other_admin, &format!("cd pool1\nrep ls\nrep set sticky {plain} on\n"));
    out.assert_code(1, "the shell with a certificate from another CA");
    assert!(out.stderr.contains(&rc(ErrorCode::AuthFailed)), "{out}");
    assert_eq!(out.stdout, "", "{out}");
    let refused =
        cluster.wait_for_log_line("pool1", &["WARN", "refused connection", "authentication failed"], LOG_WAIT);
    assert!(refused.contains("Admin"), "the warning names the endpoint: {refused}");

    let file = cluster.write_file("intruder.dat", &sample_bytes(4096, 9));
    let other_client = cluster.foreign_cert("client", "client");
    let out = cluster.put_with_cert(Some(&other_client), "pool1", &[&file], &[]);
    out.assert_code(1, "put with a certificate from another CA");
    assert!(out.stderr.contains(&rc(ErrorCode::AuthFailed)), "{out}");
    assert_eq!(out.stdout, "", "no pnfsid is printed for a file not stored\n{out}");
    cluster.wait_for_log_line("pool1", &["WARN", "refused connection", "Data", "authentication failed"], LOG_WAIT);

    // With the right credentials: nothing changed, and the pool still serves.
    assert_eq!(cluster.rep_ls("pool1"), before);
    let out = cluster.admin(&format!("cd pool1\nrep sticky ls {plain}\n"));
    out.assert_success("rep sticky ls");
    assert_eq!(out.stdout, "", "the refused shell set no sticky flag");
    let ids = cluster.put_ok("pool1", &[&file], &[]);
    assert_eq!(cluster.get_bytes("pool1", &ids[0]), sample_bytes(4096, 9));
}

#[test]
fn put_to_a_read_only_pool_is_refused_until_enabled() {
    let cluster = two_pools();
    fill_pool1(&cluster);
    let out = cluster.admin("cd pool1\npool disable -rdonly\n");
    out.assert_success("pool disable");
    assert_eq!(out.stdout, "Pool disabled\n");
    let before = cluster.rep_ls("pool1");
    let info_before = cluster.info("pool1");

    let file = cluster.write_file("late.dat", &sample_bytes(5000, 10));
    let out = cluster.put("pool1", &[&file], &["--storage", "test:disk"]);
    out.assert_code(1, "put to a disabled pool");
    assert!(out.stderr.contains(&rc(ErrorCode::PoolDisabled)), "{out}");
    assert_eq!(out.stdout, "", "{out}");

    assert_eq!(cluster.rep_ls("pool1"), before);
    let info_after = cluster.info("pool1");
    for field in ["Used", "Free", "Precious", "Removable", "Replicas", "Mode"] {
        assert_eq!(info_field(&info_after, field), info_field(&info_before, field), "{field}\n{info_after}");
    }
    // Reading is still allowed in -rdonly.
    for r in &before {
        assert_eq!(cluster.get_bytes("pool1", &r.pnfsid).len() as u64, r.size);
    }

    let out = cluster.admin("cd pool1\npool enable\ninfo\n");
    out.assert_success("pool enable");
    assert!(out.stdout.starts_with("Pool enabled\n"), "{out}");
    assert_eq!(info_field(&out.stdout, "Mode"), Some("enabled"), "{out}");
    let id = cluster.put_ok("pool1", &[&file], &["--storage", "test:disk"]);
    let mut expected = before.clone();
    expected.push(line(&id[0], CACHED, 5000, "test:disk"));
    assert_eq!(cluster.rep_ls("pool1"), sorted(expected));
}

/// A `tidepool put` of one large file into pool1 that is still running.
struct Upload {
    child: Child,
    file: PathBuf,
    bytes: Vec<u8>,
    /// Whether the pool's `incoming/` held partial data before the put ended.
    seen_in_flight: bool,
}

impl Upload {
    /// Starts the put and returns once the pool holds partial data for it (or the put ended).
    fn start(cluster: &Cluster, name: &str) -> Upload {
        let bytes = sample_bytes(32 << 20, 200);
        let file = cluster.write_file(name, &bytes);
        let mut put = cluster.put_command(None, "pool1", &[&file], &[]);
        let mut child = put.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start tidepool put");
        let incoming = cluster.data_dir("pool1").join("incoming");
        let deadline = Instant::now() + Duration::from_secs(20);
        let seen_in_flight = loop {
            if std::fs::read_dir(&incoming).expect("read incoming/").next().is_some() {
                break true;
            }
            if child.try_wait().expect("try_wait").is_some() {
                break false;
            }
            assert!(Instant::now() < deadline, "the upload neither started nor ended");
            std::thread::sleep(Duration::from_millis(5));
        };
        Upload { child, file, bytes, seen_in_flight }
    }

    /// Waits for the put to end; the pnfsid if it acknowledged the file.
    fn finish(self) -> (Option<String>, Vec<u8>, bool) {
        let out = self.child.wait_with_output().expect("wait for tidepool put");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let id = if out.status.success() {
            Some(parse_put(&stdout, &[&self.file])[0].clone())
        } else {
            assert_eq!(stdout, "", "no pnfsid for a file not stored");
            assert!(stderr.contains("not stored"), "{stderr}");
            None
        };
        (id, self.bytes, self.seen_in_flight)
    }
}

/// The `incoming/` entries of pool1: partial uploads.
fn partial_files(cluster: &Cluster) -> Vec<PathBuf> {
    let incoming = cluster.data_dir("pool1").join("incoming");
    std::fs::read_dir(&incoming).expect("read incoming/").map(|e| e.expect("a directory entry").path()).collect()
}

/// After an interrupted upload: any replica beyond `known` must be the upload itself,
/// committed before the interruption, and then complete; nothing is left half-written.
fn check_no_partial_replica(cluster: &Cluster, known: &[&str], acknowledged: Option<&str>, bytes: &[u8]) {
    let listed = cluster.rep_ls("pool1");
    if let Some(id) = acknowledged {
        assert!(listed.iter().any(|r| r.pnfsid == id), "acknowledged {id} lost:\n{listed:?}");
    }
    let extra: Vec<&RepLine> = listed.iter().filter(|r| !known.contains(&r.pnfsid.as_str())).collect();
    assert!(extra.len() <= 1, "{extra:?}");
    for r in extra {
        assert_eq!((r.flags.as_str(), r.size), (CACHED, bytes.len() as u64), "{r:?}");
        assert!(cluster.get_bytes("pool1", &r.pnfsid) == bytes, "{}: different bytes", r.pnfsid);
    }
    let receiving = cluster.admin("cd pool1\nrep ls -l=l\n");
    receiving.assert_success("rep ls -l=l");
    assert_eq!(receiving.stdout, "", "no replica is left in a receiving state");
    assert_eq!(partial_files(cluster), Vec::<PathBuf>::new(), "no partial data is left");
}

#[test]
fn kill_9_loses_no_acknowledged_replica_or_setting() {
    let mut cluster = two_pools();
    let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
    // Several puts, each acknowledged before the next.
    for (i, len) in [1usize, 100, 65_536, 1_500_000, 300].into_iter().enumerate() {
        let bytes = sample_bytes(len, 100 + i as u64);
        let file = cluster.write_file(&format!("file{i}.dat"), &bytes);
        let args: &[&str] = if i % 2 == 0 { &["--precious"] } else { &["--sticky", "carol"] };
        let id = cluster.put_ok("pool1", &[&file], args);
        stored.push((id[0].clone(), bytes));
    }
    // Admin changes, each acknowledged by the shell.
    let first = stored[0].0.clone();
    let out = cluster.admin(&format!("cd pool1\nrep set sticky -o=dave {first} on\npool disable -p2p-client\n"));
    out.assert_success("sticky and disable");
    let mode = info_field(&cluster.info("pool1"), "Mode").map(str::to_string);
    assert_eq!(mode.as_deref(), Some("disabled(p2p-client)"));
    // One more upload, large enough to still be in flight when the pool dies.
    let upload = Upload::start(&cluster, "inflight.dat");

    let status = cluster.kill9("pool1");
    assert_eq!(status.code(), None, "killed by a signal: {status}");
    let (acknowledged, big, seen_in_flight) = upload.finish();
    cluster.start("pool1");

    let listed = cluster.rep_ls("pool1");
    for (i, (id, bytes)) in stored.iter().enumerate() {
        let flags = match i {
            0 => PRECIOUS_STICKY,
            _ if i % 2 == 0 => PRECIOUS,
            _ => CACHED_STICKY,
        };
        assert!(
            listed.contains(&line(id, flags, bytes.len() as u64, "<unknown>")),
            "acknowledged replica {id} is missing or changed after kill -9:\n{listed:?}"
        );
        assert!(cluster.get_bytes("pool1", id) == *bytes, "{id}: different bytes after kill -9");
    }
    let out = cluster.admin(&format!("cd pool1\nrep sticky ls {first}\n"));
    out.assert_success("rep sticky ls");
    assert_eq!(out.stdout, "dave : never expires\n");
    let info = cluster.info("pool1");
    assert_eq!(info_field(&info, "Mode").map(str::to_string), mode, "{info}");

    let known: Vec<&str> = stored.iter().map(|(id, _)| id.as_str()).collect();
    check_no_partial_replica(&cluster, &known, acknowledged.as_deref(), &big);
    if seen_in_flight && acknowledged.is_none() && listed.len() == stored.len() {
        assert!(info.contains("removed 1 partial replica(s) left by interrupted transfers"), "{info}");
        cluster.wait_for_log_line(
            "pool1",
            &["WARN", "removing partial data left by an interrupted transfer"],
            LOG_WAIT,
        );
    }
}

#[test]
fn sigterm_during_an_upload_aborts_it_and_exits_cleanly() {
    let mut cluster = two_pools();
    let [plain, precious, sticky] = fill_pool1(&cluster);
    let upload = Upload::start(&cluster, "inflight.dat");

    let status = cluster.stop("pool1");
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean shutdown, also during an upload: {status}");
    let (acknowledged, big, _) = upload.finish();
    cluster.wait_for_log_line("pool1", &["pool stopped"], LOG_WAIT);
    assert!(!cluster.log("pool1").contains("grace period"), "the upload was aborted, not abandoned");
    cluster.start("pool1");

    check_no_partial_replica(&cluster, &[&plain, &precious, &sticky], acknowledged.as_deref(), &big);
    let info = cluster.info("pool1");
    assert!(
        info.contains("--- recovery at start ---\nclean: nothing to report"),
        "shutdown cleaned up itself:\n{info}"
    );
}

/// Connects to `addr`, sends `bytes` instead of a TLS handshake, and expects the pool to hang
/// up: reading (past any TLS alert) ends with EOF or a reset, not with a timeout.
fn expect_dropped(addr: std::net::SocketAddr, bytes: &[u8], what: &str) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{what}: connect: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set a read timeout");
    // A peer that stops reading may make our write fail with a reset; that is being dropped too.
    let _ = stream.write_all(bytes);
    let mut sink = Vec::new();
    match stream.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
        Err(e) => panic!("{what}: the pool did not hang up: {e}"),
    }
    let _ = stream.shutdown(Shutdown::Both);
}

#[test]
fn garbage_on_the_wire_is_dropped_and_the_pool_keeps_serving() {
    let mut cluster = two_pools();
    let spec = cluster.spec("pool1").clone();
    // A client that connects and says nothing does not block others meanwhile.
    let silent = TcpStream::connect(spec.admin).expect("connect a silent client");

    let mut huge = u32::MAX.to_be_bytes().to_vec();
    huge.extend_from_slice(&[0u8; 64]);
    let cases: [(&str, Vec<u8>); 5] = [
        ("an HTTP request", b"GET / HTTP/1.1\r\nHost: pool1\r\n\r\n".to_vec()),
        ("an oversized length prefix", huge),
        ("an empty frame", vec![0, 0, 0, 0]),
        ("a frame of an unknown kind", vec![0, 0, 0, 3, 9, 1, 2]),
        ("a message that does not decode", vec![0, 0, 0, 6, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
    ];
    for (what, bytes) in &cases {
        expect_dropped(spec.admin, bytes, &format!("admin port, {what}"));
        expect_dropped(spec.p2p, bytes, &format!("data port, {what}"));
    }
    let out = cluster.admin_args(&["--pool", "pool1", "-e", "info"], "");
    out.assert_success("info after the garbage");
    assert_eq!(info_field(&out.stdout, "Pool name"), Some("pool1"));
    assert!(cluster.is_running("pool1"), "pool1 is still running");
    // TLS refuses it before any frame is read (frames past TLS: `p2p/src/auth.rs` tests).
    cluster.wait_for_log_line("pool1", &["WARN", "refused connection", "corrupt message"], LOG_WAIT);
    drop(silent);

    // Data still flows after all that.
    let file = cluster.write_file("after-garbage.dat", &sample_bytes(10_000, 11));
    let id = cluster.put_ok("pool1", &[&file], &[]);
    assert_eq!(cluster.get_bytes("pool1", &id[0]), sample_bytes(10_000, 11));
}
