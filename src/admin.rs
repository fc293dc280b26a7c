//! The metrics port: `GET /metrics`, `/healthz`, `/readyz`, `POST /admin/drain`,
//! `POST /admin/reload`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::drain::Drain;
use crate::edge::EdgeHandle;
use crate::metrics::Metrics;
use crate::reload::Reloader;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// Health follows the media thread: without it the SFT carries no media.
    pub edge: EdgeHandle,
    pub drain: Arc<Drain>,
    pub reloader: Arc<Reloader>,
    /// `metrics.admin_token`: see [`authorize`].
    pub token: Option<String>,
}

pub fn router(state: Arc<Admin>) -> Router {
    let admin = Router::new()
        .route("/admin/drain", post(drain).delete(cancel_drain))
        .route("/admin/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .merge(admin)
        .with_state(state)
}

/// `/admin/*` changes what the SFT does: with `metrics.admin_token` set it
/// takes that bearer token from anyone (401 without it), else only callers
/// on loopback (403 to others).
async fn authorize(
    State(state): State<Arc<Admin>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = match &state.token {
        Some(token) => {
            let presented = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            if presented.and_then(|v| v.strip_prefix("Bearer ")) != Some(token.as_str()) {
                return (StatusCode::UNAUTHORIZED, "admin token required\n").into_response();
            }
            true
        }
        None => peer.ip().is_loopback(),
    };
    if !allowed {
        return (StatusCode::FORBIDDEN, "admin requests only from loopback (or set metrics.admin_token)\n")
            .into_response();
    }
    next.run(request).await
}

async fn metrics(State(state): State<Arc<Admin>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

async fn health(State(state): State<Arc<Admin>>) -> impl IntoResponse {
    if state.edge.is_running() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the media thread has stopped\n")
    }
}

async fn ready(State(state): State<Arc<Admin>>) -> impl IntoResponse {
    if !state.edge.is_running() {
        (StatusCode::SERVICE_UNAVAILABLE, "the media thread has stopped\n")
    } else if state.drain.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn drain(State(state): State<Arc<Admin>>) -> impl IntoResponse {
    state.drain.start();
    state.metrics.draining.set(1);
    (StatusCode::ACCEPTED, "draining\n")
}

/// Cancels a drain: the SFT takes new sessions again, `/readyz` turns 200.
async fn cancel_drain(State(state): State<Arc<Admin>>) -> impl IntoResponse {
    if !state.drain.is_draining() {
        return (StatusCode::CONFLICT, "not draining\n");
    }
    state.drain.cancel();
    state.metrics.draining.set(0);
    (StatusCode::OK, "drain cancelled\n")
}

async fn reload(State(state): State<Arc<Admin>>) -> impl IntoResponse {
    match state.reloader.reload() {
        Ok(()) => (StatusCode::OK, "reloaded\n".to_owned()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("reload failed, nothing changed: {e}\n")),
    }
}
