//! Threshold events ([`docs/credits.md`](../../../docs/credits.md), part 6): what an
//! operator watches on an account, and the pure rules that say which events a change of
//! the account raises. The sequencer asks them and writes each event as a record of the
//! batch whose decisions caused it, so an event exists exactly when its cause was
//! committed (L7).
//!
//! An account raises events only while an operator watches it (its [`Thresholds`] are
//! set, possibly with no level): a ledger nobody watches writes none and pays nothing.
//! Balance levels are compared once per batch, between the account's `available` when
//! the batch first touched it and when it ended: a level crossed downward and back up
//! within one batch (a few milliseconds) raises nothing.

use serde::{Deserialize, Serialize};

use super::lots::LotId;
use super::record::EventRecord;
use crate::model::{EventDetails, EventView, LevelTerms, ThresholdTerms};

/// Percent levels are whole percents of the reference, 1 to 100.
pub const PERCENT_MAX: u8 = 100;
/// The levels one account may watch.
pub const LEVELS_MAX: usize = 16;
/// The longest warning ahead of a lot's expiry: a year.
pub const LEAD_MS_MAX: i64 = 366 * 86_400_000;

/// Whether thresholds are within their bounds: at most [`LEVELS_MAX`] levels, percents
/// of 1 to [`PERCENT_MAX`], a lead of 0 to [`LEAD_MS_MAX`].
pub fn check(thresholds: &Thresholds) -> Result<(), String> {
    if thresholds.levels.len() > LEVELS_MAX {
        return Err(format!(
            "{} levels; at most {LEVELS_MAX} are watched",
            thresholds.levels.len()
        ));
    }
    for level in &thresholds.levels {
        if let Level::Percent(percent) = level
            && !(1..=PERCENT_MAX).contains(percent)
        {
            return Err(format!(
                "a level of {percent}%; percents run from 1 to {PERCENT_MAX}"
            ));
        }
    }
    if let Some(lead) = thresholds.lot_expiring_lead_ms
        && !(0..=LEAD_MS_MAX).contains(&lead)
    {
        return Err(format!(
            "a lead of {lead} ms; it runs from 0 to {LEAD_MS_MAX} ms (a year)"
        ));
    }
    Ok(())
}

/// A balance level an operator watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    /// Available credits (may be negative under an overdraft limit).
    Credits(i64),
    /// A whole percent of the account's latest grant (a refill's lot is a grant).
    Percent(u8),
}

impl Level {
    /// The level in credits: a percent level needs the latest grant's amount, and is
    /// rounded down (10% of 15 credits is 1).
    pub fn credits(self, reference: Option<i64>) -> Option<i64> {
        match self {
            Level::Credits(credits) => Some(credits),
            Level::Percent(percent) => reference.map(|amount| {
                let credits = i128::from(amount) * i128::from(percent) / 100;
                i64::try_from(credits).unwrap_or(i64::MAX)
            }),
        }
    }
}

/// What an operator watches on one account. Stored in records and snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    pub levels: Vec<Level>,
    /// Warn of a lot this long before it expires; none: no warning.
    pub lot_expiring_lead_ms: Option<i64>,
}

/// A watched account: its thresholds, and what the ledger remembers so that an event
/// meant to be raised once is raised once. Stored in records and snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    pub thresholds: Thresholds,
    /// The start of the last spend window a `spend_cap_reached` was raised in.
    pub cap_reached_window_ms: Option<i64>,
    /// The open lots a `lot_expiring` was raised for (a lot leaves the list as it
    /// closes).
    pub warned_lots: Vec<LotId>,
}

impl Watch {
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            ..Self::default()
        }
    }

    /// Keeps what this watch remembers under new thresholds.
    pub fn with_thresholds(&self, thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            ..self.clone()
        }
    }

    /// Whether a lot expiring at `expires_at_ms` is to be warned of at `now_ms`.
    pub fn should_warn(&self, lot: LotId, expires_at_ms: i64, now_ms: i64) -> bool {
        self.thresholds
            .lot_expiring_lead_ms
            .is_some_and(|lead| expires_at_ms <= now_ms.saturating_add(lead))
            && !self.warned_lots.contains(&lot)
    }

    /// Whether a refusal by the cap in the window starting at `window_start_ms` still
    /// has to be raised.
    pub fn cap_reached_is_new(&self, window_start_ms: i64) -> bool {
        self.cap_reached_window_ms != Some(window_start_ms)
    }

    /// What applying `event` makes this watch remember.
    pub fn remember(&mut self, event: &EventKind) {
        match event {
            EventKind::SpendCapReached {
                window_start_ms, ..
            } => self.cap_reached_window_ms = Some(*window_start_ms),
            EventKind::LotExpiring { lot, .. } if !self.warned_lots.contains(lot) => {
                self.warned_lots.push(*lot);
            }
            _ => {}
        }
    }

    /// Forgets a lot that closed: it can never be warned of again.
    pub fn forget_lot(&mut self, lot: LotId) {
        self.warned_lots.retain(|warned| *warned != lot);
    }
}

