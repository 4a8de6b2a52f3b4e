//! One conformance suite, run against both stores: every test here is instantiated once for
//! [`MemStore`] and once for [`SledStore`].

use std::io::Read;
use std::sync::Arc;

use tidepool_p2p::PnfsId;
use tidepool_p2p::model::{
    AccessLatency, Checksum, ChecksumWriter, FileAttributes, NEVER, ReplicaState, RetentionPolicy, StickyMode,
    StickyRecord,
};

use super::*;

/// A place a repository lives across restarts.
pub trait Harness {
    fn store(&mut self) -> Arc<dyn ReplicaStore>;
    /// Deletes a replica's data file behind the repository's back.
    fn lose_data(&mut self, id: &PnfsId);
    /// Drops a data file with no record into the data area.
    fn orphan(&mut self, name: &str);
    /// Leaves half-written data in the incoming area, as a crash mid-transfer does.
    fn partial(&mut self, id: &PnfsId);
}

pub struct Mem(pub Arc<MemStore>);

impl Harness for Mem {
    fn store(&mut self) -> Arc<dyn ReplicaStore> {
        self.0.clone()
    }
    fn lose_data(&mut self, id: &PnfsId) {
        self.0.lose_data(id);
    }
    fn orphan(&mut self, name: &str) {
        self.0.put_orphan_data(name, b"x");
    }
    fn partial(&mut self, id: &PnfsId) {
        let mut w = self.0.create_incoming(id).unwrap();
        w.write_all(b"half").unwrap();
    }
}

pub struct Sled(pub tempfile::TempDir);

impl Harness for Sled {
    fn store(&mut self) -> Arc<dyn ReplicaStore> {
        Arc::new(SledStore::open(self.0.path()).unwrap())
    }
    fn lose_data(&mut self, id: &PnfsId) {
        std::fs::remove_file(self.0.path().join("data").join(id.to_string())).unwrap();
    }
    fn orphan(&mut self, name: &str) {
        std::fs::write(self.0.path().join("data").join(name), b"x").unwrap();
    }
    fn partial(&mut self, id: &PnfsId) {
        std::fs::write(self.0.path().join("incoming").join(id.to_string()), b"half").unwrap();
    }
}

pub const NOW: i64 = 1_700_000_000_000;

pub fn id(n: u32) -> PnfsId {
    let mut b = [0u8; 16];
    b[12..].copy_from_slice(&n.to_be_bytes());
    PnfsId::from_random(b)
}

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

fn read_all(repo: &Repository, id: &PnfsId) -> Vec<u8> {
    let (_, mut data) = repo.open_data(id, NOW).unwrap();
    let mut out = Vec::new();
    data.read_to_end(&mut out).unwrap();
    out
}

fn open(h: &mut dyn Harness, capacity: u64) -> (Arc<Repository>, Recovery) {
    Repository::open(h.store(), capacity, NOW).unwrap()
}

pub fn commit_makes_replica_visible_with_checksum(h: &mut dyn Harness) {
    let (repo, rec) = open(h, 1 << 20);
    assert!(rec.is_clean());
    let r = put(&repo, id(1), 1000, ReplicaState::Precious, vec![StickyRecord::new("system", NEVER)], NOW);
    let mut sum = ChecksumWriter::new();
    sum.update(&content(id(1), 1000));
    assert_eq!(r.attrs.checksum, Some(sum.finish()));
    let got = repo.get(&id(1)).unwrap().unwrap();
    assert_eq!(got.state, ReplicaState::Precious);
    assert_eq!(got.sticky, vec![StickyRecord::new("system", NEVER)]);
    assert_eq!(read_all(&repo, &id(1)), content(id(1), 1000));
    drop(repo);
    let (repo, rec) = open(h, 1 << 20);
    assert!(rec.is_clean(), "{rec:?}");
    assert_eq!(rec.loaded, 1);
    assert_eq!(repo.get(&id(1)).unwrap().unwrap().attrs.checksum, Some(sum.finish()));
    assert_eq!(read_all(&repo, &id(1)), content(id(1), 1000));
}

