//! `runbook run NAME --plan`: the reads run on the data as it is, `when` is evaluated on what
//! they found, and the changes are printed, not made. Proved on the SQLite file and on
//! PostgreSQL by comparing every table before and after.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};

use crate::util::{rows, scalar, store, PgDb, Workdir};

/// The tables that record runs: a plan is recorded as a dry run (`planned`), with its attempts
/// and the playbook version it planned; nothing else may change.
const RECORDS: &[&str] = &[
    "runbook_runs",
    "runbook_step_attempts",
    "runbook_playbook_versions",
];

/// Every row of every table but the run records, by table.
async fn snapshot(db: &runbook::store::Db, pg: bool) -> BTreeMap<String, Vec<Json>> {
    let list = if pg {
        "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
    } else {
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name NOT LIKE '_sqlx%' ORDER BY 1"
    };
    let mut out = BTreeMap::new();
    for t in rows(db, list).await {
        let name = t["name"].as_str().unwrap().to_owned();
        if RECORDS.contains(&name.as_str()) || name.starts_with("_sqlx") {
            continue;
        }
        let all = rows(db, &format!("SELECT * FROM {name} ORDER BY 1")).await;
        out.insert(name, all);
    }
    out
}

/// A backlog as the seed's alert sees it: 1,100 pending commands, 30 of them two hours old
/// (stuck), and 5 commands in the DLQ: 3 timed out (transient), 2 failed validation.
async fn backlog(db: &runbook::store::Db, pg: bool) {
    let (old, now) = if pg {
        ("NOW() - INTERVAL '2 hours'", "NOW()")
    } else {
        (
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 hours')",
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        )
    };
    for (status, at, n, error_type) in [
        ("pending", old, 30, "NULL"),
        ("pending", now, 1070, "NULL"),
        ("dlq", now, 3, "'TimeoutException'"),
        ("dlq", now, 2, "'ValidationException'"),
    ] {
        let insert = format!(
            "INSERT INTO command_queue (entity, entity_id, command_type, status, priority, created_at, updated_at, error_type) \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
             SELECT 'user', CAST(i AS TEXT), 'user.update', '{status}', i % 3, {at}, {at}, {error_type} FROM n"
        );
        db.sql(&insert, vec![]).await.unwrap();
    }
}

