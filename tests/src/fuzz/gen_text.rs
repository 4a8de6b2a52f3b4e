//! Generators of text inputs from token alphabets: admin lines (command words and options from
//! the declarations in `pool/src/admin/mod.rs`), the options of `migration copy|move|cache`,
//! expressions, and saved migration jobs. Each is mutated with byte edits part of the time.

use tidepool_migration::module::SavedJob;
use tidepool_pool::admin::spec::{CommandSpec, OptionValue};
use tidepool_pool::admin::{self, COMMANDS, Command};

use super::gen_wire::pnfsid;
use super::{Rng, mutate};

/// Bytes that the mutations insert into text inputs.
const TEXT_DICTIONARY: &[&[u8]] = &[
    b" ",
    b"-",
    b"--",
    b"=",
    b"\"",
    b"'",
    b"\\",
    b"..",
    b",",
    b"+",
    b"(",
    b")",
    b"-1",
    b"0",
    b"\t",
    b"\n",
    b"\xc3\xa9",
    b"\xe6\x97\xa5",
    b"\xff",
    b"\x00",
    b"migration copy",
    b"-pnfsid=",
    b"-sticky=",
    b"-size=",
    b"rep ls",
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

/// The alternatives a declaration names for a value (`keep|move`, `[-]size|[-]lru`), if its
/// hint is such a list.
fn alternatives(rng: &mut Rng, hint: &str) -> Option<String> {
    let alts: Vec<&str> = hint.split('|').collect();
    if alts.len() < 2 || hint.contains(['<', ' ', '(', '.']) {
        return None;
    }
    let alt = *rng.pick(&alts);
    Some(match alt.strip_prefix("[-]") {
        Some(word) if rng.chance(1, 2) => format!("-{word}"),
        Some(word) => word.to_string(),
        None => alt.to_string(),
    })
}

/// A value for the option `name` (declared with the value hint `hint`): mostly one that suits
/// it, now and then one from another option's alphabet.
fn value(rng: &mut Rng, name: &str, hint: &str) -> String {
    if rng.chance(1, 8) {
        return match rng.below(6) {
            0 => rng.pick(NUMBERS).to_string(),
            1 => rng.pick(INTERVALS).to_string(),
            2 => rng.pick(MODES).to_string(),
            3 => pnfsid(rng).to_string(),
            4 => rng.pick(WORDS).to_string(),
            _ => "y".repeat(rng.below(300)),
        };
    }
    if let Some(v) = alternatives(rng, hint) {
        return v;
    }
    match name {
        "pnfsid" => {
            let ids: Vec<String> = (0..1 + rng.below(3)).map(|_| pnfsid(rng).to_string()).collect();
            ids.join(if rng.chance(7, 8) { "," } else { ",," })
        }
        n if n.ends_with("-when") => expression_text(rng, 4),
        "concurrency" | "replicas" | "refresh" | "l" | "o" if rng.chance(3, 4) => (1 + rng.below(8)).to_string(),
        "concurrency" | "replicas" | "refresh" | "l" | "o" => rng.pick(NUMBERS).to_string(),
        "size" | "accessed" => rng.pick(INTERVALS).to_string(),
        "sticky" => rng.pick(STICKY).to_string(),
        "smode" | "tmode" => rng.pick(MODES).to_string(),
        "id" => rng.pick(&["rebalance", "7", "job-1", "a.b", ""]).to_string(),
        "storage" | "cache" => rng.pick(&["atlas:raw", "cms:user", "", "a b"]).to_string(),
        "include" | "exclude" => rng.pick(&["pool*", "pool2", "pool2,pool3", "*", ",", "[", "pool?"]).to_string(),
        _ => rng.pick(WORDS).to_string(),
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
        options if rng.chance(19, 20) => {
            let o = rng.pick(options);
            (o.name, o.value)
        }
        _ => (*rng.pick(&["bogus", "l", "s", "x", "", "-"]), OptionValue::Flag),
    };
    let (with_value, hint) = match kind {
        OptionValue::Flag => (rng.chance(1, 6), ""),
        OptionValue::Required(hint) => (rng.chance(19, 20), hint),
        OptionValue::Optional(hint) => (rng.chance(1, 2), hint),
    };
    if !with_value {
        return format!("-{name}");
    }
    let v = match kind {
        OptionValue::Flag => rng.pick(&["true", "false", "FALSE", "true", "false", "yes", ""]).to_string(),
        _ => value(rng, name, hint),
    };
    if rng.chance(1, 6) { quoted(rng, &format!("-{name}={v}")) } else { format!("-{name}={}", quoted(rng, &v)) }
}

/// Separators between tokens.
fn separator(rng: &mut Rng) -> &'static str {
    rng.word(&[" ", " ", " ", " ", " ", " ", " ", "  ", "\t", "", " \u{a0}"])
}

