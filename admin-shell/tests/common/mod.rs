//! A tiny fake pool admin endpoint for the shell's tests, speaking the real handshake and
//! framing from `tidepool-p2p`.
//!
//! It answers `Describe` with a fixed command list and `Run { line }` by echoing the line
//! (in two chunks, the second without its newline), except:
//! `fail` finishes with a remote error; `hang` never answers; `stream N` sends N one-line
//! chunks. [`FakePool::hangup`] makes it close an idle connection, as a restarted pool would.

#![allow(dead_code)] // each test file uses a different part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tidepool_p2p::auth::{Features, Service};
use tidepool_p2p::cluster::{ClusterFile, PoolEntry};
use tidepool_p2p::frame::{Frame, FrameWriter, WireError, decode};
use tidepool_p2p::message::{
    AdminReply, AdminRequest, ArgDetail, CommandDescription, CommandDetail, Takes, Values, encode_details,
};
use tidepool_p2p::tls::{Authority, Credentials, Role, ServerStream, testing};
use tidepool_p2p::{ErrorCode, PoolName, RemoteError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

pub const FAIL_MESSAGE: &str = "fail was told to fail";

/// Counters the tests assert on.
#[derive(Default)]
pub struct Counts {
    pub connections: AtomicUsize,
    pub describes: AtomicUsize,
    pub detail_requests: AtomicUsize,
    /// Act as a pool older than `DescribeDetails`: offer no `COMMAND_DETAILS` in the handshake,
    /// and answer the request, if it comes anyway, with a protocol error and hang up.
    pub old: std::sync::atomic::AtomicBool,
}

pub struct FakePool {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    /// Tells the pool to close its idle connection.
    pub hangup: Arc<Notify>,
    /// One message each time the pool closed a connection after a hangup.
    pub closed: mpsc::UnboundedReceiver<()>,
}

/// Starts a fake pool called `name` on 127.0.0.1:0 in the current runtime, with a pool
/// certificate for `name` from the test CA.
pub async fn start(name: &str) -> FakePool {
    start_as(testing::pool(name), name).await
}

/// As [`start`], with these credentials.
pub async fn start_as(key: Credentials, name: &str) -> FakePool {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake pool");
    let addr = listener.local_addr().expect("fake pool address");
    let counts = Arc::new(Counts::default());
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let hangup = Arc::new(Notify::new());
    let (name, server_counts, server_hangup) = (name.to_string(), counts.clone(), hangup.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            server_counts.connections.fetch_add(1, Ordering::SeqCst);
            let (key, name) = (key.clone(), name.clone());
            let ends = Ends { counts: server_counts.clone(), hangup: server_hangup.clone(), closed: closed_tx.clone() };
            tokio::spawn(async move {
                let _ = serve(stream, key, name, ends).await;
            });
        }
    });
    FakePool { addr, counts, hangup, closed }
}

/// What a connection shares with the test.
struct Ends {
    counts: Arc<Counts>,
    hangup: Arc<Notify>,
    closed: mpsc::UnboundedSender<()>,
}

async fn serve(stream: TcpStream, key: Credentials, name: String, ends: Ends) -> Result<(), WireError> {
    let offered = if ends.counts.old.load(Ordering::SeqCst) {
        Features::ALL.without(Features::COMMAND_DETAILS)
    } else {
        Features::ALL
    };
    let ((mut reader, mut writer), _) = testing::accept(&key, stream, &name, Service::Admin, offered).await?;
    loop {
        // `FrameReader::next` is cancel-safe.
        let frame = tokio::select! {
            frame = reader.next() => frame?,
            () = ends.hangup.notified() => {
                drop((reader, writer));
                let _ = ends.closed.send(());
                return Ok(());
            }
        };
        let Some(Frame::Message(body)) = frame else {
            return Ok(());
        };
        match decode::<AdminRequest>(&body)? {
            AdminRequest::Describe => {
                ends.counts.describes.fetch_add(1, Ordering::SeqCst);
                writer.send(&AdminReply::Commands(commands())).await?;
            }
            AdminRequest::DescribeDetails => {
                ends.counts.detail_requests.fetch_add(1, Ordering::SeqCst);
                if ends.counts.old.load(Ordering::SeqCst) {
                    let error = RemoteError::new(ErrorCode::Protocol, "malformed message; closing the connection");
                    writer.send(&AdminReply::Finished { error: Some(error) }).await?;
                    return Ok(());
                }
                writer.send(&AdminReply::CommandDetails(encode_details(&details()))).await?;
            }
            AdminRequest::Run { line } => answer(&mut writer, &line).await?,
        }
    }
}

