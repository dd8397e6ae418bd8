//! Campaign runs as stored: a header row per run (state, failures, release times), its parsed
//! spec written once, and one row per host whose progress is the only thing a host-step
//! rewrites — so a write costs the same in a 10-host and a 10,000-host campaign.
//!
//! Manual maintenance is a row per host held by hand.

use pitcrew_scheduler::{CampaignRun, HostRun};
use serde_json::Value;

use super::tx::{NewRunRows, StoredRun, Tx};
use super::{StoreError, from_json, to_json};

/// A campaign as read back at start-up: the run and what the run itself does not hold.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignRecord {
    pub run: CampaignRun,
    pub spec_toml: String,
    pub created_by: String,
}

/// One host's row, as the engine writes it after a change.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignHostRow {
    pub campaign_id: String,
    pub host_id: String,
    pub progress_json: String,
}

/// Serialises `value` as a JSON object without the fields in `leave_out` (they are stored in
/// their own columns, written once).
fn object_without<T: serde::Serialize>(
    what: &str,
    value: &T,
    leave_out: &[&str],
) -> Result<String, StoreError> {
    let mut json =
        serde_json::to_value(value).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
    if let Value::Object(map) = &mut json {
        for key in leave_out {
            map.remove(*key);
        }
    }
    Ok(json.to_string())
}

/// The progress column of one host: everything but its (static) steps.
pub fn host_progress_json(host: &HostRun) -> Result<String, StoreError> {
    object_without("host progress", host, &["steps"])
}

/// The header column of a run: everything but its hosts and its (static) spec.
pub fn header_json(run: &CampaignRun) -> Result<String, StoreError> {
    object_without("campaign header", run, &["hosts", "spec"])
}

/// A new run's rows: header, spec and every host's steps and progress.
pub(crate) fn new_run_rows(
    run: &CampaignRun,
    spec_toml: &str,
    created_by: &str,
) -> Result<NewRunRows, StoreError> {
    let hosts = run
        .hosts
        .iter()
        .enumerate()
        .map(|(position, host)| {
            Ok((
                i64::try_from(position).unwrap_or(i64::MAX),
                host.host_id.clone(),
                to_json("host steps", &host.steps)?,
                host_progress_json(host)?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(NewRunRows {
        id: run.id.clone(),
        name: run.spec.name.clone(),
        spec_toml: spec_toml.to_owned(),
        spec_json: to_json("campaign spec", &run.spec)?,
        header_json: header_json(run)?,
        created_at_ms: run.created_at_ms,
        created_by: created_by.to_owned(),
        hosts,
    })
}

/// Writes a new run.
pub(crate) async fn insert_run(
    tx: &mut dyn Tx,
    run: &CampaignRun,
    spec_toml: &str,
    created_by: &str,
) -> Result<(), StoreError> {
    let rows = new_run_rows(run, spec_toml, created_by)?;
    tx.insert_run(&rows).await
}

/// Rewrites a run's header; a run without a row is a broken store.
pub(crate) async fn put_header(
    tx: &mut dyn Tx,
    campaign_id: &str,
    header_json: &str,
) -> Result<(), StoreError> {
    if !tx.put_header(campaign_id, header_json).await? {
        return Err(StoreError::Corrupt(format!(
            "campaign {campaign_id} has no row to update"
        )));
    }
    Ok(())
}

/// Rewrites one host's progress; a host without a row is a broken store.
pub(crate) async fn put_host(tx: &mut dyn Tx, row: &CampaignHostRow) -> Result<(), StoreError> {
    if !tx.put_campaign_host(row).await? {
        return Err(StoreError::Corrupt(format!(
            "host {} of campaign {} has no row to update",
            row.host_id, row.campaign_id
        )));
    }
    Ok(())
}

/// Every run, oldest first, reassembled from its rows.
pub(crate) async fn load_all(tx: &mut dyn Tx) -> Result<Vec<CampaignRecord>, StoreError> {
    tx.load_runs().await?.into_iter().map(assemble).collect()
}

/// A run from its header, its spec and its hosts' rows.
pub(crate) fn assemble(stored: StoredRun) -> Result<CampaignRecord, StoreError> {
    let what = format!("campaign {}", stored.id);
    let mut run: Value = from_json(&what, &stored.header_json)?;
    let spec: Value = from_json(&what, &stored.spec_json)?;
    let mut hosts = Vec::with_capacity(stored.hosts.len());
    for (host_id, steps, progress) in &stored.hosts {
        let what = format!("host {host_id} of campaign {}", stored.id);
        let mut host: Value = from_json(&what, progress)?;
        let steps: Value = from_json(&what, steps)?;
        if let Value::Object(map) = &mut host {
            map.insert("steps".into(), steps);
        }
        hosts.push(host);
    }
    if let Value::Object(map) = &mut run {
        map.insert("spec".into(), spec);
        map.insert("hosts".into(), Value::Array(hosts));
    }
    let run: CampaignRun =
        serde_json::from_value(run).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
    Ok(CampaignRecord {
        run,
        spec_toml: stored.spec_toml,
        created_by: stored.created_by,
    })
}
