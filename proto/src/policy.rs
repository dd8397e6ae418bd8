//! A host's local policy: what the coordinator may ask its agent to do.
//!
//! The agent enforces it before every action (a compromised coordinator cannot go beyond it) and
//! reports it in its facts, so `pitcrew campaign plan` can refuse a step the host would refuse.
//! This module is the single implementation of the lexical rules; the agent adds the checks that
//! need the filesystem (symlinks) at execution time.

use std::path::{Component, Path, PathBuf};

use globset::Glob;
use serde::{Deserialize, Serialize};

use crate::v1::{self, action::Kind, health::Check};

/// The `[policy]` table of the agent's configuration. Every default refuses: no units, no
/// removal, no patch, no reboot, no `/dev/shm` fix, no exec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Globs of systemd unit names that may be controlled, e.g. `dcos-mesos-slave*.service`.
    pub units: Vec<String>,
    /// Directories under which `remove_path` may remove things (the directories themselves never).
    pub remove_paths: Vec<PathBuf>,
    pub allow_patch: bool,
    pub allow_reboot: bool,
    pub allow_dedupe_shm: bool,
    /// Allowed argv prefixes for `exec` and for health command checks.
    pub exec: Vec<Vec<String>>,
}

/// Why an action was refused: the rule and a sentence an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused by {rule}: {message}")]
pub struct Refusal {
    /// The configuration key (or built-in rule) that refused, e.g. `policy.exec`.
    pub rule: String,
    pub message: String,
}

fn refuse(rule: &str, message: impl Into<String>) -> Refusal {
    Refusal {
        rule: rule.to_owned(),
        message: message.into(),
    }
}

/// The unit types systemd knows; a name must end in one of them.
const UNIT_SUFFIXES: &[&str] = &[
    ".service",
    ".socket",
    ".target",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".timer",
    ".path",
    ".slice",
    ".scope",
];

/// Checks a systemd unit name the way systemd does (`unit_name_is_valid`): at most 255 bytes,
/// a known type suffix, and only `[A-Za-z0-9:_.\-\\@]` before it.
pub fn validate_unit_name(name: &str) -> Result<(), Refusal> {
    let rule = "unit-name";
    if name.is_empty() || name.len() > 255 {
        return Err(refuse(
            rule,
            format!("{name:?} is not a valid unit name (1 to 255 characters)"),
        ));
    }
    let Some(suffix) = UNIT_SUFFIXES.iter().find(|s| name.ends_with(*s)) else {
        return Err(refuse(
            rule,
            format!(
                "{name:?} is not a valid unit name: it must end in a unit type such as .service"
            ),
        ));
    };
    let stem = &name[..name.len() - suffix.len()];
    let valid = !stem.is_empty()
        && !stem.starts_with('@')
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
    if !valid {
        return Err(refuse(rule, format!("{name:?} is not a valid unit name")));
    }
    Ok(())
}

/// Lexically normalises an absolute path, refusing `..` and relative paths outright: a path
/// that needs `..` to be understood is not one an operator meant.
pub fn normalize_absolute(path: &Path) -> Result<PathBuf, Refusal> {
    let rule = "remove-path";
    if !path.is_absolute() {
        return Err(refuse(
            rule,
            format!("{} is not an absolute path", path.display()),
        ));
    }
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                return Err(refuse(rule, format!("{} contains '..'", path.display())));
            }
            Component::Prefix(_) => return Err(refuse(rule, "path prefixes are not supported")),
        }
    }
    Ok(out)
}

impl Policy {
    /// Builds a policy from the form reported in facts.
    pub fn from_proto(p: &v1::Policy) -> Policy {
        Policy {
            units: p.units.clone(),
            remove_paths: p.remove_paths.iter().map(PathBuf::from).collect(),
            allow_patch: p.allow_patch,
            allow_reboot: p.allow_reboot,
            allow_dedupe_shm: p.allow_dedupe_shm,
            exec: p.exec.iter().map(|a| a.argv.clone()).collect(),
        }
    }

    /// The form reported in facts.
    pub fn to_proto(&self) -> v1::Policy {
        v1::Policy {
            units: self.units.clone(),
            remove_paths: self
                .remove_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            allow_patch: self.allow_patch,
            allow_reboot: self.allow_reboot,
            allow_dedupe_shm: self.allow_dedupe_shm,
            exec: self
                .exec
                .iter()
                .map(|argv| v1::ArgvPrefix { argv: argv.clone() })
                .collect(),
        }
    }

