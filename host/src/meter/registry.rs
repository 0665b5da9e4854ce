//! The policy registry: which policy is active, which versions are loaded (settles run
//! on the version that authorized, loaded again from the ledger by digest when needed),
//! and the shadow candidate. Lives on the sequencer thread: runtimes are not `Send`.
//!
//! Every policy call goes through here, past the tenant's [`Breakers`] entry.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::breaker::{Breakers, CallOutcome};
use super::metrics;
use super::shadow::Shadow;
use crate::error::MeterError;
use crate::model::ShadowReport;
use crate::policy::component::{CompiledPolicy, Limits};
use crate::policy::{
    AuthorizeDecision, MarkLookup, PolicyDigest, PolicyInfo, PolicyRuntime, SettleDecision, sdk,
};

pub struct Registry {
    engine: wasmtime::Engine,
    limits: Limits,
    compile_cache_dir: Option<PathBuf>,
    /// What every runtime's `marked` calls read.
    marks: Rc<dyn MarkLookup>,
    active: PolicyDigest,
    runtimes: HashMap<PolicyDigest, Box<dyn PolicyRuntime>>,
    shadow: Option<Shadow>,
    breakers: Breakers,
}

impl Registry {
    pub fn new(
        engine: wasmtime::Engine,
        limits: Limits,
        compile_cache_dir: Option<PathBuf>,
        marks: Rc<dyn MarkLookup>,
        first: Box<dyn PolicyRuntime>,
    ) -> Self {
        let active = first.info().digest;
        Self {
            engine,
            limits,
            compile_cache_dir,
            marks,
            active,
            runtimes: HashMap::from([(active, first)]),
            shadow: None,
            breakers: Breakers::new(limits.wall_ms_per_call),
        }
    }

    pub fn marks(&self) -> Rc<dyn MarkLookup> {
        Rc::clone(&self.marks)
    }

    pub fn active(&self) -> PolicyDigest {
        self.active
    }

    pub fn active_info(&self) -> Result<PolicyInfo, MeterError> {
        self.info(&self.active).cloned().ok_or_else(|| {
            MeterError::StoreUnavailable("the active policy is not loaded".to_owned())
        })
    }

    pub fn info(&self, digest: &PolicyDigest) -> Option<&PolicyInfo> {
        self.runtimes.get(digest).map(|runtime| runtime.info())
    }

    pub fn is_loaded(&self, digest: &PolicyDigest) -> bool {
        self.runtimes.contains_key(digest)
    }

    /// Compiles (or loads precompiled) a component and keeps its runtime.
    pub fn load(&mut self, bytes: &[u8]) -> Result<PolicyInfo, MeterError> {
        let compiled = CompiledPolicy::load(
            &self.engine,
            bytes,
            self.limits,
            self.compile_cache_dir.as_deref(),
        )?;
        Ok(self.install(&compiled))
    }

    fn install(&mut self, compiled: &Arc<CompiledPolicy>) -> PolicyInfo {
        let info = compiled.info().clone();
        if !self.runtimes.contains_key(&info.digest) {
            self.runtimes
                .insert(info.digest, Box::new(compiled.runtime(self.marks())));
        }
        info
    }

    /// Makes a compiled, checked policy the active one. Requests decided before used
    /// the old one; settles keep using whichever authorized.
    pub fn switch(&mut self, compiled: &Arc<CompiledPolicy>) -> PolicyInfo {
        let info = self.install(compiled);
        self.active = info.digest;
        info
    }

    /// Makes a loaded version active again (an activation that did not commit).
    pub fn restore_active(&mut self, digest: PolicyDigest) {
        if self.runtimes.contains_key(&digest) {
            self.active = digest;
        }
    }

