//! Playbook runs as commands on the queue (`runbook.run`): the API (`POST /api/runs`) enqueues
//! one, a worker runs it. If the process running it dies, the lease expires, the command
//! comes back, and the run is finished as its playbook says: marked `interrupted`, or resumed
//! from the first step that had not succeeded.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::{json, Value as Json};

use futures::future::BoxFuture;

use super::handlers::{event, CommandHandler, HandlerError};
use crate::{
    engine::{Engine, NullObserver, RunRequest},
    playbook::OnInterrupt,
    store::{runs, Db, DbError},
    stream::queue::{self, Claimed, Event, NewCommand},
};

/// The command type of a playbook run.
pub const RUN_COMMAND: &str = "runbook.run";

/// Runs `runbook.run` commands with the engine, each in its own lane.
pub struct RunHandler {
    engine: Arc<Engine>,
}

impl RunHandler {
    pub fn new(engine: Arc<Engine>) -> Self {
        RunHandler { engine }
    }
}

impl CommandHandler for RunHandler {
    fn handle<'a>(&'a self, cmd: &'a Claimed) -> BoxFuture<'a, Result<Vec<Event>, HandlerError>> {
        Box::pin(async move {
            let result = handle(&self.engine, cmd).await?;
            Ok(vec![event(cmd, result)])
        })
    }

    fn own_lane(&self) -> bool {
        true
    }
}

/// Queue priority of a run from its alert's severity.
pub fn priority_for(severity: Option<&str>) -> i32 {
    match severity.map(str::to_ascii_lowercase).as_deref() {
        Some("critical" | "page") => 10,
        Some("error" | "high") => 7,
        Some("warning" | "warn") => 5,
        Some("info") => 1,
        _ => 3,
    }
}

/// Enqueues a run; returns the command id.
pub async fn enqueue(store: &Db, req: &RunRequest, priority: i32) -> Result<i64, DbError> {
    let ids = queue::enqueue(store, &[command(req, priority)]).await?;
    Ok(ids[0])
}

/// The queue command of a run: the payload [`handle`] reads. Runs of one playbook share an
/// entity, so the work-state lock keeps them one at a time.
pub fn command(req: &RunRequest, priority: i32) -> NewCommand {
    NewCommand {
        entity: "runbook".into(),
        entity_id: req.playbook.clone(),
        command_type: RUN_COMMAND.into(),
        priority,
        payload: json!({
            "playbook": req.playbook, "params": req.params, "trigger": req.trigger,
            "alert": req.alert, "alerts": req.alerts,
        }),
    }
}

fn fail(msg: impl Into<String>) -> HandlerError {
    HandlerError {
        error_type: "RunbookException".into(),
        message: msg.into(),
        retryable: false,
    }
}

async fn handle(engine: &Engine, cmd: &Claimed) -> Result<Json, HandlerError> {
    let p = &cmd.payload;
    let playbook = p["playbook"]
        .as_str()
        .ok_or_else(|| fail("runbook.run command without `playbook`"))?
        .to_owned();
    let params: BTreeMap<String, String> =
        serde_json::from_value(p["params"].clone()).unwrap_or_default();
    let transient = |e: DbError| HandlerError {
        error_type: "NetworkException".into(),
        message: e.to_string(),
        retryable: true,
    };
    let store = &engine.services().store;
    let existing = store
        .sql(
            "SELECT id, status FROM runbook_runs WHERE command_id = $1 ORDER BY id DESC LIMIT 1",
            vec![json!(cmd.id)],
        )
        .await
        .map_err(transient)?
        .rows;
    let mut req = RunRequest {
        playbook: playbook.clone(),
        params,
        trigger: p["trigger"].clone(),
        alert: p.get("alert").filter(|a| !a.is_null()).cloned(),
        alerts: p["alerts"].as_array().cloned().unwrap_or_default(),
        command_id: Some(cmd.id),
        ..Default::default()
    };
    if let Some(run) = existing.first() {
        let run_id = run["id"].as_i64().unwrap_or_default();
        let status = run["status"].as_str().unwrap_or("");
        if !matches!(
            status,
            "running" | "waiting_approval" | "cancel_requested" | "queued"
        ) {
            // Finished before the crash, only the acknowledgement was lost.
            return Ok(json!({ "run_id": run_id, "status": status }));
        }
        let policy = engine
            .catalog()
            .get(&playbook)
            .map(|p| p.on_interrupt)
            .unwrap_or(OnInterrupt::Interrupted);
        if policy == OnInterrupt::Interrupted {
            let why = format!(
                "the process running it stopped; found on attempt {} of its command",
                cmd.attempts
            );
            runs::finish_run(store, run_id, "interrupted", None, Some(&why))
                .await
                .map_err(transient)?;
            tracing::warn!(run_id, playbook = %playbook, "Run interrupted by a crash; marked interrupted.");
            return Ok(json!({ "run_id": run_id, "status": "interrupted" }));
        }
        tracing::warn!(run_id, playbook = %playbook, "Run interrupted by a crash; resuming.");
        req.resume = Some(run_id);
    }
    let outcome = engine
        .run(req, Arc::new(NullObserver))
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(json!({ "run_id": outcome.run_id, "status": outcome.status, "error": outcome.error }))
}
