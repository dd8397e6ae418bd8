//! Who holds hosts out of service right now (other campaigns, manual maintenance, operators'
//! `pitcrew do`), as plain data: the current state a plan starts from. The engine builds it
//! from its runs and its fleet; the planner reads it, so the scheduler stays pure.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::fleet::{Fleet, Role};
use crate::run::{CampaignRun, CampaignState};

/// Who holds one host out of service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum HeldBy {
    /// A host of a running campaign that holds its slot (in progress, or failed).
    Campaign { id: String, name: String },
    /// Manual maintenance, enabled by this operator.
    Manual { operator: String },
    /// An operator's disruptive `pitcrew do` in flight.
    Operator { operator: String, action: String },
}

impl fmt::Display for HeldBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeldBy::Campaign { id, name } => write!(f, "campaign {id} ({name:?})"),
            HeldBy::Manual { operator } if operator.is_empty() => f.write_str("manual maintenance"),
            HeldBy::Manual { operator } => write!(f, "manual maintenance by {operator}"),
            HeldBy::Operator { operator, action } => {
                write!(f, "pitcrew do by {operator} (action {action})")
            }
        }
    }
}

/// One host held out of service, with what the planner needs to name it and its slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldHost {
    pub host_id: String,
    pub hostname: String,
    pub role: Role,
    pub cluster: String,
    pub by: HeldBy,
}

/// Every host held out of service at one instant, by host id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holders {
    pub hosts: BTreeMap<String, HeldHost>,
}

impl Holders {
    /// The holders of `fleet` and `runs` as the scheduler counts them when it decides: manual
    /// maintenance, and every host of a campaign not yet over that holds its slot.
    pub fn from_state<'a>(
        fleet: &Fleet,
        runs: impl IntoIterator<Item = &'a CampaignRun>,
    ) -> Holders {
        let mut holders = Holders::default();
        for (id, m) in &fleet.manual {
            if let Some(v) = fleet.hosts.get(id) {
                holders.hosts.insert(
                    id.clone(),
                    HeldHost {
                        host_id: id.clone(),
                        hostname: v.hostname.clone(),
                        role: v.role,
                        cluster: v.cluster().to_owned(),
                        by: HeldBy::Manual {
                            operator: m.by.clone(),
                        },
                    },
                );
            }
        }
        // As `decide` counts them: an operator's action holds a host nothing else holds.
        for (action, op) in &fleet.operator_actions {
            if let Some(v) = fleet.hosts.get(&op.host)
                && !holders.hosts.contains_key(&op.host)
            {
                holders.hosts.insert(
                    op.host.clone(),
                    HeldHost {
                        host_id: op.host.clone(),
                        hostname: v.hostname.clone(),
                        role: v.role,
                        cluster: v.cluster().to_owned(),
                        by: HeldBy::Operator {
                            operator: op.by.clone(),
                            action: action.clone(),
                        },
                    },
                );
            }
        }
        for run in runs {
            // The same runs `decide` is given: a finished campaign holds nothing.
            if matches!(
                run.state,
                CampaignState::Completed | CampaignState::Incomplete
            ) {
                continue;
            }
            for h in run.hosts.iter().filter(|h| h.state.holds_slot()) {
                let cluster = fleet
                    .hosts
                    .get(&h.host_id)
                    .map(|v| v.cluster().to_owned())
                    .unwrap_or_else(|| h.cluster.clone());
                holders.hosts.insert(
                    h.host_id.clone(),
                    HeldHost {
                        host_id: h.host_id.clone(),
                        hostname: h.hostname.clone(),
                        role: h.role,
                        cluster,
                        by: HeldBy::Campaign {
                            id: run.id.clone(),
                            name: run.spec.name.clone(),
                        },
                    },
                );
            }
        }
        holders
    }

    /// Who holds `host_id`, if anyone.
    pub fn get(&self, host_id: &str) -> Option<&HeldHost> {
        self.hosts.get(host_id)
    }

    /// The held managers of `cluster` (at most one while the invariants hold).
    pub fn managers_of<'a>(&'a self, cluster: &'a str) -> impl Iterator<Item = &'a HeldHost> {
        self.hosts
            .values()
            .filter(move |h| h.role == Role::Manager && h.cluster == cluster)
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}
