//! Refills: an operator's recurring grant per tenant and balance
//! ([`docs/credits.md`](../../../docs/credits.md), part 2). Pure rules on one refill:
//! which period is due at an instant, what that period's lot is, and its grant id. The
//! live state keeps refills; the sweep asks them and grants through the ordinary grant
//! path, so a refill's lot is a lot like any other.

use serde::{Deserialize, Serialize};

use super::calendar::{Cadence, CalendarError, Period, Schedule, zone};

/// What happens to a period's unspent credits when the next period starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefillMode {
    /// They expire: each period's lot lasts until the next period starts.
    Reset,
    /// They stay; a period grants no more than tops the refill's open lots up to `cap`.
    Rollover { cap: i64 },
}

/// An operator's refill, as records keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefillTerms {
    pub balance: String,
    /// Credits a period grants (rollover: at most).
    pub amount: i64,
    pub every: Cadence,
    /// The IANA zone whose calendar the periods follow.
    pub time_zone: String,
    /// When period 0 starts.
    pub anchor_ms: i64,
    pub mode: RefillMode,
    /// The lots' burn priority and category.
    pub priority: i32,
    pub category: String,
}

/// A refill with its schedule, and the last period it granted.
#[derive(Debug, Clone)]
pub struct Refill {
    pub terms: RefillTerms,
    schedule: Schedule,
    /// When the last period granted started; none until the first. An instant, not a
    /// period number, so that a refill whose schedule an operator changed never grants
    /// a period that starts before the last one it granted.
    pub last_start_ms: Option<i64>,
}

/// The lot a period grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefillLot {
    pub grant_id: String,
    pub amount: i64,
    /// Reset: when the next period starts.
    pub expires_at_ms: Option<i64>,
}

/// The grant id of a refill's period, named by when it starts: unique, so one lot per
/// period whatever grants it.
pub fn grant_id(refill_id: &str, start_ms: i64) -> String {
    format!("refill:{refill_id}:{start_ms}")
}

/// Whether a grant id is one of this refill's periods.
pub fn is_refill_grant(refill_id: &str, grant_id: &str) -> bool {
    grant_id
        .strip_prefix("refill:")
        .and_then(|rest| rest.strip_prefix(refill_id))
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|period| !period.is_empty() && period.bytes().all(|b| b.is_ascii_digit()))
}

impl Refill {
    pub fn new(terms: RefillTerms, last_start_ms: Option<i64>) -> Result<Self, CalendarError> {
        if terms.amount <= 0 {
            return Err(CalendarError(format!(
                "a refill of {} credits grants nothing",
                terms.amount
            )));
        }
        if let RefillMode::Rollover { cap } = terms.mode
            && cap < terms.amount
        {
            return Err(CalendarError(format!(
                "a rollover cap of {cap} is below the refill's amount of {}",
                terms.amount
            )));
        }
        let schedule = Schedule::new(terms.every, &zone(&terms.time_zone)?, terms.anchor_ms)?;
        Ok(Self {
            terms,
            schedule,
            last_start_ms,
        })
    }

    /// The period to grant at `now_ms`: the one the clock is in, unless it was granted.
    /// Periods missed meanwhile are skipped.
    pub fn due(&self, now_ms: i64) -> Result<Option<Period>, CalendarError> {
        let Some(period) = self.schedule.period(now_ms)? else {
            return Ok(None);
        };
        Ok(match self.last_start_ms {
            Some(last) if last >= period.start_ms => None,
            _ => Some(period),
        })
    }

    /// When the next period to grant starts: the sweep's wake-up.
    pub fn next_start_ms(&self) -> Result<i64, CalendarError> {
        let first = self.schedule.start_ms(0)?;
        match self.last_start_ms {
            Some(last) if last >= first => Ok(self
                .schedule
                .period(last)?
                .map_or(first, |period| period.end_ms)),
            _ => Ok(first),
        }
    }

