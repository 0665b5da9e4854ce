//! The views: built from the log's durable batches by a thread of its own, off the hot
//! path, in windows of many batches whose rows are sorted by key and written in one
//! transaction together with `applied(seq)`. The thread also keeps the latest complete
//! snapshot of the live state.
//!
//! Readers that must see every acknowledged decision wait for `applied` to reach the
//! durable seq they started at ([`Progress::wait_applied`]), nudging the thread to apply
//! what it has at once. The sequencer forgets what the views applied, and waits when
//! they lag more than [`ViewLimits::lag_decisions_max`] decisions behind.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use super::{to_i64, to_u64};
use crate::error::MeterError;
use crate::ledger::codec;
use crate::ledger::lots::{LEGACY_LOT, LotId};
use crate::ledger::record::{Batch, Decision, Digest, TransactionState};
use crate::policy::PolicyDigest;
use crate::store::{SnapshotPart, StoreResult, ViewsLag};

/// Bounds of the view thread's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewLimits {
    /// A window is applied once it holds this many decisions...
    pub window_decisions_min: usize,
    /// ...or this long after its first batch arrived, or at once when a reader waits.
    pub window_ms_max: u64,
    /// Decisions one view transaction applies, at most.
    pub window_decisions_max: usize,
    /// Decisions the views may lag behind the log before the sequencer waits for them.
    pub lag_decisions_max: usize,
}

impl Default for ViewLimits {
    fn default() -> Self {
        Self {
            window_decisions_min: 4_096,
            window_ms_max: 50,
            window_decisions_max: 65_536,
            lag_decisions_max: 131_072,
        }
    }
}

/// How long a reader waits for the views to catch up before it fails `store_unavailable`.
const READ_WAIT: Duration = Duration::from_secs(10);
/// How long the thread waits before trying a failed window again.
const RETRY_AFTER: Duration = Duration::from_millis(200);

pub enum ViewJob {
    /// A durable batch.
    Batch(Arc<Batch>),
    Snapshot(SnapshotPart),
    /// A reader waits: apply what is here now.
    Nudge,
    /// Apply what was sent, then stop.
    Stop,
}

/// What the log, the views and the readers know of each other.
pub struct Progress {
    /// The last batch whose answers went out.
    pub durable_seq: AtomicU64,
    applied: Mutex<u64>,
    changed: Condvar,
    jobs: Sender<ViewJob>,
    /// Why the views cannot be written, while they cannot.
    trouble: Mutex<Option<String>>,
    /// The longest a durable batch waited to be queryable in the views, in µs.
    lag_us_max: AtomicU64,
}

impl Progress {
    pub fn new(durable_seq: u64, applied_seq: u64, jobs: Sender<ViewJob>) -> Self {
        Self {
            durable_seq: AtomicU64::new(durable_seq),
            applied: Mutex::new(applied_seq),
            changed: Condvar::new(),
            jobs,
            trouble: Mutex::new(None),
            lag_us_max: AtomicU64::new(0),
        }
    }

    /// How far the views trail the log now, and the worst they did since the meter opened.
    pub fn lag(&self) -> ViewsLag {
        ViewsLag {
            behind_batches: self
                .durable_seq
                .load(Ordering::Acquire)
                .saturating_sub(self.applied()),
            worst_us: self.lag_us_max.load(Ordering::Relaxed),
        }
    }

    pub fn applied(&self) -> u64 {
        self.applied.lock().map_or(0, |applied| *applied)
    }

    pub fn jobs(&self) -> Sender<ViewJob> {
        self.jobs.clone()
    }

    fn set_applied(&self, seq: u64) {
        if let Ok(mut applied) = self.applied.lock() {
            *applied = (*applied).max(seq);
        }
        self.changed.notify_all();
    }

    fn set_trouble(&self, trouble: Option<String>) {
        if let Ok(mut slot) = self.trouble.lock() {
            *slot = trouble;
        }
    }

    /// Waits until the views have applied every batch through `seq`.
    pub fn wait_applied(&self, seq: u64) -> StoreResult<()> {
        self.wait_applied_for(seq, READ_WAIT)
    }

