//! `approve`: pause the run until an operator approves or rejects it (`runbook runs approve ID`,
//! `POST /api/runs/{id}/approve`), the timeout passes (the step fails), or the run is cancelled.
//! A rejection stops the run: it ends `cancelled`.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{CompileError, Flavour, Kind, StepCx, StepError, StepOutput};
use crate::{duration::Dur, status::StepEventStatus, store::runs};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApprove {
    /// What the operator is asked.
    pub text: String,
    /// How long to wait for an answer (default 1h); without one the step fails.
    #[serde(default)]
    pub timeout: Option<Dur>,
}

pub const DEFAULT_TIMEOUT: Dur = Dur::from_secs(3600);

#[derive(Debug)]
pub struct ApproveStep {
    pub text: String,
    pub timeout: Dur,
}

impl Kind for ApproveStep {
    type Raw = RawApprove;
    type Input = Input;

    fn compile(r: RawApprove) -> Result<Self, CompileError> {
        Ok(ApproveStep {
            text: r.text,
            timeout: r.timeout.unwrap_or(DEFAULT_TIMEOUT),
        })
    }

    /// Asking a person counts as a change: it is there because what follows changes things.
    fn is_read(&self) -> bool {
        false
    }

    fn templates(&self) -> Vec<(String, &str, Flavour)> {
        vec![("approve.text".into(), self.text.as_str(), Flavour::Text)]
    }

    fn render(&self, cx: &StepCx<'_>) -> Result<Input, StepError> {
        Ok(Input {
            text: cx
                .services
                .templates
                .render(&self.text, cx.ctx)
                .map_err(StepError::template)?,
            timeout: self.timeout,
        })
    }

    async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
        execute(i, cx).await
    }
}

#[derive(Debug, Serialize)]
pub struct Input {
    pub text: String,
    pub timeout: Dur,
}

pub async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
    let db = &cx.services.store;
    let run_id = cx.run.id;
    // What approving lets happen, rendered now, on what the run has found so far.
    let changes = cx.launcher.preview_after(cx.run, cx.step_id, cx.ctx).await;
    runs::set_waiting(db, run_id, cx.step_id, &changes)
        .await
        .map_err(|e| StepError::fatal(e.to_string()))?;
    tracing::info!(run_id, step = cx.step_id, text = %i.text, "Waiting for approval.");
    cx.run.observer.step_event(&super::StepEvent {
        run_id,
        playbook: cx.run.playbook.clone(),
        step: cx.step_id.to_owned(),
        kind: "approve",
        depth: cx.run.depth,
        status: StepEventStatus::Waiting,
        duration_ms: None,
        summary: Some(format!(
            "{} ({}, within {})",
            i.text,
            how_to_answer(run_id),
            i.timeout
        )),
        error: None,
        input: None,
        found: None,
        continued: false,
        poll: None,
        plan: None,
    });
    let decision = wait_for_decision(cx, i.timeout.as_std()).await;
    let _ = runs::resume_waiting(db, run_id).await;
    match decision? {
        Some(row) if row["decision"] == "approved" => Ok(StepOutput::value(row)),
        Some(row) => {
            // A rejection stops the run, as a cancel does: nothing after this step runs.
            let reason = rejection(&row);
            cx.run.cancel.cancel(reason.clone());
            Err(StepError::fatal(reason))
        }
        None => Err(StepError::fatal(format!(
            "timed out after {} waiting for approval (nobody answered with {})",
            i.timeout,
            how_to_answer(run_id)
        ))),
    }
}

/// Where an operator answers.
fn how_to_answer(run_id: i64) -> String {
    format!(
        "`runbook runs approve {run_id}` or `--reject`, or `POST /api/runs/{run_id}/approve` \
         (role operator)"
    )
}

/// `rejected by <actor>[: <comment>]`.
fn rejection(row: &serde_json::Value) -> String {
    format!(
        "rejected by {}{}",
        row["actor"].as_str().unwrap_or("?"),
        row["comment"]
            .as_str()
            .map(|c| format!(": {c}"))
            .unwrap_or_default()
    )
}

/// Looks for an answer every half second until `timeout`; `None` when none came. A cancelled
/// run stops waiting at once, with the cancel's reason as the error.
async fn wait_for_decision(
    cx: &StepCx<'_>,
    timeout: Duration,
) -> Result<Option<serde_json::Value>, StepError> {
    let deadline = crate::duration::deadline_in(timeout);
    loop {
        let answer = runs::decision(&cx.services.store, cx.run.id, cx.step_id)
            .await
            .map_err(|e| StepError::fatal(e.to_string()))?;
        if answer.is_some() {
            return Ok(answer);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        cx.run
            .cancel
            .sleep(left.min(Duration::from_millis(500)))
            .await
            .map_err(StepError::fatal)?;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_rejection_names_who_and_why() {
        let row = json!({ "decision": "rejected", "actor": "alice", "comment": "not now" });
        assert_eq!(rejection(&row), "rejected by alice: not now");
        let row = json!({ "decision": "rejected", "actor": "api:ops", "comment": null });
        assert_eq!(rejection(&row), "rejected by api:ops");
        assert!(how_to_answer(7).contains("`runbook runs approve 7`"));
        assert!(how_to_answer(7).contains("POST /api/runs/7/approve"));
    }
}
