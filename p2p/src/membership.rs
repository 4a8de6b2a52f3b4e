//! Membership: which pools there are (addresses, groups, tags, HSMs), the links, which pools
//! are alive, and each pool's latest cost. The daemon, the migration module (through its
//! `Env`) and the admin commands read it through [`Membership`]; a [`Source`] keeps it up to
//! date. Two sources exist (docs/operator-guide.md, "Membership"): the cluster file (read at
//! start, read again on SIGHUP and `psu reload`) and etcd (the `tidepool-etcd` crate: pools
//! register under leases, groups and links are keys changed live with the `psu` commands).
//!
//! A [`Membership`] holds the view in force. Readers take a snapshot ([`Membership::get`]) and
//! never hold a lock; a change bumps a generation that [`Membership::subscribe`] announces.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::cluster::{ClusterFile, PoolEntry};
use crate::ids::PoolName;
use crate::message::PoolCost;

/// Where the membership comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The cluster file: every pool counts as alive; costs are asked of each pool.
    File,
    /// etcd: liveness from leases, costs published by each pool.
    Etcd,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::File => "file",
            Backend::Etcd => "etcd",
        })
    }
}

/// A boxed future of a [`Source`] (the trait is used as an object).
pub type SourceFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What keeps a [`Membership`] up to date, beyond the view itself.
pub trait Source: Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// The latest published cost of each of `pools`, in that order (`None`: none published,
    /// the pool is not alive). `None` as a whole: this source publishes no costs, or cannot be
    /// read now; the caller asks the pools themselves.
    // The same shape as a job's refresh answers (`JobEvent::Refreshed`).
    #[allow(clippy::type_complexity)]
    fn costs<'a>(&'a self, pools: &'a [PoolName]) -> SourceFuture<'a, Option<Vec<(PoolName, Option<PoolCost>)>>>;

    /// Reads the membership again now (`psu reload`): the lines describing what changed, or
    /// why nothing could be read (the view in force stays).
    fn reload(&self) -> SourceFuture<'_, Result<Vec<String>, String>>;
}

/// Liveness as the source last saw it.
#[derive(Clone, Debug, Default)]
struct Liveness {
    /// `None`: the source knows nothing of liveness (the cluster file); every pool counts.
    alive: Option<Arc<BTreeSet<PoolName>>>,
    /// The source cannot be reached: the view is the last one seen.
    stale: bool,
}

/// The membership in force (one per pool, and one in the shell).
pub struct Membership {
    view: RwLock<Arc<ClusterFile>>,
    live: RwLock<Liveness>,
    generation: watch::Sender<u64>,
    source: OnceLock<Arc<dyn Source>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("backend", &self.backend()).finish_non_exhaustive()
    }
}

impl Membership {
    /// A membership of `cluster`, of the cluster file until a [`Source`] is set.
    pub fn file(cluster: ClusterFile) -> Arc<Membership> {
        Arc::new(Membership {
            view: RwLock::new(Arc::new(cluster)),
            live: RwLock::new(Liveness::default()),
            generation: watch::Sender::new(0),
            source: OnceLock::new(),
        })
    }

    /// The backend of the source set (the cluster file without one).
    pub fn backend(&self) -> Backend {
        self.source.get().map_or(Backend::File, |s| s.backend())
    }

    /// Sets the source that reloads the view and publishes costs; once.
    pub fn set_source(&self, source: Arc<dyn Source>) {
        let _ = self.source.set(source);
    }

    /// The pools, groups and links in force now.
    pub fn get(&self) -> Arc<ClusterFile> {
        self.view.read().clone()
    }

    /// The entry of pool `name`, if the view in force lists it.
    pub fn pool(&self, name: &PoolName) -> Option<PoolEntry> {
        self.view.read().pool(name).cloned()
    }

    /// Puts `cluster` in force; returns what changed (nothing: the view stays as it was).
    /// Requests already under way keep the addresses they started with.
    pub fn replace(&self, cluster: ClusterFile) -> Vec<String> {
        let changes = cluster_changes(&self.get(), &cluster);
        if !changes.is_empty() {
            *self.view.write() = Arc::new(cluster);
            self.generation.send_modify(|g| *g += 1);
        }
        changes
    }

