//! When a failed delivery is tried again, as pure functions of the attempt count and the
//! receiver's answer (tested without a clock).

use std::time::{Duration, SystemTime};

/// Attempts in all before a delivery is marked failed (about 45 minutes of trying).
pub const MAX_ATTEMPTS: u32 = 10;
/// The wait after the first failed attempt; it doubles with each further one.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between two attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(10 * 60);
/// The longest `Retry-After` honoured: a receiver cannot park a delivery for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// The wait after `attempts` failed attempts (1 after the first): 5 s, 10 s, 20 s, ... up to
/// 10 minutes.
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    FIRST_RETRY.saturating_mul(1u32 << doublings).min(MAX_RETRY)
}

/// What a failed attempt leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again after this long.
    RetryIn(Duration),
    /// Give up: the attempts are spent, or the receiver said the request itself is wrong.
    GiveUp,
}

/// Decides after a failed attempt (`attempts` made so far). `status` is the HTTP status when
/// the receiver answered (`None`: no answer, a timeout, a refused connection), `retry_after`
/// its `Retry-After` header. A 4xx other than 408 and 429 is not retried: the receiver
/// refused this request (a wrong URL, a revoked hook), and repeating it would not help.
pub fn after_failure(
    attempts: u32,
    status: Option<u16>,
    retry_after: Option<&str>,
    now: SystemTime,
) -> Next {
    if attempts >= MAX_ATTEMPTS {
        return Next::GiveUp;
    }
    if let Some(code) = status
        && (400..500).contains(&code)
        && code != 408
        && code != 429
    {
        return Next::GiveUp;
    }
    let wait = retry_after
        .and_then(|value| parse_retry_after(value, now))
        .map(|d| d.min(MAX_RETRY_AFTER))
        .unwrap_or_else(|| backoff(attempts));
    Next::RetryIn(wait)
}

/// `Retry-After`: delay-seconds, or an HTTP date (a date in the past means now).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_five_seconds_up_to_ten_minutes() {
        let waits: Vec<u64> = (1..=9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn retry_after_is_honoured_in_both_forms_and_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            after_failure(1, Some(503), Some("2"), now),
            Next::RetryIn(Duration::from_secs(2))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            after_failure(1, Some(429), Some(&date), now),
            Next::RetryIn(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(
            after_failure(1, Some(503), Some(&past), now),
            Next::RetryIn(Duration::ZERO)
        );
        assert_eq!(
            after_failure(1, Some(503), Some("86400"), now),
            Next::RetryIn(MAX_RETRY_AFTER)
        );
        // Unreadable: the usual backoff.
        assert_eq!(
            after_failure(3, Some(503), Some("soon"), now),
            Next::RetryIn(Duration::from_secs(20))
        );
    }

    #[test]
    fn refusals_of_the_request_itself_and_spent_attempts_give_up() {
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(after_failure(1, Some(404), None, now), Next::GiveUp);
        assert_eq!(after_failure(1, Some(400), None, now), Next::GiveUp);
        assert_eq!(
            after_failure(1, Some(408), None, now),
            Next::RetryIn(FIRST_RETRY)
        );
        assert_eq!(
            after_failure(2, None, None, now),
            Next::RetryIn(Duration::from_secs(10))
        );
        assert_eq!(
            after_failure(MAX_ATTEMPTS, Some(503), None, now),
            Next::GiveUp
        );
    }
}
