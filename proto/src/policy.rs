//! A host's local policy: what the coordinator may ask its agent to do.
//!
//! The agent enforces it before every action (a compromised coordinator cannot go beyond it) and
//! reports it in its facts, so `pitcrew campaign plan` can refuse a step the host would refuse.
//! This module is the single implementation of the lexical rules; the agent adds the checks that
//! need the filesystem (symlinks, mounts) at execution time.
//!
//! Two views of the same `[policy]` table: [`LocalPolicy`] is all of it, what the agent
//! enforces; [`Policy`] is the part the coordinator's planner has read from facts since the
//! first version (units, paths, switches, argv prefixes). [`LocalPolicy::check`] applies
//! [`Policy::check`] and then the rules only it carries (exec environment names).

use std::fmt;
use std::path::{Component, Path, PathBuf};

use globset::Glob;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

/// The whole `[policy]` table of the agent's configuration. Every default refuses: no units, no
/// removal, no patch, no reboot, no `/dev/shm` fix, no exec, no environment variables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalPolicy {
    /// Globs of systemd unit names that may be controlled, e.g. `dcos-mesos-slave*.service`.
    pub units: Vec<String>,
    /// Directories under which `remove_path` may remove things (the directories themselves never).
    pub remove_paths: Vec<PathBuf>,
    pub allow_patch: bool,
    pub allow_reboot: bool,
    pub allow_dedupe_shm: bool,
    /// Allowed argv prefixes for `exec` and for health command checks, each with the
    /// environment variable names a request for it may set.
    pub exec: Vec<ExecRule>,
}

/// One entry of `policy.exec`: an argv prefix, and the names of the environment variables a
/// request whose argv starts with it may set (none unless listed).
///
/// Environment variables are code for many programs (`PYTHONPATH`, `PERL5OPT`, `NODE_OPTIONS`,
/// `DOCKER_HOST`, ...), so allowing an argv says nothing about the environment: each name is
/// allowed on its own, per entry. In the file an entry is either a plain argv list or a table:
/// `[["/usr/local/bin/ucp-backup"], { argv = ["/usr/bin/docker", "node"], env = ["DOCKER_CONFIG"] }]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRule {
    /// The argv prefix; the first element is an absolute program path.
    pub argv: Vec<String>,
    /// Environment variable names (never values) a request may set.
    pub env: Vec<String>,
}

/// An argv prefix that allows no environment variable.
impl From<Vec<String>> for ExecRule {
    fn from(argv: Vec<String>) -> Self {
        ExecRule {
            argv,
            env: Vec::new(),
        }
    }
}

/// The table form of an [`ExecRule`] in the configuration file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecTable {
    argv: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
}

impl<'de> Deserialize<'de> for ExecRule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RuleVisitor;
        impl<'de> Visitor<'de> for RuleVisitor {
            type Value = ExecRule;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an argv prefix such as [\"/usr/local/bin/backup\"] or a table such as \
                     { argv = [\"/usr/local/bin/backup\"], env = [\"BACKUP_DIR\"] }",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ExecRule, A::Error> {
                let argv = Vec::<String>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(ExecRule::from(argv))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ExecRule, A::Error> {
                let table = ExecTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ExecRule {
                    argv: table.argv,
                    env: table.env,
                })
            }
        }
        deserializer.deserialize_any(RuleVisitor)
    }
}

impl Serialize for ExecRule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The short form when it says everything, as an operator would write it.
        if self.env.is_empty() {
            self.argv.serialize(serializer)
        } else {
            ExecTable {
                argv: self.argv.clone(),
                env: self.env.clone(),
            }
            .serialize(serializer)
        }
    }
}

/// Environment variables no request may set and no policy may allow. `PATH` is fixed by the
/// agent, so that which program a name resolves to never depends on the request; the others
/// make the dynamic loader or a shell load code into every program the allowed one starts.
const NEVER_SET_ENV: &[&str] = &["PATH", "GCONV_PATH", "BASH_ENV", "ENV", "IFS"];
const NEVER_SET_ENV_PREFIXES: &[&str] = &["LD_"];