/// The tokens after the command words: options of `spec`, positionals and `--`.
fn rest_of_line(rng: &mut Rng, spec: &CommandSpec, line: &mut String) {
    let options = if spec.options.is_empty() { 1 } else { 6 };
    for i in 0..rng.below(6) {
        let token = match rng.below(10) {
            n if n < options => option(rng, spec),
            6 if rng.chance(1, 4) => "--".to_string(),
            _ => {
                let p = positional(rng);
                quoted(rng, &p)
            }
        };
        // The first token after the command words is never glued to them.
        line.push_str(if i == 0 { " " } else { separator(rng) });
        line.push_str(&token);
    }
}

/// An admin line: a declared command (now and then misspelt), its options and arguments.
pub fn admin_line_text(rng: &mut Rng, only_jobs: bool) -> String {
    let specs: Vec<&CommandSpec> = COMMANDS
        .iter()
        .filter(|s| !only_jobs || s.name.starts_with("migration c") || s.name == "migration move")
        .collect();
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
    if rng.chance(1, 3) {
        let other = admin_line_text(rng, false).into_bytes();
        // Mostly after the command words, so that the options are what gets mutated.
        let words = COMMANDS
            .iter()
            .map(|c| c.name.len())
            .filter(|n| bytes.get(..*n).is_some())
            .filter(|n| COMMANDS.iter().any(|c| c.name.as_bytes() == &bytes[..*n]));
        let at = if rng.chance(3, 4) { words.max().unwrap_or(0) } else { 0 };
        let mut tail = bytes.split_off(at);
        mutate(rng, &mut tail, TEXT_DICTIONARY, &other);
        bytes.extend(tail);
    }
    bytes
}

