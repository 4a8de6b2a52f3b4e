//! The protected channel and the roles (`docs/security.md`), against real pool daemons: each
//! role refused for what it may not do, certificates from a wrong CA, expired or denied
//! refused, a byte altered in flight breaks the connection and changes nothing, and a change of
//! CA with both anchors trusted for a while.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use tidepool_p2p::ErrorCode;
use tidepool_p2p::auth::Service;
use tidepool_p2p::conn::Connection;
use tidepool_p2p::frame::WireError;
use tidepool_p2p::message::{DataReply, DataRequest, MigrationReply, MigrationRequest};
use tidepool_p2p::tls::{Authority, Credentials, Role, TlsFiles};
use tidepool_p2p::{PnfsId, TransferId};
use tidepool_tests::{Cluster, info_field, rc, sample_bytes, two_pools};

/// How long a test waits for a log line describing something it has already seen happen.
const LOG_WAIT: Duration = Duration::from_secs(10);

fn credentials(cluster: &Cluster, role: Role, name: &str) -> Credentials {
    Credentials::load(&TlsFiles::in_dir(cluster.dir(), role, name)).expect("load credentials")
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime").block_on(f)
}

/// The error code of a refusal in the handshake.
fn refused_code(result: Result<Connection, WireError>) -> Option<ErrorCode> {
    match result {
        Err(WireError::Remote(e)) => e.code(),
        Err(e) => panic!("expected a refusal from the pool, got {e}"),
        Ok(_) => panic!("expected a refusal, the pool admitted the connection"),
    }
}

#[test]
fn a_client_certificate_may_not_run_admin_commands() {
    let cluster = two_pools();
    let client = cluster.path("client.client.crt");
    let out = cluster.admin_with_cert(&client, "cd pool1\nrep ls\npool disable -strict\n");
    out.assert_code(1, "the shell with a client certificate");
    assert!(out.stderr.contains("client:client may not run admin commands"), "{out}");
    assert!(out.stderr.contains("(rc=20007)"), "{out}");
    let refused = cluster.wait_for_log_line("pool1", &["WARN", "refused connection", "client:client"], LOG_WAIT);
    assert!(refused.contains("Admin"), "the warning names the endpoint: {refused}");
    // Nothing changed: the pool is still enabled.
    let info = cluster.info("pool1");
    assert!(info.contains("enabled"), "{info}");
}

