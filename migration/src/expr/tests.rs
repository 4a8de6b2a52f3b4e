use std::collections::HashMap;

use super::*;

/// A symbol table for tests: numbers `x`, `y`, `a.b.c`; string `s`; boolean `flag`.
fn test_symbols(name: &str) -> Option<Type> {
    match name {
        "x" | "y" | "a.b.c" | "$v_1" => Some(Type::Number),
        "s" => Some(Type::String),
        "flag" => Some(Type::Boolean),
        _ => None,
    }
}

fn test_values(name: &str) -> Option<Value> {
    match name {
        "x" => Some(Value::Number(3.0)),
        "y" => Some(Value::Number(4.0)),
        "a.b.c" | "$v_1" => Some(Value::Number(1.0)),
        "s" => Some(Value::String("pool1".into())),
        "flag" => Some(Value::Boolean(true)),
        _ => None,
    }
}

fn eval(text: &str) -> Value {
    let expr = parse(text, &test_symbols).unwrap_or_else(|e| panic!("{text:?}:\n{}", e.render(text)));
    expr.eval(&test_values).unwrap_or_else(|e| panic!("{text:?}:\n{}", e.render(text)))
}

fn num(n: f64) -> Value {
    Value::Number(n)
}

fn boolean(b: bool) -> Value {
    Value::Boolean(b)
}

fn string(s: &str) -> Value {
    Value::String(s.into())
}

fn check_values(table: &[(&str, Value)]) {
    for (text, want) in table {
        assert_eq!(eval(text), *want, "{text:?}");
    }
}

/// Checks that `text` is refused at `offset` with a message containing `message`.
fn check_errors(table: &[(&str, usize, &str)]) {
    for (text, offset, message) in table {
        let err = parse(text, &test_symbols).expect_err(text);
        assert_eq!(err.offset, *offset, "{text:?}:\n{}", err.render(text));
        assert!(err.message.contains(message), "{text:?}: want {message:?}, got:\n{}", err.render(text));
    }
}

