//! The migration transport against a tiny in-process pool that speaks the handshake and
//! answers (or does not) as each test needs.

use std::net::SocketAddr;
use std::time::Duration;

use tidepool_migration::env::Unanswered;
use tidepool_p2p::auth::{Features, Service};
use tidepool_p2p::cluster::{ClusterFile, PoolEntry};
use tidepool_p2p::message::{DataReply, DataRequest, MigrationReply, MigrationRequest, PoolCost};
use tidepool_p2p::tls::{Authority, Credentials, Role, testing};
use tidepool_p2p::{ErrorCode, PnfsId, PoolName, RemoteError};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::Peers;

/// How the test server reports a file it says it holds.
fn held(pnfsid: PnfsId) -> tidepool_p2p::message::Held {
    tidepool_p2p::message::Held {
        pnfsid,
        state: tidepool_p2p::model::ReplicaState::Cached,
        sticky: Vec::new(),
        checksum: None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    /// Answers every request.
    Answer,
    /// Answers one request, then closes the connection.
    AnswerOnce,
    /// Reads requests and never answers.
    Silent,
    /// Answers with a data-service error, as a pool that cannot read the request does.
    Refuse,
}

#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A client passed the handshake, under this name.
    Connected(String),
    /// The server closed a connection.
    Closed,
}

/// A pool named `name` on a loopback port; reports what happens on `Event`s.
async fn server(
    key: Credentials,
    name: &'static str,
    behaviour: Behaviour,
) -> (SocketAddr, mpsc::UnboundedReceiver<Event>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (tx, key) = (tx.clone(), key.clone());
            tokio::spawn(async move {
                let accepted = testing::accept(&key, stream, name, Service::Data, Features::ALL).await;
                let Ok(((mut reader, mut writer), peer)) = accepted else {
                    return;
                };
                let _ = tx.send(Event::Connected(peer.name));
                while let Ok(req) = reader.recv::<DataRequest>().await {
                    let reply = match (behaviour, req) {
                        (Behaviour::Silent, _) => continue,
                        (Behaviour::Refuse, _) => {
                            DataReply::Error(RemoteError::new(ErrorCode::Protocol, "malformed frame; closing"))
                        }
                        (_, DataRequest::Migration(MigrationRequest::Locate { pnfsids })) => {
                            DataReply::Migration(MigrationReply::Located {
                                held: pnfsids.into_iter().map(held).collect(),
                            })
                        }
                        (_, _) => DataReply::Migration(MigrationReply::Ack),
                    };
                    if writer.send(&reply).await.is_err() || behaviour != Behaviour::Answer {
                        break;
                    }
                }
                drop((reader, writer));
                let _ = tx.send(Event::Closed);
            });
        }
    });
    (addr, rx)
}

fn pool(name: &str) -> PoolName {
    name.parse().unwrap()
}

fn cluster(pools: &[(&str, SocketAddr)]) -> ClusterFile {
    let pools = pools
        .iter()
        .enumerate()
        .map(|(i, (name, p2p))| PoolEntry {
            name: pool(name),
            p2p: *p2p,
            admin: SocketAddr::from(([127, 0, 0, 2], 1000 + i as u16)),
            groups: vec![],
            tags: Default::default(),
            hsm: vec![],
        })
        .collect();
    ClusterFile { pools, links: vec![] }
}

fn id(n: u8) -> PnfsId {
    let mut b = [0u8; 16];
    b[15] = n;
    PnfsId::from_random(b)
}

fn locate(ids: &[PnfsId]) -> MigrationRequest {
    MigrationRequest::Locate { pnfsids: ids.to_vec() }
}

/// An address nobody listens on.
async fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn requests_run_side_by_side_and_reuse_kept_connections() {
    let (addr, mut events) = server(testing::pool("pool2"), "pool2", Behaviour::Answer).await;
    let peers =
        Peers::new(pool("pool1"), testing::pool("pool1"), &cluster(&[("pool2", addr)]), Duration::from_secs(30));
    let to = pool("pool2");
    // Two at once: each on its own connection, each reply to its own request.
    let (a, b) = tokio::join!(peers.request(&to, locate(&[id(1)])), peers.request(&to, locate(&[id(2), id(3)])));
    assert_eq!(a, Ok(MigrationReply::Located { held: vec![held(id(1))] }));
    assert_eq!(b, Ok(MigrationReply::Located { held: vec![held(id(2)), held(id(3))] }));
    assert_eq!(peers.connections_opened(), 2);
    // Then one after another on the kept ones: no new handshake.
    for n in 0..5 {
        assert_eq!(peers.request(&to, locate(&[id(n)])).await, Ok(MigrationReply::Located { held: vec![held(id(n))] }));
    }
    assert_eq!(peers.request(&to, MigrationRequest::PoolInfo { job: None }).await, Ok(MigrationReply::Ack));
    assert_eq!(peers.connections_opened(), 2);
    assert_eq!(peers.idle_count(&to), 2);
    // The server knows the asking pool by its authenticated name.
    assert_eq!(events.recv().await, Some(Event::Connected("pool1".into())));
    assert_eq!(events.recv().await, Some(Event::Connected("pool1".into())));
    assert!(events.try_recv().is_err());
}

