//! The meter: the library's entry point. It validates requests, hands them to the
//! sequencer thread that decides and writes them, and answers reads from the store.
//!
//! ```no_run
//! use creditgate::{Meter, MeterConfig, PolicySource, model::{AuthorizeRequest, GrantRequest}};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = std::fs::read("target/wasm32-wasip2/release/smarte.wasm")?;
//! let meter = Meter::open(MeterConfig::new("creditgate.db"), PolicySource::Component(policy))?;
//! meter.grant(GrantRequest {
//!     grant_id: "welcome-acme".into(),
//!     tenant: "acme".into(),
//!     balance: "default".into(),
//!     amount: 10,
//! })?;
//! let answer = meter.authorize(AuthorizeRequest {
//!     tenant: "acme".into(),
//!     operation: "person.enrich".into(),
//!     ..Default::default()
//! })?;
//! assert!(answer.admitted);
//! # Ok(()) }
//! ```

mod sequencer;
mod shadow;
pub mod validate;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::clock::{Clock, SystemClock};
use crate::error::MeterError;
use crate::model::{ActivePolicy, BatchStats, PolicyActivation, ShadowReport};
use crate::model::{
    Authorization, AuthorizeRequest, GrantRequest, JournalEntry, PolicyRef, Receipt, SettleRequest,
    TenantBalances, TransactionView,
};
use crate::policy::component::{self, Limits};
use crate::policy::native::NativeRuntime;
use crate::policy::{MarkLookup, PolicyInfo, PolicyRuntime};
use crate::store::{LedgerReader, LedgerWriter, StoreLocation, postgres, sqlite};
use sequencer::{Answer, BatchCounters, Command, Job, RuntimeFactory, Sequencer};

/// Which policy decides.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// A WebAssembly component of the `creditgate:policy` world.
    Component(Vec<u8>),
    /// A reference policy linked natively (no sandbox): for measuring the sandbox.
    Native(NativePolicy),
}

/// The reference policies, linked natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativePolicy {
    Smarte,
    DonorAtlas,
}

/// How a meter runs. `new` gives production defaults.
#[derive(Clone)]
pub struct MeterConfig {
    /// Where the ledger lives: a SQLite file (created if missing), or a PostgreSQL
    /// database shared with other gateway processes.
    pub store: StoreLocation,
    /// Where precompiled policy components are cached; none compiles every time.
    pub compile_cache_dir: Option<PathBuf>,
    pub limits: Limits,
    /// Decisions per store transaction (and per fsync), at most.
    pub batch_size_max: usize,
    /// How long the sequencer waits for more jobs to join a batch.
    pub batch_wait_us_max: u64,
    /// Jobs that may wait for the sequencer before callers get `overloaded`.
    pub queue_depth_max: usize,
    /// How often lapsed holds of all tenants are swept; 0 never (a tenant's own lapsed
    /// holds are always released before its next authorize).
    pub sweep_interval_ms: u64,
    /// Lapsed holds released per sweep, at most.
    pub expiry_batch_max: usize,
    pub clock: Arc<dyn Clock>,
}

impl MeterConfig {
    /// The default `batch_size_max`.
    pub const BATCH_SIZE_MAX: u32 = 1024;

    pub fn new(store: impl Into<StoreLocation>) -> Self {
        Self {
            store: store.into(),
            compile_cache_dir: None,
            limits: Limits::default(),
            batch_size_max: Self::BATCH_SIZE_MAX as usize,
            batch_wait_us_max: 0,
            queue_depth_max: 65_536,
            sweep_interval_ms: 1_000,
            expiry_batch_max: 1_000,
            clock: Arc::new(SystemClock),
        }
    }
}

/// A running meter: one ledger, one active policy.
pub struct Meter {
    jobs: Option<SyncSender<Job>>,
    sequencer: Option<JoinHandle<()>>,
    reader: Arc<dyn LedgerReader>,
    /// The active policy; replaced whole on activation.
    policy: RwLock<Arc<PolicyInfo>>,
    engine: wasmtime::Engine,
    limits: Limits,
    compile_cache_dir: Option<PathBuf>,
    /// One activation at a time: its checks run outside the sequencer, its switch inside.
    activation: Mutex<()>,
    counters: Arc<BatchCounters>,
}

