//! `unit`: start, stop, restart, reload, enable or disable a systemd unit.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{StepArgs, StepFields, WireAction, minutes};
use crate::policy::{Policy, Refusal};
use crate::v1;

/// A systemd unit operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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
    const ALL: [UnitOp; 6] = [
        UnitOp::Start,
        UnitOp::Stop,
        UnitOp::Restart,
        UnitOp::Reload,
        UnitOp::Enable,
        UnitOp::Disable,
    ];

    /// The word campaign files and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitOp::Start => "start",
            UnitOp::Stop => "stop",
            UnitOp::Restart => "restart",
            UnitOp::Reload => "reload",
            UnitOp::Enable => "enable",
            UnitOp::Disable => "disable",
        }
    }

    /// Parses the campaign-file spelling.
    pub fn parse(text: &str) -> Option<UnitOp> {
        UnitOp::ALL.into_iter().find(|op| op.as_str() == text)
    }

    fn to_wire(self) -> v1::UnitOperation {
        match self {
            UnitOp::Start => v1::UnitOperation::Start,
            UnitOp::Stop => v1::UnitOperation::Stop,
            UnitOp::Restart => v1::UnitOperation::Restart,
            UnitOp::Reload => v1::UnitOperation::Reload,
            UnitOp::Enable => v1::UnitOperation::Enable,
            UnitOp::Disable => v1::UnitOperation::Disable,
        }
    }

    fn from_wire(op: i32) -> Option<UnitOp> {
        UnitOp::ALL
            .into_iter()
            .find(|candidate| candidate.to_wire() as i32 == op)
    }
}

/// The arguments of a `unit` step.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Unit {
    pub unit: String,
    pub operation: UnitOp,
}

impl StepArgs for Unit {
    type Wire = v1::UnitAction;
    const FIELDS: &'static [&'static str] = &["unit", "operation"];

    fn from_fields<F: StepFields>(f: &F) -> Result<Self, F::Error> {
        let unit = f.required("unit")?;
        let operation = f.required("operation")?;
        let operation = UnitOp::parse(&operation).ok_or_else(|| {
            f.invalid(
                "operation",
                format!(
                    "unknown operation {operation:?}; use start, stop, restart, reload, enable or disable"
                ),
            )
        })?;
        Ok(Unit { unit, operation })
    }

    fn to_wire(&self) -> v1::UnitAction {
        v1::UnitAction {
            unit: self.unit.clone(),
            operation: self.operation.to_wire() as i32,
            // A unit a campaign stops stays down until the host's run starts it again or the
            // host leaves maintenance (the agent's hold; see ARCHITECTURE.md).
            hold: self.operation == UnitOp::Stop,
        }
    }

    fn strings_mut(&mut self) -> Vec<&mut String> {
        vec![&mut self.unit]
    }
}

impl WireAction for v1::UnitAction {
    const NAME: &'static str = "unit";
    const READ_ONLY: bool = false;

    /// A stop waits for the service's own shutdown, which drains may make long.
    fn default_timeout(&self) -> Duration {
        minutes(10)
    }

    fn describe(&self) -> String {
        let operation = UnitOp::from_wire(self.operation).map_or("(no operation)", UnitOp::as_str);
        let hold = if self.hold { " (and hold it down)" } else { "" };
        format!("unit {operation} {}{hold}", self.unit)
    }

    fn check(&self, policy: &Policy) -> Result<(), Refusal> {
        policy.unit_allowed(&self.unit)
    }
}

/// `pitcrew do HOST unit OPERATION UNIT`.
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct Cli {
    #[arg(value_enum)]
    operation: UnitOp,
    unit: String,
    /// With stop: hold the unit down afterwards (no start at boot, by Restart= or by hand)
    /// until a start or restart of it, or `release-holds`.
    #[arg(long)]
    hold: bool,
}

#[cfg(feature = "cli")]
impl From<Cli> for v1::UnitAction {
    fn from(cli: Cli) -> Self {
        v1::UnitAction {
            unit: cli.unit,
            operation: cli.operation.to_wire() as i32,
            hold: cli.hold,
        }
    }
}
