//! `pitcrew schedule`: campaign files the coordinator runs by itself at each fire time of
//! their `schedule` (add, ls, pause, resume, rm). One schedule per campaign name: adding a
//! file whose name is registered replaces that schedule, and says so.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use pitcrew_proto::v1;

use super::connect::{ConnectArgs, admin, status};
use super::output::{self, Format};

#[derive(Clone, Subcommand)]
pub enum ScheduleCommand {
    /// Register a campaign file that has a `schedule`: the coordinator runs it at each fire
    /// time, never while a run of the same campaign is still active. A file whose campaign
    /// name is registered already replaces that schedule.
    Add { file: PathBuf },
    /// List schedules with their next fire time and last run.
    Ls,
    /// Stop a schedule from firing (it stays registered).
    Pause { name: String },
    /// Let a paused schedule fire again, from its next fire time (times passed while paused
    /// are not made up).
    Resume { name: String },
    /// Remove a schedule (runs it started are kept).
    Rm { name: String },
}

pub async fn schedule(
    connect: &ConnectArgs,
    format: Format,
    command: ScheduleCommand,
) -> anyhow::Result<()> {
    let mut client = admin(connect).await?;
    match command {
        ScheduleCommand::Add { file } => {
            let spec_toml = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let info = client
                .schedule_campaign(v1::CreateCampaignRequest {
                    spec_toml,
                    source_name: file.display().to_string(),
                })
                .await
                .map_err(status)?
                .into_inner();
            if format == Format::Json {
                return output::json(&info);
            }
            crate::say!(
                "schedule {:?} {}: \"{}\" in {}; next run {}",
                info.name,
                if info.replaced {
                    "replaced (one schedule per campaign name)"
                } else {
                    "registered"
                },
                info.cron,
                info.timezone,
                next(&info)
            );
            Ok(())
        }
        ScheduleCommand::Ls => {
            let list = client
                .list_schedules(v1::ListSchedulesRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .schedules;
            if format == Format::Json {
                return output::json(&list);
            }
            let mut table = output::table(&[
                "name",
                "cron",
                "time zone",
                "only hosts where",
                "next run",
                "last fired",
                "last run",
            ]);
            for s in list {
                table.add_row(vec![
                    s.name.clone(),
                    s.cron.clone(),
                    s.timezone.clone(),
                    s.conditions.join(", "),
                    next(&s),
                    if s.last_fire_ms == 0 {
                        "never".to_owned()
                    } else {
                        output::clock(s.last_fire_ms)
                    },
                    last_run(&s),
                ]);
            }
            crate::say!("{table}");
            Ok(())
        }
        ScheduleCommand::Pause { name } => {
            control(&mut client, format, name, v1::ScheduleControl::Pause).await
        }
        ScheduleCommand::Resume { name } => {
            control(&mut client, format, name, v1::ScheduleControl::Resume).await
        }
        ScheduleCommand::Rm { name } => {
            control(&mut client, format, name, v1::ScheduleControl::Remove).await
        }
    }
}

/// The next fire time as the schedule's zone reads it, or why there is none.
fn next(s: &v1::ScheduleInfo) -> String {
    if s.paused {
        "paused".to_owned()
    } else if s.next_fire_local.is_empty() {
        "never (no later fire time)".to_owned()
    } else {
        s.next_fire_local.clone()
    }
}

/// The last fire's run and its state, or why it started none.
fn last_run(s: &v1::ScheduleInfo) -> String {
    match (s.last_run_id.as_str(), s.last_run_state.as_str()) {
        ("", _) => s.last_note.clone(),
        (id, "") => id.to_owned(),
        (id, state) => format!("{id} ({state})"),
    }
}

async fn control(
    client: &mut v1::admin_client::AdminClient<tonic::transport::Channel>,
    format: Format,
    name: String,
    control: v1::ScheduleControl,
) -> anyhow::Result<()> {
    let info = client
        .control_schedule(v1::ControlScheduleRequest {
            name,
            control: control as i32,
        })
        .await
        .map_err(status)?
        .into_inner();
    if format == Format::Json {
        return output::json(&info);
    }
    let what = match control {
        v1::ScheduleControl::Pause => "paused",
        v1::ScheduleControl::Resume => "resumed",
        _ => "removed",
    };
    crate::say!("schedule {:?} {what}", info.name);
    Ok(())
}
