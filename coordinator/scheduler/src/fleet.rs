//! What the scheduler knows about the fleet: one [`HostView`] per enrolled host (as the
//! coordinator last saw it) and the hosts an operator put into manual maintenance.
//!
//! Manual maintenance follows the hyper-converged runbook's node states
//! (Running → Entering → Maintenance → Leaving → Running) and holds the same slots a campaign
//! would, so the one-manager-per-cluster rule covers both.

use std::collections::BTreeMap;
use std::fmt;

use pitcrew_proto::policy::LocalPolicy;
use serde::{Deserialize, Serialize};

/// The two roles pitcrew knows. Managers carry the orchestrator's quorum; workers carry load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Worker,
    Manager,
}

impl Role {
    /// The spelling used in campaign files, plans and the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }

    /// Parses `worker` / `manager` (the only spellings the files use).
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "worker" => Some(Role::Worker),
            "manager" => Some(Role::Manager),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host as the scheduler sees it. The coordinator builds it from the store (enrollment:
/// id, role, labels) and the live session (connected, healthy, boot id, policy from facts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    /// Stable id from `/etc/machine-id`, also the certificate's name.
    pub id: String,
    pub hostname: String,
    pub role: Role,
    /// Labels from the join token; `cluster` names the orchestrator cluster.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Whether the agent's session is up right now. Work is only sent to connected agents.
    pub connected: bool,
    /// Whether the host passes the coordinator's liveness view (heartbeats, last health).
    /// The quorum guard needs every other manager of a cluster healthy.
    pub healthy: bool,
    /// The boot id the agent last reported; a reboot step is complete only when it changes.
    #[serde(default)]
    pub boot_id: String,
    /// The local policy reported in facts, used by the planner to predict refusals.
    #[serde(default)]
    pub policy: Option<LocalPolicy>,
    /// What the host last reported of itself that `[select] when` conditions read; `None`
    /// until it has reported facts.
    #[serde(default)]
    pub facts: Option<crate::conditions::HostFacts>,
}

impl HostView {
    /// The cluster the host belongs to: label `cluster`, or the default cluster `""`.
    pub fn cluster(&self) -> &str {
        self.labels.get("cluster").map(String::as_str).unwrap_or("")
    }

    /// Whether `name` designates this host (by id or by hostname).
    pub fn is_named(&self, name: &str) -> bool {
        self.id == name || self.hostname == name
    }
}

/// States of a host under manual maintenance (`pitcrew maintenance enable|disable HOST`).
/// A host absent from [`Fleet::manual`] is Running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManualPhase {
    /// Workloads are being moved off the host (drain/migration).
    Entering,
    /// Out of service: the operator may reboot or power it off.
    Maintenance,
    /// Coming back: workloads return; the slot is still held until it is Running again.
    Leaving,
}

impl fmt::Display for ManualPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ManualPhase::Entering => "entering",
            ManualPhase::Maintenance => "maintenance",
            ManualPhase::Leaving => "leaving",
        })
    }
}

/// A host held out of service by an operator rather than a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualState {
    pub phase: ManualPhase,
    /// When the current phase began (for display and the per-node log).
    pub since_ms: i64,
    /// The operator who enabled it (audit is the runtime's; kept here for display).
    #[serde(default)]
    pub by: String,
}

/// A disruptive action an operator runs by hand (`pitcrew do`), admitted by
/// [`crate::operator::admit_action`] and in flight until it finishes. While it runs it holds its
/// host like manual maintenance does (a manager holds its cluster's one manager slot), so no
/// campaign starts the host, or another manager of its cluster, under it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OperatorAction {
    /// The host it runs on (id).
    pub host: String,
    /// The operator who runs it.
    pub by: String,
    /// Admitted with `--force` over a holder: an audited override, not a slot of its own (the
    /// invariant checker leaves it out; `decide` still keeps campaigns off its host).
    #[serde(default)]
    pub forced: bool,
}

/// Everything the scheduler reads about the fleet at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fleet {
    /// Every enrolled host by id.
    pub hosts: BTreeMap<String, HostView>,
    /// Hosts in manual maintenance by id; absent means Running.
    #[serde(default)]
    pub manual: BTreeMap<String, ManualState>,
    /// Operators' disruptive actions in flight, by action id.
    #[serde(default)]
    pub operator_actions: BTreeMap<String, OperatorAction>,
    /// Hosts whose agents ran actions when the coordinator (re)started, by id, with until when
    /// (Unix ms) they may take to come back and replay their results: a step of theirs is not
    /// failed for a missing result before then, so an outage longer than a step's deadline
    /// does not fail work that finished meanwhile. Everything else is decided as usual.
    #[serde(default)]
    pub awaited: BTreeMap<String, i64>,
}

impl Fleet {
    /// Builds a fleet from a list of hosts with no manual maintenance.
    pub fn from_hosts(hosts: impl IntoIterator<Item = HostView>) -> Fleet {
        Fleet {
            hosts: hosts.into_iter().map(|h| (h.id.clone(), h)).collect(),
            manual: BTreeMap::new(),
            operator_actions: BTreeMap::new(),
            awaited: BTreeMap::new(),
        }
    }

    /// Whether `host`'s agent may still come back with results after a restart at `now_ms`.
    pub fn is_awaited(&self, host: &str, now_ms: i64) -> bool {
        self.awaited.get(host).is_some_and(|until| now_ms < *until)
    }

    /// Finds a host by id or hostname.
    pub fn find(&self, name: &str) -> Option<&HostView> {
        self.hosts
            .get(name)
            .or_else(|| self.hosts.values().find(|h| h.hostname == name))
    }
}
