//! `remove_path`: remove a file or directory strictly under a root the host's policy allows
//! (the agent checks symlinks against the real filesystem when it runs).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{StepArgs, StepFields, WireAction, minutes};
use crate::policy::{Policy, Refusal};
use crate::v1;

/// The arguments of a `remove_path` step.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RemovePath {
    pub path: String,
    pub recursive: bool,
}

impl StepArgs for RemovePath {
    type Wire = v1::RemovePath;
    const FIELDS: &'static [&'static str] = &["path", "recursive"];

    fn from_fields<F: StepFields>(f: &F) -> Result<Self, F::Error> {
        let path = f.required("path")?;
        if !path.starts_with('/') {
            return Err(f.invalid("path", format!("{path:?} is not an absolute path")));
        }
        Ok(RemovePath {
            path,
            recursive: f.bool("recursive")?.unwrap_or(false),
        })
    }

    fn to_wire(&self) -> v1::RemovePath {
        v1::RemovePath {
            path: self.path.clone(),
            recursive: self.recursive,
        }
    }

    fn strings_mut(&mut self) -> Vec<&mut String> {
        vec![&mut self.path]
    }
}

impl WireAction for v1::RemovePath {
    const NAME: &'static str = "remove_path";
    const READ_ONLY: bool = false;

    /// A recursive removal of a big tree takes a while.
    fn default_timeout(&self) -> Duration {
        minutes(5)
    }

    fn describe(&self) -> String {
        let recursive = if self.recursive { " (recursive)" } else { "" };
        format!("remove_path {}{recursive}", self.path)
    }

    fn check(&self, policy: &Policy) -> Result<(), Refusal> {
        policy.removal_allowed(&self.path).map(|_| ())
    }
}

/// `pitcrew do HOST remove-path PATH`.
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct Cli {
    path: String,
    #[arg(long)]
    recursive: bool,
}

#[cfg(feature = "cli")]
impl From<Cli> for v1::RemovePath {
    fn from(cli: Cli) -> Self {
        v1::RemovePath {
            path: cli.path,
            recursive: cli.recursive,
        }
    }
}
