//! One operator's session: where the shell is, and what each interpreted line does there.
//! Output goes to a [`Console`]; a command that fails is reported on its error stream and
//! counted, and only a console that cannot be written to stops the session.

use std::io::{self, Write};

use tidepool_p2p::{PoolName, RemoteError};

use crate::client::{ClientError, PoolClient, PoolStatus};
use crate::line::{self, HelpRequest, LOCAL_COMMANDS, Location, ShellLine};

/// Where output and error messages go.
pub struct Console {
    pub out: Box<dyn Write>,
    pub err: Box<dyn Write>,
}

impl Console {
    /// The process's stdout and stderr.
    pub fn std() -> Self {
        Console { out: Box::new(io::stdout()), err: Box::new(io::stderr()) }
    }

    /// Prints one error line, after any output still buffered so the two stay in order.
    pub fn error(&mut self, message: &str) -> io::Result<()> {
        self.out.flush()?;
        writeln!(self.err, "{message}")?;
        self.err.flush()
    }

    fn print(&mut self, text: &str) -> io::Result<()> {
        self.out.write_all(text.as_bytes())?;
        self.out.flush()
    }
}

/// What a line left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Done,
    /// The command failed and the failure was reported.
    Failed,
    /// The operator asked to leave.
    Exit,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Line(#[from] line::LineError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{}", .0.render())]
    Remote(RemoteError),
    #[error("no local command {0}; inside a pool, `help` lists the pool's commands")]
    NoLocalHelp(String),
    #[error("interrupted; dropped the connection to {0} (the command may still run there)")]
    Interrupted(PoolName),
    #[error(transparent)]
    Console(io::Error),
}

/// Who is typing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An operator at a terminal: Ctrl-C while a pool answers abandons that command and keeps
    /// the shell (this installs a SIGINT handler for the rest of the process's life).
    Interactive,
    /// A script: Ctrl-C keeps its usual meaning.
    Scripted,
}

/// The shell's state between lines.
pub struct Session {
    client: PoolClient,
    at: Location,
    mode: Mode,
}

impl Session {
    /// A session at `(local)`.
    pub fn new(client: PoolClient, mode: Mode) -> Self {
        Session { client, at: Location::Local, mode }
    }

    pub fn location(&self) -> &Location {
        &self.at
    }

    pub fn client_mut(&mut self) -> &mut PoolClient {
        &mut self.client
    }

    /// Interprets and performs one line. Only a console write error is an `Err`.
    pub async fn execute(&mut self, text: &str, console: &mut Console) -> io::Result<Step> {
        let outcome = match line::interpret(text, &self.at) {
            Ok(ShellLine::Exit) => return Ok(Step::Exit),
            Ok(command) => self.perform(command, console).await,
            Err(e) => Err(e.into()),
        };
        match outcome {
            Ok(()) => Ok(Step::Done),
            Err(Failure::Console(e) | Failure::Client(ClientError::Output(e))) => Err(e),
            Err(failure) => {
                console.error(&failure.to_string())?;
                Ok(Step::Failed)
            }
        }
    }

    async fn perform(&mut self, command: ShellLine, console: &mut Console) -> Result<(), Failure> {
        match command {
            ShellLine::Empty | ShellLine::Exit => Ok(()),
            ShellLine::Up => {
                self.at = Location::Local;
                Ok(())
            }
            ShellLine::Cd(pool) => {
                self.client.connect(&pool).await?;
                self.at = Location::Pool(pool);
                Ok(())
            }
            ShellLine::Ls { json } => {
                let statuses = self.client.probe_all().await;
                let names: Vec<(&PoolName, &[String])> =
                    self.client.cluster().pools.iter().map(|p| (&p.name, p.groups.as_slice())).collect();
                let text = if json { pool_list_json(&names, &statuses) } else { pool_list(&names, &statuses) };
                console.print(&text).map_err(Failure::Console)
            }
            ShellLine::Help(HelpRequest::Local { topic }) => {
                console.print(&local_help(topic.as_deref())?).map_err(Failure::Console)
            }
            ShellLine::Help(HelpRequest::Pool { line }) => {
                self.remote(&line, console).await?;
                if line.trim() == "help" {
                    console.print(POOL_HELP_FOOTER).map_err(Failure::Console)?;
                }
                Ok(())
            }
            ShellLine::Remote(line) => self.remote(&line, console).await,
        }
    }

    /// Sends `line` to the current pool and prints its output as it streams in.
    async fn remote(&mut self, line: &str, console: &mut Console) -> Result<(), Failure> {
        let Location::Pool(pool) = &self.at else {
            return Err(line::LineError::NotConnected.into());
        };
        let mut printer = Printer { out: &mut *console.out, at_line_start: true };
        let mut output = |chunk: &str| printer.print(chunk);
        let run = self.client.run(pool, line, &mut output);
        let result = if self.mode == Mode::Interactive {
            tokio::select! {
                result = run => result.map_err(Failure::from),
                Ok(()) = tokio::signal::ctrl_c() => Err(Failure::Interrupted(pool.clone())),
            }
        } else {
            run.await.map_err(Failure::from)
        };
        printer.finish_line().map_err(Failure::Console)?;
        match result? {
            None => Ok(()),
            Some(error) => Err(Failure::Remote(error)),
        }
    }
}

/// Copies output chunks through and remembers whether the last one ended its line.
struct Printer<'a> {
    out: &'a mut dyn Write,
    at_line_start: bool,
}

