//! A breaker per tenant on the cost of its policy calls, so that one tenant whose calls
//! keep burning their budget cannot keep the sequencer from everyone else
//! (docs/policy-budget.md).
//!
//! A strike is a call that failed (a trap, a verdict that breaks the contract, a bound
//! passed: each costs the sequencer, a trap a fresh instance too) or that cost more than
//! half of the wall bound. [`STRIKES_TO_OPEN`] strikes in a row open the
//! breaker: the tenant's calls are refused without running until the cool-off ends.
//! Then one call runs (decisions are serial, so "one" needs no bookkeeping): a clean
//! call closes the breaker, a strike opens it again for twice as long.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::error::MeterError;
use crate::policy::CallCost;

/// Strikes in a row that open a closed breaker.
pub const STRIKES_TO_OPEN: u32 = 3;
/// The first cool-off, and the longest.
pub const COOL_OFF_FIRST: Duration = Duration::from_secs(1);
pub const COOL_OFF_MAX: Duration = Duration::from_secs(60);
/// Tenants tracked at once: those with strikes or an open breaker.
pub const TENANTS_MAX: usize = 100_000;

/// Whether a call's outcome counts against its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// Answered: judged by its cost alone.
    Ran,
    /// The policy failed: trapped, broke the contract or passed a bound.
    Failed,
}

