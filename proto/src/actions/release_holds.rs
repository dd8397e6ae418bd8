//! `release_holds`: lift pitcrew's holds of units (see `unit stop` with a hold); the units are
//! not started. The engine sends it when nothing holds a host any more; operators with
//! `pitcrew do HOST release-holds`. Campaign steps do not run it.

use std::time::Duration;

use super::{WireAction, minutes};
use crate::policy::{Policy, Refusal, validate_unit_name};
use crate::v1;

impl WireAction for v1::ReleaseHolds {
    const NAME: &'static str = "release_holds";
    /// Lifting holds starts nothing: it is how a host leaves maintenance cleanly.
    const READ_ONLY: bool = true;

    fn default_timeout(&self) -> Duration {
        minutes(2)
    }

    fn describe(&self) -> String {
        let units: Vec<&str> = self.holds.iter().map(|h| h.unit.as_str()).collect();
        format!("release_holds {}", units.join(" "))
    }

    /// Lifting pitcrew's own holds only gives a unit back its usual behaviour; the names must
    /// still be real unit names (they name drop-in directories).
    fn check(&self, _: &Policy) -> Result<(), Refusal> {
        self.holds
            .iter()
            .try_for_each(|h| validate_unit_name(&h.unit))
    }
}

/// `pitcrew do HOST release-holds UNIT...`.
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct Cli {
    #[arg(required = true)]
    units: Vec<String>,
}

#[cfg(feature = "cli")]
impl From<Cli> for v1::ReleaseHolds {
    fn from(cli: Cli) -> Self {
        v1::ReleaseHolds {
            // No hold id: whatever hold each unit has.
            holds: cli
                .units
                .into_iter()
                .map(|unit| v1::HeldUnit {
                    unit,
                    hold_id: String::new(),
                })
                .collect(),
        }
    }
}
