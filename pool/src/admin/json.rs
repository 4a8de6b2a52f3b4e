//! The `-json` forms of the listing and status commands (`info`, `rep ls`, `pp ls`; `rebalance`
//! builds its own in `rebalance.rs`). Each is a typed value serialised with serde, taken
//! from the same sources as the text form, never from its text. The schemas are documented in
//! docs/json.md; a field is added there before it is added here, and none is renamed.
//!
//! Conventions: sizes are integer bytes, durations are named for their unit, states are the
//! words the text uses, absent values are `null`.

use std::io;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde::ser::{SerializeSeq, Serializer as _};
use tidepool_migration::report::JobSummary;
use tidepool_p2p::RemoteError;
use tidepool_p2p::model::{ReplicaState, SpaceInfo};

use super::RepLs;
use super::error::AdminError;
use super::output::{Gone, Output, SyncOutput};
use super::rep_ls;
use crate::node::Node;
use crate::pool::{Pool, now_ms};
use crate::repository::{Recovery, Replica};
use crate::transfer::Transfers;

/// Writes `value` as one pretty-printed JSON document and a newline.
pub async fn write_document(out: &mut Output, value: &impl Serialize) -> Result<(), AdminError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| AdminError::Json(e.to_string()))?;
    text.push('\n');
    Ok(out.write(&text).await?)
}

/// An error as the text shows it: `<message> (rc=<code>)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorJson {
    pub code: u32,
    pub message: String,
}

impl From<&RemoteError> for ErrorJson {
    fn from(e: &RemoteError) -> Self {
        ErrorJson { code: e.code, message: e.message.clone() }
    }
}

// ---- info ----

/// `info -json`.
#[derive(Debug, Serialize)]
pub struct InfoJson {
    pub pool: String,
    /// As the text's `Mode`: `enabled` or `disabled(fetch,store,...)`.
    pub mode: String,
    pub enabled: bool,
    /// The text's `Disabled with`; `null` while enabled.
    pub disabled: Option<Disabled>,
    /// The pool's groups in the cluster file; `null` if the cluster file does not list it.
    pub groups: Option<Vec<String>>,
    /// The text's `Membership` line.
    pub membership: MembershipJson,
    pub space: SpaceInfo,
    pub held: Held,
    pub replicas: Replicas,
    pub recovery: RecoveryJson,
    pub migration: MigrationJson,
    /// The `--- service ---` section; `null` for a pool that is not a started daemon.
    pub service: Option<ServiceJson>,
    /// `Log filter`, as the text shows it; `null` where the text has no such line.
    pub log_filter: Option<String>,
    /// `Certificate`: this pool's own certificate.
    pub certificate: CertificateJson,
}

/// `Certificate    : pool:pool1, valid until 2027-12-05 (365 days)`.
#[derive(Debug, Serialize)]
pub struct CertificateJson {
    /// `role:name`.
    pub identity: String,
    /// The end of validity, seconds since the epoch, and its day (`YYYY-MM-DD`, UTC).
    pub not_after: i64,
    pub valid_until: String,
    /// Whole days left (negative once expired), as the text.
    pub days_left: i64,
    /// The text's `-- EXPIRES SOON`: within 14 days, or expired.
    pub expires_soon: bool,
}

impl CertificateJson {
    pub fn of(cert: &tidepool_p2p::tls::CertInfo, now_secs: i64) -> CertificateJson {
        let left = cert.not_after - now_secs;
        CertificateJson {
            identity: cert.identity.to_string(),
            not_after: cert.not_after,
            valid_until: cert.expiry_date(),
            days_left: left.div_euclid(86_400),
            expires_soon: left < tidepool_p2p::tls::EXPIRY_WARNING.as_secs() as i64,
        }
    }
}

