//! Mapping between the coordinator's own types and the wire (`pitcrew.v1`), in one place.

use pitcrew_proto::v1;
use pitcrew_scheduler::Plan;
use prost::Message;

use crate::engine::{CampaignView, Hold, HostStatus, ScheduleView};
use crate::store::{EventRecord, HostRecord, OperatorRecord, TokenRecord};

/// The default and largest page of any listing.
pub const DEFAULT_PAGE: usize = 500;
pub const MAX_PAGE: usize = 1000;

/// A requested page size: 0 means the default; never more than [`MAX_PAGE`].
pub fn page_size(requested: u32) -> usize {
    match usize::try_from(requested).unwrap_or(MAX_PAGE) {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

fn host_status(h: HostStatus) -> v1::CampaignHostStatus {
    v1::CampaignHostStatus {
        host_id: h.host_id,
        hostname: h.hostname,
        role: h.role.as_str().to_owned(),
        state: h.state.as_str().to_owned(),
        current_step: h.current_step,
        steps_done: u32::try_from(h.steps_done).unwrap_or(u32::MAX),
        steps_total: u32::try_from(h.steps_total).unwrap_or(u32::MAX),
        blocker: h.blocker.unwrap_or_default(),
        last_error: h.last_error.unwrap_or_default(),
    }
}

pub fn campaign_info(view: CampaignView) -> v1::CampaignInfo {
    v1::CampaignInfo {
        id: view.id,
        name: view.name,
        state: view.state.as_str().to_owned(),
        hosts: view.hosts.into_iter().map(host_status).collect(),
        blocker: view.blocker.unwrap_or_default(),
        failures: view.failures,
        max_failures: view.max_failures,
        created_at_ms: view.created_at_ms,
        created_by: view.created_by,
        spec_toml: view.spec_toml,
        host_counts: view
            .counts
            .into_iter()
            .map(|(state, n)| {
                (
                    state.as_str().to_owned(),
                    u32::try_from(n).unwrap_or(u32::MAX),
                )
            })
            .collect(),
        hosts_total: u32::try_from(view.hosts_total).unwrap_or(u32::MAX),
        next_page_token: view
            .next_offset
            .map(|offset| offset.to_string())
            .unwrap_or_default(),
        archived: false,
    }
}

/// A schedule on the wire.
pub fn schedule_info(view: ScheduleView) -> v1::ScheduleInfo {
    let r = view.record;
    v1::ScheduleInfo {
        name: r.name,
        cron: view.cron,
        timezone: view.timezone,
        paused: r.paused,
        next_fire_ms: view.next_fire_ms.unwrap_or(0),
        last_fire_ms: r.last_fire_ms,
        last_run_id: r.last_run_id,
        last_run_state: view.last_run_state.unwrap_or_default(),
        last_note: r.last_note,
        created_by: r.created_by,
        created_at_ms: r.created_at_ms,
        source_name: r.source_name,
        conditions: view.conditions,
        replaced: view.replaced,
        next_fire_local: view.next_fire_local,
    }
}

/// An archived run, as `campaign ls --archived` lists it (no hosts: they stay in the store).
pub fn archived_info(row: crate::store::ArchivedRow) -> v1::CampaignInfo {
    let s = row.summary;
    v1::CampaignInfo {
        id: row.id,
        name: row.name,
        state: s.state,
        failures: s.failures,
        max_failures: s.max_failures,
        created_at_ms: row.created_at_ms,
        created_by: row.created_by,
        host_counts: s.host_counts.into_iter().collect(),
        hosts_total: s.hosts_total,
        archived: true,
        ..Default::default()
    }
}

pub fn plan(plan: &Plan) -> v1::CampaignPlan {
    v1::CampaignPlan {
        name: plan.name.clone(),
        role_order: plan
            .role_order
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect(),
        hosts: plan
            .hosts
            .iter()
            .map(|h| v1::PlannedHost {
                host_id: h.host_id.clone(),
                hostname: h.hostname.clone(),
                role: h.role.as_str().to_owned(),
                wave: h.wave,
                slot: h.slot.clone(),
                steps: h
                    .steps
                    .iter()
                    .map(|s| v1::PlannedStep {
                        phase: s.phase.as_str().to_owned(),
                        host: s.host.clone(),
                        description: s.description.clone(),
                    })
                    .collect(),
            })
            .collect(),
        text: plan.text(),
        warnings: plan.warnings.clone(),
        blockers: plan
            .blockers
            .iter()
            .map(|b| v1::PlanBlocker {
                wave: b.wave,
                host_id: b.host_id.clone(),
                hostname: b.hostname.clone(),
                kind: b.kind.clone(),
                held_by: b.held_by.clone(),
                text: b.text.clone(),
            })
            .collect(),
        refusals: plan
            .refusals
            .iter()
            .map(|r| v1::PlanRefusal {
                host: r.host.clone(),
                serviced: r.serviced.clone(),
                step: r.step.clone(),
                phase: r.phase.as_str().to_owned(),
                rule: r.rule.clone(),
                message: r.message.clone(),
                text: r.to_string(),
            })
            .collect(),
        runnable: plan.runnable(),
        start_at_ms: plan.start_ms,
        first_start_ms: plan.first_start_ms,
    }
}

/// The operator's view of a host: its record, its live session and who holds it.
pub fn host_info(
    host: HostRecord,
    connected: bool,
    live_last_seen_ms: Option<i64>,
    hold: Hold,
) -> v1::HostInfo {
    let facts = (!host.facts.is_empty())
        .then(|| v1::Facts::decode(host.facts.as_slice()).ok())
        .flatten();
    v1::HostInfo {
        host_id: host.host_id,
        hostname: host.hostname,
        role: host.role,
        labels: host.labels.into_iter().collect(),
        connected,
        last_seen_ms: live_last_seen_ms.unwrap_or(host.last_seen_ms),
        facts,
        cert_serial: host.cert_serial,
        maintenance_state: hold.state,
        held_by: hold.holder,
        enrolled_at_ms: host.enrolled_at_ms,
        removed_at_ms: host.removed_at_ms,
    }
}

pub fn token_info(t: TokenRecord) -> v1::TokenInfo {
    v1::TokenInfo {
        id: t.id,
        role: t.role,
        labels: t.labels.into_iter().collect(),
        uses_left: t.uses_left,
        uses_total: t.uses_total,
        expires_at_ms: t.expires_at_ms,
        revoked: t.revoked,
        created_at_ms: t.created_at_ms,
        created_by: t.created_by,
        replace_host: t.replace_host,
    }
}

pub fn operator_info(o: OperatorRecord) -> v1::OperatorInfo {
    v1::OperatorInfo {
        name: o.name,
        role: o.role,
        serial: o.serial,
        not_after_ms: o.not_after_ms,
        revoked: o.revoked,
        created_by: o.created_by,
        created_at_ms: o.created_at_ms,
    }
}

pub fn event(e: EventRecord) -> v1::Event {
    v1::Event {
        id: e.id,
        at_ms: e.at_ms,
        kind: e.kind,
        host_id: e.host_id,
        campaign_id: e.campaign_id,
        step: e.step,
        result: e.result,
        message: e.message,
        actor: e.actor,
        hostname: e.hostname,
    }
}

/// An opaque page token for hosts: the last (hostname, host id) of the page.
pub fn host_page_token(hostname: &str, host_id: &str) -> String {
    format!("{}.{}", hex::encode(hostname), hex::encode(host_id))
}

pub fn parse_host_page_token(token: &str) -> Option<(String, String)> {
    let (name, id) = token.split_once('.')?;
    let name = String::from_utf8(hex::decode(name).ok()?).ok()?;
    let id = String::from_utf8(hex::decode(id).ok()?).ok()?;
    Some((name, id))
}

pub fn notification(d: crate::store::DeliveryRecord) -> v1::Notification {
    v1::Notification {
        id: d.id,
        webhook: d.webhook,
        event: d.event,
        campaign_id: d.campaign_id,
        host_id: d.host_id,
        hostname: d.hostname,
        state: d.state.as_str().to_owned(),
        attempts: d.attempts,
        last_error: d.last_error,
        created_at_ms: d.created_at_ms,
        next_attempt_ms: d.next_attempt_ms,
        delivered_at_ms: d.delivered_at_ms,
    }
}
