//! An authenticated TCP connection, client side.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::auth::{self, ClusterKey, Service};
use crate::frame::{Frame, FrameReader, FrameWriter, MAX_FRAME, WireError};

/// How long to wait for a TCP connection to a pool.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to a pool that has passed the handshake.
pub struct Connection {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: FrameWriter<OwnedWriteHalf>,
    /// The pool's name as it introduced itself.
    pub pool: String,
}

impl Connection {
    /// Connects to `addr` and authenticates as `client` for `service`.
    pub async fn open(addr: SocketAddr, key: &ClusterKey, client: &str, service: Service) -> Result<Self, WireError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| WireError::Timeout(CONNECT_TIMEOUT))??;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut reader = FrameReader::new(r, MAX_FRAME);
        let mut writer = FrameWriter::new(w);
        let pool = auth::connect(&mut reader, &mut writer, key, client, service).await?;
        Ok(Connection { reader, writer, pool })
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
}
