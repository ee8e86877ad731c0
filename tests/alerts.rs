//! Alerts start playbooks: `runbook serve` as Alertmanager's webhook receiver (real Alertmanagers
//! started here), once per alert occurrence however often it arrives, guards enforced at
//! admission across processes and replicas, and the global pause.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::{json, Value as Json};

use crate::services::{Alertmanager, MONITORING as ALERTMANAGERS};
use crate::util::{
    eventually, filler_runs, free_port, get_json, post_empty, post_json, rows, scalar, seq_scanned,
    store, until_scalar, PgDb, Server, Workdir,
};

const RECEIVER: &str = "receiver-secret-123";
const VIEWER: &str = "viewer-token-111";
const OPERATOR: &str = "operator-token-222";

const CONFIG: &str = r#"
auth:
  receiver: { token: receiver-secret-123 }
  tokens:
    - { name: v, role: viewer, token: viewer-token-111 }
    - { name: ops, role: operator, token: operator-token-222 }
server: { max_body: 8KiB }
streaming:
  poll_interval: 50ms
"#;

/// Changes things (a runtime op), runs on firing and on resolved, and records what it saw.
const FIX_QUEUE: &str = r#"name: fix-queue
on:
  alerts:
    - alertname: QueueDepthHigh
  resolved: run
guard: { concurrency: 100000 }
steps:
  - id: seen
    assert:
      that: "alert.labels.alertname == 'QueueDepthHigh'"
      message: "{{ alert.status }} {{ alert.labels.instance }} {{ alert.startsAt }} {{ alert.fingerprint }} {{ alerts | length }} {{ alert.externalURL }}"
  - id: release
    runtime: { op: release_stale_locks, older_than: 1h }
"#;

/// Only reads; the default `resolved: skip`.
const LOOK_QUEUE: &str = r#"name: look-queue
on:
  alerts:
    - matchers: ['alertname=~"Queue.*"', 'severity!="info"']
guard: { concurrency: 100000 }
steps:
  - id: depth
    sql: SELECT COUNT(*) AS n FROM command_queue
"#;

fn workdir() -> Workdir {
    let w = Workdir::new();
    w.config(CONFIG);
    w.playbook("fix-queue", FIX_QUEUE);
    w.playbook("look-queue", LOOK_QUEUE);
    w
}

/// A workdir whose servers run no workers: runs stay `queued`, as recorded.
fn no_workers() -> Workdir {
    let w = Workdir::new();
    w.config(&format!("{CONFIG}  workers: false\n"));
    w.playbook("fix-queue", FIX_QUEUE);
    w.playbook("look-queue", LOOK_QUEUE);
    w
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One alert as Alertmanager's webhook carries it.
fn alert(labels: Json, starts_at: &str, resolved_at: Option<&str>) -> Json {
    json!({
        "status": if resolved_at.is_some() { "resolved" } else { "firing" },
        "labels": labels, "annotations": { "summary": "queue too deep" },
        "startsAt": starts_at, "endsAt": resolved_at.unwrap_or("0001-01-01T00:00:00Z"),
        "generatorURL": "http://prometheus/graph", "fingerprint": "",
    })
}

fn notification(alerts: Vec<Json>) -> Json {
    let status = if alerts.iter().all(|a| a["status"] == "resolved") {
        "resolved"
    } else {
        "firing"
    };
    json!({
        "version": "4", "groupKey": "{}:{alertname=\"QueueDepthHigh\"}", "truncatedAlerts": 0,
        "status": status, "receiver": "runbook", "groupLabels": {}, "commonLabels": {},
        "commonAnnotations": {}, "externalURL": "http://alertmanager:9093", "alerts": alerts,
    })
}

async fn post_webhook(server: &Server, body: &Json) -> (u16, Json) {
    post_json(
        &format!("{}/api/webhooks/alertmanager", server.base),
        Some(RECEIVER),
        body,
    )
    .await
}

/// A step's recorded output text, per run, for runs of `playbook` in id order.
async fn messages(db: &runbook::store::Db, playbook: &str) -> Vec<String> {
    rows(
        db,
        &format!(
            "SELECT a.output FROM runbook_step_attempts a JOIN runbook_runs r ON r.id = a.run_id \
             WHERE r.playbook = '{playbook}' AND a.step_id = 'seen' ORDER BY r.id"
        ),
    )
    .await
    .into_iter()
    .map(|r| r["output"].to_string())
    .collect()
}

#[tokio::test]
async fn alertmanager_fires_and_resolves_and_the_right_runs_happen_once() {
    let _one = ALERTMANAGERS.lock().await;
    let w = workdir();
    let url = w.sqlite_url();
    let server = w.serve(&["--store", &url]);
    eventually(5, "the receiver mode in the log", || async {
        server
            .log()
            .contains("alert receiver: bearer token required")
            .then_some(())
    })
    .await;
    let am = Alertmanager::start(
        &format!("{}/api/webhooks/alertmanager", server.base),
        RECEIVER,
    )
    .await;
    let starts = now();
    let labels = json!({ "alertname": "QueueDepthHigh", "instance": "a", "severity": "critical" });
    am.post(
        &json!([{ "labels": labels, "startsAt": starts, "annotations": { "summary": "deep" } }]),
    )
    .await;
    let db = store(&url).await;
    until_scalar(
        10,
        "both playbooks ran",
        &db,
        "SELECT COUNT(*) AS n FROM runbook_runs WHERE status = 'succeeded'",
        |n| n == 2,
    )
    .await;
    let fired = messages(&db, "fix-queue").await;
    assert_eq!(fired.len(), 1);
    assert!(fired[0].contains("firing a "), "{fired:?}");
    assert!(
        fired[0].contains(&starts),
        "the alert's startsAt: {fired:?}"
    );
    // Critical: the run's command had the top priority.
    let priorities = rows(&db, "SELECT DISTINCT priority FROM command_queue").await;
    assert_eq!(priorities, [json!({"priority": 10})]);

    // Resolve: Alertmanager sends it with send_resolved; fix-queue runs once more, look-queue not.
    am.post(&json!([{ "labels": labels, "startsAt": starts, "endsAt": now() }]))
        .await;
    until_scalar(
        10,
        "the resolved run",
        &db,
        "SELECT COUNT(*) AS n FROM runbook_runs WHERE status = 'succeeded'",
        |n| n == 3,
    )
    .await;
    let all = messages(&db, "fix-queue").await;
    assert!(all[1].contains("resolved a "), "{all:?}");
    // Nothing more arrives (no repeats within repeat_interval).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = rows(
        &db,
        "SELECT playbook, COUNT(*) AS n FROM runbook_runs GROUP BY playbook ORDER BY playbook",
    )
    .await;
    assert_eq!(
        counts,
        [
            json!({"playbook": "fix-queue", "n": 2}),
            json!({"playbook": "look-queue", "n": 1})
        ]
    );
    let alert = rows(
        &db,
        "SELECT status, resolved_at IS NOT NULL AS resolved, matched FROM runbook_alerts",
    )
    .await;
    assert_eq!(
        alert,
        [json!({"status": "resolved", "resolved": 1, "matched": 1})]
    );
    let (status, listed) = get_json(
        &format!("{}/api/alerts?status=resolved", server.base),
        Some(VIEWER),
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed[0]["runs"].as_array().unwrap().len(), 3, "{listed}");
}

