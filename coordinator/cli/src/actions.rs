//! `pitcrew do HOST ACTION ...`: one typed action on one host now, its log streamed, its result
//! printed; the exit status is non-zero unless it succeeded.

use clap::Args;
use pitcrew_proto::actions::cli::ActionCommand;
use pitcrew_proto::v1::{self, action_event::Event};

use super::connect::{ConnectArgs, admin, status};
use super::output::{self, Format};

#[derive(Clone, Args)]
pub struct DoArgs {
    /// Host id or hostname.
    pub host: String,
    /// Give up on the action after this long (default: the action's own).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Action id; repeating an id returns the first run's result instead of running again.
    #[arg(long)]
    pub id: Option<String>,
    /// Run a disruptive action even on a host a campaign holds, or on a manager while another
    /// host holds its cluster's manager slot; the coordinator audits what it overrode. (Better:
    /// hold the host first with `pitcrew maintenance enable`.)
    #[arg(long)]
    pub force: bool,
    #[command(subcommand)]
    pub action: ActionCommand,
}

pub async fn run(connect: &ConnectArgs, format: Format, args: DoArgs) -> anyhow::Result<()> {
    let mut client = admin(connect).await?;
    let request = v1::RunActionRequest {
        host: args.host.clone(),
        request: Some(v1::ActionRequest {
            action_id: args.id.unwrap_or_default(),
            action: Some(args.action.into()),
            timeout_seconds: args
                .timeout
                .map(|t| t.as_secs().clamp(1, u64::from(u32::MAX)) as u32)
                .unwrap_or(0),
        }),
        force: args.force,
    };
    let mut stream = client
        .run_action(request)
        .await
        .map_err(status)?
        .into_inner();
    let mut result = None;
    let mut events = Vec::new();
    // Ctrl-C ends the command and its stream, and the coordinator then cancels the action on
    // its host. Handled here rather than left to the default disposition, which a parent may
    // have set to "ignore" (a background job of a script), leaving the action running.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut action_id = String::new();
    loop {
        let event = tokio::select! {
            event = stream.message() => event.map_err(status)?,
            _ = &mut interrupted => {
                let what = if action_id.is_empty() { "the action" } else { action_id.as_str() };
                anyhow::bail!("interrupted: the coordinator cancels {what} on {}", args.host);
            }
        };
        let Some(event) = event else {
            break;
        };
        if action_id.is_empty() {
            action_id = event.action_id.clone();
        }
        match &event.event {
            Some(Event::Log(line)) if format == Format::Table => {
                crate::say!("{}: {line}", args.host)
            }
            Some(Event::Progress(p)) if format == Format::Table => {
                if p.percent >= 0 {
                    crate::say_err!("{}: [{:>3}%] {}", args.host, p.percent, p.stage);
                } else {
                    crate::say_err!("{}: {}", args.host, p.stage);
                }
            }
            Some(Event::Result(r)) => result = Some(r.clone()),
            _ => {}
        }
        if format == Format::Json {
            events.push(event);
        }
    }
    let result = result
        .ok_or_else(|| anyhow::anyhow!("the coordinator ended the stream without a result"))?;
    if format == Format::Json {
        // The outcome as the word the table shows, not the wire's enum number.
        let mut value = serde_json::to_value(&result)?;
        value["outcome"] = pitcrew_proto::actions::outcome(result.outcome).into();
        output::json(&value)?;
    } else {
        let word = pitcrew_proto::actions::outcome(result.outcome);
        if !result.output.is_empty() {
            crate::say_raw!("{}", result.output);
            if !result.output.ends_with('\n') {
                crate::say!();
            }
        }
        let rule = if result.refused_by.is_empty() {
            String::new()
        } else {
            format!(" [rule {}]", result.refused_by)
        };
        crate::say!(
            "{} {}: {word}: {}{rule}",
            args.host,
            result.action_id,
            result.message
        );
    }
    if result.outcome != v1::Outcome::Succeeded as i32 {
        anyhow::bail!(
            "action {} {}",
            result.action_id,
            pitcrew_proto::actions::outcome(result.outcome)
        );
    }
    Ok(())
}
