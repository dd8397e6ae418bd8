//! A standby coordinator's answer: while another coordinator of the fleet leads, this one
//! listens on its usual address with the same TLS, and answers every call — an agent's
//! session, an enrollment, an operator's command — with `UNAVAILABLE` naming the leader in the
//! [`LEADER_METADATA`] header (empty while none leads) and in the message, for people. Agents
//! and the CLI connect there next. A standby reads and writes nothing of the fleet: it only
//! follows the lease.
//!
//! While it knows of no leader, or the caller says (in [`UNREACHABLE_LEADER_METADATA`]) that
//! the leader it names could not be reached, the standby holds the call until the lease names
//! another leader, for at most a lease and a renewal: a fleet that lost its leader waits here
//! instead of going round the coordinators (a TLS handshake each time), and arrives at the
//! new leader the moment there is one.

use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use pitcrew_proto::{LEADER_METADATA, UNREACHABLE_LEADER_METADATA};
use tokio::sync::watch;
use tonic::Status;

use crate::config::Limits;
use crate::leader::LeaderSeen;
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

/// What a standby's answer needs: where the leader is, and how long a call may wait for one.
#[derive(Clone)]
struct Standby {
    leader: watch::Receiver<LeaderSeen>,
    hold: Duration,
}

async fn answer(State(standby): State<Standby>, headers: HeaderMap) -> axum::response::Response {
    let unreachable = headers
        .get(UNREACHABLE_LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let leader = named_leader(standby.leader, &unreachable, standby.hold).await;
    refusal(&leader).into_http()
}

/// The leader to name to a caller that could not reach `unreachable` (empty: none): at once
/// when a leader other than that one is known; else the first new leader within `hold` (a
/// later lease's, even at the same address: a leader restarted where it was); else what is
/// known when `hold` is over.
async fn named_leader(
    mut leader: watch::Receiver<LeaderSeen>,
    unreachable: &str,
    hold: Duration,
) -> String {
    let seen = leader.borrow().clone();
    let usable = |now: &LeaderSeen| {
        !now.address.is_empty() && (now.address != unreachable || now.epoch != seen.epoch)
    };
    let waited = tokio::time::timeout(hold, leader.wait_for(usable))
        .await
        .map(|now| now.map(|now| now.address.clone()));
    match waited {
        Ok(Ok(address)) => address,
        // Held long enough (or this standby is going away): what it knows now.
        _ => leader.borrow().address.clone(),
    }
}

/// Answers every call on `connections` with [`refusal`] naming the leader `leader` holds
/// (holding calls for at most `hold` while there is none to name), until `until` resolves;
/// then closes its connections gracefully.
pub async fn serve(
    connections: Connections,
    limits: Limits,
    leader: watch::Receiver<LeaderSeen>,
    hold: Duration,
    until: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = axum::Router::new()
        .fallback(answer)
        .with_state(Standby { leader, hold });
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

    const HOLD: Duration = Duration::from_secs(4);

    fn seen(address: &str, epoch: i64) -> LeaderSeen {
        LeaderSeen {
            address: address.into(),
            epoch,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_names_a_live_leader_at_once() {
        let (_tx, rx) = watch::channel(seen("https://c1:7443", 1));
        let started = tokio::time::Instant::now();
        assert_eq!(named_leader(rx.clone(), "", HOLD).await, "https://c1:7443");
        assert_eq!(
            named_leader(rx, "https://c3:7443", HOLD).await,
            "https://c1:7443"
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_lost_the_leader_waits_for_the_next_one() {
        let (tx, rx) = watch::channel(seen("https://c1:7443", 1));
        let started = tokio::time::Instant::now();
        let asked = tokio::spawn(named_leader(rx, "https://c1:7443", HOLD));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        // The lease lapses, then another coordinator takes it.
        tx.send_replace(seen("", 1));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!asked.is_finished());
        tx.send_replace(seen("https://c2:7443", 2));
        assert_eq!(asked.await.unwrap(), "https://c2:7443");
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_is_held_no_longer_than_the_hold() {
        let (_tx, rx) = watch::channel(seen("", 0));
        let started = tokio::time::Instant::now();
        assert_eq!(named_leader(rx, "", HOLD).await, "");
        assert_eq!(started.elapsed(), HOLD);
        // The leader the caller could not reach is named when nothing changed: it may be
        // only the caller's path to it that is broken.
        let (_tx, rx) = watch::channel(seen("https://c1:7443", 1));
        let started = tokio::time::Instant::now();
        assert_eq!(
            named_leader(rx, "https://c1:7443", HOLD).await,
            "https://c1:7443"
        );
        assert_eq!(started.elapsed(), HOLD);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_restarted_at_the_same_address_is_named_once_it_leads_again() {
        let (tx, rx) = watch::channel(seen("https://c1:7443", 1));
        let started = tokio::time::Instant::now();
        let asked = tokio::spawn(named_leader(rx, "https://c1:7443", HOLD));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!asked.is_finished());
        tx.send_replace(seen("https://c1:7443", 2));
        assert_eq!(asked.await.unwrap(), "https://c1:7443");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
