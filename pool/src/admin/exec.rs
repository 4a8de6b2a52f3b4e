//! Executes parsed admin commands against a pool. Commands are async functions on the pool's
//! runtime (the connection's task runs them): output goes to an [`Output`] whose writes wait
//! until the client has taken what came before (so `rep ls` over a million replicas streams in
//! bounded memory), and fail when the client went away, which stops the command. Only the
//! replica listing, which walks the whole repository, runs on a blocking thread
//! ([`Output::from_blocking`]); `pp get file -wait` and `rebalance` wait without holding one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::TimeZone;
use tidepool_migration::MigrationError;
use tidepool_migration::module::Module;
use tidepool_p2p::model::{NEVER, PoolMode, ReplicaState, StickyMode, StickyRecord};
use tidepool_p2p::{PnfsId, PoolName};

use super::error::AdminError;
use super::output::Output;
use super::rep_ls::{ClassStats, each_selected, rep_ls_line};
use super::{COMMANDS, Command, InfoView, RepLs};
use crate::migration_env::PoolEnv;
use crate::node::Node;
use crate::pool::{ModeState, Pool, now_ms};
use crate::repository::RepoError;
use crate::transfer::{self, PullRequest, Transfers};
/// Whole-string glob match with `*` and `?` (the same globs as `migration -include/-exclude`).
pub use tidepool_migration::targets::glob_match;

/// Parses and runs one line.
pub async fn run_line(node: &Arc<Node>, line: &str, out: &mut Output) -> Result<(), AdminError> {
    match super::parse(line) {
        Ok(None) => Ok(()),
        Ok(Some(cmd)) => execute(node, cmd, out).await,
        Err(e) => Err(AdminError::Syntax { code: e.code, message: e.render(line) }),
    }
}

/// [`run_line`] into a buffer, boxed: how `rebalance` runs a line on its own pool (the box
/// ends the recursion of a command that runs commands).
pub fn run_here(node: Arc<Node>, line: String) -> super::rebalance::Running {
    Box::pin(async move {
        let mut out = Output::buffer();
        run_line(&node, &line, &mut out).await.map(|()| out.into_text())
    })
}

