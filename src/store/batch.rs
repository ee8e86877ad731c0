//! Multi-row statements: a batch of rows written or looked up in one round trip instead of one
//! per row. The webhook receiver admits a burst of notifications with a fixed number of these per
//! batch, whatever the batch's size.
//!
//! On PostgreSQL the rows travel as one array per column (`SELECT ... FROM UNNEST($1::text[],
//! $2::int8[], ...)`), so a statement's text is the same whatever the number of rows: the server
//! parses and plans it once per connection and the client keeps it prepared, where a `VALUES`
//! list of a new length would be a new statement each time (a parse, a plan and an extra round
//! trip, and the connection's statement cache churning through every length). On SQLite, where
//! preparing costs no round trip, the rows go as a `VALUES` list.

use std::borrow::Cow;

use serde_json::Value as Json;

use super::{decode, guards::tx_sql, DbError, Tx};

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
            (Col::Plain, Tx::Postgres(_)) => format!("${n}"),
            // Anonymous, numbered by its place: for every parameter bound, SQLite looks a
            // numbered one (`?N`) up in the list of all the statement's numbered parameters,
            // and a batch of 3,000 rows of 11 columns spent 3 of its 3.7 s there
            // (`sqlite3VListNumToName`).
            (_, Tx::Sqlite(_)) => "?".to_owned(),
        }
    }
}

