//! The protected channel: TLS 1.3 (rustls, ring provider) with certificates on both sides.
//!
//! Every connection to a pool (data, pool-to-pool, migration, admin) runs inside TLS 1.3 and
//! both sides present a certificate that chains to one of the trust anchors the other side
//! holds. The certificate says who the peer is ([`Identity`]):
//! - its subject's common name (CN) is the name: a pool's name, an admin's or a client's;
//! - a subject-alternative-name URI `tidepool:role=pool|admin|client` is the role.
//!
//! The address a pool is dialled at is not checked against the certificate (pools are named,
//! not addressed): the dialler checks that the certificate carries role `pool` and the name of
//! the pool it meant (`docs/security.md`). A [`Credentials`] can be reloaded in place
//! ([`Credentials::reload`]): new connections use the new certificate and trust anchors, those
//! already open go on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
pub use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::TcpStream;

use crate::error::{ErrorCode, RemoteError};
use crate::frame::WireError;

/// The prefix of the subject-alternative-name URI that carries a certificate's role.
pub const ROLE_URI_PREFIX: &str = "tidepool:role=";
/// A credential that expires sooner than this is warned about (log, `info`).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// The connection types once TLS is established.
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// The certificate chain a peer showed at the handshake of `tls`, end entity first.
pub fn peer_chain(tls: &ServerStream) -> Vec<CertificateDer<'static>> {
    tls.get_ref().1.peer_certificates().map(|c| c.to_vec()).unwrap_or_default()
}

pub use crate::identity::{Identity, Role};

/// What a certificate says: the identity and when it stops being valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub identity: Identity,
    /// Seconds since the epoch.
    pub not_after: i64,
}

impl CertInfo {
    /// The last day of validity, `YYYY-MM-DD` (UTC).
    pub fn expiry_date(&self) -> String {
        time::OffsetDateTime::from_unix_timestamp(self.not_after)
            .map(|t| format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()))
            .unwrap_or_else(|_| self.not_after.to_string())
    }
}

/// Why credentials could not be loaded or built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

fn invalid(what: impl Into<String>, message: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid { what: what.into(), message: message.to_string() }
}

/// Reads a certificate's identity and expiry.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    // Exactly one name and one role: a certificate that could be read two ways is refused.
    let names: Vec<&str> = cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).collect();
    let name = match names[..] {
        [] => return Err("the certificate's subject has no common name (CN)".into()),
        [name] if !name.is_empty() && !name.chars().any(char::is_control) => name.to_string(),
        [_] => return Err("the certificate's common name (CN) is empty or holds control characters".into()),
        _ => return Err(format!("the certificate has {} common names (CN); give it one", names.len())),
    };
    let roles: Vec<&str> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::URI(u) => u.strip_prefix(ROLE_URI_PREFIX),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let role = match roles[..] {
        [role] => role.parse::<Role>()?,
        [] => {
            return Err(format!(
                "the certificate of {name} carries no role (a SAN URI {ROLE_URI_PREFIX}pool|admin|client)"
            ));
        }
        _ => return Err(format!("the certificate of {name} carries {} roles; give it one", roles.len())),
    };
    Ok(CertInfo { identity: Identity { role, name }, not_after: cert.validity().not_after.timestamp() })
}

/// Where a side's credentials are: its certificate (with any intermediates after it), its key,
/// the trust anchors it accepts peers from (several during a change of CA), and the names it
/// refuses although their certificates are valid (revoked).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust: Vec<PathBuf>,
    pub deny: Vec<String>,
}

impl TlsFiles {
    /// The files of `name` with `role` in a folder made by `tidepool ca init` / `ca issue`:
    /// `<name>.<role>.crt`, `<name>.<role>.key`, and `ca.crt` as the trust anchor.
    pub fn in_dir(dir: &Path, role: Role, name: &str) -> TlsFiles {
        TlsFiles {
            cert: dir.join(format!("{name}.{role}.crt")),
            key: dir.join(format!("{name}.{role}.key")),
            trust: vec![dir.join("ca.crt")],
            deny: Vec::new(),
        }
    }
}

struct Loaded {
    info: CertInfo,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    deny: Vec<String>,
    /// Our certificate chain (the end entity first) and the trust anchors, for
    /// [`Credentials::check_own_chain`].
    chain: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    /// Unique per load in this process: a connection made with other credentials than those in
    /// force was made before a reload ([`Credentials::generation`]).
    generation: u64,
}

