//! What the engine notifies webhooks of, decided inside its turn: a campaign started (its
//! first host taken), paused or finished, a host failed, a host blocked longer than its threshold. Each
//! notification becomes one delivery record per webhook that wants it, written in the turn's
//! transaction (see `crate::notify` for the delivery).
//!
//! "Blocked" means stuck, not waiting its turn: only blockers that say a host cannot move on
//! by itself as planned count ([`STUCK_BLOCKERS`]: a quorum guard, a host held elsewhere, a
//! disconnected agent, no target for an `on` step, a reboot not coming back, a failing gate).
//! A host waiting for a slot, its role, a dwell, a window or a paused campaign is not stuck
//! (its campaign's own events say why), and a failed host has its own event. An episode
//! runs while the host has any stuck blocker, and is reported once per webhook when it has
//! lasted the threshold; the engine wakes for the earliest report due. Episodes live in
//! memory, like the wait metrics: after a restart an episode starts again.

use std::collections::HashMap;

use pitcrew_scheduler::{CampaignState, HostState};

use super::{EngineState, Turn};
use crate::notify::{EventKind, Notice, Webhook};
use crate::store::{DeliveryRecord, DeliveryState};

/// The blocker kinds that make a host stuck (see the module's documentation).
pub(crate) const STUCK_BLOCKERS: [&str; 6] = [
    "quorum_guard",
    "held_elsewhere",
    "agent_disconnected",
    "no_target",
    "awaiting_reboot",
    "gate_failing",
];

/// One notification of a run, before it is shaped for each webhook.
struct What<'a> {
    kind: EventKind,
    /// The host's index in the run, for a host's events.
    host: Option<usize>,
    message: String,
    /// Only this webhook (a stuck host's report falls due per webhook).
    only: Option<&'a str>,
}

/// The webhooks and the stuck hosts' episodes.
#[derive(Debug, Default)]
pub(crate) struct Notifications {
    webhooks: Vec<Webhook>,
    blocked: BlockedEpisodes,
}

impl Notifications {
    pub fn new(webhooks: Vec<Webhook>) -> Notifications {
        Notifications {
            webhooks,
            blocked: BlockedEpisodes::default(),
        }
    }
}

/// One host's stuck episode in one campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Episode {
    since_ms: i64,
    /// The webhooks already told of it.
    told: Vec<String>,
}

/// Stuck episodes by (campaign, host), as a pure function of what each turn observes.
#[derive(Debug, Default)]
pub(crate) struct BlockedEpisodes {
    episodes: HashMap<(String, String), Episode>,
}

/// A report due: (campaign, host, webhook, when the episode began).
pub(crate) type Due = (String, String, String, i64);

/// A host stuck now, with the threshold (ms) of each webhook that wants to hear of it.
pub(crate) struct Stuck<'a> {
    pub campaign: &'a str,
    pub host: &'a str,
    pub thresholds: Vec<(&'a str, i64)>,
}

impl BlockedEpisodes {
    /// Follows the episodes from the hosts stuck now: an episode begins when a host is first
    /// seen stuck, keeps its start while it stays stuck, and ends when it is not. Returns the
    /// (campaign, host, webhook, since) to report now (each once per episode), and when the
    /// next report falls due.
    pub fn observe(&mut self, stuck: &[Stuck<'_>], now_ms: i64) -> (Vec<Due>, Option<i64>) {
        let mut old = std::mem::take(&mut self.episodes);
        let mut due = Vec::new();
        let mut wake: Option<i64> = None;
        for s in stuck {
            let key = (s.campaign.to_owned(), s.host.to_owned());
            if self.episodes.contains_key(&key) {
                continue;
            }
            let mut episode = old.remove(&key).unwrap_or(Episode {
                since_ms: now_ms,
                told: Vec::new(),
            });
            for &(webhook, threshold) in &s.thresholds {
                if episode.told.iter().any(|t| t == webhook) {
                    continue;
                }
                let at = episode.since_ms.saturating_add(threshold);
                if at <= now_ms {
                    episode.told.push(webhook.to_owned());
                    due.push((
                        key.0.clone(),
                        key.1.clone(),
                        webhook.to_owned(),
                        episode.since_ms,
                    ));
                } else {
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                }
            }
            self.episodes.insert(key, episode);
        }
        (due, wake)
    }
}

impl EngineState {
    /// Whether any webhook is configured (nothing below runs otherwise).
    fn notifying(&self) -> bool {
        !self.notify.webhooks.is_empty()
    }

