//! An authenticated connection, client side: TCP, then TLS 1.3 with our certificate
//! (`tls.rs`), then the handshake (`auth.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::auth::{self, Features, Service};
use crate::error::{ErrorCode, RemoteError};
use crate::frame::{Frame, FrameReader, FrameWriter, MAX_FRAME, WireError};
use crate::tls::{ClientStream, Credentials, Identity, Role};

/// How long to wait for a TCP connection to a pool.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to a pool that has passed the handshake.
pub struct Connection {
    pub reader: FrameReader<ReadHalf<ClientStream>>,
    pub writer: FrameWriter<WriteHalf<ClientStream>>,
    /// The pool's name, as its certificate and its handshake both say.
    pub pool: String,
    /// The optional parts of the protocol both sides offered.
    pub features: Features,
    /// The [`Credentials::generation`] it was made with: a connection made before a reload is
    /// not reused after it (`peer::Dialer`).
    pub generation: u64,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("pool", &self.pool).field("features", &self.features).finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to `addr` with `creds` and introduces itself as `client` for `service`,
    /// offering every feature this build has.
    pub async fn open(
        addr: SocketAddr,
        creds: &Credentials,
        client: &str,
        service: Service,
    ) -> Result<Self, WireError> {
        Self::open_offering(addr, creds, client, service, Features::ALL).await
    }

    /// [`Connection::open`], offering only `offered` (tests play older builds this way).
    pub async fn open_offering(
        addr: SocketAddr,
        creds: &Credentials,
        client: &str,
        service: Service,
        offered: Features,
    ) -> Result<Self, WireError> {
        let generation = creds.generation();
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| WireError::Timeout(CONNECT_TIMEOUT))??;
        stream.set_nodelay(true)?;
        let (tls, identity) = tokio::time::timeout(auth::HANDSHAKE_TIMEOUT, creds.connect(addr, stream))
            .await
            .map_err(|_| WireError::Timeout(auth::HANDSHAKE_TIMEOUT))??;
        let (r, w) = tokio::io::split(tls);
        let mut reader = FrameReader::new(r, MAX_FRAME);
        let mut writer = FrameWriter::new(w);
        // A pool that refuses our certificate says so in TLS, seen at the first read.
        let welcomed =
            auth::connect(&mut reader, &mut writer, client, service, offered).await.map_err(crate::tls::clarify)?;
        check_pool(&identity, &welcomed.pool)?;
        Ok(Connection { reader, writer, pool: identity.name, features: welcomed.features, generation })
    }

    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), WireError> {
        self.writer.send(msg).await
    }

    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, WireError> {
        self.reader.recv().await
    }

    pub async fn next_frame(&mut self) -> Result<Frame, WireError> {
        self.reader.expect().await
    }

    /// Whether a connection that sat idle can still carry a request: the pool has neither
    /// closed it nor sent anything unasked. A pool that went away is noticed here, before
    /// anything is sent, not after a request was sent (when the caller could no longer tell
    /// whether it ran). Looks once, without waiting: the reader's `next` is cancel-safe, so
    /// nothing is lost by looking. The yield first lets the runtime take in socket events that
    /// arrived while the caller sat idle.
    pub async fn still_open(&mut self) -> bool {
        tokio::task::yield_now().await;
        let mut next = std::pin::pin!(self.reader.next());
        std::future::poll_fn(|cx| std::task::Poll::Ready(next.as_mut().poll(cx).is_pending())).await
    }
}

/// The pool's certificate must carry role `pool` and the name the pool gives.
fn check_pool(identity: &Identity, hello_name: &str) -> Result<(), WireError> {
    if identity.role != Role::Pool {
        let msg = format!("the peer's certificate is {identity}, not a pool's");
        return Err(WireError::Handshake(RemoteError::new(ErrorCode::AuthFailed, msg)));
    }
    if identity.name != hello_name {
        let shown = crate::error::truncate_echo(hello_name, 64);
        let msg = format!("the pool's certificate names {}, but it calls itself {shown}", identity.name);
        return Err(WireError::Handshake(RemoteError::new(ErrorCode::AuthFailed, msg)));
    }
    Ok(())
}
