//! What delays a planned wave when the plan starts from the fleet as it is: hosts held by other
//! campaigns or manual maintenance, disconnected agents (and the quorum guard they trip for the
//! other managers), windows closed when a host's turn comes, `on` steps with no usable target.
//!
//! The planner simulates `decide` from that state. A closed window only moves the simulated
//! clock. The others have no known end: when the simulation stalls on them, [`Delays::lift`]
//! notes each on the host it delays and lifts it (the holder is assumed to end, the agent to
//! come back), and the simulation goes on. Each note is shown on the wave of the first host it
//! delayed, so the plan says where a run would wait, and why.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::decide::{Blocker, Decisions};
use crate::fleet::{Fleet, ManualPhase, ManualState, Role};
use crate::holders::{HeldHost, Holders};
use crate::plan::PlannedHost;
use crate::run::{CampaignRun, HostState};
use crate::window::fmt_ms;

/// One reason a wave of the plan waits, from the state the plan starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveBlocker {
    /// The wave it delays.
    pub wave: u32,
    /// The host it delays (the first one, when it delays several).
    pub host_id: String,
    pub hostname: String,
    /// `held`, `worker_pool`, `manager_slot`, `quorum_guard`, `disconnected`,
    /// `window_closed`, `no_target`.
    pub kind: String,
    /// For `held` and `manager_slot`: who holds it ("campaign ID (NAME)", "manual maintenance
    /// by OPERATOR").
    pub held_by: String,
    /// The sentence an operator reads.
    pub text: String,
}

/// A delay seen during the simulation, before it is known which wave it lands on.
#[derive(Debug)]
struct Note {
    /// The cause: one cause delaying several hosts is shown once, on the earliest wave.
    key: String,
    host_id: String,
    kind: &'static str,
    held_by: String,
    text: String,
}

/// The current state as the simulation still sees it, and the delays noted so far.
#[derive(Debug)]
pub(crate) struct Delays {
    start_ms: i64,
    /// Holders not lifted yet.
    holders: Holders,
    notes: Vec<Note>,
    /// Pending hosts waiting for a window: host id → (seen closed at, opens at).
    window_waits: BTreeMap<String, (i64, i64)>,
}

impl Delays {
    /// Makes `fleet` (the simulation's) hold what `holders` hold. Each holder is put in as
    /// manual maintenance, which takes exactly the slots a campaign's host does (a manager
    /// its cluster's one manager slot, a worker itself), so `decide` counts it as a run would.
    pub fn new(holders: &Holders, fleet: &mut Fleet, start_ms: i64) -> Delays {
        fleet.manual.clear();
        fleet.operator_actions.clear();
        let mut kept = Holders::default();
        for held in holders.hosts.values() {
            if fleet.hosts.contains_key(&held.host_id) {
                fleet.manual.insert(
                    held.host_id.clone(),
                    ManualState {
                        phase: ManualPhase::Maintenance,
                        since_ms: start_ms,
                        by: String::new(),
                    },
                );
                kept.hosts.insert(held.host_id.clone(), held.clone());
            }
        }
        Delays {
            start_ms,
            holders: kept,
            notes: Vec::new(),
            window_waits: BTreeMap::new(),
        }
    }

    /// After a round: which pending hosts of `run` wait for a window (and since when).
    pub fn observe(&mut self, run: &CampaignRun, decided: &Decisions, now_ms: i64) {
        // One pass over the round's blockers, then one lookup per host: looking each host up
        // in the list made every round quadratic in the campaign's size (planning a
        // 10,000-host campaign took tens of seconds of the coordinator's CPU).
        let mut first: HashMap<&str, &Blocker> = HashMap::new();
        for entry in decided.blockers.iter().filter(|b| b.campaign == run.id) {
            if let Some(host) = entry.host.as_deref() {
                first.entry(host).or_insert(&entry.blocker);
            }
        }
        for h in run.hosts.iter().filter(|h| h.state == HostState::Pending) {
            match first.get(h.host_id.as_str()).copied() {
                Some(Blocker::WindowClosed {
                    opens_at_ms: Some(opens),
                }) => {
                    let wait = self
                        .window_waits
                        .entry(h.host_id.clone())
                        .or_insert((now_ms, *opens));
                    wait.1 = *opens;
                }
                _ => {
                    self.window_waits.remove(&h.host_id);
                }
            }
        }
    }