    pub fn wait_applied_for(&self, seq: u64, timeout: Duration) -> StoreResult<()> {
        let deadline = Instant::now() + timeout;
        let mut nudged = false;
        let mut applied = self.applied.lock().map_err(|_| {
            MeterError::StoreUnavailable("the views' progress is poisoned".to_owned())
        })?;
        while *applied < seq {
            if !nudged {
                let _ = self.jobs.send(ViewJob::Nudge);
                nudged = true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let trouble = self.trouble.lock().ok().and_then(|slot| slot.clone());
                return Err(MeterError::StoreUnavailable(format!(
                    "the ledger's views are at batch {}, behind {seq}{}",
                    *applied,
                    trouble.map_or_else(String::new, |why| format!(": {why}"))
                )));
            }
            applied = self
                .changed
                .wait_timeout(applied, left)
                .map_err(|_| {
                    MeterError::StoreUnavailable("the views' progress is poisoned".to_owned())
                })?
                .0;
        }
        Ok(())
    }
}

/// The view thread's state.
pub struct ViewThread {
    views: Connection,
    log: Connection,
    progress: Arc<Progress>,
    limits: ViewLimits,
    policy_ids: HashMap<Digest, i64>,
    /// A complete snapshot waiting for its last batch to be applied: (start, taken at).
    snapshot_ready: Option<(u64, u64)>,
    snapshot_parts: i64,
    snapshot_start: u64,
}

