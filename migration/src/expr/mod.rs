//! The expression language of `-include-when`, `-exclude-when`, `-pause-when` and
//! `-stop-when` (docs/dcache-compatibility.md#the-expression-language): parsed with nom, type-checked
//! against the symbols of its context when the job is created, evaluated whenever pool information changes.
//!
//! ```text
//! If             := Disjunction [ '?' If ':' If ]           right-associative
//! Disjunction    := Conjunction { 'or' Conjunction }
//! Conjunction    := Negation { 'and' Negation }
//! Negation       := 'not' Negation | Relational
//! Relational     := Additive { ('==' | '!=' | '<=' | '<' | '>=' | '>') Additive }
//! Additive       := Multiplicative { ('+' | '-') Multiplicative }
//! Multiplicative := Match { ('*' | '/' | '%') Match }
//! Match          := Unary { ('=~' | '!~') Unary }            tighter than `*`, as in dCache
//! Unary          := { '+' | '-' } Power
//! Power          := Primary { '**' Primary }                 left-associative, as in dCache
//! Primary        := '(' If ')' | 'true' | 'false' | Number [Unit] | String | Name { '.' Name }
//! ```
//!
//! Numbers are doubles (`12`, `0.5`) with an optional unit: `k K M G T P` are powers of 1000,
//! `Ki Mi Gi Ti Pi` powers of 1024. Strings are `'...'` or `"..."` without escapes. `=~`
//! and `!~` match the whole left string against a regular expression (a subset of Java's;
//! see `regex.rs`). Binary operators are left-associative.
//!
//! Differences from dCache, all deliberate:
//! - `==` on booleans compares them (dCache's was always true,
//!   docs/dcache-compatibility.md#dcache-defects-not-reproduced);
//! - whitespace before the first token is accepted;
//! - keywords are whole words: `notx` is the name `notx`, not `not x`;
//! - a unit may carry a trailing `B` (`10GiB`), as in every other Tidepool size;
//! - a backslash in a string is an ordinary character (dCache refuses it), so patterns such as
//!   `'pool\d+'` can be written;
//! - a sign `+`/`-` needs a NUMBER even when the minus signs cancel out;
//! - parentheses, `not` and `? :` nested more than 32 levels deep are refused (bounds the
//!   recursion; runs of one level's operators, such as `a or b or c ...`, are flat and unlimited).

mod check;
mod eval;
mod parse;
mod regex;
#[cfg(test)]
mod tests;

use std::fmt;

use chrono::{Datelike, Timelike};

/// The type of an expression or a symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    /// A double; sizes are bytes.
    Number,
    String,
    Boolean,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Number => "NUMBER",
            Type::String => "STRING",
            Type::Boolean => "BOOLEAN",
        })
    }
}

/// The value of an expression or a symbol.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    String(String),
    Boolean(bool),
}

impl Value {
    pub fn ty(&self) -> Type {
        match self {
            Value::Number(_) => Type::Number,
            Value::String(_) => Type::String,
            Value::Boolean(_) => Type::Boolean,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(n) => write!(f, "{n}"),
            Value::String(s) => f.write_str(s),
            Value::Boolean(b) => write!(f, "{b}"),
        }
    }
}

/// A syntax, type or evaluation error. `offset` is the byte offset, in the expression text,
/// of the offending token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    pub offset: usize,
    pub message: String,
}

impl ExprError {
    /// The message, then the line of `text` holding the error with a caret under it:
    ///
    /// ```text
    /// unknown symbol `target.fre`
    ///   target.fre > source.free
    ///   ^
    /// ```
    pub fn render(&self, text: &str) -> String {
        let mut offset = self.offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let is_break = |c: char| c == '\n' || c == '\r';
        let start = text[..offset].rfind(is_break).map_or(0, |p| p + 1);
        let end = text[offset..].find(is_break).map_or(text.len(), |p| offset + p);
        let line: String = text[start..end].chars().map(|c| if c == '\t' { ' ' } else { c }).collect();
        let column = text[start..offset].chars().count();
        format!("{}\n  {}\n  {}^", self.message, line.trim_end(), " ".repeat(column))
    }
}

/// A parsed and type-checked expression.
#[derive(Clone)]
pub struct Expr {
    text: String,
    root: parse::Node,
    ty: Type,
}

