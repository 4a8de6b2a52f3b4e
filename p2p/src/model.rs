//! The replica model shared by every process: states, sticky records, file attributes, pool
//! modes and space figures (docs/dcache-compatibility.md#replicas). These types cross process boundaries on purpose and
//! are therefore serialisable.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::PnfsId;

/// Milliseconds since the Unix epoch, the unit of every time stamp in the replica model.
pub type EpochMillis = i64;

/// The longest storage class accepted, in bytes, wherever one enters: an upload, a filter, an
/// admin command (see `docs/admin-commands.md`).
pub const MAX_STORAGE_CLASS: usize = 256;

/// Why a storage class (or a pattern for one) is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageClassError {
    #[error("storage class too long: {len} bytes, at most {MAX_STORAGE_CLASS} ({})", crate::error::truncate_echo(.text, 40))]
    TooLong { len: usize, text: String },
    #[error("storage class {:?} holds a control character", crate::error::truncate_echo(.0, 40))]
    Control(String),
}

/// Checks a storage class, or a pattern that matches storage classes, as given by an operator or
/// a client: at most [`MAX_STORAGE_CLASS`] bytes and no control characters (a class is printed
/// on one line of `rep ls`).
pub fn check_storage_class(class: &str) -> Result<(), StorageClassError> {
    if class.len() > MAX_STORAGE_CLASS {
        return Err(StorageClassError::TooLong { len: class.len(), text: class.to_string() });
    }
    if class.chars().any(char::is_control) {
        return Err(StorageClassError::Control(class.to_string()));
    }
    Ok(())
}

/// The life cycle of a replica in a pool's repository (docs/dcache-compatibility.md#replicas).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReplicaState {
    /// Entry just created, nothing written yet.
    New,
    /// Receiving data from a client upload.
    FromClient,
    /// Receiving data from another pool.
    FromPool,
    /// Being staged from tape.
    FromStore,
    /// Complete; may be evicted when it has no valid sticky record.
    Cached,
    /// Complete; never evicted.
    Precious,
    /// Unusable; kept for an operator to inspect.
    Broken,
    /// Deleted, possibly still open.
    Removed,
    /// Gone.
    Destroyed,
}

impl ReplicaState {
    pub const ALL: [ReplicaState; 9] = [
        ReplicaState::New,
        ReplicaState::FromClient,
        ReplicaState::FromPool,
        ReplicaState::FromStore,
        ReplicaState::Cached,
        ReplicaState::Precious,
        ReplicaState::Broken,
        ReplicaState::Removed,
        ReplicaState::Destroyed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::New => "NEW",
            ReplicaState::FromClient => "FROM_CLIENT",
            ReplicaState::FromPool => "FROM_POOL",
            ReplicaState::FromStore => "FROM_STORE",
            ReplicaState::Cached => "CACHED",
            ReplicaState::Precious => "PRECIOUS",
            ReplicaState::Broken => "BROKEN",
            ReplicaState::Removed => "REMOVED",
            ReplicaState::Destroyed => "DESTROYED",
        }
    }

    /// Data is still being written: the replica must never be served or counted as a copy.
    pub fn is_receiving(self) -> bool {
        matches!(self, ReplicaState::New | ReplicaState::FromClient | ReplicaState::FromPool | ReplicaState::FromStore)
    }

    /// Complete and readable.
    pub fn is_committed(self) -> bool {
        matches!(self, ReplicaState::Cached | ReplicaState::Precious)
    }

    /// Whether an explicit state change from `self` to `to` is allowed (docs/dcache-compatibility.md#replicas):
    /// from CACHED, PRECIOUS or BROKEN to any of REMOVED, CACHED, PRECIOUS, BROKEN. Receiving
    /// states reach CACHED/PRECIOUS only through the repository's commit, never through this.
    pub fn may_change_to(self, to: ReplicaState) -> bool {
        matches!(self, ReplicaState::Cached | ReplicaState::Precious | ReplicaState::Broken)
            && matches!(
                to,
                ReplicaState::Removed | ReplicaState::Cached | ReplicaState::Precious | ReplicaState::Broken
            )
    }
}

impl fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReplicaState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ReplicaState::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("{s}: Invalid state"))
    }
}

/// Expiry value meaning "never expires".
pub const NEVER: EpochMillis = -1;

