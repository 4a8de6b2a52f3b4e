//! An in-memory store for tests and simulations, with a model of power loss.
//!
//! The store keeps two views: the *live* one, which every call reads and writes, and the
//! *durable* one, what a disk would still hold after a power cut. `flush` makes the record and
//! setting changes durable, `sync_data` the data areas (file contents and names, as `syncfs`
//! does); nothing else does. [`MemStore::power_cut`] returns the store a restarted machine
//! would find (the durable view, optionally with some of what was not yet made durable, as
//! sled's background writes and the kernel's write-back may have kept), and leaves this one
//! dead: every later call fails with EIO, as a process whose machine went away would see.
//! [`MemStore::cut_power_after`] arms such a cut at a chosen store call, so a test can cut the
//! power at any point inside an operation; [`MemStore::steps`] counts those calls.
//!
//! A restart without a power cut (dropping the repository and opening a new one on the same
//! store) keeps the live view, like a clean shutdown or a process crash of the sled store.
//!
//! Faults on request: a disk that fills up ([`MemStore::fail_writes_after`]), a sync or flush
//! that waits and fails ([`MemStore::fail_next_sync`], [`MemStore::hold_next_flush`]), and any
//! listed operation failing a number of times ([`MemStore::fail`]).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tidepool_p2p::PnfsId;

use super::store::{
    DataRead, DataWrite, FAILED_MARK_SUFFIX, RecordVisitor, ReplicaStore, StoreError, StoreResult, failed_mark_name,
};

type Blob = Arc<Mutex<Vec<u8>>>;

/// A store operation that [`MemStore::fail`] can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    PutRecord,
    DeleteRecord,
    Flush,
    SyncData,
    Publish,
    RemoveData,
    MarkFailed,
    RemoveFailedMark,
}

/// What survives a power cut besides what was made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Nothing: only what was flushed or synced.
    DurableOnly,
    /// With this seed: a random prefix of the record and setting changes made since the last
    /// flush (sled's log is written in order, in the background), and, for each replica on a
    /// coin toss, its files as they were at the cut instead of as last synced (the kernel may
    /// have written them back). A replica's files in every area (`incoming/<id>`, `data/<id>`,
    /// `data/<id>.failed`, quarantine) share one toss: a rename reaches the disk whole or not.
    SomeOfTheRest(u64),
}

/// A record or setting change not yet flushed, in the order it was made.
#[derive(Clone, Debug)]
enum MetaOp {
    Put(PnfsId, Vec<u8>),
    Delete(PnfsId),
    Meta(String, Vec<u8>),
    Hold(PnfsId, Option<Vec<u8>>),
}

/// One view of the store.
#[derive(Default)]
struct View {
    records: BTreeMap<PnfsId, Vec<u8>>,
    meta: HashMap<String, Vec<u8>>,
    holds: BTreeMap<PnfsId, Vec<u8>>,
    incoming: HashMap<String, Blob>,
    /// Data files never change once published, so views share them.
    data: HashMap<String, Blob>,
    quarantine: HashMap<String, Blob>,
}

impl View {
    fn apply(&mut self, op: &MetaOp) {
        match op {
            MetaOp::Put(id, v) => {
                self.records.insert(*id, v.clone());
            }
            MetaOp::Delete(id) => {
                self.records.remove(id);
            }
            MetaOp::Meta(k, v) => {
                self.meta.insert(k.clone(), v.clone());
            }
            MetaOp::Hold(id, Some(v)) => {
                self.holds.insert(*id, v.clone());
            }
            MetaOp::Hold(id, None) => {
                self.holds.remove(id);
            }
        }
    }

    /// The data areas as they are now: incoming contents copied (writers still append to the
    /// live blobs), published files shared.
    fn data_areas(&self) -> (HashMap<String, Blob>, HashMap<String, Blob>, HashMap<String, Blob>) {
        let incoming = self.incoming.iter().map(|(k, b)| (k.clone(), Arc::new(Mutex::new(b.lock().clone())))).collect();
        (incoming, self.data.clone(), self.quarantine.clone())
    }

