//! The test file format (`runbooks/tests/*.yaml`): the playbook a file tests, and its cases, each
//! with a trigger, the results its steps get, and what must follow. `runbook schema test` is
//! derived from these types.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value as Json;

/// A test file: cases for one playbook.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The name of the playbook the cases run.
    pub playbook: String,
    pub cases: Vec<Case>,
}

/// One case: a trigger, the results the steps get, and what must follow.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Unique in the file; the case is reported as `<playbook>::<name>`.
    pub name: String,
    /// For the reader of the file.
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
    /// A known defect: the case states the correct behaviour and is expected to fail until the
    /// playbook is fixed. A case marked so that passes fails, so the mark is removed.
    #[serde(default)]
    pub xfail: Option<String>,
    /// Parameter overrides, as `--param` gives them.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, Json>")]
    pub params: BTreeMap<String, serde_yaml::Value>,
    /// The alert that triggers the run, as Alertmanager sends it; it must match the playbook's
    /// `on.alerts`. Without one the run is a manual run.
    #[serde(default)]
    pub alert: Option<TestAlert>,
    /// The live worker settings templates read as `runtime` (`workerConcurrency`, `lockTtl`, ...),
    /// over the config's.
    #[serde(default)]
    pub runtime: BTreeMap<String, Json>,
    /// The clock templates read as `now` (RFC 3339).
    #[serde(default)]
    pub now: Option<String>,
    /// The run's id (`run.id`); child runs follow it. Default 1.
    #[serde(default)]
    pub run_id: Option<i64>,
    /// The dialect `sql` steps' rendered SQL is compared in: `sqlite` (default) or `postgres`.
    #[serde(default)]
    pub dialect: Option<TestDialect>,
    /// Actions the case's config names, over the config's (`actions:` as in runbook.yaml): an
    /// `action` step naming one renders its command or request, and takes its result from
    /// `mocks`; one named nowhere tells a person what to do, and needs no mock.
    #[serde(default)]
    pub actions: BTreeMap<String, crate::config::ActionConfig>,
    /// Results by step id (`child-playbook/step` for a step of a `playbook:` call's child run).
    #[serde(default)]
    pub mocks: BTreeMap<String, Mock>,
    #[serde(default)]
    pub expect: Expect,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TestDialect {
    Sqlite,
    Postgres,
}

/// An alert as Alertmanager's webhook carries it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestAlert {
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// `firing` (default) or `resolved`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, rename = "startsAt")]
    pub starts_at: Option<String>,
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// A step's result: one for every execution, or a list taken in order, one per execution
/// (poll, attempt, `for_each` item); past its end the last one repeats.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Mock {
    Each(Vec<MockResult>),
    One(Box<MockResult>),
}

/// What one execution of a step gets. `rows`/`output`/`error` fit every kind; `status`, `json`,
/// `body` describe an `http` answer; `exit_code`, `stdout`, `stderr` a `shell` program's end;
/// `approved`, `by`, `comment` an operator's answer to an `approve` step.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MockResult {
    /// Rows (`sql`), series (`promql`), topics or partitions with their lag (`kafka`), the list
    /// of a runtime read (`dlq_list`).
    #[serde(default)]
    pub rows: Option<Vec<Json>>,
    /// The step's `output`.
    #[serde(default)]
    pub output: Option<Json>,
    /// The step fails with this error.
    #[serde(default)]
    pub error: Option<String>,
    /// Whether the error is transient (a `retry` tries again); default false.
    #[serde(default)]
    pub retryable: bool,
    /// An `http` answer's status; the step fails as it would on a status it does not `expect`.
    #[serde(default)]
    pub status: Option<u16>,
    /// An `http` answer's JSON body.
    #[serde(default)]
    pub json: Option<Json>,
    /// An `http` answer's body as text.
    #[serde(default)]
    pub body: Option<String>,
    /// A `shell` program's exit code (default 0); not 0 fails the step.
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub stdout: Option<String>,
    #[serde(default)]
    pub stderr: Option<String>,
    /// An `approve` step's answer: true approves, false rejects (which stops the run).
    #[serde(default)]
    pub approved: Option<bool>,
    /// Who answered the approval.
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    /// Results by `for_each` item: the item itself when it is text or a number, else its
    /// `error_type`, `entity`, `name`, `id` or `topic` field, else its JSON text.
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, Json>>")]
    pub by_item: Option<BTreeMap<String, Box<MockResult>>>,
}

/// What must follow. Every key is optional; objects are compared on the keys given.
#[derive(Debug, Default, Deserialize, JsonSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The run's end: `succeeded`, `failed`, `timed_out`, `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    /// Text the run's error contains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The steps that ran (succeeded or failed), in order, `on_failure` included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran: Option<Vec<String>>,
    /// The steps whose `when` was false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<Vec<String>>,
    /// Steps that must not run (skipped or never reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ran: Option<Vec<String>>,
    /// Every execution that changes something (runtime ops other than reads, changing SQL,
    /// shell, http and kafka calls that write), by step id, in order: `[]` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<String>>,
    /// The runtime operations that change something, with their arguments, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_ops: Option<Vec<Json>>,
    /// The notifications sent, in order: `to` and `text` (whitespace runs compare as one space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Vec<ExpectNotify>>,
    /// Per step id (`child-playbook/step` for a child run's step).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub steps: BTreeMap<String, ExpectStep>,
}

#[derive(Debug, Deserialize, JsonSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectNotify {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Pieces of text the message contains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<Vec<String>>,
}

/// What one step must have done.
#[derive(Debug, Default, Deserialize, JsonSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectStep {
    /// `succeeded`, `failed`, `skipped`, or `not_run` (never reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// How many times it executed (polls, attempts and items each count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executions: Option<u64>,
    /// The rendered SQL of its first execution (whitespace runs compare as one space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// The bound values of its first execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<Json>>,
    /// Its first rendered input (compared on the keys given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Json>,
    /// Every rendered input, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<Json>>,
    /// Its output as later steps read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Json>,
    /// Text its error contains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
