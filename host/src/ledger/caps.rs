//! Spend caps: at most `cap` credits spent per window of an account
//! ([`docs/credits.md`](../../../docs/credits.md), part 4). Pure rules on one account's
//! window; the live state keeps it, the sequencer asks it after the policy answered.
//!
//! A window's spending counts credits held, captured and charged in it: a hold counts
//! when it is taken (so the check at admission is exact), the part of it released comes
//! off again if its window is still the current one, and a capture moves nothing (it
//! was counted as held). A settle charging past its hold is counted but never refused:
//! the work is done; the cap bounds admissions.

use jiff::tz::TimeZone;

use super::calendar::{CalendarError, Interval, Window};

/// An operator's cap on one account.
#[derive(Debug, Clone)]
pub struct SpendCap {
    /// Credits per window; >= 0 (0 refuses every spending admission).
    pub cap: i64,
    pub window: Window,
    pub zone: TimeZone,
}

/// An admission refused because it would pass the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapReached {
    pub cap: i64,
    /// Spent in the window before the refused admission.
    pub spent: i64,
    pub asked: i64,
    /// When the window ends and spending starts again from zero.
    pub resets_at_ms: i64,
}

/// One account's spending in its current window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapWindow {
    /// None until the first spending.
    pub window: Option<Interval>,
    pub spent: i64,
}

impl CapWindow {
    /// Moves to the window `now_ms` falls in; a new window starts from zero.
    fn roll(&mut self, cap: &SpendCap, now_ms: i64) -> Result<Interval, CalendarError> {
        match self.window {
            Some(window) if (window.start_ms..window.end_ms).contains(&now_ms) => Ok(window),
            _ => {
                let window = cap.window.containing(&cap.zone, now_ms)?;
                *self = CapWindow {
                    window: Some(window),
                    spent: 0,
                };
                Ok(window)
            }
        }
    }

    /// Counts an admission's `amount` (held plus charged) at `now_ms`, or refuses it,
    /// counting nothing, if the window would pass the cap. Answers the window it was
    /// counted in, for a later release.
    pub fn admit(
        &mut self,
        cap: &SpendCap,
        now_ms: i64,
        amount: i64,
    ) -> Result<Result<Interval, CapReached>, CalendarError> {
        let window = self.roll(cap, now_ms)?;
        let after = self.spent.checked_add(amount.max(0));
        match after {
            Some(after) if after <= cap.cap => {
                self.spent = after;
                Ok(Ok(window))
            }
            _ => Ok(Err(CapReached {
                cap: cap.cap,
                spent: self.spent,
                asked: amount,
                resets_at_ms: window.end_ms,
            })),
        }
    }

    /// Counts a settle's charge past its hold: never refused.
    pub fn charge(
        &mut self,
        cap: &SpendCap,
        now_ms: i64,
        amount: i64,
    ) -> Result<(), CalendarError> {
        self.roll(cap, now_ms)?;
        self.spent = self.spent.saturating_add(amount.max(0));
        Ok(())
    }

    /// Takes back the released part of a hold counted in `counted_in`, if that window is
    /// still the current one (a past window's spending is over).
    pub fn release(&mut self, counted_in: Interval, amount: i64) {
        if self.window == Some(counted_in) {
            self.spent = (self.spent - amount.max(0)).max(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ledger::calendar::zone;

    const HOUR_MS: i64 = 3_600_000;
    /// 2026-11-30T00:00:00Z.
    const MIDNIGHT_MS: i64 = 1_795_996_800_000;

    fn hourly(cap: i64) -> SpendCap {
        SpendCap {
            cap,
            window: Window::Hour,
            zone: zone("UTC").unwrap(),
        }
    }

    #[test]
    fn an_admission_that_would_pass_the_cap_is_refused_and_counts_nothing() {
        let cap = hourly(10);
        let mut window = CapWindow::default();
        assert!(window.admit(&cap, MIDNIGHT_MS, 6).unwrap().is_ok());
        let refused = window.admit(&cap, MIDNIGHT_MS + 1, 5).unwrap();
        assert_eq!(
            refused,
            Err(CapReached {
                cap: 10,
                spent: 6,
                asked: 5,
                resets_at_ms: MIDNIGHT_MS + HOUR_MS
            })
        );
        assert_eq!(window.spent, 6);
        assert!(window.admit(&cap, MIDNIGHT_MS + 2, 4).unwrap().is_ok());
        // The next hour starts from zero.
        assert!(
            window
                .admit(&cap, MIDNIGHT_MS + HOUR_MS, 10)
                .unwrap()
                .is_ok()
        );
        assert_eq!(window.spent, 10);
    }

    #[test]
    fn a_release_comes_off_its_own_window_only() {
        let cap = hourly(10);
        let mut window = CapWindow::default();
        let counted_in = window.admit(&cap, MIDNIGHT_MS, 8).unwrap().unwrap();
        window.release(counted_in, 5);
        assert_eq!(window.spent, 3);
        let late = window.admit(&cap, MIDNIGHT_MS + 10, 7).unwrap().unwrap();
        window
            .admit(&cap, MIDNIGHT_MS + HOUR_MS, 1)
            .unwrap()
            .unwrap();
        // Released in the next hour: the past hour's spending is over.
        window.release(late, 7);
        assert_eq!(window.spent, 1);
        // A settle's excess is counted, past the cap if need be.
        window.charge(&cap, MIDNIGHT_MS + HOUR_MS, 12).unwrap();
        assert_eq!(window.spent, 13);
    }

    proptest! {
        /// Admissions alone never take a window past its cap, and whatever was refused
        /// would have.
        #[test]
        fn admissions_never_pass_the_cap(
            cap in 0..100i64,
            asks in prop::collection::vec((0..40i64, 0..600_000i64), 1..80),
        ) {
            let cap = hourly(cap);
            let mut window = CapWindow::default();
            let mut now_ms = MIDNIGHT_MS;
            for (amount, later_ms) in asks {
                now_ms += later_ms;
                let before = window;
                match window.admit(&cap, now_ms, amount).unwrap() {
                    Ok(interval) => {
                        prop_assert!((interval.start_ms..interval.end_ms).contains(&now_ms));
                    }
                    Err(reached) => {
                        prop_assert!(reached.spent + amount > cap.cap);
                        prop_assert!(reached.resets_at_ms > now_ms);
                        let same_window = before.window.is_some_and(|w| (w.start_ms..w.end_ms).contains(&now_ms));
                        if same_window {
                            prop_assert_eq!(window, before);
                        }
                    }
                }
                prop_assert!((0..=cap.cap).contains(&window.spent));
            }
        }
    }
}
