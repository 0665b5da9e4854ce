//! Where the ledger is written. The meter's sequencer drives a [`LedgerWriter`] (one
//! writer, many decisions per store transaction: room for group commit); API reads go
//! through a [`LedgerReader`]. The store never calls the policy and decides nothing:
//! it persists what the ledger rules computed.

pub mod sqlite;

use crate::error::MeterError;
use crate::ledger::{Accounts, Entry, TransactionRecord, TransactionState};
use crate::model::{
    Amounts, GrantRequest, JournalEntry, PolicyActivation, Receipt, TenantBalances, TransactionView,
};
use crate::policy::{MarkLookup, PolicyDigest, PolicyInfo, sdk};

pub type StoreResult<T> = Result<T, MeterError>;

/// A policy the store remembers, so settles can run on the version that authorized.
#[derive(Debug, Clone)]
pub struct StoredPolicy {
    pub info: PolicyInfo,
    /// The component bytes; none for a natively linked policy.
    pub component: Option<Vec<u8>>,
}

/// Makes committed batches durable, from a thread of its own: the writer commits
/// without waiting for the disk and goes on deciding the next batch, while the answers
/// of the committed ones wait for this (group commit across batches).
pub trait LogSync: Send {
    /// When it returns, everything committed before the call is on disk.
    fn sync(&mut self) -> StoreResult<()>;
}

/// The write side, used by one thread. Every change happens between `begin` and
/// `commit`, many decisions per store transaction (group commit). A decision refused
/// for any reason but the store's writes nothing; a failed write fails the whole batch.
pub trait LedgerWriter: MarkLookup {
    fn begin(&self) -> StoreResult<()>;
    /// Commits the batch. It is durable, and its answers may be sent, once a
    /// [`LogSync`] from [`LedgerWriter::log_sync`] has synced after this returned.
    fn commit(&self) -> StoreResult<()>;
    /// A handle that makes the commits so far durable.
    fn log_sync(&self) -> StoreResult<Box<dyn LogSync>>;
    /// Undoes the open batch, if any, and forgets what the writer remembered of it.
    fn rollback(&self);

    fn transaction(&self, id: &str) -> StoreResult<Option<TransactionRecord>>;
    fn insert_transaction(&self, record: &TransactionRecord) -> StoreResult<()>;
    fn close_transaction(
        &self,
        id: &str,
        state: TransactionState,
        receipt: Option<&Receipt>,
    ) -> StoreResult<()>;
    /// Open transactions whose hold lapsed at or before `now_ms`; of one tenant, or all.
    fn due_expiries(
        &self,
        tenant: Option<&str>,
        now_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<TransactionRecord>>;

    /// The tenant's accounts for `balances` (zero where none exists yet).
    fn accounts(&self, tenant: &str, balances: &[String]) -> StoreResult<Accounts>;
    /// Appends `entries` to the journal and stores the accounts they lead to.
    fn post(&self, posting: Posting<'_>) -> StoreResult<()>;
    fn insert_marks(
        &self,
        tenant: &str,
        transaction_id: &str,
        marks: &[sdk::Mark],
    ) -> StoreResult<()>;

    fn grant(&self, grant_id: &str) -> StoreResult<Option<GrantRequest>>;
    fn insert_grant(&self, grant: &GrantRequest, at_ms: u64) -> StoreResult<()>;

    fn save_policy(
        &self,
        info: &PolicyInfo,
        component: Option<&[u8]>,
        at_ms: u64,
    ) -> StoreResult<()>;
    fn policy(&self, digest: &PolicyDigest) -> StoreResult<Option<StoredPolicy>>;
    /// The policies that authorized a transaction still open (they must stay loaded).
    fn open_policy_digests(&self) -> StoreResult<Vec<String>>;
    /// Appends to the activation history, unless `digest` is already the latest;
    /// returns whether it did.
    fn record_activation(&self, digest: &PolicyDigest, via: &str, at_ms: u64) -> StoreResult<bool>;
}

/// One decision's journal lines and resulting accounts.
#[derive(Debug, Clone, Copy)]
pub struct Posting<'a> {
    pub transaction_id: &'a str,
    pub tenant: &'a str,
    pub policy_digest: &'a PolicyDigest,
    pub entries: &'a [Entry],
    pub accounts: &'a Accounts,
    pub at_ms: u64,
}

/// The read side: thread-safe, sees committed data only.
pub trait LedgerReader: Send + Sync {
    fn balances(&self, tenant: &str, balances: &[String]) -> StoreResult<TenantBalances>;
    fn transaction(&self, id: &str) -> StoreResult<Option<TransactionView>>;
    /// The tenant's journal, oldest first, at most `limit` entries.
    fn journal(&self, tenant: &str, limit: usize) -> StoreResult<Vec<JournalEntry>>;
    /// Journal entries of every tenant with an id above `after_id`, oldest first.
    fn journal_after(&self, after_id: i64, limit: usize) -> StoreResult<Vec<JournalEntry>>;
    /// The most recently activated policy.
    fn latest_policy(&self) -> StoreResult<Option<StoredPolicy>>;
    /// The activation history, newest first.
    fn activations(&self, limit: usize) -> StoreResult<Vec<PolicyActivation>>;
    /// A policy the ledger has seen, by digest.
    fn stored_policy(&self, digest: &str) -> StoreResult<Option<StoredPolicy>>;
    /// Every account whose state differs from the sum of its journal, described.
    fn invariant_violations(&self) -> StoreResult<Vec<String>>;
}

/// Available credits per described balance, as the policy sees them.
pub fn available(accounts: &Accounts, balances: &[String]) -> Vec<sdk::BalanceAmount> {
    balances
        .iter()
        .map(|balance| {
            sdk::BalanceAmount::new(
                balance.clone(),
                accounts.get(balance).map_or(0, |account| account.available),
            )
        })
        .collect()
}

/// Available credits per described balance, for answers.
pub fn available_amounts(accounts: &Accounts, balances: &[String]) -> Amounts {
    balances
        .iter()
        .map(|balance| {
            (
                balance.clone(),
                accounts.get(balance).map_or(0, |account| account.available),
            )
        })
        .collect()
}
