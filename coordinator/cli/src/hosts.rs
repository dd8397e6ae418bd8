//! `pitcrew hosts` and `pitcrew token`.

use std::collections::HashMap;

use clap::{Args, Subcommand};
use pitcrew_proto::v1;

use super::connect::{ConnectArgs, admin, status};
use super::output::{self, Format};

#[derive(Clone, Subcommand)]
pub enum HostsCommand {
    /// List hosts (the default: every host), page by page from the coordinator.
    Ls(HostsFilter),
    /// Show one host (id or hostname) with all its facts.
    Show { host: String },
    /// Decommission a host (an admin's call): its certificate stops working at once, its slots
    /// are freed, it leaves the quorum guard and its campaigns (ending it skipped); its history
    /// stays. Bringing it back needs `pitcrew token create --replace HOST_ID`.
    Remove { host: String },
    /// Change a host's role or labels (audited); refused while a campaign, manual maintenance
    /// or an operator's action holds or still has the host.
    Set(crate::lifecycle::SetArgs),
}

#[derive(Clone, Subcommand)]
pub enum TokenCommand {
    /// Create a join token; it is printed once and stored only as a hash.
    Create {
        /// The role of hosts enrolled with it.
        #[arg(long, value_parser = ["worker", "manager"], required_unless_present = "replace")]
        role: Option<String>,
        /// A label for hosts enrolled with this token, as key=value (repeat).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// How many hosts may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it is valid, e.g. 1h, 30m, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// A token to re-enroll this existing host (id or hostname), e.g. after a rebuild:
        /// the only kind that can. The host keeps its role and labels.
        #[arg(long, conflicts_with_all = ["role", "labels"])]
        replace: Option<String>,
    },
    /// List join tokens (never their secret).
    Ls,
    /// Revoke a join token by id.
    Revoke { id: String },
}

/// Which hosts `pitcrew hosts ls` lists; the coordinator applies the filters.
#[derive(Clone, Args, Default)]
pub struct HostsFilter {
    /// Only hosts of this role.
    #[arg(long, value_parser = ["worker", "manager"])]
    role: Option<String>,
    /// Only hosts with this label, as key=value.
    #[arg(long, value_parser = parse_label)]
    label: Option<(String, String)>,
    /// Only hosts in this maintenance state.
    #[arg(long, value_parser = ["running", "entering", "maintenance", "leaving", "failed"])]
    state: Option<String>,
    /// Only connected hosts.
    #[arg(long, conflicts_with = "disconnected")]
    connected: bool,
    /// Only disconnected hosts.
    #[arg(long)]
    disconnected: bool,
    /// The hosts removed from the fleet (`pitcrew hosts remove`) instead of the enrolled ones.
    #[arg(long)]
    removed: bool,
}

impl HostsFilter {
    /// The request for one page of the hosts this filter selects.
    pub(crate) fn request(&self, page_token: String) -> v1::ListHostsRequest {
        v1::ListHostsRequest {
            page_size: 0,
            page_token,
            role: self.role.clone().unwrap_or_default(),
            label: self
                .label
                .as_ref()
                .map(|(k, v)| format!("{k}={v}"))
                .unwrap_or_default(),
            state: self.state.clone().unwrap_or_default(),
            connected: if self.connected {
                v1::ConnectedFilter::Connected as i32
            } else if self.disconnected {
                v1::ConnectedFilter::Disconnected as i32
            } else {
                v1::ConnectedFilter::Any as i32
            },
            removed: self.removed,
        }
    }
}

/// Every host matching the filter, following the coordinator's pages.
async fn list_all(
    client: &mut v1::admin_client::AdminClient<tonic::transport::Channel>,
    filter: &HostsFilter,
) -> anyhow::Result<Vec<v1::HostInfo>> {
    let mut hosts = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_hosts(filter.request(page_token))
            .await
            .map_err(status)?
            .into_inner();
        hosts.extend(page.hosts);
        if page.next_page_token.is_empty() {
            return Ok(hosts);
        }
        page_token = page.next_page_token;
    }
}

pub(crate) fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{text:?} is not key=value"))
}

