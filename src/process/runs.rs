//! Playbook runs as commands on the queue (`runbook.run`): the API (`POST /api/runs`) enqueues
//! one, a worker runs it. If the process running it dies, the lease expires, the command
//! comes back, and the run is finished as its playbook says: marked `interrupted`, or resumed
//! from the first step that had not succeeded. Every run, CLI runs included, also renews a lease
//! of its own in its record; [`reap_dead_runs`] ends those whose lease expired.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::{json, Value as Json};
use tokio_util::sync::CancellationToken;

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

/// What becomes of an open run whose lease the reaper looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its lease is fresh (or it has none: recorded before leases): it is running somewhere.
    Alive,
    /// Its process died: it ends `interrupted`.
    Interrupt,
    /// Its process died after an operator asked it to stop: it ends `cancelled`.
    Cancel,
    /// Its process died, and its command comes back through the queue to resume it.
    Resume,
}

/// The lease-expiry decision for one open run, at `now` by the store's clock. `resumes` is
/// whether its playbook says `on_interrupt: resume`.
pub fn verdict(run: &runs::OpenRun, now: DateTime<Utc>, resumes: bool) -> Verdict {
    match run.lease_until {
        None => Verdict::Alive,
        Some(until) if until >= now => Verdict::Alive,
        Some(_) if run.status == RunStatus::CancelRequested => Verdict::Cancel,
        Some(_) if resumes && run.command_id.is_some() => Verdict::Resume,
        Some(_) => Verdict::Interrupt,
    }
}

/// Ends the open runs whose lease expired (their process died: a crash, a kill, Ctrl-C twice),
/// as [`verdict`] says, each with an audit record by `actor`. Returns how many it ended.
pub async fn reap(engine: &Engine, actor: &str) -> Result<usize, DbError> {
    let store = &engine.services().store;
    let (open, now) = runs::open_runs(store).await?;
    let Some(now) = now else {
        return Ok(0);
    };
    let catalog = engine.catalog();
    let mut ended = 0;
    for run in &open {
        let resumes = catalog
            .get(&run.playbook)
            .is_some_and(|p| p.on_interrupt == OnInterrupt::Resume);
        let expired = run.lease_until.map(runs::timestamp).unwrap_or_default();
        let (to, why) = match verdict(run, now, resumes) {
            Verdict::Alive | Verdict::Resume => continue,
            Verdict::Interrupt => (
                RunStatus::Interrupted,
                format!("the process running it stopped: its lease expired at {expired}"),
            ),
            Verdict::Cancel => (
                RunStatus::Cancelled,
                format!("cancelled; the process running it had stopped (its lease expired at {expired})"),
            ),
        };
        if runs::end_dead(store, run, to, &why, actor).await? {
            tracing::warn!(run_id = run.id, playbook = %run.playbook, status = %to, expired = %expired, "Run's lease expired; its process is gone.");
            ended += 1;
        }
    }
    Ok(ended)
}

/// Looks for runs whose process died, twice per `streaming.run_lease` (at most every five
/// seconds), until `shutdown`.
pub async fn reap_dead_runs(engine: Arc<Engine>, shutdown: CancellationToken) {
    let lease = engine.services().config.streaming.run_lease.as_std();
    let every = (lease / 2).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let actor = format!("serve:{}-{}", super::worker::hostname(), std::process::id());
    while !shutdown.is_cancelled() {
        if let Err(e) = reap(&engine, &actor).await {
            tracing::warn!(error = %e, "Looking for runs whose process died failed.");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(
        status: RunStatus,
        command_id: Option<i64>,
        lease_until: Option<&str>,
    ) -> runs::OpenRun {
        runs::OpenRun {
            id: 1,
            playbook: "p".into(),
            status,
            command_id,
            lease_until: lease_until.map(|t| t.parse().unwrap()),
        }
    }

    #[test]
    fn only_a_run_whose_lease_expired_is_taken_for_dead() {
        let now: DateTime<Utc> = "2026-03-01T12:00:00Z".parse().unwrap();
        let fresh = Some("2026-03-01T12:00:05Z");
        let expired = Some("2026-03-01T11:59:59.999Z");
        let running = RunStatus::Running;
        // A run going in another terminal renews its lease: never taken for dead.
        assert_eq!(
            verdict(&open(running, None, fresh), now, false),
            Verdict::Alive
        );
        assert_eq!(
            verdict(
                &open(running, None, Some("2026-03-01T12:00:00Z")),
                now,
                false
            ),
            Verdict::Alive
        );
        // Recorded before leases: left alone.
        assert_eq!(
            verdict(&open(running, None, None), now, false),
            Verdict::Alive
        );
        assert_eq!(
            verdict(&open(running, None, expired), now, false),
            Verdict::Interrupt
        );
        let waiting = open(RunStatus::WaitingApproval, None, expired);
        assert_eq!(verdict(&waiting, now, false), Verdict::Interrupt);
        // A resumable run comes back through its command; a CLI run (no command) cannot.
        assert_eq!(
            verdict(&open(running, Some(9), expired), now, true),
            Verdict::Resume
        );
        assert_eq!(
            verdict(&open(running, None, expired), now, true),
            Verdict::Interrupt
        );
        assert_eq!(
            verdict(&open(running, Some(9), expired), now, false),
            Verdict::Interrupt
        );
        // Asked to stop before it died: it ends as asked.
        let asked = open(RunStatus::CancelRequested, Some(9), expired);
        assert_eq!(verdict(&asked, now, true), Verdict::Cancel);
    }

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
