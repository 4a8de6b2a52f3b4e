//! The on-disk record format. Every record starts with a format version byte; the body is a
//! deliberate, explicit struct (not the in-memory types) encoded with postcard, so the model
//! types can change without changing what is on disk.

use serde::{Deserialize, Serialize};
use tidepool_p2p::PnfsId;
use tidepool_p2p::model::{AccessLatency, Checksum, FileAttributes, ReplicaState, RetentionPolicy, StickyRecord};

use super::Replica;

/// The format written today.
pub const FORMAT_V1: u8 = 1;

#[derive(Serialize, Deserialize)]
struct RecordV1 {
    size: u64,
    adler32: Option<u32>,
    state: u8,
    sticky: Vec<(String, i64)>,
    storage_class: Option<String>,
    cache_class: Option<String>,
    access_latency: Option<u8>,
    retention_policy: Option<u8>,
    hsm: Option<String>,
    created: i64,
    accessed: i64,
}

/// The same layout as [`RecordV1`], borrowing its strings: what restart recovery reads of a
/// million records without allocating for each.
#[derive(Deserialize)]
struct RecordV1View<'a> {
    size: u64,
    _adler32: Option<u32>,
    state: u8,
    #[serde(borrow)]
    sticky: Vec<(&'a str, i64)>,
    #[serde(borrow)]
    _storage_class: Option<&'a str>,
    #[serde(borrow)]
    _cache_class: Option<&'a str>,
    _access_latency: Option<u8>,
    _retention_policy: Option<u8>,
    #[serde(borrow)]
    _hsm: Option<&'a str>,
    _created: i64,
    accessed: i64,
}

/// What the repository's index needs of a record.
pub struct EntryFields {
    pub size: u64,
    pub state: ReplicaState,
    pub atime: i64,
    /// Expiry of each sticky record.
    pub expiries: Vec<i64>,
}

impl EntryFields {
    /// The latest expiry among the records valid at `now` (see `index::sticky_until`).
    pub fn sticky_until(&self, now: i64) -> i64 {
        super::index::latest_expiry(self.expiries.iter().copied(), now)
    }
}

/// Decodes only what the index needs.
pub fn decode_entry(bytes: &[u8]) -> Result<EntryFields, String> {
    let (&version, body) = bytes.split_first().ok_or("empty record")?;
    if version != FORMAT_V1 {
        return Err(format!("record format {version} is not known to this version of Tidepool"));
    }
    let r: RecordV1View<'_> = postcard::from_bytes(body).map_err(|e| format!("corrupt record: {e}"))?;
    Ok(EntryFields {
        size: r.size,
        state: state_from(r.state)?,
        atime: r.accessed,
        expiries: r.sticky.iter().map(|(_, e)| *e).collect(),
    })
}

fn state_code(s: ReplicaState) -> u8 {
    ReplicaState::ALL.iter().position(|x| *x == s).unwrap_or(0) as u8
}

fn state_from(code: u8) -> Result<ReplicaState, String> {
    ReplicaState::ALL.get(code as usize).copied().ok_or_else(|| format!("unknown state code {code}"))
}

pub fn encode(r: &Replica) -> Vec<u8> {
    let a = &r.attrs;
    let body = RecordV1 {
        size: a.size,
        adler32: a.checksum.map(|Checksum::Adler32(v)| v),
        state: state_code(r.state),
        sticky: r.sticky.iter().map(|s| (s.owner.clone(), s.expire)).collect(),
        storage_class: a.storage_class.clone(),
        cache_class: a.cache_class.clone(),
        access_latency: a.access_latency.map(|al| match al {
            AccessLatency::Online => 0,
            AccessLatency::Nearline => 1,
        }),
        retention_policy: a.retention_policy.map(|rp| match rp {
            RetentionPolicy::Custodial => 0,
            RetentionPolicy::Replica => 1,
            RetentionPolicy::Output => 2,
        }),
        hsm: a.hsm.clone(),
        created: a.creation_time,
        accessed: a.access_time,
    };
    postcard::to_extend(&body, vec![FORMAT_V1]).expect("records always encode")
}

pub fn decode(pnfsid: PnfsId, bytes: &[u8]) -> Result<Replica, String> {
    let (&version, body) = bytes.split_first().ok_or("empty record")?;
    if version != FORMAT_V1 {
        return Err(format!("record format {version} is not known to this version of Tidepool"));
    }
    let r: RecordV1 = postcard::from_bytes(body).map_err(|e| format!("corrupt record: {e}"))?;
    let access_latency = match r.access_latency {
        None => None,
        Some(0) => Some(AccessLatency::Online),
        Some(1) => Some(AccessLatency::Nearline),
        Some(x) => return Err(format!("unknown access latency code {x}")),
    };
    let retention_policy = match r.retention_policy {
        None => None,
        Some(0) => Some(RetentionPolicy::Custodial),
        Some(1) => Some(RetentionPolicy::Replica),
        Some(2) => Some(RetentionPolicy::Output),
        Some(x) => return Err(format!("unknown retention policy code {x}")),
    };
    Ok(Replica {
        attrs: FileAttributes {
            pnfsid,
            size: r.size,
            checksum: r.adler32.map(Checksum::Adler32),
            storage_class: r.storage_class,
            cache_class: r.cache_class,
            access_latency,
            retention_policy,
            hsm: r.hsm,
            creation_time: r.created,
            access_time: r.accessed,
        },
        state: state_from(r.state)?,
        sticky: r.sticky.into_iter().map(|(owner, expire)| StickyRecord { owner, expire }).collect(),
    })
}

/// A stored hold (`Repository::hold`): the end (big-endian milliseconds), then the owner.
pub fn encode_hold(until: i64, owner: &[u8]) -> Vec<u8> {
    let mut value = until.to_be_bytes().to_vec();
    value.extend_from_slice(owner);
    value
}

/// A stored hold's end and owner; `None` if it is shorter than the end.
pub fn decode_hold(value: &[u8]) -> Option<(i64, Vec<u8>)> {
    let (until, owner) = value.split_first_chunk::<8>()?;
    Some((i64::from_be_bytes(*until), owner.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_unknown_versions() {
        let id: PnfsId = "0000A1B2C3D4E5F60718293A4B5C6D7E8F90".parse().unwrap();
        let r = Replica {
            attrs: FileAttributes {
                pnfsid: id,
                size: 42,
                checksum: Some(Checksum::Adler32(7)),
                storage_class: Some("atlas:default".into()),
                cache_class: None,
                access_latency: Some(AccessLatency::Nearline),
                retention_policy: Some(RetentionPolicy::Custodial),
                hsm: Some("osm".into()),
                creation_time: 1,
                access_time: 2,
            },
            state: ReplicaState::Precious,
            sticky: vec![StickyRecord::new("PinManager-1", -1)],
        };
        let bytes = encode(&r);
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(decode(id, &bytes).unwrap(), r);
        let entry = decode_entry(&bytes).unwrap();
        assert_eq!((entry.size, entry.state, entry.atime, entry.expiries), (42, ReplicaState::Precious, 2, vec![-1]));
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(decode(id, &future).unwrap_err().contains("format 9"));
        assert!(decode(id, &bytes[..3]).is_err());
        assert!(decode(id, &[]).is_err());
    }
}
