//! Playbook runs as commands on the queue (`runbook.run`): the API (`POST /api/runs`) enqueues
//! one, a worker runs it. If the process running it dies, the lease expires, the command
//! comes back, and the run is finished as its playbook says: marked `interrupted`, or resumed
//! from the first step that had not succeeded. Every run, CLI runs included, also renews a lease
//! of its own in its record; [`reap_dead_runs`] ends those whose lease expired.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::{json, Value, Value as Json};
use tokio_util::sync::CancellationToken;

use super::handlers::{event, CommandHandler, HandlerError};
use crate::{
    engine::{Engine, NullObserver, RunRequest},
    metrics::{GuardLabels, Metrics},
    playbook::{resolve_params, OnInterrupt, ParamProblems, Playbook},
    services::Services,
    status::{ErrorType, RunStatus},
    store::{
        admission, alert_groups,
        alerts::{self, RunKey},
        batch::Writes,
        guards::{self, CoolKey, Counts, Limits, Scope},
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
    if let (Some(hash), []) = (&req.alerts_ref, &req.alerts[..]) {
        match alert_groups::get(store, hash).await.map_err(transient)? {
            Some(alerts) => req.alerts = alerts,
            // Kept while its command is queued or running, so only an edit of the store gets
            // here: the run goes on with its own alert as its group.
            None => tracing::warn!(
                command_id = cmd.id,
                group = %hash,
                "The run's alert group is not in the store; its `alerts` hold only its own alert."
            ),
        }
    }
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
    let mut writes = Writes::default();
    let mut decided = admit_all_in(tx, services, &[(pb, a)], &mut writes).await?;
    writes.flush(tx).await?;
    Ok(decided.pop().expect("one admission per trigger")?)
}

/// Admits a batch of triggers inside `tx`, which must come from [`guards::begin`] for all their
/// playbooks; one answer per trigger, in order (a trigger whose parameters do not resolve gets
/// its problems and records nothing). The batch is decided as if its triggers came one after the
/// other: each run admitted counts for the guards of the triggers after it, and a repeat of an
/// alert occurrence within the batch is a duplicate of the first. Whatever the batch's size, the
/// store sees a fixed number of statements: one read of what the guards decide on (the keys
/// already taken, the open runs, the cooldowns and the pause: [`admission::read`], one statement
/// on PostgreSQL), a count per playbook whose guard limits runs per hour or has a cooldown per
/// playbook, then the commands, the runs and the keys, each written in one statement; on
/// PostgreSQL their ids are drawn in the one read and the rows go with `writes`, which the caller
/// flushes (with its own writes) before it commits.
pub async fn admit_all_in(
    tx: &mut Tx,
    services: &Services,
    triggers: &[(&Playbook, &Admit<'_>)],
    writes: &mut Writes,
) -> Result<Vec<Result<Admission, ParamProblems>>, DbError> {
    let params: Vec<_> = triggers
        .iter()
        .map(|(pb, a)| resolve_params(&pb.params, &a.req.params))
        .collect();
    let keys: Vec<Option<RunKey>> = triggers
        .iter()
        .map(|(pb, a)| {
            a.alert.map(|k| RunKey {
                playbook: pb.name.clone(),
                fingerprint: k.fingerprint.to_owned(),
                starts_at: k.starts_at.to_owned(),
                kind: k.kind.to_owned(),
            })
        })
        .collect();
    let mut wanted: Vec<RunKey> = keys.iter().flatten().cloned().collect();
    wanted.sort_unstable();
    wanted.dedup();
    // What the guards decide on, read in one go for every trigger that may be decided (whether
    // its alert key is taken is part of the same read).
    let candidate = |i: usize| params[i].is_ok() && triggers[i].1.forced_by.is_none();
    let (playbooks, cooling) = GuardState::cooling(triggers, &candidate);
    let playbooks: Vec<&str> = playbooks.iter().map(|pb| pb.name.as_str()).collect();
    // At most a command and a run per trigger; the ids left over are never used.
    writes.want(queue::COMMAND_IDS, triggers.len());
    writes.want(runs::RUN_IDS, triggers.len());
    let found = admission::read(tx, &wanted, &playbooks, &cooling, writes).await?;
    let taken = found.taken;
    let deciding =
        |i: usize| candidate(i) && keys[i].as_ref().is_none_or(|k| !taken.contains_key(k));
    let states = GuardState::count_all(tx, triggers, &deciding, &found.open, found.cooled).await?;
    let paused = found.paused;

    // Decided one after the other, in memory.
    let mut states = states;
    let mut decisions = Vec::with_capacity(triggers.len());
    let mut records: Vec<Record> = Vec::new();
    let mut in_batch: HashMap<&RunKey, usize> = HashMap::new();
    for (i, ((pb, a), params)) in triggers.iter().zip(params).enumerate() {
        let params = match params {
            Ok(p) => p,
            Err(e) => {
                decisions.push(Decision::Problems(e));
                continue;
            }
        };
        if let Some(k) = &keys[i] {
            if let Some(&run_id) = taken.get(k) {
                decisions.push(Decision::Duplicate(Slot::Stored(run_id)));
                continue;
            }
            if let Some(&r) = in_batch.get(k) {
                decisions.push(Decision::Duplicate(Slot::Batch(r)));
                continue;
            }
        }
        let state = states.get_mut(pb.name.as_str());
        let refusal = match (a.forced_by, &state) {
            (None, Some(state)) => state.decide(pb, a, paused.as_ref()).err(),
            _ => None,
        };
        if let (None, Some(state)) = (&refusal, state) {
            state.admitted(a);
        }
        if let Some(k) = &keys[i] {
            in_batch.insert(k, records.len());
        }
        decisions.push(Decision::Record(records.len()));
        records.push(Record {
            trigger: i,
            params,
            refusal,
        });
    }

    // Written: the commands of the runs that go on the queue, the runs, the alerts' keys.
    let queued: Vec<usize> = (0..records.len())
        .filter(|&r| records[r].refusal.is_none() && triggers[records[r].trigger].1.queue)
        .collect();
    let commands: Vec<NewCommand> = queued
        .iter()
        .map(|&r| {
            let a = triggers[records[r].trigger].1;
            command(a.req, a.priority)
        })
        .collect();
    let command_ids = queue::enqueue_all_in(tx, writes, &commands).await?;
    let mut command_of = vec![None; records.len()];
    for (&r, id) in queued.iter().zip(command_ids) {
        command_of[r] = Some(id);
    }
    let masker = &services.masker;
    let runs: Vec<(NewRun, Option<String>)> = records
        .iter()
        .zip(&command_of)
        .map(|(rec, &command_id)| {
            let (pb, a) = triggers[rec.trigger];
            let run = NewRun {
                playbook: &pb.name,
                trigger: masker.mask_json(&a.req.trigger),
                params: masker.mask_json(&Value::Object(rec.params.clone())),
                dry_run: false,
                parent_id: None,
                command_id,
                version: a.req.version.as_deref(),
                status: if rec.refusal.is_some() {
                    RunStatus::Skipped
                } else {
                    RunStatus::Queued
                },
            };
            (run, rec.refusal.as_ref().map(ToString::to_string))
        })
        .collect();
    let run_ids = if runs.is_empty() {
        Vec::new()
    } else {
        runs::create_runs_in(tx, writes, &runs, triggers[0].1.now).await?
    };
    let keyed: Vec<(RunKey, i64)> = records
        .iter()
        .zip(&run_ids)
        .filter_map(|(rec, &id)| Some((keys[rec.trigger].clone()?, id)))
        .collect();
    if !keyed.is_empty() {
        alerts::record_runs(tx, writes, &keyed, triggers[0].1.now).await?;
    }
    for rec in &records {
        let (pb, a) = triggers[rec.trigger];
        if let Some(actor) = a.forced_by {
            let audit = Audit {
                actor,
                op: "run_forced",
                filter: json!({ "playbook": pb.name, "trigger": a.req.trigger }),
            };
            guards::tx_sql(tx, AUDIT, audit.params(1)).await?;
        }
    }

    Ok(decisions
        .into_iter()
        .map(|d| match d {
            Decision::Problems(e) => Err(e),
            Decision::Duplicate(Slot::Stored(run_id)) => Ok(Admission::Duplicate { run_id }),
            Decision::Duplicate(Slot::Batch(r)) => Ok(Admission::Duplicate { run_id: run_ids[r] }),
            Decision::Record(r) => {
                let run_id = run_ids[r];
                Ok(match &records[r].refusal {
                    None => Admission::Queued {
                        run_id,
                        command_id: command_of[r],
                    },
                    Some(refusal) => Admission::Skipped {
                        run_id,
                        guard: refusal.guard(),
                        reason: refusal.to_string(),
                    },
                })
            }
        })
        .collect())
}

/// A trigger of a batch, decided: what [`admit_all_in`] answers once the batch is written.
enum Decision {
    Problems(ParamProblems),
    Duplicate(Slot),
    /// Recorded as the batch's run number `n`.
    Record(usize),
}

/// The run an alert occurrence already has: stored before, or recorded earlier in the batch.
enum Slot {
    Stored(i64),
    Batch(usize),
}

/// A run the batch records: its trigger, its resolved parameters and why a guard held it.
struct Record {
    trigger: usize,
    params: serde_json::Map<String, Value>,
    refusal: Option<guards::Refusal>,
}

/// What one playbook's guards decide on, counted once per batch and kept up to date as the
/// batch admits runs.
struct GuardState {
    limits: Limits,
    counts: Counts,
    /// Alerts (fingerprint, kind) with a run of the playbook inside their cooldown window.
    cooled: HashSet<(String, String)>,
}

impl GuardState {
    /// The playbooks with a trigger that `include` takes, in trigger order.
    fn playbooks<'t>(
        triggers: &[(&'t Playbook, &Admit<'_>)],
        include: &(dyn Fn(usize) -> bool + Sync),
    ) -> Vec<&'t Playbook> {
        let mut names: Vec<&'t Playbook> = Vec::new();
        for (i, (pb, _)) in triggers.iter().enumerate() {
            if include(i) && !names.iter().any(|p| p.name == pb.name) {
                names.push(pb);
            }
        }
        names
    }

    /// The [`playbooks`](Self::playbooks) of the triggers `include` takes, and the alerts whose
    /// cooldown those triggers ask about, each with the start of its playbook's window.
    fn cooling<'t>(
        triggers: &[(&'t Playbook, &Admit<'_>)],
        include: &(dyn Fn(usize) -> bool + Sync),
    ) -> (Vec<&'t Playbook>, Vec<(CoolKey, String)>) {
        let names = Self::playbooks(triggers, include);
        let mut cooling = Vec::new();
        let Some(now) = triggers.first().map(|(_, a)| a.now) else {
            return (names, cooling);
        };
        let scope = Scope::Alert {
            fingerprint: "",
            kind: "",
        };
        for pb in &names {
            let Some(w) = guards::window(&limits(pb), scope) else {
                continue;
            };
            let since = runs::timestamp(now - chrono::Duration::from_std(w).unwrap_or_default());
            let mine = (0..triggers.len()).filter(|&j| include(j) && triggers[j].0.name == pb.name);
            for k in mine.filter_map(|i| triggers[i].1.alert) {
                let key = CoolKey {
                    playbook: pb.name.clone(),
                    fingerprint: k.fingerprint.to_owned(),
                    kind: k.kind.to_owned(),
                };
                cooling.push((key, since.clone()));
            }
        }
        cooling.sort_unstable();
        cooling.dedup();
        (names, cooling)
    }

    /// The state of every playbook with a trigger to decide (`deciding`), from what the batch
    /// read ([`admission::read`]: the open runs, the alerts inside their cooldown windows), and
    /// for the playbooks whose guard has them, their runs of the last hour and their cooldown per
    /// playbook.
    async fn count_all<'t>(
        tx: &mut Tx,
        triggers: &[(&'t Playbook, &Admit<'_>)],
        deciding: &(dyn Fn(usize) -> bool + Sync),
        open: &HashMap<String, i64>,
        mut cooled: HashSet<CoolKey>,
    ) -> Result<HashMap<&'t str, GuardState>, DbError> {
        let names = Self::playbooks(triggers, deciding);
        let Some(now) = triggers.first().map(|(_, a)| a.now) else {
            return Ok(HashMap::new());
        };
        if names.is_empty() {
            return Ok(HashMap::new());
        }
        let all_limits: Vec<Limits> = names.iter().map(|pb| limits(pb)).collect();
        let wanted: Vec<guards::Wanted> = names
            .iter()
            .zip(&all_limits)
            .map(|(pb, limits)| {
                let by_playbook = (0..triggers.len()).any(|i| {
                    deciding(i) && triggers[i].0.name == pb.name && triggers[i].1.alert.is_none()
                });
                guards::Wanted {
                    playbook: &pb.name,
                    limits,
                    window: if by_playbook { limits.cooldown } else { None },
                }
            })
            .collect();
        let counts = guards::counts_from(tx, &wanted, open, now).await?;
        let mut states = HashMap::with_capacity(names.len());
        for ((pb, limits), counts) in names.iter().zip(all_limits).zip(counts) {
            let mine: HashSet<(String, String)> = cooled
                .iter()
                .filter(|k| k.playbook == pb.name)
                .map(|k| (k.fingerprint.clone(), k.kind.clone()))
                .collect();
            cooled.retain(|k| k.playbook != pb.name);
            states.insert(
                pb.name.as_str(),
                GuardState {
                    limits,
                    counts,
                    cooled: mine,
                },
            );
        }
        Ok(states)
    }

    /// The guards and the pause, for one trigger.
    fn decide(
        &self,
        pb: &Playbook,
        a: &Admit<'_>,
        paused: Option<&guards::Paused>,
    ) -> Result<(), guards::Refusal> {
        let (scope, in_cooldown) = match a.alert {
            Some(k) => {
                let key = (k.fingerprint.to_owned(), k.kind.to_owned());
                let scope = Scope::Alert {
                    fingerprint: k.fingerprint,
                    kind: k.kind,
                };
                (scope, i64::from(self.cooled.contains(&key)))
            }
            None => (Scope::Playbook, self.counts.in_cooldown),
        };
        let counts = Counts {
            in_cooldown,
            ..self.counts
        };
        let window = guards::window(&self.limits, scope);
        guards::decide(
            &self.limits,
            window,
            scope,
            &counts,
            paused,
            pb.changes_things,
        )
    }

    /// A run admitted: it counts for the triggers after it.
    fn admitted(&mut self, a: &Admit<'_>) {
        self.counts.open += 1;
        self.counts.last_hour += 1;
        self.counts.in_cooldown += 1;
        if let Some(k) = a.alert {
            self.cooled
                .insert((k.fingerprint.to_owned(), k.kind.to_owned()));
        }
    }
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
            alerts_ref: None,
            version: None,
            mode: crate::steps::RunMode::Plan,
            command_id: Some(3),
            resume: Some(4),
            mocks: None,
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
            (back.mode, back.command_id, back.resume),
            (crate::steps::RunMode::Execute, None, None)
        );
        // Without an alert (null or missing) and without alerts, as cron, the API and
        // `playbook:` handlers queue it.
        let bare: RunRequest = serde_json::from_value(
            json!({ "playbook": "p", "params": {}, "trigger": { "kind": "schedule" }, "alert": null }),
        )
        .unwrap();
        assert_eq!((&bare.alert, bare.alerts.len()), (&None, 0));
        assert_eq!(bare.group(), Vec::<Json>::new());
        // An alert's run: its group is carried, or stored by hash, or only the alert itself.
        assert_eq!(req.group(), req.alerts);
        let one = RunRequest {
            alerts: Vec::new(),
            alerts_ref: Some("abc".into()),
            ..req.clone()
        };
        assert_eq!(one.group(), [req.alert.clone().unwrap()]);
        let queued = serde_json::to_value(&one).unwrap();
        assert_eq!(
            (&queued["alerts_ref"], &queued["alerts"]),
            (&json!("abc"), &json!([]))
        );
        assert!(serde_json::from_value::<RunRequest>(json!({ "params": {} })).is_err());
    }
}
