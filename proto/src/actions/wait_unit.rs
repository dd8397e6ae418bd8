//! `wait_unit`: wait until a unit is active, inactive or failed. It only looks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{StepArgs, StepFields, WireAction, minutes};
use crate::policy::{Policy, Refusal, validate_unit_name};
use crate::v1;

/// The unit states `wait_unit` can wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum WaitState {
    Active,
    Inactive,
    Failed,
}

impl WaitState {
    const ALL: [WaitState; 3] = [WaitState::Active, WaitState::Inactive, WaitState::Failed];

    /// The word campaign files and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitState::Active => "active",
            WaitState::Inactive => "inactive",
            WaitState::Failed => "failed",
        }
    }

    /// Parses the campaign-file spelling.
    pub fn parse(text: &str) -> Option<WaitState> {
        WaitState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    fn to_wire(self) -> v1::UnitState {
        match self {
            WaitState::Active => v1::UnitState::Active,
            WaitState::Inactive => v1::UnitState::Inactive,
            WaitState::Failed => v1::UnitState::Failed,
        }
    }
}

/// The arguments of a `wait_unit` step.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WaitUnit {
    pub unit: String,
    pub state: WaitState,
}

impl StepArgs for WaitUnit {
    type Wire = v1::WaitUnit;
    const FIELDS: &'static [&'static str] = &["unit", "state"];

    fn from_fields<F: StepFields>(f: &F) -> Result<Self, F::Error> {
        Ok(WaitUnit {
            unit: f.required("unit")?,
            state: f
                .choice("state", WaitState::parse, "active, inactive or failed")?
                .unwrap_or(WaitState::Active),
        })
    }

    fn to_wire(&self) -> v1::WaitUnit {
        v1::WaitUnit {
            unit: self.unit.clone(),
            state: self.state.to_wire() as i32,
        }
    }

    fn strings_mut(&mut self) -> Vec<&mut String> {
        vec![&mut self.unit]
    }
}

impl WireAction for v1::WaitUnit {
    const NAME: &'static str = "wait_unit";
    const READ_ONLY: bool = true;

    fn default_timeout(&self) -> Duration {
        minutes(10)
    }

    fn describe(&self) -> String {
        let state = WaitState::ALL
            .into_iter()
            .find(|s| s.to_wire() as i32 == self.state)
            .map_or("(no state)", WaitState::as_str);
        format!("wait_unit {} until {state}", self.unit)
    }

    /// Waiting reads state only, but the name must still be a real unit name.
    fn check(&self, _: &Policy) -> Result<(), Refusal> {
        validate_unit_name(&self.unit)
    }
}

/// `pitcrew do HOST wait-unit UNIT STATE`.
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct Cli {
    unit: String,
    #[arg(value_enum)]
    state: WaitState,
}

#[cfg(feature = "cli")]
impl From<Cli> for v1::WaitUnit {
    fn from(cli: Cli) -> Self {
        v1::WaitUnit {
            unit: cli.unit,
            state: cli.state.to_wire() as i32,
        }
    }
}
