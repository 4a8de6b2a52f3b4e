//! The grammar of a job's command line, `migration copy|move|cache [options] [target...]`: the
//! options (name, value form, help), how words become options and targets, and the stored form
//! a saved job is written in and read back from. Every way a job is made from words goes
//! through here: the admin command (which takes its declaration and help from
//! [`JOB_OPTIONS`]), the restore of saved jobs at start, and the tests and simulator.
//! [`crate::definition`] gives the values their meaning.
//!
//! Errors about a token (an unknown option, a flag with a value, a value missing, a quote left
//! open, `-json` without `-dry-run`) carry its byte offset; an invalid value or combination
//! carries none, as the module's messages name the value themselves.

use tidepool_p2p::cmdline::{self, Args, OptionArg, OptionProblem, check_option, command_line};
pub use tidepool_p2p::cmdline::{OptionSpec, OptionValue};
use tidepool_p2p::error::{MAX_ECHO, truncate_echo};

use crate::MigrationError;
pub use crate::definition::Options;
use crate::definition::{self, JobDefinition, JobKind};

const fn flag(name: &'static str, help: &'static str) -> OptionSpec {
    OptionSpec { name, value: OptionValue::Flag, help }
}

const fn valued(name: &'static str, v: &'static str, help: &'static str) -> OptionSpec {
    OptionSpec { name, value: OptionValue::Required(v), help }
}

/// The options of `migration copy|move|cache` (docs/dcache-compatibility.md#job-options); the three commands differ
/// only in their defaults (docs/dcache-compatibility.md#job-options), which each option's help names.
pub static JOB_OPTIONS: &[OptionSpec] = &[
    valued(
        "id",
        "id",
        "job id (default: the next free number); a FINISHED, FAILED or CANCELLED job of that id is replaced",
    ),
    flag(
        "permanent",
        "keep running: also migrate replicas that arrive or change later (not with -order or -stop-when)",
    ),
    valued("state", "cached|precious", "only replicas in this state (default: both)"),
    valued("storage", "class", "only replicas of exactly this storage class"),
    valued("cache", "class", "only replicas of exactly this cache class; -cache= selects those without one"),
    valued("pnfsid", "pnfsid[,pnfsid...]", "only these files"),
    valued("al", "online|nearline", "only replicas with this access latency"),
    valued("rp", "custodial|replica|output", "only replicas with this retention policy"),
    valued(
        "size",
        "n|[n]..[m]",
        "only replicas of exactly n bytes, or in the closed range (n.. at least n, ..m at most m)",
    ),
    valued(
        "accessed",
        "n|[n]..[m]",
        "only replicas last accessed that many seconds ago (..60: in the last minute; 60..: not in it)",
    ),
    OptionSpec {
        name: "sticky",
        value: OptionValue::Optional("[-]owner[,...]"),
        help: "bare: only sticky replicas; with owners: each owner must have a record, and -owner must have none",
    },
    valued(
        "concurrency",
        "n",
        "files transferred at once (default: the pool's, see `migration get concurrency-default`)",
    ),
    valued(
        "order",
        "[-]size|[-]lru",
        "sort the initial queue by size or by last access, least recent first; '-' reverses (default: none)",
    ),
    valued(
        "pins",
        "keep|move",
        "after a copy, keep the pins on the source or move them to the target (default: keep; move for move)",
    ),
    valued(
        "smode",
        "same|cached|precious|removable|delete[+owner[(lifetime)]]...",
        "what becomes of the source replica after success; +owner(seconds) adds a sticky record, -1 or none for ever (default: same; delete for move)",
    ),
    valued(
        "tmode",
        "same|cached|precious[+owner[(lifetime)]]...",
        "the target replica's state (same: the source's) and sticky records (default: same; cached for cache)",
    ),
    flag("atime", "give a new target replica the source's last access time (default: off; on for move)"),
    flag(
        "verify",
        "have the target verify the checksum of an existing replica before it is reused (default: off; on for move)",
    ),
    flag("force-source-mode", "copy even if this pool is disabled for fetch"),
    valued(
        "target",
        "pool|pgroup|link|hsm",
        "the targets are pools; pool groups (none named: this pool's own group); the pool groups of one link; or the pools attached to the named HSMs (default: pool)",
    ),
    valued(
        "select",
        "proportional|random",
        "how the target of a new copy is chosen: weighted by free space and load, or uniformly (default: proportional)",
    ),
    valued("replicas", "n", "replicas wanted on distinct target pools, existing ones counted (default: 1)"),
    flag(
        "eager",
        "if a target holding a replica does not answer, copy elsewhere instead of waiting; ignore offline pools' replicas",
    ),
    flag("meta-only", "create no new replica, only update existing ones on the targets (others are skipped)"),
    valued("include", "glob[,glob...]", "only target pools whose name matches a glob (* and ?)"),
    valued("exclude", "glob[,glob...]", "no target pool whose name matches a glob; this pool is always excluded"),
    valued(
        "refresh",
        "seconds",
        "how often the targets' space and load are fetched again (default: `migration get refresh-default`, 300 unless configured)",
    ),
    valued(
        "rate",
        "bytes/s",
        "the most bytes per second the job's transfers send together, with a unit (50M, 1Gi; at least 64Ki), 0 for unlimited (default: 0); `migration set rate` changes it",
    ),
    valued(
        "include-when",
        "expression",
        "only target pools for which the expression holds; symbols source.* and target.* (name cpuCost free total removable used), time.hour, time.weekday (default: true; ignored with -include)",
    ),
    valued(
        "exclude-when",
        "expression",
        "no target pool for which the expression holds; symbols as -include-when (default: false)",
    ),
    valued(
        "pause-when",
        "expression",
        "start no new task while the expression holds (PAUSED, checked every 10 s); symbols source.*, queue.files, queue.bytes, targets, time.hour, time.weekday",
    ),
    valued(
        "stop-when",
        "expression",
        "when the expression holds, start no new task and finish once the running ones end (STOPPING); symbols as -pause-when; not with -permanent",
    ),
    flag(
        "dry-run",
        "create no job: print the plan (files selected, where each would go, what is in place, skipped or not placed, and why); nothing is transferred or changed",
    ),
    valued(
        "seed",
        "n",
        "seed of the target choice, for testing and to run a job as its dry run planned it (default: a seed of the moment; a dry run prints the one it used)",
    ),
    flag("json", "with -dry-run: the plan as one JSON document (schema: docs/json.md)"),
    valued(
        "target-deficit-mode",
        "wait|limit",
        "with fewer usable targets than -replicas: wait for more, or make as many copies as possible now and note the shortfall; limit never deletes or releases a source short of its copies (default: wait)",
    ),
];

