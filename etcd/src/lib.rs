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
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity, KeyValue, TlsOptions,
    Txn, TxnOp, TxnOpResponse,
};
use serde::{Deserialize, Serialize};
use tidepool_p2p::PoolName;
use tidepool_p2p::cluster::{ClusterFile, LinkEntry, PoolEntry};
use tidepool_p2p::membership::{Backend, Membership, Source, SourceFuture};
use tidepool_p2p::message::PoolCost;

pub use keys::Keys;
pub use registration::{Registration, run};

/// How Tidepool reaches etcd (the pool config's `[membership]` table, resolved). Its `Debug`
/// never shows the password.
#[derive(Clone)]
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
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("user", &self.user.as_ref().map(|(user, _)| user))
            .field("password", &self.user.as_ref().map(|_| "<hidden>"))
            .field(
                "tls",
                &self.tls.as_ref().map(|t| if t.identity.is_some() { "ca, client certificate" } else { "ca" }),
            )
            .field("lease", &self.lease)
            .field("publish", &self.publish)
            .finish()
    }
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
    /// Another running daemon is registered under this pool's name (its `alive/` key is held
    /// under another lease).
    #[error(
        "pool {pool} is registered in etcd by another running daemon (its alive key is held under another lease); \
         stop that daemon, or give this one another name"
    )]
    Taken { pool: String },
}

/// What the daemon's connections to etcd share: the revision of the snapshot in force (an
/// older one is never applied over it), the groups it listed, and the unreadable keys warned
/// about already.
#[derive(Debug, Default)]
struct Shared {
    /// The etcd revision of the snapshot in force (0: none applied yet).
    revision: i64,
    /// The pool groups of the snapshot in force, members or not.
    groups: Option<BTreeSet<String>>,
    /// (key, mod revision) of the values skipped as unreadable and warned about.
    warned: BTreeSet<(String, i64)>,
}

/// Up to this many targets, [`Etcd::costs`] reads their keys one by one (in one transaction);
/// beyond, the whole `cost/` range.
pub const COST_KEYS_ONE_BY_ONE: usize = 16;

/// How many times a checked change (`psu remove pgroup`) reads and tries again when the
/// membership changed between its read and its write.
const CHECKED_TRIES: usize = 3;

/// A connection to etcd and the key layout of one cluster of pools.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    keys: Keys,
    endpoints: String,
    settings: EtcdSettings,
    shared: Arc<Mutex<Shared>>,
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
    /// etcd's revision when it was read: of the configuration and the liveness alike (one
    /// transaction reads both).
    pub revision: i64,
}

/// A value under a key of a known kind that Tidepool cannot read: skipped, the rest read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Skipped {
    key: String,
    mod_revision: i64,
    reason: String,
}

