//! A simulated cluster for the migration module: several pools, each with the real
//! repository over an in-memory store (real bytes, real checksums), a pool mode, a capacity and its own
//! [`Module<SimEnv>`]; a seeded network between them that delays, reorders, duplicates and
//! drops messages and can take pools offline; and a checker that asserts, after every change
//! to any repository, that no protected file was lost and that no incomplete replica is
//! visible as CACHED or PRECIOUS.
//!
//! Everything runs on a current-thread tokio runtime with paused time, so the module's timers
//! (pings, sleeps, backoff) pass instantly; tests wait on states, never on real time.
//!
//! Reproducibility: every fault decision is drawn from a generator seeded with the run's seed
//! and the message or call itself (sender, receiver, content, and how often that same message
//! was sent before), so it does not depend on how unrelated messages interleave. The module's
//! own blocking work (`spawn_blocking`) and the repository's commit thread still run on real
//! threads, so a rerun with the same seed follows the same faults but not always the same
//! interleaving: the replicas and the job's report come out the same, the target a file lands
//! on not always (`the_same_seed_gives_the_same_run`).
//!
//! The rules are the pool's: a job is read by the module's grammar
//! (`tidepool_migration::grammar::parse_words`), and the safety decisions on a replica (pin
//! coverage, removal of a moved source, what a target is asked for and does to a replica it
//! holds) are the functions of `tidepool_migration::safety` and `update` that the pool's
//! `PoolEnv` calls. The repository is the real one: each pool keeps its replicas in a
//! `tidepool_repository::Repository` over a `MemStore`, called as `PoolEnv` calls it, so records,
//! states, sticky records and pins, checksums, space, holds and eviction are the repository's.
//! Every call that writes runs under the simulator's store lock, and the checker looks after it.
//!
//! Faults are drawn per call from the seed (under that lock, so none meets another call) and
//! set as the store's fault switches for that one call: a metadata change whose record write
//! fails (nothing changed) or whose flush fails after the change was made (`Fault::PutRecord`
//! and `DeleteRecord`, or `Flush`); a pull's commit whose sync fails (`SyncData`: nothing kept)
//! or whose flush and undo flushes fail (`Flush` four times: the record stays hidden, a ghost,
//! until a later commit or the restart deletes it; [`Sim::stuck`]); bit rot planted in a stored
//! data file (`MemStore::damage_data`). A crash cuts the pool's store to its durable view
//! (`MemStore::power_cut`), so holds written but not flushed are lost, and the repository's
//! restart recovery opens it.
//!
//! Still modelled here, because the repository has no part in them: the network and the
//! transfers (a pull is a timed sleep, then the source's bytes are written into the target's
//! `Incoming` and committed; the wire and `transfer::pull` are the pool's), pool modes, the
//! change announcements the module hears (sent by the simulator after each call, as the pool
//! forwards the repository's), and the checker, which trusts the repository's checksum of what
//! a commit wrote instead of reading every data file after every change (the suite's time).
//!
//! Knobs: `SIM_SEED=<n>` runs only that seed; `SIM_SEEDS=<n>` runs seeds `1..=n` (to search
//! for a failure); `SIM_VERBOSE=1` prints every run's last events, counters and job reports
//! (a failing run always prints them).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::io::Read;
use std::ops::ControlFlow;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tidepool_migration::MigrationError;
use tidepool_migration::definition::JobKind;
use tidepool_migration::env::{
    Entry, Env, EnvError, HoldKind, HoldOwner, Pull, SavedHold, Snapshot, SourceRemoval, Unanswered, source_removal,
};
use tidepool_migration::grammar;
use tidepool_migration::job_state::JobState;
use tidepool_migration::module::{Module, RepoChange, Settings};
use tidepool_migration::queue::Backoff;
use tidepool_migration::safety::pin_clearable;
use tidepool_migration::select::SplitMix;
use tidepool_p2p::message::{CopyFinished, MigrationReply, MigrationRequest, PoolCost};
use tidepool_p2p::model::{
    AccessLatency, Checksum, ChecksumWriter, EpochMillis, FileAttributes, NEVER, PoolMode, ReplicaState,
    RetentionPolicy, StickyMode, StickyRecord,
};
use tidepool_p2p::{ErrorCode, PnfsId, PoolName, RemoteError};
use tidepool_repository::store::ReplicaStore;
use tidepool_repository::{
    Change, ChangeKind, CutMode, Fault, MemStore, Protection, RepoError, RepoResult, Repository,
};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The simulated clock starts here (2023-11-14), so time stamps look like real ones.
pub const EPOCH: EpochMillis = 1_700_000_000_000;
/// Owners starting with this are pins.
pub const PIN_PREFIX: &str = "PinManager";
/// How many trace lines a failing run prints.
const TRACE_LINES: usize = 400;

// ------------------------------------------------------------------------------ seeds

/// The seeds a scenario runs with: `SIM_SEED` alone if set, else `1..=count` (`SIM_SEEDS`
/// overrides the count, to search many seeds for a failure).
pub fn seeds(count: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("SIM_SEED") {
        return vec![s.trim().parse().expect("SIM_SEED must be a number")];
    }
    let count = match std::env::var("SIM_SEEDS") {
        Ok(s) => s.trim().parse().expect("SIM_SEEDS must be a number"),
        Err(_) => count,
    };
    (1..=count).collect()
}

/// Prints the seed of a run that panics.
struct SeedGuard<'a> {
    name: &'a str,
    seed: u64,
}

impl Drop for SeedGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n*** {} failed with seed {}; rerun it alone with:\n    SIM_SEED={} cargo test -p tidepool-migration --test {} {}\n",
                self.name,
                self.seed,
                self.seed,
                test_binary(),
                self.name
            );
        }
    }
}

/// The name of the running test binary (`simulated` for `target/debug/deps/simulated-<hash>`).
fn test_binary() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .and_then(|s| s.rsplit_once('-').map(|(name, _)| name.to_string()))
        .unwrap_or_else(|| "simulated".to_string())
}

/// Runs `scenario` once per seed, each on a fresh current-thread runtime with paused time (so
/// nothing of one run leaks into the next).
pub fn run<F, Fut>(name: &str, count: u64, scenario: F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    for seed in seeds(count) {
        let _guard = SeedGuard { name, seed };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a test runtime");
        rt.block_on(scenario(seed));
        rt.shutdown_timeout(Duration::from_secs(5));
    }
}

// ------------------------------------------------------------------------------ configuration

/// What the network and the transfers do wrong. Probabilities are per message (or per pull).
#[derive(Clone, Debug)]
pub struct Faults {
    /// Every request and every reply is delayed by up to this (so messages overtake each other).
    pub max_delay: Duration,
    /// A request is delivered twice; the first reply wins.
    pub duplicate: f64,
    /// A request is lost on the way: the sender learns `NotDelivered`.
    pub drop_request: f64,
    /// A reply is lost after the receiver acted: the sender learns `NoAnswer`.
    pub drop_reply: f64,
    /// A finished message is delivered once more, up to `late_delay` later.
    pub late_finished: f64,
    /// A copy request is delivered once more, up to `late_delay` later.
    pub late_copy: f64,
    pub late_delay: Duration,
    /// A pull breaks halfway (I/O error; the partial replica is removed).
    pub pull_failure: f64,
    /// A target's disk fails the sync or flush that would commit a pull (nothing is kept).
    pub disk_failure: f64,
    /// The disk also fails the removal of what such a pull left: an invisible receiving
    /// entry stays until the pool restarts.
    pub undo_failure: f64,
    /// A metadata change of the module's (a state, a sticky record, a removal, a checksum)
    /// fails its flush with an I/O error; on a coin the change reached the disk anyway, so the
    /// caller cannot tell whether it was made.
    pub meta_failure: f64,
}

impl Faults {
    pub fn none() -> Faults {
        Faults {
            max_delay: Duration::ZERO,
            duplicate: 0.0,
            drop_request: 0.0,
            drop_reply: 0.0,
            late_finished: 0.0,
            late_copy: 0.0,
            late_delay: Duration::ZERO,
            pull_failure: 0.0,
            disk_failure: 0.0,
            undo_failure: 0.0,
            meta_failure: 0.0,
        }
    }

    /// Random delays only: messages are reordered, none is lost.
    pub fn jitter() -> Faults {
        Faults { max_delay: Duration::from_millis(800), ..Faults::none() }
    }

    /// Delays, duplicates, lost requests and replies, late finished messages, broken pulls.
    pub fn chaos() -> Faults {
        Faults {
            max_delay: Duration::from_millis(800),
            duplicate: 0.15,
            drop_request: 0.05,
            drop_reply: 0.05,
            late_finished: 0.2,
            late_copy: 0.0,
            late_delay: Duration::from_secs(200),
            pull_failure: 0.05,
            ..Faults::none()
        }
    }
}

