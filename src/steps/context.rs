//! What a step sees while it runs: the shared services, the run's identity, the template
//! context, its deadline, and a [`Launcher`] for `playbook:` steps, which is how a step reaches
//! the engine without importing it.

use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use minijinja::Value;
use serde::Serialize;
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use crate::{
    services::Services,
    status::{RunStatus, StepEventStatus},
};

/// What a step sees while it runs.
pub struct StepCx<'a> {
    pub services: &'a Services,
    pub run: &'a RunMeta,
    pub step_id: &'a str,
    pub ctx: &'a Value,
    pub timeout: Duration,
    pub launcher: &'a dyn Launcher,
}

/// Starts child runs for `playbook:` steps; the engine implements it.
pub trait Launcher: Send + Sync {
    /// Runs playbook `name` as a child of `parent` and waits for its end.
    fn run_child<'a>(
        &'a self,
        name: &'a str,
        params: BTreeMap<String, String>,
        parent: &'a RunMeta,
    ) -> BoxFuture<'a, Result<ChildOutcome, LaunchError>>;

    /// The steps after the `approve` step `after` of run `run`, up to the next `approve` or
    /// the end, rendered on `ctx` and described, masked: what approving lets happen. Nothing
    /// runs. A JSON list (empty when there is nothing to show).
    fn preview_after<'a>(
        &'a self,
        run: &'a RunMeta,
        after: &'a str,
        ctx: &'a Value,
    ) -> BoxFuture<'a, Json>;
}

/// Why a child run could not start (an unknown playbook, bad parameters, the store).
pub type LaunchError = Box<dyn std::error::Error + Send + Sync>;

/// How a child run ended.
#[derive(Debug, Clone)]
pub struct ChildOutcome {
    pub run_id: i64,
    pub status: RunStatus,
    pub error: Option<String>,
    pub steps: Json,
}

/// What a run does with its steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    /// Every step executes.
    #[default]
    Execute,
    /// No step executes: each is rendered and shown (`--dry-run`).
    DryRun,
    /// The steps that only read execute; the others are described, and what they would
    /// produce is unknown to later steps (`--plan`).
    Plan,
}

impl RunMode {
    /// Whether the run may change anything (a dry run and a plan change nothing).
    pub fn changes(self) -> bool {
        self == RunMode::Execute
    }
}

/// A running run, as steps see it.
#[derive(Clone)]
pub struct RunMeta {
    pub id: i64,
    pub playbook: String,
    pub mode: RunMode,
    pub depth: u32,
    pub observer: Arc<dyn Observer>,
    /// Fired when the run must stop where it is: an operator's cancel, a rejected approval,
    /// Ctrl-C. Every wait of the engine and of the steps gives way to it.
    pub cancel: Cancel,
    /// When the run's time is up (its playbook's `timeout`, or `on_failure`'s own): templates
    /// get no more time than this.
    pub deadline: Option<Instant>,
    /// Results a test gives for the run's steps instead of executing them (`runbook test`).
    pub mocks: Option<Arc<dyn super::StepMocks>>,
}

impl RunMeta {
    /// The time templates have for work that may last `timeout`: that long from now, and no
    /// later than the run's deadline.
    pub fn deadline_within(&self, timeout: Duration) -> Instant {
        let own = Instant::now() + timeout;
        self.deadline.map_or(own, |run| run.min(own))
    }

    /// Who a mutation made by this run is attributed to in the audit log.
    pub fn actor(&self) -> String {
        format!("run:{}:{}", self.id, self.playbook)
    }
}

/// One step starting or ending, for whoever watches (the CLI prints these).
#[derive(Debug, Clone, Serialize)]
pub struct StepEvent {
    pub run_id: i64,
    pub playbook: String,
    pub step: String,
    pub kind: &'static str,
    pub depth: u32,
    /// `started`, `succeeded`, `failed`, `skipped`, `planned`; `plan` (a dry run's input, or
    /// an entry of a plan), `waiting` (for an approval), `polled` (an `until` check that did
    /// not hold yet).
    pub status: StepEventStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Json>,
    /// What the step found, masked: `{"rows": [...], "output": ...}` of a step that succeeded
    /// or of a poll. Not in the JSON lines (the run's end carries every step's result).
    #[serde(skip)]
    pub found: Option<Json>,
    /// A failure the run goes on after (`continue_on_error`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub continued: bool,
    /// Which check of an `until` step a `polled` event reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll: Option<Poll>,
    /// In a plan: what the step did or would do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanNote>,
}

