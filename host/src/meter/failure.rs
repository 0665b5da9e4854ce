//! What an authorize does when its policy fails: refuse (`closed`, the default) or admit
//! unpriced (`open`), as Envoy's `failure_policy` and Istio's `failStrategy` offer for
//! Wasm filters, but bounded: every open admission counts a nominal price against its
//! tenant's exposure window, and a tenant whose window is full fails closed again until
//! the window rolls over (docs/policy-budget.md, "The failure mode").
//!
//! The window is an account of the tenant's, off its balances: `exposure@START_MS`, one
//! per hour with open admissions, where each open admission writes an `open` journal
//! entry. So the exposure is as durable as any balance (restored by replay, shared by
//! PostgreSQL replicas), every account still sums to its journal, and "how much did we
//! let through unpriced" is a sum over those accounts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::error::MeterError;

/// How long one exposure window lasts: windows are whole hours of the meter's clock.
pub const EXPOSURE_WINDOW_MS: u64 = 3_600_000;

/// What a policy failure does to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// The request is refused with the failure's own error.
    #[default]
    Closed,
    /// The request is admitted unpriced, while its tenant's exposure window has room.
    Open,
}

impl FailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Closed => "closed",
            FailureMode::Open => "open",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "closed" => Some(FailureMode::Closed),
            "open" => Some(FailureMode::Open),
            _ => None,
        }
    }
}

/// The operator's choice, for the whole meter and per operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailurePolicy {
    pub mode: FailureMode,
    /// Operations whose mode differs from `mode`.
    pub per_operation: BTreeMap<String, FailureMode>,
    /// The exposure one open admission counts, in credits (> 0).
    pub open_credits_per_request: i64,
    /// The exposure a tenant may reach in one window before it fails closed, in credits.
    pub open_credits_per_tenant_per_hour: i64,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self {
            mode: FailureMode::Closed,
            per_operation: BTreeMap::new(),
            open_credits_per_request: Self::OPEN_CREDITS_PER_REQUEST,
            open_credits_per_tenant_per_hour: Self::OPEN_CREDITS_PER_TENANT_PER_HOUR,
        }
    }
}

/// Where an open admission's exposure goes, and what the window holds already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    /// The window's account: `exposure@START_MS`.
    pub account: String,
    /// Credits this admission counts.
    pub credits: i64,
}

impl FailurePolicy {
    pub const OPEN_CREDITS_PER_REQUEST: i64 = 1;
    pub const OPEN_CREDITS_PER_TENANT_PER_HOUR: i64 = 1_000;

    pub fn mode_for(&self, operation: &str) -> FailureMode {
        self.per_operation
            .get(operation)
            .copied()
            .unwrap_or(self.mode)
    }

    /// Whether an authorize of `operation` that failed with `error` is admitted open at
    /// `at_ms`, given what the window's account holds (`spent`): the exposure to record,
    /// or none (the request fails closed with `error`). Only failures of the policy
    /// open: never a bad request, a store or meter failure, or a policy's refusal.
    pub fn open_admission(
        &self,
        operation: &str,
        error: &MeterError,
        at_ms: u64,
        spent: impl FnOnce(&str) -> i64,
    ) -> Option<Exposure> {
        if !error.caused_by_policy() || self.mode_for(operation) == FailureMode::Closed {
            return None;
        }
        let account = window_account(at_ms);
        let credits = self.open_credits_per_request;
        let room = self
            .open_credits_per_tenant_per_hour
            .checked_sub(spent(&account))?;
        (credits <= room).then_some(Exposure { account, credits })
    }
}

/// What the failure mode has done since the meter opened, for `/healthz`. Counted on
/// the sequencer thread, read from any.
#[derive(Debug, Default)]
pub struct FailureCounts {
    admitted_open: AtomicU64,
    failed_closed: AtomicU64,
}

/// The failure mode and its counts, as `/healthz` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FailureStats {
    /// The meter's mode (operations may override it).
    pub mode: &'static str,
    /// Requests admitted open because their policy failed.
    pub admitted_open: u64,
    /// Requests refused because their policy failed: closed by the mode, or by a full
    /// exposure window.
    pub failed_closed: u64,
}

impl FailureCounts {
    pub fn count(&self, admitted_open: bool) {
        let counter = if admitted_open {
            &self.admitted_open
        } else {
            &self.failed_closed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self, mode: FailureMode) -> FailureStats {
        FailureStats {
            mode: mode.as_str(),
            admitted_open: self.admitted_open.load(Ordering::Relaxed),
            failed_closed: self.failed_closed.load(Ordering::Relaxed),
        }
    }
}

/// The account of the exposure window `at_ms` falls in. `@` is not allowed in a
/// balance name, so no policy's balance can be one.
pub fn window_account(at_ms: u64) -> String {
    format!("exposure@{}", at_ms - at_ms % EXPOSURE_WINDOW_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(cap: i64) -> FailurePolicy {
        FailurePolicy {
            mode: FailureMode::Open,
            open_credits_per_request: 2,
            open_credits_per_tenant_per_hour: cap,
            ..FailurePolicy::default()
        }
    }

    fn trap() -> MeterError {
        MeterError::PolicyTrap("boom".to_owned())
    }

    #[test]
    fn closed_never_opens_and_open_opens_only_on_failures_of_the_policy() {
        let at = 7_200_000 + 5;
        assert_eq!(
            FailurePolicy::default().open_admission("x", &trap(), at, |_| 0),
            None
        );
        assert_eq!(
            open(10).open_admission("x", &trap(), at, |_| 0),
            Some(Exposure {
                account: "exposure@7200000".to_owned(),
                credits: 2
            })
        );
        let budget = MeterError::PolicyBudgetExceeded {
            retry_after_ms: 1_000,
        };
        assert!(open(10).open_admission("x", &budget, at, |_| 0).is_some());
        for not_the_policy in [
            MeterError::InvalidRequest("bad".to_owned()),
            MeterError::StoreUnavailable("down".to_owned()),
            MeterError::Overloaded,
        ] {
            assert_eq!(
                open(10).open_admission("x", &not_the_policy, at, |_| 0),
                None
            );
        }
    }

    #[test]
    fn a_full_window_fails_closed_and_the_next_window_opens_again() {
        let policy = open(10);
        assert!(policy.open_admission("x", &trap(), 0, |_| 8).is_some());
        assert_eq!(policy.open_admission("x", &trap(), 0, |_| 9), None);
        assert_eq!(policy.open_admission("x", &trap(), 0, |_| i64::MIN), None);
        let next = policy.open_admission("x", &trap(), EXPOSURE_WINDOW_MS, |account| {
            if account == "exposure@0" { 10 } else { 0 }
        });
        assert_eq!(
            next.map(|exposure| exposure.account).as_deref(),
            Some("exposure@3600000")
        );
    }

    #[test]
    fn an_operation_can_differ_from_the_meter() {
        let mut policy = open(10);
        policy
            .per_operation
            .insert("export".to_owned(), FailureMode::Closed);
        assert_eq!(policy.open_admission("export", &trap(), 0, |_| 0), None);
        assert!(policy.open_admission("enrich", &trap(), 0, |_| 0).is_some());
    }
}
