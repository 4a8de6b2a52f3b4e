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
    assert!(
        matches!(&err, tidepool_p2p::frame::WireError::Remote(e) if e.code() == Some(ErrorCode::Protocol)),
        "{err:?}"
    );
    // The refusal names the endpoint the client reached.
    assert!(err.to_string().contains("not Data"), "{err}");
    daemon.shutdown().await.unwrap();
}

/// A client that uploads with a storage class beyond the limit gets a clear refusal before any
/// data is asked for, and nothing is stored.
#[tokio::test]
async fn an_upload_with_an_over_long_storage_class_is_refused() {
    use tidepool_p2p::message::{CommitState, DataReply, DataRequest, PutRequest};
    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate().unwrap();
    let daemon = start(dir.path(), &key).await;
    let mut conn = Connection::open(daemon.data_addr(), &key, "test", Service::Data).await.unwrap();
    let put = |class: String| PutRequest {
        size: 0,
        storage_class: Some(class),
        cache_class: None,
        access_latency: None,
        retention_policy: None,
        hsm: None,
        state: CommitState::Cached,
        sticky: vec![],
    };
    conn.send(&DataRequest::Put(put("s".repeat(60_000)))).await.unwrap();
    match conn.recv::<DataReply>().await.unwrap() {
        DataReply::Error(e) => {
            assert_eq!(e.code(), Some(ErrorCode::InvalidArgument));
            assert!(e.message.starts_with("storage class too long: 60000 bytes, at most 256"), "{}", e.message);
            assert!(e.message.ends_with("; nothing stored") && e.message.len() < 200, "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(daemon.pool().repo.len(), 0, "nothing stored");
    // The same connection takes a good upload.
    conn.send(&DataRequest::Put(put("atlas:raw".into()))).await.unwrap();
    assert!(matches!(conn.recv::<DataReply>().await.unwrap(), DataReply::PutReady { .. }));
    daemon.shutdown().await.unwrap();
}

/// A listener holds at most `MAX_UNAUTHENTICATED` connections in their handshake; one more is
/// closed at once, before the pool says anything, and the places come back when those peers go.
#[tokio::test]
async fn connections_beyond_the_unauthenticated_limit_are_closed_at_once() {
    use tidepool_pool::admission::MAX_UNAUTHENTICATED;
    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate().unwrap();
    let daemon = start(dir.path(), &key).await;
    // Each silent client has its Hello: the pool holds it in its handshake.
    let mut silent = Vec::new();
    for _ in 0..MAX_UNAUTHENTICATED {
        let stream = TcpStream::connect(daemon.admin_addr()).await.unwrap();
        let mut reader = FrameReader::new(stream, MAX_FRAME);
        let _hello: Hello = reader.recv().await.unwrap();
        silent.push(reader);
    }
    let one_more = TcpStream::connect(daemon.admin_addr()).await.unwrap();
    let mut reader = FrameReader::new(one_more, MAX_FRAME);
    let closed = tokio::time::timeout(Duration::from_secs(2), reader.next()).await.expect("closed at once, not held");
    assert!(matches!(closed, Ok(None) | Err(_)), "no Hello for a connection over the limit: {closed:?}");
    // The data listener has places of its own.
    Connection::open(daemon.data_addr(), &key, "test", Service::Data).await.unwrap();
    drop(silent);
    // Once the silent peers are gone, a client logs in again (the pool notices each close).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Connection::open(daemon.admin_addr(), &key, "test", Service::Admin).await {
            Ok(_) => break,
            // Poll again after a pause (the pool frees a place when it sees a peer's close).
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("the admin listener did not take clients again: {e}"),
        }
    }
    daemon.shutdown().await.unwrap();
}

/// The shell asks for the commands with their details; the plain list (what an older shell
/// asks) is still answered, on the same connection, with the same commands.
#[tokio::test]
async fn commands_are_described_plain_and_in_detail() {
    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate().unwrap();
    let daemon = start(dir.path(), &key).await;
    let mut conn = Connection::open(daemon.admin_addr(), &key, "test", Service::Admin).await.unwrap();
    conn.send(&AdminRequest::DescribeDetails).await.unwrap();
    let details = match conn.recv::<AdminReply>().await.unwrap() {
        AdminReply::CommandDetails(json) => tidepool_p2p::message::decode_details(&json).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(details, tidepool_pool::admin::describe_details());
    let copy = details.iter().find(|c| c.name == "migration copy").expect("migration copy described");
    let state = copy.options.iter().find(|o| o.name == "state").expect("-state described");
    assert_eq!(state.takes, tidepool_p2p::message::Takes::Required);
    conn.send(&AdminRequest::Describe).await.unwrap();
    match conn.recv::<AdminReply>().await.unwrap() {
        AdminReply::Commands(plain) => {
            let names: Vec<&str> = plain.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names, details.iter().map(|c| c.name.as_str()).collect::<Vec<_>>());
        }
        other => panic!("{other:?}"),
    }
    daemon.shutdown().await.unwrap();
}
