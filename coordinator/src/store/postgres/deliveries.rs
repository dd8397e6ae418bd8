//! The webhook delivery record in PostgreSQL's SQL.

use super::super::StoreError;
use super::super::deliveries::{DELIVERY_COLUMNS, DeliveryFilter, DeliveryRecord, DeliveryState};
use super::{PgTx, all, get, get_u32};

fn from_row(row: &tokio_postgres::Row) -> Result<DeliveryRecord, StoreError> {
    let state: String = get(row, "state")?;
    Ok(DeliveryRecord {
        id: get(row, "id")?,
        webhook: get(row, "webhook")?,
        event: get(row, "event")?,
        campaign_id: get(row, "campaign_id")?,
        host_id: get(row, "host_id")?,
        hostname: get(row, "hostname")?,
        payload: get(row, "payload")?,
        created_at_ms: get(row, "created_at_ms")?,
        attempts: get_u32(row, "attempts")?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery state {state:?}")))?,
        last_error: get(row, "last_error")?,
        next_attempt_ms: get(row, "next_attempt_ms")?,
        delivered_at_ms: get(row, "delivered_at_ms")?,
    })
}

pub(super) async fn insert(tx: &PgTx<'_>, d: &DeliveryRecord) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (id, webhook) DO NOTHING"
        ),
        &[
            &d.id,
            &d.webhook,
            &d.event,
            &d.campaign_id,
            &d.host_id,
            &d.hostname,
            &d.payload,
            &d.created_at_ms,
            &i64::from(d.attempts),
            &d.state.as_str(),
            &d.last_error,
            &d.next_attempt_ms,
            &d.delivered_at_ms,
        ],
    )
    .await
    .map(drop)
}

pub(super) async fn update(tx: &PgTx<'_>, d: &DeliveryRecord) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE webhook_deliveries SET attempts = $3, state = $4, last_error = $5,
                next_attempt_ms = $6, delivered_at_ms = $7
         WHERE id = $1 AND webhook = $2",
        &[
            &d.id,
            &d.webhook,
            &i64::from(d.attempts),
            &d.state.as_str(),
            &d.last_error,
            &d.next_attempt_ms,
            &d.delivered_at_ms,
        ],
    )
    .await
    .map(drop)
}

pub(super) async fn pending(tx: &PgTx<'_>) -> Result<Vec<DeliveryRecord>, StoreError> {
    let rows = tx
        .query(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE state = 'pending'
                 ORDER BY created_at_ms, id, webhook"
            ),
            &[],
        )
        .await?;
    all(rows, from_row)
}

pub(super) async fn list(
    tx: &PgTx<'_>,
    filter: &DeliveryFilter,
) -> Result<Vec<DeliveryRecord>, StoreError> {
    let rows = tx
        .query(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
                 WHERE ($1::text IS NULL OR campaign_id = $1::text)
                   AND ($2::text IS NULL OR state = $2::text)
                 ORDER BY created_at_ms DESC, id DESC, webhook DESC LIMIT $3"
            ),
            &[
                &filter.campaign_id,
                &filter.state.map(DeliveryState::as_str),
                &filter.limit(),
            ],
        )
        .await?;
    all(rows, from_row)
}

pub(super) async fn prune(tx: &PgTx<'_>, before_ms: i64) -> Result<u64, StoreError> {
    tx.execute(
        "DELETE FROM webhook_deliveries WHERE state <> 'pending' AND created_at_ms < $1",
        &[&before_ms],
    )
    .await
}
