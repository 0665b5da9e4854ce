//! Contract checks that hold for ANY module: run a corpus of probe requests through the
//! module directly (no ledger) and check every answer against the host's contract, and
//! measure what the calls cost. [`gate`] is what every activation (and every meter
//! opened on a given component) runs; `creditgate check` reports the same checks.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

use crate::error::MeterError;
use crate::policy::component::{CompiledPolicy, Limits};
use crate::policy::{
    AuthorizeDecision, CallCost, MarkAnswers, MarkLookup, PolicyInfo, PolicyRuntime,
    SettleDecision, sdk,
};

/// One contract check's verdict.
#[derive(Debug, Clone)]
pub struct ContractCheck {
    pub name: &'static str,
    pub rule: String,
    /// The first counter-example, if any.
    pub failure: Option<String>,
}

/// The wall-clock bound of a probe call, at least.
const PROBE_WALL_MS: u64 = 1_000;
/// `limits` with a wall-clock bound of at least [`PROBE_WALL_MS`]: what the checks run
/// calls under.
pub fn lenient_wall(limits: Limits) -> Limits {
    Limits {
        wall_ms_per_call: limits.wall_ms_per_call.max(PROBE_WALL_MS),
        ..limits
    }
}

/// A probe call may cost at most this fraction of the per-call budget.
pub const PROBE_COST_FRACTION: u64 = 2;

/// Operations every module is probed with, besides those its cases name.
const PROBE_OPERATIONS: [&str; 8] = [
    "search",
    "export",
    "enhance",
    "person.enrich",
    "company.enrich",
    "list.create",
    "profile.get",
    "probe.unknown-operation",
];

/// Keys the probe ledger says are already marked.
const MARKED_PREFIX: &str = "seen";

struct ProbeMarks;

impl MarkLookup for ProbeMarks {
    fn marked(
        &self,
        _tenant: &str,
        _scope: &str,
        keys: &[String],
        stored_keys_max: usize,
    ) -> Result<Option<MarkAnswers>, MeterError> {
        let marked: Vec<bool> = keys
            .iter()
            .map(|key| key.starts_with(MARKED_PREFIX))
            .collect();
        // A marked key is one a ledger's filter cannot rule out: it costs a store read.
        let stored_keys = marked.iter().filter(|marked| **marked).count();
        Ok((stored_keys <= stored_keys_max).then_some(MarkAnswers {
            marked,
            stored_keys,
        }))
    }
}

/// What the probe calls cost, per call: the operator sees a policy that is legal but
/// slow before it is live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CostSummary {
    pub calls: usize,
    pub fuel_p50: u64,
    pub fuel_max: u64,
    pub wall_us_p50: u64,
    pub wall_us_max: u64,
}

impl CostSummary {
    fn of(costs: &[CallCost]) -> Self {
        let mut fuel: Vec<u64> = costs.iter().map(|cost| cost.fuel).collect();
        let mut wall: Vec<u64> = costs.iter().map(|cost| cost.wall_us).collect();
        fuel.sort_unstable();
        wall.sort_unstable();
        let median = |sorted: &[u64]| sorted.get(sorted.len() / 2).copied().unwrap_or(0);
        let max = |sorted: &[u64]| sorted.last().copied().unwrap_or(0);
        Self {
            calls: costs.len(),
            fuel_p50: median(&fuel),
            fuel_max: max(&fuel),
            wall_us_p50: median(&wall),
            wall_us_max: max(&wall),
        }
    }
}

impl std::fmt::Display for CostSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cost per call ({} probe calls): fuel p50 {}, max {}; wall p50 {} µs, max {} µs",
            self.calls, self.fuel_p50, self.fuel_max, self.wall_us_p50, self.wall_us_max
        )
    }
}

/// What probing found: the checks, and what the calls cost.
pub struct Probed {
    pub checks: Vec<ContractCheck>,
    pub cost: CostSummary,
}

/// The activation gate: every contract check passes, within the cost bound; else
/// `invalid_policy`, naming each failed check.
pub fn gate(compiled: &Arc<CompiledPolicy>) -> Result<Probed, MeterError> {
    let probed = probe(compiled, &BTreeSet::new());
    let failures: Vec<String> = probed
        .checks
        .iter()
        .filter_map(|check| {
            let failure = check.failure.as_ref()?;
            Some(format!(
                "FAIL  {}  {}\n      {failure}",
                check.name, check.rule
            ))
        })
        .collect();
    if failures.is_empty() {
        return Ok(probed);
    }
    Err(MeterError::InvalidPolicy(format!(
        "it fails the contract checks:\n{}\n{}",
        probed.cost,
        failures.join("\n")
    )))
}

