//! What `migration ls` and `migration info` print (docs/dcache-compatibility.md#output), from one snapshot of
//! a job that also serialises as JSON (`-json`), so the text and the machine-readable form
//! never disagree.

use std::fmt::Write as _;

use chrono::TimeZone;
use serde::Serialize;
use tidepool_p2p::PoolName;
use tidepool_p2p::model::EpochMillis;

use crate::job_state::JobState;
use crate::task::TaskFailure;

/// `[<id>] <STATE padded to 12> <command>`.
pub fn summary_line(id: &str, state: JobState, command: &str) -> String {
    format!("[{id}] {:<12} {command}", state.as_str())
}

/// One job of `migration ls` and `migration ls -json` (the text line is [`JobSummary::line`],
/// so the two forms never disagree); `rebalance -json` reads it back from other pools.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct JobSummary {
    pub id: String,
    pub state: String,
    pub command: String,
    /// Why a saved job could not be restored (state `UNRESTORED`, `mark` null); else null.
    pub reason: Option<String>,
    /// How the job stands against what `save` stored, where the text puts a mark after the
    /// command; null where it puts none.
    pub mark: Option<SaveMark>,
}

/// The marks `migration ls` puts after a job's command about `save`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaveMark {
    /// ` (not saved)`: a permanent job that `save` has not stored as it is now.
    NotSaved,
    /// ` (saved <STATE>: comes back at restart until the next `save`)`: a saved permanent job
    /// that was cancelled or ended since.
    SavedButEnded,
    /// ` (dropped: comes back at restart until the next `save`)`: an `UNRESTORED` job that
    /// `migration cancel` dropped, still in the saved set.
    DroppedButSaved,
}

impl JobSummary {
    /// The `migration ls` line: the summary line and its mark.
    pub fn line(&self) -> String {
        let mut line = format!("[{}] {:<12} {}", self.id, self.state, self.command);
        let until = "comes back at restart until the next `save`";
        match (self.mark, &self.reason) {
            (Some(SaveMark::NotSaved), _) => line.push_str(" (not saved)"),
            (Some(SaveMark::SavedButEnded), _) => {
                let _ = write!(line, " (saved {}: {until})", self.state);
            }
            (Some(SaveMark::DroppedButSaved), _) => {
                let _ = write!(line, " (dropped: {until})");
            }
            (None, Some(reason)) => {
                let _ = write!(
                    line,
                    " (could not be restored at start: {reason}; `save` keeps it, `migration cancel {}` drops it)",
                    self.id
                );
            }
            (None, None) => {}
        }
        line
    }
}

/// A target of the job that a new copy cannot go to now.
#[derive(Clone, Debug, Serialize)]
pub struct Unusable {
    pub pool: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct TaskLine {
    pub task: u64,
    pub pnfsid: String,
    pub state: String,
    pub target: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NoteLine {
    pub at: EpochMillis,
    /// 0 for notes about the job rather than one task.
    pub task: u64,
    pub pnfsid: Option<String>,
    pub message: String,
    /// What the note is about, for code that acts on it; `message` says it to the operator.
    #[serde(skip)]
    pub about: Noted,
}

/// What a note of a job is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Noted {
    /// A file the job wants is locked by another job of this pool.
    FileLocked,
    /// A file's task failed.
    Failed(Box<TaskFailure>),
    /// A file's source changed while it was copied: it goes round again.
    SourceChanged,
    /// A target restarted: the copies it was making are tried again.
    TargetRestarted(PoolName),
    /// A copy request could not be delivered to a target: no new copies go there for now.
    TargetUnreachable(PoolName),
    /// Anything else: the message says what.
    #[default]
    Other,
}

/// What became of a file after its last failed try (`migration info -failed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureState {
    /// It is tried again at `retry_at`.
    Waiting,
    /// Dropped from the job for good.
    GivenUp,
    /// A later try succeeded.
    DoneSince,
    /// Not tried again: the job was cancelled or ended.
    NotRetried,
}

