//! `migration`: the migration module between two real pool daemons on loopback, against
//! `cp -r` + `sync`, `rsync -a` and an rsync daemon over the same files, in three parts
//! (`--parts`, default all three):
//!
//! - **move**: vacate the source pool of each data set (`--set`: 16 files of 256 MiB, 20,000
//!   files of 4 KiB; the sets and their layout are those of [`p2p`](crate::p2p), and a set
//!   filled by either benchmark is reused by the other with the same `--dir`). Per run: both
//!   daemons start afresh, `pool disable -rdonly` on the source, the caches are settled as in
//!   `p2p`, then the clock runs from `migration move -concurrency=<c> pool2` to the `migration
//!   info` poll (every 10 ms) that shows the job FINISHED. A moved source replica is deleted
//!   only after its copy is committed on the target, so FINISHED means every copy is durable.
//!   Afterwards the stopped target's records and data files are checked against the set and the
//!   source must hold nothing. Each round runs the move at every `--concurrency` (default: the
//!   job's default, which a job created without `-concurrency` gets, and 8), then `cp -r` +
//!   `sync`, `rsync -a` and `rsync -a` to an rsync daemon copy `plain/` (hard links to the very
//!   same data files), as in `p2p`. The summary gives the CPU per file of each daemon, each
//!   move's throughput over each tool's per run, and whether the goals held.
//! - **rerun**: per data set and run, `migration copy -concurrency=<c> pool2` twice on fresh
//!   daemons and an empty target; both are timed the same way. The second finds every file on
//!   the target already, so it should cost a small fraction of the first (the goal: < 10%).
//! - **init**: a pool of `--records` replicas (default 1,000,000; filled once like `bench
//!   repo`, in `<dir>/init/pool1`) gets `migration copy -concurrency=0 pool2`: the job scans
//!   the repository and queues every replica, then starts nothing (concurrency 0). Timed from
//!   the command to the first poll that sees the job out of INITIALIZING; meanwhile another
//!   connection runs the pool's `info` and `migration info 1` in turn every 10 ms, and their
//!   latencies are reported: the pool must keep answering while a job initialises.
//!
//! A move deletes the source's replicas: before every run the source pool is put back as it
//! was filled, its metadata copied from `pool1-meta.pristine` (taken before the first run) and
//! its data files hard-linked again from `plain/` (which kept the inodes alive).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tidepool_p2p::PnfsId;
use tidepool_repository::{ReplicaStore, SledStore};
use tidepool_tests::report_field;

use crate::dataset::{self, Bench, CacheMode, DataSet};
use crate::flag;
use crate::process::{self, Admin, Binaries, POLL, Proc};
use crate::report::{Measure, human, list, median};
use crate::system::{self, Who, busy_secs, cpu_secs, delta, proc_io, wait_quiet};
use crate::tools::{self, Tool};

pub const USAGE: &str = "bench migration [--parts move,rerun,init] [--set large|small|both] \
                         [--concurrency default|N[,...]] [--runs R] [--records N] [--cache cold|warm] [--dir DIR] \
                         [--keep]";

/// The goal of the rerun: the second run of a finished copy job takes less than this share of
/// the first's time.
const RERUN_GOAL: f64 = 0.10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Move,
    Rerun,
    Init,
}

/// A job's concurrency: `-concurrency=N`, or none (the job gets the pool's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Concurrency(Option<usize>);

impl Concurrency {
    fn label(self) -> String {
        match self.0 {
            Some(n) => format!("tidepool move c={n}"),
            None => "tidepool move c=default".into(),
        }
    }

    /// The job's options for it.
    fn option(self) -> String {
        self.0.map(|n| format!(" -concurrency={n}")).unwrap_or_default()
    }
}

struct Options {
    parts: Vec<Part>,
    sets: Vec<DataSet>,
    /// The move's variants; the rerun uses 8 if listed, else the first.
    concurrency: Vec<Concurrency>,
    runs: usize,
    records: u64,
    cache: CacheMode,
    dir: Option<std::path::PathBuf>,
    keep: bool,
}

