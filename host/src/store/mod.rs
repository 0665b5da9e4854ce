//! Where the ledger is written. The meter's sequencer drives a [`LedgerWriter`] (one
//! writer, many decisions per store transaction: room for group commit); API reads go
//! through a [`LedgerReader`]. The store never calls the policy and decides nothing:
//! it persists what the ledger rules computed.
//!
//! Two stores implement them: [`sqlite`], the embedded default (one process owns the
//! file), and [`postgres`], shared by replicas (every batch locks what it touches).

pub mod postgres;
pub mod scratch;
pub mod sqlite;

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::error::MeterError;
use crate::ledger::{
    AccountState, Accounts, Entry, EntryKind, TransactionRecord, TransactionState,
};
use crate::model::{
    Amounts, GrantRequest, JournalEntry, PolicyActivation, Receipt, TenantBalances, TransactionView,
};
use crate::policy::{MarkLookup, PolicyDigest, PolicyInfo, sdk};

pub type StoreResult<T> = Result<T, MeterError>;

/// Where a ledger lives: a SQLite file, or a PostgreSQL database several gateway
/// processes share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    /// A libpq-style URL (`postgres://user@host:port/database?options=...`).
    Postgres(String),
}

impl StoreLocation {
    /// `postgres://` and `postgresql://` URLs name PostgreSQL; `sqlite://PATH` and any
    /// other text name a SQLite file.
    pub fn parse(text: &str) -> Self {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            StoreLocation::Postgres(text.to_owned())
        } else {
            StoreLocation::Sqlite(PathBuf::from(
                text.strip_prefix("sqlite://").unwrap_or(text),
            ))
        }
    }

    /// How logs and errors name it: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Sqlite(path) => path.display().to_string(),
            StoreLocation::Postgres(url) => postgres::redact(url),
        }
    }
}

impl From<PathBuf> for StoreLocation {
    fn from(path: PathBuf) -> Self {
        StoreLocation::Sqlite(path)
    }
}

impl From<&std::path::Path> for StoreLocation {
    fn from(path: &std::path::Path) -> Self {
        StoreLocation::Sqlite(path.to_path_buf())
    }
}

impl From<&PathBuf> for StoreLocation {
    fn from(path: &PathBuf) -> Self {
        StoreLocation::Sqlite(path.clone())
    }
}

impl From<&str> for StoreLocation {
    fn from(text: &str) -> Self {
        StoreLocation::parse(text)
    }
}

impl std::str::FromStr for StoreLocation {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(StoreLocation::parse(text))
    }
}

/// What one batch's decisions will touch, known before any of them runs, so a store
/// shared by several processes can lock all of it at once and in one global order
/// (no two batches can then wait on each other).
#[derive(Debug, Default, Clone)]
pub struct BatchClaims {
    pub tenants: BTreeSet<String>,
    /// Ids given to authorize: a retry on another process must wait for the first.
    pub transaction_ids: BTreeSet<String>,
    /// Ids to settle: their tenants are looked up by the store.
    pub settled_ids: BTreeSet<String>,
    pub grant_ids: BTreeSet<String>,
    /// The batch switches the active policy.
    pub activation: bool,
}

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
    /// Called once after `begin`, before the batch's decisions: a store other processes
    /// write too locks what the batch will touch and reads it ahead; the embedded store
    /// needs nothing (`begin` took the file's write lock).
    fn claim(&self, _claims: &BatchClaims, _now_ms: u64) -> StoreResult<()> {
        Ok(())
    }
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

impl Posting<'_> {
    /// The state the posting leads `balance` to.
    pub fn account(&self, balance: &str) -> StoreResult<AccountState> {
        self.accounts.get(balance).copied().ok_or_else(|| {
            MeterError::StoreUnavailable(format!("posting lacks the account '{balance}'"))
        })
    }
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

