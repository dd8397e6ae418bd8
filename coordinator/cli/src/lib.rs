//! The `pitcrew` command line: what an operator types. Each command maps to one Admin call (or
//! a stream of them) and prints a table, or JSON with `-o json`.
//!
//! This crate knows only the wire (`pitcrew-proto`): it is what an operator's workstation
//! installs (the `pitcrew-cli` package), without the coordinator.
#![forbid(unsafe_code)]

pub mod actions;
pub mod campaigns;
pub mod connect;
pub mod hosts;
pub mod output;

use clap::{Parser, Subcommand};

use connect::ConnectArgs;
use output::Format;

#[derive(Parser)]
#[command(
    name = "pitcrew",
    version,
    about = "Operate a pitcrew fleet: hosts, tokens, actions, campaigns, maintenance, events"
)]
pub struct Cli {
    #[command(flatten)]
    pub connect: ConnectArgs,
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

#[derive(Subcommand)]
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
    /// Put a host into maintenance by hand, or take it out.
    Maintenance {
        #[command(subcommand)]
        command: campaigns::MaintenanceCommand,
    },
    /// The event log: each host's steps and results, and the audit trail.
    Events(campaigns::EventsArgs),
}

/// Runs a parsed command line; the error is printed by `main`, which exits non-zero.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let format = cli.output;
    let connect = cli.connect;
    match cli.command {
        Command::Hosts { command } => hosts::hosts(&connect, format, command).await,
        Command::Token { command } => hosts::token(&connect, format, command).await,
        Command::Do(args) => actions::run(&connect, format, args).await,
        Command::Campaign { command } => campaigns::campaign(&connect, format, command).await,
        Command::Maintenance { command } => campaigns::maintenance(&connect, format, command).await,
        Command::Events(args) => campaigns::events(&connect, format, args).await,
    }
}
