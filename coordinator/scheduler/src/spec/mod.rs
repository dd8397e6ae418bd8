//! Campaign files: the TOML an operator writes by hand, parsed into a [`CampaignSpec`].
//!
//! Parsing is strict: an unknown key, a field that does not belong to a step's action, an
//! unknown `{{variable}}` or a manager concurrency other than one is refused with the file name,
//! the line and the field, e.g.
//! `swarm.toml:12: field concurrency.manager: managers are always taken one at a time; 2 is not allowed`.
//! Every key is documented in `examples/README.md`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::action::StepAction;
use crate::conditions::Condition;
use crate::fleet::{HostView, Role};
use crate::window::{MAX_WINDOW_MS, Window, WindowTime};

mod notify;
mod schedule;
mod step;
pub use notify::{NotifySpec, WebhookRef};
use schedule::RawSchedule;
use step::RawStep;

/// A campaign file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    /// The file name given to [`CampaignSpec::parse`].
    pub source_name: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The dotted field path, e.g. `concurrency.manager` or `manager.before[0].unit`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source_name)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(field) = &self.field {
            write!(f, "field {field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The phase a step belongs to, in the order a host goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Checks that must pass before the host is taken (nothing has changed yet).
    PreGate,
    /// Preparation: backups, drains (host state Entering).
    Before,
    /// The maintenance itself (host state Maintenance).
    Main,
    /// Bringing it back: undrain, start (host state Leaving).
    After,
    /// Checks that must pass before the slot is released.
    PostGate,
}

impl Phase {
    /// Spelling used in plans, action ids and `CampaignPlan.steps.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::PreGate => "pre_gate",
            Phase::Before => "before",
            Phase::Main => "main",
            Phase::After => "after",
            Phase::PostGate => "post_gate",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a step runs when it is not the host being serviced.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnHost {
    /// A connected, healthy host of this role in the same cluster, other than the one being
    /// serviced and not itself out of service (`on = "role:manager"`).
    Role(Role),
    /// One named host, by id or hostname (`on = "host:NAME"`).
    Host(String),
}

impl fmt::Display for OnHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnHost::Role(role) => write!(f, "role:{role}"),
            OnHost::Host(name) => write!(f, "host:{name}"),
        }
    }
}

/// One step: an agent action with its timeout, retries and where it runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StepSpec {
    pub name: Option<String>,
    /// The action with `{{variables}}` still in place.
    pub action: StepAction,
    pub timeout_ms: i64,
    pub on: Option<OnHost>,
    /// Automatic re-runs after a failure before the host counts as failed.
    pub retries: u32,
    pub retry_delay_ms: i64,
    /// Line in the campaign file, for messages.
    pub line: usize,
}

impl StepSpec {
    /// What the operator calls this step: its `name`, or the action's name.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.action.name().to_owned())
    }
}

/// How many workers may be out of service at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    Count(u32),
    /// A percentage of the campaign's selected workers, rounded up, at least one.
    Percent(u32),
}

impl Concurrency {
    /// The number of slots for a pool of `total` hosts.
    pub fn slots(self, total: usize) -> usize {
        match self {
            Concurrency::Count(n) => n.max(1) as usize,
            Concurrency::Percent(p) => (total * p as usize).div_ceil(100).max(1),
        }
    }
}

impl fmt::Display for Concurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Concurrency::Count(n) => write!(f, "{n}"),
            Concurrency::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// How many hosts may fail before a campaign pauses: a count, or a percentage of the hosts it
/// selects (rounded down, so "10%" of 5 hosts is 0). Stored as a number or as "N%".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureBudget {
    Count(u32),
    Percent(u32),
}

impl FailureBudget {
    /// The failures allowed for a campaign of `selected` hosts.
    pub fn allowed(self, selected: usize) -> u32 {
        match self {
            FailureBudget::Count(n) => n,
            FailureBudget::Percent(p) => {
                u32::try_from(selected.saturating_mul(p as usize) / 100).unwrap_or(u32::MAX)
            }
        }
    }
}

impl fmt::Display for FailureBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureBudget::Count(n) => write!(f, "{n}"),
            FailureBudget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for FailureBudget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FailureBudget::Count(n) => s.serialize_u32(*n),
            FailureBudget::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for FailureBudget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u32),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) => Ok(FailureBudget::Count(n)),
            Raw::Text(t) => t
                .strip_suffix('%')
                .and_then(|p| p.trim().parse().ok())
                .filter(|p| *p <= 100)
                .map(FailureBudget::Percent)
                .ok_or_else(|| serde::de::Error::custom(format!("{t:?} is not a failure budget"))),
        }
    }
}

