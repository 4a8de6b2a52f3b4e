//! `rebalance pgroup`: levels the space use of a pool group in one command, as dCache's
//! PoolManager does (docs/dcache-compatibility.md#rebalance). Any pool accepts it. It asks every pool of the group for
//! its cost (`PoolInfo`), leaves out the disabled pools and those that do not answer, and on
//! each enabled pool force-cancels the job called `rebalance` and starts
//! `migration move -id=rebalance` towards all the enabled pools of the group, with a target
//! filter and a stop condition that make the pools above the group's level give files to the
//! pools below it until each is at the level.
//!
//! What to run where is a pure function of the pools' answers ([`plan`]); [`start`] and
//! [`cancel`] are the thin async effects around it. The costs come through the migration
//! transport (`PoolInfo`); the lines run on the other pools of the group through their admin
//! endpoints over the peer-connection layer ([`super::remote`]), and on this pool through its
//! own command interpreter: every pool runs the same text, which `migration ls` shows. Nothing
//! here holds a thread while it waits.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tidepool_migration::env::{Env, Unanswered};
use tidepool_migration::report::JobSummary;
use tidepool_p2p::message::{MigrationReply, MigrationRequest, PoolCost};
use tidepool_p2p::{ErrorCode, PoolName, RemoteError};

use super::error::{AdminError, RebalanceError};
use super::json::{ErrorJson, write_document};
use super::output::Output;
use super::remote::Pools;
use crate::node::Node;
use crate::pool::Pool;

/// A line running on this pool: its output, or why it failed.
pub type Running = Pin<Box<dyn Future<Output = Result<String, AdminError>> + Send>>;

/// Runs one admin line on this pool: the executor's `run_here`, handed in by the executor that
/// runs `rebalance`, so that this module does not depend on it.
pub type RunHere = fn(Arc<Node>, String) -> Running;

/// The pool a rebalance command runs in, and how it runs a line on itself.
#[derive(Clone, Copy)]
pub struct Here<'a> {
    pub node: &'a Arc<Node>,
    pub run: RunHere,
}

/// How every rebalance line starts (its options follow).
const MOVE: &str = "migration move ";

/// The id of the jobs `rebalance pgroup` starts (dCache's).
pub const JOB_ID: &str = "rebalance";
/// `-refresh` when not given, in seconds (dCache's default for `rebalance pgroup`).
pub const DEFAULT_REFRESH: u64 = 30;
/// How every pool's `rebalance` job is cancelled: at once, half-made copies removed.
const CANCEL_LINE: &str = "migration cancel -force rebalance";
/// With `-json`, run after the other lines on each pool: its jobs, typed, to find its
/// `rebalance` job.
const LS_JSON_LINE: &str = "migration ls -json";
/// How long a pool may take to answer one admin command of a rebalance (creating a job replies
/// at once; the job's work comes after).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How the level of the group is measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Metric {
    /// Used space as a fraction of the total: every pool ends near the group's fraction
    /// F = sum(used) / sum(total). Pools of different sizes are levelled in proportion.
    #[default]
    Relative,
    /// Free bytes: a pool gives files to pools with more free space than itself, until no
    /// pool has more (pools of different sizes end with about the same free space).
    Free,
}

impl FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "relative" => Ok(Metric::Relative),
            "free" => Ok(Metric::Free),
            other => Err(format!("-metric: {other:?} is not a metric; use relative or free")),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Metric::Relative => "relative",
            Metric::Free => "free",
        })
    }
}

/// What a pool of the group answered when asked for its cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Cost(PoolCost),
    /// It did not answer, or refused; why, for the reply.
    None(String),
}

/// Why a pool was left out of the rebalance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeftOut {
    Disabled,
    /// It did not say its cost; why.
    NoAnswer(String),
}

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeftOut::Disabled => f.write_str("disabled"),
            LeftOut::NoAnswer(why) => f.write_str(why),
        }
    }
}

