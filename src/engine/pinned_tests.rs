//! A run pinned to a playbook version runs that version's text after the catalog has moved on;
//! an unpinned run runs (and stores) the catalog's current version; the run record keeps the hash.

use std::{path::Path, sync::Arc};

use serde_json::json;

use super::{Engine, EngineError, RunRequest};
use crate::{
    config::Config,
    metrics::Metrics,
    playbook::{compile_source, Catalog, CompileEnv},
    secrets::Masker,
    services::Services,
    status::RunStatus,
    steps::NullObserver,
    store::{runs, versions, Db},
};

const V1: &str = "name: p\nsteps:\n  - id: one\n    wait: 1ms\n";
const V2: &str = "name: p\nsteps:\n  - id: two\n    wait: 1ms\n";

fn catalog(text: &str) -> Catalog {
    let path = Path::new("runbooks/p.yaml");
    let (pb, _) = compile_source(path, text, &CompileEnv::default()).unwrap();
    let mut c = Catalog::default();
    c.insert(pb, text);
    c
}

async fn engine(dir: &tempfile::TempDir) -> Engine {
    let url = format!("sqlite://{}", dir.path().join("runbook.db").display());
    let store = Db::connect(&url, false, 4).await.unwrap();
    store.migrate().await.unwrap();
    let services = Arc::new(Services::new(
        store,
        Arc::new(Config::default()),
        Masker::new(Vec::new()),
    ));
    Engine::new(services, Arc::new(Metrics::new()), catalog(V1))
}

fn request() -> RunRequest {
    RunRequest {
        playbook: "p".into(),
        trigger: json!({ "kind": "api" }),
        ..Default::default()
    }
}

/// The run's record: its version and the steps it ran.
async fn ran(e: &Engine, req: RunRequest) -> (Option<String>, Vec<String>) {
    let outcome = e.run(req, Arc::new(NullObserver)).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    let record = runs::get_run(&e.services().store, outcome.run_id)
        .await
        .unwrap()
        .unwrap();
    let steps = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["step_id"].as_str().unwrap().to_owned())
        .collect();
    (record["version"].as_str().map(str::to_owned), steps)
}

#[tokio::test]
async fn a_pinned_run_runs_its_version_after_the_catalog_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(&dir).await;
    let mut pinned = request();
    e.pin(&mut pinned).await.unwrap();
    let (h1, h2) = (versions::hash(V1), versions::hash(V2));
    assert_eq!(pinned.version.as_deref(), Some(h1.as_str()));
    // What a queued command carries.
    assert_eq!(serde_json::to_value(&pinned).unwrap()["version"], json!(h1));

    e.set_catalog(catalog(V2));
    assert_eq!(
        ran(&e, pinned.clone()).await,
        (Some(h1.clone()), vec!["one".into()])
    );
    // Again, from the compiled cache.
    assert_eq!(ran(&e, pinned).await, (Some(h1), vec!["one".into()]));
    // Unpinned: the catalog's version, stored so the hash leads to its text.
    assert_eq!(
        ran(&e, request()).await,
        (Some(h2.clone()), vec!["two".into()])
    );
    let stored = versions::get(&e.services().store, &h2).await.unwrap();
    assert_eq!(stored.map(|v| v.text), Some(V2.to_owned()));
}

#[tokio::test]
async fn a_version_the_store_does_not_hold_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(&dir).await;
    let req = RunRequest {
        version: Some("feedface".into()),
        ..request()
    };
    let err = e.run(req, Arc::new(NullObserver)).await.unwrap_err();
    assert!(matches!(err, EngineError::UnknownVersion { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "playbook `p`: version feedface is not in the store"
    );
}
