//! The lexical syntax of admin command lines, as dCache writes them: words separated by white
//! space; `-flag` and `-name=value` options anywhere on the line; values may be quoted with
//! `"..."` (backslash escapes `\\ \" \n \t \'`) or `'...'` (literal); outside quotes a
//! backslash makes the next character plain (`pool\-a`, `a\ b`; a word starting `\-` is not
//! an option), which is how stored migration command lines are written
//! (docs/dcache-compatibility.md#permanent-jobs-and-save); `--` ends the options. Every token keeps its byte
//! offset so errors can point at it.

use nom::branch::alt;
use nom::bytes::complete::{escaped_transform, is_not, take_while1};
use nom::character::complete::{anychar, char};
use nom::combinator::{map, opt, value};
use nom::multi::many1;
use nom::sequence::{delimited, preceded};
use nom::{IResult, Parser};

use crate::error::MAX_ECHO;

/// One word of a command line after quotes are removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub text: String,
    /// Byte offset of the token's first character in the line.
    pub offset: usize,
    /// The token began with a plain `-`: an option, unless it came after `--`.
    dash: bool,
}

/// An option as written: `-name` or `-name=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionArg {
    pub name: String,
    pub value: Option<String>,
    pub offset: usize,
}

/// A command line split into positional words and options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Args {
    pub positional: Vec<Token>,
    pub options: Vec<OptionArg>,
}

/// A line that cannot be split into words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LexError {
    pub offset: usize,
    pub message: String,
}

enum Piece<'a> {
    Plain(&'a str),
    Quoted(String),
}

fn plain(i: &str) -> IResult<&str, Piece<'_>> {
    map(take_while1(|c: char| !c.is_whitespace() && c != '"' && c != '\'' && c != '\\'), Piece::Plain).parse(i)
}

/// `\x` outside quotes: `x`, taken literally.
fn escaped_char(i: &str) -> IResult<&str, Piece<'_>> {
    map(preceded(char('\\'), anychar), |c| Piece::Quoted(c.to_string())).parse(i)
}

fn double_quoted(i: &str) -> IResult<&str, Piece<'_>> {
    let escapes = alt((
        value("\\", char('\\')),
        value("\"", char('"')),
        value("'", char('\'')),
        value("\n", char('n')),
        value("\t", char('t')),
    ));
    let body = map(opt(escaped_transform(is_not("\\\""), '\\', escapes)), Option::unwrap_or_default);
    map(delimited(char('"'), body, char('"')), Piece::Quoted).parse(i)
}

fn single_quoted(i: &str) -> IResult<&str, Piece<'_>> {
    map(delimited(char('\''), opt(is_not("'")), char('\'')), |s: Option<&str>| {
        Piece::Quoted(s.unwrap_or_default().to_string())
    })
    .parse(i)
}

fn word(i: &str) -> IResult<&str, Vec<Piece<'_>>> {
    many1(alt((plain, escaped_char, double_quoted, single_quoted))).parse(i)
}

/// Splits a line into tokens.
pub fn tokenize(line: &str) -> Result<Vec<Token>, LexError> {
    let mut tokens = Vec::new();
    let mut rest = line;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Ok(tokens);
        }
        let offset = line.len() - rest.len();
        match word(rest) {
            Ok((after, pieces)) => {
                let dash = matches!(pieces.first(), Some(Piece::Plain(p)) if p.starts_with('-'));
                let mut text = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Plain(p) => text.push_str(p),
                        Piece::Quoted(q) => text.push_str(&q),
                    }
                }
                tokens.push(Token { text, offset, dash });
                rest = after;
            }
            Err(_) if rest.starts_with('\\') => {
                return Err(LexError { offset, message: "a backslash at the end of the line escapes nothing".into() });
            }
            Err(_) => {
                // Otherwise `word` only fails on an opening quote without its closing one.
                let at = offset + rest.find(['"', '\'']).unwrap_or(0);
                return Err(LexError { offset: at, message: "unterminated quote".into() });
            }
        }
    }
}

impl Args {
    /// Splits tokens into options and positional words. A token that starts with a plain `-`
    /// (and is more than `-`) is an option until a `--` token, which is dropped.
    pub fn from_tokens(tokens: Vec<Token>) -> Args {
        let mut args = Args::default();
        let mut options_done = false;
        for token in tokens {
            if !options_done && token.dash && token.text == "--" {
                options_done = true;
            } else if !options_done && token.dash && token.text.len() > 1 {
                let body = &token.text[1..];
                let (name, value) = match body.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (body.to_string(), None),
                };
                args.options.push(OptionArg { name, value, offset: token.offset });
            } else {
                args.positional.push(token);
            }
        }
        args
    }

    /// Tokenizes and splits a whole line.
    pub fn parse(line: &str) -> Result<Args, LexError> {
        tokenize(line).map(Args::from_tokens)
    }
}

impl Token {
    /// A positional token (for tests and programmatic callers).
    pub fn word(text: &str, offset: usize) -> Token {
        Token { text: text.to_string(), offset, dash: false }
    }
}

