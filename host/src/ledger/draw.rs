//! A decision's entries drawn on lots: the posting rules say how many credits move on
//! each balance ([`super::posting`]); this says which lots they come from or go back
//! to, in the burn order of [`super::lots`], one journal entry per lot moved. It also
//! answers the accounts and the lots as the entries leave them, which is what the
//! record stores.

use std::collections::BTreeMap;

use super::lots::{AccountLots, Closure, LEGACY_LOT, Lot, LotError, LotId, LotMove, split_hold};
use super::record::EntryRecord;
use super::state::LiveState;
use super::{Accounts, Entry, EntryKind, OverdraftLimits, apply, overdraft_limit};
use crate::error::MeterError;

/// The lots of one tenant's accounts while a decision draws on them.
pub struct LotDraw<'a> {
    state: &'a LiveState,
    tenant: &'a str,
    before: &'a Accounts,
    limits: &'a OverdraftLimits,
    lots: BTreeMap<String, AccountLots>,
    entries: Vec<EntryRecord>,
    /// Lots granted by this decision: recorded even when an overdraft took all of it.
    granted: Vec<LotId>,
}

/// What a decision's entries do, drawn on lots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrawnPosting {
    pub entries: Vec<EntryRecord>,
    pub accounts: Accounts,
    /// The lots the entries moved (the legacy lot aside), as they are after.
    pub lots: Vec<(String, Lot)>,
}

fn broken(error: LotError) -> MeterError {
    MeterError::StoreCorrupt(format!("a decision broke a lot rule: {error}"))
}

impl<'a> LotDraw<'a> {
    /// Draws on `tenant`'s lots, whose accounts are `before` the decision and whose
    /// overdraft limits are `limits` (read once per decision).
    pub fn new(
        state: &'a LiveState,
        tenant: &'a str,
        before: &'a Accounts,
        limits: &'a OverdraftLimits,
    ) -> Self {
        Self {
            state,
            tenant,
            before,
            limits,
            lots: BTreeMap::new(),
            entries: Vec::new(),
            granted: Vec::new(),
        }
    }

    fn account(&mut self, balance: &str) -> Result<&mut AccountLots, MeterError> {
        if !self.lots.contains_key(balance) {
            let available = self
                .before
                .get(balance)
                .map_or(0, |account| account.available);
            let lots = self.state.account_lots(self.tenant, balance, available)?;
            self.lots.insert(balance.to_owned(), lots);
        }
        self.lots
            .get_mut(balance)
            .ok_or_else(|| MeterError::StoreUnavailable(format!("no lots for '{balance}'")))
    }

    fn push(&mut self, balance: &str, kind: EntryKind, moved: LotMove) {
        if moved.amount > 0 {
            self.entries.push(EntryRecord {
                balance: balance.to_owned(),
                kind,
                amount: moved.amount,
                lot: moved.lot,
            });
        }
    }

    /// A hold or a charge: credits leave the account's open lots in burn order, then
    /// overdraw it within its limit.
    pub fn take(&mut self, balance: &str, kind: EntryKind, amount: i64) -> Result<(), MeterError> {
        let limit = overdraft_limit(self.limits, balance);
        let moves = self.account(balance)?.take(amount, limit).map_err(broken)?;
        for moved in moves {
            self.push(balance, kind, moved);
        }
        Ok(())
    }

    /// Credits of a hold that drew `drawn` (in burn order) on `balance`: `captured`
    /// of them are spent, the rest go back to their lots (a release, or an expiry of
    /// the hold; an overdraft is repaid first), and any part whose lot closed meanwhile
    /// leaves through that lot's closing entry.
    pub fn settle_hold(
        &mut self,
        balance: &str,
        drawn: &[LotMove],
        captured: i64,
        back_kind: EntryKind,
    ) -> Result<(), MeterError> {
        let (spent, back) = split_hold(drawn, captured);
        for moved in spent {
            self.push(balance, EntryKind::Capture, moved);
        }
        let given = self.account(balance)?.give_back(&back).map_err(broken)?;
        for moved in given.returned {
            self.push(balance, back_kind, moved);
        }
        for forfeit in given.forfeits {
            self.push(balance, closing_kind(forfeit.closure), forfeit.moved);
        }
        Ok(())
    }

