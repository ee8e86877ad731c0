//! Cron schedules read on a zone's wall clock, and their fire times across daylight-saving changes.
//!
//! The `cron` crate evaluated in a zone with daylight saving fires a daily 02:30 job zero times on
//! the day the clocks jump over 02:30 and twice on the day they are turned back over it. Here the
//! cron fields are matched against the zone's wall clock (the crate is iterated in UTC, which has
//! no changes, as a stand-in for naive local time), and each wall-clock time is mapped to an
//! instant by one of two rules, chosen by the hour field:
//!
//! - **Fixed-time** schedules (the hour field names hours, e.g. `0 30 2 * * *`) fire at the first
//!   instant whose wall clock reads the time or later: a time in a spring-forward gap fires once,
//!   at the end of the gap (02:30 → 03:00 in Europe/Berlin; several times in one gap fire once,
//!   together), and a time that occurs twice in an autumn overlap fires at its first occurrence.
//! - **Every-hour** schedules (the hour field is `*`, e.g. `0 */15 * * * *`) follow real time: they
//!   fire at every instant whose wall clock matches. The times in a gap do not exist, and no hour
//!   of real time is lost with them (01:59:59 CET is followed by 03:00:00 CEST); the hour repeated
//!   in autumn fires in both occurrences, which are two different hours of real time.
//!
//! This is cron's (cronie's) own distinction between fixed-time and wildcard jobs. Every function
//! takes the time it counts from; none reads the clock.

use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use cron::TimeUnitSpec;

use super::raw::Missed;

/// A cron schedule in a zone, with the text it came from.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub expr: String,
    pub cron: cron::Schedule,
    /// The zone whose wall clock the fields are read on.
    pub tz: Tz,
    /// What the scheduler does about ticks missed while it was not running.
    pub missed: Missed,
}

/// How far apart two offset changes of one zone are at least, for the search of the next change.
/// (Daylight-saving changes are months apart; the closest in the tz database are days apart.)
const CHANGE_PROBE: Duration = Duration::hours(6);

/// The most offset changes crossed looking for one fire time (two a year: centuries).
const MAX_CHANGES: usize = 1000;

impl Schedule {
    /// Parses a cron expression (seconds first) read in `tz`.
    pub fn parse(expr: &str, tz: Tz, missed: Missed) -> Result<Schedule, cron::error::Error> {
        Ok(Schedule {
            expr: expr.to_owned(),
            cron: cron::Schedule::from_str(expr)?,
            tz,
            missed,
        })
    }

    /// The next `count` fire times strictly after `now`. The caller passes the time, so the
    /// schedule's arithmetic is tested at any instant without waiting for it.
    pub fn upcoming(&self, now: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(count);
        let mut t = now;
        while out.len() < count {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    /// The first fire time strictly after `after`, by the rules of the module's documentation;
    /// `None` when the schedule never fires again (a year field in the past).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.cron.hours().is_all() {
            self.next_real(after)
        } else {
            self.next_fixed(after)
        }
    }

    /// Wall-clock times the fields match, strictly after `local`, in order.
    fn wall_times(&self, local: NaiveDateTime) -> impl Iterator<Item = NaiveDateTime> + '_ {
        self.cron
            .after(&Utc.from_utc_datetime(&local))
            .map(|t| t.naive_utc())
    }

    /// The zone's offset from UTC at instant `t`, in seconds.
    fn offset_at(&self, t: DateTime<Utc>) -> i64 {
        i64::from(
            self.tz
                .offset_from_utc_datetime(&t.naive_utc())
                .fix()
                .local_minus_utc(),
        )
    }

    /// The wall clock at instant `t`.
    fn wall(&self, t: DateTime<Utc>) -> NaiveDateTime {
        t.naive_utc() + Duration::seconds(self.offset_at(t))
    }

    /// Fixed-time: each matching wall-clock time fires at the first instant that reads it or
    /// later. That instant never decreases as the wall-clock time grows, and no time at or
    /// before `after`'s own wall clock can map past `after`, so the search starts there.
    fn next_fixed(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.wall_times(self.wall(after))
            .map(|local| self.first_reading(local))
            .find(|&t| t > after)
    }

    /// The first instant whose wall clock reads `local` or later: the instant itself when `local`
    /// occurs once, the first occurrence when the clock is turned back over it, the end of the
    /// gap when the clock jumps over it.
    fn first_reading(&self, local: NaiveDateTime) -> DateTime<Utc> {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => t.with_timezone(&Utc),
            LocalResult::Ambiguous(a, b) => a.min(b).with_timezone(&Utc),
            LocalResult::None => {
                // Offsets lie within -12h..+14h, so the wall clock 15 hours either side of `local`
                // read as UTC is before and after it; in between it only moves forward (one gap,
                // no overlap so close to it).
                let probe = Utc.from_utc_datetime(&local);
                first_where(
                    probe - Duration::hours(15),
                    probe + Duration::hours(15),
                    |t| self.wall(t) >= local,
                )
            }
        }
    }

    /// Every-hour: the first instant after `after` whose wall clock matches. Between two offset
    /// changes the wall clock is UTC plus a constant, so the first match on that offset is the
    /// answer unless an offset change comes first; then the search goes on from the change.
    fn next_real(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Fire times are whole seconds: the first candidate is the next whole second.
        let mut from = after.trunc_subsecs() + Duration::seconds(1);
        for _ in 0..MAX_CHANGES {
            let offset = Duration::seconds(self.offset_at(from));
            // The first match at or after `from`'s wall clock.
            let local = self
                .wall_times(from.naive_utc() + offset - Duration::seconds(1))
                .next()?;
            let at = Utc.from_utc_datetime(&(local - offset));
            match self.next_change(from, at) {
                None => return Some(at),
                Some(change) => from = change,
            }
        }
        None
    }

    /// The first instant in `(from, until]` whose offset differs from `from`'s, if there is one.
    fn next_change(&self, from: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let offset = self.offset_at(from);
        let mut lo = from;
        while lo < until {
            let hi = (lo + CHANGE_PROBE).min(until);
            if self.offset_at(hi) != offset {
                return Some(first_where(lo, hi, |t| self.offset_at(t) != offset));
            }
            lo = hi;
        }
        None
    }
}

