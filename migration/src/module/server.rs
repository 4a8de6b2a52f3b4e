//! The target side of the migration module (docs/dcache-compatibility.md#the-target-side): copy requests
//! from other pools' jobs, with ping and cancel by (requesting pool, attempt), and the outcome reported back.

use super::*;
use tracing::Instrument;

/// How long a target remembers an attempt that ended, and at most how many.
const ENDED_MEMORY: Duration = Duration::from_secs(600);
const ENDED_MAX: usize = 100_000;

type AttemptKey = (PoolName, AttemptId);

/// How long the copies delivered for a job that releases its source stay held (kept from
/// eviction) after the job last spoke to this pool. A running job speaks at every refresh.
pub const DELIVERY_HOLD: Duration = Duration::from_secs(3600);

/// Holds are renewed at most this often per job (a renewal touches every held replica).
const HOLD_RENEW: Duration = Duration::from_secs(600);

/// The copies this pool holds for other pools' jobs that release their sources (a move): a
/// migration never destroys what it moved, so making room for an incoming copy never evicts
/// them while the job runs, nor for [`DELIVERY_HOLD`] after it last spoke to this pool. The
/// table decides; the caller places the holds in the repository ([`Env::hold`]).
#[derive(Default)]
pub(super) struct Holds {
    jobs: HashMap<(PoolName, JobId), JobHold>,
}

struct JobHold {
    ids: Vec<PnfsId>,
    renewed: EpochMillis,
}

fn millis(d: Duration) -> EpochMillis {
    d.as_millis() as EpochMillis
}

impl Holds {
    /// A copy for `job` of `from` is about to be made or updated: the file to hold, and until
    /// when. Held before the copy is committed, so no eviction can come between the two.
    pub(super) fn deliver(&mut self, from: &PoolName, job: &JobId, id: PnfsId, now: EpochMillis) -> EpochMillis {
        self.prune(now);
        let hold = self.jobs.entry((from.clone(), job.clone())).or_insert(JobHold { ids: Vec::new(), renewed: now });
        hold.ids.push(id);
        now + millis(DELIVERY_HOLD)
    }

    /// The job spoke to this pool: the files whose holds to extend, and until when, when a
    /// renewal is due.
    pub(super) fn renew(
        &mut self,
        from: &PoolName,
        job: &JobId,
        now: EpochMillis,
    ) -> Option<(Vec<PnfsId>, EpochMillis)> {
        self.prune(now);
        let hold = self.jobs.get_mut(&(from.clone(), job.clone()))?;
        if now - hold.renewed < millis(HOLD_RENEW) {
            return None;
        }
        hold.renewed = now;
        hold.ids.sort_unstable();
        hold.ids.dedup();
        Some((hold.ids.clone(), now + millis(DELIVERY_HOLD)))
    }

    /// The holds the pool kept across its restart: each job's files are renewed again when the
    /// job next speaks (counted from the oldest hold, so none runs out first).
    pub(super) fn restore(&mut self, saved: Vec<SavedHold>, now: EpochMillis) {
        for SavedHold { id, until, owner } in saved {
            let renewed = until - millis(DELIVERY_HOLD);
            let hold = self.jobs.entry((owner.pool, owner.job)).or_insert(JobHold { ids: Vec::new(), renewed });
            hold.ids.push(id);
            hold.renewed = hold.renewed.min(renewed);
        }
        self.prune(now);
    }

    /// Forgets jobs whose holds all ran out.
    fn prune(&mut self, now: EpochMillis) {
        self.jobs.retain(|_, h| now - h.renewed < millis(DELIVERY_HOLD));
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.jobs.values().map(|h| h.ids.len()).sum()
    }
}

/// The target side's table of attempts, by requesting pool and attempt id.
#[derive(Default)]
pub(super) struct Served {
    /// Copies under way.
    pub(super) active: HashMap<AttemptKey, CancellationToken>,
    /// Attempts that ended here (with their outcome), or that were cancelled before their copy
    /// request arrived (`None`), remembered for [`ENDED_MEMORY`]: a late or duplicated copy
    /// request for one of them is never carried out a second time.
    pub(super) ended: HashMap<AttemptKey, Option<Ended>>,
    ended_order: VecDeque<(Instant, AttemptKey)>,
    /// Files being pulled, with a signal cancelled when the pull ends: a second copy request
    /// for the same file (another attempt, another job, a job restored after a restart) waits
    /// for it and then updates the replica, instead of pulling the file a second time.
    pub(super) pulling: HashMap<PnfsId, CancellationToken>,
    pub(super) holds: Holds,
}

/// How the target goes about one accepted copy.
enum Work {
    Update,
    /// Pull the file; cancel the token when done.
    Pull(CancellationToken),
    /// Another attempt pulls it: wait for that, then update.
    After(CancellationToken),
}

