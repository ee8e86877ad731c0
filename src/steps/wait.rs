//! `wait`: pause the run for a time (`wait: 30s`, or a template such as
//! `wait: "{{ params.recovery_wait }}"` rendered when the step runs), or until it is cancelled.

use serde::Serialize;
use serde_json::Value as Json;

use super::{CompileError, DurSpec, Flavour, Kind, StepCx, StepError, StepOutput};
use crate::duration::Dur;

#[derive(Debug)]
pub struct WaitStep(pub DurSpec);

#[derive(Debug, Serialize)]
pub struct Input {
    pub wait: Dur,
}

impl Kind for WaitStep {
    type Raw = DurSpec;
    type Input = Input;

    fn compile(d: DurSpec) -> Result<Self, CompileError> {
        Ok(WaitStep(d))
    }

    fn is_read(&self) -> bool {
        true
    }

    fn templates(&self) -> Vec<(String, &str, Flavour)> {
        self.0
            .template()
            .map(|t| ("wait".to_owned(), t, Flavour::Text))
            .into_iter()
            .collect()
    }

    /// A templated wait is rendered and parsed here; it must fit in the step's timeout, which a
    /// literal one stretches to its own length when the playbook is read.
    fn render(&self, cx: &StepCx<'_>) -> Result<Input, StepError> {
        let wait = self
            .0
            .resolve("wait", &cx.services.templates, cx.ctx)
            .map_err(StepError::fatal)?;
        // The engine gives a wait step a second past its timeout to finish sleeping.
        let timeout = cx.timeout.saturating_sub(std::time::Duration::from_secs(1));
        if self.0.fixed().is_none() && wait.as_std() > timeout {
            return Err(StepError::fatal(format!(
                "`wait`: `{}` rendered {wait}, longer than the step's timeout of {}: raise the step's `timeout`",
                self.0,
                Dur(timeout)
            )));
        }
        Ok(Input { wait })
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