/// Compiles the module and runs the contract checks. `Err` when it cannot even load
/// (not a component, another WIT world or version, a `describe` that traps or lies).
pub fn check_contract(
    engine: &wasmtime::Engine,
    module: &[u8],
    limits: Limits,
    operations: &BTreeSet<String>,
) -> Result<(PolicyInfo, Probed), MeterError> {
    let compiled = CompiledPolicy::compile(engine, module, limits)?;
    let probed = probe(&compiled, operations);
    Ok((compiled.info().clone(), probed))
}

/// Runs the probe corpus through an already compiled module, under the budgets it was
/// compiled with.
pub fn probe(compiled: &Arc<CompiledPolicy>, operations: &BTreeSet<String>) -> Probed {
    let info = compiled.info().clone();
    let limits = compiled.limits();
    // Fuel is the bound a probe judges by: a probe call descheduled on a loaded machine
    // must not fail a module, so its wall-clock bound is generous and the cost check
    // below judges wall time by the median.
    let mut runtime = compiled.runtime_with(Rc::new(ProbeMarks), lenient_wall(limits));
    let mut findings = Findings::default();
    let mut costs: Vec<CallCost> = Vec::new();
    let mut all_operations: BTreeSet<&str> = PROBE_OPERATIONS.into_iter().collect();
    all_operations.extend(operations.iter().map(String::as_str));
    let item_sets: [Vec<String>; 5] = [
        vec![],
        vec!["a".into()],
        vec!["a".into(), "b".into(), "a".into()],
        (0..12).map(|i| format!("item-{i}")).collect(),
        vec![format!("{MARKED_PREFIX}-1"), "new-1".into()],
    ];
    let attribute_sets: [Vec<(String, String)>; 2] = [vec![], vec![("mode".into(), "AUD".into())]];
    // Each balance empty; overdrawn within its overdraft, under a spend cap; and every
    // figure at its extreme. What can be spent on them (0, 5, the most there is) is
    // what a module built against 0.1.0 is given.
    let balance_shapes: [(i64, i64, Option<sdk::SpendWindow>); 3] = [
        (0, 0, None),
        (
            -5,
            10,
            Some(sdk::SpendWindow {
                cap: 7,
                spent: 2,
                resets_at_ms: 3_600_000,
            }),
        ),
        (i64::MAX, i64::MAX, None),
    ];
    let outcomes: [(u16, &[(&str, &str)]); 6] = [
        (200, &[("records", "1")]),
        (200, &[("records", "0")]),
        (204, &[]),
        (404, &[]),
        (429, &[("records", "1")]),
        (500, &[]),
    ];
    let mut sequence = 0u64;
    for operation in &all_operations {
        for items in &item_sets {
            for attributes in &attribute_sets {
                for (available, overdraft_limit, spend_cap) in &balance_shapes {
                    sequence += 1;
                    let request = sdk::Request {
                        transaction_id: format!("probe-{sequence}"),
                        tenant: "probe-tenant".into(),
                        operation: (*operation).to_owned(),
                        items: items.clone(),
                        attributes: attributes.clone(),
                        body: None,
                    };
                    let balances: Vec<sdk::BalanceState> = info
                        .balances
                        .iter()
                        .map(|balance| sdk::BalanceState {
                            balance: balance.clone(),
                            available: *available,
                            overdraft_limit: *overdraft_limit,
                            spend_cap: spend_cap.clone(),
                        })
                        .collect();
                    let shape = || {
                        format!(
                            "available={available} overdraft_limit={overdraft_limit} spend_cap={spend_cap:?}"
                        )
                    };
                    let first = runtime.authorize(&request, &balances);
                    costs.push(runtime.last_cost());
                    let second = runtime.authorize(&request, &balances);
                    let context = || {
                        format!(
                            "authorize {operation} items={} attributes={attributes:?} {}",
                            items.len(),
                            shape()
                        )
                    };
                    findings.record(&first, &second, context);
                    let Ok(AuthorizeDecision::Admit {
                        admitted_items,
                        hold,
                        charge,
                        ..
                    }) = first
                    else {
                        continue;
                    };
                    let admitted = sdk::Admitted {
                        request: request.clone(),
                        admitted_items,
                        held: to_amounts(&hold),
                        charged: to_amounts(&charge),
                    };
                    for (status, attributes) in outcomes {
                        let outcome = sdk::Outcome {
                            status,
                            attributes: attributes
                                .iter()
                                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                                .collect(),
                            body: None,
                        };
                        let first = runtime.settle(&admitted, &outcome, &balances);
                        costs.push(runtime.last_cost());
                        let second = runtime.settle(&admitted, &outcome, &balances);
                        let context = || {
                            format!(
                                "settle {operation} status {status} {attributes:?} {}",
                                shape()
                            )
                        };
                        findings.record(&first, &second, context);
                    }
                }
            }
        }
    }
    let cost = CostSummary::of(&costs);
    let mut checks = findings.into_checks();
    checks.push(cost_check(&cost, limits));
    Probed { checks, cost }
}

