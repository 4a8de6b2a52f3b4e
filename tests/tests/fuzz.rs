//! The fixed-seed slice of the fuzz harness that CI runs: every target takes
//! [`SLICE`] generated inputs of seed [`SEED`] without a panic or a broken property. The full
//! runs (a million inputs per target, in release) are `cargo run --release -p tidepool-tests
//! --bin fuzz`; see docs/testing.md ("Fuzzing").

use tidepool_tests::fuzz::{self, TARGETS};

/// The seed of the slice: fixed, so that CI runs the same inputs every time.
const SEED: u64 = 20_261_204;
/// Inputs per target.
const SLICE: u64 = 10_000;

fn slice(name: &str) {
    let target = fuzz::target(name).unwrap_or_else(|| panic!("no fuzz target {name}"));
    let report = fuzz::run_target(target, SEED, 0, SLICE, 3);
    assert_eq!(report.inputs, SLICE);
    let failures: Vec<String> = report.failures.iter().map(|f| f.to_string()).collect();
    assert!(
        failures.is_empty(),
        "{} of {SLICE} inputs of {name} failed:\n{}",
        failures.len() as u64 + report.more_failures,
        failures.join("\n")
    );
}

#[test]
fn every_target_has_a_slice_here() {
    let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    assert_eq!(names, ["frame", "handshake", "admin", "options", "expr", "saved", "record"]);
}

#[test]
fn frame_decoder() {
    slice("frame");
}

#[test]
fn handshake() {
    slice("handshake");
}

#[test]
fn admin_line_parser() {
    slice("admin");
}

#[test]
fn job_option_grammar() {
    slice("options");
}

#[test]
fn expression_parser() {
    slice("expr");
}

#[test]
fn saved_job_parser() {
    slice("saved");
}

#[test]
fn record_decoder() {
    slice("record");
}
