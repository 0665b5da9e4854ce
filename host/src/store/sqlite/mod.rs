//! The embedded default: a ledger in SQLite files on disk, owned by one meter.
//!
//! - `PATH`: the log, one row per batch ([`log`]); the writer commits without fsync and
//!   the sync thread fsyncs the WAL before answers go out ([`durability`]).
//! - `PATH.views`: the views built from the log off the hot path, and the latest
//!   snapshot of the live state ([`views`]).
//! - `PATH.lock`: held while a meter owns the ledger ([`lock`]).
//!
//! [`open`] takes the lock, migrates an earlier ledger ([`schema`]), rebuilds the live
//! state from the snapshot and the log ([`recovery`]) and starts the view thread. See
//! `docs/ledger.md`.

mod checkpoint;
mod durability;
pub mod lock;
mod log;
mod reader;
mod records;
mod recovery;
mod schema;
mod views;
pub mod webhooks;

use std::path::{Path, PathBuf};

use rusqlite::Connection;

pub use log::SqliteStore;
pub use reader::SqliteReader;
pub use views::ViewLimits;

use super::StoreResult;
use crate::error::MeterError;
use crate::ledger::state::{LiveState, StateLimits};

/// How a SQLite ledger runs.
#[derive(Debug, Clone, Copy)]
pub struct SqliteOptions {
    pub state: StateLimits,
    pub views: ViewLimits,
    /// A snapshot of the live state starts after this many decisions since the last.
    pub snapshot_every_decisions: u64,
    /// Tenants copied per slice of a snapshot (one slice between two batches).
    pub snapshot_slice_tenants: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            state: StateLimits::default(),
            views: ViewLimits::default(),
            snapshot_every_decisions: 1_000_000,
            snapshot_slice_tenants: 1024,
        }
    }
}

/// A file beside the ledger: `PATH` + `suffix`.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

pub fn views_path(path: &Path) -> PathBuf {
    beside(path, ".views")
}

fn open_connection(path: &Path) -> StoreResult<Connection> {
    let connection = Connection::open(path).map_err(|error| {
        MeterError::StoreUnavailable(format!("cannot open {}: {error}", path.display()))
    })?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.set_prepared_statement_cache_capacity(64);
    Ok(connection)
}

/// A read-only connection.
fn open_reading(path: &Path) -> StoreResult<Connection> {
    let connection = open_connection(path)?;
    connection.pragma_update(None, "query_only", true)?;
    Ok(connection)
}

/// Opens (creating if needed) the ledger at `path` for this process alone: the store
/// the sequencer writes, the live state rebuilt from the record, and the reader.
/// Call on the sequencer's thread (the live state stays there).
pub fn open(
    path: impl AsRef<Path>,
    options: SqliteOptions,
) -> StoreResult<(SqliteStore, LiveState, SqliteReader)> {
    let path = path.as_ref();
    let lock = lock::LedgerLock::acquire(path)?;
    let log = open_connection(path)?;
    // A ledger written before the log: its rows become the log's first records.
    schema::migrate_log(&log)?;
    let views = open_connection(&views_path(path))?;
    schema::migrate_views(&views)?;
    let recovered = recovery::recover(&log, &views, options.state)?;
    let (store, reader) = SqliteStore::start(
        path,
        lock,
        log,
        views,
        (recovered.applied_seq, recovered.state.last_seq),
        options,
    )?;
    Ok((store, recovered.state, reader))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
