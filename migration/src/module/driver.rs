//! The driver: performs what the job decisions ask for (locating, refreshing, starting and
//! ending tasks), feeds repository changes to the jobs, and shuts the module down.

use super::*;

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
            self.spawn_for(&job, async move {
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
    pub(super) fn with<T>(self: &Arc<Self>, job: &Arc<Job>, f: impl FnOnce(&mut Cx<'_, E>) -> T) -> T {
        let mut actions = Vec::new();
        let out = {
            let mut s = job.s.lock();
            let mut cx = Cx { m: self, job, s: &mut s, actions: &mut actions };
            let out = f(&mut cx);
            cx.schedule();
            cx.maybe_locate();
            out
        };
        for a in coalesce(actions) {
            self.perform(job, a);
        }
        out
    }

    pub(super) fn start(self: &Arc<Self>, job: &Arc<Job>) {
        let started = self.with(job, |cx| {
            cx.set_state(JobState::Initializing);
            cx.s.started = Some(Instant::now());
            true
        });
        if !started {
            return;
        }
        // The tasks' timers: one task per job sleeps until the soonest.
        let (m, j) = (self.clone(), job.clone());
        job.tasks.spawn_on(async move { m.run_timers(&j).await }, &self.rt);
        // Refresh the targets now and then every refresh period, until the job ends.
        let (m, j) = (self.clone(), job.clone());
        job.tasks.spawn_on(
            async move {
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
            },
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
            },
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
            self.with(job, |cx| {
                let now = tokio::time::Instant::now();
                while let Some(entry) = cx.s.timers.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let (key, (pnfsid, attempt)) = entry.remove_entry();
                    if let Some(r) = cx.s.running.get_mut(&pnfsid)
                        && r.timer == Some(key)
                    {
                        r.timer = None;
                        cx.feed(pnfsid, TaskEvent::Timer { attempt });
                    }
                }
            });
        }
    }

    pub(super) async fn refresh(self: &Arc<Self>, job: &Arc<Job>) {
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
                (
                    i,
                    TargetInfo {
                        name: pool,
                        cost,
                        misses: 0,
                        offline_since: None,
                        eligible: true,
                        last_run: None,
                        unreachable: false,
                    },
                )
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
                        // Still silent: it stays unreachable, whatever figures it keeps.
                        t.unreachable = old.unreachable;
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
            cx.s.infos = Some(infos);
            for pool in restarted {
                cx.target_restarted(&pool);
            }
            if cx.s.state == JobState::Sleeping && usable(cx.s).next().is_some() {
                // The targets are known now: no need to wait for the next look.
                cx.set_state(JobState::Running);
            }
        });
    }

    /// Runs `work` in a task the job owns: shutdown waits (bounded) for every one of them.
    fn spawn_for(&self, job: &Arc<Job>, work: impl std::future::Future<Output = ()> + Send + 'static) {
        job.tasks.spawn_on(work, &self.rt);
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
                m.with(&j, |cx| {
                    if matches!(event, TaskEvent::CopyUnanswered { how: Unanswered::NotDelivered, .. }) {
                        cx.unreachable(&to);
                    }
                    cx.feed(pnfsid, event)
                });
            }),
            Action::CopyBatch { to, items } => self.spawn_for(job, async move {
                let (files, reqs): (Vec<(PnfsId, AttemptId)>, Vec<CopyRequest>) =
                    items.into_iter().map(|(pnfsid, attempt, req)| ((pnfsid, attempt), req)).unzip();
                let n = reqs.len();
                let answer = m.env.request(&to, MigrationRequest::CopyBatch(reqs)).await;
                let undelivered = matches!(answer, Err(Unanswered::NotDelivered));
                let events: Vec<TaskEvent> = match answer {
                    Ok(MigrationReply::Batch(replies)) if replies.len() == n => {
                        files.iter().zip(replies).map(|((_, attempt), reply)| copy_answer(*attempt, reply)).collect()
                    }
                    // One answer for the whole batch (a refusal of it, or nonsense): each file
                    // takes it as its own.
                    Ok(reply) => files.iter().map(|(_, attempt)| copy_answer(*attempt, reply.clone())).collect(),
                    Err(how) => {
                        files.iter().map(|(_, attempt)| TaskEvent::CopyUnanswered { attempt: *attempt, how }).collect()
                    }
                };
                m.with(&j, |cx| {
                    if undelivered {
                        cx.unreachable(&to);
                    }
                    for ((pnfsid, _), event) in files.into_iter().zip(events) {
                        cx.feed(pnfsid, event);
                    }
                });
            }),
            Action::Ping { to, pnfsid, attempt } => self.spawn_for(job, async move {
                let event = match m.env.request(&to, MigrationRequest::Ping { attempt }).await {
                    Ok(MigrationReply::Alive(alive)) => TaskEvent::PingAnswered { attempt, alive },
                    Ok(_) => TaskEvent::PingAnswered { attempt, alive: false },
                    Err(_) => TaskEvent::PingUnanswered { attempt },
                };
                m.with(&j, |cx| cx.feed(pnfsid, event));
            }),
            Action::Cancel { to, attempt, reason } => self.spawn_for(job, async move {
                let _ = m.env.request(&to, MigrationRequest::Cancel { attempt, reason }).await;
            }),
            Action::TimerSet => job.timer_set.notify_one(),
            Action::Wake { seq, after } => self.spawn_for(job, async move {
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
                            let none_online = usable(cx.s).next().is_none();
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
            }),
            Action::Locate { ids, pools } => self.spawn_for(job, async move { m.locate(&j, ids, pools).await }),
            Action::SourceModes(items) => self.spawn_for(job, async move {
                let env = m.env.clone();
                let (j2, asked) = (j.clone(), items.clone());
                let applied = tokio::task::spawn_blocking(move || apply_source_modes(&*env, &j2, &asked))
                    .await
                    .unwrap_or_else(|e| {
                        let error = RemoteError::new(ErrorCode::Internal, format!("{e}"));
                        vec![Err(error); items.len()]
                    });
                m.with(&j, |cx| {
                    for (item, applied) in items.into_iter().zip(applied) {
                        cx.source_mode_applied(item.pnfsid, applied);
                    }
                });
            }),
        }
    }

    /// Asks every online target which of `ids` it holds: one request per pool.
    pub(super) async fn locate(self: &Arc<Self>, job: &Arc<Job>, ids: Vec<PnfsId>, pools: Vec<PoolName>) {
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
