//! The HTTP sidecar: JSON in, JSON out, over the [`Meter`]. No business rules here:
//! it parses, authenticates admin calls, and maps errors to statuses.
//!
//! A policy's refusal is a 200 answer with `admitted: false` and the status the
//! gateway should give its client; 4xx and 5xx are for errors in calling the sidecar.
//!
//! Before a handler runs, two route layers may answer instead: [`limits`] bounds the
//! requests in flight (`/healthz` aside), and `admin` checks the admin token from the
//! headers. [`server`] accepts the connections, with their own bounds.

mod admin;
mod body;
pub mod limits;
mod metrics;
pub mod server;

use std::sync::Arc;

use axum::extract::Request;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::MeterError;
use crate::meter::Meter;
use crate::model::{AuthorizeRequest, GrantRequest, SettleRequest};
use admin::admin;
pub use body::{POLICY_BYTES_MAX, REQUEST_BYTES_MAX};
use limits::{Admission, ApiLimits};

/// What every handler shares.
pub struct AppState {
    pub meter: Arc<Meter>,
    /// When set, admin calls need `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
    pub admission: Arc<Admission>,
}

impl AppState {
    /// Installs the process's Prometheus recorder (`GET /metrics`) if it has none yet,
    /// so that it counts from the first request.
    pub fn new(meter: Arc<Meter>, admin_token: Option<String>, limits: ApiLimits) -> Self {
        metrics::exporter();
        Self {
            meter,
            admin_token,
            admission: Arc::new(Admission::new(limits)),
        }
    }
}

/// The sidecar's routes. Every route but `/healthz` counts against the requests in
/// flight, so that a full sidecar still says whether it is alive.
pub fn router(state: Arc<AppState>) -> Router {
    let bounded = Router::new()
        .route("/v1/authorize", post(authorize))
        .route("/v1/quote", post(quote))
        .route("/v1/settle", post(settle))
        .route("/v1/tenants/{tenant}/grants", admin(&state, post(grant)))
        .route("/v1/tenants/{tenant}/balances", get(balances))
        .route("/v1/tenants/{tenant}/journal", get(journal))
        .route("/v1/audit", admin(&state, get(audit)))
        .route("/v1/transactions/{id}", get(transaction))
        .route(
            "/v1/policy",
            get(policy).merge(admin(&state, put(activate_policy))),
        )
        .route("/v1/policy/rollback", admin(&state, post(rollback_policy)))
        .route(
            "/v1/policy/shadow",
            get(shadow_report).merge(admin(&state, delete(clear_shadow))),
        )
        .route(
            "/v1/policy/shadow/promote",
            admin(&state, post(promote_shadow)),
        )
        .route_layer(from_fn_with_state(
            Arc::clone(&state.admission),
            limits::bound_in_flight,
        ));
    bounded
        .route("/healthz", get(healthz))
        .route("/metrics", get(prometheus))
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
    /// `Retry-After`, in seconds, for a refusal the caller should retry.
    retry_after_s: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code of the answer, e.g. `invalid_json`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// 503 `overloaded`: a bound of the sidecar is reached; nothing moved, retry shortly.
    fn overloaded(what: &str) -> Self {
        Self {
            retry_after_s: Some(ApiLimits::RETRY_AFTER_S),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!(
                    "the sidecar is overloaded: {what}; nothing moved, retry after {} s",
                    ApiLimits::RETRY_AFTER_S
                ),
            )
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
            retry_after_s: match &error {
                MeterError::Overloaded => Some(ApiLimits::RETRY_AFTER_S),
                // Whole seconds, rounded up: never earlier than the meter said.
                other => other
                    .retry_after_ms()
                    .map(|ms| u32::try_from(ms.div_ceil(1_000)).unwrap_or(u32::MAX)),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

type ApiResult = Result<Response, ApiError>;

/// Reads a JSON body under the size and time caps, naming what is wrong with it.
async fn read_json<T: DeserializeOwned>(state: &AppState, request: Request) -> Result<T, ApiError> {
    let bytes = body::read_bytes(
        request,
        REQUEST_BYTES_MAX,
        state.admission.body_read_timeout,
    )
    .await?;
    parse_json(&bytes)
}

/// Parses a JSON request body, naming what is wrong with it: 400 `invalid_json` for
/// bytes that are not JSON, 400 `invalid_request` for JSON of the wrong shape. Public
/// for the fuzz targets (`creditgate::fuzzing`), which feed it what a client could.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| {
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
        "policy_failures": state.meter.failure_stats(),
    });
    let status = if failure.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)).into_response())
}

