//! The fleet's counts for the metrics, kept current by the changes themselves (cost grows
//! with the change, not with the fleet): hosts by role, state and connection, who holds hosts
//! out of service, hosts needing a reboot, campaigns by state, host-steps finished, and how
//! long hosts have waited on which blocker.
//!
//! Each change that can move a host from one count to another marks it *touched*: sessions
//! and facts (the engine's inputs) directly; the hosts a campaign change touched, manual
//! maintenance and host edits from the turn's own records; operators' `pitcrew do` holds by
//! comparing the few in flight with the last turn's. At the end of each turn the touched hosts
//! alone are looked at again ([`EngineState::refresh_gauges`]), and the engine publishes the
//! counts once the turn is durable. Debug builds recount everything after each turn and
//! compare (see `mod.rs`), so a change that forgets to touch a host fails the tests.
//!
//! Waits are the scheduler's host blockers of the turn's last decision, followed per
//! (campaign, host) from the turn their kind first appeared: a pass over what `decide` just
//! produced, never more than it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use pitcrew_scheduler::{CampaignState, ManualPhase, Role};

use super::{EngineState, Holding, Turn};

/// On whose behalf a host is out of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum HolderKind {
    Campaign,
    Manual,
    Operator,
}

impl HolderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HolderKind::Campaign => "campaign",
            HolderKind::Manual => "manual",
            HolderKind::Operator => "operator",
        }
    }

    pub const ALL: [HolderKind; 3] = [
        HolderKind::Campaign,
        HolderKind::Manual,
        HolderKind::Operator,
    ];
}

/// The host states the metrics (and `pitcrew hosts`) show.
pub(crate) const HOST_STATES: [&str; 5] =
    ["running", "entering", "maintenance", "leaving", "failed"];

/// Every campaign state, in the order of the counts.
pub(crate) const CAMPAIGN_STATES: [CampaignState; 6] = [
    CampaignState::Pending,
    CampaignState::Running,
    CampaignState::Paused,
    CampaignState::Completed,
    CampaignState::Incomplete,
    CampaignState::Cancelled,
];

fn campaign_index(state: CampaignState) -> usize {
    match state {
        CampaignState::Pending => 0,
        CampaignState::Running => 1,
        CampaignState::Paused => 2,
        CampaignState::Completed => 3,
        CampaignState::Incomplete => 4,
        CampaignState::Cancelled => 5,
    }
}

/// What the metrics say of one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostKey {
    pub role: Role,
    /// One of [`HOST_STATES`].
    pub state: &'static str,
    pub connected: bool,
    pub holder: Option<HolderKind>,
    pub reboot_required: bool,
}

/// The counts, as published.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct FleetCounts {
    /// (role, state, connected) → hosts. Entries stay (at 0) once made.
    pub hosts: BTreeMap<(Role, &'static str, bool), i64>,
    /// (role, holder) → hosts held out of service.
    pub slot_holders: BTreeMap<(Role, HolderKind), i64>,
    pub reboot_required: i64,
    /// Campaigns by state, in the order of [`CAMPAIGN_STATES`].
    pub campaigns: [i64; 6],
}

impl FleetCounts {
    fn add(&mut self, key: &HostKey, n: i64) {
        *self
            .hosts
            .entry((key.role, key.state, key.connected))
            .or_insert(0) += n;
        if let Some(holder) = key.holder {
            *self.slot_holders.entry((key.role, holder)).or_insert(0) += n;
        }
        self.reboot_required += i64::from(key.reboot_required) * n;
    }

    /// The same counts without the entries at 0 (for comparing with a recount).
    pub fn nonzero(&self) -> FleetCounts {
        FleetCounts {
            hosts: self
                .hosts
                .iter()
                .filter(|(_, n)| **n != 0)
                .map(|(k, n)| (*k, *n))
                .collect(),
            slot_holders: self
                .slot_holders
                .iter()
                .filter(|(_, n)| **n != 0)
                .map(|(k, n)| (*k, *n))
                .collect(),
            ..self.clone()
        }
    }
}

/// How a host-step ended, for `pitcrew_host_steps_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepOutcome {
    Succeeded,
    Failed,
}

/// One host waiting on one blocker kind since a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wait {
    kind: &'static str,
    since_ms: i64,
}

/// Hosts waiting on one blocker kind now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Waiting {
    pub hosts: i64,
    /// When the longest current wait began (unix ms); `None` when no host waits.
    pub oldest_since_ms: Option<i64>,
}

