//! The meter: the library's entry point. It checks requests on the caller's thread
//! (limits, fingerprint, a transaction id when none was given), hands them to the
//! sequencer thread that decides and records them, and answers reads.
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
//!     terms: Default::default(),
//! })?;
//! let answer = meter.authorize(AuthorizeRequest {
//!     tenant: "acme".into(),
//!     operation: "person.enrich".into(),
//!     ..Default::default()
//! })?;
//! assert!(answer.admitted);
//! # Ok(()) }
//! ```
//!
//! Parts: [`command`] (typed commands and replies), [`decide`] (the decisions as
//! functions over the live state), [`registry`] (active, loaded and shadow policies),
//! [`breaker`] (a tenant whose policy calls keep failing is refused for a while),
//! [`sequencer`] (the batching loop, commit and durability), [`validate`] (the limits).

mod breaker;
mod command;
pub mod decide;
pub mod failure;
pub mod feed;
mod follower;
mod marks;
pub mod metrics;
mod registry;
pub mod replay;
mod sequencer;
mod shadow;
pub mod validate;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use self::failure::{FailureCounts, FailureMode, FailurePolicy, FailureStats};
use crate::clock::{Clock, SystemClock};
use crate::error::MeterError;
use crate::ledger::state::{Coverage, FilterBytes, LiveState};
use crate::model::{
    ActivePolicy, Authorization, AuthorizeRequest, BatchStats, EventPage, GrantRequest,
    JournalEntry, PolicyActivation, PolicyRef, Quote, Receipt, RefillRequest, RefillView,
    SettleRequest, ShadowReport, SpendCapTerms, TenantBalances, ThresholdTerms, TransactionView,
};
use crate::model::{DeadLetter, WebhookRequest, WebhookView};
use crate::policy::component::{self, CompiledPolicy, Limits};
use crate::policy::native::NativeRuntime;
use crate::policy::{MarkLookup, PolicyDigest, PolicyInfo, PolicyRuntime, TrustedKeys, probe};
use crate::store::sqlite::{self, SqliteOptions, lock::LedgerLock};
use crate::store::{ColdStore, LedgerReader, Store, StoreLocation, ViewsLag, postgres};
use crate::webhooks::{self, Webhook, WebhookStore};
use command::{Command, Reply};
use decide::CheckedAuthorize;
use registry::Registry;
use sequencer::{BatchCounters, Health, Sequencer, StopGuard};

/// Which policy decides.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// A WebAssembly component of the `creditgate:policy` world.
    Component(Vec<u8>),
    /// A component and its signature (text, [`crate::policy::signing`]), for a meter
    /// with trusted keys.
    Signed {
        component: Vec<u8>,
        signature: String,
    },
    /// A reference policy linked natively (no sandbox): for measuring the sandbox.
    Native(NativePolicy),
    /// The policy the ledger activated last; `fallback` (a component, which a meter with
    /// trusted keys refuses as unsigned) for a ledger that never ran one, or an error
    /// without it.
    Resume { fallback: Option<Vec<u8>> },
}

/// Any [`sdk::Policy`](crate::policy::sdk::Policy) linked natively, named for the
/// journal (its digest is that of `native:NAME`): the same rules as a component, the
/// same contract checks, no sandbox and no fuel.
#[derive(Clone, Copy)]
pub struct NativePolicy {
    name: &'static str,
    runtime: NativeStart,
}

/// Starts a native policy's runtime: its name, and the marks it may read.
type NativeStart =
    fn(&'static str, Rc<dyn MarkLookup>) -> Result<Box<dyn PolicyRuntime>, MeterError>;

impl NativePolicy {
    pub fn of<P: crate::policy::sdk::Policy + 'static>(name: &'static str) -> Self {
        Self {
            name,
            runtime: |name, marks| Ok(Box::new(NativeRuntime::<P>::new(name, marks)?)),
        }
    }
}

impl std::fmt::Debug for NativePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NativePolicy({})", self.name)
    }
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
    /// What an authorize does when its policy fails: closed (refused) or open.
    pub failure: FailurePolicy,
    /// Decisions per batch (one record, one commit), at most.
    pub batch_size_max: usize,
    /// Bytes of requests (items, attributes, bodies) per batch, at most.
    pub batch_bytes_max: usize,
    /// How long the sequencer waits for more jobs to join a batch, in µs.
    pub batch_wait_us_max: u64,
    /// Jobs that may wait for the sequencer before callers get `overloaded`.
    pub queue_depth_max: usize,
    /// How often lapsed holds of all tenants are swept when no batch runs; 0 never
    /// (every batch releases the lapsed holds it finds first).
    pub sweep_interval_ms: u64,
    /// Lapsed holds released per batch, at most.
    pub expiry_batch_max: usize,
    /// Whether opening records the starting policy's activation (`start`). Operator
    /// commands open a ledger without recording anything about policies.
    pub record_start: bool,
    /// The SQLite store's bounds: memory, views, snapshots.
    pub sqlite: SqliteOptions,
    pub clock: Arc<dyn Clock>,
    /// The keys whose signature a module needs to become active or shadow (none: no
    /// signature needed). A module the ledger holds was checked when first activated.
    pub trusted_keys: TrustedKeys,
    /// On PostgreSQL, follow the shared ledger's activations as one of its replicas,
    /// under this name (its heartbeat row, `GET /v1/policy`): an activation made through
    /// any replica is taken up within a second ([`follower`]). None follows nothing
    /// (operator commands); a SQLite ledger has one process and ignores it.
    pub replica_name: Option<String>,
}

