//! The closed loop, end to end: an incident is created on the streaming runtime, a real Prometheus
//! scrapes `runbook serve`'s `/metrics` and evaluates the repository's alert rules (their `for:` and
//! ranges shortened), a real Alertmanager posts the alert to the server's receiver, the shipped
//! playbook (its waits shortened by params the test's config sets) diagnoses, silences its alert, remediates and verifies, the metric
//! recovers and the alert resolves. `promtool test rules` keeps testing the rules as they are.
//!
//! What is asserted is what an on-call engineer checks: the run's status and steps, the metric back
//! under its threshold in Prometheus, the alert gone from Prometheus's and Alertmanager's APIs (not
//! the webhook: Alertmanager sends no resolved notification for a silenced alert), and one run per
//! incident.

mod harness;

use std::time::Duration;

use serde_json::json;

use crate::services::MONITORING;
use crate::util::{eventually, rows, scalar, until_scalar};
use harness::{assert_silenced_then_expired, ran, skipped, statuses, step, steps, Loop};

/// Queue backlog: a producer outruns three workers, the depth passes 1000, StreamingQueueDepthHigh
/// fires, queue-backlog silences it, doubles workerConcurrency and waits for the depth; the depth
/// falls under 1000 while the producer goes on, the alert resolves, one run tells the story.
#[tokio::test]
async fn a_queue_backlog_fires_scales_the_workers_recovers_and_resolves() {
    let _one = MONITORING.lock().await;
    // Each command takes 200 ms; batches of 12: three workers finish about 14 a second, six about 26.
    let mut l = Loop::start(
        &[(
            "queue-backlog",
            &[("poll_every", "1s"), ("poll_within", "50s")],
        )],
        "  workerConcurrency: 3\n  workerBatchSize: 12\n  handlers:\n    demo.slow: { simulate: { latency: 200ms } }\n",
    )
    .await;
    // The incident: 1,080 commands at once, then a steady 17 a second, more than three workers do.
    let burst = l.w.run(&[
        "queue",
        "load",
        "--type",
        "demo.slow",
        "--rate",
        "1080/s",
        "--duration",
        "1s",
        "--entities",
        "1000000",
    ]);
    assert_eq!(burst.code, 0, "{burst:?}");
    l.load(&[
        "--type",
        "demo.slow",
        "--rate",
        "17/s",
        "--duration",
        "2m",
        "--entities",
        "1000000",
    ]);

    let labels = l.fires("StreamingQueueDepthHigh", 20).await;
    assert_eq!(labels["severity"], "warning", "{labels}");
    let id = l.run_of("queue-backlog", 15).await;
    // While the run works, Alertmanager holds the alert silenced by it.
    let silenced = eventually(15, "the alert to be silenced by the run", || async {
        let s = l.silence_of(id).await?;
        let held = l.am.alerts().await.into_iter().find(|a| {
            a["labels"]["alertname"] == "StreamingQueueDepthHigh"
                && a["status"]["state"] == "suppressed"
                && a["status"]["silencedBy"][0] == s["id"]
        })?;
        Some((s, held))
    })
    .await;
    assert!(
        silenced.0["comment"]
            .as_str()
            .unwrap()
            .contains(&format!("runbook run {id} (queue-backlog)")),
        "{}",
        silenced.0
    );

    let shown = l.finished(id, 60).await;
    let st = steps(&shown);
    assert_eq!(
        shown["status"],
        "succeeded",
        "{:?}\n{shown:#}",
        statuses(&st)
    );
    assert_eq!(
        ran(&st),
        [
            ("depth_by_priority", "succeeded"),
            ("stuck_count", "succeeded"),
            ("silence", "succeeded"),
            ("stuck", "succeeded"),
            ("scale", "succeeded"),
            ("verify", "succeeded"),
            ("depth_recovered", "succeeded"),
            ("report", "succeeded"),
        ]
    );
    assert!(skipped(&st, "retry"), "{:?}", statuses(&st));
    // What was found: a real backlog, and nothing stuck for an hour (so no DLQ retry).
    let found: i64 = step(&st, "depth_by_priority")["output"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["count"].as_i64().unwrap())
        .sum();
    assert!(found > 1000, "{found}");
    assert_eq!(step(&st, "stuck_count")["output"]["rows"][0]["n"], 0);
    // What was changed, and the verification.
    let scale = &step(&st, "scale")["output"]["output"];
    assert_eq!(scale["before"]["workerConcurrency"], 3, "{scale}");
    assert_eq!(scale["after"]["workerConcurrency"], 6, "{scale}");
    let after = step(&st, "verify")["output"]["rows"][0]["n"]
        .as_i64()
        .unwrap();
    assert!(after < 1000, "{after}");
    let report = l.inbox.texts("ops");
    assert!(
        report.len() == 1 && report[0].contains("workerConcurrency 3 -> 6"),
        "{report:?}"
    );
    assert_eq!(
        rows(
            &l.db,
            "SELECT op, actor FROM runbook_audit WHERE op = 'scale_workers'"
        )
        .await
        .len(),
        1
    );

    // The metric recovers and the alert resolves, though the producer goes on.
    l.resolves("StreamingQueueDepthHigh", 20).await;
    // The depth Prometheus saw when the alert resolved: the lowest of the last two minutes, since
    // the producer goes on adding commands and a later sample may be back above the threshold.
    let depth = l
        .prom
        .value("min_over_time(sum(max without(instance) (core_stream_cmd_queue_depth))[2m:1s])")
        .await
        .unwrap();
    // The rule fires above 1000 (`> 1000`): at or under it is recovered.
    assert!(depth <= 1000.0, "depth {depth}");
    assert_silenced_then_expired(&l, id, "StreamingQueueDepthHigh").await;
    assert_eq!(
        l.runs().await,
        [("queue-backlog".to_owned(), "succeeded".to_owned())]
    );
    assert!(l.inbox.texts("oncall").is_empty());
}