pub fn partial_replica_is_never_readable_and_vanishes(h: &mut dyn Harness) {
    let (repo, _) = open(h, 1 << 20);
    let mut inc = repo.create(attrs(id(1), 100), ReplicaState::FromClient, NOW).unwrap();
    inc.write(&[1; 50]).unwrap();
    assert_eq!(repo.get(&id(1)).unwrap().unwrap().state, ReplicaState::FromClient);
    assert!(matches!(repo.open_data(&id(1), NOW), Err(RepoError::NotCommitted { .. })));
    assert!(matches!(repo.remove(&id(1), true, NOW), Err(RepoError::Busy { .. })));
    assert!(matches!(repo.create(attrs(id(1), 100), ReplicaState::FromClient, NOW), Err(RepoError::Exists(_))));
    assert_eq!(repo.space(NOW).used, 100, "space is reserved while receiving");
    drop(inc);
    assert!(repo.get(&id(1)).unwrap().is_none());
    assert_eq!(repo.space(NOW).used, 0);
    drop(repo);
    let (repo, rec) = open(h, 1 << 20);
    assert!(rec.is_clean(), "an aborted upload leaves nothing: {rec:?}");
    assert!(repo.is_empty());
}

pub fn partial_replica_left_by_a_crash_is_removed_at_open(h: &mut dyn Harness) {
    let (repo, _) = open(h, 1 << 20);
    put(&repo, id(2), 10, ReplicaState::Cached, vec![], NOW);
    drop(repo);
    h.partial(&id(1)); // what a crash during a transfer leaves behind
    let (repo, rec) = open(h, 1 << 20);
    assert_eq!(rec.removed_partial_count, 1);
    assert!(repo.get(&id(1)).unwrap().is_none());
    assert_eq!(repo.space(NOW).used, 10);
    drop(repo);
    let (_, rec) = open(h, 1 << 20);
    assert!(rec.is_clean(), "the partial data is gone for good: {rec:?}");
}

pub fn bad_size_or_checksum_commits_nothing(h: &mut dyn Harness) {
    let (repo, _) = open(h, 1 << 20);
    let mut inc = repo.create(attrs(id(1), 10), ReplicaState::FromClient, NOW).unwrap();
    inc.write(&[1; 9]).unwrap();
    assert!(matches!(inc.commit(ReplicaState::Cached, vec![], None, NOW), Err(RepoError::Short { got: 9, .. })));
    assert!(repo.get(&id(1)).unwrap().is_none());

    let mut inc = repo.create(attrs(id(1), 10), ReplicaState::FromClient, NOW).unwrap();
    assert!(matches!(inc.write(&[1; 11]), Err(RepoError::TooLong { .. })));
    drop(inc);

    let mut inc = repo.create(attrs(id(1), 10), ReplicaState::FromClient, NOW).unwrap();
    inc.write(&[1; 10]).unwrap();
    let wrong = Checksum::Adler32(12345);
    assert!(matches!(
        inc.commit(ReplicaState::Cached, vec![], Some(wrong), NOW),
        Err(RepoError::ChecksumMismatch { .. })
    ));
    assert!(repo.get(&id(1)).unwrap().is_none());
    assert_eq!(repo.space(NOW).used, 0);
    drop(repo);
    let (_, rec) = open(h, 1 << 20);
    assert!(rec.is_clean(), "{rec:?}");
}

