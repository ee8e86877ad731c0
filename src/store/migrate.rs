//! Versioned migrations of the store's schema.
//!
//! The schema used to be one `CREATE TABLE IF NOT EXISTS` script run at every start, so a column
//! added later never reached an existing store. Now the schema is an ordered list of numbered
//! migrations, each applied once, in its own transaction together with its row in
//! `runbook_schema_migrations`. Concurrent starts serialise: PostgreSQL on a transaction-scoped
//! advisory lock, SQLite on `BEGIN IMMEDIATE` (the file's write lock); each waiter re-reads the
//! recorded versions once it holds the lock, so a migration never runs twice. A store whose
//! recorded version is newer than this binary's last migration is refused: an older binary must
//! not run against a newer schema. A store made before migrations were versioned (tables, but no
//! `runbook_schema_migrations`) is upgraded in place: migration 1 is the old script, all
//! `IF NOT EXISTS`, so it runs harmlessly and is recorded. This is a small hand-written runner
//! rather than sqlx's `migrate` feature: that adds more code for the same job, and its SQLite
//! migrator takes no lock, so two processes starting on one file are not serialised.
//!
//! How to add a migration: write `migrations/sqlite/NNNN_what.sql` and
//! `migrations/postgres/NNNN_what.sql` with the next number (both backends move in step; if one
//! needs nothing, its file holds a comment saying so), and append `migration!(N, "NNNN_what")` to
//! [`MIGRATIONS`]. Never edit, renumber or remove a migration that has been released: stores
//! that already applied it will not run it again, so fix mistakes with a new migration. A file
//! must not contain `BEGIN`/`COMMIT` (the runner wraps it in a transaction). On SQLite
//! `PRAGMA foreign_keys` cannot be switched off inside a transaction, so prefer
//! `ALTER TABLE ... ADD/RENAME/DROP COLUMN` to a table rebuild: dropping `runbook_runs` would
//! cascade to its step attempts and approvals.

use sqlx::{PgConnection, PgPool, SqliteConnection, SqlitePool};

use super::{Db, DbError, SqlxError};

/// One step of the store's schema, in both dialects.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Recorded in `runbook_schema_migrations`; 1, 2, 3… in the order they run.
    pub version: i64,
    /// The file name without `.sql`, recorded next to the version.
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// `migration!(2, "0002_what")` embeds `migrations/{sqlite,postgres}/0002_what.sql`.
macro_rules! migration {
    ($version:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sqlite: include_str!(concat!("migrations/sqlite/", $name, ".sql")),
            postgres: include_str!(concat!("migrations/postgres/", $name, ".sql")),
        }
    };
}

/// The store's schema, oldest first. Append only.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_initial"),
    migration!(2, "0002_schedule_ticks"),
    migration!(3, "0003_triggers"),
    migration!(4, "0004_run_leases"),
    migration!(5, "0005_playbook_versions"),
    migration!(6, "0006_runtime_order"),
    migration!(7, "0007_heartbeat"),
    migration!(8, "0008_run_report"),
    migration!(9, "0009_console_sessions"),
    migration!(10, "0010_open_runs"),
    migration!(11, "0011_approval_changes_queue_samples"),
    migration!(12, "0012_run_by_command"),
    migration!(13, "0013_fewer_index_entries"),
    migration!(14, "0014_alert_groups"),
];

/// The advisory lock that serialises PostgreSQL replicas migrating at once (the key the
/// unversioned script used, so an old and a new replica starting together still serialise).
const PG_LOCK: i64 = 7256110315;

const SQLITE_TABLE: &str = "CREATE TABLE IF NOT EXISTS runbook_schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)";

const PG_TABLE: &str = "CREATE TABLE IF NOT EXISTS runbook_schema_migrations (
    version    BIGINT PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
)";

const RECORDED: &str = "SELECT version FROM runbook_schema_migrations ORDER BY version";

/// Brings the store up to the last of `list` (normally [`MIGRATIONS`]), applying each missing
/// migration in order. Safe to run from several processes at once.
pub async fn run(db: &Db, list: &[Migration]) -> Result<(), DbError> {
    assert!(
        list.first().is_none_or(|m| m.version > 0)
            && list.windows(2).all(|w| w[0].version < w[1].version),
        "migrations must be numbered upwards from 1"
    );
    match db {
        Db::Sqlite(pool) if db.is_read_only() => check_sqlite(pool, list).await,
        Db::Sqlite(pool) => run_sqlite(pool, list).await,
        Db::Postgres(pool) => run_postgres(pool, list).await,
    }
}

