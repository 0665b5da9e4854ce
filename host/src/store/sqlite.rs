//! The embedded default: one SQLite file on disk, in WAL mode with `synchronous=FULL`,
//! so a commit is on disk before its answers are sent.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{LedgerReader, LedgerWriter, Posting, StoreResult, StoredPolicy};
use crate::error::MeterError;
use crate::ledger::{AccountState, Accounts, EntryKind, TransactionRecord, TransactionState};
use crate::model::PolicyActivation;
use crate::model::{
    Amounts, AuthorizeRequest, GrantRequest, JournalEntry, Receipt, TenantBalances, TransactionView,
};
use crate::policy::{MarkLookup, PolicyDigest, PolicyInfo, sdk};

/// Schema migrations, applied in order at open; `PRAGMA user_version` counts them.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE accounts (
    tenant    TEXT NOT NULL,
    balance   TEXT NOT NULL,
    available INTEGER NOT NULL CHECK (available >= 0),
    held      INTEGER NOT NULL CHECK (held >= 0),
    PRIMARY KEY (tenant, balance)
) WITHOUT ROWID;

CREATE TABLE transactions (
    id                 TEXT PRIMARY KEY,
    tenant             TEXT NOT NULL,
    state              TEXT NOT NULL,
    fingerprint        TEXT NOT NULL,
    policy_digest      TEXT NOT NULL,
    request_json       TEXT NOT NULL,
    authorization_json TEXT NOT NULL,
    held_json          TEXT NOT NULL,
    created_at_ms      INTEGER NOT NULL,
    expires_at_ms      INTEGER,
    receipt_json       TEXT
);
CREATE INDEX transactions_open_by_expiry ON transactions (expires_at_ms)
    WHERE state = 'open' AND expires_at_ms IS NOT NULL;
CREATE INDEX transactions_open_by_tenant ON transactions (tenant, expires_at_ms)
    WHERE state = 'open' AND expires_at_ms IS NOT NULL;

CREATE TABLE journal (
    id             INTEGER PRIMARY KEY,
    transaction_id TEXT NOT NULL,
    tenant         TEXT NOT NULL,
    balance        TEXT NOT NULL,
    kind           TEXT NOT NULL,
    amount         INTEGER NOT NULL CHECK (amount > 0),
    policy_digest  TEXT NOT NULL,
    at_ms          INTEGER NOT NULL
);
CREATE INDEX journal_by_transaction ON journal (transaction_id);
CREATE INDEX journal_by_account ON journal (tenant, balance);

CREATE TABLE marks (
    tenant         TEXT NOT NULL,
    scope          TEXT NOT NULL,
    key            TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    PRIMARY KEY (tenant, scope, key)
) WITHOUT ROWID;

CREATE TABLE grants (
    grant_id TEXT PRIMARY KEY,
    tenant   TEXT NOT NULL,
    balance  TEXT NOT NULL,
    amount   INTEGER NOT NULL,
    at_ms    INTEGER NOT NULL
);

CREATE TABLE policies (
    digest          TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    version         TEXT NOT NULL,
    balances_json   TEXT NOT NULL,
    hold_ttl_ms     INTEGER NOT NULL,
    component       BLOB,
    activated_at_ms INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE policy_activations (
    id              INTEGER PRIMARY KEY,
    digest          TEXT NOT NULL REFERENCES policies (digest),
    via             TEXT NOT NULL,
    activated_at_ms INTEGER NOT NULL
);
INSERT INTO policy_activations (digest, via, activated_at_ms)
    SELECT digest, 'migration', activated_at_ms FROM policies ORDER BY activated_at_ms;
"#,
];

fn open_connection(path: &Path) -> StoreResult<Connection> {
    let connection = Connection::open(path).map_err(|error| {
        MeterError::StoreUnavailable(format!("cannot open {}: {error}", path.display()))
    })?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: every commit is fsynced before the meter acknowledges it.
    connection.pragma_update(None, "synchronous", "FULL")?;
    Ok(connection)
}

fn migrate(connection: &Connection) -> StoreResult<()> {
    let applied: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(MeterError::StoreUnavailable(format!(
            "the database has schema version {applied}, newer than this build's {}; upgrade creditgate",
            MIGRATIONS.len()
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        connection.execute_batch(&format!(
            "BEGIN IMMEDIATE; {migration}; PRAGMA user_version = {}; COMMIT;",
            index + 1
        ))?;
    }
    Ok(())
}

/// Opens (creating if needed) the ledger file: its writer and its reader.
pub fn open(path: impl AsRef<Path>) -> StoreResult<(SqliteWriter, SqliteReader)> {
    let path = path.as_ref().to_path_buf();
    let connection = open_connection(&path)?;
    migrate(&connection)?;
    Ok((
        SqliteWriter { connection },
        SqliteReader {
            path,
            idle: Mutex::new(Vec::new()),
        },
    ))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn to_json<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value)
        .map_err(|error| MeterError::StoreUnavailable(format!("cannot encode a record: {error}")))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(error))
    })
}

