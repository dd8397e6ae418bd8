//! Leadership among coordinators that share a PostgreSQL store: exactly one of them, the
//! holder of the lease, runs the campaign engine; the others stand by.
//!
//! The lease lives in the database and is judged by the database's clock (see
//! `Store::take_lease`); each takeover increments its epoch, and the store fences every write
//! of the leader with that epoch, so the database itself refuses a write once a newer leader
//! exists. This module adds the leader's own side: it renews well inside the lease, and it
//! stops believing it leads **before** the lease can have expired by its own monotonic clock
//! (`valid_until` is measured from before each renewal was asked, less a margin), so a leader
//! that was paused or cut off and wakes up sends nothing: the engine asks
//! [`Leadership::holds`] before every commit and before every send. A leader that loses the
//! lease stops (the process exits and its supervisor starts it again, as a standby).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::{Store, StoreError};

/// How the lease is held (`[leader]` of coordinator.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a taken or renewed lease lasts, by the database's clock.
    pub length: Duration,
    /// How often the leader renews it, and a standby tries to take it.
    pub renew_every: Duration,
}

impl LeaseTiming {
    /// How much of the lease the leader gives up to clock-rate differences and scheduling:
    /// it stops leading this long before the lease can have expired.
    pub fn margin(&self) -> Duration {
        self.length / 8
    }
}

/// The lease this coordinator holds: its epoch, and until when (by this process's monotonic
/// clock) it may still act on it.
#[derive(Debug, Clone)]
pub struct Leadership {
    epoch: i64,
    valid_until: Arc<Mutex<Instant>>,
}

impl Leadership {
    /// A leadership that never lapses: the SQLite store belongs to one coordinator.
    pub fn sole() -> Leadership {
        Leadership {
            epoch: 0,
            valid_until: Arc::new(Mutex::new(
                Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600),
            )),
        }
    }

    /// A lease at `epoch` held for an hour, which [`Leadership::lapse`] ends (tests).
    #[cfg(test)]
    pub(crate) fn held_for_test(epoch: i64) -> Leadership {
        Leadership {
            epoch,
            valid_until: Arc::new(Mutex::new(Instant::now() + Duration::from_secs(3600))),
        }
    }

    /// Ends the lease now, as a pause past it would (tests).
    #[cfg(test)]
    pub(crate) fn lapse(&self) {
        *self.valid_until.lock() = Instant::now();
    }

    fn taken(epoch: i64, asked_at: Instant, timing: LeaseTiming) -> Leadership {
        Leadership {
            epoch,
            valid_until: Arc::new(Mutex::new(asked_at + timing.length - timing.margin())),
        }
    }

    /// The lease's epoch (0 for [`Leadership::sole`]).
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Whether the lease cannot have expired yet: the engine commits and sends only while
    /// this holds.
    pub fn holds(&self) -> bool {
        Instant::now() < *self.valid_until.lock()
    }

    fn until(&self) -> Instant {
        *self.valid_until.lock()
    }

    fn renewed(&self, asked_at: Instant, timing: LeaseTiming) {
        let mut until = self.valid_until.lock();
        *until = (*until).max(asked_at + timing.length - timing.margin());
    }
}

/// Where a standby last saw the leader: its address (empty when none leads or it is
/// unknown) and the lease's epoch, which tells a new leader at the same address from the old.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderSeen {
    pub address: String,
    pub epoch: i64,
}

/// Why this coordinator no longer leads.
#[derive(Debug, thiserror::Error)]
pub enum LeadershipLost {
    #[error("another coordinator took the lease (this one led with epoch {epoch})")]
    TakenOver { epoch: i64 },
    #[error("the lease (epoch {epoch}) could not be renewed before it could have expired: {why}")]
    Lapsed { epoch: i64, why: String },
}

