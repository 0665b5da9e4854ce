//! Runs one case against a module on a fresh scratch ledger (SQLite or PostgreSQL), with
//! a hand-driven clock.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::case::{Action, Case, Expect, ExpectedEntry, ExpectedEvent, ExpectedLot};
use creditgate::clock::Clock;
use creditgate::clock::ManualClock;
use creditgate::error::MeterError;
use creditgate::model::{
    AuthorizeRequest, EventView, GrantRequest, GrantTerms, LotView, RefillRequest, SettleRequest,
    SpendCapTerms, TenantBalances, ThresholdTerms,
};
use creditgate::policy::component::Limits;
use creditgate::policy::probe;
use creditgate::store::scratch::{ScratchLedger, ScratchStore};
use creditgate::{Meter, MeterConfig, PolicySource};

/// Finds another module by name, for `swap_policy` steps.
pub type ModuleResolver<'a> = &'a dyn Fn(&str) -> Result<Vec<u8>, String>;

/// The clock every case starts at (2023-11-14T22:13:20Z).
pub const CASE_START_MS: u64 = 1_700_000_000_000;

/// Events read from the feed at a time (its largest page).
const EVENTS_PAGE: usize = 1_000;

/// What a step answered.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Authorization(serde_json::Value),
    Receipt(serde_json::Value),
    /// A grant: `balances` checks what it did.
    Operator,
    /// An operator's setting of an account (an overdraft limit, a spend cap): the
    /// tenant's balances as it answered them, which must be what a read gives after it.
    Account(TenantBalances),
    Expired(usize),
    Swapped,
    Error {
        status: u16,
        code: String,
    },
}

struct Ledger {
    /// The module under check, for `restart` steps.
    module: Vec<u8>,
    scratch: ScratchLedger,
    clock: ManualClock,
    limits: Limits,
    /// Where modules compiled earlier in the run are kept, precompiled.
    compiled: Option<PathBuf>,
    /// None only while a swap closes one meter before opening the next: a SQLite
    /// ledger has one owner at a time.
    meter: Option<Meter>,
    /// The last journal entry seen, so each step's own entries can be told apart.
    journal_seen: i64,
    /// The last event of the feed seen, so each step's own events can be told apart.
    events_seen: u64,
}

impl Ledger {
    fn meter(&self) -> Result<&Meter, String> {
        self.meter
            .as_ref()
            .ok_or_else(|| "the ledger's meter did not reopen".to_owned())
    }

    /// The events raised since the last read, in the feed's order; the cursor moves
    /// past them.
    fn new_events(&mut self) -> Result<Vec<EventView>, String> {
        let mut raised = Vec::new();
        loop {
            let page = self
                .meter()?
                .events(self.events_seen, EVENTS_PAGE, None, Duration::ZERO)
                .map_err(|error| format!("cannot read the event feed: {error}"))?;
            self.events_seen = page.next_after;
            let full = page.events.len() == EVENTS_PAGE;
            raised.extend(page.events);
            if !full {
                return Ok(raised);
            }
        }
    }
}

fn open_meter(
    scratch: &ScratchLedger,
    clock: &ManualClock,
    module: Vec<u8>,
    limits: Limits,
    compiled: Option<&Path>,
) -> Result<Meter, String> {
    let mut config = MeterConfig::new(scratch.location().clone());
    config.clock = Arc::new(clock.clone());
    config.limits = limits;
    config.compile_cache_dir = compiled.map(Path::to_path_buf);
    config.sweep_interval_ms = 0;
    Meter::open(config, PolicySource::Component(module))
        .map_err(|error| format!("the module did not load: {error}"))
}