impl ViewThread {
    pub fn new(
        views: Connection,
        log: Connection,
        progress: Arc<Progress>,
        limits: ViewLimits,
    ) -> StoreResult<Self> {
        let policy_ids = views
            .prepare("SELECT id, digest FROM policies")?
            .query_map([], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .filter_map(|(id, digest)| Some((PolicyDigest::parse(&digest)?.bytes(), id)))
            .collect();
        Ok(Self {
            views,
            log,
            progress,
            limits,
            policy_ids,
            snapshot_ready: None,
            snapshot_parts: 0,
            snapshot_start: 0,
        })
    }

    /// Applies the log's batches after `applied` that the views lack (after a restart),
    /// then every durable batch sent, until told to stop.
    pub fn run(mut self, jobs: Receiver<ViewJob>) {
        if let Err(error) = self.catch_up() {
            tracing::error!(%error, "the views cannot catch up with the log");
            self.progress.set_trouble(Some(error.to_string()));
        }
        let mut window = Window::default();
        let window_time = Duration::from_millis(self.limits.window_ms_max);
        loop {
            let received = if window.batches.is_empty() && !window.stop {
                jobs.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                jobs.recv_timeout(
                    (window.opened_at + window_time).saturating_duration_since(Instant::now()),
                )
            };
            match received {
                Ok(job) => self.take(&mut window, job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => window.stop = true,
            }
            while window.decisions < self.limits.window_decisions_max {
                match jobs.try_recv() {
                    Ok(job) => self.take(&mut window, job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        window.stop = true;
                        break;
                    }
                }
            }
            let due = window.stop
                || window.urgent
                || window.decisions >= self.limits.window_decisions_min
                || window.opened_at.elapsed() >= window_time;
            if due && !window.batches.is_empty() {
                match self.apply(&window.batches) {
                    Ok(()) => {
                        // The window opened when its first batch arrived, durable.
                        let lag_us = u64::try_from(window.opened_at.elapsed().as_micros())
                            .unwrap_or(u64::MAX);
                        self.progress
                            .lag_us_max
                            .fetch_max(lag_us, Ordering::Relaxed);
                        let stop = window.stop;
                        window = Window {
                            stop,
                            ..Window::default()
                        };
                        self.progress.set_trouble(None);
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot apply a window of batches to the views; retrying");
                        self.progress.set_trouble(Some(error.to_string()));
                        if window.stop {
                            return;
                        }
                        std::thread::sleep(RETRY_AFTER);
                        continue;
                    }
                }
            } else if window.batches.is_empty() {
                window.urgent = false;
            }
            if window.stop && window.batches.is_empty() {
                return;
            }
        }
    }

    fn take(&mut self, window: &mut Window, job: ViewJob) {
        match job {
            ViewJob::Batch(batch) => {
                if window.batches.is_empty() {
                    window.opened_at = Instant::now();
                }
                window.decisions += batch.decisions.len().max(1);
                window.batches.push(batch);
            }
            ViewJob::Snapshot(part) => self.snapshot_part(part),
            ViewJob::Nudge => window.urgent = true,
            ViewJob::Stop => window.stop = true,
        }
    }

    fn catch_up(&mut self) -> StoreResult<()> {
        let applied = self.progress.applied();
        let mut window = Vec::new();
        let mut decisions = 0;
        let rows: Vec<(i64, Vec<u8>)> = self
            .log
            .prepare("SELECT seq, record FROM log WHERE seq > ?1 ORDER BY seq")?
            .query_map(params![to_i64(applied)], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (_, bytes) in rows {
            let batch = codec::decode(&bytes)?;
            decisions += batch.decisions.len().max(1);
            window.push(Arc::new(batch));
            if decisions >= self.limits.window_decisions_max {
                self.apply(&window)?;
                window.clear();
                decisions = 0;
            }
        }
        if !window.is_empty() {
            self.apply(&window)?;
        }
        Ok(())
    }

    fn snapshot_part(&mut self, part: SnapshotPart) {
        let written = match part {
            SnapshotPart::Begin { start_seq } => {
                self.snapshot_parts = 0;
                self.snapshot_start = start_seq;
                self.snapshot_ready = None;
                self.views
                    .execute("DELETE FROM snapshot_next", [])
                    .map(|_| ())
            }
            SnapshotPart::Tenants(bytes) | SnapshotPart::Beside(bytes) => {
                self.snapshot_bytes(&bytes)
            }
            SnapshotPart::Tail {
                bytes,
                taken_at_seq,
            } => {
                let written = self.snapshot_bytes(&bytes);
                if written.is_ok() {
                    self.snapshot_ready = Some((self.snapshot_start, taken_at_seq));
                }
                written
            }
        };
        if let Err(error) = written {
            tracing::warn!(%error, "cannot store a snapshot part; the snapshot is dropped");
            self.snapshot_ready = None;
            self.snapshot_parts = -1;
        }
    }

    fn snapshot_bytes(&mut self, bytes: &[u8]) -> rusqlite::Result<()> {
        if self.snapshot_parts < 0 {
            return Ok(());
        }
        self.views.execute(
            "INSERT INTO snapshot_next (part, bytes) VALUES (?1, ?2)",
            params![self.snapshot_parts, bytes],
        )?;
        self.snapshot_parts += 1;
        Ok(())
    }

    /// Makes the staged snapshot the one recovery uses, once every batch its parts saw is
    /// durable (applied here, so it is).
    fn complete_snapshot(&mut self, applied: u64) -> StoreResult<()> {
        let Some((start_seq, taken_at_seq)) = self.snapshot_ready else {
            return Ok(());
        };
        if applied < taken_at_seq {
            return Ok(());
        }
        self.snapshot_ready = None;
        self.views.execute_batch("BEGIN IMMEDIATE")?;
        let swapped = self.views.execute_batch(&format!(
            "DELETE FROM snapshot; INSERT INTO snapshot SELECT part, bytes FROM snapshot_next; \
             DELETE FROM snapshot_next; \
             INSERT INTO snapshot_meta (one, start_seq) VALUES (1, {start_seq}) \
             ON CONFLICT (one) DO UPDATE SET start_seq = excluded.start_seq;"
        ));
        match swapped {
            Ok(()) => {
                self.views.execute_batch("COMMIT")?;
                tracing::info!(start_seq, taken_at_seq, "snapshot of the live state stored");
                Ok(())
            }
            Err(error) => {
                let _ = self.views.execute_batch("ROLLBACK");
                Err(error.into())
            }
        }
    }

    /// Applies a window of batches in one transaction.
    fn apply(&mut self, window: &[Arc<Batch>]) -> StoreResult<()> {
        let mut rows = WindowRows::default();
        for batch in window {
            rows.add(batch)?;
        }
        let last = window.last().map_or(0, |batch| batch.seq);
        self.views.execute_batch("BEGIN IMMEDIATE")?;
        match self.write(&rows, last) {
            Ok(()) => self.views.execute_batch("COMMIT")?,
            Err(error) => {
                let _ = self.views.execute_batch("ROLLBACK");
                // Ids of policies inserted by the failed transaction are gone with it.
                self.policy_ids
                    .retain(|digest, _| !rows.policies.iter().any(|row| row.digest == *digest));
                return Err(error);
            }
        }
        self.progress.set_applied(last);
        self.complete_snapshot(last)
    }

    fn policy_id(&self, digest: &Digest) -> StoreResult<i64> {
        self.policy_ids.get(digest).copied().ok_or_else(|| {
            MeterError::StoreCorrupt(format!(
                "the log names policy {} before recording it",
                PolicyDigest::from_bytes(*digest)
            ))
        })
    }

    fn write(&mut self, rows: &WindowRows, last: u64) -> StoreResult<()> {
        let views = &self.views;
        for policy in &rows.policies {
            views
                .prepare_cached(
                    "INSERT OR IGNORE INTO policies (digest, name, version, balances_json, hold_ttl_ms, component) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    PolicyDigest::from_bytes(policy.digest).to_string(),
                    policy.name,
                    policy.version,
                    serde_json::to_string(&policy.balances).unwrap_or_default(),
                    to_i64(policy.hold_ttl_ms),
                    policy.component,
                ])?;
            let id: i64 = views
                .prepare_cached("SELECT id FROM policies WHERE digest = ?1")?
                .query_row(
                    params![PolicyDigest::from_bytes(policy.digest).to_string()],
                    |row| row.get(0),
                )?;
            self.policy_ids.insert(policy.digest, id);
        }
        for (digest, via, at_ms) in &rows.activations {
            views
                .prepare_cached("INSERT INTO activations (policy, via, at_ms) VALUES (?1, ?2, ?3)")?
                .execute(params![self.policy_id(digest)?, via, to_i64(*at_ms)])?;
        }
        {
            let mut insert = views.prepare_cached(
                "INSERT OR REPLACE INTO transactions (id, tenant, state, opened_seq, opened_index, \
                 opened_item, opened_entry, closed_seq, closed_index, closed_entry) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            let mut close = views.prepare_cached(
                "UPDATE transactions SET state = ?2, closed_seq = ?3, closed_index = ?4, \
                 closed_entry = ?5 WHERE id = ?1",
            )?;
            for (id, row) in &rows.transactions {
                let closed = row
                    .closed
                    .map(|at| (to_i64(at.seq), at.index as i64, to_i64(at.first_entry)));
                match row.opened {
                    Some(opened) => insert.execute(params![
                        id,
                        row.tenant,
                        row.state.as_str(),
                        to_i64(opened.seq),
                        opened.index as i64,
                        opened.item.map(|item| item as i64),
                        to_i64(opened.first_entry),
                        closed.map(|at| at.0),
                        closed.map(|at| at.1),
                        closed.map(|at| at.2),
                    ])?,
                    None => close.execute(params![
                        id,
                        row.state.as_str(),
                        closed.map(|at| at.0),
                        closed.map(|at| at.1),
                        closed.map(|at| at.2),
                    ])?,
                };
            }
        }
        {
            let mut insert = views.prepare_cached(
                "INSERT OR IGNORE INTO tenant_log (tenant, seq, decision, first_entry) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (tenant, seq, decision, first_entry) in &rows.tenant_log {
                insert.execute(params![
                    tenant,
                    to_i64(*seq),
                    *decision as i64,
                    to_i64(*first_entry)
                ])?;
            }
        }
        {
            // In log order: the ids follow it.
            let mut insert = views.prepare_cached(
                "INSERT OR IGNORE INTO events (seq, decision, tenant) VALUES (?1, ?2, ?3)",
            )?;
            for (seq, decision, tenant) in &rows.events {
                insert.execute(params![to_i64(*seq), *decision as i64, tenant])?;
            }
        }
        {
            let mut insert = views.prepare_cached(
                "INSERT OR REPLACE INTO batches (seq, last_entry) VALUES (?1, ?2)",
            )?;
            for (seq, last_entry) in &rows.batches {
                insert.execute(params![to_i64(*seq), to_i64(*last_entry)])?;
            }
        }
        {
            let mut insert = views.prepare_cached(
                "INSERT OR IGNORE INTO marks (tenant, scope, key, transaction_id) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for ((tenant, scope, key), transaction_id) in &rows.marks {
                insert.execute(params![tenant, scope, key, transaction_id])?;
            }
        }
        {
            let mut insert = views.prepare_cached(
                "INSERT OR IGNORE INTO grants (grant_id, tenant, balance, amount, at_ms, lot, terms_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (grant_id, grant) in &rows.grants {
                insert.execute(params![
                    grant_id,
                    grant.tenant,
                    grant.balance,
                    grant.amount,
                    to_i64(grant.at_ms),
                    to_i64(grant.lot),
                    grant.terms_json,
                ])?;
            }
        }
        views
            .prepare_cached("UPDATE applied SET seq = ?1 WHERE one = 1")?
            .execute(params![to_i64(last)])?;
        Ok(())
    }
}

/// The batches gathered for the next view transaction.
struct Window {
    batches: Vec<Arc<Batch>>,
    decisions: usize,
    opened_at: Instant,
    /// A reader waits: apply now.
    urgent: bool,
    stop: bool,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            batches: Vec::new(),
            decisions: 0,
            opened_at: Instant::now(),
            urgent: false,
            stop: false,
        }
    }
}