pub async fn execute(node: &Arc<Node>, cmd: Command, out: &mut Output) -> Result<(), AdminError> {
    let pool = &node.pool;
    let now = now_ms();
    match cmd {
        Command::Help { topic } => help(&topic, out).await,
        Command::Info { json: false } => info(node, out).await,
        Command::Info { json: true } => super::json::write_document(out, &super::json::info(node)).await,
        Command::RepLs(ls) => rep_ls(pool, ls, out).await,
        Command::RepStickyLs { pnfsid, json: true } => {
            let r = pool.repo.get(&pnfsid)?.ok_or(RepoError::NotFound(pnfsid))?;
            super::json::write_document(out, &super::json::sticky_records(&r.sticky, now)).await
        }
        Command::RepStickyLs { pnfsid, json: false } => {
            let r = pool.repo.get(&pnfsid)?.ok_or(RepoError::NotFound(pnfsid))?;
            let mut text = String::new();
            for s in r.sticky.iter().filter(|s| s.is_valid(now)) {
                if s.expire == NEVER {
                    let _ = writeln!(text, "{} : never expires", s.owner);
                } else {
                    let _ = writeln!(text, "{} : expires {}", s.owner, format_time(s.expire));
                }
            }
            Ok(out.write(&text).await?)
        }
        Command::RepSetSticky { pnfsid, owner, lifetime_ms, on } => {
            let expire = match (on, lifetime_ms) {
                (false, _) => 0,
                (true, NEVER) => NEVER,
                (true, l) => now.saturating_add(l),
            };
            // A change waits for a shared flush (an fsync), which may queue behind a job's:
            // on the blocking pool, like every other disk wait of a command.
            let repo = pool.repo.clone();
            let record = StickyRecord::new(owner, expire);
            crate::io::blocking(move || repo.set_sticky(&pnfsid, record, StickyMode::Overwrite, now)).await?;
            Ok(())
        }
        Command::RepSetState { pnfsid, state } => {
            let repo = pool.repo.clone();
            Ok(crate::io::blocking(move || repo.set_state(&pnfsid, state, now)).await?)
        }
        Command::RepRm { pnfsid, force } => {
            if pool.repo.get(&pnfsid)?.is_none() {
                return Err(RepoError::NotFound(pnfsid).into());
            }
            // Deletes the data file: on the blocking pool.
            let repo = pool.repo.clone();
            crate::io::blocking(move || repo.remove(&pnfsid, force, now)).await?;
            out.write(&format!("Removed {pnfsid}\n")).await?;
            Ok(())
        }
        Command::PoolDisable { bits, error_code, message } => {
            let p = pool.clone();
            let mode = ModeState { mode: PoolMode::from_bits(bits), error_code, message };
            crate::io::blocking(move || p.set_mode(mode)).await?;
            out.write("Pool disabled\n").await?;
            Ok(())
        }
        Command::PoolEnable => {
            let p = pool.clone();
            crate::io::blocking(move || p.set_mode(ModeState::enabled())).await?;
            out.write("Pool enabled\n").await?;
            Ok(())
        }
        Command::PpGetFile { pnfsids, source, wait, force_source_mode } => {
            pp_get_file(node, pnfsids, source, wait, force_source_mode, out).await
        }
        Command::PpLs { long, json: false } => pp_ls(&node.transfers, long, out).await,
        Command::PpLs { long, json: true } => {
            super::json::write_document(out, &super::json::pp_ls(&node.transfers, long)).await
        }
        Command::PpSetMaxActive(n) => {
            node.transfers.incoming.set_limit(n);
            out.write(&format!("Max active set to {n}\n")).await?;
            Ok(())
        }
        Command::PpSetMaxOutgoing(n) => {
            node.transfers.outgoing.set_limit(n);
            out.write(&format!("Max outgoing set to {n}\n")).await?;
            Ok(())
        }
        Command::PpRemove(id) => {
            if !node.transfers.cancel(id) {
                return Err(AdminError::NoTransfer(id));
            }
            out.write(&format!("Cancelling transfer {id}; `pp ls -l` shows how it ended\n")).await?;
            Ok(())
        }
        Command::Save => {
            let (repo, module) = (pool.repo.clone(), migration(node)?.clone());
            let text = crate::io::blocking(move || crate::migration_env::save(&repo, &module)).await?;
            Ok(out.write(&format!("{text}\n")).await?)
        }
        Command::LogSet { target, level } => {
            let levels = log_control(pool)?.set(&target, level).map_err(|e| AdminError::LogFilter(e.to_string()))?;
            tracing::info!(filter = %levels, "log filter changed by `log set`");
            Ok(out.write(&format!("Log filter: {levels}\n")).await?)
        }
        Command::LogLs { json: true } => {
            super::json::write_document(out, &super::json::log_ls(&log_control(pool)?.levels())).await
        }
        Command::LogLs { json: false } => {
            let levels = log_control(pool)?.levels();
            let mut text = format!("{:<32} {}\n", "all", levels.default);
            for (target, level) in &levels.targets {
                let _ = writeln!(text, "{target:<32} {level}");
            }
            Ok(out.write(&text).await?)
        }
        Command::MigrationCreate { def, command } => reply(out, migration(node)?.create(*def, command)).await,
        Command::MigrationDryRun { def, command, json } => {
            let plan = migration(node)?.dry_run(*def, command).await;
            reply(out, plan.map(|p| if json { p.to_json() } else { p.render() })).await
        }
        Command::MigrationLs { json: false } => {
            let mut text = String::new();
            for line in migration(node)?.ls() {
                let _ = writeln!(text, "{line}");
            }
            Ok(out.write(&text).await?)
        }
        Command::MigrationLs { json: true } => reply(out, Ok(migration(node)?.ls_json())).await,
        Command::MigrationInfo { job, view } => {
            let m = migration(node)?;
            let text = match view {
                InfoView::Report => m.info(job.as_str()),
                InfoView::Failed => m.info_failed(job.as_str()),
                InfoView::Json => m.info_json(job.as_str()),
            };
            reply(out, text).await
        }
        Command::MigrationReport { job, all, json } => {
            let report = migration(node)?.completion(job.as_str(), all);
            let text = report.map(|r| {
                if json { serde_json::to_string_pretty(&r).expect("a report always serialises") } else { r.render() }
            });
            reply(out, text).await
        }
        Command::MigrationSuspend { job } => reply(out, migration(node)?.suspend(job.as_str())).await,
        Command::MigrationResume { job } => reply(out, migration(node)?.resume(job.as_str())).await,
        Command::MigrationCancel { job, force } => {
            reply(out, migration(node)?.cancel(job.as_str(), force, CANCEL_REASON)).await
        }
        Command::MigrationClear => {
            migration(node)?.clear();
            Ok(())
        }
        Command::MigrationSetConcurrency { job, n, deprecated } => {
            let text = migration(node)?.set_concurrency(job.as_str(), n);
            reply(out, text.map(|t| if deprecated { format!("{t}{DEPRECATED_CONCURRENCY}") } else { t })).await
        }
        Command::MigrationSetRate { job, rate } => reply(out, migration(node)?.set_rate(job.as_str(), rate)).await,
        Command::MigrationSetDefaultConcurrency(n) => {
            migration(node)?.set_default_concurrency(n);
            reply(out, Ok(format!("Default concurrency set to {n}"))).await
        }
        Command::MigrationGetDefaultConcurrency => {
            reply(out, Ok(format!("Current default concurrency: {}", migration(node)?.default_concurrency()))).await
        }
        Command::MigrationSetDefaultRefresh(n) => {
            migration(node)?.set_default_refresh(n);
            reply(out, Ok(format!("Default refresh interval set to {n}"))).await
        }
        Command::MigrationGetDefaultRefresh => {
            reply(out, Ok(format!("Current default refresh interval: {}", migration(node)?.default_refresh()))).await
        }
        Command::Rebalance { group, metric, refresh, json, dry_run } => {
            let here = super::rebalance::Here { node, run: run_here };
            super::rebalance::start(here, &group, metric, refresh, json, dry_run, out).await
        }
        Command::RebalanceCancel { group, json } => {
            let here = super::rebalance::Here { node, run: run_here };
            super::rebalance::cancel(here, &group, json, out).await
        }
        Command::Psu(p) => Ok(super::psu::execute(node, p, out).await?),
        Command::TlsReload => Ok(super::tls::reload(node, out).await?),
    }
}

/// The pool's migration module; the daemon always starts it, a bare [`Pool`] (in tests) may not.
fn migration(node: &Node) -> Result<&Arc<Module<PoolEnv>>, AdminError> {
    node.try_migration().ok_or(AdminError::NoMigration)
}

/// The run-time log control; only a pool run by `tidepool pool` has one (pools sharing a
/// process, as in the demo, share its log).
fn log_control(pool: &Pool) -> Result<&Arc<crate::process::logging::LogControl>, AdminError> {
    pool.log.get().ok_or(AdminError::SharedLog)
}

/// The reason `migration cancel` gives the module (it shows in the job's notes).
const CANCEL_REASON: &str = "by the operator";

