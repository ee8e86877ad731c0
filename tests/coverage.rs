//! What the README promises that no other test shows: the API's reads and decisions with each role
//! and a token from a file, DLQ paging, the `dlq` commands and their filters, a config that does not
//! load, the runtime ops that change settings and locks (checked in the store), step and playbook
//! timeouts, and the queue and run metrics.

use serde_json::{json, Value as Json};

use crate::util::{
    eventually, get_json, get_text, post_empty, post_json, rows, send, store, until_scalar, Workdir,
};

const VIEWER: &str = "viewer-secret-9d1";
const OPS: &str = "ops-secret-4c7";
const ADMIN: &str = "admin-secret-2b8";

/// A folder whose config names a viewer token read from a file, an operator and an admin token
/// from the environment, a handler that sends every command to the DLQ, and two playbooks.
fn api_workdir() -> Workdir {
    let w = Workdir::new()
        .env("COV_OPS_TOKEN", OPS)
        .env("COV_ADMIN_TOKEN", ADMIN);
    let token_file = w.path().join("viewer.token");
    // An editor's final newline is not part of the token.
    std::fs::write(&token_file, format!("{VIEWER}\n")).unwrap();
    w.config(&format!(
        r#"auth:
  tokens:
    - {{ name: grafana, role: viewer, token_file: "{}" }}
    - {{ name: ops, role: operator, token_env: COV_OPS_TOKEN }}
    - {{ name: admin, role: PlatformAdmin, token_env: COV_ADMIN_TOKEN }}
streaming:
  poll_interval: 50ms
  handlers:
    user.poison: {{ simulate: {{ error_rate: 1.0, error_type: ValidationException }} }}
"#,
        token_file.display()
    ));
    w.playbook(
        "hello",
        "name: hello\ndescription: Says hello.\nparams:\n  who: { type: string, default: world }\nsteps:\n  - id: greet\n    sql: SELECT {{ params.who }} AS greeting\n",
    );
    w.playbook(
        "gate",
        "name: gate\nsteps:\n  - id: ask\n    approve: { text: Go on?, timeout: 1h }\n  - id: after\n    sql: SELECT 1 AS done\n",
    );
    w
}

/// `GET /api/runs/{id}` as the viewer, once the run's status is `want`.
async fn run_when(base: &str, id: &Json, want: &str) -> Json {
    let url = format!("{base}/api/runs/{id}");
    eventually(30, &format!("run {id} to be {want}"), || async {
        let (status, run) = get_json(&url, Some(VIEWER)).await;
        assert_eq!(status, 200, "{run}");
        (run["status"] == want).then_some(run)
    })
    .await
}

