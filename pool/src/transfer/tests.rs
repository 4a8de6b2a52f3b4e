//! Pool-to-pool transfers between pool daemons running in this process on loopback.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidepool_p2p::cluster::{ClusterFile, PoolEntry};
use tidepool_p2p::model::{ChecksumWriter, FileAttributes, NEVER, PoolMode, ReplicaState, StickyRecord};
use tidepool_p2p::tls::testing;
use tidepool_p2p::{ErrorCode, PnfsId, RemoteError};
use tokio::net::TcpListener;

use super::{Breach, PullRequest, TransferError, TransferSettings};
use crate::admin::exec;
use crate::daemon::{Daemon, Settings};
use crate::node::Node;
use crate::pool::{Activity, ModeRefused, ModeState, now_ms};
use crate::repository::{Replica, RepoError};

/// Pool daemons in this process on loopback, sharing a cluster file and the test CA (the
/// migration module's tests use them too).
pub(crate) struct Cluster {
    _dir: tempfile::TempDir,
    /// `None` for a pool played by the test itself (see [`Cluster::start_with_fakes`]).
    daemons: Vec<Option<Daemon>>,
}

impl Cluster {
    async fn start(capacities: &[u64], transfers: TransferSettings) -> Cluster {
        Cluster::start_in_groups(capacities, &vec!["disk"; capacities.len()], transfers).await
    }

    /// Pools `pool1`, `pool2`, ... with these capacities, each in its pool group.
    pub(crate) async fn start_in_groups(capacities: &[u64], groups: &[&str], transfers: TransferSettings) -> Cluster {
        Cluster::start_with_fakes(capacities, groups, transfers, &[]).await.0
    }

    /// As [`Cluster::start_in_groups`], but the pools numbered in `fakes` get no daemon: the
    /// test answers on their data endpoints, whose listeners come back in that order.
    pub(crate) async fn start_with_fakes(
        capacities: &[u64],
        groups: &[&str],
        transfers: TransferSettings,
        fakes: &[usize],
    ) -> (Cluster, Vec<TcpListener>) {
        let dir = tempfile::tempdir().unwrap();
        let mut listeners = Vec::new();
        let mut pools = Vec::new();
        for (i, group) in groups.iter().enumerate().take(capacities.len()) {
            let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let data = TcpListener::bind("127.0.0.1:0").await.unwrap();
            pools.push(PoolEntry {
                name: format!("pool{}", i + 1).parse().unwrap(),
                p2p: data.local_addr().unwrap(),
                admin: admin.local_addr().unwrap(),
                groups: vec![group.to_string()],
                tags: Default::default(),
                hsm: vec![],
            });
            listeners.push((admin, data));
        }
        let cluster = ClusterFile { pools, links: vec![] };
        let mut daemons = Vec::new();
        let mut fake_listeners = Vec::new();
        for (i, (admin, data)) in listeners.into_iter().enumerate() {
            if fakes.contains(&(i + 1)) {
                daemons.push(None);
                fake_listeners.push(data);
                continue;
            }
            let settings = Settings {
                name: cluster.pools[i].name.clone(),
                data_dir: dir.path().join(format!("pool{}", i + 1)),
                capacity: capacities[i],
                cluster: cluster.clone(),
                credentials: testing::pool(cluster.pools[i].name.as_str()),
                pin_owner_prefix: "PinManager".into(),
                shutdown_grace: Duration::from_secs(5),
                transfers: transfers.clone(),
                migration: Default::default(),
                fault_points: Default::default(),
            };
            daemons.push(Some(Daemon::start(settings, admin, data).await.unwrap()));
        }
        (Cluster { _dir: dir, daemons }, fake_listeners)
    }

    fn daemon(&self, n: usize) -> &Daemon {
        self.daemons[n - 1].as_ref().unwrap_or_else(|| panic!("pool{n} is played by the test"))
    }

    /// Pool `n` with its transfers and migration module.
    pub(crate) fn pool(&self, n: usize) -> &Arc<Node> {
        self.daemon(n).node()
    }

    /// The data endpoint of pool `n`.
    pub(crate) fn data_addr(&self, n: usize) -> std::net::SocketAddr {
        self.daemon(n).data_addr()
    }