    /// Checks that the policy itself is well formed (valid globs, absolute roots, non-empty
    /// prefixes), naming the offending entry.
    pub fn validate(&self) -> Result<(), String> {
        for glob in &self.units {
            Glob::new(glob)
                .map_err(|e| format!("policy.units: {glob:?} is not a valid glob: {e}"))?;
        }
        for root in &self.remove_paths {
            let normal = normalize_absolute(root)
                .map_err(|r| format!("policy.remove_paths: {}", r.message))?;
            if normal == Path::new("/") {
                return Err("policy.remove_paths: \"/\" may not be a removal root".to_owned());
            }
        }
        for prefix in &self.exec {
            match prefix.first() {
                Some(program) if program.starts_with('/') => {}
                _ => {
                    return Err(format!(
                        "policy.exec: {prefix:?} must start with an absolute program path"
                    ));
                }
            }
        }
        Ok(())
    }

    fn unit_allowed(&self, unit: &str) -> Result<(), Refusal> {
        validate_unit_name(unit)?;
        let allowed = self.units.iter().any(|pattern| {
            Glob::new(pattern)
                .map(|g| g.compile_matcher().is_match(unit))
                .unwrap_or(false)
        });
        if allowed {
            Ok(())
        } else {
            Err(refuse(
                "policy.units",
                format!("unit {unit} matches no entry of policy.units"),
            ))
        }
    }

    fn argv_allowed(&self, argv: &[String], what: &str) -> Result<(), Refusal> {
        if argv.is_empty() || argv[0].is_empty() {
            return Err(refuse("policy.exec", format!("{what} has an empty argv")));
        }
        let allowed = self.exec.iter().any(|prefix| {
            !prefix.is_empty() && argv.len() >= prefix.len() && argv[..prefix.len()] == prefix[..]
        });
        if allowed {
            Ok(())
        } else {
            Err(refuse(
                "policy.exec",
                format!("{what} {argv:?} does not start with any argv prefix in policy.exec"),
            ))
        }
    }

    /// Checks that `path` may be removed: absolute, no `..`, strictly under an allowed root.
    /// Returns the normalised path and the root it lies under. Symlinks are checked by the
    /// agent against the real filesystem.
    pub fn removal_allowed(&self, path: &str) -> Result<(PathBuf, PathBuf), Refusal> {
        let target = normalize_absolute(Path::new(path))?;
        for root in &self.remove_paths {
            let Ok(root) = normalize_absolute(root) else {
                continue;
            };
            if target == root {
                return Err(refuse(
                    "policy.remove_paths",
                    format!(
                        "{} is an allowed root itself; only paths under it may be removed",
                        root.display()
                    ),
                ));
            }
            if target.starts_with(&root) {
                return Ok((target, root));
            }
        }
        Err(refuse(
            "policy.remove_paths",
            format!(
                "{} is not under any root in policy.remove_paths",
                target.display()
            ),
        ))
    }

