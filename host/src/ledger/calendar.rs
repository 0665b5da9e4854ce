//! Periods in a time zone: a refill's periods, counted from its anchor, and a spend
//! cap's windows, aligned on the zone's calendar ([`docs/credits.md`](../../../docs/credits.md)).
//! Calendar days and months follow the zone's wall clock (a day across a DST change is
//! 23 or 25 hours; a month from the 31st ends on the last day of a shorter month);
//! hours are exact. Pure functions of their inputs and of the time-zone database
//! compiled into the binary, so every replica computes the same periods.

use jiff::civil::{DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};

/// How far apart a schedule's periods start. Stored in records (its variants' order is
/// the format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Cadence {
    Hours(u32),
    Days(u32),
    Months(u32),
}

impl Cadence {
    fn span(self, periods: i64) -> Result<Span, jiff::Error> {
        match self {
            Cadence::Hours(hours) => Span::new().try_hours(periods * i64::from(hours)),
            Cadence::Days(days) => Span::new().try_days(periods * i64::from(days)),
            Cadence::Months(months) => Span::new().try_months(periods * i64::from(months)),
        }
    }

    /// A period's length to within a day or so: the first guess of which period an
    /// instant falls in.
    fn nominal_ms(self) -> i64 {
        const HOUR_MS: i64 = 3_600_000;
        match self {
            Cadence::Hours(hours) => i64::from(hours) * HOUR_MS,
            Cadence::Days(days) => i64::from(days) * 24 * HOUR_MS,
            // The Gregorian average month: 365.2425 / 12 days.
            Cadence::Months(months) => i64::from(months) * 2_629_746_000,
        }
    }

    fn count(self) -> u32 {
        match self {
            Cadence::Hours(count) | Cadence::Days(count) | Cadence::Months(count) => count,
        }
    }
}

/// One period: `start_ms <= t < end_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// The period's number from the schedule's anchor (period 0 starts at it).
    pub index: u64,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// Why a schedule or a window could not be computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarError(pub String);

impl std::fmt::Display for CalendarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn error(what: impl std::fmt::Display, why: jiff::Error) -> CalendarError {
    CalendarError(format!("{what}: {why}"))
}

/// Resolves an IANA time-zone name (`Europe/Paris`, `UTC`) in the compiled-in database.
pub fn zone(name: &str) -> Result<TimeZone, CalendarError> {
    TimeZone::get(name).map_err(|why| error(format!("unknown time zone '{name}'"), why))
}

fn zoned(at_ms: i64, zone: &TimeZone) -> Result<Zoned, CalendarError> {
    Timestamp::from_millisecond(at_ms)
        .map(|at| at.to_zoned(zone.clone()))
        .map_err(|why| error(format!("{at_ms} ms is not a representable instant"), why))
}

/// Periods of a cadence counted from an anchor in a zone: period `k` starts at the
/// anchor plus `k` times the cadence, each computed from the anchor (so a monthly
/// schedule anchored on the 31st starts on the 31st whenever a month has one).
#[derive(Debug, Clone)]
pub struct Schedule {
    cadence: Cadence,
    anchor: Zoned,
}

impl Schedule {
    pub fn new(cadence: Cadence, zone: &TimeZone, anchor_ms: i64) -> Result<Self, CalendarError> {
        if cadence.count() == 0 {
            return Err(CalendarError(
                "a schedule's cadence must be at least 1".to_owned(),
            ));
        }
        Ok(Self {
            cadence,
            anchor: zoned(anchor_ms, zone)?,
        })
    }

    /// When period `index` starts.
    pub fn start_ms(&self, index: i64) -> Result<i64, CalendarError> {
        let overflow = |why| error(format!("period {index} is past the calendar's end"), why);
        let span = self.cadence.span(index).map_err(overflow)?;
        let start = self.anchor.checked_add(span).map_err(overflow)?;
        Ok(start.timestamp().as_millisecond())
    }

    /// The period `at_ms` falls in; none before the anchor.
    pub fn period(&self, at_ms: i64) -> Result<Option<Period>, CalendarError> {
        let anchor_ms = self.anchor.timestamp().as_millisecond();
        if at_ms < anchor_ms {
            return Ok(None);
        }
        // The guess is off by at most one or two periods (months differ from the
        // average by under two days, days from 24 hours by one DST hour).
        let mut index = (at_ms - anchor_ms) / self.cadence.nominal_ms();
        let mut steps = 0;
        loop {
            steps += 1;
            if steps > 8 {
                return Err(CalendarError(format!(
                    "no period of the schedule contains {at_ms} ms"
                )));
            }
            let start_ms = self.start_ms(index)?;
            if start_ms > at_ms {
                index -= 1;
                continue;
            }
            let end_ms = self.start_ms(index + 1)?;
            if end_ms <= at_ms {
                index += 1;
                continue;
            }
            // At or after the anchor, so the first period or a later one.
            let index = u64::try_from(index).unwrap_or(0);
            return Ok(Some(Period {
                index,
                start_ms,
                end_ms,
            }));
        }
    }
}

