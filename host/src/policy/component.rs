//! Policies as WebAssembly components, run by wasmtime.
//!
//! - Compiled once per module ([`CompiledPolicy`], shareable across threads); each
//!   deciding thread keeps one reused [`ComponentRuntime`] instance and replaces it
//!   after a trap, because a trapped instance may hold broken state.
//! - Sandboxed: the only import provided is the read-only `ledger`; any WASI import a
//!   std guest declares is linked to a function that traps, so a policy gets no files,
//!   network, environment, clock or randomness. Any other import refuses the load.
//! - Bounded (docs/policy-budget.md): each call gets [`Limits::fuel_per_call`] units of
//!   fuel, spent by the guest's instructions and by the host's work on its behalf
//!   (deterministic: the same call always costs the same); a wall-clock deadline
//!   ([`Limits::wall_ms_per_call`], epoch interruption); hard bounds on `marked` lookups
//!   and on the bytes lifted out of guest memory, checked before anything is copied;
//!   and at most [`Limits::memory_bytes_max`] of linear memory.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, StoreContextMut, StoreLimits, StoreLimitsBuilder, Trap};

use super::contract::{check_settlement, check_verdict};
use super::{
    AuthorizeDecision, CallCost, MarkAnswers, MarkLookup, PolicyDigest, PolicyInfo, PolicyRuntime,
    SettleDecision, sdk,
};
use crate::error::MeterError;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        imports: { default: trappable },
    });
}

use bindings::creditgate::policy::types as wit;

/// The interface every policy imports, and the prefix of those it may import but never
/// gets (linked to traps).
const LEDGER_IMPORT: &str = "creditgate:policy/ledger@0.1.0";
const MARKED_FUNCTION: &str = "marked";
const TYPES_IMPORT: &str = "creditgate:policy/types@0.1.0";
const TRAPPED_IMPORT_PREFIX: &str = "wasi:";

/// Fuel one `marked` key costs: hashing it and probing the in-memory marks and filter
/// (estimated ~0.1 µs; a unit of fuel is ~0.5 ns of a guest's tight loop here).
pub const FUEL_PER_MARK_KEY: u64 = 200;
/// Fuel one `marked` key costs when memory cannot answer it and the store is read (an
/// indexed SQLite read, estimated ~5 µs when its pages are cached).
pub const FUEL_PER_STORED_MARK_KEY: u64 = 10_000;
/// The wall-clock bound of the `describe` call made when a module is loaded.
const DESCRIBE_WALL_MS: u64 = 1_000;
/// How often the engine's epoch advances: the resolution of [`Limits::wall_ms_per_call`].
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Per-call resource bounds (docs/policy-budget.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel for one describe, authorize or settle call: about one unit per wasm
    /// instruction, plus the host's work for the policy's imports.
    pub fuel_per_call: u64,
    /// Wall-clock time one call may take, in milliseconds, whatever it spends it on.
    pub wall_ms_per_call: u64,
    /// Bytes one lift may copy out of guest memory: the arguments of one import call,
    /// or one verdict. Checked by wasmtime before each string or list is copied.
    pub lifted_bytes_max: usize,
    /// Keys one `marked` lookup may ask about.
    pub mark_keys_per_lookup_max: usize,
    /// `marked` lookups one call may make.
    pub mark_lookups_per_call_max: u32,
    /// Linear memory a policy instance may grow to.
    pub memory_bytes_max: usize,
}

