//! Grants that take effect later (`effective_at_ms`, `docs/credits.md` part 1): nothing
//! moves until their time, then the sweep grants their lot once; a retry is answered
//! from the first call, a void before the time cancels it, and a grant the ledger can no
//! longer make at its time is refused, named. Through the library on both stores and
//! over HTTP; every test ends with the audit.

use creditgate::MeterError;
use creditgate::model::{GrantRequest, GrantTerms, ScheduledGrantView};
use serde_json::json;

use crate::account::{TENANT, assert_sound, enrich, grant, moved, moves, settle_records};
use crate::support::{HttpGate, START_MS, TestMeter};

const HOUR_MS: i64 = 3_600_000;
const AT_MS: i64 = START_MS as i64 + HOUR_MS;

fn later(effective_in_ms: i64, expires_in_ms: Option<i64>) -> GrantTerms {
    GrantTerms {
        effective_at_ms: Some(START_MS as i64 + effective_in_ms),
        expires_at_ms: expires_in_ms.map(|in_ms| START_MS as i64 + in_ms),
        category: Some("promotional".to_owned()),
        ..GrantTerms::default()
    }
}

fn scheduled(meter: &TestMeter) -> Vec<ScheduledGrantView> {
    meter.meter.lots(TENANT).unwrap().scheduled.unwrap()
}

/// `(grant id, state)` of every scheduled grant, by time.
fn states(meter: &TestMeter) -> Vec<(String, String)> {
    scheduled(meter)
        .into_iter()
        .map(|grant| (grant.grant_id, grant.state))
        .collect()
}

fn named(rows: &[(&str, &str)]) -> Vec<(String, String)> {
    rows.iter()
        .map(|(id, state)| ((*id).to_owned(), (*state).to_owned()))
        .collect()
}

fn available(meter: &TestMeter) -> i64 {
    meter.meter.balances(TENANT).unwrap().balances["default"]
}

