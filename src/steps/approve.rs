//! `approve`: pause the run until an operator approves or rejects it (`runbook runs approve ID`,
//! `POST /api/runs/{id}/approve`), or the timeout passes, which rejects.

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
    /// How long to wait for an answer (default 1h); no answer rejects.
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
    runs::set_waiting(db, run_id, cx.step_id)
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
            "{} (answer with `runbook runs approve {run_id}` or `--reject`, within {})",
            i.text, i.timeout
        )),
        error: None,
        input: None,
    });
    let deadline = Instant::now() + i.timeout.as_std();
    let decision = loop {
        let answer = runs::decision(db, run_id, cx.step_id)
            .await
            .map_err(|e| StepError::fatal(e.to_string()))?;
        if let Some(row) = answer {
            break Some(row);
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = runs::resume_waiting(db, run_id).await;
    match decision {
        Some(row) if row["decision"] == "approved" => Ok(StepOutput::value(row)),
        Some(row) => Err(StepError::fatal(format!(
            "rejected by {}{}",
            row["actor"].as_str().unwrap_or("?"),
            row["comment"]
                .as_str()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        ))),
        None => Err(StepError::fatal(format!(
            "no approval within {}",
            i.timeout
        ))),
    }
}
