//! `playbook`: run another playbook as a child run and wait for it.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;
use serde_json::{json, Value as Json};

use super::short::FromShort;
use super::Yaml;
use super::{CompileError, Flavour, Kind, StepCx, StepError, StepOutput};
use crate::status::RunStatus;
use crate::store::{Db, DbError};
use crate::template::Templates;
use schemars::JsonSchema;
use serde::Deserialize;

impl FromShort for RawCall {
    fn from_short(name: String) -> Self {
        RawCall {
            name,
            params: BTreeMap::new(),
        }
    }
}

/// `playbook: other-name` or `{ name: other-name, params: {...} }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCall {
    pub name: String,
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub params: BTreeMap<String, Yaml>,
}

#[derive(Debug)]
pub struct CallStep {
    pub name: String,
    pub params: BTreeMap<String, serde_yaml::Value>,
}

impl Kind for CallStep {
    type Raw = RawCall;
    type Input = Input;

    fn compile(r: RawCall) -> Result<Self, CompileError> {
        Ok(CallStep {
            name: r.name,
            params: r.params,
        })
    }

    /// The call itself reads; whether the child changes things is decided across the catalog
    /// (`Playbook::changes_things`).
    fn is_read(&self) -> bool {
        true
    }

    fn templates(&self) -> Vec<(String, &str, Flavour)> {
        let mut out = Vec::new();
        for (k, v) in &self.params {
            let mut strings = Vec::new();
            Templates::tree_strings(v, format!("playbook.params.{k}"), &mut strings);
            out.extend(strings.into_iter().map(|(p, src)| (p, src, Flavour::Value)));
        }
        out
    }

    fn render(&self, cx: &StepCx<'_>) -> Result<Input, StepError> {
        let params = self
            .params
            .iter()
            .map(|(k, v)| {
                let j = cx
                    .services
                    .templates
                    .render_tree(v, cx.ctx)
                    .map_err(StepError::template)?;
                let text = match j {
                    Json::String(s) => s,
                    other => other.to_string(),
                };
                Ok((k.clone(), text))
            })
            .collect::<Result<BTreeMap<_, _>, StepError>>()?;
        Ok(Input {
            playbook: self.name.clone(),
            params,
        })
    }

    async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
        execute(i, cx).await
    }
}

#[derive(Debug, Serialize)]
pub struct Input {
    pub playbook: String,
    pub params: BTreeMap<String, String>,
}

/// How long a `playbook:` step whose timeout passed waits for the child run it stopped to record
/// its end; the attempt's deadline is the step's `timeout` plus this.
pub const CHILD_GRACE: Duration = Duration::from_secs(5);

pub async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
    let limits = &cx.services.config.streaming;
    if cx.run.depth >= limits.max_call_depth {
        return Err(StepError::fatal(format!(
            "playbook `{}` would run {} calls deep, past `streaming.max_call_depth` ({}); is there a cycle?",
            i.playbook,
            cx.run.depth + 1,
            limits.max_call_depth
        )));
    }
    let runs = tree_runs(&cx.services.store, cx.run.id)
        .await
        .map_err(|e| StepError::retryable(crate::text::error_chain(&e)))?;
    if runs >= i64::from(limits.max_runs_per_tree) {
        return Err(StepError::fatal(format!(
            "playbook `{}` not started: this run tree already holds {runs} runs, the most \
             `streaming.max_runs_per_tree` ({}) allows",
            i.playbook, limits.max_runs_per_tree
        )));
    }
    // The child's own cancel, under the run's: fired here when the step's timeout passes, it
    // stops the child where it is, and the child records its end (`cancelled`, with the reason)
    // instead of being dropped half-way.
    let mut parent = cx.run.clone();
    parent.cancel = cx.run.cancel.child();
    let own = cx.timeout.saturating_sub(CHILD_GRACE);
    let child = cx.launcher.run_child(&i.playbook, i.params, &parent);
    tokio::pin!(child);
    let outcome = tokio::select! {
        outcome = &mut child => outcome,
        _ = tokio::time::sleep(own) => {
            let reason = format!(
                "the calling step `{}` of run {} timed out after {}",
                cx.step_id,
                cx.run.id,
                crate::duration::Dur(own)
            );
            parent.cancel.cancel(reason.clone());
            // A child busy in a statement or request stops after it; past the grace it is
            // recorded as stopped here.
            if tokio::time::timeout(CHILD_GRACE / 2, &mut child).await.is_err() {
                close_tree(&cx.services.store, cx.run.id, &reason).await;
            }
            return Err(StepError::retryable(format!(
                "timed out after {}",
                crate::duration::Dur(own)
            )));
        }
    }
    .map_err(|e| StepError::fatal(crate::text::error_chain(e.as_ref())))?;
    let out = json!({ "run_id": outcome.run_id, "status": outcome.status, "steps": outcome.steps });
    if outcome.status != RunStatus::Succeeded {
        return Err(StepError::fatal(format!(
            "playbook `{}` (run {}) {}: {}",
            i.playbook,
            outcome.run_id,
            outcome.status,
            outcome.error.unwrap_or_default()
        )));
    }
    Ok(StepOutput::value(out))
}

/// The runs of the tree `run` belongs to: its root and every run below it.
async fn tree_runs(db: &Db, run: i64) -> Result<i64, DbError> {
    let rows = db
        .sql(
            "WITH RECURSIVE up(id, parent_id) AS ( \
               SELECT id, parent_id FROM runbook_runs WHERE id = $1 \
               UNION ALL SELECT r.id, r.parent_id FROM runbook_runs r JOIN up ON r.id = up.parent_id), \
             down(id) AS ( \
               SELECT id FROM up WHERE parent_id IS NULL \
               UNION ALL SELECT r.id FROM runbook_runs r JOIN down ON r.parent_id = down.id) \
             SELECT COUNT(*) AS n FROM down",
            vec![json!(run)],
        )
        .await?
        .rows;
    Ok(rows.first().and_then(|r| r["n"].as_i64()).unwrap_or(0))
}

/// Ends, as `cancelled` with `reason`, every run below `run` that has not ended: child runs cut
/// off when their calling step or run stopped waiting for them.
pub async fn close_tree(db: &Db, run: i64, reason: &str) {
    let now = db.dialect().now();
    let open: Vec<Json> = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::WaitingApproval,
        RunStatus::CancelRequested,
    ]
    .iter()
    .map(|s| json!(s))
    .collect();
    let sql = format!(
        "WITH RECURSIVE down(id) AS ( \
           SELECT id FROM runbook_runs WHERE parent_id = $1 \
           UNION ALL SELECT r.id FROM runbook_runs r JOIN down ON r.parent_id = down.id) \
         UPDATE runbook_runs SET status = $2, error = $3, finished_at = {now} \
         WHERE id IN (SELECT id FROM down) AND status IN ($4, $5, $6, $7)"
    );
    let mut params = vec![json!(run), json!(RunStatus::Cancelled), json!(reason)];
    params.extend(open);
    match db.sql(&sql, params).await {
        Ok(r) if r.rows_affected > 0 => {
            tracing::warn!(
                run_id = run,
                runs = r.rows_affected,
                reason,
                "Child runs cut off; recorded as cancelled."
            );
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(run_id = run, error = %e, "Recording cut-off child runs failed.");
        }
    }
}
