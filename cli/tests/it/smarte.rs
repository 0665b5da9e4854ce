//! The SMARTe reference policy, as a wasm component behind the meter.

use serde_json::json;

use crate::support::{Gate, amounts};

const TENANT: &str = "acme";

crate::rules_both_ways!("smarte": insufficient_credits_is_rejected_402_before_processing_and_moves_nothing, one_credit_short_is_rejected_and_exactly_enough_is_admitted, authorize_holds_one_credit_per_requested_record_and_settle_charges_delivered_records, nothing_is_charged_on_auth_validation_rate_limit_no_match_or_empty_data, every_2xx_settle_carries_credits_deducted_even_when_zero, audit_only_mode_is_admitted_at_zero_balance_and_never_charged, every_specialized_enrichment_is_metered, unknown_operation_is_rejected_400_not_admitted_free);

/// Grants `credits` (if any) to the test tenant.
fn fund(meter: &dyn Gate, credits: i64) {
    if credits > 0 {
        meter.grant(TENANT, "default", credits);
    }
}

fn insufficient_credits_is_rejected_402_before_processing_and_moves_nothing(meter: &dyn Gate) {
    fund(meter, 2);
    let answer = meter.authorize("t1", TENANT, "person.enrich", &["a", "b", "c"], &[]);
    assert!(!answer.admitted);
    assert_eq!(answer.status, Some(402));
    assert_eq!(
        answer.error.as_ref().map(|e| e.code.as_str()),
        Some("insufficient_credits")
    );
    assert_eq!(answer.admitted_items, 0);
    assert_eq!(meter.available(TENANT, "default"), 2);
    assert_eq!(meter.held(TENANT, "default"), 0);
    assert_eq!(
        meter
            .try_settle("t1", 200, &[("records", "3")])
            .unwrap_err()
            .code(),
        "transaction_rejected"
    );
    meter.assert_sound();
}

fn one_credit_short_is_rejected_and_exactly_enough_is_admitted(meter: &dyn Gate) {
    fund(meter, 3);
    let short = meter.authorize(
        "short",
        TENANT,
        "company.enrich",
        &["a", "b", "c", "d"],
        &[],
    );
    assert!(!short.admitted);
    let exact = meter.authorize("exact", TENANT, "company.enrich", &["a", "b", "c"], &[]);
    assert!(exact.admitted);
    assert_eq!(exact.held, amounts(&[("default", 3)]));
    assert_eq!(exact.balances, amounts(&[("default", 0)]));
    meter.assert_sound();
}

fn authorize_holds_one_credit_per_requested_record_and_settle_charges_delivered_records(
    meter: &dyn Gate,
) {
    fund(meter, 10);
    let answer = meter.authorize("t1", TENANT, "person.enrich", &["a", "b", "c"], &[]);
    assert!(answer.admitted);
    assert_eq!(answer.held, amounts(&[("default", 3)]));
    assert_eq!(meter.available(TENANT, "default"), 7);
    assert_eq!(meter.held(TENANT, "default"), 3);

    let receipt = meter.settle("t1", 200, &[("records", "2")]);
    assert_eq!(receipt.charged, amounts(&[("default", 2)]));
    assert_eq!(receipt.released, amounts(&[("default", 1)]));
    assert_eq!(receipt.headers["credits-deducted"], "2");
    assert_eq!(receipt.headers["x-transaction-id"], "t1");
    assert_eq!(meter.available(TENANT, "default"), 8);
    assert_eq!(meter.held(TENANT, "default"), 0);
    meter.assert_sound();
}

fn nothing_is_charged_on_auth_validation_rate_limit_no_match_or_empty_data(meter: &dyn Gate) {
    let cases: [(u16, &[(&str, &str)]); 8] = [
        (401, &[("records", "1")]),
        (403, &[("records", "1")]),
        (400, &[]),
        (422, &[]),
        (429, &[("records", "1")]),
        (404, &[]),
        (200, &[("records", "0")]),
        (200, &[("records", "1"), ("fields", "0")]),
    ];
    fund(meter, 5);
    for (index, (status, attributes)) in cases.iter().enumerate() {
        let id = format!("t{index}");
        assert!(
            meter
                .authorize(&id, TENANT, "email.enrich", &["x"], &[])
                .admitted
        );
        let receipt = meter.settle(&id, *status, attributes);
        assert!(
            receipt.charged.is_empty(),
            "status {status} {attributes:?} was charged"
        );
        assert_eq!(receipt.released, amounts(&[("default", 1)]));
        assert_eq!(
            meter.available(TENANT, "default"),
            5,
            "after status {status}"
        );
    }
    meter.assert_sound();
}

fn every_2xx_settle_carries_credits_deducted_even_when_zero(meter: &dyn Gate) {
    fund(meter, 5);
    meter.authorize("t1", TENANT, "mobile.enrich", &["x"], &[]);
    let receipt = meter.settle("t1", 200, &[("records", "0")]);
    assert_eq!(receipt.headers["credits-deducted"], "0");
    assert_eq!(receipt.headers["x-transaction-id"], "t1");
    meter.authorize("t2", TENANT, "mobile.enrich", &["x"], &[]);
    let failed = meter.settle("t2", 429, &[]);
    assert!(!failed.headers.contains_key("credits-deducted"));
}

fn audit_only_mode_is_admitted_at_zero_balance_and_never_charged(meter: &dyn Gate) {
    fund(meter, 0);
    let answer = meter.authorize(
        "aud",
        TENANT,
        "person.enrich",
        &["a", "b"],
        &[("mode", "AUD")],
    );
    assert!(answer.admitted);
    assert!(answer.held.is_empty() && answer.charged.is_empty());
    let receipt = meter.settle("aud", 200, &[("records", "2")]);
    assert!(receipt.charged.is_empty());
    assert_eq!(receipt.headers["credits-deducted"], "0");
    assert_eq!(receipt.meta["reason"], json!("audit_only"));
    assert_eq!(meter.available(TENANT, "default"), 0);
    meter.assert_sound();
}

fn every_specialized_enrichment_is_metered(meter: &dyn Gate) {
    fund(meter, 6);
    for (index, operation) in smarte::OPERATIONS.iter().enumerate() {
        let id = format!("t{index}");
        assert!(
            meter
                .authorize(&id, TENANT, operation, &["x"], &[])
                .admitted,
            "{operation}"
        );
        assert_eq!(
            meter.settle(&id, 200, &[("records", "1")]).charged,
            amounts(&[("default", 1)])
        );
    }
    assert_eq!(meter.available(TENANT, "default"), 0);
    meter.assert_sound();
}

fn unknown_operation_is_rejected_400_not_admitted_free(meter: &dyn Gate) {
    fund(meter, 5);
    let answer = meter.authorize("t1", TENANT, "search", &[], &[]);
    assert!(!answer.admitted);
    assert_eq!(answer.status, Some(400));
    assert_eq!(
        answer.error.map(|e| e.code),
        Some("unknown_operation".to_owned())
    );
    assert_eq!(meter.available(TENANT, "default"), 5);
}
