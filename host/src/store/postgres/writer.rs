//! The sequencer's side of a PostgreSQL ledger. Each batch: `BEGIN`, one statement that
//! takes every advisory lock the batch claims in one global order, reads of what its
//! decisions need into a fresh live state, the decisions, then the batch's record
//! applied in one `INSERT ... SELECT FROM unnest(...)` per table, the record itself
//! appended to the log (last: see [`PostgresStore::append_log`]), and `COMMIT`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use postgres::types::ToSql;
use postgres::{Client, Config, Row, Statement};

use super::{
    LOCK_SPACE, activation_lock, closure_from_text, closure_text, connect, encode_event,
    encode_record, events_lock, lock_key, policy_from_row, tenant_lock, to_i64, to_u64,
    transaction_from_row,
};
use crate::error::MeterError;
use crate::ledger::AccountState;
use crate::ledger::calendar::{Interval, Window};
use crate::ledger::caps::{CapTerms, CapWindow};
use crate::ledger::codec;
use crate::ledger::lots::{LEGACY_LOT, Lot, LotId};
use crate::ledger::record::{Batch, Decision, LotTerms};
use crate::ledger::scheduled::{ScheduledGrant, ScheduledState};
use crate::ledger::state::{GrantRecord, LiveState, LotInfo, TransactionRecord};
use crate::policy::PolicyDigest;
use crate::store::{
    BatchClaims, ColdStore, Durability, Store, StoreResult, StoredPolicy, terms_from_json,
    terms_json, with_terms,
};

// Reads under the batch's locks.
const LOCK_IN_ORDER: &str = "SELECT pg_advisory_xact_lock(key) FROM unnest($1::int8[]) AS key";
const TRY_LOCK: &str =
    "SELECT key FROM unnest($1::int8[]) AS key WHERE pg_try_advisory_xact_lock(key)";
const TENANTS_OF: &str = "SELECT DISTINCT tenant FROM transactions WHERE id = ANY($1)";
const TRANSACTIONS_BY_ID: &str = "SELECT id, record FROM transactions WHERE id = ANY($1)";
const ACCOUNTS_OF: &str = "SELECT tenant, balance, available, held, overdraft_limit, \
     spend_cap, spend_window, spend_time_zone, spend_window_start_ms, spend_window_end_ms, \
     spend_since_ms, spent, watch_json FROM accounts WHERE tenant = ANY($1)";
const DUE_OF: &str = "SELECT id, record FROM transactions WHERE tenant = ANY($1) \
     AND state = 'open' AND expires_at_ms IS NOT NULL AND expires_at_ms <= $2";
const TENANTS_DUE: &str = "SELECT DISTINCT tenant FROM ((SELECT tenant FROM transactions \
     WHERE state = 'open' AND expires_at_ms IS NOT NULL AND expires_at_ms <= $1 \
     ORDER BY expires_at_ms LIMIT $2) UNION ALL (SELECT tenant FROM lots \
     WHERE closed IS NULL AND expires_at_ms IS NOT NULL AND expires_at_ms <= $1 \
     ORDER BY expires_at_ms LIMIT $2) UNION ALL (SELECT tenant FROM refills \
     WHERE next_start_ms <= $1 ORDER BY next_start_ms LIMIT $2) UNION ALL (SELECT tenant \
     FROM scheduled_grants WHERE state = 'pending' AND effective_at_ms <= $1 \
     ORDER BY effective_at_ms LIMIT $2) UNION ALL (SELECT a.tenant \
     FROM accounts a WHERE a.expiring_lead_ms IS NOT NULL AND EXISTS (SELECT 1 FROM lots l \
     WHERE l.tenant = a.tenant AND l.balance = a.balance AND l.closed IS NULL \
     AND l.remaining > 0 AND l.expires_at_ms > $1 \
     AND l.expires_at_ms <= $1 + a.expiring_lead_ms AND l.lot <> ALL (a.warned_lots)) \
     LIMIT $2)) AS due";
const REFILLS_OF: &str =
    "SELECT tenant, refill_id, terms_json, last_start_ms FROM refills WHERE tenant = ANY($1)";
const SCHEDULED_OF: &str = "SELECT grant_id, tenant, balance, amount, terms_json, \
     effective_at_ms, state FROM scheduled_grants WHERE tenant = ANY($1)";
const SCHEDULED_BY_ID: &str = "SELECT grant_id, tenant, balance, amount, terms_json, \
     effective_at_ms, state FROM scheduled_grants WHERE grant_id = ANY($1)";
const UPSERT_SCHEDULED: &str = "INSERT INTO scheduled_grants (grant_id, tenant, balance, \
     amount, terms_json, effective_at_ms, state) SELECT * FROM unnest($1::text[], $2::text[], \
     $3::text[], $4::int8[], $5::text[], $6::int8[], $7::text[]) ON CONFLICT (grant_id) DO UPDATE \
     SET state = EXCLUDED.state";
const DELETE_SCHEDULED: &str = "DELETE FROM scheduled_grants WHERE grant_id = ANY($1)";
const GRANTS_BY_ID: &str = "SELECT grant_id, tenant, balance, amount, lot, terms_json \
     FROM grants WHERE grant_id = ANY($1)";
/// Every lot of the tenants, closed ones included: a hold still open may give credits
/// back to a lot that closed, which then leave through it.
const LOTS_OF: &str = "SELECT tenant, balance, lot, amount, remaining, expires_at_ms, \
     priority, closed, grant_id, terms_json, granted_at_ms FROM lots WHERE tenant = ANY($1)";
/// A block of lot numbers for a batch that may grant: `nextval << LOT_BLOCK_BITS`.
const NEXT_LOT_BLOCK: &str = "SELECT nextval('lot_blocks')";
/// Lot numbers a batch may use from its block, as bits: far more journal entries than
/// a batch ever writes.
const LOT_BLOCK_BITS: u32 = 24;
const MARKED: &str = "SELECT key FROM marks WHERE tenant = $1 AND scope = $2 AND key = ANY($3)";
const POLICY_BY_DIGEST: &str =
    "SELECT digest, name, version, component FROM policies WHERE digest = $1";
