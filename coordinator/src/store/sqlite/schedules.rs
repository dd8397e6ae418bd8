//! SQLite's rows for campaign schedules and the archive of old runs (`store/schedules.rs`
//! says what they hold).

use rusqlite::{OptionalExtension, params};

use super::SqliteTx;
use crate::store::schedules::{
    ArchiveFilter, ArchivedRow, ArchivedRun, ScheduleRecord, SuccessRow, summary_from_json,
};
use crate::store::tx::StoredRun;
use crate::store::{StoreError, to_json};

impl SqliteTx<'_> {
    pub(super) fn put_schedule_now(&self, s: &ScheduleRecord) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO schedules (name, spec_toml, source_name, created_by, created_at_ms,
                                    paused, last_fire_ms, last_run_id, last_note)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT(name) DO UPDATE SET
                 spec_toml = excluded.spec_toml, source_name = excluded.source_name,
                 created_by = excluded.created_by, created_at_ms = excluded.created_at_ms,
                 paused = excluded.paused, last_fire_ms = excluded.last_fire_ms,
                 last_run_id = excluded.last_run_id, last_note = excluded.last_note",
            params![
                s.name,
                s.spec_toml,
                s.source_name,
                s.created_by,
                s.created_at_ms,
                s.paused,
                s.last_fire_ms,
                s.last_run_id,
                s.last_note
            ],
        )
        .map(drop)
    }

    pub(super) fn delete_schedule_now(&self, name: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM schedules WHERE name = ?1", params![name])
            .map(drop)
    }

    pub(super) fn load_schedules_now(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, spec_toml, source_name, created_by, created_at_ms, paused,
                    last_fire_ms, last_run_id, last_note
             FROM schedules ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ScheduleRecord {
                name: r.get(0)?,
                spec_toml: r.get(1)?,
                source_name: r.get(2)?,
                created_by: r.get(3)?,
                created_at_ms: r.get(4)?,
                paused: r.get(5)?,
                last_fire_ms: r.get(6)?,
                last_run_id: r.get(7)?,
                last_note: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(super) fn archive_run_now(&self, run: &ArchivedRun) -> Result<(), StoreError> {
        let summary = to_json("archived campaign summary", &run.summary)?;
        let changed = self.execute(
            "UPDATE campaign_runs SET archived_at_ms = ?2, archived_state = ?3, archived_json = ?4
             WHERE id = ?1",
            params![run.id, run.at_ms, run.summary.state, summary],
        )?;
        if changed == 0 {
            return Err(StoreError::Corrupt(format!(
                "campaign {} has no row to archive",
                run.id
            )));
        }
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO campaign_successes (host_id, campaign, run_id, finished_at_ms)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(host_id, campaign) DO UPDATE SET
                 run_id = excluded.run_id, finished_at_ms = excluded.finished_at_ms
             WHERE excluded.finished_at_ms > campaign_successes.finished_at_ms",
        )?;
        for (host, at) in &run.successes {
            stmt.execute(params![host, run.name, run.id, at])?;
        }
        Ok(())
    }

    pub(super) fn load_run_now(&self, id: &str) -> Result<Option<(StoredRun, bool)>, StoreError> {
        let header = self
            .conn
            .query_row(
                "SELECT id, spec_toml, spec_json, header_json, created_by, archived_at_ms
                 FROM campaign_runs WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        StoredRun {
                            id: r.get(0)?,
                            spec_toml: r.get(1)?,
                            spec_json: r.get(2)?,
                            header_json: r.get(3)?,
                            created_by: r.get(4)?,
                            hosts: Vec::new(),
                        },
                        r.get::<_, i64>(5)? != 0,
                    ))
                },
            )
            .optional()?;
        let Some((mut run, archived)) = header else {
            return Ok(None);
        };
        run.hosts = self.run_hosts_now(&run.id)?;
        Ok(Some((run, archived)))
    }

    pub(super) fn list_archived_now(
        &self,
        filter: &ArchiveFilter,
    ) -> Result<Vec<ArchivedRow>, StoreError> {
        // LIKE is ASCII case-insensitive here, as ILIKE is on PostgreSQL.
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, name, created_at_ms, created_by, archived_at_ms, archived_json
             FROM campaign_runs
             WHERE archived_at_ms > 0 AND (?1 = '' OR archived_state = ?1)
                   AND name LIKE ?2 ESCAPE '\\'
             ORDER BY created_at_ms DESC, id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![filter.state, filter.name_like(), filter.limit],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, created_at_ms, created_by, archived_at_ms, json) = row?;
            let summary = summary_from_json(&id, &json)?;
            out.push(ArchivedRow {
                id,
                name,
                created_at_ms,
                created_by,
                archived_at_ms,
                summary,
            });
        }
        Ok(out)
    }

    pub(super) fn load_successes_now(&self) -> Result<Vec<SuccessRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT host_id, campaign, run_id, finished_at_ms FROM campaign_successes
             ORDER BY host_id, campaign",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(SuccessRow {
                host_id: r.get(0)?,
                campaign: r.get(1)?,
                run_id: r.get(2)?,
                finished_at_ms: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
