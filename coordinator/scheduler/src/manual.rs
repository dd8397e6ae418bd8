//! Manual maintenance (`pitcrew maintenance enable|disable HOST`): the hyper-converged
//! runbook's node states Running → Entering → Maintenance → Leaving → Running, holding the
//! same slots a campaign would. Each transition is a function that refuses an illegal source
//! state; the runtime stores the result in [`Fleet::manual`].

use crate::decide::{Blocker, Holder, quorum_guard};
use crate::fleet::{Fleet, ManualPhase, ManualState, Role};
use crate::operator::manager_slot_holder;
use crate::run::CampaignRun;

/// Why manual maintenance cannot change as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManualError {
    #[error("no enrolled host is named {0}")]
    UnknownHost(String),
    #[error("{host} is already in manual maintenance ({phase})")]
    AlreadyInMaintenance { host: String, phase: ManualPhase },
    #[error("{host} is held out of service by {by}; wait for it or release it there first")]
    Held { host: String, by: Holder },
    #[error(
        "the manager slot of cluster {cluster:?} is held by {holder}; managers go one at a time"
    )]
    ManagerSlotHeld { cluster: String, holder: String },
    #[error("{0}")]
    QuorumGuard(Blocker),
    #[error("{host} is not in manual maintenance")]
    NotInMaintenance { host: String },
    #[error("{what} is not possible while {host} is {from}")]
    Illegal {
        host: String,
        what: &'static str,
        from: ManualPhase,
    },
}

/// Running → Entering: checks the host is free, and for a manager that its cluster's manager
/// slot is free and every other manager is connected and healthy. Returns the host id and
/// the state to store in [`Fleet::manual`].
pub fn manual_enable<'a, I>(
    fleet: &Fleet,
    campaigns: I,
    host: &str,
    by: &str,
    now_ms: i64,
) -> Result<(String, ManualState), ManualError>
where
    I: IntoIterator<Item = &'a CampaignRun> + Clone,
{
    let view = fleet
        .find(host)
        .ok_or_else(|| ManualError::UnknownHost(host.to_owned()))?;
    if let Some(m) = fleet.manual.get(&view.id) {
        return Err(ManualError::AlreadyInMaintenance {
            host: view.hostname.clone(),
            phase: m.phase,
        });
    }
    for run in campaigns.clone() {
        if let Some(h) = run.host(&view.id)
            && h.state.holds_slot()
        {
            return Err(ManualError::Held {
                host: view.hostname.clone(),
                by: Holder::Campaign(run.id.clone()),
            });
        }
    }
    if view.role == Role::Manager {
        let cluster = view.cluster();
        // Manual maintenance, campaigns and operators' actions on other managers alike.
        if let Some(holder) = manager_slot_holder(fleet, campaigns, cluster, &view.id) {
            return Err(ManualError::ManagerSlotHeld {
                cluster: cluster.to_owned(),
                holder,
            });
        }
        quorum_guard(fleet, view).map_err(ManualError::QuorumGuard)?;
    }
    Ok((
        view.id.clone(),
        ManualState {
            phase: ManualPhase::Entering,
            since_ms: now_ms,
            by: by.to_owned(),
        },
    ))
}

impl ManualState {
    /// Entering → Maintenance: workloads are off the host.
    pub fn entered(&self, host: &str, now_ms: i64) -> Result<ManualState, ManualError> {
        self.to(
            host,
            ManualPhase::Entering,
            ManualPhase::Maintenance,
            "finishing entering",
            now_ms,
        )
    }

    /// Maintenance (or Entering, to abort) → Leaving: `maintenance disable`.
    pub fn leave(&self, host: &str, now_ms: i64) -> Result<ManualState, ManualError> {
        if self.phase == ManualPhase::Leaving {
            return Err(ManualError::Illegal {
                host: host.to_owned(),
                what: "disabling maintenance",
                from: self.phase,
            });
        }
        Ok(ManualState {
            phase: ManualPhase::Leaving,
            since_ms: now_ms,
            by: self.by.clone(),
        })
    }

    /// Leaving → Running: the runtime removes the entry from [`Fleet::manual`] (the slot is
    /// free from then on).
    pub fn left(&self, host: &str) -> Result<(), ManualError> {
        if self.phase != ManualPhase::Leaving {
            return Err(ManualError::Illegal {
                host: host.to_owned(),
                what: "returning to running",
                from: self.phase,
            });
        }
        Ok(())
    }

    fn to(
        &self,
        host: &str,
        from: ManualPhase,
        to: ManualPhase,
        what: &'static str,
        now_ms: i64,
    ) -> Result<ManualState, ManualError> {
        if self.phase != from {
            return Err(ManualError::Illegal {
                host: host.to_owned(),
                what,
                from: self.phase,
            });
        }
        Ok(ManualState {
            phase: to,
            since_ms: now_ms,
            by: self.by.clone(),
        })
    }
}
