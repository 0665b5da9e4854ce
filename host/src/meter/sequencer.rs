//! The sequencer: the one thread that decides and writes.
//!
//! Every decision (authorize, settle, grant, expiry) is a job on one queue. The
//! sequencer takes the jobs queued so far (up to `batch_size_max`), opens one store
//! transaction, runs the jobs one after another (the policy's view and the write are
//! one step, in one total order, so no two requests can both spend the same credit),
//! commits once (group commit), and hands the answers to the fsync thread, which sends
//! them once the log is on disk while the next batch is being decided.
//! Every check that can refuse a job runs before its first write, so a refused job
//! leaves nothing behind; a failed write fails the batch, which is rolled back whole.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::shadow::Shadow;
use super::{MeterConfig, validate};
use crate::clock::Clock;
use crate::error::MeterError;
use crate::ledger::{
    self, Accounts, Entry, EntryKind, TransactionRecord, TransactionState, post_authorize,
    post_expiry, post_settle,
};
use crate::model::{
    Amounts, Authorization, AuthorizeRequest, BatchStats, ErrorBody, GrantRequest, PolicyRef,
    Receipt, SettleRequest, ShadowReport, TenantBalances,
};
use crate::policy::component::CompiledPolicy;
use crate::policy::{
    AuthorizeDecision, MarkLookup, PolicyDigest, PolicyInfo, PolicyRuntime, SettleDecision, sdk,
};
use crate::store::{BatchClaims, LedgerWriter, LogSync, Posting, available, available_amounts};

pub(super) enum Command {
    Authorize(AuthorizeRequest),
    Settle(SettleRequest),
    Grant(GrantRequest),
    ExpireDue,
    /// Evaluate a candidate beside the active policy from now on, moving no credit.
    SetShadow {
        compiled: Arc<CompiledPolicy>,
        component: Vec<u8>,
    },
    /// The shadow's report so far, if there is a shadow.
    ShadowReport,
    /// Stop shadowing; answers the candidate's bytes (to promote them).
    TakeShadow,
    /// The digests of the policies loaded now.
    LoadedPolicies,
    /// Make a compiled, checked policy the active one, between two batches' decisions.
    Activate {
        compiled: Arc<CompiledPolicy>,
        component: Vec<u8>,
        via: String,
    },
}

pub(super) enum Answer {
    Authorization(Authorization),
    Receipt(Receipt),
    Balances(TenantBalances),
    Expired(usize),
    Activated(PolicyInfo),
    Shadow(Option<ShadowReport>),
    ShadowTaken(Option<Vec<u8>>),
    Loaded(Vec<String>),
}

pub(super) struct Job {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Answer, MeterError>>,
}

/// Builds a policy runtime on the sequencer thread (runtimes are not `Send`).
pub(super) type RuntimeFactory =
    Box<dyn FnOnce(Rc<dyn MarkLookup>) -> Result<Box<dyn PolicyRuntime>, MeterError> + Send>;

