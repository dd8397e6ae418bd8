//! Fuzz target `agent_config`: the agent's configuration, a main file and up to three drop-ins
//! merged over it in name order (`AgentConfig::load`), as the agent reads
//! `/etc/pitcrew/agent.toml` and `agent.d/*.toml` at start.
//!
//! Input: the main file, the drop-ins and a last file that is not `.toml` (which `load` must
//! skip), separated by NUL bytes. Nothing may panic. An error never names the skipped file. A
//! configuration that loads holds what `load` promises (a valid policy, a heartbeat of 1 to
//! 300 s), its policy survives the facts' wire form unchanged, and the drop-ins merged as
//! documented: a later file's value wins, and tables merge key by key.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pitcrew_agent::config::AgentConfig;
use pitcrew_fuzz::{scratch_dir, split_nul};
use pitcrew_proto::policy::LocalPolicy;
use pitcrew_proto::v1;
use prost::Message;
use tempfile::TempDir;

/// The most files one input writes: the main file, three drop-ins and one skipped file.
const MAX_FILES: usize = 5;

/// The name of the file `load` must skip: in `agent.d/`, sorting last, but not `.toml`.
const SKIPPED: &str = "99-extra.toml.disabled";

/// Where this process writes the files: `agent.toml` and `agent.d/`.
fn dir() -> &'static TempDir {
    static DIR: OnceLock<TempDir> = OnceLock::new();
    DIR.get_or_init(|| scratch_dir("agent-config"))
}

fuzz_target!(|data: &[u8]| {
    let root = dir().path();
    let main = root.join("agent.toml");
    let dropins = root.join("agent.d");
    // Start from nothing: the previous input's drop-ins must not leak into this one.
    let _ = std::fs::remove_dir_all(&dropins);
    std::fs::create_dir_all(&dropins).expect("make agent.d");

    let parts = split_nul(data, MAX_FILES);
    std::fs::write(&main, parts[0]).expect("write agent.toml");
    for (i, part) in parts.iter().enumerate().skip(1) {
        // Names sort in input order, so the files are merged in input order.
        let name = if i == MAX_FILES - 1 {
            SKIPPED.to_owned()
        } else {
            format!("{i:02}-part.toml")
        };
        std::fs::write(dropins.join(name), part).expect("write a drop-in");
    }

    let config = match AgentConfig::load(&main) {
        Ok(config) => config,
        Err(error) => {
            assert!(
                !error.file.ends_with(SKIPPED),
                "load read a file that is not .toml: {error}"
            );
            return;
        }
    };
    assert!(
        (1..=300).contains(&config.heartbeat_seconds),
        "heartbeat_seconds {} was accepted",
        config.heartbeat_seconds
    );
    if let Err(e) = config.policy.validate() {
        panic!("a loaded policy does not validate: {e}");
    }
    let wire = config.policy.to_proto().encode_to_vec();
    let decoded = v1::Policy::decode(wire.as_slice()).expect("an encoded policy decodes");
    assert_eq!(
        LocalPolicy::from_proto(&decoded),
        config.policy,
        "the policy changed through the facts' wire form"
    );
    check_merge(&parts[..parts.len().min(MAX_FILES - 1)], &config);
});

/// The merge rule, checked on a few fields of each kind: the value is the one the last file
/// setting it gave (a scalar at the top, in `[policy]`, and an array, which a later file
/// replaces rather than extends).
fn check_merge(files: &[&[u8]], config: &AgentConfig) {
    // Every file parsed, or `load` would have failed.
    let tables: Vec<toml::Table> = files
        .iter()
        .map(|f| toml::from_str(std::str::from_utf8(f).expect("UTF-8")).expect("a TOML table"))
        .collect();
    let last = |path: &[&str]| -> Option<toml::Value> {
        tables.iter().rev().find_map(|table| {
            let (key, tables) = path.split_last()?;
            let mut at = table;
            for name in tables {
                at = at.get(*name)?.as_table()?;
            }
            at.get(*key).cloned()
        })
    };
    if let Some(value) = last(&["heartbeat_seconds"]) {
        assert_eq!(
            value.as_integer().and_then(|i| u64::try_from(i).ok()),
            Some(config.heartbeat_seconds),
            "heartbeat_seconds is not the last file's"
        );
    }
    if let Some(value) = last(&["join_token"]) {
        assert_eq!(
            value.as_str(),
            config.join_token.as_deref(),
            "join_token is not the last file's"
        );
    }
    if let Some(value) = last(&["policy", "allow_reboot"]) {
        assert_eq!(
            value.as_bool(),
            Some(config.policy.allow_reboot),
            "policy.allow_reboot is not the last file's"
        );
    }
    if let Some(value) = last(&["policy", "units"]) {
        let units: Option<Vec<&str>> = value
            .as_array()
            .and_then(|units| units.iter().map(toml::Value::as_str).collect());
        assert_eq!(
            units,
            Some(config.policy.units.iter().map(String::as_str).collect()),
            "policy.units is not the last file's"
        );
    }
}
