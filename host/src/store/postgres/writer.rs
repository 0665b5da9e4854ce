use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

use postgres::types::ToSql;
use postgres::{Client, Config, Row, Statement};

use super::batch::{Batch, Change, JournalRow, MarkRow};
use super::{
    ACTIVATION_LOCK, connect, lock_key, policy_from_row, tenant_lock, to_i64, to_json,
    transaction_from_row,
};
use crate::error::MeterError;
use crate::ledger::{AccountState, Accounts, TransactionRecord, TransactionState};
use crate::model::{GrantRequest, Receipt};
use crate::policy::{MarkLookup, PolicyDigest, PolicyInfo, sdk};
use crate::store::{BatchClaims, LedgerWriter, LogSync, Posting, StoreResult, StoredPolicy};

// Reads under the batch's locks.
const LOCK_IN_ORDER: &str = "SELECT pg_advisory_xact_lock(key) FROM unnest($1::int8[]) AS key";
const TRY_LOCK: &str =
    "SELECT key FROM unnest($1::int8[]) AS key WHERE pg_try_advisory_xact_lock(key)";
const TENANTS_OF: &str = "SELECT DISTINCT tenant FROM transactions WHERE id = ANY($1)";
const TRANSACTIONS_BY_ID: &str = concat!(
    "SELECT ",
    transaction_columns!(),
    " FROM transactions WHERE id = ANY($1)"
);
const ACCOUNTS_OF: &str =
    "SELECT tenant, balance, available, held FROM accounts WHERE tenant = ANY($1)";
const DUE_OF: &str = concat!(
    "SELECT ",
    transaction_columns!(),
    " FROM transactions WHERE tenant = ANY($1) AND state = 'open' \
     AND expires_at_ms IS NOT NULL AND expires_at_ms <= $2"
);
const TENANTS_DUE: &str = "SELECT DISTINCT tenant FROM (SELECT tenant FROM transactions \
     WHERE state = 'open' AND expires_at_ms IS NOT NULL AND expires_at_ms <= $1 \
     ORDER BY expires_at_ms LIMIT $2) AS due";
const GRANTS_BY_ID: &str =
    "SELECT grant_id, tenant, balance, amount FROM grants WHERE grant_id = ANY($1)";
const MARKED: &str = "SELECT key FROM marks WHERE tenant = $1 AND scope = $2 AND key = ANY($3)";

// The batch's writes, a statement per table at commit.
const INSERT_TRANSACTIONS: &str = "INSERT INTO transactions (id, tenant, state, fingerprint, \
     policy_digest, request_json, authorization_json, held_json, created_at_ms, expires_at_ms, \
     receipt_json) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
     $5::text[], $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[], $11::text[])";
const CLOSE_TRANSACTIONS: &str = "UPDATE transactions AS t SET state = u.state, held_json = '{}', \
     receipt_json = u.receipt_json FROM unnest($1::text[], $2::text[], $3::text[]) \
     AS u (id, state, receipt_json) WHERE t.id = u.id AND t.state = 'open'";
const APPEND_JOURNAL: &str = "INSERT INTO journal (transaction_id, tenant, balance, kind, amount, \
     policy_digest, at_ms) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
     $5::int8[], $6::text[], $7::int8[])";
const UPSERT_ACCOUNTS: &str = "INSERT INTO accounts (tenant, balance, available, held) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[]) \
     ON CONFLICT (tenant, balance) DO UPDATE SET available = excluded.available, held = excluded.held";
const INSERT_MARKS: &str = "INSERT INTO marks (tenant, scope, key, transaction_id) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING";
const INSERT_GRANTS: &str = "INSERT INTO grants (grant_id, tenant, balance, amount, at_ms) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[])";

/// How long, in ms, a writer may sit inside a transaction, or wait for a lock.
const LOCK_HELD_MAX_MS: u32 = 10_000;

