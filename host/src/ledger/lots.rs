//! Lots: the grants an account's credits came from, and the order they burn in
//! ([`docs/credits.md`](../../../docs/credits.md)). Pure rules on one account's lots: the
//! live state keeps them, the record stores their moves.
//!
//! Invariants kept here: a lot's `remaining` stays within `0..=amount`; a closed lot
//! (expired or voided) never takes credits back; every take, return, expiry and void
//! answers the moves that make it, and they sum to what it moved.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// The ledger's number for a lot: the entry id of its grant entry. Entry ids start at
/// 1, so 0 is free for the legacy lot.
pub type LotId = u64;

/// Credits granted before lots existed: one implicit lot per account, sorted as the
/// oldest lot of priority 0 without expiry.
pub const LEGACY_LOT: LotId = 0;

/// Why a lot stopped taking credits back. Stored: the order of the variants is part of
/// the record format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Closure {
    Expired,
    Voided,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lot {
    pub id: LotId,
    /// Credits granted; `0 <= remaining <= amount`.
    pub amount: i64,
    pub remaining: i64,
    pub expires_at_ms: Option<i64>,
    /// Lower burns first.
    pub priority: i32,
    pub closed: Option<Closure>,
}

impl Lot {
    pub fn new(id: LotId, amount: i64, priority: i32, expires_at_ms: Option<i64>) -> Self {
        Self {
            id,
            amount,
            remaining: amount,
            expires_at_ms,
            priority,
            closed: None,
        }
    }

    /// The implicit lot of credits granted before lots existed: whatever it holds, it
    /// can take back any amount (its grants are not known one by one).
    pub fn legacy(remaining: i64) -> Self {
        Self {
            id: LEGACY_LOT,
            amount: i64::MAX,
            remaining,
            expires_at_ms: None,
            priority: 0,
            closed: None,
        }
    }

    /// The burn order: priority, then soonest expiry (none: last), then the oldest
    /// grant.
    pub fn burn_order(&self, other: &Self) -> Ordering {
        let key = |lot: &Self| (lot.priority, lot.expires_at_ms.unwrap_or(i64::MAX), lot.id);
        key(self).cmp(&key(other))
    }
}

/// Credits moved out of or into one lot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LotMove {
    pub lot: LotId,
    /// Always > 0.
    pub amount: i64,
}

/// Credits a hold drew from lots that closed before they could go back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forfeit {
    pub moved: LotMove,
    pub closure: Closure,
}

/// What a lot rule refused; the lots are left as they were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LotError {
    /// The open lots hold less than asked.
    Short {
        asked: i64,
        remaining: i64,
    },
    UnknownLot(LotId),
    DuplicateLot(LotId),
    /// A figure would leave `0..=amount`, or an amount was not positive.
    Invalid(String),
}

impl std::fmt::Display for LotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LotError::Short { asked, remaining } => {
                write!(f, "{asked} credits asked of lots holding {remaining}")
            }
            LotError::UnknownLot(lot) => write!(f, "lot {lot} is not in the account"),
            LotError::DuplicateLot(lot) => write!(f, "lot {lot} is already in the account"),
            LotError::Invalid(why) => f.write_str(why),
        }
    }
}

/// One account's lots, kept in burn order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountLots {
    lots: Vec<Lot>,
}

impl AccountLots {
    pub fn lots(&self) -> &[Lot] {
        &self.lots
    }

    /// Credits the open lots hold.
    pub fn remaining(&self) -> i64 {
        self.open().map(|lot| lot.remaining).sum()
    }

    fn open(&self) -> impl Iterator<Item = &Lot> {
        self.lots.iter().filter(|lot| lot.closed.is_none())
    }

    fn find_mut(&mut self, id: LotId) -> Result<&mut Lot, LotError> {
        self.lots
            .iter_mut()
            .find(|lot| lot.id == id)
            .ok_or(LotError::UnknownLot(id))
    }

    /// An account's lots as stored, in any order: refuses figures outside
    /// `0..=amount` and a lot listed twice.
    pub fn restore(lots: impl IntoIterator<Item = Lot>) -> Result<Self, LotError> {
        let mut restored = Self::default();
        for lot in lots {
            if lot.remaining < 0 || lot.remaining > lot.amount || lot.amount <= 0 {
                return Err(LotError::Invalid(format!(
                    "lot {} holds {} of {}",
                    lot.id, lot.remaining, lot.amount
                )));
            }
            if restored.lots.iter().any(|known| known.id == lot.id) {
                return Err(LotError::DuplicateLot(lot.id));
            }
            restored.lots.push(lot);
        }
        restored.lots.sort_by(Lot::burn_order);
        Ok(restored)
    }