#[tokio::test]
async fn the_api_reads_for_viewers_and_runs_and_decides_for_operators() {
    let w = api_workdir();
    let url = w.sqlite_url();
    let server = w.serve(&[]);
    let base = server.base.clone();

    // Health needs no token; readiness answers once the store does.
    assert_eq!(
        get_text(&format!("{base}/healthz"), None).await,
        (200, "ok\n".to_owned())
    );
    assert_eq!(
        get_text(&format!("{base}/readyz"), None).await,
        (200, "ready\n".to_owned())
    );

    // Playbooks: every one served, with its version and parameters.
    let playbooks = format!("{base}/api/playbooks");
    assert_eq!(get_json(&playbooks, None).await.0, 401);
    let (status, list) = get_json(&playbooks, Some(VIEWER)).await;
    assert_eq!(status, 200, "the token from token_file is accepted: {list}");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gate", "hello"], "{list}");
    let hello = &list[1];
    assert_eq!(
        (&hello["valid"], &hello["loaded"], &hello["description"]),
        (&json!(true), &json!(true), &json!("Says hello.")),
        "{hello}"
    );
    assert!(
        hello["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{hello}"
    );
    assert_eq!(hello["params"][0]["name"], "who", "{hello}");
    assert_eq!(hello["params"][0]["default"], "world", "{hello}");

    // A viewer reads but may not start a run; an operator may.
    let runs = format!("{base}/api/runs");
    let body = json!({ "playbook": "hello", "params": { "who": "cov" } });
    assert_eq!(post_json(&runs, Some(VIEWER), &body).await.0, 403);
    let (status, queued) = post_json(&runs, Some(OPS), &body).await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["status"], "queued", "{queued}");
    let hello_id = queued["run_id"].clone();
    let run = run_when(&base, &hello_id, "succeeded").await;
    assert_eq!(run["playbook"], "hello", "{run}");
    let greet = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_id"] == "greet")
        .unwrap_or_else(|| panic!("no greet attempt: {run}"));
    assert_eq!(greet["output"]["rows"][0]["greeting"], "cov", "{run}");
    assert_eq!(
        get_json(&format!("{runs}/999999"), Some(VIEWER)).await.0,
        404
    );

    // Approve and reject through the API: a viewer may not answer; a reject body stops the run.
    let (_, gate1) = post_json(&runs, Some(OPS), &json!({ "playbook": "gate" })).await;
    let gate1 = gate1["run_id"].clone();
    run_when(&base, &gate1, "waiting_approval").await;
    let approve1 = format!("{runs}/{gate1}/approve");
    assert_eq!(post_empty(&approve1, Some(VIEWER)).await.0, 403);
    let (status, answer) = post_json(
        &approve1,
        Some(OPS),
        &json!({ "reject": true, "comment": "not now" }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({ "run_id": gate1, "step": "ask", "decision": "rejected" })
    );
    let run = run_when(&base, &gate1, "cancelled").await;
    assert_eq!(run["error"], "rejected by api:ops: not now", "{run}");
    assert_eq!(run["approvals"][0]["decision"], "rejected", "{run}");
    assert_eq!(run["approvals"][0]["actor"], "api:ops", "{run}");
    assert_eq!(run["approvals"][0]["comment"], "not now", "{run}");
    assert!(
        !run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["step_id"] == "after"),
        "nothing runs after a rejection: {run}"
    );
    // Answering again is refused with the answer that came first.
    let (status, again) = post_empty(&approve1, Some(OPS)).await;
    assert_eq!(status, 409, "{again}");

    let (_, gate2) = post_json(&runs, Some(OPS), &json!({ "playbook": "gate" })).await;
    let gate2 = gate2["run_id"].clone();
    run_when(&base, &gate2, "waiting_approval").await;
    let (status, answer) = post_empty(&format!("{runs}/{gate2}/approve"), Some(OPS)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["decision"], "approved", "{answer}");
    run_when(&base, &gate2, "succeeded").await;

    // The runs list: newest first, filtered by playbook, limited.
    let (status, all) = get_json(&runs, Some(VIEWER)).await;
    assert_eq!(status, 200, "{all}");
    let ids: Vec<&Json> = all.as_array().unwrap().iter().map(|r| &r["id"]).collect();
    assert_eq!(ids, [&gate2, &gate1, &hello_id], "{all}");
    let (_, gates) = get_json(&format!("{runs}?playbook=gate&limit=1"), Some(VIEWER)).await;
    let gates = gates.as_array().unwrap();
    assert_eq!(gates.len(), 1, "{gates:?}");
    assert_eq!(gates[0]["id"], gate2);

    // Stats: the same numbers `runbook queue stats` reads from the store.
    let stats_url = format!("{base}/api/admin/streaming/stats");
    assert_eq!(get_json(&stats_url, None).await.0, 401);
    for i in 0..3 {
        w.enqueue(&url, "user", &format!("p{i}"), "user.poison", "{}");
    }
    let db = store(&url).await;
    until_scalar(
        30,
        "the poison commands to reach the DLQ",
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE status = 'dlq'",
        |n| n == 3,
    )
    .await;
    let (status, stats) = get_json(&stats_url, Some(VIEWER)).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["dlq"]["total"], 3, "{stats}");
    assert_eq!(
        stats["dlq"]["by_error_type"],
        json!([{ "count": 3, "error_type": "ValidationException" }]),
        "{stats}"
    );
    let cli = w.run(&["queue", "stats", "-o", "json"]).json();
    assert_eq!(stats["dlq"], cli["dlq"]);
    assert_eq!(stats["settings"], cli["settings"]);
    // The viewer may read stats but not the DLQ, whose payloads it must not see.
    let dlq = format!("{base}/api/admin/streaming/dlq");
    assert_eq!(get_json(&dlq, Some(VIEWER)).await.0, 403);
    assert_eq!(get_json(&dlq, Some(ADMIN)).await.0, 200);
    let (status, _) = send(
        reqwest::Method::POST,
        &format!("{dlq}/retry-all"),
        Some(VIEWER),
        None,
    )
    .await;
    assert_eq!(status, 403, "a viewer may not retry");
}

