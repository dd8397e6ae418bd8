//! Which runs the engine keeps, and which it lists. Finished runs older than the retention
//! (`campaign_archive_after`) leave the working set: their rows are marked archived in the
//! store (read back by `campaign ls --archived` and `campaign show`), and what the compliance
//! report needs of them — each host's latest success per campaign name — is kept here, one
//! entry per host and name, so memory follows the fleet and its campaigns, not every run ever
//! made.

use std::collections::{BTreeMap, HashMap};

use pitcrew_scheduler::{CampaignRun, HostState};

use super::{CampaignSuccess, EngineState, Meta, Turn};
use crate::engine::view::{CampaignView, HostPage};
use crate::store::{ArchivedRun, ArchivedSummary, SuccessRow};

/// The filters of `campaign ls` over the runs the engine holds.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// A state name, "active" (pending, running or paused), or "" for any.
    pub state: String,
    /// A name pattern: `*` any characters, `?` one; ASCII case-insensitive; "" for any.
    pub name: String,
    /// At most this many, newest first.
    pub limit: usize,
}

impl RunFilter {
    fn keeps(&self, run: &CampaignRun) -> bool {
        let state = match self.state.as_str() {
            "" => true,
            "active" => !run.state.is_final(),
            s => run.state.as_str() == s,
        };
        state && (self.name.is_empty() || glob_matches(&self.name, &run.spec.name))
    }
}

/// `*` matches any run of characters, `?` one; ASCII letters match either case (as the
/// store's LIKE does for the archive).
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().map(|c| c.to_ascii_lowercase()).collect();
    let t: Vec<char> = text.chars().map(|c| c.to_ascii_lowercase()).collect();
    // Iterative wildcard matching with one backtrack point: linear in practice.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// When a run finished: its last host's finish, or its creation when no host finished.
pub(crate) fn finished_at_ms(run: &CampaignRun) -> i64 {
    run.hosts
        .iter()
        .filter_map(|h| h.finished_at_ms)
        .max()
        .unwrap_or(run.created_at_ms)
        .max(run.created_at_ms)
}

impl EngineState {
    /// The runs `filter` keeps, newest first, cut at its limit; and how many matched.
    pub fn list_filtered(&mut self, filter: &RunFilter) -> (Vec<CampaignView>, usize) {
        let matching: Vec<usize> = (0..self.runs.len())
            .rev()
            .filter(|&ci| filter.keeps(&self.runs[ci]))
            .collect();
        let matched = matching.len();
        let views = matching
            .into_iter()
            .take(filter.limit)
            .map(|ci| self.view_of(ci, HostPage::None))
            .collect();
        (views, matched)
    }

    /// Moves finished runs older than `after_ms` out of the working set; the turn writes their
    /// archive marks. Call only between turns: it renumbers the runs.
    pub fn archive_finished(&mut self, now_ms: i64, after_ms: i64, turn: &mut Turn) {
        // A cancelled run's failed host still holds its slot until an operator lets it go:
        // such a run stays, since who holds what is the engine's to know.
        let old = |run: &CampaignRun| {
            run.state.is_final()
                && !run.hosts.iter().any(|h| h.state.holds_slot())
                && finished_at_ms(run).saturating_add(after_ms) <= now_ms
        };
        if !self.runs.iter().any(old) {
            return;
        }
        let runs = std::mem::take(&mut self.runs);
        let metas = std::mem::take(&mut self.meta);
        self.by_id.clear();
        for (run, meta) in runs.into_iter().zip(metas) {
            if !old(&run) {
                self.by_id.insert(run.id.clone(), self.runs.len());
                self.runs.push(run);
                self.meta.push(meta);
                continue;
            }
            turn.archived.push(self.archive_one(&run, &meta, now_ms));
            self.gauges.campaign_left(run.state);
        }
        tracing::info!(
            message = "archived finished campaign runs",
            runs = turn.archived.len(),
            kept = self.runs.len()
        );
        turn.campaigns_changed = true;
    }

    /// What archiving `run` writes; its successes are folded into the kept ones.
    fn archive_one(&mut self, run: &CampaignRun, _meta: &Meta, now_ms: i64) -> ArchivedRun {
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        let mut successes = Vec::new();
        for h in &run.hosts {
            *counts.entry(h.state.as_str().to_owned()).or_insert(0) += 1;
            if let (HostState::Done, Some(at)) = (h.state, h.finished_at_ms) {
                successes.push((h.host_id.clone(), at));
                self.keep_success(&h.host_id, &run.spec.name, &run.id, at);
            }
        }
        ArchivedRun {
            id: run.id.clone(),
            name: run.spec.name.clone(),
            at_ms: now_ms,
            summary: ArchivedSummary {
                state: run.state.as_str().to_owned(),
                failures: run.failures,
                max_failures: run.spec.max_failures.allowed(run.hosts.len()),
                hosts_total: u32::try_from(run.hosts.len()).unwrap_or(u32::MAX),
                host_counts: counts,
                finished_at_ms: finished_at_ms(run),
            },
            successes,
        }
    }

    fn keep_success(&mut self, host: &str, campaign: &str, run_id: &str, at: i64) {
        let per_host = self.archived_successes.entry(host.to_owned()).or_default();
        if per_host.get(campaign).is_none_or(|s| s.finished_at_ms < at) {
            per_host.insert(
                campaign.to_owned(),
                CampaignSuccess {
                    campaign: campaign.to_owned(),
                    run_id: run_id.to_owned(),
                    finished_at_ms: at,
                },
            );
        }
    }

    /// The successes archived runs left, as the store kept them.
    pub(super) fn load_archived_successes(&mut self, rows: Vec<SuccessRow>) {
        for r in rows {
            self.keep_success(&r.host_id, &r.campaign, &r.run_id, r.finished_at_ms);
        }
    }

    /// A host's latest success per campaign name in archived runs.
    pub(super) fn archived_successes_of(
        &self,
        host: &str,
    ) -> Option<&BTreeMap<String, CampaignSuccess>> {
        self.archived_successes.get(host)
    }
}

/// Keeps the newest success per campaign name (used to merge archived and held runs).
pub(super) fn merge_newest(into: &mut HashMap<String, CampaignSuccess>, s: &CampaignSuccess) {
    if into
        .get(&s.campaign)
        .is_none_or(|old| old.finished_at_ms < s.finished_at_ms)
    {
        into.insert(s.campaign.clone(), s.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::glob_matches;

    #[test]
    fn name_patterns_match_like_the_archive_s() {
        assert!(glob_matches("shm*", "shm-fix"));
        assert!(glob_matches("SHM-?IX", "shm-fix"));
        assert!(glob_matches("*fix", "shm-fix"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("swarm-patch", "swarm-patch"));
        assert!(!glob_matches("swarm", "swarm-patch"));
        assert!(!glob_matches("s?", "shm"));
        assert!(glob_matches("*-*-*", "a-b-c"));
        assert!(!glob_matches("*x*", "abc"));
    }
}