/// Runs the case under the check's bounds (with the probes' wall-clock bound, so that a
/// loaded machine does not fail a step); `Err` describes the first step that did not go
/// as expected. `compiled`: a directory where modules are kept precompiled across the
/// run's cases.
pub fn run_case(
    case: &Case,
    module: &[u8],
    resolve: ModuleResolver<'_>,
    store: &ScratchStore,
    limits: Limits,
    compiled: Option<&Path>,
) -> Result<(), String> {
    let limits = probe::lenient_wall(limits);
    let scratch = store
        .create()
        .map_err(|error| format!("cannot make a fresh ledger: {error}"))?;
    let clock = ManualClock::starting_at(CASE_START_MS);
    let meter = open_meter(&scratch, &clock, module.to_vec(), limits, compiled)?;
    let mut ledger = Ledger {
        module: module.to_vec(),
        scratch,
        clock,
        limits,
        compiled: compiled.map(Path::to_path_buf),
        meter: Some(meter),
        journal_seen: 0,
        events_seen: 0,
    };
    // Opening the ledger raises nothing (nothing is watched yet); from here on, each
    // step's events are those after the cursor.
    ledger.new_events()?;
    let mut answers: Vec<Answer> = Vec::with_capacity(case.steps.len());
    for (index, step) in case.steps.iter().enumerate() {
        let (label, answer) = match &step.action {
            Action::Repeat(earlier) => {
                let original = case
                    .steps
                    .get(*earlier)
                    .filter(|_| *earlier < index)
                    .ok_or_else(|| {
                        format!(
                            "step {index} repeats step {earlier}, which does not come before it"
                        )
                    })?;
                let answer = perform(&mut ledger, &original.action, resolve)?;
                if Some(&answer) != answers.get(*earlier) {
                    return Err(format!(
                        "step {index} (repeat of step {earlier}): a repeated call must return the first answer; first {:?}, then {answer:?}",
                        answers.get(*earlier)
                    ));
                }
                (format!("repeat of step {earlier}"), answer)
            }
            action => (describe(action), perform(&mut ledger, action, resolve)?),
        };
        // Read at once, before the checks' reads, so that the step's events are exactly
        // those its own call raised.
        let raised = ledger.new_events()?;
        let repeat = matches!(step.action, Action::Repeat(_));
        check(&ledger, &answer, &raised, &step.expect, repeat)
            .map_err(|mismatch| format!("step {index} ({label}): {mismatch}"))?;
        ledger.journal_seen = ledger
            .meter()?
            .journal_after(ledger.journal_seen, usize::MAX)
            .map_err(|error| error.to_string())?
            .last()
            .map_or(ledger.journal_seen, |entry| entry.id);
        answers.push(answer);
    }
    let violations = ledger
        .meter()?
        .invariant_violations()
        .map_err(|error| error.to_string())?;
    if violations.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "ledger invariants broke: {}",
            violations.join("; ")
        ))
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Grant {
            tenant,
            balance,
            amount,
            ..
        } => format!("grant {amount} {balance} to {tenant}"),
        Action::Void { tenant, grant_id } => format!("void of {grant_id} of {tenant}"),
        Action::Refill {
            tenant,
            refill_id,
            remove: true,
            ..
        } => format!("removal of refill {refill_id} of {tenant}"),
        Action::Refill {
            tenant,
            refill_id,
            amount,
            balance,
            every,
            mode,
            ..
        } => format!(
            "refill {refill_id} of {tenant}: {} {} every {} ({})",
            amount.map_or_else(|| "?".to_owned(), |amount| amount.to_string()),
            balance.as_deref().unwrap_or("?"),
            every.as_deref().unwrap_or("?"),
            mode.as_deref().unwrap_or("?")
        ),
        Action::Overdraft {
            tenant,
            balance,
            limit,
        } => format!("overdraft of {limit} on {tenant}/{balance}"),
        Action::SpendCap {
            tenant,
            balance,
            remove: true,
            ..
        } => format!("removal of the spend cap on {tenant}/{balance}"),
        Action::SpendCap {
            tenant,
            balance,
            cap,
            window,
            time_zone,
            ..
        } => format!(
            "spend cap of {} per {} ({}) on {tenant}/{balance}",
            cap.map_or_else(|| "?".to_owned(), |cap| cap.to_string()),
            window.as_deref().unwrap_or("?"),
            time_zone.as_deref().unwrap_or("UTC")
        ),
        Action::Thresholds {
            tenant,
            balance,
            remove: true,
            ..
        } => format!("removal of the thresholds on {tenant}/{balance}"),
        Action::Thresholds {
            tenant,
            balance,
            levels,
            lot_expiring_lead_ms,
            ..
        } => format!(
            "thresholds on {tenant}/{balance}: {} level(s){}",
            levels.as_ref().map_or(0, Vec::len),
            lot_expiring_lead_ms.map_or_else(String::new, |lead| format!(
                ", lots warned of {lead} ms before they expire"
            ))
        ),
        Action::Authorize {
            transaction_id,
            operation,
            ..
        } => format!("authorize {transaction_id} {operation}"),
        Action::Settle {
            transaction_id,
            status,
            ..
        } => format!("settle {transaction_id} {status}"),
        Action::Repeat(step) => format!("repeat of step {step}"),
        Action::AdvanceMs(ms) => format!("advance {ms} ms"),
        Action::SwapPolicy(name) => format!("swap to {name}"),
        Action::Restart {} => "restart".to_owned(),
    }
}