/// What `rebalance pgroup` does, worked out from the pools' answers.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The `migration move` line every enabled pool runs.
    pub line: String,
    /// The enabled pools, in cluster-file order: each runs `line` and is a target of the others.
    pub pools: Vec<PoolName>,
    /// The pools left out, with why (disabled, or no answer).
    pub left_out: Vec<(PoolName, LeftOut)>,
    /// With [`Metric::Relative`], the group's used fraction F.
    pub level: Option<f64>,
}

/// The plan for `members` (the pools of the group in cluster-file order, with their answers).
pub fn plan(metric: Metric, refresh: u64, members: &[(PoolName, Answer)]) -> Plan {
    let mut pools = Vec::new();
    let mut left_out = Vec::new();
    let (mut used, mut total) = (0u128, 0u128);
    for (name, answer) in members {
        match answer {
            Answer::Cost(cost) if cost.enabled => {
                pools.push(name.clone());
                used += u128::from(cost.space.used);
                total += u128::from(cost.space.total);
            }
            Answer::Cost(_) => left_out.push((name.clone(), LeftOut::Disabled)),
            Answer::None(why) => left_out.push((name.clone(), LeftOut::NoAnswer(why.clone()))),
        }
    }
    let (include, stop, level) = match metric {
        Metric::Relative => {
            let f = if total == 0 { 0.0 } else { used as f64 / total as f64 };
            // `{}` writes the shortest decimal that reads back as the same double, and never
            // an exponent (which the expression language does not have).
            (
                format!("target.used < {f} * target.total"),
                format!("targets == 0 or source.used <= {f} * source.total"),
                Some(f),
            )
        }
        Metric::Free => ("target.free > source.free".to_string(), "targets == 0".to_string(), None),
    };
    let names: Vec<&str> = pools.iter().map(PoolName::as_str).collect();
    let line = format!(
        "{MOVE}-id={JOB_ID} -refresh={refresh} -include-when='{include}' -stop-when='{stop}' -target=pool -- {}",
        names.join(" ")
    );
    Plan { line, pools, left_out, level }
}

impl Plan {
    /// Refuses a plan with fewer than two enabled pools: there is nothing to level.
    pub fn check(&self, group: &str) -> Result<(), RebalanceError> {
        match self.pools.as_slice() {
            [] => Err(RebalanceError::NoPool {
                group: group.to_string(),
                all_disabled: self.left_out.iter().all(|(_, why)| *why == LeftOut::Disabled),
            }),
            [one] => Err(RebalanceError::OnlyOne { pool: one.clone(), group: group.to_string() }),
            _ => Ok(()),
        }
    }
}

impl Plan {
    /// The dry run of [`Plan::line`] (`-json`: its JSON form).
    pub fn dry_line(&self, json: bool) -> String {
        let options = if json { "-dry-run -json " } else { "-dry-run " };
        // `plan` writes the line; a line of another shape must never run as the real move.
        let rest = self.line.strip_prefix(MOVE).expect("a rebalance line is a migration move");
        format!("{MOVE}{options}{rest}")
    }
}

