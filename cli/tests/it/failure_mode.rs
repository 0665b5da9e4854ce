//! The failure mode (docs/policy-budget.md, "The failure mode"): `closed` refuses a
//! request whose policy failed; `open` admits it unpriced, records it (an `open` entry
//! on the tenant's exposure window), and fails closed again once the window's exposure
//! is spent, across restarts, on both stores. Istio's FAIL_OPEN was found failing
//! closed in practice (istio#53279): these drive the hostile fixture end to end.

use std::collections::BTreeMap;

use creditgate::meter::failure::{EXPOSURE_WINDOW_MS, FailureMode, FailurePolicy};
use creditgate::model::{Authorization, TransactionView};
use creditgate::store::scratch::ScratchStore;
use serde_json::json;

use crate::support::{
    Gate, START_MS, Server, TestMeter, assert_ledger_sound, postgres_store, uuid,
};

const GRANTED: i64 = 5;

/// Open, 2 credits of exposure per admission, 5 per tenant and hour: two open
/// admissions fit in a window, the third does not.
fn open_policy() -> FailurePolicy {
    FailurePolicy {
        mode: FailureMode::Open,
        per_operation: BTreeMap::new(),
        open_credits_per_request: 2,
        open_credits_per_tenant_per_hour: 5,
    }
}

fn window(at_ms: u64) -> String {
    format!("exposure@{}", at_ms - at_ms % EXPOSURE_WINDOW_MS)
}

/// An open admission: every item admitted, nothing held or charged, the failure named.
fn assert_admitted_open(answer: &Authorization, code: &str) {
    assert!(answer.admitted, "{answer:?}");
    assert_eq!(answer.admitted_items, 2, "{answer:?}");
    assert!(
        answer.held.is_empty() && answer.charged.is_empty(),
        "{answer:?}"
    );
    assert_eq!(answer.error, None);
    assert_eq!(
        answer
            .failed_open
            .as_ref()
            .map(|failure| failure.code.as_str()),
        Some(code),
        "{answer:?}"
    );
}

/// The transaction's journal: one `open` entry of 2 credits on the window's account.
fn assert_recorded_open(view: &TransactionView, window: &str) {
    let entries: Vec<_> = view
        .entries
        .iter()
        .map(|entry| (entry.balance.as_str(), entry.kind.as_str(), entry.amount))
        .collect();
    assert_eq!(entries, [(window, "open", 2)], "{view:?}");
}

fn open_mode_end_to_end(store: &ScratchStore) {
    let meter = TestMeter::with_failure(store, "hostile", open_policy());
    let tenant = format!("acme-{}", uuid());
    meter.grant(&tenant, "default", GRANTED);
    let first_window = window(START_MS);

    // Two policy failures are admitted open; nothing moves on the tenant's balances.
    for id in ["open-1", "open-2"] {
        let answer = meter.authorize(id, &tenant, "burn-fuel", &["a", "b"], &[]);
        assert_admitted_open(&answer, "policy_fuel_exhausted");
        assert_eq!(answer.balances["default"], GRANTED);
        assert_recorded_open(&meter.transaction(id).expect("recorded"), &first_window);
    }
    // The third would pass the window's 5 credits: closed, with the failure's own error.
    let refused = meter
        .try_authorize("open-3", &tenant, "burn-fuel", &["a", "b"], &[])
        .unwrap_err();
    assert_eq!(
        (refused.status(), refused.code()),
        (500, "policy_fuel_exhausted")
    );
    assert!(
        meter.transaction("open-3").is_err(),
        "a refusal is not recorded"
    );
    // Three failures opened the breaker: its refusal is a policy failure too, and closed.
    let refused = meter
        .try_authorize("open-4", &tenant, "burn-fuel", &["a", "b"], &[])
        .unwrap_err();
    assert_eq!(refused.code(), "policy_budget_exceeded");

    // A retry answers the same; the settle charges nothing and says why.
    let again = meter.authorize("open-1", &tenant, "burn-fuel", &["a", "b"], &[]);
    assert_admitted_open(&again, "policy_fuel_exhausted");
    for _ in 0..2 {
        let receipt = meter.settle("open-1", 200, &[]);
        assert!(receipt.charged.is_empty(), "{receipt:?}");
        assert_eq!(
            receipt.failed_open.map(|failure| failure.code),
            Some("policy_fuel_exhausted".to_owned())
        );
    }
    assert_eq!(meter.available(&tenant, "default"), GRANTED);

    // Only failures of the policy open: a bad request is still refused as such.
    let bad = meter
        .try_authorize("", &tenant, "burn-fuel", &["a", "b"], &[])
        .unwrap_err();
    assert_eq!(bad.code(), "invalid_request");
    // Another tenant's well-behaved calls are priced as ever.
    let bystander = format!("bystander-{}", uuid());
    meter.grant(&bystander, "default", GRANTED);
    let priced = meter.authorize("priced", &bystander, "flat", &["a"], &[]);
    assert_eq!(
        (priced.failed_open.is_none(), priced.held.get("default")),
        (true, Some(&1))
    );
    meter.assert_sound();

    // A restart keeps the window: still full (the fresh breaker lets the call run).
    let meter = meter.reopen("hostile");
    let refused = meter
        .try_authorize("open-5", &tenant, "burn-fuel", &["a", "b"], &[])
        .unwrap_err();
    assert_eq!(refused.code(), "policy_fuel_exhausted");
    // The next hour is a new window.
    meter.clock.advance_ms(EXPOSURE_WINDOW_MS);
    let meter = meter.reopen("hostile");
    let answer = meter.authorize("open-6", &tenant, "burn-fuel", &["a", "b"], &[]);
    assert_admitted_open(&answer, "policy_fuel_exhausted");
    let next_window = window(START_MS + EXPOSURE_WINDOW_MS);
    assert_ne!(next_window, first_window);
    assert_recorded_open(
        &meter.transaction("open-6").expect("recorded"),
        &next_window,
    );
    assert_eq!(meter.available(&tenant, "default"), GRANTED);
    meter.assert_sound();
}

