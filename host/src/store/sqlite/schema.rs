//! The schemas of the two files, and the migration of a ledger written before the log.
//!
//! `PATH` counts its schema in `PRAGMA user_version`: versions 1 to 4 are the tables
//! every decision wrote before the log (kept here to bring any earlier ledger to 4);
//! version 5 is the log. A ledger at 1 to 4 is migrated at open, in one transaction:
//! its rows become `Import` records at the head of the log, then the old tables go.
//! `PATH.views` counts its own schema the same way.

use rusqlite::{Connection, OptionalExtension, params};

use super::{to_i64, to_u64};
use crate::error::MeterError;
use crate::ledger::codec;
use crate::ledger::legacy::{self, TransactionRowV0};
use crate::ledger::record::{
    Batch, Decision, Digest, Imported, ImportedActivation, ImportedEntry, ImportedGrant,
    PolicyRecord,
};
use crate::ledger::{AccountState, EntryKind};
use crate::store::StoreResult;

/// The tables of ledgers written before the log, as those builds created them.
const LEGACY_MIGRATIONS: &[&str] = &[
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

/// The schema version of `PATH` this build writes: the log.
const LOG_VERSION: usize = LEGACY_MIGRATIONS.len() + 1;

const LOG_SCHEMA: &str = "CREATE TABLE log (seq INTEGER PRIMARY KEY, record BLOB NOT NULL);";

/// Rows of an old table per `Import` record.
const IMPORT_ROWS_MAX: usize = 10_000;

fn user_version(connection: &Connection) -> StoreResult<usize> {
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    Ok(usize::try_from(version).unwrap_or(0))
}

fn newer(file: &str, found: usize, known: usize) -> MeterError {
    MeterError::StoreIncompatible(format!(
        "{file} has schema version {found}, newer than this build's {known}; upgrade creditgate"
    ))
}

/// Brings `PATH` to the log's schema; a ledger written before the log is imported.
pub fn migrate_log(connection: &Connection) -> StoreResult<()> {
    let applied = user_version(connection)?;
    if applied > LOG_VERSION {
        return Err(newer("the ledger", applied, LOG_VERSION));
    }
    if applied == LOG_VERSION {
        return Ok(());
    }
    connection.execute_batch("BEGIN IMMEDIATE")?;
    let migrated = (|| {
        if applied == 0 {
            connection.execute_batch(LOG_SCHEMA)?;
        } else {
            for migration in LEGACY_MIGRATIONS.iter().skip(applied) {
                connection.execute_batch(migration)?;
            }
            connection.execute_batch(LOG_SCHEMA)?;
            import_legacy(connection)?;
        }
        connection.pragma_update(None, "user_version", LOG_VERSION as i64)?;
        Ok(())
    })();
    match migrated {
        Ok(()) => Ok(connection.execute_batch("COMMIT")?),
        Err(error) => {
            let _ = connection.execute_batch("ROLLBACK");
            Err(error)
        }
    }
}

const VIEWS_MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE applied (one INTEGER PRIMARY KEY CHECK (one = 1), seq INTEGER NOT NULL);
INSERT INTO applied (one, seq) VALUES (1, 0);
CREATE TABLE policies (
    id            INTEGER PRIMARY KEY,
    digest        TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    balances_json TEXT NOT NULL,
    hold_ttl_ms   INTEGER NOT NULL,
    component     BLOB
);
CREATE TABLE activations (
    id     INTEGER PRIMARY KEY,
    policy INTEGER NOT NULL REFERENCES policies (id),
    via    TEXT NOT NULL,
    at_ms  INTEGER NOT NULL
);
CREATE TABLE transactions (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    state         TEXT NOT NULL,
    opened_seq    INTEGER NOT NULL,
    opened_index  INTEGER NOT NULL,
    opened_item   INTEGER,
    opened_entry  INTEGER NOT NULL,
    closed_seq    INTEGER,
    closed_index  INTEGER,
    closed_entry  INTEGER
) WITHOUT ROWID;
CREATE TABLE tenant_log (
    tenant      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    decision    INTEGER NOT NULL,
    first_entry INTEGER NOT NULL,
    PRIMARY KEY (tenant, seq, decision)
) WITHOUT ROWID;
CREATE TABLE batches (
    seq        INTEGER PRIMARY KEY,
    last_entry INTEGER NOT NULL
);
CREATE INDEX batches_by_last_entry ON batches (last_entry);
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
) WITHOUT ROWID;
CREATE TABLE snapshot (part INTEGER PRIMARY KEY, bytes BLOB NOT NULL);
CREATE TABLE snapshot_meta (one INTEGER PRIMARY KEY CHECK (one = 1), start_seq INTEGER NOT NULL);
CREATE TABLE snapshot_next (part INTEGER PRIMARY KEY, bytes BLOB NOT NULL);
"#,
    // Lots (record format 3): a grant's lot number and terms; empty terms for a grant
    // made before lots.
    r#"
