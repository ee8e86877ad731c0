//! What a plan (`runbook run NAME --plan`) says of each step, sent to the run's observer as
//! `plan` events: a read that ran with what it found, a change with its rendered input in words,
//! a skip with the `when` that was false, a step that would run if a `when` that needs a
//! change's output holds, and a step whose input needs such an output. The step loop decides
//! what runs ([`super::step::disposition`]); this file only tells.

use chrono::Utc;
use serde_json::{json, Value as Json};

use super::{
    describe,
    events::{event, summarize},
    state::{RunState, StepResult},
    step::Done,
    unknown::Touched,
    Engine,
};
use crate::{
    playbook::{ForEach, Step},
    status::StepEventStatus,
    steps::{
        PlanAction, PlanNote, Rendered, RunMeta, StepCx, StepError, StepEvent, StepKind, StepOutput,
    },
    stream::ops::{self, Op},
    template::off_runtime,
};

/// The most rows of a read a plan event carries (the run record keeps them all).
const SHOWN_ROWS: usize = 20;

/// A step skipped because `when` is false.
pub(super) fn skip_note(when: &str) -> PlanNote {
    PlanNote {
        when: Some(when.to_owned()),
        ..PlanNote::new(PlanAction::Skip, format!("skipped: `{when}` is false"))
    }
}

impl Engine {
    /// Sends one entry of the plan.
    fn plan_entry(&self, meta: &RunMeta, step: &Step, input: Option<Json>, note: PlanNote) {
        meta.observer.step_event(&StepEvent {
            input,
            plan: Some(note),
            ..event(meta, step, StepEventStatus::Plan)
        });
    }

    /// What a step would do, in words, from its shown input; with its poll, if it has one.
    fn would_text(&self, step: &Step, state: &RunState, shown: &Json) -> String {
        let runtime = state.ctx.get("runtime").cloned().unwrap_or(Json::Null);
        let mut would = describe::would(step, shown, &runtime);
        if let Some(u) = &step.until {
            let poll = match self.poll_times(step, state) {
                Ok((every, within)) => describe::poll(every, within, &u.expr),
                Err(_) => describe::poll(&u.every, &u.within, &u.expr),
            };
            would.push_str(&format!("; then {poll}"));
        }
        would
    }

    /// A step whose `when` read what a change would produce: it is described as running if
    /// the condition holds, and what it would produce is unknown.
    pub(super) async fn would_run_if(
        &self,
        step: &Step,
        meta: &RunMeta,
        state: &RunState,
        when: &str,
        touched: Touched,
    ) -> StepResult {
        let (ctx, _) = state.traced();
        let cx = StepCx {
            services: &self.services,
            launcher: self,
            run: meta,
            step_id: &step.id,
            ctx: &ctx,
            timeout: step.timeout.as_std(),
        };
        let deadline = meta.deadline_within(step.timeout.as_std());
        let input = match off_runtime(deadline, || step.kind.render(&cx)).await {
            Ok(r) => self
                .services
                .masker
                .mask_json(&serde_json::to_value(&r).unwrap_or_default()),
            Err(e) => json!({ "not_rendered": e.to_string() }),
        };
        let shown = describe::shown_input(&step.kind, &input);
        let note = PlanNote {
            when: Some(when.to_owned()),
            unknown: touched.paths(),
            ..PlanNote::new(
                PlanAction::WouldRunIf,
                format!("{} if `{when}`", self.would_text(step, state, &shown)),
            )
        };
        self.plan_entry(meta, step, Some(shown), note);
        let done = Ok(Done::Described {
            unknown: touched.paths(),
        });
        self.record_attempt(meta, step, (1, None), Utc::now(), 0, &input, &done, false)
            .await;
        StepResult::unknown()
    }

    /// A `for_each` step whose list needs what a change would produce.
    pub(super) fn plan_unknown_items(&self, step: &Step, meta: &RunMeta, unknown: Vec<String>) {
        let list = match &step.for_each {
            Some(ForEach::Expr(e)) => format!("`{e}`"),
            _ => "its list".to_owned(),
        };
        let note = PlanNote {
            unknown,
            ..PlanNote::new(
                PlanAction::Unknown,
                format!(
                    "would run {} once for each item of {list}",
                    step.kind.name()
                ),
            )
        };
        self.plan_entry(meta, step, None, note);
    }

