//! The ledger as a log of checksummed records (`docs/ledger.md`): a ledger written
//! before the log is migrated once and keeps every answer; a restart rebuilds the live
//! state from the latest snapshot and the log after it; a damaged or newer record is
//! refused at open; one meter owns a SQLite ledger; a transaction id stays idempotent
//! after memory let it go.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use creditgate::clock::ManualClock;
use creditgate::ledger::codec;
use creditgate::ledger::record::Decision;
use creditgate::model::{
    Authorization, AuthorizeRequest, ErrorBody, GrantRequest, JournalEntry, LevelTerms,
    PolicyActivation, PolicyRef, Receipt, RefillRequest, RefillView, SettleRequest, SpendCapTerms,
    SpendCapView, TenantBalances, ThresholdTerms, TransactionView,
};
use creditgate::store::StoreLocation;
use creditgate::{Meter, MeterConfig, MeterError, PolicySource};
use serde_json::json;

use crate::support::{START_MS, Server, amounts, component, pairs};

// ---------------------------------------------------------------------------------
// Helpers

fn config(location: &StoreLocation, clock: &ManualClock) -> MeterConfig {
    let mut config = MeterConfig::new(location.clone());
    config.clock = Arc::new(clock.clone());
    config.sweep_interval_ms = 0;
    config
}

fn sqlite(path: &Path) -> StoreLocation {
    StoreLocation::Sqlite(path.to_path_buf())
}

fn resume(config: MeterConfig) -> Meter {
    Meter::open(config, PolicySource::Resume { fallback: None }).expect("open the ledger")
}

fn request(
    id: &str,
    tenant: &str,
    operation: &str,
    items: &[&str],
    attributes: &[(&str, &str)],
) -> AuthorizeRequest {
    AuthorizeRequest {
        transaction_id: Some(id.to_owned()),
        tenant: tenant.to_owned(),
        operation: operation.to_owned(),
        items: items.iter().map(|item| (*item).to_owned()).collect(),
        attributes: pairs(attributes),
        body: None,
    }
}

fn settle(meter: &Meter, id: &str, attributes: &[(&str, &str)]) -> Result<Receipt, MeterError> {
    meter.settle(SettleRequest {
        transaction_id: id.to_owned(),
        status: 200,
        attributes: pairs(attributes),
        body: None,
    })
}

fn grant(
    meter: &Meter,
    grant_id: &str,
    tenant: &str,
    balance: &str,
    amount: i64,
) -> Result<TenantBalances, MeterError> {
    meter.grant(GrantRequest {
        grant_id: grant_id.to_owned(),
        tenant: tenant.to_owned(),
        balance: balance.to_owned(),
        amount,
        terms: Default::default(),
    })
}

/// The status and code of a refusal.
fn refusal<T: std::fmt::Debug>(result: Result<T, MeterError>) -> (u16, &'static str) {
    let error = result.expect_err("a refusal");
    (error.status(), error.code())
}

fn tenant_balances(tenant: &str, balances: &[(&str, i64)], held: &[(&str, i64)]) -> TenantBalances {
    TenantBalances {
        lots: None,
        scheduled: None,
        tenant: tenant.to_owned(),
        balances: amounts(balances),
        held: amounts(held),
        overdraft_limits: BTreeMap::new(),
        spend_caps: BTreeMap::new(),
        thresholds: BTreeMap::new(),
    }
}

/// `{balance: amount}`, or nothing when the amount is zero (answers list only movements).
fn moved(balance: &str, amount: i64) -> BTreeMap<String, i64> {
    if amount > 0 {
        amounts(&[(balance, amount)])
    } else {
        BTreeMap::new()
    }
}

fn assert_sound(meter: &Meter) {
    assert_eq!(meter.invariant_violations().unwrap(), Vec::<String>::new());
}

fn log_rows(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM log", [], |row| row.get(0))
        .unwrap()
}

fn views_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".views");
    PathBuf::from(name)
}

/// The start of the latest complete snapshot, if there is one.
fn snapshot_start(path: &Path) -> Option<i64> {
    use rusqlite::OptionalExtension;
    rusqlite::Connection::open(views_path(path))
        .unwrap()
        .query_row(
            "SELECT start_seq FROM snapshot_meta WHERE one = 1",
            [],
            |row| row.get(0),
        )
        .optional()
        .unwrap()
}

// ---------------------------------------------------------------------------------
// 1. Migration of a ledger written before the log (schema v4)

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/ledgers/main-2026-11-22.db"
);
/// The components the fixture's ledger ran (stored in it).
const SMARTE_V1: &str = "f4ec7c2da9ea71a304bc6994d17791d2aa7cd1ca5ea2c4d8a4e60aa095adc08e";
const DONORATLAS_V1: &str = "418e67ee9f67d73dcc0c3b18dc31771e2eb384caa1229afe05ad2f4dc3f08fae";
/// The fixture's clock after smarte's hold TTL, and at its end.
const FIXTURE_STEP_MS: u64 = START_MS + 300_000;
const FIXTURE_END_MS: u64 = FIXTURE_STEP_MS + 1_000;

fn policy_ref(name: &str, digest: &str) -> PolicyRef {
    PolicyRef {
        name: name.to_owned(),
        version: "1.0.0".to_owned(),
        digest: digest.to_owned(),
    }
}

#[allow(clippy::too_many_arguments)]
fn entry(
    id: i64,
    transaction_id: &str,
    tenant: &str,
    balance: &str,
    kind: &str,
    amount: i64,
    digest: &str,
    at_ms: u64,
) -> JournalEntry {
    JournalEntry {
        id,
        transaction_id: transaction_id.to_owned(),
        tenant: tenant.to_owned(),
        balance: balance.to_owned(),
        kind: kind.to_owned(),
        amount,
        lot: None,
        policy_digest: digest.to_owned(),
        at_ms,
    }
}

/// What the old build wrote to acme's journal.
fn fixture_acme_journal() -> Vec<JournalEntry> {
    let acme = |id, transaction, kind, amount, at_ms| {
        entry(
            id,
            transaction,
            "acme",
            "default",
            kind,
            amount,
            SMARTE_V1,
            at_ms,
        )
    };
    vec![
        acme(1, "g-acme", "grant", 20, START_MS),
        acme(3, "t-settled", "hold", 2, START_MS),
        acme(4, "t-settled", "capture", 1, START_MS),
        acme(5, "t-settled", "release", 1, START_MS),
        acme(6, "t-expired", "hold", 1, START_MS),
        acme(7, "t-expired", "expire", 1, FIXTURE_STEP_MS),
        acme(8, "t-open", "hold", 3, FIXTURE_STEP_MS),
    ]
}

fn fixture_partner_journal() -> Vec<JournalEntry> {
    let partner = |id, transaction, balance, kind, amount| {
        entry(
            id,
            transaction,
            "partner",
            balance,
            kind,
            amount,
            DONORATLAS_V1,
            FIXTURE_STEP_MS,
        )
    };
    vec![
        partner(9, "g-partner-x", "export", "grant", 5),
        partner(10, "g-partner-e", "enhancement", "grant", 2),
        partner(11, "x-1", "export", "charge", 2),
        partner(12, "e-1", "enhancement", "charge", 2),
    ]
}

