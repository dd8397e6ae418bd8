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
    if let Some(leaf) = chain.first() {
        renewal_hint(&args.cert, leaf.as_ref());
    }
    let key = tls::load_key(&args.key)?;
    let config = tls::client_config(&ca, Some((chain, key)))?;
    let channel = tls::connect(&args.coordinator, Arc::new(config))
        .await
        .with_context(|| format!("cannot reach the coordinator at {}", args.coordinator))?;
    Ok(AdminClient::new(channel).max_decoding_message_size(pitcrew_proto::MAX_MESSAGE_BYTES))
}

/// Says on stderr when the operator certificate has used 70 % of its lifetime (or expired), so
/// that it is renewed before the coordinator stops accepting it.
fn renewal_hint(path: &std::path::Path, der: &[u8]) {
    let now = pitcrew_proto::now_ms();
    if !pitcrew_proto::identity::due_for_renewal(der, now, 0.7) {
        return;
    }
    match pitcrew_proto::identity::validity_ms(der) {
        Ok((_, not_after)) if not_after <= now => crate::say_err!(
            "pitcrew: your operator certificate {} has expired; ask an admin for a new one (pitcrew operator add)",
            path.display()
        ),
        Ok((_, not_after)) => crate::say_err!(
            "pitcrew: your operator certificate {} expires in {}; renew it now: pitcrew operator renew",
            path.display(),
            humantime::format_duration(std::time::Duration::from_secs(
                u64::try_from((not_after - now) / 1000).unwrap_or_default()
            ))
        ),
        Err(_) => {}
    }
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
