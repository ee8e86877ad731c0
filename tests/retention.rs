//! Retention: the weekly vacuum's `prune_records` deletes finished runs (with their attempts and
//! approvals), schedule ticks and playbook versions past `streaming.retention`, keeps what is
//! recent, unfinished or still needed, and audits each deletion; on SQLite and PostgreSQL.

use serde_json::{json, Value as Json};

use runbook::store::Db;

use crate::util::{rows, scalar, store, PgDb, Workdir};

/// `days` ago in the store's timestamp type.
fn ago(db: &Db, days: u32) -> String {
    match db {
        Db::Sqlite(_) => format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-{days} days')"),
        Db::Postgres(_) => format!("(NOW() - INTERVAL '{days} days')"),
    }
}

/// A run of `playbook` in `status`, finished `days` ago (or not finished), with one step attempt
/// and one approval; returns its id.
async fn run(db: &Db, playbook: &str, status: &str, finished: Option<u32>, version: &str) -> i64 {
    let finished_at = finished.map_or("NULL".to_owned(), |d| ago(db, d));
    let sql = format!(
        "INSERT INTO runbook_runs (playbook, trigger, params, status, finished_at, version) \
         VALUES ($1, '{{}}', '{{}}', $2, {finished_at}, $3) RETURNING id"
    );
    let id = db
        .sql(&sql, vec![json!(playbook), json!(status), json!(version)])
        .await
        .unwrap()
        .rows[0]["id"]
        .as_i64()
        .unwrap();
    let started = ago(db, finished.unwrap_or(0) + 1);
    db.sql(
        &format!(
            "INSERT INTO runbook_step_attempts (run_id, step_id, attempt, status, started_at, duration_ms) \
             VALUES ($1, 's', 1, 'succeeded', {started}, 5)"
        ),
        vec![json!(id)],
    )
    .await
    .unwrap();
    db.sql(
        "INSERT INTO runbook_approvals (run_id, step_id, decision, actor) VALUES ($1, 's', 'approved', 'cli')",
        vec![json!(id)],
    )
    .await
    .unwrap();
    id
}

async fn tick(db: &Db, playbook: &str, days: u32) {
    let at = ago(db, days);
    db.sql(
        &format!(
            "INSERT INTO runbook_schedule_ticks (playbook, scheduled_at, fired_at, outcome, fired_by) \
             VALUES ($1, {at}, {at}, 'run', 'test')"
        ),
        vec![json!(playbook)],
    )
    .await
    .unwrap();
}

async fn version(db: &Db, hash: &str, days: u32) {
    let at = ago(db, days);
    db.sql(
        &format!(
            "INSERT INTO runbook_playbook_versions (hash, name, text, first_seen) VALUES ($1, 'p', 'name: p', {at})"
        ),
        vec![json!(hash)],
    )
    .await
    .unwrap();
}

/// An alert group first seen `days` ago.
async fn group(db: &Db, hash: &str, days: u32) {
    let at = ago(db, days);
    db.sql(
        &format!(
            "INSERT INTO runbook_alert_groups (hash, alerts, first_seen) VALUES ($1, '[]', {at})"
        ),
        vec![json!(hash)],
    )
    .await
    .unwrap();
}

/// A notification received `days` ago carrying one alert occurrence (fingerprint `fp`), last
/// received then, with the key of the run it started (`run_id`).
async fn notification(db: &Db, fp: &str, days: u32, run_id: i64) {
    let at = ago(db, days);
    let (t, f) = match db {
        Db::Sqlite(_) => ("1", "'[]'"),
        Db::Postgres(_) => ("TRUE", "'[]'::jsonb"),
    };
    let statements = [
        format!(
            "INSERT INTO runbook_alert_notifications (received_at, receiver, status, group_key, external_url, alerts, outcomes) \
             VALUES ({at}, 'runbook', 'firing', $1, '', 1, {f})"
        ),
        format!(
            "INSERT INTO runbook_alerts (fingerprint, starts_at, alertname, labels, annotations, status, generator_url, first_received_at, last_received_at, matched) \
             VALUES ($1, '2026-01-01T00:00:00Z', 'A', '{{}}', '{{}}', 'firing', '', {at}, {at}, {t})"
        ),
    ];
    for sql in statements {
        db.sql(&sql, vec![json!(fp)]).await.unwrap();
    }
    db.sql(
        &format!(
            "INSERT INTO runbook_alert_runs (playbook, fingerprint, starts_at, kind, run_id, decided_at) \
             VALUES ('p', $1, '2026-01-01T00:00:00Z', 'firing', $2, {at})"
        ),
        vec![json!(fp), json!(run_id)],
    )
    .await
    .unwrap();
}

async fn strings(db: &Db, sql: &str) -> Vec<Json> {
    rows(db, sql)
        .await
        .into_iter()
        .map(|r| r.as_object().unwrap().values().next().unwrap().clone())
        .collect()
}

