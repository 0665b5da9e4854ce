//! `creditgate replay`: a ledger's recorded traffic decided again under a candidate,
//! compared with shadow mode on the same traffic, and never a byte written to the
//! ledger; on SQLite and on PostgreSQL (whose log replicas append concurrently).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use creditgate::clock::{Clock, ManualClock};
use creditgate::meter::replay::{self, ReplayConfig, ReplayReport};
use creditgate::model::{Amounts, GrantRequest, ShadowReport};
use creditgate::store::StoreLocation;
use creditgate::{Meter, MeterConfig, MeterError, PolicySource};

use crate::support::{
    BINARY, Gate, START_MS, TestMeter, component, component_path, deterministic_limits,
    postgres_store,
};

const DAY_MS: u64 = 86_400_000;

/// A small deterministic generator (xorshift64*), as the bench's.
struct Traffic(u64);

impl Traffic {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }
}

const OPERATIONS: [&str; 6] = [
    "person.enrich",
    "company.enrich",
    "email.enrich",
    "mobile.enrich",
    "technographics.enrich",
    "funding.enrich",
];

/// What [`write_traffic`] recorded: the authorizes of each tenant, by time, and what
/// SMARTe held for each tenant's admitted funding enrichments (what a funding twice as
/// dear holds more).
struct Recorded {
    authorizes: Vec<(u64, String)>,
    funding_held: BTreeMap<String, i64>,
}

/// SMARTe traffic over `transactions` calls spread across about three days: tenants with
/// credits to spare, 1 to 3 records a call, some delivered short, some 404, some audit
/// only, some of an operation SMARTe refuses, some never settled (their holds lapse),
/// a grant in the middle; and one tenant whose one funding enrichment SMARTe admits and
/// a pricier funding would not (settled 404: nothing charged either way).
fn write_traffic(meter: &TestMeter, tenants: usize, transactions: usize) -> Recorded {
    let mut traffic = Traffic(0x9e37_79b9_7f4a_7c15);
    let mut recorded = Recorded {
        authorizes: Vec::new(),
        funding_held: BTreeMap::new(),
    };
    for tenant in 0..tenants {
        meter.grant(&format!("tenant-{tenant}"), "default", 1_000_000);
    }
    meter.grant("tight", "default", 3);
    let now = |meter: &TestMeter| meter.clock.now_ms();
    for sequence in 0..transactions {
        meter.clock.advance_ms(130_000);
        let tenant = format!("tenant-{}", traffic.below(tenants as u64));
        let id = format!("t{sequence}");
        if sequence == transactions / 2 {
            meter
                .meter
                .grant(GrantRequest {
                    grant_id: "top-up".into(),
                    tenant: tenant.clone(),
                    balance: "default".into(),
                    amount: 500,
                    terms: Default::default(),
                })
                .unwrap();
        }
        if sequence == transactions / 3 {
            let tight = meter.authorize("tight-1", "tight", "funding.enrich", &["a", "b"], &[]);
            assert!(tight.admitted, "{tight:?}");
            meter.settle("tight-1", 404, &[]);
            recorded.authorizes.push((now(meter), "tight".into()));
        }
        let operation = if sequence % 40 == 7 {
            "search"
        } else {
            OPERATIONS[traffic.below(OPERATIONS.len() as u64) as usize]
        };
        let count = 1 + traffic.below(3) as usize;
        let items: Vec<String> = (0..count)
            .map(|item| format!("r{sequence}-{item}"))
            .collect();
        let items: Vec<&str> = items.iter().map(String::as_str).collect();
        let audit = sequence % 25 == 3;
        let attributes: &[(&str, &str)] = if audit { &[("mode", "AUD")] } else { &[] };
        let answer = meter.authorize(&id, &tenant, operation, &items, attributes);
        recorded.authorizes.push((now(meter), tenant.clone()));
        if answer.admitted && operation == "funding.enrich" {
            *recorded.funding_held.entry(tenant.clone()).or_default() += total(&answer.held);
        }
        if !answer.admitted || sequence % 50 == 11 {
            continue;
        }
        let delivered = traffic.below(count as u64 + 1).to_string();
        let status = if sequence % 17 == 5 { 404 } else { 200 };
        meter.settle(&id, status, &[("records", &delivered)]);
    }
    recorded
}

fn try_replay(
    location: &StoreLocation,
    candidate: &str,
    configure: impl FnOnce(&mut ReplayConfig),
) -> Result<ReplayReport, MeterError> {
    let mut config = ReplayConfig::new(location.clone());
    configure(&mut config);
    replay::replay(&config, &component(candidate), &mut |_| {})
}

