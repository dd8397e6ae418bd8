//! What can go wrong in the campaign engine, with a stable kind for each. The Admin layer maps
//! these to gRPC status codes in one place; nothing in the engine knows about gRPC.

use pitcrew_scheduler::{ApplyError, ManualError, OperatorRefusal, PlanError, SpecError};

use crate::store::StoreError;

/// Errors of the engine's commands.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The campaign file is not valid (the text names file, line and field).
    #[error("{0}")]
    Spec(#[from] SpecError),
    /// The campaign cannot run on the fleet as it is.
    #[error("{0}")]
    Plan(#[from] PlanError),
    /// An operator command does not fit the campaign's or host's state.
    #[error("{0}")]
    Apply(#[from] ApplyError),
    /// Manual maintenance cannot change as asked.
    #[error("{0}")]
    Manual(#[from] ManualError),
    /// An operator's disruptive action would take a host or a manager slot someone else holds
    /// (the text names the holder and `--force`).
    #[error("{0}")]
    Refused(#[from] OperatorRefusal),
    /// The host's role or labels cannot change while something holds it.
    #[error("host {host} is {busy}")]
    HostBusy { host: String, busy: String },
    #[error("no campaign has the id {0:?}")]
    UnknownCampaign(String),
    /// A run of the same campaign name is still active: two at once would service the same
    /// hosts twice (the cron job that stacked duplicate runs).
    #[error(
        "campaign {name:?} already has an active run, {id} ({state}): wait for it to finish or cancel it (`pitcrew campaign cancel {id}`), or give this file another name to run both"
    )]
    AlreadyRunning {
        name: String,
        id: String,
        state: String,
    },
    #[error("no schedule is named {0:?} (`pitcrew schedule ls` lists them)")]
    UnknownSchedule(String),
    /// A campaign file does not fit the call: a schedule registered without one, or a file
    /// with one run by hand.
    #[error("{0}")]
    Schedule(String),
    #[error("no host has the id {0:?}")]
    UnknownHost(String),
    /// The store failed; the engine stops and the coordinator exits, so a restart reloads
    /// exactly what was committed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The engine's loop has ended (the coordinator is stopping or failed).
    #[error("the campaign engine is not running")]
    Stopped,
    /// The leader lease may have expired: this coordinator commits and sends nothing more.
    #[error("this coordinator no longer leads: its lease (epoch {0}) may have expired")]
    NotLeading(i64),
}

impl EngineError {
    /// A stable machine-readable kind, sent to clients with the message.
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::Spec(_) => "invalid_spec",
            EngineError::Plan(e) => e.kind(),
            EngineError::Apply(e) => e.kind(),
            EngineError::Manual(_) => "maintenance_refused",
            EngineError::Refused(e) => e.kind(),
            EngineError::HostBusy { .. } => "host_busy",
            EngineError::UnknownCampaign(_) => "unknown_campaign",
            EngineError::AlreadyRunning { .. } => "already_running",
            EngineError::UnknownSchedule(_) => "unknown_schedule",
            EngineError::Schedule(_) => "schedule_refused",
            EngineError::UnknownHost(_) => "unknown_host",
            EngineError::Store(_) => "store_failed",
            EngineError::Stopped => "engine_stopped",
            EngineError::NotLeading(_) => "not_leading",
        }
    }
}
