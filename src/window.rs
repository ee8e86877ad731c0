//! Maintenance windows: `Sun 02:00-06:00 Europe/Prague`, read by the template function
//! `in_window(spec, at)`, so a playbook that locks tables (monthly-maintenance's VACUUM FULL)
//! runs only in the hours its owners declared, whatever started it (its schedule, a catch-up run
//! after downtime, a person).
//!
//! A spec is `[DAYS ]HH:MM-HH:MM[ ZONE]`: DAYS a comma list of `Mon`..`Sun` or ranges
//! (`Mon-Fri`), `*` or absent for every day; the end is exclusive; an end at or before the start
//! crosses midnight and belongs to the day it starts on (`Sat 22:00-04:00` takes Sunday 03:00);
//! ZONE an IANA name (default `UTC`), whose wall clock the hours are read on.

use chrono::{DateTime, Datelike, Duration, NaiveTime, Utc, Weekday};
use chrono_tz::Tz;

/// A parsed window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The days a window may start on, Monday first.
    days: [bool; 7],
    start: NaiveTime,
    end: NaiveTime,
    zone: Tz,
}

const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// Monday 0 .. Sunday 6, from a day's name or its first three letters or more.
fn day(s: &str) -> Result<usize, String> {
    let lower = s.to_ascii_lowercase();
    DAYS.iter()
        .position(|d| lower.len() >= 3 && d.starts_with(&lower))
        .ok_or_else(|| format!("`{s}` is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"))
}

fn time(s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s, "%H:%M")
        .map_err(|_| format!("`{s}` is not a time of day (HH:MM, 00:00 to 23:59)"))
}

impl std::str::FromStr for Window {
    type Err = String;

    fn from_str(spec: &str) -> Result<Window, String> {
        let bad = |why: String| {
            format!("window `{spec}`: {why} (expected `[DAYS ]HH:MM-HH:MM[ ZONE]`, e.g. `Sun 02:00-06:00 Europe/Prague`)")
        };
        let words: Vec<&str> = spec.split_whitespace().collect();
        let hours_at = words
            .iter()
            .position(|w| w.contains(':'))
            .ok_or_else(|| bad("no hours".into()))?;
        if hours_at > 1 || words.len() > hours_at + 2 {
            return Err(bad("too many parts".into()));
        }
        let mut days = [hours_at == 0; 7];
        if hours_at == 1 && words[0] == "*" {
            days = [true; 7];
        } else if hours_at == 1 {
            for part in words[0].split(',') {
                match part.split_once('-') {
                    Some((from, to)) => {
                        let (from, to) = (day(from).map_err(bad)?, day(to).map_err(bad)?);
                        let mut d = from;
                        loop {
                            days[d] = true;
                            if d == to {
                                break;
                            }
                            d = (d + 1) % 7;
                        }
                    }
                    None => days[day(part).map_err(bad)?] = true,
                }
            }
        }
        let (start, end) = words[hours_at]
            .split_once('-')
            .ok_or_else(|| bad(format!("`{}` is not HH:MM-HH:MM", words[hours_at])))?;
        let (start, end) = (time(start).map_err(bad)?, time(end).map_err(bad)?);
        let zone = match words.get(hours_at + 1) {
            None => Tz::UTC,
            Some(z) => z
                .parse::<Tz>()
                .map_err(|_| bad(format!("`{z}` is not an IANA time zone")))?,
        };
        Ok(Window {
            days,
            start,
            end,
            zone,
        })
    }
}

impl Window {
    /// Whether `at` falls in the window, on the zone's wall clock.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.zone);
        let (t, today) = (local.time(), local.weekday());
        let starts_on = |d: Weekday| self.days[d.num_days_from_monday() as usize];
        if self.start < self.end {
            starts_on(today) && t >= self.start && t < self.end
        } else {
            // Crosses midnight: the evening part is today's window, the morning part yesterday's.
            (t >= self.start && starts_on(today))
                || (t < self.end && starts_on((local - Duration::days(1)).weekday()))
        }
    }
}

/// A point in time as a template holds it: RFC 3339, or `YYYY-MM-DD HH:MM:SS[.fff]` in UTC (SQLite's
/// `CURRENT_TIMESTAMP`, PostgreSQL's text form without a zone).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|_| format!("`{s}` is not a time (RFC 3339, e.g. 2026-01-04T03:00:00Z)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        parse_time(s).unwrap()
    }

    fn w(s: &str) -> Window {
        s.parse().unwrap()
    }

    #[test]
    fn a_weekday_window_in_a_zone() {
        // 2026-01-04 is a Sunday; Prague is UTC+1 in winter.
        let sun = w("Sun 02:00-06:00 Europe/Prague");
        assert!(sun.contains(at("2026-01-04T01:00:00Z"))); // 02:00 local
        assert!(sun.contains(at("2026-01-04T04:59:59Z"))); // 05:59:59 local
        assert!(!sun.contains(at("2026-01-04T05:00:00Z"))); // 06:00 local: the end is exclusive
        assert!(!sun.contains(at("2026-01-04T00:30:00Z"))); // 01:30 local
        assert!(!sun.contains(at("2026-01-05T02:00:00Z"))); // Monday
        assert!(!w("Sat 02:00-06:00 Europe/Prague").contains(at("2026-01-04T02:00:00Z")));
    }

    #[test]
    fn every_day_ranges_lists_and_midnight() {
        assert!(w("02:00-06:00").contains(at("2026-01-06T03:00:00Z")));
        assert!(w("* 02:00-06:00 UTC").contains(at("2026-01-06T03:00:00Z")));
        let workdays = w("Mon-Fri 22:00-04:00");
        assert!(workdays.contains(at("2026-01-09T23:00:00Z"))); // Friday night
        assert!(workdays.contains(at("2026-01-10T03:00:00Z"))); // its Saturday morning part
        assert!(!workdays.contains(at("2026-01-10T23:00:00Z"))); // Saturday night
        assert!(!workdays.contains(at("2026-01-05T03:00:00Z"))); // Monday morning: Sunday's
        let weekend = w("Sat,Sunday 10:00-12:00");
        assert!(weekend.contains(at("2026-01-03T11:00:00Z")));
        assert!(weekend.contains(at("2026-01-04T11:00:00Z")));
        assert!(w("Fri-Mon 10:00-12:00").contains(at("2026-01-05T11:00:00Z")));
    }

    #[test]
    fn a_bad_window_says_what_is_wrong() {
        let err = |s: &str| s.parse::<Window>().unwrap_err();
        assert!(err("Sun").contains("no hours"), "{}", err("Sun"));
        assert!(err("Sn 02:00-06:00").contains("`Sn` is not a day"));
        assert!(err("Sun 02:00-25:00").contains("`25:00` is not a time of day"));
        assert!(err("Sun 02:00-06:00 Mars/Olympus").contains("not an IANA time zone"));
        assert!(err("Sun 02:00").contains("is not HH:MM-HH:MM"));
    }

    #[test]
    fn times_in_the_forms_templates_and_databases_give() {
        assert_eq!(at("2026-01-04 03:00:00"), at("2026-01-04T03:00:00.000Z"));
        assert_eq!(
            at("2026-01-04 04:00:00.5+01"),
            at("2026-01-04T03:00:00.500Z")
        );
        assert!(parse_time("yesterday")
            .unwrap_err()
            .contains("is not a time"));
    }
}
