//! Running playbooks on the embedded SQLite store: the seed's weekly vacuum, the step semantics
//! (`when`, `for_each`, `until`, `retry`, `on_failure`), dry runs, and the run records.

use serde_json::json;

use crate::util::{assert_run_error, rows, scalar, store, until_scalar, Workdir};

#[tokio::test]
async fn weekly_vacuum_removes_old_completed_and_dlq_rows_and_reports_counts() {
    let w = Workdir::new();
    w.shipped("weekly-vacuum");
    // First use creates and migrates runbook.db.
    w.create_store(&w.sqlite_url());
    assert!(w.path().join("runbook.db").exists());
    let db = store(&w.sqlite_url()).await;
    let old = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-8 days')";
    let recent = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 days')";
    for (status, at, n) in [
        ("completed", old, 3),
        ("completed", recent, 2),
        ("dlq", old, 1),
        ("dlq", recent, 4),
        ("pending", old, 5),
    ] {
        for i in 0..n {
            let insert = format!(
                "INSERT INTO command_queue (entity, entity_id, command_type, status, updated_at) VALUES ('user', '{i}', 'user.update', '{status}', {at})"
            );
            db.sql(&insert, vec![]).await.unwrap();
        }
    }
    let out = w.run(&["run", "weekly-vacuum"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("removed 3 completed commands and 1 DLQ entries"),
        "{out:?}"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE status = 'completed'"
        )
        .await,
        2
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE status = 'dlq'"
        )
        .await,
        4
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE status = 'pending'"
        )
        .await,
        5,
        "pending work is never vacuumed"
    );
    // Each mutation left an audit record with its row count.
    let audits = rows(&db, "SELECT op, rows FROM runbook_audit ORDER BY id").await;
    assert_eq!(
        audits,
        vec![
            json!({ "op": "purge_completed", "rows": 3 }),
            json!({ "op": "dlq_cleanup", "rows": 1 }),
            // Retention (tests/retention.rs): nothing old enough in a fresh store; one record per
            // table (runs, ticks, playbook versions, notifications, alerts, alert run keys,
            // alert groups, queue samples).
            json!({ "op": "prune_records", "rows": 0 }),
            json!({ "op": "prune_records", "rows": 0 }),
            json!({ "op": "prune_records", "rows": 0 }),
            json!({ "op": "prune_records", "rows": 0 }),
            json!({ "op": "prune_records", "rows": 0 }),
            json!({ "op": "prune_records", "rows": 0 }),
            json!({ "op": "prune_records", "rows": 0 }),
            json!({ "op": "prune_records", "rows": 0 })
        ]
    );
    // The run and its steps are recorded.
    let runs = w.run(&["runs", "list", "--output", "json"]).json();
    assert_eq!(runs[0]["playbook"], "weekly-vacuum");
    assert_eq!(runs[0]["status"], "succeeded");
    let id = runs[0]["id"].to_string();
    let run = w.run(&["runs", "show", &id, "--output", "json"]).json();
    let steps: Vec<&str> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        &steps[..5],
        [
            "before",
            "purge_completed",
            "clean_dlq",
            "prune_records",
            "report"
        ]
    );
    assert_eq!(run["steps"][1]["output"]["output"]["deleted"], 3);
}