const TRANSACTION_COLUMNS: &str = "id, tenant, state, fingerprint, policy_digest, request_json, \
     authorization_json, held_json, created_at_ms, expires_at_ms, receipt_json";

fn transaction_from_row(row: &Row<'_>) -> rusqlite::Result<TransactionRecord> {
    let state: String = row.get(2)?;
    let receipt: Option<String> = row.get(10)?;
    Ok(TransactionRecord {
        id: row.get(0)?,
        tenant: row.get(1)?,
        state: TransactionState::parse(&state).unwrap_or(TransactionState::Open),
        fingerprint: row.get(3)?,
        policy_digest: row.get(4)?,
        request: from_json::<AuthorizeRequest>(&row.get::<_, String>(5)?)?,
        authorization: from_json(&row.get::<_, String>(6)?)?,
        held: from_json::<Amounts>(&row.get::<_, String>(7)?)?,
        created_at_ms: to_u64(row.get(8)?),
        expires_at_ms: row.get::<_, Option<i64>>(9)?.map(to_u64),
        receipt: receipt.as_deref().map(from_json::<Receipt>).transpose()?,
    })
}

fn policy_from_row(row: &Row<'_>) -> rusqlite::Result<StoredPolicy> {
    Ok(StoredPolicy {
        info: PolicyInfo {
            digest: PolicyDigest::from_stored(row.get(0)?),
            name: row.get(1)?,
            version: row.get(2)?,
            balances: from_json(&row.get::<_, String>(3)?)?,
            hold_ttl_ms: to_u64(row.get(4)?),
        },
        component: row.get(5)?,
    })
}

const POLICY_COLUMNS: &str = "digest, name, version, balances_json, hold_ttl_ms, component";

/// The single writer. Not `Sync`: it lives on the meter's sequencer thread.
pub struct SqliteWriter {
    connection: Connection,
}

impl MarkLookup for SqliteWriter {
    fn marked(&self, tenant: &str, scope: &str, keys: &[String]) -> Result<Vec<bool>, MeterError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT 1 FROM marks WHERE tenant = ?1 AND scope = ?2 AND key = ?3")?;
        keys.iter()
            .map(|key| Ok(statement.exists(params![tenant, scope, key])?))
            .collect()
    }
}

impl LedgerWriter for SqliteWriter {
    fn begin(&self) -> StoreResult<()> {
        Ok(self.connection.execute_batch("BEGIN IMMEDIATE")?)
    }

    fn commit(&self) -> StoreResult<()> {
        Ok(self.connection.execute_batch("COMMIT")?)
    }

    fn rollback(&self) {
        if let Err(error) = self.connection.execute_batch("ROLLBACK") {
            tracing::warn!(%error, "rollback failed (the transaction may already be closed)");
        }
    }

    fn savepoint(&self) -> StoreResult<()> {
        Ok(self.connection.execute_batch("SAVEPOINT decision")?)
    }

    fn release_savepoint(&self) -> StoreResult<()> {
        Ok(self.connection.execute_batch("RELEASE decision")?)
    }

    fn rollback_to_savepoint(&self) -> StoreResult<()> {
        Ok(self
            .connection
            .execute_batch("ROLLBACK TO decision; RELEASE decision")?)
    }

    fn transaction(&self, id: &str) -> StoreResult<Option<TransactionRecord>> {
        let mut statement = self.connection.prepare_cached(&format!(
            "SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE id = ?1"
        ))?;
        Ok(statement
            .query_row(params![id], transaction_from_row)
            .optional()?)
    }

