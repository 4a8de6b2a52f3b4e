//! `migration copy|move|cache [options] [target...]` turned into a job definition with the
//! options and defaults of each command (docs/dcache-compatibility.md#job-options) and dCache's messages. Every invalid
//! value is refused here, before a job exists.

use tidepool_p2p::cmdline::OptionArg;
use tidepool_p2p::error::{MAX_ECHO, truncate_echo};
use tidepool_p2p::model::{ReplicaState, check_storage_class};
use tidepool_p2p::{JobId, PnfsId, PoolName};

use crate::MigrationError;
use crate::expr::{self, Expr};
use crate::filter::{FileFilter, Interval, parse_sticky};
use crate::mode::{SourceMode, TargetMode};
use crate::select::Strategy;

/// Which command created the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Copy,
    Move,
    Cache,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Copy => "copy",
            JobKind::Move => "move",
            JobKind::Cache => "cache",
        }
    }
}

/// `-order`: how the initial queue is sorted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Size { descending: bool },
    Lru { descending: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pins {
    Keep,
    Move,
}

/// Where the copies go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    Pools(Vec<PoolName>),
    /// Pool groups; empty means the source pool's own group.
    PoolGroups(Vec<String>),
    /// The pools of the pool groups of one link of the cluster file.
    Link(String),
    /// The pools attached to any of these HSM instances.
    Hsm(Vec<String>),
}

/// `-target-deficit-mode`: what a file gets when fewer targets can take it than replicas are
/// wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeficitMode {
    /// Wait (retry) until enough targets can take it.
    Wait,
    /// Make as many replicas as possible now, and note the shortfall. A destructive source
    /// mode (delete, removable) is never applied to such a file (dCache did,
    /// docs/dcache-compatibility.md#dcache-defects-not-reproduced).
    Limit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobDefinition {
    pub kind: JobKind,
    pub id: Option<JobId>,
    pub permanent: bool,
    pub filter: FileFilter,
    /// `None`: the module's default.
    pub concurrency: Option<usize>,
    pub order: Option<Order>,
    pub pins: Pins,
    pub smode: SourceMode,
    pub tmode: TargetMode,
    pub atime: bool,
    pub verify: bool,
    pub force_source_mode: bool,
    pub targets: Targets,
    pub select: Strategy,
    pub replicas: usize,
    pub eager: bool,
    pub meta_only: bool,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Seconds; `None`: the module's default.
    pub refresh: Option<u64>,
    /// `-rate`: bytes per second, 0 unlimited; `None`: not given (unlimited).
    pub rate: Option<u64>,
    /// Target filters (docs/dcache-compatibility.md#the-expression-language); `include_when` is ignored when
    /// `-include` is given.
    pub include_when: Option<Expr>,
    pub exclude_when: Option<Expr>,
    /// Lifetime conditions (docs/dcache-compatibility.md#scheduling).
    pub pause_when: Option<Expr>,
    pub stop_when: Option<Expr>,
    pub deficit: DeficitMode,
    /// `-seed`: the seed of the job's target choice (for testing, and to run a job as its dry
    /// run planned it, docs/admin-commands.md); `None`: a seed of the moment.
    pub seed: Option<u64>,
}

/// The options of one command line, as [`parse`] reads them (split and matched to their
/// declarations by [`crate::grammar`]). Flags take `-name`,
/// `-name=true` or `-name=false` (any case); list options may be repeated and hold commas.
pub struct Options<'a>(pub &'a [OptionArg]);

