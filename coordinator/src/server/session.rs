//! `AgentSession`: the one long-lived stream per agent, and certificate renewal.
//!
//! Who the agent is comes from its verified certificate; the certificate must be the newest one
//! issued to that host (a rebuilt host's old certificate is refused), and the hello's host id
//! must match it. Work is pushed down the stream; results come back up, are stored once, logged
//! and acknowledged so the agent can forget them.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use pitcrew_proto::identity::require_host;
use pitcrew_proto::v1::{
    self, AgentMessage, CoordinatorMessage, RenewRequest, RenewResponse, agent_message::Msg,
    agent_session_server::AgentSession, coordinator_message,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Coordinator;

/// How long a new stream may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SessionService {
    coordinator: Arc<Coordinator>,
}

impl SessionService {
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        SessionService { coordinator }
    }
}

/// Checks that the presented certificate is the one the registry accepts for this host.
fn check_current_certificate(
    c: &Coordinator,
    host_id: &str,
    serial: &str,
) -> Result<crate::store::HostRecord, Status> {
    let Some(host) = c.store.host(host_id)? else {
        tracing::warn!(message = "refused a session from a host that is not enrolled", %host_id);
        return Err(Status::permission_denied(format!(
            "host {host_id} is not enrolled"
        )));
    };
    if host.cert_serial != serial {
        tracing::warn!(message = "refused a replaced certificate", %host_id, presented = %serial, current = %host.cert_serial);
        let _ = c.events.audit(
            "session",
            host_id,
            "",
            &format!("refused a session with certificate {serial}: the host re-enrolled and holds a newer certificate"),
        );
        return Err(Status::permission_denied(format!(
            "this certificate of host {host_id} was replaced by a later enrollment"
        )));
    }
    Ok(host)
}

type ConnectStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentSession for SessionService {
    type ConnectStream = ConnectStream;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let (host_id, serial) = require_host(&request)?;
        let c = self.coordinator.clone();
        check_current_certificate(&c, &host_id, &serial)?;
        let mut inbound = request.into_inner();

        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 seconds"))??;
        let Some(AgentMessage {
            msg: Some(Msg::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message of a session must be a hello",
            ));
        };
        let facts = hello.facts.clone().unwrap_or_default();
        if facts.host_id != host_id {
            tracing::warn!(message = "refused a hello claiming another host's id", certificate = %host_id, claimed = %facts.host_id);
            c.events.audit(
                "session",
                &host_id,
                "",
                &format!(
                    "refused a session: the certificate names {host_id} but the hello claims {}",
                    facts.host_id
                ),
            )?;
            return Err(Status::permission_denied(format!(
                "the hello claims host {} but the certificate names {host_id}",
                facts.host_id
            )));
        }

        let (tx, rx) = mpsc::channel(64);
        let generation = c.registry.connect(&host_id, tx.clone());
        let now = pitcrew_proto::now_ms();
        c.store
            .set_facts(&host_id, &facts.hostname, &facts.encode_to_vec(), now)?;
        tracing::info!(message = "agent connected", %host_id, hostname = %facts.hostname, boot_id = %facts.boot_id, version = %hello.agent_version);
        c.events.host(
            &host_id,
            "",
            "session",
            "connected",
            &format!(
                "agent {} connected (boot id {}, {} unacknowledged results)",
                hello.agent_version,
                facts.boot_id,
                hello.unacknowledged.len()
            ),
        )?;

        let welcome = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Welcome(v1::Welcome {
                heartbeat_seconds: c.config.heartbeat_seconds,
            })),
        };
        let _ = tx.send(Ok(welcome)).await;

        // Results that finished while we were apart come first: they may complete actions we
        // would otherwise re-send.
        let mut acks = Vec::new();
        for result in hello.unacknowledged {
            acks.push(result.action_id.clone());
            record_result(&c, &host_id, result)?;
        }
        if !acks.is_empty() {
            let _ = tx.send(Ok(ack(acks))).await;
        }
        // Re-send what we sent before but never got a result for. The agent answers ids it has
        // already run from its journal, so this never runs anything twice.
        for record in c.store.unfinished_actions(&host_id)? {
            match v1::ActionRequest::decode(record.request.as_slice()) {
                Ok(request) => {
                    let message = CoordinatorMessage {
                        msg: Some(coordinator_message::Msg::Action(request)),
                    };
                    let _ = tx.send(Ok(message)).await;
                }
                Err(error) => {
                    tracing::error!(message = "a stored action request is unreadable", action_id = %record.action_id, %error)
                }
            }
        }
        c.registry.changed();

        let timeout = Duration::from_secs(u64::from(c.config.heartbeat_timeout_seconds));
        tokio::spawn(async move {
            let reason = run_inbound(&c, &host_id, &tx, &mut inbound, timeout).await;
            if c.registry.disconnect(&host_id, generation) {
                tracing::info!(message = "agent disconnected", %host_id, %reason);
                let _ = c.store.set_last_seen(&host_id, pitcrew_proto::now_ms());
                let _ = c
                    .events
                    .host(&host_id, "", "session", "disconnected", &reason);
            }
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as ConnectStream
        ))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let (host_id, serial) = require_host(&request)?;
        let c = &self.coordinator;
        check_current_certificate(c, &host_id, &serial)?;
        let issued =
            c.ca.sign_host_csr(
                &request.get_ref().csr_der,
                &host_id,
                c.config.host_cert_lifetime,
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        c.store.set_cert_serial(&host_id, &issued.serial)?;
        c.events.audit(
            "session",
            &host_id,
            "",
            &format!("certificate renewed (serial {})", issued.serial),
        )?;
        Ok(Response::new(RenewResponse {
            certificate_pem: issued.cert_pem,
            ca_pem: c.ca.cert_pem().to_owned(),
        }))
    }
}

