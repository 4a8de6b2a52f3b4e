//! The pool's admin commands: declared once in [`COMMANDS`] (name, options, help, examples),
//! parsed purely into a typed [`Command`], executed separately by [`exec`].

pub mod exec;
pub mod spec;

use tidepool_p2p::message::CommandDescription;
use tidepool_p2p::model::{PoolMode, ReplicaState};
use tidepool_p2p::{PnfsId, PoolName, TransferId};

use spec::{CommandSpec, Invocation, OptionSpec, OptionValue, ParseError};

/// A parsed admin command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Help { topic: Vec<String> },
    Info,
    RepLs(RepLs),
    RepStickyLs { pnfsid: PnfsId },
    RepSetSticky { pnfsid: PnfsId, owner: String, lifetime_ms: i64, on: bool },
    RepSetState { pnfsid: PnfsId, state: ReplicaState },
    RepRm { pnfsid: PnfsId, force: bool },
    PoolDisable { bits: u32, error_code: i32, message: String },
    PoolEnable,
    PpGetFile { pnfsids: Vec<PnfsId>, source: PoolName, wait: bool, force_source_mode: bool },
    PpLs { long: bool },
    PpSetMaxActive(usize),
    PpSetMaxOutgoing(usize),
    PpRemove(TransferId),
}

/// `rep ls` selection and output options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepLs {
    /// `-l=`: every listed property must hold.
    pub require: Vec<Property>,
    /// `-storage=`: a glob on the storage class.
    pub storage: Option<String>,
    /// `-s[=unit]`: per-storage-class statistics, sizes divided by the unit.
    pub stats: Option<SizeUnit>,
    /// `-sum`: totals only.
    pub sum: bool,
    pub pnfsids: Vec<PnfsId>,
}

/// Properties `rep ls -l=` selects on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Property {
    /// `s`: has a sticky record.
    Sticky,
    /// `p`: precious.
    Precious,
    /// `l`: locked, i.e. being written.
    Locked,
    /// `nc`: not cached (precious, receiving or broken).
    NotCached,
    /// `e`: broken.
    Error,
}

/// Unit for `rep ls -s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeUnit {
    B,
    K,
    M,
    G,
    T,
}

impl SizeUnit {
    pub fn divisor(self) -> u64 {
        match self {
            SizeUnit::B => 1,
            SizeUnit::K => 1 << 10,
            SizeUnit::M => 1 << 20,
            SizeUnit::G => 1 << 30,
            SizeUnit::T => 1 << 40,
        }
    }

    pub fn suffix(self) -> &'static str {
        match self {
            SizeUnit::B => "",
            SizeUnit::K => "K",
            SizeUnit::M => "M",
            SizeUnit::G => "G",
            SizeUnit::T => "T",
        }
    }
}

const fn flag(name: &'static str, help: &'static str) -> OptionSpec {
    OptionSpec { name, value: OptionValue::Flag, help }
}

const fn valued(name: &'static str, v: &'static str, help: &'static str) -> OptionSpec {
    OptionSpec { name, value: OptionValue::Required(v), help }
}