pub async fn hosts(
    connect: &ConnectArgs,
    format: Format,
    command: Option<HostsCommand>,
) -> anyhow::Result<()> {
    let mut client = admin(connect).await?;
    match command.unwrap_or(HostsCommand::Ls(HostsFilter::default())) {
        HostsCommand::Ls(filter) => {
            let hosts = list_all(&mut client, &filter).await?;
            if format == Format::Json {
                return output::json(&hosts);
            }
            let mut table = output::table(&[
                "id",
                "hostname",
                "role",
                "labels",
                "state",
                "maintenance",
                "last seen",
                "os",
                "kernel",
                "reboot",
            ]);
            for h in &hosts {
                let facts = h.facts.clone().unwrap_or_default();
                table.add_row(vec![
                    h.host_id.chars().take(12).collect::<String>(),
                    h.hostname.clone(),
                    h.role.clone(),
                    labels(&h.labels),
                    if h.removed_at_ms != 0 {
                        format!("removed {}", output::ago(h.removed_at_ms))
                    } else if h.connected {
                        "connected".into()
                    } else {
                        "disconnected".into()
                    },
                    if h.held_by.is_empty() {
                        h.maintenance_state.clone()
                    } else {
                        format!("{} ({})", h.maintenance_state, h.held_by)
                    },
                    output::ago(h.last_seen_ms),
                    format!("{} {}", facts.os_name, facts.os_version)
                        .trim()
                        .to_owned(),
                    facts.kernel.clone(),
                    if facts.reboot_required {
                        "required".into()
                    } else {
                        "-".into()
                    },
                ]);
            }
            crate::say!("{table}");
            Ok(())
        }
        HostsCommand::Show { host } => {
            let h = client
                .get_host(v1::GetHostRequest { host })
                .await
                .map_err(status)?
                .into_inner();
            if format == Format::Json {
                return output::json(&h);
            }
            let f = h.facts.clone().unwrap_or_default();
            let mut labels: Vec<String> =
                h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let rows: Vec<(&str, String)> = vec![
                ("host id", h.host_id.clone()),
                ("hostname", h.hostname.clone()),
                ("role", h.role.clone()),
                ("labels", labels.join(", ")),
                (
                    "state",
                    if h.connected {
                        "connected".into()
                    } else {
                        "disconnected".into()
                    },
                ),
                (
                    "maintenance",
                    format!("{} {}", h.maintenance_state, h.held_by)
                        .trim()
                        .to_owned(),
                ),
                ("last seen", output::ago(h.last_seen_ms)),
                ("os", format!("{} {}", f.os_name, f.os_version)),
                ("kernel", f.kernel.clone()),
                ("arch", f.arch.clone()),
                ("cpus", f.cpus.to_string()),
                ("memory", output::bytes(f.memory_bytes)),
                (
                    "uptime",
                    humantime::format_duration(std::time::Duration::from_secs(f.uptime_seconds))
                        .to_string(),
                ),
                ("boot id", f.boot_id.clone()),
                ("reboot required", f.reboot_required.to_string()),
                (
                    "pending updates",
                    f.pending_updates
                        .map_or_else(|| "not counted yet".to_owned(), |n| n.to_string()),
                ),
                ("/dev/shm tmpfs mounts", f.shm_tmpfs_mounts.to_string()),
                (
                    "held units",
                    if f.held_units.is_empty() {
                        "none".to_owned()
                    } else {
                        f.held_units
                            .iter()
                            .map(|h| format!("{} (held by {})", h.unit, h.hold_id))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                ),
                ("package manager", f.package_manager.clone()),
                ("systemd", f.systemd.to_string()),
                ("agent version", f.agent_version.clone()),
                ("certificate serial", h.cert_serial.clone()),
            ];
            let mut table = output::table(&["fact", "value"]);
            for (k, v) in rows {
                table.add_row(vec![k.to_owned(), v]);
            }
            for d in &f.disks {
                table.add_row(vec![
                    format!("disk {}", d.mount_point),
                    format!(
                        "{} free of {} ({})",
                        output::bytes(d.available_bytes),
                        output::bytes(d.total_bytes),
                        d.filesystem
                    ),
                ]);
            }
            crate::say!("{table}");
            Ok(())
        }
        HostsCommand::Remove { host } => crate::lifecycle::remove(&mut client, format, host).await,
        HostsCommand::Set(args) => crate::lifecycle::set(&mut client, format, args).await,
    }
}

pub async fn token(
    connect: &ConnectArgs,
    format: Format,
    command: TokenCommand,
) -> anyhow::Result<()> {
    let mut client = admin(connect).await?;
    match command {
        TokenCommand::Create {
            role,
            labels,
            uses,
            ttl,
            replace,
        } => {
            let request = v1::CreateTokenRequest {
                role: role.unwrap_or_default(),
                labels: labels.into_iter().collect::<HashMap<_, _>>(),
                uses,
                ttl_seconds: ttl.as_secs(),
                replace_host: replace.unwrap_or_default(),
            };
            let created = client
                .create_token(request)
                .await
                .map_err(status)?
                .into_inner();
            if format == Format::Json {
                return output::json(&created);
            }
            let info = created.info.unwrap_or_default();
            crate::say!("{}", created.token);
            let purpose = if info.replace_host.is_empty() {
                format!("for role {}", info.role)
            } else {
                format!("to re-enroll host {}", info.replace_host)
            };
            crate::say_err!(
                "join token {} {purpose}: {} use(s), expires in {}. It is shown only now.",
                info.id,
                info.uses_total,
                humantime::format_duration(ttl)
            );
            Ok(())
        }
        TokenCommand::Ls => {
            let tokens = client
                .list_tokens(v1::ListTokensRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .tokens;
            if format == Format::Json {
                return output::json(&tokens);
            }
            let mut table = output::table(&[
                "id",
                "role",
                "labels",
                "uses left",
                "expires",
                "state",
                "created by",
            ]);
            let now = pitcrew_proto::now_ms();
            for t in tokens {
                let state = if t.revoked {
                    "revoked"
                } else if t.expires_at_ms <= now {
                    "expired"
                } else if t.uses_left == 0 {
                    "used up"
                } else {
                    "valid"
                };
                let mut labels: Vec<String> =
                    t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                table.add_row(vec![
                    t.id,
                    t.role,
                    labels.join(","),
                    format!("{}/{}", t.uses_left, t.uses_total),
                    output::clock(t.expires_at_ms),
                    state.to_owned(),
                    t.created_by,
                ]);
            }
            crate::say!("{table}");
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            let token = client
                .revoke_token(v1::RevokeTokenRequest { id })
                .await
                .map_err(status)?
                .into_inner();
            if format == Format::Json {
                return output::json(&token);
            }
            crate::say!("revoked join token {}", token.id);
            Ok(())
        }
    }
}

/// Labels as `k=v` words in key order ("-" when none), for the hosts table.
fn labels(labels: &std::collections::HashMap<String, String>) -> String {
    let mut words: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if words.is_empty() {
        return "-".into();
    }
    words.sort();
    words.join(",")
}
