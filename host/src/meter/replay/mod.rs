//! Replay: what a period of recorded traffic would have cost under another policy
//! (`creditgate replay`, `docs/policy-authors.md` section 4).
//!
//! The log is read, read-only, in its order ([`log`]: a SQLite ledger's or a
//! PostgreSQL ledger's). Every batch before the period is applied to
//! a scratch [`LiveState`] exactly as recovery applies it: the balances, holds, lots,
//! caps, refills and marks as they stood when the period began. Every batch of the
//! period is then decided again, at its recorded time, by the sequencer's own decision
//! functions ([`Decider`]) with the candidate active: the recorded requests and outcomes
//! go through the candidate, and its verdicts through the host's guarantees (floor,
//! overdraft, spend caps, lots, hold expiry), as live traffic would have. Operator
//! decisions recorded in the period (grants, voids, overdraft limits, caps, refills,
//! thresholds) are made again in their place; what the sweep did (expiries, refill
//! periods, scheduled grants) the scratch sweep does again at each batch's time. The
//! scratch state lives in memory and goes away: the store the decisions see refuses
//! every write.
//!
//! What is compared: each authorize's recorded answer with the candidate's (admitted,
//! items admitted, credits held and charged), each settle's recorded charge with the
//! candidate's, per tenant, per operation and per day, with examples.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::decide::{BatchBuilder, CheckedAuthorize, Decider, Pricing};
use super::failure::{FailureCounts, FailurePolicy};
use super::marks::LedgerMarks;
use super::registry::Registry;
use crate::error::MeterError;
use crate::ledger::lots::Closure;
use crate::ledger::record::{Authorized, Batch, Decision, Granted, LotTerms, Settled, amounts};
use crate::ledger::refills;
use crate::ledger::scheduled::ScheduledState;
use crate::ledger::state::{Coverage, LiveState, StateLimits};
use crate::model::{
    Amounts, Authorization, AuthorizeRequest, GrantRequest, GrantTerms, PolicyRef, SettleRequest,
};
use crate::policy::component::{self, Limits};
use crate::policy::{MarkLookup, PolicyDigest};
use crate::store::empty::EmptyStore;
use crate::store::{Store, StoreLocation};

pub mod log;

use log::{Log, Shared};

/// Examples kept per kind of difference: of the whole period, and of each tenant and
/// operation.
const EXAMPLES_MAX: usize = 10;
const EXAMPLES_PER_ROW_MAX: usize = 3;
/// Progress is reported every this many batches.
const PROGRESS_EVERY_BATCHES: u64 = 256;
const DAY_MS: u64 = 86_400_000;
/// The least wall-clock bound a replay gives a policy call (a meter's default is 20 ms).
pub const WALL_MS_PER_CALL_MIN: u64 = 5_000;

/// What to replay, and on what.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// The ledger whose log is replayed.
    pub store: StoreLocation,
    /// The period: batches decided at or after `from_ms` and before `to_ms` (ms since
    /// the Unix epoch; none: from the first, to the last).
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    /// Only these tenants' traffic is decided again (empty: every tenant's).
    pub tenants: BTreeSet<String>,
    /// The candidate's bounds, as a meter would run it.
    pub limits: Limits,
    pub compile_cache_dir: Option<PathBuf>,
    /// Threads deciding, each a share of the tenants on a scratch state of its own.
    pub threads: usize,
}

impl ReplayConfig {
    pub fn new(store: impl Into<StoreLocation>) -> Self {
        Self {
            store: store.into(),
            from_ms: None,
            to_ms: None,
            tenants: BTreeSet::new(),
            limits: Limits::default(),
            compile_cache_dir: None,
            threads: 2,
        }
    }
}

/// Where a replay is: for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct ReplayProgress {
    /// The log's record read last, and the last one there is.
    pub seq: u64,
    pub last_seq: u64,
    /// Whether the period started (before: the balances at its start are being built).
    pub in_period: bool,
    /// Authorizes decided again so far.
    pub transactions: u64,
}

/// What the candidate would have done differently, and what it would have charged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// The ledger, as logs name it.
    pub ledger: String,
    pub candidate: PolicyRef,
    /// The policies that decided the period's transactions when they were recorded.
    pub recorded_policies: Vec<PolicyRef>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    /// The recorded times of the period's first and last batches.
    pub first_at_ms: Option<u64>,
    pub last_at_ms: Option<u64>,
    /// The recorded time of the log's first batch: nothing was recorded before it (a
    /// period that ends before it holds no traffic, which the summary says).
    #[serde(default)]
    pub log_first_at_ms: Option<u64>,
    /// The tenants selected (empty: all).
    pub tenants_selected: Vec<String>,
    /// Log records read before the period (the balances at its start), and in it.
    pub batches_before: u64,
    pub batches: u64,
    /// Authorizes and settles decided again.
    pub transactions: u64,
    pub settles: u64,
    /// Time spent, in ms: reading the log up to the period, and the period itself.
    pub prefix_ms: u64,
    pub replay_ms: u64,
    /// Authorizes decided again per second of the period's replay.
    pub transactions_per_second: f64,
    pub totals: Figures,
    pub by_tenant: BTreeMap<String, Figures>,
    pub by_operation: BTreeMap<String, Figures>,
    /// Credits charged per UTC day (`YYYY-MM-DD`), recorded and under the candidate.
    pub daily: BTreeMap<String, Daily>,
    /// The first differences, described.
    pub examples: Vec<Example>,
    /// The same figures as shadow mode's report ([`crate::model::ShadowReport`]).
    pub shadow_view: ShadowView,
    pub notes: Notes,
}

/// The figures of one tenant, one operation, or all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Authorizes decided again.
    pub transactions: u64,
    pub recorded_admitted: u64,
    pub candidate_admitted: u64,
    pub admitted_to_refused: u64,
    pub refused_to_admitted: u64,
    /// Admitted both times with another number of items admitted.
    pub partial_changed: u64,
    /// Transactions charged another amount in all (authorize and settle).
    pub charge_changed: u64,
    /// Credits charged (at authorize and at settle), per balance.
    pub recorded_charged: Amounts,
    pub candidate_charged: Amounts,
    /// A few transaction ids of each kind of difference.
    pub examples: ExampleIds,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExampleIds {
    pub admitted_to_refused: Vec<String>,
    pub refused_to_admitted: Vec<String>,
    pub partial_changed: Vec<String>,
    pub charge_changed: Vec<String>,
}