/// Runs `{head} ({row}), ({row}), ... {tail}` inside `tx` for `rows` (each with one value per
/// entry of `cols`); `head` ends with `VALUES`, and neither it nor `tail` binds a value. A `VALUES`
/// list used as a table names
/// its columns `column1`, `column2`, ... on both backends (SQLite takes no column aliases), and
/// so does its PostgreSQL form. Returns the rows every statement returned, in order. With
/// `RETURNING`, both backends return an `INSERT` statement's rows in the order of its rows
/// (the `VALUES` list's, or the arrays'), which is what callers that pair ids with rows rely on
/// (and check by count).
pub async fn values(
    tx: &mut Tx,
    head: &str,
    cols: &[Col],
    rows: &[Vec<Json>],
    tail: &str,
) -> Result<Vec<Json>, DbError> {
    if cols.is_empty() || rows.is_empty() {
        return Ok(Vec::new());
    }
    if let Tx::Postgres(pg) = tx {
        if let Some(columns) = Columns::of(cols, rows) {
            if let Some(sql) = unnest_sql(head, 0, cols, &columns, tail) {
                let q = columns.bind(sqlx::query(&sql));
                let found = q.fetch_all(&mut **pg).await?;
                return Ok(found.iter().map(decode::pg_row).collect());
            }
        }
    }
    let mut out = Vec::new();
    let per_statement = (MAX_PARAMS / cols.len()).max(1);
    for chunk in rows.chunks(per_statement) {
        let mut list = Vec::with_capacity(chunk.len());
        let mut params = Vec::with_capacity(chunk.len() * cols.len());
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

/// The rows of one multi-row insert, for [`Writes`]: `{head} (row), (row), ... {tail}` as
/// [`values`] writes them (`head` ends with `VALUES`), returning nothing.
pub struct Insert {
    pub head: Cow<'static, str>,
    pub cols: Vec<Col>,
    pub rows: Vec<Vec<Json>>,
    pub tail: &'static str,
}

/// Inserts `rows` inside `tx`; their ids, in order. With ids drawn for them from `sequence`
/// ([`Writes::ids`]) each row is given its id and the rows go with `writes`; otherwise they are
/// written at once and the ids come from `RETURNING`. `head` (`INSERT INTO t (a, b) VALUES`) names
/// every column but `id`.
pub async fn insert_ids(
    tx: &mut Tx,
    writes: &mut Writes,
    sequence: &'static str,
    head: &'static str,
    mut cols: Vec<Col>,
    mut rows: Vec<Vec<Json>>,
) -> Result<Vec<i64>, DbError> {
    let Some(ids) = writes.ids(sequence, rows.len()) else {
        let returned = values(tx, head, &cols, &rows, "RETURNING id").await?;
        return self::ids(&returned, rows.len());
    };
    let Some(columns) = head.strip_suffix(") VALUES") else {
        return Err(DbError::from(sqlx::Error::Protocol(format!(
            "not a VALUES insert: {head}"
        ))));
    };
    cols.push(Col::Plain);
    for (row, id) in rows.iter_mut().zip(&ids) {
        row.push(Json::from(*id));
    }
    let insert = Insert {
        head: format!("{columns}, id) VALUES").into(),
        cols,
        rows,
        tail: "",
    };
    writes.push(tx, insert).await?;
    Ok(ids)
}

/// The writes of a transaction that nothing in it reads back: on PostgreSQL kept, with ids drawn
/// ahead from their tables' sequences, and written by [`Writes::flush`] as one statement of
/// data-modifying `WITH` clauses, one round trip for all of them; on SQLite, where a statement
/// costs no round trip, each is written when pushed and its ids come back from `RETURNING`.
///
/// The receiver's batch so goes in four round trips on PostgreSQL (`BEGIN` with the guard locks,
/// the one read that also draws the ids, the one write, `COMMIT`) where it took nine. The clauses
/// of one statement share a snapshot and their constraints and triggers are checked when the
/// statement ends, so the order of the clauses does not matter, and none of them reads what
/// another writes.
#[derive(Default)]
pub struct Writes {
    kept: Vec<Insert>,
    /// What [`Writes::flush`] wrote as one statement (PostgreSQL), kept until the [`Writes`] is
    /// dropped: its rows are the biggest thing a batch frees, and the receiver's writer frees
    /// them after it has answered. On SQLite each insert is written and freed when pushed.
    written: Vec<Insert>,
    /// Ids to draw from each sequence, by [`Writes::want`], for the next read that draws them.
    wanted: Vec<(&'static str, usize)>,
    /// Ids drawn, by sequence, in drawing order.
    drawn: std::collections::HashMap<&'static str, std::collections::VecDeque<i64>>,
}

impl Writes {
    /// Asks for `n` ids of `sequence` (on PostgreSQL; on SQLite nothing is drawn).
    pub fn want(&mut self, sequence: &'static str, n: usize) {
        if n > 0 {
            self.wanted.push((sequence, n));
        }
    }

    /// The ids to draw, as the two arrays (sequence names, counts) a read binds; emptied.
    pub fn take_wanted(&mut self) -> (Vec<&'static str>, Vec<i64>) {
        std::mem::take(&mut self.wanted)
            .into_iter()
            .map(|(s, n)| (s, n as i64))
            .unzip()
    }

    /// An id drawn from `sequence`, as the read returned it.
    pub fn drawn(&mut self, sequence: &'static str, id: i64) {
        self.drawn.entry(sequence).or_default().push_back(id);
    }

    /// `n` ids drawn from `sequence`, lowest first; `None` when fewer were drawn (on SQLite, none
    /// ever are), and the insert then takes its ids from `RETURNING`.
    pub fn ids(&mut self, sequence: &'static str, n: usize) -> Option<Vec<i64>> {
        let drawn = self.drawn.get_mut(sequence)?;
        if drawn.len() < n {
            return None;
        }
        let mut ids: Vec<i64> = drawn.drain(..n).collect();
        ids.sort_unstable();
        Some(ids)
    }

    /// Keeps `insert` for [`Writes::flush`] on PostgreSQL; writes it now on SQLite.
    pub async fn push(&mut self, tx: &mut Tx, insert: Insert) -> Result<(), DbError> {
        if insert.rows.is_empty() {
            return Ok(());
        }
        match tx {
            Tx::Postgres(_) => self.kept.push(insert),
            Tx::Sqlite(_) => {
                values(tx, &insert.head, &insert.cols, &insert.rows, insert.tail).await?;
            }
        }
        Ok(())
    }

    /// Writes what was kept: one statement on PostgreSQL (each insert on its own when one has
    /// columns that do not go as typed arrays).
    pub async fn flush(&mut self, tx: &mut Tx) -> Result<(), DbError> {
        let kept = std::mem::take(&mut self.kept);
        if kept.is_empty() {
            return Ok(());
        }
        let typed: Option<Vec<Columns>> =
            kept.iter().map(|i| Columns::of(&i.cols, &i.rows)).collect();
        let (Tx::Postgres(pg), Some(columns)) = (&mut *tx, typed) else {
            for i in &kept {
                values(tx, &i.head, &i.cols, &i.rows, i.tail).await?;
            }
            return Ok(());
        };
        let mut clauses = Vec::with_capacity(kept.len());
        let mut bound = 0;
        for (i, c) in kept.iter().zip(&columns) {
            let sql = unnest_sql(&i.head, bound, &i.cols, c, i.tail).ok_or_else(|| {
                DbError::from(sqlx::Error::Protocol(format!(
                    "not a VALUES insert: {}",
                    i.head
                )))
            })?;
            bound += i.cols.len();
            clauses.push(sql);
        }
        let last = clauses.pop().unwrap_or_default();
        let sql = if clauses.is_empty() {
            last
        } else {
            let with: Vec<String> = clauses
                .iter()
                .enumerate()
                .map(|(n, c)| format!("w{n} AS ({c})"))
                .collect();
            format!("WITH {} {last}", with.join(", "))
        };
        let mut q = sqlx::query(&sql);
        for c in columns {
            q = c.bind(q);
        }
        q.execute(&mut **pg).await?;
        self.written.extend(kept);
        Ok(())
    }
}

/// The PostgreSQL text of a [`values`] statement with one array parameter per column:
/// `{head without VALUES} SELECT u.c1 AS column1, ... FROM UNNEST($k+1::type[], ...) AS u(c1, ...)
/// {tail}`. A column whose values are all NULL is selected as a bare `NULL`, typed by where it
/// goes as a `VALUES` NULL is. `None` when `head` does not end with `VALUES`.
fn unnest_sql(
    head: &str,
    fixed: usize,
    cols: &[Col],
    columns: &Columns,
    tail: &str,
) -> Option<String> {
    let head = head.trim_end().strip_suffix("VALUES")?.trim_end();
    let mut select = Vec::with_capacity(cols.len());
    let mut arrays = Vec::with_capacity(cols.len());
    let mut names = Vec::with_capacity(cols.len());
    for (i, (col, array)) in cols.iter().zip(&columns.0).enumerate() {
        let n = i + 1;
        arrays.push(format!("CAST(${} AS {}[])", fixed + n, array.sql_type()));
        names.push(format!("c{n}"));
        let value = match (array, col) {
            (Array::Null(_), _) => "NULL".to_owned(),
            (_, Col::Json) => format!("CAST(u.c{n} AS JSONB)"),
            (_, Col::Timestamp) => format!("CAST(u.c{n} AS TIMESTAMPTZ)"),
            (_, Col::Plain) => format!("u.c{n}"),
        };
        select.push(format!("{value} AS column{n}"));
    }
    Some(format!(
        "{head} SELECT {} FROM UNNEST({}) AS u({}) {tail}",
        select.join(", "),
        arrays.join(", "),
        names.join(", ")
    ))
}

/// One column of a batch as a typed array.
enum Array {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    /// Every value NULL (how many).
    Null(usize),
}

impl Array {
    fn sql_type(&self) -> &'static str {
        match self {
            Array::Text(_) | Array::Null(_) => "TEXT",
            Array::Int(_) => "INT8",
            Array::Float(_) => "FLOAT8",
            Array::Bool(_) => "BOOL",
        }
    }
}

/// A batch's columns as arrays, one per column.
struct Columns(Vec<Array>);

impl Columns {
    /// The columns of `rows`, each typed by its values; `None` when a column mixes kinds (text
    /// and numbers, say) or holds arrays or objects, which the `VALUES` form then binds as before.
    fn of(cols: &[Col], rows: &[Vec<Json>]) -> Option<Columns> {
        let mut out = Vec::with_capacity(cols.len());
        for (i, col) in cols.iter().enumerate() {
            let values = rows.iter().map(|r| r.get(i).unwrap_or(&Json::Null));
            let kind = values
                .clone()
                .filter(|v| !v.is_null())
                .try_fold(None, |kind, v| {
                    let this = match v {
                        Json::String(_) => Kind::Text,
                        Json::Bool(_) => Kind::Bool,
                        Json::Number(n) if n.as_i64().is_some() => Kind::Int,
                        Json::Number(_) => Kind::Float,
                        _ => return Err(()),
                    };
                    match (kind, this) {
                        (None, t) => Ok(Some(t)),
                        (Some(k), t) if k == t => Ok(Some(k)),
                        (Some(Kind::Int | Kind::Float), Kind::Int | Kind::Float) => {
                            Ok(Some(Kind::Float))
                        }
                        _ => Err(()),
                    }
                })
                .ok()?;
            // JSON and timestamps go as text and are cast where they are selected.
            if *col != Col::Plain && !matches!(kind, None | Some(Kind::Text)) {
                return None;
            }
            out.push(match kind {
                None => Array::Null(rows.len()),
                Some(Kind::Text) => {
                    Array::Text(values.map(|v| v.as_str().map(str::to_owned)).collect())
                }
                Some(Kind::Int) => Array::Int(values.map(Json::as_i64).collect()),
                Some(Kind::Float) => Array::Float(values.map(Json::as_f64).collect()),
                Some(Kind::Bool) => Array::Bool(values.map(Json::as_bool).collect()),
            });
        }
        Some(Columns(out))
    }

    fn bind<'q>(self, mut q: super::PgQuery<'q>) -> super::PgQuery<'q> {
        for array in self.0 {
            q = match array {
                Array::Text(v) => q.bind(v),
                Array::Int(v) => q.bind(v),
                Array::Float(v) => q.bind(v),
                Array::Bool(v) => q.bind(v),
                Array::Null(n) => q.bind(vec![None::<String>; n]),
            };
        }
        q
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Int,
    Float,
    Bool,
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn text(cols: &[Col], rows: &[Vec<Json>]) -> Option<String> {
        let columns = Columns::of(cols, rows)?;
        unnest_sql(
            "INSERT INTO t (a, b, c) VALUES",
            1,
            cols,
            &columns,
            "RETURNING id",
        )
    }

    #[test]
    fn a_batch_goes_as_one_typed_array_per_column_whatever_its_length() {
        use Col::{Json as J, Plain as P, Timestamp as T};
        let cols = [P, J, T];
        let row = |i: i64| vec![json!(i), json!("{}"), json!("2026-11-29T03:00:00Z")];
        let one = text(&cols, &[row(1)]).unwrap();
        assert_eq!(
            one,
            "INSERT INTO t (a, b, c) SELECT u.c1 AS column1, CAST(u.c2 AS JSONB) AS column2, \
             CAST(u.c3 AS TIMESTAMPTZ) AS column3 FROM UNNEST(CAST($2 AS INT8[]), \
             CAST($3 AS TEXT[]), CAST($4 AS TEXT[])) AS u(c1, c2, c3) RETURNING id"
        );
        // The same text for 64 rows: prepared once, not once per length.
        let many: Vec<_> = (0..64).map(row).collect();
        assert_eq!(text(&cols, &many).unwrap(), one);
    }

    #[test]
    fn columns_are_typed_by_their_values_and_nulls_fit_any_type() {
        let rows = vec![
            vec![json!("a"), Json::Null, json!(true), json!(1), Json::Null],
            vec![Json::Null, Json::Null, json!(false), json!(2.5), json!(7)],
        ];
        let columns = Columns::of(&[Col::Plain; 5], &rows).unwrap();
        let types: Vec<_> = columns.0.iter().map(Array::sql_type).collect();
        assert_eq!(types, ["TEXT", "TEXT", "BOOL", "FLOAT8", "INT8"]);
        // A column of NULLs only is selected as a bare NULL, typed by its target column.
        let sql = unnest_sql("INSERT INTO t VALUES", 0, &[Col::Plain; 5], &columns, "").unwrap();
        assert!(sql.contains("NULL AS column2"), "{sql}");
        // Mixed kinds, or objects, keep the `VALUES` form.
        assert!(Columns::of(&[Col::Plain], &[vec![json!("a")], vec![json!(1)]]).is_none());
        assert!(Columns::of(&[Col::Plain], &[vec![json!({ "a": 1 })]]).is_none());
        assert!(Columns::of(&[Col::Json], &[vec![json!(1)]]).is_none());
        // A head that does not end with VALUES is not rewritten.
        assert!(unnest_sql("SELECT 1", 0, &[Col::Plain; 5], &columns, "").is_none());
    }
}
