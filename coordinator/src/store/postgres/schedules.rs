//! PostgreSQL's rows for campaign schedules and the archive of old runs
//! (`store/schedules.rs` says what they hold).

use super::{PgTx, get};
use crate::store::schedules::{
    ArchiveFilter, ArchivedRow, ArchivedRun, ScheduleRecord, SuccessRow, summary_from_json,
};
use crate::store::tx::StoredRun;
use crate::store::{StoreError, to_json};

impl PgTx<'_> {
    pub(super) async fn put_schedule_now(&self, s: &ScheduleRecord) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO schedules (name, spec_toml, source_name, created_by, created_at_ms,
                                    paused, last_fire_ms, last_run_id, last_note)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (name) DO UPDATE SET
                 spec_toml = excluded.spec_toml, source_name = excluded.source_name,
                 created_by = excluded.created_by, created_at_ms = excluded.created_at_ms,
                 paused = excluded.paused, last_fire_ms = excluded.last_fire_ms,
                 last_run_id = excluded.last_run_id, last_note = excluded.last_note",
            &[
                &s.name,
                &s.spec_toml,
                &s.source_name,
                &s.created_by,
                &s.created_at_ms,
                &s.paused,
                &s.last_fire_ms,
                &s.last_run_id,
                &s.last_note,
            ],
        )
        .await
        .map(drop)
    }

    pub(super) async fn delete_schedule_now(&self, name: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM schedules WHERE name = $1", &[&name])
            .await
            .map(drop)
    }

    pub(super) async fn load_schedules_now(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.query(
            "SELECT name, spec_toml, source_name, created_by, created_at_ms, paused,
                    last_fire_ms, last_run_id, last_note
             FROM schedules ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(ScheduleRecord {
                name: get(r, "name")?,
                spec_toml: get(r, "spec_toml")?,
                source_name: get(r, "source_name")?,
                created_by: get(r, "created_by")?,
                created_at_ms: get(r, "created_at_ms")?,
                paused: get(r, "paused")?,
                last_fire_ms: get(r, "last_fire_ms")?,
                last_run_id: get(r, "last_run_id")?,
                last_note: get(r, "last_note")?,
            })
        })
        .collect()
    }

    pub(super) async fn archive_run_now(&self, run: &ArchivedRun) -> Result<(), StoreError> {
        let summary = to_json("archived campaign summary", &run.summary)?;
        let changed = self
            .execute(
                "UPDATE campaign_runs SET archived_at_ms = $2, archived_state = $3,
                                          archived_json = $4
                 WHERE id = $1",
                &[&run.id, &run.at_ms, &run.summary.state, &summary],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::Corrupt(format!(
                "campaign {} has no row to archive",
                run.id
            )));
        }
        // Every host in one statement, as a run's rows are inserted.
        let hosts: Vec<&str> = run.successes.iter().map(|(h, _)| h.as_str()).collect();
        let at: Vec<i64> = run.successes.iter().map(|(_, t)| *t).collect();
        self.execute(
            "INSERT INTO campaign_successes (host_id, campaign, run_id, finished_at_ms)
             SELECT v.host_id, $1, $2, v.finished_at_ms
             FROM unnest($3::text[], $4::bigint[]) AS v(host_id, finished_at_ms)
             ON CONFLICT (host_id, campaign) DO UPDATE SET
                 run_id = excluded.run_id, finished_at_ms = excluded.finished_at_ms
             WHERE excluded.finished_at_ms > campaign_successes.finished_at_ms",
            &[&run.name, &run.id, &hosts, &at],
        )
        .await
        .map(drop)
    }

    pub(super) async fn load_run_now(
        &self,
        id: &str,
    ) -> Result<Option<(StoredRun, bool)>, StoreError> {
        let rows = self
            .query(
                "SELECT id, spec_toml, spec_json, header_json, created_by, archived_at_ms
                 FROM campaign_runs WHERE id = $1",
                &[&id],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let hosts = self.run_hosts(id).await?;
        let archived: i64 = get(row, "archived_at_ms")?;
        Ok(Some((
            StoredRun {
                id: get(row, "id")?,
                spec_toml: get(row, "spec_toml")?,
                spec_json: get(row, "spec_json")?,
                header_json: get(row, "header_json")?,
                created_by: get(row, "created_by")?,
                hosts,
            },
            archived != 0,
        )))
    }

    pub(super) async fn list_archived_now(
        &self,
        filter: &ArchiveFilter,
    ) -> Result<Vec<ArchivedRow>, StoreError> {
        // ILIKE: ASCII case-insensitive, as SQLite's LIKE.
        let limit = i64::from(filter.limit);
        let rows = self
            .query(
                "SELECT id, name, created_at_ms, created_by, archived_at_ms, archived_json
                 FROM campaign_runs
                 WHERE archived_at_ms > 0 AND ($1 = '' OR archived_state = $1)
                       AND name ILIKE $2 ESCAPE '\\'
                 ORDER BY created_at_ms DESC, id DESC LIMIT $3",
                &[&filter.state, &filter.name_like(), &limit],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = get(r, "id")?;
                let json: String = get(r, "archived_json")?;
                Ok(ArchivedRow {
                    summary: summary_from_json(&id, &json)?,
                    id,
                    name: get(r, "name")?,
                    created_at_ms: get(r, "created_at_ms")?,
                    created_by: get(r, "created_by")?,
                    archived_at_ms: get(r, "archived_at_ms")?,
                })
            })
            .collect()
    }

    pub(super) async fn load_successes_now(&self) -> Result<Vec<SuccessRow>, StoreError> {
        self.query(
            "SELECT host_id, campaign, run_id, finished_at_ms FROM campaign_successes
             ORDER BY host_id, campaign",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(SuccessRow {
                host_id: get(r, "host_id")?,
                campaign: get(r, "campaign")?,
                run_id: get(r, "run_id")?,
                finished_at_ms: get(r, "finished_at_ms")?,
            })
        })
        .collect()
    }
}
