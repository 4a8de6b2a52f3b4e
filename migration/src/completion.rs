//! What `migration report` prints (docs/admin-commands.md): every file the job selected and
//! what became of it, from one snapshot that also serialises as JSON (`-json`,
//! docs/json.md), so that the text and the machine-readable form never disagree.

use std::fmt::Write as _;

use serde::Serialize;

use crate::ledger::Fate;

/// The files of a job, counted by fate; the counts add up to `files`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub done: u64,
    pub already_in_place: u64,
    pub gone_from_source: u64,
    pub no_longer_selected: u64,
    pub given_up: u64,
    pub cancelled: u64,
    pub not_tried: u64,
    pub queued: u64,
    pub running: u64,
    pub waiting: u64,
}

impl Counts {
    pub fn of(count: impl Fn(Fate) -> u64) -> Counts {
        Counts {
            done: count(Fate::Done),
            already_in_place: count(Fate::InPlace),
            gone_from_source: count(Fate::GoneFromSource),
            no_longer_selected: count(Fate::NoLongerSelected),
            given_up: count(Fate::GivenUp),
            cancelled: count(Fate::Cancelled),
            not_tried: count(Fate::NotTried),
            queued: count(Fate::Queued),
            running: count(Fate::Running),
            waiting: count(Fate::Waiting),
        }
    }

    pub fn total(&self) -> u64 {
        self.rows().iter().map(|(_, n)| n).sum()
    }

    /// The text's rows, in order.
    fn rows(&self) -> [(&'static str, u64); 10] {
        [
            ("done", self.done),
            ("already in place", self.already_in_place),
            ("gone from source", self.gone_from_source),
            ("no longer selected", self.no_longer_selected),
            ("given up", self.given_up),
            ("cancelled", self.cancelled),
            ("not tried", self.not_tried),
            ("queued", self.queued),
            ("running", self.running),
            ("waiting", self.waiting),
        ]
    }
}

/// One file of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileLine {
    pub pnfsid: String,
    /// `done`, `already_in_place`, `gone_from_source`, `no_longer_selected`, `given_up`,
    /// `cancelled`, `not_tried`, `queued`, `running` or `waiting`.
    pub fate: &'static str,
    /// Where its replicas are (`done`, `already_in_place`), sorted.
    pub targets: Vec<String>,
    /// The state the target replicas were given (`done`, `already_in_place`).
    pub target_state: Option<String>,
    /// The targets compared the data with the source's checksum (`done`, `already_in_place`).
    pub checksum_matched: Option<bool>,
    /// Failed tries (0: never failed).
    pub failed_attempts: u32,
    /// The last failure's code and message, if it ever failed.
    pub code: Option<u32>,
    pub error: Option<String>,
}

/// `migration report <job>`.
#[derive(Clone, Debug, Serialize)]
pub struct CompletionReport {
    pub id: String,
    pub state: String,
    /// The job has ended: nothing is queued, running or waiting any more.
    pub ended: bool,
    /// Every file the job selected (a permanent job: every distinct file seen so far).
    pub files: u64,
    pub counts: Counts,
    /// Files that failed at least once, whatever became of them since.
    pub failed_at_least_once: u64,
    /// Only the files not done or already in place, unless `-all` was given.
    pub all: bool,
    pub file_lines: Vec<FileLine>,
}

impl CompletionReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Job [{}] {}: {} files selected", self.id, self.state, self.files);
        for (name, n) in self.counts.rows() {
            let _ = writeln!(out, "  {name:<20} {n}");
        }
        let _ = writeln!(out, "  {:<20} {}", "failed at least once", self.failed_at_least_once);
        if self.file_lines.is_empty() {
            return out;
        }
        let _ = writeln!(out, "{}:", if self.all { "Files" } else { "Files not done" });
        for f in &self.file_lines {
            let _ = write!(out, "{} {}", f.pnfsid, f.fate.replace('_', " "));
            if !f.targets.is_empty() {
                let _ = write!(out, " on {}", f.targets.join(","));
            }
            if let Some(state) = &f.target_state {
                let sum = if f.checksum_matched == Some(true) { "checksum matched" } else { "checksum not compared" };
                let _ = write!(out, " ({state}, {sum})");
            }
            if f.failed_attempts > 0 {
                let error = f.error.as_deref().unwrap_or("");
                let _ = write!(out, "; failed {} time(s), last: [{}] {error}", f.failed_attempts, f.code.unwrap_or(0));
            }
            out.push('\n');
        }
        out
    }
}