impl Limits {
    pub const DEFAULT: Self = Self {
        fuel_per_call: 10_000_000,
        wall_ms_per_call: 20,
        lifted_bytes_max: 4 << 20,
        mark_keys_per_lookup_max: crate::meter::validate::ITEMS_MAX,
        mark_lookups_per_call_max: 16,
        memory_bytes_max: 64 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The wasmtime engine every policy compiles on: fuel metering and epoch interruption
/// on, Cranelift at speed. A ticker thread advances its epoch every [`EPOCH_TICK`] for
/// as long as the engine lives.
pub fn engine() -> Result<Engine, MeterError> {
    let mut config = Config::new();
    config.consume_fuel(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    let engine = Engine::new(&config)
        .map_err(|error| load_error(format!("cannot start wasmtime: {error}")))?;
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("creditgate-epoch".to_owned())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map_err(|error| load_error(format!("cannot start the epoch ticker: {error}")))?;
    Ok(engine)
}

fn load_error(message: String) -> MeterError {
    MeterError::InvalidPolicy(message)
}

/// What a policy call's store carries: its resource limits, and the ledger view.
struct HostState {
    store_limits: StoreLimits,
    limits: Limits,
    marks: Rc<dyn MarkLookup>,
    /// The tenant of the call in progress: `marked` answers for this tenant only.
    tenant: String,
    /// `marked` lookups made by the call in progress.
    lookups: u32,
}

impl wit::Host for HostState {}

/// A call went past one of [`Limits`]' bounds on host work.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HostLimitExceeded(String);

/// The `marked` import. Bounds are checked and fuel is charged before the work: keys
/// memory can answer cost [`FUEL_PER_MARK_KEY`], and the store is read only when the
/// fuel left pays [`FUEL_PER_STORED_MARK_KEY`] for each key it must be asked about.
fn marked(
    mut store: StoreContextMut<'_, HostState>,
    (scope, keys): (String, Vec<String>),
) -> wasmtime::Result<(Vec<bool>,)> {
    let state = store.data_mut();
    let limits = state.limits;
    state.lookups += 1;
    if state.lookups > limits.mark_lookups_per_call_max {
        return Err(HostLimitExceeded(format!(
            "more than {} `marked` lookups in one call",
            limits.mark_lookups_per_call_max
        ))
        .into());
    }
    if keys.len() > limits.mark_keys_per_lookup_max {
        return Err(HostLimitExceeded(format!(
            "{} keys in one `marked` lookup; at most {}",
            keys.len(),
            limits.mark_keys_per_lookup_max
        ))
        .into());
    }
    let keys_cost = u64::try_from(keys.len())?.saturating_mul(FUEL_PER_MARK_KEY);
    let Some(fuel) = store.get_fuel()?.checked_sub(keys_cost) else {
        return Err(Trap::OutOfFuel.into());
    };
    let stored_keys_max = usize::try_from(fuel / FUEL_PER_STORED_MARK_KEY).unwrap_or(usize::MAX);
    let state = store.data();
    let Some(answers) = state
        .marks
        .marked(&state.tenant, &scope, &keys, stored_keys_max)?
    else {
        return Err(Trap::OutOfFuel.into());
    };
    let stored_cost = u64::try_from(answers.stored_keys)?.saturating_mul(FUEL_PER_STORED_MARK_KEY);
    store.set_fuel(fuel.saturating_sub(stored_cost))?;
    Ok((answers.marked,))
}

/// A compiled, checked policy module; cheap to instantiate.
pub struct CompiledPolicy {
    engine: Engine,
    pre: bindings::PolicyPre<HostState>,
    info: PolicyInfo,
    limits: Limits,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("info", &self.info)
            .finish()
    }
}

impl CompiledPolicy {
    /// Compiles component bytes, checks its imports and exports against the
    /// `creditgate:policy@0.1.0` world, and reads its `describe`.
    pub fn compile(engine: &Engine, bytes: &[u8], limits: Limits) -> Result<Arc<Self>, MeterError> {
        Self::load(engine, bytes, limits, None)
    }

    /// As [`CompiledPolicy::compile`], reusing (and filling) a directory of
    /// precompiled components so that a restart or a re-activation does not recompile.
    pub fn load(
        engine: &Engine,
        bytes: &[u8],
        limits: Limits,
        cache_dir: Option<&Path>,
    ) -> Result<Arc<Self>, MeterError> {
        let digest = PolicyDigest::of(bytes);
        let component = component_from(engine, bytes, &digest, cache_dir)?;
        let mut linker = Linker::<HostState>::new(engine);
        for (name, _item) in component.component_type().imports(engine) {
            let known = name == LEDGER_IMPORT || name == TYPES_IMPORT;
            if name.starts_with("creditgate:") && !known {
                return Err(load_error(format!(
                    "the component was built against '{name}'; this host implements \
                     creditgate:policy@0.1.0 (rebuild the policy against wit/policy.wit)"
                )));
            }
            if !known && !name.starts_with(TRAPPED_IMPORT_PREFIX) {
                return Err(load_error(format!(
                    "the component imports '{name}', which the host does not provide; \
                     policies may import only {LEDGER_IMPORT}"
                )));
            }
        }
        let link_error =
            |error: wasmtime::Error| load_error(format!("cannot link the ledger import: {error}"));
        wit::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(link_error)?;
        linker
            .instance(LEDGER_IMPORT)
            .and_then(|mut ledger| ledger.func_wrap(MARKED_FUNCTION, marked))
            .map_err(link_error)?;
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|error| load_error(format!("cannot stub the WASI imports: {error}")))?;
        let instance_pre = linker.instantiate_pre(&component).map_err(|error| {
            load_error(format!(
                "the component does not fit the creditgate:policy world: {error:#}"
            ))
        })?;
        let pre = bindings::PolicyPre::new(instance_pre).map_err(|error| {
            load_error(format!(
                "the component does not export creditgate:policy/pricing@0.1.0: {error:#}"
            ))
        })?;
        // Loading is off the request path, and a fresh instance's first call pays for
        // its memory's first touches: `describe` gets a longer wall-clock bound.
        let describe_limits = Limits {
            wall_ms_per_call: limits.wall_ms_per_call.max(DESCRIBE_WALL_MS),
            ..limits
        };
        let mut probe = Instance::new(engine, &pre, describe_limits, Rc::new(NoMarks))
            .map_err(|error| load_error(error.to_string()))?;
        let (description, _cost) =
            probe.call(|bindings, store| bindings.creditgate_policy_pricing().call_describe(store));
        let description =
            description.map_err(|error| load_error(format!("describe failed: {error}")))?;
        // A description that breaks the contract refuses the module (422), like any
        // other reason a module cannot be loaded.
        let info = PolicyInfo::from_description(description_from_wit(description), digest)
            .map_err(|error| load_error(error.to_string()))?;
        Ok(Arc::new(Self {
            engine: engine.clone(),
            pre,
            info,
            limits,
        }))
    }

    pub fn info(&self) -> &PolicyInfo {
        &self.info
    }

    /// The per-call bounds its runtimes run under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A runtime for one thread, whose `marked` calls go to `marks`.
    pub fn runtime(self: &Arc<Self>, marks: Rc<dyn MarkLookup>) -> ComponentRuntime {
        self.runtime_with(marks, self.limits)
    }

    /// As [`CompiledPolicy::runtime`], with other per-call bounds (the contract probes'
    /// wall-clock bound).
    pub fn runtime_with(
        self: &Arc<Self>,
        marks: Rc<dyn MarkLookup>,
        limits: Limits,
    ) -> ComponentRuntime {
        ComponentRuntime {
            compiled: Arc::clone(self),
            limits,
            marks,
            instance: None,
            last_cost: CallCost::default(),
        }
    }
}

fn compile_component(engine: &Engine, bytes: &[u8]) -> Result<Component, MeterError> {
    Component::new(engine, bytes)
        .map_err(|error| load_error(format!("not a valid WebAssembly component: {error:#}")))
}

/// The component for `bytes`: deserialized from the cache when a precompiled copy for
/// this digest and this engine is there (about 60 µs), compiled otherwise (tens of ms)
/// and then cached. A cache that cannot be read or written only costs a compile.
fn component_from(
    engine: &Engine,
    bytes: &[u8],
    digest: &PolicyDigest,
    cache_dir: Option<&Path>,
) -> Result<Component, MeterError> {
    let Some(dir) = cache_dir else {
        return compile_component(engine, bytes);
    };
    let mut engine_hash = std::hash::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let path = dir.join(format!("{digest}-{:016x}.cwasm", engine_hash.finish()));
    if let Ok(precompiled) = std::fs::read(&path) {
        // SAFETY: `Component::deserialize` trusts its input to be the output of
        // `Component::serialize` from a compatible engine. Only this function writes
        // this directory (whole files, renamed into place), naming each file after the
        // digest of the source bytes and the engine's compatibility hash; wasmtime
        // itself also refuses artifacts of another engine configuration or version.
        // Whoever can write this directory can run code in the host, as with the
        // binary itself: keep it as private as the ledger file.
        #[allow(unsafe_code)]
        let deserialized = unsafe { Component::deserialize(engine, &precompiled) };
        match deserialized {
            Ok(component) => return Ok(component),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "ignoring an unusable precompiled component")
            }
        }
    }
    let component = compile_component(engine, bytes)?;
    let cached = component
        .serialize()
        .map_err(|error| error.to_string())
        .and_then(|serialized| {
            std::fs::create_dir_all(dir).map_err(|error| error.to_string())?;
            let partial = path.with_extension("cwasm.partial");
            std::fs::write(&partial, serialized).map_err(|error| error.to_string())?;
            std::fs::rename(&partial, &path).map_err(|error| error.to_string())
        });
    if let Err(error) = cached {
        tracing::warn!(path = %path.display(), %error, "cannot cache the precompiled component");
    }
    Ok(component)
}

