//! `pitcrew-coordinator init`: a new fleet's CA, server certificate, first operator (an admin,
//! registered in the store) and config, written once into the data dir.

use std::path::Path;

use anyhow::Context;

use crate::ca::{Ca, SERVICE_CERT_VALIDITY};
use crate::config::{CoordinatorConfig, DataDir, PG_PASSWORD_ENV, StoreConfig};
use crate::operators::Role;
use crate::store::{EventRecord, OperatorRecord, Store, StoreLocation};

/// Who the store records as having issued the first admin's certificate.
pub const INIT_ACTOR: &str = "init";

/// What `init` made, for printing.
#[derive(Debug)]
pub struct Initialized {
    pub ca_fingerprint: String,
    pub operator_cert: std::path::PathBuf,
    pub operator_key: std::path::PathBuf,
    pub ca_cert: std::path::PathBuf,
    /// When the first operator's certificate expires (Unix ms).
    pub operator_not_after_ms: i64,
}

/// Creates a fleet in `data_dir` with its store there (SQLite). Refuses if a CA is already
/// there.
pub fn init(
    data_dir: &Path,
    sans: &[String],
    operator: &str,
    listen: &str,
) -> anyhow::Result<Initialized> {
    init_fleet(data_dir, sans, operator, listen, StoreConfig::default())
}

