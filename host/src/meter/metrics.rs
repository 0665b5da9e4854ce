//! What the meter reports through the `metrics` facade (docs/gateways.md, "Metrics").
//! Nothing is recorded unless the process installs a recorder: `serve` installs a
//! Prometheus one and answers `GET /metrics`.
//!
//! - Decisions are counted from each batch once it is durable, on the log thread: a
//!   count on a dashboard is a count in the ledger, and the sequencer pays nothing.
//! - Calls are timed on the caller's thread, from the call to its answer, with their
//!   errors by stable code.
//! - Policy calls report their fuel and wall time; the sequencer reports its open holds.
//!
//! Label values that clients or policies choose (operations, refusal codes, balance
//! names) are bounded: the first [`LABEL_VALUES_MAX`] distinct values of each label are
//! kept, and later ones are counted as `other`, so no client can grow the exposition
//! without bound. Tenants are never a label.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};

use crate::error::MeterError;
use crate::ledger::EntryKind;
use crate::ledger::record::{Batch, Decision, PostingRecord};
use crate::policy::CallCost;

/// Distinct values a client- or policy-chosen label keeps before `other`.
pub const LABEL_VALUES_MAX: usize = 64;

/// The label value past the bound.
const OTHER: &str = "other";

/// The distinct values one label has taken, up to [`LABEL_VALUES_MAX`].
#[derive(Default)]
struct BoundedLabel(HashSet<String>);

impl BoundedLabel {
    fn value(&mut self, value: &str) -> String {
        if self.0.contains(value) {
            return value.to_owned();
        }
        if self.0.len() < LABEL_VALUES_MAX {
            self.0.insert(value.to_owned());
            return value.to_owned();
        }
        OTHER.to_owned()
    }
}

/// Counts what durable batches decided; owned by the log thread.
#[derive(Default)]
pub struct DurableMetrics {
    operations: BoundedLabel,
    codes: BoundedLabel,
    balances: BoundedLabel,
}

impl DurableMetrics {
    /// A group of batches made durable in one write and sync that took `took`.
    pub fn durable(&mut self, batches: &[Arc<Batch>], took: Duration) {
        histogram!("creditgate_commit_seconds").record(took.as_secs_f64());
        for batch in batches {
            histogram!("creditgate_batch_decisions").record(batch.decisions.len() as f64);
            for decision in &batch.decisions {
                self.decision(decision);
            }
        }
    }

    fn decision(&mut self, decision: &Decision) {
        let (kind, posting) = match decision {
            Decision::Authorize(authorized) => {
                let answer = &authorized.answer;
                let outcome = match (answer.admitted, &answer.error) {
                    (true, None) => "admitted",
                    (true, Some(_)) => "admitted_open",
                    (false, _) => "rejected",
                };
                let operation = self.operations.value(&authorized.operation);
                counter!("creditgate_authorizations_total", "operation" => operation, "outcome" => outcome)
                    .increment(1);
                if let (false, Some((code, _))) = (answer.admitted, &answer.error) {
                    counter!("creditgate_rejections_total", "code" => self.codes.value(code))
                        .increment(1);
                }
                ("authorize", Some(&authorized.posting))
            }
            Decision::Settle(settled) => ("settle", Some(&settled.posting)),
            Decision::Expire(expired) => ("expire", Some(&expired.posting)),
            Decision::Grant(granted) => ("grant", Some(&granted.posting)),
            Decision::CloseLot(closed) => ("close_lot", Some(&closed.posting)),
            Decision::Policy(_) => ("policy", None),
            Decision::Activate(_) => ("activate", None),
            Decision::Import(_) => ("import", None),
            Decision::Overdraft(_) => ("overdraft", None),
            Decision::Cap(_) => ("spend_cap", None),
            Decision::Spend(_) => ("spend", None),
            Decision::Refill(_) => ("refill", None),
            Decision::Watch(_) => ("thresholds", None),
            Decision::Schedule(_) => ("schedule", None),
            Decision::Event(event) => {
                counter!("creditgate_events_total", "kind" => event.kind.as_str()).increment(1);
                ("event", None)
            }
        };
        counter!("creditgate_decisions_total", "kind" => kind).increment(1);
        if let Some(posting) = posting {
            self.credits(posting);
        }
    }

    /// Credits moved, by balance and entry kind.
    fn credits(&mut self, posting: &PostingRecord) {
        for entry in &posting.entries {
            // Exposure windows are accounts named for their hour: one label for all.
            let balance = match entry.kind {
                EntryKind::Open => "exposure".to_owned(),
                _ => self.balances.value(&entry.balance),
            };
            counter!("creditgate_credits_total", "balance" => balance, "entry" => entry.kind.as_str())
                .increment(u64::try_from(entry.amount).unwrap_or(0));
        }
    }
}

/// Times a blocking call of the meter and counts its error by code.
pub fn call<T>(
    name: &'static str,
    run: impl FnOnce() -> Result<T, MeterError>,
) -> Result<T, MeterError> {
    let started = Instant::now();
    let result = run();
    answered(name, started, &result);
    result
}

/// Times an async call of the meter and counts its error by code.
pub async fn call_async<T>(
    name: &'static str,
    run: impl Future<Output = Result<T, MeterError>>,
) -> Result<T, MeterError> {
    let started = Instant::now();
    let result = run.await;
    answered(name, started, &result);
    result
}

fn answered<T>(name: &'static str, started: Instant, result: &Result<T, MeterError>) {
    histogram!("creditgate_call_seconds", "call" => name).record(started.elapsed().as_secs_f64());
    if let Err(error) = result {
        counter!("creditgate_call_errors_total", "call" => name, "code" => error.code())
            .increment(1);
    }
}

/// What one policy call cost (`call`: `authorize` or `settle`).
pub fn policy_call(call: &'static str, cost: CallCost) {
    histogram!("creditgate_policy_fuel", "call" => call).record(cost.fuel as f64);
    histogram!("creditgate_policy_call_seconds", "call" => call).record(cost.wall_us as f64 / 1e6);
}

/// The open holds after a batch.
pub fn open_holds(holds: usize) {
    gauge!("creditgate_open_holds").set(holds as f64);
}

/// Whether this replica cannot load the ledger's latest activation (1) and serves the
/// last good policy instead (`meter/follower.rs`).
pub fn policy_behind(behind: bool) {
    gauge!("creditgate_policy_behind").set(if behind { 1.0 } else { 0.0 });
}

/// The durable batches the views have not applied yet.
pub fn views_behind(batches: u64) {
    gauge!("creditgate_views_behind_batches").set(batches as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_keeps_its_first_values_and_counts_the_rest_as_other() {
        let mut label = BoundedLabel::default();
        for n in 0..LABEL_VALUES_MAX {
            assert_eq!(label.value(&format!("op-{n}")), format!("op-{n}"));
        }
        assert_eq!(label.value("one-too-many"), OTHER);
        assert_eq!(label.value("op-0"), "op-0");
        assert_eq!(label.0.len(), LABEL_VALUES_MAX);
    }
}
