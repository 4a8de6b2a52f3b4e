//! The cluster key and the handshake every connection starts with.
//!
//! ```text
//! server -> client  Hello       { magic, version, pool, service, server nonce, server features }
//! client -> server  ClientAuth  { version, client name, service, client nonce, client features,
//!                                 HMAC(key, "client" | server nonce | client nonce | service | name
//!                                           | server features | client features) }
//! server -> client  Welcome     { HMAC(key, "server" | client nonce | server nonce | agreed features) }
//!                or Refused     { error }
//! ```
//! Both sides prove they hold the key; neither sends it. The optional parts of the protocol
//! ([`Features`]) are agreed here, once per connection: both sides use those both offered, and
//! the MACs cover the offers, so nobody on the way can take a feature away. The server gives the client a bounded
//! time to finish, and reads no frame longer than [`MAX_HANDSHAKE_FRAME`] until the client has
//! proved it; a client that does not, or that proves a different key, is dropped with a
//! warning on the pool (rate-limited there) and a clear `Refused` message on the client.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{ErrorCode, RemoteError};
use crate::frame::{FrameReader, FrameWriter, MAX_HANDSHAKE_FRAME, WireError};
use crate::random::random_bytes;

/// The protocol version this build speaks. Bumped on any incompatible message change; an
/// optional addition is a new [`Features`] bit instead.
pub const PROTOCOL_VERSION: u16 = 3;
/// The first bytes of every conversation, so a stray client is recognised at once.
pub const MAGIC: [u8; 8] = *b"TIDEPOOL";
/// How long a peer may take to finish the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

type HmacSha256 = Hmac<Sha256>;

/// The shared secret of a cluster: 32 bytes, stored as 64 hex digits in the key file.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// A fresh random key.
    pub fn generate() -> std::io::Result<Self> {
        Ok(ClusterKey(random_bytes()?))
    }

    /// Parses the key file's text (64 hex digits, surrounding white space ignored).
    pub fn parse(text: &str) -> Result<Self, String> {
        let hex = text.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("a cluster key file holds exactly 64 hex digits".into());
        }
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(ClusterKey(key))
    }

    /// The key file's text.
    pub fn to_file_text(&self) -> String {
        let mut s: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        s.push('\n');
        s
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        for p in parts {
            mac.update(&(p.len() as u32).to_be_bytes());
            mac.update(p);
        }
        mac
    }
}

/// The optional parts of the protocol a side offers. The handshake agrees on the intersection;
/// a side uses a feature only where the connection's agreed set contains it (never "try it and
/// see if the peer complains").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Features(u32);

impl Features {
    /// Nothing optional.
    pub const NONE: Features = Features(0);
    /// `DataRequest::FetchSmall`: a batch of small replicas in one exchange.
    pub const FETCH_SMALL: Features = Features(1);
    /// `AdminRequest::DescribeDetails`: the commands with their options' values and their
    /// arguments' kinds, for the shell's completion.
    pub const COMMAND_DETAILS: Features = Features(1 << 1);
    /// Everything this build offers.
    pub const ALL: Features = Features(Self::FETCH_SMALL.0 | Self::COMMAND_DETAILS.0);

    /// Whether every feature of `other` is in `self`.
    pub fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    /// The features both sets have.
    pub fn and(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }

    /// This set without `other`'s features.
    pub fn without(self, other: Features) -> Features {
        Features(self.0 & !other.0)
    }

    fn bytes(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }
}

/// The endpoint a client wants; a pool answers each on its own listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Service {
    /// Admin commands from the shell.
    Admin,
    /// Replica data: client put/get and pool-to-pool transfers.
    Data,
}

impl Service {
    fn tag(self) -> &'static [u8] {
        match self {
            Service::Admin => b"admin",
            Service::Data => b"data",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 8],
    pub version: u16,
    pub pool: String,
    pub service: Service,
    pub nonce: [u8; 32],
    pub features: Features,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ClientAuth {
    pub version: u16,
    pub client: String,
    pub service: Service,
    pub nonce: [u8; 32],
    pub features: Features,
    pub mac: [u8; 32],
}

#[derive(Debug, Serialize, Deserialize)]
pub enum HandshakeReply {
    Welcome { mac: [u8; 32] },
    Refused(RemoteError),
}

/// What the server learned about an authenticated client.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub name: String,
    /// The features both sides offered.
    pub features: Features,
}