impl Figures {
    /// Credits charged over every balance: recorded, under the candidate.
    pub fn charged(&self) -> (i64, i64) {
        (
            total(&self.recorded_charged),
            total(&self.candidate_charged),
        )
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Daily {
    pub recorded_charged: i64,
    pub candidate_charged: i64,
}

/// One difference, told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub transaction_id: String,
    pub tenant: String,
    pub operation: String,
    /// `admitted_to_refused`, `refused_to_admitted`, `partial_changed`, `charge_changed`.
    pub kind: String,
    pub recorded: String,
    pub candidate: String,
}

/// Shadow mode's figures (`host/src/meter/shadow.rs`) computed on the replay: each
/// authorize the recorded policy admitted, classified as shadow mode classifies it
/// (`admit_vs_reject`, `admitted_items`, `charges`: credits held plus charged), and each
/// settle both settled (`charges`), with shadow's deltas (candidate minus recorded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowView {
    pub authorizes_compared: u64,
    pub settles_compared: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub authorize_charge_delta: Amounts,
    pub settle_charge_delta: Amounts,
    /// Per tenant: shadow's `charge_delta` (authorize and settle deltas together).
    pub by_tenant: BTreeMap<String, Amounts>,
}

/// What the replay could not decide as recorded, and what it left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notes {
    /// Refusals recorded before record format 8, which kept no request: not replayed.
    pub refusals_without_request: u64,
    /// Settles recorded before record format 8, which kept no outcome but its status:
    /// the candidate saw the status alone.
    pub settles_without_outcome: u64,
    /// Recorded settles of transactions the candidate refused (nothing to settle).
    pub settles_of_refused: u64,
    /// Recorded settles the candidate's hold had lapsed before (its TTL).
    pub settles_after_expiry: u64,
    /// Authorizes and settles the candidate failed on (trap, fuel, invalid verdict...):
    /// refused, as a meter failing closed would.
    pub candidate_failures: u64,
    pub candidate_failure_examples: Vec<String>,
    /// Operator decisions made again (grants, voids, limits, caps, refills, thresholds)
    /// and those the candidate's ledger refused (e.g. a balance it does not describe).
    pub operator_decisions: u64,
    pub operator_refused: u64,
    pub operator_refused_examples: Vec<String>,
    /// Policy activations recorded in the period: the candidate stays active.
    pub activations_ignored: u64,
    /// Holds the candidate let lapse, and those recorded lapsing, in the period.
    pub recorded_expiries: u64,
    pub candidate_expiries: u64,
}

fn total(amounts: &Amounts) -> i64 {
    amounts
        .values()
        .fold(0i64, |sum, amount| sum.saturating_add(*amount))
}

fn add(total: &mut Amounts, amounts: &Amounts) {
    for (balance, amount) in amounts {
        let entry = total.entry(balance.clone()).or_insert(0);
        *entry = entry.saturating_add(*amount);
    }
}

/// Per balance, candidate minus recorded (zeros dropped), as shadow mode's `delta`.
fn delta(recorded: &Amounts, candidate: &Amounts) -> Amounts {
    let mut difference = candidate.clone();
    for (balance, amount) in recorded {
        let entry = difference.entry(balance.clone()).or_insert(0);
        *entry = entry.saturating_sub(*amount);
    }
    difference.retain(|_, amount| *amount != 0);
    difference
}

fn keep(list: &mut Vec<String>, id: &str, max: usize) {
    if list.len() < max {
        list.push(id.to_owned());
    }
}

/// The UTC day of a time in ms.
pub fn day_of(at_ms: u64) -> String {
    let at = i64::try_from(at_ms).unwrap_or(i64::MAX);
    match jiff::Timestamp::from_millisecond(at) {
        Ok(timestamp) => timestamp
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date()
            .to_string(),
        Err(_) => "invalid".to_owned(),
    }
}

/// A time in ms as RFC 3339, UTC.
pub fn time_text(at_ms: u64) -> String {
    jiff::Timestamp::from_millisecond(i64::try_from(at_ms).unwrap_or(i64::MAX))
        .map_or_else(|_| at_ms.to_string(), |time| time.to_string())
}

/// A time as `--from`/`--to` take it: RFC 3339 (`2026-11-01T00:00:00Z`), a UTC date
/// (`2026-11-01`: its midnight), or ms since the Unix epoch.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let ms = if let Ok(timestamp) = text.parse::<jiff::Timestamp>() {
        timestamp.as_millisecond()
    } else if let Ok(date) = text.parse::<jiff::civil::Date>() {
        date.to_zoned(jiff::tz::TimeZone::UTC)
            .map_err(|error| error.to_string())?
            .timestamp()
            .as_millisecond()
    } else {
        return Err(format!(
            "'{text}' is not a time: give RFC 3339 (2026-11-01T00:00:00Z), a UTC date \
             (2026-11-01) or ms since the Unix epoch"
        ));
    };
    u64::try_from(ms).map_err(|_| format!("'{text}' is before 1970"))
}

