//! The DonorAtlas reference policy, as a wasm component behind the meter.

use serde_json::json;

use crate::support::{Gate, amounts};

const TENANT: &str = "partner";

crate::rules_both_ways!("donoratlas": enhancement_charges_one_credit_per_person_at_acceptance_whatever_the_outcome, a_batch_larger_than_the_balance_admits_the_first_n_as_partial, zero_enhancement_credits_is_402_payment_required, export_charges_each_unique_new_donor_once_and_re_export_is_free, exports_are_tracked_per_tenant, more_new_donors_than_export_credits_is_402_and_exports_nothing, re_export_after_a_refused_export_is_still_free_for_donors_exported_before, search_networks_lists_and_profiles_are_free_and_move_nothing, unknown_operation_is_rejected_400_not_admitted_free);

/// Grants the test tenant its enhancement and export credits (zeros are skipped).
fn fund(meter: &dyn Gate, enhancement: i64, export: i64) {
    if enhancement > 0 {
        meter.grant(TENANT, "enhancement", enhancement);
    }
    if export > 0 {
        meter.grant(TENANT, "export", export);
    }
}

fn enhancement_charges_one_credit_per_person_at_acceptance_whatever_the_outcome(meter: &dyn Gate) {
    fund(meter, 5, 0);
    let answer = meter.authorize("e1", TENANT, "enhance", &["p1", "p2"], &[]);
    assert!(answer.admitted);
    assert_eq!(answer.status, Some(202));
    assert_eq!(answer.charged, amounts(&[("enhancement", 2)]));
    assert_eq!(
        answer.meta,
        json!({"requested": 2, "processed": 2, "imports_charged": 2, "imports_remaining": 3, "partial": false})
    );
    let receipt = meter.settle("e1", 500, &[]);
    assert!(receipt.charged.is_empty() && receipt.released.is_empty());
    assert_eq!(meter.available(TENANT, "enhancement"), 3);
    meter.assert_sound();
}

fn a_batch_larger_than_the_balance_admits_the_first_n_as_partial(meter: &dyn Gate) {
    fund(meter, 3, 0);
    let persons = ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9"];
    let answer = meter.authorize("e1", TENANT, "enhance", &persons, &[]);
    assert!(answer.admitted);
    assert_eq!(answer.status, Some(202));
    assert_eq!(answer.admitted_items, 3);
    assert_eq!(answer.charged, amounts(&[("enhancement", 3)]));
    assert_eq!(
        answer.meta,
        json!({
            "requested": 10, "processed": 3, "imports_charged": 3, "imports_remaining": 0,
            "partial": true, "partial_reason": "Only 3 credits remaining, but 10 persons requested"
        })
    );
    assert_eq!(answer.balances["enhancement"], 0);
    meter.assert_sound();
}

fn zero_enhancement_credits_is_402_payment_required(meter: &dyn Gate) {
    fund(meter, 0, 5);
    let answer = meter.authorize("e1", TENANT, "enhance", &["p1"], &[]);
    assert!(!answer.admitted);
    assert_eq!(answer.status, Some(402));
    assert_eq!(
        answer.error.map(|e| e.code),
        Some("payment_required".to_owned())
    );
    assert_eq!(meter.available(TENANT, "export"), 5);
}

fn export_charges_each_unique_new_donor_once_and_re_export_is_free(meter: &dyn Gate) {
    fund(meter, 0, 5);
    let first = meter.authorize("x1", TENANT, "export", &["d1", "d2", "d1"], &[]);
    assert!(first.admitted);
    assert_eq!(first.charged, amounts(&[("export", 2)]));
    assert_eq!(
        first.meta,
        json!({"credits_used": 2, "exports_remaining": 3})
    );

    let again = meter.authorize("x2", TENANT, "export", &["d2", "d1"], &[]);
    assert!(again.admitted);
    assert!(again.charged.is_empty());
    assert_eq!(
        again.meta,
        json!({"credits_used": 0, "exports_remaining": 3})
    );

    let mixed = meter.authorize("x3", TENANT, "export", &["d1", "d3"], &[]);
    assert_eq!(mixed.charged, amounts(&[("export", 1)]));
    assert_eq!(meter.available(TENANT, "export"), 2);
    meter.assert_sound();
}

fn exports_are_tracked_per_tenant(meter: &dyn Gate) {
    fund(meter, 0, 5);
    meter.grant("other", "export", 5);
    meter.authorize("x1", TENANT, "export", &["d1"], &[]);
    let other = meter.authorize("x2", "other", "export", &["d1"], &[]);
    assert_eq!(other.charged, amounts(&[("export", 1)]));
}

fn more_new_donors_than_export_credits_is_402_and_exports_nothing(meter: &dyn Gate) {
    fund(meter, 0, 2);
    let refused = meter.authorize("x1", TENANT, "export", &["a", "b", "c"], &[]);
    assert!(!refused.admitted);
    assert_eq!(refused.status, Some(402));
    assert_eq!(
        refused.error.map(|e| e.code),
        Some("payment_required".to_owned())
    );
    assert_eq!(meter.available(TENANT, "export"), 2);
    // Nothing was marked exported: after a top-up, each donor costs a credit.
    meter.grant(TENANT, "export", 1);
    let retry = meter.authorize("x2", TENANT, "export", &["a", "b", "c"], &[]);
    assert_eq!(retry.charged, amounts(&[("export", 3)]));
    meter.assert_sound();
}

fn re_export_after_a_refused_export_is_still_free_for_donors_exported_before(meter: &dyn Gate) {
    fund(meter, 0, 1);
    meter.authorize("x1", TENANT, "export", &["a"], &[]);
    let refused = meter.authorize("x2", TENANT, "export", &["a", "b"], &[]);
    assert!(!refused.admitted);
    let re_export = meter.authorize("x3", TENANT, "export", &["a"], &[]);
    assert!(re_export.admitted);
    assert!(re_export.charged.is_empty());
}

fn search_networks_lists_and_profiles_are_free_and_move_nothing(meter: &dyn Gate) {
    fund(meter, 0, 0);
    for (index, operation) in [
        "search",
        "network.create",
        "network.lookup",
        "list.create",
        "list.add",
        "profile.get",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("f{index}");
        let answer = meter.authorize(&id, TENANT, operation, &[], &[]);
        assert!(answer.admitted, "{operation}");
        assert!(
            answer.charged.is_empty() && answer.held.is_empty(),
            "{operation}"
        );
        assert!(meter.settle(&id, 200, &[]).charged.is_empty());
    }
    let view = meter.transaction("f0").expect("audit");
    assert!(
        view.entries.is_empty(),
        "a free operation wrote journal entries"
    );
}

fn unknown_operation_is_rejected_400_not_admitted_free(meter: &dyn Gate) {
    fund(meter, 5, 5);
    let answer = meter.authorize("u1", TENANT, "profile.delete", &[], &[]);
    assert!(!answer.admitted);
    assert_eq!(answer.status, Some(400));
    assert_eq!(
        answer.error.map(|e| e.code),
        Some("unknown_operation".to_owned())
    );
}
