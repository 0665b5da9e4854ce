//! Path, query and header extractors whose refusals are the API's error answers (400
//! `invalid_request` in `{"error": ...}`) rather than axum's plain-text ones: a path
//! segment that is not UTF-8 once decoded, a query that does not parse, an `If-Match`
//! that names no digest. The module signature header is read here too.

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;
use creditgate::error::ErrorCode;
use creditgate::policy::PolicyDigest;

/// [`Path`], refused with 400 `invalid_request`.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(invalid_request(&rejection.body_text())),
        }
    }
}

/// [`Query`], refused with 400 `invalid_request`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        query(&parts.uri).map(Self)
    }
}

/// The query of `uri` as `T`, refused with 400 `invalid_request`.
pub fn query<T: DeserializeOwned>(uri: &axum::http::Uri) -> Result<T, ApiError> {
    match Query::<T>::try_from_uri(uri) {
        Ok(Query(value)) => Ok(value),
        Err(rejection) => Err(invalid_request(&rejection.body_text())),
    }
}

/// The module digest an `If-Match` header pins (`"sha256:HEX"`, the quotes optional);
/// none when absent or `*`. Anything else is refused with 400 `invalid_request`.
pub fn pinned_digest(headers: &axum::http::HeaderMap) -> Result<Option<PolicyDigest>, ApiError> {
    let Some(value) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    let unquoted = text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(text);
    unquoted
        .strip_prefix("sha256:")
        .and_then(|hex| PolicyDigest::parse(&hex.to_ascii_lowercase()))
        .map(Some)
        .ok_or_else(|| {
            invalid_request(
                "If-Match names the module's digest as \"sha256:\" and 64 hex digits (or is *)",
            )
        })
}

/// The module signature a `creditgate-signature` header carries, as text; the meter
/// judges it (bytes that are not text read as an invalid signature).
pub fn signature(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get("creditgate-signature")
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

fn invalid_request(why: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, why)
}
