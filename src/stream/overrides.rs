//! The runtime settings changed at run time, as a person reviews them: the stored values with
//! who set them when, the audit records of the changes, and a reset to the config's values.

use serde_json::{json, Value as Json};

use crate::store::{Audit, Db, DbError};

/// The audit ops that change runtime settings.
pub const SETTING_OPS: &[&str] = &[
    "scale_workers",
    "set_retry_policy",
    "set_lock_ttl",
    "settings_reset",
];

/// The stored settings: `key`, `value` (as stored), `updated_at`, `updated_by`.
pub async fn stored(db: &Db) -> Result<Vec<Json>, DbError> {
    Ok(db
        .sql(
            "SELECT key, value, updated_at, updated_by FROM runtime_settings ORDER BY key",
            vec![],
        )
        .await?
        .rows)
}

/// The last `limit` audit records of setting changes, newest first.
pub async fn history(db: &Db, limit: i64) -> Result<Vec<Json>, DbError> {
    let ops = json!(serde_json::to_string(SETTING_OPS).unwrap_or_default());
    let in_ops = match db.dialect() {
        crate::template::Dialect::Postgres => {
            "op IN (SELECT jsonb_array_elements_text(CAST($1 AS JSONB)))"
        }
        crate::template::Dialect::Sqlite => "op IN (SELECT value FROM json_each($1))",
    };
    Ok(db
        .sql(
            &format!(
                "SELECT at, actor, op, filter FROM runbook_audit WHERE {in_ops} \
                 ORDER BY id DESC LIMIT $2"
            ),
            vec![ops, json!(limit)],
        )
        .await?
        .rows)
}

/// Deletes every stored setting, so the config's values apply again (every process picks it up
/// within a second), with its audit record. Returns how many settings were reset.
pub async fn reset(db: &Db, actor: &str, previous: Json) -> Result<u64, DbError> {
    let audit = Audit {
        actor,
        op: "settings_reset",
        filter: json!({ "previous": previous }),
    };
    db.mutate_audited("DELETE FROM runtime_settings", vec![], audit)
        .await
}
