//! The seam `runbook test` uses: a run that carries [`StepMocks`] asks them for each step's
//! result instead of executing its rendered input, so a playbook can be tried against results
//! a test gives, touching nothing outside.

use serde_json::Value as Json;

use super::{StepError, StepOutput};

/// One execution a run asks the mocks for: which step, of which playbook, with the input it
/// rendered, and whether that input would change something.
pub struct MockCall<'a> {
    pub run_id: i64,
    pub playbook: &'a str,
    pub step: &'a str,
    /// The step kind's name (`sql`, `runtime`, ...).
    pub kind: &'static str,
    /// The rendered input, as the run record keeps it (and, for `sql` in a test that fixes the
    /// dialect, rendered in that dialect).
    pub input: Json,
    /// The `for_each` item the step runs for, if any.
    pub item: Option<Json>,
    /// Whether executing the input would change something (see [`super::Kind::is_read`]).
    pub changes: bool,
}

/// What the mocks answer for a call.
pub enum MockAnswer {
    /// The step's result: executing it is replaced by this.
    Result(Result<StepOutput, StepError>),
    /// The step fails with this reason and the run stops, as after a rejected approval.
    Cancel(String),
    /// Execute the input for real: kinds that touch nothing outside (`assert`), and `playbook:`
    /// calls whose child run goes on with the same mocks.
    Execute,
}

/// Results for steps, given by a test. Implemented above the engine (`crate::testing`).
pub trait StepMocks: Send + Sync + std::fmt::Debug {
    fn answer(&self, call: MockCall<'_>) -> MockAnswer;

    /// The SQL dialect `sql` inputs are rendered in, when the test fixes one.
    fn dialect(&self) -> Option<crate::template::Dialect> {
        None
    }

    /// The clock templates read as `now`, when the test fixes one.
    fn now(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        None
    }
}