/// What the client learned about the pool it connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcomed {
    /// The pool's name as it introduced itself.
    pub pool: String,
    /// The features both sides offered.
    pub features: Features,
}

/// How much of a client's self-chosen name a refusal repeats.
const MAX_NAME_ECHO: usize = 64;

/// Runs the server side of the handshake within [`HANDSHAKE_TIMEOUT`]. Until the client is
/// authenticated the reader's frame limit is [`MAX_HANDSHAKE_FRAME`]; on success the caller's
/// limit is restored.
pub async fn accept<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    key: &ClusterKey,
    pool: &str,
    service: Service,
    offered: Features,
) -> Result<PeerInfo, WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let limit = reader.max();
    reader.set_max(limit.min(MAX_HANDSHAKE_FRAME));
    let work = async {
        let nonce: [u8; 32] = random_bytes()?;
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            pool: pool.to_string(),
            service,
            nonce,
            features: offered,
        };
        writer.send(&hello).await?;
        let auth: ClientAuth = reader.recv().await?;
        let refuse = |code, msg: String| HandshakeReply::Refused(RemoteError::new(code, msg));
        if auth.version != PROTOCOL_VERSION {
            let msg = format!(
                "protocol version {} is not supported; pool {pool} speaks version {PROTOCOL_VERSION}",
                auth.version
            );
            writer.send(&refuse(ErrorCode::Protocol, msg.clone())).await?;
            return Err(WireError::Handshake(RemoteError::new(ErrorCode::Protocol, msg)));
        }
        if auth.service != service {
            let msg = format!("this is the {service:?} endpoint of pool {pool}, not {:?}", auth.service);
            writer.send(&refuse(ErrorCode::Protocol, msg.clone())).await?;
            return Err(WireError::Handshake(RemoteError::new(ErrorCode::Protocol, msg)));
        }
        let proof = key.mac(&[
            b"client",
            &nonce,
            &auth.nonce,
            service.tag(),
            auth.client.as_bytes(),
            &offered.bytes(),
            &auth.features.bytes(),
        ]);
        if proof.verify_slice(&auth.mac).is_err() {
            let client = crate::error::truncate_echo(&auth.client, MAX_NAME_ECHO);
            let msg = format!("authentication failed: {client} does not hold the cluster key of pool {pool}");
            writer.send(&refuse(ErrorCode::AuthFailed, msg.clone())).await?;
            return Err(WireError::Handshake(RemoteError::new(ErrorCode::AuthFailed, msg)));
        }
        let features = offered.and(auth.features);
        let mac = key.mac(&[b"server", &auth.nonce, &nonce, &features.bytes()]).finalize().into_bytes().into();
        writer.send(&HandshakeReply::Welcome { mac }).await?;
        Ok(PeerInfo { name: auth.client, features })
    };
    let peer =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, work).await.map_err(|_| WireError::Timeout(HANDSHAKE_TIMEOUT))??;
    reader.set_max(limit);
    Ok(peer)
}

