//! The embedded default: one SQLite file on disk, in WAL mode. The writer's commits
//! reach the disk through [`durability::WalSync`] before their answers are sent; the
//! other connections (readers, operator commands, checkpoints) run `synchronous=FULL`.

mod cache;
mod checkpoint;
mod durability;
mod reader;
mod writer;

use std::path::Path;

use rusqlite::{Connection, Row};

pub use reader::SqliteReader;
pub use writer::SqliteWriter;

use super::{StoreResult, StoredPolicy};
use crate::error::MeterError;
use crate::ledger::{TransactionRecord, TransactionState};
use crate::model::{Amounts, AuthorizeRequest, Receipt};
use crate::policy::{PolicyDigest, PolicyInfo};

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
    // Lapsed holds of one tenant are found through the expiry index (few are ever due
    // at once); one index less to update on every authorize and settle.
    r#"
DROP INDEX transactions_open_by_tenant;
"#,
    // The policies open transactions still need (asked at every sweep once a second
    // policy is loaded) were found by scanning every transaction ever made.
    r#"
CREATE INDEX transactions_open_by_policy ON transactions (policy_digest) WHERE state = 'open';
"#,
];

fn open_connection(path: &Path) -> StoreResult<Connection> {
    let connection = Connection::open(path).map_err(|error| {
        MeterError::StoreUnavailable(format!("cannot open {}: {error}", path.display()))
    })?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit by any connection but the meter's writer is fsynced by itself.
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.set_prepared_statement_cache_capacity(64);
    Ok(connection)
}

fn migrate(connection: &Connection) -> StoreResult<()> {
    let applied: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let applied = usize::try_from(applied).unwrap_or(0);

    if applied > MIGRATIONS.len() {
        return Err(MeterError::StoreIncompatible(format!(
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

/// The writer's page cache, in KiB (SQLite's default is 2 MiB).
const WRITER_CACHE_KIB: i64 = 16 * 1024;

/// Pages (4 KiB) the write-ahead log may grow to before the writer checkpoints it itself.
const WAL_PAGES_MAX: i64 = 16_384;

/// Opens (creating if needed) the ledger file: its writer and its reader.
pub fn open(path: impl AsRef<Path>) -> StoreResult<(SqliteWriter, SqliteReader)> {
    let path = path.as_ref().to_path_buf();
    let connection = open_connection(&path)?;
    migrate(&connection)?;
    // The writer commits without fsync; `durability::WalSync` syncs the log after, on a
    // thread of its own, before any answer of the batch goes out.
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    // The writer touches account and index pages all over the file: keep more of them.
    connection.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    // The checkpoint thread copies the log back as it grows; at this size the writer
    // checkpoints too (little is left to copy) and restarts the log from its start.
    connection.pragma_update(None, "wal_autocheckpoint", WAL_PAGES_MAX)?;
    let checkpointer = checkpoint::Checkpointer::start(&path)?;
    Ok((
        SqliteWriter::new(connection, checkpointer, path.clone()),
        SqliteReader::new(path),
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
