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
    /// Where the commands of `ids` are now: counts by status (a read). `ids` may be a list of
    /// lists, as a `for_each` step's outputs give them (`dlq_retry`'s `ids` per error type).
    CommandStatus {
        #[serde(deserialize_with = "flat_ids")]
        ids: Vec<i64>,
    },
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
        /// `reindex` on PostgreSQL as `REINDEX TABLE CONCURRENTLY`, which lets writes go on
        /// while it runs (SQLite has no such form: there it is a plain `REINDEX`).
        #[serde(default)]
        concurrently: bool,
        /// On PostgreSQL, how long each statement waits for a table lock before it gives up
        /// (`lock_timeout`), so maintenance fails rather than queueing workers behind it.
        #[serde(default)]
        lock_timeout: Option<Dur>,
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
    ("command_status", &["ids"]),
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
    (
        "maintenance",
        &["action", "tables", "concurrently", "lock_timeout"],
    ),
    ("prune_records", &["keep"]),
];

/// The operations that only read.
pub const READS: &[&str] = &["queue_stats", "command_status", "dlq_list"];

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
    Pruned {
        name: "alert_groups",
        kept: |r| r.notifications,
        statement: store::alert_groups::prune_sql,
    },
    Pruned {
        name: "queue_samples",
        kept: |r| r.ticks,
        statement: store::queue_samples::prune_sql,
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

/// Runs `op` on `db` as `actor`, for a playbook's `runtime` step: as [`run`], except that
/// `dlq_retry` also names the ids it retried (`ids`, `ids_truncated`), so that the playbook can
/// follow them (`command_status`). The CLI and the admin API answer with [`run`]'s shape.
pub async fn run_for_step(
    db: &Db,
    base: &StreamingConfig,
    op: &Op,
    actor: &str,
) -> Result<Json, OpError> {
    match op {
        Op::DlqRetry { entity, error_type } => {
            let filter = serde_json::to_value(op).unwrap_or(Json::Null);
            let audit = Audit {
                actor,
                op: "dlq_retry",
                filter,
            };
            dlq_retry(db, entity, error_type, audit, true).await
        }
        _ => run(db, base, op, actor).await,
    }
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
        Op::CommandStatus { ids } => command_status(db, ids).await,
        Op::DlqList {
            entity,
            error_type,
            limit,
            offset,
        } => dlq_list(db, entity, error_type, *limit, *offset).await,
        Op::DlqRetry { entity, error_type } => {
            dlq_retry(db, entity, error_type, audit("dlq_retry"), false).await
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
        Op::Maintenance {
            action,
            tables,
            concurrently,
            lock_timeout,
        } => {
            let how = How {
                concurrently: *concurrently,
                lock_timeout: *lock_timeout,
            };
            maintenance(db, *action, tables.as_deref(), how, actor).await
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
/// With `with_ids` the output names the ids retried (the first [`MAX_IDS`]), so a playbook can
/// follow them (`command_status`).
async fn dlq_retry(
    db: &Db,
    entity: &Option<String>,
    error_type: &Option<String>,
    audit: Audit<'_>,
    with_ids: bool,
) -> Result<Json, OpError> {
    let now = db.dialect().now();
    let sql = format!(
        "UPDATE command_queue SET status = $3, attempts = 0, error_message = NULL, error_type = NULL, \
         run_at = {now}, updated_at = {now}, locked_by = NULL, locked_until = NULL \
         WHERE status = $4 AND (CAST($1 AS TEXT) IS NULL OR entity = CAST($1 AS TEXT)) AND (CAST($2 AS TEXT) IS NULL OR error_type = CAST($2 AS TEXT)) \
         RETURNING id"
    );
    let q = crate::template::BoundSql {
        sql: match db {
            Db::Postgres(_) => sql,
            Db::Sqlite(_) => store::dollar_to_question(&sql),
        },
        params: vec![
            json!(entity),
            json!(error_type),
            json!(CommandStatus::Pending),
            json!(CommandStatus::Dlq),
        ],
    };
    let res = db.query_audited(&q, MAX_IDS, audit).await?;
    if !with_ids {
        return Ok(json!({ "retried": res.rows_affected }));
    }
    let mut ids: Vec<i64> = res.rows.iter().filter_map(|r| r["id"].as_i64()).collect();
    ids.sort_unstable();
    Ok(json!({ "retried": res.rows_affected, "ids": ids, "ids_truncated": res.truncated }))
}

/// The most ids `dlq_retry` names in its output.
pub const MAX_IDS: usize = 10_000;

/// `ids` as one list: a list of ids, or of lists of ids.
fn flat_ids<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ids {
        One(i64),
        Many(Vec<Ids>),
    }
    fn flatten(ids: Ids, out: &mut Vec<i64>) {
        match ids {
            Ids::One(id) => out.push(id),
            Ids::Many(v) => v.into_iter().for_each(|i| flatten(i, out)),
        }
    }
    let mut out = vec![];
    flatten(
        Ids::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "ids must be a list of command ids (integers), or of such lists",
            )
        })?,
        &mut out,
    );
    Ok(out)
}

