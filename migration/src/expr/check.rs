//! The type rules of docs/dcache-compatibility.md#the-expression-language, with `==`/`!=` defined on every
//! type (dCache's boolean `==` was always true, docs/dcache-compatibility.md#dcache-defects-not-reproduced).
//! Each error points at the offending operand: a literal or name, or the operator that produced the offending value.

use super::parse::{BinOp, Kind, Link, Node};
use super::regex::Regex;
use super::{ExprError, Type};

type Symbols<'s> = &'s dyn Fn(&str) -> Option<Type>;

#[cold]
fn mismatch(at: usize, what: &str, want: Type, found: Type) -> ExprError {
    ExprError { offset: at, message: format!("{what} {want}, found {found}") }
}

/// Requires `node` to have type `want`; `what` describes the requirement ("`not` needs a").
fn expect(node: &mut Node, want: Type, what: &str, symbols: Symbols) -> Result<(), ExprError> {
    let found = check(node, symbols)?;
    if found != want {
        return Err(mismatch(node.at, what, want, found));
    }
    Ok(())
}

/// Checks `node` and the nodes below it, filling in symbol types and compiling literal
/// patterns, and returns its type.
pub(super) fn check(node: &mut Node, symbols: Symbols) -> Result<Type, ExprError> {
    let at = node.at;
    match &mut node.kind {
        Kind::Number(_) => Ok(Type::Number),
        Kind::Str(_) => Ok(Type::String),
        Kind::Bool(_) => Ok(Type::Boolean),
        Kind::Symbol { name, ty } => {
            let found = symbols(name).ok_or_else(|| unknown_symbol(at, name))?;
            *ty = Some(found);
            Ok(found)
        }
        Kind::Sign { negate, operand } => {
            expect(operand, Type::Number, if *negate { "unary `-` needs a" } else { "unary `+` needs a" }, symbols)?;
            Ok(Type::Number)
        }
        Kind::Not(operand) => {
            expect(operand, Type::Boolean, "`not` needs a", symbols)?;
            Ok(Type::Boolean)
        }
        Kind::Chain { first, rest } => {
            let mut left = check(first, symbols)?;
            let mut left_at = first.at;
            for link in rest {
                left = check_link(left, left_at, link, symbols)?;
                left_at = link.at;
            }
            Ok(left)
        }
        Kind::Cond { cond, then, otherwise } => {
            expect(cond, Type::Boolean, "the condition before `?` must be a", symbols)?;
            let left = check(then, symbols)?;
            let right = check(otherwise, symbols)?;
            if left != right {
                return Err(branches_differ(otherwise.at, left, right));
            }
            Ok(left)
        }
    }
}

/// The type of `left op rhs`, where `left` (of type `left_ty`) has its main token at `left_at`.
fn check_link(left_ty: Type, left_at: usize, link: &mut Link, symbols: Symbols) -> Result<Type, ExprError> {
    let op = link.op;
    let operand_ty = match op {
        BinOp::Or | BinOp::And => Type::Boolean,
        BinOp::Matches | BinOp::NotMatches => Type::String,
        BinOp::Eq | BinOp::Ne => {
            let right_ty = check(&mut link.rhs, symbols)?;
            if left_ty != right_ty {
                return Err(not_comparable(link.rhs.at, op, left_ty, right_ty));
            }
            return Ok(Type::Boolean);
        }
        _ => Type::Number,
    };
    let what = needs(op);
    if left_ty != operand_ty {
        return Err(mismatch(left_at, &what, operand_ty, left_ty));
    }
    expect(&mut link.rhs, operand_ty, &what, symbols)?;
    if let (BinOp::Matches | BinOp::NotMatches, Kind::Str(pattern)) = (op, &link.rhs.kind) {
        // The pattern's text starts one byte (the quote) after the literal.
        let regex = Regex::new(pattern).map_err(|e| ExprError {
            offset: link.rhs.at + 1 + e.offset,
            message: format!("invalid regular expression: {}", e.message),
        })?;
        link.regex = Some(Box::new(regex));
    }
    Ok(match op {
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem | BinOp::Pow => Type::Number,
        _ => Type::Boolean,
    })
}

fn needs(op: BinOp) -> String {
    format!("`{}` needs a", op.symbol())
}

#[cold]
fn unknown_symbol(at: usize, name: &str) -> ExprError {
    ExprError { offset: at, message: format!("unknown symbol `{name}`") }
}

#[cold]
fn not_comparable(at: usize, op: BinOp, left: Type, right: Type) -> ExprError {
    ExprError {
        offset: at,
        message: format!("`{}` compares values of one type, found {left} and {right}", op.symbol()),
    }
}

#[cold]
fn branches_differ(at: usize, left: Type, right: Type) -> ExprError {
    ExprError { offset: at, message: format!("both branches of `? :` must have one type, found {left} and {right}") }
}
