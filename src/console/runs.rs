//! Runs: the list (filters kept in the URL, newest first), the run page (the alert first, then
//! the steps as a timeline, kept live by [`super::live`]), and the actions on a run: approve or
//! reject, cancel, re-run with its recorded inputs.

use std::collections::BTreeMap;

use axum::{
    extract::{Path, Query, State},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::{
    live::step_html,
    page,
    pages::{base, found, with},
    session::{Form, Me},
    ConsoleError,
};
use crate::{
    duration::Dur,
    engine::RunRequest,
    process::runs as runs_process,
    server::{Role, Shared},
    status::RunStatus,
    store::{console as records, runs},
};

/// Runs a page of the list shows.
const PAGE: i64 = 50;

/// The runs page's filters, as the URL carries them (empty fields filter nothing).
#[derive(Debug, Default, Deserialize)]
pub struct RunsQuery {
    playbook: Option<String>,
    status: Option<String>,
    trigger: Option<String>,
    alertname: Option<String>,
    /// A duration: runs created within it (`1h`, `24h`, `7d`).
    since: Option<String>,
    before: Option<i64>,
}

fn blank(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The store's filter from the URL's, each checked.
fn filter(q: &RunsQuery) -> Result<records::RunFilter, ConsoleError> {
    let status = blank(&q.status);
    if let Some(st) = &status {
        st.parse::<RunStatus>()
            .map_err(|e| ConsoleError::BadRequest(format!("status: {e}")))?;
    }
    let since = blank(&q.since)
        .map(|s| {
            s.parse::<Dur>()
                .map_err(|e| ConsoleError::BadRequest(format!("since: {e}")))
        })
        .transpose()?;
    Ok(records::RunFilter {
        playbook: blank(&q.playbook),
        status,
        trigger: blank(&q.trigger),
        alertname: blank(&q.alertname),
        since,
        before_id: q.before,
    })
}

/// `GET /ui/runs`.
pub async fn list(
    State(s): State<Shared>,
    me: Me,
    q: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ConsoleError> {
    let Query(q) = q.map_err(|e| ConsoleError::BadRequest(e.body_text()))?;
    let f = filter(&q)?;
    let rows = records::runs(&s.services.store, &f, PAGE)
        .await
        .map_err(ConsoleError::internal)?;
    let older = (rows.len() as i64 == PAGE)
        .then(|| rows.last().and_then(|r| r["id"].as_i64()))
        .flatten();
    // The next page's link keeps every filter.
    let mut keep: Vec<(&str, String)> = [
        ("playbook", &f.playbook),
        ("status", &f.status),
        ("trigger", &f.trigger),
        ("alertname", &f.alertname),
        ("since", &blank(&q.since)),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
    .collect();
    let next = older.map(|id| {
        keep.push(("before", id.to_string()));
        keep.iter()
            .map(|(k, v)| format!("{k}={}", crate::secrets::percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    });
    let playbooks: Vec<String> = s.engine.catalog().playbooks.keys().cloned().collect();
    let statuses: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
    page(
        "runs.html",
        with(
            base(&me, "runs", "Runs"),
            minijinja::context! {
                runs => s.services.masker.mask_json(&Json::Array(rows)),
                playbooks, statuses,
                triggers => ["alert", "schedule", "api", "cli", "playbook", "command"],
                f => minijinja::context! {
                    playbook => f.playbook, status => f.status, trigger => f.trigger,
                    alertname => f.alertname, since => blank(&q.since),
                },
                next,
            },
        ),
    )
}

/// A run's record for the page: masked, with each attempt shaped for the timeline.
pub(super) async fn record(s: &Shared, id: i64) -> Result<Json, ConsoleError> {
    let run = runs::get_run(&s.services.store, id)
        .await
        .map_err(ConsoleError::internal)?
        .ok_or_else(|| ConsoleError::NotFound(format!("no run {id}")))?;
    let mut run = s.services.masker.mask_json(&run);
    if let Some(steps) = run["steps"].as_array_mut() {
        for (n, a) in steps.iter_mut().enumerate() {
            a["n"] = json!(n + 1);
            a["found"] = found(&a["output"]);
        }
    }
    Ok(run)
}

pub(super) fn status_of(run: &Json) -> Option<RunStatus> {
    run["status"].as_str().and_then(|s| s.parse().ok())
}

/// `GET /ui/runs/{id}`.
pub async fn show(
    State(s): State<Shared>,
    me: Me,
    Path(id): Path<i64>,
) -> Result<Response, ConsoleError> {
    let run = record(&s, id).await?;
    let store = &s.services.store;
    let trigger = &run["trigger"];
    let (alert, others) = if trigger["kind"] == "alert" {
        let fp = trigger["fingerprint"].as_str().unwrap_or_default();
        let starts = trigger["starts_at"].as_str().unwrap_or_default();
        let alert = records::alert(store, fp, starts)
            .await
            .map_err(ConsoleError::internal)?;
        let others = records::runs_of_fingerprint(store, fp, id, 20)
            .await
            .map_err(ConsoleError::internal)?;
        (alert.map(|a| s.services.masker.mask_json(&a)), others)
    } else {
        (None, Vec::new())
    };
    let silence = alert.as_ref().and_then(|a| {
        silence_link(
            s.services
                .config
                .alertmanager
                .as_ref()
                .map(|e| e.url.as_str()),
            a,
        )
    });
    // Only a web address becomes a link (a `javascript:` generatorURL stays text).
    let generator = alert
        .as_ref()
        .and_then(|a| a["generator_url"].as_str())
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .map(str::to_owned);
    let steps: Vec<String> = run["steps"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|a| step_html(&me, &run, a))
        .collect::<Result<_, _>>()?;
    let status = status_of(&run);
    page(
        "run.html",
        with(
            base(&me, "runs", &format!("Run {id}")),
            minijinja::context! {
                run, alert, others, silence, steps, generator,
                live => status.is_some_and(|st| !st.is_final()),
                cancellable => status.is_some_and(RunStatus::is_cancellable),
                waiting => status == Some(RunStatus::WaitingApproval),
            },
        ),
    )
}

/// Alertmanager's "new silence" page, filled with the alert's labels as matchers.
fn silence_link(alertmanager: Option<&str>, alert: &Json) -> Option<String> {
    let base = alertmanager?.trim_end_matches('/');
    let labels = alert["labels"].as_object()?;
    let matchers: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or_default()))
        .collect();
    let filter = format!("{{{}}}", matchers.join(","));
    Some(format!(
        "{base}/#/silences/new?filter={}",
        crate::secrets::percent_encode(&filter)
    ))
}

/// `POST /ui/runs/{id}/approve` (operator): `decision=approve|reject`, `comment`.
pub async fn approve(
    State(s): State<Shared>,
    me: Me,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Result<Response, ConsoleError> {
    let form = Form::parse(&body)?;
    me.check_csrf(&form)?;
    me.need(Role::Operator)?;
    let approve = match form.get("decision") {
        Some("approve") => true,
        Some("reject") => false,
        other => {
            return Err(ConsoleError::BadRequest(format!(
                "decision: `{}` is neither approve nor reject",
                other.unwrap_or_default()
            )))
        }
    };
    let comment = form.text("comment");
    match runs::decide(
        &s.services.store,
        id,
        approve,
        &me.actor(),
        comment.as_deref(),
    )
    .await
    {
        Ok(step) => {
            tracing::info!(run_id = id, %step, approve, actor = %me.actor(), "Approval answered from the console.");
        }
        Err(runs::DecideError::NoRun(_)) => {
            return Err(ConsoleError::NotFound(format!("no run {id}")))
        }
        Err(runs::DecideError::Db(e)) => return Err(ConsoleError::internal(e)),
        Err(e) => return Err(ConsoleError::Conflict(e.to_string())),
    }
    let back = super::session::safe_next(form.get("back").unwrap_or_default());
    let back = if back == "/ui/runs" {
        format!("/ui/runs/{id}")
    } else {
        back
    };
    Ok(Redirect::to(&back).into_response())
}

/// `POST /ui/runs/{id}/cancel` (operator).
pub async fn cancel(
    State(s): State<Shared>,
    me: Me,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Result<Response, ConsoleError> {
    me.check_csrf(&Form::parse(&body)?)?;
    me.need(Role::Operator)?;
    let actor = me.actor();
    match runs::cancel(&s.services.store, id, &actor).await {
        Ok(()) => {}
        Err(runs::CancelError::NoRun(_)) => {
            return Err(ConsoleError::NotFound(format!("no run {id}")))
        }
        Err(e @ runs::CancelError::NotRunning(..)) => {
            return Err(ConsoleError::Conflict(e.to_string()))
        }
        Err(runs::CancelError::Db(e)) => return Err(ConsoleError::internal(e)),
    }
    s.engine.cancel_here(id, &format!("cancelled by {actor}"));
    tracing::info!(run_id = id, %actor, "Run cancel requested from the console.");
    Ok(Redirect::to(&format!("/ui/runs/{id}")).into_response())
}

/// The recorded params of run `id` as text, and its playbook.
async fn inputs(
    s: &Shared,
    id: i64,
) -> Result<(String, Option<String>, BTreeMap<String, String>), ConsoleError> {
    let run = records::run_inputs(&s.services.store, id)
        .await
        .map_err(ConsoleError::internal)?
        .ok_or_else(|| ConsoleError::NotFound(format!("no run {id}")))?;
    let params = run["params"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            (k.clone(), text)
        })
        .collect();
    Ok((
        run["playbook"].as_str().unwrap_or_default().to_owned(),
        run["version"].as_str().map(str::to_owned),
        params,
    ))
}

/// `GET /ui/runs/{id}/rerun` (operator): the form, with the recorded inputs to edit.
pub async fn rerun_form(
    State(s): State<Shared>,
    me: Me,
    Path(id): Path<i64>,
) -> Result<Response, ConsoleError> {
    me.need(Role::Operator)?;
    let (playbook, version, params) = inputs(&s, id).await?;
    let catalog = s.engine.catalog();
    let pb = catalog.get(&playbook).ok_or_else(|| {
        ConsoleError::NotFound(format!("playbook `{playbook}` is not served now"))
    })?;
    let current = catalog.versions.get(&playbook).map(|v| v.hash.clone());
    let changed = version.is_some() && current.is_some() && version != current;
    // Every declared param, with the recorded value (or the default) to edit.
    let fields: Vec<Json> = pb
        .params
        .iter()
        .map(|p| {
            let value = params.get(&p.name).cloned().or_else(|| {
                p.default
                    .as_ref()
                    .map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_owned))
            });
            json!({ "name": p.name, "type": p.ty, "value": value })
        })
        .collect();
    page(
        "rerun.html",
        with(
            base(&me, "runs", &format!("Re-run {id}")),
            minijinja::context! { id, playbook, fields, changed },
        ),
    )
}

/// `POST /ui/runs/{id}/rerun` (operator): a new run of the same playbook with the form's params,
/// admitted under its guards and the pause like any other start; its trigger records
/// `rerun_of` and whether the playbook changed since.
pub async fn rerun(
    State(s): State<Shared>,
    me: Me,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Result<Response, ConsoleError> {
    let form = Form::parse(&body)?;
    me.check_csrf(&form)?;
    me.need(Role::Operator)?;
    let (playbook, version, _) = inputs(&s, id).await?;
    let catalog = s.engine.catalog();
    let pb = catalog.get(&playbook).ok_or_else(|| {
        ConsoleError::NotFound(format!("playbook `{playbook}` is not served now"))
    })?;
    let params: BTreeMap<String, String> = form
        .0
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("param.").map(|k| (k.to_owned(), v.clone())))
        .collect();
    crate::playbook::resolve_params(&pb.params, &params).map_err(|e| {
        let problems: Vec<String> = e.0.iter().map(ToString::to_string).collect();
        ConsoleError::BadRequest(problems.join("; "))
    })?;
    let current = catalog.versions.get(&playbook).map(|v| v.hash.clone());
    let mut req = RunRequest {
        playbook: pb.name.clone(),
        params,
        trigger: json!({
            "kind": "api", "by": me.principal.name, "via": "console", "rerun_of": id,
            "playbook_changed": version.is_some() && current.is_some() && version != current,
        }),
        ..Default::default()
    };
    s.engine
        .pin(&mut req)
        .await
        .map_err(ConsoleError::internal)?;
    let admit = runs_process::Admit {
        req: &req,
        priority: 3,
        alert: None,
        queue: true,
        forced_by: None,
        now: chrono::Utc::now(),
    };
    let admission = runs_process::admit(&s.services, pb, &admit)
        .await
        .map_err(ConsoleError::internal)?;
    runs_process::note(&s.metrics, &pb.name, &admission);
    tracing::info!(rerun_of = id, run_id = admission.run_id(), actor = %me.actor(), "Re-run from the console.");
    Ok(Redirect::to(&format!("/ui/runs/{}", admission.run_id())).into_response())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn the_silence_link_carries_every_label_as_a_matcher() {
        let alert = json!({ "labels": { "alertname": "QueueDepthHigh", "severity": "critical" } });
        let link = silence_link(Some("http://am:9093/"), &alert).unwrap();
        assert!(
            link.starts_with("http://am:9093/#/silences/new?filter="),
            "{link}"
        );
        assert!(link.contains("QueueDepthHigh"), "{link}");
        assert_eq!(silence_link(None, &alert), None);
    }

    #[test]
    fn a_bad_filter_is_named() {
        let q = RunsQuery {
            status: Some("nope".into()),
            ..Default::default()
        };
        let e = filter(&q).unwrap_err().to_string();
        assert!(e.starts_with("status: "), "{e}");
        let q = RunsQuery {
            since: Some("soon".into()),
            ..Default::default()
        };
        assert!(filter(&q).unwrap_err().to_string().starts_with("since: "));
    }
}
