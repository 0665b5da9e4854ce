//! What callers send the sequencer, each command with a reply of its own type, and the
//! answers that wait for their batch to be durable.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::decide::CheckedAuthorize;
use crate::error::MeterError;
use crate::ledger::caps::CapTerms;
use crate::ledger::events::Thresholds;
use crate::ledger::refills::RefillTerms;
use crate::ledger::state::FilterBytes;
use crate::model::{
    Authorization, GrantRequest, Receipt, RefillView, SettleRequest, ShadowReport, TenantBalances,
};
use crate::policy::PolicyInfo;
use crate::policy::component::CompiledPolicy;
use crate::store::AuditPoint;

pub type Reply<T> = oneshot::Sender<Result<T, MeterError>>;

pub enum Command {
    Authorize(CheckedAuthorize, Reply<Authorization>),
    /// What an authorize would answer now, with nothing recorded.
    Quote(CheckedAuthorize, Reply<Authorization>),
    Settle(SettleRequest, Reply<Receipt>),
    Grant(GrantRequest, Reply<TenantBalances>),
    /// A tenant's credits as of every decision queued before.
    Balances(String, Reply<TenantBalances>),
    /// A tenant's credits with their lots, as of every decision queued before.
    Lots(String, Reply<TenantBalances>),
    /// Void a tenant's grant: its lot's unspent credits leave.
    Void {
        tenant: String,
        grant_id: String,
        reply: Reply<TenantBalances>,
    },
    /// Set an account's overdraft limit.
    Overdraft {
        tenant: String,
        balance: String,
        limit: i64,
        reply: Reply<TenantBalances>,
    },
    /// Set (or, with none, remove) an account's spend cap.
    SpendCap {
        tenant: String,
        balance: String,
        cap: Option<CapTerms>,
        reply: Reply<TenantBalances>,
    },
    /// Set (or, with none, remove) what an operator watches on an account.
    Thresholds {
        tenant: String,
        balance: String,
        thresholds: Option<Thresholds>,
        reply: Reply<TenantBalances>,
    },
    /// Set (or, with none, remove) a tenant's refill; the anchor is the request's, if
    /// it names one.
    Refill {
        tenant: String,
        refill_id: String,
        refill: Option<RefillTerms>,
        anchor_ms: Option<i64>,
        reply: Reply<Vec<RefillView>>,
    },
    /// A tenant's refills.
    Refills(String, Reply<Vec<RefillView>>),
    /// Release every lapsed hold and expire every lot due now; answers how many holds.
    ExpireDue(Reply<usize>),
    /// Make a compiled, checked policy the active one, between two decisions.
    Activate {
        compiled: Arc<CompiledPolicy>,
        component: Vec<u8>,
        via: String,
        reply: Reply<PolicyInfo>,
    },
    /// Make a policy another replica activated the active one here, between two
    /// decisions, recording nothing: the activation is in the shared ledger already.
    Adopt {
        compiled: Arc<CompiledPolicy>,
        reply: Reply<PolicyInfo>,
    },
    /// Evaluate a candidate beside the active policy from now on, moving no credit.
    SetShadow {
        compiled: Arc<CompiledPolicy>,
        component: Vec<u8>,
        reply: Reply<ShadowReport>,
    },
    ShadowReport(Reply<Option<ShadowReport>>),
    /// Stop shadowing; answers the candidate's bytes (to promote them).
    TakeShadow(Reply<Option<Vec<u8>>>),
    /// The digests of the policies loaded now.
    LoadedPolicies(Reply<Vec<String>>),
    /// The live accounts and where the log is, for the audit.
    Audit(Reply<AuditPoint>),
    /// The bytes of the live state's filters now.
    Filters(Reply<FilterBytes>),
}

impl Command {
    /// Bytes of the request the command carries, for the batch's size bound.
    pub fn request_bytes(&self) -> usize {
        match self {
            Command::Authorize(checked, _) | Command::Quote(checked, _) => {
                let request = &checked.request;
                request.items.iter().map(String::len).sum::<usize>()
                    + request
                        .attributes
                        .iter()
                        .map(|(name, value)| name.len() + value.len())
                        .sum::<usize>()
                    + request.body.as_ref().map_or(0, Vec::len)
                    + 256
            }
            Command::Settle(request, _) => request.body.as_ref().map_or(0, Vec::len) + 256,
            Command::Activate { component, .. } => component.len(),
            _ => 64,
        }
    }

    /// Fails the command without running it.
    pub fn refuse(self, error: MeterError) {
        match self {
            Command::Authorize(_, reply) | Command::Quote(_, reply) => drop(reply.send(Err(error))),
            Command::Settle(_, reply) => drop(reply.send(Err(error))),
            Command::Grant(_, reply)
            | Command::Balances(_, reply)
            | Command::Lots(_, reply)
            | Command::Void { reply, .. }
            | Command::Overdraft { reply, .. }
            | Command::SpendCap { reply, .. }
            | Command::Thresholds { reply, .. } => drop(reply.send(Err(error))),
            Command::Refill { reply, .. } | Command::Refills(_, reply) => {
                drop(reply.send(Err(error)))
            }
            Command::ExpireDue(reply) => drop(reply.send(Err(error))),
            Command::Activate { reply, .. } | Command::Adopt { reply, .. } => {
                drop(reply.send(Err(error)))
            }
            Command::SetShadow { reply, .. } => drop(reply.send(Err(error))),
            Command::ShadowReport(reply) => drop(reply.send(Err(error))),
            Command::TakeShadow(reply) => drop(reply.send(Err(error))),
            Command::LoadedPolicies(reply) => drop(reply.send(Err(error))),
            Command::Audit(reply) => drop(reply.send(Err(error))),
            Command::Filters(reply) => drop(reply.send(Err(error))),
        }
    }
}

/// Sends an answer, or the error given in its place.
type Answerer = Box<dyn FnOnce(Option<&MeterError>) + Send>;

/// An answer held until its batch is durable: sends the answer, or the error that
/// kept the batch from becoming durable.
pub struct Pending(Answerer);

impl Pending {
    pub fn new<T: Send + 'static>(reply: Reply<T>, result: Result<T, MeterError>) -> Self {
        Self(Box::new(move |failure| {
            let _ = reply.send(match failure {
                Some(error) => Err(error.clone()),
                None => result,
            });
        }))
    }

    /// Sends the answer, or `failure` in its place.
    pub fn answer(self, failure: Option<&MeterError>) {
        (self.0)(failure);
    }
}
