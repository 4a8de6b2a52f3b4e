//! Fuzzing on stable Rust: each target is a plain function over bytes, fed inputs that a seeded
//! generator makes (structure-aware: valid encodings and token sequences, then mutated, plus
//! purely random bytes). A panic, or a broken property, is a failure that names the target, the
//! seed and the input's number, with the input in hex, so that it can be replayed.
//!
//! The harness binary is `tests/src/bin/fuzz.rs`; `tests/tests/fuzz.rs` runs a fixed-seed slice
//! of every target in `cargo test`. See docs/testing.md ("Fuzzing") for the figures.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;
use std::time::{Duration, Instant};

mod gen_text;
mod gen_wire;
mod targets;

pub use targets::TARGETS;

/// A small deterministic generator (the migration module's SplitMix64): the same seed gives
/// the same inputs on every machine, which is all a replay needs.
#[derive(Clone, Debug)]
pub struct Rng(tidepool_migration::select::SplitMix);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(tidepool_migration::select::SplitMix::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den < num
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// One of `words`.
    pub fn word(&mut self, words: &[&'static str]) -> &'static str {
        words[self.below(words.len())]
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// The seed of input `index` of `target` in a run seeded with `seed`: inputs are independent,
/// so input 700,000 can be made again without making the 699,999 before it.
pub fn input_seed(seed: u64, target: &str, index: u64) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    for b in target.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    Rng::new(seed ^ h ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64()
}

/// The longest input any generator makes (mutations included), so that one input's cost stays
/// small and a run's memory bounded.
pub const MAX_INPUT: usize = 16 * 1024;

/// Random byte edits: bit flips, byte changes, insertions, deletions, duplicated runs,
/// truncation, tokens from `dictionary`, and a splice of `other`.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, dictionary: &[&[u8]], other: &[u8]) {
    let edits = 1 + rng.below(4);
    for _ in 0..edits {
        let len = data.len();
        match rng.below(10) {
            0 if len > 0 => {
                let at = rng.below(len);
                data[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                let any = rng.byte();
                data[at] = *rng.pick(&[0, 0x7f, 0x80, 0xff, b'\\', b'"', b'\'', b'=', b'-', b' ', any]);
            }
            2 => {
                let at = rng.below(len + 1);
                let b = rng.byte();
                data.insert(at, b);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(16));
                data.drain(at..at + n);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(32));
                let copy = data[at..at + n].to_vec();
                let to = rng.below(len + 1);
                data.splice(to..to, copy);
            }
            5 if len > 0 => data.truncate(rng.below(len)),
            6 | 7 if !dictionary.is_empty() => {
                let token = rng.pick(dictionary).to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, token);
            }
            8 if !other.is_empty() => {
                let at = rng.below(len + 1);
                let from = rng.below(other.len());
                let n = 1 + rng.below(other.len() - from);
                data.truncate(at);
                data.extend_from_slice(&other[from..from + n]);
            }
            _ => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let noise = rng.bytes(n);
                data.splice(at..at, noise);
            }
        }
    }
    data.truncate(MAX_INPUT);
}

/// What a target's run needs besides the input: a runtime for the async decoders.
pub struct Ctx {
    rt: tokio::runtime::Runtime,
}

impl Ctx {
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a tokio runtime");
        Ctx { rt }
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx::new()
    }
}

/// One fuzz target: how to make an input and what to do with it. `run` names how far the
/// input got (`"accepted"`, `"refused"`, ...: the harness counts them, which shows that the
/// generated inputs reach the deep paths), or returns an error when the code under test broke
/// a property (beyond not panicking).
pub struct Target {
    pub name: &'static str,
    pub what: &'static str,
    pub generate: fn(&mut Rng, &Ctx) -> Vec<u8>,
    pub run: fn(&Ctx, &[u8]) -> Result<&'static str, String>,
}

/// One input that failed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub target: &'static str,
    pub seed: u64,
    pub index: u64,
    pub input: Vec<u8>,
    /// The panic message (with its location), or the broken property.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "target {} seed {} input {}: {}\n  replay: fuzz --target {} --seed {} --input {}\n  input ({} bytes, hex): {}\n  as text: {:?}",
            self.target,
            self.seed,
            self.index,
            self.message,
            self.target,
            self.seed,
            self.index,
            self.input.len(),
            hex(&self.input),
            String::from_utf8_lossy(&self.input),
        )
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| format!("bad hex at {i}: {e}")))
        .collect()
}

/// What one target's run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: &'static str,
    pub inputs: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// The slowest single input and its number.
    pub slowest: (Duration, u64),
    pub failures: Vec<Failure>,
    /// Failures beyond the ones kept in `failures`.
    pub more_failures: u64,
    /// How many inputs ended each way (the labels of `Target::run`).
    pub outcomes: BTreeMap<&'static str, u64>,
}

