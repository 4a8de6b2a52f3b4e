//! The job core: every decision a job makes, as one function ([`decide`]) from the job's
//! state, one event of a closed enum ([`JobEvent`]) and a read-only view of the world
//! ([`World`]) to the actions the driver performs. No IO, no clock and no lock in here: the
//! clocks, the local repository, the pool's figures, the task ids and the file locks come
//! through [`World`], which the driver implements over the module and the tests over plain
//! data.

use super::*;

/// Everything that reaches a job: the one way its state changes.
pub(super) enum JobEvent {
    /// The job starts (created or restored).
    Start,
    /// The initial scan ended: the files found, and the queue built of them off the lock.
    Scanned(Result<(Vec<(PnfsId, u64)>, Queue), EnvError>),
    /// A scan after lost repository changes found these files (permanent jobs).
    Rescanned(Vec<(PnfsId, u64)>),
    /// The periodic refresh of the targets is due.
    RefreshDue,
    /// The targets answered a refresh, in the job's target order (`None`: no answer); then
    /// the targets the membership knows are not alive (etcd: their lease lapsed), which get no
    /// grace for a missed answer.
    Refreshed(Vec<(PoolName, Option<PoolCost>)>, Vec<PoolName>),
    /// The answers to a location question about `ids` asked of `pools` (`None`: the pool did
    /// not answer).
    Located { ids: Vec<PnfsId>, pools: Vec<PoolName>, answers: HashMap<PoolName, Option<HashMap<PnfsId, Held>>> },
    /// The answers of `to` to copy requests, one task event per file; `undelivered`: the
    /// request never reached the pool.
    CopyAnswered { to: PoolName, undelivered: bool, answers: Vec<(PnfsId, TaskEvent)> },
    /// Other news for tasks: ping answers, finished messages.
    Tasks(Vec<(PnfsId, TaskEvent)>),
    /// The tasks' timers due by now ([`World::tick`]) run out.
    TimersDue,
    /// The wake-up armed with this sequence number is due.
    Wake(u64),
    /// The source modes of these files were applied (or not).
    SourceModesApplied(Vec<(PnfsId, Result<Applied, EnvError>)>),
    /// The repository changed `id`; `entry` is what it holds now (`None`: gone).
    RepoChanged { id: PnfsId, change: RepoChange, entry: Option<Entry> },
    /// An operator's command (a pool shutdown is `Cancel { force: true, .. }`).
    Operator(Command),
}

/// An operator's command to one job.
pub(super) enum Command {
    Suspend,
    Resume,
    /// Without `force` the running tasks finish first; with it they are cancelled on their
    /// targets too.
    Cancel {
        force: bool,
        reason: String,
    },
    SetConcurrency(usize),
}

/// What the core sees of the world, and the few things it shares with the pool's other jobs.
pub(super) trait World {
    /// The wall clock: backoff, notes, filters, sticky lifetimes.
    fn now(&self) -> EpochMillis;
    /// The runtime's clock: task timers, freshness of location answers, offline grace.
    fn tick(&self) -> tokio::time::Instant;
    /// The clock of the job's rate in `migration info`.
    fn rate_clock(&self) -> Instant;
    /// The local time, for the `time.*` symbols of expressions.
    fn local_time(&self) -> chrono::NaiveDateTime;
    /// The source pool.
    fn pool(&self) -> &PoolName;
    fn cost(&self) -> PoolCost;
    fn pin_prefix(&self) -> &str;
    /// A replica of the local repository.
    fn entry(&self, id: &PnfsId) -> Result<Option<Entry>, EnvError>;
    /// A task id unique in the pool.
    fn next_task(&mut self) -> TaskId;
    /// Claims the file lock of `id` for the job: false if another job holds it.
    fn claim(&mut self, id: &PnfsId) -> bool;
    /// Gives the file lock of `id` back, if the job holds it.
    fn release(&mut self, id: &PnfsId);
    /// Gives back every file lock the job holds.
    fn release_all(&mut self);
}

/// What a job is, as the core reads it: fixed for the visit.
pub(super) struct JobView<'a> {
    pub(super) id: JobId,
    pub(super) def: &'a JobDefinition,
    /// `-tmode` records with their expiry counted from the job's creation.
    pub(super) tmode: &'a [StickyRecord],
    pub(super) settings: &'a Settings,
    /// The high bits of the attempt ids of this run of the pool.
    pub(super) epoch: u64,
}

/// What one event decided: the actions to perform once the job's lock is released, and the
/// answer to an operator's command.
pub(super) struct Decision {
    pub(super) actions: Vec<Action>,
    pub(super) reply: Result<(), MigrationError>,
}

/// The job core: takes `event`, then runs the scheduler and sends the location questions due.
pub(super) fn decide(job: &JobView<'_>, s: &mut JobInner, event: JobEvent, world: &mut impl World) -> Decision {
    let mut cx = Cx { job, s, world, actions: Vec::new() };
    let reply = cx.event(event);
    cx.schedule();
    cx.maybe_locate();
    Decision { actions: cx.actions, reply }
}

/// The context of one decision.
struct Cx<'a, W: World> {
    job: &'a JobView<'a>,
    s: &'a mut JobInner,
    world: &'a mut W,
    actions: Vec<Action>,
}

