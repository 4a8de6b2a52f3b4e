//! The Prometheus metrics page of real `tidepool pool` daemons (docs/metrics.md): it is served
//! only when `[metrics] listen` is set, parses as the Prometheus text format (a strict parser
//! here, and Debian's `promtool check metrics` where it is installed), and its figures are the
//! ones `info`, `pp ls` and `migration info` show, during a `migration move` and once it has
//! finished. Every wait polls a state with a deadline.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use tidepool_tests::{Cluster, binaries, create, free_ports, info_field, ok, report_field, wait_until};

/// How long a small job may take to finish (a few seconds at most in a debug build).
const JOB_WAIT: Duration = Duration::from_secs(30);
/// How long a test waits for something it has caused to show.
const SHOW_WAIT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client: one request per connection.

struct HttpReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<HttpReply> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).expect("the reply is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a reply with a header block");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("a header line");
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let reply = HttpReply { status, headers, body: body.to_string() };
    if let Some(len) = reply.header("content-length") {
        assert_eq!(len.parse::<usize>().expect("a length"), reply.body.len(), "the whole body arrived");
    }
    Ok(reply)
}

/// `GET /metrics`, checked to be a 200 in the Prometheus text format, and parsed strictly.
#[track_caller]
fn scrape(addr: SocketAddr) -> Page {
    let reply = http(addr, "GET", "/metrics").unwrap_or_else(|e| panic!("GET http://{addr}/metrics: {e}"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    parse(&reply.body).unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{}", reply.body))
}

// ---------------------------------------------------------------------------------------------
// A strict parser of the Prometheus text format 0.0.4.

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Clone, PartialEq)]
struct Family {
    name: String,
    help: Option<String>,
    kind: String,
    samples: Vec<Sample>,
}

#[derive(Debug)]
struct Page {
    text: String,
    families: Vec<Family>,
}

impl Page {
    fn family(&self, name: &str) -> &Family {
        self.families.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no family {name} in\n{}", self.text))
    }

    /// The value of the one sample `name` whose labels include `labels`.
    #[track_caller]
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect();
        assert_eq!(found.len(), 1, "one sample {name}{labels:?} in\n{}", self.text);
        found[0].value
    }

    #[track_caller]
    fn int(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let v = self.value(name, labels);
        assert!(v >= 0.0 && v.fract() == 0.0, "{name}{labels:?} = {v} is a count");
        v as u64
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && !s.starts_with("__")
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => {
            s.parse().map_err(|_| format!("bad value {s:?}"))
        }
        _ => Err(format!("bad value {s:?}")),
    }
}

/// `{a="x",b="y"}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').expect("called on a '{'");
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("a label without '='")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..].strip_prefix('"').ok_or("a label value without '\"'")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("an unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in a label value")),
                },
                Some((_, '\n')) => return Err("a raw newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} given twice"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {name}"));
        }
    }
}

