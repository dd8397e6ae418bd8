//! Actions sent (or about to be sent) to agents, and their final results.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::StoreError;

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

const COLUMNS: &str = "action_id, host_id, campaign_id, request, result, created_at_ms";

fn from_row(row: &Row<'_>) -> rusqlite::Result<ActionRecord> {
    Ok(ActionRecord {
        action_id: row.get(0)?,
        host_id: row.get(1)?,
        campaign_id: row.get(2)?,
        request: row.get(3)?,
        result: row.get(4)?,
        created_at_ms: row.get(5)?,
    })
}

/// Records an action before it is sent (write-ahead). Recording the same id twice keeps the
/// first record: a re-sent action is the same action.
pub fn insert(conn: &Connection, action: &ActionRecord) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT OR IGNORE INTO actions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
    ))?;
    stmt.execute(params![
        action.action_id,
        action.host_id,
        action.campaign_id,
        action.request,
        action.result,
        action.created_at_ms
    ])?;
    Ok(())
}

/// Stores an action's final result; returns false when it already had one (a duplicate report).
pub fn finish(conn: &Connection, action_id: &str, result: &[u8]) -> Result<bool, StoreError> {
    let mut stmt = conn
        .prepare_cached("UPDATE actions SET result = ?2 WHERE action_id = ?1 AND result IS NULL")?;
    Ok(stmt.execute(params![action_id, result])? > 0)
}

pub fn get(conn: &Connection, action_id: &str) -> Result<Option<ActionRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM actions WHERE action_id = ?1"
    ))?;
    Ok(stmt.query_row(params![action_id], from_row).optional()?)
}

/// Actions sent to a host that have no result yet (to re-send after a reconnect or restart).
pub fn unfinished(conn: &Connection, host_id: &str) -> Result<Vec<ActionRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM actions WHERE host_id = ?1 AND result IS NULL ORDER BY created_at_ms"
    ))?;
    let rows = stmt.query_map(params![host_id], from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

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
        let (a, b) = (record.clone(), record.clone());
        store
            .write_blocking(move |c| {
                insert(c, &a)?;
                insert(c, &b)
            })
            .unwrap();
        assert_eq!(
            store.read_blocking(|c| unfinished(c, "h")).unwrap().len(),
            1
        );
        assert!(store.write_blocking(|c| finish(c, "x", &[2])).unwrap());
        assert!(!store.write_blocking(|c| finish(c, "x", &[3])).unwrap());
        assert_eq!(
            store
                .read_blocking(|c| get(c, "x"))
                .unwrap()
                .unwrap()
                .result,
            Some(vec![2])
        );
        assert!(
            store
                .read_blocking(|c| unfinished(c, "h"))
                .unwrap()
                .is_empty()
        );
    }
}
