//! `creditgate replay`: a ledger's recorded traffic decided again under a candidate,
//! compared with shadow mode on the same traffic, and never a byte written to the
//! ledger.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use creditgate::clock::Clock;
use creditgate::meter::replay::{self, ReplayConfig, ReplayReport};
use creditgate::model::{Amounts, GrantRequest, ShadowReport};

use crate::support::{BINARY, Gate, START_MS, TestMeter, component, component_path};

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

fn replay_of(
    location: &Path,
    candidate: &str,
    configure: impl FnOnce(&mut ReplayConfig),
) -> ReplayReport {
    let mut config = ReplayConfig::new(location);
    configure(&mut config);
    replay::replay(&config, &component(candidate), &mut |_| {}).unwrap()
}

fn sqlite_path(meter: &TestMeter) -> std::path::PathBuf {
    match meter.location() {
        creditgate::store::StoreLocation::Sqlite(path) => path.clone(),
        other => panic!("a SQLite ledger, not {other:?}"),
    }
}

fn total(amounts: &Amounts) -> i64 {
    amounts.values().sum()
}

/// The README's "done when": the replay of a ledger under `pricier_funding` reports what
/// shadow mode reported on the same traffic, as it flowed.
#[test]
fn a_replay_under_pricier_funding_reports_what_shadow_mode_saw_on_the_same_traffic() {
    let meter = TestMeter::new("smarte");
    meter
        .meter
        .set_shadow(component("pricier_funding"))
        .unwrap();
    let recorded_traffic = write_traffic(&meter, 20, 1_500);
    let shadow: ShadowReport = meter.meter.shadow_report().unwrap();
    let path = sqlite_path(&meter);
    let report = replay_of(&path, "pricier_funding", |_| {});

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

/// P4: a replay reads the ledger and writes nothing: every file beside it has the same
/// checksum and bytes after the command as before, and no file appeared or went.
#[test]
fn a_replay_leaves_every_byte_of_the_ledger_as_it_was() {
    let meter = TestMeter::new("smarte");
    write_traffic(&meter, 5, 200);
    let path = sqlite_path(&meter);
    let dir = path.parent().unwrap().to_path_buf();
    let out = tempfile::tempdir().unwrap();
    drop(meter.meter);
    let before = ledger_files(&dir);
    assert!(before.len() >= 2, "{:?}", before.keys());
    let output = Command::new(BINARY)
        .arg("replay")
        .arg("--candidate")
        .arg(component_path("pricier_funding"))
        .arg("--db")
        .arg(&path)
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
    let after = ledger_files(&dir);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (name, (checksum, bytes)) in &before {
        assert_eq!(after[name].0, *checksum, "{name} changed");
        assert!(after[name].1 == *bytes, "{name} changed");
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
    let missing = dir.join("missing.db");
    let output = Command::new(BINARY)
        .args(["replay", "--candidate"])
        .arg(component_path("smarte"))
        .arg("--db")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(!missing.exists());
}

/// `--tenant` and `--from`/`--to` select what they say: only those tenants' authorizes
/// recorded in the window are decided again, and the balances they start from are those
/// the window began with (a replay under the recorded policy finds no difference).
#[test]
fn a_tenant_filter_and_a_window_select_what_they_say() {
    let meter = TestMeter::new("smarte");
    let recorded = write_traffic(&meter, 8, 1_200);
    let path = sqlite_path(&meter);
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

/// The replay's speed on a ledger shaped as the bench's SMARTe ledger (1,000 tenants,
/// 1 to 3 records a call on SMARTe's operations, each settled 200 with every record
/// delivered), written by 32 clients through a meter, its clock spread over five days.
/// `CREDITGATE_REPLAY_TRANSACTIONS` sets the size (100,000), `CREDITGATE_REPLAY_KEEP`
/// a directory to copy the ledger to (for `creditgate replay` by hand). Prints the rate.
#[test]
#[ignore = "a measurement: run with --ignored"]
fn replay_speed_on_a_bench_like_ledger() {
    let transactions: usize = std::env::var("CREDITGATE_REPLAY_TRANSACTIONS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(100_000);
    let meter = TestMeter::new("smarte");
    let tenants = 1_000;
    for tenant in 0..tenants {
        meter.grant(&format!("tenant-{tenant}"), "default", 1_000_000_000);
    }
    let clients = 32;
    let step_ms = 5 * DAY_MS / transactions as u64;
    let written = std::time::Instant::now();
    std::thread::scope(|scope| {
        for client in 0..clients {
            let meter = &meter;
            scope.spawn(move || {
                let mut traffic = Traffic(0x9e37_79b9_7f4a_7c15 ^ ((client as u64 + 1) << 20));
                for sequence in (client..transactions).step_by(clients) {
                    meter.clock.advance_ms(step_ms);
                    let tenant = format!("tenant-{}", traffic.below(tenants as u64));
                    let operation = OPERATIONS[traffic.below(6) as usize];
                    let count = 1 + traffic.below(3) as usize;
                    let items: Vec<String> = (0..count)
                        .map(|item| format!("record-{sequence}-{item}"))
                        .collect();
                    let items: Vec<&str> = items.iter().map(String::as_str).collect();
                    let id = format!("c{client}-{sequence}");
                    assert!(
                        meter
                            .authorize(&id, &tenant, operation, &items, &[])
                            .admitted
                    );
                    // A client the scheduler left waiting while the others moved the
                    // clock on may find its hold lapsed (5 minutes): as in real traffic.
                    let _ = meter.try_settle(&id, 200, &[("records", &count.to_string())]);
                }
            });
        }
    });
    println!(
        "wrote {transactions} transactions in {} ms",
        written.elapsed().as_millis()
    );
    let path = sqlite_path(&meter);
    drop(meter.meter);
    if let Some(keep) = std::env::var_os("CREDITGATE_REPLAY_KEEP") {
        let keep = Path::new(&keep);
        std::fs::create_dir_all(keep).unwrap();
        for entry in std::fs::read_dir(path.parent().unwrap()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), keep.join(entry.file_name())).unwrap();
            }
        }
        println!("kept in {}", keep.display());
    }
    for candidate in ["smarte", "pricier_funding"] {
        let report = replay_of(&path, candidate, |_| {});
        assert_eq!(report.transactions, transactions as u64);
        let (recorded, charged) = report.totals.charged();
        println!(
            "replay under {candidate}: {} transactions in {} ms: {:.0} transactions/s \
             (balances at the start: {} ms); credits {recorded} -> {charged}",
            report.transactions, report.replay_ms, report.transactions_per_second, report.prefix_ms
        );
    }
}
