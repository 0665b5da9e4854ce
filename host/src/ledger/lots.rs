//! Lots: the grants an account's credits came from, and the order they burn in
//! ([`docs/credits.md`](../../../docs/credits.md)). Pure rules on one account's lots: the
//! live state keeps them, the record stores their moves.
//!
//! Invariants kept here: a lot's `remaining` stays within `0..=amount`; a closed lot
//! (expired or voided) never takes credits back; every take, return, expiry and void
//! answers the moves that make it, and they sum to what it moved.
//!
//! Overdraft: spending past every lot takes the account's own (legacy) lot below zero,
//! down to the overdraft limit; credits coming in (a grant, a released hold) repay it
//! before they fill any other lot. So an account is overdrawn only while every other
//! open lot is empty (L1: open lots hold at most `max(available, 0)`).

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

    /// Credits the open lots hold, less what the account is overdrawn.
    pub fn remaining(&self) -> i64 {
        self.open()
            .fold(0i64, |sum, lot| sum.saturating_add(lot.remaining))
    }

    /// Credits the account owes its overdraft: what its own lot is below zero.
    pub fn overdrawn(&self) -> i64 {
        self.lots
            .iter()
            .find(|lot| lot.id == LEGACY_LOT)
            .map_or(0, |lot| lot.remaining.saturating_neg().max(0))
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
    /// `0..=amount` (the legacy lot may be overdrawn), a lot listed twice, and an
    /// overdrawn account with credits in another open lot.
    pub fn restore(lots: impl IntoIterator<Item = Lot>) -> Result<Self, LotError> {
        let mut restored = Self::default();
        for lot in lots {
            let floor = if lot.id == LEGACY_LOT { i64::MIN } else { 0 };
            if lot.remaining < floor || lot.remaining > lot.amount || lot.amount <= 0 {
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
        let overdrawn = restored.overdrawn();
        if overdrawn > 0 && restored.remaining().saturating_add(overdrawn) > 0 {
            return Err(LotError::Invalid(format!(
                "the account is overdrawn by {overdrawn} but its lots hold credits"
            )));
        }
        Ok(restored)
    }

    /// Takes the lots out, in burn order.
    pub fn into_lots(self) -> Vec<Lot> {
        self.lots
    }

    /// Adds a granted lot in its place in the burn order. An overdrawn account is
    /// repaid from it first: answers how much (the lot keeps the rest).
    pub fn add(&mut self, mut lot: Lot) -> Result<i64, LotError> {
        if lot.amount <= 0 || lot.remaining != lot.amount || lot.closed.is_some() {
            return Err(LotError::Invalid(format!(
                "a new lot grants a positive amount, all of it remaining: {lot:?}"
            )));
        }
        if self.lots.iter().any(|known| known.id == lot.id) {
            return Err(LotError::DuplicateLot(lot.id));
        }
        let repaid = lot.amount.min(self.overdrawn());
        if repaid > 0 {
            self.find_mut(LEGACY_LOT)?.remaining += repaid;
            lot.remaining -= repaid;
        }
        let at = self
            .lots
            .partition_point(|known| known.burn_order(&lot) == Ordering::Less);
        self.lots.insert(at, lot);
        Ok(repaid)
    }

    /// Takes `amount` from the open lots in burn order, then, past them, overdraws the
    /// account's own lot down to `-overdraft_limit`; or takes nothing if that is short.
    pub fn take(&mut self, amount: i64, overdraft_limit: i64) -> Result<Vec<LotMove>, LotError> {
        if amount < 0 || overdraft_limit < 0 {
            return Err(LotError::Invalid(format!(
                "cannot take {amount} credits with an overdraft of {overdraft_limit}"
            )));
        }
        let remaining = self.remaining();
        if amount > remaining.saturating_add(overdraft_limit) {
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
            let taken = left.min(lot.remaining.max(0));
            if taken > 0 {
                lot.remaining -= taken;
                left -= taken;
                moves.push(LotMove {
                    lot: lot.id,
                    amount: taken,
                });
            }
        }
        if left > 0 {
            // Past every lot: the account overdraws (`remaining + overdraft_limit`
            // covered it, so its own lot stays above the floor).
            let Ok(own) = self.find_mut(LEGACY_LOT) else {
                return Err(LotError::Short {
                    asked: amount,
                    remaining,
                });
            };
            own.remaining -= left;
            match moves.last_mut() {
                Some(last) if last.lot == LEGACY_LOT => last.amount += left,
                _ => moves.push(LotMove {
                    lot: LEGACY_LOT,
                    amount: left,
                }),
            }
        }
        Ok(moves)
    }

    /// Returns credits to the lots they were taken from (a released hold), repaying
    /// an overdraft first: answers where they went. A lot that closed meanwhile takes
    /// nothing back: its part is answered as forfeited, for the caller to record
    /// leaving. Refuses, changing nothing, a move to an unknown lot or past a lot's
    /// amount.
    pub fn give_back(&mut self, moves: &[LotMove]) -> Result<GivenBack, LotError> {
        let mut after = self.clone();
        let mut given = GivenBack::default();
        for moved in moves {
            let overdrawn = after.overdrawn();
            let lot = after.find_mut(moved.lot)?;
            let room = lot.amount.saturating_sub(lot.remaining);
            if moved.amount <= 0 || moved.amount > room {
                return Err(LotError::Invalid(format!(
                    "{} credits cannot go back to lot {} ({} of {} remaining)",
                    moved.amount, lot.id, lot.remaining, lot.amount
                )));
            }
            if let Some(closure) = lot.closed {
                given.returned.push(*moved);
                given.forfeits.push(Forfeit {
                    moved: *moved,
                    closure,
                });
                continue;
            }
            let repaid = if lot.id == LEGACY_LOT {
                0
            } else {
                moved.amount.min(overdrawn)
            };
            lot.remaining += moved.amount - repaid;
            if moved.amount > repaid {
                given.returned.push(LotMove {
                    lot: moved.lot,
                    amount: moved.amount - repaid,
                });
            }
            if repaid > 0 {
                after.find_mut(LEGACY_LOT)?.remaining += repaid;
                given.returned.push(LotMove {
                    lot: LEGACY_LOT,
                    amount: repaid,
                });
            }
        }
        *self = after;
        Ok(given)
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

/// Where a released hold's credits went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GivenBack {
    /// Back to their lots, or to the account's own lot for what repaid an overdraft;
    /// they sum to what was given back.
    pub returned: Vec<LotMove>,
    /// The part returned to lots that closed meanwhile: it leaves.
    pub forfeits: Vec<Forfeit>,
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
        let moves = lots.take(25, 0).unwrap();
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
        let drawn = lots.take(6, 0).unwrap();
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
        let given = lots.give_back(&back).unwrap();
        assert_eq!(
            given.returned,
            [LotMove { lot: 1, amount: 3 }, LotMove { lot: 2, amount: 2 }]
        );
        assert_eq!(
            given.forfeits,
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
            lots.take(6, 0),
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

    #[test]
    fn an_overdraft_spends_past_the_lots_and_incoming_credits_repay_it_first() {
        let mut lots = AccountLots::restore([Lot::legacy(0)]).unwrap();
        lots.add(Lot::new(1, 5, 0, None)).unwrap();
        assert_eq!(
            lots.take(9, 3),
            Err(LotError::Short {
                asked: 9,
                remaining: 5
            })
        );
        let drawn = lots.take(8, 3).unwrap();
        assert_eq!(
            drawn,
            [
                LotMove { lot: 1, amount: 5 },
                LotMove {
                    lot: LEGACY_LOT,
                    amount: 3
                }
            ]
        );
        assert_eq!((lots.remaining(), lots.overdrawn()), (-3, 3));
        // A grant repays the overdraft before its lot keeps anything.
        assert_eq!(lots.add(Lot::new(2, 2, 0, None)), Ok(2));
        assert_eq!(lots.overdrawn(), 1);
        // So does a released hold: 1 repays, 4 go back to lot 1.
        let given = lots.give_back(&[LotMove { lot: 1, amount: 5 }]).unwrap();
        assert_eq!(
            given.returned,
            [
                LotMove { lot: 1, amount: 4 },
                LotMove {
                    lot: LEGACY_LOT,
                    amount: 1
                }
            ]
        );
        assert_eq!((lots.remaining(), lots.overdrawn()), (4, 0));
        // An overdrawn account with credits in a lot breaks L1: refused on restore.
        assert!(AccountLots::restore([Lot::legacy(-1), Lot::new(1, 5, 0, None)]).is_err());
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
        fn lots_conserve_credits_and_keep_their_bounds(
            steps in prop::collection::vec(step(), 1..60),
            overdraft_limit in prop_oneof![Just(0i64), 0..40i64],
        ) {
            let mut lots = AccountLots::restore([Lot::legacy(0)]).unwrap();
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
                    Step::Hold(amount) => match lots.take(amount, overdraft_limit) {
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
                            prop_assert!(remaining + overdraft_limit < amount);
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
                            let given = lots.give_back(&back).unwrap();
                            prop_assert_eq!(sum(&given.returned), sum(&back));
                            left += given.forfeits.iter().map(|forfeit| forfeit.moved.amount).sum::<i64>();
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
                        let lots_granted: Vec<LotId> = lots.lots().iter()
                            .map(|lot| lot.id)
                            .filter(|id| *id != LEGACY_LOT)
                            .collect();
                        if !lots_granted.is_empty() {
                            let id = lots_granted[lot % lots_granted.len()];
                            if let Some(moved) = lots.close(id, Closure::Voided).unwrap() {
                                left += moved.amount;
                            }
                        }
                    }
                }
                let drawn: i64 = holds.iter().map(|moves| sum(moves)).sum();
                prop_assert_eq!(lots.remaining() + drawn + spent + left, granted);
                // L1: overdrawn only while every other open lot is empty, never past
                // the limit.
                let overdrawn = lots.overdrawn();
                prop_assert!(overdrawn <= overdraft_limit);
                if overdrawn > 0 {
                    prop_assert_eq!(lots.remaining(), -overdrawn, "{:?}", lots);
                }
                for lot in lots.lots().iter().filter(|lot| lot.id != LEGACY_LOT) {
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
