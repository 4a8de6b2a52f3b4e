//! The pool daemon's configuration file (TOML). Read once at start by the binary; everything
//! below receives the resolved values. Unknown keys are refused.
//!
//! ```toml
//! name = "pool1"                   # must be listed in the cluster file
//! data_dir = "pool1"               # relative paths are relative to this file
//! capacity = "10Gi"                # bytes, or a number with a unit (k M G T, Ki Mi Gi Ti)
//! cluster_file = "cluster.toml"   # membership from this file (or [membership] backend = "etcd")
//! # [tls]                          # this pool's credentials (docs/security.md)
//! # cert = "pool1.pool.crt"        # default: <name>.pool.crt beside this file
//! # key = "pool1.pool.key"         # default: the cert's path ending in .key
//! # trust = ["ca.crt"]             # CAs whose certificates are accepted; default: ca.crt
//! # deny = ["old-admin"]           # names refused although their certificates are valid
//! # admin_listen = "0.0.0.0:22225" # default: loopback, on the cluster file's admin port
//! # p2p_listen = "0.0.0.0:22125"   # default: the cluster file's p2p address
//! # pin_owner_prefix = "PinManager"
//! # shutdown_grace_seconds = 10
//! # p2p_max_active = 8             # concurrent incoming pool-to-pool transfers
//! # p2p_max_outgoing = 16          # concurrent outgoing streams as a source
//! # p2p_no_progress_seconds = 120  # a transfer silent this long fails
//!
//! # [migration]
//! # concurrency_default = 1        # concurrency of a new job without -concurrency
//! # refresh_seconds = 300          # how often a job re-reads its targets' cost (-refresh)
//! # retry_base_seconds = 10        # a failed file waits this long before its next try...
//! # retry_cap_seconds = 600        # ...doubling on each failure, up to this
//! # batch_files = 64               # small files per unit of a job's concurrency (1: none)
//! # batch_bytes = "4Mi"            # bytes per batch of small files (files up to 1 MiB)
//!
//! # [membership]                   # docs/operator-guide.md, "Membership through etcd"
//! # backend = "etcd"               # default "file": the cluster_file above
//! # endpoints = ["http://127.0.0.1:2379"]
//! # prefix = "/tidepool/"          # one cluster of pools per prefix
//! # user = "tidepool"              # with password_file, if etcd has authentication on
//! # password_file = "etcd.password"
//! # ca_file = "etcd-ca.pem"        # https endpoints: the CA, and a client certificate and key
//! # cert_file = "etcd-client.pem"  # if etcd asks for one
//! # key_file = "etcd-client.key"
//! # lease_seconds = 10             # a pool silent this long is no longer alive
//! # publish_seconds = 3            # how often a pool renews its lease and publishes its cost
//! # tags = { host = "node1" }      # this pool's tags and HSMs, registered in etcd
//! # hsm = ["osm"]
//! # [metrics]                      # Prometheus metrics (docs/metrics.md); off without this table
//! # listen = "127.0.0.1:9325"       # serves GET /metrics over HTTP
//! # [log]
//! # format = "text"                # or "json": one JSON object per line
//! # filter = "warn,tidepool_pool=debug" # default: logging::DEFAULT_FILTER; RUST_LOG and
//! #                                # --log-filter win over it; SIGHUP re-reads it
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};
use tidepool_p2p::PoolName;
use tidepool_p2p::cluster::ClusterFile;
use tidepool_p2p::tls::{Role, TlsFiles};