#[tokio::test]
async fn one_notification_five_times_starts_one_run_and_unmatched_alerts_are_recorded() {
    let w = no_workers();
    let url = w.sqlite_url();
    let server = w.serve(&["--store", &url]);
    let starts = now();
    let body = notification(vec![alert(
        json!({"alertname": "QueueDepthHigh", "instance": "b", "severity": "info"}),
        &starts,
        None,
    )]);
    let mut run_ids = Vec::new();
    for i in 0..5 {
        let (status, answer) = post_webhook(&server, &body).await;
        assert_eq!(status, 200, "{answer}");
        let a = &answer["alerts"][0];
        // severity=info: only fix-queue matches (look-queue excludes it).
        assert_eq!(a["playbooks"].as_array().unwrap().len(), 1, "{answer}");
        let p = &a["playbooks"][0];
        assert_eq!(
            p["outcome"],
            if i == 0 { "started" } else { "duplicate" },
            "{answer}"
        );
        run_ids.push(p["run_id"].as_i64().unwrap());
    }
    assert!(run_ids.iter().all(|&id| id == run_ids[0]), "{run_ids:?}");
    let db = store(&url).await;
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) AS n FROM runbook_runs").await,
        1
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) AS n FROM command_queue").await,
        1
    );
    assert_eq!(
        scalar(&db, "SELECT notifications AS n FROM runbook_alerts").await,
        5
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) AS n FROM runbook_alert_notifications").await,
        5
    );
    let run = rows(&db, "SELECT status, trigger FROM runbook_runs").await;
    assert_eq!(run[0]["status"], "queued");
    let trigger = &run[0]["trigger"];
    assert_eq!(trigger["kind"], "alert");
    assert_eq!(trigger["fingerprint"].as_str().unwrap().len(), 16);

    // An alert nothing matches: recorded, counted, listed.
    let other = notification(vec![alert(json!({"alertname": "DiskFull"}), &starts, None)]);
    let (status, answer) = post_webhook(&server, &other).await;
    assert_eq!(status, 200);
    assert_eq!(answer["alerts"][0]["outcome"], "unmatched", "{answer}");
    let (status, listed) = get_json(
        &format!("{}/api/alerts?unmatched=true", server.base),
        Some(VIEWER),
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alertname"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["DiskFull"]);
    let (status, listed) = get_json(
        &format!("{}/api/alerts?status=firing&unmatched=false", server.base),
        Some(VIEWER),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(listed[0]["alertname"], "QueueDepthHigh", "{listed}");
    assert_eq!(listed[0]["runs"][0]["run_id"], run_ids[0]);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("runbook_alerts_received_total{outcome=\"unmatched\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runbook_alerts_received_total{outcome=\"duplicate\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runbook_webhook_requests_total{outcome=\"accepted\"} 6"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_ha_pair_of_alertmanagers_delivering_to_two_replicas_starts_one_run() {
    let _one = ALERTMANAGERS.lock().await;
    let pg = PgDb::new().await;
    let w = no_workers();
    let a = w.serve(&["--store", &pg.url]);
    let b = w.serve(&["--store", &pg.url]);
    let am1 = Alertmanager::start(&format!("{}/api/webhooks/alertmanager", a.base), RECEIVER).await;
    let am2 = Alertmanager::start(&format!("{}/api/webhooks/alertmanager", b.base), RECEIVER).await;
    let starts = now();
    let alerts = json!([{ "labels": { "alertname": "QueueDepthHigh", "instance": "ha", "severity": "warning" }, "startsAt": starts }]);
    tokio::join!(am1.post(&alerts), am2.post(&alerts));
    let db = store(&pg.url).await;
    until_scalar(
        10,
        "both notifications recorded",
        &db,
        "SELECT COUNT(*) AS n FROM runbook_alert_notifications",
        |n| n == 2,
    )
    .await;
    let runs = rows(
        &db,
        "SELECT playbook, COUNT(*) AS n FROM runbook_runs GROUP BY playbook ORDER BY playbook",
    )
    .await;
    assert_eq!(
        runs,
        [
            json!({"playbook": "fix-queue", "n": 1}),
            json!({"playbook": "look-queue", "n": 1})
        ]
    );
    let outcomes: Vec<String> = rows(
        &db,
        "SELECT outcomes FROM runbook_alert_notifications ORDER BY id",
    )
    .await
    .iter()
    .map(|r| {
        r["outcomes"][0]["outcome"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    })
    .collect();
    assert_eq!(outcomes, ["started", "duplicate"]);
    let alerts_url = format!("{}/api/alerts?status=firing&unmatched=false", b.base);
    let (status, listed) = get_json(&alerts_url, Some(VIEWER)).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        (
            listed[0]["notifications"].as_i64(),
            listed[0]["matched"].as_bool()
        ),
        (Some(2), Some(true)),
        "{listed}"
    );
    assert_eq!(listed[0]["labels"]["instance"], "ha", "{listed}");
    assert_eq!(listed[0]["runs"].as_array().unwrap().len(), 2, "{listed}");
    drop((a, b));
}

/// A client that retries like Alertmanager: on a connection error or a 5xx, again after a pause.
/// Each failed attempt is counted in `retries`.
async fn deliver(url: &str, body: &Json, retries: &AtomicUsize) {
    let client = reqwest::Client::new();
    for attempt in 1.. {
        let sent = client
            .post(url)
            .bearer_auth(RECEIVER)
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) if r.status().is_client_error() => {
                panic!("{url} refused: {}", r.text().await.unwrap_or_default())
            }
            _ => {
                retries.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await
            }
        }
        assert!(attempt < 400, "{url} did not come back");
    }
}

#[tokio::test]
async fn a_server_killed_during_a_burst_of_1000_alerts_loses_none_and_doubles_none() {
    let w = no_workers();
    let url = w.sqlite_url();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = w.serve_at(&["--store", &url], &listen);
    let webhook = format!("http://{listen}/api/webhooks/alertmanager");
    let starts = now();
    // 100 notifications of 10 alerts, each alert its own instance.
    let bodies: Vec<Json> = (0..100)
        .map(|n| {
            notification((0..10).map(|i| alert(json!({"alertname": "QueueDepthHigh", "instance": format!("i{}", n * 10 + i), "severity": "info"}), &starts, None)).collect())
        })
        .collect();
    // The kill lands inside the burst whatever the machine's speed: the test kills the server
    // once a third of the alerts are recorded, and the client, should it get ahead, waits after
    // the 40th notification until the server has been killed, then goes on against the dead one.
    let retries = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(tokio::sync::Notify::new());
    let client = tokio::spawn({
        let (retries, killed) = (retries.clone(), killed.clone());
        async move {
            for (n, b) in bodies.iter().enumerate() {
                if n == 40 {
                    killed.notified().await;
                }
                deliver(&webhook, b, &retries).await;
            }
        }
    });
    let db = store(&url).await;
    until_scalar(
        20,
        "a third of the burst",
        &db,
        "SELECT COUNT(*) AS n FROM runbook_alert_runs",
        |n| n >= 300,
    )
    .await;
    server.kill_hard();
    killed.notify_one();
    // Restarted only once the client has met the dead server.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while retries.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the client never met the killed server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _restarted = w.serve_at(&["--store", &url], &listen);
    client.await.unwrap();
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) AS n FROM runbook_alert_runs").await,
        1000
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) AS n FROM runbook_runs").await,
        1000
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(DISTINCT fingerprint) AS n FROM runbook_alerts"
        )
        .await,
        1000
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) AS n FROM command_queue").await,
        1000
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) AS n FROM runbook_runs r JOIN command_queue c ON c.id = r.command_id"
        )
        .await,
        1000,
        "each run has its command"
    );
}