#[derive(Clone, Debug)]
pub struct PoolSpec {
    pub name: PoolName,
    pub capacity: u64,
    pub groups: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub pools: Vec<PoolSpec>,
    pub faults: Faults,
    pub settings: Settings,
    /// Time a request waits for its reply before it counts as `NoAnswer`.
    pub reply_timeout: Duration,
    /// Every pull takes this long, plus up to `pull_jitter`, plus its size over
    /// `bandwidth` bytes per second.
    pub pull_time: Duration,
    pub pull_jitter: Duration,
    pub bandwidth: u64,
    /// The membership publishes every pool's cost, as etcd does (docs/operator-guide.md,
    /// "Membership"): `Env::costs` answers from it, one read per refresh (`Stats::cost_reads`),
    /// instead of nothing (the cluster file: the job asks each target).
    pub publish_costs: bool,
}

/// The module settings the simulations use: short backoff and refresh so that a scenario
/// needs few simulated minutes.
pub fn settings() -> Settings {
    Settings {
        default_concurrency: 2,
        refresh: Duration::from_secs(60),
        backoff: Backoff { base: Duration::from_secs(10), cap: Duration::from_secs(120) },
        ..Settings::default()
    }
}

impl SimConfig {
    /// Pools `names` of 10 MB each, all in pool group `all`, with the given faults.
    pub fn new(names: &[&str], faults: Faults) -> SimConfig {
        SimConfig {
            pools: names
                .iter()
                .map(|n| PoolSpec { name: pool(n), capacity: 10_000_000, groups: vec!["all".into()] })
                .collect(),
            faults,
            settings: settings(),
            reply_timeout: Duration::from_secs(30),
            pull_time: Duration::from_secs(1),
            pull_jitter: Duration::from_secs(2),
            bandwidth: 1_000_000,
            publish_costs: false,
        }
    }
}

pub fn pool(name: &str) -> PoolName {
    name.parse().expect("a valid pool name")
}

// ------------------------------------------------------------------------------ the world

/// One replica in a simulated repository, as the test helpers show it.
#[derive(Clone, Debug)]
pub struct Replica {
    pub entry: Entry,
    /// Its data as stored (empty where the checker looked: it needs only length and sum).
    pub data: Arc<Vec<u8>>,
    /// The length and checksum of the data as stored.
    pub data_len: u64,
    pub data_sum: Checksum,
    /// Being received (a pull under way), never visible as a copy.
    pub receiving: bool,
    /// Planted by a test: its bytes differ from its checksum (bit rot).
    pub corrupt: bool,
}

impl Replica {
    pub fn state(&self) -> ReplicaState {
        self.entry.state
    }
    pub fn sticky(&self) -> &[StickyRecord] {
        &self.entry.sticky
    }
}

/// Counters of what happened, for assertions and failure reports.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub messages: BTreeMap<&'static str, u64>,
    pub dropped_requests: u64,
    /// Reads of the published costs (`Env::costs` with `SimConfig::publish_costs`), and the
    /// pools they covered.
    pub cost_reads: u64,
    pub cost_read_pools: u64,
    pub dropped_replies: u64,
    pub duplicated: u64,
    pub late: u64,
    pub not_delivered_offline: u64,
    pub pulls_started: u64,
    pub pulls_committed: u64,
    pub pulls_failed: u64,
    pub bytes_committed: u64,
    /// Metadata changes whose flush failed (`Faults::meta_failure`): not made, and made anyway.
    pub meta_failed: u64,
    pub meta_failed_made: u64,
    /// Pulls in progress now, and the most there ever were, per source pool.
    pub pulls_active: BTreeMap<PoolName, u64>,
    pub pulls_peak: BTreeMap<PoolName, u64>,
    /// When each pull of a file started, by file.
    pub pull_starts: BTreeMap<PnfsId, Vec<Duration>>,
}

/// One simulated pool's repository: the real [`Repository`] over a [`MemStore`], whose fault
/// switches the simulator sets for one call at a time (`World::mutate`, `World::pull_inner`).
struct PoolRepo {
    repo: Arc<Repository>,
    mem: Arc<MemStore>,
    /// The repository's change feed, read for the replicas its sweeper evicted.
    changes: broadcast::Receiver<Change>,
    /// The checker's last view of this repository (data left out), and the store's step
    /// count it was taken at: every change to a repository is a step of its store.
    seen: Option<(u64, Arc<BTreeMap<PnfsId, Replica>>)>,
}

impl PoolRepo {
    fn open(mem: Arc<MemStore>, capacity: u64, now: EpochMillis) -> PoolRepo {
        let (repo, _recovery) = Repository::open(mem.clone(), capacity, now).expect("open a simulated repository");
        let changes = repo.subscribe();
        PoolRepo { repo, mem, changes, seen: None }
    }

    /// The replicas the repository announced as evicted since the feed was last read.
    fn drain_evicted(&mut self, except: &PnfsId) -> Vec<PnfsId> {
        let mut evicted = Vec::new();
        loop {
            match self.changes.try_recv() {
                Ok(Change { pnfsid, kind: ChangeKind::State { to: ReplicaState::Removed, .. } })
                    if pnfsid != *except =>
                {
                    evicted.push(pnfsid)
                }
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return evicted,
            }
        }
    }

    /// Records the store holds that the repository does not know: those of failed commits
    /// whose undo could not delete them (hidden, deleted by a later batch or at restart).
    fn stuck(&self) -> Vec<PnfsId> {
        let mut stuck = Vec::new();
        let _ = self.mem.scan_records(&mut |key, _| {
            if let Ok(id) = PnfsId::from_bytes(key)
                && !self.repo.contains(&id)
            {
                stuck.push(id);
            }
            ControlFlow::Continue(())
        });
        stuck
    }
}

#[derive(Default)]
struct Store {
    repos: BTreeMap<PoolName, PoolRepo>,
    modes: BTreeMap<PoolName, PoolMode>,
    /// Files that must always have a committed replica somewhere: size and checksum.
    protected: BTreeMap<PnfsId, (u64, Checksum)>,
    /// The size and checksum of each data file as read from the store, by pool, replica and
    /// the replica's creation time (a data file never changes once published).
    sums: HashMap<(PoolName, PnfsId), (EpochMillis, u64, Checksum)>,
    /// Replicas whose bytes a test damaged (bit rot planted in the store).
    corrupt: BTreeSet<(PoolName, PnfsId)>,
    /// Replicas the sweeper evicted to make room, per pool.
    evicted: BTreeMap<PoolName, Vec<PnfsId>>,
    /// Changes an operator made and was told were done: some committed replica of the file
    /// must keep them (a PRECIOUS state, sticky records at least this long).
    acked: BTreeMap<PnfsId, Acked>,
    violations: Vec<String>,
}

/// What an operator was told was done to a file.
#[derive(Clone, Debug, Default)]
pub struct Acked {
    pub precious: bool,
    pub sticky: Vec<StickyRecord>,
}

impl Acked {
    fn kept_by(&self, r: &Replica) -> bool {
        (!self.precious || r.entry.state == ReplicaState::Precious)
            && self.sticky.iter().all(|want| {
                r.entry.sticky.iter().any(|s| {
                    s.owner == want.owner && (s.expire == NEVER || (want.expire != NEVER && s.expire >= want.expire))
                })
            })
    }
}

impl Store {
    fn repo(&self, pool: &PoolName) -> &Arc<Repository> {
        &self.repos.get(pool).expect("a known pool").repo
    }

    /// One pool's replicas as the repository has them: its records (what a listing shows)
    /// with their data as stored (read only `with_data`: the checker needs only the data's
    /// size and checksum, cached), and the entries being received (no data yet).
    fn view(&mut self, pool: &PoolName, with_data: bool) -> BTreeMap<PnfsId, Replica> {
        let PoolRepo { repo, mem, .. } = self.repos.get(pool).expect("a known pool");
        let mut records = Vec::new();
        // A dead store (a crashed pool's, until its restart) shows nothing.
        let _ = repo.scan(&mut |r| {
            records.push(r);
            ControlFlow::Continue(())
        });
        let read = |id: &PnfsId| {
            let mut data = Vec::new();
            if let Ok(mut read) = mem.open_data(id) {
                let _ = read.read_to_end(&mut data);
            }
            data
        };
        let mut view = BTreeMap::new();
        for r in records {
            let id = r.pnfsid();
            let key = (pool.clone(), id);
            let cached = self.sums.get(&key).filter(|(created, _, _)| *created == r.attrs.creation_time);
            let (data, size, sum) = match cached {
                Some((_, size, sum)) => (if with_data { read(&id) } else { Vec::new() }, *size, *sum),
                None => {
                    let data = read(&id);
                    let (size, sum) = (data.len() as u64, checksum(&data));
                    self.sums.insert(key.clone(), (r.attrs.creation_time, size, sum));
                    (if with_data { data } else { Vec::new() }, size, sum)
                }
            };
            let corrupt = self.corrupt.contains(&key);
            let entry = Entry { attrs: r.attrs, state: r.state, sticky: r.sticky };
            view.insert(
                id,
                Replica { entry, data: Arc::new(data), data_len: size, data_sum: sum, receiving: false, corrupt },
            );
        }
        for r in repo.incoming() {
            let entry = Entry { attrs: r.attrs, state: r.state, sticky: r.sticky };
            let replica = Replica {
                entry,
                data: Arc::new(Vec::new()),
                data_len: 0,
                data_sum: checksum(&[]),
                receiving: true,
                corrupt: false,
            };
            view.insert(replica.entry.attrs.pnfsid, replica);
        }
        view
    }

