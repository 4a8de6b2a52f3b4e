//! The files named on the command line: the pool's config, the cluster file and the cluster
//! key (read, checked and, for a new key, written with mode 0600).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use tidepool_p2p::auth::ClusterKey;
use tidepool_p2p::cluster::ClusterFile;

use super::config::PoolConfig;

pub fn read_cluster(path: &Path) -> anyhow::Result<ClusterFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read cluster file {}", path.display()))?;
    ClusterFile::parse(&text).map_err(|e| anyhow::anyhow!("cluster file {}: {e}", path.display()))
}

pub fn read_key(path: &Path) -> anyhow::Result<ClusterKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read cluster key file {}", path.display()))?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(file = %path.display(), "cluster key file is readable by others; `chmod 600` it");
    }
    ClusterKey::parse(&text).map_err(|e| anyhow::anyhow!("cluster key file {}: {e}", path.display()))
}

/// Writes a new key file with mode 0600; refuses to overwrite one.
pub fn write_key(path: &Path, key: &ClusterKey) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create key file {} (an existing key is never overwritten)", path.display()))?;
    file.write_all(key.to_file_text().as_bytes())?;
    file.sync_all()?;
    Ok(())
}

pub fn keygen(path: &Path) -> anyhow::Result<()> {
    write_key(path, &ClusterKey::generate()?)?;
    println!("wrote a new cluster key to {} (mode 0600); copy it to every pool host and the shell", path.display());
    Ok(())
}

pub fn read_config(path: &Path) -> anyhow::Result<PoolConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read config {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    PoolConfig::parse(&text, base).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let key = ClusterKey::generate().unwrap();
        write_key(&path, &key).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let before = std::fs::read(&path).unwrap();
        assert!(write_key(&path, &ClusterKey::generate().unwrap()).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before, "an existing key is left alone");
        assert!(read_key(&path).is_ok());
        std::fs::write(dir.path().join("bad.key"), "not a key").unwrap();
        let err = read_key(&dir.path().join("bad.key")).unwrap_err().to_string();
        assert!(err.contains("bad.key") && err.contains("64 hex digits"), "{err}");
    }
}
