//! Threshold events (`docs/credits.md`, part 6): a watched balance raises an event as
//! its credits fall below a level, reach zero, as a lot nears its expiry and expires,
//! as a grant is voided, a refill grants and a spend cap refuses; each once, recorded
//! with the batch that caused it, read from the feed in the ledger's order, after a
//! restart as before. Through the library on both stores and over HTTP; every test ends
//! with the audit.

use std::time::{Duration, Instant};

use creditgate::MeterError;
use creditgate::model::{
    EventDetails, EventView, GrantRequest, GrantTerms, LevelTerms, RefillRequest, SpendCapTerms,
    ThresholdTerms,
};
use serde_json::json;

use crate::account::{TENANT, assert_sound, enrich, settle_records};
use crate::support::{START_MS, Server, TestMeter};

const DAY_MS: u64 = 86_400_000;

fn grant(meter: &TestMeter, tenant: &str, grant_id: &str, amount: i64, expires_at_ms: Option<i64>) {
    meter
        .meter
        .grant(GrantRequest {
            grant_id: grant_id.to_owned(),
            tenant: tenant.to_owned(),
            balance: "default".to_owned(),
            amount,
            terms: GrantTerms {
                expires_at_ms,
                ..GrantTerms::default()
            },
        })
        .unwrap();
}

fn watching(levels: &[LevelTerms], lead_ms: Option<i64>) -> ThresholdTerms {
    ThresholdTerms {
        levels: levels.to_vec(),
        lot_expiring_lead_ms: lead_ms,
    }
}

/// Every event after `after`, as the feed answers at once.
fn feed(meter: &TestMeter, after: u64) -> Vec<EventView> {
    meter
        .meter
        .events(after, 1_000, None, Duration::ZERO)
        .unwrap()
        .events
}

/// The events' kinds with their main figure, for comparing histories.
fn summary(events: &[EventView]) -> Vec<String> {
    events
        .iter()
        .map(|event| {
            let detail = match &event.event {
                EventDetails::BalanceLow {
                    level_credits,
                    before,
                    after,
                    ..
                } => format!("balance_low {level_credits} ({before} -> {after})"),
                EventDetails::BalanceExhausted { before, after } => {
                    format!("balance_exhausted ({before} -> {after})")
                }
                EventDetails::LotExpiring {
                    grant_id,
                    remaining,
                    ..
                } => format!("lot_expiring {grant_id} {remaining}"),
                EventDetails::LotExpired {
                    grant_id, amount, ..
                } => format!("lot_expired {grant_id} {amount}"),
                EventDetails::LotVoided {
                    grant_id, amount, ..
                } => format!("lot_voided {grant_id} {amount}"),
                EventDetails::RefillGranted {
                    grant_id, amount, ..
                } => format!("refill_granted {grant_id} {amount}"),
                EventDetails::SpendCapReached { spent, asked, .. } => {
                    format!("spend_cap_reached {spent}+{asked}")
                }
            };
            format!("{} {}/{}: {detail}", event.id, event.tenant, event.balance)
        })
        .collect()
}

fn ids_increase(events: &[EventView]) {
    for pair in events.windows(2) {
        assert!(pair[0].id < pair[1].id, "{events:?}");
    }
}

