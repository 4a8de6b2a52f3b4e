//! A running pool: its admin and data endpoints, and the order in which it starts and stops.
//!
//! Start-up:
//! 1. open the repository (restart recovery runs here) on a blocking thread;
//! 2. restore the saved pool mode;
//! 3. start the migration module and the feed of repository changes into it, and recreate
//!    the permanent jobs saved with `save`;
//! 4. accept connections on the admin and data listeners (bound by the caller); each listener
//!    holds at most `admission::MAX_UNAUTHENTICATED` connections in their handshake at once
//!    and reads only handshake-sized frames from them (`docs/protocol.md`).
//!
//! Shutdown is the same script in reverse: the migration module cancels its jobs and the
//! copies it serves (within the grace period, while the pool still answers other pools); then
//! stop accepting and cancel every connection and transfer (uploads in flight are aborted and
//! their partial data removed), wait for them with a deadline, then flush the repository.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidepool_p2p::auth::{self, Features, PeerInfo, Service};
use tidepool_p2p::cluster::ClusterFile;
use tidepool_p2p::frame::{Frame, FrameReader, FrameWriter, MAX_DATA_CHUNK, MAX_FRAME, WireError, decode};
use tidepool_p2p::message::{
    AdminReply, AdminRequest, DataReply, DataRequest, MAX_ERROR_MESSAGE, MigrationReply, PutRequest,
};
use tidepool_p2p::model::{FileAttributes, ReplicaState, check_storage_class};
use tidepool_p2p::random::random_bytes;
use tidepool_p2p::tls::{Credentials, Identity, Role, ServerStream};
use tidepool_p2p::{ErrorCode, PnfsId, PoolName, RemoteError};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admin::output::Output;
use crate::admin::{self, exec};
use crate::admission::{MAX_UNAUTHENTICATED, PerPeerLog, RefusalLog, Verdict, suppressed_note};
use crate::io::{blocking, read_full};
use crate::node::Node;
use crate::pool::{Activity, Pool, now_ms};
use crate::process::service::{Started, VERSION};
use crate::repository::{Incoming, RepoError, Repository, SledStore};
use crate::transfer::{self, PEER_IDLE, TransferSettings, Transfers};

/// Everything a pool needs to start, resolved from its config, the cluster file and its
/// credentials.
pub struct Settings {
    pub name: PoolName,
    pub data_dir: PathBuf,
    pub capacity: u64,
    pub cluster: ClusterFile,
    pub credentials: Credentials,
    pub pin_owner_prefix: String,
    pub shutdown_grace: Duration,
    pub transfers: TransferSettings,
    pub migration: tidepool_migration::module::Settings,
    /// Fault points to arm before anything starts (crash tests only; none in production).
    pub fault_points: crate::faults::FaultPoints,
}

/// A running pool daemon.
pub struct Daemon {
    node: Arc<Node>,
    admin_addr: SocketAddr,
    data_addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
    span: tracing::Span,
}

/// A pool whose repository is open but which does not serve yet.
pub struct Opened {
    node: Arc<Node>,
    data_dir: PathBuf,
    capacity: u64,
    /// When `open` began, to log and show how long start-up took.
    began: Instant,
    credentials: Credentials,
    grace: Duration,
    span: tracing::Span,
}

impl Daemon {
    /// Opens the repository and starts serving on already bound listeners.
    pub async fn start(settings: Settings, admin: TcpListener, data: TcpListener) -> anyhow::Result<Daemon> {
        Daemon::open(settings).await?.serve(admin, data)
    }

    /// Steps 1 to 3: opens the repository (running restart recovery), restores the mode and
    /// starts the migration module.
    /// A caller that binds its listeners afterwards does not accept connections it cannot
    /// answer during a long recovery.
    pub async fn open(settings: Settings) -> anyhow::Result<Opened> {
        let began = Instant::now();
        let span = tracing::info_span!("pool", name = %settings.name);
        let Settings {
            name,
            data_dir,
            capacity,
            cluster,
            credentials,
            pin_owner_prefix,
            shutdown_grace,
            transfers,
            migration,
            fault_points,
        } = settings;
        span.in_scope(|| fault_points.arm()).map_err(|e| anyhow::anyhow!("cannot arm fault points: {e}"))?;
        // 1. Open the repository.
        let dir = data_dir.clone();
        let opened = blocking(move || -> anyhow::Result<_> {
            let store = SledStore::open(&dir)?;
            Ok(Repository::open(Arc::new(store), capacity, now_ms())?)
        })
        .instrument(span.clone())
        .await;
        let (repo, recovery) =
            opened.map_err(|e| anyhow::anyhow!("cannot open the repository in {}: {e}", data_dir.display()))?;
        span.in_scope(|| {
            tracing::info!(replicas = recovery.loaded, "repository loaded");
            for line in recovery.report() {
                tracing::warn!("recovery: {line}");
            }
        });
        // 2. Restore the pool mode.
        let pool = Arc::new(Pool::new(name, repo, recovery, cluster, credentials.clone(), pin_owner_prefix)?);
        let node = Arc::new(Node::new(Arc::new(Transfers::new(pool, &transfers))));
        // 3. Start the migration module and recreate the saved permanent jobs.
        span.in_scope(|| {
            let module = node.start_migration(migration);
            crate::migration_env::restore(&node.pool.repo, module);
        });
        Ok(Opened { node, data_dir, capacity, began, credentials, grace: shutdown_grace, span })
    }
}

