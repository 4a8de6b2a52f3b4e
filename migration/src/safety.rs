//! The safety rules of a migration, each decided in one pure function here and called by the
//! pool ([`crate::env::Env`] over the repository, `pool/src/migration_env.rs`), by the job core
//! and by the simulated cluster alike (docs/operator-guide.md):
//!
//! - pin coverage: a source pin is dropped only when the pin its copy carried covers it
//!   ([`pin_covered`], [`pin_clearable`]); a valid pin that no copy covers keeps the source
//!   ([`pin_keeps_source`]);
//! - a moved source is removed only as it was copied ([`Snapshot`], [`source_removal`]);
//! - the source mode only after confirmed copies: nothing is done to a source until as many
//!   distinct pools as `-replicas` asks confirmed its copy ([`source_mode_due`]);
//! - never more volatile: a target's replica only gains state and sticky records
//!   ([`crate::update::plan_update`] for a replica it holds, [`crate::update::target_request`]
//!   for what a new copy is asked to be).

use tidepool_p2p::model::{EpochMillis, ReplicaState, StickyRecord};

/// What a source replica looked like when its task began, as far as its copies depend on it:
/// its state and its sticky records other than pins (pins have their own rule, see
/// [`pin_covered`]). A copy is made from this; a source that no longer matches it was changed
/// by an operator while it moved, and is not removed against that copy (docs/operator-guide.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub state: ReplicaState,
    /// Sorted, so that the order records were set in does not matter.
    sticky: Vec<StickyRecord>,
}

impl Snapshot {
    pub fn of(state: ReplicaState, sticky: &[StickyRecord], pin_prefix: &str) -> Snapshot {
        Snapshot { state, sticky: non_pins(sticky, pin_prefix) }
    }

    /// Whether a replica with this state and these records is still what the snapshot saw.
    pub fn matches(&self, state: ReplicaState, sticky: &[StickyRecord], pin_prefix: &str) -> bool {
        self.state == state && self.sticky == non_pins(sticky, pin_prefix)
    }
}

fn non_pins(sticky: &[StickyRecord], pin_prefix: &str) -> Vec<StickyRecord> {
    let mut v: Vec<StickyRecord> = sticky.iter().filter(|r| !r.is_pin(pin_prefix)).cloned().collect();
    v.sort_by(|a, b| (&a.owner, a.expire).cmp(&(&b.owner, b.expire)));
    v
}

/// Pin coverage: whether a pin the target received covers this source pin: the same owner, and an expiry
/// no earlier than the source's (never-expiring covers everything).
pub fn pin_covered(pin: &StickyRecord, moved: &[StickyRecord]) -> bool {
    moved.iter().any(|m| {
        m.owner == pin.owner
            && (m.expire == tidepool_p2p::model::NEVER
                || (pin.expire != tidepool_p2p::model::NEVER && pin.expire <= m.expire))
    })
}

/// A source pin the copy carried to its target, which the source may now drop: a pin whose
/// owner got a pin on the target expiring no earlier. A pin extended on the source meanwhile stays.
pub fn pin_clearable(record: &StickyRecord, pin_prefix: &str, moved: &[StickyRecord]) -> bool {
    record.is_pin(pin_prefix) && pin_covered(record, moved)
}

/// A valid source pin that no moved pin covers: the source must stay (a `delete` becomes
/// `removable`, a removal is refused).
pub fn pin_keeps_source(record: &StickyRecord, pin_prefix: &str, now: EpochMillis, moved: &[StickyRecord]) -> bool {
    record.is_pin(pin_prefix) && record.is_valid(now) && !pin_covered(record, moved)
}

/// Whether a file's source mode may be applied: `confirmed` distinct pools confirmed its copy,
/// and `-replicas` asked for `wanted`. A file short of its copies (`-target-deficit-mode=limit`)
/// keeps its source as it is.
pub fn source_mode_due(confirmed: usize, wanted: usize) -> bool {
    confirmed >= wanted
}

/// The verdict of [`crate::env::Env::remove_unless`] on a moved source replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceRemoval {
    /// Deleted (or already gone).
    Removed,
    /// It holds a valid pin the target did not get: kept.
    Pinned,
    /// Its state or sticky records changed after the copy was made from it: kept.
    Changed,
}

