//! Campaign runs as stored: a header row per run (state, failures, release times), its parsed
//! spec written once, and one row per host whose progress is the only thing a host-step
//! rewrites — so a write costs the same in a 10-host and a 10,000-host campaign.
//!
//! Manual maintenance is a row per host held by hand.

use std::collections::BTreeMap;

use pitcrew_scheduler::{CampaignRun, HostRun, ManualState};
use rusqlite::{Connection, params};
use serde_json::Value;

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

/// Writes a new run: header, spec and every host's steps and progress.
pub fn insert_run(
    conn: &Connection,
    run: &CampaignRun,
    spec_toml: &str,
    created_by: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO campaign_runs (id, name, spec_toml, spec_json, header_json, created_at_ms, created_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            run.id,
            run.spec.name,
            spec_toml,
            to_json("campaign spec", &run.spec)?,
            header_json(run)?,
            run.created_at_ms,
            created_by
        ],
    )?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO campaign_hosts (campaign_id, position, host_id, steps_json, progress_json)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (position, host) in run.hosts.iter().enumerate() {
        stmt.execute(params![
            run.id,
            i64::try_from(position).unwrap_or(i64::MAX),
            host.host_id,
            to_json("host steps", &host.steps)?,
            host_progress_json(host)?
        ])?;
    }
    Ok(())
}

/// Rewrites a run's header (its state, failures or release times changed).
pub fn put_header(
    conn: &Connection,
    campaign_id: &str,
    header_json: &str,
) -> Result<(), StoreError> {
    let mut stmt =
        conn.prepare_cached("UPDATE campaign_runs SET header_json = ?2 WHERE id = ?1")?;
    if stmt.execute(params![campaign_id, header_json])? == 0 {
        return Err(StoreError::Corrupt(format!(
            "campaign {campaign_id} has no row to update"
        )));
    }
    Ok(())
}

/// Rewrites one host's progress.
pub fn put_host(conn: &Connection, row: &CampaignHostRow) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE campaign_hosts SET progress_json = ?3 WHERE campaign_id = ?1 AND host_id = ?2",
    )?;
    if stmt.execute(params![row.campaign_id, row.host_id, row.progress_json])? == 0 {
        return Err(StoreError::Corrupt(format!(
            "host {} of campaign {} has no row to update",
            row.host_id, row.campaign_id
        )));
    }
    Ok(())
}

/// Every run, oldest first, reassembled from its rows.
pub fn load_all(conn: &Connection) -> Result<Vec<CampaignRecord>, StoreError> {
    let headers: Vec<(String, String, String, String, String)> = {
        let mut stmt = conn.prepare(
            "SELECT id, spec_toml, spec_json, header_json, created_by FROM campaign_runs
             ORDER BY created_at_ms, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut out = Vec::with_capacity(headers.len());
    let mut hosts_stmt = conn.prepare(
        "SELECT host_id, steps_json, progress_json FROM campaign_hosts WHERE campaign_id = ?1
         ORDER BY position",
    )?;
    for (id, spec_toml, spec_json, header, created_by) in headers {
        let what = format!("campaign {id}");
        let mut run: Value = from_json(&what, &header)?;
        let spec: Value = from_json(&what, &spec_json)?;
        let mut hosts = Vec::new();
        let mut rows = hosts_stmt.query(params![id])?;
        while let Some(row) = rows.next()? {
            let host_id: String = row.get(0)?;
            let steps: String = row.get(1)?;
            let progress: String = row.get(2)?;
            let what = format!("host {host_id} of campaign {id}");
            let mut host: Value = from_json(&what, &progress)?;
            let steps: Value = from_json(&what, &steps)?;
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
        out.push(CampaignRecord {
            run,
            spec_toml,
            created_by,
        });
    }
    Ok(out)
}

/// Sets (Some) or clears (None) a host's manual maintenance.
pub fn put_manual(
    conn: &Connection,
    host_id: &str,
    state: Option<&ManualState>,
) -> Result<(), StoreError> {
    match state {
        Some(state) => conn.execute(
            "INSERT INTO manual_maintenance (host_id, state_json) VALUES (?1, ?2)
             ON CONFLICT(host_id) DO UPDATE SET state_json = excluded.state_json",
            params![host_id, to_json("manual maintenance", state)?],
        )?,
        None => conn.execute(
            "DELETE FROM manual_maintenance WHERE host_id = ?1",
            params![host_id],
        )?,
    };
    Ok(())
}

pub fn load_manual(conn: &Connection) -> Result<BTreeMap<String, ManualState>, StoreError> {
    let mut stmt = conn.prepare("SELECT host_id, state_json FROM manual_maintenance")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (host, text) = row?;
        let state = from_json(&format!("manual maintenance of {host}"), &text)?;
        out.insert(host, state);
    }
    Ok(out)
}