/// Answers one line.
async fn answer(writer: &mut FrameWriter<tokio::io::WriteHalf<ServerStream>>, line: &str) -> Result<(), WireError> {
    let finished = |error| AdminReply::Finished { error };
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["fail"] => {
            let error = RemoteError::new(ErrorCode::InvalidArgument, FAIL_MESSAGE);
            writer.send(&finished(Some(error))).await?;
        }
        ["hang"] => std::future::pending::<()>().await,
        ["stream", n] => {
            let n: usize = n.parse().unwrap_or(0);
            for i in 0..n {
                writer.send(&AdminReply::Output(format!("line {i}\n"))).await?;
            }
            writer.send(&finished(None)).await?;
        }
        _ => {
            writer.send(&AdminReply::Output("echo: ".into())).await?;
            writer.send(&AdminReply::Output(line.to_string())).await?;
            writer.send(&finished(None)).await?;
        }
    }
    Ok(())
}

pub fn commands() -> Vec<CommandDescription> {
    let command = |name: &str, options: &[&str]| CommandDescription {
        name: name.into(),
        summary: format!("{name} does things"),
        options: options.iter().map(|o| o.to_string()).collect(),
    };
    vec![command("rep ls", &["l", "s"]), command("rep set sticky", &["o"]), command("info", &[])]
}

/// What the fake pool answers to `DescribeDetails`: [`commands`] with values and arguments.
pub fn details() -> Vec<CommandDetail> {
    let mut details: Vec<CommandDetail> = commands().iter().map(CommandDetail::from).collect();
    details[0].options[0].takes = Takes::Required;
    details[0].options[1].takes = Takes::Optional;
    details[0].options[1].values = Values::OneOf { words: vec!["b".into(), "k".into()], continues: false };
    details[0].args = vec![ArgDetail { name: "pnfsid".into(), values: Values::PnfsId, repeats: true }];
    details
}

/// An address where nothing listens: bound once, then released.
pub fn dead_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to release");
    listener.local_addr().expect("released address")
}

pub fn pool_name(name: &str) -> PoolName {
    name.parse().expect("valid pool name in test")
}

/// A cluster file with `pools` as (name, admin address, groups).
pub fn cluster(pools: &[(&str, SocketAddr, &[&str])]) -> ClusterFile {
    let pools = pools
        .iter()
        .enumerate()
        .map(|(i, (name, admin, groups))| PoolEntry {
            name: pool_name(name),
            p2p: SocketAddr::from(([127, 0, 0, 1], 1 + i as u16)),
            admin: *admin,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            tags: BTreeMap::new(),
            hsm: Vec::new(),
        })
        .collect();
    ClusterFile { pools, links: Vec::new() }
}

/// Admin credentials from the test CA.
pub fn key() -> Credentials {
    testing::credentials(Role::Admin, "shell")
}

/// Another CA, and admin credentials from it that trust the test CA: a pool of the test CA
/// refuses them.
pub fn stranger() -> (Authority, Credentials) {
    let other = Authority::new("another CA", time::OffsetDateTime::now_utc() + time::Duration::days(1)).unwrap();
    let issued = other.issue(Role::Admin, "shell", 1).unwrap();
    let ca = testing::authority().cert_pem();
    let creds = Credentials::from_pem(
        ("cert", issued.cert_pem.as_bytes()),
        ("key", issued.key_pem.as_bytes()),
        &[("ca", ca.as_bytes())],
        &[],
    )
    .unwrap();
    (other, creds)
}
