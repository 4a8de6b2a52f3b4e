//! Running as a site service: what the daemon says about itself at start and in `info`
//! ([`Started`]), systemd's notification protocol ([`Notifier`]: readiness, the watchdog,
//! stopping), the open-file limit ([`raise_nofile_limit`]), and what a SIGHUP found changed
//! in the cluster file ([`cluster_changes`]).
//!
//! Only `cli.rs` calls [`Notifier`] and [`raise_nofile_limit`]: the `sd-notify` crate reads
//! `NOTIFY_SOCKET` and `WATCHDOG_USEC` from the environment, which nothing else below the
//! binaries does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sd_notify::NotifyState;
use tidepool_p2p::cluster::{ClusterFile, PoolEntry};
use tidepool_p2p::model::EpochMillis;

/// The build's version, as `tidepool --version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The resolved facts of a running pool that `info` shows under `--- service ---`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    pub version: &'static str,
    /// When the pool started serving.
    pub at: EpochMillis,
    /// How long start-up took: opening the repository (restart recovery) to serving.
    pub startup: Duration,
    pub data_dir: PathBuf,
    /// The configured capacity, in bytes.
    pub capacity: u64,
    pub admin: SocketAddr,
    pub data: SocketAddr,
}

/// systemd's notification socket, if the service manager gave one (`Type=notify`); every
/// message is a no-op without `NOTIFY_SOCKET`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Notifier;

impl Notifier {
    /// `READY=1`: the repository is open and both listeners accept connections.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STOPPING=1`: shutdown began.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// How often to feed the watchdog: half of `WATCHDOG_USEC`, if systemd set it for us.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        let mut usec = 0;
        (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec / 2))
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::warn!("cannot notify the service manager: {e}");
        }
    }
}

/// What raising the open-file limit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NofileLimit {
    /// The soft limit was raised from `from` to the hard limit `to`.
    Raised { from: u64, to: u64 },
    /// The soft limit already was the hard limit (or unlimited).
    AlreadyAtMax(u64),
}

/// Raises the soft limit on open files to the hard limit (a pool keeps about two sockets per
/// peer, and the usual soft limit is 1024).
pub fn raise_nofile_limit() -> std::io::Result<NofileLimit> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let unlimited = u64::MAX;
    let (soft, hard) = (limit.current.unwrap_or(unlimited), limit.maximum.unwrap_or(unlimited));
    if soft >= hard {
        return Ok(NofileLimit::AlreadyAtMax(soft));
    }
    setrlimit(Resource::Nofile, rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum })?;
    Ok(NofileLimit::Raised { from: soft, to: hard })
}

/// One line per difference between the cluster file as it was and as it is now: pools added,
/// removed or changed (addresses, groups, tags, HSMs) and links added, removed or changed.
pub fn cluster_changes(old: &ClusterFile, new: &ClusterFile) -> Vec<String> {
    let mut lines = Vec::new();
    for p in &new.pools {
        match old.pool(&p.name) {
            None => lines.push(format!("pool {} added (p2p {}, admin {})", p.name, p.p2p, p.admin)),
            Some(before) if before != p => lines.push(format!("pool {} changed: {}", p.name, pool_diff(before, p))),
            Some(_) => {}
        }
    }
    for p in &old.pools {
        if new.pool(&p.name).is_none() {
            lines.push(format!("pool {} removed", p.name));
        }
    }
    for l in &new.links {
        match old.links.iter().find(|o| o.name == l.name) {
            None => lines.push(format!("link {} added (groups {})", l.name, l.groups.join(","))),
            Some(before) if before.groups != l.groups => lines.push(format!(
                "link {} changed: groups {} -> {}",
                l.name,
                before.groups.join(","),
                l.groups.join(",")
            )),
            Some(_) => {}
        }
    }
    for l in &old.links {
        if !new.links.iter().any(|n| n.name == l.name) {
            lines.push(format!("link {} removed", l.name));
        }
    }
    lines
}

fn pool_diff(a: &PoolEntry, b: &PoolEntry) -> String {
    let mut parts = Vec::new();
    if a.p2p != b.p2p {
        parts.push(format!("p2p {} -> {}", a.p2p, b.p2p));
    }
    if a.admin != b.admin {
        parts.push(format!("admin {} -> {}", a.admin, b.admin));
    }
    if a.groups != b.groups {
        parts.push(format!("groups {} -> {}", a.groups.join(","), b.groups.join(",")));
    }
    if a.tags != b.tags {
        parts.push(format!("tags {:?} -> {:?}", a.tags, b.tags));
    }
    if a.hsm != b.hsm {
        parts.push(format!("hsm {} -> {}", a.hsm.join(","), b.hsm.join(",")));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"
[[pool]]
name = "pool1"
p2p = "127.0.0.1:1001"
admin = "127.0.0.1:2001"
groups = ["disk"]

[[pool]]
name = "pool2"
p2p = "127.0.0.1:1002"
admin = "127.0.0.1:2002"
groups = ["disk"]

[[link]]
name = "l"
groups = ["disk"]
"#;

    #[test]
    fn cluster_changes_name_every_difference() {
        let old = ClusterFile::parse(BEFORE).unwrap();
        assert_eq!(cluster_changes(&old, &old), Vec::<String>::new());
        let new = ClusterFile::parse(
            &BEFORE
                .replace("127.0.0.1:1002", "127.0.0.1:1102")
                .replace("name = \"pool1\"", "name = \"pool3\"")
                .replace("name = \"l\"", "name = \"m\""),
        )
        .unwrap();
        assert_eq!(
            cluster_changes(&old, &new),
            [
                "pool pool3 added (p2p 127.0.0.1:1001, admin 127.0.0.1:2001)",
                "pool pool2 changed: p2p 127.0.0.1:1002 -> 127.0.0.1:1102",
                "pool pool1 removed",
                "link m added (groups disk)",
                "link l removed",
            ]
        );
    }

    #[test]
    fn the_open_file_limit_ends_at_the_hard_limit() {
        let raised = raise_nofile_limit().unwrap();
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(limit.current, limit.maximum, "{raised:?}");
    }
}
