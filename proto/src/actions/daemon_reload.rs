//! `daemon_reload`: make systemd reread its unit files (`systemctl daemon-reload`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{StepArgs, StepFields, WireAction, minutes};
use crate::policy::{Policy, Refusal};
use crate::v1;

/// A `daemon_reload` step (no arguments).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DaemonReload {}

impl StepArgs for DaemonReload {
    type Wire = v1::DaemonReload;
    const FIELDS: &'static [&'static str] = &[];

    fn from_fields<F: StepFields>(_: &F) -> Result<Self, F::Error> {
        Ok(DaemonReload {})
    }

    fn to_wire(&self) -> v1::DaemonReload {
        v1::DaemonReload {}
    }

    fn strings_mut(&mut self) -> Vec<&mut String> {
        Vec::new()
    }
}

impl WireAction for v1::DaemonReload {
    const NAME: &'static str = "daemon_reload";
    const READ_ONLY: bool = false;

    fn default_timeout(&self) -> Duration {
        minutes(2)
    }

    fn describe(&self) -> String {
        "daemon_reload".to_owned()
    }

    /// It touches every unit, so a host must allow controlling some.
    fn check(&self, policy: &Policy) -> Result<(), Refusal> {
        if policy.units.is_empty() {
            Err(Refusal {
                rule: "policy.units".to_owned(),
                message: "daemon-reload needs policy.units to allow some unit".to_owned(),
            })
        } else {
            Ok(())
        }
    }
}

/// `pitcrew do HOST daemon-reload`.
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct Cli {}

#[cfg(feature = "cli")]
impl From<Cli> for v1::DaemonReload {
    fn from(_: Cli) -> Self {
        v1::DaemonReload {}
    }
}
