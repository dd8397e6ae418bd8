//! `pitcrew-coordinator`: create a fleet (`init`) and run the coordinator (`serve`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
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
        /// The address agents and operators reach this coordinator at
        /// (https://NAME:PORT), which standbys tell them while this one leads; overrides
        /// `[leader] advertise`. Only for coordinators sharing a PostgreSQL store.
        #[arg(long, env = "PITCREW_ADVERTISE")]
        advertise: Option<String>,
    },
    /// Write the manual pages (pitcrew-coordinator.1 and one per command) into a directory; the packages
    /// ship them.
    #[command(hide = true)]
    Man {
        #[arg(long)]
        dir: PathBuf,
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
            println!();
            println!("For `pitcrew` (here, or on a workstation with copies of these three files):");
            for line in cli_exports(&sans, &listen, &made) {
                println!("{line}");
            }
            println!(
                "With those set, `pitcrew context add NAME` keeps them as a context of the operator's client config."
            );
            Ok(())
        }
        Command::Man { dir } => std::fs::create_dir_all(&dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
            .with_context(|| format!("writing manual pages into {}", dir.display())),
        Command::Serve {
            data_dir,
            listen,
            postgres_url,
            advertise,
        } => {
            // Blocking work is store reads on one connection and planning: a few threads are
            // plenty, and every extra one costs memory (its stack and allocator arena).
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(BLOCKING_THREADS)
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(serve(data_dir, listen, postgres_url, advertise))
        }
    }
}