/// Batches committed so far, shared with the meter for [`crate::Meter::batch_stats`].
#[derive(Default)]
pub(super) struct BatchCounters {
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

/// Answers of a committed batch, waiting for its log to reach the disk.
type Answered = Vec<(
    oneshot::Sender<Result<Answer, MeterError>>,
    Result<Answer, MeterError>,
)>;

pub(super) struct Sequencer<W: LedgerWriter> {
    writer: Rc<W>,
    /// The starting policy's bytes (none: linked natively), until its activation is
    /// in the ledger: at start, or in the first batch the store accepts.
    unregistered: Option<Option<Vec<u8>>>,
    /// Syncs the log of committed batches, then answers them; taken by `run`.
    log: Option<Box<dyn LogSync>>,
    durable: Option<mpsc::Sender<Answered>>,
    /// Set when a sync failed: nothing is acknowledged any more.
    log_failed: Arc<AtomicBool>,
    counters: Arc<BatchCounters>,
    clock: Arc<dyn Clock>,
    config: MeterConfig,
    engine: wasmtime::Engine,
    active: PolicyDigest,
    /// Every policy loaded so far, by digest: settles run on the authorizing one.
    runtimes: HashMap<PolicyDigest, Box<dyn PolicyRuntime>>,
    shadow: Option<Shadow>,
}

impl<W: LedgerWriter + 'static> Sequencer<W> {
    pub fn start(
        writer: W,
        clock: Arc<dyn Clock>,
        config: MeterConfig,
        engine: wasmtime::Engine,
        make_runtime: RuntimeFactory,
        component: Option<Vec<u8>>,
        counters: Arc<BatchCounters>,
    ) -> Result<(Self, PolicyInfo), MeterError> {
        let writer = Rc::new(writer);
        let marks: Rc<dyn MarkLookup> = writer.clone();
        let runtime = make_runtime(marks)?;
        let info = runtime.info().clone();
        let log = writer.log_sync()?;
        let mut sequencer = Self {
            writer,
            unregistered: Some(component),
            log: Some(log),
            durable: None,
            log_failed: Arc::new(AtomicBool::new(false)),
            counters,
            clock,
            config,
            engine,
            active: info.digest.clone(),
            runtimes: HashMap::from([(info.digest.clone(), runtime)]),
            shadow: None,
        };
        match sequencer.register_alone() {
            Ok(()) => {}
            Err(error @ MeterError::StoreUnavailable(_)) => tracing::error!(
                %error,
                "the ledger is unavailable; every decision fails closed until it is back"
            ),
            Err(error) => return Err(error),
        }
        Ok((sequencer, info))
    }

    /// Saves the starting policy and its activation in a store transaction of its own,
    /// durably: before any batch, when the store is up at start.
    fn register_alone(&mut self) -> Result<(), MeterError> {
        self.writer.begin()?;
        if let Err(error) = self.register_start() {
            self.writer.rollback();
            return Err(error);
        }
        self.writer.commit()?;
        self.unregistered = None;
        self.writer.log_sync()?.sync()
    }

    /// Saves the starting policy and its activation into the open store transaction,
    /// if not done yet (the store was down at start).
    fn register_start(&self) -> Result<(), MeterError> {
        let Some(component) = &self.unregistered else {
            return Ok(());
        };
        let now_ms = self.clock.now_ms();
        let info = self.active_info()?;
        self.writer
            .save_policy(&info, component.as_deref(), now_ms)?;
        self.writer
            .record_activation(&info.digest, "start", now_ms)?;
        Ok(())
    }

    fn active_info(&self) -> Result<PolicyInfo, MeterError> {
        self.runtimes
            .get(&self.active)
            .map(|runtime| runtime.info().clone())
            .ok_or_else(|| {
                MeterError::StoreUnavailable("the active policy is not loaded".to_owned())
            })
    }

    /// Runs until every sender is gone, sweeping lapsed holds between batches.
    pub fn run(mut self, jobs: Receiver<Job>) {
        let syncer = self.log.take().map(|log| {
            let (durable, committed) = mpsc::channel();
            self.durable = Some(durable);
            let failed = Arc::clone(&self.log_failed);
            std::thread::Builder::new()
                .name("creditgate-fsync".to_owned())
                .spawn(move || sync_and_answer(log, committed, &failed))
        });
        self.decide(jobs);
        // Every committed batch is answered before the meter's thread ends.
        self.durable = None;
        if let Some(Ok(syncer)) = syncer {
            let _ = syncer.join();
        }
    }

    fn decide(&mut self, jobs: Receiver<Job>) {
        let sweep_every = (self.config.sweep_interval_ms > 0)
            .then(|| Duration::from_millis(self.config.sweep_interval_ms));
        let mut next_sweep = sweep_every.map(|every| Instant::now() + every);
        loop {
            let first = match next_sweep {
                Some(at) => match jobs.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(job) => Some(job),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match jobs.recv() {
                    Ok(job) => Some(job),
                    Err(_) => return,
                },
            };
            if let (Some(at), Some(every)) = (next_sweep, sweep_every)
                && Instant::now() >= at
            {
                self.sweep();
                next_sweep = Some(Instant::now() + every);
            }
            let Some(first) = first else { continue };
            let mut batch = vec![first];
            let deadline = Instant::now() + Duration::from_micros(self.config.batch_wait_us_max);
            while batch.len() < self.config.batch_size_max {
                let waited = match jobs.try_recv() {
                    Err(TryRecvError::Empty) => {
                        match deadline.checked_duration_since(Instant::now()) {
                            Some(left) if !left.is_zero() => jobs.recv_timeout(left).ok(),
                            _ => None,
                        }
                    }
                    received => received.ok(),
                };
                match waited {
                    Some(job) => batch.push(job),
                    None => break,
                }
            }
            self.run_batch(batch);
        }
    }

