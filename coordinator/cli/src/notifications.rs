//! `pitcrew notifications`: the webhook delivery record — each notification to each webhook,
//! its attempts and where it stands.

use clap::{Args, ValueEnum};
use pitcrew_proto::v1;

use super::connect::{ConnectArgs, admin, status};
use super::output::{self, Format};

/// Which notifications to list.
#[derive(Clone, Args)]
pub struct NotificationsArgs {
    /// Only this campaign's.
    #[arg(long)]
    pub campaign: Option<String>,
    /// Only those in this state.
    #[arg(long, value_enum)]
    pub state: Option<State>,
    /// The newest this many (at most 1000).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum State {
    Pending,
    Delivered,
    Failed,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Delivered => "delivered",
            State::Failed => "failed",
        }
    }
}

pub async fn notifications(
    connect: &ConnectArgs,
    format: Format,
    args: NotificationsArgs,
) -> anyhow::Result<()> {
    let mut client = admin(connect).await?;
    let list = client
        .list_notifications(v1::ListNotificationsRequest {
            campaign_id: args.campaign.unwrap_or_default(),
            state: args
                .state
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            limit: args.limit.clamp(1, 1000),
        })
        .await
        .map_err(status)?
        .into_inner()
        .notifications;
    if format == Format::Json {
        return output::json(&list);
    }
    if list.is_empty() {
        crate::say!("no notifications");
        return Ok(());
    }
    let mut table = output::table(&[
        "time",
        "webhook",
        "event",
        "campaign",
        "host",
        "state",
        "attempts",
        "last error",
    ]);
    for n in list {
        let state = match n.state.as_str() {
            "pending" => format!("pending (next {})", when(n.next_attempt_ms)),
            "delivered" => format!("delivered {}", output::ago(n.delivered_at_ms)),
            _ => n.state.clone(),
        };
        table.add_row(vec![
            output::clock(n.created_at_ms),
            n.webhook,
            n.event,
            n.campaign_id,
            n.hostname,
            state,
            n.attempts.to_string(),
            n.last_error,
        ]);
    }
    // Hostnames and errors may carry what an agent or a receiver sent: `say!` cleans them.
    crate::say!("{table}");
    Ok(())
}

/// "now", "in 20s", "in 3m".
fn when(at_ms: i64) -> String {
    let seconds = (at_ms - pitcrew_proto::now_ms()) / 1000;
    match seconds {
        i64::MIN..=0 => "now".to_owned(),
        1..=59 => format!("in {seconds}s"),
        _ => format!("in {}m", seconds / 60),
    }
}
