//! The repository's in-memory index: one small entry per replica, kept so that space figures,
//! the sweeper's LRU order and sticky expiry never need a scan of the metadata store. Every
//! change goes through `add`/`take`, which keep the aggregates exact.

use std::collections::{BTreeSet, HashMap};

use tidepool_p2p::PnfsId;
use tidepool_p2p::model::{EpochMillis, FileAttributes, NEVER, ReplicaState, SpaceInfo, StickyRecord};

/// What the index knows of one replica: 32 bytes, so a million entries stay small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub size: u64,
    pub atime: EpochMillis,
    /// The latest expiry among valid sticky records ([`NEVER`] wins), or [`NOT_STICKY`].
    pub sticky_until: EpochMillis,
    pub state: ReplicaState,
}

/// `sticky_until` of a replica with no valid sticky record.
pub const NOT_STICKY: EpochMillis = EpochMillis::MIN;

/// The latest of the expiries still valid at `now` ([`NEVER`] wins), or [`NOT_STICKY`].
pub fn latest_expiry(expiries: impl Iterator<Item = EpochMillis>, now: EpochMillis) -> EpochMillis {
    expiries
        .filter(|e| *e == NEVER || *e > now)
        .fold(NOT_STICKY, |acc, e| if acc == NEVER || e == NEVER { NEVER } else { acc.max(e) })
}

/// The latest expiry among the records valid at `now`.
pub fn sticky_until(records: &[StickyRecord], now: EpochMillis) -> EpochMillis {
    latest_expiry(records.iter().map(|r| r.expire), now)
}

#[derive(Default)]
pub struct Index {
    entries: HashMap<PnfsId, Entry>,
    /// Attributes of replicas still being received (they have no stored record yet).
    pub incoming: HashMap<PnfsId, FileAttributes>,
    /// Removable replicas (cached, no valid sticky record), least recently used first.
    lru: BTreeSet<(EpochMillis, PnfsId)>,
    /// Cached replicas protected only until a time (sticky records that will expire, or a
    /// hold), soonest first.
    expiring: BTreeSet<(EpochMillis, PnfsId)>,
    /// Holds: replicas kept from eviction until a time although nothing in their record
    /// protects them (a migration's delivered copies, see `Repository::hold`, which also
    /// stores them so that they come back at open); a hold outlives changes of its replica's
    /// entry but not its removal.
    held: HashMap<PnfsId, EpochMillis>,
    used: u64,
    precious: u64,
    removable: u64,
    counts: [usize; ReplicaState::ALL.len()],
}

fn slot(state: ReplicaState) -> usize {
    ReplicaState::ALL.iter().position(|s| *s == state).unwrap_or(0)
}

impl Index {
    pub fn with_capacity(n: usize) -> Self {
        Index { entries: HashMap::with_capacity(n), ..Index::default() }
    }