impl Meter {
    /// Opens the ledger, loads and checks the policy, and starts the sequencer.
    pub fn open(config: MeterConfig, source: PolicySource) -> Result<Self, MeterError> {
        let engine = component::engine()?;
        let sequencer_engine = engine.clone();
        let limits = config.limits;
        let (make_runtime, component_bytes): (RuntimeFactory, Option<Vec<u8>>) = match source {
            PolicySource::Component(bytes) => {
                let compiled = component::CompiledPolicy::load(
                    &engine,
                    &bytes,
                    config.limits,
                    config.compile_cache_dir.as_deref(),
                )?;
                (
                    Box::new(move |marks: Rc<dyn MarkLookup>| {
                        Ok(Box::new(compiled.runtime(marks)) as Box<dyn PolicyRuntime>)
                    }),
                    Some(bytes),
                )
            }
            PolicySource::Native(native) => (
                Box::new(move |marks: Rc<dyn MarkLookup>| native_runtime(native, marks)),
                None,
            ),
        };
        let (jobs, queue) = std::sync::mpsc::sync_channel(config.queue_depth_max);
        let counters = Arc::new(BatchCounters::default());
        let start = SequencerStart {
            config: config.clone(),
            engine: sequencer_engine,
            make_runtime,
            component: component_bytes,
            counters: Arc::clone(&counters),
        };
        let (sequencer, start_result, reader): (_, _, Arc<dyn LedgerReader>) = match &config.store {
            StoreLocation::Sqlite(path) => {
                let (writer, reader) = sqlite::open(path)?;
                let (thread, started) = start.spawn(writer, queue)?;
                (thread, started, Arc::new(reader))
            }
            StoreLocation::Postgres(url) => {
                let (writer, reader) = postgres::open(url)?;
                let (thread, started) = start.spawn(writer, queue)?;
                (thread, started, Arc::new(reader))
            }
        };
        let policy = start_result.recv().map_err(|_| MeterError::ShutDown)??;
        Ok(Self {
            jobs: Some(jobs),
            sequencer: Some(sequencer),
            reader,
            policy: RwLock::new(Arc::new(policy)),
            engine,
            limits,
            compile_cache_dir: config.compile_cache_dir.clone(),
            activation: Mutex::new(()),
            counters,
        })
    }

    /// How decisions have been grouped into commits since the meter opened.
    pub fn batch_stats(&self) -> BatchStats {
        self.counters.snapshot()
    }

