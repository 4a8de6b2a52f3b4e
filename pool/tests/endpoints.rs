//! Endpoint behaviour with a pool daemon running in-process on loopback port 0.

use std::time::{Duration, Instant};

use tidepool_p2p::auth::{ClusterKey, HANDSHAKE_TIMEOUT, HandshakeReply, Hello, Service};
use tidepool_p2p::cluster::{ClusterFile, PoolEntry};
use tidepool_p2p::conn::Connection;
use tidepool_p2p::frame::{FrameReader, MAX_FRAME};
use tidepool_p2p::message::{AdminReply, AdminRequest};
use tidepool_p2p::{ErrorCode, PoolName};
use tidepool_pool::daemon::{Daemon, Settings};
use tokio::net::{TcpListener, TcpStream};

async fn start(dir: &std::path::Path, key: &ClusterKey) -> Daemon {
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let data = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let name: PoolName = "pool1".parse().unwrap();
    let cluster = ClusterFile {
        pools: vec![PoolEntry {
            name: name.clone(),
            p2p: data.local_addr().unwrap(),
            admin: admin.local_addr().unwrap(),
            groups: vec!["disk".into()],
            tags: Default::default(),
            hsm: vec![],
        }],
        links: vec![],
    };
    let settings = Settings {
        name,
        data_dir: dir.to_path_buf(),
        capacity: 1 << 30,
        cluster,
        key: key.clone(),
        pin_owner_prefix: "PinManager".into(),
        shutdown_grace: Duration::from_secs(5),
        transfers: Default::default(),
        migration: Default::default(),
        fault_points: Default::default(),
    };
    Daemon::start(settings, admin, data).await.unwrap()
}

#[tokio::test]
async fn a_client_that_stalls_the_handshake_is_told_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate().unwrap();
    let daemon = start(dir.path(), &key).await;
    let stream = TcpStream::connect(daemon.admin_addr()).await.unwrap();
    let mut reader = FrameReader::new(stream, MAX_FRAME);
    let started = Instant::now();
    let _hello: Hello = reader.recv().await.unwrap();
    // Say nothing; the pool gives up after its handshake timeout and says why.
    let reply = tokio::time::timeout(HANDSHAKE_TIMEOUT * 2, reader.recv::<HandshakeReply>()).await.unwrap().unwrap();
    match reply {
        HandshakeReply::Refused(e) => {
            assert_eq!(e.code(), Some(ErrorCode::Timeout));
            assert!(e.message.contains("handshake not finished"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= HANDSHAKE_TIMEOUT);
    assert!(reader.next().await.map(|f| f.is_none()).unwrap_or(true), "then the connection is closed");

    // The pool still serves a well-behaved client.
    let mut conn = Connection::open(daemon.admin_addr(), &key, "test", Service::Admin).await.unwrap();
    conn.send(&AdminRequest::Run { line: "info".into() }).await.unwrap();
    match conn.recv::<AdminReply>().await.unwrap() {
        AdminReply::Output(text) => assert!(text.contains("Pool name      : pool1"), "{text}"),
        other => panic!("{other:?}"),
    }
    daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wrong_service_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate().unwrap();
    let daemon = start(dir.path(), &key).await;
    let err = Connection::open(daemon.admin_addr(), &key, "test", Service::Data).await.err().unwrap();
    assert!(err.to_string().contains("not Data"), "{err}");
    daemon.shutdown().await.unwrap();
}
