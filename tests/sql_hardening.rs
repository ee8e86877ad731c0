//! `sql` and `http` steps under pressure: a timed-out statement is stopped on the database and
//! commits nothing, a change is retried only when it says it is idempotent, results and run
//! records are bounded, a NUL in a parameter is refused, and typed binds on PostgreSQL.

use serde_json::{json, Value};

use crate::util::{eventually, listen, rows, scalar, store, PgDb, Workdir};

/// A mark unique to this test, to find its statements in `pg_stat_activity`.
fn mark() -> String {
    format!("mark_{}", fastrand::u64(..))
}

/// Waits until no other session of the server runs a statement containing `mark`.
async fn until_no_statement_with(db: &runbook::store::Db, mark: &str, secs: u64) {
    let sql = format!(
        "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
         AND state <> 'idle' AND query LIKE '%{mark}%'"
    );
    eventually(secs, &format!("no statement with {mark} running"), || {
        let sql = sql.clone();
        async move { (scalar(db, &sql).await == 0).then_some(()) }
    })
    .await;
}

/// Every recorded attempt of a run (`runs show ID -o json`).
fn attempts(w: &Workdir, store_url: &str, run: &Value) -> Vec<Value> {
    let id = run["run_id"].as_i64().expect("run id").to_string();
    let out = w.run(&["--store", store_url, "runs", "show", &id, "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    out.json()["steps"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_timed_out_pg_sleep_is_cancelled_on_the_server() {
    let pg = PgDb::new().await;
    let w = Workdir::new();
    let mark = mark();
    w.playbook(
        "sleepy",
        &format!(
            "name: sleepy\nsteps:\n  - id: nap\n    timeout: 2s\n    sql: \"SELECT pg_sleep(120) AS {mark}\"\n"
        ),
    );
    let out = w.run(&["--store", &pg.url, "run", "sleepy", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    // The CLI has exited; the server must not go on sleeping for two minutes.
    let db = store(&pg.url).await;
    until_no_statement_with(&db, &mark, 10).await;
    let error = out.run()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("timed out after 2s")
            && error.contains("cancelled on the database and nothing it did was committed"),
        "{error}"
    );
}

#[tokio::test]
async fn a_timed_out_change_commits_nothing_is_not_retried_and_is_audited() {
    let pg = PgDb::new().await;
    let w = Workdir::new().env("SIDE_DB_URL", &pg.url);
    w.config("datasources:\n  side: { url_env: SIDE_DB_URL }\n");
    let db = store(&pg.url).await;
    db.sql("CREATE TABLE marks (n int, note text)", vec![])
        .await
        .unwrap();
    let mark = mark();
    w.playbook(
        "slow-insert",
        &format!(
            r#"name: slow-insert
steps:
  - id: once
    timeout: 1s
    retry: {{ attempts: 3, backoff: 100ms }}
    continue_on_error: true
    sql:
      datasource: side
      query: "INSERT INTO marks (n, note) SELECT 1, '{mark}' FROM pg_sleep(3)"
  - id: again
    timeout: 1s
    retry: {{ attempts: 2, backoff: 100ms }}
    continue_on_error: true
    sql:
      datasource: side
      query: "INSERT INTO marks (n, note) SELECT 2, '{mark}' FROM pg_sleep(3)"
      idempotent: true
"#
        ),
    );
    let validate = w.run(&["validate"]);
    assert_eq!(validate.code, 0, "a warning is not an error: {validate:?}");
    let warnings: Vec<&str> = validate
        .stdout
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{validate:?}");
    assert!(
        warnings[0].contains("slow-insert.yaml:5:")
            && warnings[0].contains("step `once` has `retry`")
            && warnings[0].contains("idempotent: true"),
        "{validate:?}"
    );

    let out = w.run(&["--store", &pg.url, "run", "slow-insert", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.run();
    let once = run["steps"]["once"]["error"].as_str().unwrap_or_default();
    assert!(
        once.contains("timed out after 1s") && once.contains("not retried"),
        "{run}"
    );
    let tries = |id: &str, all: &[Value]| all.iter().filter(|a| a["step_id"] == id).count();
    let all = attempts(&w, &pg.url, &run);
    assert_eq!(
        tries("once", &all),
        1,
        "a change without `idempotent` runs once: {all:?}"
    );
    assert_eq!(
        tries("again", &all),
        2,
        "an idempotent change is retried: {all:?}"
    );

    // Once nothing runs any more, no insert has committed, and each try left an audit record
    // that says it was rolled back.
    until_no_statement_with(&db, &mark, 15).await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM marks").await, 0);
    let audit = rows(
        &db,
        "SELECT op, filter, rows FROM runbook_audit WHERE op LIKE 'sql:%' ORDER BY id",
    )
    .await;
    let outcomes: Vec<(String, Value)> = audit
        .iter()
        .map(|r| {
            let filter: Value = match &r["filter"] {
                Value::String(s) => serde_json::from_str(s).unwrap(),
                other => other.clone(),
            };
            (
                r["op"].as_str().unwrap().to_owned(),
                filter["outcome"].clone(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("sql:once".to_owned(), json!("rolled_back")),
            ("sql:again".to_owned(), json!("rolled_back")),
            ("sql:again".to_owned(), json!("rolled_back")),
        ]
    );
}

#[tokio::test]
async fn a_timed_out_statement_on_sqlite_is_interrupted_and_commits_nothing() {
    let w = Workdir::new();
    let side = w.path().join("side.db");
    w.config(&format!(
        "datasources:\n  side: {{ url: \"sqlite://{}\" }}\n",
        side.display()
    ));
    // Counting to three hundred million takes SQLite far longer than the step's second.
    w.playbook(
        "slow-cte",
        r#"name: slow-cte
steps:
  - id: table
    sql: { datasource: side, query: "CREATE TABLE IF NOT EXISTS marks (n INTEGER)" }
  - id: slow
    timeout: 1s
    continue_on_error: true
    sql:
      datasource: side
      query: |
        INSERT INTO marks (n)
        SELECT 1 FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000000)
                       SELECT MAX(x) FROM c)
  - id: after
    timeout: 20s
    sql: { datasource: side, query: "INSERT INTO marks (n) VALUES (2)" }
  - id: count
    sql: { datasource: side, query: "SELECT COUNT(*) AS total, COALESCE(SUM(n = 1), 0) AS slow FROM marks" }
"#,
    );
    let out = w.run(&["run", "slow-cte", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.run();
    let slow = run["steps"]["slow"]["error"].as_str().unwrap_or_default();
    assert!(
        slow.contains("timed out after 1s") && slow.contains("nothing it did was committed"),
        "{run}"
    );
    // The interrupted insert holds no lock: the next write goes through, and only it committed.
    assert_eq!(
        run["steps"]["count"]["rows"],
        json!([{ "total": 1, "slow": 0 }]),
        "{run}"
    );
}

#[test]
fn max_rows_above_the_ceiling_is_a_validation_error() {
    let w = Workdir::new();
    w.playbook(
        "million",
        r#"name: million
steps:
  - id: all
    sql:
      query: "SELECT g FROM generate_series(1, 1000000) g"
      max_rows: 100000000
"#,
    );
    let out = w.run(&["validate"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stdout
            .contains("max_rows 100000000 is above the ceiling of 100000 rows"),
        "{out:?}"
    );
}

#[tokio::test]
async fn reads_stop_at_max_rows_and_run_records_are_bounded() {
    let pg = PgDb::new().await;
    let w = Workdir::new();
    w.playbook(
        "many",
        r#"name: many
steps:
  - id: million
    sql:
      query: "SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 1000000) g"
      max_rows: 1000
  - id: endless
    timeout: 60s
    sql:
      query: "SELECT generate_series(1, 1000000000000) AS g"
      max_rows: 10
  - id: wide
    sql:
      query: "SELECT g, repeat('y', 200) AS pad FROM generate_series(1, 100000) g"
      max_rows: 100000
"#,
    );
    let out = w.run(&["--store", &pg.url, "run", "many", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.run();
    let steps = &run["steps"];
    assert_eq!(steps["million"]["output"]["row_count"], 1000);
    assert_eq!(steps["million"]["output"]["truncated"], true);
    // A trillion rows: only the first eleven are ever read.
    assert_eq!(steps["endless"]["output"]["row_count"], 10);
    assert_eq!(steps["endless"]["output"]["truncated"], true);
    assert_eq!(steps["wide"]["output"]["row_count"], 100000);

    let all = attempts(&w, &pg.url, &run);
    let recorded = |id: &str| {
        all.iter()
            .find(|a| a["step_id"] == id)
            .map(|a| a["output"].clone())
            .unwrap_or_else(|| panic!("no attempt of {id}: {all:?}"))
    };
    let million = recorded("million");
    assert_eq!(million["rows"].as_array().map(Vec::len), Some(1000));
    assert_eq!(million["output"]["truncated"], true);
    assert!(million.get("cut").is_none(), "{}", million["cut"]);
    // About 23 MB of rows: the record keeps the first 4 MiB of them and says what it left out.
    let wide = recorded("wide");
    let kept = wide["rows"].as_array().map(Vec::len).unwrap_or_default();
    assert!(kept > 10_000 && kept < 100_000, "{kept}");
    assert_eq!(wide["rows"][0]["g"], 1);
    assert_eq!(wide["cut"]["rows_left_out"], 100_000 - kept);
    assert!(wide["cut"]["bytes_left_out"].as_u64().unwrap_or_default() > 15_000_000);
    let db = store(&pg.url).await;
    let largest = scalar(
        &db,
        "SELECT MAX(octet_length(output::text)) FROM runbook_step_attempts",
    )
    .await;
    // 4 MiB as runbook writes the JSON; PostgreSQL's text form adds a blank after each `:` and `,`.
    assert!(largest <= 4 * 1024 * 1024 * 11 / 10, "{largest}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_50_mb_http_answer_is_cut() {
    use axum::{body::Body, routing::get, Router};
    const CHUNK: usize = 1024 * 1024;
    let app = Router::new().route(
        "/huge",
        get(|| async {
            let chunks = (0..50).map(|_| Ok::<_, std::io::Error>(vec![b'a'; CHUNK]));
            Body::from_stream(futures::stream::iter(chunks))
        }),
    );
    let base = listen(app).await;
    let w = Workdir::new();
    w.playbook(
        "huge",
        &format!("name: huge\nsteps:\n  - id: get\n    http: {{ url: \"{base}/huge\" }}\n"),
    );
    let out = w.run(&["run", "huge", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let output = &out.run()["steps"]["get"]["output"];
    assert_eq!(output["status"], 200);
    assert_eq!(output["truncated"], true, "{output}");
    assert!(
        output["truncated_reason"]
            .as_str()
            .is_some_and(|r| r.contains("larger than 10 MiB")),
        "{output}"
    );
    // The first 64 KiB, and how long the text read was.
    let body = output["body"].as_str().unwrap_or_default();
    assert!(
        body.len() < 64 * 1024 + 100 && body.ends_with(" bytes)"),
        "{}",
        body.len()
    );
}

#[tokio::test]
async fn a_nul_in_a_parameter_is_a_400_naming_it() {
    const TOKEN: &str = "ops-token-sql-hardening";
    let pg = PgDb::new().await;
    let w = Workdir::new().env("TEST_OPS_TOKEN", TOKEN);
    w.config("auth:\n  tokens:\n    - { name: ops, role: operator, token_env: TEST_OPS_TOKEN }\n");
    w.playbook(
        "echo",
        "name: echo\nparams:\n  who: { type: string }\nsteps:\n  - id: say\n    sql: \"SELECT {{ params.who }} AS who\"\n",
    );
    let server = w.serve(&["--store", &pg.url]);
    let (status, body) = crate::util::post_json(
        &format!("{}/api/runs", server.base),
        Some(TOKEN),
        &json!({ "playbook": "echo", "params": { "who": "a\u{0}b" } }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("parameter `who`") && text.contains("NUL character"),
        "{text}"
    );
    // A default with one is refused by `runbook validate`.
    w.playbook(
        "echo",
        "name: echo\nparams:\n  who: { type: string, default: \"a\\0b\" }\nsteps:\n  - id: say\n    sql: \"SELECT {{ params.who }} AS who\"\n",
    );
    let out = w.run(&["validate"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stdout.contains("NUL character"), "{out:?}");
}

#[tokio::test]
async fn typed_binds_compare_with_timestamptz_and_uuid_columns() {
    let pg = PgDb::new().await;
    let db = store(&pg.url).await;
    db.sql(
        "CREATE TABLE orders (id uuid PRIMARY KEY, created_at timestamptz NOT NULL, qty int NOT NULL)",
        vec![],
    )
    .await
    .unwrap();
    db.sql(
        "INSERT INTO orders VALUES \
         ('0e9b0c36-5d6b-4a8e-9f3a-1b2c3d4e5f60', '2024-05-01T10:00:00Z', 3), \
         ('7c1d6a52-0000-4000-8000-000000000001', '2024-05-01T13:00:00Z', 5)",
        vec![],
    )
    .await
    .unwrap();
    let w = Workdir::new();
    w.playbook(
        "orders",
        r#"name: orders
params:
  id: { type: string }
  since: { type: string }
  min_qty: { type: string }
steps:
  - id: by_id
    sql: "SELECT qty FROM orders WHERE id = {{ params.id | uuid }}"
  - id: since
    sql: "SELECT qty FROM orders WHERE created_at > {{ params.since | timestamptz }} AND qty >= {{ params.min_qty | int }}"
"#,
    );
    let out = w.run(&[
        "--store",
        &pg.url,
        "run",
        "orders",
        "-p",
        "id=0E9B0C36-5D6B-4A8E-9F3A-1B2C3D4E5F60",
        "-p",
        "since=2024-05-01T14:00:00+02:00",
        "-p",
        "min_qty=4",
        "-o",
        "json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let steps = &out.run()["steps"];
    assert_eq!(steps["by_id"]["rows"], json!([{ "qty": 3 }]));
    assert_eq!(steps["since"]["rows"], json!([{ "qty": 5 }]));
    // A value that is not a UUID fails the step with a message, not a database error.
    let out = w.run(&[
        "--store",
        &pg.url,
        "run",
        "orders",
        "-p",
        "id=42",
        "-p",
        "since=2024-05-01T00:00:00Z",
        "-p",
        "min_qty=1",
        "-o",
        "json",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    crate::util::assert_run_error(&out.run(), "`42` is not a UUID");
}

/// A statement that passes for a read (it starts with `SELECT`) but carries a second statement
/// that writes: the read runs read-only on both stores, so the write fails and nothing is
/// deleted; on SQLite the connection takes writes again afterwards.
#[tokio::test]
async fn a_read_that_hides_a_write_writes_nothing_on_either_store() {
    let pg = PgDb::new().await;
    let w = Workdir::new();
    let sqlite = w.sqlite_url();
    w.playbook(
        "sneaky",
        "name: sneaky\nsteps:\n  - id: look\n    sql: \"SELECT 1 AS one; DELETE FROM command_queue\"\n",
    );
    w.playbook(
        "honest",
        "name: honest\nsteps:\n  - id: note\n    sql: \"UPDATE command_queue SET priority = 7\"\n",
    );
    for url in [sqlite.as_str(), pg.url.as_str()] {
        w.enqueue(url, "user", "u1", "user.update", "{}");
        let out = w.run(&["--store", url, "run", "sneaky", "-o", "json"]);
        assert_eq!(out.code, 1, "{url}: {out:?}");
        let db = store(url).await;
        assert_eq!(
            scalar(&db, "SELECT COUNT(*) FROM command_queue").await,
            1,
            "{url}: the hidden DELETE ran"
        );
        // A change after it writes as usual.
        let out = w.run(&["--store", url, "run", "honest", "-o", "json"]);
        assert_eq!(out.code, 0, "{url}: {out:?}");
        assert_eq!(
            scalar(&db, "SELECT COUNT(*) FROM command_queue WHERE priority = 7").await,
            1,
            "{url}"
        );
        db.close().await;
    }
}
