//! The migration module of one pool: the jobs it runs as a source (docs/dcache-compatibility.md#scheduling,
//! docs/dcache-compatibility.md#tasks) and the copies it makes as a target for other pools' jobs
//! (docs/dcache-compatibility.md#the-target-side).
//!
//! A job is plain state behind one lock. Everything that happens to it (a reply, a finished
//! message, a timer, an operator command, a repository change) takes the lock, feeds the task
//! state machines ([`crate::task`]), runs the scheduler (docs/dcache-compatibility.md#scheduling) and
//! collects `Action`s; the actions (messages, timers, disk work) are started after the lock is released and report
//! back the same way. Nothing awaits while holding a lock.
//!
//! Lock order: the job list, then a job, then the file locks. The target side takes only its
//! own request table.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tidepool_p2p::message::{
    CopyAnswer, CopyFinished, CopyRequest, Held, MAX_COPY_BATCH, MAX_COPY_BATCH_BYTES, MigrationReply,
    MigrationRequest, PoolCost,
};
use tidepool_p2p::model::{EpochMillis, ReplicaState, StickyMode, StickyRecord};
use tidepool_p2p::{AttemptId, ErrorCode, JobId, PnfsId, PoolName, RemoteError, TaskId};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::MigrationError;
use crate::completion::{CompletionReport, Counts, FileLine};
use crate::definition::{DeficitMode, JobDefinition, Order, Pins};
use crate::env::{
    CopyOf, Entry, Env, EnvError, HoldKind, HoldOwner, Pull, Removal as SourceRemovalItem, SavedHold, Snapshot,
    SourceRemoval,
};
use crate::expr::{self, Expr, Value};
use crate::filter::Candidate;
use crate::job_state::{JobState, transition};
use crate::ledger::{Fate, Placed};
use crate::mode::SourceState;
use crate::queue::{AfterFailure, Backoff, Queue, Removal};
use crate::rate::{ByteRate, RateLimit};
use crate::report::{self, FailureLine, FailureState, JobReport, NoteLine, Noted, SaveMark, TaskLine};
use crate::safety;
use crate::select::{self, NoTarget, PoolInfo, SplitMix};
use crate::targets::{self, Cluster, pool_value};
use crate::task::{Effect, Outcome, Task, TaskEvent, TaskPlan, TaskState, TaskTimers, Unanswered};
use crate::update::plan_update;

mod core;
mod driver;
mod dry;
mod refresh;
mod saved;
mod server;
mod source_mode;

use core::{Command, JobEvent, JobView, World, decide};
use server::{Outbox, Served};
use source_mode::{Applied, SourceModeItem, apply_source_modes};

/// The module's settings (`[migration]` in the pool config).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Concurrency of a job created without `-concurrency`.
    pub default_concurrency: usize,
    /// How often a job re-reads its target pools' space and load (without `-refresh`).
    pub refresh: Duration,
    /// Wait before a failed file is tried again.
    pub backoff: Backoff,
    pub timers: TaskTimers,
    /// A SLEEPING job looks again after this long.
    pub sleep: Duration,
    /// Files per location question to a target pool.
    pub locate_batch: usize,
    /// For this long after a target went offline, a non-eager job treats it as a possible
    /// holder of every file: it waits for the pool (a restart) rather than copy elsewhere.
    pub offline_grace: Duration,
    /// The most files one unit of a job's concurrency carries (a batch of small files bound
    /// for one target); 1 sends every file on its own, as dCache does.
    pub batch_files: usize,
    /// The most bytes of one batch. Only files of at most [`SMALL_FILE`] bytes (and at most
    /// this) are batched; a larger file is a unit of its own.
    pub batch_bytes: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_concurrency: 1,
            refresh: Duration::from_secs(300),
            backoff: Backoff::default(),
            timers: TaskTimers::default(),
            sleep: Duration::from_secs(10),
            locate_batch: 1000,
            offline_grace: Duration::from_secs(600),
            batch_files: 64,
            batch_bytes: 4 << 20,
        }
    }
}

/// The largest file a batch carries: the size a pool sends whole in a small-file exchange.
pub const SMALL_FILE: u64 = 1 << 20;

/// How many notes a job keeps (docs/dcache-compatibility.md#scheduling).
const NOTES: usize = 15;
/// The largest location question a target answers.
const MAX_LOCATE: usize = 10_000;
/// How long an answer to a location question asked ahead of a file's task is used.
const LOCATED_FRESH: Duration = Duration::from_secs(60);
/// How often a target tries to deliver a finished message before giving up (the source's
/// ping then learns that the attempt is gone and the file is retried).
const FINISHED_TRIES: u32 = 5;
/// The window over which `migration info` measures the rate.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// A cancel a target did not answer is sent again after this, then twice as long each time
/// up to [`CANCEL_RESEND_MAX`], for at most [`CANCEL_RESEND_FOR`].
const CANCEL_RESEND_FIRST: Duration = Duration::from_secs(1);
const CANCEL_RESEND_MAX: Duration = Duration::from_secs(30);
const CANCEL_RESEND_FOR: Duration = Duration::from_secs(3600);

