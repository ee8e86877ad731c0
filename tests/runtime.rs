//! The embedded streaming runtime on both backends: workers, retries and the DLQ, leases and
//! crashed workers, the admin API and its roles, runs as commands, and many processes sharing a
//! PostgreSQL queue.

use serde_json::{json, Value};

use crate::util::{eventually, scalar, store, PgDb, Workdir};

const CONFIG: &str = r#"
auth:
  tokens:
    - { name: admin, role: PlatformAdmin, token_env: TEST_ADMIN_TOKEN }
    - { name: ops, role: operator, token_env: TEST_OPS_TOKEN }
streaming:
  workerConcurrency: 4
  workerBatchSize: 50
  maxRetries: 2
  maxBackoffMs: 50
  lease: 2s
  poll_interval: 50ms
  sensitive_fields: [email]
  handlers:
    user.update: { simulate: { latency: 2ms } }
    user.poison: { simulate: { error_rate: 1.0, error_type: ValidationException } }
    order.flaky: { simulate: { error_rate: 1.0, error_type: TimeoutException } }
    slow.work: { simulate: { latency: 3s } }
    count.it: { sql: { query: "INSERT INTO processed (command_id) VALUES ({{ command.id }})" } }
"#;

fn workdir() -> Workdir {
    let w = Workdir::new()
        .env("TEST_ADMIN_TOKEN", "admin-token-123")
        .env("TEST_OPS_TOKEN", "ops-token-456");
    w.config(CONFIG);
    w
}

fn enqueue(w: &Workdir, store: &str, entity: &str, id: &str, ty: &str, payload: &str) {
    let out = w.run(&[
        "--store",
        store,
        "queue",
        "enqueue",
        "--entity",
        entity,
        "--entity-id",
        id,
        "--type",
        ty,
        "--payload",
        payload,
    ]);
    assert_eq!(out.code, 0, "{out:?}");
}

async fn retries_dlq_and_admin_api(url: &str) {
    let w = workdir();
    for i in 0..20 {
        enqueue(
            &w,
            url,
            "user",
            &format!("u{}", i % 5),
            "user.update",
            r#"{"email": "a@example.com"}"#,
        );
    }
    enqueue(
        &w,
        url,
        "user",
        "bad",
        "user.poison",
        r#"{"email": "bad@example.com"}"#,
    );
    enqueue(&w, url, "order", "o1", "order.flaky", "{}");
    let server = w.serve(&["--store", url]);
    let db = store(url).await;
    eventually(30, "every command to finish", || async {
        (scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE status IN ('pending', 'processing')",
        )
        .await
            == 0)
            .then_some(())
    })
    .await;
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE status = 'completed'"
        )
        .await,
        20
    );
    // A ValidationException goes to the DLQ at once; a TimeoutException after maxRetries retries.
    let dlq = db.sql("SELECT entity_id, error_type, attempts FROM command_queue WHERE status = 'dlq' ORDER BY entity_id", vec![]).await.unwrap().rows;
    assert_eq!(
        dlq,
        vec![
            json!({ "entity_id": "bad", "error_type": "ValidationException", "attempts": 1 }),
            json!({ "entity_id": "o1", "error_type": "TimeoutException", "attempts": 3 }),
        ]
    );
    // Every completion wrote its event to the outbox in the same transaction; the log sink sent them.
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM outbox_final").await, 20);
    eventually(10, "the log sink to mark events sent", || async {
        (scalar(
            &db,
            "SELECT COUNT(*) FROM outbox_final WHERE sent_at IS NULL",
        )
        .await
            == 0)
            .then_some(())
    })
    .await;

    let http = reqwest::Client::new();
    let dlq_url = format!("{}/api/admin/streaming/dlq", server.base);
    assert_eq!(
        http.get(&dlq_url).send().await.unwrap().status(),
        401,
        "no token"
    );
    let r = http
        .get(&dlq_url)
        .bearer_auth("ops-token-456")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "an operator may not read the DLQ");
    let r = http
        .get(&dlq_url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let page: Value = http
        .get(format!(
            "{dlq_url}?entity=user&errorType=ValidationException"
        ))
        .bearer_auth("admin-token-123")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["totalElements"], 1);
    assert_eq!(
        page["content"][0]["payload"]["email"], "****",
        "sensitive fields are masked"
    );

    let retried: Value = http
        .post(format!(
            "{}/api/admin/streaming/dlq/retry-all?errorType=TimeoutException",
            server.base
        ))
        .bearer_auth("admin-token-123")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(retried, json!({ "retried": 1 }));
    // It is retried (three more attempts), and lands in the DLQ again; the poison stays where it is.
    eventually(
        30,
        "the retried command to come back to the DLQ",
        || async {
            let rows = db
                .sql(
                    "SELECT status, attempts FROM command_queue WHERE entity_id = 'o1'",
                    vec![],
                )
                .await
                .unwrap()
                .rows;
            (rows[0]["status"] == "dlq" && rows[0]["attempts"] == 3).then_some(())
        },
    )
    .await;
    let audit = db
        .sql(
            "SELECT actor, op, rows FROM runbook_audit WHERE op = 'dlq_retry'",
            vec![],
        )
        .await
        .unwrap()
        .rows;
    assert_eq!(
        audit,
        vec![json!({ "actor": "api:admin", "op": "dlq_retry", "rows": 1 })]
    );

    let r = http
        .delete(format!(
            "{}/api/admin/streaming/dlq/cleanup?olderThan=soon",
            server.base
        ))
        .bearer_auth("admin-token-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let gone: Value = http
        .delete(format!(
            "{}/api/admin/streaming/dlq/cleanup?olderThan=0s",
            server.base
        ))
        .bearer_auth("admin-token-123")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(gone, json!({ "deleted": 2 }));

    let metrics = http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("core_stream_worker_success_total{entity=\"user\"} 20"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "core_stream_worker_error_total{entity=\"order\",error_type=\"TimeoutException\"} 6"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("core_stream_cmd_latency_seconds_count{entity=\"user\"} 20"),
        "{metrics}"
    );
    assert!(metrics.contains("core_stream_outbox_unsent 0"), "{metrics}");
}