async fn prunes_what_retention_says(url: &str) {
    let w = Workdir::new();
    w.shipped("weekly-vacuum");
    // Runs kept 30 days (the default), ticks 3 days.
    let config = std::fs::read_to_string(w.path().join("runbook.yaml")).unwrap();
    assert!(
        config.contains("\nstreaming:\n"),
        "the shipped config has a streaming section"
    );
    let config = config.replacen(
        "\nstreaming:\n",
        "\nstreaming:\n  retention: { ticks: 3d, notifications: 5d }\n",
        1,
    );
    w.config(&config);
    w.create_store(url);
    let db = store(url).await;
    let old = run(&db, "p", "succeeded", Some(40), "v-old").await;
    run(&db, "p", "failed", Some(31), "v-old").await;
    let recent = run(&db, "p", "failed", Some(2), "v-kept").await;
    let open = run(&db, "p", "waiting_approval", None, "v-kept").await;
    for (playbook, days) in [("a", 10), ("a", 9), ("a", 1), ("b", 5), ("c", 8), ("c", 6)] {
        tick(&db, playbook, days).await;
    }
    notification(&db, "old-alert", 6, old).await;
    notification(&db, "new-alert", 1, recent).await;
    // Queue samples (Unix seconds) kept as long as ticks: the 4-day-old one goes.
    let now = chrono::Utc::now().timestamp();
    for days in [4, 2] {
        db.sql(
            "INSERT INTO runbook_queue_samples (at, depths, total, oldest_age_secs) VALUES ($1, '{}', 0, NULL)",
            vec![json!(now - days * 86_400)],
        )
        .await
        .unwrap();
    }
    for (hash, days) in [
        ("v-old", 40),
        ("v-kept", 40),
        ("v-queued", 40),
        ("v-new", 1),
    ] {
        version(&db, hash, days).await;
    }
    for (hash, days) in [("g-old", 6), ("g-queued", 6), ("g-new", 1)] {
        group(&db, hash, days).await;
    }
    w.enqueue(
        url,
        "runbook",
        "p",
        "runbook.run",
        r#"{"playbook": "p", "version": "v-queued", "alerts_ref": "g-queued"}"#,
    );

    let out = w.run(&["--store", url, "run", "weekly-vacuum", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let pruned = &out.run()["steps"]["prune_records"]["output"];
    assert_eq!(
        pruned["deleted"],
        json!({ "runs": 2, "ticks": 3, "playbook_versions": 1, "notifications": 1, "alerts": 1, "alert_runs": 1, "alert_groups": 1, "queue_samples": 1 }),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("pruned 2 runs, 3 schedule ticks and 1 alert notifications"),
        "{out:?}"
    );

    // The finished runs older than 30 days went, with their attempts and approvals.
    let left = scalar(
        &db,
        &format!("SELECT COUNT(*) FROM runbook_runs WHERE id IN ({old}, {recent}, {open})"),
    )
    .await;
    assert_eq!(left, 2);
    let orphans = "SELECT COUNT(*) FROM runbook_step_attempts a WHERE NOT EXISTS (SELECT 1 FROM runbook_runs r WHERE r.id = a.run_id)";
    assert_eq!(scalar(&db, orphans).await, 0);
    let approvals = scalar(&db, "SELECT COUNT(*) FROM runbook_approvals").await;
    assert_eq!(approvals, 2);
    // Ticks older than 3 days went, except each playbook's newest.
    let ticks = strings(
        &db,
        "SELECT playbook || ':' || CAST(COUNT(*) AS TEXT) FROM runbook_schedule_ticks GROUP BY playbook ORDER BY playbook",
    )
    .await;
    assert_eq!(ticks, [json!("a:1"), json!("b:1"), json!("c:1")]);
    // Versions: the one only pruned runs ran went; one a kept run ran, one a queued command
    // waits for, and a recent one stay (with weekly-vacuum's own).
    let versions = strings(
        &db,
        "SELECT hash FROM runbook_playbook_versions WHERE name = 'p' ORDER BY hash",
    )
    .await;
    assert_eq!(
        versions,
        [json!("v-kept"), json!("v-new"), json!("v-queued")]
    );
    // Notifications and alert occurrences older than 5 days went, with the old run key.
    for table in [
        "runbook_alert_notifications",
        "runbook_alerts",
        "runbook_alert_runs",
    ] {
        let n = scalar(&db, &format!("SELECT COUNT(*) FROM {table}")).await;
        assert_eq!(n, 1, "{table}");
    }
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM runbook_queue_samples").await,
        1,
        "the 2-day-old sample stays"
    );
    let kept = strings(&db, "SELECT fingerprint FROM runbook_alert_runs").await;
    assert_eq!(kept, [json!("new-alert")]);
    // Alert groups: the old one no command refers to went; the one a queued command's run will
    // read, and a recent one, stay.
    let groups = strings(&db, "SELECT hash FROM runbook_alert_groups ORDER BY hash").await;
    assert_eq!(groups, [json!("g-new"), json!("g-queued")]);
    // Each table's deletion is audited with its row count.
    let audits = rows(
        &db,
        "SELECT actor, filter, rows FROM runbook_audit WHERE op = 'prune_records' ORDER BY id",
    )
    .await;
    let filters: Vec<(Json, Json)> = audits
        .iter()
        .map(|a| (a["filter"]["table"].clone(), a["rows"].clone()))
        .collect();
    assert_eq!(
        filters,
        [
            (json!("runs"), json!(2)),
            (json!("ticks"), json!(3)),
            (json!("playbook_versions"), json!(1)),
            (json!("notifications"), json!(1)),
            (json!("alerts"), json!(1)),
            (json!("alert_runs"), json!(1)),
            (json!("alert_groups"), json!(1)),
            (json!("queue_samples"), json!(1))
        ]
    );
    assert_eq!(audits[1]["filter"]["older_than"], "3days");
    assert!(
        audits[0]["actor"]
            .as_str()
            .unwrap()
            .contains("weekly-vacuum"),
        "{audits:?}"
    );
    db.close().await;
}

#[tokio::test]
async fn prune_records_on_sqlite() {
    let w = Workdir::new();
    prunes_what_retention_says(&w.sqlite_url()).await;
}

#[tokio::test]
async fn prune_records_on_postgres() {
    let pg = PgDb::new().await;
    prunes_what_retention_says(&pg.url).await;
}
