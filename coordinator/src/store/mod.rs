//! The coordinator's durable state: join tokens (hashed), the host registry, actions, campaigns,
//! manual maintenance and the event log.
//!
//! The embedded store is SQLite in WAL mode with `synchronous=FULL`, one file in the data dir:
//! every decision is durable when a write returns, which the write-ahead rule (DESIGN.md
//! invariant 8) relies on. Calls are short and synchronous behind one mutex; SQLite serialises
//! writers anyway, and the coordinator's write rate is a few per second per campaign.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store: stored data is not readable: {0}")]
    Corrupt(String),
}

/// Why a join token was not accepted. The text is shown to the enrolling agent's operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the join token is not known to this coordinator")]
    Unknown,
    #[error("the join token expired")]
    Expired,
    #[error("the join token was revoked")]
    Revoked,
    #[error("the join token is used up")]
    UsedUp,
}

/// A join token as stored: never the token itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub hash: String,
    pub role: String,
    pub labels: BTreeMap<String, String>,
    pub uses_left: u32,
    pub uses_total: u32,
    pub expires_at_ms: i64,
    pub revoked: bool,
    pub created_at_ms: i64,
    pub created_by: String,
}

/// A host as the registry knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    pub host_id: String,
    pub hostname: String,
    pub role: String,
    pub labels: BTreeMap<String, String>,
    /// The only certificate serial accepted for this host (re-enrollment replaces it).
    pub cert_serial: String,
    pub enrolled_at_ms: i64,
    pub last_seen_ms: i64,
    /// prost-encoded `v1::Facts`, empty before the first hello.
    pub facts: Vec<u8>,
}

/// One entry of the event log: a host's log line or an audit record.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventRecord {
    pub id: i64,
    pub at_ms: i64,
    /// "host" or "audit".
    pub kind: String,
    pub host_id: String,
    pub campaign_id: String,
    pub step: String,
    pub result: String,
    pub message: String,
    pub actor: String,
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub host_id: Option<String>,
    pub campaign_id: Option<String>,
    pub after_id: i64,
    pub limit: u32,
}

/// An action sent (or about to be sent) to an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRecord {
    pub action_id: String,
    pub host_id: String,
    pub campaign_id: String,
    /// prost-encoded `v1::ActionRequest`.
    pub request: Vec<u8>,
    /// prost-encoded `v1::ActionResult` once finished.
    pub result: Option<Vec<u8>>,
    pub created_at_ms: i64,
}

/// A campaign's persisted form: its spec and the scheduler's state as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignRecord {
    pub id: String,
    pub name: String,
    pub spec_toml: String,
    pub state_json: String,
    pub created_at_ms: i64,
    pub created_by: String,
}

const SCHEMA: &str = "
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

/// The embedded SQLite store.
pub struct Store {
    conn: Mutex<Connection>,
}

fn labels_to_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_owned())
}

fn labels_from_json(text: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("labels: {e}")))
}

