//! The web console under `/ui`: the on-call engineer's view of runs (alert first), approvals with
//! their evidence, the queue and the DLQ, playbooks and alerts, served by `runbook serve` from the
//! same binary and router as the API.
//!
//! Server-rendered HTML (minijinja, autoescaped, templates embedded with `include_str!`), one
//! small script of our own for partial updates and the run page's event stream, one stylesheet
//! (dark mode follows the system). Sign-in takes an API token of `auth.tokens` and opens a
//! session kept in the store ([`session`]); every page and action checks the session's role on
//! the server, and what a role cannot do is not offered. Every answer carries a content security
//! policy that allows only this origin's script and style.

mod alerts;
mod approvals;
mod chart;
mod live;
mod pages;
mod playbooks;
mod queue;
mod runs;
pub mod sampler;
mod session;
#[cfg(test)]
mod tests;

use std::sync::LazyLock;

use axum::{
    extract::{DefaultBodyLimit, Request},
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
    Router,
};
use minijinja::Environment;
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use crate::server::{Limits, Shared};

pub use session::SESSION_COOKIE;

/// The content security policy of every console answer: this origin's script, style, images
/// and event stream only; no inline script or style, no framing, forms post only here.
pub const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes, all under `/ui` (not nested: a handler sees the whole path, which the
/// sign-in page sends the user back to). `shutdown` ends the live event streams, so a
/// server that stops is not held open by a browser watching a run.
pub fn router(limits: &Limits, shutdown: CancellationToken) -> Router<Shared> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/login", get(session::login_page).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/assets/console.js", get(script))
        .route("/ui/assets/console.css", get(stylesheet))
        .route("/ui/runs", get(runs::list))
        .route("/ui/runs/{id}", get(runs::show))
        .route("/ui/runs/{id}/timeline", get(live::timeline))
        .route("/ui/runs/{id}/events", get(live::events))
        .route("/ui/runs/{id}/approve", post(runs::approve))
        .route("/ui/runs/{id}/cancel", post(runs::cancel))
        .route(
            "/ui/runs/{id}/rerun",
            get(runs::rerun_form).post(runs::rerun),
        )
        .route("/ui/approvals", get(approvals::page))
        .route("/ui/queue", get(queue::page))
        .route("/ui/settings", post(queue::settings))
        .route("/ui/dlq", get(queue::dlq))
        .route("/ui/dlq/retry", post(queue::dlq_retry))
        .route("/ui/dlq/cleanup", post(queue::dlq_cleanup))
        .route("/ui/playbooks", get(playbooks::list))
        .route(
            "/ui/playbooks/match",
            get(playbooks::match_form).post(playbooks::matched),
        )
        .route("/ui/alerts", get(alerts::page))
        .route("/ui/pause", post(alerts::pause))
        .route("/ui/resume", post(alerts::resume))
        // Not `fallback`: the API's router has its own, and the two are merged.
        .route(
            "/ui/{*rest}",
            get(|| async { ConsoleError::NotFound("no such page".into()) }),
        )
        .layer(DefaultBodyLimit::max(limits.max_body))
        .layer(middleware::from_fn(security_headers))
        .layer(axum::Extension(Live(shutdown)))
}

/// The server's shutdown, for the event streams.
#[derive(Clone)]
pub(crate) struct Live(pub CancellationToken);

/// Every answer: the content security policy, no sniffing, no referrer beyond this origin, and
/// no caching of pages that show a session's data.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

const SCRIPT: &str = include_str!("static/console.js");
const STYLE: &str = include_str!("static/console.css");

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        SCRIPT,
    )
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        STYLE,
    )
}

/// Every template, by name (the names end in `.html`, so minijinja escapes every value).
pub(crate) const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("login.html", include_str!("templates/login.html")),
    ("error.html", include_str!("templates/error.html")),
    ("runs.html", include_str!("templates/runs.html")),
    ("run.html", include_str!("templates/run.html")),
    ("step.html", include_str!("templates/step.html")),
    ("rerun.html", include_str!("templates/rerun.html")),
    ("approvals.html", include_str!("templates/approvals.html")),
    ("queue.html", include_str!("templates/queue.html")),
    ("dlq.html", include_str!("templates/dlq.html")),
    ("confirm.html", include_str!("templates/confirm.html")),
    ("playbooks.html", include_str!("templates/playbooks.html")),
    ("match.html", include_str!("templates/match.html")),
    ("alerts.html", include_str!("templates/alerts.html")),
];

/// The templates, compiled once.
static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, text) in TEMPLATES {
        env.add_template(name, text)
            .unwrap_or_else(|e| panic!("console template {name}: {e:#}"));
    }
    env.add_filter("pretty", |v: minijinja::Value| -> String {
        let json: Json = serde_json::to_value(&v).unwrap_or(Json::Null);
        match json {
            Json::String(s) => s,
            other => serde_json::to_string_pretty(&other).unwrap_or_default(),
        }
    });
    // A value as JSON text (strings quoted), escaped like any text: bound values and arguments.
    env.add_filter("literal", |v: minijinja::Value| -> String {
        serde_json::to_value(&v).unwrap_or(Json::Null).to_string()
    });
    env.add_filter("cell", |v: minijinja::Value| -> String {
        let json: Json = serde_json::to_value(&v).unwrap_or(Json::Null);
        match json {
            Json::String(s) => s,
            Json::Null => String::new(),
            other => other.to_string(),
        }
    });
    env
});

/// Renders `name` with `ctx`.
///
/// # Errors
///
/// A template that fails to render (a bug, logged once as an internal error).
pub(crate) fn render(name: &str, ctx: minijinja::Value) -> Result<String, ConsoleError> {
    ENV.get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| ConsoleError::Internal(format!("template {name}: {e:#}")))
}

/// A whole page.
pub(crate) fn page(name: &str, ctx: minijinja::Value) -> Result<Response, ConsoleError> {
    Ok(Html(render(name, ctx)?).into_response())
}

/// Why a console request was not answered with its page: each becomes an HTML page with its
/// status (a request without a session goes to the sign-in page instead).
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No session, an expired one, or one whose token left the config: sign in (again).
    #[error("sign in to continue")]
    SignIn { next: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error")]
    Internal(String),
}

impl ConsoleError {
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        ConsoleError::Internal(e.to_string())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            ConsoleError::SignIn { next } => {
                // Only a path of this console goes into the sign-in page's link.
                let next = session::safe_next(next);
                let to = format!("/ui/login?next={}", crate::secrets::percent_encode(&next));
                return Redirect::to(&to).into_response();
            }
            ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Conflict(_) => StatusCode::CONFLICT,
            ConsoleError::Internal(detail) => {
                tracing::error!(error = %detail, "Console request failed.");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let ctx = minijinja::context! {
            title => status.canonical_reason().unwrap_or("error"),
            status => status.as_u16(),
            message => self.to_string(),
        };
        let body = ENV
            .get_template("error.html")
            .and_then(|t| t.render(ctx))
            .unwrap_or_else(|_| format!("{status}: {self}"));
        (status, Html(body)).into_response()
    }
}
