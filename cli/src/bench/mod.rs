//! `creditgate bench`: one run that puts creditgate beside what users would build
//! instead (Redis + Lua, naive PostgreSQL) and beside the HTTP framework's ceiling, on
//! one workload, and checks the figures against the speed targets.

mod activation;
mod modules;
mod replay_speed;
pub mod stats;
mod systems;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use creditgate::model::{BatchStats, GrantRequest, GrantTerms};
use creditgate::store::StoreLocation;
use creditgate::store::scratch::ScratchStore;
use creditgate::{Meter, MeterConfig, PolicySource};

use super::limits::PolicyLimitArgs;

use stats::{LedgerFigures, Measure, Row, Samples};
use systems::{Client, HttpServer, PostgresSystem, RedisSystem};
use workload::{Generator, Product, tenant_name};

#[derive(Args, Clone)]
pub struct BenchArgs {
    #[arg(long, default_value = "target/wasm32-wasip2/release/smarte.wasm")]
    smarte: PathBuf,
    #[arg(long, default_value = "target/wasm32-wasip2/release/donoratlas.wasm")]
    donoratlas: PathBuf,
    /// The SMARTe rules in Python (componentize-py; `policy/build-guests` builds it): the
    /// guests row and the policy modules table.
    #[arg(
        long,
        default_value = "target/wasm32-wasip2/release/smarte_python.wasm"
    )]
    smarte_python: PathBuf,
    /// The DonorAtlas rules in JavaScript (componentize-qjs; `policy/build-guests`).
    #[arg(
        long,
        default_value = "target/wasm32-wasip2/release/donoratlas_js.wasm"
    )]
    donoratlas_js: PathBuf,
    /// Concurrent clients, each sending authorize then settle, one request at a time.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Tenants per product in every row but the large one.
    #[arg(long, default_value_t = 1000)]
    tenants: usize,
    /// Tenants per product in the large row.
    #[arg(long, default_value_t = 1_000_000)]
    tenants_large: usize,
    /// How long each repetition runs.
    #[arg(long, default_value_t = 3000)]
    duration_ms: u64,
    /// Repetitions per row; the table shows their medians.
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
    /// Short repetitions and 10,000 tenants in the large row: checks that it runs.
    #[arg(long)]
    quick: bool,
    /// Only the rows whose name contains this text (e.g. `PostgreSQL`); the targets then
    /// judge what ran. The tables before and after the rows go by their names too: `live
    /// state`, `policy modules`, `replay speed`, `activation under traffic`.
    #[arg(long)]
    rows: Option<String>,
    /// Also write the rows and targets as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A second build of the SMARTe rules (another digest) to swap with.
    #[arg(
        long,
        default_value = "target/wasm32-wasip2/release/charges_on_429.wasm"
    )]
    swap_with: PathBuf,
    /// The candidate of the replay speed table (it charges twice for `funding.enrich`).
    #[arg(
        long,
        default_value = "target/wasm32-wasip2/release/pricier_funding.wasm"
    )]
    replay_candidate: PathBuf,
    /// Transactions in the replay speed table's ledger (`--quick`: 5,000).
    #[arg(long, default_value_t = 100_000)]
    replay_transactions: usize,
    /// Copy the replay speed table's ledger into this directory (for `creditgate replay`
    /// by hand, or a profile of it).
    #[arg(long)]
    replay_keep: Option<PathBuf>,
    /// The Redis of the Redis + Lua row.
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    redis: String,
    /// The PostgreSQL of the naive PostgreSQL row and of creditgate's PostgreSQL rows
    /// (each in schemas of its own, dropped after).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres: String,
    /// Where the temporary ledgers go.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// The per-call bounds the policy components run under, as `serve` takes them.
    #[command(flatten)]
    limits: PolicyLimitArgs,
    /// Measure the policy modules table only and write it to stdout as JSON: the bench
    /// runs the table in a process of its own this way.
    #[arg(long, hide = true)]
    modules_table_only: bool,
}

/// How the run is shaped, after `--quick`.
struct Plan {
    clients: usize,
    tenants: usize,
    tenants_large: usize,
    duration: Duration,
    repetitions: usize,
}

const IN_PROCESS: &str = "creditgate in-process, wasm";
const GUESTS: &str = "creditgate in-process, wasm guests (Python, JavaScript)";
/// The table of the policy modules (printed before the rows; `--rows modules` alone).
const MODULES: &str = "policy modules";
const NATIVE: &str = "creditgate in-process, native rules";
const LOTS: &str = "creditgate in-process, wasm, 5 lots a tenant";
/// Lots every tenant's balance gets in the [`LOTS`] row.
const LOTS_PER_TENANT: usize = 5;
const HTTP: &str = "creditgate HTTP sidecar, wasm";
const BARE_AXUM: &str = "bare axum endpoint (does nothing)";
const REDIS: &str = "Redis + Lua (in memory, not durable)";
const POSTGRES: &str = "naive PostgreSQL (a txn per call)";
const HALF_PEAK: &str = "creditgate in-process, wasm, at half peak";
const SWAPS: &str = "creditgate in-process, wasm, a swap every 100 ms";
const PG_ONE: &str = "creditgate on PostgreSQL, 1 replica";
const PG_ONE_UNBATCHED: &str = "creditgate on PostgreSQL, 1 replica, unbatched";
const PG_THREE: &str = "creditgate on PostgreSQL, 3 replicas";
const FOOTPRINT: &str = "live state";
/// The replay speed table (after the rows): `creditgate replay` on a bench-like ledger.
const REPLAY: &str = "replay speed";
/// The table of a module activated, compiled cold, while a client calls (after the rows).
const ACTIVATION: &str = "activation under traffic";
/// Transactions in the replay speed table's ledger under `--quick`.
const REPLAY_TRANSACTIONS_QUICK: usize = 5_000;
const GATEWAY_DIRECT: &str = "do-nothing upstream API, called directly";
const GATEWAY_PROXY: &str = "creditgate proxy in front of it, wasm";
const GATEWAY_DIRECT_PACED: &str = "do-nothing upstream API, 1,000 calls/s";
const GATEWAY_PROXY_PACED: &str = "creditgate proxy in front of it, 1,000 calls/s";
const GATEWAY_LAYER: &str = "creditgate tower layer on its handler, wasm";
const SCRAPED: &str = "creditgate HTTP sidecar, wasm, /metrics scraped";

/// The pace of the rows that compare latency below saturation: what the proxy adds to
/// a call, not what queueing at the meter's peak adds.
const GATEWAY_PACE_PER_S: f64 = 1_000.0;

/// How often the scraped row reads `/metrics` (as a Prometheus server would, 15 s by
/// default: this is 15 times as often).
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// How often the swap row activates the other build.
const SWAP_EVERY: Duration = Duration::from_millis(100);

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.modules_table_only {
        let (modules, limits) = (policy_modules(&args), args.limits.limits());
        let calls = module_calls(args.quick);
        let lines = modules::measure(&modules, limits, calls, args.quick, &args.dir);
        println!("{}", serde_json::to_string(&lines)?);
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args, cores))
}

