//! The run loop: a run is opened (recorded, or resumed), its context built, its steps run within
//! the playbook's deadline, `on_failure` run when a step failed, and its end recorded. The step
//! loop is in [`super::step`].

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

use tracing::Instrument;

use super::{state::RunState, Engine, EngineError};
use crate::{
    metrics::{run_trigger, RunLabels},
    playbook::{resolve_params, Catalog, Playbook},
    status::RunStatus,
    steps::{Cancel, ChildOutcome, Launcher, Observer, RunMeta, RunMode},
    store::{
        runs::{self, NewRun},
        versions,
    },
    stream::Settings,
};

/// What starts a run. Serialized, it is the payload of a `runbook.run` queue command:
/// `{"playbook", "params", "trigger", "alert", "alerts", "alerts_ref", "version"}`; the other
/// fields are not queued.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRequest {
    pub playbook: String,
    /// Parameter overrides as text, checked against the playbook's types.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// `{"kind": "cli" | "alert" | "schedule" | "api" | "playbook", ...}`.
    #[serde(default)]
    pub trigger: Json,
    /// The alert that matched, and its group.
    #[serde(default)]
    pub alert: Option<Json>,
    /// The group (the notification's alerts, [`RunRequest::group`]) when it is carried here;
    /// empty when it is `[alert]` or stored by reference (`alerts_ref`).
    #[serde(default)]
    pub alerts: Vec<Json>,
    /// The content hash of the group in the store (`store::alert_groups`), for a notification of
    /// several alerts: each of its runs refers to one stored copy, which the worker reads back
    /// into `alerts`, instead of carrying all of them (N runs of N alerts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts_ref: Option<String>,
    /// The content hash of the playbook version to run ([`Engine::pin`]); without one (a
    /// command queued before versions were kept, a direct run) the catalog's current version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Execute, dry run (`--dry-run`) or plan (`--plan`); never queued.
    #[serde(skip)]
    pub mode: RunMode,
    /// The queue command carrying this run, when a worker runs it.
    #[serde(skip)]
    pub command_id: Option<i64>,
    /// Continue this interrupted run instead of starting a new one.
    #[serde(skip)]
    pub resume: Option<i64>,
    /// Results for the steps instead of executing them (`runbook test`); child runs share them.
    #[serde(skip)]
    pub mocks: Option<Arc<dyn crate::steps::StepMocks>>,
}

