//! How admin commands are declared and how a line is matched against the declarations. Parsing
//! is pure: a line becomes a typed [`super::Command`] or a [`ParseError`] that points at the
//! offending token. Help and completion are generated from the same declarations.

use tidepool_p2p::ErrorCode;
use tidepool_p2p::cmdline::{self, Args, OptionArg, OptionProblem, Token, check_option};
pub use tidepool_p2p::cmdline::{OptionSpec, OptionValue, command_line};
use tidepool_p2p::error::{MAX_ECHO, truncate_echo};

use tidepool_p2p::message::{ArgDetail, CommandDetail, OptionDetail, Takes, Values, line_too_long};

use super::Command;

/// One admin command's declaration.
pub struct CommandSpec {
    /// The command words, e.g. `rep set sticky`.
    pub name: &'static str,
    /// Positional arguments in usage notation, e.g. `<pnfsid> on|off`.
    pub args: &'static str,
    /// One line of help.
    pub summary: &'static str,
    /// Further paragraphs for `help <command>`.
    pub details: &'static str,
    pub options: &'static [OptionSpec],
    /// Lines that must parse; they are run as tests.
    pub examples: &'static [&'static str],
    pub parse: fn(&Invocation<'_>) -> Result<Command, ParseError>,
}

impl CommandSpec {
    pub fn usage(&self) -> String {
        self.usage_items().join(" ")
    }

    /// The name, each option in brackets, and the arguments: the pieces of the synopsis, which
    /// a wrapped synopsis never breaks.
    fn usage_items(&self) -> Vec<String> {
        let mut items = vec![self.name.to_string()];
        for o in self.options {
            items.push(match o.value {
                OptionValue::Flag => format!("[-{}]", o.name),
                OptionValue::Required(v) => format!("[-{}={v}]", o.name),
                OptionValue::Optional(v) => format!("[-{}[={v}]]", o.name),
            });
        }
        if !self.args.is_empty() {
            items.push(self.args.to_string());
        }
        items
    }

    /// What the shell's completion needs to know about this command, read from this
    /// declaration alone (so a new option or argument needs nothing on the shell's side):
    /// each option's value form (see [`form_values`]) and each argument's kind (see
    /// [`arg_details`]).
    pub fn detail(&self) -> CommandDetail {
        CommandDetail {
            name: self.name.to_string(),
            summary: self.summary.to_string(),
            options: self
                .options
                .iter()
                .map(|o| {
                    let (takes, values) = match o.value {
                        OptionValue::Flag => (Takes::Flag, Values::Free),
                        OptionValue::Required(form) => (Takes::Required, form_values(form)),
                        OptionValue::Optional(form) => (Takes::Optional, form_values(form)),
                    };
                    OptionDetail { name: o.name.to_string(), takes, values }
                })
                .collect(),
            args: arg_details(self.args, self.options),
        }
    }

    /// The name and arguments, for the command list.
    pub fn usage_short(&self) -> String {
        let opts = if self.options.is_empty() { "" } else { " [options]" };
        let args = if self.args.is_empty() { String::new() } else { format!(" {}", self.args) };
        format!("{}{opts}{args}", self.name)
    }

    /// The text of `help <command>`.
    pub fn help(&self) -> String {
        let mut s = String::from("NAME\n");
        let title = [self.name, "--"].into_iter().chain(self.summary.split_whitespace());
        s.push_str(&wrap(title, "    ", "        "));
        s.push_str("\nSYNOPSIS\n");
        let items = self.usage_items();
        // Continuation lines line up under the first option, unless an option would not fit there.
        let widest = items.iter().map(|i| i.chars().count()).max().unwrap_or(0);
        let under = 4 + self.name.len() + 1;
        let hang = " ".repeat(if under + widest <= HELP_WIDTH { under } else { 8 });
        s.push_str(&wrap(items.iter().map(String::as_str), "    ", &hang));
        if !self.details.is_empty() {
            s.push_str("\nDESCRIPTION\n");
            s.push_str(&details_text(self.details));
        }
        if !self.options.is_empty() {
            s.push_str("\nOPTIONS\n");
            for o in self.options {
                let head = match o.value {
                    OptionValue::Flag => format!("-{}", o.name),
                    OptionValue::Required(v) => format!("-{}={v}", o.name),
                    OptionValue::Optional(v) => format!("-{}[={v}]", o.name),
                };
                s.push_str(&format!("    {head}\n"));
                s.push_str(&wrap(o.help.split_whitespace(), "        ", "        "));
            }
        }
        if !self.examples.is_empty() {
            s.push_str("\nEXAMPLES\n");
            for e in self.examples {
                s.push_str(&format!("    {e}\n"));
            }
        }
        s
    }
}

