//! The coordinator's durable state: join tokens (hashed), the host registry, operators'
//! certificates, actions, campaigns, manual maintenance and the event log, in one embedded
//! SQLite file (WAL, `synchronous=FULL`).
//!
//! **All writes go through one writer thread** that group-commits: it takes every job waiting
//! in its queue, runs each in its own savepoint inside one transaction, commits once (one
//! fsync for the lot) and only then reports each job's outcome. A caller that awaits
//! [`Store::write`] therefore knows its change is durable — the write-ahead invariant relies on
//! that — and many callers share one fsync. Reads use a second connection (WAL readers never
//! wait for the writer) on tokio's blocking pool. Nothing here runs SQLite on an async worker.
//!
//! The query functions live in one module per table family and take a `&Connection`, so the
//! same function serves inside a writer job, a read, and the unit tests.

pub mod actions;
pub mod campaigns;
pub mod events;
pub mod hosts;
pub mod operators;
mod schema;
pub mod tokens;

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

pub use actions::ActionRecord;
pub use campaigns::{CampaignHostRow, CampaignRecord};
pub use events::{EventFilter, EventRecord};
pub use hosts::{HostFilter, HostRecord};
pub use operators::OperatorRecord;
pub use tokens::{TokenRecord, TokenRefusal};

/// Store errors. `Clone` so that one failed commit can be reported to every job it carried.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("store: {0}")]
    Sql(String),
    #[error("store: stored data is not readable: {0}")]
    Corrupt(String),
    #[error("store: the writer has stopped")]
    WriterGone,
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        StoreError::Sql(error.to_string())
    }
}

/// What a job hands back to the writer: whether its savepoint is kept, and what to do once
/// the transaction's fate is known.
type AfterCommit = Box<dyn FnOnce(&Result<(), StoreError>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> (bool, AfterCommit) + Send>;

/// The most jobs one transaction carries; a bound on how long one commit can take.
const MAX_JOBS_PER_COMMIT: usize = 4096;

/// The embedded SQLite store.
pub struct Store {
    /// Unbounded on purpose: producers that could flood it (sessions, the engine) await their
    /// own writes, and fire-and-forget writes (events) follow the pace of what they record.
    writer: mpsc::UnboundedSender<Job>,
    reader: Arc<Mutex<Connection>>,
    /// How long each of the writer's transactions took, from BEGIN to the end of COMMIT (its
    /// fsync included), for the metrics.
    commit_seconds: Histogram,
}

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

impl Store {
    /// Opens (creating and migrating if needed) the store file and starts its writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut conn = open_connection(path)?;
        schema::migrate(&mut conn).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let reader = open_connection(path)?;
        let (tx, rx) = mpsc::unbounded_channel();
        // 100 µs to about 13 s.
        let commit_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 18));
        let observed = commit_seconds.clone();
        std::thread::Builder::new()
            .name("pitcrew-store-writer".into())
            .spawn(move || writer_loop(conn, rx, &observed))
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Store {
            writer: tx,
            reader: Arc::new(Mutex::new(reader)),
            commit_seconds,
        })
    }

    /// The histogram of the writer's transaction times (shared: observations made after this
    /// call show in it).
    pub fn commit_seconds(&self) -> Histogram {
        self.commit_seconds.clone()
    }

    /// Runs `f` in the writer's next transaction and returns its result once that transaction
    /// is durable. If `f` fails, its own changes are rolled back and the others' are kept.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.submit(f, move |result| {
            let _ = tx.send(result);
        })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Like [`Store::write`] for a caller that is not async (start-up, tests, CLI tools).
    /// Never call it from an async worker thread.
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit(f, move |result| {
            let _ = tx.send(result);
        })?;
        rx.recv().map_err(|_| StoreError::WriterGone)?
    }

    /// Queues `f` and calls `done` with its outcome once the transaction carrying it has
    /// committed (or failed). For writes nobody waits on (events, last-seen times).
    pub fn submit<T, F, D>(&self, f: F, done: D) -> Result<(), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        D: FnOnce(Result<T, StoreError>) + Send + 'static,
    {
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let keep = result.is_ok();
            let after: AfterCommit = Box::new(move |commit| {
                done(match commit {
                    Ok(()) => result,
                    Err(error) => Err(error.clone()),
                })
            });
            (keep, after)
        });
        self.writer.send(job).map_err(|_| StoreError::WriterGone)
    }

    /// Runs a read on the reader connection, off the async workers.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&reader.lock()))
            .await
            .map_err(|e| StoreError::Sql(format!("a read task failed: {e}")))?
    }

    /// A read for a caller that is not async (start-up, tests).
    pub fn read_blocking<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&self.reader.lock())
    }
}