    /// The pools alive now; `None` when the source knows nothing of liveness (every pool
    /// counts as alive, and those that do not answer are offline).
    pub fn alive(&self) -> Option<Arc<BTreeSet<PoolName>>> {
        self.live.read().alive.clone()
    }

    /// Whether `pool` counts as alive.
    pub fn is_alive(&self, pool: &PoolName) -> bool {
        self.live.read().alive.as_ref().is_none_or(|a| a.contains(pool))
    }

    /// Sets the live set; returns the pools that came and went (announced as a change when
    /// either is not empty).
    pub fn set_alive(&self, alive: BTreeSet<PoolName>) -> (Vec<PoolName>, Vec<PoolName>) {
        let mut live = self.live.write();
        let before = live.alive.clone().unwrap_or_default();
        let came: Vec<PoolName> = alive.difference(&before).cloned().collect();
        let went: Vec<PoolName> = before.difference(&alive).cloned().collect();
        let first = live.alive.is_none();
        live.alive = Some(Arc::new(alive));
        drop(live);
        if first || !came.is_empty() || !went.is_empty() {
            self.generation.send_modify(|g| *g += 1);
        }
        (came, went)
    }

    /// Whether the view is the last one seen of a source that cannot be reached now.
    pub fn is_stale(&self) -> bool {
        self.live.read().stale
    }

    /// Marks the view stale (the source is lost) or fresh again; returns whether that changed.
    pub fn set_stale(&self, stale: bool) -> bool {
        let mut live = self.live.write();
        let changed = live.stale != stale;
        live.stale = stale;
        changed
    }

    /// Announces every change of the view or of the live set (the value is a generation).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The latest published costs of `pools` (see [`Source::costs`]); `None` when there are
    /// none to read (the cluster file, or a stale view): ask the pools.
    pub async fn costs(&self, pools: &[PoolName]) -> Option<Vec<(PoolName, Option<PoolCost>)>> {
        if self.is_stale() {
            return None;
        }
        let source = self.source.get()?.clone();
        source.costs(pools).await
    }

    /// Reads the membership again now (`psu reload`).
    pub async fn reload(&self) -> Result<Vec<String>, String> {
        let Some(source) = self.source.get().cloned() else {
            return Err("this membership has nothing to read again".into());
        };
        source.reload().await
    }
}

/// One line per difference between the cluster file as it was and as it is now: pools added,
/// removed or changed (addresses, groups, tags, HSMs) and links added, removed or changed.
pub fn cluster_changes(old: &ClusterFile, new: &ClusterFile) -> Vec<String> {
    let mut lines = Vec::new();
    for p in &new.pools {
        match old.pool(&p.name) {
            None => lines.push(format!("pool {} added (p2p {}, admin {})", p.name, p.p2p, p.admin)),
            Some(before) if before != p => lines.push(format!("pool {} changed: {}", p.name, pool_diff(before, p))),
            Some(_) => {}
        }
    }
    for p in &old.pools {
        if new.pool(&p.name).is_none() {
            lines.push(format!("pool {} removed", p.name));
        }
    }
    for l in &new.links {
        match old.links.iter().find(|o| o.name == l.name) {
            None => lines.push(format!("link {} added (groups {})", l.name, l.groups.join(","))),
            Some(before) if before.groups != l.groups => lines.push(format!(
                "link {} changed: groups {} -> {}",
                l.name,
                before.groups.join(","),
                l.groups.join(",")
            )),
            Some(_) => {}
        }
    }
    for l in &old.links {
        if !new.links.iter().any(|n| n.name == l.name) {
            lines.push(format!("link {} removed", l.name));
        }
    }
    lines
}

