//! Tab completion: a pure function from what is known (pool names, the current pool's declared
//! commands) and the line being edited to candidates, and the rustyline helper that calls it.

use std::collections::BTreeSet;

use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};
use tidepool_p2p::PoolName;
use tidepool_p2p::message::CommandDescription;

use crate::line::LOCAL_WORDS;

/// What completion knows about.
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    /// Every pool of the cluster file.
    pub pools: &'a [PoolName],
    /// The commands of the pool the shell is in; `None` at `(local)`.
    pub commands: Option<&'a [CommandDescription]>,
}

/// Candidates for the word that ends at `pos` in `line`: the byte offset where that word starts
/// and the words that may replace it, sorted.
pub fn complete(line: &str, pos: usize, known: Known<'_>) -> (usize, Vec<String>) {
    let before = line.get(..pos).unwrap_or(line);
    // After the last white-space character, whatever its width (a non-breaking space is two bytes).
    let start = before.char_indices().rfind(|(_, c)| c.is_whitespace()).map_or(0, |(i, c)| i + c.len_utf8());
    let partial = &before[start..];
    let prior: Vec<&str> = before[..start].split_whitespace().collect();
    let candidates = match (prior.as_slice(), known.commands) {
        ([], commands) => first_words(commands, partial),
        (["cd"], _) => pool_names(known.pools, partial),
        (["ls"], None) => matching(["-json"], partial),
        (["help", words @ ..], Some(commands)) => next_words(commands, &plain(words), partial),
        ([first, ..], Some(commands)) if !LOCAL_WORDS.contains(first) => command_words(commands, &prior, partial),
        _ => Vec::new(),
    };
    (start, candidates)
}

/// Words without the options (`-name`, `-name=value`) among them.
fn plain<'a>(words: &[&'a str]) -> Vec<&'a str> {
    words.iter().copied().filter(|w| !w.starts_with('-')).collect()
}

fn matching<'a>(words: impl IntoIterator<Item = &'a str>, partial: &str) -> Vec<String> {
    let set: BTreeSet<&str> = words.into_iter().filter(|w| w.starts_with(partial)).collect();
    set.into_iter().map(str::to_string).collect()
}

fn first_words(commands: Option<&[CommandDescription]>, partial: &str) -> Vec<String> {
    let local = LOCAL_WORDS.iter().copied();
    match commands {
        // In a pool `ls` is the pool's business, if it has one.
        Some(commands) => matching(
            local.filter(|w| *w != "ls").chain(commands.iter().filter_map(|c| c.name.split_whitespace().next())),
            partial,
        ),
        None => matching(local, partial),
    }
}

fn pool_names(pools: &[PoolName], partial: &str) -> Vec<String> {
    matching(pools.iter().map(PoolName::as_str).chain([".."]), partial)
}

/// The word after `typed` in the names of the commands that begin with `typed`.
fn next_words(commands: &[CommandDescription], typed: &[&str], partial: &str) -> Vec<String> {
    let next = commands.iter().filter_map(|c| {
        let mut name = c.name.split_whitespace();
        let prefix_matches = typed.iter().all(|t| name.next() == Some(*t));
        if prefix_matches { name.next() } else { None }
    });
    matching(next, partial)
}

/// The longest declared command whose name is the start of `typed`.
fn command_named<'a>(commands: &'a [CommandDescription], typed: &[&str]) -> Option<&'a CommandDescription> {
    commands
        .iter()
        .filter(|c| {
            let name: Vec<&str> = c.name.split_whitespace().collect();
            typed.starts_with(&name)
        })
        .max_by_key(|c| c.name.split_whitespace().count())
}

/// Completion within a pool command: more of its name, or one of its options. A word starting
/// with `-` gets options only; an empty word gets more of the name if there is more, options
/// otherwise; a `-name=` being given a value gets nothing.
fn command_words(commands: &[CommandDescription], prior: &[&str], partial: &str) -> Vec<String> {
    let typed = plain(prior);
    if !partial.starts_with('-') {
        let words = next_words(commands, &typed, partial);
        if !words.is_empty() || !partial.is_empty() {
            return words;
        }
    }
    if partial.contains('=') {
        return Vec::new();
    }
    let Some(command) = command_named(commands, &typed) else {
        return Vec::new();
    };
    let used: Vec<&str> = prior.iter().filter_map(|w| w.split('=').next()).collect();
    let options: Vec<String> = command.options.iter().map(|o| format!("-{o}")).collect();
    matching(options.iter().map(String::as_str).filter(|o| !used.contains(o)), partial)
}

/// The rustyline helper: completion from [`complete`]; no hints, highlighting or validation.
#[derive(Debug, Default)]
pub struct ShellHelper {
    pools: Vec<PoolName>,
    commands: Option<Vec<CommandDescription>>,
}

impl ShellHelper {
    pub fn new(pools: Vec<PoolName>) -> Self {
        ShellHelper { pools, commands: None }
    }