use crate::process::logging::{DEFAULT_FILTER, LogFormat, LogLevels};
use crate::transfer::TransferSettings;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The pool's name; the cluster file must list it.
    pub name: PoolName,
    /// Where metadata (`meta/`), data (`data/`) and partial transfers (`incoming/`) live.
    pub data_dir: PathBuf,
    /// The pool's size in bytes (a number, or a string with a unit such as "10Gi").
    #[serde(deserialize_with = "bytes")]
    pub capacity: u64,
    /// The cluster file shared by every pool and the shell; required unless the membership
    /// comes from etcd (`[membership]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_file: Option<PathBuf>,
    /// Where the admin endpoint listens; default: 127.0.0.1 on the cluster file's admin port.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Where the data endpoint listens; default: the cluster file's p2p address.
    #[serde(default)]
    pub p2p_listen: Option<SocketAddr>,
    /// Sticky owners starting with this are pins.
    #[serde(default = "default_pin_prefix")]
    pub pin_owner_prefix: String,
    /// How long shutdown waits for in-flight work before aborting it.
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: u64,
    /// Concurrent incoming pool-to-pool transfers; more queue (`pp set max active` changes it
    /// live).
    #[serde(default = "default_max_active")]
    pub p2p_max_active: usize,
    /// Concurrent outgoing streams when other pools copy from this one (`pp set max
    /// outgoing` changes it live).
    #[serde(default = "default_max_outgoing")]
    pub p2p_max_outgoing: usize,
    /// A pool-to-pool transfer that receives nothing for this long fails.
    #[serde(default = "default_no_progress")]
    pub p2p_no_progress_seconds: u64,
    /// The migration module's defaults (`[migration]`).
    #[serde(default)]
    pub migration: MigrationConfig,
    /// The log's format and filter (`[log]`).
    #[serde(default)]
    pub log: LogConfig,
    /// Where the membership comes from (`[membership]`): the cluster file, or etcd.
    #[serde(default)]
    pub membership: MembershipConfig,
    /// This pool's certificate, key, trust anchors and deny list (`[tls]`).
    #[serde(default)]
    pub tls: TlsConfig,
    /// The Prometheus metrics page (`[metrics]`); none without the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

/// The `[tls]` table (`docs/security.md`). Empty paths take the defaults of
/// [`PoolConfig::parse`]: `<name>.pool.crt`, its `.key`, and `ca.crt`, beside the config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The pool's certificate (PEM; intermediates may follow it). Its CN must be the pool's
    /// name and its role `pool`.
    pub cert: PathBuf,
    /// The certificate's private key (PEM).
    pub key: PathBuf,
    /// The CA certificates whose certificates are accepted (several during a change of CA).
    pub trust: Vec<PathBuf>,
    /// Names refused although their certificates are valid (revoked credentials).
    pub deny: Vec<String>,
}

impl TlsConfig {
    pub fn files(&self) -> TlsFiles {
        TlsFiles { cert: self.cert.clone(), key: self.key.clone(), trust: self.trust.clone(), deny: self.deny.clone() }
    }
}

/// The `[metrics]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where the HTTP listener serving `GET /metrics` listens (plain HTTP, no authentication:
    /// a loopback or management-network address).
    pub listen: SocketAddr,
}

/// Where the membership comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MembershipBackend {
    /// The cluster file (`cluster_file`).
    #[default]
    File,
    /// etcd (`endpoints`).
    Etcd,
}

/// The `[membership]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipConfig {
    /// `file` (the default) or `etcd`.
    pub backend: MembershipBackend,
    /// etcd's client URLs (`http://host:2379`, or `https://` with `ca_file`).
    pub endpoints: Vec<String>,
    /// The prefix of every key of this cluster of pools.
    pub prefix: String,
    /// etcd's user, if etcd has authentication on (the password is in `password_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The CA that signed etcd's certificate (PEM), for `https://` endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// This pool's client certificate and key (PEM), if etcd asks for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// A pool that has not renewed its lease for this long is no longer alive.
    pub lease_seconds: u64,
    /// How often a pool renews its lease and publishes its cost.
    pub publish_seconds: u64,
    /// This pool's tags (host, rack, ...), registered in etcd.
    pub tags: std::collections::BTreeMap<String, String>,
    /// The HSM instances attached to this pool, registered in etcd.
    pub hsm: Vec<String>,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            backend: MembershipBackend::File,
            endpoints: Vec::new(),
            prefix: "/tidepool/".into(),
            user: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            lease_seconds: 10,
            publish_seconds: 3,
            tags: Default::default(),
            hsm: Vec::new(),
        }
    }
}