/// DLQ with transient errors: commands that timed out or lost the network sit in the DLQ, their
/// handler now works; StreamingDLQMessagesDetected fires, dlq-rate silences it, retries both
/// transient types, the commands complete, the DLQ empties, the alert resolves.
#[tokio::test]
async fn transient_dlq_failures_fire_are_retried_and_the_alert_resolves() {
    let _one = MONITORING.lock().await;
    let l = Loop::start(
        &[("dlq-rate", &[("poll_every", "1s")])],
        "  handlers:\n    user.update: { noop: {} }\n",
    )
    .await;
    l.db.sql(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40) \
         INSERT INTO command_queue (entity, entity_id, command_type, status, attempts, error_type, error_message) \
         SELECT 'user', 'u' || i, 'user.update', 'dlq', 5, \
                CASE WHEN i <= 30 THEN 'TimeoutException' ELSE 'NetworkException' END, \
                CASE WHEN i <= 30 THEN 'backend timed out after 10s' ELSE 'connection reset' END \
         FROM n",
        vec![],
    )
    .await
    .unwrap();

    l.fires("StreamingDLQMessagesDetected", 20).await;
    let id = l.run_of("dlq-rate", 15).await;
    let shown = l.finished(id, 30).await;
    let st = steps(&shown);
    assert_eq!(
        shown["status"],
        "succeeded",
        "{:?}\n{shown:#}",
        statuses(&st)
    );
    assert_eq!(step(&st, "silence")["status"], "succeeded");
    assert!(skipped(&st, "approval"), "{:?}", statuses(&st));
    assert!(skipped(&st, "cleanup_approval"), "{:?}", statuses(&st));
    let by_type = &step(&st, "by_type")["output"]["rows"];
    assert_eq!(
        by_type,
        &json!([
            { "error_type": "TimeoutException", "count": 30 },
            { "error_type": "NetworkException", "count": 10 }
        ])
    );
    let retried: Vec<i64> = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step_id"] == "retry_transient")
        .map(|s| s["output"]["output"]["retried"].as_i64().unwrap())
        .collect();
    assert_eq!(retried, [30, 10]);
    // The run followed the 40 retried commands until none was in flight: all completed.
    let polls: Vec<&serde_json::Value> = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step_id"] == "verify_retry")
        .collect();
    let last = &polls.last().expect("verify_retry ran")["output"]["output"];
    assert_eq!(
        (
            &last["total"],
            &last["completed"],
            &last["dlq"],
            &last["in_flight"]
        ),
        (&json!(40), &json!(40), &json!(0), &json!(0)),
        "{last}"
    );
    assert_eq!(step(&st, "retry_held")["status"], "succeeded");
    let report = l.inbox.texts("ops");
    assert!(
        report.iter().any(|t| t.contains("Left in the DLQ: 0")),
        "{report:?}"
    );
    assert!(
        report
            .iter()
            .any(|t| t.contains("Retried: 30 + 10 (40 completed, 0 failed again)")),
        "{report:?}"
    );

    // The retried commands complete; the DLQ is empty and stays so.
    until_scalar(
        15,
        "the retried commands to complete",
        &l.db,
        "SELECT COUNT(*) FROM command_queue WHERE command_type = 'user.update' AND status = 'completed'",
        |n| n == 40,
    )
    .await;
    l.resolves("StreamingDLQMessagesDetected", 20).await;
    assert_eq!(l.prom.value("sum(core_stream_dlq_size)").await, Some(0.0));
    assert_eq!(
        scalar(
            &l.db,
            "SELECT COUNT(*) FROM command_queue WHERE status = 'dlq'"
        )
        .await,
        0
    );
    assert_silenced_then_expired(&l, id, "StreamingDLQMessagesDetected").await;
    assert_eq!(
        l.runs().await,
        [("dlq-rate".to_owned(), "succeeded".to_owned())]
    );
}