#[tokio::test]
async fn an_unknown_pool_a_dead_address_or_an_impostor_is_not_delivered() {
    let (impostor, _events) = server(testing::pool("pool4"), "pool4", Behaviour::Answer).await;
    let other_ca = Authority::new("another CA", time::OffsetDateTime::now_utc() + time::Duration::days(1)).unwrap();
    let (other_ca, _other) =
        server(other_ca.credentials(Role::Pool, "pool5").unwrap(), "pool5", Behaviour::Answer).await;
    let dead = dead_address().await;
    let cluster = cluster(&[("pool2", dead), ("pool3", impostor), ("pool5", other_ca)]);
    let peers = Peers::new(pool("pool1"), testing::pool("pool1"), &cluster, Duration::from_secs(30));
    assert_eq!(
        peers.request(&pool("pool9"), MigrationRequest::PoolInfo { job: None }).await,
        Err(Unanswered::NotDelivered)
    );
    assert_eq!(peers.connections_opened(), 0, "nothing to connect to");
    assert_eq!(
        peers.request(&pool("pool2"), MigrationRequest::PoolInfo { job: None }).await,
        Err(Unanswered::NotDelivered)
    );
    // The pool at pool3's address calls itself pool4.
    assert_eq!(
        peers.request(&pool("pool3"), MigrationRequest::PoolInfo { job: None }).await,
        Err(Unanswered::NotDelivered)
    );
    // A certificate from a CA we do not trust: TLS fails.
    assert_eq!(
        peers.request(&pool("pool5"), MigrationRequest::PoolInfo { job: None }).await,
        Err(Unanswered::NotDelivered)
    );
    assert_eq!(peers.connections_opened(), 3);
    for p in ["pool2", "pool3", "pool5"] {
        assert_eq!(peers.idle_count(&pool(p)), 0);
    }
}

#[tokio::test]
async fn a_pool_that_never_answers_gives_no_answer_and_its_connection_is_dropped() {
    let (addr, mut events) = server(testing::pool("pool2"), "pool2", Behaviour::Silent).await;
    let peers =
        Peers::new(pool("pool1"), testing::pool("pool1"), &cluster(&[("pool2", addr)]), Duration::from_millis(200));
    let to = pool("pool2");
    let ping = MigrationRequest::Ping { attempt: tidepool_p2p::AttemptId(7) };
    assert_eq!(peers.request(&to, ping.clone()).await, Err(Unanswered::NoAnswer));
    assert_eq!(peers.idle_count(&to), 0, "a connection that may still carry the late reply is not kept");
    assert_eq!(peers.request(&to, ping).await, Err(Unanswered::NoAnswer));
    assert_eq!(peers.connections_opened(), 2);
    assert_eq!(events.recv().await, Some(Event::Connected("pool1".into())));
}

#[tokio::test]
async fn a_kept_connection_the_pool_has_closed_is_replaced_before_the_request_is_written() {
    let (addr, mut events) = server(testing::pool("pool2"), "pool2", Behaviour::AnswerOnce).await;
    let peers =
        Peers::new(pool("pool1"), testing::pool("pool1"), &cluster(&[("pool2", addr)]), Duration::from_secs(30));
    let to = pool("pool2");
    assert_eq!(peers.request(&to, MigrationRequest::PoolInfo { job: None }).await, Ok(MigrationReply::Ack));
    assert_eq!(peers.idle_count(&to), 1);
    assert_eq!(events.recv().await, Some(Event::Connected("pool1".into())));
    assert_eq!(events.recv().await, Some(Event::Closed));
    // This side learns of the close through the reactor; until it has, the kept connection
    // still looks open. Once it has, the dialer drops it instead of handing it out.
    while let Some(conn) = peers.dialer().take_idle(&to).await {
        peers.dialer().give_back(&to, conn);
        tokio::task::yield_now().await;
    }
    assert_eq!(peers.request(&to, MigrationRequest::PoolInfo { job: None }).await, Ok(MigrationReply::Ack));
    assert_eq!(peers.connections_opened(), 2);
    assert_eq!(events.recv().await, Some(Event::Connected("pool1".into())));
}

