//! The coordinator's durable state: join tokens (hashed), the host registry, operators'
//! certificates, actions, campaigns, manual maintenance and the event log.
//!
//! **One interface, two backends.** [`Store`] is what the engine, the app and the servers
//! use: one typed method per operation (`enroll`, `commit_turn`, `list_hosts`, ...). Behind it
//! is either the embedded SQLite file (the default: WAL, `synchronous=FULL`) or a PostgreSQL
//! database (`[store] postgres_url`). Each compound operation is written once, in the table
//! family's module, against the backend-neutral [`tx::Tx`] row operations; `sqlite/` and
//! `postgres/` each implement those in their SQL, with their own versioned schema.
//!
//! **All writes go through one writer** that group-commits: it takes every job waiting in its
//! queue, runs each in its own savepoint inside one transaction, commits once and only then
//! reports each job's outcome ([`tx::commit_batch`], shared by both backends). A caller that
//! awaits a write therefore knows its change is durable — the write-ahead invariant relies on
//! that — and many callers share one commit. SQLite's writer is a thread of its own and its
//! reads run on tokio's blocking pool on a second connection; PostgreSQL's writer (one
//! connection at a time) and its reads (a small pool) run on the backend's own one-thread
//! runtime. Nothing here runs a query on the coordinator's async workers.

pub mod actions;
pub mod campaigns;
pub mod deliveries;
pub mod events;
pub mod hosts;
pub mod operators;
pub mod postgres;
pub mod schedules;
pub(crate) mod sqlite;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
#[cfg(test)]
mod tests;
pub mod tokens;
mod turn;
mod tx;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use pitcrew_scheduler::ManualState;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::{mpsc, oneshot};

pub use actions::ActionRecord;
pub use campaigns::{CampaignHostRow, CampaignRecord};
pub use deliveries::{DeliveryFilter, DeliveryRecord, DeliveryState};
pub use events::{EventFilter, EventRecord};
pub use hosts::{EnrollRefusal, Enrolled, HostEnrollment, HostFilter, HostLookup, HostRecord};
pub use operators::{OperatorCaller, OperatorRecord, OperatorRefusal};
pub use postgres::PostgresSettings;
pub use schedules::{
    ArchiveFilter, ArchivedRow, ArchivedRun, ArchivedSummary, ScheduleRecord, SuccessRow,
};
pub use tokens::{TokenRecord, TokenRefusal};
pub use turn::{HostChange, TurnWrites};

/// The leader lease as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The holding coordinator process (empty: never taken).
    pub holder: String,
    /// Where agents and operators reach it (its `serve --advertise`; may be empty).
    pub address: String,
    pub epoch: i64,
    /// Whether it has not expired, by the database's clock.
    pub valid: bool,
    /// How long until it expires, by the database's clock (zero once it has).
    pub expires_in: std::time::Duration,
}
use tx::{Job, Tx};

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
    /// The database cannot be reached (a lost connection, a server restarting): like a failed
    /// commit, what was being written is lost and nothing was sent because of it.
    #[error("store: the database is unreachable: {0}")]
    Unavailable(String),
    /// A newer leader holds the lease: this coordinator may write nothing more.
    #[error(
        "store: fenced: this coordinator led with lease epoch {ours}, the database now holds epoch {current}; nothing was written"
    )]
    Fenced { ours: i64, current: i64 },
    /// What the SQLite store does not do.
    #[error("store: {0} needs the PostgreSQL store")]
    Unsupported(&'static str),
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        StoreError::Sql(error.to_string())
    }
}

/// Where the store is.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// The embedded SQLite file (`<data dir>/pitcrew.db`).
    Sqlite(std::path::PathBuf),
    Postgres(PostgresSettings),
}

/// Which backend answers reads.
enum Reads {
    /// The second SQLite connection, used on tokio's blocking pool.
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    Postgres(postgres::Reader),
}

/// The store: one writer, readers beside it, and a typed method per operation.
pub struct Store {
    /// Unbounded on purpose: producers that could flood it (sessions, the engine) await their
    /// own writes, and fire-and-forget writes (events) follow the pace of what they record.
    writer: mpsc::UnboundedSender<Job>,
    reads: Reads,
    /// "sqlite" or "postgres", for logs and the bench.
    backend: &'static str,
    /// How long each of the writer's transactions took, from BEGIN to the end of COMMIT (its
    /// fsync included), for the metrics; both backends' group commit observes it.
    commit_seconds: Histogram,
}