async fn run_async(args: BenchArgs, cores: usize) -> anyhow::Result<()> {
    let plan = Plan {
        clients: args.clients.max(1),
        tenants: args.tenants.max(1),
        tenants_large: if args.quick {
            10_000
        } else {
            args.tenants_large.max(1)
        },
        duration: Duration::from_millis(if args.quick { 300 } else { args.duration_ms }),
        repetitions: args.repetitions.max(1),
    };
    let large = format!(
        "creditgate in-process, wasm, {} tenants",
        thousands(plan.tenants_large)
    );
    println!(
        "creditgate bench, {}: {cores} cores, {} clients, {} tenants per product (large row: {}), \
         {} repetitions of {} ms per row, medians shown",
        today(),
        plan.clients,
        thousands(plan.tenants),
        thousands(plan.tenants_large),
        plan.repetitions,
        plan.duration.as_millis()
    );
    println!(
        "workload: SMARTe and DonorAtlas operations half and half, 1-5 items a request; \
         creditgate keeps one SQLite ledger per product, its log fsynced before any answer"
    );
    let fsync_us = fsync_latency_us(&args.dir)?;
    println!(
        "disk under {}: fdatasync of 4 KiB takes {} µs at the median, {} µs at p99 (64 samples): \
         the floor of any durable answer",
        args.dir.display(),
        fsync_us.p50,
        fsync_us.p99
    );
    let wanted = |name: &str| {
        args.rows
            .as_ref()
            .is_none_or(|text| name.contains(text.as_str()))
    };
    // First, while this process's heap is fresh.
    let footprint = if wanted(FOOTPRINT) {
        let (tenants, holds) = (plan.tenants_large, plan.tenants_large / 10);
        let dir = args.dir.clone();
        let footprint =
            tokio::task::spawn_blocking(move || live_state_footprint(&dir, tenants, holds))
                .await??;
        println!(
            "{FOOTPRINT} (resident memory per entry, all in: structures, allocator, filters): \
             {:.0} B a tenant with one balance ({} tenants), {:.0} B an open hold ({} holds); \
             the id filter {:.2} B an id",
            footprint.bytes_per_tenant,
            thousands(tenants),
            footprint.bytes_per_open_hold,
            thousands(holds),
            footprint.filter_bytes_per_id
        );
        Some(footprint)
    } else {
        None
    };
    let modules = if wanted(MODULES) {
        let lines = tokio::task::spawn_blocking({
            let args = args.clone();
            move || {
                modules_table_apart(&args)
                    .unwrap_or_else(|error| vec![modules::ModuleLine::unavailable(MODULES, &error)])
            }
        })
        .await?;
        modules::print(
            &lines,
            args.limits.limits(),
            module_calls(args.quick),
            args.quick,
        );
        Some(lines)
    } else {
        None
    };
    print_header();
    let mut rows: Vec<Row> = Vec::new();

    if wanted(IN_PROCESS) {
        record(
            &mut rows,
            creditgate_row(&args, &plan, IN_PROCESS, Variant::default()).await,
        );
    }
    if wanted(LOTS) {
        record(
            &mut rows,
            creditgate_row(
                &args,
                &plan,
                LOTS,
                Variant {
                    lots: LOTS_PER_TENANT,
                    ..Variant::default()
                },
            )
            .await,
        );
    }
    if wanted(NATIVE) {
        record(
            &mut rows,
            creditgate_row(
                &args,
                &plan,
                NATIVE,
                Variant {
                    native: true,
                    ..Variant::default()
                },
            )
            .await,
        );
    }
    if wanted(HTTP) || wanted(SCRAPED) {
        let (slices, slice) = scrape_slices(&plan);
        println!(
            "{:<55} sidecar rows: {slices} slices of {} ms each, interleaved, without and with /metrics",
            "",
            slice.as_millis()
        );
        for row in sidecar_rows(&args, &plan).await {
            if wanted(&row.name) {
                record(&mut rows, row);
            }
        }
    }
    if wanted(BARE_AXUM) {
        record(&mut rows, bare_axum_row(&plan).await);
    }
    if [
        GATEWAY_DIRECT,
        GATEWAY_PROXY,
        GATEWAY_LAYER,
        GATEWAY_DIRECT_PACED,
        GATEWAY_PROXY_PACED,
    ]
    .iter()
    .any(|name| wanted(name))
    {
        println!(
            "{:<55} gateway rows: one request a transaction, its whole time in the authorize column",
            ""
        );
    }
    for (name, rate) in [
        (GATEWAY_DIRECT, None),
        (GATEWAY_DIRECT_PACED, Some(GATEWAY_PACE_PER_S)),
    ] {
        if wanted(name) {
            record(&mut rows, gateway_direct_row(&plan, name, rate).await);
        }
    }
    for (name, front, rate) in [
        (GATEWAY_PROXY, Front::Proxy, None),
        (GATEWAY_PROXY_PACED, Front::Proxy, Some(GATEWAY_PACE_PER_S)),
        (GATEWAY_LAYER, Front::Layer, None),
    ] {
        if wanted(name) {
            let variant = Variant {
                front,
                rate,
                ..Variant::default()
            };
            record(&mut rows, creditgate_row(&args, &plan, name, variant).await);
        }
    }
    if wanted(REDIS) {
        record(&mut rows, redis_row(&args, &plan).await);
    }
    if wanted(POSTGRES) {
        record(&mut rows, postgres_row(&args, &plan).await);
    }
    for (name, replicas, batch_size_max) in [
        (PG_ONE, 1, None),
        (PG_ONE_UNBATCHED, 1, Some(1)),
        (PG_THREE, 3, None),
    ] {
        let variant = Variant {
            postgres_replicas: Some(replicas),
            batch_size_max,
            ..Variant::default()
        };
        if wanted(name) {
            record(&mut rows, creditgate_row(&args, &plan, name, variant).await);
        }
    }
    let peak = rows
        .iter()
        .find(|row| row.name == IN_PROCESS)
        .map_or(0.0, |row| row.txn_per_s);
    if wanted(HALF_PEAK) {
        record(
            &mut rows,
            creditgate_row(
                &args,
                &plan,
                HALF_PEAK,
                Variant {
                    rate: Some(peak / 2.0),
                    ..Variant::default()
                },
            )
            .await,
        );
    }
    if wanted(SWAPS) {
        record(
            &mut rows,
            creditgate_row(
                &args,
                &plan,
                SWAPS,
                Variant {
                    swaps: true,
                    ..Variant::default()
                },
            )
            .await,
        );
    }

    // Last but the guests row: the peak RSS of a row after it would include what this
    // one's allocator kept.
    if wanted(&large) {
        record(
            &mut rows,
            creditgate_row(
                &args,
                &plan,
                &large,
                Variant {
                    tenants: Some(plan.tenants_large),
                    ..Variant::default()
                },
            )
            .await,
        );
    }
    // After the large row, so that no row after it counts what compiling CPython's
    // component left in the allocator (trimmed, not all of it goes).
    if wanted(GUESTS) {
        record(
            &mut rows,
            creditgate_row(
                &args,
                &plan,
                GUESTS,
                Variant {
                    guests: true,
                    ..Variant::default()
                },
            )
            .await,
        );
    }
    // Tables after the rows: the activations compile CPython's component in this
    // process, which no row's peak RSS should count.
    let replay = if wanted(REPLAY) {
        let plan = replay_speed::Plan {
            smarte: args.smarte.clone(),
            candidate: args.replay_candidate.clone(),
            transactions: if args.quick {
                REPLAY_TRANSACTIONS_QUICK
            } else {
                args.replay_transactions.max(1)
            },
            repetitions: if args.quick { 1 } else { plan.repetitions },
            limits: args.limits.limits(),
            keep: args.replay_keep.clone(),
        };
        let dir = args.dir.clone();
        let repetitions = plan.repetitions;
        let replay =
            tokio::task::spawn_blocking(move || replay_speed::measure(&plan, &dir)).await?;
        replay_speed::print(&replay, repetitions);
        Some(replay)
    } else {
        None
    };
    let activations = if wanted(ACTIVATION) {
        let candidates = activation_candidates(&args);
        let (limits, dir, window) = (args.limits.limits(), args.dir.clone(), plan.duration);
        let lines = tokio::task::spawn_blocking(move || {
            activation::measure(&candidates, window, limits, &dir)
        })
        .await?;
        activation::print(&lines, plan.duration);
        Some(lines)
    } else {
        None
    };
    let replay_figures = replay.as_ref().and_then(|replay| replay.as_ref().ok());
    let targets = targets(&rows, &large, replay_figures);
    print_targets(&targets);
    let activation = tokio::task::spawn_blocking({
        let smarte = args.smarte.clone();
        let donoratlas = args.donoratlas.clone();
        let dir = args.dir.clone();
        move || activation_times(&smarte, &donoratlas, &dir)
    })
    .await??;
    println!(
        "policy activation (median of 5): new module {:.1} ms, precompiled {:.1} ms",
        activation.0, activation.1
    );
    if let Some(path) = &args.json {
        let report = Report {
            date: today(),
            cores,
            clients: plan.clients,
            tenants: plan.tenants,
            tenants_large: plan.tenants_large,
            duration_ms: plan.duration.as_millis() as u64,
            repetitions: plan.repetitions,
            fsync_us,
            rows: &rows,
            footprint,
            targets: &targets,
            activation_new_ms: activation.0,
            activation_precompiled_ms: activation.1,
            modules: modules.as_deref(),
            replay: replay_figures,
            activation_under_traffic: activations.as_deref(),
        };
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    // Rows whose requests failed or that could not run, and modules that could not be
    // measured or whose calls failed.
    let failed: Vec<&str> = rows
        .iter()
        .filter(|row| {
            row.failures > 0 || (row.error.is_some() && row.name.starts_with("creditgate"))
        })
        .map(|row| row.name.as_str())
        .chain(
            modules
                .iter()
                .flatten()
                .filter(|line| modules::failed(line))
                .map(|line| line.module.as_str()),
        )
        .chain(
            replay
                .iter()
                .filter(|replay| replay.is_err())
                .map(|_| REPLAY),
        )
        .chain(
            activations
                .iter()
                .flatten()
                .filter(|line| activation::failed(line))
                .map(|line| line.module.as_str()),
        )
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "creditgate rows, policy modules or tables failed: {}",
        failed.join(", ")
    );
    Ok(())
}

