//! `sql`: one statement on the store or a named datasource; every `{{ expr }}` is a bound value.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value as Json};

use super::short::FromShort;
use super::{
    names::{self, Names},
    CompileError, Flavour, Kind, StepCx, StepError, StepOutput,
};
use crate::{
    store::{
        runs,
        statement::{self, Outcome, Statement, StatementError},
        Audit,
    },
    template::Dialect,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// `sql: "SELECT ..."` runs on the store; the long form names a datasource.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSql {
    #[serde(default)]
    pub datasource: Option<String>,
    pub query: String,
    /// Rows kept in the result (default 1000, at most 100000).
    #[serde(default)]
    pub max_rows: Option<usize>,
    /// Running the statement twice does no harm, so `retry` may run a statement that changes
    /// things again after a timeout or a transient error (default false: it is not retried).
    #[serde(default)]
    pub idempotent: bool,
}

impl FromShort for RawSql {
    fn from_short(query: String) -> Self {
        RawSql {
            datasource: None,
            query,
            max_rows: None,
            idempotent: false,
        }
    }
}

pub const DEFAULT_MAX_ROWS: usize = 1000;
/// The most rows a step keeps: `max_rows` above it is a validation error.
pub const MAX_ROWS_CEILING: usize = 100_000;

#[derive(Debug)]
pub struct SqlStep {
    pub datasource: Option<String>,
    pub query: String,
    pub max_rows: usize,
    pub idempotent: bool,
}

impl SqlStep {
    /// Whether trying the statement again is safe: it only reads, or the playbook says running
    /// it twice does no harm.
    pub fn retries_safely(&self) -> bool {
        self.idempotent || is_read_statement(&self.query)
    }
}

impl Kind for SqlStep {
    type Raw = RawSql;
    type Input = Input;

    fn compile(r: RawSql) -> Result<Self, CompileError> {
        let max_rows = r.max_rows.unwrap_or(DEFAULT_MAX_ROWS);
        if max_rows > MAX_ROWS_CEILING {
            return Err((
                ".sql.max_rows".into(),
                format!(
                    "max_rows {max_rows} is above the ceiling of {MAX_ROWS_CEILING} rows a step keeps: \
                     aggregate in the query (GROUP BY, COUNT) or page through it with LIMIT/OFFSET"
                ),
            ));
        }
        Ok(SqlStep {
            datasource: r.datasource,
            query: r.query,
            max_rows,
            idempotent: r.idempotent,
        })
    }

    /// A statement that only reads (see [`is_read_statement`]).
    fn is_read(&self) -> bool {
        is_read_statement(&self.query)
    }

    fn templates(&self) -> Vec<(String, &str, Flavour)> {
        vec![("sql".into(), self.query.as_str(), Flavour::Sql)]
    }

    fn check_names(&self, names: &Names) -> Vec<(String, String)> {
        match &self.datasource {
            Some(d) if !names.datasources.contains(d) => vec![(
                "sql.datasource".into(),
                format!(
                    "unknown datasource `{d}` (the config's `datasources` names: {})",
                    names::list(&names.datasources)
                ),
            )],
            _ => vec![],
        }
    }

    fn render(&self, cx: &StepCx<'_>) -> Result<Input, StepError> {
        let dialect = match &self.datasource {
            None => cx.services.store.dialect(),
            Some(name) => cx
                .services
                .datasource_dialect(name)
                .map_err(|e| StepError::fatal(crate::text::error_chain(&e)))?,
        };
        let q = cx
            .services
            .templates
            .render_sql(&self.query, cx.ctx, dialect)
            .map_err(StepError::template)?;
        Ok(Input {
            datasource: self.datasource.clone().unwrap_or_else(|| "store".into()),
            dialect,
            sql: q.sql,
            params: q.params,
            max_rows: self.max_rows,
            idempotent: self.idempotent,
        })
    }

    async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
        execute(i, cx).await
    }
}

#[derive(Debug, Serialize)]
pub struct Input {
    pub datasource: String,
    pub dialect: Dialect,
    pub sql: String,
    pub params: Vec<Json>,
    #[serde(skip)]
    pub max_rows: usize,
    #[serde(skip)]
    pub idempotent: bool,
}

/// Statements that read for the global pause: `SELECT`, `WITH` without a data-modifying
/// statement, `SHOW`, `VALUES`, `TABLE`, and `EXPLAIN` without `ANALYZE` (which runs the
/// statement); `SELECT ... INTO` creates a table. `PRAGMA` can write, so it is not a read here.
/// A statement that calls a function which changes things, even through `SELECT`
/// (`pg_terminate_backend`, `nextval`, ...: [`CHANGING_FUNCTIONS`]), is a change: a read-only
/// transaction does not stop those.
pub fn is_read_statement(sql: &str) -> bool {
    if contains_word(sql, CHANGING_FUNCTIONS) {
        return false;
    }
    match first_word(sql).as_str() {
        "SELECT" => !contains_word(sql, &["INTO"]),
        "WITH" => !contains_word(sql, &["INSERT", "UPDATE", "DELETE", "MERGE", "INTO"]),
        "SHOW" | "VALUES" | "TABLE" => true,
        "EXPLAIN" => !contains_word(sql, &["ANALYZE", "ANALYSE"]),
        _ => false,
    }
}

