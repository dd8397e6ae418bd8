//! The embedded SQLite backend: one file in WAL mode with `synchronous=FULL`, a writer thread
//! that group-commits, and a second connection for reads (WAL readers never wait for the
//! writer). Every row operation runs to completion when called; its future is ready at once,
//! so the writer thread and the readers drive them with a local executor and nothing here
//! touches an async worker.

mod deliveries;
mod schedules;
mod schema;

use std::collections::BTreeMap;
use std::future::ready;
use std::path::Path;

use futures::future::BoxFuture;
use pitcrew_scheduler::ManualState;
use prometheus_client::metrics::histogram::Histogram;
use rusqlite::{Connection, OptionalExtension, Row, params};
use tokio::sync::mpsc;

use super::schedules::{ArchiveFilter, ArchivedRow, ArchivedRun, ScheduleRecord, SuccessRow};
use super::tx::{Conn, Job, MAX_JOBS_PER_COMMIT, NewRunRows, StoredRun, Tx, TxFuture};
use super::{
    ActionRecord, CampaignHostRow, DeliveryFilter, DeliveryRecord, EventFilter, EventRecord,
    HostFilter, HostRecord, OperatorRecord, StoreError, TokenRecord, from_json, to_json,
};

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let fail = |e: rusqlite::Error| StoreError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let conn = Connection::open(path).map_err(fail)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(fail)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(fail)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(fail)?;
    Ok(conn)
}

/// Opens (creating and migrating if needed) the store file and starts its writer thread;
/// returns the writer's queue and the reader connection.
pub(super) fn open(
    path: &Path,
    commits: Histogram,
) -> Result<(mpsc::UnboundedSender<Job>, Connection), StoreError> {
    let mut conn = open_connection(path)?;
    schema::migrate(&mut conn).map_err(|e| StoreError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let reader = open_connection(path)?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("pitcrew-store-writer".into())
        .spawn(move || writer_loop(conn, rx, &commits))
        .map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            reason: format!("cannot start the writer thread: {e}"),
        })?;
    Ok((tx, reader))
}

/// The writer thread: group commit until every sender is gone.
fn writer_loop(mut conn: Connection, mut jobs: mpsc::UnboundedReceiver<Job>, commits: &Histogram) {
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut sqlite = SqliteTx { conn: &mut conn };
        // Every future of this backend is ready at once: this never waits on anything.
        let _ = futures::executor::block_on(super::tx::commit_batch(&mut sqlite, batch, commits));
    }
}

/// Runs `f` on a connection now, on the calling thread (a reader, or a test's own connection).
/// Every row operation of this backend is done when called, so the future is polled once:
/// this works inside any executor, and never waits.
pub(crate) fn run_now<T>(
    conn: &mut Connection,
    f: impl for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let mut tx = SqliteTx { conn };
    let mut future = f(&mut tx);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => Err(StoreError::Sql(
            "a read of the SQLite store waited on something other than SQLite".into(),
        )),
    }
}

/// A connection as the row operations see it.
struct SqliteTx<'c> {
    conn: &'c mut Connection,
}

/// A finished result as the trait's future.
fn done<'a, T: Send + 'a>(result: Result<T, StoreError>) -> TxFuture<'a, T> {
    Box::pin(ready(result))
}

const TOKEN_COLUMNS: &str = "id, hash, role, labels, uses_left, uses_total, expires_at_ms, \
     revoked, created_at_ms, created_by, replace_host";

fn token_from_row(row: &Row<'_>) -> Result<TokenRecord, StoreError> {
    let labels: String = row.get("labels")?;
    Ok(TokenRecord {
        id: row.get("id")?,
        hash: row.get("hash")?,
        role: row.get("role")?,
        labels: from_json("token labels", &labels)?,
        uses_left: row.get("uses_left")?,
        uses_total: row.get("uses_total")?,
        expires_at_ms: row.get("expires_at_ms")?,
        revoked: row.get("revoked")?,
        created_at_ms: row.get("created_at_ms")?,
        created_by: row.get("created_by")?,
        replace_host: row.get("replace_host")?,
    })
}

