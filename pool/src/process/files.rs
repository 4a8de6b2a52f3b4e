//! The files named on the command line: the pool's config, the cluster file and the
//! credentials (read and checked; new private keys are written with mode 0600).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use tidepool_p2p::cluster::ClusterFile;
use tidepool_p2p::tls::{Credentials, EXPIRY_WARNING, TlsFiles};

use super::config::PoolConfig;

pub fn read_cluster(path: &Path) -> anyhow::Result<ClusterFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read cluster file {}", path.display()))?;
    ClusterFile::parse(&text).map_err(|e| anyhow::anyhow!("cluster file {}: {e}", path.display()))
}

/// Loads a side's credentials, warning about a private key that others can read.
pub fn read_credentials(files: &TlsFiles) -> anyhow::Result<Credentials> {
    warn_if_key_readable(&files.key);
    let creds = Credentials::load(files).map_err(|e| anyhow::anyhow!("credentials: {e}"))?;
    warn_if_expiring(&creds);
    Ok(creds)
}

/// Warns in the log when the private key file `key` can be read by its group or by others
/// (the daemon at start and at each reload, `docs/security.md`).
pub fn warn_if_key_readable(key: &Path) {
    if let Some(warning) = tidepool_p2p::tls::key_mode_warning(key) {
        tracing::warn!("{warning}");
    }
}

/// Reads a file holding a secret (etcd's password, a private key for etcd) named by config
/// key `what`; refused if group or others may read or write it.
pub fn read_secret(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("read {what} {}", path.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{what} {}: group or others may read it (mode {:o}); `chmod 600 {}` (a secret stays the owner's)",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("read {what} {}", path.display()))
}

/// Warns in the log when our certificate expires within [`EXPIRY_WARNING`] (or has).
pub fn warn_if_expiring(creds: &Credentials) {
    let info = creds.info();
    let left = info.not_after - now_secs();
    if left < EXPIRY_WARNING.as_secs() as i64 {
        tracing::warn!(
            identity = %info.identity,
            days_left = left / 86_400,
            "our certificate expires soon (or has): issue a new one and reload (docs/security.md)"
        );
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Writes a new file with `mode`; refuses to overwrite one.
pub fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {} (an existing file is never overwritten)", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

pub fn read_config(path: &Path) -> anyhow::Result<PoolConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read config {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    PoolConfig::parse(&text, base).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn new_files_get_their_mode_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.key");
        write_new(&path, "secret", 0o600).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(write_new(&path, "other", 0o600).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "secret", "an existing file is left alone");
    }

    #[test]
    fn a_secret_others_may_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.password");
        std::fs::write(&path, "pw\n").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false), (0o620, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            match read_secret(&path, "membership.password_file") {
                Ok(bytes) => assert!(ok && bytes == b"pw\n", "{mode:o}"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(!ok, "{mode:o}: {e}");
                    assert!(e.starts_with("membership.password_file ") && e.contains("chmod 600"), "{e}");
                }
            }
        }
        assert!(read_secret(&dir.path().join("none"), "membership.key_file").is_err());
    }
}
