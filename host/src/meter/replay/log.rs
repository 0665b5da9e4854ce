//! The log a replay reads, whichever store keeps it: a SQLite ledger's `log` table
//! ([`SqliteLog`], the file opened read-only) or a PostgreSQL ledger's
//! ([`PostgresLog`], a read-only transaction on one snapshot, in pages). Both give the
//! batches in log order, decoded, with the log's seq; each replay thread opens its own.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::error::MeterError;
use crate::ledger::codec;
use crate::ledger::record::Batch;
use crate::store::StoreLocation;
use crate::store::postgres::log::{PostgresLog, Unlogged};

/// One consistent read of a ledger's log.
pub enum Log {
    Sqlite(SqliteLog),
    Postgres(Box<PostgresLog>),
}

/// What the first reader of a replay found, for the others to read the same log.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    /// PostgreSQL: the first reader's snapshot, which the others read too.
    snapshot: Option<String>,
}

impl Log {
    /// The first reader of a replay of `tenants` (empty: all): it refuses a log that
    /// does not hold their whole history, and answers what the others share.
    pub fn open_first(
        location: &StoreLocation,
        tenants: &[String],
    ) -> Result<(Self, Shared), MeterError> {
        match location {
            StoreLocation::Sqlite(path) => {
                Ok((Log::Sqlite(SqliteLog::open(path)?), Shared::default()))
            }
            StoreLocation::Postgres(url) => {
                let mut log = PostgresLog::open(url, None)?;
                if let Some(unlogged) = log.unlogged(tenants)? {
                    return Err(unlogged_error(&unlogged, tenants.is_empty()));
                }
                let snapshot = Some(log.export_snapshot()?);
                Ok((Log::Postgres(Box::new(log)), Shared { snapshot }))
            }
        }
    }

    /// Another reader of the same log (a replay thread's own).
    pub fn open(location: &StoreLocation, shared: &Shared) -> Result<Self, MeterError> {
        match location {
            StoreLocation::Sqlite(path) => Ok(Log::Sqlite(SqliteLog::open(path)?)),
            StoreLocation::Postgres(url) => Ok(Log::Postgres(Box::new(PostgresLog::open(
                url,
                shared.snapshot.as_deref(),
            )?))),
        }
    }

    /// The last record's seq (0: an empty log).
    pub fn last_seq(&mut self) -> Result<u64, MeterError> {
        match self {
            Log::Sqlite(log) => log.last_seq(),
            Log::Postgres(log) => log.last_seq(),
        }
    }

    /// Every batch in log order up to `up_to`, decoded, to `each` (which may stop the
    /// read by answering false).
    pub fn for_each(
        &mut self,
        up_to: u64,
        each: &mut dyn FnMut(Batch) -> Result<bool, MeterError>,
    ) -> Result<(), MeterError> {
        match self {
            Log::Sqlite(log) => log.for_each(up_to, each),
            Log::Postgres(log) => log.for_each(up_to, each),
        }
    }
}

/// A PostgreSQL ledger migrated to the log after it had rows: the log holds none of
/// their history, so no balance of theirs at any time can be rebuilt from it.
fn unlogged_error(unlogged: &Unlogged, all: bool) -> MeterError {
    let began = super::time_text(unlogged.began_at_ms);
    let named = unlogged.tenants.join(", ");
    MeterError::StoreIncompatible(if all {
        format!(
            "this ledger's log began at {began}, when it was migrated with rows already \
             written: tenants such as {named} have history before then that the log does not \
             hold, so their balances at any period's start are unknown. Replay tenants that \
             began after it (--tenant)"
        )
    } else {
        format!(
            "this ledger's log began at {began}, when it was migrated with rows already \
             written: {named} had history before then that the log does not hold, so their \
             balances at any period's start are unknown"
        )
    })
}

/// The log of a SQLite ledger, opened read-only: a meter may be writing it meanwhile
/// (every read is one read transaction: one consistent prefix of the log), and nothing
/// of the ledger's files is ever written, not even SQLite's lock or index files when no
/// meter has the ledger open.
pub struct SqliteLog {
    connection: Connection,
}

impl SqliteLog {
    pub fn open(path: &Path) -> Result<Self, MeterError> {
        if !path.is_file() {
            return Err(MeterError::StoreUnavailable(format!(
                "no ledger at {}",
                path.display()
            )));
        }
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        // Without a write-ahead log nobody is writing: read the file as immutable, so
        // SQLite creates no `-wal` or `-shm` beside it. With one (a meter has it open,
        // or one stopped without its final checkpoint) read through it, read-only.
        let immutable = !Path::new(&wal).exists();
        let uri = format!(
            "file:{}?mode=ro{}",
            uri_path(path),
            if immutable { "&immutable=1" } else { "" }
        );
        let connection = Connection::open_with_flags(
            &uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|error| {
            MeterError::StoreUnavailable(format!(
                "cannot open {} read-only: {error}",
                path.display()
            ))
        })?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        connection.pragma_update(None, "query_only", true)?;
        let has_log: Option<i64> = connection
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'log'",
                [],
                |row| row.get(0),
            )
            .optional()?;
        if has_log.is_none() {
            return Err(MeterError::StoreIncompatible(format!(
                "{} has no log of batches: a ledger written before the log is migrated when \
                 a meter first opens it (creditgate serve); replay reads the log",
                path.display()
            )));
        }
        // One read transaction for the whole replay: the log as it was at its start.
        connection.execute_batch("BEGIN")?;
        Ok(Self { connection })
    }

    /// The last record's seq (0: an empty log).
    pub fn last_seq(&self) -> Result<u64, MeterError> {
        let last: Option<i64> =
            self.connection
                .query_row("SELECT max(seq) FROM log", [], |row| row.get(0))?;
        Ok(last.and_then(|last| u64::try_from(last).ok()).unwrap_or(0))
    }

    /// Every batch in log order up to `up_to`, decoded, to `each` (which may stop the
    /// read by answering false).
    pub fn for_each(
        &self,
        up_to: u64,
        each: &mut dyn FnMut(Batch) -> Result<bool, MeterError>,
    ) -> Result<(), MeterError> {
        let mut statement = self
            .connection
            .prepare("SELECT seq, record FROM log WHERE seq <= ?1 ORDER BY seq")?;
        let mut rows = statement.query(params![i64::try_from(up_to).unwrap_or(i64::MAX)])?;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let bytes = row.get_ref(1)?.as_blob().map_err(|error| {
                MeterError::StoreCorrupt(format!("log record {seq} is not a blob: {error}"))
            })?;
            let batch = codec::decode(bytes).map_err(|error| match MeterError::from(error) {
                MeterError::StoreCorrupt(why) => {
                    MeterError::StoreCorrupt(format!("log record {seq}: {why}"))
                }
                other => other,
            })?;
            if !each(batch)? {
                break;
            }
        }
        Ok(())
    }
}

/// A path as a `file:` URI's path: `%`, `?` and `#` escaped.
fn uri_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            other => out.push(other),
        }
    }
    out
}