/// One connection and the statements prepared on it.
struct Connection {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Connection {
    fn statement(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query(&statement, params)
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.execute(&statement, params)
    }
}

/// The writer of one process. Not `Sync`: it lives on the meter's sequencer thread.
/// Several processes may each run one on the same database.
pub struct PostgresWriter {
    config: Config,
    /// The database, as logs name it (no password).
    name: String,
    connection: RefCell<Option<Connection>>,
    batch: RefCell<Batch>,
}

impl PostgresWriter {
    pub(super) fn new(config: Config, name: String) -> Self {
        Self {
            config,
            name,
            connection: RefCell::new(None),
            batch: RefCell::default(),
        }
    }

    /// Connects (again), migrating the schema if needed.
    pub(super) fn connect(&self) -> StoreResult<()> {
        let mut client = connect(&self.config).map_err(|error| match error {
            MeterError::StoreUnavailable(why) => {
                MeterError::StoreUnavailable(format!("cannot reach {}: {why}", self.name))
            }
            other => other,
        })?;
        // A batch holds its locks for milliseconds. A writer cut off mid-batch (its
        // host partitioned away) must not hold its tenants' locks until TCP gives up,
        // and a batch must not wait forever behind one: both fail after this long.
        // Every statement of the writer is an index lookup by design. Its statements
        // are prepared once and PostgreSQL plans them for good after a few runs; on a
        // fresh ledger that grows faster than autovacuum analyzes it, that plan was
        // made for a tiny table and scans it (measured: 5 ms per lookup at 60,000
        // transactions, and falling throughput). No scan, then.
        client.batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = {LOCK_HELD_MAX_MS}; \
             SET lock_timeout = {LOCK_HELD_MAX_MS}; \
             SET enable_seqscan = off"
        ))?;
        *self.connection.borrow_mut() = Some(Connection {
            client,
            statements: HashMap::new(),
        });
        tracing::info!(database = %self.name, "connected to PostgreSQL");
        Ok(())
    }

    /// Runs `work` on the connection; a connection found closed after an error is
    /// dropped, so the next batch connects again.
    fn with<T>(&self, work: impl FnOnce(&mut Connection) -> StoreResult<T>) -> StoreResult<T> {
        let mut slot = self.connection.borrow_mut();
        let Some(connection) = slot.as_mut() else {
            return Err(MeterError::StoreUnavailable(format!(
                "not connected to {}",
                self.name
            )));
        };
        let result = work(connection);
        if result.is_err() && connection.client.is_closed() {
            tracing::warn!(database = %self.name, "the connection to PostgreSQL was lost");
            *slot = None;
        }
        result
    }

    /// Locks `tenants` (blocking: only for a tenant the batch did not claim) and reads
    /// their accounts and lapsed holds into the batch.
    fn lock_and_load(&self, tenants: &[String], now_ms: u64) -> StoreResult<()> {
        let keys: Vec<i64> = tenants.iter().map(|tenant| tenant_lock(tenant)).collect();
        self.with(|connection| {
            connection.execute(LOCK_IN_ORDER, &[&sorted(keys)])?;
            Ok(())
        })?;
        self.load_locked(tenants, now_ms)
    }

    /// Reads the accounts and lapsed holds of tenants this batch holds the lock of.
    fn load_locked(&self, tenants: &[String], now_ms: u64) -> StoreResult<()> {
        if tenants.is_empty() {
            return Ok(());
        }
        let (accounts, due) = self.with(|connection| {
            let accounts = connection.query(ACCOUNTS_OF, &[&tenants])?;
            let due = connection.query(DUE_OF, &[&tenants, &to_i64(now_ms)])?;
            Ok((accounts, due))
        })?;
        let mut batch = self.batch.borrow_mut();
        for tenant in tenants {
            batch.locked_tenants.insert(tenant.clone());
            batch.accounts.entry(tenant.clone()).or_default();
        }
        for row in accounts {
            let tenant: String = row.try_get(0)?;
            let balance: String = row.try_get(1)?;
            let state = AccountState {
                available: row.try_get(2)?,
                held: row.try_get(3)?,
            };
            batch
                .accounts
                .entry(tenant)
                .or_default()
                .insert(balance, state);
        }
        for row in &due {
            batch.remember(transaction_from_row(row)?);
        }
        Ok(())
    }

    fn ensure_locked(&self, tenant: &str, now_ms: u64) -> StoreResult<()> {
        if self.batch.borrow().locked_tenants.contains(tenant) {
            return Ok(());
        }
        tracing::debug!(tenant, "locking a tenant the batch did not claim");
        self.lock_and_load(&[tenant.to_owned()], now_ms)
    }

    /// Sends the batch's writes: a statement per table.
    fn flush(&self) -> StoreResult<()> {
        let batch = self.batch.borrow();
        let mut inserted = TransactionColumns::default();
        let mut closed: (Vec<&str>, Vec<&str>, Vec<Option<String>>) = Default::default();
        for known in batch.transactions.values().flatten() {
            match known.change {
                Change::Unchanged => {}
                Change::Inserted => inserted.push(&known.record)?,
                Change::Closed => {
                    closed.0.push(&known.record.id);
                    closed.1.push(known.record.state.as_str());
                    closed
                        .2
                        .push(known.record.receipt.as_ref().map(to_json).transpose()?);
                }
            }
        }
        let accounts = batch.dirty_account_rows();
        self.with(|connection| {
            if !inserted.id.is_empty() {
                let c = &inserted;
                connection.execute(
                    INSERT_TRANSACTIONS,
                    &[
                        &c.id, &c.tenant, &c.state, &c.fingerprint, &c.policy_digest, &c.request,
                        &c.authorization, &c.held, &c.created_at_ms, &c.expires_at_ms, &c.receipt,
                    ],
                )?;
            }
            if !closed.0.is_empty() {
                let updated = connection.execute(CLOSE_TRANSACTIONS, &[&closed.0, &closed.1, &closed.2])?;
                if updated != closed.0.len() as u64 {
                    return Err(MeterError::StoreUnavailable(format!(
                        "closed {updated} of {} open transactions: another writer closed one without the lock",
                        closed.0.len()
                    )));
                }
            }
            if !batch.journal.is_empty() {
                let rows = &batch.journal;
                let column = |get: fn(&JournalRow) -> &str| rows.iter().map(get).collect::<Vec<_>>();
                connection.execute(
                    APPEND_JOURNAL,
                    &[
                        &column(|row| &row.transaction_id),
                        &column(|row| &row.tenant),
                        &column(|row| &row.balance),
                        &column(|row| row.kind),
                        &rows.iter().map(|row| row.amount).collect::<Vec<_>>(),
                        &column(|row| &row.policy_digest),
                        &rows.iter().map(|row| row.at_ms).collect::<Vec<_>>(),
                    ],
                )?;
            }
            if !accounts.is_empty() {
                let tenants: Vec<&str> = accounts.keys().map(|key| key.0).collect();
                let balances: Vec<&str> = accounts.keys().map(|key| key.1).collect();
                let available: Vec<i64> = accounts.values().map(|state| state.available).collect();
                let held: Vec<i64> = accounts.values().map(|state| state.held).collect();
                connection.execute(UPSERT_ACCOUNTS, &[&tenants, &balances, &available, &held])?;
            }
            if !batch.marks.is_empty() {
                let rows = &batch.marks;
                let column = |get: fn(&MarkRow) -> &str| rows.iter().map(get).collect::<Vec<_>>();
                connection.execute(
                    INSERT_MARKS,
                    &[
                        &column(|row| &row.tenant),
                        &column(|row| &row.scope),
                        &column(|row| &row.key),
                        &column(|row| &row.transaction_id),
                    ],
                )?;
            }
            if !batch.new_grants.is_empty() {
                let grants = &batch.new_grants;
                let column =
                    |get: fn(&GrantRequest) -> &str| grants.iter().map(|(grant, _)| get(grant)).collect::<Vec<_>>();
                connection.execute(
                    INSERT_GRANTS,
                    &[
                        &column(|grant| &grant.grant_id),
                        &column(|grant| &grant.tenant),
                        &column(|grant| &grant.balance),
                        &grants.iter().map(|(grant, _)| grant.amount).collect::<Vec<_>>(),
                        &grants.iter().map(|(_, at_ms)| *at_ms).collect::<Vec<_>>(),
                    ],
                )?;
            }
            Ok(())
        })
    }
}

