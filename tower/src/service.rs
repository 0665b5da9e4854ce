//! One metered call: authorize, forward (cut to the admitted items), settle with what
//! the upstream answered, and hand the policy's headers and meta to the client.
//!
//! Invariants, each kept in one place below:
//! - *No upstream call without an admission*: the inner service is called only after
//!   `authorize` admitted ([`metered`]), or for a path no route meters.
//! - *Every admission is settled once*: every path after the admission goes through
//!   [`settle`], the upstream's failures included (502 refused, 504 timed out, no body).
//!   A settle that fails leaves the hold to lapse at its TTL, charging nothing; the
//!   client still gets the upstream's answer, marked `creditgate-settle: failed`.
//! - *The partial batch forwards exactly the first N items*: [`extract::cut_batch`].
//! - *A repeat with the same idempotency key charges once*: the meter's idempotency by
//!   transaction id (authorize and settle answer what they first recorded).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use creditgate::error::MeterError;
use creditgate::meter::Meter;
use creditgate::model::{Authorization, AuthorizeRequest, Receipt, SettleRequest};
use futures_util::TryFutureExt;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::answer::{Body, BoxError, GatewayError, full, json_error};
use crate::extract;
use crate::routes::{CompiledRoute, CompiledRoutes, GatewayLimits, Routes, RoutesError};

/// The header naming the transaction on every metered answer.
pub const TRANSACTION_HEADER: &str = "creditgate-transaction-id";
/// Set to `failed` on an answer whose settle failed (the hold lapses, charging nothing).
pub const SETTLE_HEADER: &str = "creditgate-settle";

/// Meters the routes of [`Routes`] in front of any service of HTTP requests.
#[derive(Clone)]
pub struct MeteringLayer {
    meter: Arc<Meter>,
    routes: Arc<CompiledRoutes>,
}

impl MeteringLayer {
    /// Checks the routes; a description that cannot work is refused with a sentence.
    pub fn new(meter: Arc<Meter>, routes: Routes) -> Result<Self, RoutesError> {
        Ok(Self {
            meter,
            routes: Arc::new(routes.compile()?),
        })
    }
}

impl<S> Layer<S> for MeteringLayer {
    type Service = MeteringService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MeteringService {
            inner,
            meter: Arc::clone(&self.meter),
            routes: Arc::clone(&self.routes),
        }
    }
}

/// The service [`MeteringLayer`] makes. It answers every error itself (a JSON error
/// with a status and a stable code), so its error type is [`Infallible`].
#[derive(Clone)]
pub struct MeteringService<S> {
    inner: S,
    meter: Arc<Meter>,
    routes: Arc<CompiledRoutes>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MeteringService<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = CallFuture;

    /// Always ready: the inner service is readied per call, after the authorize.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Everything generic is settled here, outside any `async` block: under this
        // impl's bounds the compiler cannot prove such a block `Send` for every
        // lifetime it erases (rust-lang/rust#64552).
        let inner = self.inner.clone();
        let call = Call {
            upstream: Box::new(move |request| call_upstream(inner, request)),
            meter: Arc::clone(&self.meter),
            routes: Arc::clone(&self.routes),
        };
        let request = request.map(|body| body.map_err(Into::into).boxed_unsync());
        call.handle(request)
    }
}

/// The future of one call of the layer's service.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// The one call of the inner service a request may make.
type UpstreamCall = Box<dyn FnOnce(Request<Body>) -> Forwarded + Send>;

/// What one call needs; owned, so that its future is `'static`.
struct Call {
    upstream: UpstreamCall,
    meter: Arc<Meter>,
    routes: Arc<CompiledRoutes>,
}

/// How the upstream call went.
enum Upstream {
    Answered(Response<Body>),
    Failed(GatewayError),
}

impl Call {
    /// The call's future: built in this non-generic function, so that no bound of the
    /// service's impl takes part in proving it `Send`.
    fn handle(self, request: Request<Body>) -> CallFuture {
        Box::pin(async move { Ok(self.answer(request).await) })
    }

