//! An in-memory store for tests and simulations. Everything written is immediately "durable":
//! a restart (dropping the repository and opening a new one on the same store) keeps records,
//! settings and both data areas, like a clean shutdown of the sled store.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;
use tidepool_p2p::PnfsId;

use super::store::{DataRead, DataWrite, RecordVisitor, ReplicaStore, StoreError, StoreResult};

type Blob = Arc<Mutex<Vec<u8>>>;

#[derive(Default)]
pub struct MemStore {
    records: Mutex<BTreeMap<PnfsId, Vec<u8>>>,
    meta: Mutex<HashMap<String, Vec<u8>>>,
    incoming: Mutex<HashMap<String, Blob>>,
    data: Mutex<HashMap<String, Blob>>,
    disk: Arc<Mutex<DiskLimit>>,
    /// Test hook: the next sync waits on this, then fails (see [`MemStore::fail_next_sync`]).
    sync_fault: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    syncing: std::sync::atomic::AtomicBool,
    /// Test hook: the next flush waits on this, then fails if told so.
    flush_hold: Mutex<Option<(std::sync::mpsc::Receiver<()>, bool)>>,
    flushing: std::sync::atomic::AtomicBool,
    flushes: std::sync::atomic::AtomicU64,
    /// Test hook: the next flush panics.
    flush_panics: std::sync::atomic::AtomicBool,
}

/// Test hook: a disk that fills up.
#[derive(Default)]
struct DiskLimit {
    /// Bytes that may still be written; `None` is unlimited.
    left: Option<u64>,
}

impl MemStore {
    pub fn new() -> Arc<MemStore> {
        Arc::new(MemStore::default())
    }

    /// Makes data writes fail with ENOSPC once `bytes` more bytes were written (a full disk).
    pub fn fail_writes_after(&self, bytes: u64) {
        self.disk.lock().left = Some(bytes);
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
        self.flush_panics.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a flush held by [`MemStore::hold_next_flush`] is waiting.
    pub fn is_flushing(&self) -> bool {
        self.flushing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many flushes were asked for so far.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether a sync held by [`MemStore::fail_next_sync`] is waiting.
    pub fn is_syncing(&self) -> bool {
        self.syncing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the data area holds a file of that name.
    pub fn has_data(&self, name: &str) -> bool {
        self.data.lock().contains_key(name)
    }

    /// Puts a data file with no record in the data area (an orphan, for recovery tests).
    pub fn put_orphan_data(&self, name: &str, bytes: &[u8]) {
        self.data.lock().insert(name.to_string(), Arc::new(Mutex::new(bytes.to_vec())));
    }

    /// Removes a data file behind the repository's back (a lost file, for recovery tests).
    pub fn lose_data(&self, id: &PnfsId) {
        self.data.lock().remove(&id.to_string());
    }
}

struct MemWriter {
    blob: Blob,
    disk: Arc<Mutex<DiskLimit>>,
}

impl DataWrite for MemWriter {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
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
        // A snapshot, so the visitor may change records while the scan goes on.
        let snapshot: Vec<(PnfsId, Vec<u8>)> = self.records.lock().iter().map(|(k, v)| (*k, v.clone())).collect();
        for (k, v) in snapshot {
            if visit(k.as_bytes(), &v).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn get_record(&self, id: &PnfsId) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.records.lock().get(id).cloned())
    }

    fn put_record(&self, id: &PnfsId, value: &[u8]) -> StoreResult<()> {
        self.records.lock().insert(*id, value.to_vec());
        Ok(())
    }

    fn delete_record(&self, id: &PnfsId) -> StoreResult<()> {
        self.records.lock().remove(id);
        Ok(())
    }

    fn flush(&self) -> StoreResult<()> {
        self.flushes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.flush_panics.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("test hook: the flush panics");
        }
        let hold = self.flush_hold.lock().take();
        if let Some((wait, fail)) = hold {
            self.flushing.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = wait.recv();
            self.flushing.store(false, std::sync::atomic::Ordering::SeqCst);
            if fail {
                return Err(StoreError::new("flush", io::Error::from_raw_os_error(libc::EIO)));
            }
        }
        Ok(())
    }

    fn get_meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.meta.lock().get(key).cloned())
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> StoreResult<()> {
        self.meta.lock().insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn create_incoming(&self, id: &PnfsId) -> StoreResult<Box<dyn DataWrite>> {
        let blob: Blob = Arc::default();
        self.incoming.lock().insert(id.to_string(), blob.clone());
        Ok(Box::new(MemWriter { blob, disk: self.disk.clone() }))
    }

    fn remove_incoming(&self, id: &PnfsId) -> StoreResult<()> {
        self.incoming.lock().remove(&id.to_string());
        Ok(())
    }

    fn list_incoming(&self) -> StoreResult<Vec<String>> {
        Ok(self.incoming.lock().keys().cloned().collect())
    }

    fn remove_incoming_name(&self, name: &str) -> StoreResult<()> {
        self.incoming.lock().remove(name);
        Ok(())
    }

    fn publish(&self, id: &PnfsId) -> StoreResult<()> {
        let name = id.to_string();
        let blob = self.incoming.lock().remove(&name).ok_or_else(|| not_found(format!("publish {name}")))?;
        self.data.lock().insert(name, blob);
        Ok(())
    }

    fn sync_data(&self) -> StoreResult<()> {
        let fault = self.sync_fault.lock().take();
        if let Some(wait) = fault {
            self.syncing.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = wait.recv();
            self.syncing.store(false, std::sync::atomic::Ordering::SeqCst);
            return Err(StoreError::new("sync", io::Error::from_raw_os_error(libc::EIO)));
        }
        Ok(())
    }

    fn open_data(&self, id: &PnfsId) -> StoreResult<DataRead> {
        let name = id.to_string();
        let blob = self.data.lock().get(&name).cloned().ok_or_else(|| not_found(format!("open {name}")))?;
        let bytes = blob.lock().clone();
        Ok(Box::new(io::Cursor::new(bytes)))
    }

    fn remove_data(&self, id: &PnfsId) -> StoreResult<()> {
        self.data.lock().remove(&id.to_string());
        Ok(())
    }

    fn scan_data(&self, visit: &mut dyn FnMut(&str)) -> StoreResult<()> {
        let names: Vec<String> = self.data.lock().keys().cloned().collect();
        names.iter().for_each(|n| visit(n));
        Ok(())
    }
}