impl Options<'_> {
    /// `-name`, `-name=true|false`; the last one given counts.
    pub fn flag(&self, name: &str) -> Result<bool, MigrationError> {
        let mut result = false;
        for o in self.0.iter().filter(|o| o.name == name) {
            result = match o.value.as_deref() {
                None => true,
                Some(v) if v.eq_ignore_ascii_case("true") => true,
                Some(v) if v.eq_ignore_ascii_case("false") => false,
                Some(v) => {
                    return Err(MigrationError::invalid(format!(
                        "-{name} takes no value (or true/false), not {:?}",
                        truncate_echo(v, MAX_ECHO)
                    )));
                }
            };
        }
        Ok(result)
    }

    /// Every value given for `-name=...`, in order (a bare `-name` gives the empty string).
    pub fn values(&self, name: &str) -> Vec<String> {
        self.0.iter().filter(|o| o.name == name).map(|o| o.value.clone().unwrap_or_default()).collect()
    }

    /// The last value given for `-name`.
    pub fn last(&self, name: &str) -> Option<String> {
        self.0.iter().rev().find(|o| o.name == name).map(|o| o.value.clone().unwrap_or_default())
    }

    /// The values of a list option: every value given, split at commas, empty items dropped.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.values(name).iter().flat_map(|v| v.split(',')).filter(|s| !s.is_empty()).map(String::from).collect()
    }

    /// Whether the option was given at all.
    pub fn given(&self, name: &str) -> bool {
        self.0.iter().any(|o| o.name == name)
    }
}

/// Parses and type-checks an expression option; an error names the option and points at the
/// offending token of the expression.
fn expression(
    opts: &Options<'_>,
    name: &str,
    symbols: &dyn Fn(&str) -> Option<expr::Type>,
) -> Result<Option<Expr>, MigrationError> {
    match last(opts, name) {
        None => Ok(None),
        Some(text) => expr::parse_boolean(&text, symbols)
            .map(Some)
            .map_err(|e| MigrationError::invalid(format!("-{name}: {}", e.render(&text)))),
    }
}

/// An option's value as an error message repeats it.
fn echo(text: &str) -> std::borrow::Cow<'_, str> {
    truncate_echo(text, MAX_ECHO)
}

/// A value outside an option's fixed set, in dCache's words with the option and the set added.
fn invalid_choice(value: &str, option: &str, choices: &str) -> MigrationError {
    MigrationError::invalid(format!("{}: Invalid value for option -{option} (expected: {choices})", echo(value)))
}

fn last(opts: &Options<'_>, name: &str) -> Option<String> {
    opts.last(name)
}

fn list(opts: &Options<'_>, name: &str) -> Vec<String> {
    opts.list(name)
}

fn number<T: std::str::FromStr>(opts: &Options<'_>, name: &str) -> Result<Option<T>, MigrationError> {
    match last(opts, name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| MigrationError::invalid(format!("{}: Invalid value for option -{name}", echo(&v)))),
    }
}