    /// Takes the lots out, in burn order.
    pub fn into_lots(self) -> Vec<Lot> {
        self.lots
    }

    /// Adds a granted lot in its place in the burn order.
    pub fn add(&mut self, lot: Lot) -> Result<(), LotError> {
        if lot.amount <= 0 || lot.remaining != lot.amount || lot.closed.is_some() {
            return Err(LotError::Invalid(format!(
                "a new lot grants a positive amount, all of it remaining: {lot:?}"
            )));
        }
        if self.lots.iter().any(|known| known.id == lot.id) {
            return Err(LotError::DuplicateLot(lot.id));
        }
        let at = self
            .lots
            .partition_point(|known| known.burn_order(&lot) == Ordering::Less);
        self.lots.insert(at, lot);
        Ok(())
    }

    /// Takes `amount` from the open lots in burn order, or nothing if they hold less.
    pub fn take(&mut self, amount: i64) -> Result<Vec<LotMove>, LotError> {
        if amount < 0 {
            return Err(LotError::Invalid(format!("cannot take {amount} credits")));
        }
        let remaining = self.remaining();
        if amount > remaining {
            return Err(LotError::Short {
                asked: amount,
                remaining,
            });
        }
        let mut moves = Vec::new();
        let mut left = amount;
        for lot in self.lots.iter_mut().filter(|lot| lot.closed.is_none()) {
            if left == 0 {
                break;
            }
            let taken = left.min(lot.remaining);
            if taken > 0 {
                lot.remaining -= taken;
                left -= taken;
                moves.push(LotMove {
                    lot: lot.id,
                    amount: taken,
                });
            }
        }
        debug_assert_eq!(left, 0, "the open lots held {remaining} >= {amount}");
        Ok(moves)
    }

    /// Returns credits to the lots they were taken from (a released hold). A lot that
    /// closed meanwhile takes nothing back: its part is answered as forfeited, for the
    /// caller to record leaving. Refuses, changing nothing, a move to an unknown lot or
    /// past a lot's amount.
    pub fn give_back(&mut self, moves: &[LotMove]) -> Result<Vec<Forfeit>, LotError> {
        let mut after = self.clone();
        let mut forfeits = Vec::new();
        for moved in moves {
            let lot = after.find_mut(moved.lot)?;
            let room = lot.amount - lot.remaining;
            if moved.amount <= 0 || moved.amount > room {
                return Err(LotError::Invalid(format!(
                    "{} credits cannot go back to lot {} ({} of {} remaining)",
                    moved.amount, lot.id, lot.remaining, lot.amount
                )));
            }
            match lot.closed {
                Some(closure) => forfeits.push(Forfeit {
                    moved: *moved,
                    closure,
                }),
                None => lot.remaining += moved.amount,
            }
        }
        *self = after;
        Ok(forfeits)
    }

    /// Closes a lot: its remainder leaves (none if it was empty). Closing a closed lot
    /// moves nothing.
    pub fn close(&mut self, id: LotId, closure: Closure) -> Result<Option<LotMove>, LotError> {
        let lot = self.find_mut(id)?;
        if lot.closed.is_some() {
            return Ok(None);
        }
        lot.closed = Some(closure);
        let left = std::mem::take(&mut lot.remaining);
        Ok((left > 0).then_some(LotMove {
            lot: id,
            amount: left,
        }))
    }

    /// The open lots whose expiry is at or before `now_ms`, in burn order.
    pub fn due(&self, now_ms: i64) -> impl Iterator<Item = LotId> + '_ {
        self.open()
            .filter(move |lot| lot.expires_at_ms.is_some_and(|at| at <= now_ms))
            .map(|lot| lot.id)
    }
}