/// How an attempt ended on the target: the file and the result sent as `Finished`.
type Ended = (PnfsId, Result<(), RemoteError>);

enum Seen {
    New,
    Active,
    Ended(Option<Ended>),
}

impl Served {
    fn seen(&mut self, key: &AttemptKey) -> Seen {
        self.prune();
        if self.active.contains_key(key) {
            Seen::Active
        } else if let Some(result) = self.ended.get(key) {
            Seen::Ended(result.clone())
        } else {
            Seen::New
        }
    }

    fn end(&mut self, key: AttemptKey, result: Option<Ended>) {
        self.active.remove(&key);
        self.prune();
        if self.ended.insert(key.clone(), result).is_none() {
            self.ended_order.push_back((Instant::now(), key));
        }
    }

    fn prune(&mut self) {
        while let Some((at, key)) = self.ended_order.front() {
            if at.elapsed() < ENDED_MEMORY && self.ended_order.len() <= ENDED_MAX {
                break;
            }
            self.ended.remove(key);
            self.ended_order.pop_front();
        }
    }
}

impl<E: Env> Module<E> {
    /// Takes back the holds this pool kept across a restart (see [`Env::hold`]), so that the
    /// jobs that own them renew them as before. The pool calls this once, at start.
    pub fn restore_holds(&self, saved: Vec<SavedHold>) {
        if !saved.is_empty() {
            tracing::info!(replicas = saved.len(), "holds on copies delivered by moves kept across the restart");
        }
        self.served.lock().holds.restore(saved, self.env.now());
    }

    /// This pool's figures as `PoolInfo` answers them, and as the pool publishes them in etcd:
    /// the run says whether it restarted (never 0, which means "unknown").
    pub fn cost(&self) -> PoolCost {
        PoolCost { run: (self.epoch >> 40) + 1, ..self.env.cost() }
    }

    /// How many requests of each kind this pool has served for others since it started, in
    /// [`REQUEST_KINDS`] order (metrics: `tidepool_migration_requests_served_total`).
    pub fn served_requests(&self) -> Vec<(&'static str, u64)> {
        REQUEST_KINDS.iter().zip(&self.served_requests).map(|(k, n)| (*k, n.load(Ordering::Relaxed))).collect()
    }

    /// Answers one request from the pool `from` (the authenticated peer).
    pub async fn serve(self: &Arc<Self>, from: PoolName, req: MigrationRequest) -> MigrationReply {
        let kind = match &req {
            MigrationRequest::PoolInfo { .. } => 0,
            MigrationRequest::Locate { .. } => 1,
            MigrationRequest::Copy(_) => 2,
            MigrationRequest::CopyBatch(_) => 3,
            MigrationRequest::Ping { .. } => 4,
            MigrationRequest::Cancel { .. } => 5,
            MigrationRequest::Finished(_) => 6,
            MigrationRequest::FinishedBatch(_) => 7,
        };
        self.served_requests[kind].fetch_add(1, Ordering::Relaxed);
        match req {
            MigrationRequest::PoolInfo { job } => {
                if let Some(job) = job {
                    self.renew_holds(&from, &job);
                }
                MigrationReply::PoolInfo(self.cost())
            }
            MigrationRequest::Locate { pnfsids } => {
                if pnfsids.len() > MAX_LOCATE {
                    return MigrationReply::Error(RemoteError::new(
                        ErrorCode::InvalidArgument,
                        format!("at most {MAX_LOCATE} files per location question, not {}", pnfsids.len()),
                    ));
                }
                let env = self.env.clone();
                let held = tokio::task::spawn_blocking(move || {
                    pnfsids
                        .into_iter()
                        .filter_map(|id| env.entry(&id).ok().flatten())
                        .filter(|e| e.state.is_committed())
                        .map(|e| Held {
                            pnfsid: e.attrs.pnfsid,
                            state: e.state,
                            sticky: e.sticky,
                            checksum: e.attrs.checksum,
                        })
                        .collect::<Vec<_>>()
                })
                .await;
                match held {
                    Ok(held) => MigrationReply::Located { held },
                    Err(e) => MigrationReply::Error(RemoteError::new(ErrorCode::Internal, e.to_string())),
                }
            }
            MigrationRequest::Copy(req) => self.accept_copy(from, req),
            MigrationRequest::CopyBatch(reqs) => {
                if reqs.len() > MAX_COPY_BATCH {
                    return MigrationReply::Error(RemoteError::new(
                        ErrorCode::InvalidArgument,
                        format!("at most {MAX_COPY_BATCH} copy requests in one batch, not {}", reqs.len()),
                    ));
                }
                self.accept_batch(from, reqs)
            }
            MigrationRequest::FinishedBatch(items) => {
                if items.len() > MAX_COPY_BATCH {
                    return MigrationReply::Error(RemoteError::new(
                        ErrorCode::InvalidArgument,
                        format!("at most {MAX_COPY_BATCH} outcomes in one batch, not {}", items.len()),
                    ));
                }
                let (ours, others): (Vec<CopyFinished>, Vec<CopyFinished>) =
                    items.into_iter().partition(|f| f.target == from);
                if let Some(f) = others.first() {
                    tracing::warn!(claimed = %f.target, peer = %from, count = others.len(), "finished messages naming another pool; ignored");
                }
                self.finished_batch(ours);
                MigrationReply::Ack
            }
            MigrationRequest::Ping { attempt } => {
                let key = (from.clone(), attempt);
                let ended = {
                    let served = self.served.lock();
                    if served.active.contains_key(&key) {
                        return MigrationReply::Alive(true);
                    }
                    served.ended.get(&key).cloned().flatten()
                };
                match ended {
                    // The outcome may have been lost on its way: send it again.
                    Some((pnfsid, result)) => {
                        self.send_finished(
                            &from,
                            CopyFinished { attempt, target: self.env.name().clone(), pnfsid, result },
                        );
                        MigrationReply::Alive(true)
                    }
                    None => MigrationReply::Alive(false),
                }
            }
            MigrationRequest::Cancel { attempt, reason } => {
                let mut served = self.served.lock();
                let key = (from.clone(), attempt);
                match served.active.get(&key) {
                    Some(token) => {
                        tracing::info!(%attempt, source = %from, "copy cancelled by the source: {reason}");
                        token.cancel();
                        MigrationReply::Alive(true)
                    }
                    None => {
                        // Perhaps the cancel overtook its copy request: remember it, so the copy
                        // is refused when it arrives (an attempt that ended keeps its outcome).
                        if !served.ended.contains_key(&key) {
                            served.end(key, None);
                        }
                        MigrationReply::Alive(false)
                    }
                }
            }
            MigrationRequest::Finished(f) => {
                if f.target != from {
                    tracing::warn!(claimed = %f.target, peer = %from, "finished message naming another pool; ignored");
                } else {
                    self.finished_batch(vec![f]);
                }
                MigrationReply::Ack
            }
        }
    }

