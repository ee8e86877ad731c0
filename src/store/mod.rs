//! Databases: the embedded store (SQLite by default, PostgreSQL when the URL says so) and named
//! datasources, behind one [`Db`] handle that runs bound SQL and returns rows as JSON.

pub mod admission;
pub mod alert_groups;
pub mod alerts;
pub mod batch;
pub mod console;
mod decode;
pub mod guards;
pub mod migrate;
pub mod pause;
pub mod queue_samples;
pub mod runs;
pub mod statement;
pub mod ticks;
pub mod versions;

use std::{str::FromStr, time::Duration};

use futures::TryStreamExt;
use serde_json::Value as Json;
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteSynchronous},
    Either, PgPool, SqlitePool,
};

use crate::template::{BoundSql, Dialect};

/// Why a database call failed. Each variant's message leaves its cause to the error chain.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open database {url}")]
    Connect {
        url: String,
        #[source]
        source: SqlxError,
    },
    #[error("unsupported database URL `{0}` (use sqlite://FILE or postgres://USER@HOST/DB)")]
    Scheme(String),
    #[error(transparent)]
    Query(SqlxError),
    #[error("migrating the store failed")]
    Migrate(#[source] SqlxError),
    #[error("store migration {name} (version {version}) failed")]
    MigrationFailed {
        version: i64,
        name: &'static str,
        #[source]
        source: SqlxError,
    },
    #[error(
        "the store's schema is at version {found}, but this runbook binary knows migrations only \
         up to version {known}: a newer runbook upgraded it, so run that release or a later one"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error(
        "the store is opened read-only (mode=ro) and its schema needs migrating: open it once \
         without mode=ro"
    )]
    ReadOnlyOutdated,
    #[error("the store does not take writes: {0}")]
    NotWritable(String),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        DbError::Query(SqlxError(e))
    }
}

impl DbError {
    fn migrate(e: sqlx::Error) -> Self {
        DbError::Migrate(SqlxError(e))
    }
}

/// A sqlx error as one link of an error chain. sqlx writes its cause into its own message
/// (`error communicating with database: Connection refused`) and returns that same cause as its
/// source; this link's source is the cause below that one, so a chain printed with `{:#}` names
/// each cause once.
#[derive(Debug)]
pub struct SqlxError(pub sqlx::Error);

impl std::fmt::Display for SqlxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SqlxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()?.source()
    }
}

impl DbError {
    /// Whether trying again may help (the server was unreachable or busy), as opposed to a bad query.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Connect { .. } => true,
            DbError::Query(SqlxError(e)) => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::Tls(_)
                ) || e
                    .as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| {
                        // Serialization failure, deadlock, SQLite busy/locked; PostgreSQL's
                        // connection exceptions (08...) and operator intervention (57P01
                        // `pg_terminate_backend` or shutdown, 57P02, 57P03): the next try, on
                        // a new connection, may succeed.
                        c == "40001"
                            || c == "40P01"
                            || c == "5"
                            || c == "6"
                            || c.starts_with("08")
                            || c.starts_with("57P")
                    })
            }
            _ => false,
        }
    }
}

/// A connection pool to SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs a bound statement on an executor and collects rows (up to the cap) and the affected-row
/// count. Not cached as a prepared statement: playbook SQL varies, and a NULL bound with an
/// unspecified type would fix the parameter's type for later executions with values.
/// `fetch_many` is the one sqlx call that yields both rows and the affected-row count, which a
/// step needs for DELETE/UPDATE with or without RETURNING.
macro_rules! collect {
    ($bind:ident, $decode:path, $exec:expr, $q:expr, $max:expr, $out:ident) => {{
        #[allow(deprecated)]
        let mut stream =
            $bind(sqlx::query(&$q.sql).persistent(false), &$q.params).fetch_many($exec);
        while let Some(item) = stream.try_next().await? {
            match item {
                Either::Left(done) => $out.rows_affected += done.rows_affected(),
                Either::Right(row) if $out.rows.len() < $max => $out.rows.push($decode(&row)),
                Either::Right(_) => $out.truncated = true,
            }
        }
    }};
}
/// Who changed what, for the audit log.
pub struct Audit<'a> {
    pub actor: &'a str,
    pub op: &'a str,
    pub filter: Json,
}

/// The audit record's statement; its parameters are [`Audit::params`].
pub(crate) const AUDIT: &str =
    "INSERT INTO runbook_audit (actor, op, filter, rows) VALUES ($1, $2, $3, $4)";

