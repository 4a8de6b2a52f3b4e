//! A private etcd for a test: Debian's `etcd` binary (package `etcd-server`) on a free
//! loopback port with its data in a temporary directory, stopped (and its data removed) when
//! dropped. Where no `etcd` binary is installed, [`Etcd::start`] prints a note and returns
//! `None`, and the test skips; CI installs the package (`.ci/run`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_ports;

/// How long etcd may take to answer its health check.
const READY: Duration = Duration::from_secs(30);

/// A running (or stopped) etcd of one test.
pub struct Etcd {
    binary: PathBuf,
    dir: tempfile::TempDir,
    client: SocketAddr,
    peer: SocketAddr,
    child: Option<Child>,
}

/// The `etcd` binary on the PATH (or in /usr/bin), if any.
pub fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]).map(|d| d.join("etcd")).find(|p| p.is_file())
}

impl Etcd {
    /// Starts etcd and waits until it is healthy; `None` (with a note on stderr) if no etcd
    /// binary is installed, unless `TIDEPOOL_REQUIRE_ETCD` is set (CI): then that fails the test.
    pub fn start(test: &str) -> Option<Etcd> {
        let Some(binary) = binary() else {
            assert!(
                std::env::var_os("TIDEPOOL_REQUIRE_ETCD").is_none(),
                "{test}: no etcd binary here, and TIDEPOOL_REQUIRE_ETCD is set (Debian: apt-get install etcd-server)"
            );
            eprintln!("SKIPPED {test}: no etcd binary here (Debian: apt-get install etcd-server)");
            return None;
        };
        let dir = tempfile::Builder::new().prefix("tidepool-test-etcd-").tempdir().expect("create a temp dir");
        let ports = free_ports(2);
        let mut etcd = Etcd { binary, dir, client: ports[0], peer: ports[1], child: None };
        etcd.restart();
        Some(etcd)
    }

    /// The client URL (`http://127.0.0.1:port`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    /// The process id of the running etcd (benchmarks read its CPU and memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts it again after [`Etcd::stop`], on the same port and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd is running");
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("create etcd's log");
        let (client, peer) = (format!("http://{}", self.client), format!("http://{}", self.peer));
        let child = Command::new(&self.binary)
            .arg("--name=tidepool-test")
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=tidepool-test={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + READY;
        while !self.healthy() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("etcd exited at start ({status}); its log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "etcd not healthy within {READY:?}; its log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it (SIGKILL: as a crash would), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Writes `value` under `key` (through etcd's JSON gateway), as a hand edit or another
    /// program would.
    pub fn put(&self, key: &str, value: &[u8]) {
        let body = format!(r#"{{"key":"{}","value":"{}"}}"#, base64(key.as_bytes()), base64(value));
        self.post("/v3/kv/put", &body);
    }

    /// Deletes `key` (through etcd's JSON gateway).
    pub fn delete(&self, key: &str) {
        self.post("/v3/kv/deleterange", &format!(r#"{{"key":"{}"}}"#, base64(key.as_bytes())));
    }

    fn post(&self, path: &str, body: &str) {
        let mut s = TcpStream::connect_timeout(&self.client, Duration::from_secs(2)).expect("reach etcd");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("set a timeout");
        let request = format!(
            "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).expect("send to etcd");
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"), "etcd {path}: {reply}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// `GET /health` answers `"health":"true"`.
    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.client, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n").is_err() {
            return false;
        }
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply.contains("\"health\":\"true\"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_pads() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"/t/pool/x"), "L3QvcG9vbC94");
    }
}
