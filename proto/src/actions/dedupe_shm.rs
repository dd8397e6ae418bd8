//! `dedupe_shm`: collapse tmpfs mounts stacked on `/dev/shm` down to one (the UCP runbook's fix).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{StepArgs, StepFields, WireAction, minutes};
use crate::policy::{Policy, Refusal};
use crate::v1;

/// A `dedupe_shm` step (no arguments).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DedupeShm {}

impl StepArgs for DedupeShm {
    type Wire = v1::DedupeShm;
    const FIELDS: &'static [&'static str] = &[];

    fn from_fields<F: StepFields>(_: &F) -> Result<Self, F::Error> {
        Ok(DedupeShm {})
    }

    fn to_wire(&self) -> v1::DedupeShm {
        v1::DedupeShm {}
    }

    fn strings_mut(&mut self) -> Vec<&mut String> {
        Vec::new()
    }
}

impl WireAction for v1::DedupeShm {
    const NAME: &'static str = "dedupe_shm";
    const READ_ONLY: bool = false;

    fn default_timeout(&self) -> Duration {
        minutes(2)
    }

    fn describe(&self) -> String {
        "dedupe_shm (collapse stacked /dev/shm tmpfs mounts to one)".to_owned()
    }

    fn check(&self, policy: &Policy) -> Result<(), Refusal> {
        if policy.allow_dedupe_shm {
            Ok(())
        } else {
            Err(Refusal {
                rule: "policy.allow_dedupe_shm".to_owned(),
                message: "the /dev/shm fix is not allowed on this host".to_owned(),
            })
        }
    }
}

/// `pitcrew do HOST dedupe-shm`.
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct Cli {}

#[cfg(feature = "cli")]
impl From<Cli> for v1::DedupeShm {
    fn from(_: Cli) -> Self {
        v1::DedupeShm {}
    }
}