fn smarte_admission(id: &str, items: u32, balance_after: i64) -> Authorization {
    Authorization {
        transaction_id: id.to_owned(),
        admitted: true,
        status: None,
        error: None,
        admitted_items: items,
        held: amounts(&[("default", i64::from(items))]),
        charged: amounts(&[]),
        headers: BTreeMap::new(),
        meta: json!({"credits_held": items}),
        balances: amounts(&[("default", balance_after)]),
        policy: policy_ref("smarte", SMARTE_V1),
        failed_open: None,
    }
}

fn smarte_receipt(id: &str, records: i64, released: i64, balance_after: i64) -> Receipt {
    Receipt {
        transaction_id: id.to_owned(),
        charged: amounts(&[("default", records)]),
        released: moved("default", released),
        uncollected: BTreeMap::new(),
        headers: pairs(&[
            ("credits-deducted", &records.to_string()),
            ("x-transaction-id", id),
        ]),
        meta: json!({"credits_deducted": records, "reason": "delivered", "records_delivered": records}),
        balances: amounts(&[("default", balance_after)]),
        policy: policy_ref("smarte", SMARTE_V1),
        failed_open: None,
    }
}

/// The transactions as the old build left them, by id.
fn fixture_transactions() -> BTreeMap<&'static str, TransactionView> {
    let acme = fixture_acme_journal();
    let partner = fixture_partner_journal();
    let donoratlas = policy_ref("donoratlas", DONORATLAS_V1);
    let view =
        |id: &str, tenant: &str, state: &str, operation: &str, digest: &str| TransactionView {
            transaction_id: id.to_owned(),
            tenant: tenant.to_owned(),
            state: state.to_owned(),
            operation: operation.to_owned(),
            policy_digest: digest.to_owned(),
            created_at_ms: START_MS,
            expires_at_ms: None,
            held: BTreeMap::new(),
            authorization: smarte_admission(id, 0, 0),
            receipt: None,
            entries: Vec::new(),
        };
    let t_settled = TransactionView {
        expires_at_ms: Some(FIXTURE_STEP_MS),
        authorization: smarte_admission("t-settled", 2, 18),
        receipt: Some(smarte_receipt("t-settled", 1, 1, 19)),
        entries: acme[1..4].to_vec(),
        ..view("t-settled", "acme", "settled", "person.enrich", SMARTE_V1)
    };
    let t_rejected = TransactionView {
        authorization: Authorization {
            admitted: false,
            status: Some(402),
            error: Some(ErrorBody {
                code: "insufficient_credits".to_owned(),
                message: "Insufficient credits: 6 required, 5 available.".to_owned(),
            }),
            admitted_items: 0,
            held: BTreeMap::new(),
            meta: json!({}),
            balances: amounts(&[("default", 5)]),
            ..smarte_admission("t-rejected", 0, 0)
        },
        ..view("t-rejected", "beta", "rejected", "person.enrich", SMARTE_V1)
    };
    let t_expired = TransactionView {
        expires_at_ms: Some(FIXTURE_STEP_MS),
        authorization: smarte_admission("t-expired", 1, 18),
        entries: acme[4..6].to_vec(),
        ..view("t-expired", "acme", "expired", "email.enrich", SMARTE_V1)
    };
    let t_open = TransactionView {
        created_at_ms: FIXTURE_STEP_MS,
        expires_at_ms: Some(FIXTURE_STEP_MS + 300_000),
        held: amounts(&[("default", 3)]),
        authorization: smarte_admission("t-open", 3, 16),
        entries: acme[6..7].to_vec(),
        ..view("t-open", "acme", "open", "company.enrich", SMARTE_V1)
    };
    let x_1 = TransactionView {
        created_at_ms: FIXTURE_STEP_MS,
        authorization: Authorization {
            transaction_id: "x-1".to_owned(),
            admitted: true,
            status: None,
            error: None,
            admitted_items: 2,
            held: BTreeMap::new(),
            charged: amounts(&[("export", 2)]),
            headers: BTreeMap::new(),
            meta: json!({"credits_used": 2, "exports_remaining": 3}),
            balances: amounts(&[("enhancement", 2), ("export", 3)]),
            policy: donoratlas.clone(),
            failed_open: None,
        },
        receipt: Some(Receipt {
            transaction_id: "x-1".to_owned(),
            charged: BTreeMap::new(),
            released: BTreeMap::new(),
            uncollected: BTreeMap::new(),
            headers: BTreeMap::new(),
            meta: json!({}),
            balances: amounts(&[("enhancement", 2), ("export", 3)]),
            policy: donoratlas.clone(),
            failed_open: None,
        }),
        entries: partner[2..3].to_vec(),
        ..view("x-1", "partner", "settled", "export", DONORATLAS_V1)
    };
    let e_1 = TransactionView {
        created_at_ms: FIXTURE_STEP_MS,
        authorization: Authorization {
            transaction_id: "e-1".to_owned(),
            admitted: true,
            status: Some(202),
            error: None,
            admitted_items: 2,
            held: BTreeMap::new(),
            charged: amounts(&[("enhancement", 2)]),
            headers: BTreeMap::new(),
            meta: json!({
                "imports_charged": 2,
                "imports_remaining": 0,
                "partial": true,
                "partial_reason": "Only 2 credits remaining, but 3 persons requested",
                "processed": 2,
                "requested": 3
            }),
            balances: amounts(&[("enhancement", 0), ("export", 3)]),
            policy: donoratlas,
            failed_open: None,
        },
        entries: partner[3..4].to_vec(),
        ..view("e-1", "partner", "open", "enhance", DONORATLAS_V1)
    };
    BTreeMap::from([
        ("t-settled", t_settled),
        ("t-rejected", t_rejected),
        ("t-expired", t_expired),
        ("t-open", t_open),
        ("x-1", x_1),
        ("e-1", e_1),
    ])
}

fn activation(id: i64, name: &str, digest: &str, via: &str, at_ms: u64) -> PolicyActivation {
    PolicyActivation {
        id,
        digest: digest.to_owned(),
        name: name.to_owned(),
        version: "1.0.0".to_owned(),
        via: via.to_owned(),
        activated_at_ms: at_ms,
    }
}

/// The retries and conflicts every session of the migrated ledger must answer the
/// old way; none moves a credit or writes a record.
fn migrated_retries_are_idempotent(
    meter: &Meter,
    path: &Path,
    views: &BTreeMap<&str, TransactionView>,
) {
    let rows = log_rows(path);
    let journal = meter.journal("acme", 100).unwrap();
    let t_settled = request("t-settled", "acme", "person.enrich", &["a", "b"], &[]);
    assert_eq!(
        meter.authorize(t_settled.clone()).unwrap(),
        views["t-settled"].authorization
    );
    assert_eq!(
        refusal(meter.authorize(AuthorizeRequest {
            items: vec!["a".to_owned()],
            ..t_settled
        })),
        (409, "transaction_conflict")
    );
    assert_eq!(
        settle(meter, "t-settled", &[("records", "2")]).unwrap(),
        views["t-settled"].receipt.clone().unwrap()
    );
    let t_rejected = request(
        "t-rejected",
        "beta",
        "person.enrich",
        &["1", "2", "3", "4", "5", "6"],
        &[],
    );
    assert_eq!(
        meter.authorize(t_rejected).unwrap(),
        views["t-rejected"].authorization
    );
    assert_eq!(
        refusal(settle(meter, "t-rejected", &[])),
        (409, "transaction_rejected")
    );
    assert_eq!(
        refusal(settle(meter, "t-expired", &[("records", "1")])),
        (409, "hold_expired")
    );
    assert_eq!(
        meter
            .authorize(request("x-1", "partner", "export", &["d1", "d2"], &[]))
            .unwrap(),
        views["x-1"].authorization
    );
    assert_eq!(meter.journal("acme", 100).unwrap(), journal);
    assert_eq!(log_rows(path), rows, "a retry wrote a record");
}