/// What happened to an account. Stored: append variants only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// `available` went from at or above the level to below it.
    BalanceLow {
        level: Level,
        level_credits: i64,
        before: i64,
        after: i64,
    },
    /// `available` went from above zero to zero or below.
    BalanceExhausted { before: i64, after: i64 },
    /// A lot with credits left expires within the account's lead time.
    LotExpiring {
        lot: LotId,
        grant_id: String,
        remaining: i64,
        expires_at_ms: i64,
    },
    /// A lot expired; `amount` credits left with it (maybe 0).
    LotExpired {
        lot: LotId,
        grant_id: String,
        amount: i64,
    },
    /// An operator voided a grant; `amount` credits left with its lot.
    LotVoided {
        lot: LotId,
        grant_id: String,
        amount: i64,
    },
    /// A refill granted a period's lot.
    RefillGranted {
        refill_id: String,
        grant_id: String,
        amount: i64,
        period_start_ms: i64,
    },
    /// The host refused an admission by the account's spend cap, for the first time in
    /// this window.
    SpendCapReached {
        cap: i64,
        spent: i64,
        asked: i64,
        window_start_ms: i64,
        resets_at_ms: i64,
    },
}

impl EventKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::BalanceLow { .. } => "balance_low",
            EventKind::BalanceExhausted { .. } => "balance_exhausted",
            EventKind::LotExpiring { .. } => "lot_expiring",
            EventKind::LotExpired { .. } => "lot_expired",
            EventKind::LotVoided { .. } => "lot_voided",
            EventKind::RefillGranted { .. } => "refill_granted",
            EventKind::SpendCapReached { .. } => "spend_cap_reached",
        }
    }

    /// Every kind's name, for metrics and documents.
    pub const NAMES: [&'static str; 7] = [
        "balance_low",
        "balance_exhausted",
        "lot_expiring",
        "lot_expired",
        "lot_voided",
        "refill_granted",
        "spend_cap_reached",
    ];
}

impl From<LevelTerms> for Level {
    fn from(terms: LevelTerms) -> Self {
        match terms {
            LevelTerms::Credits(credits) => Level::Credits(credits),
            LevelTerms::Percent(percent) => Level::Percent(percent),
        }
    }
}

impl From<Level> for LevelTerms {
    fn from(level: Level) -> Self {
        match level {
            Level::Credits(credits) => LevelTerms::Credits(credits),
            Level::Percent(percent) => LevelTerms::Percent(percent),
        }
    }
}

impl From<&Thresholds> for ThresholdTerms {
    fn from(thresholds: &Thresholds) -> Self {
        ThresholdTerms {
            levels: thresholds.levels.iter().copied().map(Into::into).collect(),
            lot_expiring_lead_ms: thresholds.lot_expiring_lead_ms,
        }
    }
}

impl From<&ThresholdTerms> for Thresholds {
    fn from(terms: &ThresholdTerms) -> Self {
        Thresholds {
            levels: terms.levels.iter().copied().map(Into::into).collect(),
            lot_expiring_lead_ms: terms.lot_expiring_lead_ms,
        }
    }
}

/// How the feed shows an event the store numbered `id`.
pub fn event_view(id: u64, at_ms: u64, event: &EventRecord) -> EventView {
    let details = match event.kind.clone() {
        EventKind::BalanceLow {
            level,
            level_credits,
            before,
            after,
        } => EventDetails::BalanceLow {
            level: level.into(),
            level_credits,
            before,
            after,
        },
        EventKind::BalanceExhausted { before, after } => {
            EventDetails::BalanceExhausted { before, after }
        }
        EventKind::LotExpiring {
            lot,
            grant_id,
            remaining,
            expires_at_ms,
        } => EventDetails::LotExpiring {
            lot,
            grant_id,
            remaining,
            expires_at_ms,
        },
        EventKind::LotExpired {
            lot,
            grant_id,
            amount,
        } => EventDetails::LotExpired {
            lot,
            grant_id,
            amount,
        },
        EventKind::LotVoided {
            lot,
            grant_id,
            amount,
        } => EventDetails::LotVoided {
            lot,
            grant_id,
            amount,
        },
        EventKind::RefillGranted {
            refill_id,
            grant_id,
            amount,
            period_start_ms,
        } => EventDetails::RefillGranted {
            refill_id,
            grant_id,
            amount,
            period_start_ms,
        },
        EventKind::SpendCapReached {
            cap,
            spent,
            asked,
            window_start_ms,
            resets_at_ms,
        } => EventDetails::SpendCapReached {
            cap,
            spent,
            asked,
            window_start_ms,
            resets_at_ms,
        },
    };
    EventView {
        id,
        at_ms,
        tenant: event.tenant.clone(),
        balance: event.balance.clone(),
        event: details,
    }
}