/// Runs the client side of the handshake; returns the pool's name and the agreed features.
pub async fn connect<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    key: &ClusterKey,
    client: &str,
    service: Service,
    offered: Features,
) -> Result<Welcomed, WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let work = async {
        let hello: Hello = reader.recv().await?;
        if hello.magic != MAGIC {
            return Err(WireError::Handshake(RemoteError::new(ErrorCode::Protocol, "the peer is not a Tidepool pool")));
        }
        let nonce: [u8; 32] = random_bytes()?;
        let mac = key.mac(&[
            b"client",
            &hello.nonce,
            &nonce,
            service.tag(),
            client.as_bytes(),
            &hello.features.bytes(),
            &offered.bytes(),
        ]);
        let auth = ClientAuth {
            version: PROTOCOL_VERSION,
            client: client.to_string(),
            service,
            nonce,
            features: offered,
            mac: mac.finalize().into_bytes().into(),
        };
        writer.send(&auth).await?;
        match reader.recv::<HandshakeReply>().await? {
            HandshakeReply::Refused(err) => Err(WireError::Remote(err)),
            HandshakeReply::Welcome { mac } => {
                let features = hello.features.and(offered);
                let proof = key.mac(&[b"server", &nonce, &hello.nonce, &features.bytes()]);
                if proof.verify_slice(&mac).is_err() {
                    return Err(WireError::Handshake(RemoteError::new(
                        ErrorCode::AuthFailed,
                        format!("pool {} could not prove it holds our cluster key", hello.pool),
                    )));
                }
                Ok(Welcomed { pool: hello.pool, features })
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, work).await.map_err(|_| WireError::Timeout(HANDSHAKE_TIMEOUT))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::MAX_FRAME;

    async fn run(
        server_key: ClusterKey,
        client_key: ClusterKey,
    ) -> (Result<PeerInfo, WireError>, Result<Welcomed, WireError>) {
        offering(server_key, Features::ALL, client_key, Features::ALL).await
    }

    async fn offering(
        server_key: ClusterKey,
        server_offers: Features,
        client_key: ClusterKey,
        client_offers: Features,
    ) -> (Result<PeerInfo, WireError>, Result<Welcomed, WireError>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let server = async move {
            let mut r = FrameReader::new(ar, MAX_FRAME);
            let mut w = FrameWriter::new(aw);
            accept(&mut r, &mut w, &server_key, "pool1", Service::Admin, server_offers).await
        };
        let client = async move {
            let mut r = FrameReader::new(br, MAX_FRAME);
            let mut w = FrameWriter::new(bw);
            connect(&mut r, &mut w, &client_key, "shell", Service::Admin, client_offers).await
        };
        tokio::join!(server, client)
    }

    #[tokio::test]
    async fn same_key_is_accepted_both_ways() {
        let key = ClusterKey::generate().unwrap();
        let (s, c) = run(key.clone(), key).await;
        let s = s.unwrap();
        assert_eq!((s.name.as_str(), s.features), ("shell", Features::ALL));
        assert_eq!(c.unwrap(), Welcomed { pool: "pool1".into(), features: Features::ALL });
    }

    /// Both sides use only what both offered: an older build that lacks a feature is never sent
    /// it, and the newer side learns so in the handshake, not from an error later.
    #[tokio::test]
    async fn the_agreed_features_are_those_both_sides_offer() {
        let key = ClusterKey::generate().unwrap();
        let older = Features::ALL.without(Features::FETCH_SMALL);
        for (server, client) in [(Features::ALL, older), (older, Features::ALL), (Features::NONE, Features::ALL)] {
            let (s, c) = offering(key.clone(), server, key.clone(), client).await;
            let want = server.and(client);
            assert_eq!(s.unwrap().features, want);
            assert_eq!(c.unwrap().features, want);
            assert_eq!(
                want.contains(Features::FETCH_SMALL),
                server.contains(Features::FETCH_SMALL) && client.contains(Features::FETCH_SMALL)
            );
        }
    }

    /// Someone on the way who takes a feature out of the server's offer (to force a weaker
    /// exchange) is caught: the client's proof covers the offer it saw, and the server refuses.
    #[tokio::test]
    async fn an_offer_altered_on_the_way_fails_the_handshake() {
        let key = ClusterKey::generate().unwrap();
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let server_key = key.clone();
        let server = async move {
            let mut r = FrameReader::new(ar, MAX_FRAME);
            let mut w = FrameWriter::new(aw);
            accept(&mut r, &mut w, &server_key, "pool1", Service::Data, Features::ALL).await
        };
        let client = async move {
            let mut r = FrameReader::new(br, MAX_FRAME);
            let mut w = FrameWriter::new(bw);
            // The client side by hand, as if the Hello had been altered before it arrived.
            let mut hello: Hello = r.recv().await.unwrap();
            hello.features = Features::NONE;
            let nonce = [9u8; 32];
            let mac = key.mac(&[
                b"client",
                &hello.nonce,
                &nonce,
                Service::Data.tag(),
                b"pool2",
                &hello.features.bytes(),
                &Features::ALL.bytes(),
            ]);
            let auth = ClientAuth {
                version: PROTOCOL_VERSION,
                client: "pool2".into(),
                service: Service::Data,
                nonce,
                features: Features::ALL,
                mac: mac.finalize().into_bytes().into(),
            };
            w.send(&auth).await.unwrap();
            r.recv::<HandshakeReply>().await.unwrap()
        };
        let (s, reply) = tokio::join!(server, client);
        assert!(s.is_err());
        assert!(matches!(reply, HandshakeReply::Refused(_)), "{reply:?}");
    }

    #[tokio::test]
    async fn wrong_key_is_refused_with_a_clear_message() {
        let (s, c) = run(ClusterKey::generate().unwrap(), ClusterKey::generate().unwrap()).await;
        assert!(matches!(&s, Err(WireError::Handshake(e)) if e.code() == Some(ErrorCode::AuthFailed)), "{s:?}");
        let c = c.unwrap_err();
        assert!(matches!(&c, WireError::Remote(e) if e.code() == Some(ErrorCode::AuthFailed)), "{c:?}");
        // What the operator reads.
        let msg = c.to_string();
        assert!(msg.contains("authentication failed"), "{msg}");
    }

    #[test]
    fn key_text_round_trips() {
        let key = ClusterKey::generate().unwrap();
        let again = ClusterKey::parse(&key.to_file_text()).unwrap();
        assert_eq!(key.0, again.0);
        assert!(ClusterKey::parse("abc").is_err());
    }

    /// A peer that has not authenticated cannot make the pool read (or reserve room for) more
    /// than a handshake-sized frame: a header announcing 1 MiB is refused at once.
    #[tokio::test]
    async fn an_oversized_frame_before_authentication_is_refused_without_reserving_it() {
        let key = ClusterKey::generate().unwrap();
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ar, aw) = tokio::io::split(a);
        let (mut br, bw) = tokio::io::split(b);
        let mut r = FrameReader::new(ar, MAX_FRAME);
        let mut w = FrameWriter::new(aw);
        let hostile = async move {
            let mut c = FrameWriter::new(bw);
            let mut header = (1u32 << 20).to_be_bytes().to_vec();
            header.push(0);
            header.extend_from_slice(&[7u8; 1000]);
            c.send_raw(&header).await.unwrap();
            // Keep reading so the server's Hello never blocks; stop when the server hangs up.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut br, &mut sink).await;
            c
        };
        let server = async {
            let got = accept(&mut r, &mut w, &key, "pool1", Service::Admin, Features::ALL).await;
            // Hang up, as the pool does, so that the hostile side sees the end.
            w.shutdown().await.unwrap();
            got
        };
        let (got, _c) = tokio::join!(server, hostile);
        assert!(matches!(got, Err(WireError::Oversized { len: 1_048_576, max: MAX_HANDSHAKE_FRAME })), "{got:?}");
        assert!(r.buffer_capacity() <= 2 * (MAX_HANDSHAKE_FRAME + 4), "reserved {} bytes", r.buffer_capacity());
    }

    #[tokio::test]
    async fn the_frame_limit_is_restored_after_the_handshake() {
        let key = ClusterKey::generate().unwrap();
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let mut r = FrameReader::new(ar, MAX_FRAME);
        let mut w = FrameWriter::new(aw);
        let client_key = key.clone();
        let client = async move {
            let mut cr = FrameReader::new(br, MAX_FRAME);
            let mut cw = FrameWriter::new(bw);
            connect(&mut cr, &mut cw, &client_key, "shell", Service::Admin, Features::ALL).await
        };
        let (s, c) = tokio::join!(accept(&mut r, &mut w, &key, "pool1", Service::Admin, Features::ALL), client);
        assert_eq!((s.unwrap().name, c.unwrap().pool), ("shell".to_string(), "pool1".to_string()));
        assert_eq!(r.max(), MAX_FRAME);
    }

    #[tokio::test]
    async fn a_refusal_repeats_at_most_a_short_piece_of_the_clients_name() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let server_key = ClusterKey::generate().unwrap();
        let server = async move {
            let mut r = FrameReader::new(ar, MAX_FRAME);
            let mut w = FrameWriter::new(aw);
            accept(&mut r, &mut w, &server_key, "pool1", Service::Admin, Features::ALL).await
        };
        let client = async move {
            let mut r = FrameReader::new(br, MAX_FRAME);
            let mut w = FrameWriter::new(bw);
            connect(&mut r, &mut w, &ClusterKey::generate().unwrap(), &"n".repeat(3000), Service::Admin, Features::ALL)
                .await
        };
        let (s, c) = tokio::join!(server, client);
        assert!(s.is_err());
        let msg = c.unwrap_err().to_string();
        assert!(msg.starts_with("authentication failed: nnn"), "{msg}");
        assert!(msg.len() < 300, "{} bytes: {msg}", msg.len());
    }
}
