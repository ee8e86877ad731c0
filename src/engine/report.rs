//! A playbook's `report:`: the text a run ends with (what was wrong, what was changed, what is
//! left for a person), rendered over the run's context when its steps and `on_failure` are
//! done, whatever the run's status, and kept on the run's record.

use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use super::{state::RunState, Engine};
use crate::{
    playbook::Playbook,
    status::{RunStatus, StepStatus},
    steps::RunMeta,
    template::off_runtime,
};

/// The most time a report's template has.
const RENDER_LIMIT: Duration = Duration::from_secs(10);

impl Engine {
    /// The run's report, masked, or `None` when the playbook has none (or the run only planned:
    /// a dry run or a plan).
    /// A report that does not render says why instead; it never changes the run's status.
    pub(super) async fn report(
        &self,
        pb: &Playbook,
        meta: &RunMeta,
        state: &RunState,
        status: RunStatus,
        failed: Option<&(String, String)>,
    ) -> Option<String> {
        let src = pb.report.as_deref().filter(|_| meta.mode.changes())?;
        let mut ctx = state.ctx.clone();
        fill_missing_steps(&mut ctx, pb);
        let failed_step = failed.map_or(Json::Null, |(s, e)| json!({ "id": s, "error": e }));
        ctx.insert("failed_step".into(), failed_step);
        if let Some(run) = ctx.get_mut("run").and_then(Json::as_object_mut) {
            run.insert("status".into(), json!(status));
        }
        let value = crate::template::context_with_secrets(&Json::Object(ctx), &state.secrets);
        let templates = &self.services.templates;
        let rendered = off_runtime(Instant::now() + RENDER_LIMIT, || {
            templates.render(src, &value)
        })
        .await;
        let text = match rendered {
            Ok(t) => t.trim_matches(|c: char| c.is_whitespace()).to_owned(),
            Err(e) => format!(
                "the report could not be rendered: {}",
                crate::template::message(&e)
            ),
        };
        Some(self.services.masker.mask_str(&text))
    }
}

/// Steps that did not run (after a failure, a cancel, a timeout) read as skipped, so a report
/// can speak of every step whatever happened.
fn fill_missing_steps(ctx: &mut serde_json::Map<String, Json>, pb: &Playbook) {
    let steps = ctx.entry("steps").or_insert_with(|| json!({}));
    let Some(steps) = steps.as_object_mut() else {
        return;
    };
    for step in pb.steps.iter().chain(&pb.on_failure) {
        steps.entry(step.id.clone()).or_insert_with(|| {
            json!({ "status": StepStatus::Skipped, "rows": [], "output": null, "error": null, "duration_ms": 0 })
        });
    }
}
