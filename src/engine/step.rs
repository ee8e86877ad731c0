//! The step loop: `when`, `for_each` (each item in turn), `until` (poll), `retry` (attempts with
//! backoff), each attempt rendered, executed within its timeout and recorded.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use tracing::Instrument;

use super::{
    events::{event, found, max_polls, summarize},
    Engine,
};
use crate::{
    metrics::StepLabels,
    playbook::{ForEach, Step},
    status::{RunStatus, StepEventStatus, StepStatus},
    steps::{Poll, RunMeta, StepCx, StepError, StepEvent, StepKind, StepOutput},
    store::runs::{self, Attempt},
    template::{context_with_secrets, off_runtime, to_json},
};

/// One step's result as later steps read it: `steps.<id>.{status,rows,output,error,duration_ms}`.
#[derive(Debug, Clone, Serialize)]
pub(super) struct StepResult {
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

pub(super) struct RunState {
    pub ctx: Map<String, Json>,
    /// The config's secret `env` entries: in templates as opaque values, never in `ctx`.
    pub secrets: std::collections::BTreeMap<String, String>,
}

impl RunState {
    pub fn value(&self) -> minijinja::Value {
        context_with_secrets(&Json::Object(self.ctx.clone()), &self.secrets)
    }
    pub fn set_step(&mut self, id: &str, r: &StepResult) {
        let steps = self.ctx.entry("steps").or_insert_with(|| json!({}));
        steps[id] = serde_json::to_value(r).unwrap_or_default();
    }
}

impl Engine {
    /// Runs steps in order; returns the failing step's id and error, or `None`.
    pub(super) async fn run_steps(
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
            if let Some(reason) = self.stop_requested(meta).await {
                return Some((step.id.clone(), reason));
            }
            self.refresh_alert(state).await;
            // Every line logged inside the step carries its id (and the run's, from the run's span).
            let span = tracing::info_span!("step", step = %step.id);
            let result = self.run_step(step, meta, state).instrument(span).await;
            state.set_step(&step.id, &result);
            // A step cut short by a cancel stops the run, `continue_on_error` or not.
            let cancelled = meta.cancel.reason().filter(|_| result.failed());
            if let Some(reason) = cancelled {
                return Some((step.id.clone(), reason));
            }
            if result.failed() && !step.continue_on_error {
                return Some((step.id.clone(), result.error.unwrap_or_default()));
            }
        }
        None
    }

    /// Why the run must stop before its next step, if it must: its cancel fired, or the store
    /// says an operator asked (read here too, so a cancel made just before a step is never
    /// late by the watcher's second).
    async fn stop_requested(&self, meta: &RunMeta) -> Option<String> {
        if let Some(reason) = meta.cancel.reason() {
            return Some(reason);
        }
        let standing = runs::standing(&self.services.store, meta.id).await.ok()??;
        let reason = (standing.status == RunStatus::CancelRequested).then(|| {
            standing
                .error
                .unwrap_or_else(|| "cancelled by an operator".to_owned())
        })?;
        meta.cancel.cancel(reason.clone());
        Some(reason)
    }