#[tokio::test]
async fn retries_dlq_and_admin_api_on_sqlite() {
    let w = Workdir::new();
    let url = w.sqlite_url();
    retries_dlq_and_admin_api(&url).await;
}

#[tokio::test]
async fn retries_dlq_and_admin_api_on_postgres() {
    let db = PgDb::new().await;
    retries_dlq_and_admin_api(&db.url).await;
}

async fn crashed_worker_recovered(url: &str) {
    let w = workdir();
    for i in 0..6 {
        enqueue(&w, url, "job", &format!("j{i}"), "slow.work", "{}");
    }
    let db = store(url).await;
    let mut first = w.serve(&["--store", url]);
    eventually(10, "the first worker to claim commands", || async {
        (scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE status = 'processing'",
        )
        .await
            > 0)
        .then_some(())
    })
    .await;
    let claimed = scalar(
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE status = 'processing'",
    )
    .await;
    first.kill_hard();
    let _second = w.serve(&["--store", url]);
    eventually(40, "the second worker to finish everything", || async {
        (scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE status = 'completed'",
        )
        .await
            == 6)
            .then_some(())
    })
    .await;
    // The lost lease counted as an attempt.
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE attempts >= 2"
        )
        .await,
        claimed
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM work_state WHERE state = 'updating'"
        )
        .await,
        0,
        "locks released"
    );
}

#[tokio::test]
async fn a_killed_workers_commands_are_recovered_on_sqlite() {
    let w = Workdir::new();
    crashed_worker_recovered(&w.sqlite_url()).await;
}

#[tokio::test]
async fn a_killed_workers_commands_are_recovered_on_postgres() {
    let db = PgDb::new().await;
    crashed_worker_recovered(&db.url).await;
}

