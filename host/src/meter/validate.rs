//! Limits on what a caller may send, checked before anything else happens.

use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::error::MeterError;
use crate::ledger::calendar::Cadence;
use crate::ledger::calendar::Window;
use crate::ledger::caps::{CapTerms, SpendCap};
use crate::ledger::events::{self, Thresholds};
use crate::ledger::refills::{Refill, RefillMode, RefillTerms};
use crate::meter::feed::{EVENTS_PAGE_MAX, EVENTS_WAIT_MS_MAX};
use crate::model::{
    AuthorizeRequest, GrantRequest, RefillRequest, SettleRequest, SpendCapTerms, ThresholdTerms,
};

pub const ID_BYTES_MAX: usize = 128;
pub const ITEMS_MAX: usize = 10_000;
pub const ITEM_BYTES_MAX: usize = 512;
pub const ATTRIBUTES_MAX: usize = 64;
pub const ATTRIBUTE_NAME_BYTES_MAX: usize = 128;
pub const ATTRIBUTE_VALUE_BYTES_MAX: usize = 1024;
pub const BODY_BYTES_MAX: usize = 1 << 20;

fn invalid(message: impl Into<String>) -> MeterError {
    MeterError::InvalidRequest(message.into())
}

/// Transaction, grant and tenant ids: 1 to 128 characters of `[A-Za-z0-9._:@-]`.
pub fn identifier(field: &str, value: &str) -> Result<(), MeterError> {
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || b"._:@-".contains(&byte);
    if value.is_empty() || value.len() > ID_BYTES_MAX || !value.bytes().all(allowed) {
        return Err(invalid(format!(
            "{field} must be 1 to {ID_BYTES_MAX} characters of A-Z a-z 0-9 . _ : @ -"
        )));
    }
    Ok(())
}

fn attributes(attributes: &std::collections::BTreeMap<String, String>) -> Result<(), MeterError> {
    if attributes.len() > ATTRIBUTES_MAX {
        return Err(invalid(format!(
            "{} attributes sent; at most {ATTRIBUTES_MAX}",
            attributes.len()
        )));
    }
    for (name, value) in attributes {
        if name.is_empty() || name.len() > ATTRIBUTE_NAME_BYTES_MAX {
            return Err(invalid(format!(
                "attribute names must have 1 to {ATTRIBUTE_NAME_BYTES_MAX} bytes"
            )));
        }
        if value.len() > ATTRIBUTE_VALUE_BYTES_MAX {
            return Err(invalid(format!(
                "attribute '{name}' is longer than {ATTRIBUTE_VALUE_BYTES_MAX} bytes"
            )));
        }
    }
    Ok(())
}

fn body(body: Option<&Vec<u8>>) -> Result<(), MeterError> {
    match body {
        Some(bytes) if bytes.len() > BODY_BYTES_MAX => Err(invalid(format!(
            "the body has {} bytes; at most {BODY_BYTES_MAX}",
            bytes.len()
        ))),
        _ => Ok(()),
    }
}

pub fn authorize(request: &AuthorizeRequest) -> Result<(), MeterError> {
    if let Some(id) = &request.transaction_id {
        identifier("transaction_id", id)?;
    }
    identifier("tenant", &request.tenant)?;
    identifier("operation", &request.operation)?;
    if request.items.len() > ITEMS_MAX {
        return Err(invalid(format!(
            "{} items sent; at most {ITEMS_MAX} per request",
            request.items.len()
        )));
    }
    if request
        .items
        .iter()
        .any(|item| item.is_empty() || item.len() > ITEM_BYTES_MAX || item.contains('\0'))
    {
        return Err(invalid(format!(
            "every item must have 1 to {ITEM_BYTES_MAX} bytes and no NUL character"
        )));
    }
    attributes(&request.attributes)?;
    body(request.body.as_ref())
}

pub fn settle(request: &SettleRequest) -> Result<(), MeterError> {
    identifier("transaction_id", &request.transaction_id)?;
    if !(100..=599).contains(&request.status) {
        return Err(invalid(format!(
            "status {} is not an HTTP status (100 to 599)",
            request.status
        )));
    }
    attributes(&request.attributes)?;
    body(request.body.as_ref())
}

