//! Quotes (docs/gateways.md, "Quote"): what authorize would answer now, on the live
//! balances, with nothing recorded, held or marked; through the library, over HTTP and
//! on PostgreSQL, with the DonorAtlas policy (charges at acceptance, marks each donor
//! it exports).

use std::collections::BTreeMap;

use creditgate::meter::failure::{FailureMode, FailurePolicy};
use creditgate::store::scratch::ScratchStore;
use serde_json::json;

use crate::support::{Gate, TestMeter, amounts, component};

const TENANT: &str = "partner";
const PERSONS: [&str; 5] = ["p1", "p2", "p3", "p4", "p5"];

crate::rules_both_ways!("donoratlas": a_quote_answers_what_authorize_then_answers_and_moves_nothing, a_quote_marks_nothing_so_a_new_donor_stays_new, a_quote_of_a_known_transaction_answers_its_recorded_answer, a_refusal_is_quoted_as_authorize_gives_it);

fn a_quote_answers_what_authorize_then_answers_and_moves_nothing(meter: &dyn Gate) {
    meter.grant(TENANT, "enhancement", 3);
    let quote = meter
        .try_quote("e1", TENANT, "enhance", &PERSONS)
        .expect("quote");
    assert!(quote.quote);
    assert!(quote.authorization.admitted);
    assert_eq!(quote.authorization.admitted_items, 3);
    assert_eq!(quote.authorization.charged, amounts(&[("enhancement", 3)]));
    assert_eq!(quote.authorization.balances["enhancement"], 0);

    // Nothing moved, nothing is held, and no transaction was recorded.
    let balances = meter.balances(TENANT);
    assert_eq!(balances.balances["enhancement"], 3);
    assert!(
        balances.held.values().all(|held| *held == 0),
        "{balances:?}"
    );
    let unknown = meter
        .transaction("e1")
        .expect_err("a quote records nothing");
    assert_eq!(unknown.status(), 404, "{unknown}");

    // Quoted again: the same answer. Then authorized: the same answer again, and now
    // the credits move.
    let again = meter
        .try_quote("e1", TENANT, "enhance", &PERSONS)
        .expect("quote");
    assert_eq!(again, quote);
    let answer = meter.authorize("e1", TENANT, "enhance", &PERSONS, &[]);
    assert_eq!(answer, quote.authorization);
    assert_eq!(meter.available(TENANT, "enhancement"), 0);
    meter.assert_sound();
}

fn a_quote_marks_nothing_so_a_new_donor_stays_new(meter: &dyn Gate) {
    meter.grant(TENANT, "export", 5);
    for id in ["q1", "q2"] {
        let quote = meter
            .try_quote(id, TENANT, "export", &["d1", "d2"])
            .expect("quote");
        assert_eq!(
            quote.authorization.charged,
            amounts(&[("export", 2)]),
            "{id}"
        );
    }
    let exported = meter.authorize("x1", TENANT, "export", &["d1", "d2"], &[]);
    assert_eq!(exported.charged, amounts(&[("export", 2)]));
    // d1 is marked by the export, not by the quotes: only d3 is new.
    let quote = meter
        .try_quote("q3", TENANT, "export", &["d1", "d3"])
        .expect("quote");
    assert_eq!(quote.authorization.charged, amounts(&[("export", 1)]));
    assert_eq!(
        quote.authorization.meta,
        json!({"credits_used": 1, "exports_remaining": 2})
    );
    assert_eq!(meter.available(TENANT, "export"), 3);
    meter.assert_sound();
}

fn a_quote_of_a_known_transaction_answers_its_recorded_answer(meter: &dyn Gate) {
    meter.grant(TENANT, "enhancement", 5);
    let answer = meter.authorize("e1", TENANT, "enhance", &["p1", "p2"], &[]);
    let quote = meter
        .try_quote("e1", TENANT, "enhance", &["p1", "p2"])
        .expect("quote");
    assert_eq!(quote.authorization, answer);
    assert_eq!(meter.available(TENANT, "enhancement"), 3);
    // Another request under the same id is the conflict authorize would answer.
    let quoted = meter
        .try_quote("e1", TENANT, "enhance", &["p3"])
        .expect_err("conflict");
    let authorized = meter
        .try_authorize("e1", TENANT, "enhance", &["p3"], &[])
        .expect_err("conflict");
    assert_eq!(
        (quoted.status(), quoted.code()),
        (authorized.status(), authorized.code())
    );
    assert_eq!(quoted.code(), "transaction_conflict");
    meter.assert_sound();
}

fn a_refusal_is_quoted_as_authorize_gives_it(meter: &dyn Gate) {
    meter.grant(TENANT, "export", 1);
    let quote = meter
        .try_quote("e1", TENANT, "enhance", &["p1"])
        .expect("quote");
    assert!(quote.quote && !quote.authorization.admitted);
    assert_eq!(quote.authorization.status, Some(402));
    let unknown = meter
        .transaction("e1")
        .expect_err("a quote records nothing");
    assert_eq!(unknown.status(), 404, "{unknown}");
    let answer = meter.authorize("e1", TENANT, "enhance", &["p1"], &[]);
    assert_eq!(answer, quote.authorization);
    // A bad request is refused as authorize refuses it.
    let quoted = meter
        .try_quote("e2", "", "enhance", &["p1"])
        .expect_err("no tenant");
    let authorized = meter
        .try_authorize("e2", "", "enhance", &["p1"], &[])
        .expect_err("no tenant");
    assert_eq!(
        (quoted.status(), quoted.code()),
        (authorized.status(), authorized.code())
    );
    assert_eq!(quoted.status(), 400, "{quoted}");
    meter.assert_sound();
}

/// A shadow compares admissions: quotes are not fed to it.
#[test]
fn a_quote_is_not_compared_by_the_shadow() {
    let meter = TestMeter::new("smarte");
    meter.grant("acme", "default", 100);
    meter
        .meter
        .set_shadow(component("pricier_funding"))
        .expect("shadow");
    meter
        .try_quote("t1", "acme", "funding.enrich", &["a", "b"])
        .expect("quote");
    assert_eq!(meter.meter.shadow_report().unwrap().authorizes_compared, 0);
    meter.authorize("t1", "acme", "funding.enrich", &["a", "b"], &[]);
    assert_eq!(meter.meter.shadow_report().unwrap().authorizes_compared, 1);
}

/// A quote admits nothing, so it is never admitted open: a failing policy's quote is
/// the failure, and it spends none of the tenant's exposure window.
#[test]
fn a_quote_of_a_failing_policy_answers_the_failure_even_when_failing_open() {
    let meter = TestMeter::with_failure(
        &ScratchStore::Sqlite,
        "hostile",
        FailurePolicy {
            mode: FailureMode::Open,
            per_operation: BTreeMap::new(),
            open_credits_per_request: 5,
            open_credits_per_tenant_per_hour: 5,
        },
    );
    for id in ["q1", "q2"] {
        let failure = meter
            .try_quote(id, TENANT, "burn-fuel", &["a"])
            .expect_err("the policy fails");
        assert_eq!(failure.code(), "policy_fuel_exhausted", "{failure}");
    }
    // The window's 5 credits are all still there for one open admission.
    let answer = meter.authorize("a1", TENANT, "burn-fuel", &["a"], &[]);
    assert!(
        answer.admitted && answer.failed_open.is_some(),
        "{answer:?}"
    );
    meter.assert_sound();
}
