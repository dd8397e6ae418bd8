//! `Admin`: the operator's API (hosts, tokens, one-off actions, campaigns, maintenance, events).
//! Every call needs an operator certificate; agents are refused. Every change is audited with
//! the operator's name from the certificate.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use pitcrew_proto::identity::require_operator;
use pitcrew_proto::v1::{self, admin_server::Admin};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Coordinator;
use crate::store::{ActionRecord, EventFilter, EventRecord, HostRecord, TokenRecord};
use crate::tokens;

/// Longest accepted token lifetime: a join token is for installing, not a standing credential.
const MAX_TOKEN_TTL_SECONDS: u64 = 30 * 24 * 3600;

pub struct AdminService {
    coordinator: Arc<Coordinator>,
}

impl AdminService {
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        AdminService { coordinator }
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Finds a host by id or by unique hostname.
pub fn resolve_host(c: &Coordinator, name: &str) -> Result<HostRecord, Status> {
    if let Some(host) = c.store.host(name)? {
        return Ok(host);
    }
    let mut matches = c.store.hosts()?.into_iter().filter(|h| h.hostname == name);
    match (matches.next(), matches.next()) {
        (Some(host), None) => Ok(host),
        (None, _) => Err(Status::not_found(format!(
            "no host has the id or hostname {name:?}"
        ))),
        (Some(_), Some(_)) => Err(Status::invalid_argument(format!(
            "several hosts are named {name:?}; use the host id"
        ))),
    }
}

/// The operator's view of a host.
pub fn host_info(c: &Coordinator, host: HostRecord) -> v1::HostInfo {
    let facts = if host.facts.is_empty() {
        None
    } else {
        v1::Facts::decode(host.facts.as_slice()).ok()
    };
    let connected = c.registry.is_connected(&host.host_id);
    let (maintenance_state, held_by) = crate::campaigns::host_hold(c, &host.host_id);
    v1::HostInfo {
        host_id: host.host_id,
        hostname: host.hostname,
        role: host.role,
        labels: host.labels.into_iter().collect(),
        connected,
        last_seen_ms: host.last_seen_ms,
        facts,
        cert_serial: host.cert_serial,
        maintenance_state,
        held_by,
        enrolled_at_ms: host.enrolled_at_ms,
    }
}

fn token_info(t: TokenRecord) -> v1::TokenInfo {
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
    }
}

pub fn event_proto(e: EventRecord) -> v1::Event {
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
    }
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