fn replay_of(
    location: &StoreLocation,
    candidate: &str,
    configure: impl FnOnce(&mut ReplayConfig),
) -> ReplayReport {
    try_replay(location, candidate, configure).unwrap()
}

fn postgres_url(location: &StoreLocation) -> &str {
    match location {
        StoreLocation::Postgres(url) => url,
        other => panic!("a PostgreSQL ledger, not {other:?}"),
    }
}

fn connect(location: &StoreLocation) -> postgres::Client {
    postgres::Client::connect(postgres_url(location), postgres::NoTls).unwrap()
}

fn sqlite_path(location: &StoreLocation) -> std::path::PathBuf {
    match location {
        StoreLocation::Sqlite(path) => path.clone(),
        other => panic!("a SQLite ledger, not {other:?}"),
    }
}

fn total(amounts: &Amounts) -> i64 {
    amounts.values().sum()
}

crate::on_both_stores! {
/// The README's "done when": the replay of a ledger under `pricier_funding` reports what
/// shadow mode reported on the same traffic, as it flowed.
fn a_replay_under_pricier_funding_reports_what_shadow_mode_saw_on_the_same_traffic(store) {
    let meter = TestMeter::on(store, "smarte");
    meter
        .meter
        .set_shadow(component("pricier_funding"))
        .unwrap();
    let recorded_traffic = write_traffic(&meter, 20, 1_500);
    let shadow: ShadowReport = meter.meter.shadow_report().unwrap();
    let path = meter.location().clone();
    let report = replay_of(&path, "pricier_funding", |_| {});
    assert_eq!(report.log_first_at_ms, Some(START_MS));

    assert_eq!(report.candidate.version, "1.1.0-funding");
    assert_eq!(report.notes.refusals_without_request, 0);
    assert_eq!(report.notes.settles_without_outcome, 0);
    assert_eq!(report.notes.candidate_failures, 0);
    assert_eq!(report.notes.operator_refused, 0, "{:?}", report.notes);
    assert!(report.notes.operator_decisions >= 22, "{:?}", report.notes);
    assert!(report.notes.recorded_expiries > 0);
    assert_eq!(
        report.notes.recorded_expiries,
        report.notes.candidate_expiries
    );
    // Every authorize shadow mode compared, replay decided again.
    assert_eq!(
        report.shadow_view.authorizes_compared,
        shadow.authorizes_compared
    );
    assert_eq!(report.transactions, shadow.authorizes_compared);
    // The one flipped admission was never settled by the candidate (shadow mode settles
    // it on the active policy's admission: a 404, charged nothing either way).
    assert_eq!(report.notes.settles_of_refused, 1);
    assert_eq!(
        report.shadow_view.settles_compared + report.notes.settles_of_refused,
        shadow.settles_compared
    );
    // The same differences, of the same kinds, and the same deltas.
    assert_eq!(report.shadow_view.by_kind, shadow.by_kind);
    assert_eq!(shadow.by_kind.get("admit_vs_reject"), Some(&1));
    assert_eq!(
        report.shadow_view.authorize_charge_delta,
        shadow.authorize_charge_delta
    );
    assert_eq!(
        report.shadow_view.settle_charge_delta,
        shadow.settle_charge_delta
    );
    let shadow_by_tenant: BTreeMap<String, Amounts> = shadow
        .by_tenant
        .iter()
        .map(|(tenant, differences)| (tenant.clone(), differences.charge_delta.clone()))
        .collect();
    assert_eq!(report.shadow_view.by_tenant, shadow_by_tenant);
    // Credits charged: the candidate charged what the recorded policy did plus shadow's
    // settle delta (neither charges at authorize), in all and per tenant.
    let (recorded, candidate) = report.totals.charged();
    assert!(recorded > 0);
    assert_eq!(candidate - recorded, total(&shadow.settle_charge_delta));
    assert!(candidate > recorded);
    // Per tenant: shadow's delta less what it counts at authorize (credits held, which
    // a funding twice as dear doubles) is what the candidate charged more.
    for (tenant, figures) in report
        .by_tenant
        .iter()
        .filter(|(tenant, _)| *tenant != "tight")
    {
        let (recorded, candidate) = figures.charged();
        let shadow_delta = shadow_by_tenant.get(tenant).map_or(0, total);
        let held_more = recorded_traffic
            .funding_held
            .get(tenant)
            .copied()
            .unwrap_or(0);
        assert_eq!(shadow_delta - held_more, candidate - recorded, "{tenant}");
    }
    assert_eq!(report.by_tenant["tight"].charged(), (0, 0));
    // Flips: the tight tenant's funding enrichment, and nothing else.
    assert_eq!(
        (
            report.totals.admitted_to_refused,
            report.totals.refused_to_admitted
        ),
        (1, 0)
    );
    assert_eq!(
        report.by_tenant["tight"].examples.admitted_to_refused,
        ["tight-1"]
    );
    assert_eq!(report.totals.partial_changed, 0);
    // Only funding is priced differently.
    for (operation, figures) in &report.by_operation {
        let (recorded, candidate) = figures.charged();
        if operation == "funding.enrich" {
            assert_eq!(candidate, 2 * recorded);
        } else {
            assert_eq!(candidate, recorded, "{operation}");
            assert_eq!(figures.charge_changed, 0, "{operation}");
        }
    }
    // Days: the traffic ran over four UTC days; each day's charges add up to the totals.
    assert!(report.daily.len() >= 3, "{:?}", report.daily);
    let daily: (i64, i64) = report.daily.values().fold((0, 0), |sum, day| {
        (sum.0 + day.recorded_charged, sum.1 + day.candidate_charged)
    });
    assert_eq!(daily, (recorded, candidate));
    // One thread or two (each a share of the tenants): the same figures.
    let single = replay_of(&path, "pricier_funding", |config| config.threads = 1);
    assert_eq!(single.by_tenant, report.by_tenant);
    assert_eq!(single.shadow_view, report.shadow_view);
    assert_eq!(single.daily, report.daily);
    assert_eq!(single.notes, report.notes);
    assert_eq!(single.totals.charged(), report.totals.charged());
    assert_eq!(single.transactions, report.transactions);
    // Under the policy that recorded it, the same traffic replays to no difference.
    let same = replay_of(&path, "smarte", |_| {});
    assert_eq!(same.totals.charged().0, same.totals.charged().1);
    assert!(
        same.shadow_view.by_kind.is_empty(),
        "{:?}",
        same.shadow_view
    );
    assert_eq!(same.totals.charge_changed, 0);
}
}

