//! Operator actions on the runtime: the seed runbook's diagnosis and repairs as functions, used by
//! the `runtime` step kind, the CLI and the admin API. Every mutation writes its audit record in
//! the same transaction as the change.

use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::Settings;
use crate::{
    config::StreamingConfig,
    duration::Dur,
    status::CommandStatus,
    store::{Audit, Db, DbError},
    template::Dialect,
};

/// One operation with its arguments, as a `runtime:` step or the CLI gives it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    QueueStats,
    DlqList {
        #[serde(default)]
        entity: Option<String>,
        #[serde(default, alias = "errorType")]
        error_type: Option<String>,
        #[serde(default)]
        limit: Option<i64>,
        #[serde(default)]
        offset: Option<i64>,
    },
    DlqRetry {
        #[serde(default)]
        entity: Option<String>,
        #[serde(default, alias = "errorType")]
        error_type: Option<String>,
    },
    DlqCleanup {
        older_than: Dur,
    },
    PurgeCompleted {
        older_than: Dur,
    },
    ReleaseStaleLocks {
        older_than: Dur,
    },
    ScaleWorkers {
        #[serde(default)]
        concurrency: Option<u32>,
        #[serde(default)]
        batch_size: Option<u32>,
    },
    SetRetryPolicy {
        #[serde(default, alias = "max_retries", rename = "maxRetries")]
        max_retries: Option<u32>,
        #[serde(default, alias = "max_backoff_ms", rename = "maxBackoffMs")]
        max_backoff_ms: Option<u64>,
    },
    SetLockTtl {
        ttl: Dur,
    },
    Maintenance {
        action: MaintenanceAction,
        #[serde(default)]
        tables: Option<Vec<String>>,
    },
}

#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MaintenanceAction {
    Analyze,
    Reindex,
    Vacuum,
    VacuumFull,
}

/// Operation names and the arguments each takes, for validation before anything runs.
pub const OPS: &[(&str, &[&str])] = &[
    ("queue_stats", &[]),
    (
        "dlq_list",
        &["entity", "error_type", "errorType", "limit", "offset"],
    ),
    ("dlq_retry", &["entity", "error_type", "errorType"]),
    ("dlq_cleanup", &["older_than"]),
    ("purge_completed", &["older_than"]),
    ("release_stale_locks", &["older_than"]),
    ("scale_workers", &["concurrency", "batch_size"]),
    (
        "set_retry_policy",
        &[
            "maxRetries",
            "maxBackoffMs",
            "max_retries",
            "max_backoff_ms",
        ],
    ),
    ("set_lock_ttl", &["ttl"]),
    ("maintenance", &["action", "tables"]),
];

/// The runtime's own tables, the only ones maintenance touches.
pub const TABLES: &[&str] = &["command_queue", "outbox_final", "work_state"];

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

fn ago(d: Dialect, dur: Dur) -> String {
    d.ago(dur)
}

