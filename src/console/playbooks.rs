//! Playbooks: each with its triggers (alert matchers, the schedule with its next fire times and
//! last tick), its validation state with `path:line:col` errors, and the "which playbooks would
//! this alert start?" page, which plans each matched playbook (`runbook run --plan`: the reads
//! run, changes are only shown, nothing is changed).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use axum::{extract::State, response::Response};
use serde_json::{json, Value as Json};

use super::{
    page,
    pages::{base, with},
    session::{Form, Me},
    ConsoleError,
};
use crate::{
    engine::{Observer, RunMode, RunRequest, StepEvent},
    playbook::LabelMatcher,
    server::{Role, Shared},
    store::ticks,
};

/// A matcher as Alertmanager writes it.
fn matcher_text(m: &LabelMatcher) -> String {
    let unanchored = |r: &regex::Regex| {
        let s = r.as_str();
        s.strip_prefix("^(?:")
            .and_then(|s| s.strip_suffix(")$"))
            .unwrap_or(s)
            .to_owned()
    };
    match m {
        LabelMatcher::Eq(n, v) => format!("{n}=\"{v}\""),
        LabelMatcher::Ne(n, v) => format!("{n}!=\"{v}\""),
        LabelMatcher::Re(n, r) => format!("{n}=~\"{}\"", unanchored(r)),
        LabelMatcher::NotRe(n, r) => format!("{n}!~\"{}\"", unanchored(r)),
    }
}

/// `GET /ui/playbooks` (viewer).
pub async fn list(State(s): State<Shared>, me: Me) -> Result<Response, ConsoleError> {
    let catalog = s.engine.catalog();
    let problems = s.engine.problems();
    let names: Vec<String> = catalog.playbooks.keys().cloned().collect();
    let last = ticks::latest(&s.services.store, &names)
        .await
        .map_err(ConsoleError::internal)?;
    let now = chrono::Utc::now();
    let mut list: Vec<Json> = catalog
        .playbooks
        .values()
        .map(|p| {
            let errors: Vec<String> = problems
                .iter()
                .filter(|d| d.path == p.path)
                .map(ToString::to_string)
                .collect();
            let alerts: Vec<String> = p
                .triggers
                .alerts
                .iter()
                .map(|a| {
                    a.matchers
                        .iter()
                        .map(matcher_text)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .collect();
            let schedule = p.triggers.schedule.as_ref().map(|sc| {
                json!({
                    "expr": sc.expr, "tz": sc.tz.name(),
                    "next": sc.upcoming(now, 3).iter().map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).collect::<Vec<_>>(),
                    "last": last.get(&p.name).map(|t| json!({ "at": t.scheduled_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "outcome": t.outcome.as_str() })),
                })
            });
            json!({
                "name": p.name, "description": p.description, "path": p.path,
                "alerts": alerts, "schedule": schedule, "errors": errors,
                "changes_things": p.changes_things,
                "version": catalog.versions.get(&p.name).map(|v| v.hash.chars().take(12).collect::<String>()),
            })
        })
        .collect();
    // Files that never loaded: their problems only.
    let mut unloaded: Vec<&std::path::Path> = problems
        .iter()
        .map(|d| d.path.as_path())
        .filter(|path| !catalog.playbooks.values().any(|p| p.path == *path))
        .collect();
    unloaded.dedup();
    for path in unloaded {
        let errors: Vec<String> = problems
            .iter()
            .filter(|d| d.path == path)
            .map(ToString::to_string)
            .collect();
        list.push(json!({ "name": path.file_stem().map(|s| s.to_string_lossy().into_owned()), "path": path, "errors": errors, "unloaded": true }));
    }
    page(
        "playbooks.html",
        with(
            base(&me, "playbooks", "Playbooks"),
            minijinja::context! { playbooks => list },
        ),
    )
}

/// `GET /ui/playbooks/match` (operator: the plans' reads reach the datasources).
pub async fn match_form(State(_s): State<Shared>, me: Me) -> Result<Response, ConsoleError> {
    me.need(Role::Operator)?;
    page(
        "match.html",
        with(
            base(&me, "playbooks", "Which playbooks would this alert start?"),
            minijinja::context! { labels => "alertname=\nseverity=critical", results => Json::Null },
        ),
    )
}

/// The labels of the form: `name=value` a line, or a JSON object (an alert's `labels`, or a
/// whole alert with `labels`).
fn labels(text: &str) -> Result<BTreeMap<String, String>, ConsoleError> {
    let text = text.trim();
    if text.starts_with('{') {
        let v: Json = serde_json::from_str(text)
            .map_err(|e| ConsoleError::BadRequest(format!("labels: not JSON: {e}")))?;
        let obj = v.get("labels").unwrap_or(&v);
        let map = obj
            .as_object()
            .ok_or_else(|| ConsoleError::BadRequest("labels: give an object of labels".into()))?;
        return Ok(map
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect());
    }
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| {
            ConsoleError::BadRequest(format!(
                "labels: line {}: `{line}` is not name=value",
                i + 1
            ))
        })?;
        let v = v.trim().trim_matches('"');
        out.insert(k.trim().to_owned(), v.to_owned());
    }
    Ok(out)
}

