//! `pitcrew campaign ...`, `pitcrew maintenance ...` and `pitcrew events`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pitcrew_proto::v1;

use super::connect::{CallFailed, ConnectArgs, admin, status};
use super::output::{self, Format};
use super::{EXIT_CANCELLED, EXIT_INCOMPLETE, EXIT_INTERRUPTED, Exit};

#[derive(Clone, Subcommand)]
pub enum CampaignCommand {
    /// Dry run from the fleet as it is: the exact order, waves, slots and steps, what delays
    /// which wave (hosts held by other campaigns or manual maintenance, disconnected managers,
    /// closed windows), and every step a host's policy would refuse.
    ///
    /// Exits 1 when the campaign cannot run as it is (a step would be refused).
    Plan {
        file: PathBuf,
        /// Plan as if started at TIME: RFC 3339 (`2026-03-01T02:00:00Z`,
        /// `2026-03-01T03:00:00+01:00`) or from now (`+2h`, `+1day 6h`). Windows are evaluated
        /// from then; hosts held and agents disconnected now are assumed still so.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
    /// Start a campaign from a file.
    Run {
        file: PathBuf,
        /// Follow it live until it ends, with `watch`'s exit status (0 every host done,
        /// 2 incomplete, 3 cancelled, 1 error).
        #[arg(long)]
        watch: bool,
    },
    /// Follow a campaign live: progress, each host's state and step, and every blocker.
    ///
    /// Exit status: 0 when every host is done; 2 when it finished incomplete (hosts released
    /// after failing, or skipped); 3 when it was cancelled; 1 on any error.
    Watch { id: String },
    /// List campaign runs, newest first: those the coordinator holds, or the archive.
    Ls(LsArgs),
    /// Show a campaign's hosts and blockers.
    Show { id: String },
    /// Stop starting new hosts (hosts in progress finish their step).
    Pause { id: String },
    /// Resume a paused campaign.
    Resume { id: String },
    /// Cancel a campaign: no new host starts; hosts in progress finish their step.
    Cancel { id: String },
    /// Act on one host of a campaign: retry, skip or release it.
    Host {
        #[arg(value_parser = ["retry", "skip", "release"])]
        verb: String,
        id: String,
        host: String,
    },
}

/// `campaign ls`'s filters.
#[derive(Clone, Args)]
pub struct LsArgs {
    /// Only runs in this state; `active` is pending, running or paused.
    #[arg(long, value_parser = ["active", "pending", "running", "paused", "completed", "incomplete", "cancelled"])]
    pub state: Option<String>,
    /// Only runs of campaigns whose name matches PATTERN (`*` any characters, `?` one;
    /// letters match either case).
    #[arg(long, value_name = "PATTERN")]
    pub name: Option<String>,
    /// At most N runs, newest first (at most 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// The archive: finished runs older than the coordinator's `campaign_archive_after`.
    #[arg(long)]
    pub archived: bool,
}

#[derive(Clone, Subcommand)]
pub enum MaintenanceCommand {
    /// Take a host out of service by hand (it holds a slot like a campaign does).
    Enable { host: String },
    /// Bring a host back into service.
    Disable { host: String },
}

#[derive(Clone, Args)]
pub struct EventsArgs {
    /// Only this host's events (id or hostname).
    #[arg(long)]
    pub host: Option<String>,
    /// Only this campaign's events.
    #[arg(long)]
    pub campaign: Option<String>,
    /// The newest N events (0 = all).
    #[arg(long, default_value_t = 200)]
    pub limit: u32,
    /// Keep printing new events as they happen.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

fn read_spec(file: &PathBuf) -> anyhow::Result<(String, String)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok((text, file.display().to_string()))
}

pub async fn campaign(
    connect: &ConnectArgs,
    format: Format,
    command: CampaignCommand,
) -> anyhow::Result<()> {
    let mut client = admin(connect).await?;
    match command {
        CampaignCommand::Plan { file, at } => {
            let (spec_toml, source_name) = read_spec(&file)?;
            let start_at_ms = match at {
                Some(at) => parse_at(&at, pitcrew_proto::now_ms())?,
                None => 0,
            };
            let plan = client
                .plan_campaign(v1::PlanCampaignRequest {
                    spec_toml,
                    source_name,
                    start_at_ms,
                })
                .await
                .map_err(status)?
                .into_inner();
            if format == Format::Json {
                output::json(&plan)?;
            } else {
                // The text shows each blocker on the wave it delays and lists the refusals;
                // hostnames in it come from agents, so it is printed through `clean`.
                crate::say_raw!("{}", plan.text);
                for warning in &plan.warnings {
                    crate::say_err!("warning: {warning}");
                }
            }
            not_runnable(&plan)
        }
        CampaignCommand::Run {
            file,
            watch: follow,
        } => {
            let (spec_toml, source_name) = read_spec(&file)?;
            let info = client
                .create_campaign(v1::CreateCampaignRequest {
                    spec_toml,
                    source_name,
                })
                .await
                .map_err(status)?
                .into_inner();
            if follow {
                crate::say_err!("campaign {} ({}) started", info.id, info.name);
                return watch(connect, format, &info.id).await;
            }
            if format == Format::Json {
                return output::json(&info);
            }
            crate::say!("{}", info.id);
            crate::say_err!(
                "campaign {} ({}) started; follow it with: pitcrew campaign watch {}",
                info.id,
                info.name,
                info.id
            );
            Ok(())
        }
        CampaignCommand::Watch { id } => watch(connect, format, &id).await,
        CampaignCommand::Ls(args) => {
            let answer = client
                .list_campaigns(v1::ListCampaignsRequest {
                    state: args.state.unwrap_or_default(),
                    name: args.name.unwrap_or_default(),
                    limit: args.limit,
                    archived: args.archived,
                })
                .await
                .map_err(status)?
                .into_inner();
            let (list, matched) = (answer.campaigns, answer.matched as usize);
            if format == Format::Json {
                return output::json(&list);
            }
            let shown = list.len();
            let mut table = output::table(&[
                "id",
                "name",
                "state",
                "done",
                "not done",
                "failed hosts",
                "blocker",
                "started",
            ]);
            for c in list {
                let count = |state: &str| c.host_counts.get(state).copied().unwrap_or(0);
                table.add_row(vec![
                    c.id,
                    c.name,
                    c.state,
                    format!("{}/{}", count("done"), c.hosts_total),
                    not_done(&c.host_counts),
                    format!("{} (budget {})", c.failures, c.max_failures),
                    c.blocker,
                    output::clock(c.created_at_ms),
                ]);
            }
            crate::say!("{table}");
            if matched > shown {
                crate::say_err!(
                    "{shown} of {matched} matching runs shown, newest first; --limit shows more"
                );
            } else if shown == 0 && !args.archived {
                crate::say_err!(
                    "no run matches; finished runs move to the archive after the coordinator's campaign_archive_after (`pitcrew campaign ls --archived`)"
                );
            }
            Ok(())
        }
        CampaignCommand::Show { id } => {
            let info = campaign_with_every_host(&mut client, id).await?;
            if format == Format::Json {
                return output::json(&info);
            }
            print_campaign(&info);
            Ok(())
        }
        CampaignCommand::Pause { id } => {
            control(&mut client, format, id, v1::CampaignControl::Pause).await
        }
        CampaignCommand::Resume { id } => {
            control(&mut client, format, id, v1::CampaignControl::Resume).await
        }
        CampaignCommand::Cancel { id } => {
            control(&mut client, format, id, v1::CampaignControl::Cancel).await
        }
        CampaignCommand::Host { verb, id, host } => {
            let control = match verb.as_str() {
                "retry" => v1::HostControl::Retry,
                "skip" => v1::HostControl::Skip,
                _ => v1::HostControl::Release,
            };
            let info = client
                .control_host(v1::ControlHostRequest {
                    campaign_id: id,
                    host,
                    control: control as i32,
                })
                .await
                .map_err(status)?
                .into_inner();
            if format == Format::Json {
                return output::json(&info);
            }
            print_campaign(&info);
            Ok(())
        }
    }
}

/// `--at`: RFC 3339, or `+DURATION` from `now_ms`; Unix milliseconds.
fn parse_at(text: &str, now_ms: i64) -> anyhow::Result<i64> {
    if let Some(later) = text.strip_prefix('+') {
        let d = humantime::parse_duration(later.trim()).with_context(|| {
            format!("--at {text}: not a duration after `+` (e.g. +2h, +1day 6h)")
        })?;
        let ms = i64::try_from(d.as_millis()).context("--at: too far in the future")?;
        return now_ms
            .checked_add(ms)
            .context("--at: too far in the future");
    }
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| {
            format!("--at {text}: not an RFC 3339 time (e.g. 2026-03-01T02:00:00Z) nor +DURATION")
        })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).context("--at: out of range")
}

