//! Durability of the writer's commits, apart from the commits themselves.
//!
//! The writer runs `synchronous=NORMAL`: a commit appends its frames to the
//! write-ahead log and returns without waiting for the disk. [`WalSync`] then fsyncs
//! the log, on another thread, before the batch's answers go out: the next batch is
//! decided while the disk works, and one fsync covers every batch committed before it.
//! SQLite recovers the log as its longest valid prefix, so a batch is never on disk
//! without those before it. Checkpoints still sync the log and the database file
//! themselves (as NORMAL does), so frames are never reused before they are safe.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::MeterError;
use crate::store::{LogSync, StoreResult};

pub struct WalSync {
    log: File,
}

/// Where SQLite keeps the write-ahead log of the database at `path`.
pub fn log_path(path: &Path) -> PathBuf {
    let mut log = path.as_os_str().to_owned();
    log.push("-wal");
    PathBuf::from(log)
}

impl WalSync {
    /// Opens the log of the database at `path` (it exists once the database is open
    /// in WAL mode) and makes its directory entry durable.
    pub fn open(path: &Path) -> StoreResult<Self> {
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
        Ok(Self { log })
    }
}

impl LogSync for WalSync {
    fn sync(&mut self) -> StoreResult<()> {
        self.log.sync_data().map_err(|error| {
            MeterError::StoreUnavailable(format!("cannot sync the ledger's log to disk: {error}"))
        })
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn it_syncs_the_very_log_sqlite_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ledger.db");
        let (writer, _reader) = crate::store::sqlite::open(&path).expect("open ledger");
        let mut log = WalSync::open(&path).expect("open the log");
        let synced = log.log.metadata().expect("log metadata").ino();
        let written = std::fs::metadata(log_path(&path))
            .expect("SQLite's log")
            .ino();
        assert_eq!(synced, written);
        log.sync().expect("sync");
        drop(writer);
    }
}