pub fn state_changes_follow_the_rules(h: &mut dyn Harness) {
    let (repo, _) = open(h, 1 << 20);
    put(&repo, id(1), 10, ReplicaState::Cached, vec![], NOW);
    repo.set_state(&id(1), ReplicaState::Precious, NOW).unwrap();
    assert_eq!(repo.get(&id(1)).unwrap().unwrap().state, ReplicaState::Precious);
    repo.set_state(&id(1), ReplicaState::Cached, NOW).unwrap();
    let err = repo.set_state(&id(1), ReplicaState::FromClient, NOW).unwrap_err();
    assert_eq!(err.to_string(), format!("illegal state transition for {}: CACHED -> FROM_CLIENT", id(1)));
    assert!(matches!(repo.set_state(&id(2), ReplicaState::Cached, NOW), Err(RepoError::NotFound(_))));
    repo.set_state(&id(2), ReplicaState::Removed, NOW).unwrap();
    repo.set_state(&id(1), ReplicaState::Broken, NOW).unwrap();
    assert!(matches!(repo.open_data(&id(1), NOW), Err(RepoError::NotCommitted { .. })));
    repo.set_state(&id(1), ReplicaState::Removed, NOW).unwrap();
    assert!(repo.get(&id(1)).unwrap().is_none());
    drop(repo);
    let (repo, rec) = open(h, 1 << 20);
    assert!(rec.is_clean(), "{rec:?}");
    assert!(repo.is_empty());
}

pub fn sticky_modes_and_removable_space(h: &mut dyn Harness) {
    let (repo, _) = open(h, 1 << 20);
    put(&repo, id(1), 100, ReplicaState::Cached, vec![], NOW);
    assert_eq!(repo.space(NOW).removable, 100);
    assert!(repo.set_sticky(&id(1), StickyRecord::new("alice", NOW + 1000), StickyMode::Overwrite, NOW).unwrap());
    assert_eq!(repo.space(NOW).removable, 0);
    assert_eq!(repo.space(NOW + 1000).removable, 100, "expired sticky records do not protect");
    assert!(!repo.set_sticky(&id(1), StickyRecord::new("alice", NOW + 10), StickyMode::ExtendOnly, NOW).unwrap());
    assert!(repo.set_sticky(&id(1), StickyRecord::new("alice", NEVER), StickyMode::ExtendOnly, NOW).unwrap());
    assert_eq!(repo.get(&id(1)).unwrap().unwrap().sticky, vec![StickyRecord::new("alice", NEVER)]);
    assert!(repo.set_sticky(&id(1), StickyRecord::new("alice", 0), StickyMode::Overwrite, NOW).unwrap());
    assert!(repo.get(&id(1)).unwrap().unwrap().sticky.is_empty());
    assert_eq!(repo.space(NOW).removable, 100);
    put(&repo, id(2), 50, ReplicaState::Precious, vec![], NOW);
    let s = repo.space(NOW);
    assert_eq!((s.total, s.used, s.free, s.precious, s.removable), (1 << 20, 150, (1 << 20) - 150, 50, 100));
}

pub fn sweeper_evicts_lru_and_never_precious_or_sticky(h: &mut dyn Harness) {
    let (repo, _) = open(h, 100);
    put(&repo, id(1), 20, ReplicaState::Cached, vec![], NOW + 3);
    put(&repo, id(2), 20, ReplicaState::Cached, vec![], NOW + 1);
    put(&repo, id(3), 20, ReplicaState::Precious, vec![], NOW);
    put(&repo, id(4), 20, ReplicaState::Cached, vec![StickyRecord::new("PinManager-1", NEVER)], NOW);
    put(&repo, id(5), 10, ReplicaState::Cached, vec![], NOW + 2);
    assert_eq!(repo.space(NOW).free, 10);
    // Needs 35 with 10 free: evicts id(2) (oldest access), then id(5), and nothing more.
    put(&repo, id(6), 35, ReplicaState::Cached, vec![], NOW + 9);
    assert!(repo.get(&id(2)).unwrap().is_none());
    assert!(repo.get(&id(5)).unwrap().is_none());
    assert!(repo.get(&id(1)).unwrap().is_some());
    // Only id(1) and id(6) are removable: 55 removable + 5 free < 61.
    let err = repo.create(attrs(id(7), 61), ReplicaState::FromClient, NOW).unwrap_err();
    assert!(matches!(err, RepoError::PoolFull { needed: 61, free: 5, removable: 55, .. }), "{err}");
    assert!(err.to_string().starts_with("pool full"));
    for kept in [1, 3, 4, 6] {
        assert!(repo.get(&id(kept)).unwrap().is_some(), "{kept} kept after a refused create");
    }
    drop(repo);
    let (repo, rec) = open(h, 100);
    assert!(rec.is_clean(), "evicted replicas leave no trace: {rec:?}");
    assert_eq!(repo.len(), 4);
}