/// The words a value form offers: `a|b|c`, two or more alternatives, each a lower-case word
/// (`[a-z][a-z0-9-]*`), optionally preceded by `[-]` (both the word and `-word`) and optionally
/// followed by a bracketed continuation (`delete[+owner[(lifetime)]]...`: the value may go on).
/// Any other form (`n`, `class`, `n|[n]..[m]`, `glob[,glob...]`) is [`Values::Free`].
pub fn form_values(form: &str) -> Values {
    let alternatives: Vec<&str> = form.split('|').collect();
    if alternatives.len() < 2 {
        return Values::Free;
    }
    let mut words = Vec::new();
    let mut continues = false;
    for alt in alternatives {
        let (negatable, rest) = match alt.strip_prefix("[-]") {
            Some(rest) => (true, rest),
            None => (false, alt),
        };
        let end =
            rest.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')).unwrap_or(rest.len());
        let (word, tail) = rest.split_at(end);
        if !word.starts_with(|c: char| c.is_ascii_lowercase()) || !(tail.is_empty() || tail.starts_with('[')) {
            return Values::Free;
        }
        continues |= !tail.is_empty();
        words.push(word.to_string());
        if negatable {
            words.push(format!("-{word}"));
        }
    }
    Values::OneOf { words, continues }
}

/// The positional arguments of a usage such as `<pnfsid>... <sourcePool>` or `[target...]`:
/// one per word, `...` marking one that repeats. A bare `a|b` is a set of literal words (as in
/// `rep set sticky <pnfsid> on|off`); a placeholder's kind comes from its name: `pnfsid`, `job`,
/// `group` (a pool group), `pool` or `sourcePool`, and `target`, which follows the command's
/// `-target` option (its `pool` and `pgroup` words; pools without it). Others are free.
pub fn arg_details(usage: &str, options: &[OptionSpec]) -> Vec<ArgDetail> {
    usage
        .split_whitespace()
        .map(|word| {
            let placeholder = word.contains('<');
            let name: String = word.chars().filter(|c| !"<>[]".contains(*c)).collect();
            let repeats = name.ends_with("...");
            let name = name.trim_end_matches("...").to_string();
            let values = if name.contains('|') {
                if placeholder { Values::Free } else { form_values(&name) }
            } else {
                placeholder_values(&name, options)
            };
            ArgDetail { name, values, repeats }
        })
        .collect()
}

fn placeholder_values(name: &str, options: &[OptionSpec]) -> Values {
    match name {
        "pnfsid" => Values::PnfsId,
        "job" => Values::Job,
        "group" => Values::PoolGroup,
        "pool" | "sourcePool" => Values::Pool,
        "target" => {
            let target = options.iter().find(|o| o.name == "target").map(|o| match o.value {
                OptionValue::Required(form) | OptionValue::Optional(form) => form_values(form),
                OptionValue::Flag => Values::Free,
            });
            match target {
                Some(Values::OneOf { words, .. }) => Values::ByOption {
                    option: "target".to_string(),
                    cases: words
                        .into_iter()
                        .map(|w| {
                            let kind = match w.as_str() {
                                "pool" => Values::Pool,
                                "pgroup" => Values::PoolGroup,
                                _ => Values::Free,
                            };
                            (w, kind)
                        })
                        .collect(),
                    otherwise: Box::new(Values::Pool),
                },
                _ => Values::Pool,
            }
        }
        _ => Values::Free,
    }
}

/// The width `help <command>` fits its synopsis and option texts into.
pub const HELP_WIDTH: usize = 80;

/// The details as `help` shows them, indented by four. They are laid out by hand: a run of
/// unindented lines (prose) that all fit the width is kept as written; a run with a line too
/// long is filled as one paragraph (wrapping each line alone would leave a stub of a line after
/// each). An indented line (an example, a list item) stands alone; if it does not fit, its
/// continuation is indented under it.
fn details_text(details: &str) -> String {
    let mut out = String::new();
    let mut prose: Vec<&str> = Vec::new();
    let flush = |prose: &mut Vec<&str>, out: &mut String| {
        if prose.iter().all(|l| 4 + l.chars().count() <= HELP_WIDTH) {
            for l in prose.iter() {
                out.push_str(&format!("    {l}\n"));
            }
        } else if !prose.is_empty() {
            out.push_str(&wrap(prose.iter().flat_map(|l| l.split_whitespace()), "    ", "    "));
        }
        prose.clear();
    };
    for line in details.lines() {
        if !line.starts_with(char::is_whitespace) && !line.is_empty() {
            prose.push(line);
            continue;
        }
        flush(&mut prose, &mut out);
        let shown = format!("    {line}");
        if shown.chars().count() <= HELP_WIDTH {
            out.push_str(shown.trim_end());
            out.push('\n');
        } else {
            let indent = &shown[..shown.len() - shown.trim_start().len()];
            out.push_str(&wrap(line.split_whitespace(), indent, indent));
        }
    }
    flush(&mut prose, &mut out);
    out
}

