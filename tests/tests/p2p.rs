//! Pool-to-pool transfers between real `tidepool pool` daemons: the target pulls with `pp get
//! file`, and either end is killed with SIGKILL in the middle of the stream, or the source's
//! data port is pestered by bad clients while it streams. What must hold: an acknowledged copy
//! is durable, an interrupted one leaves nothing behind on the target and changes nothing on the
//! source, and the transfer can always be repeated.
//!
//! To interrupt a transfer at a known point without racing it, [`freeze_mid_transfer`] waits
//! until pool2 (the target) has written data for it, then stops pool2 with SIGSTOP
//! ([`Cluster::freeze`]): frozen, it can neither receive more nor commit, so what its
//! `incoming/` holds then is exactly what a kill leaves. If that is less than [`EARLY`] bytes of
//! the [`BIG`] file, pool1 (the source) cannot have sent the rest either: between them, the two
//! ends of a loopback connection buffer at most what Linux's `tcp_rmem` and `tcp_wmem` maxima
//! allow (32 + 4 MiB by default), far less than the 48 MiB left.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use tidepool_p2p::ErrorCode;
use tidepool_p2p::auth::HANDSHAKE_TIMEOUT;
use tidepool_p2p::model::ChecksumWriter;
use tidepool_tests::{
    Cluster, Output, PpState, RepLine, expect_closed, expect_hang_up, info_field, rc, sample_bytes, two_pools,
    wait_until,
};

const CACHED: &str = "<C----------L(0)[0]>";
const PRECIOUS: &str = "<-P---------L(0)[0]>";
/// The size of a file whose transfer is interrupted.
const BIG: usize = 64 << 20;
/// How much of [`BIG`] the target may have written when it is frozen (see the module's doc).
const EARLY: u64 = 16 << 20;
/// How long a transfer may take to start moving data, or to end after its source died.
const TRANSFER_WAIT: Duration = Duration::from_secs(20);
/// How long a test waits for a log line describing something it has already seen happen.
const LOG_WAIT: Duration = Duration::from_secs(10);

/// Puts `len` bytes (seeded with `seed`) into pool1; returns the pnfsid and the bytes.
fn put_into_pool1(cluster: &Cluster, len: usize, seed: u64, args: &[&str]) -> (String, Vec<u8>) {
    let bytes = sample_bytes(len, seed);
    let file = cluster.write_file(&format!("file-{seed}.dat"), &bytes);
    let id = cluster.put_ok("pool1", &[&file], args).remove(0);
    // The local copy is not needed any more; keep the temporary directory small.
    std::fs::remove_file(&file).expect("remove the uploaded file");
    (id, bytes)
}

fn adler32(bytes: &[u8]) -> String {
    let mut w = ChecksumWriter::new();
    w.update(bytes);
    w.finish().to_string()
}

fn line(pnfsid: &str, flags: &str, size: u64, class: &str) -> RepLine {
    RepLine { pnfsid: pnfsid.into(), flags: flags.into(), size, storage_class: class.into() }
}

/// `pp get file <pnfsid> <source>` on `target`, without -wait: the transfer is queued and the
/// command returns at once. Returns the transfer's id.
#[track_caller]
fn start_pull(cluster: &Cluster, target: &str, pnfsid: &str, source: &str) -> u64 {
    let out = cluster.admin(&format!("cd {target}\npp get file {pnfsid} {source}\n"));
    out.assert_success("pp get file");
    let transfer = out
        .stdout
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(&format!("] {pnfsid} from {source}: queued\n")))
        .and_then(|id| id.parse().ok());
    transfer.unwrap_or_else(|| panic!("not `[<id>] {pnfsid} from {source}: queued`:\n{out}"))
}

/// `pp get file -wait <pnfsid> <source>` on `target`.
fn pull_and_wait(cluster: &Cluster, target: &str, pnfsid: &str, source: &str) -> Output {
    cluster.admin(&format!("cd {target}\npp get file -wait {pnfsid} {source}\n"))
}

