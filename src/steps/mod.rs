//! Step kinds: a closed enum, one file per kind, and one `match` per phase.
//!
//! Each kind is compiled from its raw YAML once ([`StepKind::from_raw`]), then at run time
//! rendered ([`StepKind::render`]: templates filled, values bound, nothing executed; this is what
//! `--dry-run` prints and what the run record keeps as the step's input) and executed
//! ([`StepKind::execute`]).

mod action;
mod approve;
mod assert;
mod call;
mod context;
mod dur_spec;
mod http;
mod kafka;
mod mock;
mod names;
mod notify;
mod promql;
mod runtime;
mod shell;
mod short;
mod silence;
mod sql;
mod tcp_check;
mod wait;

use std::time::Duration;

use serde::Serialize;
use serde_json::Value as Json;

pub use call::{close_tree, CHILD_GRACE};
pub use context::{
    Cancel, ChildOutcome, LaunchError, Launcher, NullObserver, Observer, PlanAction, PlanNote,
    Poll, RunMeta, RunMode, StepCx, StepEvent,
};

use crate::duration::Dur;
pub use dur_spec::DurSpec;
pub use mock::{MockAnswer, MockCall, StepMocks};
pub use names::Names;
use schemars::JsonSchema;
use serde::Deserialize;
pub use short::ShortOr;
pub use silence::expire_for_run as expire_silences;

use self::{
    action::RawAction, approve::RawApprove, assert::RawAssert, call::RawCall, http::RawHttp,
    kafka::RawKafka, notify::RawNotify, promql::RawPromql, runtime::RuntimeSchema, shell::RawShell,
    silence::RawSilence, sql::RawSql, tcp_check::RawTcpCheck,
};
use std::collections::BTreeMap;

/// Any YAML value; strings inside are templates.
pub type Yaml = serde_yaml::Value;

/// One step: the common keys and exactly one kind key (`sql`, `http`, ...).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// Unique within the playbook; later steps read `steps.<id>`.
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Expression; the step is skipped when it is false.
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub retry: Option<RawRetry>,
    #[serde(default)]
    pub continue_on_error: bool,
    /// An expression giving a list, or a literal list; the step runs once per element as `item`.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub for_each: Option<Yaml>,
    /// Expression; the step is repeated every `every` until it is true, for at most `within`.
    #[serde(default)]
    pub until: Option<String>,
    /// A duration, or a template rendered when the step runs (`"{{ params.poll_every }}"`).
    #[serde(default)]
    pub every: Option<DurSpec>,
    /// A duration, or a template rendered when the step runs (`"{{ params.verify_within }}"`).
    #[serde(default)]
    pub within: Option<DurSpec>,

    #[serde(default)]
    pub sql: Option<ShortOr<RawSql>>,
    #[serde(default)]
    pub promql: Option<ShortOr<RawPromql>>,
    #[serde(default)]
    pub http: Option<RawHttp>,
    #[serde(default)]
    pub kafka: Option<RawKafka>,
    #[serde(default)]
    #[schemars(with = "Option<RuntimeSchema>")]
    pub runtime: Option<BTreeMap<String, Yaml>>,
    #[serde(default)]
    pub shell: Option<RawShell>,
    #[serde(default)]
    pub tcp_check: Option<ShortOr<RawTcpCheck>>,
    /// A duration, or a template rendered when the step runs (`"{{ params.recovery_wait }}"`).
    #[serde(default)]
    pub wait: Option<DurSpec>,
    #[serde(default)]
    pub assert: Option<ShortOr<RawAssert>>,
    #[serde(default)]
    pub approve: Option<RawApprove>,
    #[serde(default)]
    pub notify: Option<RawNotify>,
    #[serde(default)]
    pub playbook: Option<ShortOr<RawCall>>,
    /// Silences the alert in Alertmanager while the run goes on.
    #[serde(default)]
    pub silence: Option<RawSilence>,
    /// Runs an action the config names (`actions:`): a command or an HTTP request.
    #[serde(default)]
    pub action: Option<RawAction>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: u32,
    #[serde(default)]
    pub backoff: Option<Dur>,
}

/// How a template string is interpreted, for validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// Rendered to text.
    Text,
    /// Rendered to SQL with bound values.
    Sql,
    /// Rendered to a URL with encoded values.
    Url,
    /// An expression.
    Expr,
    /// A YAML value: a sole `{{ expr }}` keeps its type, other text renders.
    Value,
}

/// A step kind's compile errors: the sub-path under the step (`.runtime.op`) and the message.
pub type CompileError = (String, String);

