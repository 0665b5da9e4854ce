//! Where the ledger is written. The sequencer drives a [`Store`]: load what a batch
//! needs, commit the batch's record, and cold reads of what memory does not hold; API
//! reads go through a [`LedgerReader`]. The store never calls the policy and decides
//! nothing: it persists the [`Batch`] records the decisions produced.
//!
//! Two stores implement them: [`sqlite`], the embedded default (one process owns the
//! ledger: a log of batches, views built from it, snapshots), and [`postgres`], shared by
//! replicas (every batch locks what it touches and applies its record to the tables).

pub mod empty;
pub mod postgres;
#[cfg(feature = "scratch")]
pub mod scratch;
pub mod sqlite;

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::error::MeterError;
use crate::ledger::lots::{LEGACY_LOT, Lot, LotId};
use crate::ledger::record::{Batch, LotTerms};
use crate::ledger::state::{GrantRecord, LiveState, TransactionRecord};
use crate::ledger::{AccountState, EntryKind};
use crate::model::{
    EventView, JournalEntry, PolicyActivation, PolicyRef, ReplicaView, ShadowReport,
    TenantBalances, TransactionView,
};
use crate::policy::PolicyDigest;

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
    /// The batch switches the active policy (or records the starting one).
    pub activation: bool,
    /// The batch sweeps lapsed holds of tenants no other process holds.
    pub sweep: bool,
    /// The batch reads or writes its tenants' refills or grants that take effect
    /// later, and may grant what is due of them (the sweep does too).
    pub schedules: bool,
}

/// A policy the store remembers, so settles can run on the version that authorized: its
/// name, version and digest (all else it says of itself comes from loading its bytes).
#[derive(Debug, Clone)]
pub struct StoredPolicy {
    pub policy: PolicyRef,
    /// The component bytes; none for a natively linked policy.
    pub component: Option<Vec<u8>>,
}

/// What decisions ask the store for what is not in memory: old transactions and grants
/// (idempotency forever), marks, stored policies, and (PostgreSQL) tenants a batch did
/// not claim. Called on the sequencer thread only.
pub trait ColdStore {
    fn transaction(&self, id: &str) -> StoreResult<Option<TransactionRecord>>;
    fn grant(&self, grant_id: &str) -> StoreResult<Option<GrantRecord>>;
    /// For each key, whether the tenant has the mark; keys without a NUL.
    fn marked(&self, tenant: &str, scope: &str, keys: &[&str]) -> StoreResult<Vec<bool>>;
    fn policy(&self, digest: &PolicyDigest) -> StoreResult<Option<StoredPolicy>>;
    /// The policy the ledger's latest activation made active.
    fn latest_activation(&self) -> StoreResult<Option<PolicyDigest>>;
    /// The policies open transactions were authorized on, when the state does not hold
    /// every open transaction (PostgreSQL); none: ask the state.
    fn open_policies(&self) -> StoreResult<Option<BTreeSet<[u8; 32]>>> {
        Ok(None)
    }
    /// Reads a tenant the state lacks into it (PostgreSQL: under the tenant's lock). On a
    /// whole state a tenant not there has never had an account: nothing to do.
    fn load_tenant(&self, tenant: &str, state: &mut LiveState) -> StoreResult<()>;
}

/// Makes committed batches durable, from a thread of its own (group commit across
/// batches), and hands them on once they are.
pub trait Durability: Send {
    /// Makes every batch committed so far durable, `batches` among them (in order):
    /// the embedded store appends them to its log and syncs it once; a store whose
    /// commit is durable (PostgreSQL) has nothing left to do.
    fn persist(&mut self, batches: &[std::sync::Arc<Batch>]) -> StoreResult<()>;
    /// A batch that is now durable, in order: the views follow it (SQLite).
    fn durable(&mut self, _batch: std::sync::Arc<Batch>) {}
}

