//! The production store: metadata in sled under `<dir>/meta`, one data file per replica under
//! `<dir>/data/<PNFSID>`, partial data under `<dir>/incoming/<PNFSID>`.
//!
//! Durability: `publish` renames a file from `incoming/` into `data/`; `sync_data` makes every
//! renamed file (content and directory entry) durable with one `syncfs`; `flush` calls sled's
//! flush, followed by an `fdatasync` of sled's log file (and of any blob file sled wrote),
//! because sled flushes with `sync_file_range`, which neither flushes the device's volatile write
//! cache nor writes the file's size: see docs/durability.md. The group committer (`commit.rs`)
//! orders them: rename, sync, records, flush.
//!
//! A full disk: the store keeps a reserve file in the pool's directory (`reserve.rs`), released
//! when opening the metadata or writing data fails for lack of space, and refuses new data
//! while it is released or the file system is nearly full (docs/durability.md, "A full disk").

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::io::ReadWriteFlags;
use tidepool_p2p::PnfsId;

use super::reserve::{self, MARGIN_BYTES, RESERVE_BYTES, Reserve};
use super::store::{DataRead, DataWrite, RecordVisitor, ReplicaStore, StoreError, StoreResult, failed_mark_name};

/// sled's page cache; records are small, and the repository keeps its own compact index.
const SLED_CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// How often at most a record write looks at the free space (`keep_room_for_metadata`).
const ROOM_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(20);
/// How many times (50 ms apart) to retry a locked metadata directory before giving up.
const LOCK_WAITS: u32 = 60;

pub struct SledStore {
    records: sled::Tree,
    meta: sled::Tree,
    holds: sled::Tree,
    db: sled::Db,
    data: PathBuf,
    /// The data area, open for as long as the store: `syncfs` on it reports every write-back
    /// error since its previous call, which a descriptor opened afresh for each sync would miss
    /// (it only sees errors from its own opening on).
    data_dir: File,
    incoming: PathBuf,
    /// `<dir>/quarantine`, created when first needed.
    quarantine: PathBuf,
    /// sled's log file (`meta/db`), open for the `fdatasync` after each flush.
    log: File,
    /// `meta/blobs`: sled writes values too large for its log there, without syncing them.
    blobs: PathBuf,
    /// The blob files already synced (sled never changes a blob once written).
    synced_blobs: parking_lot::Mutex<std::collections::HashSet<std::ffi::OsString>>,
    /// The first failed sync of sled's files, after which every flush fails (`flush_and_sync`).
    sync_failed: parking_lot::Mutex<Option<String>>,
    reserve: Arc<Reserve>,
    opened: std::time::Instant,
    /// When a record write last looked at the free space (ms after `opened`).
    room_checked_ms: AtomicU64,
}

fn io_err(op: impl Into<String>, e: sled::Error) -> StoreError {
    let source = match e {
        sled::Error::Io(io) => io,
        other => io::Error::other(other.to_string()),
    };
    StoreError::new(op, source)
}