impl RunRequest {
    /// The alerts of the notification that started the run (`alerts` in templates): those
    /// carried, or else the one alert, or else none.
    pub fn group(&self) -> Vec<Json> {
        match (&self.alerts[..], &self.alert) {
            ([], Some(alert)) => vec![alert.clone()],
            (alerts, _) => alerts.to_vec(),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub run_id: i64,
    pub playbook: String,
    /// `succeeded`, `failed`, `timed_out`, `cancelled`, or `planned` for a dry run or a plan.
    pub status: RunStatus,
    pub failed_step: Option<String>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub steps: Json,
    /// The playbook's `report:`, rendered (masked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

/// A run just recorded (or resumed): what [`Engine::run_opened`] goes on with.
struct Opened {
    run_id: i64,
    /// What its steps already did (a resumed run).
    done: Map<String, Json>,
    params: Map<String, Json>,
    depth: u32,
    cancel: Cancel,
}

/// How the steps of a run ended: the status, and the failed step with its error.
type Ending = (RunStatus, Option<(String, String)>);

/// The playbook a run runs: the catalog's current version, or the version the run was pinned to
/// when the catalog has moved on since.
pub(super) enum Resolved {
    Current(Arc<Catalog>, String),
    Pinned(Arc<Playbook>),
}

impl std::ops::Deref for Resolved {
    type Target = Playbook;

    fn deref(&self) -> &Playbook {
        match self {
            Resolved::Current(catalog, name) => catalog
                .get(name)
                .expect("a resolved playbook is in its catalog"),
            Resolved::Pinned(pb) => pb,
        }
    }
}

impl Engine {
    /// Runs a playbook to its end and records it. Errors are reasons it could not start.
    pub async fn run(
        &self,
        req: RunRequest,
        observer: Arc<dyn Observer>,
    ) -> Result<RunOutcome, EngineError> {
        let cancel = self.live.new_run();
        self.run_at_depth(req, observer, None, 0, cancel).await
    }

    /// Stops run `id` where it is, if it runs in this process (its watcher would see the
    /// store's `cancel_requested` within a second anyway). `false` when it does not run here.
    pub fn cancel_here(&self, id: i64, reason: &str) -> bool {
        self.live.cancel(id, reason)
    }

    /// Stops every run of this process, and any it would start (Ctrl-C on `runbook run`).
    pub fn cancel_all_here(&self, reason: &str) {
        self.live.cancel_all(reason);
    }

    /// A `playbook:` step's child run, in its parent's mode.
    pub(super) async fn run_child(
        &self,
        name: &str,
        params: BTreeMap<String, String>,
        parent: &RunMeta,
    ) -> Result<RunOutcome, EngineError> {
        let req = RunRequest {
            playbook: name.to_owned(),
            params,
            trigger: json!({ "kind": "playbook", "parent_run": parent.id, "parent_playbook": parent.playbook }),
            mode: parent.mode,
            mocks: parent.mocks.clone(),
            ..Default::default()
        };
        Box::pin(self.run_at_depth(
            req,
            parent.observer.clone(),
            Some(parent.id),
            parent.depth + 1,
            parent.cancel.child(),
        ))
        .await
    }

    async fn run_at_depth(
        &self,
        req: RunRequest,
        observer: Arc<dyn Observer>,
        parent: Option<i64>,
        depth: u32,
        cancel: Cancel,
    ) -> Result<RunOutcome, EngineError> {
        let (pb, version) = self.resolve(&req).await?;
        let pb = &*pb;
        let params = resolve_params(&pb.params, &req.params)?;
        let (run_id, done) = self
            .open_run(pb, &req, &params, parent, version.as_deref())
            .await?;
        let span = tracing::info_span!("run", run_id, playbook = %pb.name);
        let opened = Opened {
            run_id,
            done,
            params,
            depth,
            cancel,
        };
        self.run_opened(pb, req, observer, opened)
            .instrument(span)
            .await
    }

    /// The playbook `req` runs and the hash of its version. A version the catalog holds is
    /// stored first if the request was not pinned (a direct run), so the run record's hash
    /// always leads to the text it ran.
    pub(super) async fn resolve(
        &self,
        req: &RunRequest,
    ) -> Result<(Resolved, Option<String>), EngineError> {
        let catalog = self.catalog();
        let current = catalog.versions.get(&req.playbook);
        match &req.version {
            Some(hash) if current.is_none_or(|v| &v.hash != hash) => {
                let pb = self.pinned(&req.playbook, hash).await?;
                Ok((Resolved::Pinned(pb), Some(hash.clone())))
            }
            pinned => {
                if catalog.get(&req.playbook).is_none() {
                    return Err(EngineError::UnknownPlaybook(req.playbook.clone()));
                }
                if let (None, Some(v)) = (pinned, current) {
                    versions::save(&self.services.store, v).await?;
                }
                let hash = current.map(|v| v.hash.clone());
                Ok((
                    Resolved::Current(catalog.clone(), req.playbook.clone()),
                    hash,
                ))
            }
        }
    }

    /// A recorded run, from its context to its end (in the run's span).
    async fn run_opened(
        &self,
        pb: &Playbook,
        req: RunRequest,
        observer: Arc<dyn Observer>,
        Opened {
            run_id,
            done,
            params,
            depth,
            cancel,
        }: Opened,
    ) -> Result<RunOutcome, EngineError> {
        let meta = RunMeta {
            id: run_id,
            playbook: pb.name.clone(),
            mode: req.mode,
            depth,
            observer,
            cancel,
            deadline: Some(Instant::now() + pb.timeout.as_std()),
            mocks: req.mocks.clone(),
        };
        let store = &self.services.store;
        let lease = self.services.config.streaming.run_lease.as_std();
        let watched = self.live.enter(store, run_id, &meta.cancel, lease).await;
        let mut state = self.context(pb, &req, params, run_id, done).await?;

        let started = Instant::now();
        // run_id and playbook are the fields of the run's span, on every line logged inside it.
        tracing::info!(mode = ?req.mode, "Run started.");
        let (status, failed) = self.run_body(pb, &meta, &mut state).await;
        if status == RunStatus::TimedOut {
            // The deadline dropped the step in progress, and a child run it waited for with it.
            let reason = format!(
                "its parent run {run_id} timed out: the playbook did not finish within {}",
                pb.timeout
            );
            crate::steps::close_tree(&self.services.store, run_id, &reason).await;
        }
        // A cancel is deliberate: it does not page anyone through on_failure.
        if let Some((step, error)) = failed.as_ref().filter(|_| status != RunStatus::Cancelled) {
            self.run_on_failure(pb, &meta, &mut state, step, error)
                .await;
        }
        // Silences it made end with it (each also ends by itself, never past the deadline).
        let silences = silence_ids(pb, &state.ctx["steps"]);
        crate::steps::expire_silences(&self.services, &silences).await;
        let report = self
            .report(pb, &meta, &state, status, failed.as_ref())
            .await;
        if let Some(text) = &report {
            if let Err(e) = runs::set_report(&self.services.store, run_id, text).await {
                tracing::error!(error = %e, "Recording the run's report failed.");
            }
        }
        // The run's own end is not news to its watcher.
        drop(watched);
        let (failed_step, error) = match failed {
            Some((s, e)) => (
                Some(s).filter(|s| !s.is_empty()),
                Some(self.services.masker.mask_str(&e)),
            ),
            None => (None, None),
        };
        runs::finish_run(
            &self.services.store,
            run_id,
            status,
            failed_step.as_deref(),
            error.as_deref(),
        )
        .await?;
        // A dry run and a plan changed nothing: they are not runs the metrics count.
        if req.mode.changes() {
            let labels = RunLabels {
                playbook: pb.name.clone(),
                trigger: run_trigger(&req.trigger).to_owned(),
                status: status.to_string(),
            };
            self.metrics.runs.get_or_create(&labels).inc();
        }
        tracing::info!(status = %status, "Run finished.");
        Ok(RunOutcome {
            run_id,
            playbook: pb.name.clone(),
            status,
            failed_step,
            error,
            duration_ms: started.elapsed().as_millis() as u64,
            steps: self.services.masker.mask_json(&state.ctx["steps"]),
            report,
        })
    }

    /// Records a new run, or for a resumed one reads what its steps already did.
    async fn open_run(
        &self,
        pb: &Playbook,
        req: &RunRequest,
        params: &Map<String, Json>,
        parent: Option<i64>,
        version: Option<&str>,
    ) -> Result<(i64, Map<String, Json>), EngineError> {
        let store = &self.services.store;
        if let Some(id) = req.resume {
            return Ok((id, runs::succeeded_steps(store, id).await?));
        }
        let masker = &self.services.masker;
        let new = NewRun {
            playbook: &pb.name,
            trigger: masker.mask_json(&req.trigger),
            params: masker.mask_json(&Json::Object(params.clone())),
            // A plan is recorded as a dry run: guards and counts of runs leave it out.
            dry_run: !req.mode.changes(),
            parent_id: parent,
            command_id: req.command_id,
            status: RunStatus::Running,
            version,
        };
        Ok((runs::create_run(store, new).await?, Map::new()))
    }

    /// What the run's templates see: `params`, `alert`, `alerts`, `steps` (those already done,
    /// for a resumed run), `runtime`, `run`, `now`, `env`, `actions`.
    async fn context(
        &self,
        pb: &Playbook,
        req: &RunRequest,
        params: Map<String, Json>,
        run_id: i64,
        done: Map<String, Json>,
    ) -> Result<RunState, EngineError> {
        let settings =
            Settings::load(&self.services.store, &self.services.config.streaming).await?;
        let mut ctx = Map::new();
        ctx.insert("params".into(), Json::Object(params));
        ctx.insert(
            "alert".into(),
            req.alert
                .clone()
                .unwrap_or_else(|| json!({ "labels": {}, "annotations": {} })),
        );
        ctx.insert("alerts".into(), Json::Array(req.group()));
        ctx.insert("steps".into(), Json::Object(done));
        ctx.insert("runtime".into(), settings.to_json());
        ctx.insert("run".into(), json!({ "id": run_id, "playbook": pb.name, "trigger": req.trigger, "dry_run": !req.mode.changes() }));
        let now = req.mocks.as_ref().and_then(|m| m.now());
        let now = runs::timestamp(now.unwrap_or_else(Utc::now));
        ctx.insert("now".into(), json!(now));
        ctx.insert(
            "env".into(),
            Json::Object(self.services.config.template_env()),
        );
        // The names of the config's `actions`: a playbook asks for approval only for one it can run.
        let actions: Vec<&String> = self.services.config.actions.keys().collect();
        ctx.insert("actions".into(), json!(actions));
        Ok(RunState::new(ctx, self.services.config.secret_env()))
    }

    /// The playbook's steps within its deadline.
    async fn run_body(&self, pb: &Playbook, meta: &RunMeta, state: &mut RunState) -> Ending {
        let body = self.run_steps(&pb.steps, meta, state);
        match tokio::time::timeout(pb.timeout.as_std(), body).await {
            Ok(None) if !meta.mode.changes() => (RunStatus::Planned, None),
            Ok(None) => (RunStatus::Succeeded, None),
            // Stopped where it was: the step it stopped in, and the cancel's reason.
            Ok(Some((step, error))) => match meta.cancel.reason() {
                Some(reason) => (RunStatus::Cancelled, Some((step, reason))),
                None => (RunStatus::Failed, Some((step, error))),
            },
            Err(_) => (
                RunStatus::TimedOut,
                Some((
                    String::new(),
                    format!("the playbook did not finish within {}", pb.timeout),
                )),
            ),
        }
    }

    /// `on_failure`, with `failed_step` in the context and a deadline of its own, so a
    /// timed-out run can still page someone.
    async fn run_on_failure(
        &self,
        pb: &Playbook,
        meta: &RunMeta,
        state: &mut RunState,
        step: &str,
        error: &str,
    ) {
        if pb.on_failure.is_empty() {
            return;
        }
        state
            .ctx
            .insert("failed_step".into(), json!({ "id": step, "error": error }));
        let limit = Duration::from_secs(300);
        let meta = &RunMeta {
            deadline: Some(Instant::now() + limit),
            ..meta.clone()
        };
        let cleanup = self.run_steps(&pb.on_failure, meta, state);
        if tokio::time::timeout(limit, cleanup).await.is_err() {
            tracing::warn!(
                run_id = meta.id,
                "on_failure steps did not finish within 5 minutes."
            );
        }
    }
}

impl Launcher for Engine {
    fn run_child<'a>(
        &'a self,
        name: &'a str,
        params: BTreeMap<String, String>,
        parent: &'a RunMeta,
    ) -> futures::future::BoxFuture<'a, Result<ChildOutcome, crate::steps::LaunchError>> {
        Box::pin(async move {
            let outcome = Engine::run_child(self, name, params, parent).await?;
            Ok(ChildOutcome {
                run_id: outcome.run_id,
                status: outcome.status,
                error: outcome.error,
                steps: outcome.steps,
            })
        })
    }

    fn preview_after<'a>(
        &'a self,
        run: &'a RunMeta,
        after: &'a str,
        ctx: &'a minijinja::Value,
    ) -> futures::future::BoxFuture<'a, Json> {
        Box::pin(Engine::preview_after(self, run, after, ctx))
    }
}

/// The ids of the Alertmanager silences the run's `silence` steps created (one a step, or one an
/// item under `for_each`).
fn silence_ids(pb: &Playbook, steps: &Json) -> Vec<String> {
    pb.steps
        .iter()
        .chain(&pb.on_failure)
        .filter(|s| matches!(s.kind, crate::steps::StepKind::Silence(_)))
        .flat_map(|s| {
            let output = &steps[&s.id]["output"];
            match output {
                Json::Array(items) => items.iter().collect(),
                one => vec![one],
            }
        })
        .filter_map(|o| o["silence_id"].as_str().map(str::to_owned))
        .collect()
}
