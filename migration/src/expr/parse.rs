//! The grammar of docs/dcache-compatibility.md#the-expression-language, written with nom 8, producing an
//! untyped syntax tree.
//!
//! Every level is a method of [`Grammar`], which knows the whole text so that each node and
//! each error carries a byte offset. Decisions are LL(1): once a token has committed the parser
//! to a rule, a mismatch is a `Failure` with a message, never a silent backtrack.

use std::cell::Cell;

use nom::bytes::complete::{tag, take_while};
use nom::character::complete::{char, digit1, satisfy};
use nom::combinator::{opt, recognize};
use nom::error::{ErrorKind, ParseError};
use nom::sequence::{delimited, terminated};
use nom::{IResult, Parser};

use super::regex::Regex;
use super::{ExprError, Type};

/// One node of the syntax tree. `at` is the byte offset of its main token: the (last) operator
/// of an operation, the first character of a literal or a name.
#[derive(Clone, Debug)]
pub(super) struct Node {
    pub kind: Kind,
    pub at: usize,
}

#[derive(Clone, Debug)]
pub(super) enum Kind {
    Number(f64),
    Str(String),
    Bool(bool),
    /// A qualified identifier; `ty` is filled in by the type checker.
    Symbol {
        name: String,
        ty: Option<Type>,
    },
    /// One or more unary signs; `negate` when the number of `-` is odd.
    Sign {
        negate: bool,
        operand: Box<Node>,
    },
    Not(Box<Node>),
    /// A left-associative run of one level's operators: `first op rhs op rhs ...`, folded
    /// from the left. Kept flat so that long runs (`a or b or c ...`) cost no recursion.
    Chain {
        first: Box<Node>,
        rest: Vec<Link>,
    },
    Cond {
        cond: Box<Node>,
        then: Box<Node>,
        otherwise: Box<Node>,
    },
}

/// One `op rhs` step of a [`Kind::Chain`]; `at` is the operator's offset.
#[derive(Clone, Debug)]
pub(super) struct Link {
    pub op: BinOp,
    pub at: usize,
    pub rhs: Node,
    /// For `=~`/`!~` with a literal pattern: the pattern, compiled by the type checker.
    pub regex: Option<Box<Regex>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Pow,
    Matches,
    NotMatches,
}

impl BinOp {
    pub(super) fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Pow => "**",
            BinOp::Matches => "=~",
            BinOp::NotMatches => "!~",
        }
    }
}

/// Operators of each binary level, longest first where one is a prefix of another.
const DISJUNCTION: &[BinOp] = &[BinOp::Or];
const CONJUNCTION: &[BinOp] = &[BinOp::And];
const RELATIONAL: &[BinOp] = &[BinOp::Eq, BinOp::Ne, BinOp::Le, BinOp::Lt, BinOp::Ge, BinOp::Gt];
const ADDITIVE: &[BinOp] = &[BinOp::Add, BinOp::Sub];
const MULTIPLICATIVE: &[BinOp] = &[BinOp::Mul, BinOp::Div, BinOp::Rem];
const MATCH: &[BinOp] = &[BinOp::Matches, BinOp::NotMatches];
const POWER: &[BinOp] = &[BinOp::Pow];

/// Parentheses, `not` and `? :` nested deeper than this are refused: it bounds the recursion
/// of the parser, checker and evaluator (a level of parentheses costs about 17 parser frames).
const MAX_NESTING: usize = 32;

/// A parse error at the remaining input `rest`. `message` is `None` only for the recoverable
/// errors of nom's own combinators, which never escape [`parse`] without a message.
#[derive(Debug)]
pub(super) struct PErr<'a> {
    rest: &'a str,
    message: Option<String>,
}

impl<'a> ParseError<&'a str> for PErr<'a> {
    fn from_error_kind(input: &'a str, _: ErrorKind) -> Self {
        PErr { rest: input, message: None }
    }

    fn append(_: &'a str, _: ErrorKind, other: Self) -> Self {
        other
    }
}

type PResult<'a, T> = IResult<&'a str, T, PErr<'a>>;

fn failure<'a>(rest: &'a str, message: impl Into<String>) -> nom::Err<PErr<'a>> {
    nom::Err::Failure(PErr { rest, message: Some(message.into()) })
}

fn fail<'a, T>(rest: &'a str, message: impl Into<String>) -> PResult<'a, T> {
    Err(failure(rest, message))
}

/// Whitespace that may follow any token (and, unlike dCache, precede the first).
pub(super) fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n' | '\x0c')
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == '$'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$'
}