/// Where the pool's view of the other pools comes from, and whether it is stale.
#[derive(Debug, Serialize)]
pub struct MembershipJson {
    /// `file` or `etcd`.
    pub backend: String,
    /// etcd cannot be reached; the last view is used (always false for the file).
    pub stale: bool,
}

/// The daemon's version, start and resolved config (`--- service ---`).
#[derive(Debug, Serialize)]
pub struct ServiceJson {
    pub version: &'static str,
    /// `Started`: when the pool started serving, in ms since the epoch, and as an ISO 8601 UTC
    /// string (the text shows local time).
    pub started_at: i64,
    pub started: String,
    pub uptime_seconds: i64,
    /// `Start-up took`.
    pub startup_seconds: f64,
    pub data_dir: String,
    /// `Capacity`, in bytes.
    pub capacity: u64,
    pub admin_listener: String,
    pub data_listener: String,
    /// `Metrics`: the page's URL, or null when off.
    pub metrics_url: Option<String>,
}

/// `Disabled with  : [<code>] <message>`: the operator's `pool disable` code and message.
#[derive(Debug, Serialize)]
pub struct Disabled {
    pub code: i32,
    pub message: String,
}

/// Cached replicas held from eviction as copies of moves.
#[derive(Debug, Serialize)]
pub struct Held {
    pub replicas: usize,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Replicas {
    pub total: usize,
    /// The states with at least one replica, in the text's order.
    pub by_state: Vec<StateCount>,
}

#[derive(Debug, Serialize)]
pub struct StateCount {
    pub state: &'static str,
    pub count: usize,
}

/// What restart recovery found: the count of each kind of finding and the names shown (the
/// text's `(and N more)` is `count - shown.len()`).
#[derive(Debug, Serialize)]
pub struct RecoveryJson {
    pub clean: bool,
    pub loaded: usize,
    pub removed_partial: Finding,
    pub missing_data: Finding,
    pub failed_commits: Finding,
    pub deleted_orphans: Finding,
    pub quarantined: Finding,
    pub orphan_data: Finding,
    pub corrupt: Finding,
    /// The text's lines, as `info` prints them.
    pub report: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Finding {
    pub count: usize,
    pub shown: Vec<String>,
}

impl Finding {
    fn of<T: ToString>(count: usize, shown: &[T]) -> Self {
        Finding { count, shown: shown.iter().map(T::to_string).collect() }
    }
}

impl RecoveryJson {
    fn of(r: &Recovery) -> Self {
        RecoveryJson {
            clean: r.is_clean(),
            loaded: r.loaded,
            removed_partial: Finding::of(r.removed_partial_count, &r.removed_partial),
            missing_data: Finding::of(r.missing_data_count, &r.missing_data),
            failed_commits: Finding::of(r.failed_commit_count, &r.failed_commits),
            deleted_orphans: Finding::of(r.deleted_orphan_count, &r.deleted_orphans),
            quarantined: Finding::of(r.quarantined_count, &r.quarantined),
            orphan_data: Finding::of(r.orphan_data_count, &r.orphan_data),
            corrupt: Finding::of(r.corrupt_count, &r.corrupt),
            report: r.report(),
        }
    }
}

/// The migration section: the jobs as `migration ls -json` gives them, and the saved jobs
/// that could not be restored (`restore:` lines).
#[derive(Debug, Serialize)]
pub struct MigrationJson {
    pub jobs: Vec<JobSummary>,
    pub restore_problems: Vec<String>,
}

/// `rep sticky ls -json`: one valid sticky record.
#[derive(Debug, Serialize)]
pub struct StickyJson {
    pub owner: String,
    /// When it expires, in ms since the epoch; null for never.
    pub expires_at: Option<i64>,
    /// The same as ISO 8601 in UTC; null for never.
    pub expires: Option<String>,
}

/// The replica's sticky records valid at `now`, as `rep sticky ls` lists them.
pub fn sticky_records(records: &[tidepool_p2p::model::StickyRecord], now: i64) -> Vec<StickyJson> {
    records
        .iter()
        .filter(|s| s.is_valid(now))
        .map(|s| {
            let at = (s.expire != tidepool_p2p::model::NEVER).then_some(s.expire);
            StickyJson {
                owner: s.owner.clone(),
                expires_at: at,
                expires: at
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            }
        })
        .collect()
}

#[cfg(test)]
mod sticky_tests {
    use tidepool_p2p::model::{NEVER, StickyRecord};