    /// A host starts: if it waited for a window, that is what delayed it.
    pub fn started(&mut self, run: &CampaignRun, host_id: &str) {
        let Some((closed, opens)) = self.window_waits.remove(host_id) else {
            return;
        };
        let hostname = hostname(run, host_id);
        let when = if closed == self.start_ms {
            format!("at the planned start ({})", fmt_ms(closed))
        } else {
            format!("at {}", fmt_ms(closed))
        };
        self.notes.push(Note {
            key: format!("window:{opens}"),
            host_id: host_id.to_owned(),
            kind: "window_closed",
            held_by: String::new(),
            text: format!(
                "no window is open {when}; {hostname} starts when one opens at {}",
                fmt_ms(opens)
            ),
        });
    }

    /// The simulation of `run` stalled (nothing to decide, nothing to wait for): notes and
    /// lifts what of the current state it waits on. Returns false when nothing of the current
    /// state is in the way (the campaign would really be stuck).
    pub fn lift(&mut self, fleet: &mut Fleet, run: &CampaignRun, decided: &Decisions) -> bool {
        let mut lifted = false;
        // This campaign's workers held elsewhere count against its own concurrency: read
        // before any is lifted, for the hosts the full pool stops.
        let held_workers: Vec<String> = self
            .holders
            .hosts
            .values()
            .filter(|h| h.role == Role::Worker && run.host(&h.host_id).is_some())
            .map(|h| format!("{} ({})", h.hostname, h.by))
            .collect();
        for entry in decided.blockers.iter().filter(|b| b.campaign == run.id) {
            let Some(host_id) = entry.host.as_deref() else {
                continue;
            };
            let hostname = hostname(run, host_id);
            match &entry.blocker {
                Blocker::HeldElsewhere { .. } => {
                    if let Some(held) = self.holders.hosts.remove(host_id) {
                        fleet.manual.remove(host_id);
                        lifted = true;
                        self.notes.push(held_note(&held));
                    }
                }
                Blocker::NoSlot { slot, .. } => {
                    let Some(cluster) = slot.strip_prefix("manager:") else {
                        // Nothing of this campaign is in progress, so the pool is full of its
                        // workers held elsewhere; they are lifted as held, each on its own.
                        if !held_workers.is_empty() {
                            let (verb, which) = match held_workers.len() {
                                1 => ("is", "it is"),
                                _ => ("are", "one is"),
                            };
                            self.notes.push(Note {
                                key: "pool".to_owned(),
                                host_id: host_id.to_owned(),
                                kind: "worker_pool",
                                held_by: String::new(),
                                text: format!(
                                    "every worker slot of the campaign is taken while {} {verb} held; {hostname} starts once {which} released",
                                    some_of(&held_workers)
                                ),
                            });
                        }
                        continue;
                    };
                    let holding: Vec<String> = self
                        .holders
                        .managers_of(cluster)
                        .map(|h| h.host_id.clone())
                        .collect();
                    for id in holding {
                        let Some(held) = self.holders.hosts.remove(&id) else {
                            continue;
                        };
                        fleet.manual.remove(&id);
                        lifted = true;
                        if run.host(&id).is_some() {
                            // The holder is one of this campaign's hosts too: it waits for
                            // itself to be released, whichever blocker named it first.
                            self.notes.push(held_note(&held));
                        }
                        self.notes.push(Note {
                            key: format!("slot:{id}"),
                            host_id: host_id.to_owned(),
                            kind: "manager_slot",
                            held_by: held.by.to_string(),
                            text: format!(
                                "the manager slot of cluster {cluster:?} is held by {} ({}); {hostname} starts once it is released",
                                held.hostname, held.by
                            ),
                        });
                    }
                }
                Blocker::QuorumGuard { manager, why } => {
                    let cluster = run
                        .host(host_id)
                        .map(|h| h.cluster.clone())
                        .unwrap_or_default();
                    let Some(other) = fleet
                        .hosts
                        .values_mut()
                        .find(|v| v.role == Role::Manager && v.hostname == *manager)
                    else {
                        continue;
                    };
                    if !(other.connected && other.healthy) {
                        other.connected = true;
                        other.healthy = true;
                        lifted = true;
                    }
                    // Noted for every manager it stops: shown once, on the first one's wave.
                    self.notes.push(Note {
                        key: format!("quorum:{}", other.id),
                        host_id: host_id.to_owned(),
                        kind: "quorum_guard",
                        held_by: String::new(),
                        text: format!(
                            "quorum guard: manager {manager} is {why} now, so no other manager of cluster {cluster:?} is taken until it is back"
                        ),
                    });
                }
                Blocker::AgentDisconnected { .. } => {
                    // Maybe already lifted this round for the quorum guard of another
                    // manager: it still delayed this host, so it is noted all the same.
                    if let Some(v) = fleet.hosts.get_mut(host_id) {
                        if !v.connected {
                            v.connected = true;
                            v.healthy = true;
                            lifted = true;
                        }
                        self.notes.push(Note {
                            key: format!("disconnected:{host_id}"),
                            host_id: host_id.to_owned(),
                            kind: "disconnected",
                            held_by: String::new(),
                            text: format!(
                                "{hostname} is disconnected now; it starts once its agent reconnects"
                            ),
                        });
                    }
                }
                _ => {}
            }
        }
        if lifted {
            return true;
        }
        self.lift_for_targets(fleet, run, decided)
    }