/// A tenant's stored account rows, with a zero account for each of `balances` that has
/// none yet.
pub fn with_balances(
    balances: &[String],
    rows: impl IntoIterator<Item = (String, AccountState)>,
) -> Accounts {
    let mut accounts: Accounts = balances
        .iter()
        .map(|balance| (balance.clone(), AccountState::default()))
        .collect();
    accounts.extend(rows);
    accounts
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

/// How the audit shows a transaction: its record and its journal lines.
pub fn transaction_view(record: TransactionRecord, entries: Vec<JournalEntry>) -> TransactionView {
    TransactionView {
        transaction_id: record.id,
        tenant: record.tenant,
        state: record.state.as_str().to_owned(),
        operation: record.request.operation.clone(),
        policy_digest: record.policy_digest,
        created_at_ms: record.created_at_ms,
        expires_at_ms: record.expires_at_ms,
        held: record.held,
        authorization: record.authorization,
        receipt: record.receipt,
        entries,
    }
}

/// The journal's total of one kind of entry on one account.
pub struct JournalSum {
    pub tenant: String,
    pub balance: String,
    pub kind: String,
    pub amount: i64,
}

/// Every account whose state differs from the sum of its journal, described; the
/// same check whichever store the rows come from.
pub fn invariant_violations(
    journal_sums: impl IntoIterator<Item = JournalSum>,
    accounts: impl IntoIterator<Item = ((String, String), AccountState)>,
) -> Vec<String> {
    let mut sums: std::collections::BTreeMap<(String, String), AccountState> =
        std::collections::BTreeMap::new();
    let mut violations = Vec::new();
    for JournalSum {
        tenant,
        balance,
        kind,
        amount,
    } in journal_sums
    {
        let Some(kind) = EntryKind::parse(&kind) else {
            violations.push(format!("{tenant}/{balance}: unknown entry kind '{kind}'"));
            continue;
        };
        let (available, held) = kind.effect(amount);
        let label = format!("{tenant}/{balance}");
        let sum = sums.entry((tenant, balance)).or_default();
        match (
            sum.available.checked_add(available),
            sum.held.checked_add(held),
        ) {
            (Some(available), Some(held)) => *sum = AccountState { available, held },
            _ => violations.push(format!("{label}: the journal sums past i64")),
        }
    }
    for (key, state) in accounts {
        let sum = sums.remove(&key).unwrap_or_default();
        if let Err(why) = crate::ledger::check_account(state, sum) {
            violations.push(format!("{}/{}: {why}", key.0, key.1));
        }
    }
    for ((tenant, balance), sum) in sums {
        if sum != AccountState::default() {
            violations.push(format!(
                "{tenant}/{balance}: journal {sum:?} but no account"
            ));
        }
    }
    violations
}

/// A reader of the ledger at `location` (created, or its schema brought up to date, if
/// needed), for commands that only read it.
pub fn open_reader(location: &StoreLocation) -> StoreResult<Box<dyn LedgerReader>> {
    Ok(match location {
        StoreLocation::Sqlite(path) => Box::new(sqlite::open(path)?.1),
        StoreLocation::Postgres(url) => Box::new(postgres::open_reader(url)?),
    })
}

#[cfg(test)]
mod tests {
    use super::StoreLocation;

    #[test]
    fn postgres_urls_select_postgresql_and_anything_else_is_a_sqlite_file() {
        let cases = [
            ("postgres://app@db:5432/credits", "postgres"),
            ("postgresql://app@db/credits", "postgres"),
            ("sqlite://data/ledger.db", "data/ledger.db"),
            ("creditgate.db", "creditgate.db"),
            (
                "/var/lib/creditgate/postgres.db",
                "/var/lib/creditgate/postgres.db",
            ),
        ];
        for (text, expected) in cases {
            match StoreLocation::parse(text) {
                StoreLocation::Postgres(url) => {
                    assert_eq!((expected, url.as_str()), ("postgres", text))
                }
                StoreLocation::Sqlite(path) => assert_eq!(path.to_str(), Some(expected), "{text}"),
            }
        }
    }
}
