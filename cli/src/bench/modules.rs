//! The "policy modules" table: what each build of the reference rules costs the host,
//! whatever language it was written in. Per module: its size; its compile (no cache) and
//! its load from a compile cache; its activation on a live meter; its authorize calls
//! through a meter and alone, with the fuel they burn; and the memory a meter on it adds.
//! Printed as figures, never judged.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use creditgate::model::GrantRequest;
use creditgate::policy::component::{self, CompiledPolicy, Limits};
use creditgate::policy::{AuthorizeDecision, MarkAnswers, MarkLookup, PolicyRuntime, sdk};
use creditgate::{Meter, MeterConfig, MeterError, PolicySource};

use super::stats::{self, Percentiles};
use super::systems;
use super::workload::{Product, single_item, tenant_name};

/// A module to measure: a build of one product's rules.
pub struct Module {
    pub path: PathBuf,
    pub product: Product,
    /// What its rules are written in.
    pub language: &'static str,
}

/// One line of the table: the figures, or why there are none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleLine {
    pub module: String,
    pub language: String,
    pub figures: Option<ModuleFigures>,
    pub error: Option<String>,
}

impl ModuleLine {
    pub fn unavailable(module: &str, error: &anyhow::Error) -> Self {
        Self {
            module: module.to_owned(),
            language: String::new(),
            figures: None,
            error: Some(format!("{error:#}")),
        }
    }
}

/// A module's figures; the line of the native rules (no module) has only those of
/// its meter.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModuleFigures {
    pub bytes: Option<u64>,
    /// `CompiledPolicy::compile`, no cache: wasmtime compiles and links the component
    /// and calls its `describe` (quick runs: the first load into an empty compile cache,
    /// which writes it too).
    pub compile_ms: Option<f64>,
    /// Peak resident memory of this process the compile added (transient).
    pub compile_peak_rss_added_bytes: Option<i64>,
    /// `CompiledPolicy::load` from a compile cache holding it: deserialize, link,
    /// `describe`.
    pub cached_load_ms: Option<f64>,
    /// `Meter::activate` on a live meter running the native Rust rules of the same
    /// product, the module in the meter's compile cache: load, the contract probes, the
    /// switch. A module never seen adds its compile.
    pub activate_ms: Option<f64>,
    /// Authorize calls timed, each way.
    pub calls: usize,
    /// The first authorize through the meter, apart: the sequencer's instance of the
    /// module is made in it.
    pub first_authorize_us: u64,
    /// Through a meter on a SQLite ledger, from one thread, each settled: the durable
    /// commit is in it.
    pub authorize_us: Percentiles,
    /// The module's authorize called directly (no ledger, no commit).
    pub alone_us: Option<Percentiles>,
    /// Fuel one authorize alone burns, at the median.
    pub fuel_per_call: Option<u64>,
    /// Resident memory of this process a meter on the module (opened from the compile
    /// cache, ledger included) adds, after its calls.
    pub rss_added_bytes: Option<i64>,
    /// The same at its peak during the opening and the calls.
    pub peak_rss_added_bytes: Option<i64>,
    /// Calls that failed or were refused, either way.
    pub failures: u64,
    pub first_error: Option<String>,
}

/// The name of the line of the native rules.
const NATIVE: &str = "native SMARTe rules";

/// Measures a meter on the native SMARTe rules (no module: what the ledger and the meter
/// take, and the process's one-off costs), then each module in turn, on one engine;
/// `calls` authorize calls each way.
pub fn measure(
    modules: &[Module],
    limits: Limits,
    calls: usize,
    quick: bool,
    dir: &Path,
) -> Vec<ModuleLine> {
    let engine = component::engine();
    let native = measure_native(limits, calls, dir);
    let native = ModuleLine {
        module: NATIVE.to_owned(),
        language: "Rust".to_owned(),
        error: native.as_ref().err().map(|error| format!("{error:#}")),
        figures: native.ok(),
    };
    std::iter::once(native)
        .chain(modules.iter().map(|module| {
            let figures = match &engine {
                Ok(engine) => {
                    let load = |bytes: &[u8], cache: Option<&Path>| {
                        CompiledPolicy::load(engine, bytes, limits, cache)
                    };
                    measure_one(&load, module, limits, calls, quick, dir)
                }
                Err(error) => Err(anyhow::anyhow!("{error}")),
            };
            let (figures, error) = match figures {
                Ok(figures) => (Some(figures), None),
                Err(error) => (None, Some(format!("{error:#}"))),
            };
            ModuleLine {
                module: module.path.file_name().map_or_else(
                    || module.path.display().to_string(),
                    |name| name.to_string_lossy().into_owned(),
                ),
                language: module.language.to_owned(),
                figures,
                error,
            }
        }))
        .collect()
}