    fn insert_transaction(&self, record: &TransactionRecord) -> StoreResult<()> {
        let mut statement = self.connection.prepare_cached(&format!(
            "INSERT INTO transactions ({TRANSACTION_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        ))?;
        statement.execute(params![
            record.id,
            record.tenant,
            record.state.as_str(),
            record.fingerprint,
            record.policy_digest,
            to_json(&record.request)?,
            to_json(&record.authorization)?,
            to_json(&record.held)?,
            to_i64(record.created_at_ms),
            record.expires_at_ms.map(to_i64),
            record.receipt.as_ref().map(to_json).transpose()?,
        ])?;
        Ok(())
    }

    fn close_transaction(
        &self,
        id: &str,
        state: TransactionState,
        receipt: Option<&Receipt>,
    ) -> StoreResult<()> {
        let mut statement = self.connection.prepare_cached(
            "UPDATE transactions SET state = ?2, held_json = '{}', receipt_json = ?3 WHERE id = ?1",
        )?;
        statement.execute(params![
            id,
            state.as_str(),
            receipt.map(to_json).transpose()?
        ])?;
        Ok(())
    }

    fn due_expiries(
        &self,
        tenant: Option<&str>,
        now_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<TransactionRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let now_ms = to_i64(now_ms);
        let rows = match tenant {
            Some(tenant) => {
                let mut statement = self.connection.prepare_cached(&format!(
                    "SELECT {TRANSACTION_COLUMNS} FROM transactions \
                     WHERE tenant = ?1 AND state = 'open' AND expires_at_ms IS NOT NULL \
                     AND expires_at_ms <= ?2 ORDER BY expires_at_ms LIMIT ?3"
                ))?;
                statement
                    .query_map(params![tenant, now_ms, limit], transaction_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            }
            None => {
                let mut statement = self.connection.prepare_cached(&format!(
                    "SELECT {TRANSACTION_COLUMNS} FROM transactions \
                     WHERE state = 'open' AND expires_at_ms IS NOT NULL \
                     AND expires_at_ms <= ?1 ORDER BY expires_at_ms LIMIT ?2"
                ))?;
                statement
                    .query_map(params![now_ms, limit], transaction_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            }
        };
        Ok(rows)
    }

    fn accounts(&self, tenant: &str, balances: &[String]) -> StoreResult<Accounts> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT balance, available, held FROM accounts WHERE tenant = ?1")?;
        let mut accounts: Accounts = balances
            .iter()
            .map(|balance| (balance.clone(), AccountState::default()))
            .collect();
        let rows = statement.query_map(params![tenant], |row| {
            Ok((
                row.get::<_, String>(0)?,
                AccountState {
                    available: row.get(1)?,
                    held: row.get(2)?,
                },
            ))
        })?;
        for row in rows {
            let (balance, state) = row?;
            accounts.insert(balance, state);
        }
        Ok(accounts)
    }

    fn post(&self, posting: Posting<'_>) -> StoreResult<()> {
        let mut journal = self.connection.prepare_cached(
            "INSERT INTO journal (transaction_id, tenant, balance, kind, amount, policy_digest, at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut account = self.connection.prepare_cached(
            "INSERT INTO accounts (tenant, balance, available, held) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (tenant, balance) DO UPDATE SET available = excluded.available, held = excluded.held",
        )?;
        let mut touched: Vec<&str> = Vec::with_capacity(posting.entries.len());
        for entry in posting.entries {
            journal.execute(params![
                posting.transaction_id,
                posting.tenant,
                entry.balance,
                entry.kind.as_str(),
                entry.amount,
                posting.policy_digest.as_str(),
                to_i64(posting.at_ms),
            ])?;
            if !touched.contains(&entry.balance.as_str()) {
                touched.push(&entry.balance);
            }
        }
        for balance in touched {
            let state = posting.accounts.get(balance).copied().ok_or_else(|| {
                MeterError::StoreUnavailable(format!("posting lacks the account '{balance}'"))
            })?;
            account.execute(params![
                posting.tenant,
                balance,
                state.available,
                state.held
            ])?;
        }
        Ok(())
    }

    fn insert_marks(
        &self,
        tenant: &str,
        transaction_id: &str,
        marks: &[sdk::Mark],
    ) -> StoreResult<()> {
        let mut statement = self.connection.prepare_cached(
            "INSERT OR IGNORE INTO marks (tenant, scope, key, transaction_id) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for mark in marks {
            statement.execute(params![tenant, mark.scope, mark.key, transaction_id])?;
        }
        Ok(())
    }

    fn grant(&self, grant_id: &str) -> StoreResult<Option<GrantRequest>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT grant_id, tenant, balance, amount FROM grants WHERE grant_id = ?1",
        )?;
        Ok(statement
            .query_row(params![grant_id], |row| {
                Ok(GrantRequest {
                    grant_id: row.get(0)?,
                    tenant: row.get(1)?,
                    balance: row.get(2)?,
                    amount: row.get(3)?,
                })
            })
            .optional()?)
    }

    fn insert_grant(&self, grant: &GrantRequest, at_ms: u64) -> StoreResult<()> {
        let mut statement = self.connection.prepare_cached(
            "INSERT INTO grants (grant_id, tenant, balance, amount, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        statement.execute(params![
            grant.grant_id,
            grant.tenant,
            grant.balance,
            grant.amount,
            to_i64(at_ms)
        ])?;
        Ok(())
    }

