//! The "replay speed" table: `creditgate replay`'s engine ([`replay::replay`]) on a
//! SQLite ledger shaped as the bench's SMARTe ledger, under `pricier_funding.wasm`, with
//! one thread and with two, alternated. The target is the issue's: 50,000 transactions
//! a second for the Rust modules.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

use creditgate::clock::ManualClock;
use creditgate::meter::replay::{self, ReplayConfig};
use creditgate::model::{AuthorizeRequest, GrantRequest, SettleRequest};
use creditgate::policy::component::{self, CompiledPolicy, Limits};
use creditgate::{Meter, MeterConfig, PolicySource};

use super::workload::tenant_name;

/// The target: replayed transactions a second, Rust modules.
pub const TARGET_TXN_PER_S: f64 = 50_000.0;
/// The thread counts replayed, side by side: one, and `creditgate replay`'s default.
pub const THREADS: [usize; 2] = [1, 2];
const TENANTS: usize = 1_000;
/// Clients writing the ledger through a meter at once (so that batches hold several).
const CLIENTS: usize = 32;
/// The ledger's clock moves this much a transaction: 100,000 transactions span five
/// days, as in the bench-like ledger of the README; fewer span less, so that holds lapse
/// (5 minutes) no more often while 32 clients move the clock.
const STEP_MS: u64 = 5 * 86_400_000 / 100_000;
/// Where the ledger's clock starts: 2026-11-01, 00:00 UTC.
const START_MS: u64 = 1_793_491_200_000;

/// How the table is shaped.
pub struct Plan {
    pub smarte: PathBuf,
    pub candidate: PathBuf,
    pub transactions: usize,
    /// Replays per thread count.
    pub repetitions: usize,
    pub limits: Limits,
    /// A directory to copy the ledger into, once written.
    pub keep: Option<PathBuf>,
}

/// The table's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ReplaySpeed {
    pub ledger_tenants: usize,
    pub ledger_transactions: usize,
    /// How long the meter took to write the ledger (32 clients).
    pub written_ms: f64,
    /// The ledger clock's span, from the first transaction to the last.
    pub span_ms: u64,
    /// Settles refused while writing (a hold that lapsed while other clients moved the
    /// clock on).
    pub settles_refused: u64,
    pub candidate: String,
    pub lines: Vec<ReplayLine>,
}

/// One thread count: medians of its repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayLine {
    pub threads: usize,
    pub txn_per_s: f64,
    pub repetitions_txn_per_s: Vec<f64>,
    /// Until the period starts (no period given: opening, the candidate from its cache,
    /// reading the log's first record).
    pub prefix_ms: u64,
    pub replay_ms: u64,
    pub recorded_credits: i64,
    pub candidate_credits: i64,
}

impl ReplaySpeed {
    /// The line of `threads`, if it ran.
    pub fn rate(&self, threads: usize) -> Option<f64> {
        self.lines
            .iter()
            .find(|line| line.threads == threads)
            .map(|line| line.txn_per_s)
    }
}