fn space(i: &str) -> PResult<'_, &str> {
    take_while(is_space).parse(i)
}

/// `[A-Za-z_$][A-Za-z0-9_$]*`
fn word(i: &str) -> PResult<'_, &str> {
    recognize((satisfy(is_name_start), take_while(is_name_char))).parse(i)
}

/// An operator token and the whitespace after it. Keywords must be whole words (`notx` is a
/// name, not `not x` as in dCache).
fn operator<'a>(i: &'a str, op: &'static str) -> PResult<'a, &'a str> {
    if op.starts_with(|c: char| c.is_ascii_alphabetic()) {
        match word(i) {
            Ok((rest, w)) if w == op => space(rest).map(|(rest, _)| (rest, w)),
            _ => Err(nom::Err::Error(PErr { rest: i, message: None })),
        }
    } else {
        terminated(tag(op), space).parse(i)
    }
}

/// The input after operator `op` (see [`operator`]), if it comes next. Not inlined, so that
/// nom's temporaries do not grow the frames of the recursive grammar methods.
#[inline(never)]
fn after_operator<'a>(i: &'a str, op: &'static str) -> Option<&'a str> {
    operator(i, op).ok().map(|(rest, _)| rest)
}

/// The first of `ops` that comes next, and the input after it.
#[inline(never)]
fn next_operator<'a>(i: &'a str, ops: &[BinOp]) -> Option<(&'a str, BinOp)> {
    ops.iter().find_map(|op| after_operator(i, op.symbol()).map(|rest| (rest, *op)))
}

/// The next token, for messages: "`)`", "`GiB`", "the end of the expression".
fn describe(rest: &str) -> String {
    const TWO: &[&str] = &["==", "!=", "<=", ">=", "=~", "!~", "**", "&&", "||", "~="];
    if rest.is_empty() {
        return "the end of the expression".into();
    }
    if rest.starts_with(is_space) {
        return "whitespace".into();
    }
    let token = if let Ok((_, w)) = word(rest) {
        w
    } else if let Ok((_, n)) = digit1::<_, PErr>(rest) {
        n
    } else if let Some(two) = TWO.iter().find(|t| rest.starts_with(**t)) {
        two
    } else {
        let len = rest.chars().next().map_or(0, char::len_utf8);
        &rest[..len]
    };
    format!("`{token}`")
}

/// A hint for a token left over after a complete expression, for operators people try.
fn leftover_hint(rest: &str) -> &'static str {
    let hints: &[(&str, &str)] = &[
        ("&&", "; write `and`"),
        ("||", "; write `or`"),
        ("~=", "; the match operator is `=~`"),
        ("!", "; write `not`"),
        ("=", "; compare with `==`"),
        (")", " without a `(`"),
    ];
    hints.iter().find(|(token, _)| rest.starts_with(token)).map_or("", |(_, hint)| hint)
}

struct Grammar<'a> {
    text: &'a str,
    nesting: Cell<usize>,
}

type Level<'a> = fn(&Grammar<'a>, &'a str) -> PResult<'a, Node>;

impl<'a> Grammar<'a> {
    fn offset(&self, rest: &'a str) -> usize {
        self.text.len() - rest.len()
    }

    fn enter(&self, at: &'a str) -> Result<(), nom::Err<PErr<'a>>> {
        let depth = self.nesting.get() + 1;
        if depth > MAX_NESTING {
            return Err(failure(at, format!("expression nested too deeply (more than {MAX_NESTING} levels)")));
        }
        self.nesting.set(depth);
        Ok(())
    }

    fn leave(&self) {
        self.nesting.set(self.nesting.get() - 1);
    }

    /// `If := Disjunction [ '?' If ':' If ]`
    fn conditional(&self, i: &'a str) -> PResult<'a, Node> {
        let (i, cond) = self.disjunction(i)?;
        let Some(rest) = after_operator(i, "?") else {
            return Ok((i, cond));
        };
        let at = self.offset(i);
        self.enter(i)?;
        let (rest, then) = self.conditional(rest)?;
        let Some(rest) = after_operator(rest, ":") else {
            return Err(self.no_colon(i, rest));
        };
        let (rest, otherwise) = self.conditional(rest)?;
        self.leave();
        let kind = Kind::Cond { cond: Box::new(cond), then: Box::new(then), otherwise: Box::new(otherwise) };
        Ok((rest, Node { kind, at }))
    }

    #[cold]
    #[inline(never)]
    fn no_colon(&self, question: &'a str, rest: &'a str) -> nom::Err<PErr<'a>> {
        let at = self.offset(question);
        failure(rest, format!("expected `:` of the `?` at offset {at}, found {}", describe(rest)))
    }

    /// One left-associative binary level: `next { op next }`.
    fn binary(&self, i: &'a str, ops: &[BinOp], next: Level<'a>) -> PResult<'a, Node> {
        let (mut i, first) = next(self, i)?;
        let mut rest = Vec::new();
        while let Some((after, op)) = next_operator(i, ops) {
            let at = self.offset(i);
            let (after, rhs) = next(self, after)?;
            rest.push(Link { op, at, rhs, regex: None });
            i = after;
        }
        match rest.last() {
            None => Ok((i, first)),
            Some(last) => {
                let at = last.at;
                Ok((i, Node { kind: Kind::Chain { first: Box::new(first), rest }, at }))
            }
        }
    }

