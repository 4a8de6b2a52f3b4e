//! Membership (docs/operator-guide.md, "Membership"): the cluster file read again on SIGHUP and
//! `psu reload`, and etcd (pools registered under leases, groups changed live with `psu`).
//! The etcd tests start their own etcd on a free loopback port ([`tidepool_tests::etcd`]) and
//! skip with a note where no `etcd` binary is installed.

use std::time::Duration;

use tidepool_tests::*;

const WAIT: Duration = Duration::from_secs(60);

/// A job of pool1 over the group `disk`, whose only other member takes nothing, sleeps; the
/// cluster file puts pool3 in the group and SIGHUP reads it: the running job copies to pool3.
#[test]
fn the_cluster_file_reloaded_on_sighup_adds_a_pool_that_a_running_pgroup_job_uses() {
    let mut cluster = started(&[("pool1", &["disk"]), ("pool2", &["disk"]), ("pool3", &["spare"])]);
    ok(&cluster, "pool2", "pool disable -p2p-client\n");
    let files = cluster.put_samples("pool1", &[(20_000, 1), (300_000, 2), (5_000, 3)], &[]);
    let job = create(&cluster, "pool1", "migration copy -target=pgroup disk");
    cluster.wait_for_job("pool1", &job, "SLEEPING", WAIT);

    cluster.set_groups("pool3", &["disk"]);
    cluster.hangup("pool1");
    cluster.wait_for_log_line(
        "pool1",
        &["SIGHUP: cluster file: pool pool3 changed: groups spare -> disk; applied"],
        WAIT,
    );
    cluster.wait_for_job("pool1", &job, "FINISHED", WAIT);
    assert_bytes(&cluster, "pool3", &files);
    assert!(cluster.rep_ls("pool2").is_empty(), "pool2 takes nothing");
    assert!(cluster.log("pool1").contains("targets changed with the membership: added [pool3]"));
}

/// `psu reload` reads the cluster file as SIGHUP does and says what changed; `psu ls` shows
/// the view; a `psu` change of a file membership is refused with its code.
#[test]
fn psu_reload_reads_the_cluster_file_and_psu_changes_need_etcd() {
    let mut cluster = started(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    assert_eq!(ok(&cluster, "pool1", "psu reload\n"), "membership unchanged\n");
    cluster.set_groups("pool2", &["disk", "tape"]);
    assert_eq!(ok(&cluster, "pool1", "psu reload\n"), "pool pool2 changed: groups disk -> disk,tape\n");
    assert_eq!(ok(&cluster, "pool1", "psu ls pgroup\n"), "disk : pool1, pool2\ntape : pool2\n");
    let pools = ok(&cluster, "pool1", "psu ls pool\n");
    assert!(pools.starts_with("pool1 p2p=") && pools.contains("groups=[disk,tape]"), "{pools}");
    let err = refused(&cluster, "pool1", "psu create pgroup fast");
    assert!(err.contains("rc=20009") && err.contains("cluster file"), "{err}");
    let err = refused(&cluster, "pool1", "psu addto pgroup bad/name pool2");
    assert!(err.contains("pool group \"bad/name\""), "{err}");
    assert_eq!(info_field(&cluster.info("pool1"), "Membership"), Some("file"));
}

/// How a conformance test changes the membership of its backend.
trait Backend {
    /// Puts `pool` in `group` too, so that every pool's view has it there.
    fn add_to_group(&self, cluster: &mut Cluster, group: &str, pool: &str);
    /// The name `info` shows.
    fn name(&self) -> &'static str;
    /// Whether the view says which pools are alive.
    fn knows_liveness(&self) -> bool;
}

struct File;

impl Backend for File {
    fn add_to_group(&self, cluster: &mut Cluster, group: &str, pool: &str) {
        let mut groups = cluster.spec(pool).groups.clone();
        groups.push(group.to_string());
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        cluster.set_groups(pool, &groups);
        for p in ["pool1", "pool2", "pool3"] {
            ok(cluster, p, "psu reload\n");
        }
    }
    fn name(&self) -> &'static str {
        "file"
    }
    fn knows_liveness(&self) -> bool {
        false
    }
}

