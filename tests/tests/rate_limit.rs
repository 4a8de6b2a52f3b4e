//! A migration job's byte-rate limit against real `tidepool pool` daemons (issue 13, item 2):
//! set with `-rate` at creation, the bytes that reach the target hold it within 10% over 10 s;
//! `migration set rate` changes it, and the new rate holds from 2 s after the change; `migration
//! info` (text and `-json`) shows it; a bad value is refused and changes nothing; `save` keeps
//! it across a restart; `migration cancel -force` is not held up by a transfer waiting for its
//! bytes.
//!
//! The limit is a rate, so this test measures time: it samples what pool2 holds (complete
//! replicas from `rep ls` plus the partial data in its `incoming/`) while the job runs. Small
//! files (sent in `FetchSmall` batches) and larger ones (sent in frames) share the job's limit;
//! a batch of small files is committed once all of it arrived, so the test keeps batches small
//! (`batch_bytes`) for the steps of what pool2 holds to be small against a window.

use std::time::{Duration, Instant};

use tidepool_tests::{Cluster, assert_no_partial_replica, create, ok, refused, report_field, wait_until};

const MIB: u64 = 1 << 20;
/// How long a test waits for something it has caused to show (a state, the first bytes).
const SHOW_WAIT: Duration = Duration::from_secs(20);
/// The window over which the rate must hold within [`TOLERANCE`].
const WINDOW: Duration = Duration::from_secs(10);
const TOLERANCE: f64 = 0.10;
/// How soon a new rate must take effect.
const TAKES_EFFECT: Duration = Duration::from_secs(2);

/// The bytes pool `pool` has received: complete replicas plus the partial data being received.
fn received(cluster: &Cluster, pool: &str) -> u64 {
    let complete: u64 = cluster
        .rep_ls(pool)
        .iter()
        .filter(|r| r.flags.starts_with("<C") || r.flags.starts_with("<-P"))
        .map(|r| r.size)
        .sum();
    complete + cluster.incoming(pool).iter().map(|(_, len)| len).sum::<u64>()
}

