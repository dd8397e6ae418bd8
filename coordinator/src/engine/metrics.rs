//! The engine's Prometheus metrics: the families its loop publishes into once a turn is
//! durable, from the counts the state keeps current (`state/gauges.rs`). A scrape only reads
//! them: it never reaches the engine's loop, so a busy engine does not slow a scrape and a
//! scrape costs the engine nothing.
//!
//! Units are in the names (`_seconds`), without OpenMetrics UNIT lines: Prometheus reads the
//! names, and some OpenMetrics parsers refuse a UNIT on a histogram.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pitcrew_scheduler::Role;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::state::{CAMPAIGN_STATES, FleetGauges, HOST_STATES, HolderKind};

const ROLES: [Role; 2] = [Role::Worker, Role::Manager];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HostLabels {
    role: &'static str,
    state: &'static str,
    connected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SlotLabels {
    slot_kind: &'static str,
    holder: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BlockerLabel {
    blocker: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// Waits: 1 s to about 4.5 days.
fn wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 10))
}

/// One decision round set: 50 µs to about 3.3 s.
fn decision_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

/// The longest current wait per blocker kind, computed at scrape time from when it began (a
/// gauge set at the turn would stand still while nothing happens).
#[derive(Debug, Default)]
struct LongestWaits {
    /// Blocker kind → when its longest current wait began (unix ms), if any host waits.
    oldest: Mutex<Vec<(&'static str, Option<i64>)>>,
}

impl Collector for LongestWaits {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = pitcrew_proto::now_ms();
        let values: Vec<(&'static str, f64)> = self
            .oldest
            .lock()
            .iter()
            .map(|(kind, since)| {
                let seconds = since.map_or(0.0, |s| now.saturating_sub(s).max(0) as f64 / 1000.0);
                (*kind, seconds)
            })
            .collect();
        if values.is_empty() {
            // As the registry does for a family without series.
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "pitcrew_host_wait_seconds",
            "The longest time a host has been waiting on each kind of blocker now (0 when none waits).",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (kind, seconds) in values {
            let labels = BlockerLabel { blocker: kind };
            ConstGauge::new(seconds).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The engine's metric families (cheap to clone: they share their values).
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    hosts: Family<HostLabels, Gauge>,
    reboot_required: Gauge,
    campaigns: Family<StateLabel, Gauge>,
    host_steps: Family<OutcomeLabel, Counter>,
    slot_holders: Family<SlotLabels, Gauge>,
    hosts_waiting: Family<BlockerLabel, Gauge>,
    waits: HistogramFamily<BlockerLabel>,
    longest_waits: Arc<LongestWaits>,
    decision_seconds: Histogram,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        let metrics = EngineMetrics {
            hosts: Family::default(),
            reboot_required: Gauge::default(),
            campaigns: Family::default(),
            host_steps: Family::default(),
            slot_holders: Family::default(),
            hosts_waiting: Family::default(),
            waits: Family::new_with_constructor(wait_histogram as fn() -> Histogram),
            longest_waits: Arc::default(),
            decision_seconds: decision_histogram(),
        };
        // Every series of a bounded label set exists from the start, at 0, so a query sees a
        // 0 rather than no data.
        for role in ROLES {
            for state in HOST_STATES {
                for connected in [false, true] {
                    let _ = metrics.hosts.get_or_create(&HostLabels {
                        role: role.as_str(),
                        state,
                        connected,
                    });
                }
            }
            for holder in HolderKind::ALL {
                let _ = metrics.slot_holders.get_or_create(&SlotLabels {
                    slot_kind: role.as_str(),
                    holder: holder.as_str(),
                });
            }
        }
        for state in CAMPAIGN_STATES {
            let _ = metrics.campaigns.get_or_create(&StateLabel {
                state: state.as_str(),
            });
        }
        for outcome in ["succeeded", "failed"] {
            let _ = metrics.host_steps.get_or_create(&OutcomeLabel { outcome });
        }
        metrics
    }
}

impl EngineMetrics {
    /// Registers every family (names get the registry's prefix, if any).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pitcrew_hosts",
            "Enrolled hosts by role, state (running, entering, maintenance, leaving, failed) and whether their agent is connected",
            self.hosts.clone(),
        );
        registry.register(
            "pitcrew_hosts_reboot_required",
            "Hosts whose last facts say a reboot is required",
            self.reboot_required.clone(),
        );
        registry.register(
            "pitcrew_campaigns",
            "Campaigns by state",
            self.campaigns.clone(),
        );
        registry.register(
            "pitcrew_host_steps",
            "Campaign host-steps finished since the coordinator started, by outcome (failed: any result but success, or no result by the step's deadline)",
            self.host_steps.clone(),
        );
        registry.register(
            "pitcrew_slot_holders",
            "Hosts held out of service, by the slot their role takes (worker or manager) and on whose behalf (campaign, manual maintenance, an operator's pitcrew do)",
            self.slot_holders.clone(),
        );
        registry.register(
            "pitcrew_hosts_waiting",
            "Hosts of campaigns waiting now, by the kind of blocker they wait on",
            self.hosts_waiting.clone(),
        );
        registry.register(
            "pitcrew_host_wait_duration_seconds",
            "How long hosts waited on one kind of blocker, observed when the wait ended (the blocker went or changed kind)",
            self.waits.clone(),
        );
        registry.register_collector(Box::new(self.longest_waits.clone()));
        registry.register(
            "pitcrew_engine_decision_duration_seconds",
            "Time the engine took to decide and apply in one turn (every campaign at once)",
            self.decision_seconds.clone(),
        );
    }

    /// One turn's deciding took this long.
    pub(super) fn decided(&self, took: Duration) {
        self.decision_seconds.observe(took.as_secs_f64());
    }

    /// Publishes what changed in the counts since the last time.
    pub(super) fn publish(&self, gauges: &mut FleetGauges) {
        if !gauges.changed {
            return;
        }
        gauges.changed = false;
        let counts = &gauges.counts;
        for (&(role, state, connected), &n) in &counts.hosts {
            self.hosts
                .get_or_create(&HostLabels {
                    role: role.as_str(),
                    state,
                    connected,
                })
                .set(n);
        }
        for (&(role, holder), &n) in &counts.slot_holders {
            self.slot_holders
                .get_or_create(&SlotLabels {
                    slot_kind: role.as_str(),
                    holder: holder.as_str(),
                })
                .set(n);
        }
        self.reboot_required.set(counts.reboot_required);
        for (state, n) in CAMPAIGN_STATES.iter().zip(counts.campaigns) {
            self.campaigns
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(n);
        }
        let (succeeded, failed) = std::mem::take(&mut gauges.steps);
        if succeeded > 0 {
            self.host_steps
                .get_or_create(&OutcomeLabel {
                    outcome: "succeeded",
                })
                .inc_by(succeeded);
        }
        if failed > 0 {
            self.host_steps
                .get_or_create(&OutcomeLabel { outcome: "failed" })
                .inc_by(failed);
        }
        for (kind, seconds) in gauges.finished_waits.drain(..) {
            self.waits
                .get_or_create(&BlockerLabel { blocker: kind })
                .observe(seconds);
        }
        let mut oldest = Vec::with_capacity(gauges.waiting.len());
        for (&kind, waiting) in &gauges.waiting {
            self.hosts_waiting
                .get_or_create(&BlockerLabel { blocker: kind })
                .set(waiting.hosts);
            oldest.push((kind, waiting.oldest_since_ms));
        }
        *self.longest_waits.oldest.lock() = oldest;
    }
}