/// The counts and what keeps them current.
#[derive(Debug, Default)]
pub(crate) struct FleetGauges {
    /// What each host of the fleet counts as now.
    by_host: HashMap<String, HostKey>,
    pub counts: FleetCounts,
    /// Hosts whose last facts said a reboot is required.
    reboot_required: HashSet<String>,
    /// Hosts to look at again at the end of the turn.
    touched: HashSet<String>,
    /// Hosts with an operator's `pitcrew do` in flight at the last look (a few at most).
    operator_hosts: BTreeSet<String>,
    /// Host-steps finished since the last publication: (succeeded, failed).
    pub steps: (u64, u64),
    /// Campaign → host → its current wait.
    waits: HashMap<String, HashMap<String, Wait>>,
    /// Blocker kind → hosts waiting on it now. Kinds stay (at 0) once seen.
    pub waiting: BTreeMap<&'static str, Waiting>,
    /// Waits that ended since the last publication: (blocker kind, seconds).
    pub finished_waits: Vec<(&'static str, f64)>,
    /// Whether anything changed since the last publication.
    pub changed: bool,
}

impl FleetGauges {
    /// Marks a host to be looked at again at the end of the turn.
    pub fn touch(&mut self, host: &str) {
        if !self.touched.contains(host) {
            self.touched.insert(host.to_owned());
        }
    }

    /// A host's facts: whether it needs a reboot.
    pub fn facts(&mut self, host: &str, reboot_required: bool) {
        if reboot_required {
            self.reboot_required.insert(host.to_owned());
        } else {
            self.reboot_required.remove(host);
        }
        self.touch(host);
    }

    fn needs_reboot(&self, host: &str) -> bool {
        self.reboot_required.contains(host)
    }

    /// Sets what a host counts as (`None`: it left the fleet).
    pub fn set(&mut self, host: &str, key: Option<HostKey>) {
        let old = match key {
            Some(key) => match self.by_host.get_mut(host) {
                Some(slot) if *slot == key => return,
                Some(slot) => Some(std::mem::replace(slot, key)),
                None => {
                    self.by_host.insert(host.to_owned(), key);
                    None
                }
            },
            None => {
                self.reboot_required.remove(host);
                match self.by_host.remove(host) {
                    Some(old) => Some(old),
                    None => return,
                }
            }
        };
        if let Some(old) = old {
            self.counts.add(&old, -1);
        }
        if let Some(key) = key {
            self.counts.add(&key, 1);
        }
        self.changed = true;
    }

    /// A campaign entered a state (`from`: the one it left, `None` for a new campaign).
    pub fn campaign_moved(&mut self, from: Option<CampaignState>, to: CampaignState) {
        if from == Some(to) {
            return;
        }
        if let Some(from) = from {
            self.counts.campaigns[campaign_index(from)] -= 1;
        }
        self.counts.campaigns[campaign_index(to)] += 1;
        self.changed = true;
    }

    /// A finished campaign left the engine's working set (archived).
    pub fn campaign_left(&mut self, state: CampaignState) {
        let count = &mut self.counts.campaigns[campaign_index(state)];
        *count = count.saturating_sub(1);
        self.changed = true;
    }

    /// A host-step of a campaign ended.
    pub fn step_finished(&mut self, outcome: StepOutcome) {
        match outcome {
            StepOutcome::Succeeded => self.steps.0 += 1,
            StepOutcome::Failed => self.steps.1 += 1,
        }
        self.changed = true;
    }

