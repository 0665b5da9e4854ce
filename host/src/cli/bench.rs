//! `creditgate bench`: authorize+settle throughput and latency, in process and over
//! HTTP, with the wasm policies and with the same rules linked natively, from one run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use creditgate::api::{AppState, router};
use creditgate::model::{AuthorizeRequest, GrantRequest, SettleRequest};
use creditgate::{Meter, MeterConfig, NativePolicy, PolicySource};

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "target/wasm32-wasip2/release/smarte.wasm")]
    smarte: PathBuf,
    #[arg(long, default_value = "target/wasm32-wasip2/release/donoratlas.wasm")]
    donoratlas: PathBuf,
    /// Client threads, each running authorize then settle in a loop.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    #[arg(long, default_value_t = 1000)]
    tenants: usize,
    /// How long each row runs.
    #[arg(long, default_value_t = 3000)]
    duration_ms: u64,
    /// A few hundred milliseconds per row: checks that the benchmark runs.
    #[arg(long)]
    quick: bool,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A second build of the SMARTe rules (another digest) to swap with while measuring
    /// latency during activations.
    #[arg(
        long,
        default_value = "target/wasm32-wasip2/release/charges_on_429.wasm"
    )]
    swap_with: PathBuf,
    /// Where the temporary ledgers go.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Smarte,
    DonorAtlas,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    InProcess,
    Http,
}

