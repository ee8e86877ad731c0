//! `assert`: fail the step unless an expression holds.

use serde::Serialize;
use serde_json::json;

use super::short::FromShort;
use super::{CompileError, Flavour, Kind, StepCx, StepError, StepOutput};
use schemars::JsonSchema;
use serde::Deserialize;

impl FromShort for RawAssert {
    fn from_short(that: String) -> Self {
        RawAssert {
            that,
            message: None,
        }
    }
}

/// `assert: "expr"` or `{ that: "expr", message: "..." }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAssert {
    pub that: String,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug)]
pub struct AssertStep {
    pub that: String,
    pub message: Option<String>,
}

impl Kind for AssertStep {
    type Raw = RawAssert;
    type Input = Input;

    fn compile(r: RawAssert) -> Result<Self, CompileError> {
        Ok(AssertStep {
            that: r.that,
            message: r.message,
        })
    }

    fn is_read(&self) -> bool {
        true
    }

    fn templates(&self) -> Vec<(String, &str, Flavour)> {
        let mut v = vec![("assert".into(), self.that.as_str(), Flavour::Expr)];
        if let Some(m) = &self.message {
            v.push(("assert.message".into(), m.as_str(), Flavour::Text));
        }
        v
    }

    fn render(&self, cx: &StepCx<'_>) -> Result<Input, StepError> {
        let t = &cx.services.templates;
        let holds = t
            .eval_bool(&self.that, cx.ctx)
            .map_err(StepError::template)?;
        let message = self
            .message
            .as_ref()
            .map(|m| t.render(m, cx.ctx))
            .transpose()
            .map_err(StepError::template)?;
        Ok(Input {
            that: self.that.clone(),
            holds,
            message,
        })
    }

    async fn execute(i: Input, _cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
        execute(i)
    }
}

#[derive(Debug, Serialize)]
pub struct Input {
    pub that: String,
    pub holds: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

pub fn execute(i: Input) -> Result<StepOutput, StepError> {
    if i.holds {
        Ok(StepOutput::value(match i.message {
            Some(m) => json!({ "holds": true, "message": m }),
            None => json!({ "holds": true }),
        }))
    } else {
        Err(StepError::fatal(
            i.message
                .unwrap_or_else(|| format!("assertion failed: {}", i.that)),
        ))
    }
}
