//! The source mode (reference §4.7): what becomes of the source replica once its copies are
//! confirmed, never losing a pin and never destroying a source short of its copies.

use super::*;

/// Whether a pin the target received covers this source pin: the same owner, and an expiry
/// no earlier than the source's (never-expiring covers everything).
fn pin_covered(pin: &StickyRecord, moved: &[StickyRecord]) -> bool {
    moved.iter().any(|m| {
        m.owner == pin.owner
            && (m.expire == tidepool_p2p::model::NEVER
                || (pin.expire != tidepool_p2p::model::NEVER && pin.expire <= m.expire))
    })
}

/// Applies the source mode to a file whose copies were confirmed (reference §4.7). A pinned
/// replica is never deleted: `delete` becomes `removable` while a pin stays; pins that went
/// with the copy are cleared here, after the target confirmed them.
pub(super) fn apply_source_mode<E: Env>(
    env: &E,
    job: &Job,
    id: &PnfsId,
    confirmed: usize,
    moved_pins: &[StickyRecord],
) -> Result<(), RemoteError> {
    let Some(entry) = env.entry(id)? else { return Ok(()) };
    if !entry.state.is_committed() {
        return Ok(());
    }
    let now = env.now();
    let prefix = env.pin_prefix();
    let gone = |r: &StickyRecord| StickyRecord::new(r.owner.clone(), 0);
    // A source pin is cleared only if the pin the target got covers it (same owner, expiring
    // no earlier): a pin extended on the source during the copy stays.
    if entry.sticky.iter().any(|r| r.is_pin(prefix) && pin_covered(r, moved_pins)) {
        env.clear_covered_pins(id, moved_pins)?;
    }
    let pinned = entry.sticky.iter().any(|r| r.is_pin(prefix) && r.is_valid(now) && !pin_covered(r, moved_pins));
    let mode = job.def.smode.state;
    if confirmed < job.def.replicas {
        // Safety rule 5: never reached (a short file leaves the job before), and kept so.
        return Ok(());
    }
    let listed = |owner: &str| job.smode.iter().any(|r| r.owner == owner);
    let set_listed = || -> Result<(), RemoteError> {
        for r in &job.smode {
            env.set_sticky(id, r.clone(), StickyMode::Overwrite)?;
        }
        Ok(())
    };
    let removable = || -> Result<(), RemoteError> {
        set_listed()?;
        for r in entry.sticky.iter().filter(|r| !r.is_pin(prefix) && !listed(&r.owner)) {
            env.set_sticky(id, gone(r), StickyMode::Overwrite)?;
        }
        if entry.state != ReplicaState::Cached {
            env.set_state(id, ReplicaState::Cached)?;
        }
        Ok(())
    };
    let result = match mode {
        SourceState::Same => set_listed(),
        SourceState::Cached => {
            set_listed()?;
            if entry.state != ReplicaState::Cached { env.set_state(id, ReplicaState::Cached) } else { Ok(()) }
        }
        SourceState::Precious => {
            if entry.state != ReplicaState::Precious {
                env.set_state(id, ReplicaState::Precious)?;
            }
            set_listed()
        }
        SourceState::Removable => removable(),
        SourceState::Delete if pinned => removable(),
        // A pin set since the snapshot above is seen by the delete itself.
        SourceState::Delete => match env.remove_unless_pinned(id, moved_pins)? {
            true => Ok(()),
            false => removable(),
        },
    };
    match result {
        // The replica went away or is changing under us: nothing left to do (§4.7).
        Err(e) if matches!(e.code(), Some(ErrorCode::FileNotFound | ErrorCode::IllegalTransition)) => Ok(()),
        other => other,
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
}
