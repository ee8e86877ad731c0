//! `playbook`: run another playbook as a child run and wait for it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value as Json};

use super::short::FromShort;
use super::Yaml;
use super::{CompileError, Flavour, Kind, StepCx, StepError, StepOutput};
use crate::status::RunStatus;
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

pub async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
    if cx.run.depth >= 8 {
        return Err(StepError::fatal(
            "playbooks call each other more than 8 deep; is there a cycle?",
        ));
    }
    let outcome = cx
        .launcher
        .run_child(&i.playbook, i.params, cx.run)
        .await
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
