//! Operators acting on hosts outside campaigns: a disruptive `pitcrew do` admitted against the
//! slots (and held until it finishes), removing a host from the fleet, and changing a host's
//! role or labels. Each is one engine command, so the check and the change see the same state
//! as every campaign decision, and each is audited in the turn that makes it durable.

use std::collections::BTreeMap;

use pitcrew_scheduler::{self as scheduler, CampaignState, Event, HostState, OperatorAction, Role};

use super::{EngineState, Turn, audit_event, host_event};
use crate::engine::EngineError;
use crate::store::HostChange;

/// What `pitcrew hosts set` asks to change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostEdit {
    pub role: Option<Role>,
    pub set_labels: BTreeMap<String, String>,
    pub unset_labels: Vec<String>,
}

impl EngineState {
    /// Admits an operator's disruptive action on `host_id` against the slots (the scheduler's
    /// `admit_action`: the rules campaigns and manual maintenance follow) and holds the host
    /// until [`EngineState::end_operator_action`] or the action's result. A forced admission is
    /// audited with what it overrode, in this turn, so before the action is sent.
    pub fn begin_operator_action(
        &mut self,
        operator: &str,
        host_id: &str,
        action_id: &str,
        what: &str,
        force: bool,
        turn: &mut Turn,
    ) -> Result<(), EngineError> {
        if !self.fleet.hosts.contains_key(host_id) {
            return Err(EngineError::UnknownHost(host_id.to_owned()));
        }
        let admitted = scheduler::admit_action(
            &self.fleet,
            // The runs `decide` sees: a cancelled run's failed host still holds its slot.
            self.runs.iter().filter(|r| {
                !matches!(
                    r.state,
                    CampaignState::Completed | CampaignState::Incomplete
                )
            }),
            host_id,
            force,
        )?;
        let name = self.hostname(host_id);
        if !admitted.overrode.is_empty() {
            let overrode: Vec<String> = admitted.overrode.iter().map(|r| r.to_string()).collect();
            turn.event(audit_event(
                operator,
                host_id,
                "",
                format!(
                    "forced {what} on {name} ({action_id}), overriding: {}",
                    overrode.join("; ")
                ),
            ));
        }
        self.fleet.operator_actions.insert(
            action_id.to_owned(),
            OperatorAction {
                host: host_id.to_owned(),
                by: operator.to_owned(),
                forced: !admitted.overrode.is_empty(),
            },
        );
        turn.campaigns_changed = true;
        Ok(())
    }

    /// The operator's action ended (its stream finished, failed or was interrupted): its host
    /// is free for campaigns again.
    pub fn end_operator_action(&mut self, action_id: &str, turn: &mut Turn) {
        if self.fleet.operator_actions.remove(action_id).is_some() {
            turn.campaigns_changed = true;
        }
    }

    /// `pitcrew hosts remove`: the host leaves the fleet view (so the quorum guard and every
    /// `on` selector forget it), its manual maintenance and operators' holds end, every run
    /// that has not finished with it ends it `skipped` (it was not serviced) and frees its
    /// slot, and its row is marked removed (its certificate serials cleared). Its events stay.
    /// Returns one sentence per thing the removal changed.
    pub fn remove_host(
        &mut self,
        operator: &str,
        host_id: &str,
        now_ms: i64,
        turn: &mut Turn,
    ) -> Result<Vec<String>, EngineError> {
        let Some(view) = self.fleet.hosts.get(host_id) else {
            return Err(EngineError::UnknownHost(host_id.to_owned()));
        };
        let name = view.hostname.clone();
        let mut changes = Vec::new();
        let before = self.fleet.operator_actions.len();
        self.fleet
            .operator_actions
            .retain(|_, op| op.host != host_id);
        if self.fleet.operator_actions.len() != before {
            changes.push(format!(
                "the operators' actions running on {name} no longer hold it"
            ));
        }
        if let Some(m) = self.fleet.manual.remove(host_id) {
            turn.manual.push((host_id.to_owned(), None));
            changes.push(format!(
                "its manual maintenance ({}, enabled by {}) ended and freed its slot",
                m.phase, m.by
            ));
        }
        let reason = format!("{name} was removed from the fleet by {operator}");
        for ci in 0..self.runs.len() {
            let Some(&hi) = self.meta[ci].hosts.get(host_id) else {
                continue;
            };
            let state = self.runs[ci].hosts[hi].state;
            if state.finished() {
                continue;
            }
            let event = Event::Removed {
                host: host_id.to_owned(),
                reason: reason.clone(),
            };
            self.apply_event(ci, &event, now_ms, turn)?;
            let id = self.runs[ci].id.clone();
            turn.event(host_event(
                host_id,
                &id,
                "remove",
                HostState::Skipped.as_str(),
                format!("{reason}; it was {state} and is now skipped"),
            ));
            changes.push(format!(
                "campaign {id}: {name} was {state}, now skipped{}",
                if state.holds_slot() {
                    " (its slot is free)"
                } else {
                    ""
                }
            ));
        }
        self.fleet.hosts.remove(host_id);
        self.generations.remove(host_id);
        turn.host_changes.push(HostChange::Removed {
            host_id: host_id.to_owned(),
            at_ms: now_ms,
        });
        let mut message = format!(
            "removed host {name} from the fleet: its certificate is no longer accepted and it \
             left the quorum guard"
        );
        for change in &changes {
            message.push_str("; ");
            message.push_str(change);
        }
        turn.event(audit_event(operator, host_id, "", message));
        turn.campaigns_changed = true;
        Ok(changes)
    }

