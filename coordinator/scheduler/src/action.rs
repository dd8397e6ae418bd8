//! The agent actions a campaign step can ask for, in a form that is stored as JSON with the
//! run (the generated protobuf types only serialise one way) and converted to
//! [`pitcrew_proto::v1::Action`] when sent.

use std::collections::BTreeMap;
use std::fmt;

use pitcrew_proto::v1::{self, action::Kind, health::Check};
use serde::{Deserialize, Serialize};

use crate::template::{self, TemplateError, Vars};

/// systemd unit operations (`unit` action).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitOp {
    Start,
    Stop,
    Restart,
    Reload,
    Enable,
    Disable,
}

impl UnitOp {
    /// Parses the campaign-file spelling.
    pub fn parse(text: &str) -> Option<UnitOp> {
        Some(match text {
            "start" => UnitOp::Start,
            "stop" => UnitOp::Stop,
            "restart" => UnitOp::Restart,
            "reload" => UnitOp::Reload,
            "enable" => UnitOp::Enable,
            "disable" => UnitOp::Disable,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            UnitOp::Start => "start",
            UnitOp::Stop => "stop",
            UnitOp::Restart => "restart",
            UnitOp::Reload => "reload",
            UnitOp::Enable => "enable",
            UnitOp::Disable => "disable",
        }
    }
}

/// Which processes of a unit a signal goes to (`systemctl kill --kill-whom`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalWhom {
    Main,
    All,
}

/// What `signal_unit` waits for once the signal is sent, so that a drain is recorded only after
/// it has happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalWait {
    /// Succeed once the signal is sent.
    #[default]
    None,
    /// Until the main process that was signalled has exited.
    Exit,
    /// Until the unit has left `active`.
    Inactive,
}

impl SignalWait {
    /// Parses the campaign-file spelling.
    pub fn parse(text: &str) -> Option<SignalWait> {
        Some(match text {
            "none" => SignalWait::None,
            "exit" => SignalWait::Exit,
            "inactive" => SignalWait::Inactive,
            _ => return None,
        })
    }
}

/// Unit states `wait_unit` can wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WaitState {
    Active,
    Inactive,
    Failed,
}

impl WaitState {
    /// Parses the campaign-file spelling.
    pub fn parse(text: &str) -> Option<WaitState> {
        Some(match text {
            "active" => WaitState::Active,
            "inactive" => WaitState::Inactive,
            "failed" => WaitState::Failed,
            _ => return None,
        })
    }
}

/// The one check a `health` action makes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheck {
    UnitActive(String),
    Tcp { host: String, port: u16 },
    Http { url: String, expect_status: u16 },
    Command(Vec<String>),
}

/// One agent action from the catalogue, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum StepAction {
    Unit {
        unit: String,
        operation: UnitOp,
    },
    SignalUnit {
        unit: String,
        signal: String,
        target: SignalWhom,
        /// Runs recorded before waits existed read as "no wait".
        #[serde(default)]
        wait: SignalWait,
        /// The wait's deadline; 0 is the agent's default.
        #[serde(default)]
        wait_seconds: u32,
    },
    WaitUnit {
        unit: String,
        state: WaitState,
    },
    DaemonReload,
    RemovePath {
        path: String,
        recursive: bool,
    },
    DedupeShm,
    Patch {
        packages: Vec<String>,
        lock_timeout_seconds: u32,
    },
    Reboot {
        only_if_required: bool,
        poweroff: bool,
    },
    Health {
        check: HealthCheck,
    },
    Exec {
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        workdir: String,
    },
}

/// Names of the actions, as written in `action = "..."`.
pub const ACTION_NAMES: &[&str] = &[
    "unit",
    "signal_unit",
    "wait_unit",
    "daemon_reload",
    "remove_path",
    "dedupe_shm",
    "patch",
    "reboot",
    "health",
    "exec",
];

