//! The task state machine: one file of one job (docs/dcache-compatibility.md#tasks), as a pure function from
//! (state, event) to (state, effects). The job's driver performs the effects (messages,
//! timers) and feeds back what happened; nothing here does IO, so every row is table-tested.
//!
//! Departures from dCache, all deliberate (docs/dcache-compatibility.md#deliberate-differences):
//! - every copy request is one *attempt* with its own [`AttemptId`]; replies and finished
//!   messages of any other attempt are never credited to the current target
//!   (docs/dcache-compatibility.md#dcache-defects-not-reproduced);
//! - confirmed replicas are a set of pool names, so `-replicas=N` counts distinct pools;
//! - a `LOCKED` refusal from one holder tries the next known holder
//!   (docs/dcache-compatibility.md#dcache-defects-not-reproduced);
//! - a checksum mismatch on an existing replica falls back to the next holder or a new copy
//!   instead of failing for ever (docs/dcache-compatibility.md#dcache-defects-not-reproduced);
//! - a cancel is always passed on to the target and ends the task at once, in every state:
//!   the task never waits for the target to confirm (a frozen target would hold the file's
//!   lock and the job in CANCELLING), and a copy of a cancelled attempt is never counted, so
//!   no source mode is applied because of it (the driver keeps sending the cancel until the
//!   target answers; the target refuses or stops the copy and removes its partial data);
//! - pins travel with the copy that completes the wanted replicas, so the target's
//!   confirmation of that copy is the confirmation that the pins are safe there (there is
//!   no separate pin manager).

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use tidepool_p2p::{AttemptId, ErrorCode, PoolName, RemoteError};

use crate::select::NoTarget;

/// Where a task is. `migration info` shows them as `TASK.<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Not started. Start -> GettingLocations.
    Queued,
    /// Asking the target pools which of them hold the file. -> UpdatingExistingFile,
    /// InitiatingCopy, Failed, Cancelled.
    GettingLocations,
    /// Asking a holder to bring its replica up to the wanted state. -> Copying, itself (next
    /// holder), InitiatingCopy, Failed, Cancelled, and on an early finish anything Copying can.
    UpdatingExistingFile,
    /// Asking a chosen pool to pull a new copy. -> Copying, WaitingForCopyFinishedMessage,
    /// Failed, Cancelled.
    InitiatingCopy,
    /// The target accepted and works; pinged periodically. -> Pinging, Done, Failed, next
    /// replica, Cancelled.
    Copying,
    /// Asked the target whether it still works on the attempt. -> Copying, NoResponse,
    /// WaitingForCopyFinishedMessage, ...
    Pinging,
    /// A ping went unanswered; one more is sent after a wait, from this state. -> Copying,
    /// WaitingForCopyFinishedMessage, Failed (the second ping unanswered too), Cancelled.
    NoResponse,
    /// The target no longer knows the attempt (or the request's fate is unknown); a
    /// finished message may still be on its way. -> Done, Failed (timer), Cancelled.
    WaitingForCopyFinishedMessage,
    Done,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Done | TaskState::Failed | TaskState::Cancelled)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How a request to a pool went wrong without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unanswered {
    /// Not delivered (no connection): the pool surely did nothing.
    NotDelivered,
    /// Sent, but no answer in time: the pool may be working on it.
    NoAnswer,
}

/// Everything that can happen to a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskEvent {
    Start,
    /// The target pools holding a committed replica, in the order to try them.
    Located {
        holders: Vec<PoolName>,
    },
    /// The holders' answers show that these pools already hold the file exactly as wanted:
    /// nothing needs to be sent. The job gives this instead of `Located` only when no pins move,
    /// no checksum is to be verified and the source mode destroys nothing.
    AlreadyDone {
        replicas: Vec<PoolName>,
    },
    CopyAccepted {
        attempt: AttemptId,
    },
    CopyRefused {
        attempt: AttemptId,
        error: RemoteError,
    },
    CopyUnanswered {
        attempt: AttemptId,
        how: Unanswered,
    },
    /// A target's report on an attempt: the replica is there (with pins, if asked), or not.
    Finished {
        attempt: AttemptId,
        target: PoolName,
        result: Result<(), RemoteError>,
    },
    PingAnswered {
        attempt: AttemptId,
        alive: bool,
    },
    PingUnanswered {
        attempt: AttemptId,
    },
    /// A timer set for `attempt` (by [`Effect::Timer`]) ran out.
    Timer {
        attempt: AttemptId,
    },
    Cancel {
        reason: String,
    },
}

impl TaskEvent {
    /// The attempt the event is about, if it is about one (for the logs).
    pub fn attempt(&self) -> Option<AttemptId> {
        match self {
            TaskEvent::CopyAccepted { attempt }
            | TaskEvent::CopyRefused { attempt, .. }
            | TaskEvent::CopyUnanswered { attempt, .. }
            | TaskEvent::Finished { attempt, .. }
            | TaskEvent::PingAnswered { attempt, .. }
            | TaskEvent::PingUnanswered { attempt }
            | TaskEvent::Timer { attempt } => Some(*attempt),
            TaskEvent::Start | TaskEvent::Located { .. } | TaskEvent::AlreadyDone { .. } | TaskEvent::Cancel { .. } => {
                None
            }
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Ask every target pool which of them hold the file (batched with other tasks).
    Locate,
    /// Send a copy request. `existing`: the target holds a replica (update it); `pins`: the
    /// source's pins go along.
    Copy {
        target: PoolName,
        attempt: AttemptId,
        existing: bool,
        pins: bool,
    },
    Ping {
        target: PoolName,
        attempt: AttemptId,
    },
    Cancel {
        target: PoolName,
        attempt: AttemptId,
        reason: String,
    },
    /// Deliver `Timer { attempt }` after `after`, unless the task moved on.
    Timer {
        attempt: AttemptId,
        after: Duration,
    },
    /// The task is over.
    Finish(Outcome),
}

/// How a task ended, for the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The wanted replicas are confirmed on these pools (and the pins, if any were to move).
    Done {
        replicas: Vec<PoolName>,
    },
    /// Retry later (`permanent: false`) or drop the file.
    Failed {
        permanent: bool,
        error: TaskFailure,
    },
    Cancelled,
}

/// Why a task failed. Its `Display` is dCache's text for it (the one place that text is made);
/// a target's answer is kept as it came, with the target's code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskFailure {
    /// The target refused the copy request.
    Refused { target: PoolName, error: RemoteError },
    /// The target stopped answering (or never answered) about the attempt.
    NoResponse { target: PoolName },
    /// The copy request could not be delivered to the target.
    NotReachable { target: PoolName },
    /// A meta-only job (`-meta-only`) finds fewer holders than it wants replicas.
    TooFewReplicas { have: usize, wanted: usize },
    /// A holder could not bring its replica up to date (a failed `-verify`, `LOCKED`, ...).
    Holder { target: PoolName, error: RemoteError },
    /// No target is left for a new copy; `holder` is why the last holder failed, if one did.
    NoTarget { reason: NoTarget, holder: Option<Box<TaskFailure>> },
    /// The target reported that its copy failed; `last`: it will not be retried (the source
    /// is gone).
    Transfer { target: PoolName, error: RemoteError, last: bool },
}

