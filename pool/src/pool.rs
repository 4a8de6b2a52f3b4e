//! The pool's own state, which the endpoints, the transfers, the migration adapter and the
//! admin commands share: its name, its repository, its mode, its cluster view and what recovery
//! found at start. The transfers and the migration module are owned by the root object
//! (`node.rs`), not by the pool.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tidepool_p2p::cluster::ClusterFile;
use tidepool_p2p::membership::Membership;
use tidepool_p2p::model::{EpochMillis, PoolMode};
use tidepool_p2p::{ErrorCode, PoolName, RemoteError};

use tidepool_p2p::tls::Credentials;
use tokio_util::task::TaskTracker;

use crate::process::logging::LogControl;
use crate::process::service::Started;
use crate::repository::{Recovery, RepoError, Repository};

/// The current time in milliseconds since the epoch.
pub fn now_ms() -> EpochMillis {
    chrono::Utc::now().timestamp_millis()
}

/// A pool mode with the operator's reason (docs/dcache-compatibility.md#replicas).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModeState {
    pub mode: PoolMode,
    pub error_code: i32,
    pub message: String,
}

impl ModeState {
    pub fn enabled() -> Self {
        ModeState { mode: PoolMode::ENABLED, error_code: 0, message: String::new() }
    }

    /// The persisted form: `v1 <bits> <code> <message>`.
    fn encode(&self) -> String {
        format!("v1 {} {} {}", self.mode.bits(), self.error_code, self.message)
    }

    fn decode(text: &str) -> Option<ModeState> {
        let rest = text.strip_prefix("v1 ")?;
        let mut parts = rest.splitn(3, ' ');
        let bits = parts.next()?.parse().ok()?;
        let error_code = parts.next()?.parse().ok()?;
        let message = parts.next().unwrap_or("").to_string();
        Some(ModeState { mode: PoolMode::from_bits(bits), error_code, message })
    }
}

const MODE_KEY: &str = "pool-mode";

/// Something a pool mode forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// A client writes a new replica.
    Store,
    /// A client (or a pool) reads a replica.
    Fetch,
    /// Another pool sends us a replica.
    P2pClient,
}

