//! `health`: check one thing — a unit is active, a TCP port accepts, an `http://` URL answers
//! with the expected status, or a command the policy allows exits 0. It only looks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{StepArgs, StepFields, WireAction, malformed, minutes};
use crate::policy::{LocalPolicy, Policy, Refusal, parse_http_url, validate_unit_name};
use crate::v1::{self, health::Check};

/// The one check a `health` step makes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheck {
    UnitActive(String),
    Tcp { host: String, port: u16 },
    Http { url: String, expect_status: u16 },
    Command(Vec<String>),
}

/// The arguments of a `health` step.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Health {
    pub check: HealthCheck,
}

/// The fields that name a check; a step gives exactly one.
const CHECKS: [&str; 4] = ["unit_active", "tcp", "http", "command"];

impl StepArgs for Health {
    type Wire = v1::Health;
    const FIELDS: &'static [&'static str] =
        &["unit_active", "tcp", "http", "expect_status", "command"];

    fn from_fields<F: StepFields>(f: &F) -> Result<Self, F::Error> {
        let given: Vec<&str> = CHECKS.into_iter().filter(|c| f.has(c)).collect();
        if given.len() != 1 {
            return Err(f.step_error(format!(
                "a health step checks exactly one of unit_active, tcp, http or command (got {})",
                if given.is_empty() {
                    "none".to_owned()
                } else {
                    given.join(", ")
                }
            )));
        }
        if f.has("expect_status") && !f.has("http") {
            return Err(f.invalid(
                "expect_status",
                "only an http check has an expected status".to_owned(),
            ));
        }
        let check = match given[0] {
            "unit_active" => HealthCheck::UnitActive(f.required("unit_active")?),
            "tcp" => {
                let text = f.required("tcp")?;
                let (host, port) = text
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                    .filter(|(h, p)| !h.is_empty() && *p > 0)
                    .ok_or_else(|| f.invalid("tcp", format!("{text:?} is not \"host:port\"")))?;
                HealthCheck::Tcp {
                    host: host.to_owned(),
                    port,
                }
            }
            "http" => {
                let url = f.required("http")?;
                check_url(&url).map_err(|e| f.invalid("http", e))?;
                let expect_status = match f.integer("expect_status")? {
                    None => 200,
                    Some(code) => u16::try_from(code)
                        .ok()
                        .filter(|c| (100..=599).contains(c))
                        .ok_or_else(|| {
                            f.invalid("expect_status", format!("{code} is not an HTTP status"))
                        })?,
                };
                HealthCheck::Http { url, expect_status }
            }
            _ => HealthCheck::Command(f.argv("command")?),
        };
        Ok(Health { check })
    }

    fn to_wire(&self) -> v1::Health {
        let check = match &self.check {
            HealthCheck::UnitActive(unit) => Check::UnitActive(unit.clone()),
            HealthCheck::Tcp { host, port } => Check::Tcp(v1::TcpCheck {
                host: host.clone(),
                port: u32::from(*port),
            }),
            HealthCheck::Http { url, expect_status } => Check::Http(v1::HttpCheck {
                url: url.clone(),
                expect_status: u32::from(*expect_status),
            }),
            HealthCheck::Command(argv) => Check::Command(v1::CommandCheck { argv: argv.clone() }),
        };
        v1::Health { check: Some(check) }
    }

    fn strings_mut(&mut self) -> Vec<&mut String> {
        match &mut self.check {
            HealthCheck::UnitActive(unit) => vec![unit],
            HealthCheck::Tcp { host, .. } => vec![host],
            HealthCheck::Http { url, .. } => vec![url],
            HealthCheck::Command(argv) => argv.iter_mut().collect(),
        }
    }
}

/// A URL the agent can check: the agent's own parser decides, so a campaign file cannot carry
/// a check every host would refuse (`https://`, credentials). A URL with `{{variables}}` is
/// checked for its scheme only; the rest is known per host.
fn check_url(url: &str) -> Result<(), String> {
    if url.contains("{{") && url.starts_with("http://") {
        return Ok(());
    }
    parse_http_url(url).map(|_| ())
}

impl WireAction for v1::Health {
    const NAME: &'static str = "health";
    const READ_ONLY: bool = true;

    fn default_timeout(&self) -> Duration {
        minutes(2)
    }

    fn describe(&self) -> String {
        match &self.check {
            Some(Check::UnitActive(unit)) => format!("health: {unit} is active"),
            Some(Check::Tcp(t)) => format!("health: tcp {}:{} accepts", t.host, t.port),
            Some(Check::Http(h)) => {
                let status = match h.expect_status {
                    0 => 200,
                    n => n,
                };
                format!("health: GET {} answers {status}", h.url)
            }
            Some(Check::Command(c)) => format!("health: {} exits 0", c.argv.join(" ")),
            None => "health (no check)".to_owned(),
        }
    }

    fn check(&self, policy: &Policy) -> Result<(), Refusal> {
        match &self.check {
            Some(Check::UnitActive(unit)) => validate_unit_name(unit),
            Some(Check::Command(c)) => policy.argv_allowed(&c.argv, "health command"),
            Some(Check::Tcp(_)) | Some(Check::Http(_)) => Ok(()),
            None => Err(malformed("the health action names no check")),
        }
    }

    /// Where a check may connect is the local policy's (`health_targets`): a host written as
    /// an address is checked here, a name by the agent against what it resolves to.
    fn check_local(&self, policy: &LocalPolicy) -> Result<(), Refusal> {
        self.check(&policy.rules())?;
        match &self.check {
            Some(Check::Tcp(tcp)) => policy.health_literal_allowed(&tcp.host, tcp.port),
            Some(Check::Http(http)) => match parse_http_url(&http.url) {
                Ok(target) => policy.health_literal_allowed(&target.host, u32::from(target.port)),
                // The check itself reports a URL it cannot use.
                Err(_) => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// `pitcrew do HOST health CHECK ...`.
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct Cli {
    #[command(subcommand)]
    check: CheckCli,
}

#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Subcommand)]
enum CheckCli {
    /// The unit is active.
    UnitActive { unit: String },
    /// HOST:PORT accepts a TCP connection.
    Tcp { host: String, port: u16 },
    /// GET URL (http:// only) answers with the expected status.
    Http {
        #[arg(value_parser = parse_url)]
        url: String,
        #[arg(long, default_value_t = 200)]
        status: u16,
    },
    /// The command (argv, no shell; allowed by the host's policy.exec) exits 0.
    Command {
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
}

#[cfg(feature = "cli")]
fn parse_url(url: &str) -> Result<String, String> {
    parse_http_url(url).map(|_| url.to_owned())
}

#[cfg(feature = "cli")]
impl From<Cli> for v1::Health {
    fn from(cli: Cli) -> Self {
        let check = match cli.check {
            CheckCli::UnitActive { unit } => Check::UnitActive(unit),
            CheckCli::Tcp { host, port } => Check::Tcp(v1::TcpCheck {
                host,
                port: u32::from(port),
            }),
            CheckCli::Http { url, status } => Check::Http(v1::HttpCheck {
                url,
                expect_status: u32::from(status),
            }),
            CheckCli::Command { argv } => Check::Command(v1::CommandCheck { argv }),
        };
        v1::Health { check: Some(check) }
    }
}