/// Stands by until this coordinator takes the lease; meanwhile publishes where the leader
/// is (its address, empty when unknown or none leads) on `leader`, for the standby's answer.
pub async fn stand_by(
    store: &Store,
    holder: &str,
    address: &str,
    timing: LeaseTiming,
    leader: &watch::Sender<LeaderSeen>,
) -> Leadership {
    let mut told = None;
    loop {
        // The next try comes after a renewal interval, or as soon as the lease it saw expires.
        let mut next_try = timing.renew_every;
        let asked_at = Instant::now();
        match store
            .take_lease(holder.to_owned(), address.to_owned(), timing.length)
            .await
        {
            Ok(Some(epoch)) => {
                tracing::info!(message = "took the leader lease", epoch);
                return Leadership::taken(epoch, asked_at, timing);
            }
            Ok(None) => match store.leader().await {
                Ok(lease) => {
                    let now = (lease.valid, lease.address.clone());
                    if told.as_ref() != Some(&now) {
                        tracing::info!(
                            message = "standing by",
                            leader = %lease.address,
                            epoch = lease.epoch,
                        );
                        told = Some(now);
                    }
                    if lease.valid {
                        next_try = next_try.min(lease.expires_in + LEASE_EXPIRY_SLACK);
                    }
                    leader.send_replace(LeaderSeen {
                        address: if lease.valid {
                            lease.address
                        } else {
                            String::new()
                        },
                        epoch: lease.epoch,
                    });
                }
                Err(error) => tracing::warn!(message = "cannot read the leader lease", %error),
            },
            Err(error) => {
                tracing::warn!(message = "cannot take the leader lease; trying again", %error);
                leader.send_modify(|seen| seen.address.clear());
            }
        }
        tokio::time::sleep(next_try).await;
    }
}

/// How long after the database's expiry of the lease a standby tries to take it: the read
/// and the take are two statements, the take judged by the database's clock a little later.
const LEASE_EXPIRY_SLACK: Duration = Duration::from_millis(20);

/// Renews the lease until it is lost, then returns why. Each renewal is given until the
/// lease could expire; one that fails or runs late is tried again while time is left.
pub async fn keep(
    store: Arc<Store>,
    leadership: Leadership,
    holder: String,
    timing: LeaseTiming,
) -> LeadershipLost {
    let epoch = leadership.epoch;
    loop {
        tokio::time::sleep(timing.renew_every).await;
        let asked_at = Instant::now();
        let deadline = leadership.until();
        if asked_at >= deadline {
            return LeadershipLost::Lapsed {
                epoch,
                why: "this coordinator did not run in time (paused or overloaded)".into(),
            };
        }
        let renewal = store.renew_lease(holder.clone(), epoch, timing.length);
        match tokio::time::timeout_at(deadline, renewal).await {
            Ok(Ok(true)) => leadership.renewed(asked_at, timing),
            Ok(Ok(false)) => return LeadershipLost::TakenOver { epoch },
            Ok(Err(error)) => {
                tracing::warn!(message = "cannot renew the leader lease; trying again", %error);
                if !leadership.holds() {
                    return lapsed(epoch, &error);
                }
            }
            Err(_) => {
                return LeadershipLost::Lapsed {
                    epoch,
                    why: "the database did not answer in time".into(),
                };
            }
        }
    }
}

fn lapsed(epoch: i64, error: &StoreError) -> LeadershipLost {
    LeadershipLost::Lapsed {
        epoch,
        why: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: LeaseTiming = LeaseTiming {
        length: Duration::from_secs(4),
        renew_every: Duration::from_secs(1),
    };

    #[tokio::test(start_paused = true)]
    async fn a_leader_stops_believing_it_leads_before_its_lease_can_expire() {
        let asked_at = Instant::now();
        let leadership = Leadership::taken(7, asked_at, TIMING);
        assert!(leadership.holds());
        // The lease runs for 4 s from when the database took it, which is after it was asked:
        // the leader stops half a second (an eighth) before 4 s from asking.
        tokio::time::advance(Duration::from_millis(3_499)).await;
        assert!(leadership.holds());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(!leadership.holds(), "past 3.5 s the lease may have expired");
        // A renewal asked at 1 s moves the end to 1 + 3.5 s, never back.
        leadership.renewed(asked_at + Duration::from_secs(1), TIMING);
        assert!(leadership.holds());
        leadership.renewed(asked_at, TIMING);
        tokio::time::advance(Duration::from_millis(998)).await;
        assert!(leadership.holds());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(!leadership.holds());
    }

    #[tokio::test(start_paused = true)]
    async fn the_sole_coordinator_always_leads() {
        let sole = Leadership::sole();
        tokio::time::advance(Duration::from_secs(365 * 24 * 3600)).await;
        assert!(sole.holds());
        assert_eq!(sole.epoch(), 0);
    }
}