/// The native line: only the meter's figures.
fn measure_native(limits: Limits, calls: usize, dir: &Path) -> anyhow::Result<ModuleFigures> {
    let scratch = tempfile::Builder::new()
        .prefix("creditgate-bench-")
        .tempdir_in(dir)?;
    let mut config = MeterConfig::new(scratch.path().join("calls.db"));
    config.limits = limits;
    let mut failures = Failures::default();
    stats::trim_heap();
    stats::reset_peak_rss();
    let before = stats::resident_bytes();
    let meter = Meter::open(config, PolicySource::Native(Product::Smarte.native()))?;
    let (first_authorize_us, authorize_us) =
        call_through(&meter, Product::Smarte, calls, &mut failures)?;
    let (after, peak) = (stats::resident_bytes(), stats::peak_rss_bytes());
    drop(meter);
    Ok(ModuleFigures {
        calls,
        first_authorize_us,
        authorize_us,
        rss_added_bytes: added(before, after),
        peak_rss_added_bytes: added(before, peak),
        failures: failures.count,
        first_error: failures.first,
        ..ModuleFigures::default()
    })
}

/// Bytes from `before` to `after`, if the OS told both.
fn added(before: Option<u64>, after: Option<u64>) -> Option<i64> {
    Some(after? as i64 - before? as i64)
}

/// Calls that failed, and the first reason.
#[derive(Default)]
struct Failures {
    count: u64,
    first: Option<String>,
}

impl Failures {
    fn fail(&mut self, why: String) {
        self.count += 1;
        self.first.get_or_insert(why);
    }
}

/// [`CompiledPolicy::load`] on the table's engine and limits; no cache directory is
/// [`CompiledPolicy::compile`].
type Load<'a> = dyn Fn(&[u8], Option<&Path>) -> Result<Arc<CompiledPolicy>, MeterError> + 'a;

fn measure_one(
    load: &Load<'_>,
    module: &Module,
    limits: Limits,
    calls: usize,
    quick: bool,
    dir: &Path,
) -> anyhow::Result<ModuleFigures> {
    // The guests (Python, JavaScript) are built by `policy/build-guests`.
    let bytes = super::read_module(&module.path, module.language != "Rust")?;
    let scratch = tempfile::Builder::new()
        .prefix("creditgate-bench-")
        .tempdir_in(dir)?;
    let cache = scratch.path().join("cache");
    // The first load into the cache compiles and fills it; the second deserializes.
    // Quick runs time that first load as the compile rather than compile twice.
    // Each answers its time and the peak resident memory it added.
    let timed = |cache: Option<&Path>| -> anyhow::Result<(f64, Option<i64>)> {
        stats::trim_heap();
        stats::reset_peak_rss();
        let before = stats::resident_bytes();
        let started = Instant::now();
        drop(load(&bytes, cache)?);
        Ok((ms_since(started), added(before, stats::peak_rss_bytes())))
    };
    let compiled_cold = if quick { None } else { Some(timed(None)?) };
    let filled = timed(Some(&cache))?;
    let (compile_ms, compile_peak_rss_added_bytes) = compiled_cold.unwrap_or(filled);
    let started = Instant::now();
    let compiled = load(&bytes, Some(&cache))?;
    let cached_load_ms = ms_since(started);

    let mut failures = Failures::default();
    let (alone_us, fuel_per_call) = call_alone(&compiled, module.product, calls, &mut failures);
    drop(compiled);

    let config = |ledger: &str| {
        let mut config = MeterConfig::new(scratch.path().join(ledger));
        config.compile_cache_dir = Some(cache.clone());
        config.limits = limits;
        config
    };
    let activate_ms = {
        let meter = Meter::open(
            config("activate.db"),
            PolicySource::Native(module.product.native()),
        )?;
        let started = Instant::now();
        meter.activate(bytes.clone(), "bench")?;
        ms_since(started)
    };

    stats::trim_heap();
    stats::reset_peak_rss();
    let before = stats::resident_bytes();
    let meter = Meter::open(config("calls.db"), PolicySource::Component(bytes.clone()))?;
    let (first_authorize_us, authorize_us) =
        call_through(&meter, module.product, calls, &mut failures)?;
    let (after, peak) = (stats::resident_bytes(), stats::peak_rss_bytes());
    drop(meter);
    Ok(ModuleFigures {
        bytes: Some(bytes.len() as u64),
        compile_ms: Some(compile_ms),
        compile_peak_rss_added_bytes,
        cached_load_ms: Some(cached_load_ms),
        activate_ms: Some(activate_ms),
        calls,
        first_authorize_us,
        authorize_us,
        alone_us: Some(alone_us),
        fuel_per_call: Some(fuel_per_call),
        rss_added_bytes: added(before, after),
        peak_rss_added_bytes: added(before, peak),
        failures: failures.count,
        first_error: failures.first,
    })
}