pub fn measure(plan: &Plan, dir: &Path) -> anyhow::Result<ReplaySpeed> {
    let scratch = tempfile::Builder::new()
        .prefix("creditgate-bench-")
        .tempdir_in(dir)?;
    let ledger = scratch.path().join("replay.db");
    let written = Instant::now();
    let settles_refused = write_ledger(plan, &ledger, scratch.path())?;
    let written_ms = written.elapsed().as_secs_f64() * 1e3;
    if let Some(keep) = &plan.keep {
        std::fs::create_dir_all(keep)?;
        for entry in std::fs::read_dir(scratch.path())? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), keep.join(entry.file_name()))?;
            }
        }
        println!(
            "{}: the ledger is kept in {}",
            super::REPLAY,
            keep.join("replay.db").display()
        );
    }

    let candidate = super::read_module(&plan.candidate, false)?;
    // The candidate compiled once, into the cache every replay loads it from: no
    // replay's prefix counts a compile.
    let cache = scratch.path().join("cache");
    drop(CompiledPolicy::load(
        &component::engine()?,
        &candidate,
        plan.limits,
        Some(&cache),
    )?);
    let mut runs: Vec<Vec<replay::ReplayReport>> = vec![Vec::new(); THREADS.len()];
    // A B B A A B ...: drift (the machine's other load, the page cache) falls on both.
    for repetition in 0..plan.repetitions {
        let mut order: Vec<usize> = (0..THREADS.len()).collect();
        if repetition % 2 == 1 {
            order.reverse();
        }
        for index in order {
            let mut config = ReplayConfig::new(ledger.clone());
            config.limits = plan.limits;
            config.compile_cache_dir = Some(cache.clone());
            config.threads = THREADS[index];
            let report = replay::replay(&config, &candidate, &mut |_| {})?;
            anyhow::ensure!(
                report.transactions == plan.transactions as u64,
                "the replay decided {} transactions again, not the {} written",
                report.transactions,
                plan.transactions
            );
            anyhow::ensure!(
                report.notes.candidate_failures == 0,
                "the candidate failed {} times in the replay: {:?}",
                report.notes.candidate_failures,
                report.notes.candidate_failure_examples
            );
            runs[index].push(report);
        }
    }
    let lines = THREADS
        .iter()
        .zip(runs)
        .map(|(&threads, reports)| {
            let median = |pick: &dyn Fn(&replay::ReplayReport) -> f64| {
                let mut values: Vec<f64> = reports.iter().map(pick).collect();
                values.sort_by(f64::total_cmp);
                values.get(values.len() / 2).copied().unwrap_or(0.0)
            };
            let (recorded_credits, candidate_credits) = reports
                .first()
                .map_or((0, 0), |report| report.totals.charged());
            ReplayLine {
                threads,
                txn_per_s: median(&|report| report.transactions_per_second),
                repetitions_txn_per_s: reports
                    .iter()
                    .map(|report| report.transactions_per_second)
                    .collect(),
                prefix_ms: median(&|report| report.prefix_ms as f64) as u64,
                replay_ms: median(&|report| report.replay_ms as f64) as u64,
                recorded_credits,
                candidate_credits,
            }
        })
        .collect();
    Ok(ReplaySpeed {
        ledger_tenants: TENANTS,
        ledger_transactions: plan.transactions,
        written_ms,
        span_ms: STEP_MS * plan.transactions as u64,
        settles_refused,
        candidate: plan.candidate.file_name().map_or_else(
            || plan.candidate.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        ),
        lines,
    })
}

