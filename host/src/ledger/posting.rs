//! Posting rules: the journal entries of an authorize, a settle and an expiry.

use super::{Accounts, Entry, EntryKind, OverdraftLimits, apply, overdraft_limit, spendable};
use crate::model::Amounts;

/// The entries of an admitted authorize and the accounts after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizePosting {
    pub entries: Vec<Entry>,
    pub accounts: Accounts,
}

/// A balance the verdict needs more of than the tenant can spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub balance: String,
    pub needed: i64,
    pub available: i64,
    pub overdraft_limit: i64,
}

/// Holds and charges of an admission. Refuses (with the first short balance) any
/// verdict that would take an account below minus its overdraft limit, whatever the
/// policy decided.
pub fn post_authorize(
    accounts: &Accounts,
    limits: &OverdraftLimits,
    hold: &Amounts,
    charge: &Amounts,
) -> Result<AuthorizePosting, Shortfall> {
    let mut entries = Vec::new();
    for balance in union(hold, charge) {
        let held = hold.get(balance).copied().unwrap_or(0);
        let charged = charge.get(balance).copied().unwrap_or(0);
        let account = accounts.get(balance).copied().unwrap_or_default();
        let limit = overdraft_limit(limits, balance);
        let needed = held.saturating_add(charged);
        if needed > spendable(account, limit) {
            return Err(Shortfall {
                balance: balance.clone(),
                needed,
                available: account.available,
                overdraft_limit: limit,
            });
        }
        push(&mut entries, balance, EntryKind::Hold, held);
        push(&mut entries, balance, EntryKind::Charge, charged);
    }
    let mut after = accounts.clone();
    apply(&mut after, &entries, limits).map_err(|_| Shortfall {
        balance: String::new(),
        needed: 0,
        available: 0,
        overdraft_limit: 0,
    })?;
    Ok(AuthorizePosting {
        entries,
        accounts: after,
    })
}

/// The entries of a settle and what they mean for the receipt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SettlePosting {
    pub entries: Vec<Entry>,
    /// Captured from the hold plus charged from the available balance.
    pub charged: Amounts,
    pub released: Amounts,
    /// Asked for but not covered: the balance never goes below minus its overdraft
    /// limit.
    pub uncollected: Amounts,
    pub accounts: Accounts,
}

/// Settles `charge` against the transaction's `held` credits: capture from the hold
/// first, release what is left of it, and take any excess from the available balance
/// as far as it goes (its overdraft limit included).
pub fn post_settle(
    accounts: &Accounts,
    limits: &OverdraftLimits,
    held: &Amounts,
    charge: &Amounts,
) -> SettlePosting {
    let mut posting = SettlePosting::default();
    for balance in union(held, charge) {
        let hold = held.get(balance).copied().unwrap_or(0);
        let asked = charge.get(balance).copied().unwrap_or(0);
        let account = accounts.get(balance).copied().unwrap_or_default();
        let captured = asked.min(hold);
        let released = hold - captured;
        let excess = asked - captured;
        // An excess means the whole hold was captured: nothing is released first.
        let direct = excess.min(spendable(account, overdraft_limit(limits, balance)).max(0));
        push(&mut posting.entries, balance, EntryKind::Capture, captured);
        push(&mut posting.entries, balance, EntryKind::Release, released);
        push(&mut posting.entries, balance, EntryKind::Charge, direct);
        // captured + direct <= asked: no overflow.
        insert_positive(&mut posting.charged, balance, captured + direct);
        insert_positive(&mut posting.released, balance, released);
        insert_positive(&mut posting.uncollected, balance, excess - direct);
    }
    posting.accounts = accounts.clone();
    // Cannot fail: captures and releases are bounded by the hold, charges by what can
    // be spent.
    if let Err(reason) = apply(&mut posting.accounts, &posting.entries, limits) {
        tracing::error!(%reason, "settle posting broke an account invariant");
    }
    posting
}

/// Releases every held credit of a transaction whose hold outlived its TTL.
pub fn post_expiry(held: &Amounts) -> Vec<Entry> {
    let mut entries = Vec::new();
    for (balance, amount) in held {
        push(&mut entries, balance, EntryKind::Expire, *amount);
    }
    entries
}

