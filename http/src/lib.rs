//! The HTTP sidecar: JSON in, JSON out, over the [`Meter`]. No business rules here:
//! it parses, authenticates admin calls, and maps errors to statuses.
//!
//! A policy's refusal is a 200 answer with `admitted: false` and the status the
//! gateway should give its client; 4xx and 5xx are for errors in calling the sidecar.
//!
//! Before a handler runs, two route layers may answer instead: [`limits`] bounds the
//! requests in flight (`/healthz`, `/metrics` and `/openapi.json` aside), and `admin`
//! checks the admin token from the headers. [`server`] accepts the connections, with
//! their own bounds. Each handler's `#[utoipa::path]` describes its route for the API
//! document ([`openapi`]), and the router takes the route's method and path from it.

mod admin;
pub mod answers;
mod body;
mod extract;
pub mod fuzzing;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod server;
mod webhooks;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use admin::admin;
use answers::{
    Activated, Audit, ErrorAnswer, ErrorDetail, Health, HealthStatus, Journal, PolicyState,
};
pub use body::{POLICY_BYTES_MAX, REQUEST_BYTES_MAX};
use creditgate::error::{ErrorCode, MeterError};
use creditgate::meter::Meter;
use creditgate::model::{
    Authorization, AuthorizeRequest, EventPage, GrantRequest, GrantTerms, Quote, Receipt,
    RefillRequest, RefillView, SettleRequest, ShadowReport, SpendCapTerms, TenantBalances,
    ThresholdTerms, TransactionView,
};
use creditgate::policy::PolicyDigest;
use extract::{ApiPath, ApiQuery};
use limits::{Admission, ApiLimits};
use openapi::{
    INVALID_BODY, INVALID_ID, PAYLOAD_TOO_LARGE, POLICY_FAILED, REQUEST_TIMEOUT, UNAUTHORIZED,
    UNAVAILABLE,
};

/// What every handler shares.
pub struct AppState {
    pub meter: Arc<Meter>,
    /// When set, admin calls need `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
    pub admission: Arc<Admission>,
    /// The longest a feed read waits ([`ApiLimits::events_wait_ms_max`]).
    pub events_wait_ms_max: u64,
}

impl AppState {
    /// Installs the process's Prometheus recorder (`GET /metrics`) if it has none yet,
    /// so that it counts from the first request.
    pub fn new(meter: Arc<Meter>, admin_token: Option<String>, limits: ApiLimits) -> Self {
        metrics::exporter();
        Self {
            meter,
            admin_token,
            events_wait_ms_max: limits.events_wait_ms_max,
            admission: Arc::new(Admission::new(limits)),
        }
    }
}

/// The sidecar's router: [`routes`], and the API's error answer for any other path or
/// method.
pub fn router(state: Arc<AppState>) -> Router {
    let (routes, _document) = routes(&state).split_for_parts();
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Every route of the sidecar, each registered with `routes!` from its handler's
/// `#[utoipa::path]`, so that the router serves the method and path the document names
/// (add none with a plain `route`). Every route but `/healthz`, `/metrics`,
/// `/openapi.json` and the event feed counts against the requests in flight, so that a
/// full sidecar still says whether it is alive and how it is doing.
fn routes(state: &Arc<AppState>) -> OpenApiRouter<Arc<AppState>> {
    let bounded = OpenApiRouter::new()
        .routes(routes!(authorize))
        .routes(routes!(quote))
        .routes(routes!(settle))
        .routes(admin(state, routes!(grant)))
        .routes(admin(state, routes!(void_grant)))
        .routes(admin(state, routes!(set_overdraft)))
        .routes(admin(state, routes!(set_spend_cap, remove_spend_cap)))
        .routes(admin(state, routes!(set_refill, remove_refill)))
        .routes(admin(state, routes!(set_thresholds, remove_thresholds)))
        .routes(admin(
            state,
            routes!(webhooks::set_webhook, webhooks::remove_webhook),
        ))
        .routes(admin(state, routes!(webhooks::webhooks)))
        .routes(admin(state, routes!(webhooks::dead_letters)))
        .routes(admin(state, routes!(webhooks::requeue_dead_letter)))
        .routes(routes!(refills))
        .routes(routes!(balances))
        .routes(routes!(journal))
        .routes(admin(state, routes!(audit)))
        .routes(routes!(transaction))
        .routes(routes!(policy))
        .routes(admin(state, routes!(activate_policy)))
        .routes(admin(state, routes!(rollback_policy)))
        .routes(routes!(shadow_report))
        .routes(admin(state, routes!(clear_shadow)))
        .routes(admin(state, routes!(promote_shadow)))
        .route_layer(from_fn_with_state(
            Arc::clone(&state.admission),
            limits::bound_in_flight,
        ));
    // A long-poll of the feed waits up to 30 s holding no decision's place: it is
    // bounded by the connection limits, not the requests in flight.
    bounded
        .routes(admin(state, routes!(events)))
        .routes(routes!(healthz))
        .routes(routes!(prometheus))
        .routes(routes!(openapi::document))
}

/// An error answer: `{"error": {"code", "message"}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    /// `Retry-After`, in seconds, for a refusal the caller should retry.
    retry_after_s: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
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
        self.code.as_str()
    }

    /// 503 `overloaded`: a bound of the sidecar is reached; nothing moved, retry shortly.
    fn overloaded(what: &str) -> Self {
        Self {
            retry_after_s: Some(ApiLimits::RETRY_AFTER_S),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Overloaded,
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
            code: error.error_code(),
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
        let body = ErrorAnswer {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
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
/// bytes that are not JSON, 400 `invalid_request` for JSON of the wrong shape. Every
/// body is an object: serde would also read a struct from an array of its fields in
/// order (`[]` for one whose fields all have defaults), which no client means and the
/// API's document does not allow. Public for the fuzz targets (`creditgate::fuzzing`),
/// which feed it what a client could.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let invalid = |error: serde_json::Error| {
        let code = match error.classify() {
            serde_json::error::Category::Data => ErrorCode::InvalidRequest,
            _ => ErrorCode::InvalidJson,
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code,
            format!("invalid request body: {error}"),
        )
    };
    let first = bytes
        .iter()
        .find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(invalid)?;
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "invalid request body: expected a JSON object".to_owned(),
        ));
    }
    serde_json::from_slice(bytes).map_err(invalid)
}

