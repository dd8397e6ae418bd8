//! The action catalogue: everything pitcrew knows of each agent action, one module per action.
//!
//! An action's module owns its typed arguments as a campaign run stores them, the campaign-file
//! fields it takes and how they are checked, its `pitcrew do` arguments (feature `cli`), its
//! conversion to the wire message, the one description an operator reads of it (plans, the
//! event log, the CLI), its default timeout, whether it only looks at the host, and its policy
//! rule. Adding an action is its module, one line in [`step_actions!`] (when campaigns may use
//! it) and in [`on_wire!`], and its message in the proto; the compiler points at each.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::{LocalPolicy, Policy, Refusal};
use crate::v1::{self, action::Kind};

#[cfg(feature = "cli")]
pub mod cli;
pub mod daemon_reload;
pub mod dedupe_shm;
pub mod exec;
mod fields;
pub mod health;
pub mod patch;
pub mod reboot;
pub mod release_holds;
pub mod remove_path;
pub mod signal_unit;
pub mod unit;
pub mod wait_unit;

pub use fields::StepFields;

/// What an action's wire message says of itself. Implemented by every message an
/// [`v1::Action`] can carry, so the agent, the coordinator and the CLI read the same answers.
pub trait WireAction {
    /// The action's name, as campaign files (`action = "..."`), journals and events spell it.
    const NAME: &'static str;
    /// Whether the action only looks at the host (never refused for a slot; see
    /// [`is_read_only`]).
    const READ_ONLY: bool;
    /// How long the action may take when neither the step nor the request says.
    fn default_timeout(&self) -> Duration;
    /// One line an operator reads, e.g. `unit stop dcos-mesos-slave.service`.
    fn describe(&self) -> String;
    /// The rule of the planner's view of a host's policy (what facts report).
    fn check(&self, policy: &Policy) -> Result<(), Refusal>;
    /// The rule of the whole local policy, which the agent enforces. Most actions need nothing
    /// beyond the planner's view.
    fn check_local(&self, policy: &LocalPolicy) -> Result<(), Refusal> {
        self.check(&policy.rules())
    }
}

/// The typed arguments of an action a campaign step can run, as the run stores them (with
/// `{{variables}}` until rendered for a host).
pub trait StepArgs: Sized {
    /// The message sent to the agent.
    type Wire: WireAction;
    /// The campaign-file fields this action takes besides the ones every step has.
    const FIELDS: &'static [&'static str];
    /// Reads and checks this action's fields of a campaign step.
    fn from_fields<F: StepFields>(fields: &F) -> Result<Self, F::Error>;
    /// The wire form sent to the agent.
    fn to_wire(&self) -> Self::Wire;
    /// Every operator-written string (the ones that may hold `{{...}}`).
    fn strings_mut(&mut self) -> Vec<&mut String>;
    /// How long the action itself waits for an effect, which its step's timeout must outlast
    /// by [`WAIT_MARGIN`].
    fn own_wait(&self) -> Option<Duration> {
        None
    }
}

/// Runs `$body` with `$w` bound to the wire message of whichever action `$kind` (a
/// `&v1::action::Kind`) holds. The match is exhaustive: a new kind must be listed here.
macro_rules! on_wire {
    ($kind:expr, $w:ident => $body:expr) => {
        match $kind {
            Kind::Unit($w) => $body,
            Kind::SignalUnit($w) => $body,
            Kind::WaitUnit($w) => $body,
            Kind::DaemonReload($w) => $body,
            Kind::RemovePath($w) => $body,
            Kind::DedupeShm($w) => $body,
            Kind::Patch($w) => $body,
            Kind::Reboot($w) => $body,
            Kind::Health($w) => $body,
            Kind::Exec($w) => $body,
            Kind::ReleaseHolds($w) => $body,
        }
    };
}

fn name_of<W: WireAction>(_: &W) -> &'static str {
    W::NAME
}

fn read_only<W: WireAction>(_: &W) -> bool {
    W::READ_ONLY
}

/// The action's name (`unit`, `patch`, ...), as journals and events record it.
pub fn name(kind: &Kind) -> &'static str {
    on_wire!(kind, w => name_of(w))
}