struct Etcd;

impl Backend for Etcd {
    fn add_to_group(&self, cluster: &mut Cluster, group: &str, pool: &str) {
        let out = ok(cluster, "pool2", &format!("psu addto pgroup {group} {pool}\n"));
        assert_eq!(out, format!("pool {pool} added to pool group {group}\n"));
    }
    fn name(&self) -> &'static str {
        "etcd"
    }
    fn knows_liveness(&self) -> bool {
        true
    }
}

/// One suite both backends pass: every pool's view lists the pools with their addresses and
/// groups, says which are alive where it knows, takes up a change of a group on every pool,
/// and a job over the group resolves its new member.
fn conformance(cluster: &mut Cluster, backend: &dyn Backend) {
    let names = ["pool1", "pool2", "pool3"];
    for p in names {
        let listed = ok(cluster, p, "psu ls pool\n");
        for q in names {
            let spec = cluster.spec(q);
            let alive = if backend.knows_liveness() { " alive" } else { "" };
            let line = format!("{q} p2p={} admin={} groups=[{}]{alive}", spec.p2p, spec.admin, spec.groups.join(","));
            assert!(listed.lines().any(|l| l == line), "{p} lists {line:?}:\n{listed}");
        }
        assert_eq!(ok(cluster, p, "psu ls pgroup\n"), "disk : pool1, pool2\nspare : pool3\n", "on {p}");
        let info = cluster.info(p);
        assert_eq!(info_field(&info, "Membership"), Some(backend.name()), "{info}");
    }
    backend.add_to_group(cluster, "disk", "pool3");
    for p in names {
        wait_until(&format!("pool3 in disk on {p}"), WAIT, || {
            (ok(cluster, p, "psu ls pgroup\n") == "disk : pool1, pool2, pool3\nspare : pool3\n").then_some(())
        });
        // The order of a pool's groups is the file's, or etcd's (sorted).
        let mut groups: Vec<String> =
            info_field(&cluster.info(p), "Pool groups").unwrap_or("").split(',').map(str::to_string).collect();
        groups.sort();
        assert_eq!(groups, if p == "pool3" { vec!["disk", "spare"] } else { vec!["disk"] }, "on {p}");
    }
    // A new job over the group counts pool3 among its targets: three replicas need the
    // three pools other than... the source is never a target, so two from pool1's view.
    let plan = ok(cluster, "pool1", "migration copy -target=pgroup -dry-run disk\n");
    assert!(plan.contains("pool3"), "{plan}");
}

#[test]
fn the_cluster_file_passes_the_membership_conformance_suite() {
    let mut cluster = started(&[("pool1", &["disk"]), ("pool2", &["disk"]), ("pool3", &["spare"])]);
    cluster.put_samples("pool1", &[(1000, 1)], &[]);
    conformance(&mut cluster, &File);
}

