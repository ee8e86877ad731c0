//! What a run knows of its steps while it runs: the template context with each step's result
//! (in a plan, which results are unknown), and the record of each attempt.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use chrono::Utc;
use minijinja::{
    value::{Enumerator, Object, ObjectRepr},
    Value,
};
use serde::Serialize;
use serde_json::{json, Map, Value as Json};

use super::{
    step::Done,
    unknown::{with_unknown_steps, Touched},
    Engine,
};
use crate::{
    playbook::Step,
    status::StepStatus,
    steps::{RunMeta, StepError, StepOutput},
    store::runs::{self, Attempt},
    template::context_with_secrets,
};

/// One step's result as later steps read it: `steps.<id>.{status,rows,output,error,duration_ms}`.
#[derive(Debug, Clone, Serialize)]
pub(super) struct StepResult {
    pub(super) status: StepStatus,
    pub(super) rows: Vec<Json>,
    pub(super) output: Json,
    pub(super) error: Option<String>,
    pub(super) duration_ms: u64,
    /// In a plan: what it would produce is unknown (it changes things, or needed what a
    /// change would produce), so later templates read it as unknown.
    #[serde(skip)]
    pub(super) unknown: bool,
}

impl StepResult {
    pub(super) fn skipped() -> Self {
        StepResult {
            status: StepStatus::Skipped,
            rows: vec![],
            output: Json::Null,
            error: None,
            duration_ms: 0,
            unknown: false,
        }
    }
    /// A step of a plan that was described, not run.
    pub(super) fn unknown() -> Self {
        StepResult {
            status: StepStatus::Planned,
            unknown: true,
            ..Self::skipped()
        }
    }
    pub(super) fn failed(&self) -> bool {
        self.status == StepStatus::Failed
    }
}

pub(super) struct RunState {
    pub ctx: Map<String, Json>,
    /// The config's secret `env` entries: in templates as opaque values, never in `ctx`.
    pub secrets: BTreeMap<String, String>,
    /// In a plan, the steps whose results are unknown: templates see them as
    /// [`super::unknown::Unknown`]s.
    pub unknown: BTreeSet<String>,
    /// `ctx["steps"]` as templates read it, each result converted once, when it is set. The
    /// context a template gets shares this map instead of a copy, so a step's context costs the
    /// same at the 10,000th step as at the first (a copy of every earlier result, made for each
    /// step, made long playbooks quadratic). Changed copy-on-write: a context still held keeps
    /// what it saw.
    steps: Arc<BTreeMap<String, Value>>,
}

impl RunState {
    /// A run's state on its context; the results already in `ctx["steps"]` (a resumed run's)
    /// are read as they are.
    pub fn new(ctx: Map<String, Json>, secrets: BTreeMap<String, String>) -> Self {
        let steps = match ctx.get("steps") {
            Some(Json::Object(done)) => done
                .iter()
                .map(|(id, r)| (id.clone(), Value::from_serialize(r)))
                .collect(),
            _ => BTreeMap::new(),
        };
        RunState {
            ctx,
            secrets,
            unknown: BTreeSet::new(),
            steps: Arc::new(steps),
        }
    }

    /// The template context, and what notes any unknown value read from it.
    pub fn traced(&self) -> (Value, Touched) {
        let touched = Touched::default();
        let steps = Value::from_dyn_object(self.steps.clone());
        if self.unknown.is_empty() {
            return (self.context(steps), touched);
        }
        let base = self.context(steps);
        let value = with_unknown_steps(base, &self.ctx, &self.unknown, &touched);
        (value, touched)
    }

    /// The template context with `steps.<id>` read as `result` (an `until` step's poll, which
    /// its condition reads before it is the step's result), and what notes any unknown value
    /// read from it.
    pub fn traced_with(&self, id: &str, result: &StepResult) -> (Value, Touched) {
        if !self.unknown.is_empty() {
            // A plan: the unknown steps are marked from `ctx`, so the poll goes there too.
            let mut probe = RunState::new(self.ctx.clone(), self.secrets.clone());
            probe.unknown = self.unknown.clone();
            probe.set_step(id, result);
            return probe.traced();
        }
        let steps = Value::from_object(StepsWith {
            steps: self.steps.clone(),
            id: id.to_owned(),
            result: Value::from_serialize(serde_json::to_value(result).unwrap_or_default()),
        });
        (self.context(steps), Touched::default())
    }

    /// Everything of `ctx` but its steps (a few small values: converted each time), with
    /// `steps` and the secret `env` entries.
    fn context(&self, steps: Value) -> Value {
        let mut top: BTreeMap<String, Value> = self
            .ctx
            .iter()
            .filter(|(k, _)| *k != "steps")
            .map(|(k, v)| (k.clone(), Value::from_serialize(v)))
            .collect();
        if !self.secrets.is_empty() {
            let env = self.ctx.get("env").cloned().unwrap_or_else(|| json!({}));
            let with = context_with_secrets(&json!({ "env": env }), &self.secrets);
            if let Ok(env) = with.get_attr("env") {
                top.insert("env".into(), env);
            }
        }
        top.insert("steps".into(), steps);
        Value::from(top)
    }

