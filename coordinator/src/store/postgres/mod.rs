//! The PostgreSQL backend (`[store] postgres_url`): the same tables and the same group commit
//! as SQLite, on a database the operator runs.
//!
//! It lives on a runtime of its own (one thread, `pitcrew-store-pg`), so none of its work —
//! I/O, encoding rows, decoding a 10,000-host campaign at start — runs on the coordinator's
//! async workers, and a caller that may block (`init`, tests) can use it like SQLite. On it:
//! * **the writer**, one task: it takes every job queued, borrows one connection from the
//!   pool, and runs the batch as **one transaction** (`BEGIN`, a savepoint per job,
//!   `COMMIT`), answering each job only after `COMMIT` returned — PostgreSQL has made it
//!   durable then (`synchronous_commit` on, its default). A connection whose batch failed is
//!   never reused: it may be broken or still inside the failed transaction.
//! * **reads**, each a task on a pooled connection (at most [`POOL_SIZE`] connections in all).
//!
//! A lost connection is an error like any failed commit: the jobs of that batch learn it
//! ([`StoreError::Unavailable`]), and the next batch takes a fresh connection.
//!
//! The password never appears in a URL this backend accepts, nor in any message: see
//! [`PostgresSettings`].

mod deliveries;
mod schedules;
mod schema;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::future::BoxFuture;
use pitcrew_scheduler::ManualState;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::mpsc;
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;
use tokio_postgres::types::ToSql;

use super::schedules::{ArchiveFilter, ArchivedRow, ArchivedRun, ScheduleRecord, SuccessRow};
use super::tx::{Conn, Job, MAX_JOBS_PER_COMMIT, NewRunRows, StoredRun, Tx, TxFuture};
use super::{
    ActionRecord, CampaignHostRow, DeliveryFilter, DeliveryRecord, EventFilter, EventRecord,
    HostFilter, HostRecord, OperatorRecord, StoreError, TokenRecord, from_json, to_json,
};

/// Connections in the pool: the writer's and the reads'.
pub const POOL_SIZE: usize = 8;
/// How long the server lets one of the coordinator's transactions sit idle before ending it.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(5);
/// How long opening the store, or taking a connection, may wait for the database.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the PostgreSQL store is and how to log in. Its `Debug` and [`PostgresSettings::describe`]
/// never show the password.
#[derive(Clone)]
pub struct PostgresSettings {
    config: tokio_postgres::Config,
    /// How long to wait for the database when connecting.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("database", &self.describe())
            .field("password", &self.config.get_password().map(|_| "(set)"))
            .finish()
    }
}

impl PostgresSettings {
    /// Reads a PostgreSQL URL (`postgres://USER@HOST[:PORT]/DB[?options]`, or libpq's
    /// `key=value` form; a unix socket is a host that is a path, e.g. `host=/run/postgresql`)
    /// and the password from elsewhere (a file or the environment). A URL carrying a
    /// password is refused: it would end up in process listings, unit files and logs. The
    /// error never repeats the URL as given.
    pub fn new(url: &str, password: Option<String>) -> Result<PostgresSettings, String> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            format!("the PostgreSQL URL is not valid ({e}); expected postgres://USER@HOST[:PORT]/DATABASE")
        })?;
        if config.get_password().is_some() {
            let shown = describe(&config);
            return Err(format!(
                "the PostgreSQL URL {shown} carries a password; remove it from the URL and give it in \
                 [store] password_file or PITCREW_PG_PASSWORD"
            ));
        }
        if config.get_user().is_none() {
            return Err(format!(
                "the PostgreSQL URL {} names no user; write postgres://USER@HOST/DATABASE",
                describe(&config)
            ));
        }
        if config.get_hosts().is_empty() {
            return Err(
                "the PostgreSQL URL names no host (a name, an address or a socket directory)"
                    .into(),
            );
        }
        if let Some(password) = password {
            config.password(password.trim_end_matches(['\n', '\r']));
        }
        config.application_name("pitcrew-coordinator");
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        // A coordinator never leaves a transaction idle: one that is (a paused or cut-off
        // leader mid-commit) is ended by the server, so it cannot hold the lease row and keep
        // a new leader from taking over.
        let options = format!(
            "{} -c idle_in_transaction_session_timeout={}",
            config.get_options().unwrap_or_default(),
            IDLE_IN_TRANSACTION.as_millis()
        );
        config.options(options.trim_start());
        Ok(PostgresSettings {
            config,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        })
    }

    /// The database as logs and errors may name it: user, hosts, ports and database, never
    /// the password.
    pub fn describe(&self) -> String {
        describe(&self.config)
    }

    /// How every connection of the store logs in (tests connect beside the store with it).
    #[cfg(test)]
    pub(crate) fn connect_config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            match host {
                Host::Tcp(name) => format!("{name}{port}"),
                Host::Unix(path) => format!("[{}]{port}", path.display()),
            }
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// The backend's runtime; shut down (without waiting) when the store goes.
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Reads on the pool, run on the backend's runtime.
pub(crate) struct Reader {
    pool: Pool,
    handle: tokio::runtime::Handle,
    /// The epoch the writer's transactions must find in the lease (0: not fenced).
    fence: Arc<AtomicI64>,
    /// How to open the lease's own connection.
    config: tokio_postgres::Config,
    /// The connection the lease is taken and renewed on: its own, outside the pool and the
    /// store's runtime, so that a renewal never queues behind the store's work (a burst of
    /// new pool connections when agents reconnect, each a SCRAM exchange, or a long read).
    lease: Arc<tokio::sync::Mutex<Option<tokio_postgres::Client>>>,
    _runtime: Arc<Runtime>,
}