    /// A copy that shares nothing mutable with this one.
    fn copy(&self) -> View {
        let (incoming, data, quarantine) = self.data_areas();
        View {
            records: self.records.clone(),
            meta: self.meta.clone(),
            holds: self.holds.clone(),
            incoming,
            data,
            quarantine,
        }
    }
}

#[derive(Default)]
struct State {
    live: View,
    /// Record and setting changes since the last flush.
    unflushed: Vec<MetaOp>,
    /// What a power cut keeps: records and settings as of the last flush, data areas as of the
    /// last sync.
    durable: View,
}

#[derive(Default)]
pub struct MemStore {
    st: Mutex<State>,
    disk: Arc<Mutex<DiskLimit>>,
    /// Set by a power cut: every call fails from then on.
    dead: Arc<AtomicBool>,
    /// Calls that change something, counted for [`MemStore::cut_power_after`].
    steps: AtomicU64,
    /// An armed power cut: at this step, with this mode.
    armed: Mutex<Option<(u64, CutMode)>>,
    /// The store found after an armed cut happened.
    after_cut: Mutex<Option<Arc<MemStore>>>,
    faults: Mutex<HashMap<Fault, u32>>,
    /// Test hook: the next sync waits on this, then fails (see [`MemStore::fail_next_sync`]).
    sync_fault: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    syncing: AtomicBool,
    /// Test hook: the next flush waits on this, then fails if told so.
    flush_hold: Mutex<Option<(std::sync::mpsc::Receiver<()>, bool)>>,
    flushing: AtomicBool,
    flushes: AtomicU64,
    /// Test hook: the next flush panics.
    flush_panics: AtomicBool,
}

/// Test hook: a disk that fills up.
#[derive(Default)]
struct DiskLimit {
    /// Bytes that may still be written; `None` is unlimited.
    left: Option<u64>,
}

fn eio(op: impl Into<String>) -> StoreError {
    StoreError::new(op, io::Error::from_raw_os_error(libc::EIO))
}

impl MemStore {
    pub fn new() -> Arc<MemStore> {
        Arc::new(MemStore::default())
    }

    /// Makes data writes fail with ENOSPC once `bytes` more bytes were written (a full disk).
    pub fn fail_writes_after(&self, bytes: u64) {
        self.disk.lock().left = Some(bytes);
    }

    /// Makes the next `times` calls of `op` fail with EIO (`u32::MAX`: until told otherwise
    /// with `times` 0).
    pub fn fail(&self, op: Fault, times: u32) {
        self.faults.lock().insert(op, times);
    }

    /// Makes the next `sync_data` wait until the returned sender sends (or is dropped), then
    /// fail with EIO, as a write-back error would.
    pub fn fail_next_sync(&self) -> std::sync::mpsc::Sender<()> {
        let (release, wait) = std::sync::mpsc::channel();
        *self.sync_fault.lock() = Some(wait);
        release
    }

    /// Makes the next `flush` wait until the returned sender sends (or is dropped), then
    /// succeed or, if `fail`, fail with EIO.
    pub fn hold_next_flush(&self, fail: bool) -> std::sync::mpsc::Sender<()> {
        let (release, wait) = std::sync::mpsc::channel();
        *self.flush_hold.lock() = Some((wait, fail));
        release
    }

    /// Makes the next `flush` panic (a bug in a store).
    pub fn panic_next_flush(&self) {
        self.flush_panics.store(true, Ordering::SeqCst);
    }

    /// Whether a flush held by [`MemStore::hold_next_flush`] is waiting.
    pub fn is_flushing(&self) -> bool {
        self.flushing.load(Ordering::SeqCst)
    }

    /// How many flushes were asked for so far.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    /// Whether a sync held by [`MemStore::fail_next_sync`] is waiting.
    pub fn is_syncing(&self) -> bool {
        self.syncing.load(Ordering::SeqCst)
    }

    /// Whether the data area holds a file of that name.
    pub fn has_data(&self, name: &str) -> bool {
        self.st.lock().live.data.contains_key(name)
    }

    /// Names of the files in the quarantine area.
    pub fn quarantined(&self) -> Vec<String> {
        let mut names: Vec<String> = self.st.lock().live.quarantine.keys().cloned().collect();
        names.sort();
        names
    }