/// Describes an action the way every operator-facing place does.
pub fn describe(action: Option<&v1::Action>) -> String {
    match action.and_then(|a| a.kind.as_ref()) {
        Some(kind) => on_wire!(kind, w => w.describe()),
        None => "(no action)".to_owned(),
    }
}

/// How long an action may take when the request names no timeout.
pub fn default_timeout(kind: &Kind) -> Duration {
    on_wire!(kind, w => w.default_timeout())
}

/// Whether an action only looks at the host: a health check or a wait, or lifting pitcrew's own
/// holds (which starts nothing: it is how a host leaves maintenance cleanly). Every other action
/// may disrupt the host, so `pitcrew do` honours the slots for it.
pub fn is_read_only(kind: &Kind) -> bool {
    on_wire!(kind, w => read_only(w))
}

/// The planner's policy rule for an action.
pub fn check(kind: &Kind, policy: &Policy) -> Result<(), Refusal> {
    on_wire!(kind, w => w.check(policy))
}

/// The agent's policy rule for an action.
pub fn check_local(kind: &Kind, policy: &LocalPolicy) -> Result<(), Refusal> {
    on_wire!(kind, w => w.check_local(policy))
}

/// The one word an operator sees for an action's outcome, in the event log and the CLI.
pub fn outcome(outcome: i32) -> &'static str {
    match v1::Outcome::try_from(outcome).unwrap_or(v1::Outcome::Unspecified) {
        v1::Outcome::Succeeded => "succeeded",
        v1::Outcome::Failed => "failed",
        v1::Outcome::Refused => "refused",
        v1::Outcome::TimedOut => "timed out",
        v1::Outcome::Cancelled => "cancelled",
        v1::Outcome::Interrupted => "interrupted",
        v1::Outcome::Unspecified => "unknown",
    }
}

/// Declares [`StepAction`] over the actions campaign steps may run. Its JSON is the stored form
/// of a run's steps: `{"action": "<name>", <the action's fields>}`.
macro_rules! step_actions {
    ($($variant:ident($module:ident::$args:ident)),* $(,)?) => {
        /// One action a campaign step runs, with its arguments.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(tag = "action", rename_all = "snake_case")]
        pub enum StepAction {
            $($variant($module::$args)),*
        }

        /// The names of the actions campaign steps may run, as written in `action = "..."`.
        pub const STEP_ACTION_NAMES: &[&str] =
            &[$(<<$module::$args as StepArgs>::Wire as WireAction>::NAME),*];

        impl StepAction {
            /// The action's name (`action = "..."`).
            pub fn name(&self) -> &'static str {
                match self {
                    $(StepAction::$variant(_) => <<$module::$args as StepArgs>::Wire as WireAction>::NAME),*
                }
            }

            /// The campaign-file fields action `name` takes; `None` when no step may run it.
            pub fn fields_of(name: &str) -> Option<&'static [&'static str]> {
                $(if name == <<$module::$args as StepArgs>::Wire as WireAction>::NAME {
                    return Some(<$module::$args as StepArgs>::FIELDS);
                })*
                None
            }

            /// Reads action `name`'s fields of a step; `Ok(None)` when no step may run it.
            pub fn from_fields<F: StepFields>(
                name: &str,
                fields: &F,
            ) -> Result<Option<StepAction>, F::Error> {
                $(if name == <<$module::$args as StepArgs>::Wire as WireAction>::NAME {
                    return <$module::$args>::from_fields(fields).map(|a| Some(StepAction::$variant(a)));
                })*
                Ok(None)
            }

            /// The wire form sent to the agent.
            pub fn to_proto(&self) -> v1::Action {
                let kind = match self {
                    $(StepAction::$variant(a) => Kind::$variant(a.to_wire())),*
                };
                v1::Action { kind: Some(kind) }
            }

            /// How long the action itself waits for an effect (see [`StepArgs::own_wait`]).
            pub fn own_wait(&self) -> Option<Duration> {
                match self {
                    $(StepAction::$variant(a) => a.own_wait()),*
                }
            }

            /// Every operator-written string, for `{{variable}}` checks and rendering.
            pub fn strings_mut(&mut self) -> Vec<&mut String> {
                match self {
                    $(StepAction::$variant(a) => a.strings_mut()),*
                }
            }
        }
    };
}

