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

    // The refusals were logged at a bounded rate (a burst of 10, then one a second, per
    // endpoint), not once each; the next warning says how many were left out.
    let logged = refusal_lines(&cluster.log("pool1")) - log_before;
    let most = 2 * (10 + flood_secs as usize + 2);
    assert!(logged <= most, "{logged} refusal warnings for {} hostile connections (at most {most})", 2 * HOSTILE);
    wait_until("a warning that counts the suppressed refusals", RECOVERY, || {
        let mut late = TcpStream::connect(spec.admin).ok()?;
        let _ = late.write_all(&[0xFF; 8]);
        drop(late);
        cluster.log("pool1").contains("similar warnings suppressed before this one").then_some(())
    });
    assert!(cluster.is_running("pool1"));
}