/// The plan of `queue-backlog` on a real backlog says what the run would do, and changes
/// nothing: every table but the run records is the same before and after.
async fn queue_backlog_plan_changes_nothing(w: &Workdir, url: &str, pg: bool) {
    w.shipped("queue-backlog");
    w.create_store(url);
    let db = store(url).await;
    backlog(&db, pg).await;
    let before = snapshot(&db, pg).await;
    assert!(before.contains_key("runbook_audit") && before.contains_key("runtime_settings"));

    let out = w.run(&["--store", url, "run", "queue-backlog", "--plan"]);
    assert_eq!(out.code, 0, "{out:?}");
    let stdout = &out.stdout;
    // The reads ran, on the data as it is, and show what they found as a run does: the pending
    // commands by priority (370 + 370 + 360 of 1,100 here, whatever the order of the lines), the
    // true count of stuck commands, and a sample of them.
    assert!(stdout.contains("depth_by_priority  read\n"), "{out:?}");
    assert!(stdout.contains("count"), "{out:?}");
    assert!(stdout.contains("stuck_count  read\n"), "{out:?}");
    assert!(stdout.contains("\n      30\n"), "the stuck count: {out:?}");
    assert!(stdout.contains("stuck  read\n"), "{out:?}");
    assert!(
        stdout.contains("and 10 more rows"),
        "a sample of 20 shows 10: {out:?}"
    );
    // The changes, with their arguments, in order.
    let scale = stdout
        .find("would scale workerConcurrency from 3 to 6")
        .unwrap_or_else(|| panic!("no scale: {out:?}"));
    assert!(
        stdout.contains(r#"runtime {"batch_size":null,"concurrency":6,"op":"scale_workers"}"#),
        "{out:?}"
    );
    let retry = stdout
        .find("retry[0]  would retry every DLQ entry of error type TimeoutException (3 now)")
        .unwrap_or_else(|| panic!("no retry: {out:?}"));
    assert!(
        stdout.contains(
            "retry[1]  would retry every DLQ entry of error type NetworkException (0 now)"
        ),
        "{out:?}"
    );
    assert!(!stdout.contains("ValidationException"), "{out:?}");
    let verify = stdout
        .find("would poll every 30s for up to 10m until `steps.verify.rows[0].n < params.threshold`: false now (1 row")
        .unwrap_or_else(|| panic!("no poll: {out:?}"));
    let report = stdout
        .find("report  would notify `ops`")
        .unwrap_or_else(|| panic!("no report: {out:?}"));
    assert!(
        scale < retry && retry < verify && verify < report,
        "{out:?}"
    );
    // What the report would say hinges on what the poll would find after the changes.
    assert!(
        stdout.contains("<unknown: steps.verify.rows[0].n>"),
        "{out:?}"
    );
    assert!(stdout.contains("Nothing was changed"), "{out:?}");

    let after = snapshot(&db, pg).await;
    assert_eq!(before, after, "a plan changes nothing");
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM runbook_audit").await, 0);
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM runtime_settings").await,
        0
    );
    // It is recorded as a dry run that planned, which no guard counts.
    let runs = rows(&db, "SELECT status, dry_run FROM runbook_runs").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["status"], "planned");
    assert!(
        runs[0]["dry_run"] == json!(true) || runs[0]["dry_run"] == json!(1),
        "{runs:?}"
    );
    // Its reads are recorded with what they found; its changes as planned.
    let attempts = rows(
        &db,
        "SELECT step_id, status FROM runbook_step_attempts ORDER BY id",
    )
    .await;
    let status_of = |id: &str| {
        attempts
            .iter()
            .find(|a| a["step_id"] == id)
            .map(|a| a["status"].clone())
    };
    assert_eq!(status_of("depth_by_priority"), Some(json!("succeeded")));
    assert_eq!(status_of("scale"), Some(json!("planned")));
    assert_eq!(status_of("retry"), Some(json!("planned")));

    // A dry run still executes nothing, so it cannot know the depth: it says a plan would.
    let dry = w.run(&["--store", url, "run", "queue-backlog", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains("runbook run queue-backlog --plan"),
        "{dry:?}"
    );
    assert_eq!(before, snapshot(&db, pg).await, "a dry run changes nothing");
    db.close().await;
}

#[tokio::test]
async fn plan_of_queue_backlog_on_sqlite_changes_nothing() {
    let w = Workdir::new();
    let url = w.sqlite_url();
    queue_backlog_plan_changes_nothing(&w, &url, false).await;
}

#[tokio::test]
async fn plan_of_queue_backlog_on_postgres_changes_nothing() {
    let pg = PgDb::new().await;
    let w = Workdir::new();
    queue_backlog_plan_changes_nothing(&w, &pg.url, true).await;
}

