//! Policy lifecycle: activation while traffic flows, refusal of bad modules, rollback,
//! and settles pinned to the version that authorized.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use creditgate::MeterError;
use creditgate::policy::component::{self, CompiledPolicy, Limits};
use creditgate::policy::{
    AuthorizeDecision, ContractVersion, MarkAnswers, MarkLookup, PolicyRuntime, sdk,
};

use crate::support::{Gate, TestMeter, amounts, component};

crate::on_both_stores! {
    fn activation_switches_new_authorizes_while_settles_stay_on_the_authorizing_version(store) {
        let meter = TestMeter::on(store, "smarte");
        meter.grant("acme", "default", 10);
        let before = meter.authorize("t1", "acme", "person.enrich", &["a", "b"], &[]);
        let info = meter
            .meter
            .activate(component("misbehaving"), "test")
            .unwrap();
        assert_eq!(info.name, "misbehaving");
        assert_eq!(meter.meter.policy().name, "misbehaving");
        let after = meter.authorize("t2", "acme", "person.enrich", &["a"], &[]);
        assert_eq!(after.policy.name, "misbehaving");
        assert_eq!(after.held, amounts(&[("default", 1)]));
        // t1 settles under smarte (one record delivered: 1), t2 under misbehaving (always 2).
        let first = meter.settle("t1", 200, &[("records", "1")]);
        assert_eq!(
            (first.policy.digest.as_str(), &first.charged),
            (before.policy.digest.as_str(), &amounts(&[("default", 1)]))
        );
        let second = meter.settle("t2", 200, &[("records", "1")]);
        assert_eq!(
            (second.policy.name.as_str(), &second.charged),
            ("misbehaving", &amounts(&[("default", 2)]))
        );
        let history = meter.meter.policy_history(10).unwrap();
        let vias: Vec<(&str, &str)> = history
            .iter()
            .map(|a| (a.name.as_str(), a.via.as_str()))
            .collect();
        assert_eq!(vias, [("misbehaving", "test"), ("smarte", "start")]);
        meter.assert_sound();
    }
}

crate::on_both_stores! {
    fn a_refused_module_leaves_the_active_policy_in_place(store) {
        let meter = TestMeter::on(store, "smarte");
        meter.grant("acme", "default", 5);
        let active = meter.meter.policy().digest;
        let refusals = [
            (
                b"not a component".to_vec(),
                "not a valid WebAssembly component",
            ),
            (
                component("other_wit_version"),
                "built against 'creditgate:policy/ledger@0.3.0'; this host implements \
                 creditgate:policy@0.1.0 and creditgate:policy@0.2.0",
            ),
            (component("describe_traps"), "describe failed"),
            (component("nondeterministic"), "contract/deterministic"),
        ];
        for (index, (module, reason)) in refusals.into_iter().enumerate() {
            let error = meter.meter.activate(module, "test").unwrap_err();
            assert_eq!((error.status(), error.code()), (422, "invalid_policy"));
            assert!(error.to_string().contains(reason), "{error}");
            assert_eq!(meter.meter.policy().digest, active);
            assert!(
                meter
                    .authorize(&format!("t{index}"), "acme", "person.enrich", &["a"], &[])
                    .admitted
            );
        }
        assert_eq!(meter.meter.policy_history(10).unwrap().len(), 1);
    }
}

crate::on_both_stores! {
    fn a_module_built_against_contract_0_1_0_activates_says_so_and_settles_stay_pinned(store) {
        let meter = TestMeter::on(store, "smarte");
        assert_eq!(meter.meter.policy().contract, ContractVersion::V0_2_0);
        meter.grant("acme", "default", 10);
        let before = meter.authorize("t1", "acme", "person.enrich", &["a", "b"], &[]);
        let info = meter
            .meter
            .activate(component("smarte_v0_1"), "test")
            .unwrap();
        assert_eq!((info.name.as_str(), info.contract), ("smarte", ContractVersion::V0_1_0));
        assert_eq!(meter.meter.active_policy().contract, "0.1.0");
        let after = meter.authorize("t2", "acme", "person.enrich", &["a", "b", "c"], &[]);
        assert_eq!(after.policy.digest, info.digest.to_string());
        assert_eq!(after.held, amounts(&[("default", 3)]));
        // 5 left: the 0.1.0 module refuses 6 records as the reference does.
        let refused = meter.authorize("t3", "acme", "person.enrich", &["1", "2", "3", "4", "5", "6"], &[]);
        assert_eq!(
            refused.error.map(|error| error.code).as_deref(),
            Some("insufficient_credits")
        );
        let first = meter.settle("t1", 200, &[("records", "2")]);
        assert_eq!(first.policy.digest, before.policy.digest);
        let second = meter.settle("t2", 200, &[("records", "1")]);
        assert_eq!(
            (second.policy.digest.as_str(), &second.charged),
            (after.policy.digest.as_str(), &amounts(&[("default", 1)]))
        );
        meter.assert_sound();
    }
}

