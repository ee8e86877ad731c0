//! What a step sees while it runs: the shared services, the run's identity, the template
//! context, its deadline, and a [`Launcher`] for `playbook:` steps, which is how a step reaches
//! the engine without importing it.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use minijinja::Value;
use serde::Serialize;
use serde_json::Value as Json;

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

/// A running run, as steps see it.
#[derive(Clone)]
pub struct RunMeta {
    pub id: i64,
    pub playbook: String,
    pub dry_run: bool,
    pub depth: u32,
    pub observer: Arc<dyn Observer>,
}

impl RunMeta {
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
    /// `started`, `succeeded`, `failed`, `skipped`, `planned`; `plan` (a dry run's input),
    /// `waiting` (for an approval).
    pub status: StepEventStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Json>,
}

pub trait Observer: Send + Sync {
    fn step_event(&self, event: &StepEvent);
}

pub struct NullObserver;

impl Observer for NullObserver {
    fn step_event(&self, _: &StepEvent) {}
}
