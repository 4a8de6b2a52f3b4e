//! The plan of a dry run (`migration copy|move|cache -dry-run`, docs/admin-commands.md): what a
//! job would select, where each file would go, and what it would leave, and why. The module's
//! dry driver (`module/dry.rs`) runs the job's own core over answers it makes up (every copy
//! accepted and confirmed, nothing sent but the read-only questions to the targets) and hands
//! what it saw to [`assemble`], a pure function; [`Plan::render`] is the text and the serde
//! form is `-json` (docs/json.md), so the two never disagree.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use serde::Serialize;
use tidepool_p2p::{PnfsId, PoolName, RemoteError};

use crate::filter::Criterion;
use crate::job_state::JobState;

/// A copy the job would ask a target for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedCopy {
    pub pool: PoolName,
    /// The pool holds a replica already and is asked to bring it up to the wanted state (a
    /// new state, sticky records, a `-verify`); otherwise it makes a new copy.
    pub update: bool,
}

/// Why a file would be skipped or could not be placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Another job of this pool works on the file (it holds the file's lock).
    Locked,
    /// `-stop-when` held before the file's turn: the job would stop first.
    Stopped,
    /// `-pause-when` held before the file's turn: the job would pause first.
    Paused,
    /// No usable target (offline, disabled for pool-to-pool, left out by `-include-when` or
    /// `-exclude-when`, or full): the job would sleep and look again.
    NoTarget,
    /// The file's task would fail; `permanent`: the job would not try it again (e.g. a
    /// `-meta-only` file without replicas on the targets, or `-target-deficit-mode=limit`
    /// short of replicas). The code and message are the job's (docs/errors.md).
    Failed { permanent: bool, code: u32, message: String },
    /// The replica went away (or could not be read) before its turn.
    Gone,
}

impl Reason {
    /// Whether the file is skipped (by a rule) rather than unplaceable (no target takes it).
    pub fn skips(&self) -> bool {
        match self {
            Reason::Locked | Reason::Stopped | Reason::Paused | Reason::Gone => true,
            Reason::Failed { permanent, .. } => *permanent,
            Reason::NoTarget => false,
        }
    }

    fn text(&self) -> String {
        match self {
            Reason::Locked => "another job of this pool works on the file".into(),
            Reason::Stopped => "-stop-when holds before its turn".into(),
            Reason::Paused => "-pause-when holds before its turn".into(),
            Reason::NoTarget => "no usable target with room for it (see Targets)".into(),
            Reason::Failed { message, .. } => message.clone(),
            Reason::Gone => "the replica is gone".into(),
        }
    }
}

/// What would become of one selected file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Copies made or updated (`copies`), the file done.
    Placed,
    /// Enough targets hold it as wanted already: nothing is sent.
    InPlace,
    Skipped {
        reason: Reason,
    },
    /// No target would take it (or not all the replicas wanted); `copies` are what would be
    /// made still.
    Unplaced {
        reason: Reason,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedFile {
    pub pnfsid: PnfsId,
    pub size: u64,
    pub copies: Vec<PlannedCopy>,
    /// Targets that hold it as wanted already (counted towards `-replicas`).
    pub in_place: Vec<PoolName>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// One of the job's targets in the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedTarget {
    pub pool: PoolName,
    /// Why no new copy would go there (offline, disabled for pool-to-pool, ...); `None`: usable.
    pub unusable: Option<String>,
    /// The files it would receive (new copies and updates) and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Of those, the replicas it holds already and would update.
    pub updates: u64,
}

/// Files and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    pub files: u64,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, size: u64) {
        self.files += 1;
        self.bytes = self.bytes.saturating_add(size);
    }
}

/// The plan of a dry run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The job's command, as `migration ls` would show it.
    pub command: String,
    pub source: PoolName,
    /// The seed of the target choice: `-seed=<this>` makes the job choose as planned.
    pub seed: u64,
    /// The state the job would reach once the plan is through (FINISHED, or SLEEPING,
    /// PAUSED, STOPPING... when files are left).
    pub state: String,
    pub selected: Count,
    /// Replicas the filter leaves out, by the first criterion each fails.
    pub left_out: BTreeMap<Criterion, u64>,
    pub targets: Vec<PlannedTarget>,
    pub placed: Count,
    pub in_place: Count,
    pub skipped: Count,
    pub unplaced: Count,
    /// Every selected file, in the order the job takes them.
    pub files: Vec<PlannedFile>,
}