fn ok<T: serde::Serialize>(value: T) -> ApiResult {
    Ok((StatusCode::OK, Json(value)).into_response())
}

/// 200 while the meter decides; 503 with the reason once it cannot (a failed write or
/// sync of the ledger, a stopped sequencer), until a restart.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The meter decides", body = Health),
        (status = 503, description = "The meter stopped deciding (`sequencer_stopped`) until a restart", body = Health),
    )
)]
async fn healthz(State(state): State<Arc<AppState>>) -> ApiResult {
    let failure = state.meter.failure();
    let failing = failure.is_some();
    let health = Health {
        status: if failing {
            HealthStatus::Failing
        } else {
            HealthStatus::Ok
        },
        code: failing.then_some(ErrorCode::SequencerStopped),
        reason: failure,
        policy: state.meter.policy_ref(),
        batches: state.meter.batch_stats(),
        views: state.meter.views_lag(),
        policy_failures: state.meter.failure_stats(),
    };
    let status = if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok((status, Json(health)).into_response())
}

/// The Prometheus text exposition; like `/healthz`, outside the bound on requests in
/// flight, so that an overloaded sidecar can still be watched.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition (version 0.0.4)", body = String, content_type = "text/plain"),
        (status = 503, description = "`metrics_unavailable`: this process has a metrics recorder of its own", body = ErrorAnswer),
    )
)]
async fn prometheus(State(state): State<Arc<AppState>>) -> ApiResult {
    let handle = metrics::exporter().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::MetricsUnavailable,
            "this process has a metrics recorder of its own; its metrics go there",
        )
    })?;
    if let Some(lag) = state.meter.views_lag() {
        creditgate::meter::metrics::views_behind(lag.behind_batches);
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

/// Decides a metered call before the work: admit (a prefix of the items, credits held
/// or charged) or refuse. Idempotent by `transaction_id`.
#[utoipa::path(
    post,
    path = "/v1/authorize",
    tag = "metering",
    request_body = AuthorizeRequest,
    responses(
        (status = 200, description = "The decision; a policy's refusal too, with `admitted: false` and the status for the gateway's client", body = Authorization),
        (status = 400, description = INVALID_BODY, body = ErrorAnswer),
        (status = 408, description = REQUEST_TIMEOUT, body = ErrorAnswer),
        (status = 409, description = "`transaction_conflict`: the transaction id was authorized with a different request", body = ErrorAnswer),
        (status = 413, description = PAYLOAD_TOO_LARGE, body = ErrorAnswer),
        (status = 500, description = POLICY_FAILED, body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn authorize(State(state): State<Arc<AppState>>, body: Request) -> ApiResult {
    let request: AuthorizeRequest = read_json(&state, body).await?;
    ok(state.meter.authorize_async(request).await?)
}

/// What authorize would answer, with nothing recorded: the same body, the same answer
/// beside `"quote": true`.
#[utoipa::path(
    post,
    path = "/v1/quote",
    tag = "metering",
    request_body = AuthorizeRequest,
    responses(
        (status = 200, description = "What authorize would answer now, on the live balances, with nothing recorded, held or marked (a known `transaction_id` answers its recorded answer)", body = Quote),
        (status = 400, description = INVALID_BODY, body = ErrorAnswer),
        (status = 408, description = REQUEST_TIMEOUT, body = ErrorAnswer),
        (status = 409, description = "`transaction_conflict`: the transaction id was authorized with a different request", body = ErrorAnswer),
        (status = 413, description = PAYLOAD_TOO_LARGE, body = ErrorAnswer),
        (status = 500, description = POLICY_FAILED, body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn quote(State(state): State<Arc<AppState>>, body: Request) -> ApiResult {
    let request: AuthorizeRequest = read_json(&state, body).await?;
    ok(state.meter.quote_async(request).await?)
}

/// Prices the outcome of an authorized call on the policy version that authorized it:
/// captures from the hold, releases the rest. Idempotent by `transaction_id`.
#[utoipa::path(
    post,
    path = "/v1/settle",
    tag = "metering",
    request_body = SettleRequest,
    responses(
        (status = 200, description = "The receipt", body = Receipt),
        (status = 400, description = INVALID_BODY, body = ErrorAnswer),
        (status = 404, description = "`unknown_transaction`: no transaction with this id was authorized", body = ErrorAnswer),
        (status = 408, description = REQUEST_TIMEOUT, body = ErrorAnswer),
        (status = 409, description = "`transaction_conflict`: settled before with a different outcome; `transaction_rejected`: refused at authorize; `hold_expired`: its hold lapsed and was released", body = ErrorAnswer),
        (status = 413, description = PAYLOAD_TOO_LARGE, body = ErrorAnswer),
        (status = 500, description = POLICY_FAILED, body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn settle(State(state): State<Arc<AppState>>, body: Request) -> ApiResult {
    let request: SettleRequest = read_json(&state, body).await?;
    ok(state.meter.settle_async(request).await?)
}

/// The grant body. `amount` is read as any JSON number so that fractions and values
/// beyond i64 get `invalid_amount` rather than a parse error.
#[derive(Deserialize, ToSchema)]
struct GrantBody {
    /// A balance the active policy names.
    #[schema(example = "default")]
    balance: String,
    /// Whole credits, 1 to 2^63 - 1.
    #[schema(value_type = i64, minimum = 1, example = 10)]
    amount: serde_json::Number,
    /// The idempotency key: a repeated grant moves nothing.
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$", example = "welcome")]
    grant_id: String,
    /// The lot's terms: expiry, priority, category, metadata.
    #[serde(flatten)]
    terms: GrantTerms,
}

/// A path's tenant.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct TenantPath {
    /// 1 to 128 characters of `[A-Za-z0-9._:@-]`.
    #[param(pattern = "^[A-Za-z0-9._:@-]{1,128}$", example = "acme")]
    tenant: String,
}

/// (admin) Adds credits to a tenant's balance, once per `grant_id`.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/grants",
    tag = "ledger",
    params(TenantPath),
    request_body = GrantBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tenant's credits after the grant", body = TenantBalances),
        (status = 400, description = "`invalid_json`, `invalid_request` (the body or the tenant), `unknown_balance`: the policy names no such balance, `invalid_amount`: not a whole number of credits from 1, or overflowing the balance", body = ErrorAnswer),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 408, description = REQUEST_TIMEOUT, body = ErrorAnswer),
        (status = 409, description = "`grant_conflict`: the grant id was applied with a different tenant, balance or amount", body = ErrorAnswer),
        (status = 413, description = PAYLOAD_TOO_LARGE, body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn grant(
    State(state): State<Arc<AppState>>,
    ApiPath(TenantPath { tenant }): ApiPath<TenantPath>,
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
        terms: grant.terms,
    })
}

/// A grant body read as the grant handler reads it (before the meter validates it).
/// Public for the fuzz targets (`creditgate::fuzzing`).
pub fn parse_grant(tenant: &str, bytes: &[u8]) -> Result<GrantRequest, ApiError> {
    grant_request(tenant.to_owned(), parse_json(bytes)?)
}

/// A path's tenant and grant.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct GrantPath {
    /// 1 to 128 characters of `[A-Za-z0-9._:@-]`.
    #[param(pattern = "^[A-Za-z0-9._:@-]{1,128}$", example = "acme")]
    tenant: String,
    /// 1 to 128 characters of `[A-Za-z0-9._:@-]`.
    #[param(pattern = "^[A-Za-z0-9._:@-]{1,128}$", example = "welcome")]
    grant_id: String,
}

/// (admin) Voids a grant: the unspent credits of its lot leave through a `void` journal
/// entry; credits already spent stay spent, credits held leave when their hold is
/// released. Voiding a voided or expired grant moves nothing.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/grants/{grant_id}/void",
    tag = "ledger",
    params(GrantPath),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tenant's credits after the void", body = TenantBalances),
        (status = 400, description = INVALID_ID, body = ErrorAnswer),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 404, description = "`unknown_grant`: no grant of this id was made to this tenant", body = ErrorAnswer),
        (status = 409, description = "`grant_not_voidable`: the grant was made before lots existed", body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn void_grant(
    State(state): State<Arc<AppState>>,
    ApiPath(GrantPath { tenant, grant_id }): ApiPath<GrantPath>,
) -> ApiResult {
    ok(state.meter.void_async(&tenant, &grant_id).await?)
}

/// A path's tenant and balance.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct BalancePath {
    /// 1 to 128 characters of `[A-Za-z0-9._:@-]`.
    #[param(pattern = "^[A-Za-z0-9._:@-]{1,128}$", example = "acme")]
    tenant: String,
    /// A balance the active policy names.
    #[param(pattern = "^[A-Za-z0-9._:@-]{1,128}$", example = "default")]
    balance: String,
}

/// The overdraft body. `limit` is read as any JSON number so that fractions and values
/// beyond i64 get `invalid_amount` rather than a parse error.
#[derive(Deserialize, ToSchema)]
struct OverdraftBody {
    /// How far below zero spending may take the balance, in whole credits, 0 to 10^15
    /// (0: not at all, the default).
    #[schema(value_type = i64, minimum = 0, maximum = 1_000_000_000_000_000_i64, example = 500)]
    limit: serde_json::Number,
}

/// (admin) Sets how far below zero spending may take a tenant's balance. Admissions and
/// settles may then spend past the balance's lots down to minus the limit; the next
/// grants repay the overdraft before their lots keep anything. Moves no credit: a limit
/// lowered below what is already overdrawn refuses new spending until credits come
/// back.
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/balances/{balance}/overdraft",
    tag = "ledger",
    params(BalancePath),
    request_body = OverdraftBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tenant's credits and overdraft limits", body = TenantBalances),
        (status = 400, description = "`invalid_json`, `invalid_request` (the body, the tenant or the balance), `unknown_balance`: the policy names no such balance, `invalid_amount`: not a whole number of credits from 0 to 10^15", body = ErrorAnswer),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 408, description = REQUEST_TIMEOUT, body = ErrorAnswer),
        (status = 413, description = PAYLOAD_TOO_LARGE, body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn set_overdraft(
    State(state): State<Arc<AppState>>,
    ApiPath(BalancePath { tenant, balance }): ApiPath<BalancePath>,
    body: Request,
) -> ApiResult {
    let overdraft: OverdraftBody = read_json(&state, body).await?;
    let limit = overdraft.limit.as_i64().ok_or_else(|| {
        MeterError::InvalidAmount(format!(
            "limit {} is not a whole number of credits from 0 to {}",
            overdraft.limit,
            creditgate::meter::validate::OVERDRAFT_LIMIT_CREDITS_MAX
        ))
    })?;
    ok(state
        .meter
        .set_overdraft_async(&tenant, &balance, limit)
        .await?)
}

/// The spend cap body. `cap` is read as any JSON number so that fractions and values
/// beyond i64 get `invalid_amount` rather than a parse error.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SpendCapBody {
    /// Credits held or charged per window, 0 to 10^15 (0 refuses every admission
    /// that spends on the balance).
    #[schema(value_type = i64, minimum = 0, maximum = 1_000_000_000_000_000_i64, example = 1000)]
    cap: serde_json::Number,
    /// `hour`, `day` or `month`: windows start on the zone's hour, midnight, or
    /// midnight on the 1st.
    #[schema(example = "day")]
    window: String,
    /// An IANA time zone whose calendar the windows follow; `UTC` when absent.
    #[schema(example = "Europe/Paris")]
    time_zone: Option<String>,
}

/// (admin) Caps what a tenant's balance may spend per window. From the next decision
/// on, an admission that would take the window's spending (credits held and charged
/// in it) past the cap is refused, whatever the policy answers: `admitted: false`,
/// status 429, code `spend_cap_reached`, the window in `meta.spend_cap_reached` and a
/// `retry-after` header. A settle charging past its hold is counted, never refused.
/// Changing only the amount keeps the window's spending; a new window or zone counts
/// from now. Moves no credit.
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/balances/{balance}/spend-cap",
    tag = "ledger",
    params(BalancePath),
    request_body = SpendCapBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tenant's credits, with its spend caps and their current windows", body = TenantBalances),
        (status = 400, description = "`invalid_json`, `invalid_request` (the body, the tenant, the balance, the window or the time zone), `unknown_balance`: the policy names no such balance, `invalid_amount`: not a whole number of credits from 0 to 10^15", body = ErrorAnswer),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 408, description = REQUEST_TIMEOUT, body = ErrorAnswer),
        (status = 413, description = PAYLOAD_TOO_LARGE, body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn set_spend_cap(
    State(state): State<Arc<AppState>>,
    ApiPath(BalancePath { tenant, balance }): ApiPath<BalancePath>,
    body: Request,
) -> ApiResult {
    let body: SpendCapBody = read_json(&state, body).await?;
    let cap = body.cap.as_i64().ok_or_else(|| {
        MeterError::InvalidAmount(format!(
            "cap {} is not a whole number of credits from 0 to {}",
            body.cap,
            creditgate::meter::validate::SPEND_CAP_CREDITS_MAX
        ))
    })?;
    let terms = SpendCapTerms {
        cap,
        window: body.window,
        time_zone: body.time_zone.unwrap_or_else(|| "UTC".to_owned()),
    };
    ok(state
        .meter
        .set_spend_cap_async(&tenant, &balance, Some(&terms))
        .await?)
}

/// (admin) Removes a balance's spend cap: spending is bounded by credits and the
/// overdraft limit only. Removing a cap the balance does not have changes nothing.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/balances/{balance}/spend-cap",
    tag = "ledger",
    params(BalancePath),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tenant's credits, without the cap", body = TenantBalances),
        (status = 400, description = "`invalid_request` (the tenant or the balance), `unknown_balance`: the policy names no such balance", body = ErrorAnswer),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 408, description = REQUEST_TIMEOUT, body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn remove_spend_cap(
    State(state): State<Arc<AppState>>,
    ApiPath(BalancePath { tenant, balance }): ApiPath<BalancePath>,
) -> ApiResult {
    ok(state
        .meter
        .set_spend_cap_async(&tenant, &balance, None)
        .await?)
}

/// A path's tenant and refill.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct RefillPath {
    /// 1 to 128 characters of `[A-Za-z0-9._:@-]`.
    #[param(pattern = "^[A-Za-z0-9._:@-]{1,128}$", example = "acme")]
    tenant: String,
    /// 1 to 100 characters of `[A-Za-z0-9._:@-]`.
    #[param(pattern = "^[A-Za-z0-9._:@-]{1,100}$", example = "monthly")]
    refill_id: String,
}

