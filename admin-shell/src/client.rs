//! Talking to pools: one authenticated admin connection per pool, opened when first needed and
//! reused; a connection found dead before a request is replaced once.
//!
//! **Cancellation:** a request takes its connection out of the client while it runs and puts it
//! back only after the terminal reply. Dropping a request future half-way therefore drops its
//! connection with it, and the next request to that pool opens a fresh one; nothing can read a
//! stale reply.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tidepool_p2p::PoolName;
use tidepool_p2p::RemoteError;
use tidepool_p2p::auth::{Features, Service};
use tidepool_p2p::cluster::ClusterFile;
use tidepool_p2p::conn::Connection;
use tidepool_p2p::frame::WireError;
use tidepool_p2p::message::{AdminReply, AdminRequest, CommandDetail, decode_details, line_too_long};
use tidepool_p2p::peer::{DialError, Dialer, Origin};
use tidepool_p2p::tls::Credentials;
use tokio::task::JoinSet;
use tokio::time::timeout;

/// How long a pool may stay silent between two frames of a reply (a long, streamed `rep ls` is
/// fine as long as output keeps coming).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `ls` waits for each pool to answer the handshake.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a request to a pool did not get its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no pool named {0} in the cluster file")]
    UnknownPool(PoolName),
    #[error("{pool} is offline: {reason} at {addr}")]
    Offline { pool: PoolName, addr: SocketAddr, reason: String },
    #[error("{pool} at {addr} refused the shell: {}", .error.render())]
    Refused { pool: PoolName, addr: SocketAddr, error: RemoteError },
    #[error("cannot log in to {pool} at {addr}: {source}")]
    Handshake { pool: PoolName, addr: SocketAddr, source: WireError },
    #[error("the pool at {addr} calls itself {actual}, not {pool}; check the cluster file")]
    WrongPool { pool: PoolName, addr: SocketAddr, actual: String },
    #[error("could not send the command to {pool}: {source}")]
    SendFailed { pool: PoolName, source: WireError },
    #[error("lost the connection to {pool} before its reply ended: {source}; the command may or may not have run")]
    Lost { pool: PoolName, source: WireError },
    #[error("{pool} sent nothing for {after:?}; gave up waiting (the command may still be running there)")]
    NoReply { pool: PoolName, after: Duration },
    #[error("{pool} sent an unexpected reply ({got}); dropped the connection")]
    Unexpected { pool: PoolName, got: &'static str },
    #[error("cannot write the output: {0}")]
    Output(io::Error),
    #[error("{pool} described its commands in a form this shell cannot read: {reason}")]
    Details { pool: PoolName, reason: String },
    /// A line longer than a pool accepts; nothing was sent.
    #[error("{0}")]
    LineTooLong(String),
}

/// Whether a pool answers, as `ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolStatus {
    Online,
    /// Nothing answers at the admin address.
    Offline {
        reason: String,
    },
    /// Something answers but the shell cannot log in (a certificate it refuses, wrong pool, another protocol).
    Unusable {
        reason: String,
    },
}

impl PoolStatus {
    pub fn word(&self) -> &'static str {
        match self {
            PoolStatus::Online => "online",
            PoolStatus::Offline { .. } => "offline",
            PoolStatus::Unusable { .. } => "error",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            PoolStatus::Online => None,
            PoolStatus::Offline { reason } | PoolStatus::Unusable { reason } => Some(reason),
        }
    }
}

/// The shell's connections to the pools of one cluster file.
pub struct PoolClient {
    cluster: ClusterFile,
    credentials: Credentials,
    reply_timeout: Duration,
    /// One connection per pool, kept between commands for as long as the pool keeps it open.
    dialer: Arc<Dialer>,
    commands: HashMap<PoolName, Vec<CommandDetail>>,
}

/// The shell keeps its one connection to a pool for as long as the pool keeps it open.
fn dialer(name: String, credentials: Credentials) -> Arc<Dialer> {
    Arc::new(Dialer::new(name, credentials, Service::Admin).keeping(Duration::MAX, 1))
}

impl PoolClient {
    /// A client that introduces itself to pools as `tidepool-admin[<pid>]`.
    pub fn new(cluster: ClusterFile, credentials: Credentials) -> Self {
        PoolClient {
            cluster,
            dialer: dialer(format!("tidepool-admin[{}]", std::process::id()), credentials.clone()),
            credentials,
            reply_timeout: REPLY_TIMEOUT,
            commands: HashMap::new(),
        }
    }

