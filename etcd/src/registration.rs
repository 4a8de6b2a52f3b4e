//! A pool's life in etcd: its registration under a lease, its cost published under the same
//! lease, and the watch that keeps its view of the membership up to date.
//!
//! When etcd cannot be reached (docs/operator-guide.md, "When etcd is lost"):
//! - the view in force stays, marked stale ([`Membership::is_stale`]); jobs then ask the
//!   pools themselves for their figures, and transfers go on, on the addresses they know;
//! - the pool tries again, with a growing pause (1 s to 10 s, each drawn at random between
//!   half and one and a half times that, so that many pools do not come back in step);
//! - once etcd answers again the pool renews its old lease if it still lives, else takes a
//!   new one and registers again; and for one lease time plus the longest pause between tries
//!   it still counts as alive every pool that was alive before etcd was lost, so that pools
//!   which have not yet registered again do not go offline and online in a storm.
//!
//! A pool whose lease lapsed is "not alive": not a new target for anyone. Nothing is deleted
//! or copied again because of it.
//!
//! A snapshot read from etcd is applied only if it is not older than the one in force (etcd's
//! revision), and not at all if it no longer lists this pool or drops more than half of the
//! pools at once ([`refusal`]): the view in force stays, and an error is logged.

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{PutOptions, WatchOptions};
use tidepool_p2p::PoolName;
use tidepool_p2p::cluster::{ClusterFile, PoolEntry};
use tidepool_p2p::membership::Membership;
use tidepool_p2p::message::PoolCost;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Etcd, EtcdError, Shared, Snapshot};

/// What a pool registers: its entry (addresses, tags, HSMs; its groups are etcd's) and where
/// its cost comes from.
pub struct Registration {
    pub entry: PoolEntry,
    pub cost: Box<dyn Fn() -> PoolCost + Send + Sync>,
}

/// Changes seen within this long of each other are read in one go.
const SETTLE: Duration = Duration::from_millis(200);
const PAUSE_FIRST: Duration = Duration::from_secs(1);
const PAUSE_MAX: Duration = Duration::from_secs(10);

/// How long after etcd is back a pool that has not registered again still counts as alive:
/// every pool tries etcd again within the longest pause (its jitter included), then registers.
fn grace(lease: Duration) -> Duration {
    lease + PAUSE_MAX * 3 / 2 + Duration::from_secs(1)
}

/// How a session with etcd ended.
enum Ended {
    Stopped,
    Lost(String),
}

/// What one answer of a watch means for the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WatchSaw {
    /// Nothing changed (a progress notice).
    Nothing,
    /// Keys changed: read the membership again (once the changes settle).
    Change,
    /// etcd cancelled the watch (compaction, ...): no further change would be seen, so the
    /// session is lost and established again, view and watches.
    Cancelled,
}

fn watch_saw(canceled: bool, events: usize) -> WatchSaw {
    match (canceled, events) {
        (true, _) => WatchSaw::Cancelled,
        (false, 0) => WatchSaw::Nothing,
        (false, _) => WatchSaw::Change,
    }
}

/// The pause before the next try: `pause` drawn at random (`random`) between half and one and
/// a half times it, so that pools lost together do not come back together.
fn jittered(pause: Duration, random: u64) -> Duration {
    let ms = pause.as_millis().max(1) as u64;
    Duration::from_millis(ms / 2 + random % ms)
}

/// A random number for the jitter (no generator needed: the standard hasher's keys are
/// random per process).
fn random() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one((nanos, std::process::id()))
}