const LATEST_ACTIVATION: &str = "SELECT digest FROM policy_activations ORDER BY id DESC LIMIT 1";
/// Names the predicate of `transactions_open_by_policy` whole, so that index serves it.
const OPEN_POLICIES: &str = "SELECT DISTINCT policy_digest FROM transactions \
     WHERE state = 'open' AND policy_digest IS NOT NULL";

// The batch's writes, a statement per table at commit.
const INSERT_TRANSACTIONS: &str = "INSERT INTO transactions (id, tenant, state, fingerprint, \
     policy_digest, created_at_ms, expires_at_ms, record) SELECT * FROM unnest($1::text[], \
     $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[], $8::bytea[])";
const CLOSE_TRANSACTIONS: &str = "UPDATE transactions AS t SET state = u.state, record = u.record \
     FROM unnest($1::text[], $2::text[], $3::bytea[]) AS u (id, state, record) \
     WHERE t.id = u.id AND t.state = 'open'";
const APPEND_JOURNAL: &str = "INSERT INTO journal (transaction_id, tenant, balance, kind, amount, \
     policy_digest, at_ms, lot) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], \
     $4::text[], $5::int8[], $6::text[], $7::int8[], $8::int8[])";
const UPSERT_ACCOUNTS: &str = "INSERT INTO accounts (tenant, balance, available, held) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[]) \
     ON CONFLICT (tenant, balance) DO UPDATE SET available = excluded.available, held = excluded.held";
/// An account's overdraft limit; the account starts empty if it is new.
const UPSERT_LIMITS: &str = "INSERT INTO accounts (tenant, balance, available, held, \
     overdraft_limit) SELECT tenant, balance, 0, 0, overdraft_limit \
     FROM unnest($1::text[], $2::text[], $3::int8[]) AS limits (tenant, balance, overdraft_limit) \
     ON CONFLICT (tenant, balance) DO UPDATE SET overdraft_limit = excluded.overdraft_limit";
/// An account's spend cap and window (a removed cap: nulls and zeros); the account
/// starts empty if it is new.
const UPSERT_CAPS: &str = "INSERT INTO accounts (tenant, balance, available, held, \
     spend_cap, spend_window, spend_time_zone, spend_window_start_ms, spend_window_end_ms, \
     spend_since_ms, spent) SELECT tenant, balance, 0, 0, cap, kind, zone, start_ms, end_ms, \
     since_ms, spent FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], \
     $6::int8[], $7::int8[], $8::int8[], $9::int8[]) \
     AS caps (tenant, balance, cap, kind, zone, start_ms, end_ms, since_ms, spent) \
     ON CONFLICT (tenant, balance) DO UPDATE SET spend_cap = excluded.spend_cap, \
     spend_window = excluded.spend_window, spend_time_zone = excluded.spend_time_zone, \
     spend_window_start_ms = excluded.spend_window_start_ms, \
     spend_window_end_ms = excluded.spend_window_end_ms, \
     spend_since_ms = excluded.spend_since_ms, spent = excluded.spent";
const UPSERT_REFILLS: &str = "INSERT INTO refills (tenant, refill_id, terms_json, \
     last_start_ms, next_start_ms) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], \
     $4::int8[], $5::int8[]) ON CONFLICT (tenant, refill_id) DO UPDATE SET \
     terms_json = excluded.terms_json, last_start_ms = excluded.last_start_ms, \
     next_start_ms = excluded.next_start_ms";
const DELETE_REFILLS: &str = "DELETE FROM refills AS r USING unnest($1::text[], $2::text[]) \
     AS d (tenant, refill_id) WHERE r.tenant = d.tenant AND r.refill_id = d.refill_id";
/// An account's watch (a removed one: nulls); the account starts empty if it is new.
/// The lots warned of come as comma-separated text: `unnest` takes no array of arrays.
const UPSERT_WATCHES: &str = "INSERT INTO accounts (tenant, balance, available, held, \
     watch_json, expiring_lead_ms, warned_lots) SELECT tenant, balance, 0, 0, watch_json, \
     lead_ms, COALESCE(string_to_array(warned, ',')::int8[], '{}') FROM unnest($1::text[], \
     $2::text[], $3::text[], $4::int8[], $5::text[]) \
     AS watches (tenant, balance, watch_json, lead_ms, warned) \
     ON CONFLICT (tenant, balance) DO UPDATE SET watch_json = excluded.watch_json, \
     expiring_lead_ms = excluded.expiring_lead_ms, warned_lots = excluded.warned_lots";
const NEXT_EVENT_IDS: &str = "SELECT nextval('event_ids') FROM generate_series(1, $1::int8)";
const INSERT_EVENTS: &str = "INSERT INTO events (id, tenant, balance, kind, at_ms, record) \
     SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[], \
     $6::bytea[])";
const INSERT_MARKS: &str = "INSERT INTO marks (tenant, scope, key, transaction_id) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING";
const INSERT_GRANTS: &str = "INSERT INTO grants (grant_id, tenant, balance, amount, at_ms, \
     lot, terms_json) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], \
     $5::int8[], $6::int8[], $7::text[])";
const UPSERT_LOTS: &str = "INSERT INTO lots (tenant, balance, lot, amount, remaining, \
     expires_at_ms, priority, closed, grant_id, terms_json, granted_at_ms) SELECT * FROM \
     unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], \
     $7::int4[], $8::text[], $9::text[], $10::text[], $11::int8[]) \
     ON CONFLICT (tenant, lot) DO UPDATE SET remaining = excluded.remaining, \
     closed = excluded.closed";
const SAVE_POLICY: &str = "INSERT INTO policies (digest, name, version, balances_json, \
     hold_ttl_ms, component, activated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (digest) DO UPDATE SET activated_at_ms = excluded.activated_at_ms";
const RECORD_ACTIVATION: &str =
    "INSERT INTO policy_activations (digest, via, activated_at_ms) VALUES ($1, $2, $3)";
/// The batch's record, last before `COMMIT` ([`PostgresStore::append_log`]).
const APPEND_LOG: &str = "INSERT INTO log (at_ms, record) VALUES ($1, $2)";
/// Tells the other replicas (each listening, `super::replicas`) that an activation
/// committed: sent in the activation's transaction, so it is delivered only if it commits.
const NOTIFY_ACTIVATION: &str = "SELECT pg_notify($1, current_schema())";

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