/// The source of [`Loaded::generation`].
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// One side's certificate, key and trust anchors, ready for both ends of a connection. Cheap
/// to clone; clones share a [`Credentials::reload`].
#[derive(Clone)]
pub struct Credentials(Arc<RwLock<Arc<Loaded>>>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Credentials").field(&self.identity().to_string()).finish()
    }
}

/// A warning when the private key file `key` may be read (or written) by its group or by
/// others; `None` when only its owner may, or when it cannot be looked at (loading it says why).
/// The pool logs it at start and at each reload; the shell and `tidepool put|get` print it.
pub fn key_mode_warning(key: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(key).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!("private key file {} is readable by group or others (mode {mode:03o}); `chmod 600` it", key.display())
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

/// ring builds with the C compiler alone (aws-lc-rs wants cmake, absent here); rustls marks its
/// provider deprecated for lacking post-quantum key exchange (`docs/security.md`).
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Credentials {
    /// Reads the files and builds both configurations.
    pub fn load(files: &TlsFiles) -> Result<Credentials, TlsError> {
        let cert = read(&files.cert)?;
        let key = read(&files.key)?;
        let mut trust = Vec::new();
        for t in &files.trust {
            trust.push((t.display().to_string(), read(t)?));
        }
        let trust: Vec<(&str, &[u8])> = trust.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
        Self::from_pem(
            (&files.cert.display().to_string(), &cert),
            (&files.key.display().to_string(), &key),
            &trust,
            &files.deny,
        )
    }

    /// Builds credentials from PEM text; each part comes with the name its errors use.
    pub fn from_pem(
        cert: (&str, &[u8]),
        key: (&str, &[u8]),
        trust: &[(&str, &[u8])],
        deny: &[String],
    ) -> Result<Credentials, TlsError> {
        Ok(Credentials(Arc::new(RwLock::new(Arc::new(build(cert, key, trust, deny)?)))))
    }

    /// Replaces the certificate, key, trust anchors and deny list with those of `other`, for
    /// every clone of these credentials. Connections already open are not affected.
    pub fn reload(&self, other: &Credentials) {
        let new = other.0.read().clone();
        *self.0.write() = new;
    }

    /// Whether the deny list in force names `name`: checked before every request, so a name
    /// denied by a reload loses its open connections' rights at their next request.
    pub fn denies(&self, name: &str) -> bool {
        self.0.read().deny.iter().any(|d| d == name)
    }

    /// The names on the deny list in force.
    pub fn deny_list(&self) -> Vec<String> {
        self.0.read().deny.clone()
    }

    /// How many trust anchors (CA certificates) are in force.
    pub fn anchors(&self) -> usize {
        self.0.read().roots.len()
    }

    /// Which load is in force: it changes at each [`Credentials::reload`], so a connection
    /// remembers the generation it was made with and is not reused after a reload
    /// (`peer::Dialer`).
    pub fn generation(&self) -> u64 {
        self.0.read().generation
    }

    /// Checks that our own certificate chains to one of our own trust anchors, is valid now and
    /// serves both as a server and as a client certificate: the peers hold the same anchors, so a certificate that does not would be refused by all
    /// of them (a reload refuses it, `docs/security.md`, "Rotation"). The reason if not.
    pub fn check_own_chain(&self) -> Result<(), String> {
        let loaded = self.loaded();
        let (end, intermediates) = loaded.chain.split_first().ok_or("no certificate")?;
        let cert = rustls::server::ParsedCertificate::try_from(end).map_err(|e| e.to_string())?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &loaded.roots,
            intermediates,
            UnixTime::now(),
            provider().signature_verification_algorithms.all,
        )
        .map_err(|e| e.to_string())?;
        // Our connections to other pools present it as a client certificate: a certificate
        // made for servers only would be refused by every pool we dial.
        self.still_trusts(&loaded.chain)
    }

    /// Whether a peer's certificate `chain`, accepted at its handshake, would still be
    /// accepted now: by the trust anchors in force (a reload may have removed its CA) and
    /// unexpired. The reason if not.
    pub fn still_trusts(&self, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let loaded = self.loaded();
        let (end, intermediates) = chain.split_first().ok_or("no certificate")?;
        let verifier = WebPkiClientVerifier::builder_with_provider(loaded.roots.clone(), provider())
            .build()
            .map_err(|e| e.to_string())?;
        verifier.verify_client_cert(end, intermediates, UnixTime::now()).map(|_| ()).map_err(|e| e.to_string())
    }

    /// Who these credentials say we are.
    pub fn identity(&self) -> Identity {
        self.0.read().info.identity.clone()
    }

    /// Our certificate's identity and expiry.
    pub fn info(&self) -> CertInfo {
        self.0.read().info.clone()
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.0.read().clone()
    }

    /// Opens TLS to the pool at `addr` over `stream`, and returns the pool's identity. A
    /// refusal of our certificate by the pool shows only at the first read (TLS 1.3): see
    /// [`refusal`].
    pub async fn connect(&self, addr: SocketAddr, stream: TcpStream) -> Result<(ClientStream, Identity), WireError> {
        let loaded = self.loaded();
        let connector = tokio_rustls::TlsConnector::from(loaded.client.clone());
        let tls = connector
            .connect(ServerName::IpAddress(addr.ip().into()), stream)
            .await
            .map_err(|e| tls_error(e, "authentication failed: the pool's certificate was not accepted"))?;
        let identity = peer_identity(tls.get_ref().1.peer_certificates())?;
        if loaded.deny.contains(&identity.name) {
            let msg = format!("authentication failed: {identity} is on our deny list");
            return Err(WireError::Handshake(RemoteError::new(ErrorCode::AuthFailed, msg)));
        }
        Ok((tls, identity))
    }

    /// The pool's side of [`Credentials::connect`]: TLS with a client certificate required.
    pub async fn accept(&self, stream: TcpStream) -> Result<(ServerStream, Identity), WireError> {
        let loaded = self.loaded();
        let acceptor = tokio_rustls::TlsAcceptor::from(loaded.server.clone());
        let tls = acceptor.accept(stream).await.map_err(|e| tls_error(e, "authentication failed"))?;
        let identity = peer_identity(tls.get_ref().1.peer_certificates())?;
        if loaded.deny.contains(&identity.name) {
            let msg = format!("authentication failed: {identity} is on the deny list");
            return Err(WireError::Handshake(RemoteError::new(ErrorCode::AuthFailed, msg)));
        }
        Ok((tls, identity))
    }
}