/// The ledger: SMARTe (Rust) on 1,000 tenants with credits to spare, `transactions`
/// calls of 1 to 3 records on SMARTe's operations, each settled 200 with every record
/// delivered, written by 32 clients through a meter whose clock moves [`STEP_MS`] a
/// transaction. Answers the settles refused.
fn write_ledger(plan: &Plan, ledger: &Path, dir: &Path) -> anyhow::Result<u64> {
    let clock = ManualClock::starting_at(START_MS);
    let mut config = MeterConfig::new(ledger.to_path_buf());
    config.clock = Arc::new(clock.clone());
    config.limits = plan.limits;
    config.sweep_interval_ms = 0;
    config.compile_cache_dir = Some(dir.join("cache"));
    let meter = Meter::open(
        config,
        PolicySource::Component(super::read_module(&plan.smarte, false)?),
    )?;
    for tenant in 0..TENANTS {
        meter.grant(GrantRequest {
            grant_id: format!("bench-{tenant}"),
            tenant: tenant_name(tenant),
            balance: "default".to_owned(),
            amount: 1_000_000_000,
            terms: Default::default(),
        })?;
    }
    let transactions = plan.transactions;
    let settles_refused = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (meter, clock, settles_refused) = (&meter, &clock, &settles_refused);
                scope.spawn(move || -> anyhow::Result<()> {
                    let mut traffic = Traffic(0x9e37_79b9_7f4a_7c15 ^ ((client as u64 + 1) << 20));
                    for sequence in (client..transactions).step_by(CLIENTS) {
                        clock.advance_ms(STEP_MS);
                        let tenant = tenant_name(traffic.below(TENANTS as u64) as usize);
                        let operations = &smarte::OPERATIONS;
                        let operation = operations[traffic.below(operations.len() as u64) as usize];
                        let count = 1 + traffic.below(3) as usize;
                        let id = format!("c{client}-{sequence}");
                        let answer = meter.authorize(AuthorizeRequest {
                            transaction_id: Some(id.clone()),
                            tenant,
                            operation: operation.to_owned(),
                            items: (0..count)
                                .map(|item| format!("record-{sequence}-{item}"))
                                .collect(),
                            ..AuthorizeRequest::default()
                        })?;
                        anyhow::ensure!(answer.admitted, "refused while writing: {answer:?}");
                        // A client the scheduler left waiting while the others moved the
                        // clock on may find its hold lapsed (5 minutes): as in real
                        // traffic, and the replay decides that again too.
                        let settled = meter.settle(SettleRequest {
                            transaction_id: id,
                            status: 200,
                            attributes: [("records".to_owned(), count.to_string())].into(),
                            body: None,
                        });
                        if settled.is_err() {
                            settles_refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for client in clients {
            client
                .join()
                .map_err(|_| anyhow::anyhow!("a writing client panicked"))??;
        }
        anyhow::Ok(())
    })?;
    drop(meter);
    Ok(settles_refused.into_inner())
}

/// A small deterministic generator (xorshift64*), as the workload's.
struct Traffic(u64);

impl Traffic {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }
}

pub fn print(figures: &anyhow::Result<ReplaySpeed>, repetitions: usize) {
    let figures = match figures {
        Ok(figures) => figures,
        Err(error) => {
            println!("{:<55} unavailable: {error:#}", super::REPLAY);
            return;
        }
    };
    println!(
        "{}: creditgate replay's engine on a bench-like SQLite ledger (SMARTe rules in Rust, \
         {} tenants, {} transactions of 1-3 records over {:.1} days of its clock, each \
         settled 200, {} settles refused as their hold lapsed; written by {CLIENTS} clients \
         through a meter in {:.1} s), candidate {}; the whole log, every tenant;",
        super::REPLAY,
        super::thousands(figures.ledger_tenants),
        super::thousands(figures.ledger_transactions),
        figures.span_ms as f64 / 86_400_000.0,
        super::thousands(figures.settles_refused as usize),
        figures.written_ms / 1e3,
        figures.candidate
    );
    println!(
        "  {repetitions} replay(s) per thread count, alternated, medians; prefix = until the \
         period starts (open, candidate from its compile cache); txn/s = transactions over \
         the replay time; target >= {} txn/s",
        super::thousands(TARGET_TXN_PER_S as usize)
    );
    println!(
        "{:<10} {:>9} {:>10} {:>10}   {:<28} {:<7} credits recorded -> candidate",
        "threads", "txn/s", "prefix ms", "replay ms", "each replay's txn/s", "target"
    );
    for line in &figures.lines {
        let each: Vec<String> = line
            .repetitions_txn_per_s
            .iter()
            .map(|rate| format!("{rate:.0}"))
            .collect();
        println!(
            "{:<10} {:>9.0} {:>10} {:>10}   {:<28} {:<7} {} -> {}",
            line.threads,
            line.txn_per_s,
            line.prefix_ms,
            line.replay_ms,
            each.join(", "),
            if line.txn_per_s >= TARGET_TXN_PER_S {
                "met"
            } else {
                "MISSED"
            },
            super::thousands(line.recorded_credits.max(0) as usize),
            super::thousands(line.candidate_credits.max(0) as usize)
        );
    }
}