pub fn remove_respects_precious_and_sticky_unless_forced(h: &mut dyn Harness) {
    let (repo, _) = open(h, 1 << 20);
    put(&repo, id(1), 10, ReplicaState::Precious, vec![], NOW);
    put(&repo, id(2), 10, ReplicaState::Cached, vec![StickyRecord::new("bob", NEVER)], NOW);
    put(&repo, id(3), 10, ReplicaState::Cached, vec![], NOW);
    assert!(repo.remove(&id(1), false, NOW).unwrap_err().to_string().contains("precious"));
    assert!(repo.remove(&id(2), false, NOW).unwrap_err().to_string().contains("owner bob"));
    repo.remove(&id(3), false, NOW).unwrap();
    repo.remove(&id(1), true, NOW).unwrap();
    repo.remove(&id(2), true, NOW).unwrap();
    assert!(repo.is_empty());
}

pub fn changes_are_announced_in_order(h: &mut dyn Harness) {
    let (repo, _) = open(h, 1 << 20);
    let mut rx = repo.subscribe();
    put(&repo, id(1), 10, ReplicaState::Cached, vec![], NOW);
    repo.set_sticky(&id(1), StickyRecord::new("a", NEVER), StickyMode::Overwrite, NOW).unwrap();
    repo.touch(&id(1), NOW + 5, NOW).unwrap();
    repo.set_state(&id(1), ReplicaState::Precious, NOW).unwrap();
    repo.remove(&id(1), true, NOW).unwrap();
    let mut got = Vec::new();
    while let Ok(c) = rx.try_recv() {
        assert_eq!(c.pnfsid, id(1));
        got.push(c.kind);
    }
    use ReplicaState::*;
    assert_eq!(
        got,
        vec![
            ChangeKind::State { from: New, to: FromClient },
            ChangeKind::State { from: FromClient, to: Cached },
            ChangeKind::Sticky(vec![StickyRecord::new("a", NEVER)]),
            ChangeKind::AccessTime(NOW + 5),
            ChangeKind::State { from: Cached, to: Precious },
            ChangeKind::State { from: Precious, to: Removed },
        ]
    );
}

pub fn recovery_reports_missing_and_orphan_data(h: &mut dyn Harness) {
    let (repo, _) = open(h, 1 << 20);
    put(&repo, id(1), 10, ReplicaState::Cached, vec![], NOW);
    put(&repo, id(2), 10, ReplicaState::Cached, vec![], NOW);
    drop(repo);
    h.lose_data(&id(1));
    h.orphan(&id(9).to_string());
    h.orphan("not-a-replica");
    let (repo, rec) = open(h, 1 << 20);
    assert_eq!(rec.missing_data, vec![id(1)]);
    assert_eq!(rec.orphan_data_count, 2);
    assert_eq!(repo.get(&id(1)).unwrap().unwrap().state, ReplicaState::Broken);
    assert!(matches!(repo.open_data(&id(1), NOW), Err(RepoError::NotCommitted { .. })));
    assert!(repo.get(&id(9)).unwrap().is_none(), "an orphan is never served");
    let report = rec.report().join("\n");
    assert!(report.contains("marked BROKEN"), "{report}");
    assert!(report.contains("not-a-replica"), "{report}");
    assert_eq!(read_all(&repo, &id(2)), content(id(2), 10));
}

pub fn settings_survive_restart(h: &mut dyn Harness) {
    let (repo, _) = open(h, 1 << 20);
    assert_eq!(repo.setting("mode").unwrap(), None);
    repo.put_setting("mode", b"17").unwrap();
    drop(repo);
    let (repo, _) = open(h, 1 << 20);
    assert_eq!(repo.setting("mode").unwrap().as_deref(), Some(&b"17"[..]));
}

