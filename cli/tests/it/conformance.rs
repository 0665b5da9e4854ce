//! The conformance suite: every case file is valid, both reference policies pass it,
//! and it bites: each deliberately broken module fails, naming the broken rule.

use std::path::{Path, PathBuf};
use std::process::Command;

use creditgate::policy::component::Limits;
use creditgate::store::scratch::ScratchStore;
use creditgate::{Meter, MeterConfig, PolicySource};
use creditgate_conformance::case::{self, LoadedCase};
use creditgate_conformance::{Report, check_module};

use crate::support::{BINARY, component, component_path};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance/cases")
}

fn cases() -> Vec<LoadedCase> {
    case::load_dir(&cases_dir()).expect("cases directory")
}

fn check(module: &str) -> Report {
    check_on(module, &ScratchStore::Sqlite)
}

fn check_on(module: &str, store: &ScratchStore) -> Report {
    let resolve = |name: &str| Ok(component(&name.replace('-', "_")));
    check_module(
        &component(module),
        &cases(),
        None,
        Limits::default(),
        &resolve,
        store,
    )
}

/// The rows that failed, by name.
fn failures(report: &Report) -> Vec<&str> {
    report
        .rows
        .iter()
        .filter(|row| row.failure.is_some())
        .map(|row| row.name.as_str())
        .collect()
}

#[test]
fn every_case_file_validates_against_the_schema() {
    let cases = cases();
    assert!(cases.len() >= 40, "only {} case files", cases.len());
    for loaded in &cases {
        if let Err(problem) = &loaded.case {
            panic!("{}: {problem}", loaded.path.display());
        }
    }
}

#[test]
fn a_case_file_that_breaks_the_schema_is_reported_with_its_name_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.json"),
        r#"{"description": "x", "profile": "smarte", "rule": "r", "steps": [{"authorize": {"tenant": "a"}}]}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("not-json.json"), "{").unwrap();
    let loaded = case::load_dir(dir.path()).unwrap();
    let problems: Vec<(&str, String)> = loaded
        .iter()
        .map(|case| (case.name.as_str(), case.case.as_ref().unwrap_err().clone()))
        .collect();
    assert_eq!(problems[0].0, "bad");
    assert!(
        problems[0].1.contains("breaks the case schema")
            && problems[0].1.contains("transaction_id"),
        "{problems:?}"
    );
    assert_eq!(problems[1].0, "not-json");
    assert!(problems[1].1.contains("not JSON"), "{problems:?}");
}

/// Answers the report, for what else a test checks of it.
fn assert_passes_every_case_of_its_profile(
    module: &str,
    profile: &str,
    store: &ScratchStore,
) -> Report {
    let report = check_on(module, store);
    assert!(report.ok(), "{}", report.render());
    let profile_cases = cases()
        .iter()
        .filter(|loaded| {
            loaded
                .case
                .as_ref()
                .is_ok_and(|case| case.profile == profile)
        })
        .count();
    let case_rows = report
        .rows
        .iter()
        .filter(|row| !row.name.starts_with("contract/"))
        .count();
    assert_eq!(case_rows, profile_cases, "{}", report.render());
    assert!(
        profile_cases >= 14,
        "{profile} has only {profile_cases} cases"
    );
    report
}

/// The report's `module` line ends with the contract the module was built against.
fn assert_contract(report: &Report, version: &str) {
    let module = report.module.as_deref().unwrap_or_default();
    assert!(
        module.ends_with(&format!(", contract {version}")),
        "{module}"
    );
}