/// The write side of a ledger, driven by the sequencer thread: load what a batch needs,
/// commit a batch, and the cold reads of [`ColdStore`].
pub trait Store: ColdStore {
    /// Before a batch's decisions: fills `state` with what they will read. The embedded
    /// store's state is whole already; a store shared with other processes locks what
    /// the batch claims and reads it into a fresh state.
    fn load(&self, claims: &BatchClaims, state: &mut LiveState, now_ms: u64) -> StoreResult<()>;
    /// Ends a batch: a store of tables applies its record (with the rows it touched as
    /// `state` has them after it) and commits; the embedded store leaves the record to
    /// its log thread ([`Durability::persist`]). Answers go out once that returned.
    fn commit(&self, batch: &Batch, state: &LiveState) -> StoreResult<()>;
    /// Gives up the batch in progress, if any.
    fn abort(&self);
    /// The handle the log thread makes batches durable with.
    fn durability(&self) -> StoreResult<Box<dyn Durability>>;
    /// The last batch the views applied: what memory may forget (none: the state holds
    /// one batch only, nothing to forget).
    fn applied_seq(&self) -> Option<u64> {
        None
    }
    /// Waits until the views applied every durable batch (SQLite: the sequencer's
    /// back-pressure when they lag too far).
    fn catch_up_views(&self) -> StoreResult<()> {
        Ok(())
    }
    /// Whether the store keeps snapshots of the live state (SQLite).
    fn takes_snapshots(&self) -> bool {
        false
    }
    /// Takes the next part of a snapshot of the live state.
    fn snapshot_part(&self, _part: SnapshotPart) -> StoreResult<()> {
        Ok(())
    }
}

/// A snapshot of the live state, in parts: see `docs/ledger.md`.
pub enum SnapshotPart {
    /// Replay starts after `start_seq`.
    Begin { start_seq: u64 },
    /// A slice of tenants, encoded.
    Tenants(Vec<u8>),
    /// More of that slice's tenants (their lots, their overdraft limits), encoded;
    /// none when they have none. Recovery tells the parts by their magic.
    Beside(Vec<u8>),
    /// The rest, encoded, and the end of the snapshot. Every part was copied from the
    /// state at or before batch `taken_at_seq`: the snapshot counts only once that batch
    /// is durable.
    Tail { bytes: Vec<u8>, taken_at_seq: u64 },
}

/// The live accounts at one point of the log, for the audit.
#[derive(Debug, Clone, Default)]
pub struct AuditPoint {
    pub accounts: Vec<((String, String), AccountState)>,
    /// Every lot, by `(tenant, balance)`.
    pub lots: Vec<((String, String), Lot)>,
    /// Entries with a lower id are the journal at this point.
    pub next_entry_id: u64,
    pub seq: u64,
}

/// A grant's terms as the stores' `grants` tables keep them: JSON, empty for a grant
/// made before lots (the legacy lot, default terms).
pub fn terms_json(lot: LotId, terms: &LotTerms) -> String {
    if lot == LEGACY_LOT {
        String::new()
    } else {
        serde_json::to_string(terms).unwrap_or_default()
    }
}

/// A grant read from a `grants` table, with its terms' JSON.
pub fn with_terms(grant: GrantRecord, terms_json: &str) -> StoreResult<GrantRecord> {
    Ok(GrantRecord {
        terms: terms_from_json(terms_json)?,
        ..grant
    })
}

/// Terms as [`terms_json`] wrote them.
pub fn terms_from_json(terms_json: &str) -> StoreResult<LotTerms> {
    if terms_json.is_empty() {
        return Ok(LotTerms::default());
    }
    serde_json::from_str(terms_json).map_err(|error| {
        MeterError::StoreCorrupt(format!("the terms of a stored grant do not read: {error}"))
    })
}