/// Authorize calls each way per module in the policy modules table.
fn module_calls(quick: bool) -> usize {
    if quick { 200 } else { 2_000 }
}

/// The modules of the policy modules table: each product's rules in Rust, then in
/// another language.
fn policy_modules(args: &BenchArgs) -> [modules::Module; 4] {
    [
        (&args.smarte, Product::Smarte, "Rust"),
        (&args.donoratlas, Product::DonorAtlas, "Rust"),
        (&args.smarte_python, Product::Smarte, "Python"),
        (&args.donoratlas_js, Product::DonorAtlas, "JavaScript"),
    ]
    .map(|(path, product, language)| modules::Module {
        path: path.clone(),
        product,
        language,
    })
}

/// The modules of the activation under traffic table: per language, a module activated
/// on a meter running the same product's Rust rules. The Python guest's cold compile
/// (~11 s on 2 cores) is left out of quick runs, which CI runs.
fn activation_candidates(args: &BenchArgs) -> Vec<activation::Candidate> {
    [
        (
            &args.swap_with,
            &args.smarte,
            Product::Smarte,
            "Rust",
            false,
        ),
        (
            &args.donoratlas_js,
            &args.donoratlas,
            Product::DonorAtlas,
            "JavaScript",
            true,
        ),
        (
            &args.smarte_python,
            &args.smarte,
            Product::Smarte,
            "Python",
            true,
        ),
    ]
    .into_iter()
    .map(
        |(path, base, product, language, guest)| activation::Candidate {
            path: path.clone(),
            base: base.clone(),
            product,
            language,
            guest,
            skipped: (args.quick && language == "Python").then(|| {
                "left out of --quick: its cold compile takes ~11 s on 2 cores; a full run \
             measures it"
                    .to_owned()
            }),
        },
    )
    .collect()
}

/// Reads a policy module for the bench; a missing one names what builds it: `cargo
/// policies` for the Rust modules, `policy/build-guests` for the guests (Python,
/// JavaScript).
fn read_module(path: &Path, guest: bool) -> anyhow::Result<Vec<u8>> {
    if !guest {
        return super::read_policy(path);
    }
    std::fs::read(path).map_err(|error| {
        anyhow::anyhow!(
            "cannot read the policy component {}: {error}. Build the guest policies \
             (Python, JavaScript) with `policy/build-guests` (after `rustup target add \
             wasm32-wasip2 && cargo policies`)",
            path.display()
        )
    })
}

/// The policy modules table, measured by this command in a process of its own
/// (`--modules-table-only`): compiling CPython's component frees hundreds of MiB that
/// the allocator keeps in part even once trimmed, which would otherwise count in the
/// rows' peak RSS (and a fresh process gives each module's memory figures alike).
fn modules_table_apart(args: &BenchArgs) -> anyhow::Result<Vec<modules::ModuleLine>> {
    let limits = args.limits.limits();
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .arg("bench")
        .arg("--modules-table-only")
        .arg("--smarte")
        .arg(&args.smarte)
        .arg("--donoratlas")
        .arg(&args.donoratlas)
        .arg("--smarte-python")
        .arg(&args.smarte_python)
        .arg("--donoratlas-js")
        .arg(&args.donoratlas_js)
        .arg("--dir")
        .arg(&args.dir)
        .arg("--policy-fuel-per-call")
        .arg(limits.fuel_per_call.to_string())
        .arg("--policy-wall-ms-per-call")
        .arg(limits.wall_ms_per_call.to_string())
        .args(args.quick.then_some("--quick"))
        .stderr(std::process::Stdio::inherit());
    let output = command
        .output()
        .context("cannot start the policy modules table's process")?;
    anyhow::ensure!(
        output.status.success(),
        "the policy modules table's process failed ({})",
        output.status
    );
    serde_json::from_slice(&output.stdout)
        .context("cannot read the policy modules table's process's answer")
}

#[derive(Serialize)]
struct Report<'a> {
    date: String,
    cores: usize,
    clients: usize,
    tenants: usize,
    tenants_large: usize,
    duration_ms: u64,
    repetitions: usize,
    /// fdatasync of 4 KiB on the disk of the ledgers.
    fsync_us: stats::Percentiles,
    rows: &'a [Row],
    footprint: Option<Footprint>,
    targets: &'a [Target],
    activation_new_ms: f64,
    activation_precompiled_ms: f64,
    /// The policy modules table, when it ran.
    modules: Option<&'a [modules::ModuleLine]>,
    /// The replay speed table, when it ran.
    replay: Option<&'a replay_speed::ReplaySpeed>,
    /// The activation under traffic table, when it ran.
    activation_under_traffic: Option<&'a [activation::ActivationLine]>,
}

