//! The embedded streaming runtime on both backends: workers, retries and the DLQ, leases and
//! crashed workers, the admin API and its roles, runs as commands, and many processes sharing a
//! PostgreSQL queue.

use serde_json::json;

use crate::util::{
    delete_json, eventually, get_json, listen, post_empty, post_json, rows, scalar, store,
    until_scalar, PgDb, Workdir,
};

const ADMIN_TOKEN: &str = "admin-token-123";
const OPS_TOKEN: &str = "ops-token-456";

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
        .env("TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TEST_OPS_TOKEN", OPS_TOKEN);
    w.config(CONFIG);
    w
}

async fn retries_dlq_and_admin_api(url: &str) {
    let w = workdir();
    for i in 0..20 {
        w.enqueue(
            url,
            "user",
            &format!("u{}", i % 5),
            "user.update",
            r#"{"email": "a@example.com"}"#,
        );
    }
    w.enqueue(
        url,
        "user",
        "bad",
        "user.poison",
        r#"{"email": "bad@example.com"}"#,
    );
    w.enqueue(url, "order", "o1", "order.flaky", "{}");
    let server = w.serve(&["--store", url]);
    let db = store(url).await;
    until_scalar(
        30,
        "every command to finish",
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE status IN ('pending', 'processing')",
        |n| n == 0,
    )
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
    let dlq = rows(&db, "SELECT entity_id, error_type, attempts FROM command_queue WHERE status = 'dlq' ORDER BY entity_id").await;
    assert_eq!(
        dlq,
        vec![
            json!({ "entity_id": "bad", "error_type": "ValidationException", "attempts": 1 }),
            json!({ "entity_id": "o1", "error_type": "TimeoutException", "attempts": 3 }),
        ]
    );
    // Every completion wrote its event to the outbox in the same transaction; the log sink sent them.
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM outbox_final").await, 20);
    until_scalar(
        10,
        "the log sink to mark events sent",
        &db,
        "SELECT COUNT(*) FROM outbox_final WHERE sent_at IS NULL",
        |n| n == 0,
    )
    .await;

    let dlq_url = format!("{}/api/admin/streaming/dlq", server.base);
    assert_eq!(get_json(&dlq_url, None).await.0, 401, "no token");
    let (status, _) = get_json(&dlq_url, Some(OPS_TOKEN)).await;
    assert_eq!(status, 403, "an operator may not read the DLQ");
    assert_eq!(get_json(&dlq_url, Some("wrong")).await.0, 401);
    let (_, page) = get_json(
        &format!("{dlq_url}?entity=user&errorType=ValidationException"),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(page["totalElements"], 1);
    assert_eq!(
        page["content"][0]["payload"]["email"], "****",
        "sensitive fields are masked"
    );

    let (_, retried) = post_empty(
        &format!(
            "{}/api/admin/streaming/dlq/retry-all?errorType=TimeoutException",
            server.base
        ),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(retried, json!({ "retried": 1 }));
    // It is retried (three more attempts), and lands in the DLQ again; the poison stays where it is.
    eventually(
        30,
        "the retried command to come back to the DLQ",
        || async {
            let rows = rows(
                &db,
                "SELECT status, attempts FROM command_queue WHERE entity_id = 'o1'",
            )
            .await;
            (rows[0]["status"] == "dlq" && rows[0]["attempts"] == 3).then_some(())
        },
    )
    .await;
    let audit = rows(
        &db,
        "SELECT actor, op, rows FROM runbook_audit WHERE op = 'dlq_retry'",
    )
    .await;
    assert_eq!(
        audit,
        vec![json!({ "actor": "api:admin", "op": "dlq_retry", "rows": 1 })]
    );

    let cleanup = format!("{}/api/admin/streaming/dlq/cleanup", server.base);
    let (status, _) = delete_json(&format!("{cleanup}?olderThan=soon"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 400);
    let (_, gone) = delete_json(&format!("{cleanup}?olderThan=0s"), Some(ADMIN_TOKEN)).await;
    assert_eq!(gone, json!({ "deleted": 2 }));

    let metrics = server.metrics().await;
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
        w.enqueue(url, "job", &format!("j{i}"), "slow.work", "{}");
    }
    let db = store(url).await;
    let mut first = w.serve(&["--store", url]);
    until_scalar(
        10,
        "the first worker to claim commands",
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE status = 'processing'",
        |n| n > 0,
    )
    .await;
    let claimed = scalar(
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE status = 'processing'",
    )
    .await;
    first.kill_hard();
    let _second = w.serve(&["--store", url]);
    until_scalar(
        40,
        "the second worker to finish everything",
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE status = 'completed'",
        |n| n == 6,
    )
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
    until_scalar(
        180,
        "10,000 commands to complete",
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE status = 'completed'",
        |n| n == 10_000,
    )
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
        let metrics = server.metrics().await;
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
    let runs = format!("{}/api/runs", first.base);
    for pb in ["resumable", "plain"] {
        let (status, body) = post_json(&runs, Some(OPS_TOKEN), &json!({ "playbook": pb })).await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, _) = post_json(&runs, Some(OPS_TOKEN), &json!({ "playbook": "nope" })).await;
    assert_eq!(status, 404);
    let db = store(&url).await;
    until_scalar(
        10,
        "both runs to pass their first step",
        &db,
        "SELECT COUNT(*) FROM runbook_step_attempts WHERE step_id = 'first'",
        |n| n == 2,
    )
    .await;
    first.kill_hard();
    let _second = w.serve(&["--store", &url]);
    until_scalar(
        30,
        "both runs to be finished",
        &db,
        "SELECT COUNT(*) FROM runbook_runs WHERE status IN ('succeeded', 'interrupted')",
        |n| n == 2,
    )
    .await;
    let runs = rows(
        &db,
        "SELECT playbook, status, command_id FROM runbook_runs ORDER BY playbook",
    )
    .await;
    assert_eq!(runs[0]["playbook"], "plain");
    assert_eq!(runs[0]["status"], "interrupted");
    assert_eq!(runs[1]["status"], "succeeded");
    assert!(runs[1]["command_id"].is_i64(), "the run was a command");
    // The resumed run did not repeat its first step, and its last step read the first step's result.
    let firsts = scalar(&db, "SELECT COUNT(*) FROM runbook_step_attempts s JOIN runbook_runs r ON r.id = s.run_id WHERE r.playbook = 'resumable' AND s.step_id = 'first'").await;
    assert_eq!(firsts, 1);
    let last = rows(&db, "SELECT s.output FROM runbook_step_attempts s JOIN runbook_runs r ON r.id = s.run_id WHERE r.playbook = 'resumable' AND s.step_id = 'last'").await;
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
    let stats = w
        .run(&["--store", &pg.url, "queue", "stats", "-o", "json"])
        .json();
    assert_eq!(stats["settings"]["workerBatchSize"], 7);

    // The workers now claim and run with the new values: at concurrency 8 and batch size 7 a
    // process keeps ceil(8 / 7) = 2 batches of at most 7 in hand, 14 commands; at the configured
    // concurrency 4 and batch size 50 it would claim all 40 commands in one batch. The 40 arrive in
    // one statement so the claims see them all at once.
    let db = store(&pg.url).await;
    db.sql(
        "INSERT INTO command_queue (entity, entity_id, command_type) \
         SELECT 'job', 's' || g, 'slow.work' FROM generate_series(1, 40) g",
        vec![],
    )
    .await
    .unwrap();
    let mut most: std::collections::BTreeMap<String, i64> = Default::default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        for r in rows(
            &db,
            "SELECT locked_by, COUNT(*) AS n FROM command_queue \
             WHERE command_type = 'slow.work' AND status = 'processing' GROUP BY locked_by",
        )
        .await
        {
            let n = r["n"].as_i64().unwrap();
            let e = most
                .entry(r["locked_by"].as_str().unwrap().to_owned())
                .or_default();
            *e = (*e).max(n);
        }
        let done = scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE command_type = 'slow.work' AND status = 'completed'",
        )
        .await;
        if done == 40 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the 40 commands did not complete within 60 s ({done} did)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(most.len(), 2, "both processes claimed commands: {most:?}");
    // Each of the two claim loops fills a batch of 7, so a process holds 14 from the start. On
    // PostgreSQL a loop acknowledges a finished batch while it claims the next, so for a moment a
    // loop may show two batches as processing: never more than 4 batches of 7, never 40 at once.
    for (worker, n) in &most {
        assert!(
            (14..=28).contains(n),
            "{worker} held two batches of 7, and at most four while acknowledging: {most:?}"
        );
    }
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
    let entities = scalar(&db, "SELECT COUNT(DISTINCT entity_id) FROM command_queue").await;
    assert!(entities <= 50, "{entities} entities, at most 50 asked for");
    for i in 0..4 {
        w.enqueue(&url, "job", &format!("s{i}"), "slow.work", "{}");
    }
    let mut server = w.serve(&[]);
    // The 200 quick commands go first; then the four slow ones (3 s each) are claimed, all in one
    // batch (batch size 50), and run four at a time (concurrency 4).
    until_scalar(
        20,
        "all four slow commands to be in hand",
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE command_type = 'slow.work' AND status = 'processing'",
        |n| n == 4,
    )
    .await;
    let in_hand = rows(
        &db,
        "SELECT id FROM command_queue WHERE status = 'processing' ORDER BY id",
    )
    .await;
    let started = std::time::Instant::now();
    server.stop();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "drained within the grace period"
    );
    // Every command in hand at SIGTERM was run to the end and acknowledged before exit; none went
    // back to pending and nothing is left half-done.
    for r in &in_hand {
        let id = r["id"].as_i64().unwrap();
        let st = rows(
            &db,
            &format!("SELECT status, attempts FROM command_queue WHERE id = {id}"),
        )
        .await;
        assert_eq!(
            st[0]["status"], "completed",
            "command {id}, in hand at SIGTERM, finished before exit: {st:?}"
        );
    }
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM command_queue WHERE command_type = 'slow.work' AND status = 'completed'").await,
        4,
        "all four slow commands finished"
    );
    // Nothing is left half-done: what is not completed was never taken up (or was put back before
    // it ran because another command of its entity held the lock) and waits, unattempted.
    assert_eq!(
        rows(
            &db,
            "SELECT DISTINCT status, attempts FROM command_queue WHERE status <> 'completed'"
        )
        .await
        .into_iter()
        .filter(|r| r != &json!({ "status": "pending", "attempts": 0 }))
        .collect::<Vec<_>>(),
        Vec::<serde_json::Value>::new(),
        "nothing is left processing, failed or counted as attempted"
    );
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
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                (StatusCode::OK, "{}")
            }),
        );
    let base = listen(app).await;
    let w = Workdir::new();
    w.config(&format!(
        "streaming:\n  maxRetries: 2\n  maxBackoffMs: 50\n  poll_interval: 50ms\n  handlers:\n    svc.ok: {{ http: {{ url: \"{base}/ok\" }} }}\n    svc.bad: {{ http: {{ url: \"{base}/bad\" }} }}\n    svc.down: {{ http: {{ url: \"{base}/down\" }} }}\n    svc.gone: {{ http: {{ url: \"http://127.0.0.1:1/x\" }} }}\n    svc.slow: {{ http: {{ url: \"{base}/slow\", timeout: 1s }} }}\n"
    ));
    let url = w.sqlite_url();
    for ty in ["svc.ok", "svc.bad", "svc.down", "svc.gone", "svc.slow"] {
        w.enqueue(&url, "user", ty, ty, "{}");
    }
    let _server = w.serve(&[]);
    let db = store(&url).await;
    until_scalar(
        30,
        "all five to finish",
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE status IN ('pending', 'processing')",
        |n| n == 0,
    )
    .await;
    let cmds = rows(&db, "SELECT command_type, status, error_type, attempts, error_message FROM command_queue ORDER BY id").await;
    assert_eq!(
        (cmds[0]["status"].as_str(), cmds[0]["attempts"].as_i64()),
        (Some("completed"), Some(1))
    );
    assert_eq!(
        (cmds[1]["error_type"].as_str(), cmds[1]["attempts"].as_i64()),
        (Some("ValidationException"), Some(1)),
        "4xx: no retries"
    );
    assert!(cmds[1]["error_message"]
        .as_str()
        .unwrap()
        .contains("422: email is not valid"));
    assert_eq!(
        (cmds[2]["error_type"].as_str(), cmds[2]["attempts"].as_i64()),
        (Some("NetworkException"), Some(3)),
        "5xx: retried"
    );
    assert_eq!(cmds[3]["error_type"], "NetworkException");
    assert!(
        cmds[3]["error_message"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{}",
        cmds[3]
    );
    // A service that accepts the connection and does not answer within the handler's timeout.
    assert_eq!(
        (cmds[4]["error_type"].as_str(), cmds[4]["attempts"].as_i64()),
        (Some("TimeoutException"), Some(3)),
        "a timeout: retried, {}",
        cmds[4]
    );
    // The successful command's answer travels in its outbox event.
    let ev = rows(&db, "SELECT payload FROM outbox_final").await;
    assert_eq!(ev[0]["payload"]["result"], json!({ "done": true }));
}

