//! `http` and `notify` steps against a server the test starts.

use std::sync::{Arc, Mutex};

use axum::{extract::State, http::HeaderMap, routing::post, Json, Router};
use serde_json::{json, Value};

use crate::util::{assert_run_error, listen, Workdir};

type Seen = Arc<Mutex<Vec<(String, Option<String>, Value)>>>;

async fn capture(
    State(seen): State<Seen>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    seen.lock()
        .unwrap()
        .push((uri.to_string(), auth, body.clone()));
    Json(json!({ "id": 7, "echo": body }))
}

async fn server() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/incidents/{name}", post(capture))
        .route("/hooks/slack", post(capture))
        .route("/hooks/generic", post(capture))
        .route("/v2/enqueue", post(capture))
        .route(
            "/fail",
            post(|| async { (axum::http::StatusCode::UNPROCESSABLE_ENTITY, "nope") }),
        )
        .with_state(seen.clone());
    (listen(app).await, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn http_step_sends_json_encodes_values_and_captures_the_answer() {
    let (base, seen) = server().await;
    let w = Workdir::new()
        .env("STATUS_TOKEN", "status-secret-123")
        .env("STATUS_URL", &base);
    w.config("env: [STATUS_TOKEN, STATUS_URL]\nauth:\n  tokens:\n    - { name: status, role: viewer, token_env: STATUS_TOKEN }\n");
    w.playbook(
        "announce",
        r#"name: announce
params:
  title: { type: string, default: "a/b c" }
  depth: { type: integer, default: 1500 }
steps:
  - id: post
    http:
      url: "{{ env.STATUS_URL }}/incidents/{{ params.title }}"
      headers: { Authorization: "Bearer {{ env.STATUS_TOKEN }}" }
      json: { title: "Backlog: {{ params.title }}", depth: "{{ params.depth }}", tags: [queue] }
      expect: [200, 201]
  - id: fail
    http: { method: POST, url: "{{ env.STATUS_URL }}/fail", json: {} }
"#,
    );
    let out = tokio::task::spawn_blocking(move || (w.run(&["run", "announce", "-o", "json"]), w))
        .await
        .unwrap();
    let (out, w) = out;
    assert_eq!(out.code, 1, "{out:?}");
    let run = out.run();
    assert_eq!(run["steps"]["post"]["output"]["status"], 200);
    assert_eq!(run["steps"]["post"]["output"]["body"]["id"], 7);
    assert_eq!(run["failed_step"], "fail");
    assert_run_error(&run, "answered 422: nope");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].0, "/incidents/a%2Fb%20c",
        "a value in the path is percent-encoded"
    );
    assert_eq!(seen[0].1.as_deref(), Some("Bearer status-secret-123"));
    assert_eq!(
        seen[0].2,
        json!({ "title": "Backlog: a/b c", "depth": 1500, "tags": ["queue"] })
    );
    let shown = w.run(&["runs", "show", "1", "-o", "json"]);
    assert!(
        !shown.stdout.contains("status-secret-123"),
        "the header's secret is masked in the record"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_posts_to_the_named_channel() {
    let (base, seen) = server().await;
    let w = Workdir::new().env("OPS_HOOK", &format!("{base}/hooks/slack"));
    w.config("notify:\n  ops: { webhook: { url_env: OPS_HOOK, format: slack } }\n");
    w.playbook(
        "page",
        "name: page\nsteps:\n  - id: boom\n    assert: { that: \"false\", message: \"disk full\" }\non_failure:\n  - id: tell\n    notify: { to: ops, text: \"{{ run.playbook }} failed at {{ failed_step.id }}: {{ failed_step.error }}\" }\n",
    );
    w.playbook(
        "bad",
        "name: bad\nsteps:\n  - id: n\n    notify: { to: nobody, text: hi }\n",
    );
    let (out, w) = tokio::task::spawn_blocking(move || (w.run(&["run", "page", "-o", "json"]), w))
        .await
        .unwrap();
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.run()["steps"]["tell"]["status"], "succeeded");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].2,
        json!({ "text": "page failed at boom: disk full" })
    );
    // An unknown channel is a validation error.
    let out = w.run(&["validate"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stdout.contains("unknown notify channel `nobody`"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_reaches_pagerduty_and_a_generic_webhook_with_their_bodies() {
    let (base, seen) = server().await;
    let w = Workdir::new()
        .env("PD_KEY", "pd-routing-key-5e1f")
        .env("GENERIC_HOOK", &format!("{base}/hooks/generic"));
    w.config(&format!(
        "notify:\n  oncall: {{ pagerduty: {{ routing_key_env: PD_KEY, url: \"{base}/v2/enqueue\", severity: critical }} }}\n  team: {{ webhook: {{ url_env: GENERIC_HOOK }} }}\n"
    ));
    w.playbook(
        "tell",
        "name: tell\nsteps:\n  - id: page\n    notify: { to: oncall, text: \"disk full on {{ run.playbook }}\" }\n  - id: post\n    notify: { to: team, text: \"all is well\" }\n",
    );
    let (out, _w) = tokio::task::spawn_blocking(move || (w.run(&["run", "tell", "-o", "json"]), w))
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.run();
    let run_id = run["run_id"].clone();
    assert_eq!(run["steps"]["page"]["output"]["channel"], "oncall", "{run}");
    assert!(
        !out.stdout.contains("pd-routing-key-5e1f") && !out.stderr.contains("pd-routing-key-5e1f"),
        "the routing key is a secret: {out:?}"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].0, "/v2/enqueue");
    assert_eq!(
        seen[0].2,
        json!({
            "routing_key": "pd-routing-key-5e1f",
            "event_action": "trigger",
            "dedup_key": format!("runbook-tell-{run_id}"),
            "payload": {
                "summary": "disk full on tell",
                "source": "runbook",
                "severity": "critical",
                "custom_details": { "playbook": "tell", "run_id": run_id },
            },
        })
    );
    assert_eq!(seen[1].0, "/hooks/generic");
    assert_eq!(
        seen[1].2,
        json!({ "text": "all is well", "playbook": "tell", "run_id": run_id, "step": "post", "channel": "team" })
    );
}

/// Needs the Prometheus that `scripts/test` starts (it scrapes itself, so `up` is 1).
#[test]
fn promql_instant_and_range_queries() {
    let prometheus = std::env::var("RUNBOOK_TEST_PROMETHEUS")
        .expect("RUNBOOK_TEST_PROMETHEUS is not set: run the suite with scripts/test, which starts Prometheus");
    let w = Workdir::new();
    w.config(&format!("prometheus: {{ url: \"{prometheus}\" }}\n"));
    w.playbook(
        "prom",
        r#"name: prom
steps:
  - id: up
    promql: 'up{job="prometheus"}'
  - id: range
    promql: { query: 'up{job="prometheus"}', range: 1m, step: 5s }
  - id: check
    assert: "steps.up.rows[0].value == 1 and steps.range.rows[0]['values'] | length > 0"
  - id: bad
    promql: "sum(("
"#,
    );
    let out = w.run(&["run", "prom", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let run = out.run();
    assert_eq!(run["steps"]["up"]["rows"][0]["job"], "prometheus");
    assert_eq!(run["steps"]["check"]["status"], "succeeded");
    assert_eq!(run["failed_step"], "bad");
    assert_run_error(&run, "Prometheus rejected");
}