/// `rebalance pgroup <group>`: writes one line per pool of the group (left out, the new job's
/// summary line, or the error), in cluster-file order. Fails if any enabled pool failed. With
/// `dry_run`, no job is cancelled nor started: each enabled pool prints the plan of its job
/// (`migration move -dry-run`).
pub async fn start(
    here: Here<'_>,
    group: &str,
    metric: Metric,
    refresh: u64,
    json: bool,
    dry_run: bool,
    out: &mut Output,
) -> Result<(), AdminError> {
    let pool = &here.node.pool;
    let members = members(pool, group)?;
    let module = here.node.try_migration().ok_or(AdminError::NoMigration)?;
    let env = module.env().clone();
    let me = pool.name.clone();
    let mut asked = tokio::task::JoinSet::new();
    for (i, name) in members.into_iter().enumerate() {
        let env = env.clone();
        let me = me.clone();
        asked.spawn(async move {
            let answer = if name == me { Answer::Cost(env.cost()) } else { ask(&*env, &name).await };
            (i, name, answer)
        });
    }
    let mut answers = asked.join_all().await;
    answers.sort_by_key(|(i, _, _)| *i);
    let answers: Vec<(PoolName, Answer)> = answers.into_iter().map(|(_, name, answer)| (name, answer)).collect();
    let plan = plan(metric, refresh, &answers);
    if dry_run {
        return dry_run_plans(here, group, metric, &plan, json, out).await;
    }
    if json {
        return start_json(here, group, metric, &plan, out).await;
    }
    let mut text = String::new();
    for (name, why) in &plan.left_out {
        let _ = writeln!(text, "{name}: left out: {why}");
    }
    if let Err(e) = plan.check(group) {
        out.write(&text).await?;
        return Err(e.into());
    }
    tracing::info!(group, %metric, level = ?plan.level, pools = plan.pools.len(), "rebalance pgroup: starting {}", plan.line);
    let results = on_each(here, &plan.pools, &[CANCEL_LINE, &plan.line]).await;
    let failed = report(&results, &mut text, |reply| reply.to_string());
    out.write(&text).await?;
    summary(group, "started the rebalance jobs", &results, failed)
}

/// `rebalance cancel pgroup <group>`: cancels the `rebalance` job on every pool of the group;
/// one line per pool (the job's summary line, no such job, or the error).
pub async fn cancel(here: Here<'_>, group: &str, json: bool, out: &mut Output) -> Result<(), AdminError> {
    let pool = &here.node.pool;
    let members = members(pool, group)?;
    if json {
        let results = with_jobs(on_each(here, &members, &[CANCEL_LINE, LS_JSON_LINE]).await);
        let (pools, failed) = outcomes(&results, "cancelled", "no_job");
        let doc = RebalanceJson { group: group.to_string(), metric: None, level: None, command: None, pools };
        write_document(out, &doc).await?;
        return summary(group, "cancelled the rebalance jobs", &results, failed);
    }
    let results = on_each(here, &members, &[CANCEL_LINE]).await;
    let mut text = String::new();
    let failed = report(&results, &mut text, cancelled);
    out.write(&text).await?;
    summary(group, "cancelled the rebalance jobs", &results, failed)
}

/// A pool's line after `migration cancel -force rebalance`: the job's summary line, if it has one.
fn cancelled(reply: &str) -> String {
    if reply.is_empty() { "no rebalance job".to_string() } else { reply.to_string() }
}

/// The pools of `group` in cluster-file order; an error if the cluster file has none.
fn members(pool: &Pool, group: &str) -> Result<Vec<PoolName>, RebalanceError> {
    let members: Vec<PoolName> = pool
        .cluster
        .get()
        .pools
        .iter()
        .filter(|p| p.groups.iter().any(|g| g == group))
        .map(|p| p.name.clone())
        .collect();
    if members.is_empty() {
        return Err(RebalanceError::UnknownGroup(group.to_string()));
    }
    Ok(members)
}

/// Asks another pool for its cost.
async fn ask(env: &impl Env, name: &PoolName) -> Answer {
    match env.request(name, MigrationRequest::PoolInfo { job: None }).await {
        Ok(MigrationReply::PoolInfo(cost)) => Answer::Cost(cost),
        Ok(MigrationReply::Error(e)) => Answer::None(format!("refused to say its cost: {}", e.message)),
        Ok(_) => Answer::None("answered something other than its cost".to_string()),
        Err(Unanswered::NotDelivered) => Answer::None("offline (not reachable)".to_string()),
        Err(Unanswered::NoAnswer) => Answer::None("offline (no answer in time)".to_string()),
    }
}