/// `describe` may not look at marks: it has no tenant.
struct NoMarks;

impl MarkLookup for NoMarks {
    fn marked(
        &self,
        _tenant: &str,
        _scope: &str,
        _keys: &[String],
        _stored_keys_max: usize,
    ) -> Result<Option<MarkAnswers>, MeterError> {
        Err(MeterError::PolicyInvalidVerdict(
            "describe called the ledger".to_owned(),
        ))
    }
}

struct Instance {
    store: Store<HostState>,
    bindings: bindings::Policy,
}

/// wasmtime's message when a lift would copy more than the store's hostcall fuel (its
/// error type is private; a unit test below keeps this in step with wasmtime).
const LIFT_BOUND_MESSAGE: &str = "too much data is being copied between the host and the guest";

impl Instance {
    fn new(
        engine: &Engine,
        pre: &bindings::PolicyPre<HostState>,
        limits: Limits,
        marks: Rc<dyn MarkLookup>,
    ) -> Result<Self, MeterError> {
        let state = HostState {
            store_limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes_max)
                .instances(16)
                .tables(16)
                .memories(4)
                .build(),
            limits,
            marks,
            tenant: String::new(),
            lookups: 0,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.store_limits);
        store.set_hostcall_fuel(limits.lifted_bytes_max);
        Self::arm(&mut store, limits)?;
        let bindings = pre
            .instantiate(&mut store)
            .map_err(|error| MeterError::PolicyTrap(format!("instantiation failed: {error:#}")))?;
        Ok(Self { store, bindings })
    }

    /// A fresh budget: fuel, the wall-clock deadline (one tick more than the bound, for
    /// the tick in progress), and no lookups yet.
    fn arm(store: &mut Store<HostState>, limits: Limits) -> Result<(), MeterError> {
        store
            .set_fuel(limits.fuel_per_call)
            .map_err(|error| MeterError::PolicyTrap(error.to_string()))?;
        let tick_ms = u64::try_from(EPOCH_TICK.as_millis()).unwrap_or(1).max(1);
        store.set_epoch_deadline(limits.wall_ms_per_call.div_ceil(tick_ms) + 1);
        store.data_mut().lookups = 0;
        Ok(())
    }

    /// Runs one export with a fresh budget, mapping traps and exceeded bounds to meter
    /// errors; answers what the call cost too.
    fn call<R>(
        &mut self,
        call: impl FnOnce(&bindings::Policy, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> (Result<R, MeterError>, CallCost) {
        let limits = self.store.data().limits;
        if let Err(error) = Self::arm(&mut self.store, limits) {
            return (Err(error), CallCost::default());
        }
        let started = Instant::now();
        let result = call(&self.bindings, &mut self.store);
        let fuel_left = self.store.get_fuel().unwrap_or(0);
        let cost = CallCost::since(started, limits.fuel_per_call.saturating_sub(fuel_left));
        (result.map_err(|error| call_error(&error, limits)), cost)
    }
}

/// The meter error for a failed call: each exceeded bound has its own stable code.
fn call_error(error: &wasmtime::Error, limits: Limits) -> MeterError {
    tracing::debug!(error = format!("{error:?}"), "policy call failed");
    if let Some(meter_error) = error.downcast_ref::<MeterError>() {
        return meter_error.clone();
    }
    if let Some(exceeded) = error.downcast_ref::<HostLimitExceeded>() {
        return MeterError::PolicyHostLimit(exceeded.0.clone());
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => MeterError::PolicyFuelExhausted {
            fuel: limits.fuel_per_call,
        },
        Some(Trap::Interrupt) => MeterError::PolicyTimeExceeded {
            ms: limits.wall_ms_per_call,
        },
        // One line for the client; the wasm backtrace goes to the debug log.
        Some(trap) => MeterError::PolicyTrap(format!("wasm trap: {trap}")),
        None => {
            let cause = error.root_cause().to_string();
            if cause.starts_with(LIFT_BOUND_MESSAGE) {
                MeterError::PolicyHostLimit(format!(
                    "the call passed more than {} bytes between the policy and the host",
                    limits.lifted_bytes_max
                ))
            } else if cause.contains("unknown import") {
                MeterError::PolicyTrap(format!(
                    "{cause}: policies get no WASI (files, environment, clock, \
                     randomness); note that a Rust panic reads the environment first"
                ))
            } else {
                MeterError::PolicyTrap(cause)
            }
        }
    }
}

/// One thread's reusable instance of a compiled policy.
pub struct ComponentRuntime {
    compiled: Arc<CompiledPolicy>,
    limits: Limits,
    marks: Rc<dyn MarkLookup>,
    /// None until first use, and again after a trap.
    instance: Option<Instance>,
    last_cost: CallCost,
}

impl ComponentRuntime {
    fn call<R>(
        &mut self,
        tenant: &str,
        call: impl FnOnce(&bindings::Policy, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, MeterError> {
        let compiled = &self.compiled;
        self.last_cost = CallCost::default();
        let instance = match &mut self.instance {
            Some(instance) => instance,
            empty => empty.insert(Instance::new(
                &compiled.engine,
                &compiled.pre,
                self.limits,
                Rc::clone(&self.marks),
            )?),
        };
        instance.store.data_mut().tenant.clear();
        instance.store.data_mut().tenant.push_str(tenant);
        let (result, cost) = instance.call(call);
        self.last_cost = cost;
        if result.is_err() {
            // A trapped instance may be left inconsistent: never reuse it.
            self.instance = None;
        }
        result
    }
}

impl PolicyRuntime for ComponentRuntime {
    fn info(&self) -> &PolicyInfo {
        &self.compiled.info
    }

    fn last_cost(&self) -> CallCost {
        self.last_cost
    }

    fn authorize(
        &mut self,
        request: &sdk::Request,
        balances: &[sdk::BalanceAmount],
    ) -> Result<AuthorizeDecision, MeterError> {
        let wit_request = request_to_wit(request);
        let wit_balances = amounts_to_wit(balances);
        let verdict = self.call(&request.tenant, |bindings, store| {
            bindings
                .creditgate_policy_pricing()
                .call_authorize(store, &wit_request, &wit_balances)
        })?;
        check_verdict(
            &self.compiled.info,
            request.items.len(),
            verdict_from_wit(verdict),
        )
    }

    fn settle(
        &mut self,
        admitted: &sdk::Admitted,
        outcome: &sdk::Outcome,
        balances: &[sdk::BalanceAmount],
    ) -> Result<SettleDecision, MeterError> {
        let wit_admitted = wit::Admitted {
            request: request_to_wit(&admitted.request),
            admitted_items: admitted.admitted_items,
            held: amounts_to_wit(&admitted.held),
            charged: amounts_to_wit(&admitted.charged),
        };
        let wit_outcome = wit::Outcome {
            status: outcome.status,
            attributes: pairs_to_wit(&outcome.attributes),
            body: outcome.body.clone(),
        };
        let wit_balances = amounts_to_wit(balances);
        let settlement = self.call(&admitted.request.tenant, |bindings, store| {
            bindings.creditgate_policy_pricing().call_settle(
                store,
                &wit_admitted,
                &wit_outcome,
                &wit_balances,
            )
        })?;
        check_settlement(
            &self.compiled.info,
            sdk::Settlement {
                charge: amounts_from_wit(settlement.charge),
                marks: marks_from_wit(settlement.marks),
                headers: pairs_from_wit(settlement.headers),
                meta_json: settlement.meta_json,
            },
        )
    }
}

fn description_from_wit(description: wit::Description) -> sdk::Description {
    sdk::Description {
        name: description.name,
        version: description.version,
        balances: description.balances,
        hold_ttl_ms: description.hold_ttl_ms,
    }
}

fn request_to_wit(request: &sdk::Request) -> wit::Request {
    wit::Request {
        transaction_id: request.transaction_id.clone(),
        tenant: request.tenant.clone(),
        operation: request.operation.clone(),
        items: request.items.clone(),
        attributes: pairs_to_wit(&request.attributes),
        body: request.body.clone(),
    }
}

fn verdict_from_wit(verdict: wit::Verdict) -> sdk::Verdict {
    match verdict {
        wit::Verdict::Reject(rejection) => sdk::Verdict::Reject(sdk::Rejection {
            status: rejection.status,
            code: rejection.code,
            message: rejection.message,
        }),
        wit::Verdict::Admit(admission) => sdk::Verdict::Admit(sdk::Admission {
            status: admission.status,
            admitted_items: admission.admitted_items,
            hold: amounts_from_wit(admission.hold),
            charge: amounts_from_wit(admission.charge),
            marks: marks_from_wit(admission.marks),
            headers: pairs_from_wit(admission.headers),
            meta_json: admission.meta_json,
        }),
    }
}

fn amounts_to_wit(amounts: &[sdk::BalanceAmount]) -> Vec<wit::BalanceAmount> {
    amounts
        .iter()
        .map(|entry| wit::BalanceAmount {
            balance: entry.balance.clone(),
            amount: entry.amount,
        })
        .collect()
}

fn amounts_from_wit(amounts: Vec<wit::BalanceAmount>) -> Vec<sdk::BalanceAmount> {
    amounts
        .into_iter()
        .map(|entry| sdk::BalanceAmount {
            balance: entry.balance,
            amount: entry.amount,
        })
        .collect()
}

fn marks_from_wit(marks: Vec<wit::Mark>) -> Vec<sdk::Mark> {
    marks
        .into_iter()
        .map(|mark| sdk::Mark {
            scope: mark.scope,
            key: mark.key,
        })
        .collect()
}

fn pairs_to_wit(pairs: &[(String, String)]) -> Vec<wit::Pair> {
    pairs
        .iter()
        .map(|(name, value)| wit::Pair {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

fn pairs_from_wit(pairs: Vec<wit::Pair>) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|pair| (pair.name, pair.value))
        .collect()
}
