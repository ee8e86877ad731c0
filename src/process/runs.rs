//! Playbook runs as commands on the queue (`runbook.run`): the API (`POST /api/runs`) enqueues
//! one, a worker runs it. If the process running it dies, the lease expires, the command
//! comes back, and the run is finished as its playbook says: marked `interrupted`, or resumed
//! from the first step that had not succeeded. Every run, CLI runs included, also renews a lease
//! of its own in its record; [`reap_dead_runs`] ends those whose lease expired.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::{json, Value as Json};
use tokio_util::sync::CancellationToken;

use super::handlers::{event, CommandHandler, HandlerError};
use crate::{
    engine::{Engine, NullObserver, RunRequest},
    metrics::{GuardLabels, Metrics},
    playbook::{resolve_params, OnInterrupt, ParamProblems, Playbook},
    services::Services,
    status::{ErrorType, RunStatus},
    store::{
        alerts,
        guards::{self, Limits, Scope},
        pause,
        runs::{self, NewRun},
        Audit, Db, DbError, Tx, AUDIT,
    },
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

/// Enqueues a run without its guards (a `streaming.handlers` playbook); returns the command id.
pub async fn enqueue(store: &Db, req: &RunRequest, priority: i32) -> Result<i64, DbError> {
    let ids = queue::enqueue(store, &[command(req, priority)]).await?;
    Ok(ids[0])
}

/// The queue command of a run. The command type is not exclusive: how many runs of a playbook
/// go at once is its `guard.concurrency`, decided when the run is admitted ([`admit`]). The
/// payload is the request, serialized.
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
        if status == RunStatus::Queued || status == RunStatus::CancelRequested {
            // Admitted and recorded with its command: this is its start (or, cancelled while it
            // waited, its end).
            return start_admitted(engine, req, run_id).await;
        }
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

/// Runs a run admitted as `queued`, unless it was cancelled before it started.
async fn start_admitted(
    engine: &Engine,
    mut req: RunRequest,
    run_id: i64,
) -> Result<Json, HandlerError> {
    let store = &engine.services().store;
    let transient =
        |e: DbError| HandlerError::new(ErrorType::NetworkException, e.to_string(), true);
    if !runs::start_queued(store, run_id).await.map_err(transient)? {
        runs::finish_run(
            store,
            run_id,
            RunStatus::Cancelled,
            None,
            Some("cancelled before it started"),
        )
        .await
        .map_err(transient)?;
        return Ok(json!({ "run_id": run_id, "status": RunStatus::Cancelled }));
    }
    req.resume = Some(run_id);
    let outcome = engine
        .run(req, Arc::new(NullObserver))
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(json!({ "run_id": outcome.run_id, "status": outcome.status, "error": outcome.error }))
}

// ---------------------------------------------------------------------------------------------
// Admission: every start of a playbook run (an alert, a schedule tick, `POST /api/runs`,
// `runbook run`) passes here. In one store transaction that serialises the playbook's deciders
// (`guards::begin`), it checks the once-per-alert key, counts what the guards need, reads the
// global pause, and records the run: `queued` with its `runbook.run` command, or `skipped` with
// the reason. Nothing is queued behind a guard.

/// The alert occurrence a trigger comes from: the key of its one run, and its cooldown scope.
#[derive(Clone, Copy, Debug)]
pub struct AlertKey<'a> {
    pub fingerprint: &'a str,
    pub starts_at: &'a str,
    /// `firing` or `resolved`.
    pub kind: &'a str,
}

/// One trigger to admit.
pub struct Admit<'a> {
    pub req: &'a RunRequest,
    pub priority: i32,
    pub alert: Option<AlertKey<'a>>,
    /// Whether the run goes on the queue; `runbook run` runs it in its own process.
    pub queue: bool,
    /// `--force`: no guard and no pause applies; the actor is written to the audit log.
    pub forced_by: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// What a trigger became.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Admission {
    /// Recorded `queued` (with its command when it goes on the queue).
    Queued {
        run_id: i64,
        command_id: Option<i64>,
    },
    /// Recorded `skipped`: a guard or the pause held it.
    Skipped {
        run_id: i64,
        guard: &'static str,
        reason: String,
    },
    /// This alert occurrence already has its run (a repeat, a retry, the other HA member).
    Duplicate { run_id: i64 },
}

