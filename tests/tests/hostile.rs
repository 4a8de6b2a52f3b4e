//! Hostile peers against a real pool daemon: connections that never authenticate but announce
//! large frames, and admin lines far longer than any command. The bounds checked here are the
//! ones `docs/testing.md` states.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tidepool_p2p::frame::MAX_FRAME;
use tidepool_tests::{Cluster, info_field, memory, sample_bytes, wait_until};

/// Hostile connections opened against each endpoint.
const HOSTILE: usize = 1000;
/// What each hostile connection sends after its frame header: a quarter of the frame it
/// announces, which a pool that reserved the announced length would receive into it.
const HOSTILE_BODY: usize = 256 * 1024;
/// The most the pool's resident memory may grow while the hostile connections come (the
/// bound `docs/testing.md` states).
const MAX_GROWTH_KIB: u64 = 64 * 1024;
/// How long the pool may take to answer again once the hostile peers are gone.
const RECOVERY: Duration = Duration::from_secs(15);

/// Opens `n` connections to `addr`, each sending a message-frame header that announces almost
/// [`MAX_FRAME`] bytes, then [`HOSTILE_BODY`] bytes of it, and never authenticating. Keeps them
/// all open and returns them.
fn hostile_flood(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut bytes = ((MAX_FRAME - 16) as u32).to_be_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(&sample_bytes(HOSTILE_BODY, 77));
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("hostile connection {i} to {addr}: {e}"));
        stream.set_write_timeout(Some(Duration::from_secs(2))).expect("set a write timeout");
        // A pool that hangs up makes the write fail (reset, broken pipe) or stop (timeout):
        // both are what a hostile peer gets.
        let _ = stream.write_all(&bytes);
        open.push(stream);
    }
    open
}

/// A connection to `addr` from another loopback address (127.0.0.2): another peer, for the
/// pool's per-peer limit of refusal warnings.
fn connect_from_another_address(addr: SocketAddr) -> Option<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).ok()?;
        socket.connect(addr).await.ok()?.into_std().ok()
    })?;
    stream.set_nonblocking(false).ok()?;
    Some(stream)
}

/// Lines of the pool's log that warn about a refused or dropped connection.
fn refusal_lines(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("WARN") && (l.contains("refused connection") || l.contains("dropped connection")))
        .count()
}

#[test]
fn a_thousand_unauthenticated_connections_per_endpoint_keep_the_pool_small_and_serving() {
    let mut cluster = Cluster::new(&[("pool1", &["disk"])]);
    cluster.start("pool1");
    let spec = cluster.spec("pool1").clone();
    let pid = cluster.pid("pool1");
    let before = memory(pid);
    let log_before = refusal_lines(&cluster.log("pool1"));

    let started = Instant::now();
    let mut held = hostile_flood(spec.admin, HOSTILE);
    held.extend(hostile_flood(spec.p2p, HOSTILE));
    let during = memory(pid);
    let flood_secs = started.elapsed().as_secs();
    drop(held);

    // Peak resident memory (VmHWM) covers the whole flood, whenever the pool held the most.
    let growth = during.peak_kib.saturating_sub(before.rss_kib);
    eprintln!("pool memory: before {before:?}, after the flood {during:?}: peak growth {growth} KiB in {flood_secs} s");
    assert!(
        growth < MAX_GROWTH_KIB,
        "the pool grew by {growth} KiB (from {before:?} to {during:?}) for {} unauthenticated connections",
        2 * HOSTILE
    );

    // The pool still serves an operator and a client once the hostile peers are gone.
    let info = wait_until("pool1 answering `info` again", RECOVERY, || {
        let out = cluster.admin_args(&["--pool", "pool1", "-e", "info"], "");
        (out.code == Some(0)).then_some(out.stdout)
    });
    assert_eq!(info_field(&info, "Pool name"), Some("pool1"));
    let file = cluster.write_file("after-flood.dat", &sample_bytes(10_000, 5));
    let id = cluster.put_ok("pool1", &[&file], &[]);
    assert_eq!(cluster.get_bytes("pool1", &id[0]), sample_bytes(10_000, 5));
    let after = memory(pid);
    assert!(
        after.rss_kib.saturating_sub(before.rss_kib) < MAX_GROWTH_KIB,
        "still {} KiB more resident after the flood: {before:?} -> {after:?}",
        after.rss_kib.saturating_sub(before.rss_kib)
    );

    // The refusals were logged at a bounded rate (per peer and reason once a minute; per
    // endpoint a burst of 10, then one a second), not once each; the next warning, about
    // another peer, says how many were left out.
    let logged = refusal_lines(&cluster.log("pool1")) - log_before;
    let most = 2 * (10 + flood_secs as usize + 2);
    assert!(logged <= most, "{logged} refusal warnings for {} hostile connections (at most {most})", 2 * HOSTILE);
    wait_until("a warning that counts the suppressed refusals", RECOVERY, || {
        let mut late = connect_from_another_address(spec.admin)?;
        let _ = late.write_all(&[0xFF; 8]);
        drop(late);
        cluster.log("pool1").contains("similar warnings suppressed before this one").then_some(())
    });
    assert!(cluster.is_running("pool1"));
}

