//! `creditgate gallery`: the hostile gallery against this build. A policy that attacks
//! the host (`tests/fixtures/hostile`) is active; for each attack, attacker threads send
//! it for a tenant of their own while bystander threads keep sending well-behaved
//! requests for other tenants, and the table says what the attacker got, what the
//! bystanders kept of their throughput and p99 (against a run with no attacker), and the
//! process's peak RSS. Then it checks that no attacker moved a credit and that every
//! journal sums to its balances.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use creditgate::model::{AuthorizeRequest, GrantRequest, SettleRequest};
use creditgate::store::StoreLocation;
use creditgate::{Meter, MeterConfig, PolicySource};

use super::bench::stats::{Percentiles, peak_rss_bytes, reset_peak_rss};
use super::limits::PolicyLimitArgs;

/// The attacks, as operations of the hostile fixture.
const CASES: &[&str] = &[
    "burn-fuel",
    "mark-keys-flood",
    "mark-lookups-flood",
    "headers-aliased",
    "meta-5mb",
    "headers-1m",
    "meta-10mb",
    "recurse",
    "alloc-1gib",
    "amount-i64-min",
    "amount-overflow",
    "overadmit",
    "wasi-random",
    "wasi-file",
];
/// Credits each tenant starts with: bystanders spend one a transaction.
const GRANT: i64 = 1 << 40;
/// The targets of issue 12 for a tenant whose every call burns its budget.
const THROUGHPUT_RATIO_MIN: f64 = 0.8;
const P99_RISE_US_MAX: u64 = 2_000;

#[derive(Args)]
pub struct GalleryArgs {
    /// The hostile policy component.
    #[arg(long, default_value = "target/wasm32-wasip2/release/hostile.wasm")]
    policy: PathBuf,
    /// How long each case runs.
    #[arg(long, default_value_t = 2_000)]
    duration_ms: u64,
    /// Threads sending well-behaved requests, each for a tenant of its own.
    #[arg(long, default_value_t = 4)]
    bystanders: usize,
    /// Threads sending the attack.
    #[arg(long, default_value_t = 2)]
    attackers: usize,
    /// Only these cases (comma-separated operations of the hostile policy).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    #[command(flatten)]
    limits: PolicyLimitArgs,
}

/// What one side of a run saw.
#[derive(Default)]
struct Seen {
    latencies_us: Vec<u64>,
    transactions: u64,
    codes: BTreeMap<String, u64>,
}

impl Seen {
    fn merge(&mut self, other: Seen) {
        self.latencies_us.extend(other.latencies_us);
        self.transactions += other.transactions;
        for (code, count) in other.codes {
            *self.codes.entry(code).or_insert(0) += count;
        }
    }
}

struct Outcome {
    bystanders: Seen,
    attacker: Seen,
    elapsed: Duration,
    peak_rss_bytes: Option<u64>,
}

