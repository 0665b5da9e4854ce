//! Refills (`docs/credits.md`, part 2): an operator's recurring grant, a lot granted at
//! the start of each period of the zone's calendar, once per period across sweeps and
//! restarts; `reset` lots expire when the next period starts, `rollover` lots top the
//! refill up to its cap. Through the library on both stores and over HTTP; every test
//! ends with the audit.

use creditgate::MeterError;
use creditgate::model::{LotView, RefillRequest, RefillView};
use serde_json::json;

use crate::account::{TENANT, assert_sound, enrich, figures, moved, moves, settle_records};
use crate::support::{START_MS, Server, TestMeter};

const DAY_MS: u64 = 86_400_000;
/// A month after the test clock's start (14 November 2023, 22:13:20 UTC): 30 days.
const NEXT_MS: i64 = START_MS as i64 + 30 * DAY_MS as i64;

fn monthly(mode: &str, rollover_cap: Option<i64>) -> RefillRequest {
    RefillRequest {
        balance: "default".to_owned(),
        amount: 100,
        every: "month".to_owned(),
        time_zone: "UTC".to_owned(),
        anchor_ms: Some(START_MS as i64),
        mode: mode.to_owned(),
        rollover_cap,
        priority: 5,
        category: None,
    }
}

fn refill_lots(meter: &TestMeter) -> Vec<LotView> {
    meter
        .meter
        .lots(TENANT)
        .unwrap()
        .lots
        .unwrap()
        .into_iter()
        .filter(|lot| lot.grant_id.starts_with("refill:"))
        .collect()
}

/// `(grant id, amount, remaining, state)` of the refill's lots, oldest period first.
fn lot_rows(meter: &TestMeter) -> Vec<(String, i64, i64, String)> {
    let mut rows: Vec<_> = refill_lots(meter)
        .into_iter()
        .map(|lot| (lot.grant_id, lot.amount, lot.remaining, lot.state))
        .collect();
    rows.sort();
    rows
}

fn row(grant_id: &str, amount: i64, remaining: i64, state: &str) -> (String, i64, i64, String) {
    (grant_id.to_owned(), amount, remaining, state.to_owned())
}

fn only(refills: Vec<RefillView>) -> RefillView {
    assert_eq!(refills.len(), 1, "{refills:?}");
    refills.into_iter().next().unwrap()
}

