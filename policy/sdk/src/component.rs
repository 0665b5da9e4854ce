//! The component glue (wasm32 only): WIT bindings and conversions between the WIT
//! records and the plain types of this crate. Policy authors reach it only through
//! [`export_policy!`](crate::export_policy).
#![allow(unsafe_code)] // generated ABI code

use crate::{Ledger, Policy};

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy",
    pub_export_macro: true,
    export_macro_name: "export_bindings",
    default_bindings_module: "creditgate_policy_sdk::component",
});

use creditgate::policy::types as wit;
pub use exports::creditgate::policy::pricing::Guest;
pub use wit::{
    Admitted as WitAdmitted, BalanceState as WitBalanceState, Description as WitDescription,
    Outcome as WitOutcome, Request as WitRequest, Settlement as WitSettlement,
    Verdict as WitVerdict,
};

/// The host's `ledger` import, as a [`Ledger`].
struct HostLedger;

impl Ledger for HostLedger {
    fn marked(&self, scope: &str, keys: &[String]) -> Vec<bool> {
        creditgate::policy::ledger::marked(scope, keys)
    }
}

pub fn describe<P: Policy>() -> wit::Description {
    let description = P::describe();
    wit::Description {
        name: description.name,
        version: description.version,
        balances: description.balances,
        hold_ttl_ms: description.hold_ttl_ms,
    }
}

pub fn authorize<P: Policy>(
    request: wit::Request,
    balances: Vec<wit::BalanceState>,
) -> wit::Verdict {
    let request = request_from_wit(request);
    match P::authorize(&request, &states_from_wit(balances), &HostLedger) {
        crate::Verdict::Reject(rejection) => wit::Verdict::Reject(wit::Rejection {
            status: rejection.status,
            code: rejection.code,
            message: rejection.message,
        }),
        crate::Verdict::Admit(admission) => wit::Verdict::Admit(wit::Admission {
            status: admission.status,
            admitted_items: admission.admitted_items,
            hold: amounts_to_wit(admission.hold),
            charge: amounts_to_wit(admission.charge),
            marks: marks_to_wit(admission.marks),
            headers: pairs_to_wit(admission.headers),
            meta_json: admission.meta_json,
        }),
    }
}

pub fn settle<P: Policy>(
    admitted: wit::Admitted,
    outcome: wit::Outcome,
    balances: Vec<wit::BalanceState>,
) -> wit::Settlement {
    let admitted = crate::Admitted {
        request: request_from_wit(admitted.request),
        admitted_items: admitted.admitted_items,
        held: amounts_from_wit(admitted.held),
        charged: amounts_from_wit(admitted.charged),
    };
    let outcome = crate::Outcome {
        status: outcome.status,
        attributes: pairs_from_wit(outcome.attributes),
        body: outcome.body,
    };
    let settlement = P::settle(&admitted, &outcome, &states_from_wit(balances), &HostLedger);
    wit::Settlement {
        charge: amounts_to_wit(settlement.charge),
        marks: marks_to_wit(settlement.marks),
        headers: pairs_to_wit(settlement.headers),
        meta_json: settlement.meta_json,
    }
}

fn request_from_wit(request: wit::Request) -> crate::Request {
    crate::Request {
        transaction_id: request.transaction_id,
        tenant: request.tenant,
        operation: request.operation,
        items: request.items,
        attributes: pairs_from_wit(request.attributes),
        body: request.body,
    }
}

fn states_from_wit(states: Vec<wit::BalanceState>) -> Vec<crate::BalanceState> {
    states
        .into_iter()
        .map(|state| crate::BalanceState {
            balance: state.balance,
            available: state.available,
            overdraft_limit: state.overdraft_limit,
            spend_cap: state.spend_cap.map(|window| crate::SpendWindow {
                cap: window.cap,
                spent: window.spent,
                resets_at_ms: window.resets_at_ms,
            }),
        })
        .collect()
}

fn amounts_from_wit(amounts: Vec<wit::BalanceAmount>) -> Vec<crate::BalanceAmount> {
    amounts
        .into_iter()
        .map(|entry| crate::BalanceAmount {
            balance: entry.balance,
            amount: entry.amount,
        })
        .collect()
}

fn amounts_to_wit(amounts: Vec<crate::BalanceAmount>) -> Vec<wit::BalanceAmount> {
    amounts
        .into_iter()
        .map(|entry| wit::BalanceAmount {
            balance: entry.balance,
            amount: entry.amount,
        })
        .collect()
}

fn marks_to_wit(marks: Vec<crate::Mark>) -> Vec<wit::Mark> {
    marks
        .into_iter()
        .map(|mark| wit::Mark {
            scope: mark.scope,
            key: mark.key,
        })
        .collect()
}

fn pairs_from_wit(pairs: Vec<wit::Pair>) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|pair| (pair.name, pair.value))
        .collect()
}

fn pairs_to_wit(pairs: Vec<(String, String)>) -> Vec<wit::Pair> {
    pairs
        .into_iter()
        .map(|(name, value)| wit::Pair { name, value })
        .collect()
}