/// Where one pool's lines run: this pool's own interpreter, or another pool's admin endpoint.
enum Target {
    Here(Arc<Node>, RunHere),
    There(Pools, PoolName),
    /// Tests: a script of replies.
    #[cfg(test)]
    Scripted(fn(&str) -> Result<String, RemoteError>),
}

impl Target {
    /// Runs one line; its output, or the error as the pool's line of the reply shows it.
    async fn run(&mut self, line: &str) -> Result<String, RemoteError> {
        match self {
            Target::Here(node, run) => run(node.clone(), line.to_string()).await.map_err(|e| e.to_remote()),
            Target::There(pools, name) => match pools.run(name, line).await {
                Ok((text, None)) => Ok(text),
                Ok((_, Some(refused))) => Err(refused),
                Err(e) => Err(RemoteError::new(e.code(), e.to_string())),
            },
            #[cfg(test)]
            Target::Scripted(reply) => reply(line),
        }
    }
}

/// Runs `lines` in order on each pool of `pools`, all pools at once (this pool through its own
/// interpreter, the others through their admin endpoints). A pool's result is the output of
/// its last line, or the first error; the error `Job not found` from the cancel line is not
/// one (the pool had no such job: the output is then empty).
async fn on_each(here: Here<'_>, pools: &[PoolName], lines: &[&str]) -> Vec<(PoolName, Result<String, RemoteError>)> {
    let pool = &here.node.pool;
    let lines: Arc<[String]> = lines.iter().map(|l| l.to_string()).collect();
    let others =
        Pools::new(pool.cluster.get(), pool.credentials.clone(), format!("{}/rebalance", pool.name), COMMAND_TIMEOUT);
    let span = tracing::Span::current();
    let mut set = tokio::task::JoinSet::new();
    for (i, name) in pools.iter().enumerate() {
        let mut target = if *name == pool.name {
            Target::Here(here.node.clone(), here.run)
        } else {
            Target::There(others.clone(), name.clone())
        };
        let lines = lines.clone();
        let work = async move { (i, run_lines(&lines, &mut target).await) };
        set.spawn(tracing::Instrument::instrument(work, span.clone()));
    }
    let mut results: Vec<Option<Result<String, RemoteError>>> = vec![None; pools.len()];
    while let Some(done) = set.join_next().await {
        match done {
            Ok((i, result)) => results[i] = Some(result),
            // Its line is left as `None` below; the task may have sent a line before it ended.
            Err(e) => tracing::error!(error = %e, "a rebalance task ended abnormally"),
        }
    }
    pools
        .iter()
        .cloned()
        .zip(results)
        .map(|(name, r)| {
            (
                name,
                r.unwrap_or_else(|| {
                    Err(RemoteError::new(ErrorCode::Internal, "ended abnormally; it may have partly run (see the log)"))
                }),
            )
        })
        .collect()
}

/// The lines of [`on_each`] on one pool. Matches on the code, never the message.
async fn run_lines(lines: &[String], target: &mut Target) -> Result<String, RemoteError> {
    let mut last = String::new();
    for line in lines {
        last = match target.run(line).await {
            Ok(text) => text,
            Err(e) if line == CANCEL_LINE && e.code() == Some(ErrorCode::JobNotFound) => String::new(),
            Err(e) => return Err(e),
        };
    }
    Ok(last)
}

/// Writes `<pool>: <what>` per result (`show` turns a reply into `what`; further lines of a
/// reply or an error are indented) and returns how many failed.
fn report(
    results: &[(PoolName, Result<String, RemoteError>)],
    text: &mut String,
    show: impl Fn(&str) -> String,
) -> usize {
    let mut failed = 0;
    for (name, result) in results {
        let what = match result {
            Ok(reply) => show(reply.trim_end()),
            Err(e) => {
                failed += 1;
                format!("failed: {} (rc={})", e.message, e.code)
            }
        };
        let _ = writeln!(text, "{name}: {}", what.replace('\n', "\n    "));
    }
    failed
}

