//! `p2p`: two real pool daemons on loopback; the target copies every replica of the source
//! with `pp get file`, and in the same run `cp -r` + `sync`, `rsync -a` and an rsync daemon on
//! 127.0.0.1 copy the very same files.
//!
//! Data sets (`--set`): `large`, 16 files of 256 MiB; `small`, 20,000 files of 4 KiB; random
//! content. Layout of `<dir>/<set>/`: `pool1/` (the source pool, filled directly through its
//! store before it starts), `plain/` (hard links to the source pool's data files: the same
//! inodes, so every tool reads the same bytes from the same place), `manifest.txt`,
//! `cluster.toml`, the credentials (`ca.crt`, `pool1.pool.crt`, ...), `pool1.toml`, `pool2.toml`, the logs, and during a run
//! `pool2/` or `dst-*/`, which are removed after each measurement. A filled set is reused by a
//! later run with the same `--dir` if it was kept (`--keep`).
//!
//! Each of `--runs` rounds (default 3) measures every variant of Tidepool, then each tool.
//! Tidepool: both daemons are started afresh (so peak RSS is that run's), the target gets
//! `pp set max active <c>` for each `--concurrency` (default 4 for large files, 8 for small),
//! the source `pp set max outgoing max(c, 16)`; then the clock starts, every `pp get file` is
//! sent on one admin connection (pipelined), and another connection polls `info` every 10 ms
//! until every replica is CACHED: the time is from the first command to the poll that sees
//! the last replica committed (a replica is acknowledged only once it is durable). With
//! `--window W` (a list; 0, the default, sends everything at once) at most W replicas are
//! asked for and not yet CACHED, which keeps the target's queue short; with `--batch B` (a
//! list; default 1) each `pp get file` names B pnfsids. Afterwards the stopped target's
//! records and every data file's checksum are compared with the source's.
//!
//! Before every timed run: wait until the machine is quiet (it is shared), `sync`, then
//! `echo 3 > /proc/sys/vm/drop_caches` (`--cache cold`, the default), or, where that is not
//! permitted or `--cache warm` is asked for, read every source file once so that every tool
//! reads from the page cache.

use std::cell::Cell;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tidepool_p2p::auth::Service;
use tidepool_p2p::conn::Connection;
use tidepool_p2p::message::{AdminReply, AdminRequest};

use crate::dataset::{
    Bench, CacheMode, DataSet, cache_mode, cache_option, check_args, data_sets, open_bench, verify_pool,
};
use crate::flag;
use crate::process::{Admin, Binaries, POLL, write_cluster};
use crate::report::{Measure, human, list, median};
use crate::system::{DISTURBED, Who, busy_secs, cpu_secs, delta, print_machine, proc_io, wait_quiet};
use crate::tools::{Tool, have_rsync, run_tool, warm_up};

pub const USAGE: &str = "bench p2p [--set large|small|both] [--concurrency N[,N..]] [--window W[,W..]] \
                         [--batch B[,B..]] [--runs R] [--cache cold|warm] [--dir DIR] [--keep]";

/// With every command queued and no replica arriving for this long, the harness looks
/// whether any transfer is left at all.
const STALL_CHECK: Duration = Duration::from_secs(3);

struct Options {
    sets: Vec<DataSet>,
    concurrency: Option<Vec<usize>>,
    windows: Vec<usize>,
    batches: Vec<usize>,
    runs: usize,
    cache: CacheMode,
    dir: Option<PathBuf>,
    keep: bool,
}

