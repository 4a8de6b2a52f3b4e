//! `tidepool-admin`: reads the cluster file and the key, then hands over to the shell.
//!
//! Exit status: 0 when every command succeeded, 1 when a scripted command failed, 2 when the
//! shell could not start (bad arguments, unreadable or invalid files).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::Parser;
use tidepool_admin::ShellOptions;
use tidepool_admin::args::Args;
use tidepool_p2p::auth::ClusterKey;
use tidepool_p2p::cluster::ClusterFile;

fn main() -> ExitCode {
    let args = Args::parse();
    match options(args).map(tidepool_admin::run) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => fail(&anyhow!(e)),
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("tidepool-admin: {e:#}");
    ExitCode::from(2)
}

fn options(args: Args) -> anyhow::Result<ShellOptions> {
    let (cluster, key_path) = match &args.cluster {
        Some(file) => (read_cluster(file)?, args.key.unwrap_or_else(|| default_key_path(file))),
        None => {
            let key = args.key.context("--key is needed with --etcd (there is no cluster file to find it next to)")?;
            (read_etcd(&args.etcd, &args.etcd_prefix)?, key)
        }
    };
    let key = read_key(&key_path)?;
    let history = args.history.or_else(default_history);
    Ok(ShellOptions { cluster, key, commands: args.execute, history, banner: None, start_in: args.pool })
}

fn read_cluster(path: &Path) -> anyhow::Result<ClusterFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the cluster file {}", path.display()))?;
    ClusterFile::parse(&text).map_err(|e| anyhow!("{} is not a valid cluster file: {e}", path.display()))
}

/// The pools as etcd lists them (docs/operator-guide.md, "Membership through etcd").
fn read_etcd(endpoints: &[String], prefix: &str) -> anyhow::Result<ClusterFile> {
    let mut settings = tidepool_etcd::EtcdSettings::new(endpoints.to_vec());
    settings.prefix = prefix.to_string();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let snap = runtime.block_on(async {
        let etcd = tidepool_etcd::Etcd::connect(&settings).await?;
        etcd.load().await
    })?;
    Ok(snap.cluster)
}

fn read_key(path: &Path) -> anyhow::Result<ClusterKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the cluster key file {} (--key names another)", path.display()))?;
    ClusterKey::parse(&text).map_err(|e| anyhow!("{} is not a valid cluster key file: {e}", path.display()))
}

fn default_key_path(cluster: &Path) -> PathBuf {
    cluster.parent().unwrap_or(Path::new("")).join("cluster.key")
}

fn default_history() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".tidepool_admin_history"))
}