impl TaskFailure {
    /// The stable code an operator sees with it (docs/errors.md), if it is one of ours (a
    /// target's answer keeps the target's code).
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u32(self.number())
    }

    /// The code's number, as it crosses the wire.
    fn number(&self) -> u32 {
        match self {
            TaskFailure::Refused { error, .. }
            | TaskFailure::Holder { error, .. }
            | TaskFailure::Transfer { error, .. } => error.code,
            TaskFailure::NoResponse { .. } => ErrorCode::Timeout.as_u32(),
            TaskFailure::NotReachable { .. } => ErrorCode::Offline.as_u32(),
            TaskFailure::TooFewReplicas { .. } => ErrorCode::FileNotFound.as_u32(),
            TaskFailure::NoTarget { holder: Some(h), .. } => h.number(),
            TaskFailure::NoTarget { holder: None, .. } => ErrorCode::Offline.as_u32(),
        }
    }
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskFailure::Refused { target, error } => write!(f, "Pool {target} failed ({})", error.message),
            TaskFailure::NoResponse { target } => write!(f, "Pool {target} failed (no response)"),
            TaskFailure::NotReachable { target } => write!(f, "Pool {target} failed (not reachable)"),
            TaskFailure::TooFewReplicas { have: 0, .. } => {
                f.write_str("File skipped because it has no existing replicas")
            }
            TaskFailure::TooFewReplicas { have, wanted } => {
                write!(f, "File skipped because it does not have enough existing replicas ({have} of {wanted})")
            }
            TaskFailure::Holder { target, error } => write!(f, "Replica on {target} failed ({})", error.message),
            TaskFailure::NoTarget { reason, holder: Some(h) } => write!(f, "{h}; no other target: {reason}"),
            TaskFailure::NoTarget { reason, holder: None } => write!(f, "No targets available: {reason}"),
            TaskFailure::Transfer { target, error, last } => {
                write!(f, "Transfer to {target} failed ({})", error.message)?;
                if *last { f.write_str("; will not be retried") } else { Ok(()) }
            }
        }
    }
}

/// How a failure is listed (`migration info`) and crosses the wire: its code and dCache's text.
impl From<&TaskFailure> for RemoteError {
    fn from(e: &TaskFailure) -> Self {
        RemoteError { code: e.number(), message: e.to_string() }
    }
}

/// The task's fixed parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskPlan {
    /// Distinct pools that must hold the file.
    pub replicas: usize,
    pub eager: bool,
    pub meta_only: bool,
    /// The source has pins to move.
    pub pins: bool,
    /// `-target-deficit-mode=wait`: with no target for a wanted replica, fail (and retry
    /// later); otherwise finish with the replicas there are.
    pub wait_for_targets: bool,
    pub timers: TaskTimers,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskTimers {
    /// Time in Copying before a ping.
    pub ping: Duration,
    /// Time in NoResponse before the second ping.
    pub no_response: Duration,
    /// Time to wait for a finished message that may be on its way (a cancel does not wait).
    pub dead: Duration,
}

impl Default for TaskTimers {
    fn default() -> Self {
        TaskTimers {
            ping: Duration::from_secs(120),
            no_response: Duration::from_secs(120),
            dead: Duration::from_secs(60),
        }
    }
}

/// One file's task.
#[derive(Clone, Debug)]
pub struct Task {
    state: TaskState,
    plan: TaskPlan,
    /// Holders not tried yet.
    locations: VecDeque<PoolName>,
    /// Pools confirmed to hold the replica in the wanted state.
    replicas: BTreeSet<PoolName>,
    /// Holders that refused or failed this time; not chosen for a new copy either.
    tried: BTreeSet<PoolName>,
    /// The attempt under way.
    current: Option<Attempt>,
    attempt_base: u64,
    attempts: u64,
    /// A confirmed copy carried the pins.
    pins_moved: bool,
    /// A new replica (not an update of one a target held) was confirmed.
    new_copy: bool,
    /// A replica a target already held was confirmed (updated in place): its data were not
    /// compared with the source's checksum unless the job has `-verify`.
    kept_existing: bool,
    /// The first holder that did not answer.
    silent_holder: Option<PoolName>,
    /// Why the last holder could not bring its replica up to date (a failed `-verify`, ...):
    /// the reason a task that finds no other target reports.
    holder_error: Option<TaskFailure>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Attempt {
    id: AttemptId,
    target: PoolName,
    pins: bool,
    /// The target held a replica and was asked to update it.
    existing: bool,
}

/// Chooses a pool for a new copy, never one of `exclude`.
pub type Selector<'a> = &'a dyn Fn(&BTreeSet<PoolName>) -> Result<PoolName, NoTarget>;

impl Task {
    /// A task whose attempt ids are `attempt_base + 1, + 2, ...` (unique within the pool).
    pub fn new(plan: TaskPlan, attempt_base: u64) -> Task {
        Task {
            state: TaskState::Queued,
            plan,
            locations: VecDeque::new(),
            replicas: BTreeSet::new(),
            tried: BTreeSet::new(),
            current: None,
            attempt_base,
            attempts: 0,
            pins_moved: false,
            new_copy: false,
            kept_existing: false,
            silent_holder: None,
            holder_error: None,
        }
    }

    pub fn state(&self) -> TaskState {
        self.state
    }

    /// Whether a new replica was made (else the file was already on its targets, updated in
    /// place or left as it was): the completion report's `done` against `already in place`.
    pub fn made_new_copy(&self) -> bool {
        self.new_copy
    }

    /// Whether one of the confirmed replicas was one a target already held (updated in place).
    pub fn kept_existing(&self) -> bool {
        self.kept_existing
    }

    /// The task's latest attempt: the one under way, or the last one made (`None` before the
    /// first copy request). The job's log lines about the file name it.
    pub fn last_attempt(&self) -> Option<AttemptId> {
        (self.attempts > 0).then(|| AttemptId(self.attempt_base + self.attempts))
    }