impl MembershipConfig {
    fn check(&self, c: &PoolConfig) -> Result<(), String> {
        match self.backend {
            MembershipBackend::File => {
                if c.cluster_file.is_none() {
                    return Err("cluster_file is missing (or set [membership] backend = \"etcd\")".into());
                }
            }
            MembershipBackend::Etcd => {
                if self.endpoints.is_empty() {
                    return Err(
                        "membership.endpoints: give etcd's client URLs, such as [\"http://127.0.0.1:2379\"]".into()
                    );
                }
                if let Some(e) = self.endpoints.iter().find(|e| !e.starts_with("http://") && !e.starts_with("https://"))
                {
                    return Err(format!("membership.endpoints: {e:?} is not an http:// or https:// URL"));
                }
                for (what, addr) in [("admin_listen", c.admin_listen), ("p2p_listen", c.p2p_listen)] {
                    match addr {
                        None => {
                            return Err(format!(
                                "{what} is needed with [membership] backend = \"etcd\": the address other pools and the shell use"
                            ));
                        }
                        Some(a) if a.ip().is_unspecified() || a.port() == 0 => {
                            return Err(format!(
                                "{what} {a}: with etcd it is the address other pools use; give a real address and port"
                            ));
                        }
                        Some(_) => {}
                    }
                }
                if self.user.is_some() != self.password_file.is_some() {
                    return Err("membership.user and membership.password_file go together".into());
                }
                if self.cert_file.is_some() != self.key_file.is_some() {
                    return Err("membership.cert_file and membership.key_file go together".into());
                }
                // Secrets and TLS only over https://, and https:// only with the CA to check it.
                let plain = self.endpoints.iter().find(|e| e.starts_with("http://"));
                if let (Some(e), true) = (plain, self.user.is_some()) {
                    return Err(format!(
                        "membership.user: the password would cross the network in clear to {e:?}; \
                         use https:// endpoints with membership.ca_file"
                    ));
                }
                if let Some(e) = plain {
                    for (key, set) in [("ca_file", self.ca_file.is_some()), ("cert_file", self.cert_file.is_some())] {
                        if set {
                            return Err(format!(
                                "membership.{key} is for TLS, but endpoint {e:?} is plain http://; \
                                 give https:// endpoints (every one), or drop membership.{key}"
                            ));
                        }
                    }
                }
                if let (Some(e), None) = (self.endpoints.iter().find(|e| e.starts_with("https://")), &self.ca_file) {
                    return Err(format!(
                        "membership.ca_file is needed with https:// endpoint {e:?}: the CA (PEM) that signed etcd's certificate"
                    ));
                }
                if self.lease_seconds < 2 || self.publish_seconds == 0 || self.publish_seconds * 2 > self.lease_seconds
                {
                    return Err(
                        "membership.lease_seconds must be at least 2 and at least twice membership.publish_seconds (at least 1)"
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }
}

/// The `[log]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (the default) or `json` lines; `--log-format` wins over it.
    pub format: LogFormat,
    /// The log filter (`logging` explains the syntax); default: [`DEFAULT_FILTER`]. `RUST_LOG`
    /// and `--log-filter` win over it. SIGHUP reads it again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

impl LogConfig {
    /// The filter this table names, or the default.
    pub fn levels(&self) -> Result<LogLevels, String> {
        let text = self.filter.as_deref().unwrap_or(DEFAULT_FILTER);
        text.parse().map_err(|e| format!("log.filter {text:?}: {e}"))
    }
}

/// The `[migration]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationConfig {
    /// Concurrency of a job created without `-concurrency` (`migration concurrency` changes a
    /// job's live).
    pub concurrency_default: usize,
    /// How often a job re-reads its targets' space and load when created without `-refresh`.
    pub refresh_seconds: u64,
    /// A file that failed waits this long before its next try, doubling after each further
    /// failure...
    pub retry_base_seconds: u64,
    /// ...up to this.
    pub retry_cap_seconds: u64,
    /// Small files one unit of a job's concurrency carries to one target (docs/migration.md).
    pub batch_files: usize,
    /// Bytes one such batch carries at most.
    #[serde(deserialize_with = "bytes")]
    pub batch_bytes: u64,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        let module = tidepool_migration::module::Settings::default();
        MigrationConfig {
            concurrency_default: 1,
            refresh_seconds: 300,
            retry_base_seconds: 10,
            retry_cap_seconds: 600,
            batch_files: module.batch_files,
            batch_bytes: module.batch_bytes,
        }
    }
}

impl MigrationConfig {
    fn check(&self) -> Result<(), String> {
        if self.concurrency_default == 0 {
            return Err("migration.concurrency_default must be at least 1".into());
        }
        if self.refresh_seconds == 0 || self.retry_base_seconds == 0 {
            return Err("migration.refresh_seconds and migration.retry_base_seconds must be at least 1".into());
        }
        if self.retry_cap_seconds < self.retry_base_seconds {
            return Err("migration.retry_cap_seconds must be at least migration.retry_base_seconds".into());
        }
        let most = tidepool_p2p::message::MAX_COPY_BATCH;
        if !(1..=most).contains(&self.batch_files) {
            return Err(format!("migration.batch_files must be from 1 to {most}, not {}", self.batch_files));
        }
        let most = tidepool_p2p::message::MAX_COPY_BATCH_BYTES;
        if !(1..=most).contains(&self.batch_bytes) {
            return Err(format!(
                "migration.batch_bytes must be from 1 to {most} bytes (64 MiB), not {}",
                self.batch_bytes
            ));
        }
        Ok(())
    }

    /// The module's settings: these values, the rest at their defaults.
    pub fn settings(&self) -> tidepool_migration::module::Settings {
        let secs = std::time::Duration::from_secs;
        tidepool_migration::module::Settings {
            default_concurrency: self.concurrency_default,
            refresh: secs(self.refresh_seconds),
            backoff: tidepool_migration::queue::Backoff {
                base: secs(self.retry_base_seconds),
                cap: secs(self.retry_cap_seconds),
            },
            batch_files: self.batch_files,
            batch_bytes: self.batch_bytes,
            ..Default::default()
        }
    }
}

fn default_max_active() -> usize {
    TransferSettings::default().max_active
}

fn default_max_outgoing() -> usize {
    TransferSettings::default().max_outgoing
}

fn default_no_progress() -> u64 {
    TransferSettings::default().no_progress.as_secs()
}

fn default_pin_prefix() -> String {
    "PinManager".into()
}

fn default_grace() -> u64 {
    10
}

fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Number(n) => Ok(n),
        Size::Text(t) => tidepool_p2p::units::parse_bytes(&t).map_err(serde::de::Error::custom),
    }
}

