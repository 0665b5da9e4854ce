//! The answers the layer gives itself: refusals and gateway errors as the sidecar's
//! JSON error (`{"error": {"code", "message"}}`), with a status and a stable code.

use bytes::Bytes;
use creditgate::error::MeterError;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use metrics::counter;
use serde_json::Value;

/// The body of every answer the layer gives and of every request it forwards.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Errors of bodies, as tower and hyper pass them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body of these bytes.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An answer of the layer's own: nothing was forwarded, or the upstream failed. Each
/// is counted in `creditgate_gateway_errors_total{code}`.
#[derive(Debug)]
pub(crate) struct GatewayError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_s: Option<u64>,
}

impl GatewayError {
    pub fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        Self {
            status,
            code,
            message,
            retry_after_s: None,
        }
    }

    pub fn bad_request(code: &'static str, message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unknown_tenant(message: String) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unknown_tenant", message)
    }

    /// The meter could not decide (store down, policy failed closed, ...): its status,
    /// code and sentence; nothing moved.
    pub fn meter(error: &MeterError) -> Self {
        Self {
            status: StatusCode::from_u16(error.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: error.code(),
            message: error.to_string(),
            retry_after_s: error.retry_after_ms().map(|ms| ms.div_ceil(1_000)),
        }
    }

    /// The JSON error; `meta` (the policy's, under the route's key) is added beside it.
    pub fn into_response(self, meta: Option<(&str, Value)>) -> Response<Body> {
        counter!("creditgate_gateway_errors_total", "code" => self.code).increment(1);
        let mut response = json_error(self.status, self.code, &self.message, meta);
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// `{"error": {"code", "message"}}` with this status, and `meta` under its key.
pub(crate) fn json_error(
    status: StatusCode,
    code: &str,
    message: &str,
    meta: Option<(&str, Value)>,
) -> Response<Body> {
    let mut body = serde_json::json!({"error": {"code": code, "message": message}});
    if let Some((key, meta)) = meta {
        crate::extract::merge_meta(&mut body, key, meta);
    }
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
