//! Issue 10: lock-expiry releases only the locks whose holder is gone (the seed's force unlock),
//! never the lock of a command still processing under a live lease, however old, on SQLite and
//! PostgreSQL; each release leaves its audit record.

use runbook::store::Db;

use crate::util::{rows, scalar, store, PgDb, Workdir};

/// "Now plus `secs`" in the store's SQL (negative: in the past).
fn at(db: &Db, secs: i64) -> String {
    match db {
        Db::Postgres(_) => format!("(NOW() + INTERVAL '{secs} seconds')"),
        Db::Sqlite(_) => format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '{secs} seconds')"),
    }
}

/// One command in `status` with its lease ending `lease_secs` from now, and the lock it holds on
/// `order/<entity_id>`, taken `locked_secs_ago` ago.
async fn command_with_lock(
    db: &Db,
    entity_id: &str,
    status: Option<&str>,
    lease_secs: i64,
    locked_secs_ago: u64,
) {
    let command_id = match status {
        Some(status) => {
            let r = db
                .sql(
                    &format!(
                        "INSERT INTO command_queue (entity, entity_id, command_type, status, locked_by, locked_until) \
                         VALUES ('order', $1, 'order.pay', $2, 'worker-1', {}) RETURNING id",
                        at(db, lease_secs)
                    ),
                    vec![entity_id.into(), status.into()],
                )
                .await
                .unwrap();
            r.rows[0]["id"].clone()
        }
        None => serde_json::Value::Null,
    };
    db.sql(
        &format!(
            "INSERT INTO work_state (entity, entity_id, state, locked_at, locked_by, command_id) \
             VALUES ('order', $1, 'updating', {}, 'worker-1', CAST($2 AS BIGINT))",
            at(db, -(locked_secs_ago as i64))
        ),
        vec![entity_id.into(), command_id],
    )
    .await
    .unwrap();
}

async fn only_orphaned_locks_are_released(url: &str) {
    let w = Workdir::new();
    w.shipped("lock-expiry");
    w.create_store(url);
    let db = store(url).await;
    // Live: processing, lease fresh, lock taken 30 minutes ago (past release_after, 10m).
    command_with_lock(&db, "live", Some("processing"), 300, 1800).await;
    // Orphaned: the holder's lease ran out a minute ago; the holder completed; no holder at all.
    command_with_lock(&db, "lease-expired", Some("processing"), -60, 1800).await;
    command_with_lock(&db, "completed", Some("completed"), -600, 1800).await;
    command_with_lock(&db, "no-holder", None, 0, 1800).await;
    // Orphaned but young: left for now (under release_after).
    command_with_lock(&db, "young", Some("completed"), -60, 60).await;

    let run_url = url.to_owned();
    let (out, _w) = tokio::task::spawn_blocking(move || {
        let out = w.run(&[
            "--store",
            &run_url,
            "run",
            "lock-expiry",
            "--output",
            "json",
        ]);
        (out, w)
    })
    .await
    .unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.run();
    assert_eq!(run["status"], "succeeded", "{run:#}");

    let held = rows(
        &db,
        "SELECT entity_id FROM work_state WHERE state = 'updating' ORDER BY entity_id",
    )
    .await;
    let held: Vec<&str> = held
        .iter()
        .filter_map(|r| r["entity_id"].as_str())
        .collect();
    assert_eq!(held, ["live", "young"], "locks still held");
    // Released locks are idle rows, not deleted ones (their expiry counts stay).
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM work_state WHERE state = 'idle' AND locked_at IS NULL AND command_id IS NULL"
        )
        .await,
        3
    );
    // One audit record, with the filter and the three locks it released.
    let audit = rows(
        &db,
        "SELECT actor, filter, rows FROM runbook_audit WHERE op = 'release_orphaned_locks'",
    )
    .await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["rows"], 3, "{audit:?}");
    assert!(audit[0]["filter"].to_string().contains("10m"), "{audit:?}");
    // release_stale_locks, which lock-expiry no longer uses, was not called.
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM runbook_audit WHERE op = 'release_stale_locks'"
        )
        .await,
        0
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_expiry_releases_only_orphaned_locks_on_sqlite() {
    let w = Workdir::new();
    only_orphaned_locks_are_released(&w.sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_expiry_releases_only_orphaned_locks_on_postgres() {
    let pg = PgDb::new().await;
    only_orphaned_locks_are_released(&pg.url).await;
}
