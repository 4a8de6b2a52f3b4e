//! The migration module of one pool: the jobs it runs as a source (reference §3-§4) and the
//! copies it makes as a target for other pools' jobs (§5).
//!
//! A job is plain state behind one lock. Everything that happens to it (a reply, a finished
//! message, a timer, an operator command, a repository change) takes the lock, feeds the task
//! state machines ([`crate::task`]), runs the scheduler (§3.5) and collects `Action`s; the
//! actions (messages, timers, disk work) are started after the lock is released and report
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
use tidepool_p2p::message::{CopyFinished, CopyRequest, Held, MigrationReply, MigrationRequest, PoolCost};
use tidepool_p2p::model::{EpochMillis, ReplicaState, StickyMode, StickyRecord};
use tidepool_p2p::{AttemptId, ErrorCode, JobId, PnfsId, PoolName, RemoteError, TaskId};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::MigrationError;
use crate::definition::{DeficitMode, JobDefinition, Order, Pins};
use crate::env::{Entry, Env, HoldKind, HoldOwner, Pull, SavedHold, Snapshot, SourceRemoval, pin_covered};
use crate::expr::{self, Expr, Value};
use crate::filter::Candidate;
use crate::job_state::{JobState, transition};
use crate::mode::{SourceState, TargetState};
use crate::queue::{Backoff, Queue, Removal};
use crate::report::{self, FailureLine, JobReport, NoteLine, SaveMark, TaskLine};
use crate::select::{self, NoTarget, PoolInfo, SplitMix};
use crate::targets::{self, Cluster, pool_value};
use crate::task::{Effect, Outcome, Task, TaskEvent, TaskPlan, TaskState, TaskTimers};
use crate::update::plan_update;

mod server;
mod source_mode;

use server::Served;
use source_mode::{Applied, apply_source_mode};

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
        }
    }
}

/// How many notes a job keeps (reference §3.1).
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

/// The pool's migration module.
pub struct Module<E: Env> {
    env: Arc<E>,
    rt: Handle,
    settings: Settings,
    jobs: Mutex<Jobs>,
    /// Files this pool's jobs work on, and the job that does (reference §3.1 "file locks").
    locks: Mutex<HashMap<PnfsId, Arc<Job>>>,
    /// Copies this pool makes for other pools' jobs, and attempts that ended here.
    served: Mutex<Served>,
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
}

const SAVE_HEADER: &str = "tidepool-migration-save 1";

/// A permanent job as `save` keeps it: the command exactly as given (with its id, not the
/// parsed options, so a restart parses it again and counts sticky lifetimes from then).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedJob {
    pub id: String,
    pub command: String,
    pub concurrency: usize,
    pub created: EpochMillis,
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
    /// The target pools, in cluster-file order.
    targets: Vec<PoolName>,
    refresh: Duration,
    /// Cancelled when the job reaches a terminal state: stops its timers and refreshes.
    stop: CancellationToken,
    /// Cancelled when the job is cancelled (or ends): stops its initial scan at once.
    halt: CancellationToken,
    /// A scan after lost repository changes is under way (one at a time)...
    rescanning: AtomicBool,
    /// ...and more changes were lost while it ran: it scans once more.
    rescan_again: AtomicBool,
    s: Mutex<JobInner>,
}

struct JobInner {
    state: JobState,
    queue: Queue,
    running: HashMap<PnfsId, Running>,
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
}

struct Running {
    id: TaskId,
    task: Task,
    entry: Entry,
    /// The state and records the target replica must have.
    state: ReplicaState,
    sticky: Vec<StickyRecord>,
    /// Pins that go with the copy (`-pins=move`).
    pins: Vec<StickyRecord>,
    timer_seq: u64,
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
    Copy { to: PoolName, pnfsid: PnfsId, attempt: AttemptId, req: Box<CopyRequest> },
    Ping { to: PoolName, pnfsid: PnfsId, attempt: AttemptId },
    Cancel { to: PoolName, attempt: AttemptId, reason: String },
    Timer { pnfsid: PnfsId, attempt: AttemptId, seq: u64, after: Duration },
    Wake { seq: u64, after: Duration },
    Locate { ids: Vec<PnfsId>, pools: Vec<PoolName> },
    SourceMode { pnfsid: PnfsId, confirmed: usize, moved_pins: Vec<StickyRecord>, snapshot: Snapshot },
}

