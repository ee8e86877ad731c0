//! Every action a role may take, and the ones it may not: approve, cancel, re-run, the DLQ,
//! the pause, plans.

use axum::http::StatusCode;
use serde_json::json;

use super::*;
use crate::{status::RunStatus, store::runs};

#[tokio::test]
async fn an_operator_approves_with_a_comment_a_viewer_cannot() {
    let f = fixture().await;
    let id = waiting_run(&f.store).await;
    let viewer = f.sign_in(VIEWER).await;
    let csrf = f.csrf(&viewer).await;
    let a = f
        .post(
            &format!("/ui/runs/{id}/approve"),
            &viewer,
            &format!("csrf={csrf}&decision=approve"),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let ops = f.sign_in(OPERATOR).await;
    let csrf = f.csrf(&ops).await;
    let a = f
        .post(
            &format!("/ui/runs/{id}/approve"),
            &ops,
            &format!("csrf={csrf}&decision=approve&comment=looks+right&back=%2Fui%2Fapprovals"),
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    assert_eq!(a.location(), "/ui/approvals");
    let rows = runs::approvals(&f.store, id).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["decision"], "approved");
    assert_eq!(rows[0]["actor"], "console:ops");
    assert_eq!(rows[0]["comment"], "looks right");
    assert_eq!(
        f.scalar("SELECT actor FROM runbook_audit WHERE op = 'run_approved'")
            .await,
        json!("console:ops")
    );
    // A second answer is a conflict that names the first.
    let a = f
        .post(
            &format!("/ui/runs/{id}/approve"),
            &ops,
            &format!("csrf={csrf}&decision=reject"),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert!(a.text.contains("console:ops"), "{}", a.text);
}

#[tokio::test]
async fn an_operator_cancels_and_reruns_with_edited_inputs() {
    let f = fixture().await;
    let id = runs::create_run(
        &f.store,
        runs::NewRun {
            playbook: "hello",
            trigger: json!({ "kind": "api", "by": "ops" }),
            params: json!({ "who": "ada" }),
            dry_run: false,
            parent_id: None,
            command_id: None,
            status: RunStatus::Running,
            version: None,
        },
    )
    .await
    .unwrap();
    let ops = f.sign_in(OPERATOR).await;
    let csrf = f.csrf(&ops).await;
    let a = f
        .post(
            &format!("/ui/runs/{id}/cancel"),
            &ops,
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    assert_eq!(
        f.scalar(&format!("SELECT status FROM runbook_runs WHERE id = {id}"))
            .await,
        json!("cancel_requested")
    );
    // Cancelling again: it is not running any more.
    let a = f
        .post(
            &format!("/ui/runs/{id}/cancel"),
            &ops,
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    // The run ends; its guard (one run at a time) lets the re-run in.
    runs::finish_run(&f.store, id, RunStatus::Cancelled, None, None)
        .await
        .unwrap();
    // The re-run form carries the recorded input.
    let form = f.get(&format!("/ui/runs/{id}/rerun"), Some(&ops)).await;
    assert!(
        form.text.contains("name=\"param.who\" value=\"ada\""),
        "{}",
        form.text
    );
    let a = f
        .post(
            &format!("/ui/runs/{id}/rerun"),
            &ops,
            &format!("csrf={csrf}&param.who=grace"),
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    let new_id: i64 = a
        .location()
        .trim_start_matches("/ui/runs/")
        .parse()
        .unwrap();
    let run = runs::get_run(&f.store, new_id).await.unwrap().unwrap();
    assert_eq!(run["params"]["who"], "grace");
    assert_eq!(run["trigger"]["rerun_of"], id);
    assert_eq!(run["trigger"]["by"], "ops");
    assert_eq!(run["status"], "queued");
    // A bad param is named.
    let a = f
        .post(
            &format!("/ui/runs/{id}/rerun"),
            &ops,
            &format!("csrf={csrf}&param.nope=1"),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.text.contains("nope"), "{}", a.text);
}

#[tokio::test]
async fn a_dlq_bulk_retry_shows_the_count_then_acts_on_confirmation() {
    let f = fixture().await;
    dlq_entries(&f.store).await;
    let ops = f.sign_in(OPERATOR).await;
    let csrf = f.csrf(&ops).await;
    let form = format!("csrf={csrf}&errorType=TimeoutException&entity=user");
    assert_eq!(
        f.post("/ui/dlq/retry", &ops, &form).await.status,
        StatusCode::FORBIDDEN
    );
    let admin = f.sign_in(ADMIN).await;
    let csrf = f.csrf(&admin).await;
    // The group's page masks the sensitive field.
    let page = f
        .get(
            "/ui/dlq?errorType=TimeoutException&entity=user",
            Some(&admin),
        )
        .await
        .text;
    assert!(!page.contains("ada@example.com"), "{page}");
    assert!(page.contains("TimeoutException"));
    let form = format!("csrf={csrf}&errorType=TimeoutException&entity=user");
    let preview = f.post("/ui/dlq/retry", &admin, &form).await;
    assert_eq!(preview.status, StatusCode::OK);
    assert!(
        preview.text.contains("Retry 2 DLQ entries?"),
        "{}",
        preview.text
    );
    assert_eq!(
        f.scalar("SELECT COUNT(*) AS n FROM command_queue WHERE status = 'dlq'")
            .await,
        json!(3),
        "the preview changes nothing"
    );
    // A confirmation of another count (the DLQ changed since) asks again.
    let a = f
        .post("/ui/dlq/retry", &admin, &format!("{form}&confirm=5"))
        .await;
    assert!(a.text.contains("changed since"), "{}", a.text);
    let a = f
        .post("/ui/dlq/retry", &admin, &format!("{form}&confirm=2"))
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    let done = f.get(a.location(), Some(&admin)).await.text;
    assert!(done.contains("2 entries retried"), "{done}");
    assert_eq!(
        f.scalar("SELECT COUNT(*) AS n FROM command_queue WHERE status = 'pending'")
            .await,
        json!(2)
    );
    assert_eq!(
        f.scalar("SELECT actor FROM runbook_audit WHERE op = 'dlq_retry'")
            .await,
        json!("console:admin")
    );
    // Clean-up: the rest, after its own confirmation.
    let form = format!("csrf={csrf}&errorType=ValidationException&older_than=0s");
    let preview = f.post("/ui/dlq/cleanup", &admin, &form).await;
    assert!(
        preview.text.contains("Delete 1 DLQ entry?"),
        "{}",
        preview.text
    );
    let a = f
        .post("/ui/dlq/cleanup", &admin, &format!("{form}&confirm=1"))
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(
        f.scalar("SELECT COUNT(*) AS n FROM command_queue WHERE status = 'dlq'")
            .await,
        json!(0)
    );
}

#[tokio::test]
async fn a_dlq_group_without_an_error_type_is_retried_and_deleted_as_null() {
    let f = fixture().await;
    dlq_entries(&f.store).await;
    for id in ["a", "b"] {
        f.store
            .sql(
                "INSERT INTO command_queue (entity, entity_id, command_type, payload, status, error_type, error_message, attempts) \
                 VALUES ('user', $1, 'user.update', '{}', 'dlq', NULL, 'no type', 5)",
                vec![json!(id)],
            )
            .await
            .unwrap();
    }
    let admin = f.sign_in(ADMIN).await;
    let page = f.get("/ui/dlq", Some(&admin)).await.text;
    assert!(
        page.contains("<td><em>none</em></td><td>user</td><td>2</td>"),
        "{page}"
    );
    assert!(
        page.contains("name=\"errorTypeNull\" value=\"yes\""),
        "{page}"
    );
    let csrf = f.csrf(&admin).await;
    let form = format!("csrf={csrf}&errorTypeNull=yes&entity=user");
    let preview = f.post("/ui/dlq/retry", &admin, &form).await;
    assert!(
        preview.text.contains("Retry 2 DLQ entries?"),
        "{}",
        preview.text
    );
    assert!(preview.text.contains("none (no error type recorded)"));
    assert!(preview
        .text
        .contains("name=\"errorTypeNull\" value=\"yes\""));
    let a = f
        .post("/ui/dlq/retry", &admin, &format!("{form}&confirm=2"))
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    // Only the two without a type went back; the three typed entries are still in the DLQ.
    assert_eq!(
        f.scalar("SELECT COUNT(*) AS n FROM command_queue WHERE status = 'pending' AND entity_id IN ('a', 'b')")
            .await,
        json!(2)
    );
    assert_eq!(
        f.scalar("SELECT COUNT(*) AS n FROM command_queue WHERE status = 'dlq'")
            .await,
        json!(3)
    );
    let audit = f
        .scalar("SELECT filter FROM runbook_audit WHERE op = 'dlq_retry'")
        .await;
    assert!(audit.to_string().contains("no_error_type"), "{audit}");
    // A delete of the NULL group touches nothing else either (the entry is a day old, so the
    // age filter does not race the clock).
    f.store
        .sql(
            "INSERT INTO command_queue (entity, entity_id, command_type, payload, status, error_type, error_message, attempts, updated_at) \
             VALUES ('user', 'c', 'user.update', '{}', 'dlq', NULL, 'no type', 5, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 days'))",
            vec![],
        )
        .await
        .unwrap();
    let form = format!("csrf={csrf}&errorTypeNull=yes&entity=user&older_than=1h");
    let preview = f.post("/ui/dlq/cleanup", &admin, &form).await;
    assert!(
        preview.text.contains("Delete 1 DLQ entry?"),
        "{}",
        preview.text
    );
    let a = f
        .post("/ui/dlq/cleanup", &admin, &format!("{form}&confirm=1"))
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(
        f.scalar("SELECT COUNT(*) AS n FROM command_queue WHERE status = 'dlq'")
            .await,
        json!(3)
    );
}

#[tokio::test]
async fn pause_and_resume_need_an_operator() {
    let f = fixture().await;
    let viewer = f.sign_in(VIEWER).await;
    let csrf = f.csrf(&viewer).await;
    let a = f
        .post("/ui/pause", &viewer, &format!("csrf={csrf}&reason=x"))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let ops = f.sign_in(OPERATOR).await;
    let csrf = f.csrf(&ops).await;
    let a = f
        .post(
            "/ui/pause",
            &ops,
            &format!("csrf={csrf}&reason=db+failover"),
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let page = f.get("/ui/alerts", Some(&ops)).await.text;
    assert!(
        page.contains("db failover") && page.contains("console:ops"),
        "{page}"
    );
    let a = f.post("/ui/resume", &ops, &format!("csrf={csrf}")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(
        f.scalar("SELECT COUNT(*) AS n FROM runbook_pause").await,
        json!(0)
    );
}

#[tokio::test]
async fn the_match_page_plans_the_playbooks_an_alert_would_start_and_changes_nothing() {
    let f = fixture().await;
    dlq_entries(&f.store).await;
    let ops = f.sign_in(OPERATOR).await;
    let csrf = f.csrf(&ops).await;
    let a = f
        .post(
            "/ui/playbooks/match",
            &ops,
            &format!("csrf={csrf}&labels=alertname%3DDlqHigh"),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.text.contains("fix-dlq"), "{}", a.text);
    assert!(!a.text.contains("<h2>hello"), "hello has no alert matcher");
    assert_eq!(
        f.scalar("SELECT COUNT(*) AS n FROM command_queue WHERE status = 'dlq'")
            .await,
        json!(3),
        "a plan changes nothing"
    );
    let a = f
        .post(
            "/ui/playbooks/match",
            &ops,
            &format!("csrf={csrf}&labels=no+equals+sign"),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.text.contains("line 1"), "{}", a.text);
}

#[tokio::test]
async fn a_platform_admin_changes_the_live_settings_an_operator_cannot() {
    let f = fixture().await;
    let ops = f.sign_in(OPERATOR).await;
    let csrf = f.csrf(&ops).await;
    let page = f.get("/ui/queue", Some(&ops)).await.text;
    assert!(
        !page.contains("action=\"/ui/settings\""),
        "offered to an operator"
    );
    let a = f
        .post(
            "/ui/settings",
            &ops,
            &format!("csrf={csrf}&workerConcurrency=7"),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let admin = f.sign_in(ADMIN).await;
    let csrf = f.csrf(&admin).await;
    let page = f.get("/ui/queue", Some(&admin)).await.text;
    assert!(page.contains("action=\"/ui/settings\""));
    let a = f
        .post(
            "/ui/settings",
            &admin,
            &format!("csrf={csrf}&workerConcurrency=x"),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.text
            .contains("workerConcurrency: `x` is not a whole number"),
        "{}",
        a.text
    );
    let a = f
        .post(
            "/ui/settings",
            &admin,
            &format!("csrf={csrf}&workerConcurrency=7&workerBatchSize=&lockTtl=10m"),
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    let page = f.get(a.location(), Some(&admin)).await.text;
    assert!(page.contains("Settings changed"), "{page}");
    let settings = crate::stream::Settings::load(&f.store, &Default::default())
        .await
        .unwrap();
    assert_eq!(settings.worker_concurrency, 7);
    assert_eq!(settings.lock_ttl.to_string(), "10m");
    assert_eq!(
        f.scalar("SELECT COUNT(*) AS n FROM runbook_audit WHERE actor = 'console:admin'")
            .await,
        json!(2),
        "scale_workers and set_lock_ttl, each audited"
    );
}
