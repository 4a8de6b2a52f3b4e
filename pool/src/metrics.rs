//! The Prometheus metrics page: `GET /metrics` on the HTTP listener that `[metrics] listen`
//! names (docs/metrics.md lists every metric).
//!
//! Almost everything is read on each scrape from the pool's own state, the same figures
//! `info`, `pp ls` and `migration info` show: space and replica counts from the repository,
//! the mode, the transfer table and its totals ([`TransferStats`]), and the migration module's
//! [`JobReport`]s. Only the group-commit histograms are kept here, fed by the repository's
//! commit thread through [`BatchObserver`] (so the repository knows nothing of Prometheus).
//!
//! The page is in the Prometheus text format 0.0.4. The listener runs as a task of the
//! daemon's tracker and stops with the daemon's shutdown token, like the admin and data
//! listeners; at most [`MAX_CONNECTIONS`] scrapers are served at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tidepool_migration::report::JobReport;
use tidepool_p2p::model::{PoolMode, ReplicaState};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::io::blocking;
use crate::node::Node;
use crate::pool::now_ms;
use crate::repository::BatchObserver;

/// Scrapers served at once; a further connection is closed at once.
pub const MAX_CONNECTIONS: usize = 8;
/// A scraper that has not sent its request headers within this is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The mode bits, as `info` names them.
const MODE_FLAGS: [(u32, &str); 9] = [
    (PoolMode::DISABLED, "disabled"),
    (PoolMode::FETCH, "fetch"),
    (PoolMode::STORE, "store"),
    (PoolMode::STAGE, "stage"),
    (PoolMode::P2P_CLIENT, "p2p-client"),
    (PoolMode::P2P_SERVER, "p2p-server"),
    (PoolMode::DEAD, "dead"),
    (PoolMode::DRAINING_BIT, "draining"),
    (PoolMode::LOADING, "loading"),
];

/// The histograms of group-commit batches, fed on the commit thread.
#[derive(Clone)]
struct Batches {
    replicas: Histogram,
    seconds: Histogram,
}

impl BatchObserver for Batches {
    fn batch(&self, replicas: usize, took: Duration) {
        self.replicas.observe(replicas as f64);
        self.seconds.observe(took.as_secs_f64());
    }
}

/// The metrics of one pool: a registry with the build info, the commit histograms and a
/// collector that reads the pool on each scrape.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Builds the registry of `pool` and starts feeding its commit histograms.
    pub fn new(node: &Arc<Node>) -> Metrics {
        let mut registry = Registry::default();
        registry.register(
            "tidepool_build",
            "The running build: its version in the label, value 1",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let batches = Batches {
            // 1, 2, 4, ... 512 replicas (a batch holds at most 512).
            replicas: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            // 0.5 ms to about 8 s.
            seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
        };
        registry.register(
            "tidepool_commit_batch_replicas",
            "Replicas per group-commit batch (one data sync and one metadata flush each)",
            batches.replicas.clone(),
        );
        registry.register(
            "tidepool_commit_batch_duration_seconds",
            "How long a group-commit batch took to become durable: data sync, record writes, metadata flush",
            batches.seconds.clone(),
        );
        if !node.pool.repo.observe_batches(Box::new(batches)) {
            tracing::warn!("the commit batches are already observed; the batch histograms stay empty");
        }
        registry.register_collector(Box::new(PoolCollector(node.clone())));
        Metrics { registry }
    }

    /// The page, in the Prometheus text format (reads the pool: call it off the runtime).
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }
}

/// Reads the pool's figures on each scrape.
struct PoolCollector(Arc<Node>);

impl std::fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PoolCollector").field(&self.0.pool.name).finish()
    }
}