    fn sweep(&mut self) {
        let (reply, _ignored) = oneshot::channel();
        self.run_batch(vec![Job {
            command: Command::ExpireDue,
            reply,
        }]);
    }

    /// One store transaction for the whole batch; answers only after the commit. A
    /// job refused by the rules or the contract has written nothing, and the batch goes
    /// on; a failed store write rolls the whole batch back and every job in it fails.
    fn run_batch(&mut self, batch: Vec<Job>) {
        let size = batch.len() as u64;
        if self.log_failed.load(Ordering::Acquire) {
            let error = MeterError::StoreUnavailable(
                "the ledger's log could not be synced to disk; nothing is acknowledged until creditgate restarts".to_owned(),
            );
            for job in batch {
                let _ = job.reply.send(Err(error.clone()));
            }
            return;
        }
        let prepared = self.writer.begin().and_then(|()| {
            let mut claims = claims(&batch);
            // The starting policy is recorded first in this batch, if not yet.
            claims.activation |= self.unregistered.is_some();
            self.writer.claim(&claims, self.clock.now_ms())?;
            self.register_start()
        });
        if let Err(error) = prepared {
            tracing::error!(%error, "the ledger is unavailable; the batch fails closed");
            self.writer.rollback();
            for job in batch {
                let _ = job.reply.send(Err(error.clone()));
            }
            return;
        }
        // An activation switches `active` in memory; undone if its write does not commit.
        let active_before = self.active.clone();
        let mut answered = Vec::with_capacity(batch.len());
        let mut store_failure = None;
        for job in batch {
            let result = match &store_failure {
                Some(error) => Err(MeterError::clone(error)),
                None => self.execute_logged(&job.command),
            };
            if let Err(error @ MeterError::StoreUnavailable(_)) = &result {
                store_failure.get_or_insert_with(|| error.clone());
            }
            answered.push((job.reply, result));
        }
        let committed = match store_failure {
            Some(error) => Err(error),
            None => self.writer.commit(),
        };
        match committed {
            Ok(()) => {
                self.unregistered = None;
                self.counters.count(size);
                let unsent = match &self.durable {
                    Some(durable) => durable.send(answered).err().map(|unsent| unsent.0),
                    None => Some(answered),
                };
                // No syncer (it stopped): answer only what a sync of our own made durable.
                if let Some(answered) = unsent {
                    let synced = self.writer.log_sync().and_then(|mut log| log.sync());
                    answer(answered, &synced);
                }
            }
            Err(error) => {
                tracing::error!(%error, "ledger write failed; the batch is rolled back and not acknowledged");
                self.writer.rollback();
                self.active = active_before;
                answer(answered, &Err(error));
            }
        }
    }

    fn execute_logged(&mut self, command: &Command) -> Result<Answer, MeterError> {
        let result = self.execute(command);
        if let Err(error) = &result
            && error.status() >= 500
        {
            tracing::warn!(code = error.code(), %error, "a decision failed closed");
        }
        result
    }

    fn execute(&mut self, command: &Command) -> Result<Answer, MeterError> {
        match command {
            Command::Authorize(request) => self.authorize(request).map(Answer::Authorization),
            Command::Settle(request) => self.settle(request).map(Answer::Receipt),
            Command::Grant(grant) => self.grant(grant).map(Answer::Balances),
            Command::ExpireDue => {
                let expired = self.expire_due(None)?;
                self.unload_unused()?;
                Ok(Answer::Expired(expired))
            }
            Command::LoadedPolicies => {
                let mut loaded: Vec<String> =
                    self.runtimes.keys().map(ToString::to_string).collect();
                loaded.sort();
                Ok(Answer::Loaded(loaded))
            }
            Command::Activate {
                compiled,
                component,
                via,
            } => self
                .activate(compiled, component, via)
                .map(Answer::Activated),
            Command::SetShadow {
                compiled,
                component,
            } => {
                let marks: Rc<dyn MarkLookup> = self.writer.clone();
                let shadow = Shadow::new(
                    Box::new(compiled.runtime(marks)),
                    component.clone(),
                    self.clock.now_ms(),
                );
                let report = shadow.report.clone();
                self.shadow = Some(shadow);
                Ok(Answer::Shadow(Some(report)))
            }
            Command::ShadowReport => Ok(Answer::Shadow(
                self.shadow.as_ref().map(|shadow| shadow.report.clone()),
            )),
            Command::TakeShadow => Ok(Answer::ShadowTaken(
                self.shadow.take().map(|shadow| shadow.component),
            )),
        }
    }

