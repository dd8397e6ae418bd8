//! The webhook delivery record in SQLite's SQL.

use rusqlite::{Connection, Row, params};

use super::super::StoreError;
use super::super::deliveries::{DELIVERY_COLUMNS, DeliveryFilter, DeliveryRecord, DeliveryState};

fn from_row(row: &Row<'_>) -> Result<DeliveryRecord, StoreError> {
    let state: String = row.get(9)?;
    Ok(DeliveryRecord {
        id: row.get(0)?,
        webhook: row.get(1)?,
        event: row.get(2)?,
        campaign_id: row.get(3)?,
        host_id: row.get(4)?,
        hostname: row.get(5)?,
        payload: row.get(6)?,
        created_at_ms: row.get(7)?,
        attempts: row.get(8)?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery state {state:?}")))?,
        last_error: row.get(10)?,
        next_attempt_ms: row.get(11)?,
        delivered_at_ms: row.get(12)?,
    })
}

fn collect(mut rows: rusqlite::Rows<'_>) -> Result<Vec<DeliveryRecord>, StoreError> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(from_row(row)?);
    }
    Ok(out)
}

pub(super) fn insert(conn: &Connection, d: &DeliveryRecord) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT OR IGNORE INTO webhook_deliveries ({DELIVERY_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    ))?
    .execute(params![
        d.id,
        d.webhook,
        d.event,
        d.campaign_id,
        d.host_id,
        d.hostname,
        d.payload,
        d.created_at_ms,
        d.attempts,
        d.state.as_str(),
        d.last_error,
        d.next_attempt_ms,
        d.delivered_at_ms
    ])?;
    Ok(())
}

pub(super) fn update(conn: &Connection, d: &DeliveryRecord) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE webhook_deliveries SET attempts = ?3, state = ?4, last_error = ?5,
                next_attempt_ms = ?6, delivered_at_ms = ?7
         WHERE id = ?1 AND webhook = ?2",
    )?
    .execute(params![
        d.id,
        d.webhook,
        d.attempts,
        d.state.as_str(),
        d.last_error,
        d.next_attempt_ms,
        d.delivered_at_ms
    ])?;
    Ok(())
}

pub(super) fn pending(conn: &Connection) -> Result<Vec<DeliveryRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE state = 'pending'
         ORDER BY created_at_ms, id, webhook"
    ))?;
    collect(stmt.query([])?)
}

pub(super) fn list(
    conn: &Connection,
    filter: &DeliveryFilter,
) -> Result<Vec<DeliveryRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
         WHERE (?1 IS NULL OR campaign_id = ?1) AND (?2 IS NULL OR state = ?2)
         ORDER BY created_at_ms DESC, id DESC, webhook DESC LIMIT ?3"
    ))?;
    collect(stmt.query(params![
        filter.campaign_id,
        filter.state.map(DeliveryState::as_str),
        filter.limit()
    ])?)
}

pub(super) fn prune(conn: &Connection, before_ms: i64) -> Result<u64, StoreError> {
    let deleted = conn
        .prepare_cached(
            "DELETE FROM webhook_deliveries WHERE state != 'pending' AND created_at_ms < ?1",
        )?
        .execute(params![before_ms])?;
    Ok(deleted as u64)
}