    /// Every pool's replicas without their data (for the checker), each view taken again
    /// only if its store changed since.
    fn views(&mut self) -> BTreeMap<PoolName, Arc<BTreeMap<PnfsId, Replica>>> {
        let pools: Vec<PoolName> = self.repos.keys().cloned().collect();
        let mut views = BTreeMap::new();
        for p in pools {
            let steps = self.repos[&p].mem.steps();
            let view = match &self.repos[&p].seen {
                Some((at, view)) if *at == steps => view.clone(),
                _ => {
                    let view = Arc::new(self.view(&p, false));
                    self.repos.get_mut(&p).expect("a known pool").seen = Some((steps, view.clone()));
                    view
                }
            };
            views.insert(p, view);
        }
        views
    }
}

#[derive(Default)]
struct Hooks {
    /// Pulls of these files fail this many more times.
    fail_pulls: HashMap<PnfsId, u32>,
    /// Pulls into this pool take this much longer.
    slow: HashMap<PoolName, Duration>,
    /// The next request of this kind to this pool is held up this long on the way.
    stall: Vec<(&'static str, PoolName, Duration)>,
    /// Frozen pools (a stopped process): connections open, nothing is ever answered, and
    /// the pool itself does nothing.
    frozen: BTreeSet<PoolName>,
}

/// The shared state of one simulated cluster.
pub struct World {
    pub seed: u64,
    start: Instant,
    config: SimConfig,
    faults: Mutex<Faults>,
    store: Mutex<Store>,
    modules: Mutex<HashMap<PoolName, Weak<Module<SimEnv>>>>,
    offline: Mutex<BTreeSet<PoolName>>,
    /// How often each message (by hash) was sent: part of its fault seed.
    sent: Mutex<HashMap<u64, u64>>,
    stats: Mutex<Stats>,
    trace: Mutex<VecDeque<String>>,
    hooks: Mutex<Hooks>,
    changes: mpsc::UnboundedSender<(PoolName, PnfsId, RepoChange)>,
    rng: Mutex<SplitMix>,
    /// Each pool's current incarnation; a crash starts a new one and the old one's
    /// environment stops working.
    generations: Mutex<HashMap<PoolName, u64>>,
}

fn fnv(text: &str, seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

pub fn checksum(data: &[u8]) -> Checksum {
    let mut w = ChecksumWriter::new();
    w.update(data);
    w.finish()
}

fn kind_of(req: &MigrationRequest) -> &'static str {
    match req {
        MigrationRequest::PoolInfo { .. } => "PoolInfo",
        MigrationRequest::Locate { .. } => "Locate",
        // A batch meets the faults of its kind: a late or lost batch is every request in it.
        MigrationRequest::Copy(_) | MigrationRequest::CopyBatch(_) => "Copy",
        MigrationRequest::Ping { .. } => "Ping",
        MigrationRequest::Cancel { .. } => "Cancel",
        MigrationRequest::Finished(_) | MigrationRequest::FinishedBatch(_) => "Finished",
    }
}

fn describe(req: &MigrationRequest) -> String {
    match req {
        MigrationRequest::PoolInfo { .. } => "PoolInfo".into(),
        MigrationRequest::Locate { pnfsids } => format!("Locate({} files)", pnfsids.len()),
        MigrationRequest::Copy(c) => format!("Copy {} attempt={}", c.attributes.pnfsid, c.attempt),
        MigrationRequest::Ping { attempt } => format!("Ping attempt={attempt}"),
        MigrationRequest::Cancel { attempt, .. } => format!("Cancel attempt={attempt}"),
        MigrationRequest::Finished(f) => describe_finished(f),
        MigrationRequest::CopyBatch(reqs) => {
            let each: Vec<String> =
                reqs.iter().map(|c| format!("{} attempt={}", c.attributes.pnfsid, c.attempt)).collect();
            format!("CopyBatch [{}]", each.join(", "))
        }
        MigrationRequest::FinishedBatch(items) => {
            let each: Vec<String> = items.iter().map(describe_finished).collect();
            format!("FinishedBatch [{}]", each.join(", "))
        }
    }
}

fn describe_finished(f: &CopyFinished) -> String {
    format!(
        "Finished {} attempt={} {}",
        f.pnfsid,
        f.attempt,
        match &f.result {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("error {}", e.message),
        }
    )
}

/// How one delivery of a request ended.
enum Delivered {
    Reply(MigrationReply),
    /// Lost; `handled`: the receiver acted on it.
    Lost {
        handled: bool,
    },
}

impl World {
    fn elapsed(&self) -> Duration {
        Instant::now().duration_since(self.start)
    }

    pub fn now(&self) -> EpochMillis {
        EPOCH + self.elapsed().as_millis() as i64
    }

    pub fn trace(&self, line: impl AsRef<str>) {
        let t = self.elapsed();
        let mut trace = self.trace.lock();
        if trace.len() == TRACE_LINES {
            trace.pop_front();
        }
        trace.push_back(format!("[{:>9.3}s] {}", t.as_secs_f64(), line.as_ref()));
    }

    pub fn trace_text(&self) -> String {
        self.trace.lock().iter().cloned().collect::<Vec<_>>().join("\n")
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock() = faults;
    }

    /// A generator for one decision about `key`, from the seed and the key only.
    fn rng_for(&self, key: &str) -> SplitMix {
        let h = fnv(key, self.seed);
        let n = {
            let mut sent = self.sent.lock();
            let n = sent.entry(h).or_insert(0);
            *n += 1;
            *n
        };
        SplitMix::new(h ^ n.wrapping_mul(0xA24B_AED4_963E_E407))
    }

    /// A generator for the scenario itself (file contents, chaos schedules).
    pub fn random(&self) -> u64 {
        self.rng.lock().next_u64()
    }

    pub fn random_below(&self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.random() % n }
    }

    fn generation(&self, p: &PoolName) -> u64 {
        self.generations.lock().get(p).copied().unwrap_or(0)
    }

    pub fn is_frozen(&self, p: &PoolName) -> bool {
        self.hooks.lock().frozen.contains(p)
    }

    pub fn is_online(&self, p: &PoolName) -> bool {
        !self.offline.lock().contains(p)
    }

    fn reachable(&self, a: &PoolName, b: &PoolName) -> bool {
        let off = self.offline.lock();
        !off.contains(a) && !off.contains(b)
    }

    fn module(&self, p: &PoolName) -> Option<Arc<Module<SimEnv>>> {
        self.modules.lock().get(p).and_then(Weak::upgrade)
    }

    fn note_change(&self, pool: &PoolName, id: PnfsId, change: RepoChange) {
        let _ = self.changes.send((pool.clone(), id, change));
    }

    /// Checks, under the store lock, that every protected file has a committed replica with
    /// its size and checksum somewhere, and that every committed replica is whole.
    fn check(&self, store: &mut Store, after: &str) {
        let t = self.elapsed().as_secs_f64();
        let mut found = Vec::new();
        let views = store.views();
        for (id, (size, sum)) in &store.protected {
            let held = views.values().any(|repo| {
                repo.get(id).is_some_and(|r| r.entry.state.is_committed() && r.data_len == *size && r.data_sum == *sum)
            });
            if !held {
                found.push(format!("t={t:.3}s: {id} has no committed replica anywhere after {after}"));
            }
            if let Some(acked) = store.acked.get(id) {
                let kept = views
                    .values()
                    .any(|repo| repo.get(id).is_some_and(|r| r.entry.state.is_committed() && acked.kept_by(r)));
                if !kept {
                    found.push(format!(
                        "t={t:.3}s: {id} lost what the operator was told was done ({acked:?}) after {after}"
                    ));
                }
            }
        }
        for (pool, repo) in &views {
            for (id, r) in repo.iter() {
                if r.entry.state.is_committed()
                    && !r.corrupt
                    && (r.data_len != r.entry.attrs.size || Some(r.data_sum) != r.entry.attrs.checksum)
                {
                    found.push(format!(
                        "t={t:.3}s: {pool} shows {id} as {} but holds {} of {} bytes (after {after})",
                        r.entry.state, r.data_len, r.entry.attrs.size
                    ));
                }
            }
        }
        for v in &found {
            self.trace(format!("VIOLATION {v}"));
        }
        store.violations.extend(found);
    }

