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

/// A window that is certainly not now: all of the day after tomorrow (UTC).
fn another_day() -> String {
    let day = (chrono::Utc::now() + chrono::Duration::days(2)).format("%a");
    format!("{day} 00:00-00:00 UTC")
}

/// monthly-maintenance on `url`: VACUUM FULL runs in its window (with lock_timeout) and outside
/// it nothing changes and the run says why.
async fn monthly_maintenance_keeps_to_its_window(url: &str) {
    let w = Workdir::new();
    w.shipped("monthly-maintenance");
    w.create_store(url);
    let db = store(url).await;
    let run = |w: Workdir, window: String| {
        let url = url.to_owned();
        async move {
            tokio::task::spawn_blocking(move || {
                let out = w.run(&[
                    "--store",
                    &url,
                    "run",
                    "monthly-maintenance",
                    "--param",
                    "require_approval=false",
                    "--param",
                    &format!("window={window}"),
                    "--output",
                    "json",
                ]);
                (out, w)
            })
            .await
            .unwrap()
        }
    };
    let maintenance = "SELECT COUNT(*) FROM runbook_audit WHERE op = 'maintenance'";

    let (out, w) = run(w, another_day()).await;
    let shown = out.run();
    assert_eq!(shown["status"], "succeeded", "{shown:#}");
    assert_eq!(scalar(&db, maintenance).await, 0, "{shown:#}");
    assert!(
        out.stdout.contains("is outside its window"),
        "{}",
        out.stdout
    );

    // Any time is in `00:00-00:00`.
    let (out, _w) = run(w, "00:00-00:00 Europe/Prague".into()).await;
    let shown = out.run();
    assert_eq!(shown["status"], "succeeded", "{shown:#}");
    let audit = rows(
        &db,
        "SELECT filter FROM runbook_audit WHERE op = 'maintenance'",
    )
    .await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    let filter = audit[0]["filter"].to_string();
    assert!(
        filter.contains("vacuum_full") && filter.contains("5s"),
        "{filter}"
    );
    assert!(out.stdout.contains("VACUUM FULL done in"), "{}", out.stdout);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn monthly_maintenance_keeps_to_its_window_on_postgres() {
    let pg = PgDb::new().await;
    monthly_maintenance_keeps_to_its_window(&pg.url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn monthly_maintenance_keeps_to_its_window_on_sqlite() {
    let w = Workdir::new();
    monthly_maintenance_keeps_to_its_window(&w.sqlite_url()).await;
}
