//! The `psu` commands, in the spirit of dCache's pool manager (docs/admin-commands.md,
//! "Membership"): the pool groups, pools and links of the membership, listed from the view in
//! force (`psu ls ...`), read again (`psu reload`), and, where the membership is etcd, changed
//! live (`psu create|remove pgroup`, `psu addto|removefrom pgroup`, `psu remove pool`,
//! `psu set link`). A change goes to etcd; every pool's view follows through its watch, this
//! pool's included.

use std::fmt::Write as _;
use std::sync::Arc;

use tidepool_p2p::membership::Backend;
use tidepool_p2p::{ErrorCode, PoolName};

use super::Command;
use super::output::{Gone, Output};
use super::spec::{Invocation, ParseError};
use crate::node::Node;

/// A parsed `psu` command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Psu {
    /// `psu reload`: read the membership again now.
    Reload,
    CreateGroup(String),
    RemoveGroup(String),
    AddTo {
        group: String,
        pool: PoolName,
    },
    RemoveFrom {
        group: String,
        pool: PoolName,
    },
    /// `psu remove pool <pool>`: a pool out of service leaves the membership.
    RemovePool(PoolName),
    /// `psu set link <link> <group>...`; no group removes the link.
    SetLink {
        link: String,
        groups: Vec<String>,
    },
    LsGroup,
    LsPool,
    LsLink,
}

/// A group or link name: 1 to 64 of letters, digits, `-`, `_`, `.`.
fn name(inv: &Invocation<'_>, i: usize, what: &str) -> Result<String, ParseError> {
    let t = inv.arg(i, what)?;
    let ok = !t.text.is_empty()
        && t.text.len() <= 64
        && t.text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(ParseError::invalid(
            t.offset,
            format!("{what} {:?}: 1 to 64 letters, digits, '-', '_' or '.'", t.text),
        ));
    }
    Ok(t.text.clone())
}

pub fn parse_create(inv: &Invocation<'_>) -> Result<Command, ParseError> {
    let g = name(inv, 0, "pool group")?;
    inv.at_most(1)?;
    Ok(Command::Psu(Psu::CreateGroup(g)))
}

pub fn parse_remove(inv: &Invocation<'_>) -> Result<Command, ParseError> {
    let g = name(inv, 0, "pool group")?;
    inv.at_most(1)?;
    Ok(Command::Psu(Psu::RemoveGroup(g)))
}

pub fn parse_addto(inv: &Invocation<'_>) -> Result<Command, ParseError> {
    let group = name(inv, 0, "pool group")?;
    let pool = inv.arg_as(1, "pool")?;
    inv.at_most(2)?;
    Ok(Command::Psu(Psu::AddTo { group, pool }))
}

pub fn parse_removefrom(inv: &Invocation<'_>) -> Result<Command, ParseError> {
    let group = name(inv, 0, "pool group")?;
    let pool = inv.arg_as(1, "pool")?;
    inv.at_most(2)?;
    Ok(Command::Psu(Psu::RemoveFrom { group, pool }))
}

pub fn parse_remove_pool(inv: &Invocation<'_>) -> Result<Command, ParseError> {
    let pool = inv.arg_as(0, "pool")?;
    inv.at_most(1)?;
    Ok(Command::Psu(Psu::RemovePool(pool)))
}

pub fn parse_set_link(inv: &Invocation<'_>) -> Result<Command, ParseError> {
    let link = name(inv, 0, "link")?;
    let groups = (1..inv.args.len()).map(|i| name(inv, i, "pool group")).collect::<Result<_, _>>()?;
    Ok(Command::Psu(Psu::SetLink { link, groups }))
}

/// The last line of a listing from a view whose source cannot be reached.
const STALE_LINE: &str = "(stale: etcd cannot be reached; this is the last view seen)\n";

/// Why a `psu` command failed.
#[derive(Debug, thiserror::Error)]
pub enum PsuError {
    /// A change asked of a membership that is the cluster file.
    #[error("the membership of this pool is the cluster file; psu changes need [membership] backend = \"etcd\"")]
    ReadOnly,
    /// The change does not fit what is there (no such group, a group still in use, ...).
    #[error("{0}")]
    Refused(String),
    /// etcd did not answer, or the cluster file could not be read again.
    #[error("{0}")]
    Unavailable(String),
    #[error("the client went away")]
    Gone,
}

impl PsuError {
    /// The stable code (`docs/errors.md`).
    pub fn code(&self) -> ErrorCode {
        match self {
            PsuError::ReadOnly => ErrorCode::MembershipReadOnly,
            PsuError::Refused(_) => ErrorCode::InvalidArgument,
            PsuError::Unavailable(_) => ErrorCode::MembershipUnavailable,
            PsuError::Gone => ErrorCode::Internal,
        }
    }
}

impl From<Gone> for PsuError {
    fn from(_: Gone) -> Self {
        PsuError::Gone
    }
}

