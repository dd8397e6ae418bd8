//! Schema versions of the PostgreSQL store, applied in order at open, one version per
//! transaction, and recorded in `pitcrew_schema` (one row per version applied).
//!
//! The numbering is this backend's own. Version 1 is the layout SQLite reached at its version
//! 5 (tokens with `replace_host`, hosts with a pending serial and a removal time, campaigns as
//! a header row plus one row per host, operators' certificates), in PostgreSQL's types:
//! `BIGINT` for times and counts, `BOOLEAN` flags, `BYTEA` for prost-encoded facts and
//! actions, and `COLLATE "C"` on the columns listings page by, so pages come in byte order
//! whatever the database's locale (as on SQLite). A later change to the tables adds a version
//! to both backends.
//!
//! Version 2 adds the leader lease (`leader_lease`, one row), which only PostgreSQL has.
//! Version 3 adds the leader's address to it (where standbys send agents and operators).
//! Version 4 adds campaign schedules and the archive of old runs (SQLite's version 6).
//! Version 5 adds the webhook delivery record (`webhook_deliveries`).
//!
//! Every migration takes a transaction-scoped advisory lock first, so coordinators started
//! together on one database migrate it once, one after the other.

use deadpool_postgres::ClientWrapper;

use super::pg_error;
use crate::store::StoreError;

/// The newest version this build knows. A database written by a newer build is refused
/// rather than misread.
pub(crate) const SCHEMA_VERSION: i64 = 5;

/// The advisory lock key migrations hold ("pitcrew!" in ASCII).
const MIGRATION_LOCK: i64 = 0x7069_7463_7265_7721;