/// The keys, sorted and without repeats: every process takes locks in this order.
fn sorted(keys: impl IntoIterator<Item = i64>) -> Vec<i64> {
    keys.into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// New transactions, column by column, for one `INSERT ... SELECT FROM unnest`.
#[derive(Default)]
struct TransactionColumns<'a> {
    id: Vec<&'a str>,
    tenant: Vec<&'a str>,
    state: Vec<&'a str>,
    fingerprint: Vec<&'a str>,
    policy_digest: Vec<&'a str>,
    request: Vec<String>,
    authorization: Vec<String>,
    held: Vec<String>,
    created_at_ms: Vec<i64>,
    expires_at_ms: Vec<Option<i64>>,
    receipt: Vec<Option<String>>,
}

impl<'a> TransactionColumns<'a> {
    fn push(&mut self, record: &'a TransactionRecord) -> StoreResult<()> {
        self.id.push(&record.id);
        self.tenant.push(&record.tenant);
        self.state.push(record.state.as_str());
        self.fingerprint.push(&record.fingerprint);
        self.policy_digest.push(&record.policy_digest);
        self.request.push(to_json(&record.request)?);
        self.authorization.push(to_json(&record.authorization)?);
        self.held.push(to_json(&record.held)?);
        self.created_at_ms.push(to_i64(record.created_at_ms));
        self.expires_at_ms.push(record.expires_at_ms.map(to_i64));
        self.receipt
            .push(record.receipt.as_ref().map(to_json).transpose()?);
        Ok(())
    }
}