/// Fills lines of at most [`HELP_WIDTH`] characters with `items`, separated by a space: the
/// first line starts with `first`, the others with `rest`. An item longer than a line gets one
/// of its own. Each line ends with a newline.
fn wrap<'a>(items: impl IntoIterator<Item = &'a str>, first: &str, rest: &str) -> String {
    let mut out = String::new();
    let mut line = first.to_string();
    let mut empty = true;
    for item in items {
        let len = line.chars().count();
        if !empty && len + 1 + item.chars().count() > HELP_WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = rest.to_string();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(item);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// A line that does not parse, with where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub code: ErrorCode,
    pub offset: Option<usize>,
    pub message: String,
}

impl ParseError {
    pub fn at(offset: usize, message: impl Into<String>) -> Self {
        ParseError { code: ErrorCode::Syntax, offset: Some(offset), message: message.into() }
    }

    pub fn invalid(offset: usize, message: impl Into<String>) -> Self {
        ParseError { code: ErrorCode::InvalidArgument, offset: Some(offset), message: message.into() }
    }

    /// An invalid value or combination that no single token is to blame for (the migration
    /// module's messages, which name the value themselves); rendered as the bare message.
    pub fn invalid_line(message: impl Into<String>) -> Self {
        ParseError { code: ErrorCode::InvalidArgument, offset: None, message: message.into() }
    }

    /// The message with the line and a caret under the offending token.
    pub fn render(&self, line: &str) -> String {
        match self.offset {
            Some(o) => format!("{}\n{}", self.message, cmdline::point_at(line, o)),
            None => self.message.clone(),
        }
    }
}

/// A line matched to a declaration: the arguments after the command words, and the options.
pub struct Invocation<'a> {
    pub spec: &'a CommandSpec,
    pub line: &'a str,
    pub args: Vec<Token>,
    pub options: Vec<OptionArg>,
}

impl Invocation<'_> {
    /// Where the command ends, for errors about missing arguments.
    fn end(&self) -> usize {
        self.line.trim_end().len()
    }

    /// A flag's value (`-x`, `-x=true`, `-x=false`, case-insensitive).
    pub fn flag(&self, name: &str) -> Result<bool, ParseError> {
        let mut result = false;
        for o in self.options.iter().filter(|o| o.name == name) {
            result = match o.value.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(ParseError::invalid(
                        o.offset,
                        format!("-{name} takes no value (or true/false), not {:?}", echo(other)),
                    ));
                }
            };
        }
        Ok(result)
    }

    /// An option's last value with its offset; a valueless `-name` gives `Some(("", offset))`.
    pub fn value(&self, name: &str) -> Option<(&str, usize)> {
        self.options.iter().rev().find(|o| o.name == name).map(|o| (o.value.as_deref().unwrap_or(""), o.offset))
    }

    /// The `i`th argument after the command words.
    pub fn arg(&self, i: usize, what: &str) -> Result<&Token, ParseError> {
        self.args
            .get(i)
            .ok_or_else(|| ParseError::at(self.end(), format!("missing {what}; usage: {}", self.spec.usage())))
    }

    /// Refuses arguments beyond the first `n`.
    pub fn at_most(&self, n: usize) -> Result<(), ParseError> {
        match self.args.get(n) {
            Some(t) => Err(ParseError::at(
                t.offset,
                format!("unexpected argument {:?}; usage: {}", echo(&t.text), self.spec.usage()),
            )),
            None => Ok(()),
        }
    }

    /// Parses the argument `t`, named `what` in the error, which points at the token, says what
    /// is wrong in the operator's terms (never the parser's own text) and shows the expected form.
    pub fn parse_arg<T: Operand>(&self, t: &Token, what: &str) -> Result<T, ParseError> {
        t.text.parse().map_err(|e: T::Err| {
            ParseError::invalid(
                t.offset,
                format!("{} (expected: {})", T::problem(what, &t.text, &e), self.spec.usage_short()),
            )
        })
    }

    /// The `i`th argument after the command words, named `what`, parsed.
    pub fn arg_as<T: Operand>(&self, i: usize, what: &str) -> Result<T, ParseError> {
        self.parse_arg(self.arg(i, what)?, what)
    }
}

/// A type an argument is parsed into, and how a value that does not parse is described to the
/// operator. Implemented for the integer types (whose `ParseIntError` text, "invalid digit found
/// in string", means nothing to an operator) and for the domain types, whose errors are written
/// for operators already; a type without an impl cannot be parsed with [`Invocation::parse_arg`].
pub trait Operand: std::str::FromStr {
    /// What is wrong with `text`, the value of the argument `what`.
    fn problem(what: &str, text: &str, err: &Self::Err) -> String;
}

