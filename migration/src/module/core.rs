//! The job decisions: what a job does with each event, inside one locked visit (`Cx`).

use super::*;

/// The context of one locked visit to a job.
pub(super) struct Cx<'a, E: Env> {
    pub(super) m: &'a Arc<Module<E>>,
    pub(super) job: &'a Arc<Job>,
    pub(super) s: &'a mut JobInner,
    pub(super) actions: &'a mut Vec<Action>,
}

impl<E: Env> Cx<'_, E> {
    pub(super) fn set_state(&mut self, to: JobState) {
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

    pub(super) fn note(&mut self, task: Option<TaskId>, pnfsid: Option<PnfsId>, message: String) {
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
    pub(super) fn schedule(&mut self) {
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
        if self.s.infos.is_none() || (wait && usable(self.s).next().is_none()) {
            // Targets not known yet, or none online: look again later.
            self.sleep(now);
            return;
        }
        let free = self.s.concurrency.saturating_sub(self.s.units.len());
        if free > 0 {
            let (units, busy) = self.pick_units(free);
            for id in busy {
                if self.s.locked_noted.insert(id) {
                    self.note(None, Some(id), "File is locked".into());
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
        let max_files = if self.batched() { self.m.settings.batch_files } else { 1 };
        let max_bytes = self.m.settings.batch_bytes;
        let mut units: Vec<Vec<PnfsId>> = Vec::new();
        // The bytes of the last unit, while it may take more small files.
        let mut open: Option<u64> = None;
        let mut busy = Vec::new();
        // The file lock is claimed here, in the same critical section that finds it free, so
        // two jobs never both start a task on one file.
        let mut locks = self.m.locks.lock();
        for id in self.s.queue.queued() {
            let size = self.s.queue.size(id);
            let small = max_files > 1 && size <= SMALL_FILE && size <= max_bytes;
            let joins = small
                && open.is_some_and(|bytes| bytes + size <= max_bytes)
                && units.last().is_some_and(|u| u.len() < max_files);
            if !joins && units.len() == free {
                break;
            }
            match locks.entry(*id) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(self.job.clone());
                }
                std::collections::hash_map::Entry::Occupied(o) if Arc::ptr_eq(o.get(), self.job) => {}
                std::collections::hash_map::Entry::Occupied(_) => {
                    busy.push(*id);
                    continue;
                }
            }
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
    pub(super) fn batched(&self) -> bool {
        let def = &self.job.def;
        self.m.settings.batch_files > 1
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

    /// `-stop-when` and `-pause-when` (reference §3.5 step 5, §3.8); true if one of them held
    /// and the job stopped or paused.
    pub(super) fn lifetime_conditions(&mut self) -> bool {
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
    pub(super) fn pause_check(&mut self) {
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

    pub(super) fn arm_pause_check(&mut self) {
        let now = self.m.env.now();
        self.s.wake_at = None;
        self.wake_at(now + self.m.settings.sleep.as_millis() as i64, now);
    }

    /// Stops the job: no new task; FINISHED once the running ones end.
    pub(super) fn stop(&mut self) {
        tracing::info!(job = %self.job.id.lock(), "stop condition holds; the job stops");
        if self.s.running.is_empty() {
            self.set_state(JobState::Finished);
        } else {
            self.set_state(JobState::Stopping);
        }
    }

    /// Evaluates a lifetime condition; an error is noted and counts as false.
    pub(super) fn condition(&mut self, e: &Expr, option: &str) -> bool {
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
    pub(super) fn reserve(&mut self, target: &PoolName, size: u64) {
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
    pub(super) fn eligible(&mut self, source: &PoolCost, target: &PoolName, cost: &PoolCost) -> bool {
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

    pub(super) fn sleep(&mut self, now: EpochMillis) {
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
    pub(super) fn wake_at(&mut self, at: EpochMillis, now: EpochMillis) {
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
    pub(super) fn start_task(&mut self, id: PnfsId, now: EpochMillis, unit: u64) {
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
        let running = Running { id: task_id, task, unit, timer: None, entry, state, sticky, pins, finishing: false };
        self.s.running.insert(id, running);
        if let Some(u) = self.s.units.get_mut(&unit) {
            u.tasks += 1;
            u.files += 1;
        }
        self.feed(id, TaskEvent::Start);
    }

    /// Adds a file to the queue (reference §3.6); wakes a sleeping job.
    pub(super) fn add(&mut self, id: PnfsId, size: u64) {
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
    pub(super) fn located(&self, id: &PnfsId, holders: Vec<Holder>) -> TaskEvent {
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

    /// A target restarted (it answered with a new run): each task whose copy it had taken on
    /// learns that the copy is gone, at once rather than after its ping and the wait for a
    /// finished message, and goes on as after a failed copy there. (A copy the new run took on
    /// before the job saw the restart is given up too: its replica is found by the file's
    /// next try, and nothing is lost.)
    pub(super) fn target_restarted(&mut self, pool: &PoolName) {
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
        tracing::info!(job = %self.job.id.lock(), %pool, files = lost.len(), "{msg}");
        self.note(None, None, msg.clone());
        for (id, attempt) in lost {
            let error = RemoteError::new(ErrorCode::Offline, msg.clone());
            self.feed(id, TaskEvent::Finished { attempt, target: pool.clone(), result: Err(error) });
        }
    }

    /// A copy request to `pool` could not be delivered: no new copy goes there until a
    /// refresh hears from it again, so the job does not send the rest of its queue there to
    /// fail one file after another (a job that waits for targets sleeps if none is left). It
    /// is still asked who holds what: a lost request does not make its replicas unknown.
    pub(super) fn unreachable(&mut self, pool: &PoolName) {
        let Some(t) = self.s.infos.iter_mut().flatten().find(|t| t.name == *pool && !t.unreachable) else { return };
        t.unreachable = true;
        self.note(None, None, format!("Pool {pool} is not reachable; no new copies go there until it answers again"));
    }

    pub(super) fn unlock(&mut self, id: &PnfsId) {
        let mut locks = self.m.locks.lock();
        if locks.get(id).is_some_and(|j| Arc::ptr_eq(j, self.job)) {
            locks.remove(id);
        }
    }

    /// Feeds an event to a file's task and carries out what it asks.
    pub(super) fn feed(&mut self, id: PnfsId, event: TaskEvent) {
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
            let effects = r.task.step(event, &selector);
            for fx in effects {
                self.effect(id, fx, &mut work);
            }
        }
    }

    pub(super) fn effect(&mut self, id: PnfsId, fx: Effect, work: &mut VecDeque<TaskEvent>) {
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
                let (size, unit) = (r.entry.attrs.size, r.unit);
                if !existing {
                    if let Some(u) = self.s.units.get_mut(&unit) {
                        u.target.get_or_insert_with(|| target.clone());
                    }
                    self.reserve(&target, size);
                }
                self.actions.push(Action::Copy { to: target, unit, pnfsid: id, attempt, req: Box::new(req) });
            }
            Effect::Ping { target, attempt } => self.actions.push(Action::Ping { to: target, pnfsid: id, attempt }),
            Effect::Cancel { target, attempt, reason } => {
                self.actions.push(Action::Cancel { to: target, attempt, reason })
            }
            Effect::Timer { attempt, after } => {
                // A task has one timer: a new one replaces the one it had.
                if let Some(old) = r.timer.take() {
                    self.s.timers.remove(&old);
                }
                self.s.timer_seq += 1;
                let key = (tokio::time::Instant::now() + after, self.s.timer_seq);
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

    pub(super) fn task_ended(&mut self, id: PnfsId, outcome: Outcome) {
        let now = self.m.env.now();
        let Some(r) = self.s.running.get_mut(&id) else { return };
        let task = r.id;
        let unit = r.unit;
        if let Some(timer) = r.timer.take() {
            self.s.timers.remove(&timer);
        }
        // A batched job's unit is free once its tasks ended, while the source modes of its
        // files are applied; an unbatched job's unit once its file is through.
        let confirmed = matches!(&outcome, Outcome::Done { replicas } if replicas.len() >= self.job.def.replicas);
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
                self.actions.push(Action::SourceModes(vec![SourceModeItem {
                    pnfsid: id,
                    confirmed: replicas.len(),
                    moved_pins,
                    snapshot,
                }]));
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

    pub(super) fn source_mode_applied(&mut self, id: PnfsId, applied: Result<Applied, RemoteError>) {
        let Some(r) = self.s.running.remove(&id) else { return };
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
    pub(super) fn maybe_locate(&mut self) {
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
