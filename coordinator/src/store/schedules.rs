//! Campaign schedules and the archive of old runs, as stored.
//!
//! A schedule is one row per campaign name (registering a name again replaces its row): the
//! campaign file, who registered it, whether it is paused, and when it last fired with the run
//! that fire started (or why it started none). The engine writes these rows in its turns, so a
//! fire and the run it starts are one transaction.
//!
//! An archived run keeps every row it had; its header row is marked archived with a summary
//! (state and counts) for `campaign ls --archived`, and the engine no longer loads it at
//! start. What the compliance report needs of it (each host done, by campaign name) is folded
//! into `campaign_successes`, one row per host and campaign name, kept at its newest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::tx::StoredRun;

/// One registered schedule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScheduleRecord {
    /// The campaign's name: at most one schedule per name.
    pub name: String,
    pub spec_toml: String,
    pub source_name: String,
    pub created_by: String,
    pub created_at_ms: i64,
    pub paused: bool,
    /// When it last fired (Unix ms); 0 if it never did.
    pub last_fire_ms: i64,
    /// The run its last fire started; "" if that fire started none.
    pub last_run_id: String,
    /// Why the last fire started no run ("" when it started one).
    pub last_note: String,
}

/// A run's summary, kept on its header row once archived (what `campaign ls --archived`
/// shows without reading its hosts).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ArchivedSummary {
    pub state: String,
    pub failures: u32,
    pub max_failures: u32,
    pub hosts_total: u32,
    pub host_counts: BTreeMap<String, u32>,
    /// When the run's last host finished (its creation when none did).
    pub finished_at_ms: i64,
}

/// What archiving one run writes.
#[derive(Debug, Clone)]
pub struct ArchivedRun {
    pub id: String,
    pub name: String,
    pub at_ms: i64,
    pub summary: ArchivedSummary,
    /// (host id, finished at) of every host done in the run.
    pub successes: Vec<(String, i64)>,
}

/// An archived run as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedRow {
    pub id: String,
    pub name: String,
    pub created_at_ms: i64,
    pub created_by: String,
    pub archived_at_ms: i64,
    pub summary: ArchivedSummary,
}

/// The filters of `campaign ls --archived`: newest first.
#[derive(Debug, Clone, Default)]
pub struct ArchiveFilter {
    /// A final state (completed, incomplete, cancelled); "" for any.
    pub state: String,
    /// A name pattern (`*` any run of characters, `?` one), ASCII case-insensitive; "" any.
    pub name: String,
    pub limit: u32,
}

impl ArchiveFilter {
    /// The name pattern as SQL `LIKE` text with `\` as its escape.
    pub(crate) fn name_like(&self) -> String {
        if self.name.is_empty() {
            return "%".into();
        }
        let mut out = String::with_capacity(self.name.len());
        for c in self.name.chars() {
            match c {
                '*' => out.push('%'),
                '?' => out.push('_'),
                '%' | '_' | '\\' => {
                    out.push('\\');
                    out.push(c);
                }
                c => out.push(c),
            }
        }
        out
    }
}

/// A host's latest success in a campaign that has been archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuccessRow {
    pub host_id: String,
    pub campaign: String,
    pub run_id: String,
    pub finished_at_ms: i64,
}

/// An archived run's summary from its column.
pub(crate) fn summary_from_json(id: &str, text: &str) -> Result<ArchivedSummary, StoreError> {
    super::from_json(&format!("archived campaign {id}"), text)
}

/// A run read back whole (for `campaign show` of an archived run).
pub(crate) fn assemble(stored: StoredRun) -> Result<super::CampaignRecord, StoreError> {
    super::campaigns::assemble(stored)
}