/// The module's authorize called directly `calls` times (after one untimed call that
/// makes the instance): its latencies and the median fuel a call burns.
fn call_alone(
    compiled: &Arc<CompiledPolicy>,
    product: Product,
    calls: usize,
    failures: &mut Failures,
) -> (Percentiles, u64) {
    let mut runtime = compiled.runtime(Rc::new(NothingMarked));
    let balances: Vec<sdk::BalanceState> = compiled
        .info()
        .balances
        .iter()
        .map(|balance| sdk::BalanceState::new(balance.clone(), systems::GRANT))
        .collect();
    let (mut samples, mut fuel) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    for call in 0..=calls {
        let transaction = single_item(product, tenant_name(0), format!("alone-{call}"), call);
        let request = sdk::Request {
            transaction_id: transaction.settle.transaction_id,
            tenant: transaction.authorize.tenant,
            operation: transaction.authorize.operation,
            items: transaction.authorize.items,
            attributes: Vec::new(),
            body: None,
        };
        let started = Instant::now();
        let decided = runtime.authorize(&request, &balances);
        let us = started.elapsed().as_micros() as u64;
        match decided {
            Ok(AuthorizeDecision::Admit { .. }) => {}
            Ok(AuthorizeDecision::Reject { code, message, .. }) => {
                failures.fail(format!("called alone, refused: {code}: {message}"));
            }
            Err(error) => failures.fail(format!("called alone: {error}")),
        }
        if call > 0 {
            samples.push(us);
            fuel.push(runtime.last_cost().fuel);
        }
    }
    samples.sort_unstable();
    fuel.sort_unstable();
    (
        Percentiles::of(&samples),
        fuel.get(fuel.len() / 2).copied().unwrap_or(0),
    )
}

/// `calls` + 1 authorize calls through `meter` from this thread, each settled, on a
/// tenant granted plenty: the first one's time, and the others' latencies.
fn call_through(
    meter: &Meter,
    product: Product,
    calls: usize,
    failures: &mut Failures,
) -> anyhow::Result<(u64, Percentiles)> {
    for balance in meter.policy().balances.clone() {
        meter.grant(GrantRequest {
            grant_id: format!("bench-{balance}"),
            tenant: tenant_name(0),
            balance,
            amount: systems::GRANT,
            terms: Default::default(),
        })?;
    }
    let mut first_us = 0;
    let mut samples = Vec::with_capacity(calls);
    for call in 0..=calls {
        let transaction = single_item(product, tenant_name(0), format!("bench-{call}"), call);
        let started = Instant::now();
        let authorized = meter.authorize(transaction.authorize);
        let us = started.elapsed().as_micros() as u64;
        match authorized {
            Ok(authorization) if authorization.admitted => {
                if let Err(error) = meter.settle(transaction.settle) {
                    failures.fail(format!("settle: {error}"));
                }
            }
            Ok(authorization) => failures.fail(format!(
                "refused: {}",
                authorization
                    .error
                    .map_or_else(String::new, |error| format!(
                        "{}: {}",
                        error.code, error.message
                    ))
            )),
            Err(error) => {
                failures.fail(format!("authorize: {error}"));
                continue;
            }
        }
        match call {
            0 => first_us = us,
            _ => samples.push(us),
        }
    }
    samples.sort_unstable();
    Ok((first_us, Percentiles::of(&samples)))
}