/// The pool's migration module.
pub struct Module<E: Env> {
    env: Arc<E>,
    rt: Handle,
    /// The span current when the module was made (the daemon's `pool{name=...}`): every task
    /// the module spawns, for its jobs and for the copies it makes, runs in it, so that each of
    /// their log lines names the pool.
    span: tracing::Span,
    settings: Settings,
    jobs: Mutex<Jobs>,
    /// Files this pool's jobs work on, and the job that does (docs/dcache-compatibility.md#scheduling).
    locks: Mutex<HashMap<PnfsId, Arc<Job>>>,
    /// Copies this pool makes for other pools' jobs, and attempts that ended here.
    served: Mutex<Served>,
    /// Outcomes of those copies waiting to be sent, by source pool.
    outbox: Mutex<HashMap<PoolName, Outbox>>,
    next_task: AtomicU64,
    /// The high bits of every attempt id made by this run of the pool, so a late message
    /// from before a restart matches no attempt of this run.
    epoch: u64,
    default_concurrency: AtomicUsize,
    /// Seconds.
    default_refresh: AtomicU64,
    shutting_down: AtomicBool,
    /// Ends every copy served as a target (shutdown).
    serving: CancellationToken,
    /// The copies served as a target, which shutdown waits for.
    copies: tokio_util::task::TaskTracker,
    /// The permanent jobs as the last `save` (or the restart) left them, by id.
    saved: Mutex<HashMap<String, SavedJob>>,
    /// What went wrong restoring saved jobs.
    problems: Mutex<Vec<String>>,
    /// Requests served for other pools, by kind ([`REQUEST_KINDS`] order): the metrics show
    /// them, so the cost traffic of the jobs of a cluster can be counted.
    served_requests: [AtomicU64; REQUEST_KINDS.len()],
}

/// The kinds of [`MigrationRequest`] as [`Module::served_requests`] names them.
pub const REQUEST_KINDS: [&str; 8] =
    ["pool_info", "locate", "copy", "copy_batch", "ping", "cancel", "finished", "finished_batch"];

const SAVE_HEADER: &str = "tidepool-migration-save 1";

/// A permanent job as `save` keeps it: the command exactly as given (with its id, not the
/// parsed options, so a restart parses it again and counts sticky lifetimes from then).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedJob {
    pub id: String,
    pub command: String,
    pub concurrency: usize,
    pub created: EpochMillis,
    /// Bytes per second, 0 unlimited (`-rate`, `migration set rate`); absent from what a pool
    /// saved before it had rate limits.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rate: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What [`Module::parse_saved`] read.
#[derive(Debug, Default)]
pub struct SavedSet {
    pub default_concurrency: Option<usize>,
    /// Seconds.
    pub default_refresh: Option<u64>,
    pub jobs: Vec<Result<SavedJob, String>>,
}

struct Jobs {
    list: Vec<Arc<Job>>,
    next_id: u64,
    /// Saved jobs that could not be recreated at start: kept (and saved again) until the
    /// operator drops them, so that a `save` never loses one silently.
    unrestored: Vec<Unrestored>,
    /// Unrestored jobs the operator dropped: `ls` says they are still saved until a `save`.
    dropped: Vec<SavedJob>,
}

/// A saved job the pool could not recreate at start, and why.
struct Unrestored {
    saved: SavedJob,
    reason: String,
}

struct Job {
    /// May change once: a CANCELLING job whose id is taken by a new job gets a fresh one.
    id: Mutex<JobId>,
    def: JobDefinition,
    command: String,
    created: EpochMillis,
    /// `-smode`/`-tmode` records with their expiry counted from the job's creation.
    smode: Vec<StickyRecord>,
    tmode: Vec<StickyRecord>,
    /// The target pools, in cluster-file order: resolved again from the membership at each
    /// refresh, so a pool added to a target group becomes a target (`Module::refresh`).
    targets: Mutex<Vec<PoolName>>,
    /// When the job last asked each pool that is or was its target itself, and whether it
    /// answered ([`refresh::to_ask`]: a refresh from published costs renews no hold).
    asked: Mutex<HashMap<PoolName, refresh::Asked>>,
    refresh: Duration,
    /// The job's byte-rate limit, which the pool's fetch server draws from for the files the
    /// job holds the lock of ([`Module::rate_limits`]). Not a decision of the core: it shapes
    /// bytes on the wire, not the job's states.
    rate: Arc<RateLimit>,
    /// Cancelled when the job reaches a terminal state: stops its timers and refreshes.
    stop: CancellationToken,
    /// Cancelled when the job is cancelled (or ends): stops its initial scan at once.
    halt: CancellationToken,
    /// A scan after lost repository changes is under way (one at a time)...
    rescanning: AtomicBool,
    /// ...and more changes were lost while it ran: it scans once more.
    rescan_again: AtomicBool,
    /// Every task the driver starts for the job (requests, timers, the scan, the source mode):
    /// shutdown waits for them.
    tasks: tokio_util::task::TaskTracker,
    /// Wakes the job's timer task when a timer sooner than all others is set.
    timer_set: tokio::sync::Notify,
    s: Mutex<JobInner>,
}

