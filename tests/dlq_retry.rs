//! Issue 10: dlq-rate follows the commands it retried until each completes or fails again, on the
//! real runtime (a `runbook serve` whose workers process them); a retry that fails again fails the
//! run, says how many came back and pages on-call, instead of reporting success.

use crate::util::{scalar, store, until_scalar, Workdir};

const CONFIG: &str = r#"
notify:
  ops: { webhook: { url_env: TEST_UNSET_OPS_URL, format: slack } }
  oncall: { pagerduty: { routing_key_env: TEST_UNSET_PD_KEY } }
  platform: { webhook: { url_env: TEST_UNSET_PLATFORM_URL, format: slack } }
streaming:
  workerConcurrency: 2
  workerBatchSize: 10
  maxRetries: 1
  maxBackoffMs: 50
  lease: 5s
  poll_interval: 50ms
  handlers:
    user.update: { noop: {} }
    order.pay: { simulate: { error_rate: 1.0, error_type: NetworkException } }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_dlq_retry_is_followed_and_one_that_fails_again_fails_the_run() {
    let w = Workdir::new();
    w.config(CONFIG);
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/runbooks/dlq-rate.yaml");
    w.playbook("dlq-rate", &std::fs::read_to_string(shipped).unwrap());
    let url = w.sqlite_url();
    w.create_store(&url);
    let db = store(&url).await;
    // Three user updates that timed out once (the backend was slow; it is fine now) and two
    // payments whose backend is down.
    db.sql(
        "INSERT INTO command_queue (entity, entity_id, command_type, status, error_type, error_message) VALUES \
         ('user', 'u1', 'user.update', 'dlq', 'TimeoutException', 'timed out'), \
         ('user', 'u2', 'user.update', 'dlq', 'TimeoutException', 'timed out'), \
         ('user', 'u3', 'user.update', 'dlq', 'TimeoutException', 'timed out'), \
         ('order', 'o1', 'order.pay', 'dlq', 'NetworkException', 'connection refused'), \
         ('order', 'o2', 'order.pay', 'dlq', 'NetworkException', 'connection refused')",
        vec![],
    )
    .await
    .unwrap();
    let _server = w.serve(&["--store", &url]);

    let run_url = url.clone();
    let (out, _w) = tokio::task::spawn_blocking(move || {
        let out = w.run(&[
            "--store",
            &run_url,
            "run",
            "dlq-rate",
            // The policy the config already has: nothing to raise.
            "--param",
            "max_retries=1",
            "--param",
            "max_backoff_ms=50",
            "--output",
            "json",
        ]);
        (out, w)
    })
    .await
    .unwrap();
    let run = out.run();
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["failed_step"], "retry_held", "{run:#}");
    let text = run.to_string();
    assert!(
        text.contains(
            "2 of 5 retried TimeoutException/NetworkException command(s) failed again and are back in the DLQ (3 completed)"
        ),
        "{run:#}"
    );
    // The escalation: on_failure pages on-call with it.
    assert!(
        text.contains("dlq-rate failed at step retry_held: 2 of 5 retried"),
        "{run:#}"
    );
    // What the runtime says: the user updates completed, the payments are back in the DLQ.
    until_scalar(
        10,
        "the retried commands settled",
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE status IN ('pending', 'processing') AND entity IN ('user', 'order')",
        |n| n == 0,
    )
    .await;
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE status = 'completed' AND entity = 'user'"
        )
        .await,
        3
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE status = 'dlq' AND entity = 'order'"
        )
        .await,
        2
    );
    db.close().await;
}
