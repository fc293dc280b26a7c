//! The demo page at `/`: plain HTML and JavaScript inside the binary.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("demo.html");

pub async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], PAGE)
}