    /// Extends the holds of a job's delivered copies when a renewal is due.
    fn renew_holds(&self, from: &PoolName, job: &JobId) {
        let Some((ids, until)) = self.served.lock().holds.renew(from, job, self.env.now()) else { return };
        let owner = HoldOwner { pool: from.clone(), job: job.clone() };
        let env = self.env.clone();
        // A renewal writes every held replica of the job and flushes: off the runtime, tracked
        // like the copies (shutdown waits for it).
        self.copies.spawn_blocking_on(
            move || {
                if let Err(e) = env.hold(&ids, until, &owner, HoldKind::Renewal) {
                    tracing::warn!(job = %owner.job, source = %owner.pool, "could not extend the holds of the job's copies: {e}");
                }
            },
            &self.rt,
        );
    }

    /// Finished messages for our tasks: each job's are fed to it in one visit.
    fn finished_batch(self: &Arc<Self>, items: Vec<CopyFinished>) {
        let mut by_job: Vec<(Arc<Job>, Vec<CopyFinished>)> = Vec::new();
        {
            let locks = self.locks.lock();
            for f in items {
                let Some(job) = locks.get(&f.pnfsid) else {
                    tracing::debug!(pnfsid = %f.pnfsid, attempt = %f.attempt, "finished message for no running task; ignored");
                    continue;
                };
                match by_job.iter_mut().find(|(j, _)| Arc::ptr_eq(j, job)) {
                    Some((_, fs)) => fs.push(f),
                    None => by_job.push((job.clone(), vec![f])),
                }
            }
        }
        for (job, fs) in by_job {
            let events = fs
                .into_iter()
                .map(|f| (f.pnfsid, TaskEvent::Finished { attempt: f.attempt, target: f.target, result: f.result }))
                .collect();
            self.visit(&job, JobEvent::Tasks(events));
        }
    }

    fn accept_copy(self: &Arc<Self>, from: PoolName, req: CopyRequest) -> MigrationReply {
        match self.admit(&from, &req) {
            Err(refused) => MigrationReply::Error(refused),
            Ok(None) => MigrationReply::Accepted,
            Ok(Some(admitted)) => {
                let pnfsid = req.attributes.pnfsid;
                tracing::info!(job = %req.job, task = %req.task, attempt = %req.attempt, %pnfsid, source = %from, "copy accepted");
                self.spawn_copy(from, req, admitted);
                MigrationReply::Accepted
            }
        }
    }

