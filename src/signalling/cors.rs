//! CORS for the origins in `signalling.allow_origin`, preflight included,
//! so web apps on another origin can call signalling.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Signalling;

const ALLOWED_METHODS: &str = "POST, DELETE, OPTIONS";
const ALLOWED_HEADERS: &str = "content-type, authorization";
const PREFLIGHT_MAX_AGE: &str = "600";

pub async fn handle(state: Arc<Signalling>, request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let allowed = origin.as_ref().filter(|o| is_allowed(&state, o)).cloned();
    let is_preflight =
        request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if is_preflight {
        // A disallowed origin gets an answer without CORS headers: the browser blocks it.
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = allowed {
        let value = if state.allow_origin.is_none() { HeaderValue::from_static("*") } else { origin };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        if is_preflight {
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOWED_METHODS));
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOWED_HEADERS));
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(PREFLIGHT_MAX_AGE));
        }
    }
    response
}

fn is_allowed(state: &Signalling, origin: &HeaderValue) -> bool {
    match &state.allow_origin {
        None => true,
        Some(list) => origin.to_str().is_ok_and(|o| list.iter().any(|allowed| allowed.eq_ignore_ascii_case(o))),
    }
}