/// Builds the definition from options read by [`crate::grammar`]; `targets` are the positional
/// arguments.
pub fn parse(kind: JobKind, opts: &Options<'_>, targets: &[String]) -> Result<JobDefinition, MigrationError> {
    let permanent = opts.flag("permanent")?;
    let order = match last(opts, "order") {
        None => None,
        Some(v) => Some(match v.as_str() {
            "size" => Order::Size { descending: false },
            "-size" => Order::Size { descending: true },
            "lru" => Order::Lru { descending: false },
            "-lru" => Order::Lru { descending: true },
            _ => return Err(MigrationError::invalid(format!("{}: Invalid value for option -order", echo(&v)))),
        }),
    };
    if permanent && order.is_some() {
        return Err(MigrationError::invalid("Permanent jobs cannot be ordered"));
    }
    if permanent && opts.given("stop-when") {
        return Err(MigrationError::invalid("Permanent jobs cannot have a stop condition."));
    }
    let include_when = expression(opts, "include-when", &expr::target_symbols)?;
    let exclude_when = expression(opts, "exclude-when", &expr::target_symbols)?;
    let pause_when = expression(opts, "pause-when", &expr::lifetime_symbols)?;
    let stop_when = expression(opts, "stop-when", &expr::lifetime_symbols)?;
    let deficit = match last(opts, "target-deficit-mode").as_deref() {
        None | Some("wait") => DeficitMode::Wait,
        Some("limit") => DeficitMode::Limit,
        Some(v) => return Err(invalid_choice(v, "target-deficit-mode", "wait or limit")),
    };
    let replicas = number::<i64>(opts, "replicas")?.unwrap_or(1);
    if replicas < 1 {
        return Err(MigrationError::invalid("Number of replicas must be positive."));
    }
    let concurrency = match number::<i64>(opts, "concurrency")? {
        Some(c) if c < 0 => return Err(MigrationError::invalid("Concurrency must not be negative.")),
        c => c.map(|c| c as usize),
    };
    let refresh = match number::<i64>(opts, "refresh")? {
        Some(r) if r < 1 => return Err(MigrationError::invalid("The refresh period must be at least 1 second.")),
        r => r.map(|r| r as u64),
    };
    let rate = match last(opts, "rate") {
        None => None,
        Some(v) => Some(v.parse::<crate::rate::ByteRate>().map_err(|e| MigrationError::invalid(format!("-{e}")))?.0),
    };
    let (default_smode, default_tmode, default_pins, default_on) = match kind {
        JobKind::Copy => ("same", "same", Pins::Keep, false),
        JobKind::Move => ("delete", "same", Pins::Move, true),
        JobKind::Cache => ("same", "cached", Pins::Keep, false),
    };
    let pins = match last(opts, "pins").as_deref() {
        None => default_pins,
        Some("keep") => Pins::Keep,
        Some("move") => Pins::Move,
        Some(v) => return Err(MigrationError::invalid(format!("{}: Invalid value for option -pins", echo(v)))),
    };
    let smode = SourceMode::parse(&last(opts, "smode").unwrap_or_else(|| default_smode.into()))?;
    let tmode = TargetMode::parse(&last(opts, "tmode").unwrap_or_else(|| default_tmode.into()))?;
    let flag_or = |name: &str, default: bool| -> Result<bool, MigrationError> {
        if opts.given(name) { opts.flag(name) } else { Ok(default) }
    };
    let select = match last(opts, "select").as_deref() {
        None | Some("proportional") => Strategy::Proportional,
        Some("random") => Strategy::Random,
        Some(v) => return Err(invalid_choice(v, "select", "proportional or random")),
    };
    let targets = match last(opts, "target").as_deref() {
        None | Some("pool") => {
            if targets.is_empty() {
                return Err(MigrationError::invalid("target(s) required when target type is pool"));
            }
            let pools = targets
                .iter()
                .map(|t| t.parse::<PoolName>().map_err(|e| MigrationError::invalid(e.to_string())))
                .collect::<Result<_, _>>()?;
            Targets::Pools(pools)
        }
        Some("pgroup") => Targets::PoolGroups(targets.to_vec()),
        Some("link") => match targets {
            [one] => Targets::Link(one.clone()),
            [] => return Err(MigrationError::invalid("target(s) required when target type is link")),
            many => {
                return Err(MigrationError::invalid(format!(
                    "[{}]: Only one target supported for -type=link",
                    many.join(", ")
                )));
            }
        },
        Some("hsm") => {
            if targets.is_empty() {
                return Err(MigrationError::invalid("target(s) required when target type is hsm"));
            }
            Targets::Hsm(targets.to_vec())
        }
        Some(v) => return Err(invalid_choice(v, "target", "pool, pgroup, link or hsm")),
    };
    let seed = number::<u64>(opts, "seed")?;
    let id = match last(opts, "id") {
        None => None,
        Some(v) => Some(v.parse::<JobId>().map_err(|e| MigrationError::invalid(e.to_string()))?),
    };
    Ok(JobDefinition {
        kind,
        id,
        permanent,
        filter: parse_filter(opts)?,
        concurrency,
        order,
        pins,
        smode,
        tmode,
        atime: flag_or("atime", default_on)?,
        verify: flag_or("verify", default_on)?,
        force_source_mode: opts.flag("force-source-mode")?,
        targets,
        select,
        replicas: replicas as usize,
        eager: opts.flag("eager")?,
        meta_only: opts.flag("meta-only")?,
        include: list(opts, "include"),
        exclude: list(opts, "exclude"),
        refresh,
        rate,
        include_when,
        exclude_when,
        pause_when,
        stop_when,
        deficit,
        seed,
    })
}

