//! What a backend must provide: the row operations of every table family inside one
//! transaction ([`Tx`]), the transaction's own control ([`Conn`]), and the group commit both
//! backends share ([`commit_batch`]).
//!
//! Every compound operation of the store (an enrollment's checks and writes, an operator's,
//! a turn of the engine) is written once, against `&mut dyn Tx`, and runs unchanged on SQLite
//! and PostgreSQL. A backend only says how each row operation is done in its SQL.
//!
//! The methods return boxed futures so the trait stays object-safe. SQLite's are ready at
//! once (its writer thread and readers run them with a local executor, off the async workers);
//! PostgreSQL's do their I/O on the backend's own runtime.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use pitcrew_scheduler::ManualState;
use prometheus_client::metrics::histogram::Histogram;

use super::schedules::{ArchiveFilter, ArchivedRow, ArchivedRun, ScheduleRecord, SuccessRow};
use super::{
    ActionRecord, CampaignHostRow, DeliveryFilter, DeliveryRecord, EventFilter, EventRecord,
    HostFilter, HostRecord, OperatorRecord, StoreError, TokenRecord,
};

/// What a row operation returns.
pub(crate) type TxFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// A new run's rows, ready to insert: the JSON is made once, by backend-neutral code
/// (`campaigns.rs`), so both backends store the same text.
#[derive(Debug, Clone)]
pub(crate) struct NewRunRows {
    pub id: String,
    pub name: String,
    pub spec_toml: String,
    pub spec_json: String,
    pub header_json: String,
    pub created_at_ms: i64,
    pub created_by: String,
    /// (position, host id, steps JSON, progress JSON), in the run's order.
    pub hosts: Vec<(i64, String, String, String)>,
}

/// A run's rows as stored, for `campaigns.rs` to reassemble.
#[derive(Debug, Clone)]
pub(crate) struct StoredRun {
    pub id: String,
    pub spec_toml: String,
    pub spec_json: String,
    pub header_json: String,
    pub created_by: String,
    /// (host id, steps JSON, progress JSON), by position.
    pub hosts: Vec<(String, String, String)>,
}

/// The row operations of every table family, inside the transaction (or read) at hand.
pub(crate) trait Tx: Send {
    // Join tokens (only their hashes are stored).
    fn insert_token<'a>(&'a mut self, token: &'a TokenRecord) -> TxFuture<'a, ()>;
    /// Every token, oldest first.
    fn list_tokens(&mut self) -> TxFuture<'_, Vec<TokenRecord>>;
    fn token_by_hash<'a>(&'a mut self, hash: &'a str) -> TxFuture<'a, Option<TokenRecord>>;
    fn token_by_id<'a>(&'a mut self, id: &'a str) -> TxFuture<'a, Option<TokenRecord>>;
    /// Spends one use; false when none was left.
    fn use_token<'a>(&'a mut self, id: &'a str) -> TxFuture<'a, bool>;
    fn revoke_token<'a>(&'a mut self, id: &'a str) -> TxFuture<'a, ()>;

