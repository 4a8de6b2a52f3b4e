//! Framing: every frame is a 4-byte big-endian length, then one kind byte, then the body.
//! Kind 0 is a serde message (postcard), kind 1 is raw replica data. A frame longer than the
//! reader's limit, or with an unknown kind, is an error and the connection is closed; nothing
//! else is affected.

use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};

use crate::error::RemoteError;

/// The largest data chunk a sender puts in one frame.
pub const MAX_DATA_CHUNK: usize = 1024 * 1024;
/// The default frame limit: one full data chunk plus its header.
pub const MAX_FRAME: usize = MAX_DATA_CHUNK + 64;

const KIND_MESSAGE: u8 = 0;
const KIND_DATA: u8 = 1;

/// Everything that can go wrong on a connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversized { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: &'static str },
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("{}", .0.render())]
    Remote(RemoteError),
    #[error("{0}")]
    Handshake(String),
}

/// One frame as read.
#[derive(Debug)]
pub enum Frame {
    Message(Bytes),
    Data(Bytes),
}

impl Frame {
    fn kind_name(&self) -> &'static str {
        match self {
            Frame::Message(_) => "a message",
            Frame::Data(_) => "data",
        }
    }
}

/// Reads frames from a byte stream. `next` is cancel-safe: a frame half-read when the future is
/// dropped stays in the buffer and is completed by the next call.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        FrameReader { inner, buf: BytesMut::with_capacity(64 * 1024), max }
    }

    /// The next frame, or `None` when the peer closed the connection between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, WireError> {
        loop {
            if let Some(frame) = self.try_parse()? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 64 * 1024 {
                self.buf.reserve(256 * 1024);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(WireError::Closed) };
            }
        }
    }

    /// Like `next`, but a closed connection is an error.
    pub async fn expect(&mut self) -> Result<Frame, WireError> {
        self.next().await?.ok_or(WireError::Closed)
    }

    /// Reads one message frame and decodes it.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, WireError> {
        match self.expect().await? {
            Frame::Message(body) => decode(&body),
            other => Err(WireError::Unexpected { expected: "a message", got: other.kind_name() }),
        }
    }

    fn try_parse(&mut self) -> Result<Option<Frame>, WireError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max {
            return Err(WireError::Oversized { len, max: self.max });
        }
        if len == 0 {
            return Err(WireError::Malformed("empty frame".into()));
        }
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        let mut body = self.buf.split_to(len).freeze();
        let kind = body.get_u8();
        match kind {
            KIND_MESSAGE => Ok(Some(Frame::Message(body))),
            KIND_DATA => Ok(Some(Frame::Data(body))),
            other => Err(WireError::Malformed(format!("unknown frame kind {other}"))),
        }
    }
}

/// Decodes a message body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    postcard::from_bytes(body).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Writes frames to a byte stream. Not cancel-safe: dropping a send half-way leaves a torn
/// frame, so callers that must give up on a peer drop the whole connection.
pub struct FrameWriter<W: AsyncWrite> {
    inner: BufWriter<W>,
    scratch: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter { inner: BufWriter::with_capacity(64 * 1024, inner), scratch: Vec::new() }
    }

    /// Sends one message and flushes.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), WireError> {
        self.queue(msg).await?;
        self.inner.flush().await?;
        Ok(())
    }

    /// Queues one message without flushing (several replies then go out in one write); call
    /// `flush` after the last.
    pub async fn queue<T: Serialize>(&mut self, msg: &T) -> Result<(), WireError> {
        self.scratch.clear();
        self.scratch.extend_from_slice(&[0, 0, 0, 0, KIND_MESSAGE]);
        let encoded = postcard::to_extend(msg, std::mem::take(&mut self.scratch))
            .map_err(|e| WireError::Malformed(e.to_string()))?;
        self.scratch = encoded;
        let len = (self.scratch.len() - 4) as u32;
        self.scratch[..4].copy_from_slice(&len.to_be_bytes());
        self.inner.write_all(&self.scratch).await?;
        Ok(())
    }

    /// Queues one data chunk (at most [`MAX_DATA_CHUNK`] bytes); call `flush` after the last.
    pub async fn send_data(&mut self, chunk: &[u8]) -> Result<(), WireError> {
        debug_assert!(chunk.len() <= MAX_DATA_CHUNK);
        let len = (chunk.len() + 1) as u32;
        let mut header = [0u8; 5];
        header[..4].copy_from_slice(&len.to_be_bytes());
        header[4] = KIND_DATA;
        self.inner.write_all(&header).await?;
        self.inner.write_all(chunk).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), WireError> {
        self.inner.flush().await?;
        Ok(())
    }

    /// Writes raw bytes that are not a frame: only for tests of the decoder's robustness.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.inner.write_all(bytes).await?;
        self.inner.flush().await?;
        Ok(())
    }

    pub async fn shutdown(&mut self) -> Result<(), WireError> {
        self.inner.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test]
    async fn messages_and_data_round_trip() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = FrameWriter::new(a);
        let mut r = FrameReader::new(b, MAX_FRAME);
        w.send(&("hello".to_string(), 42u32)).await.unwrap();
        w.send_data(&[7u8; 1000]).await.unwrap();
        w.flush().await.unwrap();
        let got: (String, u32) = r.recv().await.unwrap();
        assert_eq!(got, ("hello".to_string(), 42));
        match r.expect().await.unwrap() {
            Frame::Data(d) => assert_eq!(&d[..], &[7u8; 1000][..]),
            other => panic!("{other:?}"),
        }
        drop(w);
        assert!(r.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading_it() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = FrameWriter::new(a);
        let mut r = FrameReader::new(b, 100);
        w.send_raw(&(1_000_000u32).to_be_bytes()).await.unwrap();
        assert!(matches!(r.next().await, Err(WireError::Oversized { len: 1_000_000, max: 100 })));
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = FrameWriter::new(a);
        let mut r = FrameReader::new(b, 100);
        w.send_raw(&[0, 0, 0, 10, 0, 1]).await.unwrap();
        drop(w);
        assert!(matches!(r.next().await, Err(WireError::Closed)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Random bytes never make the decoder panic; they give frames or a clean error.
        #[test]
        fn decoder_survives_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut r = FrameReader::new(&bytes[..], 2048);
                while let Ok(Some(frame)) = r.next().await {
                    if let Frame::Message(body) = frame {
                        let _ = decode::<crate::message::AdminRequest>(&body);
                        let _ = decode::<crate::message::DataRequest>(&body);
                        let _ = decode::<crate::auth::ClientAuth>(&body);
                    }
                }
            });
        }
    }
}