/// How a creditgate row differs from the default (in process, wasm, durable).
/// What the clients call.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Front {
    /// The meters, in this process.
    #[default]
    InProcess,
    /// The HTTP sidecar: authorize and settle are two calls.
    Sidecar,
    /// The do-nothing upstream API behind `creditgate proxy`: one call a transaction.
    Proxy,
    /// The do-nothing upstream API with the tower layer on its handler.
    Layer,
}

#[derive(Default, Clone, Copy)]
struct Variant {
    native: bool,
    /// The guests in other languages instead of the Rust modules: SMARTe in Python,
    /// DonorAtlas in JavaScript.
    guests: bool,
    front: Front,
    /// The repetitions alternate without and with `/metrics` of the first sidecar read
    /// every [`SCRAPE_EVERY`] ([`measure_alternating`]).
    scraped: bool,
    tenants: Option<usize>,
    /// Lots per tenant and balance: its grant in this many parts, of mixed priorities
    /// and expiries (0: one grant, as 1).
    lots: usize,
    /// Paced: this many transactions a second in all, instead of as fast as it goes.
    rate: Option<f64>,
    swaps: bool,
    /// The ledgers on PostgreSQL, each shared by this many meters (replicas, each with
    /// its own sequencer and connections; clients spread over them).
    postgres_replicas: Option<usize>,
    batch_size_max: Option<usize>,
}

async fn creditgate_row(args: &BenchArgs, plan: &Plan, name: &str, variant: Variant) -> Row {
    // What earlier rows and the modules table freed (a compile of the Python guest
    // frees hundreds of MiB) is not this row's.
    stats::trim_heap();
    stats::reset_peak_rss();
    match run_creditgate(args, plan, variant).await {
        Ok(ran) => Row {
            decisions_per_commit: Some(ran.decisions_per_commit),
            ledger: ran.ledger,
            ..Row::from_measures(name.to_owned(), &ran.measures, stats::peak_rss_bytes())
        },
        Err(error) => Row::unavailable(name.to_owned(), &error),
    }
}

/// The sidecar's row and its row with `/metrics` scraped, from one run whose
/// repetitions alternate between the two: the same meters, servers and clients, and
/// drift (the ledger growing, the machine's other load) falls on both alike.
async fn sidecar_rows(args: &BenchArgs, plan: &Plan) -> [Row; 2] {
    stats::trim_heap();
    stats::reset_peak_rss();
    let variant = Variant {
        front: Front::Sidecar,
        scraped: true,
        ..Variant::default()
    };
    match run_creditgate(args, plan, variant).await {
        Ok(ran) => {
            let rss = stats::peak_rss_bytes();
            [
                Row {
                    decisions_per_commit: Some(ran.decisions_per_commit),
                    ledger: ran.ledger,
                    ..Row::from_measures(HTTP.to_owned(), &ran.measures, rss)
                },
                Row::from_measures(SCRAPED.to_owned(), &ran.scraped, rss),
            ]
        }
        Err(error) => [
            Row::unavailable(HTTP.to_owned(), &error),
            Row::unavailable(SCRAPED.to_owned(), &error),
        ],
    }
}

/// What a creditgate row measured.
struct Ran {
    measures: Vec<Measure>,
    /// With [`Variant::scraped`]: the repetitions with `/metrics` scraped.
    scraped: Vec<Measure>,
    /// Decisions per store commit during the measures.
    decisions_per_commit: f64,
    ledger: Option<LedgerFigures>,
}

async fn run_creditgate(args: &BenchArgs, plan: &Plan, variant: Variant) -> anyhow::Result<Ran> {
    let tenants = variant.tenants.unwrap_or(plan.tenants);
    let dir = tempfile::Builder::new()
        .prefix("creditgate-bench-")
        .tempdir_in(&args.dir)?;
    let scratch_store = ScratchStore::Postgres(args.postgres.clone());
    let mut scratches = Vec::new();
    // Per product, one meter per replica.
    let mut replicas: Vec<Vec<Arc<Meter>>> = Vec::new();
    for product in Product::ALL {
        let module = match (product, variant.guests) {
            (Product::Smarte, false) => &args.smarte,
            (Product::DonorAtlas, false) => &args.donoratlas,
            (Product::Smarte, true) => &args.smarte_python,
            (Product::DonorAtlas, true) => &args.donoratlas_js,
        };
        let source = match variant.native {
            false => PolicySource::Component(read_module(module, variant.guests)?),
            true => PolicySource::Native(product.native()),
        };
        let location = match variant.postgres_replicas {
            Some(_) => {
                let store = scratch_store.clone();
                let scratch = tokio::task::spawn_blocking(move || store.create()).await??;
                let location = scratch.location().clone();
                scratches.push(scratch);
                location
            }
            None => StoreLocation::Sqlite(dir.path().join(ledger_file(product))),
        };
        let mut meters = Vec::new();
        for _ in 0..variant.postgres_replicas.unwrap_or(1) {
            let mut config = bench_config(&location, dir.path());
            config.limits = args.limits.limits();
            if let Some(batch_size_max) = variant.batch_size_max {
                config.batch_size_max = batch_size_max;
            }
            let source = source.clone();
            let meter = tokio::task::spawn_blocking(move || Meter::open(config, source)).await??;
            meters.push(Arc::new(meter));
        }
        replicas.push(meters);
    }
    let meters: [Arc<Meter>; 2] = [Arc::clone(&replicas[0][0]), Arc::clone(&replicas[1][0])];

    grant_everyone(&meters, tenants, variant.lots.max(1)).await?;
    let servers = servers(variant.front, &meters).await?;
    let mut clients = Vec::with_capacity(plan.clients);
    for index in 0..plan.clients {
        clients.push(match &servers {
            Some(servers) => {
                let connections = [
                    systems::http_connect(servers.fronts[0].address).await?,
                    systems::http_connect(servers.fronts[1].address).await?,
                ];
                match variant.front {
                    Front::Sidecar => Client::Http(connections),
                    _ => Client::Gateway(connections),
                }
            }
            None => Client::InProcess([
                Arc::clone(&replicas[0][index % replicas[0].len()]),
                Arc::clone(&replicas[1][index % replicas[1].len()]),
            ]),
        });
    }
    let swapper = if variant.swaps {
        Some(Swapper::start(
            Arc::clone(&meters[0]),
            [
                super::read_policy(&args.swap_with)?,
                super::read_policy(&args.smarte)?,
            ],
        ))
    } else {
        None
    };
    let every_meter = || replicas.iter().flatten();
    let before: Vec<BatchStats> = every_meter().map(|meter| meter.batch_stats()).collect();
    let measures = match (&servers, variant.scraped) {
        (Some(servers), true) => {
            measure_alternating(&mut clients, plan, tenants, servers.fronts[0].address).await
        }
        _ => measure_all(&mut clients, plan, tenants, variant.rate)
            .await
            .map(|measures| (measures, Vec::new())),
    };
    let views_lag_worst_us = every_meter()
        .filter_map(|meter| meter.views_lag())
        .map(|lag| lag.worst_us)
        .max();
    let (mut decisions, mut commits) = (0, 0);
    for (meter, before) in every_meter().zip(before) {
        let after = meter.batch_stats();
        decisions += after.decisions - before.decisions;
        commits += after.batches - before.batches;
    }
    let decisions_per_commit = decisions as f64 / commits.max(1) as f64;
    if let Some(swapper) = swapper {
        let swaps = swapper.stop().await?;
        anyhow::ensure!(swaps > 0, "no swap happened during the row");
    }
    drop(clients);
    drop(servers);
    // Closing a meter and dropping a schema block: off the async workers.
    tokio::task::spawn_blocking(move || drop(replicas)).await?;
    for meter in meters {
        let violations =
            tokio::task::spawn_blocking(move || meter.invariant_violations()).await??;
        anyhow::ensure!(
            violations.is_empty(),
            "ledger invariants broke: {violations:?}"
        );
    }
    tokio::task::spawn_blocking(move || drop(scratches)).await?;
    let (measures, scraped) = measures?;
    let ledger = match views_lag_worst_us {
        Some(worst_us) => {
            let transactions = measures
                .iter()
                .chain(&scraped)
                .map(|measure| measure.transactions)
                .sum();
            let dir = dir.path().to_path_buf();
            let native = variant.native;
            Some(
                tokio::task::spawn_blocking(move || {
                    ledger_figures(&dir, transactions, worst_us, native)
                })
                .await??,
            )
        }
        None => None,
    };
    Ok(Ran {
        measures,
        scraped,
        decisions_per_commit,
        ledger,
    })
}