/// What the batch in progress knows exists nowhere, so that its decisions need not ask.
#[derive(Default)]
struct Absent {
    transactions: HashSet<String>,
    grants: HashSet<String>,
}

/// The writer of one process. Not `Sync`: it lives on the meter's sequencer thread.
/// Several processes may each run one on the same database.
pub struct PostgresStore {
    config: Config,
    /// The database, as logs name it (no password).
    name: String,
    connection: RefCell<Option<Connection>>,
    absent: RefCell<Absent>,
    /// The batch's clock reading, for the lapsed holds of tenants it locks later.
    now_ms: RefCell<u64>,
    /// The ledger's database and schema, which its lock keys name.
    lock_space: RefCell<String>,
}

impl PostgresStore {
    pub(super) fn new(config: Config, name: String) -> Self {
        Self {
            config,
            name,
            connection: RefCell::new(None),
            absent: RefCell::default(),
            now_ms: RefCell::new(0),
            lock_space: RefCell::default(),
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
        *self.lock_space.borrow_mut() = client.query_one(LOCK_SPACE, &[])?.try_get(0)?;
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

    /// Reads the accounts and lapsed holds of tenants this batch holds the lock of, and
    /// their refills and grants that take effect later when the batch needs them.
    fn load_locked(
        &self,
        tenants: &[String],
        state: &mut LiveState,
        with_schedules: bool,
    ) -> StoreResult<()> {
        if tenants.is_empty() {
            return Ok(());
        }
        if with_schedules {
            let rows = self.with(|connection| Ok(connection.query(SCHEDULED_OF, &[&tenants])?))?;
            for row in &rows {
                state.set_scheduled(scheduled_from_row(row)?)?;
            }
            let rows = self.with(|connection| Ok(connection.query(REFILLS_OF, &[&tenants])?))?;
            for row in rows {
                let tenant: String = row.try_get(0)?;
                let refill_id: String = row.try_get(1)?;
                let terms_json: String = row.try_get(2)?;
                let terms = serde_json::from_str(&terms_json).map_err(|why| {
                    MeterError::StoreCorrupt(format!("refill {refill_id} of {tenant}: {why}"))
                })?;
                state.set_refill(&tenant, &refill_id, Some((terms, row.try_get(3)?)))?;
            }
        }
        let now_ms = to_i64(*self.now_ms.borrow());
        let (accounts, due, lots) = self.with(|connection| {
            let accounts = connection.query(ACCOUNTS_OF, &[&tenants])?;
            let due = connection.query(DUE_OF, &[&tenants, &now_ms])?;
            let lots = connection.query(LOTS_OF, &[&tenants])?;
            Ok((accounts, due, lots))
        })?;
        for tenant in tenants {
            state.touch_tenant(tenant)?;
        }
        for row in accounts {
            let tenant: String = row.try_get(0)?;
            let balance: String = row.try_get(1)?;
            let account = AccountState {
                available: row.try_get(2)?,
                held: row.try_get(3)?,
            };
            state.set_accounts(&tenant, [(&balance, &account)])?;
            state.set_overdraft_limit(&tenant, &balance, row.try_get(4)?)?;
            state.set_spend_cap(&tenant, &balance, cap_from_row(&row)?)?;
            let watch_json: Option<String> = row.try_get(12)?;
            if let Some(json) = watch_json {
                let watch = serde_json::from_str(&json).map_err(|why| {
                    MeterError::StoreCorrupt(format!("the watch of {tenant}/{balance}: {why}"))
                })?;
                state.set_watch(&tenant, &balance, Some(watch))?;
            }
        }
        for row in &due {
            let id: String = row.try_get(0)?;
            if state.transaction(&id).is_none() {
                state.load_transaction(transaction_from_row(row, 1)?, 0);
            }
        }
        state.load_lots(lots.iter().map(lot_from_row).collect::<StoreResult<_>>()?)
    }

    /// Sends the batch's writes: a statement per table.
    fn flush(&self, batch: &Batch, state: &LiveState) -> StoreResult<()> {
        let digest = |index: u32| -> StoreResult<String> {
            batch
                .policies
                .get(index as usize)
                .map(|bytes| PolicyDigest::from_bytes(*bytes).to_string())
                .ok_or_else(|| {
                    MeterError::StoreCorrupt(format!("policy {index} is not in its batch"))
                })
        };
        let at_ms = to_i64(batch.at_ms);
        let mut authorized: BTreeSet<&str> = BTreeSet::new();
        let mut touched: BTreeSet<&str> = BTreeSet::new();
        let mut journal: Vec<JournalRow> = Vec::new();
        let mut lots: BTreeMap<(&str, LotId), &str> = BTreeMap::new();
        let mut accounts: BTreeMap<(&str, &str), AccountState> = BTreeMap::new();
        let mut marks: BTreeMap<(&str, &str, &str), &str> = BTreeMap::new();
        let mut grants: Vec<(&str, &str, &str, i64, i64, String)> = Vec::new();
        let mut policies = Vec::new();
        let mut activations = Vec::new();
        let mut limits: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        // Accounts whose cap or window moved: written as the batch left them.
        let mut caps: BTreeSet<(&str, &str)> = BTreeSet::new();
        // Refills set, removed or granted: written as the batch left them.
        let mut refills: BTreeSet<(&str, &str)> = BTreeSet::new();
        // Watches set, removed or that remembered an event: as the batch left them.
        let mut watches: BTreeSet<(&str, &str)> = BTreeSet::new();
        let mut events: Vec<&crate::ledger::record::EventRecord> = Vec::new();
        // Grants that take effect later, as each decision left them (the last wins).
        let mut scheduled: BTreeMap<&str, &ScheduledGrant> = BTreeMap::new();
        for decision in &batch.decisions {
            let (transaction_id, tenant, policy) = match decision {
                Decision::Authorize(authorized_here) => {
                    authorized.insert(&authorized_here.id);
                    touched.insert(&authorized_here.id);
                    for mark in &authorized_here.marks {
                        marks
                            .entry((&authorized_here.tenant, &mark.scope, &mark.key))
                            .or_insert(&authorized_here.id);
                    }
                    (
                        &authorized_here.id,
                        &authorized_here.tenant,
                        authorized_here.policy,
                    )
                }
                Decision::Settle(settled) => {
                    touched.insert(&settled.id);
                    for mark in &settled.marks {
                        marks
                            .entry((&settled.tenant, &mark.scope, &mark.key))
                            .or_insert(&settled.id);
                    }
                    (&settled.id, &settled.tenant, settled.policy)
                }
                Decision::Expire(expired) => {
                    touched.insert(&expired.id);
                    (&expired.id, &expired.tenant, expired.policy)
                }
                Decision::Grant(granted) => {
                    let lot = granted.lot();
                    grants.push((
                        &granted.grant_id,
                        &granted.tenant,
                        &granted.balance,
                        granted.amount,
                        to_i64(lot),
                        terms_json(lot, &granted.terms),
                    ));
                    (&granted.grant_id, &granted.tenant, granted.policy)
                }
                Decision::CloseLot(closed) => {
                    // A watch forgets the lots it warned of as they close.
                    if state.watch(&closed.tenant, &closed.balance).is_some() {
                        watches.insert((&closed.tenant, &closed.balance));
                    }
                    (&closed.grant_id, &closed.tenant, closed.policy)
                }
                Decision::Overdraft(set) => {
                    limits.insert((&set.tenant, &set.balance), set.limit);
                    continue;
                }
                Decision::Cap(set) => {
                    caps.insert((&set.tenant, &set.balance));
                    continue;
                }
                Decision::Refill(set) => {
                    refills.insert((&set.tenant, &set.refill_id));
                    continue;
                }
                Decision::Watch(set) => {
                    watches.insert((&set.tenant, &set.balance));
                    continue;
                }
                Decision::Schedule(grant) => {
                    scheduled.insert(&grant.grant_id, grant);
                    continue;
                }
                Decision::Event(event) => {
                    watches.insert((&event.tenant, &event.balance));
                    events.push(event);
                    continue;
                }
                Decision::Spend(spent) => {
                    caps.extend(
                        spent
                            .windows
                            .iter()
                            .map(|(balance, _)| (spent.tenant.as_str(), balance.as_str())),
                    );
                    continue;
                }
                Decision::Policy(saved) => {
                    policies.push((digest(saved.policy)?, saved));
                    continue;
                }
                Decision::Activate(activation) => {
                    activations.push((digest(activation.policy)?, &activation.via));
                    continue;
                }
                Decision::Import(_) => {
                    return Err(MeterError::StoreCorrupt(
                        "PostgreSQL migrates its own rows; it takes no imported records".to_owned(),
                    ));
                }
            };
            let policy = digest(policy)?;
            for entry in decision.entries() {
                journal.push((
                    transaction_id,
                    tenant,
                    &entry.balance,
                    entry.kind.as_str(),
                    entry.amount,
                    policy.clone(),
                    (entry.lot != LEGACY_LOT).then(|| to_i64(entry.lot)),
                ));
            }
            if let Some((_, posting)) = decision.posting() {
                for (balance, account) in &posting.accounts {
                    accounts.insert((tenant, balance), *account);
                }
                for (balance, lot) in &posting.lots {
                    lots.insert((tenant, lot.id), balance);
                }
            }
        }
        let record_of = |id: &str| -> StoreResult<&TransactionRecord> {
            state.transaction(id).ok_or_else(|| {
                MeterError::StoreUnavailable(format!("transaction '{id}' left memory mid-batch"))
            })
        };
        let mut inserted = TransactionColumns::default();
        let mut closed: (Vec<&str>, Vec<&str>, Vec<Vec<u8>>) = Default::default();
        for id in &touched {
            let record = record_of(id)?;
            if authorized.contains(id) {
                inserted.push(record);
            } else {
                closed.0.push(id);
                closed.1.push(record.state.as_str());
                closed.2.push(encode_record(record));
            }
        }
        self.with(|connection| {
            if !policies.is_empty() || !activations.is_empty() {
                // Every write of policies takes the activation lock first (a batch that
                // activates holds it already), so no two writers wait on each other.
                connection.execute(
                    "SELECT pg_advisory_xact_lock($1)",
                    &[&activation_lock(&self.lock_space.borrow())],
                )?;
            }
            for (digest, saved) in &policies {
                let balances = serde_json::to_string(&saved.balances).unwrap_or_default();
                connection.execute(
                    SAVE_POLICY,
                    &[&digest, &saved.name, &saved.version, &balances, &to_i64(saved.hold_ttl_ms), &saved.component, &at_ms],
                )?;
            }
            for (digest, via) in &activations {
                connection.execute(RECORD_ACTIVATION, &[digest, via, &at_ms])?;
            }
            if !activations.is_empty() {
                connection.execute(NOTIFY_ACTIVATION, &[&super::replicas::ACTIVATION_CHANNEL])?;
            }
            if !inserted.id.is_empty() {
                let c = &inserted;
                connection.execute(
                    INSERT_TRANSACTIONS,
                    &[&c.id, &c.tenant, &c.state, &c.fingerprint, &c.policy_digest, &c.created_at_ms, &c.expires_at_ms, &c.record],
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
            if !journal.is_empty() {
                connection.execute(
                    APPEND_JOURNAL,
                    &[
                        &journal.iter().map(|row| row.0).collect::<Vec<_>>(),
                        &journal.iter().map(|row| row.1).collect::<Vec<_>>(),
                        &journal.iter().map(|row| row.2).collect::<Vec<_>>(),
                        &journal.iter().map(|row| row.3).collect::<Vec<_>>(),
                        &journal.iter().map(|row| row.4).collect::<Vec<_>>(),
                        &journal.iter().map(|row| row.5.as_str()).collect::<Vec<_>>(),
                        &vec![at_ms; journal.len()],
                        &journal.iter().map(|row| row.6).collect::<Vec<_>>(),
                    ],
                )?;
            }
            if !accounts.is_empty() {
                connection.execute(
                    UPSERT_ACCOUNTS,
                    &[
                        &accounts.keys().map(|key| key.0).collect::<Vec<_>>(),
                        &accounts.keys().map(|key| key.1).collect::<Vec<_>>(),
                        &accounts.values().map(|state| state.available).collect::<Vec<_>>(),
                        &accounts.values().map(|state| state.held).collect::<Vec<_>>(),
                    ],
                )?;
            }
            if !limits.is_empty() {
                connection.execute(
                    UPSERT_LIMITS,
                    &[
                        &limits.keys().map(|key| key.0).collect::<Vec<_>>(),
                        &limits.keys().map(|key| key.1).collect::<Vec<_>>(),
                        &limits.values().copied().collect::<Vec<_>>(),
                    ],
                )?;
            }
            if !caps.is_empty() {
                let rows = caps
                    .iter()
                    .map(|(tenant, balance)| {
                        let capped = state.spend_cap(tenant, balance);
                        let window = capped.as_ref().map(|capped| capped.window);
                        let terms = capped.map(|capped| capped.cap.terms);
                        (
                            terms.as_ref().map(|terms| terms.cap),
                            terms.as_ref().map(|terms| terms.window.as_str()),
                            terms.map(|terms| terms.time_zone),
                            window.unwrap_or_default(),
                        )
                    })
                    .collect::<Vec<_>>();
                connection.execute(
                    UPSERT_CAPS,
                    &[
                        &caps.iter().map(|key| key.0).collect::<Vec<_>>(),
                        &caps.iter().map(|key| key.1).collect::<Vec<_>>(),
                        &rows.iter().map(|row| row.0).collect::<Vec<_>>(),
                        &rows.iter().map(|row| row.1).collect::<Vec<_>>(),
                        &rows.iter().map(|row| row.2.clone()).collect::<Vec<_>>(),
                        &rows
                            .iter()
                            .map(|row| row.3.window.map(|window| window.start_ms))
                            .collect::<Vec<_>>(),
                        &rows
                            .iter()
                            .map(|row| row.3.window.map(|window| window.end_ms))
                            .collect::<Vec<_>>(),
                        &rows.iter().map(|row| row.3.since_ms).collect::<Vec<_>>(),
                        &rows.iter().map(|row| row.3.spent).collect::<Vec<_>>(),
                    ],
                )?;
            }
            if !scheduled.is_empty() {
                write_scheduled(connection, &scheduled)?;
            }
            if !refills.is_empty() {
                let (kept, removed): (Vec<_>, Vec<_>) = refills
                    .iter()
                    .map(|(tenant, id)| (*tenant, *id, state.refill(tenant, id)))
                    .partition(|(_, _, refill)| refill.is_some());
                let rows = kept
                    .iter()
                    .filter_map(|(tenant, id, refill)| {
                        let refill = (*refill)?;
                        let json = serde_json::to_string(&refill.terms).ok()?;
                        Some((*tenant, *id, json, refill.last_start_ms, refill.next_start_ms()))
                    })
                    .map(|(tenant, id, json, last, next)| {
                        let next = next.map_err(|why| {
                            MeterError::StoreCorrupt(format!("refill {id} of {tenant}: {why}"))
                        })?;
                        Ok((tenant, id, json, last, next))
                    })
                    .collect::<StoreResult<Vec<_>>>()?;
                connection.execute(
                    UPSERT_REFILLS,
                    &[
                        &rows.iter().map(|row| row.0).collect::<Vec<_>>(),
                        &rows.iter().map(|row| row.1).collect::<Vec<_>>(),
                        &rows.iter().map(|row| row.2.as_str()).collect::<Vec<_>>(),
                        &rows.iter().map(|row| row.3).collect::<Vec<_>>(),
                        &rows.iter().map(|row| row.4).collect::<Vec<_>>(),
                    ],
                )?;
                connection.execute(
                    DELETE_REFILLS,
                    &[
                        &removed.iter().map(|row| row.0).collect::<Vec<_>>(),
                        &removed.iter().map(|row| row.1).collect::<Vec<_>>(),
                    ],
                )?;
            }
            if !watches.is_empty() {
                let rows = watches
                    .iter()
                    .map(|(tenant, balance)| {
                        let watch = state.watch(tenant, balance);
                        let json = watch.map(serde_json::to_string).transpose().map_err(|why| {
                            MeterError::StoreCorrupt(format!("the watch of {tenant}/{balance}: {why}"))
                        })?;
                        let lead = watch.and_then(|watch| watch.thresholds.lot_expiring_lead_ms);
                        let warned = watch.map(|watch| {
                            watch.warned_lots.iter().map(|lot| lot.to_string()).collect::<Vec<_>>().join(",")
                        });
                        Ok((json, lead, warned.filter(|warned| !warned.is_empty())))
                    })
                    .collect::<StoreResult<Vec<_>>>()?;
                connection.execute(
                    UPSERT_WATCHES,
                    &[
                        &watches.iter().map(|key| key.0).collect::<Vec<_>>(),
                        &watches.iter().map(|key| key.1).collect::<Vec<_>>(),
                        &rows.iter().map(|row| row.0.clone()).collect::<Vec<_>>(),
                        &rows.iter().map(|row| row.1).collect::<Vec<_>>(),
                        &rows.iter().map(|row| row.2.clone()).collect::<Vec<_>>(),
                    ],
                )?;
            }
            if !events.is_empty() {
                // Last of the batch's locks, held to commit: no batch holding it waits
                // on another lock, and ids become visible in their order.
                connection.execute(
                    "SELECT pg_advisory_xact_lock($1)",
                    &[&events_lock(&self.lock_space.borrow())],
                )?;
                let mut ids: Vec<i64> = connection
                    .query(NEXT_EVENT_IDS, &[&(events.len() as i64)])?
                    .iter()
                    .map(|row| row.try_get(0))
                    .collect::<Result<_, _>>()?;
                ids.sort_unstable();
                connection.execute(
                    INSERT_EVENTS,
                    &[
                        &ids,
                        &events.iter().map(|event| event.tenant.as_str()).collect::<Vec<_>>(),
                        &events.iter().map(|event| event.balance.as_str()).collect::<Vec<_>>(),
                        &events.iter().map(|event| event.kind.as_str()).collect::<Vec<_>>(),
                        &vec![at_ms; events.len()],
                        &events.iter().map(|event| encode_event(event)).collect::<Vec<_>>(),
                    ],
                )?;
            }
            if !marks.is_empty() {
                connection.execute(
                    INSERT_MARKS,
                    &[
                        &marks.keys().map(|key| key.0).collect::<Vec<_>>(),
                        &marks.keys().map(|key| key.1).collect::<Vec<_>>(),
                        &marks.keys().map(|key| key.2).collect::<Vec<_>>(),
                        &marks.values().copied().collect::<Vec<_>>(),
                    ],
                )?;
            }
            if !grants.is_empty() {
                connection.execute(
                    INSERT_GRANTS,
                    &[
                        &grants.iter().map(|grant| grant.0).collect::<Vec<_>>(),
                        &grants.iter().map(|grant| grant.1).collect::<Vec<_>>(),
                        &grants.iter().map(|grant| grant.2).collect::<Vec<_>>(),
                        &grants.iter().map(|grant| grant.3).collect::<Vec<_>>(),
                        &vec![at_ms; grants.len()],
                        &grants.iter().map(|grant| grant.4).collect::<Vec<_>>(),
                        &grants.iter().map(|grant| grant.5.as_str()).collect::<Vec<_>>(),
                    ],
                )?;
            }
            if !lots.is_empty() {
                let rows = LotColumns::of(&lots, state)?;
                connection.execute(
                    UPSERT_LOTS,
                    &[
                        &rows.tenant, &rows.balance, &rows.lot, &rows.amount, &rows.remaining,
                        &rows.expires_at_ms, &rows.priority, &rows.closed, &rows.grant_id,
                        &rows.terms_json, &rows.granted_at_ms,
                    ],
                )?;
            }
            Ok(())
        })
    }
}

/// A journal row: transaction id, tenant, balance, kind, amount, policy digest, lot.
type JournalRow<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'static str,
    i64,
    String,
    Option<i64>,
);

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
    fingerprint: Vec<String>,
    policy_digest: Vec<String>,
    created_at_ms: Vec<i64>,
    expires_at_ms: Vec<Option<i64>>,
    record: Vec<Vec<u8>>,
}

impl<'a> TransactionColumns<'a> {
    fn push(&mut self, record: &'a TransactionRecord) {
        self.id.push(&record.id);
        self.tenant.push(&record.tenant);
        self.state.push(record.state.as_str());
        self.fingerprint
            .push(PolicyDigest::from_bytes(record.fingerprint).to_string());
        self.policy_digest
            .push(PolicyDigest::from_bytes(record.policy).to_string());
        self.created_at_ms.push(to_i64(record.created_at_ms));
        self.expires_at_ms.push(record.expires_at_ms.map(to_i64));
        self.record.push(encode_record(record));
    }
}

impl ColdStore for PostgresStore {
    fn transaction(&self, id: &str) -> StoreResult<Option<TransactionRecord>> {
        if self.absent.borrow().transactions.contains(id) {
            return Ok(None);
        }
        let rows =
            self.with(|connection| Ok(connection.query(TRANSACTIONS_BY_ID, &[&vec![id]])?))?;
        rows.first()
            .map(|row| transaction_from_row(row, 1))
            .transpose()
    }

    fn grant(&self, grant_id: &str) -> StoreResult<Option<GrantRecord>> {
        if self.absent.borrow().grants.contains(grant_id) {
            return Ok(None);
        }
        let rows =
            self.with(|connection| Ok(connection.query(GRANTS_BY_ID, &[&vec![grant_id]])?))?;
        rows.first()
            .map(grant_from_row)
            .transpose()
            .map(|grant| grant.map(|(_, grant)| grant))
    }

    fn marked(&self, tenant: &str, scope: &str, keys: &[&str]) -> StoreResult<Vec<bool>> {
        let stored: HashSet<String> = self.with(|connection| {
            connection
                .query(MARKED, &[&tenant, &scope, &keys])?
                .iter()
                .map(|row| Ok(row.try_get(0)?))
                .collect()
        })?;
        Ok(keys.iter().map(|key| stored.contains(*key)).collect())
    }

    fn policy(&self, digest: &PolicyDigest) -> StoreResult<Option<StoredPolicy>> {
        let rows = self
            .with(|connection| Ok(connection.query(POLICY_BY_DIGEST, &[&digest.to_string()])?))?;
        rows.first().map(policy_from_row).transpose()
    }

    fn latest_activation(&self) -> StoreResult<Option<PolicyDigest>> {
        if self.connection.borrow().is_none() {
            self.connect()?;
        }
        let rows = self.with(|connection| Ok(connection.query(LATEST_ACTIVATION, &[])?))?;
        match rows.first() {
            Some(row) => {
                let digest: String = row.try_get(0)?;
                Ok(PolicyDigest::parse(&digest))
            }
            None => Ok(None),
        }
    }

    fn open_policies(&self) -> StoreResult<Option<BTreeSet<[u8; 32]>>> {
        let rows = self.with(|connection| Ok(connection.query(OPEN_POLICIES, &[])?))?;
        let mut digests = BTreeSet::new();
        for row in rows {
            let digest: String = row.try_get(0)?;
            if let Some(digest) = PolicyDigest::parse(&digest) {
                digests.insert(digest.bytes());
            }
        }
        Ok(Some(digests))
    }

    /// Locks a tenant the batch did not claim (blocking) and reads it.
    fn load_tenant(&self, tenant: &str, state: &mut LiveState) -> StoreResult<()> {
        tracing::debug!(tenant, "locking a tenant the batch did not claim");
        let keys = vec![tenant_lock(&self.lock_space.borrow(), tenant)];
        self.with(|connection| {
            connection.execute(LOCK_IN_ORDER, &[&keys])?;
            Ok(())
        })?;
        self.load_locked(&[tenant.to_owned()], state, true)
    }
}

/// A row of `scheduled_grants`.
fn scheduled_from_row(row: &Row) -> StoreResult<ScheduledGrant> {
    let grant_id: String = row.try_get(0)?;
    let state: String = row.try_get(6)?;
    let state = ScheduledState::parse(&state).ok_or_else(|| {
        MeterError::StoreCorrupt(format!("scheduled grant {grant_id} is '{state}'"))
    })?;
    let terms_json: String = row.try_get(4)?;
    Ok(ScheduledGrant {
        tenant: row.try_get(1)?,
        balance: row.try_get(2)?,
        amount: row.try_get(3)?,
        terms: terms_from_json(&terms_json)?,
        effective_at_ms: row.try_get(5)?,
        state,
        grant_id,
    })
}

/// Writes grants that take effect later as the batch left them: a granted one leaves
/// the table (its lot is in `lots` and `grants`), any other is upserted.
fn write_scheduled(
    connection: &mut Connection,
    scheduled: &BTreeMap<&str, &ScheduledGrant>,
) -> StoreResult<()> {
    let (granted, kept): (Vec<&ScheduledGrant>, Vec<&ScheduledGrant>) = scheduled
        .values()
        .partition(|grant| grant.state == ScheduledState::Granted);
    if !kept.is_empty() {
        let terms = kept
            .iter()
            .map(|grant| serde_json::to_string(&grant.terms))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| MeterError::StoreCorrupt(format!("a scheduled grant's terms: {why}")))?;
        connection.execute(
            UPSERT_SCHEDULED,
            &[
                &kept
                    .iter()
                    .map(|grant| grant.grant_id.as_str())
                    .collect::<Vec<_>>(),
                &kept
                    .iter()
                    .map(|grant| grant.tenant.as_str())
                    .collect::<Vec<_>>(),
                &kept
                    .iter()
                    .map(|grant| grant.balance.as_str())
                    .collect::<Vec<_>>(),
                &kept.iter().map(|grant| grant.amount).collect::<Vec<_>>(),
                &terms,
                &kept
                    .iter()
                    .map(|grant| grant.effective_at_ms)
                    .collect::<Vec<_>>(),
                &kept
                    .iter()
                    .map(|grant| grant.state.as_str())
                    .collect::<Vec<_>>(),
            ],
        )?;
    }
    if !granted.is_empty() {
        connection.execute(
            DELETE_SCHEDULED,
            &[&granted
                .iter()
                .map(|grant| grant.grant_id.as_str())
                .collect::<Vec<_>>()],
        )?;
    }
    Ok(())
}

fn grant_from_row(row: &Row) -> StoreResult<(String, GrantRecord)> {
    let grant = GrantRecord {
        tenant: row.try_get(1)?,
        balance: row.try_get(2)?,
        amount: row.try_get(3)?,
        lot: to_u64(row.try_get(4)?),
        terms: LotTerms::default(),
    };
    Ok((row.try_get(0)?, with_terms(grant, row.try_get(5)?)?))
}

/// A row of `lots`: the lot and its grant.
/// An account's spend cap and window from `ACCOUNTS_OF`'s row.
fn cap_from_row(row: &Row) -> StoreResult<Option<(CapTerms, CapWindow)>> {
    let Some(cap) = row.try_get::<_, Option<i64>>(5)? else {
        return Ok(None);
    };
    let kind: Option<String> = row.try_get(6)?;
    let window = kind.as_deref().and_then(Window::parse).ok_or_else(|| {
        MeterError::StoreCorrupt(format!("an account's spend window is {kind:?}"))
    })?;
    let time_zone: Option<String> = row.try_get(7)?;
    let start_ms: Option<i64> = row.try_get(8)?;
    let end_ms: Option<i64> = row.try_get(9)?;
    Ok(Some((
        CapTerms {
            cap,
            window,
            time_zone: time_zone.unwrap_or_default(),
        },
        CapWindow {
            window: start_ms
                .zip(end_ms)
                .map(|(start_ms, end_ms)| Interval { start_ms, end_ms }),
            since_ms: row.try_get(10)?,
            spent: row.try_get(11)?,
        },
    )))
}

fn lot_from_row(row: &Row) -> StoreResult<(Lot, LotInfo)> {
    let lot = Lot {
        id: to_u64(row.try_get(2)?),
        amount: row.try_get(3)?,
        remaining: row.try_get(4)?,
        expires_at_ms: row.try_get(5)?,
        priority: row.try_get(6)?,
        closed: closure_from_text(row.try_get(7)?)?,
    };
    let info = LotInfo {
        tenant: row.try_get(0)?,
        balance: row.try_get(1)?,
        grant_id: row.try_get(8)?,
        terms: terms_from_json(row.try_get(9)?)?,
        granted_at_ms: to_u64(row.try_get(10)?),
    };
    Ok((lot, info))
}

/// The lots a batch touched, as the state has them after it, column by column.
#[derive(Default)]
struct LotColumns<'a> {
    tenant: Vec<&'a str>,
    balance: Vec<&'a str>,
    lot: Vec<i64>,
    amount: Vec<i64>,
    remaining: Vec<i64>,
    expires_at_ms: Vec<Option<i64>>,
    priority: Vec<i32>,
    closed: Vec<Option<&'static str>>,
    grant_id: Vec<String>,
    terms_json: Vec<String>,
    granted_at_ms: Vec<i64>,
}

