//! The storage behind a repository: metadata records as bytes, and data files. Two
//! implementations: [`super::SledStore`] (sled + one file per replica) and
//! [`super::MemStore`] (memory, for tests and simulations). The repository's logic sits above
//! this trait so both behave the same; sled types never leave `sled_store.rs`.
//!
//! Data moves through two areas: a replica being received is written to *incoming*; `publish`
//! moves it to *data* durably. Recovery deletes everything left in incoming.

use std::io;
use std::ops::ControlFlow;

use tidepool_p2p::PnfsId;

/// A storage failure, with the operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct StoreError {
    pub op: String,
    #[source]
    pub source: io::Error,
}

impl StoreError {
    pub fn new(op: impl Into<String>, source: io::Error) -> Self {
        StoreError { op: op.into(), source }
    }

    /// The same error again, for each of several operations that one failure ended (the OS
    /// error number kept, so a full disk is still seen as one).
    pub fn again(&self) -> StoreError {
        let source = match self.source.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.source.kind(), self.source.to_string()),
        };
        StoreError { op: self.op.clone(), source }
    }

    /// Whether the disk is full (ENOSPC or EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        matches!(self.source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
            || self.source.kind() == io::ErrorKind::StorageFull
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A data file being written.
pub trait DataWrite: Send {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()>;
    /// Hands everything written to the operating system (no sync: see `sync_data`).
    fn finish(&mut self) -> io::Result<()>;
}

/// Something to read replica data from, from any offset.
pub trait ReadSeek: io::Read + io::Seek + Send {}

impl<T: io::Read + io::Seek + Send> ReadSeek for T {}

/// A committed data file being read.
pub type DataRead = Box<dyn ReadSeek>;

/// Visits one stored record (key bytes, value bytes); `Break` stops the scan.
pub type RecordVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> ControlFlow<()> + 'a;

pub trait ReplicaStore: Send + Sync + 'static {
    /// Visits every record in key order without copying it. The visitor may change records
    /// (recovery deletes some while scanning).
    fn scan_records(&self, visit: &mut RecordVisitor<'_>) -> StoreResult<()>;
    fn get_record(&self, id: &PnfsId) -> StoreResult<Option<Vec<u8>>>;
    /// Writes a record; durable only after `flush`.
    fn put_record(&self, id: &PnfsId, value: &[u8]) -> StoreResult<()>;
    fn delete_record(&self, id: &PnfsId) -> StoreResult<()>;
    /// Makes every record and setting change so far durable, across a power loss too: when
    /// it returns Ok, the changes are on stable storage (docs/durability.md).
    fn flush(&self) -> StoreResult<()>;

    /// Named settings (pool mode, saved jobs); durable only after `flush`.
    fn get_meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;
    fn put_meta(&self, key: &str, value: &[u8]) -> StoreResult<()>;

    /// Holds on replicas (what keeps a migration's delivered copies from eviction, see
    /// `Repository::hold`), one value per replica; durable only after `flush`.
    fn put_hold(&self, id: &PnfsId, value: &[u8]) -> StoreResult<()>;
    fn delete_hold(&self, id: &PnfsId) -> StoreResult<()>;
    /// Every stored hold.
    fn scan_holds(&self) -> StoreResult<Vec<(PnfsId, Vec<u8>)>>;

    /// Whether the disk has room for a new replica of `size` bytes beside what the store keeps
    /// free for its metadata; a disk-full error if not (docs/durability.md, "A full disk").
    fn room_for(&self, _size: u64) -> StoreResult<()> {
        Ok(())
    }
    /// Creates (truncating) the incoming data file of `id`.
    fn create_incoming(&self, id: &PnfsId) -> StoreResult<Box<dyn DataWrite>>;
    /// Creates (truncating) the incoming data file of `id` with exactly `data` in it.
    fn put_incoming(&self, id: &PnfsId, data: &[u8]) -> StoreResult<()> {
        let mut w = self.create_incoming(id)?;
        let op = || format!("write {id}");
        w.write_all(data).map_err(|e| StoreError::new(op(), e))?;
        w.finish().map_err(|e| StoreError::new(op(), e))
    }
    fn remove_incoming(&self, id: &PnfsId) -> StoreResult<()>;
    /// Names of the files in the incoming area (left over from a crash).
    fn list_incoming(&self) -> StoreResult<Vec<String>>;
    fn remove_incoming_name(&self, name: &str) -> StoreResult<()>;
    /// Moves the incoming file of `id` into the data area; durable after `sync_data`.
    fn publish(&self, id: &PnfsId) -> StoreResult<()>;
    /// Makes the content and the directory entries of every file published so far durable.
    fn sync_data(&self) -> StoreResult<()>;

    fn open_data(&self, id: &PnfsId) -> StoreResult<DataRead>;
    /// Opens a data file that is read for another pool or a verification, not for a use: the
    /// store may keep what it reads out of its cache.
    fn open_data_uncached(&self, id: &PnfsId) -> StoreResult<DataRead> {
        self.open_data(id)
    }
    /// Opens a data file that will be read whole soon: the store may start reading it now.
    fn open_data_ahead(&self, id: &PnfsId) -> StoreResult<DataRead> {
        self.open_data(id)
    }
    fn remove_data(&self, id: &PnfsId) -> StoreResult<()>;
    /// Visits the name of every file in the data area (marks of failed commits included, as
    /// [`failed_mark_name`]).
    fn scan_data(&self, visit: &mut dyn FnMut(&str)) -> StoreResult<()>;

    /// Turns the data file of `id` into the mark of a failed commit: the file is renamed to
    /// [`failed_mark_name`] (a rename needs no free space) and emptied. Restart recovery
    /// deletes a record that names `id` when it finds this mark instead of the data file: that
    /// commit was never acknowledged.
    fn mark_failed(&self, id: &PnfsId) -> StoreResult<()>;
    /// Removes the mark of a failed commit of `id`, if there is one.
    fn remove_failed_mark(&self, id: &PnfsId) -> StoreResult<()>;
    /// Removes a file of the data area by name (an orphan, a mark).
    fn remove_data_name(&self, name: &str) -> StoreResult<()>;
    /// Moves a file of the data area, by name, into the quarantine area, where the pool never
    /// looks again (an operator decides what to do with it).
    fn quarantine_data(&self, name: &str) -> StoreResult<()>;
}

/// The suffix of the mark a failed commit leaves in the data area: `<PNFSID>.failed`.
pub const FAILED_MARK_SUFFIX: &str = ".failed";

/// The name of the mark of a failed commit of `id` in the data area.
pub fn failed_mark_name(id: &PnfsId) -> String {
    format!("{id}{FAILED_MARK_SUFFIX}")
}

/// The replica a name of the data area is the failed-commit mark of, if it is one.
pub fn parse_failed_mark(name: &str) -> Option<PnfsId> {
    name.strip_suffix(FAILED_MARK_SUFFIX)?.parse().ok()
}