    /// The lot `period` grants, given what the refill's open lots still hold; none when
    /// a rollover refill is at its cap.
    pub fn lot(&self, refill_id: &str, period: Period, open_remaining: i64) -> Option<RefillLot> {
        let (amount, expires_at_ms) = match self.terms.mode {
            RefillMode::Reset => (self.terms.amount, Some(period.end_ms)),
            RefillMode::Rollover { cap } => (
                self.terms
                    .amount
                    .min(cap.saturating_sub(open_remaining.max(0))),
                None,
            ),
        };
        (amount > 0).then(|| RefillLot {
            grant_id: grant_id(refill_id, period.start_ms),
            amount,
            expires_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// 2026-01-31T09:00:00+01:00 (Paris).
    const ANCHOR_MS: i64 = 1_769_846_400_000;
    const DAY_MS: i64 = 86_400_000;

    fn terms(every: Cadence, mode: RefillMode) -> RefillTerms {
        RefillTerms {
            balance: "default".to_owned(),
            amount: 100,
            every,
            time_zone: "Europe/Paris".to_owned(),
            anchor_ms: ANCHOR_MS,
            mode,
            priority: 10,
            category: "refill".to_owned(),
        }
    }

    #[test]
    fn a_period_is_due_once_and_missed_periods_are_skipped() {
        let mut refill = Refill::new(terms(Cadence::Months(1), RefillMode::Reset), None).unwrap();
        assert_eq!(
            refill.due(ANCHOR_MS - 1).unwrap(),
            None,
            "before the anchor"
        );
        let first = refill.due(ANCHOR_MS).unwrap().unwrap();
        assert_eq!(first.index, 0);
        refill.last_start_ms = Some(first.start_ms);
        assert_eq!(refill.due(ANCHOR_MS + DAY_MS).unwrap(), None);
        // 28 February 2026 09:00 Paris: January's 31st has no February twin.
        assert_eq!(refill.next_start_ms().unwrap(), ANCHOR_MS + 28 * DAY_MS);
        // Asleep until June: May's period (4) is due, February to April are skipped.
        let june_first = ANCHOR_MS + 121 * DAY_MS;
        assert_eq!(refill.due(june_first).unwrap().unwrap().index, 4);
    }

    #[test]
    fn reset_lots_last_one_period_and_rollover_lots_top_up_to_the_cap() {
        let reset = Refill::new(terms(Cadence::Days(7), RefillMode::Reset), None).unwrap();
        let period = reset.due(ANCHOR_MS).unwrap().unwrap();
        assert_eq!(
            reset.lot("monthly", period, 40),
            Some(RefillLot {
                grant_id: format!("refill:monthly:{ANCHOR_MS}"),
                amount: 100,
                expires_at_ms: Some(ANCHOR_MS + 7 * DAY_MS),
            })
        );
        let rollover = Refill::new(
            terms(Cadence::Days(7), RefillMode::Rollover { cap: 250 }),
            None,
        )
        .unwrap();
        let lot = |open| rollover.lot("r", period, open).map(|lot| lot.amount);
        assert_eq!(lot(0), Some(100));
        assert_eq!(lot(180), Some(70));
        assert_eq!(lot(250), None);
        assert_eq!(lot(400), None);
    }

    #[test]
    fn bad_refills_are_refused() {
        let mut bad = terms(Cadence::Months(1), RefillMode::Rollover { cap: 50 });
        assert!(
            Refill::new(bad.clone(), None).is_err(),
            "a cap below the amount"
        );
        bad.mode = RefillMode::Reset;
        bad.amount = 0;
        assert!(Refill::new(bad.clone(), None).is_err());
        bad.amount = 5;
        bad.every = Cadence::Days(0);
        assert!(Refill::new(bad.clone(), None).is_err());
        bad.every = Cadence::Days(1);
        bad.time_zone = "Mars/Olympus".to_owned();
        assert!(Refill::new(bad, None).is_err());
    }

    #[test]
    fn grant_ids_name_their_refill_and_period_only() {
        assert_eq!(grant_id("monthly", 12), "refill:monthly:12");
        // A changed schedule whose period started before the last one granted waits
        // for its next period.
        let mut refill = Refill::new(terms(Cadence::Days(7), RefillMode::Reset), None).unwrap();
        refill.last_start_ms = Some(ANCHOR_MS + DAY_MS);
        assert_eq!(refill.due(ANCHOR_MS + 2 * DAY_MS).unwrap(), None);
        assert_eq!(refill.next_start_ms().unwrap(), ANCHOR_MS + 7 * DAY_MS);
        assert!(is_refill_grant("monthly", "refill:monthly:12"));
        assert!(!is_refill_grant("month", "refill:monthly:12"));
        assert!(!is_refill_grant("monthly", "refill:monthly:"));
        assert!(!is_refill_grant("monthly", "refill:monthly:1:2"));
        assert!(!is_refill_grant("monthly", "monthly:12"));
    }

    proptest! {
        /// L5 in one process: sweeps at any instants grant each period at most once, in
        /// order, and always the one the clock is in; a rollover refill's open lots
        /// never pass its cap because of a grant, whatever was spent in between; reset
        /// lots end where the next period starts, so at most one is open.
        #[test]
        fn sweeps_grant_each_period_once_and_rollover_stays_within_its_cap(
            rollover in any::<bool>(),
            days in 1..20u32,
            sweeps in prop::collection::vec((0..40 * DAY_MS, 0..150i64), 1..40),
        ) {
            let mode = if rollover {
                RefillMode::Rollover { cap: 250 }
            } else {
                RefillMode::Reset
            };
            let mut refill = Refill::new(terms(Cadence::Days(days), mode), None).unwrap();
            let mut now_ms = ANCHOR_MS;
            let mut open = 0i64;
            let mut granted: Vec<u64> = Vec::new();
            for (later_ms, spent) in sweeps {
                now_ms += later_ms;
                open = (open - spent).max(0);
                let Some(period) = refill.due(now_ms).unwrap() else {
                    // Not due: the clock is in the last period granted.
                    prop_assert!(now_ms < refill.next_start_ms().unwrap());
                    prop_assert!(granted.last().is_some());
                    continue;
                };
                prop_assert!(period.start_ms <= now_ms && now_ms < period.end_ms);
                prop_assert!(granted.last().is_none_or(|last| *last < period.index));
                prop_assert!(refill.next_start_ms().unwrap() <= now_ms);
                if let Some(lot) = refill.lot("r", period, open) {
                    match mode {
                        RefillMode::Rollover { cap } => {
                            prop_assert!(open + lot.amount <= cap);
                            open += lot.amount;
                        }
                        RefillMode::Reset => {
                            prop_assert_eq!(lot.expires_at_ms, Some(period.end_ms));
                            open = lot.amount;
                        }
                    }
                }
                granted.push(period.index);
                refill.last_start_ms = Some(period.start_ms);
                prop_assert_eq!(refill.due(now_ms).unwrap(), None);
            }
        }
    }
}