impl Opened {
    /// The pool, before it serves (the `tidepool pool` command gives it its log control).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.node.pool
    }

    /// Step 4: accepts connections.
    pub fn serve(self, admin: TcpListener, data: TcpListener) -> anyhow::Result<Daemon> {
        let Opened { node, data_dir, capacity, began, credentials, grace, span } = self;
        let pool = &node.pool;
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let admin_addr = admin.local_addr()?;
        let data_addr = data.local_addr()?;
        let refusals = Arc::new(parking_lot::Mutex::new(PerPeerLog::default()));
        for (listener, service) in [(admin, Service::Admin), (data, Service::Data)] {
            let ctx = Ctx {
                node: node.clone(),
                credentials: credentials.clone(),
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
                refusals: refusals.clone(),
            };
            tracker.spawn(accept_loop(listener, service, ctx).instrument(span.clone()));
        }
        let started = Started {
            version: VERSION,
            at: now_ms(),
            startup: began.elapsed(),
            data_dir,
            capacity,
            admin: admin_addr,
            data: data_addr,
        };
        span.in_scope(|| {
            tracing::info!(
                %admin_addr, %data_addr, mode = %pool.mode().mode, version = VERSION,
                data_dir = %started.data_dir.display(), capacity = started.capacity,
                startup = ?started.startup, "pool started"
            )
        });
        let _ = pool.started.set(started);
        Ok(Daemon { node, admin_addr, data_addr, shutdown, tracker, grace, span })
    }
}

impl Daemon {
    pub fn pool(&self) -> &Arc<Pool> {
        &self.node.pool
    }

    /// The pool with its transfers and migration module.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The span (`pool{name=...}`) every log line of this pool is in.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// Serves the Prometheus metrics page (`GET /metrics`, docs/metrics.md) on an already
    /// bound listener, until shutdown.
    pub fn serve_metrics(&self, listener: TcpListener) -> anyhow::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        let task = crate::metrics::serve(listener, self.node.clone(), self.shutdown.clone(), self.tracker.clone());
        self.tracker.spawn(task.instrument(self.span.clone()));
        let _ = self.node.pool.metrics_addr.set(addr);
        self.span.in_scope(|| tracing::info!("metrics at http://{addr}/metrics"));
        Ok(addr)
    }

    /// Stops the pool: end the migration jobs, cancel, wait up to the grace period (each), flush.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let span = self.span.clone();
        async move {
            tracing::info!("pool stopping");
            self.node.stop_migration(self.grace).await;
            self.shutdown.cancel();
            self.node.transfers.cancel_all();
            self.tracker.close();
            self.node.pool.tasks.close();
            let everything = async {
                self.tracker.wait().await;
                self.node.pool.tasks.wait().await;
            };
            if tokio::time::timeout(self.grace, everything).await.is_err() {
                tracing::warn!(grace = ?self.grace, "connections still open after the grace period; abandoning them");
            }
            let repo = self.node.pool.repo.clone();
            blocking(move || repo.flush()).await?;
            tracing::info!("pool stopped");
            Ok(())
        }
        .instrument(span)
        .await
    }
}

#[derive(Clone)]
struct Ctx {
    node: Arc<Node>,
    credentials: Credentials,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// The refusal warnings of each peer (its address before TLS, its identity after) and
    /// reason, shared by both listeners: the same refusal of the same peer is written once a
    /// minute at most (`docs/security.md`, "What is logged").
    refusals: Arc<parking_lot::Mutex<PerPeerLog<String>>>,
}