#[derive(Serialize)]
struct Row {
    name: String,
    transactions: u64,
    txn_per_s: f64,
    authorize_p50_us: u64,
    authorize_p99_us: u64,
    authorize_p999_us: u64,
    settle_p50_us: u64,
    settle_p99_us: u64,
    settle_p999_us: u64,
    failures: u64,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let duration = Duration::from_millis(if args.quick { 300 } else { args.duration_ms });
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "creditgate bench: {cores} cores, {} clients, {} tenants, {} ms per row, durable SQLite (synchronous=FULL)",
        args.clients,
        args.tenants,
        duration.as_millis()
    );
    let mut rows = Vec::new();
    for workload in [Workload::Smarte, Workload::DonorAtlas] {
        for native in [false, true] {
            for transport in [Transport::InProcess, Transport::Http] {
                let row = run_row(&args, workload, native, transport, duration, None)?;
                print_row(&row);
                rows.push(row);
            }
        }
    }
    let swaps = [
        super::read_policy(&args.swap_with)?,
        super::read_policy(&args.smarte)?,
    ];
    let during_swaps = run_row(
        &args,
        Workload::Smarte,
        false,
        Transport::InProcess,
        duration,
        Some(swaps),
    )?;
    print_row(&during_swaps);
    rows.push(during_swaps);
    print_ratios(&rows);
    print_activation(&args)?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn run_row(
    args: &BenchArgs,
    workload: Workload,
    native: bool,
    transport: Transport,
    duration: Duration,
    swap_between: Option<[Vec<u8>; 2]>,
) -> anyhow::Result<Row> {
    let name = format!(
        "{} {} {}{}",
        match workload {
            Workload::Smarte => "smarte",
            Workload::DonorAtlas => "donoratlas",
        },
        if native { "native" } else { "wasm" },
        match transport {
            Transport::InProcess => "in-process",
            Transport::Http => "http",
        },
        if swap_between.is_some() {
            " during swaps"
        } else {
            ""
        }
    );
    let source = match (workload, native) {
        (Workload::Smarte, false) => PolicySource::Component(super::read_policy(&args.smarte)?),
        (Workload::DonorAtlas, false) => {
            PolicySource::Component(super::read_policy(&args.donoratlas)?)
        }
        (Workload::Smarte, true) => PolicySource::Native(NativePolicy::Smarte),
        (Workload::DonorAtlas, true) => PolicySource::Native(NativePolicy::DonorAtlas),
    };
    let db = args
        .dir
        .join(format!("creditgate-bench-{}.db", uuid::Uuid::now_v7()));
    let meter = Arc::new(Meter::open(MeterConfig::new(&db), source)?);
    grant_everyone(&meter, args.tenants, args.clients)?;
    let server = match transport {
        Transport::InProcess => None,
        Transport::Http => Some(HttpServer::start(Arc::clone(&meter))?),
    };
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let workers: Vec<_> = (0..args.clients)
        .map(|client| {
            let meter = Arc::clone(&meter);
            let base = server.as_ref().map(|server| server.base.clone());
            let tenants = args.tenants;
            std::thread::spawn(move || {
                let mut client_api: Box<dyn Client> = match base {
                    Some(base) => Box::new(HttpClient::new(base)),
                    None => Box::new(InProcessClient(meter)),
                };
                drive(client_api.as_mut(), workload, client, tenants, deadline)
            })
        })
        .collect();
    // Activations every SWAP_EVERY, alternating two builds, while the clients run.
    let swapper = swap_between.map(|modules| {
        let meter = Arc::clone(&meter);
        std::thread::spawn(move || -> anyhow::Result<usize> {
            let mut swaps = 0;
            while Instant::now() < deadline {
                std::thread::sleep(SWAP_EVERY);
                meter.activate(modules[swaps % 2].clone(), "bench")?;
                swaps += 1;
            }
            Ok(swaps)
        })
    });
    let mut totals = Samples::default();
    for worker in workers {
        let samples = worker
            .join()
            .map_err(|_| anyhow::anyhow!("a bench client panicked"))?;
        totals.merge(samples);
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(swapper) = swapper {
        let swaps = swapper
            .join()
            .map_err(|_| anyhow::anyhow!("the swapper panicked"))??;
        anyhow::ensure!(swaps > 0, "no swap happened during the row");
    }
    drop(server);
    let violations = meter.invariant_violations()?;
    anyhow::ensure!(
        violations.is_empty(),
        "ledger invariants broke: {violations:?}"
    );
    drop(meter);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    Ok(totals.row(name, elapsed))
}

fn grant_everyone(meter: &Arc<Meter>, tenants: usize, clients: usize) -> anyhow::Result<()> {
    let balances = meter.policy().balances.clone();
    let threads: Vec<_> = (0..clients.max(1))
        .map(|client| {
            let meter = Arc::clone(meter);
            let balances = balances.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                for tenant in (client..tenants).step_by(clients.max(1)) {
                    for balance in &balances {
                        meter.grant(GrantRequest {
                            grant_id: format!("bench-{tenant}-{balance}"),
                            tenant: format!("tenant-{tenant}"),
                            balance: balance.clone(),
                            amount: 1_000_000_000_000,
                        })?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a grant thread panicked"))??;
    }
    Ok(())
}

trait Client {
    fn authorize(&mut self, request: &AuthorizeRequest) -> anyhow::Result<bool>;
    fn settle(&mut self, request: &SettleRequest) -> anyhow::Result<()>;
}

struct InProcessClient(Arc<Meter>);

impl Client for InProcessClient {
    fn authorize(&mut self, request: &AuthorizeRequest) -> anyhow::Result<bool> {
        Ok(self.0.authorize(request.clone())?.admitted)
    }

    fn settle(&mut self, request: &SettleRequest) -> anyhow::Result<()> {
        self.0.settle(request.clone())?;
        Ok(())
    }
}

struct HttpClient {
    agent: ureq::Agent,
    authorize_url: String,
    settle_url: String,
}

impl HttpClient {
    fn new(base: String) -> Self {
        Self {
            agent: ureq::AgentBuilder::new()
                .max_idle_connections_per_host(4)
                .build(),
            authorize_url: format!("{base}/v1/authorize"),
            settle_url: format!("{base}/v1/settle"),
        }
    }
}

impl Client for HttpClient {
    fn authorize(&mut self, request: &AuthorizeRequest) -> anyhow::Result<bool> {
        let answer: serde_json::Value = self
            .agent
            .post(&self.authorize_url)
            .send_json(request)?
            .into_json()?;
        Ok(answer["admitted"] == serde_json::Value::Bool(true))
    }

    fn settle(&mut self, request: &SettleRequest) -> anyhow::Result<()> {
        self.agent.post(&self.settle_url).send_json(request)?;
        Ok(())
    }
}

/// The sidecar on a loopback port, on its own runtime, for one row.
struct HttpServer {
    base: String,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HttpServer {
    fn start(meter: Arc<Meter>) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(Arc::new(AppState {
            meter,
            admin_token: None,
        }));
        runtime.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            base,
            runtime: Some(runtime),
            stop: Some(stop),
        })
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

#[derive(Default)]
struct Samples {
    authorize_us: Vec<u64>,
    settle_us: Vec<u64>,
    transactions: u64,
    failures: u64,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.authorize_us.extend(other.authorize_us);
        self.settle_us.extend(other.settle_us);
        self.transactions += other.transactions;
        self.failures += other.failures;
    }

    fn row(mut self, name: String, elapsed_s: f64) -> Row {
        self.authorize_us.sort_unstable();
        self.settle_us.sort_unstable();
        Row {
            name,
            transactions: self.transactions,
            txn_per_s: self.transactions as f64 / elapsed_s.max(f64::EPSILON),
            authorize_p50_us: percentile(&self.authorize_us, 0.50),
            authorize_p99_us: percentile(&self.authorize_us, 0.99),
            authorize_p999_us: percentile(&self.authorize_us, 0.999),
            settle_p50_us: percentile(&self.settle_us, 0.50),
            settle_p99_us: percentile(&self.settle_us, 0.99),
            settle_p999_us: percentile(&self.settle_us, 0.999),
            failures: self.failures,
        }
    }
}

fn percentile(sorted: &[u64], quantile: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() - 1) as f64 * quantile).round() as usize;
    sorted.get(rank).copied().unwrap_or(0)
}

/// A small deterministic generator (xorshift64*): reproducible workloads, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }
}