    /// Introduces itself to pools as `name` instead (a pool that runs commands on other pools
    /// names itself, so their logs say who asked).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.dialer = dialer(name.into(), self.credentials.clone());
        self
    }

    /// Replaces [`REPLY_TIMEOUT`].
    pub fn with_reply_timeout(mut self, reply_timeout: Duration) -> Self {
        self.reply_timeout = reply_timeout;
        self
    }

    pub fn cluster(&self) -> &ClusterFile {
        &self.cluster
    }

    /// Makes sure a working connection to `pool` is open, opening one if needed.
    pub async fn connect(&mut self, pool: &PoolName) -> Result<(), ClientError> {
        let (conn, _) = self.checkout(pool).await?;
        self.dialer.give_back(pool, conn);
        Ok(())
    }

    /// Runs one command line on `pool`, handing each output chunk to `output` as it arrives.
    /// `Ok(Some(error))` is the pool's answer that the command failed.
    pub async fn run(
        &mut self,
        pool: &PoolName,
        line: &str,
        output: &mut dyn FnMut(&str) -> io::Result<()>,
    ) -> Result<Option<RemoteError>, ClientError> {
        if let Some(message) = line_too_long(line.len()) {
            return Err(ClientError::LineTooLong(message));
        }
        let mut conn = self.send_request(pool, &AdminRequest::Run { line: line.to_string() }).await?;
        loop {
            match self.next_reply(pool, &mut conn).await? {
                AdminReply::Output(text) => output(&text).map_err(ClientError::Output)?,
                AdminReply::Finished { error } => {
                    self.dialer.give_back(pool, conn);
                    return Ok(error);
                }
                AdminReply::Commands(_) | AdminReply::CommandDetails(_) => {
                    return Err(unexpected(pool, "a command list"));
                }
            }
        }
    }

    /// The commands `pool` declares, with their options' values and their arguments' kinds,
    /// asked once per pool and then remembered. A pool whose handshake did not offer
    /// `Features::COMMAND_DETAILS` (an older one) is asked for the plain list; completion then
    /// offers its option names as before, without values.
    pub async fn commands(&mut self, pool: &PoolName) -> Result<Vec<CommandDetail>, ClientError> {
        if let Some(known) = self.commands.get(pool) {
            return Ok(known.clone());
        }
        // Which request depends on the connection it goes out on: its handshake says whether
        // the pool knows `DescribeDetails`.
        let mut conn = self.send_chosen(pool, describe_request).await?;
        let details = match self.next_reply(pool, &mut conn).await? {
            AdminReply::CommandDetails(json) => {
                decode_details(&json).map_err(|e| ClientError::Details { pool: pool.clone(), reason: e.to_string() })?
            }
            AdminReply::Commands(commands) => commands.iter().map(CommandDetail::from).collect(),
            AdminReply::Output(_) => return Err(unexpected(pool, "output")),
            AdminReply::Finished { .. } => return Err(unexpected(pool, "a command result")),
        };
        self.dialer.give_back(pool, conn);
        self.commands.insert(pool.clone(), details.clone());
        Ok(details)
    }

    /// Probes every pool of the cluster file at once (connect and handshake, at most
    /// [`PROBE_TIMEOUT`] each), in file order.
    pub async fn probe_all(&self) -> Vec<PoolStatus> {
        let mut probes = JoinSet::new();
        for (index, entry) in self.cluster.pools.iter().enumerate() {
            let (dialer, pool, addr) = (self.dialer.clone(), entry.name.clone(), entry.admin);
            probes.spawn(async move { (index, probe(&dialer, &pool, addr).await) });
        }
        let mut statuses = vec![None; self.cluster.pools.len()];
        while let Some(done) = probes.join_next().await {
            if let Ok((index, status)) = done {
                statuses[index] = Some(status);
            }
        }
        let lost = || PoolStatus::Unusable { reason: "the probe did not finish".into() };
        statuses.into_iter().map(|s| s.unwrap_or_else(lost)).collect()
    }

    /// Sends `request` on a working connection and returns that connection, which the caller
    /// owns until the terminal reply. A reused connection that fails the send is replaced once.
    async fn send_request(&mut self, pool: &PoolName, request: &AdminRequest) -> Result<Connection, ClientError> {
        self.send_chosen(pool, |_| request.clone()).await
    }

    /// [`PoolClient::send_request`] with the request chosen for the connection it goes out on.
    async fn send_chosen(
        &mut self,
        pool: &PoolName,
        request: impl Fn(&Connection) -> AdminRequest,
    ) -> Result<Connection, ClientError> {
        let (mut conn, origin) = self.checkout(pool).await?;
        let first = request(&conn);
        match self.send(&mut conn, &first).await {
            Ok(()) => return Ok(conn),
            Err(source) if origin == Origin::New => return Err(send_failed(pool, source)),
            Err(_) => {}
        }
        let mut conn = self.open(pool).await?;
        let again = request(&conn);
        self.send(&mut conn, &again).await.map_err(|source| send_failed(pool, source))?;
        Ok(conn)
    }

    async fn send(&self, conn: &mut Connection, request: &AdminRequest) -> Result<(), WireError> {
        timeout(self.reply_timeout, conn.send(request)).await.map_err(|_| WireError::Timeout(self.reply_timeout))?
    }

    async fn next_reply(&self, pool: &PoolName, conn: &mut Connection) -> Result<AdminReply, ClientError> {
        match timeout(self.reply_timeout, conn.recv::<AdminReply>()).await {
            Err(_) => Err(ClientError::NoReply { pool: pool.clone(), after: self.reply_timeout }),
            Ok(Err(source)) => Err(ClientError::Lost { pool: pool.clone(), source }),
            Ok(Ok(reply)) => Ok(reply),
        }
    }

    /// Takes the kept connection to `pool` if it still looks alive, or opens a new one.
    async fn checkout(&mut self, pool: &PoolName) -> Result<(Connection, Origin), ClientError> {
        let addr = self.address(pool)?;
        self.dialer.checkout(pool, addr).await.map_err(dial_error)
    }

    async fn open(&self, pool: &PoolName) -> Result<Connection, ClientError> {
        let addr = self.address(pool)?;
        self.dialer.open(pool, addr).await.map_err(dial_error)
    }

    fn address(&self, pool: &PoolName) -> Result<SocketAddr, ClientError> {
        Ok(self.cluster.pool(pool).ok_or_else(|| ClientError::UnknownPool(pool.clone()))?.admin)
    }
}