    /// The attempt under way, once its target accepted it (or may have: the answer was lost):
    /// the attempt a restart of its target loses.
    pub fn accepted_attempt(&self) -> Option<(AttemptId, &PoolName)> {
        use TaskState::*;
        match self.state {
            Copying | Pinging | NoResponse | WaitingForCopyFinishedMessage => {
                self.current.as_ref().map(|a| (a.id, &a.target))
            }
            _ => None,
        }
    }

    /// The pool of the attempt under way.
    pub fn target(&self) -> Option<&PoolName> {
        self.current.as_ref().map(|a| &a.target)
    }

    /// Whether the attempt under way asks a holder to update its replica (not a new copy).
    pub fn updating(&self) -> bool {
        self.current.as_ref().is_some_and(|a| a.existing)
    }

    pub fn replicas(&self) -> &BTreeSet<PoolName> {
        &self.replicas
    }

    /// Whether a confirmed copy carried the pins.
    pub fn pins_moved(&self) -> bool {
        self.pins_moved
    }

    fn is_current(&self, attempt: AttemptId) -> bool {
        self.current.as_ref().is_some_and(|a| a.id == attempt)
    }

    /// Feeds one event; returns what to do. Events that do not apply are ignored.
    pub fn step(&mut self, event: TaskEvent, select: Selector<'_>) -> Vec<Effect> {
        use TaskState::*;
        let mut fx = Vec::new();
        if self.state.is_terminal() {
            return fx;
        }
        // Anything about another attempt is not ours to act on.
        match &event {
            TaskEvent::CopyAccepted { attempt }
            | TaskEvent::CopyRefused { attempt, .. }
            | TaskEvent::CopyUnanswered { attempt, .. }
            | TaskEvent::Finished { attempt, .. }
            | TaskEvent::PingAnswered { attempt, .. }
            | TaskEvent::PingUnanswered { attempt }
            | TaskEvent::Timer { attempt }
                if !self.is_current(*attempt) =>
            {
                return fx;
            }
            // A report on our attempt from a pool the attempt was not sent to is not ours either.
            TaskEvent::Finished { target, .. } if self.current.as_ref().is_some_and(|a| a.target != *target) => {
                return fx;
            }
            _ => {}
        }
        match (self.state, event) {
            (Queued, TaskEvent::Start) => {
                self.state = GettingLocations;
                fx.push(Effect::Locate);
            }
            (Queued | GettingLocations, TaskEvent::Cancel { .. }) => self.finish(Outcome::Cancelled, &mut fx),
            (GettingLocations, TaskEvent::AlreadyDone { replicas }) if !self.plan.pins => {
                self.replicas.extend(replicas);
                self.next(select, &mut fx);
            }
            (GettingLocations, TaskEvent::Located { holders }) => {
                self.locations = holders.into();
                self.next(select, &mut fx);
            }
            (UpdatingExistingFile | InitiatingCopy, TaskEvent::CopyAccepted { .. }) => {
                self.state = Copying;
                self.arm(self.plan.timers.ping, &mut fx);
            }
            (UpdatingExistingFile, TaskEvent::CopyRefused { error, .. }) => self.holder_failed(error, select, &mut fx),
            (InitiatingCopy, TaskEvent::CopyRefused { error, .. }) => {
                let target = self.target_name();
                self.fail(false, TaskFailure::Refused { target, error }, &mut fx)
            }
            (UpdatingExistingFile, TaskEvent::CopyUnanswered { how, .. }) => {
                let target = self.target_name();
                if how == Unanswered::NoAnswer {
                    self.cancel_current(format!("no answer from {target}"), &mut fx);
                }
                self.tried.insert(target.clone());
                self.silent_holder.get_or_insert(target.clone());
                if !self.locations.is_empty() {
                    self.update_next(&mut fx);
                } else if self.plan.eager && !self.plan.meta_only {
                    self.initiate(select, &mut fx);
                } else {
                    self.fail(false, TaskFailure::NoResponse { target }, &mut fx);
                }
            }
            (InitiatingCopy, TaskEvent::CopyUnanswered { how: Unanswered::NotDelivered, .. }) => {
                let target = self.target_name();
                self.fail(false, TaskFailure::NotReachable { target }, &mut fx)
            }
            (InitiatingCopy, TaskEvent::CopyUnanswered { how: Unanswered::NoAnswer, .. }) => {
                // The request may have arrived: tell the target to drop it, and wait for a
                // finished message that may already be on its way.
                let target = self.target_name();
                self.cancel_current(format!("Timeout waiting for target pool {target}"), &mut fx);
                self.state = WaitingForCopyFinishedMessage;
                self.arm(self.plan.timers.dead, &mut fx);
            }
            (Copying, TaskEvent::Timer { attempt }) => {
                self.state = Pinging;
                fx.push(Effect::Ping { target: self.target_name(), attempt });
            }
            (Pinging | NoResponse, TaskEvent::PingAnswered { alive: true, .. }) => {
                self.state = Copying;
                self.arm(self.plan.timers.ping, &mut fx);
            }
            (Pinging | NoResponse, TaskEvent::PingAnswered { alive: false, .. }) => {
                self.state = WaitingForCopyFinishedMessage;
                self.arm(self.plan.timers.dead, &mut fx);
            }
            (Pinging, TaskEvent::PingUnanswered { .. }) => {
                self.state = NoResponse;
                self.arm(self.plan.timers.no_response, &mut fx);
            }
            (NoResponse, TaskEvent::Timer { attempt }) => {
                // The second and last ping: the task stays in NoResponse, so a second silence
                // fails it instead of starting the round again.
                fx.push(Effect::Ping { target: self.target_name(), attempt });
            }
            (NoResponse, TaskEvent::PingUnanswered { .. })
            | (WaitingForCopyFinishedMessage, TaskEvent::Timer { .. }) => {
                let target = self.target_name();
                self.fail(false, TaskFailure::NoResponse { target }, &mut fx)
            }
            (
                UpdatingExistingFile | InitiatingCopy | Copying | Pinging | NoResponse | WaitingForCopyFinishedMessage,
                TaskEvent::Finished { target, result, .. },
            ) => self.finished(target, result, select, &mut fx),
            (
                UpdatingExistingFile | InitiatingCopy | Copying | Pinging | NoResponse | WaitingForCopyFinishedMessage,
                TaskEvent::Cancel { reason },
            ) => {
                // The target is told, and the task ends without waiting for it to confirm: a
                // target that does not answer must not hold the file's lock (nor the job in
                // CANCELLING). The attempt is forgotten, so nothing it reports later (a copy
                // that completed before the cancel reached the target) is counted: a cancelled
                // task never leads to a source mode, and the source stays as it is.
                self.cancel_current(reason, &mut fx);
                self.current = None;
                self.finish(Outcome::Cancelled, &mut fx);
            }
            _ => {}
        }
        fx
    }