impl Audit<'_> {
    pub(crate) fn params(&self, rows: u64) -> Vec<Json> {
        vec![
            Json::from(self.actor),
            Json::from(self.op),
            self.filter.clone(),
            Json::from(rows),
        ]
    }
}

/// A transaction on either backend, for writes to several tables that stand or fall together
/// (a schedule tick and its run's command). Dropped without [`Tx::commit`], it rolls back.
pub enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl Tx {
    pub async fn commit(self) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await?,
            Tx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

/// Rows and counts of one statement.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SqlResult {
    pub rows: Vec<Json>,
    pub rows_affected: u64,
    /// More rows existed than the cap kept.
    pub truncated: bool,
}

/// Hides a password in a database URL, for messages: the userinfo's and a `password=` query
/// parameter's.
pub fn redact_url(url: &str) -> String {
    let mut out = redact_userinfo(url);
    for pw in crate::secrets::url_credentials(url).1 {
        out = out.replace(&format!("={pw}"), "=****");
    }
    out
}

fn redact_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}://{}:****@{}", &url[..s], &creds[..c], &url[at + 1..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Db {
    /// Opens a pool. SQLite files are created on first use (readable by their owner only) and
    /// run in WAL mode; a SQLite URL with `?mode=ro` opens the store read-only, as `read_only`
    /// does.
    pub async fn connect(url: &str, read_only: bool, max_connections: u32) -> Result<Db, DbError> {
        let connect_err = |e| DbError::Connect {
            url: redact_url(url),
            source: SqlxError(e),
        };
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url).map_err(connect_err)?;
            let read_only = read_only || sqlite_mode(url) == Some("ro");
            Db::connect_sqlite(opts, read_only, max_connections)
                .await
                .map_err(connect_err)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let mut opts = PgConnectOptions::from_str(url).map_err(connect_err)?;
            if read_only {
                opts = opts.options([("default_transaction_read_only", "on")]);
            }
            // One direct connection first: a pool reports an unreachable server only as a timeout,
            // while the connection says why (refused, unknown host, authentication).
            use sqlx::{ConnectOptions, Connection};
            let probe = tokio::time::timeout(Duration::from_secs(10), opts.connect())
                .await
                .map_err(|_| connect_err(sqlx::Error::PoolTimedOut))?
                .map_err(connect_err)?;
            let _ = probe.close().await;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with(opts);
            Ok(Db::Postgres(pool))
        } else {
            Err(DbError::Scheme(url.to_owned()))
        }
    }

    /// Opens a SQLite pool on `opts` with the store's settings: WAL (switched to under a busy
    /// wait, so processes opening a fresh file at once do not fail), every commit synced to disk
    /// before it returns (`synchronous=FULL`: with `NORMAL`, a commit in WAL mode survives the
    /// process but may be lost with the machine, and a notification answered 2xx, a command
    /// accepted or an approval given must survive both), a busy timeout, foreign keys, and
    /// connections that never go back to the pool inside a transaction. A new file is
    /// created readable by its owner only (queue payloads can hold secrets); its `-wal` and
    /// `-shm` files take the same permissions from it.
    pub async fn connect_sqlite(
        opts: SqliteConnectOptions,
        read_only: bool,
        max_connections: u32,
    ) -> Result<Db, sqlx::Error> {
        let opts = opts
            .create_if_missing(!read_only)
            .read_only(read_only)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        if !read_only {
            create_private(opts.get_filename())?;
        }
        // No ping before each acquire: a SQLite connection is a file handle on a thread of this
        // process, with no server to lose; the ping was a round trip to that thread on every
        // statement. (sqlx still tests a connection when it goes back to the pool.)
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(false)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if !read_only {
                        wal(conn).await?;
                    }
                    Ok(())
                })
            })
            .after_release(|conn, _| Box::pin(released_cleanly(conn)))
            .connect_with(opts)
            .await?;
        Ok(Db::Sqlite(pool))
    }

    /// Whether the store is open read-only (`?mode=ro`): commands that record anything refuse
    /// to run on it.
    pub fn is_read_only(&self) -> bool {
        match self {
            Db::Sqlite(pool) => {
                use sqlx::ConnectOptions;
                let url = pool.connect_options().to_url_lossy();
                url.query_pairs().any(|(k, v)| k == "mode" && v == "ro")
            }
            Db::Postgres(_) => false,
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Creates or upgrades the store's tables by applying the migrations it has not recorded
    /// (see [`migrate`]). Safe to run from several processes at once. Refuses a store whose
    /// schema is newer than this binary knows.
    pub async fn migrate(&self) -> Result<(), DbError> {
        migrate::run(self, migrate::MIGRATIONS).await
    }

    /// Whether the store takes writes now, for `/readyz`: a small write (the one row of
    /// `runbook_heartbeat`), made at most once every [`PROBE_EVERY`] per store and process; the
    /// answers in between repeat the last one. A read-only store is ready when it answers a read.
    pub async fn ready(&self) -> Result<(), DbError> {
        let key = self.identity();
        if let Some(last) = probe_cache().lock().ok().and_then(|c| {
            c.get(&key)
                .filter(|(at, _)| at.elapsed() < PROBE_EVERY)
                .map(|(_, r)| r.clone())
        }) {
            return last.map_err(DbError::NotWritable);
        }
        let result = self.probe().await.map_err(|e| crate::text::error_chain(&e));
        if let Ok(mut cache) = probe_cache().lock() {
            cache.insert(key, (std::time::Instant::now(), result.clone()));
        }
        result.map_err(DbError::NotWritable)
    }

    async fn probe(&self) -> Result<(), DbError> {
        if self.is_read_only() {
            self.sql("SELECT 1 AS ok", vec![]).await?;
            return Ok(());
        }
        let now = chrono::Utc::now();
        match self {
            // A few pages of room, rewritten: see the migration that made the table.
            Db::Sqlite(pool) => {
                sqlx::query(
                    "INSERT INTO runbook_heartbeat (id, at, room) VALUES (1, ?1, zeroblob(?2)) \
                     ON CONFLICT (id) DO UPDATE SET at = excluded.at, \
                     room = zeroblob(?2 + 1 - length(runbook_heartbeat.room) % 2)",
                )
                .bind(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .bind(PROBE_ROOM)
                .execute(pool)
                .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO runbook_heartbeat (id, at) VALUES (1, $1) \
                     ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                )
                .bind(now)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// The database a pool opens, to tell stores apart within one process.
    fn identity(&self) -> String {
        use sqlx::ConnectOptions;
        match self {
            Db::Sqlite(pool) => pool.connect_options().to_url_lossy().to_string(),
            Db::Postgres(pool) => {
                let o = pool.connect_options();
                format!(
                    "postgres://{}:{}/{}",
                    o.get_host(),
                    o.get_port(),
                    o.get_database().unwrap_or_default()
                )
            }
        }
    }

    /// Starts a transaction.
    pub async fn begin(&self) -> Result<Tx, DbError> {
        Ok(match self {
            Db::Sqlite(pool) => Tx::Sqlite(pool.begin().await?),
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// Runs one bound statement and returns up to `max_rows` rows as JSON objects.
    pub async fn query(&self, q: &BoundSql, max_rows: usize) -> Result<SqlResult, DbError> {
        let mut out = SqlResult::default();
        match self {
            Db::Sqlite(pool) => collect!(bind_sqlite, decode::sqlite_row, pool, q, max_rows, out),
            Db::Postgres(pool) => collect!(bind_pg, decode::pg_row, pool, q, max_rows, out),
        }
        Ok(out)
    }

    /// Runs one bound statement of a playbook and its audit record in one transaction, so the
    /// change and its record stand or fall together. The audit's row count is the statement's.
    pub async fn query_audited(
        &self,
        q: &BoundSql,
        max_rows: usize,
        audit: Audit<'_>,
    ) -> Result<SqlResult, DbError> {
        let mut out = SqlResult::default();
        match self {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                collect!(bind_sqlite, decode::sqlite_row, &mut *tx, q, max_rows, out);
                let ap = audit.params(out.rows_affected);
                bind_sqlite(sqlx::query(&dollar_to_question(AUDIT)), &ap)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                collect!(bind_pg, decode::pg_row, &mut *tx, q, max_rows, out);
                let ap = audit.params(out.rows_affected);
                bind_pg(sqlx::query(AUDIT), &ap).execute(&mut *tx).await?;
                tx.commit().await?;
            }
        }
        Ok(out)
    }

    /// Runs a mutation and its audit record in one transaction, so no change goes unrecorded.
    /// `sql` uses `$n` placeholders. Returns the rows the mutation affected.
    pub async fn mutate_audited(
        &self,
        sql: &str,
        params: Vec<Json>,
        audit: Audit<'_>,
    ) -> Result<u64, DbError> {
        match self {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let sql = dollar_to_question(sql);
                let rows = bind_sqlite(sqlx::query(&sql), &params)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let ap = audit.params(rows);
                bind_sqlite(sqlx::query(&dollar_to_question(AUDIT)), &ap)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(rows)
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let rows = bind_pg(sqlx::query(sql), &params)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let ap = audit.params(rows);
                bind_pg(sqlx::query(AUDIT), &ap).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(rows)
            }
        }
    }

    /// Convenience: SQL written with `$1..$n` placeholders, run on either backend.
    pub async fn sql(&self, sql: &str, params: Vec<Json>) -> Result<SqlResult, DbError> {
        let sql = match self {
            Db::Postgres(_) => sql.to_owned(),
            Db::Sqlite(_) => dollar_to_question(sql),
        };
        self.query(&BoundSql { sql, params }, usize::MAX).await
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}

/// How often [`Db::ready`] writes its probe at most.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Bytes of the SQLite probe's blob: more than a page, so that it takes overflow pages. Its
/// length alternates between this and one more, as SQLite overwrites a row of the same size in
/// place and would need no room at all.
const PROBE_ROOM: i64 = 8192;

type ProbeCache =
    std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Result<(), String>)>>;

fn probe_cache() -> &'static ProbeCache {
    static CACHE: std::sync::OnceLock<ProbeCache> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// How long a SQLite connection waits for another writer's lock before "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a store URL opens the store read-only (`sqlite://FILE?mode=ro`).
pub fn is_read_only_url(url: &str) -> bool {
    url.starts_with("sqlite:") && sqlite_mode(url) == Some("ro")
}

/// The file of a SQLite store URL (`None` for PostgreSQL, an in-memory store or a URL that does
/// not parse).
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    if !url.starts_with("sqlite:") {
        return None;
    }
    let opts = SqliteConnectOptions::from_str(url).ok()?;
    let path = opts.get_filename();
    (!path.as_os_str().is_empty() && path != std::path::Path::new(":memory:"))
        .then(|| path.to_path_buf())
}

/// The `mode` of a SQLite URL's query (`sqlite://runbook.db?mode=ro`).
fn sqlite_mode(url: &str) -> Option<&str> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|pair| pair.strip_prefix("mode="))
}

/// Creates the store's file, empty (SQLite takes an empty file for an empty database), readable
/// and writable by its owner only, unless it exists. An in-memory store has no file.
fn create_private(path: &std::path::Path) -> Result<(), sqlx::Error> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.as_os_str().is_empty() || path == std::path::Path::new(":memory:") {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(sqlx::Error::Io(e)),
    }
}

/// Switches a new connection's file to WAL. The switch needs the file's exclusive lock and
/// SQLite does not wait for it with the busy timeout, so a second process opening a fresh file
/// while the first switches it gets "database is locked" at once: wait and try again instead.
async fn wal(conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
    let started = std::time::Instant::now();
    loop {
        match sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&mut *conn)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if is_busy(&e) && started.elapsed() < BUSY_TIMEOUT => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `SQLITE_BUSY` or `SQLITE_LOCKED`, with or without an extended code.
fn is_busy(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

/// Whether a SQLite connection may go back to the pool: not while it is inside a transaction.
/// After a write fails on a full disk (`SQLITE_FULL`, `SQLITE_IOERR`), SQLite may have rolled the
/// transaction back itself; sqlx's own `ROLLBACK` then fails and it still counts the
/// transaction open, so the connection's next "transaction" is a savepoint inside it that never
/// commits, holding the write lock: every other connection got "database is locked" until the
/// process restarted. Such a connection is closed instead, and the pool opens a fresh one.
async fn released_cleanly(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    // A dropped transaction's rollback may still be on its way to the connection's thread;
    // the ping returns after it.
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!("A store connection was left inside a failed transaction; closing it.");
        return Ok(false);
    }
    Ok(true)
}

/// `$1` → `?1`, outside quoted strings.
pub fn dollar_to_question(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut in_quote = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            in_quote = !in_quote;
        }
        if c == '$' && !in_quote && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;
type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn bind_sqlite<'q>(mut q: SqliteQuery<'q>, params: &'q [Json]) -> SqliteQuery<'q> {
    for p in params {
        q = match p {
            Json::Null => q.bind(None::<String>),
            Json::Bool(b) => q.bind(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => q.bind(i),
                None => q.bind(n.as_f64().unwrap_or_default()),
            },
            Json::String(s) => q.bind(s.as_str()),
            other => q.bind(other.to_string()),
        };
    }
    q
}

/// A NULL whose type PostgreSQL infers from where it is used (OID 0, "unspecified"), so one
/// NULL binds to a text, bigint or timestamp column alike.
struct UntypedNull;

impl sqlx::Type<sqlx::Postgres> for UntypedNull {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        sqlx::postgres::PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for UntypedNull {
    fn encode_by_ref(
        &self,
        _: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

fn bind_pg<'q>(mut q: PgQuery<'q>, params: &'q [Json]) -> PgQuery<'q> {
    for p in params {
        q = match p {
            Json::Null => q.bind(UntypedNull),
            Json::Bool(b) => q.bind(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => q.bind(i),
                None => q.bind(n.as_f64().unwrap_or_default()),
            },
            Json::String(s) => q.bind(s.as_str()),
            other => q.bind(sqlx::types::Json(other)),
        };
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:****@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://runbook.db"), "sqlite://runbook.db");
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=disable&password=hunter2hunter2"),
            "postgres://u@h/db?sslmode=disable&password=****"
        );
    }

    /// Eight stores opening one fresh file at once, as eight processes starting together do, each
    /// switching it to WAL and migrating it: every one opens, in every round. (Switching to WAL
    /// takes the file's exclusive lock and SQLite's busy handler does not wait for it, so a plain
    /// `journal_mode` connect option failed "database is locked" in some rounds.)
    #[tokio::test]
    async fn stores_opening_one_fresh_file_at_once_all_open_and_migrate() {
        for round in 0..25 {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("runbook.db").display());
            // sqlx runs each SQLite connection on a thread of its own, so these really race.
            let opened = futures::future::join_all((0..8).map(|_| async {
                let db = Db::connect(&url, false, 2).await?;
                db.migrate().await?;
                Ok::<_, DbError>(db)
            }))
            .await;
            for (i, r) in opened.into_iter().enumerate() {
                let db = r.unwrap_or_else(|e| panic!("round {round}, store {i}: {e:#}"));
                db.close().await;
            }
        }
    }

    #[test]
    fn placeholders_convert_outside_quotes() {
        assert_eq!(
            dollar_to_question("SELECT $1, '$2' WHERE a = $10"),
            "SELECT ?1, '$2' WHERE a = ?10"
        );
    }

    /// The chain as `main` prints it: `{:#}` joins every link, repeating none.
    fn chain(e: DbError) -> String {
        format!("{:#}", anyhow::Error::from(e))
    }

    #[test]
    fn a_connect_error_names_its_cause_once() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = DbError::Connect {
            url: "postgres://u@h/db".into(),
            source: SqlxError(sqlx::Error::Io(refused)),
        };
        assert!(e.is_transient());
        assert_eq!(
            chain(e),
            "cannot open database postgres://u@h/db: error communicating with database: refused"
        );
    }

    #[test]
    fn query_and_migrate_errors_name_their_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let e = DbError::from(sqlx::Error::Io(io));
        assert!(e.is_transient());
        assert_eq!(
            e.to_string(),
            "error communicating with database: broken pipe"
        );
        assert_eq!(chain(e), "error communicating with database: broken pipe");
        let e = DbError::migrate(sqlx::Error::Protocol("bad frame".into()));
        assert!(!e.is_transient());
        assert_eq!(
            chain(e),
            "migrating the store failed: encountered unexpected or invalid data: bad frame"
        );
        let e = DbError::MigrationFailed {
            version: 2,
            name: "0002_run_note",
            source: SqlxError(sqlx::Error::Protocol("bad frame".into())),
        };
        assert_eq!(
            chain(e),
            "store migration 0002_run_note (version 2) failed: encountered unexpected or invalid data: bad frame"
        );
    }

    #[test]
    fn causes_below_the_one_sqlx_names_stay_in_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("certificate expired")]
        struct Expired;
        #[derive(Debug, thiserror::Error)]
        #[error("handshake failed")]
        struct Handshake(#[source] Expired);
        let e = DbError::from(sqlx::Error::Tls(Box::new(Handshake(Expired))));
        assert_eq!(
            chain(e),
            "error occurred while attempting to establish a TLS connection: handshake failed: certificate expired"
        );
    }
}