    pub fn get(&self, id: &PnfsId) -> Option<&Entry> {
        self.entries.get(id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Until when a cached replica is kept from eviction: [`NOT_STICKY`] if it is removable,
    /// [`NEVER`], or a time.
    fn guard(&self, id: &PnfsId, entry: &Entry) -> EpochMillis {
        match (entry.sticky_until, self.held.get(id)) {
            (NEVER, _) => NEVER,
            (t, Some(h)) => t.max(*h),
            (t, None) => t,
        }
    }

    /// Inserts (or replaces) an entry. A hold on the replica stays.
    pub fn add(&mut self, id: PnfsId, mut entry: Entry, now: EpochMillis) {
        self.detach(&id);
        if entry.sticky_until != NEVER && entry.sticky_until <= now {
            entry.sticky_until = NOT_STICKY;
        }
        if self.held.get(&id).is_some_and(|h| *h <= now) {
            self.held.remove(&id);
        }
        self.used += entry.size;
        self.counts[slot(entry.state)] += 1;
        match entry.state {
            ReplicaState::Precious => self.precious += entry.size,
            ReplicaState::Cached => match self.guard(&id, &entry) {
                NOT_STICKY => {
                    self.lru.insert((entry.atime, id));
                    self.removable += entry.size;
                }
                NEVER => {}
                t => {
                    self.expiring.insert((t, id));
                }
            },
            _ => {}
        }
        self.entries.insert(id, entry);
    }

    /// Removes an entry, its share of every aggregate and its hold.
    pub fn take(&mut self, id: &PnfsId) -> Option<Entry> {
        let entry = self.detach(id);
        self.held.remove(id);
        entry
    }

    /// Keeps the replica `id` from eviction until `until` (a later hold wins). The replica
    /// need not be in the index yet: a hold placed before a copy arrives covers it from the
    /// moment it is committed. Returns whether the hold was placed or extended.
    pub fn hold(&mut self, id: PnfsId, until: EpochMillis, now: EpochMillis) -> bool {
        if until <= now || self.held.get(&id).is_some_and(|h| *h >= until) {
            return false;
        }
        match self.detach(&id) {
            Some(entry) => {
                self.held.insert(id, until);
                self.add(id, entry, now);
            }
            None => {
                self.held.insert(id, until);
            }
        }
        // Holds of replicas that never came (or went) are dropped once they ran out.
        if self.held.len() > 2 * self.entries.len() + 1024 {
            let entries = &self.entries;
            self.held.retain(|id, h| *h > now || entries.contains_key(id));
        }
        true
    }

    /// The cached replicas that only a hold keeps from eviction at `now`: count and bytes.
    pub fn held_space(&self, now: EpochMillis) -> (usize, u64) {
        self.held
            .iter()
            .filter(|(_, until)| **until > now)
            .filter_map(|(id, _)| self.entries.get(id))
            .filter(|e| e.state == ReplicaState::Cached && e.sticky_until == NOT_STICKY)
            .fold((0, 0), |(n, bytes), e| (n + 1, bytes + e.size))
    }

    /// Whether the replica is held (at `now`).
    #[cfg(test)]
    pub fn is_held(&self, id: &PnfsId, now: EpochMillis) -> bool {
        self.held.get(id).is_some_and(|h| *h > now)
    }

    fn detach(&mut self, id: &PnfsId) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.used -= entry.size;
        self.counts[slot(entry.state)] -= 1;
        match entry.state {
            ReplicaState::Precious => self.precious -= entry.size,
            ReplicaState::Cached => match self.guard(id, &entry) {
                NOT_STICKY => {
                    self.lru.remove(&(entry.atime, *id));
                    self.removable -= entry.size;
                }
                NEVER => {}
                t => {
                    self.expiring.remove(&(t, *id));
                }
            },
            _ => {}
        }
        Some(entry)
    }

    /// Moves cached replicas whose last sticky record and hold expired by `now` to the
    /// removable set.
    pub fn expire(&mut self, now: EpochMillis) {
        while let Some(&(t, id)) = self.expiring.first() {
            if t > now {
                break;
            }
            if let Some(entry) = self.detach(&id) {
                // `add` drops what ran out (a sticky expiry or a hold) and files the entry anew.
                self.add(id, entry, now);
            }
        }
    }

    /// Chooses least recently used removable replicas to evict so that `needed` bytes fit in
    /// `capacity`, and removes them from the index. Nothing is removed when that cannot work.
    pub fn make_room(&mut self, needed: u64, capacity: u64) -> Result<Vec<PnfsId>, SpaceInfo> {
        let free = capacity.saturating_sub(self.used);
        if free >= needed {
            return Ok(Vec::new());
        }
        if free + self.removable < needed {
            return Err(self.space(capacity));
        }
        let mut freed = 0;
        let mut victims = Vec::new();
        for &(_, id) in &self.lru {
            if free + freed >= needed {
                break;
            }
            freed += self.entries[&id].size;
            victims.push(id);
        }
        for id in &victims {
            self.take(id);
        }
        Ok(victims)
    }

    pub fn space(&self, capacity: u64) -> SpaceInfo {
        SpaceInfo {
            total: capacity,
            used: self.used,
            free: capacity.saturating_sub(self.used),
            precious: self.precious,
            removable: self.removable,
        }
    }

    /// Number of replicas in each state, in [`ReplicaState::ALL`] order.
    pub fn counts(&self) -> Vec<(ReplicaState, usize)> {
        ReplicaState::ALL.iter().map(|s| (*s, self.counts[slot(*s)])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PnfsId {
        PnfsId::from_random([n; 16])
    }

    fn cached(size: u64, atime: i64, sticky_until: i64) -> Entry {
        Entry { size, atime, state: ReplicaState::Cached, sticky_until }
    }

    #[test]
    fn aggregates_follow_adds_and_takes() {
        let mut ix = Index::default();
        ix.add(id(1), cached(10, 5, NOT_STICKY), 0);
        ix.add(id(2), Entry { size: 20, atime: 1, state: ReplicaState::Precious, sticky_until: NOT_STICKY }, 0);
        ix.add(id(3), cached(30, 1, NEVER), 0);
        assert_eq!(ix.space(100), SpaceInfo { total: 100, used: 60, free: 40, precious: 20, removable: 10 });
        ix.take(&id(1));
        assert_eq!(ix.space(100).removable, 0);
        assert_eq!(ix.space(100).used, 50);
    }

    #[test]
    fn sticky_expiry_makes_replicas_removable() {
        let mut ix = Index::default();
        ix.add(id(1), cached(10, 5, 50), 0);
        assert_eq!(ix.space(100).removable, 0);
        ix.expire(49);
        assert_eq!(ix.space(100).removable, 0);
        ix.expire(50);
        assert_eq!(ix.space(100).removable, 10);
    }

    #[test]
    fn make_room_evicts_least_recently_used_only_as_needed() {
        let mut ix = Index::default();
        ix.add(id(1), cached(10, 30, NOT_STICKY), 0);
        ix.add(id(2), cached(10, 10, NOT_STICKY), 0);
        ix.add(id(3), cached(10, 20, NOT_STICKY), 0);
        ix.add(id(4), Entry { size: 60, atime: 0, state: ReplicaState::Precious, sticky_until: NOT_STICKY }, 0);
        assert_eq!(ix.make_room(10, 100).unwrap(), vec![], "10 bytes are free");
        assert_eq!(ix.make_room(15, 100).unwrap(), vec![id(2)], "oldest first");
        assert_eq!(ix.make_room(25, 100).unwrap(), vec![id(3)]);
        assert!(ix.make_room(50, 100).is_err());
        assert_eq!(ix.len(), 2, "a refused make_room evicts nothing");
    }

    #[test]
    fn a_held_replica_is_not_removable_until_its_hold_ends() {
        let mut ix = Index::default();
        ix.add(id(1), cached(10, 1, NOT_STICKY), 0);
        ix.add(id(2), cached(10, 2, NOT_STICKY), 0);
        // A hold placed before the replica arrives covers it when it comes.
        ix.hold(id(3), 500, 0);
        ix.add(id(3), cached(10, 0, NOT_STICKY), 0);
        ix.hold(id(1), 1000, 0);
        assert_eq!(ix.space(100).removable, 10);
        assert_eq!(ix.held_space(0), (2, 20));
        // The oldest replicas are held: the next one goes instead, and only as much as fits.
        assert_eq!(ix.make_room(80, 100), Ok(vec![id(2)]));
        assert!(ix.make_room(90, 100).is_err(), "held replicas are never evicted");
        // A change of the entry (say, a sticky record added and expired) keeps the hold.
        ix.add(id(1), cached(10, 1, 200), 0);
        ix.expire(300);
        assert_eq!(ix.space(100).removable, 0);
        assert!(ix.is_held(&id(1), 300));
        ix.expire(600);
        assert_eq!(ix.space(100).removable, 10, "id 3's hold ran out");
        ix.expire(1000);
        assert_eq!(ix.space(100).removable, 20);
        assert_eq!(ix.make_room(90, 100), Ok(vec![id(3)]));
        assert_eq!(ix.make_room(100, 100), Ok(vec![id(1)]));
        // A removed replica loses its hold.
        ix.add(id(4), cached(10, 4, NOT_STICKY), 1000);
        ix.hold(id(4), 5000, 1000);
        ix.take(&id(4));
        ix.add(id(4), cached(10, 4, NOT_STICKY), 1000);
        assert!(!ix.is_held(&id(4), 1000));
    }

    #[test]
    fn sticky_until_prefers_never() {
        let recs = [StickyRecord::new("a", 100), StickyRecord::new("b", NEVER), StickyRecord::new("c", 5)];
        assert_eq!(sticky_until(&recs, 10), NEVER);
        assert_eq!(sticky_until(&recs[..1], 10), 100);
        assert_eq!(sticky_until(&recs[2..], 10), NOT_STICKY);
        assert_eq!(std::mem::size_of::<Entry>(), 32);
    }
}
