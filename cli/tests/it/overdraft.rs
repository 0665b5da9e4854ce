//! Overdraft limits (`docs/credits.md`, part 3): spending may take a balance down to
//! minus its limit and no further, whatever the policy answers; incoming credits repay
//! the overdraft before any lot keeps them; a lowered limit refuses new spending and
//! moves nothing. Through the library on both stores and over HTTP; every test ends
//! with the audit.

use std::collections::BTreeMap;

use creditgate::MeterError;
use creditgate::model::{
    AuthorizeRequest, GrantRequest, GrantTerms, SettleRequest, TenantBalances,
};
use serde_json::json;

use crate::account::{TENANT, assert_sound, enrich, figures, moved, moves, settle_records};
use crate::support::{Server, TestMeter, amounts};

fn grant(meter: &TestMeter, grant_id: &str, amount: i64) -> TenantBalances {
    meter
        .meter
        .grant(GrantRequest {
            grant_id: grant_id.to_owned(),
            tenant: TENANT.to_owned(),
            balance: "default".to_owned(),
            amount,
            terms: GrantTerms::default(),
        })
        .unwrap()
}

crate::on_both_stores! {
    /// Spending goes past the lots into the overdraft, down to minus the limit and not
    /// a credit further; a released hold and then a grant repay the overdraft before
    /// any lot keeps credits.
    fn spending_overdraws_down_to_the_limit_and_incoming_credits_repay_it_first(store) {
        let meter = TestMeter::on(store, "smarte");
        grant(&meter, "paid", 5);
        let set = meter.meter.set_overdraft(TENANT, "default", 10).unwrap();
        assert_eq!(set.overdraft_limits, amounts(&[("default", 10)]));
        assert_eq!(set.balances, amounts(&[("default", 5)]));

        assert!(enrich(&meter, "t1", 12).admitted);
        assert_eq!(figures(&meter), (-7, 12));
        assert_eq!(
            moves(&meter, 1),
            moved(&[("hold", "paid", 5), ("hold", "own", 7)])
        );
        // 3 left to spend: a hold of 4 is refused, one of 3 admitted, then nothing.
        assert!(!enrich(&meter, "t2", 4).admitted);
        assert!(enrich(&meter, "t3", 3).admitted);
        assert_eq!(figures(&meter), (-10, 15));
        assert!(!enrich(&meter, "t4", 1).admitted);

        // 10 of t1 delivered: 2 released, back to the overdraft first.
        settle_records(&meter, "t1", 10);
        assert_eq!(figures(&meter), (-8, 3));
        // A grant of 20 repays 8; its lot keeps 12.
        let from = meter.meter.journal(TENANT, 10_000).unwrap().len();
        assert_eq!(grant(&meter, "top-up", 20).balances, amounts(&[("default", 12)]));
        assert_eq!(
            moves(&meter, from),
            moved(&[("grant", "top-up", 12), ("grant", "own", 8)])
        );
        let lots = meter.meter.lots(TENANT).unwrap().lots.unwrap();
        let top_up = lots.iter().find(|lot| lot.grant_id == "top-up").unwrap();
        assert_eq!((top_up.amount, top_up.remaining), (20, 12));
        // t3's hold drew on the overdraft: released, it goes back to the account's own
        // lot (repaid already), not to the new lot.
        settle_records(&meter, "t3", 0);
        assert_eq!(figures(&meter), (15, 0));
        assert_sound(&meter);
    }

    /// Lowering the limit below what is overdrawn moves nothing: the open hold stays,
    /// spending is refused until credits come back above the new floor, and then it
    /// goes on. Setting the limit it has records nothing.
    fn a_lowered_limit_refuses_spending_and_moves_nothing(store) {
        let meter = TestMeter::on(store, "smarte");
        grant(&meter, "paid", 2);
        meter.meter.set_overdraft(TENANT, "default", 10).unwrap();
        assert!(enrich(&meter, "t1", 10).admitted);
        assert_eq!(figures(&meter), (-8, 10));
        let entries = meter.meter.journal(TENANT, 10_000).unwrap().len();

        let lowered = meter.meter.set_overdraft(TENANT, "default", 3).unwrap();
        assert_eq!(lowered.balances, amounts(&[("default", -8)]));
        assert_eq!(lowered.held, amounts(&[("default", 10)]));
        assert_eq!(meter.meter.set_overdraft(TENANT, "default", 3).unwrap(), lowered);
        assert_eq!(meter.meter.journal(TENANT, 10_000).unwrap().len(), entries, "a limit moves no credit");
        assert!(!enrich(&meter, "t2", 1).admitted);

        settle_records(&meter, "t1", 10);
        assert_eq!(figures(&meter), (-8, 0));
        grant(&meter, "top-up", 6);
        assert_eq!(figures(&meter), (-2, 0));
        // -2 with a limit of 3: one credit can be spent, not two.
        assert!(!enrich(&meter, "t3", 2).admitted);
        assert!(enrich(&meter, "t4", 1).admitted);
        assert_eq!(figures(&meter), (-3, 1));

        // 0 removes the overdraft: nothing more to spend until the account is repaid.
        let removed = meter.meter.set_overdraft(TENANT, "default", 0).unwrap();
        assert!(removed.overdraft_limits.is_empty());
        assert!(!enrich(&meter, "t5", 1).admitted);
        assert_sound(&meter);
    }

    /// A limit that is not a whole number of credits from 0 to 10^15, or on a balance
    /// the policy does not name, is refused and records nothing.
    fn bad_limits_are_refused_and_record_nothing(store) {
        let meter = TestMeter::on(store, "smarte");
        grant(&meter, "paid", 2);
        for limit in [-1, 1_000_000_000_000_001, i64::MAX] {
            let answer = meter.meter.set_overdraft(TENANT, "default", limit);
            assert!(matches!(answer, Err(MeterError::InvalidAmount(_))), "{answer:?}");
        }
        let answer = meter.meter.set_overdraft(TENANT, "export", 5);
        assert!(matches!(answer, Err(MeterError::UnknownBalance { .. })), "{answer:?}");
        let answer = meter.meter.set_overdraft("bad tenant", "default", 5);
        assert!(matches!(answer, Err(MeterError::InvalidRequest(_))), "{answer:?}");
        assert!(meter.meter.balances(TENANT).unwrap().overdraft_limits.is_empty());
        assert!(!enrich(&meter, "t1", 3).admitted);
        assert_sound(&meter);
    }

    /// The floor is the host's, whatever the policy answers: a policy that admits
    /// without looking at the balance gets its holds refused past the limit, and a
    /// settle charging past its hold collects only down to the floor.
    fn the_host_keeps_the_floor_against_a_policy_that_ignores_it(store) {
        let meter = TestMeter::on(store, "misbehaving");
        grant(&meter, "paid", 5);
        meter.meter.set_overdraft(TENANT, "default", 10).unwrap();
        let authorize = |id: &str, operation: &str| {
            meter
                .meter
                .authorize(AuthorizeRequest {
                    transaction_id: Some(id.to_owned()),
                    tenant: TENANT.to_owned(),
                    operation: operation.to_owned(),
                    items: vec!["a".to_owned()],
                    attributes: BTreeMap::new(),
                    body: None,
                })
                .unwrap()
        };
        let refused = authorize("big", "overspend");
        assert_eq!(
            (refused.admitted, refused.error.map(|error| error.code)),
            (false, Some("insufficient_credits".to_owned()))
        );
        // The flat price holds 1 a request: 15 fit in 5 credits and an overdraft of 10.
        for index in 0..15 {
            assert!(authorize(&format!("t{index}"), "flat").admitted, "t{index}");
        }
        assert_eq!(figures(&meter), (-10, 15));
        let refused = authorize("t15", "flat");
        assert_eq!(
            (refused.admitted, refused.error.map(|error| error.code)),
            (false, Some("insufficient_credits".to_owned()))
        );
        assert_eq!(figures(&meter), (-10, 15));
        // Settle charges 2 of a hold of 1: the second credit is past the floor.
        let receipt = meter
            .meter
            .settle(SettleRequest {
                transaction_id: "t0".to_owned(),
                status: 200,
                attributes: BTreeMap::new(),
                body: None,
            })
            .unwrap();
        assert_eq!(receipt.charged, amounts(&[("default", 1)]));
        assert_eq!(receipt.uncollected, amounts(&[("default", 1)]));
        assert_eq!(figures(&meter), (-10, 14));
        assert_sound(&meter);
    }

    /// A limit and an overdrawn account come back after a restart.
    fn limits_and_overdrawn_accounts_survive_a_restart(store) {
        let meter = TestMeter::on(store, "smarte");
        grant(&meter, "paid", 1);
        meter.meter.set_overdraft(TENANT, "default", 4).unwrap();
        assert!(enrich(&meter, "t1", 3).admitted);
        let before = meter.meter.balances(TENANT).unwrap();
        let meter = meter.reopen("smarte");
        assert_eq!(meter.meter.balances(TENANT).unwrap(), before);
        assert!(enrich(&meter, "t2", 2).admitted);
        assert!(!enrich(&meter, "t3", 1).admitted);
        assert_eq!(figures(&meter), (-4, 5));
        assert_sound(&meter);
    }
}

