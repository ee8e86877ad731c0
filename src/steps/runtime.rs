//! `runtime`: an operation on the streaming runtime (`queue_stats`, `dlq_retry`, `scale_workers`, ...).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value as Json;

use super::{CompileError, Flavour, Kind, StepCx, StepError, StepOutput};
use crate::{
    stream::ops::{self, Op, OpError},
    template::Templates,
};
use schemars::JsonSchema;

/// Schema-only description of a `runtime` step.
#[derive(JsonSchema)]
#[allow(dead_code)]
pub(crate) struct RuntimeSchema {
    /// queue_stats, command_status, dlq_list, dlq_retry, dlq_cleanup, scale_workers,
    /// set_retry_policy, set_lock_ttl, release_stale_locks, release_orphaned_locks,
    /// purge_completed, maintenance, prune_records
    op: String,
}

#[derive(Debug)]
pub struct RuntimeStep {
    pub op: String,
    pub args: BTreeMap<String, serde_yaml::Value>,
}

impl Kind for RuntimeStep {
    type Raw = BTreeMap<String, serde_yaml::Value>;
    type Input = Input;

    fn compile(mut args: BTreeMap<String, serde_yaml::Value>) -> Result<Self, CompileError> {
        let names: Vec<&str> = ops::OPS.iter().map(|(n, _)| *n).collect();
        let op = match args.remove("op") {
            Some(serde_yaml::Value::String(op)) => op,
            _ => {
                return Err((
                    ".runtime".into(),
                    format!("a runtime step needs `op`: one of {}", names.join(", ")),
                ))
            }
        };
        let Some((_, allowed)) = ops::OPS.iter().find(|(n, _)| *n == op) else {
            return Err((
                ".runtime.op".into(),
                format!("unknown runtime op `{op}` (known: {})", names.join(", ")),
            ));
        };
        if let Some(bad) = args.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err((
                format!(".runtime.{bad}"),
                format!(
                    "`{op}` takes no argument `{bad}` (it takes: {})",
                    if allowed.is_empty() {
                        "none".to_owned()
                    } else {
                        allowed.join(", ")
                    }
                ),
            ));
        }
        Ok(RuntimeStep { op, args })
    }

    /// The ops of [`ops::READS`] read; every other op changes the runtime.
    fn is_read(&self) -> bool {
        ops::READS.contains(&self.op.as_str())
    }

    fn templates(&self) -> Vec<(String, &str, Flavour)> {
        let mut out = Vec::new();
        for (k, v) in &self.args {
            let mut strings = Vec::new();
            Templates::tree_strings(v, format!("runtime.{k}"), &mut strings);
            out.extend(strings.into_iter().map(|(p, s)| (p, s, Flavour::Value)));
        }
        out
    }

    fn render(&self, cx: &StepCx<'_>) -> Result<Input, StepError> {
        let mut map = serde_json::Map::new();
        map.insert("op".into(), Json::String(self.op.clone()));
        for (k, v) in &self.args {
            map.insert(
                k.clone(),
                cx.services
                    .templates
                    .render_tree(v, cx.ctx)
                    .map_err(StepError::template)?,
            );
        }
        let op: Op = serde_json::from_value(Json::Object(map))
            .map_err(|e| StepError::fatal(format!("runtime op `{}`: {e}", self.op)))?;
        Ok(Input { op })
    }

    async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
        execute(i, cx).await
    }
}

#[derive(Debug, Serialize)]
pub struct Input {
    #[serde(flatten)]
    pub op: Op,
}

pub async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
    let out = ops::run_for_step(
        &cx.services.store,
        &cx.services.config.streaming,
        &i.op,
        &cx.run.actor(),
    )
    .await
    .map_err(|e| match e {
        OpError::Invalid(m) => StepError::fatal(m),
        OpError::Db(e) if e.is_transient() => StepError::retryable(e.to_string()),
        OpError::Db(e) => StepError::fatal(e.to_string()),
    })?;
    let rows = match (&i.op, &out) {
        (Op::QueueStats, o) => o["depth"].as_array().cloned().unwrap_or_default(),
        (Op::DlqList { .. }, o) => o["content"].as_array().cloned().unwrap_or_default(),
        _ => Vec::new(),
    };
    Ok(StepOutput { rows, output: out })
}