    /// The commands of the pool the shell is now in; `None` at `(local)`.
    pub fn set_commands(&mut self, commands: Option<Vec<CommandDescription>>) {
        self.commands = commands;
    }
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let known = Known { pools: &self.pools, commands: self.commands.as_deref() };
        let (start, words) = complete(line, pos, known);
        let pairs = words.into_iter().map(|w| Pair { replacement: format!("{w} "), display: w }).collect();
        Ok((start, pairs))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}

impl Highlighter for ShellHelper {}

impl Validator for ShellHelper {}

impl Helper for ShellHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(name: &str, options: &[&str]) -> CommandDescription {
        CommandDescription {
            name: name.into(),
            summary: String::new(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    fn pool_commands() -> Vec<CommandDescription> {
        vec![
            command("rep ls", &["l", "s", "storageclass"]),
            command("rep set sticky", &["o", "l"]),
            command("rep set cached", &[]),
            command("rep rm", &["force"]),
            command("migration move", &["concurrency", "pins", "tmode"]),
            command("migration info", &["json"]),
            command("info", &[]),
            command("help", &[]),
        ]
    }

    fn pools() -> Vec<PoolName> {
        ["pool1", "pool2", "cache1"].iter().map(|p| p.parse().expect("valid pool name in test")).collect()
    }

    /// `line` holds a `|` marking the cursor.
    fn check(line: &str, in_pool: bool, expected_start: usize, expected: &[&str]) {
        let pos = line.find('|').expect("cursor mark in test line");
        let text = line.replace('|', "");
        let commands = pool_commands();
        let pools = pools();
        let known = Known { pools: &pools, commands: in_pool.then_some(commands.as_slice()) };
        let (start, got) = complete(&text, pos, known);
        assert_eq!((start, got), (expected_start, expected.iter().map(|s| s.to_string()).collect()), "line {line:?}");
    }

    #[test]
    fn first_word() {
        check("|", false, 0, &["..", "cd", "exit", "help", "logoff", "ls", "quit"]);
        check("l|", false, 0, &["logoff", "ls"]);
        check("  c|", false, 2, &["cd"]);
        check("r|", false, 0, &[]);
        check("|", true, 0, &["..", "cd", "exit", "help", "info", "logoff", "migration", "quit", "rep"]);
        check("mi|", true, 0, &["migration"]);
        check("l|", true, 0, &["logoff"]);
    }

    #[test]
    fn ls_at_local_takes_json() {
        check("ls |", false, 3, &["-json"]);
        check("ls -j|", false, 3, &["-json"]);
        check("ls -json |", false, 9, &[]);
    }

    #[test]
    fn pool_names_after_cd() {
        check("cd |", false, 3, &["..", "cache1", "pool1", "pool2"]);
        check("cd po|", true, 3, &["pool1", "pool2"]);
        check("cd pool1 |", false, 9, &[]);
        check("cd po| trailing", false, 3, &["pool1", "pool2"]);
    }

    #[test]
    fn multi_word_command_names() {
        check("rep |", true, 4, &["ls", "rm", "set"]);
        check("rep s|", true, 4, &["set"]);
        check("rep set |", true, 8, &["cached", "sticky"]);
        check("rep set st|", true, 8, &["sticky"]);
        check("migration |", true, 10, &["info", "move"]);
        check("nosuch |", true, 7, &[]);
        check("rep |", false, 4, &[]);
    }

    #[test]
    fn options_after_a_complete_name() {
        check("rep ls |", true, 7, &["-l", "-s", "-storageclass"]);
        check("rep ls -s|", true, 7, &["-s", "-storageclass"]);
        check("rep ls -l -|", true, 10, &["-s", "-storageclass"]);
        check("migration move -concurrency=2 |", true, 30, &["-pins", "-tmode"]);
        check("migration move -pins=|", true, 15, &[]);
        check("migration move -concurrency=2 pool2 -t|", true, 36, &["-tmode"]);
        check("rep set cached |", true, 15, &[]);
        check("info -|", true, 5, &[]);
        check("rep set -|", true, 8, &[]);
    }

    /// Found by the fuzz harness (`admin` target): Tab after a non-breaking space (pasted text)
    /// panicked, because the word was taken to start one byte after it, inside the character.
    #[test]
    fn a_word_after_a_wide_space_character_is_completed() {
        check("cd\u{a0}po|", false, 4, &["pool1", "pool2"]);
        check("rep\u{2003}|", true, 6, &["ls", "rm", "set"]);
        check("mi\u{a0}|", false, 4, &[]);
    }

    #[test]
    fn help_completes_pool_command_names() {
        check("help |", true, 5, &["help", "info", "migration", "rep"]);
        check("help rep set |", true, 13, &["cached", "sticky"]);
        check("help |", false, 5, &[]);
    }
}