impl Reader {
    /// From the next batch on, every write transaction requires the lease at `epoch`.
    pub(crate) fn fence(&self, epoch: i64) {
        self.fence.store(epoch, Ordering::SeqCst);
    }

    /// Takes the leader lease if it is free or expired by the database's clock (a new epoch),
    /// or keeps it if `holder` holds it still (same epoch), recording `address` as where the
    /// leader is reached. None: another holder's lease is valid.
    pub(crate) async fn take_lease(
        &self,
        holder: String,
        address: String,
        length: Duration,
    ) -> Result<Option<i64>, StoreError> {
        let mut lease = self.lease_connection().await?;
        let client = lease.as_mut().expect("connected above");
        let tx = client.transaction().await.map_err(pg_error)?;
        // A leader's write in progress holds the row (FOR KEY SHARE) until it commits; never
        // wait for it longer than a lease (a stalled one is ended by the server's
        // idle-in-transaction timeout), and try again at the next attempt.
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{}ms'",
            length.as_millis().max(1)
        ))
        .await
        .map_err(pg_error)?;
        // Only a lease this holder may take is locked — FOR UPDATE, which waits for the old
        // leader's write in progress, so that none of its writes commits after the takeover.
        // A standby asking while the lease is valid locks nothing and so never delays the
        // leader's writes.
        let takeable = tx
            .query(
                "SELECT epoch FROM leader_lease
                 WHERE id = 1 AND (holder = $1 OR expires_at <= now()) FOR UPDATE",
                &[&holder],
            )
            .await
            .map_err(pg_error)?;
        if takeable.is_empty() {
            return Ok(None);
        }
        let rows = tx
            .query(
                "UPDATE leader_lease SET
                    epoch = CASE WHEN holder = $1 AND expires_at > now()
                                 THEN epoch ELSE epoch + 1 END,
                    holder = $1,
                    address = $3,
                    expires_at = now() + make_interval(secs => $2)
                 WHERE id = 1 AND (holder = $1 OR expires_at <= now())
                 RETURNING epoch",
                &[&holder, &length.as_secs_f64(), &address],
            )
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        rows.first().map(|r| get(r, "epoch")).transpose()
    }

    /// The lease's own connection, opened (again) when there is none or it broke. Driven on
    /// the caller's runtime, not the store's.
    async fn lease_connection(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<tokio_postgres::Client>>, StoreError> {
        let mut lease = self.lease.lock().await;
        if lease.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            let (client, connection) = self.config.connect(NoTls).await.map_err(pg_error)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(message = "store: the leader lease's connection ended", %error);
                }
            });
            *lease = Some(client);
        }
        Ok(lease)
    }

    /// Who holds the lease, by the database's clock.
    pub(crate) async fn leader(&self) -> Result<crate::store::LeaseHolder, StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_one(
                    "SELECT holder, address, epoch, expires_at > now() AS valid,
                            CASE WHEN expires_at > now()
                                 THEN CEIL(EXTRACT(EPOCH FROM expires_at - now()) * 1000)::bigint
                                 ELSE 0 END AS expires_in_ms
                     FROM leader_lease WHERE id = 1",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            Ok(crate::store::LeaseHolder {
                holder: get(&row, "holder")?,
                address: get(&row, "address")?,
                epoch: get(&row, "epoch")?,
                valid: get(&row, "valid")?,
                expires_in: std::time::Duration::from_millis(
                    u64::try_from(get::<i64>(&row, "expires_in_ms")?).unwrap_or_default(),
                ),
            })
        })
        .await
    }

    /// Extends the lease of `holder` at `epoch` if it has not expired; false: it is lost.
    pub(crate) async fn renew_lease(
        &self,
        holder: String,
        epoch: i64,
        length: Duration,
    ) -> Result<bool, StoreError> {
        let mut lease = self.lease_connection().await?;
        let client = lease.as_mut().expect("connected above");
        let tx = client.transaction().await.map_err(pg_error)?;
        // A renewal does not wait for the disk: a leader whose renewals queue behind fsyncs
        // on a busy server would step down for nothing. Losing one in a database crash only
        // ends the lease earlier than the leader thinks, and a takeover then (committed
        // durably, with a new epoch) fences the old leader's writes anyway.
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .await
            .map_err(pg_error)?;
        let changed = tx
            .execute(
                "UPDATE leader_lease SET expires_at = now() + make_interval(secs => $3)
                 WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > now()",
                &[&holder, &epoch, &length.as_secs_f64()],
            )
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(changed == 1)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.handle
            .spawn(work)
            .await
            .map_err(|e| StoreError::Sql(format!("a store task failed: {e}")))?
    }

    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<T, StoreError>> + Send + 'static,
    {
        let pool = self.pool.clone();
        self.handle
            .spawn(async move {
                let client = pool.get().await.map_err(pool_error)?;
                f(&mut PgTx {
                    client: &client,
                    fence: 0,
                })
                .await
            })
            .await
            .map_err(|e| StoreError::Sql(format!("a read task failed: {e}")))?
    }
}

fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    match error {
        deadpool_postgres::PoolError::Backend(error) => pg_error(error),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// A driver error as the store reports it: the server's own message (with its SQLSTATE) for
/// a statement it refused, "unreachable" for a connection that failed or was lost.
fn pg_error(error: tokio_postgres::Error) -> StoreError {
    if let Some(db) = error.as_db_error() {
        return StoreError::Sql(format!("{} ({})", db.message(), db.code().code()));
    }
    // The driver's text never holds the password; add the cause (e.g. the socket's error).
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_closed() || text.contains("connect") || text.contains("I/O") {
        StoreError::Unavailable(text)
    } else {
        StoreError::Sql(text)
    }
}

/// Connects, migrates the schema, and starts the writer; returns the writer's queue and the
/// readers. Blocks the calling thread (never an async worker: see `Store::open_postgres`).
pub(super) fn open(
    settings: &PostgresSettings,
    commits: Histogram,
) -> Result<(mpsc::UnboundedSender<Job>, Reader), StoreError> {
    let what = settings.describe();
    let fail = |reason: String| StoreError::Open {
        path: what.clone(),
        reason,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("pitcrew-store-pg")
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start the store's runtime: {e}")))?;
    let handle = runtime.handle().clone();
    let runtime = Arc::new(Runtime(Some(runtime)));
    let manager = Manager::from_config(
        settings.config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(settings.connect_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .build()
        .map_err(|e| fail(format!("cannot set up the connection pool: {e}")))?;
    // Connect and migrate on the store's runtime; this thread only waits for the answer.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let setup_pool = pool.clone();
    handle.spawn(async move {
        let outcome = async {
            let mut client = setup_pool.get().await.map_err(pool_error)?;
            schema::migrate(&mut client).await
        }
        .await;
        let _ = ready_tx.send(outcome);
    });
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(fail(error.to_string())),
        Err(_) => return Err(fail("the store's runtime stopped while connecting".into())),
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let fence = Arc::new(AtomicI64::new(0));
    handle.spawn(writer_loop(pool.clone(), rx, fence.clone(), commits));
    tracing::info!(message = "store: PostgreSQL", database = %what);
    Ok((
        tx,
        Reader {
            pool,
            handle,
            fence,
            config: settings.config.clone(),
            lease: Arc::new(tokio::sync::Mutex::new(None)),
            _runtime: runtime,
        },
    ))
}

/// The writer: group commit, one transaction per batch, until every sender is gone.
async fn writer_loop(
    pool: Pool,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    fence: Arc<AtomicI64>,
    commits: Histogram,
) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let client = match pool.get().await {
            Ok(client) => client,
            Err(error) => {
                super::tx::fail_batch(batch, &pool_error(error));
                continue;
            }
        };
        let mut conn = PgTx {
            client: &client,
            fence: fence.load(Ordering::SeqCst),
        };
        let outcome = super::tx::commit_batch(&mut conn, batch, &commits).await;
        if outcome.is_err() {
            // Possibly broken, or still inside the failed transaction: never reuse it.
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// A pooled connection as the row operations see it.
struct PgTx<'c> {
    client: &'c ClientWrapper,
    /// The lease epoch every transaction must find (0: not fenced).
    fence: i64,
}

type Params<'p> = [&'p (dyn ToSql + Sync)];

impl PgTx<'_> {
    async fn query(
        &self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let statement = self.client.prepare_cached(sql).await.map_err(pg_error)?;
        self.client
            .query(&statement, params)
            .await
            .map_err(pg_error)
    }

    /// A run's host rows (id, steps, progress), in run order: archived or not.
    pub(super) async fn run_hosts(
        &self,
        id: &str,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        self.query(
            "SELECT host_id, steps_json, progress_json FROM campaign_hosts
             WHERE campaign_id = $1 ORDER BY position",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| {
            Ok((
                get(r, "host_id")?,
                get(r, "steps_json")?,
                get(r, "progress_json")?,
            ))
        })
        .collect()
    }

    async fn execute(&self, sql: &str, params: &Params<'_>) -> Result<u64, StoreError> {
        let statement = self.client.prepare_cached(sql).await.map_err(pg_error)?;
        self.client
            .execute(&statement, params)
            .await
            .map_err(pg_error)
    }

    async fn control(&self, sql: &str) -> Result<(), StoreError> {
        self.client.batch_execute(sql).await.map_err(pg_error)
    }
}

/// A column, or a `Corrupt` error naming it.
fn get<'r, T: tokio_postgres::types::FromSql<'r>>(
    row: &'r tokio_postgres::Row,
    column: &str,
) -> Result<T, StoreError> {
    row.try_get(column)
        .map_err(|e| StoreError::Corrupt(format!("column {column}: {e}")))
}

fn get_u32(row: &tokio_postgres::Row, column: &str) -> Result<u32, StoreError> {
    let value: i64 = get(row, column)?;
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("column {column}: {value}")))
}

const TOKEN_COLUMNS: &str = "id, hash, role, labels, uses_left, uses_total, expires_at_ms, \
     revoked, created_at_ms, created_by, replace_host";

fn token_from_row(row: &tokio_postgres::Row) -> Result<TokenRecord, StoreError> {
    let labels: String = get(row, "labels")?;
    Ok(TokenRecord {
        id: get(row, "id")?,
        hash: get(row, "hash")?,
        role: get(row, "role")?,
        labels: from_json("token labels", &labels)?,
        uses_left: get_u32(row, "uses_left")?,
        uses_total: get_u32(row, "uses_total")?,
        expires_at_ms: get(row, "expires_at_ms")?,
        revoked: get(row, "revoked")?,
        created_at_ms: get(row, "created_at_ms")?,
        created_by: get(row, "created_by")?,
        replace_host: get(row, "replace_host")?,
    })
}