/// How recent a replica's heartbeat must be for `GET /v1/policy` to list it: five of
/// its beats.
pub const REPLICA_SEEN_WITHIN_MS: i64 = 5_000;

impl MeterConfig {
    /// The default `batch_size_max`.
    pub const BATCH_SIZE_MAX: u32 = 1024;
    /// The largest `batch_wait_us_max` a sidecar accepts: 100 ms.
    pub const BATCH_WAIT_US_LIMIT: u64 = 100_000;

    pub fn new(store: impl Into<StoreLocation>) -> Self {
        Self {
            store: store.into(),
            compile_cache_dir: None,
            limits: Limits::default(),
            failure: FailurePolicy::default(),
            batch_size_max: Self::BATCH_SIZE_MAX as usize,
            batch_bytes_max: 16 << 20,
            batch_wait_us_max: 0,
            queue_depth_max: 65_536,
            sweep_interval_ms: 1_000,
            expiry_batch_max: 1_000,
            record_start: true,
            sqlite: SqliteOptions::default(),
            clock: Arc::new(SystemClock),
            trusted_keys: TrustedKeys::default(),
            replica_name: Some(default_replica_name()),
        }
    }
}

/// `PID@HOST`: a replica's name when none is given.
fn default_replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|host| host.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() { "localhost" } else { &host };
    format!("{}@{host}", std::process::id())
}

/// A running meter: one ledger, one active policy.
pub struct Meter {
    jobs: Option<SyncSender<Command>>,
    sequencer: Option<JoinHandle<()>>,
    reader: Arc<dyn LedgerReader>,
    /// The active policy; replaced whole on activation (here, or by the follower).
    policy: Arc<RwLock<Arc<PolicyInfo>>>,
    engine: wasmtime::Engine,
    limits: Limits,
    compile_cache_dir: Option<PathBuf>,
    /// Whose signature a new module needs ([`MeterConfig::trusted_keys`]).
    trusted_keys: TrustedKeys,
    /// One activation at a time: its checks run outside the sequencer, its switch inside.
    activation: Arc<Mutex<()>>,
    /// On PostgreSQL, what takes up the activations other replicas make.
    follower: Option<follower::Follower>,
    clock: Arc<dyn Clock>,
    counters: Arc<BatchCounters>,
    failure_mode: FailureMode,
    failure_counts: Arc<FailureCounts>,
    health: Arc<Health>,
    /// The SQLite ledger's lock, where the owner says where it serves.
    lock: Option<Arc<LedgerLock>>,
    /// What webhooks there are and where their delivery is.
    webhooks: Arc<dyn WebhookStore>,
}

/// What the sequencer thread answers once it runs.
struct Started {
    info: PolicyInfo,
    reader: Arc<dyn LedgerReader>,
    lock: Option<Arc<LedgerLock>>,
}

impl Meter {
    /// Opens the ledger (recovering its live state), loads the policy, records its
    /// activation, and starts the sequencer.
    pub fn open(config: MeterConfig, source: PolicySource) -> Result<Self, MeterError> {
        let engine = component::engine()?;
        let (jobs, queue) = std::sync::mpsc::sync_channel(config.queue_depth_max);
        let counters = Arc::new(BatchCounters::default());
        let failure_counts = Arc::new(FailureCounts::default());
        let health = Arc::new(Health::default());
        let (started, start_result) = std::sync::mpsc::channel();
        let thread = {
            let (config, engine, counters, failure_counts, health) = (
                config.clone(),
                engine.clone(),
                Arc::clone(&counters),
                Arc::clone(&failure_counts),
                Arc::clone(&health),
            );
            std::thread::Builder::new()
                .name("creditgate-sequencer".to_owned())
                .spawn(move || {
                    let mut guard = StopGuard {
                        health: Arc::clone(&health),
                        clean: false,
                    };
                    match start(config, engine, source, counters, failure_counts, health) {
                        Ok((sequencer, info)) => {
                            let _ = started.send(Ok(info));
                            sequencer.run(queue);
                        }
                        Err(error) => {
                            let _ = started.send(Err(error));
                        }
                    }
                    guard.clean = true;
                })
                .map_err(|error| {
                    MeterError::StoreUnavailable(format!("cannot start the sequencer: {error}"))
                })?
        };
        let started: Started = start_result.recv().map_err(|_| MeterError::ShutDown)??;
        // Opened once the ledger is: its lock is held, its schema migrated.
        let webhooks: Arc<dyn WebhookStore> = match &config.store {
            StoreLocation::Sqlite(path) => Arc::new(sqlite::webhooks::open(path)?),
            StoreLocation::Postgres(url) => Arc::new(postgres::open_webhooks(url)?),
        };
        let policy = Arc::new(RwLock::new(Arc::new(started.info)));
        let activation = Arc::new(Mutex::new(()));
        let follower = match (&config.store, &config.replica_name) {
            (StoreLocation::Postgres(url), Some(replica)) => {
                Some(follower::Follower::start(follower::Followed {
                    url: url.clone(),
                    replica: replica.clone(),
                    jobs: jobs.clone(),
                    policy: Arc::clone(&policy),
                    activation: Arc::clone(&activation),
                    engine: engine.clone(),
                    limits: config.limits,
                    compile_cache_dir: config.compile_cache_dir.clone(),
                    clock: Arc::clone(&config.clock),
                    shadow_setting: Arc::default(),
                })?)
            }
            _ => None,
        };
        Ok(Self {
            jobs: Some(jobs),
            sequencer: Some(thread),
            reader: started.reader,
            policy,
            engine,
            limits: config.limits,
            compile_cache_dir: config.compile_cache_dir.clone(),
            trusted_keys: config.trusted_keys.clone(),
            activation,
            follower,
            clock: Arc::clone(&config.clock),
            counters,
            failure_mode: config.failure.mode,
            failure_counts,
            health,
            lock: started.lock,
            webhooks,
        })
    }