    // The host registry.
    /// Records a (re-)enrolled host: a re-enrollment replaces the accepted serial, clears a
    /// pending one and the removal mark, and keeps facts and last-seen.
    fn upsert_host<'a>(&'a mut self, host: &'a HostRecord) -> TxFuture<'a, ()>;
    fn set_pending_serial<'a>(&'a mut self, host_id: &'a str, serial: &'a str) -> TxFuture<'a, ()>;
    /// The pending serial becomes the only one accepted; false when `serial` is not it.
    fn promote_pending_serial<'a>(
        &'a mut self,
        host_id: &'a str,
        serial: &'a str,
    ) -> TxFuture<'a, bool>;
    fn host<'a>(&'a mut self, host_id: &'a str) -> TxFuture<'a, Option<HostRecord>>;
    /// Enrolled (not removed) hosts with this hostname, at most two.
    fn hosts_by_hostname<'a>(&'a mut self, hostname: &'a str) -> TxFuture<'a, Vec<HostRecord>>;
    /// Enrolled (not removed) hosts whose id starts with `prefix`, at most `limit`, by id: a
    /// range on the primary key, so one index lookup whatever the size of the fleet.
    fn hosts_by_id_prefix<'a>(
        &'a mut self,
        prefix: &'a str,
        limit: u32,
    ) -> TxFuture<'a, Vec<HostRecord>>;
    /// The most recently removed host with this hostname.
    fn removed_host_by_hostname<'a>(
        &'a mut self,
        hostname: &'a str,
    ) -> TxFuture<'a, Option<HostRecord>>;
    /// Marks a host removed and clears both its serials.
    fn mark_host_removed<'a>(&'a mut self, host_id: &'a str, at_ms: i64) -> TxFuture<'a, ()>;
    fn set_host_role_labels<'a>(
        &'a mut self,
        host_id: &'a str,
        role: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> TxFuture<'a, ()>;
    /// One page in (hostname, host_id) byte order (see [`HostFilter`]).
    fn list_hosts<'a>(&'a mut self, filter: &'a HostFilter) -> TxFuture<'a, Vec<HostRecord>>;
    fn set_facts<'a>(
        &'a mut self,
        host_id: &'a str,
        facts: &'a [u8],
        now_ms: i64,
    ) -> TxFuture<'a, ()>;
    /// Last-seen times only move forward.
    fn set_last_seen<'a>(&'a mut self, seen: &'a [(String, i64)]) -> TxFuture<'a, ()>;

    // Operators' certificates.
    fn insert_operator<'a>(&'a mut self, record: &'a OperatorRecord) -> TxFuture<'a, ()>;
    /// Every certificate, by name, age and serial.
    fn list_operators(&mut self) -> TxFuture<'_, Vec<OperatorRecord>>;
    fn operator<'a>(&'a mut self, serial: &'a str) -> TxFuture<'a, Option<OperatorRecord>>;
    /// Every certificate of `name`, oldest first.
    fn operators_by_name<'a>(&'a mut self, name: &'a str) -> TxFuture<'a, Vec<OperatorRecord>>;
    /// The role of `name`'s newest certificate valid at `now_ms`.
    fn active_role<'a>(&'a mut self, name: &'a str, now_ms: i64) -> TxFuture<'a, Option<String>>;
    /// How many names other than `except` hold a certificate with `role` valid at `now_ms`.
    fn count_active_names<'a>(
        &'a mut self,
        role: &'a str,
        except: &'a str,
        now_ms: i64,
    ) -> TxFuture<'a, u64>;
    fn revoke_operator_name<'a>(&'a mut self, name: &'a str) -> TxFuture<'a, ()>;

    // The event log.
    /// Appends one event; returns its id (ids only grow).
    fn append_event<'a>(&'a mut self, event: &'a EventRecord) -> TxFuture<'a, i64>;
    /// Deletes events older than `before_ms`, then all but the newest `keep`.
    fn prune_events(&mut self, before_ms: i64, keep: u64) -> TxFuture<'_, u64>;
    /// See [`EventFilter`]: oldest first.
    fn list_events<'a>(&'a mut self, filter: &'a EventFilter) -> TxFuture<'a, Vec<EventRecord>>;

    // Actions.
    /// Records an action; recording an id again keeps the first record.
    fn insert_action<'a>(&'a mut self, action: &'a ActionRecord) -> TxFuture<'a, ()>;
    /// Stores a final result; false when the action already had one.
    fn finish_action<'a>(&'a mut self, action_id: &'a str, result: &'a [u8]) -> TxFuture<'a, bool>;
    fn action<'a>(&'a mut self, action_id: &'a str) -> TxFuture<'a, Option<ActionRecord>>;
    /// Actions of a host without a result, oldest first.
    fn unfinished_actions<'a>(&'a mut self, host_id: &'a str) -> TxFuture<'a, Vec<ActionRecord>>;

    // Campaign runs and manual maintenance.
    fn insert_run<'a>(&'a mut self, run: &'a NewRunRows) -> TxFuture<'a, ()>;
    /// Rewrites a run's header; false when the run has no row.
    fn put_header<'a>(
        &'a mut self,
        campaign_id: &'a str,
        header_json: &'a str,
    ) -> TxFuture<'a, bool>;
    /// Rewrites one host's progress; false when it has no row.
    fn put_campaign_host<'a>(&'a mut self, row: &'a CampaignHostRow) -> TxFuture<'a, bool>;
    /// Every run, oldest first, with its hosts by position.
    fn load_runs(&mut self) -> TxFuture<'_, Vec<StoredRun>>;
    fn put_manual<'a>(
        &'a mut self,
        host_id: &'a str,
        state: Option<&'a ManualState>,
    ) -> TxFuture<'a, ()>;
    fn load_manual(&mut self) -> TxFuture<'_, BTreeMap<String, ManualState>>;

    // Schedules and the archive of old runs (`schedules.rs`).
    /// Writes a schedule, replacing the row of the same name.
    fn put_schedule<'a>(&'a mut self, schedule: &'a ScheduleRecord) -> TxFuture<'a, ()>;
    fn delete_schedule<'a>(&'a mut self, name: &'a str) -> TxFuture<'a, ()>;
    /// Every schedule, by name.
    fn load_schedules(&mut self) -> TxFuture<'_, Vec<ScheduleRecord>>;
    /// Marks a run archived with its summary and folds its hosts' successes in.
    fn archive_run<'a>(&'a mut self, run: &'a ArchivedRun) -> TxFuture<'a, ()>;
    /// One run, archived or not, with its hosts; and whether it is archived.
    fn load_run<'a>(&'a mut self, id: &'a str) -> TxFuture<'a, Option<(StoredRun, bool)>>;
    /// Archived runs, newest first (see [`ArchiveFilter`]).
    fn list_archived<'a>(&'a mut self, filter: &'a ArchiveFilter)
    -> TxFuture<'a, Vec<ArchivedRow>>;
    /// Every archived success, one per host and campaign name.
    fn load_successes(&mut self) -> TxFuture<'_, Vec<SuccessRow>>;
    // Webhook deliveries.
    /// Records a delivery; recording the same (id, webhook) again keeps the first record.
    fn insert_delivery<'a>(&'a mut self, delivery: &'a DeliveryRecord) -> TxFuture<'a, ()>;
    /// Rewrites what an attempt changes: attempts, state, last error, next attempt, delivery
    /// time.
    fn update_delivery<'a>(&'a mut self, delivery: &'a DeliveryRecord) -> TxFuture<'a, ()>;
    /// Every pending delivery, oldest first (the notifier's work after a restart).
    fn pending_deliveries(&mut self) -> TxFuture<'_, Vec<DeliveryRecord>>;
    /// See [`DeliveryFilter`]: newest first.
    fn list_deliveries<'a>(
        &'a mut self,
        filter: &'a DeliveryFilter,
    ) -> TxFuture<'a, Vec<DeliveryRecord>>;
    /// Deletes finished (delivered or failed) deliveries made before `before_ms`.
    fn prune_deliveries(&mut self, before_ms: i64) -> TxFuture<'_, u64>;
}

