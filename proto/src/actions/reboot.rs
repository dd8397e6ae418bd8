//! `reboot`: reboot (or power off) the host through logind; done when the host is back with a
//! new boot id.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{StepArgs, StepFields, WireAction, minutes};
use crate::policy::{Policy, Refusal};
use crate::v1;

/// The arguments of a `reboot` step.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reboot {
    pub only_if_required: bool,
    pub poweroff: bool,
}

impl StepArgs for Reboot {
    type Wire = v1::Reboot;
    const FIELDS: &'static [&'static str] = &["only_if_required", "poweroff"];

    fn from_fields<F: StepFields>(f: &F) -> Result<Self, F::Error> {
        Ok(Reboot {
            only_if_required: f.bool("only_if_required")?.unwrap_or(false),
            poweroff: f.bool("poweroff")?.unwrap_or(false),
        })
    }

    fn to_wire(&self) -> v1::Reboot {
        v1::Reboot {
            only_if_required: self.only_if_required,
            poweroff: self.poweroff,
        }
    }

    fn strings_mut(&mut self) -> Vec<&mut String> {
        Vec::new()
    }
}

impl WireAction for v1::Reboot {
    const NAME: &'static str = "reboot";
    const READ_ONLY: bool = false;

    /// From the request until the host is back: firmware, boot and services take their time.
    fn default_timeout(&self) -> Duration {
        minutes(20)
    }

    fn describe(&self) -> String {
        let verb = if self.poweroff { "poweroff" } else { "reboot" };
        if self.only_if_required {
            format!("{verb} (only if required)")
        } else {
            verb.to_owned()
        }
    }

    fn check(&self, policy: &Policy) -> Result<(), Refusal> {
        if policy.allow_reboot {
            Ok(())
        } else {
            Err(Refusal {
                rule: "policy.allow_reboot".to_owned(),
                message: "reboot and power-off are not allowed on this host".to_owned(),
            })
        }
    }
}

/// `pitcrew do HOST reboot`.
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct Cli {
    /// Only when the host says a reboot is required (e.g. /run/reboot-required).
    #[arg(long)]
    only_if_required: bool,
    /// Power the host off instead of rebooting it.
    #[arg(long)]
    poweroff: bool,
}

#[cfg(feature = "cli")]
impl From<Cli> for v1::Reboot {
    fn from(cli: Cli) -> Self {
        v1::Reboot {
            only_if_required: cli.only_if_required,
            poweroff: cli.poweroff,
        }
    }
}