/// `rebalance pgroup -json` and `rebalance cancel pgroup -json` (docs/json.md).
#[derive(Debug, Serialize)]
pub struct RebalanceJson {
    pub group: String,
    /// `relative` or `free`; `null` for a cancel.
    pub metric: Option<String>,
    /// With `-metric=relative`, the group's used fraction F; else `null`.
    pub level: Option<f64>,
    /// The `migration move` line every enabled pool runs; `null` for a cancel, or when no
    /// job was started (fewer than two enabled pools answered).
    pub command: Option<String>,
    /// Every pool of the group in cluster-file order (left-out pools first, as in the text).
    pub pools: Vec<PoolOutcome>,
}

/// What became of one pool of the group.
#[derive(Debug, Serialize)]
pub struct PoolOutcome {
    pub pool: String,
    /// `left_out`, `started`, `cancelled`, `no_job` or `failed`.
    pub outcome: &'static str,
    /// `left_out` only: why (`disabled`, `offline (not reachable)`, ...).
    pub reason: Option<String>,
    /// The pool's `rebalance` job as `migration ls -json` showed it after the command.
    pub job: Option<JobSummary>,
    /// `failed` only.
    pub error: Option<ErrorJson>,
}

async fn start_json(
    here: Here<'_>,
    group: &str,
    metric: Metric,
    plan: &Plan,
    out: &mut Output,
) -> Result<(), AdminError> {
    let mut pools: Vec<PoolOutcome> = plan
        .left_out
        .iter()
        .map(|(name, why)| PoolOutcome {
            pool: name.to_string(),
            outcome: "left_out",
            reason: Some(why.to_string()),
            job: None,
            error: None,
        })
        .collect();
    let mut doc = RebalanceJson {
        group: group.to_string(),
        metric: Some(metric.to_string()),
        level: plan.level,
        command: None,
        pools: Vec::new(),
    };
    if let Err(e) = plan.check(group) {
        doc.pools = pools;
        write_document(out, &doc).await?;
        return Err(e.into());
    }
    tracing::info!(group, %metric, level = ?plan.level, pools = plan.pools.len(), "rebalance pgroup: starting {}", plan.line);
    let results = with_jobs(on_each(here, &plan.pools, &[CANCEL_LINE, &plan.line, LS_JSON_LINE]).await);
    let (started, failed) = outcomes(&results, "started", "started");
    pools.extend(started);
    doc.command = Some(plan.line.clone());
    doc.pools = pools;
    write_document(out, &doc).await?;
    summary(group, "started the rebalance jobs", &results, failed)
}

/// `rebalance pgroup -dry-run`: the plan of each enabled pool's job, nothing cancelled nor
/// started. Text: `<pool>: left out: <why>`, then `<pool>: <its plan>` (indented) or
/// `<pool>: failed: <error>`; `-json`: [`RebalanceDryJson`].
async fn dry_run_plans(
    here: Here<'_>,
    group: &str,
    metric: Metric,
    plan: &Plan,
    json: bool,
    out: &mut Output,
) -> Result<(), AdminError> {
    let checked = plan.check(group);
    let line = plan.dry_line(json);
    let results = if checked.is_ok() { on_each(here, &plan.pools, &[&line]).await } else { Vec::new() };
    if json {
        let mut pools: Vec<PoolPlan> = plan
            .left_out
            .iter()
            .map(|(name, why)| PoolPlan {
                pool: name.to_string(),
                outcome: "left_out",
                reason: Some(why.to_string()),
                plan: None,
                error: None,
            })
            .collect();
        let mut failed = 0;
        for (name, result) in &results {
            let parsed = result.as_ref().map_err(Clone::clone).and_then(|text| {
                serde_json::from_str::<serde_json::Value>(text).map_err(|e| {
                    RemoteError::new(ErrorCode::Protocol, format!("the dry run did not answer a plan: {e}"))
                })
            });
            pools.push(match parsed {
                Ok(plan) => {
                    PoolPlan { pool: name.to_string(), outcome: "planned", reason: None, plan: Some(plan), error: None }
                }
                Err(e) => {
                    failed += 1;
                    PoolPlan {
                        pool: name.to_string(),
                        outcome: "failed",
                        reason: None,
                        plan: None,
                        error: Some(ErrorJson::from(&e)),
                    }
                }
            });
        }
        let command = checked.is_ok().then(|| plan.line.clone());
        let doc = RebalanceDryJson {
            group: group.to_string(),
            metric: metric.to_string(),
            level: plan.level,
            command,
            pools,
        };
        write_document(out, &doc).await?;
        checked?;
        return summary(group, "planned the rebalance jobs", &results, failed);
    }
    let mut text = String::new();
    for (name, why) in &plan.left_out {
        let _ = writeln!(text, "{name}: left out: {why}");
    }
    if let Err(e) = checked {
        out.write(&text).await?;
        return Err(e.into());
    }
    let failed = report(&results, &mut text, |reply| reply.to_string());
    out.write(&text).await?;
    summary(group, "planned the rebalance jobs", &results, failed)
}

