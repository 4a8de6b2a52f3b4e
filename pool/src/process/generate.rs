//! `tidepool generate`: man pages and shell completion scripts, written from the clap
//! definitions of `tidepool` ([`crate::process::args::command`]) and `tidepool-admin`
//! ([`tidepool_admin::args::command`]), so they never disagree with the programs. The Debian
//! package takes them from `target/release/generated/` (docs/operator-guide.md, "Packaging").

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// The shells `tidepool generate all` writes completions for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Both programs' clap definitions.
fn programs() -> [clap::Command; 2] {
    [crate::process::args::command(), tidepool_admin::args::command()]
}

/// Writes a man page (section 1) for each program and each of its subcommands into `out`
/// (`tidepool.1`, `tidepool-pool.1`, ..., `tidepool-admin.1`); returns the files, sorted.
pub fn man_pages(out: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(out)?;
    for cmd in programs() {
        clap_mangen::generate_to(cmd, out)?;
    }
    let mut pages = Vec::new();
    for entry in fs::read_dir(out)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "1") {
            pages.push(path);
        }
    }
    pages.sort();
    Ok(pages)
}

/// The file name a shell's completion directory expects for program `bin`: `bin` for bash
/// (bash-completion loads it on first use of `bin`), `_bin` for zsh, `bin.fish` for fish.
pub fn completion_file_name(shell: Shell, bin: &str) -> String {
    match shell {
        Shell::Bash => bin.to_string(),
        Shell::Zsh => format!("_{bin}"),
        Shell::Fish => format!("{bin}.fish"),
        Shell::PowerShell => format!("_{bin}.ps1"),
        Shell::Elvish => format!("{bin}.elv"),
        // `Shell` is non-exhaustive.
        _ => format!("{bin}.{shell}"),
    }
}

/// Writes the completion scripts of both programs for `shell` into `out`; returns the files.
pub fn completions(shell: Shell, out: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(out)?;
    let mut written = Vec::new();
    for mut cmd in programs() {
        let bin = cmd.get_name().to_string();
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, &bin, &mut script);
        let path = out.join(completion_file_name(shell, &bin));
        fs::write(&path, script)?;
        written.push(path);
    }
    Ok(written)
}

/// Everything the package installs: `out/man/` and `out/completions/<shell>/` for bash, zsh
/// and fish.
pub fn all(out: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = man_pages(&out.join("man"))?;
    for shell in SHELLS {
        written.extend(completions(shell, &out.join("completions").join(shell.to_string()))?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pages_and_scripts_that_name_the_subcommands() {
        let dir = tempfile::tempdir().unwrap();
        let written = all(dir.path()).unwrap();
        let read = |rel: &str| fs::read_to_string(dir.path().join(rel)).unwrap();
        for page in ["tidepool.1", "tidepool-pool.1", "tidepool-init.1", "tidepool-admin.1"] {
            assert!(written.contains(&dir.path().join("man").join(page)), "{page} in {written:?}");
        }
        let top = read("man/tidepool.1");
        for sub in ["pool", "init", "ca", "put", "get", "demo", "generate"] {
            assert!(top.contains(sub), "tidepool.1 names {sub}");
        }
        assert!(read("man/tidepool-pool.1").contains("check"));
        assert!(read("man/tidepool-admin.1").contains("cluster"));
        let bash = read("completions/bash/tidepool");
        for sub in ["pool", "init", "ca", "demo", "generate", "--check"] {
            assert!(bash.contains(sub), "bash completion names {sub}");
        }
        assert!(read("completions/bash/tidepool-admin").contains("--cluster"));
        assert!(read("completions/zsh/_tidepool").starts_with("#compdef tidepool"));
        assert!(read("completions/zsh/_tidepool-admin").contains("--cluster"));
        assert!(read("completions/fish/tidepool.fish").contains("init"));
        assert!(read("completions/fish/tidepool-admin.fish").contains("cluster"));
    }
}
