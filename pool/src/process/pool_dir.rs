//! The pool directory (`data_dir`) and its marker, `<data_dir>/.tidepool-pool`.
//!
//! A pool never creates its data directory at start: a disk that is not mounted must not become
//! a live, empty pool on the root file system. `tidepool init` creates the directory and writes
//! the marker, which names the pool and the directory's format version. At start (and in
//! `tidepool pool --check`) [`inspect`] decides:
//!
//! | the directory | verdict |
//! |---|---|
//! | holds a marker for this pool | [`DirState::Marked`]: starts |
//! | holds no marker but pool metadata (`meta/`), from before markers | [`DirState::Unmarked`]: starts, and the daemon writes the marker ([`mark`]) |
//! | does not exist | [`DirError::Missing`]: refused, `tidepool init` creates it |
//! | exists without marker or metadata (an empty mount point, say) | [`DirError::NotAPool`]: refused, `tidepool init` marks it |
//! | holds another pool's marker | [`DirError::OtherPool`]: refused, and `init` refuses it too |
//! | holds a marker of a newer format, or one that does not parse | [`DirError::Marker`]: refused |
//!
//! The marker is a small TOML file, written whole (a temporary file, synced, renamed, and the
//! directory synced), so a crash leaves either no marker or a complete one.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tidepool_p2p::PoolName;

/// The marker's file name inside the data directory.
pub const MARKER: &str = ".tidepool-pool";
/// The format version this build writes and understands.
pub const FORMAT: u32 = 1;
/// The directory that holds the pool's metadata (sled); its presence marks a pool directory
/// from before markers existed.
const METADATA: &str = "meta";

/// The marker's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    /// The pool this directory belongs to.
    pub pool: PoolName,
    /// The layout version of the directory.
    pub format: u32,
}

/// A data directory a pool may start in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    /// Marked for this pool.
    Marked,
    /// Pool metadata without a marker: a pool directory from before markers existed. The daemon
    /// writes the marker at start.
    Unmarked,
}

/// Why a pool may not start in (or `init` may not mark) a directory.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error(
        "data_dir {} does not exist (a pool never creates it at start, so that a disk that is not mounted never becomes an empty pool)",
        .0.display()
    )]
    Missing(PathBuf),
    #[error(
        "data_dir {} is not a pool directory (no {MARKER} marker, no pool metadata): perhaps a mount point whose disk is not mounted",
        .0.display()
    )]
    NotAPool(PathBuf),
    #[error("data_dir {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("data_dir {} belongs to pool {found} (its {MARKER} marker says so), not to {expected}", .dir.display())]
    OtherPool { dir: PathBuf, found: PoolName, expected: PoolName },
    #[error("{}: {why}", .path.display())]
    Marker { path: PathBuf, why: String },
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl DirError {
    /// Whether `tidepool init` is the way out.
    pub fn needs_init(&self) -> bool {
        matches!(self, DirError::Missing(_) | DirError::NotAPool(_))
    }
}

/// What [`init`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initialised {
    /// Created the directory and marked it.
    Created,
    /// Marked an existing directory that held no pool.
    MarkedEmpty,
    /// Marked an existing pool directory from before markers (its replicas are kept).
    MarkedExisting,
    /// The directory was already marked for this pool; nothing changed.
    AlreadyMarked,
}

/// Reads the marker of `dir`, if there is one.
pub fn read_marker(dir: &Path) -> Result<Option<Marker>, DirError> {
    let path = dir.join(MARKER);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(DirError::Io { what: "read", path, source }),
    };
    let marker: Marker =
        toml::from_str(&text).map_err(|e| DirError::Marker { path: path.clone(), why: e.to_string() })?;
    if marker.format > FORMAT {
        return Err(DirError::Marker {
            path,
            why: format!(
                "format {} was written by a newer tidepool (this one knows format {FORMAT} only)",
                marker.format
            ),
        });
    }
    Ok(Some(marker))
}

/// Decides whether pool `name` may start in `dir` (see the module's table). Reads only.
pub fn inspect(dir: &Path, name: &PoolName) -> Result<DirState, DirError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(DirError::NotADirectory(dir.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(DirError::Missing(dir.to_path_buf())),
        Err(source) => return Err(DirError::Io { what: "look at", path: dir.to_path_buf(), source }),
    }
    match read_marker(dir)? {
        Some(marker) if &marker.pool == name => Ok(DirState::Marked),
        Some(marker) => Err(DirError::OtherPool { dir: dir.to_path_buf(), found: marker.pool, expected: name.clone() }),
        None if dir.join(METADATA).is_dir() => Ok(DirState::Unmarked),
        None => Err(DirError::NotAPool(dir.to_path_buf())),
    }
}