    /// Changes one pool's repository under the store lock, then checks the invariants. On a
    /// draw from the seed (`Faults::meta_failure`) the store fails this call's metadata write:
    /// its record write (nothing changed) or, on a coin, its flush (the change was made).
    fn mutate<T>(
        &self,
        pool: &PoolName,
        what: &str,
        f: impl FnOnce(&Arc<Repository>, EpochMillis) -> RepoResult<T>,
    ) -> Result<T, EnvError> {
        let (fails, made_anyway) = {
            let mut rng = self.rng_for(&format!("meta {pool} {what}"));
            (rng.unit() < self.faults.lock().meta_failure, rng.unit() < 0.5)
        };
        let now = self.now();
        let mut store = self.store.lock();
        let PoolRepo { repo, mem, .. } = store.repos.get(pool).expect("a known pool");
        let (repo, mem) = (repo.clone(), mem.clone());
        let faults: &[Fault] = match (fails, made_anyway) {
            (false, _) => &[],
            (true, true) => &[Fault::Flush],
            (true, false) => &[Fault::PutRecord, Fault::DeleteRecord],
        };
        for fault in faults {
            mem.fail(*fault, 1);
        }
        let out = f(&repo, now);
        for fault in faults {
            mem.fail(*fault, 0);
        }
        // Only a call that reached the disk can fail there (one that changed nothing did not).
        let failed = fails && matches!(out, Err(RepoError::Store(_)));
        if failed {
            let mut stats = self.stats.lock();
            stats.meta_failed += 1;
            stats.meta_failed_made += u64::from(made_anyway);
            if made_anyway {
                self.trace(format!("{pool}: {what}: the flush failed after the change reached the disk"));
            } else {
                self.trace(format!("{pool}: {what}: the write failed, nothing changed"));
            }
        }
        if out.is_ok() || failed {
            self.check(&mut store, &format!("{pool}: {what}"));
        }
        out.map_err(stored)
    }

    // -------------------------------------------------------------- the network

    async fn request(
        self: Arc<Self>,
        from: PoolName,
        to: PoolName,
        req: MigrationRequest,
    ) -> Result<MigrationReply, Unanswered> {
        let kind = kind_of(&req);
        let what = describe(&req);
        if self.is_frozen(&from) {
            tokio::time::sleep(self.config.reply_timeout).await;
            return Err(Unanswered::NoAnswer);
        }
        let f = self.faults.lock().clone();
        let mut rng = self.rng_for(&format!("{from}>{to}:{req:?}"));
        let delay = |rng: &mut SplitMix| Duration::from_micros((rng.unit() * f.max_delay.as_micros() as f64) as u64);
        let (mut d1, d2) = (delay(&mut rng), delay(&mut rng));
        {
            let mut hooks = self.hooks.lock();
            if let Some(i) = hooks.stall.iter().position(|(k, p, _)| *k == kind && *p == to) {
                let (_, _, extra) = hooks.stall.remove(i);
                d1 += extra;
                drop(hooks);
                self.trace(format!("{from} -> {to} {what}: held up for {}s", extra.as_secs()));
            }
        }
        let (d1b, d2b) = (delay(&mut rng), delay(&mut rng));
        let drop_request = rng.unit() < f.drop_request;
        let drop_reply = rng.unit() < f.drop_reply;
        let duplicate = rng.unit() < f.duplicate;
        let late_p = match kind {
            "Finished" => f.late_finished,
            "Copy" => f.late_copy,
            _ => 0.0,
        };
        // Only a request that reached the pool can reach it again later: the transport reports
        // `NotDelivered` only when nothing was written (a connect that failed).
        let late = rng.unit() < late_p && !drop_request;
        let late_after = Duration::from_micros((rng.unit() * f.late_delay.as_micros() as f64) as u64);
        *self.stats.lock().messages.entry(kind).or_insert(0) += 1;

        if late {
            self.stats.lock().late += 1;
            self.trace(format!("{from} -> {to} {what}: a late copy follows in {:.1}s", late_after.as_secs_f64()));
            tokio::spawn(self.clone().deliver(from.clone(), to.clone(), req.clone(), late_after, d2, false, None));
        }
        if drop_request {
            self.stats.lock().dropped_requests += 1;
            self.trace(format!("{from} -> {to} {what}: request lost"));
            tokio::time::sleep(d1).await;
            return Err(Unanswered::NotDelivered);
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(self.clone().deliver(from.clone(), to.clone(), req.clone(), d1, d2, drop_reply, Some(tx.clone())));
        if duplicate {
            self.stats.lock().duplicated += 1;
            self.trace(format!("{from} -> {to} {what}: delivered twice"));
            tokio::spawn(self.clone().deliver(from.clone(), to.clone(), req, d1b, d2b, false, Some(tx.clone())));
        }
        drop(tx);
        let deadline = Instant::now() + self.config.reply_timeout;
        let mut handled = false;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Delivered::Reply(reply))) => return Ok(reply),
                Ok(Some(Delivered::Lost { handled: h })) => handled |= h,
                Ok(None) if !handled => return Err(Unanswered::NotDelivered),
                Ok(None) => {
                    tokio::time::sleep_until(deadline).await;
                    return Err(Unanswered::NoAnswer);
                }
                Err(_) => return Err(Unanswered::NoAnswer),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn deliver(
        self: Arc<Self>,
        from: PoolName,
        to: PoolName,
        req: MigrationRequest,
        before: Duration,
        after: Duration,
        drop_reply: bool,
        tx: Option<mpsc::UnboundedSender<Delivered>>,
    ) {
        let send = |d: Delivered| {
            if let Some(tx) = &tx {
                let _ = tx.send(d);
            }
        };
        tokio::time::sleep(before).await;
        let what = describe(&req);
        let module = if self.reachable(&from, &to) { self.module(&to) } else { None };
        let Some(module) = module else {
            self.stats.lock().not_delivered_offline += 1;
            self.trace(format!("{from} -> {to} {what}: not delivered (offline)"));
            send(Delivered::Lost { handled: false });
            return;
        };
        if self.is_frozen(&to) {
            // The connection is accepted by the kernel; the process never reads it.
            self.trace(format!("{from} -> {to} {what}: never answered (frozen)"));
            send(Delivered::Lost { handled: true });
            return;
        }
        self.trace(format!("{from} -> {to} {what}"));
        let reply = module.serve(from.clone(), req).await;
        tokio::time::sleep(after).await;
        if drop_reply || !self.reachable(&from, &to) {
            self.stats.lock().dropped_replies += 1;
            self.trace(format!("{to} -> {from} reply to {what} lost: {reply:?}"));
            send(Delivered::Lost { handled: true });
            return;
        }
        send(Delivered::Reply(reply));
    }

    // -------------------------------------------------------------- pulls

    async fn pull(
        self: Arc<Self>,
        me: PoolName,
        generation: u64,
        pull: Pull,
        cancel: CancellationToken,
    ) -> Result<(), RemoteError> {
        let id = pull.pnfsid;
        let src = pull.source.clone();
        {
            let mut st = self.stats.lock();
            st.pulls_started += 1;
            st.pull_starts.entry(id).or_default().push(self.elapsed());
            let active = st.pulls_active.entry(src.clone()).or_insert(0);
            *active += 1;
            let now_active = *active;
            let peak = st.pulls_peak.entry(src.clone()).or_insert(0);
            *peak = (*peak).max(now_active);
        }
        let result = self.clone().pull_inner(&me, generation, &pull, cancel).await;
        {
            let mut st = self.stats.lock();
            *st.pulls_active.entry(src.clone()).or_insert(1) -= 1;
            match &result {
                Ok(()) => st.pulls_committed += 1,
                Err(_) => st.pulls_failed += 1,
            }
        }
        match &result {
            Ok(()) => self.trace(format!("{me}: pull of {id} from {src} committed as {}", pull.state)),
            Err(e) => self.trace(format!("{me}: pull of {id} from {src} failed: {}", e.message)),
        }
        result
    }