macro_rules! integer_operand {
    ($($t:ty),*) => {$(
        impl Operand for $t {
            fn problem(what: &str, text: &str, err: &std::num::ParseIntError) -> String {
                format!("{what}: {:?} {}", echo(text), integer_problem(text, err, <$t>::MIN, <$t>::MAX))
            }
        }
    )*};
}

integer_operand!(i32, u32, u64, usize);

/// Why `text` is not an integer between `min` and `max`, from the parser's error kind.
fn integer_problem(
    text: &str,
    err: &std::num::ParseIntError,
    min: impl std::fmt::Display,
    max: impl std::fmt::Display,
) -> String {
    use std::num::IntErrorKind;
    match err.kind() {
        IntErrorKind::Empty => "is empty; give a whole number".to_string(),
        IntErrorKind::PosOverflow => format!("is too large (at most {max})"),
        IntErrorKind::NegOverflow => format!("is too small (at least {min})"),
        _ if text.starts_with('-') && min.to_string() == "0" => {
            "is negative; give a whole number, 0 or more".to_string()
        }
        _ => "is not a whole number".to_string(),
    }
}

/// Domain types: their errors name the kind and the value already.
macro_rules! domain_operand {
    ($($t:ty),*) => {$(
        impl Operand for $t {
            fn problem(_what: &str, _text: &str, err: &Self::Err) -> String {
                err.to_string()
            }
        }
    )*};
}

domain_operand!(
    tidepool_p2p::ids::PnfsId,
    tidepool_p2p::ids::PoolName,
    tidepool_p2p::ids::JobId,
    tidepool_p2p::ids::TransferId,
    crate::process::logging::LogTarget,
    crate::process::logging::Level,
    tidepool_migration::rate::ByteRate
);

/// Operator input as an error message repeats it: at most [`MAX_ECHO`] characters.
pub fn echo(text: &str) -> std::borrow::Cow<'_, str> {
    truncate_echo(text, MAX_ECHO)
}

/// Matches `line` against `specs`: the longest command name that the leading words spell. A
/// line longer than [`tidepool_p2p::message::MAX_ADMIN_LINE`] bytes is refused before it is split.
pub fn parse_line(specs: &[CommandSpec], line: &str) -> Result<Option<Command>, ParseError> {
    if let Some(message) = line_too_long(line.len()) {
        return Err(ParseError { code: ErrorCode::InvalidArgument, offset: None, message });
    }
    let Args { positional, options } = Args::parse(line).map_err(|e| ParseError::at(e.offset, e.message))?;
    if positional.is_empty() && options.is_empty() {
        return Ok(None);
    }
    let words: Vec<&str> = positional.iter().map(|t| t.text.as_str()).collect();
    let spec = specs
        .iter()
        .filter(|s| {
            let name: Vec<&str> = s.name.split(' ').collect();
            words.len() >= name.len() && words[..name.len()] == name[..]
        })
        .max_by_key(|s| s.name.split(' ').count());
    let Some(spec) = spec else {
        return Err(unknown_command(specs, &words, &positional));
    };
    let consumed = spec.name.split(' ').count();
    for o in &options {
        if let Err(problem) = check_option(spec.options, o) {
            let decl = spec.options.iter().find(|d| d.name == o.name);
            return Err(match problem {
                OptionProblem::Unknown => ParseError::at(o.offset, unknown_option(spec, &o.name)),
                OptionProblem::NeedsValue => ParseError::at(o.offset, problem.message(decl, o).unwrap_or_default()),
                OptionProblem::NotAFlagValue => {
                    ParseError::invalid(o.offset, problem.message(decl, o).unwrap_or_default())
                }
            });
        }
    }
    let inv = Invocation { spec, line, args: positional[consumed..].to_vec(), options };
    (spec.parse)(&inv).map(Some)
}

/// The longest typed command (its first words, in bytes) that "did you mean" compares with the
/// declared names; a longer one is no typo of any of them, and comparing would cost time in
/// proportion to its length.
const MAX_SUGGEST: usize = 64;

/// The most options an unknown-option error lists; a command with more (`migration copy` has
/// 32) is pointed at its help instead.
const MAX_LISTED_OPTIONS: usize = 8;

/// The message for an option `spec` does not declare: "did you mean" for a close one, else
/// the options it takes (or where to find them).
fn unknown_option(spec: &CommandSpec, typed: &str) -> String {
    let head = format!("unknown option -{}", echo(typed));
    if spec.options.is_empty() {
        return format!("{head}; '{}' takes no options", spec.name);
    }
    if let Some(name) = closest(typed, spec.options.iter().map(|d| d.name)) {
        return format!("{head}; did you mean -{name}? (`help {}` lists the options)", spec.name);
    }
    if spec.options.len() > MAX_LISTED_OPTIONS {
        return format!("{head}; `help {}` lists its {} options", spec.name, spec.options.len());
    }
    let known: Vec<String> = spec.options.iter().map(|d| format!("-{}", d.name)).collect();
    format!("{head}; '{}' takes {}", spec.name, known.join(" "))
}