    /// The entry of one attempt of a step without `until`: a read with what it found, a change,
    /// or a step whose input needs what a change would produce. A planned call has its entry
    /// from [`Engine::plan_call`].
    pub(super) async fn plan_attempt(
        &self,
        step: &Step,
        meta: &RunMeta,
        state: &RunState,
        item: Option<usize>,
        input: &Json,
        done: &Done,
    ) {
        let shown = describe::shown_input(&step.kind, input);
        if let Done::Ran(out) = done {
            if step.kind.calls().is_some() {
                return;
            }
            // A read shows what it found, as in a run.
            let note = self.read_note(out, format!("read {}", summarize(out)));
            meta.observer.step_event(&StepEvent {
                input: Some(shown),
                plan: Some(PlanNote { item, ..note }),
                found: Some(super::events::found(&self.services.masker, out)),
                ..event(meta, step, StepEventStatus::Plan)
            });
            return;
        }
        let note = match done {
            Done::Ran(_) => unreachable!("a read's entry is sent above"),
            Done::Described { unknown } if unknown.is_empty() && step.kind.calls().is_some() => {
                return
            }
            Done::Described { unknown } => {
                let reads = step.kind.is_read() && !matches!(step.kind, StepKind::Wait(_));
                let action = if reads {
                    PlanAction::Unknown
                } else {
                    PlanAction::Change
                };
                let mut would = self.would_text(step, state, &shown);
                if let Some(n) = self.dlq_reach(step, &shown, unknown).await {
                    would.push_str(&format!(" ({n} now)"));
                }
                PlanNote {
                    unknown: unknown.clone(),
                    ..PlanNote::new(action, would)
                }
            }
        };
        self.plan_entry(meta, step, Some(shown), PlanNote { item, ..note });
    }

    /// The entry of an `until` step that read once: what the first poll found, and whether the
    /// condition holds on it. When it does not (or cannot be known), later polls would read
    /// what the changes the plan did not make left: the step's result is unknown.
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn plan_poll(
        &self,
        step: &Step,
        meta: &RunMeta,
        (every, within): (crate::duration::Dur, crate::duration::Dur),
        item: Option<usize>,
        input: &Json,
        out: StepOutput,
        check: Option<(Result<bool, String>, Touched)>,
    ) -> Result<Done, String> {
        let Some(until) = &step.until else {
            return Ok(Done::Ran(out));
        };
        let poll = describe::poll(every, within, &until.expr);
        let found = summarize(&out);
        let (now, unknown, holds) = match check {
            Some((_, touched)) if touched.any() => ("unknown", touched.paths(), false),
            Some((Ok(true), _)) | None => ("true", vec![], true),
            Some((Ok(false), _)) => ("false", vec![], false),
            Some((Err(e), _)) => return Err(e),
        };
        let would = format!("{poll}: {now} now ({found})");
        let action = if holds {
            PlanAction::Read
        } else {
            PlanAction::Unknown
        };
        let note = PlanNote {
            unknown: unknown.clone(),
            item,
            ..self.read_note(&out, would)
        };
        let note = PlanNote { action, ..note };
        self.plan_entry(
            meta,
            step,
            Some(describe::shown_input(&step.kind, input)),
            note,
        );
        Ok(if holds {
            Done::Ran(out)
        } else {
            Done::Described { unknown }
        })
    }

    /// How many DLQ entries a `dlq_retry` would return to the queue now (read with `dlq_list`
    /// and the same filter); `None` for other steps, or when it cannot be told.
    async fn dlq_reach(&self, step: &Step, input: &Json, unknown: &[String]) -> Option<i64> {
        if !matches!(step.kind, StepKind::Runtime(_)) || input["op"] != "dlq_retry" {
            return None;
        }
        if !unknown.is_empty() {
            return None;
        }
        let text = |k: &str| input[k].as_str().map(str::to_owned);
        let list = Op::DlqList {
            entity: text("entity"),
            error_type: text("error_type"),
            limit: Some(1),
            offset: None,
        };
        let services = &self.services;
        let out = ops::run(&services.store, &services.config.streaming, &list, "plan")
            .await
            .ok()?;
        out["totalElements"].as_i64()
    }

