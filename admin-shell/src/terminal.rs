//! The thin outer loops that feed lines to a [`Session`]: the interactive terminal (rustyline,
//! with history and completion) and the scripted mode (commands from `-e` or stdin).

use std::io;
use std::path::Path;

use rustyline::Editor;
use rustyline::config::{CompletionType, Config};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use tokio::runtime::Runtime;

use crate::ShellError;
use crate::complete::ShellHelper;
use crate::session::{Console, Session, Step};

/// How many lines the history file keeps.
const HISTORY_SIZE: usize = 10_000;

/// Runs `lines` in order, skipping blank lines and `#` comments, without prompts. Returns
/// whether every command succeeded; a line that cannot be read counts as a failure and ends
/// the script.
pub(crate) fn scripted(
    rt: &Runtime,
    session: &mut Session,
    lines: impl Iterator<Item = io::Result<String>>,
    console: &mut Console,
) -> Result<bool, ShellError> {
    let mut all_ok = true;
    for line in lines {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                console.error(&format!("cannot read the next command: {e}")).map_err(ShellError::Output)?;
                return Ok(false);
            }
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match rt.block_on(session.execute(line, console)).map_err(ShellError::Output)? {
            Step::Done => {}
            Step::Failed => all_ok = false,
            Step::Exit => break,
        }
    }
    Ok(all_ok)
}

/// The interactive shell: prompt, history, completion. Ctrl-C abandons the line being typed;
/// Ctrl-D, `exit`, `quit` and `logoff` leave.
pub(crate) fn interactive(
    rt: &Runtime,
    session: &mut Session,
    history: Option<&Path>,
    console: &mut Console,
) -> Result<(), ShellError> {
    let mut editor = editor(session)?;
    if let Some(path) = history {
        load_history(&mut editor, path, console)?;
    }
    refresh_completion(rt, session, &mut editor, console)?;
    let result = read_eval_loop(rt, session, &mut editor, console);
    if let Some(path) = history
        && let Err(e) = editor.save_history(path)
    {
        let warning = format!("cannot save the history to {}: {e}", path.display());
        console.error(&warning).map_err(ShellError::Output)?;
    }
    result
}

fn editor(session: &mut Session) -> Result<Editor<ShellHelper, DefaultHistory>, ShellError> {
    let config = Config::builder()
        .max_history_size(HISTORY_SIZE)?
        .history_ignore_dups(true)?
        .history_ignore_space(true)
        .auto_add_history(false)
        .completion_type(CompletionType::List)
        .build();
    let mut editor = Editor::with_config(config)?;
    let cluster = session.client_mut().cluster();
    let pools = cluster.pools.iter().map(|p| p.name.clone()).collect();
    let groups = cluster.groups();
    editor.set_helper(Some(ShellHelper::new(pools, groups)));
    Ok(editor)
}

fn read_eval_loop(
    rt: &Runtime,
    session: &mut Session,
    editor: &mut Editor<ShellHelper, DefaultHistory>,
    console: &mut Console,
) -> Result<(), ShellError> {
    loop {
        let line = match editor.readline(&session.location().prompt()) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if !line.trim().is_empty() {
            editor.add_history_entry(line.as_str())?;
        }
        let before = session.location().clone();
        if rt.block_on(session.execute(&line, console)).map_err(ShellError::Output)? == Step::Exit {
            return Ok(());
        }
        if *session.location() != before {
            refresh_completion(rt, session, editor, console)?;
        }
    }
}

/// Gives completion the commands of the pool the shell is now in (asked once per pool).
fn refresh_completion(
    rt: &Runtime,
    session: &mut Session,
    editor: &mut Editor<ShellHelper, DefaultHistory>,
    console: &mut Console,
) -> Result<(), ShellError> {
    let here = session.location().pool().cloned();
    let commands = match here.clone() {
        None => None,
        Some(pool) => match rt.block_on(session.client_mut().commands(&pool)) {
            Ok(commands) => Some(commands),
            Err(e) => {
                console.error(&format!("(no completion of {pool}'s commands: {e})")).map_err(ShellError::Output)?;
                Some(Vec::new())
            }
        },
    };
    if let Some(helper) = editor.helper_mut() {
        helper.set_pool(here, commands);
    }
    Ok(())
}

fn load_history(
    editor: &mut Editor<ShellHelper, DefaultHistory>,
    path: &Path,
    console: &mut Console,
) -> Result<(), ShellError> {
    match editor.load_history(path) {
        Ok(()) => Ok(()),
        Err(ReadlineError::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            console.error(&format!("cannot load the history from {}: {e}", path.display())).map_err(ShellError::Output)
        }
    }
}
