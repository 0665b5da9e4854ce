//! The ledger: its rules (how a decision becomes journal entries, whatever the policy
//! said), its record (what a batch decided, [`record`], stored by [`codec`]) and its
//! live state in memory ([`state`]). Pure data and functions: no threads, no store.
//!
//! Each account (tenant, balance) has credits `available` and credits `held` by open
//! transactions. Every movement is one journal entry with a positive `amount` whose
//! kind fixes its effect (see [`EntryKind::effect`]), so the entries of an account
//! always sum to its state: that is the invariant [`check_account`] asserts.

pub mod calendar;
pub mod caps;
pub mod codec;
pub mod draw;
pub mod events;
pub mod legacy;
pub mod lots;
mod posting;
pub mod record;
pub mod refills;
pub mod scheduled;
pub mod state;
pub mod tenants;

pub use posting::{AuthorizePosting, SettlePosting, post_authorize, post_expiry, post_settle};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a journal entry did to its account. Stored: the order of the variants is part
/// of the record format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    /// Credits added by an operator.
    Grant,
    /// Credits reserved for an open transaction.
    Hold,
    /// Held credits spent at settle.
    Capture,
    /// Held credits returned at settle.
    Release,
    /// Available credits spent directly.
    Charge,
    /// Held credits returned because the transaction was never settled in time.
    Expire,
    /// Credits admitted unpriced because the policy failed and the failure mode is
    /// open: counted on the tenant's exposure window account, off its balances
    /// (`meter::failure`). Added in record format 2.
    Open,
    /// A lot's remainder, gone at its expiry. Added in record format 3.
    LotExpire,
    /// A lot's remainder, gone because an operator voided its grant. Added in record
    /// format 3.
    Void,
}

impl EntryKind {
    pub const ALL: [EntryKind; 9] = [
        EntryKind::Grant,
        EntryKind::Hold,
        EntryKind::Capture,
        EntryKind::Release,
        EntryKind::Charge,
        EntryKind::Expire,
        EntryKind::Open,
        EntryKind::LotExpire,
        EntryKind::Void,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Grant => "grant",
            EntryKind::Hold => "hold",
            EntryKind::Capture => "capture",
            EntryKind::Release => "release",
            EntryKind::Charge => "charge",
            EntryKind::Expire => "expire",
            EntryKind::Open => "open",
            EntryKind::LotExpire => "lot_expire",
            EntryKind::Void => "void",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// The direction an entry moves credits in (available, held): +1, 0 or -1 each.
    fn signs(self) -> (i8, i8) {
        match self {
            EntryKind::Grant | EntryKind::Open => (1, 0),
            EntryKind::Hold => (-1, 1),
            EntryKind::Capture => (0, -1),
            EntryKind::Release | EntryKind::Expire => (1, -1),
            EntryKind::Charge | EntryKind::LotExpire | EntryKind::Void => (-1, 0),
        }
    }

    /// The change an entry of `amount` (> 0) makes to (available, held).
    pub fn effect(self, amount: i64) -> (i64, i64) {
        let (available, held) = self.signs();
        (i64::from(available) * amount, i64::from(held) * amount)
    }

    /// [`EntryKind::effect`] on a sum of entries, which may pass `i64::MAX`.
    pub fn effect_wide(self, amount: i128) -> (i128, i128) {
        let (available, held) = self.signs();
        (i128::from(available) * amount, i128::from(held) * amount)
    }
}

/// One journal line, before the store stamps it with an id and a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub balance: String,
    pub kind: EntryKind,
    /// Always > 0.
    pub amount: i64,
}

/// One account's credits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    pub available: i64,
    pub held: i64,
}

/// A tenant's accounts, by balance name.
pub type Accounts = BTreeMap<String, AccountState>;

/// A tenant's overdraft limits, by balance name: how far below zero an operator lets
/// each account's `available` go by spending (>= 0; a balance not listed has none).
pub type OverdraftLimits = BTreeMap<String, i64>;

/// What an operator set on a tenant's accounts, read once per decision: overdraft
/// limits, spend caps and thresholds (most accounts have none).
#[derive(Debug, Clone, Default)]
pub struct AccountRules {
    pub overdraft: OverdraftLimits,
    pub caps: caps::SpendCaps,
    /// What operators watch, for events: by balance name.
    pub thresholds: BTreeMap<String, events::Thresholds>,
}

/// The overdraft limit of `balance`: 0 when none is set.
pub fn overdraft_limit(limits: &OverdraftLimits, balance: &str) -> i64 {
    limits.get(balance).copied().unwrap_or(0)
}

/// Credits `account` can still spend under its overdraft limit (negative when a
/// lowered limit left it further down than the limit allows).
pub fn spendable(account: AccountState, limit: i64) -> i64 {
    account.available.saturating_add(limit)
}

/// Applies entries to account states: the last line of defence behind the posting
/// rules. Refuses an entry that would overflow, take `held` below zero, or spend
/// `available` below minus the account's overdraft limit. An entry that adds credits
/// is never refused for the floor: an account a lowered limit left below it may only
/// come back up.
pub fn apply(
    accounts: &mut Accounts,
    entries: &[Entry],
    limits: &OverdraftLimits,
) -> Result<(), String> {
    for entry in entries {
        if entry.amount <= 0 {
            return Err(format!("entry {entry:?} has a non-positive amount"));
        }
        let floor = -overdraft_limit(limits, &entry.balance);
        let account = accounts.entry(entry.balance.clone()).or_default();
        let (available_delta, held_delta) = entry.kind.effect(entry.amount);
        let available = account.available.checked_add(available_delta);
        let held = account.held.checked_add(held_delta);
        match (available, held) {
            (Some(available), Some(held))
                if (available_delta >= 0 || available >= floor) && held >= 0 =>
            {
                *account = AccountState { available, held };
            }
            _ => {
                return Err(format!(
                    "entry {entry:?} would take account {account:?} below {floor} available, \
                     below zero held, or past i64"
                ));
            }
        }
    }
    Ok(())
}

/// Checks that the journal of an account sums to its state.
pub fn check_account(state: AccountState, journal_sum: AccountState) -> Result<(), String> {
    if state == journal_sum {
        Ok(())
    } else {
        Err(format!(
            "account state {state:?} differs from the sum of its journal {journal_sum:?}"
        ))
    }
}
