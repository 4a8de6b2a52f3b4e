//! What became of every file a job selected, for the completion report (`migration report`,
//! docs/admin-commands.md): one compact record per file, kept for as long as the job is
//! listed, and exact counts per fate so that the report's counts always add up to the job's
//! file count.
//!
//! Cost (ARCHITECTURE.md, "Memory per file"): a record is 8 bytes (a one-byte fate, the
//! target replica's state, a checksum flag and the index of an interned target set), so an
//! entry of the table is 28 bytes with its 19-byte pnfsid, plus one control byte; at the
//! table's load between 7/16 and 7/8 that is 33 to 67 bytes a file (a million files: 33 to
//! 67 MB). The sets of targets a file was copied to are interned: a job of one or two
//! replicas over a few dozen pools keeps a few hundred sets, whatever its number of files.

use std::collections::HashMap;

use tidepool_p2p::model::ReplicaState;
use tidepool_p2p::{PnfsId, PoolName};

/// Where a file of the job stands. The first four are on the way; the others are final for a
/// job that ended (a permanent job may queue a file again, which moves it back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Fate {
    /// Queued, not started yet.
    Queued,
    /// A task works on it (or its source mode is being applied).
    Running,
    /// It failed and waits out its backoff.
    Waiting,
    /// Copied (or brought up to date) on its targets, and the source mode applied.
    Done,
    /// The targets already held it: no new replica was made (at most an update in place).
    InPlace,
    /// It left the source (deleted) while queued or running, or was gone when its turn came.
    GoneFromSource,
    /// It changed while queued and no longer matches the job's selection.
    NoLongerSelected,
    /// It failed for good (permanent error, or too few replicas possible): not retried.
    GivenUp,
    /// Its task was cancelled (the job was cancelled with `-force`).
    Cancelled,
    /// The job ended (cancelled or stopped) before it was tried, or tried again.
    NotTried,
}

impl Fate {
    pub const ALL: [Fate; 10] = [
        Fate::Queued,
        Fate::Running,
        Fate::Waiting,
        Fate::Done,
        Fate::InPlace,
        Fate::GoneFromSource,
        Fate::NoLongerSelected,
        Fate::GivenUp,
        Fate::Cancelled,
        Fate::NotTried,
    ];

    /// The name in the report's text and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Fate::Queued => "queued",
            Fate::Running => "running",
            Fate::Waiting => "waiting",
            Fate::Done => "done",
            Fate::InPlace => "already_in_place",
            Fate::GoneFromSource => "gone_from_source",
            Fate::NoLongerSelected => "no_longer_selected",
            Fate::GivenUp => "given_up",
            Fate::Cancelled => "cancelled",
            Fate::NotTried => "not_tried",
        }
    }

    /// Still on its way (the job has not finished with it).
    pub fn pending(self) -> bool {
        matches!(self, Fate::Queued | Fate::Running | Fate::Waiting)
    }

    /// Skipped rather than failed: the file left the job's selection.
    pub fn skipped(self) -> bool {
        matches!(self, Fate::GoneFromSource | Fate::NoLongerSelected)
    }
}

/// Where a done file's copies are: filled in when its task ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub targets: Vec<PoolName>,
    /// The state the target replicas were given.
    pub state: ReplicaState,
    /// The targets compared the data with the source's checksum (a new copy of a file with a
    /// checksum, or `-verify`).
    pub checksum_matched: bool,
    /// No new replica was made: the targets held it (as wanted, or updated in place).
    pub in_place: bool,
}

/// One file's record: 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub fate: Fate,
    /// The target replicas' state (done files; else meaningless).
    pub state: ReplicaState,
    pub checksum_matched: bool,
    /// The interned set of targets ([`NO_TARGETS`]: none known).
    targets: u32,
}

const NO_TARGETS: u32 = u32::MAX;

/// Every file of a job and its fate.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    files: HashMap<PnfsId, Record>,
    counts: [u64; Fate::ALL.len()],
    sets: Vec<Box<[PoolName]>>,
    interned: HashMap<Box<[PoolName]>, u32>,
    /// Running files that left the job (deleted, no longer selected) and whose task is being
    /// cancelled: the fate they get when it ends ([`crate::queue::Queue::cancelled`]).
    pub(crate) leaving: HashMap<PnfsId, Fate>,
}

impl Ledger {
    /// Sets a file's fate (a new file is counted from now on); keeps what is known of its
    /// targets.
    pub fn set(&mut self, id: PnfsId, fate: Fate) {
        match self.files.get_mut(&id) {
            Some(record) => {
                let old = std::mem::replace(&mut record.fate, fate);
                self.counts[old as usize] -= 1;
            }
            None => {
                let record =
                    Record { fate, state: ReplicaState::Precious, checksum_matched: false, targets: NO_TARGETS };
                self.files.insert(id, record);
            }
        }
        self.counts[fate as usize] += 1;
    }

