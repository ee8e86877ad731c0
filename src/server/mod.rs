//! `runbook serve`'s HTTP side (axum): the seed's admin API, runs and playbooks, metrics and
//! health checks.

mod admin;
mod auth;
mod error;
pub mod receiver;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::{
    extract::{DefaultBodyLimit, State},
    http::{header, StatusCode},
    response::IntoResponse,
    routing::{delete, get, post},
    Router,
};
use tokio_util::sync::CancellationToken;

pub use admin::open_counts as admin_open_counts;
pub use auth::{Role, Tokens};
pub use error::AppError;

use crate::{engine::Engine, metrics::Metrics, services::Services};

/// What every handler sees.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub services: Arc<Services>,
    pub metrics: Arc<Metrics>,
    pub tokens: Tokens,
    /// Who may post Alertmanager notifications.
    pub receiver: receiver::ReceiverAuth,
    /// The writer that records them.
    pub ingest: receiver::Ingest,
}

pub type Shared = Arc<AppState>;

/// The router, without a listener (tests call it with `oneshot`).
pub fn router(state: Shared, max_body: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/admin/streaming/dlq", get(admin::dlq_list))
        .route(
            "/api/admin/streaming/dlq/retry-all",
            post(admin::dlq_retry_all),
        )
        .route(
            "/api/admin/streaming/dlq/cleanup",
            delete(admin::dlq_cleanup),
        )
        .route("/api/admin/streaming/stats", get(admin::stats))
        .route("/api/playbooks", get(admin::playbooks))
        .route("/api/runs", get(admin::runs_list).post(admin::runs_create))
        .route("/api/runs/{id}", get(admin::run_show))
        .route("/api/runs/{id}/approve", post(admin::run_approve))
        .route("/api/runs/{id}/cancel", post(admin::run_cancel))
        // Triggers: the Alertmanager receiver, received alerts, the global pause.
        .route("/api/webhooks/alertmanager", post(receiver::receive))
        .route("/api/alerts", get(receiver::list).post(receiver::receive))
        .route("/api/pause", post(admin::pause))
        .route("/api/resume", post(admin::resume))
        .route("/api/status", get(admin::status))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    match s.services.store.ready().await {
        Ok(_) => (StatusCode::OK, "ready\n".to_owned()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "store unavailable: {}\n",
                s.services.masker.mask_str(&e.to_string())
            ),
        ),
    }
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    match crate::stream::ops::queue_stats(&s.services.store, &s.services.config.streaming).await {
        Ok(stats) => s.metrics.set_queue_gauges(&stats),
        Err(e) => tracing::warn!(error = %e, "Reading queue gauges for /metrics failed."),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// Serves until `shutdown`, then lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    max_body: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state, max_body))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