    /// The active policy.
    pub fn policy(&self) -> Arc<PolicyInfo> {
        match self.policy.read() {
            Ok(policy) => Arc::clone(&policy),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn policy_ref(&self) -> PolicyRef {
        sequencer::policy_ref(&self.policy())
    }

    /// The active policy as the API shows it.
    pub fn active_policy(&self) -> ActivePolicy {
        let info = self.policy();
        ActivePolicy {
            name: info.name.clone(),
            version: info.version.clone(),
            digest: info.digest.to_string(),
            balances: info.balances.clone(),
            hold_ttl_ms: info.hold_ttl_ms,
        }
    }

    /// Makes `component` the active policy while traffic flows: compiled and put
    /// through the contract checks here, off the request path, then switched
    /// atomically between two decisions. On any failure the active policy stays and
    /// the error says why. `via` is recorded in the history.
    pub fn activate(&self, component: Vec<u8>, via: &str) -> Result<PolicyInfo, MeterError> {
        let _one_at_a_time = self.activation.lock().map_err(|_| MeterError::ShutDown)?;
        let compiled = self.compile_checked(&component)?;
        let info = match self.call(Command::Activate {
            compiled,
            component,
            via: via.to_owned(),
        })? {
            Answer::Activated(info) => info,
            _ => return Err(unexpected()),
        };
        if let Ok(mut policy) = self.policy.write() {
            *policy = Arc::new(info.clone());
        }
        Ok(info)
    }

    /// Compiles and checks `component` like [`Meter::activate`], then evaluates it beside
    /// the active policy on every authorize and settle, moving no credit. Replaces any
    /// earlier shadow (and its report).
    pub fn set_shadow(&self, component: Vec<u8>) -> Result<ShadowReport, MeterError> {
        let compiled = self.compile_checked(&component)?;
        match self.call(Command::SetShadow {
            compiled,
            component,
        })? {
            Answer::Shadow(Some(report)) => Ok(report),
            _ => Err(unexpected()),
        }
    }

    /// What the shadow would have done differently so far.
    pub fn shadow_report(&self) -> Result<ShadowReport, MeterError> {
        match self.call(Command::ShadowReport)? {
            Answer::Shadow(report) => report.ok_or(MeterError::NoShadow),
            _ => Err(unexpected()),
        }
    }

    /// Stops the shadow evaluation.
    pub fn clear_shadow(&self) -> Result<(), MeterError> {
        match self.call(Command::TakeShadow)? {
            Answer::ShadowTaken(Some(_)) => Ok(()),
            Answer::ShadowTaken(None) => Err(MeterError::NoShadow),
            _ => Err(unexpected()),
        }
    }

    /// Makes the shadow the active policy (and stops shadowing).
    pub fn promote_shadow(&self) -> Result<PolicyInfo, MeterError> {
        match self.call(Command::TakeShadow)? {
            Answer::ShadowTaken(Some(component)) => self.activate(component, "shadow-promotion"),
            Answer::ShadowTaken(None) => Err(MeterError::NoShadow),
            _ => Err(unexpected()),
        }
    }

    /// Compiles (or loads precompiled) and runs the contract checks.
    fn compile_checked(
        &self,
        component: &[u8],
    ) -> Result<Arc<component::CompiledPolicy>, MeterError> {
        let compiled = component::CompiledPolicy::load(
            &self.engine,
            component,
            self.limits,
            self.compile_cache_dir.as_deref(),
        )?;
        let report = crate::conformance::check_compiled(&compiled);
        if report.ok() {
            Ok(compiled)
        } else {
            Err(MeterError::InvalidPolicy(format!(
                "it fails the contract checks:\n{}",
                report.render()
            )))
        }
    }

    /// Re-activates the policy that was active before the current one.
    pub fn rollback(&self) -> Result<PolicyInfo, MeterError> {
        let current = self.policy().digest.to_string();
        let previous = self
            .reader
            .activations(1_000)?
            .into_iter()
            .find(|activation| activation.digest != current)
            .ok_or(MeterError::NoPreviousPolicy)?;
        let component = self
            .reader
            .stored_policy(&previous.digest)?
            .and_then(|stored| stored.component)
            .ok_or(MeterError::NoPreviousPolicy)?;
        self.activate(component, "rollback")
    }

    /// The digests of the policy versions loaded now: the active one, and those that
    /// authorized a transaction still open.
    pub fn loaded_policies(&self) -> Result<Vec<String>, MeterError> {
        match self.call(Command::LoadedPolicies)? {
            Answer::Loaded(loaded) => Ok(loaded),
            _ => Err(unexpected()),
        }
    }

    /// The activation history, newest first.
    pub fn policy_history(&self, limit: usize) -> Result<Vec<PolicyActivation>, MeterError> {
        self.reader.activations(limit)
    }

    fn submit(
        &self,
        command: Command,
    ) -> Result<oneshot::Receiver<Result<Answer, MeterError>>, MeterError> {
        let (reply, answer) = oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(MeterError::ShutDown)?;
        jobs.try_send(Job { command, reply })
            .map_err(|error| match error {
                TrySendError::Full(_) => MeterError::Overloaded,
                TrySendError::Disconnected(_) => MeterError::ShutDown,
            })?;
        Ok(answer)
    }

    fn call(&self, command: Command) -> Result<Answer, MeterError> {
        self.submit(command)?
            .blocking_recv()
            .map_err(|_| MeterError::ShutDown)?
    }

    async fn call_async(&self, command: Command) -> Result<Answer, MeterError> {
        self.submit(command)?
            .await
            .map_err(|_| MeterError::ShutDown)?
    }

    /// Decides a request and applies the verdict. Blocking: from async code use
    /// [`Meter::authorize_async`].
    pub fn authorize(&self, request: AuthorizeRequest) -> Result<Authorization, MeterError> {
        authorization(self.call(Command::Authorize(request))?)
    }

    pub async fn authorize_async(
        &self,
        request: AuthorizeRequest,
    ) -> Result<Authorization, MeterError> {
        authorization(self.call_async(Command::Authorize(request)).await?)
    }

    /// Prices an outcome on the policy version that authorized it.
    pub fn settle(&self, request: SettleRequest) -> Result<Receipt, MeterError> {
        receipt(self.call(Command::Settle(request))?)
    }

    pub async fn settle_async(&self, request: SettleRequest) -> Result<Receipt, MeterError> {
        receipt(self.call_async(Command::Settle(request)).await?)
    }

    /// Tops up a balance; a repeated grant id moves nothing.
    pub fn grant(&self, grant: GrantRequest) -> Result<TenantBalances, MeterError> {
        balances(self.call(Command::Grant(grant))?)
    }

    pub async fn grant_async(&self, grant: GrantRequest) -> Result<TenantBalances, MeterError> {
        balances(self.call_async(Command::Grant(grant)).await?)
    }

    /// Releases every hold whose TTL has passed, and unloads the policy versions no open
    /// transaction needs; returns how many holds were released.
    pub fn expire_due(&self) -> Result<usize, MeterError> {
        match self.call(Command::ExpireDue)? {
            Answer::Expired(count) => Ok(count),
            _ => Err(unexpected()),
        }
    }

    /// A tenant's credits; a tenant never granted anything has zeros.
    pub fn balances(&self, tenant: &str) -> Result<TenantBalances, MeterError> {
        validate::identifier("tenant", tenant)?;
        self.reader.balances(tenant, &self.policy().balances)
    }

    /// A transaction with its journal entries, for audit.
    pub fn transaction(&self, id: &str) -> Result<TransactionView, MeterError> {
        validate::identifier("transaction_id", id)?;
        self.reader
            .transaction(id)?
            .ok_or_else(|| MeterError::UnknownTransaction(id.to_owned()))
    }

    /// A tenant's journal, oldest first.
    pub fn journal(&self, tenant: &str, limit: usize) -> Result<Vec<JournalEntry>, MeterError> {
        validate::identifier("tenant", tenant)?;
        self.reader.journal(tenant, limit)
    }

    /// Every tenant's journal entries after entry `after_id`, oldest first. On
    /// PostgreSQL shared by replicas, ids are drawn before commit, so an entry can
    /// become visible after one with a higher id: tail by id only what no replica is
    /// still writing.
    pub fn journal_after(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, MeterError> {
        self.reader.journal_after(after_id, limit)
    }

    /// Accounts whose state differs from the sum of their journal (empty when sound).
    pub fn invariant_violations(&self) -> Result<Vec<String>, MeterError> {
        self.reader.invariant_violations()
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        // Closing the queue lets the sequencer finish its batch and stop.
        drop(self.jobs.take());
        if let Some(sequencer) = self.sequencer.take() {
            let _ = sequencer.join();
        }
    }
}

/// What the sequencer thread needs to start, whichever store it writes.
struct SequencerStart {
    config: MeterConfig,
    engine: wasmtime::Engine,
    make_runtime: RuntimeFactory,
    component: Option<Vec<u8>>,
    counters: Arc<BatchCounters>,
}

type Started = std::sync::mpsc::Receiver<Result<PolicyInfo, MeterError>>;

impl SequencerStart {
    /// Starts the sequencer on a thread of its own; the receiver gets the active
    /// policy once it runs, or why it could not start.
    fn spawn<W: LedgerWriter + Send + 'static>(
        self,
        writer: W,
        queue: std::sync::mpsc::Receiver<Job>,
    ) -> Result<(JoinHandle<()>, Started), MeterError> {
        let (started, start_result) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("creditgate-sequencer".to_owned())
            .spawn(move || {
                let clock = Arc::clone(&self.config.clock);
                match Sequencer::start(
                    writer,
                    clock,
                    self.config,
                    self.engine,
                    self.make_runtime,
                    self.component,
                    self.counters,
                ) {
                    Ok((sequencer, info)) => {
                        let _ = started.send(Ok(info));
                        sequencer.run(queue);
                    }
                    Err(error) => {
                        let _ = started.send(Err(error));
                    }
                }
            })
            .map_err(|error| {
                MeterError::StoreUnavailable(format!("cannot start the sequencer: {error}"))
            })?;
        Ok((thread, start_result))
    }
}

fn native_runtime(
    native: NativePolicy,
    marks: Rc<dyn MarkLookup>,
) -> Result<Box<dyn PolicyRuntime>, MeterError> {
    Ok(match native {
        NativePolicy::Smarte => Box::new(NativeRuntime::<smarte::Smarte>::new("smarte", marks)?),
        NativePolicy::DonorAtlas => Box::new(NativeRuntime::<donoratlas::DonorAtlas>::new(
            "donoratlas",
            marks,
        )?),
    })
}

fn unexpected() -> MeterError {
    MeterError::StoreUnavailable("the sequencer answered with the wrong kind of answer".to_owned())
}

fn authorization(answer: Answer) -> Result<Authorization, MeterError> {
    match answer {
        Answer::Authorization(authorization) => Ok(authorization),
        _ => Err(unexpected()),
    }
}

fn receipt(answer: Answer) -> Result<Receipt, MeterError> {
    match answer {
        Answer::Receipt(receipt) => Ok(receipt),
        _ => Err(unexpected()),
    }
}

fn balances(answer: Answer) -> Result<TenantBalances, MeterError> {
    match answer {
        Answer::Balances(balances) => Ok(balances),
        _ => Err(unexpected()),
    }
}
