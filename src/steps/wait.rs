//! `wait`: pause the run for a fixed time (`wait: 30s`), or until it is cancelled.

use serde::Serialize;
use serde_json::Value as Json;

use super::{CompileError, Flavour, Kind, StepCx, StepError, StepOutput};
use crate::duration::Dur;

#[derive(Debug)]
pub struct WaitStep(pub Dur);

#[derive(Debug, Serialize)]
pub struct Input {
    pub wait: Dur,
}

impl Kind for WaitStep {
    type Raw = Dur;
    type Input = Input;

    fn compile(d: Dur) -> Result<Self, CompileError> {
        Ok(WaitStep(d))
    }

    fn is_read(&self) -> bool {
        true
    }

    fn templates(&self) -> Vec<(String, &str, Flavour)> {
        Vec::new()
    }

    fn render(&self, _cx: &StepCx<'_>) -> Result<Input, StepError> {
        Ok(Input { wait: self.0 })
    }

    /// Sleeps, unless the run is cancelled first: then the step fails with the reason.
    async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
        cx.run
            .cancel
            .sleep(i.wait.as_std())
            .await
            .map_err(StepError::fatal)?;
        Ok(StepOutput::value(Json::from(i.wait.to_string())))
    }
}