/// dCache's suffix to the reply of `migration concurrency`.
const DEPRECATED_CONCURRENCY: &str = " (Warning: this command is deprecated, please use 'migration set concurrency')";

/// Writes the migration module's reply, ending with a newline; its refusals become their code
/// (`JobNotFound` for an unknown job, `InvalidArgument` for a state that does not allow the
/// command) with the module's message.
async fn reply(out: &mut Output, result: Result<String, MigrationError>) -> Result<(), AdminError> {
    let mut text = result?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(out.write(&text).await?)
}

/// How often `pp get file -wait` reports progress (it also keeps the shell's connection busy).
const WAIT_REPORT: Duration = Duration::from_secs(10);

async fn pp_get_file(
    node: &Arc<Node>,
    pnfsids: Vec<PnfsId>,
    source: PoolName,
    wait: bool,
    force_source_mode: bool,
    out: &mut Output,
) -> Result<(), AdminError> {
    let pool = &node.pool;
    let Some(runtime) = pool.runtime.clone() else {
        return Err(AdminError::NoRuntime);
    };
    if source == pool.name {
        return Err(AdminError::SourceIsHere(source));
    }
    if pool.cluster.pool(&source).is_none() {
        return Err(AdminError::UnknownPool(source));
    }
    // In the pool's span (this runs inside it), so the transfers' log lines name the pool.
    let span = tracing::Span::current();
    let mut started = Vec::with_capacity(pnfsids.len());
    let mut queued = String::new();
    for pnfsid in pnfsids {
        let entry = node.transfers.register(pnfsid, source.clone());
        let id = entry.id;
        let req = PullRequest {
            pnfsid,
            source: source.clone(),
            state: ReplicaState::Cached,
            sticky: Vec::new(),
            atime: None,
            force_source_mode,
            copy_of: None,
        };
        let transfers = node.transfers.clone();
        let progress = entry.clone();
        let work = async move { transfer::pull(&transfers, entry, req).await };
        let task = pool.tasks.spawn_on(tracing::Instrument::instrument(work, span.clone()), &runtime);
        let _ = writeln!(queued, "[{id}] {pnfsid} from {source}: queued");
        started.push((id, pnfsid, progress, task));
    }
    if !wait {
        out.write(&queued).await?;
        return Ok(());
    }
    let clock = std::time::Instant::now();
    let count = started.len();
    let mut first_error = None;
    let mut failures = 0;
    for (id, pnfsid, progress, mut task) in started {
        let result = loop {
            // Waits on the connection's task; no thread is held meanwhile.
            match tokio::time::timeout(WAIT_REPORT, &mut task).await {
                Ok(joined) => {
                    break joined
                        .map_err(|e| AdminError::TransferTask(e.to_string()))
                        .and_then(|r| r.map_err(AdminError::from));
                }
                Err(_) => {
                    let done = progress.done.load(Ordering::Relaxed);
                    let size = progress.size.load(Ordering::Relaxed);
                    // If the client left, the transfers go on; `pp ls` still shows them.
                    out.write(&format!("[{id}] {pnfsid} from {source}: {done}/{size} bytes\n")).await?;
                }
            }
        };
        match result {
            Ok(replica) => {
                let checksum = replica.attrs.checksum.map(|c| c.to_string()).unwrap_or_default();
                let secs = clock.elapsed().as_secs_f64();
                out.write(&format!(
                    "[{id}] {pnfsid} from {source}: done, {} bytes, {checksum}, {secs:.1} s\n",
                    replica.attrs.size
                ))
                .await?;
            }
            Err(e) if count == 1 => return Err(e),
            Err(e) => {
                let shown = e.to_remote();
                out.write(&format!("[{id}] {pnfsid} from {source}: failed: {} (rc={})\n", shown.message, shown.code))
                    .await?;
                failures += 1;
                first_error.get_or_insert(shown.code);
            }
        }
    }
    match first_error {
        None => Ok(()),
        Some(first) => Err(AdminError::TransfersFailed { failures, count, first }),
    }
}

async fn pp_ls(transfers: &Transfers, long: bool, out: &mut Output) -> Result<(), AdminError> {
    let (active, queued, limit) = transfers.incoming.counts();
    let (outgoing, out_queued, out_limit) = transfers.outgoing.counts();
    let opened = transfers.connections_opened();
    let mut t = format!(
        "incoming: {active} active of max {limit}, {queued} queued; outgoing: {outgoing} active of max {out_limit}, {out_queued} queued; connections opened: {opened}\n"
    );
    for e in transfers.list() {
        let age = e.created.elapsed().as_secs();
        match e.started.get() {
            Some(started) => {
                let done = e.done.load(Ordering::Relaxed);
                let size = e.size.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let rate = done as f64 / secs / 1048576.0;
                let _ = writeln!(
                    t,
                    "[{}] {} from {} ACTIVE {done}/{size} bytes {rate:.1} MiB/s {age} s",
                    e.id, e.pnfsid, e.source
                );
            }
            None => {
                let _ = writeln!(t, "[{}] {} from {} QUEUED {age} s", e.id, e.pnfsid, e.source);
            }
        }
    }
    if long {
        for f in transfers.recent() {
            match &f.error {
                None => {
                    let _ = writeln!(
                        t,
                        "[{}] {} from {} DONE {} bytes in {:.1} s",
                        f.id, f.pnfsid, f.source, f.bytes, f.seconds
                    );
                }
                Some(e) => {
                    let _ =
                        writeln!(t, "[{}] {} from {} FAILED: {} (rc={})", f.id, f.pnfsid, f.source, e.message, e.code);
                }
            }
        }
    }
    out.write(&t).await?;
    Ok(())
}