/// One sticky flag on a replica: an owner and an expiry (docs/dcache-compatibility.md#replicas).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StickyRecord {
    pub owner: String,
    /// Milliseconds since the epoch, or [`NEVER`].
    pub expire: EpochMillis,
}

impl StickyRecord {
    pub fn new(owner: impl Into<String>, expire: EpochMillis) -> Self {
        StickyRecord { owner: owner.into(), expire }
    }

    /// A record protects its replica while it has not expired.
    pub fn is_valid(&self, now: EpochMillis) -> bool {
        self.expire == NEVER || self.expire > now
    }

    /// A pin is a sticky record owned by the pin manager: its owner starts with the configured
    /// prefix (docs/dcache-compatibility.md#replicas, docs/dcache-compatibility.md#dcache-defects-not-reproduced).
    pub fn is_pin(&self, pin_prefix: &str) -> bool {
        self.owner.starts_with(pin_prefix)
    }
}

/// How a sticky flag is set (docs/dcache-compatibility.md#replicas).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StickyMode {
    /// The owner's record is replaced; an expiry in the past removes it.
    Overwrite,
    /// Lifetimes are only extended, never shortened, and nothing is removed.
    ExtendOnly,
}

/// Applies one sticky change to a record list, keeping at most one record per owner. Returns
/// whether the list changed.
pub fn apply_sticky(records: &mut Vec<StickyRecord>, new: StickyRecord, mode: StickyMode, now: EpochMillis) -> bool {
    let existing = records.iter().position(|r| r.owner == new.owner);
    match mode {
        StickyMode::Overwrite => {
            let keep = new.is_valid(now);
            match (existing, keep) {
                (Some(i), true) if records[i] == new => false,
                (Some(i), true) => {
                    records[i] = new;
                    true
                }
                (Some(i), false) => {
                    records.remove(i);
                    true
                }
                (None, true) => {
                    records.push(new);
                    true
                }
                (None, false) => false,
            }
        }
        StickyMode::ExtendOnly => {
            if !new.is_valid(now) {
                return false;
            }
            match existing {
                None => {
                    records.push(new);
                    true
                }
                Some(i) => {
                    let old = &records[i];
                    let longer = match (old.expire, new.expire) {
                        (NEVER, _) => false,
                        (_, NEVER) => true,
                        (o, n) => n > o,
                    };
                    if longer {
                        records[i] = new;
                    }
                    longer
                }
            }
        }
    }
}

/// Whether a replica must be kept online (docs/dcache-compatibility.md#replicas).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccessLatency {
    Online,
    Nearline,
}

impl AccessLatency {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLatency::Online => "ONLINE",
            AccessLatency::Nearline => "NEARLINE",
        }
    }
}

impl fmt::Display for AccessLatency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AccessLatency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "online" => Ok(AccessLatency::Online),
            "nearline" => Ok(AccessLatency::Nearline),
            _ => Err(format!("{s}: Invalid value (expected online or nearline)")),
        }
    }
}

/// Whether a file must also live on tape (docs/dcache-compatibility.md#replicas).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RetentionPolicy {
    Custodial,
    Replica,
    Output,
}

impl RetentionPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionPolicy::Custodial => "CUSTODIAL",
            RetentionPolicy::Replica => "REPLICA",
            RetentionPolicy::Output => "OUTPUT",
        }
    }
}

impl fmt::Display for RetentionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RetentionPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "custodial" => Ok(RetentionPolicy::Custodial),
            "replica" => Ok(RetentionPolicy::Replica),
            "output" => Ok(RetentionPolicy::Output),
            _ => Err(format!("{s}: Invalid value (expected custodial, replica or output)")),
        }
    }
}

/// A content checksum. Only ADLER32 (dCache's default) is computed today; the type tag keeps
/// room for more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Checksum {
    Adler32(u32),
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checksum::Adler32(v) => write!(f, "ADLER32:{v:08x}"),
        }
    }
}

impl FromStr for Checksum {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, value) = s.split_once(':').ok_or_else(|| format!("{s}: expected TYPE:VALUE"))?;
        match kind.to_ascii_uppercase().as_str() {
            "ADLER32" | "1" => {
                u32::from_str_radix(value, 16).map(Checksum::Adler32).map_err(|_| format!("{s}: invalid ADLER32 value"))
            }
            _ => Err(format!("{s}: unknown checksum type {kind}")),
        }
    }
}