    /// A job's batch: each request is admitted (or refused) on its own; the new copies among
    /// them are pulled together ([`Env::pull_batch`]), the others go as single requests do.
    fn accept_batch(self: &Arc<Self>, from: PoolName, reqs: Vec<CopyRequest>) -> MigrationReply {
        // The new copies of a batch are held in memory together until they are committed.
        let bytes: u64 = reqs.iter().map(|r| r.attributes.size).fold(0, u64::saturating_add);
        if bytes > MAX_COPY_BATCH_BYTES {
            return MigrationReply::Error(RemoteError::new(
                ErrorCode::InvalidArgument,
                format!("at most {MAX_COPY_BATCH_BYTES} bytes of files in one batch of copies, not {bytes}"),
            ));
        }
        let mut replies = Vec::with_capacity(reqs.len());
        let mut pulls = Vec::new();
        for req in reqs {
            match self.admit(&from, &req) {
                Err(refused) => replies.push(CopyAnswer::Refused(refused)),
                Ok(None) => replies.push(CopyAnswer::Accepted),
                Ok(Some(admitted)) => {
                    replies.push(CopyAnswer::Accepted);
                    match admitted.work {
                        Work::Pull(done) => pulls.push((req, admitted.token, done, admitted.hold)),
                        _ => self.spawn_copy(from.clone(), req, admitted),
                    }
                }
            }
        }
        let accepted = replies.iter().filter(|r| matches!(r, CopyAnswer::Accepted)).count();
        // One line per batch: a drain of small files would log millions of lines otherwise
        // (each file's own lines are at debug level; failures are warnings).
        tracing::info!(source = %from, files = replies.len(), accepted, new = pulls.len(), "batch of copies accepted");
        if !pulls.is_empty() {
            self.spawn_pulls(from, pulls);
        }
        MigrationReply::Batch(replies)
    }

    /// Decides whether this pool takes on a copy request: `Err` is the refusal to answer,
    /// `Ok(None)` a request already taken on (a late or duplicated one: its outcome is sent
    /// again if it is known), `Ok(Some)` a new copy, registered, to be carried out.
    fn admit(self: &Arc<Self>, from: &PoolName, req: &CopyRequest) -> Result<Option<Admitted>, RemoteError> {
        let refuse = |code, message: String| Err(RemoteError::new(code, message));
        let pnfsid = req.attributes.pnfsid;
        if self.shutting_down.load(Ordering::Relaxed) {
            return refuse(ErrorCode::ShuttingDown, "pool is shutting down".into());
        }
        self.env.check_p2p_client()?;
        if self.is_locked(&pnfsid) {
            return refuse(ErrorCode::Locked, "Target file is busy".into());
        }
        if !req.state.is_committed() {
            return refuse(ErrorCode::InvalidArgument, format!("a copy must be CACHED or PRECIOUS, not {}", req.state));
        }
        let existing = self.env.entry(&pnfsid)?;
        if existing.is_none() && req.meta_only {
            return refuse(ErrorCode::FileNotFound, format!("Pool does not contain {pnfsid}"));
        }
        if existing.as_ref().is_some_and(|e| e.state == ReplicaState::Broken) {
            return refuse(
                ErrorCode::FileBroken,
                format!("Pool {} holds a BROKEN replica of {pnfsid}", self.env.name()),
            );
        }
        let admitted = {
            let mut served = self.served.lock();
            let key = (from.clone(), req.attempt);
            // A late or duplicated request may have been decided meanwhile.
            match served.seen(&key) {
                Seen::Active => return Ok(None),
                Seen::Ended(Some((_, result))) => {
                    drop(served);
                    self.send_finished(
                        from,
                        CopyFinished { attempt: req.attempt, target: self.env.name().clone(), pnfsid, result },
                    );
                    return Ok(None);
                }
                Seen::Ended(None) => {
                    return refuse(
                        ErrorCode::Cancelled,
                        format!("attempt {} was cancelled before its copy request arrived", req.attempt),
                    );
                }
                Seen::New => {}
            }
            let token = self.serving.child_token();
            served.active.insert(key, token.clone());
            let hold = req.releases_source.then(|| served.holds.deliver(from, &req.job, pnfsid, self.env.now()));
            let work = match served.pulling.get(&pnfsid) {
                Some(done) => Work::After(done.clone()),
                None if existing.is_none() => {
                    let done = CancellationToken::new();
                    served.pulling.insert(pnfsid, done.clone());
                    Work::Pull(done)
                }
                None => Work::Update,
            };
            Admitted { token, work, hold }
        };
        tracing::debug!(job = %req.job, task = %req.task, attempt = %req.attempt, %pnfsid, source = %from, update = existing.is_some(), "copy admitted");
        if req.releases_source {
            self.renew_holds(from, &req.job);
        }
        Ok(Some(admitted))
    }