    fn runtime(
        &mut self,
        digest: &PolicyDigest,
    ) -> Result<&mut Box<dyn PolicyRuntime>, MeterError> {
        if !self.runtimes.contains_key(digest) {
            let stored = self.writer.policy(digest)?.ok_or_else(|| {
                MeterError::StoreUnavailable(format!("policy {digest} is not in the ledger"))
            })?;
            let bytes = stored.component.ok_or_else(|| {
                MeterError::StoreUnavailable(format!(
                    "policy {digest} was linked natively and is not loaded in this process"
                ))
            })?;
            let compiled = CompiledPolicy::load(
                &self.engine,
                &bytes,
                self.config.limits,
                self.config.compile_cache_dir.as_deref(),
            )?;
            let marks: Rc<dyn MarkLookup> = self.writer.clone();
            self.runtimes
                .insert(digest.clone(), Box::new(compiled.runtime(marks)));
        }
        self.runtimes
            .get_mut(digest)
            .ok_or_else(|| MeterError::StoreUnavailable(format!("policy {digest} failed to load")))
    }

    /// Switches the active policy. Requests decided before this job ran used the old
    /// one; those after use the new one; settles keep using whichever authorized.
    fn activate(
        &mut self,
        compiled: &Arc<CompiledPolicy>,
        component: &[u8],
        via: &str,
    ) -> Result<PolicyInfo, MeterError> {
        let info = compiled.info().clone();
        let now_ms = self.clock.now_ms();
        self.writer.save_policy(&info, Some(component), now_ms)?;
        self.writer.record_activation(&info.digest, via, now_ms)?;
        if !self.runtimes.contains_key(&info.digest) {
            let marks: Rc<dyn MarkLookup> = self.writer.clone();
            self.runtimes
                .insert(info.digest.clone(), Box::new(compiled.runtime(marks)));
        }
        self.active = info.digest.clone();
        tracing::info!(policy = %info.name, version = %info.version, digest = %info.digest, via, "policy activated");
        Ok(info)
    }