fn ledger_files(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            (
                entry.file_name().to_string_lossy().into_owned(),
                (crc32fast::hash(&bytes), bytes),
            )
        })
        .collect()
}

/// Every table of the PostgreSQL ledger's schema, by name: its row count and an md5 of
/// its rows (in a stable order); every sequence, by name: where it stands.
fn schema_dump(location: &StoreLocation) -> BTreeMap<String, String> {
    let mut client = connect(location);
    let relations = client
        .query(
            "SELECT c.relname::text, c.relkind::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'S') ORDER BY 1",
            &[],
        )
        .unwrap();
    relations
        .iter()
        .map(|relation| {
            let (name, kind): (String, String) = (relation.get(0), relation.get(1));
            let sql = if kind == "S" {
                format!("SELECT last_value::text || ' ' || is_called::text FROM \"{name}\"")
            } else {
                format!(
                    "SELECT count(*)::text || ' ' || COALESCE(md5(string_agg(t::text, E'\\n' \
                     ORDER BY t::text)), '') FROM \"{name}\" t"
                )
            };
            (
                name,
                client.query_one(&sql, &[]).unwrap().get::<_, String>(0),
            )
        })
        .collect()
}

crate::on_both_stores! {
/// P4: a replay reads the ledger and writes nothing. On SQLite every file beside it has
/// the same checksum and bytes after the command as before, and no file appeared or
/// went; on PostgreSQL every table of its schema has the same rows and every sequence
/// stands where it stood.
fn a_replay_leaves_every_byte_of_the_ledger_as_it_was(store) {
    let meter = TestMeter::on(store, "smarte");
    write_traffic(&meter, 5, 200);
    let location = meter.location().clone();
    let out = tempfile::tempdir().unwrap();
    drop(meter.meter);
    let dump = || match &location {
        StoreLocation::Sqlite(_) => {
            let dir = sqlite_path(&location).parent().unwrap().to_path_buf();
            ledger_files(&dir)
                .into_iter()
                .map(|(name, (checksum, bytes))| (name, format!("{checksum:08x} {bytes:?}")))
                .collect::<BTreeMap<_, _>>()
        }
        StoreLocation::Postgres(_) => schema_dump(&location),
    };
    let before = dump();
    assert!(before.len() >= 2, "{:?}", before.keys());
    if let StoreLocation::Postgres(_) = &location {
        // The log holds every batch (a few hundred).
        let logged: u64 = before["log"].split(' ').next().unwrap().parse().unwrap();
        assert!(logged > 200, "{}", before["log"]);
    }
    let db = match &location {
        StoreLocation::Sqlite(path) => path.clone().into_os_string(),
        StoreLocation::Postgres(url) => url.into(),
    };
    let output = Command::new(BINARY)
        .arg("replay")
        .arg("--candidate")
        .arg(component_path("pricier_funding"))
        .arg("--db")
        .arg(&db)
        .arg("--report")
        .arg(out.path().join("report.html"))
        .arg("--json")
        .arg(out.path().join("report.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let after = dump();
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (name, was) in &before {
        assert!(after[name] == *was, "{name} changed");
    }
    // What it printed and wrote: the rate, one HTML file with its two charts inline, and
    // the figures as JSON.
    assert!(stdout.contains("transactions/s"), "{stdout}");
    assert!(stdout.contains("funding.enrich"), "{stdout}");
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 2);
    assert!(html.contains("per tenant: candidate minus recorded"));
    assert!(!html.contains("src=\"http"), "self-contained");
    let json: ReplayReport =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    assert!(json.transactions > 150);
    assert!(json.totals.charged().1 > json.totals.charged().0);
    // A ledger that is not there is an error, and none is made.
    let (missing, exists): (std::ffi::OsString, Box<dyn Fn() -> bool>) = match &location {
        StoreLocation::Sqlite(path) => {
            let missing = path.parent().unwrap().join("missing.db");
            (missing.clone().into_os_string(), Box::new(move || missing.exists()))
        }
        StoreLocation::Postgres(url) => {
            let schema = format!("creditgate_missing_{}", crate::support::uuid().replace('-', ""));
            let (base, _) = url.split_once("search_path%3D").unwrap();
            let missing = format!("{base}search_path%3D{schema}");
            let location = location.clone();
            (
                missing.into(),
                Box::new(move || {
                    connect(&location)
                        .query_one("SELECT to_regnamespace($1::text) IS NOT NULL", &[&schema])
                        .unwrap()
                        .get(0)
                }),
            )
        }
    };
    let output = Command::new(BINARY)
        .args(["replay", "--candidate"])
        .arg(component_path("smarte"))
        .arg("--db")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no ledger"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!exists());
}
}

crate::on_both_stores! {
/// `--tenant` and `--from`/`--to` select what they say: only those tenants' authorizes
/// recorded in the window are decided again, and the balances they start from are those
/// the window began with (a replay under the recorded policy finds no difference).
fn a_tenant_filter_and_a_window_select_what_they_say(store) {
    let meter = TestMeter::on(store, "smarte");
    let recorded = write_traffic(&meter, 8, 1_200);
    let path = meter.location().clone();
    let from = START_MS + DAY_MS / 2;
    let to = from + DAY_MS;
    let tenants: BTreeSet<String> = ["tenant-1".to_owned(), "tenant-6".to_owned()].into();
    let report = replay_of(&path, "pricier_funding", |config| {
        config.from_ms = Some(from);
        config.to_ms = Some(to);
        config.tenants = tenants.clone();
    });
    let expected = recorded
        .authorizes
        .iter()
        .filter(|(at, tenant)| (from..to).contains(at) && tenants.contains(tenant))
        .count() as u64;
    assert!(expected > 50, "{expected}");
    assert_eq!(report.transactions, expected);
    assert_eq!(
        report.by_tenant.keys().cloned().collect::<BTreeSet<_>>(),
        tenants
    );
    assert!(report.batches_before > 0);
    let (first, last) = (report.first_at_ms.unwrap(), report.last_at_ms.unwrap());
    assert!(from <= first && last < to, "{first} {last}");
    for day in report.daily.keys() {
        let days: BTreeSet<String> = [replay::day_of(from), replay::day_of(to - 1)].into();
        assert!(days.contains(day), "{day}");
    }
    // The scratch balances at the window's start are those recorded: the recorded
    // policy, replayed on them, decides every transaction of the window alike.
    let same = replay_of(&path, "smarte", |config| {
        config.from_ms = Some(from);
        config.to_ms = Some(to);
    });
    assert!(same.transactions > expected);
    assert!(same.shadow_view.by_kind.is_empty(), "{:?}", same.examples);
    assert_eq!(same.totals.charged().0, same.totals.charged().1);
    assert_eq!(same.notes.recorded_expiries, same.notes.candidate_expiries);
}
}

/// Two replicas on one PostgreSQL ledger, deciding the same few tenants at once, each
/// tenant's credits running out on the way: the log holds each tenant's batches in the
/// order they committed (a batch draws its seq last, under its tenants' locks), so a
/// replay under the recorded policy decides every transaction as recorded, on one
/// thread or two.
#[test]
fn replicas_writing_the_same_tenants_at_once_replay_to_no_difference() {
    let first = TestMeter::on(&postgres_store(), "smarte");
    let clock: ManualClock = first.clock.clone();
    let mut config = MeterConfig::new(first.location().clone());
    config.clock = std::sync::Arc::new(clock.clone());
    config.limits = deterministic_limits();
    config.sweep_interval_ms = 0;
    let second =
        Meter::open(config, PolicySource::Component(component("smarte"))).expect("a replica");
    let tenants = 4;
    for tenant in 0..tenants {
        first.grant(&format!("tenant-{tenant}"), "default", 40);
    }
    let per_replica = 150;
    let admitted = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for replica in 0..2u64 {
            let (first, second, clock, admitted) = (&first, &second, &clock, &admitted);
            scope.spawn(move || {
                let mut traffic = Traffic(0x9e37_79b9_7f4a_7c15 ^ (replica + 1));
                for sequence in 0..per_replica {
                    clock.advance_ms(1_000);
                    let tenant = format!("tenant-{}", traffic.below(tenants));
                    let id = format!("r{replica}-{sequence}");
                    let items: Vec<String> = (0..1 + traffic.below(3))
                        .map(|item| format!("{id}-{item}"))
                        .collect();
                    let request = creditgate::model::AuthorizeRequest {
                        transaction_id: Some(id.clone()),
                        tenant,
                        operation: OPERATIONS[traffic.below(5) as usize].to_owned(),
                        items,
                        attributes: Default::default(),
                        body: None,
                    };
                    let meter = if replica == 0 { &first.meter } else { second };
                    let answer = meter.authorize(request).unwrap();
                    if !answer.admitted {
                        continue;
                    }
                    admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if sequence % 7 != 3 {
                        meter
                            .settle(creditgate::model::SettleRequest {
                                transaction_id: id,
                                status: 200,
                                attributes: [("records".to_owned(), "1".to_owned())].into(),
                                body: None,
                            })
                            .unwrap();
                    }
                }
            });
        }
    });
    let admitted = admitted.into_inner();
    // The credits ran out: refusals were recorded, and depend on the order.
    assert!(admitted > 20 && admitted < 2 * per_replica, "{admitted}");
    drop(second);
    for threads in [1, 2] {
        let same = replay_of(first.location(), "smarte", |config| {
            config.threads = threads
        });
        assert_eq!(same.transactions, 2 * per_replica, "{threads} threads");
        assert_eq!(same.totals.recorded_admitted, admitted);
        assert_eq!(same.totals.candidate_admitted, admitted);
        assert!(same.shadow_view.by_kind.is_empty(), "{:?}", same.examples);
        assert_eq!(same.totals.charge_changed, 0, "{:?}", same.examples);
        assert_eq!(same.totals.charged().0, same.totals.charged().1);
        assert!(same.totals.charged().0 > 0);
        assert_eq!(same.notes.candidate_failures, 0, "{:?}", same.notes);
        assert_eq!(same.notes.settles_of_refused, 0, "{:?}", same.notes);
    }
}

