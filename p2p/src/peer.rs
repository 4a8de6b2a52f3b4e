//! The peer-connection layer: every connection a pool, the shell or a client opens to a pool is
//! made and kept here. A [`Dialer`] connects, runs the handshake (authentication and the
//! agreed [`Features`]), checks that the pool at the address is the one that was meant (the
//! peer's identity), and keeps idle connections for reuse: only for a while (a pool closes
//! connections that stay silent, see `docs/protocol.md`), at most a few per pool, and each
//! looked at before it is reused, so a pool that restarted is noticed before a request is
//! written to a dead connection. None made before a reload of the credentials (SIGHUP,
//! `tls reload`) is reused after it: each connection remembers the credentials' generation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::auth::{Features, Service};
use crate::conn::Connection;
use crate::error::RemoteError;
use crate::frame::WireError;
use crate::ids::PoolName;
use crate::tls::Credentials;

/// How long a kept connection may sit idle and still be reused. A pool closes a connection
/// that sends nothing for much longer than this, so a kept one is never reused just as it is
/// closed.
pub const REUSE_IDLE: Duration = Duration::from_secs(30);
/// How many idle connections are kept per pool; the oldest goes first.
pub const MAX_IDLE: usize = 64;

/// Why no connection to a pool could be made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Nothing answered, or the connection broke before the handshake finished.
    #[error("pool {pool} is unreachable at {addr}: {source}")]
    Unreachable { pool: PoolName, addr: SocketAddr, source: WireError },
    /// The pool answered and refused the connection (our certificate, our role, a protocol it
    /// does not speak).
    #[error("pool {pool} at {addr} refused the connection: {}", .error.render())]
    Refused { pool: PoolName, addr: SocketAddr, error: RemoteError },
    /// Another pool answers at the address: the cluster file is wrong on one side.
    #[error("the pool at {addr} calls itself {actual}, not {pool}; check the cluster file")]
    WrongPool { pool: PoolName, addr: SocketAddr, actual: String },
}

/// Where a checked-out connection came from: a kept one may have been closed by the pool in a
/// way only the next exchange shows, so a caller whose request was not delivered on a kept
/// connection tries once more on a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Kept,
    New,
}

/// Makes and keeps the connections of one side (a pool, the shell) to the pools of one service.
pub struct Dialer {
    /// Our name in the handshake.
    me: String,
    creds: Credentials,
    service: Service,
    offered: Features,
    reuse_idle: Duration,
    max_idle: usize,
    idle: Mutex<HashMap<PoolName, Vec<(Connection, Instant)>>>,
    opened: AtomicU64,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("me", &self.me)
            .field("service", &self.service)
            .field("opened", &self.connections_opened())
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// A dialer that introduces itself as `me`, offers every feature of this build and keeps
    /// idle connections for [`REUSE_IDLE`], at most [`MAX_IDLE`] per pool.
    pub fn new(me: impl Into<String>, creds: Credentials, service: Service) -> Self {
        Dialer {
            me: me.into(),
            creds,
            service,
            offered: Features::ALL,
            reuse_idle: REUSE_IDLE,
            max_idle: MAX_IDLE,
            idle: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
        }
    }

    /// Offers only `features` (tests play an older build this way).
    pub fn offering(mut self, features: Features) -> Self {
        self.offered = features;
        self
    }

    /// Keeps idle connections for `reuse_idle`, at most `max_idle` per pool (0: none kept).
    pub fn keeping(mut self, reuse_idle: Duration, max_idle: usize) -> Self {
        self.reuse_idle = reuse_idle;
        self.max_idle = max_idle;
        self
    }