/// Everything the engine reads once, at start.
#[derive(Debug, Clone, Default)]
pub struct StoredFleet {
    /// Enrolled hosts (not removed).
    pub hosts: Vec<HostRecord>,
    pub manual: std::collections::BTreeMap<String, ManualState>,
    /// Every run not archived, oldest first.
    pub campaigns: Vec<CampaignRecord>,
    /// Every schedule, by name.
    pub schedules: Vec<ScheduleRecord>,
    /// Hosts' latest successes in archived runs (for the compliance report).
    pub archived_successes: Vec<SuccessRow>,
}

/// The writer's commit-time histogram: 100 µs to about 13 s.
fn commit_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
}

impl Store {
    /// Opens (creating and migrating if needed) the SQLite store file and starts its writer
    /// thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let commit_seconds = commit_histogram();
        let (writer, reader) = sqlite::open(path, commit_seconds.clone())?;
        Ok(Store {
            writer,
            reads: Reads::Sqlite(Arc::new(Mutex::new(reader))),
            backend: "sqlite",
            commit_seconds,
        })
    }

    /// Connects to (creating and migrating the schema of) a PostgreSQL store. Blocks until
    /// the database answers or the settings' connect timeout passes; call it off the async
    /// workers.
    pub fn open_postgres(settings: &PostgresSettings) -> Result<Store, StoreError> {
        let commit_seconds = commit_histogram();
        let (writer, reader) = postgres::open(settings, commit_seconds.clone())?;
        Ok(Store {
            writer,
            reads: Reads::Postgres(reader),
            backend: "postgres",
            commit_seconds,
        })
    }

    /// Opens whichever store `location` names.
    pub fn open_at(location: &StoreLocation) -> Result<Store, StoreError> {
        match location {
            StoreLocation::Sqlite(path) => Store::open(path),
            StoreLocation::Postgres(settings) => Store::open_postgres(settings),
        }
    }

    /// "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The histogram of the writer's transaction times (shared: observations made after this
    /// call show in it).
    pub fn commit_seconds(&self) -> Histogram {
        self.commit_seconds.clone()
    }

    // --- The leader lease (PostgreSQL only; see `crate::leader`).

    /// Takes the leader lease for `holder` (unique per process) for `length`, by the
    /// database's clock: a new epoch when it was free or expired, the same one when `holder`
    /// still holds it; `address` is where agents and operators reach it. `None` while another
    /// holder's lease is valid.
    pub async fn take_lease(
        &self,
        holder: String,
        address: String,
        length: std::time::Duration,
    ) -> Result<Option<i64>, StoreError> {
        match &self.reads {
            Reads::Sqlite(_) => Err(StoreError::Unsupported("the leader lease")),
            Reads::Postgres(reader) => reader.take_lease(holder, address, length).await,
        }
    }

    /// Who holds the leader lease now, by the database's clock (PostgreSQL only).
    pub async fn leader(&self) -> Result<LeaseHolder, StoreError> {
        match &self.reads {
            Reads::Sqlite(_) => Err(StoreError::Unsupported("the leader lease")),
            Reads::Postgres(reader) => reader.leader().await,
        }
    }

    /// Whether several coordinators may share this store (PostgreSQL), so that leadership is
    /// decided by the lease; the SQLite file belongs to one coordinator.
    pub fn is_shared(&self) -> bool {
        matches!(self.reads, Reads::Postgres(_))
    }

    /// Extends `holder`'s lease at `epoch`; false when it expired or a newer leader took it.
    pub async fn renew_lease(
        &self,
        holder: String,
        epoch: i64,
        length: std::time::Duration,
    ) -> Result<bool, StoreError> {
        match &self.reads {
            Reads::Sqlite(_) => Err(StoreError::Unsupported("the leader lease")),
            Reads::Postgres(reader) => reader.renew_lease(holder, epoch, length).await,
        }
    }

    /// Fences every later write: each transaction checks, in the database and under a lock on
    /// the lease row, that the lease still carries `epoch`, and fails with
    /// [`StoreError::Fenced`] (writing nothing) once a newer leader took it.
    pub fn fence(&self, epoch: i64) -> Result<(), StoreError> {
        match &self.reads {
            Reads::Sqlite(_) => Err(StoreError::Unsupported("fencing")),
            Reads::Postgres(reader) => {
                reader.fence(epoch);
                Ok(())
            }
        }
    }

    // --- The plumbing every operation goes through.

    /// Runs `f` in the writer's next transaction and returns its result once that transaction
    /// is durable. If `f` fails, its own changes are rolled back and the others' are kept.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.submit(f, move |result| {
            let _ = tx.send(result);
        })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Queues `f` and calls `done` with its outcome once the transaction carrying it has
    /// committed (or failed). For writes nobody waits on (events, facts, last-seen times).
    pub(crate) fn submit<T, F, D>(&self, f: F, done: D) -> Result<(), StoreError>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<T, StoreError>> + Send + 'static,
        D: FnOnce(Result<T, StoreError>) + Send + 'static,
    {
        let slot: Arc<Mutex<Option<Result<T, StoreError>>>> = Arc::new(Mutex::new(None));
        let filled = slot.clone();
        let job = Job {
            run: Box::new(move |tx| {
                Box::pin(async move {
                    let result = f(tx).await;
                    let keep = result.is_ok();
                    *filled.lock() = Some(result);
                    keep
                })
            }),
            finish: Box::new(move |commit| {
                let result = slot.lock().take();
                done(match (commit, result) {
                    (Ok(()), Some(result)) => result,
                    (Err(error), _) => Err(error),
                    (Ok(()), None) => Err(StoreError::WriterGone),
                })
            }),
        };
        self.writer.send(job).map_err(|_| StoreError::WriterGone)
    }

    /// Runs a read off the async workers: SQLite's on the blocking pool (inline when there is
    /// no tokio runtime: a caller that may block), PostgreSQL's on its own runtime.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<T, StoreError>> + Send + 'static,
    {
        match &self.reads {
            Reads::Sqlite(reader) => {
                let reader = reader.clone();
                let run = move || sqlite::run_now(&mut reader.lock(), f);
                if tokio::runtime::Handle::try_current().is_ok() {
                    tokio::task::spawn_blocking(run)
                        .await
                        .map_err(|e| StoreError::Sql(format!("a read task failed: {e}")))?
                } else {
                    run()
                }
            }
            Reads::Postgres(reader) => reader.read(f).await,
        }
    }

    // --- Join tokens and enrollment.

    pub async fn create_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        self.write(move |tx| Box::pin(async move { tx.insert_token(&token).await }))
            .await
    }

    /// Every token, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(|tx| tx.list_tokens()).await
    }

    /// Revokes a token; returns it, or None when no token has that id.
    pub async fn revoke_token(&self, id: String) -> Result<Option<TokenRecord>, StoreError> {
        self.write(move |tx| {
            Box::pin(async move {
                tx.revoke_token(&id).await?;
                tx.token_by_id(&id).await
            })
        })
        .await
    }

    /// Uses one use of the token with this hash, or says why it cannot be used.
    pub async fn redeem_token(
        &self,
        hash: String,
        now_ms: i64,
    ) -> Result<Result<TokenRecord, TokenRefusal>, StoreError> {
        self.write(move |tx| Box::pin(async move { tokens::redeem(tx, &hash, now_ms).await }))
            .await
    }

    /// An enrollment in one transaction: the token's checks and use, the host's checks and
    /// its record (see [`hosts::enroll`]).
    pub async fn enroll(
        &self,
        enrollment: HostEnrollment,
    ) -> Result<Result<Enrolled, EnrollRefusal>, StoreError> {
        self.write(move |tx| Box::pin(async move { hosts::enroll(tx, &enrollment).await }))
            .await
    }

    // --- Hosts.

    pub async fn host(&self, host_id: String) -> Result<Option<HostRecord>, StoreError> {
        self.read(move |tx| Box::pin(async move { tx.host(&host_id).await }))
            .await
    }

    /// A host by id, else by enrolled hostname, else the newest removed host of that name,
    /// else (with `prefix_limit`) at most that many enrolled hosts whose id starts with it.
    pub async fn find_host(
        &self,
        name: String,
        prefix_limit: Option<u32>,
    ) -> Result<HostLookup, StoreError> {
        self.read(move |tx| Box::pin(async move { hosts::find(tx, &name, prefix_limit).await }))
            .await
    }

    /// Enrolled hosts whose id starts with `prefix`, at most `limit`, by id (one index lookup).
    pub async fn hosts_by_id_prefix(
        &self,
        prefix: String,
        limit: u32,
    ) -> Result<Vec<HostRecord>, StoreError> {
        self.read(move |tx| Box::pin(async move { tx.hosts_by_id_prefix(&prefix, limit).await }))
            .await
    }

    /// One page of hosts (see [`HostFilter`]).
    pub async fn list_hosts(&self, filter: HostFilter) -> Result<Vec<HostRecord>, StoreError> {
        self.read(move |tx| Box::pin(async move { tx.list_hosts(&filter).await }))
            .await
    }

    /// Keeps a host's latest facts (no one waits on it; a failure is logged).
    pub fn store_facts(&self, host_id: String, facts: Vec<u8>, now_ms: i64) {
        let submitted = self.submit(
            move |tx| Box::pin(async move { tx.set_facts(&host_id, &facts, now_ms).await }),
            |stored: Result<(), StoreError>| {
                if let Err(error) = stored {
                    tracing::warn!(message = "cannot store a host's facts", %error);
                }
            },
        );
        if let Err(error) = submitted {
            tracing::warn!(message = "cannot store a host's facts", %error);
        }
    }

    /// Records when hosts were last seen, many at once; returns once durable.
    pub async fn set_last_seen(&self, seen: Vec<(String, i64)>) -> Result<(), StoreError> {
        self.write(move |tx| Box::pin(async move { tx.set_last_seen(&seen).await }))
            .await
    }

    /// Like [`Store::set_last_seen`] without waiting (a session's end).
    pub fn record_last_seen(&self, seen: Vec<(String, i64)>) {
        let _ = self.submit(
            move |tx| Box::pin(async move { tx.set_last_seen(&seen).await }),
            |stored: Result<(), StoreError>| {
                if let Err(error) = stored {
                    tracing::warn!(message = "cannot record when a host was last seen", %error);
                }
            },
        );
    }

    /// Records a renewed certificate, accepted beside the current one until first used.
    pub async fn set_pending_serial(
        &self,
        host_id: String,
        serial: String,
    ) -> Result<(), StoreError> {
        self.write(move |tx| {
            Box::pin(async move { tx.set_pending_serial(&host_id, &serial).await })
        })
        .await
    }

    /// The renewed certificate was used: it becomes the only one. False when `serial` was
    /// not (or no longer) the pending one.
    pub async fn promote_pending_serial(
        &self,
        host_id: String,
        serial: String,
    ) -> Result<bool, StoreError> {
        self.write(move |tx| {
            Box::pin(async move { tx.promote_pending_serial(&host_id, &serial).await })
        })
        .await
    }

    // --- Operators.

    /// Every operator certificate, by name then age.
    pub async fn list_operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        self.read(|tx| tx.list_operators()).await
    }

    /// Registers certificates without checks (`init`'s first admin, the upgrade of a fleet
    /// made before roles).
    pub async fn register_operators(
        &self,
        records: Vec<OperatorRecord>,
        audit: Option<EventRecord>,
    ) -> Result<(), StoreError> {
        self.write(move |tx| {
            Box::pin(async move {
                for record in &records {
                    tx.insert_operator(record).await?;
                }
                if let Some(event) = &audit {
                    tx.append_event(event).await?;
                }
                Ok(())
            })
        })
        .await
    }

    /// `pitcrew operator add`, checked in the transaction that stores it (see
    /// [`operators::add`]).
    pub async fn add_operator(
        &self,
        caller: OperatorCaller,
        record: OperatorRecord,
    ) -> Result<Result<(), OperatorRefusal>, StoreError> {
        self.write(move |tx| Box::pin(async move { operators::add(tx, &caller, &record).await }))
            .await
    }

    /// `pitcrew operator renew`: refused if the caller was revoked meanwhile.
    pub async fn renew_operator(
        &self,
        caller: OperatorCaller,
        record: OperatorRecord,
    ) -> Result<Result<(), OperatorRefusal>, StoreError> {
        self.write(move |tx| Box::pin(async move { operators::renew(tx, &caller, &record).await }))
            .await
    }

    /// `pitcrew operator revoke`: every certificate of `name` (see [`operators::revoke`]).
    pub async fn revoke_operator(
        &self,
        caller: OperatorCaller,
        name: String,
    ) -> Result<Result<Vec<OperatorRecord>, OperatorRefusal>, StoreError> {
        self.write(move |tx| Box::pin(async move { operators::revoke(tx, &caller, &name).await }))
            .await
    }

    // --- The event log.

    /// Appends one event without waiting; `done` gets it with its id once durable.
    pub fn append_event(
        &self,
        event: EventRecord,
        done: impl FnOnce(Result<EventRecord, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.submit(
            move |tx| {
                Box::pin(async move {
                    let id = tx.append_event(&event).await?;
                    Ok(EventRecord { id, ..event })
                })
            },
            done,
        )
    }

    /// Events matching the filter, oldest first (see [`EventFilter`]).
    pub async fn list_events(&self, filter: EventFilter) -> Result<Vec<EventRecord>, StoreError> {
        self.read(move |tx| Box::pin(async move { tx.list_events(&filter).await }))
            .await
    }

    /// Deletes events older than `before_ms`, and the oldest beyond the newest `keep`.
    pub async fn prune_events(&self, before_ms: i64, keep: u64) -> Result<u64, StoreError> {
        self.write(move |tx| tx.prune_events(before_ms, keep)).await
    }

    // --- Webhook deliveries.

    /// Every pending delivery, oldest first (read once, when the notifier starts).
    pub async fn pending_deliveries(&self) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.read(|tx| tx.pending_deliveries()).await
    }

    /// Deliveries matching the filter, newest first (see [`DeliveryFilter`]).
    pub async fn list_deliveries(
        &self,
        filter: DeliveryFilter,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.read(move |tx| Box::pin(async move { tx.list_deliveries(&filter).await }))
            .await
    }

    /// Records an attempt's outcome; returns once durable.
    pub async fn record_delivery(&self, delivery: DeliveryRecord) -> Result<(), StoreError> {
        self.write(move |tx| Box::pin(async move { tx.update_delivery(&delivery).await }))
            .await
    }

    /// Deletes delivered and failed deliveries made before `before_ms`.
    pub async fn prune_deliveries(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.write(move |tx| tx.prune_deliveries(before_ms)).await
    }

    // --- Actions.

    pub async fn action(&self, action_id: String) -> Result<Option<ActionRecord>, StoreError> {
        self.read(move |tx| Box::pin(async move { tx.action(&action_id).await }))
            .await
    }

    /// Actions sent to a host that have no result yet (re-sent after a reconnect or restart).
    pub async fn unfinished_actions(
        &self,
        host_id: String,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        self.read(move |tx| Box::pin(async move { tx.unfinished_actions(&host_id).await }))
            .await
    }

    /// Records an operator's action before it is sent. When the id is already recorded,
    /// nothing changes and the host it was recorded for is returned.
    pub async fn record_action(&self, record: ActionRecord) -> Result<Option<String>, StoreError> {
        self.write(move |tx| {
            Box::pin(async move {
                if let Some(existing) = tx.action(&record.action_id).await? {
                    return Ok(Some(existing.host_id));
                }
                tx.insert_action(&record).await?;
                Ok(None)
            })
        })
        .await
    }

    // --- The engine.

    /// What the engine reads once, at start.
    pub async fn load_fleet(&self) -> Result<StoredFleet, StoreError> {
        self.read(|tx| {
            Box::pin(async move {
                let hosts = tx.list_hosts(&HostFilter::default()).await?;
                let manual = tx.load_manual().await?;
                let campaigns = campaigns::load_all(tx).await?;
                let schedules = tx.load_schedules().await?;
                let archived_successes = tx.load_successes().await?;
                Ok(StoredFleet {
                    hosts,
                    manual,
                    campaigns,
                    schedules,
                    archived_successes,
                })
            })
        })
        .await
    }

    /// One run as stored, archived or not (for `campaign show` of a run the engine no
    /// longer holds), and whether it is archived.
    pub async fn load_run(&self, id: String) -> Result<Option<(CampaignRecord, bool)>, StoreError> {
        self.read(move |tx| {
            Box::pin(async move {
                match tx.load_run(&id).await? {
                    None => Ok(None),
                    Some((stored, archived)) => Ok(Some((schedules::assemble(stored)?, archived))),
                }
            })
        })
        .await
    }

    /// Archived runs, newest first.
    pub async fn list_archived(
        &self,
        filter: ArchiveFilter,
    ) -> Result<Vec<ArchivedRow>, StoreError> {
        self.read(move |tx| Box::pin(async move { tx.list_archived(&filter).await }))
            .await
    }

    /// The stored results of these actions (those that have one).
    pub async fn action_results(
        &self,
        action_ids: Vec<String>,
    ) -> Result<HashMap<String, Vec<u8>>, StoreError> {
        self.read(move |tx| {
            Box::pin(async move {
                let mut out = HashMap::new();
                for id in action_ids {
                    if let Some(result) = tx.action(&id).await?.and_then(|a| a.result) {
                        out.insert(id, result);
                    }
                }
                Ok(out)
            })
        })
        .await
    }

    /// Commits one engine turn's writes in one transaction; returns its events with their
    /// ids once durable (the write-ahead invariant waits on this).
    pub async fn commit_turn(&self, writes: TurnWrites) -> Result<Vec<EventRecord>, StoreError> {
        self.write(move |tx| Box::pin(async move { writes.apply(tx).await }))
            .await
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
