//! The campaign runtime: the loop around the pure scheduler, and the Admin calls on campaigns
//! and manual maintenance.
//!
//! One loop owns every change to campaign state. Each turn it builds the fleet view (store +
//! live sessions), asks `pitcrew_scheduler::decide` what to do, applies each decision to the run
//! and **commits it to the store before acting on it** (write-ahead, DESIGN.md invariant 8),
//! then sends the actions. Results, operator commands and host changes are applied the same
//! way and wake the loop; it also wakes at the scheduler's `wake_at_ms` (deadlines, windows,
//! dwell). After a crash, the runs are read back and every in-flight action is re-sent with its
//! persisted id; agents answer ids they already ran from their journal (invariant 9).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pitcrew_proto::v1;
use pitcrew_scheduler::{
    self as scheduler, CampaignRun, CampaignSpec, CampaignState, Decision, Dispatch, Event, Fleet,
    HostView, ManualState, Role,
};
use prost::Message;
use tonic::Status;

use crate::server::Coordinator;
use crate::store::{ActionRecord, CampaignRecord};

/// The store key holding manual maintenance (`pitcrew maintenance enable|disable`).
const MANUAL_KEY: &str = "manual_maintenance";
/// The longest the loop sleeps without a reason (a safety net; it is woken by events).
const IDLE_WAKE: Duration = Duration::from_secs(30);

/// A campaign with what the run itself does not hold.
#[derive(Debug, Clone)]
struct Entry {
    run: CampaignRun,
    spec_toml: String,
    created_by: String,
}

/// All campaign and manual-maintenance state, behind one lock: one writer at a time.
#[derive(Default)]
pub struct Engine {
    inner: Mutex<EngineState>,
}

#[derive(Default)]
struct EngineState {
    entries: Vec<Entry>,
    manual: BTreeMap<String, ManualState>,
    loaded: bool,
}

fn lock(engine: &Engine) -> std::sync::MutexGuard<'_, EngineState> {
    engine.inner.lock().unwrap_or_else(|p| p.into_inner())
}

fn internal(what: &str, error: impl std::fmt::Display) -> Status {
    tracing::error!(message = "campaign runtime failure", what, %error);
    Status::internal(format!("{what}: {error}"))
}

impl Engine {
    /// Reads every campaign and the manual maintenance table back from the store.
    fn load(&self, c: &Coordinator) -> Result<(), Status> {
        let mut state = lock(self);
        if state.loaded {
            return Ok(());
        }
        let mut entries = Vec::new();
        for record in c.store.campaigns()? {
            let run: CampaignRun = serde_json::from_str(&record.state_json).map_err(|e| {
                internal(
                    &format!("campaign {} in the store is unreadable", record.id),
                    e,
                )
            })?;
            entries.push(Entry {
                run,
                spec_toml: record.spec_toml,
                created_by: record.created_by,
            });
        }
        let manual = match c.store.value(MANUAL_KEY)? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| internal("manual maintenance in the store is unreadable", e))?,
            None => BTreeMap::new(),
        };
        *state = EngineState {
            entries,
            manual,
            loaded: true,
        };
        Ok(())
    }
}

/// Persists one campaign run (the write-ahead commit).
fn persist(c: &Coordinator, entry: &Entry) -> Result<(), Status> {
    let state_json =
        serde_json::to_string(&entry.run).map_err(|e| internal("serialising a campaign", e))?;
    c.store.put_campaign(&CampaignRecord {
        id: entry.run.id.clone(),
        name: entry.run.spec.name.clone(),
        spec_toml: entry.spec_toml.clone(),
        state_json,
        created_at_ms: entry.run.created_at_ms,
        created_by: entry.created_by.clone(),
    })?;
    Ok(())
}

fn persist_manual(c: &Coordinator, manual: &BTreeMap<String, ManualState>) -> Result<(), Status> {
    let text =
        serde_json::to_string(manual).map_err(|e| internal("serialising manual maintenance", e))?;
    c.store.put_value(MANUAL_KEY, &text)?;
    Ok(())
}

