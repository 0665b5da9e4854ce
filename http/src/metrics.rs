//! `GET /metrics`: what the meter records (`meter::metrics`), in Prometheus's text
//! exposition format, rendered by metrics-exporter-prometheus.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of every `_seconds` histogram: 50 µs to 10 s.
const SECONDS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    10.0,
];
/// Buckets of decisions per batch, up to the largest batch (1,024).
const DECISIONS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Buckets of fuel per policy call, up to the default budget (10 million) and past it.
const FUEL: [f64; 8] = [1e3, 1e4, 3e4, 1e5, 1e6, 5e6, 1e7, 1e8];

/// How often histogram samples are folded into their buckets when nobody scrapes, so
/// that an unscraped sidecar's memory does not grow.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process's Prometheus recorder, installed on first use; none when the process
/// already has a recorder of its own (a library user's), which then gets the metrics.
/// A server calls it before it opens its meter, so that the start-up's decisions (the
/// policy registered and activated) are counted too.
pub fn exporter() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match install() {
            Ok(handle) => {
                let upkeep = handle.clone();
                let spawned = std::thread::Builder::new()
                    .name("creditgate-metrics".to_owned())
                    .spawn(move || {
                        loop {
                            std::thread::sleep(UPKEEP_INTERVAL);
                            upkeep.run_upkeep();
                        }
                    });
                if let Err(error) = spawned {
                    tracing::warn!(%error, "no metrics upkeep thread: histograms are folded at each scrape only");
                }
                Some(handle)
            }
            Err(error) => {
                tracing::warn!(%error, "GET /metrics is unavailable: the process has another metrics recorder");
                None
            }
        })
        .as_ref()
}

fn install() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS)?
        .set_buckets_for_metric(
            Matcher::Full("creditgate_batch_decisions".to_owned()),
            &DECISIONS,
        )?
        .set_buckets_for_metric(Matcher::Full("creditgate_policy_fuel".to_owned()), &FUEL)?
        .install_recorder()
}