#[tokio::test]
async fn dry_run_prints_the_bound_sql_and_changes_nothing() {
    let w = Workdir::new();
    w.playbook(
        "purge",
        r#"name: purge
params:
  who: { type: string, default: "o'brien" }
steps:
  - id: delete
    sql: "DELETE FROM command_queue WHERE entity_id = {{ params.who }} AND updated_at < {{ ago('1h') }}"
  - id: gone
    runtime: { op: purge_completed, older_than: 1s }
"#,
    );
    w.create_store(&w.sqlite_url());
    let db = store(&w.sqlite_url()).await;
    db.sql(
        "INSERT INTO command_queue (entity, entity_id, command_type, status, updated_at) VALUES ('u', 'o''brien', 't', 'completed', '2000-01-01T00:00:00.000Z')",
        vec![],
    )
    .await
    .unwrap();
    let out = w.run(&["run", "purge", "--dry-run"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("DELETE FROM command_queue WHERE entity_id = ?1 AND updated_at < strftime("),
        "{out:?}"
    );
    assert!(out.stdout.contains(r#"bound: ["o'brien"]"#), "{out:?}");
    assert!(out.stdout.contains("purge_completed"), "{out:?}");
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM command_queue").await,
        1,
        "a dry run changes nothing"
    );
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM runbook_audit").await, 0);
}

#[test]
fn step_semantics_when_for_each_until_retry_and_on_failure() {
    let w = Workdir::new();
    w.playbook(
        "semantics",
        r#"name: semantics
params:
  threshold: { type: integer, default: 2 }
steps:
  - id: numbers
    sql: "SELECT 1 AS n UNION ALL SELECT 2 UNION ALL SELECT 3"
  - id: skipped
    when: "steps.numbers.rows | length > 10"
    assert: "false"
  - id: each
    for_each: "steps.numbers.rows | map(attribute='n') | list"
    sql: "SELECT {{ item }} * 10 AS tens"
  - id: poll
    until: "steps.poll.rows[0].n >= 0"
    every: 100ms
    within: 2s
    sql: "SELECT COUNT(*) AS n FROM runbook_runs"
  - id: flaky
    retry: { attempts: 3, backoff: 10ms }
    continue_on_error: true
    tcp_check: "127.0.0.1:1"
  - id: check
    assert:
      that: "steps.each.rows | map(attribute='tens') | sum == 60 and steps.skipped.status == 'skipped' and steps.flaky.status == 'failed'"
      message: "sums: {{ steps.each.rows | map(attribute='tens') | list }}"
  - id: boom
    assert: { that: "steps.numbers.rows | length > params.threshold + 5", message: "only {{ steps.numbers.rows | length }} rows" }
  - id: never
    wait: 0s
on_failure:
  - id: cleanup
    sql: "SELECT {{ failed_step.id }} AS failed, {{ failed_step.error }} AS error"
"#,
    );
    let out = w.run(&["run", "semantics", "--output", "json"]);
    assert_eq!(out.code, 1, "a failed run exits 1: {out:?}");
    let run = out.run();
    assert_eq!(run["status"], "failed");
    assert_eq!(run["failed_step"], "boom");
    assert_eq!(run["error"], "only 3 rows");
    let steps = &run["steps"];
    assert_eq!(steps["skipped"]["status"], "skipped");
    assert_eq!(
        steps["each"]["rows"],
        json!([{"tens": 10}, {"tens": 20}, {"tens": 30}])
    );
    assert_eq!(steps["check"]["output"]["message"], "sums: [10, 20, 30]");
    assert!(
        steps["flaky"]["error"]
            .as_str()
            .unwrap()
            .contains("after 3 attempts"),
        "{steps}"
    );
    assert!(
        steps.get("never").is_none(),
        "steps after a failure do not run"
    );
    assert_eq!(
        steps["cleanup"]["rows"],
        json!([{"failed": "boom", "error": "only 3 rows"}])
    );
    // Each retry attempt is recorded.
    let id = run["run_id"].to_string();
    let shown = w.run(&["runs", "show", &id, "-o", "json"]).json();
    let flaky = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step_id"] == "flaky")
        .count();
    assert_eq!(flaky, 3);
}

#[test]
fn until_polls_until_the_condition_holds_then_the_run_goes_on() {
    let w = Workdir::new();
    w.config("shell: { allow: [sh] }\n");
    // Each run of the step appends a line to `polls` and prints how many lines there are: the
    // condition is false after the first and second runs and true after the third.
    w.playbook(
        "third",
        r#"name: third
steps:
  - id: poll
    until: "steps.poll.rows[0].line | int >= 3"
    every: 50ms
    within: 30s
    shell: [sh, -c, "echo x >> polls; wc -l < polls"]
  - id: after
    assert:
      that: "steps.poll.rows[0].line | int == 3"
      message: "the step's result is its last run: {{ steps.poll.rows[0].line }}"
"#,
    );
    let out = w.run(&["run", "third", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.run();
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["steps"]["poll"]["status"], "succeeded", "{run}");
    assert_eq!(run["steps"]["poll"]["output"]["stdout"], "3\n", "{run}");
    assert_eq!(run["steps"]["after"]["status"], "succeeded", "{run}");
    let polls = std::fs::read_to_string(w.path().join("polls")).unwrap();
    assert_eq!(
        polls.lines().count(),
        3,
        "the step ran three times and stopped once the condition held"
    );
}

#[test]
fn until_gives_up_after_within() {
    let w = Workdir::new();
    w.playbook(
        "never",
        "name: never\nsteps:\n  - id: p\n    until: \"steps.p.rows[0].n > 5\"\n    every: 100ms\n    within: 500ms\n    sql: SELECT 1 AS n\n",
    );
    let out = w.run(&["run", "never", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_run_error(&out.run(), "still false after");
}

#[test]
fn usage_errors_exit_2_before_anything_runs() {
    let w = Workdir::new();
    w.playbook("typed", "name: typed\nparams:\n  n: { type: integer, default: 1 }\nsteps:\n  - id: a\n    sql: SELECT {{ params.n }} AS n\n");
    let out = w.run(&["run", "nope"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("unknown playbook `nope`"), "{out:?}");
    let out = w.run(&["run", "typed", "--param", "n=abc"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("parameter `n`: expected an integer, got `abc`"),
        "{out:?}"
    );
    let out = w.run(&["run", "typed", "--param", "m=1"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("unknown parameter `m`"), "{out:?}");
    assert!(!w.path().join("runbook.db").exists(), "nothing was touched");
    let out = w.run(&["run", "typed", "--param", "n=41", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.run()["steps"]["a"]["rows"][0]["n"], 41);
}

#[test]
fn a_playbook_calls_another_and_an_unreachable_store_is_a_clear_error() {
    let w = Workdir::new();
    w.playbook("child", "name: child\nparams:\n  x: { type: integer }\nsteps:\n  - id: double\n    sql: SELECT {{ params.x }} * 2 AS y\n");
    w.playbook(
        "parent",
        "name: parent\nsteps:\n  - id: call\n    playbook: { name: child, params: { x: 21 } }\n",
    );
    let out = w.run(&["run", "parent", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.run()["steps"]["call"]["output"]["steps"]["double"]["rows"][0]["y"],
        42
    );

    let out = w.run(&[
        "--store",
        "postgres://nobody:secretpw@127.0.0.1:1/none",
        "run",
        "parent",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("cannot open database postgres://nobody:****@127.0.0.1:1/none"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("secretpw"));
}

#[tokio::test]
async fn the_seeds_diagnosis_queries_run_on_sqlite_with_ago() {
    let w = Workdir::new();
    // The seed's queries (incidents 1, 3, 4, 5) with `NOW() - INTERVAL` written as ago()/age().
    w.playbook(
        "seed",
        r#"name: seed
steps:
  - id: depth
    sql: |
      SELECT priority, COUNT(*) AS count, MIN(created_at) as oldest, MAX(created_at) as newest
      FROM command_queue WHERE status = 'pending' GROUP BY priority
  - id: stuck
    sql: |
      SELECT * FROM command_queue
      WHERE status = 'pending' AND created_at < {{ ago('1h') }}
      ORDER BY created_at LIMIT 20
  - id: top_errors
    sql: |
      SELECT error_message, COUNT(*) as count FROM command_queue
      WHERE status = 'dlq' GROUP BY error_message ORDER BY count DESC LIMIT 10
  - id: by_entity
    sql: |
      SELECT entity, COUNT(*) as count FROM command_queue
      WHERE status = 'dlq' GROUP BY entity ORDER BY count DESC
  - id: old_locks
    sql: |
      SELECT * FROM work_state WHERE state = 'updating' AND locked_at < {{ ago('5m') }}
  - id: lock_durations
    sql: |
      SELECT entity, entity_id, locked_at, {{ age('locked_at') }} as lock_duration
      FROM work_state WHERE state = 'updating' ORDER BY locked_at
"#,
    );
    w.create_store(&w.sqlite_url());
    let db = store(&w.sqlite_url()).await;
    db.sql(
        "INSERT INTO command_queue (entity, entity_id, command_type, priority, status, error_message, created_at) VALUES \
         ('user', '1', 'u', 5, 'pending', NULL, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 hours')), \
         ('user', '2', 'u', 5, 'pending', NULL, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), \
         ('user', '3', 'u', 1, 'dlq', 'bad email', strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), \
         ('order', '4', 'o', 1, 'dlq', 'bad email', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
        vec![],
    )
    .await
    .unwrap();
    db.sql(
        "INSERT INTO work_state (entity, entity_id, state, locked_at) VALUES ('user', '1', 'updating', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-7 minutes'))",
        vec![],
    )
    .await
    .unwrap();
    let out = w.run(&["run", "seed", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let steps = &out.run()["steps"];
    assert_eq!(steps["depth"]["rows"][0]["count"], 2);
    assert_eq!(steps["stuck"]["rows"].as_array().unwrap().len(), 1);
    assert_eq!(
        steps["top_errors"]["rows"],
        json!([{ "error_message": "bad email", "count": 2 }])
    );
    assert_eq!(steps["by_entity"]["rows"].as_array().unwrap().len(), 2);
    assert_eq!(steps["old_locks"]["rows"].as_array().unwrap().len(), 1);
    let secs = steps["lock_durations"]["rows"][0]["lock_duration"]
        .as_f64()
        .unwrap();
    assert!(
        (415.0..=430.0).contains(&secs),
        "about seven minutes: {secs}"
    );
}

#[tokio::test]
async fn approve_waits_for_an_operator_and_a_rejection_stops_the_run() {
    let w = Workdir::new();
    w.playbook(
        "gate",
        "name: gate\nsteps:\n  - id: ask\n    approve: { text: \"Retry the DLQ?\", timeout: 30s }\n  - id: after\n    sql: SELECT 1 AS done\n",
    );
    w.create_store(&w.sqlite_url());
    let db = store(&w.sqlite_url()).await;
    for (run_id, reject) in [(1, false), (2, true)] {
        let child = w
            .command()
            .args(["run", "gate"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let waiting = format!(
            "SELECT COUNT(*) FROM runbook_runs WHERE id = {run_id} AND status = 'waiting_approval'"
        );
        until_scalar(10, "the run to wait for approval", &db, &waiting, |n| {
            n == 1
        })
        .await;
        let id = run_id.to_string();
        let mut args = vec!["runs", "approve", id.as_str(), "--actor", "alice"];
        if reject {
            args.extend(["--reject", "--comment", "not now"]);
        }
        let out = w.run(&args);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("at step `ask`"), "{out:?}");
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("waiting for approval: Retry the DLQ?"),
            "{stdout}"
        );
        if reject {
            assert_eq!(output.status.code(), Some(1), "{stdout}");
            assert!(stdout.contains("rejected by alice: not now"), "{stdout}");
            let run = &rows(
                &db,
                "SELECT status, failed_step, error FROM runbook_runs WHERE id = 2",
            )
            .await[0];
            assert_eq!(
                run,
                &json!({ "status": "cancelled", "failed_step": "ask", "error": "rejected by alice: not now" })
            );
        } else {
            assert_eq!(output.status.code(), Some(0), "{stdout}");
        }
    }
    // Answering a run that is not waiting is refused.
    let out = w.run(&["runs", "approve", "1"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("run 1 is succeeded, not waiting for approval"),
        "{out:?}"
    );
    let audits = rows(&db, "SELECT actor, op FROM runbook_audit ORDER BY id").await;
    assert_eq!(
        audits,
        vec![
            json!({ "actor": "alice", "op": "run_approved" }),
            json!({ "actor": "alice", "op": "run_rejected" })
        ]
    );
}

#[tokio::test]
async fn a_mutating_sql_step_and_its_audit_record_commit_together() {
    let w = Workdir::new();
    w.playbook(
        "bump",
        "name: bump\nparams:\n  who: { type: string }\nsteps:\n  - id: bump\n    sql: \"UPDATE command_queue SET priority = 9 WHERE entity_id = {{ params.who }} RETURNING id\"\n",
    );
    w.create_store(&w.sqlite_url());
    let db = store(&w.sqlite_url()).await;
    for id in ["a", "a", "b"] {
        db.sql(
            "INSERT INTO command_queue (entity, entity_id, command_type) VALUES ('user', $1, 't')",
            vec![json!(id)],
        )
        .await
        .unwrap();
    }
    let out = w.run(&["run", "bump", "--param", "who=a", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.run();
    assert_eq!(run["steps"]["bump"]["output"]["rows_affected"], 2);
    assert_eq!(
        run["steps"]["bump"]["rows"].as_array().unwrap().len(),
        2,
        "RETURNING rows come back"
    );
    let audits = rows(&db, "SELECT actor, op, rows, filter FROM runbook_audit").await;
    assert_eq!(audits.len(), 1, "{audits:?}");
    let audit = &audits[0];
    assert_eq!(
        (&audit["actor"], &audit["op"], &audit["rows"]),
        (&json!("run:1:bump"), &json!("sql:bump"), &json!(2))
    );
    assert_eq!(audit["filter"]["params"], json!(["a"]), "{audit}");
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM command_queue WHERE priority = 9").await,
        2
    );

    // Make the audit insert fail: the update it records must not stay either.
    db.sql(
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON runbook_audit \
         BEGIN SELECT RAISE(ABORT, 'audit refused'); END",
        vec![],
    )
    .await
    .unwrap();
    let out = w.run(&["run", "bump", "--param", "who=b", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_run_error(&out.run(), "audit refused");
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE entity_id = 'b' AND priority = 9"
        )
        .await,
        0,
        "the update was rolled back with its audit record"
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM runbook_audit").await,
        1,
        "no audit record was added"
    );
}