fn ack(ids: Vec<String>) -> CoordinatorMessage {
    CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Ack(v1::AckResults {
            action_ids: ids,
        })),
    }
}

/// Reads the agent's messages until the stream ends, fails, or goes silent past the heartbeat
/// timeout. Returns why it ended.
async fn run_inbound(
    c: &Coordinator,
    host_id: &str,
    tx: &crate::registry::Outbound,
    inbound: &mut Streaming<AgentMessage>,
    timeout: Duration,
) -> String {
    let mut closing = c.registry.closing();
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(timeout, inbound.message()) => next,
            _ = closing.wait_for(|closing| *closing) => return "the coordinator is shutting down".to_owned(),
        };
        let message = match next {
            Err(_) => return format!("no message for {} s (heartbeat timeout)", timeout.as_secs()),
            Ok(Err(status)) => return format!("stream failed: {}", status.message()),
            Ok(Ok(None)) => return "the agent closed its session".to_owned(),
            Ok(Ok(Some(message))) => message,
        };
        let now = pitcrew_proto::now_ms();
        match message.msg {
            Some(Msg::Heartbeat(_)) => {
                let _ = c.store.set_last_seen(host_id, now);
            }
            Some(Msg::Facts(facts)) => {
                if facts.host_id != host_id {
                    tracing::warn!(message = "ignored facts claiming another host's id", %host_id, claimed = %facts.host_id);
                    continue;
                }
                let _ = c
                    .store
                    .set_facts(host_id, &facts.hostname, &facts.encode_to_vec(), now);
                c.registry.changed();
            }
            Some(Msg::Event(event)) => {
                let _ = c.store.set_last_seen(host_id, now);
                match event.event {
                    Some(v1::action_event::Event::Result(result)) => {
                        let id = result.action_id.clone();
                        if let Err(error) = record_result(c, host_id, result) {
                            tracing::error!(message = "could not record an action result", %host_id, %error);
                            continue;
                        }
                        let _ = tx.send(Ok(ack(vec![id]))).await;
                    }
                    Some(_) if belongs_to(c, host_id, &event.action_id) => {
                        c.registry.publish_action_event(event);
                    }
                    Some(_) => {}
                    None => {}
                }
            }
            Some(Msg::Hello(_)) => {
                tracing::warn!(message = "ignored a second hello on one session", %host_id);
            }
            None => {}
        }
    }
}

/// Whether an action id was sent to this host (a host cannot report on another's actions).
fn belongs_to(c: &Coordinator, host_id: &str, action_id: &str) -> bool {
    matches!(c.store.action(action_id), Ok(Some(record)) if record.host_id == host_id)
}

/// Stores a final result once, logs it to the host's event log and tells watchers.
pub fn record_result(
    c: &Coordinator,
    host_id: &str,
    result: v1::ActionResult,
) -> Result<(), Status> {
    let Some(record) = c.store.action(&result.action_id)? else {
        tracing::warn!(message = "ignored a result for an action this coordinator never sent", %host_id, action_id = %result.action_id);
        return Ok(());
    };
    if record.host_id != host_id {
        tracing::warn!(message = "ignored a result reported by the wrong host", %host_id, owner = %record.host_id, action_id = %result.action_id);
        return Ok(());
    }
    if c.store
        .finish_action(&result.action_id, &result.encode_to_vec())?
    {
        let outcome = v1::Outcome::try_from(result.outcome).unwrap_or(v1::Outcome::Unspecified);
        let outcome = outcome_word(outcome);
        let mut message = result.message.clone();
        if !result.refused_by.is_empty() {
            message = format!("{message} (rule {})", result.refused_by);
        }
        if !result.output.is_empty() {
            message = format!("{message}\n{}", result.output.trim_end());
        }
        // A campaign step run on another host (a drain on a manager) belongs to the log of the
        // host being serviced; say where it ran.
        let serviced = crate::campaigns::serviced_host(c, &record.campaign_id, &result.action_id)
            .unwrap_or_else(|| host_id.to_owned());
        if serviced != host_id {
            let ran_on = c
                .store
                .host(host_id)?
                .map(|h| h.hostname)
                .unwrap_or_else(|| host_id.to_owned());
            message = format!("(ran on {ran_on}) {message}");
        }
        c.events.host(
            &serviced,
            &record.campaign_id,
            &result.action_id,
            outcome,
            &message,
        )?;
    }
    crate::campaigns::on_result(c, &record.campaign_id, host_id, &result);
    c.registry.publish_action_event(v1::ActionEvent {
        action_id: result.action_id.clone(),
        event: Some(v1::action_event::Event::Result(result)),
    });
    c.registry.changed();
    Ok(())
}

/// The one word an operator sees for an outcome.
pub fn outcome_word(outcome: v1::Outcome) -> &'static str {
    match outcome {
        v1::Outcome::Succeeded => "succeeded",
        v1::Outcome::Failed => "failed",
        v1::Outcome::Refused => "refused",
        v1::Outcome::TimedOut => "timed-out",
        v1::Outcome::Cancelled => "cancelled",
        v1::Outcome::Interrupted => "interrupted",
        v1::Outcome::Unspecified => "unknown",
    }
}
