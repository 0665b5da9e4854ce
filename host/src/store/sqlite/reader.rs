//! Reads of a SQLite ledger: the views (and the log, for a transaction's decisions),
//! after they caught up with every batch whose answers went out when the read began, so
//! a client never misses its own acknowledged write. Connections are pooled; WAL lets
//! them read while the writers write.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, Row, params};

use super::log::stored_policy;
use super::records::{self, kind_name};
use super::views::Progress;
use super::{open_reading, to_i64, to_u64, views_path};
use crate::model::{JournalEntry, PolicyActivation, PolicyRef, TenantBalances, TransactionView};
use crate::policy::PolicyDigest;
use crate::store::{
    AuditPoint, JournalSum, LedgerReader, StoreResult, StoredPolicy, invariant_violations,
    transaction_view,
};

/// Connections to the views and the log.
struct Connections {
    views: Connection,
    log: Connection,
}

pub struct SqliteReader {
    path: PathBuf,
    progress: Arc<Progress>,
    idle: Mutex<Vec<Connections>>,
}

impl SqliteReader {
    pub(super) fn new(path: &Path, progress: Arc<Progress>) -> Self {
        Self {
            path: path.to_path_buf(),
            progress,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `read` once the views hold every acknowledged batch.
    fn read<T>(&self, read: impl FnOnce(&Connections) -> StoreResult<T>) -> StoreResult<T> {
        let durable = self.progress.durable_seq.load(Ordering::Acquire);
        self.progress.wait_applied(durable)?;
        self.read_now(read)
    }

    fn read_now<T>(&self, read: impl FnOnce(&Connections) -> StoreResult<T>) -> StoreResult<T> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let connections = match pooled {
            Some(connections) => connections,
            None => Connections {
                views: open_reading(&views_path(&self.path))?,
                log: open_reading(&self.path)?,
            },
        };
        let result = read(&connections);
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(connections);
        }
        result
    }
}

fn journal_from_row(row: &Row<'_>) -> rusqlite::Result<JournalEntry> {
    Ok(JournalEntry {
        id: row.get(0)?,
        transaction_id: row.get(1)?,
        tenant: row.get(2)?,
        balance: row.get(3)?,
        kind: kind_name(row.get(4)?),
        amount: row.get(5)?,
        policy_digest: row.get(6)?,
        at_ms: to_u64(row.get(7)?),
    })
}

const JOURNAL: &str = "SELECT j.id, j.transaction_id, j.tenant, j.balance, j.kind, j.amount, \
     p.digest, j.at_ms FROM journal j JOIN policies p ON p.id = j.policy";

fn limit(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

impl LedgerReader for SqliteReader {
    fn transaction(&self, id: &str) -> StoreResult<Option<TransactionView>> {
        self.read(|connections| {
            let Some((record, entries)) =
                records::transaction(&connections.views, &connections.log, id, true)?
            else {
                return Ok(None);
            };
            let digest = PolicyDigest::from_bytes(record.policy);
            let policy = match stored_policy(&connections.views, &digest)? {
                Some(stored) => PolicyRef {
                    name: stored.info.name,
                    version: stored.info.version,
                    digest: digest.to_string(),
                },
                None => PolicyRef {
                    digest: digest.to_string(),
                    ..PolicyRef::default()
                },
            };
            Ok(Some(transaction_view(&record, policy, entries)))
        })
    }

    fn journal(&self, tenant: &str, count: usize) -> StoreResult<Vec<JournalEntry>> {
        self.read(|connections| {
            Ok(connections
                .views
                .prepare_cached(&format!(
                    "{JOURNAL} WHERE j.tenant = ?1 ORDER BY j.id LIMIT ?2"
                ))?
                .query_map(params![tenant, limit(count)], journal_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn journal_after(&self, after_id: i64, count: usize) -> StoreResult<Vec<JournalEntry>> {
        self.read(|connections| {
            Ok(connections
                .views
                .prepare_cached(&format!("{JOURNAL} WHERE j.id > ?1 ORDER BY j.id LIMIT ?2"))?
                .query_map(params![after_id, limit(count)], journal_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn activations(&self, count: usize) -> StoreResult<Vec<PolicyActivation>> {
        self.read(|connections| {
            Ok(connections
                .views
                .prepare_cached(
                    "SELECT a.id, p.digest, p.name, p.version, a.via, a.at_ms \
                     FROM activations a JOIN policies p ON p.id = a.policy \
                     ORDER BY a.id DESC LIMIT ?1",
                )?
                .query_map(params![limit(count)], |row| {
                    Ok(PolicyActivation {
                        id: row.get(0)?,
                        digest: row.get(1)?,
                        name: row.get(2)?,
                        version: row.get(3)?,
                        via: row.get(4)?,
                        activated_at_ms: to_u64(row.get(5)?),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn stored_policy(&self, digest: &PolicyDigest) -> StoreResult<Option<StoredPolicy>> {
        self.read(|connections| stored_policy(&connections.views, digest))
    }

    fn balances(&self, _tenant: &str, _balances: &[String]) -> StoreResult<Option<TenantBalances>> {
        Ok(None)
    }

    fn invariant_violations(&self, live: Option<AuditPoint>) -> StoreResult<Vec<String>> {
        let point = live.unwrap_or_default();
        self.progress.wait_applied(point.seq)?;
        self.read_now(|connections| {
            let sums = connections
                .views
                .prepare(
                    "SELECT tenant, balance, kind, SUM(amount) FROM journal WHERE id < ?1 \
                     GROUP BY tenant, balance, kind",
                )?
                .query_map(params![to_i64(point.next_entry_id)], |row| {
                    Ok(JournalSum {
                        tenant: row.get(0)?,
                        balance: row.get(1)?,
                        kind: kind_name(row.get(2)?),
                        amount: row.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(invariant_violations(sums, point.accounts))
        })
    }
}