impl Printer<'_> {
    fn print(&mut self, chunk: &str) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.out.write_all(chunk.as_bytes())?;
        self.out.flush()?;
        self.at_line_start = chunk.ends_with('\n');
        Ok(())
    }

    fn finish_line(&mut self) -> io::Result<()> {
        if !self.at_line_start {
            self.out.write_all(b"\n")?;
            self.out.flush()?;
            self.at_line_start = true;
        }
        Ok(())
    }
}

const POOL_HELP_FOOTER: &str = "(shell: `cd ..` back to (local), `cd <pool>` to another pool, `exit` to leave)\n";

/// `help` at `(local)`: every local command, or the one asked about.
fn local_help(topic: Option<&str>) -> Result<String, Failure> {
    let width = LOCAL_COMMANDS.iter().map(|(usage, _)| usage.len()).max().unwrap_or(0);
    let line = |(usage, summary): &(&str, &str)| format!("  {usage:<width$}  {summary}\n");
    let Some(topic) = topic else {
        let mut text = String::from("local commands:\n");
        text.extend(LOCAL_COMMANDS.iter().map(line));
        return Ok(text);
    };
    let word = topic.split_whitespace().next();
    let mentions = |usage: &str| usage.split(" | ").any(|form| form.split_whitespace().next() == word);
    match LOCAL_COMMANDS.iter().find(|(usage, _)| mentions(usage)) {
        Some(entry) => Ok(line(entry)),
        None => Err(Failure::NoLocalHelp(topic.to_string())),
    }
}

/// The `ls` table: one line per pool, `<name>  online|offline|error  groups: ...  (reason)`.
fn pool_list(pools: &[(&PoolName, &[String])], statuses: &[PoolStatus]) -> String {
    let width = pools.iter().map(|(name, _)| name.as_str().len()).max().unwrap_or(0);
    let mut text = String::new();
    for ((name, groups), status) in pools.iter().zip(statuses) {
        let groups = if groups.is_empty() { "-".to_string() } else { groups.join(",") };
        let name = name.as_str();
        text.push_str(&format!("{name:<width$}  {:<7}  groups: {groups}", status.word()));
        if let Some(reason) = status.reason() {
            text.push_str(&format!("  ({reason})"));
        }
        text.push('\n');
    }
    if pools.is_empty() {
        text.push_str("(the cluster file lists no pools)\n");
    }
    text
}

/// One pool of `ls -json`.
#[derive(Debug, serde::Serialize)]
struct PoolEntryJson<'a> {
    pool: &'a str,
    /// `online`, `offline` or `error`, as the text.
    status: &'static str,
    groups: &'a [String],
    /// Why it is offline or unusable; `null` when online.
    reason: Option<&'a str>,
}

/// `ls -json`: the `ls` table as one JSON array, in cluster-file order.
fn pool_list_json(pools: &[(&PoolName, &[String])], statuses: &[PoolStatus]) -> String {
    let list: Vec<PoolEntryJson<'_>> = pools
        .iter()
        .zip(statuses)
        .map(|((name, groups), status)| PoolEntryJson {
            pool: name.as_str(),
            status: status.word(),
            groups,
            reason: status.reason(),
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&list).expect("a pool list always serialises");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_list_json_has_the_figures_of_the_table() {
        let (a, b): (PoolName, PoolName) = ("pool1".parse().unwrap(), "cache-pool2".parse().unwrap());
        let groups = ["disk".to_string(), "tape".to_string()];
        let statuses = [PoolStatus::Online, PoolStatus::Offline { reason: "connection refused".into() }];
        let json: serde_json::Value =
            serde_json::from_str(&pool_list_json(&[(&a, &groups), (&b, &[])], &statuses)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"pool": "pool1", "status": "online", "groups": ["disk", "tape"], "reason": null},
                {"pool": "cache-pool2", "status": "offline", "groups": [], "reason": "connection refused"},
            ])
        );
        assert_eq!(pool_list_json(&[], &[]), "[]\n");
    }

    #[test]
    fn pool_list_aligns_names_and_shows_groups_and_reasons() {
        let (a, b): (PoolName, PoolName) = ("pool1".parse().unwrap(), "cache-pool2".parse().unwrap());
        let groups = ["disk".to_string(), "tape".to_string()];
        let statuses = [PoolStatus::Online, PoolStatus::Offline { reason: "connection refused".into() }];
        let text = pool_list(&[(&a, &groups), (&b, &[])], &statuses);
        assert_eq!(
            text,
            "pool1        online   groups: disk,tape\n\
             cache-pool2  offline  groups: -  (connection refused)\n"
        );
        assert_eq!(pool_list(&[], &[]), "(the cluster file lists no pools)\n");
    }

    #[test]
    fn local_help_lists_and_describes_local_commands() {
        let all = local_help(None).unwrap();
        for word in ["cd <pool>", "cd ..", "ls", "help", "exit", "quit", "logoff"] {
            assert!(all.contains(word), "{word} missing from\n{all}");
        }
        assert!(local_help(Some("cd")).unwrap().contains("cd <pool>"));
        assert!(local_help(Some("..")).unwrap().contains("back to (local)"));
        assert!(local_help(Some("quit")).unwrap().contains("leave the shell"));
        let err = local_help(Some("rep")).unwrap_err().to_string();
        assert_eq!(err, "no local command rep; inside a pool, `help` lists the pool's commands");
    }

    #[test]
    fn printer_ends_output_with_exactly_one_newline() {
        let mut buf = Vec::new();
        let mut printer = Printer { out: &mut buf, at_line_start: true };
        printer.finish_line().unwrap();
        printer.print("a\nb").unwrap();
        printer.print("").unwrap();
        printer.finish_line().unwrap();
        printer.print("c\n").unwrap();
        printer.finish_line().unwrap();
        assert_eq!(String::from_utf8(buf).unwrap(), "a\nb\nc\n");
    }
}