/// A read-only store is read as it is, when its schema is current; it cannot be migrated.
async fn check_sqlite(pool: &SqlitePool, list: &[Migration]) -> Result<(), DbError> {
    let mut conn = pool.acquire().await.map_err(DbError::migrate)?;
    match sqlite_recorded(&mut conn).await? {
        Some(recorded) if next(&recorded, list)?.is_none() => Ok(()),
        _ => Err(DbError::ReadOnlyOutdated),
    }
}

async fn run_sqlite(pool: &SqlitePool, list: &[Migration]) -> Result<(), DbError> {
    // Without the write lock first: a current store (the usual case) needs no writer.
    let mut conn = pool.acquire().await.map_err(DbError::migrate)?;
    if let Some(recorded) = sqlite_recorded(&mut conn).await? {
        if next(&recorded, list)?.is_none() {
            return Ok(());
        }
    }
    drop(conn);
    while sqlite_apply_next(pool, list).await? {}
    Ok(())
}

/// Under the file's write lock, applies the first migration the store does not record; `false`
/// when there is none left.
async fn sqlite_apply_next(pool: &SqlitePool, list: &[Migration]) -> Result<bool, DbError> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(DbError::migrate)?;
    sqlx::raw_sql(SQLITE_TABLE)
        .execute(&mut *tx)
        .await
        .map_err(DbError::migrate)?;
    let recorded = sqlx::query_scalar(RECORDED)
        .fetch_all(&mut *tx)
        .await
        .map_err(DbError::migrate)?;
    let Some(m) = next(&recorded, list)? else {
        tx.commit().await.map_err(DbError::migrate)?;
        return Ok(false);
    };
    sqlx::raw_sql(m.sqlite)
        .execute(&mut *tx)
        .await
        .map_err(failed(m))?;
    sqlx::query("INSERT INTO runbook_schema_migrations (version, name) VALUES (?1, ?2)")
        .bind(m.version)
        .bind(m.name)
        .execute(&mut *tx)
        .await
        .map_err(failed(m))?;
    tx.commit().await.map_err(failed(m))?;
    tracing::info!(version = m.version, name = m.name, "store migrated");
    Ok(true)
}

async fn run_postgres(pool: &PgPool, list: &[Migration]) -> Result<(), DbError> {
    let mut conn = pool.acquire().await.map_err(DbError::migrate)?;
    if let Some(recorded) = pg_recorded(&mut conn).await? {
        if next(&recorded, list)?.is_none() {
            return Ok(());
        }
    }
    drop(conn);
    while postgres_apply_next(pool, list).await? {}
    Ok(())
}

/// Under the advisory lock, applies the first migration the store does not record; `false` when
/// there is none left.
async fn postgres_apply_next(pool: &PgPool, list: &[Migration]) -> Result<bool, DbError> {
    let mut tx = pool.begin().await.map_err(DbError::migrate)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PG_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(DbError::migrate)?;
    sqlx::raw_sql(PG_TABLE)
        .execute(&mut *tx)
        .await
        .map_err(DbError::migrate)?;
    let recorded = sqlx::query_scalar(RECORDED)
        .fetch_all(&mut *tx)
        .await
        .map_err(DbError::migrate)?;
    let Some(m) = next(&recorded, list)? else {
        tx.commit().await.map_err(DbError::migrate)?;
        return Ok(false);
    };
    sqlx::raw_sql(m.postgres)
        .execute(&mut *tx)
        .await
        .map_err(failed(m))?;
    sqlx::query("INSERT INTO runbook_schema_migrations (version, name) VALUES ($1, $2)")
        .bind(m.version)
        .bind(m.name)
        .execute(&mut *tx)
        .await
        .map_err(failed(m))?;
    tx.commit().await.map_err(failed(m))?;
    tracing::info!(version = m.version, name = m.name, "store migrated");
    Ok(true)
}

/// Names migration `m` in an error from applying or recording it.
fn failed(m: &Migration) -> impl Fn(sqlx::Error) -> DbError + '_ {
    move |source| DbError::MigrationFailed {
        version: m.version,
        name: m.name,
        source: SqlxError(source),
    }
}