fn failed(error: MeterError) -> Answer {
    Answer::Error {
        status: error.status(),
        code: error.code().to_owned(),
    }
}

fn to_value<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, String> {
    serde_json::to_value(value).map_err(|error| error.to_string())
}

fn perform(
    ledger: &mut Ledger,
    action: &Action,
    resolve: ModuleResolver<'_>,
) -> Result<Answer, String> {
    let meter = ledger.meter()?;
    Ok(match action {
        Action::Grant {
            tenant,
            balance,
            amount,
            grant_id,
            effective_in_ms,
            expires_in_ms,
            priority,
            category,
        } => match meter.grant(GrantRequest {
            grant_id: grant_id
                .clone()
                .unwrap_or_else(|| format!("grant-{tenant}-{balance}-{amount}")),
            tenant: tenant.clone(),
            balance: balance.clone(),
            amount: *amount,
            terms: GrantTerms {
                effective_at_ms: effective_in_ms.map(|in_ms| after(ledger, in_ms)),
                expires_at_ms: expires_in_ms.map(|in_ms| after(ledger, in_ms)),
                priority: *priority,
                category: category.clone(),
                metadata: Default::default(),
            },
        }) {
            Ok(_) => Answer::Operator,
            Err(error) => failed(error),
        },
        Action::Void { tenant, grant_id } => match meter.void(tenant, grant_id) {
            Ok(answered) => Answer::Account(answered),
            Err(error) => failed(error),
        },
        Action::Refill {
            tenant,
            refill_id,
            balance,
            amount,
            every,
            mode,
            rollover_cap,
            time_zone,
            priority,
            category,
            remove,
        } => {
            let request = match (remove, balance, amount, every, mode) {
                (true, None, None, None, None) => None,
                (false, Some(balance), Some(amount), Some(every), Some(mode)) => {
                    Some(RefillRequest {
                        balance: balance.clone(),
                        amount: *amount,
                        every: every.clone(),
                        time_zone: time_zone.clone().unwrap_or_else(|| "UTC".to_owned()),
                        anchor_ms: None,
                        mode: mode.clone(),
                        rollover_cap: *rollover_cap,
                        priority: *priority,
                        category: category.clone(),
                    })
                }
                _ => {
                    return Err(
                        "a refill step sets `balance`, `amount`, `every` and `mode`, or is \
                         `\"remove\": true` alone"
                            .to_owned(),
                    );
                }
            };
            match meter.set_refill(tenant, refill_id, request.as_ref()) {
                Ok(_) => Answer::Operator,
                Err(error) => failed(error),
            }
        }
        Action::Overdraft {
            tenant,
            balance,
            limit,
        } => match meter.set_overdraft(tenant, balance, *limit) {
            Ok(answered) => Answer::Account(answered),
            Err(error) => failed(error),
        },
        Action::SpendCap {
            tenant,
            balance,
            cap,
            window,
            time_zone,
            remove,
        } => {
            let terms = match (remove, cap, window) {
                (true, None, None) if time_zone.is_none() => None,
                (false, Some(cap), Some(window)) => Some(SpendCapTerms {
                    cap: *cap,
                    window: window.clone(),
                    time_zone: time_zone.clone().unwrap_or_else(|| "UTC".to_owned()),
                }),
                _ => {
                    return Err(
                        "a spend_cap step sets `cap` and `window` (and `time_zone`), or is \
                         `\"remove\": true` alone"
                            .to_owned(),
                    );
                }
            };
            match meter.set_spend_cap(tenant, balance, terms.as_ref()) {
                Ok(answered) => Answer::Account(answered),
                Err(error) => failed(error),
            }
        }
        Action::Thresholds {
            tenant,
            balance,
            levels,
            lot_expiring_lead_ms,
            remove,
        } => {
            let terms = match (remove, levels, lot_expiring_lead_ms) {
                (true, None, None) => None,
                (false, levels, lead) => Some(ThresholdTerms {
                    levels: levels.clone().unwrap_or_default(),
                    lot_expiring_lead_ms: *lead,
                }),
                (true, _, _) => {
                    return Err(
                        "a thresholds step sets `levels` and `lot_expiring_lead_ms` (either, \
                         both or neither), or is `\"remove\": true` alone"
                            .to_owned(),
                    );
                }
            };
            match meter.set_thresholds(tenant, balance, terms.as_ref()) {
                Ok(answered) => Answer::Account(answered),
                Err(error) => failed(error),
            }
        }
        Action::Authorize {
            transaction_id,
            tenant,
            operation,
            items,
            attributes,
        } => {
            match meter.authorize(AuthorizeRequest {
                transaction_id: Some(transaction_id.clone()),
                tenant: tenant.clone(),
                operation: operation.clone(),
                items: items.clone(),
                attributes: attributes.clone(),
                body: None,
            }) {
                Ok(answer) => Answer::Authorization(to_value(&answer)?),
                Err(error) => failed(error),
            }
        }
        Action::Settle {
            transaction_id,
            status,
            attributes,
        } => match meter.settle(SettleRequest {
            transaction_id: transaction_id.clone(),
            status: *status,
            attributes: attributes.clone(),
            body: None,
        }) {
            Ok(receipt) => Answer::Receipt(to_value(&receipt)?),
            Err(error) => failed(error),
        },
        Action::AdvanceMs(ms) => {
            ledger.clock.advance_ms(*ms);
            match meter.expire_due() {
                Ok(count) => Answer::Expired(count),
                Err(error) => failed(error),
            }
        }
        Action::SwapPolicy(name) => {
            // The same ledger file, restarted on another module.
            reopen(ledger, resolve(name)?)?;
            Answer::Swapped
        }
        Action::Restart {} => {
            reopen(ledger, ledger.module.clone())?;
            Answer::Swapped
        }
        Action::Repeat(_) => return Err("a repeat cannot repeat a repeat".to_owned()),
    })
}

