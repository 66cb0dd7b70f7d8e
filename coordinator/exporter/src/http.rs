//! `GET /metrics` over HTTP/1.1; every other path is 404. The exposition is built on a
//! blocking thread, so a large fleet's scrape never holds up the broker session.

use crate::Exporter;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// The routes.
pub fn router(exporter: Arc<Exporter>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(exporter)
}

async fn metrics(State(exporter): State<Arc<Exporter>>) -> Response {
    let now = rigd_client::unix_ms();
    match tokio::task::spawn_blocking(move || exporter.scrape(now)).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "the metrics could not be encoded");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "the scrape task failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
