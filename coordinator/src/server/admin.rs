//! `Admin`: the operator's API (hosts, tokens, one-off actions, campaigns, maintenance, events,
//! operators). Every call has passed the role gate (`roles.rs`): a registered, valid operator
//! certificate whose role is enough for the method; agents are refused. Each handler starts
//! from the [`Caller`](super::roles::Caller) the gate admitted, and every change is audited
//! with that operator's name. Streams end when their operator's certificate is revoked.
//!
//! This layer checks and maps requests and answers; campaign state is the engine's, host and
//! event listings are read page by page from the store, and nothing here recomputes the fleet.

use std::collections::BTreeMap;
use std::sync::Arc;

use pitcrew_proto::v1::{self, admin_server::Admin};
use pitcrew_scheduler::{CampaignRun, CampaignSpec, Role};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::Coordinator;
use super::convert::{self, page_size};
use super::operators;
use super::roles::{GuardedStream, caller, until_revoked};
use crate::engine::EngineError;
use crate::engine::{CampaignControl, HostControl, HostEdit, HostPage};
use crate::store::{
    ActionRecord, DeliveryFilter, DeliveryState, EventFilter, HostFilter, HostLookup, HostRecord,
    TokenRecord,
};
use crate::tokens;

/// Longest accepted token lifetime: a join token is for installing, not a standing credential.
const MAX_TOKEN_TTL_SECONDS: u64 = 30 * 24 * 3600;

/// After an interrupted `pitcrew do` is cancelled, how long its host stays held waiting for
/// the agent to confirm the action stopped.
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

pub struct AdminService {
    coordinator: Arc<Coordinator>,
}

impl AdminService {
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        AdminService { coordinator }
    }
}

/// The shortest id prefix a host may be named by (shorter ones would match too often).
const MIN_ID_PREFIX: usize = 4;
/// How many candidates an ambiguous id prefix lists.
const PREFIX_CANDIDATES: u32 = 8;

/// Finds a host by id, by unique hostname, or by a unique prefix of its id (one indexed lookup
/// each, in that order). A removed host is found by its id, or by its name when no enrolled
/// host has that name; a prefix finds enrolled hosts only.
pub async fn resolve_host(c: &Coordinator, name: &str) -> Result<HostRecord, Status> {
    // A prefix finds enrolled hosts only, and only when nothing else matched.
    let prefix_limit = (name.len() >= MIN_ID_PREFIX).then_some(PREFIX_CANDIDATES + 1);
    let HostLookup {
        by_id,
        by_name,
        removed,
        by_prefix,
    } = c.store.find_host(name.to_owned(), prefix_limit).await?;
    if let Some(host) = by_id.or(removed) {
        return Ok(host);
    }
    let mut matches = by_name.into_iter();
    match (matches.next(), matches.next()) {
        (Some(host), None) => Ok(host),
        (Some(_), Some(_)) => Err(Status::invalid_argument(format!(
            "several hosts are named {name:?}; use the host id"
        ))),
        (None, _) => by_id_prefix(name, by_prefix),
    }
}

/// The one host an id prefix names, or an error listing the candidates.
fn by_id_prefix(name: &str, mut found: Vec<HostRecord>) -> Result<HostRecord, Status> {
    if found.len() == 1 {
        return Ok(found.remove(0));
    }
    if found.is_empty() {
        return Err(Status::not_found(format!(
            "no host has the id or hostname {name:?} (nor an id starting with it)"
        )));
    }
    let more = found.len() > PREFIX_CANDIDATES as usize;
    let mut candidates: Vec<String> = found
        .iter()
        .take(PREFIX_CANDIDATES as usize)
        .map(|h| format!("{} ({})", h.host_id, h.hostname))
        .collect();
    if more {
        candidates.push("...".into());
    }
    Err(Status::invalid_argument(format!(
        "the id prefix {name:?} is ambiguous: it starts {}; give more of the id",
        candidates.join(", ")
    )))
}

/// The operator's view of some hosts (live session and holder included).
/// One page of hosts for a listing request (ListHosts, ComplianceReport), and the token of the
/// next page (empty at the end). Filters the store cannot apply (live session, holder) may
/// thin a page: it reads on until the page is full or the fleet ends.
async fn list_host_page(
    c: &Coordinator,
    r: v1::ListHostsRequest,
) -> Result<(Vec<v1::HostInfo>, String), Status> {
    let want = page_size(r.page_size);
    let mut filter = host_filter(&r, want)?;
    let connected = v1::ConnectedFilter::try_from(r.connected).unwrap_or_default();
    let mut out = Vec::new();
    let mut last = None;
    let mut exhausted = false;
    while out.len() < want && !exhausted {
        let page = c.store.list_hosts(filter.clone()).await?;
        exhausted = page.len() < want;
        let Some(tail) = page.last() else { break };
        filter.after = Some((tail.hostname.clone(), tail.host_id.clone()));
        for info in host_infos(c, page).await? {
            if out.len() == want {
                exhausted = false;
                break;
            }
            last = Some((info.hostname.clone(), info.host_id.clone()));
            let live_ok = match connected {
                v1::ConnectedFilter::Any => true,
                v1::ConnectedFilter::Connected => info.connected,
                v1::ConnectedFilter::Disconnected => !info.connected,
            };
            if live_ok && (r.state.is_empty() || info.maintenance_state == r.state) {
                out.push(info);
            }
        }
    }
    let next_page_token = match (exhausted, last) {
        (false, Some((name, id))) => convert::host_page_token(&name, &id),
        _ => String::new(),
    };
    Ok((out, next_page_token))
}