impl<'a> LotColumns<'a> {
    fn of(
        touched: &BTreeMap<(&'a str, LotId), &'a str>,
        state: &'a LiveState,
    ) -> StoreResult<Self> {
        let mut columns = Self::default();
        for ((tenant, id), balance) in touched {
            let Some((lot, info)) = state.tenant_lot(tenant, *id) else {
                return Err(MeterError::StoreUnavailable(format!(
                    "lot {id} of {tenant}/{balance} left memory mid-batch"
                )));
            };
            columns.tenant.push(tenant);
            columns.balance.push(balance);
            columns.lot.push(to_i64(lot.id));
            columns.amount.push(lot.amount);
            columns.remaining.push(lot.remaining);
            columns.expires_at_ms.push(lot.expires_at_ms);
            columns.priority.push(lot.priority);
            columns.closed.push(lot.closed.map(closure_text));
            columns.terms_json.push(terms_json(lot.id, &info.terms));
            columns.grant_id.push(info.grant_id);
            columns.granted_at_ms.push(to_i64(info.granted_at_ms));
        }
        Ok(columns)
    }
}

impl Store for PostgresStore {
    /// Locks, in one order shared by every process, the tenants, ids and grants the
    /// batch touches, then reads what its decisions will need: a request waits here
    /// for another process's batch on the same tenant, never half-way.
    fn load(&self, claims: &BatchClaims, state: &mut LiveState, now_ms: u64) -> StoreResult<()> {
        state.reset();
        *self.absent.borrow_mut() = Absent::default();
        *self.now_ms.borrow_mut() = now_ms;
        let connected = self
            .connection
            .borrow()
            .as_ref()
            .is_some_and(|connection| !connection.client.is_closed());
        if !connected {
            self.connect()?;
        }
        self.with(|connection| Ok(connection.client.batch_execute("BEGIN")?))?;
        // A batch that may grant draws its lot numbers: grants by id, and refills (the
        // operator's calls and the sweep grant their periods).
        if !claims.grant_ids.is_empty() || claims.schedules || claims.sweep {
            let block: i64 = self.with(|connection| {
                let rows = connection.query(NEXT_LOT_BLOCK, &[])?;
                let row = rows.first().ok_or_else(|| {
                    MeterError::StoreUnavailable("no lot block was drawn".to_owned())
                })?;
                Ok(row.try_get(0)?)
            })?;
            state.next_entry_id = to_u64(block) << LOT_BLOCK_BITS;
        }
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
        let space = self.lock_space.borrow().clone();
        let keys = sorted(
            tenants
                .iter()
                .map(|tenant| tenant_lock(&space, tenant))
                .chain(ids.iter().map(|id| lock_key(&space, "transaction", id)))
                .chain(
                    claims
                        .grant_ids
                        .iter()
                        .map(|id| lock_key(&space, "grant", id)),
                )
                .chain(claims.activation.then(|| activation_lock(&space))),
        );
        if !keys.is_empty() {
            let ids: Vec<&str> = ids.iter().copied().collect();
            let grant_ids: Vec<&str> = claims.grant_ids.iter().map(String::as_str).collect();
            let (records, grants, scheduled) = self.with(|connection| {
                connection.execute(LOCK_IN_ORDER, &[&keys])?;
                let records = if ids.is_empty() {
                    Vec::new()
                } else {
                    connection.query(TRANSACTIONS_BY_ID, &[&ids])?
                };
                let (grants, scheduled) = if grant_ids.is_empty() {
                    (Vec::new(), Vec::new())
                } else {
                    (
                        connection.query(GRANTS_BY_ID, &[&grant_ids])?,
                        connection.query(SCHEDULED_BY_ID, &[&grant_ids])?,
                    )
                };
                Ok((records, grants, scheduled))
            })?;
            let mut absent = self.absent.borrow_mut();
            absent.transactions = ids.iter().map(|id| (*id).to_owned()).collect();
            for row in &records {
                let record = transaction_from_row(row, 1)?;
                absent.transactions.remove(&record.id);
                state.load_transaction(record, 0);
            }
            for row in &scheduled {
                state.know_scheduled(scheduled_from_row(row)?);
            }
            absent.grants = grant_ids.iter().map(|id| (*id).to_owned()).collect();
            for row in &grants {
                let (grant_id, grant) = grant_from_row(row)?;
                absent.grants.remove(&grant_id);
                state.load_grant(&grant_id, grant);
            }
        }
        let tenants: Vec<String> = tenants.into_iter().collect();
        self.load_locked(&tenants, state, claims.sweep || claims.schedules)?;
        if claims.sweep {
            self.load_sweep(state, now_ms)?;
        }
        Ok(())
    }