/// The HTTP servers a row's clients call, one per product, and what they call.
struct Servers {
    fronts: [HttpServer; 2],
    /// The proxy's upstream.
    _upstream: Option<HttpServer>,
}

async fn servers(front: Front, meters: &[Arc<Meter>; 2]) -> anyhow::Result<Option<Servers>> {
    let [smarte, donoratlas] = meters.clone();
    Ok(Some(match front {
        Front::InProcess => return Ok(None),
        Front::Sidecar => Servers {
            fronts: [
                HttpServer::sidecar(smarte).await?,
                HttpServer::sidecar(donoratlas).await?,
            ],
            _upstream: None,
        },
        Front::Layer => Servers {
            fronts: [
                HttpServer::metered_api(smarte, Product::Smarte).await?,
                HttpServer::metered_api(donoratlas, Product::DonorAtlas).await?,
            ],
            _upstream: None,
        },
        Front::Proxy => {
            let upstream = HttpServer::start(systems::upstream_api()).await?;
            Servers {
                fronts: [
                    HttpServer::proxy(smarte, Product::Smarte, upstream.address).await?,
                    HttpServer::proxy(donoratlas, Product::DonorAtlas, upstream.address).await?,
                ],
                _upstream: Some(upstream),
            }
        }
    }))
}

/// Reads `/metrics` at once and then every [`SCRAPE_EVERY`], as Prometheus would.
struct Scraper {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<u64>>,
}

impl Scraper {
    async fn start(address: std::net::SocketAddr) -> anyhow::Result<Self> {
        let mut connection = systems::http_connect(address).await?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut scrapes = 0;
            let mut every = tokio::time::interval(SCRAPE_EVERY);
            loop {
                tokio::select! {
                    _ = &mut stopped => return Ok(scrapes),
                    _ = every.tick() => {
                        let text = systems::get(&mut connection, "/metrics").await?;
                        anyhow::ensure!(!text.is_empty(), "/metrics answered nothing");
                        scrapes += 1;
                    }
                }
            }
        });
        Ok(Self { stop, task })
    }

    /// Stops scraping; how many scrapes there were.
    async fn stop(self) -> anyhow::Result<u64> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

/// The SQLite ledger of a product in a row's directory.
fn ledger_file(product: Product) -> String {
    format!("ledger-{}.db", product.index())
}

/// A meter's configuration in the bench: as `serve` runs it, the compiled policy cached
/// beside the ledgers.
fn bench_config(location: &StoreLocation, dir: &Path) -> MeterConfig {
    let mut config = MeterConfig::new(location.clone());
    config.compile_cache_dir = Some(dir.join("cache"));
    config
}

/// Disk bytes per transaction of the closed SQLite ledgers in `dir`, and how long each
/// takes to open again.
fn ledger_figures(
    dir: &Path,
    transactions: u64,
    views_lag_worst_us: u64,
    native: bool,
) -> anyhow::Result<LedgerFigures> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("ledger-") {
            bytes += entry.metadata()?.len();
        }
    }
    let mut restart_ms: f64 = 0.0;
    for product in Product::ALL {
        let location = StoreLocation::Sqlite(dir.join(ledger_file(product)));
        let started = Instant::now();
        // A restart resumes the ledger's own policy; native rules are linked, not stored.
        let source = match (native, product) {
            (false, _) => PolicySource::Resume { fallback: None },
            (true, _) => PolicySource::Native(product.native()),
        };
        let meter = Meter::open(bench_config(&location, dir), source)?;
        restart_ms = restart_ms.max(started.elapsed().as_secs_f64() * 1e3);
        drop(meter);
    }
    Ok(LedgerFigures {
        disk_bytes_per_txn: bytes as f64 / transactions.max(1) as f64,
        views_lag_worst_ms: views_lag_worst_us as f64 / 1e3,
        restart_ms,
    })
}

/// What the live state costs in resident memory per entry.
#[derive(Debug, Clone, Copy, Serialize)]
struct Footprint {
    bytes_per_tenant: f64,
    bytes_per_open_hold: f64,
    /// The id filter's own bytes (transaction and grant ids) over the ids it holds.
    filter_bytes_per_id: f64,
}

/// Opens a meter (native SMARTe rules) on a fresh SQLite ledger and measures the growth
/// of this process's resident memory as `tenants` tenants get a grant, then as `holds`
/// authorizes stay open, each once the views applied everything (so that only what the
/// live state keeps remains).
fn live_state_footprint(dir: &Path, tenants: usize, holds: usize) -> anyhow::Result<Footprint> {
    let dir = tempfile::Builder::new()
        .prefix("creditgate-bench-")
        .tempdir_in(dir)?;
    let location = StoreLocation::Sqlite(dir.path().join("ledger.db"));
    let meter = Arc::new(Meter::open(
        bench_config(&location, dir.path()),
        PolicySource::Native(Product::Smarte.native()),
    )?);
    let settled = |meter: &Meter, round: &str| -> anyhow::Result<u64> {
        // A read of the journal waits for the views; the batch after it evicts what
        // they applied.
        meter.journal(&tenant_name(0), 1)?;
        meter.grant(GrantRequest {
            grant_id: format!("bench-settled-{round}"),
            tenant: tenant_name(0),
            balance: "default".to_owned(),
            amount: 1,
            terms: Default::default(),
        })?;
        stats::resident_bytes().context("no resident memory figure on this system")
    };
    let before = settled(&meter, "before")?;
    in_parallel(tenants, |tenant| {
        meter
            .grant(GrantRequest {
                grant_id: format!("bench-{tenant}"),
                tenant: tenant_name(tenant),
                balance: "default".to_owned(),
                amount: 1_000,
                terms: Default::default(),
            })
            .map(drop)
    })?;
    let with_tenants = settled(&meter, "tenants")?;
    in_parallel(holds, |hold| {
        meter
            .authorize(creditgate::model::AuthorizeRequest {
                transaction_id: Some(format!("bench-hold-{hold}")),
                tenant: tenant_name(hold % tenants.max(1)),
                operation: "person.enrich".to_owned(),
                items: vec!["jane@example.com".to_owned()],
                attributes: Default::default(),
                body: None,
            })
            .map(drop)
    })?;
    let with_holds = settled(&meter, "holds")?;
    let per = |grown: u64, count: usize| grown as f64 / count.max(1) as f64;
    // Every grant and transaction id so far: the tenants' grants, the holds, and the
    // three grants of `settled`.
    let ids = tenants + holds + 3;
    Ok(Footprint {
        bytes_per_tenant: per(with_tenants.saturating_sub(before), tenants),
        bytes_per_open_hold: per(with_holds.saturating_sub(with_tenants), holds),
        filter_bytes_per_id: per(meter.filter_bytes()?.ids as u64, ids),
    })
}

