//! Choosing the target pool of a new copy (docs/dcache-compatibility.md#target-selection), with two
//! deliberate differences from dCache: a pool that cannot hold the file (free + removable < its size) is never
//! chosen, and pools are excluded by bare name (docs/dcache-compatibility.md#dcache-defects-not-reproduced;
//! dCache compared cell paths with names, so a pool could be chosen twice).

use std::fmt;

use tidepool_p2p::PoolName;
use tidepool_p2p::model::SpaceInfo;

/// A target candidate as the job last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolInfo {
    pub name: PoolName,
    pub space: SpaceInfo,
    /// Transfers it is receiving now; a loaded pool is less likely to be chosen.
    pub load: u32,
}

impl PoolInfo {
    /// Space a new replica may use: free space plus what the sweeper could free.
    pub fn available(&self) -> u64 {
        self.space.free.saturating_add(self.space.removable)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Weighted by available space, halved per unit of load above the least loaded pool.
    Proportional,
    /// Uniform among pools with room.
    Random,
}

/// Why no target was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoTarget {
    NoPools,
    AllFull,
}

impl fmt::Display for NoTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoTarget::NoPools => "No pools available.",
            NoTarget::AllFull => "All target pools are full.",
        })
    }
}

/// Target choice draws from the seeded generator of `tidepool_p2p::random`.
pub use tidepool_p2p::random::SplitMix;

/// Picks a target for a file of `size` bytes among `candidates`, skipping `exclude`.
pub fn select<'a>(
    strategy: Strategy,
    candidates: &'a [PoolInfo],
    exclude: &[PoolName],
    size: u64,
    rng: &mut SplitMix,
) -> Result<&'a PoolInfo, NoTarget> {
    let open: Vec<&PoolInfo> = candidates.iter().filter(|p| !exclude.contains(&p.name)).collect();
    if open.is_empty() {
        return Err(NoTarget::NoPools);
    }
    let room: Vec<&PoolInfo> = open.into_iter().filter(|p| p.available() >= size.max(1)).collect();
    if room.is_empty() {
        return Err(NoTarget::AllFull);
    }
    match strategy {
        Strategy::Random => Ok(room[(rng.next_u64() % room.len() as u64) as usize]),
        Strategy::Proportional => {
            let least = room.iter().map(|p| p.load).min().unwrap_or(0);
            let weights: Vec<f64> =
                room.iter().map(|p| p.available() as f64 / 2f64.powi((p.load - least).min(60) as i32)).collect();
            let total: f64 = weights.iter().sum();
            let mut point = rng.unit() * total;
            for (pool, w) in room.iter().zip(&weights) {
                if point < *w {
                    return Ok(pool);
                }
                point -= w;
            }
            Ok(room[room.len() - 1])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, free: u64, removable: u64, load: u32) -> PoolInfo {
        PoolInfo {
            name: name.parse().unwrap(),
            space: SpaceInfo { total: free + removable + 100, used: removable + 100, free, precious: 0, removable },
            load,
        }
    }

    fn counts(strategy: Strategy, pools: &[PoolInfo], exclude: &[PoolName], size: u64) -> Vec<usize> {
        let mut rng = SplitMix::new(42);
        let mut n = vec![0; pools.len()];
        for _ in 0..10_000 {
            let p = select(strategy, pools, exclude, size, &mut rng).unwrap();
            n[pools.iter().position(|x| x.name == p.name).unwrap()] += 1;
        }
        n
    }

    #[test]
    fn proportional_follows_available_space_and_load() {
        let pools = [pool("a", 100, 0, 0), pool("b", 200, 100, 0), pool("c", 0, 0, 0)];
        let n = counts(Strategy::Proportional, &pools, &[], 1);
        assert_eq!(n[2], 0, "a full pool is never chosen");
        assert!((n[1] as f64 / n[0] as f64 - 3.0).abs() < 0.3, "b has three times the room: {n:?}");
        let loaded = [pool("a", 100, 0, 0), pool("b", 100, 0, 2)];
        let n = counts(Strategy::Proportional, &loaded, &[], 1);
        assert!((n[0] as f64 / n[1] as f64 - 4.0).abs() < 0.6, "two more transfers quarter the weight: {n:?}");
    }

    #[test]
    fn random_is_uniform_among_pools_with_room() {
        let pools = [pool("a", 100, 0, 0), pool("b", 1000, 0, 5), pool("c", 10, 0, 0)];
        let n = counts(Strategy::Random, &pools, &[], 50);
        assert_eq!(n[2], 0, "c cannot hold 50 bytes");
        assert!(n[0] > 4500 && n[1] > 4500, "{n:?}");
    }

    #[test]
    fn exclusion_is_by_name_and_reasons_are_told_apart() {
        let pools = [pool("a", 100, 0, 0), pool("b", 100, 0, 0)];
        let a: PoolName = "a".parse().unwrap();
        let n = counts(Strategy::Proportional, &pools, std::slice::from_ref(&a), 1);
        assert_eq!(n[0], 0);
        let mut rng = SplitMix::new(1);
        let both = [a, "b".parse().unwrap()];
        assert_eq!(select(Strategy::Random, &pools, &both, 1, &mut rng), Err(NoTarget::NoPools));
        assert_eq!(select(Strategy::Random, &pools, &[], 101, &mut rng), Err(NoTarget::AllFull));
        assert_eq!(select(Strategy::Proportional, &[], &[], 1, &mut rng), Err(NoTarget::NoPools));
        assert!(select(Strategy::Proportional, &pools, &[], 100, &mut rng).is_ok(), "free + removable == size fits");
    }
}
