//! One playbook statement with a time limit the database enforces, so a statement whose time is
//! up stops on the server instead of running on (and committing) after the step gave up on it.
//!
//! - PostgreSQL: the statement runs in a transaction (read-only for a read) whose
//!   `statement_timeout` is the time the step has left. When the caller's stop fires first (the
//!   server did not answer in time, or the run was cancelled), the backend is sent a cancel
//!   (`pg_cancel_backend`) and the connection is closed without a `COMMIT`.
//! - SQLite: a progress handler interrupts the statement once its time is up or the caller stops it.
//!
//! A read stops reading once it has one row more than it keeps. What is known of a change's
//! outcome (`committed`, `rolled_back`, `unknown`) comes back with the result or the error.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures::TryStreamExt;
use sqlx::{pool::PoolConnection, Database, Either, Executor, PgPool, Row, SqlitePool};

use super::{
    bind_pg, bind_sqlite, decode, dollar_to_question, Audit, Db, DbError, SqlResult, AUDIT,
};
use crate::template::BoundSql;

/// One statement of a playbook and how to run it.
pub struct Statement<'a> {
    pub q: &'a BoundSql,
    /// Rows kept; a read stops reading after one more.
    pub max_rows: usize,
    /// Whether it may change something. A change is read to its end (for its affected-row
    /// count); a read runs in a read-only transaction on PostgreSQL.
    pub changes: bool,
    /// Runs outside a transaction (`VACUUM`, `... CONCURRENTLY`, `PRAGMA`).
    pub autocommit: bool,
    /// The database stops the statement after this long.
    pub limit: Duration,
    /// An audit record written in the statement's transaction, so both commit or neither does.
    pub audit: Option<Audit<'a>>,
}

/// What is known of whether a statement's change took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Committed,
    RolledBack,
    /// The answer never came: it may or may not have committed.
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Unknown => "unknown",
        }
    }
}

/// Why a statement did not succeed, with what is known of its outcome.
#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    /// Its time ran out or the caller stopped it, and the database was told to stop it.
    #[error("{}", match .outcome {
        Outcome::Unknown => "the statement was cancelled, but the database did not confirm it stopped: it may have committed",
        _ => "the statement was cancelled on the database and nothing it did was committed",
    })]
    Stopped { outcome: Outcome },
    /// The database refused it or the connection failed.
    #[error("{source}")]
    Failed { source: DbError, outcome: Outcome },
}

impl StatementError {
    pub fn outcome(&self) -> Outcome {
        match self {
            StatementError::Stopped { outcome } | StatementError::Failed { outcome, .. } => {
                *outcome
            }
        }
    }
}

/// How far a statement got, which decides what is known of its outcome when it is cut off.
const PREPARING: u8 = 0;
/// Sent inside a transaction that has not been asked to commit.
const SENT: u8 = 1;
/// `COMMIT` sent, or the statement sent outside a transaction.
const COMMITTING: u8 = 2;
const DONE: u8 = 3;

/// What the running statement and whoever stops it share.
#[derive(Default)]
struct Shared {
    phase: AtomicU8,
    stop: AtomicBool,
    /// The PostgreSQL backend running it (0 until known), and when that backend started, so a
    /// cancel never reaches another session that got the same process id later.
    pid: AtomicI64,
    since: Mutex<String>,
    cancel_sent: AtomicBool,
}

