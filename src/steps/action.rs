//! `action`: a change outside runbook that the config names (`actions:` in runbook.yaml), such as
//! scaling the backend or restarting Kafka. The config says how (an argv list, its program in
//! `shell.allow`, or an HTTP request); the playbook says when, with what `args`, and what a
//! person should do instead while the action is not configured (`manual`). The config's strings
//! are templates over `args` only, each argv element rendered on its own: no shell ever parses
//! a value. Every execution is audited (`action:NAME`), before and after.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use super::{CompileError, Flavour, Kind, StepCx, StepError, StepOutput, Yaml};
use crate::{duration::Dur, store::runs, template::Templates};

/// `action: { name: restart_kafka, args: {...}, manual: "..." }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    /// The action's name under `actions:` in the config.
    pub name: String,
    /// Values the action's templates read as `args.NAME`; strings here are templates over the run.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub args: BTreeMap<String, Yaml>,
    /// What a person should do when the config does not name the action (a template). With it,
    /// the step then succeeds with `output.configured` false and this text in `output.manual`;
    /// without it an unconfigured action is a validation error.
    #[serde(default)]
    pub manual: Option<String>,
}

#[derive(Debug)]
pub struct ActionStep {
    pub name: String,
    pub args: BTreeMap<String, Yaml>,
    pub manual: Option<String>,
}

/// Default time an action may take.
const DEFAULT_TIMEOUT: Dur = Dur::from_secs(300);

impl Kind for ActionStep {
    type Raw = RawAction;
    type Input = Input;

    fn compile(r: RawAction) -> Result<Self, CompileError> {
        if r.name.is_empty() {
            return Err((
                ".action.name".into(),
                "an action step needs the action's name".into(),
            ));
        }
        Ok(ActionStep {
            name: r.name,
            args: r.args,
            manual: r.manual,
        })
    }

    fn is_read(&self) -> bool {
        false
    }

    fn check_names(&self, names: &super::Names) -> Vec<(String, String)> {
        if names.actions.contains(&self.name) || self.manual.is_some() {
            return vec![];
        }
        vec![(
            "action.name".into(),
            format!(
                "action `{}` is not configured: add it under `actions:` in the config, or give \
                 `manual:` (what a person does instead) (configured: {})",
                self.name,
                super::names::list(&names.actions)
            ),
        )]
    }

    fn templates(&self) -> Vec<(String, &str, Flavour)> {
        let mut v = Vec::new();
        for (k, a) in &self.args {
            let mut strings = Vec::new();
            Templates::tree_strings(a, format!("action.args.{k}"), &mut strings);
            v.extend(strings.into_iter().map(|(p, s)| (p, s, Flavour::Value)));
        }
        if let Some(m) = &self.manual {
            v.push(("action.manual".into(), m.as_str(), Flavour::Text));
        }
        v
    }

    fn render(&self, cx: &StepCx<'_>) -> Result<Input, StepError> {
        let t = &cx.services.templates;
        let mut args = serde_json::Map::new();
        for (k, a) in &self.args {
            let v = t.render_tree(a, cx.ctx).map_err(StepError::template)?;
            args.insert(k.clone(), v);
        }
        let Some(action) = cx.services.config.actions.get(&self.name) else {
            let manual = match &self.manual {
                Some(m) => t.render(m, cx.ctx).map_err(StepError::template)?,
                None => {
                    return Err(StepError::fatal(format!(
                        "action `{}` is not configured under `actions:` in the config",
                        self.name
                    )))
                }
            };
            return Ok(Input {
                action: self.name.clone(),
                configured: false,
                args: Json::Object(args),
                argv: None,
                method: None,
                url: None,
                json: None,
                manual: Some(manual),
                timeout: DEFAULT_TIMEOUT,
            });
        };
        let actx = minijinja::Value::from_serialize(json!({ "args": args }));
        let timeout = action.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let mut input = Input {
            action: self.name.clone(),
            configured: true,
            args: Json::Object(args),
            argv: None,
            method: None,
            url: None,
            json: None,
            manual: None,
            timeout,
        };
        let fail = |e: minijinja::Error| {
            StepError::fatal(format!(
                "action `{}` (config): {}",
                self.name,
                crate::template::message(&e)
            ))
        };
        if let Some(argv) = &action.argv {
            let mut out = Vec::with_capacity(argv.len());
            for template in argv {
                let value = t.render(template, &actx).map_err(fail)?;
                // A value from `args` must not turn into an option: only a literal may.
                if value.starts_with('-') && !template.starts_with('-') {
                    return Err(StepError::fatal(format!(
                        "action `{}`: argument `{value}` would be read as an option",
                        self.name
                    )));
                }
                out.push(value);
            }
            input.argv = Some(out);
        } else if let Some(h) = &action.http {
            input.method = Some(h.method.as_deref().unwrap_or("POST").to_ascii_uppercase());
            input.url = Some(t.render_url(&h.url, &actx).map_err(fail)?);
            input.json = h
                .json
                .as_ref()
                .map(|j| t.render_tree(j, &actx))
                .transpose()
                .map_err(fail)?;
        }
        Ok(input)
    }