impl FailureState {
    fn text(self) -> &'static str {
        match self {
            FailureState::Waiting => "waiting",
            FailureState::GivenUp => "given up",
            FailureState::DoneSince => "done since",
            FailureState::NotRetried => "not retried (the job ended)",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FailureLine {
    pub pnfsid: String,
    pub attempts: u32,
    pub last_at: EpochMillis,
    /// When the file is tried again; `None`: dropped from the job for good.
    pub retry_at: Option<EpochMillis>,
    pub code: u32,
    pub error: String,
    /// The file's size, in bytes.
    pub size: u64,
    pub state: FailureState,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobReport {
    pub id: String,
    pub command: String,
    pub state: String,
    pub queued: usize,
    /// Bytes of the queued files.
    pub queued_bytes: u64,
    /// Files waiting out their backoff after a failure.
    pub waiting: usize,
    /// Units of the job's concurrency under way (each one file, or a batch of small files
    /// bound for one target)...
    pub units: usize,
    /// ...and how many of them are batches of more than one file.
    pub batches: usize,
    pub attempts: u64,
    /// The targets a new copy may go to now.
    pub targets: Vec<String>,
    /// The job's other targets, and why none goes there now.
    pub unusable: Vec<Unusable>,
    pub completed_files: u64,
    pub completed_bytes: u64,
    pub total_bytes: u64,
    pub bytes_left: u64,
    pub concurrency: usize,
    /// The job's byte-rate limit (`-rate`, `migration set rate`); 0: unlimited.
    pub rate_limit_bytes_per_second: u64,
    pub rate_bytes_per_second: Option<f64>,
    pub eta_seconds: Option<u64>,
    pub running: Vec<TaskLine>,
    pub notes: Vec<NoteLine>,
    pub failures: Vec<FailureLine>,
}

fn clock(at: EpochMillis) -> String {
    match chrono::Local.timestamp_millis_opt(at) {
        chrono::LocalResult::Single(t) => t.format("%H:%M:%S").to_string(),
        _ => "--:--:--".to_string(),
    }
}

/// `12.3 MB/s` (decimal units, like the transfer logs).
fn rate_text(bytes_per_second: f64) -> String {
    const UNITS: [&str; 5] = ["B/s", "kB/s", "MB/s", "GB/s", "TB/s"];
    let mut v = bytes_per_second;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

fn duration_text(seconds: u64) -> String {
    format!("{}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

impl JobReport {
    /// The `migration info` text. The lines of docs/dcache-compatibility.md#output come first and unchanged
    /// (scripts parse them as `key: value`); Tidepool's additions follow `Concurrency`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Command    : {}", self.command);
        let _ = writeln!(s, "State      : {}", self.state);
        let _ = writeln!(s, "Queued     : {}", self.queued);
        let _ = writeln!(s, "Attempts   : {}", self.attempts);
        let _ = writeln!(s, "Targets    : {}", self.targets.join(","));
        if self.total_bytes > 0 {
            let (completed, total, pct) = match self.state.as_str() {
                "RUNNING" | "SUSPENDED" | "CANCELLING" | "STOPPING" | "SLEEPING" | "PAUSED" => (true, true, true),
                "INITIALIZING" | "FINISHED" => (true, true, false),
                "CANCELLED" | "FAILED" => (true, false, false),
                _ => (false, false, false),
            };
            if completed {
                let _ = write!(s, "Completed  : {} files; {} bytes", self.completed_files, self.completed_bytes);
                if pct {
                    let pct = self.completed_bytes.saturating_mul(100).checked_div(self.total_bytes).unwrap_or(0);
                    let _ = write!(s, "; {pct}%");
                }
                s.push('\n');
            }
            if total {
                let _ = writeln!(s, "Total      : {} bytes", self.total_bytes);
            }
        }
        let _ = writeln!(s, "Concurrency: {}", self.concurrency);
        let _ = writeln!(s, "Rate limit : {}", crate::rate::ByteRate(self.rate_limit_bytes_per_second));
        if let Some(rate) = self.rate_bytes_per_second {
            let _ = writeln!(s, "Rate       : {}", rate_text(rate));
        }
        if let Some(eta) = self.eta_seconds {
            let _ = writeln!(s, "ETA        : {}", duration_text(eta));
        }
        if !self.unusable.is_empty() {
            let each: Vec<String> = self.unusable.iter().map(|u| format!("{} ({})", u.pool, u.reason)).collect();
            let _ = writeln!(s, "Unusable   : {}", each.join(", "));
        }
        if self.units > 0 {
            let files = self.running.len();
            let _ = write!(s, "Running    : {files} files in {} units", self.units);
            if self.batches > 0 {
                let _ = write!(s, " ({} batches of small files)", self.batches);
            }
            s.push('\n');
        }
        if self.waiting > 0 {
            let _ = writeln!(s, "Waiting    : {} files, to be retried after a failure", self.waiting);
        }
        if !self.failures.is_empty() {
            let count = |state| self.failures.iter().filter(|f| f.state == state).count();
            let (dropped, done) = (count(FailureState::GivenUp), count(FailureState::DoneSince));
            let _ = writeln!(
                s,
                "Failed     : {} files ({dropped} given up, {done} done since); `migration info -failed {}` lists them",
                self.failures.len(),
                self.id
            );
        }
        s.push_str("Running tasks:\n");
        for t in &self.running {
            match &t.target {
                Some(target) => {
                    let _ = writeln!(s, "[{}] {}: TASK.{} -> [{target}@local]", t.task, t.pnfsid, t.state);
                }
                None => {
                    let _ = writeln!(s, "[{}] {}: TASK.{}", t.task, t.pnfsid, t.state);
                }
            }
        }
        if !self.notes.is_empty() {
            s.push_str("Most recent notes:\n");
            for n in &self.notes {
                let _ =
                    writeln!(s, "{} [{}] {}: {}", clock(n.at), n.task, n.pnfsid.as_deref().unwrap_or("-"), n.message);
            }
        }
        s
    }

    /// `migration info -failed`: one line per file whose last try failed.
    pub fn render_failures(&self) -> String {
        if self.failures.is_empty() {
            return format!("[{}] no file has failed\n", self.id);
        }
        let mut s = String::new();
        for f in &self.failures {
            let next = match (f.state, f.retry_at) {
                (FailureState::Waiting, Some(at)) => format!("retry at {}", clock(at)),
                (state, _) => state.text().to_string(),
            };
            let _ = writeln!(
                s,
                "{} attempts={} last={} {next}: {} (rc={})",
                f.pnfsid,
                f.attempts,
                clock(f.last_at),
                f.error,
                f.code
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_lines_and_json_come_from_one_summary() {
        let job = |state: &str, reason: Option<&str>, mark| JobSummary {
            id: "7".into(),
            state: state.into(),
            command: "migration copy -permanent -- pool2".into(),
            reason: reason.map(String::from),
            mark,
        };
        let until = "comes back at restart until the next `save`";
        for (summary, line, json_mark) in [
            (job("RUNNING", None, None), "[7] RUNNING      migration copy -permanent -- pool2".to_string(), "null"),
            (
                job("SLEEPING", None, Some(SaveMark::NotSaved)),
                "[7] SLEEPING     migration copy -permanent -- pool2 (not saved)".to_string(),
                "\"not_saved\"",
            ),
            (
                job("CANCELLED", None, Some(SaveMark::SavedButEnded)),
                format!("[7] CANCELLED    migration copy -permanent -- pool2 (saved CANCELLED: {until})"),
                "\"saved_but_ended\"",
            ),
            (
                job("UNRESTORED", None, Some(SaveMark::DroppedButSaved)),
                format!("[7] UNRESTORED   migration copy -permanent -- pool2 (dropped: {until})"),
                "\"dropped_but_saved\"",
            ),
            (
                job("UNRESTORED", Some("no pool pool2"), None),
                "[7] UNRESTORED   migration copy -permanent -- pool2 (could not be restored at start: no pool pool2; \
                 `save` keeps it, `migration cancel 7` drops it)"
                    .to_string(),
                "null",
            ),
        ] {
            assert_eq!(summary.line(), line);
            let json = serde_json::to_string(&summary).unwrap();
            assert!(json.ends_with(&format!(r#""mark":{json_mark}}}"#)), "{json}");
            assert_eq!(serde_json::from_str::<JobSummary>(&json).unwrap(), summary, "it reads back");
        }
    }

    fn report(state: &str) -> JobReport {
        JobReport {
            id: "1".into(),
            command: "migration copy -pnfsid=0000A1 -- pool2".into(),
            state: state.into(),
            queued: 3,
            queued_bytes: 300,
            waiting: 0,
            units: 0,
            batches: 0,
            attempts: 2,
            targets: vec!["pool2".into(), "pool3".into()],
            unusable: vec![],
            completed_files: 1,
            completed_bytes: 250,
            total_bytes: 1000,
            bytes_left: 750,
            concurrency: 2,
            rate_limit_bytes_per_second: 0,
            rate_bytes_per_second: None,
            eta_seconds: None,
            running: vec![
                TaskLine { task: 7, pnfsid: "0000A1".into(), state: "Copying".into(), target: Some("pool2".into()) },
                TaskLine { task: 9, pnfsid: "0000A2".into(), state: "GettingLocations".into(), target: None },
            ],
            notes: vec![],
            failures: vec![],
        }
    }

    #[test]
    fn summary_pads_the_state_like_dcache() {
        assert_eq!(
            summary_line("1", JobState::Running, "migration copy -- pool2"),
            "[1] RUNNING      migration copy -- pool2"
        );
        assert_eq!(
            summary_line("rebalance", JobState::Finished, "migration move -id=rebalance -- p"),
            "[rebalance] FINISHED     migration move -id=rebalance -- p"
        );
    }

    #[test]
    fn info_has_the_reference_layout() {
        let text = report("RUNNING").render();
        assert_eq!(
            text,
            "Command    : migration copy -pnfsid=0000A1 -- pool2\n\
             State      : RUNNING\n\
             Queued     : 3\n\
             Attempts   : 2\n\
             Targets    : pool2,pool3\n\
             Completed  : 1 files; 250 bytes; 25%\n\
             Total      : 1000 bytes\n\
             Concurrency: 2\n\
             Rate limit : unlimited\n\
             Running tasks:\n\
             [7] 0000A1: TASK.Copying -> [pool2@local]\n\
             [9] 0000A2: TASK.GettingLocations\n"
        );
        let finished = report("FINISHED").render();
        assert!(finished.contains("Completed  : 1 files; 250 bytes\nTotal      : 1000 bytes\n"), "{finished}");
        let cancelled = report("CANCELLED").render();
        assert!(cancelled.contains("Completed  : 1 files; 250 bytes\nConcurrency"), "{cancelled}");
        assert!(!report("NEW").render().contains("Completed"));
        // Every line is `key: value` up to the task list.
        for line in text.lines().take_while(|l| *l != "Running tasks:") {
            assert!(line.split_once(':').is_some_and(|(k, _)| k.trim() == k.trim_end()), "{line}");
        }
    }

    #[test]
    fn additions_follow_concurrency_and_notes_come_last() {
        let mut r = report("RUNNING");
        r.rate_bytes_per_second = Some(12_345_678.0);
        r.eta_seconds = Some(3725);
        r.waiting = 1;
        r.failures = vec![FailureLine {
            pnfsid: "0000A3".into(),
            attempts: 2,
            last_at: 0,
            retry_at: Some(10_000),
            code: 20004,
            error: "Pool pool2 failed (not reachable)".into(),
            size: 100,
            state: FailureState::Waiting,
        }];
        r.notes = vec![NoteLine {
            at: 0,
            task: 0,
            pnfsid: Some("0000A3".into()),
            message: "File is locked".into(),
            about: Noted::FileLocked,
        }];
        let text = r.render();
        assert!(
            text.contains("Concurrency: 2\nRate limit : unlimited\nRate       : 12.3 MB/s\nETA        : 1:02:05\n"),
            "{text}"
        );
        r.rate_limit_bytes_per_second = 50 << 20;
        assert!(r.render().contains("Concurrency: 2\nRate limit : 50 MiB/s\nRate       : 12.3 MB/s\n"));
        assert_eq!(serde_json::to_value(&r).unwrap()["rate_limit_bytes_per_second"], 50 << 20);
        assert!(!text.contains("Running    :"), "no unit under way: no line\n{text}");
        assert!(!text.contains("Unusable"), "every target usable: no line\n{text}");
        r.unusable = vec![
            Unusable { pool: "pool4".into(), reason: "offline".into() },
            Unusable { pool: "pool5".into(), reason: "not reachable".into() },
        ];
        assert!(r.render().contains("ETA        : 1:02:05\nUnusable   : pool4 (offline), pool5 (not reachable)\n"));
        r.unusable.clear();
        // Two files under way: one alone, or both in one batch.
        r.units = 2;
        assert!(r.render().contains("ETA        : 1:02:05\nRunning    : 2 files in 2 units\nWaiting"));
        (r.units, r.batches) = (1, 1);
        let text = r.render();
        assert!(text.contains("\nRunning    : 2 files in 1 units (1 batches of small files)\n"), "{text}");
        assert!(
            text.contains("Failed     : 1 files (0 given up, 0 done since); `migration info -failed 1` lists them\n")
        );
        assert!(text.contains("Most recent notes:\n") && text.ends_with("[0] 0000A3: File is locked\n"), "{text}");
        let failed = r.render_failures();
        assert!(
            failed.starts_with("0000A3 attempts=2 last=")
                && failed.contains("Pool pool2 failed (not reachable) (rc=20004)")
        );
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["failures"][0]["attempts"], 2);
        assert_eq!(json["running"][0]["target"], "pool2");
    }
}