impl Shared {
    fn phase(&self) -> u8 {
        self.phase.load(Ordering::SeqCst)
    }
    fn set_phase(&self, p: u8) {
        self.phase.store(p, Ordering::SeqCst);
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    /// What is known when the statement is cut off now.
    fn outcome_if_cut(&self, in_tx: bool) -> Outcome {
        match self.phase() {
            PREPARING => Outcome::RolledBack,
            SENT if in_tx => Outcome::RolledBack,
            DONE => Outcome::Committed,
            _ => Outcome::Unknown,
        }
    }
}

/// A pooled connection that is closed instead of returned to the pool unless the statement
/// ended cleanly: a connection left mid-statement or mid-transaction is never reused. When it is
/// dropped mid-statement, `on_cut` runs (on PostgreSQL: cancel the backend's statement).
struct Held<DB: Database> {
    conn: Option<PoolConnection<DB>>,
    clean: bool,
    on_cut: Option<Box<dyn FnOnce() + Send>>,
}

impl<DB: Database> Drop for Held<DB> {
    fn drop(&mut self) {
        if self.clean {
            return;
        }
        if let Some(c) = self.conn.as_mut() {
            c.close_on_drop();
        }
        if let Some(f) = self.on_cut.take() {
            f();
        }
    }
}

fn failed(e: sqlx::Error, outcome: Outcome) -> StatementError {
    StatementError::Failed {
        source: DbError::from(e),
        outcome,
    }
}

/// Runs `st` on `db`. When `stop` resolves first, the database is told to stop the statement
/// and is given `grace` to confirm it did.
pub async fn run(
    db: &Db,
    st: Statement<'_>,
    stop: impl Future<Output = ()>,
    grace: Duration,
) -> Result<SqlResult, StatementError> {
    match db {
        Db::Postgres(pool) => run_pg(pool, st, stop, grace).await,
        Db::Sqlite(pool) => run_sqlite(pool, st, stop, grace).await,
    }
}

/// Waits for `work` unless `stop` comes first; then sets the stop flag, runs `cancel`, and
/// waits at most `grace` more for `work` to end. Returns the result (if any) and whether the
/// connection ended cleanly.
async fn race<W, C>(
    work: W,
    stop: impl Future<Output = ()>,
    shared: &Shared,
    in_tx: bool,
    cancel: C,
    grace: Duration,
) -> Result<(SqlResult, bool), StatementError>
where
    W: Future<Output = Result<(SqlResult, bool), StatementError>>,
    C: Future<Output = ()>,
{
    let mut work = std::pin::pin!(work);
    tokio::select! {
        r = &mut work => r,
        () = stop => {
            shared.stop.store(true, Ordering::SeqCst);
            let answered = async {
                cancel.await;
                (&mut work).await
            };
            match tokio::time::timeout(grace, answered).await {
                Ok(r) => r,
                Err(_) => Err(StatementError::Stopped { outcome: shared.outcome_if_cut(in_tx) }),
            }
        }
    }
}

async fn run_pg(
    pool: &PgPool,
    st: Statement<'_>,
    stop: impl Future<Output = ()>,
    grace: Duration,
) -> Result<SqlResult, StatementError> {
    let started = Instant::now();
    let shared = Arc::new(Shared::default());
    let in_tx = !st.autocommit;
    let mut stop = std::pin::pin!(stop);
    let conn = tokio::select! {
        c = pool.acquire() => c.map_err(|e| failed(e, Outcome::RolledBack))?,
        () = &mut stop => return Err(StatementError::Stopped { outcome: Outcome::RolledBack }),
    };
    let on_cut = {
        let (pool, shared) = (pool.clone(), shared.clone());
        Box::new(move || {
            let running = matches!(shared.phase(), SENT | COMMITTING);
            if running && !shared.cancel_sent.load(Ordering::SeqCst) {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move { cancel_pg(&pool, &shared).await });
                }
            }
        }) as Box<dyn FnOnce() + Send>
    };
    let mut held = Held {
        conn: Some(conn),
        clean: false,
        on_cut: Some(on_cut),
    };
    let Some(conn) = held.conn.as_mut() else {
        return Err(StatementError::Stopped {
            outcome: Outcome::RolledBack,
        });
    };
    // The limit counts from the call: acquiring the connection used some of it.
    let limit = st.limit.saturating_sub(started.elapsed());
    let work = pg_work(conn, &st, &shared, in_tx, limit);
    let cancel = async {
        if grace > Duration::ZERO {
            let _ = tokio::time::timeout(grace / 2, cancel_pg(pool, &shared)).await;
        }
    };
    let (out, clean) = race(work, stop, &shared, in_tx, cancel, grace).await?;
    held.clean = clean;
    Ok(out)
}

/// Asks PostgreSQL to cancel the statement of the backend `shared` names, once.
async fn cancel_pg(pool: &PgPool, shared: &Shared) {
    let pid = shared.pid.load(Ordering::SeqCst);
    if pid == 0 || shared.cancel_sent.swap(true, Ordering::SeqCst) {
        return;
    }
    let since = shared.since.lock().map(|s| s.clone()).unwrap_or_default();
    let sent = sqlx::query(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND backend_start::text = $2",
    )
    .bind(pid as i32)
    .bind(since)
    .execute(pool)
    .await;
    if let Err(e) = sent {
        tracing::warn!(pid, error = %e, "Cancelling a timed-out statement failed.");
    }
}