/// Checks that `pp get file -wait` ended with `done` for all of `bytes`, with their checksum.
#[track_caller]
fn assert_done(out: &Output, pnfsid: &str, source: &str, bytes: &[u8]) {
    out.assert_success("pp get file -wait");
    let last = out.stdout.lines().last().unwrap_or_default();
    let want = format!("] {pnfsid} from {source}: done, {} bytes, {}, ", bytes.len(), adler32(bytes));
    assert!(last.starts_with('[') && last.contains(&want) && last.ends_with(" s"), "expected `{want}`:\n{out}");
    // Progress lines may come before it (every 10 s), nothing else.
    for progress in out.stdout.lines().rev().skip(1) {
        assert!(progress.contains(&format!("] {pnfsid} from {source}: ")) && progress.ends_with(" bytes"), "{out}");
    }
}

/// Pulls `pnfsid` from pool1 to pool2 and freezes pool2 once it has written some data, but
/// less than [`EARLY`] bytes; returns the transfer's id. Should the first attempt be caught
/// late (the test was not scheduled for a while), it is cancelled or its copy removed, and the
/// pull tried once more.
#[track_caller]
fn freeze_mid_transfer(cluster: &mut Cluster, pnfsid: &str) -> u64 {
    for attempt in 1..=2 {
        let transfer = start_pull(cluster, "pool2", pnfsid, "pool1");
        wait_until(&format!("data of {pnfsid} arriving in pool2's incoming/"), TRANSFER_WAIT, || {
            cluster.incoming_len("pool2", pnfsid).filter(|&n| n > 0)
        });
        cluster.freeze("pool2");
        let written = cluster.incoming_len("pool2", pnfsid);
        match written {
            Some(n) if n < EARLY => return transfer,
            _ if attempt == 1 => {}
            _ => panic!("pool2 was frozen too late twice: {written:?} of {pnfsid} in incoming/"),
        }
        eprintln!("note: pool2 was frozen late ({written:?} bytes written); cancelling and trying again");
        cluster.thaw("pool2");
        // The transfer may end between these two commands; then there is nothing to cancel.
        let _ = cluster.admin(&format!("cd pool2\npp remove {transfer}\n"));
        wait_until("the late transfer ending", TRANSFER_WAIT, || {
            let listing = cluster.pp_ls("pool2");
            (listing.counts.active + listing.counts.queued == 0).then_some(())
        });
        if !cluster.rep_ls("pool2").is_empty() {
            cluster.admin(&format!("cd pool2\nrep rm {pnfsid}\n")).assert_success("rep rm");
        }
        assert_nothing_received(cluster, "pool2");
    }
    unreachable!("the loop returns or panics")
}

/// The target holds nothing of an interrupted transfer: no replica, none being received, no
/// partial data.
#[track_caller]
fn assert_nothing_received(cluster: &Cluster, target: &str) {
    assert_eq!(cluster.rep_ls(target), vec![], "no replica in {target}");
    let receiving = cluster.admin(&format!("cd {target}\nrep ls -l=l\n"));
    receiving.assert_success("rep ls -l=l");
    assert_eq!(receiving.stdout, "", "no replica is left in a receiving state in {target}");
    assert_eq!(cluster.incoming(target), vec![], "no partial data in {target}'s incoming/");
    let listing = cluster.pp_ls(target);
    assert_eq!((listing.counts.active, listing.counts.queued), (0, 0), "no transfer under way: {listing:?}");
}

/// Waits until the source has no outgoing stream any more (it noticed its peer is gone).
#[track_caller]
fn wait_for_no_outgoing(cluster: &Cluster, source: &str) {
    wait_until(&format!("{source} ending its outgoing stream"), TRANSFER_WAIT, || {
        (cluster.pp_ls(source).counts.outgoing == 0).then_some(())
    });
}

