//! Spend caps (`docs/credits.md`, part 4): an admission that would take a window's
//! spending (credits held and charged in it) past the cap is refused by the host,
//! whatever the policy answers; a released hold gives its window room back; a settle
//! charging past its hold is counted, never refused; windows follow the zone's
//! calendar. Through the library on both stores and over HTTP; every test ends with
//! the audit.

use std::collections::BTreeMap;

use creditgate::MeterError;
use creditgate::model::{
    Authorization, AuthorizeRequest, GrantRequest, GrantTerms, SpendCapTerms, SpendCapView,
};
use serde_json::json;

use crate::account::{TENANT, assert_sound, figures, settle_records};
use crate::support::{START_MS, Server, TestMeter};

const HOUR_MS: i64 = 3_600_000;
/// The end of the UTC hour the test clock starts in (22:13:20 on 14 November 2023).
const HOUR_END_MS: i64 = 1_700_002_800_000;

fn grant(meter: &TestMeter, amount: i64) {
    meter
        .meter
        .grant(GrantRequest {
            grant_id: format!(
                "g{amount}-{}",
                meter.meter.journal(TENANT, 1).unwrap().len()
            ),
            tenant: TENANT.to_owned(),
            balance: "default".to_owned(),
            amount,
            terms: GrantTerms::default(),
        })
        .unwrap();
}

fn cap(cap: i64, window: &str, time_zone: &str) -> SpendCapTerms {
    SpendCapTerms {
        cap,
        window: window.to_owned(),
        time_zone: time_zone.to_owned(),
    }
}

fn authorize(meter: &TestMeter, id: &str, operation: &str, items: usize) -> Authorization {
    meter
        .meter
        .authorize(AuthorizeRequest {
            transaction_id: Some(id.to_owned()),
            tenant: TENANT.to_owned(),
            operation: operation.to_owned(),
            items: (0..items).map(|index| format!("r{index}")).collect(),
            attributes: BTreeMap::new(),
            body: None,
        })
        .unwrap()
}

/// The window of `default` as the balances show it.
fn window(meter: &TestMeter) -> SpendCapView {
    meter.meter.balances(TENANT).unwrap().spend_caps["default"].clone()
}

fn refused_code(answer: &Authorization) -> Option<(u16, &str)> {
    (!answer.admitted).then(|| {
        (
            answer.status.unwrap_or(0),
            answer
                .error
                .as_ref()
                .map_or("", |error| error.code.as_str()),
        )
    })
}

