//! Hot reload: an edit of `runbooks/` takes effect in a running `runbook serve`; an invalid edit
//! keeps the last good version and `GET /api/playbooks` shows the problem; a run enqueued before an
//! edit runs the text it was enqueued with, on whichever replica runs it.

use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use runbook::store::versions::hash;

use crate::util::{eventually, get_json, post_json, PgDb, Server, Workdir};

const OPS_TOKEN: &str = "ops-token-456";

const CONFIG: &str = r#"
auth:
  tokens:
    - { name: ops, role: operator, token_env: TEST_OPS_TOKEN }
streaming:
  poll_interval: 50ms
"#;

/// Playbook `p` whose one step has id `step`.
fn text(step: &str) -> String {
    format!("name: p\ndescription: reload test\nsteps:\n  - id: {step}\n    wait: 1ms\n")
}

fn workdir() -> Workdir {
    let w = Workdir::new().env("TEST_OPS_TOKEN", OPS_TOKEN);
    w.config(CONFIG);
    w
}

/// `GET /api/playbooks`, by name.
async fn playbooks(server: &Server) -> Vec<Json> {
    let (status, body) = get_json(&format!("{}/api/playbooks", server.base), Some(OPS_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

async fn listed(server: &Server, name: &str) -> Option<Json> {
    playbooks(server)
        .await
        .into_iter()
        .find(|p| p["name"] == name)
}

/// Waits until `GET /api/playbooks` serves version `hash` of `p`; returns how long it took.
async fn serves(server: &Server, version: &str, secs: u64) -> Duration {
    let start = Instant::now();
    eventually(secs, &format!("p at version {version}"), || async {
        let p = listed(server, "p").await?;
        (p["version"] == version).then_some(())
    })
    .await;
    start.elapsed()
}

/// Enqueues a run of `p` through the API; returns the version it was pinned to.
async fn enqueue(server: &Server) -> String {
    let url = format!("{}/api/runs", server.base);
    let (status, body) = post_json(&url, Some(OPS_TOKEN), &json!({ "playbook": "p" })).await;
    assert_eq!(status, 202, "{body}");
    body["version"].as_str().unwrap().to_owned()
}

/// The finished run of command number `nth` (1-based) of `p`: its record with its steps.
async fn finished_run(server: &Server, nth: usize) -> Json {
    let list = format!("{}/api/runs?playbook=p", server.base);
    let id = eventually(20, &format!("run {nth} of p to finish"), || async {
        let (_, runs) = get_json(&list, Some(OPS_TOKEN)).await;
        let mut runs = runs.as_array()?.clone();
        runs.reverse();
        let run = runs.get(nth - 1)?;
        (run["status"] == "succeeded").then(|| run["id"].as_i64().unwrap())
    })
    .await;
    let (status, run) = get_json(&format!("{}/api/runs/{id}", server.base), Some(OPS_TOKEN)).await;
    assert_eq!(status, 200, "{run}");
    run
}

fn steps_of(run: &Json) -> Vec<&str> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step_id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn an_edit_takes_effect_without_a_restart_and_a_broken_edit_keeps_the_last_good_version() {
    let w = workdir();
    let path = w.playbook("p", &text("one"));
    let server = w.serve(&["--store", &w.sqlite_url()]);
    let v1 = hash(&text("one"));
    let p = listed(&server, "p").await.expect("p is listed");
    assert_eq!(
        (&p["version"], &p["valid"], &p["errors"]),
        (&json!(v1), &json!(true), &json!([]))
    );
    assert_eq!(enqueue(&server).await, v1);
    let run = finished_run(&server, 1).await;
    assert_eq!((&run["version"], steps_of(&run)), (&json!(v1), vec!["one"]));
    let metrics = server.metrics().await;
    let counted = "runbook_runs_total{playbook=\"p\",trigger=\"api\",status=\"succeeded\"} 1\n";
    assert!(metrics.contains(counted), "{metrics}");

    // An edit: served within about two seconds (the folder is looked at every second).
    std::fs::write(&path, text("two")).unwrap();
    let v2 = hash(&text("two"));
    let took = serves(&server, &v2, 5).await;
    assert!(took < Duration::from_millis(2500), "the edit took {took:?}");
    assert_eq!(enqueue(&server).await, v2);
    let run = finished_run(&server, 2).await;
    assert_eq!((&run["version"], steps_of(&run)), (&json!(v2), vec!["two"]));

    // A broken edit (line 5: `retry` given a sequence) and a new broken file.
    std::fs::write(
        &path,
        "name: p\nsteps:\n  - id: three\n    wait: 1ms\n    retry: [\n",
    )
    .unwrap();
    w.playbook("q", "name: q\nsteps:\n  - id: a\n    sleep: 1s\n");
    let p = eventually(5, "p to show its error", || async {
        listed(&server, "p").await.filter(|p| p["valid"] == false)
    })
    .await;
    assert_eq!(
        (&p["version"], &p["loaded"]),
        (&json!(v2), &json!(true)),
        "{p}"
    );
    let errors = p["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{p}");
    let error = errors[0].as_str().unwrap();
    // path:line:col of the sequence given where `retry` takes a mapping.
    // (`runbook serve` runs in the workdir, with its default `runbooks` folder.)
    assert!(
        error.starts_with("runbooks/p.yaml:5:12: steps[0].retry: "),
        "{error}"
    );
    let q = eventually(5, "q to be listed", || listed(&server, "q")).await;
    assert_eq!(
        (&q["loaded"], &q["valid"]),
        (&json!(false), &json!(false)),
        "{q}"
    );
    let q_error = q["errors"][0].as_str().unwrap();
    assert!(
        q_error.starts_with("runbooks/q.yaml:4:5: steps[0]: unknown field `sleep`"),
        "{q_error}"
    );
    // The last good version still runs.
    assert_eq!(enqueue(&server).await, v2);
    let run = finished_run(&server, 3).await;
    assert_eq!(steps_of(&run), ["two"]);
    assert!(
        server
            .log()
            .contains("its last good version is still served"),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn a_run_enqueued_before_an_edit_runs_the_text_it_was_enqueued_with() {
    let pg = PgDb::new().await;
    let w = workdir();
    let path = w.playbook("p", &text("one"));
    // A replica without workers takes the run; the one that runs it starts after the edit.
    std::fs::write(
        w.path().join("no-workers.yaml"),
        format!("{CONFIG}  workers: false\n"),
    )
    .unwrap();
    let api = w.serve(&["--store", &pg.url, "--config", "no-workers.yaml"]);
    let v1 = enqueue(&api).await;
    assert_eq!(v1, hash(&text("one")));
    std::fs::write(&path, text("two")).unwrap();
    let v2 = hash(&text("two"));
    serves(&api, &v2, 5).await;
    let (_, runs) = get_json(&format!("{}/api/runs", api.base), Some(OPS_TOKEN)).await;
    // Recorded when it was admitted, with the version it was enqueued with; no worker ran it yet.
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
    assert_eq!(
        (&runs[0]["status"], &runs[0]["version"]),
        (&json!("queued"), &json!(v1))
    );

    let worker = w.serve(&["--store", &pg.url]);
    let run = finished_run(&worker, 1).await;
    assert_eq!((&run["version"], steps_of(&run)), (&json!(v1), vec!["one"]));
    assert_eq!(run["trigger"]["kind"], "api");
    // A run enqueued now runs the new text.
    assert_eq!(enqueue(&worker).await, v2);
    let run = finished_run(&worker, 2).await;
    assert_eq!((&run["version"], steps_of(&run)), (&json!(v2), vec!["two"]));
}
