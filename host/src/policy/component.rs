//! Policies as WebAssembly components, run by wasmtime.
//!
//! - Compiled once per module ([`CompiledPolicy`], shareable across threads); each
//!   deciding thread keeps one reused [`ComponentRuntime`] instance and replaces it
//!   after a trap, because a trapped instance may hold broken state.
//! - Sandboxed: the only import provided is the read-only `ledger`; any WASI import a
//!   std guest declares is linked to a function that traps, so a policy gets no files,
//!   network, environment, clock or randomness. Any other import refuses the load.
//! - Bounded: each call gets [`Limits::fuel_per_call`] units of fuel (deterministic
//!   CPU accounting: the same call always costs the same) and at most
//!   [`Limits::memory_bytes_max`] of linear memory.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};

use super::contract::{check_settlement, check_verdict};
use super::{
    AuthorizeDecision, MarkLookup, PolicyDigest, PolicyInfo, PolicyRuntime, SettleDecision, sdk,
};
use crate::error::MeterError;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        imports: { default: trappable },
    });
}

use bindings::creditgate::policy::{ledger, types as wit};

/// The interface every policy imports, and the prefix of those it may import but never
/// gets (linked to traps).
const LEDGER_IMPORT: &str = "creditgate:policy/ledger@0.1.0";
const TYPES_IMPORT: &str = "creditgate:policy/types@0.1.0";
const TRAPPED_IMPORT_PREFIX: &str = "wasi:";

/// Per-call resource bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel for one describe, authorize or settle call (about one unit per wasm
    /// instruction).
    pub fuel_per_call: u64,
    /// Linear memory a policy instance may grow to.
    pub memory_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel_per_call: 20_000_000,
            memory_bytes_max: 64 << 20,
        }
    }
}

/// The wasmtime engine every policy compiles on: fuel metering on, Cranelift at speed.
pub fn engine() -> Result<Engine, MeterError> {
    let mut config = Config::new();
    config.consume_fuel(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    Engine::new(&config).map_err(|error| load_error(format!("cannot start wasmtime: {error}")))
}

fn load_error(message: String) -> MeterError {
    MeterError::InvalidPolicy(message)
}

/// What a policy call's store carries: its resource limits, and the ledger view.
struct HostState {
    limits: StoreLimits,
    marks: Rc<dyn MarkLookup>,
    /// The tenant of the call in progress: `marked` answers for this tenant only.
    tenant: String,
}

impl ledger::Host for HostState {
    fn marked(&mut self, scope: String, keys: Vec<String>) -> wasmtime::Result<Vec<bool>> {
        self.marks
            .marked(&self.tenant, &scope, &keys)
            .map_err(|error| wasmtime::Error::msg(error.to_string()))
    }
}

impl wit::Host for HostState {}

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
        bindings::Policy::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| {
            state
        })
        .map_err(|error| load_error(format!("cannot link the ledger import: {error}")))?;
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
        let mut probe = Instance::new(engine, &pre, limits, Rc::new(NoMarks))?;
        let description = probe
            .call(limits, |bindings, store| {
                bindings.creditgate_policy_pricing().call_describe(store)
            })
            .map_err(|error| load_error(format!("describe failed: {error}")))?;
        let info = PolicyInfo::from_description(description_from_wit(description), digest)?;
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

    /// A runtime for one thread, whose `marked` calls go to `marks`.
    pub fn runtime(self: &Arc<Self>, marks: Rc<dyn MarkLookup>) -> ComponentRuntime {
        ComponentRuntime {
            compiled: Arc::clone(self),
            marks,
            instance: None,
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
    ) -> Result<Vec<bool>, MeterError> {
        Err(MeterError::PolicyInvalidVerdict(
            "describe called the ledger".to_owned(),
        ))
    }
}

struct Instance {
    store: Store<HostState>,
    bindings: bindings::Policy,
}

impl Instance {
    fn new(
        engine: &Engine,
        pre: &bindings::PolicyPre<HostState>,
        limits: Limits,
        marks: Rc<dyn MarkLookup>,
    ) -> Result<Self, MeterError> {
        let state = HostState {
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes_max)
                .instances(16)
                .tables(16)
                .memories(4)
                .build(),
            marks,
            tenant: String::new(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limits);
        store
            .set_fuel(limits.fuel_per_call)
            .map_err(|error| MeterError::PolicyTrap(error.to_string()))?;
        let bindings = pre
            .instantiate(&mut store)
            .map_err(|error| MeterError::PolicyTrap(format!("instantiation failed: {error:#}")))?;
        Ok(Self { store, bindings })
    }

    /// Runs one export with a fresh fuel budget, mapping traps to meter errors.
    fn call<R>(
        &mut self,
        limits: Limits,
        call: impl FnOnce(&bindings::Policy, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, MeterError> {
        self.store
            .set_fuel(limits.fuel_per_call)
            .map_err(|error| MeterError::PolicyTrap(error.to_string()))?;
        call(&self.bindings, &mut self.store).map_err(|error| {
            tracing::debug!(error = format!("{error:?}"), "policy call failed");
            match error.downcast_ref::<Trap>() {
                Some(Trap::OutOfFuel) => MeterError::PolicyFuelExhausted {
                    fuel: limits.fuel_per_call,
                },
                // One line for the client; the wasm backtrace goes to the debug log.
                Some(trap) => MeterError::PolicyTrap(format!("wasm trap: {trap}")),
                None => {
                    let cause = error.root_cause().to_string();
                    if cause.contains("unknown import") {
                        MeterError::PolicyTrap(format!(
                            "{cause}: policies get no WASI (files, environment, clock, \
                             randomness); note that a Rust panic reads the environment first"
                        ))
                    } else {
                        MeterError::PolicyTrap(cause)
                    }
                }
            }
        })
    }
}

/// One thread's reusable instance of a compiled policy.
pub struct ComponentRuntime {
    compiled: Arc<CompiledPolicy>,
    marks: Rc<dyn MarkLookup>,
    /// None until first use, and again after a trap.
    instance: Option<Instance>,
}

impl ComponentRuntime {
    fn call<R>(
        &mut self,
        tenant: &str,
        call: impl FnOnce(&bindings::Policy, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, MeterError> {
        let compiled = &self.compiled;
        let instance = match &mut self.instance {
            Some(instance) => instance,
            empty => empty.insert(Instance::new(
                &compiled.engine,
                &compiled.pre,
                compiled.limits,
                Rc::clone(&self.marks),
            )?),
        };
        instance.store.data_mut().tenant.clear();
        instance.store.data_mut().tenant.push_str(tenant);
        let result = instance.call(compiled.limits, call);
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
