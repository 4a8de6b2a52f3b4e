//! Running as a site service: what the daemon says about itself at start and in `info`
//! ([`Started`]), systemd's notification protocol ([`Notifier`]: readiness, the watchdog,
//! stopping), the open-file limit ([`raise_nofile_limit`]).
//!
//! Only `cli.rs` calls [`Notifier`] and [`raise_nofile_limit`]: the `sd-notify` crate reads
//! `NOTIFY_SOCKET` and `WATCHDOG_USEC` from the environment, which nothing else below the
//! binaries does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sd_notify::NotifyState;
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
    let decided = nofile_decision(limit.current.unwrap_or(unlimited), limit.maximum.unwrap_or(unlimited));
    if let NofileLimit::Raised { .. } = decided {
        setrlimit(Resource::Nofile, rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum })?;
    }
    Ok(decided)
}

/// What to do with the soft limit `soft` under the hard limit `hard` (`u64::MAX`:
/// unlimited): raise it to the hard limit unless it is there already.
pub fn nofile_decision(soft: u64, hard: u64) -> NofileLimit {
    if soft >= hard { NofileLimit::AlreadyAtMax(soft) } else { NofileLimit::Raised { from: soft, to: hard } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_open_file_limit_goes_up_to_the_hard_limit() {
        let max = u64::MAX;
        let rows = [
            // soft, hard, decision
            (1024, 524_288, NofileLimit::Raised { from: 1024, to: 524_288 }),
            (1024, max, NofileLimit::Raised { from: 1024, to: max }),
            (524_288, 524_288, NofileLimit::AlreadyAtMax(524_288)),
            (max, max, NofileLimit::AlreadyAtMax(max)),
            // Never lowered (the kernel does not allow soft above hard; nothing to do anyway).
            (4096, 1024, NofileLimit::AlreadyAtMax(4096)),
        ];
        for (soft, hard, want) in rows {
            assert_eq!(nofile_decision(soft, hard), want, "soft {soft}, hard {hard}");
        }
    }

    #[test]
    fn the_open_file_limit_ends_at_the_hard_limit() {
        let raised = raise_nofile_limit().unwrap();
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(limit.current, limit.maximum, "{raised:?}");
    }
}