fn not_found() -> MigrationError {
    MigrationError::invalid("Job not found")
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
            default_concurrency: AtomicUsize::new(settings.default_concurrency),
            default_refresh: AtomicU64::new(settings.refresh.as_secs().max(1)),
            settings,
            jobs: Mutex::new(Jobs { list: Vec::new(), next_id: 1, unrestored: Vec::new(), dropped: Vec::new() }),
            locks: Mutex::new(HashMap::new()),
            served: Mutex::new(Served::default()),
            next_task: AtomicU64::new(1),
            epoch,
            shutting_down: AtomicBool::new(false),
            serving: CancellationToken::new(),
            copies: tokio_util::task::TaskTracker::new(),
            saved: Mutex::new(HashMap::new()),
            problems: Mutex::new(Vec::new()),
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
        let job = self.create_job(def, command, id, None, self.env.now())?;
        let mut reply = self.summary(&job);
        if warn {
            reply.push_str(
                "\n(Warning: permanent jobs should not be eager: when several pools restart together, \
                 eager jobs create many unneeded copies)",
            );
        }
        Ok(reply)
    }

    /// Recreates a job saved with [`Module::save_text`] (pool start): its saved id, concurrency
    /// and creation time; sticky lifetimes count from now.
    pub fn restore(self: &Arc<Self>, saved: &SavedJob, def: JobDefinition) -> Result<String, MigrationError> {
        let id: JobId =
            saved.id.parse().map_err(|e: tidepool_p2p::ids::IdError| MigrationError::invalid(e.to_string()))?;
        let job = self.create_job(def, saved.command.clone(), Some(id), Some(saved.concurrency), saved.created)?;
        Ok(self.summary(&job))
    }

    fn create_job(
        self: &Arc<Self>,
        def: JobDefinition,
        command: String,
        id: Option<JobId>,
        concurrency: Option<usize>,
        created: EpochMillis,
    ) -> Result<Arc<Job>, MigrationError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(MigrationError::invalid("the pool is shutting down"));
        }
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
        let now = self.env.now();
        let smode = def.smode.records.iter().map(|r| r.at(now)).collect();
        let tmode = def.tmode.records.iter().map(|r| r.at(now)).collect();
        let concurrency = concurrency.or(def.concurrency).unwrap_or_else(|| self.default_concurrency());
        let refresh = Duration::from_secs(def.refresh.unwrap_or_else(|| self.default_refresh()));
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
            let seed = now as u64 ^ self.next_task.load(Ordering::Relaxed).rotate_left(17);
            let job = Arc::new(Job {
                id: Mutex::new(id),
                command,
                created,
                smode,
                tmode,
                targets,
                refresh,
                stop: CancellationToken::new(),
                halt: CancellationToken::new(),
                rescanning: AtomicBool::new(false),
                rescan_again: AtomicBool::new(false),
                s: Mutex::new(JobInner {
                    state: JobState::New,
                    queue: Queue::default(),
                    running: HashMap::new(),
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
                }),
                def,
            });
            jobs.list.push(job.clone());
            job
        };
        self.start(&job);
        Ok(job)
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

    /// How `save` would write the job, if it would.
    fn saved_form(&self, job: &Job) -> Option<SavedJob> {
        let s = job.s.lock();
        let kept = !matches!(
            s.state,
            JobState::Cancelled | JobState::Cancelling | JobState::Stopping | JobState::Failed | JobState::Finished
        );
        (job.def.permanent && kept).then(|| SavedJob {
            id: job.id.lock().to_string(),
            command: job.command.clone(),
            concurrency: s.concurrency,
            created: job.created,
        })
    }

    /// `save`: the module's settings and its permanent jobs (not cancelled, stopping,
    /// failed or finished) as text for the pool to store. Call [`Module::saved`] once it is
    /// stored.
    pub fn save_text(&self) -> (String, Vec<SavedJob>) {
        let (jobs, unrestored) = {
            let jobs = self.jobs.lock();
            (jobs.list.clone(), jobs.unrestored.iter().map(|u| u.saved.clone()).collect::<Vec<_>>())
        };
        let mut saved: Vec<SavedJob> = jobs.iter().filter_map(|j| self.saved_form(j)).collect();
        // Saved jobs that could not be restored stay saved, as they were.
        saved.extend(unrestored);
        let mut text = format!(
            "{SAVE_HEADER}\nconcurrency-default {}\nrefresh-default {}\n",
            self.default_concurrency(),
            self.default_refresh()
        );
        for j in &saved {
            text.push_str("job ");
            text.push_str(&serde_json::to_string(j).expect("a saved job always serialises"));
            text.push('\n');
        }
        (text, saved)
    }

    /// Keeps a saved job that could not be recreated at start (see `Jobs::unrestored`): `ls`
    /// lists it, `save` writes it again, `cancel` drops it.
    pub fn keep_unrestored(&self, saved: SavedJob, reason: String) {
        let mut jobs = self.jobs.lock();
        jobs.unrestored.retain(|u| u.saved.id != saved.id);
        jobs.unrestored.push(Unrestored { saved, reason });
    }

    /// How many saved jobs are kept without running (they could not be restored).
    pub fn unrestored_count(&self) -> usize {
        self.jobs.lock().unrestored.len()
    }

    /// Records what is stored now (after `save`, or what a restart found).
    pub fn saved(&self, jobs: Vec<SavedJob>) {
        let saved: HashMap<String, SavedJob> = jobs.into_iter().map(|j| (j.id.clone(), j)).collect();
        self.jobs.lock().dropped.retain(|d| saved.contains_key(&d.id));
        *self.saved.lock() = saved;
    }

    /// Reads what [`Module::save_text`] wrote. A line that cannot be read is an `Err` with
    /// the reason; the others are still read.
    pub fn parse_saved(text: &str) -> Result<SavedSet, String> {
        let mut lines = text.lines();
        match lines.next() {
            Some(SAVE_HEADER) => {}
            other => return Err(format!("not a saved migration set (first line {other:?})")),
        }
        let mut set = SavedSet::default();
        for (n, line) in lines.enumerate() {
            let at = n + 2;
            if let Some(v) = line.strip_prefix("concurrency-default ") {
                match v.parse::<usize>() {
                    Ok(c) => set.default_concurrency = Some(c),
                    Err(_) => set.jobs.push(Err(format!("line {at}: bad concurrency-default {v:?}"))),
                }
            } else if let Some(v) = line.strip_prefix("refresh-default ") {
                match v.parse::<u64>() {
                    Ok(r) if r >= 1 => set.default_refresh = Some(r),
                    _ => set.jobs.push(Err(format!("line {at}: bad refresh-default {v:?}"))),
                }
            } else if let Some(json) = line.strip_prefix("job ") {
                set.jobs.push(serde_json::from_str(json).map_err(|e| format!("line {at}: unreadable job ({e})")));
            } else if !line.is_empty() {
                set.jobs.push(Err(format!("line {at}: unknown line {line:?}")));
            }
        }
        Ok(set)
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

    /// `migration info <job>` (reference §8.2, plus rate, ETA and failures).
    pub fn info(&self, id: &str) -> Result<String, MigrationError> {
        Ok(self.report(&*self.find(id)?).render())
    }

    /// `migration info -failed <job>`: every file that failed at least once.
    pub fn info_failed(&self, id: &str) -> Result<String, MigrationError> {
        Ok(self.report(&*self.find(id)?).render_failures())
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
            .map(|(id, f)| FailureLine {
                pnfsid: id.to_string(),
                attempts: f.attempts,
                last_at: f.last_at,
                retry_at: (!f.permanent)
                    .then(|| f.last_at.saturating_add(self.settings.backoff.delay(f.attempts).as_millis() as i64)),
                code: f.last_error.code,
                error: f.last_error.message.clone(),
                size: f.size,
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
            attempts: stats.attempts,
            targets: online(&s).map(|t| t.name.to_string()).collect(),
            completed_files: stats.completed,
            completed_bytes: stats.transferred,
            total_bytes: stats.total,
            bytes_left: left,
            concurrency: s.concurrency,
            rate_bytes_per_second: rate,
            eta_seconds: rate.filter(|r| *r > 0.0 && left > 0).map(|r| (left as f64 / r).ceil() as u64),
            running,
            notes: s.notes.iter().cloned().collect(),
            failures,
        }
    }

    pub fn suspend(self: &Arc<Self>, id: &str) -> Result<String, MigrationError> {
        let job = self.find(id)?;
        self.with(&job, |cx| match cx.s.state {
            JobState::Suspended => Ok(()),
            JobState::Running | JobState::Sleeping | JobState::Paused => {
                cx.set_state(JobState::Suspended);
                Ok(())
            }
            _ => Err(MigrationError::invalid("Cannot suspend a job that does not run")),
        })?;
        Ok(self.summary(&job))
    }

    pub fn resume(self: &Arc<Self>, id: &str) -> Result<String, MigrationError> {
        let job = self.find(id)?;
        self.with(&job, |cx| {
            if cx.s.state != JobState::Suspended {
                return Err(MigrationError::invalid("Cannot resume a job that does not run"));
            }
            cx.set_state(JobState::Running);
            Ok(())
        })?;
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
        self.with(job, |cx| {
            let state = cx.s.state;
            if state.is_terminal() {
                return;
            }
            tracing::info!(job = %cx.job.id.lock(), force, "cancelling job: {reason}");
            if state != JobState::Initializing && cx.s.running.is_empty() {
                cx.set_state(JobState::Cancelled);
                return;
            }
            cx.set_state(JobState::Cancelling);
            cx.job.halt.cancel();
            cx.s.queue.clear();
            if force {
                let ids: Vec<PnfsId> = cx.s.running.keys().copied().collect();
                for id in ids {
                    cx.feed(id, TaskEvent::Cancel { reason: reason.to_string() });
                }
            }
        });
    }

    /// `migration clear`: forgets the jobs that have ended.
    pub fn clear(&self) {
        self.jobs.lock().list.retain(|j| !j.s.lock().state.is_terminal());
    }

    pub fn set_concurrency(self: &Arc<Self>, id: &str, n: usize) -> Result<String, MigrationError> {
        let job = self.find(id)?;
        self.with(&job, |cx| cx.s.concurrency = n);
        Ok(format!("[{}] Concurrency set to {n}", job.id.lock()))
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

    /// Pool shutdown: every job is cancelled with force ("pool shutdown") and every copy
    /// served for another pool ends; waits at most `grace`.
    pub async fn shutdown(self: &Arc<Self>, grace: Duration) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.serving.cancel();
        let jobs: Vec<Arc<Job>> = self.jobs.lock().list.clone();
        for job in &jobs {
            self.cancel_job(job, true, "pool shutdown");
        }
        let deadline = tokio::time::Instant::now() + grace;
        for job in &jobs {
            tokio::select! {
                _ = job.stop.cancelled() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(job = %job.id.lock(), "job still cancelling at shutdown; its targets drop the copies");
                }
            }
        }
        let served = self.served.lock().active.len();
        if served > 0 {
            tracing::info!(served, "copies for other pools cancelled at shutdown");
        }
        // Cancelled copies remove their partial data; wait for that, within the grace period.
        self.copies.close();
        if tokio::time::timeout_at(deadline, self.copies.wait()).await.is_err() {
            tracing::warn!(
                "copies for other pools still ending at shutdown; restart recovery removes their partial data"
            );
        }
    }

    // ---------------------------------------------------------------- repository changes

    /// The repository announced a change to `id` (reference §6.1). A deleted file leaves every
    /// job (its running task is cancelled); a queued file that no longer matches leaves the
    /// queue (a running task goes on); a permanent job adds a file that has come to match.
    pub fn repository_changed(self: &Arc<Self>, id: PnfsId, change: RepoChange) {
        let jobs: Vec<Arc<Job>> = self.jobs.lock().list.clone();
        // Only the jobs that may care: a permanent one, or one that has the file. Most changes of a
        // busy pool (its own incoming replicas) concern no job and cost no read.
        let jobs: Vec<Arc<Job>> = jobs
            .into_iter()
            .filter(|j| !j.stop.is_cancelled() && (j.def.permanent || j.s.lock().queue.contains(&id)))
            .collect();
        if jobs.is_empty() {
            return;
        }
        let entry = if change == RepoChange::Removed { None } else { self.env.entry(&id).ok().flatten() };
        let now = self.env.now();
        for job in jobs {
            self.with(&job, |cx| {
                let filter = &cx.job.def.filter;
                let Some(entry) = entry.as_ref().filter(|e| e.state != ReplicaState::Removed) else {
                    if let Removal::Running(_) = cx.s.queue.remove(&id) {
                        cx.feed(id, TaskEvent::Cancel { reason: "replica deleted".into() });
                    }
                    return;
                };
                let matches = filter.accepts(&candidate(entry), now);
                if cx.s.queue.contains(&id) {
                    if !matches && !cx.s.running.contains_key(&id) {
                        cx.s.queue.remove(&id);
                        tracing::debug!(job = %cx.job.id.lock(), %id, "file changed and no longer matches; dropped");
                    }
                    return;
                }
                if !cx.job.def.permanent || !matches {
                    return;
                }
                let newly = match change {
                    RepoChange::State { from } => {
                        let before = Entry { state: from, ..entry.clone() };
                        !filter.accepts(&candidate(&before), now)
                    }
                    // The filter can only have changed its mind if it looks at what changed.
                    RepoChange::Sticky => filter.sticky.is_some(),
                    RepoChange::AccessTime => filter.accessed.is_some(),
                    RepoChange::Removed | RepoChange::Other => false,
                };
                if newly {
                    cx.add(id, entry.attrs.size);
                }
            });
        }
    }

    /// The repository's change feed lost changes (the module fell behind): permanent jobs look
    /// at the whole repository again so that no new file is missed.
    pub fn changes_missed(self: &Arc<Self>) {
        let jobs: Vec<Arc<Job>> = self.jobs.lock().list.clone();
        for job in jobs.into_iter().filter(|j| j.def.permanent && !j.stop.is_cancelled()) {
            if job.rescanning.swap(true, Ordering::AcqRel) {
                job.rescan_again.store(true, Ordering::Release);
                continue;
            }
            let (m, j) = (self.clone(), job.clone());
            self.rt.spawn(async move {
                let env = m.env.clone();
                let job2 = j.clone();
                loop {
                    j.rescan_again.store(false, Ordering::Release);
                    let (env, job2) = (env.clone(), job2.clone());
                    if let Ok(Ok(files)) = tokio::task::spawn_blocking(move || scan(&*env, &job2)).await {
                        m.with(&j, |cx| {
                            for (id, size) in files {
                                cx.add(id, size);
                            }
                        });
                    }
                    if j.rescan_again.load(Ordering::Acquire) && !j.stop.is_cancelled() {
                        continue;
                    }
                    j.rescanning.store(false, Ordering::Release);
                    // A loss noted between the check above and the line before still gets its
                    // scan: take the scan back if nobody else did.
                    if !j.rescan_again.load(Ordering::Acquire) || j.rescanning.swap(true, Ordering::AcqRel) {
                        break;
                    }
                }
            });
        }
    }

    // ---------------------------------------------------------------- the job machinery

    /// Runs `f` on the job under its lock, then the scheduler, then starts the actions.
    fn with<T>(self: &Arc<Self>, job: &Arc<Job>, f: impl FnOnce(&mut Cx<'_, E>) -> T) -> T {
        let mut actions = Vec::new();
        let out = {
            let mut s = job.s.lock();
            let mut cx = Cx { m: self, job, s: &mut s, actions: &mut actions };
            let out = f(&mut cx);
            cx.schedule();
            cx.maybe_locate();
            out
        };
        for a in actions {
            self.perform(job, a);
        }
        out
    }

    fn start(self: &Arc<Self>, job: &Arc<Job>) {
        let started = self.with(job, |cx| {
            cx.set_state(JobState::Initializing);
            cx.s.started = Some(Instant::now());
            true
        });
        if !started {
            return;
        }
        // Refresh the targets now and then every refresh period, until the job ends.
        let (m, j) = (self.clone(), job.clone());
        self.rt.spawn(async move {
            loop {
                // One refresh at a time: a wake-up may have started one.
                let go = m.with(&j, |cx| !std::mem::replace(&mut cx.s.refreshing, true));
                if go {
                    m.refresh(&j).await;
                }
                tokio::select! {
                    _ = j.stop.cancelled() => return,
                    _ = tokio::time::sleep(j.refresh) => {}
                }
            }
        });
        // The initial scan, off the runtime: a pool of a million replicas keeps answering.
        let (m, j) = (self.clone(), job.clone());
        self.rt.spawn(async move {
            let env = m.env.clone();
            let job2 = j.clone();
            // The queue is built off the job's lock too: `info` and `migration ls` take it.
            let scanned = tokio::task::spawn_blocking(move || {
                scan(&*env, &job2).map(|files| {
                    let mut queue = Queue::with_capacity(files.len());
                    for (id, size) in &files {
                        queue.add(*id, *size);
                    }
                    (files, queue)
                })
            })
            .await;
            let scanned = match scanned {
                Ok(r) => r,
                Err(e) => Err(RemoteError::new(ErrorCode::Internal, format!("scan failed: {e}"))),
            };
            m.with(&j, |cx| match scanned {
                Ok((files, queue)) => {
                    if cx.s.state != JobState::Initializing {
                        return;
                    }
                    let n = files.len();
                    if cx.s.queue.is_empty() && cx.s.queue.stats().total == 0 {
                        cx.s.queue = queue;
                    } else {
                        // A permanent job may have queued changes during the scan.
                        for (id, size) in files {
                            cx.s.queue.add(id, size);
                        }
                    }
                    tracing::info!(job = %cx.job.id.lock(), files = n, "job initialised");
                    cx.set_state(JobState::Running);
                }
                Err(e) => {
                    cx.note(None, None, format!("Failed to scan the repository: {}", e.message));
                    if cx.s.state == JobState::Initializing {
                        cx.set_state(JobState::Failed);
                    }
                }
            });
        });
    }

    async fn refresh(self: &Arc<Self>, job: &Arc<Job>) {
        let mut set = tokio::task::JoinSet::new();
        let id = job.id.lock().clone();
        for (i, pool) in job.targets.iter().enumerate() {
            let m = self.clone();
            let pool = pool.clone();
            // Naming the job keeps the copies it delivered held on the target (a move).
            let req = MigrationRequest::PoolInfo { job: Some(id.clone()) };
            set.spawn(async move {
                let cost = match m.env.request(&pool, req).await {
                    Ok(MigrationReply::PoolInfo(c)) => Some(c),
                    _ => None,
                };
                (i, TargetInfo { name: pool, cost, misses: 0, offline_since: None, eligible: true })
            });
        }
        let mut infos: Vec<(usize, TargetInfo)> = set.join_all().await;
        infos.sort_by_key(|(i, _)| *i);
        let now = tokio::time::Instant::now();
        let source = self.env.cost();
        self.with(job, |cx| {
            cx.s.refreshing = false;
            let before = cx.s.infos.take().unwrap_or_default();
            let infos = infos
                .into_iter()
                .map(|(_, mut t)| {
                    let old = before.iter().find(|o| o.name == t.name);
                    if t.cost.is_none()
                        && let Some(old) = old
                    {
                        t.misses = old.misses + 1;
                        if t.misses < 2 {
                            t.cost = old.cost;
                        }
                    }
                    if t.cost.is_none() {
                        t.offline_since = Some(old.and_then(|o| o.offline_since).unwrap_or(now));
                    }
                    t
                })
                .collect::<Vec<TargetInfo>>();
            let mut infos = infos;
            for t in infos.iter_mut() {
                if let Some(cost) = t.cost {
                    t.eligible = cx.eligible(&source, &t.name, &cost);
                }
            }
            cx.s.infos = Some(infos);
            if cx.s.state == JobState::Sleeping && online(cx.s).next().is_some() {
                // The targets are known now: no need to wait for the next look.
                cx.set_state(JobState::Running);
            }
        });
    }

    fn perform(self: &Arc<Self>, job: &Arc<Job>, action: Action) {
        let (m, j) = (self.clone(), job.clone());
        match action {
            Action::Copy { to, pnfsid, attempt, req } => {
                self.rt.spawn(async move {
                    let event = match m.env.request(&to, MigrationRequest::Copy(*req)).await {
                        Ok(MigrationReply::Accepted) => TaskEvent::CopyAccepted { attempt },
                        Ok(MigrationReply::Error(error)) => TaskEvent::CopyRefused { attempt, error },
                        Ok(other) => TaskEvent::CopyRefused { attempt, error: unexpected(&other) },
                        Err(how) => TaskEvent::CopyUnanswered { attempt, how },
                    };
                    m.with(&j, |cx| cx.feed(pnfsid, event));
                });
            }
            Action::Ping { to, pnfsid, attempt } => {
                self.rt.spawn(async move {
                    let event = match m.env.request(&to, MigrationRequest::Ping { attempt }).await {
                        Ok(MigrationReply::Alive(alive)) => TaskEvent::PingAnswered { attempt, alive },
                        Ok(_) => TaskEvent::PingAnswered { attempt, alive: false },
                        Err(_) => TaskEvent::PingUnanswered { attempt },
                    };
                    m.with(&j, |cx| cx.feed(pnfsid, event));
                });
            }
            Action::Cancel { to, attempt, reason } => {
                self.rt.spawn(async move {
                    let _ = m.env.request(&to, MigrationRequest::Cancel { attempt, reason }).await;
                });
            }
            Action::Timer { pnfsid, attempt, seq, after } => {
                self.rt.spawn(async move {
                    tokio::select! {
                        _ = j.stop.cancelled() => {}
                        _ = tokio::time::sleep(after) => m.with(&j, |cx| {
                            if cx.s.running.get(&pnfsid).is_some_and(|r| r.timer_seq == seq) {
                                cx.feed(pnfsid, TaskEvent::Timer { attempt });
                            }
                        }),
                    }
                });
            }
            Action::Wake { seq, after } => {
                self.rt.spawn(async move {
                    tokio::select! {
                        _ = j.stop.cancelled() => {}
                        _ = tokio::time::sleep(after) => {
                            let refresh = m.with(&j, |cx| {
                                if cx.s.wake_seq != seq {
                                    return false;
                                }
                                cx.s.wake_at = None;
                                if cx.s.state == JobState::Sleeping {
                                    cx.set_state(JobState::Running);
                                }
                                if cx.s.state == JobState::Paused {
                                    cx.pause_check();
                                }
                                let none_online = online(cx.s).next().is_none();
                                let go = none_online && !cx.s.refreshing;
                                if go {
                                    cx.s.refreshing = true;
                                }
                                go
                            });
                            if refresh {
                                m.refresh(&j).await;
                            }
                        }
                    }
                });
            }
            Action::Locate { ids, pools } => {
                self.rt.spawn(async move { m.locate(&j, ids, pools).await });
            }
            Action::SourceMode { pnfsid, confirmed, moved_pins, snapshot } => {
                self.rt.spawn(async move {
                    let env = m.env.clone();
                    let j2 = j.clone();
                    let applied = tokio::task::spawn_blocking(move || {
                        apply_source_mode(&*env, &j2, &pnfsid, confirmed, &moved_pins, &snapshot)
                    })
                    .await
                    .unwrap_or_else(|e| Err(RemoteError::new(ErrorCode::Internal, format!("{e}"))));
                    m.with(&j, |cx| cx.source_mode_applied(pnfsid, applied));
                });
            }
        }
    }

    /// Asks every online target which of `ids` it holds: one request per pool.
    async fn locate(self: &Arc<Self>, job: &Arc<Job>, ids: Vec<PnfsId>, pools: Vec<PoolName>) {
        let mut set = tokio::task::JoinSet::new();
        for pool in pools.iter().cloned() {
            let m = self.clone();
            let req = MigrationRequest::Locate { pnfsids: ids.clone() };
            set.spawn(async move {
                let answer = match m.env.request(&pool, req).await {
                    Ok(MigrationReply::Located { held }) => {
                        Some(held.into_iter().map(|h| (h.pnfsid, h)).collect::<HashMap<_, _>>())
                    }
                    _ => None,
                };
                (pool, answer)
            });
        }
        type Answer = Option<HashMap<PnfsId, Held>>;
        let answers: HashMap<PoolName, Answer> = set.join_all().await.into_iter().collect();
        let eager = job.def.eager;
        let grace = self.settings.offline_grace;
        self.with(job, |cx| {
            cx.s.locating = false;
            let stale = std::mem::take(&mut cx.s.stale);
            let recently_offline: Vec<PoolName> =
                cx.s.infos
                    .iter()
                    .flatten()
                    .filter(|t| t.cost.is_none() && t.offline_since.is_some_and(|since| since.elapsed() < grace))
                    .map(|t| t.name.clone())
                    .collect();
            for id in ids.iter().filter(|id| !stale.contains(*id)) {
                let mut holders: Vec<Holder> = pools
                    .iter()
                    .filter_map(|p| {
                        let replica = answers.get(p)?.as_ref()?.get(id)?.clone();
                        Some(Holder { pool: p.clone(), replica: Some(replica) })
                    })
                    .collect();
                let unknown = |pool: &PoolName| Holder { pool: pool.clone(), replica: None };
                if !eager {
                    // A pool that did not answer, or went offline only recently (a restart),
                    // may hold the file: a non-eager job asks it (and fails the file for a
                    // later retry if it still does not answer) rather than make a copy that
                    // may be one too many.
                    holders.extend(pools.iter().filter(|p| matches!(answers.get(*p), Some(None))).map(unknown));
                    holders.extend(recently_offline.iter().map(unknown));
                }
                cx.s.located.insert(*id, (tokio::time::Instant::now(), holders));
            }
            for id in ids.into_iter().filter(|id| !stale.contains(id)) {
                if cx.s.want_locate.remove(&id)
                    && cx.s.running.get(&id).is_some_and(|r| r.task.state() == TaskState::GettingLocations)
                {
                    let holders = cx.s.located.remove(&id).map(|(_, h)| h).unwrap_or_default();
                    let event = cx.located(&id, holders);
                    cx.feed(id, event);
                }
            }
        });
    }
}

/// The context of one locked visit to a job.
struct Cx<'a, E: Env> {
    m: &'a Arc<Module<E>>,
    job: &'a Arc<Job>,
    s: &'a mut JobInner,
    actions: &'a mut Vec<Action>,
}