impl SledStore {
    /// Opens (creating if needed) the store in `dir`. If the file system is full, the disk
    /// reserve is released and the metadata opened with the room it leaves; if that is not
    /// enough, the error says the disk is full.
    pub fn open(dir: &Path) -> StoreResult<SledStore> {
        let data = dir.join("data");
        let incoming = dir.join("incoming");
        for d in [&data, &incoming] {
            fs::create_dir_all(d).map_err(|e| StoreError::new(format!("create {}", d.display()), e))?;
        }
        let reserve = Arc::new(Reserve::new(dir));
        let db = match open_db(dir) {
            Err(e) if e.is_disk_full() && reserve.release("opening the metadata failed") => open_db(dir),
            other => other,
        }?;
        let records = db.open_tree("replicas").map_err(|e| io_err("open replica tree", e))?;
        let meta = db.open_tree("settings").map_err(|e| io_err("open settings tree", e))?;
        let holds = db.open_tree("holds").map_err(|e| io_err("open hold tree", e))?;
        let data_dir = File::open(&data).map_err(|e| StoreError::new(format!("open {}", data.display()), e))?;
        let log_path = dir.join("meta").join("db");
        let log = File::open(&log_path).map_err(|e| StoreError::new(format!("open {}", log_path.display()), e))?;
        let (quarantine, blobs) = (dir.join("quarantine"), dir.join("meta").join("blobs"));
        let store = SledStore {
            records,
            meta,
            holds,
            db,
            data,
            data_dir,
            incoming,
            quarantine,
            log,
            blobs,
            synced_blobs: Default::default(),
            sync_failed: Default::default(),
            reserve,
            opened: std::time::Instant::now(),
            room_checked_ms: AtomicU64::new(0),
        };
        match store.reserve.ensure(|| store.free_bytes()) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                dir = %dir.display(),
                "the disk is full: no room for the disk reserve ({RESERVE_BYTES} bytes), so new data is \
                 refused until space is freed (rep rm, or outside the pool)"
            ),
            Err(e) => tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "cannot write the disk reserve; new data is refused until it can be written"
            ),
        }
        Ok(store)
    }

    fn free_bytes(&self) -> io::Result<u64> {
        reserve::free_bytes(&self.data_dir)
    }

    /// Refuses new data (disk full) unless the reserve is in place (putting it back if there is
    /// room again) and `size` bytes fit beside it with the margin.
    fn check_room(&self, size: u64) -> StoreResult<()> {
        let op = || format!("store {size} bytes of new data in {}", self.data.display());
        let free = || self.free_bytes().map_err(|e| StoreError::new(op(), e));
        if !self.reserve.ensure(|| self.free_bytes()).map_err(|e| StoreError::new(op(), e))? {
            return Err(StoreError::new(
                format!(
                    "{}: the file system is full and the disk reserve is released; free space first \
                     (it needs {} bytes free)",
                    op(),
                    RESERVE_BYTES + MARGIN_BYTES
                ),
                reserve::no_space(),
            ));
        }
        let free = free()?;
        if free < size.saturating_add(MARGIN_BYTES) {
            return Err(StoreError::new(
                format!(
                    "{}: the file system has only {free} bytes free, and the pool keeps {MARGIN_BYTES} of them for \
                     its metadata",
                    op()
                ),
                reserve::no_space(),
            ));
        }
        Ok(())
    }

    /// Before a metadata write: if the file system is almost full (another writer filled it),
    /// releases the reserve now, because sled refuses every write after one that failed for
    /// lack of space, until it is opened again.
    /// A record write looks at most every [`ROOM_CHECK_EVERY`] (a batch writes hundreds); a
    /// flush always does.
    fn keep_room_for_metadata(&self, always: bool) {
        if !self.reserve.is_present() {
            return;
        }
        if !always {
            let now = self.opened.elapsed().as_millis() as u64;
            let last = self.room_checked_ms.load(Ordering::Relaxed);
            if now < last + ROOM_CHECK_EVERY.as_millis() as u64 {
                return;
            }
            self.room_checked_ms.store(now, Ordering::Relaxed);
        }
        if self.free_bytes().is_ok_and(|free| free < MARGIN_BYTES) {
            self.reserve.release("the file system is almost full before a metadata write");
        }
    }

    /// Passes `result` on; a disk-full error first releases the reserve, so that the metadata
    /// can still be written.
    fn watch<T>(&self, what: &str, result: StoreResult<T>) -> StoreResult<T> {
        if let Err(e) = &result
            && e.is_disk_full()
        {
            self.reserve.release(what);
        }
        result
    }

    /// sled's flush, then a real sync of what it wrote: `fdatasync` of its log file (which
    /// also makes the device flush its volatile write cache on file systems with barriers, the
    /// default on ext4 and XFS), and of the blob files and their directory if sled wrote any
    /// (only values over about 128 KiB go there; the records never do).
    ///
    /// A failed sync is final: the kernel may have dropped the pages it could not write, so a
    /// later sync that succeeds proves nothing about them. Every later flush fails too, and
    /// nothing more is acknowledged until the pool restarts and sled reads its log again.
    fn flush_and_sync(&self) -> StoreResult<()> {
        if let Some(first) = self.sync_failed.lock().as_ref() {
            return Err(StoreError::new(
                "flush metadata",
                io::Error::other(format!(
                    "an earlier sync of the metadata failed ({first}); nothing more is acknowledged until the pool \
                     restarts"
                )),
            ));
        }
        self.db.flush().map_err(|e| io_err("flush metadata", e))?;
        let sync_err = |what: &Path, e: rustix::io::Errno| {
            let err = StoreError::new(format!("sync {}", what.display()), e.into());
            tracing::error!(error = %err, "a sync of the metadata failed: this pool acknowledges nothing more until it restarts");
            *self.sync_failed.lock() = Some(err.to_string());
            err
        };
        rustix::fs::fdatasync(&self.log).map_err(|e| sync_err(&self.blobs.with_file_name("db"), e))?;
        match fs::read_dir(&self.blobs) {
            Ok(entries) => {
                let mut any = false;
                let mut synced = self.synced_blobs.lock();
                for entry in entries {
                    let entry = entry.map_err(|e| StoreError::new(format!("list {}", self.blobs.display()), e))?;
                    if synced.contains(&entry.file_name()) {
                        continue;
                    }
                    let path = entry.path();
                    // sled deletes blobs it no longer needs, in the background.
                    let file = match File::open(&path) {
                        Ok(file) => file,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(StoreError::new(format!("open {}", path.display()), e)),
                    };
                    rustix::fs::fdatasync(&file).map_err(|e| sync_err(&path, e))?;
                    any = true;
                    synced.insert(entry.file_name());
                }
                if any {
                    let dir = File::open(&self.blobs)
                        .map_err(|e| StoreError::new(format!("open {}", self.blobs.display()), e))?;
                    if let Err(e) = rustix::fs::fsync(&dir) {
                        // Their names are not durable yet: sync them again next time.
                        synced.clear();
                        return Err(sync_err(&self.blobs, e));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::new(format!("list {}", self.blobs.display()), e)),
        }
        Ok(())
    }

    fn data_path(&self, id: &PnfsId) -> PathBuf {
        self.data.join(id.to_string())
    }

    fn incoming_path(&self, id: &PnfsId) -> PathBuf {
        self.incoming.join(id.to_string())
    }

    /// Creates (truncating) the incoming file of `id`.
    fn create_incoming_file(&self, id: &PnfsId) -> StoreResult<(File, PathBuf)> {
        let path = self.incoming_path(id);
        match OpenOptions::new().write(true).create(true).truncate(true).open(&path) {
            Ok(file) => Ok((file, path)),
            Err(e) => Err(StoreError::new(format!("create {}", path.display()), e)),
        }
    }
}

/// Opens sled in `dir/meta`, waiting a bounded time for a lock left by an earlier open in this
/// process.
fn open_db(dir: &Path) -> StoreResult<sled::Db> {
    let config = sled::Config::new().path(dir.join("meta")).cache_capacity(SLED_CACHE_BYTES).flush_every_ms(Some(1000));
    // sled releases its lock file from a background thread after the last handle of a
    // previous open in this process is dropped; wait a bounded time for that.
    let mut attempts = 0;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            // sled tells a held lock from other failures only in its message (its kind is
            // `Other`): a text comparison on a dependency's error, the only way to tell.
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if attempts >= LOCK_WAITS {
                    return Err(StoreError::new(
                        format!("open metadata in {} (is another pool using it?)", dir.display()),
                        e,
                    ));
                }
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => {
                let e = io_err(format!("open metadata in {}", dir.display()), e);
                if e.is_disk_full() {
                    return Err(StoreError::new(
                        format!(
                            "open metadata in {}: the disk is full, and the metadata needs room to open; free \
                             space on that file system ({} bytes are enough)",
                            dir.display(),
                            RESERVE_BYTES
                        ),
                        e.source,
                    ));
                }
                return Err(e);
            }
        }
    }
}