#[test]
fn etcd_passes_the_membership_conformance_suite() {
    let Some(etcd) = tidepool_tests::etcd::Etcd::start("etcd_passes_the_membership_conformance_suite") else {
        return;
    };
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"]), ("pool3", &["spare"])]);
    cluster.use_etcd(&etcd.endpoint(), "/conformance/", 4);
    for p in ["pool1", "pool2", "pool3"] {
        cluster.start(p);
    }
    // Every pool registered: alive on every view.
    for p in ["pool1", "pool2", "pool3"] {
        wait_until(&format!("every pool alive on {p}"), WAIT, || {
            (ok(&cluster, p, "psu ls pool\n").matches(" alive").count() == 3).then_some(())
        });
    }
    cluster.put_samples("pool1", &[(1000, 1)], &[]);
    conformance(&mut cluster, &Etcd);
    // The etcd-only commands: groups without pools, links, and refusals that change nothing.
    assert_eq!(ok(&cluster, "pool1", "psu create pgroup fast\n"), "pool group fast created\n");
    assert_eq!(ok(&cluster, "pool1", "psu create pgroup fast\n"), "pool group fast exists already\n");
    assert_eq!(ok(&cluster, "pool1", "psu set link fast-link fast disk\n"), "link fast-link -> fast, disk\n");
    wait_until("the link on pool3", WAIT, || {
        (ok(&cluster, "pool3", "psu ls link\n") == "fast-link : fast, disk\n").then_some(())
    });
    let err = refused(&cluster, "pool1", "psu remove pgroup fast");
    assert!(err.contains("link fast-link names pool group fast"), "{err}");
    let err = refused(&cluster, "pool1", "psu addto pgroup nosuch pool2");
    assert!(err.contains("no pool group named nosuch"), "{err}");
    let err = refused(&cluster, "pool1", "psu addto pgroup fast pool9");
    assert!(err.contains("no pool named pool9"), "{err}");
    assert_eq!(ok(&cluster, "pool1", "psu set link fast-link\n"), "link fast-link removed\n");
    assert_eq!(ok(&cluster, "pool1", "psu remove pgroup fast\n"), "pool group fast removed\n");
    assert_eq!(
        ok(&cluster, "pool1", "psu removefrom pgroup disk pool3\n"),
        "pool pool3 removed from pool group disk\n"
    );
    wait_until("pool3 out of disk on pool2", WAIT, || {
        (ok(&cluster, "pool2", "psu ls pgroup\n") == "disk : pool1, pool2\nspare : pool3\n").then_some(())
    });
}

/// A pool added to the group through the shell becomes a target of a job that runs already,
/// with no restart and no reload.
#[test]
fn a_pool_added_through_the_shell_becomes_a_target_of_a_running_pgroup_job() {
    let Some(etcd) = tidepool_tests::etcd::Etcd::start("a_pool_added_through_the_shell") else {
        return;
    };
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"]), ("pool3", &["spare"])]);
    cluster.use_etcd(&etcd.endpoint(), "/added/", 4);
    for p in ["pool1", "pool2", "pool3"] {
        cluster.start(p);
    }
    ok(&cluster, "pool2", "pool disable -p2p-client\n");
    let files = cluster.put_samples("pool1", &[(20_000, 1), (300_000, 2), (5_000, 3)], &[]);
    let job = create(&cluster, "pool1", "migration copy -target=pgroup disk");
    cluster.wait_for_job("pool1", &job, "SLEEPING", WAIT);
    // The shell finds the pools through etcd too, with no cluster file: its credentials are
    // named, since there is no cluster file to find them beside.
    let shell_on_etcd = |cert: &str, line: &str| {
        let mut shell = std::process::Command::new(&binaries().admin);
        shell.args(["--etcd", &etcd.endpoint(), "--etcd-prefix", "/added/"]);
        shell.arg("--cert").arg(cluster.path(cert)).arg("--trust").arg(cluster.path("ca.crt"));
        shell.args(["--history"]).arg(cluster.path("etcd-history")).args(["-e", "cd pool2", "-e", line]);
        run(shell, "")
    };
    // A pool's certificate may not change the membership: psu is an admin command.
    let out = shell_on_etcd("pool1.pool.crt", "psu addto pgroup disk pool3");
    out.assert_code(1, "psu with a pool certificate");
    assert!(out.stderr.contains("(rc=20007)"), "{out}");
    let out = shell_on_etcd("admin.admin.crt", "psu addto pgroup disk pool3");
    out.assert_success("psu addto pgroup through a shell on etcd");
    assert_eq!(out.stdout, "pool pool3 added to pool group disk\n", "{out}");
    cluster.wait_for_job("pool1", &job, "FINISHED", WAIT);
    assert_bytes(&cluster, "pool3", &files);
    assert!(cluster.rep_ls("pool2").is_empty(), "pool2 takes nothing");
}