crate::on_both_stores! {
    /// The host still implements contract 0.1.0: SMARTe's rules built against the
    /// frozen 0.1.0 WIT load, say so, and pass SMARTe's whole suite too. One after the
    /// other, not in two tests at once: two ledgers in one PostgreSQL database share the
    /// advisory lock of a tenant name, so the sweep of one can skip the other's lapsed
    /// hold while it holds the lock, and a case counting expired holds would fail.
    fn smarte_passes_the_conformance_suite_built_against_either_contract(store) {
        let report = assert_passes_every_case_of_its_profile("smarte", "smarte", store);
        assert_contract(&report, "0.2.0");
        let report = assert_passes_every_case_of_its_profile("smarte_v0_1", "smarte", store);
        assert_contract(&report, "0.1.0");
    }

    fn donoratlas_passes_the_conformance_suite(store) {
        assert_passes_every_case_of_its_profile("donoratlas", "donoratlas", store);
    }

    /// The same rules written in Python (`policy/smarte-python`, componentize-py) pass
    /// the same cases: a CPython guest loads within the host's bounds, reads its empty
    /// environment and fixed random bytes as it starts, and answers exactly.
    fn smarte_in_python_passes_the_conformance_suite(store) {
        assert_passes_every_case_of_its_profile("smarte_python", "smarte", store);
    }

    /// DonorAtlas's rules written in JavaScript (`policy/donoratlas-js`,
    /// componentize-qjs) pass DonorAtlas's cases, `marked` lookups included.
    fn donoratlas_in_javascript_passes_the_conformance_suite(store) {
        assert_passes_every_case_of_its_profile("donoratlas_js", "donoratlas", store);
    }
}

crate::on_both_stores! {
    /// Every `misbehaving/` case (the floor, the overdraft limit, the spend cap and the
    /// event its refusal raises, against a policy that ignores them) passes on either
    /// store.
    fn the_host_keeps_its_guarantees_against_a_misbehaving_policy(store) {
        let report = check_on("misbehaving", store);
        let failed = failures(&report);
        assert!(
            failed.iter().all(|name| name.starts_with("contract/")),
            "{}",
            report.render()
        );
        assert!(
            report
                .rows
                .iter()
                .filter(|row| row.name.starts_with("misbehaving/"))
                .count()
                >= 10,
            "{}",
            report.render()
        );
        // It does break the contract, and the probes say how.
        for check in [
            "contract/answers-keep-the-contract",
            "contract/within-budget",
            "contract/no-traps",
            "contract/cost",
        ] {
            assert!(
                failed.contains(&check),
                "{check} not reported: {}",
                report.render()
            );
        }
    }
}

#[test]
fn the_suite_catches_a_policy_that_charges_on_429() {
    let report = check("charges_on_429");
    assert_eq!(
        failures(&report),
        ["smarte/no-charge-on-429"],
        "{}",
        report.render()
    );
    let row = report
        .rows
        .iter()
        .find(|row| row.failure.is_some())
        .unwrap();
    assert!(row.rule.contains("rate limited"));
}

#[test]
fn the_suite_catches_a_policy_that_charges_re_exports() {
    let report = check("charges_re_exports");
    let failed = failures(&report);
    assert!(
        failed.contains(&"donoratlas/re-export-is-free"),
        "{}",
        report.render()
    );
    assert!(!report.ok());
}

#[test]
fn the_suite_catches_a_policy_that_ignores_partial_batches() {
    let report = check("ignores_partial");
    assert_eq!(
        failures(&report),
        ["donoratlas/partial-batch-admits-the-first-n"],
        "{}",
        report.render()
    );
}

#[test]
fn the_contract_checks_catch_a_nondeterministic_policy() {
    let report = check("nondeterministic");
    assert_eq!(
        failures(&report),
        ["contract/deterministic"],
        "{}",
        report.render()
    );
}

/// A module that keeps every rule but spends most of its budget on every call is
/// refused from what its probes cost, and the report says what they cost.
#[test]
fn the_contract_checks_catch_a_policy_that_is_legal_but_slow() {
    let report = check("slow_legal");
    assert_eq!(failures(&report), ["contract/cost"], "{}", report.render());
    let cost = report.cost.unwrap();
    assert!(
        cost.fuel_max > Limits::default().fuel_per_call / 2,
        "{cost:?}"
    );
    assert!(cost.fuel_max <= Limits::default().fuel_per_call, "{cost:?}");
    assert!(report.render().contains("cost per call"));
    let smarte = check("smarte").cost.unwrap();
    assert!(
        smarte.fuel_max < cost.fuel_p50 / 10,
        "{smarte:?} against {cost:?}"
    );
}