/// Counts by status of the commands of `ids` (an id no longer in the queue counts as `gone`):
/// `in_flight` is pending plus processing.
async fn command_status(db: &Db, ids: &[i64]) -> Result<Json, OpError> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let rows = match db {
        Db::Postgres(_) => {
            db.sql(
                "SELECT status, COUNT(*) AS n FROM command_queue \
                 WHERE id IN (SELECT jsonb_array_elements_text($1::jsonb)::bigint) GROUP BY status",
                vec![json!(ids).to_string().into()],
            )
            .await?
        }
        Db::Sqlite(_) => {
            db.sql(
                "SELECT status, COUNT(*) AS n FROM command_queue \
                 WHERE id IN (SELECT value FROM json_each($1)) GROUP BY status",
                vec![json!(ids).to_string().into()],
            )
            .await?
        }
    }
    .rows;
    let count = |s: CommandStatus| {
        rows.iter()
            .filter(|r| r["status"] == s.as_str())
            .map(|r| r["n"].as_i64().unwrap_or(0))
            .sum::<i64>()
    };
    let found: i64 = rows.iter().map(|r| r["n"].as_i64().unwrap_or(0)).sum();
    let (pending, processing) = (
        count(CommandStatus::Pending),
        count(CommandStatus::Processing),
    );
    Ok(json!({
        "total": ids.len(),
        "pending": pending,
        "processing": processing,
        "in_flight": pending + processing,
        "completed": count(CommandStatus::Completed),
        "dlq": count(CommandStatus::Dlq),
        "gone": ids.len() as i64 - found,
    }))
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

/// How `maintenance` runs its statements.
#[derive(Clone, Copy, Debug, Default)]
struct How {
    concurrently: bool,
    lock_timeout: Option<Dur>,
}

/// The statements of `action` on `tables` (names from [`TABLES`], never from a template).
fn maintenance_statements(
    dialect: Dialect,
    action: MaintenanceAction,
    tables: &[&str],
    concurrently: bool,
) -> Vec<String> {
    let each = |f: &dyn Fn(&str) -> String| tables.iter().map(|t| f(t)).collect();
    match (dialect, action) {
        (Dialect::Postgres, MaintenanceAction::Analyze) => each(&|t| format!("ANALYZE {t}")),
        (Dialect::Postgres, MaintenanceAction::Reindex) if concurrently => {
            each(&|t| format!("REINDEX TABLE CONCURRENTLY {t}"))
        }
        (Dialect::Postgres, MaintenanceAction::Reindex) => each(&|t| format!("REINDEX TABLE {t}")),
        (Dialect::Postgres, MaintenanceAction::Vacuum) => each(&|t| format!("VACUUM ANALYZE {t}")),
        (Dialect::Postgres, MaintenanceAction::VacuumFull) => {
            each(&|t| format!("VACUUM FULL ANALYZE {t}"))
        }
        (Dialect::Sqlite, MaintenanceAction::Analyze) => each(&|t| format!("ANALYZE {t}")),
        (Dialect::Sqlite, MaintenanceAction::Reindex) => each(&|t| format!("REINDEX {t}")),
        // SQLite vacuums the whole file.
        (Dialect::Sqlite, MaintenanceAction::Vacuum | MaintenanceAction::VacuumFull) => {
            vec!["VACUUM".into()]
        }
    }
}

async fn maintenance(
    db: &Db,
    action: MaintenanceAction,
    tables: Option<&[String]>,
    how: How,
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
    if how.lock_timeout.is_some_and(|d| d.0.is_zero()) {
        return Err(OpError::Invalid(
            "maintenance: lock_timeout must be above zero (PostgreSQL reads 0 as no limit)".into(),
        ));
    }
    let statements = maintenance_statements(db.dialect(), action, &tables, how.concurrently);
    let started = std::time::Instant::now();
    let ran = match db {
        Db::Postgres(pool) => run_pg_maintenance(pool, &statements, how.lock_timeout).await,
        Db::Sqlite(_) => {
            let mut r = Ok(());
            for s in &statements {
                if let Err(e) = db.sql(s, vec![]).await {
                    r = Err(OpError::from(e));
                    break;
                }
            }
            r
        }
    };
    let ms = started.elapsed().as_millis() as u64;
    let mut filter = json!({ "action": action, "statements": statements });
    if let Some(t) = how.lock_timeout {
        filter["lock_timeout"] = json!(t.to_string());
    }
    if let Err(e) = &ran {
        filter["error"] = json!(crate::text::error_chain(e));
    }
    crate::store::runs::audit(db, actor, "maintenance", filter, 0).await?;
    ran?;
    Ok(json!({
        "statements": statements,
        "duration_ms": ms,
        "lock_timeout": how.lock_timeout.map(|t| t.to_string()),
    }))
}