fn assert_views(meter: &Meter, views: &BTreeMap<&str, TransactionView>) {
    for (id, view) in views {
        assert_eq!(&meter.transaction(id).unwrap(), view, "transaction {id}");
    }
}

#[test]
fn a_ledger_written_before_the_log_is_migrated_once_and_keeps_every_answer_balance_mark_and_policy()
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    std::fs::copy(FIXTURE, &path).unwrap();
    let clock = ManualClock::starting_at(FIXTURE_END_MS);
    let location = sqlite(&path);
    let meter = resume(config(&location, &clock));

    // The old rows are one Import record (with the two policies) at the head of the
    // log; the old tables are gone.
    {
        let log = rusqlite::Connection::open(&path).unwrap();
        let tables: Vec<String> = log
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tables, ["log"]);
        let version: i64 = log
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, 5);
        let record: Vec<u8> = log
            .query_row("SELECT record FROM log WHERE seq = 1", [], |row| row.get(0))
            .unwrap();
        let batch = codec::decode(&record).unwrap();
        assert_eq!(batch.decisions.len(), 3);
        assert!(matches!(&batch.decisions[0], Decision::Policy(p) if p.name == "smarte"));
        assert!(matches!(&batch.decisions[1], Decision::Policy(p) if p.name == "donoratlas"));
        let Decision::Import(import) = &batch.decisions[2] else {
            panic!("not an import: {:?}", batch.decisions[2]);
        };
        assert_eq!(
            (
                import.accounts.len(),
                import.transactions.len(),
                import.journal.len(),
                import.marks.len(),
                import.grants.len(),
                import.activations.len()
            ),
            (4, 6, 12, 2, 4, 2)
        );
    }
    assert_eq!(log_rows(&path), 1, "opening wrote more than the import");

    // The policy the old build activated last runs, from its stored bytes.
    assert_eq!(meter.policy().name, "donoratlas");
    assert_eq!(meter.policy().digest.to_string(), DONORATLAS_V1);
    let mut history = vec![
        activation(2, "donoratlas", DONORATLAS_V1, "test", FIXTURE_STEP_MS),
        activation(1, "smarte", SMARTE_V1, "start", START_MS),
    ];
    assert_eq!(meter.policy_history(10).unwrap(), history);
    assert_eq!(
        meter.balances("partner").unwrap(),
        tenant_balances(
            "partner",
            &[("enhancement", 0), ("export", 3)],
            &[("enhancement", 0), ("export", 0)]
        )
    );
    // Smarte's balance shows once smarte is active again (from its stored bytes).
    assert_eq!(meter.rollback().unwrap().digest.to_string(), SMARTE_V1);
    assert_eq!(
        meter.balances("acme").unwrap(),
        tenant_balances("acme", &[("default", 16)], &[("default", 3)])
    );
    assert_eq!(
        meter.balances("beta").unwrap(),
        tenant_balances("beta", &[("default", 5)], &[("default", 0)])
    );
    assert_eq!(
        grant(&meter, "g-acme", "acme", "default", 20).unwrap(),
        tenant_balances("acme", &[("default", 16)], &[("default", 3)])
    );
    assert_eq!(
        refusal(grant(&meter, "g-acme", "acme", "default", 21)),
        (409, "grant_conflict")
    );
    assert_eq!(meter.rollback().unwrap().digest.to_string(), DONORATLAS_V1);
    history.insert(
        0,
        activation(3, "smarte", SMARTE_V1, "rollback", FIXTURE_END_MS),
    );
    history.insert(
        0,
        activation(4, "donoratlas", DONORATLAS_V1, "rollback", FIXTURE_END_MS),
    );
    assert_eq!(meter.policy_history(10).unwrap(), history);

    // Every transaction reads back as the old build wrote it; the journal too.
    let mut views = fixture_transactions();
    assert_views(&meter, &views);
    assert_eq!(meter.journal("acme", 100).unwrap(), fixture_acme_journal());
    assert_eq!(
        meter.journal("beta", 100).unwrap(),
        [entry(
            2, "g-beta", "beta", "default", "grant", 5, SMARTE_V1, START_MS
        )]
    );
    assert_eq!(
        meter.journal("partner", 100).unwrap(),
        fixture_partner_journal()
    );
    migrated_retries_are_idempotent(&meter, &path, &views);
    assert_eq!(
        grant(&meter, "g-partner-x", "partner", "export", 5).unwrap(),
        tenant_balances(
            "partner",
            &[("enhancement", 0), ("export", 3)],
            &[("enhancement", 0), ("export", 0)]
        )
    );
    assert_eq!(
        refusal(grant(&meter, "g-partner-x", "partner", "export", 6)),
        (409, "grant_conflict")
    );

    // The open hold settles on the version that authorized it, not the active one.
    let receipt = settle(&meter, "t-open", &[("records", "2")]).unwrap();
    assert_eq!(receipt, smarte_receipt("t-open", 2, 1, 17));
    let t_open = views.get_mut("t-open").unwrap();
    t_open.state = "settled".to_owned();
    t_open.held = BTreeMap::new();
    t_open.receipt = Some(receipt);
    t_open.entries.extend([
        entry(
            13,
            "t-open",
            "acme",
            "default",
            "capture",
            2,
            SMARTE_V1,
            FIXTURE_END_MS,
        ),
        entry(
            14,
            "t-open",
            "acme",
            "default",
            "release",
            1,
            SMARTE_V1,
            FIXTURE_END_MS,
        ),
    ]);
    // An admission without a hold settles on DonorAtlas, which moves nothing.
    let receipt = settle(&meter, "e-1", &[]).unwrap();
    assert_eq!(
        receipt,
        Receipt {
            transaction_id: "e-1".to_owned(),
            charged: BTreeMap::new(),
            released: BTreeMap::new(),
            uncollected: BTreeMap::new(),
            headers: BTreeMap::new(),
            meta: json!({}),
            balances: amounts(&[("enhancement", 0), ("export", 3)]),
            policy: policy_ref("donoratlas", DONORATLAS_V1),
            failed_open: None,
        }
    );
    let e_1 = views.get_mut("e-1").unwrap();
    e_1.state = "settled".to_owned();
    e_1.receipt = Some(receipt);

    // The marks came along: d1 and d2 were exported before, d3 was not.
    let again = meter
        .authorize(request("x-2", "partner", "export", &["d1"], &[]))
        .unwrap();
    assert_eq!(
        (again.admitted, again.charged.clone()),
        (true, BTreeMap::new())
    );
    let third = meter
        .authorize(request("x-3", "partner", "export", &["d2", "d3"], &[]))
        .unwrap();
    assert_eq!(third.charged, amounts(&[("export", 1)]));
    assert_views(&meter, &views);
    let mut acme_journal = fixture_acme_journal();
    acme_journal.extend(views["t-open"].entries[1..].iter().cloned());
    assert_eq!(meter.journal("acme", 100).unwrap(), acme_journal);
    assert_sound(&meter);
    let rows = log_rows(&path);
    drop(meter);

    // Open again: nothing is imported twice, nothing is written at open, and every
    // answer, balance, mark and policy is as it was.
    let meter = resume(config(&location, &clock));
    assert_eq!(log_rows(&path), rows, "the second open wrote to the log");
    assert_eq!(meter.policy().digest.to_string(), DONORATLAS_V1);
    assert_eq!(meter.policy_history(10).unwrap(), history);
    assert_eq!(
        meter.balances("partner").unwrap(),
        tenant_balances(
            "partner",
            &[("enhancement", 0), ("export", 2)],
            &[("enhancement", 0), ("export", 0)]
        )
    );
    assert_views(&meter, &views);
    assert_eq!(meter.journal("acme", 100).unwrap(), acme_journal);
    let mut partner_journal = fixture_partner_journal();
    partner_journal.push(entry(
        15,
        "x-3",
        "partner",
        "export",
        "charge",
        1,
        DONORATLAS_V1,
        FIXTURE_END_MS,
    ));
    assert_eq!(meter.journal("partner", 100).unwrap(), partner_journal);
    migrated_retries_are_idempotent(&meter, &path, &views);
    assert_eq!(
        settle(&meter, "t-open", &[("records", "3")]).unwrap(),
        views["t-open"].receipt.clone().unwrap()
    );
    let free = meter
        .authorize(request(
            "x-4",
            "partner",
            "export",
            &["d1", "d2", "d3"],
            &[],
        ))
        .unwrap();
    assert_eq!((free.admitted, free.charged), (true, BTreeMap::new()));
    assert_eq!(meter.rollback().unwrap().digest.to_string(), SMARTE_V1);
    assert_eq!(
        meter.balances("acme").unwrap(),
        tenant_balances("acme", &[("default", 17)], &[("default", 0)])
    );
    assert_eq!(
        meter.balances("beta").unwrap(),
        tenant_balances("beta", &[("default", 5)], &[("default", 0)])
    );
    assert_eq!(
        refusal(grant(&meter, "g-beta", "beta", "default", 6)),
        (409, "grant_conflict")
    );
    assert_sound(&meter);
}