    /// Asks `digest` to authorize, and the shadow beside it (counted only) when
    /// `shadowed` (an admission, not a quote). Refused without a call while the
    /// tenant's breaker is open.
    pub fn authorize(
        &mut self,
        digest: &PolicyDigest,
        request: &sdk::Request,
        balances: &[sdk::BalanceState],
        shadowed: bool,
    ) -> Result<AuthorizeDecision, MeterError> {
        let tenant = &request.tenant;
        self.breakers.admit(tenant, Instant::now())?;
        let runtime = self
            .runtimes
            .get_mut(digest)
            .ok_or_else(|| not_loaded(digest))?;
        let decision = runtime.authorize(request, balances);
        let cost = runtime.last_cost();
        metrics::policy_call("authorize", cost);
        self.breakers
            .record(tenant, Instant::now(), cost, CallOutcome::of(&decision));
        let decision = decision?;
        if let Some(shadow) = self
            .shadow
            .as_mut()
            .filter(|shadow| shadowed && shadow.is_running())
        {
            // The candidate sees exactly what the active policy saw.
            let candidate = shadow.runtime.authorize(request, balances);
            shadow.count_cost(&candidate, self.limits.wall_ms_per_call);
            shadow.observe_authorize(
                &request.transaction_id,
                tenant,
                &request.operation,
                &decision,
                candidate,
            );
        }
        Ok(decision)
    }

    /// Asks `digest` to settle, and the shadow beside it (counted only). Refused
    /// without a call while the tenant's breaker is open.
    pub fn settle(
        &mut self,
        digest: &PolicyDigest,
        admitted: &sdk::Admitted,
        outcome: &sdk::Outcome,
        balances: &[sdk::BalanceState],
    ) -> Result<SettleDecision, MeterError> {
        let tenant = &admitted.request.tenant;
        self.breakers.admit(tenant, Instant::now())?;
        let runtime = self
            .runtimes
            .get_mut(digest)
            .ok_or_else(|| not_loaded(digest))?;
        let decision = runtime.settle(admitted, outcome, balances);
        let cost = runtime.last_cost();
        metrics::policy_call("settle", cost);
        self.breakers
            .record(tenant, Instant::now(), cost, CallOutcome::of(&decision));
        let decision = decision?;
        if let Some(shadow) = self.shadow.as_mut().filter(|shadow| shadow.is_running()) {
            let candidate = shadow.runtime.settle(admitted, outcome, balances);
            shadow.count_cost(&candidate, self.limits.wall_ms_per_call);
            shadow.observe_settle(
                &admitted.request.transaction_id,
                tenant,
                &admitted.request.operation,
                &decision,
                candidate,
            );
        }
        Ok(decision)
    }

    /// Drops the runtimes no open transaction needs, keeping the active one.
    pub fn unload_unused(&mut self, needed: &BTreeSet<[u8; 32]>) {
        let active = self.active;
        self.runtimes
            .retain(|digest, _| *digest == active || needed.contains(&digest.bytes()));
    }

    /// The digests of the versions loaded now.
    pub fn loaded(&self) -> Vec<String> {
        let mut loaded: Vec<String> = self.runtimes.keys().map(ToString::to_string).collect();
        loaded.sort();
        loaded
    }

    pub fn set_shadow(
        &mut self,
        compiled: &Arc<CompiledPolicy>,
        component: Vec<u8>,
        since_ms: u64,
    ) -> ShadowReport {
        let shadow = Shadow::new(
            Box::new(compiled.runtime(self.marks())),
            component,
            since_ms,
        );
        let report = shadow.report.clone();
        self.shadow = Some(shadow);
        report
    }

    pub fn shadow_report(&self) -> Option<ShadowReport> {
        self.shadow.as_ref().map(|shadow| shadow.report.clone())
    }

    /// Stops shadowing; answers the candidate's bytes (to promote them).
    pub fn take_shadow(&mut self) -> Option<Vec<u8>> {
        self.shadow.take().map(|shadow| shadow.component)
    }
}

fn not_loaded(digest: &PolicyDigest) -> MeterError {
    MeterError::StoreUnavailable(format!("policy {digest} is not loaded"))
}
