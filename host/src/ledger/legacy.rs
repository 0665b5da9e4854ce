//! Rows written before the log: SQLite schema v4 and PostgreSQL schema v1 kept each
//! transaction's request and answers as JSON of the API types of that time. These are
//! frozen copies of those shapes, so that a later change of the API types can never
//! make an old ledger unreadable; migration turns the rows into the ledger's records.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use super::record::{
    AmountList, AuthorizationRecord, Digest, ImportedTransaction, ReceiptRecord, RequestRecord,
    TransactionState,
};

/// `AuthorizeRequest` as stored until 2026-11 (`request_json`).
#[derive(Deserialize)]
struct RequestV0 {
    operation: String,
    #[serde(default)]
    items: Vec<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    body_base64: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBodyV0 {
    code: String,
    message: String,
}

/// `Authorization` as stored until 2026-11 (`authorization_json`).
#[derive(Deserialize)]
struct AuthorizationV0 {
    admitted: bool,
    status: Option<u16>,
    error: Option<ErrorBodyV0>,
    admitted_items: u32,
    held: BTreeMap<String, i64>,
    charged: BTreeMap<String, i64>,
    headers: BTreeMap<String, String>,
    meta: serde_json::Value,
    balances: BTreeMap<String, i64>,
}

/// `Receipt` as stored until 2026-11 (`receipt_json`).
#[derive(Deserialize)]
struct ReceiptV0 {
    charged: BTreeMap<String, i64>,
    released: BTreeMap<String, i64>,
    uncollected: BTreeMap<String, i64>,
    headers: BTreeMap<String, String>,
    meta: serde_json::Value,
    balances: BTreeMap<String, i64>,
}

/// One row of the old `transactions` table.
pub struct TransactionRowV0 {
    pub id: String,
    pub tenant: String,
    pub state: String,
    /// 64 hex digits.
    pub fingerprint: String,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub request_json: String,
    pub authorization_json: String,
    pub held_json: String,
    pub receipt_json: Option<String>,
}

fn list<V: Clone>(map: &BTreeMap<String, V>) -> Vec<(String, V)> {
    map.iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// Hex digits of a sha256 as bytes.
pub fn digest_from_hex(text: &str) -> Option<Digest> {
    crate::policy::PolicyDigest::parse(text).map(|digest| digest.bytes())
}

/// The record of an old transaction row, whose policy is `policy` in its import batch.
pub fn transaction(row: &TransactionRowV0, policy: u32) -> Result<ImportedTransaction, String> {
    let what = |part: &str, error: serde_json::Error| {
        format!("transaction '{}': {part} does not parse: {error}", row.id)
    };
    let request: RequestV0 =
        serde_json::from_str(&row.request_json).map_err(|error| what("request_json", error))?;
    let authorization: AuthorizationV0 = serde_json::from_str(&row.authorization_json)
        .map_err(|error| what("authorization_json", error))?;
    let held: BTreeMap<String, i64> =
        serde_json::from_str(&row.held_json).map_err(|error| what("held_json", error))?;
    let receipt: Option<ReceiptV0> = row
        .receipt_json
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|error| what("receipt_json", error))?;
    let body = request
        .body_base64
        .map(|text| base64::engine::general_purpose::STANDARD.decode(text))
        .transpose()
        .map_err(|error| format!("transaction '{}': body is not base64: {error}", row.id))?;
    Ok(ImportedTransaction {
        id: row.id.clone(),
        tenant: row.tenant.clone(),
        state: TransactionState::parse(&row.state)
            .ok_or_else(|| format!("transaction '{}': unknown state '{}'", row.id, row.state))?,
        fingerprint: digest_from_hex(&row.fingerprint)
            .ok_or_else(|| format!("transaction '{}': fingerprint is not a sha256", row.id))?,
        policy,
        created_at_ms: row.created_at_ms,
        expires_at_ms: row.expires_at_ms,
        operation: request.operation,
        request: RequestRecord {
            items: request.items,
            attributes: list(&request.attributes),
            body,
        },
        authorization: AuthorizationRecord {
            admitted: authorization.admitted,
            status: authorization.status,
            error: authorization.error.map(|error| (error.code, error.message)),
            admitted_items: authorization.admitted_items,
            held: list(&authorization.held),
            charged: list(&authorization.charged),
            headers: list(&authorization.headers),
            meta_json: authorization.meta.to_string(),
            balances: list(&authorization.balances),
        },
        receipt: receipt.map(|receipt| ReceiptRecord {
            charged: list(&receipt.charged),
            released: list(&receipt.released),
            uncollected: list(&receipt.uncollected),
            headers: list(&receipt.headers),
            meta_json: receipt.meta.to_string(),
            balances: list(&receipt.balances),
        }),
        held: list::<i64>(&held) as AmountList,
    })
}
