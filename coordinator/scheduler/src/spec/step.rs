//! Campaign steps: the keys every step has, read here, and the fields of the step's action,
//! which the action reads and checks itself through [`StepFields`] (the action catalogue,
//! `pitcrew_proto::actions`). This file knows no action by name except that gates are checks.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use pitcrew_proto::actions::{STEP_ACTION_NAMES, StepAction, StepFields, WAIT_MARGIN};
use serde::Deserialize;
use toml::{Spanned, Value};

use super::{Cx, OnHost, SpecError, StepSpec};
use crate::action;
use crate::fleet::Role;

/// The keys every step has, whatever its action.
const COMMON_FIELDS: &[&str] = &["action", "name", "timeout", "on", "retries", "retry_delay"];

/// The actions a gate may run: checks, which change nothing.
const GATE_ACTIONS: &[&str] = &["health", "exec"];

/// A step as written: every key with its value and where it is.
#[derive(Deserialize)]
#[serde(transparent)]
pub(super) struct RawStep(BTreeMap<String, Spanned<Value>>);

/// One step's keys, read for its action with the file's lines and the step's field path.
struct StepReader<'a> {
    cx: &'a Cx<'a>,
    raw: &'a RawStep,
    /// The step's field path, e.g. `manager.before[0]`.
    field: &'a str,
    span: Range<usize>,
    action: &'a str,
}

impl StepReader<'_> {
    fn path(&self, name: &str) -> String {
        format!("{}.{name}", self.field)
    }

    fn typed<T>(
        &self,
        name: &str,
        expected: &str,
        read: impl FnOnce(&Value) -> Option<T>,
    ) -> Result<Option<T>, SpecError> {
        match self.raw.0.get(name) {
            None => Ok(None),
            Some(value) => read(value.get_ref()).map(Some).ok_or_else(|| {
                self.invalid(
                    name,
                    format!("must be {expected}, not {}", describe_type(value.get_ref())),
                )
            }),
        }
    }
}

/// A value's type as an operator reads it in an error.
fn describe_type(value: &Value) -> &'static str {
    match value {
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
    }
}

fn string_list(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|item| item.as_str().map(str::to_owned))
        .collect()
}

