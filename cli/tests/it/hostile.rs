//! The hostile gallery: a policy that attacks the host (`tests/fixtures/hostile`) fails
//! each attack closed with a stable code, moves no credit, and cannot keep the meter
//! from other tenants (docs/policy-budget.md).

use std::time::{Duration, Instant};

use creditgate::policy::component::Limits;
use creditgate::store::StoreLocation;
use creditgate::store::scratch::ScratchStore;

use crate::support::{Gate, Server, TestMeter, assert_ledger_sound, component, uuid};

/// Each attack (an operation of the hostile fixture), what the client gets.
const GALLERY: &[(&str, u16, &str)] = &[
    ("mark-keys-flood", 500, "policy_host_limit"),
    ("mark-lookups-flood", 500, "policy_host_limit"),
    ("burn-fuel", 500, "policy_fuel_exhausted"),
    ("recurse", 500, "policy_trap"),
    ("alloc-1gib", 500, "policy_trap"),
    ("headers-8mib", 500, "policy_fuel_exhausted"),
    ("headers-aliased", 500, "policy_host_limit"),
    ("headers-1m", 500, "policy_fuel_exhausted"),
    ("meta-10mb", 500, "policy_fuel_exhausted"),
    ("meta-5mb", 500, "policy_host_limit"),
    ("amount-negative", 500, "policy_invalid_verdict"),
    ("amount-i64-min", 500, "policy_invalid_verdict"),
    ("amount-overflow", 500, "policy_invalid_verdict"),
    ("overadmit", 500, "policy_invalid_verdict"),
    ("wasi-clock", 500, "policy_trap"),
    ("wasi-file", 500, "policy_trap"),
    ("wasi-stdout", 500, "policy_trap"),
];

const GRANTED: i64 = 5;

/// The attack fails with its code, on a tenant of its own (so no breaker opens from
/// another case's strikes); nothing moves and nothing is recorded.
fn assert_contained(meter: &TestMeter, operation: &str, status: u16, code: &str) {
    let tenant = format!("tenant-{operation}");
    meter.grant(&tenant, "default", GRANTED);
    let id = format!("{operation}-{}", uuid());
    let failure = meter
        .try_authorize(&id, &tenant, operation, &["x"], &[])
        .unwrap_err();
    assert_eq!(
        (failure.status(), failure.code()),
        (status, code),
        "{operation}: {failure}"
    );
    assert_eq!(
        meter.available(&tenant, "default"),
        GRANTED,
        "{operation} moved credits"
    );
    assert!(
        meter.meter.transaction(&id).is_err(),
        "{operation} left a record"
    );
}

#[test]
fn every_attack_in_the_gallery_fails_closed_with_its_code_and_moves_nothing() {
    let meter = TestMeter::new("hostile");
    for (operation, status, code) in GALLERY {
        assert_contained(&meter, operation, *status, code);
    }
    let after = meter.authorize("after", "bystander-tenant", "flat", &[], &[]);
    assert!(!after.admitted, "no credits granted: refused, but served");
    meter.assert_sound();
}

#[test]
fn marks_only_the_store_can_answer_cost_the_call_its_fuel() {
    let meter = TestMeter::new("hostile");
    meter.grant("seeder", "default", GRANTED);
    let seeded = meter.authorize("seed", "seeder", "seed-marks", &[], &[]);
    assert!(seeded.admitted, "{seeded:?}");
    meter.settle("seed", 200, &[]);
    // Once the views have the marks, memory forgets them: only the store can answer.
    meter.meter.transaction("seed").unwrap();
    meter.authorize("evict", "seeder", "flat", &[], &[]);
    let failure = meter
        .try_authorize("flood", "seeder", "stored-marks-flood", &[], &[])
        .unwrap_err();
    assert_eq!(failure.code(), "policy_fuel_exhausted", "{failure}");
    meter.assert_sound();
}

#[test]
fn a_policy_that_traps_in_settle_charges_nothing_and_keeps_the_hold() {
    let meter = TestMeter::new("hostile");
    meter.grant("acme", "default", GRANTED);
    let admitted = meter.authorize("t1", "acme", "settle-trap", &[], &[]);
    assert!(admitted.admitted);
    let failure = meter.try_settle("t1", 200, &[]).unwrap_err();
    assert_eq!(failure.code(), "policy_trap", "{failure}");
    let balances = meter.balances("acme");
    assert_eq!(balances.balances["default"], GRANTED - 1, "the hold stays");
    assert_eq!(balances.held["default"], 1);
    meter.assert_sound();
}

#[test]
fn a_describe_far_beyond_the_contract_is_an_invalid_policy() {
    let meter = TestMeter::new("hostile");
    let error = meter
        .meter
        .activate(component("describe_huge"), "test")
        .unwrap_err();
    assert_eq!(
        (error.status(), error.code()),
        (422, "invalid_policy"),
        "{error}"
    );
    assert_eq!(
        meter.meter.policy().name,
        "hostile",
        "the active policy stays"
    );
}

