//! `tls reload`: the pool's credentials (certificate, key, trust anchors, deny list) read again
//! and put in force, as SIGHUP does, by the same code (`process::cli::apply_credentials`); the
//! answer says what changed or why the credentials in force were kept (`docs/security.md`,
//! "Rotation").

use std::sync::Arc;

use tidepool_p2p::ErrorCode;

use super::output::{Gone, Output};
use crate::credentials::ReloadRefused;
use crate::node::Node;

/// Why `tls reload` failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsCommandError {
    #[error("{0}; the credentials in force are unchanged")]
    Refused(#[from] ReloadRefused),
    #[error("the client went away")]
    Gone,
}

impl TlsCommandError {
    pub fn code(&self) -> ErrorCode {
        match self {
            TlsCommandError::Refused(e) => e.code(),
            TlsCommandError::Gone => ErrorCode::Internal,
        }
    }
}

impl From<Gone> for TlsCommandError {
    fn from(_: Gone) -> Self {
        TlsCommandError::Gone
    }
}

/// Runs `tls reload`.
pub async fn reload(node: &Arc<Node>, out: &mut Output) -> Result<(), TlsCommandError> {
    let source = node.pool.credential_source.get().ok_or(ReloadRefused::NoSource)?;
    let change = source.reload().await?;
    let mut text = String::from("credentials reloaded\n");
    for l in change.lines() {
        text.push_str(&l);
        text.push('\n');
    }
    out.write(&text).await?;
    Ok(())
}