crate::on_both_stores! {
    /// Levels in credits and in percent of the latest grant are raised as available
    /// credits fall through them, highest first, and `balance_exhausted` as they reach
    /// zero; a level is raised again only after credits came back above it. Settling a
    /// hold moves nothing available, and raises nothing. A tenant nobody watches raises
    /// nothing.
    fn levels_are_raised_as_credits_fall_through_them(store) {
        let meter = TestMeter::on(store, "smarte");
        grant(&meter, TENANT, "g1", 100, None);
        grant(&meter, "bravo", "b1", 10, None);
        let set = meter
            .meter
            .set_thresholds(
                TENANT,
                "default",
                Some(&watching(&[LevelTerms::Credits(50), LevelTerms::Percent(20)], None)),
            )
            .unwrap();
        assert_eq!(
            set.thresholds["default"].levels,
            [LevelTerms::Credits(50), LevelTerms::Percent(20)]
        );
        assert!(feed(&meter, 0).is_empty(), "setting thresholds raises nothing");

        assert!(enrich(&meter, "t1", 60).admitted);
        settle_records(&meter, "t1", 60);
        assert!(enrich(&meter, "t2", 25).admitted);
        // 5 of t2's 25 come back: 20 available, at the 20% level, no longer below it.
        settle_records(&meter, "t2", 20);
        assert!(enrich(&meter, "t3", 20).admitted);
        settle_records(&meter, "t3", 20);
        // The unwatched tenant spends everything.
        let spent = meter.meter.authorize(creditgate::model::AuthorizeRequest {
            transaction_id: Some("b-t1".to_owned()),
            tenant: "bravo".to_owned(),
            operation: "person.enrich".to_owned(),
            items: (0..10).map(|index| format!("r{index}")).collect(),
            ..Default::default()
        });
        assert!(spent.unwrap().admitted);

        let events = feed(&meter, 0);
        ids_increase(&events);
        let kinds: Vec<String> = summary(&events)
            .iter()
            .map(|line| line.split_once(' ').unwrap().1.to_owned())
            .collect();
        assert_eq!(
            kinds,
            [
                "acme/default: balance_low 50 (100 -> 40)",
                "acme/default: balance_low 20 (40 -> 15)",
                "acme/default: balance_low 20 (20 -> 0)",
                "acme/default: balance_exhausted (20 -> 0)",
            ]
        );
        assert!(matches!(
            events[1].event,
            EventDetails::BalanceLow { level: LevelTerms::Percent(20), .. }
        ));
        assert!(events.iter().all(|event| event.at_ms >= START_MS));

        // Up again, and down through 50 again: raised again.
        grant(&meter, TENANT, "g2", 60, None);
        assert!(enrich(&meter, "t4", 15).admitted);
        let again = feed(&meter, events[3].id);
        assert_eq!(
            summary(&again).iter().map(|line| line.split_once(' ').unwrap().1).collect::<Vec<_>>(),
            ["acme/default: balance_low 50 (60 -> 45)"]
        );
        // A page, a cursor, a tenant.
        let page = meter.meter.events(0, 2, None, Duration::ZERO).unwrap();
        assert_eq!((page.events.len(), page.next_after), (2, events[1].id));
        let rest = meter.meter.events(page.next_after, 1_000, Some(TENANT), Duration::ZERO).unwrap();
        assert_eq!(rest.events.len(), 3);
        assert!(meter.meter.events(0, 10, Some("bravo"), Duration::ZERO).unwrap().events.is_empty());
        assert_sound(&meter);
    }

    /// A lot is warned of once, a lead time before it expires (not again after a
    /// restart), then its expiry, its void and a refill's grant are raised; removing
    /// the thresholds stops the events.
    fn lots_are_warned_of_once_and_their_closing_is_raised(store) {
        let meter = TestMeter::on(store, "smarte");
        meter
            .meter
            .set_thresholds(TENANT, "default", Some(&watching(&[], Some(DAY_MS as i64))))
            .unwrap();
        let expires = START_MS as i64 + 3 * DAY_MS as i64;
        grant(&meter, TENANT, "promo", 30, Some(expires));
        grant(&meter, TENANT, "far", 5, Some(expires + 10 * DAY_MS as i64));
        grant(&meter, TENANT, "paid", 40, None);
        meter.meter.expire_due().unwrap();
        assert!(feed(&meter, 0).is_empty(), "two days before: no warning");
        meter.clock.advance_ms(2 * DAY_MS + 1);
        meter.meter.expire_due().unwrap();
        meter.clock.advance_ms(2_000);
        meter.meter.expire_due().unwrap();
        let meter = meter.reopen("smarte");
        meter.clock.advance_ms(2_000);
        meter.meter.expire_due().unwrap();
        let warned = summary(&feed(&meter, 0));
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0].ends_with("lot_expiring promo 30"), "{warned:?}");

        meter.clock.advance_ms(DAY_MS);
        meter.meter.expire_due().unwrap();
        meter.meter.void(TENANT, "far").unwrap();
        meter
            .meter
            .set_refill(
                TENANT,
                "monthly",
                Some(&RefillRequest {
                    balance: "default".to_owned(),
                    amount: 100,
                    every: "month".to_owned(),
                    time_zone: "UTC".to_owned(),
                    anchor_ms: None,
                    mode: "reset".to_owned(),
                    rollover_cap: None,
                    priority: 0,
                    category: None,
                }),
            )
            .unwrap();
        let events = feed(&meter, 0);
        ids_increase(&events);
        let lines = summary(&events);
        let tails: Vec<&str> = lines.iter().map(|line| line.split_once(": ").unwrap().1).collect();
        assert_eq!(tails.len(), 4, "{lines:?}");
        assert_eq!(tails[1], "lot_expired promo 30");
        assert_eq!(tails[2], "lot_voided far 5");
        assert!(tails[3].starts_with("refill_granted refill:monthly:"), "{tails:?}");

        meter.meter.set_thresholds(TENANT, "default", None).unwrap();
        meter.meter.void(TENANT, "paid").unwrap();
        assert_eq!(feed(&meter, 0).len(), 4, "no longer watched");
        assert!(meter.meter.balances(TENANT).unwrap().thresholds.is_empty());
        assert_sound(&meter);
    }

    /// A lot that expires while its credits are held raises its expiry with what was
    /// left unheld (here none), and the held credits raise another `lot_expired` when
    /// their hold's release sends them out of the closed lot.
    fn credits_held_past_their_lots_expiry_are_raised_when_they_leave(store) {
        let meter = TestMeter::on(store, "smarte");
        meter
            .meter
            .set_thresholds(TENANT, "default", Some(&watching(&[], None)))
            .unwrap();
        grant(&meter, TENANT, "promo", 3, Some(START_MS as i64 + 60_000));
        grant(&meter, TENANT, "paid", 10, None);
        assert!(enrich(&meter, "t1", 4).admitted);
        meter.clock.advance_ms(61_000);
        meter.meter.expire_due().unwrap();
        settle_records(&meter, "t1", 0);
        let lines = summary(&feed(&meter, 0));
        let expired: Vec<&str> = lines
            .iter()
            .map(|line| line.split_once(": ").unwrap().1)
            .filter(|line| line.starts_with("lot_expired"))
            .collect();
        assert_eq!(expired, ["lot_expired promo 0", "lot_expired promo 3"], "{lines:?}");
        assert_sound(&meter);
    }

    /// The host's refusal by a spend cap is raised once per window, however many
    /// admissions it refuses, and again in the next window.
    fn a_spend_cap_refusal_is_raised_once_per_window(store) {
        let meter = TestMeter::on(store, "misbehaving");
        grant(&meter, TENANT, "g1", 1_000, None);
        meter
            .meter
            .set_spend_cap(
                TENANT,
                "default",
                Some(&SpendCapTerms {
                    cap: 2,
                    window: "hour".to_owned(),
                    time_zone: "UTC".to_owned(),
                }),
            )
            .unwrap();
        meter
            .meter
            .set_thresholds(TENANT, "default", Some(&watching(&[], None)))
            .unwrap();
        let flat = |id: String| {
            meter
                .meter
                .authorize(creditgate::model::AuthorizeRequest {
                    transaction_id: Some(id),
                    tenant: TENANT.to_owned(),
                    operation: "flat".to_owned(),
                    items: vec!["r".to_owned()],
                    ..Default::default()
                })
                .unwrap()
                .admitted
        };
        let admitted: Vec<bool> = (0..5).map(|index| flat(format!("a{index}"))).collect();
        assert_eq!(admitted, [true, true, false, false, false]);
        meter.clock.advance_ms(3_600_000);
        let admitted: Vec<bool> = (0..3).map(|index| flat(format!("b{index}"))).collect();
        assert_eq!(admitted, [true, true, false]);
        let lines = summary(&feed(&meter, 0));
        let tails: Vec<&str> = lines.iter().map(|line| line.split_once(": ").unwrap().1).collect();
        assert_eq!(tails, ["spend_cap_reached 2+1", "spend_cap_reached 2+1"]);
        assert_sound(&meter);
    }

    /// A reader waiting on an empty feed wakes with the next event; bad thresholds and
    /// bad reads are refused and record nothing.
    fn the_feed_waits_for_the_next_event_and_refuses_bad_input(store) {
        let meter = TestMeter::on(store, "smarte");
        grant(&meter, TENANT, "g1", 10, None);
        for bad in [
            watching(&[LevelTerms::Percent(0)], None),
            watching(&[LevelTerms::Percent(101)], None),
            watching(&[LevelTerms::Credits(1); 17], None),
            watching(&[], Some(-1)),
            watching(&[], Some(400 * DAY_MS as i64)),
        ] {
            let error = meter.meter.set_thresholds(TENANT, "default", Some(&bad)).unwrap_err();
            assert!(matches!(error, MeterError::InvalidRequest(_)), "{bad:?}: {error:?}");
        }
        let error = meter
            .meter
            .set_thresholds(TENANT, "export", Some(&watching(&[], None)))
            .unwrap_err();
        assert!(matches!(error, MeterError::UnknownBalance { .. }), "{error:?}");
        for (limit, wait) in [(0, 0), (1_001, 0), (10, 30_001)] {
            let error = meter
                .meter
                .events(0, limit, None, Duration::from_millis(wait))
                .unwrap_err();
            assert!(matches!(error, MeterError::InvalidRequest(_)), "{error:?}");
        }
        assert!(meter.meter.balances(TENANT).unwrap().thresholds.is_empty());

        meter
            .meter
            .set_thresholds(TENANT, "default", Some(&watching(&[LevelTerms::Credits(5)], None)))
            .unwrap();
        let started = Instant::now();
        let page = std::thread::scope(|scope| {
            let reader = scope.spawn(|| meter.meter.events(0, 10, None, Duration::from_secs(20)));
            std::thread::sleep(Duration::from_millis(300));
            assert!(enrich(&meter, "t1", 8).admitted);
            reader.join().unwrap().unwrap()
        });
        assert_eq!(page.events.len(), 1, "{page:?}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the reader woke with the event, before its wait ended"
        );
        let empty = meter.meter.events(page.next_after, 10, None, Duration::from_millis(50)).unwrap();
        assert_eq!((empty.events.len(), empty.next_after), (0, page.next_after));
        assert_sound(&meter);
    }
}

