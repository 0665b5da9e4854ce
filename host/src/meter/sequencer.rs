//! The sequencer: the one thread that decides. It takes the jobs queued so far (a
//! batch: at most `batch_size_max` jobs and `batch_bytes_max` bytes of requests), has
//! the store load what they need, runs the decisions in order on the live state
//! ([`super::decide`]), commits the batch's record, and hands the answers to the sync
//! thread, which sends them once the record is durable, while the next batch is being
//! decided (group commit across batches). Between batches it copies a slice of the live
//! state into the snapshot in progress.
//!
//! A decision refused for any reason but the store's leaves nothing behind. A failed
//! commit fails the batch; on a store whose state lives across batches (SQLite) it also
//! stops the meter, because the live state then holds decisions the log does not.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::MeterConfig;
use super::command::{Command, Pending};
use super::decide::{BatchBuilder, Decider, Pricing};
use super::failure::FailureCounts;
use super::feed::EventSignal;
use super::metrics::{self, DurableMetrics};
use super::registry::Registry;
use crate::clock::Clock;
use crate::error::MeterError;
use crate::ledger::record::{Batch, Decision};
use crate::ledger::state::{self, Coverage, LiveState};
use crate::model::BatchStats;
use crate::policy::PolicyInfo;
use crate::store::{AuditPoint, BatchClaims, Durability, SnapshotPart, Store};

/// Batches committed so far, shared with the meter for [`crate::Meter::batch_stats`].
#[derive(Default)]
pub struct BatchCounters {
    batches: AtomicU64,
    decisions: AtomicU64,
    largest: AtomicU64,
}

impl BatchCounters {
    fn count(&self, size: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.decisions.fetch_add(size, Ordering::Relaxed);
        self.largest.fetch_max(size, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> BatchStats {
        BatchStats {
            batches: self.batches.load(Ordering::Relaxed),
            decisions: self.decisions.load(Ordering::Relaxed),
            largest_batch: self.largest.load(Ordering::Relaxed),
        }
    }
}

/// Whether the meter can decide, and if not, why; and the signal that events became
/// durable: shared by the sequencer, the sync thread and the meter (`/healthz`, the
/// event feed).
#[derive(Default)]
pub struct Health {
    failure: Mutex<Option<String>>,
    pub events: EventSignal,
}

impl Health {
    /// Why the meter stopped deciding, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|failure| failure.clone())
    }

    pub fn fail(&self, why: String) {
        if let Ok(mut failure) = self.failure.lock()
            && failure.is_none()
        {
            tracing::error!(why, "the meter stops deciding until it restarts");
            *failure = Some(why);
        }
    }

    fn error(&self) -> Option<MeterError> {
        self.failure().map(MeterError::SequencerStopped)
    }
}

/// Records why the sequencer thread ended unless it ended because the meter closed.
pub struct StopGuard {
    pub health: Arc<Health>,
    pub clean: bool,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        if !self.clean {
            self.health.fail(if std::thread::panicking() {
                "the sequencer thread panicked".to_owned()
            } else {
                "the sequencer thread stopped".to_owned()
            });
        }
    }
}

/// A committed batch on its way to the disk: its record and its answers.
struct Committed {
    batch: Option<Arc<Batch>>,
    answers: Vec<Pending>,
}

/// A snapshot being copied, a slice between two batches.
struct SnapshotCursor {
    next_tenant: usize,
    end_tenant: usize,
}

pub struct Sequencer {
    pub store: Rc<dyn Store>,
    pub state: LiveState,
    pub registry: Registry,
    pub config: MeterConfig,
    pub clock: Arc<dyn Clock>,
    pub counters: Arc<BatchCounters>,
    pub failure_counts: Arc<FailureCounts>,
    pub health: Arc<Health>,
    /// The starting policy's bytes (none: linked natively), until a batch records it.
    pub unregistered: Option<(PolicyInfo, Option<Vec<u8>>)>,
    durable: Option<mpsc::Sender<Committed>>,
    sync_thread: Option<std::thread::JoinHandle<()>>,
    snapshot: Option<SnapshotCursor>,
    decisions_since_snapshot: u64,
}

