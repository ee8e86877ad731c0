//! Multi-row statements: a batch of rows written or looked up in one round trip instead of one
//! per row. The webhook receiver admits a burst of notifications with a fixed number of these per
//! batch, whatever the batch's size.

use serde_json::Value as Json;

use super::{guards::tx_sql, DbError, Tx};

/// Parameters of one statement at most, under both backends' limits (SQLite 32,766, PostgreSQL
/// 65,535): longer batches are split into several statements.
const MAX_PARAMS: usize = 30_000;

/// How a value is placed: as bound, or cast to the column's type (PostgreSQL does not convert
/// text to JSONB or TIMESTAMPTZ on its own; SQLite stores both as text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Col {
    Plain,
    Json,
    Timestamp,
}

impl Col {
    fn place(self, tx: &Tx, n: usize) -> String {
        match (self, tx) {
            // Typed as text first: a statement is prepared once per text, and a NULL bound
            // first would otherwise have PostgreSQL infer the cast's type for the parameter,
            // which a text value bound later does not match.
            (Col::Json, Tx::Postgres(_)) => format!("CAST(CAST(${n} AS TEXT) AS JSONB)"),
            (Col::Timestamp, Tx::Postgres(_)) => {
                format!("CAST(CAST(${n} AS TEXT) AS TIMESTAMPTZ)")
            }
            _ => format!("${n}"),
        }
    }
}

/// Runs `{head} ({row}), ({row}), ... {tail}` inside `tx` for `rows` (each with one value per
/// entry of `cols`), split into statements under the parameter limit. `head` may use `$1` to
/// `$k` for the `k` values of `fixed`, which every statement binds first; the rows every statement
/// returned, in order. With `RETURNING`, both backends return an `INSERT ... VALUES` statement's
/// rows in the order of its `VALUES` list, which is what callers that pair ids with rows rely on
/// (and check by count).
pub async fn values(
    tx: &mut Tx,
    head: &str,
    fixed: &[Json],
    cols: &[Col],
    rows: &[Vec<Json>],
    tail: &str,
) -> Result<Vec<Json>, DbError> {
    let mut out = Vec::new();
    if cols.is_empty() {
        return Ok(out);
    }
    let per_statement = (MAX_PARAMS.saturating_sub(fixed.len()) / cols.len()).max(1);
    for chunk in rows.chunks(per_statement) {
        let mut list = Vec::with_capacity(chunk.len());
        let mut params = fixed.to_vec();
        for row in chunk {
            debug_assert_eq!(row.len(), cols.len(), "a row of {head}");
            let placed: Vec<String> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| c.place(tx, params.len() + i + 1))
                .collect();
            list.push(format!("({})", placed.join(", ")));
            params.extend(row.iter().cloned());
        }
        let sql = format!("{head} {} {tail}", list.join(", "));
        out.extend(tx_sql(tx, &sql, params).await?);
    }
    Ok(out)
}

/// The `id` column of rows a `RETURNING id` statement gave, checked to be one per row written.
pub fn ids(rows: &[Json], expected: usize) -> Result<Vec<i64>, DbError> {
    let ids: Vec<i64> = rows.iter().filter_map(|r| r["id"].as_i64()).collect();
    if ids.len() == expected {
        Ok(ids)
    } else {
        Err(DbError::from(sqlx::Error::Protocol(format!(
            "a multi-row insert returned {} ids for {expected} rows",
            ids.len()
        ))))
    }
}