/// The read side: thread-safe, answers for acknowledged decisions.
pub trait LedgerReader: Send + Sync {
    fn transaction(&self, id: &str) -> StoreResult<Option<TransactionView>>;
    /// The tenant's journal, oldest first, at most `limit` entries.
    fn journal(&self, tenant: &str, limit: usize) -> StoreResult<Vec<JournalEntry>>;
    /// Journal entries of every tenant with an id above `after_id`, oldest first.
    fn journal_after(&self, after_id: i64, limit: usize) -> StoreResult<Vec<JournalEntry>>;
    /// The activation history, newest first.
    fn activations(&self, limit: usize) -> StoreResult<Vec<PolicyActivation>>;
    /// The id of the latest event (0 before the first).
    fn last_event_id(&self) -> StoreResult<u64>;
    /// The events after the one numbered `after`, oldest first, of one tenant or all:
    /// every event a later call can see has a larger id than every event seen before.
    fn events_after(
        &self,
        after: u64,
        limit: usize,
        tenant: Option<&str>,
    ) -> StoreResult<Vec<EventView>>;
    /// A policy the ledger has seen, by digest.
    fn stored_policy(&self, digest: &PolicyDigest) -> StoreResult<Option<StoredPolicy>>;
    /// A tenant's credits, when the store's tables are current (PostgreSQL); none when
    /// only the sequencer's live state is (SQLite).
    fn balances(&self, tenant: &str, balances: &[String]) -> StoreResult<Option<TenantBalances>>;
    /// Every account whose state differs from the sum of its journal: the live accounts
    /// at `live` (SQLite) against the journal up to there, or the tables (PostgreSQL).
    fn invariant_violations(&self, live: Option<AuditPoint>) -> StoreResult<Vec<String>>;
    /// How far the queryable views trail the log; none where the tables are current at
    /// every commit (PostgreSQL).
    fn views_lag(&self) -> Option<ViewsLag>;
    /// The replicas sharing this ledger that wrote a heartbeat since `seen_since_ms`, by
    /// name; none where a ledger has one process (SQLite).
    fn replicas(&self, seen_since_ms: i64) -> StoreResult<Option<Vec<ReplicaView>>> {
        let _ = seen_since_ms;
        Ok(None)
    }
    /// The shadow reports of the replicas other than `except` that run the shadow
    /// setting `setting` and wrote a heartbeat since `seen_since_ms`, by name; none where
    /// a ledger has one process (SQLite).
    fn shadow_reports(
        &self,
        setting: i64,
        except: &str,
        seen_since_ms: i64,
    ) -> StoreResult<Vec<(String, ShadowReport)>> {
        let _ = (setting, except, seen_since_ms);
        Ok(Vec::new())
    }
}

/// How far the views trail the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ViewsLag {
    /// Durable batches not applied to the views yet.
    pub behind_batches: u64,
    /// The longest a durable batch waited to be applied since the meter opened, in µs.
    pub worst_us: u64,
}

/// How the audit shows a transaction: its record and its journal lines.
pub fn transaction_view(
    record: &TransactionRecord,
    policy: PolicyRef,
    entries: Vec<JournalEntry>,
) -> TransactionView {
    TransactionView {
        transaction_id: record.id.clone(),
        tenant: record.tenant.clone(),
        state: record.state.as_str().to_owned(),
        operation: record.operation.clone(),
        policy_digest: policy.digest.clone(),
        created_at_ms: record.created_at_ms,
        expires_at_ms: record.expires_at_ms,
        held: crate::ledger::record::amounts(&record.held),
        authorization: record.authorization.answer(&record.id, policy.clone()),
        receipt: record
            .receipt
            .as_ref()
            .map(|receipt| receipt.answer(&record.id, policy, &record.authorization)),
        entries,
    }
}

/// The journal's total of one kind of entry on one account and lot (none: credits
/// granted before lots, and `open` entries). Wider than an amount: every grant of a
/// balance that was granted, voided and granted again near `i64::MAX` sums past it, and
/// the audit must still tell a sound ledger from a broken one.
pub struct JournalSum {
    pub tenant: String,
    pub balance: String,
    pub kind: String,
    pub lot: Option<LotId>,
    pub amount: i128,
}