/// `marked` is never asked: SMARTe's rules use no marks.
struct NoMarks;

impl MarkLookup for NoMarks {
    fn marked(
        &self,
        _tenant: &str,
        _scope: &str,
        keys: &[String],
        _stored_keys_max: usize,
    ) -> Result<Option<MarkAnswers>, MeterError> {
        Ok(Some(MarkAnswers {
            marked: vec![false; keys.len()],
            stored_keys: 0,
        }))
    }
}

/// What the module holds for `records` records on `balance`, or its refusal's code.
fn smarte_holds(
    runtime: &mut dyn PolicyRuntime,
    records: usize,
    balance: sdk::BalanceState,
) -> Result<i64, String> {
    let request = sdk::Request {
        transaction_id: format!("t-{records}"),
        tenant: "acme".to_owned(),
        operation: "person.enrich".to_owned(),
        items: (0..records).map(|item| format!("r{item}")).collect(),
        ..sdk::Request::default()
    };
    match runtime.authorize(&request, &[balance]).unwrap() {
        AuthorizeDecision::Admit { hold, .. } => Ok(hold.values().sum()),
        AuthorizeDecision::Reject { code, .. } => Err(code),
    }
}

/// A module built against 0.1.0 is given, as each balance's amount, what the host lets
/// the tenant spend: `available + overdraft_limit`, within the spend cap. So it admits
/// exactly what the reference, which reads every figure itself under 0.2.0, admits.
#[test]
fn a_module_built_against_contract_0_1_0_is_given_what_can_be_spent_overdraft_and_cap_included() {
    let engine = component::engine().unwrap();
    let overdrawn = sdk::BalanceState {
        overdraft_limit: 3,
        ..sdk::BalanceState::new("default", -1)
    };
    let capped = sdk::BalanceState {
        spend_cap: Some(sdk::SpendWindow {
            cap: 10,
            spent: 7,
            resets_at_ms: 3_600_000,
        }),
        ..sdk::BalanceState::new("default", 100)
    };
    for (module, contract) in [
        ("smarte_v0_1", ContractVersion::V0_1_0),
        ("smarte", ContractVersion::V0_2_0),
    ] {
        let compiled =
            CompiledPolicy::compile(&engine, &component(module), Limits::default()).unwrap();
        assert_eq!(compiled.info().contract, contract, "{module}");
        let mut runtime = compiled.runtime(Rc::new(NoMarks));
        assert_eq!(
            smarte_holds(&mut runtime, 2, overdrawn.clone()),
            Ok(2),
            "{module}"
        );
        assert_eq!(
            smarte_holds(&mut runtime, 3, overdrawn.clone()),
            Err("insufficient_credits".to_owned()),
            "{module}"
        );
        assert_eq!(
            smarte_holds(&mut runtime, 3, capped.clone()),
            Ok(3),
            "{module}"
        );
        assert_eq!(
            smarte_holds(&mut runtime, 4, capped.clone()),
            Err("insufficient_credits".to_owned()),
            "{module}"
        );
    }
}

crate::on_both_stores! {
    fn rollback_returns_to_the_previous_policy(store) {
        let meter = TestMeter::on(store, "smarte");
        assert_eq!(
            meter.meter.rollback().unwrap_err().code(),
            "no_previous_policy"
        );
        let smarte = meter.meter.policy().digest;
        meter
            .meter
            .activate(component("donoratlas"), "test")
            .unwrap();
        let rolled_back = meter.meter.rollback().unwrap();
        assert_eq!(rolled_back.digest, smarte);
        let vias: Vec<String> = meter
            .meter
            .policy_history(10)
            .unwrap()
            .into_iter()
            .map(|a| format!("{}/{}", a.name, a.via))
            .collect();
        assert_eq!(vias, ["smarte/rollback", "donoratlas/test", "smarte/start"]);
    }
}