/// Every admin command of a pool.
pub static COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "help",
        args: "[command...]",
        summary: "list the commands, or show one command's help",
        details: "",
        options: &[],
        examples: &["help", "help rep ls", "help pool disable"],
        parse: |inv| Ok(Command::Help { topic: inv.args.iter().map(|t| t.text.clone()).collect() }),
    },
    CommandSpec {
        name: "info",
        args: "",
        summary: "show the pool's name, mode, space, replica counts and recovery findings",
        details: "",
        options: &[],
        examples: &["info"],
        parse: |inv| inv.at_most(0).map(|()| Command::Info),
    },
    CommandSpec {
        name: "rep ls",
        args: "[pnfsid...]",
        summary: "list replicas: <pnfsid> <flags> <size> si={<storage class>}",
        details: "Flags: C cached, P precious, C receiving from a client, S staging, M receiving from a pool,\n\
                  R removed, D destroyed, X sticky, E broken; '-' where not set.\n\
                  Output is streamed; a million replicas never sit in memory at once.",
        options: &[
            valued(
                "l",
                "s|p|l|nc|e...",
                "only replicas with every listed property: s sticky, p precious, l locked (being written), nc not cached, e error",
            ),
            valued("storage", "glob", "only replicas whose storage class matches the glob (* and ?)"),
            OptionSpec {
                name: "s",
                value: OptionValue::Optional("b|k|m|g|t"),
                help: "per-storage-class statistics instead of a listing, in the given unit (default bytes)",
            },
            flag("sum", "totals only (with -s: a total row after the classes)"),
        ],
        examples: &[
            "rep ls",
            "rep ls -l=sp",
            "rep ls -storage=atlas:*",
            "rep ls -s=m",
            "rep ls -s -sum",
            "rep ls -sum",
            "rep ls 0000A1B2C3D4E5F60718293A4B5C6D7E8F90",
        ],
        parse: parse_rep_ls,
    },
    CommandSpec {
        name: "rep sticky ls",
        args: "<pnfsid>",
        summary: "list a replica's valid sticky records",
        details: "",
        options: &[],
        examples: &["rep sticky ls 0000A1B2C3D4E5F60718293A4B5C6D7E8F90"],
        parse: |inv| {
            let pnfsid = inv.parse_arg(inv.arg(0, "pnfsid")?)?;
            inv.at_most(1)?;
            Ok(Command::RepStickyLs { pnfsid })
        },
    },
    CommandSpec {
        name: "rep set sticky",
        args: "<pnfsid> on|off",
        summary: "set or clear a sticky record (overwrite mode)",
        details: "The lifetime is in milliseconds; -1 (the default) never expires. 'off' removes the owner's record.",
        options: &[
            valued("o", "owner", "owner of the record (default: system)"),
            valued("l", "millis", "lifetime in milliseconds, -1 for ever (default)"),
        ],
        examples: &[
            "rep set sticky 0000A1B2C3D4E5F60718293A4B5C6D7E8F90 on",
            "rep set sticky -o=alice -l=3600000 0000A1B2C3D4E5F60718293A4B5C6D7E8F90 on",
            "rep set sticky -o=alice 0000A1B2C3D4E5F60718293A4B5C6D7E8F90 off",
        ],
        parse: parse_set_sticky,
    },
    CommandSpec {
        name: "rep set cached",
        args: "<pnfsid>",
        summary: "make a replica cached (evictable unless sticky)",
        details: "",
        options: &[],
        examples: &["rep set cached 0000A1B2C3D4E5F60718293A4B5C6D7E8F90"],
        parse: |inv| parse_set_state(inv, ReplicaState::Cached),
    },
    CommandSpec {
        name: "rep set precious",
        args: "<pnfsid>",
        summary: "make a replica precious (never evicted)",
        details: "",
        options: &[],
        examples: &["rep set precious 0000A1B2C3D4E5F60718293A4B5C6D7E8F90"],
        parse: |inv| parse_set_state(inv, ReplicaState::Precious),
    },
    CommandSpec {
        name: "rep rm",
        args: "<pnfsid>",
        summary: "remove a replica; precious or sticky ones only with -force",
        details: "",
        options: &[flag("force", "remove even a precious or sticky replica")],
        examples: &[
            "rep rm 0000A1B2C3D4E5F60718293A4B5C6D7E8F90",
            "rep rm -force 0000A1B2C3D4E5F60718293A4B5C6D7E8F90",
        ],
        parse: |inv| {
            let pnfsid = inv.parse_arg(inv.arg(0, "pnfsid")?)?;
            inv.at_most(1)?;
            Ok(Command::RepRm { pnfsid, force: inv.flag("force")? })
        },
    },
    CommandSpec {
        name: "pool disable",
        args: "[errorCode [errorMessage]]",
        summary: "disable the pool for some or all activities",
        details: "Without options the pool is disabled for everything (as -strict). The mode is saved\n\
                  and survives a restart. errorCode defaults to 1, errorMessage to 'Operator intervention'.",
        options: &[
            flag("fetch", "refuse to deliver data (also to other pools, unless they force the source mode)"),
            flag("store", "refuse client uploads"),
            flag("stage", "refuse staging from tape"),
            flag("p2p-client", "refuse to receive replicas from other pools"),
            flag(
                "p2p-server",
                "mark the pool as not to be chosen as a pool-to-pool source (informational, as in dCache; -fetch refuses reads)",
            ),
            flag("rdonly", "store, stage and p2p-client: the usual mode before vacating a pool"),
            flag("strict", "disable everything"),
            flag("draining", "as -rdonly, marked as draining"),
        ],
        examples: &["pool disable -rdonly", "pool disable -strict 2 \"disk replaced\"", "pool disable"],
        parse: parse_pool_disable,
    },
    CommandSpec {
        name: "pool enable",
        args: "",
        summary: "enable the pool for everything",
        details: "",
        options: &[],
        examples: &["pool enable"],
        parse: |inv| inv.at_most(0).map(|()| Command::PoolEnable),
    },
    CommandSpec {
        name: "pp get file",
        args: "<pnfsid>... <sourcePool>",
        summary: "copy replicas from another pool to this one (pool-to-pool transfers)",
        details: "The new replica is CACHED. It is committed only after its size and checksum match the\n\
                  source's and its data and record are on disk. Without -wait the transfers are queued and\n\
                  the command returns at once; `pp ls` shows them. Several pnfsids may be given (the\n\
                  source pool comes last); each is its own transfer.",
        options: &[
            flag("wait", "wait for the transfer to end and report its result (progress every 10 s)"),
            flag("force-source-mode", "copy even if the source is disabled for fetch"),
        ],
        examples: &[
            "pp get file 0000A1B2C3D4E5F60718293A4B5C6D7E8F90 pool1",
            "pp get file -wait 0000A1B2C3D4E5F60718293A4B5C6D7E8F90 pool1",
        ],
        parse: |inv| {
            inv.arg(1, "source pool")?;
            let (last, ids) = inv.args.split_last().expect("two arguments were checked");
            let source = inv.parse_arg(last)?;
            let pnfsids = ids.iter().map(|t| inv.parse_arg(t)).collect::<Result<_, _>>()?;
            Ok(Command::PpGetFile {
                pnfsids,
                source,
                wait: inv.flag("wait")?,
                force_source_mode: inv.flag("force-source-mode")?,
            })
        },
    },
    CommandSpec {
        name: "pp ls",
        args: "",
        summary: "list incoming pool-to-pool transfers, active and queued",
        details: "Lines: [<id>] <pnfsid> from <pool> ACTIVE <done>/<size> bytes <MiB/s> MiB/s <age> s,\n\
                  or QUEUED <age> s. With -l, the last 50 finished transfers follow (DONE or FAILED).",
        options: &[flag("l", "also list recently finished transfers")],
        examples: &["pp ls", "pp ls -l"],
        parse: |inv| inv.at_most(0).and_then(|()| Ok(Command::PpLs { long: inv.flag("l")? })),
    },
    CommandSpec {
        name: "pp set max active",
        args: "<n>",
        summary: "how many incoming transfers run at once (the rest queue); 0 pauses them",
        details: "",
        options: &[],
        examples: &["pp set max active 8"],
        parse: |inv| {
            let n = inv.parse_arg(inv.arg(0, "number")?)?;
            inv.at_most(1)?;
            Ok(Command::PpSetMaxActive(n))
        },
    },
    CommandSpec {
        name: "pp set max outgoing",
        args: "<n>",
        summary: "how many transfers other pools may read from this one at once; beyond it they wait (and fail after their no-progress time)",
        details: "",
        options: &[],
        examples: &["pp set max outgoing 16"],
        parse: |inv| {
            let n = inv.parse_arg(inv.arg(0, "number")?)?;
            inv.at_most(1)?;
            Ok(Command::PpSetMaxOutgoing(n))
        },
    },
    CommandSpec {
        name: "pp remove",
        args: "<id>",
        summary: "cancel an incoming transfer; its partial data is removed (a transfer already committing completes)",
        details: "",
        options: &[],
        examples: &["pp remove 3"],
        parse: |inv| {
            let id = inv.parse_arg(inv.arg(0, "transfer id")?)?;
            inv.at_most(1)?;
            Ok(Command::PpRemove(id))
        },
    },
];