fn options(args: &[String]) -> anyhow::Result<Options> {
    let takes_value = ["--set", "--concurrency", "--window", "--batch", "--runs", "--cache", "--dir"];
    check_args(args, &takes_value, USAGE)?;
    let sets = data_sets(args)?;
    let numbers = |name: &str, list: &str, min: usize| {
        list.split(',')
            .map(|n| n.trim().parse::<usize>().ok().filter(|&n| n >= min).ok_or_else(|| anyhow!("{name} {list}")))
            .collect::<anyhow::Result<Vec<usize>>>()
    };
    let concurrency = flag(args, "--concurrency").map(|l| numbers("--concurrency", l, 1)).transpose()?;
    let windows = numbers("--window", flag(args, "--window").unwrap_or("0"), 0)?;
    let batches = numbers("--batch", flag(args, "--batch").unwrap_or("1"), 1)?;
    let runs: usize = flag(args, "--runs").unwrap_or("3").parse().context("--runs")?;
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let cache = cache_option(args)?;
    Ok(Options {
        sets,
        concurrency,
        windows,
        batches,
        runs,
        cache,
        dir: flag(args, "--dir").map(PathBuf::from),
        keep: args.iter().any(|a| a == "--keep"),
    })
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut opts = options(args)?;
    let bins = Binaries::find()?;
    opts.cache = cache_mode(opts.cache);
    let rsync = have_rsync("the `rsync -a` and rsync daemon comparisons are skipped");
    let temp;
    let base = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("tidepool-bench-p2p-").tempdir_in(".")?;
            temp.path().to_path_buf()
        }
    };
    fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    let base = base.canonicalize()?;
    print_machine(&bins.tidepool, &base, opts.cache);
    for set in &opts.sets {
        let concurrency = opts.concurrency.clone().unwrap_or_else(|| vec![set.concurrency]);
        let variants: Vec<Variant> = concurrency
            .iter()
            .flat_map(|&concurrency| opts.windows.iter().map(move |&window| (concurrency, window)))
            .flat_map(|(concurrency, window)| {
                opts.batches.iter().map(move |&batch| Variant { concurrency, window, batch })
            })
            .collect();
        let dir = base.join(set.name);
        let result = run_set(*set, &dir, &bins, &opts, &variants, rsync);
        if !opts.keep {
            let _ = fs::remove_dir_all(&dir);
        }
        result?;
    }
    if opts.keep {
        println!("kept the data sets in {} (--keep); later runs with --dir reuse them", base.display());
    }
    Ok(())
}

/// How the target is driven.
#[derive(Clone, Copy, Debug)]
struct Variant {
    /// `pp set max active` on the target.
    concurrency: usize,
    /// At most this many replicas asked for and not yet CACHED; 0: every command at once.
    window: usize,
    /// Pnfsids per `pp get file`.
    batch: usize,
}

impl Variant {
    fn label(&self) -> String {
        let mut label = format!("tidepool c={}", self.concurrency);
        if self.window > 0 {
            let _ = write!(label, " w={}", self.window);
        }
        if self.batch > 1 {
            let _ = write!(label, " b={}", self.batch);
        }
        label
    }
}

fn run_set(
    set: DataSet,
    dir: &Path,
    bins: &Binaries,
    opts: &Options,
    variants: &[Variant],
    rsync: bool,
) -> anyhow::Result<()> {
    println!("\n=== {} set: {} ({} in all) ===", set.name, set.describe(), human(set.bytes()));
    let b = open_bench(set, dir, bins, opts.cache)?;
    let mut tools: Vec<Tool> = vec![Tool::Cp];
    if rsync {
        tools.extend([Tool::Rsync, Tool::RsyncDaemon]);
    }
    warm_up(&b)?;
    let mut rounds: Vec<Vec<Measure>> = Vec::new();
    for run in 1..=opts.runs {
        let mut round = Vec::new();
        for &v in variants {
            let m = run_tidepool(&b, v)?;
            println!("[{} {run}/{}] {}", set.name, opts.runs, m.line());
            round.push(m);
        }
        for &tool in &tools {
            let m = run_tool(&b, tool)?;
            println!("[{} {run}/{}] {}", set.name, opts.runs, m.line());
            round.push(m);
        }
        rounds.push(round);
    }
    summarise(set, &rounds, variants);
    Ok(())
}

/// When the replicas arrived, counted from the first `pp get file`.
struct Phases {
    /// The target had answered every `pp get file`.
    queued: Duration,
    /// The first replica was committed (seen by a poll).
    first: Duration,
    /// The last replica was committed (seen by a poll, at most [`POLL`] late).
    done: Duration,
}