/// Replays the period of `config` under `candidate` (a component's bytes), reporting
/// progress to `progress`. Reads the ledger only.
pub fn replay(
    config: &ReplayConfig,
    candidate: &[u8],
    progress: &mut dyn FnMut(ReplayProgress),
) -> Result<ReplayReport, MeterError> {
    let started = Instant::now();
    // Fuel bounds each call as it does live; the wall-clock bound is one of the
    // machine's, not of the policy: a replay on a busy machine must not fail calls a
    // quiet one would have answered.
    let limits = Limits {
        wall_ms_per_call: config.limits.wall_ms_per_call.max(WALL_MS_PER_CALL_MIN),
        ..config.limits
    };
    let config = &ReplayConfig {
        limits,
        ..config.clone()
    };
    // Every part reads the log up to the record the first read found last: the same
    // log, even while a meter appends to it (on PostgreSQL, every part reads the first
    // reader's snapshot, which stays open until they are done).
    let tenants: Vec<String> = config.tenants.iter().cloned().collect();
    let (mut first, shared) = Log::open_first(&config.store, &tenants)?;
    let last_seq = first.last_seq()?;
    let engine = component::engine()?;
    let compiled = super::compile_gated(
        &engine,
        candidate,
        config.limits,
        config.compile_cache_dir.as_deref(),
    )?;
    let parts = config.threads.max(1);
    let transactions = AtomicU64::new(0);
    let setup = Part {
        config,
        shared: &shared,
        engine: &engine,
        compiled: &compiled,
        candidate,
        parts,
        last_seq,
        transactions: &transactions,
        started,
    };
    if parts == 1 {
        return replay_part(&setup, Some(first), 0, progress);
    }
    std::thread::scope(|scope| {
        let others: Vec<_> = (1..parts)
            .map(|part| {
                let setup = &setup;
                scope.spawn(move || replay_part(setup, None, part, &mut |_| {}))
            })
            .collect();
        let report = replay_part(&setup, None, 0, progress);
        // The others read its snapshot: closed once they are done.
        let mut others_done = Vec::with_capacity(others.len());
        for other in others {
            others_done.push(other.join());
        }
        drop(first);
        let mut report = report?;
        for other in others_done {
            let other = other.map_err(|_| {
                MeterError::StoreUnavailable("a replay thread panicked".to_owned())
            })??;
            merge(&mut report, other);
        }
        report.transactions_per_second =
            report.transactions as f64 / (report.replay_ms.max(1) as f64 / 1_000.0);
        Ok(report)
    })
}

/// What every part of a replay shares.
struct Part<'a> {
    config: &'a ReplayConfig,
    shared: &'a Shared,
    engine: &'a wasmtime::Engine,
    compiled: &'a std::sync::Arc<component::CompiledPolicy>,
    candidate: &'a [u8],
    parts: usize,
    last_seq: u64,
    /// Authorizes decided again by every part, for the progress bar.
    transactions: &'a AtomicU64,
    started: Instant,
}

/// One part of a replay: the tenants whose hash falls in it, on a scratch state of its
/// own (tenants are independent: no decision of one reads another's state).
fn replay_part(
    setup: &Part<'_>,
    reader: Option<Log>,
    part: usize,
    progress: &mut dyn FnMut(ReplayProgress),
) -> Result<ReplayReport, MeterError> {
    let Part {
        config,
        started,
        last_seq,
        ..
    } = *setup;
    let mut reader = match reader {
        Some(reader) => reader,
        None => Log::open(&config.store, setup.shared)?,
    };
    let state = LiveState::new(Coverage::Whole, StateLimits::default());
    // Everything the decisions read is in the scratch state (nothing is ever evicted
    // from it), and every write is refused.
    let store: Rc<dyn Store> = Rc::new(EmptyStore::refusing_writes("a replay writes nothing"));
    let marks: Rc<dyn MarkLookup> = Rc::new(LedgerMarks {
        recent: state.marks(),
        store: Rc::clone(&store),
    });
    let runtime = Box::new(setup.compiled.runtime(Rc::clone(&marks)));
    let info = setup.compiled.info().clone();
    let registry = Registry::new(
        setup.engine.clone(),
        config.limits,
        config.compile_cache_dir.clone(),
        marks,
        runtime,
    );
    let mut run = Run {
        config,
        part: (part, setup.parts),
        state,
        store,
        registry,
        failure: FailurePolicy::default(),
        failure_counts: FailureCounts::default(),
        report: ReplayReport {
            ledger: config.store.describe(),
            candidate: super::decide::policy_ref(&info),
            from_ms: config.from_ms,
            to_ms: config.to_ms,
            tenants_selected: config.tenants.iter().cloned().collect(),
            ..ReplayReport::default()
        },
        recorded_policies: BTreeSet::new(),
        expiry_batch_max: super::MeterConfig::new(config.store.clone()).expiry_batch_max,
        day: (0, String::new()),
        period_started: None,
        candidate: (info, setup.candidate.to_vec()),
        transactions: setup.transactions,
    };
    // Entry ids (and so lot numbers) are drawn from the state's counter, which each
    // batch applied sets to its recorded first id: on PostgreSQL a batch that draws no
    // block of lot numbers records a small one. The candidate draws above all of them.
    let mut entry_ids_above = 0;
    reader.for_each(last_seq, &mut |batch| {
        let seq = batch.seq;
        run.report.log_first_at_ms.get_or_insert(batch.at_ms);
        let in_period_now = config.from_ms.is_none_or(|from| batch.at_ms >= from);
        if run.period_started.is_none() && in_period_now {
            run.state.next_entry_id = run.state.next_entry_id.max(entry_ids_above);
            run.state.check_lots()?;
            run.report.prefix_ms = started.elapsed().as_millis() as u64;
            run.period_started = Some(Instant::now());
        }
        if run.period_started.is_some() && config.to_ms.is_some_and(|to| batch.at_ms >= to) {
            return Ok(false);
        }
        if run.period_started.is_some() {
            run.replay_batch(&batch)?;
        } else {
            run.state.apply_batch(&batch)?;
            entry_ids_above = entry_ids_above.max(run.state.next_entry_id);
            run.report.batches_before += 1;
        }
        let read = run.report.batches_before + run.report.batches;
        if read.is_multiple_of(PROGRESS_EVERY_BATCHES) {
            progress(ReplayProgress {
                seq,
                last_seq,
                in_period: run.period_started.is_some(),
                transactions: run.transactions.load(Ordering::Relaxed),
            });
        }
        Ok(true)
    })?;
    progress(ReplayProgress {
        seq: last_seq,
        last_seq,
        in_period: true,
        transactions: run.transactions.load(Ordering::Relaxed),
    });
    Ok(run.finish(started))
}

