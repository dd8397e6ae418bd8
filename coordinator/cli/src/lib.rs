//! The `pitcrew` command line: what an operator types. Each command maps to one Admin call (or
//! a stream of them) and prints a table, or JSON with `-o json` (and CSV for reports, `-o csv`).
//!
//! This crate knows only the wire (`pitcrew-proto`): it is what an operator's workstation
//! installs (the `pitcrew-cli` package), without the coordinator.
#![forbid(unsafe_code)]
// Everything printed goes through `output` (`say!`, `output::json`), which ends the process
// quietly when the reader of a pipe has gone; a stray `println!` would panic there instead.
#![deny(clippy::print_stdout)]

pub mod actions;
pub mod campaigns;
pub mod connect;
pub mod contexts;
pub mod dashboard;
pub mod generate;
pub mod hosts;
pub mod lifecycle;
pub mod notifications;
pub mod operators;
pub mod output;
pub mod report;
pub mod schedules;

use clap::{Parser, Subcommand};

use connect::{CallFailed, ConnectArgs, ConnectFlags};
use output::Format;

/// Exit status of `campaign watch` (and `run --watch`) when the campaign finished with hosts
/// released or skipped: not a success, and not an error of the tool either.
pub const EXIT_INCOMPLETE: u8 = 2;
/// Exit status when the watched campaign was cancelled.
pub const EXIT_CANCELLED: u8 = 3;
/// Exit status when the operator stopped a watch with Ctrl-C (128 + SIGINT, as shells use).
pub const EXIT_INTERRUPTED: u8 = 130;

/// An outcome that ends the command with its own exit status (scripts and CI read it).
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

#[derive(Parser)]
#[command(
    name = "pitcrew",
    version,
    about = "Operate a pitcrew fleet: hosts, tokens, actions, campaigns, maintenance, events, operators"
)]
pub struct Cli {
    #[command(flatten)]
    pub connect: ConnectFlags,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Subcommand)]
pub enum Command {
    /// List hosts, or show one with its facts.
    Hosts {
        #[command(subcommand)]
        command: Option<hosts::HostsCommand>,
    },
    /// Join tokens for enrolling agents.
    Token {
        #[command(subcommand)]
        command: hosts::TokenCommand,
    },
    /// Run one action on one host now, streaming its log and result.
    Do(actions::DoArgs),
    /// Plan, run and steer campaigns.
    Campaign {
        #[command(subcommand)]
        command: campaigns::CampaignCommand,
    },
    /// Campaigns the coordinator runs by itself: files with a `schedule` (add, ls, pause,
    /// resume, rm).
    Schedule {
        #[command(subcommand)]
        command: schedules::ScheduleCommand,
    },
    /// Put a host into maintenance by hand, or take it out.
    Maintenance {
        #[command(subcommand)]
        command: campaigns::MaintenanceCommand,
    },
    /// The event log: each host's steps and results, and the audit trail.
    Events(campaigns::EventsArgs),
    /// The webhook delivery record: each notification, its attempts and state.
    Notifications(notifications::NotificationsArgs),
    /// Operators and their roles: add, list, revoke, and renew your own certificate.
    Operator {
        #[command(subcommand)]
        command: operators::OperatorCommand,
    },
    /// Reports over the fleet: `report compliance` (`-o csv` for spreadsheets).
    Report {
        #[command(subcommand)]
        command: report::ReportCommand,
    },
    /// The client config's contexts: each fleet you operate, by name.
    Context {
        #[command(subcommand)]
        command: contexts::ContextCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// bash: `pitcrew completions bash > ~/.local/share/bash-completion/completions/pitcrew`
    /// (the packages install it for every user).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (pitcrew.1 and one per command) into a directory.
    #[command(hide = true)]
    Man {
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// A one-time link that signs your browser in to the coordinator's web dashboard.
    Dashboard,
}

/// Runs a parsed command line; the error is printed by `main`, which exits non-zero.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let format = cli.output;
    if format == Format::Csv && !matches!(cli.command, Command::Report { .. }) {
        anyhow::bail!("-o csv is for `pitcrew report`; use -o json for other commands");
    }
    match cli.command {
        Command::Completions { shell } => generate::completions(shell),
        Command::Man { dir } => generate::man_pages(&dir),
        Command::Context { command } => contexts::context(&cli.connect, format, command),
        command => {
            let connect = cli.connect.resolve()?;
            let mut tries = 0;
            loop {
                tries += 1;
                match fleet(&connect, format, command.clone()).await {
                    // A standby refused before anything was done: again, on the leader it
                    // named (or the next address while a new leader is being chosen).
                    Err(error) if tries < FOLLOW_TRIES && refused_by_standby(&error) => {
                        tokio::time::sleep(FOLLOW_PAUSE * (tries - 1)).await;
                    }
                    outcome => return outcome.map_err(|error| connect::explain(&connect, error)),
                }
            }
        }
    }
}

/// How often a command follows standbys to the leader before giving up, and how long it waits
/// more each time (an election takes about a lease: seconds).
const FOLLOW_TRIES: u32 = 6;
const FOLLOW_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

fn refused_by_standby(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<CallFailed>()
            .is_some_and(CallFailed::from_standby)
    })
}

/// Runs a command that talks to the coordinator.
async fn fleet(connect: &ConnectArgs, format: Format, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Hosts { command } => hosts::hosts(connect, format, command).await,
        Command::Token { command } => hosts::token(connect, format, command).await,
        Command::Do(args) => actions::run(connect, format, args).await,
        Command::Campaign { command } => campaigns::campaign(connect, format, command).await,
        Command::Schedule { command } => schedules::schedule(connect, format, command).await,
        Command::Maintenance { command } => campaigns::maintenance(connect, format, command).await,
        Command::Events(args) => campaigns::events(connect, format, args).await,
        Command::Notifications(args) => notifications::notifications(connect, format, args).await,
        Command::Operator { command } => operators::operator(connect, format, command).await,
        Command::Report { command } => report::report(connect, format, command).await,
        Command::Dashboard => dashboard::dashboard(connect, format).await,
        // Answered by `run` without connecting.
        Command::Context { .. } | Command::Completions { .. } | Command::Man { .. } => Ok(()),
    }
}
