//! Runs admin lines on the other pools of the cluster, for `rebalance`: over the
//! peer-connection layer (`tidepool_p2p::peer::Dialer`, the admin service, authenticated with
//! this pool's certificate (TLS; `docs/security.md`), the pool's identity checked, the handshake's features agreed), with the
//! typed requests and replies of `docs/protocol.md` (`AdminRequest::Run`, then `Output` pieces
//! and one `Finished`). Failures to reach a pool are typed ([`PeerError`]); a pool's own
//! refusal arrives as the wire's `RemoteError`, which the caller matches on by code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tidepool_p2p::auth::Service;
use tidepool_p2p::cluster::ClusterFile;
use tidepool_p2p::conn::Connection;
use tidepool_p2p::frame::WireError;
use tidepool_p2p::message::{AdminReply, AdminRequest};
use tidepool_p2p::peer::{DialError, Dialer, Origin};
use tidepool_p2p::tls::Credentials;
use tidepool_p2p::{ErrorCode, PoolName, RemoteError};
use tokio::time::timeout;

/// Why a line could not be run on another pool, or its reply not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("no pool named {0} in the cluster file")]
    UnknownPool(PoolName),
    /// Nothing answers at its admin address.
    #[error("{pool} is offline: {reason} at {addr}")]
    Offline { pool: PoolName, addr: SocketAddr, reason: String },
    /// It answered and refused the connection (our certificate, a protocol it does not speak).
    #[error("{pool} at {addr} refused the connection: {}", .error.render())]
    Refused { pool: PoolName, addr: SocketAddr, error: RemoteError },
    #[error("cannot log in to {pool} at {addr}: {reason}")]
    Handshake { pool: PoolName, addr: SocketAddr, reason: String },
    #[error("the pool at {addr} calls itself {actual}, not {pool}; check the cluster file")]
    WrongPool { pool: PoolName, addr: SocketAddr, actual: String },
    #[error("could not send the command to {pool}: {reason}")]
    SendFailed { pool: PoolName, reason: String },
    #[error("lost the connection to {pool} before its reply ended: {reason}; the command may or may not have run")]
    Lost { pool: PoolName, reason: String },
    #[error("{pool} sent nothing for {after:?}; gave up waiting (the command may still be running there)")]
    NoReply { pool: PoolName, after: Duration },
    #[error("{pool} sent an unexpected reply ({got}); dropped the connection")]
    Unexpected { pool: PoolName, got: &'static str },
}

impl PeerError {
    /// The code of the pool's line in a rebalance reply (`docs/errors.md`).
    pub fn code(&self) -> ErrorCode {
        match self {
            PeerError::Offline { .. } | PeerError::SendFailed { .. } | PeerError::Lost { .. } => ErrorCode::Offline,
            PeerError::NoReply { .. } => ErrorCode::Timeout,
            PeerError::Refused { error, .. } => error.code().unwrap_or(ErrorCode::Protocol),
            PeerError::UnknownPool(_) => ErrorCode::InvalidArgument,
            PeerError::Handshake { .. } | PeerError::WrongPool { .. } | PeerError::Unexpected { .. } => {
                ErrorCode::Protocol
            }
        }
    }

    fn from_dial(e: DialError) -> PeerError {
        match e {
            DialError::Unreachable { pool, addr, source } => match source {
                WireError::Io(e) => PeerError::Offline { pool, addr, reason: io_reason(&e) },
                WireError::Timeout(after) => {
                    PeerError::Offline { pool, addr, reason: format!("no answer within {after:?}") }
                }
                WireError::Remote(error) => PeerError::Refused { pool, addr, error },
                source => PeerError::Handshake { pool, addr, reason: source.to_string() },
            },
            DialError::Refused { pool, addr, error } => PeerError::Refused { pool, addr, error },
            DialError::WrongPool { pool, addr, actual } => PeerError::WrongPool { pool, addr, actual },
        }
    }
}

/// A short lower-case reason for a failed connect, e.g. "connection refused".
fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::ConnectionReset => "connection reset".into(),
        ErrorKind::TimedOut => "timed out".into(),
        ErrorKind::HostUnreachable => "host unreachable".into(),
        ErrorKind::NetworkUnreachable => "network unreachable".into(),
        ErrorKind::AddrNotAvailable => "address not available".into(),
        _ => e.to_string(),
    }
}

/// The admin endpoints of the other pools, as one command (a rebalance) reaches them: one
/// [`Dialer`] whose connections the pools' lines share, one at a time per pool.
#[derive(Clone)]
pub struct Pools {
    cluster: Arc<ClusterFile>,
    dialer: Arc<Dialer>,
    /// How long a pool may stay silent while it runs a line.
    reply_timeout: Duration,
}

impl Pools {
    /// `me` introduces itself in the handshake (a pool's name and what it does, e.g.
    /// `pool1/rebalance`, which the other pool's log shows).
    pub fn new(cluster: Arc<ClusterFile>, credentials: Credentials, me: String, reply_timeout: Duration) -> Pools {
        let dialer = Dialer::new(me, credentials, Service::Admin);
        Pools { cluster, dialer: Arc::new(dialer), reply_timeout }
    }

    /// Runs `line` on `pool` and returns its output, with the pool's error if it refused
    /// (`Ok(Err(..))`); `Err` if the pool was not reached or its reply did not come whole.
    pub async fn run(&self, pool: &PoolName, line: &str) -> Result<(String, Option<RemoteError>), PeerError> {
        let addr = self.cluster.pool(pool).ok_or_else(|| PeerError::UnknownPool(pool.clone()))?.admin;
        let request = AdminRequest::Run { line: line.to_string() };
        let (mut conn, origin) = self.dialer.checkout(pool, addr).await.map_err(PeerError::from_dial)?;
        if let Err(e) = self.send(&mut conn, &request).await {
            // A kept connection the pool closed meanwhile: once more on a new one.
            if origin == Origin::New {
                return Err(PeerError::SendFailed { pool: pool.clone(), reason: e.to_string() });
            }
            conn = self.dialer.open(pool, addr).await.map_err(PeerError::from_dial)?;
            self.send(&mut conn, &request)
                .await
                .map_err(|e| PeerError::SendFailed { pool: pool.clone(), reason: e.to_string() })?;
        }
        let mut text = String::new();
        loop {
            let reply = match timeout(self.reply_timeout, conn.recv::<AdminReply>()).await {
                Err(_) => return Err(PeerError::NoReply { pool: pool.clone(), after: self.reply_timeout }),
                Ok(Err(e)) => return Err(PeerError::Lost { pool: pool.clone(), reason: e.to_string() }),
                Ok(Ok(reply)) => reply,
            };
            match reply {
                AdminReply::Output(piece) => text.push_str(&piece),
                AdminReply::Finished { error } => {
                    self.dialer.give_back(pool, conn);
                    return Ok((text, error));
                }
                AdminReply::Commands(_) | AdminReply::CommandDetails(_) => {
                    return Err(PeerError::Unexpected { pool: pool.clone(), got: "a command list" });
                }
            }
        }
    }

    async fn send(&self, conn: &mut Connection, request: &AdminRequest) -> Result<(), WireError> {
        timeout(self.reply_timeout, conn.send(request)).await.map_err(|_| WireError::Timeout(self.reply_timeout))?
    }
}