/// Writes one metric family: `name` with `help`, one sample per label set.
fn family<L, M>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    M: EncodeMetric,
{
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<N>(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: N) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

type Labels = Vec<(&'static str, String)>;

impl Collector for PoolCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pool = &self.0.pool;
        let e = &mut e;
        // Space, as `info` shows it.
        let space = pool.repo.space(now_ms());
        for (name, help, value) in [
            ("tidepool_space_capacity_bytes", "The pool's size (info: Total)", space.total),
            ("tidepool_space_used_bytes", "Bytes held by replicas (info: Used)", space.used),
            ("tidepool_space_free_bytes", "Bytes not used (info: Free)", space.free),
            ("tidepool_space_precious_bytes", "Bytes of PRECIOUS replicas (info: Precious)", space.precious),
            ("tidepool_space_removable_bytes", "Bytes that eviction may free (info: Removable)", space.removable),
        ] {
            gauge(e, name, help, value)?;
        }
        // Replicas by state.
        let counts = pool.repo.counts();
        let by_state = ReplicaState::ALL.iter().map(|s| {
            let n = counts.iter().find(|(c, _)| c == s).map_or(0, |(_, n)| *n);
            (vec![("state", s.to_string())], ConstGauge::new(n as i64))
        });
        family(
            e,
            "tidepool_replicas",
            "Replicas in the repository, by state (info: Replicas)",
            MetricType::Gauge,
            by_state,
        )?;
        // Mode.
        let mode = pool.mode().mode;
        gauge(
            e,
            "tidepool_pool_enabled",
            "1 if the pool is enabled, 0 if disabled (info: Mode)",
            i64::from(mode.is_enabled()),
        )?;
        let flags = MODE_FLAGS
            .iter()
            .map(|(bit, name)| (vec![("flag", name.to_string())], ConstGauge::new(i64::from(mode.has(*bit)))));
        family(
            e,
            "tidepool_pool_mode_flag",
            "1 for each flag of the pool mode that is set (pool disable ...)",
            MetricType::Gauge,
            flags,
        )?;
        // This pool's certificate (info: Certificate): alert well before it passes.
        gauge(
            e,
            "tidepool_certificate_expiry_timestamp_seconds",
            "When this pool's certificate expires, seconds since the epoch (info: Certificate)",
            pool.credentials.info().not_after,
        )?;
        self.transfers(e)?;
        self.migration(e)
    }
}

impl PoolCollector {
    fn transfers(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let transfers = &self.0.transfers;
        // The same counts as the first line of `pp ls`.
        let (active, queued, _) = transfers.incoming.counts();
        gauge(e, "tidepool_p2p_in_active", "Incoming pool-to-pool transfers under way (pp ls)", active as u64)?;
        gauge(
            e,
            "tidepool_p2p_in_queued",
            "Incoming pool-to-pool transfers waiting for a place (pp set max active)",
            queued as u64,
        )?;
        let (out_active, out_queued, _) = transfers.outgoing.counts();
        gauge(e, "tidepool_p2p_out_active", "Outgoing streams to other pools under way", out_active as u64)?;
        gauge(
            e,
            "tidepool_p2p_out_queued",
            "Outgoing streams waiting for a place (pp set max outgoing)",
            out_queued as u64,
        )?;
        let stats = &transfers.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        counter(e, "tidepool_p2p_in_bytes", "Bytes received by incoming transfers that ended", load(&stats.in_bytes))?;
        counter(
            e,
            "tidepool_p2p_in_transfers",
            "Incoming transfers that committed their replica",
            load(&stats.in_done),
        )?;
        counter(e, "tidepool_p2p_out_bytes", "Bytes of replica data sent to other pools", load(&stats.out_bytes))?;
        counter(e, "tidepool_p2p_out_transfers", "Replicas sent whole to other pools", load(&stats.out_done))?;
        let by_code = |map: &parking_lot::Mutex<std::collections::BTreeMap<u32, u64>>| {
            map.lock()
                .iter()
                .map(|(code, n)| (vec![("code", code.to_string())], ConstCounter::new(*n)))
                .collect::<Vec<_>>()
        };
        family(
            e,
            "tidepool_p2p_in_failures",
            "Incoming transfers that failed, by error code (docs/errors.md)",
            MetricType::Counter,
            by_code(&stats.in_failed),
        )?;
        family(
            e,
            "tidepool_p2p_out_failures",
            "Outgoing transfers refused or failed, by the error code sent to the target",
            MetricType::Counter,
            by_code(&stats.out_failed),
        )
    }

