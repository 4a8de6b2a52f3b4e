//! Where a command's output goes: the [`Output`] every command writes to (a connection's
//! stream, or a string in tests and for rebalance's own lines).

use tidepool_p2p::{ErrorCode, RemoteError};

/// Where a command's output goes.
pub trait Output {
    /// Appends text; `Err` when the reader is gone and the command should stop.
    fn write(&mut self, text: &str) -> Result<(), Gone>;
}

/// The reader of the output went away.
#[derive(Debug)]
pub struct Gone;

impl Output for String {
    fn write(&mut self, text: &str) -> Result<(), Gone> {
        self.push_str(text);
        Ok(())
    }
}

impl From<Gone> for RemoteError {
    fn from(_: Gone) -> Self {
        RemoteError::new(ErrorCode::Internal, "the client went away")
    }
}