const SCALE: &str = r#"name: scale
on:
  alerts:
    - alertname: Backlog
guard: { concurrency: 2 }
steps:
  - id: scale
    runtime: { op: scale_workers, concurrency: 4 }
"#;

#[tokio::test]
async fn two_replicas_deciding_at_once_admit_only_concurrency_runs() {
    let pg = PgDb::new().await;
    let w = no_workers();
    w.playbook("scale", SCALE);
    let a = w.serve(&["--store", &pg.url]);
    let b = w.serve(&["--store", &pg.url]);
    let starts = now();
    let posts = (0..20).map(|i| {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let url = format!("{base}/api/webhooks/alertmanager");
        let body = notification(vec![alert(
            json!({"alertname": "Backlog", "shard": i.to_string()}),
            &starts,
            None,
        )]);
        async move { post_json(&url, Some(RECEIVER), &body).await }
    });
    for (status, answer) in futures::future::join_all(posts).await {
        assert_eq!(status, 200, "{answer}");
    }
    let db = store(&pg.url).await;
    let by_status = rows(
        &db,
        "SELECT status, COUNT(*) AS n FROM runbook_runs GROUP BY status ORDER BY status",
    )
    .await;
    assert_eq!(
        by_status,
        [
            json!({"status": "queued", "n": 2}),
            json!({"status": "skipped", "n": 18})
        ]
    );
    let reasons = rows(
        &db,
        "SELECT DISTINCT error FROM runbook_runs WHERE status = 'skipped'",
    )
    .await;
    assert_eq!(
        reasons,
        [
            json!({"error": "guard.concurrency: 2 run(s) of this playbook already queued or running (limit 2)"})
        ]
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) AS n FROM command_queue").await,
        2
    );
    let metrics = format!("{}{}", a.metrics().await, b.metrics().await);
    let refused: i64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("runbook_guard_refusals_total{") && l.contains("playbook=\"scale\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(refused, 18);
}

/// One notification whose alerts are admitted together: a repeat inside it is a duplicate of its
/// first delivery, guards count the runs admitted before them in the same batch, a resolve kept.
async fn one_batch_decides_in_order(url: &str, w: &Workdir) {
    let server = w.serve(&["--store", url]);
    let starts = now();
    let shard = |i: u32| json!({"alertname": "Backlog", "shard": i.to_string()});
    let body = notification(vec![
        alert(shard(1), &starts, None),
        alert(shard(1), &starts, None),
        alert(shard(2), &starts, None),
        alert(shard(3), &starts, None),
        alert(shard(1), &starts, Some(&starts)),
    ]);
    let (status, answer) = post_webhook(&server, &body).await;
    assert_eq!(status, 200, "{answer}");
    let outcomes: Vec<&str> = answer["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["playbooks"][0]["outcome"].as_str().unwrap())
        .collect();
    // `scale` takes two at once and skips resolves: shard 1, its repeat, shard 2, shard 3 (a third
    // open run), shard 1 resolved.
    assert_eq!(
        outcomes,
        [
            "started",
            "duplicate",
            "started",
            "skipped",
            "resolved_skip"
        ],
        "{answer}"
    );
    let first = &answer["alerts"][0]["playbooks"][0]["run_id"];
    assert_eq!(answer["alerts"][1]["playbooks"][0]["run_id"], *first);
    assert_eq!(
        answer["alerts"][3]["playbooks"][0]["reason"],
        "guard.concurrency: 2 run(s) of this playbook already queued or running (limit 2)"
    );
    let db = store(url).await;
    let by_status = rows(
        &db,
        "SELECT status, COUNT(*) AS n FROM runbook_runs GROUP BY status ORDER BY status",
    )
    .await;
    assert_eq!(
        by_status,
        [
            json!({"status": "queued", "n": 2}),
            json!({"status": "skipped", "n": 1})
        ]
    );
    // Each run's command is its own, and each key names its run.
    let linked = rows(
        &db,
        "SELECT COUNT(*) AS n FROM runbook_runs r JOIN command_queue c ON c.id = r.command_id \
         WHERE r.status = 'queued' AND c.entity_id = r.playbook",
    )
    .await;
    assert_eq!(linked, [json!({"n": 2})]);
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) AS n FROM runbook_alert_runs k JOIN runbook_runs r ON r.id = k.run_id"
        )
        .await,
        3
    );
    let shard1 = rows(
        &db,
        "SELECT status, notifications FROM runbook_alerts WHERE CAST(labels AS TEXT) LIKE '%\"1\"%'",
    )
    .await;
    assert_eq!(shard1, [json!({"status": "resolved", "notifications": 3})]);
    // The ids the answer gives are the stored rows' (on PostgreSQL they are drawn before the
    // rows are written, all in one statement): the notification with its outcomes, each started
    // run with its command, the skipped run.
    let notification = answer["notification_id"].as_i64().unwrap();
    let stored = rows(
        &db,
        &format!(
            "SELECT alerts, outcomes FROM runbook_alert_notifications WHERE id = {notification}"
        ),
    )
    .await;
    assert_eq!(stored.len(), 1, "notification {notification}");
    assert_eq!(stored[0]["alerts"], 5);
    let outcomes = match &stored[0]["outcomes"] {
        Json::String(text) => serde_json::from_str(text).unwrap(),
        v => v.clone(),
    };
    assert_eq!(outcomes, answer["alerts"]);
    for i in [0, 2, 3] {
        let p = &answer["alerts"][i]["playbooks"][0];
        let run = p["run_id"].as_i64().unwrap();
        let found = rows(
            &db,
            &format!("SELECT status, command_id FROM runbook_runs WHERE id = {run}"),
        )
        .await;
        let status = if i == 3 { "skipped" } else { "queued" };
        assert_eq!(
            found,
            [json!({"status": status, "command_id": p["command_id"]})],
            "{p}"
        );
    }
}