impl StepAction {
    /// The catalogue name (`action = "..."`).
    pub fn name(&self) -> &'static str {
        match self {
            StepAction::Unit { .. } => "unit",
            StepAction::SignalUnit { .. } => "signal_unit",
            StepAction::WaitUnit { .. } => "wait_unit",
            StepAction::DaemonReload => "daemon_reload",
            StepAction::RemovePath { .. } => "remove_path",
            StepAction::DedupeShm => "dedupe_shm",
            StepAction::Patch { .. } => "patch",
            StepAction::Reboot { .. } => "reboot",
            StepAction::Health { .. } => "health",
            StepAction::Exec { .. } => "exec",
        }
    }

    /// Whether completing this step means the host must come back on a new boot id.
    pub fn is_reboot(&self) -> bool {
        matches!(self, StepAction::Reboot { .. })
    }

    /// The wire form sent to the agent.
    pub fn to_proto(&self) -> v1::Action {
        let kind = match self {
            StepAction::Unit { unit, operation } => Kind::Unit(v1::UnitAction {
                unit: unit.clone(),
                operation: match operation {
                    UnitOp::Start => v1::UnitOperation::Start,
                    UnitOp::Stop => v1::UnitOperation::Stop,
                    UnitOp::Restart => v1::UnitOperation::Restart,
                    UnitOp::Reload => v1::UnitOperation::Reload,
                    UnitOp::Enable => v1::UnitOperation::Enable,
                    UnitOp::Disable => v1::UnitOperation::Disable,
                } as i32,
                // A unit a campaign stops stays down until the host's run starts it again or
                // the host leaves maintenance (the agent's hold; see ARCHITECTURE.md).
                hold: *operation == UnitOp::Stop,
            }),
            StepAction::SignalUnit {
                unit,
                signal,
                target,
                wait,
                wait_seconds,
            } => Kind::SignalUnit(v1::SignalUnit {
                unit: unit.clone(),
                signal: signal.clone(),
                target: match target {
                    SignalWhom::Main => v1::SignalTarget::Main,
                    SignalWhom::All => v1::SignalTarget::All,
                } as i32,
                wait: match wait {
                    SignalWait::None => v1::SignalWait::None,
                    SignalWait::Exit => v1::SignalWait::Exit,
                    SignalWait::Inactive => v1::SignalWait::Inactive,
                } as i32,
                wait_seconds: *wait_seconds,
            }),
            StepAction::WaitUnit { unit, state } => Kind::WaitUnit(v1::WaitUnit {
                unit: unit.clone(),
                state: match state {
                    WaitState::Active => v1::UnitState::Active,
                    WaitState::Inactive => v1::UnitState::Inactive,
                    WaitState::Failed => v1::UnitState::Failed,
                } as i32,
            }),
            StepAction::DaemonReload => Kind::DaemonReload(v1::DaemonReload {}),
            StepAction::RemovePath { path, recursive } => Kind::RemovePath(v1::RemovePath {
                path: path.clone(),
                recursive: *recursive,
            }),
            StepAction::DedupeShm => Kind::DedupeShm(v1::DedupeShm {}),
            StepAction::Patch {
                packages,
                lock_timeout_seconds,
            } => Kind::Patch(v1::Patch {
                packages: packages.clone(),
                lock_timeout_seconds: *lock_timeout_seconds,
            }),
            StepAction::Reboot {
                only_if_required,
                poweroff,
            } => Kind::Reboot(v1::Reboot {
                only_if_required: *only_if_required,
                poweroff: *poweroff,
            }),
            StepAction::Health { check } => Kind::Health(v1::Health {
                check: Some(match check {
                    HealthCheck::UnitActive(unit) => Check::UnitActive(unit.clone()),
                    HealthCheck::Tcp { host, port } => Check::Tcp(v1::TcpCheck {
                        host: host.clone(),
                        port: u32::from(*port),
                    }),
                    HealthCheck::Http { url, expect_status } => Check::Http(v1::HttpCheck {
                        url: url.clone(),
                        expect_status: u32::from(*expect_status),
                    }),
                    HealthCheck::Command(argv) => {
                        Check::Command(v1::CommandCheck { argv: argv.clone() })
                    }
                }),
            }),
            StepAction::Exec { argv, env, workdir } => Kind::Exec(v1::Exec {
                argv: argv.clone(),
                env: env.clone().into_iter().collect(),
                workdir: workdir.clone(),
            }),
        };
        v1::Action { kind: Some(kind) }
    }

    /// Applies `f` to every operator-written string (the ones that may hold `{{...}}`).
    fn map_strings<E>(
        &self,
        mut f: impl FnMut(&str) -> Result<String, E>,
    ) -> Result<StepAction, E> {
        let mut all = |v: &[String]| v.iter().map(|s| f(s)).collect::<Result<Vec<_>, E>>();
        Ok(match self {
            StepAction::Unit { unit, operation } => StepAction::Unit {
                unit: all(std::slice::from_ref(unit))?.remove(0),
                operation: *operation,
            },
            StepAction::SignalUnit {
                unit,
                signal,
                target,
                wait,
                wait_seconds,
            } => StepAction::SignalUnit {
                unit: all(std::slice::from_ref(unit))?.remove(0),
                signal: signal.clone(),
                target: *target,
                wait: *wait,
                wait_seconds: *wait_seconds,
            },
            StepAction::WaitUnit { unit, state } => StepAction::WaitUnit {
                unit: all(std::slice::from_ref(unit))?.remove(0),
                state: *state,
            },
            StepAction::RemovePath { path, recursive } => StepAction::RemovePath {
                path: all(std::slice::from_ref(path))?.remove(0),
                recursive: *recursive,
            },
            StepAction::Patch {
                packages,
                lock_timeout_seconds,
            } => StepAction::Patch {
                packages: all(packages)?,
                lock_timeout_seconds: *lock_timeout_seconds,
            },
            StepAction::Health { check } => StepAction::Health {
                check: match check {
                    HealthCheck::UnitActive(u) => {
                        HealthCheck::UnitActive(all(std::slice::from_ref(u))?.remove(0))
                    }
                    HealthCheck::Tcp { host, port } => HealthCheck::Tcp {
                        host: all(std::slice::from_ref(host))?.remove(0),
                        port: *port,
                    },
                    HealthCheck::Http { url, expect_status } => HealthCheck::Http {
                        url: all(std::slice::from_ref(url))?.remove(0),
                        expect_status: *expect_status,
                    },
                    HealthCheck::Command(argv) => HealthCheck::Command(all(argv)?),
                },
            },
            StepAction::Exec { argv, env, workdir } => {
                let keys: Vec<String> = env.keys().cloned().collect();
                let values = all(&env.values().cloned().collect::<Vec<_>>())?;
                StepAction::Exec {
                    argv: all(argv)?,
                    env: keys.into_iter().zip(values).collect(),
                    workdir: all(std::slice::from_ref(workdir))?.remove(0),
                }
            }
            StepAction::DaemonReload | StepAction::DedupeShm | StepAction::Reboot { .. } => {
                self.clone()
            }
        })
    }

    /// Checks every `{{...}}` variable names something pitcrew knows.
    pub fn check_templates(&self) -> Result<(), TemplateError> {
        self.map_strings(|s| template::check(s).map(|()| String::new()))
            .map(|_| ())
    }

    /// The action with every variable replaced by its value for one host.
    pub fn render(&self, vars: &Vars<'_>) -> Result<StepAction, TemplateError> {
        self.map_strings(|s| template::render(s, vars))
    }
}

