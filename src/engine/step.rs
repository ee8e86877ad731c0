//! The step loop: `when`, `for_each` (each item in turn), `until` (poll), `retry` (attempts with
//! backoff), each attempt rendered, executed within its timeout and recorded.
//!
//! Whether an attempt executes or something stands in for it (a description, in a dry run and
//! in a plan) is decided in one place, [`disposition`]; what a plan says of each step is built
//! in [`super::plan`].

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value as Json};
use tracing::Instrument;

use super::{
    events::{event, found, max_polls, summarize},
    state::{provisional, Items, RunState, StepResult},
    unknown::Touched,
    Engine,
};
use crate::{
    duration::Dur,
    metrics::StepLabels,
    playbook::{ForEach, Step},
    status::{RunStatus, StepEventStatus, StepStatus},
    steps::{Poll, Rendered, RunMeta, RunMode, StepCx, StepError, StepEvent, StepKind, StepOutput},
    store::runs,
    template::{off_runtime, to_json},
};

/// What became of a step's input.
pub(super) enum Done {
    /// It ran: what it produced.
    Ran(StepOutput),
    /// It was described instead of run (a dry run; in a plan, a change, or a step that needs
    /// what a change would produce: `unknown` names those values).
    Described { unknown: Vec<String> },
}

/// What a run does with a step's rendered input. This is the one place that decides between
/// executing a step and standing something in for it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Disposition {
    Execute,
    /// Described, not executed.
    Describe,
    /// A `playbook:` call in a plan: the callee is planned in turn, as a child run.
    PlanCall,
}

