//! What a target does to a replica it already holds when a job asks it to hold one (see
//! docs/dcache-compatibility.md#source-and-target-modes), as a pure plan: never make a replica more volatile
//! (an existing replica only gains, so a job can never weaken what another job or a user put there). CACHED may
//! become PRECIOUS, never the reverse; sticky records are only added or extended; nothing is
//! removed; the access time is left alone. Only CACHED or PRECIOUS replicas can be updated.
//! [`target_request`] decides what a new copy is asked to be. Both are the "never more volatile"
//! rule of crate::safety.

use tidepool_p2p::model::{EpochMillis, ReplicaState, StickyMode, StickyRecord, apply_sticky};
use tidepool_p2p::{ErrorCode, RemoteError};

use crate::mode::TargetState;

/// The changes to make, each to be applied in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdatePlan {
    /// `Some(PRECIOUS)` when a CACHED replica must become PRECIOUS.
    pub new_state: Option<ReplicaState>,
    /// Records to set in extend-only mode (only those that change something).
    pub sticky: Vec<StickyRecord>,
}

impl UpdatePlan {
    pub fn is_empty(&self) -> bool {
        self.new_state.is_none() && self.sticky.is_empty()
    }
}

/// Plans the update of an existing replica in `state` with `records`, asked to be in
/// `wanted` (CACHED or PRECIOUS) with `requested` sticky records.
pub fn plan_update(
    state: ReplicaState,
    records: &[StickyRecord],
    wanted: ReplicaState,
    requested: &[StickyRecord],
    now: EpochMillis,
) -> Result<UpdatePlan, RemoteError> {
    if !state.is_committed() {
        return Err(RemoteError::new(ErrorCode::FileBusy, format!("Cannot update file in state {state}")));
    }
    let new_state =
        (state == ReplicaState::Cached && wanted == ReplicaState::Precious).then_some(ReplicaState::Precious);
    let mut current = records.to_vec();
    let sticky = requested
        .iter()
        .filter(|r| apply_sticky(&mut current, (*r).clone(), StickyMode::ExtendOnly, now))
        .cloned()
        .collect();
    Ok(UpdatePlan { new_state, sticky })
}

/// What a new copy is asked to be on its target: `-tmode=same` gives it the source's state and
/// the source's valid sticky records other than pins (pins travel only with `-pins=move`);
/// `cached` or `precious` that state and no source records. The job's `-tmode` records
/// (`job_records`) are added in every case. With [`plan_update`] on the target, a target thus
/// never ends up weaker than the source asked for.
pub fn target_request(
    tmode: TargetState,
    job_records: &[StickyRecord],
    source_state: ReplicaState,
    source_sticky: &[StickyRecord],
    pin_prefix: &str,
    now: EpochMillis,
) -> (ReplicaState, Vec<StickyRecord>) {
    let state = match tmode {
        TargetState::Same => source_state,
        TargetState::Cached => ReplicaState::Cached,
        TargetState::Precious => ReplicaState::Precious,
    };
    let mut sticky: Vec<StickyRecord> = if tmode == TargetState::Same {
        source_sticky.iter().filter(|r| !r.is_pin(pin_prefix) && r.is_valid(now)).cloned().collect()
    } else {
        Vec::new()
    };
    sticky.extend(job_records.iter().cloned());
    (state, sticky)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReplicaState::*;
    use tidepool_p2p::model::NEVER;

    const NOW: i64 = 1_000_000;

    fn rec(owner: &str, expire: i64) -> StickyRecord {
        StickyRecord::new(owner, expire)
    }

    #[test]
    fn states_only_gain() {
        let table = [
            (Cached, Cached, None),
            (Cached, Precious, Some(Precious)),
            (Precious, Cached, None),
            (Precious, Precious, None),
        ];
        for (have, want, change) in table {
            assert_eq!(plan_update(have, &[], want, &[], NOW).unwrap().new_state, change, "{have} asked {want}");
        }
    }

    #[test]
    fn replicas_that_are_not_complete_cannot_be_updated() {
        for state in [FromPool, FromClient, Broken, Removed, New] {
            let err = plan_update(state, &[], Cached, &[], NOW).unwrap_err();
            assert_eq!(err.message, format!("Cannot update file in state {state}"));
            assert_eq!(err.code(), Some(ErrorCode::FileBusy));
        }
    }

    #[test]
    fn sticky_records_are_only_added_or_extended() {
        let have = [rec("alice", NOW + 100), rec("PinManager-1", NEVER)];
        let asked = [
            rec("alice", NOW + 50), // shorter: ignored
            rec("bob", NOW + 10),   // new: added
            rec("PinManager-1", 0), // an expiry in the past never removes anything
            rec("carol", NOW - 1),  // already expired: not added
        ];
        let plan = plan_update(Cached, &have, Cached, &asked, NOW).unwrap();
        assert_eq!(plan.sticky, vec![rec("bob", NOW + 10)]);
        let longer = plan_update(Cached, &have, Cached, &[rec("alice", NEVER)], NOW).unwrap();
        assert_eq!(longer.sticky, vec![rec("alice", NEVER)]);
        assert!(plan_update(Precious, &have, Cached, &[rec("alice", NOW + 1)], NOW).unwrap().is_empty());
    }

    #[test]
    fn a_new_copy_is_asked_for_at_least_what_the_source_has() {
        let (p, now) = ("PinManager", NOW);
        let source = [rec("alice", NEVER), rec("old", NOW - 1), rec("PinManager-1", NEVER)];
        let job = [rec("job", NOW + 60_000)];
        // (tmode, source state) -> (state asked, records asked)
        let rows: &[(TargetState, ReplicaState, ReplicaState, Vec<StickyRecord>)] = &[
            (TargetState::Same, Precious, Precious, vec![rec("alice", NEVER), rec("job", NOW + 60_000)]),
            (TargetState::Same, Cached, Cached, vec![rec("alice", NEVER), rec("job", NOW + 60_000)]),
            (TargetState::Cached, Precious, Cached, vec![rec("job", NOW + 60_000)]),
            (TargetState::Precious, Cached, Precious, vec![rec("job", NOW + 60_000)]),
        ];
        for (i, (tmode, have, state, sticky)) in rows.iter().enumerate() {
            assert_eq!(target_request(*tmode, &job, *have, &source, p, now), (*state, sticky.clone()), "row {i}");
        }
    }
}