/// The ledger of the direct calls: nothing was ever marked.
struct NothingMarked;

impl MarkLookup for NothingMarked {
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

fn ms_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

pub fn print(lines: &[ModuleLine], limits: Limits, calls: usize, quick: bool) {
    println!(
        "policy modules, measured in a process of their own: compile = {}, and (the peak \
         resident memory it added); load = from a compile cache holding it (deserialize, link, \
         describe);",
        if quick {
            "the first load into an empty compile cache (quick: compile, link, describe, \
             cache write)"
        } else {
            "CompiledPolicy::compile, no cache (compile, link, describe)"
        }
    );
    println!(
        "  activate = Meter::activate on a live meter running the native Rust rules of the \
         product, the module in its cache (load, contract probes, switch);"
    );
    println!(
        "  authorize = {} single-item calls (SMARTe person.enrich, DonorAtlas enhance) through \
         a meter on a SQLite ledger, one thread, each settled, its durable commit included; \
         1st = the first of them, apart (it makes the instance);",
        super::thousands(calls)
    );
    println!(
        "  alone = the module's authorize called directly, no ledger; fuel = its median a call \
         (budget {}; wall bound {} ms a call);",
        super::thousands(limits.fuel_per_call as usize),
        limits.wall_ms_per_call
    );
    println!(
        "  RSS = resident memory added by opening a meter on the module (from \
         the cache) and its calls, ledger included: after them / at the peak; the first line \
         is the same without a module"
    );
    println!(
        "{:<20} {:<10} {:>7} {:>16} {:>7} {:>8} {:>6} {:>20} {:>16} {:>9} {:>11}",
        "module",
        "language",
        "size MB",
        "compile ms (MiB)",
        "load ms",
        "activ ms",
        "1st ms",
        "authorize µs p50/p99",
        "alone µs p50/p99",
        "fuel/call",
        "RSS MiB"
    );
    let dash = || "-".to_owned();
    for line in lines {
        let Some(figures) = &line.figures else {
            println!(
                "{:<20} {:<10} unavailable: {}",
                line.module,
                line.language,
                line.error.as_deref().unwrap_or("")
            );
            continue;
        };
        let mib = |bytes: Option<i64>| {
            bytes.map_or_else(dash, |bytes| {
                format!("{:.1}", bytes as f64 / f64::from(1 << 20))
            })
        };
        let ms = |ms: Option<f64>| ms.map_or_else(dash, |ms| format!("{ms:.1}"));
        let pair = |figures: &Percentiles| format!("{}/{}", figures.p50, figures.p99);
        println!(
            "{:<20} {:<10} {:>7} {:>16} {:>7} {:>8} {:>6.2} {:>20} {:>16} {:>9} {:>11}{}",
            line.module,
            line.language,
            figures
                .bytes
                .map_or_else(dash, |bytes| format!("{:.2}", bytes as f64 / 1e6)),
            match figures.compile_ms {
                Some(compile_ms) => format!(
                    "{compile_ms:.1} ({})",
                    mib(figures.compile_peak_rss_added_bytes)
                ),
                None => dash(),
            },
            ms(figures.cached_load_ms),
            ms(figures.activate_ms),
            figures.first_authorize_us as f64 / 1e3,
            pair(&figures.authorize_us),
            figures.alone_us.as_ref().map_or_else(dash, pair),
            figures
                .fuel_per_call
                .map_or_else(dash, |fuel| super::thousands(fuel as usize)),
            format!(
                "{}/{}",
                mib(figures.rss_added_bytes),
                mib(figures.peak_rss_added_bytes)
            ),
            match &figures.first_error {
                Some(error) => format!("   failures {}: {error}", figures.failures),
                None => String::new(),
            }
        );
    }
}

/// Whether a line shows a module that could not be measured or whose calls failed.
pub fn failed(line: &ModuleLine) -> bool {
    line.figures
        .as_ref()
        .is_none_or(|figures| figures.failures > 0)
}