    async fn pull_inner(
        self: Arc<Self>,
        me: &PoolName,
        generation: u64,
        pull: &Pull,
        cancel: CancellationToken,
    ) -> Result<(), RemoteError> {
        let id = pull.pnfsid;
        let src = &pull.source;
        let crashed = || RemoteError::new(ErrorCode::ShuttingDown, "the pool crashed");
        if self.generation(me) != generation {
            return Err(crashed());
        }
        if !self.reachable(me, src) {
            return Err(RemoteError::new(ErrorCode::Offline, format!("pool {src} is not reachable")));
        }
        let now = self.now();
        // Start: the source must hold the file and allow it to be read; the target's
        // repository makes a receiving entry (never visible as a copy), evicting what it must.
        let (mut incoming, evicted, expected_sum) = {
            let mut store = self.store.lock();
            let source = store.repo(src).get(&id).ok().flatten();
            let Some(source) = source else {
                return Err(RemoteError::new(ErrorCode::FileNotFound, format!("Pool {src} does not contain {id}")));
            };
            if !source.state.is_committed() {
                return Err(RemoteError::new(ErrorCode::NotCommitted, format!("{id} on {src} is {}", source.state)));
            }
            let mode = store.modes.get(src).copied().unwrap_or_default();
            if !mode.is_enabled() && mode.bits() & PoolMode::FETCH != 0 && !pull.force_source_mode {
                return Err(RemoteError::new(ErrorCode::PoolDisabled, "Pool is disabled"));
            }
            let mut attrs = source.attrs.clone();
            attrs.access_time = pull.atime.unwrap_or(now);
            let target = store.repos.get_mut(me).expect("a known pool");
            target.drain_evicted(&id);
            let incoming = target.repo.create(attrs, ReplicaState::FromPool, now)?;
            let evicted = target.drain_evicted(&id);
            if !evicted.is_empty() {
                self.trace(format!("{me}: evicted {evicted:?} to make room for {id}"));
                store.evicted.entry(me.clone()).or_default().extend(evicted.iter().copied());
            }
            self.check(&mut store, &format!("{me}: receiving {id}"));
            (incoming, evicted, source.attrs.checksum)
        };
        for victim in evicted {
            self.note_change(me, victim, RepoChange::Removed);
        }
        self.note_change(me, id, RepoChange::State { from: ReplicaState::New });
        let mut rng = self.rng_for(&format!("pull {me} {id}"));
        let forced = {
            let mut hooks = self.hooks.lock();
            match hooks.fail_pulls.get_mut(&id) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        };
        let breaks = forced || rng.unit() < self.faults.lock().pull_failure;
        let slow = self.hooks.lock().slow.get(me).copied().unwrap_or_default();
        let mut took = self.config.pull_time
            + Duration::from_micros((rng.unit() * self.config.pull_jitter.as_micros() as f64) as u64)
            + Duration::from_micros(incoming.expected_size().saturating_mul(1_000_000) / self.config.bandwidth.max(1))
            + slow;
        if breaks {
            took /= 2;
        }
        let outcome = tokio::select! {
            _ = cancel.cancelled() => Err(RemoteError::new(ErrorCode::Cancelled, "Task was cancelled")),
            _ = tokio::time::sleep(took) => if breaks {
                Err(RemoteError::new(ErrorCode::Io, format!("connection to {src} broke")))
            } else {
                Ok(())
            },
        };
        // End: the source's bytes into the receiving entry, committed by the repository (it
        // checks their size and the source's checksum); or the partial replica dropped.
        let size = incoming.expected_size();
        let result = {
            let mut store = self.store.lock();
            let (disk_fails, undo_fails) = {
                let f = self.faults.lock();
                (rng.unit() < f.disk_failure, rng.unit() < f.undo_failure)
            };
            let data = outcome.and_then(|()| {
                if self.generation(me) != generation {
                    return Err(crashed());
                }
                if self.is_frozen(me) {
                    return Err(RemoteError::new(ErrorCode::Timeout, format!("pool {me} is frozen")));
                }
                if !self.reachable(me, src) {
                    return Err(RemoteError::new(ErrorCode::Io, format!("connection to {src} lost")));
                }
                let vanished = || RemoteError::new(ErrorCode::FileNotFound, format!("{id} vanished from {src}"));
                let (_, mut read) = store.repo(src).open_for_copy(&id).map_err(|_| vanished())?;
                let mut data = Vec::new();
                read.read_to_end(&mut data).map_err(|e| RemoteError::new(ErrorCode::Io, e.to_string()))?;
                Ok(data)
            });
            let r = match data {
                Ok(data) => {
                    let mem = store.repos[me].mem.clone();
                    // The disk fails the commit's sync (nothing of it is kept), or its flush and
                    // every try of the undo's flush: the record stays, hidden, until a later
                    // batch or the restart deletes it.
                    let faults: &[(Fault, u32)] = match (disk_fails, undo_fails) {
                        (false, _) => &[],
                        (true, false) => &[(Fault::SyncData, 1)],
                        (true, true) => &[(Fault::Flush, 4)],
                    };
                    for (fault, times) in faults {
                        mem.fail(*fault, *times);
                    }
                    // A short or damaged copy is the repository's to refuse (size, checksum).
                    let committed = incoming
                        .write(&data)
                        .and_then(|()| incoming.commit(pull.state, pull.sticky.clone(), expected_sum, self.now()));
                    for (fault, _) in faults {
                        mem.fail(*fault, 0);
                    }
                    committed
                        .map(|made| {
                            // The data file holds what was written: the repository's sum of it.
                            let sum = made.attrs.checksum.expect("a committed replica has a checksum");
                            store.sums.insert((me.clone(), id), (made.attrs.creation_time, made.attrs.size, sum));
                        })
                        .map_err(RemoteError::from)
                }
                Err(e) => {
                    drop(incoming);
                    Err(e)
                }
            };
            let what = match &r {
                Ok(()) => format!("{me}: committed {id}"),
                Err(_) => format!("{me}: dropped the partial {id}"),
            };
            self.check(&mut store, &what);
            if r.is_ok() {
                self.stats.lock().bytes_committed += size;
            }
            r
        };
        let change =
            if result.is_ok() { RepoChange::State { from: ReplicaState::FromPool } } else { RepoChange::Removed };
        self.note_change(me, id, change);
        result
    }
}

// ------------------------------------------------------------------------------ the Env

/// One pool's view of the simulated cluster.
pub struct SimEnv {
    name: PoolName,
    world: Arc<World>,
    generation: u64,
}

impl SimEnv {
    /// An error once this incarnation of the pool has crashed.
    fn crashed(&self) -> Result<(), RemoteError> {
        if self.world.generation(&self.name) == self.generation {
            Ok(())
        } else {
            Err(RemoteError::new(ErrorCode::ShuttingDown, format!("pool {} crashed", self.name)))
        }
    }

    fn mode(&self) -> PoolMode {
        self.world.store.lock().modes.get(&self.name).copied().unwrap_or_default()
    }

    /// This pool's repository.
    fn repo(&self) -> Arc<Repository> {
        self.world.store.lock().repo(&self.name).clone()
    }
}

fn entry(r: tidepool_repository::Replica) -> Entry {
    Entry { attrs: r.attrs, state: r.state, sticky: r.sticky }
}

/// A simulated refusal of the pool (its repository, its mode, its transfers), as the module
/// gets it.
#[derive(Debug)]
struct Simulated(String);

impl std::fmt::Display for Simulated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Simulated {}

/// The simulated repository's refusal, with its code.
fn local(e: RemoteError) -> EnvError {
    EnvError::repository(e.code().unwrap_or(ErrorCode::Internal), Simulated(e.message))
}

/// A simulated transfer's failure, with its code (a source's answer keeps the source's).
fn transfer(e: RemoteError) -> EnvError {
    EnvError::Transfer { code: e.code, cause: Arc::new(Simulated(e.message)) }
}

/// The repository's refusal or failure, with its stable code (as the pool's `PoolEnv` makes it).
fn stored(e: RepoError) -> EnvError {
    EnvError::repository(e.code(), e)
}

/// The pool crashed: as the module sees it, it is shutting down.
fn down(pool: &PoolName) -> impl Fn(RemoteError) -> EnvError + '_ {
    move |_| EnvError::ShuttingDown(pool.clone())
}

impl Env for SimEnv {
    fn name(&self) -> &PoolName {
        &self.name
    }

    fn now(&self) -> EpochMillis {
        self.world.now()
    }

    fn pin_prefix(&self) -> &str {
        PIN_PREFIX
    }