impl Outcome {
    fn throughput(&self) -> f64 {
        self.bystanders.transactions as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    fn p99_us(&mut self) -> u64 {
        self.bystanders.latencies_us.sort_unstable();
        Percentiles::of(&self.bystanders.latencies_us).p99
    }
}

pub fn run(args: GalleryArgs) -> anyhow::Result<()> {
    let component = super::read_policy(&args.policy)?;
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let mut config = MeterConfig::new(StoreLocation::Sqlite(dir.path().join("gallery.db")));
    config.limits = args.limits.limits();
    let meter = Arc::new(
        Meter::open(config, PolicySource::Component(component))
            .context("cannot start a meter with the hostile policy")?,
    );
    let cases: Vec<&str> = if args.cases.is_empty() {
        CASES.to_vec()
    } else {
        args.cases.iter().map(String::as_str).collect()
    };
    let mut tenants: Vec<String> = (0..args.bystanders)
        .map(|index| format!("bystander-{index}"))
        .collect();
    tenants.extend(cases.iter().map(|case| attacker_tenant(case)));
    for tenant in &tenants {
        meter.grant(GrantRequest {
            grant_id: format!("gallery-{tenant}"),
            tenant: tenant.clone(),
            balance: "default".to_owned(),
            amount: GRANT,
        })?;
    }
    let duration = Duration::from_millis(args.duration_ms);
    println!(
        "hostile gallery: policy {}, {} bystander and {} attacker threads, {} ms a case; \
         bystanders' throughput and p99 against a run with no attacker",
        args.policy.display(),
        args.bystanders,
        args.attackers,
        args.duration_ms
    );
    println!(
        "{:<20} {:>9} {:>10} {:>8} {:>10}  attacker got",
        "case", "txn/s", "of alone", "p99 ms", "peak RSS"
    );
    // A first run warms the meter (instances, caches, the ledger's pages) and is not shown.
    run_case(&meter, None, args.bystanders, args.attackers, duration);
    let mut alone = run_case(&meter, None, args.bystanders, args.attackers, duration);
    let alone_throughput = alone.throughput();
    let alone_p99 = alone.p99_us();
    print_row("(no attacker)", &mut alone, alone_throughput);
    let mut lowest_ratio: Option<(&str, f64)> = None;
    let mut highest_rise: Option<(&str, u64)> = None;
    for case in &cases {
        let mut outcome = run_case(
            &meter,
            Some(case),
            args.bystanders,
            args.attackers,
            duration,
        );
        let ratio = outcome.throughput() / alone_throughput.max(f64::EPSILON);
        let rise = outcome.p99_us().saturating_sub(alone_p99);
        print_row(case, &mut outcome, alone_throughput);
        if lowest_ratio.is_none_or(|(_, lowest)| ratio < lowest) {
            lowest_ratio = Some((case, ratio));
        }
        if highest_rise.is_none_or(|(_, highest)| rise > highest) {
            highest_rise = Some((case, rise));
        }
    }
    if let (Some((ratio_case, ratio)), Some((rise_case, rise))) = (lowest_ratio, highest_rise) {
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        println!(
            "bystanders' lowest throughput: {ratio:.2} of alone ({ratio_case}; target at least \
             {THROUGHPUT_RATIO_MIN}: {}); highest p99 rise: +{:.1} ms ({rise_case}; target at \
             most +{} ms: {})",
            verdict(ratio >= THROUGHPUT_RATIO_MIN),
            rise as f64 / 1_000.0,
            P99_RISE_US_MAX / 1_000,
            verdict(rise <= P99_RISE_US_MAX),
        );
    }
    check_nothing_moved(&meter, &cases)
}

fn attacker_tenant(case: &str) -> String {
    format!("attacker-{case}")
}

/// Runs the bystanders, and the attack when there is one, for `duration`.
fn run_case(
    meter: &Arc<Meter>,
    case: Option<&str>,
    bystanders: usize,
    attackers: usize,
    duration: Duration,
) -> Outcome {
    reset_peak_rss();
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |tenant: String, operation: String, settle: bool, tag: String| {
        let meter = Arc::clone(meter);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || drive(&meter, &stop, &tenant, &operation, settle, &tag))
    };
    let started = Instant::now();
    let bystander_threads: Vec<_> = (0..bystanders)
        .map(|index| {
            let tag = format!("{}-{index}", case.unwrap_or("alone"));
            spawn(format!("bystander-{index}"), "flat".to_owned(), true, tag)
        })
        .collect();
    let attacker_threads: Vec<_> = case
        .map(|case| {
            (0..attackers)
                .map(|index| {
                    spawn(
                        attacker_tenant(case),
                        case.to_owned(),
                        false,
                        format!("{case}-attack-{index}"),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut outcome = Outcome {
        bystanders: Seen::default(),
        attacker: Seen::default(),
        elapsed: started.elapsed(),
        peak_rss_bytes: None,
    };
    for thread in bystander_threads {
        outcome.bystanders.merge(thread.join().unwrap_or_default());
    }
    for thread in attacker_threads {
        outcome.attacker.merge(thread.join().unwrap_or_default());
    }
    outcome.peak_rss_bytes = peak_rss_bytes();
    outcome
}

/// One thread's loop: authorize (and settle what was admitted) until told to stop.
fn drive(
    meter: &Meter,
    stop: &AtomicBool,
    tenant: &str,
    operation: &str,
    settle: bool,
    tag: &str,
) -> Seen {
    let mut seen = Seen::default();
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let id = format!("{tag}-{sequence}");
        let started = Instant::now();
        let answer = meter.authorize(AuthorizeRequest {
            transaction_id: Some(id.clone()),
            tenant: tenant.to_owned(),
            operation: operation.to_owned(),
            items: vec!["item".to_owned()],
            attributes: BTreeMap::new(),
            body: None,
        });
        seen.latencies_us
            .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        let code = match answer {
            Ok(answer) if answer.admitted => {
                if settle {
                    let settled = meter.settle(SettleRequest {
                        transaction_id: id,
                        status: 200,
                        attributes: BTreeMap::new(),
                        body: None,
                    });
                    if settled.is_ok() {
                        seen.transactions += 1;
                    }
                }
                "admitted".to_owned()
            }
            Ok(answer) => answer
                .error
                .map_or_else(|| "refused".to_owned(), |error| error.code),
            Err(error) => error.code().to_owned(),
        };
        *seen.codes.entry(code).or_insert(0) += 1;
    }
    seen
}

fn print_row(case: &str, outcome: &mut Outcome, alone_throughput: f64) {
    let throughput = outcome.throughput();
    let p99_ms = outcome.p99_us() as f64 / 1_000.0;
    let rss = outcome
        .peak_rss_bytes
        .map_or_else(|| "-".to_owned(), |bytes| format!("{} MiB", bytes >> 20));
    let codes: Vec<String> = outcome
        .attacker
        .codes
        .iter()
        .map(|(code, count)| format!("{code} ×{count}"))
        .collect();
    println!(
        "{case:<20} {throughput:>9.0} {:>10.2} {p99_ms:>8.1} {rss:>10}  {}",
        throughput / alone_throughput.max(f64::EPSILON),
        if codes.is_empty() {
            "-".to_owned()
        } else {
            codes.join(", ")
        }
    );
}

/// No attack moved a credit, and every journal sums to its balances.
fn check_nothing_moved(meter: &Meter, cases: &[&str]) -> anyhow::Result<()> {
    for case in cases {
        let balances = meter.balances(&attacker_tenant(case))?;
        let available = balances.balances.get("default").copied().unwrap_or(0);
        let held = balances.held.get("default").copied().unwrap_or(0);
        anyhow::ensure!(
            available == GRANT && held == 0,
            "the attack {case} moved credits: {available} available, {held} held of {GRANT}"
        );
    }
    let violations = meter.invariant_violations()?;
    anyhow::ensure!(
        violations.is_empty(),
        "ledger invariants broke: {violations:?}"
    );
    println!(
        "no attack moved a credit; every journal sums to its balances ({} attack cases)",
        cases.len()
    );
    Ok(())
}