    fn migration(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reports: Vec<JobReport> = self.0.try_migration().map(|m| m.reports()).unwrap_or_default();
        // Every state is reported, 0 when no job is in it.
        let jobs = tidepool_migration::job_state::JobState::ALL.iter().map(|state| {
            let n = reports.iter().filter(|r| r.state == state.as_str()).count();
            (vec![("state", state.as_str().to_string())], ConstGauge::new(n as i64))
        });
        family(
            e,
            "tidepool_migration_jobs",
            "Migration jobs of this pool, by state (migration ls)",
            MetricType::Gauge,
            jobs,
        )?;
        let id = |r: &JobReport| -> Labels { vec![("job_id", r.id.clone())] };
        family(
            e,
            "tidepool_migration_job_info",
            "One per migration job, value 1: its command and state",
            MetricType::Gauge,
            reports.iter().map(|r| {
                let labels: Labels =
                    vec![("job_id", r.id.clone()), ("command", r.command.clone()), ("state", r.state.clone())];
                (labels, ConstGauge::new(1i64))
            }),
        )?;
        type Field = fn(&JobReport) -> u64;
        let counters: [(&str, &str, Field); 3] = [
            (
                "tidepool_migration_job_completed_files",
                "Files the job has copied or moved (migration info: Completed)",
                |r| r.completed_files,
            ),
            ("tidepool_migration_job_completed_bytes", "Bytes of the files the job has completed", |r| {
                r.completed_bytes
            }),
            ("tidepool_migration_job_attempts", "Copy attempts the job has made (migration info: Attempts)", |r| {
                r.attempts
            }),
        ];
        for (name, help, field) in counters {
            let samples = reports.iter().map(|r| (id(r), ConstCounter::new(field(r))));
            family(e, name, help, MetricType::Counter, samples)?;
        }
        let gauges: [(&str, &str, Field); 11] = [
            ("tidepool_migration_job_queued_files", "Files waiting for their turn (migration info: Queued)", |r| {
                r.queued as u64
            }),
            ("tidepool_migration_job_queued_bytes", "Bytes of the files waiting for their turn", |r| r.queued_bytes),
            (
                "tidepool_migration_job_retrying_bytes",
                "Bytes of the files whose last attempt failed, waiting to be tried again",
                |r| r.failures.iter().filter(|f| f.retry_at.is_some()).map(|f| f.size).sum(),
            ),
            ("tidepool_migration_job_failed_bytes", "Bytes of the files the job gave up on", |r| {
                r.failures.iter().filter(|f| f.retry_at.is_none()).map(|f| f.size).sum()
            }),
            ("tidepool_migration_job_running_files", "Files being copied now", |r| r.running.len() as u64),
            (
                "tidepool_migration_job_retrying_files",
                "Files whose last attempt failed, waiting to be tried again",
                |r| r.failures.iter().filter(|f| f.retry_at.is_some()).count() as u64,
            ),
            ("tidepool_migration_job_failed_files", "Files the job gave up on after a permanent failure", |r| {
                r.failures.iter().filter(|f| f.retry_at.is_none()).count() as u64
            }),
            ("tidepool_migration_job_total_bytes", "Bytes of every file the job selected", |r| r.total_bytes),
            ("tidepool_migration_job_left_bytes", "Bytes of the files still to do", |r| r.bytes_left),
            ("tidepool_migration_job_concurrency", "Files the job copies at once (migration concurrency)", |r| {
                r.concurrency as u64
            }),
            (
                "tidepool_migration_job_rate_limit_bytes_per_second",
                "The job's byte-rate limit (migration set rate); 0: unlimited",
                |r| r.rate_limit_bytes_per_second,
            ),
        ];
        for (name, help, field) in gauges {
            let samples = reports.iter().map(|r| (id(r), ConstGauge::new(field(r))));
            family(e, name, help, MetricType::Gauge, samples)?;
        }
        family(
            e,
            "tidepool_migration_job_eta_seconds",
            "Estimated time to finish at the current rate; no sample while the job has no estimate",
            MetricType::Gauge,
            reports.iter().filter_map(|r| Some((id(r), ConstGauge::new(r.eta_seconds?)))),
        )?;
        family(
            e,
            "tidepool_migration_job_rate_bytes_per_second",
            "The job's current copy rate, as migration info shows it (0 when it has none)",
            MetricType::Gauge,
            reports.iter().map(|r| (id(r), ConstGauge::new(r.rate_bytes_per_second.unwrap_or(0.0)))),
        )?;
        let served = self.0.try_migration().map(|m| m.served_requests()).unwrap_or_default();
        family(
            e,
            "tidepool_migration_requests_served",
            "Requests of other pools' migration jobs this pool answered, by kind (pool_info: cost questions)",
            MetricType::Counter,
            served.into_iter().map(|(kind, n)| (vec![("kind", kind.to_string())], ConstCounter::new(n))),
        )
    }
}

/// Serves the page on `listener` until `shutdown`; each connection is a task of `tracker`.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: CancellationToken, tracker: TaskTracker) {
    let metrics = Arc::new(Metrics::new(&node));
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics listener: too many scrapers; connection closed");
            continue;
        };
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        tracker.spawn(
            async move {
                let _place = place;
                let service = service_fn(move |req| respond(metrics.clone(), req));
                let mut builder = http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "metrics connection ended");
                    },
                    _ = shutdown.cancelled() => {}
                }
            }
            .in_current_span(),
        );
    }
}

async fn respond(metrics: Arc<Metrics>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("a valid header"));
        r
    };
    if req.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, "not found: the metrics are at /metrics\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut().insert(ALLOW, "GET, HEAD".parse().expect("a valid header"));
        return Ok(r);
    }
    // The collector takes the repository's and the jobs' locks: off the runtime.
    let text = blocking(move || metrics.render()).await;
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE.parse().expect("a valid header"),
    );
    Ok(r)
}
