//! The host's guarantees, whatever the policy says: idempotency, never below zero,
//! serializable decisions per tenant, hold expiry, settle on the authorizing version,
//! durability across restarts.

use std::sync::{Arc, Barrier};

use creditgate::model::{AuthorizeRequest, GrantRequest};
use creditgate::{Meter, MeterConfig, PolicySource};

use crate::support::{Gate, TestMeter, amounts, assert_ledger_sound, component};

crate::on_both_stores! {
    fn a_repeated_authorize_returns_the_first_answer_and_moves_nothing_twice(store) {
        let meter = TestMeter::on(store, "smarte");
        meter.grant("acme", "default", 5);
        let first = meter.authorize("t1", "acme", "person.enrich", &["a", "b"], &[]);
        let second = meter.authorize("t1", "acme", "person.enrich", &["a", "b"], &[]);
        assert_eq!(first, second);
        assert_eq!(meter.available("acme", "default"), 3);
        meter.assert_sound();
    }
}

crate::on_both_stores! {
    fn a_transaction_id_reused_for_another_request_is_a_conflict(store) {
        let meter = TestMeter::on(store, "smarte");
        meter.grant("acme", "default", 5);
        meter.authorize("t1", "acme", "person.enrich", &["a"], &[]);
        let error = meter
            .try_authorize("t1", "acme", "person.enrich", &["a", "b"], &[])
            .unwrap_err();
        assert_eq!(
            (error.status(), error.code()),
            (409, "transaction_conflict")
        );
        assert_eq!(meter.available("acme", "default"), 4);
    }
}

crate::on_both_stores! {
    fn a_repeated_settle_returns_the_first_receipt_and_moves_nothing(store) {
        let meter = TestMeter::on(store, "smarte");
        meter.grant("acme", "default", 5);
        meter.authorize("t1", "acme", "person.enrich", &["a", "b"], &[]);
        let first = meter.settle("t1", 200, &[("records", "1")]);
        let second = meter.settle("t1", 200, &[("records", "2")]);
        assert_eq!(first, second);
        assert_eq!(meter.available("acme", "default"), 4);
        meter.assert_sound();
    }
}

crate::on_both_stores! {
    fn settle_of_an_unknown_transaction_is_404_and_moves_nothing(store) {
        let meter = TestMeter::on(store, "smarte");
        let error = meter.try_settle("never", 200, &[]).unwrap_err();
        assert_eq!((error.status(), error.code()), (404, "unknown_transaction"));
    }
}

crate::on_both_stores! {
    fn a_generated_transaction_id_is_returned_when_none_is_given(store) {
        let meter = TestMeter::on(store, "smarte");
        meter.grant("acme", "default", 1);
        let answer = meter
            .meter
            .authorize(AuthorizeRequest {
                tenant: "acme".into(),
                operation: "person.enrich".into(),
                ..AuthorizeRequest::default()
            })
            .unwrap();
        assert!(answer.admitted);
        assert_eq!(answer.transaction_id.len(), 36);
        assert!(
            meter
                .settle(&answer.transaction_id, 200, &[("records", "1")])
                .charged
                .contains_key("default")
        );
    }
}

crate::on_both_stores! {
    fn a_grant_is_idempotent_by_grant_id(store) {
        let meter = TestMeter::on(store, "smarte");
        let grant = GrantRequest {
            grant_id: "g1".into(),
            tenant: "acme".into(),
            balance: "default".into(),
            amount: 7,
            terms: Default::default(),
        };
        meter.meter.grant(grant.clone()).unwrap();
        let again = meter.meter.grant(grant.clone()).unwrap();
        assert_eq!(again.balances, amounts(&[("default", 7)]));
        let conflict = meter
            .meter
            .grant(GrantRequest { amount: 8, ..grant })
            .unwrap_err();
        assert_eq!(
            (conflict.status(), conflict.code()),
            (409, "grant_conflict")
        );
        assert_eq!(meter.available("acme", "default"), 7);
        meter.assert_sound();
    }
}

crate::on_both_stores! {
    fn bad_grants_are_refused_with_a_code_and_move_nothing(store) {
        let meter = TestMeter::on(store, "smarte");
        let grant = |balance: &str, amount: i64| {
            meter.meter.grant(GrantRequest {
                grant_id: format!("g-{balance}-{amount}"),
                tenant: "acme".into(),
                balance: balance.into(),
                amount,
                terms: Default::default(),
            })
        };
        assert_eq!(grant("export", 5).unwrap_err().code(), "unknown_balance");
        assert_eq!(grant("default", 0).unwrap_err().code(), "invalid_amount");
        assert_eq!(grant("default", -5).unwrap_err().code(), "invalid_amount");
        grant("default", i64::MAX).unwrap();
        assert_eq!(grant("default", 1).unwrap_err().code(), "invalid_amount");
        assert_eq!(meter.available("acme", "default"), i64::MAX);
        meter.assert_sound();
    }
}