#[tokio::test]
async fn ten_thousand_commands_over_three_processes_complete_exactly_once() {
    let pg = PgDb::new().await;
    let w = workdir();
    assert_eq!(w.run(&["--store", &pg.url, "queue", "stats"]).code, 0);
    let db = store(&pg.url).await;
    db.sql(
        "CREATE TABLE processed (command_id BIGINT NOT NULL)",
        vec![],
    )
    .await
    .unwrap();
    let commands: Vec<runbook::stream::queue::NewCommand> = (0..10_000)
        .map(|i| runbook::stream::queue::NewCommand {
            entity: "acct".into(),
            entity_id: format!("a{}", i % 500),
            command_type: "count.it".into(),
            priority: i % 3,
            payload: json!({ "n": i }),
        })
        .collect();
    runbook::stream::queue::enqueue(&db, &commands)
        .await
        .unwrap();
    let servers: Vec<_> = (0..3).map(|_| w.serve(&["--store", &pg.url])).collect();
    eventually(180, "10,000 commands to complete", || async {
        (scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE status = 'completed'",
        )
        .await
            == 10_000)
            .then_some(())
    })
    .await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM processed").await, 10_000);
    assert_eq!(
        scalar(&db, "SELECT COUNT(DISTINCT command_id) FROM processed").await,
        10_000,
        "no command ran twice"
    );
    // All three processes did a share of the work, and their counts add up.
    let mut total = 0;
    for (i, server) in servers.iter().enumerate() {
        let metrics = reqwest::get(format!("{}/metrics", server.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let done: u64 = metrics
            .lines()
            .find(|l| l.starts_with("core_stream_worker_success_total{entity=\"acct\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(done > 0, "process {i} completed nothing:\n{}", server.log());
        total += done;
    }
    assert_eq!(total, 10_000);
}

#[tokio::test]
async fn runs_are_commands_and_interrupted_runs_resume_or_are_marked() {
    let w = workdir();
    let url = w.sqlite_url();
    w.playbook(
        "resumable",
        "name: resumable\non_interrupt: resume\nsteps:\n  - id: first\n    sql: SELECT 1 AS one\n  - id: slow\n    wait: 4s\n  - id: last\n    sql: SELECT {{ steps.first.rows[0].one }} + 1 AS two\n",
    );
    w.playbook("plain", "name: plain\nsteps:\n  - id: first\n    sql: SELECT 1 AS one\n  - id: slow\n    wait: 4s\n");
    let mut first = w.serve(&["--store", &url]);
    let http = reqwest::Client::new();
    for pb in ["resumable", "plain"] {
        let r = http
            .post(format!("{}/api/runs", first.base))
            .bearer_auth("ops-token-456")
            .json(&json!({ "playbook": pb }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    }
    let bad = http
        .post(format!("{}/api/runs", first.base))
        .bearer_auth("ops-token-456")
        .json(&json!({ "playbook": "nope" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 404);
    let db = store(&url).await;
    eventually(10, "both runs to pass their first step", || async {
        (scalar(
            &db,
            "SELECT COUNT(*) FROM runbook_step_attempts WHERE step_id = 'first'",
        )
        .await
            == 2)
            .then_some(())
    })
    .await;
    first.kill_hard();
    let _second = w.serve(&["--store", &url]);
    eventually(30, "both runs to be finished", || async {
        (scalar(
            &db,
            "SELECT COUNT(*) FROM runbook_runs WHERE status IN ('succeeded', 'interrupted')",
        )
        .await
            == 2)
            .then_some(())
    })
    .await;
    let runs = db
        .sql(
            "SELECT playbook, status, command_id FROM runbook_runs ORDER BY playbook",
            vec![],
        )
        .await
        .unwrap()
        .rows;
    assert_eq!(runs[0]["playbook"], "plain");
    assert_eq!(runs[0]["status"], "interrupted");
    assert_eq!(runs[1]["status"], "succeeded");
    assert!(runs[1]["command_id"].is_i64(), "the run was a command");
    // The resumed run did not repeat its first step, and its last step read the first step's result.
    let firsts = scalar(&db, "SELECT COUNT(*) FROM runbook_step_attempts s JOIN runbook_runs r ON r.id = s.run_id WHERE r.playbook = 'resumable' AND s.step_id = 'first'").await;
    assert_eq!(firsts, 1);
    let last = db
        .sql("SELECT s.output FROM runbook_step_attempts s JOIN runbook_runs r ON r.id = s.run_id WHERE r.playbook = 'resumable' AND s.step_id = 'last'", vec![])
        .await
        .unwrap()
        .rows;
    assert_eq!(last[0]["output"]["rows"][0]["two"], 2);
}

#[tokio::test]
async fn settings_change_at_runtime_and_every_process_picks_them_up() {
    let pg = PgDb::new().await;
    let w = workdir();
    let a = w.serve(&["--store", &pg.url]);
    let b = w.serve(&["--store", &pg.url]);
    w.playbook("scale", "name: scale\nsteps:\n  - id: up\n    runtime: { op: scale_workers, concurrency: \"{{ runtime.workerConcurrency * 2 }}\", batch_size: 7 }\n");
    let out = w.run(&["--store", &pg.url, "run", "scale", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.run()["steps"]["up"]["output"]["after"]["workerConcurrency"],
        8
    );
    for s in [&a, &b] {
        eventually(10, "the server to log the new settings", || async {
            s.log().contains("worker_batch_size: 7").then_some(())
        })
        .await;
    }
    let stats = w.run(&["--store", &pg.url, "queue", "stats", "-o", "json"]);
    let stats: Value = serde_json::from_str(&stats.stdout).unwrap();
    assert_eq!(stats["settings"]["workerBatchSize"], 7);
}

#[tokio::test]
async fn sigterm_finishes_the_batch_in_hand_and_queue_load_produces() {
    let w = workdir();
    let url = w.sqlite_url();
    let out = w.run(&[
        "queue",
        "load",
        "--type",
        "user.update",
        "--rate",
        "200/s",
        "--duration",
        "1s",
        "--entities",
        "50",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .starts_with("enqueued 200 `user.update` commands"),
        "{out:?}"
    );
    let db = store(&url).await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM command_queue").await, 200);
    assert_eq!(
        scalar(&db, "SELECT COUNT(DISTINCT entity_id) FROM command_queue").await <= 50,
        true
    );
    for i in 0..4 {
        enqueue(&w, &url, "job", &format!("s{i}"), "slow.work", "{}");
    }
    let mut server = w.serve(&[]);
    eventually(20, "slow commands to be claimed", || async {
        (scalar(&db, "SELECT COUNT(*) FROM command_queue WHERE command_type = 'slow.work' AND status = 'processing'").await > 0).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    server.stop();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "drained within the grace period"
    );
    // Nothing is left half-done: what was claimed was finished and acknowledged before exit.
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE status = 'processing'"
        )
        .await,
        0
    );
    assert!(scalar(&db, "SELECT COUNT(*) FROM command_queue WHERE command_type = 'slow.work' AND status = 'completed'").await > 0);
    assert!(
        server.log().contains("Workers stopped."),
        "{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_handler_maps_status_codes_to_error_types() {
    use axum::{http::StatusCode, routing::post, Router};
    let app = Router::new()
        .route(
            "/ok",
            post(|| async { (StatusCode::OK, "{\"done\": true}") }),
        )
        .route(
            "/bad",
            post(|| async { (StatusCode::UNPROCESSABLE_ENTITY, "email is not valid") }),
        )
        .route(
            "/down",
            post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "try later") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let w = Workdir::new();
    w.config(&format!(
        "streaming:\n  maxRetries: 2\n  maxBackoffMs: 50\n  poll_interval: 50ms\n  handlers:\n    svc.ok: {{ http: {{ url: \"http://{addr}/ok\" }} }}\n    svc.bad: {{ http: {{ url: \"http://{addr}/bad\" }} }}\n    svc.down: {{ http: {{ url: \"http://{addr}/down\" }} }}\n    svc.gone: {{ http: {{ url: \"http://127.0.0.1:1/x\", timeout: 1s }} }}\n"
    ));
    let url = w.sqlite_url();
    for ty in ["svc.ok", "svc.bad", "svc.down", "svc.gone"] {
        enqueue(&w, &url, "user", ty, ty, "{}");
    }
    let _server = w.serve(&[]);
    let db = store(&url).await;
    eventually(30, "all four to finish", || async {
        (scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE status IN ('pending', 'processing')",
        )
        .await
            == 0)
            .then_some(())
    })
    .await;
    let rows = db.sql("SELECT command_type, status, error_type, attempts, error_message FROM command_queue ORDER BY id", vec![]).await.unwrap().rows;
    assert_eq!(
        (rows[0]["status"].as_str(), rows[0]["attempts"].as_i64()),
        (Some("completed"), Some(1))
    );
    assert_eq!(
        (rows[1]["error_type"].as_str(), rows[1]["attempts"].as_i64()),
        (Some("ValidationException"), Some(1)),
        "4xx: no retries"
    );
    assert!(rows[1]["error_message"]
        .as_str()
        .unwrap()
        .contains("422: email is not valid"));
    assert_eq!(
        (rows[2]["error_type"].as_str(), rows[2]["attempts"].as_i64()),
        (Some("NetworkException"), Some(3)),
        "5xx: retried"
    );
    assert_eq!(rows[3]["error_type"], "NetworkException");
    assert!(
        rows[3]["error_message"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{}",
        rows[3]
    );
    // The successful command's answer travels in its outbox event.
    let ev = db
        .sql("SELECT payload FROM outbox_final", vec![])
        .await
        .unwrap()
        .rows;
    assert_eq!(ev[0]["payload"]["result"], json!({ "done": true }));
}

#[tokio::test]
async fn an_entity_lock_holds_back_its_commands_and_an_expired_lock_is_taken_over() {
    let w = workdir();
    let url = w.sqlite_url();
    assert_eq!(w.run(&["queue", "stats"]).code, 0);
    let db = store(&url).await;
    // One live lock (held by a command elsewhere) and one left behind 10 minutes ago (lockTtl is 5m).
    db.sql(
        "INSERT INTO work_state (entity, entity_id, state, locked_at, locked_by) VALUES \
         ('user', 'busy', 'updating', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'elsewhere'), \
         ('user', 'stale', 'updating', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-10 minutes'), 'dead')",
        vec![],
    )
    .await
    .unwrap();
    enqueue(&w, &url, "user", "busy", "user.update", "{}");
    enqueue(&w, &url, "user", "stale", "user.update", "{}");
    let server = w.serve(&[]);
    eventually(10, "the stale entity's command to complete", || async {
        (scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE entity_id = 'stale' AND status = 'completed'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE entity_id = 'busy' AND status = 'completed'"
        )
        .await,
        0,
        "a live lock holds its entity's commands back"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT attempts FROM command_queue WHERE entity_id = 'busy'"
        )
        .await,
        0,
        "waiting is not an attempt"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT expiries FROM work_state WHERE entity_id = 'stale'"
        )
        .await,
        1
    );
    db.sql(
        "UPDATE work_state SET state = 'idle' WHERE entity_id = 'busy'",
        vec![],
    )
    .await
    .unwrap();
    eventually(10, "the held-back command to run once the lock is free", || async {
        (scalar(&db, "SELECT COUNT(*) FROM command_queue WHERE entity_id = 'busy' AND status = 'completed'").await == 1).then_some(())
    })
    .await;
    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("core_stream_lock_expiries_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_completion_after_the_lease_was_taken_over_is_refused() {
    use runbook::stream::queue::{self, Ack, NewCommand};
    let pg = PgDb::new().await;
    let db = store(&pg.url).await;
    db.migrate().await.unwrap();
    let cmd = NewCommand {
        entity: "user".into(),
        entity_id: "1".into(),
        command_type: "t".into(),
        priority: 0,
        payload: json!({}),
    };
    queue::enqueue(&db, &[cmd]).await.unwrap();
    let lease = std::time::Duration::from_millis(100);
    let ttl = std::time::Duration::from_secs(300);
    let a: Vec<_> = queue::claim_locked(&db, "worker-a", 10, lease, ttl, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    assert_eq!(a.len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        queue::rescue(&db, 5).await.unwrap().0,
        1,
        "the lease expired"
    );
    let b: Vec<_> = queue::claim_locked(
        &db,
        "worker-b",
        10,
        std::time::Duration::from_secs(30),
        ttl,
        &[],
    )
    .await
    .unwrap()
    .into_iter()
    .map(|(c, _)| c)
    .collect();
    assert_eq!((b.len(), b[0].attempts), (1, 2), "the lost attempt counted");
    let late = Ack {
        completed: vec![(a[0].id, "user".into(), "1".into())],
        ..Default::default()
    };
    assert!(
        queue::ack(&db, "worker-a", &late).await.unwrap().is_empty(),
        "worker A's completion is refused"
    );
    let on_time = Ack {
        completed: vec![(b[0].id, "user".into(), "1".into())],
        locked: vec![b[0].id],
        ..Default::default()
    };
    assert_eq!(
        queue::ack(&db, "worker-b", &on_time).await.unwrap(),
        vec![b[0].id]
    );
}

#[tokio::test]
async fn a_long_playbook_run_does_not_hold_up_other_commands() {
    let w = workdir();
    let url = w.sqlite_url();
    w.playbook("slow", "name: slow\nsteps:\n  - id: nap\n    wait: 6s\n");
    let server = w.serve(&[]);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/runs", server.base))
        .bearer_auth("ops-token-456")
        .json(&json!({ "playbook": "slow" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let db = store(&url).await;
    eventually(10, "the run to start", || async {
        (scalar(
            &db,
            "SELECT COUNT(*) FROM runbook_runs WHERE status = 'running'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    for i in 0..5 {
        enqueue(&w, &url, "user", &format!("u{i}"), "user.update", "{}");
    }
    eventually(4, "ordinary commands to complete while the run goes on", || async {
        (scalar(&db, "SELECT COUNT(*) FROM command_queue WHERE command_type = 'user.update' AND status = 'completed'").await == 5).then_some(())
    })
    .await;
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM runbook_runs WHERE status = 'running'"
        )
        .await,
        1,
        "the run is still going"
    );
    eventually(15, "the run to finish and its command to complete", || async {
        (scalar(&db, "SELECT COUNT(*) FROM command_queue WHERE command_type = 'runbook.run' AND status = 'completed'").await == 1).then_some(())
    })
    .await;
}