impl Sequencer {
    pub fn new(
        store: Rc<dyn Store>,
        state: LiveState,
        registry: Registry,
        config: MeterConfig,
        counters: Arc<BatchCounters>,
        failure_counts: Arc<FailureCounts>,
        health: Arc<Health>,
    ) -> Result<Self, MeterError> {
        let (durable, committed) = mpsc::channel::<Committed>();
        let durability = store.durability()?;
        let sync_health = Arc::clone(&health);
        let sync_thread = std::thread::Builder::new()
            .name("creditgate-log".to_owned())
            .spawn(move || sync_and_answer(durability, committed, &sync_health))
            .map_err(|error| {
                MeterError::StoreUnavailable(format!("cannot start the log thread: {error}"))
            })?;
        Ok(Self {
            store,
            state,
            registry,
            clock: Arc::clone(&config.clock),
            config,
            counters,
            failure_counts,
            health,
            unregistered: None,
            durable: Some(durable),
            sync_thread: Some(sync_thread),
            snapshot: None,
            decisions_since_snapshot: 0,
        })
    }

    /// Records the starting policy in a batch of its own and waits until it is durable.
    /// With the store down (PostgreSQL), it is recorded by the first batch that commits.
    pub fn register_start(&mut self) -> Result<(), MeterError> {
        let (reply, registered) = tokio::sync::oneshot::channel::<Result<(), MeterError>>();
        self.run_batch(Vec::new(), false, vec![Pending::new(reply, Ok(()))]);
        match registered.blocking_recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error @ MeterError::StoreUnavailable(_))) => {
                tracing::error!(%error, "the ledger is unavailable; every decision fails closed until it is back");
                Ok(())
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(MeterError::ShutDown),
        }
    }

    /// Runs until every sender is gone, sweeping lapsed holds between batches.
    pub fn run(mut self, jobs: Receiver<Command>) {
        let sweep_every = (self.config.sweep_interval_ms > 0)
            .then(|| Duration::from_millis(self.config.sweep_interval_ms));
        let mut next_sweep = sweep_every.map(|every| Instant::now() + every);
        loop {
            let until = match (next_sweep, &self.snapshot) {
                (_, Some(_)) => Some(Instant::now()),
                (Some(at), None) => Some(at),
                (None, None) => None,
            };
            let first = match until {
                Some(at) => match jobs.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(job) => Some(job),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match jobs.recv() {
                    Ok(job) => Some(job),
                    Err(_) => break,
                },
            };
            if let (Some(at), Some(every)) = (next_sweep, sweep_every)
                && Instant::now() >= at
            {
                self.run_batch(Vec::new(), true, Vec::new());
                next_sweep = Some(Instant::now() + every);
            }
            if let Some(first) = first {
                let batch = self.gather(first, &jobs);
                self.run_batch(batch, false, Vec::new());
            }
            self.snapshot_step();
        }
        // Every committed batch is answered before the meter's thread ends.
        self.durable = None;
        if let Some(thread) = self.sync_thread.take() {
            let _ = thread.join();
        }
    }

    /// The first job and whatever else is queued, within the batch's bounds.
    fn gather(&self, first: Command, jobs: &Receiver<Command>) -> Vec<Command> {
        let mut bytes = first.request_bytes();
        let mut batch = vec![first];
        let deadline = Instant::now() + Duration::from_micros(self.config.batch_wait_us_max);
        while batch.len() < self.config.batch_size_max && bytes < self.config.batch_bytes_max {
            let waited = match jobs.try_recv() {
                Err(TryRecvError::Empty) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => jobs.recv_timeout(left).ok(),
                    _ => None,
                },
                received => received.ok(),
            };
            match waited {
                Some(job) => {
                    bytes += job.request_bytes();
                    batch.push(job);
                }
                None => break,
            }
        }
        batch
    }

    /// Decides a batch and commits its record; the answers go to the sync thread.
    fn run_batch(&mut self, jobs: Vec<Command>, sweep: bool, mut answers: Vec<Pending>) {
        if let Some(error) = self.health.error() {
            for job in jobs {
                job.refuse(error.clone());
            }
            for answer in answers {
                answer.answer(Some(&error));
            }
            return;
        }
        let now_ms = self.clock.now_ms();
        let mut claims = claims(&jobs);
        claims.sweep |= sweep;
        claims.activation |= self.unregistered.is_some();
        if let Err(error) = self.store.load(&claims, &mut self.state, now_ms) {
            tracing::error!(%error, "the ledger is unavailable; the batch fails closed");
            self.store.abort();
            for job in jobs {
                job.refuse(error.clone());
            }
            for answer in answers {
                answer.answer(Some(&error));
            }
            return;
        }
        self.keep_views_close();
        let active_before = self.registry.active();
        let mut builder =
            BatchBuilder::new(self.state.last_seq + 1, now_ms, self.state.next_entry_id);
        let mut store_failure: Option<MeterError> = None;
        let mut released = 0;
        {
            let mut decider = Decider {
                state: &mut self.state,
                store: self.store.as_ref(),
                registry: &mut self.registry,
                builder: &mut builder,
                failure: &self.config.failure,
                failure_counts: &self.failure_counts,
            };
            let mut prepare = || -> Result<usize, MeterError> {
                if let Some((info, component)) = &self.unregistered {
                    decider.save_policy(info, component.as_deref())?;
                    decider.record_activation(&info.digest, "start")?;
                }
                decider.sweep(self.config.expiry_batch_max)
            };
            match prepare() {
                Ok(count) => released = count,
                Err(error) => store_failure = Some(error),
            }
            for job in jobs {
                if let Some(error) = &store_failure {
                    job.refuse(error.clone());
                    continue;
                }
                let answer = execute(&mut decider, job, &mut released, &self.clock);
                if let Some(error) = answer.1 {
                    store_failure = Some(error);
                }
                answers.push(answer.0);
            }
            if store_failure.is_none()
                && let Err(error) = decider.raise_balance_events()
            {
                store_failure = Some(error);
            }
        }
        let decisions = builder.batch.decisions.len() as u64;
        let committed = match store_failure {
            Some(error) => Err(error),
            None => self.store.commit(&builder.batch, &self.state),
        };
        match committed {
            Ok(()) => {
                // The starting policy is in the ledger now (or was already).
                self.unregistered = None;
                if decisions > 0 {
                    self.counters.count(decisions);
                    self.decisions_since_snapshot += decisions;
                }
                metrics::open_holds(self.state.open_holds().0);
                let batch = (decisions > 0).then(|| Arc::new(builder.batch));
                self.send(Committed { batch, answers });
            }
            Err(error) => {
                tracing::error!(%error, "the batch did not commit; its answers are errors");
                self.store.abort();
                self.registry.restore_active(active_before);
                if self.state.coverage() == Coverage::Whole && decisions > 0 {
                    // The live state holds decisions the log does not: never use it again.
                    self.health.fail(format!(
                        "a batch could not be written to the ledger: {error}"
                    ));
                }
                for answer in answers {
                    answer.answer(Some(&error));
                }
            }
        }
    }

    fn send(&mut self, committed: Committed) {
        let unsent = match &self.durable {
            Some(durable) => durable.send(committed).err().map(|unsent| unsent.0),
            None => Some(committed),
        };
        if let Some(committed) = unsent {
            let error = MeterError::SequencerStopped("the sync thread stopped".to_owned());
            self.health.fail(error.to_string());
            for answer in committed.answers {
                answer.answer(Some(&error));
            }
        }
    }

    /// Lets memory forget what the views applied, and waits for them when they lag more
    /// than the bound allows.
    fn keep_views_close(&mut self) {
        let Some(applied) = self.store.applied_seq() else {
            return;
        };
        self.state.evict_through(applied);
        if self.state.unapplied() > self.config.sqlite.views.lag_decisions_max {
            tracing::warn!(
                unapplied = self.state.unapplied(),
                "the views lag too far behind the log; waiting for them"
            );
            if let Err(error) = self.store.catch_up_views() {
                tracing::error!(%error, "the views did not catch up");
            }
            if let Some(applied) = self.store.applied_seq() {
                self.state.evict_through(applied);
            }
        }
    }

    /// Copies the next slice of the live state into the snapshot in progress, or starts
    /// one when enough decisions were made since the last.
    fn snapshot_step(&mut self) {
        if !self.store.takes_snapshots() || self.health.failure().is_some() {
            return;
        }
        let sent = match &mut self.snapshot {
            None => {
                if self.decisions_since_snapshot < self.config.sqlite.snapshot_every_decisions {
                    return;
                }
                self.decisions_since_snapshot = 0;
                self.snapshot = Some(SnapshotCursor {
                    next_tenant: 0,
                    end_tenant: self.state.tenant_count(),
                });
                self.store.snapshot_part(SnapshotPart::Begin {
                    start_seq: self.state.last_seq,
                })
            }
            Some(cursor) if cursor.next_tenant < cursor.end_tenant => {
                let end = (cursor.next_tenant + self.config.sqlite.snapshot_slice_tenants)
                    .min(cursor.end_tenant);
                let slice = self.state.tenant_slice(cursor.next_tenant, end);
                let lots = self.state.lot_slice(cursor.next_tenant, end);
                let lots = (!lots.is_empty()).then(|| state::encode_lots(&lots));
                let limits = self.state.limit_slice(cursor.next_tenant, end);
                let limits = (!limits.is_empty()).then(|| state::encode_limits(&limits));
                let caps = self.state.cap_slice(cursor.next_tenant, end);
                let caps = (!caps.is_empty()).then(|| state::encode_caps(&caps));
                let refills = self.state.refill_slice(cursor.next_tenant, end);
                let refills = (!refills.is_empty()).then(|| state::encode_refills(&refills));
                let watches = self.state.watch_slice(cursor.next_tenant, end);
                let watches = (!watches.is_empty()).then(|| state::encode_watches(&watches));
                let scheduled = self.state.scheduled_slice(cursor.next_tenant, end);
                let scheduled =
                    (!scheduled.is_empty()).then(|| state::encode_scheduled(&scheduled));
                cursor.next_tenant = end;
                self.store
                    .snapshot_part(SnapshotPart::Tenants(state::encode_tenants(&slice)))
                    .and_then(|()| {
                        let beside = lots
                            .into_iter()
                            .chain(limits)
                            .chain(caps)
                            .chain(refills)
                            .chain(watches)
                            .chain(scheduled);
                        for part in beside {
                            self.store.snapshot_part(SnapshotPart::Beside(part))?;
                        }
                        Ok(())
                    })
            }
            Some(_) => {
                self.snapshot = None;
                self.store.snapshot_part(SnapshotPart::Tail {
                    bytes: state::encode_tail(&self.state.snapshot_tail()),
                    taken_at_seq: self.state.last_seq,
                })
            }
        };
        if let Err(error) = sent {
            tracing::warn!(%error, "the snapshot in progress is dropped");
            self.snapshot = None;
        }
    }
}