    /// Carries out one admitted copy in a tracked task (shutdown waits, bounded, for cancelled
    /// copies to remove their data).
    fn spawn_copy(self: &Arc<Self>, from: PoolName, req: CopyRequest, admitted: Admitted) {
        let pnfsid = req.attributes.pnfsid;
        let span = copy_span(&from, &req);
        let m = self.clone();
        let Admitted { token, work, hold } = admitted;
        self.copies.spawn_on(
            tracing::Instrument::instrument(
                async move {
                    // Held before the copy is made or updated (a hold on a replica that is here
                    // is flushed, so off the runtime): no eviction can fall between the copy's
                    // commit and the hold, and the source is deleted only after the copy is
                    // durable.
                    if let Some(until) = hold
                        && let Err(e) = m.hold_delivered(&from, &req.job, vec![pnfsid], until).await
                    {
                        if let Work::Pull(done) = &work {
                            m.pull_ended(&pnfsid, done);
                        }
                        tracing::warn!("copy refused: could not hold it: {}", e.message);
                        m.copy_ended(&from, req.attempt, pnfsid, Err(e), true);
                        return;
                    }
                    let result = match work {
                        Work::Update => m.update_existing(&req, &token).await,
                        Work::After(done) => {
                            tracing::info!("another attempt is pulling this file; waiting for it, then updating");
                            tokio::select! {
                                _ = done.cancelled() => match m.update_existing(&req, &token).await {
                                    // The other transfer failed: this attempt is retried, not dropped.
                                    Err(e) if e.code() == Some(ErrorCode::FileNotFound) => Err(RemoteError::new(
                                        ErrorCode::FileBusy,
                                        "another transfer of this file to this pool failed; try again",
                                    )),
                                    other => other,
                                },
                                _ = token.cancelled() => Err(RemoteError::new(ErrorCode::Cancelled, "Task was cancelled")),
                            }
                        }
                        Work::Pull(done) => {
                            let pulled = m.env.pull(pull_of(&from, &req), token.clone()).await;
                            m.pull_ended(&pnfsid, &done);
                            // The outcome goes to the source in its `Finished`.
                            pulled.map_err(RemoteError::from)
                        }
                    };
                    m.copy_ended(&from, req.attempt, pnfsid, result, true);
                },
                span,
            ),
            &self.rt,
        );
    }

    /// Carries out the new copies of a batch in one tracked task: their holds placed in one
    /// call, their data pulled together, each outcome reported on its own.
    fn spawn_pulls(self: &Arc<Self>, from: PoolName, pulls: Vec<BatchPull>) {
        let m = self.clone();
        self.copies.spawn_on(
            async move {
                // Holds first, per job (a batch comes from one job, but nothing relies on it).
                let mut go = Vec::with_capacity(pulls.len());
                let mut by_job: Vec<(JobId, EpochMillis, Vec<PnfsId>)> = Vec::new();
                for (req, _, _, hold) in &pulls {
                    if let Some(until) = hold {
                        match by_job.iter_mut().find(|(job, _, _)| *job == req.job) {
                            Some((_, at, ids)) => {
                                *at = (*at).max(*until);
                                ids.push(req.attributes.pnfsid);
                            }
                            None => by_job.push((req.job.clone(), *until, vec![req.attributes.pnfsid])),
                        }
                    }
                }
                let mut unheld: HashMap<JobId, RemoteError> = HashMap::new();
                for (job, until, ids) in by_job {
                    if let Err(e) = m.hold_delivered(&from, &job, ids, until).await {
                        tracing::warn!(%job, source = %from, "copies refused: could not hold them: {}", e.message);
                        unheld.insert(job, e);
                    }
                }
                for (req, token, done, hold) in pulls {
                    let pnfsid = req.attributes.pnfsid;
                    match unheld.get(&req.job).filter(|_| hold.is_some()) {
                        Some(e) => {
                            m.pull_ended(&pnfsid, &done);
                            copy_span(&from, &req)
                                .in_scope(|| m.copy_ended(&from, req.attempt, pnfsid, Err(e.clone()), false));
                        }
                        None => go.push((req, token, done)),
                    }
                }
                let asked: Vec<(Pull, CancellationToken)> =
                    go.iter().map(|(req, token, _)| (pull_of(&from, req), token.clone())).collect();
                let results = m.env.pull_batch(asked).await;
                let (n, done_ok) = (results.len(), results.iter().filter(|r| r.is_ok()).count());
                tracing::info!(source = %from, files = n, done = done_ok, failed = n - done_ok, "batch of copies done");
                for ((req, _, done), result) in go.into_iter().zip(results) {
                    let pnfsid = req.attributes.pnfsid;
                    m.pull_ended(&pnfsid, &done);
                    // As for the transfers: a span only where a line is written.
                    let span = if result.is_err() || tracing::enabled!(tracing::Level::DEBUG) {
                        copy_span(&from, &req)
                    } else {
                        tracing::Span::none()
                    };
                    span.in_scope(|| {
                        m.copy_ended(&from, req.attempt, pnfsid, result.map_err(RemoteError::from), false)
                    });
                }
            }
            .instrument(self.span.clone()),
            &self.rt,
        );
    }