#[test]
fn kill_9_of_the_target_mid_transfer_leaves_no_partial_replica() {
    let mut cluster = two_pools();
    let (id, bytes) = put_into_pool1(&cluster, BIG, 1, &["--storage", "test:disk"]);
    let source_before = cluster.rep_ls("pool1");
    assert_eq!(source_before, vec![line(&id, CACHED, BIG as u64, "test:disk")]);

    // Frozen, pool2 can neither finish nor commit: what is in incoming/ now is what kill -9 leaves.
    freeze_mid_transfer(&mut cluster, &id);
    let status = cluster.kill9("pool2");
    assert_eq!(status.code(), None, "killed by a signal: {status}");

    // The source notices the broken stream and lets it go; its replica is untouched.
    wait_for_no_outgoing(&cluster, "pool1");
    assert_eq!(cluster.rep_ls("pool1"), source_before);
    assert!(cluster.get_bytes("pool1", &id) == bytes, "pool1 still serves the same bytes");

    cluster.start("pool2");
    assert_nothing_received(&cluster, "pool2");
    let info = cluster.info("pool2");
    assert!(
        info.contains(&format!(
            "--- recovery at start ---\nremoved 1 partial replica(s) left by interrupted transfers: {id}\n"
        )),
        "recovery reports the partial data it removed:\n{info}"
    );
    assert_eq!(info_field(&info, "Used"), Some("0 bytes"), "{info}");
    cluster.wait_for_log_line(
        "pool2",
        &["WARN", "removing partial data left by an interrupted transfer", &id],
        LOG_WAIT,
    );

    // The transfer can be repeated, and then it is complete.
    let out = pull_and_wait(&cluster, "pool2", &id, "pool1");
    assert_done(&out, &id, "pool1", &bytes);
    assert_eq!(cluster.rep_ls("pool2"), vec![line(&id, CACHED, BIG as u64, "test:disk")]);
    assert!(cluster.get_bytes("pool2", &id) == bytes, "pool2 serves the same bytes as pool1");
    assert_eq!(cluster.incoming("pool2"), vec![]);
    assert_eq!(cluster.rep_ls("pool1"), source_before);
}