/// The versions a SQLite store records, or `None` before its first versioned migration.
async fn sqlite_recorded(conn: &mut SqliteConnection) -> Result<Option<Vec<i64>>, DbError> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master \
         WHERE type = 'table' AND name = 'runbook_schema_migrations')",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(DbError::migrate)?;
    if !exists {
        return Ok(None);
    }
    let recorded = sqlx::query_scalar(RECORDED)
        .fetch_all(&mut *conn)
        .await
        .map_err(DbError::migrate)?;
    Ok(Some(recorded))
}

/// The versions a PostgreSQL store records, or `None` before its first versioned migration.
async fn pg_recorded(conn: &mut PgConnection) -> Result<Option<Vec<i64>>, DbError> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('runbook_schema_migrations') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await
            .map_err(DbError::migrate)?;
    if !exists {
        return Ok(None);
    }
    let recorded = sqlx::query_scalar(RECORDED)
        .fetch_all(&mut *conn)
        .await
        .map_err(DbError::migrate)?;
    Ok(Some(recorded))
}

/// The first migration of `list` not yet recorded, or an error if the store records a version
/// newer than the last of `list`.
fn next<'m>(recorded: &[i64], list: &'m [Migration]) -> Result<Option<&'m Migration>, DbError> {
    let known = list.last().map_or(0, |m| m.version);
    if let Some(&found) = recorded.iter().max() {
        if found > known {
            return Err(DbError::SchemaTooNew { found, known });
        }
    }
    Ok(list.iter().find(|m| !recorded.contains(&m.version)))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value as Json};

    use super::*;

    async fn fresh() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir).await;
        (dir, db)
    }

    async fn open(dir: &tempfile::TempDir) -> Db {
        let url = format!("sqlite://{}", dir.path().join("runbook.db").display());
        Db::connect(&url, false, 4).await.unwrap()
    }

    async fn rows(db: &Db, sql: &str) -> Vec<Json> {
        db.sql(sql, vec![]).await.unwrap().rows
    }

    async fn versions(db: &Db) -> Vec<Json> {
        rows(
            db,
            "SELECT version, name FROM runbook_schema_migrations ORDER BY version",
        )
        .await
    }

    fn all_versions() -> Vec<Json> {
        MIGRATIONS
            .iter()
            .map(|m| json!({"version": m.version, "name": m.name}))
            .collect()
    }

    /// Adds a column to a table that already has data.
    const ADD_NOTE: Migration = Migration {
        version: 2,
        name: "0002_run_note",
        sqlite: "ALTER TABLE runbook_runs ADD COLUMN note TEXT NOT NULL DEFAULT 'none';",
        postgres: "ALTER TABLE runbook_runs ADD COLUMN note TEXT NOT NULL DEFAULT 'none';",
    };

    #[test]
    fn the_list_is_numbered_upwards_after_its_files() {
        // Numbers are handed out per branch, so one may be missing until its branch lands.
        assert_eq!(MIGRATIONS[0].version, 1);
        for w in MIGRATIONS.windows(2) {
            assert!(
                w[0].version < w[1].version,
                "{} before {}",
                w[0].name,
                w[1].name
            );
        }
        for m in MIGRATIONS {
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{} does not start with its version",
                m.name
            );
        }
    }

    #[tokio::test]
    async fn a_fresh_store_records_every_version() {
        let (_dir, db) = fresh().await;
        db.migrate().await.unwrap();
        assert_eq!(versions(&db).await, all_versions());
        // The schema is there.
        assert_eq!(
            rows(&db, "SELECT COUNT(*) AS n FROM command_queue").await,
            [json!({"n": 0})]
        );
    }

    #[tokio::test]
    async fn migrating_twice_changes_nothing() {
        let (_dir, db) = fresh().await;
        db.migrate().await.unwrap();
        let before = rows(&db, "SELECT * FROM runbook_schema_migrations").await;
        db.migrate().await.unwrap();
        assert_eq!(
            rows(&db, "SELECT * FROM runbook_schema_migrations").await,
            before
        );
    }

    #[tokio::test]
    async fn several_processes_migrating_one_file_at_once_apply_each_version_once() {
        let list = [MIGRATIONS[0], ADD_NOTE];
        // From a fresh file, and from a store at version 1 (where a plain deferred BEGIN fails
        // with "database is locked": readers cannot upgrade to writers in WAL mode).
        for round in 0..10 {
            let (dir, first) = fresh().await;
            if round % 2 == 1 {
                run(&first, &list[..1]).await.unwrap();
            }
            let mut dbs = vec![first];
            for _ in 0..5 {
                dbs.push(open(&dir).await);
            }
            let results = futures::future::join_all(dbs.iter().map(|db| run(db, &list))).await;
            for r in results {
                r.unwrap();
            }
            assert_eq!(
                versions(&dbs[0]).await,
                [
                    json!({"version": 1, "name": "0001_initial"}),
                    json!({"version": 2, "name": "0002_run_note"})
                ]
            );
        }
    }

    #[tokio::test]
    async fn a_later_migration_adds_a_column_to_a_table_with_data() {
        let (_dir, db) = fresh().await;
        // At version 1: the test's migration is the second.
        run(&db, &MIGRATIONS[..1]).await.unwrap();
        db.sql(
            "INSERT INTO runbook_runs (playbook, trigger, params, status) VALUES ('p', '{}', '{}', 'ok')",
            vec![],
        )
        .await
        .unwrap();
        run(&db, &[MIGRATIONS[0], ADD_NOTE]).await.unwrap();
        assert_eq!(
            rows(&db, "SELECT playbook, status, note FROM runbook_runs").await,
            [json!({"playbook": "p", "status": "ok", "note": "none"})]
        );
        let recorded = rows(
            &db,
            "SELECT version, name FROM runbook_schema_migrations ORDER BY version",
        )
        .await;
        assert_eq!(
            recorded,
            [
                json!({"version": 1, "name": "0001_initial"}),
                json!({"version": 2, "name": "0002_run_note"})
            ]
        );
    }

    #[tokio::test]
    async fn a_store_newer_than_the_binary_is_refused() {
        let (_dir, db) = fresh().await;
        run(&db, &[MIGRATIONS[0], ADD_NOTE]).await.unwrap();
        // This binary knows only MIGRATIONS; the store is at version 2.
        let err = run(&db, &[MIGRATIONS[0]]).await.unwrap_err();
        assert!(
            matches!(err, DbError::SchemaTooNew { found: 2, known: 1 }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("version 2") && msg.contains("version 1"),
            "{msg}"
        );
        // Also when version 2 was written by hand, and through Db::migrate.
        let (_dir, db) = fresh().await;
        db.migrate().await.unwrap();
        let newer = MIGRATIONS.last().unwrap().version + 1;
        db.sql(
            "INSERT INTO runbook_schema_migrations (version, name) VALUES ($1, 'future')",
            vec![json!(newer)],
        )
        .await
        .unwrap();
        assert!(matches!(
            db.migrate().await,
            Err(DbError::SchemaTooNew { found, known }) if found == newer && known == newer - 1
        ));
    }

    #[tokio::test]
    async fn a_failing_migration_leaves_neither_its_changes_nor_its_record() {
        let (_dir, db) = fresh().await;
        run(&db, &MIGRATIONS[..1]).await.unwrap();
        let broken = Migration {
            sqlite: "ALTER TABLE runbook_runs ADD COLUMN note TEXT; SELECT * FROM no_such_table;",
            ..ADD_NOTE
        };
        let err = run(&db, &[MIGRATIONS[0], broken]).await.unwrap_err();
        assert!(
            matches!(err, DbError::MigrationFailed { version: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("0002_run_note"), "{err}");
        assert_eq!(versions(&db).await, all_versions()[..1]);
        // The column was rolled back, so the fixed migration applies.
        run(&db, &[MIGRATIONS[0], ADD_NOTE]).await.unwrap();
        assert_eq!(
            rows(&db, "SELECT COUNT(*) AS n FROM runbook_schema_migrations").await,
            [json!({"n": 2})]
        );
    }

    #[tokio::test]
    async fn a_migration_that_is_only_a_comment_is_recorded() {
        let (_dir, db) = fresh().await;
        let nothing = Migration {
            sqlite: "-- nothing to do on SQLite\n",
            ..ADD_NOTE
        };
        run(&db, &[MIGRATIONS[0], nothing]).await.unwrap();
        assert_eq!(versions(&db).await.len(), 2);
    }

    #[test]
    fn the_next_migration_is_the_first_unrecorded_one() {
        let list = [MIGRATIONS[0], ADD_NOTE];
        assert_eq!(next(&[], &list).unwrap().unwrap().version, 1);
        assert_eq!(next(&[1], &list).unwrap().unwrap().version, 2);
        assert!(next(&[1, 2], &list).unwrap().is_none());
        assert!(matches!(
            next(&[1, 2, 3], &list),
            Err(DbError::SchemaTooNew { found: 3, known: 2 })
        ));
    }
}
