//! The webhook delivery record: one row per notification and webhook, written in the engine's
//! turn that decided it (so a crash between commit and delivery still delivers) and updated
//! by the notifier after each attempt.

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not delivered yet; tried again at `next_attempt_ms`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up on after the last attempt allowed.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryState> {
        match text {
            "pending" => Some(DeliveryState::Pending),
            "delivered" => Some(DeliveryState::Delivered),
            "failed" => Some(DeliveryState::Failed),
            _ => None,
        }
    }
}

/// One notification to one webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    /// The notification's id (the same for every webhook it goes to): in the body and the
    /// `X-Pitcrew-Event-Id` header, so a receiver can drop a repeat.
    pub id: String,
    /// The configured webhook's name.
    pub webhook: String,
    /// campaign-started, campaign-paused, campaign-finished, host-failed, host-blocked.
    pub event: String,
    pub campaign_id: String,
    /// Empty for a campaign's events.
    pub host_id: String,
    pub hostname: String,
    /// The body, exactly as posted (JSON).
    pub payload: String,
    pub created_at_ms: i64,
    pub attempts: u32,
    pub state: DeliveryState,
    /// Why the last attempt failed ("" when none did).
    pub last_error: String,
    /// When a pending delivery is tried next (Unix ms).
    pub next_attempt_ms: i64,
    /// When it was delivered (0 until then).
    pub delivered_at_ms: i64,
}

/// Which deliveries to list: the newest `limit` (0: 100), newest first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub campaign_id: Option<String>,
    pub state: Option<DeliveryState>,
    pub limit: u32,
}

impl DeliveryFilter {
    /// The limit as a query takes it.
    pub(crate) fn limit(&self) -> i64 {
        if self.limit == 0 {
            100
        } else {
            i64::from(self.limit)
        }
    }
}

/// The columns every backend reads and writes, in this order.
pub(crate) const DELIVERY_COLUMNS: &str = "id, webhook, event, campaign_id, host_id, hostname, \
     payload, created_at_ms, attempts, state, last_error, next_attempt_ms, delivered_at_ms";