async fn host_infos(
    c: &Coordinator,
    records: Vec<HostRecord>,
) -> Result<Vec<v1::HostInfo>, Status> {
    let ids = records.iter().map(|h| h.host_id.clone()).collect();
    let holds = c.engine.holds(ids).await?;
    Ok(records
        .into_iter()
        .zip(holds)
        .map(|(host, hold)| {
            let connected = c.registry.is_connected(&host.host_id);
            let seen = c.registry.last_seen(&host.host_id);
            convert::host_info(host, connected, seen, hold)
        })
        .collect())
}

/// One page of the compliance report (the `ComplianceReport` rpc and the dashboard's
/// compliance page): each host as `hosts ls` shows it (its facts: agent version, reboot
/// required, pending updates) with when each campaign last succeeded on it.
pub async fn compliance_page(
    c: &Coordinator,
    request: v1::ListHostsRequest,
) -> Result<v1::ComplianceReportResponse, Status> {
    let (hosts, next_page_token) = list_host_page(c, request).await?;
    let ids = hosts.iter().map(|h| h.host_id.clone()).collect();
    let successes = c.engine.last_successes(ids).await?;
    let rows = hosts
        .into_iter()
        .zip(successes)
        .map(|(host, successes)| v1::ComplianceRow {
            host: Some(host),
            last_successes: successes
                .into_iter()
                .map(|s| v1::CampaignSuccess {
                    campaign: s.campaign,
                    run_id: s.run_id,
                    finished_at_ms: s.finished_at_ms,
                })
                .collect(),
        })
        .collect();
    Ok(v1::ComplianceReportResponse {
        rows,
        next_page_token,
    })
}

/// Validates a role name given by an operator.
pub fn parse_role(role: &str) -> Result<String, Status> {
    match role {
        "worker" | "manager" => Ok(role.to_owned()),
        other => Err(Status::invalid_argument(format!(
            "role must be worker or manager, not {other:?}"
        ))),
    }
}