/// Stale locks: 30 work-state locks left `updating` an hour ago by a worker that is gone. Commands
/// for 12 of their entities take them over, which counts 12 lock expiries: StreamingLocksExpiring
/// fires, lock-expiry releases the 18 left and verifies; the next commands on those entities run
/// without a takeover (the expiry count stays), and the alert resolves.
#[tokio::test]
async fn stale_locks_fire_lock_expiry_releases_them_and_no_more_expire() {
    let _one = MONITORING.lock().await;
    let l = Loop::start(
        &[(
            "lock-expiry",
            &[("poll_every", "1s"), ("poll_within", "15s")],
        )],
        "  handlers:\n    user.update: { noop: {} }\n",
    )
    .await;
    l.db.sql(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 29) \
         INSERT INTO work_state (entity, entity_id, state, locked_at, locked_by) \
         SELECT 'user', 'u' || i, 'updating', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour'), \
                'worker-gone-7f3a' FROM n",
        vec![],
    )
    .await
    .unwrap();
    let enqueue = |from: i64, to: i64| {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i < {to}) \
             INSERT INTO command_queue (entity, entity_id, command_type) \
             SELECT 'user', 'u' || i, 'user.update' FROM n"
        )
    };
    l.db.sql(&enqueue(0, 11), vec![]).await.unwrap();

    l.fires("StreamingLocksExpiring", 20).await;
    assert_eq!(
        l.prom.value("sum(core_stream_lock_expiries_total)").await,
        Some(12.0)
    );
    let id = l.run_of("lock-expiry", 15).await;
    let shown = l.finished(id, 30).await;
    let st = steps(&shown);
    assert_eq!(
        shown["status"],
        "succeeded",
        "{:?}\n{shown:#}",
        statuses(&st)
    );
    assert_eq!(
        ran(&st),
        [
            ("held", "succeeded"),
            ("slow_ops", "succeeded"),
            ("by_entity", "succeeded"),
            ("outliving", "succeeded"),
            ("orphaned", "succeeded"),
            ("silence", "succeeded"),
            ("release", "succeeded"),
            ("verify_release", "succeeded"),
            ("report", "succeeded"),
        ]
    );
    assert!(skipped(&st, "raise_ttl"), "{:?}", statuses(&st));
    assert_eq!(step(&st, "held")["output"]["rows"][0]["n"], 18);
    assert_eq!(step(&st, "orphaned")["output"]["rows"][0]["n"], 18);
    assert_eq!(step(&st, "release")["output"]["output"]["released"], 18);
    assert_eq!(step(&st, "verify_release")["output"]["rows"][0]["n"], 0);
    assert_eq!(
        scalar(
            &l.db,
            "SELECT COUNT(*) FROM work_state WHERE locked_by = 'worker-gone-7f3a'"
        )
        .await,
        0
    );
    let report = l.inbox.texts("ops");
    assert!(
        report.len() == 1 && report[0].contains("18 whose holder is gone (18 released)"),
        "{report:?}"
    );

    // The other 18 entities' commands now run without taking a lock over.
    l.db.sql(&enqueue(12, 29), vec![]).await.unwrap();
    until_scalar(
        15,
        "every command to complete",
        &l.db,
        "SELECT COUNT(*) FROM command_queue WHERE command_type = 'user.update' AND status = 'completed'",
        |n| n == 30,
    )
    .await;
    l.resolves("StreamingLocksExpiring", 40).await;
    assert_eq!(
        l.prom.value("sum(core_stream_lock_expiries_total)").await,
        Some(12.0)
    );
    assert_silenced_then_expired(&l, id, "StreamingLocksExpiring").await;
    assert_eq!(
        l.runs().await,
        [("lock-expiry".to_owned(), "succeeded".to_owned())]
    );
}