/// Parses a page and checks what the format requires: HELP and TYPE before a family's samples
/// and at most once, each family's samples together and named after it, label syntax, values,
/// no series twice, and every histogram's buckets cumulative, ending at `+Inf` with its count,
/// with `_sum` and `_count`.
fn parse(text: &str) -> Result<Page, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the page does not end with a newline".into());
    }
    let mut families: Vec<Family> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut series = std::collections::BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.trim_start().splitn(3, ' ').collect();
            match words.as_slice() {
                ["HELP", name, help] | ["TYPE", name, help] if !is_metric_name(name) || help.is_empty() => {
                    return Err(at(format!("bad descriptor for {name:?}")));
                }
                ["HELP", name, help] => {
                    if help.contains("\\") && help.replace("\\\\", "").replace("\\n", "").contains('\\') {
                        return Err(at("bad escape in HELP".into()));
                    }
                    open(&mut families, &mut seen, name).map_err(at)?;
                    let f = families.last_mut().expect("just opened");
                    if f.help.replace(help.to_string()).is_some() || !f.samples.is_empty() {
                        return Err(at("HELP twice, or after samples".into()));
                    }
                }
                ["TYPE", name, kind] => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(kind) {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    open(&mut families, &mut seen, name).map_err(at)?;
                    let f = families.last_mut().expect("just opened");
                    if !f.kind.is_empty() || !f.samples.is_empty() {
                        return Err(at("TYPE twice, or after samples".into()));
                    }
                    f.kind = kind.to_string();
                }
                _ => {} // another comment
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("a sample without a value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest.strip_prefix(' ').ok_or_else(|| at("no space before the value".into()))?;
        let mut parts = rest.split(' ');
        let value = parse_value(parts.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = parts.next() {
            ts.parse::<i64>().map_err(|_| at(format!("bad timestamp {ts:?}")))?;
        }
        if parts.next().is_some() {
            return Err(at("trailing text after the value".into()));
        }
        let f = match families.last_mut() {
            Some(f) if belongs(f, name) => f,
            _ => {
                // A sample without descriptors is an untyped family of its own.
                open(&mut families, &mut seen, name).map_err(at)?;
                families.last_mut().expect("just opened")
            }
        };
        if f.kind.is_empty() {
            f.kind = "untyped".into();
        }
        if f.kind == "counter" && (value < 0.0 || value.is_nan()) {
            return Err(at("a negative counter".into()));
        }
        if !series.insert((name.to_string(), labels.clone().into_iter().collect::<Vec<_>>())) {
            return Err(at("a series given twice".into()));
        }
        f.samples.push(Sample { name: name.to_string(), labels, value });
    }
    for f in &families {
        if f.kind == "histogram" {
            check_histogram(f)?;
        }
    }
    Ok(Page { text: text.to_string(), families })
}

/// Starts family `name`, unless it is the family being read; a family seen before is an error.
fn open(families: &mut Vec<Family>, seen: &mut std::collections::BTreeSet<String>, name: &str) -> Result<(), String> {
    if families.last().is_some_and(|f| f.name == name && f.samples.is_empty()) {
        return Ok(());
    }
    if !seen.insert(name.to_string()) {
        return Err(format!("family {name} appears in two places"));
    }
    families.push(Family { name: name.to_string(), help: None, kind: String::new(), samples: Vec::new() });
    Ok(())
}

fn belongs(f: &Family, sample: &str) -> bool {
    match f.kind.as_str() {
        "histogram" => ["_bucket", "_sum", "_count"].iter().any(|s| sample.strip_suffix(s) == Some(&f.name)),
        "summary" => sample == f.name || ["_sum", "_count"].iter().any(|s| sample.strip_suffix(s) == Some(&f.name)),
        _ => sample == f.name,
    }
}

/// One series of a histogram: its buckets `(le, count)`, `_sum` and `_count`.
type HistogramSeries = (Vec<(f64, f64)>, Option<f64>, Option<f64>);

fn check_histogram(f: &Family) -> Result<(), String> {
    let mut by_series: BTreeMap<Vec<(String, String)>, HistogramSeries> = BTreeMap::new();
    for s in &f.samples {
        let mut labels = s.labels.clone();
        let le = labels.remove("le");
        let entry = by_series.entry(labels.into_iter().collect()).or_default();
        if s.name.ends_with("_bucket") {
            let le = le.ok_or_else(|| format!("{}: a bucket without le", f.name))?;
            entry.0.push((parse_value(&le)?, s.value));
        } else if le.is_some() {
            return Err(format!("{}: le on {}", f.name, s.name));
        } else if s.name.ends_with("_sum") {
            entry.1 = Some(s.value);
        } else {
            entry.2 = Some(s.value);
        }
    }
    if by_series.is_empty() {
        return Err(format!("histogram {} has no samples", f.name));
    }
    for (labels, (buckets, sum, count)) in by_series {
        let what = format!("histogram {}{labels:?}", f.name);
        let count = count.ok_or_else(|| format!("{what}: no _count"))?;
        sum.ok_or_else(|| format!("{what}: no _sum"))?;
        if buckets.windows(2).any(|w| w[0].0.partial_cmp(&w[1].0) != Some(std::cmp::Ordering::Less) || w[0].1 > w[1].1)
        {
            return Err(format!("{what}: buckets not in increasing le with cumulative counts: {buckets:?}"));
        }
        match buckets.last() {
            Some((le, n)) if le.is_infinite() && *le > 0.0 && *n == count => {}
            _ => return Err(format!("{what}: the last bucket is not +Inf with the count {count}: {buckets:?}")),
        }
    }
    Ok(())
}

#[test]
fn the_parser_accepts_the_format_and_refuses_what_breaks_it() {
    let good = "# HELP a_total A counter.\n# TYPE a_total counter\na_total{code=\"7\",x=\"q\\\"\\\\\\n\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 2.5\nh_count 2\n\
                # a comment\nu 1e3 1700000000000\n";
    let page = parse(good).unwrap();
    assert_eq!(page.value("a_total", &[("code", "7")]), 3.0);
    assert_eq!(page.family("a_total").samples[0].labels["x"], "q\"\\\n");
    assert_eq!(page.family("u").kind, "untyped");
    for (bad, why) in [
        ("# TYPE a counter\na -1\n", "a negative counter"),
        ("# TYPE a gauge\n# TYPE a gauge\na 1\n", "TYPE twice"),
        ("a 1\nb 1\na 2\n", "two places"),
        ("a{b=\"1\"} 1\na{b=\"1\"} 2\n", "twice"),
        ("1a 1\n", "bad metric name"),
        ("a{1b=\"x\"} 1\n", "bad label name"),
        ("a{b=\"x} 1\n", "unterminated"),
        ("a{b=\"\\x\"} 1\n", "bad escape"),
        ("a one\n", "bad value"),
        ("a 1", "newline"),
        ("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", "cumulative"),
        ("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", "+Inf"),
        ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", "no _sum"),
        ("# TYPE a wibble\n", "unknown type"),
    ] {
        let e = parse(bad).expect_err(bad);
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Real daemons.

/// Two pools in group `disk`, each serving its metrics on a free port; none started.
fn two_pools_with_metrics() -> (Cluster, SocketAddr, SocketAddr) {
    let cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    let ports = free_ports(2);
    for (pool, addr) in [("pool1", ports[0]), ("pool2", ports[1])] {
        cluster.append_config(pool, &format!("\n[metrics]\nlisten = \"{addr}\"\n"));
    }
    (cluster, ports[0], ports[1])
}

/// The figures of `info` that the page repeats: space, replicas by state, mode.
#[track_caller]
fn assert_matches_info(cluster: &Cluster, pool: &str, page: &Page) {
    let info = cluster.info(pool);
    let bytes = |field: &str| -> u64 {
        let v = info_field(&info, field).unwrap_or_else(|| panic!("no {field} in\n{info}"));
        v.strip_suffix(" bytes").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{field}: {v:?}"))
    };
    for (field, metric) in [
        ("Total", "tidepool_space_capacity_bytes"),
        ("Used", "tidepool_space_used_bytes"),
        ("Free", "tidepool_space_free_bytes"),
        ("Precious", "tidepool_space_precious_bytes"),
        ("Removable", "tidepool_space_removable_bytes"),
    ] {
        assert_eq!(page.int(metric, &[]), bytes(field), "{pool}: {metric} against info's {field}\n{info}");
    }
    // `Replicas       : 5 (CACHED 3, PRECIOUS 2)` or `Replicas       : 0`.
    let replicas = info_field(&info, "Replicas").expect("a Replicas line");
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    if let Some((_, states)) = replicas.split_once(" (") {
        for part in states.trim_end_matches(')').split(", ") {
            let (state, n) = part.split_once(' ').expect("STATE N");
            expected.insert(state.to_string(), n.parse().expect("a count"));
        }
    }
    let shown: BTreeMap<String, u64> = page
        .family("tidepool_replicas")
        .samples
        .iter()
        .filter(|s| s.value > 0.0)
        .map(|s| (s.labels["state"].clone(), s.value as u64))
        .collect();
    assert_eq!(shown, expected, "{pool}: replicas by state against info\n{info}");
    let enabled = info_field(&info, "Mode") == Some("enabled");
    assert_eq!(page.int("tidepool_pool_enabled", &[]), u64::from(enabled), "{pool}\n{info}");
    assert_eq!(page.int("tidepool_pool_mode_flag", &[("flag", "disabled")]), u64::from(!enabled));
    // `Certificate    : pool:pool1, valid until 2027-12-05 (365 days)`: the same day.
    let expiry = page.int("tidepool_certificate_expiry_timestamp_seconds", &[]);
    let day = time::OffsetDateTime::from_unix_timestamp(expiry as i64).expect("a timestamp").date();
    let until = format!("valid until {:04}-{:02}-{:02}", day.year(), u8::from(day.month()), day.day());
    assert!(
        info_field(&info, "Certificate").is_some_and(|c| c.contains(&until)),
        "{pool}: {until}
{info}"
    );
}

/// `promtool check metrics` on the page, where Debian's `promtool` is installed.
fn promtool_check(page: &Page) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        println!("note: promtool is not installed (Debian package prometheus); `promtool check metrics` skipped");
        return;
    };
    child.stdin.take().expect("stdin").write_all(page.text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\n{}",
        out.status,
        page.text
    );
    println!("promtool check metrics: clean");
}

/// A move from pool1 to pool2, watched on both metrics pages: while pool2 holds its transfers
/// queued (`pp set max active 0`) the queue shows as it does in `pp ls`; once the job has
/// finished, every figure matches `info` and `migration info`, and the transfer counters, the
/// commit histograms and the job's counters add up to the files moved. Both pages parse, and
/// pass `promtool check metrics` where it is installed.
#[test]
fn the_metrics_match_info_and_migration_info_during_a_move() {
    let (mut cluster, m1, m2) = two_pools_with_metrics();
    // One file per unit of the job's concurrency, so that three units are three transfers.
    cluster.append_config("pool1", "\n[migration]\nbatch_files = 1\n");
    cluster.start("pool1");
    cluster.start("pool2");
    // 12 files: small ones (batched fetches) and two over one data frame.
    let sizes: Vec<(usize, u64)> = [0usize, 1, 4096, 65_536, 100_000, 1_500_000, 7, 300_000, 2_100_000, 10, 20, 30]
        .iter()
        .copied()
        .zip(1..)
        .collect();
    let n = sizes.len() as u64;
    let total: u64 = sizes.iter().map(|(len, _)| *len as u64).sum();
    let mut files = cluster.put_samples("pool1", &sizes[..6], &["--storage", "test:disk"]);
    files.extend(cluster.put_samples("pool1", &sizes[6..], &["--storage", "test:tape", "--precious"]));

    let before = scrape(m1);
    assert_matches_info(&cluster, "pool1", &before);
    assert_eq!(before.int("tidepool_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1);
    assert_eq!(before.family("tidepool_commit_batch_replicas").kind, "histogram");
    assert_eq!(before.int("tidepool_commit_batch_replicas_sum", &[]), n, "each put replica went through a batch");
    assert!(before.int("tidepool_commit_batch_duration_seconds_count", &[]) >= 1);
    assert_eq!(before.int("tidepool_migration_jobs", &[("state", "RUNNING")]), 0);

    // Held: pool2 admits no transfer, so the job's files wait in its queue.
    ok(&cluster, "pool2", "pp set max active 0\n");
    let job = create(&cluster, "pool1", "migration move -concurrency=3 pool2");
    let held = wait_until("three transfers queued on pool2", SHOW_WAIT, || {
        let page = scrape(m2);
        (page.int("tidepool_p2p_in_queued", &[]) == 3).then_some(page)
    });
    let pp = cluster.pp_ls("pool2");
    assert_eq!((pp.counts.active, pp.counts.queued), (0, 3), "pp ls agrees");
    assert_eq!(held.int("tidepool_p2p_in_active", &[]), 0);
    let during = scrape(m1);
    assert_eq!(during.int("tidepool_migration_jobs", &[("state", "RUNNING")]), 1);
    assert_eq!(during.int("tidepool_migration_job_running_files", &[("job_id", &job)]), 3);
    assert_eq!(during.int("tidepool_migration_job_queued_files", &[("job_id", &job)]), n - 3);
    // Queued bytes: every file's but the three held on pool2.
    let held_bytes: u64 = pp
        .transfers
        .iter()
        .map(|t| files.iter().find(|(id, _)| *id == t.pnfsid).map(|(_, b)| b.len() as u64).expect("a moved file"))
        .sum();
    assert_eq!(during.int("tidepool_migration_job_queued_bytes", &[("job_id", &job)]), total - held_bytes);
    assert_eq!(during.int("tidepool_migration_job_completed_files_total", &[("job_id", &job)]), 0);
    assert_eq!(during.int("tidepool_migration_job_total_bytes", &[("job_id", &job)]), total);
    assert_eq!(during.int("tidepool_migration_job_left_bytes", &[("job_id", &job)]), total);
    let info = cluster.migration_info("pool1", &job);
    assert_eq!(report_field(&info, "Queued").map(|q| q.parse::<u64>().unwrap()), Some(n - 3), "{info}");

    ok(&cluster, "pool2", "pp set max active 8\n");
    let info = cluster.wait_for_job("pool1", &job, "FINISHED", JOB_WAIT);
    assert_eq!(report_field(&info, "Completed"), Some(format!("{n} files; {total} bytes").as_str()), "{info}");
    let (p1, p2) = (scrape(m1), scrape(m2));
    assert_matches_info(&cluster, "pool1", &p1);
    assert_matches_info(&cluster, "pool2", &p2);
    let id = [("job_id", job.as_str())];
    assert_eq!(p1.int("tidepool_migration_jobs", &[("state", "FINISHED")]), 1);
    assert_eq!(p1.int("tidepool_migration_job_info", &[("job_id", &job), ("state", "FINISHED")]), 1);
    assert_eq!(p1.int("tidepool_migration_job_completed_files_total", &id), n);
    assert_eq!(p1.int("tidepool_migration_job_completed_bytes_total", &id), total);
    assert_eq!(p1.int("tidepool_migration_job_total_bytes", &id), total);
    assert_eq!(p1.int("tidepool_migration_job_left_bytes", &id), 0);
    assert_eq!(p1.int("tidepool_migration_job_queued_files", &id), 0);
    assert_eq!(p1.int("tidepool_migration_job_failed_files", &id), 0);
    assert_eq!(p1.int("tidepool_migration_job_queued_bytes", &id), 0);
    assert_eq!(p1.int("tidepool_migration_job_failed_bytes", &id), 0);
    let attempts: u64 = report_field(&info, "Attempts").and_then(|a| a.parse().ok()).expect("Attempts");
    assert_eq!(p1.int("tidepool_migration_job_attempts_total", &id), attempts);
    // The transfers: pool2 pulled every file, pool1 sent every byte.
    assert_eq!(p2.int("tidepool_p2p_in_transfers_total", &[]), n);
    assert_eq!(p2.int("tidepool_p2p_in_bytes_total", &[]), total);
    assert_eq!(p2.family("tidepool_p2p_in_failures_total").samples, vec![], "no failure");
    assert_eq!(p1.int("tidepool_p2p_out_transfers_total", &[]), n);
    assert_eq!(p1.int("tidepool_p2p_out_bytes_total", &[]), total);
    assert_eq!((p2.int("tidepool_p2p_in_active", &[]), p2.int("tidepool_p2p_in_queued", &[])), (0, 0));
    // pool2 committed exactly the moved replicas, in batches.
    assert_eq!(p2.int("tidepool_commit_batch_replicas_sum", &[]), n);
    let batches = p2.int("tidepool_commit_batch_replicas_count", &[]);
    assert!((1..=n).contains(&batches), "{batches} batches");
    assert_eq!(p2.int("tidepool_commit_batch_duration_seconds_count", &[]), batches);
    promtool_check(&p1);
    promtool_check(&p2);
}

/// Disabling the pool shows in the mode metrics, and the page answers only `/metrics`.
#[test]
fn mode_changes_show_and_other_paths_are_not_found() {
    let (mut cluster, m1, _) = two_pools_with_metrics();
    cluster.start("pool1");
    assert_matches_info(&cluster, "pool1", &scrape(m1));
    ok(&cluster, "pool1", "pool disable -rdonly\n");
    let page = scrape(m1);
    assert_matches_info(&cluster, "pool1", &page);
    for (flag, set) in [("store", 1), ("stage", 1), ("p2p-client", 1), ("fetch", 0), ("draining", 0)] {
        assert_eq!(page.int("tidepool_pool_mode_flag", &[("flag", flag)]), set, "{flag}");
    }
    let other = http(m1, "GET", "/").expect("GET /");
    assert_eq!(other.status, 404, "{}", other.body);
    let post = http(m1, "POST", "/metrics").expect("POST /metrics");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    promtool_check(&page);
}

/// Without `[metrics]` a pool opens no metrics listener: nothing answers on the address it
/// would have used, and its log says nothing of metrics. With it, the log says where, and the
/// listener and its connections end with the pool.
#[test]
fn no_metrics_listener_unless_configured() {
    let mut cluster = Cluster::new(&[("pool1", &["disk"]), ("pool2", &["disk"])]);
    let spare = free_ports(1)[0];
    cluster.append_config("pool2", &format!("\n[metrics]\nlisten = \"{spare}\"\n"));
    cluster.start("pool1");
    assert!(!cluster.log("pool1").contains("metrics"), "{}", cluster.log("pool1"));
    assert!(TcpStream::connect_timeout(&spare, IO_TIMEOUT).is_err(), "nothing listens on {spare} yet");
    cluster.start("pool2");
    assert!(cluster.log("pool2").contains(&format!("metrics at http://{spare}/metrics")), "{}", cluster.log("pool2"));
    scrape(spare);
    // Scrapers that keep their connection open, idle or half-way through a request, do not
    // hold the pool up: it stops at once (well inside its grace period), closing them and
    // its listener.
    let mut idle = TcpStream::connect_timeout(&spare, IO_TIMEOUT).expect("connect");
    let mut partial = TcpStream::connect_timeout(&spare, IO_TIMEOUT).expect("connect");
    partial.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").expect("half a request");
    let stopping = std::time::Instant::now();
    assert!(cluster.stop("pool2").success());
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(tidepool_tests::SHUTDOWN_GRACE_SECONDS), "stopped after {took:?}");
    let log = cluster.log("pool2");
    assert!(log.contains("pool stopped") && !log.contains("after the grace period"), "{log}");
    for (what, conn) in [("idle", &mut idle), ("partial", &mut partial)] {
        conn.set_read_timeout(Some(IO_TIMEOUT)).expect("a timeout");
        let mut rest = Vec::new();
        let read = conn.read_to_end(&mut rest);
        assert!(matches!(read, Ok(0)) || read.is_err(), "the {what} connection was closed: {read:?}");
    }
    assert!(TcpStream::connect_timeout(&spare, IO_TIMEOUT).is_err(), "the listener stopped with the pool");
}

/// The drain dashboard (docs/grafana/tidepool-drain.json) is valid JSON whose queries name only
/// metrics that a real pool serves, and (where `promtool` is installed) every query is valid
/// PromQL.
#[test]
fn the_drain_dashboard_queries_metrics_that_exist() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana/tidepool-drain.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("a query").to_string())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");

    let (mut cluster, m1, _) = two_pools_with_metrics();
    cluster.start("pool1");
    let page = scrape(m1);
    let served: std::collections::BTreeSet<&str> =
        page.families.iter().flat_map(|f| f.samples.iter().map(|s| s.name.as_str()).chain([f.name.as_str()])).collect();
    // A family with no sample yet (a job's, a failure code's) still has its descriptors.
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("tidepool_") {
            let name: String =
                rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
            assert!(served.contains(name.as_str()), "{name} (in {expr}) is not on the page:\n{}", page.text);
            rest = &rest[at + name.len()..];
        }
    }

    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e.replace("$__rate_interval", "5m").replace("$source", ".*").replace("$job_id", ".*");
            format!("  - record: panel_query_{i}\n    expr: {}\n", serde_json::to_string(&e).expect("a string"))
        })
        .collect();
    let file =
        cluster.write_file("dashboard-rules.yml", format!("groups:\n- name: dashboard\n  rules:\n{rules}").as_bytes());
    match Command::new("promtool").arg("check").arg("rules").arg(&file).output() {
        Err(_) => println!("note: promtool is not installed; the dashboard's PromQL was not checked"),
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A transfer that the source refuses counts once on each side, under the code that the
/// operator sees: `pp get file -wait` on pool2 from a pool1 disabled with `-strict`.
#[test]
fn a_refused_transfer_counts_as_a_failure_on_both_sides_by_its_code() {
    let (mut cluster, m1, m2) = two_pools_with_metrics();
    cluster.start("pool1");
    cluster.start("pool2");
    let files = cluster.put_samples("pool1", &[(5000, 1)], &[]);
    let id = &files[0].0;
    ok(&cluster, "pool1", "pool disable -strict\n");
    let out = cluster.admin_in("pool2", &format!("pp get file -wait {id} pool1\n"));
    out.assert_code(1, "pp get file -wait from a pool that refuses to be read");
    let code = out
        .stderr
        .split("(rc=")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no rc in {out}"))
        .to_string();
    let (p1, p2) = (scrape(m1), scrape(m2));
    assert_eq!(p2.int("tidepool_p2p_in_failures_total", &[("code", &code)]), 1, "{out}");
    assert_eq!(p2.family("tidepool_p2p_in_failures_total").samples.len(), 1);
    assert_eq!(p2.int("tidepool_p2p_in_transfers_total", &[]), 0);
    assert_eq!(p1.int("tidepool_p2p_out_failures_total", &[("code", &code)]), 1, "{out}");
    assert_eq!((p1.int("tidepool_p2p_out_transfers_total", &[]), p1.int("tidepool_p2p_out_bytes_total", &[])), (0, 0));
    assert_eq!(p1.int("tidepool_pool_mode_flag", &[("flag", "fetch")]), 1);
}

/// `tidepool demo` serves each pool's metrics on a loopback port, prints where under its tour,
/// and writes the address into the kept configs; the three pages answer while the demo runs,
/// pool1's with the demo's sample replicas, and the demo stops with its shell.
#[test]
fn the_demo_serves_each_pools_metrics_and_says_where() {
    use std::io::BufRead;
    let dir = tempfile::Builder::new().prefix("tidepool-demo-test-").tempdir().expect("a temp dir");
    let kept = dir.path().join("kept");
    let mut demo = Command::new(&binaries().tidepool)
        .arg("demo")
        .arg("--keep")
        .arg(&kept)
        .env("HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tidepool demo");
    // The banner comes before the shell reads anything, on stderr when stdin is not a
    // terminal; a demo that fails ends its output early.
    let mut stderr = std::io::BufReader::new(demo.stderr.take().expect("stderr"));
    let mut banner = String::new();
    let urls: Vec<(String, SocketAddr)> = loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("read the demo's output") == 0 {
            let _ = demo.kill();
            panic!("the demo ended without naming its metrics:\n{banner}");
        }
        banner.push_str(&line);
        if let Some(list) = line.strip_prefix("Prometheus metrics (docs/metrics.md):") {
            let words: Vec<&str> = list.split_whitespace().collect();
            break words
                .chunks(2)
                .map(|w| {
                    let addr = w[1].strip_prefix("http://").and_then(|a| a.strip_suffix("/metrics")).expect("a URL");
                    (w[0].to_string(), addr.parse().expect("an address"))
                })
                .collect();
        }
    };
    let names: Vec<&str> = urls.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["pool1", "pool2", "pool3"], "{banner}");
    for (name, addr) in &urls {
        let page = scrape(*addr);
        let replicas: u64 = page.family("tidepool_replicas").samples.iter().map(|s| s.value as u64).sum();
        assert_eq!(replicas > 0, name == "pool1", "{name}: only pool1 has sample replicas\n{}", page.text);
        let config = std::fs::read_to_string(kept.join(format!("{name}.toml"))).expect("a kept config");
        assert!(config.contains(&format!("[metrics]\nlisten = \"{addr}\"")), "{config}");
    }
    drop(demo.stdin.take()); // end of input: the shell exits and the demo stops its pools
    let status = wait_until("the demo exiting", Duration::from_secs(30), || demo.try_wait().expect("try_wait"));
    assert!(status.success(), "{status}");
    for (_, addr) in &urls {
        assert!(TcpStream::connect_timeout(addr, IO_TIMEOUT).is_err(), "{addr} closed with the demo");
    }
}