/// What the dry driver saw, for [`assemble`].
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub command: String,
    pub source: Option<PoolName>,
    pub seed: u64,
    /// The state the job reached.
    pub end: Option<JobState>,
    /// The selected files, in queue order.
    pub files: Vec<(PnfsId, u64)>,
    pub left_out: BTreeMap<Criterion, u64>,
    /// The job's targets, in its order, with why each is not usable.
    pub targets: Vec<(PoolName, Option<String>)>,
    /// The copy requests the job sent, by file.
    pub copies: HashMap<PnfsId, Vec<PlannedCopy>>,
    /// The files done (their source mode would be applied), with the pools that hold them.
    pub done: HashMap<PnfsId, Vec<PoolName>>,
    /// The files whose last task failed.
    pub failed: HashMap<PnfsId, (bool, RemoteError)>,
    /// Files passed over because another job holds their lock.
    pub locked: BTreeSet<PnfsId>,
    /// Files whose replica was gone at their turn.
    pub gone: BTreeSet<PnfsId>,
}

/// The plan of what `facts` saw.
pub fn assemble(facts: Facts) -> Plan {
    let mut plan = Plan {
        command: facts.command,
        source: facts.source.unwrap_or_else(|| "unknown".parse().expect("a valid name")),
        seed: facts.seed,
        state: facts.end.map(|s| s.as_str().to_string()).unwrap_or_default(),
        selected: Count::default(),
        left_out: facts.left_out,
        targets: facts
            .targets
            .iter()
            .map(|(pool, unusable)| PlannedTarget {
                pool: pool.clone(),
                unusable: unusable.clone(),
                files: 0,
                bytes: 0,
                updates: 0,
            })
            .collect(),
        placed: Count::default(),
        in_place: Count::default(),
        skipped: Count::default(),
        unplaced: Count::default(),
        files: Vec::with_capacity(facts.files.len()),
    };
    let left = match facts.end {
        Some(JobState::Stopping | JobState::Finished) => Reason::Stopped,
        Some(JobState::Paused) => Reason::Paused,
        _ => Reason::NoTarget,
    };
    for (id, size) in facts.files {
        plan.selected.add(size);
        let copies = facts.copies.get(&id).cloned().unwrap_or_default();
        let copied = |p: &PoolName| copies.iter().any(|c| c.pool == *p);
        let (in_place, outcome) = if let Some(holders) = facts.done.get(&id) {
            let in_place: Vec<PoolName> = holders.iter().filter(|p| !copied(p)).cloned().collect();
            (in_place, if copies.is_empty() { Outcome::InPlace } else { Outcome::Placed })
        } else {
            let reason = if let Some((permanent, e)) = facts.failed.get(&id) {
                Reason::Failed { permanent: *permanent, code: e.code, message: e.message.clone() }
            } else if facts.locked.contains(&id) {
                Reason::Locked
            } else if facts.gone.contains(&id) {
                Reason::Gone
            } else {
                left.clone()
            };
            let outcome = if reason.skips() && copies.is_empty() {
                Outcome::Skipped { reason }
            } else {
                Outcome::Unplaced { reason }
            };
            (Vec::new(), outcome)
        };
        match &outcome {
            Outcome::Placed => plan.placed.add(size),
            Outcome::InPlace => plan.in_place.add(size),
            Outcome::Skipped { .. } => plan.skipped.add(size),
            Outcome::Unplaced { .. } => plan.unplaced.add(size),
        }
        for c in &copies {
            if let Some(t) = plan.targets.iter_mut().find(|t| t.pool == c.pool) {
                t.files += 1;
                t.bytes = t.bytes.saturating_add(size);
                t.updates += u64::from(c.update);
            }
        }
        plan.files.push(PlannedFile { pnfsid: id, size, copies, in_place, outcome });
    }
    plan
}

