//! Membership through etcd (docs/operator-guide.md, "Membership through etcd"): the pools,
//! pool groups, links and tags are keys under one prefix, changed live with the `psu` admin
//! commands or imported from a cluster file; each pool registers itself under a lease
//! (liveness) and publishes its cost under the same lease every few seconds.
//!
//! Keys under the prefix (default `/tidepool/`), values JSON:
//!
//! ```text
//! alive/<pool>          {"since": <ms>}                   under the pool's lease
//! cost/<pool>           PoolCost                          under the pool's lease
//! group/<group>         ""                                a pool group exists
//! link/<link>           ["group", ...]
//! member/<group>/<pool> ""                                the pool is in the group
//! pool/<pool>           {"p2p", "admin", "tags", "hsm"}   the pool's addresses (no lease)
//! ```
//!
//! A daemon watches two ranges, `alive/` and `group/` up to `pool/` (groups, links, members,
//! pools), never `cost/`: it reads costs only when a job refreshes, in one range read
//! ([`Etcd::costs`]). What it does when etcd cannot be reached is in [`run`].

mod keys;
mod registration;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity, TlsOptions, Txn,
    TxnOp,
};
use serde::{Deserialize, Serialize};
use tidepool_p2p::PoolName;
use tidepool_p2p::cluster::{ClusterFile, LinkEntry, PoolEntry};
use tidepool_p2p::membership::{Backend, Membership, Source, SourceFuture};
use tidepool_p2p::message::PoolCost;

pub use keys::Keys;
pub use registration::{Registration, run};

/// How Tidepool reaches etcd (the pool config's `[membership]` table, resolved).
#[derive(Clone, Debug)]
pub struct EtcdSettings {
    /// `http://host:port` or `https://host:port`, one per etcd member.
    pub endpoints: Vec<String>,
    /// Every key lives under this prefix (one cluster of pools per prefix).
    pub prefix: String,
    /// etcd's user and password, if etcd has authentication on.
    pub user: Option<(String, String)>,
    /// TLS: the CA (PEM), and this client's certificate and key (PEM) if etcd wants one.
    pub tls: Option<TlsFiles>,
    /// How long a pool stays alive without renewing its lease.
    pub lease: Duration,
    /// How often a pool renews its lease and publishes its cost.
    pub publish: Duration,
}

/// TLS material read by the binary from the files the config names.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdSettings {
    /// Defaults for `endpoints` with nothing else set.
    pub fn new(endpoints: Vec<String>) -> EtcdSettings {
        EtcdSettings {
            endpoints,
            prefix: "/tidepool/".into(),
            user: None,
            tls: None,
            lease: Duration::from_secs(10),
            publish: Duration::from_secs(3),
        }
    }
}

/// What can go wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// etcd did not answer, or refused (authentication, permission).
    #[error("etcd at {endpoints}: {source}")]
    Etcd { endpoints: String, source: etcd_client::Error },
    /// A key holds something Tidepool cannot read.
    #[error("etcd key {key}: {reason}")]
    Unreadable { key: String, reason: String },
    /// The operator's request does not fit what is there (a group that does not exist, ...).
    #[error("{0}")]
    Refused(String),
}

/// A connection to etcd and the key layout of one cluster of pools.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    keys: Keys,
    endpoints: String,
    settings: EtcdSettings,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").field("endpoints", &self.endpoints).field("prefix", &self.keys.prefix()).finish()
    }
}

/// A pool as its `pool/<name>` key holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PoolRecord {
    p2p: SocketAddr,
    admin: SocketAddr,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    hsm: Vec<String>,
}

/// What a full read of the membership found.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub cluster: ClusterFile,
    /// Pool groups, members or not.
    pub groups: BTreeSet<String>,
    pub alive: BTreeSet<PoolName>,
}