    fn scan(&self, visit: &mut dyn FnMut(Entry) -> ControlFlow<()>) -> Result<(), EnvError> {
        self.crashed().map_err(down(&self.name))?;
        // Collected first, so the visitor runs without the store lock (as the pool's scan
        // leaves out replicas being received).
        let mut entries = Vec::new();
        self.repo()
            .scan(&mut |r| {
                entries.push(entry(r));
                ControlFlow::Continue(())
            })
            .map_err(stored)?;
        for e in entries {
            if visit(e).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn entry(&self, id: &PnfsId) -> Result<Option<Entry>, EnvError> {
        self.crashed().map_err(down(&self.name))?;
        Ok(self.repo().get(id).map_err(stored)?.map(entry))
    }

    fn set_state(&self, id: &PnfsId, state: ReplicaState) -> Result<(), EnvError> {
        self.crashed().map_err(down(&self.name))?;
        let removed = state == ReplicaState::Removed;
        let mut from = state;
        self.world.mutate(&self.name, &format!("{id} -> {state}"), |repo, now| {
            from = repo.get(id)?.map_or(state, |r| r.state);
            repo.set_state(id, state, now)
        })?;
        self.world.trace(format!("{}: {id} -> {state}", self.name));
        let change = if removed { RepoChange::Removed } else { RepoChange::State { from } };
        self.world.note_change(&self.name, *id, change);
        Ok(())
    }

    fn set_sticky(&self, id: &PnfsId, record: StickyRecord, mode: StickyMode) -> Result<(), EnvError> {
        self.crashed().map_err(down(&self.name))?;
        let what = format!("{id} sticky {}={} ({mode:?})", record.owner, record.expire);
        let changed = self.world.mutate(&self.name, &what, |repo, now| repo.set_sticky(id, record, mode, now))?;
        self.world.trace(format!("{}: {what}", self.name));
        if changed {
            // Like the pool's repository: only a real change is announced.
            self.world.note_change(&self.name, *id, RepoChange::Sticky);
        }
        Ok(())
    }

    fn remove(&self, id: &PnfsId) -> Result<(), EnvError> {
        self.crashed().map_err(down(&self.name))?;
        // As the pool's: the migration decides, no protection applies here.
        self.world.mutate(&self.name, &format!("removed {id}"), |repo, now| repo.remove(id, true, now))?;
        self.world.trace(format!("{}: removed {id}", self.name));
        self.world.note_change(&self.name, *id, RepoChange::Removed);
        Ok(())
    }

    fn clear_covered_pins(&self, id: &PnfsId, moved: &[StickyRecord]) -> Result<(), EnvError> {
        self.crashed().map_err(down(&self.name))?;
        let changed = self.world.mutate(&self.name, &format!("{id} moved pins cleared"), |repo, now| {
            match repo.drop_sticky_if(id, now, |pin| pin_clearable(pin, PIN_PREFIX, moved)) {
                Err(RepoError::NotFound(_)) => Ok(false),
                other => other,
            }
        })?;
        if changed {
            self.world.note_change(&self.name, *id, RepoChange::Sticky);
        }
        Ok(())
    }

    fn remove_unless(
        &self,
        id: &PnfsId,
        moved: &[StickyRecord],
        snapshot: &Snapshot,
    ) -> Result<SourceRemoval, EnvError> {
        self.crashed().map_err(down(&self.name))?;
        let mut kept = None;
        let removed =
            self.world.mutate(&self.name, &format!("removed {id} unless pinned or changed"), |repo, now| {
                let allow = |r: &tidepool_repository::Replica| {
                    kept = source_removal(r.state, &r.sticky, moved, snapshot, PIN_PREFIX, now);
                    match kept {
                        Some(_) => Err(RepoError::Protected { id: *id, why: Protection::Changed }),
                        None => Ok(()),
                    }
                };
                match repo.remove_if(id, allow) {
                    Err(RepoError::Protected { .. }) => Ok(false),
                    other => other.map(|()| true),
                }
            })?;
        let verdict = match kept {
            Some(verdict) if !removed => verdict,
            _ => SourceRemoval::Removed,
        };
        if verdict == SourceRemoval::Removed {
            self.world.trace(format!("{}: removed {id}", self.name));
            self.world.note_change(&self.name, *id, RepoChange::Removed);
        }
        Ok(verdict)
    }

    fn compute_checksum(&self, id: &PnfsId) -> Result<Checksum, EnvError> {
        self.crashed().map_err(down(&self.name))?;
        // A verification is not a use: the access time stays.
        let (replica, mut read) = self.repo().open_for_copy(id).map_err(stored)?;
        let mut data = Vec::new();
        read.read_to_end(&mut data).map_err(|e| EnvError::ChecksumRead { id: *id, error: Arc::new(e) })?;
        if data.len() as u64 != replica.attrs.size {
            return Err(EnvError::DataSize { id: *id, found: data.len() as u64, recorded: replica.attrs.size });
        }
        Ok(checksum(&data))
    }

    fn set_checksum(&self, id: &PnfsId, sum: Checksum) -> Result<(), EnvError> {
        self.crashed().map_err(down(&self.name))?;
        self.world.mutate(&self.name, &format!("{id} checksum {sum}"), |repo, now| repo.set_checksum(id, sum, now))
    }

    fn hold(&self, ids: &[PnfsId], until: EpochMillis, owner: &HoldOwner, kind: HoldKind) -> Result<(), EnvError> {
        self.crashed().map_err(down(&self.name))?;
        // As the pool's: a hold on a replica that is here is flushed at once; one on a replica
        // to come, with the commit that brings it.
        let arriving = kind == HoldKind::Delivery;
        let now = self.world.now();
        // Under the store lock, so that no fault the simulator set for another call meets it.
        let store = self.world.store.lock();
        store.repo(&self.name).hold(ids, until, &owner.encode(), arriving, now).map_err(stored)
    }

    fn check_p2p_client(&self) -> Result<(), EnvError> {
        self.crashed().map_err(down(&self.name))?;
        let mode = self.mode();
        if !mode.is_enabled() && mode.bits() & PoolMode::P2P_CLIENT != 0 {
            return Err(EnvError::Mode(Arc::new(Simulated("Pool is disabled".into()))));
        }
        Ok(())
    }

    fn cost(&self) -> PoolCost {
        let repo = self.repo();
        PoolCost {
            space: repo.space(self.world.now()),
            load: repo.incoming().len() as u32,
            accepts: self.check_p2p_client().is_ok(),
            enabled: true,
            run: 0,
        }
    }

    fn pools(&self) -> Vec<PoolName> {
        self.world.config.pools.iter().map(|p| p.name.clone()).collect()
    }

    fn pool_group(&self, group: &str) -> Vec<PoolName> {
        self.world.config.pools.iter().filter(|p| p.groups.iter().any(|g| g == group)).map(|p| p.name.clone()).collect()
    }

    fn groups_of(&self, pool: &PoolName) -> Vec<String> {
        self.world.config.pools.iter().find(|p| p.name == *pool).map(|p| p.groups.clone()).unwrap_or_default()
    }

    fn link(&self, _name: &str) -> Option<Vec<String>> {
        None
    }

    fn hsm_pools(&self, _hsm: &str) -> Vec<PoolName> {
        Vec::new()
    }

    fn costs(&self, pools: &[PoolName]) -> impl Future<Output = Option<Vec<(PoolName, Option<PoolCost>)>>> + Send {
        // What each pool last published: its module's own figures, none for a pool that is
        // offline (its lease lapsed). One read, however many pools it covers.
        let published = (self.world.config.publish_costs && self.crashed().is_ok()).then(|| {
            let mut stats = self.world.stats.lock();
            stats.cost_reads += 1;
            stats.cost_read_pools += pools.len() as u64;
            drop(stats);
            pools
                .iter()
                .map(|p| {
                    let cost = self.world.is_online(p).then(|| self.world.module(p)).flatten().map(|m| m.cost());
                    (p.clone(), cost)
                })
                .collect()
        });
        async move { published }
    }

    fn request(
        &self,
        to: &PoolName,
        req: MigrationRequest,
    ) -> impl Future<Output = Result<MigrationReply, Unanswered>> + Send {
        let crashed = self.crashed().is_err();
        let request = self.world.clone().request(self.name.clone(), to.clone(), req);
        async move {
            if crashed {
                return Err(Unanswered::NotDelivered);
            }
            request.await
        }
    }

    fn pull(&self, pull: Pull, cancel: CancellationToken) -> impl Future<Output = Result<(), EnvError>> + Send {
        let pulled = self.world.clone().pull(self.name.clone(), self.generation, pull, cancel);
        async move { pulled.await.map_err(transfer) }
    }

    fn pull_batch(
        &self,
        pulls: Vec<(Pull, CancellationToken)>,
    ) -> impl Future<Output = Vec<Result<(), EnvError>>> + Send {
        // Side by side, as the pool's batch runs them; each answers for itself.
        let handles: Vec<_> = pulls
            .into_iter()
            .map(|(pull, cancel)| {
                tokio::spawn(self.world.clone().pull(self.name.clone(), self.generation, pull, cancel))
            })
            .collect();
        async move {
            let mut results = Vec::with_capacity(handles.len());
            for h in handles {
                results.push(h.await.map_err(|e| EnvError::Internal(e.to_string())).and_then(|r| r.map_err(transfer)));
            }
            results
        }
    }
}

// ------------------------------------------------------------------------------ the cluster

/// What a new file looks like.
#[derive(Clone, Debug)]
pub struct FileSpec {
    pub size: usize,
    pub state: ReplicaState,
    pub sticky: Vec<StickyRecord>,
    /// Seconds before the start of the simulation.
    pub accessed_ago: i64,
    pub storage_class: &'static str,
}

impl FileSpec {
    pub fn precious(size: usize) -> FileSpec {
        FileSpec {
            size,
            state: ReplicaState::Precious,
            sticky: Vec::new(),
            accessed_ago: 3600,
            storage_class: "test:default",
        }
    }
    pub fn cached(size: usize) -> FileSpec {
        FileSpec { state: ReplicaState::Cached, ..FileSpec::precious(size) }
    }
    pub fn in_class(mut self, storage_class: &'static str) -> FileSpec {
        self.storage_class = storage_class;
        self
    }
    pub fn with_sticky(mut self, owner: &str, expire: EpochMillis) -> FileSpec {
        self.sticky.push(StickyRecord::new(owner, expire));
        self
    }
}

/// A simulated cluster: the world and every pool's module.
pub struct Sim {
    pub world: Arc<World>,
    modules: BTreeMap<PoolName, Arc<Module<SimEnv>>>,
    /// Modules of crashed pools (their tasks may still run; their environment is dead).
    crashed: Vec<Arc<Module<SimEnv>>>,
    next_file: u64,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let verbose = std::env::var_os("SIM_VERBOSE").is_some();
        if std::thread::panicking() || verbose {
            eprintln!("--- last events of seed {} ---\n{}", self.world.seed, self.world.trace_text());
            eprintln!("--- stats ---\n{:#?}", self.world.stats());
            for (name, m) in &self.modules {
                for line in m.ls() {
                    let id = line.trim_start_matches('[').split(']').next().unwrap_or("");
                    eprintln!("--- {name} {line}\n{}", m.info(id).unwrap_or_default());
                }
            }
        }
    }
}

impl Sim {
    /// Must be called inside the (paused) runtime.
    pub fn new(seed: u64, config: SimConfig) -> Sim {
        let (tx, mut rx) = mpsc::unbounded_channel::<(PoolName, PnfsId, RepoChange)>();
        let mut store = Store::default();
        for p in &config.pools {
            store.repos.insert(p.name.clone(), PoolRepo::open(MemStore::new(), p.capacity, EPOCH));
            store.modes.insert(p.name.clone(), PoolMode::ENABLED);
        }
        let world = Arc::new(World {
            seed,
            start: Instant::now(),
            faults: Mutex::new(config.faults.clone()),
            store: Mutex::new(store),
            modules: Mutex::new(HashMap::new()),
            offline: Mutex::new(BTreeSet::new()),
            sent: Mutex::new(HashMap::new()),
            stats: Mutex::new(Stats::default()),
            trace: Mutex::new(VecDeque::new()),
            hooks: Mutex::new(Hooks::default()),
            changes: tx,
            rng: Mutex::new(SplitMix::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED)),
            generations: Mutex::new(HashMap::new()),
            config,
        });
        let mut modules = BTreeMap::new();
        for p in &world.config.pools {
            modules.insert(p.name.clone(), start_module(&world, &p.name));
        }
        // The repositories' change announcements, as the pool daemon forwards them.
        let w = Arc::downgrade(&world);
        tokio::spawn(async move {
            while let Some((pool, id, change)) = rx.recv().await {
                let Some(world) = w.upgrade() else { return };
                if let Some(m) = world.module(&pool) {
                    m.repository_changed(id, change);
                }
            }
        });
        Sim { world, modules, crashed: Vec::new(), next_file: 0 }
    }