impl Plan {
    /// The text of a dry run.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Dry run    : {} (nothing was transferred or changed)", self.command);
        let _ = writeln!(s, "Seed       : {} (-seed={} makes the job choose these targets)", self.seed, self.seed);
        let _ = writeln!(s, "Selected   : {} files; {} bytes", self.selected.files, self.selected.bytes);
        if !self.left_out.is_empty() {
            let by: Vec<String> = self.left_out.iter().map(|(c, n)| format!("{} {n}", c.as_str())).collect();
            let total: u64 = self.left_out.values().sum();
            let _ = writeln!(s, "Left out   : {total} replicas by the filter ({})", by.join(", "));
        }
        let _ = writeln!(s, "Placed     : {} files; {} bytes", self.placed.files, self.placed.bytes);
        let _ = writeln!(s, "In place   : {} files; {} bytes", self.in_place.files, self.in_place.bytes);
        let _ = writeln!(s, "Skipped    : {} files; {} bytes", self.skipped.files, self.skipped.bytes);
        let _ = writeln!(s, "Unplaced   : {} files; {} bytes", self.unplaced.files, self.unplaced.bytes);
        let _ = writeln!(s, "Ends       : {}", self.state);
        s.push_str("Targets    :\n");
        for t in &self.targets {
            let _ = write!(s, "  {}: {} files; {} bytes", t.pool, t.files, t.bytes);
            if t.updates > 0 {
                let _ = write!(s, " ({} updated in place)", t.updates);
            }
            if let Some(why) = &t.unusable {
                let _ = write!(s, "; not usable: {why}");
            }
            s.push('\n');
        }
        if !self.files.is_empty() {
            s.push_str("Files      :\n");
        }
        for f in &self.files {
            let _ = write!(s, "  {} {} ", f.pnfsid, f.size);
            let copies: Vec<String> = f
                .copies
                .iter()
                .map(|c| if c.update { format!("{} (update)", c.pool) } else { c.pool.to_string() })
                .collect();
            let held: Vec<&str> = f.in_place.iter().map(PoolName::as_str).collect();
            match &f.outcome {
                Outcome::Placed => {
                    let _ = write!(s, "-> {}", copies.join(","));
                    if !held.is_empty() {
                        let _ = write!(s, "; in place on {}", held.join(","));
                    }
                }
                Outcome::InPlace => {
                    let _ = write!(s, "in place on {}", held.join(","));
                }
                Outcome::Skipped { reason } => {
                    let _ = write!(s, "skipped: {}", reason.text());
                }
                Outcome::Unplaced { reason } => {
                    let _ = write!(s, "not placed: {}", reason.text());
                    if !copies.is_empty() {
                        let _ = write!(s, " (copies still made: {})", copies.join(","));
                    }
                }
            }
            s.push('\n');
        }
        s
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidepool_p2p::ErrorCode;

    fn id(n: u8) -> PnfsId {
        PnfsId::from_random([n; 16])
    }

    fn p(n: &str) -> PoolName {
        n.parse().unwrap()
    }

    fn new(pool: &str) -> PlannedCopy {
        PlannedCopy { pool: p(pool), update: false }
    }