const HOST_COLUMNS: &str = "host_id, hostname, role, labels, cert_serial, enrolled_at_ms, \
     last_seen_ms, facts, pending_serial, removed_at_ms";

fn host_from_row(row: &tokio_postgres::Row) -> Result<HostRecord, StoreError> {
    let labels: String = get(row, "labels")?;
    Ok(HostRecord {
        host_id: get(row, "host_id")?,
        hostname: get(row, "hostname")?,
        role: get(row, "role")?,
        labels: from_json("host labels", &labels)?,
        cert_serial: get(row, "cert_serial")?,
        enrolled_at_ms: get(row, "enrolled_at_ms")?,
        last_seen_ms: get(row, "last_seen_ms")?,
        facts: get(row, "facts")?,
        pending_serial: get(row, "pending_serial")?,
        removed_at_ms: get(row, "removed_at_ms")?,
    })
}

const OPERATOR_COLUMNS: &str =
    "serial, name, role, not_after_ms, revoked, created_at_ms, created_by";

fn operator_from_row(row: &tokio_postgres::Row) -> Result<OperatorRecord, StoreError> {
    Ok(OperatorRecord {
        serial: get(row, "serial")?,
        name: get(row, "name")?,
        role: get(row, "role")?,
        not_after_ms: get(row, "not_after_ms")?,
        revoked: get(row, "revoked")?,
        created_at_ms: get(row, "created_at_ms")?,
        created_by: get(row, "created_by")?,
    })
}

fn event_from_row(row: &tokio_postgres::Row) -> Result<EventRecord, StoreError> {
    Ok(EventRecord {
        id: get(row, "id")?,
        at_ms: get(row, "at_ms")?,
        kind: get(row, "kind")?,
        host_id: get(row, "host_id")?,
        campaign_id: get(row, "campaign_id")?,
        step: get(row, "step")?,
        result: get(row, "result")?,
        message: get(row, "message")?,
        actor: get(row, "actor")?,
        hostname: get::<Option<String>>(row, "hostname")?.unwrap_or_default(),
    })
}

const ACTION_COLUMNS: &str = "action_id, host_id, campaign_id, request, result, created_at_ms";

fn action_from_row(row: &tokio_postgres::Row) -> Result<ActionRecord, StoreError> {
    Ok(ActionRecord {
        action_id: get(row, "action_id")?,
        host_id: get(row, "host_id")?,
        campaign_id: get(row, "campaign_id")?,
        request: get(row, "request")?,
        result: get(row, "result")?,
        created_at_ms: get(row, "created_at_ms")?,
    })
}