crate::on_both_stores! {
    fn a_hundred_swaps_under_eight_clients_fail_no_request_and_pin_every_settle(store) {
        let meter = Arc::new(TestMeter::on(store, "smarte"));
        for tenant in 0..8 {
            meter.grant(&format!("tenant-{tenant}"), "default", 1_000_000);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let transactions = Arc::new(AtomicU64::new(0));
        let clients: Vec<_> = (0..8)
            .map(|client| {
                let (meter, stop, transactions) = (
                    Arc::clone(&meter),
                    Arc::clone(&stop),
                    Arc::clone(&transactions),
                );
                std::thread::spawn(move || {
                    let tenant = format!("tenant-{client}");
                    let mut sequence = 0;
                    let mut mispinned = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        sequence += 1;
                        let id = format!("c{client}-{sequence}");
                        let status = if sequence % 5 == 0 { 429 } else { 200 };
                        let authorized =
                            meter.authorize(&id, &tenant, "person.enrich", &["a", "b"], &[]);
                        assert!(authorized.admitted, "{id} refused: {authorized:?}");
                        let receipt = meter.settle(&id, status, &[("records", "1")]);
                        if receipt.policy.digest != authorized.policy.digest {
                            mispinned.push(id);
                        }
                        transactions.fetch_add(1, Ordering::Relaxed);
                    }
                    mispinned
                })
            })
            .collect();
        // smarte and a variant that differs on 429 only: both price this traffic, apart.
        let modules = [component("charges_on_429"), component("smarte")];
        for swap in 0..100 {
            meter
                .meter
                .activate(modules[swap % 2].clone(), "swap-test")
                .unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            let mispinned = client.join().expect("a client failed a request");
            assert!(
                mispinned.is_empty(),
                "settled on another version: {mispinned:?}"
            );
        }
        assert!(transactions.load(Ordering::Relaxed) > 100);
        assert_eq!(meter.meter.policy_history(1_000).unwrap().len(), 101);
        // From the journal: every entry of a transaction carries its authorizing digest.
        for client in 0..8 {
            let journal = meter
                .meter
                .journal(&format!("tenant-{client}"), usize::MAX)
                .unwrap();
            let mut digests = std::collections::BTreeMap::new();
            for entry in journal.iter().filter(|entry| entry.kind != "grant") {
                let digest = digests
                    .entry(entry.transaction_id.clone())
                    .or_insert_with(|| entry.policy_digest.clone());
                assert_eq!(
                    *digest, entry.policy_digest,
                    "{} was settled under another version",
                    entry.transaction_id
                );
            }
        }
        meter.assert_sound();
    }
}

#[test]
fn precompiled_components_are_cached_by_digest_and_a_bad_cache_only_costs_a_compile() {
    use creditgate::{Meter, MeterConfig, PolicySource};
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let open = || {
        let mut config = MeterConfig::new(dir.path().join("ledger.db"));
        config.compile_cache_dir = Some(cache.clone());
        Meter::open(config, PolicySource::Component(component("smarte"))).unwrap()
    };
    let meter = open();
    let digest = meter.policy().digest.to_string();
    drop(meter);
    let cached: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let name = cached[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(&digest) && name.ends_with(".cwasm"),
        "{name}"
    );
    let modified = std::fs::metadata(&cached[0]).unwrap().modified().unwrap();

    // A restart deserializes the cached copy instead of compiling (the file is untouched).
    let meter = open();
    assert_eq!(
        std::fs::metadata(&cached[0]).unwrap().modified().unwrap(),
        modified
    );
    meter
        .grant(creditgate::model::GrantRequest {
            grant_id: "g".into(),
            tenant: "acme".into(),
            balance: "default".into(),
            amount: 1,
            terms: Default::default(),
        })
        .unwrap();
    drop(meter);

    // A corrupted cache entry is ignored and replaced.
    std::fs::write(&cached[0], b"corrupt").unwrap();
    let meter = open();
    assert_eq!(meter.balances("acme").unwrap().balances["default"], 1);
    assert!(std::fs::read(&cached[0]).unwrap().len() > 1000);
}