#[tokio::test]
async fn a_pool_that_cannot_read_the_request_answers_with_its_error() {
    let (addr, _events) = server(testing::pool("pool2"), "pool2", Behaviour::Refuse).await;
    let peers =
        Peers::new(pool("pool1"), testing::pool("pool1"), &cluster(&[("pool2", addr)]), Duration::from_secs(30));
    let to = pool("pool2");
    match peers.request(&to, MigrationRequest::PoolInfo { job: None }).await {
        Ok(MigrationReply::Error(e)) => assert_eq!(e.code(), Some(ErrorCode::Protocol)),
        other => panic!("expected the pool's error, got {other:?}"),
    }
    assert_eq!(peers.idle_count(&to), 0, "the pool closes such a connection");
}

/// Pools run by daemons in this process, on loopback.
mod daemons {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use tidepool_migration::env::{Env, EnvError, Pull};
    use tidepool_p2p::conn::Connection;
    use tidepool_p2p::model::{PoolMode, ReplicaState, StickyRecord};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::node::Node;
    use crate::pool::{Activity, ModeRefused, ModeState};
    use crate::repository::RepoError;
    use crate::transfer::TransferError;

    use crate::transfer::tests::Cluster;

    trait Envs {
        fn env(&self, n: usize) -> &Arc<super::super::PoolEnv>;
    }

    impl Envs for Cluster {
        fn env(&self, n: usize) -> &Arc<super::super::PoolEnv> {
            self.pool(n).migration().env()
        }
    }

    /// Pools `pool1` (group `source`) and `pool2`, ... (group `targets`) of 1, 2, ... GiB.
    async fn start(n: usize) -> Cluster {
        let capacities: Vec<u64> = (1..=n as u64).map(|i| i << 30).collect();
        let groups: Vec<&str> = (0..n).map(|i| if i == 0 { "source" } else { "targets" }).collect();
        Cluster::start_in_groups(&capacities, &groups, Default::default()).await
    }

    /// Stores a precious replica directly in a pool's repository.
    async fn put(node: &Arc<Node>, size: usize) -> PnfsId {
        crate::transfer::tests::put(node, size, ReplicaState::Precious, vec![]).await
    }