/// What a plan says of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanAction {
    /// It only reads, and ran: its output is real.
    Read,
    /// It would change something (or tell someone, or wait): described, not run.
    Change,
    /// Its `when` is false on what the reads found.
    Skip,
    /// Its `when` needs what a change would produce: it runs if that holds.
    WouldRunIf,
    /// What it would do, or what it would find, depends on a change that was not made.
    Unknown,
}

impl PlanAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanAction::Read => "read",
            PlanAction::Change => "change",
            PlanAction::Skip => "skip",
            PlanAction::WouldRunIf => "would_run_if",
            PlanAction::Unknown => "unknown",
        }
    }
}

/// One entry of a plan: the action, in words, with the condition and the values it hinges on.
#[derive(Debug, Clone, Serialize)]
pub struct PlanNote {
    pub action: PlanAction,
    /// What it does or would do, in words: `would scale workerConcurrency from 3 to 6`.
    pub would: String,
    /// The `when` that is false (`skip`) or unknown (`would_run_if`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// The values it needs that only a change would produce (`steps.scale.output`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
    /// For a read: what it found (`rows`, `row_count`, `output`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Json>,
    /// The item of a `for_each` step it is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
}

impl PlanNote {
    pub fn new(action: PlanAction, would: impl Into<String>) -> Self {
        PlanNote {
            action,
            would: would.into(),
            when: None,
            unknown: Vec::new(),
            output: None,
            item: None,
        }
    }
}

/// The count of an `until` step's checks: the `n`th of at most `of`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Poll {
    pub n: u32,
    pub of: u32,
}

pub trait Observer: Send + Sync {
    fn step_event(&self, event: &StepEvent);
}

pub struct NullObserver;

impl Observer for NullObserver {
    fn step_event(&self, _: &StepEvent) {}
}

/// A run's cancellation: a token every wait is `select!`ed with, and the reason it was fired
/// for. A child run's `Cancel` fires with its parent's.
#[derive(Clone, Default)]
pub struct Cancel(Arc<CancelInner>);

#[derive(Default)]
struct CancelInner {
    token: CancellationToken,
    reason: OnceLock<String>,
    parent: Option<Cancel>,
}

impl Cancel {
    /// A cancellation that also fires when this one does (and keeps this one's reason then).
    pub fn child(&self) -> Cancel {
        Cancel(Arc::new(CancelInner {
            token: self.0.token.child_token(),
            reason: OnceLock::new(),
            parent: Some(self.clone()),
        }))
    }

    /// Fires it; the first reason given is kept.
    pub fn cancel(&self, reason: impl Into<String>) {
        let _ = self.0.reason.set(reason.into());
        self.0.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.token.is_cancelled()
    }

    /// Why it fired (its own reason, else its parent's); `None` while it has not.
    pub fn reason(&self) -> Option<String> {
        if !self.is_cancelled() {
            return None;
        }
        self.0
            .reason
            .get()
            .cloned()
            .or_else(|| self.0.parent.as_ref().and_then(Cancel::reason))
            .or_else(|| Some("cancelled".to_owned()))
    }

    /// Resolves when it fires.
    pub async fn cancelled(&self) {
        self.0.token.cancelled().await
    }

    /// Sleeps for `d`, or less when it fires first: then the reason is the error.
    pub async fn sleep(&self, d: Duration) -> Result<(), String> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.0.token.cancelled() => Err(self.reason().unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancel_cuts_a_sleep_short_and_reaches_children_with_its_reason() {
        let run = Cancel::default();
        let child = run.child();
        assert_eq!(run.reason(), None);
        assert_eq!(run.sleep(Duration::from_millis(1)).await, Ok(()));
        let canceller = run.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            canceller.cancel("cancelled by cli:alice");
            canceller.cancel("a second reason is ignored");
        });
        let started = std::time::Instant::now();
        let slept = child.sleep(Duration::from_secs(3600)).await;
        assert_eq!(slept, Err("cancelled by cli:alice".to_owned()));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(run.reason().as_deref(), Some("cancelled by cli:alice"));
        // A child fired on its own does not stop its parent.
        let other = Cancel::default();
        other.child().cancel("child only");
        assert!(!other.is_cancelled());
    }
}
