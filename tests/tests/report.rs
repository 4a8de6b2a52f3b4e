//! The completion report (`migration report`, docs/admin-commands.md) against what the pools
//! hold, with real daemons: after a move where some files were already on the target, one was
//! deleted from the source while queued, and some could not be placed at all, every file the
//! job selected is in the report once, its counts add up, and `rep ls` on the source and the
//! target agrees with each file's fate.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tidepool_tests::{CACHED, Cluster, assert_bytes, create, ok, report_field, wait_until};

const JOB_WAIT: Duration = Duration::from_secs(60);

fn report_json(cluster: &Cluster, pool: &str, job: &str) -> serde_json::Value {
    let out = ok(cluster, pool, &format!("migration report -json -all {job}\n"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn the_report_of_a_move_with_failures_reconciles_with_rep_ls() {
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    // Room for the small files, never for the large ones.
    cluster.set_capacity("pool2", "2Mi");
    for pool in ["pool1", "pool2"] {
        cluster.append_config(pool, "[migration]\nretry_base_seconds = 1\nretry_cap_seconds = 1\n");
        cluster.start(pool);
    }
    let small = cluster.put_samples("pool1", &(0..8).map(|i| (50_000, 10 + i)).collect::<Vec<_>>(), &[]);
    let large = cluster.put_samples("pool1", &[(3 << 20, 1), (3 << 20, 2)], &[]);
    // Two of the small files are on the target already.
    let copy = create(&cluster, "pool1", &format!("migration copy -pnfsid={},{} pool2", small[0].0, small[1].0));
    cluster.wait_for_job("pool1", &copy, "FINISHED", JOB_WAIT);

    // The move is held (no concurrency) while a queued file is deleted from the source; the
    // large files, for which no target has room, are given up rather than waited for.
    let out = ok(&cluster, "pool1", "migration move -concurrency=0 -target-deficit-mode=limit pool2\n");
    let job = out.trim_start_matches('[').split(']').next().expect("a job id").to_string();
    wait_until("the job to queue its files", JOB_WAIT, || {
        let info = cluster.migration_info("pool1", &job);
        (report_field(&info, "State") == Some("SLEEPING")).then_some(())
    });
    let deleted = &small[7].0;
    ok(&cluster, "pool1", &format!("rep rm -force {deleted}\n"));
    ok(&cluster, "pool1", &format!("migration set concurrency {job} 2\n"));
    cluster.wait_for_job("pool1", &job, "FINISHED", JOB_WAIT);

    let report = report_json(&cluster, "pool1", &job);
    let count = |k: &str| report["counts"][k].as_u64().unwrap_or_else(|| panic!("counts.{k} in {report}"));
    let lines = report["file_lines"].as_array().expect("file_lines");
    // Every selected file once, and the counts add up to them.
    assert_eq!(report["files"].as_u64(), Some(10), "{report:#}");
    let ids: BTreeSet<&str> = lines.iter().map(|f| f["pnfsid"].as_str().unwrap()).collect();
    let all: BTreeSet<&str> = small.iter().chain(&large).map(|(id, _)| id.as_str()).collect();
    assert_eq!((lines.len(), &ids), (10, &all), "{report:#}");
    let keys = ["done", "already_in_place", "gone_from_source", "no_longer_selected", "given_up"];
    let rest = ["cancelled", "not_tried", "queued", "running", "waiting"];
    assert_eq!(keys.iter().chain(&rest).map(|k| count(k)).sum::<u64>(), 10, "{report:#}");
    let fates: BTreeMap<&str, &str> =
        lines.iter().map(|f| (f["pnfsid"].as_str().unwrap(), f["fate"].as_str().unwrap())).collect();
    let want = |id: &String| -> &str {
        if *id == small[0].0 || *id == small[1].0 {
            "already_in_place"
        } else if id == deleted {
            "gone_from_source"
        } else if large.iter().any(|(l, _)| l == id) {
            "given_up"
        } else {
            "done"
        }
    };
    for (id, _) in small.iter().chain(&large) {
        assert_eq!(fates[id.as_str()], want(id), "{id} in {report:#}");
    }
    assert_eq!(
        (count("done"), count("already_in_place"), count("gone_from_source"), count("given_up")),
        (5, 2, 1, 2),
        "{report:#}"
    );
    assert_eq!(report["ended"], true, "{report:#}");

    // The pools agree: done and in-place files are on the target, precious with their bytes
    // (a new copy's checksum compared), and gone from the source; the given-up ones are
    // still on the source only; the deleted one is nowhere.
    let on = |pool: &str| -> BTreeMap<String, String> {
        cluster.rep_ls(pool).into_iter().map(|r| (r.pnfsid, r.flags)).collect()
    };
    let (source, target) = (on("pool1"), on("pool2"));
    let placed: Vec<(String, Vec<u8>)> =
        small.iter().filter(|(id, _)| ["done", "already_in_place"].contains(&want(id))).cloned().collect();
    for (id, _) in &placed {
        assert_eq!(target.get(id).map(String::as_str), Some(CACHED), "{id} on pool2");
        assert!(!source.contains_key(id), "{id} moved, still on pool1");
        let line = lines.iter().find(|f| f["pnfsid"] == id.as_str()).unwrap();
        assert_eq!(line["targets"], serde_json::json!(["pool2"]), "{line}");
        assert_eq!(line["target_state"], "CACHED", "{line}");
        if want(id) == "done" {
            assert_eq!(line["checksum_matched"], true, "{line}");
        }
    }
    assert_bytes(&cluster, "pool2", &placed);
    assert_bytes(&cluster, "pool1", &large);
    for (id, _) in &large {
        assert!(!target.contains_key(id), "{id} given up, yet on pool2");
        let line = lines.iter().find(|f| f["pnfsid"] == id.as_str()).unwrap();
        assert!(line["failed_attempts"].as_u64() >= Some(1), "{line}");
        assert!(line["error"].as_str().is_some_and(|e| !e.is_empty()), "{line}");
    }
    assert!(!source.contains_key(deleted) && !target.contains_key(deleted), "{deleted} deleted");

    // The text says the same, and the failures stay listed after the job ended.
    let text = ok(&cluster, "pool1", &format!("migration report {job}\n"));
    assert!(text.contains("10 files selected"), "{text}");
    for (id, _) in &large {
        assert!(text.contains(&format!("{id} given up")), "{text}");
    }
    let failed = ok(&cluster, "pool1", &format!("migration info -failed {job}\n"));
    for (id, _) in &large {
        assert!(failed.contains(id.as_str()), "{id} in:\n{failed}");
    }
}
