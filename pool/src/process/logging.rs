//! The daemon's log: its format (text or JSON lines), its filter (which levels each target
//! logs), and the run-time control behind `log set` and `log ls` and SIGHUP.
//!
//! A filter is a comma-separated list of directives, each `LEVEL` (the level of every target
//! not named) or `TARGET=LEVEL` (a Rust module path and what is below it, e.g.
//! `tidepool_pool::transfer=debug`). The syntax is the simple half of `RUST_LOG`'s, checked
//! strictly: a word that is not a level is refused rather than read as a target (with
//! `tracing-subscriber` alone, `RUST_LOG=verbose` silences everything but a target named
//! `verbose`), and span or field directives are refused so that `log ls` always shows the
//! whole filter.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// The filter used when neither `--log-filter`, `RUST_LOG` nor the config's `[log] filter`
/// names one: Tidepool's own crates at info, every dependency (sled above all) at warn. In
/// canonical form (targets sorted), as `log ls` shows it.
pub const DEFAULT_FILTER: &str =
    "warn,tidepool=info,tidepool_admin=info,tidepool_migration=info,tidepool_p2p=info,tidepool_pool=info";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line (`tracing-subscriber`'s JSON format).
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// A log level, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

const LEVELS: &str = "off, error, warn, info, debug, trace";

impl FromStr for Level {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Level, FilterError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "off" => Level::Off,
            "error" => Level::Error,
            "warn" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            "trace" => Level::Trace,
            _ => return Err(FilterError::UnknownLevel(s.to_string())),
        })
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Off => "off",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        })
    }
}

/// What `log set` changes: every target, or one target and what is below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    All,
    Target(String),
}

impl FromStr for LogTarget {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<LogTarget, FilterError> {
        if s == "all" {
            return Ok(LogTarget::All);
        }
        let valid = !s.is_empty()
            && s.split("::")
                .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if valid { Ok(LogTarget::Target(s.to_string())) } else { Err(FilterError::BadTarget(s.to_string())) }
    }
}

/// Why a filter, a level or a target is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("the filter is empty; write a level such as info, or TARGET=LEVEL directives")]
    Empty,
    #[error("'{0}' is not a level (levels: {LEVELS}); a target needs one, as in tidepool_pool=debug")]
    UnknownLevel(String),
    #[error("'{0}' is not a target: a target is `all` or a Rust module path such as tidepool_pool::transfer")]
    BadTarget(String),
    #[error("'{0}': only LEVEL and TARGET=LEVEL directives are supported (no spans or fields)")]
    Unsupported(String),
}

/// A filter: the level of every target not named, and the levels of named targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLevels {
    pub default: Level,
    pub targets: BTreeMap<String, Level>,
}

impl FromStr for LogLevels {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<LogLevels, FilterError> {
        let mut levels = LogLevels { default: Level::Error, targets: BTreeMap::new() };
        let mut any = false;
        for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            any = true;
            if directive.contains(['[', ']', '{', '}']) {
                return Err(FilterError::Unsupported(directive.to_string()));
            }
            match directive.split_once('=') {
                None => levels.default = directive.parse()?,
                Some((target, level)) => {
                    let level = level.trim().parse()?;
                    match target.trim().parse()? {
                        LogTarget::All => levels.default = level,
                        LogTarget::Target(t) => {
                            levels.targets.insert(t, level);
                        }
                    }
                }
            }
        }
        if !any {
            return Err(FilterError::Empty);
        }
        Ok(levels)
    }
}

impl fmt::Display for LogLevels {
    /// The canonical filter text: the default level, then each target in order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.default)?;
        for (target, level) in &self.targets {
            write!(f, ",{target}={level}")?;
        }
        Ok(())
    }
}

impl LogLevels {
    /// `log set`: `all` sets every level (the named targets are forgotten); a target sets its
    /// own, which also covers the targets below it that have none.
    pub fn set(&mut self, target: &LogTarget, level: Level) {
        match target {
            LogTarget::All => {
                self.default = level;
                self.targets.clear();
            }
            LogTarget::Target(t) => {
                self.targets.insert(t.clone(), level);
            }
        }
    }

    /// The `tracing-subscriber` filter.
    pub fn env_filter(&self) -> EnvFilter {
        EnvFilter::builder()
            .with_regex(false)
            .parse(self.to_string())
            .expect("a checked filter in canonical form always parses")
    }
}

/// Where the filter in force came from at start, which decides what SIGHUP may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterSource {
    /// `--log-filter` on the command line: SIGHUP leaves the levels alone.
    Flag,
    /// `RUST_LOG`: SIGHUP leaves the levels alone.
    Env,
    /// The config file's `[log] filter`: SIGHUP applies it again if it changed.
    Config,
    /// [`DEFAULT_FILTER`]: SIGHUP applies the config's filter if one was added.
    Default,
}

impl fmt::Display for FilterSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FilterSource::Flag => "--log-filter",
            FilterSource::Env => "RUST_LOG",
            FilterSource::Config => "the config's [log] filter",
            FilterSource::Default => "the default filter",
        })
    }
}

/// The filter in force, changed at run time by `log set` and SIGHUP.
pub struct LogControl {
    apply: Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>,
    state: Mutex<ControlState>,
}

struct ControlState {
    levels: LogLevels,
    source: FilterSource,
    /// The config's filter as last read (start or SIGHUP), to see whether it changed.
    config: LogLevels,
}

/// What a SIGHUP did to the levels.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The config's filter changed and is now in force (the old and new filters).
    Applied { from: String, to: String },
    /// The config's filter did not change; the levels (with any `log set`) stay.
    Unchanged,
    /// The filter came from the command line or `RUST_LOG`, which win over the config.
    Overridden(FilterSource),
}