/// Samples [`received`] from `from` until `from + WINDOW` and returns the rate over that
/// window (bytes per second), from the samples nearest its two ends.
fn rate_over_window(cluster: &Cluster, pool: &str, from: Instant) -> f64 {
    while Instant::now() < from {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (t0, b0) = (Instant::now(), received(cluster, pool));
    let end = from + WINDOW;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (t1, b1) = (Instant::now(), received(cluster, pool));
    (b1 - b0) as f64 / (t1 - t0).as_secs_f64()
}

#[track_caller]
fn assert_rate(what: &str, got: f64, want: u64) {
    let off = (got - want as f64).abs() / want as f64;
    eprintln!(
        "{what}: {:.3} MiB/s for a limit of {:.3} MiB/s ({:.1}% off)",
        got / MIB as f64,
        want as f64 / MIB as f64,
        off * 100.0
    );
    assert!(off <= TOLERANCE, "{what}: {got:.0} B/s, not within 10% of {want} B/s");
}

#[test]
fn a_jobs_rate_limit_holds_changes_live_and_survives_a_restart() {
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    // Batches of two small files: pool2 commits a batch once all of it is there, so the bytes
    // it holds grow in steps of at most 256 KiB, small against the 10 MiB of a window.
    cluster.append_config("pool1", "\n[migration]\nbatch_bytes = \"256Ki\"\n");
    cluster.start("pool1");
    cluster.start("pool2");
    // 240 small files of 128 KiB and 16 of 1.5 MiB (54 MiB): more than the ~36 MiB both
    // windows take at 1 and 2 MiB/s, so the job is still copying at the end.
    let files: Vec<(usize, u64)> =
        (0..256u64).map(|seed| (if seed % 16 == 0 { 3 * MIB as usize / 2 } else { 128 << 10 }, seed)).collect();
    let total: u64 = files.iter().map(|(len, _)| *len as u64).sum();
    cluster.put_samples("pool1", &files, &[]);

    let job = create(&cluster, "pool1", "migration copy -permanent -concurrency=4 -rate=1Mi pool2");
    let info = cluster.migration_info("pool1", &job);
    assert_eq!(report_field(&info, "Rate limit"), Some("1 MiB/s"), "{info}");

    // Running once the first bytes arrive; the rate holds over the 10 s after a second more.
    wait_until("pool2 receiving the first bytes", SHOW_WAIT, || (received(&cluster, "pool2") > 0).then_some(()));
    let first = rate_over_window(&cluster, "pool2", Instant::now() + Duration::from_secs(1));
    assert_rate("at -rate=1Mi", first, MIB);

    // A change: the new rate holds over the 10 s from 2 s after it.
    assert_eq!(
        ok(&cluster, "pool1", &format!("migration set rate {job} 2Mi\n")),
        format!("[{job}] Rate limit set to 2 MiB/s\n")
    );
    let changed = Instant::now();
    let second = rate_over_window(&cluster, "pool2", changed + TAKES_EFFECT);
    assert_rate("after migration set rate 2Mi", second, 2 * MIB);
    assert!(received(&cluster, "pool2") < total, "the job was still copying at the end of the window");

    // `migration info` shows it, text and JSON.
    let info = cluster.migration_info("pool1", &job);
    assert_eq!(report_field(&info, "Rate limit"), Some("2 MiB/s"), "{info}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&cluster, "pool1", &format!("migration info -json {job}\n")))
            .expect("migration info -json is JSON");
    assert_eq!(json["rate_limit_bytes_per_second"], 2 * MIB, "{json}");

    // A bad value names the option and the expected form, and changes nothing.
    let err = refused(&cluster, "pool1", &format!("migration set rate {job} x"));
    assert!(
        err.contains("rate: \"x\" is not a byte rate") && err.contains("(expected: migration set rate <job> <rate>)"),
        "{err}"
    );
    assert!(err.contains("rc=4"), "{err}");
    let info = cluster.migration_info("pool1", &job);
    assert_eq!(report_field(&info, "Rate limit"), Some("2 MiB/s"), "{info}");

    // `save` keeps the limit: after a restart the job comes back with it. A limit changed after
    // the last `save` marks the job as not saved.
    let mark = |cluster: &Cluster| {
        let jobs = cluster.migration_ls("pool1");
        let line = jobs.iter().find(|j| j.id == job).expect("the job is listed");
        line.saved_mark().1.map(str::to_string)
    };
    assert_eq!(mark(&cluster).as_deref(), Some("not saved"));
    ok(&cluster, "pool1", "save\n");
    assert_eq!(mark(&cluster), None, "saved as it is");
    cluster.stop("pool1");
    cluster.start("pool1");
    let info = cluster.migration_info("pool1", &job);
    assert_eq!(report_field(&info, "Rate limit"), Some("2 MiB/s"), "the saved limit came back\n{info}");

    // A transfer waiting for its bytes does not hold up a forced cancel.
    assert_eq!(
        ok(&cluster, "pool1", &format!("migration set rate {job} 64Ki\n")),
        format!("[{job}] Rate limit set to 64 KiB/s\n")
    );
    assert_eq!(mark(&cluster).as_deref(), Some("not saved"), "the limit changed since the save");
    let before = received(&cluster, "pool2");
    wait_until("pool2 receiving at 64 KiB/s", SHOW_WAIT, || (received(&cluster, "pool2") > before).then_some(()));
    let asked = Instant::now();
    ok(&cluster, "pool1", &format!("migration cancel -force {job}\n"));
    cluster.wait_for_job("pool1", &job, "CANCELLED", Duration::from_secs(5));
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(5), "cancel -force took {took:?}");
    wait_until("pool2 ending its incoming transfers", SHOW_WAIT, || {
        let counts = cluster.pp_ls("pool2").counts;
        (counts.active + counts.queued == 0 && cluster.incoming("pool2").is_empty()).then_some(())
    });
    assert_no_partial_replica(&cluster, "pool2");
}