/// Local time as Java's `Date.toString` prints it, which dCache operators know.
fn format_time(ms: i64) -> String {
    match chrono::Local.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%a %b %d %H:%M:%S %Z %Y").to_string(),
        None => format!("{ms} ms"),
    }
}

async fn help(topic: &[String], out: &mut Output) -> Result<(), AdminError> {
    if topic.is_empty() {
        let mut text = String::new();
        for c in COMMANDS {
            let _ = writeln!(text, "{:<44} # {}", c.usage_short(), c.summary);
        }
        out.write(&text).await?;
        return Ok(());
    }
    let wanted = topic.join(" ");
    let matching: Vec<_> =
        COMMANDS.iter().filter(|c| c.name == wanted || c.name.starts_with(&format!("{wanted} "))).collect();
    match matching.as_slice() {
        [] => Err(AdminError::UnknownTopic(super::spec::echo(&wanted).into_owned())),
        [one] => Ok(out.write(&one.help()).await?),
        many => {
            let mut text = String::new();
            for c in many {
                let _ = writeln!(text, "{:<44} # {}", c.usage_short(), c.summary);
            }
            Ok(out.write(&text).await?)
        }
    }
}

/// `pool:pool1, valid until 2027-01-31 (420 days)`, with a warning when it expires within
/// [`EXPIRY_WARNING`] (`docs/security.md`, "Rotation").
fn certificate_line(cert: &tidepool_p2p::tls::CertInfo, now_secs: i64) -> String {
    let c = super::json::CertificateJson::of(cert, now_secs);
    let mut line = format!("{}, valid until {} ({} days)", c.identity, c.valid_until, c.days_left);
    if c.expires_soon {
        line.push_str(" -- EXPIRES SOON: issue a new certificate and reload it (tls reload or SIGHUP)");
    }
    line
}

async fn info(node: &Node, out: &mut Output) -> Result<(), AdminError> {
    let pool = &node.pool;
    let now = now_ms();
    let space = pool.repo.space(now);
    let mode = pool.mode();
    let mut t = String::new();
    let _ = writeln!(t, "--- pool (Tidepool storage pool) ---");
    let _ = writeln!(t, "Pool name      : {}", pool.name);
    let _ = writeln!(t, "Mode           : {}", mode.mode);
    if !mode.mode.is_enabled() {
        let _ = writeln!(t, "Disabled with  : [{}] {}", mode.error_code, mode.message);
    }
    if let Some(entry) = pool.cluster.pool(&pool.name) {
        let _ = writeln!(t, "Pool groups    : {}", entry.groups.join(","));
    }
    let stale = if pool.cluster.is_stale() { " (stale: etcd cannot be reached; the last view is used)" } else { "" };
    let _ = writeln!(t, "Membership     : {}{stale}", pool.cluster.backend());
    let _ = writeln!(t, "Certificate    : {}", certificate_line(&pool.credentials.info(), now / 1000));
    let _ = writeln!(t, "--- space ---");
    let _ = writeln!(t, "Total          : {} bytes", space.total);
    let _ = writeln!(t, "Used           : {} bytes", space.used);
    let _ = writeln!(t, "Free           : {} bytes", space.free);
    let _ = writeln!(t, "Precious       : {} bytes", space.precious);
    let _ = writeln!(t, "Removable      : {} bytes", space.removable);
    let (held, held_bytes) = pool.repo.held_space(now);
    if held > 0 {
        let _ =
            writeln!(t, "Held           : {held_bytes} bytes in {held} cached replicas (copies of moves, not evicted)");
    }
    let counts: Vec<(ReplicaState, usize)> = pool.repo.counts().into_iter().filter(|(_, n)| *n > 0).collect();
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    let by_state: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    if total == 0 {
        let _ = writeln!(t, "Replicas       : 0");
    } else {
        let _ = writeln!(t, "Replicas       : {total} ({})", by_state.join(", "));
    }
    let _ = writeln!(t, "--- recovery at start ---");
    if pool.recovery.is_clean() {
        let _ = writeln!(t, "clean: nothing to report ({} replicas loaded)", pool.recovery.loaded);
    } else {
        for line in pool.recovery.report() {
            let _ = writeln!(t, "{line}");
        }
    }
    let jobs = node.try_migration().map(|m| m.ls()).unwrap_or_default();
    let problems = node.try_migration().map(|m| m.problems()).unwrap_or_default();
    if !jobs.is_empty() || !problems.is_empty() {
        let _ = writeln!(t, "--- migration (Replica migration module client) ---");
        for line in jobs {
            let _ = writeln!(t, "{line}");
        }
        for line in problems {
            let _ = writeln!(t, "restore: {line}");
        }
    }
    if let Some(s) = pool.started.get() {
        let _ = writeln!(t, "--- service ---");
        let _ = writeln!(t, "Version        : {}", s.version);
        let uptime = now.saturating_sub(s.at) / 1000;
        let _ = writeln!(t, "Started        : {} (up {uptime} s)", format_time(s.at));
        let _ = writeln!(t, "Start-up took  : {:.3} s", s.startup.as_secs_f64());
        let _ = writeln!(t, "Data directory : {}", s.data_dir.display());
        let _ = writeln!(t, "Capacity       : {} bytes", s.capacity);
        let _ = writeln!(t, "Admin listener : {}", s.admin);
        let _ = writeln!(t, "Data listener  : {}", s.data);
        match pool.metrics_addr.get() {
            Some(a) => {
                let _ = writeln!(t, "Metrics        : http://{a}/metrics");
            }
            None => {
                let _ = writeln!(t, "Metrics        : off");
            }
        }
    }
    if let Some(log) = pool.log.get() {
        let _ = writeln!(t, "Log filter     : {}", log.levels());
    }
    out.write(&t).await?;
    Ok(())
}

