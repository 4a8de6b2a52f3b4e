//! The replica repository: metadata records and data files of one pool.
//!
//! [`Repository`] holds all the logic (state rules, sticky modes, space accounting, the sweeper,
//! the change feed, restart recovery) over a [`ReplicaStore`], which only stores bytes. The
//! same logic therefore runs over sled in the daemon and over memory in tests.
//!
//! Locking: one mutex guards the index; short store operations (record get/put) happen under it
//! so the index and the store never disagree; fsyncs and data-file deletions happen outside it.
//! All methods block (async callers run them on the blocking pool) except
//! [`Repository::store_whole`], which only checks, reserves and queues, and is awaited directly.
//! Per-operation flushes are shared between callers (`flush_shared`).

mod commit;
mod index;
mod mem_store;
pub mod record;
mod reserve;
mod sled_store;
pub mod store;

use std::ops::ControlFlow;
use std::sync::Arc;

use parking_lot::Mutex;
use tidepool_p2p::PnfsId;
use tidepool_p2p::model::{
    Checksum, ChecksumWriter, EpochMillis, FileAttributes, ReplicaState, SpaceInfo, StickyMode, StickyRecord,
    apply_sticky,
};
use tidepool_p2p::{ErrorCode, RemoteError};
use tokio::sync::broadcast;

pub use commit::BatchObserver;
use index::{Entry, Index, sticky_until};
pub use mem_store::{CutMode, Fault, MemStore};
pub use sled_store::SledStore;
pub use store::{DataRead, ReplicaStore, StoreError};

/// One replica as stored: its attributes, state and sticky records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    pub attrs: FileAttributes,
    pub state: ReplicaState,
    pub sticky: Vec<StickyRecord>,
}

impl Replica {
    pub fn pnfsid(&self) -> PnfsId {
        self.attrs.pnfsid
    }

    /// Sticky in `rep ls`'s sense: a record valid at `now`. (dCache counts any record but
    /// purges expired ones periodically, so what operators see is the same.)
    pub fn is_sticky(&self, now: EpochMillis) -> bool {
        self.sticky.iter().any(|s| s.is_valid(now))
    }
}

/// A change the repository announces to subscribers, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub pnfsid: PnfsId,
    pub kind: ChangeKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new entry starts as `New -> FromClient|FromPool`; a commit is `-> Cached|Precious`;
    /// removal, eviction and an aborted upload end in `-> Removed`.
    State {
        from: ReplicaState,
        to: ReplicaState,
    },
    /// The sticky records after the change.
    Sticky(Vec<StickyRecord>),
    AccessTime(EpochMillis),
    /// A checksum recorded for a replica that had none.
    Checksum(Checksum),
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("file {0} is not in this pool")]
    NotFound(PnfsId),
    #[error("file {0} is already in this pool")]
    Exists(PnfsId),
    #[error("illegal state transition for {id}: {from} -> {to}")]
    IllegalTransition { id: PnfsId, from: ReplicaState, to: ReplicaState },
    #[error("file {id} is {state} and cannot be {action} now")]
    Busy { id: PnfsId, state: ReplicaState, action: &'static str },
    #[error("file {id} is {state}, not CACHED or PRECIOUS: it cannot be read")]
    NotCommitted { id: PnfsId, state: ReplicaState },
    /// Refused because the replica is protected: precious, sticky, or (for a removal that
    /// checks) changed.
    #[error("file {id} {why}")]
    Protected { id: PnfsId, why: Protection },
    /// A BROKEN replica without its data file cannot be made readable by a state change.
    #[error("file {0} has no data file; a state change cannot repair it (remove it with rep rm -force)")]
    NoDataFile(PnfsId),
    /// A replica's recorded checksum is never replaced by another.
    #[error("file {id} already has checksum {known}; {given} does not replace it")]
    ChecksumKnown { id: PnfsId, known: Checksum, given: Checksum },
    #[error("pool full: {needed} bytes needed, {free} free and {removable} removable of {total}")]
    PoolFull { needed: u64, free: u64, removable: u64, total: u64 },
    #[error("file {id}: received {got} bytes of {expected}")]
    Short { id: PnfsId, got: u64, expected: u64 },
    #[error("file {id}: more data than the announced {expected} bytes")]
    TooLong { id: PnfsId, expected: u64 },
    #[error("file {id}: checksum mismatch: received data has {actual}, sender has {expected}")]
    ChecksumMismatch { id: PnfsId, expected: Checksum, actual: Checksum },
    #[error("file {id}: its record is unreadable: {reason}")]
    Corrupt { id: PnfsId, reason: String },
    #[error("disk full: {0}")]
    DiskFull(StoreError),
    #[error("storage error: {0}")]
    Store(StoreError),
}

impl From<StoreError> for RepoError {
    fn from(e: StoreError) -> Self {
        if e.is_disk_full() { RepoError::DiskFull(e) } else { RepoError::Store(e) }
    }
}

/// How a repository error crosses the wire: its stable code and its message.
impl From<RepoError> for RemoteError {
    fn from(e: RepoError) -> Self {
        RemoteError::new(e.code(), e.to_string())
    }
}

impl RepoError {
    /// The operating system's error number, if a storage call failed with one.
    pub fn os_error(&self) -> Option<i32> {
        match self {
            RepoError::Store(e) | RepoError::DiskFull(e) => e.source.raw_os_error(),
            _ => None,
        }
    }

    /// The stable code an operator sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            RepoError::NotFound(_) => ErrorCode::FileNotFound,
            RepoError::Exists(_) => ErrorCode::FileExists,
            RepoError::IllegalTransition { .. } => ErrorCode::IllegalTransition,
            RepoError::Busy { .. } => ErrorCode::FileBusy,
            RepoError::NotCommitted { .. } => ErrorCode::NotCommitted,
            RepoError::Protected { .. } => ErrorCode::FileProtected,
            RepoError::NoDataFile(_) | RepoError::ChecksumKnown { .. } => ErrorCode::InvalidArgument,
            RepoError::PoolFull { .. } | RepoError::DiskFull(_) => ErrorCode::PoolFull,
            RepoError::Short { .. } | RepoError::TooLong { .. } => ErrorCode::ShortTransfer,
            RepoError::ChecksumMismatch { .. } => ErrorCode::ChecksumMismatch,
            RepoError::Corrupt { .. } | RepoError::Store(_) => ErrorCode::Io,
        }
    }
}

