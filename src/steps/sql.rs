//! `sql`: one statement on the store or a named datasource; every `{{ expr }}` is a bound value.

use serde::Serialize;
use serde_json::{json, Value as Json};

use super::short::FromShort;
use super::{
    names::{self, Names},
    CompileError, Flavour, Kind, StepCx, StepError, StepOutput,
};
use crate::template::Dialect;
use schemars::JsonSchema;
use serde::Deserialize;

/// `sql: "SELECT ..."` runs on the store; the long form names a datasource.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSql {
    #[serde(default)]
    pub datasource: Option<String>,
    pub query: String,
    /// Rows kept in the result (default 1000).
    #[serde(default)]
    pub max_rows: Option<usize>,
}

impl FromShort for RawSql {
    fn from_short(query: String) -> Self {
        RawSql {
            datasource: None,
            query,
            max_rows: None,
        }
    }
}

pub const DEFAULT_MAX_ROWS: usize = 1000;

#[derive(Debug)]
pub struct SqlStep {
    pub datasource: Option<String>,
    pub query: String,
    pub max_rows: usize,
}

impl Kind for SqlStep {
    type Raw = RawSql;
    type Input = Input;

    fn compile(r: RawSql) -> Result<Self, CompileError> {
        Ok(SqlStep {
            datasource: r.datasource,
            query: r.query,
            max_rows: r.max_rows.unwrap_or(DEFAULT_MAX_ROWS),
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
}

/// Statements that read for the global pause: `SELECT`, `WITH` without a data-modifying
/// statement, `SHOW`, `VALUES`, `TABLE`, and `EXPLAIN` without `ANALYZE` (which runs the
/// statement); `SELECT ... INTO` creates a table. `PRAGMA` can write, so it is not a read here.
/// A `SELECT` of a function that changes things (`pg_terminate_backend`) still counts as a read.
pub fn is_read_statement(sql: &str) -> bool {
    match first_word(sql).as_str() {
        "SELECT" => !contains_word(sql, &["INTO"]),
        "WITH" => !contains_word(sql, &["INSERT", "UPDATE", "DELETE", "MERGE", "INTO"]),
        "SHOW" | "VALUES" | "TABLE" => true,
        "EXPLAIN" => !contains_word(sql, &["ANALYZE", "ANALYSE"]),
        _ => false,
    }
}

fn first_word(sql: &str) -> String {
    sql.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("--"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// Statements that only read; anything else is audited.
fn is_read_only(sql: &str) -> bool {
    let first = sql
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("--"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("")
        .to_ascii_uppercase();
    matches!(
        first.as_str(),
        "SELECT" | "SHOW" | "EXPLAIN" | "VALUES" | "TABLE" | "PRAGMA"
    ) || (first == "WITH" && !contains_word(sql, &["INSERT", "UPDATE", "DELETE"]))
}

fn contains_word(sql: &str, words: &[&str]) -> bool {
    sql.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|w| words.iter().any(|x| w.eq_ignore_ascii_case(x)))
}

/// Statements that cannot run inside a transaction block on PostgreSQL.
fn needs_autocommit(sql: &str) -> bool {
    let first = sql
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    first == "VACUUM" || contains_word(sql, &["CONCURRENTLY"])
}

pub async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
    let on_store = i.datasource == "store" && !cx.services.has_datasource("store");
    let db = if on_store {
        cx.services.store.clone()
    } else {
        cx.services
            .datasource(&i.datasource)
            .await
            .map_err(|e| StepError::retryable(crate::text::error_chain(&e)))?
    };
    let q = crate::template::BoundSql {
        sql: i.sql.clone(),
        params: i.params.clone(),
    };
    let read_only = is_read_only(&i.sql);
    let filter = json!({ "datasource": i.datasource, "sql": i.sql, "params": i.params });
    let op = format!("sql:{}", cx.step_id);
    let actor = cx.run.actor();
    // On the store a change and its audit record commit together; another database cannot share
    // the store's transaction, so there the record follows the change.
    let same_tx = on_store && !read_only && !needs_autocommit(&i.sql);
    let result = if same_tx {
        let audit = crate::store::Audit {
            actor: &actor,
            op: &op,
            filter: cx.services.masker.mask_json(&filter),
        };
        db.query_audited(&q, i.max_rows, audit).await
    } else {
        db.query(&q, i.max_rows).await
    };
    let res = result.map_err(|e| {
        let msg = format!(
            "{} query failed: {}",
            i.datasource,
            cx.services.masker.mask_str(&e.to_string())
        );
        if e.is_transient() {
            StepError::retryable(msg)
        } else {
            StepError::fatal(msg)
        }
    })?;
    if !read_only && !same_tx {
        cx.services
            .audit(&actor, &op, filter, res.rows_affected)
            .await
            .map_err(|e| StepError::fatal(format!("audit record could not be written: {e}")))?;
    }
    let output = if read_only {
        json!({ "row_count": res.rows.len(), "truncated": res.truncated })
    } else {
        json!({ "rows_affected": res.rows_affected, "row_count": res.rows.len(), "truncated": res.truncated })
    };
    Ok(StepOutput {
        output,
        rows: res.rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statements() {
        assert!(is_read_only("-- depth\nSELECT 1"));
        assert!(is_read_only("WITH x AS (SELECT 1) SELECT * FROM x"));
        assert!(!is_read_only(
            "WITH d AS (DELETE FROM t RETURNING 1) SELECT count(*) FROM d"
        ));
        assert!(!is_read_only("DELETE FROM command_queue"));
        assert!(!is_read_only("VACUUM"));
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
        ] {
            assert!(!is_read_statement(change), "{change}");
        }
    }
}