/// Runs maintenance statements on one PostgreSQL connection, outside a transaction block
/// (`VACUUM` and `REINDEX ... CONCURRENTLY` refuse one), with `lock_timeout` set for the
/// session when given. The connection is closed afterwards, so its setting never reaches
/// another user of the pool. Before a `REINDEX CONCURRENTLY`, and after one that failed, the
/// invalid indexes failed attempts leave are dropped; those that cannot be (their table is
/// locked) are named in the error for a person.
async fn run_pg_maintenance(
    pool: &sqlx::PgPool,
    statements: &[String],
    lock_timeout: Option<Dur>,
) -> Result<(), OpError> {
    use sqlx::Executor;
    let mut conn = pool.acquire().await.map_err(DbError::from)?;
    conn.close_on_drop();
    if let Some(t) = lock_timeout {
        sqlx::query("SELECT set_config('lock_timeout', $1, false)")
            .bind(format!("{}ms", t.0.as_millis().max(1)))
            .execute(&mut *conn)
            .await
            .map_err(DbError::from)?;
    }
    let concurrently = statements.iter().any(|s| s.contains("CONCURRENTLY"));
    if concurrently {
        drop_invalid_reindex_leftovers(&mut conn).await;
    }
    for s in statements {
        if let Err(e) = conn.execute(s.as_str()).await {
            let e = DbError::from(e);
            if !concurrently {
                return Err(e.into());
            }
            let left = drop_invalid_reindex_leftovers(&mut conn).await;
            if left.is_empty() {
                return Err(e.into());
            }
            // Not bad input, but the step's error must name what is left for a person; a
            // database error could not carry it.
            return Err(OpError::Invalid(format!(
                "{s} failed: {}; it left invalid indexes that could not be dropped now: {} \
                 (the next REINDEX CONCURRENTLY drops them, or DROP INDEX CONCURRENTLY each)",
                crate::text::error_chain(&e),
                left.join(", ")
            )));
        }
    }
    Ok(())
}

/// A `REINDEX CONCURRENTLY` that fails (a lock timeout, a cancel) leaves the new index it was
/// building behind, invalid, named `<index>_ccnew` (`_ccnew1`, ...): it costs every write and
/// serves no read. Drops those of the runtime's tables (their names come from the catalogue and
/// are quoted by `format('%I')`), under the session's `lock_timeout`. Returns those it could not
/// drop.
async fn drop_invalid_reindex_leftovers(conn: &mut sqlx::PgConnection) -> Vec<String> {
    let names: Result<Vec<String>, _> = sqlx::query_scalar(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE NOT i.indisvalid AND c.relname ~ '_ccnew[0-9]*$' AND t.relname = ANY($1) \
           AND t.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) \
         ORDER BY 1",
    )
    .bind(TABLES)
    .fetch_all(&mut *conn)
    .await;
    let names = match names {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "Listing the indexes a failed REINDEX CONCURRENTLY left failed.");
            return vec!["(could not be listed)".into()];
        }
    };
    let mut left = vec![];
    for name in names {
        let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS {name}");
        if let Err(e) = sqlx::Executor::execute(&mut *conn, drop.as_str()).await {
            tracing::warn!(index = %name, error = %e, "Dropping an index a failed REINDEX CONCURRENTLY left failed.");
            left.push(name);
        }
    }
    left
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
                ("alert_runs", 7 * day),
                ("alert_groups", 7 * day),
                ("queue_samples", 7 * day)
            ]
        );
        assert_eq!(plan_of(&[("ticks", 60)]).unwrap()[1], ("ticks", 60));
        let unknown = match plan_of(&[("notes", 60)]) {
            Err(OpError::Invalid(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            unknown,
            "prune_records: unknown table `notes` in keep (known: runs, ticks, playbook_versions, notifications, alerts, alert_runs, alert_groups, queue_samples)"
        );
        assert!(
            matches!(plan_of(&[("runs", 0)]), Err(OpError::Invalid(m)) if m == "prune_records: keep.runs must be above zero")
        );
    }

    #[test]
    fn reindex_runs_concurrently_on_postgres_when_asked_and_plainly_on_sqlite() {
        let tables = ["command_queue"];
        assert_eq!(
            maintenance_statements(Dialect::Postgres, MaintenanceAction::Reindex, &tables, true),
            ["REINDEX TABLE CONCURRENTLY command_queue"]
        );
        assert_eq!(
            maintenance_statements(
                Dialect::Postgres,
                MaintenanceAction::Reindex,
                &tables,
                false
            ),
            ["REINDEX TABLE command_queue"]
        );
        assert_eq!(
            maintenance_statements(Dialect::Sqlite, MaintenanceAction::Reindex, &tables, true),
            ["REINDEX command_queue"]
        );
        assert_eq!(
            maintenance_statements(
                Dialect::Sqlite,
                MaintenanceAction::VacuumFull,
                &tables,
                false
            ),
            ["VACUUM"]
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
