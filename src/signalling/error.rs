//! The one place where signalling failures become `docs/contract.md`'s HTTP
//! status codes and `{"error","message"}` bodies.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use axum::Json;
use thiserror::Error;

use crate::edge::JoinError;
use crate::federation::FederationError;
use crate::metrics::RejectReason;

/// How long a client should wait before retrying a 503, or a quota's 429:
/// sessions that never connect end after `media.idle_timeout` (10 s).
const RETRY_AFTER_SECONDS: &str = "10";

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    FederationDenied(String),
    #[error("{0}")]
    SessionExists(String),
    #[error("request body is larger than 64 KiB")]
    TooLarge,
    #[error("the request body did not arrive in time")]
    SlowBody,
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("{0}")]
    AnchorUnreachable(String),
    #[error("{0}")]
    NotFound(String),
    /// Too many requests from this source: try again after the duration.
    #[error("too many requests from this address; retry after {} s", retry_after_seconds(*.0))]
    RateLimited(Duration),
    #[error("{0}")]
    OverQuota(&'static str),
}

fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) | Self::SlowBody => (StatusCode::BAD_REQUEST, "bad-request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::FederationDenied(_) => (StatusCode::FORBIDDEN, "federation-denied"),
            Self::SessionExists(_) => (StatusCode::CONFLICT, "session-exists"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::AnchorUnreachable(_) => (StatusCode::BAD_GATEWAY, "anchor-unreachable"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            Self::RateLimited(_) | Self::OverQuota(_) => (StatusCode::TOO_MANY_REQUESTS, "rate-limited"),
        }
    }

    /// The `sft_sessions_rejected_total` reason, for errors that turn a SETUP away.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        Some(match self {
            Self::BadRequest(_) | Self::SlowBody => RejectReason::BadRequest,
            Self::Unauthorized(_) => RejectReason::Unauthorized,
            Self::FederationDenied(_) => RejectReason::FederationDenied,
            Self::SessionExists(_) => RejectReason::SessionExists,
            Self::TooLarge => RejectReason::TooLarge,
            Self::Unavailable(_) => RejectReason::Unavailable,
            Self::AnchorUnreachable(_) => RejectReason::AnchorUnreachable,
            Self::RateLimited(_) | Self::OverQuota(_) => RejectReason::RateLimited,
            Self::NotFound(_) => return None,
        })
    }
}

impl From<FederationError> for ApiError {
    fn from(error: FederationError) -> Self {
        match error {
            FederationError::Denied(why) => Self::FederationDenied(why),
            FederationError::Unreachable(why) => Self::AnchorUnreachable(why),
            FederationError::AnchorDraining(_) => Self::Unavailable("the anchor SFT is draining"),
        }
    }
}

impl From<JoinError> for ApiError {
    fn from(error: JoinError) -> Self {
        match error {
            JoinError::BadOffer(why) => Self::BadRequest(format!("SDP offer: {why}")),
            JoinError::SessionExists(_) => Self::SessionExists(error.to_string()),
            JoinError::AtCapacity(why) => Self::Unavailable(why),
            JoinError::OverQuota(why) => Self::OverQuota(why),
            JoinError::Stopped => Self::Unavailable("the media edge is shutting down"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = Json(serde_json::json!({ "error": code, "message": self.to_string() }));
        let mut response = (status, body).into_response();
        if matches!(self, Self::TooLarge | Self::SlowBody) {
            // The rest of the body may still be on its way: do not reuse the connection.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let retry_after = match self {
            Self::RateLimited(wait) => Some(HeaderValue::from(retry_after_seconds(wait))),
            Self::OverQuota(_) => Some(HeaderValue::from_static(RETRY_AFTER_SECONDS)),
            _ => (status == StatusCode::SERVICE_UNAVAILABLE).then_some(HeaderValue::from_static(RETRY_AFTER_SECONDS)),
        };
        if let Some(retry_after) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, retry_after);
        }
        response
    }
}