    /// Puts a data file with no record in the data area (an orphan, for recovery tests).
    pub fn put_orphan_data(&self, name: &str, bytes: &[u8]) {
        self.st.lock().live.data.insert(name.to_string(), Arc::new(Mutex::new(bytes.to_vec())));
    }

    /// Removes a data file behind the repository's back (a lost file, for recovery tests).
    pub fn lose_data(&self, id: &PnfsId) {
        self.st.lock().live.data.remove(&id.to_string());
    }

    /// Flips the bits of the first byte of a data file behind the repository's back (bit rot,
    /// for verification tests): its record keeps the checksum of the bytes as they were.
    pub fn damage_data(&self, id: &PnfsId) {
        if let Some(blob) = self.st.lock().live.data.get(&id.to_string())
            && let Some(b) = blob.lock().first_mut()
        {
            *b ^= 0xff;
        }
    }

    /// How many calls that change something were made so far (the steps of
    /// [`MemStore::cut_power_after`]).
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::SeqCst)
    }

    /// Cuts the power at the `step`-th call that changes something (counted by
    /// [`MemStore::steps`]), before it takes effect; that call and every later one fail with
    /// EIO. The store found after the cut is then [`MemStore::restarted`].
    pub fn cut_power_after(&self, step: u64, mode: CutMode) {
        *self.armed.lock() = Some((step, mode));
    }

    /// The store a restarted machine finds after an armed cut happened; `None` before.
    pub fn restarted(&self) -> Option<Arc<MemStore>> {
        self.after_cut.lock().clone()
    }

    /// Whether the power was cut.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Cuts the power now: returns the store a restarted machine finds, and leaves this one
    /// dead (every later call fails with EIO). Faults and hooks are not carried over.
    pub fn power_cut(&self, mode: CutMode) -> Arc<MemStore> {
        let st = self.st.lock();
        self.dead.store(true, Ordering::SeqCst);
        let mut found = st.durable.copy();
        if let CutMode::SomeOfTheRest(seed) = mode {
            let mut rng = tidepool_p2p::random::SplitMix::new(seed);
            let kept = (rng.next_u64() % (st.unflushed.len() as u64 + 1)) as usize;
            for op in &st.unflushed[..kept] {
                found.apply(op);
            }
            let (incoming, data, quarantine) = st.live.data_areas();
            let live = [incoming, data, quarantine];
            let mut names: Vec<&str> = live
                .iter()
                .chain([&found.incoming, &found.data, &found.quarantine])
                .flat_map(|area| area.keys().map(|k| k.strip_suffix(FAILED_MARK_SUFFIX).unwrap_or(k)))
                .collect();
            names.sort_unstable();
            names.dedup();
            let kept: Vec<String> =
                names.into_iter().filter(|_| rng.next_u64().is_multiple_of(2)).map(str::to_string).collect();
            let [incoming, data, quarantine] = live;
            for (area, from) in
                [(&mut found.incoming, incoming), (&mut found.data, data), (&mut found.quarantine, quarantine)]
            {
                for name in &kept {
                    for n in [name.clone(), format!("{name}{FAILED_MARK_SUFFIX}")] {
                        match from.get(&n) {
                            Some(b) => area.insert(n, b.clone()),
                            None => area.remove(&n),
                        };
                    }
                }
            }
        }
        let durable = found.copy();
        Arc::new(MemStore {
            st: Mutex::new(State { live: found, unflushed: Vec::new(), durable }),
            ..Default::default()
        })
    }

    /// Counts a call that changes something, cutting the power if it is the armed step.
    fn step(&self, op: &str) -> StoreResult<()> {
        if self.is_dead() {
            return Err(eio(format!("{op}: the power was cut")));
        }
        let n = self.steps.fetch_add(1, Ordering::SeqCst) + 1;
        let armed = *self.armed.lock();
        if let Some((at, mode)) = armed
            && n >= at
        {
            *self.armed.lock() = None;
            let found = self.power_cut(mode);
            *self.after_cut.lock() = Some(found);
            return Err(eio(format!("{op}: the power was cut")));
        }
        Ok(())
    }

    /// Fails if the power was cut (for calls that change nothing).
    fn alive(&self, op: &str) -> StoreResult<()> {
        if self.is_dead() { Err(eio(format!("{op}: the power was cut"))) } else { Ok(()) }
    }

    /// Fails if a fault was asked for `op`.
    fn fault(&self, op: Fault) -> StoreResult<()> {
        let mut faults = self.faults.lock();
        match faults.get_mut(&op) {
            Some(n) if *n > 0 => {
                if *n != u32::MAX {
                    *n -= 1;
                }
                Err(eio(format!("{op:?} (test fault)")))
            }
            _ => Ok(()),
        }
    }

    fn meta_op(&self, op: MetaOp) {
        let mut st = self.st.lock();
        st.live.apply(&op);
        st.unflushed.push(op);
    }
}

