//! Policies as WebAssembly components, run by wasmtime.
//!
//! - Compiled once per module ([`CompiledPolicy`], shareable across threads); each
//!   deciding thread keeps one reused [`ComponentRuntime`] instance and replaces it
//!   after a trap, because a trapped instance may hold broken state.
//! - Versioned: a module is called through the contract it was built against, 0.1.0 or
//!   0.2.0 ([`ContractVersion`]), told at load by the names of the interfaces it imports
//!   and exports; any other version refuses the load. A 0.1.0 module is given, for each
//!   balance, what can be spent on it ([`sdk::BalanceState::spendable`]).
//! - Sandboxed: the only import provided is the read-only `ledger`, besides an empty
//!   `wasi:cli/environment` and a fixed stream of "random" bytes ([`super::wasi`]),
//!   which guest runtimes read as they start; any other WASI import a guest declares is
//!   linked to a function that traps, so a policy gets no files, network, clock or real
//!   randomness. Any other import refuses the load. An instance may have at most
//!   [`CORE_INSTANCES_MAX`] core instances, [`TABLES_MAX`] tables and [`MEMORIES_MAX`]
//!   memories: room for CPython and QuickJS guests, no more.
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

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store, StoreContextMut, StoreLimits, StoreLimitsBuilder, Trap};

use super::contract::{check_settlement, check_verdict};
use super::wasi::{self, GuestEntropy};
use super::{
    AuthorizeDecision, CallCost, ContractVersion, MarkAnswers, MarkLookup, PolicyDigest,
    PolicyInfo, PolicyRuntime, SettleDecision, sdk,
};
use crate::error::MeterError;

/// The bindings of each contract version the host implements. 0.1.0's records are
/// 0.2.0's, shape for shape (0.2.0 only adds `balance-state` and `spend-window`), so
/// 0.1.0's bindings use 0.2.0's Rust types and one set of conversions serves both:
/// wasmtime checks a record against the component by its fields, not its name.
mod bindings {
    /// `creditgate:policy@0.2.0`: `wit/policy.wit`.
    pub mod v0_2 {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "policy",
            imports: { default: trappable },
        });
    }

    /// `creditgate:policy@0.1.0`: `wit/0.1.0/policy.wit`, frozen.
    pub mod v0_1 {
        wasmtime::component::bindgen!({
            path: "../wit/0.1.0",
            world: "policy",
            imports: { default: trappable },
            with: { "creditgate:policy/types@0.1.0": super::v0_2::creditgate::policy::types },
        });
    }
}

use bindings::v0_2::creditgate::policy::types as wit;

/// The contract's namespace: every `creditgate:` name a component imports or exports
/// must be one of the interfaces below.
const CONTRACT_PREFIX: &str = "creditgate:";
/// The contract's interfaces, named `INTERFACE@VERSION` in a component: it may import
/// `ledger` and `types`, and exports `pricing`.
const LEDGER_INTERFACE: &str = "creditgate:policy/ledger";
const TYPES_INTERFACE: &str = "creditgate:policy/types";
const PRICING_INTERFACE: &str = "creditgate:policy/pricing";
const MARKED_FUNCTION: &str = "marked";
/// The prefix of the imports a policy may declare but never gets (linked to traps).
const TRAPPED_IMPORT_PREFIX: &str = "wasi:";

/// Fuel one `marked` key costs: hashing it and probing the in-memory marks and filter
/// (estimated ~0.1 µs; a unit of fuel is ~0.5 ns of a guest's tight loop here).
pub const FUEL_PER_MARK_KEY: u64 = 200;
/// Fuel one `marked` key costs when memory cannot answer it and the store is read (an
/// indexed SQLite read, estimated ~5 µs when its pages are cached).
pub const FUEL_PER_STORED_MARK_KEY: u64 = 10_000;
/// Core wasm instances one policy instance may create. A Rust policy has 1 to 3; a
/// componentize-py guest with its WASI stubs 38; componentize-qjs a handful.
pub const CORE_INSTANCES_MAX: usize = 64;
/// Tables one policy instance may create: at most one per core instance.
pub const TABLES_MAX: usize = 64;
/// Linear memories one policy instance may create (CPython and its adapter have two);
/// each is bounded by [`Limits::memory_bytes_max`].
pub const MEMORIES_MAX: usize = 8;
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
    /// The instance's "random" bytes, restarted with it ([`super::wasi`]).
    entropy: rand_chacha::ChaCha12Rng,
}

