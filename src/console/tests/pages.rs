//! Every page for every role, what each shows, the live view's endpoints, and every template.

use axum::http::{header, Method, StatusCode};
use serde_json::{json, Value};

use super::*;
use crate::{status::RunStatus, store::runs};

#[tokio::test]
async fn every_page_answers_each_role_as_its_role_allows() {
    let f = fixture().await;
    waiting_run(&f.store).await;
    dlq_entries(&f.store).await;
    for (token, role) in [
        (VIEWER, "viewer"),
        (OPERATOR, "operator"),
        (ADMIN, "PlatformAdmin"),
    ] {
        let cookie = f.sign_in(token).await;
        for (page, need) in PAGES {
            let a = f.get(page, Some(&cookie)).await;
            if rank(role) >= rank(need) {
                assert_eq!(a.status, StatusCode::OK, "{role} {page}: {}", a.text);
            } else {
                assert_eq!(a.status, StatusCode::FORBIDDEN, "{role} {page}");
                assert!(a.text.contains(&format!("this needs {need}")), "{}", a.text);
            }
            assert_eq!(
                a.headers[header::CONTENT_SECURITY_POLICY],
                crate::console::CSP,
                "{page}"
            );
            assert_eq!(a.headers[header::X_FRAME_OPTIONS], "DENY");
        }
        // What a role cannot do is not offered.
        let run = f.get("/ui/runs/1", Some(&cookie)).await.text;
        assert_eq!(run.contains("id=\"approve\""), role != "viewer", "{role}");
        assert_eq!(run.contains("id=\"cancel\""), role != "viewer", "{role}");
        let nav = f.get("/ui/queue", Some(&cookie)).await.text;
        assert_eq!(
            nav.contains("href=\"/ui/dlq\""),
            role == "PlatformAdmin",
            "{role}"
        );
        let cards = f.get("/ui/approvals", Some(&cookie)).await.text;
        assert_eq!(
            cards.contains("value=\"approve\""),
            role != "viewer",
            "{role}"
        );
    }
}

#[tokio::test]
async fn the_run_page_puts_the_alert_first_and_escapes_what_it_shows() {
    let f = fixture().await;
    let id = waiting_run(&f.store).await;
    let cookie = f.sign_in(VIEWER).await;
    let page = f.get(&format!("/ui/runs/{id}"), Some(&cookie)).await.text;
    let alert_at = page.find("Alert DlqHigh").expect("the alert");
    let steps_at = page.find("id=\"timeline\"").expect("the timeline");
    assert!(alert_at < steps_at, "the alert comes first");
    assert!(page.contains("&lt;b&gt;db-1&lt;"), "labels are escaped");
    assert!(!page.contains("<b>db-1</b>"));
    // minijinja escapes `/` in attributes as `&#x2f;`, which the browser reads back as `/`.
    let page = page.replace("&#x2f;", "/");
    assert!(page.contains("href=\"http://prometheus:9090/graph?g0.expr=dlq\""));
    assert!(page.contains("http://127.0.0.1:9093/#/silences/new?filter="));
    assert!(page.contains("<td>7</td>"), "the rows found, as a table");
    assert!(page.contains("data-live=\"yes\""));
}

