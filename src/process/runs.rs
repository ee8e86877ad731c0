//! Playbook runs as commands on the queue (`runbook.run`): the API (`POST /api/runs`) enqueues
//! one, a worker runs it. If the process running it dies, the lease expires, the command
//! comes back, and the run is finished as its playbook says: marked `interrupted`, or resumed
//! from the first step that had not succeeded.

use std::sync::Arc;

use serde_json::{json, Value as Json};

use futures::future::BoxFuture;

use super::handlers::{event, CommandHandler, HandlerError};
use crate::{
    engine::{Engine, NullObserver, RunRequest},
    playbook::OnInterrupt,
    status::{ErrorType, RunStatus},
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

/// The queue command of a run. Runs of one playbook share an entity, so the work-state lock
/// keeps them one at a time. The payload is the request, serialized.
pub fn command(req: &RunRequest, priority: i32) -> NewCommand {
    NewCommand {
        entity: "runbook".into(),
        entity_id: req.playbook.clone(),
        command_type: RUN_COMMAND.into(),
        priority,
        payload: serde_json::to_value(req).unwrap_or_default(),
    }
}

fn fail(msg: impl Into<String>) -> HandlerError {
    HandlerError::new(ErrorType::RunbookException, msg, false)
}

async fn handle(engine: &Engine, cmd: &Claimed) -> Result<Json, HandlerError> {
    let mut req: RunRequest = serde_json::from_value(cmd.payload.clone())
        .map_err(|e| fail(format!("runbook.run command: {e}")))?;
    req.command_id = Some(cmd.id);
    let playbook = req.playbook.clone();
    let transient =
        |e: DbError| HandlerError::new(ErrorType::NetworkException, e.to_string(), true);
    let store = &engine.services().store;
    let existing = runs::latest_for_command(store, cmd.id)
        .await
        .map_err(transient)?;
    if let Some((run_id, status)) = existing {
        if status.is_final() {
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
            runs::finish_run(store, run_id, RunStatus::Interrupted, None, Some(&why))
                .await
                .map_err(transient)?;
            tracing::warn!(run_id, playbook = %playbook, "Run interrupted by a crash; marked interrupted.");
            return Ok(json!({ "run_id": run_id, "status": RunStatus::Interrupted }));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_payloads_keep_their_json_shape() {
        let req = RunRequest {
            playbook: "p".into(),
            params: [("a".to_owned(), "1".to_owned())].into(),
            trigger: json!({ "kind": "api", "by": "x" }),
            alert: Some(json!({ "labels": { "alertname": "A" } })),
            alerts: vec![json!({ "labels": {} })],
            version: None,
            dry_run: true,
            command_id: Some(3),
            resume: Some(4),
        };
        // What enqueue wrote before the payload was a struct.
        let written = json!({
            "playbook": req.playbook, "params": req.params, "trigger": req.trigger,
            "alert": req.alert, "alerts": req.alerts,
        });
        assert_eq!(serde_json::to_value(&req).unwrap(), written);
        let back: RunRequest = serde_json::from_value(written).unwrap();
        assert_eq!(
            (&back.playbook, &back.params, &back.trigger),
            (&req.playbook, &req.params, &req.trigger)
        );
        assert_eq!((&back.alert, &back.alerts), (&req.alert, &req.alerts));
        assert_eq!(
            (back.dry_run, back.command_id, back.resume),
            (false, None, None)
        );
        // Without an alert (null or missing) and without alerts, as cron, the API and
        // `playbook:` handlers queue it.
        let bare: RunRequest = serde_json::from_value(
            json!({ "playbook": "p", "params": {}, "trigger": { "kind": "schedule" }, "alert": null }),
        )
        .unwrap();
        assert_eq!((bare.alert, bare.alerts.len()), (None, 0));
        assert!(serde_json::from_value::<RunRequest>(json!({ "params": {} })).is_err());
    }
}