/// Which hosts a campaign covers. Every criterion given must hold (they are ANDed).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Selector {
    pub roles: Vec<Role>,
    pub labels: BTreeMap<String, String>,
    /// Host ids or hostnames; empty means any.
    pub hosts: Vec<String>,
    /// Conditions on the host's facts (`[select] when`), read when a run starts.
    #[serde(default)]
    pub when: Vec<Condition>,
}

impl Selector {
    /// Whether `host` is selected.
    pub fn matches(&self, host: &HostView) -> bool {
        self.matches_ignoring_facts(host) && self.facts_hold(host)
    }

    /// Whether roles, labels and names select `host` (what the facts are not asked about).
    pub fn matches_ignoring_facts(&self, host: &HostView) -> bool {
        self.roles.contains(&host.role)
            && self
                .labels
                .iter()
                .all(|(k, v)| host.labels.get(k) == Some(v))
            && (self.hosts.is_empty() || self.hosts.iter().any(|n| host.is_named(n)))
    }

    /// Whether the host's facts hold every `when` condition.
    pub fn facts_hold(&self, host: &HostView) -> bool {
        self.when.iter().all(|c| c.holds(host.facts.as_ref()))
    }
}

/// Steps of one role, per phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoleSteps {
    pub before: Vec<StepSpec>,
    pub main: Vec<StepSpec>,
    pub after: Vec<StepSpec>,
}

/// A parsed, checked campaign file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CampaignSpec {
    pub name: String,
    pub description: String,
    pub source_name: String,
    pub select: Selector,
    /// Roles in the order they are serviced; a later role starts when the earlier is finished.
    pub order: Vec<Role>,
    pub worker_concurrency: Concurrency,
    pub max_failures: FailureBudget,
    /// Minimum time between releasing a host and starting the next of the same role.
    pub dwell_ms: i64,
    /// The label whose value `"true"` marks the cluster leader (serviced last of its managers).
    pub leader_label: String,
    pub windows: Vec<Window>,
    pub pre_gates: Vec<StepSpec>,
    pub post_gates: Vec<StepSpec>,
    pub worker: RoleSteps,
    pub manager: RoleSteps,
    /// When the campaign runs by itself (`schedule = { cron, timezone }`); `None` for a
    /// campaign run by hand.
    #[serde(default)]
    pub schedule: Option<crate::schedule::Schedule>,
    /// `[notify]`: which configured webhooks hear of this campaign (absent: every one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifySpec>,
}

impl CampaignSpec {
    /// The steps of `role`.
    pub fn role_steps(&self, role: Role) -> &RoleSteps {
        match role {
            Role::Worker => &self.worker,
            Role::Manager => &self.manager,
        }
    }

    /// Every step a host of `role` goes through, in order, with its phase and index in it.
    pub fn flat_steps(&self, role: Role) -> Vec<(Phase, usize, &StepSpec)> {
        let steps = self.role_steps(role);
        let mut out = Vec::new();
        for (phase, list) in [
            (Phase::PreGate, &self.pre_gates),
            (Phase::Before, &steps.before),
            (Phase::Main, &steps.main),
            (Phase::After, &steps.after),
            (Phase::PostGate, &self.post_gates),
        ] {
            out.extend(list.iter().enumerate().map(|(i, s)| (phase, i, s)));
        }
        out
    }