    fn disjunction(&self, i: &'a str) -> PResult<'a, Node> {
        self.binary(i, DISJUNCTION, Self::conjunction)
    }

    fn conjunction(&self, i: &'a str) -> PResult<'a, Node> {
        self.binary(i, CONJUNCTION, Self::negation)
    }

    /// `Negation := 'not' Negation | Relational`
    fn negation(&self, i: &'a str) -> PResult<'a, Node> {
        let Some(rest) = after_operator(i, "not") else {
            return self.relational(i);
        };
        let at = self.offset(i);
        self.enter(i)?;
        let (rest, operand) = self.negation(rest)?;
        self.leave();
        Ok((rest, Node { kind: Kind::Not(Box::new(operand)), at }))
    }

    fn relational(&self, i: &'a str) -> PResult<'a, Node> {
        self.binary(i, RELATIONAL, Self::additive)
    }

    fn additive(&self, i: &'a str) -> PResult<'a, Node> {
        self.binary(i, ADDITIVE, Self::multiplicative)
    }

    fn multiplicative(&self, i: &'a str) -> PResult<'a, Node> {
        self.binary(i, MULTIPLICATIVE, Self::matching)
    }

    fn matching(&self, i: &'a str) -> PResult<'a, Node> {
        self.binary(i, MATCH, Self::unary)
    }

    /// `Unary := { '+' | '-' } Power`
    fn unary(&self, i: &'a str) -> PResult<'a, Node> {
        let at = self.offset(i);
        let (mut rest, mut signs, mut negate) = (i, 0usize, false);
        loop {
            if let Some(r) = after_operator(rest, "-") {
                negate = !negate;
                rest = r;
            } else if let Some(r) = after_operator(rest, "+") {
                rest = r;
            } else {
                break;
            }
            signs += 1;
        }
        let (rest, operand) = self.power(rest)?;
        if signs == 0 {
            return Ok((rest, operand));
        }
        Ok((rest, Node { kind: Kind::Sign { negate, operand: Box::new(operand) }, at }))
    }

    /// `Power := Primary { '**' Primary }`, left-associative as in dCache.
    fn power(&self, i: &'a str) -> PResult<'a, Node> {
        self.binary(i, POWER, Self::primary)
    }

    /// `Primary := '(' If ')' | Literal | QualifiedIdentifier`
    fn primary(&self, i: &'a str) -> PResult<'a, Node> {
        match i.chars().next() {
            Some('(') => self.parenthesized(i),
            Some(c) if c.is_ascii_digit() => self.number(i),
            Some('\'' | '"') => self.string(i),
            Some(c) if is_name_start(c) => self.name(i),
            _ => self.no_operand(i),
        }
    }

    /// `'(' If ')'`. Kept apart from [`Grammar::primary`] so that the frames of the recursion
    /// through parentheses stay small.
    fn parenthesized(&self, i: &'a str) -> PResult<'a, Node> {
        let rest = after_operator(i, "(").unwrap_or(i);
        self.enter(i)?;
        let (rest, inner) = self.conditional(rest)?;
        self.leave();
        match after_operator(rest, ")") {
            Some(rest) => Ok((rest, inner)),
            None => Err(self.unclosed(i, rest)),
        }
    }

    #[cold]
    #[inline(never)]
    fn unclosed(&self, open: &'a str, rest: &'a str) -> nom::Err<PErr<'a>> {
        let at = self.offset(open);
        failure(rest, format!("expected `)` to close the `(` at offset {at}, found {}", describe(rest)))
    }

    #[cold]
    #[inline(never)]
    fn no_operand(&self, i: &'a str) -> PResult<'a, Node> {
        let before = self.text[..self.offset(i)].trim_end_matches(is_space);
        let hint = if before.ends_with("**") && i.starts_with(['-', '+']) {
            "; a signed exponent needs parentheses: `2 ** (-1)`"
        } else if i.starts_with('!') {
            "; write `not`"
        } else {
            ""
        };
        fail(i, format!("expected a number, string, name or `(`, found {}{hint}", describe(i)))
    }

    /// `Number [Unit]`: digits with an optional fraction, then optionally (after optional
    /// whitespace) a unit. A unit may carry a trailing `B` (`10GiB`), as elsewhere in Tidepool.
    fn number(&self, i: &'a str) -> PResult<'a, Node> {
        let at = self.offset(i);
        let (rest, digits) = recognize((digit1, opt((char('.'), digit1)))).parse(i)?;
        if rest.starts_with('.') {
            return fail(rest, "a number is digits with an optional fraction, like `12` or `0.5`");
        }
        let Ok(mut value) = digits.parse::<f64>() else {
            return fail(i, "not a number");
        };
        let (rest, _) = space(rest)?;
        let mut rest = rest;
        if let Ok((after, unit)) = word(rest) {
            let multiplier = tidepool_p2p::units::unit_multiplier(unit.strip_suffix('B').unwrap_or(unit));
            if let Some(multiplier) = multiplier {
                value *= multiplier as f64;
                (rest, _) = space(after)?;
            } else if unit.starts_with(['k', 'K', 'M', 'G', 'T', 'P', 'B']) {
                return fail(
                    rest,
                    format!(
                        "unknown unit `{unit}`; the units are k K M G T P (powers of 1000) and Ki Mi Gi Ti Pi \
                         (powers of 1024)"
                    ),
                );
            }
        }
        Ok((rest, Node { kind: Kind::Number(value), at }))
    }

    /// `'...'` or `"..."`: no escapes (a backslash is an ordinary character), no line breaks,
    /// and no quote of the same kind inside.
    fn string(&self, i: &'a str) -> PResult<'a, Node> {
        let at = self.offset(i);
        let quote = if i.starts_with('"') { '"' } else { '\'' };
        let body = take_while(|c: char| c != quote && c != '\n' && c != '\r');
        let Ok((rest, text)) = delimited(char(quote), body, char::<&str, PErr>(quote)).parse(i) else {
            return fail(i, format!("unterminated string: the closing {quote} must be on the same line"));
        };
        let (rest, _) = space(rest)?;
        Ok((rest, Node { kind: Kind::Str(text.to_string()), at }))
    }

    /// `true`, `false` or a qualified identifier `name { '.' name }` (no spaces around dots).
    fn name(&self, i: &'a str) -> PResult<'a, Node> {
        let at = self.offset(i);
        let (mut rest, _) = word(i)?;
        while let Some(after_dot) = rest.strip_prefix('.') {
            let Ok((after, _)) = word(after_dot) else {
                return fail(after_dot, format!("expected a name after `.`, found {}", describe(after_dot)));
            };
            rest = after;
        }
        let name = &i[..i.len() - rest.len()];
        let kind = match name {
            "true" => Kind::Bool(true),
            "false" => Kind::Bool(false),
            "and" | "or" | "not" => {
                let hint = if name == "not" { "; put `not ...` in parentheses here" } else { "" };
                return fail(i, format!("expected a number, string, name or `(`, found `{name}`{hint}"));
            }
            _ => Kind::Symbol { name: name.to_string(), ty: None },
        };
        let (rest, _) = space(rest)?;
        Ok((rest, Node { kind, at }))
    }
}

/// Parses a whole expression. Leading and trailing whitespace is allowed.
pub(super) fn parse(text: &str) -> Result<Node, ExprError> {
    let grammar = Grammar { text, nesting: Cell::new(0) };
    let parsed = space(text).and_then(|(rest, _)| grammar.conditional(rest)).and_then(|(rest, node)| {
        if rest.is_empty() {
            Ok(node)
        } else {
            let message = format!(
                "unexpected {}{}: expected an operator or the end of the expression",
                describe(rest),
                leftover_hint(rest)
            );
            Err(failure(rest, message))
        }
    });
    parsed.map_err(|err| match err {
        nom::Err::Error(e) | nom::Err::Failure(e) => ExprError {
            offset: text.len() - e.rest.len(),
            message: e.message.unwrap_or_else(|| format!("syntax error at {}", describe(e.rest))),
        },
        nom::Err::Incomplete(_) => ExprError { offset: text.len(), message: "incomplete expression".into() },
    })
}