const V1: &str = r#"
CREATE TABLE tokens (
    id TEXT COLLATE "C" PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    labels TEXT NOT NULL,
    uses_left BIGINT NOT NULL,
    uses_total BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT false,
    created_at_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    -- A token that may re-enroll this existing host (a rebuilt machine); '' for new hosts only.
    replace_host TEXT NOT NULL DEFAULT ''
);
CREATE TABLE hosts (
    host_id TEXT COLLATE "C" PRIMARY KEY,
    hostname TEXT COLLATE "C" NOT NULL,
    role TEXT NOT NULL,
    labels TEXT NOT NULL,
    cert_serial TEXT NOT NULL,
    -- A renewed certificate not yet used: the old one stays valid until the new one is seen.
    pending_serial TEXT NOT NULL DEFAULT '',
    enrolled_at_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL DEFAULT 0,
    facts BYTEA NOT NULL DEFAULT '\x',
    -- When the host was removed from the fleet (Unix ms); 0 while enrolled.
    removed_at_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX hosts_by_name ON hosts (hostname, host_id);
CREATE TABLE events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    host_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    step TEXT NOT NULL,
    result TEXT NOT NULL,
    message TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX events_host ON events (host_id, id);
CREATE INDEX events_campaign ON events (campaign_id, id);
CREATE TABLE actions (
    action_id TEXT PRIMARY KEY,
    host_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    request BYTEA NOT NULL,
    result BYTEA,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX actions_unfinished ON actions (host_id) WHERE result IS NULL;
CREATE TABLE campaign_runs (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT NOT NULL,
    spec_toml TEXT NOT NULL,
    -- The parsed spec the run was created from: written once.
    spec_json TEXT NOT NULL,
    -- The run without its hosts: rewritten only when its state, failures or releases change.
    header_json TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE campaign_hosts (
    campaign_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    host_id TEXT NOT NULL,
    -- The host's rendered steps: written once, when the run is created.
    steps_json TEXT NOT NULL,
    -- The host's progress: the one row a host-step rewrites.
    progress_json TEXT NOT NULL,
    PRIMARY KEY (campaign_id, host_id)
);
CREATE INDEX campaign_hosts_by_position ON campaign_hosts (campaign_id, position);
CREATE TABLE manual_maintenance (
    host_id TEXT PRIMARY KEY,
    state_json TEXT NOT NULL
);
CREATE TABLE operator_certs (
    serial TEXT COLLATE "C" PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL,
    role TEXT NOT NULL,
    not_after_ms BIGINT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT false,
    created_at_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE INDEX operator_certs_by_name ON operator_certs (name);
"#;

/// Version 2: the leader lease, one row. `epoch` grows with each takeover; `expires_at` is
/// the database's clock, never a coordinator's. A fenced writer's every transaction reads the
/// row `FOR SHARE` and requires its own epoch.
const V2: &str = r#"
CREATE TABLE leader_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO leader_lease (id, holder, epoch, expires_at) VALUES (1, '', 0, '-infinity');
"#;

/// The address agents and operators reach the lease's holder at (its `serve --advertise`),
/// which standbys tell whoever connects to them.
const V3: &str = r#"
ALTER TABLE leader_lease ADD COLUMN address TEXT NOT NULL DEFAULT '';
"#;

/// Version 4: campaign schedules (one row per campaign name), the archive of old runs (a mark
/// and a summary on the run's header row; the engine loads only runs not archived), and the
/// archived runs' successes per host and campaign name for the compliance report.
const V4: &str = r#"
CREATE TABLE schedules (
    name TEXT COLLATE "C" PRIMARY KEY,
    spec_toml TEXT NOT NULL,
    source_name TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    paused BOOLEAN NOT NULL DEFAULT FALSE,
    last_fire_ms BIGINT NOT NULL DEFAULT 0,
    last_run_id TEXT NOT NULL DEFAULT '',
    last_note TEXT NOT NULL DEFAULT ''
);
ALTER TABLE campaign_runs ADD COLUMN archived_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaign_runs ADD COLUMN archived_state TEXT NOT NULL DEFAULT '';
ALTER TABLE campaign_runs ADD COLUMN archived_json TEXT NOT NULL DEFAULT '';
CREATE INDEX campaign_runs_archive ON campaign_runs (archived_at_ms, created_at_ms);
CREATE TABLE campaign_successes (
    host_id TEXT NOT NULL,
    campaign TEXT NOT NULL,
    run_id TEXT NOT NULL,
    finished_at_ms BIGINT NOT NULL,
    PRIMARY KEY (host_id, campaign)
);
"#;

/// Version 5: the webhook delivery record (SQLite's version 7), one row per notification and
/// webhook, written in the engine's turn that decided it and updated after each attempt.
const V5: &str = r#"
CREATE TABLE webhook_deliveries (
    id TEXT COLLATE "C" NOT NULL,
    webhook TEXT COLLATE "C" NOT NULL,
    event TEXT NOT NULL,
    campaign_id TEXT COLLATE "C" NOT NULL,
    host_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    state TEXT NOT NULL,
    last_error TEXT NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    delivered_at_ms BIGINT NOT NULL,
    PRIMARY KEY (id, webhook)
);
CREATE INDEX webhook_deliveries_by_time ON webhook_deliveries (created_at_ms);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (created_at_ms) WHERE state = 'pending';
"#;

/// Each version's statements, in order: `MIGRATIONS[n - 1]` brings the schema to version n.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5];

/// Brings the schema to the newest version, one version per transaction.
pub(super) async fn migrate(client: &mut ClientWrapper) -> Result<(), StoreError> {
    debug_assert_eq!(MIGRATIONS.len() as i64, SCHEMA_VERSION);
    loop {
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_error)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS pitcrew_schema (
                 version BIGINT PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(pg_error)?;
        let row = tx
            .query_one("SELECT COALESCE(max(version), 0) FROM pitcrew_schema", &[])
            .await
            .map_err(pg_error)?;
        let version: i64 = row.try_get(0).map_err(pg_error)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Sql(format!(
                "the database's schema is version {version}, newer than this coordinator knows \
                 ({SCHEMA_VERSION}): run the coordinator version that wrote it, or a newer one"
            )));
        }
        if version == SCHEMA_VERSION {
            tx.commit().await.map_err(pg_error)?;
            return Ok(());
        }
        let next = version + 1;
        let index = usize::try_from(version).unwrap_or(usize::MAX);
        let Some(statements) = MIGRATIONS.get(index) else {
            return Err(StoreError::Sql(format!("no migration to version {next}")));
        };
        tx.batch_execute(statements).await.map_err(pg_error)?;
        tx.execute("INSERT INTO pitcrew_schema (version) VALUES ($1)", &[&next])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        tracing::info!(
            message = "store: migrated the PostgreSQL schema",
            version = next
        );
    }
}