    async fn run_step(&self, step: &Step, meta: &RunMeta, state: &mut RunState) -> StepResult {
        if let Some(when) = &step.when {
            let deadline = meta.deadline_within(step.timeout.as_std());
            let templates = &self.services.templates;
            let holds = off_runtime(deadline, || templates.eval_bool(when, &state.value())).await;
            match holds {
                Ok(true) => {}
                Err(_) if meta.dry_run => {}
                Ok(false) => {
                    meta.observer.step_event(&StepEvent {
                        summary: Some(format!("when: {when}")),
                        ..event(meta, step, StepEventStatus::Skipped)
                    });
                    return StepResult::skipped();
                }
                Err(e) => {
                    let error = format!("`when` failed: {}", crate::template::message(&e));
                    meta.observer.step_event(&StepEvent {
                        error: Some(error.clone()),
                        ..event(meta, step, StepEventStatus::Failed)
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
            .step_event(&event(meta, step, StepEventStatus::Started));
        let started = Instant::now();

        let result = match self.for_each_items(step, meta, state).await {
            Err(e) => Err(e),
            Ok(None) => self.run_polled(step, meta, state, None).await,
            Ok(Some(items)) => self.run_items(step, meta, state, items).await,
        };
        self.finish(meta, step, started, result)
    }

    /// The items of a `for_each` step, or `None` for a step without one.
    async fn for_each_items(
        &self,
        step: &Step,
        meta: &RunMeta,
        state: &RunState,
    ) -> Result<Option<Vec<Json>>, String> {
        let Some(fe) = &step.for_each else {
            return Ok(None);
        };
        let templates = &self.services.templates;
        let deadline = meta.deadline_within(step.timeout.as_std());
        let list = off_runtime(deadline, || match fe {
            ForEach::Expr(e) => templates.eval(e, &state.value()).map(|v| to_json(&v)),
            ForEach::List(l) => templates.render_tree(l, &state.value()),
        })
        .await;
        match list {
            Ok(Json::Array(items)) => Ok(Some(items)),
            Ok(other) => Err(format!("for_each gave {other}, not a list")),
            Err(e) => Err(format!("for_each: {}", crate::template::message(&e))),
        }
    }

    /// Runs the step once per item (as `item`), stopping at the first failure; the rows of every
    /// item are the step's rows, and its output is the list of their outputs.
    async fn run_items(
        &self,
        step: &Step,
        meta: &RunMeta,
        state: &mut RunState,
        items: Vec<Json>,
    ) -> Result<StepOutput, String> {
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
                    found: Some(found(&self.services.masker, &out)),
                    ..event(meta, step, status.into())
                });
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
                    continued: step.continue_on_error && !meta.cancel.is_cancelled(),
                    ..event(meta, step, StepEventStatus::Failed)
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
        let deadline = crate::duration::deadline_in(until.within.as_std());
        let mut polls = 0u32;
        loop {
            polls += 1;
            let out = self.run_retried(step, meta, state, item).await?;
            if meta.dry_run {
                return Ok(out);
            }
            // The check was made, and recorded with the attempt, by `run_retried`; later polls
            // and steps read this poll's result.
            state.set_step(&step.id, &provisional(&out));
            match self.check_until(step, meta, state, &out).await {
                Some(Ok(true)) | None => return Ok(out),
                Some(Ok(false)) => {}
                Some(Err(e)) => return Err(e),
            }
            meta.observer.step_event(&StepEvent {
                summary: Some(self.services.masker.mask_str(&summarize(&out))),
                found: Some(found(&self.services.masker, &out)),
                poll: Some(Poll {
                    n: polls,
                    of: max_polls(until.every.as_std(), until.within.as_std()),
                }),
                ..event(meta, step, StepEventStatus::Polled)
            });
            if crate::duration::deadline_in(until.every.as_std()) > deadline {
                return Err(format!(
                    "`{}` still false after {polls} checks within {}",
                    until.expr, until.within
                ));
            }
            meta.cancel.sleep(until.every.as_std()).await?;
        }
    }

    /// `retry`: attempts with exponential backoff while the error is retryable. Every attempt is
    /// recorded with its rendered input and what it produced.
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
            timeout: step_timeout(step),
        };
        let mut attempt = 0;
        loop {
            // A cancelled run starts no attempt: no next `for_each` item, `until` check or retry.
            if let Some(reason) = meta.cancel.reason() {
                return Err(reason);
            }
            attempt += 1;
            let started_at = Utc::now();
            let started = Instant::now();
            let (input, result) = self.attempt(step, meta, &cx).await;
            let duration_ms = started.elapsed().as_millis() as u64;
            // An `until` step's attempt is a poll: it is the step's success only when the
            // condition holds, and is recorded `polled` otherwise, so a resumed run runs the
            // step again instead of taking a poll for the step's end.
            let polled = match &result {
                Ok(out) if !meta.dry_run => !matches!(
                    self.check_until(step, meta, state, out).await,
                    Some(Ok(true)) | None
                ),
                _ => false,
            };
            self.record_attempt(
                meta,
                step,
                (attempt, item),
                started_at,
                duration_ms,
                &input,
                &result,
                polled,
            )
            .await;
            let err = match result {
                Ok(out) => return Ok(out),
                Err(e) => e,
            };
            match retry_delay(step, attempt, &err) {
                Some(delay) => {
                    let message = self.services.masker.mask_str(&err.to_string());
                    tracing::warn!(run_id = meta.id, step = %step.id, attempt, error = %message, "Step failed; retrying.");
                    meta.cancel.sleep(delay).await?;
                }
                None => {
                    let suffix = if attempt > 1 {
                        format!(" (after {attempt} attempts)")
                    } else {
                        String::new()
                    };
                    let message = self.services.masker.mask_str(&err.to_string());
                    return Err(format!("{message}{suffix}"));
                }
            }
        }
    }

    /// One attempt: render, then execute within the step's timeout (or, in a dry run, report
    /// the rendered input as planned). Returns the masked input and the result.
    async fn attempt(
        &self,
        step: &Step,
        meta: &RunMeta,
        cx: &StepCx<'_>,
    ) -> (Json, Result<StepOutput, StepError>) {
        // Rendering counts against the attempt's time, off the async threads. Its work stops at
        // the run's deadline too; the execution is cut there by the run's own timeout, which
        // ends the run `timed_out` rather than failing the step.
        let own = Instant::now() + cx.timeout;
        let deadline = meta.deadline_within(cx.timeout);
        let rendered = match off_runtime(deadline, || step.kind.render(cx)).await {
            Ok(r) => r,
            // A dry run has no results of earlier steps, so a template that reads them cannot
            // render yet; say so and go on planning.
            Err(e) if meta.dry_run => {
                let input = json!({ "not_rendered": e.to_string() });
                self.plan_event(meta, step, &input);
                return (input, Ok(StepOutput::default()));
            }
            Err(e) => return (Json::Null, Err(e)),
        };
        let input = self
            .services
            .masker
            .mask_json(&serde_json::to_value(&rendered).unwrap_or_default());
        if meta.dry_run {
            self.plan_event(meta, step, &input);
            return (input, Ok(StepOutput::default()));
        }
        let left = own.saturating_duration_since(Instant::now());
        let result = match tokio::time::timeout(left, step.kind.execute(rendered, cx)).await {
            Ok(r) => r,
            Err(_) => {
                let msg = format!("timed out after {}", crate::duration::Dur(cx.timeout));
                Err(if step.kind.retries_safely() {
                    StepError::retryable(msg)
                } else {
                    StepError::fatal(msg)
                })
            }
        };
        (input, result)
    }

    fn plan_event(&self, meta: &RunMeta, step: &Step, input: &Json) {
        meta.observer.step_event(&StepEvent {
            input: Some(input.clone()),
            ..event(meta, step, StepEventStatus::Plan)
        });
    }

    /// Whether an `until` step's condition holds on this poll's result (`None` for a step
    /// without `until`); an error says why it could not be evaluated.
    async fn check_until(
        &self,
        step: &Step,
        meta: &RunMeta,
        state: &RunState,
        out: &StepOutput,
    ) -> Option<Result<bool, String>> {
        let until = step.until.as_ref()?;
        let mut ctx = state.ctx.clone();
        let steps = ctx.entry("steps").or_insert_with(|| json!({}));
        steps[step.id.as_str()] = serde_json::to_value(provisional(out)).unwrap_or_default();
        let value = crate::template::context(&Json::Object(ctx));
        let eval_by = meta.deadline_within(step.timeout.as_std());
        let templates = &self.services.templates;
        let holds = off_runtime(eval_by, || templates.eval_bool(&until.expr, &value)).await;
        Some(holds.map_err(|e| format!("`until` failed: {}", crate::template::message(&e))))
    }

    /// Records one attempt; `polled` for a poll of an `until` step whose condition did not hold.
    #[allow(clippy::too_many_arguments)]
    async fn record_attempt(
        &self,
        meta: &RunMeta,
        step: &Step,
        (attempt, item): (u32, Option<usize>),
        started_at: chrono::DateTime<Utc>,
        duration_ms: u64,
        input: &Json,
        result: &Result<StepOutput, StepError>,
        polled: bool,
    ) {
        let masker = &self.services.masker;
        let (status, output, error) = match result {
            Ok(out) => (
                if meta.dry_run {
                    StepStatus::Planned
                } else if polled {
                    StepStatus::Polled
                } else {
                    StepStatus::Succeeded
                },
                masker.mask_json(&json!({ "rows": out.rows, "output": out.output })),
                None,
            ),
            Err(e) => (
                StepStatus::Failed,
                Json::Null,
                Some(masker.mask_str(&e.to_string())),
            ),
        };
        let record = Attempt {
            run_id: meta.id,
            step_id: &step.id,
            attempt,
            item,
            status,
            input,
            output: &output,
            error: error.as_deref(),
            started_at,
            duration_ms,
        };
        if let Err(e) = runs::record_attempt(&self.services.store, record).await {
            tracing::error!(run_id = meta.id, step = %step.id, error = %e, "Recording a step attempt failed.");
        }
    }
}

/// A poll's result as the `until` condition and later polls read it.
fn provisional(out: &StepOutput) -> StepResult {
    StepResult {
        status: StepStatus::Succeeded,
        rows: out.rows.clone(),
        output: out.output.clone(),
        error: None,
        duration_ms: 0,
    }
}

/// How long to wait before attempt `attempt + 1`, or `None` when there is none: the error is
/// fatal or the attempts are used up. The backoff doubles from `retry.backoff` (a `Retry-After`
/// the step reports wins), capped at ten minutes.
pub(super) fn retry_delay(step: &Step, attempt: u32, err: &StepError) -> Option<Duration> {
    let StepError::Retryable { after, .. } = err else {
        return None;
    };
    if attempt >= step.retry.attempts {
        return None;
    }
    let backoff = after.unwrap_or_else(|| {
        step.retry
            .backoff
            .as_std()
            .saturating_mul(1 << (attempt - 1).min(10))
    });
    Some(backoff.min(Duration::from_secs(600)))
}

/// The deadline of one attempt: an `approve` or `wait` step gets at least its own duration, a
/// `playbook` step the time to record the end of a child run it stopped.
fn step_timeout(step: &Step) -> Duration {
    match &step.kind {
        StepKind::Approve(a) => {
            (a.timeout.as_std().max(step.timeout.as_std())).saturating_add(Duration::from_secs(5))
        }
        StepKind::Wait(w) => {
            (w.0.as_std().max(step.timeout.as_std())).saturating_add(Duration::from_secs(1))
        }
        // The step stops its child run at its own timeout and waits for it to record its end.
        StepKind::Playbook(_) => step
            .timeout
            .as_std()
            .saturating_add(crate::steps::CHILD_GRACE),
        _ => step.timeout.as_std(),
    }
}