    async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
        execute(i, cx).await
    }
}

/// A rendered action: recorded, shown by `--plan`, compared by `runbook test`.
#[derive(Debug, Serialize)]
pub struct Input {
    pub action: String,
    pub configured: bool,
    pub args: Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manual: Option<String>,
    #[serde(skip)]
    pub timeout: Dur,
}

pub async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
    if !i.configured {
        // Nothing is changed: the run tells a person what to do.
        tracing::info!(run_id = cx.run.id, step = cx.step_id, action = %i.action, "Action not configured; left to a person.");
        return Ok(StepOutput::value(json!({
            "configured": false,
            "action": i.action,
            "manual": i.manual,
        })));
    }
    let masker = &cx.services.masker;
    let what = masker.mask_json(&json!({
        "step": cx.step_id, "args": i.args, "argv": i.argv, "method": i.method, "url": i.url,
    }));
    let op = format!("action:{}", i.action);
    let actor = cx.run.actor();
    let audit = |outcome: Json| {
        let mut filter = what.clone();
        filter["outcome"] = outcome;
        let store = cx.services.store.clone();
        let (actor, op) = (actor.clone(), op.clone());
        // Written by a task of its own, so the record is made even if this step is dropped.
        let task = tokio::spawn(async move { runs::audit(&store, &actor, &op, filter, 1).await });
        async move {
            match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(StepError::fatal(format!(
                    "audit record could not be written: {e}"
                ))),
                Err(e) => Err(StepError::fatal(format!(
                    "audit record could not be written: {e}"
                ))),
            }
        }
    };
    audit(json!("started")).await?;
    let limit = i.timeout.as_std().min(cx.timeout);
    let run = async {
        if let Some(argv) = i.argv.clone() {
            super::shell::execute(
                super::shell::Input {
                    argv,
                    max_output: 64 * 1024,
                },
                cx,
            )
            .await
        } else {
            let mut headers = BTreeMap::new();
            let config = cx.services.config.actions.get(&i.action);
            if let Some(var) = config
                .and_then(|a| a.http.as_ref())
                .and_then(|h| h.token_env.as_ref())
            {
                let token = std::env::var(var).map_err(|_| {
                    StepError::fatal(format!(
                        "action `{}`: the token variable {var} is not set",
                        i.action
                    ))
                })?;
                masker.add(&token);
                headers.insert("Authorization".to_owned(), format!("Bearer {token}"));
            }
            super::http::execute(
                super::http::Input {
                    method: i.method.clone().unwrap_or_else(|| "POST".into()),
                    url: i.url.clone().unwrap_or_default(),
                    headers,
                    query: BTreeMap::new(),
                    json: i.json.clone(),
                    body: None,
                    expect: config
                        .and_then(|a| a.http.as_ref())
                        .map(|h| h.expect.clone())
                        .unwrap_or_default(),
                },
                cx,
            )
            .await
        }
    };
    let result = match tokio::time::timeout(limit, run).await {
        Ok(r) => r,
        Err(_) => Err(StepError::fatal(format!(
            "action `{}` timed out after {}",
            i.action,
            Dur(limit)
        ))),
    };
    match result {
        Ok(mut out) => {
            audit(json!("succeeded")).await?;
            let mut output = json!({ "configured": true, "action": i.action });
            if let Json::Object(m) = std::mem::take(&mut out.output) {
                output
                    .as_object_mut()
                    .into_iter()
                    .for_each(|o| o.extend(m.clone()));
            }
            out.output = output;
            Ok(out)
        }
        Err(e) => {
            audit(json!({ "failed": masker.mask_str(&e.to_string()) })).await?;
            Err(e)
        }
    }
}
