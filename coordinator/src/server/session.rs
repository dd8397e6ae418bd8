//! `AgentSession`: the one long-lived stream per agent, and certificate renewal.
//!
//! Who the agent is comes from its verified certificate; the certificate must be the newest one
//! issued to that host (a rebuilt host's old certificate is refused), and the hello's host id
//! must match it. Work is pushed down the stream without waiting (see the registry); results
//! come back up, are made durable by the engine together with what they change, and only then
//! acknowledged so the agent can forget them. Heartbeats touch memory only.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
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
use crate::registry::{OUTBOUND_CAPACITY, SessionShared};
use crate::store::HostRecord;

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

/// Checks that the presented certificate is one the registry accepts for this host: its
/// current one, or a renewed one not used before — whose first use makes it the only one, and
/// ends any session still open on the old one.
async fn check_current_certificate(
    c: &Coordinator,
    host_id: &str,
    serial: &str,
) -> Result<HostRecord, Status> {
    let Some(mut host) = c.store.host(host_id.to_owned()).await? else {
        tracing::warn!(message = "refused a session from a host that is not enrolled", %host_id);
        return Err(Status::permission_denied(format!(
            "host {host_id} is not enrolled"
        )));
    };
    if host.removed_at_ms != 0 {
        // Decommissioned (`pitcrew hosts remove`): none of its certificates works any more.
        tracing::warn!(message = "refused a session of a removed host", %host_id, presented = %serial);
        return Err(Status::permission_denied(format!(
            "host {host_id} was removed from the fleet; its certificate is no longer accepted"
        )));
    }
    if !host.pending_serial.is_empty() && host.pending_serial == serial {
        if c.store
            .promote_pending_serial(host_id.to_owned(), serial.to_owned())
            .await?
        {
            c.registry
                .close_session(host_id, "the host now uses its renewed certificate");
            c.events.audit(
                "session",
                host_id,
                "",
                &format!(
                    "renewed certificate {serial} in use; the previous one is no longer accepted"
                ),
            );
        }
        host.cert_serial = serial.to_owned();
        host.pending_serial.clear();
    }
    if host.cert_serial != serial {
        tracing::warn!(message = "refused a replaced certificate", %host_id, presented = %serial, current = %host.cert_serial);
        c.events.audit(
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

/// One live session's identity, for the tasks that serve it.
struct Live {
    host_id: String,
    generation: u64,
    shared: Arc<SessionShared>,
}

#[tonic::async_trait]
impl AgentSession for SessionService {
    type ConnectStream = ConnectStream;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let (host_id, serial) = require_host(&request)?;
        let c = self.coordinator.clone();
        let record = check_current_certificate(&c, &host_id, &serial).await?;
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
            );
            return Err(Status::permission_denied(format!(
                "the hello claims host {} but the certificate names {host_id}",
                facts.host_id
            )));
        }

        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let now = pitcrew_proto::now_ms();
        let (generation, shared) = c.registry.connect(&host_id, tx.clone(), now);
        // A removal committed while this hello was awaited found no session to close: look
        // again now that this one is registered (a later removal closes it in the registry).
        let removed = match c.store.host(host_id.clone()).await {
            Ok(host) => host.is_none_or(|h| h.removed_at_ms != 0),
            Err(error) => {
                c.registry.disconnect(&host_id, generation);
                return Err(error.into());
            }
        };
        if removed {
            c.registry.disconnect(&host_id, generation);
            return Err(Status::permission_denied(format!(
                "host {host_id} was removed from the fleet; its certificate is no longer accepted"
            )));
        }
        let live = Live {
            host_id: host_id.clone(),
            generation,
            shared,
        };
        store_facts(&c, &host_id, &facts, now);
        c.engine
            .session_changed(&host_id, generation, Some(facts.clone()));
        tracing::info!(message = "agent connected", %host_id, hostname = %record.hostname, boot_id = %facts.boot_id, version = %hello.agent_version);
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
        );

        let welcome = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Welcome(v1::Welcome {
                heartbeat_seconds: c.config.heartbeat_seconds,
            })),
        };
        c.registry.try_send(&host_id, welcome);

        let unacknowledged = hello.unacknowledged;
        // This task lives as long as the session, and a task holds room for the largest state
        // its future can be in, idle or not: the rare, large steps (recording a result, reading
        // what to re-send) are boxed so that an idle session holds only its read loop.
        tokio::spawn(async move {
            // Results that finished while we were apart come first: they may complete actions
            // we would otherwise re-send.
            let mut acks = Vec::new();
            for result in unacknowledged {
                let id = result.action_id.clone();
                if Box::pin(record_result(&c, &live.host_id, result)).await {
                    acks.push(id);
                }
            }
            if !acks.is_empty() {
                c.registry.try_send(&live.host_id, ack(acks));
            }
            c.engine.results_replayed(&live.host_id);
            Box::pin(resend_unfinished(&c, &live.host_id)).await;
            let reason = run_inbound(&c, &live, &mut inbound).await;
            if c.registry.disconnect(&live.host_id, live.generation) {
                tracing::info!(message = "agent disconnected", host_id = %live.host_id, %reason);
                c.engine
                    .session_changed(&live.host_id, live.generation, None);
                let seen = vec![(live.host_id.clone(), live.shared.last_seen_ms())];
                c.store.record_last_seen(seen);
                c.events
                    .host(&live.host_id, "", "session", "disconnected", &reason);
            }
        });
        let outbound = ReceiverStream::new(rx).map(|message| Ok(*message));
        Ok(Response::new(Box::pin(outbound) as ConnectStream))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let (host_id, serial) = require_host(&request)?;
        let c = &self.coordinator;
        check_current_certificate(c, &host_id, &serial).await?;
        let issued =
            c.ca.sign_host_csr(
                &request.get_ref().csr_der,
                &host_id,
                c.config.host_cert_lifetime,
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Two-phase: the current certificate stays valid until the new one is first used, so
        // an answer lost on the way (or a crash while the agent stores it) locks nobody out.
        c.store
            .set_pending_serial(host_id.clone(), issued.serial.clone())
            .await?;
        c.events.audit(
            "session",
            &host_id,
            "",
            &format!(
                "certificate renewed (serial {}; the current one stays valid until it is first used)",
                issued.serial
            ),
        );
        Ok(Response::new(RenewResponse {
            certificate_pem: issued.cert_pem,
            ca_pem: c.ca.cert_pem().to_owned(),
        }))
    }
}

