//! The built `tidepool-admin` binary, scripted through stdin and `-e`, against the fake pool
//! (`pool1`) and an address where nobody listens (`pool2`).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{FAIL_MESSAGE, cluster, dead_address};
use tidepool_p2p::tls::{Role, testing};
use tidepool_p2p::{ErrorCode, RemoteError};

/// A running fake pool and a directory holding `cluster.toml`, `ca.crt` and the shell's
/// `admin.admin.crt` and `.key`.
struct Setup {
    _server: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    pool1: SocketAddr,
    pool2: SocketAddr,
}

impl Setup {
    /// The shell's certificate is from the pool's CA, or from another one if `stranger`.
    fn new(stranger: bool) -> Setup {
        let server = tokio::runtime::Runtime::new().expect("server runtime");
        let pool = server.block_on(common::start("pool1"));
        let pool2 = dead_address();
        let dir = tempfile::tempdir().expect("temp dir");
        let file = cluster(&[("pool1", pool.addr, &["disk"]), ("pool2", pool2, &["disk", "tape"])]);
        std::fs::write(dir.path().join("cluster.toml"), file.to_toml()).expect("write cluster file");
        let ca = testing::authority();
        let issued = if stranger {
            common::stranger().0.issue(Role::Admin, "admin", 1)
        } else {
            ca.issue(Role::Admin, "admin", 1)
        };
        let issued = issued.expect("issue the shell's certificate");
        for (name, text) in
            [("ca.crt", ca.cert_pem()), ("admin.admin.crt", issued.cert_pem), ("admin.admin.key", issued.key_pem)]
        {
            std::fs::write(dir.path().join(name), text).expect("write a credentials file");
        }
        // Owner-only, as `tidepool ca issue` writes it: the shell warns about a key others can read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path().join("admin.admin.key"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod the key");
        Setup { _server: server, dir, pool1: pool.addr, pool2 }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs the shell with `args` after `--cluster`, feeding `stdin`. The credentials are found
    /// next to the cluster file; the history goes to the temp dir.
    fn shell(&self, args: &[&str], stdin: &str) -> Result {
        shell(&self.path("cluster.toml"), &self.path("history"), args, stdin)
    }
}

struct Result {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn shell(cluster: &Path, history: &Path, args: &[&str], stdin: &str) -> Result {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidepool-admin"))
        .arg("--cluster")
        .arg(cluster)
        .arg("--history")
        .arg(history)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tidepool-admin");
    let mut input = child.stdin.take().expect("child stdin");
    input.write_all(stdin.as_bytes()).expect("write the commands");
    drop(input);
    let Output { status, stdout, stderr } = child.wait_with_output().expect("wait for tidepool-admin");
    Result {
        code: status.code(),
        stdout: String::from_utf8(stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(stderr).expect("utf-8 stderr"),
    }
}

#[test]
fn scripted_session_prints_replies_and_fails_when_a_command_failed() {
    let setup = Setup::new(false);
    let commands = "# a comment\n\nls\ncd pool1\nhello  world\nfail\ncd ..\ncd pool2\ncd nosuch\nrep ls\n";
    let out = setup.shell(&[], commands);

    let expected_stdout = "pool1  online   groups: disk\n\
                           pool2  offline  groups: disk,tape  (connection refused)\n\
                           echo: hello  world\n";
    assert_eq!(out.stdout, expected_stdout, "stderr: {}", out.stderr);
    let failed = RemoteError::new(ErrorCode::InvalidArgument, FAIL_MESSAGE).render();
    let expected_stderr = format!(
        "{failed}\n\
         pool2 is offline: connection refused at {}\n\
         no pool named nosuch in the cluster file\n\
         not connected to a pool: `cd <pool>` first (`ls` lists them)\n",
        setup.pool2
    );
    assert_eq!(out.stderr, expected_stderr);
    assert_eq!(out.code, Some(1));
}

#[test]
fn execute_commands_run_in_order_and_succeed() {
    let setup = Setup::new(false);
    let out = setup.shell(&["-e", "cd pool1", "-e", "hello", "-e", "cd ..", "-e", "help"], "ignored\n");
    assert_eq!(out.stderr, "");
    assert!(out.stdout.starts_with("echo: hello\nlocal commands:\n  cd <pool>"), "{}", out.stdout);
    assert_eq!(out.code, Some(0));
    assert!(!out.stdout.contains("admin >"), "no prompts when scripted");

    let out = setup.shell(&["--pool", "pool1"], "help\nexit\nhello\n");
    assert_eq!(
        out.stdout,
        "echo: help\n(shell: `cd ..` back to (local), `cd <pool>` to another pool, `exit` to leave)\n"
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn a_certificate_from_another_ca_is_a_clear_authentication_error() {
    let setup = Setup::new(true);
    let out = setup.shell(&[], "cd pool1\n");
    let expected = format!("pool1 at {} refused the shell: authentication failed: ", setup.pool1);
    assert!(out.stderr.starts_with(&expected), "{}", out.stderr);
    assert!(out.stderr.contains("(rc=20001)\nhint: the peer's certificate was not accepted"), "{}", out.stderr);
    assert_eq!(out.stdout, "");
    assert_eq!(out.code, Some(1));
}

#[test]
fn unreadable_or_invalid_files_are_named() {
    let setup = Setup::new(false);
    let missing = setup.path("missing.toml");
    let out = shell(&missing, &setup.path("history"), &[], "");
    assert!(out.stderr.contains(&format!("cannot read the cluster file {}", missing.display())), "{}", out.stderr);
    assert_eq!(out.code, Some(2));

    std::fs::write(setup.path("bad.crt"), "not a certificate\n").expect("write a bad certificate");
    let (cert, key) = (setup.path("bad.crt"), setup.path("admin.admin.key"));
    let out =
        setup.shell(&["--cert", cert.to_str().expect("utf-8 path"), "--cert-key", key.to_str().expect("utf-8")], "");
    let expected = format!("{}: holds no certificate", setup.path("bad.crt").display());
    assert!(out.stderr.contains(&expected), "{}", out.stderr);
    assert_eq!(out.code, Some(2));
}