/// Bytes of a grant's category, at most.
pub const GRANT_CATEGORY_BYTES_MAX: usize = 64;
/// Metadata pairs of a grant, at most.
pub const GRANT_METADATA_PAIRS_MAX: usize = 16;
/// Bytes of a grant's metadata key, at most.
pub const GRANT_METADATA_KEY_BYTES_MAX: usize = 64;
/// Bytes of a grant's metadata value, at most.
pub const GRANT_METADATA_VALUE_BYTES_MAX: usize = 256;

/// Checks a grant. Its expiry is checked against the clock when it is decided.
pub fn grant(grant: &GrantRequest) -> Result<(), MeterError> {
    identifier("grant_id", &grant.grant_id)?;
    identifier("tenant", &grant.tenant)?;
    if grant.amount <= 0 {
        return Err(MeterError::InvalidAmount(format!(
            "a grant must be a positive whole number of credits, not {}",
            grant.amount
        )));
    }
    let terms = &grant.terms;
    if let Some(category) = &terms.category
        && (category.is_empty() || category.len() > GRANT_CATEGORY_BYTES_MAX)
    {
        return Err(MeterError::InvalidRequest(format!(
            "a grant's category has 1 to {GRANT_CATEGORY_BYTES_MAX} bytes, not {}",
            category.len()
        )));
    }
    if terms.metadata.len() > GRANT_METADATA_PAIRS_MAX {
        return Err(MeterError::InvalidRequest(format!(
            "a grant has at most {GRANT_METADATA_PAIRS_MAX} metadata pairs, not {}",
            terms.metadata.len()
        )));
    }
    for (key, value) in &terms.metadata {
        if key.is_empty()
            || key.len() > GRANT_METADATA_KEY_BYTES_MAX
            || value.len() > GRANT_METADATA_VALUE_BYTES_MAX
        {
            return Err(MeterError::InvalidRequest(format!(
                "grant metadata keys have 1 to {GRANT_METADATA_KEY_BYTES_MAX} bytes and values at most {GRANT_METADATA_VALUE_BYTES_MAX}; '{}' does not fit",
                key.chars().take(80).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// The largest overdraft limit, in credits: far beyond any real credit line, and small
/// enough that `available` (at least minus the limit) never nears `i64::MIN`.
pub const OVERDRAFT_LIMIT_CREDITS_MAX: i64 = 1_000_000_000_000_000;

/// An operator's overdraft limit for an account.
pub fn overdraft(tenant: &str, balance: &str, limit: i64) -> Result<(), MeterError> {
    identifier("tenant", tenant)?;
    identifier("balance", balance)?;
    if !(0..=OVERDRAFT_LIMIT_CREDITS_MAX).contains(&limit) {
        return Err(MeterError::InvalidAmount(format!(
            "an overdraft limit is a whole number of credits from 0 to \
             {OVERDRAFT_LIMIT_CREDITS_MAX}, not {limit}"
        )));
    }
    Ok(())
}

/// The longest refill id, in bytes: its grant ids add a prefix and a start instant.
pub const REFILL_ID_BYTES_MAX: usize = 100;
/// The most periods a refill's `every` may span.
pub const REFILL_EVERY_MAX: u32 = 1_000;
/// The latest refill anchor: the last millisecond of the year 9999, the calendar's end.
pub const REFILL_ANCHOR_MS_MAX: i64 = 253_402_300_799_999;
/// The largest refill, in credits per period.
pub const REFILL_CREDITS_MAX: i64 = 1_000_000_000_000_000;

/// An operator's refill (none: remove it), as the ledger keeps it. Its anchor is the
/// request's, or 0 when it names none (the decider sets it).
pub fn refill(
    tenant: &str,
    refill_id: &str,
    request: Option<&RefillRequest>,
) -> Result<Option<RefillTerms>, MeterError> {
    identifier("tenant", tenant)?;
    identifier("refill_id", refill_id)?;
    if refill_id.len() > REFILL_ID_BYTES_MAX {
        return Err(invalid(format!(
            "refill_id is {} bytes; at most {REFILL_ID_BYTES_MAX}",
            refill_id.len()
        )));
    }
    let Some(request) = request else {
        return Ok(None);
    };
    identifier("balance", &request.balance)?;
    let credits = |what: &str, amount: i64| {
        if (1..=REFILL_CREDITS_MAX).contains(&amount) {
            Ok(amount)
        } else {
            Err(MeterError::InvalidAmount(format!(
                "a refill's {what} is a whole number of credits from 1 to \
                 {REFILL_CREDITS_MAX}, not {amount}"
            )))
        }
    };
    let amount = credits("amount", request.amount)?;
    if let Some(anchor_ms) = request.anchor_ms
        && !(0..=REFILL_ANCHOR_MS_MAX).contains(&anchor_ms)
    {
        return Err(invalid(format!(
            "a refill's anchor_ms runs from 0 to {REFILL_ANCHOR_MS_MAX} (the year 9999), not \
             {anchor_ms}"
        )));
    }
    let mode = match (request.mode.as_str(), request.rollover_cap) {
        ("reset", None) => RefillMode::Reset,
        ("rollover", Some(cap)) => RefillMode::Rollover {
            cap: credits("rollover cap", cap)?,
        },
        ("reset", Some(_)) => return Err(invalid("a reset refill takes no rollover_cap")),
        ("rollover", None) => return Err(invalid("a rollover refill needs a rollover_cap")),
        (other, _) => {
            return Err(invalid(format!(
                "a refill's mode is reset or rollover, not '{other}'"
            )));
        }
    };
    let category = request
        .category
        .clone()
        .unwrap_or_else(|| "refill".to_owned());
    if category.is_empty() || category.len() > GRANT_CATEGORY_BYTES_MAX {
        return Err(invalid(format!(
            "a refill's category is 1 to {GRANT_CATEGORY_BYTES_MAX} bytes"
        )));
    }
    let terms = RefillTerms {
        balance: request.balance.clone(),
        amount,
        every: cadence(&request.every)?,
        time_zone: request.time_zone.clone(),
        anchor_ms: request.anchor_ms.unwrap_or(0),
        mode,
        priority: request.priority,
        category,
    };
    Refill::new(terms.clone(), None).map_err(|why| invalid(why.to_string()))?;
    Ok(Some(terms))
}

/// `hour`, `day`, `month`, or `N hours|days|months`.
fn cadence(every: &str) -> Result<Cadence, MeterError> {
    let refused = || {
        invalid(format!(
            "a refill's every is hour, day, month, or N hours, days or months (N from 1 to \
             {REFILL_EVERY_MAX}), not '{every}'"
        ))
    };
    let (count, unit) = match every.trim().split_once(' ') {
        Some((count, unit)) => (count.parse::<u32>().map_err(|_| refused())?, unit),
        None => (1, every.trim()),
    };
    if !(1..=REFILL_EVERY_MAX).contains(&count) {
        return Err(refused());
    }
    match unit.trim_end_matches('s') {
        "hour" => Ok(Cadence::Hours(count)),
        "day" => Ok(Cadence::Days(count)),
        "month" => Ok(Cadence::Months(count)),
        _ => Err(refused()),
    }
}

/// The largest spend cap, in credits per window.
pub const SPEND_CAP_CREDITS_MAX: i64 = 1_000_000_000_000_000;

/// An operator's spend cap for an account (none: remove it), as the ledger keeps it.
pub fn spend_cap(
    tenant: &str,
    balance: &str,
    terms: Option<&SpendCapTerms>,
) -> Result<Option<CapTerms>, MeterError> {
    identifier("tenant", tenant)?;
    identifier("balance", balance)?;
    let Some(terms) = terms else { return Ok(None) };
    if !(0..=SPEND_CAP_CREDITS_MAX).contains(&terms.cap) {
        return Err(MeterError::InvalidAmount(format!(
            "a spend cap is a whole number of credits from 0 to {SPEND_CAP_CREDITS_MAX}, \
             not {}",
            terms.cap
        )));
    }
    let window = Window::parse(&terms.window).ok_or_else(|| {
        MeterError::InvalidRequest(format!(
            "a spend cap's window is one of {}, not '{}'",
            Window::ALL.map(Window::as_str).join(", "),
            terms.window
        ))
    })?;
    let cap = CapTerms {
        cap: terms.cap,
        window,
        time_zone: terms.time_zone.clone(),
    };
    SpendCap::new(cap.clone()).map_err(|why| MeterError::InvalidRequest(why.to_string()))?;
    Ok(Some(cap))
}

/// What an operator watches on an account (none: stop watching it), as the ledger
/// keeps it.
pub fn thresholds(
    tenant: &str,
    balance: &str,
    terms: Option<&ThresholdTerms>,
) -> Result<Option<Thresholds>, MeterError> {
    identifier("tenant", tenant)?;
    identifier("balance", balance)?;
    let Some(terms) = terms else { return Ok(None) };
    let thresholds = Thresholds::from(terms);
    events::check(&thresholds).map_err(|why| {
        MeterError::InvalidRequest(format!("these thresholds cannot be watched: {why}"))
    })?;
    Ok(Some(thresholds))
}

/// A read of the event feed: after an event id, a page of 1 to [`EVENTS_PAGE_MAX`]
/// events, of one tenant or all, waiting at most [`EVENTS_WAIT_MS_MAX`] ms.
pub fn events(
    after: u64,
    limit: usize,
    tenant: Option<&str>,
    wait: Duration,
) -> Result<(), MeterError> {
    event_id(after)?;
    if !(1..=EVENTS_PAGE_MAX).contains(&limit) {
        return Err(MeterError::InvalidRequest(format!(
            "a page holds 1 to {EVENTS_PAGE_MAX} events, not {limit}"
        )));
    }
    if wait > Duration::from_millis(EVENTS_WAIT_MS_MAX) {
        return Err(MeterError::InvalidRequest(format!(
            "a read of the feed waits at most {EVENTS_WAIT_MS_MAX} ms, not {} ms",
            wait.as_millis()
        )));
    }
    if let Some(tenant) = tenant {
        identifier("tenant", tenant)?;
    }
    Ok(())
}

/// An event id (a cursor of the feed): 0 to 2^63 − 1, as every store numbers them.
pub fn event_id(id: u64) -> Result<u64, MeterError> {
    if i64::try_from(id).is_err() {
        return Err(MeterError::InvalidRequest(format!(
            "an event id runs from 0 to {}, not {id}",
            i64::MAX
        )));
    }
    Ok(id)
}

/// The sha256 of what makes two authorize requests the same request.
pub fn fingerprint(request: &AuthorizeRequest) -> [u8; 32] {
    let canonical = serde_json::json!([
        request.tenant,
        request.operation,
        request.items,
        request.attributes,
        request.body,
    ]);
    Sha256::digest(canonical.to_string().as_bytes()).into()
}

#[cfg(test)]
mod tests {
    //! The API document states these limits too (the model's `#[schema]` attributes):
    //! they must be the ones the meter checks.

    use serde_json::{Value, json};
    use utoipa::PartialSchema;

    use super::*;

    fn properties<T: PartialSchema>() -> Value {
        serde_json::to_value(T::schema()).expect("a schema serializes")["properties"].clone()
    }

    #[test]
    fn the_documents_id_pattern_is_the_identifier_check() {
        let pattern = format!("^[A-Za-z0-9._:@-]{{1,{ID_BYTES_MAX}}}$");
        let authorize = properties::<AuthorizeRequest>();
        let settle = properties::<SettleRequest>();
        for field in [
            &authorize["transaction_id"],
            &authorize["tenant"],
            &authorize["operation"],
            &settle["transaction_id"],
        ] {
            assert_eq!(field["pattern"], json!(pattern), "{field}");
        }
        // The class: every ASCII byte alone is accepted exactly when the pattern's class
        // names it; then the length bounds.
        let class = |byte: u8| byte.is_ascii_alphanumeric() || b"._:@-".contains(&byte);
        for byte in 0..0x80u8 {
            let id = char::from(byte).to_string();
            assert_eq!(identifier("id", &id).is_ok(), class(byte), "{id:?}");
        }
        assert!(identifier("id", "").is_err());
        assert!(identifier("id", &"a".repeat(ID_BYTES_MAX)).is_ok());
        assert!(identifier("id", &"a".repeat(ID_BYTES_MAX + 1)).is_err());
    }

    #[test]
    fn the_documents_item_and_status_bounds_are_the_meters() {
        assert_eq!(
            properties::<AuthorizeRequest>()["items"]["maxItems"],
            json!(ITEMS_MAX)
        );
        let status = &properties::<SettleRequest>()["status"];
        let (minimum, maximum) = (status["minimum"].as_u64(), status["maximum"].as_u64());
        let settle = |status: u16| {
            super::settle(&SettleRequest {
                transaction_id: "t".to_owned(),
                status,
                ..SettleRequest::default()
            })
        };
        let (minimum, maximum) = (
            u16::try_from(minimum.expect("a minimum")).expect("a status"),
            u16::try_from(maximum.expect("a maximum")).expect("a status"),
        );
        assert!(settle(minimum).is_ok() && settle(maximum).is_ok());
        assert!(settle(minimum - 1).is_err() && settle(maximum + 1).is_err());
    }
}