    /// Places the holds of delivered copies off the runtime (a hold on a replica that is here
    /// is flushed). A failure is the answer the copies get.
    async fn hold_delivered(
        &self,
        from: &PoolName,
        job: &JobId,
        ids: Vec<PnfsId>,
        until: EpochMillis,
    ) -> Result<(), RemoteError> {
        let (env, owner) = (self.env.clone(), HoldOwner { pool: from.clone(), job: job.clone() });
        tokio::task::spawn_blocking(move || env.hold(&ids, until, &owner, HoldKind::Delivery))
            .await
            .unwrap_or_else(|e| Err(EnvError::Internal(format!("placing the hold failed: {e}"))))
            .map_err(RemoteError::from)
    }

    /// A pull of `pnfsid` is over: a copy request waiting for it may go on.
    fn pull_ended(&self, pnfsid: &PnfsId, done: &CancellationToken) {
        self.served.lock().pulling.remove(pnfsid);
        done.cancel();
    }

    /// An attempt ended here: remembered, and reported to the source (unless the pool is
    /// shutting down: the source then learns from its pings that the attempt is gone). A copy
    /// of a batch (not `alone`) says it is done at debug level: its batch says so at info.
    fn copy_ended(
        self: &Arc<Self>,
        from: &PoolName,
        attempt: AttemptId,
        pnfsid: PnfsId,
        result: Result<(), RemoteError>,
        alone: bool,
    ) {
        match &result {
            Ok(()) if alone => tracing::info!(%attempt, %pnfsid, source = %from, "copy done"),
            Ok(()) => tracing::debug!(%attempt, %pnfsid, source = %from, "copy done"),
            Err(e) => tracing::warn!(%attempt, %pnfsid, source = %from, "copy failed: {}", e.message),
        }
        self.served.lock().end((from.clone(), attempt), Some((pnfsid, result.clone())));
        if self.serving.is_cancelled() {
            return;
        }
        self.send_finished(from, CopyFinished { attempt, target: self.env.name().clone(), pnfsid, result });
    }