async fn serve(
    data_dir: PathBuf,
    listen: Option<String>,
    postgres_url: Option<String>,
    advertise: Option<String>,
) -> anyhow::Result<()> {
    let dir = DataDir::new(&data_dir);
    let (mut config, store) = Coordinator::open_store(&dir, postgres_url).await?;
    if let Some(advertise) = advertise {
        config.leader.advertise = advertise;
    }
    let address = listen.unwrap_or_else(|| config.listen.clone());
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    tracing::info!(message = "listening", address = %listener.local_addr()?, data_dir = %data_dir.display());
    let connections = server::Connections::new(server::incoming(&dir, &config.limits, listener)?);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };

    // Coordinators sharing a PostgreSQL store lead by the lease; the SQLite store is this
    // coordinator's alone.
    let (leadership, keeper) = if store.is_shared() {
        let timing = config.leader.timing().map_err(anyhow::Error::msg)?;
        let advertise = config.leader.advertise.clone();
        if advertise.is_empty() {
            tracing::warn!(
                message = "no advertised address: standbys cannot tell agents and operators where this coordinator is when it leads (set serve --advertise or [leader] advertise)"
            );
        }
        let holder = format!(
            "{} pid {} {}",
            if advertise.is_empty() {
                "?"
            } else {
                &advertise
            },
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let (leader_tx, leader_rx) =
            tokio::sync::watch::channel(pitcrew_coordinator::leader::LeaderSeen::default());
        let (promoted_tx, promoted_rx) = tokio::sync::oneshot::channel::<()>();
        let standby = tokio::spawn(pitcrew_coordinator::standby::serve(
            connections.clone(),
            config.limits.clone(),
            leader_rx,
            // By then a leader that went away has lost its lease and another took it.
            timing.length + timing.renew_every,
            async move {
                let _ = promoted_rx.await;
            },
        ));
        // A standby is up and answering: ready as far as its supervisor is concerned.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let leadership = tokio::select! {
            leadership = pitcrew_coordinator::leader::stand_by(&store, &holder, &advertise, timing, &leader_tx) => leadership,
            _ = stopped(stop.clone()) => {
                tracing::info!(message = "pitcrew coordinator stopped (standby)");
                return Ok(());
            }
        };
        // Renewing starts at once: the lease runs from now, whatever taking over costs.
        let keeper = tokio::spawn(pitcrew_coordinator::leader::keep(
            store.clone(),
            leadership.clone(),
            holder,
            timing,
        ));
        // The standby's server stops taking connections at once (the listener's next ones wait
        // for the services); calls still arriving on its open connections are told the leader
        // is here, and it ends by itself once they close. Nothing waits for that.
        leader_tx.send_replace(pitcrew_coordinator::leader::LeaderSeen {
            address: advertise.clone(),
            epoch: leadership.epoch(),
        });
        let _ = promoted_tx.send(());
        drop(standby);
        store.fence(leadership.epoch())?;
        (leadership, Some(keeper))
    } else {
        (pitcrew_coordinator::leader::Leadership::sole(), None)
    };

    let (coordinator, engine) = Coordinator::start(&dir, config, store, leadership).await?;
    let metrics_address = &coordinator.config.metrics_listen;
    if !metrics_address.is_empty() {
        let listener = tokio::net::TcpListener::bind(metrics_address)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {metrics_address} for metrics (metrics_listen in coordinator.toml; \"\" turns them off)"
                )
            })?;
        tracing::info!(message = "serving metrics", address = %listener.local_addr()?, path = "/metrics");
        tokio::spawn(pitcrew_coordinator::metrics::serve(
            listener,
            coordinator.metrics.clone(),
        ));
    }
    let dashboard_address = &coordinator.config.dashboard_listen;
    if !dashboard_address.is_empty() {
        let tls = pitcrew_coordinator::dashboard::tls_config(&dir)
            .context("building the dashboard's TLS configuration")?;
        let listener = tokio::net::TcpListener::bind(dashboard_address)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {dashboard_address} for the dashboard (dashboard_listen in coordinator.toml; \"\" turns it off)"
                )
            })?;
        tracing::info!(message = "serving the dashboard", address = %listener.local_addr()?, sign_in = "pitcrew dashboard");
        tokio::spawn(pitcrew_coordinator::dashboard::serve(
            listener,
            std::sync::Arc::new(tls),
            coordinator.clone(),
        ));
    }
    tracing::info!(message = "pitcrew coordinator serving", data_dir = %data_dir.display());
    // Ready only now: the campaigns are loaded and the engine runs.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let lost = async move {
        match keeper {
            Some(keeper) => match keeper.await {
                Ok(lost) => lost.to_string(),
                Err(error) => format!("the lease's keeper failed: {error}"),
            },
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        served = server::serve(coordinator, connections, stopped(stop)) => served?,
        // The engine owns every campaign: a coordinator without it must not go on serving.
        ended = engine => {
            match ended {
                Ok(Ok(())) => anyhow::bail!("the campaign engine stopped"),
                Ok(Err(error)) => anyhow::bail!("the campaign engine stopped: {error}"),
                Err(error) => anyhow::bail!("the campaign engine failed: {error}"),
            }
        }
        // Exiting is stepping down: the supervisor starts this coordinator again, as a standby.
        lost = lost => anyhow::bail!("stepping down: {lost}"),
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

/// The `export` lines that point `pitcrew` at a fleet `init` just made: the first `--san` at the
/// listening port, and the CA and first operator's files by absolute path.
fn cli_exports(
    sans: &[String],
    listen: &str,
    made: &pitcrew_coordinator::init::Initialized,
) -> Vec<String> {
    let port = listen
        .parse::<std::net::SocketAddr>()
        .map(|a| a.port())
        .unwrap_or(7443);
    let host = sans.first().map(String::as_str).unwrap_or("127.0.0.1");
    let host = match host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{host}]"),
        Err(_) => host.to_owned(),
    };
    let path = |p: &std::path::Path| {
        let absolute = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        shell_quote(&absolute.display().to_string())
    };
    vec![
        format!("export PITCREW_COORDINATOR=https://{host}:{port}"),
        format!("export PITCREW_CA={}", path(&made.ca_cert)),
        format!("export PITCREW_CERT={}", path(&made.operator_cert)),
        format!("export PITCREW_KEY={}", path(&made.operator_key)),
    ]
}

/// A word for a POSIX shell: as is when it holds only safe characters, else single-quoted.
fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:,@".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