impl Ctx {
    /// Writes a refusal warning about `peer` (an address or an identity) unless its rate limit
    /// holds it back; `write` gets the note on how many were held back before.
    fn warn_refused(&self, peer: String, write: impl FnOnce(&str)) {
        if let Verdict::Log { suppressed } = self.refusals.lock().admit(&peer, Instant::now()) {
            write(&per_peer_note(suppressed));
        }
    }
}

/// A refusal's reason as the key of its rate limit: without its figures, which may change at
/// every try (an expired certificate's reason names the time of the check).
fn same_refusal(reason: &str) -> String {
    reason.chars().filter(|c| !c.is_ascii_digit()).collect()
}

/// The tail a refusal warning gets when earlier ones like it of the same peer were not written.
fn per_peer_note(suppressed: u64) -> String {
    match suppressed {
        0 => String::new(),
        n => format!(" ({n} more like it from this peer not logged since the last one)"),
    }
}

/// What one listener shares with the connections it accepted: the places for connections in
/// their handshake, and the rate limit of its refusal warnings.
struct Admission {
    unauthenticated: Arc<Semaphore>,
    refusals: parking_lot::Mutex<RefusalLog>,
}

impl Admission {
    /// Writes a refusal warning unless the listener's rate limit holds it back.
    fn warn(&self, write: impl FnOnce(&str)) {
        let verdict = self.refusals.lock().admit(Instant::now());
        if let Verdict::Log { suppressed } = verdict {
            write(&suppressed_note(suppressed));
        }
    }

    /// Writes a refusal warning about `peer` unless its own rate limit (one a minute) or the
    /// listener's holds it back; one the peer's limit holds back is counted by the listener's,
    /// so the listener's next warning gives every refusal not written since its last.
    fn warn_peer(&self, ctx: &Ctx, peer: String, write: impl FnOnce(&str)) {
        let verdict = ctx.refusals.lock().admit(&peer, Instant::now());
        match verdict {
            Verdict::Log { suppressed } => {
                let per_peer = per_peer_note(suppressed);
                self.warn(|listener| write(&format!("{per_peer}{listener}")))
            }
            Verdict::Suppress => self.refusals.lock().held_back(),
        }
    }
}