struct JobInner {
    state: JobState,
    queue: Queue,
    running: HashMap<PnfsId, Running>,
    /// The units of the job's concurrency under way: each a batch of small files bound for
    /// one target, or one larger file. A unit ends when every task in it has ended (its
    /// files' source modes may still be applied).
    units: HashMap<u64, Unit>,
    next_unit: u64,
    /// The tasks' timers, soonest first: (when, sequence) -> (file, attempt).
    timers: std::collections::BTreeMap<(tokio::time::Instant, u64), (PnfsId, AttemptId)>,
    timer_seq: u64,
    concurrency: usize,
    notes: VecDeque<NoteLine>,
    /// The targets as last seen; `None` until the first refresh answered.
    infos: Option<Vec<TargetInfo>>,
    refreshing: bool,
    /// Holders found ahead of time, by file.
    located: HashMap<PnfsId, (tokio::time::Instant, Vec<Holder>)>,
    /// Tasks waiting for a location answer.
    want_locate: BTreeSet<PnfsId>,
    locating: bool,
    /// Files whose task ended while a location question was on its way: its answer about
    /// them may be out of date.
    stale: BTreeSet<PnfsId>,
    wake_seq: u64,
    wake_at: Option<EpochMillis>,
    rng: SplitMix,
    /// Completions in the last [`RATE_WINDOW`]: when, and how many bytes.
    recent: VecDeque<(Instant, u64)>,
    started: Option<Instant>,
    /// Files passed over because another job works on them, noted once each.
    locked_noted: BTreeSet<PnfsId>,
    /// The targets' figures as the job sees them: when they last answered, and whether the
    /// job counted copies of its own against them since (`Cx::reserve`).
    room: RoomView,
}

/// How fresh the job's view of its targets' room is: a job never decides that no target has
/// room (and notes "All target pools are full") on figures it has changed itself or that are
/// older than [`ROOM_FRESH`]; it asks the targets again first, at most once per
/// [`ROOM_FRESH`] (docs/operator-guide.md, "Space and the sweeper").
#[derive(Debug, Default)]
struct RoomView {
    /// When the targets last answered a refresh.
    answered_at: Option<EpochMillis>,
    /// Copies counted against the figures since that answer.
    reserved: bool,
    /// When the job last asked again because its view showed no room.
    asked_at: Option<EpochMillis>,
    /// That question is unanswered: no new unit starts until it is.
    awaiting: bool,
}

/// How long a refresh's figures count as fresh for deciding that no target has room, and the
/// least time between two refreshes asked for that reason.
const ROOM_FRESH: Duration = Duration::from_secs(2);

impl JobInner {
    fn new(concurrency: usize, seed: u64) -> JobInner {
        JobInner {
            state: JobState::New,
            queue: Queue::default(),
            running: HashMap::new(),
            units: HashMap::new(),
            next_unit: 0,
            timers: std::collections::BTreeMap::new(),
            timer_seq: 0,
            concurrency,
            notes: VecDeque::new(),
            infos: None,
            refreshing: false,
            located: HashMap::new(),
            want_locate: BTreeSet::new(),
            locating: false,
            stale: BTreeSet::new(),
            wake_seq: 0,
            wake_at: None,
            rng: SplitMix::new(seed),
            recent: VecDeque::new(),
            started: None,
            locked_noted: BTreeSet::new(),
            room: RoomView::default(),
        }
    }
}

/// A pool that holds a file, or may: `replica` is what it reported (`None`: it did not answer).
#[derive(Clone, Debug)]
struct Holder {
    pool: PoolName,
    replica: Option<Held>,
}

#[derive(Clone, Debug)]
struct TargetInfo {
    name: PoolName,
    /// `None`: offline. A pool that answered before and misses one refresh keeps its last
    /// figures: one lost answer (or a quick restart) must not make a non-eager job believe
    /// the pool holds nothing and copy its files elsewhere.
    cost: Option<PoolCost>,
    /// Refreshes in a row without an answer.
    misses: u32,
    /// Offline since (a pool never seen online: since the job started).
    offline_since: Option<tokio::time::Instant>,
    /// Passes `-include-when` and `-exclude-when` (evaluated at each refresh).
    eligible: bool,
    /// The pool's run as it last answered (kept while it is offline), to see a restart.
    last_run: Option<u64>,
    /// A copy request could not be delivered to it since the last refresh: no new copy goes
    /// there until it answers again (it is still asked who holds what).
    unreachable: bool,
}

/// One unit of a job's concurrency.
#[derive(Debug, Default)]
struct Unit {
    /// Its tasks not yet ended.
    tasks: usize,
    /// The files it started with.
    files: usize,
    /// Where its new copies go: the first target chosen for one of its files, kept for the
    /// others while it has room, so that the batch goes to one pool in one request.
    target: Option<PoolName>,
}

struct Running {
    id: TaskId,
    task: Task,
    unit: u64,
    /// The task's pending timer (its key in `JobInner::timers`).
    timer: Option<(tokio::time::Instant, u64)>,
    entry: Entry,
    /// The state and records the target replica must have.
    state: ReplicaState,
    sticky: Vec<StickyRecord>,
    /// Pins that go with the copy (`-pins=move`).
    pins: Vec<StickyRecord>,
    /// Done; the source mode is being applied.
    finishing: bool,
}

