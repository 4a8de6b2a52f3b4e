//! The dry run of a job (`migration copy|move|cache -dry-run`, docs/admin-commands.md): the
//! job's own core ([`decide`]) over a world in which nothing happens. The driver below scans
//! the repository with the job's filter, asks the targets for their figures and who holds what
//! (read-only questions), and answers every copy request itself: accepted, then confirmed, and
//! every source mode applied, counted against the source's figures (so that `-stop-when` on
//! the source sees the space a move would free). Target choice, batches, the bytes each target
//! was given and `-include-when` after them are the job's own, seeded alike: with the same
//! `-seed`, the real job chooses the same targets while the pools' figures are as they were
//! (no file fails, no other transfer lands, no refresh of the targets comes in between). The
//! dry job is never listed, holds no file lock, and its requests name no job (so no target
//! renews a hold for it).

use std::collections::BTreeMap;

use tracing::Instrument as _;

use super::*;
use crate::plan::{self, Facts, Plan, PlannedCopy};

/// The most events a dry run takes per selected file, as a guard against a loop.
const EVENTS_PER_FILE: usize = 64;
/// Events a dry run decides between two yields to the runtime.
const YIELD_EVERY: usize = 256;

impl<E: Env> Module<E> {
    /// The plan of the job `def` would make, without making it.
    pub async fn dry_run(self: &Arc<Self>, def: JobDefinition, command: String) -> Result<Plan, MigrationError> {
        let span = tracing::info_span!("dry_run");
        self.dry_run_in_span(def, command).instrument(span).await
    }

    async fn dry_run_in_span(self: &Arc<Self>, def: JobDefinition, command: String) -> Result<Plan, MigrationError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(MigrationError::invalid("the pool is shutting down"));
        }
        let targets = self.job_targets(&def)?;
        let now = self.env.now();
        let seed = self.seed(&def, now);
        let concurrency = def.concurrency.unwrap_or_else(|| self.default_concurrency());
        let id = def.id.clone().unwrap_or_else(|| "dry-run".parse().expect("a valid job id"));
        let rate = def.rate.unwrap_or(0);
        let job = Arc::new(self.new_job(id.clone(), def, command.clone(), now, targets, concurrency, rate, seed));

        let (env, j) = (self.env.clone(), job.clone());
        let scanned = tokio::task::spawn_blocking(move || {
            let mut left_out = BTreeMap::new();
            let files = scan_noting(&*env, &j, &mut |_, why| *left_out.entry(why).or_insert(0u64) += 1)?;
            Ok::<_, EnvError>((files, left_out))
        })
        .await
        .map_err(|e| MigrationError::invalid(format!("Failed to scan the repository: {e}")))?;
        let (files, left_out) =
            scanned.map_err(|e| MigrationError::invalid(format!("Failed to scan the repository: {e}")))?;
        let mut queue = Queue::with_capacity(files.len());
        for (id, size) in &files {
            queue.add(*id, *size);
        }

        let mut facts = Facts {
            command,
            source: Some(self.env.name().clone()),
            seed,
            files: files.clone(),
            left_out,
            ..Facts::default()
        };
        let mut world = DryWorld { m: self, smode: job.def.smode.state, next_task: 0, freed: 0, released: 0 };
        let mut refreshed = false;
        let mut events: VecDeque<JobEvent> =
            VecDeque::from([JobEvent::Start, JobEvent::RefreshDue, JobEvent::Scanned(Ok((files.clone(), queue)))]);
        let mut budget = files.len().saturating_mul(EVENTS_PER_FILE).saturating_add(1024);
        let mut decided = 0usize;
        while let Some(event) = events.pop_front() {
            // The plan is worked out on the command's task: let the runtime's other tasks
            // (transfers, handshakes) in between, on a pool of millions of files.
            decided += 1;
            if decided == YIELD_EVERY {
                decided = 0;
                tokio::task::yield_now().await;
            }
            budget = budget.saturating_sub(1);
            if budget == 0 {
                tracing::warn!(job = %id, "dry run stopped: too many events");
                break;
            }
            let actions = {
                let mut s = job.s.lock();
                let view = JobView {
                    id: id.clone(),
                    def: &job.def,
                    tmode: &job.tmode,
                    settings: &self.settings,
                    epoch: self.epoch,
                };
                decide(&view, &mut s, event, &mut world).actions
            };
            for action in actions {
                match action {
                    // The targets' figures once: later, the job's own reservations stand for
                    // the copies that would have landed.
                    Action::Refresh if !refreshed => {
                        refreshed = true;
                        let targets = job.targets.lock().clone();
                        let answers = self.ask_targets(&targets, None).await;
                        events.push_front(JobEvent::Refreshed(answers, Vec::new()));
                    }
                    // A location question is answered before the copies that were sent: they
                    // take longer.
                    Action::Locate { ids, pools } => {
                        let answers = self.ask_holders(&ids, &pools).await;
                        events.push_front(JobEvent::Located { ids, pools, answers });
                    }
                    Action::Copy { to, pnfsid, attempt, .. } => {
                        let update = job.s.lock().running.get(&pnfsid).is_some_and(|r| r.task.updating());
                        facts.copies.entry(pnfsid).or_default().push(PlannedCopy { pool: to.clone(), update });
                        confirm(&mut events, to, pnfsid, attempt);
                    }
                    Action::CopyBatch { to, items } => {
                        for (pnfsid, attempt, req) in items {
                            let update = req.meta_only;
                            facts.copies.entry(pnfsid).or_default().push(PlannedCopy { pool: to.clone(), update });
                            confirm(&mut events, to.clone(), pnfsid, attempt);
                        }
                    }
                    Action::SourceModes(items) => {
                        let mut applied = Vec::with_capacity(items.len());
                        {
                            let s = job.s.lock();
                            for item in items {
                                if let Some(r) = s.running.get(&item.pnfsid) {
                                    facts.done.insert(item.pnfsid, r.task.replicas().iter().cloned().collect());
                                    world.source_mode(r.entry.attrs.size);
                                }
                                applied.push((item.pnfsid, Ok(Applied::Done)));
                            }
                        }
                        events.push_back(JobEvent::SourceModesApplied(applied));
                    }
                    // Timers, wake-ups, pings and cancels: a dry run does not wait, and ends
                    // where the job would wait (a retry, a sleep, a pause).
                    _ => {}
                }
            }
        }

        {
            let s = job.s.lock();
            facts.end = Some(s.state);
            let unusable: HashMap<&PoolName, &'static str> = unusable(&s).collect();
            facts.targets =
                job.targets.lock().iter().map(|t| (t.clone(), unusable.get(t).map(|w| w.to_string()))).collect();
            for (id, f) in s.queue.failures() {
                if !facts.done.contains_key(id) {
                    facts.failed.insert(*id, (f.permanent, f.last_error.clone()));
                }
            }
            facts.locked = s.locked_noted.clone();
        }
        // A file no task ended: gone if the repository no longer has it committed. One
        // record read per such file: on the blocking pool.
        let env = self.env.clone();
        let facts = tokio::task::spawn_blocking(move || {
            for (id, _) in &files {
                if !facts.done.contains_key(id) && !facts.failed.contains_key(id) && !facts.locked.contains(id) {
                    let gone = !matches!(env.entry(id), Ok(Some(e)) if e.state.is_committed());
                    if gone {
                        facts.gone.insert(*id);
                    }
                }
            }
            facts
        })
        .await
        .map_err(|e| MigrationError::invalid(format!("Failed to read the repository: {e}")))?;
        Ok(plan::assemble(facts))
    }
}