fn run_tidepool(b: &Bench, variant: Variant) -> anyhow::Result<Measure> {
    let concurrency = variant.concurrency;
    let target_dir = b.dir.join("pool2");
    if target_dir.exists() {
        fs::remove_dir_all(&target_dir)?;
    }
    let [(src_admin, _), (tgt_admin, _)] = write_cluster(&b.dir)?;
    let (source, mut src) = b.start_pool("pool1", src_admin)?;
    let (target, mut tgt) = b.start_pool("pool2", tgt_admin)?;
    b.rt.block_on(tgt.run(&format!("pp set max active {concurrency}")))?;
    b.rt.block_on(src.run(&format!("pp set max outgoing {}", concurrency.max(16))))?;
    let pipe = b.rt.block_on(Connection::open(tgt_admin, &b.key, "bench", Service::Admin))?;
    let lines: Vec<(String, usize)> = b
        .manifest
        .chunks(variant.batch)
        .map(|ids| {
            let names: Vec<String> = ids.iter().map(|(id, _)| id.to_string()).collect();
            (format!("pp get file {} pool1", names.join(" ")), ids.len())
        })
        .collect();
    let busy = wait_quiet();
    b.settle()?;
    let cpu0 = (source.cpu(), target.cpu(), cpu_secs(Who::Me, false));
    let io0 = (proc_io(source.who()).0, proc_io(target.who()).1);
    let (disk0, busy0) = (b.disk(), busy_secs());
    let t0 = Instant::now();
    // Generous: 20 MB/s and 100 files/s would be a broken pool, not a slow one.
    let deadline = Duration::from_secs(60 + b.set.bytes() / 20_000_000 + b.set.files as u64 / 100);
    let phases = b.rt.block_on(copy_all(pipe, &mut tgt, lines, variant.window, t0, deadline))?;
    let (disk, busy1) = (delta(disk0, b.disk()), busy_secs());
    let cpu = (source.cpu() - cpu0.0, target.cpu() - cpu0.1, cpu_secs(Who::Me, false) - cpu0.2);
    let io = (proc_io(source.who()).0 - io0.0, proc_io(target.who()).1 - io0.1);
    let rss = (source.peak_rss_mib(), target.peak_rss_mib());
    drop((src, tgt));
    let target_exit = target.stop()?;
    let source_exit = source.stop()?;
    if !target_exit.success() || !source_exit.success() {
        bail!("the pools exited with {source_exit} (pool1) and {target_exit} (pool2); see their logs");
    }
    verify_pool(&target_dir, &b.manifest, b.set.size as u64)?;
    fs::remove_dir_all(&target_dir)?;
    Ok(Measure {
        tool: variant.label(),
        secs: phases.done.as_secs_f64(),
        bytes: b.set.bytes(),
        files: b.set.files as u64,
        cpu: cpu.0 + cpu.1,
        others: busy1 - busy0 - cpu.0 - cpu.1 - cpu.2,
        rss: Some(rss),
        disk,
        note: format!(
            "[cpu source {:.1} s, target {:.1} s, bench client {:.1} s; peak RSS source {:.0} MiB, target {:.0} MiB; \
             source read {:.0} MB from disk, target wrote {:.0} MB; all queued at {:.2} s, first replica at \
             {:.2} s]{}",
            cpu.0,
            cpu.1,
            cpu.2,
            rss.0,
            rss.1,
            io.0 as f64 / 1e6,
            io.1 as f64 / 1e6,
            phases.queued.as_secs_f64(),
            phases.first.as_secs_f64(),
            busy.map(|b| format!(" {b}")).unwrap_or_default()
        ),
    })
}