impl Args {
    /// Words already split (as a program's argument vector is): each word is one token, taken
    /// as written (no quotes or escapes), an option if it starts with `-`, until a `--` word.
    /// Offsets count as if the words were joined by one space.
    pub fn from_words<S: AsRef<str>>(words: &[S]) -> Args {
        let mut offset = 0;
        let tokens = words
            .iter()
            .map(|w| {
                let text = w.as_ref().to_string();
                let token = Token { dash: text.starts_with('-'), text, offset };
                offset += token.text.len() + 1;
                token
            })
            .collect();
        Args::from_tokens(tokens)
    }
}

/// Whether an option takes a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionValue {
    /// `-name`, `-name=true` or `-name=false`.
    Flag,
    /// `-name=VALUE`; the string names the value in help.
    Required(&'static str),
    /// `-name` or `-name=VALUE`.
    Optional(&'static str),
}

/// One declared option of a command: its name, the form of its value, and its help.
#[derive(Debug)]
pub struct OptionSpec {
    pub name: &'static str,
    pub value: OptionValue,
    pub help: &'static str,
}

/// Why an option as written does not fit the declarations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionProblem {
    /// No declaration has its name (the caller words the message: it knows the command).
    Unknown,
    /// `-name` without the value it requires.
    NeedsValue,
    /// A flag given a value other than true or false.
    NotAFlagValue,
}

/// Matches `o` with its declaration in `decls`. The one check of an option's presence and
/// value form, for every command line (the admin commands, and the job grammar of the
/// migration module).
pub fn check_option<'a>(decls: &'a [OptionSpec], o: &OptionArg) -> Result<&'a OptionSpec, OptionProblem> {
    let Some(decl) = decls.iter().find(|d| d.name == o.name) else { return Err(OptionProblem::Unknown) };
    match (decl.value, o.value.as_deref()) {
        (OptionValue::Required(_), None) => Err(OptionProblem::NeedsValue),
        (OptionValue::Flag, Some(v)) if !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false") => {
            Err(OptionProblem::NotAFlagValue)
        }
        _ => Ok(decl),
    }
}

impl OptionProblem {
    /// The message for [`OptionProblem::NeedsValue`] and [`OptionProblem::NotAFlagValue`];
    /// `None` for [`OptionProblem::Unknown`], which the caller words.
    pub fn message(&self, decl: Option<&OptionSpec>, o: &OptionArg) -> Option<String> {
        match (self, decl.map(|d| d.value)) {
            (OptionProblem::NeedsValue, Some(OptionValue::Required(v))) => {
                Some(format!("option -{} needs a value: -{}={v}", o.name, o.name))
            }
            (OptionProblem::NotAFlagValue, _) => Some(format!(
                "-{} takes no value (or true/false), not {:?}",
                o.name,
                crate::error::truncate_echo(o.value.as_deref().unwrap_or(""), MAX_ECHO)
            )),
            _ => None,
        }
    }
}

/// The stored form of a command line (docs/dcache-compatibility.md#permanent-jobs-and-save), as `migration
/// ls` shows a job's command and as dCache writes it: the command name, each option as `-name` or `-name=value` in the
/// order given, a literal `--`, then the positional arguments. Names, values and arguments are
/// escaped by `escape`, so that [`tokenize`] reads the same words back. A line with neither
/// options nor arguments is just the name.
///
/// One difference from dCache: an empty option value is written `-name=''` (dCache writes
/// `-name`), so that `-cache=` keeps its meaning when the line is read again.
pub fn command_line(name: &str, options: &[OptionArg], args: &[String]) -> String {
    let mut s = name.to_string();
    if options.is_empty() && args.is_empty() {
        return s;
    }
    for o in options {
        s.push_str(" -");
        s.push_str(&escape(&o.name));
        if let Some(v) = &o.value {
            s.push('=');
            s.push_str(&escape(v));
        }
    }
    s.push_str(" --");
    for a in args {
        s.push(' ');
        s.push_str(&escape(a));
    }
    s
}