    fn save_policy(
        &self,
        info: &PolicyInfo,
        component: Option<&[u8]>,
        at_ms: u64,
    ) -> StoreResult<()> {
        let mut statement = self.connection.prepare_cached(&format!(
            "INSERT INTO policies ({POLICY_COLUMNS}, activated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (digest) DO UPDATE SET activated_at_ms = excluded.activated_at_ms"
        ))?;
        statement.execute(params![
            info.digest.as_str(),
            info.name,
            info.version,
            to_json(&info.balances)?,
            to_i64(info.hold_ttl_ms),
            component,
            to_i64(at_ms),
        ])?;
        Ok(())
    }

    fn open_policy_digests(&self) -> StoreResult<Vec<String>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT DISTINCT policy_digest FROM transactions WHERE state = 'open'",
        )?;
        Ok(statement
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?)
    }

    fn record_activation(&self, digest: &PolicyDigest, via: &str, at_ms: u64) -> StoreResult<bool> {
        let current: Option<String> = self
            .connection
            .prepare_cached("SELECT digest FROM policy_activations ORDER BY id DESC LIMIT 1")?
            .query_row([], |row| row.get(0))
            .optional()?;
        if current.as_deref() == Some(digest.as_str()) {
            return Ok(false);
        }
        self.connection
            .prepare_cached(
                "INSERT INTO policy_activations (digest, via, activated_at_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![digest.as_str(), via, to_i64(at_ms)])?;
        Ok(true)
    }

    fn policy(&self, digest: &PolicyDigest) -> StoreResult<Option<StoredPolicy>> {
        let mut statement = self.connection.prepare_cached(&format!(
            "SELECT {POLICY_COLUMNS} FROM policies WHERE digest = ?1"
        ))?;
        Ok(statement
            .query_row(params![digest.as_str()], policy_from_row)
            .optional()?)
    }
}

/// Read-only connections, pooled; WAL lets them read while the writer writes.
pub struct SqliteReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl SqliteReader {
    fn with_connection<T>(
        &self,
        read: impl FnOnce(&Connection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let connection = match pooled {
            Some(connection) => connection,
            None => {
                let connection = open_connection(&self.path)?;
                connection.pragma_update(None, "query_only", true)?;
                connection
            }
        };
        let result = read(&connection);
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(connection);
        }
        result
    }
}

fn journal_from_row(row: &Row<'_>) -> rusqlite::Result<JournalEntry> {
    Ok(JournalEntry {
        id: row.get(0)?,
        transaction_id: row.get(1)?,
        tenant: row.get(2)?,
        balance: row.get(3)?,
        kind: row.get(4)?,
        amount: row.get(5)?,
        policy_digest: row.get(6)?,
        at_ms: to_u64(row.get(7)?),
    })
}

const JOURNAL_COLUMNS: &str =
    "id, transaction_id, tenant, balance, kind, amount, policy_digest, at_ms";