/// Every account whose state differs from the sum of its journal, every lot whose
/// credits left differ from the sum of the entries naming it, and every account whose
/// open lots hold more than it has available (L1 of `docs/credits.md`), described; the
/// same check whichever store the rows come from.
pub fn invariant_violations(
    journal_sums: impl IntoIterator<Item = JournalSum>,
    accounts: impl IntoIterator<Item = ((String, String), AccountState)>,
    lots: impl IntoIterator<Item = ((String, String), Lot)>,
) -> Vec<String> {
    // Summed in i128: a sum of i64 entries of one kind can pass i64::MAX on a sound ledger
    // (see `JournalSum`); only the final sums must match the i64 states.
    let mut sums: std::collections::BTreeMap<(String, String), (i128, i128)> =
        std::collections::BTreeMap::new();
    let mut lot_sums: std::collections::BTreeMap<(String, String, LotId), i128> =
        std::collections::BTreeMap::new();
    let mut violations = Vec::new();
    for JournalSum {
        tenant,
        balance,
        kind,
        lot,
        amount,
    } in journal_sums
    {
        let Some(kind) = EntryKind::parse(&kind) else {
            violations.push(format!("{tenant}/{balance}: unknown entry kind '{kind}'"));
            continue;
        };
        let (available, held) = kind.effect_wide(amount);
        if let Some(lot) = lot {
            *lot_sums
                .entry((tenant.clone(), balance.clone(), lot))
                .or_default() += available;
        }
        let sum = sums.entry((tenant, balance)).or_default();
        sum.0 += available;
        sum.1 += held;
    }
    let mut in_lots: std::collections::BTreeMap<(String, String), i64> =
        std::collections::BTreeMap::new();
    for ((tenant, balance), lot) in lots {
        let sum = lot_sums
            .remove(&(tenant.clone(), balance.clone(), lot.id))
            .unwrap_or_default();
        if sum != i128::from(lot.remaining) {
            violations.push(format!(
                "lot {} of {tenant}/{balance} has {} left but its journal entries sum to {sum}",
                lot.id, lot.remaining
            ));
        }
        if lot.closed.is_none() {
            let sum = in_lots.entry((tenant, balance)).or_default();
            *sum = sum.saturating_add(lot.remaining);
        }
    }
    for ((tenant, balance, lot), sum) in lot_sums {
        violations.push(format!(
            "the journal moves {sum} credits of lot {lot} of {tenant}/{balance}, which the ledger does not have"
        ));
    }
    for (key, state) in accounts {
        let (available, held) = sums.remove(&key).unwrap_or_default();
        let sum = match (i64::try_from(available), i64::try_from(held)) {
            (Ok(available), Ok(held)) => Ok(AccountState { available, held }),
            _ => Err(format!(
                "its journal sums to {available} available and {held} held, past i64"
            )),
        };
        if let Err(why) = sum.and_then(|sum| crate::ledger::check_account(state, sum)) {
            violations.push(format!("{}/{}: {why}", key.0, key.1));
        }
        let held_in_lots = in_lots.remove(&key).unwrap_or_default();
        // L1: the open lots hold at most what is available; nothing while overdrawn.
        if held_in_lots > state.available.max(0) {
            violations.push(format!(
                "{}/{}: its open lots hold {held_in_lots} but it has {} available",
                key.0, key.1, state.available
            ));
        }
    }
    for ((tenant, balance), held_in_lots) in in_lots {
        violations.push(format!(
            "{tenant}/{balance}: lots hold {held_in_lots} credits of an account the ledger does not have"
        ));
    }
    for ((tenant, balance), (available, held)) in sums {
        if (available, held) != (0, 0) {
            violations.push(format!(
                "{tenant}/{balance}: journal {available} available and {held} held but no account"
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::{AccountState, JournalSum, Lot, StoreLocation, invariant_violations};

    fn sum(kind: &str, lot: Option<u64>, amount: i64) -> JournalSum {
        JournalSum {
            tenant: "acme".to_owned(),
            balance: "default".to_owned(),
            kind: kind.to_owned(),
            lot,
            amount: amount.into(),
        }
    }

    fn key() -> (String, String) {
        ("acme".to_owned(), "default".to_owned())
    }

    /// Two lots granted 10 and 5, 4 held from the first; a legacy grant of 3.
    #[test]
    fn the_audit_checks_each_lot_against_the_entries_naming_it() {
        let journal = || {
            vec![
                sum("grant", Some(1), 10),
                sum("grant", Some(2), 5),
                sum("grant", None, 3),
                sum("hold", Some(1), 4),
            ]
        };
        let account = AccountState {
            available: 14,
            held: 4,
        };
        let lots = |first: i64| {
            vec![
                (
                    key(),
                    Lot {
                        remaining: first,
                        ..Lot::new(1, 10, 0, None)
                    },
                ),
                (key(), Lot::new(2, 5, 0, None)),
            ]
        };
        assert_eq!(
            invariant_violations(journal(), [(key(), account)], lots(6)),
            Vec::<String>::new()
        );
        assert_eq!(
            invariant_violations(journal(), [(key(), account)], lots(7)),
            ["lot 1 of acme/default has 7 left but its journal entries sum to 6"]
        );
        // An entry naming a lot the ledger lacks, and lots holding more than the
        // account has.
        let mut more = journal();
        more.push(sum("charge", Some(9), 1));
        let poorer = AccountState {
            available: 10,
            held: 4,
        };
        let violations = invariant_violations(more, [(key(), poorer)], lots(6));
        assert!(
            violations
                .iter()
                .any(|v| v.contains("lot 9 of acme/default, which the ledger does not have")),
            "{violations:?}"
        );
        assert!(
            violations
                .iter()
                .any(|v| v.contains("its open lots hold 11 but it has 10 available")),
            "{violations:?}"
        );
    }

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