/// Keeps the host's latest facts for listings (no one waits on it).
fn store_facts(c: &Coordinator, host_id: &str, facts: &v1::Facts, now_ms: i64) {
    c.store
        .store_facts(host_id.to_owned(), facts.encode_to_vec(), now_ms);
}

/// Re-sends what was sent before but never got a result. The agent answers ids it has already
/// run from its journal, so this never runs anything twice.
async fn resend_unfinished(c: &Coordinator, host_id: &str) {
    let unfinished = match c.store.unfinished_actions(host_id.to_owned()).await {
        Ok(unfinished) => unfinished,
        Err(error) => {
            tracing::error!(message = "cannot read the actions to re-send", %host_id, %error);
            return;
        }
    };
    for record in unfinished {
        match v1::ActionRequest::decode(record.request.as_slice()) {
            Ok(request) => {
                let message = CoordinatorMessage {
                    msg: Some(coordinator_message::Msg::Action(request)),
                };
                if !c.registry.try_send(host_id, message) {
                    return;
                }
            }
            Err(error) => {
                tracing::error!(message = "a stored action request is unreadable", action_id = %record.action_id, %error)
            }
        }
    }
}

fn ack(ids: Vec<String>) -> CoordinatorMessage {
    CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Ack(v1::AckResults {
            action_ids: ids,
        })),
    }
}

/// Reads the agent's messages until the stream ends or fails, the registry closes the session
/// (silent past the heartbeat timeout, not reading, replaced), or the coordinator shuts down.
/// Returns why it ended.
async fn run_inbound(
    c: &Coordinator,
    live: &Live,
    inbound: &mut Streaming<AgentMessage>,
) -> String {
    let mut closing = c.registry.closing();
    let host_id = live.host_id.as_str();
    loop {
        let next = tokio::select! {
            next = inbound.message() => next,
            reason = live.shared.closed() => return reason,
            _ = closing.wait_for(|closing| *closing) => return "the coordinator is shutting down".to_owned(),
        };
        let message = match next {
            Err(status) => return format!("stream failed: {}", status.message()),
            Ok(None) => return "the agent closed its session".to_owned(),
            Ok(Some(message)) => message,
        };
        let now = pitcrew_proto::now_ms();
        live.shared.seen(now);
        // Only a result waits (for the engine), and it waits after the message is gone: the
        // session task keeps room for whatever is held across its awaits for as long as the
        // session lives, and a whole message is large.
        let Some(result) = take_message(c, live, message, now) else {
            continue;
        };
        let id = result.action_id.clone();
        // Boxed: see the session task in `connect`.
        if Box::pin(record_result(c, host_id, result)).await {
            c.registry.try_send(host_id, ack(vec![id]));
        }
    }
}

/// Handles one message of the agent's that needs no waiting; returns a final result, which
/// the caller makes durable before acknowledging it.
fn take_message(
    c: &Coordinator,
    live: &Live,
    message: AgentMessage,
    now: i64,
) -> Option<v1::ActionResult> {
    let host_id = live.host_id.as_str();
    match message.msg {
        Some(Msg::Heartbeat(_)) => {}
        Some(Msg::Facts(facts)) => {
            if facts.host_id != host_id {
                tracing::warn!(message = "ignored facts claiming another host's id", %host_id, claimed = %facts.host_id);
                return None;
            }
            store_facts(c, host_id, &facts, now);
            c.engine.facts_changed(host_id, live.generation, facts);
        }
        Some(Msg::Event(event)) => match event.event {
            Some(v1::action_event::Event::Result(result)) => return Some(result),
            Some(_) => c.registry.publish_action_event(host_id, event),
            None => {}
        },
        Some(Msg::Hello(_)) => {
            tracing::warn!(message = "ignored a second hello on one session", %host_id);
        }
        None => {}
    }
    None
}

/// Makes a final result durable (with what it changes in its campaign) and tells watchers.
/// Returns whether it may be acknowledged: results for actions this coordinator never sent to
/// this host are ignored and not acknowledged.
async fn record_result(c: &Coordinator, host_id: &str, result: v1::ActionResult) -> bool {
    let record = match c.store.action(result.action_id.clone()).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            tracing::warn!(message = "ignored a result for an action this coordinator never sent", %host_id, action_id = %result.action_id);
            return false;
        }
        Err(error) => {
            tracing::error!(message = "cannot read an action record", %host_id, %error);
            return false;
        }
    };
    if record.host_id != host_id {
        tracing::warn!(message = "ignored a result reported by the wrong host", %host_id, owner = %record.host_id, action_id = %result.action_id);
        return false;
    }
    let first_report = record.result.is_none();
    if let Err(error) = c
        .engine
        .result(host_id.to_owned(), record, result.clone(), first_report)
        .await
    {
        tracing::error!(message = "could not record an action result", %host_id, %error);
        return false;
    }
    c.registry.publish_action_event(
        host_id,
        v1::ActionEvent {
            action_id: result.action_id.clone(),
            event: Some(v1::action_event::Event::Result(result)),
        },
    );
    true
}