/// The answers a dry run makes up for a copy request: accepted, then confirmed.
fn confirm(events: &mut VecDeque<JobEvent>, to: PoolName, pnfsid: PnfsId, attempt: AttemptId) {
    let accepted = vec![(pnfsid, TaskEvent::CopyAccepted { attempt })];
    events.push_back(JobEvent::CopyAnswered { to: to.clone(), undelivered: false, answers: accepted });
    let finished = TaskEvent::Finished { attempt, target: to, result: Ok(()) };
    events.push_back(JobEvent::Tasks(vec![(pnfsid, finished)]));
}

/// The dry run's [`World`]: the pool's clocks and repository, read only; file locks only
/// looked at (a file another job holds is passed over, as the job would), never taken.
struct DryWorld<'a, E: Env> {
    m: &'a Module<E>,
    smode: SourceState,
    next_task: u64,
    /// Bytes the source modes applied so far would delete...
    freed: u64,
    /// ...or make removable.
    released: u64,
}

impl<E: Env> DryWorld<'_, E> {
    /// A file's source mode, as it would change the source's figures.
    fn source_mode(&mut self, size: u64) {
        match self.smode {
            SourceState::Delete => self.freed = self.freed.saturating_add(size),
            SourceState::Removable | SourceState::Cached => self.released = self.released.saturating_add(size),
            SourceState::Same | SourceState::Precious => {}
        }
    }
}

impl<E: Env> World for DryWorld<'_, E> {
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
        let mut cost = self.m.env.cost();
        let space = &mut cost.space;
        space.used = space.used.saturating_sub(self.freed);
        space.free = space.free.saturating_add(self.freed);
        space.removable = space.removable.saturating_add(self.released).min(space.used);
        cost
    }
    fn pin_prefix(&self) -> &str {
        self.m.env.pin_prefix()
    }
    fn entry(&self, id: &PnfsId) -> Result<Option<Entry>, EnvError> {
        self.m.env.entry(id)
    }
    fn next_task(&mut self) -> TaskId {
        self.next_task += 1;
        TaskId(self.next_task)
    }
    fn claim(&mut self, id: &PnfsId) -> bool {
        !self.m.locks.lock().contains_key(id)
    }
    fn release(&mut self, _: &PnfsId) {}
    fn release_all(&mut self) {}
}