/// What a server-reported or connection error means for the outcome.
fn pg_failure(e: sqlx::Error, shared: &Shared, in_tx: bool) -> StatementError {
    if is_cancelled(&e) {
        return StatementError::Stopped {
            outcome: Outcome::RolledBack,
        };
    }
    // An error the server reported ends the statement (and aborts its transaction); a broken
    // connection leaves a statement outside a transaction, or a `COMMIT`, undecided.
    let outcome = if e.as_database_error().is_some() {
        Outcome::RolledBack
    } else {
        shared.outcome_if_cut(in_tx)
    };
    failed(e, outcome)
}

/// `query_canceled` (PostgreSQL: statement timeout or cancel request) or `SQLITE_INTERRUPT`.
fn is_cancelled(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "57014" || c == "9")
}

async fn pg_work(
    conn: &mut sqlx::PgConnection,
    st: &Statement<'_>,
    shared: &Shared,
    in_tx: bool,
    limit: Duration,
) -> Result<(SqlResult, bool), StatementError> {
    let early = |e| failed(e, Outcome::RolledBack);
    if in_tx {
        let begin = if st.changes {
            "BEGIN"
        } else {
            "BEGIN READ ONLY"
        };
        conn.execute(begin).await.map_err(early)?;
    }
    let ms = limit.as_millis().max(1).to_string();
    let row = sqlx::query(
        "SELECT pg_backend_pid()::int8 AS pid, \
                (SELECT backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()) AS since, \
                set_config('statement_timeout', $1, $2) AS timeout",
    )
    .bind(ms)
    .bind(in_tx)
    .fetch_one(&mut *conn)
    .await
    .map_err(early)?;
    let since: Option<String> = row.try_get("since").map_err(early)?;
    if let Ok(mut s) = shared.since.lock() {
        *s = since.unwrap_or_default();
    }
    shared
        .pid
        .store(row.try_get("pid").map_err(early)?, Ordering::SeqCst);
    if shared.stopped() {
        return Err(StatementError::Stopped {
            outcome: Outcome::RolledBack,
        });
    }
    shared.set_phase(if in_tx { SENT } else { COMMITTING });
    let mut out = SqlResult::default();
    let drained = {
        #[allow(deprecated)]
        let mut stream =
            bind_pg(sqlx::query(&st.q.sql).persistent(false), &st.q.params).fetch_many(&mut *conn);
        let mut drained = true;
        while let Some(item) = stream
            .try_next()
            .await
            .map_err(|e| pg_failure(e, shared, in_tx))?
        {
            match item {
                Either::Left(done) => out.rows_affected += done.rows_affected(),
                Either::Right(row) if out.rows.len() < st.max_rows => {
                    out.rows.push(decode::pg_row(&row))
                }
                Either::Right(_) => {
                    out.truncated = true;
                    if !st.changes {
                        drained = false;
                        break;
                    }
                }
            }
        }
        drained
    };
    if !drained {
        // A read cut short: the rest of its rows are never read. The connection is closed and
        // the backend told to stop (see `Held`).
        return Ok((out, false));
    }
    if let Some(audit) = &st.audit {
        bind_pg(sqlx::query(AUDIT), &audit.params(out.rows_affected))
            .execute(&mut *conn)
            .await
            .map_err(|e| pg_failure(e, shared, in_tx))?;
    }
    if in_tx {
        if shared.stopped() {
            return Err(StatementError::Stopped {
                outcome: Outcome::RolledBack,
            });
        }
        shared.set_phase(COMMITTING);
        conn.execute("COMMIT")
            .await
            .map_err(|e| pg_failure(e, shared, in_tx))?;
    }
    shared.set_phase(DONE);
    // A session-wide `statement_timeout` (outside a transaction) must not outlive the statement.
    Ok((out, in_tx))
}