/// The candidate closest to `typed` if it is close enough to be a typo of it: at most two
/// edits, and at most one per three characters typed (so `-x` is no typo of `-l`). Nothing for
/// a `typed` longer than [`MAX_SUGGEST`] bytes, which bounds the work.
pub fn closest<'a>(typed: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    if typed.len() > MAX_SUGGEST {
        return None;
    }
    let typed_chars = typed.chars().count();
    candidates
        .into_iter()
        .map(|c| (edit_distance(typed, c), c))
        .filter(|&(d, _)| d > 0 && d <= 2 && d * 3 <= typed_chars)
        .min()
        .map(|(_, c)| c)
}

fn unknown_command(specs: &[CommandSpec], words: &[&str], tokens: &[Token]) -> ParseError {
    let offset = tokens.first().map(|t| t.offset).unwrap_or(0);
    let typed = words.iter().take(3).copied().collect::<Vec<_>>().join(" ");
    let best = specs
        .iter()
        .filter_map(|s| {
            let n = s.name.split(' ').count().min(words.len());
            let attempt = words[..n].join(" ");
            (attempt.len() <= MAX_SUGGEST).then(|| (edit_distance(&attempt, s.name), s.name))
        })
        .min();
    let hint = match best {
        Some((d, name)) if d <= 3 => format!("; did you mean '{name}'?"),
        _ => "; `help` lists the commands".to_string(),
    };
    ParseError {
        code: ErrorCode::UnknownCommand,
        offset: Some(offset),
        message: format!("unknown command '{}'{hint}", echo(&typed)),
    }
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidepool_p2p::message::MAX_ADMIN_LINE;

    /// Checks the stored form of `migration copy` with these options and arguments.
    fn check_stored(options: &[(&str, Option<&str>)], args: &[&str], want: &str) {
        let options: Vec<OptionArg> = options
            .iter()
            .map(|(name, value)| OptionArg { name: name.to_string(), value: value.map(String::from), offset: 0 })
            .collect();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        assert_eq!(command_line("migration copy", &options, &args), want, "{options:?} {args:?}");
    }

    #[test]
    fn stored_command_lines() {
        const ID: &str = "0000A1B2C3D4E5F60718293A4B5C6D7E8F90";
        check_stored(&[], &[], "migration copy");
        check_stored(&[], &["pool2"], "migration copy -- pool2");
        check_stored(&[("pnfsid", Some(ID))], &["pool2"], &format!("migration copy -pnfsid={ID} -- pool2"));
        check_stored(&[("target", Some("pgroup"))], &[], "migration copy -target=pgroup --");
        check_stored(
            &[("eager", None), ("verify", Some("false"))],
            &["p1", "p2"],
            "migration copy -eager -verify=false -- p1 p2",
        );
        check_stored(
            &[("exclude", Some("a-b")), ("exclude", Some("c*"))],
            &["x"],
            r"migration copy -exclude=a\-b -exclude=c* -- x",
        );
        check_stored(&[("meta-only", None)], &["MCTAPE-write"], r"migration copy -meta\-only -- MCTAPE\-write");
        check_stored(&[("smode", Some("same+a(-1)"))], &[""], r"migration copy -smode=same+a(\-1) -- ''");
        check_stored(&[("cache", Some(""))], &["p"], "migration copy -cache='' -- p");
        check_stored(
            &[("storage", Some(r#"a b"c'd=e\f"#))],
            &["p"],
            r#"migration copy -storage=a\ b\"c\'d\=e\\f -- p"#,
        );
    }

    /// Found by the fuzz harness (`options` target): a value holding a tab was stored with the
    /// tab bare, so the saved job read back with the value split into two words.
    #[test]
    fn stored_lines_read_back_with_any_white_space_in_values() {
        for value in ["a\tb", "x\ny", "p\u{a0}q", "r\u{2003}s", " t ", "\r"] {
            let options = vec![OptionArg { name: "storage".into(), value: Some(value.into()), offset: 0 }];
            let args = vec![format!("pool{value}")];
            let line = command_line("migration copy", &options, &args);
            let read = Args::parse(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            let positional: Vec<&str> = read.positional.iter().map(|t| t.text.as_str()).collect();
            assert_eq!(positional, ["migration", "copy", args[0].as_str()], "{line:?}");
            assert_eq!(read.options.len(), 1, "{line:?}");
            assert_eq!((read.options[0].name.as_str(), read.options[0].value.as_deref()), ("storage", Some(value)));
        }
    }

    #[test]
    fn a_long_unknown_command_is_refused_quickly_with_a_short_message() {
        let word = "x".repeat(MAX_ADMIN_LINE);
        let started = std::time::Instant::now();
        let err = parse_line(super::super::COMMANDS, &word).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "took {:?}", started.elapsed());
        assert_eq!(err.code, ErrorCode::UnknownCommand);
        assert_eq!(
            err.message,
            format!("unknown command '{}... ({MAX_ADMIN_LINE} bytes)'; `help` lists the commands", &word[..MAX_ECHO])
        );
        assert!(err.render(&word).len() < 3 * MAX_ECHO, "{}", err.render(&word).len());
    }

    #[test]
    fn a_line_over_the_limit_is_refused_before_it_is_parsed() {
        let line = format!("rep ls {}", "a".repeat(MAX_ADMIN_LINE));
        let err = parse_line(&[], &line).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert_eq!(
            err.render(&line),
            format!("command line too long: {} bytes, at most {MAX_ADMIN_LINE}", MAX_ADMIN_LINE + 7)
        );
        // Exactly the limit is a line like any other (here: an unknown command).
        let line = "a".repeat(MAX_ADMIN_LINE);
        assert_eq!(parse_line(&[], &line).unwrap_err().code, ErrorCode::UnknownCommand);
    }

    #[test]
    fn close_names_are_suggested() {
        let options = ["concurrency", "storage", "state", "json", "l", "s", "sum"];
        let table: &[(&str, Option<&str>)] = &[
            ("concurency", Some("concurrency")),
            ("concurrenccy", Some("concurrency")),
            ("storag", Some("storage")),
            ("stat", Some("state")),
            ("jsn", Some("json")),
            ("x", None),
            ("ls", None),
            ("concurrency", None),
            ("something", None),
        ];
        for (typed, want) in table {
            assert_eq!(closest(typed, options), *want, "{typed:?}");
        }
        assert_eq!(closest(&"c".repeat(MAX_SUGGEST + 1), ["c"]), None, "a long word is not compared");
    }

    #[test]
    fn an_unknown_option_close_to_a_known_one_is_suggested() {
        let commands = super::super::COMMANDS;
        let err = parse_line(commands, "migration copy -concurency=2 pool2").unwrap_err();
        assert_eq!((err.code, err.offset), (ErrorCode::Syntax, Some(15)));
        assert!(err.message.contains("did you mean -concurrency?"), "{}", err.message);
        assert!(!err.message.contains("-storage"), "no list of every option: {}", err.message);
        // No close option: a command with many options points at its help.
        let err = parse_line(commands, "migration copy -frobnicate pool2").unwrap_err();
        assert!(err.message.contains("`help migration copy`"), "{}", err.message);
        assert!(!err.message.contains("-storage"), "{}", err.message);
        // A long unknown option is echoed shortened and not compared.
        let line = format!("migration copy -{} pool2", "c".repeat(MAX_ADMIN_LINE / 2));
        let started = std::time::Instant::now();
        let err = parse_line(commands, &line).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "took {:?}", started.elapsed());
        assert!(err.message.len() < 2 * MAX_ECHO, "{}", err.message);
    }

    /// `help <command>` fits an 80-column terminal; only a single word longer than a line
    /// (an example, a long option name) may pass it. The synopsis keeps every option.
    #[test]
    fn help_fits_80_columns() {
        for spec in super::super::COMMANDS {
            let help = spec.help();
            for line in help.lines() {
                let n = line.chars().count();
                let long_word = line.split_whitespace().any(|w| 8 + w.chars().count() > HELP_WIDTH);
                let example = spec.examples.iter().any(|e| line.trim() == *e);
                assert!(n <= HELP_WIDTH || long_word || example, "help {}: {n} columns: {line}", spec.name);
            }
            let synopsis = help.split("SYNOPSIS\n").nth(1).unwrap().split("\n\n").next().unwrap();
            assert_eq!(synopsis.split_whitespace().collect::<Vec<_>>().join(" "), spec.usage(), "{}", spec.name);
        }
    }

    /// Prose that does not fit is filled as a paragraph, not wrapped line by line; prose that
    /// fits and indented lines keep their layout.
    #[test]
    fn details_are_filled_as_paragraphs() {
        let long = "word ".repeat(20);
        let text = details_text(&format!("{long}\nend of it.\n  an example line\nshort\nlines"));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().all(|l| l.chars().count() <= HELP_WIDTH), "{text}");
        assert_eq!(lines[lines.len() - 3..], ["      an example line", "    short", "    lines"], "{text}");
        // The long line's overflow runs on with the next line of its paragraph.
        assert_eq!(lines[1], "    word word word word word end of it.", "{text}");
    }

    #[test]
    fn wrapping() {
        assert_eq!(wrap(["a", "b"], "  ", "    "), "  a b\n");
        let long = "x".repeat(HELP_WIDTH);
        assert_eq!(wrap(["a", &long, "b"], "  ", "    "), format!("  a\n    {long}\n    b\n"));
        let words: Vec<String> = (0..40).map(|i| format!("w{i:02}")).collect();
        let text = wrap(words.iter().map(String::as_str), "  ", "    ");
        assert!(text.lines().all(|l| l.len() <= HELP_WIDTH), "{text}");
        assert_eq!(text.split_whitespace().count(), 40);
    }

    fn one_of(words: &[&str], continues: bool) -> Values {
        Values::OneOf { words: words.iter().map(|w| w.to_string()).collect(), continues }
    }

    #[test]
    fn value_forms() {
        let table: &[(&str, Values)] = &[
            ("cached|precious", one_of(&["cached", "precious"], false)),
            ("pool|pgroup|link|hsm", one_of(&["pool", "pgroup", "link", "hsm"], false)),
            ("b|k|m|g|t", one_of(&["b", "k", "m", "g", "t"], false)),
            ("[-]size|[-]lru", one_of(&["size", "-size", "lru", "-lru"], false)),
            ("same|cached|precious[+owner[(lifetime)]]...", one_of(&["same", "cached", "precious"], true)),
            ("p2p-client|x2", one_of(&["p2p-client", "x2"], false)),
            ("n", Values::Free),
            ("class", Values::Free),
            ("n|[n]..[m]", Values::Free),
            ("glob[,glob...]", Values::Free),
            ("[-]owner[,...]", Values::Free),
            ("Pool|pgroup", Values::Free),
            ("a b|c", Values::Free),
            ("|a", Values::Free),
            ("", Values::Free),
        ];
        for (form, want) in table {
            assert_eq!(form_values(form), *want, "{form:?}");
        }
    }

    /// The descriptions the shell completes from are generated from [`super::super::COMMANDS`]:
    /// every option is there with whether it takes a value, and every option whose form lists
    /// alternatives gives them as a set (a form the grammar of [`form_values`] does not read
    /// must be named here as open, so a typo in a form cannot silently end its completion).
    #[test]
    fn descriptions_cover_every_option_with_its_kind() {
        const OPEN_ALTERNATIVES: &[&str] = &["n|[n]..[m]", "s|p|l|nc|e..."];
        for spec in super::super::COMMANDS {
            let detail = spec.detail();
            assert_eq!(detail.name, spec.name);
            assert_eq!(detail.options.len(), spec.options.len(), "{}", spec.name);
            for (o, d) in spec.options.iter().zip(&detail.options) {
                assert_eq!(d.name, o.name, "{}", spec.name);
                let form = match o.value {
                    OptionValue::Flag => {
                        assert_eq!((d.takes, &d.values), (Takes::Flag, &Values::Free), "{} -{}", spec.name, o.name);
                        continue;
                    }
                    OptionValue::Required(form) => {
                        assert_eq!(d.takes, Takes::Required, "{} -{}", spec.name, o.name);
                        form
                    }
                    OptionValue::Optional(form) => {
                        assert_eq!(d.takes, Takes::Optional, "{} -{}", spec.name, o.name);
                        form
                    }
                };
                if form.contains('|') && !OPEN_ALTERNATIVES.contains(&form) {
                    assert!(
                        matches!(d.values, Values::OneOf { .. }),
                        "{} -{}={form}: alternatives the completion cannot read",
                        spec.name,
                        o.name
                    );
                }
            }
        }
        let kind = |command: &str, option: &str| {
            let spec = super::super::COMMANDS.iter().find(|s| s.name == command).expect(command);
            spec.detail().options.into_iter().find(|o| o.name == option).expect(option).values
        };
        let table: &[(&str, &str, Values)] = &[
            ("migration copy", "state", one_of(&["cached", "precious"], false)),
            ("migration move", "target", one_of(&["pool", "pgroup", "link", "hsm"], false)),
            ("migration cache", "select", one_of(&["proportional", "random"], false)),
            ("migration copy", "pins", one_of(&["keep", "move"], false)),
            ("migration copy", "al", one_of(&["online", "nearline"], false)),
            ("migration copy", "rp", one_of(&["custodial", "replica", "output"], false)),
            ("migration copy", "order", one_of(&["size", "-size", "lru", "-lru"], false)),
            ("migration copy", "smode", one_of(&["same", "cached", "precious", "removable", "delete"], true)),
            ("migration copy", "tmode", one_of(&["same", "cached", "precious"], true)),
            ("migration copy", "target-deficit-mode", one_of(&["wait", "limit"], false)),
            ("migration copy", "storage", Values::Free),
            ("migration copy", "concurrency", Values::Free),
            ("migration copy", "size", Values::Free),
            ("rep ls", "s", one_of(&["b", "k", "m", "g", "t"], false)),
        ];
        for (command, option, want) in table {
            assert_eq!(kind(command, option), *want, "{command} -{option}");
        }
    }

    /// The kinds of positional arguments, read from the usages; any placeholder naming a pool
    /// or a group completes as one.
    #[test]
    fn descriptions_give_argument_kinds() {
        let args = |command: &str| {
            let spec = super::super::COMMANDS.iter().find(|s| s.name == command).expect(command);
            spec.detail().args.into_iter().map(|a| (a.values, a.repeats)).collect::<Vec<_>>()
        };
        let targets = Values::ByOption {
            option: "target".into(),
            cases: vec![
                ("pool".into(), Values::Pool),
                ("pgroup".into(), Values::PoolGroup),
                ("link".into(), Values::Free),
                ("hsm".into(), Values::Free),
            ],
            otherwise: Box::new(Values::Pool),
        };
        let table: &[(&str, Vec<(Values, bool)>)] = &[
            ("migration copy", vec![(targets.clone(), true)]),
            ("migration move", vec![(targets, true)]),
            ("rebalance pgroup", vec![(Values::PoolGroup, false)]),
            ("migration info", vec![(Values::Job, false)]),
            ("rep ls", vec![(Values::PnfsId, true)]),
            ("rep set sticky", vec![(Values::PnfsId, false), (one_of(&["on", "off"], false), false)]),
            ("pp get file", vec![(Values::PnfsId, true), (Values::Pool, false)]),
            ("pool disable", vec![(Values::Free, false), (Values::Free, false)]),
            ("info", vec![]),
        ];
        for (command, want) in table {
            assert_eq!(args(command), *want, "{command}");
        }
        for spec in super::super::COMMANDS {
            for a in spec.detail().args {
                let name = a.name.to_ascii_lowercase();
                if name.contains("pool") {
                    assert_eq!(a.values, Values::Pool, "{}: {}", spec.name, a.name);
                }
                if name.contains("group") {
                    assert_eq!(a.values, Values::PoolGroup, "{}: {}", spec.name, a.name);
                }
            }
        }
    }

    /// The shell's completion over the pool's real declarations.
    #[test]
    fn shell_completion_of_the_real_commands() {
        use tidepool_admin::complete::{Known, complete};
        let details = super::super::describe_details();
        let pools: Vec<tidepool_p2p::PoolName> = ["pool1", "pool2"].iter().map(|p| p.parse().unwrap()).collect();
        let groups = vec!["disk".to_string(), "tape".to_string()];
        let known = Known { pools: &pools, groups: &groups, here: None, commands: Some(&details) };
        let table: &[(&str, &[&str])] = &[
            ("migration copy -sto", &["-stop-when=", "-storage="]),
            ("migration copy -stor", &["-storage="]),
            ("migration copy -stat", &["-state="]),
            ("migration copy -state=pre", &["precious"]),
            ("migration copy -target=", &["hsm", "link", "pgroup", "pool"]),
            ("migration move -select=r", &["random"]),
            ("migration move -smode=de", &["delete"]),
            ("migration move -verify", &["-verify"]),
            ("migration move ", &["pool1", "pool2"]),
            ("migration move -target=pgroup ", &["disk", "tape"]),
            ("rebalance pgroup ", &["disk", "tape"]),
            ("migration copy -nosuch=", &[]),
            ("migration copy -frobnicate", &[]),
            ("rep ls -s=", &["b", "g", "k", "m", "t"]),
            ("rep set sticky 0000A1B2C3D4E5F60718293A4B5C6D7E8F90 o", &["off", "on"]),
        ];
        for (line, want) in table {
            let (_, got) = complete(line, line.len(), known);
            assert_eq!(got, want.iter().map(|w| w.to_string()).collect::<Vec<_>>(), "{line:?}");
        }
    }

    /// An older shell reads only `AdminReply::Commands`; the details travel as JSON that a newer
    /// pool may extend: unknown fields are ignored, unknown kinds read as unknown.
    #[test]
    fn details_survive_json_and_tolerate_additions() {
        use tidepool_p2p::message::{decode_details, encode_details};
        let details = super::super::describe_details();
        assert_eq!(decode_details(&encode_details(&details)).unwrap(), details);
        let newer = r#"[{"name":"x y","future":1,"options":[{"name":"a","takes":"repeated","values":{"kind":"colour"}},
            {"name":"b","takes":"required","values":{"kind":"one-of","words":["p"],"more":true}}],
            "args":[{"values":{"kind":"pool"},"hint":"?"}]}]"#;
        let read = decode_details(newer).unwrap();
        assert_eq!(read[0].options[0].takes, Takes::Unknown);
        assert_eq!(read[0].options[0].values, Values::Unknown);
        assert_eq!(read[0].options[1].values, one_of(&["p"], false));
        assert_eq!(read[0].args[0].values, Values::Pool);
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("rep lss", "rep ls"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("info", "info"), 0);
    }
}
