//! The "activation under traffic" table: what a client sees while a module is
//! activated, compiled cold, on the meter it calls. One client thread sends authorize +
//! settle back to back to a meter on SQLite running a product's Rust rules; another
//! thread activates a module of the same product (no compile cache: it compiles); the
//! authorize latencies and the rate are shown in the window before, during the
//! activation (compile, contract checks, switch) and after the switch, side by side.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use creditgate::model::GrantRequest;
use creditgate::policy::component::Limits;
use creditgate::{Meter, MeterConfig, PolicySource};

use super::systems;
use super::workload::{Product, single_item, tenant_name};

/// Tenants the client's calls go round.
const TENANTS: usize = 100;

/// A module to activate under traffic, on a meter running `base`.
pub struct Candidate {
    pub path: PathBuf,
    /// The Rust build of the same product's rules the meter runs before.
    pub base: PathBuf,
    pub product: Product,
    pub language: &'static str,
    /// A guest of `policy/build-guests` (for the message when it is missing).
    pub guest: bool,
    /// Why it is not measured in this run, if it is not.
    pub skipped: Option<String>,
}

/// One module's line.
#[derive(Debug, Clone, Serialize)]
pub struct ActivationLine {
    pub module: String,
    pub language: String,
    pub bytes: Option<u64>,
    /// `Meter::activate`, compiled cold: compile, contract checks, switch.
    pub activate_ms: Option<f64>,
    /// Before, during the activation, after the switch.
    pub windows: Vec<Window>,
    /// The first authorize begun after the switch (the new module's instance is made
    /// in it or before it).
    pub first_after_switch_us: Option<u64>,
    /// Answers after the switch that the new module gave, of all after it.
    pub answered_by_new: u64,
    pub failures: u64,
    pub first_error: Option<String>,
    /// Why there are no figures: skipped, or could not run.
    pub error: Option<String>,
    pub skipped: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub name: &'static str,
    pub ms: f64,
    /// Authorizes answered (begun in the window).
    pub calls: u64,
    /// Transactions (authorize and settle) begun in the window, over its length.
    pub txn_per_s: f64,
    pub authorize_p50_us: u64,
    pub authorize_p99_us: u64,
    pub authorize_max_us: u64,
}

/// One authorize of the client.
struct Call {
    begun: Instant,
    us: u64,
    settled: bool,
    digest: String,
}

pub fn measure(
    candidates: &[Candidate],
    window: Duration,
    limits: Limits,
    dir: &Path,
) -> Vec<ActivationLine> {
    candidates
        .iter()
        .map(|candidate| {
            let module = candidate.path.file_name().map_or_else(
                || candidate.path.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            );
            let empty = |error: String, skipped: bool| ActivationLine {
                module: module.clone(),
                language: candidate.language.to_owned(),
                bytes: None,
                activate_ms: None,
                windows: Vec::new(),
                first_after_switch_us: None,
                answered_by_new: 0,
                failures: 0,
                first_error: None,
                error: Some(error),
                skipped,
            };
            if let Some(why) = &candidate.skipped {
                return empty(why.clone(), true);
            }
            // What an earlier line (a compile of CPython's component) freed is not this
            // one's to page back in.
            super::stats::trim_heap();
            measure_one(candidate, &module, window, limits, dir)
                .unwrap_or_else(|error| empty(format!("{error:#}"), false))
        })
        .collect()
}