    /// Adds a granted lot, whose number is its grant's first entry's id. Of an
    /// overdrawn account, the grant repays the overdraft first: one entry for what
    /// the lot keeps, one on the account's own lot for what repaid it.
    pub fn grant(&mut self, balance: &str, lot: Lot) -> Result<(), MeterError> {
        let (id, amount) = (lot.id, lot.amount);
        let repaid = self.account(balance)?.add(lot).map_err(broken)?;
        self.granted.push(id);
        self.push(
            balance,
            EntryKind::Grant,
            LotMove {
                lot: id,
                amount: amount - repaid,
            },
        );
        self.push(
            balance,
            EntryKind::Grant,
            LotMove {
                lot: LEGACY_LOT,
                amount: repaid,
            },
        );
        Ok(())
    }

    /// Closes a lot: its remainder leaves. Refuses a lot the account does not have.
    pub fn close(&mut self, balance: &str, lot: LotId, closure: Closure) -> Result<(), MeterError> {
        if let Some(moved) = self.account(balance)?.close(lot, closure).map_err(broken)? {
            self.push(balance, closing_kind(closure), moved);
        }
        Ok(())
    }

    /// An entry that moves no lot (the `open` exposure entry).
    pub fn unlotted(&mut self, entry: &Entry) {
        self.entries.push(EntryRecord {
            balance: entry.balance.clone(),
            kind: entry.kind,
            amount: entry.amount,
            lot: LEGACY_LOT,
        });
    }

    /// The entries, and the accounts and lots they leave. Refuses (as a broken
    /// invariant) entries that would take an account below its floor: the posting
    /// rules already checked them.
    pub fn finish(self) -> Result<DrawnPosting, MeterError> {
        let mut accounts = self.before.clone();
        let plain: Vec<Entry> = self
            .entries
            .iter()
            .map(|entry| Entry {
                balance: entry.balance.clone(),
                kind: entry.kind,
                amount: entry.amount,
            })
            .collect();
        apply(&mut accounts, &plain, self.limits).map_err(MeterError::StoreCorrupt)?;
        let mut lots = Vec::new();
        for (balance, account) in self.lots {
            let moved: Vec<LotId> = self
                .entries
                .iter()
                .filter(|entry| entry.balance == balance && entry.lot != LEGACY_LOT)
                .map(|entry| entry.lot)
                .chain(self.granted.iter().copied())
                .collect();
            for lot in account.into_lots() {
                if lot.id != LEGACY_LOT && moved.contains(&lot.id) {
                    lots.push((balance.clone(), lot));
                }
            }
        }
        Ok(DrawnPosting {
            entries: self.entries,
            accounts,
            lots,
        })
    }
}

fn closing_kind(closure: Closure) -> EntryKind {
    match closure {
        Closure::Expired => EntryKind::LotExpire,
        Closure::Voided => EntryKind::Void,
    }
}

/// Draws the per-balance entries of the posting rules on lots. A settle or an expiry
/// first settles what the hold `drawn` on each balance: its `capture` entries are
/// spent, the rest goes back to its lots (`release`, or `expire` for a lapsed hold).
/// Then holds and charges take from lots; `open` entries move no lot.
pub fn draw(
    state: &LiveState,
    tenant: &str,
    before: &Accounts,
    limits: &OverdraftLimits,
    entries: &[Entry],
    drawn: &[(String, LotId, i64)],
) -> Result<DrawnPosting, MeterError> {
    let mut draw = LotDraw::new(state, tenant, before, limits);
    let mut holds: BTreeMap<&str, Vec<LotMove>> = BTreeMap::new();
    for (balance, lot, amount) in drawn {
        holds.entry(balance.as_str()).or_default().push(LotMove {
            lot: *lot,
            amount: *amount,
        });
    }
    for (balance, moves) in holds {
        let on = |kind: EntryKind| {
            entries
                .iter()
                .filter(move |entry| entry.balance == balance && entry.kind == kind)
        };
        let captured: i64 = on(EntryKind::Capture).map(|entry| entry.amount).sum();
        let back_kind = if on(EntryKind::Expire).next().is_some() {
            EntryKind::Expire
        } else {
            EntryKind::Release
        };
        draw.settle_hold(balance, &moves, captured, back_kind)?;
    }
    for entry in entries {
        match entry.kind {
            EntryKind::Hold | EntryKind::Charge => {
                draw.take(&entry.balance, entry.kind, entry.amount)?
            }
            EntryKind::Capture | EntryKind::Release | EntryKind::Expire => {}
            EntryKind::Open => draw.unlotted(entry),
            EntryKind::Grant | EntryKind::LotExpire | EntryKind::Void => {
                return Err(MeterError::StoreCorrupt(format!(
                    "a {} entry is not drawn from a posting",
                    entry.kind.as_str()
                )));
            }
        }
    }
    draw.finish()
}