/// The events a change of `available` from `before` to `after` raises under
/// `thresholds`: each level crossed downward (highest first), then exhaustion.
/// `reference` is the account's latest grant, for percent levels.
pub fn crossings(
    thresholds: &Thresholds,
    reference: Option<i64>,
    before: i64,
    after: i64,
) -> Vec<EventKind> {
    let mut raised: Vec<(i64, EventKind)> = thresholds
        .levels
        .iter()
        .filter_map(|level| {
            let level_credits = level.credits(reference)?;
            (before >= level_credits && after < level_credits).then_some((
                level_credits,
                EventKind::BalanceLow {
                    level: *level,
                    level_credits,
                    before,
                    after,
                },
            ))
        })
        .collect();
    raised.sort_by_key(|(credits, _)| std::cmp::Reverse(*credits));
    let mut events: Vec<EventKind> = raised.into_iter().map(|(_, event)| event).collect();
    if before > 0 && after <= 0 {
        events.push(EventKind::BalanceExhausted { before, after });
    }
    events
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn watching(levels: Vec<Level>) -> Thresholds {
        Thresholds {
            levels,
            lot_expiring_lead_ms: None,
        }
    }

    #[test]
    fn a_fall_through_two_levels_raises_both_highest_first_then_exhaustion() {
        let thresholds = watching(vec![Level::Credits(10), Level::Percent(50)]);
        let events = crossings(&thresholds, Some(200), 150, -5);
        let names: Vec<_> = events.iter().map(EventKind::as_str).collect();
        assert_eq!(
            names,
            ["balance_low", "balance_low", "balance_exhausted"],
            "{events:?}"
        );
        assert!(matches!(
            events[0],
            EventKind::BalanceLow {
                level_credits: 100,
                ..
            }
        ));
        assert!(matches!(
            events[1],
            EventKind::BalanceLow {
                level_credits: 10,
                ..
            }
        ));
    }

    #[test]
    fn a_percent_level_without_a_grant_to_measure_raises_nothing() {
        let thresholds = watching(vec![Level::Percent(50)]);
        assert!(crossings(&thresholds, None, 150, 5).is_empty());
        assert_eq!(Level::Percent(10).credits(Some(15)), Some(1));
    }

    #[test]
    fn the_cap_is_raised_once_per_window_and_a_lot_warned_of_once_while_open() {
        let mut watch = Watch::new(Thresholds {
            levels: Vec::new(),
            lot_expiring_lead_ms: Some(100),
        });
        assert!(watch.cap_reached_is_new(0));
        watch.remember(&EventKind::SpendCapReached {
            cap: 1,
            spent: 1,
            asked: 1,
            window_start_ms: 0,
            resets_at_ms: 10,
        });
        assert!(!watch.cap_reached_is_new(0));
        assert!(watch.cap_reached_is_new(10));
        assert!(!watch.should_warn(1, 500, 399), "not yet within the lead");
        assert!(watch.should_warn(1, 500, 400));
        watch.remember(&EventKind::LotExpiring {
            lot: 1,
            grant_id: "g".to_owned(),
            remaining: 1,
            expires_at_ms: 500,
        });
        assert!(!watch.should_warn(1, 500, 450), "warned once");
        watch.forget_lot(1);
        assert_eq!(watch.warned_lots, Vec::<LotId>::new());
    }

    proptest! {
        /// A level is raised exactly when `before` is at or above it and `after` below;
        /// nothing is raised when credits only come in.
        #[test]
        fn a_level_is_raised_exactly_when_crossed_downward(
            levels in proptest::collection::vec(-50i64..200, 0..5),
            before in -100i64..300,
            after in -100i64..300,
        ) {
            let thresholds = watching(levels.iter().copied().map(Level::Credits).collect());
            let events = crossings(&thresholds, None, before, after);
            let low: Vec<i64> = events
                .iter()
                .filter_map(|event| match event {
                    EventKind::BalanceLow { level_credits, .. } => Some(*level_credits),
                    _ => None,
                })
                .collect();
            let mut expected: Vec<i64> = levels
                .iter()
                .copied()
                .filter(|level| before >= *level && after < *level)
                .collect();
            expected.sort_by_key(|level| std::cmp::Reverse(*level));
            prop_assert_eq!(low, expected);
            let exhausted = events
                .iter()
                .any(|event| matches!(event, EventKind::BalanceExhausted { .. }));
            prop_assert_eq!(exhausted, before > 0 && after <= 0);
            if after >= before {
                prop_assert!(events.is_empty());
            }
        }
    }
}