/// What changed in the pool's repository, as far as jobs care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoChange {
    /// The replica is gone.
    Removed,
    /// Its state changed from `from` (to what the repository now says).
    State {
        from: ReplicaState,
    },
    Sticky,
    AccessTime,
    /// Anything else (a recorded checksum, ...).
    Other,
}

/// Work to start once the job's lock is released.
enum Action {
    Copy {
        to: PoolName,
        unit: u64,
        pnfsid: PnfsId,
        attempt: AttemptId,
        req: Box<CopyRequest>,
    },
    /// Several copies of one unit to one pool in one request (made of the `Copy`s of one visit).
    CopyBatch {
        to: PoolName,
        items: Vec<(PnfsId, AttemptId, CopyRequest)>,
    },
    Ping {
        to: PoolName,
        pnfsid: PnfsId,
        attempt: AttemptId,
    },
    Cancel {
        to: PoolName,
        attempt: AttemptId,
        reason: String,
    },
    /// A timer sooner than every other was set: the timer task looks again.
    TimerSet,
    Wake {
        seq: u64,
        after: Duration,
    },
    Locate {
        ids: Vec<PnfsId>,
        pools: Vec<PoolName>,
    },
    /// The source modes of files whose copies were confirmed, applied in one blocking call
    /// with one durable flush for the removals.
    SourceModes(Vec<SourceModeItem>),
    /// Ask the targets for their space and load (answered by `JobEvent::Refreshed`).
    Refresh,
    /// The job was cancelled: its initial scan stops at once.
    Halt,
    /// The job reached a terminal state: its timers, refreshes and scan stop.
    Ended,
}

fn not_found() -> MigrationError {
    MigrationError::JobNotFound
}

impl<E: Env> Module<E> {
    /// A module for the pool `env`; must be called inside the tokio runtime it will use.
    pub fn new(env: Arc<E>, settings: Settings) -> Arc<Self> {
        let epoch = {
            use std::hash::{BuildHasher, Hasher};
            // A random value from the standard library's seeded hasher: 24 bits make a clash
            // with the attempt ids of an earlier run of this pool a one-in-16-million chance.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_i64(env.now());
            (h.finish() & 0xff_ffff) << 40
        };
        Arc::new(Module {
            env,
            rt: Handle::current(),
            span: tracing::Span::current(),
            default_concurrency: AtomicUsize::new(settings.default_concurrency),
            default_refresh: AtomicU64::new(settings.refresh.as_secs().max(1)),
            settings,
            jobs: Mutex::new(Jobs { list: Vec::new(), next_id: 1, unrestored: Vec::new(), dropped: Vec::new() }),
            locks: Mutex::new(HashMap::new()),
            served: Mutex::new(Served::default()),
            outbox: Mutex::new(HashMap::new()),
            next_task: AtomicU64::new(1),
            epoch,
            shutting_down: AtomicBool::new(false),
            serving: CancellationToken::new(),
            copies: tokio_util::task::TaskTracker::new(),
            saved: Mutex::new(HashMap::new()),
            problems: Mutex::new(Vec::new()),
            served_requests: Default::default(),
        })
    }

    pub fn env(&self) -> &Arc<E> {
        &self.env
    }

    // ---------------------------------------------------------------- operator commands

    /// `migration copy|move|cache`: creates the job and starts it. Returns its summary line.
    pub fn create(self: &Arc<Self>, def: JobDefinition, command: String) -> Result<String, MigrationError> {
        let warn = def.permanent && def.eager;
        let id = def.id.clone();
        let job = self.create_job(def, command, id, None, None, self.env.now())?;
        let mut reply = self.summary(&job);
        if warn {
            reply.push_str(
                "\n(Warning: permanent jobs should not be eager: when several pools restart together, \
                 eager jobs create many unneeded copies)",
            );
        }
        Ok(reply)
    }

    /// Recreates a job saved with [`Module::save_text`] (pool start): its saved id, concurrency,
    /// rate limit and creation time; sticky lifetimes count from now.
    pub fn restore(self: &Arc<Self>, saved: &SavedJob, def: JobDefinition) -> Result<String, MigrationError> {
        let id: JobId =
            saved.id.parse().map_err(|e: tidepool_p2p::ids::IdError| MigrationError::invalid(e.to_string()))?;
        let job = self.create_job(
            def,
            saved.command.clone(),
            Some(id),
            Some(saved.concurrency),
            Some(saved.rate),
            saved.created,
        )?;
        Ok(self.summary(&job))
    }

