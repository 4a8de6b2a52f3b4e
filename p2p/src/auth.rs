//! The handshake every connection starts with, inside TLS (`tls.rs`).
//!
//! ```text
//! TLS 1.3, certificates on both sides: the pool learns the peer's Identity (role, name),
//!                                      the peer learns the pool's
//! server -> client  Hello       { magic, version, pool, service, server features }
//! client -> server  ClientAuth  { version, client name, service, client features }
//! server -> client  Welcome
//!                or Refused     { error }
//! ```
//! TLS authenticates both sides and protects every byte after it, so the handshake no longer
//! carries MACs: it agrees on the protocol version and the optional parts of the protocol
//! ([`Features`]; both sides use those both offered; nobody on the way can alter the offers
//! without breaking TLS), and the pool decides whether the peer's role may use this endpoint
//! under the name it gives ([`permitted`], plus the caller's own check, `admit`). The server
//! gives the client a bounded time to finish, and reads no frame longer than
//! [`MAX_HANDSHAKE_FRAME`] until the client is admitted; a refused client is dropped with a
//! warning on the pool (rate-limited there) and a clear `Refused` message on the client.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{ErrorCode, RemoteError};
use crate::frame::{FrameReader, FrameWriter, MAX_HANDSHAKE_FRAME, WireError};
use crate::identity::{Identity, Role};

/// The protocol version this build speaks. Bumped on any incompatible message change; an
/// optional addition is a new [`Features`] bit instead. Version 4: inside TLS, no MACs.
pub const PROTOCOL_VERSION: u16 = 4;
/// The first bytes of every conversation, so a stray client is recognised at once.
pub const MAGIC: [u8; 8] = *b"TIDEPOOL";
/// How long a peer may take to finish the handshake (TLS and ours, each).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

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
}

/// The endpoint a client wants; a pool answers each on its own listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Service {
    /// Admin commands from the shell.
    Admin,
    /// Replica data: client put/get and pool-to-pool transfers.
    Data,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 8],
    pub version: u16,
    pub pool: String,
    pub service: Service,
    pub features: Features,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ClientAuth {
    pub version: u16,
    pub client: String,
    pub service: Service,
    pub features: Features,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum HandshakeReply {
    Welcome,
    Refused(RemoteError),
}

/// What the server learned about an admitted client.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The name the client gave in the handshake (for a pool, its certificate's name).
    pub name: String,
    /// Who the client's certificate says it is.
    pub identity: Identity,
    /// The features both sides offered.
    pub features: Features,
}

/// What the client learned about the pool it connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcomed {
    /// The pool's name as it introduced itself (the caller checks it against the certificate).
    pub pool: String,
    /// The features both sides offered.
    pub features: Features,
}

/// How much of a client's self-chosen name a refusal repeats.
const MAX_NAME_ECHO: usize = 64;

/// Whether `identity` may use `service` under the name `claimed` (`docs/security.md`,
/// "Roles"): the admin endpoint takes admins and pools (a pool's `rebalance` drives other
/// pools); the data endpoint takes clients and pools; a pool only under its certificate's
/// name.
pub fn permitted(service: Service, identity: &Identity, claimed: &str) -> Result<(), RemoteError> {
    let forbidden = |msg: String| Err(RemoteError::new(ErrorCode::Forbidden, msg));
    match (service, identity.role) {
        (Service::Admin, Role::Client) => {
            forbidden(format!("{identity} may not run admin commands: a client certificate may only put and get"))
        }
        (Service::Data, Role::Admin) => forbidden(format!(
            "{identity} may not use the data endpoint: an admin certificate runs admin commands only"
        )),
        (Service::Admin, Role::Pool)
            if claimed != identity.name
                && claimed.strip_prefix(identity.name.as_str()).is_none_or(|r| !r.starts_with('/')) =>
        {
            let claimed = crate::error::truncate_echo(claimed, MAX_NAME_ECHO);
            forbidden(format!("{identity} may not speak as {claimed}: a pool speaks only under its certificate's name"))
        }
        (Service::Data, Role::Pool) if claimed != identity.name => {
            let claimed = crate::error::truncate_echo(claimed, MAX_NAME_ECHO);
            forbidden(format!(
                "{identity} may not speak as pool {claimed}: a pool speaks only under its certificate's name"
            ))
        }
        _ => Ok(()),
    }
}