    /// An `on` step finds no connected, healthy, free host: the hosts held or disconnected now
    /// may be the ones it needs, so they are all lifted. Nothing to lift: really no target.
    fn lift_for_targets(
        &mut self,
        fleet: &mut Fleet,
        run: &CampaignRun,
        decided: &Decisions,
    ) -> bool {
        let waiting: Vec<(&str, &str, &str)> = decided
            .blockers
            .iter()
            .filter(|b| b.campaign == run.id)
            .filter_map(|b| match (&b.host, &b.blocker) {
                (Some(host), Blocker::NoTarget { step, selector }) => {
                    Some((host.as_str(), step.as_str(), selector.as_str()))
                }
                _ => None,
            })
            .collect();
        if waiting.is_empty() {
            return false;
        }
        let mut away: Vec<String> = std::mem::take(&mut self.holders.hosts)
            .into_values()
            .map(|h| h.hostname)
            .collect();
        fleet.manual.clear();
        for v in fleet.hosts.values_mut() {
            if !(v.connected && v.healthy) {
                v.connected = true;
                v.healthy = true;
                away.push(v.hostname.clone());
            }
        }
        if away.is_empty() {
            return false;
        }
        away.sort();
        away.dedup();
        let names = some_of(&away);
        for (host_id, step, selector) in waiting {
            self.notes.push(Note {
                key: format!("target:{host_id}:{step}"),
                host_id: host_id.to_owned(),
                kind: "no_target",
                held_by: String::new(),
                text: format!(
                    "step {step:?} of {} waits: no connected, healthy, free host matches {selector} now ({names} held or disconnected)",
                    hostname(run, host_id)
                ),
            });
        }
        true
    }

    /// The notes on the waves they delay, in wave order.
    pub fn into_blockers(self, planned: &[PlannedHost]) -> Vec<WaveBlocker> {
        let wave_of: BTreeMap<&str, (u32, &str)> = planned
            .iter()
            .map(|p| (p.host_id.as_str(), (p.wave, p.hostname.as_str())))
            .collect();
        // key → (wave, order seen, note): one cause is shown once, where it first delays.
        let mut first: BTreeMap<String, (u32, usize, Note)> = BTreeMap::new();
        for (seen, note) in self.notes.into_iter().enumerate() {
            let Some(&(wave, _)) = wave_of.get(note.host_id.as_str()) else {
                continue;
            };
            match first.get(&note.key) {
                Some((w, _, _)) if *w <= wave => {}
                _ => {
                    first.insert(note.key.clone(), (wave, seen, note));
                }
            }
        }
        let mut out: Vec<(u32, usize, Note)> = first.into_values().collect();
        out.sort_by_key(|(wave, seen, _)| (*wave, *seen));
        out.into_iter()
            .map(|(wave, _, note)| WaveBlocker {
                wave,
                hostname: wave_of
                    .get(note.host_id.as_str())
                    .map(|(_, name)| (*name).to_owned())
                    .unwrap_or_default(),
                host_id: note.host_id,
                kind: note.kind.to_owned(),
                held_by: note.held_by,
                text: note.text,
            })
            .collect()
    }
}

/// A host of the campaign held out of service by someone else.
fn held_note(held: &HeldHost) -> Note {
    Note {
        key: format!("held:{}", held.host_id),
        host_id: held.host_id.clone(),
        kind: "held",
        held_by: held.by.to_string(),
        text: format!(
            "{} is held by {}; it starts once that ends",
            held.hostname, held.by
        ),
    }
}

/// A few names, and how many more: a 500-host pool does not need 500 names on one line.
fn some_of(names: &[String]) -> String {
    const SHOWN: usize = 5;
    if names.len() > SHOWN {
        format!(
            "{} and {} more",
            names[..SHOWN].join(", "),
            names.len() - SHOWN
        )
    } else {
        names.join(", ")
    }
}

fn hostname(run: &CampaignRun, host_id: &str) -> String {
    run.host(host_id)
        .map(|h| h.hostname.clone())
        .unwrap_or_else(|| host_id.to_owned())
}