    fn create_job(
        self: &Arc<Self>,
        def: JobDefinition,
        command: String,
        id: Option<JobId>,
        concurrency: Option<usize>,
        rate: Option<u64>,
        created: EpochMillis,
    ) -> Result<Arc<Job>, MigrationError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(MigrationError::invalid("the pool is shutting down"));
        }
        let targets = self.job_targets(&def)?;
        let now = self.env.now();
        let concurrency = concurrency.or(def.concurrency).unwrap_or_else(|| self.default_concurrency());
        let job = {
            let mut jobs = self.jobs.lock();
            let id = match &id {
                Some(id) => {
                    if jobs.unrestored.iter().any(|u| u.saved.id == id.as_str()) {
                        return Err(MigrationError::invalid(format!(
                            "Job id is already in use by a saved job that could not be restored: {id} \
                             (`migration cancel {id}` drops it)"
                        )));
                    }
                    if let Some(old) = jobs.list.iter().find(|j| *j.id.lock() == *id).cloned() {
                        match old.s.lock().state {
                            s if s.is_terminal() => jobs.list.retain(|j| !Arc::ptr_eq(j, &old)),
                            JobState::Cancelling => {
                                let fresh = jobs.fresh_id();
                                *old.id.lock() = fresh;
                            }
                            _ => return Err(MigrationError::invalid(format!("Job id is already in use: {id}"))),
                        }
                    }
                    id.clone()
                }
                None => jobs.fresh_id(),
            };
            let seed = self.seed(&def, now);
            let rate = rate.or(def.rate).unwrap_or(0);
            let job = Arc::new(self.new_job(id, def, command, created, targets, concurrency, rate, seed));
            jobs.list.push(job.clone());
            job
        };
        self.start(&job);
        Ok(job)
    }

    /// A job's target pools, checked against its `-replicas` (a new job and a dry run alike).
    fn job_targets(&self, def: &JobDefinition) -> Result<Vec<PoolName>, MigrationError> {
        let cluster = EnvCluster(&*self.env);
        let targets = targets::resolve(&cluster, self.env.name(), &def.targets, &def.include, &def.exclude)?;
        if def.replicas > targets.len() {
            // dCache accepted this and retried for ever.
            return Err(MigrationError::invalid(format!(
                "-replicas={} needs as many target pools, but there are {} ({})",
                def.replicas,
                targets.len(),
                targets.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(",")
            )));
        }
        Ok(targets)
    }

    /// The seed of a job's target choice: `-seed`, else one of the moment.
    fn seed(&self, def: &JobDefinition, now: EpochMillis) -> u64 {
        def.seed.unwrap_or_else(|| now as u64 ^ self.next_task.load(Ordering::Relaxed).rotate_left(17))
    }

    /// A job, not yet listed nor started (a dry run never lists nor starts its own).
    #[allow(clippy::too_many_arguments)]
    fn new_job(
        &self,
        id: JobId,
        def: JobDefinition,
        command: String,
        created: EpochMillis,
        targets: Vec<PoolName>,
        concurrency: usize,
        rate: u64,
        seed: u64,
    ) -> Job {
        let now = self.env.now();
        Job {
            id: Mutex::new(id),
            command,
            created,
            smode: def.smode.records.iter().map(|r| r.at(now)).collect(),
            tmode: def.tmode.records.iter().map(|r| r.at(now)).collect(),
            targets: Mutex::new(targets),
            asked: Mutex::new(HashMap::new()),
            refresh: Duration::from_secs(def.refresh.unwrap_or_else(|| self.default_refresh())),
            rate: Arc::new(RateLimit::new(rate)),
            stop: CancellationToken::new(),
            halt: CancellationToken::new(),
            rescanning: AtomicBool::new(false),
            rescan_again: AtomicBool::new(false),
            tasks: tokio_util::task::TaskTracker::new(),
            timer_set: tokio::sync::Notify::new(),
            s: Mutex::new(JobInner::new(concurrency, seed)),
            def,
        }
    }

    fn find(&self, id: &str) -> Result<Arc<Job>, MigrationError> {
        let jobs = self.jobs.lock();
        if let Some(job) = jobs.list.iter().find(|j| j.id.lock().as_str() == id) {
            return Ok(job.clone());
        }
        match jobs.unrestored.iter().find(|u| u.saved.id == id) {
            Some(u) => Err(MigrationError::invalid(format!(
                "Job {id} could not be restored at start ({}); it does not run, and only `migration cancel {id}` \
                 applies to it",
                u.reason
            ))),
            None => Err(not_found()),
        }
    }

    fn summary(&self, job: &Job) -> String {
        let state = job.s.lock().state;
        report::summary_line(job.id.lock().as_str(), state, &job.command)
    }

    /// One summary line per job, oldest first. A permanent job that `save` would write
    /// differently from the last save says `(not saved)`; a saved job that was cancelled
    /// since says that it comes back at the next start.
    pub fn ls(&self) -> Vec<String> {
        self.ls_summaries().iter().map(report::JobSummary::line).collect()
    }

    /// A problem found when the saved jobs were restored; `info` shows them.
    pub fn report_problem(&self, problem: String) {
        tracing::error!("migration: {problem}");
        self.problems.lock().push(problem);
    }

    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().clone()
    }

    /// The jobs of `migration ls`, `migration ls -json` and `info -json`, oldest first, then
    /// the saved jobs that could not be restored, then those dropped since but still saved.
    pub fn ls_summaries(&self) -> Vec<report::JobSummary> {
        let saved = self.saved.lock().clone();
        let (jobs, unrestored) = {
            let jobs = self.jobs.lock();
            let mut unrestored: Vec<report::JobSummary> = jobs
                .unrestored
                .iter()
                .map(|u| report::JobSummary {
                    id: u.saved.id.clone(),
                    state: UNRESTORED.to_string(),
                    command: u.saved.command.clone(),
                    reason: Some(u.reason.clone()),
                    mark: None,
                })
                .collect();
            unrestored.extend(jobs.dropped.iter().filter(|d| saved.get(&d.id) == Some(*d)).map(|d| {
                report::JobSummary {
                    id: d.id.clone(),
                    state: UNRESTORED.to_string(),
                    command: d.command.clone(),
                    reason: None,
                    mark: Some(SaveMark::DroppedButSaved),
                }
            }));
            (jobs.list.clone(), unrestored)
        };
        jobs.iter()
            .map(|j| {
                let id = j.id.lock().to_string();
                let state = j.s.lock().state;
                let on_disk = saved.get(&id);
                let mark = match self.saved_form(j) {
                    Some(now) if on_disk != Some(&now) => Some(SaveMark::NotSaved),
                    None if on_disk.is_some() && j.def.permanent => Some(SaveMark::SavedButEnded),
                    _ => None,
                };
                report::JobSummary {
                    id,
                    state: state.as_str().to_string(),
                    command: j.command.clone(),
                    reason: None,
                    mark,
                }
            })
            .chain(unrestored)
            .collect()
    }

    pub fn ls_json(&self) -> String {
        serde_json::to_string_pretty(&self.ls_summaries()).expect("a job list always serialises")
    }

    /// The report of every job, oldest first: what `migration info` shows of each (the pool's
    /// metrics page reads these).
    pub fn reports(&self) -> Vec<JobReport> {
        let jobs = self.jobs.lock().list.clone();
        jobs.iter().map(|j| self.report(j)).collect()
    }

    pub fn state(&self, id: &str) -> Option<JobState> {
        self.find(id).ok().map(|j| j.s.lock().state)
    }

    /// `migration info <job>` (docs/dcache-compatibility.md#output, plus rate, ETA and failures).
    pub fn info(&self, id: &str) -> Result<String, MigrationError> {
        Ok(self.report(&*self.find(id)?).render())
    }

    /// `migration info -failed <job>`: every file whose last try failed.
    pub fn info_failed(&self, id: &str) -> Result<String, MigrationError> {
        Ok(self.report(&*self.find(id)?).render_failures())
    }

    /// `migration report <job>` (docs/admin-commands.md): every file the job selected and what
    /// became of it; only the files not done or already in place unless `all`.
    pub fn completion(&self, id: &str, all: bool) -> Result<CompletionReport, MigrationError> {
        let job = self.find(id)?;
        let s = job.s.lock();
        let ledger = s.queue.ledger();
        let failures: HashMap<&PnfsId, &crate::queue::Failure> = s.queue.failures().collect();
        let mut file_lines: Vec<FileLine> = ledger
            .iter()
            .filter(|(_, r)| all || !matches!(r.fate, Fate::Done | Fate::InPlace))
            .map(|(id, r)| {
                let placed = matches!(r.fate, Fate::Done | Fate::InPlace);
                let failure = failures.get(id);
                FileLine {
                    pnfsid: id.to_string(),
                    fate: r.fate.as_str(),
                    targets: ledger.targets(r).iter().map(|t| t.to_string()).collect(),
                    target_state: placed.then(|| r.state.to_string()),
                    checksum_matched: placed.then_some(r.checksum_matched),
                    failed_attempts: failure.map(|f| f.attempts).unwrap_or(0),
                    code: failure.map(|f| f.last_error.code),
                    error: failure.map(|f| f.last_error.message.clone()),
                }
            })
            .collect();
        file_lines.sort_by(|a, b| a.pnfsid.cmp(&b.pnfsid));
        let counts = Counts::of(|f| ledger.count(f));
        Ok(CompletionReport {
            id: job.id.lock().to_string(),
            state: s.state.as_str().to_string(),
            ended: s.state.is_terminal() && counts.queued + counts.running + counts.waiting == 0,
            files: ledger.len(),
            counts,
            failed_at_least_once: failures.len() as u64,
            all,
            file_lines,
        })
    }

    pub fn info_json(&self, id: &str) -> Result<String, MigrationError> {
        Ok(serde_json::to_string_pretty(&self.report(&*self.find(id)?)).expect("a report always serialises"))
    }

    fn report(&self, job: &Job) -> JobReport {
        let s = job.s.lock();
        let stats = s.queue.stats();
        let mut running: Vec<TaskLine> = s
            .running
            .iter()
            .map(|(pnfsid, r)| TaskLine {
                task: r.id.0,
                pnfsid: pnfsid.to_string(),
                state: task_state_name(&r.task),
                target: r.task.target().map(|t| t.to_string()),
            })
            .collect();
        running.sort_by_key(|t| t.task);
        let mut failures: Vec<FailureLine> = s
            .queue
            .failures()
            .map(|(id, f)| {
                let state = match f.since {
                    AfterFailure::Done => FailureState::DoneSince,
                    AfterFailure::Cancelled => FailureState::NotRetried,
                    AfterFailure::Pending if f.permanent => FailureState::GivenUp,
                    AfterFailure::Pending
                        if s.state.is_terminal() || matches!(s.state, JobState::Cancelling | JobState::Stopping) =>
                    {
                        FailureState::NotRetried
                    }
                    AfterFailure::Pending => FailureState::Waiting,
                };
                FailureLine {
                    pnfsid: id.to_string(),
                    attempts: f.attempts,
                    last_at: f.last_at,
                    retry_at: (state == FailureState::Waiting)
                        .then(|| f.last_at.saturating_add(self.settings.backoff.delay(f.attempts).as_millis() as i64)),
                    code: f.last_error.code,
                    error: f.last_error.message.clone(),
                    size: f.size,
                    state,
                }
            })
            .collect();
        failures.sort_by(|a, b| a.pnfsid.cmp(&b.pnfsid));
        let rate = rate(&s);
        let left = s.queue.bytes_left();
        JobReport {
            id: job.id.lock().to_string(),
            command: job.command.clone(),
            state: s.state.as_str().to_string(),
            queued: s.queue.queued_count(),
            queued_bytes: s.queue.queued_bytes(),
            waiting: s.queue.waiting(),
            units: s.units.len(),
            batches: s.units.values().filter(|u| u.files > 1).count(),
            attempts: stats.attempts,
            targets: usable(&s).filter(|t| t.cost.is_some_and(|c| c.accepts)).map(|t| t.name.to_string()).collect(),
            unusable: unusable(&s)
                .map(|(pool, why)| report::Unusable { pool: pool.to_string(), reason: why.to_string() })
                .collect(),
            completed_files: stats.completed,
            completed_bytes: stats.transferred,
            total_bytes: stats.total,
            bytes_left: left,
            concurrency: s.concurrency,
            rate_limit_bytes_per_second: job.rate.rate(),
            rate_bytes_per_second: rate,
            eta_seconds: rate.filter(|r| *r > 0.0 && left > 0).map(|r| (left as f64 / r).ceil() as u64),
            running,
            notes: s.notes.iter().cloned().collect(),
            failures,
        }
    }

    pub fn suspend(self: &Arc<Self>, id: &str) -> Result<String, MigrationError> {
        let job = self.find(id)?;
        self.command(&job, Command::Suspend)?;
        Ok(self.summary(&job))
    }

    pub fn resume(self: &Arc<Self>, id: &str) -> Result<String, MigrationError> {
        let job = self.find(id)?;
        self.command(&job, Command::Resume)?;
        Ok(self.summary(&job))
    }

    /// Cancels a job: without `force` its running tasks finish first; with it they are
    /// cancelled on their targets too.
    pub fn cancel(self: &Arc<Self>, id: &str, force: bool, reason: &str) -> Result<String, MigrationError> {
        {
            // A saved job that could not be restored: dropped from what `save` writes.
            let mut jobs = self.jobs.lock();
            if let Some(at) = jobs.unrestored.iter().position(|u| u.saved.id == id) {
                let gone = jobs.unrestored.remove(at);
                tracing::info!(job = %id, "saved job that could not be restored dropped: {reason}");
                let reply = format!(
                    "[{id}] {UNRESTORED} {}: dropped; the next `save` removes it from the saved jobs",
                    gone.saved.command
                );
                jobs.dropped.push(gone.saved);
                return Ok(reply);
            }
        }
        let job = self.find(id)?;
        self.cancel_job(&job, force, reason);
        Ok(self.summary(&job))
    }

    fn cancel_job(self: &Arc<Self>, job: &Arc<Job>, force: bool, reason: &str) {
        let cancel = Command::Cancel { force, reason: reason.to_string() };
        // Always answered with Ok: a job that ended already stays as it is.
        let _ = self.command(job, cancel);
    }

    /// `migration clear`: forgets the jobs that have ended.
    pub fn clear(&self) {
        self.jobs.lock().list.retain(|j| !j.s.lock().state.is_terminal());
    }

    pub fn set_concurrency(self: &Arc<Self>, id: &str, n: usize) -> Result<String, MigrationError> {
        let job = self.find(id)?;
        self.command(&job, Command::SetConcurrency(n))?;
        Ok(format!("[{}] Concurrency set to {n}", job.id.lock()))
    }

    /// `migration set rate`: the job's byte-rate limit from now on (0: unlimited); the
    /// transfers of its files take it up at once, even those waiting for bytes.
    pub fn set_rate(&self, id: &str, rate: u64) -> Result<String, MigrationError> {
        let job = self.find(id)?;
        job.rate.set(rate);
        tracing::info!(job = %job.id.lock(), rate = %ByteRate(rate), "rate limit set");
        Ok(format!("[{}] Rate limit set to {}", job.id.lock(), ByteRate(rate)))
    }

    /// The rate limit of the job that works on each file, if one does: what the pool's fetch
    /// server draws the bytes it sends for the file from. One look at the lock table for all.
    pub fn rate_limits<'a>(&self, ids: impl IntoIterator<Item = &'a PnfsId>) -> Vec<Option<Arc<RateLimit>>> {
        let locks = self.locks.lock();
        ids.into_iter().map(|id| locks.get(id).map(|job| job.rate.clone())).collect()
    }

    /// `migration set refresh-default`: the refresh period of jobs created without `-refresh`.
    pub fn set_default_refresh(&self, seconds: u64) {
        self.default_refresh.store(seconds.max(1), Ordering::Relaxed);
    }

    pub fn default_refresh(&self) -> u64 {
        self.default_refresh.load(Ordering::Relaxed)
    }

    pub fn set_default_concurrency(&self, n: usize) {
        self.default_concurrency.store(n, Ordering::Relaxed);
    }

    pub fn default_concurrency(&self) -> usize {
        self.default_concurrency.load(Ordering::Relaxed)
    }

    /// Whether one of this pool's jobs works on the file.
    pub fn is_locked(&self, id: &PnfsId) -> bool {
        self.locks.lock().contains_key(id)
    }
}

