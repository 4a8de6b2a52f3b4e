//! The job state machine (docs/dcache-compatibility.md#job-states): one enum, one function that validates and
//! performs every transition.

use std::fmt;

/// A job's state. Each variant says which transitions leave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Created, not started. Leaves to INITIALIZING (start) or CANCELLED.
    New,
    /// The initial repository scan runs. Leaves to RUNNING, FAILED or CANCELLING.
    Initializing,
    /// Schedules tasks. Leaves to any non-initial state.
    Running,
    /// Nothing could be scheduled; re-checked after 10 s. Leaves to RUNNING, SUSPENDED,
    /// CANCELLING/CANCELLED, FINISHED, FAILED.
    Sleeping,
    /// The pause expression holds; re-checked every 10 s for as long as it does (dCache
    /// checked once, docs/dcache-compatibility.md#dcache-defects-not-reproduced). Leaves to RUNNING,
    /// SUSPENDED, STOPPING, FINISHED, CANCELLING/CANCELLED.
    Paused,
    /// Suspended by the operator: no new tasks. Leaves to RUNNING (resume), FINISHED,
    /// CANCELLING/CANCELLED.
    Suspended,
    /// The stop expression held; running tasks finish. Leaves to FINISHED or
    /// CANCELLING/CANCELLED.
    Stopping,
    /// Cancelled; running tasks end. Leaves to CANCELLED.
    Cancelling,
    /// Terminal.
    Cancelled,
    /// Terminal: every file was handled (or the job stopped).
    Finished,
    /// Terminal: see the notes.
    Failed,
}

impl JobState {
    /// Every state, in the order of a job's life.
    pub const ALL: [JobState; 11] = [
        JobState::New,
        JobState::Initializing,
        JobState::Running,
        JobState::Sleeping,
        JobState::Paused,
        JobState::Suspended,
        JobState::Stopping,
        JobState::Cancelling,
        JobState::Cancelled,
        JobState::Finished,
        JobState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::New => "NEW",
            JobState::Initializing => "INITIALIZING",
            JobState::Running => "RUNNING",
            JobState::Sleeping => "SLEEPING",
            JobState::Paused => "PAUSED",
            JobState::Suspended => "SUSPENDED",
            JobState::Stopping => "STOPPING",
            JobState::Cancelling => "CANCELLING",
            JobState::Cancelled => "CANCELLED",
            JobState::Finished => "FINISHED",
            JobState::Failed => "FAILED",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Cancelled | JobState::Finished | JobState::Failed)
    }

    /// Whether `self -> to` is a transition of the job state machine.
    pub fn may_become(self, to: JobState) -> bool {
        use JobState::*;
        if self == to {
            return false;
        }
        match self {
            New => matches!(to, Initializing | Cancelled),
            Initializing => matches!(to, Running | Failed | Cancelling | Cancelled),
            Running => !matches!(to, New | Initializing),
            Sleeping => matches!(to, Running | Suspended | Cancelling | Cancelled | Finished | Failed),
            Paused => matches!(to, Running | Suspended | Stopping | Finished | Cancelling | Cancelled),
            Suspended => matches!(to, Running | Finished | Cancelling | Cancelled),
            Stopping => matches!(to, Finished | Cancelling | Cancelled),
            Cancelling => matches!(to, Cancelled),
            Cancelled | Finished | Failed => false,
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An illegal transition: a bug in the caller, reported rather than performed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("illegal job transition {from} -> {to}")]
pub struct IllegalTransition {
    pub from: JobState,
    pub to: JobState,
}

/// Performs `state -> to` if it is legal.
pub fn transition(state: &mut JobState, to: JobState) -> Result<(), IllegalTransition> {
    if !state.may_become(to) {
        return Err(IllegalTransition { from: *state, to });
    }
    *state = to;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobState::*;

    const ALL: [JobState; 11] = JobState::ALL;

    #[test]
    fn the_transitions_of_the_reference_are_legal() {
        let legal = [
            (New, Initializing),
            (Initializing, Running),
            (Initializing, Failed),
            (Initializing, Cancelling),
            (Running, Sleeping),
            (Running, Failed),
            (Running, Finished),
            (Sleeping, Running),
            (Suspended, Finished),
            (Sleeping, Finished),
            (Paused, Finished),
            (Running, Paused),
            (Paused, Running),
            (Paused, Stopping),
            (Running, Stopping),
            (Stopping, Finished),
            (Running, Suspended),
            (Sleeping, Suspended),
            (Paused, Suspended),
            (Suspended, Running),
            (Cancelling, Cancelled),
        ];
        for (from, to) in legal {
            let mut s = from;
            assert_eq!(transition(&mut s, to), Ok(()), "{from} -> {to}");
            assert_eq!(s, to);
        }
        for from in [New, Initializing, Running, Sleeping, Paused, Suspended, Stopping] {
            assert!(from.may_become(Cancelled) || from.may_become(Cancelling), "{from} can be cancelled");
        }
    }

    #[test]
    fn terminal_states_are_final_and_nothing_returns_to_new() {
        for from in ALL {
            for to in ALL {
                if from.is_terminal() || to == New || from == to {
                    let mut s = from;
                    assert!(transition(&mut s, to).is_err(), "{from} -> {to} must be refused");
                    assert_eq!(s, from, "a refused transition changes nothing");
                }
            }
        }
        assert!(!Suspended.may_become(Sleeping), "only resume leaves SUSPENDED for RUNNING");
        assert!(!Cancelling.may_become(Running));
    }

    #[test]
    fn names_are_dcaches() {
        let names: Vec<&str> = ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "NEW",
                "INITIALIZING",
                "RUNNING",
                "SLEEPING",
                "PAUSED",
                "SUSPENDED",
                "STOPPING",
                "CANCELLING",
                "CANCELLED",
                "FINISHED",
                "FAILED"
            ]
        );
    }
}
