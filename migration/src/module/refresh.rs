//! What a job's refresh asks of whom (docs/operator-guide.md, "Membership"): the figures of
//! its targets come from the costs the membership publishes (etcd: one range read) where it
//! can, and from the targets themselves (a `PoolInfo` request) where it must. Pure decisions;
//! the driver (`Module::refresh`) does the asking.
//!
//! A target is asked itself:
//! - when the membership publishes no costs (the cluster file, or a stale etcd view);
//! - when it publishes none for that target: its lease has lapsed. It may be only cut off from
//!   etcd and still serving; its own answer then keeps it known as online (its replicas found,
//!   nothing copied again), but it is no new target (`accepts` is false);
//! - when the job counts it unreachable (a copy request could not be delivered): a published
//!   cost says nothing of this pool's way to it;
//! - when its last direct answer is older than [`ASK_DIRECTLY_EVERY`], or it did not answer
//!   then: the direct request names the job, which renews the holds of the copies the job
//!   delivered there, and only a direct answer shows that the pool's data path works.
//!
//! A pool that was a target and no longer is (it left the target group) is still asked
//! every [`ASK_DIRECTLY_EVERY`] while the job runs, its answer not used: the copies a move
//! delivered there stay held.

use std::collections::HashMap;
use std::time::Duration;

use tidepool_p2p::PoolName;
use tidepool_p2p::message::PoolCost;
use tokio::time::Instant;

/// How often a job asks each pool it delivered to (or may deliver to) itself, whatever the
/// membership publishes: well inside the hold of a delivered copy (an hour).
pub const ASK_DIRECTLY_EVERY: Duration = Duration::from_secs(600);

/// The last direct question to one pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asked {
    pub at: Instant,
    pub answered: bool,
}

/// The pools a refresh asks itself: in `targets` order, then the former targets due.
pub fn to_ask(
    targets: &[PoolName],
    published: Option<&[(PoolName, Option<PoolCost>)]>,
    asked: &HashMap<PoolName, Asked>,
    unreachable: &[PoolName],
    now: Instant,
) -> Vec<PoolName> {
    let stale = |p: &PoolName| asked.get(p).is_none_or(|a| now.saturating_duration_since(a.at) >= ASK_DIRECTLY_EVERY);
    let mut ask: Vec<PoolName> = match published {
        None => targets.to_vec(),
        Some(costs) => targets
            .iter()
            .filter(|p| {
                let unpublished = !costs.iter().any(|(q, c)| q == *p && c.is_some());
                unpublished || stale(p) || asked.get(*p).is_some_and(|a| !a.answered) || unreachable.contains(p)
            })
            .cloned()
            .collect(),
    };
    // Former targets: on time alone (one that does not answer is not asked at every refresh).
    let mut former: Vec<&PoolName> = asked.keys().filter(|p| !targets.contains(p) && stale(p)).collect();
    former.sort();
    ask.extend(former.into_iter().cloned());
    ask
}

/// The figures the job's core is given, in `targets` order: a direct answer where there is
/// one (with `accepts` false for a pool the membership does not publish: not a new target),
/// else the published cost; `None` where neither says anything.
pub fn merge(
    targets: &[PoolName],
    published: Option<&[(PoolName, Option<PoolCost>)]>,
    direct: &HashMap<PoolName, Option<PoolCost>>,
) -> Vec<(PoolName, Option<PoolCost>)> {
    targets
        .iter()
        .map(|p| {
            let from_membership = published.and_then(|c| c.iter().find(|(q, _)| q == p).and_then(|(_, c)| *c));
            let cost = match direct.get(p) {
                Some(Some(c)) => {
                    let mut c = *c;
                    if published.is_some() && from_membership.is_none() {
                        c.accepts = false;
                    }
                    Some(c)
                }
                Some(None) => None,
                None => from_membership,
            };
            (p.clone(), cost)
        })
        .collect()
}

/// The targets the membership publishes no cost for: not alive (their lease lapsed). None
/// when it publishes no costs at all.
pub fn not_alive(targets: &[PoolName], published: Option<&[(PoolName, Option<PoolCost>)]>) -> Vec<PoolName> {
    let Some(costs) = published else { return Vec::new() };
    targets.iter().filter(|p| !costs.iter().any(|(q, c)| q == *p && c.is_some())).cloned().collect()
}