/// Parses a line against [`COMMANDS`]; `Ok(None)` for a blank line.
pub fn parse(line: &str) -> Result<Option<Command>, ParseError> {
    spec::parse_line(COMMANDS, line)
}

/// The declarations as the shell sees them.
pub fn describe() -> Vec<CommandDescription> {
    COMMANDS
        .iter()
        .map(|c| CommandDescription {
            name: c.name.to_string(),
            summary: c.summary.to_string(),
            options: c.options.iter().map(|o| o.name.to_string()).collect(),
        })
        .collect()
}

fn parse_rep_ls(inv: &Invocation<'_>) -> Result<Command, ParseError> {
    let mut ls = RepLs { sum: inv.flag("sum")?, ..RepLs::default() };
    if let Some((spec, offset)) = inv.value("l") {
        let mut rest = spec;
        while !rest.is_empty() {
            let (p, len) = match rest.as_bytes()[0] {
                b's' => (Property::Sticky, 1),
                b'p' => (Property::Precious, 1),
                b'l' => (Property::Locked, 1),
                b'e' => (Property::Error, 1),
                b'n' if rest.starts_with("nc") => (Property::NotCached, 2),
                _ => {
                    return Err(ParseError::invalid(
                        offset,
                        format!(
                            "-l: unknown property in {spec:?}; use s (sticky), p (precious), l (locked), nc (not cached), e (error)"
                        ),
                    ));
                }
            };
            ls.require.push(p);
            rest = &rest[len..];
        }
    }
    ls.storage = inv.value("storage").map(|(g, _)| g.to_string());
    if let Some((unit, offset)) = inv.value("s") {
        ls.stats = Some(match unit.to_ascii_lowercase().as_str() {
            "" | "b" => SizeUnit::B,
            "k" => SizeUnit::K,
            "m" => SizeUnit::M,
            "g" => SizeUnit::G,
            "t" => SizeUnit::T,
            _ => return Err(ParseError::invalid(offset, format!("-s: unknown unit {unit:?}; use b, k, m, g or t"))),
        });
    }
    for t in &inv.args {
        ls.pnfsids.push(inv.parse_arg(t)?);
    }
    Ok(Command::RepLs(ls))
}