crate::on_both_stores! {
    fn a_tenant_never_granted_anything_has_zero_balances(store) {
        let meter = TestMeter::on(store, "donoratlas");
        let balances = meter.meter.balances("newcomer").unwrap();
        assert_eq!(
            balances.balances,
            amounts(&[("enhancement", 0), ("export", 0)])
        );
    }
}

crate::on_both_stores! {
    fn invalid_requests_are_refused_with_a_code_and_move_nothing(store) {
        let meter = TestMeter::on(store, "smarte");
        meter.grant("acme", "default", 5);
        let too_many: Vec<String> = (0..10_001).map(|i| i.to_string()).collect();
        let cases = [
            AuthorizeRequest {
                tenant: String::new(),
                operation: "person.enrich".into(),
                ..Default::default()
            },
            AuthorizeRequest {
                tenant: "a/b".into(),
                operation: "person.enrich".into(),
                ..Default::default()
            },
            AuthorizeRequest {
                tenant: "acme".into(),
                operation: "person.enrich".into(),
                items: too_many,
                ..Default::default()
            },
            AuthorizeRequest {
                tenant: "acme".into(),
                operation: "person.enrich".into(),
                body: Some(vec![0; (1 << 20) + 1]),
                ..Default::default()
            },
            // No store can keep a NUL in text (PostgreSQL refuses it outright).
            AuthorizeRequest {
                tenant: "acme".into(),
                operation: "person.enrich".into(),
                items: vec!["jane\0@example.com".into()],
                ..Default::default()
            },
        ];
        for request in cases {
            let error = meter.meter.authorize(request).unwrap_err();
            assert_eq!((error.status(), error.code()), (400, "invalid_request"));
        }
        let status = meter.try_settle("t1", 700, &[]).unwrap_err();
        assert_eq!(status.code(), "invalid_request");
        assert_eq!(meter.available("acme", "default"), 5);
    }
}

crate::on_both_stores! {
    fn concurrent_authorizes_never_spend_more_than_the_balance(store) {
        let meter = Arc::new(TestMeter::on(store, "smarte"));
        meter.grant("acme", "default", 10);
        let threads: Vec<_> = (0..64)
            .map(|index| {
                let meter = Arc::clone(&meter);
                std::thread::spawn(move || {
                    meter
                        .authorize(&format!("t{index}"), "acme", "person.enrich", &["x"], &[])
                        .admitted
                })
            })
            .collect();
        let admitted = threads
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .filter(|admitted| *admitted)
            .count();
        assert_eq!(admitted, 10);
        assert_eq!(meter.available("acme", "default"), 0);
        assert_eq!(meter.held("acme", "default"), 10);
        meter.assert_sound();
    }
}

crate::on_both_stores! {
    fn concurrent_exports_of_one_new_donor_charge_it_once(store) {
        let meter = Arc::new(TestMeter::on(store, "donoratlas"));
        meter.grant("partner", "export", 100);
        let threads: Vec<_> = (0..32)
            .map(|index| {
                let meter = Arc::clone(&meter);
                std::thread::spawn(move || {
                    meter
                        .authorize(
                            &format!("x{index}"),
                            "partner",
                            "export",
                            &["donor-42"],
                            &[],
                        )
                        .charged
                        .get("export")
                        .copied()
                        .unwrap_or(0)
                })
            })
            .collect();
        let charged: i64 = threads
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .sum();
        assert_eq!(charged, 1);
        assert_eq!(meter.available("partner", "export"), 99);
        meter.assert_sound();
    }
}

crate::on_both_stores! {
    fn an_unsettled_hold_is_released_after_its_ttl(store) {
        let meter = TestMeter::on(store, "smarte");
        meter.grant("acme", "default", 3);
        meter.authorize("t1", "acme", "person.enrich", &["a", "b"], &[]);
        assert_eq!(meter.available("acme", "default"), 1);
        meter.clock.advance_ms(smarte::HOLD_TTL_MS - 1);
        assert_eq!(meter.meter.expire_due().unwrap(), 0);
        meter.clock.advance_ms(1);
        assert_eq!(meter.meter.expire_due().unwrap(), 1);
        assert_eq!(meter.available("acme", "default"), 3);
        assert_eq!(meter.held("acme", "default"), 0);
        let view = meter.meter.transaction("t1").unwrap();
        assert_eq!(view.state, "expired");
        assert!(
            view.entries
                .iter()
                .any(|entry| entry.kind == "expire" && entry.amount == 2)
        );
        let late = meter
            .try_settle("t1", 200, &[("records", "2")])
            .unwrap_err();
        assert_eq!((late.status(), late.code()), (409, "hold_expired"));
        assert_eq!(meter.available("acme", "default"), 3);
        meter.assert_sound();
    }
}