impl MarkLookup for PostgresWriter {
    fn marked(&self, tenant: &str, scope: &str, keys: &[String]) -> Result<Vec<bool>, MeterError> {
        let here: Vec<bool> = {
            let batch = self.batch.borrow();
            let marked_here = batch.marked_here(tenant, scope);
            keys.iter()
                .map(|key| marked_here.contains(key.as_str()))
                .collect()
        };
        // No mark holds a NUL (the contract refuses them), and PostgreSQL would refuse
        // the lookup: such a key is simply not marked.
        let unknown: Vec<&str> = keys
            .iter()
            .zip(&here)
            .filter(|(key, marked)| !**marked && !key.contains('\0') && !scope.contains('\0'))
            .map(|(key, _)| key.as_str())
            .collect();
        if unknown.is_empty() {
            return Ok(here);
        }
        let stored: std::collections::HashSet<String> = self.with(|connection| {
            connection
                .query(MARKED, &[&tenant, &scope, &unknown])?
                .iter()
                .map(|row| Ok(row.try_get(0)?))
                .collect()
        })?;
        Ok(keys
            .iter()
            .zip(here)
            .map(|(key, marked)| marked || stored.contains(key))
            .collect())
    }
}

impl LedgerWriter for PostgresWriter {
    fn begin(&self) -> StoreResult<()> {
        *self.batch.borrow_mut() = Batch::default();
        let connected = self
            .connection
            .borrow()
            .as_ref()
            .is_some_and(|connection| !connection.client.is_closed());
        if !connected {
            self.connect()?;
        }
        self.with(|connection| Ok(connection.client.batch_execute("BEGIN")?))
    }

