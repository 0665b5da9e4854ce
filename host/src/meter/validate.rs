//! Limits on what a caller may send, checked before anything else happens.

use sha2::{Digest as _, Sha256};

use crate::error::MeterError;
use crate::model::{AuthorizeRequest, GrantRequest, SettleRequest};

pub const ID_BYTES_MAX: usize = 128;
pub const ITEMS_MAX: usize = 10_000;
pub const ITEM_BYTES_MAX: usize = 512;
pub const ATTRIBUTES_MAX: usize = 64;
pub const ATTRIBUTE_NAME_BYTES_MAX: usize = 128;
pub const ATTRIBUTE_VALUE_BYTES_MAX: usize = 1024;
pub const BODY_BYTES_MAX: usize = 1 << 20;

fn invalid(message: String) -> MeterError {
    MeterError::InvalidRequest(message)
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

pub fn grant(grant: &GrantRequest) -> Result<(), MeterError> {
    identifier("grant_id", &grant.grant_id)?;
    identifier("tenant", &grant.tenant)?;
    if grant.amount <= 0 {
        return Err(MeterError::InvalidAmount(format!(
            "a grant must be a positive whole number of credits, not {}",
            grant.amount
        )));
    }
    Ok(())
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
