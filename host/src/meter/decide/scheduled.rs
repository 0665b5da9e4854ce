//! Grants that take effect later ([`docs/credits.md`](../../../../docs/credits.md), part
//! 1): recorded pending when asked for, granted by the sweep at their time (a `grant`
//! entry and its lot, like any grant, in the batch that records the schedule's end),
//! voided before, or refused when their time came but their lot could not be granted.

use super::Decider;
use crate::error::MeterError;
use crate::ledger::record::{Decision, LotTerms};
use crate::ledger::scheduled::{ScheduledGrant, ScheduledState};
use crate::model::{GrantRequest, GrantTerms, ScheduledGrantView, TenantBalances};

/// Whether a grant request asks for what was scheduled under its id.
pub(super) fn same_request(
    scheduled: &ScheduledGrant,
    grant: &GrantRequest,
    terms: &LotTerms,
) -> bool {
    (
        scheduled.tenant.as_str(),
        scheduled.balance.as_str(),
        scheduled.amount,
        &scheduled.terms,
        Some(scheduled.effective_at_ms),
    ) == (
        grant.tenant.as_str(),
        grant.balance.as_str(),
        grant.amount,
        terms,
        grant.terms.effective_at_ms,
    )
}

impl Decider<'_> {
    /// Records a grant that takes effect at `effective_at_ms` (later than now): nothing
    /// moves until then.
    pub(super) fn schedule(
        &mut self,
        grant: &GrantRequest,
        terms: LotTerms,
        effective_at_ms: i64,
    ) -> Result<TenantBalances, MeterError> {
        self.builder.record(
            self.state,
            Decision::Schedule(ScheduledGrant {
                grant_id: grant.grant_id.clone(),
                tenant: grant.tenant.clone(),
                balance: grant.balance.clone(),
                amount: grant.amount,
                terms,
                effective_at_ms,
                state: ScheduledState::Pending,
            }),
        )?;
        self.balances(&grant.tenant)
    }

    /// Grants the scheduled grants whose time came, at most `limit`; returns how many
    /// were due. One the ledger cannot grant (its balance is no longer the policy's, or
    /// would pass the largest amount) is recorded refused with a warning, so the sweep
    /// does not try it at every batch.
    pub(super) fn grant_due_scheduled(&mut self, limit: usize) -> Result<usize, MeterError> {
        let now_ms = i64::try_from(self.builder.batch.at_ms).unwrap_or(i64::MAX);
        let mut due = 0;
        while due < limit {
            let Some(scheduled) = self.state.next_due_scheduled(now_ms) else {
                break;
            };
            let request = GrantRequest {
                grant_id: scheduled.grant_id.clone(),
                tenant: scheduled.tenant.clone(),
                balance: scheduled.balance.clone(),
                amount: scheduled.amount,
                terms: GrantTerms::default(),
            };
            let state = match self.grant_lot(&request, scheduled.terms.clone()) {
                Ok(_) => ScheduledState::Granted,
                Err(error @ (MeterError::UnknownBalance { .. } | MeterError::InvalidAmount(_))) => {
                    tracing::warn!(
                        tenant = scheduled.tenant,
                        grant = scheduled.grant_id,
                        %error,
                        "a scheduled grant was refused at its time; nothing granted"
                    );
                    ScheduledState::Refused
                }
                Err(error) => return Err(error),
            };
            self.builder.record(
                self.state,
                Decision::Schedule(ScheduledGrant { state, ..scheduled }),
            )?;
            due += 1;
        }
        if due > 0 {
            tracing::info!(count = due, "granted scheduled grants");
        }
        Ok(due)
    }

    /// Voids a grant before it takes effect: it never will, and its id stays taken.
    /// Voiding one voided or refused moves nothing.
    pub(super) fn void_scheduled(
        &mut self,
        scheduled: ScheduledGrant,
    ) -> Result<TenantBalances, MeterError> {
        let tenant = scheduled.tenant.clone();
        if scheduled.state == ScheduledState::Pending {
            self.builder.record(
                self.state,
                Decision::Schedule(ScheduledGrant {
                    state: ScheduledState::Voided,
                    ..scheduled
                }),
            )?;
        }
        self.balances(&tenant)
    }

    /// The tenant's grants that take effect later, as `?lots=true` lists them.
    pub(super) fn scheduled_views(&self, tenant: &str) -> Vec<ScheduledGrantView> {
        self.state
            .tenant_scheduled(tenant)
            .into_iter()
            .map(|grant| ScheduledGrantView {
                grant_id: grant.grant_id.clone(),
                balance: grant.balance.clone(),
                amount: grant.amount,
                effective_at_ms: grant.effective_at_ms,
                state: grant.state.as_str().to_owned(),
                expires_at_ms: grant.terms.expires_at_ms,
                priority: grant.terms.priority,
                category: grant.terms.category.clone(),
                metadata: grant.terms.metadata.iter().cloned().collect(),
            })
            .collect()
    }
}