/// `tidepool pool --check` names the metrics page; a bad `[metrics]` table is refused by
/// `--check` and the daemon alike, and a daemon whose metrics address is taken refuses to
/// start, saying which.
#[test]
fn check_shows_the_metrics_address_and_bad_metrics_configs_are_refused() {
    let cluster = Cluster::new(&[("pool1", &["disk"])]);
    let config = std::fs::read_to_string(cluster.config_path("pool1")).expect("the config");
    let addr = free_ports(1)[0];
    cluster.append_config("pool1", &format!("\n[metrics]\nlisten = \"{addr}\"\n"));
    let check = cluster.check("pool1");
    check.assert_success("tidepool pool --check");
    assert!(check.stdout.contains(&format!("metrics   http://{addr}/metrics")), "{check}");

    for (table, says) in [
        ("[metrics]\nlisten = \"127.0.0.1:0\"\n", "metrics.listen needs a port"),
        ("[metrics]\nlisten = \"127.0.0.1:9325\"\npath = \"/m\"\n", "unknown field `path`"),
        ("[metrics]\n", "missing field `listen`"),
    ] {
        std::fs::write(cluster.config_path("pool1"), format!("{config}\n{table}")).expect("write the config");
        let (check, daemon) = (cluster.check("pool1"), cluster.start_refused("pool1"));
        check.assert_code(1, "tidepool pool --check");
        daemon.assert_code(1, "tidepool pool");
        assert!(check.stderr.contains(says) && daemon.stderr.contains(says), "{table}:\n{check}\n{daemon}");
    }

    // The address the cluster file gives the pool for its data is refused by both alike.
    let data_addr = cluster.spec("pool1").p2p;
    std::fs::write(cluster.config_path("pool1"), format!("{config}\n[metrics]\nlisten = \"{data_addr}\"\n"))
        .expect("write the config");
    let (check, daemon) = (cluster.check("pool1"), cluster.start_refused("pool1"));
    check.assert_code(1, "tidepool pool --check with the data address for metrics");
    daemon.assert_code(1, "tidepool pool with the data address for metrics");
    let says = format!("metrics.listen {data_addr} is also the pool's admin or data address");
    assert!(check.stderr.contains(&says) && daemon.stderr.contains(&says), "{check}\n{daemon}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("its address");
    std::fs::write(cluster.config_path("pool1"), format!("{config}\n[metrics]\nlisten = \"{taken_addr}\"\n"))
        .expect("write the config");
    let daemon = cluster.start_refused("pool1");
    daemon.assert_code(1, "tidepool pool with its metrics address taken");
    assert!(daemon.stderr.contains(&format!("listen for metrics on {taken_addr}")), "{daemon}");
}
