//! A model test: random sequences of repository operations, with restarts in between, must
//! leave the repository exactly like a plain map that applies the same rules.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use proptest::prelude::*;
use tidepool_p2p::PnfsId;
use tidepool_p2p::model::{
    AccessLatency, ChecksumWriter, FileAttributes, NEVER, ReplicaState, StickyMode, StickyRecord, apply_sticky,
};
use tidepool_repository::{MemStore, ReplicaStore, RepoError, Repository, SledStore};

const NOW: i64 = 1_700_000_000_000;

#[derive(Clone, Debug)]
enum Expiry {
    Never,
    Future,
    Past,
}

impl Expiry {
    fn at(&self) -> i64 {
        match self {
            Expiry::Never => NEVER,
            Expiry::Future => NOW + 60_000,
            Expiry::Past => NOW - 1,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put { id: u8, size: u16, precious: bool, sticky: Option<(u8, Expiry)> },
    AbortedPut { id: u8, size: u16 },
    SetState { id: u8, to: ReplicaState },
    SetSticky { id: u8, owner: u8, expiry: Expiry, extend: bool },
    Touch { id: u8, at: u16 },
    Remove { id: u8, force: bool },
    Restart,
}

fn expiry() -> impl Strategy<Value = Expiry> {
    prop_oneof![Just(Expiry::Never), Just(Expiry::Future), Just(Expiry::Past)]
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0u8..6;
    prop_oneof![
        4 => (id.clone(), 0u16..3000, any::<bool>(), proptest::option::of((0u8..3, expiry())))
            .prop_map(|(id, size, precious, sticky)| Op::Put { id, size, precious, sticky }),
        1 => (id.clone(), 1u16..3000).prop_map(|(id, size)| Op::AbortedPut { id, size }),
        2 => (id.clone(), prop_oneof![
                Just(ReplicaState::Cached), Just(ReplicaState::Precious),
                Just(ReplicaState::Broken), Just(ReplicaState::Removed), Just(ReplicaState::FromClient)])
            .prop_map(|(id, to)| Op::SetState { id, to }),
        3 => (id.clone(), 0u8..3, expiry(), any::<bool>())
            .prop_map(|(id, owner, expiry, extend)| Op::SetSticky { id, owner, expiry, extend }),
        1 => (id.clone(), any::<u16>()).prop_map(|(id, at)| Op::Touch { id, at }),
        2 => (id, any::<bool>()).prop_map(|(id, force)| Op::Remove { id, force }),
        1 => Just(Op::Restart),
    ]
}

fn pnfsid(n: u8) -> PnfsId {
    let mut b = [0u8; 16];
    b[15] = n;
    PnfsId::from_random(b)
}

fn content(id: u8, size: u16) -> Vec<u8> {
    (0..size as usize).map(|i| (i as u8).wrapping_mul(7).wrapping_add(id)).collect()
}

fn owner(n: u8) -> String {
    ["system", "alice", "PinManager-1"][n as usize].to_string()
}

#[derive(Clone, Debug, PartialEq)]
struct Model {
    size: u16,
    state: ReplicaState,
    sticky: Vec<StickyRecord>,
    atime: i64,
}

/// Applies `op` to both and checks they agree on the outcome.
fn step(repo: &Arc<Repository>, model: &mut BTreeMap<u8, Model>, op: &Op) -> Result<(), TestCaseError> {
    match op.clone() {
        Op::Put { id, size, precious, sticky } => {
            let attrs = FileAttributes {
                pnfsid: pnfsid(id),
                size: size as u64,
                checksum: None,
                storage_class: Some("model:test".into()),
                cache_class: None,
                access_latency: Some(AccessLatency::Online),
                retention_policy: None,
                hsm: None,
                creation_time: NOW,
                access_time: NOW,
            };
            let state = if precious { ReplicaState::Precious } else { ReplicaState::Cached };
            let records: Vec<StickyRecord> = sticky.iter().map(|(o, e)| StickyRecord::new(owner(*o), e.at())).collect();
            match repo.create(attrs, ReplicaState::FromClient, NOW) {
                Err(RepoError::Exists(_)) => prop_assert!(model.contains_key(&id)),
                Err(e) => return Err(TestCaseError::fail(format!("create: {e}"))),
                Ok(mut inc) => {
                    prop_assert!(!model.contains_key(&id));
                    inc.write(&content(id, size)).unwrap();
                    inc.commit(state, records.clone(), None, NOW).unwrap();
                    let mut kept = Vec::new();
                    for r in records {
                        apply_sticky(&mut kept, r, StickyMode::Overwrite, NOW);
                    }
                    model.insert(id, Model { size, state, sticky: kept, atime: NOW });
                }
            }
        }
        Op::AbortedPut { id, size } => match repo.create(
            FileAttributes {
                pnfsid: pnfsid(id),
                size: size as u64,
                checksum: None,
                storage_class: None,
                cache_class: None,
                access_latency: None,
                retention_policy: None,
                hsm: None,
                creation_time: NOW,
                access_time: NOW,
            },
            ReplicaState::FromPool,
            NOW,
        ) {
            Err(RepoError::Exists(_)) => prop_assert!(model.contains_key(&id)),
            Err(e) => return Err(TestCaseError::fail(format!("create: {e}"))),
            Ok(mut inc) => {
                inc.write(&content(id, size / 2)).unwrap();
                drop(inc);
            }
        },
        Op::SetState { id, to } => {
            let got = repo.set_state(&pnfsid(id), to, NOW);
            match model.get(&id).map(|m| m.state) {
                None if to == ReplicaState::Removed => prop_assert!(got.is_ok()),
                None => prop_assert!(matches!(got, Err(RepoError::NotFound(_)))),
                Some(_) if to == ReplicaState::Removed => {
                    prop_assert!(got.is_ok());
                    model.remove(&id);
                }
                Some(from) if from == to => prop_assert!(got.is_ok()),
                Some(from) if from.may_change_to(to) => {
                    prop_assert!(got.is_ok(), "{from} -> {to}: {got:?}");
                    model.get_mut(&id).unwrap().state = to;
                }
                Some(_) => prop_assert!(matches!(got, Err(RepoError::IllegalTransition { .. })), "{got:?}"),
            }
        }
        Op::SetSticky { id, owner: o, expiry, extend } => {
            let mode = if extend { StickyMode::ExtendOnly } else { StickyMode::Overwrite };
            let record = StickyRecord::new(owner(o), expiry.at());
            let got = repo.set_sticky(&pnfsid(id), record.clone(), mode, NOW);
            match model.get_mut(&id) {
                None => prop_assert!(matches!(got, Err(RepoError::NotFound(_)))),
                Some(m) => {
                    let changed = apply_sticky(&mut m.sticky, record, mode, NOW);
                    prop_assert_eq!(got.unwrap(), changed);
                }
            }
        }
        Op::Touch { id, at } => {
            let got = repo.touch(&pnfsid(id), NOW + at as i64, NOW);
            match model.get_mut(&id) {
                None => prop_assert!(matches!(got, Err(RepoError::NotFound(_)))),
                Some(m) => {
                    prop_assert!(got.is_ok());
                    m.atime = NOW + at as i64;
                }
            }
        }
        Op::Remove { id, force } => {
            let got = repo.remove(&pnfsid(id), force, NOW);
            match model.get(&id) {
                None => prop_assert!(got.is_ok()),
                Some(m) => {
                    let protected = m.state == ReplicaState::Precious || m.sticky.iter().any(|s| s.is_valid(NOW));
                    if protected && !force {
                        prop_assert!(matches!(got, Err(RepoError::Protected { .. })), "{got:?}");
                    } else {
                        prop_assert!(got.is_ok(), "{got:?}");
                        model.remove(&id);
                    }
                }
            }
        }
        Op::Restart => unreachable!("handled by the runner"),
    }
    Ok(())
}

/// The whole repository agrees with the model: entries, attributes, data and space figures.
fn agree(repo: &Repository, model: &BTreeMap<u8, Model>) -> Result<(), TestCaseError> {
    prop_assert_eq!(repo.len(), model.len());
    for id in 0u8..6 {
        let got = repo.get(&pnfsid(id)).unwrap();
        match (got, model.get(&id)) {
            (None, None) => {}
            (Some(r), Some(m)) => {
                prop_assert_eq!(r.state, m.state);
                prop_assert_eq!(&r.sticky, &m.sticky);
                prop_assert_eq!(r.attrs.size, m.size as u64);
                prop_assert_eq!(r.attrs.access_time, m.atime);
                let mut sum = ChecksumWriter::new();
                sum.update(&content(id, m.size));
                prop_assert_eq!(r.attrs.checksum, Some(sum.finish()));
                if m.state.is_committed() {
                    let (_, mut data) = repo.open_data(&pnfsid(id), NOW).unwrap();
                    let mut bytes = Vec::new();
                    data.read_to_end(&mut bytes).unwrap();
                    prop_assert!(bytes == content(id, m.size), "data of {id} differs");
                    // Reading records an access.
                    repo.touch(&pnfsid(id), m.atime, NOW).unwrap();
                }
            }
            (got, want) => return Err(TestCaseError::fail(format!("{id}: repository {got:?}, model {want:?}"))),
        }
    }
    let space = repo.space(NOW);
    let size = |f: &dyn Fn(&Model) -> bool| model.values().filter(|m| f(m)).map(|m| m.size as u64).sum::<u64>();
    prop_assert_eq!(space.used, size(&|_| true));
    prop_assert_eq!(space.precious, size(&|m| m.state == ReplicaState::Precious));
    prop_assert_eq!(
        space.removable,
        size(&|m| m.state == ReplicaState::Cached && !m.sticky.iter().any(|s| s.is_valid(NOW)))
    );
    Ok(())
}

fn run(open_store: &mut dyn FnMut() -> Arc<dyn ReplicaStore>, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = BTreeMap::new();
    let (mut repo, _) = Repository::open(open_store(), 1 << 40, NOW).unwrap();
    for op in ops {
        if let Op::Restart = op {
            drop(repo);
            let (again, recovery) = Repository::open(open_store(), 1 << 40, NOW).unwrap();
            prop_assert!(recovery.is_clean(), "{:?}", recovery);
            repo = again;
        } else {
            step(&repo, &mut model, op)?;
        }
        agree(&repo, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn memory_repository_behaves_like_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let store = MemStore::new();
        run(&mut || store.clone(), &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn sled_repository_behaves_like_the_model(ops in proptest::collection::vec(op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        run(&mut || Arc::new(SledStore::open(dir.path()).unwrap()), &ops)?;
    }
}