/// What every step kind provides, each in its own file: its compiled form from its raw YAML,
/// the templates it holds (for `runbook validate`), the config names it refers to, its rendered
/// input (recorded, and printed by `--dry-run`), and how that input executes.
pub trait Kind: Sized {
    type Raw;
    type Input: Serialize;

    fn compile(raw: Self::Raw) -> Result<Self, CompileError>;

    /// Every template with its sub-path and flavour.
    fn templates(&self) -> Vec<(String, &str, Flavour)>;

    /// Whether the step only reads (diagnosis), as opposed to changing something or telling
    /// someone. The global pause lets runs whose every step reads go on.
    fn is_read(&self) -> bool;

    /// Problems with names that must exist in the config.
    fn check_names(&self, _names: &Names) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Fills the templates; executes nothing.
    fn render(&self, cx: &StepCx<'_>) -> Result<Self::Input, StepError>;

    fn execute(
        input: Self::Input,
        cx: &StepCx<'_>,
    ) -> impl std::future::Future<Output = Result<StepOutput, StepError>> + Send;
}

/// A compiled step kind.
#[derive(Debug)]
pub enum StepKind {
    Sql(sql::SqlStep),
    Promql(promql::PromqlStep),
    Http(http::HttpStep),
    Kafka(kafka::KafkaStep),
    Runtime(runtime::RuntimeStep),
    Shell(shell::ShellStep),
    TcpCheck(tcp_check::TcpCheckStep),
    Wait(wait::WaitStep),
    Assert(assert::AssertStep),
    Approve(approve::ApproveStep),
    Notify(notify::NotifyStep),
    Playbook(call::CallStep),
    Silence(silence::SilenceStep),
    Action(action::ActionStep),
}

/// What a step kind produced: rows (tabular results) and any other output.
#[derive(Debug, Default, Clone, Serialize)]
pub struct StepOutput {
    pub rows: Vec<Json>,
    pub output: Json,
}

impl StepOutput {
    pub fn value(output: Json) -> Self {
        StepOutput {
            rows: Vec::new(),
            output,
        }
    }
}

/// Why a step failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A transient failure (connection refused, 5xx, timeout); `retry` may help.
    #[error("{message}")]
    Retryable {
        message: String,
        after: Option<Duration>,
    },
    /// Trying again will fail the same way (bad SQL, 4xx, assertion false, refused by policy).
    #[error("{0}")]
    Fatal(String),
}

impl StepError {
    pub fn fatal(m: impl Into<String>) -> Self {
        StepError::Fatal(m.into())
    }
    pub fn retryable(m: impl Into<String>) -> Self {
        StepError::Retryable {
            message: m.into(),
            after: None,
        }
    }
    /// The same error, its message after `what` (the config key of a service that failed,
    /// such as "Prometheus (prometheus.url http://...)").
    pub fn about(self, what: &str) -> Self {
        match self {
            StepError::Retryable { message, after } => StepError::Retryable {
                message: format!("{what}: {message}"),
                after,
            },
            StepError::Fatal(message) => StepError::Fatal(format!("{what}: {message}")),
        }
    }

    pub fn template(e: minijinja::Error) -> Self {
        StepError::Fatal(crate::template::message(&e))
    }
}

/// A step's concrete input after rendering: recorded, printed by `--dry-run`, then executed.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Rendered {
    Sql(sql::Input),
    Promql(promql::Input),
    Http(http::Input),
    Kafka(kafka::Input),
    Runtime(runtime::Input),
    Shell(shell::Input),
    TcpCheck(tcp_check::Input),
    Wait(wait::Input),
    Assert(assert::Input),
    Approve(approve::Input),
    Notify(notify::Input),
    Playbook(call::Input),
    Silence(silence::Input),
    Action(action::Input),
}

/// Applies `$e` to the kind inside a `StepKind`, whatever it is.
macro_rules! each_kind {
    ($kind:expr, $s:ident => $e:expr) => {
        match $kind {
            StepKind::Sql($s) => $e,
            StepKind::Promql($s) => $e,
            StepKind::Http($s) => $e,
            StepKind::Kafka($s) => $e,
            StepKind::Runtime($s) => $e,
            StepKind::Shell($s) => $e,
            StepKind::TcpCheck($s) => $e,
            StepKind::Wait($s) => $e,
            StepKind::Assert($s) => $e,
            StepKind::Approve($s) => $e,
            StepKind::Notify($s) => $e,
            StepKind::Playbook($s) => $e,
            StepKind::Silence($s) => $e,
            StepKind::Action($s) => $e,
        }
    };
}

