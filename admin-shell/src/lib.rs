//! The operator's shell: `cd <pool>` and talk to that pool's admin endpoint.
//!
//! Four layers, each usable and tested on its own:
//!
//! - [`line`](mod@line): what a typed line means at the current [`line::Location`], a pure function to a
//!   [`line::ShellLine`] (a local command such as `cd`, `ls`, `help`, `exit`, or a line for the
//!   pool).
//! - [`complete`]: tab completion, a pure function of the pool names, the current pool's
//!   declared commands and the line being edited; plus the rustyline helper that calls it.
//! - [`client`]: [`client::PoolClient`], one authenticated admin connection per pool, opened on
//!   first use, reused, replaced once if found dead; every wait has a timeout.
//! - [`session`]: [`session::Session`] performs interpreted lines with the client and writes
//!   output and errors to a [`session::Console`].
//!
//! [`run`] wires them to the terminal (rustyline) or to a script (`-e` commands or stdin) on a
//! runtime of its own, so it can be called from any plain thread.
//!
//! **Invariant:** the shell links no daemon internals and reads no files but its history; the
//! binary reads the cluster file and the credentials.

pub mod args;
pub mod client;
pub mod complete;
pub mod line;
pub mod session;
mod terminal;

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use tidepool_p2p::PoolName;
use tidepool_p2p::cluster::ClusterFile;
use tidepool_p2p::tls::Credentials;

use crate::client::PoolClient;
use crate::session::{Console, Mode, Session, Step};

/// Everything the shell needs, resolved by the caller.
#[derive(Debug, Clone)]
pub struct ShellOptions {
    /// The pools the shell can `cd` to.
    pub cluster: ClusterFile,
    /// The admin certificate, key and trust anchors every admin connection uses
    /// (`docs/security.md`).
    pub credentials: Credentials,
    /// Commands to run in order instead of reading any (`-e`); the shell then exits.
    pub commands: Vec<String>,
    /// The history file of the interactive shell, loaded at start and saved at exit.
    pub history: Option<PathBuf>,
    /// Text printed once at start (to stdout when interactive, to stderr when scripted).
    pub banner: Option<String>,
    /// A pool to `cd` to before the first command.
    pub start_in: Option<PoolName>,
}

/// What stops the shell itself (a failed command does not).
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("the shell must not be started from inside a tokio runtime; call it from a plain thread")]
    InsideRuntime,
    #[error("cannot start the shell's runtime: {0}")]
    Runtime(io::Error),
    #[error("terminal error: {0}")]
    Terminal(#[from] rustyline::error::ReadlineError),
    #[error("cannot write the output: {0}")]
    Output(io::Error),
}

/// Runs the shell until the operator leaves or the commands run out.
///
/// Interactive (rustyline) when stdin is a terminal and no `commands` are given; otherwise
/// scripted: the `commands`, or stdin one line per command, blank lines and `#` comments
/// skipped, no prompts. The exit code is 1 when a scripted command failed (a remote error, an
/// offline or unknown pool, a line sent while not in a pool), else 0.
pub fn run(opts: ShellOptions) -> Result<ExitCode, ShellError> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(ShellError::InsideRuntime);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ShellError::Runtime)?;
    let mode = if opts.commands.is_empty() && io::stdin().is_terminal() { Mode::Interactive } else { Mode::Scripted };
    let mut session = Session::new(PoolClient::new(opts.cluster, opts.credentials), mode);
    let mut console = Console::std();
    if let Some(banner) = &opts.banner {
        show_banner(banner, mode, &mut console).map_err(ShellError::Output)?;
    }
    let mut all_ok = true;
    if let Some(pool) = &opts.start_in {
        let cd = format!("cd {pool}");
        let step = rt.block_on(session.execute(&cd, &mut console));
        all_ok = step.map_err(ShellError::Output)? != Step::Failed;
    }
    if mode == Mode::Interactive {
        terminal::interactive(&rt, &mut session, opts.history.as_deref(), &mut console)?;
        return Ok(ExitCode::SUCCESS);
    }
    let lines: Box<dyn Iterator<Item = io::Result<String>>> = if opts.commands.is_empty() {
        Box::new(io::stdin().lines())
    } else {
        Box::new(opts.commands.into_iter().map(Ok))
    };
    all_ok &= terminal::scripted(&rt, &mut session, lines, &mut console)?;
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The banner goes to stdout for an operator, to stderr for a script (keeping stdout to the
/// commands' output).
fn show_banner(banner: &str, mode: Mode, console: &mut Console) -> io::Result<()> {
    let banner = banner.trim_end();
    match mode {
        Mode::Interactive => writeln!(console.out, "{banner}"),
        Mode::Scripted => writeln!(console.err, "{banner}"),
    }
}