/// The first whole second in `(lo, hi]` where `pred` holds, for a `pred` false at `lo`, true at
/// `hi` and changing once in between (binary search). `lo` and `hi` are whole seconds.
fn first_where(
    mut lo: DateTime<Utc>,
    mut hi: DateTime<Utc>,
    pred: impl Fn(DateTime<Utc>) -> bool,
) -> DateTime<Utc> {
    while (hi - lo).num_seconds() > 1 {
        let mid = lo + Duration::seconds((hi - lo).num_seconds() / 2);
        if pred(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

trait TruncSubsecs {
    fn trunc_subsecs(self) -> Self;
}

impl TruncSubsecs for DateTime<Utc> {
    fn trunc_subsecs(self) -> Self {
        chrono::DurationRound::duration_trunc(self, Duration::seconds(1)).unwrap_or(self)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use chrono_tz::Tz;

    use super::{Missed, Schedule};

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn schedule(expr: &str, tz: &str) -> Schedule {
        Schedule::parse(expr, tz.parse::<Tz>().unwrap(), Missed::RunOnce).unwrap()
    }

    /// Fire times in `[from, until)`, from `next_after` step by step.
    fn fires(
        s: &Schedule,
        from: chrono::DateTime<Utc>,
        until: chrono::DateTime<Utc>,
    ) -> Vec<chrono::DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = from - chrono::Duration::seconds(1);
        while let Some(next) = s.next_after(t).filter(|&n| n < until) {
            out.push(next);
            t = next;
        }
        out
    }

    #[test]
    fn weekly_schedule_fires_on_sundays_at_three() {
        let s = schedule("0 0 3 * * SUN", "UTC");
        // Saturday 2026-11-28 12:00 UTC.
        let now = at(2026, 11, 28, 12, 0, 0);
        let next = s.upcoming(now, 2);
        assert_eq!(next, [at(2026, 11, 29, 3, 0, 0), at(2026, 12, 6, 3, 0, 0)]);
        // A fire time is never "now" itself: a tick at 03:00:00 schedules the next week.
        assert_eq!(s.upcoming(next[0], 1), [next[1]]);
        // Sub-second times in between.
        let just_before = next[0] - chrono::Duration::milliseconds(1);
        assert_eq!(s.next_after(just_before), Some(next[0]));
    }

    #[test]
    fn a_daily_time_in_the_spring_gap_runs_once_at_the_end_of_the_gap() {
        // Europe/Berlin, 2026-03-29: 02:00 CET (01:00 UTC) becomes 03:00 CEST; 02:30 never happens.
        let s = schedule("0 30 2 * * *", "Europe/Berlin");
        let got = s.upcoming(at(2026, 3, 27, 12, 0, 0), 4);
        assert_eq!(
            got,
            [
                at(2026, 3, 28, 1, 30, 0), // 02:30 CET
                at(2026, 3, 29, 1, 0, 0),  // 03:00 CEST, the first instant after the gap
                at(2026, 3, 30, 0, 30, 0), // 02:30 CEST
                at(2026, 3, 31, 0, 30, 0),
            ]
        );
        // Counted from any instant of the gap day, still once that day.
        let day = fires(&s, at(2026, 3, 28, 23, 0, 0), at(2026, 3, 29, 22, 0, 0));
        assert_eq!(day, [at(2026, 3, 29, 1, 0, 0)]);
        // Several times in one gap fire once, together, and 03:00 itself is that same run.
        let s = schedule("0 */15 2,3 * * *", "Europe/Berlin");
        let day = fires(&s, at(2026, 3, 29, 0, 0, 0), at(2026, 3, 29, 1, 50, 0));
        assert_eq!(
            day,
            [
                at(2026, 3, 29, 1, 0, 0),
                at(2026, 3, 29, 1, 15, 0),
                at(2026, 3, 29, 1, 30, 0),
                at(2026, 3, 29, 1, 45, 0)
            ]
        );
    }

    #[test]
    fn a_daily_time_in_the_autumn_overlap_runs_at_its_first_occurrence_only() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST (01:00 UTC) becomes 02:00 CET; 02:30 happens twice.
        let s = schedule("0 30 2 * * *", "Europe/Berlin");
        let got = s.upcoming(at(2026, 10, 23, 12, 0, 0), 3);
        assert_eq!(
            got,
            [
                at(2026, 10, 24, 0, 30, 0), // 02:30 CEST
                at(2026, 10, 25, 0, 30, 0), // 02:30 CEST, the first of the two
                at(2026, 10, 26, 1, 30, 0), // 02:30 CET
            ]
        );
        // Counting from between the two occurrences does not find the second.
        assert_eq!(
            s.next_after(at(2026, 10, 25, 1, 0, 0)),
            Some(at(2026, 10, 26, 1, 30, 0))
        );
        let s = schedule("0 */20 2 * * *", "Europe/Berlin");
        let day = fires(&s, at(2026, 10, 24, 23, 0, 0), at(2026, 10, 25, 23, 0, 0));
        assert_eq!(
            day,
            [
                at(2026, 10, 25, 0, 0, 0),
                at(2026, 10, 25, 0, 20, 0),
                at(2026, 10, 25, 0, 40, 0)
            ]
        );
    }

    #[test]
    fn utc_schedules_are_the_cron_crates_own() {
        for expr in [
            "0 30 2 * * *",
            "*/7 * * * * *",
            "0 0 3 * * SUN",
            "0 15 */5 1,15 * *",
            "0 0 0 29 2 *",
        ] {
            let s = schedule(expr, "UTC");
            let from = at(2026, 1, 1, 0, 0, 0);
            let ours = s.upcoming(from, 200);
            let theirs: Vec<_> = s.cron.after(&from).take(200).collect();
            assert_eq!(ours, theirs, "{expr}");
        }
    }

    #[test]
    fn every_second_in_a_dst_zone_neither_skips_nor_doubles_a_second_of_real_time() {
        let s = schedule("* * * * * *", "Europe/Berlin");
        // Two hours of real time around each change: every second fires exactly once.
        for (from, until) in [
            (at(2026, 3, 29, 0, 0, 0), at(2026, 3, 29, 2, 0, 0)),
            (at(2026, 10, 25, 0, 0, 0), at(2026, 10, 25, 2, 0, 0)),
        ] {
            let got = fires(&s, from, until);
            assert_eq!(got.len(), 7200, "from {from}");
            assert!(got
                .windows(2)
                .all(|w| w[1] - w[0] == chrono::Duration::seconds(1)));
        }
        // Every 15 minutes of real time across both changes, the repeated hour included.
        let s = schedule("0 */15 * * * *", "Europe/Berlin");
        for (from, until) in [
            (at(2026, 3, 28, 23, 0, 0), at(2026, 3, 29, 3, 0, 0)),
            (at(2026, 10, 24, 23, 0, 0), at(2026, 10, 25, 3, 0, 0)),
        ] {
            let got = fires(&s, from, until);
            assert_eq!(got.len(), 16, "from {from}: {got:?}");
            assert!(got
                .windows(2)
                .all(|w| w[1] - w[0] == chrono::Duration::minutes(15)));
        }
    }

    #[test]
    fn other_zones_and_a_schedule_that_ends() {
        // New York, 2026-03-08: 02:00 EST becomes 03:00 EDT (07:00 UTC).
        let s = schedule("0 30 2 * * *", "America/New_York");
        assert_eq!(
            s.upcoming(at(2026, 3, 7, 12, 0, 0), 2),
            [at(2026, 3, 8, 7, 0, 0), at(2026, 3, 9, 6, 30, 0)]
        );
        // Sydney turns its clock back on 2026-04-05: 03:00 AEDT becomes 02:00 AEST (16:00 UTC).
        let s = schedule("0 30 2 * * *", "Australia/Sydney");
        assert_eq!(
            s.upcoming(at(2026, 4, 4, 0, 0, 0), 2),
            [at(2026, 4, 4, 15, 30, 0), at(2026, 4, 5, 16, 30, 0)]
        );
        let s = schedule("0 0 12 1 1 * 2027", "Europe/Berlin");
        assert_eq!(
            s.upcoming(at(2026, 6, 1, 0, 0, 0), 3),
            [at(2027, 1, 1, 11, 0, 0)]
        );
        let s = schedule("0 0 * 1 1 * 2027", "Europe/Berlin");
        assert_eq!(s.upcoming(at(2026, 6, 1, 0, 0, 0), 30).len(), 24);
    }
}