crate::on_both_stores! {
    /// Before its time a grant adds nothing and is listed pending; at its time the
    /// sweep grants its lot (a `grant` entry naming it, its expiry kept) and it leaves
    /// the list; a retry of the first call, before or after, changes nothing.
    fn a_grant_takes_effect_at_its_time_and_not_before(store) {
        let meter = TestMeter::on(store, "smarte");
        let first = grant(&meter, "spring", 10, later(HOUR_MS, Some(2 * HOUR_MS))).unwrap();
        assert_eq!(first.balances["default"], 0);
        let listed = scheduled(&meter);
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].amount, listed[0].effective_at_ms, listed[0].state.as_str()),
            (10, AT_MS, "pending")
        );
        assert_eq!(listed[0].expires_at_ms, Some(START_MS as i64 + 2 * HOUR_MS));
        assert!(!enrich(&meter, "early", 1).admitted);
        // The same call again is the same grant; another time or amount is not.
        assert_eq!(grant(&meter, "spring", 10, later(HOUR_MS, Some(2 * HOUR_MS))).unwrap(), first);
        for other in [
            later(HOUR_MS + 1, Some(2 * HOUR_MS)),
            later(HOUR_MS, None),
            GrantTerms { effective_at_ms: None, ..later(HOUR_MS, Some(2 * HOUR_MS)) },
        ] {
            assert!(matches!(grant(&meter, "spring", 10, other), Err(MeterError::GrantConflict(_))));
        }
        assert!(matches!(
            grant(&meter, "spring", 11, later(HOUR_MS, Some(2 * HOUR_MS))),
            Err(MeterError::GrantConflict(_))
        ));

        meter.clock.advance_ms(HOUR_MS as u64 - 1);
        meter.meter.expire_due().unwrap();
        assert_eq!(available(&meter), 0);
        meter.clock.advance_ms(1);
        meter.meter.expire_due().unwrap();
        assert_eq!(available(&meter), 10);
        assert!(scheduled(&meter).is_empty());
        let lots = meter.meter.lots(TENANT).unwrap().lots.unwrap();
        assert_eq!(lots.len(), 1);
        assert_eq!(
            (lots[0].grant_id.as_str(), lots[0].remaining, lots[0].granted_at_ms),
            ("spring", 10, AT_MS as u64)
        );
        assert_eq!(lots[0].expires_at_ms, Some(START_MS as i64 + 2 * HOUR_MS));
        assert_eq!(moves(&meter, 0), moved(&[("grant", "spring", 10)]));

        // A retry now names a time past: the lot granted, unchanged.
        let now = grant(&meter, "spring", 10, later(HOUR_MS, Some(2 * HOUR_MS))).unwrap();
        assert_eq!(now.balances["default"], 10);
        meter.meter.expire_due().unwrap();
        assert_eq!(moves(&meter, 0).len(), 1);
        assert!(enrich(&meter, "on-time", 4).admitted);
        settle_records(&meter, "on-time", 4);

        // At its expiry the lot's remainder leaves, as any lot's.
        meter.clock.advance_ms(HOUR_MS as u64);
        meter.meter.expire_due().unwrap();
        assert_eq!(
            moves(&meter, 1),
            moved(&[("hold", "spring", 4), ("capture", "spring", 4), ("lot_expire", "spring", 6)])
        );
        assert_sound(&meter);
    }

    /// A time already past grants at once; a grant that would expire before it takes
    /// effect, or names a balance the policy does not have, is refused and records
    /// nothing.
    fn a_time_past_grants_at_once_and_bad_schedules_move_nothing(store) {
        let meter = TestMeter::on(store, "smarte");
        let now = grant(&meter, "past", 3, later(-1, None)).unwrap();
        assert_eq!(now.balances["default"], 3);
        assert!(scheduled(&meter).is_empty());
        let refused = grant(&meter, "inverted", 5, later(HOUR_MS, Some(HOUR_MS)));
        assert!(matches!(refused, Err(MeterError::InvalidRequest(_))), "{refused:?}");
        let elsewhere = meter.meter.grant(GrantRequest {
            grant_id: "elsewhere".to_owned(),
            tenant: TENANT.to_owned(),
            balance: "export".to_owned(),
            amount: 5,
            terms: later(HOUR_MS, None),
        });
        assert!(matches!(elsewhere, Err(MeterError::UnknownBalance { .. })), "{elsewhere:?}");
        assert!(scheduled(&meter).is_empty());
        // The ids refused stay free.
        grant(&meter, "inverted", 5, later(HOUR_MS, Some(2 * HOUR_MS))).unwrap();
        assert_eq!(states(&meter), named(&[("inverted", "pending")]));
        assert_sound(&meter);
    }

    /// A void before the time cancels the grant for good: nothing is granted at its
    /// time, the id stays taken (a retry is answered, another grant under it is a
    /// conflict), and voiding again moves nothing.
    fn a_void_before_the_time_cancels_the_grant_for_good(store) {
        let meter = TestMeter::on(store, "smarte");
        grant(&meter, "spring", 10, later(HOUR_MS, None)).unwrap();
        grant(&meter, "summer", 7, later(2 * HOUR_MS, None)).unwrap();
        assert!(matches!(meter.meter.void("other", "spring"), Err(MeterError::UnknownGrant(_))));
        let after = meter.meter.void(TENANT, "spring").unwrap();
        assert_eq!(after.balances["default"], 0);
        assert_eq!(states(&meter), named(&[("spring", "voided"), ("summer", "pending")]));
        assert_eq!(meter.meter.void(TENANT, "spring").unwrap(), after);
        grant(&meter, "spring", 10, later(HOUR_MS, None)).unwrap();
        assert!(matches!(
            grant(&meter, "spring", 10, GrantTerms::default()),
            Err(MeterError::GrantConflict(_))
        ));

        meter.clock.advance_ms(2 * HOUR_MS as u64);
        meter.meter.expire_due().unwrap();
        assert_eq!(available(&meter), 7);
        assert_eq!(moves(&meter, 0), moved(&[("grant", "summer", 7)]));
        assert_eq!(states(&meter), named(&[("spring", "voided")]));
        assert_sound(&meter);
    }

    /// Scheduled grants come back after a restart (SQLite: the snapshot and the log;
    /// PostgreSQL: the table) and are granted once, whichever process sweeps.
    fn scheduled_grants_survive_a_restart_and_are_granted_once(store) {
        let meter = TestMeter::on(store, "smarte");
        grant(&meter, "spring", 10, later(HOUR_MS, None)).unwrap();
        for index in 0..20 {
            grant(&meter, &format!("filler-{index}"), 1, later(3 * HOUR_MS, None)).unwrap();
        }
        meter.meter.void(TENANT, "filler-0").unwrap();
        let before = scheduled(&meter);
        let meter = meter.reopen("smarte");
        assert_eq!(scheduled(&meter), before);
        meter.clock.advance_ms(HOUR_MS as u64);
        meter.meter.expire_due().unwrap();
        assert_eq!(available(&meter), 10);
        let meter = meter.reopen("smarte");
        meter.meter.expire_due().unwrap();
        assert_eq!(available(&meter), 10);
        assert_eq!(scheduled(&meter).len(), 20);
        meter.clock.advance_ms(2 * HOUR_MS as u64);
        meter.meter.expire_due().unwrap();
        assert_eq!(available(&meter), 29);
        assert_eq!(states(&meter), named(&[("filler-0", "voided")]));
        assert_eq!(moves(&meter, 0).len(), 20);
        assert_sound(&meter);
    }

    /// A grant whose balance is no longer the active policy's when its time comes is
    /// refused, named, and never tried again; nothing moves.
    fn a_grant_the_ledger_cannot_make_at_its_time_is_refused(store) {
        let meter = TestMeter::on(store, "smarte");
        grant(&meter, "spring", 10, later(HOUR_MS, None)).unwrap();
        let meter = meter.reopen("donoratlas");
        meter.clock.advance_ms(HOUR_MS as u64);
        meter.meter.expire_due().unwrap();
        meter.meter.expire_due().unwrap();
        let meter = meter.reopen("smarte");
        meter.meter.expire_due().unwrap();
        assert_eq!(available(&meter), 0);
        assert_eq!(states(&meter), named(&[("spring", "refused")]));
        assert!(meter.meter.journal(TENANT, 100).unwrap().is_empty());
        assert_sound(&meter);
    }
}