pub fn a_missing_checksum_is_recorded_durably_and_never_replaced(h: &mut dyn Harness) {
    let (repo, _) = open(h, 1 << 20);
    let r = put(&repo, id(1), 100, ReplicaState::Cached, vec![], NOW);
    let sum = r.attrs.checksum.unwrap();
    // A replica stored without a checksum (as by an older version).
    let mut bare = r.clone();
    bare.attrs.checksum = None;
    repo.store.put_record(&id(1), &record::encode(&bare)).unwrap();
    let mut changes = repo.subscribe();
    repo.set_checksum(&id(1), sum, NOW).unwrap();
    assert_eq!(changes.try_recv().unwrap().kind, ChangeKind::Checksum(sum));
    repo.set_checksum(&id(1), sum, NOW).unwrap();
    assert!(changes.try_recv().is_err(), "the same checksum again changes nothing");
    let other = Checksum::Adler32(1);
    let err = repo.set_checksum(&id(1), other, NOW).unwrap_err();
    assert!(err.to_string().contains("already has checksum"), "{err}");
    assert!(matches!(repo.set_checksum(&id(2), sum, NOW), Err(RepoError::NotFound(_))));
    drop((repo, changes));
    let (repo, _) = open(h, 1 << 20);
    assert_eq!(repo.get(&id(1)).unwrap().unwrap().attrs.checksum, Some(sum));
}

pub fn conditional_sticky_drop_and_remove_see_the_records_as_they_are(h: &mut dyn Harness) {
    let (repo, _) = open(h, 1 << 20);
    let pin = |expire| StickyRecord::new("PinManager-1", expire);
    put(&repo, id(1), 10, ReplicaState::Cached, vec![pin(NOW + 1000), StickyRecord::new("alice", NEVER)], NOW);
    let mut changes = repo.subscribe();
    // Only the record the predicate names goes, and the change is announced.
    assert!(repo.drop_sticky_if(&id(1), NOW, |s| s.owner.starts_with("PinManager")).unwrap());
    assert_eq!(changes.try_recv().unwrap().kind, ChangeKind::Sticky(vec![StickyRecord::new("alice", NEVER)]));
    assert!(!repo.drop_sticky_if(&id(1), NOW, |s| s.owner == "bob").unwrap(), "nothing to drop");
    // A removal refused by its check leaves the replica; an allowed one removes it.
    let refused = repo.remove_if(&id(1), |r| match r.sticky.is_empty() {
        true => Ok(()),
        false => Err(RepoError::Protected("sticky".into())),
    });
    assert!(matches!(refused, Err(RepoError::Protected(_))));
    assert!(repo.get(&id(1)).unwrap().is_some());
    repo.remove_if(&id(1), |_| Ok(())).unwrap();
    assert!(repo.get(&id(1)).unwrap().is_none());
    repo.remove_if(&id(1), |_| Ok(())).unwrap();
    drop((repo, changes));
    let (repo, _) = open(h, 1 << 20);
    assert!(repo.get(&id(1)).unwrap().is_none(), "the removal is durable");
}

/// Runs a future to its end on a runtime of its own (the conformance tests are plain tests).
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

fn store_whole(repo: &Arc<Repository>, id: PnfsId, data: Vec<u8>, expected: Option<Checksum>) -> RepoResult<Replica> {
    let size = data.len() as u64;
    let sticky = vec![StickyRecord::new("alice", NEVER)];
    block_on(repo.store_whole(
        attrs(id, size),
        ReplicaState::FromPool,
        data.into(),
        ReplicaState::Cached,
        sticky,
        expected,
        NOW,
    ))
}

