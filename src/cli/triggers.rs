//! Commands about what starts runs: `pause`, `resume`, `status`, `alert fire`, and the admission
//! of `runbook run` under its playbook's guards.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use serde_json::{json, Value as Json};

use super::{
    actor,
    args::Format,
    output::{errln, outln},
    parse_params, AlertCommand, Setup, EXIT_FAILED,
};
use crate::{
    engine::{Engine, RunRequest},
    process::runs::{self, Admission, Admit},
    server::{
        admin_open_counts,
        receiver::{fingerprint, Alert, AlertStatus, Notification},
    },
    store::{alerts, guards, pause as store_pause, runs as store_runs},
};

/// Admits a `runbook run` under its playbook's guards and the pause (or past them with
/// `--force`, audited): the id of its `queued` record, now running, or the exit code when held.
pub(super) async fn admit_cli(
    engine: &Engine,
    req: &RunRequest,
    force: bool,
) -> Result<std::result::Result<i64, i32>> {
    let catalog = engine.catalog();
    let pb = catalog
        .get(&req.playbook)
        .with_context(|| format!("unknown playbook `{}`", req.playbook))?;
    let who = actor();
    let admit = Admit {
        req,
        priority: runs::priority_for(None),
        alert: None,
        queue: false,
        forced_by: force.then_some(who.as_str()),
        now: Utc::now(),
    };
    let store = &engine.services().store;
    match runs::admit(engine.services(), pb, &admit).await? {
        Admission::Queued { run_id, .. } => {
            store_runs::start_queued(store, run_id).await?;
            Ok(Ok(run_id))
        }
        Admission::Skipped { run_id, reason, .. } => {
            errln!("run {run_id} of {} skipped: {reason}", pb.name);
            errln!(
                "(`runbook run {} --force` starts it anyway, with an audit record)",
                pb.name
            );
            Ok(Err(EXIT_FAILED))
        }
        Admission::Duplicate { run_id } => bail!("run {run_id} is already recorded"),
    }
}

pub(super) async fn pause(setup: &Setup, reason: &str) -> Result<i32> {
    let db = setup.store().await?;
    let p = store_pause::pause(&db, reason, &actor(), Utc::now()).await?;
    outln!("paused since {} by {}: {}", p.since, p.by, p.reason);
    outln!("runs that change things are recorded as skipped until `runbook resume`; read-only playbooks still run");
    db.close().await;
    Ok(0)
}

pub(super) async fn resume(setup: &Setup) -> Result<i32> {
    let db = setup.store().await?;
    let was = store_pause::resume(&db, &actor()).await?;
    outln!(
        "{}",
        if was {
            "resumed: runs start again"
        } else {
            "not paused"
        }
    );
    db.close().await;
    Ok(0)
}

pub(super) async fn status(setup: &Setup, format: Format) -> Result<i32> {
    let db = setup.existing_store().await?;
    let paused = store_pause::get(&db).await?;
    let open = admin_open_counts(&guards::open_runs(&db).await?);
    db.close().await;
    let out = json!({ "paused": paused, "runs": open });
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
        Format::Human => {
            match &paused {
                Some(p) => outln!("PAUSED since {} by {}: {}", p.since, p.by, p.reason),
                None => outln!("running (not paused)"),
            }
            let counts: Vec<String> = open
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            outln!("runs: {}", counts.join(", "));
        }
    }
    Ok(0)
}

pub(super) async fn alert(setup: &Setup, command: AlertCommand) -> Result<i32> {
    let AlertCommand::Fire {
        name,
        labels,
        annotations,
        resolve,
        url,
        output,
    } = command;
    let mut label_map = parse_params(&labels).context("--label")?;
    label_map.insert("alertname".into(), name.clone());
    let annotations = parse_params(&annotations).context("--annotation")?;
    let fp = fingerprint(&label_map);
    let now = Utc::now();
    let starts_at = if resolve {
        last_start(setup, &fp).await.unwrap_or(now)
    } else {
        now
    };
    let body = notification(
        &name,
        label_map,
        annotations,
        fp,
        starts_at,
        resolve.then_some(now),
    );
    let url = url.unwrap_or_else(|| receiver_url(&setup.config.server.listen));
    let mut request = reqwest::Client::new().post(&url).json(&body);
    if let Some(token) = receiver_token(setup)? {
        request = request.bearer_auth(token);
    }
    let resp = request
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let answer: Json = resp.json().await.unwrap_or(Json::Null);
    if !status.is_success() {
        errln!(
            "error: {url} answered {status}: {}",
            answer["error"]["message"].as_str().unwrap_or("")
        );
        return Ok(EXIT_FAILED);
    }
    match output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&answer)?),
        Format::Human => print_answer(&answer),
    }
    Ok(0)
}

/// The body Alertmanager would send for this one alert.
fn notification(
    name: &str,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    fingerprint: String,
    starts_at: chrono::DateTime<Utc>,
    ends_at: Option<chrono::DateTime<Utc>>,
) -> Notification {
    let status = if ends_at.is_some() {
        AlertStatus::Resolved
    } else {
        AlertStatus::Firing
    };
    let zero = chrono::DateTime::parse_from_rfc3339("0001-01-01T00:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .ok();
    Notification {
        version: "4".into(),
        group_key: format!("{{}}:{{alertname=\"{name}\"}}"),
        truncated_alerts: 0,
        status,
        receiver: "runbook".into(),
        group_labels: [("alertname".to_owned(), name.to_owned())].into(),
        common_labels: labels.clone(),
        common_annotations: annotations.clone(),
        external_url: "runbook-alert-fire".into(),
        alerts: vec![Alert {
            status,
            labels,
            annotations,
            starts_at,
            ends_at: ends_at.or(zero),
            generator_url: String::new(),
            fingerprint,
        }],
    }
}

/// The startsAt the last `fire` of this alert recorded (from the store), so a resolve names the
/// same occurrence; `None` when the store does not have it.
async fn last_start(setup: &Setup, fp: &str) -> Option<chrono::DateTime<Utc>> {
    let db = setup.store().await.ok()?;
    let text = alerts::latest_start(&db, fp).await.ok().flatten();
    db.close().await;
    chrono::DateTime::parse_from_rfc3339(&text?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn receiver_url(listen: &str) -> String {
    let host = listen
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]");
    format!("http://{host}/api/webhooks/alertmanager")
}

fn receiver_token(setup: &Setup) -> Result<Option<String>> {
    let Some(secret) = setup.config.auth.receiver.as_ref().and_then(|r| r.secret()) else {
        return Ok(None);
    };
    Ok(Some(
        secret.resolve(&setup.masker).context("auth.receiver")?,
    ))
}

fn print_answer(answer: &Json) {
    for a in answer["alerts"].as_array().into_iter().flatten() {
        outln!(
            "alert {} ({}, {}): {}",
            a["alertname"].as_str().unwrap_or(""),
            a["fingerprint"].as_str().unwrap_or(""),
            a["status"].as_str().unwrap_or(""),
            a["outcome"].as_str().unwrap_or("")
        );
        for p in a["playbooks"].as_array().into_iter().flatten() {
            let run = p["run_id"]
                .as_i64()
                .map(|id| format!(" run {id}"))
                .unwrap_or_default();
            let reason = p["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            outln!(
                "  {}: {}{run}{reason}",
                p["playbook"].as_str().unwrap_or(""),
                p["outcome"].as_str().unwrap_or("")
            );
        }
    }
}
