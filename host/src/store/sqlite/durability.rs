//! Durability of the log's commits, apart from the commits themselves.
//!
//! The writer runs `synchronous=NORMAL`: a commit appends its frames to the
//! write-ahead log and returns without waiting for the disk. [`WalSync`] then fsyncs
//! the log, on the sync thread, before the batch's answers go out: the next batch is
//! decided while the disk works, and one fsync covers every batch committed before it.
//! SQLite recovers the log as its longest valid prefix, so a batch is never on disk
//! without those before it. Checkpoints sync the log and the database file themselves,
//! so frames are never reused before they are safe. A durable batch then goes to the
//! view thread, before its answers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;

use super::views::{Progress, ViewJob};
use crate::error::MeterError;
use crate::ledger::record::Batch;
use crate::store::{Durability, StoreResult};

pub struct WalSync {
    log: File,
    views: Sender<ViewJob>,
    progress: Arc<Progress>,
}

/// Where SQLite keeps the write-ahead log of the database at `path`.
pub fn log_path(path: &Path) -> PathBuf {
    super::beside(path, "-wal")
}

/// Opens the write-ahead log of the database at `path` (it exists once the database is
/// open in WAL mode) and makes its directory entry durable.
pub fn open_wal(path: &Path) -> StoreResult<File> {
    let unavailable = |what: &str, at: &Path, error: std::io::Error| {
        MeterError::StoreUnavailable(format!("cannot {what} {}: {error}", at.display()))
    };
    let log_path = log_path(path);
    let log = File::open(&log_path).map_err(|error| unavailable("open", &log_path, error))?;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(|error| unavailable("sync the directory", directory, error))?;
    Ok(log)
}

pub fn sync_wal(log: &File) -> StoreResult<()> {
    log.sync_data().map_err(|error| {
        MeterError::StoreUnavailable(format!("cannot sync the ledger's log to disk: {error}"))
    })
}

impl WalSync {
    pub fn open(path: &Path, views: Sender<ViewJob>, progress: Arc<Progress>) -> StoreResult<Self> {
        Ok(Self {
            log: open_wal(path)?,
            views,
            progress,
        })
    }
}

impl Durability for WalSync {
    fn sync(&mut self) -> StoreResult<()> {
        sync_wal(&self.log)
    }

    fn durable(&mut self, batch: Arc<Batch>) {
        let seq = batch.seq;
        // The view thread outlives every sync thread of its meter; if it is gone the
        // meter is closing and no reader waits.
        let _ = self.views.send(ViewJob::Batch(batch));
        self.progress.durable_seq.fetch_max(seq, Ordering::AcqRel);
    }
}
