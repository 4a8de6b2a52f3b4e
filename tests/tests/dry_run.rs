//! `migration copy|move|cache -dry-run` between real daemons: the plan is what the job then
//! does (the same files to the same targets under one `-seed`), and the dry run itself changes
//! nothing: no replica on the source or the targets, no transfer, no job listed, no file lock
//! (a real job over the same files runs right after it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use tidepool_tests::{Cluster, RepLine, create, ok, refused, started};

const JOB_WAIT: Duration = Duration::from_secs(30);

/// Every pool's replicas, and the transfers each has made.
fn snapshot(cluster: &Cluster, pools: &[&str]) -> Vec<(Vec<RepLine>, usize)> {
    pools.iter().map(|p| (cluster.rep_ls(p), cluster.pp_ls(p).transfers.len())).collect()
}

fn holders(cluster: &Cluster, pools: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let mut held: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in pools {
        for r in cluster.rep_ls(p) {
            held.entry(r.pnfsid).or_default().insert(p.to_string());
        }
    }
    held
}

#[test]
fn a_dry_run_is_what_the_job_then_does_and_changes_nothing() {
    let pools = ["pool1", "pool2", "pool3", "pool4"];
    let cluster = started(&[("pool1", &["disk"]), ("pool2", &["disk"]), ("pool3", &["disk"]), ("pool4", &["disk"])]);
    // Larger files (over 1 MiB) are units of their own; small ones travel in batches.
    let seeds: Vec<(usize, u64)> = (0..5)
        .map(|i| ((1 << 20) + 65_536 * i, 900 + i as u64))
        .chain((0..4).map(|i| (20_000 + 1000 * i, 950 + i as u64)))
        .collect();
    let files = cluster.put_samples("pool1", &seeds, &["--storage", "test:disk"]);
    let sticky = cluster.put_samples("pool1", &[(5000, 990)], &["--storage", "test:tape"]);
    // One file is on pool3 already, exactly as the job wants it.
    let in_place = files[6].0.clone();
    let pre = create(&cluster, "pool1", &format!("migration copy -pnfsid={in_place} pool3"));
    cluster.wait_for_job("pool1", &pre, "FINISHED", JOB_WAIT);
    ok(&cluster, "pool1", "migration clear\n");
    // pool4 takes no pool-to-pool copy.
    ok(&cluster, "pool4", "pool disable -p2p-client\n");

    let options = "-seed=42 -storage=test:disk -concurrency=2";
    let before = snapshot(&cluster, &pools);
    let json = ok(&cluster, "pool1", &format!("migration copy -dry-run -json {options} pool2 pool3 pool4\n"));
    let text = ok(&cluster, "pool1", &format!("migration copy {options} -dry-run pool2 pool3 pool4\n"));
    let moved = ok(&cluster, "pool1", "migration move -dry-run -seed=7 pool2 pool3\n");
    assert_eq!(snapshot(&cluster, &pools), before, "a dry run changes no replica and makes no transfer");
    assert!(cluster.migration_ls("pool1").is_empty(), "a dry run lists no job");

    let plan: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let command = format!("migration copy {options} -- pool2 pool3 pool4");
    assert_eq!(plan["command"], command.as_str());
    assert_eq!(plan["seed"], 42);
    assert_eq!(plan["state"], "FINISHED");
    assert_eq!(plan["selected"]["files"], files.len());
    let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(plan["selected"]["bytes"], bytes);
    assert_eq!(plan["left_out"], serde_json::json!({ "storage": 1 }), "{json}");
    assert_eq!((plan["in_place"]["files"].as_u64(), plan["placed"]["files"].as_u64()), (Some(1), Some(8)));
    let t = &plan["targets"];
    assert!(t[2]["unusable"].as_str().is_some_and(|w| w.contains("pool-to-pool")), "pool4 named unusable: {json}");
    assert_eq!(t[2]["files"], 0);
    let received: u64 = (0..2).map(|i| t[i]["files"].as_u64().unwrap()).sum();
    assert_eq!(received, 8);
    assert!((0..2).all(|i| t[i]["files"].as_u64() > Some(0)), "both usable targets get files under seed 42: {json}");

    // The plan, file by file: where each new copy goes.
    let mut planned: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in plan["files"].as_array().unwrap() {
        let id = f["pnfsid"].as_str().unwrap().to_string();
        let pools: BTreeSet<String> =
            f["copies"].as_array().unwrap().iter().map(|c| c["pool"].as_str().unwrap().into()).collect();
        if id == in_place {
            assert_eq!((f["outcome"].as_str(), pools.len()), (Some("in_place"), 0), "{f}");
            assert_eq!(f["in_place"], serde_json::json!(["pool3"]));
        } else {
            assert_eq!((f["outcome"].as_str(), pools.len()), (Some("placed"), 1), "{f}");
        }
        planned.insert(id, pools);
    }
    assert!(!planned.contains_key(&sticky[0].0), "the file the filter leaves out is not in the plan");
    assert!(text.starts_with(&format!("Dry run    : {command} (nothing was transferred or changed)\n")), "{text}");
    assert!(text.contains(&format!("  {in_place} {} in place on pool3\n", files[6].1.len())), "{text}");
    assert!(moved.contains("Placed     : 10 files;"), "the move plans every file: {moved}");

    // The job itself, with the same seed: the same files to the same targets.
    let job = create(&cluster, "pool1", &format!("migration copy {options} pool2 pool3 pool4"));
    cluster.wait_for_job("pool1", &job, "FINISHED", JOB_WAIT);
    let held = holders(&cluster, &pools[1..]);
    for (id, _) in &files {
        let mut want = planned[id].clone();
        if *id == in_place {
            want.insert("pool3".into());
        }
        assert_eq!(held.get(id), Some(&want), "{id}: where the plan put it\n{json}");
    }
    assert!(!held.contains_key(&sticky[0].0));
    assert_eq!(cluster.pp_ls("pool3").transfers.len() + cluster.pp_ls("pool2").transfers.len(), 1 + 8);
}