    fn target_name(&self) -> PoolName {
        self.current.as_ref().map(|a| a.target.clone()).unwrap_or_else(|| "unknown".parse().expect("a valid name"))
    }

    fn new_attempt(&mut self, target: PoolName, pins: bool, existing: bool) -> AttemptId {
        self.attempts += 1;
        let id = AttemptId(self.attempt_base + self.attempts);
        self.current = Some(Attempt { id, target, pins, existing });
        id
    }

    /// Starts the timer of the current attempt.
    fn arm(&self, after: Duration, fx: &mut Vec<Effect>) {
        if let Some(a) = &self.current {
            fx.push(Effect::Timer { attempt: a.id, after });
        }
    }

    fn cancel_current(&self, reason: String, fx: &mut Vec<Effect>) {
        if let Some(a) = &self.current {
            fx.push(Effect::Cancel { target: a.target.clone(), attempt: a.id, reason });
        }
    }

    /// Whether the next confirmed replica completes the job (so the pins go with it).
    fn last_one(&self) -> bool {
        self.plan.pins && self.replicas.len() + 1 >= self.plan.replicas
    }

    fn pins_outstanding(&self) -> bool {
        self.plan.pins && !self.pins_moved
    }

    /// After the holders are known or a replica was confirmed: the next step.
    fn next(&mut self, select: Selector<'_>, fx: &mut Vec<Effect>) {
        if self.replicas.len() >= self.plan.replicas && !self.pins_outstanding() {
            self.finish(Outcome::Done { replicas: self.replicas.iter().cloned().collect() }, fx);
        } else if !self.locations.is_empty() {
            self.update_next(fx);
        } else if !self.plan.meta_only {
            self.initiate(select, fx);
        } else {
            let failure = TaskFailure::TooFewReplicas { have: self.replicas.len(), wanted: self.plan.replicas };
            self.fail(true, failure, fx);
        }
    }

    fn update_next(&mut self, fx: &mut Vec<Effect>) {
        let Some(holder) = self.locations.pop_front() else { return };
        let pins = self.last_one();
        let attempt = self.new_attempt(holder.clone(), pins, true);
        self.state = TaskState::UpdatingExistingFile;
        fx.push(Effect::Copy { target: holder, attempt, existing: true, pins });
    }

    fn initiate(&mut self, select: Selector<'_>, fx: &mut Vec<Effect>) {
        let mut exclude = self.replicas.clone();
        exclude.extend(self.tried.iter().cloned());
        match select(&exclude) {
            Ok(target) => {
                let pins = self.last_one();
                let attempt = self.new_attempt(target.clone(), pins, false);
                self.state = TaskState::InitiatingCopy;
                fx.push(Effect::Copy { target, attempt, existing: false, pins });
            }
            Err(_) if !self.plan.wait_for_targets => {
                // `-target-deficit-mode=limit`: as many replicas as there can be now (perhaps
                // none); the job notes the shortfall and never destroys such a source.
                self.current = None;
                self.finish(Outcome::Done { replicas: self.replicas.iter().cloned().collect() }, fx);
            }
            Err(reason) => {
                self.current = None;
                // What the operator must see is why the holder failed, not only that no other
                // pool was left.
                let error = TaskFailure::NoTarget { reason, holder: self.holder_error.take().map(Box::new) };
                self.fail(false, error, fx);
            }
        }
    }

    /// A holder could not update its replica: the next holder, else a new copy.
    fn holder_failed(&mut self, error: RemoteError, select: Selector<'_>, fx: &mut Vec<Effect>) {
        let target = self.target_name();
        self.tried.insert(target.clone());
        self.holder_error = Some(TaskFailure::Holder { target: target.clone(), error: error.clone() });
        if !self.locations.is_empty() {
            self.update_next(fx);
        } else if let Some(silent) = self.silent_holder.clone().filter(|_| !self.plan.eager) {
            // A holder that did not answer may well still hold the file: a non-eager job
            // waits for it rather than make a copy that may be one too many.
            self.fail(false, TaskFailure::NoResponse { target: silent }, fx);
        } else if !self.plan.meta_only {
            self.initiate(select, fx);
        } else {
            self.fail(false, TaskFailure::Transfer { target, error, last: false }, fx);
        }
    }

    fn finished(
        &mut self,
        target: PoolName,
        result: Result<(), RemoteError>,
        select: Selector<'_>,
        fx: &mut Vec<Effect>,
    ) {
        let existing = self.current.as_ref().is_some_and(|a| a.existing);
        match result {
            Ok(()) => {
                let pins = self.current.as_ref().is_some_and(|a| a.pins);
                self.new_copy |= !existing;
                self.kept_existing |= existing;
                self.replicas.insert(target);
                if pins {
                    self.pins_moved = true;
                }
                self.current = None;
                self.next(select, fx);
            }
            Err(e) if e.code() == Some(ErrorCode::FileNotFound) && !existing => {
                self.fail(true, TaskFailure::Transfer { target, error: e, last: true }, fx)
            }
            // An existing replica that cannot be brought up to date (locked, corrupt, busy):
            // try another holder or a new copy rather than this one again.
            Err(e) if existing => self.holder_failed(e, select, fx),
            Err(e) => self.fail(false, TaskFailure::Transfer { target, error: e, last: false }, fx),
        }
    }

    fn fail(&mut self, permanent: bool, error: TaskFailure, fx: &mut Vec<Effect>) {
        self.finish(Outcome::Failed { permanent, error }, fx);
    }

    fn finish(&mut self, outcome: Outcome, fx: &mut Vec<Effect>) {
        self.state = match outcome {
            Outcome::Done { .. } => TaskState::Done,
            Outcome::Failed { .. } => TaskState::Failed,
            Outcome::Cancelled => TaskState::Cancelled,
        };
        fx.push(Effect::Finish(outcome));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u32) -> PoolName {
        format!("pool{n}").parse().unwrap()
    }

    fn plan(replicas: usize, eager: bool, meta_only: bool, pins: bool) -> TaskPlan {
        TaskPlan { replicas, eager, meta_only, pins, wait_for_targets: true, timers: TaskTimers::default() }
    }

    /// A selector that picks the lowest-numbered pool of 1..=5 not excluded.
    fn first_free(exclude: &BTreeSet<PoolName>) -> Result<PoolName, NoTarget> {
        (1..=5).map(pool).find(|p| !exclude.contains(p)).ok_or(NoTarget::NoPools)
    }