/// Runs one command; answers its pending answer, and the store failure it met, if any
/// (the rest of the batch then fails with it).
fn execute(
    decider: &mut Decider<'_>,
    command: Command,
    released: &mut usize,
    clock: &Arc<dyn Clock>,
) -> (Pending, Option<MeterError>) {
    // Every log line of a decision names what it decides (a disabled span costs a
    // check of its callsite's interest).
    let span = match &command {
        Command::Authorize(checked, _) | Command::Quote(checked, _) => {
            tracing::info_span!("decide", tenant = %checked.request.tenant, transaction = %checked.id)
        }
        Command::Settle(request, _) => {
            tracing::info_span!("decide", transaction = %request.transaction_id)
        }
        Command::Grant(grant, _) => {
            tracing::info_span!("decide", tenant = %grant.tenant, grant = %grant.grant_id)
        }
        Command::Void {
            tenant, grant_id, ..
        } => {
            tracing::info_span!("decide", tenant = %tenant, grant = %grant_id)
        }
        Command::Overdraft {
            tenant, balance, ..
        }
        | Command::SpendCap {
            tenant, balance, ..
        }
        | Command::Thresholds {
            tenant, balance, ..
        } => {
            tracing::info_span!("decide", tenant = %tenant, balance = %balance)
        }
        _ => tracing::Span::none(),
    };
    let _decision = span.enter();
    /// A failure of the meter is a warning; one of the policy is the tenant's answer,
    /// logged at debug only: a tenant must not be able to flood the log (the breaker
    /// warns once when it refuses a tenant).
    fn logged<T>(result: Result<T, MeterError>) -> Result<T, MeterError> {
        match &result {
            Err(error) if error.caused_by_policy() => {
                tracing::debug!(code = error.code(), %error, "a decision failed closed");
            }
            Err(error) if error.status() >= 500 => {
                tracing::warn!(code = error.code(), %error, "a decision failed closed");
            }
            _ => {}
        }
        result
    }
    fn failure<T>(result: &Result<T, MeterError>) -> Option<MeterError> {
        match result {
            Err(error @ (MeterError::StoreUnavailable(_) | MeterError::StoreCorrupt(_))) => {
                Some(error.clone())
            }
            _ => None,
        }
    }
    macro_rules! answer {
        ($reply:expr, $result:expr) => {{
            let result = logged($result);
            let failed = failure(&result);
            (Pending::new($reply, result), failed)
        }};
    }
    match command {
        Command::Authorize(checked, reply) => {
            answer!(reply, decider.authorize(&checked, Pricing::Admit))
        }
        Command::Quote(checked, reply) => {
            answer!(reply, decider.authorize(&checked, Pricing::Quote))
        }
        Command::Settle(request, reply) => answer!(reply, decider.settle(&request)),
        Command::Grant(grant, reply) => answer!(reply, decider.grant(&grant)),
        Command::Balances(tenant, reply) => answer!(reply, decider.balances(&tenant)),
        Command::Lots(tenant, reply) => answer!(reply, decider.lots(&tenant)),
        Command::Void {
            tenant,
            grant_id,
            reply,
        } => answer!(reply, decider.void(&tenant, &grant_id)),
        Command::Overdraft {
            tenant,
            balance,
            limit,
            reply,
        } => answer!(reply, decider.set_overdraft(&tenant, &balance, limit)),
        Command::SpendCap {
            tenant,
            balance,
            cap,
            reply,
        } => answer!(reply, decider.set_spend_cap(&tenant, &balance, cap)),
        Command::Thresholds {
            tenant,
            balance,
            thresholds,
            reply,
        } => answer!(reply, decider.set_thresholds(&tenant, &balance, thresholds)),
        Command::Refill {
            tenant,
            refill_id,
            refill,
            anchor_ms,
            reply,
        } => answer!(
            reply,
            decider.set_refill(&tenant, &refill_id, refill, anchor_ms)
        ),
        Command::Refills(tenant, reply) => answer!(reply, decider.list_refills(&tenant)),
        Command::ExpireDue(reply) => {
            let result = decider.sweep(usize::MAX).map(|count| {
                *released += count;
                *released
            });
            if result.is_ok() {
                let needed = match decider.store.open_policies() {
                    Ok(Some(needed)) => Some(needed),
                    Ok(None) => Some(decider.state.open_policies()),
                    Err(error) => {
                        tracing::warn!(%error, "cannot tell which policies open transactions need");
                        None
                    }
                };
                if let Some(needed) = needed {
                    decider.registry.unload_unused(&needed);
                }
            }
            answer!(reply, result)
        }
        Command::Activate {
            compiled,
            component,
            via,
            reply,
        } => {
            let info = decider.registry.switch(&compiled);
            let recorded = decider
                .save_policy(&info, Some(&component))
                .and_then(|()| decider.record_activation(&info.digest, &via))
                .map(|()| {
                    tracing::info!(policy = %info.name, version = %info.version, digest = %info.digest, via, "policy activated");
                    info
                });
            answer!(reply, recorded)
        }
        Command::Adopt { compiled, reply } => {
            let info = decider.registry.switch(&compiled);
            decider.state.adopt_active_policy(info.digest.bytes());
            answer!(reply, Ok(info))
        }
        Command::SetShadow {
            compiled,
            component,
            reply,
        } => {
            let report = decider
                .registry
                .set_shadow(&compiled, component, clock.now_ms());
            answer!(reply, Ok(report))
        }
        Command::ShadowReport(reply) => answer!(reply, Ok(decider.registry.shadow_report())),
        Command::TakeShadow(reply) => answer!(reply, Ok(decider.registry.take_shadow())),
        Command::LoadedPolicies(reply) => answer!(reply, Ok(decider.registry.loaded())),
        Command::Filters(reply) => answer!(reply, Ok(decider.state.filter_bytes())),
        Command::Audit(reply) => {
            let seq = if decider.builder.is_empty() {
                decider.state.last_seq
            } else {
                decider.builder.batch.seq
            };
            answer!(
                reply,
                Ok(AuditPoint {
                    accounts: decider.state.all_accounts(),
                    lots: decider.state.all_lots(),
                    next_entry_id: decider.state.next_entry_id,
                    seq,
                })
            )
        }
    }
}