crate::on_both_stores! {
    /// A monthly reset refill grants its first lot when set, the next at the next
    /// period's start (the first's remainder expiring at that instant), and nothing
    /// more for a period however often the sweep runs or the ledger restarts; periods
    /// missed while nothing swept are skipped, not granted in a burst.
    fn a_reset_refill_grants_each_period_once_and_its_remainder_expires(store) {
        let meter = TestMeter::on(store, "smarte");
        let set = only(
            meter
                .meter
                .set_refill(TENANT, "monthly", Some(&monthly("reset", None)))
                .unwrap(),
        );
        assert_eq!(
            (set.last_start_ms, set.next_start_ms, set.every.as_str()),
            (Some(START_MS as i64), Some(NEXT_MS), "month")
        );
        let first = format!("refill:monthly:{START_MS}");
        assert_eq!(lot_rows(&meter), [row(&first, 100, 100, "open")]);
        let lot = &refill_lots(&meter)[0];
        assert_eq!(
            (lot.expires_at_ms, lot.priority, lot.category.as_str()),
            (Some(NEXT_MS), 5, "refill")
        );
        assert!(enrich(&meter, "t1", 30).admitted);
        settle_records(&meter, "t1", 30);
        assert_eq!(figures(&meter), (70, 0));
        // Setting it again (no anchor: the refill keeps its own) grants nothing.
        let mut again = monthly("reset", None);
        again.anchor_ms = None;
        meter.meter.set_refill(TENANT, "monthly", Some(&again)).unwrap();
        assert_eq!(meter.meter.expire_due().unwrap(), 0);
        assert_eq!(refill_lots(&meter).len(), 1);

        meter.clock.advance_ms(30 * DAY_MS - 1);
        meter.meter.expire_due().unwrap();
        assert_eq!(refill_lots(&meter).len(), 1, "a millisecond early");
        meter.clock.advance_ms(1);
        let from = meter.meter.journal(TENANT, 10_000).unwrap().len();
        meter.meter.expire_due().unwrap();
        let second = format!("refill:monthly:{NEXT_MS}");
        assert_eq!(
            lot_rows(&meter),
            [row(&first, 100, 0, "expired"), row(&second, 100, 100, "open")]
        );
        assert_eq!(
            moves(&meter, from),
            moved(&[("lot_expire", &first, 70), ("grant", &second, 100)])
        );
        meter.meter.expire_due().unwrap();
        let meter = meter.reopen("smarte");
        meter.meter.expire_due().unwrap();
        assert_eq!(refill_lots(&meter).len(), 2, "once per period, restart or not");
        assert_eq!(figures(&meter), (100, 0));

        // Asleep for three months: one refill, for the period the clock is in.
        meter.clock.advance_ms(92 * DAY_MS);
        meter.meter.expire_due().unwrap();
        let rows = lot_rows(&meter);
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[2].2, rows[2].3.as_str()), (100, "open"));
        assert_eq!((rows[1].2, rows[1].3.as_str()), (0, "expired"));
        assert_eq!(figures(&meter), (100, 0));
        assert_sound(&meter);
    }

    /// A rollover refill keeps what was not spent and grants no more than tops its lots
    /// up to the cap; at the cap, a period grants nothing and still counts as done.
    fn a_rollover_refill_tops_its_lots_up_to_the_cap(store) {
        let meter = TestMeter::on(store, "smarte");
        meter
            .meter
            .set_refill(TENANT, "monthly", Some(&monthly("rollover", Some(150))))
            .unwrap();
        assert!(enrich(&meter, "t1", 20).admitted);
        settle_records(&meter, "t1", 20);
        meter.clock.advance_ms(30 * DAY_MS);
        meter.meter.expire_due().unwrap();
        let first = format!("refill:monthly:{START_MS}");
        let second = format!("refill:monthly:{NEXT_MS}");
        assert_eq!(
            lot_rows(&meter),
            [row(&first, 100, 80, "open"), row(&second, 70, 70, "open")]
        );
        assert_eq!(figures(&meter), (150, 0));
        meter.clock.advance_ms(31 * DAY_MS);
        meter.meter.expire_due().unwrap();
        assert_eq!(refill_lots(&meter).len(), 2, "at the cap: nothing granted");
        let refill = only(meter.meter.refills(TENANT).unwrap());
        assert_eq!(refill.last_start_ms, Some(NEXT_MS + 31 * DAY_MS as i64));
        assert_sound(&meter);
    }

    /// Removing a refill stops it and leaves its lots; a refill that is not valid, or
    /// names a balance the policy does not, is refused and records nothing.
    fn bad_and_removed_refills(store) {
        let meter = TestMeter::on(store, "smarte");
        let refused = |request: RefillRequest| {
            meter.meter.set_refill(TENANT, "r", Some(&request)).unwrap_err()
        };
        let with = |change: &dyn Fn(&mut RefillRequest)| {
            let mut request = monthly("reset", None);
            change(&mut request);
            request
        };
        for bad in [
            with(&|r| r.mode = "keep".to_owned()),
            with(&|r| r.every = "week".to_owned()),
            with(&|r| r.every = "0 days".to_owned()),
            with(&|r| r.rollover_cap = Some(500)),
            with(&|r| r.time_zone = "Mars/Olympus".to_owned()),
            with(&|r| r.mode = "rollover".to_owned()),
        ] {
            let error = refused(bad);
            assert!(matches!(error, MeterError::InvalidRequest(_)), "{error:?}");
        }
        for bad in [with(&|r| r.amount = 0), with(&|r| {
            r.mode = "rollover".to_owned();
            r.rollover_cap = Some(-1);
        })] {
            let error = refused(bad);
            assert!(matches!(error, MeterError::InvalidAmount(_)), "{error:?}");
        }
        let error = refused(with(&|r| r.balance = "export".to_owned()));
        assert!(matches!(error, MeterError::UnknownBalance { .. }), "{error:?}");
        let error = meter
            .meter
            .set_refill(TENANT, &"r".repeat(101), Some(&monthly("reset", None)))
            .unwrap_err();
        assert!(matches!(error, MeterError::InvalidRequest(_)), "{error:?}");
        assert!(meter.meter.refills(TENANT).unwrap().is_empty());
        assert_eq!(figures(&meter), (0, 0));

        meter.meter.set_refill(TENANT, "r", Some(&monthly("reset", None))).unwrap();
        assert!(meter.meter.set_refill(TENANT, "r", None).unwrap().is_empty());
        meter.clock.advance_ms(30 * DAY_MS);
        meter.meter.expire_due().unwrap();
        assert_eq!(refill_lots(&meter).len(), 1, "removed: no second period");
        assert_sound(&meter);
    }
}

/// `PUT`, `GET` and `DELETE /v1/tenants/{tenant}/refills/{refill_id}` (admin to change).
#[test]
fn refills_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let server = Server::start("smarte", &db, Some("s3cret"));
    let path = "/v1/tenants/acme/refills/monthly";
    let body = json!({"balance": "default", "amount": 40, "every": "month",
        "time_zone": "Europe/Paris", "mode": "rollover", "rollover_cap": 100});
    let (status, answer) = server
        .with_token(None)
        .call("PUT", path, Some(&body.to_string()));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, answer) = server.call("PUT", path, Some(&body.to_string()));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer[0]["refill_id"], json!("monthly"));
    assert_eq!(answer[0]["rollover_cap"], json!(100));
    assert!(
        answer[0]["next_start_ms"].as_i64().unwrap() > answer[0]["anchor_ms"].as_i64().unwrap()
    );
    assert_eq!(server.balances("acme")["balances"], json!({"default": 40}));
    let (status, listed) = server.get("/v1/tenants/acme/refills");
    assert_eq!((status, &listed), (200, &answer));
    for (bad, code) in [
        (
            json!({"balance": "default", "amount": 40, "every": "week", "mode": "reset"}),
            "invalid_request",
        ),
        (
            json!({"balance": "default", "amount": 0, "every": "day", "mode": "reset"}),
            "invalid_amount",
        ),
        (
            json!({"balance": "nope", "amount": 5, "every": "day", "mode": "reset"}),
            "unknown_balance",
        ),
        (
            json!({"balance": "default", "amount": 5, "every": "day"}),
            "invalid_request",
        ),
    ] {
        let (status, answer) = server.call("PUT", path, Some(&bad.to_string()));
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{bad} {answer}"
        );
    }
    let (status, answer) = server.call("DELETE", path, None);
    assert_eq!((status, answer), (200, json!([])));
    assert_eq!(server.balances("acme")["balances"], json!({"default": 40}));
}
