//! The delivery thread: while this process leads ([`WebhookStore::lead`]), each round
//! takes every webhook, tries its requeued dead letters once, then POSTs the events of
//! the feed after its cursor one by one, in order, until one fails; that event is
//! tried again after a backoff (doubling from `retry_base_ms` to `retry_max_ms`, with
//! a ±25% jitter so that receivers coming back are not hit in step), and given up on
//! (dead-lettered) after the webhook's `attempts_max`. A round starts when an event
//! becomes durable in this process, and every [`ROUND_EVERY_MS`] otherwise.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::sign::{EVENT_ID_HEADER, SIGNATURE_HEADER, signature};
use super::{DeadRow, Webhook, WebhookStore};
use crate::error::MeterError;
use crate::meter::Meter;
use crate::model::EventView;

/// How often a round starts when no event wakes it, in ms: the pace of retries and of
/// other replicas' events.
pub const ROUND_EVERY_MS: u64 = 250;
/// Events read from the feed per webhook and round, at most.
const PAGE_EVENTS_MAX: usize = 100;
/// The longest error kept for a webhook, in bytes.
const ERROR_BYTES_MAX: usize = 300;

/// How deliveries are paced.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryOptions {
    /// The wait after a first failed attempt; it doubles with each further one.
    pub retry_base_ms: u64,
    /// The longest wait between two attempts.
    pub retry_max_ms: u64,
    /// The longest a receiver may take to answer one POST.
    pub timeout_ms: u64,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            retry_base_ms: 1_000,
            retry_max_ms: 600_000,
            timeout_ms: 5_000,
        }
    }
}

