//! The client config: named contexts (a coordinator with the CA and operator certificate to
//! reach it), one of them current, so an operator of several fleets switches with
//! `pitcrew context use NAME` or `pitcrew --context NAME ...` instead of re-exporting
//! `PITCREW_*`.
//!
//! The file is `$PITCREW_CONFIG`, else `$XDG_CONFIG_HOME/pitcrew/config.toml`, else
//! `~/.config/pitcrew/config.toml`:
//!
//! ```toml
//! current = "prod"
//!
//! [contexts.prod]
//! coordinator = "https://coord.example.net:7443"
//! ca = "prod/ca.crt"          # relative paths are relative to this file's directory
//! cert = "prod/alice.crt"
//! key = "prod/alice.key"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::connect::ConnectFlags;
use crate::output::{self, Format};

/// The whole client config file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The context used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One fleet as this operator reaches it. A setting left out falls back to the default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// `pitcrew context ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ContextCommand {
    /// List the contexts of the client config (* marks the current one).
    Ls,
    /// Make NAME the current context.
    Use { name: String },
    /// Save the connection given by flags or PITCREW_* as context NAME (paths made absolute).
    Add {
        name: String,
        /// Make it the current context too (the first context always is).
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Remove context NAME.
    Rm { name: String },
}

/// Where the client config is.
pub fn config_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PITCREW_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
            Some(home) => PathBuf::from(home).join(".config"),
            None => bail!(
                "no client config: set PITCREW_CONFIG (neither XDG_CONFIG_HOME nor HOME is set)"
            ),
        },
    };
    Ok(base.join("pitcrew").join("config.toml"))
}

/// Reads the client config at `path`; a missing file is an empty config.
pub fn load(path: &Path) -> anyhow::Result<ClientConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("{}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(ClientConfig::default()),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the client config at `path` whole: a new file beside it, then renamed over it.
fn save(path: &Path, config: &ClientConfig) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = format!(
        "# pitcrew client config: see `pitcrew context --help`.\n{}",
        toml::to_string_pretty(config)?
    );
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))
}

/// The context named `name`, or else the current one (none: an empty context), with its
/// relative paths made relative to the config file's directory.
pub fn chosen(name: Option<&str>) -> anyhow::Result<Context> {
    let path = config_path()?;
    let config = load(&path)?;
    let name = match name.or(config.current.as_deref()) {
        Some(name) => name.to_owned(),
        None => return Ok(Context::default()),
    };
    let Some(context) = config.contexts.get(&name) else {
        bail!(
            "no context {name:?} in {} ({}); add it with `pitcrew context add {name}`",
            path.display(),
            known(&config)
        );
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let anchored = |p: &Option<PathBuf>| p.as_ref().map(|p| dir.join(p));
    Ok(Context {
        coordinator: context.coordinator.clone(),
        ca: anchored(&context.ca),
        cert: anchored(&context.cert),
        key: anchored(&context.key),
    })
}

/// "contexts: a, b" or "it has no contexts".
fn known(config: &ClientConfig) -> String {
    if config.contexts.is_empty() {
        "it has no contexts".into()
    } else {
        let names: Vec<&str> = config.contexts.keys().map(String::as_str).collect();
        format!("contexts: {}", names.join(", "))
    }
}

/// Runs `pitcrew context ...`.
pub fn context(
    flags: &ConnectFlags,
    format: Format,
    command: ContextCommand,
) -> anyhow::Result<()> {
    let path = config_path()?;
    let mut config = load(&path)?;
    match command {
        ContextCommand::Ls => {
            if format == Format::Json {
                return output::json(&config);
            }
            let mut table = output::table(&["", "name", "coordinator", "cert"]);
            for (name, context) in &config.contexts {
                let current = config.current.as_deref() == Some(name.as_str());
                table.add_row(vec![
                    if current { "*" } else { "" }.to_owned(),
                    name.clone(),
                    context.coordinator.clone().unwrap_or_default(),
                    context
                        .cert
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                ]);
            }
            crate::say!("{table}");
            Ok(())
        }
        ContextCommand::Use { name } => {
            if !config.contexts.contains_key(&name) {
                bail!(
                    "no context {name:?} in {} ({})",
                    path.display(),
                    known(&config)
                );
            }
            config.current = Some(name.clone());
            save(&path, &config)?;
            crate::say!("now using context {name}");
            Ok(())
        }
        ContextCommand::Add { name, make_current } => {
            if config.contexts.contains_key(&name) {
                bail!(
                    "context {name:?} is already in {}; remove it first (pitcrew context rm {name})",
                    path.display()
                );
            }
            // From the flags and environment only (not from another context), then defaults.
            let absolute = |given: &Option<PathBuf>, default: &str| -> anyhow::Result<PathBuf> {
                let path = given.clone().unwrap_or_else(|| default.into());
                std::path::absolute(&path).with_context(|| format!("{}", path.display()))
            };
            let context = Context {
                coordinator: Some(
                    flags
                        .coordinator
                        .clone()
                        .unwrap_or_else(|| crate::connect::DEFAULT_COORDINATOR.into()),
                ),
                ca: Some(absolute(&flags.ca, crate::connect::DEFAULT_CA)?),
                cert: Some(absolute(&flags.cert, crate::connect::DEFAULT_CERT)?),
                key: Some(absolute(&flags.key, crate::connect::DEFAULT_KEY)?),
            };
            config.contexts.insert(name.clone(), context);
            if make_current || config.current.is_none() {
                config.current = Some(name.clone());
            }
            save(&path, &config)?;
            crate::say!("added context {name} to {}", path.display());
            Ok(())
        }
        ContextCommand::Rm { name } => {
            if config.contexts.remove(&name).is_none() {
                bail!(
                    "no context {name:?} in {} ({})",
                    path.display(),
                    known(&config)
                );
            }
            if config.current.as_deref() == Some(name.as_str()) {
                config.current = None;
            }
            save(&path, &config)?;
            crate::say!("removed context {name}");
            Ok(())
        }
    }
}