    /// Checks an action against this policy: `Ok` if the agent may run it.
    pub fn check(&self, action: &v1::Action) -> Result<(), Refusal> {
        let Some(kind) = &action.kind else {
            return Err(refuse("action", "the request carries no action"));
        };
        match kind {
            Kind::Unit(u) => self.unit_allowed(&u.unit),
            Kind::SignalUnit(s) => self.unit_allowed(&s.unit),
            // Waiting reads state only, but the name must still be a real unit name.
            Kind::WaitUnit(w) => validate_unit_name(&w.unit),
            Kind::DaemonReload(_) => {
                if self.units.is_empty() {
                    Err(refuse(
                        "policy.units",
                        "daemon-reload needs policy.units to allow some unit",
                    ))
                } else {
                    Ok(())
                }
            }
            Kind::RemovePath(r) => self.removal_allowed(&r.path).map(|_| ()),
            Kind::DedupeShm(_) => {
                if self.allow_dedupe_shm {
                    Ok(())
                } else {
                    Err(refuse(
                        "policy.allow_dedupe_shm",
                        "the /dev/shm fix is not allowed on this host",
                    ))
                }
            }
            Kind::Patch(_) => {
                if self.allow_patch {
                    Ok(())
                } else {
                    Err(refuse(
                        "policy.allow_patch",
                        "patching is not allowed on this host",
                    ))
                }
            }
            Kind::Reboot(_) => {
                if self.allow_reboot {
                    Ok(())
                } else {
                    Err(refuse(
                        "policy.allow_reboot",
                        "reboot and power-off are not allowed on this host",
                    ))
                }
            }
            Kind::Health(h) => match &h.check {
                Some(Check::UnitActive(unit)) => validate_unit_name(unit),
                Some(Check::Command(c)) => self.argv_allowed(&c.argv, "health command"),
                Some(Check::Tcp(_)) | Some(Check::Http(_)) => Ok(()),
                None => Err(refuse("action", "the health action names no check")),
            },
            Kind::Exec(e) => self.argv_allowed(&e.argv, "exec"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(argv: &[&str]) -> v1::Action {
        v1::Action {
            kind: Some(Kind::Exec(v1::Exec {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })),
        }
    }

    fn policy() -> Policy {
        Policy {
            units: vec!["dcos-mesos-slave*.service".into()],
            remove_paths: vec!["/var/lib/mesos/slave/meta".into()],
            exec: vec![vec![
                "/usr/bin/docker".into(),
                "node".into(),
                "update".into(),
            ]],
            ..Default::default()
        }
    }

    #[test]
    fn default_policy_refuses_everything_risky() {
        let p = Policy::default();
        assert_eq!(
            p.check(&exec(&["/bin/true"])).unwrap_err().rule,
            "policy.exec"
        );
        let reboot = v1::Action {
            kind: Some(Kind::Reboot(v1::Reboot::default())),
        };
        assert_eq!(p.check(&reboot).unwrap_err().rule, "policy.allow_reboot");
        let patch = v1::Action {
            kind: Some(Kind::Patch(v1::Patch::default())),
        };
        assert_eq!(p.check(&patch).unwrap_err().rule, "policy.allow_patch");
        let shm = v1::Action {
            kind: Some(Kind::DedupeShm(v1::DedupeShm {})),
        };
        assert_eq!(p.check(&shm).unwrap_err().rule, "policy.allow_dedupe_shm");
    }

    #[test]
    fn exec_needs_an_allowed_prefix() {
        let p = policy();
        assert!(
            p.check(&exec(&[
                "/usr/bin/docker",
                "node",
                "update",
                "--availability",
                "drain",
                "n1"
            ]))
            .is_ok()
        );
        let refused = p
            .check(&exec(&["/usr/bin/docker", "rm", "-f", "x"]))
            .unwrap_err();
        assert_eq!(refused.rule, "policy.exec");
        assert!(
            p.check(&exec(&["/usr/bin/docker", "node"])).is_err(),
            "a shorter argv is not the prefix"
        );
    }

    #[test]
    fn units_must_match_a_glob_and_be_valid_names() {
        let p = policy();
        let unit = |name: &str| v1::Action {
            kind: Some(Kind::Unit(v1::UnitAction {
                unit: name.into(),
                operation: 2,
            })),
        };
        assert!(p.check(&unit("dcos-mesos-slave.service")).is_ok());
        assert!(p.check(&unit("dcos-mesos-slave-public.service")).is_ok());
        assert_eq!(
            p.check(&unit("sshd.service")).unwrap_err().rule,
            "policy.units"
        );
        assert_eq!(
            p.check(&unit("dcos-mesos-slave")).unwrap_err().rule,
            "unit-name"
        );
        assert_eq!(
            p.check(&unit("x;rm -rf /.service")).unwrap_err().rule,
            "unit-name"
        );
    }

    #[test]
    fn removal_stays_strictly_under_allowed_roots() {
        let p = policy();
        let (path, root) = p
            .removal_allowed("/var/lib/mesos/slave/meta/slaves/latest")
            .unwrap();
        assert_eq!(path, Path::new("/var/lib/mesos/slave/meta/slaves/latest"));
        assert_eq!(root, Path::new("/var/lib/mesos/slave/meta"));
        assert_eq!(
            p.removal_allowed("/var/lib/mesos/slave/meta")
                .unwrap_err()
                .rule,
            "policy.remove_paths"
        );
        assert_eq!(
            p.removal_allowed("/var/lib/mesos/slave/meta/../../../etc")
                .unwrap_err()
                .rule,
            "remove-path"
        );
        assert_eq!(
            p.removal_allowed("/etc/passwd").unwrap_err().rule,
            "policy.remove_paths"
        );
        assert_eq!(
            p.removal_allowed("relative/path").unwrap_err().rule,
            "remove-path"
        );
    }

    #[test]
    fn policy_round_trips_through_facts() {
        let p = policy();
        assert_eq!(Policy::from_proto(&p.to_proto()), p);
    }

    #[test]
    fn a_root_of_slash_is_an_invalid_policy() {
        let p = Policy {
            remove_paths: vec!["/".into()],
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().contains("policy.remove_paths"));
    }
}