    fn commit(&self, batch: &Batch, state: &LiveState) -> StoreResult<()> {
        self.flush(batch, state)?;
        self.append_log(batch)?;
        self.with(|connection| Ok(connection.client.batch_execute("COMMIT")?))
    }

    fn abort(&self) {
        let mut slot = self.connection.borrow_mut();
        if let Some(connection) = slot.as_mut()
            && let Err(error) = connection.client.batch_execute("ROLLBACK")
        {
            tracing::warn!(%error, "rollback failed; reconnecting at the next batch");
            *slot = None;
        }
    }

    fn durability(&self) -> StoreResult<Box<dyn Durability>> {
        Ok(Box::new(CommittedIsDurable))
    }
}

impl PostgresStore {
    /// Appends the batch's record to the log (`creditgate replay` reads it), in the
    /// batch's transaction and as its last statement before `COMMIT`, so the log holds
    /// a batch iff the ledger does. Last, because of how its seq is drawn: replicas
    /// commit concurrently, and a batch takes the advisory locks of every tenant it
    /// touches first, holding them to its commit. A later batch of the same tenant
    /// waits on those locks until the first commits, and only then reaches this insert
    /// and draws its seq: per tenant, log order is commit order (across tenants it is
    /// not, and need not be: a replay splits by tenant, and tenants are independent).
    /// A seq drawn by a batch that rolls back is a gap, never reused.
    fn append_log(&self, batch: &Batch) -> StoreResult<()> {
        if batch.decisions.is_empty() {
            return Ok(());
        }
        let record = codec::encode(batch);
        self.with(|connection| {
            connection.execute(APPEND_LOG, &[&to_i64(batch.at_ms), &record])?;
            Ok(())
        })
    }