    fn none(_: &BTreeSet<PoolName>) -> Result<PoolName, NoTarget> {
        Err(NoTarget::AllFull)
    }

    const A1: AttemptId = AttemptId(1001);
    const A2: AttemptId = AttemptId(1002);
    const A3: AttemptId = AttemptId(1003);

    /// Feeds `events` in order and checks the effects of each and the final state.
    fn check(plan: TaskPlan, select: Selector<'_>, steps: Vec<(TaskEvent, Vec<Effect>)>, end: TaskState) -> Task {
        let mut task = Task::new(plan, 1000);
        for (i, (event, want)) in steps.into_iter().enumerate() {
            let got = task.step(event.clone(), select);
            assert_eq!(got, want, "step {i}: {event:?} in {:?}", task.state());
        }
        assert_eq!(task.state(), end);
        task
    }

    fn copy(target: u32, attempt: AttemptId, existing: bool, pins: bool) -> Effect {
        Effect::Copy { target: pool(target), attempt, existing, pins }
    }

    fn timer(attempt: AttemptId, after: u64) -> Effect {
        Effect::Timer { attempt, after: Duration::from_secs(after) }
    }

    fn ok(attempt: AttemptId, target: u32) -> TaskEvent {
        TaskEvent::Finished { attempt, target: pool(target), result: Ok(()) }
    }

    fn failed(attempt: AttemptId, target: u32, code: ErrorCode) -> TaskEvent {
        TaskEvent::Finished { attempt, target: pool(target), result: Err(RemoteError::new(code, "boom")) }
    }

    fn done(pools: &[u32]) -> Effect {
        Effect::Finish(Outcome::Done { replicas: pools.iter().map(|p| pool(*p)).collect() })
    }

    fn transient(want: TaskFailure) -> impl Fn(&Effect) -> bool {
        move |e| matches!(e, Effect::Finish(Outcome::Failed { permanent: false, error }) if *error == want)
    }

    fn no_response(target: u32) -> TaskFailure {
        TaskFailure::NoResponse { target: pool(target) }
    }

    #[test]
    fn each_failure_is_shown_in_dcache_words_with_its_code() {
        let boom = RemoteError::new(ErrorCode::PoolFull, "boom");
        let holder =
            TaskFailure::Holder { target: pool(2), error: RemoteError::new(ErrorCode::ChecksumMismatch, "bad") };
        let table: Vec<(TaskFailure, &str, ErrorCode)> = vec![
            (
                TaskFailure::Refused { target: pool(1), error: boom.clone() },
                "Pool pool1 failed (boom)",
                ErrorCode::PoolFull,
            ),
            (no_response(1), "Pool pool1 failed (no response)", ErrorCode::Timeout),
            (TaskFailure::NotReachable { target: pool(1) }, "Pool pool1 failed (not reachable)", ErrorCode::Offline),
            (
                TaskFailure::TooFewReplicas { have: 0, wanted: 1 },
                "File skipped because it has no existing replicas",
                ErrorCode::FileNotFound,
            ),
            (
                TaskFailure::TooFewReplicas { have: 1, wanted: 2 },
                "File skipped because it does not have enough existing replicas (1 of 2)",
                ErrorCode::FileNotFound,
            ),
            (holder.clone(), "Replica on pool2 failed (bad)", ErrorCode::ChecksumMismatch),
            (
                TaskFailure::NoTarget { reason: NoTarget::AllFull, holder: None },
                "No targets available: All target pools are full.",
                ErrorCode::Offline,
            ),
            (
                TaskFailure::NoTarget { reason: NoTarget::NoPools, holder: Some(Box::new(holder)) },
                "Replica on pool2 failed (bad); no other target: No pools available.",
                ErrorCode::ChecksumMismatch,
            ),
            (
                TaskFailure::Transfer { target: pool(1), error: boom.clone(), last: false },
                "Transfer to pool1 failed (boom)",
                ErrorCode::PoolFull,
            ),
            (
                TaskFailure::Transfer { target: pool(1), error: boom, last: true },
                "Transfer to pool1 failed (boom); will not be retried",
                ErrorCode::PoolFull,
            ),
        ];
        for (failure, text, code) in table {
            assert_eq!(RemoteError::from(&failure), RemoteError::new(code, text));
        }
    }

    #[test]
    fn a_new_copy_from_start_to_done() {
        check(
            plan(1, false, false, false),
            &first_free,
            vec![
                (TaskEvent::Start, vec![Effect::Locate]),
                (TaskEvent::Located { holders: vec![] }, vec![copy(1, A1, false, false)]),
                (TaskEvent::CopyAccepted { attempt: A1 }, vec![timer(A1, 120)]),
                (TaskEvent::Timer { attempt: A1 }, vec![Effect::Ping { target: pool(1), attempt: A1 }]),
                (TaskEvent::PingAnswered { attempt: A1, alive: true }, vec![timer(A1, 120)]),
                (ok(A1, 1), vec![done(&[1])]),
            ],
            TaskState::Done,
        );
    }

    #[test]
    fn an_existing_replica_is_updated_and_a_finish_may_overtake_the_accept() {
        check(
            plan(1, false, false, false),
            &first_free,
            vec![
                (TaskEvent::Start, vec![Effect::Locate]),
                (TaskEvent::Located { holders: vec![pool(3)] }, vec![copy(3, A1, true, false)]),
                (ok(A1, 3), vec![done(&[3])]),
                (TaskEvent::CopyAccepted { attempt: A1 }, vec![]),
            ],
            TaskState::Done,
        );
    }

    #[test]
    fn replicas_count_distinct_pools() {
        let select = |exclude: &BTreeSet<PoolName>| {
            // The first replica's pool must never be offered again.
            first_free(exclude)
        };
        let task = check(
            plan(2, false, false, false),
            &select,
            vec![
                (TaskEvent::Start, vec![Effect::Locate]),
                (TaskEvent::Located { holders: vec![] }, vec![copy(1, A1, false, false)]),
                (ok(A1, 1), vec![copy(2, A2, false, false)]),
                // A duplicate of the first report is about another attempt: ignored.
                (ok(A1, 1), vec![]),
                (ok(A2, 2), vec![done(&[1, 2])]),
            ],
            TaskState::Done,
        );
        assert_eq!(task.replicas().len(), 2);
    }

    #[test]
    fn a_report_naming_another_pool_is_not_credited() {
        let mut task = Task::new(plan(1, false, false, false), 1000);
        task.step(TaskEvent::Start, &first_free);
        task.step(TaskEvent::Located { holders: vec![] }, &first_free);
        assert!(task.step(ok(A1, 2), &first_free).is_empty(), "attempt A1 went to pool1, not pool2");
        assert!(task.replicas().is_empty());
        assert_eq!(task.step(ok(A1, 1), &first_free), vec![done(&[1])]);
    }

