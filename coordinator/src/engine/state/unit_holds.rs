//! Units held down on hosts that left maintenance: the engine lifts them.
//!
//! A campaign's `unit stop` holds the unit down on its host (the agent's drop-in, see
//! `agent/src/holds.rs`) until the host's run starts it again. When a host leaves maintenance
//! with holds still in place — its run done without starting the unit, or released, skipped or
//! cancelled — the engine sends it a `release_holds` naming exactly the holds its facts report,
//! recorded before it is sent like every action. It is level-triggered: whatever the path out of
//! maintenance (a coordinator restart included), a host that reports holds while nothing holds
//! it is sent one release per hold, and an agent that was away gets it when it is back. Only
//! hosts that report holds are looked at, so the cost is the number of such hosts, not the
//! fleet.

use std::collections::{BTreeMap, BTreeSet};

use pitcrew_proto::v1;
use prost::Message;

use super::{EngineState, Turn};
use crate::store::ActionRecord;

/// What the engine knows of holds on hosts.
#[derive(Debug, Default)]
pub(crate) struct UnitHolds {
    /// The holds each host's latest facts report (hosts with none are absent).
    reported: BTreeMap<String, Vec<v1::HeldUnit>>,
    /// Hold ids a release was already sent for, per host, until the facts stop reporting them
    /// (facts lag the release by up to the agent's facts interval).
    released: BTreeMap<String, BTreeSet<String>>,
    /// Releases sent by this engine, to keep their ids apart within one millisecond.
    sent: u64,
}

impl UnitHolds {
    /// Takes a host's latest facts' holds.
    pub fn reported(&mut self, host: &str, held: &[v1::HeldUnit]) {
        if held.is_empty() {
            self.reported.remove(host);
            self.released.remove(host);
            return;
        }
        if let Some(sent) = self.released.get_mut(host) {
            sent.retain(|id| held.iter().any(|h| &h.hold_id == id));
        }
        self.reported.insert(host.to_owned(), held.to_vec());
    }
}

/// The id of the `seq`th release this engine sends to `host` at `now_ms`: unique across
/// restarts (the time) and within one millisecond (the count), and never the shape of a
/// campaign step's id (`<campaign>:<host>:<phase>-<n>:a<n>`) nor of an operator's (no `:`).
fn release_id(host: &str, now_ms: i64, seq: u64) -> String {
    format!("release-holds:{host}:{now_ms}-{seq}")
}

impl EngineState {
    /// Sends a release of its holds to every connected host that reports holds while nothing
    /// holds it (no campaign, manual maintenance or operator action), once per hold.
    pub fn release_free_holds(&mut self, now_ms: i64, turn: &mut Turn) {
        let candidates: Vec<(String, Vec<v1::HeldUnit>)> = self
            .unit_holds
            .reported
            .iter()
            .map(|(host, held)| (host.clone(), held.clone()))
            .collect();
        for (host, held) in candidates {
            let connected = self.fleet.hosts.get(&host).is_some_and(|v| v.connected);
            if !connected || !self.hold(&host).holder.is_empty() {
                continue;
            }
            let sent = self.unit_holds.released.entry(host.clone()).or_default();
            let holds: Vec<v1::HeldUnit> = held
                .into_iter()
                .filter(|h| !sent.contains(&h.hold_id))
                .collect();
            if holds.is_empty() {
                continue;
            }
            sent.extend(holds.iter().map(|h| h.hold_id.clone()));
            self.unit_holds.sent += 1;
            let request = v1::ActionRequest {
                action_id: release_id(&host, now_ms, self.unit_holds.sent),
                action: Some(v1::Action {
                    kind: Some(v1::action::Kind::ReleaseHolds(v1::ReleaseHolds { holds })),
                }),
                timeout_seconds: 0,
            };
            turn.actions.push(ActionRecord {
                action_id: request.action_id.clone(),
                host_id: host.clone(),
                campaign_id: String::new(),
                request: request.encode_to_vec(),
                result: None,
                created_at_ms: now_ms,
            });
            turn.sends.push((
                host,
                v1::CoordinatorMessage {
                    msg: Some(v1::coordinator_message::Msg::Action(request)),
                },
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(unit: &str, id: &str) -> v1::HeldUnit {
        v1::HeldUnit {
            unit: unit.into(),
            hold_id: id.into(),
        }
    }

    #[test]
    fn a_release_sent_is_remembered_until_the_facts_stop_reporting_the_hold() {
        let mut holds = UnitHolds::default();
        holds.reported("h1", &[held("a.service", "c1:h1:before-1:a0")]);
        holds
            .released
            .entry("h1".into())
            .or_default()
            .insert("c1:h1:before-1:a0".into());
        // Stale facts still report it: it stays remembered (no second release).
        holds.reported("h1", &[held("a.service", "c1:h1:before-1:a0")]);
        assert!(holds.released["h1"].contains("c1:h1:before-1:a0"));
        // A newer hold of the same unit is another hold.
        holds.reported("h1", &[held("a.service", "c2:h1:before-1:a0")]);
        assert!(holds.released["h1"].is_empty());
        holds.reported("h1", &[]);
        assert!(!holds.reported.contains_key("h1") && !holds.released.contains_key("h1"));
    }

    #[test]
    fn release_ids_are_neither_campaign_nor_operator_ids() {
        let id = release_id("abc", 5, 2);
        assert_eq!(id, "release-holds:abc:5-2");
        assert!(id.contains(':'), "operator ids have no ':'");
        assert!(
            !id.rsplit(':').next().unwrap().starts_with('a'),
            "campaign step ids end in :a<attempt>"
        );
    }
}