    /// Sets a file's fate only if it is now `from`.
    pub fn set_if(&mut self, id: &PnfsId, from: Fate, fate: Fate) {
        if self.fate(id) == Some(from) {
            self.set(*id, fate);
        }
    }

    /// A file done: where and how.
    pub fn placed(&mut self, id: PnfsId, placed: Placed) {
        let fate = if placed.in_place { Fate::InPlace } else { Fate::Done };
        self.set(id, fate);
        let targets = self.intern(placed.targets);
        if let Some(r) = self.files.get_mut(&id) {
            r.state = placed.state;
            r.checksum_matched = placed.checksum_matched;
            r.targets = targets;
        }
    }

    fn intern(&mut self, mut targets: Vec<PoolName>) -> u32 {
        if targets.is_empty() {
            return NO_TARGETS;
        }
        targets.sort();
        let key: Box<[PoolName]> = targets.into_boxed_slice();
        if let Some(i) = self.interned.get(&key) {
            return *i;
        }
        let i = self.sets.len() as u32;
        self.sets.push(key.clone());
        self.interned.insert(key, i);
        i
    }

    pub fn fate(&self, id: &PnfsId) -> Option<Fate> {
        self.files.get(id).map(|r| r.fate)
    }

    pub fn record(&self, id: &PnfsId) -> Option<&Record> {
        self.files.get(id)
    }

    /// The targets a done file's copies are on.
    pub fn targets(&self, record: &Record) -> &[PoolName] {
        self.sets.get(record.targets as usize).map(|s| &s[..]).unwrap_or(&[])
    }

    /// Files with this fate (exact).
    pub fn count(&self, fate: Fate) -> u64 {
        self.counts[fate as usize]
    }

    /// Every file the job selected.
    pub fn len(&self) -> u64 {
        self.files.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PnfsId, &Record)> {
        self.files.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PnfsId {
        PnfsId::from_random([n; 16])
    }

    #[test]
    fn a_record_is_eight_bytes() {
        assert_eq!(std::mem::size_of::<Record>(), 8);
    }

    /// Counts follow the files from fate to fate and always add up to the files.
    #[test]
    fn counts_follow_the_files() {
        let mut l = Ledger::default();
        let p2: PoolName = "pool2".parse().unwrap();
        type Step = fn(&mut Ledger, PoolName);
        type Want = [(Fate, u64); 3];
        let rows: [(&str, Step, Want); 6] = [
            (
                "add 1, 2",
                |l, _| (1..=2).for_each(|n| l.set(id(n), Fate::Queued)),
                [(Fate::Queued, 2), (Fate::Running, 0), (Fate::Done, 0)],
            ),
            ("start 1", |l, _| l.set(id(1), Fate::Running), [(Fate::Queued, 1), (Fate::Running, 1), (Fate::Done, 0)]),
            (
                "1 done on pool2",
                |l, p| {
                    l.placed(
                        id(1),
                        Placed {
                            targets: vec![p],
                            state: ReplicaState::Cached,
                            checksum_matched: true,
                            in_place: false,
                        },
                    )
                },
                [(Fate::Queued, 1), (Fate::Running, 0), (Fate::Done, 1)],
            ),
            (
                "set_if from the wrong fate changes nothing",
                |l, _| l.set_if(&id(2), Fate::Running, Fate::Cancelled),
                [(Fate::Queued, 1), (Fate::Running, 0), (Fate::Done, 1)],
            ),
            (
                "2 again queued",
                |l, _| l.set(id(2), Fate::Queued),
                [(Fate::Queued, 1), (Fate::Running, 0), (Fate::Done, 1)],
            ),
            (
                "1 queued again (a permanent job)",
                |l, _| l.set(id(1), Fate::Queued),
                [(Fate::Queued, 2), (Fate::Running, 0), (Fate::Done, 0)],
            ),
        ];
        for (what, step, want) in rows {
            step(&mut l, p2.clone());
            for (fate, n) in want {
                assert_eq!(l.count(fate), n, "{fate:?} after {what}");
            }
            assert_eq!(Fate::ALL.iter().map(|f| l.count(*f)).sum::<u64>(), l.len(), "after {what}");
        }
        let r = *l.record(&id(1)).unwrap();
        assert_eq!(l.targets(&r), [p2], "the targets stay known");
    }

    #[test]
    fn target_sets_are_interned() {
        let mut l = Ledger::default();
        let (a, b): (PoolName, PoolName) = ("a".parse().unwrap(), "b".parse().unwrap());
        for n in 0..100 {
            let targets = if n % 2 == 0 { vec![a.clone(), b.clone()] } else { vec![b.clone(), a.clone()] };
            l.placed(id(n), Placed { targets, state: ReplicaState::Precious, checksum_matched: true, in_place: false });
        }
        assert_eq!(l.sets.len(), 1);
        assert_eq!(l.count(Fate::Done), 100);
    }
}