    #[test]
    fn a_cancelled_copy_that_carried_the_pins_and_completed_is_not_counted() {
        // The pins stay on the source (it is not touched): a late confirmation of a cancelled
        // attempt moves nothing.
        let task = check(
            plan(1, false, false, true),
            &first_free,
            vec![
                (TaskEvent::Start, vec![Effect::Locate]),
                (TaskEvent::Located { holders: vec![] }, vec![copy(1, A1, false, true)]),
                (TaskEvent::CopyAccepted { attempt: A1 }, vec![timer(A1, 120)]),
                (
                    TaskEvent::Cancel { reason: "x".into() },
                    vec![
                        Effect::Cancel { target: pool(1), attempt: A1, reason: "x".into() },
                        Effect::Finish(Outcome::Cancelled),
                    ],
                ),
                (ok(A1, 1), vec![]),
            ],
            TaskState::Cancelled,
        );
        assert!(!task.pins_moved());
    }

    #[test]
    fn late_and_foreign_messages_are_never_credited() {
        let mut task = Task::new(plan(1, false, false, false), 1000);
        task.step(TaskEvent::Start, &first_free);
        task.step(TaskEvent::Located { holders: vec![] }, &first_free);
        task.step(TaskEvent::CopyAccepted { attempt: A1 }, &first_free);
        // A finish for an attempt this task never made, and one from a pool claiming ours.
        assert!(task.step(ok(AttemptId(77), 1), &first_free).is_empty());
        assert!(task.step(TaskEvent::Timer { attempt: AttemptId(77) }, &first_free).is_empty());
        assert_eq!(task.state(), TaskState::Copying);
        assert!(task.replicas().is_empty());
    }

    #[test]
    fn a_locked_holder_hands_over_to_the_next_holder() {
        let locked = TaskEvent::CopyRefused { attempt: A1, error: RemoteError::new(ErrorCode::FileBusy, "LOCKED") };
        check(
            plan(1, false, false, false),
            &first_free,
            vec![
                (TaskEvent::Start, vec![Effect::Locate]),
                (TaskEvent::Located { holders: vec![pool(4), pool(5)] }, vec![copy(4, A1, true, false)]),
                (locked, vec![copy(5, A2, true, false)]),
                (ok(A2, 5), vec![done(&[5])]),
            ],
            TaskState::Done,
        );
    }

    #[test]
    fn a_corrupt_existing_replica_falls_back_to_a_new_copy_elsewhere() {
        check(
            plan(1, false, false, false),
            &first_free,
            vec![
                (TaskEvent::Start, vec![Effect::Locate]),
                (TaskEvent::Located { holders: vec![pool(1)] }, vec![copy(1, A1, true, false)]),
                (TaskEvent::CopyAccepted { attempt: A1 }, vec![timer(A1, 120)]),
                (failed(A1, 1, ErrorCode::ChecksumMismatch), vec![copy(2, A2, false, false)]),
                (ok(A2, 2), vec![done(&[2])]),
            ],
            TaskState::Done,
        );
    }

    #[test]
    fn replicas_already_in_place_need_no_message() {
        check(
            plan(2, false, false, false),
            &first_free,
            vec![
                (TaskEvent::Start, vec![Effect::Locate]),
                (TaskEvent::AlreadyDone { replicas: vec![pool(3), pool(4)] }, vec![done(&[3, 4])]),
            ],
            TaskState::Done,
        );
        // One in place, one more wanted: a new copy elsewhere.
        check(
            plan(2, false, false, false),
            &first_free,
            vec![
                (TaskEvent::Start, vec![Effect::Locate]),
                (TaskEvent::AlreadyDone { replicas: vec![pool(1)] }, vec![copy(2, A1, false, false)]),
            ],
            TaskState::InitiatingCopy,
        );
        // Pins must travel with a confirmed copy: never done this way.
        let mut task = Task::new(plan(1, false, false, true), 1000);
        task.step(TaskEvent::Start, &first_free);
        assert!(task.step(TaskEvent::AlreadyDone { replicas: vec![pool(1)] }, &first_free).is_empty());
    }

    #[test]
    fn meta_only_without_holders_is_dropped_for_good() {
        let mut task = Task::new(plan(1, false, true, false), 1000);
        task.step(TaskEvent::Start, &first_free);
        let fx = task.step(TaskEvent::Located { holders: vec![] }, &first_free);
        assert!(matches!(&fx[..], [Effect::Finish(Outcome::Failed { permanent: true, error })]
            if *error == TaskFailure::TooFewReplicas { have: 0, wanted: 1 }));
    }

    #[test]
    fn a_missing_source_file_is_permanent_other_failures_are_retried() {
        let mut task = Task::new(plan(1, false, false, false), 1000);
        task.step(TaskEvent::Start, &first_free);
        task.step(TaskEvent::Located { holders: vec![] }, &first_free);
        let fx = task.step(failed(A1, 1, ErrorCode::FileNotFound), &first_free);
        assert!(matches!(&fx[..], [Effect::Finish(Outcome::Failed { permanent: true, .. })]), "{fx:?}");

        let mut task = Task::new(plan(1, false, false, false), 1000);
        task.step(TaskEvent::Start, &first_free);
        task.step(TaskEvent::Located { holders: vec![] }, &first_free);
        let fx = task.step(failed(A1, 1, ErrorCode::PoolFull), &first_free);
        let boom = RemoteError::new(ErrorCode::PoolFull, "boom");
        assert!(
            fx.iter().any(transient(TaskFailure::Transfer { target: pool(1), error: boom, last: false })),
            "{fx:?}"
        );
        assert!(
            matches!(&fx[..], [Effect::Finish(Outcome::Failed { error, .. })] if error.code() == Some(ErrorCode::PoolFull))
        );
    }

    #[test]
    fn with_limit_a_task_without_targets_ends_with_the_replicas_it_has() {
        let limit = TaskPlan { wait_for_targets: false, ..plan(2, false, false, true) };
        let only_one = |exclude: &BTreeSet<PoolName>| {
            if exclude.contains(&pool(1)) { Err(NoTarget::AllFull) } else { Ok(pool(1)) }
        };
        let task = check(
            limit.clone(),
            &only_one,
            vec![
                (TaskEvent::Start, vec![Effect::Locate]),
                (TaskEvent::Located { holders: vec![] }, vec![copy(1, A1, false, false)]),
                (ok(A1, 1), vec![done(&[1])]),
            ],
            TaskState::Done,
        );
        assert!(!task.pins_moved(), "the pins go only with the copy that completes the replicas");
        check(
            limit,
            &none,
            vec![(TaskEvent::Start, vec![Effect::Locate]), (TaskEvent::Located { holders: vec![] }, vec![done(&[])])],
            TaskState::Done,
        );
    }

