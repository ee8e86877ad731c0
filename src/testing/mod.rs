//! `runbook test`: unit tests for playbooks, as `promtool test rules` is for alert rules. A test
//! file ([`spec`]) gives a playbook its trigger and the results its steps get ([`mocks`]); the
//! real engine runs it on a throwaway SQLite store with every execution answered by the mocks,
//! so nothing outside is touched, and what followed is compared with what must ([`expect`]).
//! `until` polls and `retry` backoffs take no time: the mocks count polls as the engine would
//! in the case's virtual time.

mod expect;
mod mocks;
pub mod spec;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use serde::Serialize;
use serde_json::{json, Value as Json};

use self::{
    expect::{compare, Actual},
    mocks::{CaseMocks, PollLimit},
    spec::{Case, TestDialect, TestFile},
};
use crate::{
    config::Config,
    diagnostics::Diagnostic,
    duration::Dur,
    engine::{Engine, NullObserver, RunRequest},
    metrics::Metrics,
    playbook::{Catalog, Step},
    secrets::Masker,
    services::Services,
    steps::DurSpec,
    store::Db,
    template::Dialect,
};

/// How long one case may run (its steps take no time; this only stops a case that hangs).
const CASE_LIMIT: Duration = Duration::from_secs(60);

/// How a case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It met its expectations.
    Ok,
    Failed,
    /// It failed as its `xfail` says it would.
    Xfail,
}

/// One case's report.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub file: PathBuf,
    /// `<playbook>::<case>`.
    pub name: String,
    pub outcome: Outcome,
    /// Why it failed, when it did not get as far as comparing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Expected against actual, as a unified diff.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xfail: Option<String>,
}

/// What the cases run against: the playbooks folder and the config.
pub struct TestEnv {
    pub runbooks: PathBuf,
    pub config: Arc<Config>,
}

