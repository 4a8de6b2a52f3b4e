//! The driver: performs what the job decisions ask for (locating, refreshing, starting and
//! ending tasks), feeds repository changes to the jobs, and shuts the module down.

use super::*;
use tracing::Instrument;

impl<E: Env> Module<E> {
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
        // Every task the jobs started (requests on their way, the source modes being applied)
        // ends or is left, within the grace period.
        for job in &jobs {
            job.tasks.close();
            if tokio::time::timeout_at(deadline, job.tasks.wait()).await.is_err() {
                tracing::warn!(job = %job.id.lock(), tasks = job.tasks.len(), "job tasks still running at shutdown");
                break;
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

    /// The repository announced a change to `id` (docs/dcache-compatibility.md#permanent-jobs-and-save). A
    /// deleted file leaves every job (its running task is cancelled); a queued file that no longer matches leaves the
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
        for job in jobs {
            self.visit(&job, JobEvent::RepoChanged { id, change, entry: entry.clone() });
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
            self.spawn_for(&job, async move {
                let env = m.env.clone();
                let job2 = j.clone();
                loop {
                    j.rescan_again.store(false, Ordering::Release);
                    let (env, job2) = (env.clone(), job2.clone());
                    if let Ok(Ok(files)) = tokio::task::spawn_blocking(move || scan(&*env, &job2)).await {
                        m.visit(&j, JobEvent::Rescanned(files));
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

    /// Takes one event to the job: decides under its lock ([`decide`]), then performs the
    /// actions.
    pub(super) fn visit(self: &Arc<Self>, job: &Arc<Job>, event: JobEvent) {
        let _ = self.deliver(job, event, false);
    }

    /// An operator's command to the job, taken like any other event; `Err` says why it does
    /// not apply.
    pub(super) fn command(self: &Arc<Self>, job: &Arc<Job>, command: Command) -> Result<(), MigrationError> {
        self.deliver(job, JobEvent::Operator(command), false).0
    }

    /// Decides under the job's lock and performs the actions; with `keep_refresh`, a refresh
    /// asked for is not started but returned, for the caller to await.
    fn deliver(
        self: &Arc<Self>,
        job: &Arc<Job>,
        event: JobEvent,
        keep_refresh: bool,
    ) -> (Result<(), MigrationError>, bool) {
        let decision = {
            let mut s = job.s.lock();
            // The id under the job's lock, as `create_job` takes them when it renames a
            // CANCELLING job; the file locks come after both (`PoolWorld`).
            let view = JobView {
                id: job.id.lock().clone(),
                def: &job.def,
                tmode: &job.tmode,
                settings: &self.settings,
                epoch: self.epoch,
            };
            decide(&view, &mut s, event, &mut PoolWorld { m: self, job })
        };
        let mut refresh = false;
        for a in coalesce(decision.actions) {
            match a {
                Action::Refresh if keep_refresh => refresh = true,
                a => self.perform(job, a),
            }
        }
        (decision.reply, refresh)
    }

    pub(super) fn start(self: &Arc<Self>, job: &Arc<Job>) {
        self.visit(job, JobEvent::Start);
        // The tasks' timers: one task per job sleeps until the soonest.
        let (m, j) = (self.clone(), job.clone());
        job.tasks.spawn_on(async move { m.run_timers(&j).await }.instrument(self.span.clone()), &self.rt);
        // Refresh the targets now and then every refresh period, until the job ends.
        let (m, j) = (self.clone(), job.clone());
        job.tasks.spawn_on(
            async move {
                loop {
                    // Awaited here: the period counts from the end of a refresh.
                    let (_, go) = m.deliver(&j, JobEvent::RefreshDue, true);
                    if go {
                        m.refresh(&j).await;
                    }
                    tokio::select! {
                        _ = j.stop.cancelled() => return,
                        _ = tokio::time::sleep(j.refresh) => {}
                    }
                }
            }
            .instrument(self.span.clone()),
            &self.rt,
        );
        // The initial scan, off the runtime: a pool of a million replicas keeps answering.
        let (m, j) = (self.clone(), job.clone());
        job.tasks.spawn_on(
            async move {
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
                    Err(e) => Err(EnvError::Internal(format!("scan failed: {e}"))),
                };
                m.visit(&j, JobEvent::Scanned(scanned));
            }
            .instrument(self.span.clone()),
            &self.rt,
        );
    }

    /// Delivers the tasks' timers as they run out, until the job ends.
    async fn run_timers(self: &Arc<Self>, job: &Arc<Job>) {
        loop {
            // Asked for before the soonest is read: a timer set meanwhile wakes the wait.
            let set = job.timer_set.notified();
            let soonest = job.s.lock().timers.first_key_value().map(|((at, _), _)| *at);
            let sleep = async {
                match soonest {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = job.stop.cancelled() => return,
                _ = set => continue,
                _ = sleep => {}
            }
            self.visit(job, JobEvent::TimersDue);
        }
    }

    pub(super) async fn refresh(self: &Arc<Self>, job: &Arc<Job>) {
        let targets = self.resolve_again(job);
        // The costs the membership publishes (etcd), in one read; the pools themselves where
        // that is not enough (`refresh::to_ask`). Naming the job renews the holds of the
        // copies it delivered there (a move).
        let published = self.env.costs(&targets).await;
        let now = tokio::time::Instant::now();
        let unreachable: Vec<PoolName> =
            job.s.lock().infos.iter().flatten().filter(|t| t.unreachable).map(|t| t.name.clone()).collect();
        let ask = refresh::to_ask(&targets, published.as_deref(), &job.asked.lock(), &unreachable, now);
        let id = job.id.lock().clone();
        let direct = match ask.is_empty() {
            true => Vec::new(),
            false => self.ask_targets(&ask, Some(id)).await,
        };
        {
            let mut asked = job.asked.lock();
            for (pool, answer) in &direct {
                asked.insert(pool.clone(), refresh::Asked { at: now, answered: answer.is_some() });
            }
        }
        let direct: HashMap<PoolName, Option<PoolCost>> = direct.into_iter().collect();
        let answers = refresh::merge(&targets, published.as_deref(), &direct);
        let gone = refresh::not_alive(&targets, published.as_deref());
        self.visit(job, JobEvent::Refreshed(answers, gone));
    }

    /// The job's targets resolved again from the membership in force: a pool that joined a
    /// target group is a target from now on, one that left it is not. A definition that no
    /// longer resolves (its group is gone) keeps the targets it had.
    fn resolve_again(self: &Arc<Self>, job: &Arc<Job>) -> Vec<PoolName> {
        let def = &job.def;
        let id = job.id.lock().clone();
        let fresh =
            targets::resolve(&EnvCluster(&*self.env), self.env.name(), &def.targets, &def.include, &def.exclude);
        let mut targets = job.targets.lock();
        match fresh {
            Ok(fresh) if fresh != *targets => {
                let added: Vec<&str> = fresh.iter().filter(|p| !targets.contains(p)).map(|p| p.as_str()).collect();
                let gone: Vec<&str> = targets.iter().filter(|p| !fresh.contains(p)).map(|p| p.as_str()).collect();
                tracing::info!(
                    job = %id,
                    "targets changed with the membership: added [{}], removed [{}]",
                    added.join(", "),
                    gone.join(", ")
                );
                *targets = fresh;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(job = %id, "targets kept: {e}"),
        }
        targets.clone()
    }

    /// The membership changed (a pool or group added or removed, a pool came or went): every
    /// running job looks at its targets again now rather than at its next refresh.
    pub fn membership_changed(self: &Arc<Self>) {
        let jobs: Vec<Arc<Job>> = self.jobs.lock().list.clone();
        for job in jobs.into_iter().filter(|j| !j.stop.is_cancelled()) {
            self.visit(&job, JobEvent::RefreshDue);
        }
    }

    /// Every target's figures, in `targets` order (`None`: no answer). Read-only on the
    /// targets, but for the holds of the job named (a dry run names none).
    pub(super) async fn ask_targets(
        self: &Arc<Self>,
        targets: &[PoolName],
        job: Option<JobId>,
    ) -> Vec<(PoolName, Option<PoolCost>)> {
        let mut set = tokio::task::JoinSet::new();
        for (i, pool) in targets.iter().enumerate() {
            let m = self.clone();
            let pool = pool.clone();
            let req = MigrationRequest::PoolInfo { job: job.clone() };
            set.spawn(
                async move {
                    let cost = match m.env.request(&pool, req).await {
                        Ok(MigrationReply::PoolInfo(c)) => Some(c),
                        _ => None,
                    };
                    (i, (pool, cost))
                }
                .in_current_span(),
            );
        }
        let mut answers: Vec<(usize, (PoolName, Option<PoolCost>))> = set.join_all().await;
        answers.sort_by_key(|(i, _)| *i);
        answers.into_iter().map(|(_, a)| a).collect()
    }

    /// Tells `to` that `attempt` is cancelled, again and again (with backoff) until it answers:
    /// the task that sent it has already ended (a cancel never waits for its target), so this
    /// is what makes a target that was frozen or cut off drop the copy (and remove its partial
    /// data) once it is reachable again, or refuse the copy request if that comes later. It
    /// belongs to the job's tasks but outlives the job's end; only the pool's shutdown (after
    /// one try) or [`CANCEL_RESEND_FOR`] without an answer stops it: a target that restarted
    /// meanwhile has lost the copy anyway, and its restart recovery removes what was partial.
    async fn send_cancel(self: Arc<Self>, to: PoolName, attempt: AttemptId, reason: String) {
        let give_up = tokio::time::Instant::now() + CANCEL_RESEND_FOR;
        let mut wait = CANCEL_RESEND_FIRST;
        loop {
            // Each request runs to its answer or its timeout (the first one also when the pool
            // is shutting down: shutdown cancels its jobs, and waits for their tasks, bounded).
            let req = MigrationRequest::Cancel { attempt, reason: reason.clone() };
            if self.env.request(&to, req).await.is_ok() || self.serving.is_cancelled() {
                return;
            }
            if tokio::time::Instant::now() + wait > give_up {
                tracing::warn!(pool = %to, %attempt, "the cancel of a copy never reached its target; given up");
                return;
            }
            tracing::debug!(pool = %to, %attempt, "cancel not answered; sent again in {wait:?}");
            tokio::select! {
                _ = self.serving.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(CANCEL_RESEND_MAX);
        }
    }

    /// Runs `work` in a task the job owns: shutdown waits (bounded) for every one of them. It
    /// runs in the pool's span, so its log lines name the pool.
    fn spawn_for(&self, job: &Arc<Job>, work: impl std::future::Future<Output = ()> + Send + 'static) {
        job.tasks.spawn_on(work.instrument(self.span.clone()), &self.rt);
    }

    /// Starts one action in a task the job owns.
    pub(super) fn perform(self: &Arc<Self>, job: &Arc<Job>, action: Action) {
        let (m, j) = (self.clone(), job.clone());
        match action {
            Action::Copy { to, pnfsid, attempt, req, .. } => self.spawn_for(job, async move {
                let event = match m.env.request(&to, MigrationRequest::Copy(*req)).await {
                    Ok(reply) => copy_answer(attempt, reply),
                    Err(how) => TaskEvent::CopyUnanswered { attempt, how },
                };
                let undelivered = matches!(event, TaskEvent::CopyUnanswered { how: Unanswered::NotDelivered, .. });
                m.visit(&j, JobEvent::CopyAnswered { to, undelivered, answers: vec![(pnfsid, event)] });
            }),
            Action::CopyBatch { to, items } => self.spawn_for(job, async move {
                let (files, reqs): (Vec<(PnfsId, AttemptId)>, Vec<CopyRequest>) =
                    items.into_iter().map(|(pnfsid, attempt, req)| ((pnfsid, attempt), req)).unzip();
                let n = reqs.len();
                let answer = m.env.request(&to, MigrationRequest::CopyBatch(reqs)).await;
                let undelivered = matches!(answer, Err(Unanswered::NotDelivered));
                let events: Vec<TaskEvent> = match answer {
                    Ok(MigrationReply::Batch(replies)) if replies.len() == n => files
                        .iter()
                        .zip(replies)
                        .map(|((_, attempt), reply)| match reply {
                            CopyAnswer::Accepted => TaskEvent::CopyAccepted { attempt: *attempt },
                            CopyAnswer::Refused(error) => TaskEvent::CopyRefused { attempt: *attempt, error },
                        })
                        .collect(),
                    // A batch answered for some of its copies only, or as if it were one: what
                    // the target took on is unknown, so each file is treated as unanswered (its
                    // copy is cancelled, and a finished message that comes is still used).
                    Ok(MigrationReply::Batch(_) | MigrationReply::Accepted) => files
                        .iter()
                        .map(|(_, attempt)| TaskEvent::CopyUnanswered { attempt: *attempt, how: Unanswered::NoAnswer })
                        .collect(),
                    // One answer for the whole batch (a refusal of it, or nonsense): each file
                    // takes it as its own.
                    Ok(reply) => files.iter().map(|(_, attempt)| copy_answer(*attempt, reply.clone())).collect(),
                    Err(how) => {
                        files.iter().map(|(_, attempt)| TaskEvent::CopyUnanswered { attempt: *attempt, how }).collect()
                    }
                };
                let answers = files.into_iter().map(|(pnfsid, _)| pnfsid).zip(events).collect();
                m.visit(&j, JobEvent::CopyAnswered { to, undelivered, answers });
            }),
            Action::Ping { to, pnfsid, attempt } => self.spawn_for(job, async move {
                let event = match m.env.request(&to, MigrationRequest::Ping { attempt }).await {
                    Ok(MigrationReply::Alive(alive)) => TaskEvent::PingAnswered { attempt, alive },
                    Ok(_) => TaskEvent::PingAnswered { attempt, alive: false },
                    Err(_) => TaskEvent::PingUnanswered { attempt },
                };
                m.visit(&j, JobEvent::Tasks(vec![(pnfsid, event)]));
            }),
            Action::Cancel { to, attempt, reason } => {
                self.spawn_for(job, async move { m.send_cancel(to, attempt, reason).await })
            }
            Action::TimerSet => job.timer_set.notify_one(),
            Action::Wake { seq, after } => self.spawn_for(job, async move {
                tokio::select! {
                    _ = j.stop.cancelled() => {}
                    _ = tokio::time::sleep(after) => {
                        m.visit(&j, JobEvent::Wake(seq));
                    }
                }
            }),
            Action::Locate { ids, pools } => self.spawn_for(job, async move { m.locate(&j, ids, pools).await }),
            Action::SourceModes(items) => self.spawn_for(job, async move {
                let env = m.env.clone();
                let (j2, asked) = (j.clone(), items.clone());
                let applied = tokio::task::spawn_blocking(move || apply_source_modes(&*env, &j2, &asked))
                    .await
                    .unwrap_or_else(|e| {
                        let error = EnvError::Internal(format!("{e}"));
                        vec![Err(error); items.len()]
                    });
                let results = items.into_iter().map(|item| item.pnfsid).zip(applied).collect();
                m.visit(&j, JobEvent::SourceModesApplied(results));
            }),
            Action::Refresh => self.spawn_for(job, async move { m.refresh(&j).await }),
            Action::Halt => job.halt.cancel(),
            Action::Ended => {
                job.stop.cancel();
                job.halt.cancel();
            }
        }
    }

    /// Asks every online target which of `ids` it holds: one request per pool.
    pub(super) async fn locate(self: &Arc<Self>, job: &Arc<Job>, ids: Vec<PnfsId>, pools: Vec<PoolName>) {
        let answers = self.ask_holders(&ids, &pools).await;
        self.visit(job, JobEvent::Located { ids, pools, answers });
    }

    /// Which of `ids` each of `pools` holds (`None`: no answer); read-only on the pools.
    pub(super) async fn ask_holders(
        self: &Arc<Self>,
        ids: &[PnfsId],
        pools: &[PoolName],
    ) -> HashMap<PoolName, Option<HashMap<PnfsId, Held>>> {
        let mut set = tokio::task::JoinSet::new();
        for pool in pools.iter().cloned() {
            let m = self.clone();
            let req = MigrationRequest::Locate { pnfsids: ids.to_vec() };
            set.spawn(
                async move {
                    let answer = match m.env.request(&pool, req).await {
                        Ok(MigrationReply::Located { held }) => {
                            Some(held.into_iter().map(|h| (h.pnfsid, h)).collect::<HashMap<_, _>>())
                        }
                        _ => None,
                    };
                    (pool, answer)
                }
                .in_current_span(),
            );
        }
        set.join_all().await.into_iter().collect()
    }
}

/// The driver's [`World`]: the module's pool, clocks, task ids and file locks.
struct PoolWorld<'a, E: Env> {
    m: &'a Module<E>,
    job: &'a Arc<Job>,
}

impl<E: Env> World for PoolWorld<'_, E> {
    fn now(&self) -> EpochMillis {
        self.m.env.now()
    }
    fn tick(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }
    fn rate_clock(&self) -> Instant {
        Instant::now()
    }
    fn local_time(&self) -> chrono::NaiveDateTime {
        chrono::Local::now().naive_local()
    }
    fn pool(&self) -> &PoolName {
        self.m.env.name()
    }
    fn cost(&self) -> PoolCost {
        self.m.env.cost()
    }
    fn pin_prefix(&self) -> &str {
        self.m.env.pin_prefix()
    }
    fn entry(&self, id: &PnfsId) -> Result<Option<Entry>, EnvError> {
        self.m.env.entry(id)
    }
    fn next_task(&mut self) -> TaskId {
        TaskId(self.m.next_task.fetch_add(1, Ordering::Relaxed))
    }
    fn claim(&mut self, id: &PnfsId) -> bool {
        // Found free and claimed in one critical section: two jobs never both start a task on
        // one file.
        match self.m.locks.lock().entry(*id) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(self.job.clone());
                true
            }
            std::collections::hash_map::Entry::Occupied(o) => Arc::ptr_eq(o.get(), self.job),
        }
    }
    fn release(&mut self, id: &PnfsId) {
        let mut locks = self.m.locks.lock();
        if locks.get(id).is_some_and(|j| Arc::ptr_eq(j, self.job)) {
            locks.remove(id);
        }
    }
    fn release_all(&mut self) {
        self.m.locks.lock().retain(|_, j| !Arc::ptr_eq(j, self.job));
    }
}

/// What a target's answer to a copy request means for the file's task.
fn copy_answer(attempt: AttemptId, reply: MigrationReply) -> TaskEvent {
    match reply {
        MigrationReply::Accepted => TaskEvent::CopyAccepted { attempt },
        MigrationReply::Error(error) => TaskEvent::CopyRefused { attempt, error },
        other => TaskEvent::CopyRefused { attempt, error: unexpected(&other) },
    }
}

/// The actions of one visit, with the copies of one unit to one pool made one request and the
/// source modes one blocking call: a unit's files, located together, ask for their copies
/// together (and the target pulls them under one transfer place), and files confirmed
/// together are released together.
fn coalesce(actions: Vec<Action>) -> Vec<Action> {
    let mut out = Vec::with_capacity(actions.len());
    type Copies = Vec<(PnfsId, AttemptId, CopyRequest)>;
    let mut copies: Vec<((PoolName, u64), Copies)> = Vec::new();
    let mut modes: Vec<SourceModeItem> = Vec::new();
    for a in actions {
        match a {
            Action::Copy { to, unit, pnfsid, attempt, req } => {
                match copies.iter_mut().find(|((t, u), _)| *t == to && *u == unit) {
                    Some((_, items)) => items.push((pnfsid, attempt, *req)),
                    None => copies.push(((to, unit), vec![(pnfsid, attempt, *req)])),
                }
            }
            Action::SourceModes(items) => modes.extend(items),
            other => out.push(other),
        }
    }
    for ((to, unit), mut items) in copies {
        while !items.is_empty() {
            let rest = items.split_off(items.len().min(MAX_COPY_BATCH));
            let batch = std::mem::replace(&mut items, rest);
            if batch.len() == 1 {
                let (pnfsid, attempt, req) = batch.into_iter().next().expect("one copy");
                out.push(Action::Copy { to: to.clone(), unit, pnfsid, attempt, req: Box::new(req) });
            } else {
                out.push(Action::CopyBatch { to: to.clone(), items: batch });
            }
        }
    }
    if !modes.is_empty() {
        out.push(Action::SourceModes(modes));
    }
    out
}