    /// Records a notification of run `ci` for every webhook that wants `kind` and that the
    /// campaign notifies (`only`: one webhook by name).
    fn notice(&self, ci: usize, what: What<'_>, now_ms: i64, turn: &mut Turn) {
        let What {
            kind,
            host,
            message,
            only,
        } = what;
        let run = &self.runs[ci];
        let campaign_notify = run.spec.notify.as_ref();
        let mut notice: Option<Notice> = None;
        for webhook in &self.notify.webhooks {
            if !webhook.events.contains(&kind)
                || only.is_some_and(|name| name != webhook.name)
                || campaign_notify.is_some_and(|n| !n.notifies(&webhook.name))
            {
                continue;
            }
            let notice = notice.get_or_insert_with(|| Notice {
                id: uuid::Uuid::new_v4().to_string(),
                kind,
                at_ms: now_ms,
                campaign_id: run.id.clone(),
                campaign_name: run.spec.name.clone(),
                campaign_state: run.state.as_str().to_owned(),
                host: host
                    .and_then(|hi| run.hosts.get(hi))
                    .map(|h| (h.host_id.clone(), h.hostname.clone())),
                message: message.clone(),
            });
            let (host_id, hostname) = notice.host.clone().unwrap_or_default();
            turn.deliveries.push(DeliveryRecord {
                id: notice.id.clone(),
                webhook: webhook.name.clone(),
                event: kind.as_str().to_owned(),
                campaign_id: run.id.clone(),
                host_id,
                hostname,
                payload: notice.body(webhook.format),
                created_at_ms: now_ms,
                attempts: 0,
                state: DeliveryState::Pending,
                last_error: String::new(),
                next_attempt_ms: now_ms,
                delivered_at_ms: 0,
            });
        }
    }

    /// After an event was applied to run `ci`: what changed that webhooks hear of (the run's
    /// state before, and the touched host's).
    pub(super) fn notice_changes(
        &self,
        ci: usize,
        state_before: CampaignState,
        host: Option<(usize, HostState)>,
        now_ms: i64,
        turn: &mut Turn,
    ) {
        if !self.notifying() {
            return;
        }
        let run = &self.runs[ci];
        if let Some((hi, before)) = host
            && let Some(h) = run.hosts.get(hi)
            && h.state == HostState::Failed
            && before != HostState::Failed
        {
            let message = format!(
                "{} failed and keeps its slot: {}",
                h.hostname,
                h.last_error.as_deref().unwrap_or("no reason given")
            );
            self.notice(
                ci,
                What {
                    kind: EventKind::HostFailed,
                    host: Some(hi),
                    message,
                    only: None,
                },
                now_ms,
                turn,
            );
        }
        if run.state == state_before {
            return;
        }
        let count = |state: HostState| run.hosts.iter().filter(|h| h.state == state).count();
        match run.state {
            CampaignState::Paused => {
                let message = format!(
                    "campaign paused: {}",
                    run.pause_reason.as_deref().unwrap_or("no reason given")
                );
                self.notice(
                    ci,
                    What {
                        kind: EventKind::CampaignPaused,
                        host: None,
                        message,
                        only: None,
                    },
                    now_ms,
                    turn,
                );
            }
            CampaignState::Completed | CampaignState::Incomplete | CampaignState::Cancelled => {
                let message = format!(
                    "campaign {}: {} done, {} released after failing, {} skipped, of {} hosts",
                    run.state.as_str(),
                    count(HostState::Done),
                    count(HostState::Released),
                    count(HostState::Skipped),
                    run.hosts.len()
                );
                self.notice(
                    ci,
                    What {
                        kind: EventKind::CampaignFinished,
                        host: None,
                        message,
                        only: None,
                    },
                    now_ms,
                    turn,
                );
            }
            // Started when its first host is taken, not when submitted: a campaign may wait
            // for its window (or a held host) long after `campaign run`.
            CampaignState::Running if state_before == CampaignState::Pending => {
                let message = format!(
                    "campaign {} started over {} hosts",
                    run.spec.name,
                    run.hosts.len()
                );
                self.notice(
                    ci,
                    What {
                        kind: EventKind::CampaignStarted,
                        host: None,
                        message,
                        only: None,
                    },
                    now_ms,
                    turn,
                );
            }
            CampaignState::Pending | CampaignState::Running => {}
        }
    }