/// The one rule every [`crate::env::Env`] applies, under its repository's lock, before deleting a moved
/// source replica that now has `state` and `sticky`: `None` means delete it.
pub fn source_removal(
    state: ReplicaState,
    sticky: &[StickyRecord],
    moved: &[StickyRecord],
    snapshot: &Snapshot,
    pin_prefix: &str,
    now: EpochMillis,
) -> Option<SourceRemoval> {
    // A changed source goes round again before anything else is decided: made removable
    // because of a pin, it would lose what changed before its copies have it.
    if !snapshot.matches(state, sticky, pin_prefix) {
        Some(SourceRemoval::Changed)
    } else if sticky.iter().any(|s| pin_keeps_source(s, pin_prefix, now, moved)) {
        Some(SourceRemoval::Pinned)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidepool_p2p::model::NEVER;

    #[test]
    fn a_moved_pin_covers_only_a_source_pin_that_expires_no_later() {
        let pin = |owner: &str, expire| StickyRecord::new(owner, expire);
        let moved = [pin("PinManager-1", 5_000), pin("PinManager-2", NEVER)];
        assert!(pin_covered(&pin("PinManager-1", 5_000), &moved));
        assert!(pin_covered(&pin("PinManager-1", 4_000), &moved));
        assert!(!pin_covered(&pin("PinManager-1", 6_000), &moved), "extended on the source meanwhile");
        assert!(!pin_covered(&pin("PinManager-1", NEVER), &moved), "made permanent meanwhile");
        assert!(pin_covered(&pin("PinManager-2", NEVER), &moved));
        assert!(!pin_covered(&pin("PinManager-3", 1), &moved), "another pin");
    }

    #[test]
    fn a_source_is_removed_only_as_it_was_copied() {
        use ReplicaState::{Cached, Precious};
        let r = |owner: &str, expire| StickyRecord::new(owner, expire);
        let p = "PinManager";
        let alice = r("alice", NEVER);
        let pin = r("PinManager-1", 5_000);
        let snapshot = Snapshot::of(Cached, &[alice.clone(), pin.clone()], p);
        let now = 1_000;
        // (state now, records now, pins moved) -> verdict
        type Row = (ReplicaState, Vec<StickyRecord>, Vec<StickyRecord>, Option<SourceRemoval>);
        let rows: Vec<Row> = vec![
            (Cached, vec![alice.clone(), pin.clone()], vec![pin.clone()], None),
            (Cached, vec![pin.clone(), alice.clone()], vec![pin.clone()], None),
            (Cached, vec![alice.clone()], vec![], None),
            (Cached, vec![alice.clone(), pin.clone()], vec![], Some(SourceRemoval::Pinned)),
            (Precious, vec![alice.clone()], vec![], Some(SourceRemoval::Changed)),
            (Cached, vec![alice.clone(), r("bob", NEVER)], vec![], Some(SourceRemoval::Changed)),
            (Cached, vec![r("alice", 9_000)], vec![], Some(SourceRemoval::Changed)),
            (Cached, vec![], vec![], Some(SourceRemoval::Changed)),
            // An expired pin protects nothing; a new pin that was not moved does.
            (Cached, vec![alice.clone(), r("PinManager-1", 500)], vec![], None),
            (Cached, vec![alice.clone(), r("PinManager-9", NEVER)], vec![pin.clone()], Some(SourceRemoval::Pinned)),
            // Changed and pinned: it goes round again first.
            (Precious, vec![alice.clone(), r("PinManager-9", NEVER)], vec![], Some(SourceRemoval::Changed)),
        ];
        for (i, (state, sticky, moved, want)) in rows.into_iter().enumerate() {
            assert_eq!(source_removal(state, &sticky, &moved, &snapshot, p, now), want, "row {i}");
        }
    }

    #[test]
    fn pins_are_cleared_or_keep_the_source_by_coverage() {
        let r = |owner: &str, expire| StickyRecord::new(owner, expire);
        let (p, now) = ("PinManager", 1_000);
        let moved = [r("PinManager-1", 5_000)];
        // (record on the source, clearable, keeps the source)
        let rows = [
            (r("PinManager-1", 5_000), true, false),
            (r("PinManager-1", 4_000), true, false),
            (r("PinManager-1", 6_000), false, true),
            (r("PinManager-2", NEVER), false, true),
            (r("PinManager-2", 500), false, false),
            (r("alice", NEVER), false, false),
        ];
        for (i, (record, clearable, keeps)) in rows.into_iter().enumerate() {
            assert_eq!(pin_clearable(&record, p, &moved), clearable, "row {i}");
            assert_eq!(pin_keeps_source(&record, p, now, &moved), keeps, "row {i}");
        }
    }

    #[test]
    fn the_source_mode_waits_for_every_wanted_copy() {
        for (confirmed, wanted, due) in [(0, 1, false), (1, 1, true), (1, 2, false), (2, 2, true), (3, 2, true)] {
            assert_eq!(source_mode_due(confirmed, wanted), due, "{confirmed} of {wanted}");
        }
    }
}