    /// The pool crashes: it is offline, its module's environment stops working (requests go
    /// nowhere, pulls under way commit nothing), and the module keeps no state that matters.
    /// Its store keeps only what was made durable (a power cut: holds written but not yet
    /// flushed are lost), and the repository's restart recovery runs on it at once (so the
    /// checker sees what the disk holds while the pool is down).
    pub fn crash(&mut self, name: &str) {
        let p = pool(name);
        *self.world.generations.lock().entry(p.clone()).or_insert(0) += 1;
        self.world.offline.lock().insert(p.clone());
        self.world.modules.lock().remove(&p);
        if let Some(m) = self.modules.remove(&p) {
            self.crashed.push(m);
        }
        {
            let now = self.world.now();
            let mut store = self.world.store.lock();
            let capacity = store.repos[&p].repo.capacity();
            let found = store.repos[&p].mem.power_cut(CutMode::DurableOnly);
            store.repos.insert(p.clone(), PoolRepo::open(found, capacity, now));
            store.sums.retain(|(pool, _), _| *pool != p);
            self.world.check(&mut store, &format!("{name}: crash"));
        }
        self.world.trace(format!("{name} CRASHED"));
    }

    /// The crashed pool starts again: a new module without jobs runs over the repository
    /// that restart recovery opened, and takes back the holds that were flushed.
    pub fn restart(&mut self, name: &str) {
        let p = pool(name);
        let now = self.world.now();
        let saved: Vec<SavedHold> = {
            let store = self.world.store.lock();
            store.repos[&p]
                .repo
                .take_saved_holds()
                .into_iter()
                .filter(|h| h.until > now)
                .filter_map(|h| Some(SavedHold { id: h.id, until: h.until, owner: HoldOwner::decode(&h.owner)? }))
                .collect()
        };
        let module = start_module(&self.world, &p);
        module.restore_holds(saved);
        self.modules.insert(p.clone(), module);
        self.world.offline.lock().remove(&p);
        self.world.trace(format!("{name} restarted"));
    }

    pub fn module(&self, name: &str) -> &Arc<Module<SimEnv>> {
        &self.modules[&pool(name)]
    }

    // -------------------------------------------------------------- files

