//! What the single writer remembers between decisions, so the hot path does not
//! re-read what it wrote: account states (written back once per batch) and open
//! transactions (read back by their settle). It is the truth only while no other
//! connection writes the file; the writer checks `PRAGMA data_version` at the start of
//! every batch and forgets everything when someone else committed.

use std::collections::{HashMap, HashSet};

use crate::ledger::{AccountState, Accounts, TransactionRecord};
use crate::store::with_balances;

/// Tenants whose accounts are remembered; past this, the cache starts over (a miss
/// costs one indexed read).
const CACHED_TENANTS_MAX: usize = 1 << 20;
/// Open transactions remembered for their settle; past this, settles read the file.
const CACHED_OPEN_MAX: usize = 1 << 16;

#[derive(Default)]
pub struct WriterCache {
    /// The file's `data_version` when this cache was last known true.
    pub data_version: Option<i64>,
    /// Balance names, interned: accounts refer to them by index.
    balance_names: Vec<String>,
    /// Every account row of a tenant, as (balance index, state).
    accounts: HashMap<Box<str>, Vec<(u32, AccountState)>>,
    /// Accounts changed in this batch, written back before the commit.
    dirty: HashSet<(Box<str>, u32)>,
    open: HashMap<String, TransactionRecord>,
    /// No open hold lapses before this instant; `None` when unknown.
    pub expiry_floor_ms: Option<u64>,
}

impl WriterCache {
    /// Forgets everything: after a rollback, or a write by another connection.
    pub fn clear(&mut self) {
        let data_version = self.data_version;
        *self = Self {
            balance_names: std::mem::take(&mut self.balance_names),
            data_version,
            ..Self::default()
        };
    }

    fn balance_index(&mut self, name: &str) -> u32 {
        match self.balance_names.iter().position(|known| known == name) {
            Some(index) => index as u32,
            None => {
                self.balance_names.push(name.to_owned());
                (self.balance_names.len() - 1) as u32
            }
        }
    }

    /// The tenant's accounts for `balances`, if the tenant is remembered.
    pub fn accounts(&self, tenant: &str, balances: &[String]) -> Option<Accounts> {
        let rows = self.accounts.get(tenant)?;
        Some(with_balances(
            balances,
            rows.iter().filter_map(|(index, state)| {
                let name = self.balance_names.get(*index as usize)?;
                Some((name.clone(), *state))
            }),
        ))
    }

    /// Remembers every account row of a tenant, as read from the file.
    pub fn remember_accounts(&mut self, tenant: &str, rows: &Accounts) {
        let rows = rows
            .iter()
            .map(|(balance, state)| (self.balance_index(balance), *state))
            .collect();
        self.accounts.insert(tenant.into(), rows);
    }

    /// Records a new state of one account of a remembered tenant, to be written back
    /// before the commit; false when the tenant is not remembered (write it through).
    pub fn set_account(&mut self, tenant: &str, balance: &str, state: AccountState) -> bool {
        let index = self.balance_index(balance);
        let Some(rows) = self.accounts.get_mut(tenant) else {
            return false;
        };
        match rows.iter_mut().find(|(known, _)| *known == index) {
            Some((_, known)) => *known = state,
            None => rows.push((index, state)),
        }
        self.dirty.insert((tenant.into(), index));
        true
    }

    /// The accounts changed since the last call, with their states.
    pub fn take_dirty(&mut self) -> Vec<(Box<str>, &str, AccountState)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|(tenant, index)| {
                let state = self
                    .accounts
                    .get(&tenant)?
                    .iter()
                    .find(|(known, _)| *known == index)?
                    .1;
                let name = self.balance_names.get(index as usize)?;
                Some((tenant, name.as_str(), state))
            })
            .collect()
    }

    /// Starts over when too many tenants are remembered; call with nothing dirty.
    pub fn trim(&mut self) {
        if self.accounts.len() > CACHED_TENANTS_MAX {
            self.accounts.clear();
        }
    }

    pub fn open_transaction(&self, id: &str) -> Option<&TransactionRecord> {
        self.open.get(id)
    }

    pub fn remember_open(&mut self, record: &TransactionRecord) {
        if self.open.len() < CACHED_OPEN_MAX {
            self.open.insert(record.id.clone(), record.clone());
        }
    }

    pub fn forget_open(&mut self, id: &str) {
        self.open.remove(id);
    }

    /// Lowers the expiry floor for a new hold.
    pub fn note_expiry(&mut self, expires_at_ms: u64) {
        if let Some(floor) = &mut self.expiry_floor_ms {
            *floor = (*floor).min(expires_at_ms);
        }
    }
}