    /// Locks, in one order shared by every process, the tenants, ids and grants the
    /// batch touches, then reads what its decisions will need: a request waits here
    /// for another process's batch on the same tenant, never half-way.
    fn claim(&self, claims: &BatchClaims, now_ms: u64) -> StoreResult<()> {
        self.batch.borrow_mut().now_ms = now_ms;
        let mut tenants = claims.tenants.clone();
        if !claims.settled_ids.is_empty() {
            let settled: Vec<&str> = claims.settled_ids.iter().map(String::as_str).collect();
            let rows = self.with(|connection| Ok(connection.query(TENANTS_OF, &[&settled])?))?;
            for row in rows {
                tenants.insert(row.try_get(0)?);
            }
        }
        let ids: BTreeSet<&str> = claims
            .transaction_ids
            .iter()
            .chain(&claims.settled_ids)
            .map(String::as_str)
            .collect();
        let keys = sorted(
            tenants
                .iter()
                .map(|tenant| tenant_lock(tenant))
                .chain(ids.iter().map(|id| lock_key("transaction", id)))
                .chain(claims.grant_ids.iter().map(|id| lock_key("grant", id)))
                .chain(claims.activation.then_some(ACTIVATION_LOCK)),
        );
        if keys.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = ids.into_iter().collect();
        let grant_ids: Vec<&str> = claims.grant_ids.iter().map(String::as_str).collect();
        let (records, grants) = self.with(|connection| {
            connection.execute(LOCK_IN_ORDER, &[&keys])?;
            let records = if ids.is_empty() {
                Vec::new()
            } else {
                connection.query(TRANSACTIONS_BY_ID, &[&ids])?
            };
            let grants = if grant_ids.is_empty() {
                Vec::new()
            } else {
                connection.query(GRANTS_BY_ID, &[&grant_ids])?
            };
            Ok((records, grants))
        })?;
        {
            let mut batch = self.batch.borrow_mut();
            for id in &ids {
                batch.transactions.insert((*id).to_owned(), None);
            }
            for row in &records {
                let record = transaction_from_row(row)?;
                batch.transactions.remove(&record.id);
                batch.remember(record);
            }
            for id in &grant_ids {
                batch.grants.insert((*id).to_owned(), None);
            }
            for row in grants {
                let grant = grant_from_row(&row)?;
                batch.grants.insert(grant.grant_id.clone(), Some(grant));
            }
        }
        let tenants: Vec<String> = tenants.into_iter().collect();
        self.load_locked(&tenants, now_ms)
    }

    fn commit(&self) -> StoreResult<()> {
        let flushed = self.flush();
        *self.batch.borrow_mut() = Batch::default();
        flushed?;
        self.with(|connection| Ok(connection.client.batch_execute("COMMIT")?))
    }

    fn log_sync(&self) -> StoreResult<Box<dyn LogSync>> {
        Ok(Box::new(CommittedIsDurable))
    }

    fn rollback(&self) {
        *self.batch.borrow_mut() = Batch::default();
        let mut slot = self.connection.borrow_mut();
        if let Some(connection) = slot.as_mut()
            && let Err(error) = connection.client.batch_execute("ROLLBACK")
        {
            tracing::warn!(%error, "rollback failed; reconnecting at the next batch");
            *slot = None;
        }
    }

    fn transaction(&self, id: &str) -> StoreResult<Option<TransactionRecord>> {
        if let Some(known) = self.batch.borrow().transactions.get(id) {
            return Ok(known.as_ref().map(|known| known.record.clone()));
        }
        let rows =
            self.with(|connection| Ok(connection.query(TRANSACTIONS_BY_ID, &[&vec![id]])?))?;
        match rows.first() {
            Some(row) => Ok(Some(transaction_from_row(row)?)),
            None => Ok(None),
        }
    }

    fn insert_transaction(&self, record: &TransactionRecord) -> StoreResult<()> {
        self.batch.borrow_mut().insert(record);
        Ok(())
    }

    fn close_transaction(
        &self,
        id: &str,
        state: TransactionState,
        receipt: Option<&Receipt>,
    ) -> StoreResult<()> {
        if self.batch.borrow_mut().close(id, state, receipt) {
            Ok(())
        } else {
            Err(MeterError::StoreUnavailable(format!(
                "transaction '{id}' was closed without being read under the batch's locks"
            )))
        }
    }