/// Runs the server side of the handshake within [`HANDSHAKE_TIMEOUT`], for a peer whose
/// certificate says it is `peer`. The client is refused unless [`permitted`] and `admit`
/// (the caller's own check, e.g. that a pool is in the cluster file) agree. Until the client
/// is admitted the reader's frame limit is [`MAX_HANDSHAKE_FRAME`]; on success the caller's
/// limit is restored.
#[allow(clippy::too_many_arguments)]
pub async fn accept<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    pool: &str,
    service: Service,
    offered: Features,
    peer: &Identity,
    admit: impl FnOnce(&Identity, &str) -> Result<(), RemoteError>,
) -> Result<PeerInfo, WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let limit = reader.max();
    reader.set_max(limit.min(MAX_HANDSHAKE_FRAME));
    let work = async {
        let hello =
            Hello { magic: MAGIC, version: PROTOCOL_VERSION, pool: pool.to_string(), service, features: offered };
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
        if let Err(err) = permitted(service, peer, &auth.client).and_then(|()| admit(peer, &auth.client)) {
            writer.send(&HandshakeReply::Refused(err.clone())).await?;
            return Err(WireError::Handshake(err));
        }
        let features = offered.and(auth.features);
        writer.send(&HandshakeReply::Welcome).await?;
        Ok(PeerInfo { name: auth.client, identity: peer.clone(), features })
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
        let auth = ClientAuth { version: PROTOCOL_VERSION, client: client.to_string(), service, features: offered };
        writer.send(&auth).await?;
        match reader.recv::<HandshakeReply>().await? {
            HandshakeReply::Refused(err) => Err(WireError::Remote(err)),
            HandshakeReply::Welcome => Ok(Welcomed { pool: hello.pool, features: hello.features.and(offered) }),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, work).await.map_err(|_| WireError::Timeout(HANDSHAKE_TIMEOUT))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::MAX_FRAME;

    fn id(role: Role, name: &str) -> Identity {
        Identity { role, name: name.into() }
    }

    fn anyone(_: &Identity, _: &str) -> Result<(), RemoteError> {
        Ok(())
    }

    async fn offering(
        service: Service,
        peer: Identity,
        client: &str,
        server_offers: Features,
        client_offers: Features,
    ) -> (Result<PeerInfo, WireError>, Result<Welcomed, WireError>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let server = async move {
            let mut r = FrameReader::new(ar, MAX_FRAME);
            let mut w = FrameWriter::new(aw);
            accept(&mut r, &mut w, "pool1", service, server_offers, &peer, anyone).await
        };
        let client = async move {
            let mut r = FrameReader::new(br, MAX_FRAME);
            let mut w = FrameWriter::new(bw);
            connect(&mut r, &mut w, client, service, client_offers).await
        };
        tokio::join!(server, client)
    }

    #[tokio::test]
    async fn an_admin_is_welcomed_on_the_admin_endpoint() {
        let (s, c) = offering(Service::Admin, id(Role::Admin, "alice"), "shell", Features::ALL, Features::ALL).await;
        let s = s.unwrap();
        assert_eq!((s.name.as_str(), s.features, s.identity.role), ("shell", Features::ALL, Role::Admin));
        assert_eq!(c.unwrap(), Welcomed { pool: "pool1".into(), features: Features::ALL });
    }

    /// Both sides use only what both offered: an older build that lacks a feature is never sent
    /// it, and the newer side learns so in the handshake, not from an error later.
    #[tokio::test]
    async fn the_agreed_features_are_those_both_sides_offer() {
        let older = Features::ALL.without(Features::FETCH_SMALL);
        for (server, client) in [(Features::ALL, older), (older, Features::ALL), (Features::NONE, Features::ALL)] {
            let (s, c) = offering(Service::Data, id(Role::Pool, "pool2"), "pool2", server, client).await;
            let want = server.and(client);
            assert_eq!(s.unwrap().features, want);
            assert_eq!(c.unwrap().features, want);
        }
    }

    /// Each row: the endpoint, the certificate, the name given, whether it is admitted.
    #[tokio::test]
    async fn roles_are_admitted_to_their_endpoints_only() {
        let rows = [
            (Service::Admin, Role::Admin, "alice", true),
            (Service::Admin, Role::Pool, "pool2/rebalance", true),
            (Service::Admin, Role::Pool, "pool2", true),
            (Service::Admin, Role::Pool, "pool3/rebalance", false),
            (Service::Admin, Role::Pool, "pool22/rebalance", false),
            (Service::Admin, Role::Client, "bob", false),
            (Service::Data, Role::Client, "bob", true),
            (Service::Data, Role::Admin, "alice", false),
            (Service::Data, Role::Pool, "pool2", true),
            (Service::Data, Role::Pool, "pool3", false),
        ];
        for (service, role, claimed, admitted) in rows {
            let cert_name = if role == Role::Pool { "pool2" } else { claimed };
            let (s, c) = offering(service, id(role, cert_name), claimed, Features::ALL, Features::ALL).await;
            assert_eq!(s.is_ok(), admitted, "{service:?} {role} {claimed}");
            match c {
                Ok(_) => assert!(admitted),
                Err(WireError::Remote(e)) => {
                    assert!(!admitted);
                    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e:?}");
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// A peer that has not been admitted cannot make the pool read (or reserve room for) more
    /// than a handshake-sized frame: a header announcing 1 MiB is refused at once.
    #[tokio::test]
    async fn an_oversized_frame_before_admission_is_refused_without_reserving_it() {
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
        let peer = id(Role::Admin, "alice");
        let server = async {
            let got = accept(&mut r, &mut w, "pool1", Service::Admin, Features::ALL, &peer, anyone).await;
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
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let mut r = FrameReader::new(ar, MAX_FRAME);
        let mut w = FrameWriter::new(aw);
        let client = async move {
            let mut cr = FrameReader::new(br, MAX_FRAME);
            let mut cw = FrameWriter::new(bw);
            connect(&mut cr, &mut cw, "shell", Service::Admin, Features::ALL).await
        };
        let peer = id(Role::Admin, "alice");
        let (s, c) =
            tokio::join!(accept(&mut r, &mut w, "pool1", Service::Admin, Features::ALL, &peer, anyone), client);
        assert_eq!((s.unwrap().name, c.unwrap().pool), ("shell".to_string(), "pool1".to_string()));
        assert_eq!(r.max(), MAX_FRAME);
    }

    #[tokio::test]
    async fn a_refusal_repeats_at_most_a_short_piece_of_the_clients_name() {
        let long = "n".repeat(3000);
        let (s, c) = offering(Service::Data, id(Role::Pool, "pool2"), &long, Features::ALL, Features::ALL).await;
        assert!(s.is_err());
        let msg = c.unwrap_err().to_string();
        assert!(msg.contains("may not speak as pool nnn"), "{msg}");
        assert!(msg.len() < 400, "{} bytes: {msg}", msg.len());
    }
}