thread_local! {
    /// Set while a fuzz input runs: the panic hook then records the message here instead of
    /// printing it.
    static CAUGHT: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that keeps quiet about panics inside a fuzz input and passes
/// every other panic to the hook that was there before.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let inside = CAUGHT.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        let payload = info
                            .payload()
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| info.payload().downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "(no message)".into());
                        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                        *slot = Some(format!("panic: {payload}{at}"));
                        true
                    }
                    None => false,
                }
            });
            if !inside {
                previous(info);
            }
        }));
    });
}

/// Runs one input of `target`; `Err` with the panic message or the broken property.
pub fn run_one(target: &Target, ctx: &mut Ctx, input: &[u8]) -> Result<&'static str, String> {
    install_hook();
    CAUGHT.with(|c| *c.borrow_mut() = Some(None));
    let result = catch_unwind(AssertUnwindSafe(|| (target.run)(ctx, input)));
    let message = CAUGHT.with(|c| c.borrow_mut().take()).flatten();
    match result {
        Ok(outcome) => outcome,
        Err(_) => {
            // A panic may have left the runtime half-way through a `block_on`: start afresh.
            *ctx = Ctx::new();
            Err(message.unwrap_or_else(|| "panic".into()))
        }
    }
}

/// The input `index` of `target` in a run seeded with `seed`.
pub fn make_input(target: &Target, ctx: &Ctx, seed: u64, index: u64) -> Vec<u8> {
    let mut rng = Rng::new(input_seed(seed, target.name, index));
    let mut input = (target.generate)(&mut rng, ctx);
    input.truncate(MAX_INPUT);
    input
}

/// Runs inputs `first..first + count` of `target`, keeping at most `keep` failures.
pub fn run_target(target: &Target, seed: u64, first: u64, count: u64, keep: usize) -> Report {
    let mut ctx = Ctx::new();
    let mut report = Report {
        target: target.name,
        inputs: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
        slowest: (Duration::ZERO, first),
        failures: Vec::new(),
        more_failures: 0,
        outcomes: BTreeMap::new(),
    };
    let started = Instant::now();
    for index in first..first + count {
        let input = make_input(target, &ctx, seed, index);
        let t = Instant::now();
        let outcome = run_one(target, &mut ctx, &input);
        let took = t.elapsed();
        if took > report.slowest.0 {
            report.slowest = (took, index);
        }
        report.inputs += 1;
        report.bytes += input.len() as u64;
        match outcome {
            Ok(label) => *report.outcomes.entry(label).or_default() += 1,
            Err(message) if report.failures.len() < keep => {
                report.failures.push(Failure { target: target.name, seed, index, input, message })
            }
            Err(_) => report.more_failures += 1,
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The peak resident memory of this process so far (`VmHWM` of /proc/self/status), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    procfs::process::Process::myself().and_then(|p| p.status()).ok()?.vmhwm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_reproducible_and_differ_by_index_and_target() {
        let ctx = Ctx::new();
        for t in TARGETS {
            assert_eq!(make_input(t, &ctx, 7, 123), make_input(t, &ctx, 7, 123), "{}", t.name);
        }
        assert_ne!(input_seed(7, "frame", 1), input_seed(7, "frame", 2));
        assert_ne!(input_seed(7, "frame", 1), input_seed(7, "record", 1));
        assert_ne!(input_seed(7, "frame", 1), input_seed(8, "frame", 1));
    }

    #[test]
    fn hex_round_trips() {
        let bytes = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(unhex(&hex(&bytes)), Ok(bytes));
        assert!(unhex("abc").is_err());
        assert!(unhex("zz").is_err());
    }

    fn panics(_: &Ctx, input: &[u8]) -> Result<&'static str, String> {
        if input.first() == Some(&b'!') {
            panic!("boom on {}", input.len());
        }
        if input.first() == Some(&b'?') {
            return Err("property broken".into());
        }
        Ok("fine")
    }

    #[test]
    fn a_panic_and_a_broken_property_are_failures_with_their_message() {
        let target = Target { name: "test", what: "test", generate: |rng, _| vec![*rng.pick(b"!?x")], run: panics };
        let mut ctx = Ctx::new();
        let err = run_one(&target, &mut ctx, b"!ab").unwrap_err();
        assert!(err.contains("boom on 3") && err.contains("fuzz/mod.rs"), "{err}");
        assert_eq!(run_one(&target, &mut ctx, b"?"), Err("property broken".into()));
        assert_eq!(run_one(&target, &mut ctx, b"x"), Ok("fine"));
        let report = run_target(&target, 1, 0, 300, 2);
        assert_eq!(report.inputs, 300);
        assert_eq!(report.failures.len(), 2);
        assert!(report.more_failures > 100, "{}", report.more_failures);
        assert_eq!(report.outcomes["fine"] + report.more_failures + 2, 300);
        let f = &report.failures[0];
        assert_eq!(make_input(&target, &ctx, f.seed, f.index), f.input, "a failure's input can be made again");
        assert!(f.to_string().contains(&format!("--seed 1 --input {}", f.index)), "{f}");
    }
}