/// Collects a plan's entries.
#[derive(Default)]
struct Collect(Mutex<Vec<Json>>);

impl Observer for Collect {
    fn step_event(&self, e: &StepEvent) {
        if let Some(note) = &e.plan {
            if let Ok(mut v) = self.0.lock() {
                v.push(json!({ "step": e.step, "kind": e.kind, "depth": e.depth, "note": note }));
            }
        }
    }
}

/// `POST /ui/playbooks/match` (operator): the playbooks the labels would start, each planned.
pub async fn matched(
    State(s): State<Shared>,
    me: Me,
    body: axum::body::Bytes,
) -> Result<Response, ConsoleError> {
    let form = Form::parse(&body)?;
    me.check_csrf(&form)?;
    me.need(Role::Operator)?;
    let text = form.get("labels").unwrap_or_default().to_owned();
    let labels = labels(&text)?;
    if labels.is_empty() {
        return Err(ConsoleError::BadRequest(
            "labels: give at least one label".into(),
        ));
    }
    let catalog = s.engine.catalog();
    let names: Vec<String> = catalog.matching(&labels).map(|p| p.name.clone()).collect();
    let alert = json!({
        "status": "firing", "labels": labels, "annotations": {},
        "startsAt": chrono::Utc::now().to_rfc3339(), "fingerprint": "console-plan",
        "generatorURL": "",
    });
    let mut results = Vec::new();
    for name in names {
        let observer = Arc::new(Collect::default());
        let mut req = RunRequest {
            playbook: name.clone(),
            trigger: json!({ "kind": "api", "by": me.principal.name, "via": "console", "plan": true }),
            alert: Some(alert.clone()),
            alerts: vec![alert.clone()],
            mode: RunMode::Plan,
            ..Default::default()
        };
        s.engine
            .pin(&mut req)
            .await
            .map_err(ConsoleError::internal)?;
        let outcome = s.engine.run(req, observer.clone()).await;
        let entries = observer.0.lock().map(|v| v.clone()).unwrap_or_default();
        let (status, error, run_id) = match outcome {
            Ok(o) => (o.status.to_string(), o.error, Some(o.run_id)),
            Err(e) => ("not started".to_owned(), Some(e.to_string()), None),
        };
        results.push(s.services.masker.mask_json(&json!({
            "playbook": name, "status": status, "error": error, "run_id": run_id, "entries": entries,
        })));
    }
    page(
        "match.html",
        with(
            base(&me, "playbooks", "Which playbooks would this alert start?"),
            minijinja::context! { labels => text, results, parsed => labels },
        ),
    )
}