/// A PostgreSQL ledger migrated to the log with rows already written: the log holds
/// nothing of those tenants before it began, so a replay that would need them refuses,
/// naming when the log began and the tenants; other tenants replay.
#[test]
fn tenants_with_history_before_the_postgres_log_began_are_refused_not_zeroed() {
    let meter = TestMeter::on(&postgres_store(), "smarte");
    write_traffic(&meter, 4, 200);
    let location = meter.location().clone();
    // As the log's migration leaves a ledger that had rows: their tenants, and when.
    let began_at_ms = START_MS + DAY_MS;
    connect(&location)
        .batch_execute(&format!(
            "INSERT INTO log_unlogged VALUES ('tenant-1'), ('tenant-3'); \
             UPDATE log_start SET began_at_ms = {began_at_ms}"
        ))
        .unwrap();
    let began = replay::time_text(began_at_ms);
    for tenants in [vec![], vec!["tenant-1", "tenant-2"]] {
        let error = try_replay(&location, "smarte", |config| {
            config.tenants = tenants.iter().map(|tenant| (*tenant).to_owned()).collect();
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains(&began), "{error}");
        assert!(error.contains("tenant-1"), "{error}");
        assert!(!error.contains("tenant-2"), "{error}");
    }
    let report = replay_of(&location, "smarte", |config| {
        config.tenants = ["tenant-2".to_owned()].into();
    });
    assert!(report.transactions > 20, "{}", report.transactions);
    assert!(report.shadow_view.by_kind.is_empty());
}