ALTER TABLE grants ADD COLUMN lot INTEGER NOT NULL DEFAULT 0;
ALTER TABLE grants ADD COLUMN terms_json TEXT NOT NULL DEFAULT '';
"#,
    // Events (record format 6): where each is in the log, numbered in log order (a
    // row is never deleted, so a new id is always the largest).
    r#"
CREATE TABLE events (
    id       INTEGER PRIMARY KEY,
    seq      INTEGER NOT NULL,
    decision INTEGER NOT NULL,
    tenant   TEXT NOT NULL,
    UNIQUE (seq, decision)
);
CREATE INDEX events_by_tenant ON events (tenant, id);
"#,
];

/// Brings `PATH.views` to this build's schema.
pub fn migrate_views(connection: &Connection) -> StoreResult<()> {
    let applied = user_version(connection)?;
    if applied > VIEWS_MIGRATIONS.len() {
        return Err(newer("the ledger's views", applied, VIEWS_MIGRATIONS.len()));
    }
    for (index, migration) in VIEWS_MIGRATIONS.iter().enumerate().skip(applied) {
        connection.execute_batch(&format!(
            "BEGIN IMMEDIATE; {migration}; PRAGMA user_version = {}; COMMIT;",
            index + 1
        ))?;
    }
    Ok(())
}

fn conversion(error: impl std::fmt::Display) -> MeterError {
    MeterError::StoreCorrupt(format!(
        "a row written before the log does not convert: {error}"
    ))
}