/// `rebalance pgroup -dry-run -json` (docs/json.md).
#[derive(Debug, Serialize)]
pub struct RebalanceDryJson {
    pub group: String,
    pub metric: String,
    pub level: Option<f64>,
    /// The `migration move` line each enabled pool would run; `null` when fewer than two
    /// enabled pools answered.
    pub command: Option<String>,
    pub pools: Vec<PoolPlan>,
}

/// One pool of a rebalance dry run.
#[derive(Debug, Serialize)]
pub struct PoolPlan {
    pub pool: String,
    /// `left_out`, `planned` or `failed`.
    pub outcome: &'static str,
    pub reason: Option<String>,
    /// `planned`: the plan of its job, as `migration move -dry-run -json` gives it.
    pub plan: Option<serde_json::Value>,
    pub error: Option<ErrorJson>,
}

/// Each pool's `rebalance` job, read from the output of its last line, `migration ls -json`
/// (an answer that is not a job list is a failure of that pool).
fn with_jobs(
    results: Vec<(PoolName, Result<String, RemoteError>)>,
) -> Vec<(PoolName, Result<Option<JobSummary>, RemoteError>)> {
    results
        .into_iter()
        .map(|(name, result)| {
            let job = result.and_then(|listed| {
                let jobs: Vec<JobSummary> = serde_json::from_str(&listed).map_err(|e| {
                    RemoteError::new(ErrorCode::Protocol, format!("`{LS_JSON_LINE}` did not answer a job list: {e}"))
                })?;
                Ok(jobs.into_iter().find(|j| j.id == JOB_ID && j.reason.is_none()))
            });
            (name, job)
        })
        .collect()
}

/// The outcome of each pool (`with_job` if it has a `rebalance` job, `without` if not) and
/// how many failed.
fn outcomes(
    results: &[(PoolName, Result<Option<JobSummary>, RemoteError>)],
    with_job: &'static str,
    without: &'static str,
) -> (Vec<PoolOutcome>, usize) {
    let mut failed = 0;
    let list = results
        .iter()
        .map(|(name, result)| {
            let pool = name.to_string();
            match result {
                Ok(job) => PoolOutcome {
                    pool,
                    outcome: if job.is_some() { with_job } else { without },
                    reason: None,
                    job: job.clone(),
                    error: None,
                },
                Err(e) => {
                    failed += 1;
                    PoolOutcome { pool, outcome: "failed", reason: None, job: None, error: Some(ErrorJson::from(e)) }
                }
            }
        })
        .collect();
    (list, failed)
}