/// Creates a fleet in `data_dir`, its store where `store` says: the data dir's SQLite file, or
/// an empty PostgreSQL database (checked before anything is written, so a bad URL, a wrong
/// password or a database that already holds a fleet leaves nothing behind). The CA key and
/// the server's key stay files in the data dir; the database never holds them.
pub fn init_fleet(
    data_dir: &Path,
    sans: &[String],
    operator: &str,
    listen: &str,
    store: StoreConfig,
) -> anyhow::Result<Initialized> {
    if sans.is_empty() {
        anyhow::bail!(
            "give at least one --san (an address or name agents use to reach this coordinator)"
        );
    }
    crate::operators::validate_name(operator).map_err(|e| anyhow::anyhow!("--operator: {e}"))?;
    if listen.parse::<std::net::SocketAddr>().is_err() {
        anyhow::bail!("--listen {listen:?} is not an address such as 0.0.0.0:7443");
    }
    let dir = DataDir::new(data_dir);
    // Before the database is touched: a data dir that holds a fleet stays as it is.
    if let Some(existing) = [dir.config(), dir.ca_cert()]
        .into_iter()
        .find(|p| p.exists())
    {
        anyhow::bail!(
            "{} already holds a fleet ({} exists); refusing to overwrite it (move it away to start a new fleet)",
            data_dir.display(),
            existing.display()
        );
    }
    let location = store
        .location(&dir, std::env::var(PG_PASSWORD_ENV).ok())
        .map_err(anyhow::Error::msg)?;
    // A database is checked first: it must be reachable and hold no fleet yet.
    let early = match &location {
        StoreLocation::Sqlite(_) => None,
        StoreLocation::Postgres(settings) => {
            let store = Store::open_at(&location)
                .with_context(|| format!("opening the store {}", settings.describe()))?;
            let operators = futures::executor::block_on(store.list_operators())?;
            if !operators.is_empty() {
                anyhow::bail!(
                    "the database {} already holds a fleet ({} operator certificate(s)); init creates a new fleet in an empty database (another coordinator of that fleet uses a copy of its data dir: see the PostgreSQL store in ARCHITECTURE.md)",
                    settings.describe(),
                    operators.len()
                );
            }
            Some(store)
        }
    };
    let config = CoordinatorConfig {
        listen: listen.to_owned(),
        store,
        ..CoordinatorConfig::default()
    };
    pitcrew_proto::files::create_private_dir(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let ca = Ca::create(data_dir, &data_dir.display().to_string())?;
    let (server, server_key) = ca.issue_server(sans, SERVICE_CERT_VALIDITY)?;
    pitcrew_proto::files::write_public(&dir.server_cert(), server.cert_pem.as_bytes())?;
    pitcrew_proto::files::write_private(&dir.server_key(), server_key.as_bytes())?;

    // The first operator: an admin, its key made here, its certificate registered in the store
    // (the Admin API admits only registered certificates).
    let made = pitcrew_proto::csr::key_and_csr(operator)?;
    let op = ca.sign_operator_csr(&made.csr_der, operator, config.operator_cert_lifetime)?;
    let record = OperatorRecord {
        serial: op.serial.clone(),
        name: operator.to_owned(),
        role: Role::Admin.as_str().to_owned(),
        not_after_ms: op.not_after_ms,
        revoked: false,
        created_at_ms: pitcrew_proto::now_ms(),
        created_by: INIT_ACTOR.to_owned(),
    };
    let store = match early {
        Some(store) => store,
        None => Store::open_at(&location).context("creating the store")?,
    };
    let audit = EventRecord {
        kind: "audit".into(),
        at_ms: pitcrew_proto::now_ms(),
        message: format!(
            "created the fleet; first operator {} with role admin (certificate {})",
            record.name, record.serial
        ),
        actor: INIT_ACTOR.into(),
        ..Default::default()
    };
    futures::executor::block_on(store.register_operators(vec![record], Some(audit)))
        .context("recording the first operator in the store")?;
    drop(store);

    let operator_cert = dir.operator_dir().join(format!("{operator}.crt"));
    let operator_key = dir.operator_dir().join(format!("{operator}.key"));
    pitcrew_proto::files::create_private_dir(&dir.operator_dir())?;
    pitcrew_proto::files::write_public(&operator_cert, op.cert_pem.as_bytes())?;
    pitcrew_proto::files::write_private(&operator_key, made.key_pem.as_bytes())?;
    pitcrew_proto::files::write_public(&dir.config(), config.render().as_bytes())?;
    Ok(Initialized {
        ca_fingerprint: ca.fingerprint(),
        operator_cert,
        operator_key,
        ca_cert: dir.ca_cert(),
        operator_not_after_ms: op.not_after_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_registers_its_first_operator_as_an_admin() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("fleet");
        let made = init(&data, &["127.0.0.1".into()], "root-ops", "127.0.0.1:7443").unwrap();
        let store = Store::open(&DataDir::new(&data).store()).unwrap();
        let stored = futures::executor::block_on(store.list_operators()).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].name, "root-ops");
        assert_eq!(stored[0].role, "admin");
        assert_eq!(stored[0].created_by, INIT_ACTOR);
        let certs = pitcrew_proto::tls::load_certs(&made.operator_cert).unwrap();
        let peer = pitcrew_proto::identity::peer_from_der(certs[0].as_ref()).unwrap();
        assert_eq!(peer.serial, stored[0].serial);
        // Thirty days by default, not two years.
        let days = (made.operator_not_after_ms - pitcrew_proto::now_ms()) / (24 * 3600 * 1000);
        assert!((29..=30).contains(&days), "{days} days");
        assert!(init(&data, &["127.0.0.1".into()], "x", "127.0.0.1:7443").is_err());
        assert!(init(&dir.path().join("b"), &["h".into()], "../x", "127.0.0.1:1").is_err());
    }

    #[test]
    fn init_creates_a_fleet_in_an_empty_postgres_database_only() {
        let Some(cluster) = crate::store::testing::cluster() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let db = cluster.create_database();
        let password_file = dir.path().join("pg-password");
        std::fs::write(&password_file, format!("{}\n", cluster.password())).unwrap();
        let store = StoreConfig {
            postgres_url: Some(cluster.url(&db)),
            password_file: Some(password_file.clone()),
        };
        let data = dir.path().join("fleet");
        init_fleet(
            &data,
            &["127.0.0.1".into()],
            "root-ops",
            "127.0.0.1:7443",
            store.clone(),
        )
        .unwrap();
        // The data dir holds the CA and the config naming the database; no SQLite file.
        let data_dir = DataDir::new(&data);
        assert!(!data_dir.store().exists());
        let config = CoordinatorConfig::load(&data_dir.config()).unwrap();
        assert_eq!(config.store, store);
        let location = config.store.location(&data_dir, None).unwrap();
        let opened = Store::open_at(&location).unwrap();
        let stored = futures::executor::block_on(opened.list_operators()).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].role, "admin");
        // The CA key is a file, never a row.
        let dump = cluster
            .sql(
                &db,
                "SELECT count(*) FROM events WHERE message LIKE '%PRIVATE KEY%'",
            )
            .unwrap();
        assert_eq!(dump, "0");
        // A second fleet in the same database is refused, and leaves nothing behind.
        let other = dir.path().join("other");
        let error = init_fleet(&other, &["127.0.0.1".into()], "x", "127.0.0.1:7443", store)
            .unwrap_err()
            .to_string();
        assert!(error.contains("already holds a fleet"), "{error}");
        assert!(!other.exists());
        // A wrong password: a clear error, nothing written, the password not repeated.
        std::fs::write(&password_file, "wrong-password\n").unwrap();
        let third = dir.path().join("third");
        let error = init_fleet(
            &third,
            &["127.0.0.1".into()],
            "x",
            "127.0.0.1:7443",
            StoreConfig {
                postgres_url: Some(cluster.url(&cluster.create_database())),
                password_file: Some(password_file),
            },
        )
        .map(|_| ())
        .unwrap_err();
        let error = format!("{error:#}");
        assert!(error.contains("password authentication failed"), "{error}");
        assert!(!error.contains("wrong-password"), "{error}");
        assert!(!third.exists());
    }
}