    /// Follows the hosts' waits from one decision's blockers: `(campaign, host, kind)` in the
    /// order `decide` gave them (the first blocker of a host is the one shown). A wait whose
    /// kind is unchanged keeps its start; one that changed kind or ended is recorded as
    /// finished.
    pub fn waits<'a>(
        &mut self,
        blockers: impl Iterator<Item = (&'a str, &'a str, &'static str)>,
        now_ms: i64,
    ) {
        let mut old = std::mem::take(&mut self.waits);
        let mut next: HashMap<String, HashMap<String, Wait>> = HashMap::new();
        let before = self.waiting.clone();
        let finished_before = self.finished_waits.len();
        for waiting in self.waiting.values_mut() {
            *waiting = Waiting::default();
        }
        for (campaign, host, kind) in blockers {
            if next.get(campaign).is_some_and(|m| m.contains_key(host)) {
                continue;
            }
            let previous = old.get_mut(campaign).and_then(|m| m.remove_entry(host));
            let (host, since_ms) = match previous {
                Some((host, wait)) if wait.kind == kind => (host, wait.since_ms),
                Some((host, wait)) => {
                    self.finished_waits.push(ended(wait, now_ms));
                    (host, now_ms)
                }
                None => (host.to_owned(), now_ms),
            };
            let wait = Wait { kind, since_ms };
            match next.get_mut(campaign) {
                Some(hosts) => {
                    hosts.insert(host, wait);
                }
                None => {
                    // Sized for the campaign's waits of the last turn: most are still there.
                    let room = old.get(campaign).map_or(0, HashMap::len) + 1;
                    let mut hosts = HashMap::with_capacity(room);
                    hosts.insert(host, wait);
                    next.insert(campaign.to_owned(), hosts);
                }
            }
            let waiting = self.waiting.entry(kind).or_default();
            waiting.hosts += 1;
            waiting.oldest_since_ms = Some(
                waiting
                    .oldest_since_ms
                    .map_or(since_ms, |oldest| oldest.min(since_ms)),
            );
        }
        for wait in old.into_values().flat_map(HashMap::into_values) {
            self.finished_waits.push(ended(wait, now_ms));
        }
        self.waits = next;
        if self.waiting != before || self.finished_waits.len() != finished_before {
            self.changed = true;
        }
    }
}

fn ended(wait: Wait, now_ms: i64) -> (&'static str, f64) {
    let ms = now_ms.saturating_sub(wait.since_ms).max(0);
    (wait.kind, ms as f64 / 1000.0)
}

fn manual_state(phase: ManualPhase) -> &'static str {
    match phase {
        ManualPhase::Entering => "entering",
        ManualPhase::Maintenance => "maintenance",
        ManualPhase::Leaving => "leaving",
    }
}

impl EngineState {
    /// What the metrics say of one host now (`None`: not in the fleet).
    fn host_key(&self, id: &str) -> Option<HostKey> {
        let view = self.fleet.hosts.get(id)?;
        let (state, holder) = match self.holding(id) {
            Holding::Manual(m) => (manual_state(m.phase), Some(HolderKind::Manual)),
            Holding::Campaign(_, h) => (h.state.as_str(), Some(HolderKind::Campaign)),
            Holding::Operator(_) => ("running", Some(HolderKind::Operator)),
            Holding::Free => ("running", None),
        };
        Some(HostKey {
            role: view.role,
            state,
            connected: view.connected,
            holder,
            reboot_required: self.gauges.needs_reboot(id),
        })
    }

    /// Looks again at every host the turn touched, and only at those; returns whether there
    /// were any.
    pub(crate) fn refresh_gauges(&mut self, turn: &Turn) -> bool {
        for &(ci, hi) in &turn.dirty_hosts {
            if let Some(h) = self.runs.get(ci).and_then(|r| r.hosts.get(hi)) {
                self.gauges.touch(&h.host_id);
            }
        }
        for (host, _) in &turn.manual {
            self.gauges.touch(host);
        }
        for change in &turn.host_changes {
            self.gauges.touch(change.host_id());
        }
        if turn.campaigns_changed {
            // Operators' actions come and go in several places; there are a few at most.
            let now: BTreeSet<String> = self
                .fleet
                .operator_actions
                .values()
                .map(|op| op.host.clone())
                .collect();
            if now != self.gauges.operator_hosts {
                let moved: Vec<String> = now
                    .symmetric_difference(&self.gauges.operator_hosts)
                    .cloned()
                    .collect();
                for host in moved {
                    self.gauges.touch(&host);
                }
                self.gauges.operator_hosts = now;
            }
        }
        let touched = std::mem::take(&mut self.gauges.touched);
        let any = !touched.is_empty();
        for host in touched {
            let key = self.host_key(&host);
            self.gauges.set(&host, key);
        }
        any
    }

    /// Every host looked at again (at load).
    pub(crate) fn count_every_host(&mut self) {
        let ids: Vec<String> = self.fleet.hosts.keys().cloned().collect();
        for id in ids {
            let key = self.host_key(&id);
            self.gauges.set(&id, key);
        }
    }

    /// The counts recomputed from scratch (debug builds compare them with the kept ones).
    pub(crate) fn recount_gauges(&self) -> FleetCounts {
        let mut counts = FleetCounts::default();
        for id in self.fleet.hosts.keys() {
            if let Some(key) = self.host_key(id) {
                counts.add(&key, 1);
            }
        }
        for run in &self.runs {
            counts.campaigns[campaign_index(run.state)] += 1;
        }
        counts
    }

