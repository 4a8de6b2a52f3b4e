//! The data sets the `p2p` and `migration` benchmarks copy (filled once into a source pool and
//! `plain/`, then reused), the page cache before each timed run, and the check of a copy.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use tidepool_p2p::PnfsId;
use tidepool_p2p::model::{
    AccessLatency, Checksum, ChecksumWriter, EpochMillis, FileAttributes, ReplicaState, RetentionPolicy,
};
use tidepool_p2p::tls::Credentials;
use tidepool_repository::{Replica, ReplicaStore, SledStore, record};

use crate::process::{Admin, Binaries, Proc, credentials_in, run_ok, start_pool_in};
use crate::report::human;
use crate::system::{disk_bytes, drop_page_cache};
use crate::{chrono_now, flag};

/// One data set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DataSet {
    pub(crate) name: &'static str,
    pub(crate) files: usize,
    pub(crate) size: usize,
    /// The default `pp set max active` of the target.
    pub(crate) concurrency: usize,
    /// The seed of the first file's content (`sample_bytes`); the others follow.
    seed: u64,
}

pub(crate) const LARGE: DataSet = DataSet { name: "large", files: 16, size: 256 << 20, concurrency: 4, seed: 1 << 40 };

pub(crate) const SMALL: DataSet =
    DataSet { name: "small", files: 20_000, size: 4 << 10, concurrency: 8, seed: 2 << 40 };

impl DataSet {
    pub(crate) fn bytes(&self) -> u64 {
        (self.files * self.size) as u64
    }

    pub(crate) fn describe(&self) -> String {
        format!("{} files of {}", self.files, human(self.size as u64))
    }

    /// What `filled` holds once the set is complete: a set left half-written is redone.
    fn marker(&self) -> String {
        format!("set={} files={} size={} seed={}\n", self.name, self.files, self.size, self.seed)
    }
}

pub(crate) use crate::system::CacheMode;

/// Refuses arguments other than `takes_value` (each followed by its value) and `--keep`.
pub(crate) fn check_args(args: &[String], takes_value: &[&str], usage: &str) -> anyhow::Result<()> {
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            a if takes_value.contains(&a) => i += 2,
            "--keep" => i += 1,
            other => bail!("unknown argument {other:?}\nusage: {usage}"),
        }
    }
    Ok(())
}

/// `--set large|small|both` (default both).
pub(crate) fn data_sets(args: &[String]) -> anyhow::Result<Vec<DataSet>> {
    Ok(match flag(args, "--set").unwrap_or("both") {
        "large" => vec![LARGE],
        "small" => vec![SMALL],
        "both" => vec![LARGE, SMALL],
        other => bail!("--set {other}: expected large, small or both"),
    })
}

/// `--cache cold|warm` (default cold).
pub(crate) fn cache_option(args: &[String]) -> anyhow::Result<CacheMode> {
    Ok(match flag(args, "--cache").unwrap_or("cold") {
        "cold" => CacheMode::Cold,
        "warm" => CacheMode::Warm,
        other => bail!("--cache {other}: expected cold or warm"),
    })
}

/// `cache`, or `Warm` (with a note) when `Cold` is asked for and the page cache cannot be
/// dropped here.
pub(crate) fn cache_mode(cache: CacheMode) -> CacheMode {
    if cache == CacheMode::Warm {
        return cache;
    }
    match drop_page_cache() {
        Ok(()) => CacheMode::Cold,
        Err(e) => {
            println!(
                "note: cannot drop the page cache ({e}); falling back to --cache warm: every source file is \
                 read once before each timed run, so every tool reads from memory"
            );
            CacheMode::Warm
        }
    }
}

/// Everything one data set's runs share.
pub(crate) struct Bench<'a> {
    pub(crate) set: DataSet,
    pub(crate) dir: PathBuf,
    pub(crate) bins: &'a Binaries,
    pub(crate) cache: CacheMode,
    pub(crate) key: Credentials,
    pub(crate) manifest: Vec<(PnfsId, Checksum)>,
    pub(crate) rt: tokio::runtime::Runtime,
}