    pub(crate) async fn stop(self) {
        for d in self.daemons.into_iter().flatten() {
            d.shutdown().await.unwrap();
        }
    }
}

fn content(id: &PnfsId, size: usize) -> Vec<u8> {
    let mut x =
        id.as_bytes().iter().fold(0xcbf2_9ce4_8422_2325u64, |a, b| (a ^ *b as u64).wrapping_mul(0x100_0000_01b3));
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Stores a replica directly in a pool's repository.
pub(crate) async fn put(node: &Arc<Node>, size: usize, state: ReplicaState, sticky: Vec<StickyRecord>) -> PnfsId {
    let repo = node.pool.repo.clone();
    tokio::task::spawn_blocking(move || {
        let id = PnfsId::from_random(tidepool_p2p::random::random_bytes().unwrap());
        let now = now_ms();
        let attrs = FileAttributes {
            pnfsid: id,
            size: size as u64,
            checksum: None,
            storage_class: Some("test:p2p".into()),
            cache_class: None,
            access_latency: None,
            retention_policy: None,
            hsm: None,
            creation_time: now,
            access_time: now - 60_000,
        };
        let mut inc = repo.create(attrs, ReplicaState::FromClient, now).unwrap();
        inc.write(&content(&id, size)).unwrap();
        inc.commit(state, sticky, None, now).unwrap();
        id
    })
    .await
    .unwrap()
}

/// Runs an admin line on a pool as the admin endpoint would.
async fn admin(node: &Arc<Node>, line: &str) -> Result<String, RemoteError> {
    let mut out = crate::admin::output::Output::buffer();
    exec::run_line(node, line, &mut out).await.map(|()| out.into_text()).map_err(|e| e.to_remote())
}

/// A transfer of `id` from `source` as `pp get file` makes it, with its typed outcome.
async fn fetch(node: &Arc<Node>, id: PnfsId, source: &str) -> Result<Replica, TransferError> {
    let source: tidepool_p2p::PoolName = source.parse().unwrap();
    let entry = node.transfers.register(id, source.clone());
    let req = PullRequest {
        pnfsid: id,
        source,
        state: ReplicaState::Cached,
        sticky: Vec::new(),
        atime: None,
        force_source_mode: false,
        copy_of: None,
    };
    super::run(&node.transfers, entry, req).await
}

async fn read(node: &Arc<Node>, id: PnfsId) -> Vec<u8> {
    let pool = &node.pool;
    let repo = pool.repo.clone();
    tokio::task::spawn_blocking(move || {
        let (_, mut data) = repo.open_data(&id, now_ms()).unwrap();
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes).unwrap();
        bytes
    })
    .await
    .unwrap()
}