/// A spend cap's window, aligned on the zone's calendar. Stored in records (its
/// variants' order is the format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Window {
    /// From the start of the hour on the zone's clock.
    Hour,
    /// From midnight.
    Day,
    /// From midnight on the first of the month.
    Month,
}

/// A window: `start_ms <= t < end_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Window {
    pub const ALL: [Window; 3] = [Window::Hour, Window::Day, Window::Month];

    /// The name the API and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|window| window.as_str() == text)
    }

    /// The window `at_ms` falls in. Its bounds are the zone's wall-clock boundaries
    /// (the hour's minute 0, midnight, midnight on the 1st) before and after the
    /// instant's own wall-clock time, each resolved to an instant as jiff does by
    /// default: a boundary skipped by a clock change resolves to the change (so a day
    /// whose midnight does not exist starts at its first instant), a repeated one to
    /// its first occurrence. Computing both bounds this way, rather than the end as
    /// the start plus one window, is what makes consecutive windows tile.
    pub fn containing(self, zone: &TimeZone, at_ms: i64) -> Result<Interval, CalendarError> {
        let failed = |why| error(format!("no {self:?} window around {at_ms} ms"), why);
        let clock = zoned(at_ms, zone)?.datetime();
        let (start, next) = match self {
            Window::Hour => {
                let start = clock
                    .with()
                    .minute(0)
                    .second(0)
                    .subsec_nanosecond(0)
                    .build()
                    .map_err(failed)?;
                (start, start.checked_add(Span::new().hours(1)))
            }
            Window::Day => {
                let start = clock.date().to_datetime(Time::midnight());
                (start, start.checked_add(Span::new().days(1)))
            }
            Window::Month => {
                let start = clock.date().first_of_month().to_datetime(Time::midnight());
                (start, start.checked_add(Span::new().months(1)))
            }
        };
        let instant = |clock: DateTime| -> Result<i64, CalendarError> {
            let zoned = clock.to_zoned(zone.clone()).map_err(failed)?;
            Ok(zoned.timestamp().as_millisecond())
        };
        let interval = Interval {
            start_ms: instant(start)?,
            end_ms: instant(next.map_err(failed)?)?,
        };
        if !(interval.start_ms <= at_ms && at_ms < interval.end_ms) {
            return Err(CalendarError(format!(
                "the zone's clock has no {self:?} window around {at_ms} ms"
            )));
        }
        Ok(interval)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(text: &str) -> i64 {
        text.parse::<Zoned>()
            .expect("a zoned date-time")
            .timestamp()
            .as_millisecond()
    }

    #[test]
    fn a_monthly_schedule_from_the_31st_keeps_the_31st_where_a_month_has_one() {
        let paris = zone("Europe/Paris").unwrap();
        let anchor = ms("2026-01-31T09:00[Europe/Paris]");
        let monthly = Schedule::new(Cadence::Months(1), &paris, anchor).unwrap();
        let starts: Vec<i64> = ["2026-02-15", "2026-03-31", "2026-04-30", "2026-05-31"]
            .iter()
            .map(|day| {
                let noon = ms(&format!("{day}T12:00[Europe/Paris]"));
                monthly.period(noon).unwrap().unwrap().start_ms
            })
            .collect();
        assert_eq!(
            starts,
            [
                ms("2026-01-31T09:00[Europe/Paris]"),
                ms("2026-03-31T09:00[Europe/Paris]"),
                ms("2026-04-30T09:00[Europe/Paris]"),
                ms("2026-05-31T09:00[Europe/Paris]"),
            ]
        );
        let february = monthly
            .period(ms("2026-03-01T00:00[Europe/Paris]"))
            .unwrap()
            .unwrap();
        assert_eq!(february.index, 1);
        assert_eq!(february.start_ms, ms("2026-02-28T09:00[Europe/Paris]"));
        assert_eq!(monthly.period(anchor - 1).unwrap(), None);
    }

    #[test]
    fn days_follow_the_wall_clock_across_a_dst_change() {
        let paris = zone("Europe/Paris").unwrap();
        let day = Window::Day
            .containing(&paris, ms("2026-03-29T12:00[Europe/Paris]"))
            .unwrap();
        assert_eq!(day.start_ms, ms("2026-03-29T00:00[Europe/Paris]"));
        assert_eq!(day.end_ms - day.start_ms, 23 * 3_600_000);
        let daily = Schedule::new(
            Cadence::Days(1),
            &paris,
            ms("2026-03-27T00:00[Europe/Paris]"),
        )
        .unwrap();
        let after = daily
            .period(ms("2026-03-30T08:00[Europe/Paris]"))
            .unwrap()
            .unwrap();
        assert_eq!(after.index, 3);
        assert_eq!(after.start_ms, ms("2026-03-30T00:00[Europe/Paris]"));
    }

    #[test]
    fn a_day_whose_midnight_is_skipped_starts_at_its_first_instant_and_ends_at_the_next_midnight() {
        // Brazil's clocks went from 00:00 to 01:00 on 8 October 2000: that day starts
        // at 01:00 and is 23 hours long; the next starts at midnight (a CI find).
        let sao_paulo = zone("America/Sao_Paulo").unwrap();
        let day = Window::Day
            .containing(&sao_paulo, ms("2000-10-08T12:00[America/Sao_Paulo]"))
            .unwrap();
        assert_eq!(
            day.start_ms,
            ms("2000-10-08T01:00-02:00[America/Sao_Paulo]")
        );
        assert_eq!(day.end_ms, ms("2000-10-09T00:00[America/Sao_Paulo]"));
        assert_eq!(day.end_ms - day.start_ms, 23 * 3_600_000);
        let next = Window::Day.containing(&sao_paulo, day.end_ms).unwrap();
        assert_eq!(next.start_ms, day.end_ms);
    }

    #[test]
    fn windows_align_on_the_zones_calendar() {
        let kolkata = zone("Asia/Kolkata").unwrap();
        let at = ms("2026-11-30T19:45:10[Asia/Kolkata]");
        let hour = Window::Hour.containing(&kolkata, at).unwrap();
        assert_eq!(hour.start_ms, ms("2026-11-30T19:00[Asia/Kolkata]"));
        assert_eq!(hour.end_ms - hour.start_ms, 3_600_000);
        let month = Window::Month.containing(&kolkata, at).unwrap();
        assert_eq!(month.start_ms, ms("2026-11-01T00:00[Asia/Kolkata]"));
        assert_eq!(month.end_ms, ms("2026-12-01T00:00[Asia/Kolkata]"));
    }

    #[test]
    fn bad_input_is_refused_with_a_sentence() {
        assert_eq!(
            zone("Mars/Olympus").unwrap_err().0.split(':').next(),
            Some("unknown time zone 'Mars/Olympus'")
        );
        let utc = zone("UTC").unwrap();
        assert!(Schedule::new(Cadence::Days(0), &utc, 0).is_err());
        assert!(Schedule::new(Cadence::Days(1), &utc, i64::MAX).is_err());
    }

    fn cadence() -> impl Strategy<Value = Cadence> {
        prop_oneof![
            (1..48u32).prop_map(Cadence::Hours),
            (1..40u32).prop_map(Cadence::Days),
            (1..14u32).prop_map(Cadence::Months),
        ]
    }

    /// Zones whose clocks change at midnight (São Paulo, Santiago), by half an hour
    /// (Lord Howe), by a whole day (Apia skipped 30 December 2011), or never (UTC).
    const ZONES: [&str; 6] = [
        "UTC",
        "Europe/Paris",
        "America/Sao_Paulo",
        "America/Santiago",
        "Australia/Lord_Howe",
        "Pacific/Apia",
    ];

    proptest! {
        /// Periods tile time from the anchor: the one found contains the instant, the
        /// next starts where it ends, and numbers count up by one.
        #[test]
        fn periods_tile_time_from_the_anchor(
            cadence in cadence(),
            zone_index in 0..ZONES.len(),
            // 2000 to 2060, and up to ~30 years after the anchor.
            anchor_ms in 946_684_800_000i64..2_840_000_000_000,
            after_ms in 0i64..1_000_000_000_000,
        ) {
            let zone = zone(ZONES[zone_index]).unwrap();
            let schedule = Schedule::new(cadence, &zone, anchor_ms).unwrap();
            let at_ms = anchor_ms + after_ms;
            let period = schedule.period(at_ms).unwrap().unwrap();
            prop_assert!(period.start_ms <= at_ms && at_ms < period.end_ms, "{:?}", period);
            let next = schedule.period(period.end_ms).unwrap().unwrap();
            prop_assert_eq!(next.start_ms, period.end_ms);
            prop_assert_eq!(next.index, period.index + 1);
            if period.index > 0 {
                let previous = schedule.period(period.start_ms - 1).unwrap().unwrap();
                prop_assert_eq!(previous.end_ms, period.start_ms);
                prop_assert_eq!(previous.index + 1, period.index);
            }
        }

        #[test]
        fn windows_contain_their_instant_and_tile(
            zone_index in 0..ZONES.len(),
            at_ms in 946_684_800_000i64..2_840_000_000_000,
            window in prop_oneof![Just(Window::Hour), Just(Window::Day), Just(Window::Month)],
        ) {
            let zone = zone(ZONES[zone_index]).unwrap();
            let this = window.containing(&zone, at_ms).unwrap();
            prop_assert!(this.start_ms <= at_ms && at_ms < this.end_ms, "{:?}", this);
            let next = window.containing(&zone, this.end_ms).unwrap();
            prop_assert_eq!(next.start_ms, this.end_ms);
            let previous = window.containing(&zone, this.start_ms - 1).unwrap();
            prop_assert_eq!(previous.end_ms, this.start_ms);
        }
    }
}
