//! Endpoint behaviour with a pool daemon running in-process on loopback port 0.

use std::time::{Duration, Instant};

use tidepool_p2p::auth::{HANDSHAKE_TIMEOUT, HandshakeReply, Hello, Service};
use tidepool_p2p::cluster::{ClusterFile, PoolEntry};
use tidepool_p2p::conn::Connection;
use tidepool_p2p::frame::{FrameReader, MAX_FRAME};
use tidepool_p2p::message::{AdminReply, AdminRequest};
use tidepool_p2p::tls::{ClientStream, Credentials, Role, testing};
use tidepool_p2p::{ErrorCode, PoolName};
use tidepool_pool::daemon::{Daemon, Settings};
use tokio::net::{TcpListener, TcpStream};

async fn start(dir: &std::path::Path) -> Daemon {
    start_with(dir, &[]).await
}

/// `pool1`, in a cluster file that also names `others` (at port 1 on loopback: offline).
async fn start_with(dir: &std::path::Path, others: &[&str]) -> Daemon {
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let data = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let name: PoolName = "pool1".parse().unwrap();
    let entry = |name: PoolName, p2p, admin| PoolEntry {
        name,
        p2p,
        admin,
        groups: vec!["disk".into()],
        tags: Default::default(),
        hsm: vec![],
    };
    let mut pools = vec![entry(name.clone(), data.local_addr().unwrap(), admin.local_addr().unwrap())];
    for other in others {
        let offline = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        pools.push(entry(other.parse().unwrap(), offline, offline));
    }
    let cluster = ClusterFile { pools, links: vec![] };
    let settings = Settings {
        name,
        data_dir: dir.to_path_buf(),
        capacity: 1 << 30,
        cluster,
        credentials: testing::pool("pool1"),
        pin_owner_prefix: "PinManager".into(),
        shutdown_grace: Duration::from_secs(5),
        transfers: Default::default(),
        migration: Default::default(),
        fault_points: Default::default(),
    };
    Daemon::start(settings, admin, data).await.unwrap()
}

fn admin() -> Credentials {
    testing::credentials(Role::Admin, "test")
}

fn client() -> Credentials {
    testing::credentials(Role::Client, "test")
}

/// A connection to `addr` past TLS, before the pool's handshake.
async fn tls_to(addr: std::net::SocketAddr) -> FrameReader<ClientStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (tls, _) = admin().connect(addr, stream).await.unwrap();
    FrameReader::new(tls, MAX_FRAME)
}

#[tokio::test]
async fn a_client_that_stalls_the_handshake_is_told_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path()).await;
    let mut reader = tls_to(daemon.admin_addr()).await;
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
    let mut conn = Connection::open(daemon.admin_addr(), &admin(), "test", Service::Admin).await.unwrap();
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
    let daemon = start(dir.path()).await;
    let err = Connection::open(daemon.admin_addr(), &admin(), "test", Service::Data).await.err().unwrap();
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
    let daemon = start(dir.path()).await;
    let mut conn = Connection::open(daemon.data_addr(), &client(), "test", Service::Data).await.unwrap();
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
    let daemon = start(dir.path()).await;
    // Each silent client has its Hello: the pool holds it in its handshake.
    let mut silent = Vec::new();
    for _ in 0..MAX_UNAUTHENTICATED {
        let mut reader = tls_to(daemon.admin_addr()).await;
        let _hello: Hello = reader.recv().await.unwrap();
        silent.push(reader);
    }
    let one_more = TcpStream::connect(daemon.admin_addr()).await.unwrap();
    let mut reader = FrameReader::new(one_more, MAX_FRAME);
    let closed = tokio::time::timeout(Duration::from_secs(2), reader.next()).await.expect("closed at once, not held");
    assert!(matches!(closed, Ok(None) | Err(_)), "no Hello for a connection over the limit: {closed:?}");
    // The data listener has places of its own.
    Connection::open(daemon.data_addr(), &client(), "test", Service::Data).await.unwrap();
    drop(silent);
    // Once the silent peers are gone, a client logs in again (the pool notices each close).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Connection::open(daemon.admin_addr(), &admin(), "test", Service::Admin).await {
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
    let daemon = start(dir.path()).await;
    let mut conn = Connection::open(daemon.admin_addr(), &admin(), "test", Service::Admin).await.unwrap();
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

/// Runs `line` on an admin connection: its output and its error, if any.
async fn admin_run(conn: &mut Connection, line: &str) -> (String, Option<tidepool_p2p::RemoteError>) {
    conn.send(&AdminRequest::Run { line: line.into() }).await.unwrap();
    finished(conn).await
}