struct FileWriter {
    file: io::BufWriter<IncomingFile>,
    reserve: Arc<Reserve>,
}

impl FileWriter {
    fn watch(&self, result: io::Result<()>) -> io::Result<()> {
        if let Err(e) = &result
            && reserve::is_disk_full(e)
        {
            self.reserve.release("writing data failed");
        }
        result
    }
}

impl DataWrite for FileWriter {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let r = self.file.write_all(data);
        self.watch(r)
    }

    fn finish(&mut self) -> io::Result<()> {
        let r = self.file.flush();
        self.watch(r)
    }
}

/// `RWF_DONTCACHE` (Linux 6.14, "uncached buffered I/O"; not among rustix's named flags yet):
/// buffered I/O whose pages leave the page cache once used. A read drops the pages it brought
/// in (pages that were cached before stay); a write starts writing its pages back at once and
/// drops them once written. A kernel or file system without it answers `EOPNOTSUPP`.
const RWF_DONTCACHE: u32 = 0x80;

fn dontcache() -> ReadWriteFlags {
    ReadWriteFlags::from_bits_retain(RWF_DONTCACHE)
}

/// Writes to an incoming file before this offset are plain, later ones uncached: a small
/// replica is written back by its batch's `syncfs` together with the others, only the data of
/// a large one is worth writing back as it arrives.
const UNCACHED_FROM: u64 = 1024 * 1024;