/// Checks an action id an operator chose (the agent journals by it).
fn valid_action_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_hosts(
        &self,
        request: Request<v1::ListHostsRequest>,
    ) -> Result<Response<v1::ListHostsResponse>, Status> {
        require_operator(&request)?;
        let c = &self.coordinator;
        let hosts = c
            .store
            .hosts()?
            .into_iter()
            .map(|h| host_info(c, h))
            .collect();
        Ok(Response::new(v1::ListHostsResponse { hosts }))
    }

    async fn get_host(
        &self,
        request: Request<v1::GetHostRequest>,
    ) -> Result<Response<v1::HostInfo>, Status> {
        require_operator(&request)?;
        let c = &self.coordinator;
        let host = resolve_host(c, &request.get_ref().host)?;
        Ok(Response::new(host_info(c, host)))
    }

    async fn create_token(
        &self,
        request: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let (operator, _) = require_operator(&request)?;
        let c = &self.coordinator;
        let r = request.into_inner();
        let role = parse_role(&r.role)?;
        let labels = validate_labels(&r.labels)?;
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
        };
        c.store.insert_token(&record)?;
        c.events.audit(
            &operator,
            "",
            "",
            &format!(
                "created join token {} for role {} ({} uses, {} s)",
                record.id, record.role, uses, ttl
            ),
        )?;
        Ok(Response::new(v1::CreateTokenResponse {
            token: new.secret,
            info: Some(token_info(record)),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        require_operator(&request)?;
        let tokens = self
            .coordinator
            .store
            .tokens()?
            .into_iter()
            .map(token_info)
            .collect();
        Ok(Response::new(v1::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::TokenInfo>, Status> {
        let (operator, _) = require_operator(&request)?;
        let c = &self.coordinator;
        let id = &request.get_ref().id;
        let token = c
            .store
            .revoke_token(id)?
            .ok_or_else(|| Status::not_found(format!("no join token has the id {id:?}")))?;
        c.events
            .audit(&operator, "", "", &format!("revoked join token {id}"))?;
        Ok(Response::new(token_info(token)))
    }

    type RunActionStream = EventStream<v1::ActionEvent>;

    async fn run_action(
        &self,
        request: Request<v1::RunActionRequest>,
    ) -> Result<Response<Self::RunActionStream>, Status> {
        let (operator, _) = require_operator(&request)?;
        let c = self.coordinator.clone();
        let r = request.into_inner();
        let host = resolve_host(&c, &r.host)?;
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
                "an action id is 1 to 128 of [A-Za-z0-9._:-]",
            ));
        }
        if let Some(existing) = c.store.action(&action.action_id)?
            && existing.host_id != host.host_id
        {
            return Err(Status::already_exists(format!(
                "action id {} was used for another host",
                action.action_id
            )));
        }
        if !c.registry.is_connected(&host.host_id) {
            return Err(Status::failed_precondition(format!(
                "host {} is not connected",
                host.hostname
            )));
        }
        // A reboot takes its host away by design: its result comes when the host is back.
        let is_reboot = matches!(
            action.action.as_ref().and_then(|a| a.kind.as_ref()),
            Some(v1::action::Kind::Reboot(_))
        );
        let id = action.action_id.clone();
        // Subscribe before sending, so no event can be missed.
        let mut events = c.registry.watch_action(&id);
        c.store.insert_action(&ActionRecord {
            action_id: id.clone(),
            host_id: host.host_id.clone(),
            campaign_id: String::new(),
            request: action.encode_to_vec(),
            result: None,
            created_at_ms: pitcrew_proto::now_ms(),
        })?;
        c.events.audit(
            &operator,
            &host.host_id,
            "",
            &format!(
                "ran {} on {} as {id}",
                pitcrew_proto::describe::action(action.action.as_ref()),
                host.hostname
            ),
        )?;
        let sent = c
            .registry
            .send(
                &host.host_id,
                v1::CoordinatorMessage {
                    msg: Some(v1::coordinator_message::Msg::Action(action)),
                },
            )
            .await;
        if !sent {
            return Err(Status::unavailable(format!(
                "host {} disconnected before the action was sent",
                host.hostname
            )));
        }
        let (tx, rx) = mpsc::channel(64);
        let mut changes = c.registry.subscribe_changes();
        tokio::spawn(async move {
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
                    changed = changes.changed() => {
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
                        c.registry.send(&host.host_id, cancel).await;
                        let _ = c.events.audit(&operator, &host.host_id, "", &format!("interrupted {id}: cancel sent to {}", host.hostname));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as Self::RunActionStream
        ))
    }

    async fn plan_campaign(
        &self,
        request: Request<v1::PlanCampaignRequest>,
    ) -> Result<Response<v1::CampaignPlan>, Status> {
        require_operator(&request)?;
        crate::campaigns::plan(&self.coordinator, request.get_ref()).map(Response::new)
    }

    async fn create_campaign(
        &self,
        request: Request<v1::CreateCampaignRequest>,
    ) -> Result<Response<v1::CampaignInfo>, Status> {
        let (operator, _) = require_operator(&request)?;
        crate::campaigns::create(&self.coordinator, &operator, request.get_ref()).map(Response::new)
    }

    async fn list_campaigns(
        &self,
        request: Request<v1::ListCampaignsRequest>,
    ) -> Result<Response<v1::ListCampaignsResponse>, Status> {
        require_operator(&request)?;
        crate::campaigns::list(&self.coordinator).map(Response::new)
    }

    async fn get_campaign(
        &self,
        request: Request<v1::GetCampaignRequest>,
    ) -> Result<Response<v1::CampaignInfo>, Status> {
        require_operator(&request)?;
        crate::campaigns::get(&self.coordinator, &request.get_ref().id).map(Response::new)
    }

    type WatchCampaignStream = EventStream<v1::CampaignInfo>;

    async fn watch_campaign(
        &self,
        request: Request<v1::GetCampaignRequest>,
    ) -> Result<Response<Self::WatchCampaignStream>, Status> {
        require_operator(&request)?;
        let c = self.coordinator.clone();
        let id = request.get_ref().id.clone();
        let first = crate::campaigns::get(&c, &id)?;
        let (tx, rx) = mpsc::channel(16);
        let mut changes = c.registry.subscribe_changes();
        let mut campaign_changes = c.registry.subscribe_campaigns();
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            loop {
                if crate::campaigns::is_final(&last.state) {
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    changed = campaign_changes.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
                match crate::campaigns::get(&c, &id) {
                    Ok(info) if info != last => {
                        last = info;
                        if tx.send(Ok(last.clone())).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as Self::WatchCampaignStream
        ))
    }

    async fn control_campaign(
        &self,
        request: Request<v1::ControlCampaignRequest>,
    ) -> Result<Response<v1::CampaignInfo>, Status> {
        let (operator, _) = require_operator(&request)?;
        crate::campaigns::control(&self.coordinator, &operator, request.get_ref())
            .map(Response::new)
    }

    async fn control_host(
        &self,
        request: Request<v1::ControlHostRequest>,
    ) -> Result<Response<v1::CampaignInfo>, Status> {
        let (operator, _) = require_operator(&request)?;
        crate::campaigns::control_host(&self.coordinator, &operator, request.get_ref())
            .map(Response::new)
    }

    async fn set_maintenance(
        &self,
        request: Request<v1::SetMaintenanceRequest>,
    ) -> Result<Response<v1::HostInfo>, Status> {
        let (operator, _) = require_operator(&request)?;
        let c = &self.coordinator;
        let host = resolve_host(c, &request.get_ref().host)?;
        crate::campaigns::set_maintenance(c, &operator, &host.host_id, request.get_ref().enable)?;
        let host = resolve_host(c, &host.host_id)?;
        Ok(Response::new(host_info(c, host)))
    }

    async fn list_events(
        &self,
        request: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        require_operator(&request)?;
        let filter = event_filter(&self.coordinator, request.get_ref())?;
        let events = self
            .coordinator
            .store
            .events(&filter)?
            .into_iter()
            .map(event_proto)
            .collect();
        Ok(Response::new(v1::ListEventsResponse { events }))
    }

    type FollowEventsStream = EventStream<v1::Event>;

    async fn follow_events(
        &self,
        request: Request<v1::ListEventsRequest>,
    ) -> Result<Response<Self::FollowEventsStream>, Status> {
        require_operator(&request)?;
        let c = self.coordinator.clone();
        let filter = event_filter(&c, request.get_ref())?;
        // Subscribe first, then read the backlog, then skip live events already in it.
        let mut live = c.events.subscribe();
        let backlog = c.store.events(&filter)?;
        let mut last_id = backlog.last().map(|e| e.id).unwrap_or(0);
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            for event in backlog {
                if tx.send(Ok(event_proto(event))).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    event = live.recv() => match event {
                        Ok(event) => {
                            let wanted = event.id > last_id
                                && filter.host_id.as_ref().is_none_or(|h| *h == event.host_id)
                                && filter.campaign_id.as_ref().is_none_or(|id| *id == event.campaign_id);
                            if wanted {
                                last_id = event.id;
                                if tx.send(Ok(event_proto(event))).await.is_err() {
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
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as Self::FollowEventsStream
        ))
    }
}

fn event_filter(c: &Coordinator, r: &v1::ListEventsRequest) -> Result<EventFilter, Status> {
    let host_id = if r.host.is_empty() {
        None
    } else {
        Some(resolve_host(c, &r.host)?.host_id)
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
        limit: r.limit,
    })
}
