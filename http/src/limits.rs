//! What one sidecar takes on at once: requests in flight, policy uploads, and how long a
//! request body may take to arrive. Past a bound a call is refused at once with 503
//! `overloaded` and `Retry-After`, never queued without end.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;
use super::body::refuse_unread;

/// The HTTP API's bounds; `serve` sets each from a flag of the same name.
#[derive(Clone, Copy, Debug)]
pub struct ApiLimits {
    /// Requests being handled at once (reading the body, waiting for the sequencer,
    /// answering), `/healthz` aside; more get 503 `overloaded`.
    pub requests_in_flight_max: usize,
    /// `PUT /v1/policy` uploads being received, compiled or checked at once; more get
    /// 503 `overloaded`.
    pub policy_uploads_max: usize,
    /// How long a request body may take to arrive, from the end of its head; a slower
    /// one gets 408 `request_timeout`.
    pub body_read_timeout_ms: u64,
    /// The longest a read of the event feed waits for the next event, in ms: a longer
    /// `wait_ms` (up to the API's 30,000) waits this long and answers what there is.
    pub events_wait_ms_max: u64,
}

impl ApiLimits {
    /// Little's law on the measured sidecar (about 20,000 requests/s at a p99 near
    /// 12 ms) puts ~240 requests in flight at its peak: 512 leaves twice that, and
    /// bounds the request bodies held at once to 512 × 2 MiB.
    pub const REQUESTS_IN_FLIGHT_MAX: usize = 512;
    /// An activation compiles a module of up to 32 MiB on a blocking thread for tens
    /// of milliseconds to seconds; two at once let a retry or a shadow upload through
    /// without letting uploads take every core and 32 MiB of memory each.
    pub const POLICY_UPLOADS_MAX: usize = 2;
    /// A gateway on the same host or network sends a 2 MiB body in milliseconds and a
    /// 32 MiB component in well under a second; 10 s tolerates a stalled client, and
    /// frees the request's slot from one that trickles its body.
    pub const BODY_READ_TIMEOUT_MS: u64 = 10_000;
    /// What `Retry-After` tells an `overloaded` caller to wait, in seconds.
    pub const RETRY_AFTER_S: u32 = 1;
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            requests_in_flight_max: Self::REQUESTS_IN_FLIGHT_MAX,
            policy_uploads_max: Self::POLICY_UPLOADS_MAX,
            body_read_timeout_ms: Self::BODY_READ_TIMEOUT_MS,
            events_wait_ms_max: creditgate::meter::feed::EVENTS_WAIT_MS_MAX,
        }
    }
}

/// The permits behind [`ApiLimits`], shared by every connection.
pub struct Admission {
    requests: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
    pub body_read_timeout: Duration,
}

impl Admission {
    pub fn new(limits: ApiLimits) -> Self {
        Self {
            requests: Arc::new(Semaphore::new(limits.requests_in_flight_max)),
            uploads: Arc::new(Semaphore::new(limits.policy_uploads_max)),
            body_read_timeout: Duration::from_millis(limits.body_read_timeout_ms),
        }
    }

    /// A permit for one policy upload, held until its activation is done.
    pub fn upload(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.uploads)
            .try_acquire_owned()
            .map_err(|_| ApiError::overloaded("as many policy uploads as allowed are in progress"))
    }

    /// Answers `refusal` without reading the request's body into memory: the body is
    /// discarded as it arrives, unless the client waits for `100 Continue`.
    pub fn refuse_unread(&self, request: Request, refusal: ApiError) -> Response {
        refuse_unread(request, refusal, self.body_read_timeout)
    }
}

/// The route layer that bounds requests in flight: a request past the bound is answered
/// 503 `overloaded` at once, before its body is read.
pub async fn bound_in_flight(
    State(admission): State<Arc<Admission>>,
    request: Request,
    next: Next,
) -> Response {
    match Arc::clone(&admission.requests).try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => admission.refuse_unread(
            request,
            ApiError::overloaded("as many requests as allowed are in flight"),
        ),
    }
}