fn parse_set_sticky(inv: &Invocation<'_>) -> Result<Command, ParseError> {
    let pnfsid = inv.parse_arg(inv.arg(0, "pnfsid")?)?;
    let switch = inv.arg(1, "on|off")?;
    let on = match switch.text.as_str() {
        "on" => true,
        "off" => false,
        other => return Err(ParseError::invalid(switch.offset, format!("expected on or off, not {other:?}"))),
    };
    inv.at_most(2)?;
    let owner = match inv.value("o") {
        None => "system".to_string(),
        Some(("", offset)) => return Err(ParseError::invalid(offset, "-o: the owner must not be empty")),
        Some((o, _)) => o.to_string(),
    };
    let lifetime_ms = match inv.value("l") {
        None => -1,
        Some((text, offset)) => match text.parse::<i64>() {
            Ok(l) if l == -1 || l > 0 => l,
            _ => {
                return Err(ParseError::invalid(
                    offset,
                    format!("-l: {text:?} is not a lifetime; give milliseconds > 0, or -1 for ever"),
                ));
            }
        },
    };
    Ok(Command::RepSetSticky { pnfsid, owner, lifetime_ms, on })
}

fn parse_set_state(inv: &Invocation<'_>, state: ReplicaState) -> Result<Command, ParseError> {
    let pnfsid = inv.parse_arg(inv.arg(0, "pnfsid")?)?;
    inv.at_most(1)?;
    Ok(Command::RepSetState { pnfsid, state })
}