/// The targets online at the last refresh.
fn online(s: &JobInner) -> impl Iterator<Item = &TargetInfo> {
    s.infos.iter().flatten().filter(|t| t.cost.is_some() && t.eligible)
}

/// The job's targets that no new copy goes to now, and why.
fn unusable(s: &JobInner) -> impl Iterator<Item = (&PoolName, &'static str)> {
    s.infos.iter().flatten().filter_map(|t| {
        let why = match t.cost {
            None => "offline",
            Some(_) if !t.eligible => "left out by -include-when/-exclude-when",
            Some(c) if !c.accepts => "not accepting copies (disabled for pool-to-pool, or not alive in etcd)",
            Some(_) if t.unreachable => "not reachable",
            Some(_) => return None,
        };
        Some((&t.name, why))
    })
}

/// The targets a new copy may go to: online, and reachable since the last refresh.
fn usable(s: &JobInner) -> impl Iterator<Item = &TargetInfo> {
    online(s).filter(|t| !t.unreachable)
}

fn rate(s: &JobInner) -> Option<f64> {
    let started = s.started?;
    let window = started.elapsed().min(RATE_WINDOW).as_secs_f64();
    if window < 1.0 || !matches!(s.state, JobState::Running | JobState::Sleeping | JobState::Suspended) {
        return None;
    }
    let bytes: u64 = s.recent.iter().filter(|(t, _)| t.elapsed() <= RATE_WINDOW).map(|(_, b)| b).sum();
    Some(bytes as f64 / window)
}

