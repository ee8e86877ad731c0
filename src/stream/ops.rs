//! Operator actions on the runtime: the seed runbook's diagnosis and repairs as functions, used by
//! the `runtime` step kind, the CLI and the admin API. Every mutation writes its audit record in
//! the same transaction as the change.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Map, Value as Json};

use super::Settings;
use crate::{
    config::{Retention, StreamingConfig},
    duration::Dur,
    status::CommandStatus,
    store::{self, Audit, Db, DbError},
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
        /// Only DLQ commands of this error type (all types when absent).
        #[serde(default, alias = "errorType")]
        error_type: Option<String>,
    },
    PurgeCompleted {
        older_than: Dur,
    },
    ReleaseStaleLocks {
        older_than: Dur,
    },
    /// Releases only the locks whose holder is gone (the seed's force unlock): taken longer than
    /// `older_than` ago, and held by no command that is processing under a lease still running.
    ReleaseOrphanedLocks {
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
    /// Deletes records older than `streaming.retention` says (or `keep` overrides, by table).
    PruneRecords {
        #[serde(default)]
        keep: BTreeMap<String, Dur>,
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
    ("dlq_cleanup", &["older_than", "error_type", "errorType"]),
    ("purge_completed", &["older_than"]),
    ("release_stale_locks", &["older_than"]),
    ("release_orphaned_locks", &["older_than"]),
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
    ("prune_records", &["keep"]),
];

/// A table `prune_records` prunes: its name (the key of `keep`), how long the config's
/// `streaming.retention` keeps its rows, and its owning module's DELETE statement.
struct Pruned {
    name: &'static str,
    kept: fn(&Retention) -> Dur,
    statement: fn(Dialect, Dur) -> (String, Vec<Json>),
}

/// What `prune_records` prunes, in order (playbook versions after the runs that ran them). One
/// more table is one more line.
const PRUNED: &[Pruned] = &[
    Pruned {
        name: "runs",
        kept: |r| r.runs,
        statement: store::runs::prune_sql,
    },
    Pruned {
        name: "ticks",
        kept: |r| r.ticks,
        statement: store::ticks::prune_sql,
    },
    Pruned {
        name: "playbook_versions",
        kept: |r| r.runs,
        statement: store::versions::prune_sql,
    },
    Pruned {
        name: "notifications",
        kept: |r| r.notifications,
        statement: store::alerts::prune_notifications_sql,
    },
    Pruned {
        name: "alerts",
        kept: |r| r.notifications,
        statement: store::alerts::prune_alerts_sql,
    },
    Pruned {
        name: "alert_runs",
        kept: |r| r.notifications,
        statement: store::alerts::prune_alert_runs_sql,
    },
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
        } => dlq_list(db, entity, error_type, *limit, *offset).await,
        Op::DlqRetry { entity, error_type } => {
            dlq_retry(db, entity, error_type, audit("dlq_retry")).await
        }
        Op::DlqCleanup {
            older_than,
            error_type: None,
        } => {
            let audit = audit("dlq_cleanup");
            delete_commands(db, CommandStatus::Dlq, *older_than, audit).await
        }
        Op::DlqCleanup {
            older_than,
            error_type: Some(error_type),
        } => dlq_cleanup_of_type(db, *older_than, error_type, audit("dlq_cleanup")).await,
        Op::PurgeCompleted { older_than } => {
            let audit = audit("purge_completed");
            delete_commands(db, CommandStatus::Completed, *older_than, audit).await
        }
        Op::ReleaseStaleLocks { older_than } => {
            release_stale_locks(db, *older_than, audit("release_stale_locks")).await
        }
        Op::ReleaseOrphanedLocks { older_than } => {
            let audit = audit("release_orphaned_locks");
            release_orphaned_locks(db, *older_than, audit).await
        }
        Op::ScaleWorkers {
            concurrency,
            batch_size,
        } => {
            let changes = scale_changes(*concurrency, *batch_size)?;
            set(db, base, &changes, audit("scale_workers")).await
        }
        Op::SetRetryPolicy {
            max_retries,
            max_backoff_ms,
        } => {
            let changes = retry_policy_changes(*max_retries, *max_backoff_ms)?;
            set(db, base, &changes, audit("set_retry_policy")).await
        }
        Op::SetLockTtl { ttl } => {
            let changes = lock_ttl_changes(*ttl)?;
            set(db, base, &changes, audit("set_lock_ttl")).await
        }
        Op::Maintenance { action, tables } => {
            maintenance(db, *action, tables.as_deref(), actor).await
        }
        Op::PruneRecords { keep } => {
            prune_records(db, prune_plan(&base.retention, keep)?, actor).await
        }
    }
}

