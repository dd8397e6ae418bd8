//! The agent's configuration: `/etc/pitcrew/agent.toml` plus drop-ins from
//! `/etc/pitcrew/agent.d/*.toml`, merged in name order.
//!
//! The packaged main file stays an untouched conffile; operators and installers put the
//! coordinator address, CA fingerprint and join token in a drop-in. Every error names the file,
//! and the line and field when there is one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pitcrew_proto::policy::LocalPolicy;
use serde::Deserialize;

/// Where the packaged agent keeps its state (key, certificate, journal).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pitcrew";

/// The whole agent configuration after merging drop-ins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Every coordinator address ("https://host:port"); the agent tries them in turn.
    #[serde(default)]
    pub coordinators: Vec<String>,
    /// SHA-256 fingerprint of the fleet CA, pinned for enrollment (no trust on first use).
    #[serde(default)]
    pub ca_fingerprint: Option<String>,
    /// One-time join token, used on first start when the agent has no certificate yet.
    #[serde(default)]
    pub join_token: Option<String>,
    /// Key, certificate, CA, identity and action journal live here.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How often to send a heartbeat on the session stream.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_seconds: u64,
    #[serde(default)]
    pub host: HostConfig,
    /// What the coordinator may ask this host to do.
    #[serde(default)]
    pub policy: LocalPolicy,
}

/// Where the host's identity and boot id are read from. Overridable so several agents can run
/// on one machine in tests, each with its own identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The name this host reports; the system hostname when unset. Lets several agents on one
    /// machine (tests, labs) each have their own.
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default = "default_machine_id_file")]
    pub machine_id_file: PathBuf,
    #[serde(default = "default_boot_id_file")]
    pub boot_id_file: PathBuf,
    /// systemd's administrator unit directory, where the drop-ins that hold units down during
    /// maintenance are written (`<unit>.d/zz-pitcrew-hold.conf`).
    #[serde(default = "default_unit_dir")]
    pub unit_dir: PathBuf,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            hostname: None,
            machine_id_file: default_machine_id_file(),
            boot_id_file: default_boot_id_file(),
            unit_dir: default_unit_dir(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_heartbeat() -> u64 {
    5
}
fn default_machine_id_file() -> PathBuf {
    PathBuf::from("/etc/machine-id")
}
fn default_unit_dir() -> PathBuf {
    PathBuf::from("/etc/systemd/system")
}
fn default_boot_id_file() -> PathBuf {
    PathBuf::from("/proc/sys/kernel/random/boot_id")
}

/// A configuration error an operator can act on: which file, and what is wrong in it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

impl HostConfig {
    /// The hostname to report: the configured one, else the system's.
    pub fn hostname(&self) -> String {
        self.hostname.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
    }
}

impl AgentConfig {
    /// Loads `path` and the drop-ins beside it (`<stem>.d/*.toml`). A missing main file is an
    /// error; a missing drop-in directory is not.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let mut files = vec![path.to_path_buf()];
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dropin_dir = path.with_file_name(format!("{stem}.d"));
        if let Ok(entries) = std::fs::read_dir(&dropin_dir) {
            let mut dropins: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            dropins.sort();
            files.extend(dropins);
        }
        let mut merged = toml::Table::new();
        for file in &files {
            let name = file.display().to_string();
            let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
                file: name.clone(),
                message: format!("cannot read: {e}"),
            })?;
            // Check each file on its own first, so an unknown field is reported with its file.
            let _: PartialConfig = toml::from_str(&text).map_err(|e| ConfigError {
                file: name.clone(),
                message: one_line(&e.to_string()),
            })?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError {
                file: name.clone(),
                message: one_line(&e.to_string()),
            })?;
            merge(&mut merged, table);
        }
        let config: AgentConfig = merged
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError {
                file: path.display().to_string(),
                message: one_line(&e.to_string()),
            })?;
        config.validate().map_err(|message| ConfigError {
            file: path.display().to_string(),
            message,
        })?;
        Ok(config)
    }

    /// Checks what serde cannot: a valid policy, a sane heartbeat, a well-formed fingerprint.
    fn validate(&self) -> Result<(), String> {
        self.policy.validate()?;
        if !(1..=300).contains(&self.heartbeat_seconds) {
            return Err(format!(
                "field heartbeat_seconds: {} is out of range (1 to 300)",
                self.heartbeat_seconds
            ));
        }
        if let Some(fp) = &self.ca_fingerprint {
            pitcrew_proto::tls::normalize_fingerprint(fp)
                .map_err(|e| format!("field ca_fingerprint: {e}"))?;
        }
        for address in &self.coordinators {
            if address.trim().is_empty() {
                return Err("field coordinators: an address is empty".to_owned());
            }
        }
        Ok(())
    }

    /// A configuration for unit tests: everything default, state under `state_dir`.
    pub fn for_tests(state_dir: &Path) -> AgentConfig {
        AgentConfig {
            coordinators: Vec::new(),
            ca_fingerprint: None,
            join_token: None,
            state_dir: state_dir.to_path_buf(),
            heartbeat_seconds: 5,
            // Holds go beside the state, never into the machine's own unit directory.
            host: HostConfig {
                unit_dir: state_dir.join("units"),
                ..HostConfig::default()
            },
            policy: LocalPolicy::default(),
        }
    }
}