fn all<T>(
    rows: Vec<tokio_postgres::Row>,
    from_row: fn(&tokio_postgres::Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(from_row).collect()
}

fn first<T>(
    rows: Vec<tokio_postgres::Row>,
    from_row: fn(&tokio_postgres::Row) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    rows.first().map(from_row).transpose()
}

impl Tx for PgTx<'_> {
    fn insert_token<'a>(&'a mut self, t: &'a TokenRecord) -> TxFuture<'a, ()> {
        Box::pin(async move {
            let labels = to_json("token labels", &t.labels)?;
            let (uses_left, uses_total) = (i64::from(t.uses_left), i64::from(t.uses_total));
            self.execute(
                &format!(
                    "INSERT INTO tokens ({TOKEN_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                ),
                &[
                    &t.id,
                    &t.hash,
                    &t.role,
                    &labels,
                    &uses_left,
                    &uses_total,
                    &t.expires_at_ms,
                    &t.revoked,
                    &t.created_at_ms,
                    &t.created_by,
                    &t.replace_host,
                ],
            )
            .await
            .map(drop)
        })
    }

    fn list_tokens(&mut self) -> TxFuture<'_, Vec<TokenRecord>> {
        Box::pin(async move {
            let rows = self
                .query(
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at_ms, id"),
                    &[],
                )
                .await?;
            all(rows, token_from_row)
        })
    }

    fn token_by_hash<'a>(&'a mut self, hash: &'a str) -> TxFuture<'a, Option<TokenRecord>> {
        Box::pin(async move {
            let rows = self
                .query(
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1"),
                    &[&hash],
                )
                .await?;
            first(rows, token_from_row)
        })
    }

    fn token_by_id<'a>(&'a mut self, id: &'a str) -> TxFuture<'a, Option<TokenRecord>> {
        Box::pin(async move {
            let rows = self
                .query(
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1"),
                    &[&id],
                )
                .await?;
            first(rows, token_from_row)
        })
    }

    fn use_token<'a>(&'a mut self, id: &'a str) -> TxFuture<'a, bool> {
        Box::pin(async move {
            let changed = self
                .execute(
                    "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = $1 AND uses_left > 0",
                    &[&id],
                )
                .await?;
            Ok(changed > 0)
        })
    }

    fn revoke_token<'a>(&'a mut self, id: &'a str) -> TxFuture<'a, ()> {
        Box::pin(async move {
            self.execute("UPDATE tokens SET revoked = true WHERE id = $1", &[&id])
                .await
                .map(drop)
        })
    }

    fn upsert_host<'a>(&'a mut self, host: &'a HostRecord) -> TxFuture<'a, ()> {
        Box::pin(async move {
            let labels = to_json("host labels", &host.labels)?;
            self.execute(
                &format!(
                    "INSERT INTO hosts ({HOST_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '', 0)
                     ON CONFLICT (host_id) DO UPDATE SET hostname = excluded.hostname,
                        role = excluded.role, labels = excluded.labels,
                        cert_serial = excluded.cert_serial, pending_serial = '',
                        enrolled_at_ms = excluded.enrolled_at_ms, removed_at_ms = 0"
                ),
                &[
                    &host.host_id,
                    &host.hostname,
                    &host.role,
                    &labels,
                    &host.cert_serial,
                    &host.enrolled_at_ms,
                    &host.last_seen_ms,
                    &host.facts,
                ],
            )
            .await
            .map(drop)
        })
    }

    fn set_pending_serial<'a>(&'a mut self, host_id: &'a str, serial: &'a str) -> TxFuture<'a, ()> {
        Box::pin(async move {
            self.execute(
                "UPDATE hosts SET pending_serial = $2 WHERE host_id = $1",
                &[&host_id, &serial],
            )
            .await
            .map(drop)
        })
    }

    fn promote_pending_serial<'a>(
        &'a mut self,
        host_id: &'a str,
        serial: &'a str,
    ) -> TxFuture<'a, bool> {
        Box::pin(async move {
            let changed = self
                .execute(
                    "UPDATE hosts SET cert_serial = pending_serial, pending_serial = ''
                     WHERE host_id = $1 AND pending_serial = $2 AND $2 <> ''",
                    &[&host_id, &serial],
                )
                .await?;
            Ok(changed > 0)
        })
    }

    fn host<'a>(&'a mut self, host_id: &'a str) -> TxFuture<'a, Option<HostRecord>> {
        Box::pin(async move {
            let rows = self
                .query(
                    &format!("SELECT {HOST_COLUMNS} FROM hosts WHERE host_id = $1"),
                    &[&host_id],
                )
                .await?;
            first(rows, host_from_row)
        })
    }

    fn hosts_by_hostname<'a>(&'a mut self, hostname: &'a str) -> TxFuture<'a, Vec<HostRecord>> {
        Box::pin(async move {
            let rows = self
                .query(
                    &format!(
                        "SELECT {HOST_COLUMNS} FROM hosts
                         WHERE hostname = $1 AND removed_at_ms = 0 LIMIT 2"
                    ),
                    &[&hostname],
                )
                .await?;
            all(rows, host_from_row)
        })
    }

    fn hosts_by_id_prefix<'a>(
        &'a mut self,
        prefix: &'a str,
        limit: u32,
    ) -> TxFuture<'a, Vec<HostRecord>> {
        Box::pin(async move {
            let upper = super::hosts::id_prefix_end(prefix);
            let rows = self
                .query(
                    &format!(
                        "SELECT {HOST_COLUMNS} FROM hosts
                         WHERE host_id >= $1::text AND host_id < $2::text AND removed_at_ms = 0
                         ORDER BY host_id LIMIT $3"
                    ),
                    &[&prefix, &upper, &i64::from(limit)],
                )
                .await?;
            all(rows, host_from_row)
        })
    }

    fn removed_host_by_hostname<'a>(
        &'a mut self,
        hostname: &'a str,
    ) -> TxFuture<'a, Option<HostRecord>> {
        Box::pin(async move {
            let rows = self
                .query(
                    &format!(
                        "SELECT {HOST_COLUMNS} FROM hosts
                         WHERE hostname = $1 AND removed_at_ms <> 0
                         ORDER BY removed_at_ms DESC LIMIT 1"
                    ),
                    &[&hostname],
                )
                .await?;
            first(rows, host_from_row)
        })
    }

    fn mark_host_removed<'a>(&'a mut self, host_id: &'a str, at_ms: i64) -> TxFuture<'a, ()> {
        Box::pin(async move {
            self.execute(
                "UPDATE hosts SET removed_at_ms = $2, cert_serial = '', pending_serial = ''
                 WHERE host_id = $1",
                &[&host_id, &at_ms.max(1)],
            )
            .await
            .map(drop)
        })
    }

    fn set_host_role_labels<'a>(
        &'a mut self,
        host_id: &'a str,
        role: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            let labels = to_json("host labels", labels)?;
            self.execute(
                "UPDATE hosts SET role = $2, labels = $3 WHERE host_id = $1 AND removed_at_ms = 0",
                &[&host_id, &role, &labels],
            )
            .await
            .map(drop)
        })
    }

    fn list_hosts<'a>(&'a mut self, filter: &'a HostFilter) -> TxFuture<'a, Vec<HostRecord>> {
        Box::pin(async move {
            let (after_name, after_id) = filter.after.clone().unwrap_or_default();
            let has_after = filter.after.is_some();
            let (label_key, label_value) = match &filter.label {
                Some((k, v)) => (Some(k.clone()), Some(v.clone())),
                None => (None, None),
            };
            let limit = if filter.limit == 0 {
                i64::MAX
            } else {
                i64::from(filter.limit)
            };
            let rows = self
                .query(
                    &format!(
                        "SELECT {HOST_COLUMNS} FROM hosts
                         WHERE (NOT $1::boolean OR (hostname, host_id) > ($2::text, $3::text))
                           AND ($4::text IS NULL OR role = $4::text)
                           AND ($5::text IS NULL OR (labels::jsonb ->> $5::text) = $6::text)
                           AND ($8::boolean = (removed_at_ms <> 0))
                         ORDER BY hostname, host_id LIMIT $7"
                    ),
                    &[
                        &has_after,
                        &after_name,
                        &after_id,
                        &filter.role,
                        &label_key,
                        &label_value,
                        &limit,
                        &filter.removed,
                    ],
                )
                .await?;
            all(rows, host_from_row)
        })
    }

    fn set_facts<'a>(
        &'a mut self,
        host_id: &'a str,
        facts: &'a [u8],
        now_ms: i64,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            self.execute(
                "UPDATE hosts SET facts = $2, last_seen_ms = $3 WHERE host_id = $1",
                &[&host_id, &facts, &now_ms],
            )
            .await
            .map(drop)
        })
    }

    fn set_last_seen<'a>(&'a mut self, seen: &'a [(String, i64)]) -> TxFuture<'a, ()> {
        Box::pin(async move {
            // One statement for all of them, however many hosts.
            let ids: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
            let times: Vec<i64> = seen.iter().map(|(_, at)| *at).collect();
            self.execute(
                "UPDATE hosts h SET last_seen_ms = GREATEST(h.last_seen_ms, v.at_ms)
                 FROM unnest($1::text[], $2::bigint[]) AS v(host_id, at_ms)
                 WHERE h.host_id = v.host_id",
                &[&ids, &times],
            )
            .await
            .map(drop)
        })
    }

    fn insert_operator<'a>(&'a mut self, r: &'a OperatorRecord) -> TxFuture<'a, ()> {
        Box::pin(async move {
            self.execute(
                &format!(
                    "INSERT INTO operator_certs ({OPERATOR_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7)"
                ),
                &[
                    &r.serial,
                    &r.name,
                    &r.role,
                    &r.not_after_ms,
                    &r.revoked,
                    &r.created_at_ms,
                    &r.created_by,
                ],
            )
            .await
            .map(drop)
        })
    }

    fn list_operators(&mut self) -> TxFuture<'_, Vec<OperatorRecord>> {
        Box::pin(async move {
            let rows = self
                .query(
                    &format!(
                        "SELECT {OPERATOR_COLUMNS} FROM operator_certs
                         ORDER BY name, created_at_ms, serial"
                    ),
                    &[],
                )
                .await?;
            all(rows, operator_from_row)
        })
    }

    fn operator<'a>(&'a mut self, serial: &'a str) -> TxFuture<'a, Option<OperatorRecord>> {
        Box::pin(async move {
            let rows = self
                .query(
                    &format!("SELECT {OPERATOR_COLUMNS} FROM operator_certs WHERE serial = $1"),
                    &[&serial],
                )
                .await?;
            first(rows, operator_from_row)
        })
    }

    fn operators_by_name<'a>(&'a mut self, name: &'a str) -> TxFuture<'a, Vec<OperatorRecord>> {
        Box::pin(async move {
            let rows = self
                .query(
                    &format!(
                        "SELECT {OPERATOR_COLUMNS} FROM operator_certs WHERE name = $1
                         ORDER BY created_at_ms, serial"
                    ),
                    &[&name],
                )
                .await?;
            all(rows, operator_from_row)
        })
    }

    fn active_role<'a>(&'a mut self, name: &'a str, now_ms: i64) -> TxFuture<'a, Option<String>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "SELECT role FROM operator_certs
                     WHERE name = $1 AND NOT revoked AND not_after_ms > $2
                     ORDER BY created_at_ms DESC LIMIT 1",
                    &[&name, &now_ms],
                )
                .await?;
            rows.first().map(|r| get(r, "role")).transpose()
        })
    }

    fn count_active_names<'a>(
        &'a mut self,
        role: &'a str,
        except: &'a str,
        now_ms: i64,
    ) -> TxFuture<'a, u64> {
        Box::pin(async move {
            let rows = self
                .query(
                    "SELECT COUNT(DISTINCT name) AS n FROM operator_certs
                     WHERE role = $1 AND name <> $2 AND NOT revoked AND not_after_ms > $3",
                    &[&role, &except, &now_ms],
                )
                .await?;
            let n: i64 = rows.first().map(|r| get(r, "n")).transpose()?.unwrap_or(0);
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn revoke_operator_name<'a>(&'a mut self, name: &'a str) -> TxFuture<'a, ()> {
        Box::pin(async move {
            self.execute(
                "UPDATE operator_certs SET revoked = true WHERE name = $1",
                &[&name],
            )
            .await
            .map(drop)
        })
    }

    fn append_event<'a>(&'a mut self, e: &'a EventRecord) -> TxFuture<'a, i64> {
        Box::pin(async move {
            let rows = self
                .query(
                    "INSERT INTO events (at_ms, kind, host_id, campaign_id, step, result, message, actor)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                    &[
                        &e.at_ms,
                        &e.kind,
                        &e.host_id,
                        &e.campaign_id,
                        &e.step,
                        &e.result,
                        &e.message,
                        &e.actor,
                    ],
                )
                .await?;
            rows.first()
                .map(|r| get(r, "id"))
                .transpose()?
                .ok_or_else(|| StoreError::Corrupt("an inserted event has no id".into()))
        })
    }

    fn prune_events(&mut self, before_ms: i64, keep: u64) -> TxFuture<'_, u64> {
        Box::pin(async move {
            let mut deleted = self
                .execute("DELETE FROM events WHERE at_ms < $1", &[&before_ms])
                .await?;
            let keep = i64::try_from(keep).unwrap_or(i64::MAX);
            deleted += self
                .execute(
                    "DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - $1::bigint",
                    &[&keep],
                )
                .await?;
            Ok(deleted)
        })
    }

    fn list_events<'a>(&'a mut self, filter: &'a EventFilter) -> TxFuture<'a, Vec<EventRecord>> {
        Box::pin(async move {
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
            let rows = self
                .query(
                    "SELECT e.id, e.at_ms, e.kind, e.host_id, e.campaign_id, e.step, e.result,
                            e.message, e.actor, h.hostname
                     FROM events e LEFT JOIN hosts h ON h.host_id = e.host_id AND e.host_id <> ''
                     WHERE e.id > $1 AND e.id < $2
                       AND ($3::text IS NULL OR e.host_id = $3::text)
                       AND ($4::text IS NULL OR e.campaign_id = $4::text)
                     ORDER BY e.id DESC LIMIT $5",
                    &[
                        &filter.after_id,
                        &before,
                        &filter.host_id,
                        &filter.campaign_id,
                        &limit,
                    ],
                )
                .await?;
            let mut out = all(rows, event_from_row)?;
            out.reverse();
            Ok(out)
        })
    }

    fn insert_action<'a>(&'a mut self, a: &'a ActionRecord) -> TxFuture<'a, ()> {
        Box::pin(async move {
            self.execute(
                &format!(
                    "INSERT INTO actions ({ACTION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (action_id) DO NOTHING"
                ),
                &[
                    &a.action_id,
                    &a.host_id,
                    &a.campaign_id,
                    &a.request,
                    &a.result,
                    &a.created_at_ms,
                ],
            )
            .await
            .map(drop)
        })
    }

    fn finish_action<'a>(&'a mut self, action_id: &'a str, result: &'a [u8]) -> TxFuture<'a, bool> {
        Box::pin(async move {
            let changed = self
                .execute(
                    "UPDATE actions SET result = $2 WHERE action_id = $1 AND result IS NULL",
                    &[&action_id, &result],
                )
                .await?;
            Ok(changed > 0)
        })
    }

    fn action<'a>(&'a mut self, action_id: &'a str) -> TxFuture<'a, Option<ActionRecord>> {
        Box::pin(async move {
            let rows = self
                .query(
                    &format!("SELECT {ACTION_COLUMNS} FROM actions WHERE action_id = $1"),
                    &[&action_id],
                )
                .await?;
            first(rows, action_from_row)
        })
    }

    fn unfinished_actions<'a>(&'a mut self, host_id: &'a str) -> TxFuture<'a, Vec<ActionRecord>> {
        Box::pin(async move {
            let rows = self
                .query(
                    &format!(
                        "SELECT {ACTION_COLUMNS} FROM actions WHERE host_id = $1 AND result IS NULL
                         ORDER BY created_at_ms, action_id"
                    ),
                    &[&host_id],
                )
                .await?;
            all(rows, action_from_row)
        })
    }

    fn insert_run<'a>(&'a mut self, run: &'a NewRunRows) -> TxFuture<'a, ()> {
        Box::pin(async move {
            self.execute(
                "INSERT INTO campaign_runs (id, name, spec_toml, spec_json, header_json,
                                            created_at_ms, created_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &run.id,
                    &run.name,
                    &run.spec_toml,
                    &run.spec_json,
                    &run.header_json,
                    &run.created_at_ms,
                    &run.created_by,
                ],
            )
            .await?;
            // Every host in one statement: a 10,000-host run is one round trip, not 10,000.
            let positions: Vec<i64> = run.hosts.iter().map(|h| h.0).collect();
            let ids: Vec<&str> = run.hosts.iter().map(|h| h.1.as_str()).collect();
            let steps: Vec<&str> = run.hosts.iter().map(|h| h.2.as_str()).collect();
            let progress: Vec<&str> = run.hosts.iter().map(|h| h.3.as_str()).collect();
            self.execute(
                "INSERT INTO campaign_hosts (campaign_id, position, host_id, steps_json, progress_json)
                 SELECT $1, v.position, v.host_id, v.steps_json, v.progress_json
                 FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[])
                      AS v(position, host_id, steps_json, progress_json)",
                &[&run.id, &positions, &ids, &steps, &progress],
            )
            .await
            .map(drop)
        })
    }

    fn put_header<'a>(
        &'a mut self,
        campaign_id: &'a str,
        header_json: &'a str,
    ) -> TxFuture<'a, bool> {
        Box::pin(async move {
            let changed = self
                .execute(
                    "UPDATE campaign_runs SET header_json = $2 WHERE id = $1",
                    &[&campaign_id, &header_json],
                )
                .await?;
            Ok(changed > 0)
        })
    }

    fn put_campaign_host<'a>(&'a mut self, row: &'a CampaignHostRow) -> TxFuture<'a, bool> {
        Box::pin(async move {
            let changed = self
                .execute(
                    "UPDATE campaign_hosts SET progress_json = $3
                     WHERE campaign_id = $1 AND host_id = $2",
                    &[&row.campaign_id, &row.host_id, &row.progress_json],
                )
                .await?;
            Ok(changed > 0)
        })
    }

    fn load_runs(&mut self) -> TxFuture<'_, Vec<StoredRun>> {
        Box::pin(async move {
            let headers = self
                .query(
                    "SELECT id, spec_toml, spec_json, header_json, created_by FROM campaign_runs
                     WHERE archived_at_ms = 0 ORDER BY created_at_ms, id",
                    &[],
                )
                .await?;
            let mut runs = Vec::with_capacity(headers.len());
            for row in &headers {
                let id: String = get(row, "id")?;
                let hosts = self.run_hosts(&id).await?;
                runs.push(StoredRun {
                    id,
                    spec_toml: get(row, "spec_toml")?,
                    spec_json: get(row, "spec_json")?,
                    header_json: get(row, "header_json")?,
                    created_by: get(row, "created_by")?,
                    hosts,
                });
            }
            Ok(runs)
        })
    }

    fn put_manual<'a>(
        &'a mut self,
        host_id: &'a str,
        state: Option<&'a ManualState>,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            match state {
                Some(state) => {
                    let json = to_json("manual maintenance", state)?;
                    self.execute(
                        "INSERT INTO manual_maintenance (host_id, state_json) VALUES ($1, $2)
                         ON CONFLICT (host_id) DO UPDATE SET state_json = excluded.state_json",
                        &[&host_id, &json],
                    )
                    .await?
                }
                None => {
                    self.execute(
                        "DELETE FROM manual_maintenance WHERE host_id = $1",
                        &[&host_id],
                    )
                    .await?
                }
            };
            Ok(())
        })
    }

    fn load_manual(&mut self) -> TxFuture<'_, BTreeMap<String, ManualState>> {
        Box::pin(async move {
            let rows = self
                .query("SELECT host_id, state_json FROM manual_maintenance", &[])
                .await?;
            let mut out = BTreeMap::new();
            for row in &rows {
                let host: String = get(row, "host_id")?;
                let text: String = get(row, "state_json")?;
                let state = from_json(&format!("manual maintenance of {host}"), &text)?;
                out.insert(host, state);
            }
            Ok(out)
        })
    }

    fn put_schedule<'a>(&'a mut self, schedule: &'a ScheduleRecord) -> TxFuture<'a, ()> {
        Box::pin(self.put_schedule_now(schedule))
    }

    fn delete_schedule<'a>(&'a mut self, name: &'a str) -> TxFuture<'a, ()> {
        Box::pin(self.delete_schedule_now(name))
    }

    fn load_schedules(&mut self) -> TxFuture<'_, Vec<ScheduleRecord>> {
        Box::pin(self.load_schedules_now())
    }

    fn archive_run<'a>(&'a mut self, run: &'a ArchivedRun) -> TxFuture<'a, ()> {
        Box::pin(self.archive_run_now(run))
    }

    fn load_run<'a>(&'a mut self, id: &'a str) -> TxFuture<'a, Option<(StoredRun, bool)>> {
        Box::pin(self.load_run_now(id))
    }

    fn list_archived<'a>(
        &'a mut self,
        filter: &'a ArchiveFilter,
    ) -> TxFuture<'a, Vec<ArchivedRow>> {
        Box::pin(self.list_archived_now(filter))
    }

    fn load_successes(&mut self) -> TxFuture<'_, Vec<SuccessRow>> {
        Box::pin(self.load_successes_now())
    }

    fn insert_delivery<'a>(&'a mut self, delivery: &'a DeliveryRecord) -> TxFuture<'a, ()> {
        Box::pin(deliveries::insert(self, delivery))
    }

    fn update_delivery<'a>(&'a mut self, delivery: &'a DeliveryRecord) -> TxFuture<'a, ()> {
        Box::pin(deliveries::update(self, delivery))
    }

    fn pending_deliveries(&mut self) -> TxFuture<'_, Vec<DeliveryRecord>> {
        Box::pin(deliveries::pending(self))
    }

    fn list_deliveries<'a>(
        &'a mut self,
        filter: &'a DeliveryFilter,
    ) -> TxFuture<'a, Vec<DeliveryRecord>> {
        Box::pin(deliveries::list(self, filter))
    }

    fn prune_deliveries(&mut self, before_ms: i64) -> TxFuture<'_, u64> {
        Box::pin(deliveries::prune(self, before_ms))
    }
}

