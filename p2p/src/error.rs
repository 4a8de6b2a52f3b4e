//! Stable error codes that an operator can see, each with a one-line hint, in the style of
//! dCache's numeric `rc` values. The numbers never change meaning; new ones are only added.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($($name:ident = $num:literal, $hint:literal;)*) => {
        /// The stable codes. `as_u32` is what crosses the wire and what `docs/errors.md` lists.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($name,)*
        }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            pub fn as_u32(self) -> u32 {
                match self { $(ErrorCode::$name => $num,)* }
            }

            pub fn from_u32(n: u32) -> Option<ErrorCode> {
                match n { $($num => Some(ErrorCode::$name),)* _ => None }
            }

            /// A one-line hint on what to do about it.
            pub fn hint(self) -> &'static str {
                match self { $(ErrorCode::$name => $hint,)* }
            }

            pub fn name(self) -> &'static str {
                match self { $(ErrorCode::$name => stringify!($name),)* }
            }
        }
    };
}

error_codes! {
    Syntax = 2, "check the command with `help <command>`";
    UnknownCommand = 3, "`help` lists the commands this pool knows";
    InvalidArgument = 4, "check the value against `help <command>`";
    FileNotFound = 10001, "the replica is not in this pool; `rep ls` lists what is";
    FileExists = 10002, "a replica with this id is already in the pool";
    IllegalTransition = 10003, "see the replica states in docs/glossary.md";
    FileBusy = 10004, "the replica is being written or moved; try again when it is done";
    PoolFull = 10005, "free space or add capacity; only cached, non-sticky replicas can be evicted";
    ChecksumMismatch = 10006, "the data differ from what was sent; nothing was committed, retry the transfer";
    ShortTransfer = 10007, "the data's length differs from the announced size; nothing was committed";
    Io = 10008, "the pool's disk reported an error; check the pool log and the disk";
    NotCommitted = 10009, "the replica is not complete (no CACHED or PRECIOUS state) and cannot be read";
    FileProtected = 10010, "the replica is precious or sticky; add -force if it must go";
    FileBroken = 10011, "the pool holds a damaged (BROKEN) replica of the file; check it, then `rep rm -force` it";
    Locked = 10020, "the target pool's own migration job works on this file; it is retried later";
    NoTargets = 10025, "no target pool is online with room; check the targets with `migration info`";
    JobNotFound = 10030, "no migration job of this pool has that id; `migration ls` lists them";
    PoolDisabled = 104, "the pool mode forbids this; see `info` and `pool enable`";
    AuthFailed = 20001, "the peer's certificate was not accepted: check its CA, its expiry and the deny list (docs/security.md)";
    Protocol = 20002, "the peer speaks another protocol version or sent a malformed frame";
    Timeout = 20003, "the peer did not answer in time; check that it runs and is reachable";
    Offline = 20004, "the pool does not answer; check that its daemon runs";
    ShuttingDown = 20005, "the pool is stopping; retry once it is back";
    Cancelled = 20006, "the transfer was cancelled (pp remove, or the pool stopped); nothing was kept";
    Forbidden = 20007, "the certificate's role does not allow this; see the roles in docs/security.md";
    MembershipUnavailable = 20008, "etcd does not answer; check [membership] endpoints and etcd's health (docs/operator-guide.md)";
    MembershipReadOnly = 20009, "the membership comes from the cluster file: edit it on every host, then `psu reload` or SIGHUP";
    CredentialsRefused = 20010, "the new credentials were not put in force (the old ones stay): fix what the message names, then `tls reload` or SIGHUP again";
    Internal = 99, "a bug in Tidepool: please report it with the pool log";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u32())
    }
}

/// An error as it crosses the wire: a stable code and a message for the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (rc={code})")]
pub struct RemoteError {
    pub code: u32,
    pub message: String,
}

impl RemoteError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RemoteError { code: code.as_u32(), message: message.into() }
    }

    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u32(self.code)
    }

    /// The message, the code and the hint, as the shell prints them: the first line of the
    /// message with `(rc=N)`, any further lines (such as a caret under the offending token),
    /// then `hint: ...`.
    pub fn render(&self) -> String {
        let (first, rest) = match self.message.split_once('\n') {
            Some((f, r)) => (f, Some(r)),
            None => (self.message.as_str(), None),
        };
        let mut out = format!("{first} (rc={})", self.code);
        if let Some(rest) = rest {
            out.push('\n');
            out.push_str(rest);
        }
        if let Some(code) = self.code() {
            out.push_str("\nhint: ");
            out.push_str(code.hint());
        }
        out
    }
}

/// The most characters of operator input (a command line, a token, a value) that an error
/// message repeats; see `docs/errors.md`.
pub const MAX_ECHO: usize = 200;

/// `text` as an error message repeats it: whole if it has at most `max` characters, otherwise
/// its first `max` characters, `...` and its length in bytes, so that no reply grows with what
/// was typed.
pub fn truncate_echo(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!("{}... ({} bytes)", &text[..cut], text.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.as_u32()), "duplicate code {code:?}");
            assert_eq!(ErrorCode::from_u32(code.as_u32()), Some(code));
            assert!(!code.hint().is_empty());
        }
    }

    #[test]
    fn render_keeps_the_caret_under_the_token() {
        let e = RemoteError::new(ErrorCode::Syntax, "bad option\n  rep ls -x\n         ^");
        assert_eq!(
            e.render(),
            "bad option (rc=2)\n  rep ls -x\n         ^\nhint: check the command with `help <command>`"
        );
        assert_eq!(RemoteError { code: 777, message: "odd".into() }.render(), "odd (rc=777)");
    }

    #[test]
    fn echoed_input_is_truncated() {
        let table: &[(&str, usize, &str)] =
            &[("", 3, ""), ("abc", 3, "abc"), ("abcd", 3, "abc... (4 bytes)"), ("ééé", 2, "éé... (6 bytes)")];
        for (text, max, want) in table {
            assert_eq!(truncate_echo(text, *max), *want, "{text:?} {max}");
        }
        let long = "x".repeat(60_000);
        let shown = truncate_echo(&long, MAX_ECHO);
        assert_eq!(shown.len(), MAX_ECHO + "... (60000 bytes)".len());
    }
}
