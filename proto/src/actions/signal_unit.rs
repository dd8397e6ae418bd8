//! `signal_unit`: send a signal to a unit's processes (`systemctl kill -s`), optionally waiting
//! for its effect, so that a drain is recorded only once it has happened.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{StepArgs, StepFields, WAIT_MARGIN, WireAction, minutes};
use crate::policy::{LocalPolicy, Policy, Refusal, signal_name};
use crate::v1;

/// How long `signal_unit` waits for its signal's effect when the request names no deadline.
pub const DEFAULT_WAIT_SECONDS: u32 = 60;

/// Which processes of a unit a signal goes to (`systemctl kill --kill-whom`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalWhom {
    Main,
    All,
}

/// What `signal_unit` waits for once the signal is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum SignalWait {
    /// Succeed once the signal is sent.
    #[default]
    #[cfg_attr(feature = "cli", value(skip))]
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

    fn to_wire(self) -> v1::SignalWait {
        match self {
            SignalWait::None => v1::SignalWait::None,
            SignalWait::Exit => v1::SignalWait::Exit,
            SignalWait::Inactive => v1::SignalWait::Inactive,
        }
    }
}

/// The arguments of a `signal_unit` step.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignalUnit {
    pub unit: String,
    pub signal: String,
    pub target: SignalWhom,
    /// Runs recorded before waits existed read as "no wait".
    #[serde(default)]
    pub wait: SignalWait,
    /// The wait's deadline; 0 is [`DEFAULT_WAIT_SECONDS`].
    #[serde(default)]
    pub wait_seconds: u32,
}

impl StepArgs for SignalUnit {
    type Wire = v1::SignalUnit;
    const FIELDS: &'static [&'static str] = &["unit", "signal", "target", "wait", "wait_timeout"];

    fn from_fields<F: StepFields>(f: &F) -> Result<Self, F::Error> {
        let unit = f.required("unit")?;
        let signal = f.required("signal")?;
        // The agent's own rule for names, so a file cannot carry a signal no host would send.
        signal_name(&signal).map_err(|_| {
            f.invalid(
                "signal",
                format!("{signal:?} is not a signal name like \"SIGUSR1\""),
            )
        })?;
        let target = f
            .choice(
                "target",
                |t| match t {
                    "main" => Some(SignalWhom::Main),
                    "all" => Some(SignalWhom::All),
                    _ => None,
                },
                "\"main\" or \"all\"",
            )?
            .unwrap_or(SignalWhom::Main);
        let wait = f
            .choice(
                "wait",
                SignalWait::parse,
                "\"exit\" (the signalled main process has exited), \"inactive\" (the unit left active) or \"none\"",
            )?
            .unwrap_or_default();
        let wait_seconds = match f.seconds("wait_timeout")? {
            None => 0,
            Some(_) if wait == SignalWait::None => {
                return Err(f.invalid(
                    "wait_timeout",
                    "is only used with wait = \"exit\" or \"inactive\"".to_owned(),
                ));
            }
            Some(0) => return Err(f.invalid("wait_timeout", "must be at least 1s".to_owned())),
            Some(seconds) => seconds,
        };
        Ok(SignalUnit {
            unit,
            signal,
            target,
            wait,
            wait_seconds,
        })
    }

    fn to_wire(&self) -> v1::SignalUnit {
        v1::SignalUnit {
            unit: self.unit.clone(),
            signal: self.signal.clone(),
            target: match self.target {
                SignalWhom::Main => v1::SignalTarget::Main,
                SignalWhom::All => v1::SignalTarget::All,
            } as i32,
            wait: self.wait.to_wire() as i32,
            wait_seconds: self.wait_seconds,
        }
    }

    fn strings_mut(&mut self) -> Vec<&mut String> {
        vec![&mut self.unit]
    }

    fn own_wait(&self) -> Option<Duration> {
        let wire = self.to_wire();
        wire.waits().then(|| wire.wait_deadline())
    }
}

impl v1::SignalUnit {
    /// Whether the action waits for the signal's effect.
    pub fn waits(&self) -> bool {
        self.wait != v1::SignalWait::None as i32
    }

    /// How long to wait for the signal's effect (when `wait` asks for one).
    pub fn wait_deadline(&self) -> Duration {
        let seconds = match self.wait_seconds {
            0 => DEFAULT_WAIT_SECONDS,
            n => n,
        };
        Duration::from_secs(u64::from(seconds))
    }
}

impl WireAction for v1::SignalUnit {
    const NAME: &'static str = "signal_unit";
    const READ_ONLY: bool = false;

    /// A signal's own wait ends first, so that running out is reported with what it saw.
    fn default_timeout(&self) -> Duration {
        let base = minutes(2);
        if self.waits() {
            base.max(self.wait_deadline() + WAIT_MARGIN)
        } else {
            base
        }
    }

    fn describe(&self) -> String {
        let target = if self.target == v1::SignalTarget::All as i32 {
            "all processes"
        } else {
            "main process"
        };
        let seconds = self.wait_deadline().as_secs();
        let wait = match v1::SignalWait::try_from(self.wait).unwrap_or(v1::SignalWait::None) {
            v1::SignalWait::None => String::new(),
            v1::SignalWait::Exit => format!(", then wait up to {seconds} s for it to exit"),
            v1::SignalWait::Inactive => {
                format!(", then wait up to {seconds} s for the unit to leave active")
            }
        };
        format!(
            "signal_unit {} to {target} of {}{wait}",
            self.signal, self.unit
        )
    }

    fn check(&self, policy: &Policy) -> Result<(), Refusal> {
        policy.unit_allowed(&self.unit)
    }

    fn check_local(&self, policy: &LocalPolicy) -> Result<(), Refusal> {
        self.check(&policy.rules())?;
        policy.signal_allowed(&self.signal).map(|_| ())
    }
}

/// `pitcrew do HOST signal-unit UNIT SIGNAL`.
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct Cli {
    unit: String,
    /// e.g. SIGUSR1
    signal: String,
    /// Signal every process of the unit, not only the main one.
    #[arg(long)]
    all: bool,
    /// Then wait until the signalled main process has exited (`exit`) or the unit has left
    /// active (`inactive`), failing with what was seen if not within --wait-timeout.
    #[arg(long, value_enum)]
    wait: Option<SignalWait>,
    /// How long --wait waits (default 60s).
    #[arg(long, value_parser = humantime::parse_duration, requires = "wait")]
    wait_timeout: Option<Duration>,
}

#[cfg(feature = "cli")]
impl From<Cli> for v1::SignalUnit {
    fn from(cli: Cli) -> Self {
        v1::SignalUnit {
            unit: cli.unit,
            signal: cli.signal,
            target: if cli.all {
                v1::SignalTarget::All
            } else {
                v1::SignalTarget::Main
            } as i32,
            wait: cli.wait.unwrap_or_default().to_wire() as i32,
            wait_seconds: cli
                .wait_timeout
                .map_or(0, |d| u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX)),
        }
    }
}