#[test]
fn modules_that_cannot_load_are_reported_never_panicking() {
    let cases = [
        ("describe_traps", "describe failed"),
        (
            "other_wit_version",
            "built against 'creditgate:policy/ledger@0.3.0'; this host implements \
             creditgate:policy@0.1.0 and creditgate:policy@0.2.0",
        ),
    ];
    for (module, expected) in cases {
        let report = check(module);
        let [row] = report.rows.as_slice() else {
            panic!("{module}: {}", report.render());
        };
        assert_eq!(row.name, "contract/loads-and-describes");
        assert!(
            row.failure.as_deref().unwrap_or("").contains(expected),
            "{module}: {}",
            report.render()
        );
    }
    let garbage = check_module(
        b"\0asm garbage",
        &[],
        None,
        Limits::default(),
        &|_| Err(String::new()),
        &ScratchStore::Sqlite,
    );
    assert!(!garbage.ok());
    assert!(
        garbage
            .render()
            .contains("not a valid WebAssembly component")
    );
}

#[test]
fn check_prints_the_table_and_exits_non_zero_on_any_failure() {
    let run = |module: &str| {
        Command::new(BINARY)
            .arg("check")
            .arg(component_path(module))
            .arg("--cases")
            .arg(cases_dir())
            .output()
            .unwrap()
    };
    let good = run("smarte");
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with(" passed, 0 failed"), "{last}");
    assert!(stdout.contains("PASS  smarte/no-charge-on-429"));

    let bad = run("charges_on_429");
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  smarte/no-charge-on-429"), "{stdout}");
    assert!(
        stdout.contains("charged: expected {}, got {\"default\": 1}"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .last()
            .unwrap_or_default()
            .ends_with(" passed, 1 failed"),
        "{stdout}"
    );
}

/// A case that swaps policies needs nothing beside the module under check: the runner
/// carries the fixtures a case may name, and a name it does not carry fails that case,
/// saying which it does.
#[test]
fn check_needs_nothing_beside_the_module_under_check() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("smarte.wasm");
    std::fs::write(&alone, component("smarte")).unwrap();
    let cases = dir.path().join("cases");
    std::fs::create_dir(&cases).unwrap();
    let swap = std::fs::read_to_string(
        cases_dir().join("smarte/settle-runs-on-the-authorizing-version.json"),
    )
    .unwrap();
    std::fs::write(cases.join("swap.json"), &swap).unwrap();
    std::fs::write(
        cases.join("swap-to-nowhere.json"),
        swap.replace(
            r#""swap_policy": "misbehaving""#,
            r#""swap_policy": "nowhere""#,
        ),
    )
    .unwrap();
    let checked = Command::new(BINARY)
        .arg("check")
        .arg(&alone)
        .arg("--cases")
        .arg(&cases)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(stdout.contains("PASS  swap "), "{stdout}");
    assert!(stdout.contains("FAIL  swap-to-nowhere"), "{stdout}");
    assert!(
        stdout.contains("no module named 'nowhere': a case may swap to misbehaving"),
        "{stdout}"
    );
    assert_eq!(checked.status.code(), Some(1), "{stdout}");
}

/// `Meter::open` on a given component runs the gate `activate` runs: a library user
/// cannot start on a module `serve` and activation would refuse.
#[test]
fn a_meter_refuses_to_open_on_a_module_that_fails_the_contract_checks() {
    let scratch = ScratchStore::Sqlite.create().unwrap();
    let refused = Meter::open(
        MeterConfig::new(scratch.location().clone()),
        PolicySource::Component(component("nondeterministic")),
    )
    .err()
    .expect("refused");
    assert_eq!(refused.code(), "invalid_policy", "{refused}");
    assert!(
        refused.to_string().contains("FAIL  contract/deterministic"),
        "{refused}"
    );
    // The same module through the fallback of a ledger that never ran one: refused too.
    let refused = Meter::open(
        MeterConfig::new(scratch.location().clone()),
        PolicySource::Resume {
            fallback: Some(component("nondeterministic")),
        },
    )
    .err()
    .expect("refused");
    assert_eq!(refused.code(), "invalid_policy", "{refused}");
}

#[test]
fn serve_refuses_a_module_that_fails_the_contract_checks() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("ledger.db"))
        .arg("--policy")
        .arg(component_path("nondeterministic"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("FAIL  contract/deterministic"), "{stderr}");
    assert!(stderr.contains("fails the contract checks"), "{stderr}");
}