/// PostgreSQL functions that act although called from a `SELECT` (and pass a `READ ONLY`
/// transaction, or act outside it): ending or cancelling sessions, sequences, configuration,
/// advisory locks, notifications, WAL and log switches, large objects, dblink.
const CHANGING_FUNCTIONS: &[&str] = &[
    "pg_terminate_backend",
    "pg_cancel_backend",
    "nextval",
    "setval",
    "set_config",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_notify",
    "pg_advisory_lock",
    "pg_advisory_xact_lock",
    "pg_try_advisory_lock",
    "pg_try_advisory_xact_lock",
    "pg_advisory_unlock",
    "pg_advisory_unlock_all",
    "lo_unlink",
    "lo_import",
    "lo_export",
    "dblink_exec",
    "pg_create_restore_point",
    "pg_promote",
];

fn first_word(sql: &str) -> String {
    sql.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("--"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("")
        .to_ascii_uppercase()
}

fn contains_word(sql: &str, words: &[&str]) -> bool {
    sql.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|w| words.iter().any(|x| w.eq_ignore_ascii_case(x)))
}

/// Statements that cannot run inside a transaction block: `VACUUM` and `... CONCURRENTLY` on
/// PostgreSQL, `VACUUM` and `PRAGMA` (some of which refuse a transaction) on SQLite.
fn needs_autocommit(sql: &str) -> bool {
    let first = first_word(sql);
    first == "VACUUM" || first == "PRAGMA" || contains_word(sql, &["CONCURRENTLY"])
}

/// The index of the first bound value holding a NUL character, anywhere inside it.
fn value_with_nul(params: &[Json]) -> Option<usize> {
    fn has_nul(v: &Json) -> bool {
        match v {
            Json::String(s) => s.contains('\0'),
            Json::Array(a) => a.iter().any(has_nul),
            Json::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    params.iter().position(has_nul)
}

/// Of an attempt's time, what is kept back from the database's limit: the database stops the
/// statement at the deadline minus this, the step stops waiting for it at half of it before
/// the deadline, and a cancel gets a quarter of it to be confirmed.
pub(crate) fn margin(timeout: Duration) -> Duration {
    (timeout / 5).clamp(Duration::from_millis(20), Duration::from_secs(2))
}

pub async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
    let deadline = tokio::time::Instant::now() + cx.timeout;
    let margin = margin(cx.timeout);
    let changes = !is_read_statement(&i.sql);
    if i.dialect == Dialect::Postgres {
        if let Some(n) = value_with_nul(&i.params) {
            return Err(StepError::fatal(format!(
                "bound value ${} contains a NUL character (\\u0000), which PostgreSQL text cannot hold: \
                 remove it from the parameter or alert label it comes from",
                n + 1
            )));
        }
    }
    let on_store = i.datasource == "store" && !cx.services.has_datasource("store");
    let db = if on_store {
        cx.services.store.clone()
    } else {
        // Connecting counts against the step's time like the statement does.
        match tokio::time::timeout_at(deadline, cx.services.datasource(&i.datasource)).await {
            Ok(db) => db.map_err(|e| StepError::retryable(crate::text::error_chain(&e)))?,
            Err(_) => {
                return Err(StepError::retryable(format!(
                    "timed out after {} connecting to datasource {}",
                    crate::duration::Dur(cx.timeout),
                    i.datasource
                )))
            }
        }
    };
    let q = crate::template::BoundSql {
        sql: i.sql.clone(),
        params: i.params.clone(),
    };
    let autocommit = needs_autocommit(&i.sql);
    let filter = |outcome: Outcome| {
        cx.services.masker.mask_json(&json!({
            "datasource": i.datasource, "sql": i.sql, "params": i.params, "outcome": outcome,
        }))
    };
    let op = format!("sql:{}", cx.step_id);
    let actor = cx.run.actor();
    // On the store a change and its audit record commit together; another database cannot share
    // the store's transaction, so there the record follows the change.
    let same_tx = on_store && changes && !autocommit;
    let statement = Statement {
        q: &q,
        max_rows: i.max_rows,
        changes,
        autocommit,
        limit: deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .saturating_sub(margin),
        audit: same_tx.then(|| Audit {
            actor: &actor,
            op: &op,
            filter: filter(Outcome::Committed),
        }),
    };
    let stop = async {
        tokio::select! {
            () = tokio::time::sleep_until(deadline - margin / 2) => {}
            () = cx.run.cancel.cancelled() => {}
        }
    };
    let result = statement::run(&db, statement, stop, margin / 4).await;
    let recorded = |outcome: Outcome, rows: u64| {
        let store = cx.services.store.clone();
        let (actor, op, filter) = (actor.clone(), op.clone(), filter(outcome));
        // Written by a task of its own, so the record is made even if this step is dropped.
        let task =
            tokio::spawn(async move { runs::audit(&store, &actor, &op, filter, rows).await });
        async move {
            match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(StepError::fatal(format!(
                    "audit record could not be written: {e}"
                ))),
                Err(e) => Err(StepError::fatal(format!(
                    "audit record could not be written: {e}"
                ))),
            }
        }
    };
    let res = match result {
        Ok(res) => res,
        Err(e) => {
            let outcome = e.outcome();
            let stopped = matches!(e, StatementError::Stopped { .. });
            if changes && (stopped || outcome == Outcome::Unknown) {
                recorded(outcome, 0).await?;
            }
            return Err(step_error(&i, cx, e, changes && !i.idempotent));
        }
    };
    if changes && !same_tx {
        recorded(Outcome::Committed, res.rows_affected).await?;
    }
    let output = if changes {
        json!({ "rows_affected": res.rows_affected, "row_count": res.rows.len(), "truncated": res.truncated })
    } else {
        json!({ "row_count": res.rows.len(), "truncated": res.truncated })
    };
    Ok(StepOutput {
        output,
        rows: res.rows,
    })
}

