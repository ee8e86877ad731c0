//! Versioned migrations: a store made by the release before them (its tables, no
//! `runbook_schema_migrations`) is upgraded in place with its data, on SQLite and PostgreSQL; a
//! later migration reaches it; several processes migrating at once apply each version once; and a
//! store newer than the binary is refused.

use serde_json::{json, Value as Json};

use runbook::store::{
    migrate::{self, Migration, MIGRATIONS},
    Db,
};

use crate::util::{scalar, store, PgDb, Workdir};

/// The release's schema, frozen as migration 1.
const SQLITE_V1: &str = include_str!("../src/store/migrations/sqlite/0001_initial.sql");
const POSTGRES_V1: &str = include_str!("../src/store/migrations/postgres/0001_initial.sql");

/// The binary's newest schema version (numbers may have gaps while branches land).
fn last_version() -> i64 {
    MIGRATIONS.last().unwrap().version
}

/// A migration after the real ones: adds a column to a table that has data.
fn add_note() -> Migration {
    const SQL: &str = "ALTER TABLE runbook_runs ADD COLUMN note TEXT NOT NULL DEFAULT 'none';";
    Migration {
        version: last_version() + 1,
        name: "test_run_note",
        sqlite: SQL,
        postgres: SQL,
    }
}

/// A migration with nothing to do on either backend (a file holding only a comment).
fn nothing() -> Migration {
    Migration {
        version: last_version() + 2,
        name: "test_nothing",
        sqlite: "-- nothing to do on SQLite\n",
        postgres: "-- nothing to do on PostgreSQL\n",
    }
}

