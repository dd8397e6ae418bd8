//! What operators read about campaigns, built from the engine's current state and the blockers
//! of its last turn — never by re-reading the store or deciding again.
//!
//! A view costs what it shows: a page of hosts, plus counts by state. A campaign of 10,000
//! hosts is listed in pages; `watch` shows the hosts that are moving or stuck first.

use std::collections::{BTreeMap, HashMap};

use pitcrew_scheduler::{Blocker, CampaignRun, CampaignState, Decisions, HostRun, HostState, Role};

/// Which hosts of a campaign a view carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPage {
    /// None: counts only (campaign lists).
    None,
    /// `limit` hosts from `offset`, in run order.
    Range { offset: usize, limit: usize },
    /// Up to `limit` hosts, those in progress, failed or waiting on a blocker of their own
    /// first (live views).
    Active { limit: usize },
}

/// One host of a campaign as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    pub host_id: String,
    pub hostname: String,
    pub role: Role,
    pub state: HostState,
    /// The label of the step in flight or next, while the host is in progress.
    pub current_step: String,
    pub steps_done: usize,
    pub steps_total: usize,
    /// Why it waits, if it does.
    pub blocker: Option<String>,
    pub last_error: Option<String>,
}

/// A campaign as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignView {
    pub id: String,
    pub name: String,
    pub state: CampaignState,
    /// Why the campaign as a whole waits, if it does.
    pub blocker: Option<String>,
    pub failures: u32,
    pub max_failures: u32,
    pub created_at_ms: i64,
    pub created_by: String,
    pub spec_toml: String,
    /// Hosts by state (every host of the run, whatever the page).
    pub counts: BTreeMap<HostState, usize>,
    pub hosts_total: usize,
    /// The page asked for.
    pub hosts: Vec<HostStatus>,
    /// Where the next page starts, when there is one.
    pub next_offset: Option<usize>,
}

/// Blockers of the last turn, indexed on first use (a turn can block thousands of hosts; a
/// view looks up each of its hosts once).
#[derive(Debug, Default)]
pub(crate) struct LastTurn {
    pub decisions: Decisions,
    index: Option<HashMap<(String, Option<String>), usize>>,
}

impl LastTurn {
    pub fn new(decisions: Decisions) -> LastTurn {
        LastTurn {
            decisions,
            index: None,
        }
    }

    fn lookup(&mut self, campaign: &str, host: Option<&str>) -> Option<&Blocker> {
        let blockers = &self.decisions.blockers;
        let index = self.index.get_or_insert_with(|| {
            let mut index = HashMap::with_capacity(blockers.len());
            for (i, b) in blockers.iter().enumerate() {
                // The first blocker recorded for a host is the one decide saw first.
                index
                    .entry((b.campaign.clone(), b.host.clone()))
                    .or_insert(i);
            }
            index
        });
        let i = *index.get(&(campaign.to_owned(), host.map(str::to_owned)))?;
        blockers.get(i).map(|b| &b.blocker)
    }
}

fn host_status(run: &CampaignRun, h: &HostRun, last: &mut LastTurn) -> HostStatus {
    let total = h.steps.len();
    HostStatus {
        host_id: h.host_id.clone(),
        hostname: h.hostname.clone(),
        role: h.role,
        state: h.state,
        current_step: if h.state.in_progress() {
            h.current_step()
                .map(|s| s.label.clone())
                .unwrap_or_default()
        } else {
            String::new()
        },
        steps_done: if h.state.finished() {
            total
        } else {
            h.step.min(total)
        },
        steps_total: total,
        blocker: last
            .lookup(&run.id, Some(&h.host_id))
            .map(ToString::to_string),
        last_error: h.last_error.clone(),
    }
}

/// Whether a host belongs near the top of a live view.
fn is_active(h: &HostRun) -> bool {
    h.state.in_progress() || h.state == HostState::Failed || h.gate_failure.is_some()
}

/// Builds the view of one run.
pub(crate) fn campaign_view(
    run: &CampaignRun,
    spec_toml: &str,
    created_by: &str,
    last: &mut LastTurn,
    page: HostPage,
) -> CampaignView {
    let mut counts = BTreeMap::new();
    for h in &run.hosts {
        *counts.entry(h.state).or_insert(0) += 1;
    }
    let (hosts, next_offset) = match page {
        HostPage::None => (Vec::new(), None),
        HostPage::Range { offset, limit } => {
            let end = offset.saturating_add(limit).min(run.hosts.len());
            let hosts = run
                .hosts
                .get(offset.min(end)..end)
                .unwrap_or_default()
                .iter()
                .map(|h| host_status(run, h, last))
                .collect();
            (hosts, (end < run.hosts.len()).then_some(end))
        }
        HostPage::Active { limit } => {
            let mut chosen: Vec<&HostRun> = run
                .hosts
                .iter()
                .filter(|h| is_active(h))
                .take(limit)
                .collect();
            let room = limit.saturating_sub(chosen.len());
            chosen.extend(run.hosts.iter().filter(|h| !is_active(h)).take(room));
            let hosts = chosen
                .into_iter()
                .map(|h| host_status(run, h, last))
                .collect();
            (hosts, None)
        }
    };
    CampaignView {
        id: run.id.clone(),
        name: run.spec.name.clone(),
        state: run.state,
        blocker: last.lookup(&run.id, None).map(ToString::to_string),
        failures: run.failures,
        max_failures: run.allowed_failures(),
        created_at_ms: run.created_at_ms,
        created_by: created_by.to_owned(),
        spec_toml: spec_toml.to_owned(),
        counts,
        hosts_total: run.hosts.len(),
        hosts,
        next_offset,
    }
}