    #[test]
    fn no_target_is_a_transient_failure() {
        let mut task = Task::new(plan(1, false, false, false), 1000);
        task.step(TaskEvent::Start, &none);
        let fx = task.step(TaskEvent::Located { holders: vec![] }, &none);
        let want = TaskFailure::NoTarget { reason: NoTarget::AllFull, holder: None };
        assert!(fx.iter().any(transient(want)), "{fx:?}");
    }

    #[test]
    fn an_unanswered_copy_is_cancelled_then_waited_for() {
        check(
            plan(1, false, false, false),
            &first_free,
            vec![
                (TaskEvent::Start, vec![Effect::Locate]),
                (TaskEvent::Located { holders: vec![] }, vec![copy(1, A1, false, false)]),
                (
                    TaskEvent::CopyUnanswered { attempt: A1, how: Unanswered::NoAnswer },
                    vec![
                        Effect::Cancel {
                            target: pool(1),
                            attempt: A1,
                            reason: "Timeout waiting for target pool pool1".into(),
                        },
                        timer(A1, 60),
                    ],
                ),
                // It arrived after all, and completed.
                (ok(A1, 1), vec![done(&[1])]),
            ],
            TaskState::Done,
        );
        let mut task = Task::new(plan(1, false, false, false), 1000);
        task.step(TaskEvent::Start, &first_free);
        task.step(TaskEvent::Located { holders: vec![] }, &first_free);
        task.step(TaskEvent::CopyUnanswered { attempt: A1, how: Unanswered::NoAnswer }, &first_free);
        let fx = task.step(TaskEvent::Timer { attempt: A1 }, &first_free);
        assert!(fx.iter().any(transient(no_response(1))), "{fx:?}");
    }

    #[test]
    fn holders_that_do_not_answer_fail_non_eager_jobs_but_eager_ones_copy_anew() {
        let unanswered = TaskEvent::CopyUnanswered { attempt: A1, how: Unanswered::NotDelivered };
        let mut lazy = Task::new(plan(1, false, false, false), 1000);
        lazy.step(TaskEvent::Start, &first_free);
        lazy.step(TaskEvent::Located { holders: vec![pool(4)] }, &first_free);
        let fx = lazy.step(unanswered.clone(), &first_free);
        assert!(fx.iter().any(transient(no_response(4))), "{fx:?}");

        check(
            plan(1, true, false, false),
            &first_free,
            vec![
                (TaskEvent::Start, vec![Effect::Locate]),
                (TaskEvent::Located { holders: vec![pool(4)] }, vec![copy(4, A1, true, false)]),
                (unanswered, vec![copy(1, A2, false, false)]),
            ],
            TaskState::InitiatingCopy,
        );
    }

    #[test]
    fn a_silent_holder_stops_a_non_eager_task_from_copying_elsewhere() {
        let refused = RemoteError::new(ErrorCode::FileNotFound, "Pool does not contain it");
        let mut task = Task::new(plan(1, false, false, false), 1000);
        task.step(TaskEvent::Start, &first_free);
        task.step(TaskEvent::Located { holders: vec![pool(4), pool(5)] }, &first_free);
        let fx = task.step(TaskEvent::CopyUnanswered { attempt: A1, how: Unanswered::NotDelivered }, &first_free);
        assert_eq!(fx, vec![copy(5, A2, true, false)]);
        let fx = task.step(TaskEvent::CopyRefused { attempt: A2, error: refused.clone() }, &first_free);
        assert!(fx.iter().any(transient(no_response(4))), "{fx:?}");

        // An eager job copies elsewhere.
        let mut task = Task::new(plan(1, true, false, false), 1000);
        task.step(TaskEvent::Start, &first_free);
        task.step(TaskEvent::Located { holders: vec![pool(4), pool(5)] }, &first_free);
        task.step(TaskEvent::CopyUnanswered { attempt: A1, how: Unanswered::NotDelivered }, &first_free);
        let fx = task.step(TaskEvent::CopyRefused { attempt: A2, error: refused }, &first_free);
        assert_eq!(fx, vec![copy(1, A3, false, false)]);
    }

    #[test]
    fn pings_that_go_unanswered_twice_fail_the_task() {
        let mut task = check(
            plan(1, false, false, false),
            &first_free,
            vec![
                (TaskEvent::Start, vec![Effect::Locate]),
                (TaskEvent::Located { holders: vec![] }, vec![copy(1, A1, false, false)]),
                (TaskEvent::CopyAccepted { attempt: A1 }, vec![timer(A1, 120)]),
                (TaskEvent::Timer { attempt: A1 }, vec![Effect::Ping { target: pool(1), attempt: A1 }]),
                (TaskEvent::PingUnanswered { attempt: A1 }, vec![timer(A1, 120)]),
                (TaskEvent::Timer { attempt: A1 }, vec![Effect::Ping { target: pool(1), attempt: A1 }]),
            ],
            TaskState::NoResponse,
        );
        // The second ping goes unanswered too: the task fails (and the file is retried later)
        // instead of pinging a dead target for ever.
        let fx = task.step(TaskEvent::PingUnanswered { attempt: A1 }, &first_free);
        assert_eq!(task.state(), TaskState::Failed);
        assert!(fx.iter().any(transient(no_response(1))), "{fx:?}");

        // A late answer to the second ping still counts.
        for (alive, state, timer_s) in
            [(true, TaskState::Copying, 120), (false, TaskState::WaitingForCopyFinishedMessage, 60)]
        {
            let mut task = Task::new(plan(1, false, false, false), 1000);
            task.step(TaskEvent::Start, &first_free);
            task.step(TaskEvent::Located { holders: vec![] }, &first_free);
            task.step(TaskEvent::CopyAccepted { attempt: A1 }, &first_free);
            task.step(TaskEvent::Timer { attempt: A1 }, &first_free);
            task.step(TaskEvent::PingUnanswered { attempt: A1 }, &first_free);
            task.step(TaskEvent::Timer { attempt: A1 }, &first_free);
            let fx = task.step(TaskEvent::PingAnswered { attempt: A1, alive }, &first_free);
            assert_eq!((task.state(), fx), (state, vec![timer(A1, timer_s)]), "alive {alive}");
        }
    }