fn peer_identity(certs: Option<&[CertificateDer<'static>]>) -> Result<Identity, WireError> {
    let der = certs.and_then(|c| c.first()).ok_or_else(|| auth_failed("the peer sent no certificate".into()))?;
    cert_info(der).map(|i| i.identity).map_err(auth_failed)
}

fn auth_failed(msg: String) -> WireError {
    WireError::Handshake(RemoteError::new(ErrorCode::AuthFailed, msg))
}

/// A TLS failure as a wire error, with rustls's reason after `what`.
fn tls_error(e: std::io::Error, what: &str) -> WireError {
    match refusal(&e) {
        Some(err) => WireError::Remote(err),
        None => match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(tls) => auth_failed(format!("{what}: {tls}")),
            None => WireError::Io(e),
        },
    }
}

/// The peer refused us in TLS (an alert: our certificate expired, is from a CA it does not
/// trust, ...), told as the refusal it is.
pub fn refusal(e: &std::io::Error) -> Option<RemoteError> {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())? {
        rustls::Error::AlertReceived(alert) => Some(RemoteError::new(
            ErrorCode::AuthFailed,
            format!("authentication failed: the pool refused our certificate ({alert:?})"),
        )),
        _ => None,
    }
}

/// A wire error that is really a TLS refusal of our certificate, made clear.
pub fn clarify(e: WireError) -> WireError {
    match e {
        WireError::Io(io) => match refusal(&io) {
            Some(err) => WireError::Remote(err),
            None => WireError::Io(io),
        },
        e => e,
    }
}

fn build(
    cert: (&str, &[u8]),
    key: (&str, &[u8]),
    trust: &[(&str, &[u8])],
    deny: &[String],
) -> Result<Loaded, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.1)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(cert.0, format!("not a PEM certificate: {e}")))?;
    let first = chain.first().ok_or_else(|| invalid(cert.0, "holds no certificate"))?;
    let info = cert_info(first).map_err(|e| invalid(cert.0, e))?;
    let private =
        PrivateKeyDer::from_pem_slice(key.1).map_err(|e| invalid(key.0, format!("not a PEM private key: {e}")))?;
    let mut roots = RootCertStore::empty();
    for (name, pem) in trust {
        let mut any = false;
        for c in CertificateDer::pem_slice_iter(pem) {
            let c = c.map_err(|e| invalid(*name, format!("not a PEM certificate: {e}")))?;
            roots.add(c).map_err(|e| invalid(*name, format!("not a usable trust anchor: {e}")))?;
            any = true;
        }
        if !any {
            return Err(invalid(*name, "holds no certificate"));
        }
    }
    if roots.is_empty() {
        return Err(invalid("trust", "no trust anchor given: list at least one CA certificate"));
    }
    let roots = Arc::new(roots);
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| invalid("trust", e))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| invalid("TLS", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), private.clone_key())
        .map_err(|e| invalid(key.0, format!("does not fit {}: {e}", cert.0)))?;
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| invalid("TLS", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PoolVerifier { roots: roots.clone(), provider }))
        .with_client_auth_cert(chain.clone(), private)
        .map_err(|e| invalid(key.0, format!("does not fit {}: {e}", cert.0)))?;
    // No session resumption: a resumed session would reuse the peer's certificate as it was
    // checked the first time, so an expired certificate could go on connecting. Every
    // connection checks the chain, the expiry and the deny list afresh; connections are long
    // lived, so the full handshake costs little.
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    client.resumption = rustls::client::Resumption::disabled();
    let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Loaded {
        info,
        client: Arc::new(client),
        server: Arc::new(server),
        deny: deny.to_vec(),
        chain,
        roots,
        generation,
    })
}

