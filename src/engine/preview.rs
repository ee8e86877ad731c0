//! What an approval lets happen: when a run reaches an `approve` step, the steps after it (up to
//! the next `approve`, or the end) rendered with the run's context as it is then, through the
//! same rendering and [`describe`] words a plan uses: an SQL step's statement and bound values,
//! a runtime op and its arguments, a request, an argv. Nothing runs. The approve step stores it
//! with the wait, and the console's approval card and run page show it.

use std::time::Duration;

use minijinja::Value;
use serde_json::{json, Value as Json};

use super::{describe, Engine, RunRequest};
use crate::{
    playbook::{ForEach, Step},
    steps::{RunMeta, StepCx, StepKind},
    template::{message, off_runtime, to_json},
};

/// The most time rendering one step's templates may take here (rendering is pure; this only
/// bounds a template that loops).
const RENDER_TIME: Duration = Duration::from_secs(5);

impl Engine {
    /// The steps after `after` in run `meta`'s playbook, up to the next `approve` or the end,
    /// each rendered on `ctx`: `[{id, kind, changes, when, when_now, for_each, input, would,
    /// not_rendered}]`, masked. Empty when the playbook or the step is not found.
    pub(super) async fn preview_after(&self, meta: &RunMeta, after: &str, ctx: &Value) -> Json {
        let version = crate::store::runs::get_run_version(&self.services.store, meta.id)
            .await
            .ok()
            .flatten();
        let req = RunRequest {
            playbook: meta.playbook.clone(),
            version,
            ..RunRequest::default()
        };
        let Ok((pb, _)) = self.resolve(&req).await else {
            return json!([]);
        };
        // The approve step is in the steps, or in `on_failure`.
        let Some((list, at)) = [&pb.steps, &pb.on_failure]
            .into_iter()
            .find_map(|list| Some((list, list.iter().position(|s| s.id == after)?)))
        else {
            return json!([]);
        };
        let runtime = ctx
            .get_attr("runtime")
            .ok()
            .map(|v| to_json(&v))
            .unwrap_or(Json::Null);
        let mut out = Vec::new();
        for step in list[at + 1..]
            .iter()
            .take_while(|s| !matches!(s.kind, StepKind::Approve(_)))
        {
            out.push(self.preview_step(meta, step, ctx, &runtime).await);
        }
        Json::Array(out)
    }

    /// One step of [`Engine::preview_after`].
    async fn preview_step(&self, meta: &RunMeta, step: &Step, ctx: &Value, runtime: &Json) -> Json {
        let templates = &self.services.templates;
        let deadline = meta.deadline_within(RENDER_TIME);
        let when_now = match &step.when {
            None => Json::Null,
            Some(w) => match off_runtime(deadline, || templates.eval_bool(w, ctx)).await {
                Ok(b) => json!(b),
                Err(e) => json!(format!("not known yet: {}", message(&e))),
            },
        };
        let mut entry = json!({
            "id": step.id,
            "kind": step.kind.name(),
            "changes": !step.kind.is_read(),
            "when": step.when,
            "when_now": when_now,
        });
        if let Some(each) = &step.for_each {
            // The item is known only when the step runs; say over what it would go.
            entry["for_each"] = json!(match each {
                ForEach::Expr(e) => format!("once for each item of `{e}`"),
                ForEach::List(_) => "once for each item of its list".to_owned(),
            });
            return entry;
        }
        let cx = StepCx {
            services: &self.services,
            launcher: self,
            run: meta,
            step_id: &step.id,
            ctx,
            timeout: step.timeout.as_std(),
        };
        match off_runtime(deadline, || step.kind.render(&cx)).await {
            Ok(r) => {
                let input = self
                    .services
                    .masker
                    .mask_json(&serde_json::to_value(&r).unwrap_or_default());
                let shown = describe::shown_input(&step.kind, &input);
                let would = describe::would(step, &shown, runtime);
                entry["would"] = json!(self.services.masker.mask_str(&would));
                entry["input"] = shown;
            }
            Err(e) => {
                // Most often a template that reads what an earlier step after the approval
                // will find: it is rendered when the run gets there.
                entry["not_rendered"] = json!(self.services.masker.mask_str(&e.to_string()));
            }
        }
        entry
    }
}