/// Computes an ADLER32 checksum over data fed in pieces (SIMD where the CPU has it: this runs
/// over every byte a pool receives).
#[derive(Default)]
pub struct ChecksumWriter {
    inner: simd_adler32::Adler32,
}

impl ChecksumWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.inner.write(data);
    }

    pub fn finish(&self) -> Checksum {
        Checksum::Adler32(self.inner.finish())
    }
}

/// The attributes of a file that travel with its replica (docs/dcache-compatibility.md#replicas).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAttributes {
    pub pnfsid: PnfsId,
    pub size: u64,
    pub checksum: Option<Checksum>,
    /// e.g. `atlas:default`; `None` shows as `<unknown>`.
    pub storage_class: Option<String>,
    pub cache_class: Option<String>,
    pub access_latency: Option<AccessLatency>,
    pub retention_policy: Option<RetentionPolicy>,
    /// The HSM instance the file belongs to, if any.
    pub hsm: Option<String>,
    pub creation_time: EpochMillis,
    pub access_time: EpochMillis,
}

/// A pool's mode: a bit set (docs/dcache-compatibility.md#replicas).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PoolMode(u32);

impl PoolMode {
    pub const ENABLED: PoolMode = PoolMode(0);
    pub const DISABLED: u32 = 0x01;
    pub const FETCH: u32 = 0x02;
    pub const STORE: u32 = 0x04;
    pub const STAGE: u32 = 0x08;
    pub const P2P_CLIENT: u32 = 0x10;
    pub const P2P_SERVER: u32 = 0x20;
    pub const DEAD: u32 = 0x40;
    pub const LOADING: u32 = 0x100;
    pub const DRAINING_BIT: u32 = 0x200;
    pub const RDONLY: u32 = Self::DISABLED | Self::STORE | Self::STAGE | Self::P2P_CLIENT;
    pub const STRICT: u32 =
        Self::DISABLED | Self::FETCH | Self::STORE | Self::STAGE | Self::P2P_CLIENT | Self::P2P_SERVER;
    pub const DRAINING: u32 = Self::DRAINING_BIT | Self::RDONLY;

    pub fn from_bits(bits: u32) -> Self {
        PoolMode(bits)
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    pub fn is_enabled(self) -> bool {
        self.0 & Self::DISABLED == 0
    }

    /// Whether every bit of `flags` is set.
    pub fn has(self, flags: u32) -> bool {
        self.0 & flags == flags
    }

    /// A disabled mode with the given bits (the DISABLED bit is always added).
    pub fn disabled(flags: u32) -> Self {
        PoolMode(flags | Self::DISABLED)
    }
}

impl fmt::Display for PoolMode {
    /// `enabled`, or `disabled(fetch,store,stage,p2p-client,p2p-server[,dead][,draining][,loading])`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_enabled() {
            return f.write_str("enabled");
        }
        let names = [
            (Self::FETCH, "fetch"),
            (Self::STORE, "store"),
            (Self::STAGE, "stage"),
            (Self::P2P_CLIENT, "p2p-client"),
            (Self::P2P_SERVER, "p2p-server"),
            (Self::DEAD, "dead"),
            (Self::DRAINING_BIT, "draining"),
            (Self::LOADING, "loading"),
        ];
        let set: Vec<&str> = names.iter().filter(|(bit, _)| self.0 & bit != 0).map(|(_, n)| *n).collect();
        write!(f, "disabled({})", set.join(","))
    }
}