/// A ledger too large for one Import record is imported in several; the journal goes
/// on after the largest imported entry id whatever the last record holds.
#[test]
fn a_ledger_imported_in_several_records_continues_its_journal_after_the_last_imported_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    std::fs::copy(FIXTURE, &path).unwrap();
    {
        // The partner exported 10,000 more donors: more rows than one record takes,
        // and the last record gets marks and grants but no journal entry.
        let mut legacy = rusqlite::Connection::open(&path).unwrap();
        let insert = legacy.transaction().unwrap();
        for donor in 0..10_000 {
            insert
                .execute(
                    "INSERT INTO marks (tenant, scope, key, transaction_id) \
                     VALUES ('partner', 'exported', ?1, 'x-1')",
                    [format!("m{donor}")],
                )
                .unwrap();
        }
        insert.commit().unwrap();
    }
    let clock = ManualClock::starting_at(FIXTURE_END_MS);
    let meter = resume(config(&sqlite(&path), &clock));
    assert_eq!(log_rows(&path), 2);

    assert_eq!(
        settle(&meter, "t-open", &[("records", "2")]).unwrap(),
        smarte_receipt("t-open", 2, 1, 17)
    );
    let ids: Vec<i64> = meter
        .transaction("t-open")
        .unwrap()
        .entries
        .iter()
        .map(|entry| entry.id)
        .collect();
    assert_eq!(ids, [8, 13, 14]);
    let free = meter
        .authorize(request(
            "x-2",
            "partner",
            "export",
            &["d1", "m0", "m5000", "m9999"],
            &[],
        ))
        .unwrap();
    assert_eq!((free.admitted, free.charged), (true, BTreeMap::new()));
    let charged = meter
        .authorize(request("x-3", "partner", "export", &["m10000"], &[]))
        .unwrap();
    assert_eq!(charged.charged, amounts(&[("export", 1)]));
    let partner: Vec<i64> = meter
        .journal("partner", 100)
        .unwrap()
        .iter()
        .map(|entry| entry.id)
        .collect();
    assert_eq!(partner, [9, 10, 11, 12, 15]);
    assert_sound(&meter);
}

// ---------------------------------------------------------------------------------
// 2. Restart from a snapshot and the log after it

/// What the ledger must hold, kept beside it by the test: every answer checks it.
#[derive(Clone, Default)]
struct Model {
    /// Smarte tenants: (available, held) on `default`.
    smarte: BTreeMap<String, (i64, i64)>,
    /// DonorAtlas tenants: (enhancement, export).
    partners: BTreeMap<String, (i64, i64)>,
    /// Open smarte holds: id -> (tenant, credits held).
    open: BTreeMap<String, (String, i64)>,
    exported: BTreeSet<(String, String)>,
    /// DonorAtlas tenants' overdraft limits, by balance.
    overdrafts: BTreeMap<String, BTreeMap<String, i64>>,
    /// DonorAtlas tenants' spend caps, by balance (nothing spent on them).
    caps: BTreeMap<String, BTreeMap<String, SpendCapView>>,
    /// Watched balances' thresholds, by tenant and balance.
    watched: BTreeMap<String, BTreeMap<String, ThresholdTerms>>,
    /// DonorAtlas tenants' refills, as set (each granted its first period at once).
    refills: BTreeMap<String, Vec<RefillView>>,
    requests: BTreeMap<String, AuthorizeRequest>,
    answers: BTreeMap<String, Authorization>,
    receipts: BTreeMap<String, Receipt>,
}

impl Model {
    fn grant(&mut self, meter: &Meter, grant_id: &str, tenant: &str, balance: &str, amount: i64) {
        let answer = grant(meter, grant_id, tenant, balance, amount).unwrap();
        let expected = if balance == "default" {
            let account = self.smarte.entry(tenant.to_owned()).or_default();
            account.0 += amount;
            tenant_balances(tenant, &[("default", account.0)], &[("default", account.1)])
        } else {
            let account = self.partners.entry(tenant.to_owned()).or_default();
            if balance == "enhancement" {
                account.0 += amount;
            } else {
                account.1 += amount;
            }
            self.partner_balances(tenant)
        };
        assert_eq!(answer, expected, "grant {grant_id}");
    }

    fn partner_balances(&self, tenant: &str) -> TenantBalances {
        let (enhancement, export) = self.partners[tenant];
        TenantBalances {
            overdraft_limits: self.overdrafts.get(tenant).cloned().unwrap_or_default(),
            spend_caps: self.caps.get(tenant).cloned().unwrap_or_default(),
            thresholds: self.watched.get(tenant).cloned().unwrap_or_default(),
            ..tenant_balances(
                tenant,
                &[("enhancement", enhancement), ("export", export)],
                &[("enhancement", 0), ("export", 0)],
            )
        }
    }

    fn overdraft(&mut self, meter: &Meter, tenant: &str, balance: &str, limit: i64) {
        self.overdrafts
            .entry(tenant.to_owned())
            .or_default()
            .insert(balance.to_owned(), limit);
        assert_eq!(
            meter.set_overdraft(tenant, balance, limit).unwrap(),
            self.partner_balances(tenant)
        );
    }