/// How long each table of [`PRUNED`] keeps its rows: `keep`'s duration for it, else the
/// config's. An unknown table or a zero duration is refused.
fn prune_plan(
    retention: &Retention,
    keep: &BTreeMap<String, Dur>,
) -> Result<Vec<(&'static Pruned, Dur)>, OpError> {
    let names: Vec<&str> = PRUNED.iter().map(|p| p.name).collect();
    if let Some(bad) = keep.keys().find(|k| !names.contains(&k.as_str())) {
        return Err(OpError::Invalid(format!(
            "prune_records: unknown table `{bad}` in keep (known: {})",
            names.join(", ")
        )));
    }
    let plan: Vec<(&Pruned, Dur)> = PRUNED
        .iter()
        .map(|p| (p, keep.get(p.name).copied().unwrap_or((p.kept)(retention))))
        .collect();
    if let Some((p, _)) = plan.iter().find(|(_, d)| d.0.is_zero()) {
        return Err(OpError::Invalid(format!(
            "prune_records: keep.{} must be above zero",
            p.name
        )));
    }
    Ok(plan)
}

/// Deletes each table's rows older than its retention, each deletion with its audit record
/// (`{table, older_than}` and the rows deleted) in one transaction.
async fn prune_records(
    db: &Db,
    plan: Vec<(&'static Pruned, Dur)>,
    actor: &str,
) -> Result<Json, OpError> {
    let (mut deleted, mut older_than) = (Map::new(), Map::new());
    for (p, keep) in plan {
        let (sql, params) = (p.statement)(db.dialect(), keep);
        let audit = Audit {
            actor,
            op: "prune_records",
            filter: json!({ "table": p.name, "older_than": keep.to_string() }),
        };
        let n = db.mutate_audited(&sql, params, audit).await?;
        deleted.insert(p.name.into(), json!(n));
        older_than.insert(p.name.into(), json!(keep.to_string()));
    }
    Ok(json!({ "deleted": deleted, "older_than": older_than }))
}

/// One page of the DLQ (20 by default, at most 1000), optionally of one entity or error type,
/// with the total.
async fn dlq_list(
    db: &Db,
    entity: &Option<String>,
    error_type: &Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
) -> Result<Json, OpError> {
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

/// Returns DLQ commands (optionally of one entity or error type) to the queue with fresh attempts.
async fn dlq_retry(
    db: &Db,
    entity: &Option<String>,
    error_type: &Option<String>,
    audit: Audit<'_>,
) -> Result<Json, OpError> {
    let now = db.dialect().now();
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
            audit,
        )
        .await?;
    Ok(json!({ "retried": n }))
}

/// Deletes the commands in `status` last updated longer than `older_than` ago.
async fn delete_commands(
    db: &Db,
    status: CommandStatus,
    older_than: Dur,
    audit: Audit<'_>,
) -> Result<Json, OpError> {
    let sql = format!(
        "DELETE FROM command_queue WHERE status = $1 AND updated_at < {}",
        ago(db.dialect(), older_than)
    );
    let params = vec![json!(status)];
    Ok(json!({ "deleted": db.mutate_audited(&sql, params, audit).await? }))
}

/// Deletes DLQ commands of one error type not updated for `older_than`.
async fn dlq_cleanup_of_type(
    db: &Db,
    older_than: Dur,
    error_type: &str,
    audit: Audit<'_>,
) -> Result<Json, OpError> {
    let sql = format!(
        "DELETE FROM command_queue WHERE status = $1 AND error_type = $2 AND updated_at < {}",
        ago(db.dialect(), older_than)
    );
    let params = vec![json!(CommandStatus::Dlq), json!(error_type)];
    Ok(json!({ "deleted": db.mutate_audited(&sql, params, audit).await? }))
}

/// Releases work-state locks taken longer than `older_than` ago.
async fn release_stale_locks(db: &Db, older_than: Dur, audit: Audit<'_>) -> Result<Json, OpError> {
    let sql = format!(
        "DELETE FROM work_state WHERE state = 'updating' AND locked_at < {}",
        ago(db.dialect(), older_than)
    );
    Ok(json!({ "released": db.mutate_audited(&sql, vec![], audit).await? }))
}

/// The condition of a `work_state` row whose lock no live command holds: no command of its id
/// is `processing`, or the one that is has let its lease (`locked_until`) run out.
pub fn orphaned_lock_sql(d: Dialect) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM command_queue c WHERE c.id = work_state.command_id \
         AND c.status = '{processing}' AND c.locked_until > {now})",
        processing = CommandStatus::Processing,
        now = d.now()
    )
}

/// Releases the work-state locks taken longer than `older_than` ago whose holder is gone (see
/// [`orphaned_lock_sql`]); a lock of a command still processing under a live lease stays,
/// however old. The rows stay, idle, with their expiry counts.
async fn release_orphaned_locks(
    db: &Db,
    older_than: Dur,
    audit: Audit<'_>,
) -> Result<Json, OpError> {
    let d = db.dialect();
    let sql = format!(
        "UPDATE work_state SET state = 'idle', locked_at = NULL, locked_by = NULL, command_id = NULL, \
                takeover = FALSE, updated_at = {now} \
         WHERE state = 'updating' AND locked_at < {ago} AND {orphaned}",
        now = d.now(),
        ago = ago(d, older_than),
        orphaned = orphaned_lock_sql(d),
    );
    Ok(json!({ "released": db.mutate_audited(&sql, vec![], audit).await? }))
}