crate::on_both_stores! {
    /// The cap is the host's: a policy that admits without looking gets the admission
    /// that would pass the cap refused with 429 `spend_cap_reached`, the window's
    /// figures and when it resets; the refusal moves nothing and a retry gets the same
    /// answer; what still fits is admitted; the next hour counts from zero.
    fn the_host_refuses_admissions_that_would_pass_the_cap(store) {
        let meter = TestMeter::on(store, "misbehaving");
        grant(&meter, 2_000);
        let set = meter
            .meter
            .set_spend_cap(TENANT, "default", Some(&cap(3, "hour", "UTC")))
            .unwrap();
        assert_eq!(
            set.spend_caps["default"],
            SpendCapView {
                cap: 3,
                window: "hour".to_owned(),
                time_zone: "UTC".to_owned(),
                spent: 0,
                resets_at_ms: HOUR_END_MS,
            }
        );
        // The flat price holds 1 a request: 3 fit.
        for index in 0..3 {
            assert!(authorize(&meter, &format!("t{index}"), "flat", 1).admitted);
        }
        assert_eq!(window(&meter).spent, 3);
        let refused = authorize(&meter, "t3", "flat", 1);
        assert_eq!(refused_code(&refused), Some((429, "spend_cap_reached")));
        let seconds_left = (HOUR_END_MS - START_MS as i64) / 1000;
        assert_eq!(
            refused.meta,
            json!({"spend_cap_reached": {
                "balance": "default", "cap": 3, "spent": 3, "asked": 1,
                "resets_at_ms": HOUR_END_MS,
            }})
        );
        assert_eq!(refused.headers["retry-after"], seconds_left.to_string());
        assert_eq!(authorize(&meter, "t3", "flat", 1), refused, "a retry");
        assert_eq!(figures(&meter), (1_997, 3));
        // A charge at admission counts too: 1,000 credits charged would pass the cap.
        let refused = authorize(&meter, "big", "overspend", 1);
        assert_eq!(refused_code(&refused), Some((429, "spend_cap_reached")));
        assert_eq!(figures(&meter), (1_997, 3));

        // The next hour starts from zero (the holds lapse meanwhile: the past hour's
        // spending is over, their release gives nothing back to the new one).
        meter.clock.advance_ms((HOUR_END_MS - START_MS as i64) as u64);
        assert_eq!(meter.meter.expire_due().unwrap(), 3);
        assert_eq!(window(&meter).spent, 0);
        assert_eq!(window(&meter).resets_at_ms, HOUR_END_MS + HOUR_MS);
        for index in 4..7 {
            assert!(authorize(&meter, &format!("t{index}"), "flat", 1).admitted);
        }
        assert!(!authorize(&meter, "t7", "flat", 1).admitted);
        assert_sound(&meter);
    }

    /// A released hold (a settle charging less, or the hold lapsing) gives its room
    /// back to the window that counted it; a settle charging past its hold is counted,
    /// never refused, and then nothing more is admitted in the window.
    fn releases_give_room_back_and_a_settle_past_its_hold_counts(store) {
        let meter = TestMeter::on(store, "misbehaving");
        grant(&meter, 100);
        meter
            .meter
            .set_spend_cap(TENANT, "default", Some(&cap(4, "day", "Europe/Paris")))
            .unwrap();
        // A cap counts releases of holds taken from the millisecond after it was set.
        meter.clock.advance_ms(1);
        for index in 0..4 {
            assert!(authorize(&meter, &format!("t{index}"), "flat", 1).admitted);
        }
        assert!(!authorize(&meter, "t4", "flat", 1).admitted);
        // The misbehaving policy's holds lapse after a second: released, room comes
        // back in the same day.
        meter.clock.advance_ms(1_000);
        assert_eq!(meter.meter.expire_due().unwrap(), 4);
        assert_eq!(window(&meter).spent, 0);
        assert!(authorize(&meter, "t5", "flat", 1).admitted);
        assert!(authorize(&meter, "t6", "flat", 1).admitted);
        assert_eq!(window(&meter).spent, 2);
        // Its settle charges 2 on a hold of 1: the second credit counts, past nothing.
        settle_records(&meter, "t5", 0);
        assert_eq!(window(&meter).spent, 3);
        settle_records(&meter, "t6", 0);
        assert_eq!(window(&meter).spent, 4);
        assert_eq!(figures(&meter), (96, 0));
        let refused = authorize(&meter, "t7", "flat", 1);
        assert_eq!(refused_code(&refused), Some((429, "spend_cap_reached")));
        // Midnight in Paris (23:00 UTC) starts the next day's window.
        assert_eq!(window(&meter).resets_at_ms, 1_700_002_800_000);
        assert_sound(&meter);
    }

    /// A policy sees its window (contract 0.2.0) and prices against it: SMARTe refuses
    /// what the cap leaves no room for with its own 402, before the host would.
    fn a_policy_sees_the_window_and_prices_against_it(store) {
        let meter = TestMeter::on(store, "smarte");
        grant(&meter, 100);
        meter
            .meter
            .set_spend_cap(TENANT, "default", Some(&cap(10, "hour", "UTC")))
            .unwrap();
        meter.clock.advance_ms(1);
        assert!(authorize(&meter, "t1", "person.enrich", 6).admitted);
        let refused = authorize(&meter, "t2", "person.enrich", 5);
        assert_eq!(refused_code(&refused), Some((402, "insufficient_credits")));
        assert!(
            refused.error.unwrap().message.contains("4 available"),
            "what the cap leaves"
        );
        // 2 of 6 records delivered: 4 released, room for 8 now.
        settle_records(&meter, "t1", 2);
        assert_eq!(window(&meter).spent, 2);
        assert!(authorize(&meter, "t3", "person.enrich", 8).admitted);
        assert_eq!(window(&meter).spent, 10);
        assert_sound(&meter);
    }

    /// Changing only the amount keeps the window's spending; another window or zone
    /// counts from now, and a hold taken before gives nothing back to it; setting the
    /// cap it has changes nothing; removing it lets spending go on.
    fn a_changed_cap_keeps_or_restarts_its_window_and_a_removed_one_bounds_nothing(store) {
        let meter = TestMeter::on(store, "smarte");
        grant(&meter, 100);
        let daily = cap(30, "day", "UTC");
        meter.meter.set_spend_cap(TENANT, "default", Some(&daily)).unwrap();
        assert!(authorize(&meter, "t0", "person.enrich", 5).admitted);
        assert!(authorize(&meter, "t1", "person.enrich", 5).admitted);
        let again = meter.meter.set_spend_cap(TENANT, "default", Some(&daily)).unwrap();
        assert_eq!(again.spend_caps["default"].spent, 10);
        let raised = meter
            .meter
            .set_spend_cap(TENANT, "default", Some(&cap(12, "day", "UTC")))
            .unwrap();
        assert_eq!(raised.spend_caps["default"].spent, 10);
        assert!(!authorize(&meter, "t2", "person.enrich", 3).admitted);

        meter.clock.advance_ms(1);
        let hourly = meter
            .meter
            .set_spend_cap(TENANT, "default", Some(&cap(12, "hour", "UTC")))
            .unwrap();
        assert_eq!(hourly.spend_caps["default"].spent, 0);
        // A hold taken in the millisecond a cap is set gives nothing back at release:
        // the cap counts from the next one.
        meter.clock.advance_ms(1);
        assert!(authorize(&meter, "t3", "person.enrich", 6).admitted);
        // t0 was held before this cap counted: its release takes nothing off.
        settle_records(&meter, "t0", 0);
        assert_eq!(window(&meter).spent, 6);
        settle_records(&meter, "t3", 1);
        assert_eq!(window(&meter).spent, 1);

        let removed = meter.meter.set_spend_cap(TENANT, "default", None).unwrap();
        assert!(removed.spend_caps.is_empty());
        assert!(authorize(&meter, "t4", "person.enrich", 50).admitted);
        assert_eq!(
            meter.meter.set_spend_cap(TENANT, "default", None).unwrap(),
            meter.meter.balances(TENANT).unwrap()
        );
        assert_sound(&meter);
    }

    /// A cap that is not a whole number of credits from 0 to 10^15, a window or zone
    /// that does not exist, or a balance the policy does not name, is refused and
    /// records nothing; a cap of 0 refuses every admission that spends.
    fn bad_caps_are_refused_and_record_nothing(store) {
        let meter = TestMeter::on(store, "smarte");
        grant(&meter, 5);
        for bad in [-1, 1_000_000_000_000_001, i64::MAX] {
            let answer = meter.meter.set_spend_cap(TENANT, "default", Some(&cap(bad, "day", "UTC")));
            assert!(matches!(answer, Err(MeterError::InvalidAmount(_))), "{answer:?}");
        }
        for (window, zone) in [("week", "UTC"), ("day", "Mars/Olympus"), ("", "UTC")] {
            let answer = meter.meter.set_spend_cap(TENANT, "default", Some(&cap(5, window, zone)));
            assert!(matches!(answer, Err(MeterError::InvalidRequest(_))), "{answer:?}");
        }
        let answer = meter.meter.set_spend_cap(TENANT, "export", Some(&cap(5, "day", "UTC")));
        assert!(matches!(answer, Err(MeterError::UnknownBalance { .. })), "{answer:?}");
        assert!(meter.meter.balances(TENANT).unwrap().spend_caps.is_empty());
        assert!(authorize(&meter, "t1", "person.enrich", 3).admitted);

        meter.meter.set_spend_cap(TENANT, "default", Some(&cap(0, "month", "UTC"))).unwrap();
        assert!(!authorize(&meter, "t2", "person.enrich", 1).admitted);
        assert_eq!(figures(&meter), (2, 3));
        assert_sound(&meter);
    }

    /// A cap and its window's spending come back after a restart.
    fn caps_and_windows_survive_a_restart(store) {
        let meter = TestMeter::on(store, "misbehaving");
        grant(&meter, 100);
        meter
            .meter
            .set_spend_cap(TENANT, "default", Some(&cap(3, "hour", "Asia/Kolkata")))
            .unwrap();
        assert!(authorize(&meter, "t1", "flat", 1).admitted);
        assert!(authorize(&meter, "t2", "flat", 1).admitted);
        let before = meter.meter.balances(TENANT).unwrap();
        assert_eq!(before.spend_caps["default"].spent, 2);
        // Kolkata is 5:30 ahead of UTC: its hours start at half past.
        assert_eq!(before.spend_caps["default"].resets_at_ms, 1_700_001_000_000);
        let meter = meter.reopen("misbehaving");
        assert_eq!(meter.meter.balances(TENANT).unwrap(), before);
        assert!(authorize(&meter, "t3", "flat", 1).admitted);
        assert!(!authorize(&meter, "t4", "flat", 1).admitted);
        assert_sound(&meter);
    }
}

