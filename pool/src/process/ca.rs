//! `tidepool ca init` and `tidepool ca issue`: a small cluster CA for sites without their own
//! (`docs/security.md`, "Setting up credentials"). The folder holds `ca.crt` (the trust anchor
//! every pool, shell and client lists), `ca.key` (mode 0600; keep it off the pools if you can),
//! and one `<name>.<role>.crt` / `<name>.<role>.key` pair per issued credential.

use std::path::Path;

use anyhow::Context;
use tidepool_p2p::tls::{Authority, Role, TlsFiles};

use super::files::write_new;

/// How long a new CA is valid.
pub const CA_DAYS: i64 = 3650;
/// How long an issued certificate is valid unless `--days` says otherwise.
pub const DEFAULT_DAYS: u32 = 365;

/// Creates `dir` (if needed) with a new CA in it; refuses to replace one.
pub fn init(dir: &Path) -> anyhow::Result<Authority> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let name = format!("Tidepool cluster CA ({})", dir.file_name().map_or("".into(), |n| n.to_string_lossy()));
    let ca = Authority::new(&name, time::OffsetDateTime::now_utc() + time::Duration::days(CA_DAYS))?;
    write_new(&dir.join("ca.key"), &ca.key_pem(), 0o600)?;
    write_new(&dir.join("ca.crt"), &ca.cert_pem(), 0o644)?;
    Ok(ca)
}

/// The CA in `dir`.
pub fn open(dir: &Path) -> anyhow::Result<Authority> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path)
            .with_context(|| format!("read {} (`tidepool ca init {}` makes a CA)", path.display(), dir.display()))
    };
    Ok(Authority::from_pem(&read("ca.crt")?, &read("ca.key")?)?)
}

/// Issues a credential for `name` with `role` from `ca` into `dir`; returns the files.
pub fn issue_into(ca: &Authority, dir: &Path, role: Role, name: &str, days: u32) -> anyhow::Result<TlsFiles> {
    if name.contains('/') || name.starts_with('.') {
        anyhow::bail!("--name {name:?}: expected a name without '/' and not starting with '.'");
    }
    if days == 0 {
        anyhow::bail!("--days 0: expected at least 1 day");
    }
    // Nothing outlives its CA: a certificate valid past the CA's expiry would stop working then
    // anyway, without saying so in its own dates.
    let now = time::OffsetDateTime::now_utc();
    let ca_end = ca.not_after();
    if now.checked_add(time::Duration::days(days.into())).is_none_or(|end| end > ca_end) {
        let d = ca_end.date();
        anyhow::bail!(
            "--days {days}: the certificate would outlive the CA, which expires on {:04}-{:02}-{:02}; \
             expected at most {} days (or make a new CA, docs/security.md, \"Rotation\")",
            d.year(),
            u8::from(d.month()),
            d.day(),
            (ca_end - now).whole_days().max(0)
        );
    }
    let issued = ca.issue(role, name, days)?;
    let files = TlsFiles::in_dir(dir, role, name);
    write_new(&files.key, &issued.key_pem, 0o600)?;
    write_new(&files.cert, &issued.cert_pem, 0o644)?;
    Ok(files)
}

/// `tidepool ca init DIR`.
pub fn run_init(dir: &Path) -> anyhow::Result<()> {
    init(dir)?;
    println!(
        "wrote a new CA to {}/ca.crt (copy it to every pool host, shell and client) and {}/ca.key (mode 0600; keep it safe)",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// `tidepool ca issue --role R --name N [--days D] DIR`.
pub fn run_issue(dir: &Path, role: Role, name: &str, days: u32) -> anyhow::Result<()> {
    let ca = open(dir)?;
    let files = issue_into(&ca, dir, role, name, days)?;
    println!("issued {role}:{name} for {days} days: {} and {} (mode 0600)", files.cert.display(), files.key.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use tidepool_p2p::tls::Credentials;

    use super::*;

    #[test]
    fn a_ca_issues_credentials_that_load_and_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        assert!(init(dir.path()).is_err(), "an existing CA is never replaced");
        let ca = open(dir.path()).unwrap();
        let files = issue_into(&ca, dir.path(), Role::Admin, "alice", 30).unwrap();
        let creds = Credentials::load(&files).unwrap();
        assert_eq!(creds.identity().to_string(), "admin:alice");
        assert!(issue_into(&ca, dir.path(), Role::Admin, "alice", 30).is_err(), "never overwritten");
        assert!(issue_into(&ca, dir.path(), Role::Admin, "../x", 30).is_err());
    }

    /// `--days` past the CA's own expiry is refused with the CA's date, huge values included.
    #[test]
    fn a_certificate_never_outlives_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init(dir.path()).unwrap();
        let d = ca.not_after().date();
        let date = format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day());
        for days in [CA_DAYS as u32 + 1, 100_000, u32::MAX] {
            let err = issue_into(&ca, dir.path(), Role::Client, "bob", days).unwrap_err().to_string();
            assert!(err.contains(&format!("the CA, which expires on {date}")), "{days}: {err}");
            assert!(!dir.path().join("bob.client.crt").exists(), "nothing written");
        }
        let files = issue_into(&ca, dir.path(), Role::Client, "bob", CA_DAYS as u32 - 1).unwrap();
        assert!(Credentials::load(&files).is_ok());
        // The CA read back from its files knows its expiry too.
        assert_eq!(open(dir.path()).unwrap().not_after().date(), d);
    }
}
