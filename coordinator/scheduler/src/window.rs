//! Maintenance windows: absolute ones (a start and a duration, like a DC/OS maintenance
//! schedule's `unavailability`) and weekly ones (days, a local start time, a duration and a time
//! zone). A host may only START inside a window that applies to it; a host in progress finishes
//! (campaign invariant *Windows*). No windows at all means always open.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::fleet::HostView;

/// Longest window accepted: a week, so a weekly window never overlaps its own next week and
/// the look-back below stays bounded.
pub const MAX_WINDOW_MS: i64 = 7 * 24 * 3600 * 1000;

/// When a window is open.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WindowTime {
    /// Once: `[start_ms, start_ms + duration_ms)`.
    Absolute { start_ms: i64, duration_ms: i64 },
    /// Every week on `days` (0 = Monday) from `start_minute` after local midnight in
    /// `timezone` (an IANA name), for `duration_ms`.
    Weekly {
        days: Vec<u8>,
        start_minute: u32,
        duration_ms: i64,
        timezone: String,
    },
}

/// One window, optionally limited to some hosts (DC/OS windows name their machines).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Window {
    pub time: WindowTime,
    /// Host ids or hostnames this window applies to; empty means every host.
    #[serde(default)]
    pub hosts: Vec<String>,
}

impl Window {
    /// Whether this window governs `host`.
    pub fn applies_to(&self, host: &HostView) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|name| host.is_named(name))
    }

    /// Start instants (Unix ms) of occurrences that could contain or follow `now_ms`.
    fn occurrences(&self, now_ms: i64) -> Vec<(i64, i64)> {
        match &self.time {
            WindowTime::Absolute {
                start_ms,
                duration_ms,
            } => vec![(*start_ms, *duration_ms)],
            WindowTime::Weekly {
                days,
                start_minute,
                duration_ms,
                timezone,
            } => {
                // A zone that no longer parses (it was checked at parse time) makes the window
                // never open rather than open at a guessed time.
                let Ok(tz) = timezone.parse::<chrono_tz::Tz>() else {
                    return Vec::new();
                };
                let Some(now) = DateTime::<Utc>::from_timestamp_millis(now_ms) else {
                    return Vec::new();
                };
                let today = now.with_timezone(&tz).date_naive();
                let mut out = Vec::new();
                for offset in -8..=8 {
                    let Some(date) = today.checked_add_signed(Duration::days(offset)) else {
                        continue;
                    };
                    let weekday = date.weekday().num_days_from_monday() as u8;
                    if !days.contains(&weekday) {
                        continue;
                    }
                    if let Some(start) = local_start(&tz, date, *start_minute) {
                        out.push((start, *duration_ms));
                    }
                }
                out
            }
        }
    }

    /// Whether the window is open at `now_ms`.
    pub fn is_open(&self, now_ms: i64) -> bool {
        self.occurrences(now_ms)
            .iter()
            .any(|(start, len)| *start <= now_ms && now_ms < start.saturating_add(*len))
    }

    /// The next instant after `now_ms` at which the window opens, if any.
    pub fn next_open(&self, now_ms: i64) -> Option<i64> {
        self.occurrences(now_ms)
            .iter()
            .map(|(start, _)| *start)
            .filter(|start| *start > now_ms)
            .min()
    }

    /// The instant the current opening ends, if open at `now_ms`.
    pub fn closes_at(&self, now_ms: i64) -> Option<i64> {
        self.occurrences(now_ms)
            .iter()
            .filter(|(start, len)| *start <= now_ms && now_ms < start.saturating_add(*len))
            .map(|(start, len)| start.saturating_add(*len))
            .max()
    }
}

/// Unix ms of `minute` after local midnight on `date` in `tz`. In a DST gap the first valid
/// instant after it is used, so a window at 02:30 still opens on the spring-forward day.
fn local_start(tz: &chrono_tz::Tz, date: NaiveDate, minute: u32) -> Option<i64> {
    let naive = date.and_hms_opt(minute / 60, minute % 60, 0)?;
    tz.from_local_datetime(&naive)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(naive + Duration::hours(1)))
                .earliest()
        })
        .map(|t| t.timestamp_millis())
}

/// Whether `host` may start at `now_ms` under `windows`: `Ok(())`, or `Err(next opening)`
/// (`None` when no window applying to it opens again).
pub fn may_start(windows: &[Window], host: &HostView, now_ms: i64) -> Result<(), Option<i64>> {
    if windows.is_empty() {
        return Ok(());
    }
    let applicable: Vec<&Window> = windows.iter().filter(|w| w.applies_to(host)).collect();
    if applicable.iter().any(|w| w.is_open(now_ms)) {
        return Ok(());
    }
    Err(applicable.iter().filter_map(|w| w.next_open(now_ms)).min())
}

/// Formats Unix ms as RFC 3339 (UTC) for messages.
pub fn fmt_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn absolute_window_is_half_open() {
        let w = Window {
            time: WindowTime::Absolute {
                start_ms: 1000,
                duration_ms: 500,
            },
            hosts: vec![],
        };
        assert!(!w.is_open(999));
        assert!(w.is_open(1000));
        assert!(w.is_open(1499));
        assert!(!w.is_open(1500));
        assert_eq!(w.next_open(0), Some(1000));
        assert_eq!(w.next_open(1000), None);
    }

    #[test]
    fn weekly_window_follows_the_time_zone() {
        // Saturday and Sunday, 01:00 Paris time, for 4 hours.
        let w = Window {
            time: WindowTime::Weekly {
                days: vec![5, 6],
                start_minute: 60,
                duration_ms: 4 * 3600 * 1000,
                timezone: "Europe/Paris".into(),
            },
            hosts: vec![],
        };
        // 2025-06-07 is a Saturday; Paris is UTC+2 in summer, so 01:00 local = 23:00 UTC Friday.
        assert!(w.is_open(ms("2025-06-06T23:30:00Z")));
        assert!(!w.is_open(ms("2025-06-06T22:59:00Z")));
        assert!(!w.is_open(ms("2025-06-07T03:00:00Z")));
        assert_eq!(
            w.next_open(ms("2025-06-04T12:00:00Z")),
            Some(ms("2025-06-06T23:00:00Z"))
        );
        // After Sunday's window the next one is the following Friday night (UTC).
        assert_eq!(
            w.next_open(ms("2025-06-08T12:00:00Z")),
            Some(ms("2025-06-13T23:00:00Z"))
        );
        // A window open past midnight is still open the next local day.
        assert_eq!(
            w.closes_at(ms("2025-06-07T23:30:00Z")),
            Some(ms("2025-06-08T03:00:00Z"))
        );
    }
}