/// A pool killed with `kill -9` leaves the live set within its lease time (and the watch's
/// moment), and a job started then never chooses it: its files go to the live pool. (The job
/// is `-eager`: without it a job waits for a pool that went offline lately, which may hold a
/// replica already, as dCache's does; docs/operator-guide.md.)
#[test]
fn a_pool_killed_leaves_the_live_set_within_the_lease_and_is_not_chosen() {
    let Some(etcd) = tidepool_tests::etcd::Etcd::start("a_pool_killed_leaves_the_live_set") else {
        return;
    };
    const LEASE: u64 = 4;
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"]), ("pool3", &["disk"])]);
    cluster.use_etcd(&etcd.endpoint(), "/killed/", LEASE);
    for p in ["pool1", "pool2", "pool3"] {
        cluster.start(p);
    }
    wait_until("every pool alive on pool1", WAIT, || {
        (ok(&cluster, "pool1", "psu ls pool\n").matches(" alive").count() == 3).then_some(())
    });
    // A permanent job over the group, running before the kill: it sees pool3 go at once (the
    // membership's change starts a refresh, and a pool whose lease lapsed gets no grace).
    // Eager: without it a job waits for an offline target (it may hold the file) for
    // `offline_grace`, as dCache's does.
    let out = ok(&cluster, "pool1", "migration copy -permanent -eager -target=pgroup -concurrency=4 disk\n");
    assert!(out.contains("Warning: permanent jobs should not be eager"), "{out}");
    let job = out[out.find('[').expect("a job id") + 1..out.find(']').expect("a job id")].to_string();
    cluster.wait_for_job("pool1", &job, "SLEEPING", WAIT);
    // A pool that is alive cannot be removed from the membership: it would register again.
    let err = refused(&cluster, "pool1", "psu remove pool pool3");
    assert!(err.contains("pool pool3 is alive") && err.contains("rc=4"), "{err}");
    cluster.kill9("pool3");
    // The lease lapses at most LEASE seconds after the last renewal; the watch tells pool1
    // at once. Four seconds of slack for a busy machine (CI).
    wait_until("pool3 not alive on pool1", Duration::from_secs(LEASE + 4), || {
        ok(&cluster, "pool1", "psu ls pool\n")
            .lines()
            .any(|l| l.starts_with("pool3 ") && l.ends_with(" not-alive"))
            .then_some(())
    });
    wait_until("the job counting pool3 offline", WAIT, || {
        let info = cluster.migration_info("pool1", &job);
        report_field(&info, "Unusable").filter(|u| u.contains("pool3 (offline)")).map(|_| ())
    });
    let sizes: Vec<(usize, u64)> = (0..12).map(|i| (5_000 + i * 7_000, i as u64)).collect();
    let files = cluster.put_samples("pool1", &sizes, &[]);
    wait_until("every new file on pool2", WAIT, || (cluster.rep_ls("pool2").len() == files.len()).then_some(()));
    assert_bytes(&cluster, "pool2", &files);
    // No copy was tried on pool3: no file failed on it.
    let info = cluster.migration_info("pool1", &job);
    assert!(!info.contains("pool3 failed") && report_field(&info, "Failed").is_none(), "{info}");
    ok(&cluster, "pool1", &format!("migration cancel {job}\n"));

    // Taken out of service: once it is not alive, `psu remove pool` takes it out of the
    // membership, and every pool's view follows.
    assert_eq!(ok(&cluster, "pool1", "psu remove pool pool3\n"), "pool pool3 removed (it was in pool groups disk)\n");
    wait_until("pool3 gone from pool2's view", WAIT, || {
        (!ok(&cluster, "pool2", "psu ls pool\n").lines().any(|l| l.starts_with("pool3 "))).then_some(())
    });
    assert_eq!(ok(&cluster, "pool2", "psu ls pgroup\n"), "disk : pool1, pool2\n");
    let err = refused(&cluster, "pool1", "psu remove pool pool3");
    assert!(err.contains("no pool named pool3"), "{err}");
}

