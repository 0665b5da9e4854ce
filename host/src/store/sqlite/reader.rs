use std::path::PathBuf;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{
    POLICY_COLUMNS, TRANSACTION_COLUMNS, open_connection, policy_from_row, to_u64,
    transaction_from_row,
};
use crate::ledger::AccountState;
use crate::model::{JournalEntry, PolicyActivation, TenantBalances, TransactionView};
use crate::store::{
    JournalSum, LedgerReader, StoreResult, StoredPolicy, invariant_violations, transaction_view,
};

/// Read-only connections, pooled; WAL lets them read while the writer writes.
pub struct SqliteReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl SqliteReader {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

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
            Ok(Some(transaction_view(record, entries)))
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
            let journal_sums = connection
                .prepare(
                    "SELECT tenant, balance, kind, SUM(amount) FROM journal GROUP BY tenant, balance, kind",
                )?
                .query_map([], |row| {
                    Ok(JournalSum {
                        tenant: row.get(0)?,
                        balance: row.get(1)?,
                        kind: row.get(2)?,
                        amount: row.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let accounts = connection
                .prepare("SELECT tenant, balance, available, held FROM accounts")?
                .query_map([], |row| {
                    Ok((
                        (row.get::<_, String>(0)?, row.get::<_, String>(1)?),
                        AccountState {
                            available: row.get(2)?,
                            held: row.get(3)?,
                        },
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(invariant_violations(journal_sums, accounts))
        })
    }
}
