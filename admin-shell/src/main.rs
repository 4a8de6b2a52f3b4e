//! `tidepool-admin`: reads the cluster file and the credentials, then hands over to the shell.
//!
//! Exit status: 0 when every command succeeded, 1 when a scripted command failed, 2 when the
//! shell could not start (bad arguments, unreadable or invalid files).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use tidepool_admin::ShellOptions;
use tidepool_admin::args::Args;
use tidepool_p2p::cluster::ClusterFile;
use tidepool_p2p::tls::{Credentials, Role, TlsFiles};

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
    let cluster = match &args.cluster {
        Some(file) => read_cluster(file)?,
        None => read_etcd(&args.etcd, &args.etcd_prefix)?,
    };
    let credentials = read_credentials(&args)?;
    let history = args.history.or_else(default_history);
    Ok(ShellOptions { cluster, credentials, commands: args.execute, history, banner: None, start_in: args.pool })
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

/// `--cert`, `--cert-key` and `--trust`, or by default `admin.admin.crt`, `admin.admin.key`
/// and `ca.crt` next to the cluster file (`docs/security.md`). With `--etcd` there is no
/// cluster file to find them next to: `--cert` and `--trust` are needed.
fn read_credentials(args: &Args) -> anyhow::Result<Credentials> {
    let beside = match &args.cluster {
        Some(file) => file.parent().unwrap_or(Path::new("")).to_path_buf(),
        None => {
            if args.cert.is_none() || args.trust.is_empty() {
                bail!(
                    "--cert and --trust are needed with --etcd (there is no cluster file to find the credentials next to)"
                );
            }
            PathBuf::new()
        }
    };
    let mut files = TlsFiles::in_dir(&beside, Role::Admin, "admin");
    if let Some(cert) = &args.cert {
        files.cert = cert.clone();
        files.key = cert.with_extension("key");
    }
    if let Some(key) = &args.cert_key {
        files.key = key.clone();
    }
    if !args.trust.is_empty() {
        files.trust = args.trust.clone();
    }
    if let Some(warning) = tidepool_p2p::tls::key_mode_warning(&files.key) {
        eprintln!("tidepool-admin: warning: {warning}");
    }
    Credentials::load(&files).map_err(|e| anyhow!("credentials (--cert, --cert-key, --trust name others): {e}"))
}

fn default_history() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".tidepool_admin_history"))
}