/// Closes the ledger's meter and opens the same ledger on `module`.
fn reopen(ledger: &mut Ledger, module: Vec<u8>) -> Result<(), String> {
    // A SQLite ledger has one owner at a time: the old meter closes first.
    drop(ledger.meter.take());
    ledger.meter = Some(open_meter(
        &ledger.scratch,
        &ledger.clock,
        module,
        ledger.limits,
        ledger.compiled.as_deref(),
    )?);
    Ok(())
}

/// The case clock's time `in_ms` after now, in ms since the epoch.
fn after(ledger: &Ledger, in_ms: u64) -> i64 {
    i64::try_from(ledger.clock.now_ms().saturating_add(in_ms)).unwrap_or(i64::MAX)
}

/// Compares one expected field; `name` names it in the mismatch.
fn same<T: PartialEq + std::fmt::Debug>(
    name: &str,
    expected: &Option<T>,
    actual: T,
) -> Result<(), String> {
    match expected {
        Some(expected) if *expected != actual => {
            Err(format!("{name}: expected {expected:?}, got {actual:?}"))
        }
        _ => Ok(()),
    }
}

fn field<T: serde::de::DeserializeOwned>(
    answer: &serde_json::Value,
    name: &str,
) -> Result<T, String> {
    serde_json::from_value(answer[name].clone())
        .map_err(|error| format!("{name}: cannot read the answer: {error}"))
}