/// The wait before attempt `attempts + 1` at `event_id`.
pub fn backoff_ms(options: &DeliveryOptions, attempts: u32, event_id: u64) -> u64 {
    let doubled = options
        .retry_base_ms
        .saturating_mul(1_u64 << attempts.saturating_sub(1).min(40));
    let capped = doubled.min(options.retry_max_ms);
    let mut seed = [0_u8; 12];
    seed[..8].copy_from_slice(&event_id.to_le_bytes());
    seed[8..].copy_from_slice(&attempts.to_le_bytes());
    let permille = 750 + xxhash_rust::xxh3::xxh3_64(&seed) % 501;
    capped.saturating_mul(permille) / 1_000
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The delivery thread of a meter; stops when dropped.
pub struct Deliverer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Deliverer {
    pub fn start(meter: Arc<Meter>, options: DeliveryOptions) -> Result<Self, MeterError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("creditgate-webhooks".to_owned())
            .spawn(move || run(&meter, &options, &stopping))
            .map_err(|error| {
                MeterError::StoreUnavailable(format!("cannot start the webhook thread: {error}"))
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Deliverer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(meter: &Meter, options: &DeliveryOptions, stop: &AtomicBool) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_millis(options.timeout_ms))
        .redirects(0)
        .build();
    let store = meter.webhook_store();
    let mut signal = meter.event_signal();
    let mut lease = None;
    while !stop.load(Ordering::Acquire) {
        if lease.is_none() {
            lease = store.lead().unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot tell whether this process delivers webhooks");
                None
            });
        }
        if lease.is_some()
            && let Err(error) = round(meter, store.as_ref(), &agent, options)
        {
            tracing::warn!(%error, "a round of webhook deliveries failed; the next one retries");
            // A lost connection may have lost the lead: take it again.
            lease = None;
        }
        // Until the next durable event, the next round, or the stop.
        signal.borrow_and_update();
        let until = std::time::Instant::now() + Duration::from_millis(ROUND_EVERY_MS);
        while std::time::Instant::now() < until
            && !stop.load(Ordering::Acquire)
            && !signal.has_changed().unwrap_or(false)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// One pass over every webhook.
fn round(
    meter: &Meter,
    store: &dyn WebhookStore,
    agent: &ureq::Agent,
    options: &DeliveryOptions,
) -> Result<(), MeterError> {
    for hook in store.list()? {
        for event_id in &hook.requeued {
            let failure = match event(meter, *event_id)? {
                Some(event) => post(agent, &hook, &event).err(),
                None => Some("the event is no longer in the feed".to_owned()),
            };
            store.redelivered(&hook.id, *event_id, failure.as_deref())?;
        }
        if hook.next_attempt_at_ms.is_none_or(|at| now_ms() >= at) {
            deliver_feed(meter, store, agent, options, &hook)?;
        }
    }
    Ok(())
}

/// The event numbered `id`, if the feed has it.
fn event(meter: &Meter, id: u64) -> Result<Option<EventView>, MeterError> {
    let page = meter.events(id.saturating_sub(1), 1, None, Duration::ZERO)?;
    Ok(page.events.into_iter().find(|event| event.id == id))
}

/// Delivers the webhook's next events, in order, until one fails.
fn deliver_feed(
    meter: &Meter,
    store: &dyn WebhookStore,
    agent: &ureq::Agent,
    options: &DeliveryOptions,
    hook: &Webhook,
) -> Result<(), MeterError> {
    let page = meter.events(
        hook.after,
        PAGE_EVENTS_MAX,
        hook.tenant.as_deref(),
        Duration::ZERO,
    )?;
    let mut attempts = hook.attempts;
    // Events of other kinds move the cursor without a write of their own.
    let mut skipped = None;
    for event in page.events {
        if !hook.wants(event.event.kind()) {
            skipped = Some(event.id);
            continue;
        }
        if let Some(after) = skipped.take() {
            store.delivered(&hook.id, after)?;
        }
        let posted = post(agent, hook, &event);
        delivery(match (&posted, attempts + 1 >= hook.attempts_max) {
            (Ok(()), _) => "delivered",
            (Err(_), false) => "failed",
            (Err(_), true) => "dead_lettered",
        });
        match posted {
            Ok(()) => {
                store.delivered(&hook.id, event.id)?;
                attempts = 0;
            }
            Err(error) => {
                attempts += 1;
                if attempts >= hook.attempts_max {
                    tracing::warn!(webhook = %hook.id, event = event.id, %error, attempts, "a webhook gave up on an event; it is dead-lettered");
                    store.dead(
                        &hook.id,
                        &DeadRow {
                            event_id: event.id,
                            attempts,
                            last_error: error,
                            dead_at_ms: now_ms(),
                            requeued: false,
                        },
                    )?;
                    attempts = 0;
                    continue;
                }
                let next = now_ms().saturating_add(backoff_ms(options, attempts, event.id));
                store.failed(&hook.id, attempts, next, &error)?;
                return Ok(());
            }
        }
    }
    if let Some(after) = skipped {
        store.delivered(&hook.id, after)?;
    }
    Ok(())
}

/// Counts an attempt by its outcome.
fn delivery(outcome: &'static str) {
    metrics::counter!("creditgate_webhook_deliveries_total", "outcome" => outcome).increment(1);
}

/// One signed POST of one event; any answer but 2xx is a failure, told in a sentence.
fn post(agent: &ureq::Agent, hook: &Webhook, event: &EventView) -> Result<(), String> {
    let body = serde_json::to_vec(event).map_err(|error| error.to_string())?;
    let signed = signature(hook.secret.as_bytes(), now_ms(), &body)?;
    let answer = agent
        .post(&hook.url)
        .set("content-type", "application/json")
        .set(EVENT_ID_HEADER, &event.id.to_string())
        .set(SIGNATURE_HEADER, &signed)
        .send_bytes(&body);
    let failure = match answer {
        Ok(response) if (200..300).contains(&response.status()) => return Ok(()),
        Ok(response) => format!("the receiver answered {}", response.status()),
        Err(ureq::Error::Status(status, _)) => format!("the receiver answered {status}"),
        Err(error) => format!("the receiver could not be reached: {error}"),
    };
    let mut failure = failure;
    if failure.len() > ERROR_BYTES_MAX {
        let mut end = ERROR_BYTES_MAX;
        while !failure.is_char_boundary(end) {
            end -= 1;
        }
        failure.truncate(end);
    }
    Err(failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_a_bounded_jitter() {
        let options = DeliveryOptions::default();
        for (attempts, nominal) in [
            (1, 1_000),
            (2, 2_000),
            (5, 16_000),
            (11, 600_000),
            (40, 600_000),
        ] {
            let wait = backoff_ms(&options, attempts, 7);
            assert!(
                (nominal * 3 / 4..=nominal * 5 / 4).contains(&wait),
                "attempt {attempts}: {wait} ms against {nominal}"
            );
        }
        let spread: std::collections::BTreeSet<u64> = (0..20)
            .map(|event| backoff_ms(&options, 3, event))
            .collect();
        assert!(
            spread.len() > 10,
            "receivers coming back are not hit in step"
        );
    }
}