impl CallOutcome {
    pub fn of<T>(result: &Result<T, MeterError>) -> Self {
        match result {
            Err(error) if error.caused_by_policy() => CallOutcome::Failed,
            _ => CallOutcome::Ran,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Breaker {
    strikes: u32,
    /// Set once the breaker has opened: until when, and for how long it was.
    open: Option<(Instant, Duration)>,
}

/// Every tenant's breaker. Lives on the sequencer thread.
#[derive(Debug)]
pub struct Breakers {
    tenants: HashMap<String, Breaker>,
    /// A call slower than this is a strike even when it answered.
    slow_call_us: u64,
}

impl Breakers {
    /// Breakers for calls bounded at `wall_ms_per_call`.
    pub fn new(wall_ms_per_call: u64) -> Self {
        Self {
            tenants: HashMap::new(),
            slow_call_us: wall_ms_per_call.saturating_mul(1_000) / 2,
        }
    }

    /// Refuses the tenant's call while its breaker is open.
    pub fn admit(&self, tenant: &str, now: Instant) -> Result<(), MeterError> {
        match self.tenants.get(tenant).and_then(|breaker| breaker.open) {
            Some((until, _)) if until > now => Err(MeterError::PolicyBudgetExceeded {
                retry_after_ms: u64::try_from((until - now).as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            }),
            _ => Ok(()),
        }
    }

    /// Counts a call that ran.
    pub fn record(&mut self, tenant: &str, now: Instant, cost: CallCost, outcome: CallOutcome) {
        let strike = outcome == CallOutcome::Failed || cost.wall_us > self.slow_call_us;
        if !strike {
            self.tenants.remove(tenant);
            return;
        }
        if !self.tenants.contains_key(tenant) && self.tenants.len() >= TENANTS_MAX {
            // Make room from tenants that are not refused now; if every tracked tenant
            // is, this one's strike goes uncounted (its calls stay bounded one by one).
            self.tenants
                .retain(|_, breaker| breaker.open.is_some_and(|(until, _)| until > now));
            if self.tenants.len() >= TENANTS_MAX {
                return;
            }
        }
        let breaker = self.tenants.entry(tenant.to_owned()).or_insert(Breaker {
            strikes: 0,
            open: None,
        });
        breaker.strikes = breaker.strikes.saturating_add(1);
        let cool_off = match breaker.open {
            // A strike after a cool-off: open again, for twice as long.
            Some((_, last)) => Some((last * 2).min(COOL_OFF_MAX)),
            None if breaker.strikes >= STRIKES_TO_OPEN => Some(COOL_OFF_FIRST),
            None => None,
        };
        if let Some(cool_off) = cool_off {
            tracing::warn!(
                tenant,
                cool_off_ms = cool_off.as_millis(),
                "the tenant's policy calls keep failing or exceeding their budget; refusing them for a while"
            );
            breaker.open = Some((now + cool_off, cool_off));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALL_MS: u64 = 20;

    fn clean() -> CallCost {
        CallCost {
            fuel: 1_000,
            wall_us: 10,
        }
    }

    fn slow() -> CallCost {
        CallCost {
            fuel: 1_000,
            wall_us: WALL_MS * 1_000 / 2 + 1,
        }
    }

    fn retry_after_ms(breakers: &Breakers, tenant: &str, now: Instant) -> Option<u64> {
        breakers
            .admit(tenant, now)
            .err()
            .and_then(|error| error.retry_after_ms())
    }

    #[test]
    fn strikes_in_a_row_open_the_breaker_for_that_tenant_only() {
        let mut breakers = Breakers::new(WALL_MS);
        let now = Instant::now();
        for _ in 0..STRIKES_TO_OPEN - 1 {
            breakers.record("slow", now, clean(), CallOutcome::Failed);
            assert!(breakers.admit("slow", now).is_ok());
        }
        breakers.record("slow", now, slow(), CallOutcome::Ran);
        assert_eq!(retry_after_ms(&breakers, "slow", now), Some(1_000));
        assert!(breakers.admit("other", now).is_ok());
    }

    #[test]
    fn a_clean_call_resets_the_count() {
        let mut breakers = Breakers::new(WALL_MS);
        let now = Instant::now();
        for _ in 0..10 {
            breakers.record("t", now, slow(), CallOutcome::Ran);
            breakers.record("t", now, clean(), CallOutcome::Ran);
        }
        assert!(breakers.admit("t", now).is_ok());
    }

    #[test]
    fn after_the_cool_off_one_call_decides_and_a_strike_doubles_it() {
        let mut breakers = Breakers::new(WALL_MS);
        let mut now = Instant::now();
        for _ in 0..STRIKES_TO_OPEN {
            breakers.record("t", now, clean(), CallOutcome::Failed);
        }
        let mut expected = COOL_OFF_FIRST;
        for _ in 0..10 {
            now += expected;
            assert!(
                breakers.admit("t", now).is_ok(),
                "half-open lets one through"
            );
            breakers.record("t", now, clean(), CallOutcome::Failed);
            expected = (expected * 2).min(COOL_OFF_MAX);
            assert_eq!(
                retry_after_ms(&breakers, "t", now),
                Some(u64::try_from(expected.as_millis()).unwrap())
            );
        }
        now += expected;
        breakers.record("t", now, clean(), CallOutcome::Ran);
        assert!(breakers.admit("t", now).is_ok(), "a clean call closes it");
        breakers.record("t", now, clean(), CallOutcome::Failed);
        assert!(
            breakers.admit("t", now).is_ok(),
            "and the count starts again"
        );
    }

    #[test]
    fn failures_of_the_policy_are_strikes_and_others_are_not() {
        for error in [
            MeterError::PolicyTrap("x".to_owned()),
            MeterError::PolicyInvalidVerdict("x".to_owned()),
            MeterError::PolicyFuelExhausted { fuel: 1 },
            MeterError::PolicyTimeExceeded { ms: 1 },
            MeterError::PolicyHostLimit("x".to_owned()),
        ] {
            assert_eq!(CallOutcome::of::<()>(&Err(error)), CallOutcome::Failed);
        }
        for error in [
            MeterError::StoreUnavailable("x".to_owned()),
            MeterError::InvalidRequest("x".to_owned()),
        ] {
            assert_eq!(CallOutcome::of::<()>(&Err(error)), CallOutcome::Ran);
        }
        assert_eq!(CallOutcome::of(&Ok(())), CallOutcome::Ran);
    }
}
