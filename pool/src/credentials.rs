//! New credentials for a running pool (`docs/security.md`, "Rotation"): where they are read
//! again from ([`CredentialSource`], set by `tidepool pool`), the pure check they must pass
//! before they replace those in force ([`check`]), what a reload changed ([`CredentialChange`])
//! and why one was refused ([`ReloadRefused`]). SIGHUP and `tls reload` (`admin::tls`) both
//! come here, through `process::cli::apply_credentials`.

use std::future::Future;
use std::pin::Pin;

use tidepool_p2p::ErrorCode;
use tidepool_p2p::tls::{CertInfo, Credentials, Identity};

/// A boxed future of a [`CredentialSource`] (the trait is used as an object).
pub type ReloadFuture<'a> = Pin<Box<dyn Future<Output = Result<CredentialChange, ReloadRefused>> + Send + 'a>>;

/// Where a pool's credentials are read again from: set by `tidepool pool` (the config's
/// `[tls]`); a pool that shares its process (the demo, tests) has none.
pub trait CredentialSource: Send + Sync {
    /// Reads the config's `[tls]` and its files again and puts them in force, or says why not.
    fn reload(&self) -> ReloadFuture<'_>;
}

/// What a reload changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialChange {
    pub identity: Identity,
    /// The expiry (seconds since the epoch) before and after.
    pub expiry: (CertInfo, CertInfo),
    /// The trust anchors in force before and after.
    pub anchors: (usize, usize),
    /// Names the deny list gained and lost.
    pub denied: Vec<String>,
    pub undenied: Vec<String>,
}

impl CredentialChange {
    /// Compares the credentials in force with those about to replace them.
    pub fn between(old: &Credentials, new: &Credentials) -> CredentialChange {
        let (before, after) = (old.deny_list(), new.deny_list());
        CredentialChange {
            identity: new.identity(),
            expiry: (old.info(), new.info()),
            anchors: (old.anchors(), new.anchors()),
            denied: after.iter().filter(|n| !before.contains(n)).cloned().collect(),
            undenied: before.iter().filter(|n| !after.contains(n)).cloned().collect(),
        }
    }

    /// One line per part: identity, expiry, trust anchors, deny list.
    pub fn lines(&self) -> Vec<String> {
        let (old, new) = &self.expiry;
        let expiry = match old.not_after == new.not_after {
            true => format!("expiry: {} (unchanged)", new.expiry_date()),
            false => format!("expiry: {} -> {}", old.expiry_date(), new.expiry_date()),
        };
        let anchors = match self.anchors {
            (a, b) if a == b => format!("trust anchors: {b} (unchanged)"),
            (a, b) => format!("trust anchors: {a} -> {b}"),
        };
        let list = |names: &[String]| if names.is_empty() { "none".to_string() } else { names.join(", ") };
        vec![
            format!("identity: {}", self.identity),
            expiry,
            anchors,
            format!("deny list: added {}; removed {}", list(&self.denied), list(&self.undenied)),
        ]
    }
}

/// Why a reload kept the credentials in force. Each names what to fix; the code is
/// [`ErrorCode::CredentialsRefused`] (`docs/errors.md`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReloadRefused {
    /// The config cannot be read or parsed.
    #[error("{0}")]
    Config(String),
    /// A file of `[tls]` cannot be read or is not what it should be.
    #[error("credentials: {0}")]
    Files(String),
    #[error("the new certificate of {identity} expired on {date}")]
    Expired { identity: Identity, date: String },
    #[error("the new certificate is {new}, not {in_force}")]
    OtherIdentity { new: Identity, in_force: Identity },
    /// A change of CA must add the new anchor before (or with) the certificate it issued.
    #[error(
        "the new certificate of {identity} does not chain to any of the new trust anchors ({why}); \
         add the new CA's certificate to [tls] trust first, or in the same reload"
    )]
    NotTrusted { identity: Identity, why: String },
    /// No source: the pool shares its process (the demo, a test).
    #[error("this pool shares its process (the demo, a test); run it with `tidepool pool` to reload its credentials")]
    NoSource,
}

impl ReloadRefused {
    /// The stable code (`docs/errors.md`).
    pub fn code(&self) -> ErrorCode {
        match self {
            ReloadRefused::NoSource => ErrorCode::InvalidArgument,
            _ => ErrorCode::CredentialsRefused,
        }
    }
}

