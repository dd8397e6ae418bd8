//! `pitcrew do HOST ACTION ...`: one typed action on one host now, its log streamed, its result
//! printed; the exit status is non-zero unless it succeeded.

use clap::{Args, Subcommand};
use pitcrew_proto::v1::{self, action::Kind, action_event::Event, health::Check};

use super::connect::{ConnectArgs, admin, status};
use super::output::{self, Format};

#[derive(Args)]
pub struct DoArgs {
    /// Host id or hostname.
    pub host: String,
    /// Give up on the action after this long (default: the action's own).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Action id; repeating an id returns the first run's result instead of running again.
    #[arg(long)]
    pub id: Option<String>,
    /// Run a disruptive action even on a host a campaign holds, or on a manager while another
    /// host holds its cluster's manager slot; the coordinator audits what it overrode. (Better:
    /// hold the host first with `pitcrew maintenance enable`.)
    #[arg(long)]
    pub force: bool,
    #[command(subcommand)]
    pub action: ActionArg,
}

#[derive(Subcommand)]
pub enum ActionArg {
    /// Start, stop, restart, reload, enable or disable a systemd unit.
    Unit {
        #[arg(value_parser = ["start", "stop", "restart", "reload", "enable", "disable"])]
        operation: String,
        unit: String,
        /// With stop: hold the unit down afterwards (no start at boot, by Restart= or by hand)
        /// until a start or restart of it, or `release-holds`.
        #[arg(long)]
        hold: bool,
    },
    /// Lift pitcrew's holds of units (see `unit stop --hold`); the units are not started.
    ReleaseHolds {
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Send a signal to a unit's processes, like `systemctl kill -s`.
    SignalUnit {
        unit: String,
        /// e.g. SIGUSR1
        signal: String,
        /// Signal every process of the unit, not only the main one.
        #[arg(long)]
        all: bool,
        /// Then wait until the signalled main process has exited (`exit`) or the unit has
        /// left active (`inactive`), failing with what was seen if not within --wait-timeout.
        #[arg(long, value_parser = ["exit", "inactive"])]
        wait: Option<String>,
        /// How long --wait waits (default 60s).
        #[arg(long, value_parser = humantime::parse_duration, requires = "wait")]
        wait_timeout: Option<std::time::Duration>,
    },
    /// Wait until a unit is active, inactive or failed.
    WaitUnit {
        unit: String,
        #[arg(value_parser = ["active", "inactive", "failed"])]
        state: String,
    },
    /// Reload systemd's unit files.
    DaemonReload,
    /// Remove a file or directory under a root the host's policy allows.
    RemovePath {
        path: String,
        #[arg(long)]
        recursive: bool,
    },
    /// Collapse tmpfs mounts stacked on /dev/shm down to one.
    DedupeShm,
    /// Upgrade packages (all when none are named).
    Patch {
        packages: Vec<String>,
        /// Seconds to wait for a package manager lock held by someone else.
        #[arg(long, default_value_t = 120)]
        lock_timeout: u32,
    },
    /// Reboot (or power off) the host; done when it is back with a new boot id.
    Reboot {
        #[arg(long)]
        only_if_required: bool,
        #[arg(long)]
        poweroff: bool,
    },
    /// Check health: a unit is active, a TCP port accepts, a URL answers, a command exits 0.
    Health {
        #[command(subcommand)]
        check: HealthArg,
    },
    /// Run a program (argv, no shell) the host's policy allows.
    Exec {
        /// Environment variables as KEY=VALUE (repeat).
        #[arg(long = "env", value_parser = parse_env)]
        env: Vec<(String, String)>,
        #[arg(long, default_value = "")]
        workdir: String,
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum HealthArg {
    UnitActive {
        unit: String,
    },
    Tcp {
        host: String,
        port: u32,
    },
    Http {
        url: String,
        #[arg(long, default_value_t = 200)]
        status: u32,
    },
    Command {
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

fn unit_operation(name: &str) -> v1::UnitOperation {
    match name {
        "start" => v1::UnitOperation::Start,
        "stop" => v1::UnitOperation::Stop,
        "restart" => v1::UnitOperation::Restart,
        "reload" => v1::UnitOperation::Reload,
        "enable" => v1::UnitOperation::Enable,
        "disable" => v1::UnitOperation::Disable,
        _ => v1::UnitOperation::Unspecified,
    }
}

fn unit_state(name: &str) -> v1::UnitState {
    match name {
        "active" => v1::UnitState::Active,
        "inactive" => v1::UnitState::Inactive,
        "failed" => v1::UnitState::Failed,
        _ => v1::UnitState::Unspecified,
    }
}

/// Builds the typed action from the command line.
pub fn action(arg: ActionArg) -> v1::Action {
    let kind = match arg {
        ActionArg::Unit {
            operation,
            unit,
            hold,
        } => Kind::Unit(v1::UnitAction {
            unit,
            operation: unit_operation(&operation) as i32,
            hold,
        }),
        ActionArg::ReleaseHolds { units } => Kind::ReleaseHolds(v1::ReleaseHolds {
            // No hold id: whatever hold each unit has.
            holds: units
                .into_iter()
                .map(|unit| v1::HeldUnit {
                    unit,
                    hold_id: String::new(),
                })
                .collect(),
        }),
        ActionArg::SignalUnit {
            unit,
            signal,
            all,
            wait,
            wait_timeout,
        } => Kind::SignalUnit(v1::SignalUnit {
            unit,
            signal,
            target: if all {
                v1::SignalTarget::All
            } else {
                v1::SignalTarget::Main
            } as i32,
            wait: match wait.as_deref() {
                Some("exit") => v1::SignalWait::Exit,
                Some("inactive") => v1::SignalWait::Inactive,
                _ => v1::SignalWait::None,
            } as i32,
            wait_seconds: wait_timeout
                .map(|d| u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX))
                .unwrap_or(0),
        }),
        ActionArg::WaitUnit { unit, state } => Kind::WaitUnit(v1::WaitUnit {
            unit,
            state: unit_state(&state) as i32,
        }),
        ActionArg::DaemonReload => Kind::DaemonReload(v1::DaemonReload {}),
        ActionArg::RemovePath { path, recursive } => {
            Kind::RemovePath(v1::RemovePath { path, recursive })
        }
        ActionArg::DedupeShm => Kind::DedupeShm(v1::DedupeShm {}),
        ActionArg::Patch {
            packages,
            lock_timeout,
        } => Kind::Patch(v1::Patch {
            packages,
            lock_timeout_seconds: lock_timeout,
        }),
        ActionArg::Reboot {
            only_if_required,
            poweroff,
        } => Kind::Reboot(v1::Reboot {
            only_if_required,
            poweroff,
        }),
        ActionArg::Health { check } => Kind::Health(v1::Health {
            check: Some(match check {
                HealthArg::UnitActive { unit } => Check::UnitActive(unit),
                HealthArg::Tcp { host, port } => Check::Tcp(v1::TcpCheck { host, port }),
                HealthArg::Http { url, status } => Check::Http(v1::HttpCheck {
                    url,
                    expect_status: status,
                }),
                HealthArg::Command { argv } => Check::Command(v1::CommandCheck { argv }),
            }),
        }),
        ActionArg::Exec { env, workdir, argv } => Kind::Exec(v1::Exec {
            argv,
            env: env.into_iter().collect(),
            workdir,
        }),
    };
    v1::Action { kind: Some(kind) }
}

pub async fn run(connect: &ConnectArgs, format: Format, args: DoArgs) -> anyhow::Result<()> {
    let mut client = admin(connect).await?;
    let request = v1::RunActionRequest {
        host: args.host.clone(),
        request: Some(v1::ActionRequest {
            action_id: args.id.unwrap_or_default(),
            action: Some(action(args.action)),
            timeout_seconds: args
                .timeout
                .map(|t| t.as_secs().clamp(1, u64::from(u32::MAX)) as u32)
                .unwrap_or(0),
        }),
        force: args.force,
    };
    let mut stream = client
        .run_action(request)
        .await
        .map_err(status)?
        .into_inner();
    let mut result = None;
    let mut events = Vec::new();
    // Ctrl-C ends the command and its stream, and the coordinator then cancels the action on
    // its host. Handled here rather than left to the default disposition, which a parent may
    // have set to "ignore" (a background job of a script), leaving the action running.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut action_id = String::new();
    loop {
        let event = tokio::select! {
            event = stream.message() => event.map_err(status)?,
            _ = &mut interrupted => {
                let what = if action_id.is_empty() { "the action" } else { action_id.as_str() };
                anyhow::bail!("interrupted: the coordinator cancels {what} on {}", args.host);
            }
        };
        let Some(event) = event else {
            break;
        };
        if action_id.is_empty() {
            action_id = event.action_id.clone();
        }
        match &event.event {
            Some(Event::Log(line)) if format == Format::Table => {
                crate::say!("{}: {line}", args.host)
            }
            Some(Event::Progress(p)) if format == Format::Table => {
                if p.percent >= 0 {
                    crate::say_err!("{}: [{:>3}%] {}", args.host, p.percent, p.stage);
                } else {
                    crate::say_err!("{}: {}", args.host, p.stage);
                }
            }
            Some(Event::Result(r)) => result = Some(r.clone()),
            _ => {}
        }
        if format == Format::Json {
            events.push(event);
        }
    }
    let result = result
        .ok_or_else(|| anyhow::anyhow!("the coordinator ended the stream without a result"))?;
    if format == Format::Json {
        output::json(&result)?;
    } else {
        let word = pitcrew_proto::describe::outcome(result.outcome);
        if !result.output.is_empty() {
            crate::say_raw!("{}", result.output);
            if !result.output.ends_with('\n') {
                crate::say!();
            }
        }
        let rule = if result.refused_by.is_empty() {
            String::new()
        } else {
            format!(" [rule {}]", result.refused_by)
        };
        crate::say!(
            "{} {}: {word}: {}{rule}",
            args.host,
            result.action_id,
            result.message
        );
    }
    if result.outcome != v1::Outcome::Succeeded as i32 {
        anyhow::bail!(
            "action {} {}",
            result.action_id,
            pitcrew_proto::describe::outcome(result.outcome)
        );
    }
    Ok(())
}
