//! Campaign schedules: a cron expression read in an IANA time zone (`schedule = { cron =
//! "0 3 * * *", timezone = "Europe/Berlin" }`), and the one pure decision of when a schedule
//! fires ([`due`]). The coordinator's engine stores when each schedule last fired and asks
//! [`due`] with its clock's `now`; nothing here reads a clock.
//!
//! Time zones and daylight saving time follow Vixie cron (the `croner` crate implements it):
//! * a fixed time that a spring-forward transition skips (02:30 on the night clocks jump from
//!   02:00 to 03:00) fires **once, at the first valid time after the gap** (03:00), that day;
//! * a fixed time that a fall-back transition repeats (02:30 twice) fires **once**, at its
//!   first pass;
//! * an interval or wildcard field (`*/15 * * * *`, `0 * * * *`) follows real time: the
//!   occurrences inside a skipped hour do not exist, and those of a repeated hour happen on
//!   each pass, as any hour that passes.
//!
//! Missed fire times (the coordinator was down) collapse into one: a schedule is due when the
//! first fire time after its last fire has come, whatever number of them have passed since,
//! and it then fires once, now, and waits for the first fire time after now.

use std::fmt;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};

/// When a campaign runs by itself: a five-field cron expression (minute, hour, day of month,
/// month, day of week) in a time zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Schedule {
    /// The expression as written, e.g. `0 3 * * *`.
    pub cron: String,
    /// An IANA name, e.g. `Europe/Berlin`; `UTC` when the file gives none.
    pub timezone: String,
}

/// Whether a schedule fires now, and when it is next due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Fire now: `scheduled_ms` is the (first) fire time that came, `next_ms` the first fire
    /// time after now (to record once fired; `None` if the expression has no later one).
    Fire {
        scheduled_ms: i64,
        next_ms: Option<i64>,
    },
    /// Not yet: the next fire time.
    Wait { at_ms: i64 },
    /// The expression has no fire time after the last fire (or cannot be read any more).
    Never,
}

impl Schedule {
    /// Checks an expression and a time zone; the error says what is wrong with which.
    pub fn new(cron: &str, timezone: &str) -> Result<Schedule, ScheduleError> {
        parse_cron(cron)?;
        timezone
            .parse::<chrono_tz::Tz>()
            .map_err(|_| ScheduleError::Timezone(timezone.to_owned()))?;
        Ok(Schedule {
            cron: cron.trim().to_owned(),
            timezone: timezone.to_owned(),
        })
    }

    /// The first fire time strictly after `after_ms` (Unix ms), if any.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let (cron, tz) = self.parts()?;
        let after = DateTime::<Utc>::from_timestamp_millis(after_ms)?.with_timezone(&tz);
        let next = cron.find_next_occurrence(&after, false).ok()?;
        let next_ms = next.timestamp_millis();
        // Cron times are whole minutes, so after a fractional `after_ms` the next one is
        // always later; checked anyway so a schedule can never fire twice for one time.
        (next_ms > after_ms).then_some(next_ms)
    }

    /// The expression and zone, parsed again (they were checked when the file was read; one
    /// that no longer parses never fires rather than firing at a guessed time).
    fn parts(&self) -> Option<(Cron, chrono_tz::Tz)> {
        let cron = parse_cron(&self.cron).ok()?;
        let tz = self.timezone.parse::<chrono_tz::Tz>().ok()?;
        Some((cron, tz))
    }

    /// A fire time as the schedule's zone reads it, e.g. `2025-06-01 03:00 CEST`.
    pub fn local(&self, at_ms: i64) -> String {
        let Ok(tz) = self.timezone.parse::<chrono_tz::Tz>() else {
            return crate::window::fmt_ms(at_ms);
        };
        match tz.timestamp_millis_opt(at_ms).single() {
            Some(t) => t.format("%Y-%m-%d %H:%M %Z").to_string(),
            None => crate::window::fmt_ms(at_ms),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\" in {}", self.cron, self.timezone)
    }
}

