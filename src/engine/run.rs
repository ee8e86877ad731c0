//! The run loop: render ▸ evaluate `when` ▸ execute ▸ record ▸ next, with retries, timeouts,
//! `for_each`, `until`, `on_failure` and the playbook's deadline.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

use super::{Engine, EngineError};
use crate::{
    metrics::{RunLabels, StepLabels},
    playbook::{resolve_params, ForEach, Step},
    status::{RunStatus, StepEventStatus, StepStatus},
    steps::{
        ChildOutcome, Launcher, Observer, RunMeta, StepCx, StepError, StepEvent, StepKind,
        StepOutput,
    },
    store::runs::{self, Attempt, NewRun},
    stream::Settings,
    template::{context, to_json},
};

/// The error of a run an operator cancelled.
const CANCELLED: &str = "cancelled by an operator";

/// What starts a run. Serialized, it is the payload of a `runbook.run` queue command:
/// `{"playbook", "params", "trigger", "alert", "alerts"}`; the other fields are not queued.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRequest {
    pub playbook: String,
    /// Parameter overrides as text, checked against the playbook's types.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// `{"kind": "cli" | "alert" | "schedule" | "api" | "playbook", ...}`.
    #[serde(default)]
    pub trigger: Json,
    /// The alert that matched, and its group.
    #[serde(default)]
    pub alert: Option<Json>,
    #[serde(default)]
    pub alerts: Vec<Json>,
    #[serde(skip)]
    pub dry_run: bool,
    /// The queue command carrying this run, when a worker runs it.
    #[serde(skip)]
    pub command_id: Option<i64>,
    /// Continue this interrupted run instead of starting a new one.
    #[serde(skip)]
    pub resume: Option<i64>,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub run_id: i64,
    pub playbook: String,
    /// `succeeded`, `failed`, `timed_out`, `cancelled`, or `planned` for a dry run.
    pub status: RunStatus,
    pub failed_step: Option<String>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub steps: Json,
}

/// One step's result as later steps read it: `steps.<id>.{status,rows,output,error,duration_ms}`.
#[derive(Debug, Clone, Serialize)]
struct StepResult {
    status: StepStatus,
    rows: Vec<Json>,
    output: Json,
    error: Option<String>,
    duration_ms: u64,
}

impl StepResult {
    fn skipped() -> Self {
        StepResult {
            status: StepStatus::Skipped,
            rows: vec![],
            output: Json::Null,
            error: None,
            duration_ms: 0,
        }
    }
    fn failed(&self) -> bool {
        self.status == StepStatus::Failed
    }
}

struct RunState {
    ctx: Map<String, Json>,
}

impl RunState {
    fn value(&self) -> minijinja::Value {
        context(&Json::Object(self.ctx.clone()))
    }
    fn set_step(&mut self, id: &str, r: &StepResult) {
        let steps = self.ctx.entry("steps").or_insert_with(|| json!({}));
        steps[id] = serde_json::to_value(r).unwrap_or_default();
    }
}