    /// A read's entry: what it found, its first rows.
    fn read_note(&self, out: &StepOutput, would: String) -> PlanNote {
        let rows: Vec<Json> = out.rows.iter().take(SHOWN_ROWS).cloned().collect();
        let output = json!({ "row_count": out.rows.len(), "rows": rows, "output": out.output });
        PlanNote {
            output: Some(self.services.masker.mask_json(&output)),
            ..PlanNote::new(PlanAction::Read, self.services.masker.mask_str(&would))
        }
    }

    /// A `playbook:` call in a plan: the callee is planned as a child run (its reads run, its
    /// changes are described, at one level deeper). What it produces is unknown when it would
    /// change things.
    pub(super) async fn plan_call(
        &self,
        step: &Step,
        meta: &RunMeta,
        rendered: Rendered,
        input: &Json,
    ) -> Result<Done, StepError> {
        let Rendered::Playbook(call) = rendered else {
            return Ok(Done::Described { unknown: vec![] });
        };
        let limit = self.services.config.streaming.max_call_depth;
        if meta.depth >= limit {
            return Err(StepError::fatal(format!(
                "playbook `{}` would run {} calls deep, past `streaming.max_call_depth` ({limit}); is there a cycle?",
                call.playbook,
                meta.depth + 1,
            )));
        }
        let changes = self
            .catalog()
            .get(&call.playbook)
            .is_none_or(|pb| pb.changes_things);
        let would = format!(
            "would run playbook `{}` with params {} (planned below)",
            call.playbook,
            json!(call.params)
        );
        let action = if changes {
            PlanAction::Change
        } else {
            PlanAction::Read
        };
        self.plan_entry(
            meta,
            step,
            Some(input.clone()),
            PlanNote::new(action, would),
        );
        let outcome = self
            .run_child(&call.playbook, call.params, meta)
            .await
            .map_err(|e| StepError::fatal(crate::text::error_chain(&e)))?;
        if !outcome.status.is_success() {
            return Err(StepError::fatal(format!(
                "playbook `{}` (run {}) {}: {}",
                call.playbook,
                outcome.run_id,
                outcome.status,
                outcome.error.unwrap_or_default()
            )));
        }
        if changes {
            return Ok(Done::Described { unknown: vec![] });
        }
        Ok(Done::Ran(StepOutput::value(json!({
            "run_id": outcome.run_id, "status": outcome.status, "steps": outcome.steps,
        }))))
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        engine::step::{disposition, Disposition},
        playbook::{compile_source, CompileEnv},
        steps::RunMode,
    };

    #[test]
    fn a_plan_executes_the_reads_only_and_a_dry_run_nothing() {
        let yaml = r#"name: p
steps:
  - { id: read, sql: "SELECT 1" }
  - { id: write, sql: "DELETE FROM command_queue" }
  - { id: get, http: { url: "http://127.0.0.1:9/" } }
  - { id: post, http: { method: POST, url: "http://127.0.0.1:9/" } }
  - { id: stats, runtime: { op: queue_stats } }
  - { id: scale, runtime: { op: scale_workers, concurrency: 2 } }
  - { id: pause, wait: 30s }
  - { id: ask, approve: { text: go } }
  - { id: call, playbook: other }
  - { id: check, assert: "true" }
"#;
        let (pb, _) = compile_source(std::path::Path::new("p.yaml"), yaml, &CompileEnv::default())
            .expect("compiles");
        let plan: Vec<(&str, Disposition)> = pb
            .steps
            .iter()
            .map(|s| (s.id.as_str(), disposition(RunMode::Plan, &s.kind, false)))
            .collect();
        use Disposition::*;
        assert_eq!(
            plan,
            [
                ("read", Execute),
                ("write", Describe),
                ("get", Execute),
                ("post", Describe),
                ("stats", Execute),
                ("scale", Describe),
                ("pause", Describe),
                ("ask", Describe),
                ("call", PlanCall),
                ("check", Execute),
            ]
        );
        for s in &pb.steps {
            // A read whose input needs what a change would produce is not run.
            assert_eq!(disposition(RunMode::Plan, &s.kind, true), Describe);
            assert_eq!(disposition(RunMode::DryRun, &s.kind, false), Describe);
            assert_eq!(disposition(RunMode::Execute, &s.kind, false), Execute);
        }
    }
}