/// `rep ls`: the walk over the repository runs on a blocking thread (a pool holds millions of
/// replicas), streaming its lines back through `out`; the summary is written here.
async fn rep_ls(pool: &Arc<Pool>, ls: RepLs, out: &mut Output) -> Result<(), AdminError> {
    let now = now_ms();
    let summarise = ls.stats.is_some() || ls.sum;
    let (p, listing) = (pool.clone(), ls.clone());
    let walked = out
        .from_blocking(move |out| -> Result<_, AdminError> {
            let (pool, ls) = (&*p, &listing);
            let mut classes: BTreeMap<String, ClassStats> = BTreeMap::new();
            let missing = if summarise {
                each_selected(pool, ls, now, &mut |r| {
                    let class = r.attrs.storage_class.clone().unwrap_or_else(|| "<unknown>".into());
                    classes.entry(class).or_default().add(r, now);
                    Ok(())
                })?
            } else if ls.json {
                super::json::rep_ls(pool, ls, now, out)?
            } else {
                let mut buffer = String::new();
                let missing = each_selected(pool, ls, now, &mut |r| {
                    buffer.push_str(&rep_ls_line(r, now));
                    if buffer.len() > 32 * 1024 {
                        out.write(&buffer)?;
                        buffer.clear();
                    }
                    Ok(())
                })?;
                out.write(&buffer)?;
                missing
            };
            Ok((classes, missing))
        })
        .await?;
    let (classes, missing) = walked?;
    if summarise {
        let unit = ls.stats.unwrap_or(super::SizeUnit::B);
        let mut total = ClassStats::default();
        for s in classes.values() {
            total.merge(s);
        }
        if ls.json {
            let classes =
                classes.into_iter().map(|(storage_class, stats)| super::json::ClassJson { storage_class, stats });
            super::json::write_document(out, &super::json::RepStatsJson { classes: classes.collect(), total }).await?;
        } else {
            let mut text = String::new();
            if ls.stats.is_some() {
                text.push_str(&format!(
                    "{:<24} {:>10} {:>14} {:>10} {:>14} {:>10} {:>14}\n",
                    "storage class", "files", "bytes", "precious", "precious bytes", "sticky", "sticky bytes"
                ));
                for (name, s) in &classes {
                    text.push_str(&s.row(name, unit));
                }
            }
            if ls.sum {
                text.push_str(&total.row("TOTAL", unit));
            }
            out.write(&text).await?;
        }
    }
    if !missing.is_empty() {
        return Err(AdminError::NotInPool(missing));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::rep_ls::flags;
    use crate::repository::Replica;
    use crate::repository::testing::{NOW, attrs, id};
    use tidepool_p2p::model::FileAttributes;
    use tidepool_p2p::{ErrorCode, RemoteError};

    fn replica(state: ReplicaState, sticky: bool) -> Replica {
        let a: FileAttributes = attrs(id(1), 5242880);
        Replica { attrs: a, state, sticky: if sticky { vec![StickyRecord::new("x", NOW)] } else { vec![] } }
    }

    #[test]
    fn expired_sticky_records_do_not_show() {
        assert_eq!(flags(&replica(ReplicaState::Cached, true), NOW - 1), "<C-------X--L(0)[0]>");
        assert_eq!(flags(&replica(ReplicaState::Cached, true), NOW), "<C----------L(0)[0]>");
    }

    #[test]
    fn rep_ls_lines_match_dcache() {
        let mut r = replica(ReplicaState::Cached, false);
        r.attrs.storage_class = Some("test:tape".into());
        assert_eq!(rep_ls_line(&r, NOW), format!("{} <C----------L(0)[0]> 5242880 si={{test:tape}}\n", id(1)));
        assert_eq!(flags(&replica(ReplicaState::Precious, true), NOW - 1), "<-P------X--L(0)[0]>");
        assert_eq!(flags(&replica(ReplicaState::FromPool, false), NOW), "<----M------L(0)[0]>");
        assert_eq!(flags(&replica(ReplicaState::Broken, false), NOW), "<---------E-L(0)[0]>");
        let mut unknown = replica(ReplicaState::FromStore, false);
        unknown.attrs.storage_class = None;
        assert_eq!(rep_ls_line(&unknown, NOW), format!("{} <---S-------L(0)[0]> 0 si={{<unknown>}}\n", id(1)));
    }

    /// A pool in a cluster of two whose other pool, `pool2`, is offline; its migration module
    /// is started.
    fn migrating_pool() -> Arc<Node> {
        use crate::repository::{MemStore, Repository};
        use tidepool_p2p::cluster::{ClusterFile, PoolEntry};

        let entry = |name: &str, port: u16| PoolEntry {
            name: name.parse().unwrap(),
            p2p: ([127, 0, 0, 1], port).into(),
            admin: ([127, 0, 0, 1], port).into(),
            groups: vec!["disk".into()],
            tags: Default::default(),
            hsm: vec![],
        };
        // Port 1 on loopback: nothing listens, so pool2 is offline.
        let cluster = ClusterFile { pools: vec![entry("pool1", 1), entry("pool2", 1)], links: vec![] };
        let (repo, recovery) = Repository::open(MemStore::new(), 1 << 30, now_ms()).unwrap();
        let pool = Pool::new(
            "pool1".parse().unwrap(),
            repo,
            recovery,
            cluster,
            tidepool_p2p::tls::testing::pool("pool1"),
            "PinManager".into(),
        )
        .unwrap();
        let node = Arc::new(Node::new(Arc::new(Transfers::new(Arc::new(pool), &Default::default()))));
        node.start_migration(Default::default());
        node
    }

    /// `info`'s certificate line, and its warning within the last 14 days.
    #[test]
    fn the_certificate_line_warns_before_expiry() {
        use tidepool_p2p::tls::{CertInfo, Identity, Role};
        let cert = CertInfo { identity: Identity { role: Role::Pool, name: "pool1".into() }, not_after: 86_400 * 400 };
        assert_eq!(certificate_line(&cert, 86_400 * 35), "pool:pool1, valid until 1971-02-05 (365 days)");
        let soon = certificate_line(&cert, 86_400 * 390);
        assert!(soon.starts_with("pool:pool1, valid until 1971-02-05 (10 days) -- EXPIRES SOON"), "{soon}");
        assert!(certificate_line(&cert, 86_400 * 401).contains("(-1 days) -- EXPIRES SOON"));
    }

    /// Runs `line` as the admin endpoint would, from a blocking thread of the test.
    fn run(pool: &Arc<Node>, line: &str) -> Result<String, RemoteError> {
        let (out, err) = run_both(pool, line);
        match err {
            None => Ok(out),
            Some(e) => Err(e),
        }
    }

    fn refused(pool: &Arc<Node>, line: &str) -> String {
        let err = run(pool, line).expect_err(line);
        assert_eq!(err.code, ErrorCode::InvalidArgument.as_u32(), "{line:?}: {err:?}");
        err.message
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migration_commands_reply_like_dcache() {
        let pool = migrating_pool();
        let p = pool.clone();
        tokio::task::spawn_blocking(move || {
            let pool = &p;
            let ls = |pool: &Arc<Node>| run(pool, "migration ls").unwrap();
            assert_eq!(run(pool, "migration get concurrency-default").unwrap(), "Current default concurrency: 1\n");
            assert_eq!(run(pool, "migration set concurrency-default 3").unwrap(), "Default concurrency set to 3\n");
            assert_eq!(run(pool, "migration get concurrency-default").unwrap(), "Current default concurrency: 3\n");
            assert_eq!(ls(pool), "");
            assert!(!run(pool, "info").unwrap().contains("--- migration"), "no jobs, no section");

            let command = format!("migration copy -pnfsid={} -- pool2", id(1));
            let created = run(pool, &format!("migration copy -pnfsid={} pool2", id(1))).unwrap();
            assert!(created.starts_with("[1] ") && created.ends_with(&format!(" {command}\n")), "{created:?}");
            assert_eq!(created.len(), "[1] ".len() + 12 + 1 + command.len() + 1, "the state is padded to 12");

            let listed = ls(pool);
            assert_eq!(listed.lines().count(), 1);
            assert!(listed.starts_with("[1] ") && listed.ends_with(&format!(" {command}\n")), "{listed:?}");
            let info = run(pool, "info").unwrap();
            let section = info.split_once("--- migration (Replica migration module client) ---\n").unwrap().1;
            assert!(section.starts_with("[1] ") && section.ends_with(&format!(" {command}\n")), "{info}");
            let json = run(pool, "migration ls -json").unwrap();
            assert!(json.starts_with('[') && json.ends_with("]\n"), "{json}");
            assert!(json.contains(r#""id": "1""#) && json.contains(&format!(r#""command": "{command}""#)), "{json}");

            let report = run(pool, "migration info 1").unwrap();
            assert!(report.starts_with(&format!("Command    : {command}\nState      : ")), "{report}");
            assert!(report.contains("Concurrency: 3\n"), "the default reached the job: {report}");
            assert!(run(pool, "migration info -failed 1").unwrap().ends_with('\n'));
            let json = run(pool, "migration info -json 1").unwrap();
            assert!(json.starts_with('{') && json.contains(&format!(r#""command": "{command}""#)), "{json}");

            assert_eq!(run(pool, "migration set concurrency 1 5").unwrap(), "[1] Concurrency set to 5\n");
            assert_eq!(
                run(pool, "migration concurrency 1 6").unwrap(),
                "[1] Concurrency set to 6 (Warning: this command is deprecated, please use 'migration set concurrency')\n"
            );
            for line in [
                "migration info 9",
                "migration suspend 9",
                "migration resume 9",
                "migration cancel 9",
                "migration set concurrency 9 1",
            ] {
                let err = run(pool, line).expect_err(line);
                assert_eq!(err.code, ErrorCode::JobNotFound.as_u32(), "{line:?}: {err:?}");
                assert_eq!(err.message, "Job not found", "dCache's message: {line}");
            }

            // Bad lines make no job, whether the parser or the module refuses them.
            assert_eq!(refused(pool, "migration copy -replicas=0 pool2"), "Number of replicas must be positive.");
            assert_eq!(refused(pool, "migration move"), "target(s) required when target type is pool");
            assert_eq!(
                refused(pool, "migration copy -permanent -stop-when=true pool2"),
                "Permanent jobs cannot have a stop condition."
            );
            assert_eq!(refused(pool, "migration copy pool9"), "pool pool9 is not in the cluster file");
            let err = run(pool, "migration copy -nosuch pool2").unwrap_err();
            assert_eq!(err.code, ErrorCode::Syntax.as_u32());
            assert_eq!(ls(pool).lines().count(), 1, "no job was made by a bad line");

            let cancelled = run(pool, "migration cancel -force 1").unwrap();
            assert!(cancelled.starts_with("[1] ") && cancelled.ends_with(&format!(" {command}\n")), "{cancelled:?}");
            assert_eq!(run(pool, "migration clear").unwrap(), "");
            // Whatever `clear` kept has not ended yet.
            for line in ls(pool).lines() {
                assert!(["FINISHED", "CANCELLED", "FAILED"].iter().all(|s| !line.contains(&format!(" {s} "))), "{line}");
            }
        })
        .await
        .unwrap();
        pool.stop_migration(Duration::from_secs(5)).await;
    }

    /// Runs `line`, returning its output and, if it failed, its error.
    fn run_both(pool: &Arc<Node>, line: &str) -> (String, Option<RemoteError>) {
        let mut out = Output::buffer();
        let result = tokio::runtime::Handle::current().block_on(run_line(pool, line, &mut out));
        (out.into_text(), result.err().map(|e| e.to_remote()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refresh_default_and_rebalance_with_the_other_pool_offline() {
        let pool = migrating_pool();
        let p = pool.clone();
        tokio::task::spawn_blocking(move || {
            let pool = &p;
            assert_eq!(run(pool, "migration get refresh-default").unwrap(), "Current default refresh interval: 300\n");
            assert_eq!(run(pool, "migration set refresh-default 60").unwrap(), "Default refresh interval set to 60\n");
            assert_eq!(run(pool, "migration get refresh-default").unwrap(), "Current default refresh interval: 60\n");
            assert!(refused(pool, "migration set refresh-default 0").starts_with("Refresh interval must be positive."));

            let err = run(pool, "rebalance pgroup tape").unwrap_err();
            assert_eq!((err.code, err.message.as_str()), (4, "no pool group named tape in the cluster file"));
            let err = run(pool, "rebalance cancel pgroup tape").unwrap_err();
            assert_eq!(err.message, "no pool group named tape in the cluster file");

            // pool2 does not answer: left out, and pool1 alone has nothing to level.
            let (out, err) = run_both(pool, "rebalance pgroup disk");
            assert_eq!(out, "pool2: left out: offline (not reachable)\n");
            let err = err.expect("nothing to level");
            assert_eq!(err.message, "pool1 is the only enabled pool of pool group disk that answers: nothing to level");
            assert_eq!(run(pool, "migration ls").unwrap(), "", "no job was started");

            // The cancel reaches pool1 (no job there) but not pool2: it fails, naming pool2.
            let (out, err) = run_both(pool, "rebalance cancel pgroup disk");
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines[0], "pool1: no rebalance job", "{out}");
            assert!(lines[1].starts_with("pool2: failed: pool2 is offline: connection refused at "), "{out}");
            assert_eq!(lines.len(), 2, "{out}");
            let err = err.expect("pool2 was not reached");
            assert_eq!(err.code, ErrorCode::Offline.as_u32());
            assert_eq!(
                err.message,
                "pool group disk: 1 of 2 pools failed (see above); cancelled the rebalance jobs on the others"
            );

            // A job called rebalance on pool1 is cancelled (a permanent one: it does not end by
            // itself).
            let created = run(pool, "migration copy -permanent -id=rebalance pool2").unwrap();
            assert!(created.starts_with("[rebalance] "), "{created}");
            let (out, _) = run_both(pool, "rebalance cancel pgroup disk");
            let first = out.lines().next().unwrap();
            assert_eq!(
                first, "pool1: [rebalance] CANCELLED    migration copy -permanent -id=rebalance -- pool2",
                "{out}"
            );
        })
        .await
        .unwrap();
        pool.stop_migration(Duration::from_secs(5)).await;
    }

    /// The `-json` forms parse and carry the figures of the text forms.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn json_forms_have_the_figures_of_the_text_forms() {
        use crate::repository::testing::put;
        use serde_json::Value;

        let pool = migrating_pool();
        let p = pool.clone();
        tokio::task::spawn_blocking(move || {
            let pool = &p;
            let now = now_ms();
            put(&pool.pool.repo, id(1), 100, ReplicaState::Cached, vec![], now);
            put(&pool.pool.repo, id(2), 200, ReplicaState::Precious, vec![StickyRecord::new("alice", NEVER)], now);
            put(&pool.pool.repo, id(3), 300, ReplicaState::Cached, vec![], now);
            let json = |line: &str| -> Value {
                let text = run(pool, line).unwrap();
                assert!(text.ends_with("}\n") || text.ends_with("]\n"), "{line}: {text}");
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{line}: {e}: {text}"))
            };

            // rep ls: one element per line, the same pnfsid, flags, size and class.
            let text = run(pool, "rep ls").unwrap();
            let listed = json("rep ls -json");
            let listed = listed.as_array().unwrap();
            assert_eq!(listed.len(), text.lines().count());
            for (line, r) in text.lines().zip(listed) {
                let class = r["storage_class"].as_str().unwrap();
                let want = format!("{} {} {} si={{{class}}}", r["pnfsid"].as_str().unwrap(), r["flags"].as_str().unwrap(), r["size"]);
                assert_eq!(line, want);
            }
            let precious = listed.iter().find(|r| r["pnfsid"] == id(2).to_string()).unwrap();
            assert_eq!((precious["state"].as_str(), precious["sticky"].as_bool()), (Some("PRECIOUS"), Some(true)));
            assert_eq!(json("rep ls -json -l=p").as_array().unwrap().len(), 1);
            let (out, err) = run_both(pool, &format!("rep ls -json {} {}", id(1), id(9)));
            assert_eq!(serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().len(), 1, "{out}");
            assert_eq!(err.unwrap().code, ErrorCode::FileNotFound.as_u32());

            // rep ls -s: the classes and the total, in bytes.
            let stats = json("rep ls -s -json");
            assert_eq!(stats, json("rep ls -sum -json"));
            let total = serde_json::json!({
                "files": 3, "bytes": 600, "precious_files": 1, "precious_bytes": 200, "sticky_files": 1, "sticky_bytes": 200
            });
            assert_eq!(stats["total"], total);
            assert_eq!(stats["classes"][0]["storage_class"], "atlas:default");
            assert_eq!(stats["classes"][0]["bytes"], 600);
            let row = run(pool, "rep ls -sum").unwrap();
            assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["TOTAL", "3", "600", "1", "200", "1", "200"]);

            // info: the space lines and the replica counts.
            let text = run(pool, "info").unwrap();
            let info = json("info -json");
            for (field, label) in
                [("total", "Total"), ("used", "Used"), ("free", "Free"), ("precious", "Precious"), ("removable", "Removable")]
            {
                let want = format!("{label:<15}: {} bytes\n", info["space"][field]);
                assert!(text.contains(&want), "{want:?} not in {text}");
            }
            assert_eq!(info["space"]["used"], 600);
            assert_eq!((info["pool"].as_str(), info["mode"].as_str(), &info["disabled"]), (Some("pool1"), Some("enabled"), &Value::Null));
            assert_eq!(info["replicas"]["total"], 3);
            assert!(text.contains("Replicas       : 3 (CACHED 2, PRECIOUS 1)\n"), "{text}");
            assert_eq!(info["replicas"]["by_state"], serde_json::json!([{"state": "CACHED", "count": 2}, {"state": "PRECIOUS", "count": 1}]));
            assert_eq!(info["groups"], serde_json::json!(["disk"]));
            assert_eq!(info["membership"], serde_json::json!({"backend": "file", "stale": false}));
            assert_eq!(info["recovery"]["clean"], true);
            assert_eq!(info["migration"]["jobs"], serde_json::json!([]));
            run(pool, "pool disable -rdonly 7 \"disk check\"").unwrap();
            let info = json("info -json");
            assert!(run(pool, "info").unwrap().contains(&format!("Mode           : {}\n", info["mode"].as_str().unwrap())));
            assert_eq!((info["enabled"].as_bool(), &info["disabled"]), (Some(false), &serde_json::json!({"code": 7, "message": "disk check"})));
            run(pool, "pool enable").unwrap();

            // pp ls: the gates and the (empty) tables.
            run(pool, "pp set max active 5").unwrap();
            let pp = json("pp ls -json");
            assert!(run(pool, "pp ls").unwrap().starts_with(&format!(
                "incoming: 0 active of max 5, 0 queued; outgoing: 0 active of max {}, 0 queued; connections opened: 0\n",
                pp["outgoing"]["max"]
            )));
            assert_eq!(pp["incoming"], serde_json::json!({"active": 0, "max": 5, "queued": 0}));
            assert_eq!((&pp["transfers"], &pp["finished"]), (&serde_json::json!([]), &Value::Null));
            assert_eq!(json("pp ls -l -json")["finished"], serde_json::json!([]));

            // migration: info lists the jobs as `migration ls -json` does.
            run(pool, &format!("migration copy -pnfsid={} pool2", id(1))).unwrap();
            let jobs = json("migration ls -json");
            assert_eq!(json("info -json")["migration"]["jobs"][0]["id"], jobs[0]["id"]);
            assert_eq!(jobs[0]["id"], "1");
            run(pool, "migration cancel -force 1").unwrap();
        })
        .await
        .unwrap();
        pool.stop_migration(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rebalance_json_names_every_pool() {
        let pool = migrating_pool();
        let p = pool.clone();
        tokio::task::spawn_blocking(move || {
            let pool = &p;
            let (out, err) = run_both(pool, "rebalance pgroup -json disk");
            let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(
                doc,
                serde_json::json!({
                    "group": "disk", "metric": "relative", "level": 0.0, "command": null,
                    "pools": [{"pool": "pool2", "outcome": "left_out", "reason": "offline (not reachable)", "job": null, "error": null}],
                })
            );
            assert!(err.unwrap().message.ends_with("nothing to level"));

            run(pool, "migration copy -permanent -id=rebalance pool2").unwrap();
            let (out, err) = run_both(pool, "rebalance cancel pgroup -json disk");
            let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!((doc["group"].as_str(), &doc["metric"]), (Some("disk"), &serde_json::Value::Null));
            let pools = doc["pools"].as_array().unwrap();
            assert_eq!((pools[0]["pool"].as_str(), pools[0]["outcome"].as_str()), (Some("pool1"), Some("cancelled")));
            assert_eq!(pools[0]["job"]["id"], "rebalance");
            assert_eq!(pools[0]["job"]["state"], "CANCELLED");
            assert_eq!((pools[1]["pool"].as_str(), pools[1]["outcome"].as_str()), (Some("pool2"), Some("failed")));
            assert_eq!(pools[1]["error"]["code"], ErrorCode::Offline.as_u32());
            assert_eq!(err.unwrap().code, ErrorCode::Offline.as_u32());
        })
        .await
        .unwrap();
        pool.stop_migration(Duration::from_secs(5)).await;
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("atlas:*", "atlas:default", true),
            ("atlas:*", "cms:raw", false),
            ("*", "", true),
            ("a?c", "abc", true),
            ("a?c", "abbc", false),
            ("*:raw", "cms:raw", true),
            ("pool*1", "pool11", true),
            ("pool", "pool1", false),
        ] {
            assert_eq!(glob_match(p, t), want, "{p} ~ {t}");
        }
    }
}