    fn due_expiries(
        &self,
        tenant: Option<&str>,
        now_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<TransactionRecord>> {
        if let Some(tenant) = tenant {
            self.ensure_locked(tenant, now_ms)?;
            return Ok(self.batch.borrow().due(tenant, now_ms, limit));
        }
        // The sweep: tenants another process holds are left to it (their own next
        // authorize releases their lapsed holds, or a later sweep does); never waiting
        // here keeps the sweep out of any lock cycle.
        let limit_i64 = i64::try_from(limit).unwrap_or(i64::MAX);
        let candidates: Vec<String> = self.with(|connection| {
            connection
                .query(TENANTS_DUE, &[&to_i64(now_ms), &limit_i64])?
                .iter()
                .map(|row| Ok(row.try_get(0)?))
                .collect()
        })?;
        let unlocked: Vec<&String> = {
            let batch = self.batch.borrow();
            candidates
                .iter()
                .filter(|tenant| !batch.locked_tenants.contains(*tenant))
                .collect()
        };
        if !unlocked.is_empty() {
            let keys: Vec<i64> = unlocked.iter().map(|tenant| tenant_lock(tenant)).collect();
            let acquired: BTreeSet<i64> = self.with(|connection| {
                connection
                    .query(TRY_LOCK, &[&keys])?
                    .iter()
                    .map(|row| Ok(row.try_get(0)?))
                    .collect()
            })?;
            let locked: Vec<String> = unlocked
                .into_iter()
                .filter(|tenant| acquired.contains(&tenant_lock(tenant)))
                .cloned()
                .collect();
            self.load_locked(&locked, now_ms)?;
        }
        let batch = self.batch.borrow();
        let mut due: Vec<TransactionRecord> = candidates
            .iter()
            .filter(|tenant| batch.locked_tenants.contains(*tenant))
            .flat_map(|tenant| batch.due(tenant, now_ms, limit))
            .collect();
        due.sort_by_key(|record| record.expires_at_ms);
        due.truncate(limit);
        Ok(due)
    }

    fn accounts(&self, tenant: &str, balances: &[String]) -> StoreResult<Accounts> {
        if let Some(accounts) = self.batch.borrow().accounts(tenant, balances) {
            return Ok(accounts);
        }
        let now_ms = self.batch.borrow().now_ms;
        self.lock_and_load(&[tenant.to_owned()], now_ms)?;
        self.batch
            .borrow()
            .accounts(tenant, balances)
            .ok_or_else(|| MeterError::StoreUnavailable(format!("accounts of '{tenant}' vanished")))
    }

    fn post(&self, posting: Posting<'_>) -> StoreResult<()> {
        let mut batch = self.batch.borrow_mut();
        for entry in posting.entries {
            let state = posting.account(&entry.balance)?;
            batch.journal.push(JournalRow {
                transaction_id: posting.transaction_id.to_owned(),
                tenant: posting.tenant.to_owned(),
                balance: entry.balance.clone(),
                kind: entry.kind.as_str(),
                amount: entry.amount,
                policy_digest: posting.policy_digest.to_string(),
                at_ms: to_i64(posting.at_ms),
            });
            batch.set_account(posting.tenant, &entry.balance, state);
        }
        Ok(())
    }

    fn insert_marks(
        &self,
        tenant: &str,
        transaction_id: &str,
        marks: &[sdk::Mark],
    ) -> StoreResult<()> {
        let mut batch = self.batch.borrow_mut();
        for mark in marks {
            batch.marks.push(MarkRow {
                tenant: tenant.to_owned(),
                scope: mark.scope.clone(),
                key: mark.key.clone(),
                transaction_id: transaction_id.to_owned(),
            });
        }
        Ok(())
    }

    fn grant(&self, grant_id: &str) -> StoreResult<Option<GrantRequest>> {
        if let Some(known) = self.batch.borrow().grants.get(grant_id) {
            return Ok(known.clone());
        }
        let rows =
            self.with(|connection| Ok(connection.query(GRANTS_BY_ID, &[&vec![grant_id]])?))?;
        rows.first().map(grant_from_row).transpose()
    }

    fn insert_grant(&self, grant: &GrantRequest, at_ms: u64) -> StoreResult<()> {
        let mut batch = self.batch.borrow_mut();
        batch
            .grants
            .insert(grant.grant_id.clone(), Some(grant.clone()));
        batch.new_grants.push((grant.clone(), to_i64(at_ms)));
        Ok(())
    }

    fn save_policy(
        &self,
        info: &PolicyInfo,
        component: Option<&[u8]>,
        at_ms: u64,
    ) -> StoreResult<()> {
        let balances = to_json(&info.balances)?;
        self.with(|connection| {
            // Every write of policies takes the activation lock first (a batch that
            // activates holds it already), so no two writers can wait on each other
            // between the lock and the policy's row.
            connection.execute("SELECT pg_advisory_xact_lock($1)", &[&ACTIVATION_LOCK])?;
            connection.execute(
                "INSERT INTO policies (digest, name, version, balances_json, hold_ttl_ms, component, activated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (digest) DO UPDATE SET activated_at_ms = excluded.activated_at_ms",
                &[
                    &info.digest.as_str(),
                    &info.name,
                    &info.version,
                    &balances,
                    &to_i64(info.hold_ttl_ms),
                    &component,
                    &to_i64(at_ms),
                ],
            )?;
            Ok(())
        })
    }

    fn policy(&self, digest: &PolicyDigest) -> StoreResult<Option<StoredPolicy>> {
        const POLICY_BY_DIGEST: &str = concat!(
            "SELECT ",
            policy_columns!(),
            " FROM policies WHERE digest = $1"
        );
        let rows =
            self.with(|connection| Ok(connection.query(POLICY_BY_DIGEST, &[&digest.as_str()])?))?;
        rows.first().map(policy_from_row).transpose()
    }

    /// Read from the database: this batch's own new transactions are all on the active
    /// policy, which stays loaded anyway.
    fn open_policy_digests(&self) -> StoreResult<Vec<String>> {
        self.with(|connection| {
            connection
                .query(
                    "SELECT DISTINCT policy_digest FROM transactions WHERE state = 'open'",
                    &[],
                )?
                .iter()
                .map(|row| Ok(row.try_get(0)?))
                .collect()
        })
    }

    fn record_activation(&self, digest: &PolicyDigest, via: &str, at_ms: u64) -> StoreResult<bool> {
        self.with(|connection| {
            connection.execute("SELECT pg_advisory_xact_lock($1)", &[&ACTIVATION_LOCK])?;
            let current: Option<String> = connection
                .query(
                    "SELECT digest FROM policy_activations ORDER BY id DESC LIMIT 1",
                    &[],
                )?
                .first()
                .map(|row| row.try_get(0))
                .transpose()?;
            if current.as_deref() == Some(digest.as_str()) {
                return Ok(false);
            }
            connection.execute(
                "INSERT INTO policy_activations (digest, via, activated_at_ms) VALUES ($1, $2, $3)",
                &[&digest.as_str(), &via, &to_i64(at_ms)],
            )?;
            Ok(true)
        })
    }
}

fn grant_from_row(row: &Row) -> StoreResult<GrantRequest> {
    Ok(GrantRequest {
        grant_id: row.try_get(0)?,
        tenant: row.try_get(1)?,
        balance: row.try_get(2)?,
        amount: row.try_get(3)?,
    })
}

/// PostgreSQL's commit returns once the commit record is flushed: nothing to wait for.
struct CommittedIsDurable;

impl LogSync for CommittedIsDurable {
    fn sync(&mut self) -> StoreResult<()> {
        Ok(())
    }
}