/// Backslash before `\`, `"`, `'`, `=`, `-` and every white-space character (the lexer splits
/// words at any of them: a tab or a newline left bare would split a value when the stored line
/// is read again); `''` for the empty string.
fn escape(text: &str) -> String {
    if text.is_empty() {
        return "''".to_string();
    }
    let mut s = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if matches!(c, '\\' | '"' | '\'' | '=' | '-') || c.is_whitespace() {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// Renders `line` with a caret under byte `offset`, for error messages. A line longer than
/// [`MAX_ECHO`] characters is shown as a window of that many around the offset, with `...`
/// where it was cut, so that an error never repeats a whole long line.
pub fn point_at(line: &str, offset: usize) -> String {
    let mut offset = offset.min(line.len());
    while !line.is_char_boundary(offset) {
        offset -= 1;
    }
    let column = line[..offset].chars().count();
    let total = line.chars().count();
    if total <= MAX_ECHO {
        return format!("  {line}\n  {}^", " ".repeat(column));
    }
    let first = column.saturating_sub(MAX_ECHO / 2).min(total - MAX_ECHO);
    let shown: String = line.chars().skip(first).take(MAX_ECHO).collect();
    let (head, pad) = if first > 0 { ("...", 3) } else { ("", 0) };
    let tail = if first + MAX_ECHO < total { "..." } else { "" };
    format!("  {head}{shown}{tail}\n  {}^", " ".repeat(pad + column - first))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        tokenize(line).unwrap().into_iter().map(|t| t.text).collect()
    }

    #[test]
    fn splits_words_and_quotes() {
        let table: &[(&str, &[&str])] = &[
            ("", &[]),
            ("   ", &[]),
            ("rep ls", &["rep", "ls"]),
            ("  rep   ls  ", &["rep", "ls"]),
            (r#"-o="my owner" x"#, &["-o=my owner", "x"]),
            (r#"'a "b"' c"#, &[r#"a "b""#, "c"]),
            (r#""a\"b\\c""#, &[r#"a"b\c"#]),
            (r#""""#, &[""]),
            (r#"ab"cd"ef"#, &["abcdef"]),
            ("-include-when='target.free > source.free'", &["-include-when=target.free > source.free"]),
            (r"MCTAPE\-write pool\ a", &["MCTAPE-write", "pool a"]),
            (r"-o=a\=b\\c", &["-o=a=b\\c"]),
        ];
        for (line, want) in table {
            assert_eq!(words(line), *want, "line {line:?}");
        }
    }

    #[test]
    fn unterminated_quote_points_at_the_quote() {
        let err = tokenize(r#"rep ls "abc"#).unwrap_err();
        assert_eq!(err.offset, 7);
        let err = tokenize("a 'b").unwrap_err();
        assert_eq!(err.offset, 2);
    }

    #[test]
    fn options_and_positionals() {
        let args = Args::parse(r#"rep set sticky -o=owner -l=1000 -force 0000AB on"#).unwrap();
        let pos: Vec<&str> = args.positional.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(pos, ["rep", "set", "sticky", "0000AB", "on"]);
        let opts: Vec<(&str, Option<&str>)> =
            args.options.iter().map(|o| (o.name.as_str(), o.value.as_deref())).collect();
        assert_eq!(opts, [("o", Some("owner")), ("l", Some("1000")), ("force", None)]);
    }

    #[test]
    fn double_dash_ends_options_and_quoted_dash_is_positional() {
        let args = Args::parse(r#"migration copy -pnfsid=1 -- -weird "-q""#).unwrap();
        let pos: Vec<&str> = args.positional.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(pos, ["migration", "copy", "-weird", "-q"]);
        assert_eq!(args.options.len(), 1);
        let args = Args::parse(r#"x "-q""#).unwrap();
        assert!(args.options.is_empty());
    }

    #[test]
    fn escaped_words_round_trip_stored_command_lines() {
        let args = Args::parse(r"migration move -meta\-only -storage=MC\:x -- MCTAPE\-write \-q").unwrap();
        let pos: Vec<&str> = args.positional.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(pos, ["migration", "move", "MCTAPE-write", "-q"]);
        let opts: Vec<(&str, Option<&str>)> =
            args.options.iter().map(|o| (o.name.as_str(), o.value.as_deref())).collect();
        assert_eq!(opts, [("meta-only", None), ("storage", Some("MC:x"))]);
        assert!(Args::parse(r"\-x").unwrap().options.is_empty(), "an escaped dash is no option");
        let err = tokenize("a b\\").unwrap_err();
        assert_eq!((err.offset, err.message.as_str()), (3, "a backslash at the end of the line escapes nothing"));
    }

    #[test]
    fn caret_points_at_column() {
        assert_eq!(point_at("rep ls -x", 7), "  rep ls -x\n         ^");
    }

    /// A long line is shown as a window around the offending token, never whole.
    #[test]
    fn caret_under_a_long_line_shows_a_window() {
        let line = format!("rep ls {} -x {}", "a".repeat(1000), "b".repeat(1000));
        let at = line.find("-x").unwrap();
        let shown = point_at(&line, at);
        let (text, caret) = shown.split_once('\n').unwrap();
        assert!(text.starts_with("  ...a") && text.ends_with("b..."), "{text}");
        assert_eq!(text.chars().count(), 2 + 3 + MAX_ECHO + 3);
        assert_eq!(&text[caret.len() - 1..caret.len() + 1], "-x", "the caret is under the token");
        // At the start and at the end of the line only one side is cut.
        let start = point_at(&line, 0);
        assert!(start.starts_with("  rep ls aaa") && start.lines().next().unwrap().ends_with("..."), "{start}");
        assert!(start.ends_with("\n  ^"));
        let end = point_at(&line, line.len());
        assert!(end.starts_with("  ...") && end.lines().next().unwrap().ends_with('b'), "{end}");
        assert!(end.len() < 2 * MAX_ECHO + 20);
    }
}