    #[test]
    fn a_holder_that_fails_verification_is_the_reason_when_no_other_target_is_left() {
        let damaged = RemoteError::new(ErrorCode::ChecksumMismatch, "replica failed verification; marked BROKEN");
        let only = |exclude: &BTreeSet<PoolName>| {
            if exclude.contains(&pool(2)) { Err(NoTarget::NoPools) } else { Ok(pool(2)) }
        };
        let mut task = Task::new(plan(1, false, false, false), 1000);
        task.step(TaskEvent::Start, &only);
        task.step(TaskEvent::Located { holders: vec![pool(2)] }, &only);
        let fx = task.step(TaskEvent::Finished { attempt: A1, target: pool(2), result: Err(damaged.clone()) }, &only);
        assert_eq!(task.state(), TaskState::Failed);
        match fx.as_slice() {
            [Effect::Finish(Outcome::Failed { permanent: false, error })] => {
                let holder = TaskFailure::Holder { target: pool(2), error: damaged.clone() };
                assert_eq!(error, &TaskFailure::NoTarget { reason: NoTarget::NoPools, holder: Some(Box::new(holder)) });
                assert_eq!(error.code(), Some(ErrorCode::ChecksumMismatch));
            }
            other => panic!("{other:?}"),
        }
        // With another pool free, a new copy goes there instead.
        let mut task = Task::new(plan(1, false, false, false), 1000);
        task.step(TaskEvent::Start, &first_free);
        task.step(TaskEvent::Located { holders: vec![pool(2)] }, &first_free);
        let fx = task.step(TaskEvent::Finished { attempt: A1, target: pool(2), result: Err(damaged) }, &first_free);
        assert_eq!(fx, vec![copy(1, A2, false, false)]);
    }

    #[test]
    fn a_cancel_reaches_the_target_and_ends_the_task_at_once() {
        // In every state in which a target may be working on the attempt: the target is told,
        // and the task is over without waiting for it (it may be frozen).
        let cancel = || TaskEvent::Cancel { reason: "operator".into() };
        let told = |attempt, target| Effect::Cancel { target: pool(target), attempt, reason: "operator".into() };
        let prelude: Vec<(&str, Vec<TaskEvent>, u32)> = vec![
            ("InitiatingCopy", vec![TaskEvent::Located { holders: vec![] }], 1),
            ("UpdatingExistingFile", vec![TaskEvent::Located { holders: vec![pool(4)] }], 4),
            ("Copying", vec![TaskEvent::Located { holders: vec![] }, TaskEvent::CopyAccepted { attempt: A1 }], 1),
            (
                "Pinging",
                vec![
                    TaskEvent::Located { holders: vec![] },
                    TaskEvent::CopyAccepted { attempt: A1 },
                    TaskEvent::Timer { attempt: A1 },
                ],
                1,
            ),
            (
                "NoResponse",
                vec![
                    TaskEvent::Located { holders: vec![] },
                    TaskEvent::CopyAccepted { attempt: A1 },
                    TaskEvent::Timer { attempt: A1 },
                    TaskEvent::PingUnanswered { attempt: A1 },
                ],
                1,
            ),
            (
                "WaitingForCopyFinishedMessage",
                vec![
                    TaskEvent::Located { holders: vec![] },
                    TaskEvent::CopyUnanswered { attempt: A1, how: Unanswered::NoAnswer },
                ],
                1,
            ),
        ];
        for (state, events, target) in prelude {
            let mut task = Task::new(plan(1, false, false, false), 1000);
            task.step(TaskEvent::Start, &first_free);
            for e in events {
                task.step(e, &first_free);
            }
            assert_eq!(task.state().to_string(), state);
            let fx = task.step(cancel(), &first_free);
            assert_eq!(fx, vec![told(A1, target), Effect::Finish(Outcome::Cancelled)], "in {state}");
            assert_eq!(task.state(), TaskState::Cancelled);
            assert_eq!(task.accepted_attempt(), None, "in {state}: no attempt is left to credit");
            // What the target says afterwards changes nothing: a copy that completed before
            // the cancel reached it is not counted, so no source mode follows.
            for late in [
                ok(A1, target),
                failed(A1, target, ErrorCode::Cancelled),
                TaskEvent::Timer { attempt: A1 },
                TaskEvent::CopyAccepted { attempt: A1 },
            ] {
                assert_eq!(task.step(late, &first_free), vec![], "in {state}");
            }
            assert!(task.replicas().is_empty(), "in {state}");
            assert_eq!(task.state(), TaskState::Cancelled);
        }
        // Cancelled before anything was sent: nothing to tell anyone.
        let mut task = Task::new(plan(1, false, false, false), 1000);
        assert_eq!(task.step(cancel(), &first_free), vec![Effect::Finish(Outcome::Cancelled)]);
        let mut task = Task::new(plan(1, false, false, false), 1000);
        task.step(TaskEvent::Start, &first_free);
        assert_eq!(task.step(cancel(), &first_free), vec![Effect::Finish(Outcome::Cancelled)]);
        // A second replica under way when the cancel comes: the first stays confirmed on its
        // pool, but the task ends Cancelled, not Done (the job applies no source mode).
        let mut task = Task::new(plan(2, false, false, false), 1000);
        task.step(TaskEvent::Start, &first_free);
        task.step(TaskEvent::Located { holders: vec![] }, &first_free);
        task.step(ok(A1, 1), &first_free);
        let fx = task.step(cancel(), &first_free);
        assert_eq!(fx, vec![told(A2, 2), Effect::Finish(Outcome::Cancelled)]);
        assert_eq!(task.step(ok(A2, 2), &first_free), vec![]);
    }

    #[test]
    fn pins_go_with_the_copy_that_completes_the_replicas() {
        check(
            plan(2, false, false, true),
            &first_free,
            vec![
                (TaskEvent::Start, vec![Effect::Locate]),
                (TaskEvent::Located { holders: vec![pool(3)] }, vec![copy(3, A1, true, false)]),
                (ok(A1, 3), vec![copy(1, A2, false, true)]),
                (
                    failed(A2, 1, ErrorCode::Io),
                    vec![Effect::Finish(Outcome::Failed {
                        permanent: false,
                        error: TaskFailure::Transfer {
                            target: pool(1),
                            error: RemoteError::new(ErrorCode::Io, "boom"),
                            last: false,
                        },
                    })],
                ),
            ],
            TaskState::Failed,
        );
        let task = check(
            plan(1, false, false, true),
            &first_free,
            vec![
                (TaskEvent::Start, vec![Effect::Locate]),
                (TaskEvent::Located { holders: vec![] }, vec![copy(1, A1, false, true)]),
                (ok(A1, 1), vec![done(&[1])]),
            ],
            TaskState::Done,
        );
        assert!(task.pins_moved);
        let _ = A3;
    }
}
