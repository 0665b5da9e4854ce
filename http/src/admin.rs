//! Admin calls: the token is checked from the request's headers by a route layer, before
//! the handler runs, so a refused caller's body is never read into memory: a client that
//! sent `Expect: 100-continue` gets the 401 instead of `100 Continue`, and the bytes of
//! one still sending are discarded as they arrive (see [`super::body::refuse_unread`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use sha2::{Digest, Sha256};
use utoipa_axum::router::UtoipaMethodRouter;

use super::{ApiError, AppState};
use creditgate::error::ErrorCode;

/// `route`, answering 401 `unauthorized` unless the request carries the admin token.
/// Its `#[utoipa::path]` names the `admin_token` security scheme (a test checks both).
pub fn admin(
    state: &Arc<AppState>,
    (schemas, paths, route): UtoipaMethodRouter<Arc<AppState>>,
) -> UtoipaMethodRouter<Arc<AppState>> {
    let route = route.route_layer(from_fn_with_state(Arc::clone(state), require_admin));
    (schemas, paths, route)
}

async fn require_admin(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    match check_admin(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => state.admission.refuse_unread(request, refusal),
    }
}

fn check_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        return Ok(());
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    match presented {
        Some(token) if same_secret(token, expected) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "this admin call needs the header 'Authorization: Bearer <admin token>'",
        )),
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is matched without
/// regard to case, as RFC 9110 §11.1 says; one or more spaces may follow it.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares secrets in time that depends on neither their contents nor their lengths:
/// both are hashed to 32 bytes, which are compared without an early exit.
fn same_secret(presented: &str, expected: &str) -> bool {
    let (presented, expected) = (Sha256::digest(presented), Sha256::digest(expected));
    presented
        .iter()
        .zip(expected.iter())
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for value in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "Bearer   s3cret",
        ] {
            assert_eq!(bearer_token(value), Some("s3cret"), "{value}");
        }
        for value in ["Basic s3cret", "Bearers3cret", "Bearer ", "s3cret", ""] {
            assert_eq!(bearer_token(value), None, "{value}");
        }
    }
}
