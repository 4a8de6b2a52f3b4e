//! What a typed line means, decided without any IO: a local command of the shell or a line for
//! the pool the operator is in.

use std::fmt;

use tidepool_p2p::PoolName;
use tidepool_p2p::ids::IdError;
use tidepool_p2p::message::line_too_long;

/// Where the shell is: at `(local)` or inside one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local,
    Pool(PoolName),
}

impl Location {
    /// The prompt shown at this location.
    pub fn prompt(&self) -> String {
        format!("({self}) admin > ")
    }

    pub fn pool(&self) -> Option<&PoolName> {
        match self {
            Location::Local => None,
            Location::Pool(pool) => Some(pool),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local => f.write_str("local"),
            Location::Pool(pool) => write!(f, "{pool}"),
        }
    }
}

/// One interpreted line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellLine {
    /// Nothing to do: a blank line or a `#` comment.
    Empty,
    /// `cd <pool>`: talk to that pool from now on.
    Cd(PoolName),
    /// `cd ..` or `..`: back to `(local)`.
    Up,
    /// `ls` at `(local)`: the pools of the cluster file and whether they answer; with
    /// `-json`, as one JSON array (docs/json.md).
    Ls {
        json: bool,
    },
    Help(HelpRequest),
    /// `exit`, `quit` or `logoff`.
    Exit,
    /// A line for the pool the shell is in, sent as it was typed (trimmed).
    Remote(String),
}

/// Who answers a `help`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelpRequest {
    /// At `(local)`: the shell lists its own commands, or describes one of them.
    Local { topic: Option<String> },
    /// In a pool: the pool answers the line; a bare `help` also gets a note on local commands.
    Pool { line: String },
}

/// A line the shell refuses before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not connected to a pool: `cd <pool>` first (`ls` lists them)")]
    NotConnected,
    #[error("usage: cd <pool> | cd ..")]
    CdUsage,
    #[error("{0}")]
    BadPoolName(#[from] IdError),
    #[error("{command} takes no arguments")]
    NoArguments { command: &'static str },
    #[error("usage: ls [-json]")]
    LsUsage,
    /// Longer than a pool accepts (`MAX_ADMIN_LINE`); refused before it is sent.
    #[error("{0}")]
    TooLong(String),
}

/// The shell's own commands with their one-line help, in the order `help` lists them.
pub const LOCAL_COMMANDS: &[(&str, &str)] = &[
    ("cd <pool>", "talk to that pool's admin endpoint (the connection opens at once)"),
    ("cd .. | ..", "back to (local)"),
    ("ls [-json]", "at (local): every pool of the cluster file, online or offline, with its groups (-json: as JSON)"),
    ("help", "this list; inside a pool, `help [command]` asks the pool"),
    ("exit | quit | logoff", "leave the shell (Ctrl-D too; Ctrl-C abandons the line being typed)"),
];

/// The words that name a local command, for completion.
pub const LOCAL_WORDS: &[&str] = &["cd", "..", "ls", "help", "exit", "quit", "logoff"];

/// Interprets one line typed at `at`.
pub fn interpret(line: &str, at: &Location) -> Result<ShellLine, LineError> {
    let line = line.trim();
    if let Some(message) = line_too_long(line.len()) {
        return Err(LineError::TooLong(message));
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&first, rest)) = words.split_first() else {
        return Ok(ShellLine::Empty);
    };
    if first.starts_with('#') {
        return Ok(ShellLine::Empty);
    }
    match (first, at) {
        ("exit" | "quit" | "logoff", _) => no_arguments(rest, "exit", ShellLine::Exit),
        ("..", _) => no_arguments(rest, "..", ShellLine::Up),
        ("cd", _) => cd(rest),
        ("ls", Location::Local) => match rest {
            [] => Ok(ShellLine::Ls { json: false }),
            ["-json"] => Ok(ShellLine::Ls { json: true }),
            _ => Err(LineError::LsUsage),
        },
        ("help", Location::Local) => {
            let topic = (!rest.is_empty()).then(|| rest.join(" "));
            Ok(ShellLine::Help(HelpRequest::Local { topic }))
        }
        ("help", Location::Pool(_)) => Ok(ShellLine::Help(HelpRequest::Pool { line: line.to_string() })),
        (_, Location::Local) => Err(LineError::NotConnected),
        (_, Location::Pool(_)) => Ok(ShellLine::Remote(line.to_string())),
    }
}

