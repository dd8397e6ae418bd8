//! `pitcrew-agent`: enroll this host, then hold the session to the coordinator and do the
//! maintenance work its local policy allows.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use pitcrew_agent::actions::Executor;
use pitcrew_agent::config::AgentConfig;
use pitcrew_agent::{enroll, facts, session};

#[derive(Parser)]
#[command(name = "pitcrew-agent", version, about = "The pitcrew host agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (enrolls first with `join_token` from the config if not enrolled yet).
    Run {
        #[arg(
            long,
            env = "PITCREW_AGENT_CONFIG",
            default_value = "/etc/pitcrew/agent.toml"
        )]
        config: PathBuf,
    },
    /// Enroll this host with a join token and exit.
    Enroll {
        #[arg(
            long,
            env = "PITCREW_AGENT_CONFIG",
            default_value = "/etc/pitcrew/agent.toml"
        )]
        config: PathBuf,
        /// The join token (`pitcrew token create`). Prefer the environment over the command line.
        #[arg(long, env = "PITCREW_JOIN_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Print this host's facts as JSON.
    Facts {
        #[arg(
            long,
            env = "PITCREW_AGENT_CONFIG",
            default_value = "/etc/pitcrew/agent.toml"
        )]
        config: PathBuf,
    },
    /// Write the manual pages (pitcrew-agent.1 and one per command) into a directory; the packages
    /// ship them.
    #[command(hide = true)]
    Man {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    pitcrew_proto::tls::install_crypto_provider();
    pitcrew_proto::logging::init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pitcrew-agent: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pitcrew-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Enroll { config, token } => {
            let config = AgentConfig::load(&config)?;
            let identity = enroll::enroll(&config, &token).await?;
            println!("enrolled as host {} ({})", identity.host_id, identity.role);
            Ok(())
        }
        Command::Facts { config } => {
            let config = AgentConfig::load(&config)?;
            let host_id =
                facts::read_machine_id(&config.host.machine_id_file).map_err(anyhow::Error::msg)?;
            let identity = enroll::load_identity(&config.state_dir).ok();
            let (role, labels) = identity
                .map(|i| (i.role, i.labels.into_iter().collect()))
                .unwrap_or_default();
            let facts = facts::collect(&config, &host_id, &role, &labels);
            println!("{}", serde_json::to_string_pretty(&facts)?);
            Ok(())
        }
        Command::Man { dir } => std::fs::create_dir_all(&dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
            .with_context(|| format!("writing manual pages into {}", dir.display())),
        Command::Run { config } => run_agent(AgentConfig::load(&config)?).await,
    }
}

async fn run_agent(config: AgentConfig) -> anyhow::Result<()> {
    if config.coordinators.is_empty() {
        anyhow::bail!(
            "no coordinator address is configured (set `coordinators` in the agent config or a drop-in)"
        );
    }
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let _ = shutdown_tx.send(true);
    });
    let mut backoff = session::Backoff::default();
    while !enroll::is_enrolled(&config.state_dir) {
        let Some(token) = config.join_token.clone() else {
            anyhow::bail!(
                "this host is not enrolled and no join_token is configured: run `pitcrew-agent enroll --token ...` or add join_token to a drop-in"
            );
        };
        match enroll::enroll(&config, &token).await {
            Ok(identity) => {
                tracing::info!(message = "enrolled", host_id = %identity.host_id, role = %identity.role)
            }
            Err(error) if error.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(message = "enrollment failed; retrying", %error, delay_ms = delay.as_millis() as u64);
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                let mut shutdown = shutdown_rx.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
            Err(error) => return Err(error).context("enrollment failed"),
        }
    }
    // A renewal cut short by a crash is finished or undone before the credentials are read.
    if let Some(what) =
        enroll::recover_renewal(&config.state_dir).context("recovering a renewal")?
    {
        tracing::warn!(message = "certificate renewal recovered", what);
    }
    let identity = enroll::load_identity(&config.state_dir).map_err(anyhow::Error::msg)?;
    let machine_id =
        facts::read_machine_id(&config.host.machine_id_file).map_err(anyhow::Error::msg)?;
    if machine_id != identity.host_id {
        anyhow::bail!(
            "the machine id ({machine_id}) differs from the enrolled host id ({}); this state dir belongs to another host: re-enroll with a new token",
            identity.host_id
        );
    }
    let executor = Executor::open(&config).map_err(anyhow::Error::msg)?;
    tracing::info!(message = "pitcrew agent starting", host_id = %identity.host_id, role = %identity.role, version = pitcrew_proto::VERSION);
    session::run(
        session::SessionCtx::for_agent(config, identity, executor),
        shutdown_rx,
    )
    .await;
    tracing::info!(message = "pitcrew agent stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