pub struct Pool {
    pub name: PoolName,
    pub repo: Arc<Repository>,
    /// The membership in force: pools, groups, links, liveness, costs (the cluster file, which
    /// SIGHUP and `psu reload` read again, or etcd).
    pub cluster: Arc<Membership>,
    /// This pool's certificate, key and trust anchors: every connection it accepts or opens
    /// (`docs/security.md`); SIGHUP reloads them in place.
    pub credentials: Credentials,
    pub recovery: Recovery,
    /// Owners starting with this are pins.
    pub pin_prefix: String,
    /// The runtime that admin commands (which run on blocking threads) start async work on;
    /// `None` for a pool used without a daemon (the benchmark harness).
    pub runtime: Option<tokio::runtime::Handle>,
    /// Background work started by admin commands (transfers queued with `pp get file`);
    /// shutdown waits for it.
    pub tasks: TaskTracker,
    mode: Mutex<ModeState>,
    /// The version, resolved config and start time `info` shows; set when the pool starts
    /// serving (`daemon::Opened::serve`).
    pub started: OnceLock<Started>,
    /// Where the Prometheus page is served (`[metrics] listen`), once it is.
    pub metrics_addr: OnceLock<std::net::SocketAddr>,
    /// etcd, where the membership comes from it (the `psu` commands change it); set at start.
    pub etcd: OnceLock<tidepool_etcd::Etcd>,
    /// The run-time log filter (`log set`, `log ls`); set by the `tidepool pool` command, not
    /// for pools that share a process (the demo, tests).
    pub log: OnceLock<Arc<LogControl>>,
    /// Where `tls reload` reads the credentials again (the config's `[tls]`); set by the
    /// `tidepool pool` command, not for pools that share a process.
    pub credential_source: OnceLock<Arc<dyn crate::credentials::CredentialSource>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Pool {
    /// Wraps an opened repository; the saved pool mode is restored (a pool disabled before a
    /// restart stays disabled).
    pub fn new(
        name: PoolName,
        repo: Arc<Repository>,
        recovery: Recovery,
        cluster: ClusterFile,
        credentials: Credentials,
        pin_prefix: String,
    ) -> Result<Pool, RepoError> {
        let mode = match repo.setting(MODE_KEY)? {
            None => ModeState::enabled(),
            Some(bytes) => match std::str::from_utf8(&bytes).ok().and_then(ModeState::decode) {
                Some(m) => m,
                None => {
                    tracing::error!("saved pool mode is unreadable; starting disabled(strict) to be safe");
                    ModeState {
                        mode: PoolMode::disabled(PoolMode::STRICT),
                        error_code: 1,
                        message: "saved pool mode was unreadable".into(),
                    }
                }
            },
        };
        Ok(Pool {
            name,
            repo,
            cluster: Membership::file(cluster),
            credentials,
            recovery,
            pin_prefix,
            runtime: tokio::runtime::Handle::try_current().ok(),
            tasks: TaskTracker::new(),
            mode: Mutex::new(mode),
            started: OnceLock::new(),
            metrics_addr: OnceLock::new(),
            log: OnceLock::new(),
            etcd: OnceLock::new(),
            credential_source: OnceLock::new(),
        })
    }

    pub fn mode(&self) -> ModeState {
        self.mode.lock().clone()
    }

    /// Sets and persists the mode.
    pub fn set_mode(&self, state: ModeState) -> Result<(), RepoError> {
        self.repo.put_setting(MODE_KEY, state.encode().as_bytes())?;
        tracing::info!(mode = %state.mode, "pool mode changed");
        *self.mode.lock() = state;
        Ok(())
    }

    /// Refuses `activity` if the mode forbids it.
    pub fn check_mode(&self, activity: Activity, force_source_mode: bool) -> Result<(), ModeRefused> {
        let m = self.mode();
        let bit = match activity {
            Activity::Store => PoolMode::STORE,
            Activity::Fetch => PoolMode::FETCH,
            Activity::P2pClient => PoolMode::P2P_CLIENT,
        };
        let forced = force_source_mode && matches!(activity, Activity::Fetch);
        if !m.mode.is_enabled() && m.mode.bits() & bit != 0 && !forced {
            return Err(ModeRefused {
                pool: self.name.clone(),
                activity,
                error_code: m.error_code,
                message: m.message.clone(),
            });
        }
        Ok(())
    }
}

impl Activity {
    /// The word of the mode that forbids it (`pool disable -fetch`, ...).
    fn word(self) -> &'static str {
        match self {
            Activity::Store => "store",
            Activity::Fetch => "fetch",
            Activity::P2pClient => "p2p-client",
        }
    }
}

/// The pool's mode forbids an activity: which, and the operator's reason if one was given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "Pool is disabled: {pool} is disabled for {}{}",
    activity.word(),
    if message.is_empty() { String::new() } else { format!(": [{error_code}] {message}") }
)]
pub struct ModeRefused {
    pub pool: PoolName,
    pub activity: Activity,
    /// The operator's code and reason (`pool disable <code> <message>`).
    pub error_code: i32,
    pub message: String,
}

/// How a refusal crosses the wire (docs/errors.md: `PoolDisabled`).
impl From<ModeRefused> for RemoteError {
    fn from(e: ModeRefused) -> Self {
        RemoteError::new(ErrorCode::PoolDisabled, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_text_round_trips() {
        let m =
            ModeState { mode: PoolMode::disabled(PoolMode::RDONLY), error_code: 5, message: "going away soon".into() };
        assert_eq!(ModeState::decode(&m.encode()), Some(m));
        assert_eq!(ModeState::decode(&ModeState::enabled().encode()), Some(ModeState::enabled()));
        assert_eq!(ModeState::decode("garbage"), None);
    }
}