/// (admin) Sets a refill: a lot of `amount` credits granted at the start of every
/// period of the zone's calendar, with grant id `refill:{refill_id}:{start_ms}`, once
/// per period across restarts and replicas. The first period starts at `anchor_ms`
/// (now when absent), so a new refill grants its first lot at once. `reset`: a
/// period's unspent credits expire when the next period starts; `rollover`: they
/// stay, and a period tops the refill's lots up to at most `rollover_cap`. A refill
/// that exists keeps its anchor unless the body names one, and never grants a period
/// that starts before the last one it granted.
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/refills/{refill_id}",
    tag = "ledger",
    params(RefillPath),
    request_body = RefillRequest,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tenant's refills", body = Vec<RefillView>),
        (status = 400, description = "`invalid_json`, `invalid_request` (the body, the tenant, the refill id, `every`, `mode`, the time zone), `unknown_balance`: the policy names no such balance, `invalid_amount`: an amount or cap that is not a whole number of credits from 1 to 10^15", body = ErrorAnswer),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 408, description = REQUEST_TIMEOUT, body = ErrorAnswer),
        (status = 413, description = PAYLOAD_TOO_LARGE, body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn set_refill(
    State(state): State<Arc<AppState>>,
    ApiPath(RefillPath { tenant, refill_id }): ApiPath<RefillPath>,
    body: Request,
) -> ApiResult {
    let refill: RefillRequest = read_json(&state, body).await?;
    ok(state
        .meter
        .set_refill_async(&tenant, &refill_id, Some(&refill))
        .await?)
}

/// (admin) Removes a refill: no more periods are granted; the lots it granted stay.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/refills/{refill_id}",
    tag = "ledger",
    params(RefillPath),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tenant's refills", body = Vec<RefillView>),
        (status = 400, description = "`invalid_request` (the tenant or the refill id)", body = ErrorAnswer),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 408, description = REQUEST_TIMEOUT, body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn remove_refill(
    State(state): State<Arc<AppState>>,
    ApiPath(RefillPath { tenant, refill_id }): ApiPath<RefillPath>,
) -> ApiResult {
    ok(state
        .meter
        .set_refill_async(&tenant, &refill_id, None)
        .await?)
}

/// A tenant's refills: terms, the last period granted and when the next starts.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/refills",
    tag = "ledger",
    params(TenantPath),
    responses(
        (status = 200, description = "The tenant's refills", body = Vec<RefillView>),
        (status = 400, description = "`invalid_request`: the tenant", body = ErrorAnswer),
        (status = 408, description = REQUEST_TIMEOUT, body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn refills(
    State(state): State<Arc<AppState>>,
    ApiPath(TenantPath { tenant }): ApiPath<TenantPath>,
) -> ApiResult {
    ok(state.meter.refills_async(&tenant).await?)
}

/// `?lots=true` of [`balances`].
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct BalancesQuery {
    /// Whether to list the lots the credits come from, in burn order per balance.
    #[param(example = true)]
    lots: Option<bool>,
}

/// A tenant's credits, available and held; a tenant never granted anything has zeros.
/// With `?lots=true`, the lots they come from.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/balances",
    tag = "ledger",
    params(TenantPath, BalancesQuery),
    responses(
        (status = 200, description = "The tenant's credits", body = TenantBalances),
        (status = 400, description = "`invalid_request`: the tenant is not 1 to 128 characters of `[A-Za-z0-9._:@-]`, or `lots` is not `true` or `false`", body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn balances(
    State(state): State<Arc<AppState>>,
    ApiPath(TenantPath { tenant }): ApiPath<TenantPath>,
    ApiQuery(query): ApiQuery<BalancesQuery>,
) -> ApiResult {
    if query.lots == Some(true) {
        return ok(state.meter.lots_async(&tenant).await?);
    }
    ok(blocking(move || state.meter.balances(&tenant)).await?)
}

/// (admin) Watches a tenant's balance for events: `balance_low` as its available
/// credits fall below a level (credits, or a percent of its latest grant),
/// `balance_exhausted` as they reach zero, `lot_expiring` a lead time before a lot
/// with credits left expires, `lot_expired`, `lot_voided`, `refill_granted` and
/// `spend_cap_reached`. Levels are compared per batch of decisions. Events are read
/// from `GET /v1/events`. Moves no credit.
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/balances/{balance}/thresholds",
    tag = "events",
    params(BalancePath),
    request_body = ThresholdTerms,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tenant's credits, with the thresholds of its watched balances", body = TenantBalances),
        (status = 400, description = "`invalid_json`, `invalid_request` (the body, the tenant, the balance, more than 16 levels, a percent outside 1 to 100, a lead outside 0 to a year), `unknown_balance`: the policy names no such balance", body = ErrorAnswer),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 408, description = REQUEST_TIMEOUT, body = ErrorAnswer),
        (status = 413, description = PAYLOAD_TOO_LARGE, body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn set_thresholds(
    State(state): State<Arc<AppState>>,
    ApiPath(BalancePath { tenant, balance }): ApiPath<BalancePath>,
    body: Request,
) -> ApiResult {
    let terms: ThresholdTerms = read_json(&state, body).await?;
    ok(state
        .meter
        .set_thresholds_async(&tenant, &balance, Some(&terms))
        .await?)
}

/// (admin) Stops watching a balance: it raises no more events. Its past events stay in
/// the feed.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/balances/{balance}/thresholds",
    tag = "events",
    params(BalancePath),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tenant's credits, without the balance's thresholds", body = TenantBalances),
        (status = 400, description = "`invalid_request` (the tenant or the balance), `unknown_balance`: the policy names no such balance", body = ErrorAnswer),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 408, description = REQUEST_TIMEOUT, body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn remove_thresholds(
    State(state): State<Arc<AppState>>,
    ApiPath(BalancePath { tenant, balance }): ApiPath<BalancePath>,
) -> ApiResult {
    ok(state
        .meter
        .set_thresholds_async(&tenant, &balance, None)
        .await?)
}

/// `?after=ID&limit=N&wait_ms=M&tenant=T` of [`events`].
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// The last event id seen: the answer starts after it. 0 (the default) starts at
    /// the first event.
    #[param(minimum = 0, example = 0)]
    after: Option<u64>,
    /// Events to answer, oldest first: 100 when absent, 1 to 1,000.
    #[param(minimum = 1, maximum = 1000, example = 100)]
    limit: Option<usize>,
    /// When no event is there yet, wait up to this long for the next, in ms: 0 (the
    /// default) answers at once, at most 30,000.
    #[param(minimum = 0, maximum = 30000, example = 20000)]
    wait_ms: Option<u64>,
    /// Only this tenant's events.
    #[param(pattern = "^[A-Za-z0-9._:@-]{1,128}$", example = "acme")]
    tenant: Option<String>,
}

/// (admin) The event feed: the events of watched balances after a cursor, in the
/// ledger's order, long-polled. Each event was recorded in the same batch as the
/// decisions that caused it, so none is lost or invented by a crash. Read the next
/// page with `after` = `next_after`; a consumer that stores `next_after` after
/// handling a page gets every event at least once.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(EventsQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The events after the cursor (none if the wait ended first), and the next cursor", body = EventPage),
        (status = 400, description = "`invalid_request`: `limit` outside 1 to 1,000, `wait_ms` over 30,000, a tenant that is not 1 to 128 characters of `[A-Za-z0-9._:@-]`, or a parameter that is not a whole number", body = ErrorAnswer),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn events(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> ApiResult {
    // Past the API's bound, the meter refuses it; within, this server may wait less.
    let wait_ms = query.wait_ms.unwrap_or(0);
    let wait_ms = if wait_ms > creditgate::meter::feed::EVENTS_WAIT_MS_MAX {
        wait_ms
    } else {
        wait_ms.min(state.events_wait_ms_max)
    };
    let wait = std::time::Duration::from_millis(wait_ms);
    ok(state
        .meter
        .events_async(
            query.after.unwrap_or(0),
            query.limit.unwrap_or(100),
            query.tenant.as_deref(),
            wait,
        )
        .await?)
}

/// `?limit=N` of [`journal`].
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct JournalQuery {
    /// Entries to answer, oldest first: 1,000 when absent, at most 10,000.
    #[param(minimum = 0, example = 100)]
    limit: Option<usize>,
}

/// The most journal entries one answer carries.
pub const JOURNAL_ENTRIES_MAX: usize = 10_000;

/// A tenant's journal, oldest first.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/journal",
    tag = "ledger",
    params(TenantPath, JournalQuery),
    responses(
        (status = 200, description = "The tenant's oldest entries", body = Journal),
        (status = 400, description = "`invalid_request`: the tenant is not 1 to 128 characters of `[A-Za-z0-9._:@-]`, or `limit` is not a whole number", body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn journal(
    State(state): State<Arc<AppState>>,
    ApiPath(TenantPath { tenant }): ApiPath<TenantPath>,
    ApiQuery(query): ApiQuery<JournalQuery>,
) -> ApiResult {
    let limit = query.limit.unwrap_or(1_000).min(JOURNAL_ENTRIES_MAX);
    let meter = Arc::clone(&state.meter);
    let entries = {
        let tenant = tenant.clone();
        blocking(move || meter.journal(&tenant, limit)).await?
    };
    ok(Journal { tenant, entries })
}

/// (admin) Every account whose state differs from the sum of its journal: empty when
/// the ledger is sound. Reads the whole journal.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "ledger",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The accounts that do not sum; none when the ledger is sound", body = Audit),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn audit(State(state): State<Arc<AppState>>) -> ApiResult {
    let meter = Arc::clone(&state.meter);
    let violations = blocking(move || meter.invariant_violations()).await?;
    ok(Audit { violations })
}

/// A path's transaction id.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct TransactionPath {
    /// 1 to 128 characters of `[A-Za-z0-9._:@-]`.
    #[param(pattern = "^[A-Za-z0-9._:@-]{1,128}$", example = "demo-1")]
    id: String,
}

/// A transaction as the audit sees it: its state, its answers and its journal entries.
#[utoipa::path(
    get,
    path = "/v1/transactions/{id}",
    tag = "ledger",
    params(TransactionPath),
    responses(
        (status = 200, description = "The transaction", body = TransactionView),
        (status = 400, description = INVALID_ID, body = ErrorAnswer),
        (status = 404, description = "`unknown_transaction`: no transaction with this id was authorized", body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn transaction(
    State(state): State<Arc<AppState>>,
    ApiPath(TransactionPath { id }): ApiPath<TransactionPath>,
) -> ApiResult {
    ok(blocking(move || state.meter.transaction(&id)).await?)
}

/// The active policy, the activation history and the versions loaded.
#[utoipa::path(
    get,
    path = "/v1/policy",
    tag = "policy",
    responses(
        (status = 200, description = "The active policy (on PostgreSQL, with every live replica and the digest it runs), its history (newest first) and the digests loaded", body = PolicyState),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn policy(State(state): State<Arc<AppState>>) -> ApiResult {
    let meter = Arc::clone(&state.meter);
    let (active, history, loaded) = blocking(move || {
        Ok((
            meter.active_policy_everywhere()?,
            meter.policy_history(100)?,
            meter.loaded_policies()?,
        ))
    })
    .await?;
    ok(PolicyState {
        active,
        history,
        loaded,
    })
}

/// How `PUT /v1/policy` applies the module.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ActivationQuery {
    #[param(inline)]
    mode: Option<ActivationMode>,
}

/// `active` (the default) activates the module; `shadow` evaluates it beside the active
/// one, moving no credit.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum ActivationMode {
    Active,
    Shadow,
}

/// `PUT /v1/policy` (admin): the body is the component's bytes. An unknown mode, or an
/// upload past the bound on uploads at once, is refused before the body is read.
#[utoipa::path(
    put,
    path = "/v1/policy",
    tag = "policy",
    params(
        ActivationQuery,
        ("If-Match" = Option<String>, Header, description = "`\"sha256:HEX\"`: activate only a module with this digest (`*` or absent: any)"),
        ("creditgate-signature" = Option<String>, Header, description = "The module's signature (`creditgate policy sign`: ed25519 of its sha256, 128 hex digits), required when the sidecar runs with `--trusted-key`"),
    ),
    request_body(content(("application/octet-stream")), description = "The policy component's bytes (at most 32 MiB)"),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The module passed the contract checks and is live (or, with `mode=shadow`, shadows the active policy)", body = Activated),
        (status = 400, description = "`invalid_request`: `mode` is not `active` or `shadow`, or `If-Match` names no sha256", body = ErrorAnswer),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 403, description = "`signature_required`: the sidecar trusts signing keys and no `creditgate-signature` came; `signature_invalid`: the signature is not of these bytes by a trusted key. Nothing was compiled", body = ErrorAnswer),
        (status = 408, description = REQUEST_TIMEOUT, body = ErrorAnswer),
        (status = 412, description = "`digest_mismatch`: `If-Match` pins another sha256 than the uploaded bytes'; nothing was compiled", body = ErrorAnswer),
        (status = 413, description = PAYLOAD_TOO_LARGE, body = ErrorAnswer),
        (status = 422, description = "`invalid_policy`: not a component, another contract version, a failing `describe`, or failed contract checks (the report is in the message); the active policy stays", body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn activate_policy(State(state): State<Arc<AppState>>, body: Request) -> Response {
    let admitted = extract::query::<ActivationQuery>(body.uri())
        .map(|query| query.mode == Some(ActivationMode::Shadow))
        .and_then(|shadow| Ok((shadow, extract::pinned_digest(body.headers())?)))
        .and_then(|(shadow, pinned)| Ok((shadow, pinned, state.admission.upload()?)));
    match admitted {
        Ok((shadow, pinned, _upload)) => {
            let signature = extract::signature(body.headers());
            activate_uploaded(&state, shadow, pinned, signature, body)
                .await
                .into_response()
        }
        Err(refusal) => state.admission.refuse_unread(body, refusal),
    }
}

/// Receives the component into a temporary file, checks it is the pinned module if one
/// is, then activates it (or loads it as the shadow), the meter checking its signature
/// first if it trusts keys. Compiling and checking take tens of milliseconds, so they
/// run off the async workers.
async fn activate_uploaded(
    state: &AppState,
    shadow: bool,
    pinned: Option<PolicyDigest>,
    signature: Option<String>,
    body: Request,
) -> ApiResult {
    let component = body::receive_policy(body, state.admission.body_read_timeout).await?;
    PolicyDigest::check_pinned(&component, pinned.as_ref())?;
    let meter = Arc::clone(&state.meter);
    if shadow {
        let report =
            blocking(move || meter.set_shadow_signed(component, signature.as_deref())).await?;
        return ok(Activated {
            active: state.meter.active_policy(),
            shadow: Some(report.shadow),
        });
    }
    blocking(move || meter.activate_signed(component, signature.as_deref(), "http")).await?;
    ok(activated(state))
}

/// The active policy after a change.
fn activated(state: &AppState) -> Activated {
    Activated {
        active: state.meter.active_policy(),
        shadow: None,
    }
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

/// What the shadow candidate would have done differently from the active policy so far.
#[utoipa::path(
    get,
    path = "/v1/policy/shadow",
    tag = "policy",
    responses(
        (status = 200, description = "The differences so far, by kind, in credits, per tenant, with examples", body = ShadowReport),
        (status = 404, description = "`no_shadow`: no shadow policy is being evaluated", body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn shadow_report(State(state): State<Arc<AppState>>) -> ApiResult {
    let meter = Arc::clone(&state.meter);
    ok(blocking(move || meter.shadow_report()).await?)
}

/// (admin) Stops the shadow evaluation.
#[utoipa::path(
    delete,
    path = "/v1/policy/shadow",
    tag = "policy",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The active policy; nothing shadows it now", body = Activated),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 404, description = "`no_shadow`: no shadow policy is being evaluated", body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn clear_shadow(State(state): State<Arc<AppState>>) -> ApiResult {
    let meter = Arc::clone(&state.meter);
    blocking(move || meter.clear_shadow()).await?;
    ok(activated(&state))
}

/// (admin) Makes the shadow candidate the active policy.
#[utoipa::path(
    post,
    path = "/v1/policy/shadow/promote",
    tag = "policy",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The candidate is the active policy", body = Activated),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 404, description = "`no_shadow`: no shadow policy is being evaluated", body = ErrorAnswer),
        (status = 422, description = "`invalid_policy`: the candidate failed its checks again; the active policy stays", body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn promote_shadow(State(state): State<Arc<AppState>>) -> ApiResult {
    let meter = Arc::clone(&state.meter);
    blocking(move || meter.promote_shadow()).await?;
    ok(activated(&state))
}

/// (admin) Re-activates the policy that was active before the current one.
#[utoipa::path(
    post,
    path = "/v1/policy/rollback",
    tag = "policy",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The previous policy is active again", body = Activated),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 409, description = "`no_previous_policy`: no earlier policy in the history", body = ErrorAnswer),
        (status = 422, description = "`invalid_policy`: the previous policy failed its checks again; the active policy stays", body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
async fn rollback_policy(State(state): State<Arc<AppState>>) -> ApiResult {
    let meter = Arc::clone(&state.meter);
    blocking(move || meter.rollback()).await?;
    ok(activated(&state))
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no such endpoint; see GET /openapi.json or the README for the API",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method",
    )
}