    fn authorize(&mut self, request: &AuthorizeRequest) -> Result<Authorization, MeterError> {
        let writer = Rc::clone(&self.writer);
        validate::authorize(request)?;
        let fingerprint = validate::fingerprint(request);
        let id = match &request.transaction_id {
            Some(id) => {
                if let Some(existing) = writer.transaction(id)? {
                    return if existing.fingerprint == fingerprint {
                        Ok(existing.authorization)
                    } else {
                        Err(MeterError::TransactionConflict(id.clone()))
                    };
                }
                id.clone()
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        let now_ms = self.clock.now_ms();
        // Lapsed holds go back to the balance before the policy looks at it.
        self.expire_due(Some(&request.tenant))?;
        let active = self.active.clone();
        let runtime = self.runtime(&active)?;
        let info = runtime.info().clone();
        let accounts = writer.accounts(&request.tenant, &info.balances)?;
        let policy_request = to_policy_request(&id, request);
        let balances = available(&accounts, &info.balances);
        let decision = runtime.authorize(&policy_request, &balances)?;
        if let Some(shadow) = &mut self.shadow {
            // The candidate sees exactly what the active policy saw; its verdict is only counted.
            let candidate = shadow.runtime.authorize(&policy_request, &balances);
            shadow.observe_authorize(
                &id,
                &request.tenant,
                &request.operation,
                &decision,
                candidate,
            );
        }

        // The outcome: (state, what stays held, the answer).
        let (state, held, authorization) = match decision {
            AuthorizeDecision::Reject {
                status,
                code,
                message,
            } => (
                TransactionState::Rejected,
                Amounts::new(),
                rejection(&id, &info, &accounts, status, &code, &message),
            ),
            AuthorizeDecision::Admit {
                status,
                admitted_items,
                hold,
                charge,
                marks,
                headers,
                meta,
            } => match post_authorize(&accounts, &hold, &charge) {
                Err(shortfall) => {
                    // The host's guarantee, whatever the policy said: never below zero.
                    let message = format!(
                        "Insufficient credits: {} needed on '{}', {} available.",
                        shortfall.needed, shortfall.balance, shortfall.available
                    );
                    (
                        TransactionState::Rejected,
                        Amounts::new(),
                        rejection(&id, &info, &accounts, 402, "insufficient_credits", &message),
                    )
                }
                Ok(posting) => {
                    writer.post(Posting {
                        transaction_id: &id,
                        tenant: &request.tenant,
                        policy_digest: &info.digest,
                        entries: &posting.entries,
                        accounts: &posting.accounts,
                        at_ms: now_ms,
                    })?;
                    writer.insert_marks(&request.tenant, &id, &marks)?;
                    let authorization = Authorization {
                        transaction_id: id.clone(),
                        admitted: true,
                        status,
                        error: None,
                        admitted_items,
                        held: hold.clone(),
                        charged: charge,
                        headers,
                        meta,
                        balances: available_amounts(&posting.accounts, &info.balances),
                        policy: policy_ref(&info),
                    };
                    (TransactionState::Open, hold, authorization)
                }
            },
        };
        let record = TransactionRecord {
            id: id.clone(),
            tenant: request.tenant.clone(),
            state,
            fingerprint,
            policy_digest: info.digest.to_string(),
            request: AuthorizeRequest {
                transaction_id: Some(id.clone()),
                ..request.clone()
            },
            authorization,
            expires_at_ms: (!held.is_empty()).then(|| now_ms.saturating_add(info.hold_ttl_ms)),
            held,
            created_at_ms: now_ms,
            receipt: None,
        };
        writer.insert_transaction(&record)?;
        Ok(record.authorization)
    }

    fn settle(&mut self, request: &SettleRequest) -> Result<Receipt, MeterError> {
        let writer = Rc::clone(&self.writer);
        validate::settle(request)?;
        let id = &request.transaction_id;
        let record = writer
            .transaction(id)?
            .ok_or_else(|| MeterError::UnknownTransaction(id.clone()))?;
        match record.state {
            TransactionState::Settled => {
                return record.receipt.ok_or_else(|| {
                    MeterError::StoreUnavailable(format!(
                        "settled transaction '{id}' has no receipt"
                    ))
                });
            }
            TransactionState::Rejected => return Err(MeterError::TransactionRejected(id.clone())),
            TransactionState::Expired => return Err(MeterError::HoldExpired(id.clone())),
            TransactionState::Open => {}
        }
        let now_ms = self.clock.now_ms();
        if record.expires_at_ms.is_some_and(|expiry| expiry <= now_ms) {
            return Err(MeterError::HoldExpired(id.clone()));
        }
        let digest = PolicyDigest::from_stored(record.policy_digest.clone());
        let runtime = self.runtime(&digest)?;
        let info = runtime.info().clone();
        let accounts = writer.accounts(&record.tenant, &info.balances)?;
        let authorization = &record.authorization;
        let admitted = sdk::Admitted {
            request: to_policy_request(id, &record.request),
            admitted_items: authorization.admitted_items,
            held: to_policy_amounts(&record.held),
            charged: to_policy_amounts(&authorization.charged),
        };
        let outcome = sdk::Outcome {
            status: request.status,
            attributes: to_pairs(&request.attributes),
            body: request.body.clone(),
        };
        let SettleDecision {
            charge,
            marks,
            headers,
            meta,
        } = runtime.settle(&admitted, &outcome, &available(&accounts, &info.balances))?;
        if let Some(shadow) = &mut self.shadow {
            let candidate_balances = available(&accounts, &shadow.runtime.info().balances);
            let candidate = shadow
                .runtime
                .settle(&admitted, &outcome, &candidate_balances);
            let applied = SettleDecision {
                charge: charge.clone(),
                marks: marks.clone(),
                headers: headers.clone(),
                meta: meta.clone(),
            };
            shadow.observe_settle(
                id,
                &record.tenant,
                &record.request.operation,
                &applied,
                candidate,
            );
        }
        let posting = post_settle(&accounts, &record.held, &charge);
        writer.post(Posting {
            transaction_id: id,
            tenant: &record.tenant,
            policy_digest: &digest,
            entries: &posting.entries,
            accounts: &posting.accounts,
            at_ms: now_ms,
        })?;
        writer.insert_marks(&record.tenant, id, &marks)?;
        let receipt = Receipt {
            transaction_id: id.clone(),
            charged: posting.charged,
            released: posting.released,
            uncollected: posting.uncollected,
            headers,
            meta,
            balances: available_amounts(&posting.accounts, &info.balances),
            policy: policy_ref(&info),
        };
        writer.close_transaction(id, TransactionState::Settled, Some(&receipt))?;
        Ok(receipt)
    }

    fn grant(&mut self, grant: &GrantRequest) -> Result<TenantBalances, MeterError> {
        validate::grant(grant)?;
        let active = self.active.clone();
        let info = self.runtime(&active)?.info().clone();
        if !info.has_balance(&grant.balance) {
            return Err(MeterError::UnknownBalance {
                balance: grant.balance.clone(),
                known: info.balances.join(", "),
            });
        }
        if let Some(existing) = self.writer.grant(&grant.grant_id)? {
            if &existing != grant {
                return Err(MeterError::GrantConflict(grant.grant_id.clone()));
            }
            let accounts = self.writer.accounts(&grant.tenant, &info.balances)?;
            return Ok(tenant_balances(&grant.tenant, &accounts, &info.balances));
        }
        let mut accounts = self.writer.accounts(&grant.tenant, &info.balances)?;
        let entries = [Entry {
            balance: grant.balance.clone(),
            kind: EntryKind::Grant,
            amount: grant.amount,
        }];
        ledger::apply(&mut accounts, &entries).map_err(|_| {
            MeterError::InvalidAmount(format!(
                "a grant of {} would take '{}' past the largest balance ({})",
                grant.amount,
                grant.balance,
                i64::MAX
            ))
        })?;
        let now_ms = self.clock.now_ms();
        self.writer.post(Posting {
            transaction_id: &grant.grant_id,
            tenant: &grant.tenant,
            policy_digest: &info.digest,
            entries: &entries,
            accounts: &accounts,
            at_ms: now_ms,
        })?;
        self.writer.insert_grant(grant, now_ms)?;
        Ok(tenant_balances(&grant.tenant, &accounts, &info.balances))
    }

    /// Drops the runtimes no open transaction needs, keeping the active one: a version
    /// stays loaded while a hold it authorized may still be settled.
    fn unload_unused(&mut self) -> Result<(), MeterError> {
        if self.runtimes.len() <= 1 {
            return Ok(());
        }
        let needed: std::collections::HashSet<String> =
            self.writer.open_policy_digests()?.into_iter().collect();
        let active = self.active.clone();
        self.runtimes
            .retain(|digest, _| *digest == active || needed.contains(digest.as_str()));
        Ok(())
    }

    /// Releases lapsed holds (of one tenant, or of everyone); returns how many.
    fn expire_due(&mut self, tenant: Option<&str>) -> Result<usize, MeterError> {
        let now_ms = self.clock.now_ms();
        let due = self
            .writer
            .due_expiries(tenant, now_ms, self.config.expiry_batch_max)?;
        for record in &due {
            let balances: Vec<String> = record.held.keys().cloned().collect();
            let mut accounts: Accounts = self.writer.accounts(&record.tenant, &balances)?;
            let entries = post_expiry(&record.held);
            ledger::apply(&mut accounts, &entries).map_err(MeterError::StoreUnavailable)?;
            self.writer.post(Posting {
                transaction_id: &record.id,
                tenant: &record.tenant,
                policy_digest: &PolicyDigest::from_stored(record.policy_digest.clone()),
                entries: &entries,
                accounts: &accounts,
                at_ms: now_ms,
            })?;
            self.writer
                .close_transaction(&record.id, TransactionState::Expired, None)?;
        }
        if !due.is_empty() {
            tracing::info!(count = due.len(), "released lapsed holds");
        }
        Ok(due.len())
    }
}

/// What the batch's decisions will touch, for a store shared with other processes.
fn claims(batch: &[Job]) -> BatchClaims {
    let mut claims = BatchClaims::default();
    for job in batch {
        match &job.command {
            Command::Authorize(request) => {
                claims.tenants.insert(request.tenant.clone());
                if let Some(id) = &request.transaction_id {
                    claims.transaction_ids.insert(id.clone());
                }
            }
            Command::Settle(request) => {
                claims.settled_ids.insert(request.transaction_id.clone());
            }
            Command::Grant(grant) => {
                claims.tenants.insert(grant.tenant.clone());
                claims.grant_ids.insert(grant.grant_id.clone());
            }
            Command::Activate { .. } => claims.activation = true,
            Command::ExpireDue
            | Command::SetShadow { .. }
            | Command::ShadowReport
            | Command::TakeShadow
            | Command::LoadedPolicies => {}
        }
    }
    claims
}

/// Sends each answer, or the error in place of every answer.
fn answer(answered: Answered, outcome: &Result<(), MeterError>) {
    for (reply, result) in answered {
        let _ = reply.send(match outcome {
            Ok(()) => result,
            Err(error) => Err(error.clone()),
        });
    }
}

/// The syncer's loop: takes every batch committed so far, syncs the log once for all
/// of them, then answers them. A failed sync fails them and every batch after.
fn sync_and_answer(
    mut log: Box<dyn LogSync>,
    committed: mpsc::Receiver<Answered>,
    failed: &AtomicBool,
) {
    while let Ok(first) = committed.recv() {
        let mut batches = vec![first];
        batches.extend(committed.try_iter());
        let synced = if failed.load(Ordering::Acquire) {
            Err(MeterError::StoreUnavailable(
                "the ledger's log could not be synced to disk".to_owned(),
            ))
        } else {
            log.sync()
        };
        if let Err(error) = &synced {
            tracing::error!(%error, "syncing the ledger's log failed; committed batches are not acknowledged");
            failed.store(true, Ordering::Release);
        }
        for answered in batches {
            answer(answered, &synced);
        }
    }
}

pub(super) fn policy_ref(info: &PolicyInfo) -> PolicyRef {
    PolicyRef {
        name: info.name.clone(),
        version: info.version.clone(),
        digest: info.digest.to_string(),
    }
}

fn rejection(
    id: &str,
    info: &PolicyInfo,
    accounts: &Accounts,
    status: u16,
    code: &str,
    message: &str,
) -> Authorization {
    Authorization {
        transaction_id: id.to_owned(),
        admitted: false,
        status: Some(status),
        error: Some(ErrorBody {
            code: code.to_owned(),
            message: message.to_owned(),
        }),
        admitted_items: 0,
        held: Amounts::new(),
        charged: Amounts::new(),
        headers: Default::default(),
        meta: serde_json::Value::Object(serde_json::Map::new()),
        balances: available_amounts(accounts, &info.balances),
        policy: policy_ref(info),
    }
}

fn tenant_balances(tenant: &str, accounts: &Accounts, balances: &[String]) -> TenantBalances {
    TenantBalances {
        tenant: tenant.to_owned(),
        balances: available_amounts(accounts, balances),
        held: balances
            .iter()
            .map(|balance| {
                (
                    balance.clone(),
                    accounts.get(balance).map_or(0, |account| account.held),
                )
            })
            .collect(),
    }
}

fn to_policy_request(id: &str, request: &AuthorizeRequest) -> sdk::Request {
    sdk::Request {
        transaction_id: id.to_owned(),
        tenant: request.tenant.clone(),
        operation: request.operation.clone(),
        items: request.items.clone(),
        attributes: to_pairs(&request.attributes),
        body: request.body.clone(),
    }
}

fn to_pairs(attributes: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

fn to_policy_amounts(amounts: &Amounts) -> Vec<sdk::BalanceAmount> {
    amounts
        .iter()
        .map(|(balance, amount)| sdk::BalanceAmount::new(balance.clone(), *amount))
        .collect()
}
