//! The answers the layer gives itself: refusals and gateway errors as the sidecar's
//! JSON error (`{"error": {"code", "message"}}`), with a status and a stable code.

use bytes::Bytes;
use creditgate::error::MeterError;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
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

/// An answer of the layer's own: nothing was forwarded, or the upstream failed.
#[derive(Debug)]
pub(crate) struct GatewayError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub retry_after_s: Option<u64>,
}

impl GatewayError {
    pub fn new(status: StatusCode, code: &str, message: String) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message,
            retry_after_s: None,
        }
    }

    pub fn bad_request(code: &str, message: String) -> Self {
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
            code: error.code().to_owned(),
            message: error.to_string(),
            retry_after_s: error.retry_after_ms().map(|ms| ms.div_ceil(1_000)),
        }
    }

    /// The JSON error; `meta` (the policy's, under the route's key) is added beside it.
    pub fn into_response(self, meta: Option<(&str, Value)>) -> Response<Body> {
        let mut body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        if let Some((key, meta)) = meta {
            crate::extract::merge_meta(&mut body, key, meta);
        }
        let mut response = Response::new(full(body.to_string()));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