async fn accept_loop(listener: TcpListener, service: Service, ctx: Ctx) {
    let admission = Arc::new(Admission {
        unauthenticated: Arc::new(Semaphore::new(MAX_UNAUTHENTICATED)),
        refusals: parking_lot::Mutex::new(RefusalLog::new(Instant::now())),
    });
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(permit) = admission.unauthenticated.clone().try_acquire_owned() else {
                    // Closed before anything is read or allocated for it.
                    drop(stream);
                    admission.warn_peer(&ctx, format!("{} {service:?} dropped", peer.ip()), |note| {
                        tracing::warn!(
                            %peer, ?service,
                            "dropped connection: {MAX_UNAUTHENTICATED} connections are already in their handshake{note}"
                        )
                    });
                    continue;
                };
                let conn = ctx.clone();
                let admission = admission.clone();
                ctx.tracker.spawn(
                    async move { serve(stream, peer, service, conn, permit, &admission).await }
                        .instrument(tracing::Span::current()),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // Back off a little on errors such as EMFILE rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An upload that sends nothing for this long is aborted and its reserved space released.
const UPLOAD_IDLE: Duration = Duration::from_secs(120);

type Reader = FrameReader<ReadHalf<ServerStream>>;
type Writer = FrameWriter<WriteHalf<ServerStream>>;

/// The write buffer of a connection in its handshake (the handshake's frames are small).
const HANDSHAKE_WRITE_BUFFER: usize = 1024;

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    service: Service,
    ctx: Ctx,
    permit: OwnedSemaphorePermit,
    admission: &Admission,
) {
    let _ = stream.set_nodelay(true);
    // TLS first (a certificate from a trusted CA, unexpired, not denied), then the handshake;
    // both within the handshake time and under the admission permit.
    // The credentials' generation before the handshake: a reload during it is noticed at the
    // first request.
    let generation = ctx.credentials.generation();
    let tls = match tokio::time::timeout(auth::HANDSHAKE_TIMEOUT, ctx.credentials.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            admission.warn_peer(
                &ctx,
                format!("{} {service:?} {}", peer.ip(), same_refusal(&e.to_string())),
                |note| tracing::warn!(%peer, ?service, "refused connection: {e}{note}"),
            );
            return;
        }
        Err(_) => {
            let e = WireError::Timeout(auth::HANDSHAKE_TIMEOUT);
            admission.warn_peer(
                &ctx,
                format!("{} {service:?} {e}", peer.ip()),
                |note| tracing::warn!(%peer, ?service, "refused connection: TLS handshake {e}{note}"),
            );
            return;
        }
    };
    let (tls, identity) = tls;
    let cert = PeerCert::of(&tls, generation);
    let (r, w) = tokio::io::split(tls);
    // `auth::accept` reads at most handshake-sized frames until the peer is admitted.
    let mut reader = FrameReader::new(r, MAX_FRAME);
    let mut writer = FrameWriter::with_capacity(w, HANDSHAKE_WRITE_BUFFER);
    let node = ctx.node.clone();
    let client = match auth::accept(
        &mut reader,
        &mut writer,
        ctx.node.pool.name.as_str(),
        service,
        offered(&ctx.node.transfers),
        &identity,
        |who, _| known_pool(&node, who),
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            admission.warn_peer(
                &ctx,
                format!("{identity} {service:?} {e}"),
                |note| tracing::warn!(%peer, %identity, ?service, "refused connection: {e}{note}"),
            );
            if let WireError::Timeout(t) = e {
                // Tell a slow client why it is dropped, if it still listens.
                let msg = format!("handshake not finished within {} s; connection closed", t.as_secs());
                let refusal = auth::HandshakeReply::Refused(RemoteError::new(ErrorCode::Timeout, msg));
                let _ = tokio::time::timeout(Duration::from_secs(1), writer.send(&refusal)).await;
            }
            return;
        }
    };
    drop(permit);
    let mut writer = FrameWriter::new(writer.into_inner());
    let PeerInfo { name: client, identity, features } = client;
    tracing::debug!(%peer, %identity, %client, ?service, ?features, "connection authenticated");
    let result = match service {
        Service::Admin => serve_admin(&mut reader, &mut writer, &identity, &cert, &client, features, &ctx).await,
        Service::Data => serve_data(&mut reader, &mut writer, &identity, &cert, features, &ctx).await,
    };
    if let Err(e) = result {
        tracing::warn!(%peer, %identity, %client, "closing connection: {e}");
        if matches!(e, WireError::Oversized { .. } | WireError::Malformed(_) | WireError::Unexpected { .. }) {
            // Say why before hanging up; nothing the frame asked for was done.
            let err = RemoteError::new(ErrorCode::Protocol, format!("{e}; closing the connection"));
            let reply = async {
                match service {
                    Service::Admin => writer.send(&AdminReply::Finished { error: Some(err) }).await,
                    Service::Data => writer.send(&DataReply::Error(err)).await,
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), reply).await;
        }
    }
}

/// The next request frame, or `None` at shutdown or when the client closed the connection.
async fn next_request(reader: &mut Reader, ctx: &Ctx) -> Result<Option<bytes::Bytes>, WireError> {
    let frame = tokio::select! {
        _ = ctx.shutdown.cancelled() => return Ok(None),
        f = reader.next() => f?,
    };
    match frame {
        None => Ok(None),
        Some(Frame::Message(body)) => Ok(Some(body)),
        Some(Frame::Data(_)) => Err(WireError::Unexpected { expected: "a request", got: "data" }),
    }
}

/// The certificate a connection's peer showed at its handshake, and the generation of our
/// credentials it was last checked against.
struct PeerCert {
    chain: Vec<tidepool_p2p::tls::CertificateDer<'static>>,
    /// Seconds since the epoch.
    not_after: i64,
    checked: std::sync::atomic::AtomicU64,
}

impl PeerCert {
    fn of(tls: &tidepool_p2p::tls::ServerStream, generation: u64) -> PeerCert {
        let chain = tidepool_p2p::tls::peer_chain(tls);
        let not_after = chain.first().and_then(|c| tidepool_p2p::tls::cert_info(c).ok()).map_or(0, |i| i.not_after);
        PeerCert { chain, not_after, checked: std::sync::atomic::AtomicU64::new(generation) }
    }
}

