//! Where the engine reads the wall clock. The coordinator uses the system's; tests of time
//! (schedules, archiving) use one that moves with tokio's clock, so they run under paused
//! tokio time and a day passes at once, exactly.

use tokio::time::Instant;

/// The engine's wall clock, in Unix milliseconds.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The system's clock (`pitcrew_proto::now_ms`).
    System,
    /// `base_ms` at `start`, then moving with tokio's clock (which tests pause and advance).
    Tokio { base_ms: i64, start: Instant },
}

impl Clock {
    /// A clock reading `base_ms` now and moving with tokio's clock from here.
    pub fn tokio_from(base_ms: i64) -> Clock {
        Clock::Tokio {
            base_ms,
            start: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => pitcrew_proto::now_ms(),
            Clock::Tokio { base_ms, start } => {
                let elapsed = i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
                base_ms.saturating_add(elapsed)
            }
        }
    }
}