fn checksum(bytes: &[u8]) -> tidepool_p2p::model::Checksum {
    let mut c = ChecksumWriter::new();
    c.update(bytes);
    c.finish()
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Nothing of `id` is on `pool`: no replica, nothing being received, space back to `used`.
fn nothing_of(node: &Node, id: PnfsId) {
    let pool = &node.pool;
    assert!(pool.repo.get(&id).unwrap().is_none(), "{id} must not be on {}", pool.name);
    assert!(pool.repo.incoming().is_empty(), "no partial replica on {}", pool.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_small_replicas_arrive_intact_over_one_connection() {
    let c = Cluster::start(&[1 << 30, 1 << 30], TransferSettings::default()).await;
    let (source, target) = (c.pool(1), c.pool(2));
    let large = put(source, 5 * 1024 * 1024 + 17, ReplicaState::Precious, vec![]).await;
    let empty = put(source, 0, ReplicaState::Cached, vec![]).await;
    let mut small = Vec::new();
    for _ in 0..10 {
        small.push(put(source, 4096, ReplicaState::Cached, vec![StickyRecord::new("alice", NEVER)]).await);
    }
    let before = source.pool.repo.get(&large).unwrap().unwrap();
    let reply = admin(target, &format!("pp get file -wait {large} pool1")).await.unwrap();
    assert!(reply.contains(&format!("{large} from pool1: done, {} bytes", 5 * 1024 * 1024 + 17)), "{reply}");
    let opened = || target.transfers.connections_opened();
    admin(target, &format!("pp get file -wait {} pool1", small[0])).await.unwrap();
    assert_eq!(opened(), 1, "two transfers, one after the other, share one connection");
    // One command for many files: each its own transfer, each reported.
    let ids: Vec<String> = small[1..].iter().chain([&empty]).map(|id| id.to_string()).collect();
    let reply = admin(target, &format!("pp get file -wait {} pool1", ids.join(" "))).await.unwrap();
    assert_eq!(reply.matches(": done, ").count(), 10, "{reply}");
    assert!(opened() <= 8, "at most one connection per transfer running at once (max active 8)");
    for id in small.iter().chain([&large, &empty]) {
        let mine = target.pool.repo.get(id).unwrap().unwrap();
        let theirs = source.pool.repo.get(id).unwrap().unwrap();
        assert_eq!(mine.state, ReplicaState::Cached, "pp get file makes CACHED replicas");
        assert!(mine.sticky.is_empty(), "sticky records are not copied by pp get file");
        assert_eq!(mine.attrs.size, theirs.attrs.size);
        assert_eq!(mine.attrs.checksum, theirs.attrs.checksum);
        assert_eq!(mine.attrs.storage_class, theirs.attrs.storage_class);
        let bytes = read(target, *id).await;
        assert_eq!(Some(checksum(&bytes)), theirs.attrs.checksum);
        assert!(bytes == content(id, theirs.attrs.size as usize));
    }
    assert_eq!(source.pool.repo.get(&large).unwrap().unwrap(), before, "the source is unchanged, access time included");

    let ls = admin(target, "pp ls -l").await.unwrap();
    assert!(ls.contains("0 active of max 8, 0 queued"), "{ls}");
    assert_eq!(ls.matches(" DONE ").count(), 12, "{ls}");
    // A batch with a file the source lacks: the others arrive, the command says how many failed.
    let more = put(source, 100, ReplicaState::Cached, vec![]).await;
    let missing = PnfsId::from_random([9; 16]);
    let err = admin(target, &format!("pp get file -wait {more} {missing} pool1")).await.unwrap_err();
    assert_eq!(err.message, "1 of 2 transfers failed");
    assert_eq!(err.code(), Some(ErrorCode::FileNotFound));
    assert!(target.pool.repo.get(&more).unwrap().is_some());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_byte_is_detected_and_nothing_is_committed() {
    let c = Cluster::start(&[1 << 30, 1 << 30], TransferSettings::default()).await;
    let (source, target) = (c.pool(1), c.pool(2));
    let id = put(source, 3 * 1024 * 1024, ReplicaState::Cached, vec![]).await;
    let used = target.pool.repo.space(now_ms()).used;
    source.transfers.faults.corrupt_next(id);
    let err = fetch(target, id, "pool1").await.unwrap_err();
    assert!(matches!(err.repo(), Some(RepoError::ChecksumMismatch { .. })), "{err:?}");
    nothing_of(target, id);
    assert_eq!(target.pool.repo.space(now_ms()).used, used);
    // The source's replica was never damaged: a second try succeeds.
    admin(target, &format!("pp get file -wait {id} pool1")).await.unwrap();
    assert!(read(target, id).await == content(&id, 3 * 1024 * 1024));
    // The same for a replica small enough to be received whole before it is written.
    let small = put(source, 1000, ReplicaState::Cached, vec![]).await;
    source.transfers.faults.corrupt_next(small);
    let err = admin(target, &format!("pp get file -wait {small} pool1")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ChecksumMismatch), "{err:?}");
    nothing_of(target, small);
    admin(target, &format!("pp get file -wait {small} pool1")).await.unwrap();
    assert!(read(target, small).await == content(&small, 1000));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_target_evicts_removable_replicas_or_refuses() {
    let c = Cluster::start(&[1 << 30, 100_000], TransferSettings::default()).await;
    let (source, target) = (c.pool(1), c.pool(2));
    let old = put(target, 40_000, ReplicaState::Cached, vec![]).await;
    let precious = put(target, 40_000, ReplicaState::Precious, vec![]).await;
    let wanted = put(source, 50_000, ReplicaState::Cached, vec![]).await;
    admin(target, &format!("pp get file -wait {wanted} pool1")).await.unwrap();
    assert!(target.pool.repo.get(&old).unwrap().is_none(), "the cached replica made room");
    assert!(target.pool.repo.get(&precious).unwrap().is_some(), "the precious one stays");
    assert!(read(target, wanted).await == content(&wanted, 50_000));
    // Now only precious data and the new (cached, removable) copy: 60,000 cannot fit.
    let big = put(source, 70_000, ReplicaState::Cached, vec![]).await;
    admin(target, &format!("rep set precious {wanted}")).await.unwrap();
    let err = fetch(target, big, "pool1").await.unwrap_err();
    assert!(matches!(err.repo(), Some(RepoError::PoolFull { .. })), "{err:?}");
    // As the operator sees it.
    let err = admin(target, &format!("pp get file -wait {big} pool1")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PoolFull), "{err:?}");
    nothing_of(target, big);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_and_missing_replicas_are_refused_clearly() {
    let c = Cluster::start(&[1 << 30, 1 << 30], TransferSettings::default()).await;
    let (source, target) = (c.pool(1), c.pool(2));
    let id = put(source, 1000, ReplicaState::Cached, vec![]).await;

    target
        .pool
        .set_mode(ModeState { mode: PoolMode::disabled(PoolMode::RDONLY), error_code: 1, message: "x".into() })
        .unwrap();
    let err = admin(target, &format!("pp get file -wait {id} pool1")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PoolDisabled));
    let err = fetch(target, id, "pool1").await.unwrap_err();
    assert!(
        matches!(err, TransferError::Mode(ModeRefused { activity: Activity::P2pClient, .. })),
        "the target refuses: {err:?}"
    );
    target.pool.set_mode(ModeState::enabled()).unwrap();

    source
        .pool
        .set_mode(ModeState { mode: PoolMode::disabled(PoolMode::STRICT), error_code: 1, message: "x".into() })
        .unwrap();
    let err = admin(target, &format!("pp get file -wait {id} pool1")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PoolDisabled));
    let err = fetch(target, id, "pool1").await.unwrap_err();
    assert!(
        matches!(&err, TransferError::Source { from, error } if from.as_str() == "pool1" && error.code() == Some(ErrorCode::PoolDisabled)),
        "the source refuses: {err:?}"
    );
    nothing_of(target, id);
    admin(target, &format!("pp get file -wait -force-source-mode {id} pool1")).await.unwrap();
    assert!(target.pool.repo.get(&id).unwrap().is_some());
    source.pool.set_mode(ModeState::enabled()).unwrap();

    let missing = PnfsId::from_random([7; 16]);
    let err = admin(target, &format!("pp get file -wait {missing} pool1")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FileNotFound), "{err:?}");
    let err = fetch(target, missing, "pool1").await.unwrap_err();
    assert!(matches!(err.remote().and_then(|e| e.code()), Some(ErrorCode::FileNotFound)), "{err:?}");

    let err = admin(target, &format!("pp get file -wait {id} pool1")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FileExists), "{err:?}");
    let err = fetch(target, id, "pool1").await.unwrap_err();
    assert!(matches!(err, TransferError::Exists { pnfsid, .. } if pnfsid == id), "{err:?}");
    // The admin command checks its source before any transfer starts (its own message).
    let err = admin(target, &format!("pp get file -wait {id} pool2")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err:?}");
    let err = admin(target, &format!("pp get file -wait {id} pool9")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err:?}");
    let other = PnfsId::from_random([6; 16]);
    let err = fetch(target, other, "pool9").await.unwrap_err();
    assert!(matches!(&err, TransferError::UnknownPool(p) if p.as_str() == "pool9"), "{err:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_ends_the_transfer_quickly_and_leaves_nothing() {
    let c = Cluster::start(&[1 << 30, 1 << 30], TransferSettings::default()).await;
    let (source, target) = (c.pool(1), c.pool(2));
    let id = put(source, 8 * 1024 * 1024, ReplicaState::Cached, vec![]).await;
    source.transfers.faults.slow_down(Some(Duration::from_millis(200)));
    let reply = admin(target, &format!("pp get file {id} pool1")).await.unwrap();
    assert!(reply.starts_with("[1] "), "{reply}");
    until("some data to arrive", || {
        target.transfers.list().first().is_some_and(|e| e.done.load(std::sync::atomic::Ordering::Relaxed) > 0)
    })
    .await;
    let ls = admin(target, "pp ls").await.unwrap();
    assert!(ls.contains(&format!("[1] {id} from pool1 ACTIVE ")), "{ls}");
    let cancelled_at = Instant::now();
    assert_eq!(admin(target, "pp remove 1").await.unwrap(), "Cancelling transfer 1; `pp ls -l` shows how it ended\n");
    until("the transfer to end", || target.transfers.list().is_empty()).await;
    assert!(cancelled_at.elapsed() < Duration::from_secs(5), "a cancel ends within 5 s");
    nothing_of(target, id);
    assert!(admin(target, "pp ls -l").await.unwrap().contains("FAILED: transfer of"), "the cancel is reported");
    // The source noticed too: its outgoing stream ended.
    until("the source to stop sending", || source.transfers.outgoing.counts().0 == 0).await;
    let err = admin(target, "pp remove 1").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "no transfer 1: {err:?}");
    source.transfers.faults.slow_down(None);
    admin(target, &format!("pp get file -wait {id} pool1")).await.unwrap();
    assert!(read(target, id).await == content(&id, 8 * 1024 * 1024), "and it can be repeated");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_transfer_fails_with_no_progress_and_queues_respect_max_active() {
    let settings = TransferSettings { no_progress: Duration::from_secs(1), ..TransferSettings::default() };
    let c = Cluster::start(&[1 << 30, 1 << 30], settings).await;
    let (source, target) = (c.pool(1), c.pool(2));
    let ids = [
        put(source, 1000, ReplicaState::Cached, vec![]).await,
        put(source, 1000, ReplicaState::Cached, vec![]).await,
        put(source, 1000, ReplicaState::Cached, vec![]).await,
    ];
    // A source that lets nobody read: the transfer waits, then gives up.
    admin(source, "pp set max outgoing 0").await.unwrap();
    let err = fetch(target, ids[0], "pool1").await.unwrap_err();
    assert!(
        matches!(&err, TransferError::Stalled { from, after } if from.as_str() == "pool1" && *after == Duration::from_secs(1)),
        "{err:?}"
    );
    assert_eq!(RemoteError::from(&err).code(), Some(ErrorCode::Timeout));
    nothing_of(target, ids[0]);

    // One at a time on the target: the others queue, in order.
    admin(target, "pp set max active 1").await.unwrap();
    admin(source, "pp set max outgoing 16").await.unwrap();
    source.transfers.faults.slow_down(Some(Duration::from_millis(300)));
    for id in &ids {
        admin(target, &format!("pp get file {id} pool1")).await.unwrap();
    }
    let ls = admin(target, "pp ls").await.unwrap();
    assert_eq!(ls.lines().count(), 4, "a header and three transfers: {ls}");
    assert!(ls.matches(" ACTIVE ").count() <= 1, "{ls}");
    assert!(ls.matches(" QUEUED ").count() >= 2, "{ls}");
    source.transfers.faults.slow_down(None);
    until("all three to arrive", || ids.iter().all(|id| target.pool.repo.get(id).unwrap().is_some())).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_replicas_share_exchanges_and_a_bad_one_fails_alone() {
    let settings = TransferSettings { max_active: 32, ..TransferSettings::default() };
    let c = Cluster::start(&[1 << 30, 1 << 30], settings).await;
    let (source, target) = (c.pool(1), c.pool(2));
    let chunk = tidepool_p2p::frame::MAX_DATA_CHUNK;
    // Sizes around every edge of a batch: empty, tiny, one chunk exactly, one byte more (sent
    // one file at a time), and many ordinary small files.
    let mut sizes = vec![0, 1, chunk, chunk + 1, 3 * chunk];
    sizes.extend((0..120).map(|i| 1 + i * 997));
    let mut ids = Vec::new();
    for size in &sizes {
        ids.push(put(source, *size, ReplicaState::Cached, vec![]).await);
    }
    let corrupt = ids[60];
    source.transfers.faults.corrupt_next(corrupt);
    let missing = PnfsId::from_random([5; 16]);
    let mut line = String::from("pp get file -wait");
    for id in ids.iter().take(90).chain([&missing]).chain(&ids[90..]) {
        line.push_str(&format!(" {id}"));
    }
    let err = admin(target, &format!("{line} pool1")).await.unwrap_err();
    assert_eq!(err.message, format!("2 of {} transfers failed", ids.len() + 1), "{err:?}");
    nothing_of(target, corrupt);
    assert!(target.pool.repo.get(&missing).unwrap().is_none());
    for (id, size) in ids.iter().zip(&sizes).filter(|(id, _)| **id != corrupt) {
        let mine = target.pool.repo.get(id).unwrap().unwrap();
        assert_eq!(mine.state, ReplicaState::Cached);
        assert_eq!(mine.attrs.checksum, source.pool.repo.get(id).unwrap().unwrap().attrs.checksum);
        assert!(read(target, *id).await == content(id, *size), "{id} ({size} bytes) arrived intact");
    }
    let small = &target.transfers.small;
    let exchanges = small.exchanges.load(std::sync::atomic::Ordering::Relaxed);
    let delivered = small.delivered.load(std::sync::atomic::Ordering::Relaxed);
    // Every file of at most one chunk came in a batch (the corrupted one too: its checksum
    // failed on the target); the two larger ones did not.
    assert_eq!(delivered, ids.len() as u64 - 2, "{delivered} delivered in batches");
    // How many share an exchange depends on timing; that batches fill up to their budget is
    // shown without timing by `a_batch_carries_at_most_its_byte_budget_...`.
    assert!(exchanges < delivered, "{exchanges} exchanges for {delivered} replicas: some were batched");
    assert!(target.transfers.connections_opened() <= 34);
    // The corrupted replica was damaged on the wire only: asking again brings it intact.
    admin(target, &format!("pp get file -wait {corrupt} pool1")).await.unwrap();
    assert!(read(target, corrupt).await == content(&corrupt, sizes[60]));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_does_not_know_batches_is_read_one_file_at_a_time() {
    let c = Cluster::start(&[1 << 30, 1 << 30], TransferSettings::default()).await;
    let (source, target) = (c.pool(1), c.pool(2));
    source.transfers.faults.act_as_before_batches(true);
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(put(source, 3000, ReplicaState::Cached, vec![]).await);
    }
    let pool1: tidepool_p2p::PoolName = "pool1".parse().unwrap();
    admin(target, &format!("pp get file -wait {} pool1", ids[0])).await.unwrap();
    assert!(target.transfers.small.per_file_only(&pool1), "what the handshake said is remembered");
    let rest: Vec<String> = ids[1..].iter().map(|id| id.to_string()).collect();
    admin(target, &format!("pp get file -wait {} pool1", rest.join(" "))).await.unwrap();
    for id in &ids {
        assert!(read(target, *id).await == content(id, 3000));
    }
    // Never asked: the handshake said the source has no batches, so none was tried.
    assert_eq!(target.transfers.small.exchanges.load(std::sync::atomic::Ordering::Relaxed), 0);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_carries_at_most_its_byte_budget_and_the_rest_come_later() {
    let settings = TransferSettings { max_active: 32, ..TransferSettings::default() };
    let c = Cluster::start(&[1 << 30, 1 << 30], settings).await;
    let (source, target) = (c.pool(1), c.pool(2));
    let chunk = tidepool_p2p::frame::MAX_DATA_CHUNK;
    // 24 replicas of one chunk each: far more than the 4 MiB one exchange asks for.
    let mut ids = Vec::new();
    for _ in 0..24 {
        ids.push(put(source, chunk, ReplicaState::Cached, vec![]).await);
    }
    // The source lets nobody read until every transfer is in an exchange or waiting for one.
    // Two exchanges at most are under way, so then either one of them asks for more than
    // 4 MiB, or at least 16 files wait and the next exchange asks for all of them.
    admin(source, "pp set max outgoing 0").await.unwrap();
    let line: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    admin(target, &format!("pp get file {} pool1", line.join(" "))).await.unwrap();
    let small = &target.transfers.small;
    let asked = || small.asked.load(std::sync::atomic::Ordering::Relaxed) as usize;
    until("every transfer to be in an exchange or waiting", || asked() + small.waiting() == 24).await;
    admin(source, "pp set max outgoing 16").await.unwrap();
    until("every replica to arrive", || {
        ids.iter().all(|id| target.pool.repo.get(id).unwrap().is_some_and(|r| r.state == ReplicaState::Cached))
    })
    .await;
    for id in &ids {
        assert!(read(target, *id).await == content(id, chunk));
    }
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&small.delivered), 24, "all of them in batches");
    assert!(load(&small.deferred) > 0, "an exchange stopped at its byte budget and the rest were asked again");
    c.stop().await;
}

/// Plays a source pool on `listener` for one connection: the handshake, then for the first
/// `FetchSmall` the replies `answer` makes from its items.
async fn fake_source(
    listener: TcpListener,
    answer: impl FnOnce(&[tidepool_p2p::message::SmallFetch]) -> Vec<FakeReply>,
) {
    use tidepool_p2p::auth::{Features, Service};
    use tidepool_p2p::message::DataRequest;
    let (stream, _) = listener.accept().await.unwrap();
    let creds = testing::pool("pool1");
    let ((mut reader, mut writer), _) =
        testing::accept(&creds, stream, "pool1", Service::Data, Features::ALL).await.unwrap();
    let DataRequest::FetchSmall { items, .. } = reader.recv::<DataRequest>().await.unwrap() else {
        panic!("expected a FetchSmall");
    };
    for reply in answer(&items) {
        match reply {
            FakeReply::Message(m) => writer.queue(&m).await.unwrap(),
            FakeReply::Data(d) => writer.send_data(&d).await.unwrap(),
        }
    }
    writer.flush().await.unwrap();
    // Hold the connection until the target hangs up.
    let _ = reader.next().await;
}

enum FakeReply {
    Message(tidepool_p2p::message::DataReply),
    Data(Vec<u8>),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_breaks_the_batch_rules_fails_the_transfer_and_nothing_is_kept() {
    use tidepool_p2p::message::{DataReply, SmallOutcome};
    let attrs = |id: PnfsId, size: u64| FileAttributes {
        pnfsid: id,
        size,
        checksum: Some(checksum(&vec![1; size as usize])),
        storage_class: None,
        cache_class: None,
        access_latency: None,
        retention_policy: None,
        hsm: None,
        creation_time: 0,
        access_time: 0,
    };
    type Script = fn(&tidepool_p2p::message::SmallFetch, &dyn Fn(PnfsId, u64) -> FileAttributes) -> Vec<FakeReply>;
    type Expected = fn(&Breach) -> bool;
    let cases: [(Expected, Script); 3] = [
        (
            |b| matches!(b, Breach::WrongReplica { .. }),
            |item, attrs| {
                let other = PnfsId::from_random([8; 16]);
                let sent = SmallOutcome::Sent(attrs(other, 10));
                vec![
                    FakeReply::Message(DataReply::SmallItem { transfer: item.transfer, outcome: sent }),
                    FakeReply::Data(vec![1; 10]),
                ]
            },
        ),
        (
            |b| matches!(b, Breach::PutOffFirst { .. }),
            |item, _| {
                vec![FakeReply::Message(DataReply::SmallItem { transfer: item.transfer, outcome: SmallOutcome::Later })]
            },
        ),
        (
            |b| matches!(b, Breach::NotOneFrame { size: 10, .. }),
            |item, attrs| {
                let sent = SmallOutcome::Sent(attrs(item.pnfsid, 10));
                vec![
                    FakeReply::Message(DataReply::SmallItem { transfer: item.transfer, outcome: sent }),
                    FakeReply::Data(vec![1; 9]),
                ]
            },
        ),
    ];
    for (expected, script) in cases {
        let (c, mut fakes) =
            Cluster::start_with_fakes(&[1 << 30, 1 << 30], &["disk", "disk"], TransferSettings::default(), &[1]).await;
        let target = c.pool(2);
        let source = tokio::spawn(fake_source(fakes.remove(0), move |items| script(&items[0], &attrs)));
        let id = PnfsId::from_random([4; 16]);
        let err = fetch(target, id, "pool1").await.unwrap_err();
        assert!(matches!(&err, TransferError::Protocol { breach, .. } if expected(breach)), "{err:?}");
        assert_eq!(RemoteError::from(&err).code(), Some(ErrorCode::Protocol));
        nothing_of(target, id);
        assert!(target.pool.repo.get(&PnfsId::from_random([8; 16])).unwrap().is_none());
        c.stop().await;
        source.abort();
    }
}