/// etcd stopped in the middle of a move: the pools keep their view (stale in `info`), the
/// job asks its targets directly, and the move finishes with every file moved; etcd back,
/// the view is fresh again.
#[test]
fn etcd_stopped_mid_move_the_move_finishes() {
    let Some(mut etcd) = tidepool_tests::etcd::Etcd::start("etcd_stopped_mid_move") else {
        return;
    };
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    cluster.use_etcd(&etcd.endpoint(), "/stopped/", 4);
    for p in ["pool1", "pool2"] {
        cluster.start(p);
    }
    let sizes: Vec<(usize, u64)> = (0..16).map(|i| (100_000 + i * 10_000, i as u64)).collect();
    let files = cluster.put_samples("pool1", &sizes, &[]);
    // Slow enough that etcd is gone while it runs (2.4 MB at 200 KiB/s: some 12 s), and
    // refreshed every second: while the view is stale the job asks pool2 itself.
    let job = create(&cluster, "pool1", "migration move -target=pgroup -refresh=1 -rate=200KiB disk");
    cluster.wait_for_job("pool1", &job, "RUNNING", WAIT);
    etcd.stop();
    wait_until("pool1's view stale", WAIT, || {
        info_field(&cluster.info("pool1"), "Membership").filter(|m| m.contains("stale")).map(|_| ())
    });
    let left = cluster.rep_ls("pool1").len();
    assert!(left > 0, "the move was still under way when the view went stale");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&cluster, "pool1", "info -json\n")).expect("info -json is JSON");
    assert_eq!(json["membership"], serde_json::json!({"backend": "etcd", "stale": true}), "{json}");
    cluster.wait_for_job("pool1", &job, "FINISHED", WAIT);
    assert_bytes(&cluster, "pool2", &files);
    assert!(cluster.rep_ls("pool1").is_empty(), "every file moved");
    etcd.restart();
    wait_until("pool1's view fresh again", WAIT, || {
        (info_field(&cluster.info("pool1"), "Membership") == Some("etcd")).then_some(())
    });
}

/// etcd unreachable at start: the pool does not start, and says why and where to read on.
#[test]
fn etcd_unreachable_at_start_is_a_clear_error() {
    let cluster = Cluster::new(&[("pool1", &["disk"])]);
    let nobody = free_ports(1)[0];
    cluster.etcd_configs(&format!("http://{nobody}"), "/nobody/", 4);
    let out = cluster.start_refused("pool1");
    out.assert_code(1, "tidepool pool without etcd");
    assert!(out.stderr.contains(&format!("etcd at http://{nobody}")), "{out}");
    assert!(out.stderr.contains("the pool does not start without its membership"), "{out}");
}

/// etcd down for longer than the leases, then back: every pool comes back to a fresh view
/// without a storm of pools going offline and online (docs/operator-guide.md, "When etcd is
/// lost").
#[test]
fn etcd_back_after_the_leases_no_storm_of_offline_and_online() {
    let Some(mut etcd) = tidepool_tests::etcd::Etcd::start("etcd_back_after_the_leases") else {
        return;
    };
    const LEASE: u64 = 3;
    let names = ["pool1", "pool2", "pool3"];
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"]), ("pool3", &["disk"])]);
    cluster.use_etcd(&etcd.endpoint(), "/storm/", LEASE);
    for p in names {
        cluster.start(p);
    }
    for p in names {
        wait_until(&format!("every pool alive on {p}"), WAIT, || {
            (ok(&cluster, p, "psu ls pool\n").matches(" alive").count() == 3).then_some(())
        });
    }
    etcd.stop();
    for p in names {
        cluster.wait_for_log_line(p, &["etcd lost"], WAIT);
    }
    // Longer than the leases: on the server they lapse once it is back, unless renewed.
    std::thread::sleep(Duration::from_secs(LEASE + 1));
    etcd.restart();
    for p in names {
        wait_until(&format!("{p}'s view fresh again"), WAIT, || {
            (info_field(&cluster.info(p), "Membership") == Some("etcd")).then_some(())
        });
    }
    // Two more lease times: whatever lapses has lapsed, whatever re-registers has.
    std::thread::sleep(Duration::from_secs(2 * LEASE));
    for p in names {
        assert_eq!(ok(&cluster, p, "psu ls pool\n").matches(" alive").count(), 3, "on {p}");
        let log = cluster.log(p);
        assert!(!log.contains("no longer alive"), "{p} saw pools go:\n{log}");
    }
}