/// Connects and logs in; the connection is kept for the next command.
async fn probe(dialer: &Dialer, pool: &PoolName, addr: SocketAddr) -> PoolStatus {
    match timeout(PROBE_TIMEOUT, dialer.open(pool, addr)).await {
        Err(_) => PoolStatus::Offline { reason: format!("no answer within {PROBE_TIMEOUT:?}") },
        Ok(Ok(conn)) => {
            dialer.give_back(pool, conn);
            PoolStatus::Online
        }
        Ok(Err(e)) => match dial_error(e) {
            ClientError::Offline { reason, .. } => PoolStatus::Offline { reason },
            ClientError::Refused { error, .. } => PoolStatus::Unusable { reason: error.render() },
            ClientError::Handshake { source, .. } => PoolStatus::Unusable { reason: source.to_string() },
            other => PoolStatus::Unusable { reason: other.to_string() },
        },
    }
}

/// How to ask for a pool's commands on `conn`: with their details where its handshake agreed on
/// `COMMAND_DETAILS`, else the plain list.
fn describe_request(conn: &Connection) -> AdminRequest {
    if conn.features.contains(Features::COMMAND_DETAILS) {
        AdminRequest::DescribeDetails
    } else {
        AdminRequest::Describe
    }
}

fn dial_error(e: DialError) -> ClientError {
    match e {
        DialError::Unreachable { pool, addr, source } => connect_error(&pool, addr, source),
        DialError::Refused { pool, addr, error } => ClientError::Refused { pool, addr, error },
        DialError::WrongPool { pool, addr, actual } => ClientError::WrongPool { pool, addr, actual },
    }
}

fn connect_error(pool: &PoolName, addr: SocketAddr, source: WireError) -> ClientError {
    let pool = pool.clone();
    match source {
        WireError::Io(e) => ClientError::Offline { pool, addr, reason: io_reason(&e) },
        WireError::Timeout(after) => ClientError::Offline { pool, addr, reason: format!("no answer within {after:?}") },
        WireError::Remote(error) => ClientError::Refused { pool, addr, error },
        source => ClientError::Handshake { pool, addr, source },
    }
}

/// A short lower-case reason for a failed connect, e.g. "connection refused".
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::HostUnreachable => "host unreachable".into(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".into(),
        io::ErrorKind::AddrNotAvailable => "address not available".into(),
        _ => e.to_string(),
    }
}

fn send_failed(pool: &PoolName, source: WireError) -> ClientError {
    ClientError::SendFailed { pool: pool.clone(), source }
}

fn unexpected(pool: &PoolName, got: &'static str) -> ClientError {
    ClientError::Unexpected { pool: pool.clone(), got }
}
