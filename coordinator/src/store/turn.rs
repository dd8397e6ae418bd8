//! One engine turn's writes, committed in one transaction before anything the turn decided is
//! sent (the write-ahead invariant). The engine lists exactly what the turn touched, so the
//! writes grow with the change, not with the campaign or the fleet.

use std::collections::BTreeMap;

use pitcrew_scheduler::{CampaignRun, ManualState, Role};

use super::schedules::{ArchivedRun, ScheduleRecord};
use super::tx::Tx;
use super::{ActionRecord, CampaignHostRow, DeliveryRecord, EventRecord, StoreError, campaigns};

/// A host row an operator changed, written in the turn's transaction.
#[derive(Debug, Clone)]
pub enum HostChange {
    /// `pitcrew hosts remove`: no certificate of the host is accepted any more.
    Removed { host_id: String, at_ms: i64 },
    /// `pitcrew hosts set`: a new role and labels.
    Set {
        host_id: String,
        role: Role,
        labels: BTreeMap<String, String>,
    },
}

impl HostChange {
    /// The host the change is about.
    pub fn host_id(&self) -> &str {
        match self {
            HostChange::Removed { host_id, .. } | HostChange::Set { host_id, .. } => host_id,
        }
    }
}

/// A turn's writes as owned data, ready for the store's writer.
#[derive(Debug, Default)]
pub struct TurnWrites {
    /// New runs: the run, its campaign file, who created it.
    pub new_runs: Vec<(CampaignRun, String, String)>,
    /// (campaign id, header JSON) of headers that changed.
    pub headers: Vec<(String, String)>,
    /// Host rows whose progress changed.
    pub hosts: Vec<CampaignHostRow>,
    /// Actions dispatched (recorded before they are sent).
    pub actions: Vec<ActionRecord>,
    /// (action id, prost-encoded result) of results applied.
    pub finished: Vec<(String, Vec<u8>)>,
    pub events: Vec<EventRecord>,
    /// Manual maintenance set (Some) or cleared (None).
    pub manual: Vec<(String, Option<ManualState>)>,
    pub host_changes: Vec<HostChange>,
    /// Schedules registered or changed (Some) or removed (None, by name).
    pub schedules: Vec<(String, Option<ScheduleRecord>)>,
    /// Runs leaving the engine's working set for the archive.
    pub archived: Vec<ArchivedRun>,
    /// Webhook notifications the turn decided, delivered once the turn is durable.
    pub deliveries: Vec<DeliveryRecord>,
}

impl TurnWrites {
    pub fn is_empty(&self) -> bool {
        self.new_runs.is_empty()
            && self.headers.is_empty()
            && self.hosts.is_empty()
            && self.actions.is_empty()
            && self.finished.is_empty()
            && self.events.is_empty()
            && self.manual.is_empty()
            && self.host_changes.is_empty()
            && self.schedules.is_empty()
            && self.archived.is_empty()
            && self.deliveries.is_empty()
    }

    /// Runs inside one writer transaction; returns the events with their ids.
    pub(crate) async fn apply(self, tx: &mut dyn Tx) -> Result<Vec<EventRecord>, StoreError> {
        for (run, spec_toml, created_by) in &self.new_runs {
            campaigns::insert_run(tx, run, spec_toml, created_by).await?;
        }
        for (id, header) in &self.headers {
            campaigns::put_header(tx, id, header).await?;
        }
        for row in &self.hosts {
            campaigns::put_host(tx, row).await?;
        }
        for action in &self.actions {
            tx.insert_action(action).await?;
        }
        for (id, result) in &self.finished {
            tx.finish_action(id, result).await?;
        }
        for (host, state) in &self.manual {
            tx.put_manual(host, state.as_ref()).await?;
        }
        for change in &self.host_changes {
            match change {
                HostChange::Removed { host_id, at_ms } => {
                    tx.mark_host_removed(host_id, *at_ms).await?
                }
                HostChange::Set {
                    host_id,
                    role,
                    labels,
                } => {
                    tx.set_host_role_labels(host_id, role.as_str(), labels)
                        .await?
                }
            }
        }
        for (name, schedule) in &self.schedules {
            match schedule {
                Some(schedule) => tx.put_schedule(schedule).await?,
                None => tx.delete_schedule(name).await?,
            }
        }
        for run in &self.archived {
            tx.archive_run(run).await?;
        }
        for delivery in &self.deliveries {
            tx.insert_delivery(delivery).await?;
        }
        let mut logged = self.events;
        for event in &mut logged {
            event.id = tx.append_event(event).await?;
        }
        Ok(logged)
    }
}