/// One value in etcd that Tidepool cannot read (a hand edit, another program) is skipped with
/// a warning: the pools stay registered and fresh, and later changes still reach every view.
#[test]
fn an_unreadable_value_in_etcd_is_skipped_and_the_rest_still_read() {
    let Some(etcd) = tidepool_tests::etcd::Etcd::start("an_unreadable_value_in_etcd_is_skipped") else {
        return;
    };
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    cluster.use_etcd(&etcd.endpoint(), "/unreadable/", 4);
    for p in ["pool1", "pool2"] {
        cluster.start(p);
    }
    wait_until("both pools alive on pool1", WAIT, || {
        (ok(&cluster, "pool1", "psu ls pool\n").matches(" alive").count() == 2).then_some(())
    });
    etcd.put("/unreadable/pool/pool9", b"{not json");
    etcd.put("/unreadable/link/broken", b"42");
    for p in ["pool1", "pool2"] {
        cluster.wait_for_log_line(p, &["etcd key /unreadable/pool/pool9", "skipped"], WAIT);
    }
    // The rest is read: a change still reaches both views, both pools stay alive and fresh.
    assert_eq!(ok(&cluster, "pool1", "psu create pgroup fast\n"), "pool group fast created\n");
    assert_eq!(ok(&cluster, "pool1", "psu set link l fast disk\n"), "link l -> fast, disk\n");
    // The checked changes (their checks compared in their transactions) still read the rest.
    let err = refused(&cluster, "pool2", "psu set link l fast nosuch");
    assert!(err.contains("no pool group named nosuch; `psu create pgroup nosuch` first"), "{err}");
    let err = refused(&cluster, "pool2", "psu remove pgroup fast");
    assert!(err.contains("link l names pool group fast"), "{err}");
    for p in ["pool1", "pool2"] {
        wait_until(&format!("the link on {p}"), WAIT, || {
            (ok(&cluster, p, "psu ls link\n") == "l : fast, disk\n").then_some(())
        });
        let pools = ok(&cluster, p, "psu ls pool\n");
        assert_eq!(pools.matches(" alive").count(), 2, "{pools}");
        assert!(!pools.contains("pool9") && !pools.contains("stale"), "{pools}");
        assert_eq!(info_field(&cluster.info(p), "Membership"), Some("etcd"));
        let log = cluster.log(p);
        assert!(!log.contains("etcd lost"), "{p} lost etcd over one bad value:\n{log}");
        assert_eq!(log.matches("etcd key /unreadable/pool/pool9").count(), 1, "warned once:\n{log}");
    }
}

/// A second daemon started under a running pool's name is refused (once the running pool's
/// lease would have lapsed), naming the pool; the running one keeps its registration. A pool
/// killed with `kill -9` and started again at once waits for its old lease and starts.
#[test]
fn a_second_daemon_with_a_pools_name_is_refused_and_a_restart_after_kill9_starts() {
    let Some(etcd) = tidepool_tests::etcd::Etcd::start("a_second_daemon_with_a_pools_name") else {
        return;
    };
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    cluster.use_etcd(&etcd.endpoint(), "/twice/", 3);
    for p in ["pool1", "pool2"] {
        cluster.start(p);
    }
    wait_until("both pools alive on pool2", WAIT, || {
        (ok(&cluster, "pool2", "psu ls pool\n").matches(" alive").count() == 2).then_some(())
    });
    let out = cluster.start_refused("pool1");
    out.assert_code(1, "a second pool1");
    assert!(out.stderr.contains("pool pool1 is registered in etcd by another running daemon"), "{out}");
    assert!(ok(&cluster, "pool2", "psu ls pool\n").lines().any(|l| l.starts_with("pool1 ") && l.ends_with(" alive")));
    assert!(!cluster.log("pool1").contains("etcd lost"), "the running pool1 kept its registration");

    cluster.kill9("pool1");
    cluster.start("pool1");
    wait_until("pool1 alive again on pool2", WAIT, || {
        ok(&cluster, "pool2", "psu ls pool\n")
            .lines()
            .any(|l| l.starts_with("pool1 ") && l.ends_with(" alive"))
            .then_some(())
    });
}