crate::on_both_stores! {
    fn shadow_mode_reports_the_exact_differences_of_a_candidate_and_moves_no_credit(store) {
        let meter = TestMeter::on(store, "smarte");
        meter.grant("acme", "default", 100);
        meter.grant("beta", "default", 100);
        assert_eq!(meter.meter.shadow_report().unwrap_err().code(), "no_shadow");
        let report = meter
            .meter
            .set_shadow(component("pricier_funding"))
            .unwrap();
        assert_eq!(report.shadow.version, "1.1.0-funding");
        // 3 funding enrichments for acme (2 records each, 2 delivered), 1 for beta (1 record,
        // none delivered), and 4 person enrichments that both policies price alike.
        let mut id = 0;
        let mut run = |tenant: &str, operation: &str, items: &[&str], records: &str| {
            id += 1;
            let tid = format!("t{id}");
            assert!(
                meter
                    .authorize(&tid, tenant, operation, items, &[])
                    .admitted
            );
            meter.settle(&tid, 200, &[("records", records)]);
        };
        for _ in 0..3 {
            run("acme", "funding.enrich", &["a", "b"], "2");
        }
        run("beta", "funding.enrich", &["a"], "0");
        for _ in 0..4 {
            run("acme", "person.enrich", &["a"], "1");
        }
        let report = meter.meter.shadow_report().unwrap();
        assert_eq!(
            (report.authorizes_compared, report.settles_compared),
            (8, 8)
        );
        assert_eq!(
            (report.authorize_differences, report.settle_differences),
            (4, 3)
        );
        assert_eq!(report.by_kind, [("charges".to_owned(), 7)].into());
        // Holds: 3 x (4 - 2) + (2 - 1) = 7 more; charges at settle: 3 x (4 - 2) = 6 more.
        assert_eq!(report.authorize_charge_delta, amounts(&[("default", 7)]));
        assert_eq!(report.settle_charge_delta, amounts(&[("default", 6)]));
        assert_eq!(report.by_tenant["acme"].authorize, 3);
        assert_eq!(report.by_tenant["acme"].settle, 3);
        assert_eq!(
            report.by_tenant["acme"].charge_delta,
            amounts(&[("default", 12)])
        );
        assert_eq!(
            report.by_tenant["beta"].charge_delta,
            amounts(&[("default", 1)])
        );
        assert!(
            report
                .examples
                .iter()
                .all(|example| example.operation == "funding.enrich")
        );
        // The shadow moved nothing: the balances are smarte's alone (6 + 0 + 4 charged).
        assert_eq!(meter.available("acme", "default"), 100 - 6 - 4);
        assert_eq!(meter.available("beta", "default"), 100);
        meter.assert_sound();

        let promoted = meter.meter.promote_shadow().unwrap();
        assert_eq!(promoted.version, "1.1.0-funding");
        assert_eq!(meter.meter.policy().version, "1.1.0-funding");
        assert_eq!(meter.meter.shadow_report().unwrap_err().code(), "no_shadow");
    }
}

crate::on_both_stores! {
    fn an_old_version_stays_loaded_while_an_open_hold_needs_it_and_is_unloaded_after(store) {
        let meter = TestMeter::on(store, "smarte");
        meter.grant("acme", "default", 10);
        let smarte = meter.meter.policy().digest.to_string();
        meter.authorize("t1", "acme", "person.enrich", &["a"], &[]);
        let donoratlas = meter
            .meter
            .activate(component("donoratlas"), "test")
            .unwrap()
            .digest
            .to_string();
        meter.meter.expire_due().unwrap();
        let mut both = vec![smarte.clone(), donoratlas.clone()];
        both.sort();
        assert_eq!(
            meter.meter.loaded_policies().unwrap(),
            both,
            "smarte must stay: t1 is open"
        );
        meter.settle("t1", 200, &[("records", "1")]);
        meter.meter.expire_due().unwrap();
        assert_eq!(meter.meter.loaded_policies().unwrap(), [donoratlas]);
    }
}
