//! A policy is sandboxed and checked: a trap, a runaway loop, a reach for the host or
//! a verdict that breaks the contract fails that request closed, moves no credit, and
//! the meter keeps serving.

use creditgate::{Meter, MeterConfig, PolicySource};
use serde_json::json;

use crate::support::{Gate, TestMeter};

fn meter() -> TestMeter {
    let meter = TestMeter::new("misbehaving");
    meter.grant("acme", "default", 5);
    meter
}

/// The misbehaviour fails with `code`; the balance is untouched; the meter still works.
fn assert_fails_closed(meter: &TestMeter, operation: &str, status: u16, code: &str) {
    let error = meter
        .try_authorize(&format!("{operation}-1"), "acme", operation, &["x"], &[])
        .unwrap_err();
    assert_eq!(
        (error.status(), error.code()),
        (status, code),
        "{operation}: {error}"
    );
    assert_eq!(
        meter.available("acme", "default"),
        5,
        "{operation} moved credits"
    );
    assert!(
        meter.meter.transaction(&format!("{operation}-1")).is_err(),
        "{operation} left a record"
    );
    let healthy = meter.authorize(&format!("after-{operation}"), "acme", "flat", &[], &[]);
    assert!(
        healthy.admitted,
        "the meter stopped serving after {operation}"
    );
    meter.settle(&format!("after-{operation}"), 200, &[]);
    meter.grant("acme", "default", 2);
    meter.assert_sound();
}

#[test]
fn a_trapping_policy_fails_the_request_closed_and_the_meter_keeps_serving() {
    assert_fails_closed(&meter(), "trap", 500, "policy_trap");
}

#[test]
fn a_policy_that_exhausts_its_cpu_budget_fails_closed() {
    assert_fails_closed(&meter(), "spin", 500, "policy_fuel_exhausted");
}

#[test]
fn a_policy_gets_no_clock_or_files() {
    let meter = meter();
    for operation in ["clock", "file"] {
        assert_fails_closed(&meter, operation, 500, "policy_trap");
    }
}

/// Guest runtimes read the environment and random bytes as they start: the host answers
/// both, with nothing to decide by. The environment is empty; the "random" bytes are the
/// same in every fresh instance, so std's hash keys (drawn from them) hash alike after a
/// restart. Within one instance each new `RandomState` differs (std adds one to its
/// keys): a policy that prices by them answers one request two ways, which the
/// determinism probe refuses.
#[test]
fn a_policy_reads_an_empty_environment_and_the_same_random_bytes_in_every_instance() {
    let first = meter();
    let seen = first.authorize("env-1", "acme", "env", &[], &[]);
    assert!(seen.admitted, "{seen:?}");
    assert_eq!(seen.meta, json!({"variables": 0, "arguments": 0}));
    let hashes = |meter: &TestMeter| -> Vec<serde_json::Value> {
        (0..3)
            .map(|i| {
                let answer = meter.authorize(&format!("random-{i}"), "acme", "random", &[], &[]);
                assert!(answer.admitted, "{answer:?}");
                answer.meta["hash"].clone()
            })
            .collect()
    };
    let in_first = hashes(&first);
    assert_ne!(
        in_first[0], in_first[1],
        "std's keys advance within an instance"
    );
    assert_eq!(
        hashes(&meter()),
        in_first,
        "a fresh instance draws the same bytes"
    );
    assert_eq!(first.available("acme", "default"), 5);
    first.assert_sound();
}

#[test]
fn verdicts_that_break_the_contract_fail_closed() {
    let meter = meter();
    for operation in ["negative", "undescribed", "overadmit", "bad-meta"] {
        assert_fails_closed(&meter, operation, 500, "policy_invalid_verdict");
    }
}

#[test]
fn an_admission_beyond_the_balance_is_refused_by_the_host() {
    let meter = meter();
    let answer = meter.authorize("o1", "acme", "overspend", &[], &[]);
    assert!(!answer.admitted);
    assert_eq!(answer.status, Some(402));
    assert_eq!(
        answer.error.map(|e| e.code),
        Some("insufficient_credits".to_owned())
    );
    assert_eq!(meter.available("acme", "default"), 5);
    meter.assert_sound();
}

#[test]
fn bytes_that_are_not_a_component_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = MeterConfig::new(dir.path().join("ledger.db"));
    let error = Meter::open(config, PolicySource::Component(b"not wasm".to_vec()))
        .err()
        .expect("garbage must be refused");
    assert!(
        error
            .to_string()
            .contains("not a valid WebAssembly component"),
        "{error}"
    );
}
