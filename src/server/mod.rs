//! `runbook serve`'s HTTP side (axum): the seed's admin API, runs and playbooks, metrics and
//! health checks, and the accept loop that bounds what clients can hold (a header-read timeout,
//! a cap on open connections, a deadline per request).
//!
//! Every error answer is JSON in [`AppError`]'s shape (`{"error": {"status", "message"}}`),
//! the router's own 404/405 and the extractors' rejections included, and a request to `/api/`
//! without a valid token learns nothing but 401, whatever its path, method or query.

mod admin;
mod outbox;
mod auth;
mod error;
pub mod receiver;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{DefaultBodyLimit, Request, State},
    http::{header, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Json, Router,
};
use tokio_util::sync::CancellationToken;

pub use admin::open_counts as admin_open_counts;
pub use auth::{Principal, Role, Tokens};
pub use error::AppError;

use crate::{
    config::ServerConfig,
    engine::Engine,
    metrics::{Metrics, OutcomeLabel},
    services::Services,
};

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

/// What one client may hold: bytes of body, time to send its headers, time for a request, and
/// (all clients together) open connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_body: usize,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

/// `server.header_read_timeout`'s default.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// `server.request_timeout`'s default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl Limits {
    /// The config's `server:` limits, each key's default where it names none.
    pub fn from_config(server: &ServerConfig, max_body: usize) -> Limits {
        Limits {
            max_body,
            header_read_timeout: server
                .header_read_timeout
                .map_or(DEFAULT_HEADER_READ_TIMEOUT, |d| d.as_std()),
            request_timeout: server
                .request_timeout
                .map_or(DEFAULT_REQUEST_TIMEOUT, |d| d.as_std()),
            max_connections: server
                .max_connections
                .unwrap_or_else(default_max_connections)
                .max(1),
        }
    }
}

/// Half the process's open-file limit (the other half is left to the store's pool, outgoing
/// calls and files), at least 16; 4096 when the limit is unknown or unlimited.
pub fn default_max_connections() -> usize {
    #[cfg(unix)]
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    #[cfg(not(unix))]
    let limit: Option<u64> = None;
    limit
        .and_then(|n| usize::try_from(n / 2).ok())
        .map_or(4096, |n| n.max(16))
}

/// The router, without a listener (tests call it with `oneshot`).
pub fn router(state: Shared, limits: &Limits) -> Router {
    router_with(state, limits, Router::new())
}

/// The router with another face's routes beside the API (the web console under `/ui`, passed in
/// by the binary so this module names no face above it). They are merged after the API's layers:
/// their answers are their own (HTML, not the API's JSON errors) and they check their own sign-in.
pub fn router_with(state: Shared, limits: &Limits, face: Router<Shared>) -> Router {
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
        .route("/api/admin/streaming/outbox/parked", get(outbox::list))
        .route(
            "/api/admin/streaming/outbox/parked/{id}",
            delete(outbox::drop),
        )
        .route(
            "/api/admin/streaming/outbox/parked/{id}/retry",
            post(outbox::retry),
        )
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
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limits.max_body))
        // Outermost last: every answer becomes JSON, then the deadline, then the token check,
        // which runs before any extractor reads the path, the query or the body.
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(
            limits.request_timeout,
            deadline,
        ))
        .layer(middleware::from_fn(json_errors))
        .merge(face)
        .with_state(state)
}

async fn not_found(method: Method, uri: axum::http::Uri) -> AppError {
    AppError::NotFound(format!("no such endpoint: {method} {}", uri.path()))
}

/// Whether a request is for the Alertmanager receiver, which has its own token.
fn for_receiver(method: &Method, path: &str) -> bool {
    path == "/api/webhooks/alertmanager" || (path == "/api/alerts" && method == Method::POST)
}

/// Every `/api/` request needs a valid token (the receiver's, for the receiver) before anything
/// else about it is looked at; the role a route needs is checked by its handler.
async fn authenticate(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/api" || path.starts_with("/api/") {
        let checked = if for_receiver(req.method(), path) {
            s.receiver.check(req.headers()).inspect_err(|_| {
                s.metrics
                    .webhook_requests
                    .get_or_create(&OutcomeLabel {
                        outcome: "unauthorized".to_owned(),
                    })
                    .inc();
            })
        } else {
            s.tokens.authorize(req.headers(), Role::Viewer).map(drop)
        };
        if let Err(e) = checked {
            return e.into_response();
        }
    }
    next.run(req).await
}

/// A request that takes longer than `server.request_timeout` (its body read included) is
/// answered 503 and dropped where it is.
async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::warn!(%method, %path, ?limit, "Request timed out.");
            AppError::Unavailable(format!(
                "the request took longer than server.request_timeout ({}s); nothing more was done",
                limit.as_secs_f64()
            ))
            .into_response()
        }
    }
}

/// An error answer that is not JSON yet (a rejection's text, the router's empty 405, a body
/// limit's 413) becomes `{"error": {"status", "message"}}`, keeping its status and headers.
async fn json_errors(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // Rejections are a line or two; a longer text body is not one, and is not echoed.
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = match (text.is_empty(), status) {
        (false, _) => text,
        (true, StatusCode::METHOD_NOT_ALLOWED) => {
            format!("{method} is not allowed on {path} (the Allow header lists what is)")
        }
        (true, _) => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::json!({ "error": { "status": status.as_u16(), "message": message } });
    (parts, Json(body)).into_response()
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
///
/// Each connection speaks HTTP/1 with `limits.header_read_timeout` for its request headers (from
/// the moment it is accepted, and again while it idles between requests), and holds one of
/// `limits.max_connections` permits: while none is free, nothing more is accepted and new
/// clients wait in the listen backlog, so open file descriptors stay bounded.
///
/// # Errors
///
/// Never after it started: a failed `accept` (out of file descriptors, a connection reset in
/// the backlog) is logged and retried.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    limits: Limits,
    face: Router<Shared>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::{
        rt::{TokioIo, TokioTimer},
        server::graceful::GracefulShutdown,
        service::TowerToHyperService,
    };
    let app = router_with(state, &limits, face);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut at_cap = false;
    loop {
        // Said once each time the cap is reached, not once per client that waits.
        let full = permits.available_permits() == 0;
        if full && !at_cap {
            tracing::warn!(
                max_connections = limits.max_connections,
                "Connection cap reached; new clients wait in the listen backlog (server.max_connections)."
            );
        }
        at_cap = full;
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "Connection ended with an error.");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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