crate::on_both_stores! {
    fn lapsed_holds_return_before_the_tenants_next_authorize(store) {
        let meter = TestMeter::on(store, "smarte");
        meter.grant("acme", "default", 1);
        meter.authorize("t1", "acme", "person.enrich", &["a"], &[]);
        assert!(
            !meter
                .authorize("t2", "acme", "person.enrich", &["a"], &[])
                .admitted
        );
        meter.clock.advance_ms(smarte::HOLD_TTL_MS);
        assert!(
            meter
                .authorize("t3", "acme", "person.enrich", &["a"], &[])
                .admitted
        );
        meter.assert_sound();
    }
}

crate::on_both_stores! {
    fn settle_runs_on_the_policy_version_that_authorized(store) {
        let meter = TestMeter::on(store, "smarte");
        meter.grant("acme", "default", 10);
        let authorized = meter.authorize("t1", "acme", "person.enrich", &["a"], &[]);
        // Restart the ledger on another policy, which would charge 2 at settle.
        let meter = meter.reopen("misbehaving");
        assert_eq!(meter.meter.policy().name, "misbehaving");
        let receipt = meter.settle("t1", 200, &[("records", "1")]);
        assert_eq!(receipt.policy, authorized.policy);
        assert_eq!(receipt.charged, amounts(&[("default", 1)]));
        assert_eq!(receipt.headers["credits-deducted"], "1");
        let view = meter.meter.transaction("t1").unwrap();
        assert!(
            view.entries
                .iter()
                .all(|entry| entry.policy_digest == authorized.policy.digest)
        );
        meter.assert_sound();
    }
}

crate::on_both_stores! {
    fn settle_beyond_the_hold_charges_the_balance_but_never_below_zero(store) {
        let meter = TestMeter::on(store, "misbehaving");
        meter.grant("acme", "default", 2);
        meter.authorize("a", "acme", "flat", &[], &[]);
        let receipt = meter.settle("a", 200, &[]);
        assert_eq!(receipt.charged, amounts(&[("default", 2)]));
        assert_eq!(meter.available("acme", "default"), 0);
        meter.grant("acme", "default", 1);
        meter.authorize("b", "acme", "flat", &[], &[]);
        let short = meter.settle("b", 200, &[]);
        assert_eq!(short.charged, amounts(&[("default", 1)]));
        assert_eq!(short.uncollected, amounts(&[("default", 1)]));
        assert_eq!(meter.available("acme", "default"), 0);
        meter.assert_sound();
    }
}

crate::on_both_stores! {
    fn balances_holds_and_journal_survive_a_restart(store) {
        let meter = TestMeter::on(store, "smarte");
        meter.grant("acme", "default", 10);
        meter.authorize("t1", "acme", "person.enrich", &["a", "b"], &[]);
        meter.settle("t1", 200, &[("records", "1")]);
        meter.authorize("t2", "acme", "person.enrich", &["a", "b", "c"], &[]);
        let before = (
            meter.meter.balances("acme").unwrap(),
            meter.meter.journal("acme", 100).unwrap(),
        );
        let meter = meter.reopen("smarte");
        let after = (
            meter.meter.balances("acme").unwrap(),
            meter.meter.journal("acme", 100).unwrap(),
        );
        assert_eq!(before, after);
        assert_eq!(after.0.held, amounts(&[("default", 3)]));
        let receipt = meter.settle("t2", 200, &[("records", "3")]);
        assert_eq!(receipt.charged, amounts(&[("default", 3)]));
        meter.assert_sound();
    }
}

crate::on_both_stores! {
    fn every_journal_entry_names_transaction_tenant_balance_kind_and_policy(store) {
        let meter = TestMeter::on(store, "smarte");
        meter.grant("acme", "default", 4);
        let answer = meter.authorize("t1", "acme", "person.enrich", &["a", "b"], &[]);
        meter.settle("t1", 200, &[("records", "1")]);
        let view = meter.meter.transaction("t1").unwrap();
        let kinds: Vec<(&str, i64)> = view
            .entries
            .iter()
            .map(|entry| (entry.kind.as_str(), entry.amount))
            .collect();
        assert_eq!(kinds, [("hold", 2), ("capture", 1), ("release", 1)]);
        for entry in &view.entries {
            assert_eq!(entry.transaction_id, "t1");
            assert_eq!(entry.tenant, "acme");
            assert_eq!(entry.balance, "default");
            assert_eq!(entry.policy_digest, answer.policy.digest);
        }
    }
}