/// Runs `call(0..count)` from 256 threads, so that calls share batches.
fn in_parallel(
    count: usize,
    call: impl Fn(usize) -> Result<(), creditgate::MeterError> + Sync,
) -> anyhow::Result<()> {
    const THREADS: usize = 256;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|stripe| {
                let call = &call;
                scope.spawn(move || (stripe..count).step_by(THREADS).try_for_each(call))
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a bench thread panicked"))??;
        }
        anyhow::Ok(())
    })
}

/// Grants every tenant of both products, many grants in flight so they share commits:
/// [`systems::GRANT`] a balance, in `lots` lots whose priorities and expiries differ
/// (so that a hold walks them in burn order).
async fn grant_everyone(
    meters: &[Arc<Meter>; 2],
    tenants: usize,
    lots: usize,
) -> anyhow::Result<()> {
    const IN_FLIGHT: usize = 256;
    let mut tasks = tokio::task::JoinSet::new();
    for stripe in 0..IN_FLIGHT {
        let meters = meters.clone();
        tasks.spawn(async move {
            for meter in &meters {
                let balances = meter.policy().balances.clone();
                for tenant in (stripe..tenants).step_by(IN_FLIGHT) {
                    for balance in &balances {
                        for lot in 0..lots {
                            let share = systems::GRANT / lots as i64;
                            meter
                                .grant_async(GrantRequest {
                                    grant_id: format!("bench-{tenant}-{balance}-{lot}"),
                                    tenant: tenant_name(tenant),
                                    balance: balance.clone(),
                                    amount: if lot == 0 {
                                        systems::GRANT - share * (lots as i64 - 1)
                                    } else {
                                        share
                                    },
                                    terms: GrantTerms {
                                        priority: (lot % 3) as i32,
                                        // Far beyond the run, so nothing expires in it.
                                        expires_at_ms: (lot % 2 == 1)
                                            .then_some(4_102_444_800_000 + lot as i64),
                                        ..GrantTerms::default()
                                    },
                                })
                                .await?;
                        }
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(granted) = tasks.join_next().await {
        granted??;
    }
    Ok(())
}

/// Activates two builds in turn on a meter, off the clients' threads.
struct Swapper {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: tokio::task::JoinHandle<anyhow::Result<usize>>,
}

impl Swapper {
    fn start(meter: Arc<Meter>, modules: [Vec<u8>; 2]) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = tokio::task::spawn_blocking(move || {
            let mut swaps = 0;
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(SWAP_EVERY);
                meter.activate(modules[swaps % 2].clone(), "bench")?;
                swaps += 1;
            }
            Ok(swaps)
        });
        Self { stop, thread }
    }

    async fn stop(self) -> anyhow::Result<usize> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.await?
    }
}

/// A row of a system other than creditgate: unavailable, with the reason, when it
/// cannot run.
async fn baseline_row(
    name: &str,
    run: impl std::future::Future<Output = anyhow::Result<Vec<Measure>>>,
) -> Row {
    match run.await {
        Ok(measures) => Row::from_measures(name.to_owned(), &measures, None),
        Err(error) => Row::unavailable(name.to_owned(), &error),
    }
}

async fn bare_axum_row(plan: &Plan) -> Row {
    baseline_row(BARE_AXUM, async {
        let server = HttpServer::bare_axum().await?;
        let mut clients = Vec::with_capacity(plan.clients);
        for _ in 0..plan.clients {
            clients.push(Client::Http([
                systems::http_connect(server.address).await?,
                systems::http_connect(server.address).await?,
            ]));
        }
        measure_all(&mut clients, plan, plan.tenants, None).await
    })
    .await
}

/// The gateway rows' baseline: the do-nothing upstream API, called directly.
async fn gateway_direct_row(plan: &Plan, name: &str, rate: Option<f64>) -> Row {
    baseline_row(name, async {
        let server = HttpServer::start(systems::upstream_api()).await?;
        let mut clients = Vec::with_capacity(plan.clients);
        for _ in 0..plan.clients {
            clients.push(Client::Gateway([
                systems::http_connect(server.address).await?,
                systems::http_connect(server.address).await?,
            ]));
        }
        measure_all(&mut clients, plan, plan.tenants, rate).await
    })
    .await
}

async fn redis_row(args: &BenchArgs, plan: &Plan) -> Row {
    baseline_row(REDIS, async {
        let system = RedisSystem::start(&args.redis, plan.tenants).await?;
        let mut clients = Vec::with_capacity(plan.clients);
        for _ in 0..plan.clients {
            clients.push(system.client().await?);
        }
        let measures = measure_all(&mut clients, plan, plan.tenants, None).await;
        system.clean().await?;
        measures
    })
    .await
}

async fn postgres_row(args: &BenchArgs, plan: &Plan) -> Row {
    baseline_row(POSTGRES, async {
        let system = PostgresSystem::start(&args.postgres, plan.tenants).await?;
        let mut clients = Vec::with_capacity(plan.clients);
        for _ in 0..plan.clients {
            clients.push(system.client().await?);
        }
        let measures = measure_all(&mut clients, plan, plan.tenants, None).await;
        drop(clients);
        system.clean().await?;
        measures
    })
    .await
}

/// The repetitions of one row, on the same clients.
async fn measure_all(
    clients: &mut Vec<Client>,
    plan: &Plan,
    tenants: usize,
    rate: Option<f64>,
) -> anyhow::Result<Vec<Measure>> {
    let mut measures = Vec::with_capacity(plan.repetitions);
    for repetition in 0..plan.repetitions {
        measures.push(measure(clients, plan.duration, tenants, repetition, rate).await?);
    }
    Ok(measures)
}

/// How [`measure_alternating`] cuts the rows' time: how many slices a row, how long each.
fn scrape_slices(plan: &Plan) -> (u32, Duration) {
    let slices = plan.repetitions as u32
        * (plan.duration.as_millis() / SCRAPE_EVERY.as_millis()).max(1) as u32;
    (slices, plan.duration * plan.repetitions as u32 / slices)
}

/// Two rows on the same clients, interleaved: without and with `/metrics` of the server
/// at `scrape_at` read every [`SCRAPE_EVERY`]. The rows' time is cut into slices of
/// about [`SCRAPE_EVERY`] (one scrape in each scraped slice), run A B B A A B ..., and
/// each slice is a repetition of its row: pair `i` is the `i`-th slice of each, and a
/// stall of the machine (a checkpoint, a view window, another process) falls on one
/// pair rather than on one row. A first run, not counted, warms the connections, caches
/// and allocator, which would otherwise favour the second row.
async fn measure_alternating(
    clients: &mut Vec<Client>,
    plan: &Plan,
    tenants: usize,
    scrape_at: std::net::SocketAddr,
) -> anyhow::Result<(Vec<Measure>, Vec<Measure>)> {
    let (slices, slice) = scrape_slices(plan);
    // Ids never repeat within one ledger: every run of the clients gets its own number.
    let mut run = 0;
    measure(clients, plan.duration, tenants, run, None).await?;
    let mut rows = [Vec::new(), Vec::new()];
    for pair in 0..slices {
        let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
        for row in order {
            let scraper = match row {
                1 => Some(Scraper::start(scrape_at).await?),
                _ => None,
            };
            run += 1;
            let measured = measure(clients, slice, tenants, run, None).await;
            if let Some(scraper) = scraper {
                let scrapes = scraper.stop().await?;
                anyhow::ensure!(scrapes > 0, "/metrics was never scraped during a slice");
            }
            rows[row].push(measured?);
        }
    }
    let [plain, scraped] = rows;
    Ok((plain, scraped))
}

/// Every client runs transactions until the deadline; one repetition's figures.
async fn measure(
    clients: &mut Vec<Client>,
    duration: Duration,
    tenants: usize,
    repetition: usize,
    rate: Option<f64>,
) -> anyhow::Result<Measure> {
    let count = clients.len();
    // Paced clients start spread over one interval, so the load arrives evenly.
    let interval = rate
        .filter(|rate| *rate > 0.0)
        .map(|rate| Duration::from_secs_f64(count as f64 / rate));
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = clients
        .drain(..)
        .enumerate()
        .map(|(index, mut client)| {
            let generator = Generator::new(index, tenants, repetition, client.is_baseline());
            let offset = interval.map(|interval| interval.mul_f64(index as f64 / count as f64));
            tokio::spawn(async move {
                let samples = drive(&mut client, generator, deadline, interval, offset).await;
                (client, samples)
            })
        })
        .collect();
    let mut totals = Samples::default();
    for task in tasks {
        let (client, samples) = task.await.context("a bench client panicked")?;
        clients.push(client);
        totals.merge(samples);
    }
    if let Some(error) = &totals.first_error {
        tracing::warn!(failures = totals.failures, %error, "requests failed during the bench");
    }
    Ok(totals.measure(started.elapsed().as_secs_f64()))
}

/// One client's loop: authorize, then settle what was admitted, as a gateway would.
async fn drive(
    client: &mut Client,
    mut generator: Generator,
    deadline: Instant,
    interval: Option<Duration>,
    offset: Option<Duration>,
) -> Samples {
    let started = Instant::now() + offset.unwrap_or_default();
    let mut samples = Samples::default();
    let mut scheduled = 0u32;
    while Instant::now() < deadline {
        if let Some(interval) = interval {
            let at = started + interval * scheduled;
            scheduled += 1;
            if at >= deadline {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
        }
        let transaction = generator.next_transaction();
        let begun = Instant::now();
        match client.authorize(&transaction).await {
            Ok(admitted) => {
                samples
                    .authorize_us
                    .push(begun.elapsed().as_micros() as u64);
                if !admitted {
                    continue;
                }
                if client.settles_itself() {
                    samples.transactions += 1;
                    continue;
                }
            }
            Err(error) => {
                samples.fail(&error);
                continue;
            }
        }
        let begun = Instant::now();
        match client.settle(&transaction).await {
            Ok(()) => {
                samples.settle_us.push(begun.elapsed().as_micros() as u64);
                samples.transactions += 1;
            }
            Err(error) => samples.fail(&error),
        }
    }
    samples
}

/// A target of the speed issue, checked on this run's figures.
#[derive(Serialize)]
struct Target {
    name: &'static str,
    goal: String,
    reached: Option<f64>,
    met: bool,
}

fn targets(rows: &[Row], large: &str, replay: Option<&replay_speed::ReplaySpeed>) -> Vec<Target> {
    let find = |name: &str| {
        rows.iter()
            .find(|row| row.name == name && row.error.is_none())
    };
    let rate = |name: &str| find(name).map(|row| row.txn_per_s);
    let ratio = |over: &str, under: &str| match (rate(over), rate(under)) {
        (Some(over), Some(under)) if under > 0.0 => Some(over / under),
        _ => None,
    };
    let at_least = |name: &'static str, goal: String, reached: Option<f64>, bound: f64| Target {
        name,
        goal,
        met: reached.is_some_and(|reached| reached >= bound),
        reached,
    };
    let at_most = |name: &'static str, goal: String, reached: Option<f64>, bound: f64| Target {
        name,
        goal,
        met: reached.is_some_and(|reached| reached <= bound),
        reached,
    };
    let ledger = |name: &str| find(name).and_then(|row| row.ledger);
    // Rows whose repetitions were alternated: the median of the pairs' ratios.
    let paired_ratio = |over: &str, under: &str| {
        let (over, under) = (find(over)?, find(under)?);
        let mut ratios: Vec<f64> = over
            .repetitions_txn_per_s
            .iter()
            .zip(&under.repetitions_txn_per_s)
            .filter(|(_, under)| **under > 0.0)
            .map(|(over, under)| over / under)
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios.get(ratios.len() / 2).copied()
    };
    let half_peak_p99 = find(HALF_PEAK).map(|row| row.authorize_p99_us as f64);
    vec![
        at_least(
            "durable throughput",
            "(1) >= 100,000 txn/s".to_owned(),
            rate(IN_PROCESS),
            100_000.0,
        ),
        at_least(
            "against Redis + Lua",
            "(1) / (4) >= 3".to_owned(),
            ratio(IN_PROCESS, REDIS),
            3.0,
        ),
        at_least(
            "against naive PostgreSQL",
            "(1) / (5) >= 20".to_owned(),
            ratio(IN_PROCESS, POSTGRES),
            20.0,
        ),
        at_least(
            "lots",
            "5 lots a tenant / (1) >= 0.9".to_owned(),
            ratio(LOTS, IN_PROCESS),
            0.9,
        ),
        at_least(
            "price of wasm",
            "(1) / (2) >= 0.7".to_owned(),
            ratio(IN_PROCESS, NATIVE),
            0.7,
        ),
        at_most(
            "latency at half peak",
            "authorize p99 <= 2000 µs".to_owned(),
            half_peak_p99,
            2000.0,
        ),
        at_least(
            "HTTP sidecar",
            "(3) / bare axum >= 0.5".to_owned(),
            ratio(HTTP, BARE_AXUM),
            0.5,
        ),
        at_least(
            "/metrics scraped",
            "scraped / (3), alternated, >= 0.97".to_owned(),
            paired_ratio(SCRAPED, HTTP),
            0.97,
        ),
        at_least(
            "proxy throughput",
            "proxy / direct >= 0.5".to_owned(),
            ratio(GATEWAY_PROXY, GATEWAY_DIRECT),
            0.5,
        ),
        at_most(
            "proxy latency",
            "at 1,000/s: proxy p50 - direct p50 <= 1000 µs".to_owned(),
            find(GATEWAY_PROXY_PACED)
                .zip(find(GATEWAY_DIRECT_PACED))
                .map(|(proxy, direct)| {
                    proxy.authorize_p50_us as f64 - direct.authorize_p50_us as f64
                }),
            1000.0,
        ),
        at_least(
            "tower layer",
            "layer / bare handler >= 0.5".to_owned(),
            ratio(GATEWAY_LAYER, GATEWAY_DIRECT),
            0.5,
        ),
        at_least(
            "many tenants",
            "(6) large / (1) >= 0.8".to_owned(),
            ratio(large, IN_PROCESS),
            0.8,
        ),
        at_most(
            "memory, large row",
            "(6) peak RSS <= 512 MiB".to_owned(),
            find(large)
                .and_then(|row| row.rss_bytes)
                .map(|bytes| bytes as f64 / f64::from(1 << 20)),
            512.0,
        ),
        at_least(
            "PostgreSQL, 1 replica",
            "1 replica / (5) >= 1.32 (before the log)".to_owned(),
            ratio(PG_ONE, POSTGRES),
            1.32,
        ),
        at_least(
            "steady as the ledger grows",
            "(1) last / first repetition >= 0.9".to_owned(),
            find(IN_PROCESS).and_then(|row| {
                let rates = &row.repetitions_txn_per_s;
                Some(rates.last()? / rates.first().filter(|first| **first > 0.0)?)
            }),
            0.9,
        ),
        at_most(
            "disk per transaction",
            "(1) <= 1024 bytes".to_owned(),
            ledger(IN_PROCESS).map(|ledger| ledger.disk_bytes_per_txn),
            1024.0,
        ),
        at_most(
            "restart, large ledger",
            "(6) <= 10,000 ms".to_owned(),
            ledger(large).map(|ledger| ledger.restart_ms),
            10_000.0,
        ),
        at_least(
            "replay speed, 1 thread",
            "replay >= 50,000 txn/s".to_owned(),
            replay.and_then(|replay| replay.rate(1)),
            replay_speed::TARGET_TXN_PER_S,
        ),
        at_least(
            "replay speed, 2 threads",
            "replay >= 50,000 txn/s".to_owned(),
            replay.and_then(|replay| replay.rate(2)),
            replay_speed::TARGET_TXN_PER_S,
        ),
    ]
}

fn record(rows: &mut Vec<Row>, row: Row) {
    print_row(&row);
    rows.push(row);
}

fn print_header() {
    println!(
        "{:<55} {:>9}   {:>22}   {:>22}   {:>9}   {:>10}",
        "row", "txn/s", "authorize p50/p99/p999", "settle p50/p99/p999", "peak RSS", "per commit"
    );
    println!(
        "{:<55} then each repetition's txn/s; on SQLite: disk bytes per transaction, the \
         views' worst lag, the time to open the ledger again",
        ""
    );
}

fn print_row(row: &Row) {
    if let Some(error) = &row.error {
        println!("{:<55} unavailable: {error}", row.name);
        return;
    }
    let rss = row.rss_bytes.map_or_else(
        || "-".to_owned(),
        |bytes| format!("{} MiB", bytes / (1024 * 1024)),
    );
    let per_commit = row
        .decisions_per_commit
        .map_or_else(|| "-".to_owned(), |decisions| format!("{decisions:.1}"));
    println!(
        "{:<55} {:>9.0}   {:>19} µs   {:>19} µs   {:>9}   {:>10}{}",
        row.name,
        row.txn_per_s,
        format!(
            "{}/{}/{}",
            row.authorize_p50_us, row.authorize_p99_us, row.authorize_p999_us
        ),
        format!(
            "{}/{}/{}",
            row.settle_p50_us, row.settle_p99_us, row.settle_p999_us
        ),
        rss,
        per_commit,
        if row.failures > 0 {
            format!("   failures {}", row.failures)
        } else {
            String::new()
        }
    );
    let repetitions: Vec<String> = row
        .repetitions_txn_per_s
        .iter()
        .map(|rate| format!("{rate:.0}"))
        .collect();
    let ledger = row.ledger.map_or_else(String::new, |ledger| {
        format!(
            "; disk {:.0} B/txn; views lag ≤ {:.1} ms; restart {:.0} ms",
            ledger.disk_bytes_per_txn, ledger.views_lag_worst_ms, ledger.restart_ms
        )
    });
    println!("{:<55} repetitions {}{ledger}", "", repetitions.join(", "));
}

fn print_targets(targets: &[Target]) {
    println!("targets (this run):");
    for target in targets {
        let reached = target
            .reached
            .map_or_else(|| "not measured".to_owned(), |value| format!("{value:.2}"));
        println!(
            "  {:<6} {:<27} {:<36} reached {reached}",
            if target.met { "met" } else { "MISSED" },
            target.name,
            target.goal
        );
    }
}

/// Activation time of a module never seen (compile + checks + switch) next to one
/// found precompiled in the cache (deserialize + checks + switch), in ms; medians of 5.
fn activation_times(
    smarte: &std::path::Path,
    donoratlas: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<(f64, f64)> {
    let smarte = super::read_policy(smarte)?;
    let donoratlas = super::read_policy(donoratlas)?;
    let (mut fresh, mut precompiled) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let dir = tempfile::Builder::new()
            .prefix("creditgate-bench-")
            .tempdir_in(dir)?;
        let mut config = MeterConfig::new(dir.path().join("ledger.db"));
        config.compile_cache_dir = Some(dir.path().join("cache"));
        let meter = Meter::open(config, PolicySource::Component(smarte.clone()))?;
        let started = Instant::now();
        meter.activate(donoratlas.clone(), "bench")?;
        fresh.push(started.elapsed());
        meter.activate(smarte.clone(), "bench")?;
        let started = Instant::now();
        meter.activate(donoratlas.clone(), "bench")?;
        precompiled.push(started.elapsed());
    }
    fresh.sort();
    precompiled.sort();
    Ok((
        fresh[2].as_secs_f64() * 1e3,
        precompiled[2].as_secs_f64() * 1e3,
    ))
}

/// How long the disk of the ledgers takes to make 4 KiB durable.
fn fsync_latency_us(dir: &std::path::Path) -> anyhow::Result<stats::Percentiles> {
    use std::io::{Seek, Write};
    let mut file = tempfile::tempfile_in(dir)?;
    let page = [0u8; 4096];
    let mut samples = Vec::with_capacity(64);
    for _ in 0..64 {
        file.rewind()?;
        file.write_all(&page)?;
        let started = Instant::now();
        file.sync_data()?;
        samples.push(started.elapsed().as_micros() as u64);
    }
    samples.sort_unstable();
    Ok(stats::Percentiles::of(&samples))
}

fn thousands(value: usize) -> String {
    let digits = value.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// Today's date (UTC) as YYYY-MM-DD, from the civil calendar of the Unix epoch.
fn today() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let days = (seconds / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
