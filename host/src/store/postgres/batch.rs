//! What the PostgreSQL writer knows during one batch: the rows it read under the
//! batch's locks, and the rows its decisions wrote, kept here and sent in a few
//! statements at commit. It is the truth for the locked tenants and ids until the
//! commit releases the locks, and is forgotten then (other processes write too).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::ledger::{AccountState, Accounts, TransactionRecord, TransactionState};
use crate::model::{GrantRequest, Receipt};
use crate::store::with_balances;

/// A transaction as the batch knows it.
pub(super) struct KnownTransaction {
    pub record: TransactionRecord,
    pub change: Change,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Unchanged,
    /// Made by this batch: inserted at commit, in its final state.
    Inserted,
    /// Read, then settled or expired by this batch: updated at commit.
    Closed,
}

/// One journal line to append.
pub(super) struct JournalRow {
    pub transaction_id: String,
    pub tenant: String,
    pub balance: String,
    pub kind: &'static str,
    pub amount: i64,
    pub policy_digest: String,
    pub at_ms: i64,
}

pub(super) struct MarkRow {
    pub tenant: String,
    pub scope: String,
    pub key: String,
    pub transaction_id: String,
}

#[derive(Default)]
pub(super) struct Batch {
    /// The batch's clock reading when it claimed: lapsed holds are read as of then.
    pub now_ms: u64,
    /// Tenants this batch holds the lock of (their accounts and due holds are read).
    pub locked_tenants: HashSet<String>,
    /// Every account row of each locked tenant, as changed by the batch so far.
    pub accounts: HashMap<String, Accounts>,
    /// Accounts changed by the batch, written back at commit.
    pub dirty_accounts: HashSet<(String, String)>,
    /// Transactions read or made, by id; `None`: known not to exist.
    pub transactions: HashMap<String, Option<KnownTransaction>>,
    pub journal: Vec<JournalRow>,
    pub marks: Vec<MarkRow>,
    /// Grants read or made, by id; `None`: known not to exist.
    pub grants: HashMap<String, Option<GrantRequest>>,
    pub new_grants: Vec<(GrantRequest, i64)>,
}

impl Batch {
    /// The accounts of a locked tenant for `balances` (zero where none exists yet).
    pub fn accounts(&self, tenant: &str, balances: &[String]) -> Option<Accounts> {
        let rows = self.accounts.get(tenant)?;
        Some(with_balances(
            balances,
            rows.iter().map(|(name, state)| (name.clone(), *state)),
        ))
    }

    pub fn set_account(&mut self, tenant: &str, balance: &str, state: AccountState) {
        self.accounts
            .entry(tenant.to_owned())
            .or_default()
            .insert(balance.to_owned(), state);
        self.dirty_accounts
            .insert((tenant.to_owned(), balance.to_owned()));
    }

    /// Remembers a transaction read from the database (unless the batch changed it).
    pub fn remember(&mut self, record: TransactionRecord) {
        self.transactions
            .entry(record.id.clone())
            .or_insert_with(|| {
                Some(KnownTransaction {
                    record,
                    change: Change::Unchanged,
                })
            });
    }

    pub fn insert(&mut self, record: &TransactionRecord) {
        self.transactions.insert(
            record.id.clone(),
            Some(KnownTransaction {
                record: record.clone(),
                change: Change::Inserted,
            }),
        );
    }

    /// Closes a known transaction; false if the batch never read it.
    pub fn close(&mut self, id: &str, state: TransactionState, receipt: Option<&Receipt>) -> bool {
        let Some(Some(known)) = self.transactions.get_mut(id) else {
            return false;
        };
        known.record.state = state;
        known.record.held = Default::default();
        known.record.receipt = receipt.cloned();
        if known.change == Change::Unchanged {
            known.change = Change::Closed;
        }
        true
    }

    /// Open holds of the locked `tenant` lapsed at `now_ms`, earliest first.
    pub fn due(&self, tenant: &str, now_ms: u64, limit: usize) -> Vec<TransactionRecord> {
        let mut due: Vec<&TransactionRecord> = self
            .transactions
            .values()
            .flatten()
            .map(|known| &known.record)
            .filter(|record| {
                record.tenant == tenant
                    && record.state == TransactionState::Open
                    && record.expires_at_ms.is_some_and(|at| at <= now_ms)
            })
            .collect();
        due.sort_by_key(|record| record.expires_at_ms);
        due.into_iter().take(limit).cloned().collect()
    }

    /// Which of `keys` this batch marked for (`tenant`, `scope`).
    pub fn marked_here(&self, tenant: &str, scope: &str) -> HashSet<&str> {
        self.marks
            .iter()
            .filter(|mark| mark.tenant == tenant && mark.scope == scope)
            .map(|mark| mark.key.as_str())
            .collect()
    }

    /// The account rows to write back, by tenant and balance.
    pub fn dirty_account_rows(&self) -> BTreeMap<(&str, &str), AccountState> {
        self.dirty_accounts
            .iter()
            .filter_map(|(tenant, balance)| {
                let state = self.accounts.get(tenant)?.get(balance)?;
                Some(((tenant.as_str(), balance.as_str()), *state))
            })
            .collect()
    }
}