/// `effective_at_ms` on the grant call, the scheduled list beside the lots, and the
/// void before the time, over HTTP.
#[test]
fn a_grant_effective_later_over_http() {
    let gate = HttpGate::start("smarte");
    let server = &gate.server;
    let effective_at_ms = 4_102_444_800_000_i64;
    let body = json!({"grant_id": "launch", "balance": "default", "amount": 25,
                      "effective_at_ms": effective_at_ms, "category": "promotional"});
    let (status, answer) = server.post("/v1/tenants/acme/grants", body.clone());
    assert_eq!((status, &answer["balances"]["default"]), (200, &json!(0)));
    let (status, again) = server.post("/v1/tenants/acme/grants", body);
    assert_eq!((status, again), (200, answer));
    let (_, listed) = server.get("/v1/tenants/acme/balances?lots=true");
    assert_eq!(listed["lots"], json!([]));
    assert_eq!(
        listed["scheduled"],
        json!([{"grant_id": "launch", "balance": "default", "amount": 25,
                "effective_at_ms": effective_at_ms, "state": "pending", "priority": 0,
                "category": "promotional"}])
    );
    let (_, plain) = server.get("/v1/tenants/acme/balances");
    assert!(plain.get("scheduled").is_none());
    let (status, conflict) = server.post(
        "/v1/tenants/acme/grants",
        json!({"grant_id": "launch", "balance": "default", "amount": 25}),
    );
    assert_eq!(
        (status, &conflict["error"]["code"]),
        (409, &json!("grant_conflict"))
    );
    let (status, inverted) = server.post(
        "/v1/tenants/acme/grants",
        json!({"grant_id": "inverted", "balance": "default", "amount": 5,
               "effective_at_ms": effective_at_ms, "expires_at_ms": effective_at_ms}),
    );
    assert_eq!(
        (status, &inverted["error"]["code"]),
        (400, &json!("invalid_request"))
    );
    let (status, _) = server.post("/v1/tenants/acme/grants/launch/void", json!({}));
    assert_eq!(status, 200);
    let (_, listed) = server.get("/v1/tenants/acme/balances?lots=true");
    assert_eq!(listed["scheduled"][0]["state"], "voided");
}