pub type RepoResult<T> = Result<T, RepoError>;

/// Why a replica is protected from a removal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Protection {
    #[error("is precious; use -force to remove it anyway")]
    Precious,
    #[error("is sticky (owner {owner}); use -force to remove it anyway")]
    Sticky { owner: String },
    /// The caller's check found it changed (or pinned) since it decided to remove it.
    #[error("changed or is pinned")]
    Changed,
}

/// What restart recovery found. Names are kept for the first [`Recovery::KEEP`] of each kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub loaded: usize,
    /// Partial data left by an interrupted upload or transfer, removed.
    pub removed_partial: Vec<String>,
    pub removed_partial_count: usize,
    /// Records whose data file is missing; marked BROKEN and never served.
    pub missing_data: Vec<PnfsId>,
    pub missing_data_count: usize,
    /// Replicas of commits that failed (never acknowledged) whose record or mark was left:
    /// record and mark deleted.
    pub failed_commits: Vec<PnfsId>,
    pub failed_commit_count: usize,
    /// Data files without a record that no record can name: deleted.
    pub deleted_orphans: Vec<String>,
    pub deleted_orphan_count: usize,
    /// Data files without a record that may not be the pool's garbage (a name that is not a
    /// pnfsid, or a pool last run by a version whose flush was no real sync): moved into the
    /// quarantine area.
    pub quarantined: Vec<String>,
    pub quarantined_count: usize,
    /// Data files without a record that could be neither deleted nor quarantined; left in
    /// place and never served.
    pub orphan_data: Vec<String>,
    pub orphan_data_count: usize,
    /// Records that cannot be decoded; left in place and never served.
    /// `<key> (<reason>)` for each.
    pub corrupt: Vec<String>,
    pub corrupt_count: usize,
}

impl Recovery {
    pub const KEEP: usize = 100;

    fn note<T>(list: &mut Vec<T>, count: &mut usize, item: T) {
        *count += 1;
        if list.len() < Self::KEEP {
            list.push(item);
        }
    }

    /// True when recovery found nothing to report.
    pub fn is_clean(&self) -> bool {
        self.removed_partial_count
            + self.missing_data_count
            + self.failed_commit_count
            + self.deleted_orphan_count
            + self.quarantined_count
            + self.orphan_data_count
            + self.corrupt_count
            == 0
    }

    /// Lines for `info`.
    pub fn report(&self) -> Vec<String> {
        fn more(shown: usize, count: usize) -> String {
            if count > shown { format!(" (and {} more)", count - shown) } else { String::new() }
        }
        fn ids(list: &[PnfsId]) -> String {
            list.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" ")
        }
        let mut out = Vec::new();
        if self.removed_partial_count > 0 {
            out.push(format!(
                "removed {} partial replica(s) left by interrupted transfers: {}{}",
                self.removed_partial_count,
                self.removed_partial.join(" "),
                more(self.removed_partial.len(), self.removed_partial_count)
            ));
        }
        if self.missing_data_count > 0 {
            out.push(format!(
                "{} replica(s) have a record but no data file and were marked BROKEN: {}{}",
                self.missing_data_count,
                ids(&self.missing_data),
                more(self.missing_data.len(), self.missing_data_count)
            ));
        }
        if self.failed_commit_count > 0 {
            out.push(format!(
                "removed what {} failed commit(s) left (never acknowledged): {}{}",
                self.failed_commit_count,
                ids(&self.failed_commits),
                more(self.failed_commits.len(), self.failed_commit_count)
            ));
        }
        if self.deleted_orphan_count > 0 {
            out.push(format!(
                "deleted {} data file(s) that no record names (never acknowledged, or removed): {}{}",
                self.deleted_orphan_count,
                self.deleted_orphans.join(" "),
                more(self.deleted_orphans.len(), self.deleted_orphan_count)
            ));
        }
        if self.quarantined_count > 0 {
            out.push(format!(
                "moved {} data file(s) without a record into quarantine/ (not served; check, then delete): {}{}",
                self.quarantined_count,
                self.quarantined.join(" "),
                more(self.quarantined.len(), self.quarantined_count)
            ));
        }
        if self.orphan_data_count > 0 {
            out.push(format!(
                "{} data file(s) have no record and are not served (left in place): {}{}",
                self.orphan_data_count,
                self.orphan_data.join(" "),
                more(self.orphan_data.len(), self.orphan_data_count)
            ));
        }
        if self.corrupt_count > 0 {
            let items = &self.corrupt;
            out.push(format!(
                "{} record(s) are unreadable and not served: {}{}",
                self.corrupt_count,
                items.join(", "),
                more(items.len(), self.corrupt_count)
            ));
        }
        out
    }
}

/// What restart recovery does with a data file that no record names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OrphanFate {
    Delete,
    Quarantine,
}

/// Decides an orphan's fate (docs/durability.md): a file named by a pnfsid is the pool's own
/// and was never acknowledged, or was removed, if every record key could be read (an unreadable
/// key might name it) and the metadata flush was a real sync when it was made (`synced_flush`:
/// before that, a power cut could lose an acknowledged record). Anything else is quarantined,
/// never deleted.
fn orphan_fate(named_by_pnfsid: bool, unreadable_keys: bool, synced_flush: bool) -> OrphanFate {
    if named_by_pnfsid && !unreadable_keys && synced_flush { OrphanFate::Delete } else { OrphanFate::Quarantine }
}

