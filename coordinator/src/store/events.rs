//! The event log as stored: each host's log lines and the audit trail, newest last.

use rusqlite::{Connection, Row, params};

use super::StoreError;

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
    /// The host's enrolled name, filled in when read (not stored twice).
    pub hostname: String,
}

/// Which events to list: the newest `limit` matching ones before `before_id` (0: from the
/// newest), returned oldest first. A limit of 0 means no limit.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub host_id: Option<String>,
    pub campaign_id: Option<String>,
    pub after_id: i64,
    pub before_id: i64,
    pub limit: u32,
}

impl EventFilter {
    /// Whether a live event belongs to this filter (for following).
    pub fn matches(&self, event: &EventRecord) -> bool {
        self.host_id.as_ref().is_none_or(|h| *h == event.host_id)
            && self
                .campaign_id
                .as_ref()
                .is_none_or(|id| *id == event.campaign_id)
    }
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<EventRecord> {
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
        hostname: row.get::<_, Option<String>>(9)?.unwrap_or_default(),
    })
}

/// Appends one event; returns its id.
pub fn append(conn: &Connection, event: &EventRecord) -> Result<i64, StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO events (at_ms, kind, host_id, campaign_id, step, result, message, actor)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    stmt.execute(params![
        event.at_ms,
        event.kind,
        event.host_id,
        event.campaign_id,
        event.step,
        event.result,
        event.message,
        event.actor
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Deletes events older than `before_ms`, and the oldest beyond the newest `keep`. Returns how
/// many went.
pub fn prune(conn: &Connection, before_ms: i64, keep: u64) -> Result<usize, StoreError> {
    let mut deleted = conn.execute("DELETE FROM events WHERE at_ms < ?1", params![before_ms])?;
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    deleted += conn.execute(
        "DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?1",
        params![keep],
    )?;
    Ok(deleted)
}

/// Events matching the filter, oldest first (see [`EventFilter`]).
pub fn list(conn: &Connection, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
    let limit = if filter.limit == 0 {
        i64::MAX
    } else {
        i64::from(filter.limit)
    };
    let before = if filter.before_id <= 0 {
        i64::MAX
    } else {
        filter.before_id
    };
    let mut stmt = conn.prepare_cached(
        "SELECT e.id, e.at_ms, e.kind, e.host_id, e.campaign_id, e.step, e.result, e.message,
                e.actor, h.hostname
         FROM events e LEFT JOIN hosts h ON h.host_id = e.host_id AND e.host_id != ''
         WHERE e.id > ?1 AND e.id < ?2 AND (?3 IS NULL OR e.host_id = ?3)
           AND (?4 IS NULL OR e.campaign_id = ?4)
         ORDER BY e.id DESC LIMIT ?5",
    )?;
    let rows = stmt.query_map(
        params![
            filter.after_id,
            before,
            filter.host_id,
            filter.campaign_id,
            limit
        ],
        from_row,
    )?;
    let mut out = rows.collect::<Result<Vec<_>, _>>()?;
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn old_events_and_those_beyond_the_cap_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .write_blocking(|c| {
                for i in 0..10 {
                    append(
                        c,
                        &EventRecord {
                            at_ms: i * 100,
                            kind: "audit".into(),
                            message: format!("m{i}"),
                            ..Default::default()
                        },
                    )?;
                }
                Ok(())
            })
            .unwrap();
        // Older than 300 ms: m0, m1, m2 go; then only the newest 5 stay.
        let deleted = store.write_blocking(|c| prune(c, 300, 5)).unwrap();
        assert_eq!(deleted, 5);
        let left = store
            .read_blocking(|c| list(c, &EventFilter::default()))
            .unwrap();
        let words: Vec<_> = left.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(words, vec!["m5", "m6", "m7", "m8", "m9"]);
    }

    #[test]
    fn events_page_backwards_from_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .write_blocking(|c| {
                for i in 0..10 {
                    append(
                        c,
                        &EventRecord {
                            kind: "audit".into(),
                            message: format!("m{i}"),
                            campaign_id: if i % 2 == 0 {
                                "c1".into()
                            } else {
                                String::new()
                            },
                            ..Default::default()
                        },
                    )?;
                }
                Ok(())
            })
            .unwrap();
        let page = |before: i64| {
            store
                .read_blocking(move |c| {
                    list(
                        c,
                        &EventFilter {
                            before_id: before,
                            limit: 4,
                            ..Default::default()
                        },
                    )
                })
                .unwrap()
        };
        let newest = page(0);
        let words: Vec<_> = newest.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(words, vec!["m6", "m7", "m8", "m9"]);
        let older = page(newest[0].id);
        let words: Vec<_> = older.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(words, vec!["m2", "m3", "m4", "m5"]);
        let campaign = store
            .read_blocking(|c| {
                list(
                    c,
                    &EventFilter {
                        campaign_id: Some("c1".into()),
                        ..Default::default()
                    },
                )
            })
            .unwrap();
        assert_eq!(campaign.len(), 5);
    }
}
