//! One conformance suite, run against both stores: every test here is instantiated once for
//! [`MemStore`] and once for [`SledStore`].

use std::io::Read;
use std::sync::Arc;

use tidepool_p2p::PnfsId;
use tidepool_p2p::model::{Checksum, ChecksumWriter, NEVER, ReplicaState, StickyMode, StickyRecord};

use super::*;
use crate::testing::*;

/// A place a repository lives across restarts.
pub trait Harness {
    fn store(&mut self) -> Arc<dyn ReplicaStore>;
    /// Deletes a replica's data file behind the repository's back.
    fn lose_data(&mut self, id: &PnfsId);
    /// Drops a data file with no record into the data area.
    fn orphan(&mut self, name: &str);
    /// Leaves half-written data in the incoming area, as a crash mid-transfer does.
    fn partial(&mut self, id: &PnfsId);
    /// Names of the files in the quarantine area.
    fn quarantined(&mut self) -> Vec<String>;
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
    fn quarantined(&mut self) -> Vec<String> {
        self.0.quarantined()
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
    fn quarantined(&mut self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.0.path().join("quarantine")) else { return Vec::new() };
        let mut names: Vec<String> = dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }
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
    assert!(matches!(repo.remove(&id(1), false, NOW), Err(RepoError::Protected { why: Protection::Precious, .. })));
    assert!(
        matches!(repo.remove(&id(2), false, NOW), Err(RepoError::Protected { why: Protection::Sticky { owner }, .. }) if owner == "bob")
    );
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
    assert_eq!(repo.get(&id(1)).unwrap().unwrap().state, ReplicaState::Broken);
    assert!(matches!(repo.open_data(&id(1), NOW), Err(RepoError::NotCommitted { .. })));
    assert!(repo.get(&id(9)).unwrap().is_none(), "an orphan is never served");
    // A pnfsid's file that no record names is the pool's own, never acknowledged or removed:
    // deleted. A file of another name is not the pool's to delete: quarantined.
    assert_eq!((rec.deleted_orphans.clone(), rec.deleted_orphan_count), (vec![id(9).to_string()], 1), "{rec:?}");
    assert_eq!((rec.quarantined.clone(), rec.quarantined_count), (vec!["not-a-replica".to_string()], 1), "{rec:?}");
    assert_eq!(rec.orphan_data_count, 0, "{rec:?}");
    assert_eq!(h.quarantined(), vec!["not-a-replica".to_string()]);
    let report = rec.report().join("\n");
    assert!(report.contains("marked BROKEN"), "{report}");
    assert!(
        report.contains(&format!(
            "deleted 1 data file(s) that no record names (never acknowledged, or removed): {}",
            id(9)
        )),
        "{report}"
    );
    assert!(report.contains("moved 1 data file(s) without a record into quarantine/"), "{report}");
    assert_eq!(read_all(&repo, &id(2)), content(id(2), 10));
    drop(repo);
    // Dealt with once: the next start finds only the BROKEN replica, already marked.
    let (_, rec) = open(h, 1 << 20);
    assert!(rec.is_clean(), "orphans are not reported again: {rec:?}");
}

/// A pool last run by a version whose metadata flush was no real sync may have lost an
/// acknowledged record in a power cut: its orphans are quarantined, never deleted, once.
pub fn orphans_of_a_pool_from_before_synced_flushes_are_quarantined(h: &mut dyn Harness) {
    // A store as an older version left it: data, and no note that flushes are synced.
    drop(h.store());
    h.orphan(&id(9).to_string());
    let (repo, rec) = open(h, 1 << 20);
    assert_eq!(rec.quarantined, vec![id(9).to_string()], "{rec:?}");
    assert_eq!(rec.deleted_orphan_count, 0, "{rec:?}");
    assert_eq!(h.quarantined(), vec![id(9).to_string()]);
    drop(repo);
    // From now on the pool's flushes are synced: a new orphan is deleted.
    h.orphan(&id(8).to_string());
    let (_, rec) = open(h, 1 << 20);
    assert_eq!(rec.deleted_orphans, vec![id(8).to_string()], "{rec:?}");
    assert_eq!(rec.quarantined_count, 0, "{rec:?}");
    assert_eq!(h.quarantined(), vec![id(9).to_string()], "the quarantine is left to the operator");
}