/// The step's error for a statement that failed: a timeout or a transient database error may
/// be retried, unless the statement changes things and the step does not say it is idempotent.
fn step_error(i: &Input, cx: &StepCx<'_>, e: StatementError, no_retry: bool) -> StepError {
    let (msg, transient) = match &e {
        StatementError::Stopped { .. } => {
            let why =
                cx.run.cancel.reason().unwrap_or_else(|| {
                    format!("timed out after {}", crate::duration::Dur(cx.timeout))
                });
            (format!("{why}: {e}"), true)
        }
        StatementError::Failed { source, outcome } => {
            let mut msg = format!(
                "{} query failed: {}",
                i.datasource,
                cx.services.masker.mask_str(&source.to_string())
            );
            if *outcome == Outcome::Unknown {
                msg.push_str(" (the connection failed while it ran: it may have committed)");
            }
            (msg, source.is_transient())
        }
    };
    match (transient, no_retry) {
        (true, false) => StepError::retryable(msg),
        (true, true) => StepError::fatal(format!(
            "{msg} (not retried: the statement changes things; give the step `idempotent: true` if running it twice is safe)"
        )),
        (false, _) => StepError::fatal(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_that_refuse_a_transaction_run_outside_one() {
        assert!(needs_autocommit("VACUUM (ANALYZE) command_queue"));
        assert!(needs_autocommit("-- reclaim\nvacuum"));
        assert!(needs_autocommit("CREATE INDEX CONCURRENTLY i ON t (a)"));
        assert!(needs_autocommit("PRAGMA wal_checkpoint(TRUNCATE)"));
        assert!(!needs_autocommit("DELETE FROM command_queue"));
    }

    #[test]
    fn finds_a_nul_anywhere_in_a_bound_value() {
        assert_eq!(value_with_nul(&[json!("a"), json!(1)]), None);
        assert_eq!(value_with_nul(&[json!("a"), json!("b\u{0}c")]), Some(1));
        assert_eq!(value_with_nul(&[json!({"k": ["x\u{0}"]})]), Some(0));
    }

    #[test]
    fn max_rows_has_a_ceiling() {
        let raw = |max_rows| RawSql {
            datasource: None,
            query: "SELECT 1".into(),
            max_rows: Some(max_rows),
            idempotent: false,
        };
        assert!(SqlStep::compile(raw(MAX_ROWS_CEILING)).is_ok());
        let (at, message) = SqlStep::compile(raw(MAX_ROWS_CEILING + 1)).unwrap_err();
        assert_eq!(at, ".sql.max_rows");
        assert!(message.contains("ceiling of 100000"), "{message}");
    }

    #[test]
    fn reads_for_the_pause() {
        for read in [
            "-- depth\nSELECT status, COUNT(*) FROM command_queue GROUP BY status",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "select 1",
            "SHOW work_mem",
            "EXPLAIN SELECT * FROM command_queue",
            "VALUES (1)",
        ] {
            assert!(is_read_statement(read), "{read}");
        }
        for change in [
            "WITH d AS (DELETE FROM t RETURNING 1) SELECT count(*) FROM d",
            "UPDATE command_queue SET status = 'pending'",
            "SELECT * INTO backup FROM command_queue",
            "EXPLAIN ANALYZE DELETE FROM command_queue",
            "PRAGMA journal_mode = DELETE",
            "VACUUM",
            "INSERT INTO t VALUES (1)",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE state = 'idle in transaction'",
            "select nextval('command_queue_id_seq')",
            "SELECT set_config('work_mem', '1GB', false)",
        ] {
            assert!(!is_read_statement(change), "{change}");
        }
    }
}