/// Validation errors: commands that would fail again sit in the DLQ beside transient ones.
/// dlq-rate retries the transient ones, pages ops about the rest and waits for a person; the alert
/// is not silenced and keeps firing. A person approves the cleanup; the DLQ empties and the alert
/// resolves.
#[tokio::test]
async fn validation_errors_keep_the_alert_until_a_person_approves_the_cleanup() {
    let _one = MONITORING.lock().await;
    let l = Loop::start(
        &[("dlq-rate", &[("poll_every", "1s")])],
        "  handlers:\n    user.update: { noop: {} }\n",
    )
    .await;
    l.db.sql(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) \
         INSERT INTO command_queue (entity, entity_id, command_type, status, attempts, error_type, error_message) \
         SELECT 'user', 'u' || i, 'user.update', 'dlq', CASE WHEN i <= 6 THEN 1 ELSE 5 END, \
                CASE WHEN i <= 6 THEN 'ValidationException' ELSE 'TimeoutException' END, \
                CASE WHEN i <= 6 THEN 'email missing' ELSE 'backend timed out after 10s' END \
         FROM n",
        vec![],
    )
    .await
    .unwrap();

    l.fires("StreamingDLQMessagesDetected", 20).await;
    let id = l.run_of("dlq-rate", 15).await;
    until_scalar(
        20,
        "the run to wait for a person",
        &l.db,
        &format!("SELECT COUNT(*) FROM runbook_runs WHERE id = {id} AND waiting_step = 'cleanup_approval'"),
        |n| n == 1,
    )
    .await;
    // The page: what is wrong, and what to run.
    let asked = eventually(10, "ops to be asked", || async {
        let texts = l.inbox.texts("ops");
        texts
            .iter()
            .find(|t| t.contains(&format!("runbook runs approve {id}")))
            .cloned()
    })
    .await;
    assert!(
        asked.contains("delete the 6 ValidationException"),
        "{asked}"
    );
    assert!(
        l.inbox
            .texts("ops")
            .iter()
            .any(|t| t.contains("6 ValidationException command(s) in the DLQ were NOT retried")),
        "{:?}",
        l.inbox.texts("ops")
    );
    // The seed's level 2: the platform team hears that the code needs a fix.
    assert!(
        l.inbox
            .texts("platform")
            .iter()
            .any(|t| t.contains("6 ValidationException command(s) in the DLQ need a fix")),
        "{:?}",
        l.inbox.texts("platform")
    );
    // The transient ones were retried; the alert is neither silenced nor resolved while the run
    // waits for the person.
    until_scalar(
        15,
        "the retried commands to complete",
        &l.db,
        "SELECT COUNT(*) FROM command_queue WHERE status = 'completed' AND command_type = 'user.update'",
        |n| n == 4,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(l.silence_of(id).await.is_none());
    let held = l.am.alerts().await;
    let ours = held
        .iter()
        .find(|a| a["labels"]["alertname"] == "StreamingDLQMessagesDetected")
        .unwrap_or_else(|| panic!("the alert is no longer in Alertmanager: {held:?}"));
    assert_eq!(ours["status"]["state"], "active", "{ours}");
    l.fires("StreamingDLQMessagesDetected", 1).await;
    assert_eq!(l.prom.value("sum(core_stream_dlq_size)").await, Some(6.0));

    // The person approves.
    let approved =
        l.w.run(&["runs", "approve", &id.to_string(), "--actor", "carol"]);
    assert_eq!(approved.code, 0, "{approved:?}");
    let shown = l.finished(id, 20).await;
    let st = steps(&shown);
    assert_eq!(
        shown["status"],
        "succeeded",
        "{:?}\n{shown:#}",
        statuses(&st)
    );
    assert!(skipped(&st, "silence"), "{:?}", statuses(&st));
    assert_eq!(step(&st, "cleanup_approval")["status"], "succeeded");
    assert_eq!(
        step(&st, "cleanup_validation")["output"]["output"]["deleted"],
        6
    );
    let audit = rows(
        &l.db,
        "SELECT actor, filter, rows FROM runbook_audit WHERE op = 'dlq_cleanup'",
    )
    .await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["rows"], 6);
    assert!(
        audit[0]["filter"]
            .to_string()
            .contains("ValidationException"),
        "{audit:?}"
    );
    l.resolves("StreamingDLQMessagesDetected", 20).await;
    assert_eq!(l.prom.value("sum(core_stream_dlq_size)").await, Some(0.0));
    assert_eq!(
        l.runs().await,
        [("dlq-rate".to_owned(), "succeeded".to_owned())]
    );
}

