//! `sql` steps and the store on the real PostgreSQL: column types decoded to JSON, the seed's
//! diagnosis queries verbatim, and the weekly vacuum.

use serde_json::json;

use crate::util::{
    assert_run_error, eventually, filler_runs, rows, scalar, seq_scanned, store, PgDb, Workdir,
};

#[tokio::test]
async fn rows_are_decoded_by_column_type() {
    let db = PgDb::new().await;
    let w = Workdir::new();
    w.playbook(
        "types",
        r#"name: types
steps:
  - id: t
    sql: |
      SELECT 1::int2 AS small, 2::int4 AS int, 3::int8 AS big, 1.5::float8 AS float,
             12.50::numeric AS num, 10::numeric AS whole, TRUE AS yes, 'txt'::text AS text,
             '2026-01-02T03:04:05.678Z'::timestamptz AS ts, '2026-01-02'::date AS day,
             INTERVAL '1 day 2 hours' AS iv, INTERVAL '5 minutes' AS five,
             '{"a": [1, 2]}'::jsonb AS doc, NULL::text AS nothing,
             '127.0.0.1'::inet AS ip, ARRAY['a', 'b'] AS arr
"#,
    );
    let out = w.run(&["--store", &db.url, "run", "types", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let row = &out.run()["steps"]["t"]["rows"][0];
    assert_eq!(
        row,
        &json!({
            "small": 1, "int": 2, "big": 3, "float": 1.5, "num": 12.5, "whole": 10, "yes": true, "text": "txt",
            "ts": "2026-01-02T03:04:05.678Z", "day": "2026-01-02", "iv": "1 day 02:00:00", "five": "00:05:00",
            "doc": {"a": [1, 2]}, "nothing": null, "ip": "127.0.0.1", "arr": ["a", "b"]
        })
    );
}

#[tokio::test]
async fn the_seeds_diagnosis_queries_run_verbatim_on_postgres() {
    let db = PgDb::new().await;
    let w = Workdir::new();
    // Verbatim from the seed runbook (incidents 1, 3, 4, 5).
    w.playbook(
        "seed",
        r#"name: seed
steps:
  - id: depth
    sql: |
      SELECT priority, COUNT(*),
             MIN(created_at) as oldest,
             MAX(created_at) as newest
      FROM command_queue
      WHERE status = 'pending'
      GROUP BY priority;
  - id: stuck
    sql: |
      SELECT * FROM command_queue
      WHERE status = 'pending'
        AND created_at < NOW() - INTERVAL '1 hour'
      ORDER BY created_at
      LIMIT 20;
  - id: top_errors
    sql: |
      SELECT error_message, COUNT(*) as count
      FROM command_queue
      WHERE status = 'dlq'
      GROUP BY error_message
      ORDER BY count DESC
      LIMIT 10;
  - id: by_entity
    sql: |
      SELECT entity, COUNT(*) as count
      FROM command_queue
      WHERE status = 'dlq'
      GROUP BY entity
      ORDER BY count DESC;
  - id: activity
    sql: |
      SELECT * FROM pg_stat_activity
      WHERE state = 'active'
        AND query LIKE '%command_queue%'
        AND query_start < NOW() - INTERVAL '30 seconds';
  - id: locks
    sql: |
      SELECT entity, entity_id,
             locked_at,
             NOW() - locked_at as lock_duration
      FROM work_state
      WHERE state = 'updating'
      ORDER BY locked_at;
"#,
    );
    assert_eq!(w.run(&["--store", &db.url, "queue", "stats"]).code, 0);
    let pool = store(&db.url).await;
    pool.sql(
        "INSERT INTO command_queue (entity, entity_id, command_type, priority, created_at) VALUES ('user', '1', 'user.update', 5, NOW() - INTERVAL '2 hours'), ('user', '2', 'user.update', 5, NOW())",
        vec![],
    )
    .await
    .unwrap();
    pool.sql(
        "INSERT INTO work_state (entity, entity_id, state, locked_at) VALUES ('user', '1', 'updating', NOW() - INTERVAL '7 minutes')",
        vec![],
    )
    .await
    .unwrap();
    let out = w.run(&["--store", &db.url, "run", "seed", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let steps = &out.run()["steps"];
    assert_eq!(steps["depth"]["rows"][0]["count"], 2);
    assert_eq!(steps["stuck"]["rows"].as_array().unwrap().len(), 1);
    assert_eq!(steps["stuck"]["rows"][0]["entity_id"], "1");
    assert!(
        steps["locks"]["rows"][0]["lock_duration"]
            .as_str()
            .unwrap()
            .starts_with("00:07:"),
        "{steps}"
    );
}

#[tokio::test]
async fn weekly_vacuum_on_postgres() {
    let db = PgDb::new().await;
    let w = Workdir::new();
    w.shipped("weekly-vacuum");
    assert_eq!(w.run(&["--store", &db.url, "queue", "stats"]).code, 0);
    let pool = store(&db.url).await;
    pool.sql(
        "INSERT INTO command_queue (entity, entity_id, command_type, status, updated_at) VALUES \
         ('u', '1', 't', 'completed', NOW() - INTERVAL '8 days'), ('u', '2', 't', 'completed', NOW()), \
         ('u', '3', 't', 'dlq', NOW() - INTERVAL '9 days'), ('u', '4', 't', 'dlq', NOW() - INTERVAL '8 days')",
        vec![],
    )
    .await
    .unwrap();
    let out = w.run(&["--store", &db.url, "run", "weekly-vacuum"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("removed 1 completed commands and 2 DLQ entries"),
        "{out:?}"
    );
    let left = scalar(&pool, "SELECT COUNT(*) FROM command_queue").await;
    assert_eq!(left, 1);
    let audited = scalar(&pool, "SELECT SUM(rows)::int8 FROM runbook_audit").await;
    assert_eq!(audited, 3);
    pool.close().await;
}

#[tokio::test]
async fn named_datasources_read_and_read_only_refuses_writes() {
    let db = PgDb::new().await;
    let w = Workdir::new().env("PLATFORM_DATABASE_URL", &db.url);
    w.config("datasources:\n  platform: { url_env: PLATFORM_DATABASE_URL, read_only: true }\n");
    let pool = store(&db.url).await;
    pool.sql("CREATE TABLE accounts (id int, name text)", vec![])
        .await
        .unwrap();
    pool.sql("INSERT INTO accounts VALUES (1, 'ada')", vec![])
        .await
        .unwrap();
    w.playbook(
        "ds",
        "name: ds\nsteps:\n  - id: read\n    sql: { datasource: platform, query: \"SELECT name FROM accounts WHERE id = {{ 1 }}\" }\n  - id: write\n    sql: { datasource: platform, query: \"DELETE FROM accounts\" }\n",
    );
    // The store stays the embedded SQLite file; the datasource is PostgreSQL.
    let out = w.run(&["run", "ds", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let run = out.run();
    assert_eq!(run["steps"]["read"]["rows"], json!([{ "name": "ada" }]));
    assert_eq!(run["failed_step"], "write");
    assert_run_error(&run, "read-only transaction");
    let n = scalar(&pool, "SELECT COUNT(*) FROM accounts").await;
    assert_eq!(n, 1);
    pool.close().await;
}

#[tokio::test]
async fn maintenance_ops_run_the_backends_own_statements_and_are_audited() {
    let db = PgDb::new().await;
    let w = Workdir::new();
    w.playbook(
        "maint",
        "name: maint\nsteps:\n  - id: analyze\n    runtime: { op: maintenance, action: analyze }\n  - id: reindex\n    runtime: { op: maintenance, action: reindex, tables: [command_queue] }\n  - id: full\n    runtime: { op: maintenance, action: vacuum_full }\n  - id: nope\n    runtime: { op: maintenance, action: analyze, tables: [pg_class] }\n",
    );
    // What the database itself shows of the maintenance: VACUUM FULL and REINDEX write each table
    // and index anew (a new relfilenode), ANALYZE counts in pg_stat_user_tables.
    assert_eq!(w.run(&["--store", &db.url, "queue", "stats"]).code, 0);
    let pool = store(&db.url).await;
    const FILES: &str = "SELECT c.relname AS name, c.relfilenode::bigint AS file FROM pg_class c \
         WHERE c.relname IN ('command_queue', 'outbox_final', 'work_state') \
            OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'command_queue'::regclass) \
         ORDER BY c.relname";
    let before = rows(&pool, FILES).await;
    assert!(
        before.len() > 3,
        "the tables and command_queue's indexes: {before:?}"
    );
    for store in [db.url.as_str(), "sqlite://runbook.db"] {
        let out = w.run(&["--store", store, "run", "maint", "-o", "json"]);
        assert_eq!(out.code, 1, "{out:?}");
        let run = out.run();
        assert_eq!(
            run["failed_step"], "nope",
            "only the runtime's own tables: {run}"
        );
        let full = run["steps"]["full"]["output"]["statements"].clone();
        if store.starts_with("postgres") {
            assert_eq!(
                full,
                json!([
                    "VACUUM FULL ANALYZE command_queue",
                    "VACUUM FULL ANALYZE outbox_final",
                    "VACUUM FULL ANALYZE work_state"
                ])
            );
            assert_eq!(
                run["steps"]["reindex"]["output"]["statements"],
                json!(["REINDEX TABLE command_queue"])
            );
        } else {
            assert_eq!(full, json!(["VACUUM"]));
        }
    }
    let after = rows(&pool, FILES).await;
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b["name"], a["name"]);
        assert_ne!(
            b["file"], a["file"],
            "{} was rewritten: {b} / {a}",
            b["name"]
        );
    }
    eventually(20, "ANALYZE to show in pg_stat_user_tables", || async {
        (scalar(
            &pool,
            "SELECT COUNT(*) FROM pg_stat_user_tables \
             WHERE relname IN ('command_queue', 'outbox_final', 'work_state') AND analyze_count > 0",
        )
        .await
            == 3)
            .then_some(())
    })
    .await;
    let audited = scalar(
        &pool,
        "SELECT COUNT(*) FROM runbook_audit WHERE op = 'maintenance'",
    )
    .await;
    assert_eq!(audited, 3);
    pool.close().await;
}

#[tokio::test]
async fn a_command_finds_its_run_by_index_however_many_runs_came_after_it() {
    // A `runbook.run` command that comes back (a retry, a resume after a crash) first looks up
    // its run by command id (`runs::latest_for_command`). Without an index on the command id the
    // database could only read the runs, all of them or newest first until it met the one: here
    // a queued run is followed by 100,000 newer ones, and its command finds it without a
    // whole-table scan (without migration 0012's index this read all 100,001 rows).
    const FILL: i64 = 100_000;
    let pg = PgDb::new().await;
    let db = store(&pg.url).await;
    db.migrate().await.unwrap();
    db.sql(
        "INSERT INTO runbook_runs (playbook, trigger, params, status, command_id) \
         VALUES ('p', '{}', '{}', 'queued', 42)",
        vec![],
    )
    .await
    .unwrap();
    filler_runs(&db, FILL).await;
    db.sql("ANALYZE runbook_runs", vec![]).await.unwrap();
    let found = runbook::store::runs::latest_for_command(&db, 42)
        .await
        .unwrap();
    assert_eq!(
        found.map(|(_, status)| status.to_string()).as_deref(),
        Some("queued")
    );
    assert_eq!(
        runbook::store::runs::latest_for_command(&db, 7)
            .await
            .unwrap(),
        None
    );
    // A connection's statistics are written as it ends.
    db.close().await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let db = store(&pg.url).await;
    let read = seq_scanned(&db, "runbook_runs").await;
    assert!(
        read < FILL,
        "{read} runs read by whole-table scans to find two commands' runs among {FILL}"
    );
}