#[test]
fn kill_9_of_the_source_mid_stream_fails_the_transfer_cleanly() {
    let mut cluster = two_pools();
    let (id, bytes) = put_into_pool1(&cluster, BIG, 2, &[]);
    let source_before = cluster.rep_ls("pool1");

    // pool1 dies while pool2 is frozen early in the file: pool2 cannot have the rest.
    let transfer = freeze_mid_transfer(&mut cluster, &id);
    let killed = Instant::now();
    cluster.kill9("pool1");
    cluster.thaw("pool2");

    // The connection breaks, a new one finds the source gone, and the transfer fails: long
    // before the 120 s without progress after which it would fail anyway.
    let failed = wait_until("the transfer failing after its source died", TRANSFER_WAIT, || {
        let listing = cluster.pp_ls("pool2");
        listing.transfers.iter().find_map(|t| match &t.state {
            PpState::Failed { message } if t.id == transfer => Some(message.clone()),
            _ => None,
        })
    });
    let took = killed.elapsed();
    assert!(failed.contains("source pool pool1 is offline") && failed.ends_with("(rc=20004)"), "{failed}");
    assert!(took < TRANSFER_WAIT, "failed after {took:?}");
    cluster.wait_for_log_line("pool2", &["WARN", "connection to the source broke", &id], LOG_WAIT);
    cluster.wait_for_log_line("pool2", &["WARN", "transfer failed", "offline", &id], LOG_WAIT);
    assert_nothing_received(&cluster, "pool2");

    // A new attempt while the source is down fails at once, with exit status 1.
    let out = pull_and_wait(&cluster, "pool2", &id, "pool1");
    out.assert_code(1, "pp get file -wait from a pool that is down");
    assert!(out.stderr.contains(&rc(ErrorCode::Offline)), "{out}");
    assert_nothing_received(&cluster, "pool2");

    // The source comes back with its replica (it was only read) and no recovery to do.
    cluster.start("pool1");
    assert_eq!(cluster.rep_ls("pool1"), source_before);
    let info = cluster.info("pool1");
    assert!(info.contains("--- recovery at start ---\nclean: nothing to report (1 replicas loaded)\n"), "{info}");
    let out = pull_and_wait(&cluster, "pool2", &id, "pool1");
    assert_done(&out, &id, "pool1", &bytes);
    assert_eq!(cluster.rep_ls("pool2"), vec![line(&id, CACHED, BIG as u64, "<unknown>")]);
    assert!(cluster.get_bytes("pool2", &id) == bytes, "pool2 serves the same bytes as pool1");
    // `pp ls -l` remembers the two failures, then the success.
    let listing = cluster.pp_ls("pool2");
    let states: Vec<&PpState> = listing.of(&id).iter().map(|t| &t.state).collect();
    assert!(
        matches!(
            states.as_slice(),
            [.., PpState::Failed { .. }, PpState::Failed { .. }, PpState::Done { bytes: n }] if *n == BIG as u64
        ),
        "{listing:?}"
    );

    // pool2 keeps the connection of that transfer for the next one. When pool1 dies between
    // two transfers, the kept connection is dead: the next pull sees so before it asks
    // (p2p::peer::Dialer looks at a kept connection first), replaces it and succeeds.
    let (small, small_bytes) = put_into_pool1(&cluster, 100_000, 22, &[]);
    cluster.kill9("pool1");
    cluster.start("pool1");
    let opened = cluster.pp_ls("pool2").counts.connections_opened;
    let out = pull_and_wait(&cluster, "pool2", &small, "pool1");
    assert_done(&out, &small, "pool1", &small_bytes);
    assert!(cluster.get_bytes("pool2", &small) == small_bytes, "pool2 serves the same bytes as pool1");
    let counts = cluster.pp_ls("pool2").counts;
    assert_eq!(counts.connections_opened, opened + 1, "one new connection replaced the dead one: {counts:?}");
}