/// Runs `op` on `db` as `actor`.
pub async fn run(db: &Db, base: &StreamingConfig, op: &Op, actor: &str) -> Result<Json, OpError> {
    let d = db.dialect();
    let filter = serde_json::to_value(op).unwrap_or(Json::Null);
    let audit = |name: &'static str| Audit {
        actor,
        op: name,
        filter: filter.clone(),
    };
    match op {
        Op::QueueStats => Ok(queue_stats(db, base).await?),
        Op::DlqList {
            entity,
            error_type,
            limit,
            offset,
        } => {
            let limit = limit.unwrap_or(20).clamp(1, 1000);
            let offset = offset.unwrap_or(0).max(0);
            let params = vec![json!(entity), json!(error_type), json!(CommandStatus::Dlq)];
            let total = db
                .sql(
                    "SELECT COUNT(*) AS n FROM command_queue WHERE status = $3 \
                     AND (CAST($1 AS TEXT) IS NULL OR entity = CAST($1 AS TEXT)) AND (CAST($2 AS TEXT) IS NULL OR error_type = CAST($2 AS TEXT))",
                    params.clone(),
                )
                .await?;
            let mut p = params;
            p.extend([json!(limit), json!(offset)]);
            let rows = db
                .sql(
                    "SELECT id, entity, entity_id, command_type, priority, payload, attempts, error_type, error_message, created_at, updated_at \
                     FROM command_queue WHERE status = $3 AND (CAST($1 AS TEXT) IS NULL OR entity = CAST($1 AS TEXT)) AND (CAST($2 AS TEXT) IS NULL OR error_type = CAST($2 AS TEXT)) \
                     ORDER BY id LIMIT $4 OFFSET $5",
                    p,
                )
                .await?;
            Ok(
                json!({ "totalElements": total.rows[0]["n"], "content": rows.rows, "limit": limit, "offset": offset }),
            )
        }
        Op::DlqRetry { entity, error_type } => {
            let now = d.now();
            let n = db
                .mutate_audited(
                    &format!(
                        "UPDATE command_queue SET status = $3, attempts = 0, error_message = NULL, error_type = NULL, \
                         run_at = {now}, updated_at = {now}, locked_by = NULL, locked_until = NULL \
                         WHERE status = $4 AND (CAST($1 AS TEXT) IS NULL OR entity = CAST($1 AS TEXT)) AND (CAST($2 AS TEXT) IS NULL OR error_type = CAST($2 AS TEXT))"
                    ),
                    vec![
                        json!(entity),
                        json!(error_type),
                        json!(CommandStatus::Pending),
                        json!(CommandStatus::Dlq),
                    ],
                    audit("dlq_retry"),
                )
                .await?;
            Ok(json!({ "retried": n }))
        }
        Op::DlqCleanup { older_than } => {
            let sql = format!(
                "DELETE FROM command_queue WHERE status = $1 AND updated_at < {}",
                ago(d, *older_than)
            );
            let params = vec![json!(CommandStatus::Dlq)];
            Ok(json!({ "deleted": db.mutate_audited(&sql, params, audit("dlq_cleanup")).await? }))
        }
        Op::PurgeCompleted { older_than } => {
            let sql = format!(
                "DELETE FROM command_queue WHERE status = $1 AND updated_at < {}",
                ago(d, *older_than)
            );
            let params = vec![json!(CommandStatus::Completed)];
            Ok(
                json!({ "deleted": db.mutate_audited(&sql, params, audit("purge_completed")).await? }),
            )
        }
        Op::ReleaseStaleLocks { older_than } => {
            let sql = format!(
                "DELETE FROM work_state WHERE state = 'updating' AND locked_at < {}",
                ago(d, *older_than)
            );
            Ok(
                json!({ "released": db.mutate_audited(&sql, vec![], audit("release_stale_locks")).await? }),
            )
        }
        Op::ScaleWorkers {
            concurrency,
            batch_size,
        } => {
            if concurrency.is_none() && batch_size.is_none() {
                return Err(OpError::Invalid(
                    "scale_workers needs concurrency and/or batch_size".into(),
                ));
            }
            if concurrency == &Some(0) || batch_size == &Some(0) {
                return Err(OpError::Invalid(
                    "concurrency and batch_size must be at least 1".into(),
                ));
            }
            let mut changes = vec![];
            if let Some(c) = concurrency {
                changes.push(("workerConcurrency", json!(c)));
            }
            if let Some(b) = batch_size {
                changes.push(("workerBatchSize", json!(b)));
            }
            set(db, base, &changes, audit("scale_workers")).await
        }
        Op::SetRetryPolicy {
            max_retries,
            max_backoff_ms,
        } => {
            let mut changes = vec![];
            if let Some(r) = max_retries {
                changes.push(("maxRetries", json!(r)));
            }
            if let Some(b) = max_backoff_ms {
                changes.push(("maxBackoffMs", json!(b)));
            }
            if changes.is_empty() {
                return Err(OpError::Invalid(
                    "set_retry_policy needs maxRetries and/or maxBackoffMs".into(),
                ));
            }
            set(db, base, &changes, audit("set_retry_policy")).await
        }
        Op::SetLockTtl { ttl } => {
            if ttl.0.is_zero() {
                return Err(OpError::Invalid("lock TTL must be positive".into()));
            }
            set(
                db,
                base,
                &[("lockTtl", json!(ttl.to_string()))],
                audit("set_lock_ttl"),
            )
            .await
        }
        Op::Maintenance { action, tables } => {
            maintenance(db, *action, tables.as_deref(), actor).await
        }
    }
}

async fn set(
    db: &Db,
    base: &StreamingConfig,
    changes: &[(&str, Json)],
    audit: Audit<'_>,
) -> Result<Json, OpError> {
    let before = Settings::load(db, base).await?;
    let cast = match db.dialect() {
        Dialect::Postgres => "$2::jsonb",
        Dialect::Sqlite => "$2",
    };
    let now = db.dialect().now();
    for (key, value) in changes {
        let sql = format!(
            "INSERT INTO runtime_settings (key, value, updated_at, updated_by) VALUES ($1, {cast}, {now}, $3) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by"
        );
        let a = Audit {
            actor: audit.actor,
            op: audit.op,
            filter: json!({ "key": key, "value": value, "previous": before.to_json()[*key] }),
        };
        db.mutate_audited(
            &sql,
            vec![json!(key), json!(value.to_string()), json!(audit.actor)],
            a,
        )
        .await?;
    }
    let after = Settings::load(db, base).await?;
    Ok(json!({ "before": before, "after": after }))
}

