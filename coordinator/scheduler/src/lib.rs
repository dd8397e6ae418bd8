//! pitcrew's scheduler: campaign files ([`spec`]), the planner ([`plan`]) and the pure decision
//! function ([`decide`]) with the state it decides over ([`run`]).
//!
//! Nothing here does I/O, reads a clock or spawns anything: time is the `now_ms` argument, the
//! fleet and the persisted campaign runs are inputs, and the output is a list of decisions the
//! coordinator's runtime persists (write-ahead) and then carries out. That is what lets the
//! campaign invariants (ARCHITECTURE.md) be model-checked (`tests/model.rs`) and property-tested.
#![forbid(unsafe_code)]

pub mod action;
pub mod conditions;
pub mod decide;
pub mod delays;
pub mod fleet;
pub mod holders;
pub mod invariants;
pub mod manual;
pub mod operator;
pub mod plan;
pub mod run;
pub mod schedule;
pub mod spec;
pub mod template;
pub mod window;

pub use action::{HealthCheck, StepAction};
pub use conditions::{Condition, HostFacts};
pub use decide::{Blocker, BlockerEntry, Decision, Decisions, Dispatch, Holder, action_id, decide};
pub use delays::WaveBlocker;
pub use fleet::{Fleet, HostView, ManualPhase, ManualState, OperatorAction, Role};
pub use holders::{HeldBy, HeldHost, Holders};
pub use manual::{ManualError, manual_enable};
pub use operator::{Admission, OperatorRefusal, admit_action};
pub use plan::{Plan, PlanError, PlanStart, PlannedHost, PlannedStep, Refusal, plan, plan_from};
pub use run::{ApplyError, CampaignRun, CampaignState, Event, HostRun, HostState, Outcome, apply};
pub use schedule::{Due, Schedule};
pub use spec::{
    CampaignSpec, Concurrency, FailureBudget, NotifySpec, OnHost, Phase, SpecError, StepSpec,
};
pub use window::Window;