/// Runs `lines` one after the other on one authenticated admin connection to `addr`, and
/// returns each one's error (`None`: it succeeded) and output. Any broken connection panics.
fn run_on_one_connection(cluster: &Cluster, addr: SocketAddr, lines: &[String]) -> Vec<(Option<String>, String)> {
    use tidepool_p2p::auth::Service;
    use tidepool_p2p::conn::Connection;
    use tidepool_p2p::message::{AdminReply, AdminRequest};
    use tidepool_p2p::tls::{Credentials, Role, TlsFiles};
    let files = TlsFiles::in_dir(cluster.dir(), Role::Admin, "admin");
    let key = Credentials::load(&files).expect("the cluster's admin credentials");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    rt.block_on(async {
        let mut conn = Connection::open(addr, &key, "hostile-test", Service::Admin).await.expect("log in");
        let mut results = Vec::new();
        for line in lines {
            conn.send(&AdminRequest::Run { line: line.clone() }).await.expect("send a line");
            let mut output = String::new();
            loop {
                match conn.recv::<AdminReply>().await {
                    Ok(AdminReply::Output(text)) => output.push_str(&text),
                    Ok(AdminReply::Finished { error }) => {
                        results.push((error.map(|e| e.render()), output));
                        break;
                    }
                    Ok(other) => panic!("unexpected reply {other:?}"),
                    Err(e) => panic!("the connection broke after a line of {} bytes: {e}", line.len()),
                }
            }
        }
        results
    })
}

/// Admin lines far longer than any command: each is refused with a short message, costs no
/// noticeable time, and the connection carries the next command.
#[test]
fn over_long_admin_lines_get_short_errors_on_a_connection_that_keeps_working() {
    use tidepool_p2p::message::{MAX_ADMIN_LINE, MAX_ERROR_MESSAGE};
    let mut cluster = Cluster::new(&[("pool1", &["disk"])]);
    cluster.start("pool1");
    let admin = cluster.spec("pool1").admin;
    let mega = "x".repeat(1_000_000);
    let lines = vec![
        // Over the cap: refused before parsing.
        format!("rep ls {mega}"),
        // Under the cap, but an unknown command, an unknown option and bad values, each long.
        "y".repeat(MAX_ADMIN_LINE - 1),
        format!("rep ls -{}", "z".repeat(60_000)),
        format!("rep ls {}", "A".repeat(60_000)),
        format!("migration move -storage={} pool2", "s".repeat(60_000)),
        format!("rep ls -storage={}", "s".repeat(60_000)),
        "info".to_string(),
    ];
    let started = Instant::now();
    let results = run_on_one_connection(&cluster, admin, &lines);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "six refusals took {took:?}");
    let (errors, last) = results.split_at(results.len() - 1);
    for ((error, output), line) in errors.iter().zip(&lines) {
        let error = error.as_deref().unwrap_or_else(|| panic!("a line of {} bytes was taken", line.len()));
        assert_eq!(output, "", "a refused line prints nothing");
        assert!(
            error.len() < 1000,
            "an error of {} bytes for a line of {} bytes:\n{}",
            error.len(),
            line.len(),
            &error[..2000.min(error.len())]
        );
        assert!(error.len() < MAX_ERROR_MESSAGE);
    }
    let first = errors[0].0.as_deref().unwrap();
    assert!(
        first.starts_with(&format!("command line too long: 1000007 bytes, at most {MAX_ADMIN_LINE} (rc=4)")),
        "{first}"
    );
    assert!(errors[1].0.as_deref().unwrap().contains("unknown command 'yyy"), "{errors:?}");
    assert!(errors[4].0.as_deref().unwrap().contains("storage class too long: 60000 bytes, at most 256"));
    assert!(errors[5].0.as_deref().unwrap().contains("storage class too long: 60000 bytes, at most 256"));
    assert_eq!(last[0].0, None, "info runs on the same connection");
    assert_eq!(info_field(&last[0].1, "Pool name"), Some("pool1"));
    assert!(cluster.migration_ls("pool1").is_empty(), "no job was made");

    // The shell refuses an over-long line itself and goes on with the next one.
    let out = cluster.admin(&format!("cd pool1\nrep ls {mega}\ninfo\n"));
    out.assert_code(1, "a script with an over-long line");
    assert!(
        out.stderr.starts_with("command line too long: 1000007 bytes"),
        "{}",
        &out.stderr[..200.min(out.stderr.len())]
    );
    assert_eq!(info_field(&out.stdout, "Pool name"), Some("pool1"), "the next line ran");
}

/// A storage class beyond the limit is refused at upload, and nothing is stored.
#[test]
fn an_over_long_storage_class_is_refused_at_upload() {
    let mut cluster = Cluster::new(&[("pool1", &["disk"])]);
    cluster.start("pool1");
    let file = cluster.write_file("f.dat", &sample_bytes(1000, 3));
    let long = "s".repeat(60_000);
    let out = cluster.put("pool1", &[&file], &["--storage", &long]);
    out.assert_code(1, "put with a 60,000-byte storage class");
    assert!(
        out.stderr.contains("storage class too long: 60000 bytes, at most 256"),
        "{}",
        &out.stderr[..300.min(out.stderr.len())]
    );
    assert!(out.stderr.len() < 1000, "the error repeats only a little of the class");
    assert_eq!(cluster.rep_ls("pool1"), vec![], "nothing stored");
    let ok = cluster.put_ok("pool1", &[&file], &["--storage", &"s".repeat(256)]);
    assert_eq!(cluster.rep_ls("pool1").len(), 1, "{ok:?}");
}