fn options(args: &[String]) -> anyhow::Result<Options> {
    let takes_value = ["--parts", "--set", "--concurrency", "--runs", "--records", "--cache", "--dir"];
    dataset::check_args(args, &takes_value, USAGE)?;
    let parts = flag(args, "--parts")
        .unwrap_or("move,rerun,init")
        .split(',')
        .map(|p| match p.trim() {
            "move" => Ok(Part::Move),
            "rerun" => Ok(Part::Rerun),
            "init" => Ok(Part::Init),
            other => Err(anyhow!("--parts: unknown part {other:?}; use move, rerun, init")),
        })
        .collect::<anyhow::Result<Vec<Part>>>()?;
    let sets = dataset::data_sets(args)?;
    let concurrency = flag(args, "--concurrency")
        .unwrap_or("default,8")
        .split(',')
        .map(|c| match c.trim() {
            "default" => Ok(Concurrency(None)),
            n => match n.parse::<usize>() {
                Ok(0) | Err(_) => Err(anyhow!("--concurrency: {n:?} is neither `default` nor a number from 1")),
                Ok(n) => Ok(Concurrency(Some(n))),
            },
        })
        .collect::<anyhow::Result<Vec<Concurrency>>>()?;
    let runs: usize = flag(args, "--runs").unwrap_or("3").parse().context("--runs")?;
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let records: u64 = flag(args, "--records").unwrap_or("1000000").parse().context("--records")?;
    let cache = dataset::cache_option(args)?;
    Ok(Options {
        parts,
        sets,
        concurrency,
        runs,
        records,
        cache,
        dir: flag(args, "--dir").map(std::path::PathBuf::from),
        keep: args.iter().any(|a| a == "--keep"),
    })
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut opts = options(args)?;
    let bins = Binaries::find()?;
    opts.cache = dataset::cache_mode(opts.cache);
    let rsync = tools::have_rsync("the `rsync -a` comparison is skipped");
    let temp;
    let base = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("tidepool-bench-migration-").tempdir_in(".")?;
            temp.path().to_path_buf()
        }
    };
    fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    let base = base.canonicalize()?;
    system::print_machine(&bins.tidepool, &base, opts.cache);
    let sets_wanted = opts.parts.iter().any(|p| matches!(p, Part::Move | Part::Rerun));
    for set in opts.sets.iter().filter(|_| sets_wanted) {
        let dir = base.join(set.name);
        let result = run_set(*set, &dir, &bins, &opts, rsync);
        if !opts.keep {
            let _ = fs::remove_dir_all(&dir);
        }
        result?;
    }
    if opts.parts.contains(&Part::Init) {
        let dir = base.join("init");
        let result = run_init(&dir, &bins, opts.records);
        if !opts.keep {
            let _ = fs::remove_dir_all(&dir);
        }
        result?;
    }
    if opts.keep {
        println!("kept the data in {} (--keep); later runs with --dir reuse it", base.display());
    }
    Ok(())
}

fn run_set(set: DataSet, dir: &Path, bins: &Binaries, opts: &Options, rsync: bool) -> anyhow::Result<()> {
    println!("\n=== {} set: {} ({} in all) ===", set.name, set.describe(), human(set.bytes()));
    let b = dataset::open_bench(set, dir, bins, opts.cache)?;
    let rerun_c = opts.concurrency.iter().copied().find(|c| c.0 == Some(8)).unwrap_or(opts.concurrency[0]);
    let c = rerun_c.0.unwrap_or(1);
    let result = (|| {
        tools::warm_up(&b)?;
        if opts.parts.contains(&Part::Move) {
            let mut tools = vec![Tool::Cp];
            if rsync {
                tools.extend([Tool::Rsync, Tool::RsyncDaemon]);
            }
            let mut rounds: Vec<Round> = Vec::new();
            for run in 1..=opts.runs {
                let mut round = Round::default();
                for &variant in &opts.concurrency {
                    let m = run_move(&b, variant)?;
                    println!("[{} move {run}/{}] {}", set.name, opts.runs, m.measure.line());
                    round.moves.push(m);
                }
                for &tool in &tools {
                    let r = tools::run_tool(&b, tool)?;
                    println!("[{} move {run}/{}] {}", set.name, opts.runs, r.line());
                    round.tools.push(r);
                }
                rounds.push(round);
            }
            summarise_move(set, &opts.concurrency, &rounds);
        }
        if opts.parts.contains(&Part::Rerun) {
            let mut rounds: Vec<Rerun> = Vec::new();
            for run in 1..=opts.runs {
                let r = run_rerun(&b, c)?;
                println!("[{} rerun {run}/{}] {}", set.name, opts.runs, r.line());
                rounds.push(r);
            }
            summarise_rerun(set, c, &rounds);
        }
        anyhow::Ok(())
    })();
    // Leave the set as it was filled, for the next run or the p2p benchmark.
    let restored = restore_source(&b);
    result.and(restored)
}

