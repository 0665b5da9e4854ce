//! Contract checks that hold for ANY module: run a corpus of probe requests through the
//! module directly (no ledger) and check every answer against the host's contract.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

use crate::error::MeterError;
use crate::policy::component::{CompiledPolicy, Limits};
use crate::policy::{
    AuthorizeDecision, MarkAnswers, MarkLookup, PolicyInfo, PolicyRuntime, SettleDecision, sdk,
};

/// One contract check's verdict.
#[derive(Debug, Clone)]
pub struct ContractCheck {
    pub name: &'static str,
    pub rule: &'static str,
    /// The first counter-example, if any.
    pub failure: Option<String>,
}

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

/// Compiles the module and runs the contract checks. `Err` when it cannot even load
/// (not a component, another WIT world or version, a `describe` that traps or lies).
pub fn check_contract(
    engine: &wasmtime::Engine,
    module: &[u8],
    limits: Limits,
    operations: &BTreeSet<String>,
) -> Result<(PolicyInfo, Vec<ContractCheck>), MeterError> {
    let compiled = CompiledPolicy::compile(engine, module, limits)?;
    let checks = probe(&compiled, operations);
    Ok((compiled.info().clone(), checks))
}

/// Runs the probe corpus through an already compiled module.
pub fn probe(compiled: &Arc<CompiledPolicy>, operations: &BTreeSet<String>) -> Vec<ContractCheck> {
    let info = compiled.info().clone();
    let mut runtime = compiled.runtime(Rc::new(ProbeMarks));
    let mut findings = Findings::default();
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
    let amounts = [0, 5, i64::MAX];
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
                for amount in amounts {
                    sequence += 1;
                    let request = sdk::Request {
                        transaction_id: format!("probe-{sequence}"),
                        tenant: "probe-tenant".into(),
                        operation: (*operation).to_owned(),
                        items: items.clone(),
                        attributes: attributes.clone(),
                        body: None,
                    };
                    let balances: Vec<sdk::BalanceAmount> = info
                        .balances
                        .iter()
                        .map(|balance| sdk::BalanceAmount::new(balance.clone(), amount))
                        .collect();
                    let first = runtime.authorize(&request, &balances);
                    let second = runtime.authorize(&request, &balances);
                    let context = || {
                        format!(
                            "authorize {operation} items={} attributes={attributes:?} balances={amount}",
                            items.len()
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
                        let second = runtime.settle(&admitted, &outcome, &balances);
                        let context = || {
                            format!(
                                "settle {operation} status {status} {attributes:?} balances={amount}"
                            )
                        };
                        findings.record(&first, &second, context);
                    }
                }
            }
        }
    }
    findings.into_checks()
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
                Err(MeterError::PolicyFuelExhausted { .. }) => &mut self.over_budget,
                Err(_) => &mut self.trapped,
                Ok(_) => continue,
            };
            if slot.is_none()
                && let Err(error) = result
            {
                *slot = Some(format!("{}: {error}", context()));
            }
        }
        if first != second && self.nondeterministic.is_none() {
            self.nondeterministic =
                Some(format!("{}: first {first:?}, then {second:?}", context()));
        }
    }

    fn into_checks(self) -> Vec<ContractCheck> {
        vec![
            ContractCheck {
                name: "contract/answers-keep-the-contract",
                rule: "no negative or overflowing hold or charge, no undescribed balance, admitted items within the batch, meta a JSON object",
                failure: self.invalid,
            },
            ContractCheck {
                name: "contract/deterministic",
                rule: "the same input gives the same verdict twice",
                failure: self.nondeterministic,
            },
            ContractCheck {
                name: "contract/within-cpu-budget",
                rule: "each call stays within its fuel budget",
                failure: self.over_budget,
            },
            ContractCheck {
                name: "contract/no-traps",
                rule: "no call traps on a well-formed request",
                failure: self.trapped,
            },
        ]
    }
}