#[cfg(test)]
mod tests {
    use tidepool_p2p::model::SpaceInfo;

    use super::*;

    fn p(name: &str) -> PoolName {
        name.parse().unwrap()
    }

    fn cost(load: u32) -> PoolCost {
        PoolCost {
            space: SpaceInfo { total: 100, used: 0, free: 100, precious: 0, removable: 0 },
            load,
            accepts: true,
            enabled: true,
            run: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn who_is_asked_directly() {
        let t0 = Instant::now();
        let later = t0 + ASK_DIRECTLY_EVERY;
        let targets = [p("a"), p("b")];
        let both = [(p("a"), Some(cost(1))), (p("b"), Some(cost(2)))];
        let only_a = [(p("a"), Some(cost(1))), (p("b"), None)];
        let fresh = |answered| Asked { at: t0, answered };
        let asked_ab: HashMap<PoolName, Asked> = [(p("a"), fresh(true)), (p("b"), fresh(true))].into();
        let b_silent: HashMap<PoolName, Asked> = [(p("a"), fresh(true)), (p("b"), fresh(false))].into();
        let with_former: HashMap<PoolName, Asked> =
            [(p("a"), fresh(true)), (p("b"), fresh(true)), (p("gone"), fresh(false))].into();
        let names = |v: Vec<PoolName>| v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        /// What, the published costs, the last direct questions, when, who is asked.
        type Row<'a> =
            (&'a str, Option<&'a [(PoolName, Option<PoolCost>)]>, &'a HashMap<PoolName, Asked>, Instant, &'a str);
        #[rustfmt::skip]
        let rows: &[Row<'_>] = &[
            ("no published costs: every target",         None,          &asked_ab,        t0,    "a,b"),
            ("never asked: every target",                Some(&both),   &HashMap::new(),  t0,    "a,b"),
            ("asked and published: nobody",              Some(&both),   &asked_ab,        t0,    ""),
            ("not published (lease lapsed): that one",   Some(&only_a), &asked_ab,        t0,    "b"),
            ("silent when last asked: that one",         Some(&both),   &b_silent,        t0,    "b"),
            ("ten minutes on: every target again",       Some(&both),   &asked_ab,        later, "a,b"),
            ("a former target, not yet due",             Some(&both),   &with_former,     t0,    ""),
            ("a former target, due: asked (no answer)",  Some(&both),   &with_former,     later, "a,b,gone"),
        ];
        for (what, published, asked, now, want) in rows {
            assert_eq!(names(to_ask(&targets, *published, asked, &[], *now)), *want, "{what}");
        }
        // A target the job counts unreachable is asked itself, published or not.
        assert_eq!(names(to_ask(&targets, Some(&both), &asked_ab, &[p("b")], t0)), "b");
    }

    #[test]
    fn what_the_core_is_given() {
        let targets = [p("a"), p("b"), p("c")];
        let published = [(p("a"), Some(cost(1))), (p("b"), None), (p("c"), None)];
        let direct: HashMap<PoolName, Option<PoolCost>> = [(p("b"), Some(cost(7))), (p("c"), None)].into();
        assert_eq!(not_alive(&targets, Some(&published)), vec![p("b"), p("c")]);
        assert_eq!(not_alive(&targets, None), Vec::<PoolName>::new());
        let got = merge(&targets, Some(&published), &direct);
        // a: published; b: answered though unpublished: online, no new target; c: silent.
        let not_new = PoolCost { accepts: false, ..cost(7) };
        assert_eq!(got, vec![(p("a"), Some(cost(1))), (p("b"), Some(not_new)), (p("c"), None)]);
        // Without published costs the direct answers are taken as they are.
        let direct: HashMap<PoolName, Option<PoolCost>> = [(p("a"), Some(cost(3))), (p("b"), Some(cost(7)))].into();
        let got = merge(&targets[..2], None, &direct);
        assert_eq!(got, vec![(p("a"), Some(cost(3))), (p("b"), Some(cost(7)))]);
    }
}