/// Adds the figures of another part's tenants to `report`.
fn merge(report: &mut ReplayReport, other: ReplayReport) {
    for policy in other.recorded_policies {
        if !report.recorded_policies.contains(&policy) {
            report.recorded_policies.push(policy);
        }
    }
    report.first_at_ms = report
        .first_at_ms
        .min(other.first_at_ms)
        .or(other.first_at_ms);
    report.last_at_ms = report.last_at_ms.max(other.last_at_ms);
    report.log_first_at_ms = report
        .log_first_at_ms
        .min(other.log_first_at_ms)
        .or(other.log_first_at_ms);
    report.prefix_ms = report.prefix_ms.max(other.prefix_ms);
    report.replay_ms = report.replay_ms.max(other.replay_ms);
    report.transactions += other.transactions;
    report.settles += other.settles;
    report.totals.merge(&other.totals);
    report.by_tenant.extend(other.by_tenant);
    for (operation, figures) in other.by_operation {
        report
            .by_operation
            .entry(operation)
            .or_default()
            .merge(&figures);
    }
    for (day, daily) in other.daily {
        let entry = report.daily.entry(day).or_default();
        entry.recorded_charged = entry
            .recorded_charged
            .saturating_add(daily.recorded_charged);
        entry.candidate_charged = entry
            .candidate_charged
            .saturating_add(daily.candidate_charged);
    }
    for example in other.examples {
        let same_kind = report
            .examples
            .iter()
            .filter(|kept| kept.kind == example.kind)
            .count();
        if same_kind < EXAMPLES_MAX {
            report.examples.push(example);
        }
    }
    let view = &mut report.shadow_view;
    view.authorizes_compared += other.shadow_view.authorizes_compared;
    view.settles_compared += other.shadow_view.settles_compared;
    for (kind, count) in other.shadow_view.by_kind {
        *view.by_kind.entry(kind).or_insert(0) += count;
    }
    add(
        &mut view.authorize_charge_delta,
        &other.shadow_view.authorize_charge_delta,
    );
    add(
        &mut view.settle_charge_delta,
        &other.shadow_view.settle_charge_delta,
    );
    view.by_tenant.extend(other.shadow_view.by_tenant);
    let (notes, more) = (&mut report.notes, other.notes);
    notes.refusals_without_request += more.refusals_without_request;
    notes.settles_without_outcome += more.settles_without_outcome;
    notes.settles_of_refused += more.settles_of_refused;
    notes.settles_after_expiry += more.settles_after_expiry;
    notes.candidate_failures += more.candidate_failures;
    notes.operator_decisions += more.operator_decisions;
    notes.operator_refused += more.operator_refused;
    notes.recorded_expiries += more.recorded_expiries;
    notes.candidate_expiries += more.candidate_expiries;
    // Every part reads every activation.
    notes.activations_ignored = notes.activations_ignored.max(more.activations_ignored);
    for (kept, extra) in [
        (
            &mut notes.candidate_failure_examples,
            more.candidate_failure_examples,
        ),
        (
            &mut notes.operator_refused_examples,
            more.operator_refused_examples,
        ),
    ] {
        for example in extra {
            if kept.len() < EXAMPLES_MAX {
                kept.push(example);
            }
        }
    }
}

impl Figures {
    fn merge(&mut self, other: &Figures) {
        self.transactions += other.transactions;
        self.recorded_admitted += other.recorded_admitted;
        self.candidate_admitted += other.candidate_admitted;
        self.admitted_to_refused += other.admitted_to_refused;
        self.refused_to_admitted += other.refused_to_admitted;
        self.partial_changed += other.partial_changed;
        self.charge_changed += other.charge_changed;
        add(&mut self.recorded_charged, &other.recorded_charged);
        add(&mut self.candidate_charged, &other.candidate_charged);
        let examples = &mut self.examples;
        for (kept, more) in [
            (
                &mut examples.admitted_to_refused,
                &other.examples.admitted_to_refused,
            ),
            (
                &mut examples.refused_to_admitted,
                &other.examples.refused_to_admitted,
            ),
            (
                &mut examples.partial_changed,
                &other.examples.partial_changed,
            ),
            (&mut examples.charge_changed, &other.examples.charge_changed),
        ] {
            for id in more {
                keep(kept, id, EXAMPLES_PER_ROW_MAX);
            }
        }
    }
}

/// A replay in progress.
struct Run<'a> {
    config: &'a ReplayConfig,
    /// This part's share of the tenants: (its number, how many parts).
    part: (usize, usize),
    state: LiveState,
    store: Rc<dyn Store>,
    registry: Registry,
    failure: FailurePolicy,
    failure_counts: FailureCounts,
    report: ReplayReport,
    recorded_policies: BTreeSet<[u8; 32]>,
    /// Lapsed holds released per batch, at most, as a meter's default.
    expiry_batch_max: usize,
    /// The UTC day of the batch being replayed (days since the epoch, and its name).
    day: (u64, String),
    period_started: Option<Instant>,
    /// The candidate's description and bytes, recorded in the scratch ledger as the
    /// period begins.
    candidate: (crate::policy::PolicyInfo, Vec<u8>),
    /// Authorizes decided again by every part.
    transactions: &'a AtomicU64,
}