    async fn answer(self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let Some((route, parameters)) = self.routes.matching(&parts.method, parts.uri.path())
        else {
            let request = Request::from_parts(parts, body);
            let deadline = self.deadline();
            return match forward((self.upstream)(request), deadline).await {
                Upstream::Answered(response) => response,
                Upstream::Failed(error) => error.into_response(None),
            };
        };
        self.metered(route, parameters, parts, body)
            .await
            .unwrap_or_else(|error| error.into_response(None))
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.routes.limits.upstream_timeout_ms)
    }

    async fn metered(
        self,
        route: Arc<CompiledRoute>,
        parameters: BTreeMap<String, String>,
        mut parts: http::request::Parts,
        body: Body,
    ) -> Result<Response<Body>, GatewayError> {
        let tenant = extract::tenant(&self.routes, &parts.headers)?;
        let transaction_id = extract::transaction_id(&self.routes, &parts.headers)?;
        let declared_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        let bytes = read_request(declared_length, body, self.routes.limits).await?;
        let mut json = match route.route.items {
            Some(_) => serde_json::from_slice::<Value>(&bytes).ok(),
            None => None,
        };
        let items = extract::items(&route, json.as_ref())?;
        let requested = items.len();
        let authorization = authorize(
            &self.meter,
            AuthorizeRequest {
                transaction_id,
                tenant,
                operation: route.route.operation.clone(),
                items,
                attributes: extract::attributes(&route, &parts, &parameters),
                body: None,
            },
        )
        .await
        .map_err(|error| GatewayError::meter(&error))?;
        let meta_key = route.route.meta.as_deref();
        if !authorization.admitted {
            return Ok(refusal(&authorization, meta_key));
        }

        // Admitted: from here every path settles.
        let admitted = usize::try_from(authorization.admitted_items).unwrap_or(usize::MAX);
        let forwarded = match json.as_mut() {
            Some(json) if admitted < requested => {
                extract::cut_batch(&route, json, admitted);
                Bytes::from(json.to_string())
            }
            _ => bytes,
        };
        set_length(&mut parts.headers, forwarded.len());
        let deadline = self.deadline();
        let limit = self.routes.limits.response_body_bytes_max;
        let Call {
            upstream, meter, ..
        } = self;
        let request = Request::from_parts(parts, full(forwarded));
        let upstream = forward(upstream(request), deadline).await;
        let (status, attributes, answer) = match upstream {
            Upstream::Failed(error) => (error.status, BTreeMap::new(), Err(error)),
            Upstream::Answered(response) if route.reads_answer => {
                match read_answer(response, limit, deadline).await {
                    Ok((head, bytes)) => {
                        let json = serde_json::from_slice::<Value>(&bytes).ok();
                        let attributes = extract::outcome(&route, &head.headers, json.as_ref());
                        (
                            head.status,
                            attributes,
                            Ok((head, Answer::Read(bytes, json))),
                        )
                    }
                    Err(error) => (error.status, BTreeMap::new(), Err(error)),
                }
            }
            Upstream::Answered(response) => {
                let (head, body) = response.into_parts();
                let attributes = extract::outcome(&route, &head.headers, None);
                (head.status, attributes, Ok((head, Answer::Streamed(body))))
            }
        };
        let settled = SettleRequest {
            transaction_id: authorization.transaction_id.clone(),
            status: status.as_u16(),
            attributes,
            body: None,
        };
        let receipt = settle(meter, settled).await;

        let metas: Vec<&Value> = std::iter::once(&authorization.meta)
            .chain(receipt.as_ref().map(|receipt| &receipt.meta))
            .collect();
        let meta = meta_key.zip(extract::merged_meta(&metas));
        let mut response = match answer {
            Err(error) => error.into_response(meta),
            Ok((mut head, Answer::Read(bytes, json))) => {
                let body = match (meta, json) {
                    (Some((key, meta)), Some(mut json)) => {
                        extract::merge_meta(&mut json, key, meta);
                        Bytes::from(json.to_string())
                    }
                    _ => bytes,
                };
                set_length(&mut head.headers, body.len());
                Response::from_parts(head, full(body))
            }
            Ok((head, Answer::Streamed(body))) => Response::from_parts(head, body),
        };
        add_policy_headers(response.headers_mut(), &authorization.headers);
        match &receipt {
            Some(receipt) => add_policy_headers(response.headers_mut(), &receipt.headers),
            None => {
                response
                    .headers_mut()
                    .insert(SETTLE_HEADER, HeaderValue::from_static("failed"));
            }
        }
        add_transaction_header(response.headers_mut(), &authorization.transaction_id);
        Ok(response)
    }
}

/// The upstream's answer, its body boxed.
type Forwarded = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

/// Calls the upstream: a plain future, built outside any `async` block.
fn call_upstream<S, ResBody>(upstream: S, request: Request<Body>) -> Forwarded
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    Box::pin(
        upstream
            .oneshot(request)
            .map_ok(|response| response.map(|body| body.map_err(Into::into).boxed_unsync()))
            .map_err(Into::into),
    )
}

/// Calls the upstream before `deadline`: a failure is 502 `upstream_unavailable`, a
/// timeout 504 `upstream_timeout`.
async fn forward(call: Forwarded, deadline: Instant) -> Upstream {
    match tokio::time::timeout_at(deadline, call).await {
        Ok(Ok(response)) => Upstream::Answered(response),
        Ok(Err(error)) => {
            tracing::warn!(%error, "the upstream failed");
            Upstream::Failed(GatewayError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                format!("the upstream service failed: {error}"),
            ))
        }
        Err(_) => Upstream::Failed(upstream_timeout()),
    }
}

/// A meter call's future, boxed where it is made. Awaited inline in an `async` block
/// that must be `Send`, the meter's futures trip a limit of the compiler's auto-trait
/// analysis (it asks for `&Meter: Send` at every lifetime; rust-lang/rust#110338);
/// boxed as `dyn Future + Send` where the lifetime is known, they are `Send` outright.
type MeterFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, MeterError>> + Send + 'a>>;

