//! PostgreSQL, the store several gateway processes share. One tenant's credits are one
//! set of rows; every batch locks, in one global order, the tenants, transaction ids
//! and grant ids its decisions touch (transaction-scoped advisory locks), reads them
//! under the locks into a fresh live state, and applies the batch's record in a handful
//! of statements at commit. A commit is durable when it returns (`synchronous_commit` as
//! the server sets it, on by default), so answers wait for nothing more.

pub mod log;
mod reader;
pub mod replicas;
pub mod webhooks;
mod writer;

use std::str::FromStr;
use std::time::Duration;

use postgres::{Client, Config, NoTls, Row};
use sha2::{Digest, Sha256};

pub use reader::PostgresReader;
pub use writer::PostgresStore;

use super::{StoreResult, StoredPolicy};
use crate::error::MeterError;
use crate::ledger::codec;
use crate::ledger::legacy::{self, TransactionRowV0};
use crate::ledger::lots::Closure;
use crate::ledger::state::TransactionRecord;
use crate::model::PolicyRef;
use crate::policy::PolicyDigest;

/// One step of the schema's history.
enum Migration {
    Sql(&'static str),
    /// Transactions' JSON columns (the API's types) become the ledger's own record.
    RecordsFromJson,
}

/// Schema migrations, applied in order at connect; `creditgate_schema` lists those
/// applied. One process migrates at a time (an advisory lock), the others wait.
const MIGRATIONS: &[Migration] = &[
    Migration::Sql(V1),
    Migration::Sql("ALTER TABLE transactions ADD COLUMN record BYTEA"),
    Migration::RecordsFromJson,
    Migration::Sql(
        "ALTER TABLE transactions DROP COLUMN request_json, DROP COLUMN authorization_json, \
         DROP COLUMN held_json, DROP COLUMN receipt_json; \
         ALTER TABLE transactions ALTER COLUMN record SET NOT NULL",
    ),
    // The writer closes transactions `WHERE id = .. AND state = 'open'`, and that
    // predicate implied this index's: on a ledger that grew faster than autovacuum
    // analyzed it, the generic plan scanned the whole index (dead entries included) for
    // every batch instead of looking the ids up (measured: 1,300 index entries read per
    // batch after 5,000 transactions, and throughput falling by a third each
    // repetition). A predicate the writer's statements do not imply keeps it to the
    // sweep's query, which names it.
    Migration::Sql(
        "DROP INDEX transactions_open_by_policy; \
         CREATE INDEX transactions_open_by_policy ON transactions (policy_digest) \
         WHERE state = 'open' AND policy_digest IS NOT NULL",
    ),
    // Lots (record format 3, `docs/credits.md`): a grant's lot and terms (empty for a
    // grant made before lots), the lot each journal entry moved, and every lot's state.
    // Lot numbers come in blocks, one per batch (`lot_blocks`), so replicas never
    // share one.
    Migration::Sql(
        "ALTER TABLE grants ADD COLUMN lot BIGINT NOT NULL DEFAULT 0,          ADD COLUMN terms_json TEXT NOT NULL DEFAULT '';          ALTER TABLE journal ADD COLUMN lot BIGINT;          CREATE TABLE lots (              tenant        TEXT NOT NULL,              balance       TEXT NOT NULL,              lot           BIGINT NOT NULL,              amount        BIGINT NOT NULL CHECK (amount > 0),              remaining     BIGINT NOT NULL CHECK (remaining >= 0 AND remaining <= amount),              expires_at_ms BIGINT,              priority      INTEGER NOT NULL,              closed        TEXT,              grant_id      TEXT NOT NULL,              terms_json    TEXT NOT NULL,              granted_at_ms BIGINT NOT NULL,              PRIMARY KEY (tenant, lot)          );          CREATE INDEX lots_open_by_expiry ON lots (expires_at_ms)              WHERE closed IS NULL AND expires_at_ms IS NOT NULL;          CREATE SEQUENCE lot_blocks",
    ),
    // Overdraft limits (record format 4): the limit lives in its account's row. The
    // database no longer checks `available >= 0`: the floor is minus the limit, and a
    // lowered limit may leave an account below it (spending stops, nothing moves),
    // which no row constraint can tell from a broken write; the host checks it at
    // every decision and the audit recomputes it.
    Migration::Sql(
        "ALTER TABLE accounts ADD COLUMN overdraft_limit BIGINT NOT NULL DEFAULT 0 \
             CHECK (overdraft_limit >= 0), \
             DROP CONSTRAINT accounts_available_check",
    ),
    // Spend caps (record format 5): an account's cap and its current window live in
    // its row, read with it under the tenant's lock (no extra round trip). A row has
    // a cap and a window kind and zone, or none of them.
    Migration::Sql(
        "ALTER TABLE accounts ADD COLUMN spend_cap BIGINT CHECK (spend_cap >= 0), \
             ADD COLUMN spend_window TEXT, \
             ADD COLUMN spend_time_zone TEXT, \
             ADD COLUMN spend_window_start_ms BIGINT, \
             ADD COLUMN spend_window_end_ms BIGINT, \
             ADD COLUMN spend_since_ms BIGINT NOT NULL DEFAULT 0, \
             ADD COLUMN spent BIGINT NOT NULL DEFAULT 0 CHECK (spent >= 0), \
             ADD CONSTRAINT accounts_spend_cap_whole CHECK ( \
                 (spend_cap IS NULL) = (spend_window IS NULL) \
                 AND (spend_cap IS NULL) = (spend_time_zone IS NULL))",
    ),
    // Refills (record format 5): read by the sweep and the operator's calls only, never
    // on the request path. `next_start_ms` is when the sweep grants the next period.
    Migration::Sql(
        "CREATE TABLE refills ( \
             tenant        TEXT NOT NULL, \
             refill_id     TEXT NOT NULL, \
             terms_json    TEXT NOT NULL, \
             last_start_ms BIGINT, \
             next_start_ms BIGINT NOT NULL, \
             PRIMARY KEY (tenant, refill_id) \
         ); \
         CREATE INDEX refills_by_next_start ON refills (next_start_ms)",
    ),
    // Events (record format 6): an account's watch lives in its row (`watch_json`,
    // read with it), with its lead time and the lots it warned of as columns for the
    // sweep's query. An event's id comes from `event_ids` under the events lock, held
    // to commit, so ids become visible in order and a reader after id N never misses
    // one below a later N.
    Migration::Sql(
        "ALTER TABLE accounts ADD COLUMN watch_json TEXT, \
             ADD COLUMN expiring_lead_ms BIGINT, \
             ADD COLUMN warned_lots BIGINT[] NOT NULL DEFAULT '{}'; \
         CREATE INDEX accounts_warned_early ON accounts (tenant) \
             WHERE expiring_lead_ms IS NOT NULL; \
         CREATE TABLE events ( \
             id      BIGINT PRIMARY KEY, \
             tenant  TEXT NOT NULL, \
             balance TEXT NOT NULL, \
             kind    TEXT NOT NULL, \
             at_ms   BIGINT NOT NULL, \
             record  BYTEA NOT NULL \
         ); \
         CREATE INDEX events_by_tenant ON events (tenant, id); \
         CREATE SEQUENCE event_ids",
    ),
    // Webhooks (operational, not the ledger's): what each is and where its delivery
    // is, and the events it gave up on.
    Migration::Sql(
        "CREATE TABLE webhooks ( \
             id                 TEXT PRIMARY KEY, \
             url                TEXT NOT NULL, \
             secret             TEXT NOT NULL, \
             tenant             TEXT, \
             kinds_json         TEXT NOT NULL, \
             attempts_max       INTEGER NOT NULL, \
             after              BIGINT NOT NULL, \
             attempts           INTEGER NOT NULL DEFAULT 0, \
             next_attempt_at_ms BIGINT, \
             last_error         TEXT \
         ); \
         CREATE TABLE webhook_dead ( \
             webhook_id TEXT NOT NULL, \
             event_id   BIGINT NOT NULL, \
             attempts   INTEGER NOT NULL, \
             last_error TEXT NOT NULL, \
             dead_at_ms BIGINT NOT NULL, \
             requeued   BOOLEAN NOT NULL DEFAULT false, \
             PRIMARY KEY (webhook_id, event_id) \
         )",
    ),
    // Grants that take effect later (record format 7): one row each while pending,
    // voided or refused (the id stays taken); a granted one leaves (its lot is in
    // `lots`). Read by grant id (a retry, a void) and by tenant (the sweep, a listing).
    Migration::Sql(
        "CREATE TABLE scheduled_grants ( \
             grant_id        TEXT PRIMARY KEY, \
             tenant          TEXT NOT NULL, \
             balance         TEXT NOT NULL, \
             amount          BIGINT NOT NULL CHECK (amount > 0), \
             terms_json      TEXT NOT NULL, \
             effective_at_ms BIGINT NOT NULL, \
             state           TEXT NOT NULL \
         ); \
         CREATE INDEX scheduled_grants_by_tenant ON scheduled_grants (tenant); \
         CREATE INDEX scheduled_grants_pending ON scheduled_grants (effective_at_ms) \
             WHERE state = 'pending'",
    ),
    // One activation for every replica (docs/policy-authors.md, part 5): each replica's
    // heartbeat, what it runs and whether it is behind the ledger's latest activation.
    Migration::Sql(
        "CREATE TABLE replicas ( \
             replica    TEXT PRIMARY KEY, \
             digest     TEXT NOT NULL, \
             behind     TEXT, \
             error      TEXT, \
             seen_at_ms BIGINT NOT NULL \
         )",
    ),
    // A shadow for every replica (docs/policy-authors.md, part 5): each setting or
    // clearing of the shadow candidate, the latest one's bytes, and in each replica's
    // heartbeat the setting it runs and its report.
    Migration::Sql(
        "CREATE TABLE shadows ( \
             id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             digest    TEXT, \
             component BYTEA, \
             via       TEXT NOT NULL, \
             set_at_ms BIGINT NOT NULL \
         ); \
         ALTER TABLE replicas ADD COLUMN shadow BIGINT, ADD COLUMN shadow_json TEXT",
    ),
    // The log of batches (`log.rs`; what `creditgate replay` reads): each batch's
    // record, in the ledger's own format, appended by its transaction as its last
    // statement (`writer.rs`, `append_log`). A ledger migrated here with rows already
    // written has no record of those: `log_unlogged` names the tenants that had any and
    // `log_start` when the log began, so that a replay refuses those tenants instead of
    // starting them from zero.
    Migration::Sql(LOG_SCHEMA),
];

/// The log's tables. Self-contained: it reads only tables the migrations before it made.
const LOG_SCHEMA: &str = "CREATE TABLE log ( \
         seq    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         at_ms  BIGINT NOT NULL, \
         record BYTEA NOT NULL \
     ); \
     CREATE TABLE log_start (began_at_ms BIGINT NOT NULL); \
     INSERT INTO log_start \
         SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint; \
     CREATE TABLE log_unlogged (tenant TEXT PRIMARY KEY); \
     INSERT INTO log_unlogged \
         SELECT tenant FROM accounts UNION SELECT tenant FROM transactions \
         UNION SELECT tenant FROM grants UNION SELECT tenant FROM marks \
         UNION SELECT tenant FROM lots UNION SELECT tenant FROM refills \
         UNION SELECT tenant FROM scheduled_grants UNION SELECT tenant FROM events";

/// The first schema, as the build before the log created it.
const V1: &str = r#"
CREATE TABLE accounts (
    tenant    TEXT NOT NULL,
    balance   TEXT NOT NULL,
    available BIGINT NOT NULL CHECK (available >= 0),
    held      BIGINT NOT NULL CHECK (held >= 0),
    PRIMARY KEY (tenant, balance)
);

CREATE TABLE transactions (
    id                 TEXT PRIMARY KEY,
    tenant             TEXT NOT NULL,
    state              TEXT NOT NULL,
    fingerprint        TEXT NOT NULL,
    policy_digest      TEXT NOT NULL,
    request_json       TEXT NOT NULL,
    authorization_json TEXT NOT NULL,
    held_json          TEXT NOT NULL,
    created_at_ms      BIGINT NOT NULL,
    expires_at_ms      BIGINT,
    receipt_json       TEXT
);
CREATE INDEX transactions_open_by_expiry ON transactions (expires_at_ms)
    WHERE state = 'open' AND expires_at_ms IS NOT NULL;
CREATE INDEX transactions_open_by_tenant ON transactions (tenant, expires_at_ms)
    WHERE state = 'open' AND expires_at_ms IS NOT NULL;
CREATE INDEX transactions_open_by_policy ON transactions (policy_digest) WHERE state = 'open';

CREATE TABLE journal (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id TEXT NOT NULL,
    tenant         TEXT NOT NULL,
    balance        TEXT NOT NULL,
    kind           TEXT NOT NULL,
    amount         BIGINT NOT NULL CHECK (amount > 0),
    policy_digest  TEXT NOT NULL,
    at_ms          BIGINT NOT NULL
);
CREATE INDEX journal_by_transaction ON journal (transaction_id);
CREATE INDEX journal_by_account ON journal (tenant, balance);

CREATE TABLE marks (
    tenant         TEXT NOT NULL,
    scope          TEXT NOT NULL,
    key            TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    PRIMARY KEY (tenant, scope, key)
);

CREATE TABLE grants (
    grant_id TEXT PRIMARY KEY,
    tenant   TEXT NOT NULL,
    balance  TEXT NOT NULL,
    amount   BIGINT NOT NULL,
    at_ms    BIGINT NOT NULL
);

CREATE TABLE policies (
    digest          TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    version         TEXT NOT NULL,
    balances_json   TEXT NOT NULL,
    hold_ttl_ms     BIGINT NOT NULL,
    component       BYTEA,
    activated_at_ms BIGINT NOT NULL
);

CREATE TABLE policy_activations (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    digest          TEXT NOT NULL REFERENCES policies (digest),
    via             TEXT NOT NULL,
    activated_at_ms BIGINT NOT NULL
);
"#;

/// How long connecting may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The parsed URL, with creditgate's defaults where it is silent.
fn config(url: &str) -> StoreResult<Config> {
    let mut config = Config::from_str(url).map_err(|error| {
        MeterError::InvalidRequest(format!(
            "'{}' is not a PostgreSQL URL: {error}",
            redact(url)
        ))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("creditgate");
    }
    Ok(config)
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) => {
                let user = user.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Opens the ledger in the database at `url`: its writer and its reader. Neither needs
/// the database to be up yet: the writer connects (and migrates) at its first batch and
/// again after any lost connection; until then every decision fails `store_unavailable`.
pub fn open(url: &str) -> StoreResult<(PostgresStore, PostgresReader)> {
    let config = config(url)?;
    let writer = PostgresStore::new(config.clone(), redact(url));
    match writer.connect() {
        Ok(()) => {}
        Err(error @ MeterError::StoreUnavailable(_)) => {
            tracing::warn!(%error, "PostgreSQL is not reachable yet; decisions fail closed until it is");
        }
        Err(error) => return Err(error),
    }
    Ok((writer, PostgresReader::new(config)))
}

/// A reader of the ledger at `url`, once its schema is up to date: the database must
/// be reachable.
pub fn open_reader(url: &str) -> StoreResult<PostgresReader> {
    let config = config(url)?;
    connect(&config).map_err(|error| match error {
        MeterError::StoreUnavailable(why) => {
            MeterError::StoreUnavailable(format!("cannot reach {}: {why}", redact(url)))
        }
        other => other,
    })?;
    Ok(PostgresReader::new(config))
}

/// The webhooks of the ledger at `url` (its schema is brought up to date by the
/// ledger's own connection).
pub fn open_webhooks(url: &str) -> StoreResult<webhooks::PostgresWebhooks> {
    Ok(webhooks::open(config(url)?))
}

/// Creates an empty schema (for a scratch ledger).
#[cfg(feature = "scratch")]
pub(super) fn create_schema(url: &str, schema: &str) -> StoreResult<()> {
    let mut client = config(url)?.connect(NoTls)?;
    client.batch_execute(&format!("CREATE SCHEMA \"{schema}\""))?;
    Ok(())
}

#[cfg(feature = "scratch")]
pub(super) fn drop_schema(url: &str, schema: &str) -> StoreResult<()> {
    let mut client = config(url)?.connect(NoTls)?;
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))?;
    Ok(())
}

/// The URL with every connection's `search_path` set to `schema`.
#[cfg(any(feature = "scratch", test))]
pub(super) fn with_search_path(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-csearch_path%3D{schema}")
}

/// Connects and brings the schema up to date.
fn connect(config: &Config) -> StoreResult<Client> {
    let mut client = config.connect(NoTls)?;
    migrate(&mut client)?;
    Ok(client)
}

/// Serializes migrations of one database across processes.
const MIGRATION_LOCK: i64 = 0x6372_6564_6974_6701;

fn migrate(client: &mut Client) -> StoreResult<()> {
    migrate_to(client, MIGRATIONS.len())
}

/// Applies the migrations not applied yet, up to the first `up_to`.
fn migrate_to(client: &mut Client, up_to: usize) -> StoreResult<()> {
    let mut transaction = client.transaction()?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    transaction.batch_execute(
        "CREATE TABLE IF NOT EXISTS creditgate_schema (
             version    INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )?;
    let applied: i32 = transaction
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM creditgate_schema",
            &[],
        )?
        .get(0);
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(MeterError::StoreIncompatible(format!(
            "the database has schema version {applied}, newer than this build's {}; upgrade creditgate",
            MIGRATIONS.len()
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().take(up_to).skip(applied) {
        match migration {
            Migration::Sql(sql) => transaction.batch_execute(sql)?,
            Migration::RecordsFromJson => records_from_json(&mut transaction)?,
        }
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        transaction.execute(
            "INSERT INTO creditgate_schema (version) VALUES ($1)",
            &[&version],
        )?;
    }
    transaction.commit()?;
    Ok(())
}

/// Rewrites every transaction's JSON columns as the ledger's record.
fn records_from_json(transaction: &mut postgres::Transaction<'_>) -> StoreResult<()> {
    let rows = transaction.query(
        "SELECT id, tenant, state, fingerprint, policy_digest, created_at_ms, expires_at_ms, \
         request_json, authorization_json, held_json, receipt_json FROM transactions",
        &[],
    )?;
    let update = transaction.prepare("UPDATE transactions SET record = $2 WHERE id = $1")?;
    for row in &rows {
        let policy_digest: String = row.try_get(4)?;
        let imported = legacy::transaction(
            &TransactionRowV0 {
                id: row.try_get(0)?,
                tenant: row.try_get(1)?,
                state: row.try_get(2)?,
                fingerprint: row.try_get(3)?,
                created_at_ms: to_u64(row.try_get(5)?),
                expires_at_ms: row.try_get::<_, Option<i64>>(6)?.map(to_u64),
                request_json: row.try_get(7)?,
                authorization_json: row.try_get(8)?,
                held_json: row.try_get(9)?,
                receipt_json: row.try_get(10)?,
            },
            0,
        )
        .map_err(MeterError::StoreCorrupt)?;
        let policy = legacy::digest_from_hex(&policy_digest).ok_or_else(|| {
            MeterError::StoreCorrupt(format!("policy digest '{policy_digest}' is not a sha256"))
        })?;
        let record = TransactionRecord {
            id: imported.id,
            tenant: imported.tenant,
            state: imported.state,
            fingerprint: imported.fingerprint,
            policy,
            created_at_ms: imported.created_at_ms,
            expires_at_ms: imported.expires_at_ms,
            operation: imported.operation,
            request: imported.request,
            authorization: imported.authorization,
            receipt: imported.receipt,
            held: imported.held,
            drawn: Vec::new(),
        };
        transaction.execute(&update, &[&record.id, &encode_record(&record)])?;
    }
    Ok(())
}

const RECORD_MAGIC: &[u8; 4] = b"CGT1";

/// Why a lot closed, as the `lots.closed` column says it.
fn closure_text(closure: Closure) -> &'static str {
    match closure {
        Closure::Expired => "expired",
        Closure::Voided => "voided",
    }
}

fn closure_from_text(text: Option<String>) -> StoreResult<Option<Closure>> {
    match text.as_deref() {
        None => Ok(None),
        Some("expired") => Ok(Some(Closure::Expired)),
        Some("voided") => Ok(Some(Closure::Voided)),
        Some(other) => Err(MeterError::StoreCorrupt(format!(
            "a lot is closed as '{other}', which this build does not know"
        ))),
    }
}

/// A transaction as the `record` column stores it: the ledger's versioned format.
fn encode_record(record: &TransactionRecord) -> Vec<u8> {
    codec::encode_value(RECORD_MAGIC, record)
}

fn decode_record(bytes: &[u8]) -> StoreResult<TransactionRecord> {
    Ok(codec::decode_transaction(RECORD_MAGIC, bytes)?)
}

/// The advisory lock that stands for one tenant, transaction id or grant id of the
/// ledger in `space` (its database and schema): the first 8 bytes of a sha256 of the
/// three. Advisory locks belong to a whole cluster, so ledgers in other schemas or
/// databases never wait on each other's; two names sharing a key only wait on each
/// other more than they need to.
fn lock_key(space: &str, kind: &str, name: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(space.as_bytes())
        .chain_update([0])
        .chain_update(kind.as_bytes())
        .chain_update([0])
        .chain_update(name.as_bytes())
        .finalize();
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

fn tenant_lock(space: &str, tenant: &str) -> i64 {
    lock_key(space, "tenant", tenant)
}

/// Taken by every batch that records events, from its first event id to its commit, so
/// that event ids become visible in their order.
fn events_lock(space: &str) -> i64 {
    lock_key(space, "events", "")
}

/// An event as the `events` table keeps it.
const EVENT_MAGIC: &[u8; 4] = b"CGE1";

fn encode_event(event: &crate::ledger::record::EventRecord) -> Vec<u8> {
    codec::encode_value(EVENT_MAGIC, event)
}

fn decode_event(bytes: &[u8]) -> StoreResult<crate::ledger::record::EventRecord> {
    Ok(codec::decode_value(EVENT_MAGIC, bytes)?)
}

/// Taken by every activation, so the history gets one entry per switch.
fn activation_lock(space: &str) -> i64 {
    lock_key(space, "activation", "")
}

/// What names the ledger a connection works on, for its lock keys.
const LOCK_SPACE: &str = "SELECT current_database() || '.' || COALESCE(current_schema(), '')";

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A policy from a row of `digest, name, version, component`.
fn policy_from_row(row: &Row) -> StoreResult<StoredPolicy> {
    let digest: String = row.try_get(0)?;
    let digest = PolicyDigest::parse(&digest).ok_or_else(|| {
        MeterError::StoreCorrupt(format!("policy digest '{digest}' is not a sha256"))
    })?;
    Ok(StoredPolicy {
        policy: PolicyRef {
            name: row.try_get(1)?,
            version: row.try_get(2)?,
            digest: digest.to_string(),
        },
        component: row.try_get(3)?,
    })
}

/// A transaction from its `record` column.
fn transaction_from_row(row: &Row, column: usize) -> StoreResult<TransactionRecord> {
    let bytes: Vec<u8> = row.try_get(column)?;
    decode_record(&bytes)
}

#[cfg(test)]
mod tests {
    use super::{lock_key, redact};

    /// The log's migration on a ledger that had rows: the tenants with any are named,
    /// and the log's reader refuses them (and only them).
    #[test]
    fn the_log_s_migration_names_the_tenants_written_before_it() {
        let url = std::env::var("CREDITGATE_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let schema = format!("creditgate_migration_{}", uuid::Uuid::now_v7().simple());
        let mut admin = super::config(&url)
            .unwrap()
            .connect(postgres::NoTls)
            .unwrap();
        admin
            .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .unwrap();
        let ledger = super::with_search_path(&url, &schema);
        let result = std::panic::catch_unwind(|| {
            let mut client = super::config(&ledger)
                .unwrap()
                .connect(postgres::NoTls)
                .unwrap();
            let log = super::MIGRATIONS
                .iter()
                .position(|migration| {
                    matches!(migration, super::Migration::Sql(sql) if *sql == super::LOG_SCHEMA)
                })
                .unwrap();
            super::migrate_to(&mut client, log).unwrap();
            client
                .batch_execute(
                    "INSERT INTO accounts (tenant, balance, available, held) \
                     VALUES ('before', 'default', 5, 0); \
                     INSERT INTO marks VALUES ('marked', 'export', 'k', 't1')",
                )
                .unwrap();
            super::migrate(&mut client).unwrap();
            let unlogged: Vec<String> = client
                .query("SELECT tenant FROM log_unlogged ORDER BY tenant", &[])
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect();
            assert_eq!(unlogged, ["before", "marked"]);
            let mut log = super::log::PostgresLog::open(&ledger, None).unwrap();
            assert_eq!(log.last_seq().unwrap(), 0);
            let unlogged = log.unlogged(&[]).unwrap().unwrap();
            assert_eq!(unlogged.tenants, ["before", "marked"]);
            assert!(unlogged.began_at_ms > 1_700_000_000_000);
            assert_eq!(log.unlogged(&["after".to_owned()]).unwrap(), None);
        });
        admin
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .unwrap();
        result.unwrap();
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("postgres://app:s3cret@db.internal:5432/ledger"),
            "postgres://app@db.internal:5432/ledger"
        );
        assert_eq!(
            redact("postgres://127.0.0.1/test"),
            "postgres://127.0.0.1/test"
        );
    }

    #[test]
    fn a_search_path_joins_the_url_s_other_parameters() {
        assert_eq!(
            super::with_search_path("postgres://u@h/db", "s1"),
            "postgres://u@h/db?options=-csearch_path%3Ds1"
        );
        assert_eq!(
            super::with_search_path("postgres://u@h/db?connect_timeout=2", "s1"),
            "postgres://u@h/db?connect_timeout=2&options=-csearch_path%3Ds1"
        );
    }

    #[test]
    fn lock_keys_differ_by_ledger_kind_and_name() {
        let key = |space, kind, name| lock_key(space, kind, name);
        assert_ne!(key("db.a", "tenant", "acme"), key("db.a", "grant", "acme"));
        assert_ne!(
            key("db.a", "tenant", "acme"),
            key("db.a", "tenant", "acme2")
        );
        assert_ne!(key("db.a", "tenant", "acme"), key("db.b", "tenant", "acme"));
        assert_eq!(key("db.a", "tenant", "acme"), key("db.a", "tenant", "acme"));
    }
}