/// The same shape with every field optional: what one file (main or drop-in) may contain.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct PartialConfig {
    coordinators: Option<Vec<String>>,
    ca_fingerprint: Option<String>,
    join_token: Option<String>,
    state_dir: Option<PathBuf>,
    heartbeat_seconds: Option<u64>,
    host: Option<HostConfig>,
    policy: Option<LocalPolicy>,
}

/// Merges `over` into `base`: tables merge key by key (one drop-in can add to `[policy]`),
/// everything else is replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// toml's errors span several lines with a source excerpt; keep them readable in one log line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && *l != "^")
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the agent persisted at enrollment: its identity as the coordinator issued it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Enrolled {
    pub host_id: String,
    pub role: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn dropins_merge_over_the_main_file_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "agent.toml",
            "heartbeat_seconds = 7\n[policy]\nallow_patch = true\n",
        );
        write(
            dir.path(),
            "agent.d/10-coordinator.toml",
            "coordinators = [\"https://a:1\"]\n",
        );
        write(
            dir.path(),
            "agent.d/20-more.toml",
            "coordinators = [\"https://b:2\"]\n[policy]\nallow_reboot = true\n",
        );
        let config = AgentConfig::load(&main).unwrap();
        assert_eq!(config.coordinators, vec!["https://b:2"]);
        assert_eq!(config.heartbeat_seconds, 7);
        assert!(config.policy.allow_patch && config.policy.allow_reboot);
    }

    #[test]
    fn an_unknown_field_names_the_file_the_line_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "agent.toml", "heartbeat_seconds = 7\n");
        write(
            dir.path(),
            "agent.d/10-x.toml",
            "\n\n[policy]\nallow_everything = true\n",
        );
        let error = AgentConfig::load(&main).unwrap_err();
        assert!(error.file.ends_with("agent.d/10-x.toml"), "{error}");
        assert!(error.message.contains("line 4"), "{error}");
        assert!(error.message.contains("allow_everything"), "{error}");
    }

    #[test]
    fn exec_entries_are_argv_lists_or_tables_with_env_names() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "agent.toml",
            "[policy]\nexec = [[\"/usr/local/bin/a\"], { argv = [\"/usr/bin/docker\", \"node\"], env = [\"DOCKER_CONFIG\"] }]\n",
        );
        let config = AgentConfig::load(&main).unwrap();
        assert_eq!(config.policy.exec.len(), 2);
        assert!(config.policy.exec[0].env.is_empty());
        assert_eq!(config.policy.exec[1].argv, vec!["/usr/bin/docker", "node"]);
        assert_eq!(config.policy.exec[1].env, vec!["DOCKER_CONFIG"]);

        let typo = write(
            dir.path(),
            "typo.toml",
            "[policy]\nexec = [{ argv = [\"/usr/bin/x\"], environment = [\"X\"] }]\n",
        );
        let error = AgentConfig::load(&typo).unwrap_err();
        assert!(
            error.message.contains("environment") && error.message.contains("line 2"),
            "{error}"
        );
        let path = write(
            dir.path(),
            "path.toml",
            "[policy]\nexec = [{ argv = [\"/usr/bin/x\"], env = [\"PATH\"] }]\n",
        );
        let error = AgentConfig::load(&path).unwrap_err();
        assert!(
            error.message.contains("policy.exec") && error.message.contains("PATH"),
            "{error}"
        );
    }

    #[test]
    fn health_targets_and_signals_default_and_can_be_set() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "agent.toml", "[policy]\nunits = []\n");
        let defaults = AgentConfig::load(&main).unwrap().policy;
        assert_eq!(defaults.health_targets, vec!["127.0.0.0/8", "::1"]);
        assert_eq!(
            defaults.signals,
            vec!["SIGHUP", "SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2"]
        );
        write(
            dir.path(),
            "agent.d/10-more.toml",
            "[policy]\nhealth_targets = [\"127.0.0.1\", \"10.0.0.0/8:8080\"]\nsignals = [\"SIGUSR1\"]\n",
        );
        let set = AgentConfig::load(&main).unwrap().policy;
        assert_eq!(set.health_targets, vec!["127.0.0.1", "10.0.0.0/8:8080"]);
        assert_eq!(set.signals, vec!["SIGUSR1"]);
        write(
            dir.path(),
            "agent.d/20-bad.toml",
            "[policy]\nhealth_targets = [\"metadata.internal:80\"]\n",
        );
        let error = AgentConfig::load(&main).unwrap_err();
        assert!(error.message.contains("policy.health_targets"), "{error}");
    }

    #[test]
    fn missing_corrupt_and_invalid_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = AgentConfig::load(&dir.path().join("nope.toml")).unwrap_err();
        assert!(missing.message.contains("cannot read"), "{missing}");
        let corrupt = write(dir.path(), "corrupt.toml", "coordinators = [\n");
        let error = AgentConfig::load(&corrupt).unwrap_err();
        assert!(
            error.file.ends_with("corrupt.toml") && error.message.contains("line"),
            "{error}"
        );
        let bad_fp = write(dir.path(), "fp.toml", "ca_fingerprint = \"abc\"\n");
        assert!(
            AgentConfig::load(&bad_fp)
                .unwrap_err()
                .message
                .contains("ca_fingerprint")
        );
        let bad_type = write(dir.path(), "type.toml", "heartbeat_seconds = \"often\"\n");
        assert!(
            AgentConfig::load(&bad_type)
                .unwrap_err()
                .message
                .contains("heartbeat_seconds")
        );
    }
}