fn parse_filter(opts: &Options<'_>) -> Result<FileFilter, MigrationError> {
    let state = match last(opts, "state").as_deref() {
        None => None,
        Some("cached") => Some(ReplicaState::Cached),
        Some("precious") => Some(ReplicaState::Precious),
        Some(v) => return Err(invalid_choice(v, "state", "cached or precious")),
    };
    let pnfsids = if opts.given("pnfsid") {
        let ids = list(opts, "pnfsid")
            .iter()
            .map(|s| s.parse::<PnfsId>().map_err(|e| MigrationError::invalid(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        if ids.is_empty() {
            let given = opts.values("pnfsid").join(",");
            return Err(MigrationError::invalid(format!(
                "{}: Invalid value for option -pnfsid: no pnfsid given",
                echo(&given)
            )));
        }
        Some(ids)
    } else {
        None
    };
    // Sizes and seconds since the last access are never negative: a negative bound is a typo.
    let interval = |name: &str| -> Result<Option<Interval>, MigrationError> {
        let Some(v) = last(opts, name) else { return Ok(None) };
        let interval = Interval::parse(&v)
            .map_err(|_| MigrationError::invalid(format!("{}: Invalid interval for option -{name}", echo(&v))))?;
        if interval.min.is_some_and(|n| n < 0) || interval.max.is_some_and(|n| n < 0) {
            return Err(MigrationError::invalid(format!(
                "{}: Invalid interval for option -{name}: bounds must not be negative",
                echo(&v)
            )));
        }
        Ok(Some(interval))
    };
    let storage_class = last(opts, "storage");
    if let Some(class) = &storage_class {
        check_storage_class(class).map_err(|e| MigrationError::invalid(format!("-storage: {e}")))?;
    }
    Ok(FileFilter {
        state,
        storage_class,
        cache_class: if opts.given("cache") { Some(last(opts, "cache").unwrap_or_default()) } else { None },
        pnfsids,
        access_latency: last(opts, "al").map(|v| v.parse().map_err(MigrationError::invalid)).transpose()?,
        retention_policy: last(opts, "rp").map(|v| v.parse().map_err(MigrationError::invalid)).transpose()?,
        size: interval("size")?,
        accessed: interval("accessed")?,
        sticky: if opts.given("sticky") {
            Some(parse_sticky(&last(opts, "sticky").unwrap_or_default())?)
        } else {
            None
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::{SourceState, TargetState};

    /// Through the one grammar, as every caller reads a job (crate::grammar).
    fn ok(kind: JobKind, words: &[&str], targets: &[&str]) -> JobDefinition {
        crate::grammar::parse_words(kind, words, targets).unwrap_or_else(|e| panic!("{words:?}: {e}")).def
    }

    fn bad(kind: JobKind, words: &[&str], targets: &[&str]) -> String {
        crate::grammar::parse_words(kind, words, targets).unwrap_err().to_string()
    }

    #[test]
    fn defaults_differ_by_command_as_in_dcache() {
        let copy = ok(JobKind::Copy, &[], &["pool2"]);
        assert_eq!(
            (copy.smode.state, copy.tmode.state, copy.pins, copy.verify, copy.atime),
            (SourceState::Same, TargetState::Same, Pins::Keep, false, false)
        );
        let mv = ok(JobKind::Move, &[], &["pool2"]);
        assert_eq!(
            (mv.smode.state, mv.tmode.state, mv.pins, mv.verify, mv.atime),
            (SourceState::Delete, TargetState::Same, Pins::Move, true, true)
        );
        let cache = ok(JobKind::Cache, &[], &["pool2"]);
        assert_eq!(
            (cache.smode.state, cache.tmode.state, cache.pins),
            (SourceState::Same, TargetState::Cached, Pins::Keep)
        );
        assert_eq!(
            (copy.select, copy.replicas, copy.concurrency, copy.refresh),
            (Strategy::Proportional, 1, None, None)
        );
        let mv = ok(JobKind::Move, &["-verify=false", "-atime=false"], &["pool2"]);
        assert!(!mv.verify && !mv.atime);
    }

    #[test]
    fn options_are_read() {
        let d = ok(
            JobKind::Copy,
            &[
                "-id=drain",
                "-state=precious",
                "-storage=atlas:raw",
                "-cache=",
                "-pnfsid=0000A1B2C3D4E5F60718293A4B5C6D7E8F90,0000A1B2C3D4E5F60718293A4B5C6D7E8F91",
                "-al=nearline",
                "-rp=custodial",
                "-size=10..",
                "-accessed=..60",
                "-sticky=alice,-bob",
                "-concurrency=4",
                "-order=-size",
                "-smode=removable+sys(60)",
                "-tmode=precious",
                "-select=random",
                "-replicas=2",
                "-eager",
                "-exclude=pool9*",
                "-exclude=pool8",
                "-include=pool*",
                "-refresh=30",
                "-target=pgroup",
                "-seed=18446744073709551615",
            ],
            &["disk"],
        );
        assert_eq!(d.id.as_ref().map(|i| i.as_str()), Some("drain"));
        assert_eq!(d.seed, Some(u64::MAX));
        assert_eq!(ok(JobKind::Copy, &[], &["p"]).seed, None);
        assert_eq!(d.filter.state, Some(ReplicaState::Precious));
        assert_eq!(d.filter.cache_class, Some(String::new()));
        assert_eq!(d.filter.pnfsids.as_ref().map(|v| v.len()), Some(2));
        assert_eq!(d.order, Some(Order::Size { descending: true }));
        assert_eq!(d.exclude, vec!["pool9*", "pool8"]);
        assert_eq!(d.targets, Targets::PoolGroups(vec!["disk".into()]));
        assert_eq!((d.concurrency, d.replicas, d.eager, d.refresh), (Some(4), 2, true, Some(30)));
        assert_eq!(ok(JobKind::Copy, &["-target=pgroup"], &[]).targets, Targets::PoolGroups(vec![]));
    }

    #[test]
    fn invalid_values_are_refused_with_dcaches_messages() {
        let table: &[(&[&str], &[&str], &str)] = &[
            (&["-state=broken"], &["p"], "broken: Invalid value for option -state (expected: cached or precious)"),
            (&["-order=age"], &["p"], "age: Invalid value for option -order"),
            (&["-pins=drop"], &["p"], "drop: Invalid value for option -pins"),
            (&["-replicas=0"], &["p"], "Number of replicas must be positive."),
            (&["-replicas=x"], &["p"], "x: Invalid value for option -replicas"),
            (&["-seed=x"], &["p"], "x: Invalid value for option -seed"),
            (&["-seed=-1"], &["p"], "-1: Invalid value for option -seed"),
            (&["-permanent", "-order=size"], &["p"], "Permanent jobs cannot be ordered"),
            (&[], &[], "target(s) required when target type is pool"),
            (&["-tmode=delete"], &["p"], "delete: Invalid value"),
            (&["-smode=same+x(-2)"], &["p"], "-2: Invalid lifetime"),
            (&["-size=5..1"], &["p"], "5..1: Invalid interval for option -size"),
            (&["-select=best"], &["p"], "best: Invalid value for option -select (expected: proportional or random)"),
            (&["-target=cell"], &["p"], "cell: Invalid value for option -target (expected: pool, pgroup, link or hsm)"),
            (&["-target=link"], &["l", "m"], "[l, m]: Only one target supported for -type=link"),
            (&["-target=hsm"], &[], "target(s) required when target type is hsm"),
            (&["-permanent", "-stop-when=true"], &["p"], "Permanent jobs cannot have a stop condition."),
            (
                &["-stop-when=queue.files"],
                &["p"],
                "-stop-when: the expression must be a condition (BOOLEAN), found NUMBER\n  queue.files\n  ^",
            ),
            (
                &["-include-when=target.colour == 1"],
                &["p"],
                "-include-when: unknown symbol `target.colour`\n  target.colour == 1\n  ^",
            ),
            (
                &["-pause-when=target.free > 0"],
                &["p"],
                "-pause-when: unknown symbol `target.free`\n  target.free > 0\n  ^",
            ),
            (
                &["-target-deficit-mode=some"],
                &["p"],
                "some: Invalid value for option -target-deficit-mode (expected: wait or limit)",
            ),
            (&["-concurrency=-1"], &["p"], "Concurrency must not be negative."),
            (&["-refresh=0"], &["p"], "The refresh period must be at least 1 second."),
            (&[], &["pool/2"], "\"pool/2\" is not a valid pool name: may hold only letters, digits, '_', '-' and '.'"),
            (&["-pnfsid=xyz"], &["p"], "\"xyz\" is not a valid pnfsid: must be 24 or 36 hex digits"),
            // Values that select everything or nothing by accident (a typo in a `migration move`
            // must not move every replica).
            (&["-sticky=,"], &["p"], ",: Invalid value for option -sticky: no owner given"),
            (&["-sticky=-"], &["p"], "-: Invalid value for option -sticky: '-' must be followed by an owner"),
            (&["-size=-5"], &["p"], "-5: Invalid interval for option -size: bounds must not be negative"),
            (&["-size=-5..10"], &["p"], "-5..10: Invalid interval for option -size: bounds must not be negative"),
            (&["-accessed=..-1"], &["p"], "..-1: Invalid interval for option -accessed: bounds must not be negative"),
            (&["-accessed=1k"], &["p"], "1k: Invalid interval for option -accessed"),
            (&["-pnfsid=,,"], &["p"], ",,: Invalid value for option -pnfsid: no pnfsid given"),
            (&["-pnfsid="], &["p"], ": Invalid value for option -pnfsid: no pnfsid given"),
            (&["-storage=a\nb"], &["p"], "-storage: storage class \"a\\nb\" holds a control character"),
        ];
        for (words, targets, msg) in table {
            assert_eq!(bad(JobKind::Copy, words, targets), *msg, "{words:?} {targets:?}");
        }
        let long = format!("-storage={}", "s".repeat(60_000));
        let msg = bad(JobKind::Move, &[&long], &["p"]);
        assert!(msg.starts_with("-storage: storage class too long: 60000 bytes, at most 256 (sss"), "{msg}");
        assert!(msg.len() < 200, "the message does not repeat the whole value: {} bytes", msg.len());
    }

    /// The values next to the refused ones are still taken.
    #[test]
    fn good_filter_values_are_still_taken() {
        let d = ok(JobKind::Move, &["-sticky=alice,", "-size=0..", "-accessed=0", "-storage=atlas:raw"], &["p"]);
        assert_eq!(d.filter.size, Some(Interval { min: Some(0), max: None }));
        assert_eq!(d.filter.accessed, Some(Interval { min: Some(0), max: Some(0) }));
        assert_eq!(d.filter.storage_class.as_deref(), Some("atlas:raw"));
        assert!(matches!(d.filter.sticky, Some(crate::filter::StickyFilter::Owners { .. })));
        let d = ok(JobKind::Move, &["-sticky", "-size=..", "-pnfsid=0000A1B2C3D4E5F60718293A4B5C6D7E8F90,"], &["p"]);
        assert_eq!(d.filter.sticky, Some(crate::filter::StickyFilter::Any));
        assert_eq!(d.filter.pnfsids.map(|v| v.len()), Some(1));
        let max = format!("-storage={}", "s".repeat(tidepool_p2p::model::MAX_STORAGE_CLASS));
        assert!(ok(JobKind::Copy, &[&max], &["p"]).filter.storage_class.is_some());
    }
}