/// Over HTTP: the thresholds are the admin's; the feed is the admin's, long-polled,
/// paged by `next_after`, and refuses bad parameters with 400.
#[test]
fn thresholds_and_the_feed_over_http() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start("smarte", db.path().join("ledger.db"), Some("secret"));
    let admin = server.with_token(Some("secret"));
    let anyone = server.with_token(None);
    let (status, _) = admin.post(
        "/v1/tenants/acme/grants",
        json!({"grant_id": "g1", "balance": "default", "amount": 10}),
    );
    assert_eq!(status, 200);
    let (status, body) = anyone.call(
        "PUT",
        "/v1/tenants/acme/balances/default/thresholds",
        Some(r#"{"levels":[{"credits":5}]}"#),
    );
    assert_eq!(status, 401, "{body}");
    let (status, body) = admin.call(
        "PUT",
        "/v1/tenants/acme/balances/default/thresholds",
        Some(r#"{"levels":[{"credits":5},{"percent":50}],"lot_expiring_lead_ms":60000}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["thresholds"]["default"],
        json!({"levels": [{"credits": 5}, {"percent": 50}], "lot_expiring_lead_ms": 60000})
    );
    for bad in [
        r#"{"levels":[{"percent":0}]}"#,
        r#"{"levels":[{"percent":1000}]}"#,
        r#"{"levels":[{"credits":"many"}]}"#,
        r#"{"levels":[],"colour":"red"}"#,
    ] {
        let (status, body) = admin.call(
            "PUT",
            "/v1/tenants/acme/balances/default/thresholds",
            Some(bad),
        );
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = anyone.call("GET", "/v1/events", None);
    assert_eq!(status, 401);
    for bad in [
        "limit=0",
        "limit=1001",
        "wait_ms=30001",
        "after=-1",
        "tenant=a%20b",
    ] {
        let (status, body) = admin.call("GET", &format!("/v1/events?{bad}"), None);
        assert_eq!(status, 400, "{bad}: {body}");
    }

    let waiting = {
        let admin = admin.with_token(Some("secret"));
        std::thread::spawn(move || admin.call("GET", "/v1/events?after=0&wait_ms=20000", None))
    };
    std::thread::sleep(Duration::from_millis(300));
    let (status, answer) = anyone.post(
        "/v1/authorize",
        json!({"tenant": "acme", "operation": "person.enrich", "items": ["a","b","c","d","e","f"]}),
    );
    assert_eq!(
        (status, answer["admitted"].as_bool()),
        (200, Some(true)),
        "{answer}"
    );
    let (status, page) = waiting.join().unwrap();
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"][0]["kind"], "balance_low", "{page}");
    // Two levels of 5 credits (the second is 50% of the 10 granted), in the order set.
    assert_eq!(
        page["events"][0]["details"],
        json!({"level": {"credits": 5}, "level_credits": 5, "before": 10, "after": 4})
    );
    assert_eq!(
        page["events"][1]["details"]["level"],
        json!({"percent": 50}),
        "{page}"
    );
    assert_eq!(page["events"].as_array().map(Vec::len), Some(2), "{page}");
    let next = page["next_after"].as_u64().unwrap();
    let (status, empty) = admin.call("GET", &format!("/v1/events?after={next}"), None);
    assert_eq!(
        (status, empty["events"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (status, _) = admin.call(
        "DELETE",
        "/v1/tenants/acme/balances/default/thresholds",
        None,
    );
    assert_eq!(status, 200);
}