async fn maintenance(
    db: &Db,
    action: MaintenanceAction,
    tables: Option<&[String]>,
    actor: &str,
) -> Result<Json, OpError> {
    let tables: Vec<&str> = match tables {
        None => TABLES.to_vec(),
        Some(t) => t.iter().map(String::as_str).collect(),
    };
    if let Some(bad) = tables.iter().find(|t| !TABLES.contains(t)) {
        return Err(OpError::Invalid(format!(
            "maintenance only touches the runtime's tables ({}), not `{bad}`",
            TABLES.join(", ")
        )));
    }
    // Table names come from the fixed list above, never from a template.
    let statements: Vec<String> = match (db.dialect(), action) {
        (Dialect::Postgres, MaintenanceAction::Analyze) => {
            tables.iter().map(|t| format!("ANALYZE {t}")).collect()
        }
        (Dialect::Postgres, MaintenanceAction::Reindex) => tables
            .iter()
            .map(|t| format!("REINDEX TABLE {t}"))
            .collect(),
        (Dialect::Postgres, MaintenanceAction::Vacuum) => tables
            .iter()
            .map(|t| format!("VACUUM ANALYZE {t}"))
            .collect(),
        (Dialect::Postgres, MaintenanceAction::VacuumFull) => tables
            .iter()
            .map(|t| format!("VACUUM FULL ANALYZE {t}"))
            .collect(),
        (Dialect::Sqlite, MaintenanceAction::Analyze) => {
            tables.iter().map(|t| format!("ANALYZE {t}")).collect()
        }
        (Dialect::Sqlite, MaintenanceAction::Reindex) => {
            tables.iter().map(|t| format!("REINDEX {t}")).collect()
        }
        // SQLite vacuums the whole file.
        (Dialect::Sqlite, MaintenanceAction::Vacuum | MaintenanceAction::VacuumFull) => {
            vec!["VACUUM".into()]
        }
    };
    let started = std::time::Instant::now();
    for s in &statements {
        db.sql(s, vec![]).await?;
    }
    let ms = started.elapsed().as_millis() as u64;
    crate::store::runs::audit(
        db,
        actor,
        "maintenance",
        json!({ "action": action, "statements": statements }),
        0,
    )
    .await?;
    Ok(json!({ "statements": statements, "duration_ms": ms }))
}

/// Depth per priority and status, oldest pending, DLQ by error type, unsent outbox, locks, settings.
pub async fn queue_stats(db: &Db, base: &StreamingConfig) -> Result<Json, DbError> {
    let settings = Settings::load(db, base).await?;
    let depth = db
        .sql(
            "SELECT priority, status, COUNT(*) AS count FROM command_queue \
             WHERE status IN ($1, $2) GROUP BY priority, status ORDER BY priority DESC, status",
            vec![
                json!(CommandStatus::Pending),
                json!(CommandStatus::Processing),
            ],
        )
        .await?
        .rows;
    let oldest = db
        .sql(
            "SELECT MIN(created_at) AS oldest FROM command_queue WHERE status = $1",
            vec![json!(CommandStatus::Pending)],
        )
        .await?
        .rows;
    let dlq = db
        .sql(
            "SELECT COALESCE(error_type, 'Unknown') AS error_type, COUNT(*) AS count FROM command_queue \
             WHERE status = $1 GROUP BY COALESCE(error_type, 'Unknown') ORDER BY count DESC",
            vec![json!(CommandStatus::Dlq)],
        )
        .await?
        .rows;
    let outbox = db
        .sql(
            "SELECT COUNT(*) AS n FROM outbox_final WHERE sent_at IS NULL",
            vec![],
        )
        .await?
        .rows;
    let ttl_ago = db.dialect().ago(settings.lock_ttl);
    let locks = db
        .sql(
            &format!(
                "SELECT COALESCE(SUM(CASE WHEN state = 'updating' THEN 1 ELSE 0 END), 0) AS held, \
                        COALESCE(SUM(CASE WHEN state = 'updating' AND locked_at < {ttl_ago} THEN 1 ELSE 0 END), 0) AS expired, \
                        COALESCE(SUM(expiries), 0) AS expiries \
                 FROM work_state"
            ),
            vec![],
        )
        .await?
        .rows;
    let sum = |rows: &[Json], status: Option<&str>| -> i64 {
        rows.iter()
            .filter(|r| status.is_none_or(|s| r["status"] == s))
            .map(|r| r["count"].as_i64().unwrap_or(0))
            .sum()
    };
    Ok(json!({
        "pending": sum(&depth, Some(CommandStatus::Pending.as_str())),
        "processing": sum(&depth, Some(CommandStatus::Processing.as_str())),
        "depth": depth,
        "oldest_pending": oldest.first().map(|r| r["oldest"].clone()).unwrap_or(Json::Null),
        "dlq": { "total": sum(&dlq, None), "by_error_type": dlq },
        "outbox_unsent": outbox.first().map(|r| r["n"].clone()).unwrap_or(json!(0)),
        "locks": { "held": locks[0]["held"], "expired": locks[0]["expired"], "expiries_total": locks[0]["expiries"] },
        "settings": settings,
    }))
}
