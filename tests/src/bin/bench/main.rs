//! The benchmark harness. Not a test: it measures and prints; results go to docs/benchmarks.md.
//!
//! ```text
//! cargo run --release -p tidepool-tests --bin bench -- repo [--records N] [--dir DIR]
//! cargo run --release -p tidepool-tests --bin bench -- p2p [--set large|small|both] [--concurrency N[,N..]]
//!     [--window W[,W..]] [--batch B[,B..]] [--runs R] [--cache cold|warm] [--dir DIR] [--keep]
//! cargo run --release -p tidepool-tests --bin bench -- migration [--parts move,rerun,init] [--set large|small|both]
//!     [--concurrency N] [--runs R] [--records N] [--cache cold|warm] [--dir DIR] [--keep]
//! cargo run --release -p tidepool-tests --bin bench -- scale [--pools N[,N..]] [--membership file|etcd[,..]]
//!     [--filled K] [--files F] [--size BYTES] [--drains D] [--idle-secs S] [--max-load-secs S] [--rest-secs S] [--dir DIR]
//! ```
//!
//! `repo`: opening, iterating and listing a repository of a million records; see [`repo`].
//!
//! `p2p`: pool-to-pool copies against `cp -r` + `sync`, `rsync -a` and an rsync daemon on
//! loopback, over the same files; see [`p2p`].
//!
//! `migration`: `migration move` vacating a pool against `rsync -a` over the same files, the
//! rerun of a finished copy job, and a job's initialisation on a pool of a million replicas;
//! see [`migration`].
//!
//! `scale`: up to 250 real daemons on loopback addresses in one pool group, with the cluster
//! file or etcd: memory, descriptors, connections, CPU and cost-refresh traffic at idle and
//! under a `rebalance pgroup` with drains; see [`scale`].
//!
//! One module per benchmark (`repo`, `p2p`, `migration`, `scale`), over shared parts: `dataset` (the
//! data sets, the page cache, checking a copy), `process` (starting, waiting for and stopping
//! daemons; admin connections), `system` (CPU, memory, I/O and disk figures from /proc),
//! `tools` (the `cp`/`rsync` comparisons) and `report` (a measurement and its figures).

use std::path::Path;

use anyhow::bail;

mod dataset;
mod migration;
mod p2p;
mod process;
mod repo;
mod report;
mod scale;
mod system;
mod tools;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("repo") => repo::repo(&args[1..]),
        Some("repo-measure") => repo::measure(Path::new(&args[1])),
        Some("p2p") => p2p::run(&args[1..]),
        Some("migration") => migration::run(&args[1..]),
        Some("scale") => scale::run(&args[1..]),
        _ => bail!(
            "usage: bench repo [--records N] [--dir DIR]\n       {}\n       {}\n       {}",
            p2p::USAGE,
            migration::USAGE,
            scale::USAGE
        ),
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