#[test]
fn a_client_or_an_admin_may_not_make_pool_requests() {
    let cluster = two_pools();
    let data = cluster.spec("pool1").p2p;
    let client = credentials(&cluster, Role::Client, "client");
    let admin = credentials(&cluster, Role::Admin, "admin");
    block_on(async {
        // A client reaches the data endpoint, but may not fetch or ask for migration.
        let mut conn = Connection::open(data, &client, "pool2", Service::Data).await.expect("a client connects");
        let fetch = DataRequest::Fetch {
            transfer: TransferId(1),
            pnfsid: PnfsId::from_random([3; 16]),
            force_source_mode: true,
        };
        conn.send(&fetch).await.unwrap();
        match conn.recv::<DataReply>().await.unwrap() {
            DataReply::Error(e) => assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e:?}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        conn.send(&DataRequest::Migration(MigrationRequest::PoolInfo { job: None })).await.unwrap();
        match conn.recv::<DataReply>().await.unwrap() {
            DataReply::Migration(MigrationReply::Error(e)) => assert_eq!(e.code(), Some(ErrorCode::Forbidden)),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // An admin certificate does not reach the data endpoint at all.
        let refused = Connection::open(data, &admin, "pool2", Service::Data).await;
        assert_eq!(refused_code(refused), Some(ErrorCode::Forbidden));
    });
    cluster.wait_for_log_line("pool1", &["WARN", "refused request", "client:client", "pool-to-pool"], LOG_WAIT);
    cluster.wait_for_log_line("pool1", &["WARN", "refused connection", "admin:admin", "Data"], LOG_WAIT);
    assert!(cluster.rep_ls("pool1").is_empty());
}

#[test]
fn a_pool_speaks_only_under_its_own_name_and_only_if_the_cluster_file_lists_it() {
    let cluster = two_pools();
    let data = cluster.spec("pool1").p2p;
    let dir = cluster.dir().to_str().unwrap().to_string();
    cluster.issue("pool", "pool9", &dir);
    let pool2 = credentials(&cluster, Role::Pool, "pool2");
    let pool9 = credentials(&cluster, Role::Pool, "pool9");
    block_on(async {
        let claimed = Connection::open(data, &pool2, "pool3", Service::Data).await;
        assert_eq!(refused_code(claimed), Some(ErrorCode::Forbidden));
        let unknown = Connection::open(data, &pool9, "pool9", Service::Data).await;
        assert_eq!(refused_code(unknown), Some(ErrorCode::Forbidden));
        // Under its own name, pool2 is answered.
        let mut conn = Connection::open(data, &pool2, "pool2", Service::Data).await.expect("pool2 connects");
        conn.send(&DataRequest::Migration(MigrationRequest::PoolInfo { job: None })).await.unwrap();
        match conn.recv::<DataReply>().await.unwrap() {
            DataReply::Migration(MigrationReply::PoolInfo(_)) => {}
            other => panic!("expected pool1's cost, got {other:?}"),
        }
    });
    cluster.wait_for_log_line("pool1", &["WARN", "refused connection", "pool:pool2", "speak as pool pool3"], LOG_WAIT);
    cluster.wait_for_log_line(
        "pool1",
        &["WARN", "refused connection", "pool:pool9", "not in the cluster file"],
        LOG_WAIT,
    );
}

/// Writes a certificate for `admin:<name>` from the cluster's CA valid only between the two
/// offsets from now (in days), and returns its path.
fn admin_cert_between(cluster: &Cluster, name: &str, from_days: i64, to_days: i64) -> PathBuf {
    let read = |f: &str| std::fs::read_to_string(cluster.path(f)).unwrap();
    let ca = Authority::from_pem(&read("ca.crt"), &read("ca.key")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let issued = ca
        .issue_between(Role::Admin, name, now + time::Duration::days(from_days), now + time::Duration::days(to_days))
        .unwrap();
    std::fs::write(cluster.path(&format!("{name}.admin.key")), issued.key_pem).unwrap();
    cluster.write_file(&format!("{name}.admin.crt"), issued.cert_pem.as_bytes())
}

#[test]
fn a_wrong_ca_an_expired_certificate_and_a_denied_name_are_refused() {
    let mut cluster = Cluster::new(&[("pool1", &["disk"])]);
    cluster.append_config("pool1", "[tls]\ndeny = [\"eve\"]\n");
    cluster.start("pool1");
    let dir = cluster.dir().to_str().unwrap().to_string();
    let script = "cd pool1\ninfo\n";

    let foreign = cluster.foreign_cert("admin", "admin");
    let out = cluster.admin_with_cert(&foreign, script);
    out.assert_code(1, "a certificate from another CA");
    assert!(out.stderr.contains("authentication failed"), "{out}");
    cluster.wait_for_log_line(
        "pool1",
        &["WARN", "refused connection", "authentication failed", "UnknownIssuer"],
        LOG_WAIT,
    );

    let expired = admin_cert_between(&cluster, "old", -30, -1);
    let out = cluster.admin_with_cert(&expired, script);
    out.assert_code(1, "an expired certificate");
    assert!(out.stderr.contains("authentication failed"), "{out}");
    cluster.wait_for_log_line(
        "pool1",
        &["WARN", "refused connection", "authentication failed", "certificate expired"],
        LOG_WAIT,
    );

    cluster.issue("admin", "eve", &dir);
    let out = cluster.admin_with_cert(&cluster.path("eve.admin.crt"), script);
    out.assert_code(1, "a denied name");
    cluster.wait_for_log_line("pool1", &["WARN", "refused connection", "admin:eve is on the deny list"], LOG_WAIT);

    // The cluster's own admin still gets in, and the audit line names it.
    let info = cluster.info("pool1");
    assert!(info.contains("Certificate    : pool:pool1, valid until"), "{info}");
    cluster.wait_for_log_line("pool1", &["admin command", "identity=admin:admin", "command=info"], LOG_WAIT);
}

/// Forwards one connection from a free loopback port to `to`, flipping one bit of the byte at
/// `offset` of what the client sends. Returns the port's address.
fn flipping_proxy(to: SocketAddr, offset: usize) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let flipped = Arc::new(AtomicBool::new(false));
    let done = flipped.clone();
    thread::spawn(move || {
        let Ok((mut client, _)) = listener.accept() else { return };
        let mut pool = TcpStream::connect(to).unwrap();
        let (mut client_r, mut pool_w) = (client.try_clone().unwrap(), pool.try_clone().unwrap());
        thread::spawn(move || {
            let _ = std::io::copy(&mut pool, &mut client);
        });
        let mut seen = 0usize;
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = client_r.read(&mut buf) {
            if n == 0 {
                break;
            }
            if (seen..seen + n).contains(&offset) {
                buf[offset - seen] ^= 0x10;
                done.store(true, Ordering::SeqCst);
            }
            seen += n;
            if pool_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = pool_w.shutdown(std::net::Shutdown::Both);
    });
    (addr, flipped)
}

#[test]
fn a_byte_altered_in_flight_breaks_the_connection_and_nothing_is_stored() {
    let cluster = two_pools();
    // A cluster file that sends pool1's data through the proxy; the credentials beside it.
    let (proxy, flipped) = flipping_proxy(cluster.spec("pool1").p2p, 40_000);
    let text = std::fs::read_to_string(cluster.cluster_file()).unwrap();
    let real = cluster.spec("pool1").p2p.to_string();
    std::fs::write(cluster.path("proxied.toml"), text.replace(&real, &proxy.to_string())).unwrap();
    let file = cluster.write_file("upload.dat", &sample_bytes(256 * 1024, 5));
    let out = put_through(&cluster.path("proxied.toml"), &file);
    assert!(flipped.load(Ordering::SeqCst), "the proxy altered a byte");
    assert_ne!(out.status.code(), Some(0), "the put failed: {}", String::from_utf8_lossy(&out.stderr));
    cluster.wait_for_log_line("pool1", &["WARN", "client:client", "cannot decrypt"], LOG_WAIT);
    assert!(cluster.rep_ls("pool1").is_empty(), "nothing was stored");
    // The same upload without the proxy is stored.
    cluster.put_ok("pool1", &[&file], &[]);
    assert_eq!(cluster.rep_ls("pool1").len(), 1);
}

fn put_through(cluster_file: &Path, file: &Path) -> std::process::Output {
    std::process::Command::new(&tidepool_tests::binaries().tidepool)
        .arg("put")
        .arg("--cluster")
        .arg(cluster_file)
        .args(["--pool", "pool1", "--"])
        .arg(file)
        .output()
        .expect("run tidepool put")
}

#[test]
fn old_and_new_trust_anchors_are_both_accepted_during_a_change_of_ca_and_only_the_new_after() {
    let mut cluster = Cluster::new(&[("pool1", &["disk"])]);
    // A new CA, with a new certificate for the pool and for an admin.
    let new_admin = cluster.foreign_cert("admin", "admin");
    let new_pool = cluster.foreign_cert("pool", "pool1");
    let new_ca = cluster.path("other-ca/ca.crt");
    cluster.append_config("pool1", "[tls]\ntrust = [\"ca.crt\", \"other-ca/ca.crt\"]\n");
    cluster.start("pool1");
    let script = "cd pool1\ninfo\n";
    cluster.admin(script).assert_success("an admin of the old CA during the change");
    // The new admin trusts both anchors too: the pool's certificate is still the old CA's.
    let (new_ca_text, old_ca) = (new_ca.to_str().unwrap(), cluster.path("ca.crt"));
    let both = ["--cert", new_admin.to_str().unwrap(), "--trust", old_ca.to_str().unwrap(), "--trust", new_ca_text];
    cluster.admin_args(&both, script).assert_success("an admin of the new CA during the change");
    // A session of the old CA's admin kept open across the end of the change.
    let kept = OpenShell::start(&cluster, "kept-history", &[]);

    // The change is over: the pool's own certificate from the new CA, only the new anchor;
    // reloaded with SIGHUP, without a restart.
    let config = std::fs::read_to_string(cluster.config_path("pool1")).unwrap();
    let config = config.replace(
        "[tls]\ntrust = [\"ca.crt\", \"other-ca/ca.crt\"]\n",
        &format!("[tls]\ncert = \"{}\"\ntrust = [\"other-ca/ca.crt\"]\n", new_pool.display()),
    );
    std::fs::write(cluster.config_path("pool1"), config).unwrap();
    cluster.hangup("pool1");
    cluster.wait_for_log_line("pool1", &["SIGHUP: credentials reloaded"], LOG_WAIT);
    let out = cluster.admin(script);
    out.assert_code(1, "an admin of the old CA after the change");
    assert!(out.stderr.contains("authentication failed"), "{out}");
    let only_new = cluster.admin_args(&["--cert", new_admin.to_str().unwrap(), "--trust", new_ca_text], script);
    only_new.assert_success("an admin of the new CA after the change");
    // The session opened before keeps no right a new one would not get.
    let (code, stderr) = kept.info_again();
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("the certificate of admin:admin is no longer accepted"), "{stderr}");
    cluster.wait_for_log_line("pool1", &["WARN", "admin:admin", "its certificate is no longer accepted"], LOG_WAIT);
}

/// Writes a certificate for `pool:<name>` from the CA in `ca_dir` (relative to the cluster's
/// folder) valid between the two offsets from now (in days), as `<file>.crt` and `<file>.key`
/// in the cluster's folder; returns the certificate's path.
fn pool_cert_between(cluster: &Cluster, ca_dir: &str, name: &str, file: &str, days: (i64, i64)) -> PathBuf {
    let read = |f: &str| std::fs::read_to_string(cluster.path(&format!("{ca_dir}{f}"))).unwrap();
    let ca = Authority::from_pem(&read("ca.crt"), &read("ca.key")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let issued = ca
        .issue_between(Role::Pool, name, now + time::Duration::days(days.0), now + time::Duration::days(days.1))
        .unwrap();
    std::fs::write(cluster.path(&format!("{file}.key")), issued.key_pem).unwrap();
    cluster.write_file(&format!("{file}.crt"), issued.cert_pem.as_bytes())
}

/// Replaces pool1's `[tls]` table (the last part of its config) with `tls`.
fn set_tls(cluster: &Cluster, pool: &str, tls: &str) {
    let path = cluster.config_path(pool);
    let config = std::fs::read_to_string(&path).unwrap();
    let base = config.split("\n[tls]\n").next().unwrap().to_string();
    std::fs::write(&path, format!("{}\n[tls]\n{tls}", base.trim_end())).unwrap();
}

/// `tls reload`: the credentials read again and put in force as SIGHUP does, with the answer
/// saying what changed; a certificate that does not chain to the new trust anchors, or has
/// expired, is refused (rc=20010) and the credentials in force stay.
#[test]
fn tls_reload_says_what_changed_and_keeps_the_credentials_in_force_when_it_refuses() {
    let mut cluster = Cluster::new(&[("pool1", &["disk"])]);
    set_tls(&cluster, "pool1", "deny = [\"bob\"]\n");
    cluster.start("pool1");
    let before = info_field(&cluster.info("pool1"), "Certificate").unwrap().to_string();

    // A renewed certificate (same CA, 400 days), a deny list changed.
    let renewed = pool_cert_between(&cluster, "", "pool1", "pool1-renewed", (0, 400));
    set_tls(&cluster, "pool1", &format!("cert = \"{}\"\ndeny = [\"eve\"]\n", renewed.display()));
    let out = cluster.admin("cd pool1\ntls reload\n");
    out.assert_success("tls reload of a renewed certificate");
    for line in ["credentials reloaded", "identity: pool:pool1", "trust anchors: 1 (unchanged)"] {
        assert!(out.stdout.contains(line), "{line}: {out}");
    }
    assert!(out.stdout.contains("deny list: added eve; removed bob"), "{out}");
    let after = cluster.info("pool1");
    let after = info_field(&after, "Certificate").unwrap();
    assert!(after.contains("(399 days)") || after.contains("(400 days)"), "{after}");
    assert!(out.stdout.contains(&format!("expiry: {} -> ", &before[before.find("until ").unwrap() + 6..][..10])));
    cluster.wait_for_log_line("pool1", &["tls reload: credentials reloaded", "deny list: added eve"], LOG_WAIT);

    // A certificate from a new CA while only the old anchor is trusted: refused.
    let foreign = cluster.foreign_cert("pool", "pool1");
    set_tls(&cluster, "pool1", &format!("cert = \"{}\"\n", foreign.display()));
    let out = cluster.admin("cd pool1\ntls reload\n");
    out.assert_code(1, "tls reload of a certificate of a CA not trusted");
    assert!(out.stderr.contains("does not chain to any of the new trust anchors"), "{out}");
    assert!(out.stderr.contains(&rc(ErrorCode::CredentialsRefused)), "{out}");
    cluster.wait_for_log_line("pool1", &["ERROR", "tls reload:", "does not chain"], LOG_WAIT);

    // The same certificate with the new anchor added in the same reload: accepted.
    set_tls(
        &cluster,
        "pool1",
        &format!("cert = \"{}\"\ntrust = [\"ca.crt\", \"other-ca/ca.crt\"]\n", foreign.display()),
    );
    let out = cluster.admin_args(
        &[
            "--trust",
            cluster.path("ca.crt").to_str().unwrap(),
            "--trust",
            cluster.path("other-ca/ca.crt").to_str().unwrap(),
        ],
        "cd pool1\ntls reload\n",
    );
    out.assert_success("tls reload with the new anchor and the new certificate together");
    assert!(out.stdout.contains("trust anchors: 1 -> 2"), "{out}");
}

/// SIGHUP and `tls reload` find an expired certificate: both keep the credentials in force
/// (the pool goes on serving with them) and say why.
#[test]
fn a_reload_keeps_the_credentials_in_force_when_the_new_certificate_has_expired() {
    let mut cluster = Cluster::new(&[("pool1", &["disk"])]);
    cluster.start("pool1");
    let before = info_field(&cluster.info("pool1"), "Certificate").unwrap().to_string();
    let expired = pool_cert_between(&cluster, "", "pool1", "pool1-expired", (-30, -1));
    set_tls(&cluster, "pool1", &format!("cert = \"{}\"\n", expired.display()));

    let out = cluster.admin("cd pool1\ntls reload\n");
    out.assert_code(1, "tls reload of an expired certificate");
    assert!(out.stderr.contains("the new certificate of pool:pool1 expired on"), "{out}");
    assert!(out.stderr.contains("the credentials in force are unchanged"), "{out}");
    assert!(out.stderr.contains(&rc(ErrorCode::CredentialsRefused)), "{out}");

    cluster.hangup("pool1");
    cluster.wait_for_log_line(
        "pool1",
        &["ERROR", "SIGHUP: the new certificate of pool:pool1 expired on", "the credentials in force are unchanged"],
        LOG_WAIT,
    );
    // Still served with the old certificate (its days left may have ticked down meanwhile).
    let until = |line: &str| line.split(" (").next().unwrap_or_default().to_string();
    assert_eq!(info_field(&cluster.info("pool1"), "Certificate").map(until), Some(until(&before)));
}

/// An admin shell kept open (`tidepool-admin` reading its commands from a pipe), to see what
/// becomes of an open connection when the pool's credentials change.
struct OpenShell {
    child: std::process::Child,
    input: Option<std::process::ChildStdin>,
    seen: Arc<std::sync::Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl OpenShell {
    /// Starts the shell with `args` (its credentials) and runs `cd pool1` and `info`.
    fn start(cluster: &Cluster, history: &str, args: &[&str]) -> OpenShell {
        let mut child = std::process::Command::new(&tidepool_tests::binaries().admin)
            .arg("--cluster")
            .arg(cluster.cluster_file())
            .arg("--history")
            .arg(cluster.path(history))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start tidepool-admin");
        let input = child.stdin.take();
        let mut stdout = child.stdout.take().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = seen.clone();
        let reader = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut shell = OpenShell { child, input, seen, reader: Some(reader) };
        shell.input.as_mut().unwrap().write_all(b"cd pool1\ninfo\n").unwrap();
        tidepool_tests::wait_until("the shell's first info", LOG_WAIT, || {
            shell.seen.lock().unwrap().contains("Pool name").then_some(())
        });
        shell
    }

    /// Sends one more `info` and ends the input; the shell's exit code and standard error.
    fn info_again(mut self) -> (Option<i32>, String) {
        let mut input = self.input.take().unwrap();
        input.write_all(b"info\n").unwrap();
        drop(input);
        let mut stderr = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        let status = self.child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        assert_eq!(
            self.seen.lock().unwrap().matches("Pool name").count(),
            1,
            "only the info before the reload was answered"
        );
        (status.code(), stderr)
    }
}

/// An admin shell kept open under `eve`, and a reload (SIGHUP or `tls reload`) that puts eve
/// on the deny list: the shell's next command is refused and its connection closed.
fn a_denied_name_loses_its_open_session(reload: &str) {
    let mut cluster = Cluster::new(&[("pool1", &["disk"])]);
    cluster.start("pool1");
    let dir = cluster.dir().to_str().unwrap().to_string();
    cluster.issue("admin", "eve", &dir);
    let shell = OpenShell::start(&cluster, "eve-history", &["--cert", cluster.path("eve.admin.crt").to_str().unwrap()]);

    set_tls(&cluster, "pool1", "deny = [\"eve\"]\n");
    match reload {
        "SIGHUP" => {
            cluster.hangup("pool1");
            cluster.wait_for_log_line("pool1", &["SIGHUP: credentials reloaded", "deny list: added eve"], LOG_WAIT);
        }
        _ => {
            let out = cluster.admin("cd pool1\ntls reload\n");
            out.assert_success("tls reload");
            assert!(out.stdout.contains("deny list: added eve"), "{out}");
        }
    }
    let (code, stderr) = shell.info_again();
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("admin:eve is on the deny list"), "{stderr}");
    cluster.wait_for_log_line(
        "pool1",
        &["WARN", "admin:eve", "closed a connection: its name is now on the deny list"],
        LOG_WAIT,
    );
}

#[test]
fn a_denied_name_loses_its_open_admin_session_at_its_next_command_after_sighup() {
    a_denied_name_loses_its_open_session("SIGHUP");
}

#[test]
fn a_denied_name_loses_its_open_admin_session_at_its_next_command_after_tls_reload() {
    a_denied_name_loses_its_open_session("tls reload");
}

/// `tidepool put|get` against a cluster file whose address for pool1 is pool2's: the pool
/// that answers is not the one meant, so nothing is stored or read.
#[test]
fn put_and_get_refuse_when_another_pool_answers() {
    let cluster = two_pools();
    let file = cluster.write_file("upload.dat", &sample_bytes(4096, 7));
    let stored = cluster.put_ok("pool2", &[&file], &[]);
    let text = std::fs::read_to_string(cluster.cluster_file()).unwrap();
    let (one, two) = (cluster.spec("pool1").p2p.to_string(), cluster.spec("pool2").p2p.to_string());
    let swapped = text.replace(&one, "@1").replace(&two, &one).replace("@1", &two);
    std::fs::write(cluster.path("swapped.toml"), swapped).unwrap();

    let out = put_through(&cluster.path("swapped.toml"), &file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&format!("pool2 answered at {two}, not pool1")), "{stderr}");
    assert!(cluster.rep_ls("pool1").is_empty());
    assert_eq!(cluster.rep_ls("pool2").len(), 1, "nothing more stored in pool2");

    let target = cluster.path("got.dat");
    let out = std::process::Command::new(&tidepool_tests::binaries().tidepool)
        .arg("get")
        .arg("--cluster")
        .arg(cluster.path("swapped.toml"))
        .args(["--pool", "pool1", &stored[0]])
        .arg(&target)
        .output()
        .expect("run tidepool get");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&format!("pool2 answered at {two}, not pool1")), "{stderr}");
    assert!(!target.exists(), "nothing was read");
}