    /// How decisions have been grouped into commits since the meter opened.
    pub fn batch_stats(&self) -> BatchStats {
        self.counters.snapshot()
    }

    /// The failure mode, and how many policy failures it admitted open or refused.
    pub fn failure_stats(&self) -> FailureStats {
        self.failure_counts.stats(self.failure_mode)
    }

    /// How far the queryable views trail the log (SQLite); none on PostgreSQL, whose
    /// tables are current at every commit.
    pub fn views_lag(&self) -> Option<ViewsLag> {
        self.reader.views_lag()
    }

    /// Why the meter cannot decide, if it cannot (a failed write or sync of the log, a
    /// stopped sequencer): until a restart every decision answers 503.
    pub fn failure(&self) -> Option<String> {
        self.health.failure()
    }

    /// Records, for operator commands beside this process, where its API listens.
    pub fn announce(&self, url: &str) -> Result<(), MeterError> {
        match &self.lock {
            Some(lock) => lock.announce(url),
            None => Ok(()),
        }
    }

    /// The active policy.
    pub fn policy(&self) -> Arc<PolicyInfo> {
        match self.policy.read() {
            Ok(policy) => Arc::clone(&policy),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn policy_ref(&self) -> PolicyRef {
        decide::policy_ref(&self.policy())
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
            contract: info.contract.to_string(),
            replicas: None,
        }
    }

    /// [`Meter::active_policy`] with, on PostgreSQL, the replicas sharing the ledger that
    /// were seen in the last [`REPLICA_SEEN_WITHIN_MS`] and what each runs.
    pub fn active_policy_everywhere(&self) -> Result<ActivePolicy, MeterError> {
        let seen_since_ms = i64::try_from(self.clock.now_ms())
            .unwrap_or(i64::MAX)
            .saturating_sub(REPLICA_SEEN_WITHIN_MS);
        Ok(ActivePolicy {
            replicas: self.reader.replicas(seen_since_ms)?,
            ..self.active_policy()
        })
    }

    /// Makes `component` the active policy while traffic flows: compiled and put
    /// through the contract checks here, off the request path, then switched
    /// atomically between two decisions. On any failure the active policy stays and
    /// the error says why. `via` is recorded in the history. A meter with trusted keys
    /// refuses it as unsigned: see [`Meter::activate_signed`].
    pub fn activate(&self, component: Vec<u8>, via: &str) -> Result<PolicyInfo, MeterError> {
        self.activate_signed(component, None, via)
    }

    /// [`Meter::activate`] with the module's signature (text), which a meter with trusted
    /// keys checks before anything compiles the module: `403 signature_required` without
    /// one, `403 signature_invalid` when it is not of these bytes by a trusted key.
    pub fn activate_signed(
        &self,
        component: Vec<u8>,
        signature: Option<&str>,
        via: &str,
    ) -> Result<PolicyInfo, MeterError> {
        self.trusted_keys.verify(&component, signature)?;
        self.activate_vetted(component, via)
    }

    /// Activates a module that passed the signature check already, or needs none: one
    /// the ledger holds (a rollback) or the shadow (checked when it was loaded).
    fn activate_vetted(&self, component: Vec<u8>, via: &str) -> Result<PolicyInfo, MeterError> {
        let _one_at_a_time = self.activation.lock().map_err(|_| MeterError::ShutDown)?;
        self.activate_locked(component, via)
    }

    /// [`Meter::activate_vetted`], the activation lock held by the caller.
    fn activate_locked(&self, component: Vec<u8>, via: &str) -> Result<PolicyInfo, MeterError> {
        let compiled = self.compile_checked(&component)?;
        let info = self.call(|reply| Command::Activate {
            compiled,
            component,
            via: via.to_owned(),
            reply,
        })?;
        if let Ok(mut policy) = self.policy.write() {
            *policy = Arc::new(info.clone());
        }
        Ok(info)
    }

    /// Compiles and checks `component` like [`Meter::activate`], then evaluates it beside
    /// the active policy on every authorize and settle, moving no credit. Replaces any
    /// earlier shadow (and its report). On PostgreSQL the setting is recorded in the
    /// ledger and every replica takes it up within a second, as it does an activation. A
    /// meter with trusted keys refuses it as unsigned: see [`Meter::set_shadow_signed`].
    pub fn set_shadow(&self, component: Vec<u8>) -> Result<ShadowReport, MeterError> {
        self.set_shadow_signed(component, None)
    }

    /// [`Meter::set_shadow`] with the module's signature, checked like
    /// [`Meter::activate_signed`]'s: a shadow is promoted without another check.
    pub fn set_shadow_signed(
        &self,
        component: Vec<u8>,
        signature: Option<&str>,
    ) -> Result<ShadowReport, MeterError> {
        self.trusted_keys.verify(&component, signature)?;
        let _one_at_a_time = self.activation.lock().map_err(|_| MeterError::ShutDown)?;
        let compiled = self.compile_checked(&component)?;
        if let Some(shared) = self.shared_shadow() {
            let digest = compiled.info().digest;
            shared.record(Some((&digest, &component)), "set", self.clock.now_ms())?;
        }
        self.call(|reply| Command::SetShadow {
            compiled,
            component,
            reply,
        })
    }

    /// What the shadow would have done differently so far: on PostgreSQL, on every
    /// replica running the same shadow setting (each as of its last heartbeat).
    pub fn shadow_report(&self) -> Result<ShadowReport, MeterError> {
        let mut report = self
            .call(Command::ShadowReport)?
            .ok_or(MeterError::NoShadow)?;
        if let Some((shared, setting)) = self
            .shared_shadow()
            .and_then(|shared| Some((shared, shared.setting()?)))
        {
            report.replicas.push(shared.replica.clone());
            let seen_since_ms = i64::try_from(self.clock.now_ms())
                .unwrap_or(i64::MAX)
                .saturating_sub(REPLICA_SEEN_WITHIN_MS);
            for (replica, other) in
                self.reader
                    .shadow_reports(setting, &shared.replica, seen_since_ms)?
            {
                shadow::add_replica_report(&mut report, &replica, other);
            }
        }
        Ok(report)
    }

    /// Stops the shadow evaluation (on PostgreSQL, on every replica).
    pub fn clear_shadow(&self) -> Result<(), MeterError> {
        let _one_at_a_time = self.activation.lock().map_err(|_| MeterError::ShutDown)?;
        self.call(Command::TakeShadow)?
            .ok_or(MeterError::NoShadow)?;
        self.record_shadow_cleared("clear")
    }

    /// Makes the shadow the active policy (and stops shadowing, on every replica).
    pub fn promote_shadow(&self) -> Result<PolicyInfo, MeterError> {
        let _one_at_a_time = self.activation.lock().map_err(|_| MeterError::ShutDown)?;
        let component = self
            .call(Command::TakeShadow)?
            .ok_or(MeterError::NoShadow)?;
        let info = self.activate_locked(component, "shadow-promotion")?;
        self.record_shadow_cleared("promote")?;
        Ok(info)
    }

    fn record_shadow_cleared(&self, via: &str) -> Result<(), MeterError> {
        match self.shared_shadow() {
            Some(shared) => shared.record(None, via, self.clock.now_ms()),
            None => Ok(()),
        }
    }

    /// Where the shadow is shared with other replicas (PostgreSQL, with a follower).
    fn shared_shadow(&self) -> Option<&follower::SharedShadow> {
        self.follower.as_ref().map(follower::Follower::shadow)
    }

    fn compile_checked(&self, component: &[u8]) -> Result<Arc<CompiledPolicy>, MeterError> {
        compile_gated(
            &self.engine,
            component,
            self.limits,
            self.compile_cache_dir.as_deref(),
        )
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
        let digest = PolicyDigest::parse(&previous.digest).ok_or(MeterError::NoPreviousPolicy)?;
        let component = self
            .reader
            .stored_policy(&digest)?
            .and_then(|stored| stored.component)
            .ok_or(MeterError::NoPreviousPolicy)?;
        self.activate_vetted(component, "rollback")
    }

    /// The digests of the policy versions loaded now: the active one, and those that
    /// authorized a transaction still open.
    pub fn loaded_policies(&self) -> Result<Vec<String>, MeterError> {
        self.call(Command::LoadedPolicies)
    }

    /// The activation history, newest first.
    pub fn policy_history(&self, limit: usize) -> Result<Vec<PolicyActivation>, MeterError> {
        self.reader.activations(limit)
    }

    fn stopped(&self) -> MeterError {
        MeterError::SequencerStopped(
            self.health
                .failure()
                .unwrap_or_else(|| "the sequencer is gone".to_owned()),
        )
    }

    fn submit<T>(
        &self,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<oneshot::Receiver<Result<T, MeterError>>, MeterError> {
        if let Some(why) = self.health.failure() {
            return Err(MeterError::SequencerStopped(why));
        }
        let (reply, answer) = oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(MeterError::ShutDown)?;
        jobs.try_send(command(reply)).map_err(|error| match error {
            TrySendError::Full(_) => MeterError::Overloaded,
            TrySendError::Disconnected(_) => self.stopped(),
        })?;
        Ok(answer)
    }

    fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, MeterError> {
        self.submit(command)?
            .blocking_recv()
            .map_err(|_| self.stopped())?
    }

    async fn call_async<T>(
        &self,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, MeterError> {
        self.submit(command)?.await.map_err(|_| self.stopped())?
    }

    /// Decides a request and applies the verdict. Blocking: from async code use
    /// [`Meter::authorize_async`].
    pub fn authorize(&self, request: AuthorizeRequest) -> Result<Authorization, MeterError> {
        metrics::call("authorize", || {
            let checked = check_authorize(request)?;
            self.call(|reply| Command::Authorize(checked, reply))
        })
    }

    pub async fn authorize_async(
        &self,
        request: AuthorizeRequest,
    ) -> Result<Authorization, MeterError> {
        metrics::call_async("authorize", async {
            let checked = check_authorize(request)?;
            self.call_async(|reply| Command::Authorize(checked, reply))
                .await
        })
        .await
    }

    /// What [`Meter::authorize`] would answer now, on the live balances, with nothing
    /// recorded, held or marked. A transaction id the ledger knows answers its recorded
    /// answer. Blocking: from async code use [`Meter::quote_async`].
    pub fn quote(&self, request: AuthorizeRequest) -> Result<Quote, MeterError> {
        metrics::call("quote", || {
            let checked = check_authorize(request)?;
            self.call(|reply| Command::Quote(checked, reply))
                .map(Quote::from)
        })
    }

    pub async fn quote_async(&self, request: AuthorizeRequest) -> Result<Quote, MeterError> {
        metrics::call_async("quote", async {
            let checked = check_authorize(request)?;
            self.call_async(|reply| Command::Quote(checked, reply))
                .await
                .map(Quote::from)
        })
        .await
    }

    /// Prices an outcome on the policy version that authorized it.
    pub fn settle(&self, request: SettleRequest) -> Result<Receipt, MeterError> {
        metrics::call("settle", || {
            validate::settle(&request)?;
            self.call(|reply| Command::Settle(request, reply))
        })
    }

    pub async fn settle_async(&self, request: SettleRequest) -> Result<Receipt, MeterError> {
        metrics::call_async("settle", async {
            validate::settle(&request)?;
            self.call_async(|reply| Command::Settle(request, reply))
                .await
        })
        .await
    }

    /// Tops up a balance; a repeated grant id moves nothing.
    pub fn grant(&self, grant: GrantRequest) -> Result<TenantBalances, MeterError> {
        metrics::call("grant", || {
            validate::grant(&grant)?;
            self.call(|reply| Command::Grant(grant, reply))
        })
    }

    pub async fn grant_async(&self, grant: GrantRequest) -> Result<TenantBalances, MeterError> {
        metrics::call_async("grant", async {
            validate::grant(&grant)?;
            self.call_async(|reply| Command::Grant(grant, reply)).await
        })
        .await
    }

    /// Voids a tenant's grant: the unspent credits of its lot leave through a `void`
    /// entry; spent credits stay spent. Voiding it again moves nothing.
    pub fn void(&self, tenant: &str, grant_id: &str) -> Result<TenantBalances, MeterError> {
        metrics::call("void", || {
            validate::identifier("tenant", tenant)?;
            validate::identifier("grant_id", grant_id)?;
            self.call(|reply| Command::Void {
                tenant: tenant.to_owned(),
                grant_id: grant_id.to_owned(),
                reply,
            })
        })
    }

    pub async fn void_async(
        &self,
        tenant: &str,
        grant_id: &str,
    ) -> Result<TenantBalances, MeterError> {
        metrics::call_async("void", async {
            validate::identifier("tenant", tenant)?;
            validate::identifier("grant_id", grant_id)?;
            self.call_async(|reply| Command::Void {
                tenant: tenant.to_owned(),
                grant_id: grant_id.to_owned(),
                reply,
            })
            .await
        })
        .await
    }

    /// Sets how far below zero spending may take an account (0: not at all). Moves no
    /// credit; a limit lowered below what is already overdrawn refuses new spending
    /// until credits come back.
    pub fn set_overdraft(
        &self,
        tenant: &str,
        balance: &str,
        limit: i64,
    ) -> Result<TenantBalances, MeterError> {
        metrics::call("overdraft", || {
            validate::overdraft(tenant, balance, limit)?;
            self.call(|reply| Command::Overdraft {
                tenant: tenant.to_owned(),
                balance: balance.to_owned(),
                limit,
                reply,
            })
        })
    }

    pub async fn set_overdraft_async(
        &self,
        tenant: &str,
        balance: &str,
        limit: i64,
    ) -> Result<TenantBalances, MeterError> {
        metrics::call_async("overdraft", async {
            validate::overdraft(tenant, balance, limit)?;
            self.call_async(|reply| Command::Overdraft {
                tenant: tenant.to_owned(),
                balance: balance.to_owned(),
                limit,
                reply,
            })
            .await
        })
        .await
    }

    /// Sets an account's spend cap (none: removes it): from the next decision on, an
    /// admission that would take the window's spending past the cap is refused with
    /// 429 `spend_cap_reached`, whatever the policy answers. Moves no credit.
    pub fn set_spend_cap(
        &self,
        tenant: &str,
        balance: &str,
        cap: Option<&SpendCapTerms>,
    ) -> Result<TenantBalances, MeterError> {
        metrics::call("spend_cap", || {
            let cap = validate::spend_cap(tenant, balance, cap)?;
            self.call(|reply| Command::SpendCap {
                tenant: tenant.to_owned(),
                balance: balance.to_owned(),
                cap,
                reply,
            })
        })
    }

    pub async fn set_spend_cap_async(
        &self,
        tenant: &str,
        balance: &str,
        cap: Option<&SpendCapTerms>,
    ) -> Result<TenantBalances, MeterError> {
        metrics::call_async("spend_cap", async {
            let cap = validate::spend_cap(tenant, balance, cap)?;
            self.call_async(|reply| Command::SpendCap {
                tenant: tenant.to_owned(),
                balance: balance.to_owned(),
                cap,
                reply,
            })
            .await
        })
        .await
    }

    /// Sets what an operator watches on an account (none: stops watching it): from the
    /// next decision on, the account raises events (see [`ThresholdTerms`]). Moves no
    /// credit.
    pub fn set_thresholds(
        &self,
        tenant: &str,
        balance: &str,
        thresholds: Option<&ThresholdTerms>,
    ) -> Result<TenantBalances, MeterError> {
        metrics::call("thresholds", || {
            let thresholds = validate::thresholds(tenant, balance, thresholds)?;
            self.call(|reply| Command::Thresholds {
                tenant: tenant.to_owned(),
                balance: balance.to_owned(),
                thresholds,
                reply,
            })
        })
    }

    pub async fn set_thresholds_async(
        &self,
        tenant: &str,
        balance: &str,
        thresholds: Option<&ThresholdTerms>,
    ) -> Result<TenantBalances, MeterError> {
        metrics::call_async("thresholds", async {
            let thresholds = validate::thresholds(tenant, balance, thresholds)?;
            self.call_async(|reply| Command::Thresholds {
                tenant: tenant.to_owned(),
                balance: balance.to_owned(),
                thresholds,
                reply,
            })
            .await
        })
        .await
    }

    /// The events after `after` (an event id; 0 for the first), oldest first, at most
    /// `limit`, of one tenant or all; when there are none yet, waits up to `wait` for
    /// the next. Blocking: from async code use [`Meter::events_async`].
    pub fn events(
        &self,
        after: u64,
        limit: usize,
        tenant: Option<&str>,
        wait: Duration,
    ) -> Result<EventPage, MeterError> {
        validate::events(after, limit, tenant, wait)?;
        let deadline = Instant::now() + wait;
        let mut signal = self.health.events.subscribe();
        loop {
            signal.borrow_and_update();
            let events = self.reader.events_after(after, limit, tenant)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !events.is_empty() || left.is_zero() {
                return Ok(feed::page(after, events));
            }
            // Wakes at this process's next durable events, or at the next poll.
            let look = Instant::now() + feed::next_look(left);
            while Instant::now() < look && !signal.has_changed().unwrap_or(false) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    pub async fn events_async(
        &self,
        after: u64,
        limit: usize,
        tenant: Option<&str>,
        wait: Duration,
    ) -> Result<EventPage, MeterError> {
        validate::events(after, limit, tenant, wait)?;
        let deadline = Instant::now() + wait;
        let mut signal = self.health.events.subscribe();
        let tenant = tenant.map(str::to_owned);
        loop {
            signal.borrow_and_update();
            let reader = Arc::clone(&self.reader);
            let of = tenant.clone();
            let events = tokio::task::spawn_blocking(move || {
                reader.events_after(after, limit, of.as_deref())
            })
            .await
            .map_err(|error| MeterError::StoreUnavailable(format!("the read failed: {error}")))??;
            let left = deadline.saturating_duration_since(Instant::now());
            if !events.is_empty() || left.is_zero() {
                return Ok(feed::page(after, events));
            }
            let look = feed::next_look(left);
            if let Ok(Err(_)) = tokio::time::timeout(look, signal.changed()).await {
                // The meter closed: no signal will come; look at the store again later.
                tokio::time::sleep(look).await;
            }
        }
    }

    /// Adds or changes a webhook: from the next delivery round, the events of the feed
    /// it wants are POSTed to its URL (by the process that runs
    /// [`Deliverer`](crate::webhooks::deliver::Deliverer)). A new webhook starts at the
    /// end of the feed unless `after` says where.
    pub fn set_webhook(
        &self,
        webhook_id: &str,
        request: &WebhookRequest,
    ) -> Result<WebhookView, MeterError> {
        let existing = self.find_webhook(webhook_id)?;
        let hook = webhooks::webhook(webhook_id, request, existing.as_ref())?;
        let after = match (request.after, &existing) {
            (Some(after), _) => Some(after),
            (None, Some(_)) => None,
            (None, None) => Some(self.reader.last_event_id()?),
        };
        self.webhooks.put(&hook, after)?;
        self.find_webhook(webhook_id)?
            .map(|hook| hook.view())
            .ok_or_else(|| {
                MeterError::UnknownWebhook(format!("webhook '{webhook_id}' was removed meanwhile"))
            })
    }

    /// Removes a webhook and its dead letters.
    pub fn remove_webhook(&self, webhook_id: &str) -> Result<(), MeterError> {
        validate::identifier("webhook_id", webhook_id)?;
        if self.webhooks.remove(webhook_id)? {
            Ok(())
        } else {
            Err(unknown_webhook(webhook_id))
        }
    }

    /// Every webhook, with where its delivery is.
    pub fn webhooks(&self) -> Result<Vec<WebhookView>, MeterError> {
        Ok(self.webhooks.list()?.iter().map(Webhook::view).collect())
    }

    /// The events a webhook gave up on, oldest first.
    pub fn dead_letters(&self, webhook_id: &str) -> Result<Vec<DeadLetter>, MeterError> {
        validate::identifier("webhook_id", webhook_id)?;
        if self.find_webhook(webhook_id)?.is_none() {
            return Err(unknown_webhook(webhook_id));
        }
        self.webhooks
            .dead_letters(webhook_id, webhooks::DEAD_LETTERS_PAGE_MAX)?
            .into_iter()
            .map(|dead| {
                let page = self
                    .reader
                    .events_after(dead.event_id.saturating_sub(1), 1, None)?;
                let event = page
                    .into_iter()
                    .find(|event| event.id == dead.event_id)
                    .ok_or_else(|| {
                        MeterError::StoreCorrupt(format!(
                            "dead letter {} of webhook '{webhook_id}' names no event of the feed",
                            dead.event_id
                        ))
                    })?;
                Ok(DeadLetter {
                    event,
                    attempts: dead.attempts,
                    last_error: dead.last_error,
                    dead_at_ms: dead.dead_at_ms,
                    requeued: dead.requeued,
                })
            })
            .collect()
    }

    /// Asks for a dead letter again: the next delivery round tries it once more (it
    /// leaves the dead letters when delivered).
    pub fn requeue_dead_letter(&self, webhook_id: &str, event_id: u64) -> Result<(), MeterError> {
        validate::identifier("webhook_id", webhook_id)?;
        validate::event_id(event_id)?;
        if self.webhooks.requeue(webhook_id, event_id)? {
            Ok(())
        } else {
            Err(MeterError::UnknownWebhook(format!(
                "webhook '{webhook_id}' has no dead letter of event {event_id}"
            )))
        }
    }

    fn find_webhook(&self, webhook_id: &str) -> Result<Option<Webhook>, MeterError> {
        validate::identifier("webhook_id", webhook_id)?;
        Ok(self
            .webhooks
            .list()?
            .into_iter()
            .find(|hook| hook.id == webhook_id))
    }

    /// Where webhooks live, for the delivery thread.
    pub(crate) fn webhook_store(&self) -> Arc<dyn WebhookStore> {
        Arc::clone(&self.webhooks)
    }

    /// Wakes at the next events made durable by this process.
    pub(crate) fn event_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.health.events.subscribe()
    }

    /// Sets a tenant's refill (none: removes it): a lot of `amount` granted at the start
    /// of every period, the first at once when its anchor has passed. Answers the
    /// tenant's refills.
    pub fn set_refill(
        &self,
        tenant: &str,
        refill_id: &str,
        refill: Option<&RefillRequest>,
    ) -> Result<Vec<RefillView>, MeterError> {
        metrics::call("refill", || {
            let terms = validate::refill(tenant, refill_id, refill)?;
            self.call(|reply| Command::Refill {
                tenant: tenant.to_owned(),
                refill_id: refill_id.to_owned(),
                refill: terms,
                anchor_ms: refill.and_then(|refill| refill.anchor_ms),
                reply,
            })
        })
    }

    pub async fn set_refill_async(
        &self,
        tenant: &str,
        refill_id: &str,
        refill: Option<&RefillRequest>,
    ) -> Result<Vec<RefillView>, MeterError> {
        metrics::call_async("refill", async {
            let terms = validate::refill(tenant, refill_id, refill)?;
            self.call_async(|reply| Command::Refill {
                tenant: tenant.to_owned(),
                refill_id: refill_id.to_owned(),
                refill: terms,
                anchor_ms: refill.and_then(|refill| refill.anchor_ms),
                reply,
            })
            .await
        })
        .await
    }

    /// A tenant's refills.
    pub fn refills(&self, tenant: &str) -> Result<Vec<RefillView>, MeterError> {
        validate::identifier("tenant", tenant)?;
        self.call(|reply| Command::Refills(tenant.to_owned(), reply))
    }

    pub async fn refills_async(&self, tenant: &str) -> Result<Vec<RefillView>, MeterError> {
        validate::identifier("tenant", tenant)?;
        self.call_async(|reply| Command::Refills(tenant.to_owned(), reply))
            .await
    }

    /// A tenant's credits with the lots they come from.
    pub fn lots(&self, tenant: &str) -> Result<TenantBalances, MeterError> {
        validate::identifier("tenant", tenant)?;
        self.call(|reply| Command::Lots(tenant.to_owned(), reply))
    }

    pub async fn lots_async(&self, tenant: &str) -> Result<TenantBalances, MeterError> {
        validate::identifier("tenant", tenant)?;
        self.call_async(|reply| Command::Lots(tenant.to_owned(), reply))
            .await
    }

    /// Releases every hold whose TTL has passed, and unloads the policy versions no open
    /// transaction needs; returns how many holds were released.
    pub fn expire_due(&self) -> Result<usize, MeterError> {
        self.call(Command::ExpireDue)
    }

    /// A tenant's credits; a tenant never granted anything has zeros.
    pub fn balances(&self, tenant: &str) -> Result<TenantBalances, MeterError> {
        validate::identifier("tenant", tenant)?;
        match self.reader.balances(tenant, &self.policy().balances)? {
            Some(balances) => Ok(balances),
            None => self.call(|reply| Command::Balances(tenant.to_owned(), reply)),
        }
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

    /// Accounts whose state differs from the sum of their journal (empty when sound):
    /// the live accounts against the journal up to the same decision.
    pub fn invariant_violations(&self) -> Result<Vec<String>, MeterError> {
        let point = self.call(Command::Audit)?;
        self.reader.invariant_violations(Some(point))
    }

    /// The bytes the live state's filters of transaction ids and marks take now
    /// (SQLite; zero where the state is read per batch, on PostgreSQL).
    pub fn filter_bytes(&self) -> Result<FilterBytes, MeterError> {
        self.call(Command::Filters)
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        // The follower holds a sender of the queue: it stops first.
        if let Some(follower) = self.follower.as_mut() {
            follower.stop();
        }
        // Closing the queue lets the sequencer finish its batch and stop.
        drop(self.jobs.take());
        if let Some(sequencer) = self.sequencer.take() {
            let _ = sequencer.join();
        }
    }
}

fn unknown_webhook(webhook_id: &str) -> MeterError {
    MeterError::UnknownWebhook(format!("no webhook '{webhook_id}'"))
}

/// Validation, fingerprint and id of an authorize, on the caller's thread.
fn check_authorize(request: AuthorizeRequest) -> Result<CheckedAuthorize, MeterError> {
    validate::authorize(&request)?;
    let fingerprint = validate::fingerprint(&request);
    let id = request
        .transaction_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    Ok(CheckedAuthorize {
        id,
        request,
        fingerprint,
    })
}

/// On the sequencer thread: opens the store, recovers the live state, loads the
/// policy and records its activation.
fn start(
    config: MeterConfig,
    engine: wasmtime::Engine,
    source: PolicySource,
    counters: Arc<BatchCounters>,
    failure_counts: Arc<FailureCounts>,
    health: Arc<Health>,
) -> Result<(Sequencer, Started), MeterError> {
    let (store, state, reader, lock): (Rc<dyn Store>, LiveState, Arc<dyn LedgerReader>, _) =
        match &config.store {
            StoreLocation::Sqlite(path) => {
                let (store, state, reader) = sqlite::open(path, config.sqlite)?;
                let lock = store.lock();
                (Rc::new(store), state, Arc::new(reader), Some(lock))
            }
            StoreLocation::Postgres(url) => {
                let (store, reader) = postgres::open(url)?;
                let state = LiveState::new(Coverage::Partial, config.sqlite.state);
                (Rc::new(store), state, Arc::new(reader), None)
            }
        };
    let marks: Rc<dyn MarkLookup> = Rc::new(marks::LedgerMarks {
        recent: state.marks(),
        store: Rc::clone(&store),
    });
    let (runtime, component) =
        first_runtime(&config, &engine, source, &state, store.as_ref(), &marks)?;
    let info = runtime.info().clone();
    let registry = Registry::new(
        engine,
        config.limits,
        config.compile_cache_dir.clone(),
        marks,
        runtime,
    );
    let record_start = config.record_start;
    let mut sequencer = Sequencer::new(
        store,
        state,
        registry,
        config,
        counters,
        failure_counts,
        health,
    )?;
    if record_start {
        sequencer.unregistered = Some((info.clone(), component));
        sequencer.register_start()?;
    }
    Ok((sequencer, Started { info, reader, lock }))
}

/// The runtime of the policy to start on, and its bytes (none: linked natively).
type FirstRuntime = (Box<dyn PolicyRuntime>, Option<Vec<u8>>);

/// Compiles (or loads precompiled) `component` and puts it through the activation gate
/// (`policy::probe::gate`): the contract probes, within their cost.
fn compile_gated(
    engine: &wasmtime::Engine,
    component: &[u8],
    limits: Limits,
    cache_dir: Option<&std::path::Path>,
) -> Result<Arc<CompiledPolicy>, MeterError> {
    let compiled = CompiledPolicy::load(engine, component, limits, cache_dir)?;
    probe::gate(&compiled)?;
    Ok(compiled)
}

/// The runtime of the policy to start on, and its bytes (none: linked natively). A
/// component the caller gives (or the fallback) passes the signature check (with trusted
/// keys) and the activation gate first; one the ledger ran passed them when it was
/// activated, and is not judged again by today's keys or budgets.
fn first_runtime(
    config: &MeterConfig,
    engine: &wasmtime::Engine,
    source: PolicySource,
    state: &LiveState,
    store: &dyn ColdStore,
    marks: &Rc<dyn MarkLookup>,
) -> Result<FirstRuntime, MeterError> {
    let (component, gated, signature) = match source {
        PolicySource::Native(native) => {
            return Ok(((native.runtime)(native.name, Rc::clone(marks))?, None));
        }
        PolicySource::Component(bytes) => (bytes, true, None),
        PolicySource::Signed {
            component,
            signature,
        } => (component, true, Some(signature)),
        PolicySource::Resume { fallback } => {
            let latest = match state.active_policy() {
                Some(digest) => Some(PolicyDigest::from_bytes(digest)),
                None => store.latest_activation()?,
            };
            let stored = match latest {
                Some(digest) => match state.recent_component(&digest.bytes()) {
                    Some(component) => component.map(<[u8]>::to_vec),
                    None => store.policy(&digest)?.and_then(|stored| stored.component),
                },
                None => None,
            };
            match (stored, fallback) {
                (Some(stored), _) => (stored, false, None),
                (None, Some(fallback)) => (fallback, true, None),
                (None, None) => {
                    return Err(MeterError::InvalidPolicy(
                        "this ledger has never run a policy component; give one".to_owned(),
                    ));
                }
            }
        }
    };
    let cache_dir = config.compile_cache_dir.as_deref();
    let compiled = if gated {
        config
            .trusted_keys
            .verify(&component, signature.as_deref())?;
        compile_gated(engine, &component, config.limits, cache_dir)?
    } else {
        CompiledPolicy::load(engine, &component, config.limits, cache_dir)?
    };
    Ok((
        Box::new(compiled.runtime(Rc::clone(marks))),
        Some(component),
    ))
}