/// An open connection keeps its rights only as long as a new one would get them
/// (`docs/security.md`, "Revoking"): a name put on the deny list by a reload, a certificate
/// whose CA a reload removed from the trust anchors, or one that expired while connected, loses
/// its connection at its next request.
fn still_admitted(identity: &Identity, cert: &PeerCert, ctx: &Ctx) -> Result<(), RemoteError> {
    use std::sync::atomic::Ordering;
    if ctx.credentials.denies(&identity.name) {
        ctx.warn_refused(
            format!("{identity} denied"),
            |note| tracing::warn!(%identity, "closed a connection: its name is now on the deny list{note}"),
        );
        return Err(RemoteError::new(
            ErrorCode::AuthFailed,
            format!("authentication failed: {identity} is on the deny list"),
        ));
    }
    let generation = ctx.credentials.generation();
    let expired = chrono::Utc::now().timestamp() > cert.not_after;
    if !expired && cert.checked.load(Ordering::Relaxed) == generation {
        return Ok(());
    }
    match ctx.credentials.still_trusts(&cert.chain) {
        Ok(()) => {
            cert.checked.store(generation, Ordering::Relaxed);
            Ok(())
        }
        Err(why) => {
            ctx.warn_refused(format!("{identity} no longer trusted"), |note| {
                tracing::warn!(%identity, "closed a connection: its certificate is no longer accepted: {why}{note}")
            });
            Err(RemoteError::new(
                ErrorCode::AuthFailed,
                format!("authentication failed: the certificate of {identity} is no longer accepted: {why}"),
            ))
        }
    }
}

/// A pool may speak to this pool only if the cluster file in force lists it (`docs/security.md`).
fn known_pool(node: &Node, who: &Identity) -> Result<(), RemoteError> {
    let listed = || who.name.parse::<PoolName>().ok().and_then(|name| node.pool.cluster.pool(&name)).is_some();
    if who.role != Role::Pool || listed() {
        return Ok(());
    }
    Err(RemoteError::new(
        ErrorCode::Forbidden,
        format!("{who} is not in the cluster file of pool {}; pools not listed there are refused", node.pool.name),
    ))
}

async fn serve_admin(
    reader: &mut Reader,
    writer: &mut Writer,
    identity: &Identity,
    cert: &PeerCert,
    client: &str,
    features: Features,
    ctx: &Ctx,
) -> Result<(), WireError> {
    while let Some(body) = next_request(reader, ctx).await? {
        let request = decode::<AdminRequest>(&body)?;
        if let Err(e) = still_admitted(identity, cert, ctx) {
            writer.send(&AdminReply::Finished { error: Some(e) }).await?;
            return Ok(());
        }
        match request {
            AdminRequest::Describe => writer.send(&AdminReply::Commands(admin::describe())).await?,
            // Only what the handshake agreed on.
            AdminRequest::DescribeDetails if !features.contains(Features::COMMAND_DETAILS) => {
                return Err(WireError::Unexpected {
                    expected: "a request agreed in the handshake",
                    got: "DescribeDetails",
                });
            }
            AdminRequest::DescribeDetails => {
                let json = tidepool_p2p::message::encode_details(&admin::describe_details());
                writer.send(&AdminReply::CommandDetails(json)).await?
            }
            AdminRequest::Run { line } => {
                let shown = tidepool_p2p::error::truncate_echo(&line, LOGGED_LINE);
                if identity.role == Role::Pool && !admin::a_pool_may_run(&line) {
                    ctx.warn_refused(format!("{identity} admin command"), |note| {
                        tracing::warn!(%identity, %client, command = %shown, "refused admin command from a pool{note}")
                    });
                    let error = RemoteError::new(
                        ErrorCode::Forbidden,
                        format!(
                            "{identity} may not run this command: a pool certificate runs only the migration \
                             commands of `rebalance` (migration move, ls, cancel)"
                        ),
                    );
                    writer.send(&AdminReply::Finished { error: Some(error) }).await?;
                    continue;
                }
                tracing::info!(%identity, %client, command = %shown, "admin command");
                let error = run_admin(line, writer, ctx).await?.map(bounded);
                writer.send(&AdminReply::Finished { error }).await?;
            }
        }
    }
    Ok(())
}

/// How much of an admin line the pool's log repeats, in characters.
const LOGGED_LINE: usize = 1000;

/// An error reply no longer than [`MAX_ERROR_MESSAGE`] bytes, whatever it quotes: the shell
/// must never lose its connection because a reply outgrew a frame. Messages that quote input
/// already shorten it (`docs/errors.md`); this is the last guard.
fn bounded(mut error: RemoteError) -> RemoteError {
    if error.message.len() > MAX_ERROR_MESSAGE {
        let mut cut = MAX_ERROR_MESSAGE;
        while !error.message.is_char_boundary(cut) {
            cut -= 1;
        }
        let len = error.message.len();
        error.message.truncate(cut);
        error.message.push_str(&format!("\n... (message cut at {cut} of {len} bytes)"));
    }
    error
}