pub fn a_whole_replica_is_checked_made_room_for_and_committed_in_one_step(h: &mut dyn Harness) {
    let (repo, _) = open(h, 3000);
    let old = put(&repo, id(1), 1000, ReplicaState::Cached, vec![], NOW - 1000);
    put(&repo, id(2), 1000, ReplicaState::Precious, vec![], NOW);
    let mut sum = ChecksumWriter::new();
    sum.update(&content(id(3), 1500));
    let good = sum.finish();

    // A wrong checksum or a wrong size commits nothing and takes no room.
    let err = store_whole(&repo, id(3), content(id(3), 1500), Some(Checksum::Adler32(1))).unwrap_err();
    assert!(matches!(err, RepoError::ChecksumMismatch { .. }), "{err}");
    let mut short = content(id(3), 1500);
    short.pop();
    let a = attrs(id(3), 1500);
    let err =
        block_on(repo.store_whole(a, ReplicaState::FromPool, short.into(), ReplicaState::Cached, vec![], None, NOW))
            .unwrap_err();
    assert!(matches!(err, RepoError::Short { .. }), "{err}");
    assert!(repo.get(&id(3)).unwrap().is_none());
    assert!(repo.incoming().is_empty());
    assert_eq!(repo.space(NOW).used, 2000);

    // 1500 bytes fit only if the cached replica goes; the precious one stays.
    let r = store_whole(&repo, id(3), content(id(3), 1500), Some(good)).unwrap();
    assert_eq!((r.state, r.attrs.checksum), (ReplicaState::Cached, Some(good)));
    assert_eq!(r.sticky, vec![StickyRecord::new("alice", NEVER)]);
    assert!(repo.get(&old.pnfsid()).unwrap().is_none(), "the cached replica made room");
    assert!(repo.get(&id(2)).unwrap().is_some());
    assert_eq!(read_all(&repo, &id(3)), content(id(3), 1500));
    let err = store_whole(&repo, id(4), content(id(4), 2000), None).unwrap_err();
    assert_eq!(err.code(), tidepool_p2p::ErrorCode::PoolFull, "{err}");
    assert!(repo.get(&id(4)).unwrap().is_none());

    // A data file left behind by a crash (no record) is replaced, not served.
    h.orphan(&id(6).to_string());
    store_whole(&repo, id(6), content(id(6), 400), None).unwrap();
    assert_eq!(read_all(&repo, &id(6)), content(id(6), 400));

    // Once handed to the committer the replica is committed even if nobody waits for it.
    let a = attrs(id(5), 10);
    let mut fut = Box::pin(repo.store_whole(
        a,
        ReplicaState::FromPool,
        content(id(5), 10).into(),
        ReplicaState::Cached,
        vec![],
        None,
        NOW,
    ));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let _ = fut.as_mut().poll(&mut cx);
    drop(fut);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while repo.get(&id(5)).unwrap().map(|r| r.state) != Some(ReplicaState::Cached) {
        assert!(std::time::Instant::now() < deadline, "the abandoned commit never completed");
        std::thread::yield_now();
    }
    assert!(repo.incoming().is_empty());

    drop(repo);
    let (repo, rec) = open(h, 3000);
    assert!(rec.is_clean(), "{rec:?}");
    assert_eq!(read_all(&repo, &id(3)), content(id(3), 1500));
    assert_eq!(repo.get(&id(3)).unwrap().unwrap().sticky, vec![StickyRecord::new("alice", NEVER)]);
    assert_eq!(read_all(&repo, &id(5)), content(id(5), 10));
    assert_eq!(read_all(&repo, &id(6)), content(id(6), 400));
}

