//! Spend caps: at most `cap` credits spent per window of an account
//! ([`docs/credits.md`](../../../docs/credits.md), part 4). Pure rules on one account's
//! window; the live state keeps it, the sequencer asks it after the policy answered.
//!
//! A window's spending counts credits held, captured and charged in it: a hold counts
//! when it is taken (so the check at admission is exact), the part of it released comes
//! off again if its window is still the current one, and a capture moves nothing (it
//! was counted as held). A settle charging past its hold is counted but never refused:
//! the work is done; the cap bounds admissions.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use super::calendar::{CalendarError, Interval, Window, zone};

/// An operator's cap on one account, as records and snapshots keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapTerms {
    /// Credits per window; >= 0 (0 refuses every spending admission).
    pub cap: i64,
    pub window: Window,
    /// The IANA zone whose calendar the windows follow.
    pub time_zone: String,
}

/// A cap with its zone resolved.
#[derive(Debug, Clone)]
pub struct SpendCap {
    pub terms: CapTerms,
    zone: TimeZone,
}

impl SpendCap {
    pub fn new(terms: CapTerms) -> Result<Self, CalendarError> {
        if terms.cap < 0 {
            return Err(CalendarError(format!(
                "a spend cap of {} is below zero",
                terms.cap
            )));
        }
        let zone = zone(&terms.time_zone)?;
        Ok(Self { terms, zone })
    }

    /// The window `at_ms` falls in.
    pub fn window_at(&self, at_ms: i64) -> Result<Interval, CalendarError> {
        self.terms.window.containing(&self.zone, at_ms)
    }

    /// Whether `other` counts in the same windows (same kind, same zone): changing only
    /// the amount keeps the window's spending.
    pub fn same_windows(&self, other: &CapTerms) -> bool {
        (self.terms.window, self.terms.time_zone.as_str())
            == (other.window, other.time_zone.as_str())
    }
}

/// An admission refused because it would pass the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapReached {
    pub cap: i64,
    /// Spent in the window before the refused admission.
    pub spent: i64,
    pub asked: i64,
    /// When the window started.
    pub window_start_ms: i64,
    /// When the window ends and spending starts again from zero.
    pub resets_at_ms: i64,
}

/// One account's spending in its current window. Stored in records and snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapWindow {
    /// None until the first spending.
    pub window: Option<Interval>,
    /// Since when the window counts: its start, or when its cap was set if later. A
    /// hold taken before was not counted, so its release takes nothing off.
    pub since_ms: i64,
    pub spent: i64,
}

/// A capped account: its cap and its window.
#[derive(Debug, Clone)]
pub struct AccountCap {
    pub cap: SpendCap,
    pub window: CapWindow,
}

/// A tenant's capped accounts, by balance.
pub type SpendCaps = BTreeMap<String, AccountCap>;

/// A window as a reader sees it at some instant: the current one, from zero if the
/// recorded one has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowNow {
    pub spent: i64,
    pub resets_at_ms: i64,
}

impl AccountCap {
    /// The window at `now_ms`. An instant the calendar cannot place (past the year
    /// 9999) reads the recorded window as it is.
    pub fn now(&self, now_ms: i64) -> WindowNow {
        let mut window = self.window;
        match window.roll(&self.cap, now_ms) {
            Ok(interval) => WindowNow {
                spent: window.spent,
                resets_at_ms: interval.end_ms,
            },
            Err(_) => WindowNow {
                spent: self.window.spent,
                resets_at_ms: self.window.window.map_or(now_ms, |window| window.end_ms),
            },
        }
    }
}

impl CapWindow {
    /// The window of a cap set at `now_ms`: counting from zero, from the next
    /// millisecond on. A hold taken in the same millisecond (before the cap, or after it
    /// in the same batch) gives nothing back at release: the clock cannot tell which, and
    /// counting too much is the side a cap may err on.
    pub fn starting(cap: &SpendCap, now_ms: i64) -> Result<Self, CalendarError> {
        Ok(CapWindow {
            window: Some(cap.window_at(now_ms)?),
            since_ms: now_ms.saturating_add(1),
            spent: 0,
        })
    }

    /// Moves to the window `now_ms` falls in; a new window starts from zero.
    fn roll(&mut self, cap: &SpendCap, now_ms: i64) -> Result<Interval, CalendarError> {
        match self.window {
            Some(window) if (window.start_ms..window.end_ms).contains(&now_ms) => Ok(window),
            _ => {
                let window = cap.window_at(now_ms)?;
                *self = CapWindow {
                    window: Some(window),
                    since_ms: window.start_ms,
                    spent: 0,
                };
                Ok(window)
            }
        }
    }

