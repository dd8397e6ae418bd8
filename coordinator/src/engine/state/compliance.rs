//! What the compliance report reads of the campaigns: when each campaign last succeeded on a
//! host (the host done in a run of that name). Asked for a page of hosts at a time, so a
//! report costs its page times the runs kept, never the whole fleet at once.

use std::collections::BTreeMap;

use pitcrew_scheduler::HostState;

use super::EngineState;

/// A campaign's latest success on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignSuccess {
    /// The campaign's name (its file's `name`): runs of one name are one campaign.
    pub campaign: String,
    /// The run in which it succeeded.
    pub run_id: String,
    pub finished_at_ms: i64,
}

impl EngineState {
    /// For each host (in order), each campaign's latest success on it, by campaign name.
    pub fn last_successes(&self, host_ids: &[String]) -> Vec<Vec<CampaignSuccess>> {
        host_ids
            .iter()
            .map(|id| {
                let mut latest: BTreeMap<&str, CampaignSuccess> = BTreeMap::new();
                for run in &self.runs {
                    let Some(host) = run.host(id) else { continue };
                    let (HostState::Done, Some(finished)) = (host.state, host.finished_at_ms)
                    else {
                        continue;
                    };
                    let name = run.spec.name.as_str();
                    if latest.get(name).is_none_or(|s| s.finished_at_ms < finished) {
                        latest.insert(
                            name,
                            CampaignSuccess {
                                campaign: name.to_owned(),
                                run_id: run.id.clone(),
                                finished_at_ms: finished,
                            },
                        );
                    }
                }
                // Runs archived since keep only their successes (see `archive.rs`).
                let mut merged: std::collections::HashMap<String, CampaignSuccess> = latest
                    .into_values()
                    .map(|s| (s.campaign.clone(), s))
                    .collect();
                if let Some(archived) = self.archived_successes_of(id) {
                    for s in archived.values() {
                        super::archive::merge_newest(&mut merged, s);
                    }
                }
                let mut out: Vec<CampaignSuccess> = merged.into_values().collect();
                out.sort_by(|a, b| a.campaign.cmp(&b.campaign));
                out
            })
            .collect()
    }
}
