//! `pitcrew hosts remove` and `pitcrew hosts set`: a host's lifecycle after enrollment
//! (decommissioning it, changing its role or labels), each one audited Admin call.

use clap::Args;
use pitcrew_proto::v1::{self, admin_client::AdminClient};
use tonic::transport::Channel;

use super::connect::status;
use super::hosts::parse_label;
use super::output::{self, Format};

/// What `pitcrew hosts set` changes.
#[derive(Clone, Args)]
pub struct SetArgs {
    /// Host id or hostname.
    pub host: String,
    /// The host's new role.
    #[arg(long, value_parser = ["worker", "manager"])]
    pub role: Option<String>,
    /// A label to add or replace, as key=value (repeat).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// A label key to remove (repeat).
    #[arg(long = "unset-label")]
    pub unset_labels: Vec<String>,
}

pub async fn remove(
    client: &mut AdminClient<Channel>,
    format: Format,
    host: String,
) -> anyhow::Result<()> {
    let removed = client
        .remove_host(v1::RemoveHostRequest { host })
        .await
        .map_err(status)?
        .into_inner();
    if format == Format::Json {
        return output::json(&removed);
    }
    let info = removed.host.unwrap_or_default();
    crate::say!(
        "removed host {} ({}): its certificate is no longer accepted and it left the quorum guard",
        info.hostname,
        info.host_id
    );
    for change in &removed.changes {
        crate::say!("  {change}");
    }
    crate::say_err!(
        "its history stays (pitcrew events --host {}); to bring it back: pitcrew token create --replace {}",
        info.host_id,
        info.host_id
    );
    Ok(())
}

pub async fn set(
    client: &mut AdminClient<Channel>,
    format: Format,
    args: SetArgs,
) -> anyhow::Result<()> {
    let host = client
        .set_host(v1::SetHostRequest {
            host: args.host,
            role: args.role.unwrap_or_default(),
            set_labels: args.labels.into_iter().collect(),
            unset_labels: args.unset_labels,
        })
        .await
        .map_err(status)?
        .into_inner();
    if format == Format::Json {
        return output::json(&host);
    }
    let mut labels: Vec<String> = host
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    labels.sort();
    crate::say!(
        "host {}: role {}, labels {}",
        host.hostname,
        host.role,
        if labels.is_empty() {
            "(none)".to_owned()
        } else {
            labels.join(", ")
        }
    );
    Ok(())
}