    /// Adds a file to `on` (and protects it: it must never be lost).
    pub fn add_file(&mut self, on: &str, spec: FileSpec) -> PnfsId {
        self.next_file += 1;
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&self.world.seed.to_be_bytes());
        raw[8..].copy_from_slice(&self.next_file.to_be_bytes());
        let id = PnfsId::from_random(raw);
        let data: Vec<u8> = (0..spec.size).map(|_| self.world.random() as u8).collect();
        self.put(on, id, data, spec);
        id
    }

    /// Deletes a file from a pool as a client would (`rep rm`): it is no longer protected.
    pub fn delete_file(&mut self, on: &str, id: PnfsId) {
        self.world.store.lock().protected.remove(&id);
        self.module(on).env().remove(&id).expect("delete the file");
    }

    /// An operator's `rep set precious` on `on`. True if it was done: from then on, the
    /// checker asserts after every change that some committed replica of the file is PRECIOUS.
    pub fn operator_set_precious(&self, on: &str, id: PnfsId) -> bool {
        let done = self.module(on).env().set_state(&id, ReplicaState::Precious).is_ok();
        if done {
            self.world.trace(format!("operator: {on} {id} -> PRECIOUS"));
            self.world.store.lock().acked.entry(id).or_default().precious = true;
        }
        done
    }

    /// An operator's `rep set sticky` on `on`. True if it was done: from then on, some
    /// committed replica of the file keeps the record (or a longer one).
    pub fn operator_set_sticky(&self, on: &str, id: PnfsId, record: StickyRecord) -> bool {
        let done = self.module(on).env().set_sticky(&id, record.clone(), StickyMode::Overwrite).is_ok();
        if done {
            self.world.trace(format!("operator: {on} {id} sticky {}={}", record.owner, record.expire));
            self.world.store.lock().acked.entry(id).or_default().sticky.push(record);
        }
        done
    }

    /// The pool stops answering and doing anything (a frozen or hung process), or comes back.
    pub fn freeze(&self, name: &str, frozen: bool) {
        let p = pool(name);
        if frozen {
            self.world.hooks.lock().frozen.insert(p);
        } else {
            self.world.hooks.lock().frozen.remove(&p);
        }
        self.world.trace(format!("{name} is now {}", if frozen { "FROZEN" } else { "thawed" }));
    }

    /// Records of failed commits that their undo could not delete (hidden from listings, and
    /// deleted by a later commit or at the pool's restart), in all pools.
    pub fn stuck(&self) -> usize {
        self.world.store.lock().repos.values().map(|r| r.stuck().len()).sum()
    }

    /// A file that may be lost (evicted) like any cached replica: filler, not under test.
    pub fn unprotect(&self, id: &PnfsId) {
        self.world.store.lock().protected.remove(id);
    }

    /// Replicas the sweeper of `on` evicted so far.
    pub fn evicted(&self, on: &str) -> Vec<PnfsId> {
        self.world.store.lock().evicted.get(&pool(on)).cloned().unwrap_or_default()
    }

    /// Puts a replica of an existing file (same bytes) on another pool.
    pub fn add_replica(&mut self, on: &str, id: PnfsId, spec: FileSpec) {
        let data = self.holders(&id).first().map(|(_, r)| r.data.as_ref().clone()).expect("a file that exists");
        self.put(on, id, data, spec);
    }

    fn put(&mut self, on: &str, id: PnfsId, data: Vec<u8>, spec: FileSpec) {
        let now = self.world.now();
        let sum = checksum(&data);
        let attrs = FileAttributes {
            pnfsid: id,
            size: data.len() as u64,
            checksum: Some(sum),
            storage_class: Some(spec.storage_class.into()),
            cache_class: None,
            access_latency: Some(AccessLatency::Online),
            retention_policy: Some(RetentionPolicy::Replica),
            hsm: None,
            creation_time: now - spec.accessed_ago * 1000 - 1000,
            access_time: now - spec.accessed_ago * 1000,
        };
        {
            let mut store = self.world.store.lock();
            let target = store.repos.get_mut(&pool(on)).expect("a known pool");
            target.drain_evicted(&id);
            let mut incoming = target.repo.create(attrs, ReplicaState::FromClient, now).expect("room for a new file");
            let evicted = target.drain_evicted(&id);
            assert!(evicted.is_empty(), "{on} made room for {id} by evicting {evicted:?}: give it more capacity");
            incoming.write(&data).expect("write a new file");
            let made = incoming.commit(spec.state, spec.sticky, Some(sum), now).expect("commit a new file");
            // The bytes written are the data file's (no need to read them back).
            store.sums.insert((pool(on), id), (made.attrs.creation_time, data.len() as u64, sum));
            store.protected.insert(id, (data.len() as u64, sum));
            self.world.check(&mut store, &format!("{on}: put {id}"));
        }
        // The repository announces a new replica, as the pool's does.
        self.world.note_change(&pool(on), id, RepoChange::State { from: ReplicaState::FromClient });
    }

    /// `n` random files on `on`: sizes 1..=4096, cached or precious, some sticky, some pinned.
    pub fn fill(&mut self, on: &str, n: usize) -> Vec<PnfsId> {
        let now = self.world.now();
        (0..n)
            .map(|i| {
                let size = 1 + self.world.random_below(4096) as usize;
                let mut spec =
                    if self.world.random_below(2) == 0 { FileSpec::precious(size) } else { FileSpec::cached(size) };
                spec.accessed_ago = self.world.random_below(864_000) as i64;
                match self.world.random_below(5) {
                    0 => spec = spec.with_sticky("alice", NEVER),
                    1 => spec = spec.with_sticky("bob", now + 86_400_000),
                    2 => spec = spec.with_sticky(&format!("{PIN_PREFIX}-{i}"), NEVER),
                    _ => {}
                }
                self.add_file(on, spec)
            })
            .collect()
    }

    /// Puts a replica of an existing file on another pool whose bytes are damaged but whose
    /// record still carries the right checksum (what `-verify` is for): the bytes rot in the
    /// store after the commit.
    pub fn add_corrupt_replica(&mut self, on: &str, id: PnfsId, spec: FileSpec) {
        let data = self.holders(&id).first().map(|(_, r)| r.data.as_ref().clone()).expect("a file that exists");
        self.put(on, id, data, spec);
        let mut store = self.world.store.lock();
        let target = store.repos.get_mut(&pool(on)).expect("a known pool");
        target.mem.damage_data(&id);
        // Not a step of the store: the checker's view is taken again.
        target.seen = None;
        store.sums.remove(&(pool(on), id));
        store.corrupt.insert((pool(on), id));
    }

    /// A copy of one pool's repository.
    pub fn repo(&self, on: &str) -> BTreeMap<PnfsId, Replica> {
        self.world.store.lock().view(&pool(on), true)
    }

    /// The pools holding a committed replica of `id`, with the replica.
    pub fn holders(&self, id: &PnfsId) -> Vec<(PoolName, Replica)> {
        let mut store = self.world.store.lock();
        let pools: Vec<PoolName> = store.repos.keys().cloned().collect();
        pools
            .into_iter()
            .filter_map(|p| {
                let PoolRepo { repo, mem, .. } = &store.repos[&p];
                let r = repo.get(id).ok().flatten().filter(|r| r.state.is_committed())?;
                let mut data = Vec::new();
                if let Ok(mut read) = mem.open_data(id) {
                    let _ = read.read_to_end(&mut data);
                }
                let key = (p.clone(), *id);
                let (data_len, data_sum) = match store.sums.get(&key) {
                    Some((created, len, sum)) if *created == r.attrs.creation_time => (*len, *sum),
                    _ => {
                        let (len, sum) = (data.len() as u64, checksum(&data));
                        store.sums.insert(key.clone(), (r.attrs.creation_time, len, sum));
                        (len, sum)
                    }
                };
                let corrupt = store.corrupt.contains(&key);
                let entry = Entry { attrs: r.attrs, state: r.state, sticky: r.sticky };
                Some((p, Replica { entry, data: Arc::new(data), data_len, data_sum, receiving: false, corrupt }))
            })
            .collect()
    }

    /// Replicas that are not committed (partial copies), anywhere.
    pub fn partial(&self) -> Vec<(PoolName, PnfsId, ReplicaState)> {
        let views = self.world.store.lock().views();
        views
            .iter()
            .flat_map(|(p, repo)| {
                repo.iter()
                    .filter(|(_, r)| !r.entry.state.is_committed())
                    .map(move |(id, r)| (p.clone(), *id, r.entry.state))
            })
            .collect()
    }

    /// Asserts that the checker never saw a lost file or a visible partial replica.
    pub fn assert_no_violations(&self) {
        let v = self.world.store.lock().violations.clone();
        assert!(v.is_empty(), "invariant violations:\n{}", v.join("\n"));
    }

    // -------------------------------------------------------------- pools

    pub fn set_offline(&self, name: &str, offline: bool) {
        let p = pool(name);
        if offline {
            self.world.offline.lock().insert(p);
        } else {
            self.world.offline.lock().remove(&p);
        }
        self.world.trace(format!("{name} is now {}", if offline { "OFFLINE" } else { "online" }));
    }

    pub fn set_mode(&self, name: &str, mode: PoolMode) {
        self.world.store.lock().modes.insert(pool(name), mode);
        self.world.trace(format!("{name} mode {mode}"));
    }

    /// The next `times` pulls of `id` (anywhere) break.
    pub fn fail_pulls(&self, id: PnfsId, times: u32) {
        self.world.hooks.lock().fail_pulls.insert(id, times);
    }

    /// The next request of `kind` (`Copy`, `Cancel`, `Finished`, ...) to `to` is held up
    /// `extra` on the way (it may arrive after the sender gave up on it).
    pub fn stall_next(&self, kind: &'static str, to: &str, extra: Duration) {
        self.world.hooks.lock().stall.push((kind, pool(to), extra));
    }

    /// Pulls into `name` take `extra` longer.
    pub fn slow_pulls(&self, name: &str, extra: Duration) {
        self.world.hooks.lock().slow.insert(pool(name), extra);
    }

    // -------------------------------------------------------------- jobs

    /// Creates a job on `on` from an admin command's words; returns its id.
    pub fn create(&self, on: &str, kind: JobKind, words: &[&str], targets: &[&str]) -> String {
        let job = grammar::parse_words(kind, words, targets).unwrap_or_else(|e| panic!("{words:?}: {e}"));
        let (def, command) = (job.def, job.command);
        let line = self.module(on).create(def, command).unwrap_or_else(|e| panic!("create on {on}: {e}"));
        self.world.trace(format!("{on}: created {line}"));
        line.trim_start_matches('[').split(']').next().expect("a summary line").to_string()
    }

    /// The dry run of a job on `on` from an admin command's words (`-dry-run` left out).
    pub async fn dry_run(
        &self,
        on: &str,
        kind: JobKind,
        words: &[&str],
        targets: &[&str],
    ) -> Result<tidepool_migration::plan::Plan, MigrationError> {
        let job = grammar::parse_words(kind, words, targets).map_err(|e| MigrationError::invalid(e.message))?;
        self.module(on).dry_run(job.def, job.command).await
    }

    pub fn state(&self, on: &str, job: &str) -> JobState {
        self.module(on).state(job).expect("a job that exists")
    }

    pub fn info(&self, on: &str, job: &str) -> String {
        self.module(on).info(job).expect("a job that exists")
    }

    /// The typed report of job `job` on pool `on` (what `migration info` renders).
    pub fn report(&self, on: &str, job: &str) -> tidepool_migration::report::JobReport {
        self.module(on).reports().into_iter().find(|r| r.id == job).expect("a job that exists")
    }

    /// How many of job `job`'s tasks on pool `on` are copying to `target`.
    pub fn copying(&self, on: &str, job: &str, target: &str) -> usize {
        let report = self.report(on, job);
        report.running.iter().filter(|t| t.state == "Copying" && t.target.as_deref() == Some(target)).count()
    }

    /// Waits (in simulated time, polling every simulated second) until the job's state
    /// satisfies `want`; panics after `limit`.
    pub async fn wait(&self, on: &str, job: &str, limit: Duration, want: impl Fn(JobState) -> bool) -> JobState {
        self.wait_until(limit, &format!("job {job} on {on}"), || want(self.state(on, job))).await;
        self.state(on, job)
    }

    /// Waits until the job ended (any terminal state); panics after `limit`.
    pub async fn wait_end(&self, on: &str, job: &str, limit: Duration) -> JobState {
        self.wait(on, job, limit, JobState::is_terminal).await
    }

    /// Waits (polling every simulated second) until `done()`; panics after `limit`.
    pub async fn wait_until(&self, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
        let until = Instant::now() + limit;
        while !done() {
            assert!(Instant::now() < until, "{what}: not done after {} simulated seconds", limit.as_secs());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Lets everything in flight (late messages, copies served for cancelled attempts, the
    /// finished messages' retries) play out.
    pub async fn settle(&self) {
        let late = self.world.faults.lock().late_delay;
        tokio::time::sleep(Duration::from_secs(400) + late).await;
    }
}

fn start_module(world: &Arc<World>, name: &PoolName) -> Arc<Module<SimEnv>> {
    let env = Arc::new(SimEnv { name: name.clone(), world: world.clone(), generation: world.generation(name) });
    let module = Module::new(env, world.config.settings.clone());
    world.modules.lock().insert(name.clone(), Arc::downgrade(&module));
    module
}