impl fmt::Display for StepAction {
    /// One line an operator reads in a plan: the action and its exact arguments.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepAction::Unit { unit, operation } => write!(f, "unit {} {unit}", operation.as_str()),
            StepAction::SignalUnit {
                unit,
                signal,
                target,
                wait,
                wait_seconds,
            } => {
                let whom = match target {
                    SignalWhom::Main => "main",
                    SignalWhom::All => "all",
                };
                write!(f, "signal_unit {signal} to {unit} ({whom})")?;
                let seconds = match wait_seconds {
                    0 => pitcrew_proto::DEFAULT_SIGNAL_WAIT_SECONDS,
                    n => *n,
                };
                match wait {
                    SignalWait::None => Ok(()),
                    SignalWait::Exit => write!(f, ", wait up to {seconds}s for it to exit"),
                    SignalWait::Inactive => {
                        write!(f, ", wait up to {seconds}s for the unit to leave active")
                    }
                }
            }
            StepAction::WaitUnit { unit, state } => {
                let state = match state {
                    WaitState::Active => "active",
                    WaitState::Inactive => "inactive",
                    WaitState::Failed => "failed",
                };
                write!(f, "wait_unit {unit} until {state}")
            }
            StepAction::DaemonReload => f.write_str("daemon_reload"),
            StepAction::RemovePath { path, recursive } => {
                write!(f, "remove_path {path}")?;
                if *recursive {
                    f.write_str(" (recursive)")?;
                }
                Ok(())
            }
            StepAction::DedupeShm => f.write_str("dedupe_shm /dev/shm"),
            StepAction::Patch { packages, .. } => {
                if packages.is_empty() {
                    f.write_str("patch (full upgrade)")
                } else {
                    write!(f, "patch {}", packages.join(" "))
                }
            }
            StepAction::Reboot {
                only_if_required,
                poweroff,
            } => {
                f.write_str(if *poweroff { "poweroff" } else { "reboot" })?;
                if *only_if_required {
                    f.write_str(" (only if required)")?;
                }
                Ok(())
            }
            StepAction::Health { check } => match check {
                HealthCheck::UnitActive(unit) => write!(f, "health: {unit} is active"),
                HealthCheck::Tcp { host, port } => write!(f, "health: tcp {host}:{port}"),
                HealthCheck::Http { url, expect_status } => {
                    write!(f, "health: http {url} answers {expect_status}")
                }
                HealthCheck::Command(argv) => write!(f, "health: {argv:?} exits 0"),
            },
            StepAction::Exec { argv, .. } => write!(f, "exec {argv:?}"),
        }
    }
}