/// A plan with refusals was shown in full; the command still fails, for scripts.
fn not_runnable(plan: &v1::CampaignPlan) -> anyhow::Result<()> {
    if plan.runnable {
        return Ok(());
    }
    let refusals: Vec<&str> = plan.refusals.iter().map(|r| r.text.as_str()).collect();
    anyhow::bail!(
        "the campaign cannot run as it is: {} step(s) would be refused: {}",
        refusals.len(),
        refusals.join("; ")
    )
}

/// A campaign with all its hosts, following the coordinator's pages.
async fn campaign_with_every_host(
    client: &mut v1::admin_client::AdminClient<tonic::transport::Channel>,
    id: String,
) -> anyhow::Result<v1::CampaignInfo> {
    let mut info = client
        .get_campaign(v1::GetCampaignRequest {
            id: id.clone(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .map_err(status)?
        .into_inner();
    while !info.next_page_token.is_empty() {
        let page = client
            .get_campaign(v1::GetCampaignRequest {
                id: id.clone(),
                page_size: 0,
                page_token: std::mem::take(&mut info.next_page_token),
            })
            .await
            .map_err(status)?
            .into_inner();
        info.hosts.extend(page.hosts);
        info.next_page_token = page.next_page_token;
    }
    Ok(info)
}

async fn control(
    client: &mut v1::admin_client::AdminClient<tonic::transport::Channel>,
    format: Format,
    id: String,
    control: v1::CampaignControl,
) -> anyhow::Result<()> {
    let info = client
        .control_campaign(v1::ControlCampaignRequest {
            id,
            control: control as i32,
        })
        .await
        .map_err(status)?
        .into_inner();
    if format == Format::Json {
        return output::json(&info);
    }
    crate::say!("campaign {} is {}", info.id, info.state);
    Ok(())
}

/// The hosts that ended without being done, e.g. "1 released, 2 skipped" ("" when none).
fn not_done(counts: &std::collections::HashMap<String, u32>) -> String {
    ["failed", "released", "skipped"]
        .iter()
        .filter_map(|state| {
            counts
                .get(*state)
                .filter(|n| **n > 0)
                .map(|n| format!("{n} {state}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A campaign as a table of hosts, with the campaign's own blocker on top.
pub fn print_campaign(info: &v1::CampaignInfo) {
    crate::say!(
        "campaign {} ({}): {}{}",
        info.id,
        info.name,
        info.state,
        if info.archived { " (archived)" } else { "" }
    );
    if !info.blocker.is_empty() {
        crate::say!("waiting: {}", info.blocker);
    }
    crate::say!(
        "hosts: {} of {} done{}; {} host(s) failed, {} allowed",
        info.host_counts.get("done").copied().unwrap_or(0),
        info.hosts_total,
        match not_done(&info.host_counts).as_str() {
            "" => String::new(),
            other => format!(" ({other})"),
        },
        info.failures,
        info.max_failures
    );
    let mut table = output::table(&["host", "role", "state", "step", "progress", "waiting for"]);
    for h in &info.hosts {
        let detail = if !h.blocker.is_empty() {
            h.blocker.clone()
        } else {
            h.last_error.clone()
        };
        table.add_row(vec![
            h.hostname.clone(),
            h.role.clone(),
            h.state.clone(),
            h.current_step.clone(),
            format!("{}/{}", h.steps_done, h.steps_total),
            detail,
        ]);
    }
    crate::say!("{table}");
}

/// Follows a campaign until it completes or is cancelled. Exits non-zero if it ends cancelled.
///
/// The watch outlives the coordinator's restarts: a stream that breaks (or ends before the
/// campaign did) is opened again, with a growing pause, and picks up the current state. Ctrl-C
/// ends only the watch, and says so: the campaign goes on on the coordinator.
pub async fn watch(connect: &ConnectArgs, format: Format, id: &str) -> anyhow::Result<()> {
    let live = format == Format::Table && std::io::stdout().is_terminal();
    let bars = MultiProgress::new();
    let header = bars.add(ProgressBar::new_spinner());
    if live {
        // Redraw on a clock as well as on each change: a burst of changes (several hosts at
        // once) would otherwise leave the screen at whatever the rate limit let through.
        header.enable_steady_tick(WATCH_REDRAW);
    }
    let style = ProgressStyle::with_template("{prefix:>14} [{bar:20}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut host_bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut last_lines: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<v1::CampaignInfo> = None;
    // Handled here rather than left to the default disposition (which a parent may have set to
    // "ignore"), so that the operator is told the campaign goes on.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut pause = WATCH_RETRY_FIRST;
    loop {
        let lost = tokio::select! {
            _ = &mut interrupted => {
                header.finish_and_clear();
                return Err(detached(id));
            }
            lost = async {
                let mut stream = match open_watch(connect, id).await {
                    Ok(stream) => stream,
                    Err(error) => return WatchEnded::Lost(error),
                };
                loop {
                    let info = match stream.message().await {
                        Ok(Some(info)) => info,
                        // The coordinator ended the stream: the campaign is over, or the
                        // coordinator is shutting down.
                        Ok(None) => return WatchEnded::Closed,
                        Err(error) => return WatchEnded::Lost(status(error)),
                    };
                    pause = WATCH_RETRY_FIRST;
                    if format == Format::Json {
            if let Err(error) = output::json_line(&info) {
                return WatchEnded::Failed(error);
            }
        } else if live {
            let line = format!(
                "campaign {} ({}): {}{}",
                info.id,
                info.name,
                info.state,
                if info.blocker.is_empty() {
                    String::new()
                } else {
                    format!(" — waiting: {}", info.blocker)
                }
            );
            header.set_message(output::clean(&line).into_owned());
            for h in &info.hosts {
                let bar = host_bars.entry(h.host_id.clone()).or_insert_with(|| {
                    let bar = bars.add(ProgressBar::new(u64::from(h.steps_total.max(1))));
                    bar.set_style(style.clone());
                    bar.set_prefix(output::clean(&h.hostname).into_owned());
                    bar
                });
                bar.set_length(u64::from(h.steps_total.max(1)));
                bar.set_position(u64::from(h.steps_done));
                bar.set_message(output::clean(&host_line(h)).into_owned());
            }
        } else {
            // Not a terminal: print a line whenever something changes, for logs and CI.
            let campaign_line = format!(
                "{}: {}{}",
                info.name,
                info.state,
                if info.blocker.is_empty() {
                    String::new()
                } else {
                    format!(" (waiting: {})", info.blocker)
                }
            );
            if last_lines.get("").is_none_or(|l| *l != campaign_line) {
                crate::say!(
                    "[{}] {campaign_line}",
                    output::clock(pitcrew_proto::now_ms())
                );
                last_lines.insert(String::new(), campaign_line);
            }
            for h in &info.hosts {
                let line = format!(
                    "{:<14} {:<8} {}/{} {}",
                    h.hostname,
                    h.role,
                    h.steps_done,
                    h.steps_total,
                    host_line(h)
                );
                if last_lines.get(&h.host_id).is_none_or(|l| *l != line) {
                    crate::say!("[{}]   {line}", output::clock(pitcrew_proto::now_ms()));
                    last_lines.insert(h.host_id.clone(), line);
                }
            }
        }
                    last = Some(info);
                }
            } => lost,
        };
        if last.as_ref().is_some_and(|info| is_final(&info.state)) {
            break;
        }
        match lost {
            WatchEnded::Failed(error) => return Err(error),
            // Without a first state there is nothing to resume: the error is the answer.
            WatchEnded::Lost(error) if last.is_none() || !worth_retrying(&error) => {
                return Err(error);
            }
            WatchEnded::Lost(error) => note(
                live,
                &header,
                &format!("{error:#}; watching again in {}s", pause.as_secs()),
            ),
            WatchEnded::Closed => note(
                live,
                &header,
                &format!(
                    "the coordinator ended the stream; watching again in {}s",
                    pause.as_secs()
                ),
            ),
        }
        tokio::select! {
            _ = &mut interrupted => {
                header.finish_and_clear();
                return Err(detached(id));
            }
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(WATCH_RETRY_MAX);
    }
    header.finish();
    for bar in host_bars.values() {
        bar.finish();
    }
    let last = last.ok_or_else(|| anyhow::anyhow!("the coordinator sent no campaign state"))?;
    if format == Format::Table {
        print_campaign(&last);
    }
    let count = |state: &str| last.host_counts.get(state).copied().unwrap_or(0);
    match last.state.as_str() {
        "completed" => Ok(()),
        "incomplete" => Err(Exit {
            code: EXIT_INCOMPLETE,
            message: format!(
                "campaign {} finished incomplete: {} of {} hosts done, {} released after failing, {} skipped",
                last.id,
                count("done"),
                last.hosts_total,
                count("released"),
                count("skipped")
            ),
        }
        .into()),
        "cancelled" => Err(Exit {
            code: EXIT_CANCELLED,
            message: format!("campaign {} was cancelled", last.id),
        }
        .into()),
        other => anyhow::bail!(
            "the coordinator stopped sending campaign {} while it was {other}",
            last.id
        ),
    }
}

/// How one opening of a campaign's stream ended.
enum WatchEnded {
    /// The connection or the call broke.
    Lost(anyhow::Error),
    /// The coordinator ended the stream.
    Closed,
    /// Printing failed: the watch cannot go on.
    Failed(anyhow::Error),
}

/// How often a live watch redraws without a change.
const WATCH_REDRAW: std::time::Duration = std::time::Duration::from_millis(200);
/// The first and the longest pause before a broken watch is opened again.
const WATCH_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
const WATCH_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the campaign's stream of states.
async fn open_watch(
    connect: &ConnectArgs,
    id: &str,
) -> anyhow::Result<tonic::Streaming<v1::CampaignInfo>> {
    let mut client = admin(connect).await?;
    let stream = client
        .watch_campaign(v1::GetCampaignRequest {
            id: id.to_owned(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .map_err(status)?
        .into_inner();
    Ok(stream)
}

/// Whether a campaign state is one the campaign never leaves.
fn is_final(state: &str) -> bool {
    matches!(state, "completed" | "incomplete" | "cancelled")
}

/// Whether a broken watch is worth opening again: not when the coordinator refused the caller
/// or does not know the campaign (it would answer the same again).
fn worth_retrying(error: &anyhow::Error) -> bool {
    !error.chain().any(|cause| {
        cause.downcast_ref::<CallFailed>().is_some_and(|call| {
            matches!(
                call.code(),
                tonic::Code::NotFound
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
                    | tonic::Code::InvalidArgument
            )
        })
    })
}

/// Says what the watch is doing: on the live header, or as a line for logs.
fn note(live: bool, header: &ProgressBar, text: &str) {
    if live {
        header.set_message(output::clean(text).into_owned());
    } else {
        crate::say!("[{}] {text}", output::clock(pitcrew_proto::now_ms()));
    }
}

/// The end of a watch stopped by Ctrl-C: the campaign goes on, and how to come back to it.
fn detached(id: &str) -> anyhow::Error {
    Exit {
        code: EXIT_INTERRUPTED,
        message: format!(
            "stopped watching; campaign {id} goes on on the coordinator (watch it again with `pitcrew campaign watch {id}`, stop it with `pitcrew campaign cancel {id}`)"
        ),
    }
    .into()
}

fn host_line(h: &v1::CampaignHostStatus) -> String {
    let mut line = h.state.clone();
    if !h.current_step.is_empty() {
        line.push_str(&format!(": {}", h.current_step));
    }
    if !h.blocker.is_empty() {
        line.push_str(&format!(" (waiting: {})", h.blocker));
    } else if !h.last_error.is_empty() && h.state == "failed" {
        line.push_str(&format!(" ({})", h.last_error));
    }
    line
}

pub async fn maintenance(
    connect: &ConnectArgs,
    format: Format,
    command: MaintenanceCommand,
) -> anyhow::Result<()> {
    let mut client = admin(connect).await?;
    let (host, enable) = match command {
        MaintenanceCommand::Enable { host } => (host, true),
        MaintenanceCommand::Disable { host } => (host, false),
    };
    let info = client
        .set_maintenance(v1::SetMaintenanceRequest { host, enable })
        .await
        .map_err(status)?
        .into_inner();
    if format == Format::Json {
        return output::json(&info);
    }
    crate::say!("{} is {}", info.hostname, info.maintenance_state);
    Ok(())
}

pub async fn events(connect: &ConnectArgs, format: Format, args: EventsArgs) -> anyhow::Result<()> {
    let mut client = admin(connect).await?;
    let request = v1::ListEventsRequest {
        host: args.host.unwrap_or_default(),
        campaign_id: args.campaign.unwrap_or_default(),
        limit: args.limit.min(EVENTS_PAGE),
        before_id: 0,
    };
    let print = |e: &v1::Event| -> anyhow::Result<()> {
        if format == Format::Json {
            return output::json_line(e);
        }
        let who = if e.kind == "audit" {
            format!("audit by {}", e.actor)
        } else {
            if e.hostname.is_empty() {
                e.host_id.clone()
            } else {
                e.hostname.clone()
            }
        };
        let campaign = if e.campaign_id.is_empty() {
            String::new()
        } else {
            format!(" [{}]", e.campaign_id)
        };
        let step = if e.step.is_empty() {
            String::new()
        } else {
            format!(" {}", e.step)
        };
        let result = if e.result.is_empty() {
            String::new()
        } else {
            format!(" {}:", e.result)
        };
        crate::say!(
            "{} {who}{campaign}{step}{result} {}",
            output::clock(e.at_ms),
            e.message
        );
        Ok(())
    };
    if args.follow {
        let mut stream = client
            .follow_events(request)
            .await
            .map_err(status)?
            .into_inner();
        while let Some(event) = stream.message().await.map_err(status)? {
            print(&event)?;
        }
        return Ok(());
    }
    let events = newest_events(&mut client, request, args.limit).await?;
    if format == Format::Json {
        return output::json(&events);
    }
    for e in &events {
        print(e)?;
    }
    Ok(())
}

/// The largest page of events one call asks for.
const EVENTS_PAGE: u32 = 1000;

/// The newest `limit` matching events (0: all), oldest first, paging backwards.
async fn newest_events(
    client: &mut v1::admin_client::AdminClient<tonic::transport::Channel>,
    mut request: v1::ListEventsRequest,
    limit: u32,
) -> anyhow::Result<Vec<v1::Event>> {
    let mut pages: Vec<Vec<v1::Event>> = Vec::new();
    let mut taken: u32 = 0;
    loop {
        let want = if limit == 0 {
            EVENTS_PAGE
        } else {
            (limit - taken).min(EVENTS_PAGE)
        };
        request.limit = want;
        let page = client
            .list_events(request.clone())
            .await
            .map_err(status)?
            .into_inner()
            .events;
        let got = u32::try_from(page.len()).unwrap_or(u32::MAX);
        let oldest = page.first().map(|e| e.id);
        pages.push(page);
        taken = taken.saturating_add(got);
        match oldest {
            Some(oldest) if got == want && (limit == 0 || taken < limit) => {
                request.before_id = oldest;
            }
            _ => break,
        }
    }
    Ok(pages.into_iter().rev().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_reads_rfc_3339_with_any_offset_and_durations_from_now() {
        let now = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        assert_eq!(
            parse_at("2026-01-01T02:00:00Z", now).unwrap(),
            now + 7_200_000
        );
        assert_eq!(
            parse_at("2026-01-01T03:00:00+01:00", now).unwrap(),
            now + 7_200_000
        );
        assert_eq!(parse_at("+2h", now).unwrap(), now + 7_200_000);
        assert_eq!(parse_at("+1day 6h", now).unwrap(), now + 30 * 3_600_000);
        let err = parse_at("tomorrow", now).unwrap_err().to_string();
        assert!(err.contains("RFC 3339"), "{err}");
        let err = parse_at("+soon", now).unwrap_err().to_string();
        assert!(err.contains("duration"), "{err}");
    }
}