/// A job's command line read: the definition, whether it asked for a dry run (and its JSON
/// form), and the command as the job stores it (without the dry run's options).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobLine {
    pub def: JobDefinition,
    pub dry_run: bool,
    pub json: bool,
    /// The stored form ([`cmdline::command_line`]): `migration <kind> -name=value... -- target...`.
    pub command: String,
}

/// What kind of mistake a [`GrammarError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrammarErrorKind {
    /// The words do not form a job command (lexing, an unknown option, a missing value).
    Syntax,
    /// A value or combination is invalid.
    Invalid,
}

/// A job line that cannot be read, with why and, where one token is to blame, its byte offset.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GrammarError {
    pub kind: GrammarErrorKind,
    pub offset: Option<usize>,
    pub message: String,
}

impl GrammarError {
    fn syntax(offset: usize, message: impl Into<String>) -> Self {
        GrammarError { kind: GrammarErrorKind::Syntax, offset: Some(offset), message: message.into() }
    }

    fn invalid(offset: Option<usize>, message: impl Into<String>) -> Self {
        GrammarError { kind: GrammarErrorKind::Invalid, offset, message: message.into() }
    }
}

impl From<MigrationError> for GrammarError {
    fn from(e: MigrationError) -> Self {
        GrammarError::invalid(None, e.to_string())
    }
}

/// A job of `kind` from options already matched to [`JOB_OPTIONS`] (the admin layer matches
/// them with the other commands' options, with its own "did you mean") and the targets.
pub fn job(kind: JobKind, options: &[OptionArg], targets: &[String]) -> Result<JobLine, GrammarError> {
    let opts = Options(options);
    let (dry_run, json) = (opts.flag("dry-run")?, opts.flag("json")?);
    if json && !dry_run {
        let at = options.iter().rev().find(|o| o.name == "json").map_or(0, |o| o.offset);
        return Err(GrammarError::invalid(
            Some(at),
            "-json only goes with -dry-run (a new job's reply is its summary line)",
        ));
    }
    let def = definition::parse(kind, &opts, targets)?;
    // The job's command as the real job stores it: without the options of the dry run.
    let stored: Vec<OptionArg> = options.iter().filter(|o| o.name != "dry-run" && o.name != "json").cloned().collect();
    let command = command_line(&format!("migration {}", kind.as_str()), &stored, targets);
    Ok(JobLine { def, dry_run, json, command })
}