/// What the batch's decisions will touch, for a store shared with other processes.
fn claims(batch: &[Command]) -> BatchClaims {
    let mut claims = BatchClaims::default();
    for job in batch {
        match job {
            // A quote reads what an authorize would, under the same locks.
            Command::Authorize(checked, _) | Command::Quote(checked, _) => {
                claims.tenants.insert(checked.request.tenant.clone());
                claims.transaction_ids.insert(checked.id.clone());
            }
            Command::Settle(request, _) => {
                claims.settled_ids.insert(request.transaction_id.clone());
            }
            Command::Grant(grant, _) => {
                claims.tenants.insert(grant.tenant.clone());
                claims.grant_ids.insert(grant.grant_id.clone());
            }
            Command::Balances(tenant, _)
            | Command::Overdraft { tenant, .. }
            | Command::SpendCap { tenant, .. }
            | Command::Thresholds { tenant, .. } => {
                claims.tenants.insert(tenant.clone());
            }
            Command::Refill { tenant, .. }
            | Command::Refills(tenant, _)
            | Command::Lots(tenant, _) => {
                claims.tenants.insert(tenant.clone());
                claims.schedules = true;
            }
            Command::Void {
                tenant, grant_id, ..
            } => {
                claims.tenants.insert(tenant.clone());
                claims.grant_ids.insert(grant_id.clone());
            }
            Command::Activate { .. } => claims.activation = true,
            Command::ExpireDue(_) => claims.sweep = true,
            Command::Adopt { .. }
            | Command::SetShadow { .. }
            | Command::ShadowReport(_)
            | Command::TakeShadow(_)
            | Command::LoadedPolicies(_)
            | Command::Audit(_)
            | Command::Filters(_) => {}
        }
    }
    claims
}

