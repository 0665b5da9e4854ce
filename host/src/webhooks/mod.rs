//! Webhooks ([`docs/credits.md`](../../../docs/credits.md), part 6): each event of the
//! feed that matches a webhook is POSTed to its URL, in the feed's order, signed
//! ([`sign`]), and retried with backoff until the receiver answers 2xx or the attempts
//! run out and the event is dead-lettered. Delivery is at least once: the receiver
//! deduplicates by the event id.
//!
//! What webhooks are and where their delivery is live in the store ([`WebhookStore`]:
//! a file beside a SQLite ledger, tables of a PostgreSQL one). That is operational
//! state, not the ledger's: the events themselves are in the ledger, and a lost cursor
//! only delivers again. One process delivers at a time ([`WebhookStore::lead`]); the
//! [`deliver`] thread runs in `serve`.

pub mod deliver;
pub mod sign;

use crate::error::MeterError;
use crate::ledger::events::EventKind;
use crate::meter::validate;
use crate::model::{WebhookRequest, WebhookView};
use crate::store::StoreResult;

/// Webhooks one ledger may have.
pub const WEBHOOKS_MAX: usize = 16;
/// The longest URL, in bytes.
pub const URL_BYTES_MAX: usize = 2_048;
/// A secret's length, in bytes.
pub const SECRET_BYTES_MIN: usize = 16;
pub const SECRET_BYTES_MAX: usize = 256;
/// Attempts at one event, at most, and when the request names none.
pub const ATTEMPTS_MAX: u32 = 100;
pub const ATTEMPTS_DEFAULT: u32 = 30;
/// Dead letters one answer lists, at most.
pub const DEAD_LETTERS_PAGE_MAX: usize = 1_000;

/// A webhook as stored: what the operator set and where its delivery is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub secret: String,
    pub tenant: Option<String>,
    pub kinds: Vec<String>,
    pub attempts_max: u32,
    /// The last event delivered, skipped or dead-lettered.
    pub after: u64,
    /// Failed attempts at the next event.
    pub attempts: u32,
    pub next_attempt_at_ms: Option<u64>,
    pub last_error: Option<String>,
    pub dead_letters: u64,
    /// Dead letters an operator asked for again, oldest first.
    pub requeued: Vec<u64>,
}

impl Webhook {
    pub fn view(&self) -> WebhookView {
        WebhookView {
            webhook_id: self.id.clone(),
            url: self.url.clone(),
            tenant: self.tenant.clone(),
            kinds: self.kinds.clone(),
            attempts_max: self.attempts_max,
            after: self.after,
            attempts: self.attempts,
            next_attempt_at_ms: self.next_attempt_at_ms,
            last_error: self.last_error.clone(),
            dead_letters: self.dead_letters,
        }
    }

    /// Whether the webhook wants an event of this kind.
    pub fn wants(&self, kind: &str) -> bool {
        self.kinds.is_empty() || self.kinds.iter().any(|wanted| wanted == kind)
    }
}

/// A dead letter as stored: the event is the ledger's, by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRow {
    pub event_id: u64,
    pub attempts: u32,
    pub last_error: String,
    pub dead_at_ms: u64,
    pub requeued: bool,
}

/// Where webhooks and their delivery live.
pub trait WebhookStore: Send + Sync {
    /// Adds or changes a webhook; `after` moves its cursor (a new one starts there).
    /// Refuses a new webhook past [`WEBHOOKS_MAX`].
    fn put(&self, hook: &Webhook, after: Option<u64>) -> StoreResult<()>;
    /// Removes a webhook and its dead letters; whether it existed.
    fn remove(&self, id: &str) -> StoreResult<bool>;
    fn list(&self) -> StoreResult<Vec<Webhook>>;
    /// Every event through `after` is done with: the attempts start again at 0.
    fn delivered(&self, id: &str, after: u64) -> StoreResult<()>;
    /// An attempt at the next event failed.
    fn failed(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_at_ms: u64,
        error: &str,
    ) -> StoreResult<()>;
    /// Gives up on `event_id` (the next event) and moves past it, in one write.
    fn dead(&self, id: &str, dead: &DeadRow) -> StoreResult<()>;
    fn dead_letters(&self, id: &str, limit: usize) -> StoreResult<Vec<DeadRow>>;
    /// Asks for a dead letter again; whether there was one.
    fn requeue(&self, id: &str, event_id: u64) -> StoreResult<bool>;
    /// The outcome of a requeued dead letter's attempt: delivered (it leaves the dead
    /// letters) or failed again (it stays, not requeued).
    fn redelivered(&self, id: &str, event_id: u64, failure: Option<&str>) -> StoreResult<()>;
    /// Whether this process may deliver now: on PostgreSQL, one replica at a time holds
    /// a lock for as long as it keeps the returned lease. SQLite's ledger has one owner.
    fn lead(&self) -> StoreResult<Option<Box<dyn Send>>>;
}

/// A webhook id, and the operator's request for it, checked.
pub fn webhook(
    id: &str,
    request: &WebhookRequest,
    existing: Option<&Webhook>,
) -> Result<Webhook, MeterError> {
    validate::identifier("webhook_id", id)?;
    let url = request.url.as_str();
    if url.len() > URL_BYTES_MAX
        || !(url.starts_with("http://") || url.starts_with("https://"))
        || url.contains(char::is_whitespace)
    {
        return Err(MeterError::InvalidRequest(format!(
            "a webhook's url is an http:// or https:// URL of at most {URL_BYTES_MAX} bytes, \
             not '{}'",
            url.chars().take(80).collect::<String>()
        )));
    }
    if !(SECRET_BYTES_MIN..=SECRET_BYTES_MAX).contains(&request.secret.len()) {
        return Err(MeterError::InvalidRequest(format!(
            "a webhook's secret is {SECRET_BYTES_MIN} to {SECRET_BYTES_MAX} bytes, not {}",
            request.secret.len()
        )));
    }
    if let Some(tenant) = &request.tenant {
        validate::identifier("tenant", tenant)?;
    }
    if let Some(after) = request.after {
        validate::event_id(after)?;
    }
    if let Some(unknown) = request
        .kinds
        .iter()
        .find(|kind| !EventKind::NAMES.contains(&kind.as_str()))
    {
        return Err(MeterError::InvalidRequest(format!(
            "'{unknown}' is not an event kind; the kinds are {}",
            EventKind::NAMES.join(", ")
        )));
    }
    let attempts_max = request.attempts_max.unwrap_or(ATTEMPTS_DEFAULT);
    if !(1..=ATTEMPTS_MAX).contains(&attempts_max) {
        return Err(MeterError::InvalidRequest(format!(
            "attempts_max runs from 1 to {ATTEMPTS_MAX}, not {attempts_max}"
        )));
    }
    Ok(Webhook {
        id: id.to_owned(),
        url: url.to_owned(),
        secret: request.secret.clone(),
        tenant: request.tenant.clone(),
        kinds: request.kinds.clone(),
        attempts_max,
        after: existing.map_or(0, |hook| hook.after),
        attempts: 0,
        next_attempt_at_ms: None,
        last_error: None,
        dead_letters: existing.map_or(0, |hook| hook.dead_letters),
        requeued: Vec::new(),
    })
}