    /// Follows the hosts' waits from the last decision's blockers.
    pub(crate) fn track_waits(&mut self, now_ms: i64) {
        let blockers = self.last.decisions.blockers.iter().filter_map(|b| {
            b.host
                .as_deref()
                .map(|host| (b.campaign.as_str(), host, b.blocker.kind()))
        });
        self.gauges.waits(blockers, now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(role: Role, state: &'static str, connected: bool) -> HostKey {
        HostKey {
            role,
            state,
            connected,
            holder: None,
            reboot_required: false,
        }
    }

    #[test]
    fn a_host_moves_between_counts_and_leaves_them_when_removed() {
        let mut g = FleetGauges::default();
        g.set("a", Some(key(Role::Worker, "running", false)));
        g.set("b", Some(key(Role::Manager, "running", true)));
        assert_eq!(g.counts.hosts[&(Role::Worker, "running", false)], 1);
        // Connecting moves it; the old entry stays, at 0.
        g.set("a", Some(key(Role::Worker, "running", true)));
        assert_eq!(g.counts.hosts[&(Role::Worker, "running", false)], 0);
        assert_eq!(g.counts.hosts[&(Role::Worker, "running", true)], 1);
        // Taken by a campaign, needing a reboot.
        let held = HostKey {
            holder: Some(HolderKind::Campaign),
            reboot_required: true,
            ..key(Role::Worker, "maintenance", true)
        };
        g.set("a", Some(held));
        assert_eq!(g.counts.hosts[&(Role::Worker, "maintenance", true)], 1);
        assert_eq!(
            g.counts.slot_holders[&(Role::Worker, HolderKind::Campaign)],
            1
        );
        assert_eq!(g.counts.reboot_required, 1);
        g.changed = false;
        // The same key again changes nothing.
        g.set("a", Some(held));
        assert!(!g.changed);
        g.set("a", None);
        assert_eq!(g.counts.reboot_required, 0);
        assert_eq!(
            g.counts.slot_holders[&(Role::Worker, HolderKind::Campaign)],
            0
        );
        assert_eq!(g.counts.hosts.values().sum::<i64>(), 1);
        // Removing an unknown host is nothing.
        g.set("zzz", None);
        assert_eq!(g.counts.hosts.values().sum::<i64>(), 1);
    }

    #[test]
    fn campaigns_are_counted_by_the_state_they_are_in() {
        let mut g = FleetGauges::default();
        g.campaign_moved(None, CampaignState::Pending);
        g.campaign_moved(None, CampaignState::Pending);
        g.campaign_moved(Some(CampaignState::Pending), CampaignState::Running);
        g.campaign_moved(Some(CampaignState::Running), CampaignState::Running);
        g.campaign_moved(Some(CampaignState::Running), CampaignState::Completed);
        assert_eq!(g.counts.campaigns, [1, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn a_wait_keeps_its_start_while_its_kind_holds_and_ends_when_it_changes() {
        let mut g = FleetGauges::default();
        g.waits(
            [
                ("c1", "h1", "no_slot"),
                ("c1", "h2", "no_slot"),
                // A second blocker of the same host: the first one counts.
                ("c1", "h2", "window_closed"),
                ("c2", "h1", "quorum_guard"),
            ]
            .into_iter(),
            1_000,
        );
        assert_eq!(
            g.waiting["no_slot"],
            Waiting {
                hosts: 2,
                oldest_since_ms: Some(1_000)
            }
        );
        assert_eq!(g.waiting["quorum_guard"].hosts, 1);
        assert!(g.finished_waits.is_empty());
        // h1 still waits for a slot; h2 now waits for its window; c2's h1 started.
        g.waits(
            [("c1", "h1", "no_slot"), ("c1", "h2", "window_closed")].into_iter(),
            4_000,
        );
        assert_eq!(
            g.waiting["no_slot"],
            Waiting {
                hosts: 1,
                oldest_since_ms: Some(1_000)
            }
        );
        assert_eq!(
            g.waiting["window_closed"],
            Waiting {
                hosts: 1,
                oldest_since_ms: Some(4_000)
            }
        );
        assert_eq!(g.waiting["quorum_guard"], Waiting::default());
        let mut finished = g.finished_waits.clone();
        finished.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(finished, vec![("no_slot", 3.0), ("quorum_guard", 3.0)]);
        // Nothing waits any more.
        g.finished_waits.clear();
        g.waits(std::iter::empty(), 10_000);
        assert_eq!(g.waiting.values().map(|w| w.hosts).sum::<i64>(), 0);
        let mut finished = g.finished_waits.clone();
        finished.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(finished, vec![("no_slot", 9.0), ("window_closed", 6.0)]);
    }
}