/// How `mode` treats a step of `kind` whose input needs unknown values (`needs_unknown`).
pub(super) fn disposition(mode: RunMode, kind: &StepKind, needs_unknown: bool) -> Disposition {
    match mode {
        RunMode::Execute => Disposition::Execute,
        RunMode::DryRun => Disposition::Describe,
        RunMode::Plan if needs_unknown => Disposition::Describe,
        RunMode::Plan => match kind {
            StepKind::Playbook(_) => Disposition::PlanCall,
            // A wait only reads, but a plan does not sit through it.
            StepKind::Wait(_) => Disposition::Describe,
            k if k.is_read() => Disposition::Execute,
            _ => Disposition::Describe,
        },
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
            let (value, touched) = state.traced();
            let holds = off_runtime(deadline, || templates.eval_bool(when, &value)).await;
            if meta.mode == RunMode::Plan && touched.any() {
                return self.would_run_if(step, meta, state, when, touched).await;
            }
            match holds {
                Ok(true) => {}
                Err(_) if meta.mode == RunMode::DryRun => {}
                Ok(false) => {
                    meta.observer.step_event(&StepEvent {
                        summary: Some(format!("when: {when}")),
                        plan: (meta.mode == RunMode::Plan).then(|| super::plan::skip_note(when)),
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
                        error: Some(error),
                        ..StepResult::skipped()
                    };
                }
            }
        }
        meta.observer
            .step_event(&event(meta, step, StepEventStatus::Started));
        let started = Instant::now();

        let result = match self.for_each_items(step, meta, state).await {
            Err(e) => Err(e),
            Ok(Items::One) => self.run_polled(step, meta, state, None).await,
            Ok(Items::Each(items)) => self.run_items(step, meta, state, items).await,
            Ok(Items::Unknown(paths)) => {
                self.plan_unknown_items(step, meta, paths);
                Ok(Done::Described { unknown: vec![] })
            }
        };
        self.finish(meta, step, started, result)
    }

    /// The items of a `for_each` step.
    async fn for_each_items(
        &self,
        step: &Step,
        meta: &RunMeta,
        state: &RunState,
    ) -> Result<Items, String> {
        let Some(fe) = &step.for_each else {
            return Ok(Items::One);
        };
        let templates = &self.services.templates;
        let deadline = meta.deadline_within(step.timeout.as_std());
        let (value, touched) = state.traced();
        let list = off_runtime(deadline, || match fe {
            ForEach::Expr(e) => templates.eval(e, &value).map(|v| to_json(&v)),
            ForEach::List(l) => templates.render_tree(l, &value),
        })
        .await;
        if meta.mode == RunMode::Plan && touched.any() {
            return Ok(Items::Unknown(touched.paths()));
        }
        match list {
            Ok(Json::Array(items)) => Ok(Items::Each(items)),
            Ok(other) => Err(format!("for_each gave {other}, not a list")),
            Err(e) => Err(format!("for_each: {}", crate::template::message(&e))),
        }
    }

    /// Runs the step once per item (as `item`), stopping at the first failure; the rows of every
    /// item are the step's rows, and its output is the list of their outputs. When any item was
    /// described rather than run, so is the step.
    async fn run_items(
        &self,
        step: &Step,
        meta: &RunMeta,
        state: &mut RunState,
        items: Vec<Json>,
    ) -> Result<Done, String> {
        let mut rows = Vec::new();
        let mut outputs = Vec::new();
        let mut error = None;
        let mut described = false;
        for (i, item) in items.into_iter().enumerate() {
            state.ctx.insert("item".into(), item);
            match self.run_polled(step, meta, state, Some(i)).await {
                Ok(Done::Ran(out)) => {
                    rows.extend(out.rows);
                    outputs.push(out.output);
                }
                Ok(Done::Described { .. }) => described = true,
                Err(e) => {
                    error = Some(format!("item {i}: {e}"));
                    break;
                }
            }
        }
        state.ctx.remove("item");
        match error {
            None if described => Ok(Done::Described { unknown: vec![] }),
            None => Ok(Done::Ran(StepOutput {
                rows,
                output: Json::Array(outputs),
            })),
            Some(e) => Err(e),
        }
    }
    fn finish(
        &self,
        meta: &RunMeta,
        step: &Step,
        started: Instant,
        result: Result<Done, String>,
    ) -> StepResult {
        let duration_ms = started.elapsed().as_millis() as u64;
        if meta.mode.changes() {
            let labels = StepLabels {
                playbook: meta.playbook.clone(),
                kind: step.kind.name().to_owned(),
            };
            self.metrics
                .step_duration
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(Done::Described { .. }) => {
                meta.observer.step_event(&StepEvent {
                    duration_ms: Some(duration_ms),
                    ..event(meta, step, StepEventStatus::Planned)
                });
                StepResult {
                    duration_ms,
                    // A dry run's steps read as planned and empty, as they always have.
                    unknown: meta.mode == RunMode::Plan,
                    ..StepResult::unknown()
                }
            }
            Ok(Done::Ran(out)) => {
                let status = StepStatus::Succeeded;
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
                    unknown: false,
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
                    error: Some(e),
                    duration_ms,
                    ..StepResult::skipped()
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
    ) -> Result<Done, String> {
        let Some(until) = &step.until else {
            let (input, done) = self.run_retried(step, meta, state, item).await?;
            if meta.mode == RunMode::Plan {
                self.plan_attempt(step, meta, state, item, &input, &done)
                    .await;
            }
            return Ok(done);
        };
        let (every, within) = self.poll_times(step, state)?;
        let deadline = crate::duration::deadline_in(within.as_std());
        let mut polls = 0u32;
        loop {
            polls += 1;
            let (input, done) = self.run_retried(step, meta, state, item).await?;
            let out = match done {
                Done::Ran(out) => out,
                described => {
                    if meta.mode == RunMode::Plan {
                        self.plan_attempt(step, meta, state, item, &input, &described)
                            .await;
                    }
                    return Ok(described);
                }
            };
            // The check was made, and recorded with the attempt, by `run_retried`; later polls
            // and steps read this poll's result.
            state.set_step(&step.id, &provisional(&out));
            let check = self.check_until(step, meta, state, &out).await;
            if meta.mode == RunMode::Plan {
                // The first poll reads what is there now; the ones after it would read what
                // the changes the plan did not make left.
                return self.plan_poll(step, meta, (every, within), item, &input, out, check);
            }
            match check.map(|(holds, _)| holds) {
                Some(Ok(true)) | None => return Ok(Done::Ran(out)),
                Some(Ok(false)) => {}
                Some(Err(e)) => return Err(e),
            }
            meta.observer.step_event(&StepEvent {
                summary: Some(self.services.masker.mask_str(&summarize(&out))),
                found: Some(found(&self.services.masker, &out)),
                poll: Some(Poll {
                    n: polls,
                    of: max_polls(every.as_std(), within.as_std()),
                }),
                ..event(meta, step, StepEventStatus::Polled)
            });
            if crate::duration::deadline_in(every.as_std()) > deadline {
                return Err(format!(
                    "`{}` still false after {polls} checks within {within}",
                    until.expr
                ));
            }
            meta.cancel.sleep(every.as_std()).await?;
        }
    }

    /// An `until` step's `every` and `within`, templates rendered in the run's context as the
    /// step starts polling.
    pub(super) fn poll_times(&self, step: &Step, state: &RunState) -> Result<(Dur, Dur), String> {
        let Some(until) = &step.until else {
            return Ok((Dur::default(), Dur::default()));
        };
        if let (Some(every), Some(within)) = (until.every.fixed(), until.within.fixed()) {
            return Ok((every, within));
        }
        let (ctx, _) = state.traced();
        let templates = &self.services.templates;
        Ok((
            until.every.resolve("every", templates, &ctx)?,
            until.within.resolve("within", templates, &ctx)?,
        ))
    }

    /// `retry`: attempts with exponential backoff while the error is retryable. Every attempt is
    /// recorded with its rendered input and what it produced.
    async fn run_retried(
        &self,
        step: &Step,
        meta: &RunMeta,
        state: &RunState,
        item: Option<usize>,
    ) -> Result<(Json, Done), String> {
        let (ctx, touched) = state.traced();
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
            let (input, result) = self.attempt(step, meta, &cx, &touched).await;
            let duration_ms = started.elapsed().as_millis() as u64;
            // An `until` step's attempt is a poll: it is the step's success only when the
            // condition holds, and is recorded `polled` otherwise, so a resumed run runs the
            // step again instead of taking a poll for the step's end.
            let polled = match &result {
                Ok(Done::Ran(out)) => !matches!(
                    self.check_until(step, meta, state, out).await,
                    Some((Ok(true), _)) | None
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
                Ok(done) => return Ok((input, done)),
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

    /// One attempt: render, then execute within the step's timeout, or stand a description in
    /// for it (see [`disposition`]). `touched` notes the unknown values the rendering read.
    /// Returns the masked input and the result.
    async fn attempt(
        &self,
        step: &Step,
        meta: &RunMeta,
        cx: &StepCx<'_>,
        touched: &Touched,
    ) -> (Json, Result<Done, StepError>) {
        // Rendering counts against the attempt's time, off the async threads. Its work stops at
        // the run's deadline too; the execution is cut there by the run's own timeout, which
        // ends the run `timed_out` rather than failing the step.
        let own = Instant::now() + cx.timeout;
        let deadline = meta.deadline_within(cx.timeout);
        let rendered = match off_runtime(deadline, || step.kind.render(cx)).await {
            Ok(r) => r,
            // A dry run has no results of earlier steps, so a template that reads them cannot
            // render yet; say so and go on planning. Nor can a plan's template that reads
            // what a change would produce.
            Err(e) if meta.mode == RunMode::DryRun || touched.any() => {
                let input = json!({ "not_rendered": e.to_string() });
                if meta.mode == RunMode::DryRun {
                    self.plan_event(meta, step, &input);
                }
                let unknown = touched.paths();
                return (input, Ok(Done::Described { unknown }));
            }
            Err(e) => return (Json::Null, Err(e)),
        };
        let input = self
            .services
            .masker
            .mask_json(&serde_json::to_value(&rendered).unwrap_or_default());
        let result = match disposition(meta.mode, &step.kind, touched.any()) {
            Disposition::Execute => self.execute(step, cx, rendered, own).await,
            Disposition::Describe => {
                if meta.mode == RunMode::DryRun {
                    self.plan_event(meta, step, &input);
                }
                let unknown = touched.paths();
                return (input, Ok(Done::Described { unknown }));
            }
            Disposition::PlanCall => self.plan_call(step, meta, rendered, &input).await,
        };
        (input, result)
    }

    /// Executes a rendered input within the attempt's time (`own` is when it is up).
    async fn execute(
        &self,
        step: &Step,
        cx: &StepCx<'_>,
        rendered: Rendered,
        own: Instant,
    ) -> Result<Done, StepError> {
        let left = own.saturating_duration_since(Instant::now()) + step.kind.wind_down(cx.timeout);
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
        result.map(Done::Ran)
    }

    fn plan_event(&self, meta: &RunMeta, step: &Step, input: &Json) {
        meta.observer.step_event(&StepEvent {
            input: Some(input.clone()),
            ..event(meta, step, StepEventStatus::Plan)
        });
    }

    /// Whether an `until` step's condition holds on this poll's result (`None` for a step
    /// without `until`); an error says why it could not be evaluated. With it, what notes the
    /// unknown values it read (in a plan).
    pub(super) async fn check_until(
        &self,
        step: &Step,
        meta: &RunMeta,
        state: &RunState,
        out: &StepOutput,
    ) -> Option<(Result<bool, String>, Touched)> {
        let until = step.until.as_ref()?;
        let (value, touched) = state.traced_with(&step.id, &provisional(out));
        let eval_by = meta.deadline_within(step.timeout.as_std());
        let templates = &self.services.templates;
        let holds = off_runtime(eval_by, || templates.eval_bool(&until.expr, &value)).await;
        let holds = holds.map_err(|e| format!("`until` failed: {}", crate::template::message(&e)));
        Some((holds, touched))
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
        StepKind::Wait(w) => (w.0.fixed().unwrap_or_default().as_std())
            .max(step.timeout.as_std())
            .saturating_add(Duration::from_secs(1)),
        // The step stops its child run at its own timeout and waits for it to record its end.
        StepKind::Playbook(_) => step
            .timeout
            .as_std()
            .saturating_add(crate::steps::CHILD_GRACE),
        _ => step.timeout.as_std(),
    }
}
