//! Shadow evaluation: a candidate policy decides every authorize and settle beside the
//! active one, moving no credit; the differences are counted per kind and per tenant,
//! with examples (Envoy's shadow rules, for billing).

use crate::error::MeterError;
use crate::model::{Amounts, PolicyRef, ShadowExample, ShadowReport, TenantDifferences};
use crate::policy::{AuthorizeDecision, PolicyRuntime, SettleDecision};

/// Bounds on what a report keeps (TigerBeetle: a limit on everything).
const EXAMPLES_MAX: usize = 20;
const TENANTS_MAX: usize = 10_000;
/// Calls over budget, or slower than half the wall bound, after which the candidate is
/// no longer run: a shadow must never slow the active path for long.
pub const SHADOW_STRIKES_MAX: u64 = 16;

/// The candidate and what it has disagreed on so far.
pub(super) struct Shadow {
    pub runtime: Box<dyn PolicyRuntime>,
    pub component: Vec<u8>,
    pub report: ShadowReport,
}

impl Shadow {
    pub fn new(runtime: Box<dyn PolicyRuntime>, component: Vec<u8>, since_ms: u64) -> Self {
        let info = runtime.info();
        let report = ShadowReport {
            shadow: PolicyRef {
                name: info.name.clone(),
                version: info.version.clone(),
                digest: info.digest.to_string(),
            },
            since_ms,
            ..ShadowReport::default()
        };
        Self {
            runtime,
            component,
            report,
        }
    }

    /// Whether the candidate is still run (it stops past [`SHADOW_STRIKES_MAX`]).
    pub fn is_running(&self) -> bool {
        self.report.stopped.is_none()
    }

    /// Counts a candidate's call that went over budget or ran slow; past the bound, the
    /// candidate stops and the report says why.
    pub fn count_cost<T>(&mut self, result: &Result<T, MeterError>, wall_ms_per_call: u64) {
        let cost = self.runtime.last_cost();
        let slow = cost.wall_us > wall_ms_per_call.saturating_mul(1_000) / 2;
        let over_budget = result.as_ref().err().is_some_and(MeterError::over_budget);
        if !over_budget && !slow {
            return;
        }
        self.report.over_budget += 1;
        if self.report.over_budget >= SHADOW_STRIKES_MAX {
            let reason = format!(
                "stopped after {SHADOW_STRIKES_MAX} calls over budget or slower than {} ms",
                wall_ms_per_call / 2
            );
            tracing::warn!(shadow = %self.report.shadow.digest, %reason, "shadow policy stopped");
            self.report.stopped = Some(reason);
        }
    }

    /// Compares the candidate's verdict with the active one's for the same request.
    pub fn observe_authorize(
        &mut self,
        transaction_id: &str,
        tenant: &str,
        operation: &str,
        active: &AuthorizeDecision,
        shadow: Result<AuthorizeDecision, MeterError>,
    ) {
        self.report.authorizes_compared += 1;
        let (active_admitted, active_items, active_moved) = summary(active);
        let (kind, moved_delta, shadow_text) = match &shadow {
            Err(error) => (Some("shadow_failed"), Amounts::new(), error.to_string()),
            Ok(decision) => {
                let (admitted, items, moved) = summary(decision);
                let kind = if admitted != active_admitted {
                    Some("admit_vs_reject")
                } else if items != active_items {
                    Some("admitted_items")
                } else if moved != active_moved {
                    Some("charges")
                } else {
                    None
                };
                (kind, delta(&active_moved, &moved), describe(decision))
            }
        };
        let Some(kind) = kind else { return };
        self.report.authorize_differences += 1;
        *self.report.by_kind.entry(kind.to_owned()).or_insert(0) += 1;
        add(&mut self.report.authorize_charge_delta, &moved_delta);
        if let Some(entry) = self.tenant(tenant) {
            entry.authorize += 1;
            add(&mut entry.charge_delta, &moved_delta);
        }
        self.example(
            transaction_id,
            tenant,
            operation,
            "authorize",
            describe(active),
            shadow_text,
        );
    }