fn measure_one(
    candidate: &Candidate,
    module: &str,
    window: Duration,
    limits: Limits,
    dir: &Path,
) -> anyhow::Result<ActivationLine> {
    let bytes = super::read_module(&candidate.path, candidate.guest)?;
    let base = super::read_module(&candidate.base, false)?;
    let scratch = tempfile::Builder::new()
        .prefix("creditgate-bench-")
        .tempdir_in(dir)?;
    let mut config = MeterConfig::new(scratch.path().join("ledger.db"));
    // No compile cache: the activation compiles, as a module never seen does.
    config.compile_cache_dir = None;
    config.limits = limits;
    let meter = Arc::new(Meter::open(config, PolicySource::Component(base))?);
    for tenant in 0..TENANTS {
        for balance in meter.policy().balances.clone() {
            meter.grant(GrantRequest {
                grant_id: format!("bench-{tenant}-{balance}"),
                tenant: tenant_name(tenant),
                balance,
                amount: systems::GRANT,
                terms: Default::default(),
            })?;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let product = candidate.product;
    let client = std::thread::Builder::new()
        .name("bench-client".to_owned())
        .spawn({
            let (meter, stop) = (Arc::clone(&meter), Arc::clone(&stop));
            move || drive(&meter, product, &stop)
        })?;
    // Not counted: the first calls make the instance and warm the caches.
    std::thread::sleep(window / 3);
    let started = Instant::now();
    std::thread::sleep(window);
    let activating = Instant::now();
    let activated = meter.activate(bytes.clone(), "bench");
    let switched = Instant::now();
    if activated.is_ok() {
        std::thread::sleep(window);
    }
    stop.store(true, Ordering::Relaxed);
    let stopped_at = Instant::now();
    let (calls, failures, first_error) = client
        .join()
        .map_err(|_| anyhow::anyhow!("the bench client panicked"))?;
    activated?;
    drop(meter);

    let base_digest = calls.first().map(|call| call.digest.clone());
    let windows = [
        ("before", started, activating),
        ("during", activating, switched),
        ("after", switched, stopped_at),
    ]
    .into_iter()
    .map(|(name, from, to)| {
        let inside: Vec<&Call> = calls
            .iter()
            .filter(|call| call.begun >= from && call.begun < to)
            .collect();
        let mut us: Vec<u64> = inside.iter().map(|call| call.us).collect();
        us.sort_unstable();
        let seconds = (to - from).as_secs_f64();
        let percentiles = super::stats::Percentiles::of(&us);
        Window {
            name,
            ms: seconds * 1e3,
            calls: us.len() as u64,
            txn_per_s: inside.iter().filter(|call| call.settled).count() as f64
                / seconds.max(f64::EPSILON),
            authorize_p50_us: percentiles.p50,
            authorize_p99_us: percentiles.p99,
            authorize_max_us: us.last().copied().unwrap_or(0),
        }
    })
    .collect();
    let after: Vec<&Call> = calls.iter().filter(|call| call.begun >= switched).collect();
    Ok(ActivationLine {
        module: module.to_owned(),
        language: candidate.language.to_owned(),
        bytes: Some(bytes.len() as u64),
        activate_ms: Some((switched - activating).as_secs_f64() * 1e3),
        windows,
        first_after_switch_us: after.first().map(|call| call.us),
        answered_by_new: after
            .iter()
            .filter(|call| Some(&call.digest) != base_digest.as_ref())
            .count() as u64,
        failures,
        first_error,
        error: None,
        skipped: false,
    })
}

/// The client: single-item transactions back to back until told to stop, each settled.
fn drive(meter: &Meter, product: Product, stop: &AtomicBool) -> (Vec<Call>, u64, Option<String>) {
    let (mut calls, mut failures, mut first_error) = (Vec::new(), 0, None);
    let mut fail = |why: String| {
        failures += 1;
        first_error.get_or_insert(why);
    };
    let mut sequence = 0;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let transaction = single_item(
            product,
            tenant_name(sequence % TENANTS),
            format!("under-traffic-{sequence}"),
            sequence,
        );
        let begun = Instant::now();
        let authorized = meter.authorize(transaction.authorize);
        let us = begun.elapsed().as_micros() as u64;
        let authorization = match authorized {
            Ok(authorization) => authorization,
            Err(error) => {
                fail(format!("authorize: {error}"));
                continue;
            }
        };
        let settled = authorization.admitted
            && match meter.settle(transaction.settle) {
                Ok(_) => true,
                Err(error) => {
                    fail(format!("settle: {error}"));
                    false
                }
            };
        if !authorization.admitted {
            fail(format!(
                "refused: {}",
                authorization
                    .error
                    .map_or_else(String::new, |error| format!(
                        "{}: {}",
                        error.code, error.message
                    ))
            ));
        }
        calls.push(Call {
            begun,
            us,
            settled,
            digest: authorization.policy.digest,
        });
    }
    (calls, failures, first_error)
}

pub fn print(lines: &[ActivationLine], window: Duration) {
    println!(
        "{}: one client thread sends single-item authorize + settle back to back to a meter on \
         SQLite running the product's Rust rules; another thread activates the module, \
         compiled cold (no compile cache): compile, contract checks, switch;",
        super::ACTIVATION
    );
    println!(
        "  windows: {} ms before (after {} ms not counted), during the activation, {} ms \
         after the switch; txn/s = transactions begun in the window over its length; 1st \
         after = the first authorize begun after the switch",
        window.as_millis(),
        (window / 3).as_millis(),
        window.as_millis()
    );
    println!(
        "{:<22} {:<11} {:>7} {:>11}   {:<7} {:>9} {:>7} {:>9}   {:>24}",
        "module",
        "language",
        "size MB",
        "activate ms",
        "window",
        "ms",
        "calls",
        "txn/s",
        "authorize p50/p99/max µs"
    );
    for line in lines {
        if let Some(error) = &line.error {
            println!(
                "{:<22} {:<11} {}: {error}",
                line.module,
                line.language,
                if line.skipped {
                    "skipped"
                } else {
                    "unavailable"
                }
            );
            continue;
        }
        for (index, window) in line.windows.iter().enumerate() {
            let (module, language, size, activate) = if index == 0 {
                (
                    line.module.as_str(),
                    line.language.as_str(),
                    line.bytes
                        .map_or_else(String::new, |bytes| format!("{:.2}", bytes as f64 / 1e6)),
                    line.activate_ms
                        .map_or_else(String::new, |ms| format!("{ms:.1}")),
                )
            } else {
                ("", "", String::new(), String::new())
            };
            let tail = match window.name {
                "after" => format!(
                    "   1st after {} µs; {} of {} answered by the new module",
                    line.first_after_switch_us
                        .map_or_else(|| "-".to_owned(), |us| us.to_string()),
                    line.answered_by_new,
                    window.calls
                ),
                _ => String::new(),
            };
            println!(
                "{:<22} {:<11} {:>7} {:>11}   {:<7} {:>9.0} {:>7} {:>9.0}   {:>24}{tail}",
                module,
                language,
                size,
                activate,
                window.name,
                window.ms,
                window.calls,
                window.txn_per_s,
                format!(
                    "{}/{}/{}",
                    window.authorize_p50_us, window.authorize_p99_us, window.authorize_max_us
                )
            );
        }
        if let Some(error) = &line.first_error {
            println!("{:<22} failures {}: {error}", "", line.failures);
        }
    }
}

/// Whether a line that should have run could not, or its calls failed.
pub fn failed(line: &ActivationLine) -> bool {
    !line.skipped && (line.error.is_some() || line.failures > 0)
}
