//! `pitcrew-coordinator init`: a new fleet's CA, server certificate, first operator certificate
//! and config, written once into the data dir.

use std::path::Path;

use anyhow::Context;

use crate::ca::{Ca, SERVICE_CERT_VALIDITY};
use crate::config::{CoordinatorConfig, DataDir};

/// What `init` made, for printing.
#[derive(Debug)]
pub struct Initialized {
    pub ca_fingerprint: String,
    pub operator_cert: std::path::PathBuf,
    pub operator_key: std::path::PathBuf,
    pub ca_cert: std::path::PathBuf,
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
    if operator.is_empty()
        || !operator
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        anyhow::bail!("the operator name may hold only letters, digits and - _ . @");
    }
    let dir = DataDir::new(data_dir);
    pitcrew_proto::files::create_private_dir(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let ca = Ca::create(data_dir, &data_dir.display().to_string())?;
    let (server, server_key) = ca.issue_server(sans, SERVICE_CERT_VALIDITY)?;
    pitcrew_proto::files::write_public(&dir.server_cert(), server.cert_pem.as_bytes())?;
    pitcrew_proto::files::write_private(&dir.server_key(), server_key.as_bytes())?;
    let (op, op_key) = ca.issue_operator(operator, SERVICE_CERT_VALIDITY)?;
    let operator_cert = dir.operator_dir().join(format!("{operator}.crt"));
    let operator_key = dir.operator_dir().join(format!("{operator}.key"));
    pitcrew_proto::files::create_private_dir(&dir.operator_dir())?;
    pitcrew_proto::files::write_public(&operator_cert, op.cert_pem.as_bytes())?;
    pitcrew_proto::files::write_private(&operator_key, op_key.as_bytes())?;
    let config = CoordinatorConfig {
        listen: listen.to_owned(),
        ..CoordinatorConfig::default()
    };
    if listen.parse::<std::net::SocketAddr>().is_err() {
        anyhow::bail!("--listen {listen:?} is not an address such as 0.0.0.0:7443");
    }
    pitcrew_proto::files::write_public(&dir.config(), config.render().as_bytes())?;
    Ok(Initialized {
        ca_fingerprint: ca.fingerprint(),
        operator_cert,
        operator_key,
        ca_cert: dir.ca_cert(),
    })
}