/// Runs one admin line on this connection's task and streams its output to the client as it
/// is produced (in pieces well under the frame limit, `admin::output`). The command's error is
/// typed until here, where it becomes the reply's `RemoteError`.
async fn run_admin(line: String, writer: &mut Writer, ctx: &Ctx) -> Result<Option<RemoteError>, WireError> {
    let (tx, mut rx) = mpsc::channel(4);
    let node = &ctx.node;
    // The command ends when it returns (dropping its output and so `tx`); forwarding ends when
    // `tx` is gone or the client is (dropping `rx`, which makes the command's next write fail
    // with `Gone`).
    let work = async move {
        let mut out = Output::channel(tx);
        exec::run_line(node, &line, &mut out).await.map_err(|e| e.to_remote())
    };
    let forward = async move {
        while let Some(text) = rx.recv().await {
            writer.send(&AdminReply::Output(text)).await?;
        }
        Ok::<(), WireError>(())
    };
    let (result, forwarded) = tokio::join!(work, forward);
    forwarded?;
    Ok(result.err())
}

/// The optional parts of the protocol this pool offers in its handshakes (a test plays a pool
/// built without small-file batches).
fn offered(transfers: &Transfers) -> Features {
    #[cfg(test)]
    if transfers.faults.before_batches() {
        return Features::ALL.without(Features::FETCH_SMALL);
    }
    let _ = transfers;
    Features::ALL
}

async fn serve_data(
    reader: &mut Reader,
    writer: &mut Writer,
    identity: &Identity,
    cert: &PeerCert,
    features: Features,
    ctx: &Ctx,
) -> Result<(), WireError> {
    // Migration requests speak for the certificate's pool, never for a pool they name.
    let peer = identity.name.parse::<PoolName>();
    loop {
        // Pool-to-pool connections idle between transfers; one idle for long is closed.
        let Ok(next) = tokio::time::timeout(PEER_IDLE, next_request(reader, ctx)).await else {
            return Ok(());
        };
        let Some(body) = next? else { return Ok(()) };
        let request = decode::<DataRequest>(&body)?;
        if let Err(e) = still_admitted(identity, cert, ctx) {
            let reply = match request {
                DataRequest::Migration(_) => DataReply::Migration(MigrationReply::Error(e)),
                _ => DataReply::Error(e),
            };
            writer.send(&reply).await?;
            return Ok(());
        }
        if let Err(e) = may_ask(identity, &request) {
            ctx.warn_refused(
                format!("{identity} {}", e.message),
                |note| tracing::warn!(%identity, "refused request: {}{note}", e.message),
            );
            let reply = match request {
                DataRequest::Migration(_) => DataReply::Migration(MigrationReply::Error(e)),
                _ => DataReply::Error(e),
            };
            writer.send(&reply).await?;
            continue;
        }
        match request {
            DataRequest::Put(req) => put(req, reader, writer, ctx).await?,
            DataRequest::Get { pnfsid } => get(pnfsid, writer, ctx).await?,
            DataRequest::Fetch { transfer, pnfsid, force_source_mode } => {
                transfer::serve_fetch(
                    reader,
                    writer,
                    &ctx.node.transfers,
                    &ctx.shutdown,
                    transfer,
                    pnfsid,
                    force_source_mode,
                )
                .await?
            }
            // Only what the handshake agreed on.
            DataRequest::FetchSmall { .. } if !features.contains(Features::FETCH_SMALL) => {
                return Err(WireError::Unexpected { expected: "a request agreed in the handshake", got: "FetchSmall" });
            }
            DataRequest::FetchSmall { items, max_size, max_bytes } => {
                transfer::serve_fetch_small(
                    reader,
                    writer,
                    &ctx.node.transfers,
                    &ctx.shutdown,
                    items,
                    max_size,
                    max_bytes,
                )
                .await?
            }
            DataRequest::Migration(req) => {
                let reply = match &peer {
                    Ok(from) => ctx.node.migration().serve(from.clone(), req).await,
                    Err(e) => MigrationReply::Error(RemoteError::new(
                        ErrorCode::InvalidArgument,
                        format!("migration requests come from pools only ({e})"),
                    )),
                };
                writer.send(&DataReply::Migration(reply)).await?;
            }
            DataRequest::PutEnd { .. } | DataRequest::FetchStart { .. } | DataRequest::FetchAbort { .. } => {
                let e = RemoteError::new(ErrorCode::Protocol, "a continuation without its request");
                writer.send(&DataReply::Error(e)).await?;
                return Err(WireError::Unexpected { expected: "a request", got: "a continuation" });
            }
        }
    }
}