/// Splits what a hold drew from its lots into what a capture of `captured` spends (in
/// the order the hold drew them, which is burn order) and what goes back.
pub fn split_hold(drawn: &[LotMove], captured: i64) -> (Vec<LotMove>, Vec<LotMove>) {
    let (mut spent, mut back) = (Vec::new(), Vec::new());
    let mut left = captured.max(0);
    for moved in drawn {
        let taken = left.min(moved.amount);
        left -= taken;
        if taken > 0 {
            spent.push(LotMove {
                lot: moved.lot,
                amount: taken,
            });
        }
        if moved.amount > taken {
            back.push(LotMove {
                lot: moved.lot,
                amount: moved.amount - taken,
            });
        }
    }
    (spent, back)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sum(moves: &[LotMove]) -> i64 {
        moves.iter().map(|moved| moved.amount).sum()
    }

    #[test]
    fn lots_burn_by_priority_then_soonest_expiry_then_oldest() {
        let mut lots = AccountLots::default();
        lots.add(Lot::new(1, 10, 5, None)).unwrap();
        lots.add(Lot::new(2, 10, 0, None)).unwrap();
        lots.add(Lot::new(3, 10, 0, Some(2_000))).unwrap();
        lots.add(Lot::new(4, 10, 0, Some(1_000))).unwrap();
        lots.add(Lot::new(LEGACY_LOT, 10, 0, None)).unwrap();
        let order: Vec<LotId> = lots.lots().iter().map(|lot| lot.id).collect();
        assert_eq!(order, [4, 3, LEGACY_LOT, 2, 1]);
        let moves = lots.take(25).unwrap();
        assert_eq!(
            moves,
            [
                LotMove { lot: 4, amount: 10 },
                LotMove { lot: 3, amount: 10 },
                LotMove {
                    lot: LEGACY_LOT,
                    amount: 5
                },
            ]
        );
        assert_eq!(lots.remaining(), 25);
    }

    #[test]
    fn a_hold_returns_to_its_lots_except_those_closed_meanwhile() {
        let mut lots = AccountLots::default();
        lots.add(Lot::new(1, 4, 0, Some(1_000))).unwrap();
        lots.add(Lot::new(2, 10, 0, None)).unwrap();
        let drawn = lots.take(6).unwrap();
        assert_eq!(
            drawn,
            [LotMove { lot: 1, amount: 4 }, LotMove { lot: 2, amount: 2 }]
        );
        // Lot 1 expires while the hold is open: nothing of it is left to leave now.
        assert_eq!(lots.due(1_000).collect::<Vec<_>>(), [1]);
        assert_eq!(lots.close(1, Closure::Expired).unwrap(), None);
        // The capture spends 1 (from lot 1, first drawn); the rest goes back.
        let (spent, back) = split_hold(&drawn, 1);
        assert_eq!(spent, [LotMove { lot: 1, amount: 1 }]);
        let forfeits = lots.give_back(&back).unwrap();
        assert_eq!(
            forfeits,
            [Forfeit {
                moved: LotMove { lot: 1, amount: 3 },
                closure: Closure::Expired
            }]
        );
        assert_eq!(lots.remaining(), 10);
    }

    #[test]
    fn refused_rules_change_nothing() {
        let mut lots = AccountLots::default();
        lots.add(Lot::new(1, 5, 0, None)).unwrap();
        let before = lots.clone();
        assert_eq!(
            lots.take(6),
            Err(LotError::Short {
                asked: 6,
                remaining: 5
            })
        );
        assert_eq!(
            lots.give_back(&[LotMove { lot: 1, amount: 1 }])
                .unwrap_err()
                .to_string(),
            "1 credits cannot go back to lot 1 (5 of 5 remaining)"
        );
        assert_eq!(
            lots.give_back(&[LotMove { lot: 9, amount: 1 }]),
            Err(LotError::UnknownLot(9))
        );
        assert_eq!(
            lots.add(Lot::new(1, 3, 0, None)),
            Err(LotError::DuplicateLot(1))
        );
        assert_eq!(lots, before);
    }

    /// One step of a random history of an account's lots.
    #[derive(Debug, Clone)]
    enum Step {
        Grant {
            amount: i64,
            priority: i32,
            expires_at_ms: Option<i64>,
        },
        Hold(i64),
        /// Settles the open hold at this index (mod the open holds), capturing this much.
        Settle {
            hold: usize,
            captured: i64,
        },
        Expire {
            now_ms: i64,
        },
        Void {
            lot: usize,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1..50i64, 0..3i32, prop::option::of(0..100i64)).prop_map(
                |(amount, priority, expires_at_ms)| Step::Grant {
                    amount,
                    priority,
                    expires_at_ms
                }
            ),
            (0..80i64).prop_map(Step::Hold),
            (0..8usize, 0..60i64).prop_map(|(hold, captured)| Step::Settle { hold, captured }),
            (0..100i64).prop_map(|now_ms| Step::Expire { now_ms }),
            (0..8usize).prop_map(|lot| Step::Void { lot }),
        ]
    }

    proptest! {
        /// Against a model that only counts: every rule conserves credits (what the lots
        /// hold + what holds drew + what left = what was granted), no lot leaves
        /// `0..=amount`, a closed lot never gains, and takes follow the burn order.
        #[test]
        fn lots_conserve_credits_and_keep_their_bounds(steps in prop::collection::vec(step(), 1..60)) {
            let mut lots = AccountLots::default();
            let mut holds: Vec<Vec<LotMove>> = Vec::new();
            let (mut granted, mut spent, mut left) = (0i64, 0i64, 0i64);
            let mut next_id = 1;
            for step in steps {
                let closed_before: Vec<(LotId, i64)> = lots.lots().iter()
                    .filter(|lot| lot.closed.is_some())
                    .map(|lot| (lot.id, lot.remaining))
                    .collect();
                match step {
                    Step::Grant { amount, priority, expires_at_ms } => {
                        lots.add(Lot::new(next_id, amount, priority, expires_at_ms)).unwrap();
                        next_id += 1;
                        granted += amount;
                    }
                    Step::Hold(amount) => match lots.take(amount) {
                        Ok(moves) => {
                            prop_assert_eq!(sum(&moves), amount);
                            // Burn order: each lot drawn from precedes, in the account's
                            // order, every open lot still holding credits, but the last.
                            let order: Vec<LotId> = lots.lots().iter().map(|lot| lot.id).collect();
                            let position = |id| order.iter().position(|known| *known == id).unwrap();
                            if let Some(last) = moves.last() {
                                for lot in lots.lots() {
                                    if lot.closed.is_none() && lot.remaining > 0 && lot.id != last.lot {
                                        prop_assert!(position(lot.id) > position(last.lot));
                                    }
                                }
                            }
                            holds.push(moves);
                        }
                        Err(LotError::Short { asked, remaining }) => {
                            prop_assert_eq!(asked, amount);
                            prop_assert!(remaining < amount);
                        }
                        Err(other) => prop_assert!(false, "{other}"),
                    },
                    Step::Settle { hold, captured } => {
                        if !holds.is_empty() {
                            let drawn = holds.remove(hold % holds.len());
                            let (used, back) = split_hold(&drawn, captured);
                            prop_assert_eq!(sum(&used) + sum(&back), sum(&drawn));
                            prop_assert_eq!(sum(&used), captured.min(sum(&drawn)));
                            spent += sum(&used);
                            let forfeits = lots.give_back(&back).unwrap();
                            left += forfeits.iter().map(|forfeit| forfeit.moved.amount).sum::<i64>();
                        }
                    }
                    Step::Expire { now_ms } => {
                        let due: Vec<LotId> = lots.due(now_ms).collect();
                        for id in due {
                            if let Some(moved) = lots.close(id, Closure::Expired).unwrap() {
                                left += moved.amount;
                            }
                        }
                    }
                    Step::Void { lot } => {
                        if !lots.lots().is_empty() {
                            let id = lots.lots()[lot % lots.lots().len()].id;
                            if let Some(moved) = lots.close(id, Closure::Voided).unwrap() {
                                left += moved.amount;
                            }
                        }
                    }
                }
                let drawn: i64 = holds.iter().map(|moves| sum(moves)).sum();
                prop_assert_eq!(lots.remaining() + drawn + spent + left, granted);
                for lot in lots.lots() {
                    prop_assert!((0..=lot.amount).contains(&lot.remaining), "{:?}", lot);
                    if lot.closed.is_some() {
                        prop_assert_eq!(lot.remaining, 0);
                    }
                }
                for (id, remaining) in closed_before {
                    let lot = lots.lots().iter().find(|lot| lot.id == id).unwrap();
                    prop_assert_eq!(lot.remaining, remaining, "a closed lot gained");
                }
            }
        }
    }
}