fn pool_diff(a: &PoolEntry, b: &PoolEntry) -> String {
    let mut parts = Vec::new();
    if a.p2p != b.p2p {
        parts.push(format!("p2p {} -> {}", a.p2p, b.p2p));
    }
    if a.admin != b.admin {
        parts.push(format!("admin {} -> {}", a.admin, b.admin));
    }
    if a.groups != b.groups {
        parts.push(format!("groups {} -> {}", a.groups.join(","), b.groups.join(",")));
    }
    if a.tags != b.tags {
        parts.push(format!("tags {:?} -> {:?}", a.tags, b.tags));
    }
    if a.hsm != b.hsm {
        parts.push(format!("hsm {} -> {}", a.hsm.join(","), b.hsm.join(",")));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::LinkEntry;

    const BEFORE: &str = r#"
[[pool]]
name = "pool1"
p2p = "127.0.0.1:1001"
admin = "127.0.0.1:2001"
groups = ["disk"]

[[pool]]
name = "pool2"
p2p = "127.0.0.1:1002"
admin = "127.0.0.1:2002"
groups = ["disk"]

[[link]]
name = "l"
groups = ["disk"]
"#;

    #[test]
    fn cluster_changes_name_every_difference() {
        let old = ClusterFile::parse(BEFORE).unwrap();
        assert_eq!(cluster_changes(&old, &old), Vec::<String>::new());
        let new = ClusterFile::parse(
            &BEFORE
                .replace("127.0.0.1:1002", "127.0.0.1:1102")
                .replace("name = \"pool1\"", "name = \"pool3\"")
                .replace("name = \"l\"", "name = \"m\""),
        )
        .unwrap();
        assert_eq!(
            cluster_changes(&old, &new),
            [
                "pool pool3 added (p2p 127.0.0.1:1001, admin 127.0.0.1:2001)",
                "pool pool2 changed: p2p 127.0.0.1:1002 -> 127.0.0.1:1102",
                "pool pool1 removed",
                "link m added (groups disk)",
                "link l removed",
            ]
        );
    }

    fn entry(name: &str, port: u16, groups: &[&str]) -> PoolEntry {
        PoolEntry {
            name: name.parse().unwrap(),
            p2p: ([127, 0, 0, 1], port).into(),
            admin: ([127, 0, 0, 1], port + 1000).into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            tags: Default::default(),
            hsm: Vec::new(),
        }
    }

    #[test]
    fn replace_reports_changes_and_announces_them() {
        let m = Membership::file(ClusterFile { pools: vec![entry("a", 1, &["g"])], links: vec![] });
        let rx = m.subscribe();
        assert_eq!(m.replace(m.get().as_ref().clone()), Vec::<String>::new(), "the same view changes nothing");
        assert!(!rx.has_changed().unwrap());
        let next = ClusterFile {
            pools: vec![entry("a", 1, &["g", "h"]), entry("b", 2, &["g"])],
            links: vec![LinkEntry { name: "l".into(), groups: vec!["g".into()] }],
        };
        let changes = m.replace(next);
        assert_eq!(
            changes,
            vec![
                "pool a changed: groups g -> g,h",
                "pool b added (p2p 127.0.0.1:2, admin 127.0.0.1:1002)",
                "link l added (groups g)"
            ]
        );
        assert!(rx.has_changed().unwrap());
        assert!(m.pool(&"b".parse().unwrap()).is_some());
    }

    #[test]
    fn liveness_defaults_to_everyone_and_reports_comings_and_goings() {
        let m = Membership::file(ClusterFile { pools: vec![], links: vec![] });
        let (a, b): (PoolName, PoolName) = ("a".parse().unwrap(), "b".parse().unwrap());
        assert!(m.is_alive(&a) && m.alive().is_none());
        assert_eq!(m.set_alive([a.clone()].into()), (vec![a.clone()], vec![]));
        assert!(m.is_alive(&a) && !m.is_alive(&b));
        assert_eq!(m.set_alive([b.clone()].into()), (vec![b.clone()], vec![a.clone()]));
        assert!(m.set_stale(true) && !m.set_stale(true) && m.is_stale());
    }
}
