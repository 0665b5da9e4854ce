//! The log: one row per batch, `log(seq INTEGER PRIMARY KEY, record BLOB)`, appended
//! at the right edge of one B-tree by the log thread ([`super::durability`]). This is
//! the store the sequencer drives: it answers cold reads from the views and the log,
//! and hands batches and snapshot parts on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, params};

use super::checkpoint::Checkpointer;
use super::durability::LogWriter;
use super::lock::LedgerLock;
use super::reader::SqliteReader;
use super::views::{Progress, ViewJob, ViewThread};
use super::{SqliteOptions, open_reading, records, views_path};
use crate::error::MeterError;
use crate::ledger::lots::LEGACY_LOT;
use crate::ledger::record::{Batch, LotTerms};
use crate::ledger::state::{GrantRecord, LiveState, TransactionRecord};
use crate::model::PolicyRef;
use crate::policy::PolicyDigest;
use crate::store::{
    BatchClaims, ColdStore, Durability, SnapshotPart, Store, StoreResult, StoredPolicy, with_terms,
};

/// The sequencer's side of a SQLite ledger. Not `Sync`: it lives on the sequencer thread.
pub struct SqliteStore {
    path: PathBuf,
    /// Cold reads of the log, on the sequencer thread.
    log: Connection,
    /// Cold reads of the views, on the sequencer thread.
    views: Connection,
    progress: Arc<Progress>,
    jobs: mpsc::Sender<ViewJob>,
    view_thread: Option<JoinHandle<()>>,
    _checkpointer: Checkpointer,
    lock: Arc<LedgerLock>,
}

impl SqliteStore {
    /// Starts the view thread at the views' applied seq and makes what recovery read
    /// durable, then answers the store and its reader.
    pub(super) fn start(
        path: &Path,
        lock: LedgerLock,
        log: Connection,
        view_writer: Connection,
        (applied_seq, last_seq): (u64, u64),
        options: SqliteOptions,
    ) -> StoreResult<(Self, SqliteReader)> {
        log.pragma_update(None, "query_only", true)?;
        // Records recovery read may have reached only the page cache (a process killed,
        // not the machine): make them durable before deciding anything on them.
        super::durability::sync_wal(&super::durability::open_wal(path)?)?;
        view_writer.pragma_update(None, "synchronous", "NORMAL")?;
        let (jobs, queue) = mpsc::channel();
        let progress = Arc::new(Progress::new(last_seq, applied_seq, jobs.clone()));
        let thread = ViewThread::new(
            view_writer,
            open_reading(path)?,
            Arc::clone(&progress),
            options.views,
        )?;
        let view_thread = std::thread::Builder::new()
            .name("creditgate-views".to_owned())
            .spawn(move || thread.run(queue))
            .map_err(|error| {
                MeterError::StoreUnavailable(format!("cannot start the view thread: {error}"))
            })?;
        let store = Self {
            path: path.to_path_buf(),
            log,
            views: open_reading(&views_path(path))?,
            progress: Arc::clone(&progress),
            jobs,
            view_thread: Some(view_thread),
            _checkpointer: Checkpointer::start(path)?,
            lock: Arc::new(lock),
        };
        Ok((store, SqliteReader::new(path, progress)))
    }

    /// The ledger's lock, where the owner records where it serves its API.
    pub fn lock(&self) -> Arc<LedgerLock> {
        Arc::clone(&self.lock)
    }

    /// The progress the readers and the sequencer share.
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Every durable batch was sent before the sync thread ended: apply them, stop.
        let _ = self.jobs.send(ViewJob::Stop);
        if let Some(thread) = self.view_thread.take() {
            let _ = thread.join();
        }
    }
}

impl ColdStore for SqliteStore {
    fn transaction(&self, id: &str) -> StoreResult<Option<TransactionRecord>> {
        Ok(records::transaction(&self.views, &self.log, id, false)?.map(|(record, _)| record))
    }

    fn grant(&self, grant_id: &str) -> StoreResult<Option<GrantRecord>> {
        self.views
            .prepare_cached(
                "SELECT tenant, balance, amount, lot, terms_json FROM grants WHERE grant_id = ?1",
            )?
            .query_row(params![grant_id], |row| {
                Ok((
                    GrantRecord {
                        tenant: row.get(0)?,
                        balance: row.get(1)?,
                        amount: row.get(2)?,
                        lot: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(LEGACY_LOT),
                        terms: LotTerms::default(),
                    },
                    row.get::<_, String>(4)?,
                ))
            })
            .optional()?
            .map(|(grant, terms_json)| with_terms(grant, &terms_json))
            .transpose()
    }

    fn marked(&self, tenant: &str, scope: &str, keys: &[&str]) -> StoreResult<Vec<bool>> {
        let mut statement = self
            .views
            .prepare_cached("SELECT 1 FROM marks WHERE tenant = ?1 AND scope = ?2 AND key = ?3")?;
        keys.iter()
            .map(|key| Ok(statement.exists(params![tenant, scope, key])?))
            .collect()
    }

    fn policy(&self, digest: &PolicyDigest) -> StoreResult<Option<StoredPolicy>> {
        stored_policy(&self.views, digest)
    }

    fn latest_activation(&self) -> StoreResult<Option<PolicyDigest>> {
        let digest: Option<String> = self
            .views
            .prepare_cached(
                "SELECT p.digest FROM activations a JOIN policies p ON p.id = a.policy \
                 ORDER BY a.id DESC LIMIT 1",
            )?
            .query_row([], |row| row.get(0))
            .optional()?;
        Ok(digest.as_deref().and_then(PolicyDigest::parse))
    }

    fn load_tenant(&self, _tenant: &str, _state: &mut LiveState) -> StoreResult<()> {
        Ok(())
    }
}

/// A policy of the views, by digest.
pub fn stored_policy(
    views: &Connection,
    digest: &PolicyDigest,
) -> StoreResult<Option<StoredPolicy>> {
    type Row = (String, String, Option<Vec<u8>>);
    let row: Option<Row> = views
        .prepare_cached("SELECT name, version, component FROM policies WHERE digest = ?1")?
        .query_row(params![digest.to_string()], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    Ok(row.map(|(name, version, component)| StoredPolicy {
        policy: PolicyRef {
            name,
            version,
            digest: digest.to_string(),
        },
        component,
    }))
}

impl Store for SqliteStore {
    fn load(&self, _claims: &BatchClaims, _state: &mut LiveState, _now_ms: u64) -> StoreResult<()> {
        Ok(())
    }

    /// The log thread appends the batch ([`LogWriter`]).
    fn commit(&self, _batch: &Batch, _state: &LiveState) -> StoreResult<()> {
        Ok(())
    }

    fn abort(&self) {}

    fn durability(&self) -> StoreResult<Box<dyn Durability>> {
        Ok(Box::new(LogWriter::open(
            &self.path,
            self.jobs.clone(),
            Arc::clone(&self.progress),
        )?))
    }

    fn applied_seq(&self) -> Option<u64> {
        Some(self.progress.applied())
    }

    fn catch_up_views(&self) -> StoreResult<()> {
        let durable = self
            .progress
            .durable_seq
            .load(std::sync::atomic::Ordering::Acquire);
        self.progress.wait_applied(durable)
    }

    fn takes_snapshots(&self) -> bool {
        true
    }

    fn snapshot_part(&self, part: SnapshotPart) -> StoreResult<()> {
        self.jobs
            .send(ViewJob::Snapshot(part))
            .map_err(|_| MeterError::StoreUnavailable("the view thread stopped".to_owned()))
    }
}