/// A view in etcd that no longer lists a pool is not applied on that pool: it keeps the view
/// in force and says why (in its log, and to `psu reload`); the other pool applies it.
/// While etcd is lost, `psu ls pgroup` lists the groups of the view in force, empty ones
/// included, marked stale.
#[test]
fn a_view_without_this_pool_is_refused_and_psu_ls_pgroup_works_while_etcd_is_lost() {
    let Some(mut etcd) = tidepool_tests::etcd::Etcd::start("a_view_without_this_pool_is_refused") else {
        return;
    };
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    cluster.use_etcd(&etcd.endpoint(), "/guard/", 4);
    for p in ["pool1", "pool2"] {
        cluster.start(p);
    }
    wait_until("both pools alive on pool1", WAIT, || {
        (ok(&cluster, "pool1", "psu ls pool\n").matches(" alive").count() == 2).then_some(())
    });
    assert_eq!(ok(&cluster, "pool1", "psu create pgroup fast\n"), "pool group fast created\n");
    wait_until("the empty group on pool2", WAIT, || {
        (ok(&cluster, "pool2", "psu ls pgroup\n") == "disk : pool1, pool2\nfast : \n").then_some(())
    });

    etcd.delete("/guard/pool/pool1");
    cluster.wait_for_log_line("pool1", &["no longer lists this pool (pool1)", "not applied"], WAIT);
    wait_until("pool1 gone from pool2's view", WAIT, || {
        (!ok(&cluster, "pool2", "psu ls pool\n").lines().any(|l| l.starts_with("pool1 "))).then_some(())
    });
    assert!(ok(&cluster, "pool1", "psu ls pool\n").lines().any(|l| l.starts_with("pool1 ")), "pool1 kept its view");
    let err = refused(&cluster, "pool1", "psu reload");
    assert!(err.contains("no longer lists this pool (pool1)") && err.contains("rc=20008"), "{err}");

    etcd.stop();
    wait_until("pool2's view stale", WAIT, || {
        info_field(&cluster.info("pool2"), "Membership").filter(|m| m.contains("stale")).map(|_| ())
    });
    assert_eq!(
        ok(&cluster, "pool2", "psu ls pgroup\n"),
        "disk : pool2\nfast : \n(stale: etcd cannot be reached; this is the last view seen)\n"
    );
}

/// A job's refresh reads its targets' published costs in one request: by key for a few targets,
/// the whole `cost/` range for many; both read the same, and a pool that publishes none has
/// none.
#[test]
fn the_costs_of_few_and_of_many_targets_are_read_alike() {
    use tidepool_etcd::{COST_KEYS_ONE_BY_ONE, EtcdSettings};
    use tidepool_p2p::PoolName;
    use tidepool_p2p::message::PoolCost;
    use tidepool_p2p::model::SpaceInfo;
    let Some(etcd) = tidepool_tests::etcd::Etcd::start("the_costs_of_few_and_of_many_targets") else {
        return;
    };
    let names: Vec<PoolName> = (0..40).map(|i| format!("pool{i}").parse().unwrap()).collect();
    let cost = |i: usize| PoolCost {
        space: SpaceInfo { total: 1000, used: i as u64, free: 1000 - i as u64, precious: 0, removable: 0 },
        load: i as u32,
        accepts: true,
        enabled: !i.is_multiple_of(3),
        run: i as u64,
    };
    // Every other pool publishes its cost.
    for (i, n) in names.iter().enumerate().filter(|(i, _)| i.is_multiple_of(2)) {
        etcd.put(&format!("/costs/cost/{n}"), &serde_json::to_vec(&cost(i)).unwrap());
    }
    etcd.put("/costs/cost/pool1", b"not a cost");
    let want = |pools: &[PoolName]| -> Vec<(PoolName, Option<PoolCost>)> {
        pools
            .iter()
            .map(|p| {
                let i: usize = p.as_str()["pool".len()..].parse().unwrap();
                (p.clone(), i.is_multiple_of(2).then(|| cost(i)))
            })
            .collect()
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut settings = EtcdSettings::new(vec![etcd.endpoint()]);
        settings.prefix = "/costs/".into();
        let e = tidepool_etcd::Etcd::connect(&settings).await.expect("connect to etcd");
        let few = &names[..COST_KEYS_ONE_BY_ONE];
        assert_eq!(e.costs(few).await.unwrap(), want(few), "by key");
        let reversed: Vec<PoolName> = names[..5].iter().rev().cloned().collect();
        assert_eq!(e.costs(&reversed).await.unwrap(), want(&reversed), "in the order asked");
        assert_eq!(e.costs(&names).await.unwrap(), want(&names), "by range");
        assert_eq!(e.costs(&[]).await.unwrap(), Vec::new());
    });
}