impl GuestEntropy for HostState {
    fn entropy(&mut self) -> &mut rand_chacha::ChaCha12Rng {
        &mut self.entropy
    }
}

/// A call went past one of [`Limits`]' bounds on host work.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct HostLimitExceeded(pub(super) String);

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
    pre: PolicyPre,
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
    /// Compiles component bytes, tells from its imports and exports which contract
    /// version it was built against (refusing one the host does not implement), links
    /// it to that version's world, and reads its `describe`.
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
        let contract = contract_of(engine, &component)?;
        let ledger_import = format!("{LEDGER_INTERFACE}@{contract}");
        for (name, _item) in component.component_type().imports(engine) {
            if !name.starts_with(CONTRACT_PREFIX) && !name.starts_with(TRAPPED_IMPORT_PREFIX) {
                return Err(load_error(format!(
                    "the component imports '{name}', which the host does not provide; \
                     policies may import only {ledger_import}"
                )));
            }
        }
        let mut linker = Linker::<HostState>::new(engine);
        let link_error =
            |error: wasmtime::Error| load_error(format!("cannot link the ledger import: {error}"));
        // `types` holds records only: its instance is empty.
        linker
            .instance(&format!("{TYPES_INTERFACE}@{contract}"))
            .map_err(link_error)?;
        linker
            .instance(&ledger_import)
            .and_then(|mut ledger| ledger.func_wrap(MARKED_FUNCTION, marked))
            .map_err(link_error)?;
        wasi::link(&mut linker, &component)
            .map_err(|error| load_error(format!("cannot link the WASI answers: {error}")))?;
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|error| load_error(format!("cannot stub the WASI imports: {error}")))?;
        let instance_pre = linker.instantiate_pre(&component).map_err(|error| {
            load_error(format!(
                "the component does not fit the creditgate:policy@{contract} world: {error:#}"
            ))
        })?;
        let pre = PolicyPre::new(contract, instance_pre).map_err(|error| {
            load_error(format!(
                "the component does not export {PRICING_INTERFACE}@{contract}: {error:#}"
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
        let (description, _cost) = probe.call(|bindings, store| bindings.describe(store));
        let description =
            description.map_err(|error| load_error(format!("describe failed: {error}")))?;
        // A description that breaks the contract refuses the module (422), like any
        // other reason a module cannot be loaded.
        let info =
            PolicyInfo::from_description(description_from_wit(description), digest, contract)
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

/// The contract version a component was built against, from the `creditgate:` names
/// it imports (`ledger`, `types`) and exports (`pricing`): each must name an interface
/// of a version the host implements, and all the same version.
fn contract_of(engine: &Engine, component: &Component) -> Result<ContractVersion, MeterError> {
    let component_type = component.component_type();
    let imported: &[&str] = &[LEDGER_INTERFACE, TYPES_INTERFACE];
    let exported: &[&str] = &[PRICING_INTERFACE];
    let names = component_type
        .imports(engine)
        .map(|(name, _)| (name, imported))
        .chain(
            component_type
                .exports(engine)
                .map(|(name, _)| (name, exported)),
        );
    let mut contract = None;
    for (name, interfaces) in names {
        if !name.starts_with(CONTRACT_PREFIX) {
            continue;
        }
        let version = name
            .split_once('@')
            .filter(|(interface, _)| interfaces.contains(interface))
            .and_then(|(_, version)| ContractVersion::parse(version))
            .ok_or_else(|| {
                load_error(format!(
                    "the component was built against '{name}'; this host implements {} \
                     (rebuild the policy against wit/policy.wit)",
                    ContractVersion::implemented()
                ))
            })?;
        match contract {
            Some(seen) if seen != version => {
                return Err(load_error(format!(
                    "the component mixes contract versions {seen} and {version}"
                )));
            }
            _ => contract = Some(version),
        }
    }
    contract.ok_or_else(|| {
        load_error(format!(
            "the component does not export {PRICING_INTERFACE}; this host implements {}",
            ContractVersion::implemented()
        ))
    })
}

/// A component linked and ready to instantiate, through the bindings of its contract.
enum PolicyPre {
    V0_1(bindings::v0_1::PolicyPre<HostState>),
    V0_2(bindings::v0_2::PolicyPre<HostState>),
}

impl PolicyPre {
    fn new(
        contract: ContractVersion,
        instance_pre: wasmtime::component::InstancePre<HostState>,
    ) -> wasmtime::Result<Self> {
        Ok(match contract {
            ContractVersion::V0_1_0 => Self::V0_1(bindings::v0_1::PolicyPre::new(instance_pre)?),
            ContractVersion::V0_2_0 => Self::V0_2(bindings::v0_2::PolicyPre::new(instance_pre)?),
        })
    }

    fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Bindings> {
        Ok(match self {
            Self::V0_1(pre) => Bindings::V0_1(pre.instantiate(store)?),
            Self::V0_2(pre) => Bindings::V0_2(pre.instantiate(store)?),
        })
    }
}

/// An instance's exports, called through its contract: each call takes the host's
/// view of the balances and gives the policy what its contract says it sees.
enum Bindings {
    V0_1(bindings::v0_1::Policy),
    V0_2(bindings::v0_2::Policy),
}

impl Bindings {
    fn describe(&self, store: &mut Store<HostState>) -> wasmtime::Result<wit::Description> {
        match self {
            Self::V0_1(policy) => policy.creditgate_policy_pricing().call_describe(store),
            Self::V0_2(policy) => policy.creditgate_policy_pricing().call_describe(store),
        }
    }

    fn authorize(
        &self,
        store: &mut Store<HostState>,
        request: &wit::Request,
        balances: &[sdk::BalanceState],
    ) -> wasmtime::Result<wit::Verdict> {
        match self {
            Self::V0_1(policy) => policy.creditgate_policy_pricing().call_authorize(
                store,
                request,
                &spendable_amounts(balances),
            ),
            Self::V0_2(policy) => policy.creditgate_policy_pricing().call_authorize(
                store,
                request,
                &states_to_wit(balances),
            ),
        }
    }

    fn settle(
        &self,
        store: &mut Store<HostState>,
        admitted: &wit::Admitted,
        outcome: &wit::Outcome,
        balances: &[sdk::BalanceState],
    ) -> wasmtime::Result<wit::Settlement> {
        match self {
            Self::V0_1(policy) => policy.creditgate_policy_pricing().call_settle(
                store,
                admitted,
                outcome,
                &spendable_amounts(balances),
            ),
            Self::V0_2(policy) => policy.creditgate_policy_pricing().call_settle(
                store,
                admitted,
                outcome,
                &states_to_wit(balances),
            ),
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
    bindings: Bindings,
}

/// wasmtime's message when a lift would copy more than the store's hostcall fuel (its
/// error type is private; a unit test below keeps this in step with wasmtime).
const LIFT_BOUND_MESSAGE: &str = "too much data is being copied between the host and the guest";

impl Instance {
    fn new(
        engine: &Engine,
        pre: &PolicyPre,
        limits: Limits,
        marks: Rc<dyn MarkLookup>,
    ) -> Result<Self, MeterError> {
        let state = HostState {
            store_limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes_max)
                .instances(CORE_INSTANCES_MAX)
                .tables(TABLES_MAX)
                .memories(MEMORIES_MAX)
                .build(),
            limits,
            marks,
            tenant: String::new(),
            lookups: 0,
            entropy: wasi::entropy(),
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
        call: impl FnOnce(&Bindings, &mut Store<HostState>) -> wasmtime::Result<R>,
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
                    "{cause}: policies get no WASI but an empty environment and fixed \
                     random bytes (no files, clock, network or stdio)"
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
        call: impl FnOnce(&Bindings, &mut Store<HostState>) -> wasmtime::Result<R>,
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
        balances: &[sdk::BalanceState],
    ) -> Result<AuthorizeDecision, MeterError> {
        let wit_request = request_to_wit(request);
        let verdict = self.call(&request.tenant, |bindings, store| {
            bindings.authorize(store, &wit_request, balances)
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
        balances: &[sdk::BalanceState],
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
        let settlement = self.call(&admitted.request.tenant, |bindings, store| {
            bindings.settle(store, &wit_admitted, &wit_outcome, balances)
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

fn states_to_wit(states: &[sdk::BalanceState]) -> Vec<wit::BalanceState> {
    states
        .iter()
        .map(|state| wit::BalanceState {
            balance: state.balance.clone(),
            available: state.available,
            overdraft_limit: state.overdraft_limit,
            spend_cap: state.spend_cap.as_ref().map(|window| wit::SpendWindow {
                cap: window.cap,
                spent: window.spent,
                resets_at_ms: window.resets_at_ms,
            }),
        })
        .collect()
}

/// What a 0.1.0 module is given as each balance's `balance-amount`: what can be spent
/// on it (`available + overdraft_limit`, within the spend cap, never negative), so that
/// an old policy admits what the host would let it spend.
fn spendable_amounts(states: &[sdk::BalanceState]) -> Vec<wit::BalanceAmount> {
    states
        .iter()
        .map(|state| wit::BalanceAmount {
            balance: state.balance.clone(),
            amount: state.spendable(),
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(available: i64, overdraft_limit: i64, cap: Option<(i64, i64)>) -> sdk::BalanceState {
        sdk::BalanceState {
            balance: "default".to_owned(),
            available,
            overdraft_limit,
            spend_cap: cap.map(|(cap, spent)| sdk::SpendWindow {
                cap,
                spent,
                resets_at_ms: 60_000,
            }),
        }
    }

    fn amounts(states: &[sdk::BalanceState]) -> Vec<i64> {
        spendable_amounts(states)
            .into_iter()
            .map(|amount| amount.amount)
            .collect()
    }

    #[test]
    fn a_0_1_0_module_is_given_what_it_may_spend_available_plus_overdraft_within_the_cap() {
        assert_eq!(amounts(&[state(7, 0, None)]), [7]);
        assert_eq!(amounts(&[state(7, 5, None)]), [12]);
        assert_eq!(amounts(&[state(-3, 5, None)]), [2]);
        assert_eq!(amounts(&[state(7, 5, Some((10, 6)))]), [4]);
        assert_eq!(amounts(&[state(-8, 5, None)]), [0]);
        assert_eq!(amounts(&[state(7, 5, Some((10, 12)))]), [0]);
        assert_eq!(amounts(&[state(i64::MAX, i64::MAX, None)]), [i64::MAX]);
        let named = spendable_amounts(&[sdk::BalanceState::new("export", 2)]);
        assert_eq!(named[0].balance, "export");
    }

    #[test]
    fn a_0_2_0_module_is_given_every_figure_as_it_is() {
        let given = states_to_wit(&[state(-3, 5, Some((10, 6)))]);
        assert_eq!(given.len(), 1);
        assert_eq!((given[0].available, given[0].overdraft_limit), (-3, 5));
        let window = given[0].spend_cap.as_ref().unwrap();
        assert_eq!(
            (window.cap, window.spent, window.resets_at_ms),
            (10, 6, 60_000)
        );
        assert!(states_to_wit(&[state(1, 0, None)])[0].spend_cap.is_none());
    }
}