/// `tidepool init`: creates `dir` if needed (with its parents) and marks it for pool `name`.
/// Refuses a directory marked for another pool, or with a marker it cannot read.
pub fn init(dir: &Path, name: &PoolName) -> Result<Initialised, DirError> {
    let done = match inspect(dir, name) {
        Ok(DirState::Marked) => return Ok(Initialised::AlreadyMarked),
        Ok(DirState::Unmarked) => Initialised::MarkedExisting,
        Err(DirError::Missing(_)) => {
            fs::create_dir_all(dir).map_err(|source| DirError::Io {
                what: "create",
                path: dir.to_path_buf(),
                source,
            })?;
            Initialised::Created
        }
        Err(DirError::NotAPool(_)) => Initialised::MarkedEmpty,
        Err(e) => return Err(e),
    };
    mark(dir, name)?;
    Ok(done)
}

/// Writes the marker for pool `name` into the existing directory `dir`, durably.
pub fn mark(dir: &Path, name: &PoolName) -> Result<(), DirError> {
    let marker = Marker { pool: name.clone(), format: FORMAT };
    let text = format!(
        "# A Tidepool pool directory, marked by `tidepool init`. A pool starts only in a directory\n\
         # marked with its name, so that a disk that is not mounted never becomes an empty pool.\n{}",
        toml::to_string(&marker).map_err(|e| DirError::Marker { path: dir.join(MARKER), why: e.to_string() })?
    );
    let tmp = dir.join(format!("{MARKER}.tmp"));
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| DirError::Io { what, path, source }
    };
    let mut file = fs::File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("sync", &tmp))?;
    drop(file);
    let path = dir.join(MARKER);
    fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> PoolName {
        s.parse().unwrap()
    }

    #[test]
    fn a_pool_starts_only_in_a_directory_marked_for_it_or_holding_metadata() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pool1");
        let pool1 = name("pool1");
        assert!(matches!(inspect(&dir, &pool1), Err(DirError::Missing(_))));
        fs::create_dir(&dir).unwrap();
        let empty = inspect(&dir, &pool1).unwrap_err();
        assert!(matches!(empty, DirError::NotAPool(_)) && empty.needs_init(), "{empty}");
        // Files that are not pool metadata (lost+found on a fresh file system) change nothing.
        fs::create_dir(dir.join("lost+found")).unwrap();
        assert!(matches!(inspect(&dir, &pool1), Err(DirError::NotAPool(_))));
        fs::create_dir(dir.join("meta")).unwrap();
        assert_eq!(inspect(&dir, &pool1).unwrap(), DirState::Unmarked);
        mark(&dir, &pool1).unwrap();
        assert_eq!(inspect(&dir, &pool1).unwrap(), DirState::Marked);
        assert!(!dir.join(format!("{MARKER}.tmp")).exists());
        let other = inspect(&dir, &name("pool2")).unwrap_err();
        assert!(!other.needs_init());
        assert_eq!(
            other.to_string(),
            format!("data_dir {} belongs to pool pool1 (its {MARKER} marker says so), not to pool2", dir.display())
        );
        let file = root.path().join("file");
        fs::write(&file, "x").unwrap();
        assert!(matches!(inspect(&file, &pool1), Err(DirError::NotADirectory(_))));
    }

    #[test]
    fn init_creates_marks_and_never_takes_another_pools_directory() {
        let root = tempfile::tempdir().unwrap();
        let (pool1, pool2) = (name("pool1"), name("pool2"));
        let dir = root.path().join("disk").join("pool1");
        assert_eq!(init(&dir, &pool1).unwrap(), Initialised::Created);
        assert_eq!(read_marker(&dir).unwrap(), Some(Marker { pool: pool1.clone(), format: FORMAT }));
        assert_eq!(init(&dir, &pool1).unwrap(), Initialised::AlreadyMarked);
        let refused = init(&dir, &pool2).unwrap_err();
        assert!(matches!(refused, DirError::OtherPool { .. }), "{refused}");
        assert_eq!(read_marker(&dir).unwrap().unwrap().pool, pool1, "the marker is left alone");

        let empty = root.path().join("mnt");
        fs::create_dir(&empty).unwrap();
        assert_eq!(init(&empty, &pool2).unwrap(), Initialised::MarkedEmpty);
        let old = root.path().join("old");
        fs::create_dir_all(old.join("meta")).unwrap();
        assert_eq!(init(&old, &pool2).unwrap(), Initialised::MarkedExisting);
        assert_eq!(inspect(&old, &pool2).unwrap(), DirState::Marked);
    }

    #[test]
    fn markers_from_newer_versions_or_garbled_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let pool1 = name("pool1");
        fs::write(root.path().join(MARKER), "pool = \"pool1\"\nformat = 2\n").unwrap();
        let newer = inspect(root.path(), &pool1).unwrap_err().to_string();
        assert!(newer.contains("newer tidepool"), "{newer}");
        assert!(init(root.path(), &pool1).is_err());
        fs::write(root.path().join(MARKER), "garbage").unwrap();
        assert!(matches!(inspect(root.path(), &pool1), Err(DirError::Marker { .. })));
    }
}