impl Store {
    /// Opens (creating if needed) the store file.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let fail = |e: rusqlite::Error| StoreError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let conn = Connection::open(path).map_err(fail)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(fail)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(fail)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(fail)?;
        conn.execute_batch(SCHEMA).map_err(fail)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back), so
        // a poisoned lock is safe to keep using.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ---- tokens ----

    pub fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO tokens (id, hash, role, labels, uses_left, uses_total, expires_at_ms, revoked, created_at_ms, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                token.id,
                token.hash,
                token.role,
                labels_to_json(&token.labels),
                token.uses_left,
                token.uses_total,
                token.expires_at_ms,
                token.revoked,
                token.created_at_ms,
                token.created_by
            ],
        )?;
        Ok(())
    }

    fn token_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(TokenRecord, String)> {
        Ok((
            TokenRecord {
                id: row.get(0)?,
                hash: row.get(1)?,
                role: row.get(2)?,
                labels: BTreeMap::new(),
                uses_left: row.get(4)?,
                uses_total: row.get(5)?,
                expires_at_ms: row.get(6)?,
                revoked: row.get(7)?,
                created_at_ms: row.get(8)?,
                created_by: row.get(9)?,
            },
            row.get::<_, String>(3)?,
        ))
    }

    const TOKEN_COLUMNS: &'static str = "id, hash, role, labels, uses_left, uses_total, expires_at_ms, revoked, created_at_ms, created_by";

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM tokens ORDER BY created_at_ms",
            Self::TOKEN_COLUMNS
        ))?;
        let rows = stmt.query_map([], Self::token_from_row)?;
        let mut out = Vec::new();
        for row in rows {
            let (mut token, labels) = row?;
            token.labels = labels_from_json(&labels)?;
            out.push(token);
        }
        Ok(out)
    }

    /// Uses one use of the token with this hash, atomically. Refuses unknown, expired, revoked
    /// and used-up tokens, saying which.
    pub fn redeem_token(
        &self,
        hash: &str,
        now_ms: i64,
    ) -> Result<Result<TokenRecord, TokenRefusal>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let found = tx
            .query_row(
                &format!("SELECT {} FROM tokens WHERE hash = ?1", Self::TOKEN_COLUMNS),
                params![hash],
                Self::token_from_row,
            )
            .optional()?;
        let Some((mut token, labels)) = found else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        token.labels = labels_from_json(&labels)?;
        let refusal = if token.revoked {
            Some(TokenRefusal::Revoked)
        } else if token.expires_at_ms <= now_ms {
            Some(TokenRefusal::Expired)
        } else if token.uses_left == 0 {
            Some(TokenRefusal::UsedUp)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return Ok(Err(refusal));
        }
        tx.execute(
            "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ?1",
            params![token.id],
        )?;
        tx.commit()?;
        token.uses_left -= 1;
        Ok(Ok(token))
    }

    /// Revokes a token; returns it, or None when no token has that id.
    pub fn revoke_token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.conn()
            .execute("UPDATE tokens SET revoked = 1 WHERE id = ?1", params![id])?;
        Ok(self.tokens()?.into_iter().find(|t| t.id == id))
    }

    // ---- hosts ----

    /// Records a (re-)enrolled host. Re-enrollment replaces the accepted certificate serial, so
    /// the old certificate of a rebuilt host stops working.
    pub fn upsert_enrolled_host(&self, host: &HostRecord) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO hosts (host_id, hostname, role, labels, cert_serial, enrolled_at_ms, last_seen_ms, facts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(host_id) DO UPDATE SET hostname = excluded.hostname, role = excluded.role,
                labels = excluded.labels, cert_serial = excluded.cert_serial,
                enrolled_at_ms = excluded.enrolled_at_ms",
            params![
                host.host_id,
                host.hostname,
                host.role,
                labels_to_json(&host.labels),
                host.cert_serial,
                host.enrolled_at_ms,
                host.last_seen_ms,
                host.facts
            ],
        )?;
        Ok(())
    }

    /// Replaces the accepted certificate serial (certificate renewal).
    pub fn set_cert_serial(&self, host_id: &str, serial: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE hosts SET cert_serial = ?2 WHERE host_id = ?1",
            params![host_id, serial],
        )?;
        Ok(())
    }

    fn host_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(HostRecord, String)> {
        Ok((
            HostRecord {
                host_id: row.get(0)?,
                hostname: row.get(1)?,
                role: row.get(2)?,
                labels: BTreeMap::new(),
                cert_serial: row.get(4)?,
                enrolled_at_ms: row.get(5)?,
                last_seen_ms: row.get(6)?,
                facts: row.get(7)?,
            },
            row.get::<_, String>(3)?,
        ))
    }

    const HOST_COLUMNS: &'static str =
        "host_id, hostname, role, labels, cert_serial, enrolled_at_ms, last_seen_ms, facts";

    pub fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM hosts ORDER BY hostname, host_id",
            Self::HOST_COLUMNS
        ))?;
        let rows = stmt.query_map([], Self::host_from_row)?;
        let mut out = Vec::new();
        for row in rows {
            let (mut host, labels) = row?;
            host.labels = labels_from_json(&labels)?;
            out.push(host);
        }
        Ok(out)
    }

    pub fn host(&self, host_id: &str) -> Result<Option<HostRecord>, StoreError> {
        let conn = self.conn();
        let found = conn
            .query_row(
                &format!(
                    "SELECT {} FROM hosts WHERE host_id = ?1",
                    Self::HOST_COLUMNS
                ),
                params![host_id],
                Self::host_from_row,
            )
            .optional()?;
        match found {
            Some((mut host, labels)) => {
                host.labels = labels_from_json(&labels)?;
                Ok(Some(host))
            }
            None => Ok(None),
        }
    }

    /// Stores a host's latest facts (and hostname from them).
    pub fn set_facts(
        &self,
        host_id: &str,
        hostname: &str,
        facts: &[u8],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE hosts SET facts = ?2, hostname = CASE WHEN ?3 = '' THEN hostname ELSE ?3 END, last_seen_ms = ?4 WHERE host_id = ?1",
            params![host_id, facts, hostname, now_ms],
        )?;
        Ok(())
    }

    pub fn set_last_seen(&self, host_id: &str, now_ms: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE hosts SET last_seen_ms = ?2 WHERE host_id = ?1",
            params![host_id, now_ms],
        )?;
        Ok(())
    }

    // ---- events ----

    pub fn append_event(&self, event: &EventRecord) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO events (at_ms, kind, host_id, campaign_id, step, result, message, actor)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                event.at_ms,
                event.kind,
                event.host_id,
                event.campaign_id,
                event.step,
                event.result,
                event.message,
                event.actor
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Events matching the filter, oldest first. With a limit, the newest `limit` of them.
    pub fn events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
        let conn = self.conn();
        let limit = if filter.limit == 0 {
            i64::MAX
        } else {
            i64::from(filter.limit)
        };
        let mut stmt = conn.prepare(
            "SELECT id, at_ms, kind, host_id, campaign_id, step, result, message, actor FROM events
             WHERE id > ?1 AND (?2 IS NULL OR host_id = ?2) AND (?3 IS NULL OR campaign_id = ?3)
             ORDER BY id DESC LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![filter.after_id, filter.host_id, filter.campaign_id, limit],
            |row| {
                Ok(EventRecord {
                    id: row.get(0)?,
                    at_ms: row.get(1)?,
                    kind: row.get(2)?,
                    host_id: row.get(3)?,
                    campaign_id: row.get(4)?,
                    step: row.get(5)?,
                    result: row.get(6)?,
                    message: row.get(7)?,
                    actor: row.get(8)?,
                })
            },
        )?;
        let mut out = rows.collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    // ---- actions ----

    /// Records an action before it is sent (write-ahead). Recording the same id twice keeps the
    /// first record: a re-sent action is the same action.
    pub fn insert_action(&self, action: &ActionRecord) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR IGNORE INTO actions (action_id, host_id, campaign_id, request, result, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![action.action_id, action.host_id, action.campaign_id, action.request, action.result, action.created_at_ms],
        )?;
        Ok(())
    }

    /// Stores an action's final result; returns false when it already had one (a duplicate report).
    pub fn finish_action(&self, action_id: &str, result: &[u8]) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE actions SET result = ?2 WHERE action_id = ?1 AND result IS NULL",
            params![action_id, result],
        )?;
        Ok(changed > 0)
    }

    fn action_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ActionRecord> {
        Ok(ActionRecord {
            action_id: row.get(0)?,
            host_id: row.get(1)?,
            campaign_id: row.get(2)?,
            request: row.get(3)?,
            result: row.get(4)?,
            created_at_ms: row.get(5)?,
        })
    }

    const ACTION_COLUMNS: &'static str =
        "action_id, host_id, campaign_id, request, result, created_at_ms";

    pub fn action(&self, action_id: &str) -> Result<Option<ActionRecord>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                &format!(
                    "SELECT {} FROM actions WHERE action_id = ?1",
                    Self::ACTION_COLUMNS
                ),
                params![action_id],
                Self::action_from_row,
            )
            .optional()?)
    }

    /// Actions sent to a host that have no result yet (to re-send after a reconnect or restart).
    pub fn unfinished_actions(&self, host_id: &str) -> Result<Vec<ActionRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM actions WHERE host_id = ?1 AND result IS NULL ORDER BY created_at_ms",
            Self::ACTION_COLUMNS
        ))?;
        let rows = stmt.query_map(params![host_id], Self::action_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    // ---- campaigns ----

    /// Inserts or replaces a campaign's state in one durable write.
    pub fn put_campaign(&self, campaign: &CampaignRecord) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO campaigns (id, name, spec_toml, state_json, created_at_ms, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(id) DO UPDATE SET state_json = excluded.state_json",
            params![
                campaign.id,
                campaign.name,
                campaign.spec_toml,
                campaign.state_json,
                campaign.created_at_ms,
                campaign.created_by
            ],
        )?;
        Ok(())
    }

    pub fn campaigns(&self) -> Result<Vec<CampaignRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, name, spec_toml, state_json, created_at_ms, created_by FROM campaigns ORDER BY created_at_ms, id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(CampaignRecord {
                id: row.get(0)?,
                name: row.get(1)?,
                spec_toml: row.get(2)?,
                state_json: row.get(3)?,
                created_at_ms: row.get(4)?,
                created_by: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    // ---- small named values (manual maintenance, settings) ----

    pub fn put_value(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn value(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM kv WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str, uses: u32, expires: i64) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            hash: format!("hash-{id}"),
            role: "worker".into(),
            labels: BTreeMap::from([("cluster".into(), "a".into())]),
            uses_left: uses,
            uses_total: uses,
            expires_at_ms: expires,
            revoked: false,
            created_at_ms: 1,
            created_by: "admin".into(),
        }
    }

    #[test]
    fn tokens_are_counted_expire_and_can_be_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        store.insert_token(&token("a", 2, 1000)).unwrap();
        store.insert_token(&token("b", 1, 1000)).unwrap();
        assert_eq!(
            store.redeem_token("hash-a", 10).unwrap().unwrap().uses_left,
            1
        );
        assert_eq!(
            store.redeem_token("hash-a", 10).unwrap().unwrap().labels["cluster"],
            "a"
        );
        assert_eq!(
            store.redeem_token("hash-a", 10).unwrap(),
            Err(TokenRefusal::UsedUp)
        );
        assert_eq!(
            store.redeem_token("hash-b", 1000).unwrap(),
            Err(TokenRefusal::Expired)
        );
        store.revoke_token("b").unwrap();
        assert_eq!(
            store.redeem_token("hash-b", 10).unwrap(),
            Err(TokenRefusal::Revoked)
        );
        assert_eq!(
            store.redeem_token("nope", 10).unwrap(),
            Err(TokenRefusal::Unknown)
        );
    }

    #[test]
    fn the_store_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let store = Store::open(&path).unwrap();
            store.insert_token(&token("a", 1, 1000)).unwrap();
            store
                .append_event(&EventRecord {
                    kind: "audit".into(),
                    message: "hello".into(),
                    ..Default::default()
                })
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.tokens().unwrap().len(), 1);
        assert_eq!(
            store.events(&EventFilter::default()).unwrap()[0].message,
            "hello"
        );
    }

    #[test]
    fn an_action_result_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let record = ActionRecord {
            action_id: "x".into(),
            host_id: "h".into(),
            campaign_id: String::new(),
            request: vec![1],
            result: None,
            created_at_ms: 1,
        };
        store.insert_action(&record).unwrap();
        store.insert_action(&record).unwrap();
        assert_eq!(store.unfinished_actions("h").unwrap().len(), 1);
        assert!(store.finish_action("x", &[2]).unwrap());
        assert!(!store.finish_action("x", &[3]).unwrap());
        assert_eq!(store.action("x").unwrap().unwrap().result, Some(vec![2]));
        assert!(store.unfinished_actions("h").unwrap().is_empty());
    }
}
