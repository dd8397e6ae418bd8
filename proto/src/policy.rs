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
//! [`Policy::check`] and then the rules only it carries: exec environment names, where health
//! checks may connect, which signals may be sent.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};

use globset::Glob;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::actions;
use crate::v1;

/// The planner's view of a host's `[policy]` table, as facts report it: the keys every agent
/// version has. Every default refuses: no units, no removal, no patch, no reboot, no
/// `/dev/shm` fix, no exec. Its shape is kept as it was so that existing callers keep
/// building; what the agent enforces is [`LocalPolicy`], a superset of it.
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

/// The whole `[policy]` table of the agent's configuration. Every default refuses what can
/// change the host: no units, no removal, no patch, no reboot, no `/dev/shm` fix, no exec, no
/// environment variables. Health checks may reach loopback only, and `signal_unit` may send
/// the signals services are asked to drain, reload or stop with ([`DEFAULT_SIGNALS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Where tcp and http health checks may connect (see [`TargetPattern`]); a root agent must
    /// not become a probe of metadata services or admin endpoints. Default: loopback.
    pub health_targets: Vec<String>,
    /// Signals `signal_unit` may send to an allowed unit. Default: [`DEFAULT_SIGNALS`].
    pub signals: Vec<String>,
}

/// Where health checks may connect unless the policy says otherwise: this host's loopback.
pub const DEFAULT_HEALTH_TARGETS: &[&str] = &["127.0.0.0/8", "::1"];

/// The signals `signal_unit` may send unless the policy says otherwise: what runbooks ask of a
/// service (drain with SIGUSR1/SIGUSR2, reload with SIGHUP, stop with SIGTERM/SIGINT). Not
/// SIGKILL or SIGSTOP, which give the service no say.
pub const DEFAULT_SIGNALS: &[&str] = &["SIGHUP", "SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2"];

impl Default for LocalPolicy {
    fn default() -> Self {
        LocalPolicy {
            units: Vec::new(),
            remove_paths: Vec::new(),
            allow_patch: false,
            allow_reboot: false,
            allow_dedupe_shm: false,
            exec: Vec::new(),
            health_targets: DEFAULT_HEALTH_TARGETS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            signals: DEFAULT_SIGNALS.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

/// The signal names Linux has, as `signal_unit` and the policy spell them.
const SIGNALS: &[&str] = &[
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// "SIGUSR1", "USR1" or "usr1" as "SIGUSR1"; refused when Linux has no such signal.
pub fn signal_name(name: &str) -> Result<&'static str, Refusal> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    SIGNALS
        .iter()
        .find(|known| **known == full)
        .copied()
        .ok_or_else(|| {
            refuse(
                "signal",
                format!("{name:?} is not a signal name (e.g. SIGUSR1 or USR1)"),
            )
        })
}

/// One entry of `policy.health_targets`: an address or a CIDR block, and a port range.
///
/// Written `ADDR[/LEN][:PORTS]`, with an IPv6 address in brackets when a port is given
/// (`[fd00::/8]:8080`); without a port any port matches. PORTS is `*`, `N` or `N-M`. Names are
/// not patterns: a check that names a host is matched by the addresses it resolves to, so a
/// name cannot be pointed somewhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetPattern {
    network: IpAddr,
    prefix: u8,
    ports: (u16, u16),
}

impl TargetPattern {
    /// Parses an entry, saying what is wrong with it.
    pub fn parse(entry: &str) -> Result<TargetPattern, String> {
        let bad = |why: &str| format!("{entry:?} is not a health target ({why})");
        let entry = entry.trim();
        let (address, ports) = if let Some(rest) = entry.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after {
                "" => (inside, None),
                _ => (
                    inside,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("expected ':' and ports after ']'"))?,
                    ),
                ),
            }
        } else if entry.matches(':').count() > 1 {
            // An IPv6 address without brackets: no port.
            (entry, None)
        } else {
            match entry.split_once(':') {
                Some((address, ports)) => (address, Some(ports)),
                None => (entry, None),
            }
        };
        let (network, prefix) = match address.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (address, None),
        };
        let network: IpAddr = network
            .parse()
            .map_err(|_| bad("expected an IP address or a CIDR block; names are not patterns"))?;
        let network = canonical(network);
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| bad(&format!("the prefix length must be 0 to {max}")))?,
            None => max,
        };
        let ports = match ports {
            None | Some("*") => (0, u16::MAX),
            Some(p) => {
                let port = |s: &str| s.parse::<u16>().map_err(|_| bad("bad port"));
                match p.split_once('-') {
                    Some((low, high)) => (port(low)?, port(high)?),
                    None => (port(p)?, port(p)?),
                }
            }
        };
        if ports.0 > ports.1 {
            return Err(bad("the port range is backwards"));
        }
        Ok(TargetPattern {
            network,
            prefix,
            ports,
        })
    }

    /// Whether `address` lies in this block and port range.
    pub fn matches(&self, address: SocketAddr) -> bool {
        let port = address.port();
        if port < self.ports.0 || port > self.ports.1 {
            return false;
        }
        match (canonical(address.ip()), self.network) {
            (IpAddr::V4(ip), IpAddr::V4(network)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(ip) & mask == u32::from(network) & mask
            }
            (IpAddr::V6(ip), IpAddr::V6(network)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(ip) & mask == u128::from(network) & mask
            }
            _ => false,
        }
    }
}