/// `PUT /v1/tenants/{tenant}/balances/{balance}/overdraft` (admin), and the limits in
/// the balances.
#[test]
fn overdraft_limits_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let server = Server::start("smarte", &db, Some("s3cret"));
    let put = |server: &Server, path: &str, body: &serde_json::Value| {
        server.call("PUT", path, Some(&body.to_string()))
    };
    let path = "/v1/tenants/acme/balances/default/overdraft";
    let (status, body) = put(&server.with_token(None), path, &json!({"limit": 25}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = put(&server, path, &json!({"limit": 25}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["overdraft_limits"], json!({"default": 25}));
    assert_eq!(body["balances"], json!({"default": 0}));
    assert_eq!(
        server.balances("acme")["overdraft_limits"],
        json!({"default": 25})
    );
    for (bad, code) in [
        (json!({"limit": -1}), "invalid_amount"),
        (json!({"limit": 1.5}), "invalid_amount"),
        (json!({"limit": 1e16}), "invalid_amount"),
        (json!({"limit": "5"}), "invalid_request"),
        (json!({}), "invalid_request"),
    ] {
        let (status, body) = put(&server, path, &bad);
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{bad} {body}"
        );
    }
    let (status, body) = put(
        &server,
        "/v1/tenants/acme/balances/export/overdraft",
        &json!({"limit": 1}),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("unknown_balance")),
        "{body}"
    );
    assert_eq!(
        server.balances("acme")["overdraft_limits"],
        json!({"default": 25})
    );
    // Spending past zero over HTTP: the authorize admits 3 records on no credits.
    let (status, body) = server.post(
        "/v1/authorize",
        json!({"tenant": "acme", "operation": "person.enrich", "items": ["a", "b", "c"]}),
    );
    assert_eq!((status, &body["admitted"]), (200, &json!(true)), "{body}");
    assert_eq!(server.balances("acme")["balances"], json!({"default": -3}));
    let (status, body) = put(&server, path, &json!({"limit": 0}));
    assert_eq!(status, 200, "{body}");
    assert!(body.get("overdraft_limits").is_none(), "{body}");
    assert_eq!(body["balances"], json!({"default": -3}));
}