/// `raised` is what the step raised; a `repeat` must write no journal entry and raise no
/// event unless `expect` says otherwise.
fn check(
    ledger: &Ledger,
    answer: &Answer,
    raised: &[EventView],
    expect: &Expect,
    repeat: bool,
) -> Result<(), String> {
    match (answer, &expect.error) {
        (Answer::Error { status, code }, Some(expected)) => {
            same(
                "error",
                &Some((expected.status, expected.code.clone())),
                (*status, code.clone()),
            )?;
        }
        (Answer::Error { status, code }, None) => {
            return Err(format!("unexpected error {status} {code}"));
        }
        (other, Some(expected)) => {
            return Err(format!(
                "expected error {} {}, got {other:?}",
                expected.status, expected.code
            ));
        }
        (Answer::Authorization(value), None) => {
            same(
                "admitted",
                &expect.admitted,
                field::<bool>(value, "admitted")?,
            )?;
            same(
                "status",
                &expect.status,
                field::<Option<u16>>(value, "status")?,
            )?;
            let code = value["error"]["code"].as_str().map(str::to_owned);
            same("code", &expect.code, code)?;
            same(
                "admitted_items",
                &expect.admitted_items,
                field::<u32>(value, "admitted_items")?,
            )?;
            same("held", &expect.held, field(value, "held")?)?;
            same("charged", &expect.charged, field(value, "charged")?)?;
            same("headers", &expect.headers, field(value, "headers")?)?;
            same("meta", &expect.meta, value["meta"].clone())?;
        }
        (Answer::Receipt(value), None) => {
            same("charged", &expect.charged, field(value, "charged")?)?;
            same("released", &expect.released, field(value, "released")?)?;
            same(
                "uncollected",
                &expect.uncollected,
                field(value, "uncollected")?,
            )?;
            same("headers", &expect.headers, field(value, "headers")?)?;
            same("meta", &expect.meta, value["meta"].clone())?;
        }
        (Answer::Expired(count), None) => same("expired", &expect.expired, *count)?,
        (Answer::Account(answered), None) => {
            let read = ledger
                .meter()?
                .balances(&answered.tenant)
                .map_err(|error| error.to_string())?;
            same(
                "the operator's answer (against the balances read after it)",
                &Some(read),
                answered.clone(),
            )?;
        }
        (Answer::Operator | Answer::Swapped, None) => {}
    }
    for (tenant, expected) in expect.balances.iter().flatten() {
        let actual = ledger
            .meter()?
            .balances(tenant)
            .map_err(|error| error.to_string())?;
        same(
            &format!("balances of {tenant}"),
            &Some(expected.clone()),
            actual.balances,
        )?;
    }
    for (tenant, expected) in expect.holds.iter().flatten() {
        let actual = ledger
            .meter()?
            .balances(tenant)
            .map_err(|error| error.to_string())?;
        same(
            &format!("holds of {tenant}"),
            &Some(expected.clone()),
            actual.held,
        )?;
    }
    for (tenant, expected) in expect.spend_caps.iter().flatten() {
        let actual = ledger
            .meter()?
            .balances(tenant)
            .map_err(|error| error.to_string())?;
        same(
            &format!("spend caps of {tenant}"),
            &Some(expected.clone()),
            actual.spend_caps,
        )?;
    }
    for (tenant, expected) in expect.thresholds.iter().flatten() {
        let actual = ledger
            .meter()?
            .balances(tenant)
            .map_err(|error| error.to_string())?;
        same(
            &format!("thresholds of {tenant}"),
            &Some(expected.clone()),
            actual.thresholds,
        )?;
    }
    for (tenant, expected) in expect.lots.iter().flatten() {
        let actual: Vec<ExpectedLot> = ledger
            .meter()?
            .lots(tenant)
            .map_err(|error| error.to_string())?
            .lots
            .unwrap_or_default()
            .into_iter()
            .map(|lot| ExpectedLot {
                grant_id: lot.grant_id,
                balance: lot.balance,
                remaining: lot.remaining,
                state: lot.state,
            })
            .collect();
        if actual != *expected {
            return Err(format!(
                "lots of {tenant}: expected {}, got {}",
                json_text(expected),
                json_text(&actual)
            ));
        }
    }
    let expected_events = match (&expect.events, repeat) {
        (Some(events), _) => Some(events.clone()),
        (None, true) => Some(Vec::new()),
        (None, false) => None,
    };
    if let Some(expected) = expected_events {
        let actual = as_stated(ledger, raised)?;
        if actual != expected {
            return Err(format!(
                "events: expected {}, got {}",
                json_text(&expected),
                json_text(&actual)
            ));
        }
    }
    // A movement drawn from several lots is one journal entry per lot; a case states
    // what the policy moved, so consecutive entries of one kind on one account are
    // one line here.
    let mut written: Vec<ExpectedEntry> = Vec::new();
    for entry in ledger
        .meter()?
        .journal_after(ledger.journal_seen, usize::MAX)
        .map_err(|error| error.to_string())?
    {
        match written.last_mut() {
            Some(last)
                if (&last.tenant, &last.balance, &last.kind)
                    == (&entry.tenant, &entry.balance, &entry.kind) =>
            {
                last.amount = last.amount.saturating_add(entry.amount);
            }
            _ => written.push(ExpectedEntry {
                tenant: entry.tenant,
                balance: entry.balance,
                kind: entry.kind,
                amount: entry.amount,
            }),
        }
    }
    let expected_journal = match (&expect.journal, repeat) {
        (Some(journal), _) => Some(journal.clone()),
        (None, true) => Some(Vec::new()),
        (None, false) => None,
    };
    same("journal", &expected_journal, written)?;
    Ok(())
}

