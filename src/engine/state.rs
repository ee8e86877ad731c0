//! What a run knows of its steps while it runs: the template context with each step's result
//! (in a plan, which results are unknown), and the record of each attempt.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
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
}

impl RunState {
    /// The template context, and what notes any unknown value read from it.
    pub fn traced(&self) -> (minijinja::Value, Touched) {
        let base = context_with_secrets(&Json::Object(self.ctx.clone()), &self.secrets);
        let touched = Touched::default();
        if self.unknown.is_empty() {
            return (base, touched);
        }
        let value = with_unknown_steps(base, &self.ctx, &self.unknown, &touched);
        (value, touched)
    }
    pub fn set_step(&mut self, id: &str, r: &StepResult) {
        let steps = self.ctx.entry("steps").or_insert_with(|| json!({}));
        steps[id] = serde_json::to_value(r).unwrap_or_default();
        if r.unknown {
            self.unknown.insert(id.to_owned());
        } else {
            self.unknown.remove(id);
        }
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