impl Bench<'_> {
    /// Starts a pool daemon of this data set's cluster and returns it with an admin connection
    /// once it answers `info`.
    pub(crate) fn start_pool(&self, name: &str, admin: SocketAddr) -> anyhow::Result<(Proc, Admin)> {
        start_pool_in(&self.dir, self.bins, &self.rt, &self.key, name, admin)
    }
}

/// Fills the set (see [`prepare`]) and makes credentials for it unless there are some.
pub(crate) fn open_bench<'a>(
    set: DataSet,
    dir: &Path,
    bins: &'a Binaries,
    cache: CacheMode,
) -> anyhow::Result<Bench<'a>> {
    let manifest = prepare(set, dir)?;
    let key = credentials_in(dir, bins)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(Bench { set, dir: dir.to_path_buf(), bins, cache, key, manifest, rt })
}

/// Writes one cached replica of `size` bytes made from `seed` (its pnfsid too) straight into
/// a pool's data directory and `store`, before the pool starts; its pnfsid and checksum.
pub(crate) fn write_cached(
    store: &SledStore,
    pool_dir: &Path,
    seed: u64,
    size: usize,
    storage_class: &str,
    now: EpochMillis,
) -> anyhow::Result<(PnfsId, Checksum)> {
    let content = tidepool_tests::sample_bytes(size, seed);
    let mut sum = ChecksumWriter::new();
    sum.update(&content);
    let checksum = sum.finish();
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&seed.to_be_bytes());
    raw[8..].copy_from_slice(&seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    let pnfsid = PnfsId::from_random(raw);
    let replica = Replica {
        attrs: FileAttributes {
            pnfsid,
            size: size as u64,
            checksum: Some(checksum),
            storage_class: Some(storage_class.into()),
            cache_class: None,
            access_latency: Some(AccessLatency::Online),
            retention_policy: Some(RetentionPolicy::Replica),
            hsm: None,
            creation_time: now,
            access_time: now,
        },
        state: ReplicaState::Cached,
        sticky: vec![],
    };
    let data = pool_dir.join("data").join(pnfsid.to_string());
    fs::write(&data, &content).with_context(|| format!("write {}", data.display()))?;
    store.put_record(&pnfsid, &record::encode(&replica))?;
    Ok((pnfsid, checksum))
}

/// Fills the source pool and `plain/` unless `dir` already holds this very set; returns
/// every replica's pnfsid and checksum.
pub(crate) fn prepare(set: DataSet, dir: &Path) -> anyhow::Result<Vec<(PnfsId, Checksum)>> {
    let marker = dir.join("filled");
    if fs::read_to_string(&marker).is_ok_and(|m| m == set.marker()) {
        println!("reusing the data set in {}", dir.display());
        return read_manifest(&dir.join("manifest.txt"));
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("remove the incomplete {}", dir.display()))?;
    }
    fs::create_dir_all(dir.join("plain"))?;
    let started = Instant::now();
    let pool_dir = dir.join("pool1");
    let store = SledStore::open(&pool_dir)?;
    let now = chrono_now();
    let mut manifest = Vec::with_capacity(set.files);
    let mut text = String::new();
    for i in 0..set.files {
        let (pnfsid, checksum) = write_cached(&store, &pool_dir, set.seed + i as u64, set.size, "bench:p2p", now)?;
        let data = pool_dir.join("data").join(pnfsid.to_string());
        fs::hard_link(&data, dir.join("plain").join(format!("f{i:05}")))?;
        let _ = writeln!(text, "{pnfsid} {checksum}");
        manifest.push((pnfsid, checksum));
    }
    store.flush()?;
    drop(store);
    fs::write(dir.join("manifest.txt"), text)?;
    let status = Command::new("sync").status()?;
    if !status.success() {
        bail!("sync failed");
    }
    fs::write(&marker, set.marker())?;
    println!(
        "filled the source pool and plain/ (hard links to its data files) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(manifest)
}