#[tokio::test]
async fn an_entity_lock_holds_back_its_commands_and_an_expired_lock_is_taken_over() {
    let w = workdir();
    let url = w.sqlite_url();
    w.create_store(&w.sqlite_url());
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
    w.enqueue(&url, "user", "busy", "user.update", "{}");
    w.enqueue(&url, "user", "stale", "user.update", "{}");
    let server = w.serve(&[]);
    until_scalar(
        10,
        "the stale entity's command to complete",
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE entity_id = 'stale' AND status = 'completed'",
        |n| n == 1,
    )
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
    // Waiting is not an attempt: between its claims the waiting command is pending with no
    // attempt counted (while a worker holds it for a moment, the claim counts one until it is
    // deferred, so the test looks while it is pending).
    until_scalar(
        5,
        "the waiting command to be pending with no attempt counted",
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE entity_id = 'busy' AND status = 'pending' AND attempts = 0",
        |n| n == 1,
    )
    .await;
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
    until_scalar(
        10,
        "the held-back command to run once the lock is free",
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE entity_id = 'busy' AND status = 'completed'",
        |n| n == 1,
    )
    .await;
    let metrics = server.metrics().await;
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
    let lease = std::time::Duration::from_secs(30);
    let ttl = std::time::Duration::from_secs(300);
    let a: Vec<_> = queue::claim_locked(&db, "worker-a", 10, lease, ttl, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    assert_eq!(a.len(), 1);
    assert_eq!(
        queue::rescue(&db, 5).await.unwrap().0,
        0,
        "the lease is live"
    );
    // Leases are timed by the database's clock (one clock for every replica); the test moves
    // this lease's end into the past instead of waiting for it.
    db.sql(
        "UPDATE command_queue SET locked_until = NOW() - INTERVAL '1 second' WHERE id = $1",
        vec![json!(a[0].id)],
    )
    .await
    .unwrap();
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
    let (status, body) = post_json(
        &format!("{}/api/runs", server.base),
        Some(OPS_TOKEN),
        &json!({ "playbook": "slow" }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let db = store(&url).await;
    until_scalar(
        10,
        "the run to start",
        &db,
        "SELECT COUNT(*) FROM runbook_runs WHERE status = 'running'",
        |n| n == 1,
    )
    .await;
    for i in 0..5 {
        w.enqueue(&url, "user", &format!("u{i}"), "user.update", "{}");
    }
    until_scalar(
        4,
        "ordinary commands to complete while the run goes on",
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE command_type = 'user.update' AND status = 'completed'",
        |n| n == 5,
    )
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
    until_scalar(
        15,
        "the run to finish and its command to complete",
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE command_type = 'runbook.run' AND status = 'completed'",
        |n| n == 1,
    )
    .await;
}

#[tokio::test]
async fn a_completion_and_its_outbox_event_commit_together() {
    let w = Workdir::new();
    // Many retries: a returned lease must not put the command in the DLQ while the outbox refuses.
    w.config(
        "streaming:\n  maxRetries: 100\n  maxBackoffMs: 50\n  lease: 2s\n  poll_interval: 50ms\n  handlers:\n    user.update: { simulate: { latency: 1ms } }\n",
    );
    let url = w.sqlite_url();
    w.create_store(&w.sqlite_url());
    let db = store(&url).await;
    // The outbox refuses the event of entity `bad`: its completion must not stay either.
    db.sql(
        "CREATE TRIGGER refuse_event BEFORE INSERT ON outbox_final WHEN NEW.entity_id = 'bad' \
         BEGIN SELECT RAISE(ABORT, 'outbox refused'); END",
        vec![],
    )
    .await
    .unwrap();
    w.enqueue(&url, "user", "bad", "user.update", "{}");
    let server = w.serve(&[]);
    eventually(30, "the acknowledgement to fail for good", || async {
        server
            .log()
            .contains("Acknowledgement failed; the leases will return these commands.")
            .then_some(())
    })
    .await;
    assert!(server.log().contains("outbox refused"), "{}", server.log());
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE entity_id = 'bad' AND status = 'completed'"
        )
        .await,
        0,
        "the completion was rolled back with its event"
    );
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM outbox_final").await, 0);

    // Once the outbox takes events again, the lease returns the command and it completes, with
    // exactly one event.
    db.sql("DROP TRIGGER refuse_event", vec![]).await.unwrap();
    until_scalar(
        30,
        "the command to complete once the outbox accepts its event",
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE entity_id = 'bad' AND status = 'completed'",
        |n| n == 1,
    )
    .await;
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM outbox_final WHERE entity_id = 'bad'"
        )
        .await,
        1
    );
}