pub fn settings_survive_restart(h: &mut dyn Harness) {
    let (repo, _) = open(h, 1 << 20);
    assert_eq!(repo.setting("mode").unwrap(), None);
    repo.put_setting("mode", b"17").unwrap();
    // Large enough for sled to keep it in a blob file of its own, which the flush syncs too.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    repo.put_setting("big", &big).unwrap();
    repo.put_setting("big", &big[1..]).unwrap();
    drop(repo);
    let (repo, _) = open(h, 1 << 20);
    assert_eq!(repo.setting("mode").unwrap().as_deref(), Some(&b"17"[..]));
    assert_eq!(repo.setting("big").unwrap().as_deref(), Some(&big[1..]));
}

/// A hold placed before a copy commits comes back after a restart with its owner and keeps
/// the replica out of removable space; a hold that ran out, or whose replica never came, is
/// deleted at open.
pub fn holds_survive_a_restart_until_they_end(h: &mut dyn Harness) {
    let (repo, _) = open(h, 1 << 20);
    let until = NOW + 60_000;
    repo.hold(&[id(1), id(2)], until, b"pool1\n7", true, NOW).unwrap();
    put(&repo, id(1), 100, ReplicaState::Cached, vec![], NOW);
    put(&repo, id(3), 50, ReplicaState::Cached, vec![], NOW);
    assert_eq!(repo.space(NOW).removable, 50);
    drop(repo);
    let (repo, _) = open(h, 1 << 20);
    let saved = repo.take_saved_holds();
    assert_eq!(saved, vec![SavedHold { id: id(1), until, owner: b"pool1\n7".to_vec() }], "id 2 never came");
    assert!(repo.take_saved_holds().is_empty(), "handed out once");
    assert_eq!(repo.space(NOW).removable, 50, "the held replica is not removable");
    assert_eq!(repo.held_space(NOW), (1, 100));
    drop(repo);
    // Started after the hold ended: the replica is removable, and the hold is gone for good.
    let (repo, _) = Repository::open(h.store(), 1 << 20, until + 1).unwrap();
    assert!(repo.take_saved_holds().is_empty());
    assert_eq!(repo.space(until + 1).removable, 150);
    drop(repo);
    let (repo, _) = open(h, 1 << 20);
    assert!(repo.take_saved_holds().is_empty(), "an ended hold is deleted, not only skipped");
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
    assert!(matches!(err, RepoError::ChecksumKnown { known, given, .. } if known == sum && given == other), "{err}");
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
        false => Err(RepoError::Protected { id: id(1), why: Protection::Changed }),
    });
    assert!(matches!(refused, Err(RepoError::Protected { .. })));
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

