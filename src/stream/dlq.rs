//! The DLQ as a person changes it from the command line: select the entries a filter matches
//! (their ids and error types, for a preview), then act on exactly those ids, so an entry that
//! reaches the DLQ between the preview and the confirmation is left alone.

use serde_json::{json, Value as Json};

use crate::{
    duration::Dur,
    status::CommandStatus,
    store::{Audit, Db, DbError},
};

/// Which DLQ entries: by entity, by error type, and (for a clean-up) by age.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Filter {
    pub entity: Option<String>,
    pub error_type: Option<String>,
    pub older_than: Option<Dur>,
    /// Only the entries without an error type (NULL); `error_type` is then `None`. The console's
    /// group of such entries sends it, since no error type names them.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_error_type: bool,
}

/// One selected entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: i64,
    pub error_type: String,
}

/// The entries of the DLQ that `filter` matches, oldest first.
pub async fn select(db: &Db, filter: &Filter) -> Result<Vec<Entry>, DbError> {
    let age = match filter.older_than {
        Some(d) => format!(" AND updated_at < {}", db.dialect().ago(d)),
        None => String::new(),
    };
    let age = if filter.no_error_type {
        format!(" AND error_type IS NULL{age}")
    } else {
        age
    };
    let rows = db
        .sql(
            &format!(
                "SELECT id, error_type FROM command_queue WHERE status = $3 \
                 AND (CAST($1 AS TEXT) IS NULL OR entity = CAST($1 AS TEXT)) \
                 AND (CAST($2 AS TEXT) IS NULL OR error_type = CAST($2 AS TEXT)){age} ORDER BY id"
            ),
            vec![
                json!(filter.entity),
                json!(filter.error_type),
                json!(CommandStatus::Dlq),
            ],
        )
        .await?;
    Ok(rows
        .rows
        .iter()
        .filter_map(|r| {
            Some(Entry {
                id: r["id"].as_i64()?,
                error_type: r["error_type"].as_str().unwrap_or("").to_owned(),
            })
        })
        .collect())
}

/// The error types in the DLQ, each once.
pub async fn error_types(db: &Db) -> Result<Vec<String>, DbError> {
    let rows = db
        .sql(
            "SELECT DISTINCT error_type FROM command_queue WHERE status = $1 \
             AND error_type IS NOT NULL ORDER BY error_type",
            vec![json!(CommandStatus::Dlq)],
        )
        .await?;
    Ok(rows
        .rows
        .iter()
        .filter_map(|r| r["error_type"].as_str().map(ToOwned::to_owned))
        .collect())
}

/// What a change does to the entries it selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Back to the queue with fresh attempts.
    Retry,
    /// Deleted.
    Delete,
}

impl Action {
    fn op(self) -> &'static str {
        match self {
            Action::Retry => "dlq_retry",
            Action::Delete => "dlq_cleanup",
        }
    }
}

/// Retries or deletes the entries `ids` that are still in the DLQ, in one transaction with its
/// audit record (the filter, the ids, the rows changed). Returns how many changed.
pub async fn act(
    db: &Db,
    action: Action,
    ids: &[i64],
    filter: &Filter,
    actor: &str,
) -> Result<u64, DbError> {
    if ids.is_empty() {
        return Ok(0);
    }
    // The ids are bound as one JSON array, so the statement's size does not grow with them.
    let in_ids = match db.dialect() {
        crate::template::Dialect::Postgres => {
            "id IN (SELECT CAST(value AS BIGINT) FROM jsonb_array_elements_text(CAST($2 AS JSONB)))"
        }
        crate::template::Dialect::Sqlite => "id IN (SELECT value FROM json_each($2))",
    };
    let now = db.dialect().now();
    let sql = match action {
        Action::Retry => format!(
            "UPDATE command_queue SET status = $3, attempts = 0, error_message = NULL, \
             error_type = NULL, run_at = {now}, updated_at = {now}, locked_by = NULL, \
             locked_until = NULL WHERE status = $1 AND {in_ids}"
        ),
        Action::Delete => format!("DELETE FROM command_queue WHERE status = $1 AND {in_ids}"),
    };
    let mut params = vec![
        json!(CommandStatus::Dlq),
        json!(serde_json::to_string(ids).unwrap_or_default()),
    ];
    if action == Action::Retry {
        params.push(json!(CommandStatus::Pending));
    }
    let audit = Audit {
        actor,
        op: action.op(),
        filter: json!({ "filter": filter, "ids": ids }),
    };
    db.mutate_audited(&sql, params, audit).await
}

/// Counts by error type, largest first, for a preview.
pub fn by_error_type(entries: &[Entry]) -> Vec<(String, usize)> {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in entries {
        *counts.entry(e.error_type.as_str()).or_default() += 1;
    }
    let mut out: Vec<(String, usize)> =
        counts.into_iter().map(|(t, n)| (t.to_owned(), n)).collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// The preview as JSON: how many, and how many of each error type.
pub fn preview_json(entries: &[Entry]) -> Json {
    let types: serde_json::Map<String, Json> = by_error_type(entries)
        .into_iter()
        .map(|(t, n)| (t, json!(n)))
        .collect();
    json!({ "count": entries.len(), "by_error_type": types })
}
