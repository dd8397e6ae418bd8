//! `pitcrew report compliance`: per host, what it reports of itself (agent version, reboot
//! required, pending package updates) and when each campaign last succeeded on it — as a
//! table, as JSON, or as CSV with one row per host and campaign (a host no campaign has
//! succeeded on has one row with the campaign columns empty).

use clap::Subcommand;
use pitcrew_proto::v1;

use super::connect::{ConnectArgs, admin, status};
use super::hosts::HostsFilter;
use super::output::{self, Format};

#[derive(Clone, Subcommand)]
pub enum ReportCommand {
    /// Patch compliance per host; the filters are those of `hosts ls`.
    Compliance(HostsFilter),
}

pub async fn report(
    connect: &ConnectArgs,
    format: Format,
    command: ReportCommand,
) -> anyhow::Result<()> {
    let ReportCommand::Compliance(filter) = command;
    let mut client = admin(connect).await?;
    let mut rows = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .compliance_report(filter.request(page_token))
            .await
            .map_err(status)?
            .into_inner();
        rows.extend(page.rows);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    match format {
        Format::Json => output::json(&rows),
        Format::Csv => csv(&rows),
        Format::Table => {
            table(&rows);
            Ok(())
        }
    }
}

/// What a row says of pending updates: a count, or "?" when the host has not told.
fn pending(facts: &v1::Facts) -> String {
    facts
        .pending_updates
        .map_or_else(|| "?".to_owned(), |n| n.to_string())
}

fn table(rows: &[v1::ComplianceRow]) {
    let mut table = output::table(&[
        "hostname",
        "role",
        "agent",
        "reboot",
        "updates",
        "last seen",
        "last success",
    ]);
    for row in rows {
        let host = row.host.clone().unwrap_or_default();
        let facts = host.facts.clone().unwrap_or_default();
        let successes: Vec<String> = row
            .last_successes
            .iter()
            .map(|s| format!("{} {}", s.campaign, output::clock(s.finished_at_ms)))
            .collect();
        table.add_row(vec![
            host.hostname,
            host.role,
            facts.agent_version.clone(),
            if facts.reboot_required {
                "required".into()
            } else {
                "-".into()
            },
            pending(&facts),
            if host.connected {
                "connected".into()
            } else {
                output::ago(host.last_seen_ms)
            },
            if successes.is_empty() {
                "never".into()
            } else {
                successes.join("\n")
            },
        ]);
    }
    crate::say!("{table}");
}

/// The CSV columns, in order.
const CSV_HEADER: [&str; 11] = [
    "hostname",
    "host_id",
    "role",
    "agent_version",
    "reboot_required",
    "pending_updates",
    "connected",
    "last_seen",
    "campaign",
    "run_id",
    "succeeded_at",
];

fn csv(rows: &[v1::ComplianceRow]) -> anyhow::Result<()> {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(CSV_HEADER)?;
    for row in rows {
        let host = row.host.clone().unwrap_or_default();
        let facts = host.facts.clone().unwrap_or_default();
        let pending = facts
            .pending_updates
            .map(|n| n.to_string())
            .unwrap_or_default();
        let fixed = [
            host.hostname.clone(),
            host.host_id.clone(),
            host.role.clone(),
            facts.agent_version.clone(),
            facts.reboot_required.to_string(),
            pending,
            host.connected.to_string(),
            rfc3339(host.last_seen_ms),
        ];
        let successes: Vec<[String; 3]> = if row.last_successes.is_empty() {
            vec![Default::default()]
        } else {
            row.last_successes
                .iter()
                .map(|s| {
                    [
                        s.campaign.clone(),
                        s.run_id.clone(),
                        rfc3339(s.finished_at_ms),
                    ]
                })
                .collect()
        };
        for success in successes {
            // Strings from agents pass through the terminal-safe filter here too.
            out.write_record(
                fixed
                    .iter()
                    .chain(success.iter())
                    .map(|field| output::clean(field).into_owned()),
            )?;
        }
    }
    let bytes = out.into_inner()?;
    crate::say_raw!("{}", String::from_utf8_lossy(&bytes));
    Ok(())
}

/// A time for CSV: RFC 3339 in UTC, empty when never.
fn rfc3339(at_ms: i64) -> String {
    if at_ms <= 0 {
        return String::new();
    }
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000);
    at.ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