fn summarize(out: &StepOutput) -> String {
    let mut parts = Vec::new();
    if !out.rows.is_empty() {
        parts.push(format!(
            "{} row{}",
            out.rows.len(),
            if out.rows.len() == 1 { "" } else { "s" }
        ));
    }
    if !out.output.is_null() {
        let mut text = out.output.to_string();
        if text.len() > 120 {
            let mut end = 117;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        parts.push(text);
    }
    parts.join(" ")
}

impl Engine {
    /// Runs a playbook to its end and records it. Errors are reasons it could not start.
    pub async fn run(
        &self,
        req: RunRequest,
        observer: Arc<dyn Observer>,
    ) -> Result<RunOutcome, EngineError> {
        self.run_at_depth(req, observer, None, 0).await
    }

    /// A `playbook:` step's child run.
    async fn run_child(
        &self,
        name: &str,
        params: BTreeMap<String, String>,
        parent: &RunMeta,
    ) -> Result<RunOutcome, EngineError> {
        let req = RunRequest {
            playbook: name.to_owned(),
            params,
            trigger: json!({ "kind": "playbook", "parent_run": parent.id, "parent_playbook": parent.playbook }),
            dry_run: parent.dry_run,
            ..Default::default()
        };
        Box::pin(self.run_at_depth(
            req,
            parent.observer.clone(),
            Some(parent.id),
            parent.depth + 1,
        ))
        .await
    }

    async fn run_at_depth(
        &self,
        req: RunRequest,
        observer: Arc<dyn Observer>,
        parent: Option<i64>,
        depth: u32,
    ) -> Result<RunOutcome, EngineError> {
        let catalog = self.catalog();
        let pb = catalog
            .get(&req.playbook)
            .ok_or_else(|| EngineError::UnknownPlaybook(req.playbook.clone()))?;
        let params = resolve_params(&pb.params, &req.params).map_err(EngineError::Params)?;
        let settings =
            Settings::load(&self.services.store, &self.services.config.streaming).await?;
        let (run_id, done) = match req.resume {
            Some(id) => (id, runs::succeeded_steps(&self.services.store, id).await?),
            None => {
                let id = runs::create_run(
                    &self.services.store,
                    NewRun {
                        playbook: &pb.name,
                        trigger: self.services.masker.mask_json(&req.trigger),
                        params: self
                            .services
                            .masker
                            .mask_json(&Json::Object(params.clone())),
                        dry_run: req.dry_run,
                        parent_id: parent,
                        command_id: req.command_id,
                        status: RunStatus::Running,
                    },
                )
                .await?;
                (id, Map::new())
            }
        };
        let meta = RunMeta {
            id: run_id,
            playbook: pb.name.clone(),
            dry_run: req.dry_run,
            depth,
            observer,
        };
        let mut ctx = Map::new();
        ctx.insert("params".into(), Json::Object(params));
        ctx.insert(
            "alert".into(),
            req.alert
                .clone()
                .unwrap_or_else(|| json!({ "labels": {}, "annotations": {} })),
        );
        ctx.insert("alerts".into(), Json::Array(req.alerts.clone()));
        ctx.insert("steps".into(), Json::Object(done));
        ctx.insert("runtime".into(), settings.to_json());
        ctx.insert("run".into(), json!({ "id": run_id, "playbook": pb.name, "trigger": req.trigger, "dry_run": req.dry_run }));
        ctx.insert("now".into(), json!(runs::timestamp(Utc::now())));
        ctx.insert(
            "env".into(),
            Json::Object(self.services.config.template_env()),
        );
        let mut state = RunState { ctx };

        let started = Instant::now();
        tracing::info!(run_id, playbook = %pb.name, dry_run = req.dry_run, "Run started.");
        let body = self.run_steps(&pb.steps, &meta, &mut state);
        let (status, failed) = match tokio::time::timeout(pb.timeout.as_std(), body).await {
            Ok(None) => (
                if req.dry_run {
                    RunStatus::Planned
                } else {
                    RunStatus::Succeeded
                },
                None,
            ),
            Ok(Some((step, error))) if error == CANCELLED => {
                (RunStatus::Cancelled, Some((step, error)))
            }
            Ok(Some((step, error))) => (RunStatus::Failed, Some((step, error))),
            Err(_) => (
                RunStatus::TimedOut,
                Some((
                    "".to_owned(),
                    format!("the playbook did not finish within {}", pb.timeout),
                )),
            ),
        };
        // A cancel is deliberate: it does not page anyone through on_failure.
        if let Some((step, error)) = failed.as_ref().filter(|_| status != RunStatus::Cancelled) {
            if !pb.on_failure.is_empty() {
                state
                    .ctx
                    .insert("failed_step".into(), json!({ "id": step, "error": error }));
                // on_failure gets its own deadline so a timed-out run can still page someone.
                let cleanup = self.run_steps(&pb.on_failure, &meta, &mut state);
                if tokio::time::timeout(Duration::from_secs(300), cleanup)
                    .await
                    .is_err()
                {
                    tracing::warn!(run_id, "on_failure steps did not finish within 5 minutes.");
                }
            }
        }
        let (failed_step, error) = match failed {
            Some((s, e)) => (
                Some(s).filter(|s| !s.is_empty()),
                Some(self.services.masker.mask_str(&e)),
            ),
            None => (None, None),
        };
        runs::finish_run(
            &self.services.store,
            run_id,
            status,
            failed_step.as_deref(),
            error.as_deref(),
        )
        .await?;
        if !req.dry_run {
            let labels = RunLabels {
                playbook: pb.name.clone(),
                status: status.to_string(),
            };
            self.metrics.runs.get_or_create(&labels).inc();
        }
        tracing::info!(run_id, playbook = %pb.name, status = %status, "Run finished.");
        Ok(RunOutcome {
            run_id,
            playbook: pb.name.clone(),
            status,
            failed_step,
            error,
            duration_ms: started.elapsed().as_millis() as u64,
            steps: self.services.masker.mask_json(&state.ctx["steps"]),
        })
    }

    /// Runs steps in order; returns the failing step's id and error, or `None`.
    async fn run_steps(
        &self,
        steps: &[Step],
        meta: &RunMeta,
        state: &mut RunState,
    ) -> Option<(String, String)> {
        for step in steps {
            // A resumed run keeps what its steps already did.
            if state.ctx["steps"]
                .get(&step.id)
                .is_some_and(|s| s["status"] == StepStatus::Succeeded.as_str())
            {
                continue;
            }
            if let Some(reason) = self.cancel_requested(meta.id).await {
                return Some((step.id.clone(), reason));
            }
            let result = self.run_step(step, meta, state).await;
            state.set_step(&step.id, &result);
            if result.failed() && !step.continue_on_error {
                return Some((step.id.clone(), result.error.unwrap_or_default()));
            }
        }
        None
    }

    async fn cancel_requested(&self, run_id: i64) -> Option<String> {
        runs::cancel_requested(&self.services.store, run_id)
            .await
            .ok()?
            .then(|| CANCELLED.to_owned())
    }

    fn event(&self, meta: &RunMeta, step: &Step, status: StepEventStatus) -> StepEvent {
        StepEvent {
            run_id: meta.id,
            playbook: meta.playbook.clone(),
            step: step.id.clone(),
            kind: step.kind.name(),
            depth: meta.depth,
            status,
            duration_ms: None,
            summary: None,
            error: None,
            input: None,
        }
    }

    async fn run_step(&self, step: &Step, meta: &RunMeta, state: &mut RunState) -> StepResult {
        if let Some(when) = &step.when {
            match self.services.templates.eval_bool(when, &state.value()) {
                Ok(true) => {}
                Err(_) if meta.dry_run => {}
                Ok(false) => {
                    meta.observer.step_event(&StepEvent {
                        summary: Some(format!("when: {when}")),
                        ..self.event(meta, step, StepEventStatus::Skipped)
                    });
                    return StepResult::skipped();
                }
                Err(e) => {
                    let error = format!("`when` failed: {}", crate::template::message(&e));
                    meta.observer.step_event(&StepEvent {
                        error: Some(error.clone()),
                        ..self.event(meta, step, StepEventStatus::Failed)
                    });
                    return StepResult {
                        status: StepStatus::Failed,
                        rows: vec![],
                        output: Json::Null,
                        error: Some(error),
                        duration_ms: 0,
                    };
                }
            }
        }
        meta.observer
            .step_event(&self.event(meta, step, StepEventStatus::Started));
        let started = Instant::now();

        let items: Option<Vec<Json>> = match &step.for_each {
            None => None,
            Some(fe) => {
                let list = match fe {
                    ForEach::Expr(e) => self
                        .services
                        .templates
                        .eval(e, &state.value())
                        .map(|v| to_json(&v)),
                    ForEach::List(l) => self.services.templates.render_tree(l, &state.value()),
                };
                match list {
                    Ok(Json::Array(items)) => Some(items),
                    Ok(other) => {
                        return self.finish(
                            meta,
                            step,
                            started,
                            Err(format!("for_each gave {other}, not a list")),
                        )
                    }
                    Err(e) => {
                        return self.finish(
                            meta,
                            step,
                            started,
                            Err(format!("for_each: {}", crate::template::message(&e))),
                        )
                    }
                }
            }
        };

        let result = match items {
            None => self.run_polled(step, meta, state, None).await,
            Some(items) => {
                let mut rows = Vec::new();
                let mut outputs = Vec::new();
                let mut error = None;
                for (i, item) in items.into_iter().enumerate() {
                    state.ctx.insert("item".into(), item);
                    match self.run_polled(step, meta, state, Some(i)).await {
                        Ok(out) => {
                            rows.extend(out.rows);
                            outputs.push(out.output);
                        }
                        Err(e) => {
                            error = Some(format!("item {i}: {e}"));
                            break;
                        }
                    }
                }
                state.ctx.remove("item");
                match error {
                    None => Ok(StepOutput {
                        rows,
                        output: Json::Array(outputs),
                    }),
                    Some(e) => Err(e),
                }
            }
        };
        self.finish(meta, step, started, result)
    }

    fn finish(
        &self,
        meta: &RunMeta,
        step: &Step,
        started: Instant,
        result: Result<StepOutput, String>,
    ) -> StepResult {
        let duration_ms = started.elapsed().as_millis() as u64;
        if !meta.dry_run {
            let labels = StepLabels {
                playbook: meta.playbook.clone(),
                kind: step.kind.name().to_owned(),
            };
            self.metrics
                .step_duration
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
        }
        let status = if meta.dry_run {
            StepStatus::Planned
        } else {
            StepStatus::Succeeded
        };
        match result {
            Ok(out) => {
                meta.observer.step_event(&StepEvent {
                    duration_ms: Some(duration_ms),
                    summary: Some(self.services.masker.mask_str(&summarize(&out))),
                    ..self.event(meta, step, status.into())
                });
                let out = StepOutput {
                    rows: out.rows,
                    output: out.output,
                };
                StepResult {
                    status,
                    rows: out.rows,
                    output: out.output,
                    error: None,
                    duration_ms,
                }
            }
            Err(e) => {
                let e = self.services.masker.mask_str(&e);
                meta.observer.step_event(&StepEvent {
                    duration_ms: Some(duration_ms),
                    error: Some(e.clone()),
                    ..self.event(meta, step, StepEventStatus::Failed)
                });
                StepResult {
                    status: StepStatus::Failed,
                    rows: vec![],
                    output: Json::Null,
                    error: Some(e),
                    duration_ms,
                }
            }
        }
    }

    /// `until`/`every`/`within`: repeat until the condition holds or time runs out.
    async fn run_polled(
        &self,
        step: &Step,
        meta: &RunMeta,
        state: &mut RunState,
        item: Option<usize>,
    ) -> Result<StepOutput, String> {
        let Some(until) = &step.until else {
            return self.run_retried(step, meta, state, item).await;
        };
        let deadline = Instant::now() + until.within.as_std();
        let mut polls = 0u32;
        loop {
            polls += 1;
            let out = self.run_retried(step, meta, state, item).await?;
            if meta.dry_run {
                return Ok(out);
            }
            let provisional = StepResult {
                status: StepStatus::Succeeded,
                rows: out.rows.clone(),
                output: out.output.clone(),
                error: None,
                duration_ms: 0,
            };
            state.set_step(&step.id, &provisional);
            match self
                .services
                .templates
                .eval_bool(&until.expr, &state.value())
            {
                Ok(true) => return Ok(out),
                Ok(false) => {}
                Err(e) => return Err(format!("`until` failed: {}", crate::template::message(&e))),
            }
            if Instant::now() + until.every.as_std() > deadline {
                return Err(format!(
                    "`{}` still false after {polls} checks within {}",
                    until.expr, until.within
                ));
            }
            tokio::time::sleep(until.every.as_std()).await;
        }
    }

    /// `retry`: attempts with exponential backoff while the error is retryable.
    async fn run_retried(
        &self,
        step: &Step,
        meta: &RunMeta,
        state: &RunState,
        item: Option<usize>,
    ) -> Result<StepOutput, String> {
        let ctx = state.value();
        let cx = StepCx {
            services: &self.services,
            launcher: self,
            run: meta,
            step_id: &step.id,
            ctx: &ctx,
            timeout: self.step_timeout(step),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started_at = Utc::now();
            let started = Instant::now();
            let (input, result) = match step.kind.render(&cx) {
                // A dry run has no results of earlier steps, so a template that reads them cannot
                // render yet; say so and go on planning.
                Err(e) if meta.dry_run => {
                    let input = json!({ "not_rendered": e.to_string() });
                    meta.observer.step_event(&StepEvent {
                        input: Some(input.clone()),
                        ..self.event(meta, step, StepEventStatus::Plan)
                    });
                    (input, Ok(StepOutput::default()))
                }
                Err(e) => (Json::Null, Err(e)),
                Ok(rendered) => {
                    let input = self
                        .services
                        .masker
                        .mask_json(&serde_json::to_value(&rendered).unwrap_or_default());
                    if meta.dry_run {
                        meta.observer.step_event(&StepEvent {
                            input: Some(input.clone()),
                            ..self.event(meta, step, StepEventStatus::Plan)
                        });
                        (input, Ok(StepOutput::default()))
                    } else {
                        let r = match tokio::time::timeout(
                            cx.timeout,
                            step.kind.execute(rendered, &cx),
                        )
                        .await
                        {
                            Ok(r) => r,
                            Err(_) => Err(StepError::retryable(format!(
                                "timed out after {}",
                                crate::duration::Dur(cx.timeout)
                            ))),
                        };
                        (input, r)
                    }
                }
            };
            let duration_ms = started.elapsed().as_millis() as u64;
            let (status, output, error) = match &result {
                Ok(out) => (
                    if meta.dry_run {
                        StepStatus::Planned
                    } else {
                        StepStatus::Succeeded
                    },
                    self.services
                        .masker
                        .mask_json(&json!({ "rows": out.rows, "output": out.output })),
                    None,
                ),
                Err(e) => (
                    StepStatus::Failed,
                    Json::Null,
                    Some(self.services.masker.mask_str(&e.to_string())),
                ),
            };
            let record = Attempt {
                run_id: meta.id,
                step_id: &step.id,
                attempt,
                item,
                status,
                input: &input,
                output: &output,
                error: error.as_deref(),
                started_at,
                duration_ms,
            };
            if let Err(e) = runs::record_attempt(&self.services.store, record).await {
                tracing::error!(run_id = meta.id, step = %step.id, error = %e, "Recording a step attempt failed.");
            }
            match result {
                Ok(out) => return Ok(out),
                Err(StepError::Retryable { message, after }) if attempt < step.retry.attempts => {
                    let backoff = after.unwrap_or_else(|| {
                        step.retry
                            .backoff
                            .as_std()
                            .saturating_mul(1 << (attempt - 1).min(10))
                    });
                    tracing::warn!(run_id = meta.id, step = %step.id, attempt, error = %self.services.masker.mask_str(&message), "Step failed; retrying.");
                    tokio::time::sleep(backoff.min(Duration::from_secs(600))).await;
                }
                Err(e) => {
                    let suffix = if attempt > 1 {
                        format!(" (after {attempt} attempts)")
                    } else {
                        String::new()
                    };
                    return Err(format!(
                        "{}{suffix}",
                        self.services.masker.mask_str(&e.to_string())
                    ));
                }
            }
        }
    }

    fn step_timeout(&self, step: &Step) -> Duration {
        match &step.kind {
            StepKind::Approve(a) => {
                a.timeout.as_std().max(step.timeout.as_std()) + Duration::from_secs(5)
            }
            StepKind::Wait(w) => w.as_std().max(step.timeout.as_std()) + Duration::from_secs(1),
            _ => step.timeout.as_std(),
        }
    }
}

impl Launcher for Engine {
    fn run_child<'a>(
        &'a self,
        name: &'a str,
        params: BTreeMap<String, String>,
        parent: &'a RunMeta,
    ) -> futures::future::BoxFuture<'a, Result<ChildOutcome, String>> {
        Box::pin(async move {
            let outcome = Engine::run_child(self, name, params, parent)
                .await
                .map_err(|e| e.to_string())?;
            Ok(ChildOutcome {
                run_id: outcome.run_id,
                status: outcome.status,
                error: outcome.error,
                steps: outcome.steps,
            })
        })
    }
}