/// The writer thread: group commit until every sender is gone.
fn writer_loop(conn: Connection, mut jobs: mpsc::UnboundedReceiver<Job>, commits: &Histogram) {
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut afters = Vec::with_capacity(batch.len());
        let began = std::time::Instant::now();
        let commit = match conn.execute_batch("BEGIN IMMEDIATE") {
            Err(error) => Err(StoreError::from(error)),
            Ok(()) => {
                let mut savepoint_failed = None;
                for job in batch {
                    if let Err(error) = conn.execute_batch("SAVEPOINT job") {
                        savepoint_failed = Some(StoreError::from(error));
                        // The job is not run; it learns the transaction's fate below.
                        afters.push(Box::new(move |_: &Result<(), StoreError>| {}) as AfterCommit);
                        drop(job);
                        continue;
                    }
                    let (keep, after) = job(&conn);
                    let end = if keep {
                        "RELEASE job"
                    } else {
                        "ROLLBACK TO job; RELEASE job"
                    };
                    if let Err(error) = conn.execute_batch(end) {
                        savepoint_failed = Some(StoreError::from(error));
                    }
                    afters.push(after);
                }
                match savepoint_failed {
                    Some(error) => {
                        let _ = conn.execute_batch("ROLLBACK");
                        Err(error)
                    }
                    None => conn.execute_batch("COMMIT").map_err(|error| {
                        let _ = conn.execute_batch("ROLLBACK");
                        StoreError::from(error)
                    }),
                }
            }
        };
        commits.observe(began.elapsed().as_secs_f64());
        if let Err(error) = &commit {
            tracing::error!(message = "a store transaction failed; its writes are lost", %error);
        }
        for after in afters {
            after(&commit);
        }
    }
}

/// Reads a JSON column, naming what it is on error.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    what: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Writes a JSON column.
pub(crate) fn to_json<T: serde::Serialize>(what: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_is_visible_to_readers_once_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .write(|c| {
                c.execute("INSERT INTO kv (key, value) VALUES ('a', '1')", [])?;
                Ok(())
            })
            .await
            .unwrap();
        let value: String = store
            .read(|c| Ok(c.query_row("SELECT value FROM kv WHERE key = 'a'", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(value, "1");
    }

    #[tokio::test]
    async fn a_failing_job_loses_only_its_own_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.db")).unwrap());
        // Queue several jobs at once so they share one transaction.
        let good = store.write(|c| {
            c.execute("INSERT INTO kv (key, value) VALUES ('good', '1')", [])?;
            Ok(())
        });
        let bad = store.write(|c| {
            c.execute("INSERT INTO kv (key, value) VALUES ('bad', '1')", [])?;
            Err::<(), _>(StoreError::Corrupt("refused on purpose".into()))
        });
        let (good, bad) = tokio::join!(good, bad);
        good.unwrap();
        assert!(bad.is_err());
        let keys: Vec<String> = store
            .read(|c| {
                let mut stmt = c.prepare("SELECT key FROM kv ORDER BY key")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<Vec<String>, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(keys, vec!["good".to_owned()]);
    }

    #[test]
    fn the_store_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let store = Store::open(&path).unwrap();
            store
                .write_blocking(|c| {
                    events::append(
                        c,
                        &EventRecord {
                            kind: "audit".into(),
                            message: "hello".into(),
                            ..Default::default()
                        },
                    )
                })
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let listed = store
            .read_blocking(|c| events::list(c, &EventFilter::default()))
            .unwrap();
        assert_eq!(listed[0].message, "hello");
    }
}