/// An incoming data file. Past its first MiB its data is written with `RWF_DONTCACHE`, so
/// write-back starts while the rest is still arriving: the disk writes during the transfer
/// (instead of after it, in the commit), the commit's `syncfs` finds little left to write, and
/// a large transfer leaves no pile of dirty pages in the page cache (its pages are reused for
/// the data that follows). Durability is unchanged: nothing is acknowledged before the
/// commit's `syncfs`, which also reports a failed early write-back (the data area's descriptor
/// sees every write-back error since the previous sync).
struct IncomingFile {
    file: File,
    written: u64,
    /// Cleared if the kernel or the file system does not know `RWF_DONTCACHE`.
    uncached: bool,
}

impl Write for IncomingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let uncached = self.uncached && self.written >= UNCACHED_FROM;
        let flags = if uncached { dontcache() } else { ReadWriteFlags::empty() };
        // Offset -1: at the file's position, which advances, as with `write`.
        let n = match rustix::io::pwritev2(&self.file, &[io::IoSlice::new(buf)], u64::MAX, flags) {
            Err(rustix::io::Errno::OPNOTSUPP) if uncached => {
                self.uncached = false;
                return self.write(buf);
            }
            r => r?,
        };
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A data file read for another pool or a verification, with `RWF_DONTCACHE`: a pool being
/// drained does not fill its page cache with replicas that leave it (nor evict what its
/// clients read), and the pages are reused for the next reads. No buffer: its readers take
/// a MiB at a time.
struct UncachedRead {
    file: File,
    /// Cleared if the kernel or the file system does not know `RWF_DONTCACHE`.
    uncached: bool,
}

impl io::Read for UncachedRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let flags = if self.uncached { dontcache() } else { ReadWriteFlags::empty() };
        // Offset -1: at the file's position, which advances, as with `read`.
        match rustix::io::preadv2(&self.file, &mut [io::IoSliceMut::new(buf)], u64::MAX, flags) {
            Err(rustix::io::Errno::OPNOTSUPP) if self.uncached => {
                self.uncached = false;
                self.read(buf)
            }
            r => Ok(r?),
        }
    }
}

impl io::Seek for UncachedRead {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        io::Seek::seek(&mut self.file, pos)
    }
}

fn list_dir(dir: &Path) -> StoreResult<Vec<String>> {
    let op = || format!("list {}", dir.display());
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StoreError::new(op(), e))? {
        let entry = entry.map_err(|e| StoreError::new(op(), e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

fn remove_file_if_present(path: &Path) -> StoreResult<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::new(format!("remove {}", path.display()), e)),
    }
}

