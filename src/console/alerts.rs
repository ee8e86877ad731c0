//! Alerts: the notifications received, each alert matched or not, with the runs it started or
//! why not (guard, duplicate, pause); the global pause and resume (operator).

use axum::{
    extract::{Query, State},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;

use super::{
    page as html_page,
    pages::{base, with},
    session::{Form, Me},
    ConsoleError,
};
use crate::{
    server::{Role, Shared},
    store::{alerts, console as records, pause},
};

#[derive(Debug, Default, Deserialize)]
pub struct AlertsQuery {
    status: Option<String>,
    /// `true`: only alerts no playbook matched; `false`: only matched ones.
    unmatched: Option<String>,
}

/// `GET /ui/alerts` (viewer).
pub async fn page_(s: &Shared, me: &Me, q: AlertsQuery) -> Result<Response, ConsoleError> {
    let status = q.status.filter(|v| !v.is_empty());
    if let Some(st) = status
        .as_deref()
        .filter(|st| !matches!(*st, "firing" | "resolved"))
    {
        return Err(ConsoleError::BadRequest(format!(
            "status: `{st}` is neither firing nor resolved"
        )));
    }
    let unmatched = match q.unmatched.as_deref() {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(ConsoleError::BadRequest(format!(
                "unmatched: `{other}` is neither true nor false"
            )))
        }
    };
    let store = &s.services.store;
    let rows = alerts::list(store, status.as_deref(), unmatched, 100)
        .await
        .map_err(ConsoleError::internal)?;
    let notes = records::notifications(store, 30)
        .await
        .map_err(ConsoleError::internal)?;
    let paused = pause::get(store).await.map_err(ConsoleError::internal)?;
    let masker = &s.services.masker;
    html_page(
        "alerts.html",
        with(
            base(me, "alerts", "Alerts"),
            minijinja::context! {
                alerts => masker.mask_json(&serde_json::Value::Array(rows)),
                notifications => masker.mask_json(&serde_json::Value::Array(notes)),
                paused => paused.map(|p| minijinja::context! { reason => p.reason, by => p.by, since => p.since }),
                status, unmatched => q.unmatched,
            },
        ),
    )
}

pub async fn page(
    State(s): State<Shared>,
    me: Me,
    q: Result<Query<AlertsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ConsoleError> {
    let Query(q) = q.map_err(|e| ConsoleError::BadRequest(e.body_text()))?;
    page_(&s, &me, q).await
}

/// `POST /ui/pause` (operator): holds every new run that changes things.
pub async fn pause(
    State(s): State<Shared>,
    me: Me,
    body: axum::body::Bytes,
) -> Result<Response, ConsoleError> {
    let form = Form::parse(&body)?;
    me.check_csrf(&form)?;
    me.need(Role::Operator)?;
    let reason = form
        .text("reason")
        .unwrap_or_else(|| "paused from the console".into());
    let paused = pause::pause(&s.services.store, &reason, &me.actor(), chrono::Utc::now())
        .await
        .map_err(ConsoleError::internal)?;
    tracing::warn!(reason = %paused.reason, by = %paused.by, "Runs paused.");
    Ok(Redirect::to("/ui/alerts").into_response())
}

/// `POST /ui/resume` (operator): ends the pause.
pub async fn resume(
    State(s): State<Shared>,
    me: Me,
    body: axum::body::Bytes,
) -> Result<Response, ConsoleError> {
    me.check_csrf(&Form::parse(&body)?)?;
    me.need(Role::Operator)?;
    pause::resume(&s.services.store, &me.actor())
        .await
        .map_err(ConsoleError::internal)?;
    tracing::warn!(by = %me.actor(), "Runs resumed.");
    Ok(Redirect::to("/ui/alerts").into_response())
}
