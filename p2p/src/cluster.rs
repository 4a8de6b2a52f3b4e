//! The cluster file: every pool with its addresses, groups, tags and HSMs, and the links. Every
//! daemon and the shell read the same file; it is the default source of membership.
//!
//! ```toml
//! [[pool]]
//! name = "pool1"
//! p2p = "127.0.0.1:22125"      # data and pool-to-pool endpoint
//! admin = "127.0.0.1:22225"    # admin endpoint
//! groups = ["disk"]
//! tags = { host = "node1", rack = "r1" }
//! hsm = ["osm"]
//!
//! [[link]]
//! name = "disk-link"
//! groups = ["disk"]
//! ```

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::ids::PoolName;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Every pool of the cluster.
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolEntry>,
    /// Links: a name for a set of pool groups.
    #[serde(default, rename = "link")]
    pub links: Vec<LinkEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolEntry {
    pub name: PoolName,
    /// Address of the data endpoint (client put/get and pool-to-pool transfers).
    pub p2p: SocketAddr,
    /// Address of the admin endpoint.
    pub admin: SocketAddr,
    /// Pool groups this pool belongs to.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Free-form tags such as `host` and `rack`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Names of the HSM instances attached to this pool.
    #[serde(default)]
    pub hsm: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkEntry {
    pub name: String,
    pub groups: Vec<String>,
}

impl ClusterFile {
    /// Parses and checks the file's text: unique pool names and addresses, links naming known
    /// groups.
    pub fn parse(text: &str) -> Result<ClusterFile, String> {
        let file: ClusterFile = toml::from_str(text).map_err(|e| e.to_string())?;
        file.check()?;
        Ok(file)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a cluster file always serialises")
    }

    fn check(&self) -> Result<(), String> {
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for p in &self.pools {
            if !names.insert(&p.name) {
                return Err(format!("pool {} is listed twice", p.name));
            }
            for addr in [p.p2p, p.admin] {
                if !addrs.insert(addr) {
                    return Err(format!("address {addr} is used twice (pool {})", p.name));
                }
            }
        }
        let groups: HashSet<&String> = self.pools.iter().flat_map(|p| &p.groups).collect();
        for link in &self.links {
            for g in &link.groups {
                if !groups.contains(g) {
                    return Err(format!("link {} names pool group {g}, which no pool belongs to", link.name));
                }
            }
        }
        Ok(())
    }

    pub fn pool(&self, name: &PoolName) -> Option<&PoolEntry> {
        self.pools.iter().find(|p| &p.name == name)
    }

    /// Every pool group some pool belongs to, sorted, each once.
    pub fn groups(&self) -> Vec<String> {
        let groups: std::collections::BTreeSet<&String> = self.pools.iter().flat_map(|p| &p.groups).collect();
        groups.into_iter().cloned().collect()
    }

    /// Pools of any of the given groups, in file order.
    pub fn pools_in_groups<'a>(&'a self, groups: &'a [String]) -> impl Iterator<Item = &'a PoolEntry> + 'a {
        self.pools.iter().filter(move |p| p.groups.iter().any(|g| groups.contains(g)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[[pool]]
name = "pool1"
p2p = "127.0.0.1:1001"
admin = "127.0.0.1:2001"
groups = ["disk"]
tags = { host = "h1" }

[[pool]]
name = "pool2"
p2p = "127.0.0.1:1002"
admin = "127.0.0.1:2002"
groups = ["disk"]
hsm = ["osm"]

[[link]]
name = "l"
groups = ["disk"]
"#;

    #[test]
    fn parses_and_round_trips() {
        let file = ClusterFile::parse(SAMPLE).unwrap();
        assert_eq!(file.pools.len(), 2);
        assert_eq!(file.pools[0].tags["host"], "h1");
        assert_eq!(ClusterFile::parse(&file.to_toml()).unwrap(), file);
        assert_eq!(file.pools_in_groups(&["disk".into()]).count(), 2);
    }

    #[test]
    fn rejects_mistakes() {
        assert!(ClusterFile::parse(&SAMPLE.replace("pool2", "pool1")).unwrap_err().contains("twice"));
        assert!(ClusterFile::parse(&SAMPLE.replace("1002", "1001")).unwrap_err().contains("twice"));
        assert!(ClusterFile::parse(&SAMPLE.replace("groups = [\"disk\"]\n\"", "groups = [\"tape\"]\n\"")).is_ok());
        assert!(ClusterFile::parse(&SAMPLE.replace("hsm =", "hsms =")).is_err());
        assert!(ClusterFile::parse(&SAMPLE.replace("\"pool2\"", "\"pool 2\"")).is_err());
    }
}