    /// Compares the candidate's settlement with the one that was applied.
    pub fn observe_settle(
        &mut self,
        transaction_id: &str,
        tenant: &str,
        operation: &str,
        active: &SettleDecision,
        shadow: Result<SettleDecision, MeterError>,
    ) {
        self.report.settles_compared += 1;
        let (kind, charge_delta, shadow_text) = match &shadow {
            Err(error) => (Some("shadow_failed"), Amounts::new(), error.to_string()),
            Ok(decision) if decision.charge != active.charge => (
                Some("charges"),
                delta(&active.charge, &decision.charge),
                format!("charge {:?}", decision.charge),
            ),
            Ok(_) => (None, Amounts::new(), String::new()),
        };
        let Some(kind) = kind else { return };
        self.report.settle_differences += 1;
        *self.report.by_kind.entry(kind.to_owned()).or_insert(0) += 1;
        add(&mut self.report.settle_charge_delta, &charge_delta);
        if let Some(entry) = self.tenant(tenant) {
            entry.settle += 1;
            add(&mut entry.charge_delta, &charge_delta);
        }
        let active_text = format!("charge {:?}", active.charge);
        self.example(
            transaction_id,
            tenant,
            operation,
            "settle",
            active_text,
            shadow_text,
        );
    }

    fn tenant(&mut self, tenant: &str) -> Option<&mut TenantDifferences> {
        let by_tenant = &mut self.report.by_tenant;
        if by_tenant.len() >= TENANTS_MAX && !by_tenant.contains_key(tenant) {
            self.report.tenants_not_itemized += 1;
            return None;
        }
        Some(by_tenant.entry(tenant.to_owned()).or_default())
    }

    fn example(
        &mut self,
        transaction_id: &str,
        tenant: &str,
        operation: &str,
        step: &str,
        active: String,
        shadow: String,
    ) {
        if self.report.examples.len() < EXAMPLES_MAX {
            self.report.examples.push(ShadowExample {
                transaction_id: transaction_id.to_owned(),
                tenant: tenant.to_owned(),
                operation: operation.to_owned(),
                step: step.to_owned(),
                active,
                shadow,
            });
        }
    }
}

/// Adds what the shadow saw on replica `replica` (its heartbeat's report, of the same
/// shadow setting) to `into`, within the same bounds on tenants and examples.
pub fn add_replica_report(into: &mut ShadowReport, replica: &str, other: ShadowReport) {
    into.since_ms = into.since_ms.min(other.since_ms);
    into.authorizes_compared += other.authorizes_compared;
    into.settles_compared += other.settles_compared;
    into.authorize_differences += other.authorize_differences;
    into.settle_differences += other.settle_differences;
    for (kind, count) in other.by_kind {
        *into.by_kind.entry(kind).or_insert(0) += count;
    }
    add(
        &mut into.authorize_charge_delta,
        &other.authorize_charge_delta,
    );
    add(&mut into.settle_charge_delta, &other.settle_charge_delta);
    into.tenants_not_itemized += other.tenants_not_itemized;
    for (tenant, differences) in other.by_tenant {
        let fits = into.by_tenant.len() < TENANTS_MAX || into.by_tenant.contains_key(&tenant);
        if !fits {
            into.tenants_not_itemized += 1;
            continue;
        }
        let entry = into.by_tenant.entry(tenant).or_default();
        entry.authorize += differences.authorize;
        entry.settle += differences.settle;
        add(&mut entry.charge_delta, &differences.charge_delta);
    }
    let room = EXAMPLES_MAX.saturating_sub(into.examples.len());
    into.examples.extend(other.examples.into_iter().take(room));
    into.over_budget += other.over_budget;
    if into.stopped.is_none() {
        into.stopped = other
            .stopped
            .map(|why| format!("on replica {replica}: {why}"));
    }
    into.replicas.push(replica.to_owned());
}

