//! Request bodies: JSON bodies are read into memory under [`REQUEST_BYTES_MAX`]; a policy
//! upload is streamed into an anonymous temporary file as it arrives, so a slow 32 MiB
//! upload holds disk, not memory, until it is complete. Both are bounded in bytes and in
//! the time they may take to arrive.

use std::io::{Read, Seek};
use std::time::Duration;

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::ApiError;
use creditgate::error::ErrorCode;

/// The largest request body the sidecar reads; larger ones get 413.
pub const REQUEST_BYTES_MAX: usize = 2 << 20;
/// The largest policy component `PUT /v1/policy` accepts.
pub const POLICY_BYTES_MAX: usize = 32 << 20;

/// Reads a body of at most `cap` bytes within `timeout`; a declared Content-Length over
/// the cap is refused before a byte of the body is read.
pub async fn read_bytes(
    request: Request,
    cap: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let body = bounded_body(request, cap)?;
    match tokio::time::timeout(timeout, to_bytes(body, cap)).await {
        Ok(read) => read.map_err(|_| too_large(cap)),
        Err(_) => Err(too_slow(timeout)),
    }
}

/// Receives a policy upload of at most [`POLICY_BYTES_MAX`] bytes within `timeout`
/// into a temporary file (in the system's temporary directory, `TMPDIR`, unlinked from
/// the start), then reads it back for activation.
pub async fn receive_policy(request: Request, timeout: Duration) -> Result<Vec<u8>, ApiError> {
    let body = bounded_body(request, POLICY_BYTES_MAX)?;
    let spooled = tokio::task::spawn_blocking(tempfile::tempfile)
        .await
        .map_err(|error| spool_failed(&error))?
        .map_err(|error| spool_failed(&error))?;
    let mut file = tokio::fs::File::from_std(spooled);
    match tokio::time::timeout(timeout, spool(body, &mut file)).await {
        Ok(spooled) => spooled?,
        Err(_) => return Err(too_slow(timeout)),
    }
    let mut file = file.into_std().await;
    tokio::task::spawn_blocking(move || {
        let mut component = Vec::new();
        file.rewind()?;
        file.read_to_end(&mut component)?;
        Ok(component)
    })
    .await
    .map_err(|error| spool_failed(&error))?
    .map_err(|error: std::io::Error| spool_failed(&error))
}

/// Writes the body's data to `file` as it arrives, refusing it once it passes
/// [`POLICY_BYTES_MAX`].
async fn spool(mut body: Body, file: &mut tokio::fs::File) -> Result<(), ApiError> {
    let mut received_bytes = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                format!("the request body could not be read: {error}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received_bytes = received_bytes.saturating_add(data.len());
        if received_bytes > POLICY_BYTES_MAX {
            return Err(too_large(POLICY_BYTES_MAX));
        }
        file.write_all(&data)
            .await
            .map_err(|error| spool_failed(&error))?;
    }
    file.flush().await.map_err(|error| spool_failed(&error))
}

/// Answers `refusal` to a request whose body is not wanted, discarding the body as it
/// arrives (never keeping it; at most [`POLICY_BYTES_MAX`] bytes within `timeout`), so
/// that the answer reaches a client still sending instead of a connection reset by a
/// close with unread bytes. A client that sent `Expect: 100-continue` is not asked for
/// its body: it gets the refusal instead of `100 Continue`.
pub fn refuse_unread(request: Request, refusal: ApiError, timeout: Duration) -> Response {
    let expects_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !expects_continue {
        let mut body = request.into_body();
        tokio::spawn(tokio::time::timeout(timeout, async move {
            let mut discarded_bytes = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                let length = frame.data_ref().map_or(0, Bytes::len);
                discarded_bytes = discarded_bytes.saturating_add(length);
                if discarded_bytes > POLICY_BYTES_MAX {
                    break;
                }
            }
        }));
    }
    refusal.into_response()
}

/// The request's body, unless its declared Content-Length is already over `cap`.
fn bounded_body(request: Request, cap: usize) -> Result<Body, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > cap as u64) {
        return Err(too_large(cap));
    }
    Ok(request.into_body())
}

fn too_large(cap: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than {cap} bytes"),
    )
}

fn too_slow(timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        ErrorCode::RequestTimeout,
        format!(
            "the request body did not arrive within {} ms (serve's --body-read-timeout-ms)",
            timeout.as_millis()
        ),
    )
}

fn spool_failed(error: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StoreUnavailable,
        format!("cannot keep the upload in a temporary file: {error}; nothing changed"),
    )
}