/// `PUT` and `DELETE /v1/tenants/{tenant}/balances/{balance}/spend-cap` (admin), the
/// caps in the balances, and the host's 429 in an authorize's answer.
#[test]
fn spend_caps_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let server = Server::start("smarte", &db, Some("s3cret"));
    server.grant("acme", "default", 100, "paid");
    let path = "/v1/tenants/acme/balances/default/spend-cap";
    let put = |server: &Server, body: &serde_json::Value| {
        server.call("PUT", path, Some(&body.to_string()))
    };
    let body = json!({"cap": 2, "window": "day", "time_zone": "Europe/Paris"});
    let (status, answer) = put(&server.with_token(None), &body);
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, answer) = put(&server, &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["spend_caps"]["default"]["cap"], json!(2));
    assert_eq!(answer["spend_caps"]["default"]["spent"], json!(0));
    assert_eq!(
        answer["spend_caps"]["default"]["time_zone"],
        json!("Europe/Paris")
    );
    for (bad, code) in [
        (json!({"cap": -1, "window": "day"}), "invalid_amount"),
        (json!({"cap": 1.5, "window": "day"}), "invalid_amount"),
        (json!({"cap": 1e16, "window": "day"}), "invalid_amount"),
        (json!({"cap": 5, "window": "week"}), "invalid_request"),
        (
            json!({"cap": 5, "window": "day", "time_zone": "Mars/Olympus"}),
            "invalid_request",
        ),
        (json!({"cap": 5}), "invalid_request"),
        (
            json!({"cap": 5, "window": "day", "extra": 1}),
            "invalid_request",
        ),
    ] {
        let (status, answer) = put(&server, &bad);
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{bad} {answer}"
        );
    }
    // SMARTe holds one credit per record: 2 fit; the policy itself refuses a third,
    // seeing what the cap leaves.
    let authorize = |items: serde_json::Value| {
        server.post(
            "/v1/authorize",
            json!({"tenant": "acme", "operation": "person.enrich", "items": items}),
        )
    };
    let (status, answer) = authorize(json!(["a", "b"]));
    assert_eq!(
        (status, &answer["admitted"]),
        (200, &json!(true)),
        "{answer}"
    );
    let (status, answer) = authorize(json!(["c"]));
    assert_eq!(
        (status, &answer["admitted"]),
        (200, &json!(false)),
        "{answer}"
    );
    assert_eq!(
        server.balances("acme")["spend_caps"]["default"]["spent"],
        json!(2)
    );
    let (status, answer) = server.call("DELETE", path, None);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.get("spend_caps").is_none(), "{answer}");
    let (status, answer) = authorize(json!(["c"]));
    assert_eq!(
        (status, &answer["admitted"]),
        (200, &json!(true)),
        "{answer}"
    );
    assert_eq!(server.balances("acme")["balances"], json!({"default": 97}));
}