fn authorize(meter: &Meter, request: AuthorizeRequest) -> MeterFuture<'_, Authorization> {
    Box::pin(meter.authorize_async(request))
}

/// Settles with what the upstream did; `None` when the meter could not (the hold lapses
/// at its TTL, charging nothing), which is logged.
async fn settle(meter: Arc<Meter>, request: SettleRequest) -> Option<Receipt> {
    let transaction_id = request.transaction_id.clone();
    let settled: MeterFuture<'_, Receipt> = Box::pin(meter.settle_async(request));
    match settled.await {
        Ok(receipt) => Some(receipt),
        Err(error) => {
            tracing::warn!(transaction = %transaction_id, %error, "settle failed; the hold lapses at its TTL");
            metrics::counter!("creditgate_gateway_errors_total", "code" => "settle_failed")
                .increment(1);
            None
        }
    }
}

/// The upstream's answer, as the route needs it.
enum Answer {
    /// Read whole (the route reads an outcome from it or merges meta into it), and its
    /// JSON if it is JSON.
    Read(Bytes, Option<Value>),
    Streamed(Body),
}

fn upstream_timeout() -> GatewayError {
    GatewayError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
        "the upstream service did not answer in time".to_owned(),
    )
}

/// A body read whole, at most `limit` bytes (past it, a `LengthLimitError`). Boxed
/// where it is made, as [`MeterFuture`] is.
fn collect(
    body: Body,
    limit: usize,
) -> Pin<Box<dyn Future<Output = Result<Bytes, BoxError>> + Send>> {
    Box::pin(
        Limited::new(body, limit)
            .collect()
            .map_ok(http_body_util::Collected::to_bytes),
    )
}

/// The request body, read whole under its bounds: 413 `payload_too_large` past its
/// size, 408 `request_timeout` past its time.
async fn read_request(
    declared_length: Option<u64>,
    body: Body,
    limits: GatewayLimits,
) -> Result<Bytes, GatewayError> {
    let limit = limits.request_body_bytes_max;
    let too_large = move || {
        GatewayError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a metered request's body may be at most {limit} bytes"),
        )
    };
    if declared_length.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let timeout = Duration::from_millis(limits.request_body_read_timeout_ms);
    match tokio::time::timeout(timeout, collect(body, limit)).await {
        Err(_) => Err(GatewayError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(error)) => Err(GatewayError::bad_request(
            "invalid_body",
            format!("the request body could not be read: {error}"),
        )),
    }
}

/// The upstream's answer, read whole under `limit` bytes before `deadline`.
async fn read_answer(
    response: Response<Body>,
    limit: usize,
    deadline: Instant,
) -> Result<(http::response::Parts, Bytes), GatewayError> {
    let (head, body) = response.into_parts();
    match tokio::time::timeout_at(deadline, collect(body, limit)).await {
        Ok(Ok(bytes)) => Ok((head, bytes)),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(GatewayError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_answer_too_large",
            format!("the upstream's answer is larger than {limit} bytes"),
        )),
        Ok(Err(error)) => Err(GatewayError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            format!("the upstream's answer could not be read: {error}"),
        )),
        Err(_) => Err(upstream_timeout()),
    }
}

/// The answer to a refused call: the policy's status, code and message; its headers;
/// its meta under the route's key.
fn refusal(authorization: &Authorization, meta_key: Option<&str>) -> Response<Body> {
    let status = authorization
        .status
        .and_then(|status| StatusCode::from_u16(status).ok())
        .unwrap_or(StatusCode::PAYMENT_REQUIRED);
    let (code, message) = match &authorization.error {
        Some(error) => (error.code.as_str(), error.message.as_str()),
        None => ("rejected", "the policy refused this call"),
    };
    let meta = meta_key.zip(extract::merged_meta(&[&authorization.meta]));
    let mut response = json_error(status, code, message, meta);
    add_policy_headers(response.headers_mut(), &authorization.headers);
    add_transaction_header(response.headers_mut(), &authorization.transaction_id);
    response
}

/// Headers that frame the message: a policy's header of these names is not copied.
const FRAMING_HEADERS: [HeaderName; 6] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
];

/// Adds the policy's headers (a later call's replaces an earlier's of the same name).
fn add_policy_headers(headers: &mut HeaderMap, policy: &BTreeMap<String, String>) {
    for (name, value) in policy {
        let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) else {
            tracing::warn!(
                header = name,
                "the policy's header is not a valid HTTP header; left out"
            );
            continue;
        };
        if !FRAMING_HEADERS.contains(&name) {
            headers.insert(name, value);
        }
    }
}

fn add_transaction_header(headers: &mut HeaderMap, transaction_id: &str) {
    if let Ok(value) = HeaderValue::try_from(transaction_id) {
        headers.insert(TRANSACTION_HEADER, value);
    }
}

/// A body re-serialized or buffered whole: its exact length, no chunking.
fn set_length(headers: &mut HeaderMap, length: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
}