/// The JSON plan: one document, an entry per step with its action; `when` evaluated on the
/// reads' real results, and what needs a change's output shown as unknown rather than false.
#[tokio::test]
async fn plan_as_json_tells_reads_changes_skips_and_what_hinges_on_a_change() {
    let w = Workdir::new();
    w.playbook(
        "chain",
        r#"name: chain
steps:
  - id: count
    sql: "SELECT COUNT(*) AS n FROM command_queue WHERE status = 'completed'"
  - id: huge
    when: "steps.count.rows[0].n > 1000000"
    runtime: { op: scale_workers, concurrency: 50 }
  - id: purge
    when: "steps.count.rows[0].n > 0"
    runtime: { op: purge_completed, older_than: 7d }
  - id: announce
    when: "steps.purge.output.deleted > 0"
    http:
      method: POST
      url: "http://127.0.0.1:9/purged"
      headers: { Authorization: "Bearer s3cr3t-t0ken", X-Request: "plan" }
      json: { deleted: "{{ steps.purge.output.deleted }}" }
  - id: recount
    sql: "SELECT COUNT(*) AS n FROM command_queue WHERE id > {{ steps.purge.output.deleted }}"
  - id: breathe
    wait: 30s
  - id: ask
    approve: { text: "Purge again?", timeout: 1h }
  - id: check
    assert: { that: "steps.count.rows[0].n == 2", message: "{{ steps.count.rows[0].n }} completed" }
"#,
    );
    w.create_store(&w.sqlite_url());
    let db = store(&w.sqlite_url()).await;
    db.sql(
        "INSERT INTO command_queue (entity, entity_id, command_type, status, updated_at) VALUES \
         ('u', '1', 't', 'completed', '2000-01-01T00:00:00.000Z'), ('u', '2', 't', 'completed', '2000-01-01T00:00:00.000Z')",
        vec![],
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let out = w.run(&["run", "chain", "--plan", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(25),
        "a plan does not sit through a wait"
    );
    assert!(!out.stdout.contains("s3cr3t"), "{out:?}");
    let doc = out.json();
    let plan = &doc["plan"];
    assert_eq!(plan["status"], "planned", "{doc:#}");
    let steps = plan["steps"].as_array().unwrap();
    let entry = |id: &str| {
        steps
            .iter()
            .find(|s| s["step"] == id)
            .unwrap_or_else(|| panic!("no entry for {id}: {doc:#}"))
            .clone()
    };
    let actions: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| (s["step"].as_str().unwrap(), s["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("count", "read"),
            ("huge", "skip"),
            ("purge", "change"),
            ("announce", "would_run_if"),
            ("recount", "unknown"),
            ("breathe", "change"),
            ("ask", "change"),
            ("check", "read"),
        ],
        "{doc:#}"
    );
    assert_eq!(entry("count")["output"]["rows"], json!([{ "n": 2 }]));
    assert_eq!(entry("huge")["when"], "steps.count.rows[0].n > 1000000");
    assert_eq!(
        entry("purge")["input"],
        json!({ "op": "purge_completed", "older_than": "7days" })
    );
    let announce = entry("announce");
    assert_eq!(announce["when"], "steps.purge.output.deleted > 0");
    assert_eq!(announce["unknown"], json!(["steps.purge.output.deleted"]));
    assert_eq!(announce["input"]["method"], "POST");
    assert_eq!(announce["input"]["headers"]["Authorization"], "***");
    assert_eq!(announce["input"]["headers"]["X-Request"], "plan");
    assert_eq!(
        entry("recount")["unknown"],
        json!(["steps.purge.output.deleted"])
    );
    assert!(
        entry("breathe")["would"]
            .as_str()
            .unwrap()
            .starts_with("would wait 30s"),
        "{doc:#}"
    );
    assert!(
        entry("ask")["would"]
            .as_str()
            .unwrap()
            .contains("would ask for approval of \"Purge again?\""),
        "{doc:#}"
    );
    assert_eq!(entry("check")["output"]["output"]["message"], "2 completed");
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM command_queue").await,
        2,
        "nothing purged"
    );
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM runbook_audit").await, 0);
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM runbook_approvals").await,
        0
    );
}

