use std::cell::RefCell;
use std::path::PathBuf;

use rusqlite::{Connection, OptionalExtension, params};

use super::cache::WriterCache;
use super::checkpoint::Checkpointer;
use super::durability::WalSync;
use super::{
    POLICY_COLUMNS, TRANSACTION_COLUMNS, policy_from_row, to_i64, to_json, to_u64,
    transaction_from_row,
};
use crate::error::MeterError;
use crate::ledger::{AccountState, Accounts, TransactionRecord, TransactionState};
use crate::model::{GrantRequest, Receipt};
use crate::policy::{MarkLookup, PolicyDigest, PolicyInfo, sdk};
use crate::store::{LedgerWriter, LogSync, Posting, StoreResult, StoredPolicy};

/// The policies of open transactions: read through `transactions_open_by_policy`.
const OPEN_POLICY_DIGESTS: &str =
    "SELECT DISTINCT policy_digest FROM transactions WHERE state = 'open'";

/// The single writer. Not `Sync`: it lives on the meter's sequencer thread.
pub struct SqliteWriter {
    connection: Connection,
    cache: RefCell<WriterCache>,
    path: PathBuf,
    _checkpointer: Checkpointer,
}

impl SqliteWriter {
    pub(super) fn new(connection: Connection, checkpointer: Checkpointer, path: PathBuf) -> Self {
        Self {
            connection,
            cache: RefCell::default(),
            path,
            _checkpointer: checkpointer,
        }
    }

    /// Whether some open hold may have lapsed by `now_ms`: answered from the expiry
    /// floor when it can, else by one indexed read that also renews the floor.
    fn may_have_lapsed(&self, now_ms: u64) -> StoreResult<bool> {
        if let Some(floor) = self.cache.borrow().expiry_floor_ms
            && now_ms < floor
        {
            return Ok(false);
        }
        let earliest: Option<i64> = self
            .connection
            .prepare_cached(
                "SELECT MIN(expires_at_ms) FROM transactions \
                 WHERE state = 'open' AND expires_at_ms IS NOT NULL",
            )?
            .query_row([], |row| row.get(0))?;
        let floor = earliest.map_or(u64::MAX, to_u64);
        self.cache.borrow_mut().expiry_floor_ms = Some(floor);
        Ok(now_ms >= floor)
    }

    fn data_version(&self) -> StoreResult<i64> {
        Ok(self
            .connection
            .pragma_query_value(None, "data_version", |row| row.get(0))?)
    }

    fn write_back_accounts(&self) -> StoreResult<()> {
        let mut cache = self.cache.borrow_mut();
        for (tenant, balance, state) in cache.take_dirty() {
            upsert_account(&self.connection, &tenant, balance, state)?;
        }
        cache.trim();
        Ok(())
    }
}

fn upsert_account(
    connection: &Connection,
    tenant: &str,
    balance: &str,
    state: AccountState,
) -> StoreResult<()> {
    connection
        .prepare_cached(
            "INSERT INTO accounts (tenant, balance, available, held) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (tenant, balance) DO UPDATE SET available = excluded.available, held = excluded.held",
        )?
        .execute(params![tenant, balance, state.available, state.held])?;
    Ok(())
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
        self.connection
            .prepare_cached("BEGIN IMMEDIATE")?
            .execute([])?;
        // Holding the write lock now: whatever another connection committed is in.
        let version = self.data_version();
        let mut cache = self.cache.borrow_mut();
        match version {
            Ok(version) if cache.data_version == Some(version) => {}
            Ok(version) => {
                cache.clear();
                cache.data_version = Some(version);
            }
            Err(error) => {
                cache.clear();
                cache.data_version = None;
                drop(cache);
                self.rollback();
                return Err(error);
            }
        }
        Ok(())
    }

    fn commit(&self) -> StoreResult<()> {
        self.write_back_accounts()?;
        self.connection.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }

    fn log_sync(&self) -> StoreResult<Box<dyn LogSync>> {
        Ok(Box::new(WalSync::open(&self.path)?))
    }

    fn rollback(&self) {
        self.cache.borrow_mut().clear();
        if self.connection.is_autocommit() {
            return;
        }
        if let Err(error) = self.connection.execute_batch("ROLLBACK") {
            tracing::warn!(%error, "rollback failed");
        }
    }

    fn transaction(&self, id: &str) -> StoreResult<Option<TransactionRecord>> {
        if let Some(record) = self.cache.borrow().open_transaction(id) {
            return Ok(Some(record.clone()));
        }
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
        if record.state == TransactionState::Open {
            let mut cache = self.cache.borrow_mut();
            cache.remember_open(record);
            if let Some(expires_at_ms) = record.expires_at_ms {
                cache.note_expiry(expires_at_ms);
            }
        }
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
        self.cache.borrow_mut().forget_open(id);
        Ok(())
    }

    fn due_expiries(
        &self,
        tenant: Option<&str>,
        now_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<TransactionRecord>> {
        if !self.may_have_lapsed(now_ms)? {
            return Ok(Vec::new());
        }
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
        if let Some(accounts) = self.cache.borrow().accounts(tenant, balances) {
            return Ok(accounts);
        }
        let mut statement = self
            .connection
            .prepare_cached("SELECT balance, available, held FROM accounts WHERE tenant = ?1")?;
        let stored = statement
            .query_map(params![tenant], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    AccountState {
                        available: row.get(1)?,
                        held: row.get(2)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<Accounts>>()?;
        let mut cache = self.cache.borrow_mut();
        cache.remember_accounts(tenant, &stored);
        cache
            .accounts(tenant, balances)
            .ok_or_else(|| MeterError::StoreUnavailable(format!("accounts of '{tenant}' vanished")))
    }

    /// Appends the journal lines now; the accounts are written back once per batch.
    fn post(&self, posting: Posting<'_>) -> StoreResult<()> {
        let mut journal = self.connection.prepare_cached(
            "INSERT INTO journal (transaction_id, tenant, balance, kind, amount, policy_digest, at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut cache = self.cache.borrow_mut();
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
            let state = posting.account(&entry.balance)?;
            if !cache.set_account(posting.tenant, &entry.balance, state) {
                upsert_account(&self.connection, posting.tenant, &entry.balance, state)?;
            }
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
        let mut statement = self.connection.prepare_cached(OPEN_POLICY_DIGESTS)?;
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

#[cfg(test)]
mod tests {
    use super::OPEN_POLICY_DIGESTS;

    #[test]
    fn the_policies_of_open_transactions_are_found_without_a_table_scan() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (writer, _reader) =
            crate::store::sqlite::open(dir.path().join("ledger.db")).expect("open ledger");
        let plan: Vec<String> = writer
            .connection
            .prepare(&format!("EXPLAIN QUERY PLAN {OPEN_POLICY_DIGESTS}"))
            .expect("plan")
            .query_map([], |row| row.get(3))
            .expect("plan rows")
            .collect::<Result<_, _>>()
            .expect("plan text");
        assert!(
            plan.len() == 1 && plan[0].ends_with("INDEX transactions_open_by_policy"),
            "{plan:?}"
        );
    }
}
