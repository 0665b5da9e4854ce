//! The bodies of the HTTP sidecar's fuzz targets (`api_authorize`, `api_settle`,
//! `api_grant`): a request body fed through the same functions the handlers call.
//! Parsing and validation never panic; every refusal is an [`ApiError`] or a
//! [`MeterError`] with a stable code and a 4xx status; an accepted request serializes to
//! JSON that parses and validates to the same request (and, for authorize, the same
//! fingerprint). Each target panics when a property breaks (that is how libFuzzer sees
//! a finding).
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use creditgate::error::MeterError;
use creditgate::fuzzing::Target;
use creditgate::meter::validate;
use creditgate::model::{AuthorizeRequest, SettleRequest};

use crate::{self as api, ApiError};

/// This crate's targets, as `fuzz/fuzz_targets/NAME.rs` and `fuzz/corpus/NAME` call them.
pub const TARGETS: &[(&str, Target)] = &[
    ("api_authorize", api_authorize),
    ("api_settle", api_settle),
    ("api_grant", api_grant),
];

/// The codes a request body can be refused with, before the meter decides anything.
const REQUEST_CODES: &[&str] = &[
    "invalid_json",
    "invalid_request",
    "invalid_amount",
    "payload_too_large",
];

fn refused_with_stable_code(error: &ApiError) {
    assert!(
        REQUEST_CODES.contains(&error.code()) && error.status().is_client_error(),
        "a body was refused with {} {}, not a stable 4xx code",
        error.status(),
        error.code()
    );
}

fn refused_by_meter(error: MeterError) {
    refused_with_stable_code(&ApiError::from(error));
}

/// `POST /v1/authorize`: the body as the handler parses it, then what
/// `Meter::authorize` checks on the caller's thread (validation, fingerprint).
pub fn api_authorize(data: &[u8]) {
    let request: AuthorizeRequest = match api::parse_json(data) {
        Ok(request) => request,
        Err(error) => return refused_with_stable_code(&error),
    };
    if let Err(error) = validate::authorize(&request) {
        return refused_by_meter(error);
    }
    let fingerprint = validate::fingerprint(&request);
    let json = serde_json::to_vec(&request).expect("a request serializes");
    let again: AuthorizeRequest = api::parse_json(&json)
        .unwrap_or_else(|error| panic!("an accepted authorize does not parse again: {error:?}"));
    assert_eq!(
        again, request,
        "an accepted authorize changed on a round trip"
    );
    assert!(validate::authorize(&again).is_ok());
    assert_eq!(validate::fingerprint(&again), fingerprint);
}

/// `POST /v1/settle`: parsing, then `Meter::settle`'s validation.
pub fn api_settle(data: &[u8]) {
    let request: SettleRequest = match api::parse_json(data) {
        Ok(request) => request,
        Err(error) => return refused_with_stable_code(&error),
    };
    if let Err(error) = validate::settle(&request) {
        return refused_by_meter(error);
    }
    let json = serde_json::to_vec(&request).expect("a request serializes");
    let again: SettleRequest = api::parse_json(&json)
        .unwrap_or_else(|error| panic!("an accepted settle does not parse again: {error:?}"));
    assert_eq!(again, request, "an accepted settle changed on a round trip");
    assert!(validate::settle(&again).is_ok());
}

/// `POST /v1/tenants/{tenant}/grants`: the input is the path's tenant, a newline, and
/// the body (all body when there is no newline, for tenant `acme`).
pub fn api_grant(data: &[u8]) {
    let (tenant, body) = match data.iter().position(|&byte| byte == b'\n') {
        Some(at) => (
            String::from_utf8_lossy(&data[..at]).into_owned(),
            &data[at + 1..],
        ),
        None => ("acme".to_owned(), data),
    };
    let grant = match api::parse_grant(&tenant, body) {
        Ok(grant) => grant,
        Err(error) => return refused_with_stable_code(&error),
    };
    if let Err(error) = validate::grant(&grant) {
        return refused_by_meter(error);
    }
    // The body as a client would write it: the terms beside the grant's own fields.
    let mut json = serde_json::to_value(&grant.terms)
        .unwrap_or_else(|error| panic!("accepted terms do not serialize: {error}"));
    json["grant_id"] = grant.grant_id.clone().into();
    json["balance"] = grant.balance.clone().into();
    json["amount"] = grant.amount.into();
    let again = api::parse_grant(&tenant, json.to_string().as_bytes())
        .unwrap_or_else(|error| panic!("an accepted grant does not parse again: {error:?}"));
    assert_eq!(again, grant, "an accepted grant changed on a round trip");
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_committed_fuzz_input_passes_its_target() {
        creditgate::fuzzing::replay_committed(super::TARGETS);
    }
}