/// Where a decision is in the log.
#[derive(Debug, Clone, Copy)]
struct At {
    seq: u64,
    index: usize,
    /// The row of an `Import` decision.
    item: Option<usize>,
    first_entry: u64,
}

struct TransactionRow {
    tenant: String,
    state: TransactionState,
    opened: Option<At>,
    closed: Option<At>,
}

struct PolicyRow {
    digest: Digest,
    name: String,
    version: String,
    balances: Vec<String>,
    hold_ttl_ms: u64,
    component: Option<Vec<u8>>,
}

/// A row of the `grants` view.
struct GrantRow {
    tenant: String,
    balance: String,
    amount: i64,
    at_ms: u64,
    lot: LotId,
    /// The lot's terms as JSON; empty for a grant made before lots.
    terms_json: String,
}

/// A window's rows, by table, sorted by key.
#[derive(Default)]
struct WindowRows {
    transactions: BTreeMap<String, TransactionRow>,
    /// `(tenant, seq, decision, first entry id)`: where a tenant's journal entries are.
    tenant_log: BTreeSet<(String, u64, usize, u64)>,
    /// `(seq, last entry id)` of every batch: where journal entries by id are.
    batches: Vec<(u64, u64)>,
    marks: BTreeMap<(String, String, String), String>,
    grants: BTreeMap<String, GrantRow>,
    policies: Vec<PolicyRow>,
    activations: Vec<(Digest, String, u64)>,
    /// `(seq, decision, tenant)` of every event, in log order.
    events: Vec<(u64, usize, String)>,
}