/// Reads a command's replies up to its end.
async fn finished(conn: &mut Connection) -> (String, Option<tidepool_p2p::RemoteError>) {
    let mut text = String::new();
    loop {
        match conn.recv::<AdminReply>().await.unwrap() {
            AdminReply::Output(piece) => text.push_str(&piece),
            AdminReply::Finished { error } => return (text, error),
            other => panic!("{other:?}"),
        }
    }
}

/// `pp get file -wait` of a transfer that cannot start (incoming transfers paused) waits
/// without holding a thread: with one blocking thread in the whole runtime, another session's
/// `pp ls`, `rep ls` (which walks the repository on that thread) and `info` are answered
/// meanwhile, and `pp remove` ends the wait.
#[test]
fn a_waiting_command_holds_no_thread_and_other_sessions_go_on() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let daemon = start_with(dir.path(), &["pool2"]).await;
        let bound = Duration::from_secs(60);
        let mut waiting = Connection::open(daemon.admin_addr(), &admin(), "a", Service::Admin).await.unwrap();
        let mut other = Connection::open(daemon.admin_addr(), &admin(), "b", Service::Admin).await.unwrap();
        assert_eq!(admin_run(&mut waiting, "pp set max active 0").await.1, None);
        let line = "pp get file -wait 0000A1B2C3D4E5F60718293A4B5C6D7E8F90 pool2";
        waiting.send(&AdminRequest::Run { line: line.into() }).await.unwrap();

        // The transfer is queued: the other session sees it.
        let listed = tokio::time::timeout(bound, async {
            loop {
                let (text, error) = admin_run(&mut other, "pp ls").await;
                assert_eq!(error, None, "{text}");
                if let Some(row) = text.lines().find(|l| l.contains(" QUEUED ")) {
                    return row.to_string();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the transfer shows in `pp ls` while the other session waits");
        let id = listed.trim_start_matches('[').split(']').next().unwrap().to_string();

        // The listing runs on the one blocking thread: free, since the wait holds none.
        for line in ["rep ls", "rep ls -s", "info"] {
            let (text, error) = tokio::time::timeout(bound, admin_run(&mut other, line)).await.expect(line);
            assert_eq!(error, None, "{line}: {text}");
        }

        let (text, error) = admin_run(&mut other, &format!("pp remove {id}")).await;
        assert_eq!(error, None, "{text}");
        let (_, error) = tokio::time::timeout(bound, finished(&mut waiting)).await.expect("the wait ends");
        assert!(error.is_some(), "a cancelled transfer is a failed `pp get file -wait`");
        daemon.shutdown().await.unwrap();
    });
}

/// What `rebalance` uses to run a line on another pool: over the peer-connection layer, the
/// output and the pool's refusal typed apart; a pool that refuses the certificate, or is not in
/// the cluster file, is a typed failure with its code.
#[tokio::test]
async fn a_line_runs_on_another_pool_over_the_peer_layer() {
    use tidepool_pool::admin::remote::{PeerError, Pools};

    let dir = tempfile::tempdir().unwrap();
    // pool9 is in pool1's cluster file (offline), so its certificate is admitted.
    let daemon = start_with(dir.path(), &["pool9"]).await;
    let cluster = daemon.pool().cluster.get();
    let pool1: PoolName = "pool1".parse().unwrap();
    let pools = Pools::new(cluster.clone(), testing::pool("pool9"), "pool9/rebalance".into(), Duration::from_secs(30));

    let (text, refused) = pools.run(&pool1, "migration ls -json").await.unwrap();
    assert_eq!(refused, None, "{text}");
    assert!(text.trim_start().starts_with('['), "the jobs as JSON: {text}");
    // A pool's certificate runs only rebalance's migration lines on another pool.
    let (_, refused) = pools.run(&pool1, "pp set max active 3").await.unwrap();
    assert_eq!(refused.and_then(|e| e.code()), Some(ErrorCode::Forbidden));
    let (text, refused) = pools.run(&pool1, "migration cancel -force rebalance").await.unwrap();
    assert_eq!(text, "");
    assert_eq!(refused.and_then(|e| e.code()), Some(ErrorCode::JobNotFound));
    assert!(matches!(pools.run(&"pool7".parse().unwrap(), "info").await, Err(PeerError::UnknownPool(_))));

    // A certificate from another CA.
    let foreign = testing::stranger(Role::Pool, "pool9");
    let stranger = Pools::new(cluster, foreign, "pool9/rebalance".into(), Duration::from_secs(30));
    match stranger.run(&pool1, "info").await {
        Err(e @ PeerError::Refused { .. }) => assert_eq!(e.code(), ErrorCode::AuthFailed, "{e}"),
        other => panic!("{other:?}"),
    }
    daemon.shutdown().await.unwrap();
}