    /// Brings an existing replica up to what the request asks, never making it more
    /// volatile (docs/dcache-compatibility.md#source-and-target-modes).
    async fn update_existing(
        self: &Arc<Self>,
        req: &CopyRequest,
        token: &CancellationToken,
    ) -> Result<(), RemoteError> {
        let pnfsid = req.attributes.pnfsid;
        let cancelled = || RemoteError::new(ErrorCode::Cancelled, "Task was cancelled");
        if req.verify {
            let env = self.env.clone();
            let source_sum = req.attributes.checksum;
            let work = tokio::task::spawn_blocking(move || -> Result<(), RemoteError> {
                let entry = env.entry(&pnfsid)?.ok_or_else(|| {
                    RemoteError::new(ErrorCode::FileNotFound, format!("Pool does not contain {pnfsid}"))
                })?;
                let computed = env.compute_checksum(&pnfsid)?;
                if let Some(recorded) = entry.attrs.checksum
                    && recorded != computed
                {
                    // The data no longer match the replica's own record: it is damaged. Out of
                    // service it goes (BROKEN), so nobody reads it and no job counts it.
                    let broken = env.set_state(&pnfsid, ReplicaState::Broken);
                    let what = match broken {
                        Ok(()) => "marked BROKEN".to_string(),
                        Err(e) => format!("could not be marked BROKEN: {e}"),
                    };
                    tracing::error!(%pnfsid, %computed, %recorded, "replica failed verification; {what}");
                    return Err(RemoteError::new(
                        ErrorCode::ChecksumMismatch,
                        format!(
                            "replica {pnfsid} failed verification: its data have checksum {computed}, \
                             its record says {recorded}; {what}"
                        ),
                    ));
                }
                if let Some(want) = source_sum
                    && want != computed
                {
                    // Whole, but other data than the source's: not a copy of this file.
                    return Err(RemoteError::new(
                        ErrorCode::ChecksumMismatch,
                        format!("replica {pnfsid} has checksum {computed}, the source's checksum is {want}"),
                    ));
                }
                if entry.attrs.checksum.is_none() {
                    // dCache failed such a file for ever; we record what we computed.
                    env.set_checksum(&pnfsid, computed)?;
                }
                Ok(())
            });
            tokio::select! {
                r = work => r.unwrap_or_else(|e| Err(RemoteError::new(ErrorCode::Internal, e.to_string())))?,
                _ = token.cancelled() => return Err(cancelled()),
            }
        }
        if token.is_cancelled() {
            return Err(cancelled());
        }
        let env = self.env.clone();
        let (state, sticky) = (req.state, req.sticky.clone());
        let source_sum = req.attributes.checksum;
        tokio::task::spawn_blocking(move || -> Result<(), RemoteError> {
            let entry = env
                .entry(&pnfsid)?
                .ok_or_else(|| RemoteError::new(ErrorCode::FileNotFound, format!("Pool does not contain {pnfsid}")))?;
            // Even without -verify, recorded checksums that differ mean other data: not a copy.
            if let (Some(have), Some(want)) = (entry.attrs.checksum, source_sum)
                && have != want
            {
                return Err(RemoteError::new(
                    ErrorCode::ChecksumMismatch,
                    format!("replica {pnfsid} has recorded checksum {have}, the source's is {want}"),
                ));
            }
            let plan = plan_update(entry.state, &entry.sticky, state, &sticky, env.now())?;
            if let Some(s) = plan.new_state {
                env.set_state(&pnfsid, s)?;
            }
            for r in plan.sticky {
                env.set_sticky(&pnfsid, r, StickyMode::ExtendOnly)?;
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(RemoteError::new(ErrorCode::Internal, e.to_string())))
    }

    /// Queues an outcome for the source `to`. One sender per source delivers what has
    /// gathered in one message (outcomes that arrive while it sends go in the next), so a batch
    /// of copies costs the source one finished message, not one per file.
    fn send_finished(self: &Arc<Self>, to: &PoolName, msg: CopyFinished) {
        let start = {
            let mut outbox = self.outbox.lock();
            let out = outbox.entry(to.clone()).or_default();
            out.waiting.push(msg);
            !std::mem::replace(&mut out.sending, true)
        };
        if start {
            let (m, to) = (self.clone(), to.clone());
            self.copies.spawn_on(async move { m.deliver_finished(to).await }.instrument(self.span.clone()), &self.rt);
        }
    }

    /// Sends the outcomes gathered for `to` until none is left. An outcome that cannot be
    /// delivered after [`FINISHED_TRIES`] is given up: the source's ping asks for it again.
    async fn deliver_finished(self: Arc<Self>, to: PoolName) {
        let _unwind = SenderMark { outbox: &self.outbox, to: &to };
        loop {
            let items: Vec<CopyFinished> = {
                let mut outbox = self.outbox.lock();
                let Some(out) = outbox.get_mut(&to) else { return };
                if out.waiting.is_empty() || self.serving.is_cancelled() {
                    outbox.remove(&to);
                    return;
                }
                let n = out.waiting.len().min(MAX_COPY_BATCH);
                out.waiting.drain(..n).collect()
            };
            let n = items.len();
            // A single outcome goes as `Finished`, which every version of the pool knows.
            let req = if n == 1 {
                MigrationRequest::Finished(items.into_iter().next().expect("one item"))
            } else {
                MigrationRequest::FinishedBatch(items)
            };
            let mut delay = Duration::from_millis(500);
            for attempt in 1..=FINISHED_TRIES {
                match self.env.request(&to, req.clone()).await {
                    Ok(MigrationReply::Ack) => break,
                    other => {
                        if attempt == FINISHED_TRIES || self.serving.is_cancelled() {
                            tracing::warn!(source = %to, copies = n, "could not report the copies' outcome ({other:?}); the source will ask again");
                            break;
                        }
                    }
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

/// A source's sender mark, cleared if the sender panics, so that the next outcome for the
/// source starts a new sender instead of waiting for ever behind a dead one.
struct SenderMark<'a> {
    outbox: &'a Mutex<HashMap<PoolName, Outbox>>,
    to: &'a PoolName,
}

impl Drop for SenderMark<'_> {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(out) = self.outbox.lock().get_mut(self.to)
        {
            out.sending = false;
        }
    }
}

/// What a source is sent, gathered while its sender is busy.
#[derive(Default)]
pub(super) struct Outbox {
    waiting: Vec<CopyFinished>,
    sending: bool,
}

/// A copy the target has taken on, and how it goes about it.
struct Admitted {
    token: CancellationToken,
    work: Work,
    /// Hold the copy until then (a move).
    hold: Option<EpochMillis>,
}

/// A new copy of a batch: its request, its cancel, the signal of its pull, its hold.
type BatchPull = (CopyRequest, CancellationToken, CancellationToken, Option<EpochMillis>);

/// The span of one copy made here for another pool's job (`migration{job task attempt pnfsid
/// source}`): every line about the copy is in it, inside the pool's span, so one grep for the
/// attempt or the pnfsid in this pool's log finds them (docs/troubleshooting.md).
fn copy_span(from: &PoolName, req: &CopyRequest) -> tracing::Span {
    let pnfsid = req.attributes.pnfsid;
    tracing::info_span!("migration", job = %req.job, task = %req.task, attempt = %req.attempt, %pnfsid, source = %from)
}

fn pull_of(from: &PoolName, req: &CopyRequest) -> Pull {
    Pull {
        pnfsid: req.attributes.pnfsid,
        source: from.clone(),
        state: req.state,
        sticky: req.sticky.clone(),
        atime: req.atime,
        force_source_mode: req.force_source_mode,
        copy_of: Some(CopyOf { job: req.job.clone(), task: req.task, attempt: req.attempt }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: EpochMillis = 3_600_000;
    const RENEW: EpochMillis = 600_000;

    fn id(n: u8) -> PnfsId {
        PnfsId::from_random([n; 16])
    }

    #[test]
    fn holds_last_while_the_job_speaks_and_an_hour_after() {
        let (p1, p2): (PoolName, PoolName) = ("pool1".parse().unwrap(), "pool2".parse().unwrap());
        let (j1, j2): (JobId, JobId) = ("1".parse().unwrap(), "2".parse().unwrap());
        let mut h = Holds::default();
        assert_eq!(h.deliver(&p1, &j1, id(1), 0), H);
        assert_eq!(h.deliver(&p1, &j1, id(2), 10), 10 + H);
        h.deliver(&p2, &j1, id(3), 10);
        // (who speaks, when) -> what is renewed
        type Row<'a> = (&'a PoolName, &'a JobId, EpochMillis, Option<(Vec<PnfsId>, EpochMillis)>);
        let rows: Vec<Row> = vec![
            (&p1, &j1, RENEW - 1, None),
            (&p1, &j1, RENEW, Some((vec![id(1), id(2)], RENEW + H))),
            (&p1, &j1, RENEW + 1, None),
            (&p1, &j2, 2 * RENEW, None),
            (&p2, &j1, 2 * RENEW, Some((vec![id(3)], 2 * RENEW + H))),
            (&p1, &j1, 2 * RENEW, Some((vec![id(1), id(2)], 2 * RENEW + H))),
        ];
        for (i, (from, job, now, want)) in rows.into_iter().enumerate() {
            let got = h.renew(from, job, now).map(|(mut ids, until)| {
                ids.sort();
                (ids, until)
            });
            let want = want.map(|(mut ids, until)| {
                ids.sort();
                (ids, until)
            });
            assert_eq!(got, want, "row {i}");
        }
        assert_eq!(h.held(), 3);
        // A job silent for the whole hold is forgotten: its holds ran out in the repository too.
        assert_eq!(h.renew(&p1, &j1, 2 * RENEW + H), None);
        assert_eq!(h.held(), 0);
    }

    /// After a restart the holds the pool kept belong to their jobs again: the job's next
    /// words renew all of them (counted from the oldest), and ran-out ones are forgotten.
    #[test]
    fn holds_kept_across_a_restart_are_renewed_by_their_job() {
        let (p1, j1, j2): (PoolName, JobId, JobId) =
            ("pool1".parse().unwrap(), "1".parse().unwrap(), "2".parse().unwrap());
        let owner = |job: &JobId| HoldOwner { pool: p1.clone(), job: job.clone() };
        let saved = |n: u8, until: EpochMillis, job: &JobId| SavedHold { id: id(n), until, owner: owner(job) };
        let mut h = Holds::default();
        // Restarted at 10 * RENEW: job 1's holds were placed at 8 and 9 * RENEW, job 2's ran out.
        let now = 10 * RENEW;
        h.restore(vec![saved(1, 8 * RENEW + H, &j1), saved(2, 9 * RENEW + H, &j1), saved(3, now - 1, &j2)], now);
        assert_eq!(h.held(), 2, "job 2's hold ran out");
        let renewed = h.renew(&p1, &j1, now).map(|(mut ids, until)| {
            ids.sort();
            (ids, until)
        });
        assert_eq!(renewed, Some((vec![id(1), id(2)], now + H)), "a renewal was due since the oldest hold");
        assert_eq!(h.renew(&p1, &j2, now), None);
        // An owner survives the way the repository stores it.
        assert_eq!(HoldOwner::decode(&owner(&j1).encode()), Some(owner(&j1)));
        assert_eq!(HoldOwner::decode(b"pool1"), None);
    }
}