fn no_arguments(rest: &[&str], command: &'static str, ok: ShellLine) -> Result<ShellLine, LineError> {
    if rest.is_empty() { Ok(ok) } else { Err(LineError::NoArguments { command }) }
}

fn cd(rest: &[&str]) -> Result<ShellLine, LineError> {
    match rest {
        [".."] => Ok(ShellLine::Up),
        [name] => Ok(ShellLine::Cd(name.parse()?)),
        _ => Err(LineError::CdUsage),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str) -> PoolName {
        name.parse().expect("valid pool name in test")
    }

    fn check(line: &str, at: &Location, expected: Result<ShellLine, &str>) {
        let got = interpret(line, at).map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_string), "line {line:?} at {at}");
    }

    #[test]
    fn lines_at_local() {
        use ShellLine::*;
        let local = &Location::Local;
        check("", local, Ok(Empty));
        check("   \t ", local, Ok(Empty));
        check("# a comment", local, Ok(Empty));
        check("cd pool1", local, Ok(Cd(pool("pool1"))));
        check("  cd   pool1  ", local, Ok(Cd(pool("pool1"))));
        check("cd ..", local, Ok(Up));
        check("..", local, Ok(Up));
        check("ls", local, Ok(Ls { json: false }));
        check("ls -json", local, Ok(Ls { json: true }));
        check("exit", local, Ok(Exit));
        check("quit", local, Ok(Exit));
        check("logoff", local, Ok(Exit));
        check("help", local, Ok(Help(HelpRequest::Local { topic: None })));
        check("help cd", local, Ok(Help(HelpRequest::Local { topic: Some("cd".into()) })));
        check("rep ls", local, Err("not connected to a pool: `cd <pool>` first (`ls` lists them)"));
        check("cd", local, Err("usage: cd <pool> | cd .."));
        check("cd pool1 pool2", local, Err("usage: cd <pool> | cd .."));
        check(
            "cd pool/1",
            local,
            Err("\"pool/1\" is not a valid pool name: may hold only letters, digits, '_', '-' and '.'"),
        );
        check("ls -l", local, Err("usage: ls [-json]"));
        check("ls -json -json", local, Err("usage: ls [-json]"));
        check("exit now", local, Err("exit takes no arguments"));
    }

    #[test]
    fn lines_in_a_pool() {
        use ShellLine::*;
        let at = &Location::Pool(pool("pool1"));
        check("rep ls -l", at, Ok(Remote("rep ls -l".into())));
        check("  migration move -concurrency=2 pool2  ", at, Ok(Remote("migration move -concurrency=2 pool2".into())));
        check("ls", at, Ok(Remote("ls".into())));
        check("help", at, Ok(Help(HelpRequest::Pool { line: "help".into() })));
        check("help rep ls", at, Ok(Help(HelpRequest::Pool { line: "help rep ls".into() })));
        check("cd pool2", at, Ok(Cd(pool("pool2"))));
        check("cd ..", at, Ok(Up));
        check("..", at, Ok(Up));
        check("exit", at, Ok(Exit));
        check("#rep rm everything", at, Ok(Empty));
    }

    /// A line longer than a pool accepts is refused in the shell: nothing is sent, and the
    /// connection stays as it was.
    #[test]
    fn an_over_long_line_is_refused_before_it_is_sent() {
        use tidepool_p2p::message::MAX_ADMIN_LINE;
        let at = &Location::Pool(pool("pool1"));
        let line = format!("rep ls {}", "a".repeat(MAX_ADMIN_LINE));
        let want = format!("command line too long: {} bytes, at most {MAX_ADMIN_LINE}", line.len());
        check(&line, at, Err(&want));
        check(&line, &Location::Local, Err(&want));
        let longest = format!("rep ls {}", "a".repeat(MAX_ADMIN_LINE - 7));
        check(&longest, at, Ok(ShellLine::Remote(longest.clone())));
    }

    #[test]
    fn prompts() {
        assert_eq!(Location::Local.prompt(), "(local) admin > ");
        assert_eq!(Location::Pool(pool("pool2")).prompt(), "(pool2) admin > ");
    }
}