/// The old tables' rows, appended to the log as `Import` records (in batches of
/// [`IMPORT_ROWS_MAX`] rows), then the old tables dropped. Inside the migration's
/// transaction.
fn import_legacy(connection: &Connection) -> StoreResult<()> {
    let policies: Vec<(Digest, PolicyRecord)> = connection
        .prepare(
            "SELECT digest, name, version, balances_json, hold_ttl_ms, component FROM policies",
        )?
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, Option<Vec<u8>>>(5)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .enumerate()
        .map(
            |(index, (digest, name, version, balances, ttl, component))| {
                let digest = legacy::digest_from_hex(&digest)
                    .ok_or_else(|| conversion(format!("policy digest '{digest}'")))?;
                let balances: Vec<String> = serde_json::from_str(&balances).map_err(conversion)?;
                Ok((
                    digest,
                    PolicyRecord {
                        policy: index as u32,
                        name,
                        version,
                        balances,
                        hold_ttl_ms: to_u64(ttl),
                        component,
                    },
                ))
            },
        )
        .collect::<StoreResult<_>>()?;
    let digests: Vec<Digest> = policies.iter().map(|(digest, _)| *digest).collect();
    let index_of = |hex: &str| -> StoreResult<u32> {
        let digest =
            legacy::digest_from_hex(hex).ok_or_else(|| conversion(format!("digest '{hex}'")))?;
        digests
            .iter()
            .position(|known| *known == digest)
            .map(|index| index as u32)
            .ok_or_else(|| conversion(format!("policy {hex} is not in the ledger")))
    };

    let mut imports: Vec<Imported> = Vec::new();
    let push = |imports: &mut Vec<Imported>, add: &dyn Fn(&mut Imported)| {
        let full = imports.last().is_none_or(|last| {
            last.accounts.len()
                + last.transactions.len()
                + last.journal.len()
                + last.marks.len()
                + last.grants.len()
                >= IMPORT_ROWS_MAX
        });
        if full {
            imports.push(Imported::default());
        }
        if let Some(last) = imports.last_mut() {
            add(last);
        }
    };

    let mut accounts =
        connection.prepare("SELECT tenant, balance, available, held FROM accounts")?;
    let mut rows = accounts.query([])?;
    while let Some(row) = rows.next()? {
        let account = (
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            AccountState {
                available: row.get(2)?,
                held: row.get(3)?,
            },
        );
        push(&mut imports, &|import| {
            import.accounts.push(account.clone())
        });
    }

    let mut transactions = connection.prepare(
        "SELECT id, tenant, state, fingerprint, policy_digest, request_json, authorization_json, \
         held_json, created_at_ms, expires_at_ms, receipt_json FROM transactions ORDER BY rowid",
    )?;
    let mut rows = transactions.query([])?;
    while let Some(row) = rows.next()? {
        let policy = index_of(&row.get::<_, String>(4)?)?;
        let record = legacy::transaction(
            &TransactionRowV0 {
                id: row.get(0)?,
                tenant: row.get(1)?,
                state: row.get(2)?,
                fingerprint: row.get(3)?,
                created_at_ms: to_u64(row.get(8)?),
                expires_at_ms: row.get::<_, Option<i64>>(9)?.map(to_u64),
                request_json: row.get(5)?,
                authorization_json: row.get(6)?,
                held_json: row.get(7)?,
                receipt_json: row.get(10)?,
            },
            policy,
        )
        .map_err(conversion)?;
        push(&mut imports, &|import| {
            import.transactions.push(record.clone())
        });
    }

    let mut journal = connection.prepare(
        "SELECT id, transaction_id, tenant, balance, kind, amount, policy_digest, at_ms \
         FROM journal ORDER BY id",
    )?;
    let mut rows = journal.query([])?;
    while let Some(row) = rows.next()? {
        let kind: String = row.get(4)?;
        let entry = ImportedEntry {
            id: to_u64(row.get(0)?),
            transaction_id: row.get(1)?,
            tenant: row.get(2)?,
            balance: row.get(3)?,
            kind: EntryKind::parse(&kind)
                .ok_or_else(|| conversion(format!("journal kind '{kind}'")))?,
            amount: row.get(5)?,
            policy: index_of(&row.get::<_, String>(6)?)?,
            at_ms: to_u64(row.get(7)?),
        };
        push(&mut imports, &|import| import.journal.push(entry.clone()));
    }

    let mut marks = connection.prepare("SELECT tenant, scope, key, transaction_id FROM marks")?;
    let mut rows = marks.query([])?;
    while let Some(row) = rows.next()? {
        let mark = (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
        push(&mut imports, &|import| import.marks.push(mark.clone()));
    }

    let mut grants =
        connection.prepare("SELECT grant_id, tenant, balance, amount, at_ms FROM grants")?;
    let mut rows = grants.query([])?;
    while let Some(row) = rows.next()? {
        let grant = ImportedGrant {
            grant_id: row.get(0)?,
            tenant: row.get(1)?,
            balance: row.get(2)?,
            amount: row.get(3)?,
            at_ms: to_u64(row.get(4)?),
        };
        push(&mut imports, &|import| import.grants.push(grant.clone()));
    }

    let activations: Vec<ImportedActivation> = connection
        .prepare("SELECT digest, via, activated_at_ms FROM policy_activations ORDER BY id")?
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .map(|(digest, via, at_ms)| {
            Ok(ImportedActivation {
                policy: index_of(&digest)?,
                via,
                at_ms: to_u64(at_ms),
            })
        })
        .collect::<StoreResult<_>>()?;
    if imports.is_empty() {
        imports.push(Imported::default());
    }
    if let Some(last) = imports.last_mut() {
        last.activations = activations;
    }

    let at_ms = connection
        .query_row("SELECT MAX(at_ms) FROM journal", [], |row| {
            row.get::<_, Option<i64>>(0)
        })
        .optional()?
        .flatten()
        .map_or(0, to_u64);
    // Imported entries keep their ids; the next new entry follows the largest. Every
    // import record says so: replay starts each batch's entry ids at its
    // `first_entry_id`, and the last record may hold no journal entry at all.
    let first_entry_id = connection
        .query_row("SELECT MAX(id) FROM journal", [], |row| {
            row.get::<_, Option<i64>>(0)
        })?
        .map_or(1, |largest| to_u64(largest).saturating_add(1));
    let mut append = connection.prepare("INSERT INTO log (seq, record) VALUES (?1, ?2)")?;
    let mut seq = 0u64;
    let mut decisions: Vec<Decision> = policies
        .into_iter()
        .map(|(_, record)| Decision::Policy(record))
        .collect();
    for import in imports {
        decisions.push(Decision::Import(import));
        seq += 1;
        let batch = Batch {
            seq,
            at_ms,
            first_entry_id,
            policies: digests.clone(),
            decisions: std::mem::take(&mut decisions),
        };
        append.execute(params![to_i64(seq), codec::encode(&batch)])?;
    }
    connection.execute_batch(
        "DROP TABLE policy_activations; DROP TABLE policies; DROP TABLE grants; \
         DROP TABLE marks; DROP TABLE journal; DROP TABLE transactions; DROP TABLE accounts;",
    )?;
    tracing::warn!(batches = seq, "migrated a ledger written before the log");
    Ok(())
}
