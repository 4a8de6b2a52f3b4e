//! The source mode (reference §4.7): what becomes of the source replica once its copies are
//! confirmed, never losing a pin and never destroying a source short of its copies.

use super::*;

/// Applies the source mode to a file whose copies were confirmed (reference §4.7). A pinned
/// replica is never deleted: `delete` becomes `removable` while a pin stays; pins that went
/// with the copy are cleared here, after the target confirmed them.
///
/// A source that an operator changed after its task began (`snapshot`: a new state or sticky
/// record) is left as it is when the mode would make it removable or delete it: the result is
/// [`Applied::Changed`], and the file is copied again, so that its copies are updated first.
pub(super) fn apply_source_mode<E: Env>(
    env: &E,
    job: &Job,
    id: &PnfsId,
    confirmed: usize,
    moved_pins: &[StickyRecord],
    snapshot: &Snapshot,
) -> Result<Applied, RemoteError> {
    let Some(entry) = env.entry(id)? else { return Ok(Applied::Done) };
    if !entry.state.is_committed() {
        return Ok(Applied::Done);
    }
    let now = env.now();
    let prefix = env.pin_prefix();
    let mode = job.def.smode.state;
    let destructive = matches!(mode, SourceState::Cached | SourceState::Removable | SourceState::Delete);
    if destructive && !snapshot.matches(entry.state, &entry.sticky, prefix) {
        return Ok(Applied::Changed);
    }
    let gone = |r: &StickyRecord| StickyRecord::new(r.owner.clone(), 0);
    // A source pin is cleared only if the pin the target got covers it (same owner, expiring
    // no earlier): a pin extended on the source during the copy stays.
    if entry.sticky.iter().any(|r| r.is_pin(prefix) && pin_covered(r, moved_pins)) {
        env.clear_covered_pins(id, moved_pins)?;
    }
    let pinned = entry.sticky.iter().any(|r| r.is_pin(prefix) && r.is_valid(now) && !pin_covered(r, moved_pins));
    if confirmed < job.def.replicas {
        // Never reached (a file short of its copies leaves the job before), and kept so: no
        // source mode for a file that is not fully copied.
        return Ok(Applied::Done);
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
        // A pin set or a change made since the read above is seen by the delete itself.
        SourceState::Delete => match env.remove_unless(id, moved_pins, snapshot)? {
            SourceRemoval::Removed => Ok(()),
            SourceRemoval::Pinned => removable(),
            SourceRemoval::Changed => return Ok(Applied::Changed),
        },
    };
    match result {
        Ok(()) => Ok(Applied::Done),
        // The replica went away or is changing under us: nothing left to do.
        Err(e) if matches!(e.code(), Some(ErrorCode::FileNotFound | ErrorCode::IllegalTransition)) => Ok(Applied::Done),
        Err(e) => Err(e),
    }
}

/// How applying the source mode ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Applied {
    Done,
    /// The source changed after its task began; nothing was done to it.
    Changed,
}
