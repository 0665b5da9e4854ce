//! The HTTP sidecar: JSON in, JSON out, over the [`Meter`]. No business rules here:
//! it parses, authenticates admin calls, and maps errors to statuses.
//!
//! A policy's refusal is a 200 answer with `admitted: false` and the status the
//! gateway should give its client; 4xx and 5xx are for errors in calling the sidecar.

use std::sync::Arc;

use axum::body::to_bytes;
use axum::extract::Request;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::MeterError;
use crate::meter::Meter;
use crate::model::{AuthorizeRequest, GrantRequest, SettleRequest};

/// The largest request body the sidecar reads; larger ones get 413.
pub const REQUEST_BYTES_MAX: usize = 2 << 20;
/// The largest policy component `PUT /v1/policy` accepts.
pub const POLICY_BYTES_MAX: usize = 32 << 20;

/// What every handler shares.
pub struct AppState {
    pub meter: Arc<Meter>,
    /// When set, admin calls need `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
}

/// The sidecar's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/authorize", post(authorize))
        .route("/v1/settle", post(settle))
        .route("/v1/tenants/{tenant}/grants", post(grant))
        .route("/v1/tenants/{tenant}/balances", get(balances))
        .route("/v1/tenants/{tenant}/journal", get(journal))
        .route("/v1/audit", get(audit))
        .route("/v1/transactions/{id}", get(transaction))
        .route("/v1/policy", get(policy).put(activate_policy))
        .route("/v1/policy/rollback", post(rollback_policy))
        .route("/v1/policy/shadow", get(shadow_report).delete(clear_shadow))
        .route("/v1/policy/shadow/promote", post(promote_shadow))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// An error answer: `{"error": {"code", "message"}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<MeterError> for ApiError {
    fn from(error: MeterError) -> Self {
        Self {
            status: StatusCode::from_u16(error.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: error.code(),
            message: error.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// Reads a body of at most `cap` bytes; a declared Content-Length over it is refused
/// before a byte of the body is read.
async fn read_bytes(request: Request, cap: usize) -> Result<axum::body::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {cap} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > cap as u64) {
        return Err(too_large());
    }
    to_bytes(request.into_body(), cap)
        .await
        .map_err(|_| too_large())
}

/// Reads a JSON body with the size cap, naming what is wrong with it.
async fn read_json<T: DeserializeOwned>(request: Request) -> Result<T, ApiError> {
    let bytes = read_bytes(request, REQUEST_BYTES_MAX).await?;
    serde_json::from_slice(&bytes).map_err(|error| {
        let code = match error.classify() {
            serde_json::error::Category::Data => "invalid_request",
            _ => "invalid_json",
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code,
            format!("invalid request body: {error}"),
        )
    })
}

fn check_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        return Ok(());
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this admin call needs the header 'Authorization: Bearer <admin token>'",
        )),
    }
}

/// Compares secrets without an early exit that would leak their common prefix.
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

fn ok<T: serde::Serialize>(value: T) -> ApiResult {
    Ok((StatusCode::OK, Json(value)).into_response())
}

/// 200 while the meter decides; 503 with the reason once it cannot (a failed write or
/// sync of the ledger, a stopped sequencer), until a restart.
async fn healthz(State(state): State<Arc<AppState>>) -> ApiResult {
    let failure = state.meter.failure();
    let body = serde_json::json!({
        "status": if failure.is_some() { "failing" } else { "ok" },
        "reason": failure,
        "code": failure.as_ref().map(|_| "sequencer_stopped"),
        "policy": state.meter.policy_ref(),
        "batches": state.meter.batch_stats(),
        "views": state.meter.views_lag(),
    });
    let status = if failure.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)).into_response())
}

async fn authorize(State(state): State<Arc<AppState>>, body: Request) -> ApiResult {
    let request: AuthorizeRequest = read_json(body).await?;
    ok(state.meter.authorize_async(request).await?)
}

async fn settle(State(state): State<Arc<AppState>>, body: Request) -> ApiResult {
    let request: SettleRequest = read_json(body).await?;
    ok(state.meter.settle_async(request).await?)
}

/// The grant body. `amount` is read as any JSON number so that fractions and values
/// beyond i64 get `invalid_amount` rather than a parse error.
#[derive(Deserialize)]
struct GrantBody {
    balance: String,
    amount: serde_json::Number,
    grant_id: String,
}