impl ReplicaStore for SledStore {
    fn scan_records(&self, visit: &mut RecordVisitor<'_>) -> StoreResult<()> {
        for item in self.records.iter() {
            let (k, v) = item.map_err(|e| io_err("read replica record", e))?;
            if visit(&k, &v).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn get_record(&self, id: &PnfsId) -> StoreResult<Option<Vec<u8>>> {
        self.records
            .get(id.as_bytes())
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| io_err(format!("read record {id}"), e))
    }

    fn put_record(&self, id: &PnfsId, value: &[u8]) -> StoreResult<()> {
        self.keep_room_for_metadata(false);
        self.records.insert(id.as_bytes(), value).map_err(|e| io_err(format!("write record {id}"), e))?;
        Ok(())
    }

    fn delete_record(&self, id: &PnfsId) -> StoreResult<()> {
        self.keep_room_for_metadata(false);
        self.records.remove(id.as_bytes()).map_err(|e| io_err(format!("delete record {id}"), e))?;
        Ok(())
    }

    /// Makes every record write so far durable (`flush_and_sync`), keeping room for it on a
    /// nearly full disk.
    fn flush(&self) -> StoreResult<()> {
        self.keep_room_for_metadata(true);
        let r = self.flush_and_sync();
        self.watch("flushing the metadata failed", r)
    }

    fn get_meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.meta.get(key).map(|v| v.map(|v| v.to_vec())).map_err(|e| io_err(format!("read setting {key}"), e))
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> StoreResult<()> {
        self.keep_room_for_metadata(true);
        self.meta.insert(key, value).map_err(|e| io_err(format!("write setting {key}"), e))?;
        Ok(())
    }

    fn put_hold(&self, id: &PnfsId, value: &[u8]) -> StoreResult<()> {
        self.keep_room_for_metadata(false);
        self.holds.insert(id.as_bytes(), value).map_err(|e| io_err(format!("write hold {id}"), e))?;
        Ok(())
    }

    fn delete_hold(&self, id: &PnfsId) -> StoreResult<()> {
        self.keep_room_for_metadata(false);
        self.holds.remove(id.as_bytes()).map_err(|e| io_err(format!("delete hold {id}"), e))?;
        Ok(())
    }

    fn scan_holds(&self) -> StoreResult<Vec<(PnfsId, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.holds.iter() {
            let (key, value) = item.map_err(|e| io_err("read holds", e))?;
            // A key that names no replica is no hold of ours: skipped.
            if let Ok(id) = PnfsId::from_bytes(&key) {
                out.push((id, value.to_vec()));
            }
        }
        Ok(out)
    }

    fn room_for(&self, size: u64) -> StoreResult<()> {
        self.check_room(size)
    }

    fn create_incoming(&self, id: &PnfsId) -> StoreResult<Box<dyn DataWrite>> {
        self.check_room(0)?;
        let (file, _) = self.watch("creating a data file failed", self.create_incoming_file(id))?;
        let file = IncomingFile { file, written: 0, uncached: true };
        Ok(Box::new(FileWriter { file: io::BufWriter::with_capacity(256 * 1024, file), reserve: self.reserve.clone() }))
    }

    /// One `open`, one `write`, no buffer: a small replica's whole content.
    fn put_incoming(&self, id: &PnfsId, data: &[u8]) -> StoreResult<()> {
        self.check_room(data.len() as u64)?;
        let (mut file, path) = self.watch("creating a data file failed", self.create_incoming_file(id))?;
        let r = file.write_all(data).map_err(|e| StoreError::new(format!("write {}", path.display()), e));
        self.watch("writing data failed", r)
    }

    fn remove_incoming(&self, id: &PnfsId) -> StoreResult<()> {
        remove_file_if_present(&self.incoming_path(id))
    }

    fn list_incoming(&self) -> StoreResult<Vec<String>> {
        list_dir(&self.incoming)
    }

    fn remove_incoming_name(&self, name: &str) -> StoreResult<()> {
        remove_file_if_present(&self.incoming.join(name))
    }

    fn publish(&self, id: &PnfsId) -> StoreResult<()> {
        let from = self.incoming_path(id);
        let to = self.data_path(id);
        let r = fs::rename(&from, &to).map_err(|e| StoreError::new(format!("move {} into data", from.display()), e));
        self.watch("moving data into place failed", r)
    }

    /// One `syncfs` of the file system holding the data area: the data of every file written
    /// and renamed so far, and the directory entries, reach the disk in one call. `incoming/`
    /// and `data/` are siblings, so they share the file system.
    fn sync_data(&self) -> StoreResult<()> {
        let r = rustix::fs::syncfs(&self.data_dir)
            .map_err(|e| StoreError::new(format!("sync {}", self.data.display()), e.into()));
        self.watch("syncing data failed", r)
    }

    fn open_data(&self, id: &PnfsId) -> StoreResult<DataRead> {
        let path = self.data_path(id);
        let file = File::open(&path).map_err(|e| StoreError::new(format!("open {}", path.display()), e))?;
        Ok(Box::new(io::BufReader::with_capacity(256 * 1024, file)))
    }

    fn open_data_uncached(&self, id: &PnfsId) -> StoreResult<DataRead> {
        let path = self.data_path(id);
        let file = File::open(&path).map_err(|e| StoreError::new(format!("open {}", path.display()), e))?;
        Ok(Box::new(UncachedRead { file, uncached: true }))
    }

    /// The file itself (it is read whole: no buffer), with `POSIX_FADV_WILLNEED`, which starts
    /// reading it into the page cache without waiting.
    fn open_data_ahead(&self, id: &PnfsId) -> StoreResult<DataRead> {
        let path = self.data_path(id);
        let file = File::open(&path).map_err(|e| StoreError::new(format!("open {}", path.display()), e))?;
        // Only a hint: a failure changes nothing but speed.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::WillNeed);
        Ok(Box::new(file))
    }

    fn remove_data(&self, id: &PnfsId) -> StoreResult<()> {
        remove_file_if_present(&self.data_path(id))
    }

    fn mark_failed(&self, id: &PnfsId) -> StoreResult<()> {
        let (from, to) = (self.data_path(id), self.data.join(failed_mark_name(id)));
        fs::rename(&from, &to).map_err(|e| StoreError::new(format!("mark {} as failed", from.display()), e))?;
        // Emptying frees the space; the mark is the name alone.
        if let Err(e) = OpenOptions::new().write(true).open(&to).and_then(|f| f.set_len(0)) {
            tracing::warn!(file = %to.display(), error = %e, "could not empty the mark of a failed commit");
        }
        Ok(())
    }

    fn remove_failed_mark(&self, id: &PnfsId) -> StoreResult<()> {
        remove_file_if_present(&self.data.join(failed_mark_name(id)))
    }

    fn remove_data_name(&self, name: &str) -> StoreResult<()> {
        remove_file_if_present(&self.data.join(name))
    }

    fn quarantine_data(&self, name: &str) -> StoreResult<()> {
        fs::create_dir_all(&self.quarantine)
            .map_err(|e| StoreError::new(format!("create {}", self.quarantine.display()), e))?;
        let (from, to) = (self.data.join(name), self.quarantine.join(name));
        fs::rename(&from, &to).map_err(|e| StoreError::new(format!("move {} into quarantine", from.display()), e))
    }

    fn scan_data(&self, visit: &mut dyn FnMut(&str)) -> StoreResult<()> {
        let op = || format!("list {}", self.data.display());
        for entry in fs::read_dir(&self.data).map_err(|e| StoreError::new(op(), e))? {
            let entry = entry.map_err(|e| StoreError::new(op(), e))?;
            visit(&entry.file_name().to_string_lossy());
        }
        Ok(())
    }
}
