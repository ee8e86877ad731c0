//! The seed's admin API verbatim (`/api/admin/streaming/dlq...`), the runs API and playbooks.

use std::collections::BTreeMap;

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{auth::Role, AppError, Shared};
use crate::{
    diagnostics::Diagnostic,
    duration::Dur,
    engine::RunRequest,
    playbook::Catalog,
    process::runs as runs_process,
    status::RunStatus,
    store::runs,
    stream::ops::{self, Op, OpError},
};

fn op_error(e: OpError) -> AppError {
    match e {
        OpError::Invalid(m) => AppError::BadRequest(m),
        OpError::Db(e) => AppError::internal(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DlqQuery {
    entity: Option<String>,
    error_type: Option<String>,
    page: Option<i64>,
    size: Option<i64>,
}

/// The largest `size` of a DLQ page.
const MAX_PAGE_SIZE: i64 = 1000;
/// The largest `page` number: ten million entries deep at the largest size, far past any DLQ.
const MAX_PAGE: i64 = 10_000;

/// Where a page starts: `page * size`, both checked against their bounds first.
///
/// # Errors
///
/// `page` or `size` out of bounds, named in the message.
fn page_offset(page: i64, size: i64) -> Result<i64, AppError> {
    if !(1..=MAX_PAGE_SIZE).contains(&size) {
        return Err(AppError::BadRequest(format!(
            "size: {size} is out of bounds; give 1 to {MAX_PAGE_SIZE}"
        )));
    }
    if !(0..=MAX_PAGE).contains(&page) {
        return Err(AppError::BadRequest(format!(
            "page: {page} is out of bounds; give 0 to {MAX_PAGE} (pages count from 0)"
        )));
    }
    page.checked_mul(size).ok_or_else(|| {
        AppError::BadRequest(format!("page: {page} pages of {size} is past the end"))
    })
}

/// `GET /api/admin/streaming/dlq?entity=&errorType=&page=&size=`: a page of DLQ entries, with
/// `totalElements` at the top level and sensitive payload fields masked. `page` counts from 0
/// (at most 10000), `size` is 1 to 1000 (default 20); out of bounds is a 400 naming which.
pub async fn dlq_list(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<DlqQuery>,
) -> Result<Json<Value>, AppError> {
    s.tokens.authorize(&headers, Role::PlatformAdmin)?;
    let size = q.size.unwrap_or(20);
    let page = q.page.unwrap_or(0);
    let offset = page_offset(page, size)?;
    let op = Op::DlqList {
        entity: q.entity,
        error_type: q.error_type,
        limit: Some(size),
        offset: Some(offset),
    };
    let out = ops::run(&s.services.store, &s.services.config.streaming, &op, "api")
        .await
        .map_err(op_error)?;
    let total = out["totalElements"].as_i64().unwrap_or(0).max(0);
    Ok(Json(s.services.masker.mask_json(&json!({
        "content": out["content"],
        "totalElements": total,
        "totalPages": total.div_euclid(size) + i64::from(total.rem_euclid(size) > 0),
        "page": page,
        "size": size,
    }))))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryQuery {
    entity: Option<String>,
    error_type: Option<String>,
}

/// `POST /api/admin/streaming/dlq/retry-all?errorType=`: DLQ entries back to the queue; audited.
pub async fn dlq_retry_all(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<RetryQuery>,
) -> Result<Json<Value>, AppError> {
    let who = s.tokens.authorize(&headers, Role::PlatformAdmin)?;
    let op = Op::DlqRetry {
        entity: q.entity,
        error_type: q.error_type,
    };
    let out = ops::run(
        &s.services.store,
        &s.services.config.streaming,
        &op,
        &format!("api:{}", who.name),
    )
    .await
    .map_err(op_error)?;
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CleanupQuery {
    older_than: Option<String>,
}

/// `DELETE /api/admin/streaming/dlq/cleanup?olderThan=7d`; audited.
pub async fn dlq_cleanup(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<CleanupQuery>,
) -> Result<Json<Value>, AppError> {
    let who = s.tokens.authorize(&headers, Role::PlatformAdmin)?;
    let text = q.older_than.as_deref().unwrap_or("7d");
    let older_than: Dur = text.parse().map_err(|e: crate::duration::DurationError| {
        AppError::BadRequest(format!("olderThan: {e}"))
    })?;
    let op = Op::DlqCleanup {
        older_than,
        error_type: None,
    };
    let out = ops::run(
        &s.services.store,
        &s.services.config.streaming,
        &op,
        &format!("api:{}", who.name),
    )
    .await
    .map_err(op_error)?;
    Ok(Json(out))
}

pub async fn stats(State(s): State<Shared>, headers: HeaderMap) -> Result<Json<Value>, AppError> {
    s.tokens.authorize(&headers, Role::Viewer)?;
    let out = ops::queue_stats(&s.services.store, &s.services.config.streaming)
        .await
        .map_err(AppError::internal)?;
    Ok(Json(out))
}

/// `GET /api/playbooks`: every playbook served, with its version and validation state, and every
/// file that never loaded, with its problems.
pub async fn playbooks(
    State(s): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    s.tokens.authorize(&headers, Role::Viewer)?;
    Ok(Json(json!(playbook_list(
        &s.engine.catalog(),
        &s.engine.problems()
    ))))
}

/// The playbooks of `catalog`, each `valid` when its file has none of `problems` (else it serves
/// its last good version and lists the file's `errors` as `path:line:col: message`), then the
/// files with problems that serve no version (`loaded: false`).
fn playbook_list(catalog: &Catalog, problems: &[Diagnostic]) -> Vec<Value> {
    let errors_of = |path: &std::path::Path| -> Vec<String> {
        problems
            .iter()
            .filter(|d| d.path == path)
            .map(ToString::to_string)
            .collect()
    };
    let mut list: Vec<Value> = catalog
        .playbooks
        .values()
        .map(|p| {
            let errors = errors_of(&p.path);
            json!({
                "name": p.name, "description": p.description,
                "path": p.path, "version": catalog.versions.get(&p.name).map(|v| &v.hash),
                "loaded": true, "valid": errors.is_empty(), "errors": errors,
                "schedule": p.triggers.schedule.as_ref().map(|s| s.expr.clone()),
                "changes_things": p.changes_things,
                "params": p.params.iter().map(|x| json!({ "name": x.name, "type": x.ty, "default": x.default })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut unloaded: Vec<&std::path::Path> = problems
        .iter()
        .map(|d| d.path.as_path())
        .filter(|path| !catalog.playbooks.values().any(|p| p.path == *path))
        .collect();
    unloaded.dedup();
    for path in unloaded {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        list.push(json!({
            "name": name, "path": path, "version": null,
            "loaded": false, "valid": false, "errors": errors_of(path),
        }));
    }
    list
}

#[derive(Deserialize)]
pub struct RunsQuery {
    playbook: Option<String>,
    limit: Option<i64>,
}

pub async fn runs_list(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Value>, AppError> {
    s.tokens.authorize(&headers, Role::Viewer)?;
    let rows = runs::list_runs(
        &s.services.store,
        q.playbook.as_deref(),
        q.limit.unwrap_or(50).clamp(1, 500),
    )
    .await
    .map_err(AppError::internal)?;
    Ok(Json(json!(rows)))
}

pub async fn run_show(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<Value>, AppError> {
    s.tokens.authorize(&headers, Role::Viewer)?;
    match runs::get_run(&s.services.store, id)
        .await
        .map_err(AppError::internal)?
    {
        Some(run) => Ok(Json(run)),
        None => Err(AppError::NotFound(format!("no run {id}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRun {
    playbook: String,
    #[serde(default)]
    params: BTreeMap<String, Value>,
    #[serde(default)]
    priority: Option<i32>,
}

/// `POST /api/runs`: enqueue a run; answers 202 with the command id.
pub async fn runs_create(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Result<Json<NewRun>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let who = s.tokens.authorize(&headers, Role::Operator)?;
    let Json(body) = body?;
    let catalog = s.engine.catalog();
    let pb = catalog
        .get(&body.playbook)
        .ok_or_else(|| AppError::NotFound(format!("unknown playbook `{}`", body.playbook)))?;
    let params: BTreeMap<String, String> = body
        .params
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string()),
            )
        })
        .collect();
    crate::playbook::resolve_params(&pb.params, &params).map_err(|e| {
        let problems: Vec<String> = e.0.iter().map(ToString::to_string).collect();
        AppError::BadRequest(problems.join("; "))
    })?;
    let mut req = RunRequest {
        playbook: pb.name.clone(),
        params,
        trigger: json!({ "kind": "api", "by": who.name }),
        ..Default::default()
    };
    s.engine.pin(&mut req).await.map_err(AppError::internal)?;
    let admit = runs_process::Admit {
        req: &req,
        priority: body.priority.unwrap_or(3),
        alert: None,
        queue: true,
        forced_by: None,
        now: chrono::Utc::now(),
    };
    let admission = runs_process::admit(&s.services, pb, &admit)
        .await
        .map_err(AppError::internal)?;
    runs_process::note(&s.metrics, &pb.name, &admission);
    match admission {
        runs_process::Admission::Queued { run_id, command_id } => Ok((
            StatusCode::ACCEPTED,
            Json(
                json!({ "command_id": command_id, "run_id": run_id, "playbook": pb.name, "status": "queued", "version": req.version }),
            ),
        )),
        // A guard or the pause held it: recorded as a skipped run, answered 409 with the reason.
        other => Ok((
            StatusCode::CONFLICT,
            Json(json!({
                "error": { "status": 409, "message": skipped_message(&other) },
                "run_id": other.run_id(), "playbook": pb.name, "status": "skipped",
            })),
        )),
    }
}

fn skipped_message(a: &runs_process::Admission) -> String {
    match a {
        runs_process::Admission::Skipped { reason, .. } => {
            format!("run {} skipped: {reason}", a.run_id())
        }
        _ => format!("run {} already recorded", a.run_id()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    #[serde(default)]
    reject: bool,
    #[serde(default)]
    comment: Option<String>,
}

pub async fn run_approve(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let who = s.tokens.authorize(&headers, Role::Operator)?;
    // An empty body approves; anything else must be a decision, whatever its Content-Type says,
    // so `{"reject": true}` can never be read as an approval.
    let d: Decision = if body.iter().all(u8::is_ascii_whitespace) {
        Decision {
            reject: false,
            comment: None,
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| AppError::BadRequest(format!("decision: {e}")))?
    };
    let actor = format!("api:{}", who.name);
    let step = match runs::decide(
        &s.services.store,
        id,
        !d.reject,
        &actor,
        d.comment.as_deref(),
    )
    .await
    {
        Ok(step) => step,
        Err(runs::DecideError::NoRun(_)) => return Err(AppError::NotFound(format!("no run {id}"))),
        Err(e @ runs::DecideError::NotWaiting(..)) => {
            return Ok((StatusCode::CONFLICT, conflict(e.to_string(), None)))
        }
        Err(e @ runs::DecideError::AlreadyDecided { .. }) => {
            let decided = match &e {
                runs::DecideError::AlreadyDecided {
                    step,
                    decision,
                    actor,
                    at,
                    ..
                } => json!({ "step": step, "decision": decision, "by": actor, "at": at }),
                _ => Value::Null,
            };
            return Ok((StatusCode::CONFLICT, conflict(e.to_string(), Some(decided))));
        }
        Err(runs::DecideError::Db(e)) => return Err(AppError::internal(e)),
    };
    let decision = if d.reject { "rejected" } else { "approved" };
    Ok((
        StatusCode::OK,
        Json(json!({ "run_id": id, "step": step, "decision": decision })),
    ))
}

/// A 409 in the API's error shape; `decided` is the answer that came first, when there was one.
fn conflict(message: String, decided: Option<Value>) -> Json<Value> {
    let mut body = json!({ "error": { "status": 409, "message": message } });
    if let Some(d) = decided {
        body["decided"] = d;
    }
    Json(body)
}

/// `POST /api/runs/{id}/cancel` (role operator): asks the run to stop where it is; audited as
/// `api:<token name>`. Its process sees it within a second; when it runs in this process it
/// stops at once. The run ends `cancelled`.
pub async fn run_cancel(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<Value>, AppError> {
    let who = s.tokens.authorize(&headers, Role::Operator)?;
    let actor = format!("api:{}", who.name);
    match runs::cancel(&s.services.store, id, &actor).await {
        Ok(()) => {}
        Err(runs::CancelError::NoRun(_)) => return Err(AppError::NotFound(format!("no run {id}"))),
        Err(e @ runs::CancelError::NotRunning(..)) => {
            return Err(AppError::BadRequest(e.to_string()))
        }
        Err(runs::CancelError::Db(e)) => return Err(AppError::internal(e)),
    }
    let here = s.engine.cancel_here(id, &format!("cancelled by {actor}"));
    tracing::info!(run_id = id, actor = %actor, in_this_process = here, "Run cancel requested.");
    Ok(Json(
        json!({ "run_id": id, "status": RunStatus::CancelRequested, "by": actor }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PauseBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/pause` (`{"reason": ...}`, optional): holds every new run that changes things.
pub async fn pause(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, AppError> {
    let who = s.tokens.authorize(&headers, Role::Operator)?;
    let b: PauseBody = if body.iter().all(u8::is_ascii_whitespace) {
        PauseBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| AppError::BadRequest(format!("pause: {e}")))?
    };
    let reason = b.reason.unwrap_or_else(|| "paused by an operator".into());
    let by = format!("api:{}", who.name);
    let paused = crate::store::pause::pause(&s.services.store, &reason, &by, chrono::Utc::now())
        .await
        .map_err(AppError::internal)?;
    tracing::warn!(reason = %paused.reason, by = %paused.by, "Runs paused.");
    Ok(Json(json!({ "paused": paused })))
}

/// `POST /api/resume`: ends the pause.
pub async fn resume(State(s): State<Shared>, headers: HeaderMap) -> Result<Json<Value>, AppError> {
    let who = s.tokens.authorize(&headers, Role::Operator)?;
    let by = format!("api:{}", who.name);
    let was = crate::store::pause::resume(&s.services.store, &by)
        .await
        .map_err(AppError::internal)?;
    tracing::warn!(by = %by, "Runs resumed.");
    Ok(Json(json!({ "paused": null, "was_paused": was })))
}

/// `GET /api/status`: the pause (or null) and the runs not yet over, by status.
pub async fn status(State(s): State<Shared>, headers: HeaderMap) -> Result<Json<Value>, AppError> {
    s.tokens.authorize(&headers, Role::Operator)?;
    let store = &s.services.store;
    let paused = crate::store::pause::get(store)
        .await
        .map_err(AppError::internal)?;
    let open = crate::store::guards::open_runs(store)
        .await
        .map_err(AppError::internal)?;
    Ok(Json(
        json!({ "paused": paused, "runs": open_counts(&open) }),
    ))
}

/// `{queued, running, waiting_approval, cancel_requested}` from rows of status and count.
pub fn open_counts(rows: &[Value]) -> Value {
    let mut out = serde_json::Map::new();
    for st in crate::store::guards::open_statuses() {
        let n = rows
            .iter()
            .find(|r| r["status"] == st.as_str())
            .and_then(|r| r["count"].as_i64())
            .unwrap_or(0);
        out.insert(st.as_str().into(), json!(n));
    }
    Value::Object(out)
}
