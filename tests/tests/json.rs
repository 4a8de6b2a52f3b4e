//! `-json` on every listing and status command, against real daemons through `tidepool-admin`:
//! each output parses as one JSON document and carries the figures of the text form (the same
//! counts, sizes, states and ids). Schemas: docs/json.md. Every wait polls a state with a
//! deadline.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tidepool_tests::{
    CACHED, CACHED_STICKY, Cluster, PRECIOUS, PpState, RepLine, info_field, ok, parse_rep_ls, report_field, started,
    two_pools, wait_until,
};

/// How long a test waits for something it caused (a job ending, a transfer showing).
const WAIT: Duration = Duration::from_secs(20);

/// Runs one command in `pool` and parses its output as one JSON document.
#[track_caller]
fn json_of(cluster: &Cluster, pool: &str, command: &str) -> Value {
    let text = ok(cluster, pool, &format!("{command}\n"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{command}: not JSON ({e}):\n{text}"))
}

/// Files of several classes, states and sticky records on pool1; their pnfsids.
fn fill(cluster: &Cluster) -> Vec<String> {
    let mut ids = Vec::new();
    for (files, args) in [
        (&[(1000, 1), (2000, 2)][..], &["--storage", "test:disk"][..]),
        (&[(3000, 3)][..], &["--storage", "test:tape", "--precious"][..]),
        (&[(4000, 4)][..], &["--storage", "test:disk", "--sticky", "alice"][..]),
    ] {
        ids.extend(cluster.put_samples("pool1", files, args).into_iter().map(|(id, _)| id));
    }
    ids
}

/// `rep ls -json` elements as the text's lines, sorted by pnfsid.
fn as_rep_lines(listed: &Value) -> Vec<RepLine> {
    let mut lines: Vec<RepLine> = listed
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| RepLine {
            pnfsid: r["pnfsid"].as_str().unwrap().into(),
            flags: r["flags"].as_str().unwrap().into(),
            size: r["size"].as_u64().unwrap(),
            storage_class: r["storage_class"].as_str().unwrap_or("<unknown>").into(),
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn rep_ls_json_has_the_replicas_and_statistics_of_the_text() {
    let cluster = two_pools();
    let ids = fill(&cluster);

    let text = cluster.rep_ls("pool1");
    let listed = json_of(&cluster, "pool1", "rep ls -json");
    assert_eq!(as_rep_lines(&listed), text);
    assert_eq!(text.len(), 4);
    let flags: BTreeMap<&str, &str> =
        text.iter().map(|l| (l.storage_class.as_str(), l.flags.as_str())).filter(|(c, _)| *c == "test:tape").collect();
    assert_eq!(flags["test:tape"], PRECIOUS);
    for r in listed.as_array().unwrap() {
        let (state, sticky) = match r["flags"].as_str().unwrap() {
            CACHED => ("CACHED", false),
            CACHED_STICKY => ("CACHED", true),
            PRECIOUS => ("PRECIOUS", false),
            other => panic!("unexpected flags {other}"),
        };
        assert_eq!((r["state"].as_str().unwrap(), r["sticky"].as_bool().unwrap()), (state, sticky), "{r}");
    }

    // Selections give the same replicas in both forms.
    for options in ["-l=p", "-l=s", "-storage=test:d*", &ids[..2].join(" ")] {
        let text = parse_rep_ls(&ok(&cluster, "pool1", &format!("rep ls {options}\n")));
        assert_eq!(as_rep_lines(&json_of(&cluster, "pool1", &format!("rep ls -json {options}"))), text, "{options}");
    }

    // Statistics: each class row and the total row of `rep ls -s -sum`, in bytes.
    let stats = json_of(&cluster, "pool1", "rep ls -s -json");
    assert_eq!(stats, json_of(&cluster, "pool1", "rep ls -sum -json"));
    let text = ok(&cluster, "pool1", "rep ls -s -sum\n");
    let fields = ["files", "bytes", "precious_files", "precious_bytes", "sticky_files", "sticky_bytes"];
    let row = |v: &Value| fields.iter().map(|f| v[f].as_u64().unwrap().to_string()).collect::<Vec<_>>();
    let mut rows: Vec<Vec<String>> = stats["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| [vec![c["storage_class"].as_str().unwrap().to_string()], row(c)].concat())
        .collect();
    rows.push([vec!["TOTAL".to_string()], row(&stats["total"])].concat());
    let text_rows: Vec<Vec<String>> =
        text.lines().skip(1).map(|l| l.split_whitespace().map(String::from).collect()).collect();
    assert_eq!(rows, text_rows, "{text}");
    assert_eq!(stats["total"]["bytes"], 10_000);

    // The sticky records of the sticky file: the same owners as the text, alice for ever.
    let sticky = &ids[3];
    let records = json_of(&cluster, "pool1", &format!("rep sticky ls -json {sticky}"));
    let text = ok(&cluster, "pool1", &format!("rep sticky ls {sticky}\n"));
    let owners: Vec<&str> = records.as_array().unwrap().iter().map(|r| r["owner"].as_str().unwrap()).collect();
    let text_owners: Vec<&str> = text.lines().map(|l| l.split(" : ").next().unwrap()).collect();
    assert_eq!(owners, text_owners, "{text}");
    assert!(owners.contains(&"alice"), "{records}");
    let alice = records.as_array().unwrap().iter().find(|r| r["owner"] == "alice").unwrap();
    assert!(alice["expires_at"].is_null() && text.contains("alice : never expires"), "{records}\n{text}");

    // A unit has no JSON meaning: refused, pointing at -s.
    let out = cluster.admin_in("pool1", "rep ls -s=k -json\n");
    out.assert_code(1, "rep ls -s=k -json");
    assert!(out.stderr.contains("-s takes no unit with -json"), "{out}");
}

#[test]
fn info_json_has_the_figures_of_info() {
    let cluster = two_pools();
    fill(&cluster);
    let text = cluster.info("pool1");
    let info = json_of(&cluster, "pool1", "info -json");
    assert_eq!(info["pool"], "pool1");
    assert_eq!(info_field(&text, "Mode"), info["mode"].as_str());
    assert_eq!(info["enabled"], true);
    assert_eq!(info_field(&text, "Pool groups"), Some("disk"));
    assert_eq!(info["groups"], json!(["disk"]));
    for (field, label) in
        [("total", "Total"), ("used", "Used"), ("free", "Free"), ("precious", "Precious"), ("removable", "Removable")]
    {
        assert_eq!(info_field(&text, label), Some(format!("{} bytes", info["space"][field]).as_str()), "{field}");
    }
    assert_eq!(info["space"]["used"], 10_000);
    assert_eq!(info["space"]["precious"], 3000);
    let by_state: Vec<String> = info["replicas"]["by_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{} {}", s["state"].as_str().unwrap(), s["count"]))
        .collect();
    assert_eq!(
        info_field(&text, "Replicas"),
        Some(format!("{} ({})", info["replicas"]["total"], by_state.join(", ")).as_str())
    );
    assert_eq!(info["replicas"]["total"], 4);
    assert_eq!(info["recovery"]["clean"], true);
    assert!(text.contains(&format!("({} replicas loaded)", info["recovery"]["loaded"])), "{text}");

    // The service section: version, start, resolved config, log filter.
    let service = &info["service"];
    assert_eq!(info_field(&text, "Version"), service["version"].as_str());
    assert_eq!(info_field(&text, "Capacity"), Some(format!("{} bytes", service["capacity"]).as_str()));
    assert_eq!(info_field(&text, "Data directory"), service["data_dir"].as_str());
    assert_eq!(info_field(&text, "Admin listener"), service["admin_listener"].as_str());
    assert_eq!(info_field(&text, "Data listener"), service["data_listener"].as_str());
    assert_eq!(info_field(&text, "Log filter"), info["log_filter"].as_str());
    // `Certificate    : pool:pool1, valid until 2027-12-05 (365 days)`.
    let cert = &info["certificate"];
    let line = format!(
        "{}, valid until {} ({} days)",
        cert["identity"].as_str().unwrap(),
        cert["valid_until"].as_str().unwrap(),
        cert["days_left"]
    );
    assert_eq!(info_field(&text, "Certificate"), Some(line.as_str()), "{info}");
    assert_eq!(cert["identity"], "pool:pool1");
    assert_eq!(cert["expires_soon"], false);
    assert!(cert["not_after"].as_i64().unwrap() > service["started_at"].as_i64().unwrap() / 1000, "{info}");
    assert!(
        service["started_at"].as_i64().unwrap() > 0 && service["started"].as_str().unwrap().ends_with('Z'),
        "{info}"
    );

    // log ls: the same levels, after a change.
    ok(&cluster, "pool1", "log set tidepool_pool::transfer debug\n");
    let text = ok(&cluster, "pool1", "log ls\n");
    let levels = json_of(&cluster, "pool1", "log ls -json");
    let mut lines = vec![vec!["all".to_string(), levels["all"].as_str().unwrap().to_string()]];
    lines.extend(
        levels["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| vec![t["target"].as_str().unwrap().to_string(), t["level"].as_str().unwrap().to_string()]),
    );
    let text_lines: Vec<Vec<String>> = text.lines().map(|l| l.split_whitespace().map(String::from).collect()).collect();
    assert_eq!(lines, text_lines);
    assert!(text.contains("tidepool_pool::transfer"), "{text}");

    // Disabled: the mode word and the reason as the text shows them.
    ok(&cluster, "pool1", "pool disable -rdonly 3 \"disk check\"\n");
    let text = cluster.info("pool1");
    let info = json_of(&cluster, "pool1", "info -json");
    assert_eq!(info_field(&text, "Mode"), info["mode"].as_str());
    assert_eq!(info["enabled"], false);
    assert_eq!(info_field(&text, "Disabled with"), Some("[3] disk check"));
    assert_eq!(info["disabled"], json!({"code": 3, "message": "disk check"}));
}

#[test]
fn pp_ls_and_migration_json_have_the_figures_of_the_text() {
    let cluster = two_pools();
    let ids = fill(&cluster);

    // pp ls: a finished transfer on pool2.
    ok(&cluster, "pool2", &format!("pp get file -wait {} pool1\n", ids[0]));
    let text = cluster.pp_ls("pool2");
    let pp = json_of(&cluster, "pool2", "pp ls -l -json");
    let counts = text.counts;
    assert_eq!(
        (pp["incoming"]["active"].as_u64(), pp["incoming"]["max"].as_u64(), pp["incoming"]["queued"].as_u64()),
        (Some(counts.active), Some(counts.max_active), Some(counts.queued))
    );
    assert_eq!(
        (pp["outgoing"]["active"].as_u64(), pp["outgoing"]["max"].as_u64(), pp["outgoing"]["queued"].as_u64()),
        (Some(counts.outgoing), Some(counts.max_outgoing), Some(counts.outgoing_queued))
    );
    assert_eq!(pp["connections_opened"].as_u64(), Some(counts.connections_opened));
    assert_eq!(pp["transfers"], json!([]));
    let finished = pp["finished"].as_array().unwrap();
    assert_eq!(finished.len(), text.transfers.len());
    for (line, f) in text.transfers.iter().zip(finished) {
        assert_eq!(
            (f["id"].as_u64(), f["pnfsid"].as_str(), f["source"].as_str()),
            (Some(line.id), Some(line.pnfsid.as_str()), Some(line.source.as_str()))
        );
        let PpState::Done { bytes } = line.state else { panic!("{line:?}") };
        assert_eq!((f["state"].as_str(), f["bytes"].as_u64(), &f["error"]), (Some("DONE"), Some(bytes), &Value::Null));
    }
    assert_eq!(finished[0]["bytes"], 1000);
    assert_eq!(json_of(&cluster, "pool2", "pp ls -json")["finished"], Value::Null, "only with -l");

    // migration ls and info: a copy of the three other files, followed to its end.
    let created = ok(&cluster, "pool1", &format!("migration copy -id=json -pnfsid={} pool2\n", ids[1..].join(",")));
    assert!(created.starts_with("[json] "), "{created}");
    let report = cluster.wait_for_job("pool1", "json", "FINISHED", WAIT);
    // A permanent job carries the text's `(not saved)` mark until `save`.
    ok(&cluster, "pool1", "migration copy -permanent -id=perm -pnfsid=000000000000000000000ABC pool2\n");
    let same_jobs = |marks: &[Option<&str>]| {
        let jobs = json_of(&cluster, "pool1", "migration ls -json");
        let lines = cluster.migration_ls("pool1");
        assert_eq!(jobs.as_array().unwrap().len(), lines.len());
        for ((line, job), mark) in lines.iter().zip(jobs.as_array().unwrap()).zip(marks) {
            let (command, text_mark) = line.saved_mark();
            assert_eq!(
                (job["id"].as_str(), job["state"].as_str(), job["command"].as_str()),
                (Some(line.id.as_str()), Some(line.state.as_str()), Some(command))
            );
            assert_eq!((job["mark"].as_str(), text_mark), (*mark, mark.map(|m| m.replace('_', " ")).as_deref()));
            assert_eq!(job["reason"], Value::Null);
        }
        jobs
    };
    same_jobs(&[None, Some("not_saved")]);
    ok(&cluster, "pool1", "save\n");
    let jobs = same_jobs(&[None, None]);
    ok(&cluster, "pool1", "migration cancel perm\n");
    let info = json_of(&cluster, "pool1", "migration info -json json");
    assert_eq!(report_field(&report, "Command"), info["command"].as_str());
    assert_eq!(report_field(&report, "State"), info["state"].as_str());
    assert_eq!(report_field(&report, "Queued"), Some(info["queued"].to_string().as_str()));
    assert_eq!(report_field(&report, "Attempts"), Some(info["attempts"].to_string().as_str()));
    assert_eq!(report_field(&report, "Concurrency"), Some(info["concurrency"].to_string().as_str()));
    assert_eq!(report_field(&report, "Targets"), Some("pool2"));
    assert_eq!(info["targets"], json!(["pool2"]));
    assert_eq!(
        report_field(&report, "Completed"),
        Some(format!("{} files; {} bytes", info["completed_files"], info["completed_bytes"]).as_str())
    );
    assert_eq!(report_field(&report, "Total"), Some(format!("{} bytes", info["total_bytes"]).as_str()));
    assert_eq!((info["completed_files"].as_u64(), info["completed_bytes"].as_u64()), (Some(3), Some(9000)));
    // info -json lists the same jobs.
    assert_eq!(json_of(&cluster, "pool1", "info -json")["migration"]["jobs"][0], jobs[0]);
}

#[test]
fn rebalance_json_names_each_pool_and_its_job() {
    let cluster = started(&[("pool1", &["disk"]), ("pool2", &["disk"]), ("pool3", &["tape"])]);
    fill(&cluster);
    let doc = json_of(&cluster, "pool2", "rebalance pgroup -json -refresh=5 disk");
    assert_eq!((doc["group"].as_str(), doc["metric"].as_str()), (Some("disk"), Some("relative")));
    assert!(doc["level"].as_f64().unwrap() > 0.0, "{doc}");
    let command = doc["command"].as_str().unwrap();
    assert!(command.starts_with("migration move -id=rebalance -refresh=5 "), "{doc}");
    let pools = doc["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 2, "the members of disk: {doc}");
    for (p, name) in pools.iter().zip(["pool1", "pool2"]) {
        assert_eq!((p["pool"].as_str(), p["outcome"].as_str()), (Some(name), Some("started")), "{doc}");
        assert_eq!(p["job"]["id"], "rebalance");
        // The job's command is the line as the pool stores it (quoted the shell's way).
        let line = cluster.migration_ls(name).into_iter().find(|l| l.id == "rebalance").expect("the job");
        assert_eq!(p["job"]["command"].as_str(), Some(line.command.as_str()), "the job `migration ls` shows on {name}");
        assert!(line.command.starts_with("migration move -id=rebalance -refresh=5 "), "{line:?}");
    }

    // Cancelled everywhere: each pool's job as `migration ls` shows it once the cancel is over.
    let doc = json_of(&cluster, "pool1", "rebalance cancel pgroup -json disk");
    assert_eq!((doc["command"].clone(), doc["metric"].clone()), (Value::Null, Value::Null));
    for (p, name) in doc["pools"].as_array().unwrap().iter().zip(["pool1", "pool2"]) {
        assert_eq!((p["pool"].as_str(), p["outcome"].as_str()), (Some(name), Some("cancelled")), "{doc}");
        let state = p["job"]["state"].as_str().unwrap();
        assert!(["CANCELLED", "CANCELLING", "FINISHED"].contains(&state), "{doc}");
        wait_until("the rebalance job has ended", WAIT, || {
            let line = cluster.migration_ls(name).into_iter().find(|l| l.id == "rebalance")?;
            ["CANCELLED", "FINISHED"].contains(&line.state.as_str()).then_some(())
        });
    }
    let doc = json_of(&cluster, "pool1", "rebalance cancel pgroup -json tape");
    assert_eq!(
        doc["pools"],
        json!([{"pool": "pool3", "outcome": "no_job", "reason": null, "job": null, "error": null}])
    );
}

#[test]
fn shell_ls_json_has_the_pools_of_the_table() {
    let mut cluster = Cluster::new(&[("pool1", &["disk", "tape"]), ("pool2", &[])]);
    cluster.start("pool1");
    let out = cluster.admin("ls\nls -json\n");
    out.assert_success("ls");
    let (table, document) = out.stdout.split_at(out.stdout.find('[').expect("a JSON array"));
    let pools: Value = serde_json::from_str(document).unwrap_or_else(|e| panic!("{e}: {out}"));
    let pools = pools.as_array().unwrap();
    assert_eq!(pools.len(), table.lines().count(), "{out}");
    for (line, p) in table.lines().zip(pools) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let groups = p["groups"].as_array().unwrap().iter().map(|g| g.as_str().unwrap()).collect::<Vec<_>>();
        let groups = if groups.is_empty() { "-".to_string() } else { groups.join(",") };
        assert_eq!(
            (Some(words[0]), Some(words[1]), words[3]),
            (p["pool"].as_str(), p["status"].as_str(), groups.as_str()),
            "{out}"
        );
        match p["reason"].as_str() {
            None => assert_eq!(words.len(), 4, "{line}"),
            Some(reason) => assert!(line.ends_with(&format!("  ({reason})")), "{line}"),
        }
    }
    assert_eq!((pools[0]["status"].as_str(), pools[1]["status"].as_str()), (Some("online"), Some("offline")));
    let out = cluster.admin("ls -l\n");
    assert!(out.stderr.contains("usage: ls [-json]"), "{out}");
}

#[test]
fn pp_ls_json_has_the_active_and_queued_transfers_of_the_text() {
    let mut cluster = two_pools();
    /// Large enough that the transfer is still under way when its first bytes are seen (as in
    /// tests/p2p.rs).
    const BIG: usize = 64 << 20;
    let big = cluster.put_samples("pool1", &[(BIG, 7)], &[]).remove(0).0;
    let small = cluster.put_samples("pool1", &[(1000, 8)], &[]).remove(0).0;
    ok(&cluster, "pool2", &format!("pp set max active 1\npp get file {big} pool1\npp get file {small} pool1\n"));
    // The source stops while the big file is on its way: its transfer stays ACTIVE, the other
    // QUEUED behind it.
    wait_until("part of the big file on pool2", WAIT, || {
        cluster.incoming("pool2").into_iter().find(|(name, len)| *name == big && *len > 0)
    });
    cluster.freeze("pool1");
    assert!(cluster.incoming_len("pool2", &big).is_some(), "pool1 was frozen after the big transfer had ended");
    let checked = wait_until("pp ls and pp ls -json agree on the bytes received", WAIT, || {
        let text = cluster.pp_ls("pool2");
        let pp = json_of(&cluster, "pool2", "pp ls -l -json");
        let transfers = pp["transfers"].as_array().unwrap().clone();
        if transfers.len() != text.transfers.len() {
            return None;
        }
        for (line, t) in text.transfers.iter().zip(&transfers) {
            assert_eq!(
                (t["id"].as_u64(), t["pnfsid"].as_str(), t["source"].as_str()),
                (Some(line.id), Some(line.pnfsid.as_str()), Some(line.source.as_str()))
            );
            match &line.state {
                PpState::Active { done, size } => {
                    assert_eq!(t["state"], "ACTIVE");
                    assert_eq!(t["size_bytes"].as_u64(), Some(*size));
                    assert!(t["rate_bytes_per_second"].as_f64().is_some(), "{t}");
                    if t["done_bytes"].as_u64() != Some(*done) {
                        return None; // bytes still in flight arrived between the two looks
                    }
                }
                PpState::Queued => {
                    assert_eq!(t["state"], "QUEUED");
                    assert_eq!((&t["done_bytes"], &t["size_bytes"]), (&Value::Null, &Value::Null));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(pp["incoming"], json!({"active": text.counts.active, "max": 1, "queued": text.counts.queued}));
        Some(transfers)
    });
    let states: Vec<(&str, &str)> =
        checked.iter().map(|t| (t["pnfsid"].as_str().unwrap(), t["state"].as_str().unwrap())).collect();
    assert_eq!(states, [(big.as_str(), "ACTIVE"), (small.as_str(), "QUEUED")]);
    assert_eq!(checked[0]["size_bytes"], BIG as u64);
    cluster.thaw("pool1");
    wait_until("both transfers DONE", WAIT, || {
        let pp = json_of(&cluster, "pool2", "pp ls -l -json");
        let done = pp["finished"].as_array().unwrap().iter().filter(|f| f["state"] == "DONE").count();
        (done == 2 && pp["transfers"] == json!([])).then_some(())
    });
}