    /// Follows stuck hosts from the last decision's blockers and records a `host-blocked`
    /// notification for each episode that has lasted a webhook's threshold. Returns when the
    /// next one falls due (the engine wakes then).
    pub(crate) fn track_blocked(&mut self, now_ms: i64, turn: &mut Turn) -> Option<i64> {
        let wanted: Vec<&Webhook> = self
            .notify
            .webhooks
            .iter()
            .filter(|w| w.events.contains(&EventKind::HostBlocked))
            .collect();
        if wanted.is_empty() {
            return None;
        }
        let mut stuck: Vec<Stuck<'_>> = Vec::new();
        let mut reasons: HashMap<(&str, &str), String> = HashMap::new();
        for b in &self.last.decisions.blockers {
            let Some(host) = b.host.as_deref() else {
                continue;
            };
            if !STUCK_BLOCKERS.contains(&b.blocker.kind()) {
                continue;
            }
            let Some(&ci) = self.by_id.get(&b.campaign) else {
                continue;
            };
            let notify = self.runs[ci].spec.notify.as_ref();
            let thresholds = wanted
                .iter()
                .filter(|w| notify.is_none_or(|n| n.notifies(&w.name)))
                .map(|w| {
                    let ms = notify.and_then(|n| n.blocked_after_ms).unwrap_or_else(|| {
                        i64::try_from(w.blocked_after.as_millis()).unwrap_or(i64::MAX)
                    });
                    (w.name.as_str(), ms)
                })
                .collect();
            reasons
                .entry((b.campaign.as_str(), host))
                .or_insert_with(|| b.blocker.to_string());
            stuck.push(Stuck {
                campaign: &b.campaign,
                host,
                thresholds,
            });
        }
        let (due, wake) = {
            let mut episodes = std::mem::take(&mut self.notify.blocked);
            let out = episodes.observe(&stuck, now_ms);
            drop(stuck);
            self.notify.blocked = episodes;
            out
        };
        for (campaign, host, webhook, since_ms) in due {
            let Some(&ci) = self.by_id.get(&campaign) else {
                continue;
            };
            let Some(&hi) = self.meta[ci].hosts.get(&host) else {
                continue;
            };
            let minutes = (now_ms - since_ms).max(0) / 60_000;
            let message = format!(
                "{} blocked for {}: {}",
                self.runs[ci].hosts[hi].hostname,
                if minutes > 0 {
                    format!("{minutes}m")
                } else {
                    format!("{}s", (now_ms - since_ms).max(0) / 1000)
                },
                reasons
                    .get(&(campaign.as_str(), host.as_str()))
                    .map(String::as_str)
                    .unwrap_or("")
            );
            self.notice(
                ci,
                What {
                    kind: EventKind::HostBlocked,
                    host: Some(hi),
                    message,
                    only: Some(&webhook),
                },
                now_ms,
                turn,
            );
        }
        wake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuck<'a>(campaign: &'a str, host: &'a str, thresholds: &[(&'a str, i64)]) -> Stuck<'a> {
        Stuck {
            campaign,
            host,
            thresholds: thresholds.to_vec(),
        }
    }

    #[test]
    fn a_blocked_host_is_reported_once_per_episode_and_per_webhook() {
        let mut e = BlockedEpisodes::default();
        let hooks = [("ops", 60_000), ("chat", 120_000)];
        // Stuck from t=0: nothing due yet, wake at the first threshold.
        let (due, wake) = e.observe(&[stuck("c", "h", &hooks)], 0);
        assert!(due.is_empty());
        assert_eq!(wake, Some(60_000));
        // Still stuck at 30 s (another turn): same episode, same wake.
        let (due, wake) = e.observe(&[stuck("c", "h", &hooks)], 30_000);
        assert!(due.is_empty());
        assert_eq!(wake, Some(60_000));
        // At 61 s ops hears of it (since 0), chat not yet.
        let (due, wake) = e.observe(&[stuck("c", "h", &hooks)], 61_000);
        assert_eq!(due, vec![("c".into(), "h".into(), "ops".into(), 0)]);
        assert_eq!(wake, Some(120_000));
        // Many turns later: chat once, ops never again.
        let (due, _) = e.observe(&[stuck("c", "h", &hooks)], 125_000);
        assert_eq!(due, vec![("c".into(), "h".into(), "chat".into(), 0)]);
        for t in [130_000, 500_000, 10_000_000] {
            let (due, wake) = e.observe(&[stuck("c", "h", &hooks)], t);
            assert!(due.is_empty());
            assert_eq!(wake, None);
        }
        // Unblocked, then stuck again: a new episode from its new start.
        let (due, _) = e.observe(&[], 10_000_100);
        assert!(due.is_empty());
        let (due, wake) = e.observe(&[stuck("c", "h", &hooks)], 20_000_000);
        assert!(due.is_empty());
        assert_eq!(wake, Some(20_060_000));
        let (due, _) = e.observe(&[stuck("c", "h", &hooks)], 20_060_000);
        assert_eq!(
            due,
            vec![("c".into(), "h".into(), "ops".into(), 20_000_000)]
        );
    }

    #[test]
    fn hosts_and_campaigns_have_episodes_of_their_own() {
        let mut e = BlockedEpisodes::default();
        let hooks = [("ops", 10)];
        e.observe(&[stuck("c1", "h", &hooks)], 0);
        let (due, _) = e.observe(&[stuck("c1", "h", &hooks), stuck("c2", "h", &hooks)], 5);
        assert!(due.is_empty());
        let (due, wake) = e.observe(&[stuck("c1", "h", &hooks), stuck("c2", "h", &hooks)], 10);
        assert_eq!(due, vec![("c1".into(), "h".into(), "ops".into(), 0)]);
        assert_eq!(wake, Some(15));
        // A second blocker of the same host in one decision counts once.
        let (due, _) = e.observe(&[stuck("c2", "h", &hooks), stuck("c2", "h", &hooks)], 15);
        assert_eq!(due, vec![("c2".into(), "h".into(), "ops".into(), 5)]);
    }
}