/// The parts of an `http://` health check URL a GET needs (and the policy checks).
#[derive(Debug, PartialEq, Eq)]
pub struct HttpTarget {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with '/'.
    pub path: String,
}

/// Parses `http://host[:port][/path]`. IPv6 hosts are written in brackets.
pub fn parse_http_url(url: &str) -> Result<HttpTarget, String> {
    if url.starts_with("https://") {
        return Err(
            "https:// health checks are not supported; use a tcp check or a command check (e.g. curl) instead"
                .into(),
        );
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    if authority.contains('@') {
        return Err(format!("{url:?}: credentials in URLs are not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed '[' in the host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            None if after.is_empty() => 80,
            None => return Err(format!("{url:?}: unexpected {after:?} after the host")),
        };
        (host.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, p)) => (
                host.to_owned(),
                p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            ),
            None => (authority.to_owned(), 80),
        }
    };
    if host.is_empty() || path.contains(['\r', '\n', ' ']) || host.contains(['\r', '\n', ' ']) {
        return Err(format!("{url:?} is not a usable URL"));
    }
    Ok(HttpTarget { host, port, path })
}

/// An IPv4 address written as IPv6 (`::ffff:169.254.169.254`) is the IPv4 address: it must not
/// slip past an IPv4 rule.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
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
            // Not part of this view: see LocalPolicy::to_proto.
            health_targets: Vec::new(),
            signals: Vec::new(),
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

    pub(crate) fn unit_allowed(&self, unit: &str) -> Result<(), Refusal> {
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

    pub(crate) fn argv_allowed(&self, argv: &[String], what: &str) -> Result<(), Refusal> {
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

    /// Checks an action against this policy: `Ok` if the agent may run it. Each action's rule
    /// is its catalogue entry's (`crate::actions`).
    pub fn check(&self, action: &v1::Action) -> Result<(), Refusal> {
        match &action.kind {
            Some(kind) => actions::check(kind, self),
            None => Err(refuse("action", "the request carries no action")),
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
            ..LocalPolicy::default()
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

    /// Builds a policy from the form reported in facts. Agents report their effective lists;
    /// one older than `health_targets` and `signals` reports them empty, which reads as
    /// "none allowed" here although that agent allowed any.
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
        policy.health_targets = p.health_targets.clone();
        policy.signals = p.signals.clone();
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
        p.health_targets = self.health_targets.clone();
        p.signals = self.signals.clone();
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
        for entry in &self.health_targets {
            TargetPattern::parse(entry).map_err(|e| {
                format!(
                    "policy.health_targets: {e}; write ADDR[/LEN][:PORTS], e.g. \"10.0.0.0/8:8080\" or \"[::1]:*\""
                )
            })?;
        }
        for name in &self.signals {
            signal_name(name).map_err(|r| format!("policy.signals: {}", r.message))?;
        }
        Ok(())
    }

    /// Whether a tcp or http health check may connect to `address`.
    pub fn health_target_allowed(&self, address: SocketAddr) -> bool {
        self.health_targets
            .iter()
            .filter_map(|entry| TargetPattern::parse(entry).ok())
            .any(|pattern| pattern.matches(address))
    }

    /// The refusal of a health check to `host:port`, which resolved to `addresses` (none of
    /// them allowed).
    pub fn health_target_refusal(
        &self,
        host: &str,
        port: u16,
        addresses: &[SocketAddr],
    ) -> Refusal {
        let resolved = match addresses {
            [only] if only.ip().to_string() == host.trim_matches(['[', ']']) => String::new(),
            _ => format!(
                " (resolves to {})",
                addresses
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        refuse(
            "policy.health_targets",
            format!(
                "a health check may not connect to {host}:{port}{resolved}: policy.health_targets allows only [{}]; add the address there if this check is meant",
                self.health_targets.join(", ")
            ),
        )
    }

    /// The lexical part of the health target rule: a host written as an IP address is checked
    /// here; a name is checked by the agent against the addresses it resolves to.
    pub(crate) fn health_literal_allowed(&self, host: &str, port: u32) -> Result<(), Refusal> {
        let (Ok(ip), Ok(port)) = (
            host.trim_matches(['[', ']']).parse::<IpAddr>(),
            u16::try_from(port),
        ) else {
            return Ok(());
        };
        let address = SocketAddr::new(ip, port);
        if self.health_target_allowed(address) {
            Ok(())
        } else {
            Err(self.health_target_refusal(host, port, &[address]))
        }
    }

    /// Checks a signal name against `policy.signals`, returning its canonical name.
    pub fn signal_allowed(&self, signal: &str) -> Result<&'static str, Refusal> {
        let name = signal_name(signal)?;
        let allowed = self
            .signals
            .iter()
            .any(|entry| signal_name(entry).is_ok_and(|e| e == name));
        if allowed {
            Ok(name)
        } else {
            Err(refuse(
                "policy.signals",
                format!(
                    "{name} may not be sent: policy.signals allows only [{}]; add it there if units on this host are meant to receive it",
                    self.signals.join(", ")
                ),
            ))
        }
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
            Some(kind) => actions::check_local(kind, self),
            None => Err(refuse("action", "the request carries no action")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{action::Kind, health::Check};

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
                ..Default::default()
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

    fn tcp(host: &str, port: u32) -> v1::Action {
        v1::Action {
            kind: Some(Kind::Health(v1::Health {
                check: Some(Check::Tcp(v1::TcpCheck {
                    host: host.into(),
                    port,
                })),
            })),
        }
    }

    fn http(url: &str) -> v1::Action {
        v1::Action {
            kind: Some(Kind::Health(v1::Health {
                check: Some(Check::Http(v1::HttpCheck {
                    url: url.into(),
                    expect_status: 0,
                })),
            })),
        }
    }

    fn signal(name: &str) -> v1::Action {
        v1::Action {
            kind: Some(Kind::SignalUnit(v1::SignalUnit {
                unit: "dcos-mesos-slave.service".into(),
                signal: name.into(),
                target: 0,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn target_patterns_parse_and_match() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let p = |s: &str| TargetPattern::parse(s).unwrap();
        assert!(p("127.0.0.0/8").matches(at("127.1.2.3:9")));
        assert!(!p("127.0.0.0/8").matches(at("128.0.0.1:9")));
        assert!(p("::1").matches(at("[::1]:80")));
        assert!(!p("::1").matches(at("127.0.0.1:80")));
        assert!(p("10.0.0.5:8080").matches(at("10.0.0.5:8080")));
        assert!(!p("10.0.0.5:8080").matches(at("10.0.0.5:8081")));
        assert!(p("10.0.0.0/16:8000-8099").matches(at("10.0.3.4:8050")));
        assert!(!p("10.0.0.0/16:8000-8099").matches(at("10.1.3.4:8050")));
        assert!(p("[fd00::/8]:*").matches(at("[fd12::1]:1")));
        assert!(p("0.0.0.0/0").matches(at("8.8.8.8:53")));
        // An IPv4 address in IPv6 clothing is still that IPv4 address.
        assert!(!p("::/0").matches(at("[::ffff:169.254.169.254]:80")));
        assert!(p("169.254.0.0/16").matches(at("[::ffff:169.254.169.254]:80")));
        for bad in [
            "localhost",
            "10.0.0.0/33",
            "10.0.0.1:http",
            "10.0.0.1:9-1",
            "[::1",
            "[::1]x",
            "",
        ] {
            assert!(TargetPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn health_checks_reach_only_the_allowed_targets() {
        let p = LocalPolicy::default();
        assert!(p.check(&tcp("127.0.0.1", 8080)).is_ok());
        assert!(p.check(&tcp("::1", 22)).is_ok());
        assert!(p.check(&http("http://127.0.0.1:9/health")).is_ok());
        assert!(p.check(&http("http://[::1]/")).is_ok());
        // Names are judged by what they resolve to, in the agent.
        assert!(p.check(&tcp("localhost", 80)).is_ok());
        for refused in [
            tcp("169.254.169.254", 80),
            tcp("10.0.0.1", 2379),
            tcp("::ffff:169.254.169.254", 80),
            http("http://169.254.169.254/latest/meta-data/"),
            http("http://[fd00::1]:8080/admin"),
        ] {
            let refusal = p.check(&refused).unwrap_err();
            assert_eq!(refusal.rule, "policy.health_targets", "{refused:?}");
            assert!(
                refusal.message.contains("127.0.0.0/8"),
                "{}",
                refusal.message
            );
        }
        let mut wider = LocalPolicy::default();
        wider.health_targets.push("10.0.0.0/8:2379".into());
        assert!(wider.check(&tcp("10.0.0.1", 2379)).is_ok());
        assert!(wider.check(&tcp("10.0.0.1", 22)).is_err());
        wider.health_targets.push("metadata.internal".into());
        assert!(
            wider
                .validate()
                .unwrap_err()
                .contains("policy.health_targets")
        );
    }

    #[test]
    fn only_the_allowed_signals_may_be_sent() {
        let mut p = LocalPolicy::from(policy());
        for ok in ["SIGUSR1", "USR2", "hup", "SIGTERM", "int"] {
            assert!(p.check(&signal(ok)).is_ok(), "{ok}");
        }
        for (name, rule) in [
            ("SIGKILL", "policy.signals"),
            ("STOP", "policy.signals"),
            ("SIGSEGV", "policy.signals"),
            ("SIGNOPE", "signal"),
            ("9", "signal"),
        ] {
            assert_eq!(p.check(&signal(name)).unwrap_err().rule, rule, "{name}");
        }
        // The unit rule still comes first.
        let mut other = signal("SIGUSR1");
        if let Some(Kind::SignalUnit(s)) = other.kind.as_mut() {
            s.unit = "sshd.service".into();
        }
        assert_eq!(p.check(&other).unwrap_err().rule, "policy.units");
        p.signals = vec!["SIGKILL".into()];
        assert!(p.check(&signal("KILL")).is_ok());
        assert!(p.check(&signal("SIGUSR1")).is_err());
        p.signals.push("SIGWHATEVER".into());
        assert!(p.validate().unwrap_err().contains("policy.signals"));
    }
}