/// Keeps the pool registered and `membership` up to date until `stop`; then revokes the lease,
/// so the other pools see this one go at once.
pub async fn run(etcd: Etcd, membership: Arc<Membership>, me: Registration, stop: CancellationToken) {
    let mut lease: Option<i64> = None;
    let mut pause = PAUSE_FIRST;
    // The pools alive when etcd was lost.
    let mut held: Option<BTreeSet<PoolName>> = None;
    loop {
        // Stopping wins over every step of a session, its setup included: a stopping pool
        // does not register again.
        let ended = tokio::select! {
            biased;
            _ = stop.cancelled() => Ended::Stopped,
            e = session(&etcd, &membership, &me, &mut lease, &mut held, &stop, &mut pause) => e,
        };
        match ended {
            Ended::Stopped => break,
            Ended::Lost(why) => {
                if membership.set_stale(true) {
                    tracing::warn!(
                        "etcd lost ({why}); the membership in force is kept (stale), jobs ask the pools for their figures"
                    );
                    held = membership.alive().map(|a| (*a).clone());
                } else {
                    tracing::debug!("etcd still unreachable: {why}");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(jittered(pause, random())) => {}
        }
        pause = (pause * 2).min(PAUSE_MAX);
    }
    if let Some(id) = lease {
        let mut client = etcd.client();
        match tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(id)).await {
            Ok(Ok(_)) => tracing::info!("left etcd (lease revoked)"),
            _ => tracing::info!("could not revoke the lease in etcd; it lapses by itself"),
        }
    }
}

/// What one answer of a watch (of the liveness or of the configuration keys) means for the
/// session: a change starts (or keeps) the settling time before the membership is read
/// again; a cancelled or ended watch, or an error, ends the session.
fn watched(
    etcd: &Etcd,
    answer: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
    settle: &mut Option<Instant>,
) -> Option<Ended> {
    match answer {
        Ok(Some(w)) => match watch_saw(w.canceled(), w.events().len()) {
            WatchSaw::Nothing => None,
            WatchSaw::Change => {
                settle.get_or_insert(Instant::now() + SETTLE);
                None
            }
            WatchSaw::Cancelled => Some(Ended::Lost(format!("etcd cancelled the watch ({})", w.cancel_reason()))),
        },
        Ok(None) => Some(Ended::Lost("the watch ended".into())),
        Err(e) => Some(Ended::Lost(etcd.err(e).to_string())),
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    etcd: &Etcd,
    membership: &Arc<Membership>,
    me: &Registration,
    lease: &mut Option<i64>,
    held: &mut Option<BTreeSet<PoolName>>,
    stop: &CancellationToken,
    pause: &mut Duration,
) -> Ended {
    let lost = |e: EtcdError| Ended::Lost(e.to_string());
    let mut client = etcd.client();
    let ttl = etcd.settings.lease.as_secs().max(2) as i64;
    // The old lease, if it still lives; else a new one.
    let id = match *lease {
        Some(id) => match client.lease_time_to_live(id, None).await {
            Ok(r) if r.ttl() > 0 => id,
            Ok(_) => {
                tracing::info!("the lease in etcd lapsed; registering again");
                match client.lease_grant(ttl, None).await {
                    Ok(r) => r.id(),
                    Err(e) => return lost(etcd.err(e)),
                }
            }
            Err(e) => return lost(etcd.err(e)),
        },
        None => match client.lease_grant(ttl, None).await {
            Ok(r) => r.id(),
            Err(e) => return lost(etcd.err(e)),
        },
    };
    *lease = Some(id);
    let name = me.entry.name.as_str();
    // Alive under our lease, unless another daemon holds the name; only then our addresses:
    // a daemon whose name was taken while it was cut off never writes over the other's.
    match etcd.put_alive(&me.entry.name, id).await {
        Ok(true) => {}
        Ok(false) => {
            let e = EtcdError::Taken { pool: name.to_string() };
            tracing::error!("{e}");
            return lost(e);
        }
        Err(e) => return lost(e),
    }
    if let Err(e) = etcd.put_pool(&me.entry).await {
        return lost(e);
    }
    if let Err(e) = publish(etcd, me, id).await {
        return lost(e);
    }
    let (mut keeper, mut renewals) = match client.lease_keep_alive(id).await {
        Ok(k) => k,
        Err(e) => return lost(etcd.err(e)),
    };
    let (a, b) = etcd.keys.alive_range();
    let mut alive_watch = match client.watch(a, Some(WatchOptions::new().with_range(b))).await {
        Ok(w) => w,
        Err(e) => return lost(etcd.err(e)),
    };
    let (a, b) = etcd.keys.config_range();
    let mut config_watch = match client.watch(a, Some(WatchOptions::new().with_range(b))).await {
        Ok(w) => w,
        Err(e) => return lost(etcd.err(e)),
    };
    let grace_until = held.as_ref().map(|_| Instant::now() + grace(etcd.settings.lease));
    match etcd.load().await {
        Ok(snap) => {
            let _ = apply(etcd, membership, snap, held.as_ref(), &me.entry.name, "etcd");
        }
        Err(e) => return lost(e),
    }
    if membership.set_stale(false) {
        tracing::info!("etcd reached again; the membership is read from it again");
    } else {
        tracing::info!(lease = id, "registered in etcd");
    }
    *pause = PAUSE_FIRST;
    let mut publish_every = tokio::time::interval(etcd.settings.publish);
    publish_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    publish_every.reset();
    let mut settle: Option<Instant> = None;
    let mut grace_until = grace_until;
    loop {
        let settle_at = async {
            match settle {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let grace_at = async {
            match grace_until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return Ended::Stopped,
            _ = publish_every.tick() => {
                if let Err(e) = keeper.keep_alive().await {
                    return lost(etcd.err(e));
                }
                if let Err(e) = publish(etcd, me, id).await {
                    return lost(e);
                }
            }
            r = renewals.message() => match r {
                Ok(Some(r)) if r.ttl() <= 0 => {
                    *lease = None;
                    return Ended::Lost("the lease lapsed".into());
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ended::Lost("the lease renewals ended".into()),
                Err(e) => return lost(etcd.err(e)),
            },
            r = alive_watch.message() => if let Some(end) = watched(etcd, r, &mut settle) {
                return end;
            },
            r = config_watch.message() => if let Some(end) = watched(etcd, r, &mut settle) {
                return end;
            },
            _ = settle_at => {
                settle = None;
                match etcd.load().await {
                    Ok(snap) => {
                        let _ = apply(etcd, membership, snap, held.as_ref(), &me.entry.name, "etcd");
                    }
                    Err(e) => return lost(e),
                }
            }
            _ = grace_at => {
                grace_until = None;
                *held = None;
                settle.get_or_insert(Instant::now());
            }
        }
    }
}

/// Publishes this pool's cost under the lease.
async fn publish(etcd: &Etcd, me: &Registration, lease: i64) -> Result<(), EtcdError> {
    let cost = (me.cost)();
    let value = serde_json::to_vec(&cost).expect("a cost always serialises");
    etcd.client()
        .put(etcd.keys.cost(me.entry.name.as_str()), value, Some(PutOptions::new().with_lease(lease)))
        .await
        .map_err(|e| etcd.err(e))?;
    Ok(())
}

/// Why a view read from etcd is not put in force, if it is not: it no longer lists this pool
/// (`me`), or it drops more than half of the pools in force at once (a wrong prefix, a wiped
/// or restored etcd). The operator fixes etcd; `psu reload` or the next change reads it again.
pub(crate) fn refusal(old: &ClusterFile, new: &ClusterFile, me: &PoolName) -> Option<String> {
    if new.pool(me).is_none() {
        return Some(format!("the membership in etcd no longer lists this pool ({me})"));
    }
    let dropped = old.pools.iter().filter(|p| new.pool(&p.name).is_none()).count();
    if dropped * 2 > old.pools.len() {
        return Some(format!(
            "the membership in etcd drops {dropped} of the {} pools in force at once",
            old.pools.len()
        ));
    }
    None
}

/// Puts a snapshot in force and logs what changed, each line starting with `why`. Pools in
/// `held` count as alive still (the grace after etcd came back). A snapshot older than the one
/// in force is not applied (nothing changed); one [`refusal`] names is not applied either (the
/// view in force stays, liveness follows etcd), and its reason is logged as an error and
/// returned. The lines of what changed.
pub(crate) fn apply(
    etcd: &Etcd,
    membership: &Membership,
    snap: Snapshot,
    held: Option<&BTreeSet<PoolName>>,
    me: &PoolName,
    why: &str,
) -> Result<Vec<String>, String> {
    apply_in(&etcd.shared, membership, snap, held, me, why)
}

fn apply_in(
    shared: &Mutex<Shared>,
    membership: &Membership,
    snap: Snapshot,
    held: Option<&BTreeSet<PoolName>>,
    me: &PoolName,
    why: &str,
) -> Result<Vec<String>, String> {
    // One snapshot at a time, in revision order: the watch's and `psu reload`'s may cross.
    let mut shared = shared.lock().unwrap_or_else(|p| p.into_inner());
    if snap.revision < shared.revision {
        tracing::debug!(
            "{why}: a read of revision {} is older than the view in force ({}); not applied",
            snap.revision,
            shared.revision
        );
        return Ok(Vec::new());
    }
    shared.revision = snap.revision;
    let refused = refusal(&membership.get(), &snap.cluster, me);
    let mut lines = match &refused {
        None => {
            shared.groups = Some(snap.groups);
            membership.replace(snap.cluster)
        }
        Some(reason) => {
            tracing::error!(
                "{why}: {reason}; not applied, the view in force stays (docs/troubleshooting.md, \"Membership\")"
            );
            Vec::new()
        }
    };
    let mut alive = snap.alive;
    if let Some(held) = held {
        alive.extend(held.iter().cloned());
    }
    let (came, went) = membership.set_alive(alive);
    if !came.is_empty() {
        lines.push(format!("alive: {}", names(&came)));
    }
    if !went.is_empty() {
        lines.push(format!("no longer alive: {}", names(&went)));
    }
    for line in &lines {
        tracing::info!("{why}: {line}");
    }
    match refused {
        None => Ok(lines),
        Some(reason) => Err(format!("{reason}; not applied, the view in force stays")),
    }
}

fn names(pools: &[PoolName]) -> String {
    pools.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_watch_ends_the_session_and_events_read_the_membership_again() {
        for (canceled, events, want) in [
            (false, 0, WatchSaw::Nothing),
            (false, 3, WatchSaw::Change),
            (true, 0, WatchSaw::Cancelled),
            (true, 2, WatchSaw::Cancelled),
        ] {
            assert_eq!(watch_saw(canceled, events), want, "canceled {canceled}, {events} events");
        }
    }

    #[test]
    fn the_pause_is_spread_over_the_whole_pause() {
        let s = Duration::from_secs;
        for (pause, random, want) in [
            (s(1), 0, Duration::from_millis(500)),
            (s(1), 999, Duration::from_millis(1499)),
            (s(1), 1000, Duration::from_millis(500)),
            (s(10), 7_300, Duration::from_millis(12_300)),
            (Duration::ZERO, 5, Duration::ZERO),
        ] {
            assert_eq!(jittered(pause, random), want, "{pause:?} {random}");
        }
        // Pools drawing at once get different pauses.
        let drawn: BTreeSet<Duration> = (0..20).map(|_| jittered(s(10), random())).collect();
        assert!(drawn.len() > 10, "{drawn:?}");
        assert!(grace(s(10)) >= s(10) + jittered(PAUSE_MAX, u64::MAX));
    }

    fn cluster(names: &[&str]) -> ClusterFile {
        let pools = names
            .iter()
            .enumerate()
            .map(|(i, n)| PoolEntry {
                name: n.parse().unwrap(),
                p2p: ([127, 0, 0, 1], 1000 + i as u16).into(),
                admin: ([127, 0, 0, 1], 2000 + i as u16).into(),
                groups: vec![],
                tags: Default::default(),
                hsm: vec![],
            })
            .collect();
        ClusterFile { pools, links: vec![] }
    }

    fn snapshot(names: &[&str], alive: &[&str], revision: i64) -> Snapshot {
        Snapshot {
            cluster: cluster(names),
            groups: BTreeSet::new(),
            alive: alive.iter().map(|a| a.parse().unwrap()).collect(),
            revision,
        }
    }

    fn listed(m: &Membership) -> Vec<String> {
        m.get().pools.iter().map(|p| p.name.to_string()).collect()
    }

    #[test]
    fn snapshots_apply_in_revision_order_and_a_refused_view_keeps_the_one_in_force() {
        let shared = Mutex::new(Shared::default());
        let m = Membership::file(cluster(&["a", "b"]));
        let me: PoolName = "a".parse().unwrap();
        let apply = |snap, held: Option<&BTreeSet<PoolName>>| apply_in(&shared, &m, snap, held, &me, "test");
        assert_eq!(apply(snapshot(&["a", "b", "c"], &["a", "b", "c"], 10), None).unwrap().len(), 2);
        assert_eq!(listed(&m), ["a", "b", "c"]);
        // An older read (a `psu reload` that crossed the watch's) changes nothing.
        assert_eq!(apply(snapshot(&["a", "b"], &["a"], 7), None).unwrap(), Vec::<String>::new());
        assert_eq!((listed(&m), m.alive().unwrap().len()), (vec!["a".into(), "b".into(), "c".into()], 3));
        // The same revision again applies (the end of the grace drops the pools held alive).
        let held = BTreeSet::from(["c".parse().unwrap()]);
        apply(snapshot(&["a", "b", "c"], &["a", "b"], 11), Some(&held)).unwrap();
        assert!(m.is_alive(&"c".parse().unwrap()));
        assert_eq!(apply(snapshot(&["a", "b", "c"], &["a", "b"], 11), None).unwrap(), ["no longer alive: c"]);
        // A view without this pool: the view stays, liveness follows etcd, the reason is given.
        let err = apply(snapshot(&["b", "c"], &["b"], 12), None).unwrap_err();
        assert!(err.contains("no longer lists this pool (a)"), "{err}");
        assert_eq!(listed(&m), ["a", "b", "c"]);
        assert!(!m.is_alive(&"a".parse().unwrap()));
        let err = apply(snapshot(&["a"], &["a"], 13), None).unwrap_err();
        assert!(err.contains("drops 2 of the 3 pools"), "{err}");
        assert_eq!(listed(&m), ["a", "b", "c"]);
        apply(snapshot(&["a", "c"], &["a", "c"], 14), None).unwrap();
        assert_eq!(listed(&m), ["a", "c"]);
    }

    #[test]
    fn a_view_without_this_pool_or_without_most_pools_is_refused() {
        let me: PoolName = "a".parse().unwrap();
        let four = cluster(&["a", "b", "c", "d"]);
        for (old, new, refused) in [
            (&four, cluster(&["a", "b", "c", "d", "e"]), None),
            (&four, cluster(&["a", "b", "c"]), None),
            (&four, cluster(&["a", "b"]), None),
            (&four, cluster(&["a"]), Some("drops 3 of the 4 pools")),
            (&four, cluster(&["b", "c", "d"]), Some("no longer lists this pool (a)")),
            (&four, cluster(&[]), Some("no longer lists this pool")),
            (&ClusterFile { pools: vec![], links: vec![] }, cluster(&["a"]), None),
        ] {
            let got = refusal(old, &new, &me);
            match (refused, &got) {
                (None, None) => {}
                (Some(want), Some(got)) => assert!(got.contains(want), "{got}"),
                _ => panic!("{new:?}: {got:?}"),
            }
        }
    }
}
