//! The open-run counter (`runbook_open_runs`) that `guard.concurrency` decides on (issue 7's
//! ingest work): it must equal the runs of each playbook that are not over, whatever moved them,
//! on both stores. Each test walks runs through the store's own functions (created queued, started,
//! waiting for approval, cancelled, finished, interrupted after their lease ran out, pruned) and
//! after every step compares the counter with `COUNT(*)` of the open runs.

use serde_json::{json, Value as Json};

use crate::{
    duration::Dur,
    status::RunStatus,
    store::{
        guards::{self, Limits},
        migrate::{self, MIGRATIONS},
        runs::{self, NewRun},
        Db,
    },
};

async fn rows(db: &Db, sql: &str) -> Vec<Json> {
    db.sql(sql, vec![]).await.unwrap().rows
}

/// A fresh database on the PostgreSQL server of `RUNBOOK_TEST_PG` (the test fails without one),
/// dropped at the end of the test.
struct PgDb {
    url: String,
    server: String,
    name: String,
}

impl PgDb {
    async fn new() -> PgDb {
        let server = std::env::var("RUNBOOK_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("runbook_unit_{}_{}", std::process::id(), fastrand::u64(..));
        let admin = sqlx::PgPool::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is required for this test ({server}): {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let base = server
            .rsplit_once('/')
            .map_or(server.clone(), |(b, _)| b.to_owned());
        PgDb {
            url: format!("{base}/{name}"),
            server,
            name,
        }
    }

    async fn drop_db(self, db: Db) {
        db.close().await;
    }
}

impl Drop for PgDb {
    /// Drops the database however the test ended (a failed assertion too), on a thread of its own
    /// because `Drop` cannot await.
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(admin) = sqlx::PgPool::connect(&server).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(&drop).execute(&admin).await;
                }
            })
        })
        .join();
    }
}

async fn sqlite() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("runbook.db").display());
    let db = Db::connect(&url, false, 4).await.unwrap();
    db.migrate().await.unwrap();
    (dir, db)
}

async fn postgres(pg: &PgDb) -> Db {
    let db = Db::connect(&pg.url, false, 4).await.unwrap();
    db.migrate().await.unwrap();
    db
}