async fn grant(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Request,
) -> ApiResult {
    let grant: GrantBody = read_json(body).await?;
    check_admin(&state, &headers)?;
    let amount = grant.amount.as_i64().ok_or_else(|| {
        MeterError::InvalidAmount(format!(
            "amount {} is not a whole number of credits between 1 and {}",
            grant.amount,
            i64::MAX
        ))
    })?;
    ok(state
        .meter
        .grant_async(GrantRequest {
            grant_id: grant.grant_id,
            tenant,
            balance: grant.balance,
            amount,
        })
        .await?)
}

async fn balances(State(state): State<Arc<AppState>>, Path(tenant): Path<String>) -> ApiResult {
    ok(blocking(move || state.meter.balances(&tenant)).await?)
}

/// `?limit=N` of [`journal`]: entries to answer, at most [`JOURNAL_ENTRIES_MAX`].
#[derive(Deserialize)]
struct JournalQuery {
    limit: Option<usize>,
}

/// The most journal entries one answer carries.
pub const JOURNAL_ENTRIES_MAX: usize = 10_000;

async fn journal(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    Query(query): Query<JournalQuery>,
) -> ApiResult {
    let limit = query.limit.unwrap_or(1_000).min(JOURNAL_ENTRIES_MAX);
    let meter = Arc::clone(&state.meter);
    let entries = {
        let tenant = tenant.clone();
        blocking(move || meter.journal(&tenant, limit)).await?
    };
    ok(serde_json::json!({"tenant": tenant, "entries": entries}))
}

/// (admin) Every account whose state differs from the sum of its journal: empty when
/// the ledger is sound. Reads the whole journal.
async fn audit(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    check_admin(&state, &headers)?;
    let meter = Arc::clone(&state.meter);
    let violations = blocking(move || meter.invariant_violations()).await?;
    ok(serde_json::json!({"violations": violations}))
}

async fn transaction(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    ok(blocking(move || state.meter.transaction(&id)).await?)
}

async fn policy(State(state): State<Arc<AppState>>) -> ApiResult {
    let meter = Arc::clone(&state.meter);
    let (history, loaded) =
        blocking(move || Ok((meter.policy_history(100)?, meter.loaded_policies()?))).await?;
    ok(
        serde_json::json!({"active": state.meter.active_policy(), "history": history, "loaded": loaded}),
    )
}

/// How `PUT /v1/policy` applies the module.
#[derive(Deserialize)]
struct ActivationQuery {
    /// `shadow` evaluates the module beside the active one instead of activating it.
    mode: Option<String>,
}

/// `PUT /v1/policy` (admin): the body is the component's bytes. Compiling and
/// checking take tens of milliseconds, so they run off the async workers.
async fn activate_policy(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ActivationQuery>,
    headers: HeaderMap,
    body: Request,
) -> ApiResult {
    // Read the (bounded) body before answering anything, so that a refusal reaches a
    // client still sending its upload instead of a reset connection.
    let component = read_bytes(body, POLICY_BYTES_MAX).await?.to_vec();
    check_admin(&state, &headers)?;
    let shadow = match query.mode.as_deref() {
        None | Some("active") => false,
        Some("shadow") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("mode '{other}' is not one of: active, shadow"),
            ));
        }
    };
    let meter = Arc::clone(&state.meter);
    if shadow {
        let report = blocking(move || meter.set_shadow(component)).await?;
        return ok(
            serde_json::json!({"active": state.meter.active_policy(), "shadow": report.shadow}),
        );
    }
    blocking(move || meter.activate(component, "http")).await?;
    ok(serde_json::json!({"active": state.meter.active_policy()}))
}

/// Runs a meter call that blocks (store reads, compiling, checking, waiting on the
/// sequencer) on the blocking pool, off the async workers.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, MeterError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|error| MeterError::StoreUnavailable(format!("the task failed: {error}")))?
        .map_err(ApiError::from)
}

async fn shadow_report(State(state): State<Arc<AppState>>) -> ApiResult {
    let meter = Arc::clone(&state.meter);
    ok(blocking(move || meter.shadow_report()).await?)
}

async fn clear_shadow(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    check_admin(&state, &headers)?;
    let meter = Arc::clone(&state.meter);
    blocking(move || meter.clear_shadow()).await?;
    ok(serde_json::json!({"active": state.meter.active_policy(), "shadow": null}))
}

async fn promote_shadow(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    check_admin(&state, &headers)?;
    let meter = Arc::clone(&state.meter);
    blocking(move || meter.promote_shadow()).await?;
    ok(serde_json::json!({"active": state.meter.active_policy()}))
}

async fn rollback_policy(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    check_admin(&state, &headers)?;
    let meter = Arc::clone(&state.meter);
    blocking(move || meter.rollback()).await?;
    ok(serde_json::json!({"active": state.meter.active_policy()}))
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see the README for the API",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}
