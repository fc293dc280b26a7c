//! Request bodies are read whole, bounded, before any route sees the
//! request. An answer the server gives early (a bad `conf_id`, an unknown
//! path) then never leaves unread bytes behind on a kept-alive connection,
//! and an oversized body is read and thrown away, up to a bound, so the
//! client finishes sending and reads its 413 instead of a reset.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::{ApiError, Signalling};

/// The largest SETUP body `docs/contract.md` allows.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// How much of an oversized body is read and discarded before the 413.
const MAX_DISCARDED_BYTES: u64 = 1024 * 1024;
/// How long reading a body (kept or discarded) may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Middleware: hands the route a fully read body of at most [`MAX_BODY_BYTES`],
/// or answers the error itself (with `Connection: close`: see [`ApiError`]).
pub async fn read_whole(state: Arc<Signalling>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let declared = body.size_hint().lower();
    let read = match tokio::time::timeout(READ_TIMEOUT, read_bounded(body, declared, &parts.headers)).await {
        Ok(read) => read,
        // A body announced too large that never came is still too large.
        Err(_) if declared > MAX_BODY_BYTES as u64 => Err(ApiError::TooLarge),
        Err(_) => Err(ApiError::SlowBody),
    };
    match read {
        Ok(bytes) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(error) => {
            if parts.method == Method::POST && super::is_setup_path(parts.uri.path()) {
                if let Some(reason) = error.reject_reason() {
                    state.metrics.rejected(reason);
                }
            }
            error.into_response()
        }
    }
}

async fn read_bounded(mut body: Body, declared: u64, headers: &HeaderMap) -> Result<Bytes, ApiError> {
    let expects_continue =
        headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if declared > MAX_DISCARDED_BYTES || (declared > MAX_BODY_BYTES as u64 && expects_continue) {
        // Too large to be worth reading, or not sent before we answer: 413 at once.
        return Err(ApiError::TooLarge);
    }
    let mut kept = Vec::new();
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen += data.len() as u64;
        if seen > MAX_DISCARDED_BYTES {
            return Err(ApiError::TooLarge);
        }
        if seen <= MAX_BODY_BYTES as u64 {
            kept.extend_from_slice(&data);
        }
    }
    if seen > MAX_BODY_BYTES as u64 {
        return Err(ApiError::TooLarge);
    }
    Ok(Bytes::from(kept))
}
