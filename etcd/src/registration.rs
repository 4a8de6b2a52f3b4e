//! A pool's life in etcd: its registration under a lease, its cost published under the same
//! lease, and the watch that keeps its view of the membership up to date.
//!
//! When etcd cannot be reached (docs/operator-guide.md, "When etcd is lost"):
//! - the view in force stays, marked stale ([`Membership::is_stale`]); jobs then ask the
//!   pools themselves for their figures, and transfers go on, on the addresses they know;
//! - the pool tries again, with a growing pause (1 s to 10 s, with jitter, so that many pools
//!   do not come back in step);
//! - once etcd answers again the pool renews its old lease if it still lives, else takes a
//!   new one and registers again; and for one lease time plus the longest pause between tries
//!   it still counts as alive every pool that was alive before etcd was lost, so that pools
//!   which have not yet registered again do not go offline and online in a storm.
//!
//! A pool whose lease lapsed is "not alive": not a new target for anyone. Nothing is deleted
//! or copied again because of it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, PutOptions, WatchOptions};
use tidepool_p2p::PoolName;
use tidepool_p2p::cluster::PoolEntry;
use tidepool_p2p::membership::Membership;
use tidepool_p2p::message::PoolCost;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Etcd, EtcdError, Snapshot};

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

/// How a session with etcd ended.
enum Ended {
    Stopped,
    Lost(String),
}

/// Keeps the pool registered and `membership` up to date until `stop`; then revokes the lease,
/// so the other pools see this one go at once.
pub async fn run(etcd: Etcd, membership: Arc<Membership>, me: Registration, stop: CancellationToken) {
    let mut lease: Option<i64> = None;
    let mut pause = PAUSE_FIRST;
    // The pools alive when etcd was lost.
    let mut held: Option<BTreeSet<PoolName>> = None;
    loop {
        match session(&etcd, &membership, &me, &mut lease, &mut held, &stop, &mut pause).await {
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
        let jitter = Duration::from_millis(u64::from(std::process::id()) % 500);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause + jitter) => {}
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
    if let Err(e) = etcd.put_pool(&me.entry).await {
        return lost(e);
    }
    let since = format!("{{\"since\":{}}}", chrono_free_now_ms());
    if let Err(e) = client.put(etcd.keys.alive(name), since, Some(PutOptions::new().with_lease(id))).await {
        return lost(etcd.err(e));
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
    // Every other pool tries etcd again within PAUSE_MAX (and a jitter), then registers.
    let grace_until = held.as_ref().map(|_| Instant::now() + etcd.settings.lease + PAUSE_MAX + Duration::from_secs(1));
    match etcd.load().await {
        Ok(snap) => {
            apply(membership, snap, held.as_ref(), "etcd");
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
            r = alive_watch.message() => match r {
                Ok(Some(w)) => {
                    if w.events().iter().any(|e| e.event_type() == EventType::Delete || e.event_type() == EventType::Put) {
                        settle.get_or_insert(Instant::now() + SETTLE);
                    }
                }
                Ok(None) => return Ended::Lost("the watch ended".into()),
                Err(e) => return lost(etcd.err(e)),
            },
            r = config_watch.message() => match r {
                Ok(Some(_)) => {
                    settle.get_or_insert(Instant::now() + SETTLE);
                }
                Ok(None) => return Ended::Lost("the watch ended".into()),
                Err(e) => return lost(etcd.err(e)),
            },
            _ = settle_at => {
                settle = None;
                match etcd.load().await {
                    Ok(snap) => {
                        apply(membership, snap, held.as_ref(), "etcd");
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

/// Puts a snapshot in force and logs what changed, each line starting with `why`. Pools in
/// `held` count as alive still (the grace after etcd came back). The lines of what changed.
pub(crate) fn apply(
    membership: &Membership,
    snap: Snapshot,
    held: Option<&BTreeSet<PoolName>>,
    why: &str,
) -> Vec<String> {
    let mut lines = membership.replace(snap.cluster);
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
    lines
}

fn names(pools: &[PoolName]) -> String {
    pools.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
}

fn chrono_free_now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}