/// A large replica (several MiB, written a MiB at a time as a transfer does; the sled store
/// writes it back as it goes) reads back whole, for a client and for a copy, from the start
/// and from an offset, and the same after a restart.
pub fn a_large_replica_written_in_chunks_reads_back_whole(h: &mut dyn Harness) {
    use std::io::{Seek, SeekFrom};
    let (mut repo, _) = open(h, 1 << 30);
    let size = 3 * (1 << 20) + 12_345;
    let data = content(id(1), size);
    let mut inc = repo.create(attrs(id(1), size), ReplicaState::FromPool, NOW).unwrap();
    for chunk in data.chunks(1 << 20) {
        inc.write(chunk).unwrap();
    }
    inc.commit(ReplicaState::Cached, vec![], None, NOW).unwrap();
    for _ in 0..2 {
        assert_eq!(read_all(&repo, &id(1)), data);
        let (_, mut copy) = repo.open_for_copy(&id(1)).unwrap();
        let mut whole = Vec::new();
        copy.read_to_end(&mut whole).unwrap();
        assert_eq!(whole, data);
        let at = (1 << 20) + 7;
        copy.seek(SeekFrom::Start(at)).unwrap();
        let mut rest = Vec::new();
        copy.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, &data[at as usize..]);
        drop((repo, copy));
        repo = open(h, 1 << 30).0;
    }
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
    orphans_of_a_pool_from_before_synced_flushes_are_quarantined,
    settings_survive_restart,
    holds_survive_a_restart_until_they_end,
    a_missing_checksum_is_recorded_durably_and_never_replaced,
    conditional_sticky_drop_and_remove_see_the_records_as_they_are,
    a_whole_replica_is_checked_made_room_for_and_committed_in_one_step,
    a_large_replica_written_in_chunks_reads_back_whole,
);

/// A file system without `RWF_DONTCACHE` (tmpfs; likewise a kernel before 6.14): the sled
/// store falls back to plain reads and writes.
#[test]
fn sled_store_without_uncached_io_reads_and_writes_plainly() {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("note: no /dev/shm; the fallback from RWF_DONTCACHE is not tested");
        return;
    }
    a_large_replica_written_in_chunks_reads_back_whole(&mut Sled(tempfile::tempdir_in(shm).unwrap()));
}

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
    assert_eq!(err.os_error(), Some(libc::EIO), "{err}");
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