const HOST_COLUMNS: &str = "host_id, hostname, role, labels, cert_serial, enrolled_at_ms, \
     last_seen_ms, facts, pending_serial, removed_at_ms";

fn host_from_row(row: &Row<'_>) -> Result<HostRecord, StoreError> {
    let labels: String = row.get("labels")?;
    Ok(HostRecord {
        host_id: row.get("host_id")?,
        hostname: row.get("hostname")?,
        role: row.get("role")?,
        labels: from_json("host labels", &labels)?,
        cert_serial: row.get("cert_serial")?,
        enrolled_at_ms: row.get("enrolled_at_ms")?,
        last_seen_ms: row.get("last_seen_ms")?,
        facts: row.get("facts")?,
        pending_serial: row.get("pending_serial")?,
        removed_at_ms: row.get("removed_at_ms")?,
    })
}

const OPERATOR_COLUMNS: &str =
    "serial, name, role, not_after_ms, revoked, created_at_ms, created_by";

fn operator_from_row(row: &Row<'_>) -> Result<OperatorRecord, rusqlite::Error> {
    Ok(OperatorRecord {
        serial: row.get("serial")?,
        name: row.get("name")?,
        role: row.get("role")?,
        not_after_ms: row.get("not_after_ms")?,
        revoked: row.get("revoked")?,
        created_at_ms: row.get("created_at_ms")?,
        created_by: row.get("created_by")?,
    })
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<EventRecord> {
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

const ACTION_COLUMNS: &str = "action_id, host_id, campaign_id, request, result, created_at_ms";

fn action_from_row(row: &Row<'_>) -> rusqlite::Result<ActionRecord> {
    Ok(ActionRecord {
        action_id: row.get(0)?,
        host_id: row.get(1)?,
        campaign_id: row.get(2)?,
        request: row.get(3)?,
        result: row.get(4)?,
        created_at_ms: row.get(5)?,
    })
}

impl SqliteTx<'_> {
    fn hosts_where(&self, clause: &str, value: &str) -> Result<Vec<HostRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {HOST_COLUMNS} FROM hosts WHERE {clause}"))?;
        let mut rows = stmt.query(params![value])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(host_from_row(row)?);
        }
        Ok(out)
    }

    fn token_where(&self, column: &str, value: &str) -> Result<Option<TokenRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE {column} = ?1"
        ))?;
        let mut rows = stmt.query(params![value])?;
        rows.next()?.map(token_from_row).transpose()
    }

    fn operators_where(
        &self,
        clause: &str,
        value: &str,
    ) -> Result<Vec<OperatorRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {OPERATOR_COLUMNS} FROM operator_certs WHERE {clause}"
        ))?;
        let rows = stmt.query_map(params![value], operator_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn list_hosts_now(&self, filter: &HostFilter) -> Result<Vec<HostRecord>, StoreError> {
        let (after_name, after_id) = filter.after.clone().unwrap_or_default();
        let has_after = filter.after.is_some();
        let (label_key, label_value) = match &filter.label {
            Some((k, v)) => (
                Some(format!("$.\"{}\"", k.replace('"', ""))),
                Some(v.clone()),
            ),
            None => (None, None),
        };
        let limit = if filter.limit == 0 {
            i64::MAX
        } else {
            i64::from(filter.limit)
        };
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {HOST_COLUMNS} FROM hosts
             WHERE (?1 = 0 OR (hostname, host_id) > (?2, ?3))
               AND (?4 IS NULL OR role = ?4)
               AND (?5 IS NULL OR json_extract(labels, ?5) = ?6)
               AND ((?8 = 0) = (removed_at_ms = 0))
             ORDER BY hostname, host_id LIMIT ?7"
        ))?;
        let mut rows = stmt.query(params![
            has_after,
            after_name,
            after_id,
            filter.role,
            label_key,
            label_value,
            limit,
            filter.removed
        ])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(host_from_row(row)?);
        }
        Ok(out)
    }

    fn list_events_now(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
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
        let mut stmt = self.conn.prepare_cached(
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
            event_from_row,
        )?;
        let mut out = rows.collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    fn insert_run_now(&self, run: &NewRunRows) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO campaign_runs (id, name, spec_toml, spec_json, header_json, created_at_ms, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                run.id,
                run.name,
                run.spec_toml,
                run.spec_json,
                run.header_json,
                run.created_at_ms,
                run.created_by
            ],
        )?;
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO campaign_hosts (campaign_id, position, host_id, steps_json, progress_json)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (position, host_id, steps, progress) in &run.hosts {
            stmt.execute(params![run.id, position, host_id, steps, progress])?;
        }
        Ok(())
    }

    fn load_runs_now(&self) -> Result<Vec<StoredRun>, StoreError> {
        let mut runs: Vec<StoredRun> = {
            let mut stmt = self.conn.prepare(
                "SELECT id, spec_toml, spec_json, header_json, created_by FROM campaign_runs
                 WHERE archived_at_ms = 0 ORDER BY created_at_ms, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(StoredRun {
                    id: r.get(0)?,
                    spec_toml: r.get(1)?,
                    spec_json: r.get(2)?,
                    header_json: r.get(3)?,
                    created_by: r.get(4)?,
                    hosts: Vec::new(),
                })
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for run in &mut runs {
            run.hosts = self.run_hosts_now(&run.id)?;
        }
        Ok(runs)
    }

    /// A run's host rows (id, steps, progress), in run order: archived or not.
    fn run_hosts_now(&self, id: &str) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT host_id, steps_json, progress_json FROM campaign_hosts WHERE campaign_id = ?1
             ORDER BY position",
        )?;
        let rows = stmt.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn load_manual_now(&self) -> Result<BTreeMap<String, ManualState>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT host_id, state_json FROM manual_maintenance")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (host, text) = row?;
            let state = from_json(&format!("manual maintenance of {host}"), &text)?;
            out.insert(host, state);
        }
        Ok(out)
    }

    fn execute(&self, sql: &str, values: impl rusqlite::Params) -> Result<usize, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        Ok(stmt.execute(values)?)
    }
}

