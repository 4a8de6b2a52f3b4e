//! The fuzz harness (stable Rust, no libFuzzer): runs generated inputs through each target of
//! `tidepool_tests::fuzz`, catching panics, and reports inputs, inputs/s, the slowest input and
//! the peak resident memory. Exits 1 on any failure or when memory passed the bound.
//!
//! ```text
//! cargo run --release -p tidepool-tests --bin fuzz -- [--target all|NAME[,NAME..]]
//!     [--iterations N] [--seed S] [--first I] [--max-rss-mib M] [--max-input-ms T]
//! cargo run --release -p tidepool-tests --bin fuzz -- --target NAME --seed S --input I   (replay one)
//! cargo run --release -p tidepool-tests --bin fuzz -- --target NAME --hex HEX            (run these bytes)
//! cargo run --release -p tidepool-tests --bin fuzz -- --target NAME --file PATH          (run a file's bytes)
//! ```
//!
//! Figures and the command used for them are in docs/testing.md ("Fuzzing").

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use tidepool_tests::fuzz::{self, Ctx, TARGETS, Target};

const USAGE: &str = "usage: fuzz [--target all|NAME[,NAME..]] [--iterations N] [--seed S] [--first I] \
                     [--max-rss-mib M] [--max-input-ms T] | --target NAME (--seed S --input I | --hex HEX | --file PATH)";

/// The default bound on peak resident memory, for the whole run.
const MAX_RSS_MIB: u64 = 64;
/// The default bound on one input's time (release build).
const MAX_INPUT_MS: u64 = 2000;
/// Failures printed per target.
const KEEP: usize = 5;

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn number(args: &[String], name: &str, default: u64) -> anyhow::Result<u64> {
    flag(args, name).map_or(Ok(default), |v| v.replace('_', "").parse().with_context(|| format!("{name} {v}")))
}

fn targets(spec: &str) -> anyhow::Result<Vec<&'static Target>> {
    if spec == "all" {
        return Ok(TARGETS.iter().collect());
    }
    spec.split(',')
        .map(|name| {
            fuzz::target(name).with_context(|| {
                let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
                format!("unknown target {name:?}; the targets are {}", names.join(", "))
            })
        })
        .collect()
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fuzz: {e:#}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        for t in TARGETS {
            println!("  {:10} {}", t.name, t.what);
        }
        return Ok(true);
    }
    let chosen = targets(flag(&args, "--target").unwrap_or("all"))?;
    let seed = number(&args, "--seed", 1)?;
    if let Some(path) = flag(&args, "--file") {
        let input = std::fs::read(path).with_context(|| format!("read {path}"))?;
        return Ok(replay(&chosen, &input));
    }
    if let Some(hex) = flag(&args, "--hex") {
        let input = fuzz::unhex(hex).map_err(anyhow::Error::msg)?;
        return Ok(replay(&chosen, &input));
    }
    if let Some(index) = flag(&args, "--input") {
        let index: u64 = index.parse().context("--input")?;
        let mut all_ok = true;
        for t in &chosen {
            let input = fuzz::make_input(t, &Ctx::new(), seed, index);
            println!("{} seed {seed} input {index} ({} bytes): {}", t.name, input.len(), fuzz::hex(&input));
            all_ok &= replay(&[t], &input);
        }
        return Ok(all_ok);
    }
    let iterations = number(&args, "--iterations", 1_000_000)?;
    let first = number(&args, "--first", 0)?;
    let max_rss = number(&args, "--max-rss-mib", MAX_RSS_MIB)?;
    let max_input = Duration::from_millis(number(&args, "--max-input-ms", MAX_INPUT_MS)?);

    println!("fuzz: seed {seed}, inputs {first}..{} per target, bound {max_rss} MiB peak RSS", first + iterations);
    let started = Instant::now();
    let mut ok = true;
    for t in chosen {
        let report = fuzz::run_target(t, seed, first, iterations, KEEP);
        let rss = fuzz::peak_rss_kib().map_or(f64::NAN, |k| k as f64 / 1024.0);
        let secs = report.elapsed.as_secs_f64();
        let failures = report.failures.len() as u64 + report.more_failures;
        println!(
            "{:10} {:>9} inputs {:>7.1} s {:>9.0} inputs/s  mean {:>5} bytes  slowest {:.1} ms (input {})  failures {}  peak RSS {:.0} MiB",
            t.name,
            report.inputs,
            secs,
            report.inputs as f64 / secs.max(1e-9),
            report.bytes / report.inputs.max(1),
            report.slowest.0.as_secs_f64() * 1000.0,
            report.slowest.1,
            failures,
            rss
        );
        let outcomes: Vec<String> = report
            .outcomes
            .iter()
            .map(|(label, n)| format!("{label} {:.1}%", *n as f64 * 100.0 / report.inputs.max(1) as f64))
            .collect();
        println!("           outcomes: {}", outcomes.join(", "));
        for f in &report.failures {
            println!("FAILURE {f}");
        }
        if report.more_failures > 0 {
            println!("... and {} more failures of {}", report.more_failures, t.name);
        }
        if report.slowest.0 > max_input {
            println!(
                "FAILURE {}: input {} took {:?}, more than the bound of {max_input:?}",
                t.name, report.slowest.1, report.slowest.0
            );
            ok = false;
        }
        ok &= failures == 0;
    }
    let peak = fuzz::peak_rss_kib().unwrap_or(0) / 1024;
    println!("total {:.1} s, peak RSS {peak} MiB (bound {max_rss} MiB)", started.elapsed().as_secs_f64());
    if peak > max_rss {
        println!("FAILURE: peak RSS {peak} MiB is above the bound of {max_rss} MiB");
        ok = false;
    }
    Ok(ok)
}

/// Runs `input` through each target and prints the outcome.
fn replay(targets: &[&Target], input: &[u8]) -> bool {
    let mut all_ok = true;
    for t in targets {
        let mut ctx = Ctx::new();
        match fuzz::run_one(t, &mut ctx, input) {
            Ok(label) => println!("{}: ok ({label})", t.name),
            Err(e) => {
                println!("{}: FAILED: {e}\n  as text: {:?}", t.name, String::from_utf8_lossy(input));
                all_ok = false;
            }
        }
    }
    all_ok
}
