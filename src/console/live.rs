//! A run page's live view: the timeline entries as HTML fragments, over server-sent events with
//! a resume point (the event id is the number of entries the page holds; a reconnect's
//! `Last-Event-ID` picks up there), or polled when a proxy mutes the stream.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::{Path, Query, State},
    http::HeaderMap,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Extension,
};
use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::{
    render,
    runs::{record, status_of},
    session::Me,
    ConsoleError, Live,
};
use crate::{server::Shared, status::RunStatus, store::console as records};

/// How often the event stream reads the run's status.
const STREAM_EVERY: Duration = Duration::from_millis(500);
/// A `ping` event this often, so the page can tell a live stream from a muted one.
const PING_EVERY: Duration = Duration::from_secs(5);

/// One attempt of the timeline, as HTML.
pub(super) fn step_html(me: &Me, run: &Json, attempt: &Json) -> Result<String, ConsoleError> {
    render(
        "step.html",
        minijinja::context! { me => me.view(), run, a => attempt },
    )
}

/// The timeline entries after the first `after`: `{n, html}` each.
fn entries(me: &Me, run: &Json, after: usize) -> Result<Vec<Json>, ConsoleError> {
    run["steps"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .skip(after)
        .map(|a| Ok(json!({ "n": a["n"], "html": step_html(me, run, a)? })))
        .collect()
}

#[derive(Deserialize)]
pub struct After {
    after: Option<usize>,
}

/// `GET /ui/runs/{id}/timeline?after=N`: the entries after the first N, the status and whether
/// the run has ended (the page's polling, when its event stream is muted).
pub async fn timeline(
    State(s): State<Shared>,
    me: Me,
    Path(id): Path<i64>,
    Query(q): Query<After>,
) -> Result<axum::Json<Json>, ConsoleError> {
    let run = record(&s, id).await?;
    Ok(axum::Json(update(&me, &run, q.after.unwrap_or(0))?))
}

/// The update the page applies: new entries, the status, and `ended`.
fn update(me: &Me, run: &Json, after: usize) -> Result<Json, ConsoleError> {
    let status = status_of(run);
    Ok(json!({
        "entries": entries(me, run, after)?,
        "status": run["status"],
        "ended": status.is_none_or(RunStatus::is_final),
    }))
}

/// `GET /ui/runs/{id}/events`: server-sent events while the run goes. Each event's id is the
/// number of timeline entries the page holds after it, so a reconnect (`Last-Event-ID`) picks up
/// where the stream was cut; `ping` every few seconds; `end` when the run ended (the page then
/// reloads the whole run, which reconciles anything it missed).
pub async fn events(
    State(s): State<Shared>,
    me: Me,
    Path(id): Path<i64>,
    Extension(live): Extension<Live>,
    Query(q): Query<After>,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    // The run must exist before the stream opens.
    record(&s, id).await?;
    // A reconnect's `Last-Event-ID` wins over the page's first `after`.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .or(q.after)
        .unwrap_or(0);
    struct Cursor {
        s: Shared,
        me: Me,
        seen: usize,
        status: Option<String>,
        done: bool,
        last_ping: std::time::Instant,
        live: Live,
    }
    let start = Cursor {
        s,
        me,
        seen: resume,
        status: None,
        done: false,
        last_ping: std::time::Instant::now(),
        live,
    };
    let stream = futures::stream::unfold(start, move |mut c| async move {
        loop {
            if c.done || c.live.0.is_cancelled() {
                return None;
            }
            // The status and the count first; the whole run only when one of them moved.
            let (status, total) = match records::progress(&c.s.services.store, id).await {
                Ok(Some((status, n))) => (Some(status), usize::try_from(n).unwrap_or(0)),
                Ok(None) => {
                    c.done = true;
                    let ev = Event::default().event("error").data(format!("no run {id}"));
                    return Some((Ok::<Event, Infallible>(ev), c));
                }
                Err(e) => {
                    tracing::warn!(run_id = id, error = %e, "Reading a run for its event stream failed.");
                    c.done = true;
                    let ev = Event::default()
                        .event("error")
                        .data("the store could not be read");
                    return Some((Ok(ev), c));
                }
            };
            let ended = status
                .as_deref()
                .and_then(|s| s.parse::<RunStatus>().ok())
                .is_none_or(RunStatus::is_final);
            if total > c.seen || status != c.status {
                let Ok(run) = record(&c.s, id).await else {
                    c.done = true;
                    continue;
                };
                let total = run["steps"].as_array().map_or(0, Vec::len);
                let status = run["status"].as_str().map(str::to_owned);
                let Ok(up) = update(&c.me, &run, c.seen) else {
                    c.done = true;
                    continue;
                };
                c.seen = total.max(c.seen);
                c.status = status;
                let ev = Event::default()
                    .event("update")
                    .id(c.seen.to_string())
                    .data(up.to_string());
                return Some((Ok(ev), c));
            }
            if ended {
                c.done = true;
                let ev = Event::default()
                    .event("end")
                    .id(c.seen.to_string())
                    .data("{}");
                return Some((Ok(ev), c));
            }
            if c.last_ping.elapsed() >= PING_EVERY {
                c.last_ping = std::time::Instant::now();
                return Some((Ok(Event::default().event("ping").data("{}")), c));
            }
            tokio::select! {
                () = tokio::time::sleep(STREAM_EVERY) => {}
                () = c.live.0.cancelled() => return None,
            }
        }
    });
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Proxies that buffer (nginx) pass an event stream through at once with this.
    resp.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    Ok(resp)
}