#[tokio::test]
async fn one_notifications_alerts_are_decided_one_after_the_other_in_one_batch() {
    let w = no_workers();
    w.playbook("scale", SCALE);
    one_batch_decides_in_order(&w.sqlite_url(), &w).await;
    let pg = PgDb::new().await;
    let w = no_workers();
    w.playbook("scale", SCALE);
    one_batch_decides_in_order(&pg.url, &w).await;
}

#[tokio::test]
async fn batches_of_one_size_record_queued_and_skipped_runs_alike_on_postgres() {
    // A statement is prepared once per text: a first batch whose run has no `finished_at`
    // (queued) must not fix the types a later batch of the same size (skipped) binds.
    let pg = PgDb::new().await;
    let w = no_workers();
    w.playbook("scale", SCALE);
    let server = w.serve(&["--store", &pg.url]);
    let starts = now();
    let mut outcomes = Vec::new();
    for i in 0..4 {
        let body = notification(vec![alert(
            json!({"alertname": "Backlog", "shard": i.to_string()}),
            &starts,
            None,
        )]);
        let (status, answer) = post_webhook(&server, &body).await;
        assert_eq!(status, 200, "{answer}");
        outcomes.push(answer["alerts"][0]["playbooks"][0]["outcome"].clone());
    }
    assert_eq!(outcomes, ["started", "started", "skipped", "skipped"]);
}

const COOL: &str = r#"name: cool
on:
  alerts:
    - alertname: Cool
guard: { concurrency: 10, cooldown: 1h }
steps:
  - id: reset
    runtime: { op: set_lock_ttl, ttl: 5m }
"#;

const HOURLY: &str = r#"name: hourly
guard: { concurrency: 10, max_runs_per_hour: 2 }
steps:
  - id: look
    sql: SELECT 1 AS one
"#;

const ONE: &str = r#"name: one
steps:
  - id: retry
    runtime: { op: dlq_retry }
"#;