impl WindowRows {
    fn add(&mut self, batch: &Batch) -> StoreResult<()> {
        let policy = |index: u32| {
            batch.policies.get(index as usize).copied().ok_or_else(|| {
                MeterError::StoreCorrupt(format!(
                    "log record {} names policy {index}, which it lacks",
                    batch.seq
                ))
            })
        };
        let mut next_entry = batch.first_entry_id;
        let mut last_entry = batch.first_entry_id.saturating_sub(1);
        for (index, decision) in batch.decisions.iter().enumerate() {
            let first_entry = next_entry;
            next_entry += decision.entries().len() as u64;
            if !decision.entries().is_empty() {
                last_entry = next_entry - 1;
            }
            let at = At {
                seq: batch.seq,
                index,
                item: None,
                first_entry,
            };
            let mut journal = |tenant: &str| {
                if !decision.entries().is_empty() {
                    self.tenant_log
                        .insert((tenant.to_owned(), batch.seq, index, first_entry));
                }
            };
            match decision {
                Decision::Authorize(authorized) => {
                    journal(&authorized.tenant);
                    self.transactions.insert(
                        authorized.id.clone(),
                        TransactionRow {
                            tenant: authorized.tenant.clone(),
                            state: if authorized.answer.admitted {
                                TransactionState::Open
                            } else {
                                TransactionState::Rejected
                            },
                            opened: Some(at),
                            closed: None,
                        },
                    );
                    self.add_marks(&authorized.tenant, &authorized.id, &authorized.marks);
                }
                Decision::Settle(settled) => {
                    journal(&settled.tenant);
                    self.close(&settled.id, &settled.tenant, TransactionState::Settled, at);
                    self.add_marks(&settled.tenant, &settled.id, &settled.marks);
                }
                Decision::Expire(expired) => {
                    journal(&expired.tenant);
                    self.close(&expired.id, &expired.tenant, TransactionState::Expired, at);
                }
                Decision::Grant(granted) => {
                    journal(&granted.tenant);
                    let lot = granted.lot();
                    self.grants.insert(
                        granted.grant_id.clone(),
                        GrantRow {
                            tenant: granted.tenant.clone(),
                            balance: granted.balance.clone(),
                            amount: granted.amount,
                            at_ms: batch.at_ms,
                            lot,
                            terms_json: crate::store::terms_json(lot, &granted.terms),
                        },
                    );
                }
                Decision::CloseLot(closed) => journal(&closed.tenant),
                // Limits, caps, windows, refills, watches and scheduled grants live in
                // the live state (and its snapshots); nothing to view.
                Decision::Overdraft(_)
                | Decision::Cap(_)
                | Decision::Spend(_)
                | Decision::Refill(_)
                | Decision::Watch(_)
                | Decision::Schedule(_) => {}
                Decision::Event(event) => {
                    self.events.push((batch.seq, index, event.tenant.clone()));
                }
                Decision::Policy(saved) => self.policies.push(PolicyRow {
                    digest: policy(saved.policy)?,
                    name: saved.name.clone(),
                    version: saved.version.clone(),
                    balances: saved.balances.clone(),
                    hold_ttl_ms: saved.hold_ttl_ms,
                    component: saved.component.clone(),
                }),
                Decision::Activate(activation) => self.activations.push((
                    policy(activation.policy)?,
                    activation.via.clone(),
                    batch.at_ms,
                )),
                Decision::Import(imported) => {
                    for (item, transaction) in imported.transactions.iter().enumerate() {
                        self.transactions.insert(
                            transaction.id.clone(),
                            TransactionRow {
                                tenant: transaction.tenant.clone(),
                                state: transaction.state,
                                opened: Some(At {
                                    item: Some(item),
                                    first_entry: 0,
                                    ..at
                                }),
                                closed: None,
                            },
                        );
                    }
                    for entry in &imported.journal {
                        self.tenant_log
                            .insert((entry.tenant.clone(), batch.seq, index, 0));
                        last_entry = last_entry.max(entry.id);
                    }
                    for (tenant, scope, key, transaction_id) in &imported.marks {
                        self.marks
                            .entry((tenant.clone(), scope.clone(), key.clone()))
                            .or_insert_with(|| transaction_id.clone());
                    }
                    for grant in &imported.grants {
                        self.grants.insert(
                            grant.grant_id.clone(),
                            GrantRow {
                                tenant: grant.tenant.clone(),
                                balance: grant.balance.clone(),
                                amount: grant.amount,
                                at_ms: grant.at_ms,
                                lot: LEGACY_LOT,
                                terms_json: String::new(),
                            },
                        );
                    }
                    for activation in &imported.activations {
                        self.activations.push((
                            policy(activation.policy)?,
                            activation.via.clone(),
                            activation.at_ms,
                        ));
                    }
                }
            }
        }
        self.batches.push((batch.seq, last_entry));
        Ok(())
    }

    fn close(&mut self, id: &str, tenant: &str, state: TransactionState, at: At) {
        let row = self
            .transactions
            .entry(id.to_owned())
            .or_insert_with(|| TransactionRow {
                tenant: tenant.to_owned(),
                state,
                opened: None,
                closed: None,
            });
        row.state = state;
        row.closed = Some(at);
    }

    fn add_marks(
        &mut self,
        tenant: &str,
        transaction_id: &str,
        marks: &[crate::ledger::record::MarkRecord],
    ) {
        for mark in marks {
            self.marks
                .entry((tenant.to_owned(), mark.scope.clone(), mark.key.clone()))
                .or_insert_with(|| transaction_id.to_owned());
        }
    }
}

/// The applied seq of the views.
pub fn applied_seq(views: &Connection) -> StoreResult<u64> {
    let seq: i64 = views.query_row("SELECT seq FROM applied WHERE one = 1", [], |row| {
        row.get(0)
    })?;
    Ok(to_u64(seq))
}