/// A pool that is stopping does not register again: its registration, stopped before (or
/// while) a session with etcd is set up, writes nothing and returns.
#[test]
fn a_stopping_pool_does_not_register_again() {
    use tidepool_p2p::cluster::{ClusterFile, PoolEntry};
    use tidepool_p2p::membership::Membership;
    use tidepool_p2p::message::PoolCost;
    use tidepool_p2p::model::SpaceInfo;
    let Some(etcd) = tidepool_tests::etcd::Etcd::start("a_stopping_pool_does_not_register_again") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut settings = tidepool_etcd::EtcdSettings::new(vec![etcd.endpoint()]);
        settings.prefix = "/stopping/".into();
        let e = tidepool_etcd::Etcd::connect(&settings).await.expect("connect to etcd");
        let entry = PoolEntry {
            name: "pool1".parse().unwrap(),
            p2p: "127.0.0.1:1".parse().unwrap(),
            admin: "127.0.0.1:2".parse().unwrap(),
            groups: vec![],
            tags: Default::default(),
            hsm: vec![],
        };
        let cost = Box::new(|| PoolCost {
            space: SpaceInfo { total: 1, used: 0, free: 1, precious: 0, removable: 0 },
            load: 0,
            accepts: true,
            enabled: true,
            run: 0,
        });
        let membership = Membership::file(ClusterFile { pools: vec![], links: vec![] });
        let stop = tokio_util::sync::CancellationToken::new();
        stop.cancel();
        let me = tidepool_etcd::Registration { entry, cost };
        tokio::time::timeout(WAIT, tidepool_etcd::run(e.clone(), membership, me, stop))
            .await
            .expect("the registration returns once stopped");
        let snap = e.load().await.unwrap();
        assert!(snap.cluster.pools.is_empty() && snap.alive.is_empty(), "{snap:?}");
    });
}

/// `psu remove pgroup` checks in its transaction that the group has no member key: one the
/// read cannot see (a member key whose pool has no record, as a `psu addto` racing the removal
/// would leave in between) refuses the removal and is named; once it is taken out, the group
/// goes.
#[test]
fn removing_a_group_checks_its_members_in_the_same_transaction() {
    let Some(etcd) = tidepool_tests::etcd::Etcd::start("removing_a_group_checks_its_members") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut settings = tidepool_etcd::EtcdSettings::new(vec![etcd.endpoint()]);
        settings.prefix = "/rmgroup/".into();
        let e = tidepool_etcd::Etcd::connect(&settings).await.expect("connect to etcd");
        assert!(e.create_group("fast").await.unwrap());
        assert!(e.create_group("fast2").await.unwrap());
        etcd.put("/rmgroup/member/fast/poolz", b"");
        etcd.put("/rmgroup/member/fast2/pooly", b"");
        let err = e.remove_group("fast").await.unwrap_err().to_string();
        assert_eq!(err, "pool group fast still has pools (poolz); `psu removefrom pgroup fast <pool>` first");
        assert!(e.groups().await.unwrap().contains("fast"), "nothing removed");
        assert!(e.remove_from_group("fast", &"poolz".parse().unwrap()).await.unwrap());
        e.remove_group("fast").await.expect("an empty group is removed");
        assert_eq!(e.groups().await.unwrap(), ["fast2".to_string()].into());
    });
}
