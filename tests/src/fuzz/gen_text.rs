//! Generators of text inputs from token alphabets: admin lines (command words and options from
//! the declarations in `pool/src/admin/mod.rs`), the options of `migration copy|move|cache`,
//! expressions, and saved migration jobs. Each is mutated with byte edits part of the time.

use tidepool_migration::module::SavedJob;
use tidepool_pool::admin::COMMANDS;
use tidepool_pool::admin::spec::{CommandSpec, OptionValue};

use super::gen_wire::pnfsid;
use super::{Rng, mutate};

/// Bytes that the mutations insert into text inputs.
const TEXT_DICTIONARY: &[&[u8]] = &[
    b" ", b"-", b"--", b"=", b"\"", b"'", b"\\", b"..", b",", b"+", b"(", b")", b"-1", b"0", b"\t", b"\n", b"\xc3\xa9",
    b"\xe6\x97\xa5", b"\xff", b"\x00", b"migration copy", b"-pnfsid=", b"-sticky=", b"-size=", b"rep ls",
];

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "5",
    "-5",
    "10",
    "3600",
    "1000",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551616",
    "1.5",
    "1e3",
    "0x10",
    "+3",
    "",
    "007",
    "٣",
];

const INTERVALS: &[&str] =
    &["1..5", "..10", "5..", "..", "-1..-2", "1..2..3", "..-1", "5", "-5", "5..1", "a..b", "...", "0..0", ""];

const STICKY: &[&str] = &["", ",", "-", "alice", "alice,bob", "-alice", "alice,-bob", ",,", "--", "-,", "a b"];

const MODES: &[&str] = &[
    "same",
    "cached",
    "precious",
    "delete",
    "removable",
    "same+a(-1)",
    "cached+alice(10)",
    "precious+pin(-1)+x(5)",
    "same+(3)",
    "same+a(",
    "same+a(-2)",
    "same+a(2147483648)",
    "delete+",
    "+",
    "same+a()",
    "same+é(1)",
    "",
];

const WORDS: &[&str] = &[
    "pool2",
    "pool*",
    "disk",
    "cache",
    "a-b",
    "",
    "on",
    "off",
    "true",
    "false",
    "TRUE",
    "size",
    "-size",
    "lru",
    "-lru",
    "pool",
    "pgroup",
    "link",
    "hsm",
    "online",
    "nearline",
    "custodial",
    "replica",
    "output",
    "keep",
    "move",
    "wait",
    "limit",
    "random",
    "proportional",
    "cached",
    "precious",
    "b",
    "k",
    "M",
    "x",
    "s",
    "p",
    "nc",
    "spl",
    "n",
    "atlas:raw",
    "free",
    "é",
    "1",
    "rebalance",
];

/// A value for the option `name`: mostly from the alphabet that suits it.
fn value(rng: &mut Rng, name: &str) -> String {
    let fitting: &[&str] = match name {
        "concurrency" | "replicas" | "refresh" | "l" | "o" => NUMBERS,
        "size" | "accessed" => INTERVALS,
        "sticky" => STICKY,
        "smode" | "tmode" => MODES,
        _ => WORDS,
    };
    if name == "pnfsid" && rng.chance(3, 4) {
        let ids: Vec<String> = (0..1 + rng.below(3)).map(|_| pnfsid(rng).to_string()).collect();
        return ids.join(if rng.chance(3, 4) { "," } else { ",," });
    }
    if name.ends_with("-when") && rng.chance(3, 4) {
        return expression_text(rng, 4);
    }
    if rng.chance(3, 4) {
        rng.pick(fitting).to_string()
    } else {
        match rng.below(5) {
            0 => rng.pick(NUMBERS).to_string(),
            1 => rng.pick(INTERVALS).to_string(),
            2 => rng.pick(MODES).to_string(),
            3 => pnfsid(rng).to_string(),
            _ => "y".repeat(rng.below(300)),
        }
    }
}

/// A positional argument.
fn positional(rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => pnfsid(rng).to_string(),
        1 => rng.pick(NUMBERS).to_string(),
        2 => format!("pool{}", rng.below(10)),
        _ => rng.pick(WORDS).to_string(),
    }
}

/// `text` written so that the lexer gives it back: plain, double-quoted with escapes,
/// single-quoted, or with backslashes.
fn quoted(rng: &mut Rng, text: &str) -> String {
    match rng.below(6) {
        0 => {
            let mut s = String::from("\"");
            for c in text.chars() {
                match c {
                    '"' => s.push_str("\\\""),
                    '\\' => s.push_str("\\\\"),
                    '\n' => s.push_str("\\n"),
                    c => s.push(c),
                }
            }
            s.push('"');
            s
        }
        1 if !text.contains('\'') => format!("'{text}'"),
        2 => text.chars().flat_map(|c| ['\\', c]).collect(),
        _ => text.to_string(),
    }
}