/// A pool's space figures in bytes. `free = total - used`; `removable` is the part of `used`
/// held by cached replicas with no valid sticky record, which the sweeper may evict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceInfo {
    pub total: u64,
    pub used: u64,
    pub free: u64,
    pub precious: u64,
    pub removable: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: EpochMillis = 1_000_000;

    fn check(before: &[(&str, i64)], new: (&str, i64), mode: StickyMode, after: &[(&str, i64)], changed: bool) {
        let mut records: Vec<StickyRecord> = before.iter().map(|(o, e)| StickyRecord::new(*o, *e)).collect();
        let got = apply_sticky(&mut records, StickyRecord::new(new.0, new.1), mode, NOW);
        let want: Vec<StickyRecord> = after.iter().map(|(o, e)| StickyRecord::new(*o, *e)).collect();
        assert_eq!(records, want, "{before:?} + {new:?} ({mode:?})");
        assert_eq!(got, changed, "changed flag for {before:?} + {new:?} ({mode:?})");
    }

    #[test]
    fn sticky_overwrite_replaces_and_removes() {
        use StickyMode::Overwrite as O;
        check(&[], ("a", NEVER), O, &[("a", NEVER)], true);
        check(&[("a", NEVER)], ("a", NOW + 5), O, &[("a", NOW + 5)], true);
        check(&[("a", NEVER)], ("a", 0), O, &[], true);
        check(&[], ("a", 0), O, &[], false);
        check(&[("a", 5)], ("b", NEVER), O, &[("a", 5), ("b", NEVER)], true);
        check(&[("a", NEVER)], ("a", NEVER), O, &[("a", NEVER)], false);
    }

    #[test]
    fn sticky_extend_only_never_shortens_or_removes() {
        use StickyMode::ExtendOnly as E;
        check(&[("a", NEVER)], ("a", NOW + 5), E, &[("a", NEVER)], false);
        check(&[("a", NOW + 5)], ("a", NEVER), E, &[("a", NEVER)], true);
        check(&[("a", NOW + 5)], ("a", NOW + 9), E, &[("a", NOW + 9)], true);
        check(&[("a", NOW + 9)], ("a", NOW + 5), E, &[("a", NOW + 9)], false);
        check(&[("a", NOW + 9)], ("a", 0), E, &[("a", NOW + 9)], false);
        check(&[], ("a", NOW - 1), E, &[], false);
        check(&[], ("a", NOW + 1), E, &[("a", NOW + 1)], true);
    }

    #[test]
    fn state_changes_follow_the_reference() {
        use ReplicaState::*;
        for from in ReplicaState::ALL {
            for to in ReplicaState::ALL {
                let want =
                    matches!(from, Cached | Precious | Broken) && matches!(to, Removed | Cached | Precious | Broken);
                assert_eq!(from.may_change_to(to), want, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn pool_mode_renders_like_dcache() {
        assert_eq!(PoolMode::ENABLED.to_string(), "enabled");
        assert_eq!(PoolMode::disabled(PoolMode::RDONLY).to_string(), "disabled(store,stage,p2p-client)");
        assert_eq!(
            PoolMode::disabled(PoolMode::STRICT).to_string(),
            "disabled(fetch,store,stage,p2p-client,p2p-server)"
        );
        assert_eq!(PoolMode::disabled(PoolMode::DRAINING).to_string(), "disabled(store,stage,p2p-client,draining)");
    }

    #[test]
    fn adler32_matches_known_value() {
        let mut w = ChecksumWriter::new();
        w.update(b"Wiki");
        w.update(b"pedia");
        assert_eq!(w.finish(), Checksum::Adler32(0x11E60398));
        assert_eq!(w.finish().to_string(), "ADLER32:11e60398");
        assert_eq!("ADLER32:11e60398".parse::<Checksum>().unwrap(), w.finish());
    }

    #[test]
    fn storage_classes_are_bounded() {
        let at_limit = "a".repeat(MAX_STORAGE_CLASS);
        let table: &[(&str, Result<(), &str>)] = &[
            ("atlas:raw", Ok(())),
            ("MCTAPE:MC@osm", Ok(())),
            ("", Ok(())),
            ("a b", Ok(())),
            (&at_limit, Ok(())),
            ("a\nb", Err("storage class \"a\\nb\" holds a control character")),
            ("\u{7f}", Err("storage class \"\\u{7f}\" holds a control character")),
        ];
        for (class, want) in table {
            let got = check_storage_class(class).map_err(|e| e.to_string());
            assert_eq!(got.as_ref().map(|_| ()).map_err(String::as_str), *want, "{class:?}");
        }
        let long = "s".repeat(60_000);
        let err = check_storage_class(&long).unwrap_err().to_string();
        assert!(err.starts_with("storage class too long: 60000 bytes, at most 256 (ssss"), "{err}");
        assert!(err.len() < 150, "{err}");
    }
}
