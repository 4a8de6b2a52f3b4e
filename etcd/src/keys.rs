//! The key layout under the prefix (the crate's documentation lists it).

use tidepool_p2p::PoolName;

/// The keys of one cluster of pools.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

/// A key read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Alive(PoolName),
    Cost(PoolName),
    Group(String),
    Link(String),
    Member(String, PoolName),
    Pool(PoolName),
}

impl Keys {
    /// Keys under `prefix` (a `/` is added if it lacks one).
    pub fn new(prefix: &str) -> Keys {
        let prefix = if prefix.ends_with('/') { prefix.to_string() } else { format!("{prefix}/") };
        Keys { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn alive(&self, pool: &str) -> String {
        format!("{}alive/{pool}", self.prefix)
    }
    pub fn cost(&self, pool: &str) -> String {
        format!("{}cost/{pool}", self.prefix)
    }
    pub fn group(&self, group: &str) -> String {
        format!("{}group/{group}", self.prefix)
    }
    pub fn link(&self, link: &str) -> String {
        format!("{}link/{link}", self.prefix)
    }
    pub fn member(&self, group: &str, pool: &str) -> String {
        format!("{}member/{group}/{pool}", self.prefix)
    }
    pub fn pool(&self, pool: &str) -> String {
        format!("{}pool/{pool}", self.prefix)
    }

    /// The range of the configuration (groups, links, members, pools), which leaves out the
    /// liveness and the costs: `[group/, pool0)` (`0` follows `/`).
    pub fn config_range(&self) -> (String, String) {
        (format!("{}group/", self.prefix), format!("{}pool0", self.prefix))
    }

    /// The range of the member keys of `group`: `[member/<group>/, member/<group>0)`.
    pub fn member_range(&self, group: &str) -> (String, String) {
        (format!("{}member/{group}/", self.prefix), format!("{}member/{group}0", self.prefix))
    }

    /// The range of the links: `[link/, link0)`.
    pub fn link_range(&self) -> (String, String) {
        (format!("{}link/", self.prefix), format!("{}link0", self.prefix))
    }

    /// The range of the liveness keys: `[alive/, alive0)`.
    pub fn alive_range(&self) -> (String, String) {
        (format!("{}alive/", self.prefix), format!("{}alive0", self.prefix))
    }

    /// What `key` is; `None` for a key of no known kind or with a bad name.
    pub fn parse(&self, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(&self.prefix)?;
        let (kind, name) = rest.split_once('/')?;
        Some(match kind {
            "alive" => Key::Alive(name.parse().ok()?),
            "cost" => Key::Cost(name.parse().ok()?),
            "group" => Key::Group(name.to_string()),
            "link" => Key::Link(name.to_string()),
            "member" => {
                let (group, pool) = name.split_once('/')?;
                Key::Member(group.to_string(), pool.parse().ok()?)
            }
            "pool" => Key::Pool(name.parse().ok()?),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_and_ranges_hold_only_their_kind() {
        let k = Keys::new("/tp");
        assert_eq!(k.prefix(), "/tp/");
        let p: PoolName = "pool1".parse().unwrap();
        assert_eq!(k.parse(&k.member("disk", "pool1")), Some(Key::Member("disk".into(), p.clone())));
        assert_eq!(k.parse(&k.pool("pool1")), Some(Key::Pool(p.clone())));
        assert_eq!(k.parse(&k.alive("pool1")), Some(Key::Alive(p)));
        assert_eq!(k.parse("/tp/other/x"), None);
        assert_eq!(k.parse("/elsewhere/pool/x"), None);
        let (from, to) = k.config_range();
        let inside = |key: &str| from.as_str() <= key && key < to.as_str();
        for key in [k.group("g"), k.link("l"), k.member("g", "p"), k.pool("p")] {
            assert!(inside(&key), "{key}");
        }
        for key in [k.cost("p"), k.alive("p")] {
            assert!(!inside(&key), "{key}");
        }
        let (from, to) = k.member_range("g");
        assert!(from <= k.member("g", "p") && k.member("g", "p") < to);
        assert!(!(from <= k.member("g2", "p") && k.member("g2", "p") < to), "another group's member");
        assert!(!(from <= k.member("f", "p") && k.member("f", "p") < to));
        let (from, to) = k.link_range();
        assert!(from <= k.link("l") && k.link("l") < to && k.member("g", "p") >= to && k.group("g") < from);
        let (from, to) = k.alive_range();
        assert!(from <= k.alive("p") && k.alive("p") < to && k.cost("p") >= to);
    }
}
