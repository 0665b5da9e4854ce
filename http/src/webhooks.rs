//! The webhook calls (admin): set, list and remove webhooks, list and requeue what one
//! gave up on. Delivery itself runs in `serve` ([`creditgate::webhooks::deliver`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use serde::Deserialize;
use utoipa::IntoParams;

use super::openapi::{INVALID_ID, PAYLOAD_TOO_LARGE, REQUEST_TIMEOUT, UNAUTHORIZED, UNAVAILABLE};
use super::{ApiResult, AppState, ErrorAnswer, blocking, ok, read_json};
use creditgate::model::{DeadLetter, WebhookRequest, WebhookView};

/// A path's webhook id.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct WebhookPath {
    /// 1 to 128 characters of `[A-Za-z0-9._:@-]`.
    #[param(pattern = "^[A-Za-z0-9._:@-]{1,128}$", example = "billing")]
    webhook_id: String,
}

/// A path's webhook id and event id.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct DeadLetterPath {
    /// 1 to 128 characters of `[A-Za-z0-9._:@-]`.
    #[param(pattern = "^[A-Za-z0-9._:@-]{1,128}$", example = "billing")]
    webhook_id: String,
    /// The dead letter's event id.
    #[param(minimum = 1, example = 42)]
    event_id: u64,
}

/// (admin) Adds or changes a webhook: every event of the feed it wants is POSTed to
/// `url` in the feed's order, with headers `creditgate-event-id` and
/// `creditgate-signature: t=MS,v1=HEX` (HMAC-SHA256 of `MS.BODY` under `secret`),
/// until the receiver answers 2xx; a failure is retried with backoff (1 s doubling to
/// 10 min), and after `attempts_max` attempts the event is dead-lettered and the next
/// one goes. At least once: deduplicate by the event id.
#[utoipa::path(
    put,
    path = "/v1/webhooks/{webhook_id}",
    tag = "events",
    params(WebhookPath),
    request_body = WebhookRequest,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The webhook and where its delivery is (never its secret)", body = WebhookView),
        (status = 400, description = "`invalid_json`, `invalid_request`: the id, a url that is not http(s) or over 2,048 bytes, a secret not of 16 to 256 bytes, the tenant, an unknown kind, `attempts_max` outside 1 to 100, or a 17th webhook", body = ErrorAnswer),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 408, description = REQUEST_TIMEOUT, body = ErrorAnswer),
        (status = 413, description = PAYLOAD_TOO_LARGE, body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
pub(super) async fn set_webhook(
    State(state): State<Arc<AppState>>,
    super::extract::ApiPath(WebhookPath { webhook_id }): super::extract::ApiPath<WebhookPath>,
    body: Request,
) -> ApiResult {
    let request: WebhookRequest = read_json(&state, body).await?;
    let meter = Arc::clone(&state.meter);
    ok(blocking(move || meter.set_webhook(&webhook_id, &request)).await?)
}

/// (admin) Removes a webhook and its dead letters; nothing more is delivered to it.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{webhook_id}",
    tag = "events",
    params(WebhookPath),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The webhooks left", body = [WebhookView]),
        (status = 400, description = INVALID_ID, body = ErrorAnswer),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 404, description = "`unknown_webhook`: no webhook has this id", body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
pub(super) async fn remove_webhook(
    State(state): State<Arc<AppState>>,
    super::extract::ApiPath(WebhookPath { webhook_id }): super::extract::ApiPath<WebhookPath>,
) -> ApiResult {
    let meter = Arc::clone(&state.meter);
    ok(blocking(move || {
        meter.remove_webhook(&webhook_id)?;
        meter.webhooks()
    })
    .await?)
}

/// (admin) Every webhook, with where its delivery is: the last event done with, the
/// failed attempts at the next one and why, and how many were dead-lettered.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "events",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The webhooks", body = [WebhookView]),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
pub(super) async fn webhooks(State(state): State<Arc<AppState>>) -> ApiResult {
    let meter = Arc::clone(&state.meter);
    ok(blocking(move || meter.webhooks()).await?)
}

/// (admin) The events a webhook gave up on, oldest first (at most 1,000), with the
/// attempts made and the last error.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{webhook_id}/dead",
    tag = "events",
    params(WebhookPath),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The dead letters", body = [DeadLetter]),
        (status = 400, description = INVALID_ID, body = ErrorAnswer),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 404, description = "`unknown_webhook`: no webhook has this id", body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
pub(super) async fn dead_letters(
    State(state): State<Arc<AppState>>,
    super::extract::ApiPath(WebhookPath { webhook_id }): super::extract::ApiPath<WebhookPath>,
) -> ApiResult {
    let meter = Arc::clone(&state.meter);
    ok(blocking(move || meter.dead_letters(&webhook_id)).await?)
}

/// (admin) Asks for a dead letter again: the next delivery round tries it once more,
/// and it leaves the dead letters once delivered.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{webhook_id}/dead/{event_id}/requeue",
    tag = "events",
    params(DeadLetterPath),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The dead letters, this one requeued", body = [DeadLetter]),
        (status = 400, description = INVALID_ID, body = ErrorAnswer),
        (status = 401, description = UNAUTHORIZED, body = ErrorAnswer),
        (status = 404, description = "`unknown_webhook`: no such webhook, or no dead letter of this event", body = ErrorAnswer),
        (status = 503, description = UNAVAILABLE, body = ErrorAnswer, headers(("Retry-After" = u32, description = "Seconds to wait before a retry (`overloaded`, `policy_budget_exceeded`)"))),
    )
)]
pub(super) async fn requeue_dead_letter(
    State(state): State<Arc<AppState>>,
    super::extract::ApiPath(DeadLetterPath {
        webhook_id,
        event_id,
    }): super::extract::ApiPath<DeadLetterPath>,
) -> ApiResult {
    let meter = Arc::clone(&state.meter);
    ok(blocking(move || {
        meter.requeue_dead_letter(&webhook_id, event_id)?;
        meter.dead_letters(&webhook_id)
    })
    .await?)
}
