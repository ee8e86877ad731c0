//! Issue 10: the runtime's maintenance on PostgreSQL: `REINDEX TABLE CONCURRENTLY` outside a
//! transaction block, and `lock_timeout`, so VACUUM FULL or REINDEX give up rather than queue the
//! workers behind them; a REINDEX CONCURRENTLY that gives up leaves no invalid index behind.

use sqlx::Connection;

use crate::util::{rows, scalar, store, PgDb, Workdir};

const PLAYBOOK: &str = r#"
name: tune
params:
  action: { type: string, default: reindex }
steps:
  - id: m
    runtime:
      op: maintenance
      action: "{{ params.action }}"
      tables: [command_queue]
      concurrently: true
      lock_timeout: 1s
"#;

/// `runbook run tune` on `url` with `action`, as JSON.
async fn run_tune(w: Workdir, url: &str, action: &str) -> (serde_json::Value, Workdir) {
    let (url, param) = (url.to_owned(), format!("action={action}"));
    tokio::task::spawn_blocking(move || {
        let out = w.run(&[
            "--store", &url, "run", "tune", "--param", &param, "--output", "json",
        ]);
        (out.run(), w)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn reindex_runs_concurrently_and_gives_up_after_lock_timeout_on_postgres() {
    let pg = PgDb::new().await;
    let w = Workdir::new();
    w.playbook("tune", PLAYBOOK);
    w.create_store(&pg.url);
    let db = store(&pg.url).await;

    // Nothing in the way: REINDEX TABLE CONCURRENTLY runs (it refuses a transaction block).
    let (run, w) = run_tune(w, &pg.url, "reindex").await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert!(
        run.to_string()
            .contains("REINDEX TABLE CONCURRENTLY command_queue"),
        "{run:#}"
    );

    // An invalid index as a failed REINDEX CONCURRENTLY leaves one (a unique build that failed).
    for id in ["1", "2"] {
        db.sql(
            "INSERT INTO command_queue (entity, entity_id, command_type) VALUES ('order', $1, 'order.pay')",
            vec![id.into()],
        )
        .await
        .unwrap();
    }
    let mut other = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    let failed = sqlx::query(
        "CREATE UNIQUE INDEX CONCURRENTLY command_queue_claim_ccnew ON command_queue (entity)",
    )
    .execute(&mut other)
    .await;
    assert!(failed.is_err(), "the unique build should fail");
    let invalid = "SELECT COUNT(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                   WHERE NOT i.indisvalid AND c.relname LIKE 'command_queue%'";
    assert_eq!(scalar(&db, invalid).await, 1);

    // A session holds a lock REINDEX CONCURRENTLY needs: the run gives up after lock_timeout
    // instead of waiting for it.
    let mut tx = other.begin().await.unwrap();
    sqlx::query("LOCK TABLE command_queue IN SHARE UPDATE EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let (run, w) = run_tune(w, &pg.url, "reindex").await;
    tx.rollback().await.unwrap();
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(run.to_string().contains("lock timeout"), "{run:#}");
    // The invalid index cannot be dropped while the table is locked: the error names it.
    assert!(
        run.to_string().contains("public.command_queue_claim_ccnew"),
        "{run:#}"
    );
    assert_eq!(scalar(&db, invalid).await, 1);
    let audit = rows(
        &db,
        "SELECT filter FROM runbook_audit WHERE op = 'maintenance' ORDER BY id",
    )
    .await;
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert!(
        audit[1]["filter"].to_string().contains("lock timeout"),
        "{audit:?}"
    );
    // The lock gone, the next REINDEX CONCURRENTLY drops it first and succeeds.
    let (run, w) = run_tune(w, &pg.url, "reindex").await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(scalar(&db, invalid).await, 0);

    // VACUUM FULL needs an exclusive lock; a reader in a long transaction holds it off, and the
    // vacuum gives up after lock_timeout instead of queueing every worker behind it.
    let mut tx = other.begin().await.unwrap();
    sqlx::query("SELECT COUNT(*) FROM command_queue")
        .execute(&mut *tx)
        .await
        .unwrap();
    let (run, _w) = run_tune(w, &pg.url, "vacuum_full").await;
    tx.rollback().await.unwrap();
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(run.to_string().contains("lock timeout"), "{run:#}");
    db.close().await;
}
