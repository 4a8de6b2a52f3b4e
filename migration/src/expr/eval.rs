//! Evaluation of a checked tree (docs/dcache-compatibility.md#the-expression-language): IEEE double
//! arithmetic (`/` by zero gives ±∞ or NaN, `%` is the floating remainder, `**` is `powf`), short-circuit
//! `and`/`or`, and only the chosen branch of `? :` is evaluated.

use super::parse::{BinOp, Kind, Link, Node};
use super::regex::Regex;
use super::{ExprError, Type, Value};

type Values<'v> = &'v dyn Fn(&str) -> Option<Value>;

/// A value of an unexpected type: impossible after type checking unless a symbol's value
/// disagrees with its declaration, which [`eval`] reports first.
#[cold]
fn internal(at: usize, want: Type, got: &Value) -> ExprError {
    ExprError { offset: at, message: format!("internal error: expected a {want}, got {}", got.ty()) }
}

fn number(value: Value, at: usize) -> Result<f64, ExprError> {
    match value {
        Value::Number(n) => Ok(n),
        other => Err(internal(at, Type::Number, &other)),
    }
}

fn boolean(value: Value, at: usize) -> Result<bool, ExprError> {
    match value {
        Value::Boolean(b) => Ok(b),
        other => Err(internal(at, Type::Boolean, &other)),
    }
}

fn string(value: Value, at: usize) -> Result<String, ExprError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(internal(at, Type::String, &other)),
    }
}

pub(super) fn eval(node: &Node, values: Values) -> Result<Value, ExprError> {
    Ok(match &node.kind {
        Kind::Number(n) => Value::Number(*n),
        Kind::Str(s) => Value::String(s.clone()),
        Kind::Bool(b) => Value::Boolean(*b),
        Kind::Symbol { name, ty } => symbol(name, *ty, node.at, values)?,
        Kind::Sign { negate, operand } => {
            let n = number(eval(operand, values)?, operand.at)?;
            Value::Number(if *negate { -n } else { n })
        }
        Kind::Not(operand) => Value::Boolean(!boolean(eval(operand, values)?, operand.at)?),
        Kind::Chain { first, rest } => {
            let mut left = eval(first, values)?;
            let mut left_at = first.at;
            for link in rest {
                left = eval_link(left, left_at, link, values)?;
                left_at = link.at;
            }
            left
        }
        Kind::Cond { cond, then, otherwise } => {
            if boolean(eval(cond, values)?, cond.at)? {
                eval(then, values)?
            } else {
                eval(otherwise, values)?
            }
        }
    })
}

fn symbol(name: &str, declared: Option<Type>, at: usize, values: Values) -> Result<Value, ExprError> {
    let Some(value) = values(name) else {
        return Err(ExprError { offset: at, message: format!("no value for `{name}`") });
    };
    if Some(value.ty()) != declared {
        let declared = declared.map_or_else(|| "unchecked".to_string(), |t| t.to_string());
        let message = format!("`{name}` has a {} value but is declared {declared}", value.ty());
        return Err(ExprError { offset: at, message });
    }
    Ok(value)
}

/// `left op rhs`, evaluating `rhs` only when `and`/`or` need it.
fn eval_link(left: Value, left_at: usize, link: &Link, values: Values) -> Result<Value, ExprError> {
    let rhs_at = link.rhs.at;
    Ok(match link.op {
        BinOp::And => Value::Boolean(boolean(left, left_at)? && boolean(eval(&link.rhs, values)?, rhs_at)?),
        BinOp::Or => Value::Boolean(boolean(left, left_at)? || boolean(eval(&link.rhs, values)?, rhs_at)?),
        BinOp::Eq | BinOp::Ne => {
            let equal = match (left, eval(&link.rhs, values)?) {
                (Value::Number(a), Value::Number(b)) => a == b,
                (Value::String(a), Value::String(b)) => a == b,
                (Value::Boolean(a), Value::Boolean(b)) => a == b,
                (a, b) => return Err(internal(rhs_at, a.ty(), &b)),
            };
            Value::Boolean(equal == (link.op == BinOp::Eq))
        }
        BinOp::Matches | BinOp::NotMatches => {
            let text = string(left, left_at)?;
            let matched = match &link.regex {
                Some(regex) => regex.is_full_match(&text),
                None => {
                    let pattern = string(eval(&link.rhs, values)?, rhs_at)?;
                    let regex = Regex::new(&pattern).map_err(|e| ExprError {
                        offset: rhs_at,
                        message: format!("invalid regular expression {pattern:?}: {}", e.message),
                    })?;
                    regex.is_full_match(&text)
                }
            };
            Value::Boolean(matched == (link.op == BinOp::Matches))
        }
        op => {
            let a = number(left, left_at)?;
            let b = number(eval(&link.rhs, values)?, rhs_at)?;
            match op {
                BinOp::Lt => Value::Boolean(a < b),
                BinOp::Le => Value::Boolean(a <= b),
                BinOp::Gt => Value::Boolean(a > b),
                BinOp::Ge => Value::Boolean(a >= b),
                BinOp::Add => Value::Number(a + b),
                BinOp::Sub => Value::Number(a - b),
                BinOp::Mul => Value::Number(a * b),
                BinOp::Div => Value::Number(a / b),
                BinOp::Rem => Value::Number(a % b),
                // `**`, the only numeric operator left.
                _ => Value::Number(a.powf(b)),
            }
        }
    })
}