    /// Parses and checks a campaign file. `source_name` is used in error messages only.
    pub fn parse(text: &str, source_name: &str) -> Result<CampaignSpec, SpecError> {
        let cx = Cx { text, source_name };
        let raw: RawSpec = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| cx.line(s.start));
            SpecError {
                source_name: source_name.to_owned(),
                line,
                field: None,
                message: e.message().trim().to_owned(),
            }
        })?;
        cx.build(raw)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw TOML shapes. Every table refuses unknown keys so a typo is an error, not a silent default.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Spanned<String>,
    description: Option<String>,
    select: Option<RawSelect>,
    order: Option<Spanned<Vec<Spanned<String>>>>,
    concurrency: Option<RawConcurrency>,
    max_failures: Option<Spanned<toml::Value>>,
    dwell: Option<Spanned<String>>,
    leader_label: Option<Spanned<String>>,
    #[serde(default)]
    window: Vec<Spanned<RawWindow>>,
    gate: Option<RawGates>,
    before: Option<Vec<Spanned<RawStep>>>,
    steps: Option<Vec<Spanned<RawStep>>>,
    after: Option<Vec<Spanned<RawStep>>>,
    worker: Option<RawRoleSteps>,
    manager: Option<RawRoleSteps>,
    schedule: Option<Spanned<RawSchedule>>,
    notify: Option<notify::RawNotify>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelect {
    roles: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    when: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConcurrency {
    worker: Option<Spanned<toml::Value>>,
    manager: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNanos {
    nanoseconds: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnavailability {
    start: RawNanos,
    duration: RawNanos,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    start: Option<Spanned<toml::Value>>,
    duration: Option<Spanned<String>>,
    days: Option<Vec<Spanned<String>>>,
    start_time: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    unavailability: Option<Spanned<RawUnavailability>>,
    #[serde(default)]
    hosts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGates {
    #[serde(default)]
    pre: Vec<Spanned<RawStep>>,
    #[serde(default)]
    post: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoleSteps {
    before: Option<Vec<Spanned<RawStep>>>,
    steps: Option<Vec<Spanned<RawStep>>>,
    after: Option<Vec<Spanned<RawStep>>>,
}

/// Parsing context: the text (to turn spans into lines) and the file name.
struct Cx<'a> {
    text: &'a str,
    source_name: &'a str,
}

impl Cx<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn err(
        &self,
        span: Option<std::ops::Range<usize>>,
        field: &str,
        message: impl Into<String>,
    ) -> SpecError {
        SpecError {
            source_name: self.source_name.to_owned(),
            line: span.map(|s| self.line(s.start)),
            field: (!field.is_empty()).then(|| field.to_owned()),
            message: message.into(),
        }
    }

    fn duration(&self, value: &Spanned<String>, field: &str) -> Result<i64, SpecError> {
        let d = humantime::parse_duration(value.get_ref().trim()).map_err(|e| {
            self.err(
                Some(value.span()),
                field,
                format!(
                    "{:?} is not a duration ({e}); write e.g. \"90s\", \"10m\" or \"1h 30m\"",
                    value.get_ref()
                ),
            )
        })?;
        i64::try_from(d.as_millis())
            .map_err(|_| self.err(Some(value.span()), field, "duration is too long"))
    }

    fn build(&self, raw: RawSpec) -> Result<CampaignSpec, SpecError> {
        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty() {
            return Err(self.err(Some(raw.name.span()), "name", "must not be empty"));
        }

        let select = match raw.select {
            None => Selector {
                roles: vec![Role::Worker, Role::Manager],
                labels: BTreeMap::new(),
                hosts: Vec::new(),
                when: Vec::new(),
            },
            Some(s) => {
                let roles = match s.roles {
                    None => vec![Role::Worker, Role::Manager],
                    Some(list) => {
                        let mut roles = Vec::new();
                        for r in list {
                            let role = self.role(&r, "select.roles")?;
                            if !roles.contains(&role) {
                                roles.push(role);
                            }
                        }
                        if roles.is_empty() {
                            return Err(self.err(
                                None,
                                "select.roles",
                                "selects no role; leave it out to select both",
                            ));
                        }
                        roles
                    }
                };
                Selector {
                    roles,
                    labels: s.labels,
                    hosts: s.hosts,
                    when: self.conditions(s.when)?,
                }
            }
        };

        let order = match raw.order {
            None => vec![Role::Worker, Role::Manager],
            Some(list) => {
                let span = list.span();
                let mut order = Vec::new();
                for r in list.into_inner() {
                    let role = self.role(&r, "order")?;
                    if order.contains(&role) {
                        return Err(self.err(
                            Some(r.span()),
                            "order",
                            format!("{role} is listed twice"),
                        ));
                    }
                    order.push(role);
                }
                for role in &select.roles {
                    if !order.contains(role) {
                        return Err(self.err(
                            Some(span.clone()),
                            "order",
                            format!("selected role {role} is missing from the order"),
                        ));
                    }
                }
                order
            }
        };

        let mut worker_concurrency = Concurrency::Count(1);
        if let Some(c) = raw.concurrency {
            if let Some(w) = c.worker {
                worker_concurrency = self.worker_concurrency(&w)?;
            }
            if let Some(m) = c.manager {
                let ok = matches!(m.get_ref(), toml::Value::Integer(1))
                    || matches!(m.get_ref(), toml::Value::String(s) if s.trim() == "1");
                if !ok {
                    let shown = match m.get_ref() {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    return Err(self.err(
                        Some(m.span()),
                        "concurrency.manager",
                        format!("managers are always taken one at a time; {shown} is not allowed"),
                    ));
                }
            }
        }

        let max_failures = match &raw.max_failures {
            None => FailureBudget::Count(0),
            Some(v) => self.failure_budget(v)?,
        };
        let dwell_ms = match &raw.dwell {
            None => 0,
            Some(d) => self.duration(d, "dwell")?,
        };
        let leader_label = match raw.leader_label {
            None => "leader".to_owned(),
            Some(l) if l.get_ref().trim().is_empty() => {
                return Err(self.err(Some(l.span()), "leader_label", "must not be empty"));
            }
            Some(l) => l.into_inner(),
        };

        let mut windows = Vec::new();
        for (i, w) in raw.window.into_iter().enumerate() {
            windows.push(self.window(w, &format!("window[{i}]"))?);
        }

        let (mut pre_gates, mut post_gates) = (Vec::new(), Vec::new());
        if let Some(g) = raw.gate {
            for (i, s) in g.pre.into_iter().enumerate() {
                pre_gates.push(self.gate(s, &format!("gate.pre[{i}]"))?);
            }
            for (i, s) in g.post.into_iter().enumerate() {
                post_gates.push(self.gate(s, &format!("gate.post[{i}]"))?);
            }
        }

        let common_before = self.steps(raw.before, "before")?;
        let common_main = self.steps(raw.steps, "steps")?;
        let common_after = self.steps(raw.after, "after")?;
        let mut roles = BTreeMap::new();
        for (role, rs) in [(Role::Worker, raw.worker), (Role::Manager, raw.manager)] {
            let prefix = role.as_str();
            let mut steps = RoleSteps {
                before: common_before.clone(),
                main: common_main.clone(),
                after: common_after.clone(),
            };
            if let Some(rs) = rs {
                if rs.before.is_some() {
                    steps.before = self.steps(rs.before, &format!("{prefix}.before"))?;
                }
                if rs.steps.is_some() {
                    steps.main = self.steps(rs.steps, &format!("{prefix}.steps"))?;
                }
                if rs.after.is_some() {
                    steps.after = self.steps(rs.after, &format!("{prefix}.after"))?;
                }
            }
            roles.insert(role, steps);
        }
        for role in &select.roles {
            let s = &roles[role];
            if s.before.is_empty() && s.main.is_empty() && s.after.is_empty() {
                return Err(self.err(
                    None,
                    "",
                    format!("selected role {role} has no steps; add [[steps]] or [[{role}.steps]]"),
                ));
            }
        }

        let notify = raw.notify.map(|n| self.notify(n)).transpose()?;
        let mut roles = roles.into_iter();
        let worker = roles.next().map(|(_, s)| s).unwrap_or_default();
        let manager = roles.next().map(|(_, s)| s).unwrap_or_default();
        let schedule = raw.schedule.map(|s| self.schedule(s)).transpose()?;
        Ok(CampaignSpec {
            name,
            description: raw.description.unwrap_or_default(),
            source_name: self.source_name.to_owned(),
            select,
            order,
            worker_concurrency,
            max_failures,
            dwell_ms,
            leader_label,
            windows,
            pre_gates,
            post_gates,
            worker,
            manager,
            schedule,
            notify,
        })
    }

    fn role(&self, r: &Spanned<String>, field: &str) -> Result<Role, SpecError> {
        Role::parse(r.get_ref().trim()).ok_or_else(|| {
            self.err(
                Some(r.span()),
                field,
                format!(
                    "unknown role {:?}; roles are \"worker\" and \"manager\"",
                    r.get_ref()
                ),
            )
        })
    }

    fn failure_budget(&self, v: &Spanned<toml::Value>) -> Result<FailureBudget, SpecError> {
        let bad = |what: String| self.err(Some(v.span()), "max_failures", what);
        match v.get_ref() {
            toml::Value::Integer(n) => u32::try_from(*n)
                .map(FailureBudget::Count)
                .map_err(|_| bad(format!("{n} is not a count of failures (0 or more)"))),
            toml::Value::String(s) => match s.trim().strip_suffix('%') {
                Some(p) => match p.trim().parse::<u32>() {
                    Ok(p) if p <= 100 => Ok(FailureBudget::Percent(p)),
                    _ => Err(bad(format!(
                        "{s:?} is not a percentage between 0% and 100%"
                    ))),
                },
                None => Err(bad(format!(
                    "{s:?} is neither a count of failures nor a percentage like \"10%\""
                ))),
            },
            other => Err(bad(format!(
                "{other} is neither a count of failures nor a percentage like \"10%\""
            ))),
        }
    }

    fn worker_concurrency(&self, w: &Spanned<toml::Value>) -> Result<Concurrency, SpecError> {
        let field = "concurrency.worker";
        let bad = |what: String| self.err(Some(w.span()), field, what);
        match w.get_ref() {
            toml::Value::Integer(n) if *n >= 1 => u32::try_from(*n)
                .map(Concurrency::Count)
                .map_err(|_| bad(format!("{n} is too large"))),
            toml::Value::Integer(n) => Err(bad(format!(
                "{n} would never take a worker; use 1 or more, or a percentage like \"25%\""
            ))),
            toml::Value::String(s) => {
                let t = s.trim();
                if let Some(p) = t.strip_suffix('%') {
                    match p.trim().parse::<u32>() {
                        Ok(p) if (1..=100).contains(&p) => Ok(Concurrency::Percent(p)),
                        _ => Err(bad(format!(
                            "{s:?} is not a percentage between 1% and 100%"
                        ))),
                    }
                } else {
                    match t.parse::<u32>() {
                        Ok(n) if n >= 1 => Ok(Concurrency::Count(n)),
                        _ => Err(bad(format!(
                            "{s:?} is neither a number of workers nor a percentage like \"25%\""
                        ))),
                    }
                }
            }
            other => Err(bad(format!(
                "{other} is neither a number of workers nor a percentage like \"25%\""
            ))),
        }
    }

    fn window(&self, w: Spanned<RawWindow>, field: &str) -> Result<Window, SpecError> {
        let span = w.span();
        let w = w.into_inner();
        let absolute = w.start.is_some();
        let dcos = w.unavailability.is_some();
        let weekly = w.days.is_some() || w.start_time.is_some();
        if [absolute, dcos, weekly].iter().filter(|b| **b).count() != 1 {
            return Err(self.err(
                Some(span),
                field,
                "give exactly one of: start + duration (once), unavailability (DC/OS form), \
                 or days + start_time + duration (weekly)",
            ));
        }
        let time = if let Some(u) = w.unavailability {
            if w.duration.is_some() || w.timezone.is_some() {
                return Err(self.err(
                    Some(u.span()),
                    field,
                    "the DC/OS unavailability form carries its own start and duration",
                ));
            }
            let u_span = u.span();
            let u = u.into_inner();
            let duration_ms = u.duration.nanoseconds / 1_000_000;
            if duration_ms <= 0 || duration_ms > MAX_WINDOW_MS {
                return Err(self.err(
                    Some(u_span),
                    &format!("{field}.unavailability.duration"),
                    "must be more than zero and at most 7 days",
                ));
            }
            WindowTime::Absolute {
                start_ms: u.start.nanoseconds.div_euclid(1_000_000),
                duration_ms,
            }
        } else {
            let Some(duration) = &w.duration else {
                return Err(self.err(Some(span), field, "needs a duration, e.g. \"4h\""));
            };
            let duration_ms = self.duration(duration, &format!("{field}.duration"))?;
            if duration_ms <= 0 || duration_ms > MAX_WINDOW_MS {
                return Err(self.err(
                    Some(duration.span()),
                    &format!("{field}.duration"),
                    "must be more than zero and at most 7 days",
                ));
            }
            if let Some(start) = w.start {
                if w.timezone.is_some() {
                    return Err(self.err(
                        Some(start.span()),
                        &format!("{field}.timezone"),
                        "only weekly windows take a time zone; an absolute start carries its offset",
                    ));
                }
                let text = match start.get_ref() {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Datetime(d) => d.to_string(),
                    other => other.to_string(),
                };
                let t = chrono::DateTime::parse_from_rfc3339(text.trim()).map_err(|e| {
                    self.err(
                        Some(start.span()),
                        &format!("{field}.start"),
                        format!(
                            "{text:?} is not an RFC 3339 time with an offset ({e}); write e.g. \"2025-06-01T22:00:00Z\""
                        ),
                    )
                })?;
                WindowTime::Absolute {
                    start_ms: t.timestamp_millis(),
                    duration_ms,
                }
            } else {
                let Some(days) = w.days else {
                    return Err(self.err(
                        Some(span),
                        &format!("{field}.days"),
                        "a weekly window needs days, e.g. [\"sat\", \"sun\"]",
                    ));
                };
                let mut day_numbers = Vec::new();
                for d in &days {
                    let n = parse_day(d.get_ref()).ok_or_else(|| {
                        self.err(
                            Some(d.span()),
                            &format!("{field}.days"),
                            format!(
                                "{:?} is not a day; use mon, tue, wed, thu, fri, sat, sun",
                                d.get_ref()
                            ),
                        )
                    })?;
                    if !day_numbers.contains(&n) {
                        day_numbers.push(n);
                    }
                }
                if day_numbers.is_empty() {
                    return Err(self.err(Some(span), &format!("{field}.days"), "lists no day"));
                }
                let Some(start_time) = &w.start_time else {
                    return Err(self.err(
                        Some(span),
                        &format!("{field}.start_time"),
                        "a weekly window needs start_time, e.g. \"01:00\"",
                    ));
                };
                let start_minute = parse_hhmm(start_time.get_ref()).ok_or_else(|| {
                    self.err(
                        Some(start_time.span()),
                        &format!("{field}.start_time"),
                        format!(
                            "{:?} is not a time of day like \"01:30\"",
                            start_time.get_ref()
                        ),
                    )
                })?;
                let timezone = match w.timezone {
                    None => "UTC".to_owned(),
                    Some(tz) => {
                        if tz.get_ref().parse::<chrono_tz::Tz>().is_err() {
                            return Err(self.err(
                                Some(tz.span()),
                                &format!("{field}.timezone"),
                                format!(
                                    "{:?} is not an IANA time zone such as \"Europe/Paris\" or \"UTC\"",
                                    tz.get_ref()
                                ),
                            ));
                        }
                        tz.into_inner()
                    }
                };
                WindowTime::Weekly {
                    days: day_numbers,
                    start_minute,
                    duration_ms,
                    timezone,
                }
            }
        };
        Ok(Window {
            time,
            hosts: w.hosts,
        })
    }
}

fn parse_day(text: &str) -> Option<u8> {
    let t = text.trim().to_ascii_lowercase();
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let long = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    days.iter()
        .position(|d| *d == t)
        .or_else(|| long.iter().position(|d| *d == t))
        .map(|i| i as u8)
}

fn parse_hhmm(text: &str) -> Option<u32> {
    let (h, m) = text.trim().split_once(':')?;
    let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pitcrew_proto::actions::health::{Health, HealthCheck};
    use pitcrew_proto::actions::signal_unit::SignalWait;

    const MINIMAL: &str = r#"
name = "patch"
[[steps]]
action = "patch"
"#;

    fn parse(text: &str) -> Result<CampaignSpec, SpecError> {
        CampaignSpec::parse(text, "swarm.toml")
    }

    #[test]
    fn defaults_are_the_runbook_ones() {
        let spec = parse(MINIMAL).unwrap();
        assert_eq!(spec.order, vec![Role::Worker, Role::Manager]);
        assert_eq!(spec.worker_concurrency, Concurrency::Count(1));
        assert_eq!(spec.max_failures, FailureBudget::Count(0));
        assert_eq!(spec.leader_label, "leader");
        assert!(spec.windows.is_empty());
        assert_eq!(spec.worker.main.len(), 1);
        assert_eq!(
            spec.manager.main.len(),
            1,
            "common steps apply to every role"
        );
    }

    #[test]
    fn manager_concurrency_other_than_one_names_line_and_field() {
        let text =
            "name = \"x\"\n[concurrency]\nworker = 2\nmanager = 2\n[[steps]]\naction = \"patch\"\n";
        let err = parse(text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "swarm.toml:4: field concurrency.manager: managers are always taken one at a time; 2 is not allowed"
        );
    }

    #[test]
    fn worker_concurrency_takes_a_number_or_a_percentage() {
        let with = |v: &str| {
            parse(&format!(
                "name = \"x\"\n[concurrency]\nworker = {v}\n[[steps]]\naction = \"patch\"\n"
            ))
        };
        assert_eq!(with("3").unwrap().worker_concurrency, Concurrency::Count(3));
        assert_eq!(
            with("\"25%\"").unwrap().worker_concurrency,
            Concurrency::Percent(25)
        );
        assert_eq!(Concurrency::Percent(25).slots(10), 3);
        assert_eq!(Concurrency::Percent(1).slots(3), 1);
        assert!(
            with("0")
                .unwrap_err()
                .to_string()
                .contains("concurrency.worker")
        );
        assert!(with("\"150%\"").is_err());
    }

    #[test]
    fn unknown_field_names_its_line() {
        let text = "name = \"x\"\n[[steps]]\naction = \"patch\"\npackges = [\"curl\"]\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.line, Some(4));
        assert!(err.to_string().contains("packges"), "{err}");
    }

    #[test]
    fn unknown_action_and_misplaced_field_are_refused() {
        let err = parse("name = \"x\"\n[[steps]]\naction = \"format_disk\"\n").unwrap_err();
        assert_eq!(err.line, Some(3));
        assert!(err.to_string().contains("unknown action \"format_disk\""));
        let err = parse("name = \"x\"\n[[steps]]\naction = \"reboot\"\nunit = \"a.service\"\n")
            .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("steps[0].unit"));
        assert_eq!(err.line, Some(4));
    }

    #[test]
    fn a_signal_can_wait_for_its_effect_within_the_step_s_timeout() {
        let step = |fields: &str| {
            parse(&format!(
                "name = \"x\"\n[[steps]]\naction = \"signal_unit\"\nunit = \"a.service\"\nsignal = \"SIGUSR1\"\n{fields}"
            ))
        };
        let spec = step("wait = \"exit\"\nwait_timeout = \"5m\"\n").unwrap();
        let drain = &spec.worker.main[0];
        assert!(matches!(
            &drain.action,
            StepAction::SignalUnit(s) if s.wait == SignalWait::Exit && s.wait_seconds == 300
        ));
        // No timeout given: the wait and a margin fit in the default.
        assert_eq!(drain.timeout_ms, 310_000);
        // The default wait (60 s) fits in the default timeout of a signal (2 min).
        let spec = step("wait = \"inactive\"\n").unwrap();
        assert_eq!(spec.worker.main[0].timeout_ms, 120_000);

        let err = step("wait = \"exit\"\nwait_timeout = \"5m\"\ntimeout = \"5m\"\n").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("steps[0].timeout"));
        assert_eq!(err.line, Some(8));
        assert!(err.message.contains("longer than the wait (300s)"), "{err}");
        let err = step("wait = \"drained\"\n").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("steps[0].wait"));
        assert!(err.message.contains("\"exit\""), "{err}");
        let err = step("wait_timeout = \"5m\"\n").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("steps[0].wait_timeout"));
        let err = step("wait = \"exit\"\nwait_timeout = \"100ms\"\n").unwrap_err();
        assert!(err.message.contains("at least 1s"), "{err}");
    }

    #[test]
    fn unknown_template_variable_is_an_error() {
        let text = "name = \"x\"\n[[steps]]\naction = \"exec\"\nargv = [\"/bin/drain\", \"{{host.name}}\"]\n";
        let err = parse(text).unwrap_err();
        assert!(
            err.to_string().contains("unknown variable {{host.name}}"),
            "{err}"
        );
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn steps_are_flattened_in_phase_order_with_role_overrides() {
        let text = r#"
name = "swarm"
order = ["manager", "worker"]
[[gate.pre]]
action = "health"
command = ["/usr/local/bin/lab-health"]
[[gate.post]]
action = "health"
unit_active = "docker.service"
[[steps]]
action = "patch"
[[manager.before]]
action = "exec"
argv = ["/usr/local/bin/ucp-backup"]
[[manager.before]]
action = "exec"
on = "role:manager"
argv = ["/usr/local/bin/swarm-node", "update", "--availability", "drain", "{{host.hostname}}"]
timeout = "5m"
"#;
        let spec = parse(text).unwrap();
        assert_eq!(spec.order, vec![Role::Manager, Role::Worker]);
        let phases: Vec<Phase> = spec
            .flat_steps(Role::Manager)
            .iter()
            .map(|(p, _, _)| *p)
            .collect();
        assert_eq!(
            phases,
            vec![
                Phase::PreGate,
                Phase::Before,
                Phase::Before,
                Phase::Main,
                Phase::PostGate
            ]
        );
        assert_eq!(spec.flat_steps(Role::Worker).len(), 3);
        assert_eq!(spec.manager.before[1].on, Some(OnHost::Role(Role::Manager)));
        assert_eq!(spec.manager.before[1].timeout_ms, 300_000);
    }

    #[test]
    fn a_gate_must_be_a_check() {
        let text =
            "name = \"x\"\n[[gate.post]]\naction = \"reboot\"\n[[steps]]\naction = \"patch\"\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("gate.post[0].action"));
    }

    #[test]
    fn windows_in_all_three_forms() {
        let text = r#"
name = "w"
[[window]]
start = "2025-06-01T22:00:00Z"
duration = "4h"
[[window]]
start = 2025-06-08T22:00:00+02:00
duration = "1h"
[[window]]
days = ["sat", "sunday"]
start_time = "01:30"
duration = "3h"
timezone = "Europe/Paris"
[[window]]
hosts = ["10.0.2.107"]
unavailability = { start = { nanoseconds = 1 }, duration = { nanoseconds = 3600000000000 } }
[[steps]]
action = "patch"
"#;
        let spec = parse(text).unwrap();
        assert_eq!(spec.windows.len(), 4);
        assert_eq!(
            spec.windows[3].time,
            WindowTime::Absolute {
                start_ms: 0,
                duration_ms: 3_600_000
            }
        );
        assert_eq!(spec.windows[3].hosts, vec!["10.0.2.107".to_owned()]);
        match &spec.windows[2].time {
            WindowTime::Weekly {
                days, start_minute, ..
            } => {
                assert_eq!(days, &vec![5, 6]);
                assert_eq!(*start_minute, 90);
            }
            other => panic!("expected a weekly window, got {other:?}"),
        }
        let bad = "name = \"w\"\n[[window]]\ndays = [\"sat\"]\nstart_time = \"01:00\"\nduration = \"1h\"\ntimezone = \"Mars/Olympus\"\n[[steps]]\naction = \"patch\"\n";
        let err = parse(bad).unwrap_err();
        assert_eq!(err.line, Some(6));
        assert_eq!(err.field.as_deref(), Some("window[0].timezone"));
    }

    #[test]
    fn a_selected_role_without_steps_is_refused() {
        let text = "name = \"x\"\n[[manager.steps]]\naction = \"patch\"\n";
        let err = parse(text).unwrap_err();
        assert!(
            err.to_string()
                .contains("selected role worker has no steps")
        );
    }

    #[test]
    fn health_checks_exactly_one_thing() {
        let text = "name = \"x\"\n[[steps]]\naction = \"health\"\ntcp = \"localhost:2377\"\nunit_active = \"docker.service\"\n";
        assert!(parse(text).unwrap_err().to_string().contains("exactly one"));
        let text = "name = \"x\"\n[[steps]]\naction = \"health\"\nhttp = \"http://localhost/_ping\"\nexpect_status = 204\n";
        let spec = parse(text).unwrap();
        assert_eq!(
            spec.worker.main[0].action,
            StepAction::Health(Health {
                check: HealthCheck::Http {
                    url: "http://localhost/_ping".into(),
                    expect_status: 204
                }
            })
        );
    }

    /// A check every agent would refuse is refused in the file, at its line.
    #[test]
    fn an_https_health_check_is_refused_where_it_is_written() {
        let text =
            "name = \"x\"\n[[steps]]\naction = \"health\"\nhttp = \"https://localhost/_ping\"\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("steps[0].http"));
        assert_eq!(err.line, Some(4));
        assert!(
            err.message
                .contains("https:// health checks are not supported"),
            "{err}"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_field_and_line() {
        let text = "name = \"x\"\n[[steps]]\naction = \"remove_path\"\npath = \"/var/x\"\nrecursive = \"yes\"\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("steps[0].recursive"));
        assert_eq!(err.line, Some(5));
        assert!(
            err.message.contains("must be true or false, not a string"),
            "{err}"
        );
    }
}