#[tokio::test]
async fn the_event_stream_resumes_after_the_last_event_id_and_ends_with_the_run() {
    let f = fixture().await;
    let id = waiting_run(&f.store).await;
    runs::finish_run(&f.store, id, RunStatus::Succeeded, None, None)
        .await
        .unwrap();
    let cookie = f.sign_in(VIEWER).await;
    let a = f.get(&format!("/ui/runs/{id}/events"), Some(&cookie)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(a.text.contains("event: update"), "{}", a.text);
    assert!(a.text.contains("id: 1"), "{}", a.text);
    assert!(a.text.contains("attempt-1"), "{}", a.text);
    assert!(a.text.contains("event: end"), "{}", a.text);
    // Resumed after the one entry: the entry is not sent again.
    let a = f
        .call(
            Method::GET,
            &format!("/ui/runs/{id}/events"),
            Some(&cookie),
            None,
            &[("last-event-id", "1")],
        )
        .await;
    assert!(!a.text.contains("attempt-1"), "{}", a.text);
    assert!(a.text.contains("event: end"), "{}", a.text);
    // The polling fallback says the same.
    let a = f
        .get(&format!("/ui/runs/{id}/timeline?after=0"), Some(&cookie))
        .await;
    let v: Value = serde_json::from_str(&a.text).unwrap();
    assert_eq!(v["ended"], true);
    assert_eq!(v["entries"][0]["n"], 1);
    assert_eq!(v["status"], "succeeded");
}

#[tokio::test]
async fn approvals_show_the_evidence_the_question_and_the_change() {
    let f = fixture().await;
    let id = waiting_run(&f.store).await;
    let cookie = f.sign_in(OPERATOR).await;
    let page = f.get("/ui/approvals", Some(&cookie)).await.text;
    assert!(page.contains(&format!("id=\"approval-{id}\"")), "{page}");
    assert!(page.contains("Retry the DLQ?"));
    assert!(page.contains("<td>7</td>"), "the diagnosis result");
    assert!(page.contains("op: dlq_retry"), "the change that follows");
    assert!(page.contains("expires"));
}

#[tokio::test]
async fn an_approval_card_shows_the_rendered_sql_its_bound_values_and_the_runtime_op() {
    let f = fixture().await;
    let id = waiting_run(&f.store).await;
    // As `engine/preview.rs` stores them when a run reaches its `approve` step.
    let changes = json!([
        {
            "id": "requeue", "kind": "sql", "changes": true,
            "when": "steps.look.rows[0].n > 0", "when_now": true,
            "input": {
                "datasource": "store", "dialect": "sqlite",
                "sql": "UPDATE command_queue SET status = 'pending' WHERE entity = ? AND attempts < ?",
                "params": ["user<script>", 5],
            },
            "would": "would run on store: UPDATE command_queue SET status = 'pending' WHERE entity = ? AND attempts < ?  -- bound: [\"user<script>\",5]",
        },
        {
            "id": "scale", "kind": "runtime", "changes": true, "when": null, "when_now": null,
            "input": { "op": "scale_workers", "concurrency": 6, "batch_size": null },
            "would": "would scale workerConcurrency from 3 to 6",
        },
        {
            "id": "later", "kind": "sql", "changes": false, "when": null, "when_now": null,
            "not_rendered": "template: undefined value (steps.requeue.rows)",
        },
    ]);
    runs::set_waiting(&f.store, id, "ask", &changes)
        .await
        .unwrap();
    let cookie = f.sign_in(VIEWER).await;
    for page in [
        f.get("/ui/approvals", Some(&cookie)).await.text,
        f.get(&format!("/ui/runs/{id}"), Some(&cookie)).await.text,
    ] {
        assert!(page.contains("What approving lets happen"), "{page}");
        assert!(page.contains(
            "<pre class=\"value sql\">UPDATE command_queue SET status = &#x27;pending&#x27; WHERE entity = ? AND attempts &lt; ?</pre>"
        ), "{page}");
        // The bound values, in order, escaped.
        let first = page
            .find("<li><code>&quot;user&lt;script&gt;&quot;</code></li>")
            .unwrap_or_else(|| panic!("the first bound value: {page}"));
        let second = page
            .find("<li><code>5</code></li>")
            .expect("the second bound value");
        assert!(first < second);
        assert!(!page.contains("user<script>"));
        assert!(page.contains("Runtime operation <code>scale_workers</code>"));
        assert!(page.contains("<dt>concurrency</dt><dd><code>6</code></dd>"));
        assert!(
            !page.contains("<dt>batch_size</dt>"),
            "an argument not given is not shown"
        );
        assert!(page.contains("would scale workerConcurrency from 3 to 6"));
        assert!(page.contains("(true now)"));
        assert!(page.contains("Rendered when the run gets there"));
    }
}

#[tokio::test]
async fn the_queue_page_draws_the_sampled_depth_with_its_values() {
    use crate::store::queue_samples::{record, Sample};
    let f = fixture().await;
    let cookie = f.sign_in(VIEWER).await;
    let page = f.get("/ui/queue", Some(&cookie)).await.text;
    assert!(page.contains("No samples yet"), "{page}");
    assert!(page.contains("every 1m"), "{page}");
    let now = chrono::Utc::now().timestamp();
    for (ago, five, nine) in [(7200, 4, 0), (3600, 12, 3), (60, 7, 1)] {
        let depths = [("5".to_owned(), five), ("9".to_owned(), nine)].into();
        let s = Sample {
            at: now - ago,
            depths,
            total: five + nine,
            oldest_age_secs: Some(ago),
        };
        assert!(record(&f.store, &s).await.unwrap());
        // A second replica's sample of the same interval is not recorded.
        assert!(!record(&f.store, &Sample { total: 99, ..s }).await.unwrap());
    }
    // A sample older than the chart's window is left out.
    let old = Sample {
        at: now - 7 * 3600,
        depths: [("1".to_owned(), 50)].into(),
        total: 50,
        oldest_age_secs: None,
    };
    assert!(record(&f.store, &old).await.unwrap());
    let page = f.get("/ui/queue", Some(&cookie)).await.text;
    assert!(
        page.contains("role=\"img\" aria-labelledby=\"history-title history-desc\""),
        "{page}"
    );
    assert!(page.contains(
        "<title id=\"history-title\">Pending commands per priority, last 6 hours</title>"
    ));
    assert!(
        page.contains("priority 9 now 1 (peak 3), priority 5 now 7 (peak 12)"),
        "{page}"
    );
    assert!(page.contains("oldest pending now 1m."), "{page}");
    assert_eq!(page.matches("<polyline class=\"depth\"").count(), 2);
    assert!(page.contains("<th>Priority 9</th><th>Priority 5</th><th>Total</th>"));
    assert!(
        page.contains("<td>3</td><td>12</td><td>15</td><td>1h</td>"),
        "{page}"
    );
    assert!(!page.contains("Priority 1<"), "outside the window");
    assert!(!page.contains("<script>"), "no script draws it");
}

#[tokio::test]
async fn bad_filters_are_named_and_unknown_pages_are_html_404s() {
    let f = fixture().await;
    let cookie = f.sign_in(VIEWER).await;
    let a = f.get("/ui/runs?status=nope", Some(&cookie)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.text.contains("status: unknown run status `nope`"),
        "{}",
        a.text
    );
    let a = f.get("/ui/runs/999", Some(&cookie)).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.text.contains("no run 999"));
    let a = f.get("/ui/nothing-here", Some(&cookie)).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    // The API is as it was: JSON errors, bearer tokens.
    let a = f.get("/api/runs", None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.text.starts_with("{\"error\""), "{}", a.text);
}