/// Options and targets, split, checked against [`JOB_OPTIONS`] and read.
fn job_args(kind: JobKind, args: Args) -> Result<JobLine, GrammarError> {
    for o in &args.options {
        if let Err(problem) = check_option(JOB_OPTIONS, o) {
            let decl = JOB_OPTIONS.iter().find(|d| d.name == o.name);
            let message = problem.message(decl, o).unwrap_or_else(|| {
                format!(
                    "unknown option -{}; `help migration {}` lists its {} options",
                    truncate_echo(&o.name, MAX_ECHO),
                    kind.as_str(),
                    JOB_OPTIONS.len()
                )
            });
            return Err(match problem {
                OptionProblem::NotAFlagValue => GrammarError::invalid(Some(o.offset), message),
                OptionProblem::Unknown | OptionProblem::NeedsValue => GrammarError::syntax(o.offset, message),
            });
        }
    }
    let targets: Vec<String> = args.positional.into_iter().map(|t| t.text).collect();
    job(kind, &args.options, &targets)
}

/// The part of a command line after `migration <kind>`: options and targets as the admin shell
/// would take them (quotes, escapes, `--`). Offsets are into `text`.
pub fn parse_args(kind: JobKind, text: &str) -> Result<JobLine, GrammarError> {
    let args = Args::parse(text).map_err(|e| GrammarError::syntax(e.offset, e.message))?;
    job_args(kind, args)
}

/// Words already split, one option or target each (as a test writes them: `-stop-when=a > b`
/// is one word), then the targets. Offsets count as if the words were joined by spaces.
pub fn parse_words(kind: JobKind, words: &[&str], targets: &[&str]) -> Result<JobLine, GrammarError> {
    let all: Vec<&str> = words.iter().copied().chain(["--"]).chain(targets.iter().copied()).collect();
    job_args(kind, Args::from_words(&all))
}

/// A whole stored command line, `migration copy|move|cache ...`, as a saved job holds it
/// ([`JobLine::command`]). Offsets are into `line`.
pub fn parse_command(line: &str) -> Result<JobLine, GrammarError> {
    let tokens = cmdline::tokenize(line).map_err(|e| GrammarError::syntax(e.offset, e.message))?;
    let kind = match tokens.iter().take(2).map(|t| t.text.as_str()).collect::<Vec<_>>()[..] {
        ["migration", "copy"] => JobKind::Copy,
        ["migration", "move"] => JobKind::Move,
        ["migration", "cache"] => JobKind::Cache,
        _ => return Err(GrammarError::syntax(0, "not a migration copy, move or cache command")),
    };
    job_args(kind, Args::from_tokens(tokens.into_iter().skip(2).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_way_in_reads_the_same_job() {
        let line = "migration move -id=drain -include-when='target.free > 0' -sticky -cache= -- pool\\-2 pool3";
        let stored = parse_command(line).unwrap();
        let from_args =
            parse_args(JobKind::Move, "-id=drain -include-when='target.free > 0' -sticky -cache= -- pool-2 pool3")
                .unwrap();
        let from_words = parse_words(
            JobKind::Move,
            &["-id=drain", "-include-when=target.free > 0", "-sticky", "-cache="],
            &["pool-2", "pool3"],
        )
        .unwrap();
        assert_eq!(stored, from_args);
        assert_eq!(stored, from_words);
        assert_eq!(parse_command(&stored.command).unwrap(), stored, "the stored form reads back to the same job");
        assert_eq!(stored.def.filter.cache_class.as_deref(), Some(""));
    }

    #[test]
    fn mistakes_point_at_the_token() {
        let table: &[(&str, GrammarErrorKind, Option<&str>, &str)] = &[
            (
                "-frobnicate p",
                GrammarErrorKind::Syntax,
                Some("-frobnicate"),
                "unknown option -frobnicate; `help migration copy` lists its 36 options",
            ),
            ("-storage p", GrammarErrorKind::Syntax, Some("-storage"), "option -storage needs a value"),
            ("-eager=yes p", GrammarErrorKind::Invalid, Some("-eager"), "-eager takes no value"),
            ("-json p", GrammarErrorKind::Invalid, Some("-json"), "-json only goes with -dry-run"),
            ("-pnfsid=\"x p", GrammarErrorKind::Syntax, Some("\""), "unterminated quote"),
            ("-replicas=0 p", GrammarErrorKind::Invalid, None, "Number of replicas must be positive."),
        ];
        for (text, kind, at, message) in table {
            let e = parse_args(JobKind::Copy, text).unwrap_err();
            assert_eq!((e.kind, e.offset), (*kind, at.map(|a| text.find(a).unwrap())), "{text}: {e:?}");
            assert!(e.message.starts_with(message), "{text}: {e:?}");
        }
        let e = parse_command("migration rebalance -x").unwrap_err();
        assert_eq!((e.kind, e.offset), (GrammarErrorKind::Syntax, Some(0)));
    }

    #[test]
    fn the_dry_run_options_are_not_stored() {
        let l = parse_args(JobKind::Copy, "-dry-run -json=TRUE -seed=4 p").unwrap();
        assert!(l.dry_run && l.json);
        assert_eq!(l.command, "migration copy -seed=4 -- p");
    }
}
