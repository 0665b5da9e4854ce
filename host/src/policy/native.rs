//! The reference policies linked natively, without the wasm sandbox: the same rules
//! (the same crates), so the benchmark can put a price on the sandbox.

use std::marker::PhantomData;
use std::rc::Rc;
use std::time::Instant;

use super::contract::{check_settlement, check_verdict};
use super::{
    AuthorizeDecision, CallCost, ContractVersion, MarkLookup, PolicyDigest, PolicyInfo,
    PolicyRuntime, SettleDecision, sdk,
};
use crate::error::MeterError;

/// A [`sdk::Policy`] type run in process, checked by the same contract as a component.
pub struct NativeRuntime<P> {
    info: PolicyInfo,
    marks: Rc<dyn MarkLookup>,
    /// Wall time only: native code burns no fuel.
    last_cost: CallCost,
    policy: PhantomData<P>,
}

impl<P: sdk::Policy> NativeRuntime<P> {
    /// `digest_seed` names the native build in the journal (it has no component bytes).
    pub fn new(digest_seed: &str, marks: Rc<dyn MarkLookup>) -> Result<Self, MeterError> {
        let digest = PolicyDigest::of(format!("native:{digest_seed}").as_bytes());
        Ok(Self {
            // Native code sees the SDK's types: the latest contract's.
            info: PolicyInfo::from_description(P::describe(), digest, ContractVersion::LATEST)?,
            marks,
            last_cost: CallCost::default(),
            policy: PhantomData,
        })
    }
}

/// The mark lookup of one tenant, as the SDK's [`sdk::Ledger`].
struct TenantMarks<'a> {
    marks: &'a dyn MarkLookup,
    tenant: &'a str,
    failure: std::cell::RefCell<Option<MeterError>>,
}

impl sdk::Ledger for TenantMarks<'_> {
    fn marked(&self, scope: &str, keys: &[String]) -> Vec<bool> {
        // Native code is not metered: the store may be read for every key.
        match self.marks.marked(self.tenant, scope, keys, usize::MAX) {
            Ok(Some(answers)) => answers.marked,
            Ok(None) => vec![false; keys.len()],
            Err(error) => {
                self.failure.replace(Some(error));
                vec![false; keys.len()]
            }
        }
    }
}

impl<'a> TenantMarks<'a> {
    fn new(marks: &'a dyn MarkLookup, tenant: &'a str) -> Self {
        Self {
            marks,
            tenant,
            failure: std::cell::RefCell::new(None),
        }
    }

    /// A store failure during the call fails the call, as a trap would in wasm.
    fn finish<T>(self, result: T) -> Result<T, MeterError> {
        match self.failure.into_inner() {
            Some(error) => Err(error),
            None => Ok(result),
        }
    }
}

impl<P: sdk::Policy> PolicyRuntime for NativeRuntime<P> {
    fn info(&self) -> &PolicyInfo {
        &self.info
    }

    fn last_cost(&self) -> CallCost {
        self.last_cost
    }

    fn authorize(
        &mut self,
        request: &sdk::Request,
        balances: &[sdk::BalanceState],
    ) -> Result<AuthorizeDecision, MeterError> {
        let started = Instant::now();
        let ledger = TenantMarks::new(self.marks.as_ref(), &request.tenant);
        let verdict = P::authorize(request, balances, &ledger);
        self.last_cost = CallCost::since(started, 0);
        check_verdict(&self.info, request.items.len(), ledger.finish(verdict)?)
    }

    fn settle(
        &mut self,
        admitted: &sdk::Admitted,
        outcome: &sdk::Outcome,
        balances: &[sdk::BalanceState],
    ) -> Result<SettleDecision, MeterError> {
        let started = Instant::now();
        let ledger = TenantMarks::new(self.marks.as_ref(), &admitted.request.tenant);
        let settlement = P::settle(admitted, outcome, balances, &ledger);
        self.last_cost = CallCost::since(started, 0);
        check_settlement(&self.info, ledger.finish(settlement)?)
    }
}