pub fn disk_full_fails_cleanly(h: &mut dyn Harness, fill: &dyn Fn()) {
    let (repo, _) = open(h, 1 << 20);
    put(&repo, id(1), 10, ReplicaState::Cached, vec![], NOW);
    fill();
    let mut inc = repo.create(attrs(id(2), 1000), ReplicaState::FromClient, NOW).unwrap();
    let err = inc.write(&[0; 1000]).unwrap_err();
    assert!(matches!(err, RepoError::DiskFull(_)), "{err}");
    assert_eq!(err.code(), tidepool_p2p::ErrorCode::PoolFull);
    drop(inc);
    assert!(repo.get(&id(2)).unwrap().is_none());
    let err = store_whole(&repo, id(3), vec![7; 1000], None).unwrap_err();
    assert_eq!(err.code(), tidepool_p2p::ErrorCode::PoolFull, "{err}");
    assert!(repo.get(&id(3)).unwrap().is_none());
    assert!(repo.incoming().is_empty());
    assert_eq!(read_all(&repo, &id(1)), content(id(1), 10), "existing replicas are untouched");
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod mem {
            $(#[test] fn $name() { super::$name(&mut super::Mem(super::MemStore::new())); })*
        }
        mod sled {
            $(#[test] fn $name() { super::$name(&mut super::Sled(tempfile::tempdir().unwrap())); })*
        }
    };
}

conformance!(
    commit_makes_replica_visible_with_checksum,
    partial_replica_is_never_readable_and_vanishes,
    partial_replica_left_by_a_crash_is_removed_at_open,
    bad_size_or_checksum_commits_nothing,
    state_changes_follow_the_rules,
    sticky_modes_and_removable_space,
    sweeper_evicts_lru_and_never_precious_or_sticky,
    remove_respects_precious_and_sticky_unless_forced,
    changes_are_announced_in_order,
    recovery_reports_missing_and_orphan_data,
    settings_survive_restart,
    a_missing_checksum_is_recorded_durably_and_never_replaced,
    conditional_sticky_drop_and_remove_see_the_records_as_they_are,
    a_whole_replica_is_checked_made_room_for_and_committed_in_one_step,
);

#[test]
fn mem_disk_full_fails_cleanly() {
    let store = MemStore::new();
    let s2 = store.clone();
    disk_full_fails_cleanly(&mut Mem(store), &move || s2.fail_writes_after(100));
}

/// Removals that come while a flush is under way share the next flush, and each returns only
/// after a flush that started after its change.
#[test]
fn concurrent_removals_share_a_flush_that_started_after_them() {
    let (store, repo) = with_replicas(4);
    let release = store.hold_next_flush(false);
    let first = remove_in_thread(&repo, 1);
    wait_until("the first removal's flush", || store.is_flushing());
    let before = store.flush_count();
    let others: Vec<_> = (2..=4).map(|n| remove_in_thread(&repo, n)).collect();
    wait_until("the other removals to wait", || repo.flusher.state.lock().requested == 4);
    assert!(others.iter().all(|t| !t.is_finished()), "a flush that started before them does not cover them");
    release.send(()).unwrap();
    first.join().unwrap().unwrap();
    for t in others {
        t.join().unwrap().unwrap();
    }
    assert_eq!(store.flush_count(), before + 1, "the three later removals shared one flush");
}

#[test]
fn a_failed_shared_flush_fails_its_leader_and_is_tried_again_for_the_others() {
    let (store, repo) = with_replicas(2);
    let release = store.hold_next_flush(true);
    let first = remove_in_thread(&repo, 1);
    wait_until("the first removal's flush", || store.is_flushing());
    let second = remove_in_thread(&repo, 2);
    wait_until("the second removal to wait", || repo.flusher.state.lock().requested == 2);
    release.send(()).unwrap();
    let err = first.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("Input/output error"), "{err}");
    second.join().unwrap().unwrap();
}

#[test]
fn a_flush_that_panics_does_not_block_the_next_ones() {
    let (store, repo) = with_replicas(2);
    store.panic_next_flush();
    let first = remove_in_thread(&repo, 1);
    assert!(first.join().is_err(), "the panic reaches the caller that ran the flush");
    // The next caller flushes: it does not wait for the one that panicked.
    repo.remove(&id(2), false, NOW).unwrap();
    assert!(repo.get(&id(2)).unwrap().is_none());
}

/// A repository over memory holding replicas `id(1)..=id(n)`.
fn with_replicas(n: u32) -> (Arc<MemStore>, Arc<Repository>) {
    let store = MemStore::new();
    let (repo, _) = Repository::open(store.clone(), 1 << 20, NOW).unwrap();
    for k in 1..=n {
        put(&repo, id(k), 10, ReplicaState::Cached, vec![], NOW);
    }
    (store, repo)
}

/// Removes `id(n)` on a thread of its own.
fn remove_in_thread(repo: &Arc<Repository>, n: u32) -> std::thread::JoinHandle<RepoResult<()>> {
    let repo = repo.clone();
    std::thread::spawn(move || repo.remove(&id(n), false, NOW))
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}