    /// The sweep: tenants with lapsed holds that no other process holds now are locked
    /// and read; those another process holds are left to it (their own next authorize
    /// releases their lapsed holds, or a later sweep does). Never waiting here keeps the
    /// sweep out of any lock cycle.
    fn load_sweep(&self, state: &mut LiveState, now_ms: u64) -> StoreResult<()> {
        const SWEEP_TENANTS_MAX: i64 = 1_000;
        let candidates: Vec<String> = self.with(|connection| {
            connection
                .query(TENANTS_DUE, &[&to_i64(now_ms), &SWEEP_TENANTS_MAX])?
                .iter()
                .map(|row| Ok(row.try_get(0)?))
                .collect()
        })?;
        let unlocked: Vec<&String> = candidates
            .iter()
            .filter(|tenant| !state.has_tenant(tenant))
            .collect();
        if unlocked.is_empty() {
            return Ok(());
        }
        let space = self.lock_space.borrow().clone();
        let keys: Vec<i64> = unlocked
            .iter()
            .map(|tenant| tenant_lock(&space, tenant))
            .collect();
        let acquired: BTreeSet<i64> = self.with(|connection| {
            connection
                .query(TRY_LOCK, &[&keys])?
                .iter()
                .map(|row| Ok(row.try_get(0)?))
                .collect()
        })?;
        let locked: Vec<String> = unlocked
            .into_iter()
            .filter(|tenant| acquired.contains(&tenant_lock(&space, tenant)))
            .cloned()
            .collect();
        self.load_locked(&locked, state, true)
    }
}

/// PostgreSQL's commit returns once the commit record is flushed: nothing to wait for.
struct CommittedIsDurable;

impl Durability for CommittedIsDurable {
    fn persist(&mut self, _batches: &[std::sync::Arc<Batch>]) -> StoreResult<()> {
        Ok(())
    }
}
