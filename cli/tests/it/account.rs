//! One tenant's credits as the tests of lots, overdraft limits and spend caps move and
//! read them: SMARTe holds and settles, the balance's figures, the journal's moves by
//! lot, and the audit.

use std::collections::BTreeMap;

use creditgate::MeterError;
use creditgate::model::{
    Authorization, AuthorizeRequest, GrantRequest, GrantTerms, SettleRequest, TenantBalances,
};

use crate::support::{TestMeter, pairs};

pub const TENANT: &str = "acme";

/// Grants `amount` on `default` under `grant_id`, with these terms.
pub fn grant(
    meter: &TestMeter,
    grant_id: &str,
    amount: i64,
    terms: GrantTerms,
) -> Result<TenantBalances, MeterError> {
    meter.meter.grant(GrantRequest {
        grant_id: grant_id.to_owned(),
        tenant: TENANT.to_owned(),
        balance: "default".to_owned(),
        amount,
        terms,
    })
}

/// SMARTe holds one credit per requested record: its answer.
pub fn enrich(meter: &TestMeter, id: &str, records: usize) -> Authorization {
    meter
        .meter
        .authorize(AuthorizeRequest {
            transaction_id: Some(id.to_owned()),
            tenant: TENANT.to_owned(),
            operation: "person.enrich".to_owned(),
            items: (0..records).map(|index| format!("r{index}")).collect(),
            attributes: BTreeMap::new(),
            body: None,
        })
        .unwrap()
}

/// Settles a SMARTe hold with this many records delivered (other policies ignore it).
pub fn settle_records(meter: &TestMeter, id: &str, records: i64) {
    meter
        .meter
        .settle(SettleRequest {
            transaction_id: id.to_owned(),
            status: 200,
            attributes: pairs(&[("records", &records.to_string())]),
            body: None,
        })
        .unwrap();
}

/// (available, held) on `default`.
pub fn figures(meter: &TestMeter) -> (i64, i64) {
    let balances = meter.meter.balances(TENANT).unwrap();
    (balances.balances["default"], balances.held["default"])
}

/// `(kind, lot, amount)` of the journal from entry `from` on; `lot` is the grant id, or
/// `own` for the account's own lot (credits granted before lots; the overdraft).
pub fn moves(meter: &TestMeter, from: usize) -> Vec<(String, String, i64)> {
    let lots = meter.meter.lots(TENANT).unwrap().lots.unwrap();
    let by_lot: BTreeMap<u64, String> = lots
        .into_iter()
        .map(|lot| (lot.lot, lot.grant_id))
        .collect();
    meter.meter.journal(TENANT, 10_000).unwrap()[from..]
        .iter()
        .map(|entry| {
            let lot = entry
                .lot
                .map_or("own".to_owned(), |lot| by_lot[&lot].clone());
            (entry.kind.clone(), lot, entry.amount)
        })
        .collect()
}

pub fn moved(rows: &[(&str, &str, i64)]) -> Vec<(String, String, i64)> {
    rows.iter()
        .map(|(kind, lot, amount)| ((*kind).to_owned(), (*lot).to_owned(), *amount))
        .collect()
}

/// The audit finds nothing: every lot matches its journal, the lots sum to the balance.
pub fn assert_sound(meter: &TestMeter) {
    let violations = meter.meter.invariant_violations().unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
}
