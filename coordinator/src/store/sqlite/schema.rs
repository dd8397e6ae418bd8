//! Schema versions of the store, applied in order at open and recorded in `PRAGMA user_version`.
//!
//! Version 1 is the first released layout (a campaign stored as one JSON document). Version 2
//! stores a campaign as a header row plus one row per host, so that a host's step rewrites that
//! host's row only; it converts any campaign and manual-maintenance data written by version 1.
//! Version 4 adds the operators' certificates (name, role, serial, validity, revocation); a
//! fleet upgraded to it starts with none, and `serve` registers the certificates `init` left
//! in the data dir (see `crate::operators::load`). Version 5 marks hosts removed from the fleet
//! (`pitcrew hosts remove`) rather than deleting them, so their history keeps naming them.
//! Version 6 adds campaign schedules and the archive of old runs (see `V6`).
//! Version 7 adds the webhook delivery record (`webhook_deliveries`).

use std::collections::BTreeMap;

use pitcrew_scheduler::{CampaignRun, ManualState};
use rusqlite::{Connection, params};

use super::super::{StoreError, campaigns, from_json};
use super::run_now;

/// The newest version this build knows. A store written by a newer build is refused rather
/// than misread.
pub(crate) const SCHEMA_VERSION: i64 = 7;

const V1: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    labels TEXT NOT NULL,
    uses_left INTEGER NOT NULL,
    uses_total INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS hosts (
    host_id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    role TEXT NOT NULL,
    labels TEXT NOT NULL,
    cert_serial TEXT NOT NULL,
    enrolled_at_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL DEFAULT 0,
    facts BLOB NOT NULL DEFAULT x''
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    host_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    step TEXT NOT NULL,
    result TEXT NOT NULL,
    message TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_host ON events(host_id, id);
CREATE INDEX IF NOT EXISTS events_campaign ON events(campaign_id, id);
CREATE TABLE IF NOT EXISTS actions (
    action_id TEXT PRIMARY KEY,
    host_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    request BLOB NOT NULL,
    result BLOB,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS campaigns (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec_toml TEXT NOT NULL,
    state_json TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

const V2: &str = "
CREATE TABLE campaign_runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec_toml TEXT NOT NULL,
    -- The parsed spec the run was created from: written once.
    spec_json TEXT NOT NULL,
    -- The run without its hosts: state, failures, release times. Rewritten only when one of
    -- those changes.
    header_json TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE campaign_hosts (
    campaign_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    host_id TEXT NOT NULL,
    -- The host's rendered steps: written once, when the run is created.
    steps_json TEXT NOT NULL,
    -- The host's progress: the one row a host-step rewrites.
    progress_json TEXT NOT NULL,
    PRIMARY KEY (campaign_id, host_id)
);
CREATE TABLE manual_maintenance (
    host_id TEXT PRIMARY KEY,
    state_json TEXT NOT NULL
);
CREATE INDEX hosts_by_name ON hosts(hostname, host_id);
CREATE INDEX actions_unfinished ON actions(host_id) WHERE result IS NULL;
";

const V3: &str = "
-- A token that may re-enroll this existing host (a rebuilt machine); '' for new hosts only.
ALTER TABLE tokens ADD COLUMN replace_host TEXT NOT NULL DEFAULT '';
-- A renewed certificate not yet used: the old one stays valid until the new one is first seen,
-- so a renewal whose answer was lost locks nobody out.
ALTER TABLE hosts ADD COLUMN pending_serial TEXT NOT NULL DEFAULT '';
";

const V4: &str = "
-- One row per operator certificate issued (renewal adds a row). Admin calls are allowed only
-- for a serial listed here, not revoked and not expired, within its role.
CREATE TABLE operator_certs (
    serial TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    not_after_ms INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL
);
CREATE INDEX operator_certs_by_name ON operator_certs(name);
";

const V5: &str = "
-- When the host was removed from the fleet (Unix ms); 0 while enrolled. A removed host's row
-- stays for its history; its certificate serials are cleared so none of them is accepted.
ALTER TABLE hosts ADD COLUMN removed_at_ms INTEGER NOT NULL DEFAULT 0;
";

/// Version 6: campaign schedules (one row per campaign name), the archive of old runs (a mark
/// and a summary on the run's header row; the engine loads only runs not archived), and the
/// archived runs' successes per host and campaign name for the compliance report.
const V6: &str = "
CREATE TABLE schedules (
    name TEXT PRIMARY KEY,
    spec_toml TEXT NOT NULL,
    source_name TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    last_fire_ms INTEGER NOT NULL DEFAULT 0,
    last_run_id TEXT NOT NULL DEFAULT '',
    last_note TEXT NOT NULL DEFAULT ''
);
-- When the run left the engine's working set (Unix ms); 0 while the engine holds it.
ALTER TABLE campaign_runs ADD COLUMN archived_at_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaign_runs ADD COLUMN archived_state TEXT NOT NULL DEFAULT '';
ALTER TABLE campaign_runs ADD COLUMN archived_json TEXT NOT NULL DEFAULT '';
CREATE INDEX campaign_runs_archive ON campaign_runs(archived_at_ms, created_at_ms);
CREATE TABLE campaign_successes (
    host_id TEXT NOT NULL,
    campaign TEXT NOT NULL,
    run_id TEXT NOT NULL,
    finished_at_ms INTEGER NOT NULL,
    PRIMARY KEY (host_id, campaign)
);
";

/// Version 7: the webhook delivery record.
const V7: &str = "
-- One row per notification and webhook, written in the engine's turn that decided it and
-- updated after each delivery attempt (see crate::notify).
CREATE TABLE webhook_deliveries (
    id TEXT NOT NULL,
    webhook TEXT NOT NULL,
    event TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    host_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    state TEXT NOT NULL,
    last_error TEXT NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    delivered_at_ms INTEGER NOT NULL,
    PRIMARY KEY (id, webhook)
);
CREATE INDEX webhook_deliveries_by_time ON webhook_deliveries(created_at_ms);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries(created_at_ms) WHERE state = 'pending';
";

/// The key version 1 kept manual maintenance under.
const V1_MANUAL_KEY: &str = "manual_maintenance";

/// Brings the schema to the newest version, one version per transaction.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Sql(format!(
            "the store's schema is version {version}, newer than this coordinator knows \
             ({SCHEMA_VERSION}): run the coordinator version that wrote it, or a newer one"
        )));
    }
    if version < 1 {
        let tx = conn.transaction()?;
        tx.execute_batch(V1)?;
        tx.pragma_update(None, "user_version", 1)?;
        tx.commit()?;
    }
    if version < 2 {
        // By hand: the conversion runs the store's own row operations on the connection.
        conn.execute_batch("BEGIN")?;
        let converted = (|| {
            conn.execute_batch(V2)?;
            convert_v1_campaigns(conn)?;
            conn.pragma_update(None, "user_version", 2)?;
            Ok::<(), StoreError>(())
        })();
        match converted {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(error) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(error);
            }
        }
    }
    if version < 3 {
        let tx = conn.transaction()?;
        tx.execute_batch(V3)?;
        tx.pragma_update(None, "user_version", 3)?;
        tx.commit()?;
    }
    if version < 4 {
        let tx = conn.transaction()?;
        tx.execute_batch(V4)?;
        tx.pragma_update(None, "user_version", 4)?;
        tx.commit()?;
    }
    if version < 5 {
        let tx = conn.transaction()?;
        tx.execute_batch(V5)?;
        tx.pragma_update(None, "user_version", 5)?;
        tx.commit()?;
    }
    if version < 6 {
        let tx = conn.transaction()?;
        tx.execute_batch(V6)?;
        tx.pragma_update(None, "user_version", 6)?;
        tx.commit()?;
    }
    if version < 7 {
        let tx = conn.transaction()?;
        tx.execute_batch(V7)?;
        tx.pragma_update(None, "user_version", 7)?;
        tx.commit()?;
    }
    Ok(())
}