/// A module whose probes come close to the budget is refused: live traffic, with larger
/// batches than the probes send, would exceed it. Fuel is deterministic, so its maximum
/// is the bound; wall time varies with the machine, so its median is.
fn cost_check(cost: &CostSummary, limits: Limits) -> ContractCheck {
    let fuel_max = limits.fuel_per_call / PROBE_COST_FRACTION;
    let wall_us_p50_max = limits.wall_ms_per_call.saturating_mul(1_000) / PROBE_COST_FRACTION;
    let failure = if cost.fuel_max > fuel_max {
        Some(format!(
            "a probe call burnt {} fuel; at most {fuel_max} (1/{PROBE_COST_FRACTION} of the budget)",
            cost.fuel_max
        ))
    } else if cost.wall_us_p50 > wall_us_p50_max {
        Some(format!(
            "the median probe call took {} µs; at most {wall_us_p50_max} µs (1/{PROBE_COST_FRACTION} of the wall-clock bound)",
            cost.wall_us_p50
        ))
    } else {
        None
    };
    ContractCheck {
        name: "contract/cost",
        rule: format!(
            "probe calls stay within 1/{PROBE_COST_FRACTION} of the budget: at most {fuel_max} fuel each, a median under {wall_us_p50_max} µs"
        ),
        failure,
    }
}

fn to_amounts(amounts: &crate::model::Amounts) -> Vec<sdk::BalanceAmount> {
    amounts
        .iter()
        .map(|(balance, amount)| sdk::BalanceAmount::new(balance.clone(), *amount))
        .collect()
}

/// The first counter-example of each kind.
#[derive(Default)]
struct Findings {
    invalid: Option<String>,
    nondeterministic: Option<String>,
    over_budget: Option<String>,
    trapped: Option<String>,
}

trait Decision: PartialEq + std::fmt::Debug {}
impl Decision for AuthorizeDecision {}
impl Decision for SettleDecision {}

impl Findings {
    fn record<D: Decision>(
        &mut self,
        first: &Result<D, MeterError>,
        second: &Result<D, MeterError>,
        context: impl Fn() -> String,
    ) {
        for result in [first, second] {
            let slot = match result {
                Err(MeterError::PolicyInvalidVerdict(_)) => &mut self.invalid,
                Err(error) if error.over_budget() => &mut self.over_budget,
                Err(_) => &mut self.trapped,
                Ok(_) => continue,
            };
            if slot.is_none()
                && let Err(error) = result
            {
                *slot = Some(format!("{}: {error}", context()));
            }
        }
        // Which budget a call exceeds first can depend on the machine (fuel or wall
        // time); that it exceeds one does not.
        let over_budget = |result: &Result<D, MeterError>| {
            matches!(
                result,
                Err(MeterError::PolicyFuelExhausted { .. } | MeterError::PolicyTimeExceeded { .. })
            )
        };
        let same = first == second || (over_budget(first) && over_budget(second));
        if !same && self.nondeterministic.is_none() {
            self.nondeterministic =
                Some(format!("{}: first {first:?}, then {second:?}", context()));
        }
    }

    fn into_checks(self) -> Vec<ContractCheck> {
        vec![
            ContractCheck {
                name: "contract/answers-keep-the-contract",
                rule: "no negative or overflowing hold or charge, no undescribed balance, admitted items within the batch, meta a JSON object".to_owned(),
                failure: self.invalid,
            },
            ContractCheck {
                name: "contract/deterministic",
                rule: "the same input gives the same verdict twice".to_owned(),
                failure: self.nondeterministic,
            },
            ContractCheck {
                name: "contract/within-budget",
                rule: "each call stays within its budget: fuel, wall-clock time, host-call limits"
                    .to_owned(),
                failure: self.over_budget,
            },
            ContractCheck {
                name: "contract/no-traps",
                rule: "no call traps on a well-formed request".to_owned(),
                failure: self.trapped,
            },
        ]
    }
}