    /// Counts an admission's `amount` (held plus charged) at `now_ms`, or refuses it,
    /// counting nothing, if the window would pass the cap.
    pub fn admit(
        &mut self,
        cap: &SpendCap,
        now_ms: i64,
        amount: i64,
    ) -> Result<Result<(), CapReached>, CalendarError> {
        let window = self.roll(cap, now_ms)?;
        match self.spent.checked_add(amount.max(0)) {
            Some(after) if after <= cap.terms.cap => {
                self.spent = after;
                Ok(Ok(()))
            }
            _ => Ok(Err(CapReached {
                cap: cap.terms.cap,
                spent: self.spent,
                asked: amount,
                window_start_ms: window.start_ms,
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

    /// Takes back the released part of a hold taken at `taken_at_ms`, if the window
    /// counted it and is still the current one (a past window's spending is over).
    pub fn release(&mut self, taken_at_ms: i64, now_ms: i64, amount: i64) {
        let Some(window) = self.window else { return };
        let current = (window.start_ms..window.end_ms).contains(&now_ms);
        if current && taken_at_ms >= self.since_ms && taken_at_ms >= window.start_ms {
            self.spent = (self.spent - amount.max(0)).max(0);
        }
    }
}

/// Credits per balance.
pub type Spending = BTreeMap<String, i64>;

/// Spend windows as a decision leaves them, by balance.
pub type Windows = Vec<(String, CapWindow)>;

/// An admission counted (the windows after), or the balance whose cap it would pass.
pub type Counted = Result<Windows, (String, CapReached)>;

/// Counts an admission's spending (held plus charged) on each capped balance it
/// spends on: the windows after, or the first cap it would pass, counting nothing.
pub fn count_admission(
    caps: &SpendCaps,
    now_ms: i64,
    held: &Spending,
    charged: &Spending,
) -> Result<Counted, CalendarError> {
    let mut windows = Vec::new();
    for (balance, capped) in caps {
        let amount = held
            .get(balance)
            .copied()
            .unwrap_or(0)
            .saturating_add(charged.get(balance).copied().unwrap_or(0));
        if amount <= 0 {
            continue;
        }
        let mut window = capped.window;
        if let Err(reached) = window.admit(&capped.cap, now_ms, amount)? {
            return Ok(Err((balance.clone(), reached)));
        }
        windows.push((balance.clone(), window));
    }
    Ok(Ok(windows))
}

/// Counts what closing a hold taken at `taken_at_ms` changes: per capped balance, the
/// charge past the hold, or the part of the hold released. Answers the windows that
/// changed.
pub fn count_close(
    caps: &SpendCaps,
    now_ms: i64,
    taken_at_ms: i64,
    held: &Spending,
    charged: &Spending,
) -> Result<Windows, CalendarError> {
    let mut windows = Vec::new();
    for (balance, capped) in caps {
        let held = held.get(balance).copied().unwrap_or(0);
        let charged = charged.get(balance).copied().unwrap_or(0);
        let mut window = capped.window;
        if charged > held {
            window.charge(&capped.cap, now_ms, charged - held)?;
        } else {
            window.release(taken_at_ms, now_ms, held - charged);
        }
        if window != capped.window {
            windows.push((balance.clone(), window));
        }
    }
    Ok(windows)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HOUR_MS: i64 = 3_600_000;
    /// 2026-11-30T00:00:00Z.
    const MIDNIGHT_MS: i64 = 1_795_996_800_000;

    fn hourly(cap: i64) -> SpendCap {
        SpendCap::new(CapTerms {
            cap,
            window: Window::Hour,
            time_zone: "UTC".to_owned(),
        })
        .unwrap()
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
                window_start_ms: MIDNIGHT_MS,
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
    fn a_release_comes_off_the_window_that_counted_it_only() {
        let cap = hourly(10);
        let mut window = CapWindow::default();
        window.admit(&cap, MIDNIGHT_MS, 8).unwrap().unwrap();
        window.release(MIDNIGHT_MS, MIDNIGHT_MS + 5, 5);
        assert_eq!(window.spent, 3);
        window.admit(&cap, MIDNIGHT_MS + 10, 7).unwrap().unwrap();
        window
            .admit(&cap, MIDNIGHT_MS + HOUR_MS, 1)
            .unwrap()
            .unwrap();
        // Released in the next hour: the past hour's spending is over.
        window.release(MIDNIGHT_MS + 10, MIDNIGHT_MS + HOUR_MS + 1, 7);
        assert_eq!(window.spent, 1);
        // A settle's excess is counted, past the cap if need be.
        window.charge(&cap, MIDNIGHT_MS + HOUR_MS, 12).unwrap();
        assert_eq!(window.spent, 13);
    }

    #[test]
    fn a_hold_taken_before_its_cap_was_set_takes_nothing_off_at_release() {
        let cap = hourly(10);
        let set_at = MIDNIGHT_MS + 1_000;
        let mut window = CapWindow::starting(&cap, set_at).unwrap();
        window.admit(&cap, set_at + 1, 4).unwrap().unwrap();
        // A hold of 9 taken at the hour's start, before the cap: never counted.
        window.release(MIDNIGHT_MS, set_at + 2, 9);
        assert_eq!(window.spent, 4);
        // Nor does one taken in the millisecond the cap was set.
        window.release(set_at, set_at + 2, 4);
        assert_eq!(window.spent, 4);
        window.release(set_at + 1, set_at + 3, 4);
        assert_eq!(window.spent, 0);
    }

    #[test]
    fn a_reader_sees_the_current_window_from_zero_once_the_recorded_one_ended() {
        let cap = hourly(10);
        let mut window = CapWindow::default();
        window.admit(&cap, MIDNIGHT_MS, 6).unwrap().unwrap();
        let account = AccountCap { cap, window };
        assert_eq!(
            account.now(MIDNIGHT_MS + 1),
            WindowNow {
                spent: 6,
                resets_at_ms: MIDNIGHT_MS + HOUR_MS
            }
        );
        assert_eq!(
            account.now(MIDNIGHT_MS + HOUR_MS),
            WindowNow {
                spent: 0,
                resets_at_ms: MIDNIGHT_MS + 2 * HOUR_MS
            }
        );
    }

    #[test]
    fn bad_caps_are_refused() {
        let terms = |cap: i64, time_zone: &str| CapTerms {
            cap,
            window: Window::Day,
            time_zone: time_zone.to_owned(),
        };
        assert!(SpendCap::new(terms(-1, "UTC")).is_err());
        assert!(SpendCap::new(terms(5, "Mars/Olympus")).is_err());
        assert!(SpendCap::new(terms(0, "Europe/Paris")).is_ok());
    }

    /// One step of a window's history.
    #[derive(Debug, Clone)]
    enum Step {
        /// An admission of this many credits.
        Admit(i64),
        /// A settle of the n-th admission so far: charge this many against its hold.
        Settle(usize, i64),
    }

    fn step() -> impl Strategy<Value = (Step, i64)> {
        (
            prop_oneof![
                (0..40i64).prop_map(Step::Admit),
                (0..50usize, 0..60i64).prop_map(|(n, charge)| Step::Settle(n, charge)),
            ],
            0..900_000i64,
        )
    }

    proptest! {
        /// L6: admissions never take a window past its cap, whatever was settled or
        /// released before; whatever was refused would have; and the window's spending
        /// covers at least the holds it counted that are still open.
        #[test]
        fn admissions_never_pass_the_cap(
            cap in 0..100i64,
            steps in prop::collection::vec(step(), 1..80),
        ) {
            let cap = hourly(cap);
            let mut window = CapWindow::default();
            let mut now_ms = MIDNIGHT_MS;
            // Open holds: (taken at, amount).
            let mut holds: Vec<Option<(i64, i64)>> = Vec::new();
            for (step, later_ms) in steps {
                now_ms += later_ms;
                let hour = now_ms - now_ms.rem_euclid(HOUR_MS);
                match step {
                    Step::Admit(amount) => {
                        let before = window;
                        match window.admit(&cap, now_ms, amount).unwrap() {
                            Ok(()) => {
                                // Only a settle's charge past its hold may pass the cap.
                                prop_assert!(amount == 0 || window.spent <= cap.terms.cap);
                                holds.push(Some((now_ms, amount)));
                            }
                            Err(reached) => {
                                prop_assert!(reached.spent + amount > cap.terms.cap);
                                prop_assert_eq!(reached.resets_at_ms, hour + HOUR_MS);
                                if before.window.is_some_and(|w| w.start_ms == hour) {
                                    prop_assert_eq!(window, before);
                                }
                            }
                        }
                        prop_assert!(window.spent >= 0);
                    }
                    Step::Settle(n, charge) => {
                        let Some(slot) = holds.get_mut(n) else { continue };
                        let Some((taken_at_ms, held)) = slot.take() else { continue };
                        if charge > held {
                            window.charge(&cap, now_ms, charge - held).unwrap();
                        } else {
                            window.release(taken_at_ms, now_ms, held - charge);
                        }
                    }
                }
                // The window's spending, recomputed: what holds taken in the current
                // window still count, plus what settles in it charged past their holds,
                // is at least what it says (charges past holds are counted in full).
                if window.window.is_some_and(|w| w.start_ms == hour) {
                    let open_here: i64 = holds
                        .iter()
                        .flatten()
                        .filter(|(taken_at_ms, _)| *taken_at_ms >= hour)
                        .map(|(_, held)| held)
                        .sum();
                    prop_assert!(window.spent >= open_here);
                }
            }
        }
    }
}
