//! The run loop's rules on a real embedded store: `retry` attempts and their backoff, `until`
//! polls, `for_each` items, `when`, `continue_on_error` and `on_failure`, each checked through
//! the outcome and the attempt records a user reads with `runbook runs show`.

use std::{path::Path, sync::Arc, time::Duration};

use serde_json::{json, Value as Json};

use super::{Engine, RunRequest};
use crate::{
    config::Config,
    metrics::Metrics,
    playbook::{compile_source, Catalog, CompileEnv},
    secrets::Masker,
    services::Services,
    status::RunStatus,
    steps::NullObserver,
    store::{runs, Db},
};

struct Fixture {
    engine: Engine,
    _dir: tempfile::TempDir,
}

/// An engine on a fresh SQLite store with the given playbooks (`(name, yaml)`).
async fn engine(playbooks: &[(&str, &str)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("runbook.db").display());
    let store = Db::connect(&url, false, 4).await.unwrap();
    store.migrate().await.unwrap();
    let mut catalog = Catalog::default();
    for (name, text) in playbooks {
        let path = Path::new("runbooks").join(format!("{name}.yaml"));
        let (pb, _) = compile_source(&path, text, &CompileEnv::default())
            .unwrap_or_else(|d| panic!("{name}: {d:?}"));
        catalog.playbooks.insert(pb.name.clone(), pb);
    }
    let config = Arc::new(Config::default());
    let services = Arc::new(Services::new(store, config, Masker::new(Vec::new())));
    Fixture {
        engine: Engine::new(services, Arc::new(Metrics::new()), catalog),
        _dir: dir,
    }
}

async fn run(f: &Fixture, name: &str) -> (super::RunOutcome, Vec<Json>) {
    let req = RunRequest {
        playbook: name.into(),
        trigger: json!({ "kind": "cli" }),
        ..Default::default()
    };
    let outcome = f.engine.run(req, Arc::new(NullObserver)).await.unwrap();
    let record = runs::get_run(&f.engine.services().store, outcome.run_id)
        .await
        .unwrap()
        .unwrap();
    let attempts = record["steps"].as_array().cloned().unwrap_or_default();
    (outcome, attempts)
}

fn attempts_of<'a>(attempts: &'a [Json], step: &str) -> Vec<&'a Json> {
    attempts.iter().filter(|a| a["step_id"] == step).collect()
}

#[tokio::test]
async fn a_retryable_failure_is_attempted_as_often_as_retry_says() {
    // Nothing listens on port 1: connection refused is retryable.
    let f = engine(&[(
        "flaky",
        "name: flaky\nsteps:\n  - id: probe\n    tcp_check: 127.0.0.1:1\n    retry: { attempts: 3, backoff: 10ms }\n",
    )])
    .await;
    let (outcome, attempts) = run(&f, "flaky").await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(outcome.failed_step.as_deref(), Some("probe"));
    let error = outcome.error.unwrap();
    assert!(error.ends_with("(after 3 attempts)"), "{error}");
    let probes = attempts_of(&attempts, "probe");
    assert_eq!(probes.len(), 3, "{attempts:?}");
    assert!(probes.iter().all(|a| a["status"] == "failed"));
}

#[tokio::test]
async fn a_fatal_failure_is_not_retried() {
    let f = engine(&[(
        "fatal",
        "name: fatal\nsteps:\n  - id: check\n    assert: { that: '1 > 2', message: 'one is not above two' }\n    retry: { attempts: 5, backoff: 10ms }\n",
    )])
    .await;
    let (outcome, attempts) = run(&f, "fatal").await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(attempts_of(&attempts, "check").len(), 1);
    assert!(outcome.error.unwrap().contains("one is not above two"));
}

#[tokio::test]
async fn until_polls_until_the_condition_holds() {
    // Each poll records an attempt, so the count of this step's attempts grows by one a poll.
    let f = engine(&[(
        "poll",
        "name: poll\nsteps:\n  - id: count\n    sql: \"SELECT COUNT(*) AS n FROM runbook_step_attempts WHERE run_id = {{ run.id }}\"\n    until: 'steps.count.rows[0].n >= 2'\n    every: 10ms\n    within: 5s\n",
    )])
    .await;
    let (outcome, attempts) = run(&f, "poll").await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    assert_eq!(attempts_of(&attempts, "count").len(), 3, "{attempts:?}");
    assert_eq!(outcome.steps["count"]["rows"][0]["n"], 2);
    assert_eq!(outcome.steps["count"]["status"], "succeeded");
}