/// Puts the source pool back as `prepare` filled it (see the module's doc), and empties the
/// target's directory.
fn restore_source(b: &Bench) -> anyhow::Result<()> {
    let pool = b.dir.join("pool1");
    let meta = pool.join("meta");
    let pristine = b.dir.join("pool1-meta.pristine");
    if pristine.exists() {
        fs::remove_dir_all(&meta).with_context(|| format!("remove {}", meta.display()))?;
        copy_tree(&pristine, &meta)?;
    } else {
        let partial = b.dir.join("pool1-meta.copying");
        if partial.exists() {
            fs::remove_dir_all(&partial)?;
        }
        copy_tree(&meta, &partial)?;
        fs::rename(&partial, &pristine)?;
    }
    for (i, (id, _)) in b.manifest.iter().enumerate() {
        let data = pool.join("data").join(id.to_string());
        if !data.exists() {
            fs::hard_link(b.plain().join(format!("f{i:05}")), &data)
                .with_context(|| format!("link {} back", data.display()))?;
        }
    }
    for entry in fs::read_dir(pool.join("incoming"))? {
        fs::remove_file(entry?.path())?;
    }
    let target = b.dir.join("pool2");
    if target.exists() {
        fs::remove_dir_all(&target)?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let dst = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dst)?;
        } else {
            fs::copy(entry.path(), &dst).with_context(|| format!("copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Both daemons, started afresh on a restored source and an empty target.
struct Pair {
    source: Proc,
    src: Admin,
    target: Proc,
}

fn start_pair(b: &Bench) -> anyhow::Result<Pair> {
    restore_source(b)?;
    let [(src_admin, _), (tgt_admin, _)] = process::write_cluster(&b.dir)?;
    let (source, src) = b.start_pool("pool1", src_admin)?;
    let (target, _tgt) = b.start_pool("pool2", tgt_admin)?;
    Ok(Pair { source, src, target })
}

impl Pair {
    /// Stops both daemons; fails unless both exit cleanly.
    fn stop(self) -> anyhow::Result<()> {
        let Pair { source, src, target } = self;
        drop(src);
        let target_exit = target.stop()?;
        let source_exit = source.stop()?;
        if !target_exit.success() || !source_exit.success() {
            bail!("the pools exited with {source_exit} (pool1) and {target_exit} (pool2); see their logs");
        }
        Ok(())
    }
}

/// Generous: 20 MB/s and 100 files/s would be a broken pool, not a slow one.
fn deadline(set: DataSet) -> Duration {
    Duration::from_secs(60 + set.bytes() / 20_000_000 + set.files as u64 / 100)
}

/// Creates a job with `command` on the source and returns its id (from the summary line).
async fn create(src: &mut Admin, command: &str) -> anyhow::Result<String> {
    let reply = src.run(command).await?;
    let line = tidepool_tests::JobLine::parse(reply.trim_end())
        .ok_or_else(|| anyhow!("`{command}` did not answer with a summary line: {reply:?}"))?;
    Ok(line.id)
}

/// Polls `migration info <job>` every [`POLL`] until the job is FINISHED; returns when the
/// poll saw it, counted from `t0`, and the number of polls.
async fn wait_finished(
    src: &mut Admin,
    job: &str,
    t0: Instant,
    deadline: Duration,
) -> anyhow::Result<(Duration, usize)> {
    let mut polls = 0;
    loop {
        let info = src.run(&format!("migration info {job}")).await?;
        polls += 1;
        let now = t0.elapsed();
        match report_field(&info, "State") {
            Some("FINISHED") => return Ok((now, polls)),
            Some("CANCELLED" | "FAILED") => bail!("job {job} ended but did not finish:\n{info}"),
            _ => {}
        }
        if now > deadline {
            bail!("job {job} did not finish within {deadline:?}; last report:\n{info}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How many records the stopped pool in `dir` holds.
fn count_records(dir: &Path) -> anyhow::Result<usize> {
    let store = SledStore::open(dir)?;
    let mut n = 0;
    store.scan_records(&mut |k, _| {
        if PnfsId::from_bytes(k).is_ok() {
            n += 1;
        }
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(n)
}

/// One move: the measure, and the CPU seconds of each daemon.
struct Move {
    variant: Concurrency,
    measure: Measure,
    cpu_source: f64,
    cpu_target: f64,
}

/// One round of the move part: every variant, then every tool.
#[derive(Default)]
struct Round {
    moves: Vec<Move>,
    tools: Vec<Measure>,
}

fn run_move(b: &Bench, variant: Concurrency) -> anyhow::Result<Move> {
    let mut pair = start_pair(b)?;
    let (source, target) = (&pair.source, &pair.target);
    b.rt.block_on(pair.src.run("pool disable -rdonly"))?;
    let busy = wait_quiet();
    b.settle()?;
    let cpu0 = (source.cpu(), target.cpu(), cpu_secs(Who::Me, false));
    let io0 = (proc_io(source.who()).0, proc_io(target.who()).1);
    let (disk0, busy0) = (b.disk(), busy_secs());
    let t0 = Instant::now();
    let (done, polls) = b.rt.block_on(async {
        let job = create(&mut pair.src, &format!("migration move{} pool2", variant.option())).await?;
        wait_finished(&mut pair.src, &job, t0, deadline(b.set)).await
    })?;
    let (disk, busy1) = (delta(disk0, b.disk()), busy_secs());
    let cpu = (source.cpu() - cpu0.0, target.cpu() - cpu0.1, cpu_secs(Who::Me, false) - cpu0.2);
    let io = (proc_io(source.who()).0 - io0.0, proc_io(target.who()).1 - io0.1);
    let rss = (source.peak_rss_mib(), target.peak_rss_mib());
    pair.stop()?;
    dataset::verify_pool(&b.dir.join("pool2"), &b.manifest, b.set.size as u64)?;
    fs::remove_dir_all(b.dir.join("pool2"))?;
    let left = count_records(&b.dir.join("pool1"))?;
    let files_left = fs::read_dir(b.dir.join("pool1").join("data"))?.count();
    if left != 0 || files_left != 0 {
        bail!("the vacated source still holds {left} records and {files_left} data files");
    }
    let per_file = |cpu: f64| cpu / b.set.files as f64 * 1e6;
    let measure = Measure {
        tool: variant.label(),
        secs: done.as_secs_f64(),
        bytes: b.set.bytes(),
        files: b.set.files as u64,
        cpu: cpu.0 + cpu.1,
        others: busy1 - busy0 - cpu.0 - cpu.1 - cpu.2,
        rss: Some(rss),
        disk,
        note: format!(
            "[cpu source {:.1} s ({:.0} us/file), target {:.1} s ({:.0} us/file), bench {:.1} s; peak RSS \
             source {:.0} MiB, target {:.0} MiB; source read {:.0} MB from disk, target wrote {:.0} MB; {polls} \
             polls]{}",
            cpu.0,
            per_file(cpu.0),
            cpu.1,
            per_file(cpu.1),
            cpu.2,
            rss.0,
            rss.1,
            io.0 as f64 / 1e6,
            io.1 as f64 / 1e6,
            busy.map(|b| format!(" {b}")).unwrap_or_default()
        ),
    };
    Ok(Move { variant, measure, cpu_source: cpu.0, cpu_target: cpu.1 })
}

/// One rerun measurement: the same copy job twice.
struct Rerun {
    first: f64,
    second: f64,
    /// Bytes the target daemon had the disk write during each run.
    written: (u64, u64),
    /// CPU seconds of both daemons during each run.
    cpu: (f64, f64),
}

impl Rerun {
    fn ratio(&self) -> f64 {
        self.second / self.first
    }

    fn line(&self) -> String {
        format!(
            "first copy {:>7.2} s (cpu {:.1} s, target wrote {:.0} MB), second {:>6.3} s (cpu {:.2} s, target \
             wrote {:.1} MB): {:.1}% of the first",
            self.first,
            self.cpu.0,
            self.written.0 as f64 / 1e6,
            self.second,
            self.cpu.1,
            self.written.1 as f64 / 1e6,
            self.ratio() * 100.0
        )
    }
}

fn run_rerun(b: &Bench, c: usize) -> anyhow::Result<Rerun> {
    let mut pair = start_pair(b)?;
    let command = format!("migration copy -concurrency={c} pool2");
    let mut times = Vec::new();
    let mut written = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..2 {
        wait_quiet();
        b.settle()?;
        let (source, target) = (&pair.source, &pair.target);
        let cpu0 = source.cpu() + target.cpu();
        let w0 = proc_io(target.who()).1;
        let t0 = Instant::now();
        let (done, _) = b.rt.block_on(async {
            let job = create(&mut pair.src, &command).await?;
            wait_finished(&mut pair.src, &job, t0, deadline(b.set)).await
        })?;
        times.push(done.as_secs_f64());
        written.push(proc_io(pair.target.who()).1 - w0);
        cpu.push(pair.source.cpu() + pair.target.cpu() - cpu0);
    }
    pair.stop()?;
    dataset::verify_pool(&b.dir.join("pool2"), &b.manifest, b.set.size as u64)?;
    fs::remove_dir_all(b.dir.join("pool2"))?;
    if count_records(&b.dir.join("pool1"))? != b.manifest.len() {
        bail!("a copy job changed the number of the source's records");
    }
    Ok(Rerun { first: times[0], second: times[1], written: (written[0], written[1]), cpu: (cpu[0], cpu[1]) })
}

/// The goals of the job-engine issue, per data set: (variant, tool, at least this ratio).
fn move_goals(set: DataSet) -> &'static [(Concurrency, &'static str, f64)] {
    match set.name {
        "large" => &[(Concurrency(Some(8)), "cp -r + sync", 0.9), (Concurrency(Some(8)), "rsync -a", 1.5)],
        _ => &[(Concurrency(Some(8)), "rsync -a", 1.0), (Concurrency(None), "rsync -a", 0.5)],
    }
}

fn summarise_move(set: DataSet, variants: &[Concurrency], rounds: &[Round]) {
    println!("\n--- move, {} set: {}, {} run(s) ---", set.name, set.describe(), rounds.len());
    println!(
        "| tool | wall time per run | median time | MB/s | files/s | CPU s | CPU per file source / target | peak \
         RSS source / target |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let row = |ms: &[&Measure], per_file: String| {
        let Some(first) = ms.first() else { return };
        let per_run: Vec<String> =
            ms.iter().map(|m| format!("{:.2}{}", m.secs, if m.disturbed() { "*" } else { "" })).collect();
        let rss = if ms.iter().all(|m| m.rss.is_some()) {
            let (s, t): (Vec<f64>, Vec<f64>) = ms.iter().filter_map(|m| m.rss).unzip();
            format!("{:.0} / {:.0} MiB", median(s), median(t))
        } else {
            "–".into()
        };
        println!(
            "| {} | {} s | {:.2} s | {:.1} | {:.0} | {:.1} | {per_file} | {rss} |",
            first.tool,
            per_run.join(", "),
            median(ms.iter().map(|m| m.secs).collect()),
            median(ms.iter().map(|m| m.mb_s()).collect()),
            median(ms.iter().map(|m| m.files_s()).collect()),
            median(ms.iter().map(|m| m.cpu).collect()),
        );
    };
    let moves_of = |v: Concurrency| -> Vec<&Move> {
        rounds.iter().filter_map(|r| r.moves.iter().find(|m| m.variant == v)).collect()
    };
    let secs_of = |round: &Round, tool: &str| -> Option<f64> {
        round.moves.iter().map(|m| &m.measure).chain(&round.tools).find(|m| m.tool == tool).map(|m| m.secs)
    };
    for &v in variants {
        let moves = moves_of(v);
        let files = set.files as f64;
        let per_file = format!(
            "{:.0} / {:.0} us",
            median(moves.iter().map(|m| m.cpu_source / files * 1e6).collect()),
            median(moves.iter().map(|m| m.cpu_target / files * 1e6).collect())
        );
        row(&moves.iter().map(|m| &m.measure).collect::<Vec<_>>(), per_file);
    }
    let tools: Vec<String> = rounds[0].tools.iter().map(|m| m.tool.clone()).collect();
    for t in &tools {
        let ms: Vec<&Measure> = rounds.iter().filter_map(|r| r.tools.iter().find(|m| &m.tool == t)).collect();
        row(&ms, "–".into());
    }
    println!("(* other processes used more than 20% of the CPUs during that run)");
    println!("\nThroughput of each move over each tool's (the same for MB/s and files/s), per run:");
    for &v in variants {
        for t in &tools {
            let ratios: Vec<f64> =
                rounds.iter().filter_map(|r| Some(secs_of(r, t)? / secs_of(r, &v.label())?)).collect();
            println!("  {} / {t}: {} (median {:.2})", v.label(), list(&ratios, 2), median(ratios.clone()));
        }
    }
    for &(v, tool, want) in move_goals(set) {
        let goal = format!("{} >= {want}x {tool}", v.label());
        if !variants.contains(&v) || !tools.iter().any(|t| t == tool) {
            println!("  goal {goal}: not measured (it did not run)");
            continue;
        }
        let ratios: Vec<f64> =
            rounds.iter().filter_map(|r| Some(secs_of(r, tool)? / secs_of(r, &v.label())?)).collect();
        let met = ratios.iter().filter(|r| **r >= want).count();
        println!(
            "  goal {goal}: median {:.2}, met in {met} of {} run(s){}",
            median(ratios.clone()),
            ratios.len(),
            if median(ratios) >= want && 2 * met > rounds.len() { " (met)" } else { " (NOT met)" }
        );
    }
}

fn summarise_rerun(set: DataSet, c: usize, rounds: &[Rerun]) {
    println!("\n--- rerun of `migration copy -concurrency={c} pool2`, {} set: {} ---", set.name, set.describe());
    let first: Vec<f64> = rounds.iter().map(|r| r.first).collect();
    let second: Vec<f64> = rounds.iter().map(|r| r.second).collect();
    let ratios: Vec<f64> = rounds.iter().map(Rerun::ratio).collect();
    println!("first run:  {} s (median {:.2} s)", list(&first, 2), median(first.clone()));
    println!("second run: {} s (median {:.3} s)", list(&second, 3), median(second.clone()));
    let met = ratios.iter().filter(|r| **r < RERUN_GOAL).count();
    println!(
        "second / first: {} (median {:.3}); goal < {RERUN_GOAL}: met in {met} of {} run(s)",
        list(&ratios, 3),
        median(ratios.clone()),
        rounds.len()
    );
}

/// The `init` part: see the module's doc.
fn run_init(dir: &Path, bins: &Binaries, records: u64) -> anyhow::Result<()> {
    println!("\n=== init: a job over a pool of {records} replicas ===");
    let pool = dir.join("pool1");
    let marker = dir.join("filled");
    let want = format!("records={records}\n");
    if fs::read_to_string(&marker).is_ok_and(|m| m == want) {
        println!("reusing the repository in {}", pool.display());
    } else {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::create_dir_all(dir)?;
        let t = Instant::now();
        crate::repo::fill(&pool, records)?;
        let status = Command::new("sync").status()?;
        if !status.success() {
            bail!("sync failed");
        }
        fs::write(&marker, &want)?;
        println!("fill: {records} records and data files in {:.1} s", t.elapsed().as_secs_f64());
    }
    let target = dir.join("pool2");
    if target.exists() {
        fs::remove_dir_all(&target)?;
    }
    let key = process::credentials_in(dir, bins)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let [(src_admin, _), (tgt_admin, _)] = process::write_cluster(dir)?;
    let t = Instant::now();
    let (source, mut src) = process::start_pool_in(dir, bins, &rt, &key, "pool1", src_admin)?;
    println!("pool1 started (repository opened, restart recovery included) in {:.2} s", t.elapsed().as_secs_f64());
    let (target, _tgt) = process::start_pool_in(dir, bins, &rt, &key, "pool2", tgt_admin)?;
    let rss_before = source.peak_rss_mib();
    let mut poll = rt.block_on(Admin::open(src_admin, &key))?;
    let busy = wait_quiet();
    let cpu0 = source.cpu();

    let t0 = Instant::now();
    let (reply_at, job, state, init, info_lat, job_lat) = rt.block_on(async {
        let job = create(&mut src, "migration copy -concurrency=0 pool2").await?;
        let reply_at = t0.elapsed();
        let (mut info_lat, mut job_lat) = (Vec::new(), Vec::new());
        loop {
            let t = Instant::now();
            let info = poll.run("info").await?;
            info_lat.push(t.elapsed().as_secs_f64());
            if tidepool_tests::info_field(&info, "Pool name") != Some("pool1") {
                bail!("`info` answered something else:\n{info}");
            }
            let t = Instant::now();
            let report = poll.run(&format!("migration info {job}")).await?;
            job_lat.push(t.elapsed().as_secs_f64());
            let seen = t0.elapsed();
            let state = report_field(&report, "State").unwrap_or("?").to_string();
            if state != "INITIALIZING" {
                return anyhow::Ok((reply_at, job, state, seen, info_lat, job_lat));
            }
            if seen > Duration::from_secs(600) {
                bail!("the job still initialises after {seen:?}:\n{report}");
            }
            tokio::time::sleep(POLL).await;
        }
    })?;
    let cpu = source.cpu() - cpu0;
    let rss_after = source.peak_rss_mib();
    let report = rt.block_on(src.run(&format!("migration info {job}")))?;
    let queued: u64 = report_field(&report, "Queued").and_then(|q| q.parse().ok()).unwrap_or(0);
    rt.block_on(src.run(&format!("migration cancel -force {job}")))?;
    drop((src, poll));
    let target_exit = target.stop()?;
    let source_exit = source.stop()?;
    if !target_exit.success() || !source_exit.success() {
        bail!("the pools exited with {source_exit} (pool1) and {target_exit} (pool2); see their logs");
    }

    let ms = |v: &[f64]| -> String {
        let mut sorted = v.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize] * 1e3;
        format!("median {:.1} ms, p90 {:.1} ms, max {:.1} ms over {} calls", at(0.5), at(0.9), at(1.0), v.len())
    };
    println!("`migration copy` answered in {:.1} ms", reply_at.as_secs_f64() * 1e3);
    println!(
        "job out of INITIALIZING (now {state}, {queued} files queued) after {:.2} s{}",
        init.as_secs_f64(),
        busy.map(|b| format!(" {b}")).unwrap_or_default()
    );
    println!("meanwhile `info`: {}", ms(&info_lat));
    println!("meanwhile `migration info {job}`: {}", ms(&job_lat));
    println!(
        "pool1: {cpu:.1} CPU-s from the command to the end of the initialisation; peak RSS {rss_before:.0} MiB \
         before the job, {rss_after:.0} MiB after"
    );
    if queued != records {
        bail!("the job queued {queued} files, the pool holds {records}");
    }
    Ok(())
}
