//! An approval shows the exact change it lets happen, over HTTP without a browser, against a
//! real `runbook serve` with its workers: the run stops at its `approve` step, the card and the
//! run page show the next step's SQL with its bound values (a hostile parameter among them,
//! bound and escaped) and the runtime op with its arguments, `runbook runs show` prints them,
//! and the approved change then happens as shown. On SQLite and on PostgreSQL.

use serde_json::json;

use super::{config, wait_status, OPERATOR};
use crate::util::{post_json, rows, store, PgDb, Workdir};

use super::postgres::{csrf_of, Session};

/// Reads, asks, then changes: an UPDATE whose values come from a parameter and a read, and a
/// scale of the workers.
const REQUEUE: &str = r#"name: requeue
description: Counts the DLQ, asks, then marks its entries of one entity and adds workers.
params:
  entity: { type: string, default: "user'; DROP TABLE command_queue; --" }
  workers: { type: integer, default: 5 }
steps:
  - id: look
    sql: SELECT COUNT(*) AS n FROM command_queue WHERE status = 'dlq'
  - id: ask
    approve: { text: "Mark the DLQ entries and scale up?", timeout: 10m }
  - id: mark
    when: "steps.look.rows[0].n >= 0"
    sql: >-
      UPDATE command_queue SET error_message = {{ 'seen by run ' ~ run.id ~ ' of ' ~ steps.look.rows[0].n }}
      WHERE status = 'dlq' AND entity = {{ params.entity }}
  - id: scale
    runtime: { op: scale_workers, concurrency: "{{ params.workers }}" }
  - id: tell
    continue_on_error: true
    timeout: 2s
    http:
      method: POST
      url: "http://127.0.0.1:9/hook"
      headers: { X-Note: "{{ env.APPROVAL_TEST_SECRET }}" }
"#;

/// A secret a following step reads: masked on every page that shows the change.
const SECRET: &str = "approval-test-secret-value-0042";

async fn approval_shows_the_change(url: &str) {
    let w = Workdir::new().env("APPROVAL_TEST_SECRET", SECRET);
    w.config(&format!(
        "{}env: [{{ name: APPROVAL_TEST_SECRET, secret: true }}]\n",
        config()
    ));
    w.playbook("requeue", REQUEUE);
    let server = w.serve(&["--store", url]);
    let base = server.base.clone();
    let (status, body) = post_json(
        &format!("{base}/api/runs"),
        Some(OPERATOR),
        &json!({ "playbook": "requeue" }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["run_id"].as_i64().unwrap();
    wait_status(&base, id, "waiting_approval").await;

    let ops = Session::sign_in(&base, OPERATOR).await;
    let (status, card) = ops.get("/ui/approvals").await;
    assert_eq!(status, 200, "{card}");
    let (_, page) = ops.get(&format!("/ui/runs/{id}")).await;
    let bound_text = format!("&quot;seen by run {id} of 0&quot;");
    for html in [&card, &page] {
        assert!(html.contains("What approving lets happen"), "{html}");
        // The statement as it will run, placeholders and all; the values beside it, in order.
        assert!(
            html.contains("<pre class=\"value sql\">UPDATE command_queue SET error_message = "),
            "{html}"
        );
        assert!(
            html.contains("WHERE status = &#x27;dlq&#x27; AND entity = "),
            "{html}"
        );
        assert!(
            !html.contains("DROP TABLE command_queue; --</pre>"),
            "the parameter is not in the SQL text"
        );
        let first = html
            .find(&format!("<li><code>{bound_text}</code></li>"))
            .unwrap_or_else(|| panic!("the first bound value: {html}"));
        let second = html
            .find("<li><code>&quot;user&#x27;; DROP TABLE command_queue; --&quot;</code></li>")
            .unwrap_or_else(|| panic!("the second bound value: {html}"));
        assert!(first < second);
        assert!(html.contains("(true now)"), "{html}");
        assert!(
            html.contains("Runtime operation <code>scale_workers</code>"),
            "{html}"
        );
        assert!(
            html.contains("<dt>concurrency</dt><dd><code>5</code></dd>"),
            "{html}"
        );
        assert!(
            html.contains("would scale workerConcurrency from 3 to 5"),
            "{html}"
        );
        assert!(html.contains("id=\"change-tell\""), "{html}");
        assert!(!html.contains(SECRET), "the secret is shown: {html}");
    }

    let shown = w.run(&["--store", url, "runs", "show", &id.to_string()]);
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(
        shown.stdout.contains("Approving ask lets happen"),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("mark when `steps.look.rows[0].n >= 0` (true now): would run on store: UPDATE command_queue"),
        "{}",
        shown.stdout
    );
    assert!(
        shown
            .stdout
            .contains("scale: would scale workerConcurrency from 3 to 5"),
        "{}",
        shown.stdout
    );
    assert!(
        shown
            .stdout
            .contains("tell: would send POST http://127.0.0.1:9/hook"),
        "{}",
        shown.stdout
    );
    assert!(!shown.stdout.contains(SECRET), "{}", shown.stdout);

    // Approved from the card, the change happens as shown.
    let answered = ops
        .post(
            &format!("/ui/runs/{id}/approve"),
            &format!("csrf={}&decision=approve", csrf_of(&card)),
        )
        .await;
    assert_eq!(answered, 303);
    wait_status(&base, id, "succeeded").await;
    let db = store(url).await;
    // What ran is what the card showed: the same statement with the same values.
    let ran = rows(
        &db,
        &format!(
            "SELECT input FROM runbook_step_attempts WHERE run_id = {id} AND step_id = 'mark'"
        ),
    )
    .await;
    assert_eq!(ran.len(), 1, "{ran:?}");
    let input = ran[0]["input"].to_string();
    assert!(input.contains(&format!("seen by run {id} of 0")), "{input}");
    assert!(input.contains("DROP TABLE command_queue; --"), "{input}");
    let (_, after) = ops.get(&format!("/ui/runs/{id}")).await;
    assert!(
        after.contains("What the last approval let happen"),
        "{after}"
    );
    let (_, card) = ops.get("/ui/approvals").await;
    assert!(card.contains("No run is waiting for a person."), "{card}");
}

#[tokio::test]
async fn an_approval_shows_the_rendered_change_on_sqlite() {
    let w = Workdir::new();
    approval_shows_the_change(&w.sqlite_url()).await;
}

#[tokio::test]
async fn an_approval_shows_the_rendered_change_on_postgres() {
    let pg = PgDb::new().await;
    approval_shows_the_change(&pg.url).await;
}
