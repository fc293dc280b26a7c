//! Request bodies are read whole, bounded, before any route sees the
//! request. An answer the server gives early (a bad `conf_id`, an unknown
//! path) then never leaves unread bytes behind on a kept-alive connection,
//! and an oversized body is read and thrown away, up to a bound, so the
//! client finishes sending and reads its 413 instead of a reset.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::{ApiError, Signalling};
use crate::metrics::RejectReason;

/// The largest SETUP body `docs/contract.md` allows.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How much of an oversized body is read and discarded before the 413.
const MAX_DISCARDED_BYTES: u64 = 1024 * 1024;
/// How long reading a body (kept or discarded) may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Middleware: hands the route a fully read body of at most [`MAX_BODY_BYTES`],
/// or answers 413 itself (with `Connection: close`).
pub async fn read_whole(state: Arc<Signalling>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(READ_TIMEOUT, read_bounded(body)).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(error)) => {
            // POST is SETUP, the one request that asks for a session.
            if parts.method == Method::POST && matches!(error, ApiError::TooLarge) {
                state.metrics.rejected(RejectReason::TooLarge);
            }
            error.into_response()
        }
        Err(_) => {
            let mut response = ApiError::BadRequest("the request body did not arrive in time".into()).into_response();
            response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            response
        }
    }
}

async fn read_bounded(mut body: Body) -> Result<Bytes, ApiError> {
    if body.size_hint().lower() > MAX_DISCARDED_BYTES {
        // Announced as too large to be worth reading: answer at once and close.
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
