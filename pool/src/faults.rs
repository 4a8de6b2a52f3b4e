//! Named fault points, for crash tests: places in the group commit, the undo of a failed batch,
//! the removal of a migration source's replica and the write of saved jobs where a test makes
//! the daemon abort, or (at the `commit-fail-*` points) makes an operation fail, to check what
//! a crash there leaves behind (docs/testing.md, "Crashes at every commit boundary").
//!
//! The points are the `fail` crate's. They are armed only by `tidepool pool`, from the
//! environment variable `TIDEPOOL_FAULT_POINTS` read once in `cli.rs` and passed down in
//! `Settings`; unarmed, a point costs one look-up in an empty table.

use std::fmt;
use std::str::FromStr;

/// The environment variable that arms fault points: `point=action[,point=action...]`.
pub const ENV_VAR: &str = "TIDEPOOL_FAULT_POINTS";

/// Points where the process can be made to abort.
pub const ABORT_POINTS: &[&str] = &[
    // The placing thread, before and after it renames a file from incoming/ into data/.
    "commit-before-rename",
    "commit-after-rename",
    // The commit thread: after the batch's syncfs, after its records are written, after the
    // metadata flush (before anyone is answered).
    "commit-after-sync",
    "commit-after-records",
    "commit-after-flush",
    // The undo of a failed batch: its data files turned into failed-commit marks and its
    // records deleted, not yet flushed.
    "commit-undo-before-flush",
    // A removal (`rep rm`, eviction by a migration source): the record deleted and flushed,
    // the data file not yet deleted.
    "remove-before-data-delete",
    // A migration source removing its replica after a confirmed copy: before and after.
    "source-before-remove",
    "source-after-remove",
    // `save`: before and after the saved jobs are written (durably).
    "save-before-write",
    "save-after-write",
];

/// Points where an operation can be made to fail with an injected I/O error.
pub const FAIL_POINTS: &[&str] = &["commit-fail-sync", "commit-fail-flush"];

/// What an armed point does when it is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Abort the process (SIGABRT) there.
    Abort,
    /// Fail the operation with an injected I/O error (only at [`FAIL_POINTS`]).
    Fail,
}

/// The armed points, parsed from `point=action[,point=action...]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPoints {
    armed: Vec<(&'static str, FaultAction)>,
}

impl FaultPoints {
    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }

    /// Arms the points in this process.
    pub fn arm(&self) -> Result<(), String> {
        for &(name, action) in &self.armed {
            match action {
                FaultAction::Abort => fail::cfg_callback(name, move || {
                    eprintln!("fault point {name} reached: aborting");
                    std::process::abort();
                })?,
                FaultAction::Fail => fail::cfg(name, "return")?,
            }
        }
        if !self.is_empty() {
            tracing::warn!(points = %self, "fault points armed (for tests only)");
        }
        Ok(())
    }
}

impl fmt::Display for FaultPoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, action)) in self.armed.iter().enumerate() {
            let action = match action {
                FaultAction::Abort => "abort",
                FaultAction::Fail => "fail",
            };
            write!(f, "{}{name}={action}", if i == 0 { "" } else { "," })?;
        }
        Ok(())
    }
}

impl FromStr for FaultPoints {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut armed = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, action) =
                item.split_once('=').ok_or_else(|| format!("{item:?}: expected point=action (abort or fail)"))?;
            let (name, action) = (name.trim(), action.trim());
            let abort = ABORT_POINTS.iter().find(|p| **p == name);
            let fail = FAIL_POINTS.iter().find(|p| **p == name);
            let point = match (abort, fail, action) {
                (Some(p), _, "abort") => (*p, FaultAction::Abort),
                (_, Some(p), "fail") => (*p, FaultAction::Fail),
                (Some(_), _, _) => return Err(format!("{name}: the action must be abort, not {action:?}")),
                (_, Some(_), _) => return Err(format!("{name}: the action must be fail, not {action:?}")),
                (None, None, _) => {
                    return Err(format!(
                        "{name:?} is not a fault point; they are: {}",
                        ABORT_POINTS.iter().chain(FAIL_POINTS).copied().collect::<Vec<_>>().join(" ")
                    ));
                }
            };
            if armed.iter().any(|(n, _)| *n == point.0) {
                return Err(format!("{name}: armed twice"));
            }
            armed.push(point);
        }
        Ok(FaultPoints { armed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let check = |spec: &str, want: Result<&str, &str>| {
            let got = spec.parse::<FaultPoints>().map(|p| p.to_string());
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{spec:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{spec:?}: {got}"),
                (got, want) => panic!("{spec:?}: got {got:?}, want {want:?}"),
            }
        };
        check("", Ok(""));
        check("commit-after-sync=abort", Ok("commit-after-sync=abort"));
        check(
            " commit-fail-flush = fail , commit-undo-before-flush=abort,",
            Ok("commit-fail-flush=fail,commit-undo-before-flush=abort"),
        );
        check("commit-after-sync", Err("expected point=action"));
        check("commit-after-synk=abort", Err("is not a fault point; they are: commit-before-rename"));
        check("commit-after-sync=fail", Err("must be abort"));
        check("commit-fail-sync=abort", Err("must be fail"));
        check("commit-after-sync=abort,commit-after-sync=abort", Err("armed twice"));
    }

    #[test]
    fn every_point_is_in_the_code() {
        let sources = [
            include_str!("../../repository/src/commit.rs"),
            include_str!("../../repository/src/lib.rs"),
            include_str!("migration_env.rs"),
        ]
        .concat();
        for p in ABORT_POINTS.iter().chain(FAIL_POINTS) {
            assert!(sources.contains(&format!("fail_point!(\"{p}\"")), "{p} is declared but not placed");
        }
    }
}
