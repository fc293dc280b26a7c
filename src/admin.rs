//! The metrics port: `GET /metrics`, `/healthz`, `/readyz`, `POST /admin/drain`,
//! `POST /admin/reload`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::reload::Reloader;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub drain: Arc<Drain>,
    pub reloader: Arc<Reloader>,
}

pub fn router(state: Arc<Admin>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/admin/drain", post(drain))
        .route("/admin/reload", post(reload))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<Admin>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

async fn ready(State(state): State<Arc<Admin>>) -> impl IntoResponse {
    if state.drain.is_draining() {
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

async fn reload(State(state): State<Arc<Admin>>) -> impl IntoResponse {
    match state.reloader.reload() {
        Ok(()) => (StatusCode::OK, "reloaded\n".to_owned()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("reload failed, nothing changed: {e}\n")),
    }
}