impl<W: World> Cx<'_, W> {
    /// What the job does with one event, before the scheduler runs.
    fn event(&mut self, event: JobEvent) -> Result<(), MigrationError> {
        match event {
            JobEvent::Start => {
                self.set_state(JobState::Initializing);
                self.s.started = Some(self.world.rate_clock());
            }
            JobEvent::Scanned(scanned) => self.scanned(scanned),
            JobEvent::Rescanned(files) => {
                for (id, size) in files {
                    self.add(id, size);
                }
            }
            JobEvent::RefreshDue => {
                // One refresh at a time: a wake-up may have started one.
                if !std::mem::replace(&mut self.s.refreshing, true) {
                    self.actions.push(Action::Refresh);
                }
            }
            JobEvent::Refreshed(answers, gone) => self.refreshed(answers, &gone),
            JobEvent::Located { ids, pools, answers } => self.answered(ids, pools, answers),
            JobEvent::CopyAnswered { to, undelivered, answers } => {
                if undelivered {
                    self.unreachable(&to);
                }
                for (id, event) in answers {
                    self.feed(id, event);
                }
            }
            JobEvent::Tasks(events) => {
                for (id, event) in events {
                    self.feed(id, event);
                }
            }
            JobEvent::TimersDue => {
                let now = self.world.tick();
                while let Some(entry) = self.s.timers.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let (key, (pnfsid, attempt)) = entry.remove_entry();
                    if let Some(r) = self.s.running.get_mut(&pnfsid)
                        && r.timer == Some(key)
                    {
                        r.timer = None;
                        self.feed(pnfsid, TaskEvent::Timer { attempt });
                    }
                }
            }
            JobEvent::Wake(seq) => {
                if self.s.wake_seq != seq {
                    return Ok(());
                }
                self.s.wake_at = None;
                if self.s.state == JobState::Sleeping {
                    self.set_state(JobState::Running);
                }
                if self.s.state == JobState::Paused {
                    self.pause_check();
                }
                // No target usable, or files waiting to be tried again: look at the targets
                // again now rather than at the next refresh, so that a target that became
                // usable again (enabled, room made, restarted) is used within the backoff.
                if usable(self.s).next().is_none() || self.s.queue.waiting() > 0 {
                    self.refresh_soon();
                }
            }
            JobEvent::SourceModesApplied(results) => {
                for (id, applied) in results {
                    self.source_mode_applied(id, applied);
                }
            }
            JobEvent::RepoChanged { id, change, entry } => self.repository_changed(id, change, entry),
            JobEvent::Operator(command) => return self.command(command),
        }
        Ok(())
    }

    fn command(&mut self, command: Command) -> Result<(), MigrationError> {
        match command {
            Command::Suspend => match self.s.state {
                JobState::Suspended => {}
                JobState::Running | JobState::Sleeping | JobState::Paused => self.set_state(JobState::Suspended),
                _ => return Err(MigrationError::invalid("Cannot suspend a job that does not run")),
            },
            Command::Resume => {
                if self.s.state != JobState::Suspended {
                    return Err(MigrationError::invalid("Cannot resume a job that does not run"));
                }
                self.set_state(JobState::Running);
            }
            Command::Cancel { force, reason } => {
                let state = self.s.state;
                if state.is_terminal() {
                    return Ok(());
                }
                tracing::info!(job = %self.job.id, force, "cancelling job: {reason}");
                if state != JobState::Initializing && self.s.running.is_empty() {
                    self.set_state(JobState::Cancelled);
                    return Ok(());
                }
                self.set_state(JobState::Cancelling);
                self.actions.push(Action::Halt);
                self.s.queue.clear();
                if force {
                    let ids: Vec<PnfsId> = self.s.running.keys().copied().collect();
                    for id in ids {
                        self.feed(id, TaskEvent::Cancel { reason: reason.clone() });
                    }
                }
            }
            Command::SetConcurrency(n) => self.s.concurrency = n,
        }
        Ok(())
    }

    /// The initial scan ended.
    fn scanned(&mut self, scanned: Result<(Vec<(PnfsId, u64)>, Queue), EnvError>) {
        match scanned {
            Ok((files, queue)) => {
                if self.s.state != JobState::Initializing {
                    return;
                }
                let n = files.len();
                if self.s.queue.is_empty() && self.s.queue.stats().total == 0 {
                    self.s.queue = queue;
                } else {
                    // A permanent job may have queued changes during the scan.
                    for (id, size) in files {
                        self.s.queue.add(id, size);
                    }
                }
                tracing::info!(job = %self.job.id, files = n, "job initialised");
                self.set_state(JobState::Running);
            }
            Err(e) => {
                self.note(None, None, format!("Failed to scan the repository: {e}"));
                if self.s.state == JobState::Initializing {
                    self.set_state(JobState::Failed);
                }
            }
        }
    }

    /// The targets answered a refresh: their figures, who is offline since when, who passes
    /// `-include-when`/`-exclude-when`, and who restarted. A silent target keeps its figures
    /// for one refresh (an answer lost on its way), unless it is in `gone`.
    fn refreshed(&mut self, answers: Vec<(PoolName, Option<PoolCost>)>, gone: &[PoolName]) {
        let now = self.world.tick();
        let source = self.world.cost();
        self.s.refreshing = false;
        let asked_at = self.s.room.asked_at;
        self.s.room = RoomView { answered_at: Some(self.world.now()), reserved: false, asked_at, awaiting: false };
        let before = self.s.infos.take().unwrap_or_default();
        let mut infos: Vec<TargetInfo> = answers
            .into_iter()
            .map(|(name, cost)| {
                let mut t = TargetInfo {
                    name,
                    cost,
                    misses: 0,
                    offline_since: None,
                    eligible: true,
                    last_run: None,
                    unreachable: false,
                };
                let old = before.iter().find(|o| o.name == t.name);
                if t.cost.is_none()
                    && let Some(old) = old
                {
                    t.misses = old.misses + 1;
                    // Still silent: it stays unreachable, whatever figures it keeps.
                    t.unreachable = old.unreachable;
                    if t.misses < 2 && !gone.contains(&t.name) {
                        t.cost = old.cost;
                    }
                }
                if t.cost.is_none() {
                    t.offline_since = Some(old.and_then(|o| o.offline_since).unwrap_or(now));
                }
                t
            })
            .collect();
        for t in infos.iter_mut() {
            if let Some(cost) = t.cost {
                t.eligible = self.eligible(&source, &t.name, &cost);
            }
        }
        // A target that answers with a new run restarted: the copies it was making for
        // the job are gone, and no outcome of theirs will come.
        let restarted: Vec<PoolName> = infos
            .iter()
            .filter(|t| {
                let run = |c: &Option<PoolCost>| c.map(|c| c.run).filter(|r| *r != 0);
                let old = before.iter().find(|o| o.name == t.name).and_then(|o| run(&o.cost).or(o.last_run));
                matches!((old, run(&t.cost)), (Some(a), Some(b)) if a != b)
            })
            .map(|t| t.name.clone())
            .collect();
        for t in infos.iter_mut() {
            let old = before.iter().find(|o| o.name == t.name);
            t.last_run = t.cost.map(|c| c.run).filter(|r| *r != 0).or(old.and_then(|o| o.last_run));
        }
        self.s.infos = Some(infos);
        for pool in restarted {
            self.target_restarted(&pool);
        }
        if self.s.state == JobState::Sleeping && usable(self.s).next().is_some() {
            // The targets are known now: no need to wait for the next look.
            self.set_state(JobState::Running);
        }
    }

    /// The answers to a location question: the holders of each file, kept for its task (or
    /// for a while, for a file still queued).
    fn answered(
        &mut self,
        ids: Vec<PnfsId>,
        pools: Vec<PoolName>,
        answers: HashMap<PoolName, Option<HashMap<PnfsId, Held>>>,
    ) {
        let (eager, grace) = (self.job.def.eager, self.job.settings.offline_grace);
        let tick = self.world.tick();
        self.s.locating = false;
        let stale = std::mem::take(&mut self.s.stale);
        let recently_offline: Vec<PoolName> = self
            .s
            .infos
            .iter()
            .flatten()
            .filter(|t| {
                t.cost.is_none() && t.offline_since.is_some_and(|since| tick.saturating_duration_since(since) < grace)
            })
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
            self.s.located.insert(*id, (tick, holders));
        }
        for id in ids.into_iter().filter(|id| !stale.contains(id)) {
            if self.s.want_locate.remove(&id)
                && self.s.running.get(&id).is_some_and(|r| r.task.state() == TaskState::GettingLocations)
            {
                let holders = self.s.located.remove(&id).map(|(_, h)| h).unwrap_or_default();
                let event = self.located(&id, holders);
                self.feed(id, event);
            }
        }
    }

    /// The repository changed a file (docs/dcache-compatibility.md#permanent-jobs-and-save). A deleted file
    /// leaves the job (its running task is cancelled); a queued file that no longer matches leaves the queue (a
    /// running task goes on); a permanent job adds a file that has come to match.
    fn repository_changed(&mut self, id: PnfsId, change: RepoChange, entry: Option<Entry>) {
        let now = self.world.now();
        let job = self.job;
        let filter = &job.def.filter;
        let Some(entry) = entry.as_ref().filter(|e| e.state != ReplicaState::Removed) else {
            if let Removal::Running(_) = self.s.queue.remove_because(&id, Fate::GoneFromSource) {
                self.feed(id, TaskEvent::Cancel { reason: "replica deleted".into() });
            }
            return;
        };
        let matches = filter.accepts(&candidate(entry), now);
        if self.s.queue.contains(&id) {
            if !matches && !self.s.running.contains_key(&id) {
                self.s.queue.remove(&id);
                tracing::debug!(job = %self.job.id, %id, "file changed and no longer matches; dropped");
            }
            return;
        }
        if !job.def.permanent || !matches {
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
            self.add(id, entry.attrs.size);
        }
    }

    fn set_state(&mut self, to: JobState) {
        let from = self.s.state;
        if let Err(e) = transition(&mut self.s.state, to) {
            tracing::error!(job = %self.job.id, "{e}");
            return;
        }
        tracing::debug!(job = %self.job.id, "job {from} -> {to}");
        if to.is_terminal() {
            // Whatever file lock the job still holds goes (none should be left).
            self.world.release_all();
            self.s.queue.clear();
            self.s.located.clear();
            self.s.want_locate.clear();
            self.actions.push(Action::Ended);
            tracing::info!(job = %self.job.id, state = %to, "job ended");
        }
    }

    fn note(&mut self, task: Option<TaskId>, pnfsid: Option<PnfsId>, message: String) {
        self.note_about(task, pnfsid, message, Noted::Other);
    }

    fn note_about(&mut self, task: Option<TaskId>, pnfsid: Option<PnfsId>, message: String, about: Noted) {
        if self.s.notes.len() == NOTES {
            self.s.notes.pop_front();
        }
        self.s.notes.push_back(NoteLine {
            at: self.world.now(),
            task: task.map(|t| t.0).unwrap_or(0),
            pnfsid: pnfsid.map(|p| p.to_string()),
            message,
            about,
        });
    }

    /// The scheduler (docs/dcache-compatibility.md#scheduling), with failed files waiting out their backoff.
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
        let now = self.world.now();
        self.s.queue.wake(now);
        // The lifetime conditions come before the targets: `-stop-when='targets == 0'` must
        // stop a job that has no usable target left.
        if self.s.infos.is_some() && self.s.queue.queued_count() > 0 && self.lifetime_conditions() {
            return;
        }
        let wait = self.job.def.deficit == DeficitMode::Wait;
        if self.s.infos.is_none() || (wait && usable(self.s).next().is_none()) {
            // Targets not known yet, or none online: look again later.
            self.sleep(now);
            return;
        }
        let mut free = self.s.concurrency.saturating_sub(self.s.units.len());
        // A batched unit is free before its files' source modes are applied, so that the next
        // batch's copies overlap the last one's removals; but while twice as many files as the
        // job's units can carry wait for theirs (slow or failing flushes), no new unit starts:
        // the files under way stay within three times what the units carry.
        let finishing = self.s.running.values().filter(|r| r.finishing).count();
        let carried = self.s.concurrency.saturating_mul(self.job.settings.batch_files.max(1));
        if finishing >= carried.saturating_mul(2) {
            free = 0;
        }
        if free > 0 && self.room_stale(now) {
            // No target has room for the next file as the job sees them, but the view is
            // stale: the targets are asked again, and the job decides on their answer.
            return;
        }
        if free > 0 {
            let (units, busy) = self.pick_units(free);
            for id in busy {
                if self.s.locked_noted.insert(id) {
                    self.note_about(None, Some(id), "File is locked".into(), Noted::FileLocked);
                }
            }
            let mut units = units.into_iter();
            for files in units.by_ref() {
                self.start_unit(files, now);
                if self.s.state != JobState::Running {
                    break;
                }
            }
            // Locks claimed for files that did not start go back.
            for id in units.flatten() {
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

    /// The next units to start, at most `free`, in queue order, with the file lock of each of
    /// their files claimed, and the queued files passed over because another job works on
    /// them. Small files (at most [`SMALL_FILE`]) gather into batches of up to
    /// `batch_files` files and `batch_bytes` bytes; a larger file is a unit of its own, and
    /// closes the batch being filled, so files start in the order they were queued.
    fn pick_units(&mut self, free: usize) -> (Vec<Vec<PnfsId>>, Vec<PnfsId>) {
        let max_files = if self.batched() { self.job.settings.batch_files } else { 1 };
        let max_bytes = self.job.settings.batch_bytes;
        let mut units: Vec<Vec<PnfsId>> = Vec::new();
        // The bytes of the last unit, while it may take more small files.
        let mut open: Option<u64> = None;
        let mut busy = Vec::new();
        // No more bytes than the targets have room for as the job sees them (beyond the first
        // file): the files past that wait for the targets' next answer (`room_stale`) rather
        // than fail for want of room on figures the job counted itself.
        let room: u64 = usable(self.s)
            .filter_map(|t| t.cost.filter(|c| c.accepts))
            .fold(0u64, |sum, c| sum.saturating_add(c.space.free.saturating_add(c.space.removable)));
        let mut taken = 0u64;
        // The file lock is claimed here, in the same step that finds it free
        // ([`World::claim`]), so two jobs never both start a task on one file.
        for id in self.s.queue.queued() {
            let size = self.s.queue.size(id);
            if taken > 0 && taken.saturating_add(size) > room {
                break;
            }
            let small = max_files > 1 && size <= SMALL_FILE && size <= max_bytes;
            let joins = small
                && open.is_some_and(|bytes| bytes + size <= max_bytes)
                && units.last().is_some_and(|u| u.len() < max_files);
            if !joins && units.len() == free {
                break;
            }
            if !self.world.claim(id) {
                busy.push(*id);
                continue;
            }
            taken = taken.saturating_add(size.max(1));
            if joins {
                units.last_mut().expect("an open unit").push(*id);
                open = open.map(|bytes| bytes + size);
            } else {
                units.push(vec![*id]);
                open = small.then_some(size);
            }
        }
        (units, busy)
    }

    /// Starts a unit: a task for each of its files, whose locks the job holds.
    fn start_unit(&mut self, files: Vec<PnfsId>, now: EpochMillis) {
        let unit = self.s.next_unit;
        self.s.next_unit += 1;
        // Counted from the start, so a task that ends at once does not end the unit before its
        // other files started.
        self.s.units.insert(unit, Unit { tasks: 1, files: 0, target: None });
        let mut files = files.into_iter();
        for id in files.by_ref() {
            self.start_task(id, now, unit);
            if self.s.state != JobState::Running {
                break;
            }
        }
        for id in files {
            self.unlock(&id);
        }
        self.unit_task_ended(unit);
    }

    /// Whether the job carries small files in batches. A job with a condition on the pools'
    /// figures (`-stop-when`, `-pause-when`, `-include-when`, `-exclude-when`) starts its files
    /// one by one, each unit held until its file's source mode is applied, so that its
    /// conditions are looked at before every file, as they are in dCache: a rebalance stops
    /// within a few files of its level, not a few batches.
    fn batched(&self) -> bool {
        let def = &self.job.def;
        self.job.settings.batch_files > 1
            && def.stop_when.is_none()
            && def.pause_when.is_none()
            && def.include_when.is_none()
            && def.exclude_when.is_none()
    }

    /// One task of a unit ended; the unit ends with its last.
    fn unit_task_ended(&mut self, unit: u64) {
        if let Some(u) = self.s.units.get_mut(&unit) {
            u.tasks -= 1;
            if u.tasks == 0 {
                self.s.units.remove(&unit);
            }
        }
    }

    /// `-stop-when` and `-pause-when` (docs/dcache-compatibility.md#scheduling); true if one of them held
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
    /// once, docs/dcache-compatibility.md#dcache-defects-not-reproduced); the stop condition is looked at first.
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
        let now = self.world.now();
        self.s.wake_at = None;
        self.wake_at(now + self.job.settings.sleep.as_millis() as i64, now);
    }

    /// Stops the job: no new task; FINISHED once the running ones end.
    fn stop(&mut self) {
        tracing::info!(job = %self.job.id, "stop condition holds; the job stops");
        if self.s.running.is_empty() {
            self.set_state(JobState::Finished);
        } else {
            self.set_state(JobState::Stopping);
        }
    }

    /// Evaluates a lifetime condition; an error is noted and counts as false.
    fn condition(&mut self, e: &Expr, option: &str) -> bool {
        let source = self.world.cost();
        let name = self.world.pool().clone();
        let files = (self.s.queue.queued_count() + self.s.queue.waiting()) as f64;
        let bytes = self.s.queue.bytes_left() as f64;
        let targets = online(self.s).count() as f64;
        let now = self.world.local_time();
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

    /// Whether the job must ask its targets again before it decides that none has room: the
    /// next queued file fits on no usable target as the job sees them, and those figures are
    /// stale (the job counted copies of its own against them since they came, or they are
    /// older than [`ROOM_FRESH`]). Asks (one refresh at a time, at most one per
    /// [`ROOM_FRESH`], else a wake-up when the next may go) and returns true: the scheduler
    /// starts nothing until the answer.
    fn room_stale(&mut self, now: EpochMillis) -> bool {
        let Some(size) = self.s.queue.queued().next().map(|id| self.s.queue.size(id)) else { return false };
        let (mut open, mut room) = (false, false);
        for c in usable(self.s).filter_map(|t| t.cost.filter(|c| c.accepts)) {
            open = true;
            room |= c.space.free.saturating_add(c.space.removable) >= size.max(1);
        }
        // No target at all (offline, disabled) is not a question of room.
        if !open || room {
            return false;
        }
        if self.room_fresh(now) {
            return false;
        }
        let fresh_ms = ROOM_FRESH.as_millis() as i64;
        let room = &self.s.room;
        if room.awaiting {
            return true;
        }
        if let Some(asked) = room.asked_at
            && now.saturating_sub(asked) < fresh_ms
        {
            self.wake_at(asked + fresh_ms, now);
            return true;
        }
        tracing::debug!(job = %self.job.id, size, "no target has room as last seen; asking them again first");
        self.s.room.asked_at = Some(now);
        self.s.room.awaiting = true;
        self.refresh_soon();
        true
    }

    /// Whether the targets' figures are their own answer of less than [`ROOM_FRESH`] ago, with
    /// no copy of the job counted against them since.
    fn room_fresh(&self, now: EpochMillis) -> bool {
        let room = &self.s.room;
        !room.reserved && room.answered_at.is_some_and(|at| now.saturating_sub(at) < ROOM_FRESH.as_millis() as i64)
    }

    /// Counts a new copy against the target's figures at once, until the next refresh replaces
    /// them: the job neither piles copies onto a pool that looked emptiest at the last refresh
    /// nor keeps sending to a pool its `-include-when` no longer admits (a rebalance would
    /// overfill the pools below the level).
    fn reserve(&mut self, target: &PoolName, size: u64) {
        let Some(info) = self.s.infos.iter_mut().flatten().find(|t| t.name == *target) else { return };
        let Some(mut cost) = info.cost else { return };
        self.s.room.reserved = true;
        cost.space.used = cost.space.used.saturating_add(size);
        cost.space.free = cost.space.free.saturating_sub(size);
        info.cost = Some(cost);
        let source = self.world.cost();
        let eligible = self.eligible(&source, target, &cost);
        if let Some(info) = self.s.infos.iter_mut().flatten().find(|t| t.name == *target) {
            info.eligible = eligible;
        }
    }

    /// Whether a target passes `-include-when` (unless `-include` was given) and
    /// `-exclude-when` (docs/dcache-compatibility.md#the-expression-language); one that cannot be evaluated
    /// is left out, with a note.
    fn eligible(&mut self, source: &PoolCost, target: &PoolName, cost: &PoolCost) -> bool {
        let def = &self.job.def;
        if def.include_when.is_none() && def.exclude_when.is_none() {
            return true;
        }
        let source_name = self.world.pool().clone();
        let now = self.world.local_time();
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

    /// Asks the targets for their figures now, unless a refresh is under way.
    fn refresh_soon(&mut self) {
        if !std::mem::replace(&mut self.s.refreshing, true) {
            self.actions.push(Action::Refresh);
        }
    }

    fn sleep(&mut self, now: EpochMillis) {
        if self.s.state == JobState::Running {
            self.set_state(JobState::Sleeping);
        }
        if self.job.def.permanent && self.s.queue.is_empty() {
            // An idle permanent job waits for the next change of the repository, not a timer.
            return;
        }
        let mut at = now + self.job.settings.sleep.as_millis() as i64;
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

    /// Starts a task of `unit` for a queued file whose lock the job holds (claimed in
    /// `schedule`).
    fn start_task(&mut self, id: PnfsId, now: EpochMillis, unit: u64) {
        self.s.locked_noted.remove(&id);
        let task_id = self.world.next_task();
        self.s.queue.start(id, task_id);
        let entry = match self.world.entry(&id) {
            Ok(Some(e)) if e.state.is_committed() => e,
            Ok(_) => {
                // Gone (or going) since the scan: nothing to do (reported as gone from source).
                self.s.queue.gone(&id);
                self.unlock(&id);
                return;
            }
            Err(e) => {
                self.note(Some(task_id), Some(id), format!("Failed to read the replica: {e}"));
                // The failure as `migration info` lists it.
                self.s.queue.failed(&id, false, RemoteError::from(e), now, &self.job.settings.backoff);
                self.unlock(&id);
                return;
            }
        };
        let def = &self.job.def;
        let prefix = self.world.pin_prefix();
        let (state, sticky) =
            crate::update::target_request(def.tmode.state, self.job.tmode, entry.state, &entry.sticky, prefix, now);
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
            timers: self.job.settings.timers.clone(),
        };
        let base = self.job.epoch | ((task_id.0 & 0xfff_ffff) << 12);
        let task = Task::new(plan, base);
        let running = Running { id: task_id, task, unit, timer: None, entry, state, sticky, pins, finishing: false };
        self.s.running.insert(id, running);
        if let Some(u) = self.s.units.get_mut(&unit) {
            u.tasks += 1;
            u.files += 1;
        }
        self.feed(id, TaskEvent::Start);
    }

    /// Adds a file to the queue (docs/dcache-compatibility.md#scheduling); wakes a sleeping job.
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
            let now = self.world.now();
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

    /// A target restarted (it answered with a new run): each task whose copy it had taken on
    /// learns that the copy is gone, at once rather than after its ping and the wait for a
    /// finished message, and goes on as after a failed copy there. (A copy the new run took on
    /// before the job saw the restart is given up too: its replica is found by the file's
    /// next try, and nothing is lost.)
    fn target_restarted(&mut self, pool: &PoolName) {
        let lost: Vec<(PnfsId, AttemptId)> = self
            .s
            .running
            .iter()
            .filter_map(|(id, r)| r.task.accepted_attempt().filter(|(_, t)| *t == pool).map(|(a, _)| (*id, a)))
            .collect();
        if lost.is_empty() {
            return;
        }
        let msg = format!("Pool {pool} restarted; the copies it was making were lost and are tried again");
        tracing::info!(job = %self.job.id, %pool, files = lost.len(), "{msg}");
        self.note_about(None, None, msg.clone(), Noted::TargetRestarted(pool.clone()));
        for (id, attempt) in lost {
            let error = RemoteError::new(ErrorCode::Offline, msg.clone());
            self.feed(id, TaskEvent::Finished { attempt, target: pool.clone(), result: Err(error) });
        }
    }

    /// A copy request to `pool` could not be delivered: no new copy goes there until a
    /// refresh hears from it again, so the job does not send the rest of its queue there to
    /// fail one file after another (a job that waits for targets sleeps if none is left). It
    /// is still asked who holds what: a lost request does not make its replicas unknown.
    fn unreachable(&mut self, pool: &PoolName) {
        let Some(t) = self.s.infos.iter_mut().flatten().find(|t| t.name == *pool && !t.unreachable) else { return };
        t.unreachable = true;
        let msg = format!("Pool {pool} is not reachable; no new copies go there until it answers again");
        self.note_about(None, None, msg, Noted::TargetUnreachable(pool.clone()));
    }

    fn unlock(&mut self, id: &PnfsId) {
        self.world.release(id);
    }

    /// Feeds an event to a file's task and carries out what it asks.
    fn feed(&mut self, id: PnfsId, event: TaskEvent) {
        let mut work = VecDeque::from([event]);
        while let Some(event) = work.pop_front() {
            let Some(r) = self.s.running.get_mut(&id) else { return };
            let size = r.entry.attrs.size;
            let infos: Vec<PoolInfo> = usable(self.s)
                .filter(|t| t.cost.is_some_and(|c| c.accepts))
                .map(|t| {
                    let c = t.cost.expect("online pools have a cost");
                    PoolInfo { name: t.name.clone(), space: c.space, load: c.load }
                })
                .collect();
            let strategy = self.job.def.select;
            let r = self.s.running.get_mut(&id).expect("looked up above");
            let unit = self.s.units.get(&r.unit);
            // The unit's target first, while it has room: a batch goes to one pool.
            let preferred = unit.and_then(|u| u.target.as_ref()).and_then(|t| infos.iter().find(|i| i.name == *t));
            let rng = &mut self.s.rng;
            let rng = std::cell::RefCell::new(rng);
            let selector = |exclude: &BTreeSet<PoolName>| -> Result<PoolName, NoTarget> {
                let exclude: Vec<PoolName> = exclude.iter().cloned().collect();
                let mut rng = rng.borrow_mut();
                if let Some(p) = preferred
                    && let Ok(p) = select::select(strategy, std::slice::from_ref(p), &exclude, size, &mut rng)
                {
                    return Ok(p.name.clone());
                }
                select::select(strategy, &infos, &exclude, size, &mut rng).map(|p| p.name.clone())
            };
            if !r.finishing {
                // (A finishing task's file is being removed or released: its cancel is moot.)
                log_event(&self.job.id, r.id, id, &event);
            }
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
                let tick = self.world.tick();
                let fresh = |at: &tokio::time::Instant| tick.saturating_duration_since(*at) < LOCATED_FRESH;
                if let Some((_, holders)) = self.s.located.remove(&id).filter(|(at, _)| fresh(at)) {
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
                    job: self.job.id.clone(),
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
                let (size, unit) = (r.entry.attrs.size, r.unit);
                if !existing {
                    if let Some(u) = self.s.units.get_mut(&unit) {
                        u.target.get_or_insert_with(|| target.clone());
                    }
                    self.reserve(&target, size);
                }
                tracing::debug!(job = %self.job.id, task = %req.task, %attempt, pnfsid = %id, %target, existing, "copy sent");
                self.actions.push(Action::Copy { to: target, unit, pnfsid: id, attempt, req: Box::new(req) });
            }
            Effect::Ping { target, attempt } => {
                tracing::debug!(job = %self.job.id, task = %r.id, %attempt, pnfsid = %id, %target, "ping sent");
                self.actions.push(Action::Ping { to: target, pnfsid: id, attempt })
            }
            Effect::Cancel { target, attempt, reason } => {
                tracing::debug!(job = %self.job.id, task = %r.id, %attempt, pnfsid = %id, %target, "cancel sent: {reason}");
                self.actions.push(Action::Cancel { to: target, attempt, reason })
            }
            Effect::Timer { attempt, after } => {
                // A task has one timer: a new one replaces the one it had.
                if let Some(old) = r.timer.take() {
                    self.s.timers.remove(&old);
                }
                self.s.timer_seq += 1;
                let key = (self.world.tick() + after, self.s.timer_seq);
                r.timer = Some(key);
                let soonest = self.s.timers.first_key_value().is_none_or(|(first, _)| key < *first);
                self.s.timers.insert(key, (id, attempt));
                if soonest {
                    self.actions.push(Action::TimerSet);
                }
            }
            Effect::Finish(outcome) => self.task_ended(id, outcome),
        }
    }

    fn task_ended(&mut self, id: PnfsId, outcome: Outcome) {
        let now = self.world.now();
        let Some(r) = self.s.running.get_mut(&id) else { return };
        let task = r.id;
        let unit = r.unit;
        let attempt = r.task.last_attempt().map(tracing::field::display);
        if let Some(timer) = r.timer.take() {
            self.s.timers.remove(&timer);
        }
        // A batched job's unit is free once its tasks ended, while the source modes of its
        // files are applied; an unbatched job's unit once its file is through.
        let confirmed = matches!(&outcome, Outcome::Done { replicas } if safety::source_mode_due(replicas.len(), self.job.def.replicas));
        if self.batched() || !confirmed {
            self.unit_task_ended(unit);
        }
        let Some(r) = self.s.running.get_mut(&id) else { return };
        self.s.want_locate.remove(&id);
        // The file's own attempts may have changed where it is.
        self.s.located.remove(&id);
        if self.s.locating {
            self.s.stale.insert(id);
        }
        match outcome {
            Outcome::Done { replicas } => {
                // The source mode comes first (docs/dcache-compatibility.md#scheduling); the file counts as
                // done after it.
                r.finishing = true;
                if !safety::source_mode_due(replicas.len(), self.job.def.replicas) {
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
                    self.s.queue.failed(&id, true, error, now, &self.job.settings.backoff);
                    return;
                }
                let moved_pins = if r.task.pins_moved() { r.pins.clone() } else { Vec::new() };
                let snapshot = Snapshot::of(r.entry.state, &r.entry.sticky, self.world.pin_prefix());
                tracing::debug!(job = %self.job.id, %task, attempt, pnfsid = %id, replicas = ?replicas, "task done");
                self.actions.push(Action::SourceModes(vec![SourceModeItem {
                    pnfsid: id,
                    confirmed: replicas.len(),
                    moved_pins,
                    snapshot,
                }]));
            }
            Outcome::Failed { permanent, error: failure } => {
                // As `migration info` lists it: dCache's text, with the code.
                let mut error = RemoteError::from(&failure);
                self.s.running.remove(&id);
                self.unlock(&id);
                // No target could take it: the operator sees which targets were out, and why.
                if error.code() == Some(ErrorCode::Offline) {
                    let out: Vec<String> = unusable(self.s).map(|(pool, why)| format!("{pool} {why}")).collect();
                    if !out.is_empty() {
                        error.message = format!("{} (targets out: {})", error.message, out.join("; "));
                    }
                }
                let what = if permanent { "failed for good" } else { "failed; retried later" };
                tracing::warn!(job = %self.job.id, %task, attempt, pnfsid = %id, rc = error.code, "file {what}: {}", error.message);
                self.note_about(Some(task), Some(id), error.message.clone(), Noted::Failed(Box::new(failure)));
                // No target could take it (all full, offline, unreachable): the view may be
                // stale (the job counts its own copies against figures from before they
                // landed): the targets are asked again now, so the retry sees what they are.
                // (Not when the view is fresh: the failure was decided on the targets' own
                // answer, and a refresh per failed file would flood them.)
                if error.code() == Some(ErrorCode::Offline) && !self.room_fresh(self.world.now()) {
                    self.refresh_soon();
                }
                self.s.queue.failed(&id, permanent, error, now, &self.job.settings.backoff);
            }
            Outcome::Cancelled => {
                self.s.running.remove(&id);
                self.unlock(&id);
                self.s.queue.cancelled(&id);
            }
        }
    }

    fn source_mode_applied(&mut self, id: PnfsId, applied: Result<Applied, EnvError>) {
        let Some(r) = self.s.running.remove(&id) else { return };
        let attempt = r.task.last_attempt().map(tracing::field::display);
        self.unlock(&id);
        if !self.batched() {
            self.unit_task_ended(r.unit);
        }
        match applied {
            Ok(Applied::Changed) => {
                // An operator changed the source (state or sticky records) while it moved: its
                // copies were made from what it was before. The file goes round again, so the
                // copies are brought up to date before the source mode is applied.
                let msg = "Source replica changed while it was copied (state or sticky records); \
                           its copies are updated before the source mode is applied";
                tracing::info!(job = %self.job.id, task = %r.id, attempt, pnfsid = %id, "{msg}");
                self.note_about(Some(r.id), Some(id), msg.into(), Noted::SourceChanged);
                self.s.queue.requeue(&id);
            }
            Ok(Applied::Done) => {
                tracing::debug!(job = %self.job.id, task = %r.id, attempt, pnfsid = %id, "source mode applied; file done");
                // The completion report: where its copies are, and whether the targets
                // compared the data with the source's checksum (docs/admin-commands.md).
                // A file already on its targets (left as it was, or its replicas updated in
                // place) is `already in place`; a new copy's data were checked against the
                // source's checksum by its target, an existing replica's only with -verify: the
                // file counts as checked only if every one of its replicas was.
                let in_place = !r.task.made_new_copy();
                let checked = self.job.def.verify || (!in_place && !r.task.kept_existing());
                let placed = Placed {
                    targets: r.task.replicas().iter().cloned().collect(),
                    state: r.state,
                    checksum_matched: r.entry.attrs.checksum.is_some() && checked,
                    in_place,
                };
                self.s.queue.completed_as(&id, placed);
                let size = r.entry.attrs.size;
                let now = self.world.rate_clock();
                self.s.recent.push_back((now, size));
                while self.s.recent.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
                    self.s.recent.pop_front();
                }
            }
            Err(e) => {
                // The failure as `migration info` lists it.
                let error = RemoteError { code: e.number(), message: format!("Failed to apply the source mode: {e}") };
                tracing::warn!(job = %self.job.id, task = %r.id, attempt, pnfsid = %id, rc = error.code, "file failed; retried later: {}", error.message);
                self.note(Some(r.id), Some(id), error.message.clone());
                let now = self.world.now();
                self.s.queue.failed(&id, false, error, now, &self.job.settings.backoff);
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
        let batch = self.job.settings.locate_batch.clamp(1, MAX_LOCATE);
        if self.s.located.len() > 2 * batch {
            let tick = self.world.tick();
            self.s.located.retain(|_, (at, _)| tick.saturating_duration_since(*at) < LOCATED_FRESH);
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

/// The job's debug line for an event of one file's task, with the job, the task, the attempt
/// (when the event is about one) and the pnfsid: one grep for the attempt or the pnfsid in
/// the source's log follows the file (docs/troubleshooting.md, "Following one file"). At
/// debug: a drain of a million files logs one info line per batch, not per file.
fn log_event(job: &JobId, task: TaskId, pnfsid: PnfsId, event: &TaskEvent) {
    let attempt = event.attempt().map(tracing::field::display);
    match event {
        TaskEvent::Start => tracing::debug!(%job, %task, %pnfsid, "task started"),
        TaskEvent::Located { holders } => tracing::debug!(%job, %task, %pnfsid, ?holders, "holders located"),
        TaskEvent::AlreadyDone { replicas } => {
            tracing::debug!(%job, %task, %pnfsid, ?replicas, "already on the targets as wanted")
        }
        TaskEvent::CopyAccepted { .. } => tracing::debug!(%job, %task, attempt, %pnfsid, "copy accepted"),
        TaskEvent::CopyRefused { error, .. } => {
            tracing::debug!(%job, %task, attempt, %pnfsid, rc = error.code, "copy refused: {}", error.message)
        }
        TaskEvent::CopyUnanswered { how, .. } => {
            tracing::debug!(%job, %task, attempt, %pnfsid, ?how, "copy request unanswered")
        }
        TaskEvent::Finished { target, result: Ok(()), .. } => {
            tracing::debug!(%job, %task, attempt, %pnfsid, %target, "finished received: copy done")
        }
        TaskEvent::Finished { target, result: Err(e), .. } => {
            tracing::debug!(%job, %task, attempt, %pnfsid, %target, rc = e.code, "finished received: {}", e.message)
        }
        TaskEvent::PingAnswered { alive, .. } => tracing::debug!(%job, %task, attempt, %pnfsid, alive, "ping answered"),
        TaskEvent::PingUnanswered { .. } => tracing::debug!(%job, %task, attempt, %pnfsid, "ping unanswered"),
        TaskEvent::Timer { .. } => tracing::trace!(%job, %task, attempt, %pnfsid, "timer ran out"),
        TaskEvent::Cancel { reason } => tracing::debug!(%job, %task, %pnfsid, "cancel asked: {reason}"),
    }
}

#[cfg(test)]
mod tests;