async fn run_sqlite(
    pool: &SqlitePool,
    st: Statement<'_>,
    stop: impl Future<Output = ()>,
    grace: Duration,
) -> Result<SqlResult, StatementError> {
    let shared = Arc::new(Shared::default());
    let in_tx = st.changes && !st.autocommit;
    let deadline = Instant::now() + st.limit;
    let mut stop = std::pin::pin!(stop);
    let mut conn = tokio::select! {
        c = pool.acquire() => c.map_err(|e| failed(e, Outcome::RolledBack))?,
        () = &mut stop => return Err(StatementError::Stopped { outcome: Outcome::RolledBack }),
    };
    {
        let mut handle = conn
            .lock_handle()
            .await
            .map_err(|e| failed(e, Outcome::RolledBack))?;
        let s = shared.clone();
        // Called every thousand virtual-machine steps; `false` interrupts the statement.
        handle.set_progress_handler(1000, move || !s.stopped() && Instant::now() < deadline);
    }
    let on_cut = {
        let shared = shared.clone();
        // The progress handler interrupts the statement at its next call.
        Box::new(move || shared.stop.store(true, Ordering::SeqCst)) as Box<dyn FnOnce() + Send>
    };
    let mut held = Held {
        conn: Some(conn),
        clean: false,
        on_cut: Some(on_cut),
    };
    let Some(conn) = held.conn.as_mut() else {
        return Err(StatementError::Stopped {
            outcome: Outcome::RolledBack,
        });
    };
    let result = {
        let work = sqlite_work(&mut *conn, &st, &shared, in_tx);
        race(work, stop, &shared, in_tx, async {}, grace).await
    };
    let (out, _) = result?;
    // The handler goes with the statement; a connection that keeps it is closed.
    if let Ok(mut handle) = conn.lock_handle().await {
        handle.remove_progress_handler();
        held.clean = true;
    }
    Ok(out)
}

async fn sqlite_work(
    conn: &mut sqlx::SqliteConnection,
    st: &Statement<'_>,
    shared: &Shared,
    in_tx: bool,
) -> Result<(SqlResult, bool), StatementError> {
    let fail = |e: sqlx::Error| {
        if is_cancelled(&e) {
            StatementError::Stopped {
                outcome: Outcome::RolledBack,
            }
        } else {
            let outcome = if e.as_database_error().is_some() {
                Outcome::RolledBack
            } else {
                shared.outcome_if_cut(in_tx)
            };
            failed(e, outcome)
        }
    };
    if in_tx {
        conn.execute("BEGIN")
            .await
            .map_err(|e| failed(e, Outcome::RolledBack))?;
    }
    // A read runs with the connection read-only, as PostgreSQL runs it in a `READ ONLY`
    // transaction: text that passes for a read (`SELECT 1; DELETE ...`) cannot write. The setting
    // is lifted once the read ends cleanly; a connection that ends otherwise is closed, not reused.
    if !st.changes {
        conn.execute("PRAGMA query_only = ON")
            .await
            .map_err(|e| failed(e, Outcome::RolledBack))?;
    }
    if shared.stopped() {
        return Err(StatementError::Stopped {
            outcome: Outcome::RolledBack,
        });
    }
    shared.set_phase(if in_tx { SENT } else { COMMITTING });
    let mut out = SqlResult::default();
    {
        #[allow(deprecated)]
        let mut stream = bind_sqlite(sqlx::query(&st.q.sql).persistent(false), &st.q.params)
            .fetch_many(&mut *conn);
        while let Some(item) = stream.try_next().await.map_err(fail)? {
            match item {
                Either::Left(done) => out.rows_affected += done.rows_affected(),
                Either::Right(row) if out.rows.len() < st.max_rows => {
                    out.rows.push(decode::sqlite_row(&row))
                }
                Either::Right(_) => {
                    out.truncated = true;
                    if !st.changes {
                        // Dropping the stream stops the statement: the rest is never read.
                        break;
                    }
                }
            }
        }
    }
    if !st.changes {
        conn.execute("PRAGMA query_only = OFF")
            .await
            .map_err(fail)?;
    }
    if let Some(audit) = &st.audit {
        bind_sqlite(
            sqlx::query(&dollar_to_question(AUDIT)),
            &audit.params(out.rows_affected),
        )
        .execute(&mut *conn)
        .await
        .map_err(fail)?;
    }
    if in_tx {
        if shared.stopped() {
            return Err(StatementError::Stopped {
                outcome: Outcome::RolledBack,
            });
        }
        shared.set_phase(COMMITTING);
        conn.execute("COMMIT").await.map_err(fail)?;
    }
    shared.set_phase(DONE);
    Ok((out, true))
}