/// Whether the peer's role may make `request` (`docs/security.md`, "Roles"): clients store and
/// read replicas; only pools fetch from other pools and make migration requests.
fn may_ask(identity: &Identity, request: &DataRequest) -> Result<(), RemoteError> {
    let (needed, what) = match request {
        DataRequest::Put(_) | DataRequest::Get { .. } => (Role::Client, "store or read replicas"),
        DataRequest::Fetch { .. } | DataRequest::FetchSmall { .. } => (Role::Pool, "make pool-to-pool requests"),
        DataRequest::Migration(_) => (Role::Pool, "make migration requests"),
        DataRequest::PutEnd { .. } | DataRequest::FetchStart { .. } | DataRequest::FetchAbort { .. } => return Ok(()),
    };
    if identity.role == needed {
        return Ok(());
    }
    Err(RemoteError::new(ErrorCode::Forbidden, format!("{identity} may not {what}: only a {needed} certificate may")))
}

/// Drops a partial replica on the blocking pool (its clean-up deletes a file).
async fn discard(incoming: Incoming) {
    blocking(move || drop(incoming)).await;
}

async fn put(req: PutRequest, reader: &mut Reader, writer: &mut Writer, ctx: &Ctx) -> Result<(), WireError> {
    if let Err(e) = ctx.node.pool.check_mode(Activity::Store, false) {
        return writer.send(&DataReply::Error(e.into())).await;
    }
    if let Some(class) = &req.storage_class
        && let Err(e) = check_storage_class(class)
    {
        let e = RemoteError::new(ErrorCode::InvalidArgument, format!("{e}; nothing stored"));
        return writer.send(&DataReply::Error(e)).await;
    }
    let pnfsid = PnfsId::from_random(random_bytes()?);
    let now = now_ms();
    let attrs = FileAttributes {
        pnfsid,
        size: req.size,
        checksum: None,
        storage_class: req.storage_class,
        cache_class: req.cache_class,
        access_latency: req.access_latency,
        retention_policy: req.retention_policy,
        hsm: req.hsm,
        creation_time: now,
        access_time: now,
    };
    let repo = ctx.node.pool.repo.clone();
    let mut incoming = match blocking(move || repo.create(attrs, ReplicaState::FromClient, now)).await {
        Ok(i) => i,
        Err(e) => return writer.send(&DataReply::Error(e.into())).await,
    };
    writer.send(&DataReply::PutReady { pnfsid }).await?;
    while incoming.written() < req.size {
        let frame = tokio::select! {
            _ = ctx.shutdown.cancelled() => {
                discard(incoming).await;
                let e = RemoteError::new(ErrorCode::ShuttingDown, "pool is shutting down; upload aborted, nothing stored");
                writer.send(&DataReply::Error(e)).await?;
                return Err(WireError::Closed);
            }
            f = tokio::time::timeout(UPLOAD_IDLE, reader.expect()) => match f {
                Ok(f) => f,
                Err(_) => {
                    discard(incoming).await;
                    let e = RemoteError::new(
                        ErrorCode::Timeout,
                        format!("file {pnfsid}: no data for {} s; upload aborted, nothing stored", UPLOAD_IDLE.as_secs()),
                    );
                    writer.send(&DataReply::Error(e)).await?;
                    return Err(WireError::Timeout(UPLOAD_IDLE));
                }
            },
        };
        let chunk = match frame {
            Ok(Frame::Data(chunk)) => chunk,
            Ok(Frame::Message(_)) => {
                discard(incoming).await;
                let e = RemoteError::new(
                    ErrorCode::ShortTransfer,
                    format!("file {pnfsid}: data ended early; nothing stored"),
                );
                writer.send(&DataReply::Error(e)).await?;
                return Err(WireError::Unexpected { expected: "data", got: "a message" });
            }
            Err(e) => {
                discard(incoming).await;
                tracing::warn!(%pnfsid, "upload aborted, partial data removed: {e}");
                return Err(e);
            }
        };
        let (back, written) = blocking(move || {
            let r = incoming.write(&chunk);
            (incoming, r)
        })
        .await;
        incoming = back;
        if let Err(e) = written {
            discard(incoming).await;
            writer.send(&DataReply::Error(e.into())).await?;
            return Err(WireError::Closed);
        }
    }
    let end = tokio::select! {
        _ = ctx.shutdown.cancelled() => {
            discard(incoming).await;
            return Err(WireError::Closed);
        }
        m = reader.recv::<DataRequest>() => m,
    };
    let checksum = match end {
        Ok(DataRequest::PutEnd { checksum }) => checksum,
        Ok(_) => {
            discard(incoming).await;
            let e = RemoteError::new(ErrorCode::Protocol, "expected PutEnd");
            writer.send(&DataReply::Error(e)).await?;
            return Err(WireError::Unexpected { expected: "PutEnd", got: "another request" });
        }
        Err(e) => {
            discard(incoming).await;
            return Err(e);
        }
    };
    let state = match req.state {
        tidepool_p2p::message::CommitState::Cached => ReplicaState::Cached,
        tidepool_p2p::message::CommitState::Precious => ReplicaState::Precious,
    };
    let sticky = req.sticky;
    match blocking(move || incoming.commit(state, sticky, Some(checksum), now_ms())).await {
        Ok(replica) => {
            tracing::info!(%pnfsid, size = req.size, state = %state, "stored new replica");
            let checksum = replica.attrs.checksum.unwrap_or(checksum);
            writer.send(&DataReply::PutCommitted { pnfsid, checksum }).await
        }
        Err(e) => {
            tracing::warn!(%pnfsid, "upload not committed: {e}");
            writer.send(&DataReply::Error(e.into())).await
        }
    }
}