crate::on_both_stores! {
    fn concurrent_decisions_share_commits_never_above_batch_size_max(store) {
        let scratch = store.create().unwrap();
        let mut config = MeterConfig::new(scratch.location().clone());
        config.batch_size_max = 16;
        config.batch_wait_us_max = 200_000;
        config.sweep_interval_ms = 0;
        let meter =
            Arc::new(Meter::open(config, PolicySource::Component(component("smarte"))).unwrap());
        meter
            .grant(GrantRequest {
                grant_id: "g".to_owned(),
                tenant: "acme".to_owned(),
                balance: "default".to_owned(),
                amount: 1_000,
                terms: Default::default(),
            })
            .unwrap();
        let before = meter.batch_stats();
        let start = Arc::new(Barrier::new(64));
        let clients: Vec<_> = (0..64)
            .map(|client| {
                let (meter, start) = (Arc::clone(&meter), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    meter
                        .authorize(AuthorizeRequest {
                            transaction_id: Some(format!("t{client}")),
                            tenant: "acme".to_owned(),
                            operation: "person.enrich".to_owned(),
                            items: vec!["a".to_owned()],
                            ..AuthorizeRequest::default()
                        })
                        .unwrap()
                })
            })
            .collect();
        for client in clients {
            assert!(client.join().unwrap().admitted);
        }
        let after = meter.batch_stats();
        let batches = after.batches - before.batches;
        assert_eq!(after.decisions - before.decisions, 64);
        assert!(after.largest_batch <= 16, "{after:?}");
        assert!(
            (4..=32).contains(&batches),
            "64 concurrent decisions took {batches} commits"
        );
        drop(meter);
        let reopened = crate::support::operator_meter(scratch.location());
        assert_eq!(reopened.balances("acme").unwrap().held["default"], 64);
        drop(reopened);
        assert_ledger_sound(scratch.location());
    }
}

crate::on_both_stores! {
    /// On PostgreSQL every replica writes; a grant by another is seen at once. A SQLite
    /// ledger has one writer, its meter: a second one is refused and moves nothing
    /// (operator commands then go through the first one's API).
    fn a_grant_by_another_writer_of_the_ledger_is_seen_or_refused_by_a_running_meter(store) {
        let meter = TestMeter::on(store, "smarte");
        meter.grant("acme", "default", 2);
        meter.authorize("t1", "acme", "person.enrich", &["a", "b"], &[]);
        assert_eq!(meter.available("acme", "default"), 0);
        // As `creditgate grant` does beside a running server: its own connection (on
        // the same clock as the server, whose holds have not lapsed).
        let mut config = MeterConfig::new(meter.location().clone());
        config.sweep_interval_ms = 0;
        config.clock = Arc::new(meter.clock.clone());
        let top_up = GrantRequest {
            grant_id: "top-up".to_owned(),
            tenant: "acme".to_owned(),
            balance: "default".to_owned(),
            amount: 5,
            terms: Default::default(),
        };
        match meter.location() {
            creditgate::store::StoreLocation::Sqlite(_) => {
                let refused = Meter::open(config, PolicySource::Component(component("smarte")))
                    .err()
                    .expect("a second writer of a SQLite ledger is refused");
                assert_eq!((refused.status(), refused.code()), (503, "ledger_in_use"));
                meter.meter.grant(top_up).unwrap();
            }
            creditgate::store::StoreLocation::Postgres(_) => {
                let operator =
                    Meter::open(config, PolicySource::Component(component("smarte"))).unwrap();
                operator.grant(top_up).unwrap();
                drop(operator);
            }
        }
        let second = meter.authorize("t2", "acme", "person.enrich", &["a", "b", "c"], &[]);
        assert!(second.admitted);
        assert_eq!(meter.available("acme", "default"), 2);
        let receipt = meter.settle("t1", 200, &[("records", "2")]);
        assert_eq!(receipt.charged, amounts(&[("default", 2)]));
        assert_eq!(meter.balances("acme").held, amounts(&[("default", 3)]));
        meter.assert_sound();
    }
}

crate::on_both_stores! {
    fn a_ledger_whose_schema_is_newer_than_this_build_is_refused_at_open(store) {
        let meter = TestMeter::on(store, "smarte");
        let location = meter.location().clone();
        drop(meter.meter);
        match &location {
            creditgate::store::StoreLocation::Sqlite(path) => {
                rusqlite::Connection::open(path)
                    .unwrap()
                    .pragma_update(None, "user_version", 99)
                    .unwrap();
            }
            creditgate::store::StoreLocation::Postgres(url) => {
                postgres::Client::connect(url, postgres::NoTls)
                    .unwrap()
                    .execute("INSERT INTO creditgate_schema (version) VALUES (99)", &[])
                    .unwrap();
            }
        }
        let refused = Meter::open(
            MeterConfig::new(location),
            PolicySource::Component(component("smarte")),
        )
        .err()
        .expect("a newer schema is refused");
        assert_eq!((refused.status(), refused.code()), (503, "store_incompatible"));
        assert!(refused.to_string().contains("schema version 99"), "{refused}");
    }
}