/// The replicas `Repository::scan` lists.
fn listed(repo: &Repository) -> Vec<PnfsId> {
    let mut ids = Vec::new();
    repo.scan(&mut |r| {
        ids.push(r.pnfsid());
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    ids
}

/// Receives a replica of 10 bytes and commits it as CACHED.
fn try_put(repo: &Arc<Repository>, n: u32) -> RepoResult<Replica> {
    let mut inc = repo.create(attrs(id(n), 10), ReplicaState::FromPool, NOW)?;
    inc.write(&content(id(n), 10))?;
    inc.commit(ReplicaState::Cached, vec![], None, NOW)
}

/// Issue D6: on a full disk a batch's flush fails and so does the undo's deletion of its
/// records. Nothing of the batch may stay visible (`rep ls` listed it as CACHED), and neither
/// a later copy of the same file nor a restart may be blocked by what is left (a restart
/// marked it BROKEN, and BROKEN blocked every later copy).
#[test]
fn a_failed_commit_whose_undo_fails_leaves_nothing_and_blocks_no_later_copy() {
    use crate::mem_store::Fault;
    let store = MemStore::new();
    let (repo, _) = Repository::open(store.clone(), 1 << 20, NOW).unwrap();
    try_put(&repo, 1).unwrap();
    store.fail(Fault::Flush, u32::MAX);
    store.fail(Fault::DeleteRecord, u32::MAX);
    for n in [2, 3] {
        let err = try_put(&repo, n).unwrap_err();
        assert_eq!(err.os_error(), Some(libc::EIO), "{err}");
        assert!(repo.get(&id(n)).unwrap().is_none());
    }
    assert_eq!(listed(&repo), vec![id(1)], "nothing of a failed commit is listed");
    assert!(!store.has_data(&id(2).to_string()), "its data file is gone");
    assert!(store.get_record(&id(2)).unwrap().is_some(), "the test's premise: the record could not be deleted");

    // The disk has room again. A later copy of one of them is not blocked; its batch also
    // deletes what the other failed commit left.
    store.fail(Fault::Flush, 0);
    store.fail(Fault::DeleteRecord, 0);
    try_put(&repo, 2).unwrap();
    assert_eq!(listed(&repo), vec![id(1), id(2)]);
    assert_eq!(read_all(&repo, &id(2)), content(id(2), 10));
    assert!(store.get_record(&id(3)).unwrap().is_none(), "the other's record was deleted by the next batch");
    drop(repo);
    let (repo, rec) = Repository::open(store.clone(), 1 << 20, NOW).unwrap();
    assert!(rec.is_clean(), "nothing is left for recovery: {rec:?}");
    assert_eq!(listed(&repo), vec![id(1), id(2)]);
    try_put(&repo, 3).unwrap();
}

/// The same failure, but the pool restarts before anything could delete the records: recovery
/// recognises them by the mark the failed commit left, removes them instead of marking them
/// BROKEN, and the same files can be copied again.
#[test]
fn records_left_by_a_failed_commit_are_removed_at_restart() {
    use crate::mem_store::Fault;
    let store = MemStore::new();
    let (repo, _) = Repository::open(store.clone(), 1 << 20, NOW).unwrap();
    store.fail(Fault::Flush, u32::MAX);
    store.fail(Fault::DeleteRecord, u32::MAX);
    try_put(&repo, 1).unwrap_err();
    drop(repo);
    store.fail(Fault::Flush, 0);
    store.fail(Fault::DeleteRecord, 0);
    let (repo, rec) = Repository::open(store.clone(), 1 << 20, NOW).unwrap();
    assert_eq!((rec.missing_data_count, rec.failed_commits.clone()), (0, vec![id(1)]), "{rec:?}");
    assert!(
        rec.report()
            .join("\n")
            .contains(&format!("removed what 1 failed commit(s) left (never acknowledged): {}", id(1)))
    );
    assert!(repo.get(&id(1)).unwrap().is_none());
    try_put(&repo, 1).unwrap();
    drop(repo);
    let (repo, rec) = Repository::open(store, 1 << 20, NOW).unwrap();
    assert!(rec.is_clean(), "{rec:?}");
    assert_eq!(read_all(&repo, &id(1)), content(id(1), 10));
}

/// A batch whose sync fails and whose data files cannot be deleted either: no record names
/// them, so the next start deletes them as orphans.
#[test]
fn data_left_by_a_failed_sync_is_deleted_at_restart() {
    use crate::mem_store::Fault;
    let store = MemStore::new();
    let (repo, _) = Repository::open(store.clone(), 1 << 20, NOW).unwrap();
    store.fail(Fault::SyncData, 1);
    store.fail(Fault::RemoveData, u32::MAX);
    try_put(&repo, 1).unwrap_err();
    assert!(store.has_data(&id(1).to_string()), "the test's premise: the file could not be deleted");
    assert!(listed(&repo).is_empty());
    drop(repo);
    store.fail(Fault::RemoveData, 0);
    let (repo, rec) = Repository::open(store.clone(), 1 << 20, NOW).unwrap();
    assert_eq!(rec.deleted_orphans, vec![id(1).to_string()], "{rec:?}");
    assert!(!store.has_data(&id(1).to_string()));
    try_put(&repo, 1).unwrap();
}

#[test]
fn orphan_fates() {
    use OrphanFate::*;
    // (named by a pnfsid, an unreadable key exists, flushes are synced) -> fate
    let table = [
        ((true, false, true), Delete),
        ((true, true, true), Quarantine),
        ((true, false, false), Quarantine),
        ((false, false, true), Quarantine),
        ((false, true, false), Quarantine),
    ];
    for ((named, unreadable, synced), fate) in table {
        assert_eq!(orphan_fate(named, unreadable, synced), fate, "{named} {unreadable} {synced}");
    }
}

/// What the test was told is stored: `None` for a replica whose removal was acknowledged.
#[derive(Clone, Debug, PartialEq)]
struct Want {
    size: u64,
    state: ReplicaState,
    sticky: Vec<StickyRecord>,
}

/// The power-cut test's seeded generator (the migration module's SplitMix64).
struct Rng(tidepool_p2p::random::SplitMix);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Power loss as a model: puts, whole replicas, state and sticky changes, removals and a
/// setting, with the power cut at a random store call (inside any operation), the repository
/// reopened on what the disk kept, and the work continued; several cuts per seed. After each
/// cut: everything acknowledged is there and intact (state, sticky records, data), every
/// acknowledged removal stayed removed, nothing partial or unreadable is visible, recovery
/// marked nothing BROKEN, and a second start finds nothing left to recover. The one operation
/// the cut interrupted may have happened or not; whichever the disk shows is then taken as
/// the truth.
#[test]
fn nothing_acknowledged_is_lost_at_a_power_cut() {
    let (mut interrupted, mut acknowledged) = (0, 0);
    for seed in 0..128 {
        let (i, a) = power_cuts(seed);
        interrupted += i;
        acknowledged += a;
    }
    // The cuts land inside operations, not only between them, and there was work to lose.
    assert!(interrupted >= 200, "only {interrupted} of 512 cuts interrupted an operation");
    assert!(acknowledged >= 4000, "only {acknowledged} operations were acknowledged");
}

/// A hold on a replica still to come is durable with the commit that brings it (a move's
/// target holds a copy before committing it, and the source deletes its replica only after
/// that commit); a hold on a replica that is here (an update of an existing copy, a renewal)
/// is durable when `hold` returns. A renewal skips replicas that are gone. Checked by cutting
/// the power right after, keeping only what was flushed.
#[test]
fn holds_are_durable_before_anyone_relies_on_them() {
    use crate::mem_store::CutMode;
    let store = MemStore::new();
    let (repo, _) = Repository::open(store.clone(), 1 << 20, NOW).unwrap();
    repo.hold(&[id(1)], NOW + 1000, b"o", true, NOW).unwrap();
    put(&repo, id(1), 100, ReplicaState::Cached, vec![], NOW);
    put(&repo, id(2), 100, ReplicaState::Cached, vec![], NOW);
    let flushes = store.flush_count();
    // An existing copy held for an update, and a renewal that names a replica long gone.
    repo.hold(&[id(2)], NOW + 2000, b"o", true, NOW).unwrap();
    assert_eq!(store.flush_count(), flushes + 1, "a hold on a replica that is here is flushed");
    repo.hold(&[id(1), id(9)], NOW + 5000, b"o", false, NOW).unwrap();
    let after = store.power_cut(CutMode::DurableOnly);
    drop(repo);
    let (repo, _) = Repository::open(after, 1 << 20, NOW).unwrap();
    let mut saved = repo.take_saved_holds();
    saved.sort_by_key(|h| h.id);
    let hold = |n, until| SavedHold { id: id(n), until, owner: b"o".to_vec() };
    assert_eq!(saved, vec![hold(1, NOW + 5000), hold(2, NOW + 2000)]);
    assert_eq!(repo.space(NOW).removable, 0);
}

/// Four cuts with one seed; returns how many interrupted an operation, and how many operations
/// were acknowledged.
fn power_cuts(seed: u64) -> (usize, usize) {
    use crate::mem_store::CutMode;
    let mut rng = Rng(tidepool_p2p::random::SplitMix::new(seed));
    let mut store = MemStore::new();
    let mut acked: std::collections::BTreeMap<PnfsId, Option<Want>> = Default::default();
    let mut setting: Option<Vec<u8>> = None;
    let mut doubt: Option<PnfsId> = None;
    let mut setting_doubt: Option<Vec<u8>> = None;
    let (mut interrupted, mut acknowledged) = (0, 0);
    for round in 0..5 {
        let ctx = format!("seed {seed}, round {round}");
        let (repo, rec) = Repository::open(store.clone(), 1 << 20, NOW).unwrap();
        assert_eq!(rec.missing_data_count + rec.corrupt_count, 0, "{ctx}: {rec:?}");
        // The interrupted operation: whatever the disk kept is the truth from now on.
        if let Some(id) = doubt.take() {
            let now = repo.get(&id).unwrap();
            acked.insert(id, now.map(|r| Want { size: r.attrs.size, state: r.state, sticky: r.sticky }));
        }
        let stored = repo.setting("k").unwrap();
        if let Some(maybe) = setting_doubt.take()
            && stored.as_ref() == Some(&maybe)
        {
            setting = Some(maybe);
        }
        assert_eq!(stored, setting, "{ctx}: the acknowledged setting");
        for (id, want) in &acked {
            let got = repo.get(id).unwrap();
            match want {
                None => assert!(got.is_none(), "{ctx}: {id} was removed, and is back: {got:?}"),
                Some(w) => {
                    let got = got.unwrap_or_else(|| panic!("{ctx}: acknowledged {id} is lost"));
                    assert_eq!((got.attrs.size, got.state, &got.sticky), (w.size, w.state, &w.sticky), "{ctx}: {id}");
                }
            }
        }
        for id in listed(&repo) {
            let r = repo.get(&id).unwrap().unwrap();
            assert!(r.state.is_committed(), "{ctx}: {id} is visible as {}", r.state);
            assert_eq!(read_all(&repo, &id), content(id, r.attrs.size), "{ctx}: {id} is not intact");
        }
        assert!(repo.incoming().is_empty(), "{ctx}");
        drop(repo);
        let (repo, rec) = Repository::open(store.clone(), 1 << 20, NOW).unwrap();
        assert!(rec.is_clean(), "{ctx}: a second start has nothing to recover: {rec:?}");
        if round == 4 {
            break; // four cuts checked
        }

        let mode = if rng.below(2) == 0 { CutMode::DurableOnly } else { CutMode::SomeOfTheRest(rng.next()) };
        store.cut_power_after(store.steps() + 1 + rng.below(80), mode);
        for _ in 0..40 {
            let id = id(1 + rng.below(8) as u32);
            let present = matches!(acked.get(&id), Some(Some(_)));
            let sticky = if rng.below(3) == 0 { vec![StickyRecord::new("alice", NEVER)] } else { vec![] };
            let state = if rng.below(2) == 0 { ReplicaState::Cached } else { ReplicaState::Precious };
            let size = 1 + rng.below(3000);
            let outcome: RepoResult<Option<Want>> = match (present, rng.below(4)) {
                (false, 0) => {
                    let data = content(id, size);
                    let attrs = attrs(id, size);
                    let whole =
                        repo.store_whole(attrs, ReplicaState::FromPool, data.into(), state, sticky.clone(), None, NOW);
                    block_on(whole).map(|r| Some(Want { size, state: r.state, sticky: r.sticky }))
                }
                (false, _) => (|| {
                    let mut inc = repo.create(attrs(id, size), ReplicaState::FromClient, NOW)?;
                    inc.write(&content(id, size))?;
                    let r = inc.commit(state, sticky.clone(), None, NOW)?;
                    Ok(Some(Want { size, state: r.state, sticky: r.sticky }))
                })(),
                (true, 0) => repo.remove(&id, true, NOW).map(|()| None),
                (true, 1) => {
                    let value = rng.next().to_be_bytes().to_vec();
                    match repo.put_setting("k", &value) {
                        Ok(()) => {
                            setting = Some(value);
                            acknowledged += 1;
                        }
                        Err(e) => {
                            assert!(store.is_dead(), "{ctx}: {e}");
                            setting_doubt = Some(value);
                            interrupted += 1;
                            break;
                        }
                    }
                    continue;
                }
                (true, 2) => repo.set_state(&id, state, NOW).map(|()| {
                    let mut w = acked[&id].clone().unwrap();
                    w.state = state;
                    Some(w)
                }),
                (true, _) => {
                    let record = StickyRecord::new("bob", if rng.below(2) == 0 { NEVER } else { 0 });
                    repo.set_sticky(&id, record.clone(), StickyMode::Overwrite, NOW).map(|_| {
                        let mut w = acked[&id].clone().unwrap();
                        apply_sticky(&mut w.sticky, record, StickyMode::Overwrite, NOW);
                        Some(w)
                    })
                }
            };
            match outcome {
                Ok(want) => {
                    acked.insert(id, want);
                    acknowledged += 1;
                }
                Err(e) => {
                    assert!(store.is_dead(), "{ctx}: {id}: only the power cut makes an operation fail here: {e}");
                    doubt = Some(id);
                    interrupted += 1;
                    break;
                }
            }
        }
        let next = store.restarted().unwrap_or_else(|| store.power_cut(mode));
        drop(repo);
        store = next;
    }
    (interrupted, acknowledged)
}

/// A migration batch's source removals: each replica is decided on its own (allowed, refused,
/// absent, still being received), the allowed ones go with one flush, and the answers are in
/// the order asked.
#[test]
fn a_batch_of_removals_decides_each_and_flushes_once() {
    let (store, repo) = with_replicas(4);
    let receiving = repo.create(attrs(id(9), 10), ReplicaState::FromClient, NOW).unwrap();
    let flushes = store.flush_count();
    let ids = [id(1), id(2), id(7), id(9), id(3)];
    let mut seen = Vec::new();
    let answers = repo.remove_many_if(&ids, |at, r| {
        seen.push(at);
        assert_eq!(r.attrs.pnfsid, ids[at], "the replica of its place");
        if at == 1 { Err(RepoError::Protected { id: ids[at], why: Protection::Changed }) } else { Ok(()) }
    });
    assert_eq!(seen, vec![0, 1, 4], "asked about each replica that is here and committed, in order");
    assert!(answers[0].is_ok() && answers[2].is_ok() && answers[4].is_ok(), "{answers:?}");
    assert!(matches!(answers[1], Err(RepoError::Protected { .. })), "{:?}", answers[1]);
    assert!(matches!(answers[3], Err(RepoError::Busy { .. })), "{:?}", answers[3]);
    assert_eq!(store.flush_count(), flushes + 1, "one flush for the batch");
    let here = |n| repo.get(&id(n)).unwrap().is_some();
    assert!(!here(1) && here(2) && !here(3) && here(4));
    drop(receiving);
}

/// A batch of removals whose flush fails: every removal it carried fails, and nothing of them
/// is acknowledged.
#[test]
fn a_batch_of_removals_whose_flush_fails_fails_each() {
    use crate::mem_store::Fault;
    let (store, repo) = with_replicas(3);
    store.fail(Fault::Flush, 1);
    let answers = repo.remove_many_if(&[id(1), id(2)], |_, _| Ok(()));
    assert!(answers.iter().all(|a| a.is_err()), "{answers:?}");
    store.fail(Fault::Flush, 0);
    let answers = repo.remove_many_if(&[id(3)], |_, _| Ok(()));
    assert!(answers[0].is_ok(), "{answers:?}");
}

/// A removal whose record cannot be deleted did not happen: the replica is still in the
/// index and in listings, and a later removal takes it (before, the index lost it while its
/// record stayed: listed, yet "not in this pool"; found by the simulated cluster).
#[test]
fn a_removal_whose_record_cannot_be_deleted_leaves_the_replica() {
    use crate::mem_store::Fault;
    let (store, repo) = with_replicas(2);
    store.fail(Fault::DeleteRecord, 1);
    let answers = repo.remove_many_if(&[id(1), id(2)], |_, _| Ok(()));
    assert!(answers[0].is_err() && answers[1].is_ok(), "{answers:?}");
    assert!(repo.get(&id(1)).unwrap().is_some(), "still here");
    let mut listed = Vec::new();
    repo.scan(&mut |r| {
        listed.push(r.pnfsid());
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(listed, vec![id(1)]);
    assert!(repo.remove_if(&id(1), |_| Ok(())).is_ok());
    assert!(repo.get(&id(1)).unwrap().is_none());
}