/// Whether `schedule`, which last fired at `since_ms` (or was registered then, if it never
/// fired), fires at `now_ms`. Pure: the whole fire decision of the engine.
///
/// Due when the first fire time after `since_ms` is not after `now_ms`. However many fire
/// times have passed since (a coordinator down over several of them), that is one fire; the
/// caller records `now_ms` as the last fire, so the next decision waits for the first fire
/// time after now.
pub fn due(schedule: &Schedule, since_ms: i64, now_ms: i64) -> Due {
    match schedule.next_after(since_ms) {
        None => Due::Never,
        Some(at_ms) if at_ms > now_ms => Due::Wait { at_ms },
        Some(scheduled_ms) => Due::Fire {
            scheduled_ms,
            next_ms: schedule.next_after(now_ms),
        },
    }
}

/// Why a schedule cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "{0:?} is not a cron expression ({1}); write five fields: minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\""
    )]
    Cron(String, String),
    #[error("{0:?} is not an IANA time zone such as \"Europe/Berlin\" or \"UTC\"")]
    Timezone(String),
}

fn parse_cron(text: &str) -> Result<Cron, ScheduleError> {
    let text = text.trim();
    // Five fields only: a seconds field or a year would make a campaign a timer, and "@every"
    // style nicknames are not cron. `@daily` and friends are accepted by croner as the
    // classic aliases.
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| ScheduleError::Cron(text.to_owned(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis()
    }

    fn berlin(cron: &str) -> Schedule {
        Schedule::new(cron, "Europe/Berlin").unwrap()
    }

    #[test]
    fn the_next_fire_time_is_read_in_the_schedule_s_zone() {
        let s = berlin("0 3 * * *");
        // 2025-06-01 12:00 UTC is 14:00 CEST; the next 03:00 CEST is 01:00 UTC the next day.
        assert_eq!(
            s.next_after(utc(2025, 6, 1, 12, 0)),
            Some(utc(2025, 6, 2, 1, 0))
        );
        // In winter (CET, UTC+1) the same local time is 02:00 UTC.
        assert_eq!(
            s.next_after(utc(2025, 12, 1, 12, 0)),
            Some(utc(2025, 12, 2, 2, 0))
        );
        assert_eq!(s.local(utc(2025, 12, 2, 2, 0)), "2025-12-02 03:00 CET");
        let s = Schedule::new("30 1 * * 1", "UTC").unwrap();
        // 2025-06-02 is a Monday.
        assert_eq!(
            s.next_after(utc(2025, 6, 1, 0, 0)),
            Some(utc(2025, 6, 2, 1, 30))
        );
    }

    #[test]
    fn a_fire_time_is_strictly_after_the_last() {
        let s = Schedule::new("0 3 * * *", "UTC").unwrap();
        let at = utc(2025, 6, 2, 3, 0);
        assert_eq!(s.next_after(at), Some(utc(2025, 6, 3, 3, 0)));
        assert_eq!(s.next_after(at - 1), Some(at));
        assert_eq!(s.next_after(at + 20), Some(utc(2025, 6, 3, 3, 0)));
    }

    #[test]
    fn a_time_skipped_by_spring_forward_fires_once_at_the_next_valid_time() {
        // Europe/Berlin, 2025-03-30: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        let s = berlin("30 2 * * *");
        let first = s.next_after(utc(2025, 3, 29, 12, 0)).unwrap();
        assert_eq!(
            first,
            utc(2025, 3, 30, 1, 0),
            "03:00 CEST, the first valid time"
        );
        // Once that day: the next is 02:30 CEST the day after.
        assert_eq!(s.next_after(first), Some(utc(2025, 3, 31, 0, 30)));
    }

    #[test]
    fn a_time_repeated_by_fall_back_fires_once() {
        // Europe/Berlin, 2025-10-26: 03:00 CEST falls back to 02:00 CET; 02:30 happens at
        // 00:30 UTC and again at 01:30 UTC.
        let s = berlin("30 2 * * *");
        let first = s.next_after(utc(2025, 10, 25, 12, 0)).unwrap();
        assert_eq!(first, utc(2025, 10, 26, 0, 30), "its first pass");
        assert_eq!(
            s.next_after(first),
            Some(utc(2025, 10, 27, 1, 30)),
            "not again at the second pass: the next day, 02:30 CET"
        );
        // Deciding through the repeated hour with the due rule fires once.
        let mut since = utc(2025, 10, 25, 12, 0);
        let mut fired = Vec::new();
        let mut now = since;
        while now < utc(2025, 10, 26, 12, 0) {
            now += 60_000;
            if let Due::Fire { scheduled_ms, .. } = due(&s, since, now) {
                fired.push(scheduled_ms);
                since = now;
            }
        }
        assert_eq!(fired, vec![utc(2025, 10, 26, 0, 30)]);
    }

    #[test]
    fn an_hourly_schedule_follows_real_time_across_both_transitions() {
        let s = berlin("0 * * * *");
        // Spring forward: local 01:00, then 03:00 (02:00 does not exist): one hour apart.
        assert_eq!(
            s.next_after(utc(2025, 3, 30, 0, 0)),
            Some(utc(2025, 3, 30, 1, 0))
        );
        // Fall back: 02:00 CEST (00:00 UTC), 02:00 CET (01:00 UTC): each hour that passes.
        let a = s.next_after(utc(2025, 10, 25, 23, 30)).unwrap();
        let b = s.next_after(a).unwrap();
        assert_eq!(b - a, 3_600_000);
    }

    #[test]
    fn due_fires_once_for_any_number_of_missed_times_then_waits_for_the_next() {
        let s = Schedule::new("0 3 * * *", "UTC").unwrap();
        let since = utc(2025, 6, 1, 3, 0);
        // Not yet.
        assert_eq!(
            due(&s, since, utc(2025, 6, 2, 2, 59)),
            Due::Wait {
                at_ms: utc(2025, 6, 2, 3, 0)
            }
        );
        // On time.
        assert_eq!(
            due(&s, since, utc(2025, 6, 2, 3, 0)),
            Due::Fire {
                scheduled_ms: utc(2025, 6, 2, 3, 0),
                next_ms: Some(utc(2025, 6, 3, 3, 0))
            }
        );
        // Down for three days: one fire (for the first missed time), then the next after now.
        let now = utc(2025, 6, 5, 9, 0);
        assert_eq!(
            due(&s, since, now),
            Due::Fire {
                scheduled_ms: utc(2025, 6, 2, 3, 0),
                next_ms: Some(utc(2025, 6, 6, 3, 0))
            }
        );
        // Recorded as fired now: nothing more until the next time.
        assert_eq!(
            due(&s, now, now + 1000),
            Due::Wait {
                at_ms: utc(2025, 6, 6, 3, 0)
            }
        );
    }

    #[test]
    fn an_expression_without_a_later_time_never_fires_again() {
        // 30 February does not exist.
        let s = Schedule::new("0 3 30 2 *", "UTC").unwrap();
        assert_eq!(
            due(&s, utc(2025, 1, 1, 0, 0), utc(2026, 1, 1, 0, 0)),
            Due::Never
        );
    }

    #[test]
    fn bad_expressions_and_zones_say_what_is_wrong() {
        let e = Schedule::new("0 3 * *", "UTC").unwrap_err();
        assert!(matches!(e, ScheduleError::Cron(..)), "{e}");
        assert!(e.to_string().contains("five fields"), "{e}");
        assert!(
            Schedule::new("0 0 3 * * *", "UTC").is_err(),
            "no seconds field"
        );
        assert!(Schedule::new("61 3 * * *", "UTC").is_err());
        let e = Schedule::new("0 3 * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(e, ScheduleError::Timezone("Mars/Olympus".into()));
    }
}
