//! Reads of a SQLite ledger: the views (and the log, for a transaction's decisions),
//! after they caught up with every batch whose answers went out when the read began, so
//! a client never misses its own acknowledged write. Connections are pooled; WAL lets
//! them read while the writers write.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};

use super::log::stored_policy;
use super::records;
use super::views::Progress;
use super::{open_reading, to_i64, to_u64, views_path};
use crate::error::MeterError;
use crate::ledger::codec::{self, Header};
use crate::ledger::events::event_view;
use crate::ledger::record::Decision;
use crate::model::{
    EventView, JournalEntry, PolicyActivation, PolicyRef, TenantBalances, TransactionView,
};
use crate::policy::PolicyDigest;
use crate::store::{
    AuditPoint, JournalSum, LedgerReader, StoreResult, StoredPolicy, ViewsLag,
    invariant_violations, transaction_view,
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

/// Journal entries of the decisions at `(seq, decision, first entry id)`, for `tenant`
/// (or everyone): each log record read once.
fn entries_of(
    log: &Connection,
    places: &[(u64, u64, u64)],
    tenant: Option<&str>,
) -> StoreResult<Vec<JournalEntry>> {
    let mut entries = Vec::new();
    let mut loaded: Option<(u64, Vec<u8>)> = None;
    for &(seq, decision, first) in places {
        if loaded.as_ref().is_none_or(|(known, _)| *known != seq) {
            let bytes: Vec<u8> = log
                .prepare_cached("SELECT record FROM log WHERE seq = ?1")?
                .query_row(params![to_i64(seq)], |row| row.get(0))?;
            loaded = Some((seq, bytes));
        }
        if let Some((_, bytes)) = &loaded {
            let index = usize::try_from(decision).unwrap_or(usize::MAX);
            let (header, decision) = codec::decode_decision(bytes, index)?;
            entries.extend(records::decision_entries(
                &header, &decision, first, tenant,
            )?);
        }
    }
    entries.sort_by_key(|entry| entry.id);
    Ok(entries)
}

/// Every journal entry of a batch, with its id.
fn batch_entries(batch: &crate::ledger::record::Batch) -> StoreResult<Vec<JournalEntry>> {
    let header = Header {
        seq: batch.seq,
        at_ms: batch.at_ms,
        first_entry_id: batch.first_entry_id,
        policies: batch.policies.clone(),
    };
    let mut first = batch.first_entry_id;
    let mut entries = Vec::new();
    for decision in &batch.decisions {
        entries.extend(records::decision_entries(&header, decision, first, None)?);
        first += decision.entries().len() as u64;
    }
    Ok(entries)
}

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
                Some(stored) => stored.policy,
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
            let places: Vec<(u64, u64, u64)> = connections
                .views
                .prepare_cached(
                    "SELECT seq, decision, first_entry FROM tenant_log WHERE tenant = ?1 \
                     ORDER BY seq, decision",
                )?
                .query_map(params![tenant], |row| {
                    Ok((
                        to_u64(row.get(0)?),
                        to_u64(row.get(1)?),
                        to_u64(row.get(2)?),
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut entries = Vec::new();
            for chunk in places.chunks(256) {
                entries.extend(entries_of(&connections.log, chunk, Some(tenant))?);
                if entries.len() >= count {
                    break;
                }
            }
            entries.truncate(count);
            Ok(entries)
        })
    }

    fn journal_after(&self, after_id: i64, count: usize) -> StoreResult<Vec<JournalEntry>> {
        self.read(|connections| {
            let seqs: Vec<i64> = connections
                .views
                .prepare_cached("SELECT seq FROM batches WHERE last_entry > ?1 ORDER BY seq")?
                .query_map(params![after_id], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut entries = Vec::new();
            for seq in seqs {
                let bytes: Vec<u8> = connections
                    .log
                    .prepare_cached("SELECT record FROM log WHERE seq = ?1")?
                    .query_row(params![seq], |row| row.get(0))?;
                let batch = codec::decode(&bytes)?;
                entries.extend(
                    batch_entries(&batch)?
                        .into_iter()
                        .filter(|entry| entry.id > after_id),
                );
                if entries.len() >= count {
                    break;
                }
            }
            entries.sort_by_key(|entry| entry.id);
            entries.truncate(count);
            Ok(entries)
        })
    }

    fn last_event_id(&self) -> StoreResult<u64> {
        self.read(|connections| {
            let last: i64 = connections.views.query_row(
                "SELECT COALESCE(MAX(id), 0) FROM events",
                [],
                |row| row.get(0),
            )?;
            Ok(to_u64(last))
        })
    }

    fn events_after(
        &self,
        after: u64,
        count: usize,
        tenant: Option<&str>,
    ) -> StoreResult<Vec<EventView>> {
        self.read(|connections| {
            let after = to_i64(after);
            let places: Vec<(i64, i64, i64)> = match tenant {
                Some(tenant) => connections
                    .views
                    .prepare_cached(
                        "SELECT id, seq, decision FROM events WHERE tenant = ?1 AND id > ?2 \
                         ORDER BY id LIMIT ?3",
                    )?
                    .query_map(params![tenant, after, limit(count)], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?,
                None => connections
                    .views
                    .prepare_cached(
                        "SELECT id, seq, decision FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
                    )?
                    .query_map(params![after, limit(count)], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?,
            };
            let mut events = Vec::with_capacity(places.len());
            let mut loaded: Option<(i64, Vec<u8>)> = None;
            for (id, seq, decision) in places {
                if loaded.as_ref().is_none_or(|(known, _)| *known != seq) {
                    let bytes: Vec<u8> = connections
                        .log
                        .prepare_cached("SELECT record FROM log WHERE seq = ?1")?
                        .query_row(params![seq], |row| row.get(0))?;
                    loaded = Some((seq, bytes));
                }
                if let Some((_, bytes)) = &loaded {
                    let index = usize::try_from(decision).unwrap_or(usize::MAX);
                    match codec::decode_decision(bytes, index)? {
                        (header, Decision::Event(event)) => {
                            events.push(event_view(to_u64(id), header.at_ms, &event));
                        }
                        _ => {
                            return Err(MeterError::StoreCorrupt(format!(
                                "event {id} points at decision {decision} of batch {seq}, \
                                 which is no event"
                            )));
                        }
                    }
                }
            }
            Ok(events)
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

    /// The journal is summed from the log itself, through the batch the live accounts
    /// were copied at: two independent records of the same decisions must agree.
    fn views_lag(&self) -> Option<ViewsLag> {
        Some(self.progress.lag())
    }

    fn invariant_violations(&self, live: Option<AuditPoint>) -> StoreResult<Vec<String>> {
        let point = live.unwrap_or_default();
        self.read_now(|connections| {
            let mut sums: std::collections::BTreeMap<
                (String, String, &'static str, Option<u64>),
                i128,
            > = std::collections::BTreeMap::new();
            let mut statement = connections
                .log
                .prepare("SELECT record FROM log WHERE seq <= ?1 ORDER BY seq")?;
            let mut rows = statement.query(params![to_i64(point.seq)])?;
            while let Some(row) = rows.next()? {
                let bytes: Vec<u8> = row.get(0)?;
                let batch = codec::decode(&bytes)?;
                for entry in batch_entries(&batch)? {
                    let kind = crate::ledger::EntryKind::parse(&entry.kind)
                        .map_or("unknown", crate::ledger::EntryKind::as_str);
                    *sums
                        .entry((entry.tenant, entry.balance, kind, entry.lot))
                        .or_insert(0) += i128::from(entry.amount);
                }
            }
            Ok(invariant_violations(
                sums.into_iter()
                    .map(|((tenant, balance, kind, lot), amount)| JournalSum {
                        tenant,
                        balance,
                        kind: kind.to_owned(),
                        lot,
                        amount,
                    }),
                point.accounts,
                point.lots,
            ))
        })
    }
}