/// The scheduler's view of every enrolled host: role and labels from enrollment, connection from
/// the live sessions, boot id and policy from the latest facts.
fn fleet(c: &Coordinator, manual: &BTreeMap<String, ManualState>) -> Result<Fleet, Status> {
    let mut hosts = Vec::new();
    for record in c.store.hosts()? {
        let Some(role) = Role::parse(&record.role) else {
            continue;
        };
        let facts = if record.facts.is_empty() {
            None
        } else {
            v1::Facts::decode(record.facts.as_slice()).ok()
        };
        let connected = c.registry.is_connected(&record.host_id);
        hosts.push(HostView {
            id: record.host_id.clone(),
            hostname: record.hostname.clone(),
            role,
            labels: record.labels.clone(),
            connected,
            // Liveness is the session itself: heartbeats keep it, silence closes it.
            healthy: connected,
            boot_id: facts
                .as_ref()
                .map(|f| f.boot_id.clone())
                .unwrap_or_default(),
            policy: facts
                .and_then(|f| f.policy)
                .map(|p| pitcrew_proto::policy::Policy::from_proto(&p)),
        });
    }
    let mut fleet = Fleet::from_hosts(hosts);
    fleet.manual = manual.clone();
    Ok(fleet)
}

/// Starts the runtime: loads the store, re-sends what was in flight, then loops.
pub fn start(c: Arc<Coordinator>) {
    if let Err(status) = c.engine.load(&c) {
        tracing::error!(message = "cannot load campaigns; the runtime is not started", error = %status.message());
        return;
    }
    if let Err(status) = reconcile(&c) {
        tracing::error!(message = "reconciling in-flight actions failed", error = %status.message());
    }
    tokio::spawn(async move {
        let mut changes = c.registry.subscribe_changes();
        reconnect_grace(&c, &mut changes).await;
        loop {
            let wake = match turn(&c).await {
                Ok(wake) => wake,
                Err(status) => {
                    tracing::error!(message = "campaign turn failed", error = %status.message());
                    Some(pitcrew_proto::now_ms() + 1000)
                }
            };
            let sleep = wake
                .map(|at| {
                    Duration::from_millis(
                        u64::try_from((at - pitcrew_proto::now_ms()).max(0)).unwrap_or(0),
                    )
                })
                .unwrap_or(IDLE_WAKE)
                .min(IDLE_WAKE);
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    });
}

/// After a restart, waits (boundedly) for the agents running in-flight actions to reconnect
/// and replay their results, so a coordinator outage longer than a step's deadline does not
/// fail hosts whose work actually finished.
async fn reconnect_grace(c: &Coordinator, changes: &mut tokio::sync::watch::Receiver<u64>) {
    let targets: Vec<String> = lock(&c.engine)
        .entries
        .iter()
        .flat_map(|e| e.run.in_flight_dispatches())
        .map(|d| d.target_host)
        .collect();
    if targets.is_empty() {
        return;
    }
    let grace = Duration::from_secs(u64::from(c.config.heartbeat_timeout_seconds) * 2);
    tracing::info!(
        message = "waiting for agents with in-flight actions to reconnect",
        hosts = targets.len(),
        grace_s = grace.as_secs()
    );
    let _ = tokio::time::timeout(grace, async {
        while !targets.iter().all(|h| c.registry.is_connected(h)) {
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
}

/// After a restart: every in-flight action has an action record (so reconnecting agents get it
/// re-sent), and results stored before a crash but not yet applied are applied now.
fn reconcile(c: &Coordinator) -> Result<(), Status> {
    let mut state = lock(&c.engine);
    let manual = state.manual.clone();
    let fleet = fleet(c, &manual)?;
    let now = pitcrew_proto::now_ms();
    for entry in &mut state.entries {
        for dispatch in entry.run.in_flight_dispatches() {
            record_dispatch(c, &dispatch)?;
            let stored = c.store.action(&dispatch.action_id)?.and_then(|r| r.result);
            if let Some(bytes) = stored
                && let Ok(result) = v1::ActionResult::decode(bytes.as_slice())
            {
                let boot_id = fleet
                    .hosts
                    .get(&dispatch.target_host)
                    .map(|h| h.boot_id.clone());
                let event = finished_event(&result, boot_id);
                if scheduler::apply(&mut entry.run, &fleet, &event, now).is_ok() {
                    persist(c, entry)?;
                }
            }
        }
    }
    Ok(())
}

/// Records a dispatch in the actions table (idempotent), before it is sent.
fn record_dispatch(c: &Coordinator, d: &Dispatch) -> Result<(), Status> {
    c.store.insert_action(&ActionRecord {
        action_id: d.action_id.clone(),
        host_id: d.target_host.clone(),
        campaign_id: d.campaign.clone(),
        request: d.to_request().encode_to_vec(),
        result: None,
        created_at_ms: pitcrew_proto::now_ms(),
    })?;
    Ok(())
}

fn finished_event(result: &v1::ActionResult, boot_id: Option<String>) -> Event {
    Event::ActionFinished {
        action_id: result.action_id.clone(),
        outcome: scheduler::Outcome::from_proto(result.outcome),
        message: result.message.clone(),
        boot_id: boot_id.filter(|b| !b.is_empty()),
    }
}

/// Something to do on the wire once the decision is committed.
enum Effect {
    Send(Dispatch),
    Cancel { host: String, action_id: String },
}

/// One turn: decide, commit each decision, then act. Returns when to wake without an event.
async fn turn(c: &Coordinator) -> Result<Option<i64>, Status> {
    let mut effects = Vec::new();
    let mut committed = false;
    let wake = {
        let mut state = lock(&c.engine);
        let manual = state.manual.clone();
        let fleet = fleet(c, &manual)?;
        let now = pitcrew_proto::now_ms();
        let runs: Vec<CampaignRun> = state.entries.iter().map(|e| e.run.clone()).collect();
        let decided = scheduler::decide(&fleet, &runs, now);
        for decision in decided.decisions {
            let Some(entry) = state
                .entries
                .iter_mut()
                .find(|e| e.run.id == decision.campaign())
            else {
                continue;
            };
            // A failing host's action may still be running on its agent: stop it.
            let cancel = match &decision {
                Decision::FailHost { host, .. } => entry
                    .run
                    .host(host)
                    .and_then(|h| h.in_flight.as_ref())
                    .map(|f| Effect::Cancel {
                        host: f.target_host.clone(),
                        action_id: f.action_id.clone(),
                    }),
                _ => None,
            };
            if let Err(error) = scheduler::apply(
                &mut entry.run,
                &fleet,
                &Event::Decision(decision.clone()),
                now,
            ) {
                tracing::warn!(message = "a decision could not be applied; deciding again", campaign = %entry.run.id, %error);
                break;
            }
            persist(c, entry)?;
            committed = true;
            if let Decision::Dispatch(d) = &decision {
                record_dispatch(c, d)?;
            }
            log_decision(c, &entry.run, &decision);
            effects.extend(cancel);
            if let Decision::Dispatch(d) = decision {
                effects.push(Effect::Send(d));
            }
        }
        decided.wake_at_ms
    };
    for effect in effects {
        match effect {
            Effect::Send(d) => {
                let message = v1::CoordinatorMessage {
                    msg: Some(v1::coordinator_message::Msg::Action(d.to_request())),
                };
                // Not connected: it is re-sent from the actions table when the agent returns.
                c.registry.send(&d.target_host, message).await;
            }
            Effect::Cancel { host, action_id } => {
                let message = v1::CoordinatorMessage {
                    msg: Some(v1::coordinator_message::Msg::Cancel(v1::CancelAction {
                        action_id,
                    })),
                };
                c.registry.send(&host, message).await;
            }
        }
    }
    if committed {
        c.registry.notify_campaigns();
        // A committed decision can enable the next one (a start, then its first step).
        return Ok(Some(pitcrew_proto::now_ms()));
    }
    Ok(wake)
}

/// Writes a decision to the event log, in the words of the runbooks.
fn log_decision(c: &Coordinator, run: &CampaignRun, decision: &Decision) {
    let hostname = |id: &str| {
        run.host(id)
            .map(|h| h.hostname.clone())
            .unwrap_or_else(|| id.to_owned())
    };
    let result = match decision {
        Decision::StartHost { host, slot, .. } => c.events.host(
            host,
            &run.id,
            "start",
            "entering",
            &format!("{} enters maintenance (slot {slot})", hostname(host)),
        ),
        Decision::Dispatch(d) => c.events.host(
            &d.host,
            &run.id,
            &d.action_id,
            "sent",
            &format!(
                "{} on {}: {}",
                d.step_label,
                hostname(&d.target_host),
                pitcrew_proto::describe::action(Some(&d.action.to_proto()))
            ),
        ),
        Decision::ReleaseHost { host, .. } => c.events.host(
            host,
            &run.id,
            "release",
            "running",
            &format!("{} is back in service (slot released)", hostname(host)),
        ),
        Decision::FailHost { host, reason, .. } => c.events.host(
            host,
            &run.id,
            "fail",
            "failed",
            &format!("{} failed and keeps its slot: {reason}", hostname(host)),
        ),
        Decision::PauseCampaign { reason, .. } => c.events.audit(
            "scheduler",
            "",
            &run.id,
            &format!("campaign paused: {reason}"),
        ),
        Decision::CompleteCampaign { .. } => {
            c.events
                .audit("scheduler", "", &run.id, "campaign completed")
        }
        Decision::FinishCancel { .. } => {
            c.events
                .audit("scheduler", "", &run.id, "campaign cancelled")
        }
    };
    if let Err(error) = result {
        tracing::error!(message = "cannot write the event log", %error);
    }
}

/// The host a campaign action is serviced for (it may run on another host, e.g. a drain run on
/// a manager), while the action is in flight.
pub fn serviced_host(c: &Coordinator, campaign_id: &str, action_id: &str) -> Option<String> {
    let state = lock(&c.engine);
    let entry = state.entries.iter().find(|e| e.run.id == campaign_id)?;
    entry
        .run
        .hosts
        .iter()
        .find(|h| {
            h.in_flight
                .as_ref()
                .is_some_and(|f| f.action_id == action_id)
        })
        .map(|h| h.host_id.clone())
}

/// Feeds an agent's result to the campaign that sent it (called for every result, repeats
/// included: a result stored just before a crash must still reach the run).
pub fn on_result(
    c: &Coordinator,
    campaign_id: &str,
    reporting_host: &str,
    result: &v1::ActionResult,
) {
    if campaign_id.is_empty() {
        return;
    }
    let mut state = lock(&c.engine);
    let manual = state.manual.clone();
    let Ok(fleet) = fleet(c, &manual) else { return };
    let Some(entry) = state.entries.iter_mut().find(|e| e.run.id == campaign_id) else {
        return;
    };
    let boot_id = fleet.hosts.get(reporting_host).map(|h| h.boot_id.clone());
    let event = finished_event(result, boot_id);
    match scheduler::apply(&mut entry.run, &fleet, &event, pitcrew_proto::now_ms()) {
        Ok(()) => {
            if let Err(status) = persist(c, entry) {
                tracing::error!(message = "cannot persist a result", error = %status.message());
            }
        }
        Err(scheduler::ApplyError::StaleResult(_)) => {}
        Err(error) => {
            tracing::warn!(message = "a result could not be applied", campaign = %campaign_id, %error)
        }
    }
    drop(state);
    c.registry.changed();
    c.registry.notify_campaigns();
}

fn parse_spec(text: &str, source: &str) -> Result<CampaignSpec, Status> {
    let source = if source.is_empty() {
        "campaign.toml"
    } else {
        source
    };
    CampaignSpec::parse(text, source).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn new_campaign_id() -> String {
    format!("c-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// `pitcrew campaign plan`: a dry run over the current fleet.
pub fn plan(c: &Coordinator, r: &v1::PlanCampaignRequest) -> Result<v1::CampaignPlan, Status> {
    c.engine.load(c)?;
    let spec = parse_spec(&r.spec_toml, &r.source_name)?;
    let manual = lock(&c.engine).manual.clone();
    let fleet = fleet(c, &manual)?;
    let hosts: Vec<HostView> = fleet.hosts.values().cloned().collect();
    let plan = scheduler::plan(&spec, "(plan)", &hosts, pitcrew_proto::now_ms())
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    Ok(v1::CampaignPlan {
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
    })
}

/// `pitcrew campaign run`: checks the plan, then commits the new run.
pub fn create(
    c: &Coordinator,
    operator: &str,
    r: &v1::CreateCampaignRequest,
) -> Result<v1::CampaignInfo, Status> {
    c.engine.load(c)?;
    let spec = parse_spec(&r.spec_toml, &r.source_name)?;
    let id = new_campaign_id();
    let now = pitcrew_proto::now_ms();
    let entry = {
        let mut state = lock(&c.engine);
        let fleet = fleet(c, &state.manual)?;
        let hosts: Vec<HostView> = fleet.hosts.values().cloned().collect();
        // The same refusals as `plan`: nothing that cannot run is started.
        scheduler::plan(&spec, &id, &hosts, now)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let run = CampaignRun::new(&id, &spec, &hosts, now)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let entry = Entry {
            run,
            spec_toml: r.spec_toml.clone(),
            created_by: operator.to_owned(),
        };
        persist(c, &entry)?;
        state.entries.push(entry.clone());
        entry
    };
    c.events.audit(
        operator,
        "",
        &id,
        &format!(
            "started campaign {} ({}) over {} hosts",
            spec.name,
            id,
            entry.run.hosts.len()
        ),
    )?;
    c.registry.changed();
    c.registry.notify_campaigns();
    get(c, &id)
}

pub fn list(c: &Coordinator) -> Result<v1::ListCampaignsResponse, Status> {
    c.engine.load(c)?;
    let ids: Vec<String> = lock(&c.engine)
        .entries
        .iter()
        .map(|e| e.run.id.clone())
        .collect();
    let campaigns = ids
        .iter()
        .map(|id| get(c, id))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(v1::ListCampaignsResponse { campaigns })
}

/// A campaign as the operator sees it, with every current blocker.
pub fn get(c: &Coordinator, id: &str) -> Result<v1::CampaignInfo, Status> {
    c.engine.load(c)?;
    let state = lock(&c.engine);
    let entry = state
        .entries
        .iter()
        .find(|e| e.run.id == id)
        .ok_or_else(|| Status::not_found(format!("no campaign has the id {id:?}")))?;
    let fleet = fleet(c, &state.manual)?;
    let runs: Vec<CampaignRun> = state.entries.iter().map(|e| e.run.clone()).collect();
    let decided = scheduler::decide(&fleet, &runs, pitcrew_proto::now_ms());
    let run = &entry.run;
    let hosts = run
        .hosts
        .iter()
        .map(|h| {
            let total = h.steps.len();
            let done = if h.state.finished() {
                total
            } else {
                h.step.min(total)
            };
            v1::CampaignHostStatus {
                host_id: h.host_id.clone(),
                hostname: h.hostname.clone(),
                role: h.role.as_str().to_owned(),
                state: h.state.as_str().to_owned(),
                current_step: if h.state.in_progress() {
                    h.current_step()
                        .map(|s| s.label.clone())
                        .unwrap_or_default()
                } else {
                    String::new()
                },
                steps_done: u32::try_from(done).unwrap_or(u32::MAX),
                steps_total: u32::try_from(total).unwrap_or(u32::MAX),
                blocker: decided
                    .blocker_for(&run.id, &h.host_id)
                    .map(|b| b.to_string())
                    .unwrap_or_default(),
                last_error: h.last_error.clone().unwrap_or_default(),
            }
        })
        .collect();
    Ok(v1::CampaignInfo {
        id: run.id.clone(),
        name: run.spec.name.clone(),
        state: run.state.as_str().to_owned(),
        hosts,
        blocker: decided
            .campaign_blocker(&run.id)
            .map(|b| b.to_string())
            .unwrap_or_default(),
        failures: run.failures,
        max_failures: run.spec.max_failures,
        created_at_ms: run.created_at_ms,
        created_by: entry.created_by.clone(),
        spec_toml: entry.spec_toml.clone(),
    })
}

pub fn is_final(state: &str) -> bool {
    state == CampaignState::Completed.as_str() || state == CampaignState::Cancelled.as_str()
}

/// Applies an operator's event to one campaign, committed and audited.
fn operate(
    c: &Coordinator,
    operator: &str,
    id: &str,
    event: Event,
    what: &str,
) -> Result<v1::CampaignInfo, Status> {
    c.engine.load(c)?;
    {
        let mut state = lock(&c.engine);
        let manual = state.manual.clone();
        let fleet = fleet(c, &manual)?;
        let entry = state
            .entries
            .iter_mut()
            .find(|e| e.run.id == id)
            .ok_or_else(|| Status::not_found(format!("no campaign has the id {id:?}")))?;
        scheduler::apply(&mut entry.run, &fleet, &event, pitcrew_proto::now_ms())
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        persist(c, entry)?;
    }
    c.events.audit(operator, event_host(&event), id, what)?;
    c.registry.changed();
    c.registry.notify_campaigns();
    get(c, id)
}

fn event_host(event: &Event) -> &str {
    match event {
        Event::Retry { host } | Event::Skip { host } | Event::Release { host } => host,
        _ => "",
    }
}

pub fn control(
    c: &Coordinator,
    operator: &str,
    r: &v1::ControlCampaignRequest,
) -> Result<v1::CampaignInfo, Status> {
    let (event, what) = match v1::CampaignControl::try_from(r.control) {
        Ok(v1::CampaignControl::Pause) => (
            Event::Pause {
                reason: format!("paused by {operator}"),
            },
            "paused the campaign",
        ),
        Ok(v1::CampaignControl::Resume) => (Event::Resume, "resumed the campaign"),
        Ok(v1::CampaignControl::Cancel) => (Event::Cancel, "cancelled the campaign"),
        _ => {
            return Err(Status::invalid_argument(
                "control must be pause, resume or cancel",
            ));
        }
    };
    operate(c, operator, &r.id, event, what)
}

pub fn control_host(
    c: &Coordinator,
    operator: &str,
    r: &v1::ControlHostRequest,
) -> Result<v1::CampaignInfo, Status> {
    let host = crate::server::admin::resolve_host(c, &r.host)?;
    let name = host.hostname.clone();
    let (event, what) = match v1::HostControl::try_from(r.control) {
        Ok(v1::HostControl::Retry) => (
            Event::Retry { host: host.host_id },
            format!("retried host {name}"),
        ),
        Ok(v1::HostControl::Skip) => (
            Event::Skip { host: host.host_id },
            format!("skipped host {name}"),
        ),
        Ok(v1::HostControl::Release) => (
            Event::Release { host: host.host_id },
            format!("released host {name} by hand"),
        ),
        _ => {
            return Err(Status::invalid_argument(
                "control must be retry, skip or release",
            ));
        }
    };
    operate(c, operator, &r.campaign_id, event, &what)
}

/// The maintenance state of a host and who holds it, for host listings.
pub fn host_hold(c: &Coordinator, host_id: &str) -> (String, String) {
    if c.engine.load(c).is_err() {
        return ("unknown".to_owned(), String::new());
    }
    let state = lock(&c.engine);
    if let Some(m) = state.manual.get(host_id) {
        return (m.phase.to_string(), "manual".to_owned());
    }
    for entry in &state.entries {
        if let Some(h) = entry.run.host(host_id)
            && h.state.holds_slot()
        {
            return (h.state.as_str().to_owned(), entry.run.id.clone());
        }
    }
    ("running".to_owned(), String::new())
}

/// `pitcrew maintenance enable|disable HOST`, following the hyper-converged runbook's states:
/// Running → Entering → Maintenance, and Maintenance → Leaving → Running, each logged. Manual
/// maintenance holds the same slots as campaigns (the one manager slot included).
pub fn set_maintenance(
    c: &Coordinator,
    operator: &str,
    host_id: &str,
    enable: bool,
) -> Result<(), Status> {
    c.engine.load(c)?;
    let now = pitcrew_proto::now_ms();
    let mut state = lock(&c.engine);
    let fleet = fleet(c, &state.manual)?;
    let hostname = fleet
        .hosts
        .get(host_id)
        .map(|h| h.hostname.clone())
        .unwrap_or_else(|| host_id.to_owned());
    if enable {
        let runs: Vec<CampaignRun> = state.entries.iter().map(|e| e.run.clone()).collect();
        let (id, entering) = scheduler::manual_enable(&fleet, &runs, host_id, operator, now)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        state.manual.insert(id.clone(), entering.clone());
        persist_manual(c, &state.manual)?;
        c.events.host(
            &id,
            "",
            "maintenance",
            "entering",
            &format!("{hostname}: entering maintenance (enabled by {operator})"),
        )?;
        let maintenance = entering
            .entered(&hostname, now)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        state.manual.insert(id.clone(), maintenance);
        persist_manual(c, &state.manual)?;
        c.events.host(
            &id,
            "",
            "maintenance",
            "maintenance",
            &format!("{hostname}: status is now Maintenance Mode"),
        )?;
        c.events.audit(
            operator,
            &id,
            "",
            &format!("enabled maintenance on {hostname}"),
        )?;
    } else {
        let current = state.manual.get(host_id).cloned().ok_or_else(|| {
            Status::failed_precondition(format!("{hostname} is not in manual maintenance"))
        })?;
        let leaving = current
            .leave(&hostname, now)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        state.manual.insert(host_id.to_owned(), leaving.clone());
        persist_manual(c, &state.manual)?;
        c.events.host(
            host_id,
            "",
            "maintenance",
            "leaving",
            &format!("{hostname}: leaving maintenance (disabled by {operator})"),
        )?;
        leaving
            .left(&hostname)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        state.manual.remove(host_id);
        persist_manual(c, &state.manual)?;
        c.events.host(
            host_id,
            "",
            "maintenance",
            "running",
            &format!("{hostname}: status is now Running"),
        )?;
        c.events.audit(
            operator,
            host_id,
            "",
            &format!("disabled maintenance on {hostname}"),
        )?;
    }
    drop(state);
    c.registry.changed();
    c.registry.notify_campaigns();
    Ok(())
}