    /// A monthly cap in UTC on a balance nothing spends: its window, in the November
    /// the test clock stays in, resets on 1 December 2023.
    fn spend_cap(&mut self, meter: &Meter, tenant: &str, balance: &str, cap: i64) {
        self.caps.entry(tenant.to_owned()).or_default().insert(
            balance.to_owned(),
            SpendCapView {
                cap,
                window: "month".to_owned(),
                time_zone: "UTC".to_owned(),
                spent: 0,
                resets_at_ms: 1_701_388_800_000,
            },
        );
        let terms = SpendCapTerms {
            cap,
            window: "month".to_owned(),
            time_zone: "UTC".to_owned(),
        };
        assert_eq!(
            meter.set_spend_cap(tenant, balance, Some(&terms)).unwrap(),
            self.partner_balances(tenant)
        );
    }

    /// Watches a balance nothing spends: a level and a lead time, which raise nothing.
    fn watch(&mut self, meter: &Meter, tenant: &str, balance: &str, credits: i64) {
        let terms = ThresholdTerms {
            levels: vec![LevelTerms::Credits(credits), LevelTerms::Percent(50)],
            lot_expiring_lead_ms: Some(60_000),
        };
        self.watched
            .entry(tenant.to_owned())
            .or_default()
            .insert(balance.to_owned(), terms.clone());
        assert_eq!(
            meter.set_thresholds(tenant, balance, Some(&terms)).unwrap(),
            self.partner_balances(tenant)
        );
    }

    /// A monthly reset refill of `amount` on `enhancement`, anchored at the test clock's
    /// start: its first lot is granted at once.
    fn refill(&mut self, meter: &Meter, tenant: &str, refill_id: &str, amount: i64) {
        let request = RefillRequest {
            balance: "enhancement".to_owned(),
            amount,
            every: "month".to_owned(),
            time_zone: "UTC".to_owned(),
            anchor_ms: Some(START_MS as i64),
            mode: "reset".to_owned(),
            rollover_cap: None,
            priority: 0,
            category: None,
        };
        let refills = meter.set_refill(tenant, refill_id, Some(&request)).unwrap();
        assert_eq!(refills[0].last_start_ms, Some(START_MS as i64));
        self.partners.entry(tenant.to_owned()).or_default().0 += amount;
        self.refills.insert(tenant.to_owned(), refills);
    }

    fn authorize(&mut self, meter: &Meter, request: AuthorizeRequest) -> Authorization {
        let id = request.transaction_id.clone().unwrap();
        let answer = meter.authorize(request.clone()).unwrap();
        self.requests.insert(id.clone(), request);
        self.answers.insert(id, answer.clone());
        answer
    }

