//! `pitcrew-coordinator`: create a fleet (`init`) and run the coordinator (`serve`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pitcrew_coordinator::config::DataDir;
use pitcrew_coordinator::server::{self, Coordinator};

/// Threads for blocking work (store reads, planning) beside the async workers.
const BLOCKING_THREADS: usize = 8;

#[derive(Parser)]
#[command(
    name = "pitcrew-coordinator",
    version,
    about = "The pitcrew coordinator: CA, store, scheduler and gRPC server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new fleet: CA, server certificate, first operator (an admin) and config.
    Init {
        #[arg(
            long,
            env = "PITCREW_DATA_DIR",
            default_value = "/var/lib/pitcrew-coordinator"
        )]
        data_dir: PathBuf,
        /// An address or DNS name agents and operators use to reach this coordinator (repeat).
        #[arg(long = "san", required = true)]
        sans: Vec<String>,
        /// Name of the first operator (role admin).
        #[arg(long, default_value = "admin")]
        operator: String,
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: String,
        /// Create the fleet's store in this PostgreSQL database (an empty one) instead of the
        /// data dir's SQLite file: postgres://USER@HOST[:PORT]/DATABASE, no password in it.
        #[arg(long, env = "PITCREW_PG_URL", hide_env_values = true)]
        postgres_url: Option<String>,
        /// A file whose first line is the PostgreSQL password (recorded in coordinator.toml);
        /// or set PITCREW_PG_PASSWORD.
        #[arg(long, requires = "postgres_url")]
        pg_password_file: Option<PathBuf>,
    },
    /// Serve enrollment, agent sessions and the Admin API until SIGTERM or SIGINT.
    Serve {
        #[arg(
            long,
            env = "PITCREW_DATA_DIR",
            default_value = "/var/lib/pitcrew-coordinator"
        )]
        data_dir: PathBuf,
        /// Overrides `listen` from coordinator.toml.
        #[arg(long)]
        listen: Option<String>,
        /// Overrides `[store] postgres_url` from coordinator.toml (the password comes from
        /// `[store] password_file` or PITCREW_PG_PASSWORD).
        #[arg(long, env = "PITCREW_PG_URL", hide_env_values = true)]
        postgres_url: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    pitcrew_proto::tls::install_crypto_provider();
    pitcrew_proto::logging::init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pitcrew-coordinator: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            data_dir,
            sans,
            operator,
            listen,
            postgres_url,
            pg_password_file,
        } => {
            let store = pitcrew_coordinator::config::StoreConfig {
                postgres_url,
                password_file: pg_password_file.map(|f| std::path::absolute(&f).unwrap_or(f)),
            };
            let made =
                pitcrew_coordinator::init::init_fleet(&data_dir, &sans, &operator, &listen, store)?;
            println!("Created a new pitcrew fleet in {}.", data_dir.display());
            println!("Agents pin the fleet CA with this line in their config:");
            println!("ca_fingerprint = \"sha256:{}\"", made.ca_fingerprint);
            println!(
                "Operator certificate: {} (key {}), role admin, valid until {}",
                made.operator_cert.display(),
                made.operator_key.display(),
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_millis(
                            u64::try_from(made.operator_not_after_ms).unwrap_or_default()
                        )
                )
            );
            println!(
                "Renew it before then with `pitcrew operator renew`; add other operators with `pitcrew operator add NAME --role viewer|operator|admin`."
            );
            println!("CA certificate:       {}", made.ca_cert.display());
            Ok(())
        }
        Command::Serve {
            data_dir,
            listen,
            postgres_url,
        } => {
            // Blocking work is store reads on one connection and planning: a few threads are
            // plenty, and every extra one costs memory (its stack and allocator arena).
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(BLOCKING_THREADS)
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(serve(data_dir, listen, postgres_url))
        }
    }
}

async fn serve(
    data_dir: PathBuf,
    listen: Option<String>,
    postgres_url: Option<String>,
) -> anyhow::Result<()> {
    let dir = DataDir::new(&data_dir);
    let (coordinator, engine) = Coordinator::open(&dir, postgres_url).await?;
    let address = listen.unwrap_or_else(|| coordinator.config.listen.clone());
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    tracing::info!(message = "pitcrew coordinator serving", address = %listener.local_addr()?, data_dir = %data_dir.display());
    // Ready only now: the campaigns are loaded and the engine runs.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tokio::select! {
        served = server::serve(coordinator, &dir, listener, shutdown_signal()) => served?,
        // The engine owns every campaign: a coordinator without it must not go on serving.
        ended = engine => {
            match ended {
                Ok(Ok(())) => anyhow::bail!("the campaign engine stopped"),
                Ok(Err(error)) => anyhow::bail!("the campaign engine stopped: {error}"),
                Err(error) => anyhow::bail!("the campaign engine failed: {error}"),
            }
        }
    }
    tracing::info!(message = "pitcrew coordinator stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(message = "cannot watch SIGTERM", %error);
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!(message = "shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}