/// One client's loop: authorize then settle, as a gateway would, until the deadline.
fn drive(
    client: &mut dyn Client,
    workload: Workload,
    client_id: usize,
    tenants: usize,
    deadline: Instant,
) -> Samples {
    let mut rng =
        Rng(0x9e37_79b9_7f4a_7c15 ^ (client_id as u64 + 1).wrapping_mul(0x1000_0000_01b3));
    let mut samples = Samples::default();
    let mut sequence = 0u64;
    while Instant::now() < deadline {
        sequence += 1;
        let tenant = format!("tenant-{}", rng.below(tenants as u64));
        let transaction_id = format!("c{client_id}-{sequence}");
        let (operation, items, records) = match workload {
            Workload::Smarte => {
                let count = 1 + rng.below(3);
                let operation =
                    smarte::OPERATIONS[rng.below(smarte::OPERATIONS.len() as u64) as usize];
                let items = (0..count)
                    .map(|i| format!("record-{sequence}-{i}"))
                    .collect();
                (operation, items, count)
            }
            Workload::DonorAtlas => match rng.below(10) {
                0..=4 => {
                    let persons = (0..1 + rng.below(5))
                        .map(|i| format!("person-{i}"))
                        .collect();
                    ("enhance", persons, 0)
                }
                5..=7 => {
                    let donors = (0..1 + rng.below(3))
                        .map(|_| format!("donor-{}", rng.below(10_000)))
                        .collect();
                    ("export", donors, 0)
                }
                _ => ("search", Vec::new(), 0),
            },
        };
        let request = AuthorizeRequest {
            transaction_id: Some(transaction_id.clone()),
            tenant,
            operation: operation.to_owned(),
            items,
            ..AuthorizeRequest::default()
        };
        let started = Instant::now();
        let admitted = match client.authorize(&request) {
            Ok(admitted) => admitted,
            Err(_) => {
                samples.failures += 1;
                continue;
            }
        };
        samples
            .authorize_us
            .push(started.elapsed().as_micros() as u64);
        if !admitted {
            continue;
        }
        let settle = SettleRequest {
            transaction_id,
            status: 200,
            attributes: [("records".to_owned(), records.to_string())].into(),
            body: None,
        };
        let started = Instant::now();
        match client.settle(&settle) {
            Ok(()) => {
                samples.settle_us.push(started.elapsed().as_micros() as u64);
                samples.transactions += 1;
            }
            Err(_) => samples.failures += 1,
        }
    }
    samples
}

