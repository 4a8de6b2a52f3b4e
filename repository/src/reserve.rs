//! The disk reserve: a file of [`RESERVE_BYTES`] in the pool's directory (`<data_dir>/reserve`)
//! that keeps room on the file system for the metadata store. sled needs free space to open
//! (it rewrites the tail of its log) and to write anything; once one of its writes fails for
//! lack of space it refuses every later one until it is opened again. So a pool whose disk
//! filled up could neither start nor free space (docs/durability.md, "A full disk").
//!
//! The rules:
//! - new data is accepted only while the reserve is in place and, beyond it, the file system
//!   has room for the new replica and [`MARGIN_BYTES`] more;
//! - the reserve is released (deleted, and logged) when opening the metadata fails for lack of
//!   space, and when writing data does: the metadata then has room for the removals and
//!   flushes that free space;
//! - while it is released, new data is refused (disk full, rc=10005); it is put back, and
//!   logged, as soon as the file system has room for it and the margin again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// The size of the reserve file. sled's log grows in segments of 512 KiB, and opening it may
/// rewrite one; this leaves room for several segments and a snapshot.
pub const RESERVE_BYTES: u64 = 8 << 20;
/// Free space kept beyond the reserve while data is written: the metadata of the commits under
/// way goes there.
pub const MARGIN_BYTES: u64 = 1 << 20;

/// Where the reserve is written before it is renamed into place.
const TMP_NAME: &str = "reserve.tmp";

pub(super) struct Reserve {
    path: PathBuf,
    /// The directory whose file system the reserve is on.
    dir: PathBuf,
    present: AtomicBool,
    /// Serialises putting the reserve back and releasing it.
    change: Mutex<()>,
}

/// The space free to an unprivileged writer on the file system of `dir`.
pub(super) fn free_bytes(dir: &File) -> io::Result<u64> {
    let st = rustix::fs::fstatvfs(dir).map_err(io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// A disk-full error (ENOSPC) for a refusal decided here.
pub(super) fn no_space() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

impl Reserve {
    /// The reserve of the pool in `dir`, as found there: a file of any size counts (one written
    /// by a version with another size is released all the same). A temporary file left by a
    /// crash while the reserve was being written is deleted: it would hold space for nothing.
    pub fn new(dir: &Path) -> Reserve {
        let path = dir.join("reserve");
        let _ = fs::remove_file(dir.join(TMP_NAME));
        let present = path.is_file();
        Reserve { path, dir: dir.to_path_buf(), present: AtomicBool::new(present), change: Mutex::new(()) }
    }

    pub fn is_present(&self) -> bool {
        self.present.load(Ordering::SeqCst)
    }

    /// Releases the reserve, if it is there, because of `why` (for the log: "writing data
    /// failed", ...). Returns whether it was released now.
    pub fn release(&self, why: &str) -> bool {
        let _g = self.change.lock();
        if !self.is_present() {
            return false;
        }
        match fs::remove_file(&self.path) {
            Ok(()) => {
                self.present.store(false, Ordering::SeqCst);
                tracing::error!(
                    reserve = %self.path.display(),
                    bytes = RESERVE_BYTES,
                    "disk full: {why}; released the disk reserve so that the metadata can still be written; new \
                     data is refused until space is freed (rep rm, or outside the pool)"
                );
                true
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.present.store(false, Ordering::SeqCst);
                false
            }
            Err(e) => {
                tracing::error!(reserve = %self.path.display(), error = %e, "could not release the disk reserve");
                false
            }
        }
    }

    /// Whether the reserve is in place; if it is not, puts it back when the file system has
    /// room for it and the margin. `free` is the space free now.
    pub fn ensure(&self, free: impl Fn() -> io::Result<u64>) -> io::Result<bool> {
        if self.is_present() {
            return Ok(true);
        }
        let _g = self.change.lock();
        if self.is_present() {
            return Ok(true);
        }
        if free()? < RESERVE_BYTES + MARGIN_BYTES {
            return Ok(false);
        }
        match self.create() {
            Ok(()) => {
                self.present.store(true, Ordering::SeqCst);
                tracing::info!(
                    reserve = %self.path.display(),
                    bytes = RESERVE_BYTES,
                    "disk reserve in place; new data is accepted"
                );
                Ok(true)
            }
            Err(e) if is_disk_full(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes the reserve file under a temporary name with its blocks allocated, then renames
    /// it into place; on failure nothing is left.
    fn create(&self) -> io::Result<()> {
        let tmp = self.dir.join(TMP_NAME);
        let result = (|| {
            let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, RESERVE_BYTES) {
                Ok(()) => {}
                // A file system without fallocate: real zeros take the space as well.
                Err(rustix::io::Errno::OPNOTSUPP) => {
                    let zeros = vec![0u8; 1 << 20];
                    for _ in 0..RESERVE_BYTES / zeros.len() as u64 {
                        file.write_all(&zeros)?;
                    }
                }
                Err(e) => return Err(io::Error::from(e)),
            }
            file.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

pub(super) fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) || e.kind() == io::ErrorKind::StorageFull
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_released_once_and_comes_back_only_with_room_for_it_and_the_margin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reserve");
        let r = Reserve::new(dir.path());
        assert!(!r.is_present(), "a new pool has none yet");
        let enough = RESERVE_BYTES + MARGIN_BYTES;
        assert!(!r.ensure(|| Ok(enough - 1)).unwrap(), "not put back without room for it and the margin");
        assert!(!path.exists());
        assert!(r.ensure(|| Ok(enough)).unwrap());
        assert_eq!(fs::metadata(&path).unwrap().len(), RESERVE_BYTES);
        assert!(!dir.path().join("reserve.tmp").exists());
        // Present: nothing to look at.
        assert!(r.ensure(|| -> io::Result<u64> { panic!("free space is not needed") }).unwrap());
        assert!(Reserve::new(dir.path()).is_present(), "found again at the next start");

        assert!(r.release("a test"));
        assert!(!path.exists() && !r.is_present());
        assert!(!r.release("a test"), "released once");
        assert!(!Reserve::new(dir.path()).is_present());
        assert!(r.ensure(|| Ok(u64::MAX)).unwrap() && path.exists(), "back once there is room");

        // A crash while it was written leaves a temporary file, gone at the next start; a
        // reserve of another size still counts (and can be released).
        fs::write(dir.path().join(TMP_NAME), b"partial").unwrap();
        fs::write(&path, b"small").unwrap();
        let r = Reserve::new(dir.path());
        assert!(!dir.path().join(TMP_NAME).exists());
        assert!(r.is_present() && r.release("a test") && !path.exists());
    }

    #[test]
    fn disk_full_errors() {
        assert!(is_disk_full(&no_space()));
        assert!(is_disk_full(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(libc::EIO)));
    }
}