fn task_state_name(task: &Task) -> String {
    match task.state() {
        TaskState::WaitingForCopyFinishedMessage => "Waiting".to_string(),
        s => s.to_string(),
    }
}

fn candidate(e: &Entry) -> Candidate<'_> {
    Candidate { attrs: &e.attrs, state: e.state, sticky: &e.sticky }
}

fn unexpected(reply: &MigrationReply) -> RemoteError {
    RemoteError::new(ErrorCode::Protocol, format!("unexpected reply {reply:?}"))
}

struct EnvCluster<'a, E: Env>(&'a E);

impl<E: Env> Cluster for EnvCluster<'_, E> {
    fn pools(&self) -> Vec<PoolName> {
        self.0.pools()
    }
    fn pool_group(&self, group: &str) -> Vec<PoolName> {
        self.0.pool_group(group)
    }
    fn groups_of(&self, pool: &PoolName) -> Vec<String> {
        self.0.groups_of(pool)
    }
    fn link(&self, name: &str) -> Option<Vec<String>> {
        self.0.link(name)
    }
    fn hsm_pools(&self, hsm: &str) -> Vec<PoolName> {
        self.0.hsm_pools(hsm)
    }
}

/// The state `migration ls` shows for a saved job that could not be restored.
const UNRESTORED: &str = "UNRESTORED";