/// The command's end: an error (so a script sees it) if some pool failed, with the code of the
/// first failure.
fn summary<T>(
    group: &str,
    done: &'static str,
    results: &[(PoolName, Result<T, RemoteError>)],
    failed: usize,
) -> Result<(), AdminError> {
    match results.iter().find_map(|(_, r)| r.as_ref().err()) {
        None => Ok(()),
        Some(first) => Err(RebalanceError::PoolsFailed {
            group: group.to_string(),
            failed,
            total: results.len(),
            done,
            first: first.code,
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidepool_p2p::model::SpaceInfo;

    fn name(n: &str) -> PoolName {
        n.parse().unwrap()
    }

    fn cost(used: u64, total: u64, enabled: bool) -> Answer {
        let space = SpaceInfo { total, used, free: total - used, precious: 0, removable: 0 };
        Answer::Cost(PoolCost { space, load: 0, accepts: enabled, enabled, run: 0 })
    }

    /// The plan for `members`: its line without the fixed head, its pools and what was left out.
    fn check(
        metric: Metric,
        members: &[(&str, Answer)],
        want_line: &str,
        want_pools: &[&str],
        want_out: &[(&str, &str)],
    ) {
        let members: Vec<(PoolName, Answer)> = members.iter().map(|(n, a)| (name(n), a.clone())).collect();
        let p = plan(metric, 30, &members);
        let head = "migration move -id=rebalance -refresh=30 ";
        assert_eq!(p.line.strip_prefix(head), Some(want_line), "{members:?}");
        assert_eq!(p.pools, want_pools.iter().map(|n| name(n)).collect::<Vec<_>>());
        let out: Vec<(PoolName, String)> = want_out.iter().map(|(n, w)| (name(n), w.to_string())).collect();
        let left_out: Vec<(PoolName, String)> =
            p.left_out.iter().map(|(n, why)| (n.clone(), why.to_string())).collect();
        assert_eq!(left_out, out);
    }

    #[test]
    fn relative_levels_at_the_groups_used_fraction() {
        const MI: u64 = 1 << 20;
        // 40 + 35 + 0 files of 1 MiB in three pools of 256 MiB: F = 75/768 = 0.09765625.
        check(
            Metric::Relative,
            &[
                ("pool1", cost(40 * MI, 256 * MI, true)),
                ("pool2", cost(35 * MI, 256 * MI, true)),
                ("pool3", cost(0, 256 * MI, true)),
            ],
            "-include-when='target.used < 0.09765625 * target.total' \
             -stop-when='targets == 0 or source.used <= 0.09765625 * source.total' -target=pool -- pool1 pool2 pool3",
            &["pool1", "pool2", "pool3"],
            &[],
        );
        // Disabled pools and pools that do not answer count for nothing and are no targets.
        check(
            Metric::Relative,
            &[
                ("a", cost(300, 1000, true)),
                ("b", cost(900, 1000, false)),
                ("c", Answer::None("offline (not reachable)".into())),
                ("d", cost(100, 1000, true)),
            ],
            "-include-when='target.used < 0.2 * target.total' \
             -stop-when='targets == 0 or source.used <= 0.2 * source.total' -target=pool -- a d",
            &["a", "d"],
            &[("b", "disabled"), ("c", "offline (not reachable)")],
        );
        // Pools of different sizes: the fraction, not the bytes, is levelled.
        check(
            Metric::Relative,
            &[("a", cost(0, 1000, true)), ("b", cost(750, 3000, true))],
            "-include-when='target.used < 0.1875 * target.total' \
             -stop-when='targets == 0 or source.used <= 0.1875 * source.total' -target=pool -- a b",
            &["a", "b"],
            &[],
        );
        // An empty group: F = 0, every job stops at once.
        check(
            Metric::Relative,
            &[("a", cost(0, 1000, true)), ("b", cost(0, 1000, true))],
            "-include-when='target.used < 0 * target.total' \
             -stop-when='targets == 0 or source.used <= 0 * source.total' -target=pool -- a b",
            &["a", "b"],
            &[],
        );
    }

    #[test]
    fn free_moves_towards_pools_with_more_free_space() {
        check(
            Metric::Free,
            &[("a", cost(300, 1000, true)), ("b", cost(0, 1000, true))],
            "-include-when='target.free > source.free' -stop-when='targets == 0' -target=pool -- a b",
            &["a", "b"],
            &[],
        );
    }

    #[test]
    fn the_line_is_a_valid_migration_move() {
        let members = [(name("pool1"), cost(10, 100, true)), (name("pool2"), cost(70, 300, true))];
        for metric in [Metric::Relative, Metric::Free] {
            let p = plan(metric, 5, &members);
            match crate::admin::parse(&p.line) {
                Ok(Some(crate::admin::Command::MigrationCreate { def, .. })) => {
                    assert_eq!(def.id, Some(JOB_ID.parse().unwrap()));
                    assert_eq!(def.refresh, Some(5));
                    assert!(def.include_when.is_some() && def.stop_when.is_some(), "{def:?}");
                }
                other => panic!("{}: {other:?}", p.line),
            }
        }
    }

    #[test]
    fn fewer_than_two_enabled_pools_is_nothing_to_level() {
        let members = |answers: Vec<Answer>| -> Vec<(PoolName, Answer)> {
            answers.into_iter().enumerate().map(|(i, a)| (name(&format!("p{i}")), a)).collect()
        };
        let p = plan(Metric::Relative, 30, &members(vec![cost(1, 10, true), cost(1, 10, false)]));
        let e = p.check("disk").unwrap_err().to_remote();
        assert_eq!(e.code(), Some(ErrorCode::InvalidArgument));
        assert_eq!(e.message, "p0 is the only enabled pool of pool group disk that answers: nothing to level");
        let p = plan(Metric::Relative, 30, &members(vec![cost(1, 10, false)]));
        assert_eq!(p.check("disk").unwrap_err().to_remote().code(), Some(ErrorCode::PoolDisabled));
        let p = plan(Metric::Free, 30, &members(vec![cost(1, 10, false), Answer::None("offline".into())]));
        assert_eq!(p.check("disk").unwrap_err().to_remote().code(), Some(ErrorCode::Offline));
        let p = plan(Metric::Free, 30, &members(vec![cost(1, 10, true), cost(1, 10, true)]));
        assert_eq!(p.check("disk"), Ok(()));
    }

    #[tokio::test]
    async fn run_lines_takes_a_missing_job_as_nothing_to_cancel() {
        let lines = vec![CANCEL_LINE.to_string(), "migration move x".to_string()];
        let not_found = || RemoteError::new(ErrorCode::JobNotFound, "Job not found");
        let script = |reply: fn(&str) -> Result<String, RemoteError>| Target::Scripted(reply);
        let r = run_lines(
            &lines,
            &mut script(|l| {
                if l == CANCEL_LINE {
                    Err(RemoteError::new(ErrorCode::JobNotFound, "Job not found"))
                } else {
                    Ok("[rebalance] NEW\n".into())
                }
            }),
        )
        .await;
        assert_eq!(r, Ok("[rebalance] NEW\n".to_string()));
        // The same message from the second line is an error.
        let r = run_lines(
            &lines,
            &mut script(|l| {
                if l == CANCEL_LINE {
                    Ok(String::new())
                } else {
                    Err(RemoteError::new(ErrorCode::JobNotFound, "Job not found"))
                }
            }),
        )
        .await;
        assert_eq!(r, Err(not_found()));
        let other = RemoteError::new(ErrorCode::Internal, "boom");
        let r = run_lines(&lines, &mut script(|_| Err(RemoteError::new(ErrorCode::Internal, "boom")))).await;
        assert_eq!(r, Err(other));
        let mut missing = script(|_| Err(RemoteError::new(ErrorCode::JobNotFound, "Job not found")));
        assert_eq!(run_lines(&lines[..1], &mut missing).await, Ok(String::new()));
    }
}