impl Etcd {
    /// Connects (bounded by a few seconds); with `user`, authenticates.
    pub async fn connect(settings: &EtcdSettings) -> Result<Etcd, EtcdError> {
        let endpoints = settings.endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if let Some((user, password)) = &settings.user {
            options = options.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &settings.tls {
            let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca));
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(t);
        }
        let client = tokio::time::timeout(Duration::from_secs(5), Client::connect(&settings.endpoints, Some(options)))
            .await
            .map_err(|_| EtcdError::Etcd {
                endpoints: endpoints.clone(),
                source: etcd_client::Error::InvalidArgs("no answer within 5 s".into()),
            })?
            .map_err(|source| EtcdError::Etcd { endpoints: endpoints.clone(), source })?;
        let keys = Keys::new(&settings.prefix);
        let etcd = Etcd { client, keys, endpoints, settings: settings.clone() };
        // The connection is lazy: one read proves etcd answers (and that we may read).
        etcd.client()
            .get(etcd.keys.group(""), Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| etcd.err(e))?;
        Ok(etcd)
    }

    pub fn settings(&self) -> &EtcdSettings {
        &self.settings
    }

    fn client(&self) -> Client {
        self.client.clone()
    }

    fn err(&self, source: etcd_client::Error) -> EtcdError {
        EtcdError::Etcd { endpoints: self.endpoints.clone(), source }
    }

    /// The whole membership (not the costs) in two range reads.
    pub async fn load(&self) -> Result<Snapshot, EtcdError> {
        let mut client = self.client();
        let (from, to) = self.keys.config_range();
        let config = client.get(from, Some(GetOptions::new().with_range(to))).await.map_err(|e| self.err(e))?;
        let alive = client
            .get(self.keys.alive(""), Some(GetOptions::new().with_prefix().with_keys_only()))
            .await
            .map_err(|e| self.err(e))?;
        let mut pools: BTreeMap<PoolName, PoolRecord> = BTreeMap::new();
        let mut members: BTreeMap<PoolName, Vec<String>> = BTreeMap::new();
        let mut links = Vec::new();
        let mut groups = BTreeSet::new();
        for kv in config.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let unreadable = |reason: String| EtcdError::Unreadable { key: key.clone(), reason };
            match self.keys.parse(&key) {
                Some(keys::Key::Pool(name)) => {
                    let rec: PoolRecord = serde_json::from_slice(kv.value()).map_err(|e| unreadable(e.to_string()))?;
                    pools.insert(name, rec);
                }
                Some(keys::Key::Group(g)) => {
                    groups.insert(g);
                }
                Some(keys::Key::Member(g, pool)) => members.entry(pool).or_default().push(g),
                Some(keys::Key::Link(name)) => {
                    let groups: Vec<String> =
                        serde_json::from_slice(kv.value()).map_err(|e| unreadable(e.to_string()))?;
                    links.push(LinkEntry { name, groups });
                }
                Some(keys::Key::Alive(_) | keys::Key::Cost(_)) | None => {}
            }
        }
        let cluster = ClusterFile {
            pools: pools
                .into_iter()
                .map(|(name, r)| PoolEntry {
                    groups: members.remove(&name).unwrap_or_default(),
                    name,
                    p2p: r.p2p,
                    admin: r.admin,
                    tags: r.tags,
                    hsm: r.hsm,
                })
                .collect(),
            links,
        };
        let alive = alive
            .kvs()
            .iter()
            .filter_map(|kv| match self.keys.parse(&String::from_utf8_lossy(kv.key())) {
                Some(keys::Key::Alive(p)) => Some(p),
                _ => None,
            })
            .collect();
        Ok(Snapshot { cluster, groups, alive })
    }

    /// The published cost of each of `pools`, in that order, in one range read (`None`: the
    /// pool publishes none: it is not alive).
    pub async fn costs(&self, pools: &[PoolName]) -> Result<Vec<(PoolName, Option<PoolCost>)>, EtcdError> {
        let got = self
            .client()
            .get(self.keys.cost(""), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.err(e))?;
        let mut costs: BTreeMap<PoolName, PoolCost> = BTreeMap::new();
        for kv in got.kvs() {
            if let Some(keys::Key::Cost(p)) = self.keys.parse(&String::from_utf8_lossy(kv.key()))
                && let Ok(c) = serde_json::from_slice::<PoolCost>(kv.value())
            {
                costs.insert(p, c);
            }
        }
        Ok(pools.iter().map(|p| (p.clone(), costs.get(p).copied())).collect())
    }

    /// Writes pool `entry`'s addresses, tags and HSMs (not its groups) unless they are there
    /// already; whether it wrote.
    pub async fn put_pool(&self, entry: &PoolEntry) -> Result<bool, EtcdError> {
        let rec = PoolRecord { p2p: entry.p2p, admin: entry.admin, tags: entry.tags.clone(), hsm: entry.hsm.clone() };
        let key = self.keys.pool(entry.name.as_str());
        let mut client = self.client();
        let now = client.get(key.clone(), None).await.map_err(|e| self.err(e))?;
        if let Some(kv) = now.kvs().first()
            && serde_json::from_slice::<PoolRecord>(kv.value()).ok().as_ref() == Some(&rec)
        {
            return Ok(false);
        }
        let value = serde_json::to_vec(&rec).expect("a pool record always serialises");
        client.put(key, value, None).await.map_err(|e| self.err(e))?;
        Ok(true)
    }

    /// The pool groups, members or not.
    pub async fn groups(&self) -> Result<BTreeSet<String>, EtcdError> {
        Ok(self.load().await?.groups)
    }

    /// `psu create pgroup`: whether it was created (false: it existed).
    pub async fn create_group(&self, group: &str) -> Result<bool, EtcdError> {
        let key = self.keys.group(group);
        let txn =
            Txn::new().when([Compare::version(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(key, "", None)]);
        let r = self.client().txn(txn).await.map_err(|e| self.err(e))?;
        Ok(r.succeeded())
    }

    /// `psu remove pgroup`: refused while a pool is in it or a link names it.
    pub async fn remove_group(&self, group: &str) -> Result<(), EtcdError> {
        let snap = self.load().await?;
        if !snap.groups.contains(group) {
            return Err(EtcdError::Refused(format!("no pool group named {group}")));
        }
        let members: Vec<&str> = snap
            .cluster
            .pools
            .iter()
            .filter(|p| p.groups.iter().any(|g| g == group))
            .map(|p| p.name.as_str())
            .collect();
        if !members.is_empty() {
            return Err(EtcdError::Refused(format!(
                "pool group {group} still has pools ({}); `psu removefrom pgroup {group} <pool>` first",
                members.join(", ")
            )));
        }
        if let Some(l) = snap.cluster.links.iter().find(|l| l.groups.iter().any(|g| g == group)) {
            return Err(EtcdError::Refused(format!("link {} names pool group {group}; change the link first", l.name)));
        }
        self.client().delete(self.keys.group(group), None).await.map_err(|e| self.err(e))?;
        Ok(())
    }

    /// `psu addto pgroup`: the group and the pool must exist; whether it was added (false: it
    /// was in it).
    pub async fn add_to_group(&self, group: &str, pool: &PoolName) -> Result<bool, EtcdError> {
        let (g, p, m) = (self.keys.group(group), self.keys.pool(pool.as_str()), self.keys.member(group, pool.as_str()));
        let txn = Txn::new()
            .when([
                Compare::version(g.clone(), CompareOp::Greater, 0),
                Compare::version(p.clone(), CompareOp::Greater, 0),
            ])
            .and_then([TxnOp::txn(
                Txn::new().when([Compare::version(m.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(m, "", None)]),
            )])
            .or_else([TxnOp::get(g, None), TxnOp::get(p, None)]);
        let r = self.client().txn(txn).await.map_err(|e| self.err(e))?;
        if r.succeeded() {
            let inner = r.op_responses().into_iter().next();
            return Ok(matches!(inner, Some(etcd_client::TxnOpResponse::Txn(t)) if t.succeeded()));
        }
        let snap = self.load().await?;
        if !snap.groups.contains(group) {
            return Err(EtcdError::Refused(format!("no pool group named {group}; `psu create pgroup {group}` first")));
        }
        Err(EtcdError::Refused(format!("no pool named {pool} is registered in etcd")))
    }

    /// `psu removefrom pgroup`: whether it was removed (false: it was not in it).
    pub async fn remove_from_group(&self, group: &str, pool: &PoolName) -> Result<bool, EtcdError> {
        let r = self.client().delete(self.keys.member(group, pool.as_str()), None).await.map_err(|e| self.err(e))?;
        Ok(r.deleted() > 0)
    }

    /// `psu remove pool`: deletes a pool's record and its group memberships, for a pool taken
    /// out of service. Refused while the pool is alive (its lease key is there): a running pool
    /// would register again at once. Its replicas are not touched; they are on its disk.
    pub async fn remove_pool(&self, pool: &PoolName) -> Result<Vec<String>, EtcdError> {
        let snap = self.load().await?;
        let Some(entry) = snap.cluster.pool(pool) else {
            return Err(EtcdError::Refused(format!("no pool named {pool} is registered in etcd")));
        };
        let alive = self.keys.alive(pool.as_str());
        let mut deletes = vec![TxnOp::delete(self.keys.pool(pool.as_str()), None)];
        deletes.extend(entry.groups.iter().map(|g| TxnOp::delete(self.keys.member(g, pool.as_str()), None)));
        // Only while it is not alive: a pool that registers between the read and the delete
        // keeps its record.
        let txn = Txn::new().when([Compare::version(alive, CompareOp::Equal, 0)]).and_then(deletes);
        let r = self.client().txn(txn).await.map_err(|e| self.err(e))?;
        if !r.succeeded() {
            return Err(EtcdError::Refused(format!(
                "pool {pool} is alive (registered under its lease); stop it first, then remove it"
            )));
        }
        Ok(entry.groups.clone())
    }

    /// `psu set link`: the link names these groups (each must exist); no groups removes it.
    pub async fn set_link(&self, link: &str, groups: &[String]) -> Result<(), EtcdError> {
        let key = self.keys.link(link);
        if groups.is_empty() {
            self.client().delete(key, None).await.map_err(|e| self.err(e))?;
            return Ok(());
        }
        let known = self.groups().await?;
        if let Some(g) = groups.iter().find(|g| !known.contains(*g)) {
            return Err(EtcdError::Refused(format!("no pool group named {g}; `psu create pgroup {g}` first")));
        }
        let value = serde_json::to_vec(groups).expect("a list of names serialises");
        self.client().put(key, value, None).await.map_err(|e| self.err(e))?;
        Ok(())
    }

    /// `tidepool membership import`: writes every pool (addresses, tags, HSMs), group,
    /// membership and link of `file`; what is in etcd and not in the file stays. The lines of
    /// what was written.
    pub async fn import(&self, file: &ClusterFile) -> Result<Vec<String>, EtcdError> {
        let mut lines = Vec::new();
        for p in &file.pools {
            if self.put_pool(p).await? {
                lines.push(format!("pool {} ({}, admin {})", p.name, p.p2p, p.admin));
            }
        }
        for g in file.groups() {
            if self.create_group(&g).await? {
                lines.push(format!("pool group {g}"));
            }
        }
        for p in &file.pools {
            for g in &p.groups {
                if self.add_to_group(g, &p.name).await? {
                    lines.push(format!("pool {} in pool group {g}", p.name));
                }
            }
        }
        for l in &file.links {
            self.set_link(&l.name, &l.groups).await?;
            lines.push(format!("link {} -> [{}]", l.name, l.groups.join(", ")));
        }
        Ok(lines)
    }

    /// Deletes every key of this cluster of pools (tests only).
    pub async fn wipe(&self) -> Result<(), EtcdError> {
        self.client()
            .delete(self.keys.prefix(), Some(DeleteOptions::new().with_prefix()))
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// etcd as a pool's membership [`Source`]: costs in one range read, `psu reload` a full read.
pub struct EtcdSource {
    etcd: Etcd,
    membership: Weak<Membership>,
}

impl EtcdSource {
    pub fn new(etcd: Etcd, membership: &Arc<Membership>) -> EtcdSource {
        EtcdSource { etcd, membership: Arc::downgrade(membership) }
    }
}

impl Source for EtcdSource {
    fn backend(&self) -> Backend {
        Backend::Etcd
    }

    // The same shape as a job's refresh answers (`JobEvent::Refreshed`).
    #[allow(clippy::type_complexity)]
    fn costs<'a>(&'a self, pools: &'a [PoolName]) -> SourceFuture<'a, Option<Vec<(PoolName, Option<PoolCost>)>>> {
        Box::pin(async move {
            match self.etcd.costs(pools).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::debug!("published costs not read ({e}); asking the pools");
                    None
                }
            }
        })
    }

    fn reload(&self) -> SourceFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move {
            let Some(m) = self.membership.upgrade() else {
                return Err("the pool is shutting down".into());
            };
            let snap = self.etcd.load().await.map_err(|e| e.to_string())?;
            Ok(registration::apply(&m, snap, None, "psu reload"))
        })
    }
}