impl Conn for PgTx<'_> {
    fn begin(&mut self) -> TxFuture<'_, ()> {
        Box::pin(async move {
            self.control("BEGIN").await?;
            if self.fence == 0 {
                return Ok(());
            }
            // The fence: the lease row, locked (FOR KEY SHARE) until this transaction ends,
            // must still carry this leader's epoch. A takeover locks the row FOR UPDATE first,
            // which waits for this commit; once a newer epoch is committed, no batch of the
            // old leader commits. The leader's own renewals (a plain UPDATE of the expiry)
            // do not conflict with this lock, so they never wait behind a slow commit.
            let rows = self
                .query(
                    "SELECT epoch FROM leader_lease WHERE id = 1 FOR KEY SHARE",
                    &[],
                )
                .await?;
            let current: i64 = rows
                .first()
                .map(|r| get(r, "epoch"))
                .transpose()?
                .unwrap_or(0);
            if current != self.fence {
                return Err(StoreError::Fenced {
                    ours: self.fence,
                    current,
                });
            }
            Ok(())
        })
    }

    fn commit(&mut self) -> TxFuture<'_, ()> {
        Box::pin(self.control("COMMIT"))
    }

    fn rollback(&mut self) -> TxFuture<'_, ()> {
        Box::pin(self.control("ROLLBACK"))
    }

    fn savepoint(&mut self) -> TxFuture<'_, ()> {
        Box::pin(self.control("SAVEPOINT job"))
    }

    fn release_savepoint(&mut self) -> TxFuture<'_, ()> {
        Box::pin(self.control("RELEASE SAVEPOINT job"))
    }

    fn rollback_to_savepoint(&mut self) -> TxFuture<'_, ()> {
        Box::pin(self.control("ROLLBACK TO SAVEPOINT job"))
    }
}
