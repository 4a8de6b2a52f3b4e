//! Tab completion: a pure function from what is known (pool and group names, the current
//! pool's declared commands with their options' values and their arguments' kinds) and the line
//! being edited to candidates, and the rustyline helper that calls it.
//!
//! What a command takes comes from the pool (`AdminRequest::DescribeDetails`, generated from its
//! command declarations), so a new option or argument needs nothing here: an option that takes
//! a value completes as `-name=`, a closed set of values (`-state=`, `-target=`, `-select=`...)
//! completes after the `=`, and pool and pool-group arguments complete from the cluster file.

use std::collections::BTreeSet;

use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};
use tidepool_p2p::PoolName;
use tidepool_p2p::message::{ArgDetail, CommandDetail, Takes, Values};

use crate::line::LOCAL_WORDS;

/// What completion knows about.
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    /// Every pool of the cluster file.
    pub pools: &'a [PoolName],
    /// Every pool group of the cluster file.
    pub groups: &'a [String],
    /// The pool the shell is in: not offered where a command wants another pool (the targets
    /// of a migration job, the source of `pp get file`), though `cd` offers it.
    pub here: Option<&'a PoolName>,
    /// The commands of the pool the shell is in; `None` at `(local)`.
    pub commands: Option<&'a [CommandDetail]>,
}

/// Candidates for the word that ends at `pos` in `line`: the byte offset where the replaced
/// text starts and the words that may replace it, sorted. For an option's value that is just
/// after the `=`. A candidate that ends in `=` (an option that takes a value) is to be followed
/// by its value, not by a space.
pub fn complete(line: &str, pos: usize, known: Known<'_>) -> (usize, Vec<String>) {
    let before = line.get(..pos).unwrap_or(line);
    // After the last white-space character, whatever its width (a non-breaking space is two bytes).
    let start = before.char_indices().rfind(|(_, c)| c.is_whitespace()).map_or(0, |(i, c)| i + c.len_utf8());
    let partial = &before[start..];
    let prior: Vec<&str> = before[..start].split_whitespace().collect();
    let (skip, candidates) = match (prior.as_slice(), known.commands) {
        ([], commands) => (0, first_words(commands, partial)),
        (["cd"], _) => (0, pool_names(known.pools, partial)),
        (["ls"], None) => (0, matching(["-json"], partial)),
        (["help", words @ ..], Some(commands)) => (0, next_words(commands, &plain(words), partial)),
        ([first, ..], Some(commands)) if !LOCAL_WORDS.contains(first) => {
            command_words(commands, &prior, partial, known)
        }
        _ => (0, Vec::new()),
    };
    (start + skip, candidates)
}

/// Words without the options (`-name`, `-name=value`) among them.
fn plain<'a>(words: &[&'a str]) -> Vec<&'a str> {
    words.iter().copied().filter(|w| !w.starts_with('-')).collect()
}

fn matching<'a>(words: impl IntoIterator<Item = &'a str>, partial: &str) -> Vec<String> {
    let set: BTreeSet<&str> = words.into_iter().filter(|w| w.starts_with(partial)).collect();
    set.into_iter().map(str::to_string).collect()
}

fn first_words(commands: Option<&[CommandDetail]>, partial: &str) -> Vec<String> {
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
fn next_words(commands: &[CommandDetail], typed: &[&str], partial: &str) -> Vec<String> {
    let next = commands.iter().filter_map(|c| {
        let mut name = c.name.split_whitespace();
        let prefix_matches = typed.iter().all(|t| name.next() == Some(*t));
        if prefix_matches { name.next() } else { None }
    });
    matching(next, partial)
}

/// The longest declared command whose name is the start of `typed`.
fn command_named<'a>(commands: &'a [CommandDetail], typed: &[&str]) -> Option<&'a CommandDetail> {
    commands
        .iter()
        .filter(|c| {
            let name: Vec<&str> = c.name.split_whitespace().collect();
            typed.starts_with(&name)
        })
        .max_by_key(|c| c.name.split_whitespace().count())
}

