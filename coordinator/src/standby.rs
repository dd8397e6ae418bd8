//! A standby coordinator's answer: while another coordinator of the fleet leads, this one
//! listens on its usual address with the same TLS, and answers every call — an agent's
//! session, an enrollment, an operator's command — with `UNAVAILABLE` naming the leader in the
//! [`LEADER_METADATA`] header (empty while none leads) and in the message, for people. Agents and the CLI connect
//! there next. A standby reads and writes nothing of the fleet: it only follows the lease.

use std::future::Future;

use axum::extract::State;
use pitcrew_proto::LEADER_METADATA;
use tokio::sync::watch;
use tonic::Status;

use crate::config::Limits;
use crate::server::{Connections, builder};

/// The status a standby answers with, naming the leader's address when one leads.
/// The header is always there (empty while none leads), so a client tells a standby's answer
/// from a coordinator that is merely unavailable.
pub fn refusal(leader: &str) -> Status {
    let mut status = if leader.is_empty() {
        Status::unavailable(
            "this coordinator is a standby and no coordinator leads right now (a new leader \
             takes over within a lease); try again shortly",
        )
    } else {
        Status::unavailable(format!(
            "this coordinator is a standby; the leader is {leader}"
        ))
    };
    // An address that is not a valid header value is only in the message.
    let value = leader
        .parse()
        .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static(""));
    status.metadata_mut().insert(LEADER_METADATA, value);
    status
}

async fn answer(State(leader): State<watch::Receiver<String>>) -> axum::response::Response {
    let leader = leader.borrow().clone();
    refusal(&leader).into_http()
}

/// Answers every call on `connections` with [`refusal`] naming the leader `leader` holds,
/// until `until` resolves; then closes its connections gracefully.
pub async fn serve(
    connections: Connections,
    limits: Limits,
    leader: watch::Receiver<String>,
    until: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = axum::Router::new().fallback(answer).with_state(leader);
    builder(&limits)
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming_shutdown(connections.stream(), until)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_names_the_leader_in_its_answer_and_metadata() {
        let status = refusal("https://coord-2.example:7443");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("https://coord-2.example:7443"));
        assert_eq!(
            status.metadata().get(LEADER_METADATA).unwrap(),
            "https://coord-2.example:7443"
        );
        let none = refusal("");
        assert_eq!(none.code(), tonic::Code::Unavailable);
        assert_eq!(none.metadata().get(LEADER_METADATA).unwrap(), "");
        assert!(none.message().contains("no coordinator leads"));
    }
}