/// Checks credentials read again before they replace those in force: not expired, the same
/// identity, and a certificate that chains to one of its own new trust anchors. `now` in
/// seconds since the epoch.
pub fn check(in_force: &Credentials, new: &Credentials, now: i64) -> Result<(), ReloadRefused> {
    let info = new.info();
    if info.not_after <= now {
        return Err(ReloadRefused::Expired { date: info.expiry_date(), identity: info.identity });
    }
    if info.identity != in_force.identity() {
        return Err(ReloadRefused::OtherIdentity { new: info.identity, in_force: in_force.identity() });
    }
    new.check_own_chain().map_err(|why| ReloadRefused::NotTrusted { identity: info.identity, why })
}

#[cfg(test)]
mod tests {
    use tidepool_p2p::tls::{Authority, Role, testing};

    use super::*;

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    /// Credentials of pool1 whose certificate is issued by `issuer`, trusting `anchors`.
    fn creds(issuer: &Authority, anchors: &[&Authority], days: i64) -> Credentials {
        let t = time::OffsetDateTime::now_utc();
        let issued = issuer
            .issue_between(Role::Pool, "pool1", t - time::Duration::days(2), t + time::Duration::days(days))
            .unwrap();
        let pems: Vec<String> = anchors.iter().map(|a| a.cert_pem()).collect();
        let trust: Vec<(&str, &[u8])> = pems.iter().map(|p| ("ca", p.as_bytes())).collect();
        Credentials::from_pem(("cert", issued.cert_pem.as_bytes()), ("key", issued.key_pem.as_bytes()), &trust, &[])
            .unwrap()
    }

    /// Each row: the new credentials, and whether a reload puts them in force.
    #[test]
    fn a_reload_takes_only_unexpired_credentials_of_the_same_pool_that_chain_to_their_anchors() {
        let old_ca = testing::authority();
        let new_ca = &Authority::new("new CA", time::OffsetDateTime::now_utc() + time::Duration::days(30)).unwrap();
        let in_force = creds(old_ca, &[old_ca], 10);
        let expired = |e: &Result<(), ReloadRefused>| matches!(e, Err(ReloadRefused::Expired { .. }));
        let other = |e: &Result<(), ReloadRefused>| matches!(e, Err(ReloadRefused::OtherIdentity { .. }));
        let untrusted = |e: &Result<(), ReloadRefused>| matches!(e, Err(ReloadRefused::NotTrusted { .. }));
        let ok = |e: &Result<(), ReloadRefused>| e.is_ok();
        #[allow(clippy::type_complexity)]
        let rows: Vec<(&str, Credentials, &dyn Fn(&Result<(), ReloadRefused>) -> bool)> = vec![
            ("renewed, same CA", creds(old_ca, &[old_ca], 300), &ok),
            ("expired yesterday", creds(old_ca, &[old_ca], -1), &expired),
            ("another pool's", testing::pool("pool2"), &other),
            ("new anchor added first", creds(old_ca, &[old_ca, new_ca], 300), &ok),
            ("new certificate with both anchors", creds(new_ca, &[old_ca, new_ca], 300), &ok),
            ("new certificate, new anchor only", creds(new_ca, &[new_ca], 300), &ok),
            ("new certificate, old anchor only", creds(new_ca, &[old_ca], 300), &untrusted),
            ("old certificate, new anchor only", creds(old_ca, &[new_ca], 300), &untrusted),
        ];
        for (what, new, want) in rows {
            let got = check(&in_force, &new, now());
            assert!(want(&got), "{what}: {got:?}");
        }
    }

    #[test]
    fn the_change_names_expiry_anchors_and_deny_list() {
        let ca = testing::authority();
        let pem = |c: &Authority| c.cert_pem();
        let issued = ca.issue(Role::Pool, "pool1", 5).unwrap();
        let with = |deny: &[String], anchors: &[String]| {
            let trust: Vec<(&str, &[u8])> = anchors.iter().map(|p| ("ca", p.as_bytes())).collect();
            Credentials::from_pem(("c", issued.cert_pem.as_bytes()), ("k", issued.key_pem.as_bytes()), &trust, deny)
                .unwrap()
        };
        let next = Authority::new("next CA", time::OffsetDateTime::now_utc() + time::Duration::days(30)).unwrap();
        let old = with(&["bob".into(), "eve".into()], &[pem(ca)]);
        let new = with(&["eve".into(), "mallory".into()], &[pem(ca), pem(&next)]);
        let lines = CredentialChange::between(&old, &new).lines();
        assert_eq!(lines[0], "identity: pool:pool1");
        assert!(lines[1].ends_with("(unchanged)"), "{}", lines[1]);
        assert_eq!(lines[2], "trust anchors: 1 -> 2");
        assert_eq!(lines[3], "deny list: added mallory; removed bob");
    }
}