/// Splits each version-1 campaign document into a header and host rows, and moves manual
/// maintenance out of the key-value table.
fn convert_v1_campaigns(conn: &mut Connection) -> Result<(), StoreError> {
    let old: Vec<(String, String, String, i64, String)> = {
        let mut stmt = conn.prepare(
            "SELECT id, spec_toml, state_json, created_at_ms, created_by FROM campaigns",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    for (id, spec_toml, state_json, _created_at_ms, created_by) in old {
        let run: CampaignRun = from_json(&format!("campaign {id}"), &state_json)?;
        run_now(conn, |tx| {
            Box::pin(async move { campaigns::insert_run(tx, &run, &spec_toml, &created_by).await })
        })?;
    }
    conn.execute_batch("DROP TABLE campaigns")?;
    let manual: Option<String> = conn
        .query_row(
            "SELECT value FROM kv WHERE key = ?1",
            params![V1_MANUAL_KEY],
            |r| r.get(0),
        )
        .ok();
    if let Some(text) = manual {
        let manual: BTreeMap<String, ManualState> = from_json("manual maintenance", &text)?;
        run_now(conn, |tx| {
            Box::pin(async move {
                for (host, state) in &manual {
                    tx.put_manual(host, Some(state)).await?;
                }
                Ok(())
            })
        })?;
        conn.execute("DELETE FROM kv WHERE key = ?1", params![V1_MANUAL_KEY])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pitcrew_scheduler::{CampaignSpec, HostView, Role};

    #[test]
    fn a_version_1_campaign_is_converted_to_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let spec = CampaignSpec::parse(
            "name = \"old\"\n[[steps]]\nname = \"noop\"\naction = \"exec\"\nargv = [\"/bin/true\"]\n",
            "old.toml",
        )
        .unwrap();
        let hosts = vec![HostView {
            id: "h1".into(),
            hostname: "one".into(),
            role: Role::Worker,
            labels: Default::default(),
            connected: true,
            healthy: true,
            boot_id: String::new(),
            policy: None,
            facts: None,
        }];
        let run = CampaignRun::new("c-old", &spec, &hosts, 5).unwrap();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(V1).unwrap();
            conn.execute(
                "INSERT INTO campaigns VALUES ('c-old', 'old', 'x', ?1, 5, 'admin')",
                params![serde_json::to_string(&run).unwrap()],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO kv VALUES ('manual_maintenance', '{\"h2\":{\"phase\":\"maintenance\",\"since_ms\":1,\"by\":\"admin\"}}')",
                [],
            )
            .unwrap();
        }
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn).unwrap();
        let loaded = run_now(&mut conn, |tx| Box::pin(campaigns::load_all(tx))).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].run, run);
        assert_eq!(loaded[0].created_by, "admin");
        let manual = run_now(&mut conn, |tx| tx.load_manual()).unwrap();
        assert_eq!(manual["h2"].by, "admin");
        // Opening again is a no-op.
        migrate(&mut conn).unwrap();
    }
}