/// A backend's connection as the writer drives it: transaction control around the jobs.
pub(crate) trait Conn: Tx {
    /// Starts the batch's transaction. (Where a fencing check would go: it is the first
    /// statement of every write-ahead commit.)
    fn begin(&mut self) -> TxFuture<'_, ()>;
    fn commit(&mut self) -> TxFuture<'_, ()>;
    fn rollback(&mut self) -> TxFuture<'_, ()>;
    fn savepoint(&mut self) -> TxFuture<'_, ()>;
    fn release_savepoint(&mut self) -> TxFuture<'_, ()>;
    fn rollback_to_savepoint(&mut self) -> TxFuture<'_, ()>;
}

/// A job's work inside the transaction; true when its savepoint is kept.
pub(crate) type JobWork = Box<dyn for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, bool> + Send>;

/// One queued write: its work inside the transaction (returning whether its savepoint is
/// kept), and what to do once the transaction's fate is known.
pub(crate) struct Job {
    pub run: JobWork,
    pub finish: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

/// The most jobs one transaction carries; a bound on how long one commit can take.
pub(crate) const MAX_JOBS_PER_COMMIT: usize = 4096;

/// Group commit: runs every job of the batch in its own savepoint inside one transaction (a
/// failing job loses only its own changes), commits once, and only then tells each job.
/// Observes in `commits` how long the transaction took, from BEGIN to the end of COMMIT (its
/// fsync included). Returns the transaction's outcome (the jobs have been told it).
pub(crate) async fn commit_batch(
    conn: &mut dyn Conn,
    batch: Vec<Job>,
    commits: &Histogram,
) -> Result<(), StoreError> {
    let (runs, finishes): (Vec<_>, Vec<_>) = batch.into_iter().map(|j| (j.run, j.finish)).unzip();
    let began = std::time::Instant::now();
    let outcome = async {
        conn.begin().await?;
        for run in runs {
            conn.savepoint().await?;
            let keep = run(conn).await;
            if !keep {
                conn.rollback_to_savepoint().await?;
            }
            conn.release_savepoint().await?;
        }
        conn.commit().await
    }
    .await;
    commits.observe(began.elapsed().as_secs_f64());
    if let Err(error) = &outcome {
        // Whatever state the transaction is in, end it; the caller also drops a connection
        // that may be broken.
        let _ = conn.rollback().await;
        tracing::error!(message = "a store transaction failed; its writes are lost", %error);
    }
    for finish in finishes {
        finish(outcome.clone());
    }
    outcome
}

/// Fails jobs that could not even be started (no connection), telling each why.
pub(crate) fn fail_batch(batch: Vec<Job>, error: &StoreError) {
    tracing::error!(message = "a store transaction could not start; its writes are lost", %error);
    for job in batch {
        (job.finish)(Err(error.clone()));
    }
}
