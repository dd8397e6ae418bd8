//! `exec`: run a program (argv, no shell) whose argv starts with a prefix the host's policy
//! allows, with only the environment variables that prefix lists.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{StepArgs, StepFields, WireAction, minutes};
use crate::policy::{LocalPolicy, Policy, Refusal};
use crate::v1;

/// The arguments of an `exec` step.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Exec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
}

impl StepArgs for Exec {
    type Wire = v1::Exec;
    const FIELDS: &'static [&'static str] = &["argv", "env", "workdir"];

    fn from_fields<F: StepFields>(f: &F) -> Result<Self, F::Error> {
        Ok(Exec {
            argv: f.argv("argv")?,
            env: f.string_table("env")?.unwrap_or_default(),
            workdir: f.string("workdir")?.unwrap_or_default(),
        })
    }

    fn to_wire(&self) -> v1::Exec {
        v1::Exec {
            argv: self.argv.clone(),
            env: self.env.clone().into_iter().collect(),
            workdir: self.workdir.clone(),
        }
    }

    fn strings_mut(&mut self) -> Vec<&mut String> {
        let mut strings: Vec<&mut String> = self.argv.iter_mut().collect();
        strings.extend(self.env.values_mut());
        strings.push(&mut self.workdir);
        strings
    }
}

impl WireAction for v1::Exec {
    const NAME: &'static str = "exec";
    const READ_ONLY: bool = false;

    fn default_timeout(&self) -> Duration {
        minutes(10)
    }

    fn describe(&self) -> String {
        format!("exec {}", self.argv.join(" "))
    }

    fn check(&self, policy: &Policy) -> Result<(), Refusal> {
        policy.argv_allowed(&self.argv, "exec")
    }

    /// The local policy also decides the environment a request may set and its workdir.
    fn check_local(&self, policy: &LocalPolicy) -> Result<(), Refusal> {
        policy.exec_allowed(self)
    }
}

/// `pitcrew do HOST exec [--env KEY=VALUE]... [--workdir DIR] -- ARGV...`.
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct Cli {
    /// Environment variables as KEY=VALUE (repeat).
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    #[arg(long, default_value = "")]
    workdir: String,
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    argv: Vec<String>,
}

#[cfg(feature = "cli")]
fn parse_env(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

#[cfg(feature = "cli")]
impl From<Cli> for v1::Exec {
    fn from(cli: Cli) -> Self {
        v1::Exec {
            argv: cli.argv,
            env: cli.env.into_iter().collect(),
            workdir: cli.workdir,
        }
    }
}