async fn get(pnfsid: PnfsId, writer: &mut Writer, ctx: &Ctx) -> Result<(), WireError> {
    if let Err(e) = ctx.node.pool.check_mode(Activity::Fetch, false) {
        return writer.send(&DataReply::Error(e.into())).await;
    }
    let repo = ctx.node.pool.repo.clone();
    let (replica, mut data) = match blocking(move || repo.open_data(&pnfsid, now_ms())).await {
        Ok(x) => x,
        Err(e) => return writer.send(&DataReply::Error(e.into())).await,
    };
    let size = replica.attrs.size;
    writer.send(&DataReply::GetReady { attributes: replica.attrs }).await?;
    let mut buf = vec![0u8; MAX_DATA_CHUNK.min(size as usize).max(1)];
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let (d, b, read) = blocking(move || {
            let r = read_full(&mut data, &mut buf[..want]);
            (data, buf, r)
        })
        .await;
        data = d;
        buf = b;
        match read {
            Ok(n) if n == want => {
                writer.send_data(&buf[..n]).await?;
                left -= n as u64;
            }
            Ok(n) => {
                let e = RepoError::Corrupt {
                    id: pnfsid,
                    reason: format!("data file ends {} bytes early", left - n as u64),
                };
                tracing::error!(%pnfsid, "{e}");
                return writer.send(&DataReply::Error(e.into())).await;
            }
            Err(e) => {
                tracing::error!(%pnfsid, "read failed: {e}");
                let e = RemoteError::new(ErrorCode::Io, format!("file {pnfsid}: read failed: {e}"));
                return writer.send(&DataReply::Error(e)).await;
            }
        }
    }
    writer.flush().await?;
    writer.send(&DataReply::GetEnd).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_reply_is_cut_to_fit_a_frame() {
        let small = RemoteError::new(ErrorCode::Syntax, "bad option");
        assert_eq!(bounded(small.clone()), small);
        let huge = RemoteError::new(ErrorCode::Syntax, "é".repeat(MAX_ERROR_MESSAGE));
        let cut = bounded(huge);
        assert!(cut.message.len() < MAX_ERROR_MESSAGE + 100, "{}", cut.message.len());
        assert!(
            cut.message.ends_with(&format!("of {} bytes)", 2 * MAX_ERROR_MESSAGE)),
            "{}",
            &cut.message[cut.message.len() - 60..]
        );
        assert_eq!(cut.code, ErrorCode::Syntax.as_u32());
    }

    /// An expired certificate tried again and again is one refusal for the rate limit, though
    /// its reason names the time of each check.
    #[test]
    fn the_same_refusal_at_another_time_has_the_same_key() {
        let at = |now: u64, ago: u64| {
            format!(
                "authentication failed: certificate expired: verification time {now} (UNIX), but certificate is not valid after 1700000000 (UNIX) ({ago} seconds ago)"
            )
        };
        assert_eq!(same_refusal(&at(1796000000, 96000000)), same_refusal(&at(1796000001, 96000001)));
        assert_ne!(same_refusal(&at(1796000000, 96000000)), same_refusal("authentication failed: unknown issuer"));
    }
}