impl Tx for SqliteTx<'_> {
    fn insert_token<'a>(&'a mut self, t: &'a TokenRecord) -> TxFuture<'a, ()> {
        done((|| {
            self.execute(
                &format!(
                    "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ),
                params![
                    t.id,
                    t.hash,
                    t.role,
                    to_json("token labels", &t.labels)?,
                    t.uses_left,
                    t.uses_total,
                    t.expires_at_ms,
                    t.revoked,
                    t.created_at_ms,
                    t.created_by,
                    t.replace_host
                ],
            )?;
            Ok(())
        })())
    }

    fn list_tokens(&mut self) -> TxFuture<'_, Vec<TokenRecord>> {
        done((|| {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at_ms, id"
            ))?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(token_from_row(row)?);
            }
            Ok(out)
        })())
    }

    fn token_by_hash<'a>(&'a mut self, hash: &'a str) -> TxFuture<'a, Option<TokenRecord>> {
        done(self.token_where("hash", hash))
    }

    fn token_by_id<'a>(&'a mut self, id: &'a str) -> TxFuture<'a, Option<TokenRecord>> {
        done(self.token_where("id", id))
    }

    fn use_token<'a>(&'a mut self, id: &'a str) -> TxFuture<'a, bool> {
        done(
            self.execute(
                "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ?1 AND uses_left > 0",
                params![id],
            )
            .map(|n| n > 0),
        )
    }

    fn revoke_token<'a>(&'a mut self, id: &'a str) -> TxFuture<'a, ()> {
        done(
            self.execute("UPDATE tokens SET revoked = 1 WHERE id = ?1", params![id])
                .map(drop),
        )
    }

    fn upsert_host<'a>(&'a mut self, host: &'a HostRecord) -> TxFuture<'a, ()> {
        done((|| {
            self.execute(
                &format!(
                    "INSERT INTO hosts ({HOST_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, '', 0)
                     ON CONFLICT(host_id) DO UPDATE SET hostname = excluded.hostname,
                        role = excluded.role, labels = excluded.labels,
                        cert_serial = excluded.cert_serial, pending_serial = '',
                        enrolled_at_ms = excluded.enrolled_at_ms, removed_at_ms = 0"
                ),
                params![
                    host.host_id,
                    host.hostname,
                    host.role,
                    to_json("host labels", &host.labels)?,
                    host.cert_serial,
                    host.enrolled_at_ms,
                    host.last_seen_ms,
                    host.facts
                ],
            )?;
            Ok(())
        })())
    }

    fn set_pending_serial<'a>(&'a mut self, host_id: &'a str, serial: &'a str) -> TxFuture<'a, ()> {
        done(
            self.execute(
                "UPDATE hosts SET pending_serial = ?2 WHERE host_id = ?1",
                params![host_id, serial],
            )
            .map(drop),
        )
    }

    fn promote_pending_serial<'a>(
        &'a mut self,
        host_id: &'a str,
        serial: &'a str,
    ) -> TxFuture<'a, bool> {
        done(
            self.execute(
                "UPDATE hosts SET cert_serial = pending_serial, pending_serial = ''
                 WHERE host_id = ?1 AND pending_serial = ?2 AND ?2 != ''",
                params![host_id, serial],
            )
            .map(|n| n > 0),
        )
    }

    fn host<'a>(&'a mut self, host_id: &'a str) -> TxFuture<'a, Option<HostRecord>> {
        done(
            self.hosts_where("host_id = ?1", host_id)
                .map(|hosts| hosts.into_iter().next()),
        )
    }

    fn hosts_by_hostname<'a>(&'a mut self, hostname: &'a str) -> TxFuture<'a, Vec<HostRecord>> {
        done(self.hosts_where("hostname = ?1 AND removed_at_ms = 0 LIMIT 2", hostname))
    }

    fn hosts_by_id_prefix<'a>(
        &'a mut self,
        prefix: &'a str,
        limit: u32,
    ) -> TxFuture<'a, Vec<HostRecord>> {
        done((|| {
            let upper = super::hosts::id_prefix_end(prefix);
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {HOST_COLUMNS} FROM hosts
                 WHERE host_id >= ?1 AND host_id < ?2 AND removed_at_ms = 0
                 ORDER BY host_id LIMIT ?3"
            ))?;
            let mut rows = stmt.query(params![prefix, upper, limit])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(host_from_row(row)?);
            }
            Ok(out)
        })())
    }

    fn removed_host_by_hostname<'a>(
        &'a mut self,
        hostname: &'a str,
    ) -> TxFuture<'a, Option<HostRecord>> {
        done(
            self.hosts_where(
                "hostname = ?1 AND removed_at_ms != 0 ORDER BY removed_at_ms DESC LIMIT 1",
                hostname,
            )
            .map(|hosts| hosts.into_iter().next()),
        )
    }

    fn mark_host_removed<'a>(&'a mut self, host_id: &'a str, at_ms: i64) -> TxFuture<'a, ()> {
        done(
            self.execute(
                "UPDATE hosts SET removed_at_ms = ?2, cert_serial = '', pending_serial = ''
                 WHERE host_id = ?1",
                params![host_id, at_ms.max(1)],
            )
            .map(drop),
        )
    }

    fn set_host_role_labels<'a>(
        &'a mut self,
        host_id: &'a str,
        role: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> TxFuture<'a, ()> {
        done((|| {
            self.execute(
                "UPDATE hosts SET role = ?2, labels = ?3 WHERE host_id = ?1 AND removed_at_ms = 0",
                params![host_id, role, to_json("host labels", labels)?],
            )?;
            Ok(())
        })())
    }

    fn list_hosts<'a>(&'a mut self, filter: &'a HostFilter) -> TxFuture<'a, Vec<HostRecord>> {
        done(self.list_hosts_now(filter))
    }

    fn set_facts<'a>(
        &'a mut self,
        host_id: &'a str,
        facts: &'a [u8],
        now_ms: i64,
    ) -> TxFuture<'a, ()> {
        done(
            self.execute(
                "UPDATE hosts SET facts = ?2, last_seen_ms = ?3 WHERE host_id = ?1",
                params![host_id, facts, now_ms],
            )
            .map(drop),
        )
    }

    fn set_last_seen<'a>(&'a mut self, seen: &'a [(String, i64)]) -> TxFuture<'a, ()> {
        done((|| {
            for (host_id, at_ms) in seen {
                self.execute(
                    "UPDATE hosts SET last_seen_ms = max(last_seen_ms, ?2) WHERE host_id = ?1",
                    params![host_id, at_ms],
                )?;
            }
            Ok(())
        })())
    }

    fn insert_operator<'a>(&'a mut self, r: &'a OperatorRecord) -> TxFuture<'a, ()> {
        done(
            self.execute(
                &format!(
                    "INSERT INTO operator_certs ({OPERATOR_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ),
                params![
                    r.serial,
                    r.name,
                    r.role,
                    r.not_after_ms,
                    r.revoked,
                    r.created_at_ms,
                    r.created_by
                ],
            )
            .map(drop),
        )
    }

    fn list_operators(&mut self) -> TxFuture<'_, Vec<OperatorRecord>> {
        done((|| {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {OPERATOR_COLUMNS} FROM operator_certs ORDER BY name, created_at_ms, serial"
            ))?;
            let rows = stmt.query_map([], operator_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })())
    }

    fn operator<'a>(&'a mut self, serial: &'a str) -> TxFuture<'a, Option<OperatorRecord>> {
        done(
            self.operators_where("serial = ?1", serial)
                .map(|found| found.into_iter().next()),
        )
    }

    fn operators_by_name<'a>(&'a mut self, name: &'a str) -> TxFuture<'a, Vec<OperatorRecord>> {
        done(self.operators_where("name = ?1 ORDER BY created_at_ms, serial", name))
    }

    fn active_role<'a>(&'a mut self, name: &'a str, now_ms: i64) -> TxFuture<'a, Option<String>> {
        done((|| {
            let mut stmt = self.conn.prepare_cached(
                "SELECT role FROM operator_certs WHERE name = ?1 AND revoked = 0 AND not_after_ms > ?2 \
                 ORDER BY created_at_ms DESC LIMIT 1",
            )?;
            Ok(stmt
                .query_row(params![name, now_ms], |r| r.get(0))
                .optional()?)
        })())
    }

    fn count_active_names<'a>(
        &'a mut self,
        role: &'a str,
        except: &'a str,
        now_ms: i64,
    ) -> TxFuture<'a, u64> {
        done((|| {
            Ok(self.conn.query_row(
                "SELECT COUNT(DISTINCT name) FROM operator_certs \
                 WHERE role = ?1 AND name != ?2 AND revoked = 0 AND not_after_ms > ?3",
                params![role, except, now_ms],
                |r| r.get(0),
            )?)
        })())
    }

    fn revoke_operator_name<'a>(&'a mut self, name: &'a str) -> TxFuture<'a, ()> {
        done(
            self.execute(
                "UPDATE operator_certs SET revoked = 1 WHERE name = ?1",
                params![name],
            )
            .map(drop),
        )
    }

    fn append_event<'a>(&'a mut self, e: &'a EventRecord) -> TxFuture<'a, i64> {
        done((|| {
            self.execute(
                "INSERT INTO events (at_ms, kind, host_id, campaign_id, step, result, message, actor)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    e.at_ms,
                    e.kind,
                    e.host_id,
                    e.campaign_id,
                    e.step,
                    e.result,
                    e.message,
                    e.actor
                ],
            )?;
            Ok(self.conn.last_insert_rowid())
        })())
    }

    fn prune_events(&mut self, before_ms: i64, keep: u64) -> TxFuture<'_, u64> {
        done((|| {
            let mut deleted =
                self.execute("DELETE FROM events WHERE at_ms < ?1", params![before_ms])?;
            let keep = i64::try_from(keep).unwrap_or(i64::MAX);
            deleted += self.execute(
                "DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?1",
                params![keep],
            )?;
            Ok(deleted as u64)
        })())
    }

    fn list_events<'a>(&'a mut self, filter: &'a EventFilter) -> TxFuture<'a, Vec<EventRecord>> {
        done(self.list_events_now(filter))
    }

    fn insert_action<'a>(&'a mut self, a: &'a ActionRecord) -> TxFuture<'a, ()> {
        done(
            self.execute(
                &format!(
                    "INSERT OR IGNORE INTO actions ({ACTION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                ),
                params![
                    a.action_id,
                    a.host_id,
                    a.campaign_id,
                    a.request,
                    a.result,
                    a.created_at_ms
                ],
            )
            .map(drop),
        )
    }

    fn finish_action<'a>(&'a mut self, action_id: &'a str, result: &'a [u8]) -> TxFuture<'a, bool> {
        done(
            self.execute(
                "UPDATE actions SET result = ?2 WHERE action_id = ?1 AND result IS NULL",
                params![action_id, result],
            )
            .map(|n| n > 0),
        )
    }

    fn action<'a>(&'a mut self, action_id: &'a str) -> TxFuture<'a, Option<ActionRecord>> {
        done((|| {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {ACTION_COLUMNS} FROM actions WHERE action_id = ?1"
            ))?;
            Ok(stmt
                .query_row(params![action_id], action_from_row)
                .optional()?)
        })())
    }

    fn unfinished_actions<'a>(&'a mut self, host_id: &'a str) -> TxFuture<'a, Vec<ActionRecord>> {
        done((|| {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {ACTION_COLUMNS} FROM actions WHERE host_id = ?1 AND result IS NULL
                 ORDER BY created_at_ms, action_id"
            ))?;
            let rows = stmt.query_map(params![host_id], action_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })())
    }

    fn insert_run<'a>(&'a mut self, run: &'a NewRunRows) -> TxFuture<'a, ()> {
        done(self.insert_run_now(run))
    }

    fn put_header<'a>(
        &'a mut self,
        campaign_id: &'a str,
        header_json: &'a str,
    ) -> TxFuture<'a, bool> {
        done(
            self.execute(
                "UPDATE campaign_runs SET header_json = ?2 WHERE id = ?1",
                params![campaign_id, header_json],
            )
            .map(|n| n > 0),
        )
    }

    fn put_campaign_host<'a>(&'a mut self, row: &'a CampaignHostRow) -> TxFuture<'a, bool> {
        done(
            self.execute(
                "UPDATE campaign_hosts SET progress_json = ?3 WHERE campaign_id = ?1 AND host_id = ?2",
                params![row.campaign_id, row.host_id, row.progress_json],
            )
            .map(|n| n > 0),
        )
    }

    fn load_runs(&mut self) -> TxFuture<'_, Vec<StoredRun>> {
        done(self.load_runs_now())
    }

    fn put_manual<'a>(
        &'a mut self,
        host_id: &'a str,
        state: Option<&'a ManualState>,
    ) -> TxFuture<'a, ()> {
        done((|| {
            match state {
                Some(state) => self.execute(
                    "INSERT INTO manual_maintenance (host_id, state_json) VALUES (?1, ?2)
                     ON CONFLICT(host_id) DO UPDATE SET state_json = excluded.state_json",
                    params![host_id, to_json("manual maintenance", state)?],
                )?,
                None => self.execute(
                    "DELETE FROM manual_maintenance WHERE host_id = ?1",
                    params![host_id],
                )?,
            };
            Ok(())
        })())
    }

    fn load_manual(&mut self) -> TxFuture<'_, BTreeMap<String, ManualState>> {
        done(self.load_manual_now())
    }

    fn put_schedule<'a>(&'a mut self, schedule: &'a ScheduleRecord) -> TxFuture<'a, ()> {
        done(self.put_schedule_now(schedule))
    }

    fn delete_schedule<'a>(&'a mut self, name: &'a str) -> TxFuture<'a, ()> {
        done(self.delete_schedule_now(name))
    }

    fn load_schedules(&mut self) -> TxFuture<'_, Vec<ScheduleRecord>> {
        done(self.load_schedules_now())
    }

    fn archive_run<'a>(&'a mut self, run: &'a ArchivedRun) -> TxFuture<'a, ()> {
        done(self.archive_run_now(run))
    }

    fn load_run<'a>(&'a mut self, id: &'a str) -> TxFuture<'a, Option<(StoredRun, bool)>> {
        done(self.load_run_now(id))
    }

    fn list_archived<'a>(
        &'a mut self,
        filter: &'a ArchiveFilter,
    ) -> TxFuture<'a, Vec<ArchivedRow>> {
        done(self.list_archived_now(filter))
    }

    fn load_successes(&mut self) -> TxFuture<'_, Vec<SuccessRow>> {
        done(self.load_successes_now())
    }

    fn insert_delivery<'a>(&'a mut self, delivery: &'a DeliveryRecord) -> TxFuture<'a, ()> {
        done(deliveries::insert(self.conn, delivery))
    }

    fn update_delivery<'a>(&'a mut self, delivery: &'a DeliveryRecord) -> TxFuture<'a, ()> {
        done(deliveries::update(self.conn, delivery))
    }

    fn pending_deliveries(&mut self) -> TxFuture<'_, Vec<DeliveryRecord>> {
        done(deliveries::pending(self.conn))
    }

    fn list_deliveries<'a>(
        &'a mut self,
        filter: &'a DeliveryFilter,
    ) -> TxFuture<'a, Vec<DeliveryRecord>> {
        done(deliveries::list(self.conn, filter))
    }

    fn prune_deliveries(&mut self, before_ms: i64) -> TxFuture<'_, u64> {
        done(deliveries::prune(self.conn, before_ms))
    }
}

impl Conn for SqliteTx<'_> {
    fn begin(&mut self) -> TxFuture<'_, ()> {
        done(
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(Into::into),
        )
    }

    fn commit(&mut self) -> TxFuture<'_, ()> {
        done(self.conn.execute_batch("COMMIT").map_err(Into::into))
    }

    fn rollback(&mut self) -> TxFuture<'_, ()> {
        // Nothing to roll back when the transaction already ended.
        if self.conn.is_autocommit() {
            return done(Ok(()));
        }
        done(self.conn.execute_batch("ROLLBACK").map_err(Into::into))
    }

    fn savepoint(&mut self) -> TxFuture<'_, ()> {
        done(self.conn.execute_batch("SAVEPOINT job").map_err(Into::into))
    }

    fn release_savepoint(&mut self) -> TxFuture<'_, ()> {
        done(self.conn.execute_batch("RELEASE job").map_err(Into::into))
    }

    fn rollback_to_savepoint(&mut self) -> TxFuture<'_, ()> {
        done(
            self.conn
                .execute_batch("ROLLBACK TO job")
                .map_err(Into::into),
        )
    }
}