    pub fn set_step(&mut self, id: &str, r: &StepResult) {
        let json = serde_json::to_value(r).unwrap_or_default();
        Arc::make_mut(&mut self.steps).insert(id.to_owned(), Value::from_serialize(&json));
        let steps = self.ctx.entry("steps").or_insert_with(|| json!({}));
        steps[id] = json;
        if r.unknown {
            self.unknown.insert(id.to_owned());
        } else {
            self.unknown.remove(id);
        }
    }
}

/// The steps' results with one of them read as another value (see [`RunState::traced_with`]),
/// without copying the others.
#[derive(Debug)]
struct StepsWith {
    steps: Arc<BTreeMap<String, Value>>,
    id: String,
    result: Value,
}

impl Object for StepsWith {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        if key == self.id {
            return Some(self.result.clone());
        }
        self.steps.get(key).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let mut keys: BTreeSet<&str> = self.steps.keys().map(String::as_str).collect();
        keys.insert(&self.id);
        Enumerator::Values(keys.into_iter().map(Value::from).collect())
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.steps.len() + usize::from(!self.steps.contains_key(&self.id)))
    }
}

impl Engine {
    /// Records one attempt; `polled` for a poll of an `until` step whose condition did not hold.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn record_attempt(
        &self,
        meta: &RunMeta,
        step: &Step,
        (attempt, item): (u32, Option<usize>),
        started_at: chrono::DateTime<Utc>,
        duration_ms: u64,
        input: &Json,
        result: &Result<Done, StepError>,
        polled: bool,
    ) {
        let masker = &self.services.masker;
        let (status, output, error) = match result {
            Ok(Done::Described { .. }) => (StepStatus::Planned, Json::Null, None),
            Ok(Done::Ran(out)) => (
                if polled {
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
pub(super) fn provisional(out: &StepOutput) -> StepResult {
    StepResult {
        status: StepStatus::Succeeded,
        rows: out.rows.clone(),
        output: out.output.clone(),
        error: None,
        duration_ms: 0,
        unknown: false,
    }
}

/// The items a `for_each` step runs for.
pub(super) enum Items {
    /// The step has no `for_each`: it runs once.
    One,
    Each(Vec<Json>),
    /// In a plan, the list needs what a change would produce (these values).
    Unknown(Vec<String>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(n: i64) -> StepResult {
        StepResult {
            status: StepStatus::Succeeded,
            rows: vec![json!({ "n": n })],
            output: json!(n),
            error: None,
            duration_ms: 1,
            unknown: false,
        }
    }

    fn eval(value: &Value, expr: &str) -> String {
        let env = minijinja::Environment::new();
        env.compile_expression(expr)
            .and_then(|e| e.eval(value))
            .map(|v| v.to_string())
            .unwrap_or_else(|e| e.to_string())
    }

    fn state() -> RunState {
        let ctx = json!({
            "params": { "limit": 3 },
            "steps": { "resumed": { "status": "succeeded", "rows": [], "output": 7 } },
            "env": { "REGION": "eu" },
        });
        let secrets = BTreeMap::from([("TOKEN".to_owned(), "s3cret".to_owned())]);
        RunState::new(ctx.as_object().unwrap().clone(), secrets)
    }

    #[test]
    fn templates_read_every_step_result_params_and_env() {
        let mut state = state();
        state.set_step("a", &result(1));
        state.set_step("b", &result(2));
        let (value, _) = state.traced();
        assert_eq!(eval(&value, "steps.resumed.output"), "7");
        assert_eq!(eval(&value, "steps.a.rows[0].n + steps.b.output"), "3");
        assert_eq!(eval(&value, "steps | length"), "3");
        assert_eq!(eval(&value, "params.limit"), "3");
        assert_eq!(eval(&value, "env.REGION"), "eu");
        // A secret is in the context as an opaque value, not as its text.
        assert!(!eval(&value, "env.TOKEN").contains("s3cret"));
        assert_eq!(state.ctx["steps"]["b"]["output"], json!(2));
    }

    #[test]
    fn a_context_taken_before_a_result_is_set_keeps_what_it_saw() {
        let mut state = state();
        state.set_step("a", &result(1));
        let (before, _) = state.traced();
        state.set_step("a", &result(5));
        state.set_step("b", &result(2));
        let (after, _) = state.traced();
        assert_eq!(eval(&before, "steps.a.output"), "1");
        assert_eq!(eval(&before, "steps.b is defined"), "False");
        assert_eq!(eval(&after, "steps.a.output"), "5");
        assert_eq!(eval(&after, "steps.b.output"), "2");
    }

    #[test]
    fn a_poll_is_read_as_its_steps_result_without_changing_the_run() {
        let mut state = state();
        state.set_step("a", &result(1));
        let (polled, _) = state.traced_with("check", &result(9));
        assert_eq!(eval(&polled, "steps.check.output"), "9");
        assert_eq!(eval(&polled, "steps.a.output"), "1");
        assert_eq!(eval(&polled, "steps | length"), "3");
        // Read in place of an earlier result, it hides that one.
        let (again, _) = state.traced_with("a", &result(4));
        assert_eq!(eval(&again, "steps.a.output"), "4");
        assert_eq!(eval(&again, "steps | length"), "2");
        let (value, _) = state.traced();
        assert_eq!(eval(&value, "steps.check is defined"), "False");
        assert_eq!(eval(&value, "steps.a.output"), "1");
    }
}
