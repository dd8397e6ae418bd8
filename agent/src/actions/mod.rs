//! The action executor (being written): runs typed actions as the local policy allows.

use std::sync::Arc;

use pitcrew_proto::v1;
use tokio::sync::mpsc;

use crate::config::AgentConfig;

/// Runs actions at most once each, journaling them on disk.
pub struct Executor {
    _config: AgentConfig,
}

impl Executor {
    /// Opens the journal under the state dir and resolves actions left in flight.
    pub fn open(config: &AgentConfig) -> Result<Arc<Executor>, String> {
        Ok(Arc::new(Executor {
            _config: config.clone(),
        }))
    }

    /// Runs one request (or answers a repeated id from the journal).
    pub async fn execute(
        self: Arc<Self>,
        request: v1::ActionRequest,
        _events: mpsc::Sender<v1::ActionEvent>,
    ) -> v1::ActionResult {
        v1::ActionResult {
            action_id: request.action_id,
            outcome: v1::Outcome::Failed as i32,
            message: "the action executor is not built yet".into(),
            ..Default::default()
        }
    }

    /// Cancels a running action; false when no such action runs.
    pub fn cancel(&self, _action_id: &str) -> bool {
        false
    }

    /// Ids of the actions running now.
    pub fn running(&self) -> Vec<String> {
        Vec::new()
    }

    /// Final results the coordinator has not acknowledged yet.
    pub fn unacknowledged(&self) -> Vec<v1::ActionResult> {
        Vec::new()
    }

    /// Forgets results the coordinator has stored.
    pub fn acknowledge(&self, _ids: &[String]) {}
}