/// Checks a pool's certificate chain against our trust anchors (expiry included) without
/// matching it to the address: the pool's name is checked after the handshake, against the
/// name we dialled (`conn.rs`).
#[derive(Debug)]
struct PoolVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PoolVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A small certificate authority: `tidepool ca init` makes one, `tidepool ca issue` issues
/// pool, admin and client certificates from it.
pub struct Authority {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    not_after: time::OffsetDateTime,
}

/// A certificate and its key, in PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

fn rcgen_error(e: rcgen::Error) -> TlsError {
    invalid("certificate", e)
}

impl Authority {
    /// A new CA called `name`, valid from now until `not_after`.
    pub fn new(name: &str, not_after: time::OffsetDateTime) -> Result<Authority, TlsError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
        params.not_after = not_after;
        let key = rcgen::KeyPair::generate().map_err(rcgen_error)?;
        let cert = params.self_signed(&key).map_err(rcgen_error)?;
        Ok(Authority { cert, key, not_after })
    }

    /// The CA saved by [`Authority::cert_pem`] and [`Authority::key_pem`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Authority, TlsError> {
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| invalid("CA key", e))?;
        let params = rcgen::CertificateParams::from_ca_cert_pem(cert_pem).map_err(|e| invalid("CA certificate", e))?;
        let not_after = params.not_after;
        let cert = params.self_signed(&key).map_err(rcgen_error)?;
        Ok(Authority { cert, key, not_after })
    }

    /// When the CA's own certificate expires: nothing it issues is valid after.
    pub fn not_after(&self) -> time::OffsetDateTime {
        self.not_after
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for `name` with `role`, valid from `not_before` to `not_after`.
    pub fn issue_between(
        &self,
        role: Role,
        name: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<Issued, TlsError> {
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(invalid("--name", "expected 1 to 64 printable characters"));
        }
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let uri = rcgen::Ia5String::try_from(format!("{ROLE_URI_PREFIX}{role}")).map_err(rcgen_error)?;
        params.subject_alt_names.push(rcgen::SanType::URI(uri));
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        let key = rcgen::KeyPair::generate().map_err(rcgen_error)?;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(rcgen_error)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A certificate valid from now for `days` (an end past the year 9999 is refused).
    pub fn issue(&self, role: Role, name: &str, days: u32) -> Result<Issued, TlsError> {
        let now = time::OffsetDateTime::now_utc();
        let end = now
            .checked_add(time::Duration::days(days.into()))
            .ok_or_else(|| invalid("--days", format!("{days} days from now is past the year 9999")))?;
        self.issue_between(role, name, now - time::Duration::minutes(5), end)
    }

    /// Credentials for `name` with `role` that trust this CA only (tests, the demo).
    pub fn credentials(&self, role: Role, name: &str) -> Result<Credentials, TlsError> {
        let issued = self.issue(role, name, 365)?;
        self.credentials_for(&issued)
    }

    /// Credentials from an issued certificate, trusting this CA only.
    pub fn credentials_for(&self, issued: &Issued) -> Result<Credentials, TlsError> {
        let ca = self.cert_pem();
        Credentials::from_pem(
            ("certificate", issued.cert_pem.as_bytes()),
            ("key", issued.key_pem.as_bytes()),
            &[("CA", ca.as_bytes())],
            &[],
        )
    }
}

/// One CA per test process, and credentials from it (`Authority::new` costs a key generation).
pub mod testing {
    use std::sync::OnceLock;

    use super::*;

    /// The test process's CA.
    pub fn authority() -> &'static Authority {
        static CA: OnceLock<Authority> = OnceLock::new();
        CA.get_or_init(|| {
            Authority::new("Tidepool test CA", time::OffsetDateTime::now_utc() + time::Duration::days(30))
                .expect("make the test CA")
        })
    }

    /// Credentials for `name` with `role` from the test CA.
    pub fn credentials(role: Role, name: &str) -> Credentials {
        authority().credentials(role, name).expect("issue test credentials")
    }

    pub fn pool(name: &str) -> Credentials {
        credentials(Role::Pool, name)
    }

    /// Credentials for `name` with `role` issued by another CA, that trust the test CA: a
    /// pool of the test CA refuses them.
    pub fn stranger(role: Role, name: &str) -> Credentials {
        let other = Authority::new("another CA", time::OffsetDateTime::now_utc() + time::Duration::days(1))
            .expect("make another CA");
        let issued = other.issue(role, name, 1).expect("issue from another CA");
        let ca = authority().cert_pem();
        Credentials::from_pem(
            ("cert", issued.cert_pem.as_bytes()),
            ("key", issued.key_pem.as_bytes()),
            &[("ca", ca.as_bytes())],
            &[],
        )
        .expect("credentials from another CA")
    }

    /// The reading and writing ends of a pool's side of a connection.
    pub type Ends = (
        crate::frame::FrameReader<tokio::io::ReadHalf<ServerStream>>,
        crate::frame::FrameWriter<tokio::io::WriteHalf<ServerStream>>,
    );

    /// The pool's side of a new connection, as a test plays a pool: TLS with `creds`, then the
    /// handshake, admitting whoever `auth::permitted` admits.
    pub async fn accept(
        creds: &Credentials,
        stream: TcpStream,
        pool: &str,
        service: crate::auth::Service,
        offered: crate::auth::Features,
    ) -> Result<(Ends, crate::auth::PeerInfo), WireError> {
        let (tls, identity) = creds.accept(stream).await?;
        let (r, w) = tokio::io::split(tls);
        let mut reader = crate::frame::FrameReader::new(r, crate::frame::MAX_FRAME);
        let mut writer = crate::frame::FrameWriter::new(w);
        let peer =
            crate::auth::accept(&mut reader, &mut writer, pool, service, offered, &identity, |_, _| Ok(())).await?;
        Ok(((reader, writer), peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate made for servers only chains to the anchors, but every pool we dial would
    /// refuse it as our client certificate: the own-chain check (run by a reload) refuses it.
    #[test]
    fn a_certificate_for_servers_only_fails_the_own_chain_check() {
        let ca = testing::authority();
        assert_eq!(ca.credentials(Role::Pool, "pool1").unwrap().check_own_chain(), Ok(()));
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "pool1");
        let uri = rcgen::Ia5String::try_from(format!("{ROLE_URI_PREFIX}pool")).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(uri));
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
        let issued = Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        let servers_only = ca.credentials_for(&issued).unwrap();
        let err = servers_only.check_own_chain().unwrap_err();
        assert!(err.to_lowercase().contains("client"), "{err}");
    }

    #[test]
    fn an_issued_certificate_carries_its_role_and_name() {
        for role in Role::ALL {
            let creds = testing::credentials(role, "alice");
            assert_eq!(creds.identity(), Identity { role, name: "alice".into() });
        }
    }

    /// A certificate is read one way or refused: one role and one name, or no identity.
    #[test]
    fn a_certificate_with_no_role_or_two_roles_is_refused() {
        let der = |uris: &[&str]| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, "mallory");
            for uri in uris {
                params.subject_alt_names.push(rcgen::SanType::URI(rcgen::Ia5String::try_from(*uri).unwrap()));
            }
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        assert_eq!(cert_info(&der(&["tidepool:role=pool"])).unwrap().identity.to_string(), "pool:mallory");
        for uris in [&[][..], &["tidepool:role=pool", "tidepool:role=admin"][..], &["tidepool:role=root"][..]] {
            assert!(cert_info(&der(uris)).is_err(), "{uris:?}");
        }
    }

    #[test]
    fn a_key_file_others_can_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tidepool-test-keymode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("k.key");
        std::fs::write(&key, "x").unwrap();
        for (mode, warned) in [(0o600, false), (0o400, false), (0o640, true), (0o604, true), (0o660, true)] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(key_mode_warning(&key).is_some(), warned, "{mode:o}");
        }
        assert_eq!(key_mode_warning(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_saved_authority_issues_again() {
        let ca = testing::authority();
        let again = Authority::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        let issued = again.issue(Role::Client, "bob", 1).unwrap();
        let creds = ca.credentials_for(&issued).unwrap();
        assert_eq!(creds.identity().to_string(), "client:bob");
    }
}