fn push(entries: &mut Vec<Entry>, balance: &str, kind: EntryKind, amount: i64) {
    if amount > 0 {
        entries.push(Entry {
            balance: balance.to_owned(),
            kind,
            amount,
        });
    }
}

fn insert_positive(amounts: &mut Amounts, balance: &str, amount: i64) {
    if amount > 0 {
        amounts.insert(balance.to_owned(), amount);
    }
}

fn union<'a>(left: &'a Amounts, right: &'a Amounts) -> impl Iterator<Item = &'a String> {
    let mut names: Vec<&String> = left.keys().chain(right.keys()).collect();
    names.sort();
    names.dedup();
    names.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::AccountState;

    fn accounts(available: i64, held: i64) -> Accounts {
        Accounts::from([("default".to_owned(), AccountState { available, held })])
    }

    fn amounts(amount: i64) -> Amounts {
        Amounts::from([("default".to_owned(), amount)])
    }

    fn none() -> OverdraftLimits {
        OverdraftLimits::new()
    }

    fn limit(limit: i64) -> OverdraftLimits {
        OverdraftLimits::from([("default".to_owned(), limit)])
    }

    #[test]
    fn an_admission_never_takes_a_balance_below_zero() {
        let short = post_authorize(&accounts(2, 0), &none(), &amounts(2), &amounts(1));
        assert_eq!(
            short,
            Err(Shortfall {
                balance: "default".to_owned(),
                needed: 3,
                available: 2,
                overdraft_limit: 0,
            })
        );
    }

    #[test]
    fn an_admission_spends_down_to_minus_the_overdraft_limit_and_no_further() {
        let posting = post_authorize(&accounts(2, 0), &limit(5), &amounts(3), &amounts(4)).unwrap();
        assert_eq!(posting.accounts, accounts(-5, 3));
        let short = post_authorize(&posting.accounts, &limit(5), &Amounts::new(), &amounts(1));
        assert_eq!(short.map(|_| ()).unwrap_err().needed, 1);
    }

    #[test]
    fn a_lowered_limit_refuses_spending_and_lets_credits_come_back() {
        let mut state = accounts(-5, 3);
        let short = post_authorize(&state, &limit(2), &Amounts::new(), &amounts(1));
        assert!(short.is_err());
        // The hold's release adds credits: never refused for the floor.
        let posting = post_settle(&state, &limit(2), &amounts(3), &Amounts::new());
        assert_eq!(posting.accounts, accounts(-2, 0));
        state = posting.accounts;
        let charge = [Entry {
            balance: "default".to_owned(),
            kind: EntryKind::Charge,
            amount: 1,
        }];
        assert!(apply(&mut state, &charge, &limit(2)).is_err());
        assert_eq!(state, accounts(-2, 0), "a refused entry changes nothing");
    }

    #[test]
    fn an_admission_moves_held_credits_out_of_available() {
        let posting =
            post_authorize(&accounts(5, 0), &none(), &amounts(3), &Amounts::new()).unwrap();
        assert_eq!(posting.accounts, accounts(2, 3));
    }

    #[test]
    fn settle_captures_from_the_hold_and_releases_the_rest() {
        let posting = post_settle(&accounts(2, 3), &none(), &amounts(3), &amounts(1));
        assert_eq!(posting.charged, amounts(1));
        assert_eq!(posting.released, amounts(2));
        assert_eq!(posting.accounts, accounts(4, 0));
    }

    #[test]
    fn settle_beyond_the_hold_charges_available_credits_but_never_below_zero() {
        let posting = post_settle(&accounts(1, 2), &none(), &amounts(2), &amounts(5));
        assert_eq!(posting.charged, amounts(3));
        assert_eq!(posting.uncollected, amounts(2));
        assert_eq!(posting.accounts, accounts(0, 0));
    }

    #[test]
    fn settle_beyond_the_hold_overdraws_up_to_the_limit() {
        let posting = post_settle(&accounts(1, 2), &limit(1), &amounts(2), &amounts(5));
        assert_eq!(posting.charged, amounts(4));
        assert_eq!(posting.uncollected, amounts(1));
        assert_eq!(posting.accounts, accounts(-1, 0));
    }

    #[test]
    fn expiry_returns_every_held_credit() {
        let mut state = accounts(1, 4);
        apply(&mut state, &post_expiry(&amounts(4)), &none()).unwrap();
        assert_eq!(state, accounts(5, 0));
    }
}