#[tokio::test]
async fn the_assets_are_served_and_the_login_page_needs_no_session() {
    let f = fixture().await;
    let js = f.get("/ui/assets/console.js", None).await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.text.contains("EventSource"));
    let css = f.get("/ui/assets/console.css", None).await;
    assert!(css.text.contains("prefers-color-scheme: dark"));
    let login = f.get("/ui/login", None).await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.text.contains("type=\"password\""));
}

/// Every template renders with every part it can show, and escapes what it shows.
#[test]
fn every_template_renders() {
    let me = minijinja::context! { name => "ops", role => "operator", operate => true, admin => true, csrf => "c" };
    let evil = "<script>x</script>";
    let full = minijinja::context! {
        me, nav => "runs", title => evil, status => 400, message => evil, csrf => "c", next => "/ui/runs",
        error => evil, configured => true,
        runs => vec![json!({ "id": 1, "playbook": evil, "status": "failed", "trigger": { "kind": "alert", "alertname": evil } })],
        playbooks => vec![json!({ "name": evil, "alerts": [evil], "errors": [evil], "schedule": { "expr": "0 * * * * *", "tz": "UTC", "next": [] } })],
        statuses => vec!["queued"], triggers => vec!["alert"], f => json!({}),
        run => json!({ "id": 1, "playbook": evil, "status": "waiting_approval", "trigger": { "kind": "alert" }, "params": { "x": evil }, "report": evil, "approvals": [{ "step_id": "a", "decision": "approved", "actor": evil, "comment": evil }] }),
        alert => json!({ "alertname": evil, "status": "firing", "labels": { "a": evil }, "annotations": { "b": evil }, "fingerprint": "f", "generator_url": "http://x" }),
        others => vec![json!({ "id": 2, "playbook": "p", "status": "failed" })],
        steps => Vec::<String>::new(), live => true, cancellable => true, waiting => true,
        a => json!({ "n": 1, "step_id": evil, "attempt": 2, "status": "failed", "error": evil, "input": { "sql": evil }, "found": { "table": { "columns": [evil], "rows": [[evil]], "more": 3 }, "text": evil, "cut": 5 } }),
        id => 1, playbook => evil, fields => vec![json!({ "name": "who", "type": "string", "value": evil })], changed => true,
        cards => vec![json!({ "id": 1, "playbook": evil, "step": "ask", "question": evil, "trigger": { "kind": "alert" }, "evidence": [{ "step": "look", "found": { "text": evil } }], "changes": [{ "id": "retry", "kind": "runtime", "source": evil }], "expires": "2026-01-01T00:00:00Z" })],
        stats => json!({ "pending": 1, "processing": 0, "dlq": { "total": 1 }, "outbox_unsent": 0, "outbox_parked": 0, "locks": { "held": 1, "expired": 0, "expiries_total": 0 }, "settings": { "workerConcurrency": 3 } }),
        locks => vec![json!({ "entity": evil, "entity_id": "1" })], oldest_age => "1m", bars => vec![json!({ "y": 0, "width": 10, "label": evil, "count": 1 })], chart_height => 22,
        groups => vec![json!({ "error_type": evil, "entity": "user", "count": 2 })],
        entries => json!({ "totalElements": 3, "content": [{ "id": 1, "payload": { "e": evil } }] }),
        error_type => evil, entity => "user", verb => "retry", count => 2, changed_since => true,
        by_error_type => json!({ "T": 2 }), older_than => "7d", action => "/ui/dlq/retry",
        labels => evil, results => vec![json!({ "playbook": evil, "status": "planned", "entries": [{ "step": "s", "note": { "action": "read", "would": evil } }] })],
        alerts => vec![json!({ "alertname": evil, "status": "firing", "labels": { "a": evil }, "runs": [{ "run_id": 1, "playbook": evil }] })],
        notifications => vec![json!({ "id": 1, "status": "firing", "outcomes": [{ "fingerprint": evil, "outcome": "started", "playbooks": [{ "playbook": evil, "outcome": "started", "run_id": 1 }] }] })],
        paused => json!({ "reason": evil, "by": "ops", "since": "2026-01-01T00:00:00Z" }),
    };
    for (name, _) in crate::console::TEMPLATES {
        let html =
            crate::console::render(name, full.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!html.contains(evil), "{name} did not escape:\n{html}");
    }
}