#[tokio::test]
async fn dlq_pages_cover_every_entry_once() {
    let w = api_workdir();
    let url = w.sqlite_url();
    for i in 0..5 {
        w.enqueue(&url, "user", &format!("p{i}"), "user.poison", "{}");
    }
    let server = w.serve(&[]);
    let db = store(&url).await;
    until_scalar(
        30,
        "five commands in the DLQ",
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE status = 'dlq'",
        |n| n == 5,
    )
    .await;
    let mut seen = Vec::new();
    for (page, expect) in [(0, 2), (1, 2), (2, 1), (3, 0)] {
        let (status, body) = get_json(
            &format!("{}/api/admin/streaming/dlq?page={page}&size=2", server.base),
            Some(ADMIN),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (
                &body["totalElements"],
                &body["totalPages"],
                &body["page"],
                &body["size"]
            ),
            (&json!(5), &json!(3), &json!(page), &json!(2)),
            "{body}"
        );
        let content = body["content"].as_array().unwrap();
        assert_eq!(content.len(), expect, "page {page}: {body}");
        seen.extend(content.iter().map(|c| c["id"].as_i64().unwrap()));
    }
    let all: Vec<i64> = rows(
        &db,
        "SELECT id FROM command_queue WHERE status = 'dlq' ORDER BY id",
    )
    .await
    .iter()
    .map(|r| r["id"].as_i64().unwrap())
    .collect();
    assert_eq!(
        seen, all,
        "the pages, in order, are the DLQ, each entry once"
    );
}

/// A line of the OpenMetrics text with this series and value.
fn has_sample(metrics: &str, series: &str, value: &str) -> bool {
    metrics.lines().any(|l| l == format!("{series} {value}"))
}