/// A private key file its group or others may read: the pool warns in its log at start and at
/// each reload, the shell and `tidepool put` on stderr; each goes on working.
#[test]
fn a_key_file_others_can_read_is_warned_about_by_the_pool_the_shell_and_put() {
    use std::os::unix::fs::PermissionsExt;
    let mut cluster = Cluster::new(&[("pool1", &["disk"])]);
    let admin_key = cluster.path("admin.admin.key");
    for key in ["pool1.pool.key", "admin.admin.key", "client.client.key"] {
        std::fs::set_permissions(cluster.path(key), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    cluster.start("pool1");
    let needle = "private key file";
    cluster.wait_for_log_line("pool1", &["WARN", needle, "pool1.pool.key", "readable by group or others"], LOG_WAIT);
    cluster.hangup("pool1");
    cluster.wait_for_log_line("pool1", &["SIGHUP: credentials reloaded"], LOG_WAIT);
    let warned = cluster.log("pool1").lines().filter(|l| l.contains(needle) && l.contains("pool1.pool.key")).count();
    assert_eq!(warned, 2, "at start and at the reload");

    let out = cluster.admin("cd pool1\ninfo\n");
    out.assert_success("the shell with a key others can read");
    assert!(out.stderr.contains("warning: private key file") && out.stderr.contains("admin.admin.key"), "{out}");
    let file = cluster.write_file("upload.dat", &sample_bytes(1000, 3));
    let out = cluster.put("pool1", &[&file], &[]);
    out.assert_success("put with a key others can read");
    assert!(out.stderr.contains("warning: private key file") && out.stderr.contains("client.client.key"), "{out}");

    // Owner-only: no warning.
    std::fs::set_permissions(&admin_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = cluster.admin("cd pool1\ninfo\n");
    assert!(!out.stderr.contains("private key file"), "{out}");
}