/// Plans do not count against a playbook's guards: after two plans, the run itself starts.
#[tokio::test]
async fn plans_trip_no_guard() {
    let w = Workdir::new();
    w.playbook(
        "guarded",
        "name: guarded\nguard: { cooldown: 1h, max_runs_per_hour: 1 }\nsteps:\n  - id: purge\n    runtime: { op: purge_completed, older_than: 7d }\n",
    );
    for _ in 0..2 {
        let out = w.run(&["run", "guarded", "--plan"]);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(
            out.stdout
                .contains("purge  would delete completed commands older than 7days"),
            "{out:?}"
        );
    }
    // The pause holds back runs that change things; a plan changes nothing and goes on.
    assert_eq!(w.run(&["pause", "--reason", "failover"]).code, 0);
    let paused = w.run(&["run", "guarded", "--plan"]);
    assert_eq!(paused.code, 0, "{paused:?}");
    assert_eq!(w.run(&["resume"]).code, 0);
    let out = w.run(&["run", "guarded", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.run()["status"], "succeeded");
    // The guard holds for the next real run.
    let again = w.run(&["run", "guarded", "-o", "json"]);
    assert_ne!(again.code, 0, "{again:?}");
    // `--plan` and `--dry-run` do not go together.
    let both = w.run(&["run", "guarded", "--plan", "--dry-run"]);
    assert_eq!(both.code, 2, "{both:?}");
}

/// A `playbook:` call is planned in turn: the child's reads run and its changes are shown one
/// level deeper; a `for_each` over what a call would produce is unknown.
#[tokio::test]
async fn a_call_is_planned_in_turn_and_changes_nothing() {
    let w = Workdir::new();
    w.playbook(
        "child",
        "name: child\nparams:\n  who: { type: string }\nsteps:\n  - id: look\n    sql: \"SELECT COUNT(*) AS n FROM command_queue WHERE entity_id = {{ params.who }}\"\n  - id: purge\n    runtime: { op: purge_completed, older_than: 1s }\n",
    );
    w.playbook(
        "parent",
        "name: parent\nsteps:\n  - id: ids\n    sql: \"SELECT entity_id FROM command_queue ORDER BY id\"\n  - id: each\n    for_each: \"steps.ids.rows | map(attribute='entity_id') | list\"\n    playbook: { name: child, params: { who: \"{{ item }}\" } }\n  - id: per_run\n    for_each: \"steps.each.output\"\n    sql: \"SELECT {{ item.run_id }} AS r\"\n",
    );
    w.create_store(&w.sqlite_url());
    let db = store(&w.sqlite_url()).await;
    db.sql(
        "INSERT INTO command_queue (entity, entity_id, command_type, status, updated_at) VALUES \
         ('u', 'a', 't', 'completed', '2000-01-01T00:00:00.000Z'), ('u', 'b', 't', 'completed', '2000-01-01T00:00:00.000Z')",
        vec![],
    )
    .await
    .unwrap();
    let before = snapshot(&db, false).await;
    let out = w.run(&["run", "parent", "--plan", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let doc = out.json();
    let entries: Vec<(String, u64, String)> = doc["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["depth"].as_u64().unwrap(),
                s["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let e = |s: &str, d: u64, a: &str| (s.to_owned(), d, a.to_owned());
    assert_eq!(
        entries,
        [
            e("ids", 0, "read"),
            e("each", 0, "change"),
            e("look", 1, "read"),
            e("purge", 1, "change"),
            e("each", 0, "change"),
            e("look", 1, "read"),
            e("purge", 1, "change"),
            e("per_run", 0, "unknown"),
        ],
        "{doc:#}"
    );
    assert_eq!(
        doc["plan"]["steps"][1]["input"]["params"],
        json!({ "who": "a" })
    );
    assert_eq!(
        doc["plan"]["steps"][2]["output"]["rows"],
        json!([{ "n": 1 }])
    );
    assert_eq!(
        before,
        snapshot(&db, false).await,
        "a planned call changes nothing"
    );
    // The children are recorded as plans of their own under the parent's.
    let runs = rows(
        &db,
        "SELECT playbook, status, parent_id FROM runbook_runs ORDER BY id",
    )
    .await;
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(runs.iter().all(|r| r["status"] == "planned"), "{runs:?}");
}