/// The setting that says the pool's metadata flushes are real syncs: written by the first start
/// of a version that syncs (docs/durability.md). A pool without it may hold orphans whose
/// acknowledged records a power cut lost, which recovery quarantines instead of deleting.
pub const SYNCED_FLUSH_KEY: &str = "metadata-flush-synced";

/// The state of [`Repository::flush_shared`]: tickets handed out, the highest ticket a
/// successful flush covered, and whether a flush is under way.
#[derive(Default)]
struct GroupFlush {
    state: Mutex<FlushState>,
    wake: parking_lot::Condvar,
}

#[derive(Default)]
struct FlushState {
    requested: u64,
    done: u64,
    flushing: bool,
}

/// Capacity of the change feed; a subscriber that falls further behind gets `Lagged` and must
/// rescan.
const CHANGE_FEED: usize = 4096;

pub struct Repository {
    store: Arc<dyn ReplicaStore>,
    committer: commit::Committer,
    /// Records that failed commits could not delete yet: hidden from [`Repository::scan`].
    ghosts: commit::Ghosts,
    /// Told of every group-commit batch (the daemon's metrics), once set.
    batches: commit::Observer,
    flusher: GroupFlush,
    index: Mutex<Index>,
    capacity: u64,
    changes: broadcast::Sender<Change>,
    /// The holds found at open, until the migration module takes them
    /// ([`Repository::take_saved_holds`]).
    saved_holds: Mutex<Vec<SavedHold>>,
}

/// A hold kept across a restart: the replica, until when, and for whom (the opaque `owner`
/// given to [`Repository::hold`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedHold {
    pub id: PnfsId,
    pub until: EpochMillis,
    pub owner: Vec<u8>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