/// (admitted, admitted items, credits moved now: hold + charge per balance).
fn summary(decision: &AuthorizeDecision) -> (bool, u32, Amounts) {
    match decision {
        AuthorizeDecision::Reject { .. } => (false, 0, Amounts::new()),
        AuthorizeDecision::Admit {
            admitted_items,
            hold,
            charge,
            ..
        } => {
            let mut moved = hold.clone();
            add(&mut moved, charge);
            (true, *admitted_items, moved)
        }
    }
}

fn describe(decision: &AuthorizeDecision) -> String {
    match decision {
        AuthorizeDecision::Reject { status, code, .. } => format!("reject {status} {code}"),
        AuthorizeDecision::Admit {
            admitted_items,
            hold,
            charge,
            ..
        } => format!("admit {admitted_items} items, hold {hold:?}, charge {charge:?}"),
    }
}

/// Per balance, shadow minus active.
fn delta(active: &Amounts, shadow: &Amounts) -> Amounts {
    let mut difference: Amounts = shadow.clone();
    for (balance, amount) in active {
        let entry = difference.entry(balance.clone()).or_insert(0);
        *entry = entry.saturating_sub(*amount);
    }
    difference.retain(|_, amount| *amount != 0);
    difference
}

fn add(total: &mut Amounts, amounts: &Amounts) {
    for (balance, amount) in amounts {
        let entry = total.entry(balance.clone()).or_insert(0);
        *entry = entry.saturating_add(*amount);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_of(tenants: std::ops::Range<usize>, examples: usize) -> ShadowReport {
        let mut report = ShadowReport {
            since_ms: 10 + tenants.start as u64,
            authorizes_compared: tenants.len() as u64,
            authorize_differences: tenants.len() as u64,
            ..ShadowReport::default()
        };
        report
            .by_kind
            .insert("charges".into(), tenants.len() as u64);
        report
            .authorize_charge_delta
            .insert("default".into(), tenants.len() as i64);
        for tenant in tenants {
            report.by_tenant.insert(
                format!("t{tenant}"),
                TenantDifferences {
                    authorize: 1,
                    settle: 0,
                    charge_delta: [("default".to_owned(), 1)].into(),
                },
            );
        }
        report.examples = (0..examples)
            .map(|n| ShadowExample {
                transaction_id: format!("x{n}"),
                tenant: "t0".into(),
                operation: "op".into(),
                step: "authorize".into(),
                active: String::new(),
                shadow: String::new(),
            })
            .collect();
        report
    }

    #[test]
    fn replicas_reports_add_up_within_the_reports_bounds() {
        let mut ours = report_of(0..TENANTS_MAX - 1, EXAMPLES_MAX - 5);
        let theirs = report_of(TENANTS_MAX - 3..TENANTS_MAX + 2, 10);
        add_replica_report(&mut ours, "two", theirs);
        assert_eq!(ours.authorizes_compared, (TENANTS_MAX - 1 + 5) as u64);
        assert_eq!(ours.by_kind["charges"], (TENANTS_MAX - 1 + 5) as u64);
        assert_eq!(
            ours.authorize_charge_delta["default"],
            (TENANTS_MAX - 1 + 5) as i64
        );
        assert_eq!(ours.since_ms, 10);
        // Two tenants both saw, one new that fits, two past the bound.
        assert_eq!(ours.by_tenant.len(), TENANTS_MAX);
        assert_eq!(
            ours.by_tenant[&format!("t{}", TENANTS_MAX - 2)].authorize,
            2
        );
        assert_eq!(ours.tenants_not_itemized, 2);
        assert_eq!(ours.examples.len(), EXAMPLES_MAX);
        assert_eq!(ours.replicas, ["two"]);
    }
}