fn open_list() -> String {
    RunStatus::ALL
        .iter()
        .filter(|s| !s.is_final())
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The counter and the count, per playbook, as `[playbook, counter, count]` (a playbook with a
/// counter row at 0 and no runs is left out).
async fn compare(db: &Db) -> Vec<(String, i64, i64)> {
    let counted = rows(
        db,
        &format!(
            "SELECT playbook, COUNT(*) AS n FROM runbook_runs WHERE NOT dry_run AND status IN ({}) \
             GROUP BY playbook",
            open_list()
        ),
    )
    .await;
    let kept = rows(db, "SELECT playbook, open FROM runbook_open_runs").await;
    let mut names: Vec<String> = counted
        .iter()
        .chain(&kept)
        .map(|r| r["playbook"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let of = |list: &[Json], col: &str| {
                list.iter()
                    .find(|r| r["playbook"] == json!(name))
                    .and_then(|r| r[col].as_i64())
                    .unwrap_or(0)
            };
            let (counter, count) = (of(&kept, "open"), of(&counted, "n"));
            (name, counter, count)
        })
        .filter(|(_, counter, count)| (*counter, *count) != (0, 0))
        .collect()
}

async fn assert_counted(db: &Db, step: &str) {
    for (playbook, counter, count) in compare(db).await {
        assert_eq!(
            counter, count,
            "after {step}: playbook {playbook} has {count} open run(s), its counter says {counter}"
        );
    }
}

async fn open_counter(db: &Db, playbook: &str) -> i64 {
    let limits = Limits {
        concurrency: 100,
        cooldown: None,
        max_runs_per_hour: None,
    };
    let mut tx = guards::begin(db, &[playbook]).await.unwrap();
    let counts = guards::counts(&mut tx, playbook, &limits, None, chrono::Utc::now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    counts.open
}

async fn create(db: &Db, playbook: &str, status: RunStatus, dry_run: bool) -> i64 {
    runs::create_run(
        db,
        NewRun {
            playbook,
            trigger: json!({ "kind": "cli" }),
            params: json!({}),
            dry_run,
            parent_id: None,
            command_id: None,
            status,
            version: None,
        },
    )
    .await
    .unwrap()
}

async fn walk(db: &Db) {
    assert_counted(db, "migrating").await;
    // Started, waited, cancelled, finished: each way a run moves.
    let a = create(db, "alpha", RunStatus::Queued, false).await;
    let b = create(db, "alpha", RunStatus::Queued, false).await;
    let c = create(db, "beta", RunStatus::Running, false).await;
    create(db, "alpha", RunStatus::Running, true).await; // a dry run is never counted
    create(db, "beta", RunStatus::Skipped, false).await; // nor a skipped one
    assert_counted(db, "creating").await;
    assert_eq!(open_counter(db, "alpha").await, 2);
    assert_eq!(open_counter(db, "beta").await, 1);
    assert_eq!(open_counter(db, "gamma").await, 0);

    assert!(runs::start_queued(db, a).await.unwrap());
    assert_counted(db, "starting").await;
    runs::set_waiting(db, a, "approve", &serde_json::Value::Null)
        .await
        .unwrap();
    assert_counted(db, "waiting for approval").await;
    runs::resume_waiting(db, a).await.unwrap();
    runs::cancel(db, a, "cli:test").await.unwrap();
    assert_counted(db, "asking to cancel").await;
    assert_eq!(
        open_counter(db, "alpha").await,
        2,
        "cancel_requested is still open"
    );
    runs::finish_run(
        db,
        a,
        RunStatus::Cancelled,
        None,
        Some("cancelled by cli:test"),
    )
    .await
    .unwrap();
    assert_counted(db, "cancelling").await;
    assert_eq!(open_counter(db, "alpha").await, 1);
    runs::cancel(db, b, "cli:test").await.unwrap();
    runs::finish_run(db, b, RunStatus::Cancelled, None, None)
        .await
        .unwrap();
    runs::finish_run(db, c, RunStatus::Succeeded, None, None)
        .await
        .unwrap();
    assert_counted(db, "finishing").await;
    assert_eq!(open_counter(db, "alpha").await, 0);
    assert_eq!(open_counter(db, "beta").await, 0);
    // A finished run updated again (its report) moves nothing.
    runs::set_report(db, c, "all good").await.unwrap();
    assert_counted(db, "a report").await;

    // Interrupted: a running run whose lease ran out, ended by the reaper's store call.
    let d = create(db, "beta", RunStatus::Running, false).await;
    let long_ago = db.dialect().ago("2d".parse::<Dur>().unwrap());
    db.sql(
        &format!("UPDATE runbook_runs SET lease_until = {long_ago} WHERE id = $1"),
        vec![json!(d)],
    )
    .await
    .unwrap();
    assert_counted(db, "a lease").await;
    let (open, _) = runs::open_runs(db).await.unwrap();
    let dead = open.iter().find(|r| r.id == d).unwrap();
    let ended = runs::end_dead(db, dead, RunStatus::Interrupted, "the process died", "test")
        .await
        .unwrap();
    assert!(ended);
    assert_counted(db, "interrupting").await;
    assert_eq!(open_counter(db, "beta").await, 0);

    // Several runs in one statement (as the receiver's batch records them), then pruned.
    let now = chrono::Utc::now();
    let batch: Vec<(NewRun, Option<String>)> = ["alpha", "beta", "alpha", "gamma"]
        .into_iter()
        .enumerate()
        .map(|(i, playbook)| {
            let run = NewRun {
                playbook,
                trigger: json!({ "kind": "alert" }),
                params: json!({}),
                dry_run: false,
                parent_id: None,
                command_id: None,
                status: if i == 3 {
                    RunStatus::Skipped
                } else {
                    RunStatus::Queued
                },
                version: None,
            };
            (run, None)
        })
        .collect();
    let mut tx = guards::begin(db, &["alpha", "beta", "gamma"])
        .await
        .unwrap();
    let mut writes = crate::store::batch::Writes::default();
    runs::create_runs_in(&mut tx, &mut writes, &batch, now)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_counted(db, "a batch").await;
    assert_eq!(open_counter(db, "alpha").await, 2);
    assert_eq!(open_counter(db, "gamma").await, 0);
    db.sql(
        &format!("UPDATE runbook_runs SET status = $1, finished_at = {long_ago} WHERE status = $2"),
        vec![json!(RunStatus::Failed), json!(RunStatus::Queued)],
    )
    .await
    .unwrap();
    assert_counted(db, "ending a batch in one statement").await;
    let (sql, params) = runs::prune_sql(db.dialect(), "1d".parse::<Dur>().unwrap());
    db.sql(&sql, params).await.unwrap();
    assert_counted(db, "pruning").await;
    // An open run deleted (by hand) leaves the count too.
    let e = create(db, "delta", RunStatus::Queued, false).await;
    assert_eq!(open_counter(db, "delta").await, 1);
    db.sql("DELETE FROM runbook_runs WHERE id = $1", vec![json!(e)])
        .await
        .unwrap();
    assert_counted(db, "deleting").await;
    assert_eq!(open_counter(db, "delta").await, 0);
}

#[tokio::test]
async fn the_open_run_counter_follows_every_run_on_sqlite() {
    let (_dir, db) = sqlite().await;
    walk(&db).await;
}

#[tokio::test]
async fn the_open_run_counter_follows_every_run_on_postgres() {
    let pg = PgDb::new().await;
    let db = postgres(&pg).await;
    walk(&db).await;
    pg.drop_db(db).await;
}

/// Every status, from every status: the counter moves exactly when a run goes from open to over
/// or back (a run resumed after an interruption, say).
#[tokio::test]
async fn every_status_change_keeps_the_counter_on_both_stores() {
    let (_dir, lite) = sqlite().await;
    let server = PgDb::new().await;
    let pg = postgres(&server).await;
    for db in [&lite, &pg] {
        for from in RunStatus::ALL {
            for to in RunStatus::ALL {
                let id = create(db, "p", *from, false).await;
                db.sql(
                    "UPDATE runbook_runs SET status = $2 WHERE id = $1",
                    vec![json!(id), json!(to)],
                )
                .await
                .unwrap();
                assert_counted(db, &format!("{from} -> {to}")).await;
            }
        }
    }
    server.drop_db(pg).await;
}

/// A store that already had open runs when it was migrated starts with them counted.
#[tokio::test]
async fn runs_open_before_the_migration_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("runbook.db").display());
    let db = Db::connect(&url, false, 4).await.unwrap();
    let before: Vec<_> = MIGRATIONS
        .iter()
        .copied()
        .filter(|m| m.version < 10)
        .collect();
    migrate::run(&db, &before).await.unwrap();
    for status in [RunStatus::Queued, RunStatus::Running, RunStatus::Succeeded] {
        create(&db, "old", status, false).await;
    }
    db.migrate().await.unwrap();
    assert_counted(&db, "migrating a store with runs").await;
    assert_eq!(open_counter(&db, "old").await, 2);
}
