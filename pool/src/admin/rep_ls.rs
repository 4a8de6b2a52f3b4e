//! `rep ls`: which replicas a listing selects, the dCache line of each, and the per-class
//! figures of `rep ls -s`; shared by the text form (`exec.rs`) and the JSON form (`json.rs`).

use std::ops::ControlFlow;

use tidepool_p2p::model::ReplicaState;

use super::error::AdminError;
use super::{Property, RepLs};
use crate::pool::Pool;
use crate::repository::Replica;
use tidepool_migration::targets::glob_match;

/// The `rep ls` flag field: `<F1..F5-F7..F10-L(0)[0]>` (docs/dcache-compatibility.md#output).
pub fn flags(r: &Replica, now: i64) -> String {
    let s = r.state;
    let f = |on: bool, c: char| if on { c } else { '-' };
    let chars = [
        f(s == ReplicaState::Cached, 'C'),
        f(s == ReplicaState::Precious, 'P'),
        f(s == ReplicaState::FromClient, 'C'),
        f(s == ReplicaState::FromStore, 'S'),
        f(s == ReplicaState::FromPool, 'M'),
        '-',
        f(s == ReplicaState::Removed, 'R'),
        f(s == ReplicaState::Destroyed, 'D'),
        f(r.is_sticky(now), 'X'),
        f(s == ReplicaState::Broken, 'E'),
        '-',
    ];
    format!("<{}L(0)[0]>", chars.iter().collect::<String>())
}

/// The size `rep ls` shows: 0 while it is not known yet (NEW, FROM_STORE).
pub fn listed_size(r: &Replica) -> u64 {
    if matches!(r.state, ReplicaState::New | ReplicaState::FromStore) { 0 } else { r.attrs.size }
}

/// One `rep ls` line, with its newline.
pub fn rep_ls_line(r: &Replica, now: i64) -> String {
    let class = r.attrs.storage_class.as_deref().unwrap_or("<unknown>");
    format!("{} {} {} si={{{}}}\n", r.pnfsid(), flags(r, now), listed_size(r), class)
}

fn selected(ls: &RepLs, r: &Replica, now: i64) -> bool {
    let holds = |p: &Property| match p {
        Property::Sticky => r.is_sticky(now),
        Property::Precious => r.state == ReplicaState::Precious,
        Property::Locked => r.state.is_receiving(),
        Property::NotCached => r.state != ReplicaState::Cached,
        Property::Error => r.state == ReplicaState::Broken,
    };
    let class_ok = match &ls.storage {
        None => true,
        Some(g) => glob_match(g, r.attrs.storage_class.as_deref().unwrap_or("<unknown>")),
    };
    class_ok && ls.require.iter().all(holds)
}

/// One row of `rep ls -s`, in bytes (also its `-json` form).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ClassStats {
    pub files: u64,
    pub bytes: u64,
    pub precious_files: u64,
    pub precious_bytes: u64,
    pub sticky_files: u64,
    pub sticky_bytes: u64,
}

impl ClassStats {
    pub(super) fn add(&mut self, r: &Replica, now: i64) {
        let size = r.attrs.size;
        self.files += 1;
        self.bytes += size;
        if r.state == ReplicaState::Precious {
            self.precious_files += 1;
            self.precious_bytes += size;
        }
        if r.is_sticky(now) {
            self.sticky_files += 1;
            self.sticky_bytes += size;
        }
    }

    pub(super) fn merge(&mut self, o: &ClassStats) {
        self.files += o.files;
        self.bytes += o.bytes;
        self.precious_files += o.precious_files;
        self.precious_bytes += o.precious_bytes;
        self.sticky_files += o.sticky_files;
        self.sticky_bytes += o.sticky_bytes;
    }

    pub(super) fn row(&self, name: &str, unit: super::SizeUnit) -> String {
        let b = |v: u64| format!("{}{}", v / unit.divisor(), unit.suffix());
        format!(
            "{:<24} {:>10} {:>14} {:>10} {:>14} {:>10} {:>14}\n",
            name,
            self.files,
            b(self.bytes),
            self.precious_files,
            b(self.precious_bytes),
            self.sticky_files,
            b(self.sticky_bytes)
        )
    }
}

/// Calls `visit` for every replica `ls` selects (the listed pnfsids, or the replicas being
/// received and then every stored one); returns the listed pnfsids the pool does not hold.
pub fn each_selected(
    pool: &Pool,
    ls: &RepLs,
    now: i64,
    visit: &mut dyn FnMut(&Replica) -> Result<(), AdminError>,
) -> Result<Vec<String>, AdminError> {
    let mut visit = |r: &Replica| if selected(ls, r, now) { visit(r) } else { Ok(()) };
    let mut missing = Vec::new();
    if ls.pnfsids.is_empty() {
        for r in pool.repo.incoming() {
            visit(&r)?;
        }
        let mut stopped = Ok(());
        pool.repo.scan(&mut |r| match visit(&r) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                stopped = Err(e);
                ControlFlow::Break(())
            }
        })?;
        stopped?;
    } else {
        for id in &ls.pnfsids {
            match pool.repo.get(id)? {
                Some(r) => visit(&r)?,
                None => missing.push(id.to_string()),
            }
        }
    }
    Ok(missing)
}