impl PoolConfig {
    /// Parses the file's text; relative paths are resolved against `base` (the file's folder).
    pub fn parse(text: &str, base: &Path) -> Result<PoolConfig, String> {
        let mut c: PoolConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if c.tls.cert.as_os_str().is_empty() {
            c.tls.cert = TlsFiles::in_dir(Path::new(""), Role::Pool, c.name.as_str()).cert;
        }
        if c.tls.key.as_os_str().is_empty() {
            c.tls.key = c.tls.cert.with_extension("key");
        }
        if c.tls.trust.is_empty() {
            c.tls.trust.push(PathBuf::from("ca.crt"));
        }
        let m = &mut c.membership;
        let optional = [&mut c.cluster_file, &mut m.password_file, &mut m.ca_file, &mut m.cert_file, &mut m.key_file];
        let tls = &mut c.tls;
        let fixed = [&mut c.data_dir, &mut tls.cert, &mut tls.key].into_iter().chain(&mut tls.trust);
        for p in fixed.chain(optional.into_iter().flatten()) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if c.capacity == 0 {
            return Err("capacity must be more than 0 bytes".into());
        }
        if c.p2p_no_progress_seconds == 0 {
            return Err("p2p_no_progress_seconds must be at least 1".into());
        }
        if c.p2p_max_active == 0 || c.p2p_max_outgoing == 0 {
            return Err(
                "p2p_max_active and p2p_max_outgoing must be at least 1 (pp set max ... 0 pauses at run time)".into()
            );
        }
        c.migration.check()?;
        c.membership.check(&c)?;
        if let Some(m) = &c.metrics {
            if m.listen.port() == 0 {
                return Err("metrics.listen needs a port (Prometheus scrapes a fixed address)".into());
            }
            if c.admin_listen == Some(m.listen) || c.p2p_listen == Some(m.listen) {
                return Err(format!("metrics.listen {} is also the admin or p2p address", m.listen));
            }
        }
        c.log.levels()?;
        Ok(c)
    }

    pub fn transfer_settings(&self) -> TransferSettings {
        TransferSettings {
            max_active: self.p2p_max_active,
            max_outgoing: self.p2p_max_outgoing,
            no_progress: std::time::Duration::from_secs(self.p2p_no_progress_seconds),
        }
    }