fn read_manifest(path: &Path) -> anyhow::Result<Vec<(PnfsId, Checksum)>> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .map(|l| {
            let (id, sum) = l.split_once(' ').ok_or_else(|| anyhow!("bad manifest line {l:?}"))?;
            Ok((id.parse().map_err(|e| anyhow!("{e}"))?, sum.parse().map_err(anyhow::Error::msg)?))
        })
        .collect()
}

impl Bench<'_> {
    /// Makes the caches the same for every tool: everything written so far goes to disk,
    /// then the page cache is dropped (cold) or every source file is read (warm).
    pub(crate) fn settle(&self) -> anyhow::Result<()> {
        match self.cache {
            CacheMode::Cold => drop_page_cache().context("drop the page cache")?,
            CacheMode::Warm => {
                run_ok(&mut Command::new("sync"))?;
                let mut buf = vec![0u8; 1 << 20];
                for entry in fs::read_dir(self.dir.join("plain"))? {
                    let mut f = fs::File::open(entry?.path())?;
                    while f.read(&mut buf)? > 0 {}
                }
            }
        }
        Ok(())
    }

    pub(crate) fn plain(&self) -> PathBuf {
        self.dir.join("plain")
    }

    pub(crate) fn disk(&self) -> Option<(u64, u64)> {
        disk_bytes(&self.dir)
    }
}

/// Checks the stopped target pool: one CACHED record per source replica with the source's
/// size and checksum, and a data file whose content has that checksum.
pub(crate) fn verify_pool(dir: &Path, manifest: &[(PnfsId, Checksum)], size: u64) -> anyhow::Result<()> {
    let store = SledStore::open(dir)?;
    let mut records: HashMap<PnfsId, Result<Replica, String>> = HashMap::new();
    store.scan_records(&mut |k, v| {
        if let Ok(id) = PnfsId::from_bytes(k) {
            records.insert(id, record::decode(id, v));
        }
        std::ops::ControlFlow::Continue(())
    })?;
    drop(store);
    if records.len() != manifest.len() {
        bail!("the target holds {} records, the source {}", records.len(), manifest.len());
    }
    let mut buf = vec![0u8; 1 << 20];
    for (id, sum) in manifest {
        let r = match records.get(id) {
            Some(Ok(r)) => r,
            Some(Err(e)) => bail!("record of {id} in the target: {e}"),
            None => bail!("{id} is missing in the target"),
        };
        if r.state != ReplicaState::Cached || r.attrs.size != size || r.attrs.checksum != Some(*sum) {
            bail!(
                "{id} in the target: {} {} bytes {:?}, expected CACHED {size} {sum}",
                r.state.as_str(),
                r.attrs.size,
                r.attrs.checksum
            );
        }
        let mut f = fs::File::open(dir.join("data").join(id.to_string()))?;
        let mut got = ChecksumWriter::new();
        let mut len = 0;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got.update(&buf[..n]);
            len += n as u64;
        }
        if len != size || got.finish() != *sum {
            bail!(
                "the data file of {id} in the target has {len} bytes and {}, expected {size} and {sum}",
                got.finish()
            );
        }
    }
    Ok(())
}

/// Checks that a copy holds as many files and bytes as the set.
pub(crate) fn verify_tree(dir: &Path, set: DataSet) -> anyhow::Result<()> {
    let (mut files, mut bytes) = (0usize, 0u64);
    for entry in fs::read_dir(dir)? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            files += 1;
            bytes += meta.len();
        }
    }
    if files != set.files || bytes != set.bytes() {
        bail!("{} holds {files} files and {bytes} bytes, expected {} and {}", dir.display(), set.files, set.bytes());
    }
    Ok(())
}