/// Queues every `pp get file` on one connection (pipelined: the commands are written
/// without waiting for each answer, and the answers are read as they come) while another
/// connection polls `info` until every replica is CACHED. With a `window` above 0, a
/// command is sent only while fewer than `window` replicas asked for are not CACHED yet.
/// Each line comes with the number of replicas it asks for.
async fn copy_all(
    conn: Connection,
    poll: &mut Admin,
    lines: Vec<(String, usize)>,
    window: usize,
    t0: Instant,
    deadline: Duration,
) -> anyhow::Result<Phases> {
    let n: usize = lines.iter().map(|(_, files)| files).sum();
    let commands = lines.len();
    let all_queued = Cell::new(false);
    let cached_now = Cell::new(0usize);
    let progress = tokio::sync::Notify::new();
    let Connection { mut reader, mut writer, .. } = conn;
    let send = async {
        let mut asked = 0;
        for (line, files) in lines {
            // One task: nothing runs between the check and the wait's registration.
            while window > 0 && asked >= cached_now.get() + window {
                progress.notified().await;
            }
            writer.send(&AdminRequest::Run { line }).await?;
            asked += files;
        }
        anyhow::Ok(())
    };
    let receive = async {
        let mut finished = 0;
        while finished < commands {
            match reader.recv::<AdminReply>().await? {
                AdminReply::Output(_) => {}
                AdminReply::Finished { error: None } => finished += 1,
                AdminReply::Finished { error: Some(e) } => {
                    bail!("a `pp get file` failed: {} (rc={})", e.message, e.code)
                }
                AdminReply::Commands(_) | AdminReply::CommandDetails(_) => {
                    bail!("unexpected reply to `pp get file`")
                }
            }
        }
        all_queued.set(true);
        anyhow::Ok(t0.elapsed())
    };
    let watch = async {
        let mut first = None;
        let mut seen = 0;
        let mut changed = Instant::now();
        loop {
            let info = poll.run("info").await?;
            let cached = cached_count(&info);
            let now = t0.elapsed();
            if cached > 0 && first.is_none() {
                first = Some(now);
            }
            if cached >= n {
                return anyhow::Ok((first.unwrap_or(now), now));
            }
            if cached != seen {
                seen = cached;
                changed = Instant::now();
                cached_now.set(cached);
                progress.notify_waiters();
            } else if all_queued.get() && changed.elapsed() > STALL_CHECK {
                let ls = poll.run("pp ls").await?;
                if ls.starts_with("incoming: 0 active") && ls.contains(", 0 queued;") {
                    let long = poll.run("pp ls -l").await?;
                    let failed: Vec<&str> = long.lines().filter(|l| l.contains("FAILED")).collect();
                    bail!(
                        "only {cached} of {n} replicas arrived and no transfer is left; recent failures:\n{}",
                        failed.join("\n")
                    );
                }
                changed = Instant::now();
            }
            if now > deadline {
                bail!("only {cached} of {n} replicas arrived within {deadline:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    };
    let ((), queued, (first, done)) = tokio::try_join!(send, receive, watch)?;
    Ok(Phases { queued, first, done })
}

/// The CACHED count of `info`'s `Replicas : 20000 (CACHED 19990, FROM_POOL 10)` line.
fn cached_count(info: &str) -> usize {
    tidepool_tests::info_field(info, "Replicas")
        .and_then(|v| v.split_once("CACHED "))
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or(0)
}

/// Medians per tool, per-run ratios of Tidepool to each tool, and the goals.
fn summarise(set: DataSet, rounds: &[Vec<Measure>], variants: &[Variant]) {
    let tools: Vec<String> = rounds[0].iter().map(|m| m.tool.clone()).collect();
    let of =
        |tool: &str| -> Vec<&Measure> { rounds.iter().filter_map(|r| r.iter().find(|m| m.tool == tool)).collect() };
    println!("\n--- {} set: {}, {} run(s) ---", set.name, set.describe(), rounds.len());
    println!("| tool | wall time per run | median time | MB/s | files/s | CPU s | peak RSS source / target |");
    println!("|---|---|---|---|---|---|---|");
    for t in &tools {
        let ms = of(t);
        let secs: Vec<f64> = ms.iter().map(|m| m.secs).collect();
        let per_run: Vec<String> =
            ms.iter().map(|m| format!("{:.2}{}", m.secs, if m.disturbed() { "*" } else { "" })).collect();
        let rss = if ms.iter().all(|m| m.rss.is_some()) {
            let (s, t): (Vec<f64>, Vec<f64>) = ms.iter().filter_map(|m| m.rss).unzip();
            format!("{:.0} / {:.0} MiB", median(s), median(t))
        } else {
            "–".into()
        };
        println!(
            "| {t} | {} s | {:.2} s | {:.1} | {:.0} | {:.1} | {rss} |",
            per_run.join(", "),
            median(secs.clone()),
            median(ms.iter().map(|m| m.mb_s()).collect()),
            median(ms.iter().map(|m| m.files_s()).collect()),
            median(ms.iter().map(|m| m.cpu).collect()),
        );
    }
    println!("(* other processes used more than {:.0}% of the CPUs during that run)", DISTURBED * 100.0);
    let baselines: Vec<&String> = tools.iter().filter(|t| !t.starts_with("tidepool")).collect();
    println!("\nTidepool's throughput over each tool's (the same for MB/s and files/s), per run:");
    for v in variants {
        let tp = v.label();
        for base in &baselines {
            let ratios: Vec<f64> = rounds.iter().filter_map(|r| Some(time_of(r, base)? / time_of(r, &tp)?)).collect();
            println!("  {tp} / {base}: {} (median {:.2})", list(&ratios, 2), median(ratios.clone()));
        }
        let goals: &[(&str, f64)] = match set.name {
            "large" => &[("cp -r + sync", 0.9), ("rsync daemon", 1.5)],
            _ => &[("rsync daemon", 1.0)],
        };
        let met = rounds
            .iter()
            .filter(|r| {
                goals.iter().all(
                    |(base, want)| matches!((time_of(r, base), time_of(r, &tp)), (Some(b), Some(t)) if b / t >= *want),
                )
            })
            .count();
        let wanted: Vec<String> = goals.iter().map(|(b, w)| format!(">= {w}x {b}")).collect();
        let missing: Vec<&str> = goals.iter().map(|(b, _)| *b).filter(|b| !tools.iter().any(|t| t == b)).collect();
        if missing.is_empty() {
            println!("  goal ({}): met in {met} of {} run(s)", wanted.join(" and "), rounds.len());
        } else {
            println!("  goal ({}): not measured ({} did not run)", wanted.join(" and "), missing.join(", "));
        }
    }
}

fn time_of(round: &[Measure], tool: &str) -> Option<f64> {
    round.iter().find(|m| m.tool == tool).map(|m| m.secs)
}
