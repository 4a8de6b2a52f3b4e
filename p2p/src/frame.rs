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
/// The frame limit while a peer is not yet authenticated (see `docs/protocol.md`): the
/// handshake's frames are about a hundred bytes plus the client's name, so nothing larger is
/// read from a peer the pool has not admitted yet.
pub const MAX_HANDSHAKE_FRAME: usize = 4 * 1024;
/// What a reader makes room for while it waits for a frame header (at most its limit plus the
/// 4 length bytes): a connection that sends nothing, or is still in its handshake, holds no
/// more than this.
const IDLE_READ: usize = 64 * 1024;

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
    /// The handshake failed on this side: why, with the code the peer was told (or would be).
    #[error("{}", .0.message)]
    Handshake(RemoteError),
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
    /// A reader that refuses frames longer than `max`. It allocates nothing until data comes.
    pub fn new(inner: R, max: usize) -> Self {
        FrameReader { inner, buf: BytesMut::new(), max }
    }

    /// The current frame limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Changes the frame limit (the handshake lowers it to [`MAX_HANDSHAKE_FRAME`] until the
    /// peer is authenticated).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The bytes the reader's buffer holds allocated, received or not.
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next frame, or `None` when the peer closed the connection between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, WireError> {
        loop {
            if let Some(frame) = self.try_parse()? {
                return Ok(Some(frame));
            }
            self.make_room();
            let n = match self.inner.read_buf(&mut self.buf).await {
                Ok(n) => n,
                // TLS reports a close without its close_notify as an unexpected end. Between
                // frames that is a peer hanging up (the shell and clients just close); inside a
                // frame it is a cut, as below. Every frame carries its length, so a cut is seen.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(e.into()),
            };
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

    /// Makes room for the next read. Until a header has arrived, for at most [`IDLE_READ`]
    /// bytes (or the limit plus 4 if smaller); once it has, for the rest of that frame, which
    /// the header check has bounded by the limit. So a reader never holds more than its limit
    /// plus a few bytes for one frame: 4 KiB before the handshake succeeds
    /// ([`MAX_HANDSHAKE_FRAME`]), and an authenticated peer's frame (at most [`MAX_FRAME`]) is
    /// reserved whole, in one allocation, when its header arrives.
    fn make_room(&mut self) {
        let want = if self.buf.len() >= 4 {
            let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
            (4 + len).saturating_sub(self.buf.len()).max(1)
        } else {
            IDLE_READ.min(self.max + 4)
        };
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want);
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
        FrameWriter::with_capacity(inner, 64 * 1024)
    }

    /// A writer with a `capacity`-byte buffer (a small one for a peer not yet authenticated).
    pub fn with_capacity(inner: W, capacity: usize) -> Self {
        FrameWriter { inner: BufWriter::with_capacity(capacity, inner), scratch: Vec::new() }
    }

    /// The stream, once everything queued was flushed (every `send` flushes).
    pub fn into_inner(self) -> W {
        debug_assert!(self.inner.buffer().is_empty(), "into_inner with unflushed frames");
        self.inner.into_inner()
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

    /// A reader holds no more than its limit (plus the length bytes) for one frame, whatever
    /// a header announces: an idle reader with the default limit at most 64 KiB, one with the
    /// handshake's limit about 4 KiB, and a frame under the limit arrives whole.
    #[tokio::test]
    async fn a_reader_reserves_no_more_than_its_limit() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let w = FrameWriter::new(a);
        let mut r = FrameReader::new(b, MAX_FRAME);
        let idle = tokio::time::timeout(std::time::Duration::from_millis(20), r.next()).await;
        assert!(idle.is_err(), "nothing was sent");
        assert!(r.buffer_capacity() <= 2 * IDLE_READ, "an idle reader holds {} bytes", r.buffer_capacity());

        let (a, b) = tokio::io::duplex(1 << 20);
        let mut w2 = FrameWriter::new(a);
        let mut r = FrameReader::new(b, MAX_HANDSHAKE_FRAME);
        let mut header = 4000u32.to_be_bytes().to_vec();
        header.push(KIND_MESSAGE);
        w2.send_raw(&header).await.unwrap();
        w2.send_raw(&[1u8; 100]).await.unwrap();
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), r.next()).await;
        assert!(pending.is_err(), "the frame is not complete yet");
        assert!(r.buffer_capacity() <= 2 * (MAX_HANDSHAKE_FRAME + 4), "holds {} bytes", r.buffer_capacity());
        w2.send_raw(&[1u8; 3899]).await.unwrap();
        match r.expect().await.unwrap() {
            Frame::Message(body) => assert_eq!(body.len(), 3999),
            other => panic!("{other:?}"),
        }
        w2.send_raw(&(1u32 << 20).to_be_bytes()).await.unwrap();
        assert!(matches!(r.next().await, Err(WireError::Oversized { len: 1_048_576, max: MAX_HANDSHAKE_FRAME })));
        assert!(r.buffer_capacity() <= 2 * (MAX_HANDSHAKE_FRAME + 4), "holds {} bytes", r.buffer_capacity());
        drop(w);
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