struct MemWriter {
    blob: Blob,
    disk: Arc<Mutex<DiskLimit>>,
    dead: Arc<AtomicBool>,
}

impl DataWrite for MemWriter {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let mut disk = self.disk.lock();
        if let Some(left) = disk.left.as_mut() {
            if (data.len() as u64) > *left {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            *left -= data.len() as u64;
        }
        self.blob.lock().extend_from_slice(data);
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn not_found(what: String) -> StoreError {
    StoreError::new(what, io::Error::from(io::ErrorKind::NotFound))
}

impl ReplicaStore for MemStore {
    fn scan_records(&self, visit: &mut RecordVisitor<'_>) -> StoreResult<()> {
        self.alive("scan records")?;
        // A snapshot, so the visitor may change records while the scan goes on.
        let snapshot: Vec<(PnfsId, Vec<u8>)> =
            self.st.lock().live.records.iter().map(|(k, v)| (*k, v.clone())).collect();
        for (k, v) in snapshot {
            if visit(k.as_bytes(), &v).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn get_record(&self, id: &PnfsId) -> StoreResult<Option<Vec<u8>>> {
        self.alive("read record")?;
        Ok(self.st.lock().live.records.get(id).cloned())
    }

    fn put_record(&self, id: &PnfsId, value: &[u8]) -> StoreResult<()> {
        self.step("write record")?;
        self.fault(Fault::PutRecord)?;
        self.meta_op(MetaOp::Put(*id, value.to_vec()));
        Ok(())
    }

    fn delete_record(&self, id: &PnfsId) -> StoreResult<()> {
        self.step("delete record")?;
        self.fault(Fault::DeleteRecord)?;
        self.meta_op(MetaOp::Delete(*id));
        Ok(())
    }

    fn flush(&self) -> StoreResult<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.step("flush")?;
        if self.flush_panics.swap(false, Ordering::SeqCst) {
            panic!("test hook: the flush panics");
        }
        let hold = self.flush_hold.lock().take();
        if let Some((wait, fail)) = hold {
            self.flushing.store(true, Ordering::SeqCst);
            let _ = wait.recv();
            self.flushing.store(false, Ordering::SeqCst);
            if fail {
                return Err(eio("flush"));
            }
        }
        self.fault(Fault::Flush)?;
        let mut st = self.st.lock();
        let ops = std::mem::take(&mut st.unflushed);
        for op in &ops {
            st.durable.apply(op);
        }
        Ok(())
    }

    fn get_meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.alive("read setting")?;
        Ok(self.st.lock().live.meta.get(key).cloned())
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> StoreResult<()> {
        self.step("write setting")?;
        self.meta_op(MetaOp::Meta(key.to_string(), value.to_vec()));
        Ok(())
    }

    fn put_hold(&self, id: &PnfsId, value: &[u8]) -> StoreResult<()> {
        self.step("write hold")?;
        self.meta_op(MetaOp::Hold(*id, Some(value.to_vec())));
        Ok(())
    }

    fn delete_hold(&self, id: &PnfsId) -> StoreResult<()> {
        self.step("delete hold")?;
        self.meta_op(MetaOp::Hold(*id, None));
        Ok(())
    }

    fn scan_holds(&self) -> StoreResult<Vec<(PnfsId, Vec<u8>)>> {
        self.alive("read holds")?;
        Ok(self.st.lock().live.holds.iter().map(|(k, v)| (*k, v.clone())).collect())
    }

    fn create_incoming(&self, id: &PnfsId) -> StoreResult<Box<dyn DataWrite>> {
        self.step("create incoming")?;
        let blob: Blob = Arc::default();
        self.st.lock().live.incoming.insert(id.to_string(), blob.clone());
        Ok(Box::new(MemWriter { blob, disk: self.disk.clone(), dead: self.dead.clone() }))
    }

    fn remove_incoming(&self, id: &PnfsId) -> StoreResult<()> {
        self.step("remove incoming")?;
        self.st.lock().live.incoming.remove(&id.to_string());
        Ok(())
    }

    fn list_incoming(&self) -> StoreResult<Vec<String>> {
        self.alive("list incoming")?;
        Ok(self.st.lock().live.incoming.keys().cloned().collect())
    }

    fn remove_incoming_name(&self, name: &str) -> StoreResult<()> {
        self.step("remove incoming")?;
        self.st.lock().live.incoming.remove(name);
        Ok(())
    }

    fn publish(&self, id: &PnfsId) -> StoreResult<()> {
        self.step("publish")?;
        self.fault(Fault::Publish)?;
        let name = id.to_string();
        let mut st = self.st.lock();
        let blob = st.live.incoming.remove(&name).ok_or_else(|| not_found(format!("publish {name}")))?;
        st.live.data.insert(name, blob);
        Ok(())
    }

    fn sync_data(&self) -> StoreResult<()> {
        self.step("sync")?;
        let fault = self.sync_fault.lock().take();
        if let Some(wait) = fault {
            self.syncing.store(true, Ordering::SeqCst);
            let _ = wait.recv();
            self.syncing.store(false, Ordering::SeqCst);
            return Err(eio("sync"));
        }
        self.fault(Fault::SyncData)?;
        let mut st = self.st.lock();
        let (incoming, data, quarantine) = st.live.data_areas();
        (st.durable.incoming, st.durable.data, st.durable.quarantine) = (incoming, data, quarantine);
        Ok(())
    }

    fn open_data(&self, id: &PnfsId) -> StoreResult<DataRead> {
        self.alive("open")?;
        let name = id.to_string();
        let blob = self.st.lock().live.data.get(&name).cloned().ok_or_else(|| not_found(format!("open {name}")))?;
        let bytes = blob.lock().clone();
        Ok(Box::new(io::Cursor::new(bytes)))
    }

    fn remove_data(&self, id: &PnfsId) -> StoreResult<()> {
        self.step("remove data")?;
        self.fault(Fault::RemoveData)?;
        self.st.lock().live.data.remove(&id.to_string());
        Ok(())
    }

    fn scan_data(&self, visit: &mut dyn FnMut(&str)) -> StoreResult<()> {
        self.alive("list data")?;
        let names: Vec<String> = self.st.lock().live.data.keys().cloned().collect();
        names.iter().for_each(|n| visit(n));
        Ok(())
    }

    fn mark_failed(&self, id: &PnfsId) -> StoreResult<()> {
        self.step("mark failed")?;
        self.fault(Fault::MarkFailed)?;
        let name = id.to_string();
        let mut st = self.st.lock();
        st.live.data.remove(&name).ok_or_else(|| not_found(format!("mark {name} as failed")))?;
        // A new, empty blob: the published one may be shared with the durable view.
        st.live.data.insert(failed_mark_name(id), Arc::default());
        Ok(())
    }

    fn remove_failed_mark(&self, id: &PnfsId) -> StoreResult<()> {
        self.step("remove mark")?;
        self.fault(Fault::RemoveFailedMark)?;
        self.st.lock().live.data.remove(&failed_mark_name(id));
        Ok(())
    }

    fn remove_data_name(&self, name: &str) -> StoreResult<()> {
        self.step("remove data")?;
        self.st.lock().live.data.remove(name);
        Ok(())
    }

    fn quarantine_data(&self, name: &str) -> StoreResult<()> {
        self.step("quarantine")?;
        let mut st = self.st.lock();
        let blob = st.live.data.remove(name).ok_or_else(|| not_found(format!("quarantine {name}")))?;
        st.live.quarantine.insert(name.to_string(), blob);
        Ok(())
    }
}