impl StepFields for StepReader<'_> {
    type Error = SpecError;

    fn string(&self, name: &str) -> Result<Option<String>, SpecError> {
        self.typed(name, "a string", |v| v.as_str().map(str::to_owned))
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, SpecError> {
        self.typed(name, "true or false", Value::as_bool)
    }

    fn integer(&self, name: &str) -> Result<Option<i64>, SpecError> {
        self.typed(name, "an integer", Value::as_integer)
    }

    fn strings(&self, name: &str) -> Result<Option<Vec<String>>, SpecError> {
        self.typed(name, "a list of strings", string_list)
    }

    fn string_table(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, SpecError> {
        self.typed(name, "a table of strings", |v| {
            v.as_table()?
                .iter()
                .map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
    }

    fn duration(&self, name: &str) -> Result<Option<Duration>, SpecError> {
        let Some(text) = self.string(name)? else {
            return Ok(None);
        };
        let span = self.raw.0.get(name).map(Spanned::span);
        self.cx
            .duration(
                &Spanned::new(span.unwrap_or_default(), text),
                &self.path(name),
            )
            .map(|ms| Some(Duration::from_millis(ms.unsigned_abs())))
    }

    fn has(&self, name: &str) -> bool {
        self.raw.0.contains_key(name)
    }

    fn invalid(&self, name: &str, message: String) -> SpecError {
        let span = self
            .raw
            .0
            .get(name)
            .map_or_else(|| self.span.clone(), Spanned::span);
        self.cx.err(Some(span), &self.path(name), message)
    }

    fn step_error(&self, message: String) -> SpecError {
        self.cx.err(Some(self.span.clone()), self.field, message)
    }

    fn missing(&self, name: &str) -> SpecError {
        self.cx.err(
            Some(self.span.clone()),
            &self.path(name),
            format!("action {:?} needs {name}", self.action),
        )
    }
}

impl Cx<'_> {
    pub(super) fn gate(&self, s: Spanned<RawStep>, field: &str) -> Result<StepSpec, SpecError> {
        if let Some(action) = s.get_ref().0.get("action")
            && let Some(name) = action.get_ref().as_str()
            && !GATE_ACTIONS.contains(&name.trim())
        {
            return Err(self.err(
                Some(action.span()),
                &format!("{field}.action"),
                format!("a gate is a check: use action \"health\" or \"exec\", not {name:?}"),
            ));
        }
        self.step(s, field)
    }

    pub(super) fn steps(
        &self,
        list: Option<Vec<Spanned<RawStep>>>,
        field: &str,
    ) -> Result<Vec<StepSpec>, SpecError> {
        list.unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, s)| self.step(s, &format!("{field}[{i}]")))
            .collect()
    }

    fn step(&self, s: Spanned<RawStep>, field: &str) -> Result<StepSpec, SpecError> {
        let span = s.span();
        let raw = s.into_inner();
        let action_field = format!("{field}.action");
        let Some(action_value) = raw.0.get("action") else {
            return Err(self.err(
                Some(span),
                &action_field,
                format!(
                    "every step needs an action; actions are {}",
                    STEP_ACTION_NAMES.join(", ")
                ),
            ));
        };
        let name = action_value
            .get_ref()
            .as_str()
            .map(str::trim)
            .unwrap_or_default();
        let Some(fields) = StepAction::fields_of(name) else {
            return Err(self.err(
                Some(action_value.span()),
                &action_field,
                format!(
                    "unknown action {:?}; actions are {}",
                    action_value.get_ref().as_str().unwrap_or_default(),
                    STEP_ACTION_NAMES.join(", ")
                ),
            ));
        };
        self.refuse_foreign_fields(&raw, field, name, fields)?;

        let reader = StepReader {
            cx: self,
            raw: &raw,
            field,
            span: span.clone(),
            action: name,
        };
        let action = StepAction::from_fields(name, &reader)?
            .ok_or_else(|| reader.invalid("action", format!("unknown action {name:?}")))?;
        action::check_templates(&action)
            .map_err(|e| self.err(Some(span.clone()), field, e.to_string()))?;

        // An action's own wait (signal_unit's) must end before the step's timeout, so that a
        // wait that runs out is reported with what it saw rather than as a bare timeout.
        let timeout = match reader.duration("timeout")? {
            None => action.default_timeout(),
            Some(t) if t < Duration::from_secs(1) => {
                return Err(reader.invalid("timeout", "must be at least 1s".to_owned()));
            }
            Some(t) => {
                if let Some(wait) = action.own_wait().filter(|w| t < *w + WAIT_MARGIN) {
                    return Err(reader.invalid(
                        "timeout",
                        format!(
                            "must be at least {}s longer than the wait ({}s), so that a wait that runs out is reported with what it saw",
                            WAIT_MARGIN.as_secs(),
                            wait.as_secs()
                        ),
                    ));
                }
                t
            }
        };
        let on = match reader.string("on")? {
            None => None,
            Some(text) => Some(self.on(&reader, &text)?),
        };
        let retries = match reader.integer("retries")? {
            None => 0,
            Some(r) => u32::try_from(r)
                .ok()
                .filter(|r| *r <= 100)
                .ok_or_else(|| reader.invalid("retries", "must be between 0 and 100".to_owned()))?,
        };
        let retry_delay = reader
            .duration("retry_delay")?
            .unwrap_or(Duration::from_secs(10));
        let name = match reader.string("name")? {
            Some(n) if n.trim().is_empty() => {
                return Err(reader.invalid("name", "must not be empty".to_owned()));
            }
            other => other,
        };
        Ok(StepSpec {
            name,
            action,
            timeout_ms: millis(timeout),
            on,
            retries,
            retry_delay_ms: millis(retry_delay),
            line: self.line(span.start),
        })
    }

    /// Refuses, at its line, the first key that is not every step's and not the action's.
    fn refuse_foreign_fields(
        &self,
        raw: &RawStep,
        field: &str,
        action: &str,
        fields: &[&str],
    ) -> Result<(), SpecError> {
        let mut foreign: Vec<(&String, &Spanned<Value>)> = raw
            .0
            .iter()
            .filter(|(key, _)| {
                !COMMON_FIELDS.contains(&key.as_str()) && !fields.contains(&key.as_str())
            })
            .collect();
        foreign.sort_by_key(|(_, value)| value.span().start);
        let Some((key, value)) = foreign.first() else {
            return Ok(());
        };
        let takes = if fields.is_empty() {
            "no fields".to_owned()
        } else {
            fields.join(", ")
        };
        let of_some_action = STEP_ACTION_NAMES
            .iter()
            .filter_map(|a| StepAction::fields_of(a))
            .any(|f| f.contains(&key.as_str()));
        let message = if of_some_action {
            format!("does not apply to action {action:?} (it takes: {takes})")
        } else {
            format!(
                "unknown field; action {action:?} takes {takes}, and every step {}",
                COMMON_FIELDS.join(", ")
            )
        };
        Err(self.err(Some(value.span()), &format!("{field}.{key}"), message))
    }

    fn on(&self, reader: &StepReader<'_>, text: &str) -> Result<OnHost, SpecError> {
        let text = text.trim();
        let parsed = if let Some(role) = text.strip_prefix("role:") {
            Role::parse(role.trim()).map(OnHost::Role)
        } else if let Some(host) = text.strip_prefix("host:") {
            let host = host.trim();
            (!host.is_empty()).then(|| OnHost::Host(host.to_owned()))
        } else {
            None
        };
        parsed.ok_or_else(|| {
            reader.invalid(
                "on",
                format!(
                    "{text:?} is not a host selector; use \"role:manager\", \"role:worker\" or \"host:NAME\""
                ),
            )
        })
    }
}

/// Milliseconds, the run's time unit, saturating (durations are checked for size when read).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