#[tokio::test]
async fn queue_depth_dlq_size_runs_and_step_durations_are_exported() {
    let w = api_workdir();
    let url = w.sqlite_url();
    w.create_store(&w.sqlite_url());
    let db = store(&url).await;
    // Four pending commands at priority 5 of a type no worker takes, and three in the DLQ.
    db.sql(
        "INSERT INTO command_queue (entity, entity_id, command_type, priority, status, error_type) VALUES \
         ('user', 'a', 'nobody.handles', 5, 'pending', NULL), ('user', 'b', 'nobody.handles', 5, 'pending', NULL), \
         ('user', 'c', 'nobody.handles', 5, 'pending', NULL), ('user', 'd', 'nobody.handles', 5, 'pending', NULL), \
         ('user', 'e', 'x', 0, 'dlq', 'ValidationException'), ('user', 'f', 'x', 0, 'dlq', 'ValidationException'), \
         ('user', 'g', 'x', 0, 'dlq', 'TimeoutException')",
        vec![],
    )
    .await
    .unwrap();
    // No workers: the gauges read the queue as it stands.
    w.config(&format!(
        "{}  workers: false\n",
        std::fs::read_to_string(w.path().join("runbook.yaml")).unwrap()
    ));
    let server = w.serve(&[]);
    let metrics = server.metrics().await;
    for (series, value) in [
        ("core_stream_cmd_queue_depth{priority=\"5\"}", "4"),
        (
            "core_stream_dlq_size{error_type=\"ValidationException\"}",
            "2",
        ),
        ("core_stream_dlq_size{error_type=\"TimeoutException\"}", "1"),
    ] {
        assert!(
            has_sample(&metrics, series, value),
            "{series} {value}:\n{metrics}"
        );
    }
    db.sql(
        "UPDATE command_queue SET status = 'completed' WHERE command_type = 'nobody.handles' AND entity_id IN ('a', 'b')",
        vec![],
    )
    .await
    .unwrap();
    db.sql(
        "DELETE FROM command_queue WHERE status = 'dlq' AND error_type = 'TimeoutException'",
        vec![],
    )
    .await
    .unwrap();
    let metrics = server.metrics().await;
    assert!(
        has_sample(&metrics, "core_stream_cmd_queue_depth{priority=\"5\"}", "2"),
        "{metrics}"
    );
    assert!(
        has_sample(
            &metrics,
            "core_stream_dlq_size{error_type=\"TimeoutException\"}",
            "0"
        ),
        "an emptied error type reports 0:\n{metrics}"
    );
    drop(server);

    // With workers: a run through the API counts in runs_total and its step in the step histogram.
    w.config(
        &std::fs::read_to_string(w.path().join("runbook.yaml"))
            .unwrap()
            .replace("  workers: false\n", ""),
    );
    db.sql("DELETE FROM command_queue", vec![]).await.unwrap();
    let server = w.serve(&[]);
    let (status, queued) = post_json(
        &format!("{}/api/runs", server.base),
        Some(OPS),
        &json!({ "playbook": "hello" }),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    run_when(&server.base, &queued["run_id"], "succeeded").await;
    let metrics = eventually(10, "the run in the metrics", || async {
        let m = server.metrics().await;
        has_sample(
            &m,
            "runbook_runs_total{playbook=\"hello\",trigger=\"api\",status=\"succeeded\"}",
            "1",
        )
        .then_some(m)
    })
    .await;
    assert!(
        has_sample(
            &metrics,
            "runbook_runs_total{playbook=\"hello\",trigger=\"api\",status=\"failed\"}",
            "0"
        ),
        "{metrics}"
    );
    assert!(
        has_sample(
            &metrics,
            "runbook_step_duration_seconds_count{playbook=\"hello\",kind=\"sql\"}",
            "1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn dlq_commands_list_retry_and_clean_up_by_their_filters() {
    let w = Workdir::new().env("USER", "carol");
    let url = w.sqlite_url();
    w.create_store(&w.sqlite_url());
    let db = store(&url).await;
    db.sql(
        "INSERT INTO command_queue (entity, entity_id, command_type, status, error_type, attempts, updated_at) VALUES \
         ('user', 'u1', 't', 'dlq', 'ValidationException', 1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), \
         ('user', 'u2', 't', 'dlq', 'TimeoutException', 5, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), \
         ('order', 'o1', 't', 'dlq', 'TimeoutException', 5, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), \
         ('order', 'o2', 't', 'dlq', 'ValidationException', 1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-10 days'))",
        vec![],
    )
    .await
    .unwrap();
    let listed = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["dlq", "list", "-o", "json"];
        all.extend_from_slice(args);
        let out = w.run(&all);
        assert_eq!(out.code, 0, "{out:?}");
        let body = out.json();
        let ids: Vec<String> = body["content"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .iter()
            .map(|c| c["entity_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(body["totalElements"], ids.len(), "{body}");
        ids
    };
    assert_eq!(listed(&[]), ["u1", "u2", "o1", "o2"]);
    assert_eq!(listed(&["--entity", "user"]), ["u1", "u2"]);
    assert_eq!(listed(&["--error-type", "TimeoutException"]), ["u2", "o1"]);
    assert_eq!(
        listed(&["--entity", "order", "--error-type", "ValidationException"]),
        ["o2"]
    );
    let out = w.run(&["dlq", "list", "--limit", "1", "-o", "json"]);
    assert_eq!(
        out.json()["content"].as_array().unwrap().len(),
        1,
        "{out:?}"
    );

    let out = w.run(&[
        "dlq",
        "retry",
        "--entity",
        "user",
        "--error-type",
        "TimeoutException",
        "--yes",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let state = rows(
        &db,
        "SELECT entity_id, status, attempts FROM command_queue ORDER BY id",
    )
    .await;
    assert_eq!(
        state,
        vec![
            json!({ "entity_id": "u1", "status": "dlq", "attempts": 1 }),
            json!({ "entity_id": "u2", "status": "pending", "attempts": 0 }),
            json!({ "entity_id": "o1", "status": "dlq", "attempts": 5 }),
            json!({ "entity_id": "o2", "status": "dlq", "attempts": 1 }),
        ]
    );

    let out = w.run(&["dlq", "cleanup", "--older-than", "7d", "--yes"]);
    assert_eq!(out.code, 0, "{out:?}");
    let left: Vec<Json> = rows(&db, "SELECT entity_id FROM command_queue ORDER BY id")
        .await
        .into_iter()
        .map(|r| r["entity_id"].clone())
        .collect();
    assert_eq!(
        left,
        ["u1", "u2", "o1"],
        "only the DLQ entry older than 7 days went"
    );

    let audits = rows(&db, "SELECT actor, op, rows FROM runbook_audit ORDER BY id").await;
    assert_eq!(
        audits,
        vec![
            json!({ "actor": "cli:carol", "op": "dlq_retry", "rows": 1 }),
            json!({ "actor": "cli:carol", "op": "dlq_cleanup", "rows": 1 }),
        ]
    );
}

#[test]
fn a_config_that_does_not_load_exits_2_naming_the_file() {
    let w = Workdir::new();
    w.playbook("p", "name: p\nsteps:\n  - id: a\n    wait: 0s\n");
    w.config("streaming:\n  workerConcurrency: many\n");
    for args in [
        &["validate"][..],
        &["list"],
        &["run", "p"],
        &["queue", "stats"],
        &["serve", "--listen", "127.0.0.1:0"],
    ] {
        let out = w.run(args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(
            out.stdout.contains("runbook.yaml") || out.stderr.contains("runbook.yaml"),
            "{args:?} names the file: {out:?}"
        );
    }
    assert!(
        !w.path().join("runbook.db").exists(),
        "nothing ran: no store was created"
    );
    let out = w.run(&["--config", "missing.yaml", "list"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("missing.yaml"), "{out:?}");
}

#[tokio::test]
async fn runtime_ops_change_the_stored_settings_and_release_stale_locks() {
    let w = Workdir::new();
    let url = w.sqlite_url();
    w.create_store(&w.sqlite_url());
    let db = store(&url).await;
    db.sql(
        "INSERT INTO work_state (entity, entity_id, state, locked_at, locked_by) VALUES \
         ('user', 'old', 'updating', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-20 minutes'), 'gone'), \
         ('user', 'young', 'updating', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 minutes'), 'alive'), \
         ('user', 'idle', 'idle', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-20 minutes'), NULL)",
        vec![],
    )
    .await
    .unwrap();
    w.playbook(
        "tune",
        "name: tune\nsteps:\n  - id: retries\n    runtime: { op: set_retry_policy, maxRetries: 7, maxBackoffMs: 1234 }\n  - id: ttl\n    runtime: { op: set_lock_ttl, ttl: 90s }\n  - id: locks\n    runtime: { op: release_stale_locks, older_than: 10m }\n",
    );
    let out = w.run(&["run", "tune", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let stored: std::collections::BTreeMap<String, Json> =
        rows(&db, "SELECT key, value FROM runtime_settings")
            .await
            .into_iter()
            .map(|r| {
                let v = match &r["value"] {
                    Json::String(s) => serde_json::from_str(s).unwrap_or(Json::String(s.clone())),
                    v => v.clone(),
                };
                (r["key"].as_str().unwrap().to_owned(), v)
            })
            .collect();
    assert_eq!(stored.get("maxRetries"), Some(&json!(7)), "{stored:?}");
    assert_eq!(stored.get("maxBackoffMs"), Some(&json!(1234)), "{stored:?}");
    let ttl = stored
        .get("lockTtl")
        .unwrap_or_else(|| panic!("{stored:?}"));
    assert_eq!(ttl, &json!("1m 30s"), "lockTtl stored as 90 seconds");
    let locks: Vec<Json> = rows(&db, "SELECT entity_id FROM work_state ORDER BY entity_id")
        .await
        .into_iter()
        .map(|r| r["entity_id"].clone())
        .collect();
    assert_eq!(
        locks,
        ["idle", "young"],
        "only the lock older than 10m went"
    );
    // Each change is audited: one record per setting changed, with its previous value, and the
    // locks released with their count.
    let audits: Vec<Json> = rows(
        &db,
        "SELECT op, filter, rows FROM runbook_audit ORDER BY id",
    )
    .await
    .into_iter()
    .map(|r| {
        json!([
            r["op"],
            r["filter"]["key"],
            r["filter"]["previous"],
            r["rows"]
        ])
    })
    .collect();
    assert_eq!(
        audits,
        vec![
            json!(["set_retry_policy", "maxRetries", 5, 1]),
            json!(["set_retry_policy", "maxBackoffMs", 60000, 1]),
            json!(["set_lock_ttl", "lockTtl", "5m", 1]),
            json!(["release_stale_locks", null, null, 1]),
        ]
    );
}

#[test]
fn a_step_timeout_and_a_playbook_timeout_stop_the_run() {
    let w = Workdir::new();
    w.config("shell: { allow: [sleep] }\n");
    w.playbook(
        "slow_step",
        "name: slow_step\nsteps:\n  - id: nap\n    timeout: 1s\n    shell: [sleep, \"30\"]\n  - id: after\n    wait: 0s\n",
    );
    w.playbook(
        "slow_playbook",
        "name: slow_playbook\ntimeout: 1s\nsteps:\n  - id: first\n    wait: 0s\n  - id: nap\n    wait: 30s\n  - id: after\n    wait: 0s\n",
    );
    let started = std::time::Instant::now();
    let out = w.run(&["run", "slow_step", "-o", "json"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{out:?}"
    );
    assert_eq!(out.code, 1, "{out:?}");
    let run = out.run();
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["failed_step"], "nap", "{run}");
    crate::util::assert_run_error(&run, "timed out after 1s");
    assert!(run["steps"].get("after").is_none(), "{run}");

    let started = std::time::Instant::now();
    let out = w.run(&["run", "slow_playbook", "-o", "json"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{out:?}"
    );
    assert_eq!(out.code, 1, "{out:?}");
    let run = out.run();
    assert_eq!(run["status"], "timed_out", "{run}");
    assert_eq!(run["steps"]["first"]["status"], "succeeded", "{run}");
    assert!(run["steps"].get("after").is_none(), "{run}");
}