impl LogControl {
    /// `apply` installs a new filter (a `tracing-subscriber` reload handle). `config` is the
    /// config file's filter (or the default) as read at start.
    pub fn new(
        levels: LogLevels,
        source: FilterSource,
        config: LogLevels,
        apply: impl Fn(EnvFilter) -> Result<(), String> + Send + Sync + 'static,
    ) -> Arc<LogControl> {
        Arc::new(LogControl { apply: Box::new(apply), state: Mutex::new(ControlState { levels, source, config }) })
    }

    /// The levels in force.
    pub fn levels(&self) -> LogLevels {
        self.state.lock().levels.clone()
    }

    /// `log set`: changes one level (or all) until the next `log set`, a SIGHUP that brings a
    /// changed config filter, or a restart.
    pub fn set(&self, target: &LogTarget, level: Level) -> Result<LogLevels, String> {
        let mut state = self.state.lock();
        let mut levels = state.levels.clone();
        levels.set(target, level);
        (self.apply)(levels.env_filter())?;
        state.levels = levels.clone();
        Ok(levels)
    }

    /// SIGHUP: the config's filter as read again (or the default if it names none).
    pub fn reload(&self, config: LogLevels) -> Result<Reloaded, String> {
        let mut state = self.state.lock();
        if matches!(state.source, FilterSource::Flag | FilterSource::Env) {
            state.config = config;
            return Ok(Reloaded::Overridden(state.source));
        }
        if config == state.config {
            return Ok(Reloaded::Unchanged);
        }
        (self.apply)(config.env_filter())?;
        let from = state.levels.to_string();
        state.levels = config.clone();
        state.config = config;
        state.source = FilterSource::Config;
        Ok(Reloaded::Applied { from, to: state.levels.to_string() })
    }

    /// Where the filter in force at start came from.
    pub fn source(&self) -> FilterSource {
        self.state.lock().source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, want: &str) {
        let levels: LogLevels = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(levels.to_string(), want, "{text:?}");
        // The canonical form reads back the same, and tracing-subscriber takes it.
        assert_eq!(want.parse::<LogLevels>().unwrap(), levels);
        let _ = levels.env_filter();
    }

    fn check_err(text: &str, want: FilterError) {
        assert_eq!(text.parse::<LogLevels>(), Err(want), "{text:?}");
    }

    #[test]
    fn filters() {
        check(DEFAULT_FILTER, DEFAULT_FILTER);
        check("info", "info");
        check("DEBUG", "debug");
        check(" warn , tidepool_pool::transfer = debug ", "warn,tidepool_pool::transfer=debug");
        check("tidepool_pool=debug", "error,tidepool_pool=debug");
        check("all=trace,sled=off", "trace,sled=off");
        check("info,warn", "warn");
        check("a=info,a=debug", "error,a=debug");
    }

    #[test]
    fn bad_filters_are_refused_with_what_is_wrong() {
        check_err("verbose", FilterError::UnknownLevel("verbose".into()));
        check_err("tidepool_pool", FilterError::UnknownLevel("tidepool_pool".into()));
        check_err("info,tidepool=loud", FilterError::UnknownLevel("loud".into()));
        check_err("", FilterError::Empty);
        check_err(" , ", FilterError::Empty);
        check_err("a b=info", FilterError::BadTarget("a b".into()));
        check_err("=info", FilterError::BadTarget("".into()));
        check_err("x::=info", FilterError::BadTarget("x::".into()));
        check_err("tidepool[pool]=debug", FilterError::Unsupported("tidepool[pool]=debug".into()));
        let msg = FilterError::UnknownLevel("verbose".into()).to_string();
        assert!(msg.contains("'verbose' is not a level") && msg.contains("debug, trace"), "{msg}");
    }

    #[test]
    fn set_one_target_or_all() {
        let mut l: LogLevels = DEFAULT_FILTER.parse().unwrap();
        l.set(&"tidepool_pool::transfer".parse().unwrap(), Level::Debug);
        assert_eq!(l.targets["tidepool_pool::transfer"], Level::Debug);
        assert_eq!(l.targets["tidepool_pool"], Level::Info);
        l.set(&LogTarget::All, Level::Error);
        assert_eq!(l.to_string(), "error");
        assert!("a b".parse::<LogTarget>().is_err());
        assert_eq!("all".parse::<LogTarget>().unwrap(), LogTarget::All);
    }

    #[test]
    fn reload_applies_a_changed_config_filter_only() {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let seen = applied.clone();
        let default: LogLevels = DEFAULT_FILTER.parse().unwrap();
        let control = LogControl::new(default.clone(), FilterSource::Default, default.clone(), move |f| {
            seen.lock().push(f.to_string());
            Ok(())
        });
        control.set(&LogTarget::Target("sled".into()), Level::Info).unwrap();
        assert_eq!(control.reload(default.clone()).unwrap(), Reloaded::Unchanged);
        assert_eq!(control.levels().targets["sled"], Level::Info, "log set survives an unchanged config");
        let debug: LogLevels = "info,tidepool_pool=debug".parse().unwrap();
        assert_eq!(
            control.reload(debug.clone()).unwrap(),
            Reloaded::Applied { from: DEFAULT_FILTER.replace("warn,", "warn,sled=info,"), to: debug.to_string() }
        );
        assert_eq!(control.levels(), debug);
        assert_eq!(applied.lock().len(), 2);

        let env = LogControl::new(debug.clone(), FilterSource::Env, default.clone(), |_| Ok(()));
        assert_eq!(env.reload(debug.clone()).unwrap(), Reloaded::Overridden(FilterSource::Env));
        assert_eq!(env.levels(), debug);
    }
}