#[test]
fn open_admits_unpriced_records_it_and_fails_closed_past_the_window_on_sqlite() {
    open_mode_end_to_end(&ScratchStore::Sqlite);
}

#[test]
fn open_admits_unpriced_records_it_and_fails_closed_past_the_window_on_postgres() {
    open_mode_end_to_end(&postgres_store());
}

#[test]
fn an_operation_can_stay_closed_while_the_meter_fails_open() {
    let mut failure = open_policy();
    failure
        .per_operation
        .insert("burn-fuel".to_owned(), FailureMode::Closed);
    let meter = TestMeter::with_failure(&ScratchStore::Sqlite, "hostile", failure);
    meter.grant("acme", "default", GRANTED);
    let refused = meter
        .try_authorize("closed-op", "acme", "burn-fuel", &["a", "b"], &[])
        .unwrap_err();
    assert_eq!(refused.code(), "policy_fuel_exhausted");
    let answer = meter.authorize("open-op", "acme", "recurse", &["a", "b"], &[]);
    assert_admitted_open(&answer, "policy_trap");
    meter.assert_sound();
}

/// Over HTTP, with the flags an operator gives: open admits and records, the cap
/// closes it; the same ledger served in the default mode fails closed.
#[test]
fn both_modes_over_http_with_the_hostile_fixture() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("ledger.db");
    let token = "failure-mode-token";
    let open = Server::start_with_args(
        Some("hostile"),
        &db,
        Some(token),
        &[
            "--policy-failure-mode",
            "open",
            "--failure-open-credits-per-request",
            "2",
            "--failure-open-credits-per-tenant-per-hour",
            "5",
        ],
    );
    open.grant("acme", "default", GRANTED, "grant-1");
    let authorize = |server: &Server, id: &str| {
        server.post(
            "/v1/authorize",
            json!({"transaction_id": id, "tenant": "acme", "operation": "wasi-clock", "items": ["a", "b"]}),
        )
    };
    for id in ["http-1", "http-2"] {
        let (status, answer) = authorize(&open, id);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["admitted"], true, "{answer}");
        assert_eq!(answer["failed_open"]["code"], "policy_trap", "{answer}");
        assert_eq!(answer["charged"], json!({}), "{answer}");
    }
    let (status, answer) = authorize(&open, "http-3");
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (500, Some("policy_trap")),
        "{answer}"
    );
    let (status, settled) = open.post(
        "/v1/settle",
        json!({"transaction_id": "http-1", "status": 200}),
    );
    assert_eq!(status, 200, "{settled}");
    assert_eq!(settled["failed_open"]["code"], "policy_trap", "{settled}");
    let (_, journal) = open.get("/v1/tenants/acme/journal");
    let open_entries = journal["entries"]
        .as_array()
        .or_else(|| journal.as_array())
        .expect("journal entries")
        .iter()
        .filter(|entry| entry["kind"] == "open")
        .count();
    assert_eq!(open_entries, 2, "{journal}");
    assert_eq!(open.balances("acme")["balances"]["default"], GRANTED);
    let (_, health) = open.get("/healthz");
    assert_eq!(
        health["policy_failures"],
        json!({"mode": "open", "admitted_open": 2, "failed_closed": 1}),
        "{health}"
    );
    drop(open);

    let closed = Server::start("hostile", &db, Some(token));
    let (status, answer) = authorize(&closed, "http-4");
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (500, Some("policy_trap")),
        "{answer}"
    );
    let (_, health) = closed.get("/healthz");
    assert_eq!(
        health["policy_failures"],
        json!({"mode": "closed", "admitted_open": 0, "failed_closed": 1}),
        "{health}"
    );
    drop(closed);
    assert_ledger_sound(&creditgate::store::StoreLocation::Sqlite(db));
}