fn parse_pool_disable(inv: &Invocation<'_>) -> Result<Command, ParseError> {
    let table = [
        ("fetch", PoolMode::FETCH),
        ("store", PoolMode::STORE),
        ("stage", PoolMode::STAGE),
        ("p2p-client", PoolMode::P2P_CLIENT),
        ("p2p-server", PoolMode::P2P_SERVER),
        ("rdonly", PoolMode::RDONLY),
        ("strict", PoolMode::STRICT),
        ("draining", PoolMode::DRAINING),
    ];
    let mut bits = 0;
    for (name, b) in table {
        if inv.flag(name)? {
            bits |= b;
        }
    }
    if bits == 0 {
        bits = PoolMode::STRICT;
    }
    let error_code = match inv.args.first() {
        None => 1,
        Some(t) => inv.parse_arg::<i32>(t)?,
    };
    let message = match inv.args.get(1) {
        None => "Operator intervention".to_string(),
        Some(t) => t.text.clone(),
    };
    inv.at_most(2)?;
    Ok(Command::PoolDisable { bits: bits | PoolMode::DISABLED, error_code, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0000A1B2C3D4E5F60718293A4B5C6D7E8F90";

    fn id() -> PnfsId {
        ID.parse().unwrap()
    }

    fn check(line: &str, want: Command) {
        assert_eq!(parse(line), Ok(Some(want)), "line {line:?}");
    }

    /// Checks that `line` is refused with a message containing `needle`, pointing at `at`.
    fn check_err(line: &str, needle: &str, at: &str) {
        let err = parse(line).expect_err(line);
        assert!(err.message.contains(needle), "{line:?}: {:?} lacks {needle:?}", err.message);
        let want = line.find(at).unwrap_or_else(|| panic!("{at:?} not in {line:?}"));
        assert_eq!(err.offset, Some(want), "{line:?}: {err:?} should point at {at:?}");
    }

    #[test]
    fn every_example_parses() {
        for spec in COMMANDS {
            for example in spec.examples {
                assert!(
                    matches!(parse(example), Ok(Some(_))),
                    "example {example:?} of {}: {:?}",
                    spec.name,
                    parse(example)
                );
            }
        }
    }

    #[test]
    fn good_lines() {
        check("info", Command::Info);
        check("  info  ", Command::Info);
        check("help rep ls", Command::Help { topic: vec!["rep".into(), "ls".into()] });
        check("rep ls", Command::RepLs(RepLs::default()));
        check(
            "rep ls -l=spnce -storage=atlas:* -s=M -sum",
            Command::RepLs(RepLs {
                require: vec![Property::Sticky, Property::Precious, Property::NotCached, Property::Error],
                storage: Some("atlas:*".into()),
                stats: Some(SizeUnit::M),
                sum: true,
                pnfsids: vec![],
            }),
        );
        check(&format!("rep ls {ID}"), Command::RepLs(RepLs { pnfsids: vec![id()], ..RepLs::default() }));
        check(
            &format!("rep set sticky {ID} on"),
            Command::RepSetSticky { pnfsid: id(), owner: "system".into(), lifetime_ms: -1, on: true },
        );
        check(
            &format!("rep set sticky -o=\"my owner\" -l=5000 {ID} off"),
            Command::RepSetSticky { pnfsid: id(), owner: "my owner".into(), lifetime_ms: 5000, on: false },
        );
        check(&format!("rep set precious {ID}"), Command::RepSetState { pnfsid: id(), state: ReplicaState::Precious });
        check(&format!("rep rm -force {ID}"), Command::RepRm { pnfsid: id(), force: true });
        check(&format!("rep rm -force=false {ID}"), Command::RepRm { pnfsid: id(), force: false });
        check(
            "pool disable -rdonly",
            Command::PoolDisable { bits: PoolMode::RDONLY, error_code: 1, message: "Operator intervention".into() },
        );
        check(
            "pool disable -fetch -store 7 'disk swap'",
            Command::PoolDisable {
                bits: PoolMode::DISABLED | PoolMode::FETCH | PoolMode::STORE,
                error_code: 7,
                message: "disk swap".into(),
            },
        );
        check(
            "pool disable",
            Command::PoolDisable { bits: PoolMode::STRICT, error_code: 1, message: "Operator intervention".into() },
        );
        check("pool enable", Command::PoolEnable);
        check(
            &format!("pp get file -wait {ID} pool2"),
            Command::PpGetFile {
                pnfsids: vec![id()],
                source: "pool2".parse().unwrap(),
                wait: true,
                force_source_mode: false,
            },
        );
        check(
            &format!("pp get file {ID} {ID} pool2"),
            Command::PpGetFile {
                pnfsids: vec![id(), id()],
                source: "pool2".parse().unwrap(),
                wait: false,
                force_source_mode: false,
            },
        );
        check("pp ls -l", Command::PpLs { long: true });
        check("pp set max active 0", Command::PpSetMaxActive(0));
        check("pp set max outgoing 4", Command::PpSetMaxOutgoing(4));
        check("pp remove 12", Command::PpRemove(TransferId(12)));
        assert_eq!(parse("   "), Ok(None));
    }

    #[test]
    fn bad_lines_point_at_the_offending_token() {
        check_err("rep lss", "did you mean 'rep ls'", "rep");
        check_err("frobnicate now", "unknown command 'frobnicate now'", "frobnicate");
        check_err("rep ls -x", "unknown option -x; 'rep ls' takes -l -storage -s -sum", "-x");
        check_err("rep ls -l=sq", "-l: unknown property", "-l");
        check_err("rep ls -s=q", "-s: unknown unit", "-s");
        check_err("rep ls 1234", "not a valid pnfsid", "1234");
        check_err("rep ls -storage", "needs a value", "-storage");
        check_err(&format!("rep set sticky {ID} maybe"), "expected on or off", "maybe");
        check_err(&format!("rep set sticky -l=-5 {ID} on"), "not a lifetime", "-l");
        check_err(&format!("rep set sticky -o= {ID} on"), "must not be empty", "-o");
        check_err(&format!("rep rm {ID} {ID}x"), "unexpected argument", &format!("{ID}x"));
        check_err(&format!("rep rm -force=yes {ID}"), "takes no value", "-force");
        check_err("info extra", "unexpected argument", "extra");
        check_err("pool disable -rdonly notanumber", "invalid digit", "notanumber");
        check_err("pool disable -readonly", "unknown option -readonly", "-readonly");
        check_err("rep ls \"unterminated", "unterminated quote", "\"");
        check_err(&format!("pp get file {ID} pool/2"), "not a valid pool name", "pool/2");

        check_err("pp set max active -1", "unknown option -1", "-1");
        check_err("pp set max active many", "invalid digit", "many");
        check_err("pp remove x", "not a valid transfer id", "x");
    }

    #[test]
    fn missing_argument_points_at_end_of_line() {
        let err = parse("rep set sticky").unwrap_err();
        assert_eq!(err.offset, Some("rep set sticky".len()));
        assert!(err.render("rep set sticky").ends_with("^"));
    }
}