/// Checks one environment variable name of an exec request or a policy entry: well formed,
/// and not one that nothing may set.
pub fn validate_env_name(name: &str) -> Result<(), Refusal> {
    let rule = "exec.env";
    let well_formed = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !well_formed {
        return Err(refuse(
            rule,
            format!("environment name {name:?} is not [A-Za-z_][A-Za-z0-9_]*"),
        ));
    }
    if name == "PATH" {
        return Err(refuse(
            rule,
            "PATH may not be set: the agent runs every program with its own fixed PATH",
        ));
    }
    if NEVER_SET_ENV.contains(&name) || NEVER_SET_ENV_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Err(refuse(
            rule,
            format!(
                "environment variable {name} may never be set (it loads code into the program and everything it starts)"
            ),
        ));
    }
    Ok(())
}

/// Whether `argv` starts with the (non-empty) `prefix`.
fn has_prefix(argv: &[String], prefix: &[String]) -> bool {
    !prefix.is_empty() && argv.len() >= prefix.len() && argv[..prefix.len()] == prefix[..]
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
                .map(|argv| v1::ArgvPrefix {
                    argv: argv.clone(),
                    env: Vec::new(),
                })
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
        let allowed = self.exec.iter().any(|prefix| has_prefix(argv, prefix));
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

/// What the planner's view keeps of a whole policy, and the other way round: a [`Policy`]
/// (tests, older callers) is a local policy whose exec entries allow no environment.
impl From<Policy> for LocalPolicy {
    fn from(p: Policy) -> LocalPolicy {
        LocalPolicy {
            units: p.units,
            remove_paths: p.remove_paths,
            allow_patch: p.allow_patch,
            allow_reboot: p.allow_reboot,
            allow_dedupe_shm: p.allow_dedupe_shm,
            exec: p.exec.into_iter().map(ExecRule::from).collect(),
        }
    }
}

impl LocalPolicy {
    /// The part of this policy that [`Policy`] carries (exec entries without their env).
    pub fn rules(&self) -> Policy {
        Policy {
            units: self.units.clone(),
            remove_paths: self.remove_paths.clone(),
            allow_patch: self.allow_patch,
            allow_reboot: self.allow_reboot,
            allow_dedupe_shm: self.allow_dedupe_shm,
            exec: self.exec.iter().map(|rule| rule.argv.clone()).collect(),
        }
    }

    /// Builds a policy from the form reported in facts.
    pub fn from_proto(p: &v1::Policy) -> LocalPolicy {
        let mut policy = LocalPolicy::from(Policy::from_proto(p));
        policy.exec = p
            .exec
            .iter()
            .map(|a| ExecRule {
                argv: a.argv.clone(),
                env: a.env.clone(),
            })
            .collect();
        policy
    }

    /// The form reported in facts.
    pub fn to_proto(&self) -> v1::Policy {
        let mut p = self.rules().to_proto();
        p.exec = self
            .exec
            .iter()
            .map(|rule| v1::ArgvPrefix {
                argv: rule.argv.clone(),
                env: rule.env.clone(),
            })
            .collect();
        p
    }

    /// Checks that the policy itself is well formed, naming the offending entry.
    pub fn validate(&self) -> Result<(), String> {
        self.rules().validate()?;
        for rule in &self.exec {
            for name in &rule.env {
                validate_env_name(name).map_err(|r| {
                    format!(
                        "policy.exec: the entry {:?} lists {name:?} in env: {}",
                        rule.argv, r.message
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Checks that `path` may be removed; see [`Policy::removal_allowed`].
    pub fn removal_allowed(&self, path: &str) -> Result<(PathBuf, PathBuf), Refusal> {
        self.rules().removal_allowed(path)
    }

    /// Checks an exec request: its argv against the prefixes, its workdir, and every
    /// environment variable it sets against the `env` names of a matching entry. One entry
    /// must allow all of them, so two entries cannot be combined into more than either allows.
    pub fn exec_allowed(&self, exec: &v1::Exec) -> Result<(), Refusal> {
        self.rules().argv_allowed(&exec.argv, "exec")?;
        if !exec.workdir.is_empty() && !Path::new(&exec.workdir).is_absolute() {
            return Err(refuse(
                "exec.workdir",
                format!("workdir {:?} is not an absolute path", exec.workdir),
            ));
        }
        let mut names: Vec<&String> = exec.env.keys().collect();
        names.sort();
        for name in &names {
            validate_env_name(name)?;
        }
        let matching: Vec<&ExecRule> = self
            .exec
            .iter()
            .filter(|rule| has_prefix(&exec.argv, &rule.argv))
            .collect();
        if matching
            .iter()
            .any(|rule| names.iter().all(|n| rule.env.contains(n)))
        {
            return Ok(());
        }
        let missing: Vec<&str> = names
            .iter()
            .filter(|n| !matching.iter().any(|rule| rule.env.contains(n)))
            .map(|n| n.as_str())
            .collect();
        let program = &exec.argv[0];
        let message = if missing.is_empty() {
            format!(
                "exec {program} sets {}, which no single policy.exec entry matching its argv allows together",
                names
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            format!(
                "exec {program} may not set {}: no policy.exec entry matching its argv lists it in env \
                 (environment variables can change what an allowed program runs; list a name there \
                 only if the program is meant to take it)",
                missing.join(", ")
            )
        };
        Err(refuse("policy.exec.env", message))
    }

    /// Checks an action against the whole policy: `Ok` if the agent may run it.
    pub fn check(&self, action: &v1::Action) -> Result<(), Refusal> {
        match &action.kind {
            Some(Kind::Exec(e)) => self.exec_allowed(e),
            _ => self.rules().check(action),
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

    fn local() -> LocalPolicy {
        let mut p = LocalPolicy::from(policy());
        p.exec.push(ExecRule {
            argv: vec!["/usr/local/bin/backup".into()],
            env: vec!["BACKUP_DIR".into(), "BACKUP_KEEP".into()],
        });
        p
    }

    fn exec_env(argv: &[&str], env: &[(&str, &str)], workdir: &str) -> v1::Action {
        v1::Action {
            kind: Some(Kind::Exec(v1::Exec {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                workdir: workdir.into(),
            })),
        }
    }

    #[test]
    fn exec_env_names_must_be_listed_by_the_matching_entry() {
        let p = local();
        let backup = ["/usr/local/bin/backup", "--all"];
        assert!(p.check(&exec_env(&backup, &[], "")).is_ok());
        assert!(
            p.check(&exec_env(
                &backup,
                &[("BACKUP_DIR", "/srv"), ("BACKUP_KEEP", "3")],
                "/srv"
            ))
            .is_ok()
        );
        // Allowed for one program is not allowed for another.
        let refused = p
            .check(&exec_env(
                &["/usr/bin/docker", "node", "update", "x"],
                &[("BACKUP_DIR", "/srv")],
                "",
            ))
            .unwrap_err();
        assert_eq!(refused.rule, "policy.exec.env");
        assert!(
            refused.message.contains("BACKUP_DIR"),
            "{}",
            refused.message
        );
        // Variables that turn an allowed program into any program.
        for hook in [
            "PYTHONPATH",
            "PYTHONWARNINGS",
            "BROWSER",
            "PERL5OPT",
            "NODE_OPTIONS",
            "DOCKER_HOST",
        ] {
            let refused = p.check(&exec_env(&backup, &[(hook, "x")], "")).unwrap_err();
            assert_eq!(refused.rule, "policy.exec.env", "{hook}");
            assert!(refused.message.contains(hook), "{}", refused.message);
        }
        // The argv rule still comes first.
        assert_eq!(
            p.check(&exec_env(&["/bin/sh"], &[("BACKUP_DIR", "x")], ""))
                .unwrap_err()
                .rule,
            "policy.exec"
        );
    }

    #[test]
    fn path_loader_variables_and_malformed_names_are_never_set() {
        let mut p = local();
        for bad in [
            "PATH",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "BASH_ENV",
            "1X",
            "A-B",
            "",
        ] {
            let refusal = p
                .check(&exec_env(&["/usr/local/bin/backup"], &[(bad, "x")], ""))
                .unwrap_err();
            assert_eq!(refusal.rule, "exec.env", "{bad}");
        }
        assert_eq!(
            p.check(&exec_env(&["/usr/local/bin/backup"], &[], "relative"))
                .unwrap_err()
                .rule,
            "exec.workdir"
        );
        // Nor may a policy allow them.
        p.exec[1].env.push("PATH".into());
        let error = p.validate().unwrap_err();
        assert!(
            error.contains("policy.exec") && error.contains("PATH"),
            "{error}"
        );
    }

    #[test]
    fn local_policy_round_trips_through_facts_and_keeps_the_planner_view() {
        let p = local();
        let proto = p.to_proto();
        assert_eq!(LocalPolicy::from_proto(&proto), p);
        assert_eq!(Policy::from_proto(&proto), p.rules());
    }
}