/// One option of `spec` (or an unknown one), as written on a line.
fn option(rng: &mut Rng, spec: &CommandSpec) -> String {
    let (name, kind) = match spec.options {
        [] => ("bogus", OptionValue::Flag),
        options if rng.chance(9, 10) => {
            let o = rng.pick(options);
            (o.name, o.value)
        }
        _ => (*rng.pick(&["bogus", "l", "s", "x", "", "-"]), OptionValue::Flag),
    };
    let with_value = match kind {
        OptionValue::Flag => rng.chance(1, 4),
        OptionValue::Required(_) => rng.chance(9, 10),
        OptionValue::Optional(_) => rng.chance(1, 2),
    };
    if !with_value {
        return format!("-{name}");
    }
    let v = match kind {
        OptionValue::Flag => rng.pick(&["true", "false", "FALSE", "yes", ""]).to_string(),
        _ => value(rng, name),
    };
    if rng.chance(1, 3) { quoted(rng, &format!("-{name}={v}")) } else { format!("-{name}={}", quoted(rng, &v)) }
}

/// Separators between tokens.
fn separator(rng: &mut Rng) -> &'static str {
    *rng.pick(&[" ", " ", " ", " ", "  ", "\t", "", " \u{a0}"])
}

/// The tokens after the command words: options of `spec`, positionals and `--`.
fn rest_of_line(rng: &mut Rng, spec: &CommandSpec, line: &mut String) {
    for _ in 0..rng.below(8) {
        let token = match rng.below(10) {
            0..=5 => option(rng, spec),
            6 if rng.chance(1, 3) => "--".to_string(),
            _ => {
                let p = positional(rng);
                quoted(rng, &p)
            }
        };
        line.push_str(separator(rng));
        line.push_str(&token);
    }
}

/// An admin line: a declared command (now and then misspelt), its options and arguments.
pub fn admin_line_text(rng: &mut Rng, only_jobs: bool) -> String {
    let specs: Vec<&CommandSpec> =
        COMMANDS.iter().filter(|s| !only_jobs || s.name.starts_with("migration c") || s.name == "migration move").collect();
    let spec = *rng.pick(&specs);
    let mut line = String::new();
    if rng.chance(1, 10) {
        line.push_str(separator(rng));
    }
    let words: Vec<&str> = spec.name.split(' ').collect();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        if rng.chance(1, 30) {
            let other = rng.pick(COMMANDS).name.split(' ').next().unwrap_or("x");
            line.push_str(other);
        } else {
            line.push_str(w);
        }
    }
    rest_of_line(rng, spec, &mut line);
    if rng.chance(1, 20) {
        line.push_str(separator(rng));
    }
    line
}

pub fn admin_line(rng: &mut Rng, _ctx: &super::Ctx) -> Vec<u8> {
    let only_jobs = rng.chance(1, 3);
    let mut bytes = admin_line_text(rng, only_jobs).into_bytes();
    if rng.chance(1, 2) {
        let other = admin_line_text(rng, false).into_bytes();
        mutate(rng, &mut bytes, TEXT_DICTIONARY, &other);
    }
    bytes
}

/// The options (and targets) of a `migration copy|move|cache` line, without the command words.
pub fn job_options(rng: &mut Rng, _ctx: &super::Ctx) -> Vec<u8> {
    let spec = COMMANDS.iter().find(|s| s.name == "migration copy").expect("migration copy is declared");
    let mut line = String::new();
    rest_of_line(rng, spec, &mut line);
    // More options than `rest_of_line` gives, so that later ones are reached too.
    for _ in 0..rng.below(6) {
        line.push(' ');
        line.push_str(&option(rng, spec));
    }
    if rng.chance(1, 2) {
        line.push_str(" --");
        for _ in 0..rng.below(3) {
            line.push(' ');
            line.push_str(&positional(rng));
        }
    }
    let mut bytes = line.into_bytes();
    if rng.chance(1, 3) {
        mutate(rng, &mut bytes, TEXT_DICTIONARY, &[]);
    }
    bytes
}

const SYMBOLS: &[&str] = &[
    "source.free",
    "source.name",
    "target.name",
    "target.free",
    "target.cpuCost",
    "source.used",
    "target.removable",
    "source.total",
    "queue.files",
    "queue.bytes",
    "targets",
    "time.hour",
    "time.weekday",
    "unknown.x",
    "source",
    "target.",
    "a.b.c",
    "notx",
    "and1",
];

const LITERALS: &[&str] = &[
    "12", "0.5", "10GiB", "1e3", "5k", "3Ki", "1P", "07", ".5", "1.", "999999999999999999999999999", "2Pi", "1KB", "0",
    "1E400", "true", "false", "5 G", "1..2",
];

const PATTERNS: &[&str] = &[
    "pool\\d+",
    ".*",
    "[a-z]+",
    "(a|b)*",
    "a{2,3}",
    "(a{100}){100}",
    "a{1000}{1000}",
    "\\Q.*\\E",
    "[^]",
    "[",
    "(",
    ")",
    "(?<n>a)",
    "(?:a)",
    "\\x{110000}",
    "\\x{d800}",
    "\\u12",
    "\\c",
    "a**",
    "\\b",
    "^$",
    "\\p{L}",
    "(?=a)",
    "[a-\\d]",
    "[z-a]",
    "\\0777",
    "x{2147483648}",
    "x{3,1}",
    "\\1",
    "a|",
    "|",
    "\\",
    "[\\Q]\\E]",
    "\\Qabc",
    "\\xzz",
    ".{0,10000}",
    "((((((((((a))))))))))",
];