fn print_row(row: &Row) {
    println!(
        "{:<28} {:>10.0} txn/s   authorize p50 {:>6} p99 {:>6} p999 {:>6} µs   settle p50 {:>6} p99 {:>6} p999 {:>6} µs   failures {}",
        row.name,
        row.txn_per_s,
        row.authorize_p50_us,
        row.authorize_p99_us,
        row.authorize_p999_us,
        row.settle_p50_us,
        row.settle_p99_us,
        row.settle_p999_us,
        row.failures
    );
}

/// How often the "during swaps" row activates the other build.
const SWAP_EVERY: Duration = Duration::from_millis(100);

/// Activation time of a module never seen (compile + checks + switch) next to one
/// found precompiled in the cache (deserialize + checks + switch); medians of 5.
fn print_activation(args: &BenchArgs) -> anyhow::Result<()> {
    let smarte = super::read_policy(&args.smarte)?;
    let donoratlas = super::read_policy(&args.donoratlas)?;
    let (mut fresh, mut precompiled) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let dir = args
            .dir
            .join(format!("creditgate-bench-{}", uuid::Uuid::now_v7()));
        let mut config = MeterConfig::new(dir.join("ledger.db"));
        std::fs::create_dir_all(&dir)?;
        config.compile_cache_dir = Some(dir.join("cache"));
        let meter = Meter::open(config, PolicySource::Component(smarte.clone()))?;
        let started = Instant::now();
        meter.activate(donoratlas.clone(), "bench")?;
        fresh.push(started.elapsed());
        meter.activate(smarte.clone(), "bench")?;
        let started = Instant::now();
        meter.activate(donoratlas.clone(), "bench")?;
        precompiled.push(started.elapsed());
        drop(meter);
        let _ = std::fs::remove_dir_all(&dir);
    }
    fresh.sort();
    precompiled.sort();
    let (fresh, precompiled) = (fresh[2], precompiled[2]);
    println!(
        "activation (median of 5): new module {:.1} ms, precompiled {:.1} ms (new / precompiled = {:.1})",
        fresh.as_secs_f64() * 1e3,
        precompiled.as_secs_f64() * 1e3,
        fresh.as_secs_f64() / precompiled.as_secs_f64().max(f64::EPSILON)
    );
    Ok(())
}

fn print_ratios(rows: &[Row]) {
    let rate = |name: &str| {
        rows.iter()
            .find(|row| row.name == name)
            .map(|row| row.txn_per_s)
    };
    println!("ratios (same run):");
    for workload in ["smarte", "donoratlas"] {
        for transport in ["in-process", "http"] {
            if let (Some(wasm), Some(native)) = (
                rate(&format!("{workload} wasm {transport}")),
                rate(&format!("{workload} native {transport}")),
            ) {
                println!(
                    "  {workload} {transport}: wasm / native = {:.2}",
                    wasm / native.max(f64::EPSILON)
                );
            }
        }
        if let (Some(http), Some(local)) = (
            rate(&format!("{workload} wasm http")),
            rate(&format!("{workload} wasm in-process")),
        ) {
            println!(
                "  {workload} wasm: http / in-process = {:.2}",
                http / local.max(f64::EPSILON)
            );
        }
    }
    let row = |name: &str| rows.iter().find(|row| row.name == name);
    if let (Some(steady), Some(swapping)) = (
        row("smarte wasm in-process"),
        row("smarte wasm in-process during swaps"),
    ) {
        println!(
            "  smarte wasm in-process, a swap every {} ms: authorize p50 {} -> {} µs, p99 {} -> {} µs; txn/s ratio {:.2}",
            SWAP_EVERY.as_millis(),
            steady.authorize_p50_us,
            swapping.authorize_p50_us,
            steady.authorize_p99_us,
            swapping.authorize_p99_us,
            swapping.txn_per_s / steady.txn_per_s.max(f64::EPSILON)
        );
    }
}