    fn pull(id: PnfsId, source: &str) -> Pull {
        Pull {
            pnfsid: id,
            source: pool(source),
            state: ReplicaState::Cached,
            sticky: vec![StickyRecord::new("alice", tidepool_p2p::model::NEVER)],
            atime: None,
            force_source_mode: false,
            copy_of: None,
        }
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pools_answer_each_other_through_their_data_endpoints() {
        let c = start(2).await;
        let (env1, env2) = (c.env(1), c.env(2));
        assert_eq!(env1.pools(), vec![pool("pool1"), pool("pool2")]);
        assert_eq!(env1.pool_group("targets"), vec![pool("pool2")]);
        assert_eq!(env1.groups_of(&pool("pool1")), vec!["source".to_string()]);
        assert!(env1.groups_of(&pool("pool9")).is_empty());
        let held = put(c.pool(2), 100).await;
        match env1.request(&pool("pool2"), MigrationRequest::PoolInfo { job: None }).await {
            Ok(MigrationReply::PoolInfo(cost)) => {
                // The module answers for its run; the rest is the pool's.
                assert_ne!(cost.run, 0);
                assert_eq!(cost, PoolCost { run: cost.run, ..env2.cost() });
                assert_eq!(cost.space.total, 2 << 30);
                assert_eq!(cost.space.used, 100);
                assert!(cost.accepts);
            }
            other => panic!("expected PoolInfo, got {other:?}"),
        }
        let absent = put(c.pool(1), 10).await;
        let reply = env1.request(&pool("pool2"), locate(&[held, absent])).await;
        match reply {
            Ok(MigrationReply::Located { held: h }) => {
                let ids: Vec<PnfsId> = h.iter().map(|x| x.pnfsid).collect();
                assert_eq!(ids, vec![held], "only the replica pool2 holds");
                assert_eq!(h[0].state, ReplicaState::Precious, "as it was put");
            }
            other => panic!("expected Located, got {other:?}"),
        }
        // A pool disabled for p2p-client says so.
        c.pool(2)
            .pool
            .set_mode(ModeState { mode: PoolMode::disabled(PoolMode::P2P_CLIENT), error_code: 1, message: "x".into() })
            .unwrap();
        assert!(!env2.cost().accepts);
        // The refusal is the pool's own, kept whole; its wire form is docs/errors.md's.
        let refused = env2.check_p2p_client().unwrap_err();
        assert!(matches!(refused, EnvError::Mode(_)), "{refused:?}");
        let mode = refused.cause().and_then(|c| c.downcast_ref::<ModeRefused>()).expect("the pool's refusal");
        assert_eq!((mode.activity, mode.error_code), (Activity::P2pClient, 1));
        let wire = RemoteError::from(&refused);
        assert_eq!(wire.code(), Some(ErrorCode::PoolDisabled));
        assert_eq!(wire.message, "Pool is disabled: pool2 is disabled for p2p-client: [1] x");
        assert_eq!(env1.peers().connections_opened(), 1, "both requests on one connection");
        c.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_is_not_a_pool_gets_an_error() {
        let c = start(1).await;
        let addr = c.data_addr(1);
        let client = testing::credentials(Role::Client, "alice");
        let mut conn = Connection::open(addr, &client, "not a pool!", Service::Data).await.unwrap();
        conn.send(&DataRequest::Migration(MigrationRequest::PoolInfo { job: None })).await.unwrap();
        match conn.recv::<DataReply>().await.unwrap() {
            DataReply::Migration(MigrationReply::Error(e)) => {
                assert_eq!(e.code(), Some(ErrorCode::Forbidden));
            }
            other => panic!("expected an error, got {other:?}"),
        }
        c.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pull_commits_the_replica_and_a_cancelled_one_leaves_nothing() {
        let c = start(2).await;
        let (source, target) = (c.pool(1), c.pool(2));
        let small = put(source, 4096).await;
        c.env(2).pull(pull(small, "pool1"), CancellationToken::new()).await.unwrap();
        let got = target.pool.repo.get(&small).unwrap().unwrap();
        assert_eq!(got.state, ReplicaState::Cached);
        assert_eq!(got.sticky, vec![StickyRecord::new("alice", tidepool_p2p::model::NEVER)]);
        assert_eq!(got.attrs.checksum, source.pool.repo.get(&small).unwrap().unwrap().attrs.checksum);
        assert_eq!(c.env(2).compute_checksum(&small).unwrap(), got.attrs.checksum.unwrap());

        // The repository's refusals reach the module typed: a code to decide on, the
        // `RepoError` itself, and the text operators saw before.
        let absent = PnfsId::from_random([9; 16]);
        let err = c.env(2).set_state(&absent, ReplicaState::Cached).unwrap_err();
        assert!(matches!(err, EnvError::Repository { code: ErrorCode::FileNotFound, .. }), "{err:?}");
        assert!(err.replica_gone());
        let repo = err.cause().and_then(|c| c.downcast_ref::<RepoError>()).expect("the repository's error");
        assert!(matches!(repo, RepoError::NotFound(id) if *id == absent), "{repo:?}");
        assert_eq!(RemoteError::from(&err), RemoteError::new(ErrorCode::FileNotFound, repo.to_string()));
        let err = c.env(2).compute_checksum(&absent).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::FileNotFound), "{err:?}");

        // A slow source; the cancel comes mid-transfer.
        let large = put(source, 8 << 20).await;
        source.transfers.faults.slow_down(Some(Duration::from_millis(200)));
        let cancel = CancellationToken::new();
        let env = c.env(2).clone();
        let running = tokio::spawn({
            let cancel = cancel.clone();
            async move { env.pull(pull(large, "pool1"), cancel).await }
        });
        until("data to arrive", || target.transfers.list().iter().any(|t| t.done.load(Ordering::Relaxed) > 0)).await;
        cancel.cancel();
        let err = running.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Cancelled), "{err:?}");
        let transfer = err.cause().and_then(|c| c.downcast_ref::<TransferError>()).expect("the transfer's error");
        assert!(matches!(transfer, TransferError::Cancelled(id) if *id == large), "{transfer:?}");
        assert!(target.pool.repo.get(&large).unwrap().is_none());
        assert!(target.pool.repo.incoming().is_empty(), "no partial replica");
        assert!(target.transfers.list().is_empty());
        source.transfers.faults.slow_down(None);
        c.stop().await;
    }
}

/// A saved line is read back by the job grammar; one edited to hold `-dry-run` or `-json` is
/// refused rather than started as a real job.
#[test]
fn a_saved_dry_run_line_is_not_restored_as_a_job() {
    for (command, job) in [
        ("migration copy -permanent -- pool2", true),
        ("migration move -storage=test:a -- pool2", true),
        ("migration copy -dry-run -- pool2", false),
        ("migration move -dry-run -json -- pool2", false),
        ("migration copy -no-such-option -- pool2", false),
    ] {
        assert_eq!(super::restorable(command).is_ok(), job, "{command}");
    }
}