/// Makes a store as the release before versioned migrations left it: its script run as it ran
/// it, then a command, a run and a setting written with its statements.
async fn release_store(url: &str) {
    let db = store(url).await;
    let (json, now) = match &db {
        Db::Sqlite(pool) => {
            sqlx::raw_sql(SQLITE_V1).execute(pool).await.unwrap();
            ("$5", "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')")
        }
        Db::Postgres(pool) => {
            sqlx::raw_sql(POSTGRES_V1).execute(pool).await.unwrap();
            ("$5::jsonb", "NOW()")
        }
    };
    db.sql(
        &format!(
            "INSERT INTO command_queue (entity, entity_id, command_type, priority, payload) \
             VALUES ($1, $2, $3, $4, {json})"
        ),
        vec![
            json!("order"),
            json!("o-42"),
            json!("ship"),
            json!(5),
            json!(r#"{"sku": "A1"}"#),
        ],
    )
    .await
    .unwrap();
    db.sql(
        &format!(
            "INSERT INTO runbook_runs (playbook, trigger, params, status, dry_run, parent_id, command_id, started_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, {now})"
        ),
        vec![
            json!("nightly"),
            json!({"kind": "manual"}),
            json!({"region": "eu"}),
            json!("succeeded"),
            json!(false),
            Json::Null,
            Json::Null,
        ],
    )
    .await
    .unwrap();
    let cast = if json == "$5" { "$2" } else { "$2::jsonb" };
    db.sql(
        &format!(
            "INSERT INTO runtime_settings (key, value, updated_at, updated_by) VALUES ($1, {cast}, {now}, $3)"
        ),
        vec![json!("maxRetries"), json!("17"), json!("cli")],
    )
    .await
    .unwrap();
    assert!(
        !has_migrations_table(&db).await,
        "the release had no migrations table"
    );
    db.close().await;
}

async fn has_migrations_table(db: &Db) -> bool {
    let sql = match db {
        Db::Sqlite(_) => {
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'runbook_schema_migrations'"
        }
        Db::Postgres(_) => {
            "SELECT COUNT(*) AS n FROM pg_tables WHERE tablename = 'runbook_schema_migrations'"
        }
    };
    scalar(db, sql).await == 1
}

/// `runbook_schema_migrations` as `[{version, name}]`, oldest first.
async fn recorded(db: &Db) -> Vec<Json> {
    db.sql(
        "SELECT version, name FROM runbook_schema_migrations ORDER BY version",
        vec![],
    )
    .await
    .unwrap()
    .rows
}

fn expected(list: &[Migration]) -> Vec<Json> {
    list.iter()
        .map(|m| json!({"version": m.version, "name": m.name}))
        .collect()
}

/// The binary opens a release store, upgrades it and sees its data; the data is still in the
/// tables and every migration is recorded.
async fn upgrades_in_place(url: &str) {
    release_store(url).await;
    let w = Workdir::new();

    let out = w.run(&["--store", url, "queue", "stats", "--output", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let stats: Json = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(stats["pending"], 1, "{stats}");
    assert_eq!(stats["settings"]["maxRetries"], 17, "{stats}");

    let out = w.run(&["--store", url, "runs", "list", "--output", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let runs: Json = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    assert_eq!(runs[0]["playbook"], "nightly");
    assert_eq!(runs[0]["status"], "succeeded");

    let db = store(url).await;
    assert_eq!(recorded(&db).await, expected(MIGRATIONS));
    let command = db
        .sql(
            "SELECT entity, entity_id, command_type, priority, payload, status FROM command_queue",
            vec![],
        )
        .await
        .unwrap()
        .rows;
    assert_eq!(command.len(), 1);
    assert_eq!(command[0]["entity_id"], "o-42");
    assert_eq!(command[0]["priority"], 5);
    assert_eq!(command[0]["status"], "pending");
    let payload = match &command[0]["payload"] {
        Json::String(s) => serde_json::from_str(s).unwrap(),
        other => other.clone(),
    };
    assert_eq!(payload, json!({"sku": "A1"}));
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) AS n FROM runtime_settings WHERE key = 'maxRetries'"
        )
        .await,
        1
    );
    db.close().await;
}

/// Migrations after the real ones reach an upgraded release store and keep its data.
async fn later_migration_applies(url: &str) {
    let db = store(url).await;
    let list: Vec<Migration> = MIGRATIONS
        .iter()
        .copied()
        .chain([add_note(), nothing()])
        .collect();
    migrate::run(&db, &list).await.unwrap();
    assert_eq!(recorded(&db).await, expected(&list));
    let runs = db
        .sql("SELECT playbook, status, note FROM runbook_runs", vec![])
        .await
        .unwrap()
        .rows;
    assert_eq!(
        runs,
        [json!({"playbook": "nightly", "status": "succeeded", "note": "none"})]
    );
    // Now this binary's list is older than the store: refused, and nothing changes.
    let err = db.migrate().await.unwrap_err().to_string();
    let (found, known) = (list.last().unwrap().version, last_version());
    assert!(
        err.contains(&format!("version {found}")) && err.contains(&format!("version {known}")),
        "{err}"
    );
    assert_eq!(recorded(&db).await, expected(&list));
    db.close().await;
}

#[tokio::test]
async fn a_release_sqlite_store_upgrades_in_place_with_its_data() {
    let w = Workdir::new();
    let url = w.sqlite_url();
    upgrades_in_place(&url).await;
    later_migration_applies(&url).await;
}

#[tokio::test]
async fn a_release_postgres_store_upgrades_in_place_with_its_data() {
    let pg = PgDb::new().await;
    upgrades_in_place(&pg.url).await;
    later_migration_applies(&pg.url).await;
}

#[tokio::test]
async fn the_binary_refuses_a_store_newer_than_it_naming_both_versions() {
    let w = Workdir::new();
    let url = w.sqlite_url();
    release_store(&url).await;
    assert_eq!(w.run(&["--store", &url, "runs", "list"]).code, 0);
    let newer = last_version() + 1;
    let db = store(&url).await;
    db.sql(
        "INSERT INTO runbook_schema_migrations (version, name) VALUES ($1, 'from_the_future')",
        vec![json!(newer)],
    )
    .await
    .unwrap();

    let out = w.run(&["--store", &url, "queue", "stats"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains(&format!("version {newer}"))
            && out.stderr.contains(&format!("version {}", newer - 1)),
        "{out:?}"
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) AS n FROM command_queue").await,
        1
    );
}

#[test]
fn processes_starting_at_once_on_one_sqlite_file_each_migrate_safely() {
    for release in [false, true] {
        let w = Workdir::new();
        let url = w.sqlite_url();
        let rt = tokio::runtime::Runtime::new().unwrap();
        if release {
            rt.block_on(release_store(&url));
        }
        let outs: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                // A command that writes: one that only reads never creates a store.
                .map(|_| s.spawn(|| w.run(&["--store", &url, "resume"])))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for out in outs {
            assert_eq!(out.code, 0, "release store: {release}\n{out:?}");
        }
        rt.block_on(async {
            let db = store(&url).await;
            assert_eq!(recorded(&db).await, expected(MIGRATIONS));
            db.close().await;
        });
    }
}

#[tokio::test]
async fn replicas_migrating_one_postgres_database_at_once_apply_each_version_once() {
    let list: Vec<Migration> = MIGRATIONS.iter().copied().chain([add_note()]).collect();
    for release in [false, true] {
        let pg = PgDb::new().await;
        if release {
            release_store(&pg.url).await;
        }
        let mut dbs = Vec::new();
        for _ in 0..4 {
            dbs.push(store(&pg.url).await);
        }
        let results = futures::future::join_all(dbs.iter().map(|db| migrate::run(db, &list))).await;
        for r in results {
            r.unwrap();
        }
        assert_eq!(recorded(&dbs[0]).await, expected(&list));
        for db in &dbs {
            db.close().await;
        }
    }
}