const OPERATORS: &[&str] =
    &["or", "and", "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "**", "=~", "!~", "=", "!", "&&", "||"];

/// An expression of the `-*-when` language, up to `depth` levels deep (now and then much
/// deeper, to reach the nesting limit).
pub fn expression_text(rng: &mut Rng, depth: usize) -> String {
    if rng.chance(1, 50) {
        let n = 20 + rng.below(30);
        let (open, close) = *rng.pick(&[("(", ")"), ("not ", ""), ("- ", ""), ("true ? ", " : false")]);
        return format!("{}{}{}", open.repeat(n), expression_text(rng, 1), close.repeat(n));
    }
    if rng.chance(1, 50) {
        let op = *rng.pick(&[" or ", " + ", " ** ", " =~ ", " and "]);
        let n = 20 + rng.below(200);
        return vec!["source.free > 1"; n].join(op);
    }
    let space = |rng: &mut Rng| *rng.pick(&[" ", " ", "", "  ", "\t", "\n"]);
    if depth == 0 || rng.chance(1, 3) {
        return match rng.below(4) {
            0 => rng.pick(SYMBOLS).to_string(),
            1 => rng.pick(LITERALS).to_string(),
            2 => {
                let q = *rng.pick(&["'", "\"", "'", "\""]);
                format!("{q}{}{q}", rng.pick(PATTERNS))
            }
            _ => format!("'{}'", rng.pick(WORDS)),
        };
    }
    match rng.below(6) {
        0 => format!("{}{}{}", rng.pick(&["-", "+", "not ", "not", "- -"]), space(rng), expression_text(rng, depth - 1)),
        1 => format!("({}{}{})", space(rng), expression_text(rng, depth - 1), space(rng)),
        2 => format!(
            "{} ? {} : {}",
            expression_text(rng, depth - 1),
            expression_text(rng, depth - 1),
            expression_text(rng, depth - 1)
        ),
        _ => {
            let a = expression_text(rng, depth - 1);
            let b = expression_text(rng, depth - 1);
            let op = *rng.pick(OPERATORS);
            let (s1, s2) = (space(rng), space(rng));
            format!("{a}{s1}{op}{s2}{b}")
        }
    }
}

pub fn expression(rng: &mut Rng, _ctx: &super::Ctx) -> Vec<u8> {
    let depth = 1 + rng.below(5);
    let mut bytes = expression_text(rng, depth).into_bytes();
    if rng.chance(1, 3) {
        let other = expression_text(rng, 3).into_bytes();
        mutate(
            rng,
            &mut bytes,
            &[b"(", b")", b"'", b"\"", b"?", b":", b" or ", b" not ", b"==", b"=~", b".", b"Gi", b"\\"],
            &other,
        );
    }
    bytes
}

/// What `save` writes: a header, the settings and job lines, with some lines broken.
pub fn saved_text(rng: &mut Rng, _ctx: &super::Ctx) -> Vec<u8> {
    let mut text = String::new();
    text.push_str(if rng.chance(9, 10) { "tidepool-migration-save 1" } else { "tidepool-migration-save 2" });
    text.push('\n');
    for _ in 0..rng.below(6) {
        let line = match rng.below(8) {
            0 => format!("concurrency-default {}", rng.pick(NUMBERS)),
            1 => format!("refresh-default {}", rng.pick(NUMBERS)),
            2 => String::new(),
            3 => format!("{} {}", rng.pick(&["job", "jobs", "#", "concurrency-default"]), rng.pick(WORDS)),
            _ => {
                let command = if rng.chance(9, 10) {
                    let mut c = admin_line_text(rng, true);
                    if rng.chance(1, 4) {
                        let mut b = c.into_bytes();
                        mutate(rng, &mut b, TEXT_DICTIONARY, &[]);
                        c = String::from_utf8_lossy(&b).into_owned();
                    }
                    c
                } else {
                    admin_line_text(rng, false)
                };
                let id = match rng.below(5) {
                    0 => rng.pick(WORDS).to_string(),
                    1 => String::new(),
                    _ => rng.below(20).to_string(),
                };
                let job = SavedJob {
                    id,
                    command,
                    concurrency: rng.below(5) * if rng.chance(1, 20) { usize::MAX / 4 } else { 1 },
                    created: rng.next_u64() as i64,
                };
                format!("job {}", serde_json::to_string(&job).expect("a saved job serialises"))
            }
        };
        text.push_str(&line);
        text.push(*rng.pick(&['\n', '\n', '\n', '\r']));
    }
    let mut bytes = text.into_bytes();
    if rng.chance(1, 3) {
        mutate(rng, &mut bytes, &[b"\n", b"job {", b"\"command\":", b"\\u0000", b"}", b"\\\""], &[]);
    }
    bytes
}
