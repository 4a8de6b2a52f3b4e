//! One type per kind of identifier. Each has `Display` and `FromStr`, used alike by the shell,
//! the logs and the wire.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{:?} is not a valid {kind}: {reason}", crate::error::truncate_echo(.value, crate::error::MAX_ECHO))]
pub struct IdError {
    pub kind: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// A file identifier as dCache writes it: 24 (legacy PNFS) or 36 (Chimera) hex digits, shown in
/// upper case. Stored as raw bytes so that a million of them stay small and cheap to compare.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PnfsId {
    len: u8,
    bytes: [u8; 18],
}

impl PnfsId {
    /// Length in bytes of the two accepted forms.
    const SHORT: usize = 12;
    const LONG: usize = 18;

    /// Builds an id from its raw bytes (12 or 18 of them), as stored in a database key.
    pub fn from_bytes(raw: &[u8]) -> Result<Self, IdError> {
        if raw.len() != Self::SHORT && raw.len() != Self::LONG {
            return Err(IdError { kind: "pnfsid", value: format!("{raw:02X?}"), reason: "must be 12 or 18 bytes" });
        }
        let mut bytes = [0u8; 18];
        bytes[..raw.len()].copy_from_slice(raw);
        Ok(PnfsId { len: raw.len() as u8, bytes })
    }

    /// The raw bytes (12 or 18).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// A new Chimera-style id (36 hex digits, the first four `0000`) from random bytes.
    pub fn from_random(random: [u8; 16]) -> Self {
        let mut bytes = [0u8; 18];
        bytes[2..].copy_from_slice(&random);
        PnfsId { len: Self::LONG as u8, bytes }
    }
}

impl fmt::Display for PnfsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PnfsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PnfsId({self})")
    }
}

impl FromStr for PnfsId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let err = |reason| IdError { kind: "pnfsid", value: s.to_string(), reason };
        if s.len() != 2 * Self::SHORT && s.len() != 2 * Self::LONG {
            return Err(err("must be 24 or 36 hex digits"));
        }
        let mut bytes = [0u8; 18];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| err("must be hex digits"))?;
            bytes[i] = u8::from_str_radix(hex, 16).map_err(|_| err("must be hex digits"))?;
        }
        Ok(PnfsId { len: (s.len() / 2) as u8, bytes })
    }
}

/// Implements `Serialize`/`Deserialize` through the `Display`/`FromStr` text form, which is
/// what crosses the wire and what operators read.
macro_rules! serde_as_text {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_text!(PnfsId);

fn check_name(kind: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    let err = |reason| IdError { kind, value: s.to_string(), reason };
    if s.is_empty() {
        return Err(err("must not be empty"));
    }
    if s.len() > max {
        return Err(err("is too long"));
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return Err(err("may hold only letters, digits, '_', '-' and '.'"));
    }
    Ok(())
}

/// The name of a pool, unique within a cluster. Letters, digits, `_`, `-`, `.`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolName(String);

impl PoolName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PoolName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        check_name("pool name", s, 64)?;
        Ok(PoolName(s.to_string()))
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PoolName({})", self.0)
    }
}

serde_as_text!(PoolName);

/// A migration job id: a free string without white space (dCache allows e.g. `rebalance`);
/// generated ids are decimal counters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct JobId(String);

impl JobId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for JobId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        check_name("job id", s, 128)?;
        Ok(JobId(s.to_string()))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

serde_as_text!(JobId);

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                s.parse().map($name).map_err(|_| IdError {
                    kind: $kind,
                    value: s.to_string(),
                    reason: "must be a non-negative integer",
                })
            }
        }
    };
}

numeric_id!(
    /// One file's task within a job; unique within the pool for the pool's lifetime.
    TaskId,
    "task id"
);
numeric_id!(
    /// One attempt of a task at one target: the correlation id that every reply carries.
    AttemptId,
    "attempt id"
);
numeric_id!(
    /// One pool-to-pool transfer on the receiving pool (`pp ls`, `pp remove`).
    TransferId,
    "transfer id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pnfsid_round_trips_and_is_upper_case() {
        for text in ["0000A1B2C3D4E5F60718293A4B5C6D7E8F90", "000000000000000000000ABC"] {
            let id: PnfsId = text.parse().unwrap();
            assert_eq!(id.to_string(), text);
            assert_eq!(PnfsId::from_bytes(id.as_bytes()).unwrap(), id);
        }
        let lower: PnfsId = "0000a1b2c3d4e5f60718293a4b5c6d7e8f90".parse().unwrap();
        assert_eq!(lower.to_string(), "0000A1B2C3D4E5F60718293A4B5C6D7E8F90");
    }

    #[test]
    fn pnfsid_rejects_bad_text() {
        for bad in ["", "00", "0000A1B2C3D4E5F60718293A4B5C6D7E8F9G", "0000A1B2C3D4E5F60718293A4B5C6D7E8F9"] {
            assert!(bad.parse::<PnfsId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pool_names_are_checked() {
        assert!("pool1".parse::<PoolName>().is_ok());
        assert!("dcache-pool_1.a".parse::<PoolName>().is_ok());
        assert!("".parse::<PoolName>().is_err());
        assert!("pool 1".parse::<PoolName>().is_err());
        assert!("pool/1".parse::<PoolName>().is_err());
    }
}