/// The settings `scale_workers` changes: at least one of the two, each at least 1.
fn scale_changes(
    concurrency: Option<u32>,
    batch_size: Option<u32>,
) -> Result<Vec<(&'static str, Json)>, OpError> {
    if concurrency.is_none() && batch_size.is_none() {
        return Err(OpError::Invalid(
            "scale_workers needs concurrency and/or batch_size".into(),
        ));
    }
    if concurrency == Some(0) || batch_size == Some(0) {
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
    Ok(changes)
}

/// The settings `set_retry_policy` changes: at least one of the two.
fn retry_policy_changes(
    max_retries: Option<u32>,
    max_backoff_ms: Option<u64>,
) -> Result<Vec<(&'static str, Json)>, OpError> {
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
    Ok(changes)
}

/// The setting `set_lock_ttl` changes: a positive TTL.
fn lock_ttl_changes(ttl: Dur) -> Result<Vec<(&'static str, Json)>, OpError> {
    if ttl.0.is_zero() {
        return Err(OpError::Invalid("lock TTL must be positive".into()));
    }
    Ok(vec![("lockTtl", json!(ttl.to_string()))])
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
            "SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN parked_at IS NULL THEN 0 ELSE 1 END), 0) AS parked \
             FROM outbox_final WHERE sent_at IS NULL",
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
        "outbox_parked": outbox.first().map(|r| r["parked"].clone()).unwrap_or(json!(0)),
        "locks": { "held": locks[0]["held"], "expired": locks[0]["expired"], "expiries_total": locks[0]["expiries"] },
        "settings": settings,
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn invalid(r: Result<Vec<(&'static str, Json)>, OpError>) -> String {
        match r {
            Err(OpError::Invalid(m)) => m,
            other => panic!("not invalid: {other:?}"),
        }
    }

    #[test]
    fn scale_workers_changes_what_it_is_given_and_refuses_zero_or_nothing() {
        assert_eq!(
            scale_changes(Some(8), None).unwrap(),
            [("workerConcurrency", json!(8))]
        );
        assert_eq!(
            scale_changes(Some(8), Some(50)).unwrap(),
            [
                ("workerConcurrency", json!(8)),
                ("workerBatchSize", json!(50))
            ]
        );
        assert_eq!(
            invalid(scale_changes(None, None)),
            "scale_workers needs concurrency and/or batch_size"
        );
        assert_eq!(
            invalid(scale_changes(Some(4), Some(0))),
            "concurrency and batch_size must be at least 1"
        );
    }

    #[test]
    fn set_retry_policy_needs_one_of_its_settings() {
        assert_eq!(
            retry_policy_changes(None, Some(30_000)).unwrap(),
            [("maxBackoffMs", json!(30_000))]
        );
        assert_eq!(
            retry_policy_changes(Some(0), None).unwrap(),
            [("maxRetries", json!(0))]
        );
        assert_eq!(
            invalid(retry_policy_changes(None, None)),
            "set_retry_policy needs maxRetries and/or maxBackoffMs"
        );
    }

    fn plan_of(keep: &[(&str, u64)]) -> Result<Vec<(&'static str, u64)>, OpError> {
        let keep = keep
            .iter()
            .map(|(k, secs)| (k.to_string(), Dur::from_secs(*secs)))
            .collect();
        let plan = prune_plan(&Retention::default(), &keep)?;
        Ok(plan.iter().map(|(p, d)| (p.name, d.0.as_secs())).collect())
    }

    #[test]
    fn prune_records_keeps_what_the_config_says_unless_told_otherwise() {
        let day = 86_400;
        assert_eq!(
            plan_of(&[]).unwrap(),
            [
                ("runs", 30 * day),
                ("ticks", 7 * day),
                ("playbook_versions", 30 * day),
                ("notifications", 7 * day),
                ("alerts", 7 * day),
                ("alert_runs", 7 * day)
            ]
        );
        assert_eq!(plan_of(&[("ticks", 60)]).unwrap()[1], ("ticks", 60));
        let unknown = match plan_of(&[("notes", 60)]) {
            Err(OpError::Invalid(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            unknown,
            "prune_records: unknown table `notes` in keep (known: runs, ticks, playbook_versions, notifications, alerts, alert_runs)"
        );
        assert!(
            matches!(plan_of(&[("runs", 0)]), Err(OpError::Invalid(m)) if m == "prune_records: keep.runs must be above zero")
        );
    }

    #[test]
    fn a_lock_ttl_must_be_positive() {
        let ttl = Dur(Duration::from_secs(30));
        assert_eq!(
            lock_ttl_changes(ttl).unwrap(),
            [("lockTtl", json!(ttl.to_string()))]
        );
        assert_eq!(
            invalid(lock_ttl_changes(Dur(Duration::ZERO))),
            "lock TTL must be positive"
        );
    }
}