#[test]
fn bad_clients_on_the_data_port_do_not_disturb_a_running_transfer() {
    let mut cluster = two_pools();
    let (id, bytes) = put_into_pool1(&cluster, BIG, 3, &[]);
    let data_port = cluster.spec("pool1").p2p;
    let other_client = cluster.foreign_cert("client", "client");
    let intruder = cluster.write_file("intruder.dat", &sample_bytes(4096, 33));

    // While pool2 is frozen it reads nothing: pool1's stream to it stays open, mid-file, for as
    // long as the bad clients take.
    let transfer = freeze_mid_transfer(&mut cluster, &id);

    // (b) A client that connects and says nothing, held open while the others come.
    let mut silent = TcpStream::connect(data_port).expect("connect a silent client");
    let silent_since = Instant::now();
    // (a) A certificate from another CA.
    let out = cluster.put_with_cert(Some(&other_client), "pool1", &[&intruder], &[]);
    out.assert_code(1, "put with a certificate from another CA");
    assert!(out.stderr.contains(&rc(ErrorCode::AuthFailed)), "{out}");
    assert_eq!(out.stdout, "", "{out}");
    // (c) Garbage: text, and a message frame of random bytes.
    let mut frame = 33u32.to_be_bytes().to_vec();
    frame.push(0);
    frame.extend_from_slice(&sample_bytes(32, 34));
    let deadline = Duration::from_secs(10);
    expect_hang_up(data_port, b"GET / HTTP/1.1\r\nHost: pool1\r\n\r\n", deadline, "an HTTP request");
    expect_hang_up(data_port, &frame, deadline, "a frame of random bytes");
    // (d) An oversized length prefix.
    let mut huge = u32::MAX.to_be_bytes().to_vec();
    huge.extend_from_slice(&[0u8; 64]);
    expect_hang_up(data_port, &huge, deadline, "an oversized length prefix");

    // The stream to pool2 is still under way, and pool1 answers its shell.
    let counts = cluster.pp_ls("pool1").counts;
    assert_eq!((counts.outgoing, counts.outgoing_queued), (1, 0), "the transfer is still running: {counts:?}");
    assert_eq!(cluster.rep_ls("pool1"), vec![line(&id, CACHED, BIG as u64, "<unknown>")], "nothing was stored");
    cluster.thaw("pool2");

    // The silent client is dropped when its time for the handshake is up.
    expect_closed(&mut silent, &[], HANDSHAKE_TIMEOUT * 3, "a client that never finishes the handshake");
    let silent_for = silent_since.elapsed();
    // The pool's timer starts when it accepts, which may be a moment before `connect` returns
    // here, and the runtime's timers have millisecond granularity: allow a little slack.
    let slack = Duration::from_millis(100);
    assert!(silent_for + slack >= HANDSHAKE_TIMEOUT, "dropped only for its silence, after {silent_for:?}");
    let timed_out = format!("timed out after {HANDSHAKE_TIMEOUT:?}");
    for needles in [
        &["WARN", "refused connection", "Data", "authentication failed"][..],
        &["WARN", "refused connection", "Data", &timed_out],
        // Garbage fails TLS before any frame is read (frame limits past TLS: `p2p/src/auth.rs`).
        &["WARN", "refused connection", "Data", "corrupt message"],
    ] {
        cluster.wait_for_log_line("pool1", needles, LOG_WAIT);
    }

    // The transfer completes with the source's bytes.
    let done = wait_until("the transfer ending", TRANSFER_WAIT, || {
        let listing = cluster.pp_ls("pool2");
        let line = listing.transfers.iter().find(|t| t.id == transfer);
        line.map(|t| t.state.clone()).filter(|s| !matches!(s, PpState::Active { .. }))
    });
    assert_eq!(done, PpState::Done { bytes: BIG as u64 });
    assert_eq!(cluster.rep_ls("pool2"), vec![line(&id, CACHED, BIG as u64, "<unknown>")]);
    assert!(cluster.get_bytes("pool2", &id) == bytes, "pool2 serves the same bytes as pool1");
    assert_eq!(cluster.rep_ls("pool1"), vec![line(&id, CACHED, BIG as u64, "<unknown>")]);
}

#[test]
fn an_acknowledged_transfer_survives_kill_9_of_the_target() {
    let mut cluster = two_pools();
    let len = (16 << 20) + 4321;
    let (id, bytes) = put_into_pool1(&cluster, len, 4, &["--storage", "test:tape", "--precious"]);

    let out = pull_and_wait(&cluster, "pool2", &id, "pool1");
    assert_done(&out, &id, "pool1", &bytes);
    let status = cluster.kill9("pool2");
    assert_eq!(status.code(), None, "killed by a signal: {status}");
    cluster.start("pool2");

    // The copy is CACHED whatever the source's state; it keeps the storage class.
    assert_eq!(cluster.rep_ls("pool2"), vec![line(&id, CACHED, len as u64, "test:tape")]);
    assert!(cluster.get_bytes("pool2", &id) == bytes, "pool2 serves the same bytes after kill -9");
    let info = cluster.info("pool2");
    assert!(info.contains("--- recovery at start ---\nclean: nothing to report (1 replicas loaded)\n"), "{info}");
    assert_eq!(info_field(&info, "Used"), Some(format!("{len} bytes").as_str()), "{info}");
    assert_eq!(cluster.incoming("pool2"), vec![]);
    assert_eq!(cluster.rep_ls("pool1"), vec![line(&id, PRECIOUS, len as u64, "test:tape")]);
}