/// A backlog the run cannot help: workers already at max_concurrency and nothing stuck. The run
/// changes nothing, so it leaves the alert unsilenced (a person is paged at once), its verification
/// fails, and it escalates to `oncall`; Prometheus then fires RunbookPlaybookFailing as well.
#[tokio::test]
async fn a_backlog_the_run_cannot_help_is_not_silenced_and_escalates() {
    let _one = MONITORING.lock().await;
    // Twelve workers (the cap) at 2 s a command: about 6 a second.
    let l = Loop::start(
        &[(
            "queue-backlog",
            &[("poll_every", "1s"), ("poll_within", "4s")],
        )],
        "  workerConcurrency: 12\n  workerBatchSize: 12\n  handlers:\n    demo.slow: { simulate: { latency: 2s } }\n",
    )
    .await;
    let burst = l.w.run(&[
        "queue",
        "load",
        "--type",
        "demo.slow",
        "--rate",
        "1300/s",
        "--duration",
        "1s",
        "--entities",
        "1000000",
    ]);
    assert_eq!(burst.code, 0, "{burst:?}");

    l.fires("StreamingQueueDepthHigh", 20).await;
    let id = l.run_of("queue-backlog", 15).await;
    let shown = l.finished(id, 30).await;
    let st = steps(&shown);
    assert_eq!(shown["status"], "failed", "{:?}\n{shown:#}", statuses(&st));
    // The depth did not fall and `scale_backend` is not configured: the run fails saying what a
    // person should run.
    assert_eq!(shown["failed_step"], "depth_recovered", "{shown:#}");
    assert!(
        shown["error"]
            .as_str()
            .is_some_and(|e| e.contains("docker compose up -d --scale backend=3")),
        "{shown:#}"
    );
    assert!(skipped(&st, "silence"), "{:?}", statuses(&st));
    assert!(skipped(&st, "scale"), "{:?}", statuses(&st));
    assert!(l.silence_of(id).await.is_none());
    let paged = eventually(10, "oncall to be paged", || async {
        l.inbox.texts("oncall").into_iter().next()
    })
    .await;
    assert!(
        paged.contains("queue-backlog failed at step depth_recovered"),
        "{paged}"
    );
    // The alert was never silenced: Alertmanager shows it active.
    let held = l.am.alerts().await;
    let ours = held
        .iter()
        .find(|a| a["labels"]["alertname"] == "StreamingQueueDepthHigh")
        .unwrap_or_else(|| panic!("{held:?}"));
    assert_eq!(ours["status"]["state"], "active", "{ours}");
    let failing = l.fires("RunbookPlaybookFailing", 15).await;
    assert_eq!(failing["playbook"], "queue-backlog", "{failing}");
    assert_eq!(
        l.runs().await,
        [("queue-backlog".to_owned(), "failed".to_owned())]
    );
}
