//! The log thread's side of a SQLite ledger: it appends the batches the sequencer
//! committed to the log, all those waiting in one SQLite transaction, and makes them
//! durable with one fsync before any of their answers goes out, while the sequencer
//! decides the next ones (group commit across batches).
//!
//! Its connection runs `synchronous=NORMAL`: a commit appends frames to the write-ahead
//! log and returns without waiting for the disk; [`LogWriter::persist`] then fdatasyncs
//! the log itself. SQLite recovers the log as its longest valid prefix, so a batch is
//! never on disk without those before it. Checkpoints sync the log and the database
//! file themselves, so frames are never reused before they are safe. A durable batch
//! then goes to the view thread, before its answers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;

use rusqlite::{Connection, params};

use super::to_i64;
use super::views::{Progress, ViewJob};
use crate::error::MeterError;
use crate::ledger::codec;
use crate::ledger::record::Batch;
use crate::store::{Durability, StoreResult};

/// Pages (4 KiB) the write-ahead log may grow to before the writer checkpoints it itself.
const WAL_PAGES_MAX: i64 = 16_384;
/// The writer's page cache, in KiB: it appends, so it needs little.
const WRITER_CACHE_KIB: i64 = 4 * 1024;

pub struct LogWriter {
    log: Connection,
    wal: File,
    views: Sender<ViewJob>,
    progress: Arc<Progress>,
}

/// Where SQLite keeps the write-ahead log of the database at `path`.
pub fn wal_path(path: &Path) -> PathBuf {
    super::beside(path, "-wal")
}

/// Opens the write-ahead log of the database at `path` (it exists once the database is
/// open in WAL mode) and makes its directory entry durable.
pub fn open_wal(path: &Path) -> StoreResult<File> {
    let unavailable = |what: &str, at: &Path, error: std::io::Error| {
        MeterError::StoreUnavailable(format!("cannot {what} {}: {error}", at.display()))
    };
    let wal_path = wal_path(path);
    let wal = File::open(&wal_path).map_err(|error| unavailable("open", &wal_path, error))?;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(|error| unavailable("sync the directory", directory, error))?;
    Ok(wal)
}

pub fn sync_wal(wal: &File) -> StoreResult<()> {
    wal.sync_data().map_err(|error| {
        MeterError::StoreUnavailable(format!("cannot sync the ledger's log to disk: {error}"))
    })
}

impl LogWriter {
    pub fn open(path: &Path, views: Sender<ViewJob>, progress: Arc<Progress>) -> StoreResult<Self> {
        let log = super::open_connection(path)?;
        log.pragma_update(None, "synchronous", "NORMAL")?;
        log.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        log.pragma_update(None, "wal_autocheckpoint", WAL_PAGES_MAX)?;
        Ok(Self {
            wal: open_wal(path)?,
            log,
            views,
            progress,
        })
    }

    fn append(&self, batches: &[Arc<Batch>]) -> StoreResult<()> {
        let mut insert = self
            .log
            .prepare_cached("INSERT INTO log (seq, record) VALUES (?1, ?2)")?;
        for batch in batches {
            insert.execute(params![to_i64(batch.seq), codec::encode(batch)])?;
        }
        Ok(())
    }
}

impl Durability for LogWriter {
    fn persist(&mut self, batches: &[Arc<Batch>]) -> StoreResult<()> {
        if !batches.is_empty() {
            self.log.execute_batch("BEGIN IMMEDIATE")?;
            if let Err(error) = self.append(batches) {
                let _ = self.log.execute_batch("ROLLBACK");
                return Err(error);
            }
            self.log.execute_batch("COMMIT")?;
        }
        // Also covers answers of batches without a decision (reads), which only wait
        // for those before them.
        sync_wal(&self.wal)
    }

    fn durable(&mut self, batch: Arc<Batch>) {
        let seq = batch.seq;
        // The view thread outlives every log thread of its meter; if it is gone the
        // meter is closing and no reader waits.
        let _ = self.views.send(ViewJob::Batch(batch));
        self.progress.durable_seq.fetch_max(seq, Ordering::AcqRel);
    }
}
