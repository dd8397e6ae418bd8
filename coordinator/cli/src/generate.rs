//! Shell completions and manual pages, generated from the one clap definition of the command
//! line (`Cli`), so they never disagree with `--help`. The packages ship both, made by
//! `packaging/build-packages.sh` with `pitcrew completions SHELL` and `pitcrew man --dir DIR`.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::Cli;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    // Generated into memory first: clap_complete panics when its writer fails, and stdout may
    // be a pipe whose reader has gone.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "pitcrew", &mut script);
    crate::output::print(format_args!("{}", String::from_utf8_lossy(&script)));
    Ok(())
}

/// Writes `pitcrew.1` and one page per command (`pitcrew-campaign-run.1`, ...) into `dir`.
pub fn man_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(described(Cli::command()), dir)
        .with_context(|| format!("writing manual pages into {}", dir.display()))
}

/// The command tree with a one-line description on every command: one without its own gets
/// its parent's, naming it ("Check ... (tcp)"), so that every page has a NAME line `man -k`
/// (whatis) can index.
fn described(command: clap::Command) -> clap::Command {
    let parent = command.get_about().map(|about| about.to_string());
    command.mut_subcommands(|sub| {
        let sub = match (&parent, sub.get_about()) {
            (_, Some(_)) => sub,
            (Some(parent), None) => {
                let about = format!("{} ({})", parent.trim_end_matches('.'), sub.get_name());
                sub.about(about)
            }
            (None, None) => {
                let about = sub.get_name().to_owned();
                sub.about(about)
            }
        };
        described(sub)
    })
}