impl StepKind {
    /// Compiles the one kind a raw step names. Errors carry a sub-path (`.sql.query`) and a message.
    pub fn from_raw(s: RawStep) -> Result<StepKind, CompileError> {
        let mut kinds: Vec<&str> = Vec::new();
        macro_rules! seen {
            ($($f:ident),*) => { $( if s.$f.is_some() { kinds.push(stringify!($f)); } )* };
        }
        seen!(
            sql, promql, http, kafka, runtime, shell, tcp_check, wait, assert, approve, notify,
            playbook, silence, action
        );
        match kinds.len() {
            0 => {
                return Err((
                    String::new(),
                    format!(
                        "step `{}` has no kind: add one of sql, promql, http, kafka, runtime, shell, tcp_check, wait, assert, approve, notify, playbook, silence, action",
                        s.id
                    ),
                ))
            }
            1 => {}
            _ => return Err((format!(".{}", kinds[1]), format!("step `{}` has several kinds: {}", s.id, kinds.join(", ")))),
        }
        Ok(match s {
            RawStep { sql: Some(r), .. } => StepKind::Sql(Kind::compile(r.0)?),
            RawStep {
                promql: Some(r), ..
            } => StepKind::Promql(Kind::compile(r.0)?),
            RawStep { http: Some(r), .. } => StepKind::Http(Kind::compile(r)?),
            RawStep { kafka: Some(r), .. } => StepKind::Kafka(Kind::compile(r)?),
            RawStep {
                runtime: Some(r), ..
            } => StepKind::Runtime(Kind::compile(r)?),
            RawStep { shell: Some(r), .. } => StepKind::Shell(Kind::compile(r)?),
            RawStep {
                tcp_check: Some(r), ..
            } => StepKind::TcpCheck(Kind::compile(r.0)?),
            RawStep { wait: Some(d), .. } => StepKind::Wait(Kind::compile(d)?),
            RawStep {
                assert: Some(r), ..
            } => StepKind::Assert(Kind::compile(r.0)?),
            RawStep {
                approve: Some(r), ..
            } => StepKind::Approve(Kind::compile(r)?),
            RawStep {
                notify: Some(r), ..
            } => StepKind::Notify(Kind::compile(r)?),
            RawStep {
                playbook: Some(r), ..
            } => StepKind::Playbook(Kind::compile(r.0)?),
            RawStep {
                silence: Some(r), ..
            } => StepKind::Silence(Kind::compile(r)?),
            RawStep {
                action: Some(r), ..
            } => StepKind::Action(Kind::compile(r)?),
            _ => unreachable!("exactly one kind was counted above"),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Sql(_) => "sql",
            StepKind::Promql(_) => "promql",
            StepKind::Http(_) => "http",
            StepKind::Kafka(_) => "kafka",
            StepKind::Runtime(_) => "runtime",
            StepKind::Shell(_) => "shell",
            StepKind::TcpCheck(_) => "tcp_check",
            StepKind::Wait(_) => "wait",
            StepKind::Assert(_) => "assert",
            StepKind::Approve(_) => "approve",
            StepKind::Notify(_) => "notify",
            StepKind::Playbook(_) => "playbook",
            StepKind::Silence(_) => "silence",
            StepKind::Action(_) => "action",
        }
    }

    /// Every template the kind holds, with its sub-path and flavour, for validation.
    pub fn templates(&self) -> Vec<(String, &str, Flavour)> {
        each_kind!(self, s => s.templates())
    }

    /// Whether the step only reads (see [`Kind::is_read`]).
    pub fn is_read(&self) -> bool {
        each_kind!(self, s => s.is_read())
    }

    /// Whether running the step again after a timeout or a transient failure is safe: not for
    /// a `sql` statement that changes things unless it says `idempotent: true`.
    /// How long past its timeout the engine waits for a step that stops itself: an `sql` step
    /// cancels its statement on the database before its deadline and then records the outcome
    /// (the audit record of a change), which the engine's own timer must not cut short on a
    /// loaded machine. The statement itself never runs past the deadline; only that record may.
    pub fn wind_down(&self, timeout: std::time::Duration) -> std::time::Duration {
        match self {
            StepKind::Sql(_) => sql::margin(timeout) + std::time::Duration::from_secs(5),
            _ => std::time::Duration::ZERO,
        }
    }

    pub fn retries_safely(&self) -> bool {
        match self {
            StepKind::Sql(s) => s.retries_safely(),
            _ => true,
        }
    }

    /// The playbook a `playbook:` step calls.
    pub fn calls(&self) -> Option<&str> {
        match self {
            StepKind::Playbook(c) => Some(&c.name),
            _ => None,
        }
    }

    /// Names that must exist in the config: datasources and notify channels.
    pub fn check_names(&self, names: &Names) -> Vec<(String, String)> {
        each_kind!(self, s => s.check_names(names))
    }

    /// Fills the templates; executes nothing.
    pub fn render(&self, cx: &StepCx<'_>) -> Result<Rendered, StepError> {
        Ok(match self {
            StepKind::Sql(s) => Rendered::Sql(s.render(cx)?),
            StepKind::Promql(s) => Rendered::Promql(s.render(cx)?),
            StepKind::Http(s) => Rendered::Http(s.render(cx)?),
            StepKind::Kafka(s) => Rendered::Kafka(s.render(cx)?),
            StepKind::Runtime(s) => Rendered::Runtime(s.render(cx)?),
            StepKind::Shell(s) => Rendered::Shell(s.render(cx)?),
            StepKind::TcpCheck(s) => Rendered::TcpCheck(s.render(cx)?),
            StepKind::Wait(s) => Rendered::Wait(s.render(cx)?),
            StepKind::Assert(s) => Rendered::Assert(s.render(cx)?),
            StepKind::Approve(s) => Rendered::Approve(s.render(cx)?),
            StepKind::Notify(s) => Rendered::Notify(s.render(cx)?),
            StepKind::Playbook(s) => Rendered::Playbook(s.render(cx)?),
            StepKind::Silence(s) => Rendered::Silence(s.render(cx)?),
            StepKind::Action(s) => Rendered::Action(s.render(cx)?),
        })
    }

    /// Executes a rendered input; a run under test asks its mocks first.
    pub async fn execute(&self, input: Rendered, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
        if let Some(mocks) = cx.run.mocks.as_deref() {
            match mocks.answer(self.mock_call(&input, cx, mocks)) {
                MockAnswer::Result(r) => return r,
                MockAnswer::Cancel(reason) => {
                    cx.run.cancel.cancel(reason.clone());
                    return Err(StepError::Fatal(reason));
                }
                MockAnswer::Execute => {}
            }
        }
        match input {
            Rendered::Sql(i) => sql::SqlStep::execute(i, cx).await,
            Rendered::Promql(i) => promql::PromqlStep::execute(i, cx).await,
            Rendered::Http(i) => http::HttpStep::execute(i, cx).await,
            Rendered::Kafka(i) => kafka::KafkaStep::execute(i, cx).await,
            Rendered::Runtime(i) => runtime::RuntimeStep::execute(i, cx).await,
            Rendered::Shell(i) => shell::ShellStep::execute(i, cx).await,
            Rendered::TcpCheck(i) => tcp_check::TcpCheckStep::execute(i, cx).await,
            Rendered::Wait(i) => wait::WaitStep::execute(i, cx).await,
            Rendered::Assert(i) => assert::AssertStep::execute(i, cx).await,
            Rendered::Approve(i) => approve::ApproveStep::execute(i, cx).await,
            Rendered::Notify(i) => notify::NotifyStep::execute(i, cx).await,
            Rendered::Playbook(i) => call::CallStep::execute(i, cx).await,
            Rendered::Silence(i) => silence::SilenceStep::execute(i, cx).await,
            Rendered::Action(i) => action::ActionStep::execute(i, cx).await,
        }
    }
}

impl StepKind {
    /// What a run under test tells its mocks about this execution.
    fn mock_call<'a>(
        &self,
        input: &Rendered,
        cx: &StepCx<'a>,
        mocks: &dyn StepMocks,
    ) -> MockCall<'a> {
        let mut json = serde_json::to_value(input).unwrap_or_default();
        // The dialect the test compares SQL in, whatever the throwaway store speaks.
        if let (StepKind::Sql(s), Some(dialect)) = (self, mocks.dialect()) {
            if let Ok(q) = cx.services.templates.render_sql(&s.query, cx.ctx, dialect) {
                json["dialect"] = serde_json::to_value(dialect).unwrap_or_default();
                json["sql"] = Json::String(q.sql);
                json["params"] = Json::Array(q.params);
            }
        }
        let item = cx
            .ctx
            .get_attr("item")
            .ok()
            .filter(|v| !v.is_undefined())
            .map(|v| crate::template::to_json(&v));
        MockCall {
            run_id: cx.run.id,
            playbook: &cx.run.playbook,
            step: cx.step_id,
            kind: self.name(),
            input: cx.services.masker.mask_json(&json),
            item,
            // An action the config does not name only tells a person what to do.
            changes: !self.is_read() && !unconfigured_action(self, &json),
        }
    }
}

/// Whether `kind` is an `action` the config does not name: it tells a person, and changes nothing.
fn unconfigured_action(kind: &StepKind, input: &Json) -> bool {
    matches!(kind, StepKind::Action(_)) && input["configured"] == Json::Bool(false)
}