    #[test]
    fn sticky_records_list_the_valid_ones_with_null_for_never() {
        let records =
            vec![StickyRecord::new("alice", NEVER), StickyRecord::new("bob", 5_000), StickyRecord::new("old", 10)];
        let json = serde_json::to_value(super::sticky_records(&records, 1_000)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"owner": "alice", "expires_at": null, "expires": null},
                {"owner": "bob", "expires_at": 5000, "expires": "1970-01-01T00:00:05.000Z"},
            ])
        );
    }
}

pub fn info(node: &Node) -> InfoJson {
    let pool = &node.pool;
    let now = now_ms();
    let mode = pool.mode();
    let counts: Vec<(ReplicaState, usize)> = pool.repo.counts().into_iter().filter(|(_, n)| *n > 0).collect();
    let (held, held_bytes) = pool.repo.held_space(now);
    let migration = node.try_migration();
    InfoJson {
        pool: pool.name.to_string(),
        mode: mode.mode.to_string(),
        enabled: mode.mode.is_enabled(),
        disabled: (!mode.mode.is_enabled()).then(|| Disabled { code: mode.error_code, message: mode.message.clone() }),
        groups: pool.cluster.pool(&pool.name).map(|e| e.groups.clone()),
        membership: MembershipJson { backend: pool.cluster.backend().to_string(), stale: pool.cluster.is_stale() },
        space: pool.repo.space(now),
        held: Held { replicas: held, bytes: held_bytes },
        replicas: Replicas {
            total: counts.iter().map(|(_, n)| n).sum(),
            by_state: counts.iter().map(|(s, n)| StateCount { state: s.as_str(), count: *n }).collect(),
        },
        recovery: RecoveryJson::of(&pool.recovery),
        migration: MigrationJson {
            jobs: migration.map(|m| m.ls_summaries()).unwrap_or_default(),
            restore_problems: migration.map(|m| m.problems()).unwrap_or_default(),
        },
        service: pool.started.get().map(|s| ServiceJson {
            version: s.version,
            started_at: s.at,
            started: chrono::DateTime::from_timestamp_millis(s.at)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default(),
            uptime_seconds: now.saturating_sub(s.at) / 1000,
            startup_seconds: s.startup.as_secs_f64(),
            data_dir: s.data_dir.display().to_string(),
            capacity: s.capacity,
            admin_listener: s.admin.to_string(),
            data_listener: s.data.to_string(),
            metrics_url: pool.metrics_addr.get().map(|a| format!("http://{a}/metrics")),
        }),
        log_filter: pool.log.get().map(|log| log.levels().to_string()),
        certificate: CertificateJson::of(&pool.credentials.info(), now / 1000),
    }
}

// ---- log ls ----

/// `log ls -json`: the levels in force.
#[derive(Debug, Serialize)]
pub struct LogLsJson {
    /// The text's `all` line: the level of every target not listed.
    pub all: String,
    /// The other lines, in order.
    pub targets: Vec<TargetLevel>,
}

#[derive(Debug, Serialize)]
pub struct TargetLevel {
    pub target: String,
    /// `off`, `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
}

pub fn log_ls(levels: &crate::process::logging::LogLevels) -> LogLsJson {
    LogLsJson {
        all: levels.default.to_string(),
        targets: levels
            .targets
            .iter()
            .map(|(target, level)| TargetLevel { target: target.clone(), level: level.to_string() })
            .collect(),
    }
}

// ---- rep ls ----