    /// Our name in the handshake.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// A new connection to `pool` at `addr`, authenticated, with the pool's identity (its
    /// certificate's name) checked.
    pub async fn open(&self, pool: &PoolName, addr: SocketAddr) -> Result<Connection, DialError> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        match Connection::open_offering(addr, &self.creds, &self.me, self.service, self.offered).await {
            Ok(conn) if conn.pool == pool.as_str() => Ok(conn),
            Ok(conn) => Err(DialError::WrongPool { pool: pool.clone(), addr, actual: conn.pool }),
            Err(WireError::Remote(error)) => Err(DialError::Refused { pool: pool.clone(), addr, error }),
            Err(source) => Err(DialError::Unreachable { pool: pool.clone(), addr, source }),
        }
    }

    /// A kept connection to `pool` that is still open, if there is one. Those kept too long,
    /// closed by the pool meanwhile, or made with credentials a reload has since replaced
    /// (another certificate, other trust anchors, another deny list), are dropped on the way.
    pub async fn take_idle(&self, pool: &PoolName) -> Option<Connection> {
        loop {
            let mut conn = {
                let mut idle = self.idle.lock();
                let list = idle.get_mut(pool)?;
                self.keep_usable(list);
                list.pop()?.0
            };
            if conn.still_open().await {
                return Some(conn);
            }
        }
    }

    /// A kept connection to `pool` if one is still open, else a new one.
    pub async fn checkout(&self, pool: &PoolName, addr: SocketAddr) -> Result<(Connection, Origin), DialError> {
        match self.take_idle(pool).await {
            Some(conn) => Ok((conn, Origin::Kept)),
            None => Ok((self.open(pool, addr).await?, Origin::New)),
        }
    }

    /// Keeps `conn` for reuse: the caller finished an exchange on it and nothing is left unread.
    /// One made before a reload of the credentials is closed instead.
    pub fn give_back(&self, pool: &PoolName, conn: Connection) {
        if self.max_idle == 0 || conn.generation != self.creds.generation() {
            return;
        }
        let mut idle = self.idle.lock();
        let list = idle.entry(pool.clone()).or_default();
        self.keep_usable(list);
        if list.len() >= self.max_idle {
            list.remove(0);
        }
        list.push((conn, Instant::now()));
    }

    /// Closes every kept connection, to any pool, that is kept too long or was made before a
    /// reload. The owner calls it every [`REUSE_IDLE`] or so: a pool that dials nobody for a
    /// while (its jobs read published costs) then holds no descriptor of a connection the other
    /// side has closed. Taking and giving back look at their own pool's list only.
    pub fn prune_idle(&self) {
        self.idle.lock().retain(|_, list| {
            self.keep_usable(list);
            !list.is_empty()
        });
    }

    /// Drops from one pool's kept connections those kept too long or made before a reload.
    fn keep_usable(&self, list: &mut Vec<(Connection, Instant)>) {
        let generation = self.creds.generation();
        list.retain(|(c, since)| since.elapsed() < self.reuse_idle && c.generation == generation);
    }

    /// Drops the kept connections to `pool`: one of them broke, so the pool has probably
    /// restarted and the others are dead too.
    pub fn forget(&self, pool: &PoolName) {
        self.idle.lock().remove(pool);
    }

    /// Kept connections to `pool` (open or not).
    pub fn idle_count(&self, pool: &PoolName) -> usize {
        self.idle.lock().get(pool).map_or(0, Vec::len)
    }

    /// Connections opened so far (each one handshake).
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use tokio::net::TcpListener;

    use super::*;
    use crate::auth;
    use crate::frame::{FrameReader, FrameWriter, MAX_FRAME};
    use crate::tls::{Role, testing};

    /// A pool named `name` on loopback that authenticates with `key` and answers every `u32` it
    /// reads with the same number plus one. `close_after` requests it hangs up. Returns its
    /// address and the count of connections it accepted.
    async fn echo_pool(name: &'static str, close_after: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let creds = testing::pool(name);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let creds = creds.clone();
                tokio::spawn(async move {
                    let Ok((tls, peer)) = creds.accept(stream).await else { return };
                    let (r, w) = tokio::io::split(tls);
                    let mut reader = FrameReader::new(r, MAX_FRAME);
                    let mut writer = FrameWriter::new(w);
                    let admit = |_: &_, _: &_| Ok(());
                    if auth::accept(&mut reader, &mut writer, name, Service::Data, Features::ALL, &peer, admit)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    for _ in 0..close_after {
                        let Ok(n) = reader.recv::<u32>().await else { return };
                        if writer.send(&(n + 1)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn name(n: &str) -> PoolName {
        n.parse().unwrap()
    }

    async fn ask(conn: &mut Connection, n: u32) -> Result<u32, WireError> {
        conn.send(&n).await?;
        conn.recv::<u32>().await
    }

    #[tokio::test]
    async fn a_connection_given_back_is_reused_and_a_closed_one_is_not() {
        let (addr, accepted) = echo_pool("pool1", 1).await;
        let dialer = Dialer::new("pool2", testing::pool("pool2"), Service::Data);
        let pool1 = name("pool1");

        let (mut conn, origin) = dialer.checkout(&pool1, addr).await.unwrap();
        assert_eq!(origin, Origin::New);
        assert_eq!(ask(&mut conn, 1).await.unwrap(), 2);
        // The pool hangs up after one request; the kept connection is seen closed and dropped.
        dialer.give_back(&pool1, conn);
        assert_eq!(dialer.idle_count(&pool1), 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (mut conn, origin) = dialer.checkout(&pool1, addr).await.unwrap();
            if origin == Origin::New {
                assert_eq!(ask(&mut conn, 5).await.unwrap(), 6);
                break;
            }
            // The close may not have arrived yet: give it back and look again.
            dialer.give_back(&pool1, conn);
            assert!(Instant::now() < deadline, "the closed connection was never noticed");
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(dialer.connections_opened(), 2);
    }

    #[tokio::test]
    async fn an_open_connection_is_reused_until_it_has_been_idle_too_long() {
        let (addr, accepted) = echo_pool("pool1", usize::MAX).await;
        let pool1 = name("pool1");
        let key = testing::pool("pool2");
        let dialer = Dialer::new("pool2", key.clone(), Service::Data);
        let (mut conn, _) = dialer.checkout(&pool1, addr).await.unwrap();
        assert_eq!(ask(&mut conn, 1).await.unwrap(), 2);
        dialer.give_back(&pool1, conn);
        let (mut conn, origin) = dialer.checkout(&pool1, addr).await.unwrap();
        assert_eq!((origin, ask(&mut conn, 2).await.unwrap()), (Origin::Kept, 3));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // Kept for no time at all: every checkout opens a new one.
        let eager = Dialer::new("pool2", key, Service::Data).keeping(Duration::ZERO, MAX_IDLE);
        let (conn, _) = eager.checkout(&pool1, addr).await.unwrap();
        eager.give_back(&pool1, conn);
        let (_, origin) = eager.checkout(&pool1, addr).await.unwrap();
        assert_eq!(origin, Origin::New);
        assert_eq!(eager.idle_count(&pool1), 0);
    }

    /// A connection kept too long is closed by the owner's periodic prune, with nobody dialled:
    /// it holds no descriptor for longer than it may be reused. One still usable stays.
    #[tokio::test]
    async fn kept_connections_past_their_time_are_closed_by_the_periodic_prune() {
        let (addr1, _) = echo_pool("pool1", usize::MAX).await;
        let pool1 = name("pool1");
        // Kept for no time at all: past its time as soon as it is kept.
        let dialer = Dialer::new("pool2", testing::pool("pool2"), Service::Data).keeping(Duration::ZERO, MAX_IDLE);
        let (conn, _) = dialer.checkout(&pool1, addr1).await.unwrap();
        dialer.give_back(&pool1, conn);
        assert_eq!(dialer.idle_count(&pool1), 1);
        dialer.prune_idle();
        assert_eq!(dialer.idle_count(&pool1), 0, "the periodic prune closed it");
        let keeping = Dialer::new("pool2", testing::pool("pool2"), Service::Data);
        let (conn, _) = keeping.checkout(&pool1, addr1).await.unwrap();
        keeping.give_back(&pool1, conn);
        keeping.prune_idle();
        assert_eq!(keeping.idle_count(&pool1), 1, "a connection within its time is kept");
    }

    /// After a reload (a renewed certificate, other trust anchors, a longer deny list) no
    /// connection made before it is reused: the next checkout handshakes afresh.
    #[tokio::test]
    async fn a_reload_of_the_credentials_drops_the_kept_connections() {
        let (addr, accepted) = echo_pool("pool1", usize::MAX).await;
        let pool1 = name("pool1");
        let creds = testing::pool("pool2");
        let dialer = Dialer::new("pool2", creds.clone(), Service::Data);
        let (mut kept, _) = dialer.checkout(&pool1, addr).await.unwrap();
        let (mut busy, _) = dialer.checkout(&pool1, addr).await.unwrap();
        assert_eq!(ask(&mut kept, 1).await.unwrap(), 2);
        dialer.give_back(&pool1, kept);
        assert_eq!(dialer.idle_count(&pool1), 1);

        creds.reload(&testing::pool("pool2"));
        let (mut conn, origin) = dialer.checkout(&pool1, addr).await.unwrap();
        assert_eq!((origin, ask(&mut conn, 2).await.unwrap()), (Origin::New, 3));
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        // One in use during the reload is not kept when given back; one made after it is.
        assert_eq!(ask(&mut busy, 3).await.unwrap(), 4);
        dialer.give_back(&pool1, busy);
        assert_eq!(dialer.idle_count(&pool1), 0);
        dialer.give_back(&pool1, conn);
        let (_, origin) = dialer.checkout(&pool1, addr).await.unwrap();
        assert_eq!(origin, Origin::Kept);
    }

    #[tokio::test]
    async fn at_most_max_idle_are_kept_per_pool() {
        let (addr, _) = echo_pool("pool1", usize::MAX).await;
        let pool1 = name("pool1");
        let dialer = Dialer::new("pool2", testing::pool("pool2"), Service::Data).keeping(REUSE_IDLE, 2);
        for _ in 0..3 {
            let conn = dialer.open(&pool1, addr).await.unwrap();
            dialer.give_back(&pool1, conn);
        }
        assert_eq!(dialer.idle_count(&pool1), 2);
        dialer.forget(&pool1);
        assert_eq!(dialer.idle_count(&pool1), 0);
    }

    #[tokio::test]
    async fn the_wrong_pool_a_wrong_ca_and_no_pool_are_told_apart() {
        let (addr, _) = echo_pool("pool1", usize::MAX).await;
        let dialer = Dialer::new("pool2", testing::pool("pool2"), Service::Data);
        let err = dialer.open(&name("pool9"), addr).await.unwrap_err();
        assert!(matches!(&err, DialError::WrongPool { actual, .. } if actual == "pool1"), "{err}");

        // A certificate from another CA, which trusts the pool's CA: the pool refuses it.
        let stranger = Dialer::new("pool2", testing::stranger(Role::Pool, "pool2"), Service::Data);
        let err = stranger.open(&name("pool1"), addr).await.unwrap_err();
        assert!(
            matches!(&err, DialError::Refused { error, .. } if error.code() == Some(crate::ErrorCode::AuthFailed)),
            "{err}"
        );

        // A port nobody listens on (bound, then closed).
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let err = dialer.open(&name("pool1"), closed).await.unwrap_err();
        assert!(matches!(err, DialError::Unreachable { .. }), "{err}");
    }

    #[tokio::test]
    async fn the_features_of_a_connection_are_those_both_offered() {
        let (addr, _) = echo_pool("pool1", usize::MAX).await;
        let older = Features::ALL.without(Features::FETCH_SMALL);
        let dialer = Dialer::new("pool2", testing::pool("pool2"), Service::Data).offering(older);
        let conn = dialer.open(&name("pool1"), addr).await.unwrap();
        assert_eq!(conn.features, older);
        assert!(!conn.features.contains(Features::FETCH_SMALL));
    }
}
