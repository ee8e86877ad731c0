//! Approvals: a card for each run waiting for a person, with what the approver needs to decide:
//! what the diagnosis found, the question, the changes that follow if approved (the following
//! steps rendered with the run's context when it stopped: SQL with its bound values, runtime ops
//! with their arguments; see `engine/preview.rs`), who asked, and when the wait times out.

use axum::{extract::State, response::Response};
use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use super::{
    page as html_page,
    pages::{base, found, with},
    session::Me,
    ConsoleError,
};
use crate::{
    playbook::Playbook,
    server::Shared,
    steps::StepKind,
    store::{runs, versions},
};

/// `GET /ui/approvals`.
pub async fn page_(s: &Shared, me: &Me) -> Result<Response, ConsoleError> {
    let store = &s.services.store;
    let waiting = crate::store::console::waiting_runs(store)
        .await
        .map_err(ConsoleError::internal)?;
    let catalog = s.engine.catalog();
    let mut cards = Vec::new();
    for w in waiting {
        let id = w["id"].as_i64().unwrap_or_default();
        let Some(run) = runs::get_run(store, id)
            .await
            .map_err(ConsoleError::internal)?
        else {
            continue;
        };
        let run = s.services.masker.mask_json(&run);
        let step_id = w["waiting_step"].as_str().unwrap_or_default().to_owned();
        let name = w["playbook"].as_str().unwrap_or_default();
        // The version the run runs, when it is kept; else the one served now.
        let text = match w["version"].as_str() {
            Some(hash) => versions::get(store, hash)
                .await
                .map_err(ConsoleError::internal)?
                .map(|v| v.text),
            None => None,
        }
        .or_else(|| catalog.versions.get(name).map(|v| v.text.clone()));
        let pb = catalog.get(name);
        // What the diagnosis found: every attempt so far that succeeded with something to show.
        let evidence: Vec<Json> = run["steps"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|a| a["status"] == "succeeded")
            .map(|a| json!({ "step": a["step_id"], "found": found(&a["output"]) }))
            .collect();
        let (question, timeout) = pb.map_or((None, None), |pb| ask(pb, &step_id));
        let since = last_activity(&run);
        let expires = match (since, timeout) {
            (Some(at), Some(t)) => chrono::Duration::from_std(t)
                .ok()
                .map(|d| (at + d).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            _ => None,
        };
        // The following steps as rendered when the run stopped here; a run that stopped before
        // they were kept shows their source text instead.
        let rendered = run.get("waiting_changes").cloned().unwrap_or(Json::Null);
        let changes = match &rendered {
            Json::Null => pb
                .map(|pb| changes_after(pb, &step_id, text.as_deref()))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        cards.push(json!({
            "id": id, "playbook": name, "step": step_id, "trigger": run["trigger"],
            "question": question, "evidence": evidence, "changes": changes, "rendered": rendered,
            "expires": expires, "created_at": run["created_at"],
        }));
    }
    html_page(
        "approvals.html",
        with(
            base(me, "approvals", "Approvals"),
            minijinja::context! { cards },
        ),
    )
}

pub async fn page(State(s): State<Shared>, me: Me) -> Result<Response, ConsoleError> {
    page_(&s, &me).await
}

/// The `approve` step's question (as written) and its timeout.
fn ask(pb: &Playbook, step_id: &str) -> (Option<String>, Option<std::time::Duration>) {
    pb.steps
        .iter()
        .find(|s| s.id == step_id)
        .and_then(|s| match &s.kind {
            StepKind::Approve(a) => Some((Some(a.text.clone()), Some(a.timeout.as_std()))),
            _ => None,
        })
        .unwrap_or((None, None))
}

/// When the run last did something: the end of its latest attempt, else its start.
fn last_activity(run: &Json) -> Option<DateTime<Utc>> {
    let parse = |v: &Json| {
        v.as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let latest = run["steps"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|a| {
            parse(&a["started_at"])
                .map(|t| t + chrono::Duration::milliseconds(a["duration_ms"].as_i64().unwrap_or(0)))
        });
    latest.or_else(|| parse(&run["started_at"]))
}

/// The steps after `step_id` that change things, each with its kind and its text in the
/// playbook's source (templates are rendered when the step runs, on what the run found).
fn changes_after(pb: &Playbook, step_id: &str, text: Option<&str>) -> Vec<Json> {
    let Some(at) = pb.steps.iter().position(|s| s.id == step_id) else {
        return Vec::new();
    };
    pb.steps[at + 1..]
        .iter()
        .filter(|s| !s.kind.is_read())
        .map(|s| {
            json!({
                "id": s.id, "kind": s.kind.name(), "when": s.when,
                "source": text.and_then(|t| step_source(t, &s.id)),
            })
        })
        .collect()
}

/// The lines of step `id` in a playbook's YAML: from its `- id: <id>` line to the next item at
/// the same indentation (or a line indented less).
fn step_source(text: &str, id: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| {
        let t = l.trim_start();
        t.strip_prefix("- id:")
            .is_some_and(|rest| rest.trim().trim_matches(['"', '\'']) == id)
    })?;
    let indent = lines[start].len() - lines[start].trim_start().len();
    let end = lines[start + 1..]
        .iter()
        .position(|l| {
            let t = l.trim_start();
            let i = l.len() - t.len();
            !t.is_empty() && (i < indent || (i == indent && t.starts_with('-')))
        })
        .map_or(lines.len(), |p| start + 1 + p);
    Some(lines[start..end].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steps_source_runs_to_the_next_step() {
        let text = "steps:\n  - id: a\n    sql: SELECT 1\n  - id: b\n    runtime:\n      op: dlq_retry\n  - id: c\n    wait: 1s\non_failure: []\n";
        assert_eq!(
            step_source(text, "b").unwrap(),
            "  - id: b\n    runtime:\n      op: dlq_retry"
        );
        assert_eq!(step_source(text, "c").unwrap(), "  - id: c\n    wait: 1s");
        assert_eq!(step_source(text, "zz"), None);
    }
}