/// One element of `rep ls -json`.
#[derive(Debug, Serialize)]
pub struct ReplicaJson {
    pub pnfsid: String,
    pub state: &'static str,
    /// The text's flag field, e.g. `<C----------L(0)[0]>`.
    pub flags: String,
    /// As the text: 0 while the size is not known yet (NEW, FROM_STORE).
    pub size: u64,
    /// `null` where the text shows `<unknown>`.
    pub storage_class: Option<String>,
    /// Has a valid sticky record (the text's `X`).
    pub sticky: bool,
}

impl ReplicaJson {
    pub fn of(r: &Replica, now: i64) -> Self {
        ReplicaJson {
            pnfsid: r.pnfsid().to_string(),
            state: r.state.as_str(),
            flags: rep_ls::flags(r, now),
            size: rep_ls::listed_size(r),
            storage_class: r.attrs.storage_class.clone(),
            sticky: r.is_sticky(now),
        }
    }
}

/// `rep ls -s -json` (or `-sum -json`): every storage class and the total, in bytes.
#[derive(Debug, Serialize)]
pub struct RepStatsJson {
    pub classes: Vec<ClassJson>,
    pub total: rep_ls::ClassStats,
}

#[derive(Debug, Serialize)]
pub struct ClassJson {
    /// `<unknown>` for replicas without one, as in the text.
    pub storage_class: String,
    #[serde(flatten)]
    pub stats: rep_ls::ClassStats,
}

/// How much `rep ls -json` gathers before it hands it to the client.
const CHUNK: usize = 32 * 1024;

/// Buffers serde_json's output and passes it on in chunks of whole characters.
struct Sink<'a> {
    out: &'a mut dyn SyncOutput,
    buf: Vec<u8>,
    gone: bool,
}

impl Sink<'_> {
    /// Passes on what is buffered, up to the last whole character.
    fn pass(&mut self) -> io::Result<()> {
        let valid = match std::str::from_utf8(&self.buf) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        let text = std::str::from_utf8(&self.buf[..valid]).expect("checked above");
        if self.out.write(text).is_err() {
            self.gone = true;
            return Err(io::Error::other("the client went away"));
        }
        self.buf.drain(..valid);
        Ok(())
    }
}

impl io::Write for Sink<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > CHUNK {
            self.pass()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.pass()
    }
}

/// `rep ls -json` without statistics: one array, streamed (a million replicas never sit in
/// memory at once). Returns the pnfsids asked for that the pool does not hold.
/// Runs on the blocking thread of the walk (`Output::from_blocking`).
pub fn rep_ls(pool: &Pool, ls: &RepLs, now: i64, out: &mut dyn SyncOutput) -> Result<Vec<String>, AdminError> {
    let mut ser = serde_json::Serializer::pretty(Sink { out, buf: Vec::new(), gone: false });
    let failed = |e: serde_json::Error| AdminError::Json(e.to_string());
    let mut seq = ser.serialize_seq(None).map_err(failed)?;
    let walked = rep_ls::each_selected(pool, ls, now, &mut |r| {
        seq.serialize_element(&ReplicaJson::of(r, now)).map_err(|e| if e.is_io() { Gone.into() } else { failed(e) })
    });
    let ended = seq.end();
    let mut sink = ser.into_inner();
    if sink.gone {
        return Err(Gone.into());
    }
    let missing = walked?;
    ended.map_err(failed)?;
    sink.buf.push(b'\n');
    io::Write::flush(&mut sink).map_err(|_| AdminError::Gone)?;
    Ok(missing)
}

// ---- pp ls ----

/// `pp ls -json`.
#[derive(Debug, Serialize)]
pub struct PpLsJson {
    pub incoming: GateJson,
    pub outgoing: GateJson,
    pub connections_opened: u64,
    /// Incoming transfers, active and queued, by id.
    pub transfers: Vec<TransferJson>,
    /// With `-l`: the recently finished transfers (DONE or FAILED), oldest first; `null` without.
    pub finished: Option<Vec<FinishedJson>>,
}