#[test]
fn literals_and_units() {
    check_values(&[
        ("0", num(0.0)),
        ("42", num(42.0)),
        ("2.5", num(2.5)),
        ("007", num(7.0)),
        ("1k", num(1e3)),
        ("1 K", num(1e3)),
        ("1 M", num(1e6)),
        ("1 G", num(1e9)),
        ("1 T", num(1e12)),
        ("1 P", num(1e15)),
        ("1 Ki", num(1024.0)),
        ("1 Mi", num(1048576.0)),
        ("1 Gi", num(1073741824.0)),
        ("1 Ti", num(1099511627776.0)),
        ("1 Pi", num(1125899906842624.0)),
        ("1.5Ki", num(1536.0)),
        ("2\tk", num(2000.0)),
        ("10GiB", num(10.0 * 1073741824.0)),
        ("2 kB", num(2000.0)),
        ("7 B", num(7.0)),
        ("1k + 1", num(1001.0)),
        ("true", boolean(true)),
        ("false", boolean(false)),
        ("'single'", string("single")),
        ("\"double\"", string("double")),
        ("''", string("")),
        ("\"it's\"", string("it's")),
        ("'say \"hi\"'", string("say \"hi\"")),
        (r"'back\slash\'", string(r"back\slash\")),
        ("'  spaced  '", string("  spaced  ")),
    ]);
}

#[test]
fn arithmetic() {
    check_values(&[
        ("5/2", num(2.5)),
        ("5%2", num(1.0)),
        ("3**3", num(27.0)),
        ("5.5 % 2", num(1.5)),
        ("-5 % 3", num(-2.0)),
        ("2**0.5 * 2**0.5", num(2.0f64.sqrt() * 2.0f64.sqrt())),
        ("1/0", num(f64::INFINITY)),
        ("-1/0", num(f64::NEG_INFINITY)),
        ("1/0 > 1 P", boolean(true)),
        ("0/0 == 0/0", boolean(false)),
        ("0/0 != 0/0", boolean(true)),
        ("x * y", num(12.0)),
        ("a.b.c + $v_1", num(2.0)),
    ]);
}

#[test]
fn unary_signs() {
    check_values(&[
        ("--+-++1", num(-1.0)),
        ("-1", num(-1.0)),
        ("+1", num(1.0)),
        ("- -1", num(1.0)),
        ("1--1", num(2.0)),
        ("1 - - - 1", num(0.0)),
        ("-x", num(-3.0)),
    ]);
}

#[test]
fn precedence_and_associativity() {
    check_values(&[
        ("2 + 3 * 4", num(14.0)),
        ("(2 + 3) * 4", num(20.0)),
        ("10 - 4 - 3", num(3.0)),
        ("64 / 4 / 2", num(8.0)),
        ("2 * 3 % 4", num(2.0)),
        ("2 * 3 ** 2", num(18.0)),
        // `**` is left-associative in dCache: (2**3)**2.
        ("2 ** 3 ** 2", num(64.0)),
        // A sign binds looser than `**`: -(2**2).
        ("-2 ** 2", num(-4.0)),
        ("(-2) ** 2", num(4.0)),
        ("1 + 2 < 4", boolean(true)),
        ("true or true and false", boolean(true)),
        ("(true or true) and false", boolean(false)),
        ("not false and false", boolean(false)),
        ("not (false and false)", boolean(true)),
        ("not 1 == 2", boolean(true)),
        ("not not true", boolean(true)),
        ("false or not false", boolean(true)),
        // `=~` binds tighter than `==`.
        ("'a' =~ 'a' == true", boolean(true)),
        ("'a' =~ 'b' != true", boolean(true)),
        // `? :` is the loosest and right-associative.
        ("true ? 1 : 2 + 10", num(1.0)),
        ("false ? 1 : 2 + 10", num(12.0)),
        ("false ? 1 : true ? 2 : 3", num(2.0)),
        ("false ? 1 : false ? 2 : 3", num(3.0)),
        ("true ? false ? 1 : 2 : 3", num(2.0)),
        ("true or false ? 'y' : 'n'", string("y")),
        ("1 < 2 ? x : y", num(3.0)),
    ]);
}

#[test]
fn comparisons() {
    check_values(&[
        ("1 < 2", boolean(true)),
        ("2 < 2", boolean(false)),
        ("2 <= 2", boolean(true)),
        ("3 > 2", boolean(true)),
        ("2 > 2", boolean(false)),
        ("2 >= 3", boolean(false)),
        ("3 >= 3", boolean(true)),
        ("1 == 1", boolean(true)),
        ("1 == 1.0", boolean(true)),
        ("1 != 1", boolean(false)),
        ("1k == 1000", boolean(true)),
        ("1Ki != 1k", boolean(true)),
        ("'abc' == \"abc\"", boolean(true)),
        ("\"abc\" == 'abc'", boolean(true)),
        ("'abc' != 'abd'", boolean(true)),
        ("'abc' == 'ABC'", boolean(false)),
        ("s == 'pool1'", boolean(true)),
    ]);
}

#[test]
fn boolean_equality_compares_its_operands() {
    // docs/dcache-compatibility.md#dcache-defects-not-reproduced: `==` on booleans was always true.
    check_values(&[
        ("true == false", boolean(false)),
        ("false == true", boolean(false)),
        ("true == true", boolean(true)),
        ("false == false", boolean(true)),
        ("true != false", boolean(true)),
        ("true != true", boolean(false)),
        ("(1 < 2) == (2 < 1)", boolean(false)),
        ("flag == true", boolean(true)),
        ("flag == false", boolean(false)),
        ("1 == 1 == true", boolean(true)),
    ]);
}

#[test]
fn conditional_with_each_type() {
    check_values(&[
        ("true ? 1 : 2", num(1.0)),
        ("false ? 1 : 2", num(2.0)),
        ("true ? false : true", boolean(false)),
        ("false ? false : true", boolean(true)),
        ("true ? 'a' : \"b\"", string("a")),
        ("false ? 'a' : 'b'", string("b")),
        ("flag ? s : 'none'", string("pool1")),
    ]);
}

#[test]
fn logic() {
    check_values(&[
        ("true and true", boolean(true)),
        ("true and false", boolean(false)),
        ("false and true", boolean(false)),
        ("false or false", boolean(false)),
        ("false or true", boolean(true)),
        ("true or false", boolean(true)),
        ("not true", boolean(false)),
        ("not false", boolean(true)),
        ("not(false)", boolean(true)),
        ("(true)and(false)", boolean(false)),
    ]);
}

#[test]
fn regex_matching_is_whole_string() {
    check_values(&[
        ("'pool1' =~ 'pool[12]'", boolean(true)),
        ("'pool3' =~ 'pool[12]'", boolean(false)),
        ("'pool12' =~ 'pool[12]'", boolean(false)),
        ("'pool1' =~ 'pool'", boolean(false)),
        ("'pool1' =~ 'pool.*'", boolean(true)),
        ("'pool1' !~ 'pool[12]'", boolean(false)),
        ("'pool3' !~ 'pool[12]'", boolean(true)),
        ("\"pool-7\" =~ \"pool-\\d+\"", boolean(true)),
        (r"'pool.7' =~ 'pool\.\d'", boolean(true)),
        (r"'poolx7' =~ 'pool\.\d'", boolean(false)),
        ("'a' =~ 'a|b' and 'c' !~ 'a|b'", boolean(true)),
        ("s =~ 'pool1|pool2'", boolean(true)),
        ("s =~ s", boolean(true)),
        ("'x' =~ (flag ? 'x' : 'y')", boolean(true)),
        ("'' =~ ''", boolean(true)),
    ]);
}

#[test]
fn whitespace_is_accepted_around_tokens() {
    check_values(&[
        ("  true", boolean(true)),
        ("\n\t1 < 2", boolean(true)),
        ("\x0c true \x0c", boolean(true)),
        ("true   ", boolean(true)),
        // An identifier followed by a space (dCache's ExpressionTest).
        ("x ", num(3.0)),
        ("x == 3 ", boolean(true)),
        ("a.b.c\n", num(1.0)),
        ("1\n+\r\n2", num(3.0)),
        ("( 1 + 2 ) * 3", num(9.0)),
        ("1+2*3", num(7.0)),
    ]);
}

#[test]
fn type_errors_point_at_the_offending_token() {
    check_errors(&[
        // dCache's ExpressionTest type errors.
        ("1 ? 2 : 3", 0, "the condition before `?` must be a BOOLEAN, found NUMBER"),
        ("true ? 2 : false", 11, "both branches of `? :` must have one type, found NUMBER and BOOLEAN"),
        ("2.1 == '1'", 7, "`==` compares values of one type, found NUMBER and STRING"),
        ("2.1 and 1", 0, "`and` needs a BOOLEAN, found NUMBER"),
        ("not 2.1", 4, "`not` needs a BOOLEAN, found NUMBER"),
        ("-'bla'", 1, "unary `-` needs a NUMBER, found STRING"),
        ("true <= true", 0, "`<=` needs a NUMBER, found BOOLEAN"),
        ("1+false", 2, "`+` needs a NUMBER, found BOOLEAN"),
        ("1+'one'", 2, "`+` needs a NUMBER, found STRING"),
        ("1 =~ 2", 0, "`=~` needs a STRING, found NUMBER"),
        // More of the same rules.
        ("true and 'x'", 9, "`and` needs a BOOLEAN, found STRING"),
        ("1 or true", 0, "`or` needs a BOOLEAN, found NUMBER"),
        ("'a' =~ 1", 7, "`=~` needs a STRING, found NUMBER"),
        ("'a' !~ true", 7, "`!~` needs a STRING, found BOOLEAN"),
        ("1 < 2 < 3", 2, "`<` needs a NUMBER, found BOOLEAN"),
        ("true != 1", 8, "`!=` compares values of one type, found BOOLEAN and NUMBER"),
        ("+'bla'", 1, "unary `+` needs a NUMBER, found STRING"),
        ("--'bla'", 2, "unary `+` needs a NUMBER, found STRING"),
        ("2 * 'a' =~ 'a'", 8, "`*` needs a NUMBER, found BOOLEAN"),
        ("'a' ** 2", 0, "`**` needs a NUMBER, found STRING"),
        ("x % flag", 4, "`%` needs a NUMBER, found BOOLEAN"),
        ("s ? 1 : 2", 0, "the condition before `?` must be a BOOLEAN, found STRING"),
        ("flag ? 's' : 1", 13, "found STRING and NUMBER"),
        ("unknown > 1", 0, "unknown symbol `unknown`"),
        ("x > a.b", 4, "unknown symbol `a.b`"),
        ("notx", 0, "unknown symbol `notx`"),
        ("truex", 0, "unknown symbol `truex`"),
        ("true.x", 0, "unknown symbol `true.x`"),
    ]);
}

#[test]
fn syntax_errors_point_at_the_offending_token() {
    let deep = format!("{}1{}", "(".repeat(33), ")".repeat(33));
    let deep_not = format!("{}true", "not ".repeat(33));
    check_errors(&[
        ("", 0, "expected a number, string, name or `(`, found the end of the expression"),
        ("   ", 3, "found the end of the expression"),
        ("1 +", 3, "found the end of the expression"),
        ("1 + * 2", 4, "found `*`"),
        ("(1 < 2", 6, "expected `)` to close the `(` at offset 0, found the end of the expression"),
        ("(1 < 2 3", 7, "expected `)` to close the `(` at offset 0, found `3`"),
        ("true ? 1", 8, "expected `:` of the `?` at offset 5"),
        ("true ? 1 : ", 11, "found the end of the expression"),
        ("1 ? 2 : 3 : 4", 10, "unexpected `:`"),
        ("10 GiX", 3, "unknown unit `GiX`"),
        ("10Kb", 2, "unknown unit `Kb`"),
        ("10 Gi B", 6, "unexpected `B`"),
        ("1.", 1, "a number is digits with an optional fraction"),
        ("1.2.3", 3, "a number is digits"),
        (".5", 0, "found `.`"),
        ("1e5", 1, "unexpected `e5`"),
        ("'abc", 0, "unterminated string"),
        ("\"abc'", 0, "unterminated string"),
        ("'a\nb'", 0, "unterminated string"),
        ("x > 'a\rb'", 4, "unterminated string"),
        ("1 && 2", 2, "unexpected `&&`; write `and`"),
        ("true || false", 5, "unexpected `||`; write `or`"),
        ("!true", 0, "found `!`; write `not`"),
        ("x = 1", 2, "unexpected `=`; compare with `==`"),
        ("s ~= 'x'", 2, "unexpected `~=`; the match operator is `=~`"),
        ("1 2", 2, "unexpected `2`: expected an operator or the end of the expression"),
        ("true false", 5, "unexpected `false`"),
        ("1)", 1, "unexpected `)` without a `(`"),
        ("()", 1, "found `)`"),
        ("a. b", 2, "expected a name after `.`, found whitespace"),
        ("a.", 2, "expected a name after `.`, found the end of the expression"),
        ("a.1", 2, "expected a name after `.`, found `1`"),
        ("2 ** -1", 5, "a signed exponent needs parentheses"),
        ("1 == not true", 5, "found `not`; put `not ...` in parentheses here"),
        ("x and and y", 6, "found `and`"),
        ("or", 0, "found `or`"),
        ("not", 3, "found the end of the expression"),
        (&deep, 32, "nested too deeply (more than 32 levels)"),
        (&deep_not, 128, "nested too deeply"),
        // Regular expressions are compiled with the expression; offsets point into the pattern.
        ("'x' =~ '[a'", 8, "invalid regular expression: unclosed character class"),
        ("'x' =~ 'a)'", 9, "invalid regular expression: unmatched `)`"),
        (r"'x' !~ 'a\1'", 9, "backreferences are not supported"),
    ]);
}

#[test]
fn the_whole_expression_must_be_boolean() {
    let table: &[(&str, usize, Type)] = &[
        ("1 + 2", 0, Type::Number),
        ("  x", 2, Type::Number),
        ("'a'", 0, Type::String),
        ("true ? s : s", 0, Type::String),
    ];
    for (text, offset, found) in table {
        let err = parse_boolean(text, &test_symbols).expect_err(text);
        assert_eq!(err.offset, *offset, "{text:?}");
        assert_eq!(err.message, format!("the expression must be a condition (BOOLEAN), found {found}"));
    }
    assert!(parse_boolean("x > 1", &test_symbols).is_ok());
}

#[test]
fn render_puts_a_caret_under_the_offending_token() {
    let text = "target.free > 10 GiX";
    let err = parse(text, &target_symbols).unwrap_err();
    assert_eq!(
        err.render(text),
        "unknown unit `GiX`; the units are k K M G T P (powers of 1000) and Ki Mi Gi Ti Pi (powers of 1024)\n  \
         target.free > 10 GiX\n                   ^"
    );
    let text = "source.free > 1\n  and target.fre > 2";
    let err = parse(text, &target_symbols).unwrap_err();
    assert_eq!(err.render(text), "unknown symbol `target.fre`\n    and target.fre > 2\n        ^");
    let text = "x >";
    let err = parse(text, &test_symbols).unwrap_err();
    assert_eq!(err.render(text), format!("{}\n  x >\n     ^", err.message));
}

type Symbols = fn(&str) -> Option<Type>;

fn pool_values(pairs: &[(&str, Value)]) -> HashMap<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn eval_in(text: &str, symbols: &dyn Fn(&str) -> Option<Type>, values: &HashMap<String, Value>) -> bool {
    let expr = parse_boolean(text, symbols).unwrap_or_else(|e| panic!("{text:?}:\n{}", e.render(text)));
    expr.eval_bool(&|name| values.get(name).cloned()).unwrap_or_else(|e| panic!("{text:?}:\n{}", e.render(text)))
}

#[test]
fn rebalance_expressions() {
    // The expressions `rebalance pgroup` sends (docs/dcache-compatibility.md#rebalance).
    let pools = |source_used: f64, target_used: f64, targets: f64| {
        pool_values(&[
            ("source.name", string("pool1")),
            ("source.total", num(100.0)),
            ("source.used", num(source_used)),
            ("source.free", num(100.0 - source_used)),
            ("target.name", string("pool2")),
            ("target.total", num(100.0)),
            ("target.used", num(target_used)),
            ("target.free", num(100.0 - target_used)),
            ("targets", num(targets)),
        ])
    };
    let include_relative = "target.used < 0.5 * target.total";
    let stop_relative = "targets == 0 or source.used <= 0.5 * source.total";
    let include_free = "target.free > source.free";
    let stop_free = "targets == 0";
    // (expression, context, [source used, target used, targets], expected)
    let (target, lifetime): (Symbols, Symbols) = (target_symbols, lifetime_symbols);
    let table: &[(&str, Symbols, [f64; 3], bool)] = &[
        (include_relative, target, [80.0, 40.0, 1.0], true),
        (include_relative, target, [80.0, 50.0, 1.0], false),
        (include_relative, target, [80.0, 60.0, 1.0], false),
        (stop_relative, lifetime, [80.0, 40.0, 2.0], false),
        (stop_relative, lifetime, [50.0, 40.0, 2.0], true),
        (stop_relative, lifetime, [80.0, 40.0, 0.0], true),
        (include_free, target, [80.0, 40.0, 1.0], true),
        (include_free, target, [30.0, 40.0, 1.0], false),
        (stop_free, lifetime, [30.0, 40.0, 1.0], false),
        (stop_free, lifetime, [30.0, 40.0, 0.0], true),
        ("target.name =~ 'pool[12]' and source.name != target.name", target, [0.0, 0.0, 0.0], true),
        ("source.used <= 0.2 * source.total", lifetime, [20.0, 0.0, 1.0], true),
        ("source.used <= 0.2 * source.total", lifetime, [21.0, 0.0, 1.0], false),
    ];
    for (text, symbols, [source_used, target_used, targets], want) in table {
        let values = pools(*source_used, *target_used, *targets);
        assert_eq!(eval_in(text, symbols, &values), *want, "{text:?} with {values:?}");
    }
}

#[test]
fn sizes_with_units_in_context() {
    let values = pool_values(&[("source.free", num(20.0 * 1e9)), ("queue.bytes", num(3.0 * 1073741824.0))]);
    assert!(eval_in("source.free > 10 GB", &lifetime_symbols, &values));
    assert!(eval_in("source.free < 20.5G", &lifetime_symbols, &values));
    assert!(eval_in("queue.bytes == 3 Gi", &lifetime_symbols, &values));
    assert!(!eval_in("queue.bytes > 3GiB", &lifetime_symbols, &values));
}

#[test]
fn time_window() {
    let night = "time.hour >= 22 or time.hour < 6";
    let weekend = "time.weekday == 0 or time.weekday == 6";
    let at = |day: u32, hour: u32| {
        let when = chrono::NaiveDate::from_ymd_opt(2024, 6, day).and_then(|d| d.and_hms_opt(hour, 30, 0)).unwrap();
        pool_values(&[
            ("time.hour", time_value("time.hour", &when).unwrap()),
            ("time.weekday", time_value("time.weekday", &when).unwrap()),
        ])
    };
    // 2024-06-02 was a Sunday, 2024-06-05 a Wednesday, 2024-06-08 a Saturday.
    assert_eq!(at(2, 13)["time.weekday"], num(0.0));
    assert_eq!(at(8, 13)["time.weekday"], num(6.0));
    assert_eq!(at(5, 23)["time.hour"], num(23.0));
    for symbols in [&target_symbols as &dyn Fn(&str) -> Option<Type>, &lifetime_symbols] {
        assert!(eval_in(night, symbols, &at(5, 23)));
        assert!(eval_in(night, symbols, &at(5, 5)));
        assert!(!eval_in(night, symbols, &at(5, 6)));
        assert!(eval_in(weekend, symbols, &at(2, 12)));
        assert!(eval_in(weekend, symbols, &at(8, 12)));
        assert!(!eval_in(weekend, symbols, &at(5, 12)));
    }
    let noon = chrono::NaiveDate::from_ymd_opt(2024, 6, 5).and_then(|d| d.and_hms_opt(12, 0, 0)).unwrap();
    assert_eq!(time_value("time.minute", &noon), None);
}

#[test]
fn symbol_tables_per_context() {
    for field in ["name", "cpuCost", "free", "total", "removable", "used"] {
        let want = if field == "name" { Type::String } else { Type::Number };
        assert_eq!(POOL_FIELDS.iter().find(|(f, _)| *f == field).map(|(_, t)| *t), Some(want));
        for prefix in ["source", "target"] {
            assert_eq!(target_symbols(&format!("{prefix}.{field}")), Some(want));
        }
        assert_eq!(lifetime_symbols(&format!("source.{field}")), Some(want));
        assert_eq!(lifetime_symbols(&format!("target.{field}")), None);
    }
    for name in ["queue.files", "queue.bytes", "targets"] {
        assert_eq!(lifetime_symbols(name), Some(Type::Number));
        assert_eq!(target_symbols(name), None);
    }
    for name in ["time.hour", "time.weekday"] {
        assert_eq!(lifetime_symbols(name), Some(Type::Number));
        assert_eq!(target_symbols(name), Some(Type::Number));
    }
    assert_eq!(target_symbols("source"), None);
    assert_eq!(target_symbols("target.Free"), None);

    // A symbol of the other context is an error at job creation, pointing at it.
    let err = parse_boolean("source.free > target.free", &lifetime_symbols).unwrap_err();
    assert_eq!((err.offset, err.message.as_str()), (14, "unknown symbol `target.free`"));
    let err = parse_boolean("queue.files > 0", &target_symbols).unwrap_err();
    assert_eq!((err.offset, err.message.as_str()), (0, "unknown symbol `queue.files`"));
}

#[test]
fn evaluation_short_circuits_and_reports_missing_values() {
    // `y` is declared but has no value here.
    let values = |name: &str| if name == "y" { None } else { test_values(name) };
    let value = |text: &str| parse(text, &test_symbols).unwrap().eval(&values);
    assert_eq!(value("false and y > 1"), Ok(boolean(false)));
    assert_eq!(value("true or y > 1"), Ok(boolean(true)));
    assert_eq!(value("true ? 1 : y"), Ok(num(1.0)));
    assert_eq!(value("false ? y : 2"), Ok(num(2.0)));
    assert_eq!(value("true and y > 1"), Err(ExprError { offset: 9, message: "no value for `y`".into() }));

    // A value of another type than declared.
    let wrong = |name: &str| if name == "x" { Some(string("3")) } else { test_values(name) };
    let err = parse("x > 1", &test_symbols).unwrap().eval(&wrong).unwrap_err();
    assert_eq!((err.offset, err.message.as_str()), (0, "`x` has a STRING value but is declared NUMBER"));

    // A pattern computed at run time is compiled then.
    let pattern = |name: &str| if name == "s" { Some(string("pool(")) } else { test_values(name) };
    let err = parse("'pool' =~ s", &test_symbols).unwrap().eval(&pattern).unwrap_err();
    assert_eq!(err.offset, 10);
    assert!(err.message.contains("unclosed group"), "{}", err.message);
}

#[test]
fn expr_api() {
    let text = " target.free > source.free ";
    let expr = parse_boolean(text, &target_symbols).unwrap();
    assert_eq!(expr.text(), text);
    assert_eq!(expr.to_string(), text);
    assert_eq!(expr.ty(), Type::Boolean);
    assert_eq!(format!("{expr:?}"), format!("Expr({text:?})"));
    assert_eq!(expr, parse_boolean(text, &target_symbols).unwrap());
    assert_ne!(expr, parse_boolean("target.free > 1", &target_symbols).unwrap());
    assert_eq!(parse("1 + 1", &test_symbols).unwrap().ty(), Type::Number);
    assert_eq!(Value::Number(27.0).to_string(), "27");
    assert_eq!(Value::Number(2.5).to_string(), "2.5");
    assert_eq!(Value::String("a".into()).to_string(), "a");
    assert_eq!(Type::Boolean.to_string(), "BOOLEAN");
}

#[test]
fn the_largest_accepted_expressions_fit_a_small_stack() {
    // Tokio's worker threads have 2 MiB. The deepest expression takes about 640 KiB in a debug
    // build (about 20 KiB per level of parentheses), far less in release.
    let worker = std::thread::Builder::new().stack_size(1024 * 1024).spawn(|| {
        // Runs of one level's operators are flat: no limit, no recursion.
        let chain = format!("1{}", "+1".repeat(9_999));
        assert_eq!(eval(&chain), num(10_000.0));
        let ors = format!("false{}", " or x == 1".repeat(1_000));
        assert_eq!(eval(&ors), boolean(false));
        let nested = format!("{}x{}", "(1 + ".repeat(32), ")".repeat(32));
        assert_eq!(eval(&nested), num(35.0));
        let nots = format!("{}true", "not ".repeat(32));
        assert_eq!(eval(&nots), boolean(true));
        let conditionals = format!("{}1{}", "true ? ".repeat(32), " : 2".repeat(32));
        assert_eq!(eval(&conditionals), num(1.0));
    });
    worker.unwrap().join().unwrap();
}