    /// A smarte authorize of `items` records: holds them, or is refused 402.
    fn hold(&mut self, meter: &Meter, id: &str, tenant: &str, items: usize) {
        let names: Vec<String> = (0..items).map(|item| format!("r{item}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let answer = self.authorize(meter, request(id, tenant, "person.enrich", &names, &[]));
        let account = self.smarte.get_mut(tenant).unwrap();
        let required = i64::try_from(items.max(1)).unwrap();
        if account.0 >= required {
            account.0 -= required;
            account.1 += required;
            self.open
                .insert(id.to_owned(), (tenant.to_owned(), required));
            assert!(answer.admitted, "{id}: {answer:?}");
            assert_eq!(answer.held, amounts(&[("default", required)]), "{id}");
        } else {
            assert!(!answer.admitted, "{id}: {answer:?}");
            assert_eq!(answer.status, Some(402), "{id}");
        }
        assert_eq!(answer.balances, amounts(&[("default", account.0)]), "{id}");
        assert_eq!(answer.policy.name, "smarte");
    }

    /// Settles a smarte hold on smarte, whatever is active: `records` charged, at most
    /// what was held, the rest released.
    fn settle(&mut self, meter: &Meter, id: &str, records: i64) {
        let (tenant, held) = self.open.remove(id).unwrap();
        let receipt = settle(meter, id, &[("records", &records.to_string())]).unwrap();
        let charged = records.min(held);
        let account = self.smarte.get_mut(&tenant).unwrap();
        account.0 += held - charged;
        account.1 -= held;
        assert_eq!(receipt.charged, moved("default", charged), "{id}");
        assert_eq!(receipt.released, moved("default", held - charged), "{id}");
        assert_eq!(receipt.balances, amounts(&[("default", account.0)]), "{id}");
        assert_eq!(receipt.policy.name, "smarte", "{id}");
        self.receipts.insert(id.to_owned(), receipt);
    }

    /// Releases every open hold (their TTL passed).
    fn expire_all(&mut self, meter: &Meter) {
        assert_eq!(meter.expire_due().unwrap(), self.open.len());
        for (_, (tenant, held)) in std::mem::take(&mut self.open) {
            let account = self.smarte.get_mut(&tenant).unwrap();
            account.0 += held;
            account.1 -= held;
        }
    }

    /// A DonorAtlas export: one export credit per donor the tenant never exported.
    fn export(&mut self, meter: &Meter, id: &str, tenant: &str, donors: &[&str]) {
        let answer = self.authorize(meter, request(id, tenant, "export", donors, &[]));
        let new: BTreeSet<(String, String)> = donors
            .iter()
            .map(|donor| (tenant.to_owned(), (*donor).to_owned()))
            .filter(|mark| !self.exported.contains(mark))
            .collect();
        let cost = i64::try_from(new.len()).unwrap();
        let account = self.partners.get_mut(tenant).unwrap();
        if cost <= account.1 {
            account.1 -= cost;
            self.exported.extend(new);
            assert!(answer.admitted, "{id}: {answer:?}");
            assert_eq!(answer.charged, moved("export", cost), "{id}");
        } else {
            assert_eq!((answer.admitted, answer.status), (false, Some(402)), "{id}");
        }
        assert_eq!(
            answer.balances,
            self.partner_balances(tenant).balances,
            "{id}"
        );
    }

    /// A DonorAtlas enhancement: as many persons as credits remain, charged at once.
    fn enhance(&mut self, meter: &Meter, id: &str, tenant: &str, persons: usize) {
        let names: Vec<String> = (0..persons).map(|person| format!("p{person}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let answer = self.authorize(meter, request(id, tenant, "enhance", &names, &[]));
        let account = self.partners.get_mut(tenant).unwrap();
        let charged = account.0.min(i64::try_from(persons).unwrap());
        if charged > 0 {
            account.0 -= charged;
            assert_eq!(answer.charged, amounts(&[("enhancement", charged)]), "{id}");
        } else {
            assert_eq!((answer.admitted, answer.status), (false, Some(402)), "{id}");
        }
        assert_eq!(
            answer.balances,
            self.partner_balances(tenant).balances,
            "{id}"
        );
    }

    /// Every smarte tenant's balances, as the meter shows them with smarte active.
    fn check_smarte(&self, meter: &Meter) {
        assert_eq!(meter.policy().name, "smarte");
        for (tenant, (available, held)) in &self.smarte {
            assert_eq!(
                meter.balances(tenant).unwrap(),
                tenant_balances(tenant, &[("default", *available)], &[("default", *held)])
            );
        }
    }

    fn check_partners(&self, meter: &Meter) {
        assert_eq!(meter.policy().name, "donoratlas");
        for tenant in self.partners.keys() {
            assert_eq!(
                meter.balances(tenant).unwrap(),
                self.partner_balances(tenant)
            );
        }
        for (tenant, refills) in &self.refills {
            assert_eq!(&meter.refills(tenant).unwrap(), refills);
        }
    }

    /// Retries answer what the first call answered and move nothing; another request
    /// under a used id is a conflict.
    fn check_retries(&self, meter: &Meter, ids: &[&str]) {
        for id in ids {
            let request = self.requests[*id].clone();
            assert_eq!(
                meter.authorize(request.clone()).unwrap(),
                self.answers[*id],
                "{id}"
            );
            let mut other = request;
            other.items.push("another".to_owned());
            assert_eq!(
                refusal(meter.authorize(other)),
                (409, "transaction_conflict"),
                "{id}"
            );
            if let Some(receipt) = self.receipts.get(*id) {
                assert_eq!(
                    &settle(meter, id, &[("records", "9")]).unwrap(),
                    receipt,
                    "{id}"
                );
            }
        }
    }

    /// Exporting every donor a partner exported again charges nothing.
    fn check_marks(&mut self, meter: &Meter, id: &str) {
        for tenant in self.partners.keys().cloned().collect::<Vec<_>>() {
            let donors: Vec<String> = self
                .exported
                .iter()
                .filter(|(owner, _)| *owner == tenant)
                .map(|(_, donor)| donor.clone())
                .collect();
            if donors.is_empty() {
                continue;
            }
            let donors: Vec<&str> = donors.iter().map(String::as_str).collect();
            let before = self.partners[&tenant];
            self.export(meter, &format!("{id}-{tenant}"), &tenant, &donors);
            assert_eq!(
                self.partners[&tenant], before,
                "a re-export by {tenant} was charged"
            );
        }
    }
}

fn activate(meter: &Meter, policy: &str) {
    assert_eq!(
        meter.activate(component(policy), "test").unwrap().name,
        policy
    );
}

/// A few hundred decisions of both policies: holds expired, settled, left open and
/// refused, exports over known and new donors, enhancements. Ends on DonorAtlas.
fn mixed_traffic(meter: &Meter, clock: &ManualClock, model: &mut Model) {
    assert_eq!(meter.policy().name, "smarte");
    for tenant in 0..8 {
        model.grant(
            meter,
            &format!("g-s{tenant}"),
            &format!("s{tenant}"),
            "default",
            60,
        );
    }
    for tenant in 0..8 {
        model.hold(meter, &format!("e{tenant}"), &format!("s{tenant}"), 2);
    }
    clock.advance_ms(smarte::HOLD_TTL_MS);
    model.expire_all(meter);
    for round in 0..16usize {
        for tenant in 0..8usize {
            let id = format!("a{round}-{tenant}");
            model.hold(meter, &id, &format!("s{tenant}"), 1 + (round + tenant) % 4);
            if round % 3 != 2 {
                model.settle(meter, &id, i64::try_from((round + tenant) % 3).unwrap());
            }
        }
        if round == 5 {
            for tenant in 0..8 {
                model.hold(meter, &format!("r{tenant}"), &format!("s{tenant}"), 100);
            }
        }
    }
    activate(meter, "donoratlas");
    // A tenant with an overdraft limit, a spend cap, a refill, thresholds and no
    // traffic: all are in the snapshot.
    model.grant(meter, "g-q0", "q0", "enhancement", 1);
    model.overdraft(meter, "q0", "export", 5);
    model.spend_cap(meter, "q0", "enhancement", 7);
    model.refill(meter, "q0", "q0-monthly", 3);
    model.watch(meter, "q0", "export", 2);
    for partner in 0..3 {
        let tenant = format!("p{partner}");
        model.grant(meter, &format!("g-px{partner}"), &tenant, "export", 12);
        model.grant(meter, &format!("g-pe{partner}"), &tenant, "enhancement", 4);
        for k in 0..8 {
            let donors = [format!("d{k}"), format!("d{}", k + 1)];
            let donors: Vec<&str> = donors.iter().map(String::as_str).collect();
            model.export(meter, &format!("x{partner}-{k}"), &tenant, &donors);
        }
        let many: Vec<String> = (0..10).map(|donor| format!("n{donor}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        model.export(meter, &format!("xr{partner}"), &tenant, &many);
        model.enhance(meter, &format!("en{partner}"), &tenant, 6);
        model.enhance(meter, &format!("en-late{partner}"), &tenant, 1);
    }
}

/// More decisions after a snapshot: settles of old holds (on smarte while DonorAtlas is
/// active), exports, grants, new holds. Ends on DonorAtlas with holds open.
fn more_traffic(meter: &Meter, model: &mut Model) {
    assert_eq!(meter.policy().name, "donoratlas");
    for round in [2, 5] {
        for tenant in 0..8 {
            model.settle(meter, &format!("a{round}-{tenant}"), 1);
        }
    }
    for partner in 0..3 {
        let tenant = format!("p{partner}");
        model.grant(meter, &format!("g-px-more{partner}"), &tenant, "export", 5);
        model.export(meter, &format!("x{partner}-more"), &tenant, &["d0", "d20"]);
    }
    activate(meter, "smarte");
    for tenant in 0..8 {
        let id = format!("c{tenant}");
        model.hold(meter, &id, &format!("s{tenant}"), 3);
        if tenant % 2 == 0 {
            model.settle(meter, &id, 3);
        }
    }
    activate(meter, "donoratlas");
}

/// Old and recent ids of both traffic phases.
const RETRIED: &[&str] = &[
    "e0", "a0-0", "a1-3", "r4", "x0-0", "x1-7", "xr2", "en1", "a5-0", "c0", "c1", "x2-more",
];

crate::on_both_stores! {
    /// On SQLite the live state comes back from the latest snapshot plus the log after
    /// it; on PostgreSQL from the tables. Either way: balances, holds, open
    /// transactions, idempotent answers and marks are what they were.
    fn a_restart_rebuilds_balances_holds_answers_and_marks_from_the_snapshot_and_the_log(store) {
        let scratch = store.create().unwrap();
        let location = scratch.location().clone();
        let cache = tempfile::tempdir().unwrap();
        let clock = ManualClock::starting_at(START_MS);
        let configured = |clock: &ManualClock| {
            let mut config = config(&location, clock);
            config.compile_cache_dir = Some(cache.path().to_path_buf());
            config.sqlite.snapshot_every_decisions = 50;
            config.sqlite.views.window_ms_max = 1;
            config
        };
        let meter =
            Meter::open(configured(&clock), PolicySource::Component(component("smarte"))).unwrap();
        let mut model = Model::default();
        mixed_traffic(&meter, &clock, &mut model);

        // SQLite: a copy of the ledger whose log keeps only what the snapshot lacks.
        let copy = match &location {
            StoreLocation::Sqlite(path) => Some(truncated_copy(&meter, path, &mut model)),
            StoreLocation::Postgres(_) => None,
        };
        let at_copy = model.clone();

        more_traffic(&meter, &mut model);
        assert!(!model.open.is_empty());
        assert_sound(&meter);
        drop(meter);

        let meter = resume(configured(&clock));
        model.check_partners(&meter);
        // Open holds from before and after the snapshot settle on smarte, loaded by
        // digest, while DonorAtlas stays active.
        for (index, id) in model.open.keys().cloned().collect::<Vec<_>>().iter().enumerate() {
            assert_eq!(meter.transaction(id).unwrap().state, "open");
            model.settle(&meter, id, i64::try_from(index % 4).unwrap());
        }
        model.check_retries(&meter, RETRIED);
        assert_eq!(refusal(settle(&meter, "e3", &[])), (409, "hold_expired"));
        assert_eq!(refusal(settle(&meter, "r3", &[])), (409, "transaction_rejected"));
        model.check_marks(&meter, "re-export");
        model.export(&meter, "x-after", "p1", &["d1", "d99"]);
        assert_eq!(
            refusal(grant(&meter, "g-px0", "p0", "export", 13)),
            (409, "grant_conflict")
        );
        activate(&meter, "smarte");
        model.check_smarte(&meter);
        model.grant(&meter, "g-s9", "s9", "default", 4);
        assert_eq!(
            grant(&meter, "g-s0", "s0", "default", 60).unwrap(),
            tenant_balances("s0", &[("default", model.smarte["s0"].0)], &[("default", 0)])
        );
        assert_sound(&meter);
        drop(meter);

        if let Some((copy_dir, copy_path)) = copy {
            restart_from_the_snapshot_alone(&copy_path, at_copy, &clock, cache.path());
            drop(copy_dir);
        }
    }
}

/// Waits until a snapshot covers every decision so far (adding grants to a tenant of its
/// own so that one starts), then copies the ledger and deletes from the copy's log every
/// record the snapshot holds. The replay of the copy then has nothing but those grants
/// to rebuild the rest from: only the snapshot has it.
fn truncated_copy(meter: &Meter, path: &Path, model: &mut Model) -> (tempfile::TempDir, PathBuf) {
    let last_seq = |path: &Path| -> i64 {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row("SELECT MAX(seq) FROM log", [], |row| row.get(0))
            .unwrap()
    };
    let traffic_end = last_seq(path);
    assert!(traffic_end > 250, "only {traffic_end} batches");
    let mut fillers = 0;
    while snapshot_start(path).is_none_or(|start| start < traffic_end) {
        assert!(fillers < 1_000, "no snapshot covered batch {traffic_end}");
        model.grant(meter, &format!("g-filler{fillers}"), "filler", "export", 1);
        fillers += 1;
    }
    // Every acknowledged batch applied to the views, then both files copied.
    meter.journal("filler", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("ledger.db");
    for (from, to) in [
        (path.to_path_buf(), copy.clone()),
        (views_path(path), views_path(&copy)),
    ] {
        rusqlite::Connection::open(&from)
            .unwrap()
            .execute("VACUUM INTO ?1", [to.to_str().unwrap()])
            .unwrap();
    }
    let views = rusqlite::Connection::open(views_path(&copy)).unwrap();
    let (start, applied): (i64, i64) = views
        .query_row(
            "SELECT (SELECT start_seq FROM snapshot_meta), (SELECT seq FROM applied)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert!(
        start >= traffic_end && applied >= start,
        "{start} {applied}"
    );
    let log = rusqlite::Connection::open(&copy).unwrap();
    let deleted = log
        .execute("DELETE FROM log WHERE seq <= ?1", [start])
        .unwrap();
    assert_eq!(i64::try_from(deleted).unwrap(), start);
    (dir, copy)
}

/// Opens the copy whose log lost every record before its snapshot: the snapshot alone
/// gives balances, holds (with what settle needs), the id and mark filters and the
/// active policy.
fn restart_from_the_snapshot_alone(
    path: &Path,
    mut model: Model,
    clock: &ManualClock,
    cache: &Path,
) {
    let mut config = config(&sqlite(path), clock);
    config.compile_cache_dir = Some(cache.to_path_buf());
    let meter = resume(config);
    model.check_partners(&meter);
    model.check_marks(&meter, "copy-re-export");
    assert_eq!(
        grant(&meter, "g-px1", "p1", "export", 12).unwrap(),
        model.partner_balances("p1")
    );
    let open: Vec<String> = model.open.keys().take(3).cloned().collect();
    for id in &open {
        model.settle(&meter, id, 2);
    }
    activate(&meter, "smarte");
    model.check_smarte(&meter);
    // No audit here: it sums the journal, and this copy's journal before the snapshot
    // was deleted on purpose. The balances checked against the model above are the proof.
}

// ---------------------------------------------------------------------------------
// 3. Damaged records and records of a newer format

/// A small closed SQLite ledger: a grant, a settled and an open transaction.
fn closed_ledger() -> (tempfile::TempDir, PathBuf, ManualClock) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let clock = ManualClock::starting_at(START_MS);
    let meter = Meter::open(
        config(&sqlite(&path), &clock),
        PolicySource::Component(component("smarte")),
    )
    .unwrap();
    grant(&meter, "g1", "acme", "default", 10).unwrap();
    meter
        .authorize(request("t1", "acme", "person.enrich", &["a", "b"], &[]))
        .unwrap();
    settle(&meter, "t1", &[("records", "1")]).unwrap();
    meter
        .authorize(request(
            "t2",
            "acme",
            "person.enrich",
            &["a", "b", "c"],
            &[],
        ))
        .unwrap();
    drop(meter);
    (dir, path, clock)
}

fn record(path: &Path, seq: i64) -> Vec<u8> {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row("SELECT record FROM log WHERE seq = ?1", [seq], |row| {
            row.get(0)
        })
        .unwrap()
}

fn set_record(path: &Path, seq: i64, bytes: &[u8]) {
    let updated = rusqlite::Connection::open(path)
        .unwrap()
        .execute(
            "UPDATE log SET record = ?2 WHERE seq = ?1",
            rusqlite::params![seq, bytes],
        )
        .unwrap();
    assert_eq!(updated, 1);
}

fn views_applied(path: &Path) -> i64 {
    rusqlite::Connection::open(views_path(path))
        .unwrap()
        .query_row("SELECT seq FROM applied", [], |row| row.get(0))
        .unwrap()
}

fn open_error(path: &Path, clock: &ManualClock) -> MeterError {
    Meter::open(
        config(&sqlite(path), clock),
        PolicySource::Component(component("smarte")),
    )
    .err()
    .expect("the ledger is refused at open")
}

#[test]
fn a_damaged_log_record_is_refused_at_open_as_corrupt_and_nothing_is_decided() {
    let (_dir, path, clock) = closed_ledger();
    let rows = log_rows(&path);
    assert!(rows >= 4, "{rows} rows");
    let seq = rows / 2;
    let original = record(&path, seq);
    let mut damaged = original.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x10;
    set_record(&path, seq, &damaged);
    let applied = views_applied(&path);

    for _ in 0..2 {
        // Refused every time (the lock goes with the failed open; nothing heals).
        let error = open_error(&path, &clock);
        assert_eq!(
            (error.status(), error.code()),
            (503, "store_corrupt"),
            "{error}"
        );
        assert!(
            error.to_string().contains("damaged") && error.to_string().contains("checksum"),
            "{error}"
        );
        assert_eq!(log_rows(&path), rows);
        assert_eq!(record(&path, seq), damaged);
        assert_eq!(views_applied(&path), applied);
    }

    // The same byte put back: the ledger opens as it was.
    set_record(&path, seq, &original);
    let meter = resume(config(&sqlite(&path), &clock));
    assert_eq!(
        meter.balances("acme").unwrap(),
        tenant_balances("acme", &[("default", 6)], &[("default", 3)])
    );
    assert_eq!(log_rows(&path), rows);
    assert_sound(&meter);
}

#[test]
fn a_log_record_of_a_newer_format_is_refused_as_incompatible_and_a_damaged_version_as_corrupt() {
    let (_dir, path, clock) = closed_ledger();
    let rows = log_rows(&path);
    let original = record(&path, rows);
    assert_eq!(&original[..4], b"CGB1");
    assert_eq!(original[4], codec::FORMAT_VERSION);
    let newer = codec::FORMAT_VERSION + 1;

    // The version byte alone changed: the checksum (which covers it) says damage.
    let mut damaged = original.clone();
    damaged[4] = newer;
    set_record(&path, rows, &damaged);
    let error = open_error(&path, &clock);
    assert_eq!(
        (error.status(), error.code()),
        (503, "store_corrupt"),
        "{error}"
    );

    // A record a newer build wrote: version and checksum agree.
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[newer]);
    crc.update(&damaged[5..9]);
    crc.update(&damaged[13..]);
    damaged[9..13].copy_from_slice(&crc.finalize().to_le_bytes());
    set_record(&path, rows, &damaged);
    let error = open_error(&path, &clock);
    assert_eq!(
        (error.status(), error.code()),
        (503, "store_incompatible"),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains(&format!("format version {newer}"))
            && error.to_string().contains("upgrade creditgate"),
        "{error}"
    );
    assert_eq!(log_rows(&path), rows);
    assert_eq!(record(&path, rows), damaged);
}

// ---------------------------------------------------------------------------------
// 4. One meter owns a SQLite ledger

#[test]
fn a_second_meter_on_a_sqlite_ledger_is_refused_naming_the_owner_until_the_owner_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let clock = ManualClock::starting_at(START_MS);
    let location = sqlite(&path);
    let owner = Meter::open(
        config(&location, &clock),
        PolicySource::Component(component("smarte")),
    )
    .unwrap();
    grant(&owner, "g1", "acme", "default", 5).unwrap();
    let rows = log_rows(&path);

    let second = || {
        Meter::open(
            config(&location, &clock),
            PolicySource::Resume { fallback: None },
        )
        .err()
        .expect("a second meter is refused")
    };
    let refused = second();
    assert_eq!((refused.status(), refused.code()), (503, "ledger_in_use"));
    let pid = format!("creditgate process {}", std::process::id());
    let message = refused.to_string();
    assert!(
        message.contains(&pid) && message.contains(&path.display().to_string()),
        "{message}"
    );
    owner.announce("http://127.0.0.1:4999").unwrap();
    let message = second().to_string();
    assert!(
        message.contains(&pid) && message.contains("serving http://127.0.0.1:4999"),
        "{message}"
    );

    // The refusals moved nothing; the owner still decides.
    assert_eq!(log_rows(&path), rows);
    assert!(owner.failure().is_none());
    assert_eq!(
        grant(&owner, "g2", "acme", "default", 1).unwrap().balances,
        amounts(&[("default", 6)])
    );
    drop(owner);
    let next = resume(config(&location, &clock));
    assert_eq!(
        next.balances("acme").unwrap().balances,
        amounts(&[("default", 6)])
    );
}

#[test]
fn a_sqlite_ledger_owned_by_a_sidecar_names_its_pid_and_url_and_is_free_once_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let server = Server::start("smarte", &path, None);
    server.grant("acme", "default", 7, "g1");
    let clock = ManualClock::starting_at(START_MS);
    let refused = Meter::open(
        config(&sqlite(&path), &clock),
        PolicySource::Resume { fallback: None },
    )
    .err()
    .expect("the sidecar owns the ledger");
    assert_eq!((refused.status(), refused.code()), (503, "ledger_in_use"));
    let message = refused.to_string();
    assert!(
        message.contains(&format!("serving {}", server.base)),
        "{message}"
    );
    let pid: u32 = message
        .split("creditgate process ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {message}"));
    assert_ne!(pid, std::process::id());
    let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let command_line = String::from_utf8_lossy(&command_line).replace('\0', " ");
    assert!(
        command_line.contains("serve") && command_line.contains(&path.display().to_string()),
        "process {pid} is {command_line:?}"
    );

    // A sidecar killed without closing leaves no lock behind.
    server.kill();
    let meter = resume(config(&sqlite(&path), &clock));
    assert_eq!(
        meter.balances("acme").unwrap().balances,
        amounts(&[("default", 7)])
    );
}

// ---------------------------------------------------------------------------------
// 5. Idempotent by transaction id, forever

crate::on_both_stores! {
    /// Closed transactions leave memory once the views have them (SQLite); a retry of
    /// one long gone still finds it (through the id filter, the views and the log) and
    /// answers the first answer, moving nothing.
    fn a_transaction_id_stays_idempotent_after_it_left_memory(store) {
        let scratch = store.create().unwrap();
        let clock = ManualClock::starting_at(START_MS);
        let meter = Meter::open(
            config(scratch.location(), &clock),
            PolicySource::Component(component("smarte")),
        )
        .unwrap();
        let mut model = Model::default();
        model.grant(&meter, "g-acme", "acme", "default", 1_000);
        model.hold(&meter, "early-expired", "acme", 2);
        clock.advance_ms(smarte::HOLD_TTL_MS);
        model.expire_all(&meter);
        model.hold(&meter, "early-settled", "acme", 3);
        model.settle(&meter, "early-settled", 2);
        model.hold(&meter, "early-rejected", "acme", 2_000);
        // Admitted without a hold (audit mode): open, but nothing keeps it in memory.
        let audit = request("early-audit", "acme", "person.enrich", &["a"], &[("mode", "AUD")]);
        let audit_answer = model.authorize(&meter, audit);
        assert!(audit_answer.admitted && audit_answer.held.is_empty());
        for index in 0..300 {
            let id = format!("later-{index}");
            model.hold(&meter, &id, "acme", 1);
            model.settle(&meter, &id, i64::from(index % 2 == 0));
        }
        // Reads wait for the views; the next batch lets memory forget what they hold.
        assert_eq!(meter.transaction("later-299").unwrap().state, "settled");
        model.grant(&meter, "g-later", "acme", "default", 1);
        let balances = meter.balances("acme").unwrap();
        let journal = meter.journal("acme", 10_000).unwrap();

        model.check_retries(&meter, &["early-settled", "early-rejected", "early-expired", "early-audit", "later-0"]);
        assert_eq!(refusal(settle(&meter, "early-expired", &[])), (409, "hold_expired"));
        assert_eq!(refusal(settle(&meter, "early-rejected", &[])), (409, "transaction_rejected"));
        assert_eq!(
            grant(&meter, "g-acme", "acme", "default", 1_000).unwrap(),
            balances
        );
        assert_eq!(refusal(grant(&meter, "g-acme", "acme", "default", 999)), (409, "grant_conflict"));
        assert_eq!(meter.balances("acme").unwrap(), balances);
        assert_eq!(meter.journal("acme", 10_000).unwrap(), journal);

        // The open admission without a hold, long out of memory, still settles, once.
        let receipt = settle(&meter, "early-audit", &[("records", "1")]).unwrap();
        assert_eq!(
            (receipt.charged.clone(), receipt.meta["reason"].clone()),
            (BTreeMap::new(), json!("audit_only"))
        );
        assert_eq!(settle(&meter, "early-audit", &[("records", "5")]).unwrap(), receipt);
        assert_eq!(meter.transaction("early-audit").unwrap().state, "settled");
        assert_eq!(meter.balances("acme").unwrap(), balances);
        assert_sound(&meter);
    }
}
