//! `patch`: upgrade packages with the host's package manager (all of them when none are named).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{StepArgs, StepFields, WireAction, minutes};
use crate::policy::{Policy, Refusal};
use crate::v1;

/// How long a patch waits for a package manager lock held by someone else (an unattended
/// upgrade, an operator's apt) when neither the step nor the request says.
pub const DEFAULT_LOCK_TIMEOUT_SECONDS: u32 = 300;

/// The arguments of a `patch` step.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Patch {
    pub packages: Vec<String>,
    pub lock_timeout_seconds: u32,
}

impl StepArgs for Patch {
    type Wire = v1::Patch;
    const FIELDS: &'static [&'static str] = &["packages", "lock_timeout"];

    fn from_fields<F: StepFields>(f: &F) -> Result<Self, F::Error> {
        Ok(Patch {
            packages: f.strings("packages")?.unwrap_or_default(),
            lock_timeout_seconds: f
                .seconds("lock_timeout")?
                .unwrap_or(DEFAULT_LOCK_TIMEOUT_SECONDS),
        })
    }

    fn to_wire(&self) -> v1::Patch {
        v1::Patch {
            packages: self.packages.clone(),
            lock_timeout_seconds: self.lock_timeout_seconds,
        }
    }

    fn strings_mut(&mut self) -> Vec<&mut String> {
        self.packages.iter_mut().collect()
    }
}

impl v1::Patch {
    /// How long to wait for another holder of the package manager's lock (0 on the wire is
    /// the default).
    pub fn lock_timeout(&self) -> Duration {
        let seconds = match self.lock_timeout_seconds {
            0 => DEFAULT_LOCK_TIMEOUT_SECONDS,
            n => n,
        };
        Duration::from_secs(u64::from(seconds))
    }
}

impl WireAction for v1::Patch {
    const NAME: &'static str = "patch";
    const READ_ONLY: bool = false;

    /// A full upgrade of a host that was not patched for a while.
    fn default_timeout(&self) -> Duration {
        minutes(60)
    }

    fn describe(&self) -> String {
        if self.packages.is_empty() {
            "patch (upgrade all packages)".to_owned()
        } else {
            format!("patch {}", self.packages.join(" "))
        }
    }

    fn check(&self, policy: &Policy) -> Result<(), Refusal> {
        if policy.allow_patch {
            Ok(())
        } else {
            Err(Refusal {
                rule: "policy.allow_patch".to_owned(),
                message: "patching is not allowed on this host".to_owned(),
            })
        }
    }
}

/// `pitcrew do HOST patch [PACKAGE...]`.
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct Cli {
    packages: Vec<String>,
    /// How long to wait for a package manager lock held by someone else, e.g. `2m` (a bare
    /// number is seconds; default 5m, as in campaign files).
    #[arg(long, value_parser = super::cli::parse_seconds)]
    lock_timeout: Option<u32>,
}

#[cfg(feature = "cli")]
impl From<Cli> for v1::Patch {
    fn from(cli: Cli) -> Self {
        v1::Patch {
            packages: cli.packages,
            lock_timeout_seconds: cli.lock_timeout.unwrap_or(DEFAULT_LOCK_TIMEOUT_SECONDS),
        }
    }
}