/// The log thread: takes every batch committed so far, makes them durable at once
/// (SQLite: appends them to the log and syncs it once), hands them on (the views) and
/// then answers them. A failed write or sync fails them and every batch after: the
/// meter stops.
fn sync_and_answer(
    mut durability: Box<dyn Durability>,
    committed: Receiver<Committed>,
    health: &Health,
) {
    let mut metrics = DurableMetrics::default();
    while let Ok(first) = committed.recv() {
        let mut group = vec![first];
        group.extend(committed.try_iter());
        let batches: Vec<Arc<Batch>> = group
            .iter()
            .filter_map(|committed| committed.batch.clone())
            .collect();
        let started = Instant::now();
        let persisted = match health.error() {
            Some(error) => Err(error),
            None => durability.persist(&batches),
        };
        if let Err(error) = &persisted {
            health.fail(format!(
                "the ledger's log could not be written to disk: {error}"
            ));
        }
        let failure = persisted.err();
        if failure.is_none() {
            metrics.durable(&batches, started.elapsed());
            let events = batches.iter().any(|batch| {
                batch
                    .decisions
                    .iter()
                    .any(|decision| matches!(decision, Decision::Event(_)))
            });
            for batch in batches {
                durability.durable(batch);
            }
            if events {
                health.events.raised();
            }
        }
        for committed in group {
            for answer in committed.answers {
                answer.answer(failure.as_ref());
            }
        }
    }
}