    /// One row per way a file can end in a plan.
    #[test]
    fn every_file_gets_one_outcome_and_the_counts_add_up() {
        let mut f = Facts {
            command: "migration move -- pool2 pool3".into(),
            source: Some(p("pool1")),
            seed: 7,
            end: Some(JobState::Sleeping),
            files: (1..=7).map(|n| (id(n), u64::from(n) * 10)).collect(),
            targets: vec![(p("pool2"), None), (p("pool3"), Some("not accepting copies".into()))],
            ..Facts::default()
        };
        // 1: a new copy; 2: updated on its holder and in place on another; 3: in place.
        f.copies.insert(id(1), vec![new("pool2")]);
        f.done.insert(id(1), vec![p("pool2")]);
        f.copies.insert(id(2), vec![PlannedCopy { pool: p("pool2"), update: true }]);
        f.done.insert(id(2), vec![p("pool2"), p("pool3")]);
        f.done.insert(id(3), vec![p("pool3")]);
        // 4: locked; 5: no target (left queued while the job sleeps).
        f.locked.insert(id(4));
        // 6: failed for good (meta-only without replicas); 7: failed, tried again later.
        let skip = RemoteError::new(ErrorCode::FileNotFound, "File skipped because it has no existing replicas");
        f.failed.insert(id(6), (true, skip));
        let full = RemoteError::new(ErrorCode::Offline, "No targets available: All target pools are full.");
        f.failed.insert(id(7), (false, full));
        let plan = assemble(f);
        let outcomes: Vec<&Outcome> = plan.files.iter().map(|f| &f.outcome).collect();
        assert_eq!(outcomes[0], &Outcome::Placed);
        assert_eq!((outcomes[1], &plan.files[1].in_place), (&Outcome::Placed, &vec![p("pool3")]));
        assert_eq!((outcomes[2], &plan.files[2].in_place), (&Outcome::InPlace, &vec![p("pool3")]));
        assert_eq!(outcomes[3], &Outcome::Skipped { reason: Reason::Locked });
        assert_eq!(outcomes[4], &Outcome::Unplaced { reason: Reason::NoTarget });
        assert!(matches!(outcomes[5], Outcome::Skipped { reason: Reason::Failed { permanent: true, .. } }));
        assert!(
            matches!(outcomes[6], Outcome::Unplaced { reason: Reason::Failed { permanent: false, code, .. } } if *code == ErrorCode::Offline.as_u32())
        );
        assert_eq!(plan.selected, Count { files: 7, bytes: 280 });
        assert_eq!(plan.placed, Count { files: 2, bytes: 30 });
        assert_eq!(plan.in_place, Count { files: 1, bytes: 30 });
        assert_eq!(plan.skipped, Count { files: 2, bytes: 100 });
        assert_eq!(plan.unplaced, Count { files: 2, bytes: 120 });
        let t = &plan.targets;
        assert_eq!((t[0].files, t[0].bytes, t[0].updates), (2, 30, 1));
        assert_eq!((t[1].files, t[1].unusable.as_deref()), (0, Some("not accepting copies")));
        let text = plan.render();
        for want in [
            "Seed       : 7 (-seed=7",
            "pool3: 0 files; 0 bytes; not usable: not accepting copies",
            &format!("{} 10 -> pool2\n", id(1)),
            &format!("{} 20 -> pool2 (update); in place on pool3\n", id(2)),
            &format!("{} 40 skipped: another job of this pool works on the file\n", id(4)),
            &format!("{} 70 not placed: No targets available: All target pools are full.\n", id(7)),
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
        let json: serde_json::Value = serde_json::from_str(&plan.to_json()).unwrap();
        assert_eq!(json["files"][3]["outcome"], "skipped");
        assert_eq!(json["files"][3]["reason"]["kind"], "locked");
        assert_eq!(json["files"][0]["copies"][0]["pool"], "pool2");
        assert_eq!(json["targets"][1]["unusable"], "not accepting copies");
    }

    #[test]
    fn files_left_when_the_job_stops_or_pauses_are_skipped_with_that_reason() {
        for (end, want) in [(JobState::Finished, Reason::Stopped), (JobState::Paused, Reason::Paused)] {
            let f = Facts { end: Some(end), files: vec![(id(1), 5)], ..Facts::default() };
            assert_eq!(assemble(f).files[0].outcome, Outcome::Skipped { reason: want });
        }
        // Short of replicas with `-target-deficit-mode=limit`: what is copied is listed.
        let mut f = Facts { end: Some(JobState::Finished), files: vec![(id(1), 5)], ..Facts::default() };
        f.copies.insert(id(1), vec![new("pool2")]);
        let short = RemoteError::new(ErrorCode::NoTargets, "File replicas truncated at 1");
        f.failed.insert(id(1), (true, short));
        let plan = assemble(f);
        assert!(matches!(plan.files[0].outcome, Outcome::Unplaced { .. }));
        assert_eq!(plan.unplaced.files, 1);
    }
}
