//! `repo`: fills a sled repository with N records (default 1,000,000) and a data file each
//! (unless `--dir` already holds one, which is then reused), then, in a fresh process so peak
//! memory is its own, opens it (restart recovery included), iterates every record, and runs
//! `rep ls` (into a sink that counts bytes) and `rep ls -s`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use tidepool_p2p::PnfsId;
use tidepool_p2p::cluster::ClusterFile;
use tidepool_p2p::model::{AccessLatency, Checksum, FileAttributes, ReplicaState, RetentionPolicy, StickyRecord};
use tidepool_pool::admin::exec;
use tidepool_pool::admin::output::Output;
use tidepool_pool::node::Node;
use tidepool_pool::pool::Pool;
use tidepool_pool::transfer::Transfers;
use tidepool_repository::{Replica, ReplicaStore, Repository, SledStore, record};

use crate::system::{Who, peak_rss_mib, rss_mib};
use crate::{chrono_now, flag};

const CAPACITY: u64 = 1 << 50;
const DATA_BYTES: usize = 512;

pub(crate) fn repo(args: &[String]) -> anyhow::Result<()> {
    let records: u64 = flag(args, "--records").unwrap_or("1000000").parse()?;
    let temp;
    let dir = match flag(args, "--dir") {
        Some(d) => PathBuf::from(d),
        None => {
            temp = tempfile::Builder::new().prefix("tidepool-bench-").tempdir_in(".")?;
            temp.path().to_path_buf()
        }
    };
    if dir.join("meta").exists() {
        println!("reusing the repository in {} (delete it to fill anew)", dir.display());
    } else {
        let started = Instant::now();
        fill(&dir, records)?;
        println!("fill: {records} records and data files in {:.1} s", started.elapsed().as_secs_f64());
    }
    let status = Command::new(std::env::current_exe()?).arg("repo-measure").arg(&dir).status()?;
    if !status.success() {
        bail!("measurement failed");
    }
    Ok(())
}

/// Writes records straight through the store (one flush at the end), with a small data file
/// each, as a pool that had received them one by one would have.
pub(crate) fn fill(dir: &Path, n: u64) -> anyhow::Result<()> {
    let store = SledStore::open(dir)?;
    let classes = ["atlas:default", "atlas:raw", "cms:raw", "cms:user", "lhcb:dst"];
    let payload = vec![0x5Au8; DATA_BYTES];
    let mut sum = tidepool_p2p::model::ChecksumWriter::new();
    sum.update(&payload);
    let checksum: Checksum = sum.finish();
    let now = chrono_now();
    for i in 0..n {
        let mut raw = [0u8; 16];
        raw[8..].copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_be_bytes());
        raw[..8].copy_from_slice(&i.to_be_bytes());
        let pnfsid = PnfsId::from_random(raw);
        let replica = Replica {
            attrs: FileAttributes {
                pnfsid,
                size: DATA_BYTES as u64,
                checksum: Some(checksum),
                storage_class: Some(classes[(i % 5) as usize].to_string()),
                cache_class: None,
                access_latency: Some(AccessLatency::Online),
                retention_policy: Some(RetentionPolicy::Replica),
                hsm: None,
                creation_time: now,
                access_time: now - (i as i64 % 86_400_000),
            },
            state: if i % 4 == 0 { ReplicaState::Precious } else { ReplicaState::Cached },
            sticky: if i % 10 == 0 { vec![StickyRecord::new("PinManager-1", -1)] } else { vec![] },
        };
        store.put_record(&pnfsid, &record::encode(&replica))?;
        std::fs::write(dir.join("data").join(pnfsid.to_string()), &payload)?;
        if i % 100_000 == 99_999 {
            eprint!(".");
        }
    }
    eprintln!();
    store.flush()?;
    Ok(())
}

/// Runs `line` as the admin endpoint does (its output streamed through a small channel, in
/// bounded memory) and returns how many bytes it wrote, and its text if `keep`.
fn run_streamed(node: &Arc<Node>, line: &str, keep: bool) -> anyhow::Result<(u64, String)> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4);
        let reader = tokio::spawn(async move {
            let (mut bytes, mut text) = (0u64, String::new());
            while let Some(piece) = rx.recv().await {
                bytes += piece.len() as u64;
                if keep {
                    text.push_str(&piece);
                }
            }
            (bytes, text)
        });
        let mut out = Output::channel(tx);
        let ran = exec::run_line(node, line, &mut out).await;
        drop(out);
        ran.map_err(|e| anyhow::anyhow!(e.to_remote().render()))?;
        Ok(reader.await?)
    })
}

pub(crate) fn measure(dir: &Path) -> anyhow::Result<()> {
    let t = Instant::now();
    let store = SledStore::open(dir)?;
    println!("sled opened: {:.2} s, RSS {:.0} MiB", t.elapsed().as_secs_f64(), rss_mib(Who::Me));
    let (repo, recovery) = Repository::open(Arc::new(store), CAPACITY, chrono_now())?;
    println!("repository opened: RSS {:.0} MiB", rss_mib(Who::Me));
    let open_s = t.elapsed().as_secs_f64();
    println!(
        "open: {} records in {open_s:.2} s (recovery clean: {}), peak RSS {:.0} MiB",
        recovery.loaded,
        recovery.is_clean(),
        peak_rss_mib(Who::Me)
    );

    let t = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0u64;
    repo.scan(&mut |r| {
        n += 1;
        bytes += r.attrs.size;
        std::ops::ControlFlow::Continue(())
    })?;
    let iter_s = t.elapsed().as_secs_f64();
    println!("iterate: {n} records ({bytes} bytes) in {iter_s:.2} s, peak RSS {:.0} MiB", peak_rss_mib(Who::Me));

    let pool = Arc::new(Pool::new(
        "bench".parse()?,
        repo,
        recovery,
        ClusterFile { pools: vec![], links: vec![] },
        tidepool_p2p::tls::testing::pool("bench"),
        "PinManager".into(),
    )?);
    let node = Arc::new(Node::new(Arc::new(Transfers::new(pool, &Default::default()))));
    let t = Instant::now();
    let (written, _) = run_streamed(&node, "rep ls", false)?;
    let ls_s = t.elapsed().as_secs_f64();
    println!("rep ls: {written} bytes of output in {ls_s:.2} s, peak RSS {:.0} MiB", peak_rss_mib(Who::Me));

    let t = Instant::now();
    let (_, stats) = run_streamed(&node, "rep ls -s -sum", true)?;
    println!("rep ls -s -sum: {:.2} s, peak RSS {:.0} MiB", t.elapsed().as_secs_f64(), peak_rss_mib(Who::Me));
    std::io::stdout().flush().context("flush")?;
    print!("{stats}");
    Ok(())
}