impl<E: Env> Cx<'_, E> {
    fn set_state(&mut self, to: JobState) {
        let from = self.s.state;
        if let Err(e) = transition(&mut self.s.state, to) {
            tracing::error!(job = %self.job.id.lock(), "{e}");
            return;
        }
        tracing::debug!(job = %self.job.id.lock(), "job {from} -> {to}");
        if to.is_terminal() {
            // Whatever file lock the job still holds goes (none should be left).
            self.m.locks.lock().retain(|_, j| !Arc::ptr_eq(j, self.job));
            self.s.queue.clear();
            self.s.located.clear();
            self.s.want_locate.clear();
            self.job.stop.cancel();
            self.job.halt.cancel();
            tracing::info!(job = %self.job.id.lock(), state = %to, "job ended");
        }
    }

    fn note(&mut self, task: Option<TaskId>, pnfsid: Option<PnfsId>, message: String) {
        if self.s.notes.len() == NOTES {
            self.s.notes.pop_front();
        }
        self.s.notes.push_back(NoteLine {
            at: self.m.env.now(),
            task: task.map(|t| t.0).unwrap_or(0),
            pnfsid: pnfsid.map(|p| p.to_string()),
            message,
        });
    }

    /// The scheduler (reference §3.5), with failed files waiting out their backoff.
    fn schedule(&mut self) {
        let state = self.s.state;
        if state == JobState::Cancelling {
            if self.s.running.is_empty() {
                self.set_state(JobState::Cancelled);
            }
            return;
        }
        if matches!(state, JobState::New | JobState::Initializing) || state.is_terminal() {
            return;
        }
        if !self.job.def.permanent && self.s.queue.is_empty() && self.s.running.is_empty() {
            self.set_state(JobState::Finished);
            return;
        }
        if state == JobState::Stopping && self.s.running.is_empty() {
            self.set_state(JobState::Finished);
            return;
        }
        if state != JobState::Running {
            return;
        }
        let now = self.m.env.now();
        self.s.queue.wake(now);
        // The lifetime conditions come before the targets: `-stop-when='targets == 0'` must
        // stop a job that has no usable target left.
        if self.s.infos.is_some() && self.s.queue.queued_count() > 0 && self.lifetime_conditions() {
            return;
        }
        let wait = self.job.def.deficit == DeficitMode::Wait;
        if self.s.infos.is_none() || (wait && online(self.s).next().is_none()) {
            // Targets not known yet, or none online: look again later.
            self.sleep(now);
            return;
        }
        let free = self.s.concurrency.saturating_sub(self.s.running.len());
        if free > 0 {
            let mut picked = Vec::new();
            let mut busy = Vec::new();
            {
                // The file lock is claimed here, in the same critical section that finds it free,
                // so two jobs never both start a task on one file.
                let mut locks = self.m.locks.lock();
                for id in self.s.queue.queued() {
                    if picked.len() == free {
                        break;
                    }
                    match locks.entry(*id) {
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(self.job.clone());
                            picked.push(*id);
                        }
                        std::collections::hash_map::Entry::Occupied(o) if Arc::ptr_eq(o.get(), self.job) => {
                            picked.push(*id)
                        }
                        std::collections::hash_map::Entry::Occupied(_) => busy.push(*id),
                    }
                }
            }
            for id in busy {
                if self.s.locked_noted.insert(id) {
                    self.note(None, Some(id), "File is locked".into());
                }
            }
            let mut picked = picked.into_iter();
            for id in picked.by_ref() {
                self.start_task(id, now);
                if self.s.state != JobState::Running {
                    break;
                }
            }
            // Locks claimed for files that did not start go back.
            for id in picked {
                self.unlock(&id);
            }
            if self.s.state != JobState::Running {
                return;
            }
        }
        if self.s.running.is_empty() {
            if !self.job.def.permanent && self.s.queue.is_empty() {
                self.set_state(JobState::Finished);
            } else {
                self.sleep(now);
            }
        } else if let Some(at) = self.s.queue.next_retry() {
            self.wake_at(at, now);
        }
    }

    /// `-stop-when` and `-pause-when` (reference §3.5 step 5, §3.8); true if one of them held
    /// and the job stopped or paused.
    fn lifetime_conditions(&mut self) -> bool {
        if let Some(stop) = self.job.def.stop_when.clone()
            && self.condition(&stop, "-stop-when")
        {
            self.stop();
            return true;
        }
        if let Some(pause) = self.job.def.pause_when.clone()
            && self.condition(&pause, "-pause-when")
        {
            self.set_state(JobState::Paused);
            self.arm_pause_check();
            return true;
        }
        false
    }

    /// A PAUSED job looks again every 10 s for as long as the condition holds (dCache looked
    /// once, §10 item 28); the stop condition is looked at first.
    fn pause_check(&mut self) {
        if let Some(stop) = self.job.def.stop_when.clone()
            && self.condition(&stop, "-stop-when")
        {
            self.stop();
            return;
        }
        match self.job.def.pause_when.clone() {
            Some(pause) if self.condition(&pause, "-pause-when") => self.arm_pause_check(),
            _ => self.set_state(JobState::Running),
        }
    }

    fn arm_pause_check(&mut self) {
        let now = self.m.env.now();
        self.s.wake_at = None;
        self.wake_at(now + self.m.settings.sleep.as_millis() as i64, now);
    }

    /// Stops the job: no new task; FINISHED once the running ones end.
    fn stop(&mut self) {
        tracing::info!(job = %self.job.id.lock(), "stop condition holds; the job stops");
        if self.s.running.is_empty() {
            self.set_state(JobState::Finished);
        } else {
            self.set_state(JobState::Stopping);
        }
    }

    /// Evaluates a lifetime condition; an error is noted and counts as false.
    fn condition(&mut self, e: &Expr, option: &str) -> bool {
        let source = self.m.env.cost();
        let name = self.m.env.name().clone();
        let files = (self.s.queue.queued_count() + self.s.queue.waiting()) as f64;
        let bytes = self.s.queue.bytes_left() as f64;
        let targets = online(self.s).count() as f64;
        let now = chrono::Local::now();
        let values = |sym: &str| -> Option<Value> {
            match sym {
                "queue.files" => Some(Value::Number(files)),
                "queue.bytes" => Some(Value::Number(bytes)),
                "targets" => Some(Value::Number(targets)),
                _ => sym
                    .strip_prefix("source.")
                    .and_then(|field| pool_value(&name, &source, field))
                    .or_else(|| expr::time_value(sym, &now)),
            }
        };
        match e.eval_bool(&values) {
            Ok(b) => b,
            Err(err) => {
                self.note(None, None, format!("{option} could not be evaluated ({}); taken as false", err.message));
                false
            }
        }
    }

    /// Counts a new copy against the target's figures at once, until the next refresh replaces
    /// them: the job neither piles copies onto a pool that looked emptiest at the last refresh
    /// nor keeps sending to a pool its `-include-when` no longer admits (a rebalance would
    /// overfill the pools below the level).
    fn reserve(&mut self, target: &PoolName, size: u64) {
        let Some(info) = self.s.infos.iter_mut().flatten().find(|t| t.name == *target) else { return };
        let Some(mut cost) = info.cost else { return };
        cost.space.used = cost.space.used.saturating_add(size);
        cost.space.free = cost.space.free.saturating_sub(size);
        info.cost = Some(cost);
        let source = self.m.env.cost();
        let eligible = self.eligible(&source, target, &cost);
        if let Some(info) = self.s.infos.iter_mut().flatten().find(|t| t.name == *target) {
            info.eligible = eligible;
        }
    }

    /// Whether a target passes `-include-when` (unless `-include` was given) and
    /// `-exclude-when` (reference §7.4); one that cannot be evaluated is left out, with a note.
    fn eligible(&mut self, source: &PoolCost, target: &PoolName, cost: &PoolCost) -> bool {
        let def = &self.job.def;
        if def.include_when.is_none() && def.exclude_when.is_none() {
            return true;
        }
        let source_name = self.m.env.name().clone();
        let now = chrono::Local::now();
        let verdict = targets::passes(
            def.include_when.as_ref(),
            def.exclude_when.as_ref(),
            !def.include.is_empty(),
            (&source_name, source),
            (target, cost),
            &now,
        );
        verdict.unwrap_or_else(|e| {
            self.note(None, None, format!("the target filter failed for {target} ({}); it is left out", e.message));
            false
        })
    }

    fn sleep(&mut self, now: EpochMillis) {
        if self.s.state == JobState::Running {
            self.set_state(JobState::Sleeping);
        }
        if self.job.def.permanent && self.s.queue.is_empty() {
            // An idle permanent job waits for the next change of the repository, not a timer.
            return;
        }
        let mut at = now + self.m.settings.sleep.as_millis() as i64;
        if let Some(retry) = self.s.queue.next_retry() {
            at = at.min(retry);
        }
        self.wake_at(at, now);
    }

    /// Arms the job's wake-up for `at` unless one is due sooner.
    fn wake_at(&mut self, at: EpochMillis, now: EpochMillis) {
        if self.s.wake_at.is_some_and(|w| w <= at) {
            return;
        }
        self.s.wake_seq += 1;
        self.s.wake_at = Some(at);
        let after = Duration::from_millis(at.saturating_sub(now).max(0) as u64);
        self.actions.push(Action::Wake { seq: self.s.wake_seq, after });
    }

    /// Starts a task for a queued file whose lock the job holds (claimed in `schedule`).
    fn start_task(&mut self, id: PnfsId, now: EpochMillis) {
        self.s.locked_noted.remove(&id);
        let task_id = TaskId(self.m.next_task.fetch_add(1, Ordering::Relaxed));
        self.s.queue.start(id, task_id);
        let entry = match self.m.env.entry(&id) {
            Ok(Some(e)) if e.state.is_committed() => e,
            Ok(_) => {
                // Gone (or going) since the scan: nothing to do.
                self.s.queue.cancelled(&id);
                self.unlock(&id);
                return;
            }
            Err(e) => {
                self.note(Some(task_id), Some(id), format!("Failed to read the replica: {}", e.message));
                self.s.queue.failed(&id, false, e, now, &self.m.settings.backoff);
                self.unlock(&id);
                return;
            }
        };
        let def = &self.job.def;
        let prefix = self.m.env.pin_prefix();
        let state = match def.tmode.state {
            TargetState::Same => entry.state,
            TargetState::Cached => ReplicaState::Cached,
            TargetState::Precious => ReplicaState::Precious,
        };
        let mut sticky: Vec<StickyRecord> = if def.tmode.state == TargetState::Same {
            entry.sticky.iter().filter(|r| !r.is_pin(prefix) && r.is_valid(now)).cloned().collect()
        } else {
            Vec::new()
        };
        sticky.extend(self.job.tmode.iter().cloned());
        let pins: Vec<StickyRecord> = if def.pins == Pins::Move {
            entry.sticky.iter().filter(|r| r.is_pin(prefix) && r.is_valid(now)).cloned().collect()
        } else {
            Vec::new()
        };
        let plan = TaskPlan {
            replicas: def.replicas,
            eager: def.eager,
            meta_only: def.meta_only,
            pins: !pins.is_empty(),
            wait_for_targets: def.deficit == DeficitMode::Wait,
            timers: self.m.settings.timers.clone(),
        };
        let base = self.m.epoch | ((task_id.0 & 0xfff_ffff) << 12);
        let task = Task::new(plan, base);
        self.s
            .running
            .insert(id, Running { id: task_id, task, entry, state, sticky, pins, timer_seq: 0, finishing: false });
        self.feed(id, TaskEvent::Start);
    }

    /// Adds a file to the queue (reference §3.6); wakes a sleeping job.
    fn add(&mut self, id: PnfsId, size: u64) {
        if self.s.state.is_terminal() || self.s.state == JobState::Cancelling {
            return;
        }
        if self.s.queue.add(id, size) && self.s.state == JobState::Sleeping {
            self.set_state(JobState::Running);
        }
    }

    /// What the holders' answers mean for a task: `AlreadyDone` when enough of them hold the
    /// file exactly as wanted and nothing else has to happen on a target (no pins to move, no
    /// checksum to verify, a source mode that destroys nothing), else `Located`.
    fn located(&self, id: &PnfsId, holders: Vec<Holder>) -> TaskEvent {
        let def = &self.job.def;
        // Only for source modes that keep the source as protected as it is (`same`,
        // `precious`): the answer may be a little old, and nothing is confirmed anew.
        let shortcut = !def.verify
            && matches!(def.smode.state, SourceState::Same | SourceState::Precious)
            && self.s.running.get(id).is_some_and(|r| r.pins.is_empty());
        if shortcut && let Some(r) = self.s.running.get(id) {
            let now = self.m.env.now();
            let sum = r.entry.attrs.checksum;
            let settled: Vec<PoolName> = holders
                .iter()
                .filter(|h| {
                    h.replica.as_ref().is_some_and(|held| {
                        let same_data = match (held.checksum, sum) {
                            (Some(a), Some(b)) => a == b,
                            _ => true,
                        };
                        same_data
                            && plan_update(held.state, &held.sticky, r.state, &r.sticky, now)
                                .is_ok_and(|p| p.is_empty())
                    })
                })
                .map(|h| h.pool.clone())
                .take(def.replicas)
                .collect();
            if settled.len() >= def.replicas {
                return TaskEvent::AlreadyDone { replicas: settled };
            }
        }
        TaskEvent::Located { holders: holders.into_iter().map(|h| h.pool).collect() }
    }

    fn unlock(&mut self, id: &PnfsId) {
        let mut locks = self.m.locks.lock();
        if locks.get(id).is_some_and(|j| Arc::ptr_eq(j, self.job)) {
            locks.remove(id);
        }
    }

    /// Feeds an event to a file's task and carries out what it asks.
    fn feed(&mut self, id: PnfsId, event: TaskEvent) {
        let mut work = VecDeque::from([event]);
        while let Some(event) = work.pop_front() {
            let Some(r) = self.s.running.get_mut(&id) else { return };
            let size = r.entry.attrs.size;
            let infos: Vec<PoolInfo> = online(self.s)
                .filter(|t| t.cost.is_some_and(|c| c.accepts))
                .map(|t| {
                    let c = t.cost.expect("online pools have a cost");
                    PoolInfo { name: t.name.clone(), space: c.space, load: c.load }
                })
                .collect();
            let strategy = self.job.def.select;
            let r = self.s.running.get_mut(&id).expect("looked up above");
            let rng = &mut self.s.rng;
            let rng = std::cell::RefCell::new(rng);
            let selector = |exclude: &BTreeSet<PoolName>| -> Result<PoolName, NoTarget> {
                let exclude: Vec<PoolName> = exclude.iter().cloned().collect();
                let mut rng = rng.borrow_mut();
                select::select(strategy, &infos, &exclude, size, &mut rng).map(|p| p.name.clone())
            };
            let effects = r.task.step(event, &selector);
            for fx in effects {
                self.effect(id, fx, &mut work);
            }
        }
    }

    fn effect(&mut self, id: PnfsId, fx: Effect, work: &mut VecDeque<TaskEvent>) {
        let Some(r) = self.s.running.get_mut(&id) else { return };
        match fx {
            Effect::Locate => {
                // An answer asked ahead of time is used only while it is fresh: holders evict.
                if let Some((_, holders)) = self.s.located.remove(&id).filter(|(at, _)| at.elapsed() < LOCATED_FRESH) {
                    let event = self.located(&id, holders);
                    work.push_back(event);
                } else {
                    self.s.want_locate.insert(id);
                }
            }
            Effect::Copy { target, attempt, existing, pins } => {
                let mut sticky = r.sticky.clone();
                if pins {
                    sticky.extend(r.pins.iter().cloned());
                }
                let def = &self.job.def;
                let req = CopyRequest {
                    attempt,
                    job: self.job.id.lock().clone(),
                    task: r.id,
                    attributes: r.entry.attrs.clone(),
                    state: r.state,
                    sticky,
                    verify: def.verify,
                    atime: def.atime.then_some(r.entry.attrs.access_time),
                    force_source_mode: def.force_source_mode,
                    // A holder is asked to update its replica, never to make a new one: if it
                    // no longer has the file (or only may have had it), it says so and the task
                    // decides where a new copy goes.
                    meta_only: def.meta_only || existing,
                    releases_source: matches!(
                        def.smode.state,
                        SourceState::Cached | SourceState::Removable | SourceState::Delete
                    ),
                };
                let size = r.entry.attrs.size;
                if !existing {
                    self.reserve(&target, size);
                }
                self.actions.push(Action::Copy { to: target, pnfsid: id, attempt, req: Box::new(req) });
            }
            Effect::Ping { target, attempt } => self.actions.push(Action::Ping { to: target, pnfsid: id, attempt }),
            Effect::Cancel { target, attempt, reason } => {
                self.actions.push(Action::Cancel { to: target, attempt, reason })
            }
            Effect::Timer { attempt, after } => {
                r.timer_seq += 1;
                let seq = r.timer_seq;
                self.actions.push(Action::Timer { pnfsid: id, attempt, seq, after });
            }
            Effect::Finish(outcome) => self.task_ended(id, outcome),
        }
    }

    fn task_ended(&mut self, id: PnfsId, outcome: Outcome) {
        let now = self.m.env.now();
        let Some(r) = self.s.running.get_mut(&id) else { return };
        let task = r.id;
        self.s.want_locate.remove(&id);
        // The file's own attempts may have changed where it is.
        self.s.located.remove(&id);
        if self.s.locating {
            self.s.stale.insert(id);
        }
        match outcome {
            Outcome::Done { replicas } => {
                // The source mode comes first (§3.7); the file counts as done after it.
                r.finishing = true;
                if replicas.len() < self.job.def.replicas {
                    // -target-deficit-mode=limit: the copies there could be were made; the source
                    // mode is not applied at all (it could make the replica evictable or delete
                    // it), and the file is listed with the failures, not counted as completed.
                    let (n, wanted) = (replicas.len(), self.job.def.replicas);
                    let msg = format!(
                        "File replicas truncated at {n} due to pool availability ({wanted} requested); \
                         the source replica was left as it is"
                    );
                    self.note(Some(task), Some(id), msg.clone());
                    self.s.running.remove(&id);
                    self.unlock(&id);
                    let error = RemoteError::new(ErrorCode::NoTargets, msg);
                    self.s.queue.failed(&id, true, error, now, &self.m.settings.backoff);
                    return;
                }
                let moved_pins = if r.task.pins_moved() { r.pins.clone() } else { Vec::new() };
                let snapshot = Snapshot::of(r.entry.state, &r.entry.sticky, self.m.env.pin_prefix());
                tracing::debug!(job = %self.job.id.lock(), %task, pnfsid = %id, replicas = ?replicas, "task done");
                self.actions.push(Action::SourceMode { pnfsid: id, confirmed: replicas.len(), moved_pins, snapshot });
            }
            Outcome::Failed { permanent, error } => {
                self.s.running.remove(&id);
                self.unlock(&id);
                let what = if permanent { "failed for good" } else { "failed; retried later" };
                tracing::warn!(job = %self.job.id.lock(), %task, pnfsid = %id, "file {what}: {}", error.message);
                self.note(Some(task), Some(id), error.message.clone());
                self.s.queue.failed(&id, permanent, error, now, &self.m.settings.backoff);
            }
            Outcome::Cancelled => {
                self.s.running.remove(&id);
                self.unlock(&id);
                self.s.queue.cancelled(&id);
            }
        }
    }

    fn source_mode_applied(&mut self, id: PnfsId, applied: Result<Applied, RemoteError>) {
        let Some(r) = self.s.running.remove(&id) else { return };
        self.unlock(&id);
        match applied {
            Ok(Applied::Changed) => {
                // An operator changed the source (state or sticky records) while it moved: its
                // copies were made from what it was before. The file goes round again, so the
                // copies are brought up to date before the source mode is applied.
                let msg = "Source replica changed while it was copied (state or sticky records); \
                           its copies are updated before the source mode is applied";
                tracing::info!(job = %self.job.id.lock(), task = %r.id, pnfsid = %id, "{msg}");
                self.note(Some(r.id), Some(id), msg.into());
                self.s.queue.requeue(&id);
            }
            Ok(Applied::Done) => {
                self.s.queue.completed(&id);
                let size = r.entry.attrs.size;
                let now = Instant::now();
                self.s.recent.push_back((now, size));
                while self.s.recent.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
                    self.s.recent.pop_front();
                }
            }
            Err(e) => {
                let error =
                    RemoteError { code: e.code, message: format!("Failed to apply the source mode: {}", e.message) };
                self.note(Some(r.id), Some(id), error.message.clone());
                let now = self.m.env.now();
                self.s.queue.failed(&id, false, error, now, &self.m.settings.backoff);
            }
        }
    }

    /// Sends one location question per target for the tasks waiting on one, and for the
    /// next files of the queue, so a job asks each target about many files at once.
    fn maybe_locate(&mut self) {
        if self.s.locating || self.s.want_locate.is_empty() || self.s.state.is_terminal() {
            return;
        }
        let pools: Vec<PoolName> = online(self.s).map(|t| t.name.clone()).collect();
        if pools.is_empty() {
            // Nobody to ask: no holders (selection then finds no target either).
            let ids: Vec<PnfsId> = std::mem::take(&mut self.s.want_locate).into_iter().collect();
            for id in ids {
                self.feed(id, TaskEvent::Located { holders: Vec::new() });
            }
            return;
        }
        let batch = self.m.settings.locate_batch.clamp(1, MAX_LOCATE);
        if self.s.located.len() > 2 * batch {
            self.s.located.retain(|_, (at, _)| at.elapsed() < LOCATED_FRESH);
        }
        // Never more than a target answers (a job of huge concurrency asks in several rounds).
        let mut ids: Vec<PnfsId> = self.s.want_locate.iter().copied().take(MAX_LOCATE).collect();
        for id in self.s.queue.queued() {
            if ids.len() >= batch {
                break;
            }
            if !self.s.located.contains_key(id) && !self.s.want_locate.contains(id) {
                ids.push(*id);
            }
        }
        self.s.locating = true;
        self.actions.push(Action::Locate { ids, pools });
    }
}

/// The targets online at the last refresh.
fn online(s: &JobInner) -> impl Iterator<Item = &TargetInfo> {
    s.infos.iter().flatten().filter(|t| t.cost.is_some() && t.eligible)
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
fn scan<E: Env>(env: &E, job: &Job) -> Result<Vec<(PnfsId, u64)>, RemoteError> {
    let now = env.now();
    let mut found: Vec<(PnfsId, u64, EpochMillis)> = Vec::new();
    env.scan(&mut |e: Entry| {
        if job.halt.is_cancelled() {
            return ControlFlow::Break(());
        }
        if job.def.filter.accepts(&candidate(&e), now) {
            found.push((e.attrs.pnfsid, e.attrs.size, e.attrs.access_time));
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
