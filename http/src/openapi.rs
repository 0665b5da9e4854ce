//! The OpenAPI 3.1 document of the sidecar, served at `GET /openapi.json`: the paths
//! come from each handler's `#[utoipa::path]`, the schemas from the types the handlers
//! read and answer ([`creditgate::model`], [`super::answers`]), the error codes from
//! [`ErrorCode`](creditgate::error::ErrorCode).

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The sidecar's API: every route the router serves (a test checks that, method by
/// method, and that the admin routes are exactly those that need the token).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "creditgate sidecar",
        description = "Meters API usage in credits: a gateway authorizes each call before the work and settles it after; \
            billing rules are a WebAssembly policy. A policy's refusal is a 200 answer with `admitted: false`; \
            4xx and 5xx mean the call to the sidecar failed, with `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        super::authorize,
        super::quote,
        super::settle,
        super::grant,
        super::void_grant,
        super::set_overdraft,
        super::set_spend_cap,
        super::remove_spend_cap,
        super::set_refill,
        super::remove_refill,
        super::refills,
        super::set_thresholds,
        super::remove_thresholds,
        super::events,
        super::webhooks::set_webhook,
        super::webhooks::remove_webhook,
        super::webhooks::webhooks,
        super::webhooks::dead_letters,
        super::webhooks::requeue_dead_letter,
        super::balances,
        super::journal,
        super::audit,
        super::transaction,
        super::policy,
        super::activate_policy,
        super::rollback_policy,
        super::shadow_report,
        super::clear_shadow,
        super::promote_shadow,
        super::healthz,
        super::prometheus,
        document,
    ),
    modifiers(&AdminToken),
    tags(
        (name = "metering", description = "What a gateway calls around each metered call"),
        (name = "ledger", description = "Credits, journals and transactions"),
        (name = "events", description = "Thresholds on balances, the feed of the events they raise, and webhooks delivering it"),
        (name = "policy", description = "The active policy, its history, and shadow evaluation"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The security scheme of the admin calls: `Authorization: Bearer <admin token>` (the
/// `--admin-token` of `serve`; without one, admin calls need nothing).
struct AdminToken;

/// The scheme's name, which admin operations give in their `security(...)`.
const ADMIN_TOKEN: &str = "admin_token";

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                ADMIN_TOKEN,
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

// Descriptions of the error answers several operations share.
pub const INVALID_BODY: &str = "`invalid_json`: the body is not JSON; `invalid_request`: it is not of this call's shape, or a field breaks a limit";
pub const INVALID_ID: &str =
    "`invalid_request`: the id is not 1 to 128 characters of `[A-Za-z0-9._:@-]`";
pub const UNAUTHORIZED: &str = "`unauthorized`: an admin call without the right `Authorization: Bearer` token, refused before its body is read";
pub const REQUEST_TIMEOUT: &str =
    "`request_timeout`: the body did not arrive within `--body-read-timeout-ms`; nothing moved";
pub const PAYLOAD_TOO_LARGE: &str =
    "`payload_too_large`: a body over 2 MiB (a policy upload over 32 MiB)";
pub const POLICY_FAILED: &str = "`policy_trap`, `policy_fuel_exhausted`, `policy_time_exceeded`, `policy_host_limit`, `policy_invalid_verdict`: the policy failed or passed a bound of its call; the request failed closed and nothing was written";
pub const UNAVAILABLE: &str = "The sidecar cannot answer now; nothing moved. `overloaded` (a bound on requests, uploads or holds is reached; retry after `Retry-After`), `policy_budget_exceeded` (this tenant's policy calls keep failing; retry after `Retry-After`), `store_unavailable`, `store_incompatible`, `store_corrupt`, `ledger_in_use`, `sequencer_stopped`, `shut_down`";

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object))
)]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests;