impl From<tidepool_etcd::EtcdError> for PsuError {
    fn from(e: tidepool_etcd::EtcdError) -> Self {
        match e {
            tidepool_etcd::EtcdError::Refused(m) => PsuError::Refused(m),
            e => PsuError::Unavailable(e.to_string()),
        }
    }
}

/// Runs a `psu` command.
pub async fn execute(node: &Arc<Node>, cmd: Psu, out: &mut Output) -> Result<(), PsuError> {
    let pool = &node.pool;
    let membership = &pool.cluster;
    match cmd {
        Psu::Reload => {
            let lines = membership.reload().await.map_err(PsuError::Unavailable)?;
            if lines.is_empty() {
                out.write("membership unchanged\n").await?;
            }
            for l in lines {
                out.write(&format!("{l}\n")).await?;
            }
            Ok(())
        }
        Psu::LsGroup => {
            let view = membership.get();
            let mut groups: std::collections::BTreeMap<String, Vec<String>> =
                view.groups().into_iter().map(|g| (g, Vec::new())).collect();
            let mut stale = membership.is_stale();
            if let Some(etcd) = pool.etcd.get() {
                // Groups without pools live only in etcd: read there, or, etcd lost, those of
                // the view in force.
                let read = match stale {
                    true => None,
                    false => etcd.groups().await.map_err(|e| tracing::debug!("psu ls pgroup: {e}")).ok(),
                };
                stale |= read.is_none();
                for g in read.or_else(|| etcd.groups_in_force()).unwrap_or_default() {
                    groups.entry(g).or_default();
                }
            }
            for p in &view.pools {
                for g in &p.groups {
                    groups.entry(g.clone()).or_default().push(p.name.to_string());
                }
            }
            let mut text = String::new();
            for (g, pools) in groups {
                let _ = writeln!(text, "{g} : {}", pools.join(", "));
            }
            if stale {
                text.push_str(STALE_LINE);
            }
            out.write(&text).await?;
            Ok(())
        }
        Psu::LsPool => {
            let view = membership.get();
            let mut text = String::new();
            for p in &view.pools {
                let alive = match membership.backend() {
                    Backend::File => "",
                    Backend::Etcd if membership.is_alive(&p.name) => " alive",
                    Backend::Etcd => " not-alive",
                };
                let _ = writeln!(
                    text,
                    "{} p2p={} admin={} groups=[{}]{}",
                    p.name,
                    p.p2p,
                    p.admin,
                    p.groups.join(","),
                    alive
                );
            }
            if membership.is_stale() {
                text.push_str(STALE_LINE);
            }
            out.write(&text).await?;
            Ok(())
        }
        Psu::LsLink => {
            let mut text = String::new();
            for l in &membership.get().links {
                let _ = writeln!(text, "{} : {}", l.name, l.groups.join(", "));
            }
            out.write(&text).await?;
            Ok(())
        }
        change => {
            let Some(etcd) = pool.etcd.get() else {
                return Err(PsuError::ReadOnly);
            };
            let line = async {
                Ok::<_, tidepool_etcd::EtcdError>(match change {
                    Psu::CreateGroup(g) => match etcd.create_group(&g).await? {
                        true => format!("pool group {g} created"),
                        false => format!("pool group {g} exists already"),
                    },
                    Psu::RemoveGroup(g) => {
                        etcd.remove_group(&g).await?;
                        format!("pool group {g} removed")
                    }
                    Psu::AddTo { group, pool } => match etcd.add_to_group(&group, &pool).await? {
                        true => format!("pool {pool} added to pool group {group}"),
                        false => format!("pool {pool} is in pool group {group} already"),
                    },
                    Psu::RemoveFrom { group, pool } => match etcd.remove_from_group(&group, &pool).await? {
                        true => format!("pool {pool} removed from pool group {group}"),
                        false => format!("pool {pool} was not in pool group {group}"),
                    },
                    Psu::RemovePool(pool) => {
                        let groups = etcd.remove_pool(&pool).await?;
                        match groups.is_empty() {
                            true => format!("pool {pool} removed"),
                            false => format!("pool {pool} removed (it was in pool groups {})", groups.join(", ")),
                        }
                    }
                    Psu::SetLink { link, groups } if groups.is_empty() => {
                        etcd.set_link(&link, &groups).await?;
                        format!("link {link} removed")
                    }
                    Psu::SetLink { link, groups } => {
                        etcd.set_link(&link, &groups).await?;
                        format!("link {link} -> {}", groups.join(", "))
                    }
                    Psu::Reload | Psu::LsGroup | Psu::LsPool | Psu::LsLink => unreachable!("handled above"),
                })
            };
            let line = line.await?;
            tracing::info!("psu: {line}");
            out.write(&format!("{line}\n")).await?;
            Ok(())
        }
    }
}