/// Compact JSON, for a mismatch's message.
fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|error| error.to_string())
}

/// The events as a case states them: without `id` and `at_ms`, and without a lot's
/// number, once it is checked to number the lot `grant_id` granted on that balance (the
/// numbers differ between stores; the grant id names the lot in a case).
fn as_stated(ledger: &Ledger, raised: &[EventView]) -> Result<Vec<ExpectedEvent>, String> {
    let mut lots: BTreeMap<String, Vec<LotView>> = BTreeMap::new();
    let mut stated = Vec::with_capacity(raised.len());
    for (index, event) in raised.iter().enumerate() {
        let mut value = to_value(event)?;
        let Some(fields) = value.as_object_mut() else {
            return Err(format!("event {index}: not a JSON object: {value}"));
        };
        fields.remove("id");
        fields.remove("at_ms");
        let lot = fields
            .get_mut("details")
            .and_then(serde_json::Value::as_object_mut)
            .and_then(|details| details.remove("lot"));
        if let Some(lot) = lot {
            let grant_id = value["details"]["grant_id"].as_str().unwrap_or_default();
            let listed = match lots.entry(event.tenant.clone()) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(unread) => unread.insert(
                    ledger
                        .meter()?
                        .lots(&event.tenant)
                        .map_err(|error| error.to_string())?
                        .lots
                        .unwrap_or_default(),
                ),
            };
            let granted = listed
                .iter()
                .find(|listed| listed.grant_id == grant_id && listed.balance == event.balance)
                .map(|listed| listed.lot);
            if granted.is_none() || lot.as_u64() != granted {
                return Err(format!(
                    "events: event {index} ({}) names lot {lot} of {}/{}, but the lot granted \
                     by {grant_id:?} is {}",
                    event.event.kind(),
                    event.tenant,
                    event.balance,
                    granted.map_or_else(|| "not listed".to_owned(), |lot| lot.to_string())
                ));
            }
        }
        stated.push(
            serde_json::from_value(value)
                .map_err(|error| format!("event {index}: cannot read it: {error}"))?,
        );
    }
    Ok(stated)
}
