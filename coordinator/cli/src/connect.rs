//! How the CLI reaches the coordinator: address and operator certificate from flags or
//! `PITCREW_*` environment variables.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use pitcrew_proto::tls;
use pitcrew_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

/// Connection flags shared by every command.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Coordinator address.
    #[arg(
        long,
        global = true,
        env = "PITCREW_COORDINATOR",
        default_value = "https://127.0.0.1:7443"
    )]
    pub coordinator: String,
    /// The fleet CA certificate (PEM).
    #[arg(
        long,
        global = true,
        env = "PITCREW_CA",
        default_value = "/var/lib/pitcrew-coordinator/ca.crt"
    )]
    pub ca: PathBuf,
    /// Your operator certificate (PEM).
    #[arg(
        long,
        global = true,
        env = "PITCREW_CERT",
        default_value = "/var/lib/pitcrew-coordinator/operator/admin.crt"
    )]
    pub cert: PathBuf,
    /// Your operator key (PEM).
    #[arg(
        long,
        global = true,
        env = "PITCREW_KEY",
        default_value = "/var/lib/pitcrew-coordinator/operator/admin.key"
    )]
    pub key: PathBuf,
}

/// Opens an Admin client with the operator certificate.
pub async fn admin(args: &ConnectArgs) -> anyhow::Result<AdminClient<Channel>> {
    let ca = tls::load_certs(&args.ca)?;
    let chain = tls::load_certs(&args.cert)?;
    let key = tls::load_key(&args.key)?;
    let config = tls::client_config(&ca, Some((chain, key)))?;
    let channel = tls::connect(&args.coordinator, Arc::new(config))
        .await
        .with_context(|| format!("cannot reach the coordinator at {}", args.coordinator))?;
    Ok(AdminClient::new(channel).max_decoding_message_size(pitcrew_proto::MAX_MESSAGE_BYTES))
}

/// Turns a gRPC status into an error an operator can read (the coordinator's message as is).
pub fn status(status: tonic::Status) -> anyhow::Error {
    let code = match status.code() {
        tonic::Code::PermissionDenied => "refused",
        tonic::Code::Unauthenticated => "not authenticated",
        tonic::Code::NotFound => "not found",
        tonic::Code::InvalidArgument => "invalid",
        tonic::Code::FailedPrecondition => "not possible now",
        tonic::Code::Unavailable => "unavailable",
        _ => "error",
    };
    anyhow::anyhow!("{code}: {}", status.message())
}
