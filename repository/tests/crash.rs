//! Crash test: a child process writes and commits replicas to a sled repository and prints an
//! acknowledgement after each commit returns; the parent kills it with SIGKILL at random
//! points, reopens the repository and checks that every acknowledged replica is present,
//! committed and intact, and that no partial replica is visible. Rounds continue on the same
//! directory, so recovery also runs over earlier recoveries.
//!
//! The child is this same test binary, re-run with `CRASH_CHILD_DIR` set (see `crash_writer`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use tidepool_p2p::PnfsId;
use tidepool_p2p::model::{ChecksumWriter, FileAttributes, ReplicaState, StickyRecord};
use tidepool_p2p::random::random_bytes;
use tidepool_repository::{Repository, SledStore};

const CHILD_ENV: &str = "CRASH_CHILD_DIR";

/// Deterministic content for a replica, so the parent can check it from the id alone.
fn content(id: &PnfsId, size: usize) -> Vec<u8> {
    let mut x =
        id.as_bytes().iter().fold(0x9E37_79B9_7F4A_7C15u64, |a, b| (a ^ *b as u64).wrapping_mul(0x100_0000_01B3));
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn attrs(pnfsid: PnfsId, size: u64) -> FileAttributes {
    FileAttributes {
        pnfsid,
        size,
        checksum: None,
        storage_class: Some("crash:test".into()),
        cache_class: None,
        access_latency: None,
        retention_policy: None,
        hsm: None,
        creation_time: now(),
        access_time: now(),
    }
}

/// The child's work: four threads write replicas for ever (so commits share group-commit
/// batches), acknowledging each committed one on stdout.
fn write_forever(dir: &Path, seed: u64) -> ! {
    let (repo, _) = Repository::open(Arc::new(SledStore::open(dir).unwrap()), 1 << 40, now()).unwrap();
    for t in 0..4u64 {
        let repo = repo.clone();
        std::thread::spawn(move || write_loop(&repo, seed.wrapping_add(t.wrapping_mul(0x9E37_79B9))));
    }
    loop {
        std::thread::park();
    }
}

fn write_loop(repo: &Arc<Repository>, seed: u64) {
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    loop {
        let pnfsid = PnfsId::from_random(random_bytes().unwrap());
        // Mostly small files, sometimes up to 2 MiB, written in pieces.
        let size = if next() % 8 == 0 { next() % (2 << 20) } else { next() % 8192 } as usize;
        let data = content(&pnfsid, size);
        let mut incoming = repo.create(attrs(pnfsid, size as u64), ReplicaState::FromClient, now()).unwrap();
        for piece in data.chunks(64 * 1024) {
            incoming.write(piece).unwrap();
        }
        let state = if next() % 2 == 0 { ReplicaState::Cached } else { ReplicaState::Precious };
        let sticky = if next() % 3 == 0 { vec![StickyRecord::new("PinManager-7", -1)] } else { vec![] };
        incoming.commit(state, sticky, None, now()).unwrap();
        let mut out = std::io::stdout().lock();
        writeln!(out, "ACK {pnfsid} {size} {state}").unwrap();
        out.flush().unwrap();
    }
}

/// Not a test of its own: the body of the child process when `CRASH_CHILD_DIR` is set.
#[test]
fn crash_writer() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let seed = std::env::var("CRASH_CHILD_SEED").unwrap().parse().unwrap();
        write_forever(Path::new(&dir), seed);
    }
}

#[test]
fn acknowledged_replicas_survive_sigkill() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from_le_bytes(random_bytes().unwrap()));
    println!("crash test seed: {seed} (set CRASH_SEED to repeat)");
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashMap<PnfsId, (usize, ReplicaState)> = HashMap::new();
    let mut rng = seed | 1;
    for round in 0..8 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill_after = 1 + (rng % 40) as usize;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_writer", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("CRASH_CHILD_SEED", (seed ^ round).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        while seen < kill_after {
            let Some(Ok(line)) = lines.next() else {
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                panic!("round {round}: child stopped early (seed {seed}): {err}");
            };
            let Some(rest) = line.strip_prefix("ACK ") else { continue };
            let mut parts = rest.split(' ');
            let id: PnfsId = parts.next().unwrap().parse().unwrap();
            let size: usize = parts.next().unwrap().parse().unwrap();
            let state = parts.next().unwrap().parse().unwrap();
            acked.insert(id, (size, state));
            seen += 1;
        }
        // The child is in the middle of its next replica (or between two): kill it there.
        child.kill().unwrap();
        child.wait().unwrap();
        // Acknowledgements already in the pipe were committed before the kill.
        for line in lines.map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("ACK ") {
                let mut parts = rest.split(' ');
                let id: PnfsId = parts.next().unwrap().parse().unwrap();
                acked.insert(id, (parts.next().unwrap().parse().unwrap(), parts.next().unwrap().parse().unwrap()));
            }
        }
        check(dir.path(), &acked, seed, round);
    }
}

fn check(dir: &Path, acked: &HashMap<PnfsId, (usize, ReplicaState)>, seed: u64, round: u64) {
    let (repo, recovery) = Repository::open(Arc::new(SledStore::open(dir).unwrap()), 1 << 40, now()).unwrap();
    let ctx = format!("round {round}, seed {seed}");
    assert_eq!(recovery.missing_data_count, 0, "{ctx}: {recovery:?}");
    assert_eq!(recovery.corrupt_count, 0, "{ctx}: {recovery:?}");
    for (id, (size, state)) in acked {
        let r = repo.get(id).unwrap().unwrap_or_else(|| panic!("{ctx}: acknowledged {id} is missing"));
        assert_eq!(r.state, *state, "{ctx}: {id}");
        assert_eq!(r.attrs.size, *size as u64, "{ctx}: {id}");
        let (_, mut data) = repo.open_data(id, now()).unwrap();
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes).unwrap();
        assert!(bytes == content(id, *size), "{ctx}: data of {id} differ");
        let mut sum = ChecksumWriter::new();
        sum.update(&bytes);
        assert_eq!(r.attrs.checksum, Some(sum.finish()), "{ctx}: checksum of {id}");
    }
    // Nothing visible is partial: everything is committed and intact, acknowledged or not (a
    // commit can finish just before the kill, before its acknowledgement is printed).
    assert!(repo.incoming().is_empty(), "{ctx}");
    let mut visible = 0;
    let mut all = Vec::new();
    repo.scan(&mut |r| {
        all.push(r);
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    for r in all {
        visible += 1;
        assert!(r.state.is_committed(), "{ctx}: {} is {}", r.pnfsid(), r.state);
        let (_, mut data) = repo.open_data(&r.pnfsid(), now()).unwrap();
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes).unwrap();
        assert!(
            bytes == content(&r.pnfsid(), r.attrs.size as usize),
            "{ctx}: unacknowledged {} is not intact",
            r.pnfsid()
        );
    }
    // Each round may leave up to four commits (one per writer thread) done but not yet
    // acknowledged when the kill came.
    let slack = 4 * (round as usize + 1);
    assert!(
        visible >= acked.len() && visible <= acked.len() + slack,
        "{ctx}: {visible} visible, {} acked",
        acked.len()
    );
}