impl LedgerReader for SqliteReader {
    fn balances(&self, tenant: &str, balances: &[String]) -> StoreResult<TenantBalances> {
        self.with_connection(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT balance, available, held FROM accounts WHERE tenant = ?1",
            )?;
            let mut answer = TenantBalances {
                tenant: tenant.to_owned(),
                balances: balances.iter().map(|name| (name.clone(), 0)).collect(),
                held: balances.iter().map(|name| (name.clone(), 0)).collect(),
            };
            let rows = statement.query_map(params![tenant], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (balance, available, held) = row?;
                answer.balances.insert(balance.clone(), available);
                answer.held.insert(balance, held);
            }
            Ok(answer)
        })
    }

    fn transaction(&self, id: &str) -> StoreResult<Option<TransactionView>> {
        self.with_connection(|connection| {
            let record = connection
                .prepare_cached(&format!(
                    "SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE id = ?1"
                ))?
                .query_row(params![id], transaction_from_row)
                .optional()?;
            let Some(record) = record else {
                return Ok(None);
            };
            let entries = connection
                .prepare_cached(&format!(
                    "SELECT {JOURNAL_COLUMNS} FROM journal WHERE transaction_id = ?1 ORDER BY id"
                ))?
                .query_map(params![id], journal_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(TransactionView {
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
            }))
        })
    }

    fn journal(&self, tenant: &str, limit: usize) -> StoreResult<Vec<JournalEntry>> {
        self.with_connection(|connection| {
            Ok(connection
                .prepare_cached(&format!(
                    "SELECT {JOURNAL_COLUMNS} FROM journal WHERE tenant = ?1 ORDER BY id LIMIT ?2"
                ))?
                .query_map(
                    params![tenant, i64::try_from(limit).unwrap_or(i64::MAX)],
                    journal_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn journal_after(&self, after_id: i64, limit: usize) -> StoreResult<Vec<JournalEntry>> {
        self.with_connection(|connection| {
            Ok(connection
                .prepare_cached(&format!(
                    "SELECT {JOURNAL_COLUMNS} FROM journal WHERE id > ?1 ORDER BY id LIMIT ?2"
                ))?
                .query_map(
                    params![after_id, i64::try_from(limit).unwrap_or(i64::MAX)],
                    journal_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn latest_policy(&self) -> StoreResult<Option<StoredPolicy>> {
        self.with_connection(|connection| {
            Ok(connection
                .prepare_cached(
                    "SELECT p.digest, p.name, p.version, p.balances_json, p.hold_ttl_ms, p.component \
                     FROM policy_activations a JOIN policies p ON p.digest = a.digest \
                     ORDER BY a.id DESC LIMIT 1",
                )?
                .query_row([], policy_from_row)
                .optional()?)
        })
    }

    fn activations(&self, limit: usize) -> StoreResult<Vec<PolicyActivation>> {
        self.with_connection(|connection| {
            Ok(connection
                .prepare_cached(
                    "SELECT a.id, a.digest, p.name, p.version, a.via, a.activated_at_ms \
                     FROM policy_activations a JOIN policies p ON p.digest = a.digest \
                     ORDER BY a.id DESC LIMIT ?1",
                )?
                .query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |row| {
                    Ok(PolicyActivation {
                        id: row.get(0)?,
                        digest: row.get(1)?,
                        name: row.get(2)?,
                        version: row.get(3)?,
                        via: row.get(4)?,
                        activated_at_ms: to_u64(row.get(5)?),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn stored_policy(&self, digest: &str) -> StoreResult<Option<StoredPolicy>> {
        self.with_connection(|connection| {
            Ok(connection
                .prepare_cached(&format!(
                    "SELECT {POLICY_COLUMNS} FROM policies WHERE digest = ?1"
                ))?
                .query_row(params![digest], policy_from_row)
                .optional()?)
        })
    }

    fn invariant_violations(&self) -> StoreResult<Vec<String>> {
        self.with_connection(|connection| {
            let mut sums: std::collections::BTreeMap<(String, String), AccountState> =
                std::collections::BTreeMap::new();
            let mut entries = connection.prepare(
                "SELECT tenant, balance, kind, SUM(amount) FROM journal GROUP BY tenant, balance, kind",
            )?;
            let rows = entries.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })?;
            let mut violations = Vec::new();
            for row in rows {
                let (tenant, balance, kind, amount) = row?;
                let Some(kind) = EntryKind::parse(&kind) else {
                    violations.push(format!("{tenant}/{balance}: unknown entry kind '{kind}'"));
                    continue;
                };
                let (available, held) = kind.effect(amount);
                let label = format!("{tenant}/{balance}");
                let sum = sums.entry((tenant, balance)).or_default();
                match (sum.available.checked_add(available), sum.held.checked_add(held)) {
                    (Some(available), Some(held)) => *sum = AccountState { available, held },
                    _ => violations.push(format!("{label}: the journal sums past i64")),
                }
            }
            let mut accounts = connection.prepare("SELECT tenant, balance, available, held FROM accounts")?;
            let rows = accounts.query_map([], |row| {
                Ok((
                    (row.get::<_, String>(0)?, row.get::<_, String>(1)?),
                    AccountState {
                        available: row.get(2)?,
                        held: row.get(3)?,
                    },
                ))
            })?;
            for row in rows {
                let (key, state) = row?;
                let sum = sums.remove(&key).unwrap_or_default();
                if let Err(why) = crate::ledger::check_account(state, sum) {
                    violations.push(format!("{}/{}: {why}", key.0, key.1));
                }
            }
            for ((tenant, balance), sum) in sums {
                if sum != AccountState::default() {
                    violations.push(format!("{tenant}/{balance}: journal {sum:?} but no account"));
                }
            }
            Ok(violations)
        })
    }
}