fn validate_labels(
    labels: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, Status> {
    let mut out = BTreeMap::new();
    for (key, value) in labels {
        let ok = !key.is_empty()
            && key.len() <= 63
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            && value.len() <= 253
            && !value.chars().any(char::is_control);
        if !ok {
            return Err(Status::invalid_argument(format!(
                "label {key:?}={value:?} is not valid (key: letters, digits, - _ . /)"
            )));
        }
        out.insert(key.clone(), value.clone());
    }
    Ok(out)
}

/// Checks an action id an operator chose (the agent journals by it). Campaign steps' ids always
/// hold a `:` and operators' never do, so an operator cannot pre-empt a step's journal entry.
fn valid_action_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Parses a campaign file and checks the webhooks its `[notify]` names against those of
/// coordinator.toml (a campaign chooses among them by name; it can never name an address).
fn parse_spec(c: &Coordinator, text: &str, source: &str) -> Result<CampaignSpec, Status> {
    let source = if source.is_empty() {
        "campaign.toml"
    } else {
        source
    };
    let spec =
        CampaignSpec::parse(text, source).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let known: Vec<&str> = c.config.webhooks.iter().map(|w| w.name.as_str()).collect();
    spec.check_webhooks(&known)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(spec)
}

/// How far in the past a planned start may be and still mean "now": the CLI's clock and the
/// coordinator's differ a little, and `--at +0s` is now.
const PLAN_START_SKEW_MS: i64 = 60_000;

/// When a plan starts: now (0, or an instant not after now), or a later instant.
fn plan_start(start_at_ms: i64, now_ms: i64) -> Result<pitcrew_scheduler::PlanStart, Status> {
    use pitcrew_scheduler::PlanStart;
    if start_at_ms == 0 || (start_at_ms <= now_ms && start_at_ms >= now_ms - PLAN_START_SKEW_MS) {
        return Ok(PlanStart::Now(now_ms));
    }
    if start_at_ms < now_ms {
        return Err(Status::invalid_argument(format!(
            "the planned start {} is in the past (it is {} now): plan from now, or from a later time",
            pitcrew_scheduler::window::fmt_ms(start_at_ms),
            pitcrew_scheduler::window::fmt_ms(now_ms)
        )));
    }
    Ok(PlanStart::At(start_at_ms))
}

fn new_campaign_id() -> String {
    crate::engine::new_campaign_id()
}

/// The most runs one `campaign ls` answers, and how many without `--limit`.
const MAX_LIST_LIMIT: u32 = 1000;
const DEFAULT_LIST_LIMIT: u32 = 50;

/// The states `campaign ls --state` accepts.
const LIST_STATES: &[&str] = &[
    "active",
    "pending",
    "running",
    "paused",
    "completed",
    "incomplete",
    "cancelled",
];

/// The filters of a host listing that the store applies.
fn host_filter(r: &v1::ListHostsRequest, limit: usize) -> Result<HostFilter, Status> {
    let role = if r.role.is_empty() {
        None
    } else {
        Some(parse_role(&r.role)?)
    };
    let label = if r.label.is_empty() {
        None
    } else {
        let (k, v) = r.label.split_once('=').ok_or_else(|| {
            Status::invalid_argument(format!("label filter {:?} is not key=value", r.label))
        })?;
        Some((k.to_owned(), v.to_owned()))
    };
    let after = if r.page_token.is_empty() {
        None
    } else {
        Some(
            convert::parse_host_page_token(&r.page_token).ok_or_else(|| {
                Status::invalid_argument("the page token is not one this coordinator gave")
            })?,
        )
    };
    Ok(HostFilter {
        role,
        label,
        after,
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
        removed: r.removed,
    })
}

fn campaign_page(r: &v1::GetCampaignRequest) -> Result<HostPage, Status> {
    let offset = if r.page_token.is_empty() {
        0
    } else {
        r.page_token.parse().map_err(|_| {
            Status::invalid_argument("the page token is not one this coordinator gave")
        })?
    };
    Ok(HostPage::Range {
        offset,
        limit: page_size(r.page_size),
    })
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_hosts(
        &self,
        request: Request<v1::ListHostsRequest>,
    ) -> Result<Response<v1::ListHostsResponse>, Status> {
        caller(&request)?;
        let (hosts, next_page_token) =
            list_host_page(&self.coordinator, request.into_inner()).await?;
        Ok(Response::new(v1::ListHostsResponse {
            hosts,
            next_page_token,
        }))
    }

    async fn compliance_report(
        &self,
        request: Request<v1::ListHostsRequest>,
    ) -> Result<Response<v1::ComplianceReportResponse>, Status> {
        caller(&request)?;
        let page = compliance_page(&self.coordinator, request.into_inner()).await?;
        Ok(Response::new(page))
    }

    async fn get_host(
        &self,
        request: Request<v1::GetHostRequest>,
    ) -> Result<Response<v1::HostInfo>, Status> {
        caller(&request)?;
        let c = &self.coordinator;
        let host = resolve_host(c, &request.get_ref().host).await?;
        let info = host_infos(c, vec![host]).await?.pop();
        info.map(Response::new)
            .ok_or_else(|| Status::internal("the host vanished while being read"))
    }

    async fn create_token(
        &self,
        request: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let operator = caller(&request)?.name;
        let c = &self.coordinator;
        let r = request.into_inner();
        // A token either enrolls new hosts (with the role and labels it carries) or re-enrolls
        // one existing host, which keeps its own role and labels.
        let (role, labels, replaces) = if r.replace_host.is_empty() {
            (parse_role(&r.role)?, validate_labels(&r.labels)?, None)
        } else {
            let host = resolve_host(c, &r.replace_host).await?;
            (host.role.clone(), host.labels.clone(), Some(host))
        };
        let uses = if r.uses == 0 { 1 } else { r.uses };
        let ttl = if r.ttl_seconds == 0 {
            3600
        } else {
            r.ttl_seconds
        };
        if ttl > MAX_TOKEN_TTL_SECONDS {
            return Err(Status::invalid_argument(
                "a join token may live at most 30 days",
            ));
        }
        let now = pitcrew_proto::now_ms();
        let new = tokens::generate();
        let record = TokenRecord {
            id: new.id.clone(),
            hash: new.hash,
            role,
            labels,
            uses_left: uses,
            uses_total: uses,
            expires_at_ms: now + i64::try_from(ttl * 1000).unwrap_or(i64::MAX),
            revoked: false,
            created_at_ms: now,
            created_by: operator.clone(),
            replace_host: replaces
                .as_ref()
                .map(|h| h.host_id.clone())
                .unwrap_or_default(),
        };
        c.store.create_token(record.clone()).await?;
        c.events.audit(
            &operator,
            "",
            "",
            &match &replaces {
                Some(host) => format!(
                    "created join token {} to re-enroll host {} ({} uses, {} s)",
                    record.id, host.hostname, uses, ttl
                ),
                None => format!(
                    "created join token {} for role {} ({} uses, {} s)",
                    record.id, record.role, uses, ttl
                ),
            },
        );
        Ok(Response::new(v1::CreateTokenResponse {
            token: new.secret,
            info: Some(convert::token_info(record)),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        caller(&request)?;
        let tokens = self
            .coordinator
            .store
            .list_tokens()
            .await?
            .into_iter()
            .map(convert::token_info)
            .collect();
        Ok(Response::new(v1::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::TokenInfo>, Status> {
        let operator = caller(&request)?.name;
        let c = &self.coordinator;
        let id = request.into_inner().id;
        let token = c
            .store
            .revoke_token(id.clone())
            .await?
            .ok_or_else(|| Status::not_found(format!("no join token has the id {id:?}")))?;
        c.events
            .audit(&operator, "", "", &format!("revoked join token {id}"));
        Ok(Response::new(convert::token_info(token)))
    }

    type RunActionStream = GuardedStream<v1::ActionEvent>;

    async fn run_action(
        &self,
        request: Request<v1::RunActionRequest>,
    ) -> Result<Response<Self::RunActionStream>, Status> {
        let who = caller(&request)?;
        let operator = who.name.clone();
        let c = self.coordinator.clone();
        let r = request.into_inner();
        let host = resolve_host(&c, &r.host).await?;
        let mut action = r
            .request
            .ok_or_else(|| Status::invalid_argument("no action given"))?;
        if action
            .action
            .as_ref()
            .and_then(|a| a.kind.as_ref())
            .is_none()
        {
            return Err(Status::invalid_argument("no action given"));
        }
        if action.action_id.is_empty() {
            action.action_id = format!("do-{}", uuid::Uuid::new_v4());
        } else if !valid_action_id(&action.action_id) {
            return Err(Status::invalid_argument(
                "an action id is 1 to 128 of [A-Za-z0-9._-] (ids with ':' belong to campaign steps)",
            ));
        }
        if !c.registry.is_connected(&host.host_id) {
            return Err(Status::failed_precondition(format!(
                "host {} is not connected",
                host.hostname
            )));
        }
        // Every path honours the slots: a disruptive action is admitted by the engine against
        // campaigns, manual maintenance and the manager slot (or forced, audited there), and
        // holds its host until this `do` ends. Read-only checks are never refused.
        let read_only = action
            .action
            .as_ref()
            .and_then(|a| a.kind.as_ref())
            .is_some_and(pitcrew_proto::actions::is_read_only);
        let hold = if read_only {
            None
        } else {
            Some(
                c.engine
                    .begin_operator_action(
                        operator.clone(),
                        host.host_id.clone(),
                        action.action_id.clone(),
                        pitcrew_proto::actions::describe(action.action.as_ref()),
                        r.force,
                    )
                    .await?,
            )
        };
        // A reboot takes its host away by design: its result comes when the host is back.
        let is_reboot = matches!(
            action.action.as_ref().and_then(|a| a.kind.as_ref()),
            Some(v1::action::Kind::Reboot(_))
        );
        let id = action.action_id.clone();
        // Subscribe before sending, so no event can be missed.
        let mut events = c.registry.watch_action(&id, &host.host_id);
        let record = ActionRecord {
            action_id: id.clone(),
            host_id: host.host_id.clone(),
            campaign_id: String::new(),
            request: action.encode_to_vec(),
            result: None,
            created_at_ms: pitcrew_proto::now_ms(),
        };
        let owner = c.store.record_action(record).await?;
        if owner.is_some_and(|owner| owner != host.host_id) {
            return Err(Status::already_exists(format!(
                "action id {id} was used for another host"
            )));
        }
        c.events.audit(
            &operator,
            &host.host_id,
            "",
            &format!(
                "ran {} on {} as {id}",
                pitcrew_proto::actions::describe(action.action.as_ref()),
                host.hostname
            ),
        );
        let sent = c.registry.try_send(
            &host.host_id,
            v1::CoordinatorMessage {
                msg: Some(v1::coordinator_message::Msg::Action(action)),
            },
        );
        if !sent {
            return Err(Status::unavailable(format!(
                "host {} disconnected before the action was sent",
                host.hostname
            )));
        }
        let (tx, rx) = mpsc::channel(64);
        let mut sessions = c.registry.subscribe_sessions();
        tokio::spawn(async move {
            // Held for as long as this task follows the action.
            let _hold = hold;
            let mut announced = false;
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(event) => {
                            let done = matches!(event.event, Some(v1::action_event::Event::Result(_)));
                            if tx.send(Ok(event)).await.is_err() || done {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    changed = sessions.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let connected = c.registry.is_connected(&host.host_id);
                        if !connected && is_reboot && !announced {
                            announced = true;
                            let note = v1::ActionEvent {
                                action_id: id.clone(),
                                event: Some(v1::action_event::Event::Log(format!(
                                    "{} went down to reboot; waiting for it to come back with a new boot id",
                                    host.hostname
                                ))),
                            };
                            if tx.send(Ok(note)).await.is_err() {
                                return;
                            }
                        } else if !connected && !is_reboot {
                            let _ = tx.send(Err(Status::unavailable(format!(
                                "host {} disconnected before action {id} finished; its result is recorded when the agent reconnects (pitcrew events --host {})",
                                host.hostname, host.hostname
                            )))).await;
                            return;
                        }
                    }
                    _ = tx.closed() => {
                        // The operator stopped following (Ctrl-C): stop the action too, as
                        // they would expect of a command they interrupted.
                        let cancel = v1::CoordinatorMessage {
                            msg: Some(v1::coordinator_message::Msg::Cancel(v1::CancelAction { action_id: id.clone() })),
                        };
                        c.registry.try_send(&host.host_id, cancel);
                        c.events.audit(&operator, &host.host_id, "", &format!("interrupted {id}: cancel sent to {}", host.hostname));
                        // The host stays held until its agent says the action stopped (or
                        // the grace ends): a campaign must not start it under a dying action.
                        let _ = tokio::time::timeout(CANCEL_GRACE, async {
                            loop {
                                match events.recv().await {
                                    Ok(event) if matches!(event.event, Some(v1::action_event::Event::Result(_))) => return,
                                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                                }
                            }
                        })
                        .await;
                        return;
                    }
                }
            }
        });
        // Ended early (the operator revoked), the stream's receiver is dropped and the task
        // above cancels the action as if the operator had interrupted it.
        Ok(Response::new(until_revoked(
            rx,
            self.coordinator.operators.clone(),
            who,
        )))
    }

    async fn plan_campaign(
        &self,
        request: Request<v1::PlanCampaignRequest>,
    ) -> Result<Response<v1::CampaignPlan>, Status> {
        caller(&request)?;
        let r = request.into_inner();
        let spec = parse_spec(&self.coordinator, &r.spec_toml, &r.source_name)?;
        let start = plan_start(r.start_at_ms, pitcrew_proto::now_ms())?;
        // From the fleet as it is: who holds which host, who is connected.
        let (hosts, holders) = self.coordinator.engine.fleet_now().await?;
        // Planning simulates the whole run: it runs off the async workers and the engine.
        let plan = tokio::task::spawn_blocking(move || {
            pitcrew_scheduler::plan_from(&spec, "(plan)", &hosts, &holders, start)
        })
        .await
        .map_err(|e| Status::internal(format!("planning failed: {e}")))?
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(convert::plan(&plan)))
    }

    async fn create_campaign(
        &self,
        request: Request<v1::CreateCampaignRequest>,
    ) -> Result<Response<v1::CampaignInfo>, Status> {
        let operator = caller(&request)?.name;
        let c = &self.coordinator;
        let r = request.into_inner();
        let spec = parse_spec(&self.coordinator, &r.spec_toml, &r.source_name)?;
        if spec.schedule.is_some() {
            // Running a scheduled file by hand as well would be the stacked runs schedules
            // exist to prevent; the schedule runs it.
            return Err(Status::invalid_argument(format!(
                "{} has a schedule: register it with `pitcrew schedule add {}` and the coordinator runs it at each fire time; to run it once now, remove its schedule key",
                spec.source_name, spec.source_name
            )));
        }
        let hosts = c.engine.hosts().await?;
        let id = new_campaign_id();
        let run = tokio::task::spawn_blocking(move || {
            let now = pitcrew_proto::now_ms();
            // The same refusals as `plan` (every one of them): nothing that cannot run is
            // started. What is held or disconnected now only delays it, as its blockers say.
            pitcrew_scheduler::plan(&spec, &id, &hosts, now)?.refused()?;
            CampaignRun::new(&id, &spec, &hosts, now)
        })
        .await
        .map_err(|e| Status::internal(format!("planning failed: {e}")))?
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let view = c.engine.insert_run(run, r.spec_toml, operator).await?;
        Ok(Response::new(convert::campaign_info(view)))
    }

    async fn list_campaigns(
        &self,
        request: Request<v1::ListCampaignsRequest>,
    ) -> Result<Response<v1::ListCampaignsResponse>, Status> {
        caller(&request)?;
        let r = request.into_inner();
        if !r.state.is_empty() && !LIST_STATES.contains(&r.state.as_str()) {
            return Err(Status::invalid_argument(format!(
                "state {:?} is not one of {}",
                r.state,
                LIST_STATES.join(", ")
            )));
        }
        if r.limit > MAX_LIST_LIMIT {
            return Err(Status::invalid_argument(format!(
                "limit {} is more than {MAX_LIST_LIMIT}",
                r.limit
            )));
        }
        let limit = if r.limit == 0 {
            DEFAULT_LIST_LIMIT
        } else {
            r.limit
        };
        if r.archived {
            if matches!(
                r.state.as_str(),
                "active" | "pending" | "running" | "paused"
            ) {
                return Err(Status::invalid_argument(format!(
                    "archived runs are finished; --state {} lists none of them",
                    r.state
                )));
            }
            let rows = self
                .coordinator
                .store
                .list_archived(crate::store::ArchiveFilter {
                    state: r.state,
                    name: r.name,
                    limit,
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            let matched = u32::try_from(rows.len()).unwrap_or(u32::MAX);
            let campaigns = rows.into_iter().map(convert::archived_info).collect();
            return Ok(Response::new(v1::ListCampaignsResponse {
                campaigns,
                matched,
            }));
        }
        let (views, matched) = self
            .coordinator
            .engine
            .list_filtered(crate::engine::RunFilter {
                state: r.state,
                name: r.name,
                limit: limit as usize,
            })
            .await?;
        Ok(Response::new(v1::ListCampaignsResponse {
            campaigns: views.into_iter().map(convert::campaign_info).collect(),
            matched: u32::try_from(matched).unwrap_or(u32::MAX),
        }))
    }

    async fn get_campaign(
        &self,
        request: Request<v1::GetCampaignRequest>,
    ) -> Result<Response<v1::CampaignInfo>, Status> {
        caller(&request)?;
        let r = request.into_inner();
        let page = campaign_page(&r)?;
        match self.coordinator.engine.view(r.id.clone(), page).await {
            Err(EngineError::UnknownCampaign(_)) => {}
            other => return Ok(Response::new(convert::campaign_info(other?))),
        }
        // Not held by the engine: an archived run, read from the store.
        let stored = self
            .coordinator
            .store
            .load_run(r.id.clone())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let Some((record, archived)) = stored else {
            return Err(EngineError::UnknownCampaign(r.id).into());
        };
        let view = crate::engine::view::campaign_view(
            &record.run,
            &record.spec_toml,
            &record.created_by,
            &mut Default::default(),
            page,
        );
        let mut info = convert::campaign_info(view);
        info.archived = archived;
        Ok(Response::new(info))
    }

    async fn schedule_campaign(
        &self,
        request: Request<v1::CreateCampaignRequest>,
    ) -> Result<Response<v1::ScheduleInfo>, Status> {
        let operator = caller(&request)?.name;
        let r = request.into_inner();
        let spec = parse_spec(&self.coordinator, &r.spec_toml, &r.source_name)?;
        let source = spec.source_name.clone();
        let view = self
            .coordinator
            .engine
            .register_schedule(operator, spec, r.spec_toml, source)
            .await?;
        Ok(Response::new(convert::schedule_info(view)))
    }

    async fn list_schedules(
        &self,
        request: Request<v1::ListSchedulesRequest>,
    ) -> Result<Response<v1::ListSchedulesResponse>, Status> {
        caller(&request)?;
        let schedules = self
            .coordinator
            .engine
            .schedules()
            .await?
            .into_iter()
            .map(convert::schedule_info)
            .collect();
        Ok(Response::new(v1::ListSchedulesResponse { schedules }))
    }

    async fn control_schedule(
        &self,
        request: Request<v1::ControlScheduleRequest>,
    ) -> Result<Response<v1::ScheduleInfo>, Status> {
        let operator = caller(&request)?.name;
        let r = request.into_inner();
        let control = match v1::ScheduleControl::try_from(r.control) {
            Ok(v1::ScheduleControl::Pause) => crate::engine::ScheduleControl::Pause,
            Ok(v1::ScheduleControl::Resume) => crate::engine::ScheduleControl::Resume,
            Ok(v1::ScheduleControl::Remove) => crate::engine::ScheduleControl::Remove,
            _ => {
                return Err(Status::invalid_argument(
                    "control must be pause, resume or remove",
                ));
            }
        };
        let view = self
            .coordinator
            .engine
            .control_schedule(operator, r.name, control)
            .await?;
        Ok(Response::new(convert::schedule_info(view)))
    }

    type WatchCampaignStream = GuardedStream<v1::CampaignInfo>;

    async fn watch_campaign(
        &self,
        request: Request<v1::GetCampaignRequest>,
    ) -> Result<Response<Self::WatchCampaignStream>, Status> {
        let who = caller(&request)?;
        let c = self.coordinator.clone();
        let r = request.into_inner();
        let page = HostPage::Active {
            limit: page_size(r.page_size),
        };
        let id = r.id;
        let mut changes = c.engine.subscribe();
        let first = c.engine.view(id.clone(), page).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut last = first;
            if tx
                .send(Ok(convert::campaign_info(last.clone())))
                .await
                .is_err()
            {
                return;
            }
            loop {
                if last.state.is_final() {
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
                match c.engine.view(id.clone(), page).await {
                    Ok(view) if view != last => {
                        last = view;
                        if tx
                            .send(Ok(convert::campaign_info(last.clone())))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        let _ = tx.send(Err(error.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(until_revoked(
            rx,
            self.coordinator.operators.clone(),
            who,
        )))
    }

    async fn control_campaign(
        &self,
        request: Request<v1::ControlCampaignRequest>,
    ) -> Result<Response<v1::CampaignInfo>, Status> {
        let operator = caller(&request)?.name;
        let r = request.into_inner();
        let control = match v1::CampaignControl::try_from(r.control) {
            Ok(v1::CampaignControl::Pause) => CampaignControl::Pause,
            Ok(v1::CampaignControl::Resume) => CampaignControl::Resume,
            Ok(v1::CampaignControl::Cancel) => CampaignControl::Cancel,
            _ => {
                return Err(Status::invalid_argument(
                    "control must be pause, resume or cancel",
                ));
            }
        };
        let view = self
            .coordinator
            .engine
            .control(operator, r.id, control)
            .await?;
        Ok(Response::new(convert::campaign_info(view)))
    }

    async fn control_host(
        &self,
        request: Request<v1::ControlHostRequest>,
    ) -> Result<Response<v1::CampaignInfo>, Status> {
        let operator = caller(&request)?.name;
        let c = &self.coordinator;
        let r = request.into_inner();
        let control = match v1::HostControl::try_from(r.control) {
            Ok(v1::HostControl::Retry) => HostControl::Retry,
            Ok(v1::HostControl::Skip) => HostControl::Skip,
            Ok(v1::HostControl::Release) => HostControl::Release,
            _ => {
                return Err(Status::invalid_argument(
                    "control must be retry, skip or release",
                ));
            }
        };
        let host = resolve_host(c, &r.host).await?;
        let view = c
            .engine
            .control_host(operator, r.campaign_id, host.host_id, control)
            .await?;
        Ok(Response::new(convert::campaign_info(view)))
    }

    async fn set_maintenance(
        &self,
        request: Request<v1::SetMaintenanceRequest>,
    ) -> Result<Response<v1::HostInfo>, Status> {
        let operator = caller(&request)?.name;
        let c = &self.coordinator;
        let r = request.into_inner();
        let host = resolve_host(c, &r.host).await?;
        let hold = c
            .engine
            .set_maintenance(operator, host.host_id.clone(), r.enable)
            .await?;
        let connected = c.registry.is_connected(&host.host_id);
        let seen = c.registry.last_seen(&host.host_id);
        Ok(Response::new(convert::host_info(
            host, connected, seen, hold,
        )))
    }

    async fn list_events(
        &self,
        request: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        caller(&request)?;
        let filter = event_filter(&self.coordinator, request.get_ref()).await?;
        let events = self
            .coordinator
            .store
            .list_events(filter)
            .await?
            .into_iter()
            .map(convert::event)
            .collect();
        Ok(Response::new(v1::ListEventsResponse { events }))
    }

    async fn list_notifications(
        &self,
        request: Request<v1::ListNotificationsRequest>,
    ) -> Result<Response<v1::ListNotificationsResponse>, Status> {
        caller(&request)?;
        let r = request.into_inner();
        let state = match r.state.as_str() {
            "" => None,
            text => Some(DeliveryState::parse(text).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "state {text:?}: choose pending, delivered or failed"
                ))
            })?),
        };
        let filter = DeliveryFilter {
            campaign_id: (!r.campaign_id.is_empty()).then_some(r.campaign_id),
            state,
            limit: r.limit.min(1000),
        };
        let notifications = self
            .coordinator
            .store
            .list_deliveries(filter)
            .await?
            .into_iter()
            .map(convert::notification)
            .collect();
        Ok(Response::new(v1::ListNotificationsResponse {
            notifications,
        }))
    }

    type FollowEventsStream = GuardedStream<v1::Event>;

    async fn follow_events(
        &self,
        request: Request<v1::ListEventsRequest>,
    ) -> Result<Response<Self::FollowEventsStream>, Status> {
        let who = caller(&request)?;
        let c = self.coordinator.clone();
        let filter = event_filter(&c, request.get_ref()).await?;
        // Subscribe first, then read the backlog, then skip live events already in it.
        let mut live = c.events.subscribe();
        let backlog = c.store.list_events(filter.clone()).await?;
        let mut last_id = backlog.last().map(|e| e.id).unwrap_or(0);
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            for event in backlog {
                if tx.send(Ok(convert::event(event))).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    event = live.recv() => match event {
                        Ok(event) => {
                            if event.id > last_id && filter.matches(&event) {
                                last_id = event.id;
                                if tx.send(Ok(convert::event(event))).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            let _ = tx.send(Err(Status::data_loss(format!("fell behind by {n} events; run pitcrew events again")))).await;
                            return;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(until_revoked(
            rx,
            self.coordinator.operators.clone(),
            who,
        )))
    }

    async fn add_operator(
        &self,
        request: Request<v1::AddOperatorRequest>,
    ) -> Result<Response<v1::OperatorCertificate>, Status> {
        let who = caller(&request)?;
        operators::add(&self.coordinator, who, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_operators(
        &self,
        request: Request<v1::ListOperatorsRequest>,
    ) -> Result<Response<v1::ListOperatorsResponse>, Status> {
        caller(&request)?;
        operators::list(&self.coordinator).await.map(Response::new)
    }

    async fn revoke_operator(
        &self,
        request: Request<v1::RevokeOperatorRequest>,
    ) -> Result<Response<v1::ListOperatorsResponse>, Status> {
        let who = caller(&request)?;
        operators::revoke(&self.coordinator, who, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn renew_operator(
        &self,
        request: Request<v1::RenewOperatorRequest>,
    ) -> Result<Response<v1::OperatorCertificate>, Status> {
        let who = caller(&request)?;
        operators::renew(&self.coordinator, who, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_host(
        &self,
        request: Request<v1::RemoveHostRequest>,
    ) -> Result<Response<v1::RemoveHostResponse>, Status> {
        let operator = caller(&request)?.name;
        let c = &self.coordinator;
        let host = resolve_host(c, &request.get_ref().host).await?;
        if host.removed_at_ms != 0 {
            return Err(Status::failed_precondition(format!(
                "host {} was already removed from the fleet",
                host.hostname
            )));
        }
        // Durable first (its serials are cleared, so no session or renewal of it is accepted
        // from here on), then end the session it still holds.
        let changes = c.engine.remove_host(operator, host.host_id.clone()).await?;
        c.registry
            .close_session(&host.host_id, "the host was removed from the fleet");
        let record = c
            .store
            .host(host.host_id.clone())
            .await?
            .ok_or_else(|| Status::internal("the host vanished while being removed"))?;
        let info = host_infos(c, vec![record]).await?.pop();
        Ok(Response::new(v1::RemoveHostResponse {
            host: info,
            changes,
        }))
    }

    async fn set_host(
        &self,
        request: Request<v1::SetHostRequest>,
    ) -> Result<Response<v1::HostInfo>, Status> {
        let operator = caller(&request)?.name;
        let c = &self.coordinator;
        let r = request.into_inner();
        let host = resolve_host(c, &r.host).await?;
        if host.removed_at_ms != 0 {
            return Err(Status::failed_precondition(format!(
                "host {} was removed from the fleet",
                host.hostname
            )));
        }
        let edit = host_edit(&r)?;
        c.engine
            .set_host(operator, host.host_id.clone(), edit)
            .await?;
        let record = c
            .store
            .host(host.host_id.clone())
            .await?
            .ok_or_else(|| Status::internal("the host vanished while being changed"))?;
        host_infos(c, vec![record])
            .await?
            .pop()
            .map(Response::new)
            .ok_or_else(|| Status::internal("the host vanished while being read"))
    }

    async fn create_dashboard_login(
        &self,
        request: Request<v1::CreateDashboardLoginRequest>,
    ) -> Result<Response<v1::DashboardLogin>, Status> {
        let who = caller(&request)?;
        let c = &self.coordinator;
        let base = c.config.dashboard_base_url().ok_or_else(|| {
            Status::failed_precondition(
                "the dashboard is off on this coordinator (dashboard_listen = \"\" in coordinator.toml)",
            )
        })?;
        let bound = crate::dashboard::auth::Bound {
            name: who.name.clone(),
            serial: who.serial,
            not_after_ms: who.not_after_ms,
        };
        let (token, expires_at_ms) = c
            .dashboard
            .create_login(bound, pitcrew_proto::now_ms())
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        c.events
            .audit(&who.name, "", "", "asked for a web dashboard login link");
        Ok(Response::new(v1::DashboardLogin {
            url: format!("{base}/login?token={token}"),
            expires_at_ms,
        }))
    }
}

/// Checks what `pitcrew hosts set` asks: a known role, valid labels, and no label both set and
/// removed.
fn host_edit(r: &v1::SetHostRequest) -> Result<HostEdit, Status> {
    let role = if r.role.is_empty() {
        None
    } else {
        Role::parse(&parse_role(&r.role)?)
    };
    let set_labels = validate_labels(&r.set_labels)?;
    let unset = r
        .unset_labels
        .iter()
        .map(|key| (key.clone(), String::new()))
        .collect();
    validate_labels(&unset)?;
    if let Some(key) = r.unset_labels.iter().find(|k| set_labels.contains_key(*k)) {
        return Err(Status::invalid_argument(format!(
            "label {key:?} is both set and removed"
        )));
    }
    if role.is_none() && set_labels.is_empty() && r.unset_labels.is_empty() {
        return Err(Status::invalid_argument(
            "nothing to change: give a role, labels to set or labels to remove",
        ));
    }
    Ok(HostEdit {
        role,
        set_labels,
        unset_labels: r.unset_labels.clone(),
    })
}

async fn event_filter(c: &Coordinator, r: &v1::ListEventsRequest) -> Result<EventFilter, Status> {
    let host_id = if r.host.is_empty() {
        None
    } else {
        Some(resolve_host(c, &r.host).await?.host_id)
    };
    let campaign_id = if r.campaign_id.is_empty() {
        None
    } else {
        Some(r.campaign_id.clone())
    };
    Ok(EventFilter {
        host_id,
        campaign_id,
        after_id: 0,
        before_id: r.before_id,
        limit: u32::try_from(page_size(r.limit)).unwrap_or(u32::MAX),
    })
}