#[derive(Debug, Serialize)]
pub struct GateJson {
    pub active: usize,
    pub max: usize,
    pub queued: usize,
}

#[derive(Debug, Serialize)]
pub struct TransferJson {
    pub id: u64,
    pub pnfsid: String,
    pub source: String,
    /// `ACTIVE` or `QUEUED`.
    pub state: &'static str,
    /// Seconds since the transfer was registered.
    pub age_seconds: u64,
    /// ACTIVE only (else `null`): bytes received, the replica's size, the mean rate since it
    /// started.
    pub done_bytes: Option<u64>,
    pub size_bytes: Option<u64>,
    pub rate_bytes_per_second: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct FinishedJson {
    pub id: u64,
    pub pnfsid: String,
    pub source: String,
    /// `DONE` or `FAILED`.
    pub state: &'static str,
    pub bytes: u64,
    pub seconds: f64,
    /// FAILED only.
    pub error: Option<ErrorJson>,
}

pub fn pp_ls(transfers: &Transfers, long: bool) -> PpLsJson {
    let gate = |(active, queued, max): (usize, usize, usize)| GateJson { active, max, queued };
    let listed = transfers
        .list()
        .iter()
        .map(|e| {
            let age_seconds = e.created.elapsed().as_secs();
            let (state, done, size, rate) = match e.started.get() {
                Some(started) => {
                    let done = e.done.load(Ordering::Relaxed);
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    ("ACTIVE", Some(done), Some(e.size.load(Ordering::Relaxed)), Some(done as f64 / secs))
                }
                None => ("QUEUED", None, None, None),
            };
            TransferJson {
                id: e.id.0,
                pnfsid: e.pnfsid.to_string(),
                source: e.source.to_string(),
                state,
                age_seconds,
                done_bytes: done,
                size_bytes: size,
                rate_bytes_per_second: rate,
            }
        })
        .collect();
    let finished = long.then(|| {
        transfers
            .recent()
            .iter()
            .map(|f| FinishedJson {
                id: f.id.0,
                pnfsid: f.pnfsid.to_string(),
                source: f.source.to_string(),
                state: if f.error.is_none() { "DONE" } else { "FAILED" },
                bytes: f.bytes,
                seconds: f.seconds,
                error: f.error.as_ref().map(ErrorJson::from),
            })
            .collect()
    });
    PpLsJson {
        incoming: gate(transfers.incoming.counts()),
        outgoing: gate(transfers.outgoing.counts()),
        connections_opened: transfers.connections_opened(),
        transfers: listed,
        finished,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sink passes on whole characters only, however serde_json's writes fall.
    #[test]
    fn the_sink_never_splits_a_character() {
        let mut out = String::new();
        let text = format!("{}é{}", "a".repeat(CHUNK), "ü".repeat(CHUNK));
        {
            let mut sink = Sink { out: &mut out, buf: Vec::new(), gone: false };
            for piece in text.as_bytes().chunks(7) {
                io::Write::write_all(&mut sink, piece).unwrap();
            }
            io::Write::flush(&mut sink).unwrap();
            assert!(sink.buf.is_empty());
        }
        assert_eq!(out, text);
    }

    /// A reader that went away stops the listing.
    #[test]
    fn the_sink_reports_a_reader_that_went_away() {
        struct Closed;
        impl SyncOutput for Closed {
            fn write(&mut self, _: &str) -> Result<(), Gone> {
                Err(Gone)
            }
        }
        let mut closed = Closed;
        let mut sink = Sink { out: &mut closed, buf: Vec::new(), gone: false };
        assert!(io::Write::write_all(&mut sink, "x".repeat(CHUNK + 1).as_bytes()).is_err());
        assert!(sink.gone);
    }
}