/// Completion within a pool command, with the number of bytes of `partial` the candidates do
/// not replace. A `-name=...` gets the option's values; a word starting with `-` gets options;
/// another word gets more of the command's name if there is more, else the values of the
/// argument in its position; an empty word with none of those gets the options.
fn command_words(commands: &[CommandDetail], prior: &[&str], partial: &str, known: Known<'_>) -> (usize, Vec<String>) {
    let typed = plain(prior);
    let command = command_named(commands, &typed);
    if let Some((name, value)) = partial.strip_prefix('-').and_then(|rest| rest.split_once('=')) {
        let option = command.and_then(|c| c.options.iter().find(|o| o.name == name));
        let words = match option {
            Some(o) if o.takes == Takes::Flag => matching(["false", "true"], value),
            Some(o) => value_words(&o.values, prior, value, known),
            None => Vec::new(),
        };
        return (1 + name.len() + 1, words);
    }
    if !partial.starts_with('-') {
        let words = next_words(commands, &typed, partial);
        if !words.is_empty() {
            return (0, words);
        }
        let Some(command) = command else {
            return (0, Vec::new());
        };
        let position = typed.len() - command.name.split_whitespace().count();
        let given = &typed[typed.len() - position..];
        let words: Vec<String> = arg_values(&command.args, position)
            .into_iter()
            .flat_map(|values| value_words(values, prior, partial, known))
            .filter(|w| !given.contains(&w.as_str()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !words.is_empty() || !partial.is_empty() {
            return (0, words);
        }
    }
    let Some(command) = command else {
        return (0, Vec::new());
    };
    let used: Vec<&str> = prior.iter().filter_map(|w| w.split('=').next()).collect();
    let options: Vec<String> = command
        .options
        .iter()
        .filter(|o| !used.contains(&format!("-{}", o.name).as_str()))
        .map(|o| match o.takes {
            Takes::Required => format!("-{}=", o.name),
            Takes::Flag | Takes::Optional | Takes::Unknown => format!("-{}", o.name),
        })
        .collect();
    (0, matching(options.iter().map(String::as_str), partial))
}

/// What the argument at `position` (0: the first after the command words) may be. From a
/// repeated argument on, the argument may be that one again or any after it.
fn arg_values(args: &[ArgDetail], position: usize) -> Vec<&Values> {
    match args.iter().position(|a| a.repeats) {
        Some(r) if position > r => args[r..].iter().map(|a| &a.values).collect(),
        _ => args.get(position).map(|a| vec![&a.values]).unwrap_or_default(),
    }
}

/// The words among `values` that start with `partial`.
fn value_words(values: &Values, prior: &[&str], partial: &str, known: Known<'_>) -> Vec<String> {
    match values {
        Values::OneOf { words, .. } => matching(words.iter().map(String::as_str), partial),
        Values::Pool => matching(known.pools.iter().filter(|p| Some(*p) != known.here).map(PoolName::as_str), partial),
        Values::PoolGroup => matching(known.groups.iter().map(String::as_str), partial),
        Values::ByOption { option, cases, otherwise } => {
            let prefix = format!("-{option}=");
            match prior.iter().rev().find_map(|w| w.strip_prefix(prefix.as_str())) {
                None => value_words(otherwise, prior, partial, known),
                Some(given) => match cases.iter().find(|(word, _)| word == given) {
                    Some((_, values)) => value_words(values, prior, partial, known),
                    None => Vec::new(),
                },
            }
        }
        Values::Free | Values::Job | Values::PnfsId | Values::Unknown => Vec::new(),
    }
}

/// The rustyline helper: completion from [`complete`]; no hints, highlighting or validation.
#[derive(Debug, Default)]
pub struct ShellHelper {
    pools: Vec<PoolName>,
    groups: Vec<String>,
    here: Option<PoolName>,
    commands: Option<Vec<CommandDetail>>,
}

impl ShellHelper {
    pub fn new(pools: Vec<PoolName>, groups: Vec<String>) -> Self {
        ShellHelper { pools, groups, here: None, commands: None }
    }

    /// The pool the shell is now in and its commands; `None` at `(local)`.
    pub fn set_pool(&mut self, here: Option<PoolName>, commands: Option<Vec<CommandDetail>>) {
        self.here = here;
        self.commands = commands;
    }
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let known = Known {
            pools: &self.pools,
            groups: &self.groups,
            here: self.here.as_ref(),
            commands: self.commands.as_deref(),
        };
        let (start, words) = complete(line, pos, known);
        let pairs = words.into_iter().map(|w| Pair { replacement: replacement(&w), display: w }).collect();
        Ok((start, pairs))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}

impl Highlighter for ShellHelper {}

impl Validator for ShellHelper {}

impl Helper for ShellHelper {}

/// What Tab puts in the line for a candidate: the word and a space, except after `-name=`,
/// whose value follows directly.
fn replacement(word: &str) -> String {
    if word.ends_with('=') { word.to_string() } else { format!("{word} ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidepool_p2p::message::OptionDetail;

    fn one_of(words: &[&str]) -> Values {
        Values::OneOf { words: words.iter().map(|w| w.to_string()).collect(), continues: false }
    }

    fn flag(name: &str) -> OptionDetail {
        OptionDetail { name: name.into(), takes: Takes::Flag, values: Values::Free }
    }

    fn valued(name: &str, values: Values) -> OptionDetail {
        OptionDetail { name: name.into(), takes: Takes::Required, values }
    }

    fn arg(values: Values, repeats: bool) -> ArgDetail {
        ArgDetail { name: String::new(), values, repeats }
    }

    fn command(name: &str, options: Vec<OptionDetail>, args: Vec<ArgDetail>) -> CommandDetail {
        CommandDetail { name: name.into(), summary: String::new(), options, args }
    }

    /// The targets of a migration job: pools, or pool groups with `-target=pgroup`.
    fn targets() -> ArgDetail {
        let cases = [("pool", Values::Pool), ("pgroup", Values::PoolGroup), ("link", Values::Free)];
        let cases = cases.into_iter().map(|(w, v)| (w.to_string(), v)).collect();
        arg(Values::ByOption { option: "target".into(), cases, otherwise: Box::new(Values::Pool) }, true)
    }

    fn pool_commands() -> Vec<CommandDetail> {
        let job_options = || {
            vec![
                valued("concurrency", Values::Free),
                valued("pins", one_of(&["keep", "move"])),
                valued("state", one_of(&["cached", "precious"])),
                valued("storage", Values::Free),
                valued("smode", Values::OneOf { words: vec!["same".into(), "delete".into()], continues: true }),
                valued("target", one_of(&["pool", "pgroup", "link"])),
                valued("tmode", one_of(&["same", "cached", "precious"])),
                valued("select", one_of(&["proportional", "random"])),
                flag("verify"),
            ]
        };
        let optional_s = OptionDetail { name: "s".into(), takes: Takes::Optional, values: one_of(&["b", "k"]) };
        vec![
            command(
                "rep ls",
                vec![valued("l", Values::Free), optional_s, valued("storageclass", Values::Free)],
                vec![arg(Values::PnfsId, true)],
            ),
            command(
                "rep set sticky",
                vec![valued("o", Values::Free), valued("l", Values::Free)],
                vec![arg(Values::PnfsId, false), arg(one_of(&["on", "off"]), false)],
            ),
            command("rep set cached", vec![], vec![arg(Values::PnfsId, false)]),
            command("rep rm", vec![flag("force")], vec![arg(Values::PnfsId, false)]),
            command("migration move", job_options(), vec![targets()]),
            command("migration copy", job_options(), vec![targets()]),
            command("migration info", vec![flag("json")], vec![arg(Values::Job, false)]),
            command("rebalance pgroup", vec![], vec![arg(Values::PoolGroup, false)]),
            command("pp get file", vec![], vec![arg(Values::PnfsId, true), arg(Values::Pool, false)]),
            // As an older pool describes a command: option names only.
            command(
                "old",
                vec![OptionDetail { name: "x".into(), takes: Takes::Unknown, values: Values::Free }],
                vec![],
            ),
            command("info", vec![], vec![]),
            command("help", vec![], vec![]),
        ]
    }

    fn pools() -> Vec<PoolName> {
        ["pool1", "pool2", "cache1"].iter().map(|p| p.parse().expect("valid pool name in test")).collect()
    }

    fn groups() -> Vec<String> {
        vec!["disk".into(), "tape".into(), "dmz".into()]
    }

    /// `line` holds a `|` marking the cursor.
    fn check(line: &str, in_pool: bool, expected_start: usize, expected: &[&str]) {
        let pos = line.find('|').expect("cursor mark in test line");
        let text = line.replace('|', "");
        let commands = pool_commands();
        let (pools, groups) = (pools(), groups());
        let known =
            Known { pools: &pools, groups: &groups, here: None, commands: in_pool.then_some(commands.as_slice()) };
        let (start, got) = complete(&text, pos, known);
        assert_eq!((start, got), (expected_start, expected.iter().map(|s| s.to_string()).collect()), "line {line:?}");
    }

    #[test]
    fn first_word() {
        check("|", false, 0, &["..", "cd", "exit", "help", "logoff", "ls", "quit"]);
        check("l|", false, 0, &["logoff", "ls"]);
        check("  c|", false, 2, &["cd"]);
        check("r|", false, 0, &[]);
        check(
            "|",
            true,
            0,
            &["..", "cd", "exit", "help", "info", "logoff", "migration", "old", "pp", "quit", "rebalance", "rep"],
        );
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
        check("migration |", true, 10, &["copy", "info", "move"]);
        check("nosuch |", true, 7, &[]);
        check("rep |", false, 4, &[]);
    }

    /// Options: one that takes a value completes with its `=` (the helper adds no space after
    /// it), a flag or an optional value without; options already given are not offered again.
    #[test]
    fn options_after_a_complete_name() {
        let table: &[(&str, usize, &[&str])] = &[
            ("rep ls |", 7, &["-l=", "-s", "-storageclass="]),
            ("rep ls -s|", 7, &["-s", "-storageclass="]),
            ("rep ls -l=x -|", 12, &["-s", "-storageclass="]),
            ("migration copy -sto|", 15, &["-storage="]),
            ("migration copy -st|", 15, &["-state=", "-storage="]),
            ("migration copy -v|", 15, &["-verify"]),
            ("migration copy -verify -v|", 23, &[]),
            ("migration move -concurrency=2 -t|", 30, &["-target=", "-tmode="]),
            ("migration move -concurrency=2 pool2 -t|", 36, &["-target=", "-tmode="]),
            ("migration move -nosuch|", 15, &[]),
            ("rep rm 0000A1 -|", 14, &["-force"]),
            ("old -|", 4, &["-x"]),
            ("rep set cached |", 15, &[]),
            ("info -|", 5, &[]),
            ("rep set -|", 8, &[]),
        ];
        for (line, start, want) in table {
            check(line, true, *start, want);
        }
    }

    /// A value after `-name=`: the candidates replace what follows the `=`.
    #[test]
    fn option_values_from_their_sets() {
        let table: &[(&str, usize, &[&str])] = &[
            ("migration copy -state=|", 22, &["cached", "precious"]),
            ("migration copy -state=pre|", 22, &["precious"]),
            ("migration copy -state=precious|", 22, &["precious"]),
            ("migration copy -state=x|", 22, &[]),
            ("migration copy -target=|", 23, &["link", "pgroup", "pool"]),
            ("migration copy -target=p|", 23, &["pgroup", "pool"]),
            ("migration move -select=|", 23, &["proportional", "random"]),
            ("migration move -pins=|", 21, &["keep", "move"]),
            ("migration move -smode=d|", 22, &["delete"]),
            ("migration move -tmode=c|", 22, &["cached"]),
            ("migration move -verify=|", 23, &["false", "true"]),
            ("migration move -concurrency=|", 28, &[]),
            ("migration move -storage=|", 24, &[]),
            ("migration move -nosuch=|", 23, &[]),
            ("rep ls -s=|", 10, &["b", "k"]),
            ("migration move pool1 -state=c|", 28, &["cached"]),
            ("old -x=|", 7, &[]),
        ];
        for (line, start, want) in table {
            check(line, true, *start, want);
        }
    }

    /// Arguments: pools and pool groups from the cluster file, literal sets, nothing for ids.
    #[test]
    fn positional_arguments_by_kind() {
        let table: &[(&str, usize, &[&str])] = &[
            ("migration move |", 15, &["cache1", "pool1", "pool2"]),
            ("migration move po|", 15, &["pool1", "pool2"]),
            ("migration move pool1 |", 21, &["cache1", "pool2"]),
            ("migration move -concurrency=2 |", 30, &["cache1", "pool1", "pool2"]),
            ("migration move -target=pool |", 28, &["cache1", "pool1", "pool2"]),
            ("migration move -target=pgroup |", 30, &["disk", "dmz", "tape"]),
            ("migration copy -target=pgroup d|", 30, &["disk", "dmz"]),
            ("migration copy -target=pgroup disk |", 35, &["dmz", "tape"]),
            (
                "migration copy -target=link |",
                28,
                &["-concurrency=", "-pins=", "-select=", "-smode=", "-state=", "-storage=", "-tmode=", "-verify"],
            ),
            ("migration copy -target=link x|", 28, &[]),
            ("migration copy -target=pgroup -target=pool p|", 43, &["pool1", "pool2"]),
            ("migration move nosuch|", 15, &[]),
            ("rebalance pgroup |", 17, &["disk", "dmz", "tape"]),
            ("rebalance pgroup t|", 17, &["tape"]),
            ("rep set sticky 0000A1 |", 22, &["off", "on"]),
            ("rep set sticky 0000A1 o|", 22, &["off", "on"]),
            ("rep set sticky 0000A1 on |", 25, &["-l=", "-o="]),
            ("pp get file 0000A1 |", 19, &["cache1", "pool1", "pool2"]),
            ("migration info |", 15, &["-json"]),
            ("migration info 1|", 15, &[]),
            ("rep rm |", 7, &["-force"]),
        ];
        for (line, start, want) in table {
            check(line, true, *start, want);
        }
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
        check("help |", true, 5, &["help", "info", "migration", "old", "pp", "rebalance", "rep"]);
        check("help rep set |", true, 13, &["cached", "sticky"]);
        check("help |", false, 5, &[]);
    }

    /// The pool the shell is in is no target of its own jobs, nor the source of its fetches;
    /// `cd` still offers it.
    #[test]
    fn the_current_pool_is_not_offered_as_another_pool() {
        let commands = pool_commands();
        let (pools, groups) = (pools(), groups());
        let known = Known { pools: &pools, groups: &groups, here: Some(&pools[0]), commands: Some(&commands) };
        let table: &[(&str, &[&str])] = &[
            ("migration move ", &["cache1", "pool2"]),
            ("pp get file 0000A1 ", &["cache1", "pool2"]),
            ("migration move -target=pgroup ", &["disk", "dmz", "tape"]),
            ("cd ", &["..", "cache1", "pool1", "pool2"]),
        ];
        for (line, want) in table {
            assert_eq!(complete(line, line.len(), known).1, want.iter().map(|w| w.to_string()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn no_space_after_an_option_that_takes_a_value() {
        assert_eq!(replacement("-storage="), "-storage=");
        assert_eq!(replacement("-verify"), "-verify ");
        assert_eq!(replacement("precious"), "precious ");
    }
}
