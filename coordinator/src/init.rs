//! `pitcrew-coordinator init`: a new fleet's CA, server certificate, first operator (an admin,
//! registered in the store) and config, written once into the data dir.

use std::path::Path;

use anyhow::Context;

use crate::ca::{Ca, SERVICE_CERT_VALIDITY};
use crate::config::{CoordinatorConfig, DataDir};
use crate::operators::Role;
use crate::store::{EventRecord, OperatorRecord, Store};

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

/// Creates a fleet in `data_dir`. Refuses if a CA is already there.
pub fn init(
    data_dir: &Path,
    sans: &[String],
    operator: &str,
    listen: &str,
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
    let config = CoordinatorConfig {
        listen: listen.to_owned(),
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
    let store = Store::open(&dir.store()).context("creating the store")?;
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
}