#[test]
fn a_bad_dry_run_is_refused_and_changes_nothing() {
    let cluster = started(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    cluster.put_samples("pool1", &[(1000, 1)], &["--storage", "test:disk"]);
    let table = [
        ("migration copy -dry-run -seed=x pool2", "x: Invalid value for option -seed"),
        ("migration copy -dry-run -seed=-3 pool2", "-3: Invalid value for option -seed"),
        ("migration copy -json pool2", "-json only goes with -dry-run"),
        ("migration move -dry-run pool9", "pool pool9 is not in the cluster file"),
        ("migration copy -dry-run -replicas=2 pool2", "-replicas=2 needs as many target pools"),
    ];
    for (line, want) in table {
        let err = refused(&cluster, "pool1", line);
        assert!(err.contains(want), "{line}: {want:?} in {err:?}");
    }
    assert!(cluster.migration_ls("pool1").is_empty());
    assert!(cluster.rep_ls("pool2").is_empty());
}

/// `rebalance pgroup -dry-run`: each enabled pool prints the plan of its `rebalance` job (a
/// pool above the group's level gives files away until it would be at the level); no job is
/// cancelled or started, and no replica moves.
#[test]
fn a_rebalance_dry_run_plans_per_source_pool_and_starts_nothing() {
    let pools = ["pool1", "pool2", "pool3"];
    let cluster = started(&[("pool1", &["disk"]), ("pool2", &["disk"]), ("pool3", &["disk"])]);
    let seeds: Vec<(usize, u64)> = (0..8).map(|i| (200_000, 300 + i)).collect();
    cluster.put_samples("pool1", &seeds, &["--storage", "test:disk"]);
    let before = snapshot(&cluster, &pools);

    let text = ok(&cluster, "pool1", "rebalance pgroup -dry-run disk\n");
    let json = ok(&cluster, "pool2", "rebalance pgroup -dry-run -json disk\n");
    assert_eq!(snapshot(&cluster, &pools), before, "a dry run moves nothing");
    for p in pools {
        assert!(cluster.migration_ls(p).is_empty(), "{p} has no job");
    }
    for p in pools {
        assert!(text.contains(&format!("{p}: Dry run    : migration move -id=rebalance")), "{p} planned:\n{text}");
    }
    let doc: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let plans = doc["pools"].as_array().unwrap();
    assert_eq!(plans.len(), 3, "{json}");
    assert!(plans.iter().all(|p| p["outcome"] == "planned"), "{json}");
    let first = &plans[0]["plan"];
    assert_eq!((plans[0]["pool"].as_str(), first["selected"]["files"].as_u64()), (Some("pool1"), Some(8)));
    let placed = first["placed"]["files"].as_u64().unwrap();
    assert!((1..8).contains(&placed), "pool1 gives some of its files, not all: {placed}\n{json}");
    assert_eq!(first["skipped"]["files"].as_u64(), Some(8 - placed), "the rest are left when the level is reached");
    assert_eq!(plans[1]["plan"]["selected"]["files"], 0);
}