#[tokio::test]
async fn cooldown_and_max_runs_per_hour_skip_with_their_reason() {
    let w = no_workers();
    w.playbook("cool", COOL);
    w.playbook("hourly", HOURLY);
    let url = w.sqlite_url();
    let server = w.serve(&["--store", &url]);
    // Cooldown per fingerprint: the same alert firing again (a new startsAt) is skipped; another
    // alert is not.
    let fire = |instance: &str, starts: &str| {
        notification(vec![alert(
            json!({"alertname": "Cool", "instance": instance}),
            starts,
            None,
        )])
    };
    let (_, first) = post_webhook(&server, &fire("x", "2026-01-01T00:00:00Z")).await;
    assert_eq!(
        first["alerts"][0]["playbooks"][0]["outcome"], "started",
        "{first}"
    );
    let (_, again) = post_webhook(&server, &fire("x", "2026-01-01T00:10:00Z")).await;
    let p = &again["alerts"][0]["playbooks"][0];
    assert_eq!(
        (p["outcome"].as_str(), p["guard"].as_str()),
        (Some("skipped"), Some("cooldown")),
        "{again}"
    );
    let reason = p["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("guard.cooldown: a run started within the last 1h for alert "),
        "{again}"
    );
    let (_, other) = post_webhook(&server, &fire("y", "2026-01-01T00:10:00Z")).await;
    assert_eq!(
        other["alerts"][0]["playbooks"][0]["outcome"], "started",
        "{other}"
    );
    let db = store(&url).await;
    let skipped = rows(
        &db,
        "SELECT playbook, error, command_id FROM runbook_runs WHERE status = 'skipped'",
    )
    .await;
    assert_eq!(
        skipped,
        [json!({"playbook": "cool", "error": reason, "command_id": null})]
    );

    // max_runs_per_hour through the API: the third is recorded skipped and answered 409.
    let runs_url = format!("{}/api/runs", server.base);
    for _ in 0..2 {
        let (status, body) =
            post_json(&runs_url, Some(OPERATOR), &json!({"playbook": "hourly"})).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (202, Some("queued")),
            "{body}"
        );
    }
    let (status, body) = post_json(&runs_url, Some(OPERATOR), &json!({"playbook": "hourly"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["status"], "skipped");
    let expected = format!(
        "run {} skipped: guard.max_runs_per_hour: 2 run(s) in the last hour (limit 2)",
        body["run_id"]
    );
    assert_eq!(body["error"]["message"], expected);
    let metrics = server.metrics().await;
    for line in [
        "runbook_guard_refusals_total{playbook=\"cool\",guard=\"cooldown\"} 1",
        "runbook_guard_refusals_total{playbook=\"hourly\",guard=\"max_runs_per_hour\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
}

#[tokio::test]
async fn runbook_run_is_guarded_and_force_is_audited() {
    let w = no_workers();
    w.playbook("one", ONE);
    let url = w.sqlite_url();
    let server = w.serve(&["--store", &url]);
    // `one` (default concurrency 1) has a queued run, so `runbook run one` is skipped.
    let (status, body) = post_json(
        &format!("{}/api/runs", server.base),
        Some(OPERATOR),
        &json!({"playbook": "one"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let out = w.run(&["--store", &url, "run", "one"]);
    assert_eq!(out.code, 1, "{out:?}");
    let reason =
        "skipped: guard.concurrency: 1 run(s) of this playbook already queued or running (limit 1)";
    assert!(out.stderr.contains(reason), "{out:?}");
    assert!(out.stderr.contains("--force"), "{out:?}");
    // --force runs it, with an audit record naming who.
    let out = w.run(&["--store", &url, "run", "one", "--force"]);
    assert_eq!(out.code, 0, "{out:?}");
    let db = store(&url).await;
    let forced = rows(
        &db,
        "SELECT actor, filter FROM runbook_audit WHERE op = 'run_forced'",
    )
    .await;
    assert_eq!(forced.len(), 1, "{forced:?}");
    assert!(
        forced[0]["actor"].as_str().unwrap().starts_with("cli:"),
        "{forced:?}"
    );
    let runs = rows(&db, "SELECT status, trigger FROM runbook_runs ORDER BY id").await;
    let statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["queued", "skipped", "succeeded"]);
}

#[tokio::test]
async fn the_pause_holds_only_changing_runs_and_alerts_are_still_recorded() {
    let w = no_workers();
    let url = w.sqlite_url();
    the_pause_holds(&w, &url).await;
}

#[tokio::test]
async fn the_pause_holds_only_changing_runs_and_alerts_are_still_recorded_on_postgres() {
    // On PostgreSQL the receiver reads the pause in the one statement that also reads the alert
    // keys, the open runs and the cooldowns (`store::admission`).
    let pg = PgDb::new().await;
    let w = no_workers();
    the_pause_holds(&w, &pg.url).await;
}

async fn the_pause_holds(w: &Workdir, url: &str) {
    w.playbook("one", ONE);
    w.playbook("hourly", HOURLY);
    let url = url.to_owned();
    let server = w.serve(&["--store", &url]);
    let out = w.run(&["--store", &url, "pause", "--reason", "database failover"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = w.run(&["--store", &url, "status"]);
    assert!(
        out.stdout.contains("PAUSED since") && out.stdout.contains("database failover"),
        "{out:?}"
    );
    let labels = json!({"alertname": "QueueDepthHigh", "instance": "p", "severity": "warning"});
    let (status, answer) =
        post_webhook(&server, &notification(vec![alert(labels, &now(), None)])).await;
    assert_eq!(status, 200, "{answer}");
    let outcomes: Vec<(&str, &str)> = answer["alerts"][0]["playbooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["playbook"].as_str().unwrap(),
                p["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [("fix-queue", "paused"), ("look-queue", "started")]
    );
    let reason = answer["alerts"][0]["playbooks"][0]["reason"]
        .as_str()
        .unwrap();
    assert!(
        reason.starts_with("runs are paused: database failover (by cli:"),
        "{answer}"
    );
    // The pause as the receiver read it is the pause as the store shows it.
    let (_, st) = get_json(&format!("{}/api/status", server.base), Some(OPERATOR)).await;
    let since = st["paused"]["since"].as_str().unwrap();
    assert!(
        reason.ends_with(&format!(" since {since}); `runbook resume` ends the pause")),
        "{reason} / {st}"
    );
    // The CLI too: a changing playbook is skipped, a read-only one runs.
    let out = w.run(&["--store", &url, "run", "one"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("runs are paused: database failover"),
        "{out:?}"
    );
    let out = w.run(&["--store", &url, "run", "hourly"]);
    assert_eq!(out.code, 0, "{out:?}");

    // The API: viewers may not; operators see the pause and end it.
    let (status, _) = post_empty(&format!("{}/api/resume", server.base), Some(VIEWER)).await;
    assert_eq!(status, 403);
    let (status, st) = get_json(&format!("{}/api/status", server.base), Some(OPERATOR)).await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["paused"]["reason"], "database failover");
    assert_eq!(st["runs"]["queued"], 1, "{st}");
    let (status, _) = post_empty(&format!("{}/api/resume", server.base), Some(OPERATOR)).await;
    assert_eq!(status, 200);
    let (_, st) = get_json(&format!("{}/api/status", server.base), Some(OPERATOR)).await;
    assert_eq!(st["paused"], Json::Null);
    let out = w.run(&["--store", &url, "run", "one"]);
    assert_eq!(out.code, 0, "resumed: {out:?}");
    let pause = format!("{}/api/pause", server.base);
    let (status, p) = post_json(&pause, Some(OPERATOR), &json!({"reason": "again"})).await;
    assert_eq!(
        (status, p["paused"]["by"].as_str()),
        (200, Some("api:ops")),
        "{p}"
    );
    let db = store(&url).await;
    let audit = rows(
        &db,
        "SELECT op FROM runbook_audit WHERE op IN ('pause', 'resume') ORDER BY id",
    )
    .await;
    assert_eq!(
        audit,
        [
            json!({"op": "pause"}),
            json!({"op": "resume"}),
            json!({"op": "pause"})
        ]
    );
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_json_error_each() {
    let w = no_workers();
    let url = w.sqlite_url();
    let server = w.serve(&["--store", &url]);
    let hook = format!("{}/api/webhooks/alertmanager", server.base);
    let body = notification(vec![alert(
        json!({"alertname": "QueueDepthHigh"}),
        &now(),
        None,
    )]);
    let (status, e) = post_json(&hook, None, &body).await;
    assert_eq!(status, 401, "{e}");
    assert_eq!(
        e["error"]["message"],
        "a bearer token (auth.receiver) is required"
    );
    let (status, e) = post_json(&hook, Some("wrong"), &body).await;
    assert_eq!(
        (status, e["error"]["message"].as_str()),
        (401, Some("wrong receiver token"))
    );
    let mut bad = body.clone();
    bad["alerts"][0]["startsAt"] = json!("yesterday");
    let (status, e) = post_json(&hook, Some(RECEIVER), &bad).await;
    assert_eq!(status, 400, "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("webhook body at `alerts[0].startsAt`: "),
        "{e}"
    );
    let big = notification(
        (0..60)
            .map(|i| {
                alert(
                    json!({"alertname": "QueueDepthHigh", "i": i.to_string()}),
                    &now(),
                    None,
                )
            })
            .collect(),
    );
    let (status, e) = post_json(&format!("{}/api/alerts", server.base), Some(RECEIVER), &big).await;
    assert_eq!(status, 413, "{e}");
    assert_eq!(e["error"]["status"], 413);
    let db = store(&url).await;
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) AS n FROM runbook_alert_notifications").await,
        0
    );
    let metrics = server.metrics().await;
    for outcome in [
        "unauthorized\"} 2",
        "bad_request\"} 1",
        "too_large\"} 1",
        "accepted\"} 0",
    ] {
        let line = format!("runbook_webhook_requests_total{{outcome=\"{outcome}");
        assert!(metrics.contains(&line), "{outcome}: {metrics}");
    }
}

#[tokio::test]
async fn an_unreachable_store_is_a_503_and_alertmanagers_retry_goes_in() {
    let w = no_workers();
    let pg = PgDb::new().await;
    let server = w.serve(&["--store", &pg.url]);
    let hook = format!("{}/api/webhooks/alertmanager", server.base);
    let body = notification(vec![alert(
        json!({"alertname": "QueueDepthHigh"}),
        &now(),
        None,
    )]);
    let admin = sqlx::PgPool::connect(&crate::util::pg_server())
        .await
        .unwrap();
    let name = pg.url.rsplit('/').next().unwrap().to_owned();
    let connections = |allow: bool| format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}");
    sqlx::query(&connections(false))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&admin)
        .await
        .unwrap();
    let (status, e) = post_json(&hook, Some(RECEIVER), &body).await;
    assert_eq!(status, 503, "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("store unavailable, nothing was recorded; send it again"),
        "{e}"
    );
    sqlx::query(&connections(true))
        .execute(&admin)
        .await
        .unwrap();
    let (status, e) = post_json(&hook, Some(RECEIVER), &body).await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["alerts"][0]["outcome"], "started", "{e}");
    let db = store(&pg.url).await;
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) AS n FROM runbook_alert_notifications").await,
        1
    );
    let metrics = server.metrics().await;
    for outcome in ["unavailable\"} 1", "accepted\"} 1"] {
        let line = format!("runbook_webhook_requests_total{{outcome=\"{outcome}");
        assert!(metrics.contains(&line), "{outcome}: {metrics}");
    }
}

#[tokio::test]
async fn the_receiver_is_closed_by_default_and_says_how_to_open_it() {
    let body = notification(vec![alert(
        json!({"alertname": "QueueDepthHigh"}),
        &now(),
        None,
    )]);
    let closed = Workdir::new();
    closed.playbook("look-queue", LOOK_QUEUE);
    let url = closed.sqlite_url();
    let server = closed.serve(&["--store", &url]);
    let (status, e) = post_json(
        &format!("{}/api/alerts", server.base),
        Some(RECEIVER),
        &body,
    )
    .await;
    assert_eq!(status, 401, "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("auth.receiver.token_env") && message.contains("insecure: true"),
        "{e}"
    );
    assert!(
        server.log().contains("alert receiver: closed"),
        "{}",
        server.log()
    );
    let open = Workdir::new();
    open.config("auth:\n  receiver: { insecure: true }\n");
    open.playbook("look-queue", LOOK_QUEUE);
    let url = open.sqlite_url();
    let server = open.serve(&["--store", &url]);
    let (status, e) = post_json(&format!("{}/api/alerts", server.base), None, &body).await;
    assert_eq!(status, 200, "{e}");
    assert!(
        server.log().contains("alert receiver: INSECURE"),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn alert_fire_posts_what_alertmanager_would_and_resolves_the_same_occurrence() {
    let w = no_workers();
    // The server listens where the config says, which is where `alert fire` sends by default.
    let listen = format!("127.0.0.1:{}", free_port());
    let config = CONFIG.replace(
        "max_body: 8KiB",
        &format!("max_body: 8KiB, listen: \"{listen}\""),
    );
    w.config(&format!("{config}  workers: false\n"));
    let url = w.sqlite_url();
    let server = w.serve_at(&["--store", &url], &listen);
    let hook = format!("{}/api/webhooks/alertmanager", server.base);
    let out = w.run(&[
        "--store",
        &url,
        "alert",
        "fire",
        "QueueDepthHigh",
        "--label",
        "instance=c",
        "--label",
        "severity=critical",
        "--annotation",
        "summary=deep",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("fix-queue: started run"), "{out:?}");
    assert!(out.stdout.contains("look-queue: started run"), "{out:?}");
    let out = w.run(&[
        "--store",
        &url,
        "alert",
        "fire",
        "QueueDepthHigh",
        "--label",
        "instance=c",
        "--label",
        "severity=critical",
        "--resolve",
        "--url",
        &hook,
        "-o",
        "json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let answer = out.json();
    let outcomes: Vec<&str> = answer["alerts"][0]["playbooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["started", "resolved_skip"], "{answer}");
    let db = store(&url).await;
    // One occurrence: the resolve kept the startsAt of the fire.
    let alerts = rows(&db, "SELECT status, labels FROM runbook_alerts").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["status"], "resolved");
    let kinds = rows(
        &db,
        "SELECT playbook, kind FROM runbook_alert_runs ORDER BY playbook, kind",
    )
    .await;
    assert_eq!(kinds.len(), 3, "{kinds:?}");
}

const WATCH: &str = r#"name: watch
on:
  alerts:
    - alertname: Watch
guard: { concurrency: 10 }
steps:
  - id: hold
    wait: 1500ms
  - id: seen
    assert:
      that: "alert.status == 'resolved'"
      message: "ended {{ alert.endsAt }}"
"#;

#[tokio::test]
async fn a_resolve_arriving_while_the_run_goes_on_is_visible_to_its_next_step() {
    let w = workdir();
    w.playbook("watch", WATCH);
    let url = w.sqlite_url();
    let server = w.serve(&["--store", &url]);
    let db = store(&url).await;
    let starts = now();
    let labels = json!({"alertname": "Watch", "instance": "w"});
    let (status, answer) = post_webhook(
        &server,
        &notification(vec![alert(labels.clone(), &starts, None)]),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    until_scalar(
        10,
        "the run to start",
        &db,
        "SELECT COUNT(*) AS n FROM runbook_runs WHERE status = 'running'",
        |n| n == 1,
    )
    .await;
    let ends = now();
    let (status, answer) = post_webhook(
        &server,
        &notification(vec![alert(labels, &starts, Some(&ends))]),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["alerts"][0]["outcome"], "resolved_skip", "{answer}");
    until_scalar(
        10,
        "the run to end",
        &db,
        "SELECT COUNT(*) AS n FROM runbook_runs WHERE finished_at IS NOT NULL",
        |n| n == 1,
    )
    .await;
    let run = rows(&db, "SELECT status, error FROM runbook_runs").await;
    assert_eq!(run[0]["status"], "succeeded", "{run:?}");
    let seen = messages(&db, "watch").await;
    assert!(seen[0].contains(&format!("ended {ends}")), "{seen:?}");
}

/// The silence for the alert being remediated: Alertmanager sends the alert, the run silences it
/// (matchers from the alert's labels), Alertmanager shows it suppressed while the run goes on, and
/// the silence is expired as the run ends, here by a failed verification. Its `endsAt` is bounded
/// by the playbook's timeout (5m), not the step's `for: 2h`.
#[tokio::test]
async fn a_run_silences_its_alert_in_alertmanager_until_the_run_ends() {
    let _one = ALERTMANAGERS.lock().await;
    let port = free_port();
    let am = Alertmanager::start(
        &format!("http://127.0.0.1:{port}/api/webhooks/alertmanager"),
        RECEIVER,
    )
    .await;
    let w = Workdir::new();
    w.config(&format!(
        "{CONFIG}alertmanager: {{ url: \"{}\" }}\n",
        am.base
    ));
    w.playbook(
        "mute-me",
        r#"name: mute-me
on:
  alerts:
    - alertname: MuteMe
timeout: 5m
steps:
  - id: mute
    silence: { for: 2h, comment: "fixing {{ alert.labels.instance }}" }
  - id: hold
    wait: 4s
  - id: verify
    assert: { that: "false", message: "the fix did not hold" }
"#,
    );
    let server = w.serve_at(&[], &format!("127.0.0.1:{port}"));
    let labels = json!({ "alertname": "MuteMe", "instance": "i1" });
    am.post(&json!([{ "labels": labels, "annotations": {}, "startsAt": now() }]))
        .await;

    let silences = format!("{}/api/v2/silences", am.base);
    let silence = eventually(20, "the run to silence its alert", || {
        let silences = silences.clone();
        async move {
            let (_, list) = get_json(&silences, None).await;
            list.as_array()?
                .iter()
                .find(|s| s["status"]["state"] == "active")
                .cloned()
        }
    })
    .await;
    assert_eq!(silence["createdBy"], "runbook", "{silence}");
    let comment = silence["comment"].as_str().unwrap();
    assert!(
        comment.contains("(mute-me): fixing i1; expires when the run ends"),
        "{silence}"
    );
    let mut matchers: Vec<(String, String, bool, bool)> = silence["matchers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["value"].as_str().unwrap().to_owned(),
                m["isRegex"].as_bool().unwrap(),
                m["isEqual"].as_bool().unwrap_or(true),
            )
        })
        .collect();
    matchers.sort();
    assert_eq!(
        matchers,
        [
            ("alertname".into(), "MuteMe".into(), false, true),
            ("instance".into(), "i1".into(), false, true)
        ]
    );
    let at = |k: &str| chrono::DateTime::parse_from_rfc3339(silence[k].as_str().unwrap()).unwrap();
    let length = at("endsAt") - at("startsAt");
    assert!(
        length <= chrono::Duration::minutes(5) && length > chrono::Duration::minutes(4),
        "the silence lasts {length}, not the run's 5m at most: {silence}"
    );
    // While it holds, Alertmanager suppresses the alert.
    let (_, alerts) = get_json(&format!("{}/api/v2/alerts", am.base), None).await;
    let ours = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == "MuteMe")
        .unwrap();
    assert_eq!(ours["status"]["state"], "suppressed", "{ours}");
    assert_eq!(ours["status"]["silencedBy"][0], silence["id"], "{ours}");

    // The run fails its verification, and its silence is expired as it ends.
    let db = store(&w.sqlite_url()).await;
    until_scalar(
        30,
        "the run to fail its verification",
        &db,
        "SELECT COUNT(*) FROM runbook_runs WHERE playbook = 'mute-me' AND status = 'failed'",
        |n| n == 1,
    )
    .await;
    let id = silence["id"].as_str().unwrap().to_owned();
    let one = format!("{}/api/v2/silence/{id}", am.base);
    let state = eventually(10, "the silence to be expired", || {
        let one = one.clone();
        async move {
            let (_, s) = get_json(&one, None).await;
            (s["status"]["state"] == "expired").then_some(s)
        }
    })
    .await;
    assert_eq!(state["id"], id.as_str());
    let recorded = rows(
        &db,
        "SELECT s.output FROM runbook_step_attempts s JOIN runbook_runs r ON r.id = s.run_id \
         WHERE r.playbook = 'mute-me' AND s.step_id = 'mute'",
    )
    .await;
    assert_eq!(recorded[0]["output"]["output"]["silence_id"], id.as_str());
    drop(server);
}

/// Admits every alert and only checks it is there.
const EVERY: &str = r#"name: every
on:
  alerts:
    - alertname: Every
guard: { concurrency: 100000 }
steps:
  - id: ok
    assert: "alert.labels.alertname == 'Every'"
"#;

/// Posts one notification per alert `from..to` of `every`, from `clients` clients at once.
async fn every_alerts(webhook: &str, starts: &str, from: usize, to: usize, clients: usize) {
    let next = Arc::new(AtomicUsize::new(from));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (next, webhook, starts) = (next.clone(), webhook.to_owned(), starts.to_owned());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= to {
                    break;
                }
                let labels = json!({"alertname": "Every", "n": i.to_string()});
                let body = notification(vec![alert(labels, &starts, None)]);
                let (status, answer) = post_json(&webhook, Some(RECEIVER), &body).await;
                assert_eq!(status, 200, "{answer}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

#[tokio::test]
async fn alerts_and_runs_are_found_by_index_after_their_tables_grew_under_a_running_server() {
    // Each batch of alerts looks up whether its occurrences already have runs and which are in
    // their cooldown (runbook_alert_runs, joined to runbook_runs). Those lookups once read whole
    // tables: prepared while the tables were small, they kept that plan (PostgreSQL keeps a
    // prepared statement's plan until the table is next analysed, a minute or more away), so
    // on a new store taking a burst every batch read every row before it. Here a running
    // server's statements are prepared on small tables, both tables then grow by 100,000 rows,
    // and 200 more alerts start 200 runs: no row is read by a whole-table scan (one such scan
    // per batch read 8.9 million rows here).
    const FILL: i64 = 100_000;
    const WARM: usize = 100;
    let pg = PgDb::new().await;
    let w = Workdir::new();
    w.config(CONFIG);
    w.playbook("every", EVERY);
    let mut server = w.serve(&["--store", &pg.url]);
    let webhook = format!("{}/api/webhooks/alertmanager", server.base);
    let starts = now();
    let db = store(&pg.url).await;
    let succeeded = "SELECT COUNT(*) AS n FROM runbook_runs WHERE status = 'succeeded'";
    // One at a time: each a batch of its own, so every connection the server uses prepares its
    // statements and runs them past the fifth time, when PostgreSQL settles on a plan.
    every_alerts(&webhook, &starts, 0, WARM, 1).await;
    until_scalar(60, "the first runs", &db, succeeded, |n| n == WARM as i64).await;
    filler_runs(&db, FILL).await;
    db.sql(
        &format!(
            "INSERT INTO runbook_alert_runs (playbook, fingerprint, starts_at, kind, run_id, decided_at) \
             SELECT 'filler', md5(i::text), '2026-01-01T00:00:00Z', 'firing', i, NOW() \
             FROM generate_series(1, {FILL}) AS i"
        ),
        vec![],
    )
    .await
    .unwrap();
    every_alerts(&webhook, &starts, WARM, WARM + 200, 8).await;
    until_scalar(60, "every run", &db, succeeded, |n| {
        n == FILL + WARM as i64 + 200
    })
    .await;
    // The server's connections end with it, and their statistics are written as they do.
    server.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for table in ["runbook_alert_runs", "runbook_runs"] {
        let read = seq_scanned(&db, table).await;
        assert!(
            read < FILL,
            "{table}: {read} rows read by whole-table scans for 260 alerts (one scan reads {FILL})"
        );
    }
}

/// Every alert of a notification starts a run, and each run sees the whole group as `alerts`.
const GROUP_PLAYBOOK: &str = r#"name: group-look
on:
  alerts:
    - alertname: GroupBig
guard: { concurrency: 100000 }
steps:
  - id: seen
    assert:
      that: "alerts | length == 300 and alerts[299].labels.n == '299'"
      message: "{{ alert.labels.n }} of {{ alerts | length }}"
"#;

/// A notification of 300 alerts that all start runs stores its group once: the runs' queue
/// commands refer to it instead of each carrying all 300 (300 × 300 alerts, and a 1 MiB
/// notification of 3,000 alerts wrote gigabytes), and every run still reads the 300.
async fn a_group_is_stored_once(url: &str) {
    let w = Workdir::new();
    w.config(&CONFIG.replace("max_body: 8KiB", "max_body: 1MiB"));
    w.playbook("group-look", GROUP_PLAYBOOK);
    let server = w.serve(&["--store", url]);
    let starts = now();
    let alerts = (0..300)
        .map(|n| {
            alert(
                json!({ "alertname": "GroupBig", "n": n.to_string() }),
                &starts,
                None,
            )
        })
        .collect();
    let (status, answer) = post_webhook(&server, &notification(alerts)).await;
    assert_eq!(status, 200, "{answer}");
    let started = answer["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["outcome"] == "started")
        .count();
    assert_eq!(started, 300, "{answer}");
    let db = store(url).await;
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) AS n FROM runbook_alert_groups").await,
        1
    );
    // Each command carries its own alert and the group's hash: a kilobyte or so, where the
    // group itself is some 80 kB.
    let payloads = rows(
        &db,
        "SELECT payload FROM command_queue WHERE command_type = 'runbook.run'",
    )
    .await;
    assert_eq!(payloads.len(), 300);
    for p in &payloads {
        let text = p["payload"].to_string();
        assert!(text.len() < 2_000, "{text}");
        assert!(text.contains("alerts_ref"), "{text}");
    }
    until_scalar(
        120,
        "every run",
        &db,
        "SELECT COUNT(*) AS n FROM runbook_runs WHERE status IN ('succeeded', 'failed')",
        |n| n == 300,
    )
    .await;
    let failed = rows(
        &db,
        "SELECT a.error FROM runbook_step_attempts a JOIN runbook_runs r ON r.id = a.run_id \
         WHERE r.status <> 'succeeded' LIMIT 3",
    )
    .await;
    assert!(failed.is_empty(), "{failed:?}");
    let seen = messages(&db, "group-look").await;
    assert_eq!(seen.len(), 300);
    assert!(seen.iter().all(|m| m.contains(" of 300")), "{seen:?}");
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) AS n FROM runbook_runs WHERE status = 'succeeded'"
        )
        .await,
        300
    );
}

#[tokio::test]
async fn a_group_is_stored_once_on_sqlite() {
    let w = Workdir::new();
    a_group_is_stored_once(&w.sqlite_url()).await;
}

#[tokio::test]
async fn a_group_is_stored_once_on_postgres() {
    let pg = PgDb::new().await;
    a_group_is_stored_once(&pg.url).await;
}

/// Peak resident memory of a process, from /proc, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

/// Twelve notifications of 3,000 alerts each (about 0.9 MB apiece, under a 1 MiB `max_body`)
/// posted at once are all recorded, each alert with its run, and the server's memory stays
/// bounded: a notification in hand costs some 80 times its body, so the receiver takes 2 MiB of
/// bodies at a time and the others wait (without that bound this debug build peaked at 652 MiB).
#[tokio::test]
async fn big_notifications_at_once_are_taken_a_few_at_a_time() {
    let w = Workdir::new();
    w.config(
        &CONFIG
            .replace("max_body: 8KiB", "max_body: 1MiB")
            .replace("poll_interval: 50ms", "workers: false"),
    );
    w.playbook(
        "big",
        "name: big\non:\n  alerts:\n    - alertname: BigNotification\n\
         guard: { concurrency: 1000000 }\nsteps:\n  - id: ok\n    assert: 'true'\n",
    );
    let url = w.sqlite_url();
    let server = w.serve(&["--store", &url]);
    let starts = now();
    let bodies: Vec<Json> = (0..12)
        .map(|k| {
            let alerts = (0..3000)
                .map(|n| {
                    let labels = json!({ "alertname": "BigNotification", "k": k.to_string(),
                        "n": n.to_string(), "instance": format!("host-{n}:9100") });
                    alert(labels, &starts, None)
                })
                .collect();
            notification(alerts)
        })
        .collect();
    assert!(bodies.iter().all(|b| b.to_string().len() < 1024 * 1024));
    let posts = bodies.iter().map(|b| post_webhook(&server, b));
    for (status, answer) in futures::future::join_all(posts).await {
        assert_eq!(status, 200, "{answer}");
        let alerts = answer["alerts"].as_array().unwrap();
        assert_eq!(alerts.len(), 3000);
        assert!(alerts.iter().all(|a| a["outcome"] == "started"));
    }
    let db = store(&url).await;
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) AS n FROM runbook_runs WHERE status = 'queued'"
        )
        .await,
        36_000
    );
    let peak = peak_rss_mib(server.child.id());
    assert!(peak < 400, "runbook serve peaked at {peak} MiB");
}