/// Parses `text` and checks it against `symbols` (name -> type; `None` for an unknown name).
pub fn parse(text: &str, symbols: &dyn Fn(&str) -> Option<Type>) -> Result<Expr, ExprError> {
    let mut root = parse::parse(text)?;
    let ty = check::check(&mut root, symbols)?;
    Ok(Expr { text: text.to_string(), root, ty })
}

/// Parses `text`, checks it against `symbols` and requires a BOOLEAN: what every `-*-when`
/// option needs (checked when the job is created: docs/dcache-compatibility.md#the-expression-language).
pub fn parse_boolean(text: &str, symbols: &dyn Fn(&str) -> Option<Type>) -> Result<Expr, ExprError> {
    let expr = parse(text, symbols)?;
    if expr.ty != Type::Boolean {
        let first_token = text.len() - text.trim_start_matches(parse::is_space).len();
        return Err(ExprError {
            offset: first_token,
            message: format!("the expression must be a condition (BOOLEAN), found {}", expr.ty),
        });
    }
    Ok(expr)
}

impl Expr {
    /// The text as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn ty(&self) -> Type {
        self.ty
    }

    /// Evaluates the expression; `values` gives each symbol's current value. Fails only if a
    /// symbol the expression reaches has no value or a value of another type than declared,
    /// or a pattern computed at run time is not a valid regular expression.
    pub fn eval(&self, values: &dyn Fn(&str) -> Option<Value>) -> Result<Value, ExprError> {
        eval::eval(&self.root, values)
    }

    /// [`Expr::eval`] for an expression from [`parse_boolean`].
    pub fn eval_bool(&self, values: &dyn Fn(&str) -> Option<Value>) -> Result<bool, ExprError> {
        match self.eval(values)? {
            Value::Boolean(b) => Ok(b),
            other => Err(ExprError { offset: 0, message: format!("expected a BOOLEAN, the value is {}", other.ty()) }),
        }
    }
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expr").field(&self.text).finish()
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Two expressions are equal when their texts are (and so their meaning in one context).
impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.ty == other.ty
    }
}

impl Eq for Expr {}

/// The fields of a pool bound to `source.` or `target.` (docs/dcache-compatibility.md#the-expression-language).
pub const POOL_FIELDS: &[(&str, Type)] = &[
    ("name", Type::String),
    ("cpuCost", Type::Number),
    ("free", Type::Number),
    ("total", Type::Number),
    ("removable", Type::Number),
    ("used", Type::Number),
];

/// Symbols both contexts have besides the pools: the local time.
const TIME_SYMBOLS: &[(&str, Type)] = &[("time.hour", Type::Number), ("time.weekday", Type::Number)];

/// Symbols of `-pause-when` and `-stop-when` besides `source.*` and the time: the job's queue
/// (`queue.files` queued files, `queue.bytes` bytes still to transfer) and `targets` (online
/// pools in the filtered target list).
const QUEUE_SYMBOLS: &[(&str, Type)] =
    &[("queue.files", Type::Number), ("queue.bytes", Type::Number), ("targets", Type::Number)];

fn lookup(table: &[(&str, Type)], name: &str) -> Option<Type> {
    table.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// `<prefix>.<field>` for a field of [`POOL_FIELDS`].
fn pool_symbol(prefix: &str, name: &str) -> Option<Type> {
    name.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('.')).and_then(|field| lookup(POOL_FIELDS, field))
}

/// The symbol table of `-include-when` and `-exclude-when`: `source.*`, `target.*` (the
/// candidate target pool) and the local time.
pub fn target_symbols(name: &str) -> Option<Type> {
    pool_symbol("source", name).or_else(|| pool_symbol("target", name)).or_else(|| lookup(TIME_SYMBOLS, name))
}

/// The symbol table of `-pause-when` and `-stop-when`: `source.*`, `queue.files`,
/// `queue.bytes`, `targets` and the local time.
pub fn lifetime_symbols(name: &str) -> Option<Type> {
    pool_symbol("source", name).or_else(|| lookup(QUEUE_SYMBOLS, name)).or_else(|| lookup(TIME_SYMBOLS, name))
}

/// The value of `time.hour` (0-23) or `time.weekday` (0 = Sunday ... 6 = Saturday, as in
/// cron) at `now`, which the caller takes in local time; `None` for any other name.
pub fn time_value(name: &str, now: &(impl Datelike + Timelike)) -> Option<Value> {
    match name {
        "time.hour" => Some(Value::Number(f64::from(now.hour()))),
        "time.weekday" => Some(Value::Number(f64::from(now.weekday().num_days_from_sunday()))),
        _ => None,
    }
}
