//! Small helpers for tests of the repository and of the crates above it (feature `testing`):
//! a fixed clock, made-up pnfsids and attributes, and a one-call way to store a replica.

use std::sync::Arc;

use tidepool_p2p::PnfsId;
use tidepool_p2p::model::{AccessLatency, FileAttributes, ReplicaState, RetentionPolicy, StickyRecord};

use crate::{Replica, Repository};

/// The clock of the tests, in epoch milliseconds.
pub const NOW: i64 = 1_700_000_000_000;

/// A pnfsid made from `n`.
pub fn id(n: u32) -> PnfsId {
    let mut b = [0u8; 16];
    b[12..].copy_from_slice(&n.to_be_bytes());
    PnfsId::from_random(b)
}

/// Attributes of a replica of `size` bytes in `atlas:default`, made at [`NOW`].
pub fn attrs(id: PnfsId, size: u64) -> FileAttributes {
    FileAttributes {
        pnfsid: id,
        size,
        checksum: None,
        storage_class: Some("atlas:default".into()),
        cache_class: None,
        access_latency: Some(AccessLatency::Online),
        retention_policy: Some(RetentionPolicy::Replica),
        hsm: None,
        creation_time: NOW,
        access_time: NOW,
    }
}

/// The bytes of the replica `id` of `size` bytes (the same every time).
pub fn content(id: PnfsId, size: u64) -> Vec<u8> {
    let seed = id.as_bytes().iter().fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(*b));
    (0..size).map(|i| seed.wrapping_add((i % 251) as u8)).collect()
}

/// Stores a complete replica with the given state and sticky records.
pub fn put(
    repo: &Arc<Repository>,
    id: PnfsId,
    size: u64,
    state: ReplicaState,
    sticky: Vec<StickyRecord>,
    now: i64,
) -> Replica {
    let mut a = attrs(id, size);
    a.access_time = now;
    let mut inc = repo.create(a, ReplicaState::FromClient, now).unwrap();
    inc.write(&content(id, size)).unwrap();
    inc.commit(state, sticky, None, now).unwrap()
}
