//! An operator's disruptive one-off action (`pitcrew do`) against the slots: the same rules a
//! campaign and manual maintenance follow, so no path takes a host or a manager around them.
//!
//! [`admit_action`] decides whether the action may start now. A host held by a campaign is
//! refused (the operator holds it first with `pitcrew maintenance enable` once the campaign
//! lets it go); a host in manual maintenance is the operator's already and always admitted; a
//! manager is refused while another host holds its cluster's one manager slot or another
//! manager of its cluster is not connected and healthy (the quorum guard). `force` admits it
//! anyway and returns what it overrode, for the audit trail. Once admitted, the runtime records
//! the action in [`Fleet::operator_actions`] until it finishes, and `decide` treats it as
//! holding its host (and, for a manager, the manager slot) meanwhile.

use crate::decide::{Blocker, Holder, quorum_guard};
use crate::fleet::{Fleet, Role};
use crate::run::CampaignRun;

/// Why an operator's disruptive action may not start now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorRefusal {
    #[error("no enrolled host is named {0}")]
    UnknownHost(String),
    #[error(
        "{host} is held by {by}; wait for it to let the host go and hold it first (pitcrew maintenance enable {host}), or pass --force (audited)"
    )]
    Held { host: String, by: Holder },
    #[error(
        "the manager slot of cluster {cluster:?} is held by {holder}; managers go one at a time: wait for it, or pass --force (audited)"
    )]
    ManagerSlotHeld { cluster: String, holder: String },
    #[error("{blocker}; pass --force to act on {host} anyway (audited)")]
    QuorumGuard { host: String, blocker: Blocker },
}

impl OperatorRefusal {
    /// A stable machine-readable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            OperatorRefusal::UnknownHost(_) => "unknown_host",
            OperatorRefusal::Held { .. } => "host_held",
            OperatorRefusal::ManagerSlotHeld { .. } => "manager_slot_held",
            OperatorRefusal::QuorumGuard { .. } => "quorum_guard",
        }
    }
}

/// What admitting an action found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// The host's id.
    pub host: String,
    /// Who put the host into manual maintenance, when it is in it: the action runs inside that
    /// hold and needs no slot of its own.
    pub under_manual: Option<String>,
    /// The refusals `force` overrode (empty when nothing stood in the way).
    pub overrode: Vec<OperatorRefusal>,
}

/// Whether a disruptive action may start on `host` now (see the module's text). `campaigns`
/// are the runs that have not ended.
pub fn admit_action<'a, I>(
    fleet: &Fleet,
    campaigns: I,
    host: &str,
    force: bool,
) -> Result<Admission, OperatorRefusal>
where
    I: IntoIterator<Item = &'a CampaignRun> + Clone,
{
    let view = fleet
        .find(host)
        .ok_or_else(|| OperatorRefusal::UnknownHost(host.to_owned()))?;
    if let Some(m) = fleet.manual.get(&view.id) {
        return Ok(Admission {
            host: view.id.clone(),
            under_manual: Some(m.by.clone()),
            overrode: Vec::new(),
        });
    }
    let mut refusals = Vec::new();
    for run in campaigns.clone() {
        if let Some(h) = run.host(&view.id)
            && h.state.holds_slot()
        {
            refusals.push(OperatorRefusal::Held {
                host: view.hostname.clone(),
                by: Holder::Campaign(run.id.clone()),
            });
        }
    }
    if view.role == Role::Manager {
        if let Some(holder) = manager_slot_holder(fleet, campaigns, view.cluster(), &view.id) {
            refusals.push(OperatorRefusal::ManagerSlotHeld {
                cluster: view.cluster().to_owned(),
                holder,
            });
        }
        if let Err(blocker) = quorum_guard(fleet, view) {
            refusals.push(OperatorRefusal::QuorumGuard {
                host: view.hostname.clone(),
                blocker,
            });
        }
    }
    if !refusals.is_empty() && !force {
        return Err(refusals.swap_remove(0));
    }
    Ok(Admission {
        host: view.id.clone(),
        under_manual: None,
        overrode: refusals,
    })
}

/// Who holds the manager slot of `cluster`, other than host `except`: a manager in manual
/// maintenance, one a campaign holds, or one an operator's action runs on. Named as an operator
/// reads it.
pub(crate) fn manager_slot_holder<'a, I>(
    fleet: &Fleet,
    campaigns: I,
    cluster: &str,
    except: &str,
) -> Option<String>
where
    I: IntoIterator<Item = &'a CampaignRun>,
{
    let in_cluster = |id: &str| {
        fleet
            .hosts
            .get(id)
            .filter(|v| v.id != except && v.role == Role::Manager && v.cluster() == cluster)
    };
    for id in fleet.manual.keys() {
        if let Some(v) = in_cluster(id) {
            return Some(format!("{} (manual maintenance)", v.hostname));
        }
    }
    for run in campaigns {
        for h in &run.hosts {
            if h.host_id == except || h.role != Role::Manager || !h.state.holds_slot() {
                continue;
            }
            let same_cluster = fleet
                .hosts
                .get(&h.host_id)
                .map(|v| v.cluster() == cluster)
                .unwrap_or(h.cluster == cluster);
            if same_cluster {
                return Some(format!("{} (campaign {})", h.hostname, run.id));
            }
        }
    }
    for (action, op) in &fleet.operator_actions {
        if let Some(v) = in_cluster(&op.host) {
            return Some(format!(
                "{} ({})",
                v.hostname,
                Holder::Operator {
                    by: op.by.clone(),
                    action: action.clone(),
                }
            ));
        }
    }
    None
}