/// The options (and targets) of a `migration copy|move|cache` line, without the command words.
pub fn job_options(rng: &mut Rng, _ctx: &super::Ctx) -> Vec<u8> {
    let spec = COMMANDS.iter().find(|s| s.name == "migration copy").expect("migration copy is declared");
    let mut line = String::new();
    for _ in 0..rng.below(6) {
        line.push_str(separator(rng));
        line.push_str(&option(rng, spec));
    }
    if rng.chance(1, 2) {
        line.push_str(" --");
    }
    for _ in 0..rng.below(4) {
        line.push(' ');
        if rng.chance(3, 4) {
            line.push_str(&format!("pool{}", rng.below(10)));
        } else {
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
    "12",
    "0.5",
    "10GiB",
    "1e3",
    "5k",
    "3Ki",
    "1P",
    "07",
    ".5",
    "1.",
    "999999999999999999999999999",
    "2Pi",
    "1KB",
    "0",
    "1E400",
    "true",
    "false",
    "5 G",
    "1..2",
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

const NUMBER_SYMBOLS: &[&str] = &[
    "source.free",
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
];

const NUMBER_LITERALS: &[&str] =
    &["12", "0.5", "10GiB", "1e3", "5k", "3Ki", "1P", "07", "0", "2Pi", "1KB", "999999999999999999999999999", "1E400"];

#[derive(Clone, Copy)]
enum Ty {
    Number,
    Str,
    Bool,
}

/// A white-space run between tokens (often none, where the grammar allows it).
fn gap(rng: &mut Rng) -> &'static str {
    rng.word(&[" ", " ", " ", "", "  ", "\t", "\n"])
}

/// An expression of type `ty`, up to `depth` levels deep; now and then a piece of another
/// type or no grammar at all, so that the checker's errors are reached too.
fn typed(rng: &mut Rng, ty: Ty, depth: usize) -> String {
    if rng.chance(1, 25) {
        return untyped(rng);
    }
    let leaf = depth == 0 || rng.chance(1, 3);
    match ty {
        Ty::Number if leaf => {
            if rng.chance(1, 2) {
                rng.pick(NUMBER_SYMBOLS).to_string()
            } else {
                rng.pick(NUMBER_LITERALS).to_string()
            }
        }
        Ty::Str if leaf => match rng.below(3) {
            0 => "source.name".to_string(),
            1 => "target.name".to_string(),
            _ => format!("'{}'", rng.pick(WORDS)),
        },
        Ty::Bool if leaf => rng.pick(&["true", "false"]).to_string(),
        Ty::Number => match rng.below(5) {
            0 => format!("{}{}", rng.pick(&["-", "+", "- -", "-+"]), typed(rng, Ty::Number, depth - 1)),
            1 => format!("({})", typed(rng, Ty::Number, depth - 1)),
            2 => conditional(rng, Ty::Number, depth),
            _ => {
                let op = *rng.pick(&["+", "-", "*", "/", "%", "**"]);
                binary(rng, Ty::Number, op, Ty::Number, depth)
            }
        },
        Ty::Str => match rng.below(3) {
            0 => conditional(rng, Ty::Str, depth),
            1 => format!("({})", typed(rng, Ty::Str, depth - 1)),
            _ => typed(rng, Ty::Str, 0),
        },
        Ty::Bool => match rng.below(8) {
            0 => {
                let op = *rng.pick(&["==", "!=", "<", "<=", ">", ">="]);
                binary(rng, Ty::Number, op, Ty::Number, depth)
            }
            1 => {
                let op = *rng.pick(&["==", "!="]);
                binary(rng, Ty::Str, op, Ty::Str, depth)
            }
            2 => {
                let (s, g1, op, g2) = (typed(rng, Ty::Str, depth - 1), gap(rng), *rng.pick(&["=~", "!~"]), gap(rng));
                let q = *rng.pick(&["'", "\""]);
                let pattern = if rng.chance(3, 4) { rng.pick(PATTERNS).to_string() } else { typed(rng, Ty::Str, 0) };
                if pattern.starts_with(['s', 't']) {
                    format!("{s}{g1}{op}{g2}{pattern}")
                } else {
                    format!("{s}{g1}{op}{g2}{q}{pattern}{q}")
                }
            }
            3 => format!("not{}{}", rng.pick(&[" ", "(", " not "]), typed(rng, Ty::Bool, depth - 1))
                .replace("not(", "not ("),
            4 => format!("({})", typed(rng, Ty::Bool, depth - 1)),
            5 => conditional(rng, Ty::Bool, depth),
            _ => {
                let op = *rng.pick(&["and", "or", "==", "!="]);
                binary(rng, Ty::Bool, op, Ty::Bool, depth)
            }
        },
    }
}

fn binary(rng: &mut Rng, left: Ty, op: &str, right: Ty, depth: usize) -> String {
    let a = typed(rng, left, depth - 1);
    let b = typed(rng, right, depth - 1);
    let word = op.starts_with(char::is_alphabetic);
    let (g1, g2) = if word { (" ", " ") } else { (gap(rng), gap(rng)) };
    format!("{a}{g1}{op}{g2}{b}")
}

fn conditional(rng: &mut Rng, ty: Ty, depth: usize) -> String {
    let c = typed(rng, Ty::Bool, depth - 1);
    let a = typed(rng, ty, depth - 1);
    let b = typed(rng, ty, depth - 1);
    format!("{c} ? {a} : {b}")
}

/// A token sequence with no regard for types or grammar.
fn untyped(rng: &mut Rng) -> String {
    let mut s = String::new();
    for _ in 0..1 + rng.below(4) {
        match rng.below(4) {
            0 => s.push_str(rng.word(SYMBOLS)),
            1 => s.push_str(rng.word(LITERALS)),
            2 => s.push_str(rng.word(OPERATORS)),
            _ => s.push_str(rng.word(&["(", ")", "?", ":", "'", "\"", "'x'", "not"])),
        }
        s.push_str(gap(rng));
    }
    s
}

/// An expression of the `-*-when` language, up to `depth` levels deep: mostly a condition,
/// now and then nested much deeper (to reach the nesting limit) or a long flat run.
pub fn expression_text(rng: &mut Rng, depth: usize) -> String {
    if rng.chance(1, 50) {
        // Around the 32-level limit, and now and then far beyond it (a recursion without a
        // limit would overflow the stack, which no `catch_unwind` catches).
        let n = if rng.chance(1, 10) { 1000 + rng.below(4000) } else { 20 + rng.below(30) };
        let (open, close) = *rng.pick(&[
            ("(", ")"),
            ("not ", ""),
            ("- ", ""),
            ("true ? ", " : false"),
            ("source.name =~ '(", ")'"),
            ("source.name =~ '(?:", ")'"),
            ("source.name =~ '[", "'"),
        ]);
        let inner = if open.contains('\'') { "a".to_string() } else { typed(rng, Ty::Bool, 1) };
        let (open, close) = if open.contains('\'') {
            (format!("{}{}", &open[..16], open[16..].repeat(n)), format!("{}'", close[..close.len() - 1].repeat(n)))
        } else {
            (open.repeat(n), close.repeat(n))
        };
        return format!("{open}{inner}{close}");
    }
    if rng.chance(1, 50) {
        let op = *rng.pick(&[" or ", " + ", " ** ", " =~ ", " and "]);
        let n = 20 + rng.below(200);
        return vec!["source.free > 1"; n].join(op);
    }
    let ty = match rng.below(10) {
        0 => Ty::Number,
        1 => Ty::Str,
        _ => Ty::Bool,
    };
    format!("{}{}", if rng.chance(1, 10) { gap(rng) } else { "" }, typed(rng, ty, depth))
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

/// The stored form of a job line that parses (as `save` keeps it), found among a few tries.
fn stored_job_line(rng: &mut Rng) -> String {
    let mut line = String::new();
    for _ in 0..8 {
        line = admin_line_text(rng, true);
        if let Ok(Some(Command::MigrationCreate { command, .. })) = admin::parse(&line) {
            return command;
        }
    }
    line
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
                    let mut c = stored_job_line(rng);
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
                    rate: rng.below(3) as u64 * (1 << 20),
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