/// A legal but slow module is refused at activation, with what its calls cost.
#[test]
fn activating_a_legal_but_slow_policy_is_refused_with_its_cost() {
    let meter = TestMeter::new("hostile");
    let error = meter
        .meter
        .activate(component("slow_legal"), "test")
        .unwrap_err();
    assert_eq!((error.status(), error.code()), (422, "invalid_policy"));
    let message = error.to_string();
    assert!(message.contains("contract/cost"), "{message}");
    assert!(message.contains("cost per call"), "{message}");
    assert_eq!(meter.meter.policy().name, "hostile");
}

/// Fuel does not see everything a call spends time on: the wall-clock bound stops any
/// call, here a loop given far more fuel than it can burn in 3 ms.
#[test]
fn a_call_past_its_wall_clock_bound_fails_closed() {
    let limits = Limits {
        fuel_per_call: u64::MAX / 4,
        wall_ms_per_call: 3,
        ..Limits::default()
    };
    let meter = TestMeter::with_limits(&ScratchStore::Sqlite, "hostile", limits);
    let started = Instant::now();
    assert_contained(&meter, "burn-fuel", 500, "policy_time_exceeded");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Strikes in a row open the tenant's breaker: its calls are refused without running
/// (503 with a retry time) while others are served; after the cool-off one call runs
/// again and a clean one closes the breaker.
#[test]
fn a_tenant_whose_calls_keep_exceeding_their_budget_is_refused_for_a_while() {
    let meter = TestMeter::new("hostile");
    meter.grant("burner", "default", GRANTED);
    meter.grant("bystander", "default", GRANTED);
    for attempt in 0..3 {
        let failure = meter
            .try_authorize(&format!("burn-{attempt}"), "burner", "burn-fuel", &[], &[])
            .unwrap_err();
        assert_eq!(failure.code(), "policy_fuel_exhausted");
    }
    let refused_at = Instant::now();
    let failure = meter
        .try_authorize("refused", "burner", "flat", &[], &[])
        .unwrap_err();
    assert_eq!(
        (failure.status(), failure.code()),
        (503, "policy_budget_exceeded"),
        "{failure}"
    );
    assert!(meter.meter.transaction("refused").is_err());
    let served = meter.authorize("served", "bystander", "flat", &[], &[]);
    assert!(served.admitted, "another tenant is served");
    std::thread::sleep(Duration::from_millis(1_050).saturating_sub(refused_at.elapsed()));
    let again = meter.authorize("again", "burner", "flat", &[], &[]);
    assert!(
        again.admitted,
        "after the cool-off a clean call runs and closes the breaker"
    );
    assert_eq!(meter.available("burner", "default"), GRANTED - 1);
    meter.assert_sound();
}

/// A shadow candidate that keeps exceeding its budget is stopped, and the active
/// policy's answers never change.
#[test]
fn a_shadow_over_budget_is_stopped_and_never_changes_an_answer() {
    let meter = TestMeter::new("misbehaving");
    meter.grant("acme", "default", 100);
    meter.meter.set_shadow(component("hostile")).unwrap();
    for index in 0..20 {
        let answer = meter.authorize(&format!("s{index}"), "acme", "burn-fuel", &[], &[]);
        assert!(answer.admitted, "the active policy decides");
    }
    let report = meter.meter.shadow_report().unwrap();
    assert_eq!(report.over_budget, 16);
    assert!(report.stopped.is_some(), "{report:?}");
    assert_eq!(
        report.by_kind["shadow_failed"], 16,
        "no call after it stopped"
    );
    meter.assert_sound();
}

/// While one tenant floods the server with calls that burn their whole budget, another
/// tenant on the same server is still answered quickly, every time.
#[test]
fn one_tenant_burning_its_budget_does_not_stall_another_on_the_same_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("hostile", dir.path().join("ledger.db"), None);
    server.grant("burner", "default", 1_000, "g-burner");
    server.grant("bystander", "default", 1_000, "g-bystander");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attackers: Vec<_> = (0..2)
        .map(|worker| {
            let client = server.with_token(None);
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut sent = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for operation in ["burn-fuel", "mark-keys-flood", "headers-aliased"] {
                        let _ = client.try_post(
                            "/v1/authorize",
                            &serde_json::json!({
                                "transaction_id": format!("attack-{worker}-{sent}"),
                                "tenant": "burner",
                                "operation": operation,
                            }),
                        );
                        sent += 1;
                    }
                }
                sent
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for index in 0..200 {
        let started = Instant::now();
        let (status, answer) = server.post(
            "/v1/authorize",
            serde_json::json!({"transaction_id": format!("b{index}"), "tenant": "bystander", "operation": "flat"}),
        );
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["admitted"], true, "{answer}");
        server.post(
            "/v1/settle",
            serde_json::json!({"transaction_id": format!("b{index}"), "status": 200}),
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let attacks: u32 = attackers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(attacks > 3, "the attack ran ({attacks} calls)");
    // Generous for a shared machine; a stalled sequencer took 13 to 55 s.
    assert!(
        slowest < Duration::from_millis(500),
        "the bystander waited {slowest:?}"
    );
    assert_eq!(server.balances("burner")["balances"]["default"], 1_000);
    assert_eq!(server.balances("bystander")["balances"]["default"], 800);
    drop(server);
    assert_ledger_sound(&StoreLocation::Sqlite(dir.path().join("ledger.db")));
}