step_actions! {
    Unit(unit::Unit),
    SignalUnit(signal_unit::SignalUnit),
    WaitUnit(wait_unit::WaitUnit),
    DaemonReload(daemon_reload::DaemonReload),
    RemovePath(remove_path::RemovePath),
    DedupeShm(dedupe_shm::DedupeShm),
    Patch(patch::Patch),
    Reboot(reboot::Reboot),
    Health(health::Health),
    Exec(exec::Exec),
}

impl StepAction {
    /// Whether completing this step means the host must come back on a new boot id.
    pub fn is_reboot(&self) -> bool {
        matches!(self, StepAction::Reboot(_))
    }

    /// How long the step may take when the campaign file does not say: the action's default
    /// for exactly these arguments (a signal's own wait makes it longer).
    pub fn default_timeout(&self) -> Duration {
        let action = self.to_proto();
        action.kind.as_ref().map_or(Duration::ZERO, default_timeout)
    }
}

impl fmt::Display for StepAction {
    /// The same words as the event log uses for the action once sent.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe(Some(&self.to_proto())))
    }
}

/// The refusal of an action whose request is malformed (no check named, an unknown enum).
pub(crate) fn malformed(message: impl Into<String>) -> Refusal {
    Refusal {
        rule: "action".to_owned(),
        message: message.into(),
    }
}

/// How much longer than an action's own wait (`signal_unit`'s) its timeout must be, so that a
/// wait that runs out is reported with what it saw rather than as a bare timeout.
pub const WAIT_MARGIN: Duration = Duration::from_secs(10);

/// A duration in whole minutes, for the default timeouts.
pub(crate) const fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every step action stores under the name the catalogue gives it, and reads back.
    #[test]
    fn stored_names_are_the_catalogue_names() {
        let actions = [
            StepAction::DaemonReload(daemon_reload::DaemonReload {}),
            StepAction::DedupeShm(dedupe_shm::DedupeShm {}),
            StepAction::Reboot(reboot::Reboot {
                only_if_required: true,
                poweroff: false,
            }),
            StepAction::Unit(unit::Unit {
                unit: "a.service".into(),
                operation: unit::UnitOp::Stop,
            }),
        ];
        for action in actions {
            let json = serde_json::to_value(&action).unwrap();
            assert_eq!(json["action"], action.name());
            let back: StepAction = serde_json::from_value(json).unwrap();
            assert_eq!(back, action);
        }
        assert_eq!(STEP_ACTION_NAMES.len(), 10);
        assert!(StepAction::fields_of("release_holds").is_none());
    }

    /// Runs stored before the catalogue read as they did.
    #[test]
    fn runs_stored_earlier_still_read() {
        let stored =
            r#"{"action":"signal_unit","unit":"m.service","signal":"SIGUSR1","target":"main"}"#;
        let action: StepAction = serde_json::from_str(stored).unwrap();
        assert_eq!(
            action.to_string(),
            "signal_unit SIGUSR1 to main process of m.service"
        );
        let stored = r#"{"action":"patch","packages":[],"lock_timeout_seconds":300}"#;
        let action: StepAction = serde_json::from_str(stored).unwrap();
        assert_eq!(action.name(), "patch");
    }

    #[test]
    fn only_checks_and_waits_are_read_only() {
        assert!(is_read_only(&Kind::Health(v1::Health::default())));
        assert!(is_read_only(&Kind::WaitUnit(v1::WaitUnit::default())));
        assert!(is_read_only(&Kind::ReleaseHolds(
            v1::ReleaseHolds::default()
        )));
        assert!(!is_read_only(&Kind::Exec(v1::Exec::default())));
        assert!(!is_read_only(&Kind::Reboot(v1::Reboot::default())));
        assert!(!is_read_only(&Kind::Unit(v1::UnitAction::default())));
    }

    #[test]
    fn one_default_timeout_for_campaigns_and_one_off_actions() {
        let patch = StepAction::Patch(patch::Patch {
            packages: vec![],
            lock_timeout_seconds: patch::DEFAULT_LOCK_TIMEOUT_SECONDS,
        });
        let wire = patch.to_proto();
        assert_eq!(patch.default_timeout(), minutes(60));
        assert_eq!(default_timeout(wire.kind.as_ref().unwrap()), minutes(60));
    }
}