impl Admission {
    pub fn run_id(&self) -> i64 {
        match self {
            Admission::Queued { run_id, .. }
            | Admission::Skipped { run_id, .. }
            | Admission::Duplicate { run_id } => *run_id,
        }
    }
}

/// Why a trigger could not even be decided.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    Params(#[from] ParamProblems),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The playbook's guard in the store's terms.
pub fn limits(pb: &Playbook) -> Limits {
    Limits {
        concurrency: pb.guard.concurrency,
        cooldown: pb.guard.cooldown.map(|d| d.as_std()),
        max_runs_per_hour: pb.guard.max_runs_per_hour,
    }
}

/// Admits one trigger in its own transaction.
pub async fn admit(
    services: &Services,
    pb: &Playbook,
    a: &Admit<'_>,
) -> Result<Admission, AdmitError> {
    let mut tx = guards::begin(&services.store, &[pb.name.as_str()]).await?;
    let admission = admit_in(&mut tx, services, pb, a).await?;
    tx.commit().await?;
    Ok(admission)
}

/// Admits one trigger inside `tx`, which must come from [`guards::begin`] for `pb`.
pub async fn admit_in(
    tx: &mut Tx,
    services: &Services,
    pb: &Playbook,
    a: &Admit<'_>,
) -> Result<Admission, AdmitError> {
    let params = resolve_params(&pb.params, &a.req.params)?;
    if let Some(k) = a.alert {
        if let Some(run_id) =
            alerts::run_for(tx, &pb.name, k.fingerprint, k.starts_at, k.kind).await?
        {
            return Ok(Admission::Duplicate { run_id });
        }
    }
    let refusal = match a.forced_by {
        Some(actor) => {
            let audit = Audit {
                actor,
                op: "run_forced",
                filter: json!({ "playbook": pb.name, "trigger": a.req.trigger }),
            };
            guards::tx_sql(tx, AUDIT, audit.params(1)).await?;
            None
        }
        None => decide(tx, pb, a).await?.err(),
    };
    let masker = &services.masker;
    let command_id = match (&refusal, a.queue) {
        (None, true) => Some(queue::enqueue_in(tx, &command(a.req, a.priority)).await?),
        _ => None,
    };
    let run = NewRun {
        playbook: &pb.name,
        trigger: masker.mask_json(&a.req.trigger),
        params: masker.mask_json(&serde_json::Value::Object(params)),
        dry_run: false,
        parent_id: None,
        command_id,
        version: a.req.version.as_deref(),
        status: if refusal.is_some() {
            RunStatus::Skipped
        } else {
            RunStatus::Queued
        },
    };
    let reason = refusal.as_ref().map(ToString::to_string);
    let run_id = runs::create_run_in(tx, run, a.now, reason.as_deref()).await?;
    if let Some(k) = a.alert {
        alerts::record_run(
            tx,
            &pb.name,
            k.fingerprint,
            k.starts_at,
            k.kind,
            run_id,
            a.now,
        )
        .await?;
    }
    Ok(match refusal {
        None => Admission::Queued { run_id, command_id },
        Some(r) => Admission::Skipped {
            run_id,
            guard: r.guard(),
            reason: r.to_string(),
        },
    })
}

/// The guards and the pause, counted and decided inside `tx`.
async fn decide(
    tx: &mut Tx,
    pb: &Playbook,
    a: &Admit<'_>,
) -> Result<Result<(), guards::Refusal>, DbError> {
    let limits = limits(pb);
    let scope = match a.alert {
        Some(k) => Scope::Alert {
            fingerprint: k.fingerprint,
            kind: k.kind,
        },
        None => Scope::Playbook,
    };
    let window = guards::window(&limits, scope);
    let counts = guards::counts(tx, &pb.name, &limits, scope, window, a.now).await?;
    let paused = pause::get_in(tx).await?;
    Ok(guards::decide(
        &limits,
        window,
        scope,
        &counts,
        paused.as_ref(),
        pb.changes_things,
    ))
}

/// Counts a skipped trigger in `runbook_guard_refusals_total` and logs it.
pub fn note(metrics: &Metrics, playbook: &str, admission: &Admission) {
    if let Admission::Skipped {
        run_id,
        guard,
        reason,
    } = admission
    {
        metrics
            .guard_refusals
            .get_or_create(&GuardLabels {
                playbook: playbook.to_owned(),
                guard: (*guard).to_owned(),
            })
            .inc();
        tracing::info!(playbook, run_id, guard, %reason, "Run skipped.");
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
