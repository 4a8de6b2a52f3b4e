//! The source mode (docs/dcache-compatibility.md#source-and-target-modes): what becomes of the source
//! replica once its copies are confirmed, never losing a pin and never destroying a source short of its copies.

use super::*;

/// A file whose copies were confirmed, for [`apply_source_modes`].
#[derive(Clone, Debug)]
pub(super) struct SourceModeItem {
    pub(super) pnfsid: PnfsId,
    /// Distinct pools that confirmed a copy.
    pub(super) confirmed: usize,
    /// Pins that went with the copy.
    pub(super) moved_pins: Vec<StickyRecord>,
    /// What the copy was made from.
    pub(super) snapshot: Snapshot,
}

/// Applies the source mode to files whose copies were confirmed
/// (docs/dcache-compatibility.md#source-and-target-modes), each on its own, with the deletions of all of
/// them in one step that flushes once ([`Env::remove_many_unless`]). A pinned replica is never deleted:
/// `delete` becomes `removable` while a pin stays; pins that went with the copy are cleared here, after the
/// target confirmed them.
///
/// A source that an operator changed after its task began (`snapshot`: a new state or sticky
/// record) is left as it is when the mode would make it removable or delete it: the result is
/// [`Applied::Changed`], and the file is copied again, so that its copies are updated first.
pub(super) fn apply_source_modes<E: Env>(
    env: &E,
    job: &Job,
    items: &[SourceModeItem],
) -> Vec<Result<Applied, EnvError>> {
    let mut results: Vec<Option<Result<Applied, EnvError>>> = Vec::with_capacity(items.len());
    // The files to delete, by their place in `items`, with the replica as read before.
    let mut deletions: Vec<(usize, Entry)> = Vec::new();
    for (at, item) in items.iter().enumerate() {
        match prepare(env, job, item) {
            Ok(Step::Applied(applied)) => results.push(Some(Ok(applied))),
            Ok(Step::Delete(entry)) => {
                results.push(None);
                deletions.push((at, entry));
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    if !deletions.is_empty() {
        let asked: Vec<SourceRemovalItem<'_>> = deletions
            .iter()
            .map(|(at, _)| {
                let item = &items[*at];
                SourceRemovalItem { id: &item.pnfsid, moved: &item.moved_pins, snapshot: &item.snapshot }
            })
            .collect();
        let verdicts = env.remove_many_unless(&asked);
        for ((at, entry), verdict) in deletions.into_iter().zip(verdicts) {
            // A pin set or a change made since the read is seen by the delete itself.
            let result = match verdict {
                Ok(SourceRemoval::Removed) => Ok(Applied::Done),
                Ok(SourceRemoval::Pinned) => {
                    make_removable(env, job, &items[at].pnfsid, &entry).map(|()| Applied::Done)
                }
                Ok(SourceRemoval::Changed) => Ok(Applied::Changed),
                Err(e) => Err(e),
            };
            results[at] = Some(result);
        }
    }
    results
        .into_iter()
        .map(|r| match r.expect("every file has its result") {
            // The replica went away or is changing under us: nothing left to do.
            Err(e) if e.replica_gone() => Ok(Applied::Done),
            other => other,
        })
        .collect()
}

/// What is left to do for a file after [`prepare`].
enum Step {
    Applied(Applied),
    /// Delete it (unless, at that moment, it is pinned or changed): the replica as read.
    Delete(Entry),
}

/// The source mode of one file, up to its deletion (done for the whole batch at once).
fn prepare<E: Env>(env: &E, job: &Job, item: &SourceModeItem) -> Result<Step, EnvError> {
    let id = &item.pnfsid;
    let moved_pins = &item.moved_pins[..];
    let Some(entry) = env.entry(id)? else { return Ok(Step::Applied(Applied::Done)) };
    if !entry.state.is_committed() {
        return Ok(Step::Applied(Applied::Done));
    }
    let now = env.now();
    let prefix = env.pin_prefix();
    let mode = job.def.smode.state;
    let destructive = matches!(mode, SourceState::Cached | SourceState::Removable | SourceState::Delete);
    if destructive && !item.snapshot.matches(entry.state, &entry.sticky, prefix) {
        return Ok(Step::Applied(Applied::Changed));
    }
    // A source pin is cleared only if the pin the target got covers it (same owner, expiring
    // no earlier): a pin extended on the source during the copy stays.
    if entry.sticky.iter().any(|r| safety::pin_clearable(r, prefix, moved_pins)) {
        env.clear_covered_pins(id, moved_pins)?;
    }
    let pinned = entry.sticky.iter().any(|r| safety::pin_keeps_source(r, prefix, now, moved_pins));
    if !safety::source_mode_due(item.confirmed, job.def.replicas) {
        // Never reached (a file short of its copies leaves the job before), and kept so: no
        // source mode for a file that is not fully copied.
        return Ok(Step::Applied(Applied::Done));
    }
    match mode {
        SourceState::Same => set_listed(env, job, id)?,
        SourceState::Cached => {
            set_listed(env, job, id)?;
            if entry.state != ReplicaState::Cached {
                env.set_state(id, ReplicaState::Cached)?;
            }
        }
        SourceState::Precious => {
            if entry.state != ReplicaState::Precious {
                env.set_state(id, ReplicaState::Precious)?;
            }
            set_listed(env, job, id)?;
        }
        SourceState::Removable => make_removable(env, job, id, &entry)?,
        SourceState::Delete if pinned => make_removable(env, job, id, &entry)?,
        SourceState::Delete => return Ok(Step::Delete(entry)),
    }
    Ok(Step::Applied(Applied::Done))
}

/// Sets the `-smode` records of the job on the source.
fn set_listed<E: Env>(env: &E, job: &Job, id: &PnfsId) -> Result<(), EnvError> {
    for r in &job.smode {
        env.set_sticky(id, r.clone(), StickyMode::Overwrite)?;
    }
    Ok(())
}

/// Makes the source removable: the job's `-smode` records set, every other record but the
/// pins cleared, CACHED.
fn make_removable<E: Env>(env: &E, job: &Job, id: &PnfsId, entry: &Entry) -> Result<(), EnvError> {
    let prefix = env.pin_prefix();
    set_listed(env, job, id)?;
    let listed = |owner: &str| job.smode.iter().any(|r| r.owner == owner);
    for r in entry.sticky.iter().filter(|r| !r.is_pin(prefix) && !listed(&r.owner)) {
        env.set_sticky(id, StickyRecord::new(r.owner.clone(), 0), StickyMode::Overwrite)?;
    }
    if entry.state != ReplicaState::Cached {
        env.set_state(id, ReplicaState::Cached)?;
    }
    Ok(())
}

/// How applying the source mode ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Applied {
    Done,
    /// The source changed after its task began; nothing was done to it.
    Changed,
}