    /// The listen addresses, from this file or the cluster file (with etcd, this file's).
    pub fn listen_addresses(&self, cluster: &ClusterFile) -> Result<(SocketAddr, SocketAddr), String> {
        if let (Some(admin), Some(p2p)) = (self.admin_listen, self.p2p_listen)
            && self.membership.backend == MembershipBackend::Etcd
        {
            return Ok((admin, p2p));
        }
        let file = self.cluster_file.as_deref().unwrap_or(Path::new(""));
        let entry = cluster
            .pool(&self.name)
            .ok_or_else(|| format!("pool {} is not listed in the cluster file {}", self.name, file.display()))?;
        let admin = self.admin_listen.unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, entry.admin.port())));
        let p2p = self.p2p_listen.unwrap_or(entry.p2p);
        Ok((admin, p2p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_units() {
        let c = PoolConfig::parse(
            "name = \"pool1\"\ndata_dir = \"d\"\ncapacity = \"1Gi\"\ncluster_file = \"c.toml\"\n",
            Path::new("/etc/tp"),
        )
        .unwrap();
        assert_eq!(c.capacity, 1 << 30);
        assert_eq!(c.data_dir, PathBuf::from("/etc/tp/d"));
        assert_eq!(c.tls.cert, PathBuf::from("/etc/tp/pool1.pool.crt"));
        assert_eq!(c.tls.key, PathBuf::from("/etc/tp/pool1.pool.key"));
        assert_eq!(c.tls.trust, vec![PathBuf::from("/etc/tp/ca.crt")]);
        assert_eq!(c.pin_owner_prefix, "PinManager");
        let n = PoolConfig::parse(
            "name = \"p\"\ndata_dir = \"d\"\ncapacity = 1000\ncluster_file = \"c\"\n",
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(n.capacity, 1000);
    }

    #[test]
    fn refuses_unknown_keys_and_bad_sizes() {
        let base = "name = \"p\"\ndata_dir = \"d\"\ncluster_file = \"c\"\n";
        assert!(
            PoolConfig::parse(&format!("{base}capacity = 10\ncolour = \"red\"\n"), Path::new("/"))
                .unwrap_err()
                .contains("colour")
        );
        assert!(PoolConfig::parse(&format!("{base}capacity = \"10X\"\n"), Path::new("/")).is_err());
        assert!(PoolConfig::parse(&format!("{base}capacity = 0\n"), Path::new("/")).is_err());
        assert!(PoolConfig::parse(base, Path::new("/")).unwrap_err().contains("capacity"));
    }

    #[test]
    fn migration_table_has_defaults_and_is_checked() {
        let base = "name = \"p\"\ndata_dir = \"d\"\ncapacity = 10\ncluster_file = \"c\"\n";
        let c = PoolConfig::parse(base, Path::new("/")).unwrap();
        assert_eq!(c.migration, MigrationConfig::default());
        let s = c.migration.settings();
        assert_eq!(s.default_concurrency, 1);
        assert_eq!(s.refresh, std::time::Duration::from_secs(300));
        assert_eq!(s.backoff.base, std::time::Duration::from_secs(10));
        assert_eq!(s.backoff.cap, std::time::Duration::from_secs(600));
        let c = PoolConfig::parse(
            &format!("{base}[migration]\nconcurrency_default = 4\nretry_cap_seconds = 60\n"),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(
            c.migration,
            MigrationConfig { concurrency_default: 4, retry_cap_seconds: 60, ..MigrationConfig::default() }
        );
        // Written back (the demo and the benchmark write configs), it reads the same.
        assert_eq!(PoolConfig::parse(&toml::to_string_pretty(&c).unwrap(), Path::new("/")).unwrap(), c);
        for bad in ["concurrency_default = 0", "retry_base_seconds = 0", "retry_cap_seconds = 5", "colour = 1"] {
            assert!(PoolConfig::parse(&format!("{base}[migration]\n{bad}\n"), Path::new("/")).is_err(), "{bad}");
        }
    }

    #[test]
    fn metrics_table_is_optional_and_checked() {
        let base = "name = \"p\"\ndata_dir = \"d\"\ncapacity = 10\ncluster_file = \"c\"\n";
        assert_eq!(PoolConfig::parse(base, Path::new("/")).unwrap().metrics, None);
        let c = PoolConfig::parse(&format!("{base}[metrics]\nlisten = \"127.0.0.1:9325\"\n"), Path::new("/")).unwrap();
        assert_eq!(c.metrics, Some(MetricsConfig { listen: "127.0.0.1:9325".parse().unwrap() }));
        assert_eq!(PoolConfig::parse(&toml::to_string_pretty(&c).unwrap(), Path::new("/")).unwrap(), c);
        let check = |table: &str| PoolConfig::parse(&format!("{base}{table}"), Path::new("/")).unwrap_err();
        assert!(check("[metrics]\n").contains("listen"));
        assert!(check("[metrics]\nlisten = \"localhost\"\n").contains("socket address"));
        assert!(check("[metrics]\nlisten = \"127.0.0.1:0\"\n").contains("needs a port"));
        assert!(check("[metrics]\nlisten = \"127.0.0.1:1\"\npath = \"/m\"\n").contains("path"));
        let clash = "admin_listen = \"127.0.0.1:9\"\n[metrics]\nlisten = \"127.0.0.1:9\"\n";
        assert!(check(clash).contains("also the admin"));
    }

    #[test]
    fn etcd_secrets_and_tls_need_https_and_https_needs_its_ca() {
        let base = "name = \"p\"\ndata_dir = \"d\"\ncapacity = 10\nadmin_listen = \"127.0.0.1:1\"\n\
                    p2p_listen = \"127.0.0.1:2\"\n[membership]\nbackend = \"etcd\"\n";
        let parse = |rest: &str| PoolConfig::parse(&format!("{base}{rest}"), Path::new("/"));
        let http = "endpoints = [\"http://e:2379\"]\n";
        let https = "endpoints = [\"https://e:2379\"]\n";
        let mixed = "endpoints = [\"https://e:2379\", \"http://f:2379\"]\n";
        let user = "user = \"u\"\npassword_file = \"pw\"\n";
        let ca = "ca_file = \"ca.pem\"\n";
        let cert = "cert_file = \"c.pem\"\nkey_file = \"c.key\"\n";
        for (rest, refused) in [
            (http.to_string(), None),
            (format!("{https}{ca}"), None),
            (format!("{https}{ca}{user}{cert}"), None),
            (format!("{http}{user}"), Some("membership.user: the password would cross the network in clear")),
            (format!("{http}{ca}"), Some("membership.ca_file is for TLS, but endpoint \"http://e:2379\"")),
            (format!("{mixed}{ca}"), Some("membership.ca_file is for TLS, but endpoint \"http://f:2379\"")),
            (format!("{http}{cert}"), Some("membership.cert_file is for TLS")),
            (https.to_string(), Some("membership.ca_file is needed with https:// endpoint \"https://e:2379\"")),
            (format!("{https}{user}"), Some("membership.ca_file is needed")),
        ] {
            match (parse(&rest), refused) {
                (Ok(_), None) => {}
                (Err(e), Some(want)) => assert!(e.starts_with(want), "{rest}: {e}"),
                (got, want) => panic!("{rest}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn log_table_has_defaults_and_refuses_bad_filters() {
        let base = "name = \"p\"\ndata_dir = \"d\"\ncapacity = 10\ncluster_file = \"c\"\n";
        let c = PoolConfig::parse(base, Path::new("/")).unwrap();
        assert_eq!(c.log, LogConfig::default());
        assert_eq!(c.log.levels().unwrap().to_string(), DEFAULT_FILTER);
        let c = PoolConfig::parse(
            &format!("{base}[log]\nformat = \"json\"\nfilter = \"info,sled=warn\"\n"),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.levels().unwrap().to_string(), "info,sled=warn");
        assert_eq!(PoolConfig::parse(&toml::to_string_pretty(&c).unwrap(), Path::new("/")).unwrap(), c);
        let err = PoolConfig::parse(&format!("{base}[log]\nfilter = \"verbose\"\n"), Path::new("/")).unwrap_err();
        assert!(err.contains("log.filter \"verbose\"") && err.contains("'verbose' is not a level"), "{err}");
        assert!(PoolConfig::parse(&format!("{base}[log]\nformat = \"xml\"\n"), Path::new("/")).is_err());
        assert!(PoolConfig::parse(&format!("{base}[log]\ncolour = 1\n"), Path::new("/")).is_err());
    }
}