impl Jobs {
    fn fresh_id(&mut self) -> JobId {
        loop {
            let id: JobId = self.next_id.to_string().parse().expect("a number is a valid job id");
            self.next_id += 1;
            let taken = self.list.iter().any(|j| *j.id.lock() == id)
                || self.unrestored.iter().any(|u| u.saved.id == id.as_str());
            if !taken {
                return id;
            }
        }
    }
}

/// The initial scan: every replica the filter accepts, in `-order` if one was given.
fn scan<E: Env>(env: &E, job: &Job) -> Result<Vec<(PnfsId, u64)>, EnvError> {
    scan_noting(env, job, &mut |_, _| {})
}

/// [`scan`], telling `left_out` of every replica the filter leaves out and why (a dry run).
fn scan_noting<E: Env>(
    env: &E,
    job: &Job,
    left_out: &mut dyn FnMut(&Entry, crate::filter::Criterion),
) -> Result<Vec<(PnfsId, u64)>, EnvError> {
    let now = env.now();
    let mut found: Vec<(PnfsId, u64, EpochMillis)> = Vec::new();
    env.scan(&mut |e: Entry| {
        if job.halt.is_cancelled() {
            return ControlFlow::Break(());
        }
        match job.def.filter.miss(&candidate(&e), now) {
            None => found.push((e.attrs.pnfsid, e.attrs.size, e.attrs.access_time)),
            Some(why) => left_out(&e, why),
        }
        ControlFlow::Continue(())
    })?;
    match job.def.order {
        None => {}
        Some(Order::Size { descending }) => {
            found.sort_by(|a, b| if descending { b.1.cmp(&a.1) } else { a.1.cmp(&b.1) }.then(a.0.cmp(&b.0)))
        }
        Some(Order::Lru { descending }) => {
            found.sort_by(|a, b| if descending { b.2.cmp(&a.2) } else { a.2.cmp(&b.2) }.then(a.0.cmp(&b.0)))
        }
    }
    Ok(found.into_iter().map(|(id, size, _)| (id, size)).collect())
}