/// The test files under `path`: the file itself, or every `*.yaml`/`*.yml` of the folder.
/// Problems are `path:line:col: message`.
pub fn load_files(path: &Path) -> Result<Vec<(PathBuf, TestFile)>, Vec<Diagnostic>> {
    let files = crate::playbook::playbook_files(path).map_err(|e| {
        vec![Diagnostic::new(
            path,
            (0, 0),
            format!("cannot read test files: {e}"),
        )]
    })?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let text = match crate::playbook::read_source(&file) {
            Ok(t) => t,
            Err(d) => {
                problems.push(d);
                continue;
            }
        };
        match serde_yaml::from_str::<TestFile>(&text) {
            Ok(t) => {
                let mut seen = std::collections::BTreeSet::new();
                for c in &t.cases {
                    if !seen.insert(c.name.as_str()) {
                        problems.push(Diagnostic::new(
                            &file,
                            (0, 0),
                            format!("two cases are named `{}`", c.name),
                        ));
                    }
                }
                out.push((file, t));
            }
            Err(e) => {
                let at = e.location().map_or((0, 0), |l| (l.line(), l.column()));
                problems.push(Diagnostic::new(&file, at, e.to_string()));
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Runs one case.
pub async fn run_case(env: &TestEnv, file: &Path, tf: &TestFile, case: &Case) -> CaseReport {
    let result = run_inner(env, &tf.playbook, case).await;
    let (mut outcome, message, diff) = match result {
        Ok(None) => (Outcome::Ok, None, None),
        Ok(Some(diff)) => (Outcome::Failed, None, Some(diff)),
        Err(m) => (Outcome::Failed, Some(m), None),
    };
    let mut message = message;
    match (&case.xfail, outcome) {
        (Some(_), Outcome::Failed) => outcome = Outcome::Xfail,
        (Some(reason), Outcome::Ok) => {
            outcome = Outcome::Failed;
            message = Some(format!(
                "the case passes but is marked `xfail` ({reason}): remove the mark"
            ));
        }
        _ => {}
    }
    CaseReport {
        file: file.to_owned(),
        name: format!("{}::{}", tf.playbook, case.name),
        outcome,
        message,
        diff,
        xfail: case.xfail.clone(),
    }
}

/// `Ok(None)` when the case passes, `Ok(Some(diff))` when the run differs from the
/// expectation, `Err` when the case could not run as written.
async fn run_inner(env: &TestEnv, playbook: &str, case: &Case) -> Result<Option<String>, String> {
    let now = case
        .now
        .as_deref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| format!("`now: {t}` is not an RFC 3339 time: {e}"))
        })
        .transpose()?;
    let (mut catalog, diags) = Engine::load_playbooks(&env.runbooks, &env.config);
    if !diags.is_empty() {
        let problems: Vec<String> = diags.iter().map(ToString::to_string).collect();
        return Err(format!(
            "the playbooks have errors:\n{}",
            problems.join("\n")
        ));
    }
    let pb = catalog.get(playbook).ok_or_else(|| {
        format!(
            "no playbook `{playbook}` in {} (test files name a playbook by its `name`)",
            env.runbooks.display()
        )
    })?;
    check_mock_keys(&catalog, playbook, case)?;
    let (trigger, alert) = match &case.alert {
        None => (json!({ "kind": "test" }), None),
        Some(a) => {
            if !pb.triggers.alerts.iter().any(|m| m.matches(&a.labels)) {
                return Err(format!(
                    "the case's alert {:?} does not match playbook `{playbook}`'s `on.alerts`",
                    a.labels
                ));
            }
            let value = alert_value(a, now);
            let trigger = json!({
                "kind": "alert", "fingerprint": value["fingerprint"], "starts_at": value["startsAt"],
                "status": value["status"], "alertname": a.labels.get("alertname"),
            });
            (trigger, Some(value))
        }
    };
    let dialect = case.dialect.map(|d| match d {
        TestDialect::Sqlite => Dialect::Sqlite,
        TestDialect::Postgres => Dialect::Postgres,
    });
    let order: Vec<String> = pb
        .steps
        .iter()
        .chain(&pb.on_failure)
        .map(|s| s.id.clone())
        .collect();

    let params: BTreeMap<String, String> = case
        .params
        .iter()
        .map(|(k, v)| (k.clone(), yaml_text(v)))
        .collect();
    let limits = virtual_time(&mut catalog, playbook, &params)?;
    let mocks = Arc::new(CaseMocks::new(
        playbook.to_owned(),
        case.mocks
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        limits,
        dialect,
        now,
    ));
    let store = Scratch::new(case).await?;
    let masker = Masker::new(env.config.streaming.sensitive_fields.clone());
    let config = if case.actions.is_empty() {
        env.config.clone()
    } else {
        let mut config = (*env.config).clone();
        config.actions.extend(case.actions.clone());
        Arc::new(config)
    };
    let services = Arc::new(Services::new(store.db.clone(), config, masker));
    let engine = Engine::new(services, Arc::new(Metrics::new()), catalog);
    let req = RunRequest {
        playbook: playbook.to_owned(),
        params,
        trigger,
        alerts: alert.iter().cloned().collect(),
        alert,
        mocks: Some(mocks.clone()),
        ..Default::default()
    };
    let ran = tokio::time::timeout(CASE_LIMIT, engine.run(req, Arc::new(NullObserver))).await;
    drop(engine);
    store.remove().await;
    let outcome = match ran {
        Err(_) => return Err(format!("the run did not finish within {}", Dur(CASE_LIMIT))),
        Ok(Err(e)) => return Err(format!("the run could not start: {e}")),
        Ok(Ok(o)) => o,
    };
    let unmocked = mocks.unmocked();
    if !unmocked.is_empty() {
        return Err(format!(
            "{} executed without a mock: give {} under `mocks`",
            unmocked
                .iter()
                .map(|s| format!("step `{s}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if unmocked.len() == 1 {
                "its result"
            } else {
                "their results"
            }
        ));
    }
    let calls = mocks.calls();
    let actual = Actual {
        status: outcome.status.to_string(),
        failed_step: outcome.failed_step.clone(),
        error: outcome.error.clone(),
        steps: order
            .iter()
            .filter_map(|id| outcome.steps.get(id).map(|r| (id.clone(), r.clone())))
            .collect(),
        calls: &calls,
    };
    Ok(compare(&case.expect, &actual))
}

/// A mock key must name a step: of the playbook, or `child/step` of a playbook it may call.
fn check_mock_keys(catalog: &Catalog, playbook: &str, case: &Case) -> Result<(), String> {
    let has = |pb: &str, step: &str| {
        catalog
            .get(pb)
            .is_some_and(|p| p.steps.iter().chain(&p.on_failure).any(|s| s.id == step))
    };
    let keys = case.mocks.keys().chain(case.expect.steps.keys());
    for key in keys {
        let ok = match key.split_once('/') {
            Some((child, step)) => has(child, step),
            None => has(playbook, key),
        };
        if !ok {
            return Err(format!(
                "`{key}` names no step of playbook `{}` (a child run's step is `playbook/step`)",
                key.split_once('/').map_or(playbook, |(c, _)| c)
            ));
        }
    }
    Ok(())
}

/// Makes polls and backoffs take no time, and returns how many polls each `until` step gets
/// before the engine would give up in the case's virtual time: a poll every `every` from the
/// start, while the next one still falls within `within`. A templated `every` or `within` is
/// rendered with the params: the case's (over the defaults) for the playbook under test, the
/// defaults for the playbooks it calls.
fn virtual_time(
    catalog: &mut Catalog,
    root: &str,
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, PollLimit>, String> {
    let templates = crate::template::Templates::new();
    let mut limits = BTreeMap::new();
    for (name, pb) in catalog.playbooks.iter_mut() {
        let none = BTreeMap::new();
        let params =
            crate::playbook::resolve_params(&pb.params, if name == root { given } else { &none })
                .map(Json::Object)
                .unwrap_or(Json::Null);
        let ctx = minijinja::Value::from_serialize(json!({ "params": params }));
        let steps: Vec<&mut Step> = pb
            .steps
            .iter_mut()
            .chain(pb.on_failure.iter_mut())
            .collect();
        for step in steps {
            step.retry.backoff = Dur(Duration::ZERO);
            let Some(u) = step.until.as_mut() else {
                continue;
            };
            let resolve = |key: &str, spec: &DurSpec| {
                spec.resolve(key, &templates, &ctx)
                    .map_err(|e| format!("playbook `{name}`, step `{}`: {e}", step.id))
            };
            let (every, within) = (resolve("every", &u.every)?, resolve("within", &u.within)?);
            let polls =
                (within.as_std().as_millis() / every.as_std().as_millis().max(1)) as usize + 1;
            let key = if name == root {
                step.id.clone()
            } else {
                format!("{name}/{}", step.id)
            };
            limits.insert(
                key,
                PollLimit {
                    polls,
                    error: format!(
                        "`{}` still false after {polls} checks within {}",
                        u.expr, within
                    ),
                },
            );
            u.every = DurSpec::Fixed(Dur(Duration::ZERO));
        }
    }
    Ok(limits)
}

/// The alert as the receiver hands it to a run.
fn alert_value(a: &spec::TestAlert, now: Option<chrono::DateTime<chrono::Utc>>) -> Json {
    let starts = a
        .starts_at
        .clone()
        .unwrap_or_else(|| crate::store::runs::timestamp(now.unwrap_or_else(chrono::Utc::now)));
    json!({
        "labels": a.labels, "annotations": a.annotations,
        "status": a.status.as_deref().unwrap_or("firing"),
        "startsAt": starts, "endsAt": "",
        "fingerprint": a.fingerprint.as_deref().unwrap_or("0000000000000000"),
        "generatorURL": "", "externalURL": "",
    })
}

/// A parameter as `--param` text.
fn yaml_text(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Number(n) => n.to_string(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// A case's throwaway store: a SQLite file of its own in the temp folder, removed afterwards.
struct Scratch {
    db: Db,
    path: PathBuf,
}

impl Scratch {
    async fn new(case: &Case) -> Result<Scratch, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "runbook-test-{}-{}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let fail = |e: &dyn std::fmt::Display| format!("the scratch store {}: {e}", path.display());
        let db = Db::connect(&format!("sqlite://{}", path.display()), false, 4)
            .await
            .map_err(|e| fail(&crate::text::error_chain(&e)))?;
        let scratch = Scratch { db, path };
        if let Err(e) = scratch.prepare(case).await {
            scratch.remove().await;
            return Err(e);
        }
        Ok(scratch)
    }

    async fn prepare(&self, case: &Case) -> Result<(), String> {
        let db = &self.db;
        db.migrate()
            .await
            .map_err(|e| format!("the scratch store: {}", crate::text::error_chain(&e)))?;
        let known = [
            "workerConcurrency",
            "workerBatchSize",
            "maxRetries",
            "maxBackoffMs",
            "lockTtl",
        ];
        for (k, v) in &case.runtime {
            if !known.contains(&k.as_str()) {
                return Err(format!(
                    "`runtime.{k}` is not a runtime setting (known: {})",
                    known.join(", ")
                ));
            }
            db.sql(
                "INSERT INTO runtime_settings (key, value) VALUES ($1, $2)",
                vec![json!(k), json!(v.to_string())],
            )
            .await
            .map_err(|e| format!("`runtime.{k}`: {}", crate::text::error_chain(&e)))?;
        }
        if let Some(id) = case.run_id {
            if id < 1 {
                return Err(format!("`run_id: {id}` must be 1 or more"));
            }
            db.sql(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('runbook_runs', $1)",
                vec![json!(id - 1)],
            )
            .await
            .map_err(|e| format!("`run_id`: {}", crate::text::error_chain(&e)))?;
        }
        Ok(())
    }

    async fn remove(self) {
        self.db.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The JSON Schema of a test file (`runbook schema test`).
pub fn schema() -> Json {
    let schema = schemars::schema_for!(TestFile);
    let mut v = serde_json::to_value(schema).unwrap_or_default();
    v["$id"] = Json::String("https://runbook.dev/schema/test.json".into());
    v["title"] = Json::String("runbook playbook tests (runbooks/tests/*.yaml)".into());
    v
}