    /// `pitcrew hosts set`: changes a host's role or labels, refused while anything holds the
    /// host or a campaign still has it to do (a campaign plans a host by its role and cluster,
    /// and the slot rules read them: changing them under a hold could put two managers of a
    /// cluster out at once). Audited with the old and new values. Returns the new role and
    /// labels.
    pub fn set_host(
        &mut self,
        operator: &str,
        host_id: &str,
        edit: &HostEdit,
        turn: &mut Turn,
    ) -> Result<(Role, BTreeMap<String, String>), EngineError> {
        let Some(view) = self.fleet.hosts.get(host_id) else {
            return Err(EngineError::UnknownHost(host_id.to_owned()));
        };
        let name = view.hostname.clone();
        if let Some(busy) = self.busy_with(host_id) {
            return Err(EngineError::HostBusy { host: name, busy });
        }
        let mut labels = view.labels.clone();
        let mut said = Vec::new();
        let role = edit.role.unwrap_or(view.role);
        if role != view.role {
            said.push(format!("role {} → {role}", view.role));
        }
        for key in &edit.unset_labels {
            if let Some(old) = labels.remove(key) {
                said.push(format!("label {key}={old} removed"));
            }
        }
        for (key, value) in &edit.set_labels {
            match labels.insert(key.clone(), value.clone()) {
                Some(old) if old == *value => {}
                Some(old) => said.push(format!("label {key}: {old} → {value}")),
                None => said.push(format!("label {key}={value} added")),
            }
        }
        if said.is_empty() {
            return Ok((role, labels));
        }
        if let Some(view) = self.fleet.hosts.get_mut(host_id) {
            view.role = role;
            view.labels = labels.clone();
        }
        turn.host_changes.push(HostChange::Set {
            host_id: host_id.to_owned(),
            role,
            labels: labels.clone(),
        });
        turn.event(audit_event(
            operator,
            host_id,
            "",
            format!("changed host {name}: {}", said.join(", ")),
        ));
        turn.campaigns_changed = true;
        Ok((role, labels))
    }

    /// What keeps a host from changing role or labels now, in an operator's words.
    fn busy_with(&self, host_id: &str) -> Option<String> {
        if let Some(m) = self.fleet.manual.get(host_id) {
            return Some(format!(
                "in manual maintenance ({}, enabled by {}); disable it first",
                m.phase, m.by
            ));
        }
        if let Some((id, op)) = self
            .fleet
            .operator_actions
            .iter()
            .find(|(_, op)| op.host == host_id)
        {
            return Some(format!(
                "running operator {}'s pitcrew do (action {id}); wait for it to finish",
                op.by
            ));
        }
        for (run, meta) in self.runs.iter().zip(&self.meta) {
            let Some(h) = meta.hosts.get(host_id).and_then(|&hi| run.hosts.get(hi)) else {
                continue;
            };
            // An ended run (cancelled included) starts nothing more; only a slot it still
            // holds counts.
            let pending = run.is_active();
            if h.state.holds_slot() || (pending && !h.state.finished()) {
                return Some(format!(
                    "held by campaign {} ({}); wait for it to finish with the host, or skip or release it there first",
                    run.id, h.state
                ));
            }
        }
        None
    }
}