/// The configuration range read back (`(key, value, mod revision)` each): the pools with their
/// groups, the links, the groups, and the keys whose values could not be read (skipped, so
/// that one bad value does not hide the whole membership).
fn decode<'a>(
    keys: &Keys,
    kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8], i64)>,
) -> (ClusterFile, BTreeSet<String>, Vec<Skipped>) {
    let mut pools: BTreeMap<PoolName, PoolRecord> = BTreeMap::new();
    let mut members: BTreeMap<PoolName, Vec<String>> = BTreeMap::new();
    let mut links = Vec::new();
    let mut groups = BTreeSet::new();
    let mut skipped = Vec::new();
    for (key, value, mod_revision) in kvs {
        let key = String::from_utf8_lossy(key).into_owned();
        match keys.parse(&key) {
            Some(keys::Key::Pool(name)) => match serde_json::from_slice::<PoolRecord>(value) {
                Ok(rec) => {
                    pools.insert(name, rec);
                }
                Err(e) => skipped.push(Skipped { key, mod_revision, reason: e.to_string() }),
            },
            Some(keys::Key::Group(g)) => {
                groups.insert(g);
            }
            Some(keys::Key::Member(g, pool)) => members.entry(pool).or_default().push(g),
            Some(keys::Key::Link(name)) => match serde_json::from_slice::<Vec<String>>(value) {
                Ok(groups) => links.push(LinkEntry { name, groups }),
                Err(e) => skipped.push(Skipped { key, mod_revision, reason: e.to_string() }),
            },
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
    (cluster, groups, skipped)
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
        let etcd = Etcd { client, keys, endpoints, settings: settings.clone(), shared: Arc::default() };
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

    /// The whole membership (not the costs): the configuration and the liveness in one
    /// transaction, so both are of one revision. A value Tidepool cannot read is skipped, with
    /// a warning once per key and revision; the rest is read.
    pub async fn load(&self) -> Result<Snapshot, EtcdError> {
        let (from, to) = self.keys.config_range();
        let (a, b) = self.keys.alive_range();
        let txn = Txn::new().and_then([
            TxnOp::get(from, Some(GetOptions::new().with_range(to))),
            TxnOp::get(a, Some(GetOptions::new().with_range(b).with_keys_only())),
        ]);
        let r = self.client().txn(txn).await.map_err(|e| self.err(e))?;
        let revision = r.header().map_or(0, |h| h.revision());
        let mut gets = r.op_responses().into_iter().filter_map(|op| match op {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let (Some(config), Some(alive)) = (gets.next(), gets.next()) else {
            return Err(EtcdError::Unreadable {
                key: self.keys.prefix().into(),
                reason: "a read answered nothing".into(),
            });
        };
        let (cluster, groups, skipped) =
            decode(&self.keys, config.kvs().iter().map(|kv| (kv.key(), kv.value(), kv.mod_revision())));
        if !skipped.is_empty() {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            if shared.warned.len() > 10_000 {
                shared.warned.clear();
            }
            for s in skipped {
                if shared.warned.insert((s.key.clone(), s.mod_revision)) {
                    tracing::warn!(
                        "etcd key {} (revision {}) holds what Tidepool cannot read ({}); skipped, the rest of the \
                         membership is read (docs/troubleshooting.md)",
                        s.key,
                        s.mod_revision,
                        s.reason
                    );
                }
            }
        }
        let alive = alive
            .kvs()
            .iter()
            .filter_map(|kv| match self.keys.parse(&String::from_utf8_lossy(kv.key())) {
                Some(keys::Key::Alive(p)) => Some(p),
                _ => None,
            })
            .collect();
        Ok(Snapshot { cluster, groups, alive, revision })
    }

    /// The groups of the snapshot in force (see [`registration::apply`]), members or not;
    /// `None` before one is applied. What `psu ls pgroup` shows when etcd cannot be read.
    pub fn groups_in_force(&self) -> Option<BTreeSet<String>> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).groups.clone()
    }

    /// The published cost of each of `pools`, in that order, in one round trip (`None`: the
    /// pool publishes none: it is not alive): up to [`COST_KEYS_ONE_BY_ONE`] pools, their keys
    /// in one transaction; more, the whole `cost/` range.
    pub async fn costs(&self, pools: &[PoolName]) -> Result<Vec<(PoolName, Option<PoolCost>)>, EtcdError> {
        if pools.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.client();
        let kvs: Vec<KeyValue> = if pools.len() <= COST_KEYS_ONE_BY_ONE {
            let gets: Vec<TxnOp> = pools.iter().map(|p| TxnOp::get(self.keys.cost(p.as_str()), None)).collect();
            let r = client.txn(Txn::new().and_then(gets)).await.map_err(|e| self.err(e))?;
            r.op_responses()
                .into_iter()
                .flat_map(|op| match op {
                    TxnOpResponse::Get(mut g) => g.take_kvs(),
                    _ => Vec::new(),
                })
                .collect()
        } else {
            let mut got =
                client.get(self.keys.cost(""), Some(GetOptions::new().with_prefix())).await.map_err(|e| self.err(e))?;
            got.take_kvs()
        };
        let mut costs: BTreeMap<PoolName, PoolCost> = BTreeMap::new();
        for kv in &kvs {
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

    /// Puts `alive/<pool>` under `lease` unless another lease holds it (another daemon with
    /// this pool's name): whether it was put.
    pub(crate) async fn put_alive(&self, pool: &PoolName, lease: i64) -> Result<bool, EtcdError> {
        let key = self.keys.alive(pool.as_str());
        let since = format!("{{\"since\":{}}}", now_ms());
        let put = || TxnOp::put(key.clone(), since.clone(), Some(etcd_client::PutOptions::new().with_lease(lease)));
        let ours = Txn::new().when([Compare::lease(key.clone(), CompareOp::Equal, lease)]).and_then([put()]);
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([put()])
            .or_else([TxnOp::txn(ours)]);
        let r = self.client().txn(txn).await.map_err(|e| self.err(e))?;
        Ok(r.succeeded() || r.op_responses().into_iter().any(|op| matches!(op, TxnOpResponse::Txn(t) if t.succeeded())))
    }

    /// Waits until no daemon holds `alive/<pool>` (none is registered under this pool's
    /// name), for up to `within`: a daemon killed without leaving etcd holds it until its
    /// lease lapses. [`EtcdError::Taken`] if one still holds it then.
    pub async fn wait_until_free(&self, pool: &PoolName, within: Duration) -> Result<(), EtcdError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut said = false;
        loop {
            let got = self.client().get(self.keys.alive(pool.as_str()), None).await.map_err(|e| self.err(e))?;
            let Some(kv) = got.kvs().first() else {
                return Ok(());
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(EtcdError::Taken { pool: pool.to_string() });
            }
            if !std::mem::replace(&mut said, true) {
                tracing::warn!(
                    lease = kv.lease(),
                    "pool {pool} is still registered in etcd (a daemon killed lately, or another one running); \
                     waiting up to {within:?} for its lease to lapse"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
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

    /// `psu remove pgroup`: refused while a pool is in it or a link names it. The delete is a
    /// transaction that holds only if the group still has no member and no link changed since
    /// the read, so a `psu addto` or `psu set link` at the same moment cannot leave a member or
    /// a link of a removed group (the read is tried again, a few times).
    pub async fn remove_group(&self, group: &str) -> Result<(), EtcdError> {
        for _ in 0..CHECKED_TRIES {
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
                return Err(EtcdError::Refused(format!(
                    "link {} names pool group {group}; change the link first",
                    l.name
                )));
            }
            let (mfrom, mto) = self.keys.member_range(group);
            let (lfrom, lto) = self.keys.link_range();
            let txn = Txn::new()
                .when([
                    Compare::version(self.keys.group(group), CompareOp::Greater, 0),
                    // No member key at all (a range compare holds for every key in it, and for
                    // none as version 0)...
                    Compare::version(mfrom, CompareOp::Equal, 0).with_range(mto),
                    // ...and no link written since the read.
                    Compare::mod_revision(lfrom, CompareOp::Less, snap.revision + 1).with_range(lto),
                ])
                .and_then([TxnOp::delete(self.keys.group(group), None)]);
            if self.client().txn(txn).await.map_err(|e| self.err(e))?.succeeded() {
                return Ok(());
            }
            // A member came in meanwhile (or a member key whose pool has no record, which the
            // read above does not list): name it; else a link changed, read again.
            let (mfrom, mto) = self.keys.member_range(group);
            let got = self
                .client()
                .get(mfrom, Some(GetOptions::new().with_range(mto).with_keys_only()))
                .await
                .map_err(|e| self.err(e))?;
            let members: Vec<String> = got
                .kvs()
                .iter()
                .filter_map(|kv| match self.keys.parse(&String::from_utf8_lossy(kv.key())) {
                    Some(keys::Key::Member(_, pool)) => Some(pool.to_string()),
                    _ => None,
                })
                .collect();
            if !members.is_empty() {
                return Err(EtcdError::Refused(format!(
                    "pool group {group} still has pools ({}); `psu removefrom pgroup {group} <pool>` first",
                    members.join(", ")
                )));
            }
        }
        Err(EtcdError::Refused(format!(
            "the membership kept changing while pool group {group} was being removed; nothing was removed, try again"
        )))
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

    /// `psu set link`: the link names these groups (each must exist, checked in the same
    /// transaction as the write); no groups removes it.
    pub async fn set_link(&self, link: &str, groups: &[String]) -> Result<(), EtcdError> {
        let key = self.keys.link(link);
        if groups.is_empty() {
            self.client().delete(key, None).await.map_err(|e| self.err(e))?;
            return Ok(());
        }
        let value = serde_json::to_vec(groups).expect("a list of names serialises");
        let exist: Vec<Compare> =
            groups.iter().map(|g| Compare::version(self.keys.group(g), CompareOp::Greater, 0)).collect();
        let reads: Vec<TxnOp> =
            groups.iter().map(|g| TxnOp::get(self.keys.group(g), Some(GetOptions::new().with_keys_only()))).collect();
        let txn = Txn::new().when(exist).and_then([TxnOp::put(key, value, None)]).or_else(reads);
        let r = self.client().txn(txn).await.map_err(|e| self.err(e))?;
        if r.succeeded() {
            return Ok(());
        }
        let missing = groups.iter().zip(r.op_responses()).find_map(|(g, op)| match op {
            TxnOpResponse::Get(got) if got.kvs().is_empty() => Some(g.clone()),
            _ => None,
        });
        let g = missing.unwrap_or_else(|| groups.join(", "));
        Err(EtcdError::Refused(format!("no pool group named {g}; `psu create pgroup {g}` first")))
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

/// etcd as a pool's membership [`Source`]: costs in one round trip, `psu reload` a full read.
pub struct EtcdSource {
    etcd: Etcd,
    membership: Weak<Membership>,
    /// This pool: a view that no longer lists it is not applied.
    me: PoolName,
}

impl EtcdSource {
    pub fn new(etcd: Etcd, membership: &Arc<Membership>, me: PoolName) -> EtcdSource {
        EtcdSource { etcd, membership: Arc::downgrade(membership), me }
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
            registration::apply(&self.etcd, &m, snap, None, &self.me, "psu reload")
        })
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_value_is_skipped_and_the_rest_is_read() {
        let keys = Keys::new("/t/");
        let pool = |name: &str, port: u16| {
            (keys.pool(name), format!(r#"{{"p2p":"127.0.0.1:{port}","admin":"127.0.0.1:{}"}}"#, port + 1000), 3)
        };
        let rows: Vec<(String, String, i64)> = vec![
            (keys.group("disk"), String::new(), 1),
            (keys.group("empty"), String::new(), 1),
            (keys.link("bad-link"), "not json".into(), 7),
            (keys.link("l"), r#"["disk"]"#.into(), 2),
            (keys.member("disk", "pool1"), String::new(), 4),
            (keys.member("disk", "pool2"), String::new(), 4),
            pool("pool1", 1),
            (keys.pool("pool2"), "{\"p2p\": 5}".into(), 9),
            pool("pool3", 3),
            ("/t/pool/bad name".into(), "{}".into(), 1),
        ];
        let (cluster, groups, skipped) = decode(&keys, rows.iter().map(|(k, v, r)| (k.as_bytes(), v.as_bytes(), *r)));
        let names: Vec<&str> = cluster.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["pool1", "pool3"], "pool2's record is unreadable; the others are read");
        assert_eq!(cluster.pools[0].groups, ["disk"]);
        assert_eq!(cluster.links, [LinkEntry { name: "l".into(), groups: vec!["disk".into()] }]);
        assert_eq!(groups, BTreeSet::from(["disk".to_string(), "empty".to_string()]));
        let skipped: Vec<(&str, i64)> = skipped.iter().map(|s| (s.key.as_str(), s.mod_revision)).collect();
        assert_eq!(skipped, [("/t/link/bad-link", 7), ("/t/pool/pool2", 9)]);
    }

    #[test]
    fn the_settings_never_show_the_password() {
        let mut s = EtcdSettings::new(vec!["https://e:2379".into()]);
        s.user = Some(("tidepool".into(), "s3cret-pw".into()));
        let shown = format!("{s:?}");
        assert!(shown.contains("tidepool") && shown.contains("<hidden>"), "{shown}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
    }
}