/// What a recorded decision asks to be done again.
enum Redo<'b> {
    Authorize(&'b Authorized),
    Settle(&'b Settled),
    Operator(&'b str),
    Nothing,
}

impl Run<'_> {
    fn replay_batch(&mut self, batch: &Batch) -> Result<(), MeterError> {
        let (config, part) = (self.config, self.part);
        let first = self.report.batches == 0;
        self.report.batches += 1;
        self.report.first_at_ms.get_or_insert(batch.at_ms);
        self.report.last_at_ms = Some(batch.at_ms);
        let day_index = batch.at_ms / DAY_MS;
        if self.day.0 != day_index || self.day.1.is_empty() {
            self.day = (day_index, day_of(batch.at_ms));
        }
        let day = self.day.1.clone();
        let mut builder = BatchBuilder::new(
            self.state.last_seq + 1,
            batch.at_ms,
            self.state.next_entry_id,
        );
        let mut decider = Decider {
            state: &mut self.state,
            store: self.store.as_ref(),
            registry: &mut self.registry,
            builder: &mut builder,
            failure: &self.failure,
            failure_counts: &self.failure_counts,
        };
        if first {
            let (info, component) = &self.candidate;
            decider.save_policy(info, Some(component))?;
            decider.record_activation(&info.digest, "replay")?;
        }
        // What the sequencer does before a batch's jobs, at the batch's recorded time.
        decider.sweep(self.expiry_batch_max)?;
        let sweep_end = decider.builder.batch.decisions.len();
        let mut outcomes: Vec<Outcome> = Vec::new();
        for decision in &batch.decisions {
            let redo = classify(batch, decision, decider.state);
            match redo {
                Redo::Nothing => {}
                Redo::Authorize(authorized) if selected(config, part, &authorized.tenant) => {
                    if let Some(policy) = batch.policies.get(authorized.policy as usize) {
                        self.recorded_policies.insert(*policy);
                    }
                    if authorized.request.is_none() {
                        self.report.notes.refusals_without_request += 1;
                    }
                    outcomes.push(authorize_again(&mut decider, authorized)?);
                }
                Redo::Settle(settled) if selected(config, part, &settled.tenant) => {
                    outcomes.push(settle_again(&mut decider, settled)?);
                }
                Redo::Operator(tenant) if selected(config, part, tenant) => {
                    self.report.notes.operator_decisions += 1;
                    if let Err(error) = operator_again(&mut decider, batch, decision) {
                        if matches!(
                            error,
                            MeterError::StoreCorrupt(_) | MeterError::StoreUnavailable(_)
                        ) {
                            return Err(error);
                        }
                        self.report.notes.operator_refused += 1;
                        if self.report.notes.operator_refused_examples.len() < EXAMPLES_MAX {
                            self.report
                                .notes
                                .operator_refused_examples
                                .push(format!("{tenant}: {error}"));
                        }
                    }
                }
                Redo::Authorize(_) | Redo::Settle(_) | Redo::Operator(_) => {}
            }
            match decision {
                Decision::Activate(_) => self.report.notes.activations_ignored += 1,
                Decision::Expire(expired) if selected(config, part, &expired.tenant) => {
                    self.report.notes.recorded_expiries += 1;
                }
                _ => {}
            }
        }
        decider.raise_balance_events()?;
        let candidate_expiries = builder.batch.decisions[..sweep_end]
            .iter()
            .filter(|decision| {
                matches!(decision, Decision::Expire(expired) if selected(config, part, &expired.tenant))
            })
            .count() as u64;
        self.report.notes.candidate_expiries += candidate_expiries;
        for outcome in outcomes {
            self.count(outcome, &day);
        }
        Ok(())
    }

    fn count(&mut self, outcome: Outcome, day: &str) {
        let operation = outcome.operation.clone();
        let report = &mut self.report;
        if !report.daily.contains_key(day) {
            report.daily.insert(day.to_owned(), Daily::default());
        }
        let notes = &mut report.notes;
        if let Some(failure) = &outcome.candidate_failure {
            notes.candidate_failures += 1;
            if notes.candidate_failure_examples.len() < EXAMPLES_MAX {
                notes
                    .candidate_failure_examples
                    .push(format!("{}: {failure}", outcome.id));
            }
        }
        let (recorded_charged, candidate_charged) = outcome.charged();
        if let Some(daily) = report.daily.get_mut(day) {
            daily.recorded_charged = daily
                .recorded_charged
                .saturating_add(total(recorded_charged));
            daily.candidate_charged = daily
                .candidate_charged
                .saturating_add(total(candidate_charged));
        }
        let kinds = outcome.kinds();
        if let Step::Settle {
            without_outcome,
            unsettled,
            ..
        } = &outcome.step
        {
            notes.settles_without_outcome += u64::from(*without_outcome);
            match unsettled {
                Some(Unsettled::Refused) => notes.settles_of_refused += 1,
                Some(Unsettled::Expired) => notes.settles_after_expiry += 1,
                None => {}
            }
        }
        report.settles += u64::from(matches!(outcome.step, Step::Settle { .. }));
        if matches!(outcome.step, Step::Authorize { .. }) {
            report.transactions += 1;
            self.transactions.fetch_add(1, Ordering::Relaxed);
        }
        let told = if kinds.any() {
            outcome.describe_kinds(&kinds)
        } else {
            Vec::new()
        };
        for (kind, recorded, candidate) in told {
            if report.examples.len() < EXAMPLES_MAX * 4
                && report
                    .examples
                    .iter()
                    .filter(|example| example.kind == kind)
                    .count()
                    < EXAMPLES_MAX
            {
                report.examples.push(Example {
                    transaction_id: outcome.id.clone(),
                    tenant: outcome.tenant.clone(),
                    operation: operation.clone(),
                    kind: kind.to_owned(),
                    recorded,
                    candidate,
                });
            }
        }
        shadow_view(&mut report.shadow_view, &outcome);
        if !report.by_tenant.contains_key(&outcome.tenant) {
            report
                .by_tenant
                .insert(outcome.tenant.clone(), Figures::default());
        }
        if !report.by_operation.contains_key(&operation) {
            report
                .by_operation
                .insert(operation.clone(), Figures::default());
        }
        report.totals.add(&outcome, &kinds);
        if let Some(figures) = report.by_tenant.get_mut(&outcome.tenant) {
            figures.add(&outcome, &kinds);
        }
        if let Some(figures) = report.by_operation.get_mut(&operation) {
            figures.add(&outcome, &kinds);
        }
    }

    fn finish(mut self, started: Instant) -> ReplayReport {
        let replay = self
            .period_started
            .map(|at| at.elapsed())
            .unwrap_or_default();
        if self.period_started.is_none() {
            self.report.prefix_ms = started.elapsed().as_millis() as u64;
        }
        self.report.replay_ms = replay.as_millis() as u64;
        self.report.transactions_per_second =
            self.report.transactions as f64 / replay.as_secs_f64().max(1e-9);
        self.report.recorded_policies = self
            .recorded_policies
            .iter()
            .map(|digest| {
                let digest = PolicyDigest::from_bytes(*digest);
                match self.state.policy(&digest.bytes()) {
                    Some(meta) => PolicyRef {
                        name: meta.name.clone(),
                        version: meta.version.clone(),
                        digest: digest.to_string(),
                    },
                    None => PolicyRef {
                        digest: digest.to_string(),
                        ..PolicyRef::default()
                    },
                }
            })
            .collect();
        self.report
    }
}

/// Whether this part decides the tenant's traffic again: a tenant selected, whose hash
/// falls in the part.
fn selected(config: &ReplayConfig, (part, parts): (usize, usize), tenant: &str) -> bool {
    (config.tenants.is_empty() || config.tenants.contains(tenant))
        && (parts <= 1
            || xxhash_rust::xxh3::xxh3_64(tenant.as_bytes()) % parts as u64 == part as u64)
}

/// What a recorded decision of the period asks of the replay. The sweep's own work
/// (expiries, lots expiring, refill periods, scheduled grants coming due) is not taken
/// from the record: the scratch sweep does it at each batch's time.
fn classify<'b>(batch: &'b Batch, decision: &'b Decision, state: &LiveState) -> Redo<'b> {
    match decision {
        Decision::Authorize(authorized) => Redo::Authorize(authorized),
        Decision::Settle(settled) => Redo::Settle(settled),
        Decision::Grant(granted) if sweep_grant(batch, granted) => Redo::Nothing,
        Decision::Grant(granted) => Redo::Operator(&granted.tenant),
        Decision::CloseLot(closed) if closed.closure == Closure::Voided => {
            Redo::Operator(&closed.tenant)
        }
        Decision::Overdraft(set) => Redo::Operator(&set.tenant),
        Decision::Cap(set) => Redo::Operator(&set.tenant),
        Decision::Watch(set) => Redo::Operator(&set.tenant),
        // An operator's change of a refill's terms (or its removal); the sweep's records
        // of a period granted keep the terms the state has.
        Decision::Refill(set) => {
            let current = state
                .refill(&set.tenant, &set.refill_id)
                .map(|refill| &refill.terms);
            if current == set.refill.as_ref() {
                Redo::Nothing
            } else {
                Redo::Operator(&set.tenant)
            }
        }
        Decision::Schedule(grant)
            if matches!(
                grant.state,
                ScheduledState::Pending | ScheduledState::Voided
            ) =>
        {
            Redo::Operator(&grant.tenant)
        }
        Decision::Schedule(_)
        | Decision::CloseLot(_)
        | Decision::Expire(_)
        | Decision::Policy(_)
        | Decision::Activate(_)
        | Decision::Import(_)
        | Decision::Spend(_)
        | Decision::Event(_) => Redo::Nothing,
    }
}

/// Whether a recorded grant was the sweep's: a refill's period, or a scheduled grant
/// granted at its time (the same batch records its schedule's end).
fn sweep_grant(batch: &Batch, granted: &Granted) -> bool {
    let refill = granted.terms.metadata.iter().any(|(key, refill_id)| {
        key == "refill" && refills::is_refill_grant(refill_id, &granted.grant_id)
    });
    refill
        || batch.decisions.iter().any(|decision| {
            matches!(decision, Decision::Schedule(grant)
                if grant.grant_id == granted.grant_id && grant.state == ScheduledState::Granted)
        })
}

fn grant_terms(terms: &LotTerms, effective_at_ms: Option<i64>) -> GrantTerms {
    GrantTerms {
        effective_at_ms,
        expires_at_ms: terms.expires_at_ms,
        priority: terms.priority,
        category: Some(terms.category.clone()),
        metadata: terms.metadata.iter().cloned().collect(),
    }
}

/// An operator's decision, made again through the same decision function.
fn operator_again(
    decider: &mut Decider<'_>,
    _batch: &Batch,
    decision: &Decision,
) -> Result<(), MeterError> {
    match decision {
        Decision::Grant(granted) => decider
            .grant(&GrantRequest {
                grant_id: granted.grant_id.clone(),
                tenant: granted.tenant.clone(),
                balance: granted.balance.clone(),
                amount: granted.amount,
                terms: grant_terms(&granted.terms, None),
            })
            .map(drop),
        Decision::CloseLot(closed) => decider.void(&closed.tenant, &closed.grant_id).map(drop),
        Decision::Overdraft(set) => decider
            .set_overdraft(&set.tenant, &set.balance, set.limit)
            .map(drop),
        Decision::Cap(set) => decider
            .set_spend_cap(&set.tenant, &set.balance, set.cap.clone())
            .map(drop),
        Decision::Watch(set) => decider
            .set_thresholds(
                &set.tenant,
                &set.balance,
                set.watch.as_ref().map(|watch| watch.thresholds.clone()),
            )
            .map(drop),
        Decision::Refill(set) => decider
            .set_refill(
                &set.tenant,
                &set.refill_id,
                set.refill.clone(),
                set.refill.as_ref().map(|terms| terms.anchor_ms),
            )
            .map(drop),
        Decision::Schedule(grant) if grant.state == ScheduledState::Voided => {
            decider.void(&grant.tenant, &grant.grant_id).map(drop)
        }
        Decision::Schedule(grant) => decider
            .grant(&GrantRequest {
                grant_id: grant.grant_id.clone(),
                tenant: grant.tenant.clone(),
                balance: grant.balance.clone(),
                amount: grant.amount,
                terms: grant_terms(&grant.terms, Some(grant.effective_at_ms)),
            })
            .map(drop),
        _ => Ok(()),
    }
}

/// One authorize or settle decided again, beside its record.
struct Outcome {
    id: String,
    tenant: String,
    operation: String,
    step: Step,
    candidate_failure: Option<String>,
    /// Whether the candidate was asked (an authorize recorded without its request
    /// was not).
    replayed: bool,
}

enum Step {
    Authorize {
        recorded: Answer,
        candidate: Answer,
    },
    Settle {
        recorded_charged: Amounts,
        /// None: the candidate did not settle it.
        candidate_charged: Option<Amounts>,
        without_outcome: bool,
        unsettled: Option<Unsettled>,
    },
}

enum Unsettled {
    Refused,
    Expired,
}

/// An authorize's answer, as compared.
#[derive(Debug, Clone, Default)]
struct Answer {
    admitted: bool,
    admitted_items: u32,
    held: Amounts,
    charged: Amounts,
    /// Why it was refused (`status code`), for examples.
    refusal: String,
}

impl Answer {
    fn recorded(answer: &crate::ledger::record::AuthorizationRecord) -> Self {
        Self {
            admitted: answer.admitted,
            admitted_items: answer.admitted_items,
            held: amounts(&answer.held),
            charged: amounts(&answer.charged),
            refusal: refusal(
                answer.status,
                answer.error.as_ref().map(|(code, _)| code.as_str()),
            ),
        }
    }

    fn of(authorization: &Authorization) -> Self {
        Self {
            admitted: authorization.admitted,
            admitted_items: authorization.admitted_items,
            held: authorization.held.clone(),
            charged: authorization.charged.clone(),
            refusal: refusal(
                authorization.status,
                authorization
                    .error
                    .as_ref()
                    .map(|error| error.code.as_str()),
            ),
        }
    }

    fn refused(error: &MeterError) -> Self {
        Self {
            refusal: format!("{} {}", error.status(), error.code()),
            ..Self::default()
        }
    }

    /// Credits moved now (held plus charged), as shadow mode counts them.
    fn moved(&self) -> Amounts {
        let mut moved = self.held.clone();
        add(&mut moved, &self.charged);
        moved
    }

    fn describe(&self) -> String {
        if self.admitted {
            format!(
                "admit {} items, hold {}, charge {}",
                self.admitted_items,
                list(&self.held),
                list(&self.charged)
            )
        } else {
            format!("refuse {}", self.refusal)
        }
    }
}

fn refusal(status: Option<u16>, code: Option<&str>) -> String {
    match (status, code) {
        (Some(status), Some(code)) => format!("{status} {code}"),
        (None, Some(code)) => code.to_owned(),
        (Some(status), None) => status.to_string(),
        (None, None) => String::new(),
    }
}

fn list(amounts: &Amounts) -> String {
    if amounts.is_empty() {
        return "0".to_owned();
    }
    amounts
        .iter()
        .map(|(balance, amount)| format!("{amount} {balance}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, Copy, Default)]
struct Kinds {
    admitted_to_refused: bool,
    refused_to_admitted: bool,
    partial_changed: bool,
    charge_changed: bool,
}

impl Kinds {
    fn any(&self) -> bool {
        self.admitted_to_refused
            || self.refused_to_admitted
            || self.partial_changed
            || self.charge_changed
    }
}

impl Outcome {
    /// Credits charged: recorded, by the candidate.
    fn charged(&self) -> (&Amounts, &Amounts) {
        static NOTHING: Amounts = Amounts::new();
        match &self.step {
            Step::Authorize {
                recorded,
                candidate,
            } => (&recorded.charged, &candidate.charged),
            Step::Settle {
                recorded_charged,
                candidate_charged,
                ..
            } => (
                recorded_charged,
                candidate_charged.as_ref().unwrap_or(&NOTHING),
            ),
        }
    }

    fn kinds(&self) -> Kinds {
        let (recorded_charged, candidate_charged) = self.charged();
        let charge_changed = recorded_charged != candidate_charged;
        match &self.step {
            Step::Authorize {
                recorded,
                candidate,
            } => Kinds {
                admitted_to_refused: recorded.admitted && !candidate.admitted,
                refused_to_admitted: !recorded.admitted && candidate.admitted,
                partial_changed: recorded.admitted
                    && candidate.admitted
                    && recorded.admitted_items != candidate.admitted_items,
                charge_changed,
            },
            Step::Settle { .. } => Kinds {
                charge_changed,
                ..Kinds::default()
            },
        }
    }

    fn describe_kinds(&self, kinds: &Kinds) -> Vec<(&'static str, String, String)> {
        let mut told = Vec::new();
        let (recorded_text, candidate_text) = match &self.step {
            Step::Authorize {
                recorded,
                candidate,
            } => (recorded.describe(), candidate.describe()),
            Step::Settle {
                recorded_charged,
                candidate_charged,
                unsettled,
                ..
            } => (
                format!("settle: charge {}", list(recorded_charged)),
                match (candidate_charged, unsettled) {
                    (Some(charged), _) => format!("settle: charge {}", list(charged)),
                    (None, Some(Unsettled::Refused)) => "not settled: refused at authorize".into(),
                    (None, Some(Unsettled::Expired)) => "not settled: its hold had lapsed".into(),
                    (None, None) => "not settled: the candidate failed".into(),
                },
            ),
        };
        for (on, kind) in [
            (kinds.admitted_to_refused, "admitted_to_refused"),
            (kinds.refused_to_admitted, "refused_to_admitted"),
            (kinds.partial_changed, "partial_changed"),
            (kinds.charge_changed, "charge_changed"),
        ] {
            if on {
                told.push((kind, recorded_text.clone(), candidate_text.clone()));
            }
        }
        told
    }
}

impl Figures {
    fn add(&mut self, outcome: &Outcome, kinds: &Kinds) {
        let (recorded_charged, candidate_charged) = outcome.charged();
        add(&mut self.recorded_charged, recorded_charged);
        add(&mut self.candidate_charged, candidate_charged);
        if let Step::Authorize {
            recorded,
            candidate,
        } = &outcome.step
        {
            self.transactions += 1;
            self.recorded_admitted += u64::from(recorded.admitted);
            self.candidate_admitted += u64::from(candidate.admitted);
        }
        let id = &outcome.id;
        let examples = &mut self.examples;
        if kinds.admitted_to_refused {
            self.admitted_to_refused += 1;
            keep(&mut examples.admitted_to_refused, id, EXAMPLES_PER_ROW_MAX);
        }
        if kinds.refused_to_admitted {
            self.refused_to_admitted += 1;
            keep(&mut examples.refused_to_admitted, id, EXAMPLES_PER_ROW_MAX);
        }
        if kinds.partial_changed {
            self.partial_changed += 1;
            keep(&mut examples.partial_changed, id, EXAMPLES_PER_ROW_MAX);
        }
        if kinds.charge_changed {
            self.charge_changed += 1;
            keep(&mut examples.charge_changed, id, EXAMPLES_PER_ROW_MAX);
        }
    }
}

/// Shadow mode's classification (`shadow.rs`: `observe_authorize`, `observe_settle`).
fn shadow_view(view: &mut ShadowView, outcome: &Outcome) {
    match &outcome.step {
        // Shadow mode compares every verdict of the active policy (admissions and
        // refusals); a recorded refusal without its request was not replayed.
        Step::Authorize {
            recorded,
            candidate,
        } if outcome.replayed => {
            view.authorizes_compared += 1;
            let kind = if outcome.candidate_failure.is_some() {
                Some("shadow_failed")
            } else if recorded.admitted != candidate.admitted {
                Some("admit_vs_reject")
            } else if recorded.admitted_items != candidate.admitted_items {
                Some("admitted_items")
            } else if (&recorded.held, &recorded.charged) != (&candidate.held, &candidate.charged)
                && recorded.moved() != candidate.moved()
            {
                Some("charges")
            } else {
                None
            };
            if let Some(kind) = kind {
                let moved = if outcome.candidate_failure.is_some() {
                    Amounts::new()
                } else {
                    delta(&recorded.moved(), &candidate.moved())
                };
                *view.by_kind.entry(kind.to_owned()).or_insert(0) += 1;
                add(&mut view.authorize_charge_delta, &moved);
                add(
                    view.by_tenant.entry(outcome.tenant.clone()).or_default(),
                    &moved,
                );
            }
        }
        Step::Authorize { .. } => {}
        Step::Settle {
            recorded_charged,
            candidate_charged: Some(candidate_charged),
            ..
        } => {
            view.settles_compared += 1;
            if recorded_charged != candidate_charged {
                let charged = delta(recorded_charged, candidate_charged);
                *view.by_kind.entry("charges".to_owned()).or_insert(0) += 1;
                add(&mut view.settle_charge_delta, &charged);
                add(
                    view.by_tenant.entry(outcome.tenant.clone()).or_default(),
                    &charged,
                );
            }
        }
        Step::Settle { .. } => {}
    }
}

fn pairs_map(pairs: &[(String, String)]) -> BTreeMap<String, String> {
    pairs.iter().cloned().collect()
}

fn fatal(error: &MeterError) -> bool {
    matches!(
        error,
        MeterError::StoreCorrupt(_) | MeterError::StoreUnavailable(_) | MeterError::ShutDown
    )
}

/// The recorded authorize, decided again by the candidate.
fn authorize_again(
    decider: &mut Decider<'_>,
    authorized: &Authorized,
) -> Result<Outcome, MeterError> {
    let recorded = Answer::recorded(&authorized.answer);
    let mut outcome = Outcome {
        id: authorized.id.clone(),
        tenant: authorized.tenant.clone(),
        operation: authorized.operation.clone(),
        step: Step::Authorize {
            recorded,
            candidate: Answer::default(),
        },
        candidate_failure: None,
        replayed: authorized.request.is_some(),
    };
    let Some(request) = &authorized.request else {
        // A refusal recorded before format 8: the request is not known. Counted as
        // refused both times, and in the notes.
        return Ok(outcome);
    };
    let checked = CheckedAuthorize {
        id: authorized.id.clone(),
        request: AuthorizeRequest {
            transaction_id: Some(authorized.id.clone()),
            tenant: authorized.tenant.clone(),
            operation: authorized.operation.clone(),
            items: request.items.clone(),
            attributes: pairs_map(&request.attributes),
            body: request.body.clone(),
        },
        fingerprint: authorized.fingerprint,
    };
    let candidate = match decider.authorize(&checked, Pricing::Admit) {
        Ok(authorization) => Answer::of(&authorization),
        Err(error) if fatal(&error) => return Err(error),
        Err(error) => {
            if error.caused_by_policy() {
                outcome.candidate_failure = Some(error.to_string());
            }
            Answer::refused(&error)
        }
    };
    if let Step::Authorize {
        candidate: slot, ..
    } = &mut outcome.step
    {
        *slot = candidate;
    }
    Ok(outcome)
}

/// The recorded settle, decided again on the candidate's transaction.
fn settle_again(decider: &mut Decider<'_>, settled: &Settled) -> Result<Outcome, MeterError> {
    let operation = decider
        .state
        .transaction(&settled.id)
        .map(|record| record.operation.clone())
        .unwrap_or_default();
    let request = SettleRequest {
        transaction_id: settled.id.clone(),
        status: settled.status,
        attributes: settled
            .outcome
            .as_ref()
            .map(|outcome| pairs_map(&outcome.attributes))
            .unwrap_or_default(),
        body: settled
            .outcome
            .as_ref()
            .and_then(|outcome| outcome.body.clone()),
    };
    let mut failure = None;
    let (candidate_charged, unsettled) = match decider.settle(&request) {
        Ok(receipt) => (Some(receipt.charged), None),
        Err(error) if fatal(&error) => return Err(error),
        Err(MeterError::TransactionRejected(_)) => (None, Some(Unsettled::Refused)),
        Err(MeterError::HoldExpired(_)) => (None, Some(Unsettled::Expired)),
        Err(error) => {
            failure = Some(error.to_string());
            (None, None)
        }
    };
    Ok(Outcome {
        id: settled.id.clone(),
        tenant: settled.tenant.clone(),
        operation,
        step: Step::Settle {
            recorded_charged: amounts(&settled.answer.charged),
            candidate_charged,
            without_outcome: settled.outcome.is_none(),
            unsettled,
        },
        candidate_failure: failure,
        replayed: true,
    })
}