#[tokio::test]
async fn until_gives_up_after_within() {
    let f = engine(&[(
        "never",
        "name: never\nsteps:\n  - id: one\n    sql: SELECT 1 AS n\n    until: 'steps.one.rows[0].n == 2'\n    every: 20ms\n    within: 300ms\n",
    )])
    .await;
    let (outcome, attempts) = run(&f, "never").await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(error.contains("still false after"), "{error}");
    // It polled again, and not past `within`: at most one poll per `every` in 300 ms and the
    // first. (How many fit depends on how busy the machine is: beside the rest of the suite on
    // two cores, a poll has taken over 100 ms.)
    let polls = attempts_of(&attempts, "one").len();
    assert!((2..=16).contains(&polls), "{polls} polls in 300ms at 20ms");
}

#[tokio::test]
async fn for_each_runs_every_item_and_stops_at_the_first_failure() {
    let f = engine(&[
        (
            "each",
            "name: each\nsteps:\n  - id: rows\n    for_each: [1, 2, 3]\n    sql: \"SELECT {{ item }} * 10 AS v\"\n",
        ),
        (
            "stop",
            "name: stop\nsteps:\n  - id: check\n    for_each: [1, 2, 3]\n    assert: { that: 'item < 2', message: 'item {{ item }} too big' }\n",
        ),
    ])
    .await;
    let (outcome, attempts) = run(&f, "each").await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    let values: Vec<&Json> = outcome.steps["rows"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["v"])
        .collect();
    assert_eq!(values, [&json!(10), &json!(20), &json!(30)]);
    let items: Vec<&Json> = attempts.iter().map(|a| &a["item"]).collect();
    assert_eq!(items, [&json!(0), &json!(1), &json!(2)]);

    let (outcome, attempts) = run(&f, "stop").await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(
        error.starts_with("item 1: ") && error.contains("item 2 too big"),
        "{error}"
    );
    assert_eq!(attempts.len(), 2, "the third item never ran");
}

#[tokio::test]
async fn when_skips_and_continue_on_error_goes_on_and_on_failure_sees_the_failed_step() {
    let f = engine(&[(
        "flow",
        "name: flow\nsteps:\n  - id: skipped\n    when: 'false'\n    sql: SELECT 1\n  - id: soft\n    continue_on_error: true\n    assert: '1 > 2'\n  - id: hard\n    assert: { that: 'steps.soft.status == \"failed\" and steps.skipped.status == \"skipped\"', message: 'seen' }\n  - id: boom\n    assert: { that: 'false', message: 'boom' }\non_failure:\n  - id: report\n    assert: { that: 'failed_step.id == \"boom\"', message: 'wrong failed step' }\n",
    )])
    .await;
    let (outcome, attempts) = run(&f, "flow").await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(outcome.failed_step.as_deref(), Some("boom"));
    assert_eq!(outcome.steps["skipped"]["status"], "skipped");
    assert_eq!(outcome.steps["hard"]["status"], "succeeded");
    assert_eq!(outcome.steps["report"]["status"], "succeeded");
    assert!(attempts_of(&attempts, "skipped").is_empty());
}

#[test]
fn retry_delay_doubles_and_stops() {
    use crate::{
        duration::Dur,
        playbook::{Retry, Step},
        steps::{StepError, StepKind},
    };
    let step = Step {
        id: "s".into(),
        name: None,
        when: None,
        timeout: Dur::from_secs(1),
        retry: Retry {
            attempts: 4,
            backoff: Dur(Duration::from_millis(100)),
        },
        continue_on_error: false,
        for_each: None,
        until: None,
        kind: StepKind::from_raw(serde_yaml::from_str("{id: s, wait: 1s}").unwrap()).unwrap(),
    };
    let transient = StepError::retryable("refused");
    let delays: Vec<Option<Duration>> = (1..=4)
        .map(|a| super::step::retry_delay(&step, a, &transient))
        .collect();
    assert_eq!(
        delays,
        [
            Some(Duration::from_millis(100)),
            Some(Duration::from_millis(200)),
            Some(Duration::from_millis(400)),
            None
        ]
    );
    assert_eq!(
        super::step::retry_delay(&step, 1, &StepError::fatal("bad")),
        None
    );
    let told = StepError::Retryable {
        message: "429".into(),
        after: Some(Duration::from_secs(7)),
    };
    assert_eq!(
        super::step::retry_delay(&step, 1, &told),
        Some(Duration::from_secs(7))
    );
}