impl Repository {
    /// Opens the repository: loads every record into the index and recovers from a crash
    /// (partial data removed; what failed commits left removed; records without data marked
    /// BROKEN; orphan data files deleted or quarantined; unreadable records reported). See
    /// docs/durability.md.
    pub fn open(
        store: Arc<dyn ReplicaStore>,
        capacity: u64,
        now: EpochMillis,
    ) -> RepoResult<(Arc<Repository>, Recovery)> {
        let mut recovery = Recovery::default();
        for name in store.list_incoming()? {
            tracing::warn!(file = %name, "removing partial data left by an interrupted transfer");
            store.remove_incoming_name(&name)?;
            Recovery::note(&mut recovery.removed_partial, &mut recovery.removed_partial_count, name);
        }
        // The data files, as a sorted list with a "has a record" mark each: a million of them
        // take 19 MB here instead of a hash set's 40 or a list of names' 70. Marks of failed
        // commits and files not named by a pnfsid are listed apart (there are few).
        let mut data_files: Vec<PnfsId> = Vec::new();
        let mut failed_marks: Vec<PnfsId> = Vec::new();
        let mut foreign: Vec<String> = Vec::new();
        store.scan_data(&mut |name| match name.parse::<PnfsId>() {
            Ok(id) => data_files.push(id),
            Err(_) => match store::parse_failed_mark(name) {
                Some(id) => failed_marks.push(id),
                None => foreign.push(name.to_string()),
            },
        })?;
        data_files.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        failed_marks.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut claimed = vec![false; data_files.len()];
        let mut index = Index::with_capacity(data_files.len());
        let mut dirty = false;
        let mut unreadable_keys = false;
        // Data files to delete once the deletion of their records is durable.
        let mut remove_after_flush: Vec<PnfsId> = Vec::new();
        let mut failure = None;
        store.scan_records(&mut |key, bytes| {
            let Ok(id) = PnfsId::from_bytes(key) else {
                // A key that is not a pnfsid: report it, never serve it, keep loading.
                tracing::error!(key = ?key, "unreadable replica key; not served");
                Recovery::note(&mut recovery.corrupt, &mut recovery.corrupt_count, format!("key {key:02X?}"));
                unreadable_keys = true;
                return ControlFlow::Continue(());
            };
            let has_data = match data_files.binary_search_by(|d| d.as_bytes().cmp(key)) {
                Ok(i) => {
                    claimed[i] = true;
                    true
                }
                Err(_) => false,
            };
            let entry = match record::decode_entry(bytes) {
                Ok(e) => e,
                Err(reason) => {
                    tracing::error!(pnfsid = %id, %reason, "unreadable replica record; not served");
                    Recovery::note(&mut recovery.corrupt, &mut recovery.corrupt_count, format!("{id} ({reason})"));
                    return ControlFlow::Continue(());
                }
            };
            let failed_mark = failed_marks.binary_search_by(|d| d.as_bytes().cmp(key)).is_ok();
            let step = || -> RepoResult<Option<Entry>> {
                if entry.state.is_receiving() || matches!(entry.state, ReplicaState::Removed | ReplicaState::Destroyed)
                {
                    tracing::warn!(pnfsid = %id, state = %entry.state, "removing incomplete replica");
                    store.delete_record(&id)?;
                    return Ok(None);
                }
                if !has_data && entry.state != ReplicaState::Broken {
                    tracing::error!(pnfsid = %id, "replica record without data file; marked BROKEN");
                    let mut replica = record::decode(id, bytes).map_err(|reason| RepoError::Corrupt { id, reason })?;
                    replica.state = ReplicaState::Broken;
                    store.put_record(&id, &record::encode(&replica))?;
                    return Ok(Some(Entry { state: ReplicaState::Broken, ..entry_of_record(&entry, now) }));
                }
                Ok(Some(entry_of_record(&entry, now)))
            };
            if !has_data && failed_mark {
                // The record of a commit that failed: it was never acknowledged.
                tracing::warn!(pnfsid = %id, "removing the record of a commit that failed");
                if let Err(e) = store.delete_record(&id) {
                    failure = Some(e.into());
                    return ControlFlow::Break(());
                }
                dirty = true;
                return ControlFlow::Continue(());
            }
            match step() {
                Ok(None) => {
                    Recovery::note(&mut recovery.removed_partial, &mut recovery.removed_partial_count, id.to_string());
                    remove_after_flush.push(id);
                    dirty = true;
                }
                Ok(Some(e)) => {
                    if e.state == ReplicaState::Broken && entry.state != ReplicaState::Broken {
                        Recovery::note(&mut recovery.missing_data, &mut recovery.missing_data_count, id);
                        dirty = true;
                    }
                    index.add(id, e, now);
                }
                Err(e) => {
                    failure = Some(e);
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        // Holds come back with their replicas; those that ran out, or whose replica is gone,
        // are deleted.
        let mut saved_holds = Vec::new();
        for (id, value) in store.scan_holds()? {
            match record::decode_hold(&value) {
                Some((until, owner)) if until > now && index.get(&id).is_some() => {
                    index.hold(id, until, now);
                    saved_holds.push(SavedHold { id, until, owner });
                }
                _ => match store.delete_hold(&id) {
                    Ok(()) => dirty = true,
                    // Housekeeping only: the hold is not loaded, so it protects nothing.
                    Err(e) => tracing::warn!(pnfsid = %id, error = %e, "could not delete a hold that ended"),
                },
            }
        }
        // Deletions of records first, durably; only then the files they named.
        if dirty {
            store.flush()?;
        }
        for id in &remove_after_flush {
            store.remove_data(id)?;
        }
        for id in failed_marks {
            store.remove_failed_mark(&id)?;
            Recovery::note(&mut recovery.failed_commits, &mut recovery.failed_commit_count, id);
        }
        let synced_flush = store.get_meta(SYNCED_FLUSH_KEY)?.is_some();
        let orphans = data_files
            .iter()
            .zip(&claimed)
            .filter(|(_, c)| !**c)
            .map(|(id, _)| (id.to_string(), true))
            .chain(foreign.into_iter().map(|name| (name, false)));
        for (name, by_pnfsid) in orphans {
            let fate = orphan_fate(by_pnfsid, unreadable_keys, synced_flush);
            let done = match fate {
                OrphanFate::Delete => store.remove_data_name(&name),
                OrphanFate::Quarantine => store.quarantine_data(&name),
            };
            match (done, fate) {
                (Ok(()), OrphanFate::Delete) => {
                    tracing::warn!(file = %name, "data file without a record deleted (never acknowledged, or removed)");
                    Recovery::note(&mut recovery.deleted_orphans, &mut recovery.deleted_orphan_count, name);
                }
                (Ok(()), OrphanFate::Quarantine) => {
                    tracing::warn!(file = %name, "data file without a record moved into quarantine");
                    Recovery::note(&mut recovery.quarantined, &mut recovery.quarantined_count, name);
                }
                (Err(e), _) => {
                    tracing::error!(file = %name, error = %e, "data file without a record; not served, left in place");
                    Recovery::note(&mut recovery.orphan_data, &mut recovery.orphan_data_count, name);
                }
            }
        }
        drop((data_files, claimed));
        if !synced_flush {
            // Best effort: without it, the next start quarantines orphans instead of deleting them.
            let marked = store.put_meta(SYNCED_FLUSH_KEY, b"1").and_then(|()| store.flush());
            if let Err(e) = marked {
                tracing::warn!(error = %e, "could not note that metadata flushes are synced");
            }
        }
        recovery.loaded = index.len();
        let (changes, _) = broadcast::channel(CHANGE_FEED);
        let ghosts = commit::Ghosts::default();
        let batches = commit::Observer::default();
        let committer = commit::Committer::spawn(store.clone(), ghosts.clone(), batches.clone())?;
        let repo = Repository {
            store,
            committer,
            ghosts,
            batches,
            flusher: GroupFlush::default(),
            index: Mutex::new(index),
            capacity,
            changes,
            saved_holds: Mutex::new(saved_holds),
        };
        Ok((Arc::new(repo), recovery))
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Tells `observer` of every group-commit batch from now on; false (and `observer` unused)
    /// if one is set already.
    pub fn observe_batches(&self, observer: Box<dyn BatchObserver>) -> bool {
        self.batches.set(observer).is_ok()
    }

    /// Subscribes to changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn announce(&self, pnfsid: PnfsId, kind: ChangeKind) {
        // No subscriber is fine.
        let _ = self.changes.send(Change { pnfsid, kind });
    }

    /// Whether an entry exists (being received included), from the index alone.
    pub fn contains(&self, id: &PnfsId) -> bool {
        self.index.lock().get(id).is_some()
    }

    /// Number of entries, including those being received.
    pub fn len(&self) -> usize {
        self.index.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn space(&self, now: EpochMillis) -> SpaceInfo {
        let mut ix = self.index.lock();
        ix.expire(now);
        ix.space(self.capacity)
    }

    /// Keeps these replicas from eviction until `until` (a later hold wins), although nothing
    /// in their records protects them: the copies a running migration delivered (see
    /// docs/operator-guide.md). Removable space leaves held replicas out. Holds are stored for
    /// `owner` (opaque here) and come back after a restart ([`Repository::take_saved_holds`]).
    ///
    /// With `arriving`, a replica not here yet is held too, and covered from the moment it is
    /// committed: its hold becomes durable with that commit's flush. A hold on a replica that is
    /// here is flushed before this returns (a move's source may delete its replica as soon as
    /// it hears back). Without `arriving` (a renewal), replicas not here are skipped.
    pub fn hold(
        &self,
        ids: &[PnfsId],
        until: EpochMillis,
        owner: &[u8],
        arriving: bool,
        now: EpochMillis,
    ) -> RepoResult<()> {
        let mut placed = Vec::new();
        let mut present = false;
        {
            let mut ix = self.index.lock();
            for id in ids {
                let here = ix.get(id).is_some();
                if (here || arriving) && ix.hold(*id, until, now) {
                    placed.push(*id);
                    present |= here;
                }
            }
        }
        // Written outside the index lock: a renewal may touch every replica a job delivered.
        let value = record::encode_hold(until, owner);
        for id in &placed {
            self.store.put_hold(id, &value)?;
        }
        if present {
            self.flush_shared()?;
        }
        Ok(())
    }

    /// The holds found when the repository was opened (each with its owner), handed out once.
    pub fn take_saved_holds(&self) -> Vec<SavedHold> {
        std::mem::take(&mut *self.saved_holds.lock())
    }

    /// Cached replicas that only a hold keeps from eviction: count and bytes (`info` shows
    /// them, so that an operator sees why Removable is small).
    pub fn held_space(&self, now: EpochMillis) -> (usize, u64) {
        self.index.lock().held_space(now)
    }

    /// Number of replicas in each state.
    pub fn counts(&self) -> Vec<(ReplicaState, usize)> {
        self.index.lock().counts()
    }

    /// Creates an entry that receives data (`origin` is FROM_CLIENT or FROM_POOL), making room
    /// by evicting least recently used removable replicas if needed.
    pub fn create(
        self: &Arc<Self>,
        attrs: FileAttributes,
        origin: ReplicaState,
        now: EpochMillis,
    ) -> RepoResult<Incoming> {
        let id = attrs.pnfsid;
        let evicted = self.reserve(&attrs, origin, now)?;
        if !evicted.is_empty() {
            commit::discard(&*self.store, &evicted);
        }
        match self.store.create_incoming(&id) {
            Ok(writer) => Ok(Incoming {
                repo: self.clone(),
                attrs,
                origin,
                writer,
                written: 0,
                hasher: ChecksumWriter::new(),
                finished: false,
            }),
            Err(e) => {
                self.drop_incoming(id, origin);
                Err(e.into())
            }
        }
    }

    /// Enters a new entry in `origin` state into the index, evicting least recently used
    /// removable replicas if that is needed to make room. Returns the evicted ones, already
    /// gone from the index, whose records and data the caller must discard.
    fn reserve(&self, attrs: &FileAttributes, origin: ReplicaState, now: EpochMillis) -> RepoResult<Vec<PnfsId>> {
        assert!(matches!(origin, ReplicaState::FromClient | ReplicaState::FromPool | ReplicaState::FromStore));
        let id = attrs.pnfsid;
        let mut ix = self.index.lock();
        if ix.get(&id).is_some() {
            return Err(RepoError::Exists(id));
        }
        // The disk, not only the capacity, must have room (a smaller file system than the
        // configured capacity, or other writers on it): one statvfs.
        self.store.room_for(attrs.size)?;
        ix.expire(now);
        let evicted = ix.make_room(attrs.size, self.capacity).map_err(|s| RepoError::PoolFull {
            needed: attrs.size,
            free: s.free,
            removable: s.removable,
            total: s.total,
        })?;
        let entry = Entry { size: attrs.size, atime: now, state: origin, sticky_until: index::NOT_STICKY };
        ix.add(id, entry, now);
        ix.incoming.insert(id, attrs.clone());
        for victim in &evicted {
            self.announce(*victim, ChangeKind::State { from: ReplicaState::Cached, to: ReplicaState::Removed });
        }
        self.announce(id, ChangeKind::State { from: ReplicaState::New, to: origin });
        if !evicted.is_empty() {
            tracing::info!(count = evicted.len(), for_pnfsid = %id, "sweeper evicted cached replicas");
        }
        Ok(evicted)
    }

    /// Stores a replica received whole (a small one): checks its size and the sender's
    /// checksum, makes room, and commits it to `state` with `sticky` through the group
    /// committer, whose thread also writes the file. Nothing here blocks: an async caller
    /// awaits it directly. When it returns Ok the data and the record are on disk; on error
    /// nothing of the replica is left. Once submitted the commit completes even if the caller
    /// stops waiting.
    #[allow(clippy::too_many_arguments)]
    pub async fn store_whole(
        self: &Arc<Self>,
        attrs: FileAttributes,
        origin: ReplicaState,
        data: bytes::Bytes,
        state: ReplicaState,
        sticky: Vec<StickyRecord>,
        expected: Option<Checksum>,
        now: EpochMillis,
    ) -> RepoResult<Replica> {
        assert!(state.is_committed(), "commit to {state}");
        let id = attrs.pnfsid;
        if data.len() as u64 != attrs.size {
            return Err(if (data.len() as u64) < attrs.size {
                RepoError::Short { id, got: data.len() as u64, expected: attrs.size }
            } else {
                RepoError::TooLong { id, expected: attrs.size }
            });
        }
        let mut hasher = ChecksumWriter::new();
        hasher.update(&data);
        let actual = hasher.finish();
        check_checksum(id, expected, actual)?;
        let evicted = self.reserve(&attrs, origin, now)?;
        let replica = committed_replica(attrs, state, sticky, actual, now);
        let record = record::encode(&replica);
        let (tell, answer) = tokio::sync::oneshot::channel();
        // Weak: the repository owns the committer, whose thread runs this; a repository
        // already dropped has no index left to update.
        let repo = Arc::downgrade(self);
        let done = commit::Done::new(move |result| {
            let Some(repo) = repo.upgrade() else { return };
            let outcome = match result {
                Ok(()) => {
                    repo.published(&replica, origin, now);
                    Ok(replica)
                }
                Err(e) => {
                    repo.drop_incoming(id, origin);
                    Err(e.into())
                }
            };
            let _ = tell.send(outcome);
        });
        self.committer.submit(commit::Job { id, record, data: Some(data), evicted, done });
        answer.await.unwrap_or_else(|_| Err(RepoError::from(commit::gone())))
    }

    /// Makes the caller's record changes durable, sharing the flush with others that need the
    /// same at about the same time (removals by a migration job, for instance): a caller whose
    /// change is covered by a flush that starts after it waits for that flush instead of
    /// starting its own. Returns Ok only once a flush that started after the caller's changes
    /// has succeeded; a failed flush fails its leader and is tried again by the next caller.
    fn flush_shared(&self) -> store::StoreResult<()> {
        let f = &self.flusher;
        let mut st = f.state.lock();
        st.requested += 1;
        let ticket = st.requested;
        loop {
            if st.done >= ticket {
                return Ok(());
            }
            if st.flushing {
                f.wake.wait(&mut st);
                continue;
            }
            st.flushing = true;
            // Every change with a ticket up to here was made before this flush starts.
            let covering = st.requested;
            // A panic in the store must not leave `flushing` set: every later caller would wait
            // for ever. It is passed on once the others are woken.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                parking_lot::MutexGuard::unlocked(&mut st, || self.store.flush())
            }));
            st.flushing = false;
            if let Ok(Ok(())) = outcome {
                st.done = st.done.max(covering);
            }
            f.wake.notify_all();
            match outcome {
                Ok(result) => result?,
                Err(panic) => {
                    drop(st);
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }

    /// Enters a replica whose commit is durable into the index.
    fn published(&self, replica: &Replica, origin: ReplicaState, now: EpochMillis) {
        let id = replica.pnfsid();
        let mut ix = self.index.lock();
        ix.incoming.remove(&id);
        ix.add(id, entry_of(replica, now), now);
        self.announce(id, ChangeKind::State { from: origin, to: replica.state });
    }

    fn drop_incoming(&self, id: PnfsId, origin: ReplicaState) {
        {
            let mut ix = self.index.lock();
            ix.take(&id);
            ix.incoming.remove(&id);
            self.announce(id, ChangeKind::State { from: origin, to: ReplicaState::Removed });
        }
        if let Err(e) = self.store.remove_incoming(&id) {
            tracing::error!(pnfsid = %id, error = %e, "could not delete partial data");
        }
    }

    fn load(&self, ix: &Index, id: &PnfsId) -> RepoResult<Replica> {
        let entry = ix.get(id).ok_or(RepoError::NotFound(*id))?;
        if let Some(attrs) = ix.incoming.get(id) {
            return Ok(Replica { attrs: attrs.clone(), state: entry.state, sticky: Vec::new() });
        }
        let bytes = self
            .store
            .get_record(id)?
            .ok_or_else(|| RepoError::Corrupt { id: *id, reason: "record vanished".into() })?;
        record::decode(*id, &bytes).map_err(|reason| RepoError::Corrupt { id: *id, reason })
    }

    /// The replica, if present (entries being received included).
    pub fn get(&self, id: &PnfsId) -> RepoResult<Option<Replica>> {
        let ix = self.index.lock();
        match self.load(&ix, id) {
            Ok(r) => Ok(Some(r)),
            Err(RepoError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads, changes and stores a committed replica's record under the index lock.
    fn update(
        &self,
        id: &PnfsId,
        now: EpochMillis,
        action: &'static str,
        change: impl FnOnce(&mut Replica) -> RepoResult<Option<ChangeKind>>,
    ) -> RepoResult<bool> {
        let mut ix = self.index.lock();
        let mut replica = self.load(&ix, id)?;
        if replica.state.is_receiving() {
            return Err(RepoError::Busy { id: *id, state: replica.state, action });
        }
        let Some(kind) = change(&mut replica)? else {
            return Ok(false);
        };
        self.store.put_record(id, &record::encode(&replica))?;
        ix.add(*id, entry_of(&replica, now), now);
        self.announce(*id, kind);
        Ok(true)
    }

    /// Changes a replica's state (docs/dcache-compatibility.md#replicas). REMOVED deletes the replica; asking for it
    /// on a missing replica is a no-op. Durable when this returns.
    pub fn set_state(&self, id: &PnfsId, to: ReplicaState, now: EpochMillis) -> RepoResult<()> {
        if to == ReplicaState::Removed {
            return self.delete(id, |_| Ok(()));
        }
        let changed = self.update(id, now, "changed", |r| {
            let from = r.state;
            if from == to {
                return Ok(None);
            }
            if !from.may_change_to(to) {
                return Err(RepoError::IllegalTransition { id: *id, from, to });
            }
            if from == ReplicaState::Broken && to.is_committed() && self.store.open_data(id).is_err() {
                return Err(RepoError::NoDataFile(*id));
            }
            r.state = to;
            Ok(Some(ChangeKind::State { from, to }))
        })?;
        if changed {
            self.flush_shared()?;
        }
        Ok(())
    }

    /// Sets one sticky record in the given mode; returns whether anything changed. Durable when
    /// this returns.
    /// Drops the sticky records for which `drop` says so, deciding under the index lock on the
    /// records as they are at that moment (a record changed meanwhile is judged as changed).
    pub fn drop_sticky_if(
        &self,
        id: &PnfsId,
        now: EpochMillis,
        drop: impl Fn(&StickyRecord) -> bool,
    ) -> RepoResult<bool> {
        let changed = self.update(id, now, "made sticky", |r| {
            let before = r.sticky.len();
            r.sticky.retain(|s| !drop(s));
            Ok((r.sticky.len() != before).then(|| ChangeKind::Sticky(r.sticky.clone())))
        })?;
        if changed {
            self.flush_shared()?;
        }
        Ok(changed)
    }

    pub fn set_sticky(
        &self,
        id: &PnfsId,
        record: StickyRecord,
        mode: StickyMode,
        now: EpochMillis,
    ) -> RepoResult<bool> {
        let changed = self.update(id, now, "made sticky", |r| {
            Ok(apply_sticky(&mut r.sticky, record, mode, now).then(|| ChangeKind::Sticky(r.sticky.clone())))
        })?;
        if changed {
            self.flush_shared()?;
        }
        Ok(changed)
    }

    /// Records the checksum of a replica that has none (computed by reading it whole). A
    /// replica that has a checksum keeps it: the same one is a no-op, another is refused.
    /// Durable when this returns.
    pub fn set_checksum(&self, id: &PnfsId, checksum: Checksum, now: EpochMillis) -> RepoResult<()> {
        let changed = self.update(id, now, "given a checksum", |r| match r.attrs.checksum {
            None => {
                r.attrs.checksum = Some(checksum);
                Ok(Some(ChangeKind::Checksum(checksum)))
            }
            Some(known) if known == checksum => Ok(None),
            Some(known) => Err(RepoError::ChecksumKnown { id: *id, known, given: checksum }),
        })?;
        if changed {
            self.flush_shared()?;
        }
        Ok(())
    }

    /// Records an access. Not flushed on its own: an access time may be lost in a crash.
    pub fn touch(&self, id: &PnfsId, atime: EpochMillis, now: EpochMillis) -> RepoResult<()> {
        self.update(id, now, "read", |r| {
            r.attrs.access_time = atime;
            Ok(Some(ChangeKind::AccessTime(atime)))
        })?;
        Ok(())
    }

    /// Removes a replica if `allow`, called under the index lock with the replica as it is at
    /// that moment, agrees (a sticky record set meanwhile is seen). An absent replica is fine.
    pub fn remove_if(&self, id: &PnfsId, allow: impl FnOnce(&Replica) -> RepoResult<()>) -> RepoResult<()> {
        self.delete(id, allow)
    }

    /// [`Repository::remove_if`] for several replicas, with one flush for all of them: each
    /// is removed if `allow` agrees (called under the index lock, as for one, with the place of
    /// the replica in `ids`); the answers are in the order of `ids`. A failed flush fails every
    /// removal it carried.
    pub fn remove_many_if(
        &self,
        ids: &[PnfsId],
        mut allow: impl FnMut(usize, &Replica) -> RepoResult<()>,
    ) -> Vec<RepoResult<()>> {
        let mut answers: Vec<RepoResult<()>> = Vec::with_capacity(ids.len());
        let mut taken = Vec::new();
        {
            let mut ix = self.index.lock();
            for (at, id) in ids.iter().enumerate() {
                let replica = match self.load(&ix, id) {
                    Err(RepoError::NotFound(_)) => {
                        answers.push(Ok(()));
                        continue;
                    }
                    Err(e) => {
                        answers.push(Err(e));
                        continue;
                    }
                    Ok(r) => r,
                };
                if replica.state.is_receiving() {
                    answers.push(Err(RepoError::Busy { id: *id, state: replica.state, action: "removed" }));
                    continue;
                }
                if let Err(e) = allow(at, &replica) {
                    answers.push(Err(e));
                    continue;
                }
                // Under the index lock, as every record write: a deletion that fails leaves the
                // replica in the index too (it was not removed), never a record the index lost.
                if let Err(e) = self.store.delete_record(id) {
                    answers.push(Err(e.into()));
                    continue;
                }
                ix.take(id);
                self.announce(*id, ChangeKind::State { from: replica.state, to: ReplicaState::Removed });
                taken.push((answers.len(), *id));
                answers.push(Ok(()));
            }
        }
        if taken.is_empty() {
            return answers;
        }
        let flushed =
            taken.iter().try_for_each(|(_, id)| self.store.delete_hold(id)).and_then(|()| self.flush_shared());
        if flushed.is_ok() {
            fail::fail_point!("remove-before-data-delete");
        }
        for (at, id) in taken {
            answers[at] = match &flushed {
                Ok(()) => self.store.remove_data(&id).map_err(RepoError::from),
                Err(e) => Err(e.again().into()),
            };
        }
        answers
    }

    /// Removes a replica on an operator's request. Without `force`, precious replicas and those
    /// with a valid sticky record are refused. Replicas being received are always refused.
    pub fn remove(&self, id: &PnfsId, force: bool, now: EpochMillis) -> RepoResult<()> {
        self.delete(id, |r| {
            if force {
                return Ok(());
            }
            if r.state == ReplicaState::Precious {
                return Err(RepoError::Protected { id: *id, why: Protection::Precious });
            }
            if let Some(s) = r.sticky.iter().find(|s| s.is_valid(now)) {
                return Err(RepoError::Protected { id: *id, why: Protection::Sticky { owner: s.owner.clone() } });
            }
            Ok(())
        })
    }

    fn delete(&self, id: &PnfsId, allow: impl FnOnce(&Replica) -> RepoResult<()>) -> RepoResult<()> {
        let mut allow = Some(allow);
        let mut answers = self.remove_many_if(std::slice::from_ref(id), |_, r| match allow.take() {
            Some(allow) => allow(r),
            None => Ok(()),
        });
        answers.pop().unwrap_or(Ok(()))
    }

    /// Opens a committed replica for reading and records the access.
    pub fn open_data(&self, id: &PnfsId, now: EpochMillis) -> RepoResult<(Replica, DataRead)> {
        let replica = self.committed(id)?;
        let data = self.store.open_data(id)?;
        self.touch(id, now, now)?;
        Ok((replica, data))
    }

    /// Opens a committed replica for a pool-to-pool copy (or a verification). The access time
    /// is left alone: a copy is not a use, and counting it would keep drained replicas warm in
    /// the LRU. For the same reason what it reads is kept out of the page cache where the
    /// store can (a replica already cached stays cached).
    pub fn open_for_copy(&self, id: &PnfsId) -> RepoResult<(Replica, DataRead)> {
        let replica = self.committed(id)?;
        let data = self.store.open_data_uncached(id)?;
        Ok((replica, data))
    }

    /// The replica, if it is committed (CACHED or PRECIOUS).
    fn committed(&self, id: &PnfsId) -> RepoResult<Replica> {
        let replica = self.get(id)?.ok_or(RepoError::NotFound(*id))?;
        if !replica.state.is_committed() {
            return Err(RepoError::NotCommitted { id: *id, state: replica.state });
        }
        Ok(replica)
    }

    /// [`Repository::open_for_copy`] for a batch: when the replica is at most `small` bytes,
    /// the operating system is asked to start reading its data now, unbuffered, so that a
    /// batch that opens all its files before reading them has their reads under way together.
    pub fn open_for_copy_ahead(&self, id: &PnfsId, small: u64) -> RepoResult<(Replica, DataRead)> {
        let replica = self.committed(id)?;
        let data =
            if replica.attrs.size <= small { self.store.open_data_ahead(id)? } else { self.store.open_data(id)? };
        Ok((replica, data))
    }

    /// Visits every stored replica in pnfsid byte order, read from the store as the scan goes
    /// (so a million replicas are never held at once); `Break` stops early. Entries being
    /// received are not included: see [`Repository::incoming`]. Unreadable records are
    /// skipped (recovery reported them).
    /// Records left by failed commits are not included either (see `commit.rs`).
    pub fn scan(&self, visit: &mut dyn FnMut(Replica) -> ControlFlow<()>) -> RepoResult<()> {
        let ghosts = self.ghosts.lock().clone();
        self.store.scan_records(&mut |key, bytes| match PnfsId::from_bytes(key)
            .ok()
            .filter(|id| ghosts.is_empty() || !ghosts.contains(id))
            .and_then(|id| record::decode(id, bytes).ok())
        {
            Some(r) => visit(r),
            None => ControlFlow::Continue(()),
        })?;
        Ok(())
    }

    /// Entries being received, with their announced attributes.
    pub fn incoming(&self) -> Vec<Replica> {
        let ix = self.index.lock();
        ix.incoming
            .values()
            .filter_map(|a| {
                let e = ix.get(&a.pnfsid)?;
                Some(Replica { attrs: a.clone(), state: e.state, sticky: Vec::new() })
            })
            .collect()
    }

    /// Makes every metadata change so far durable.
    pub fn flush(&self) -> RepoResult<()> {
        Ok(self.flush_shared()?)
    }

    /// A named setting (pool mode, saved jobs).
    pub fn setting(&self, key: &str) -> RepoResult<Option<Vec<u8>>> {
        Ok(self.store.get_meta(key)?)
    }

    /// Stores a named setting durably.
    pub fn put_setting(&self, key: &str, value: &[u8]) -> RepoResult<()> {
        self.store.put_meta(key, value)?;
        Ok(self.flush_shared()?)
    }
}

fn entry_of_record(r: &record::EntryFields, now: EpochMillis) -> Entry {
    Entry { size: r.size, atime: r.atime, state: r.state, sticky_until: r.sticky_until(now) }
}

/// The sender's checksum, if it gave one, against what arrived.
fn check_checksum(id: PnfsId, expected: Option<Checksum>, actual: Checksum) -> RepoResult<()> {
    match expected {
        Some(expected) if expected != actual => Err(RepoError::ChecksumMismatch { id, expected, actual }),
        _ => Ok(()),
    }
}

/// A new replica as it is committed: its checksum and creation time set, its sticky records
/// applied as given.
fn committed_replica(
    mut attrs: FileAttributes,
    state: ReplicaState,
    sticky: Vec<StickyRecord>,
    checksum: Checksum,
    now: EpochMillis,
) -> Replica {
    let mut records = Vec::new();
    for r in sticky {
        apply_sticky(&mut records, r, StickyMode::Overwrite, now);
    }
    attrs.checksum = Some(checksum);
    attrs.creation_time = now;
    Replica { attrs, state, sticky: records }
}

fn entry_of(r: &Replica, now: EpochMillis) -> Entry {
    Entry { size: r.attrs.size, atime: r.attrs.access_time, state: r.state, sticky_until: sticky_until(&r.sticky, now) }
}

/// A replica being received. Dropping it without `commit` removes the entry and its data.
pub struct Incoming {
    repo: Arc<Repository>,
    attrs: FileAttributes,
    origin: ReplicaState,
    writer: Box<dyn store::DataWrite>,
    written: u64,
    hasher: ChecksumWriter,
    finished: bool,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").field("pnfsid", &self.attrs.pnfsid).field("written", &self.written).finish()
    }
}

impl Incoming {
    pub fn pnfsid(&self) -> PnfsId {
        self.attrs.pnfsid
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn expected_size(&self) -> u64 {
        self.attrs.size
    }

    /// Appends data, checksumming it on the way.
    pub fn write(&mut self, data: &[u8]) -> RepoResult<()> {
        let id = self.attrs.pnfsid;
        if self.written + data.len() as u64 > self.attrs.size {
            return Err(RepoError::TooLong { id, expected: self.attrs.size });
        }
        self.writer.write_all(data).map_err(|e| RepoError::from(StoreError::new(format!("write {id}"), e)))?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Commits the replica to `state` (CACHED or PRECIOUS) with the given sticky records,
    /// after checking its size and, if given, the sender's checksum. When this returns Ok the
    /// data and the record are on disk. On error nothing was committed and the partial data is
    /// gone.
    pub fn commit(
        mut self,
        state: ReplicaState,
        sticky: Vec<StickyRecord>,
        expected: Option<Checksum>,
        now: EpochMillis,
    ) -> RepoResult<Replica> {
        assert!(state.is_committed(), "commit to {state}");
        let id = self.attrs.pnfsid;
        if self.written != self.attrs.size {
            return Err(RepoError::Short { id, got: self.written, expected: self.attrs.size });
        }
        let actual = self.hasher.finish();
        check_checksum(id, expected, actual)?;
        self.writer.finish().map_err(|e| RepoError::from(StoreError::new(format!("write {id}"), e)))?;
        let repo = self.repo.clone();
        let replica = committed_replica(self.attrs.clone(), state, sticky, actual, now);
        // Durable (data, then record) when this returns; on error nothing of it is kept.
        repo.committer.commit(id, record::encode(&replica))?;
        self.finished = true;
        repo.published(&replica, self.origin, now);
        Ok(replica)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.finished {
            self.repo.drop_incoming(self.attrs.pnfsid, self.origin);
        }
    }
}

#[cfg(test)]
mod conformance;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