/// The Prometheus text exposition; like `/healthz`, outside the bound on requests in
/// flight, so that an overloaded sidecar can still be watched.
async fn prometheus(State(state): State<Arc<AppState>>) -> ApiResult {
    let handle = metrics::exporter().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "this process has a metrics recorder of its own; its metrics go there",
        )
    })?;
    if let Some(lag) = state.meter.views_lag() {
        crate::meter::metrics::views_behind(lag.behind_batches);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response())
}

async fn authorize(State(state): State<Arc<AppState>>, body: Request) -> ApiResult {
    let request: AuthorizeRequest = read_json(&state, body).await?;
    ok(state.meter.authorize_async(request).await?)
}

/// What authorize would answer, with nothing recorded: the same body, the same answer
/// beside `"quote": true`.
async fn quote(State(state): State<Arc<AppState>>, body: Request) -> ApiResult {
    let request: AuthorizeRequest = read_json(&state, body).await?;
    ok(state.meter.quote_async(request).await?)
}

async fn settle(State(state): State<Arc<AppState>>, body: Request) -> ApiResult {
    let request: SettleRequest = read_json(&state, body).await?;
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

/// (admin) Adds credits to a tenant's balance, once per `grant_id`.
async fn grant(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    body: Request,
) -> ApiResult {
    let grant: GrantBody = read_json(&state, body).await?;
    ok(state
        .meter
        .grant_async(grant_request(tenant, grant)?)
        .await?)
}

/// The grant of a `POST /v1/tenants/{tenant}/grants` body.
fn grant_request(tenant: String, grant: GrantBody) -> Result<GrantRequest, ApiError> {
    let amount = grant.amount.as_i64().ok_or_else(|| {
        MeterError::InvalidAmount(format!(
            "amount {} is not a whole number of credits between 1 and {}",
            grant.amount,
            i64::MAX
        ))
    })?;
    Ok(GrantRequest {
        grant_id: grant.grant_id,
        tenant,
        balance: grant.balance,
        amount,
    })
}

/// A grant body read as the grant handler reads it (before the meter validates it).
/// Public for the fuzz targets (`creditgate::fuzzing`).
pub fn parse_grant(tenant: &str, bytes: &[u8]) -> Result<GrantRequest, ApiError> {
    grant_request(tenant.to_owned(), parse_json(bytes)?)
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
async fn audit(State(state): State<Arc<AppState>>) -> ApiResult {
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

/// `PUT /v1/policy` (admin): the body is the component's bytes. An unknown mode, or an
/// upload past the bound on uploads at once, is refused before the body is read.
async fn activate_policy(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ActivationQuery>,
    body: Request,
) -> Response {
    let admitted = shadow_mode(query.mode.as_deref())
        .and_then(|shadow| Ok((shadow, state.admission.upload()?)));
    match admitted {
        Ok((shadow, _upload)) => activate_uploaded(&state, shadow, body)
            .await
            .into_response(),
        Err(refusal) => state.admission.refuse_unread(body, refusal),
    }
}

/// Whether `?mode=` asks for shadow mode.
fn shadow_mode(mode: Option<&str>) -> Result<bool, ApiError> {
    match mode {
        None | Some("active") => Ok(false),
        Some("shadow") => Ok(true),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("mode '{other}' is not one of: active, shadow"),
        )),
    }
}

/// Receives the component into a temporary file, then activates it (or loads it as the
/// shadow). Compiling and checking take tens of milliseconds, so they run off the async
/// workers.
async fn activate_uploaded(state: &AppState, shadow: bool, body: Request) -> ApiResult {
    let component = body::receive_policy(body, state.admission.body_read_timeout).await?;
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

async fn clear_shadow(State(state): State<Arc<AppState>>) -> ApiResult {
    let meter = Arc::clone(&state.meter);
    blocking(move || meter.clear_shadow()).await?;
    ok(serde_json::json!({"active": state.meter.active_policy(), "shadow": null}))
}

async fn promote_shadow(State(state): State<Arc<AppState>>) -> ApiResult {
    let meter = Arc::clone(&state.meter);
    blocking(move || meter.promote_shadow()).await?;
    ok(serde_json::json!({"active": state.meter.active_policy()}))
}

async fn rollback_policy(State(state): State<Arc<AppState>>) -> ApiResult {
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
