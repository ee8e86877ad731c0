//! The web console's own records (its sessions, in `runbook_console_sessions`) and the reads its
//! pages need that no other part of the store makes: runs filtered the way the runs page filters
//! them, the runs of one alert, the DLQ grouped by error type and entity.

use serde_json::{json, Value as Json};

use super::{Db, DbError};
use crate::{duration::Dur, template::Dialect};

/// A console session as the store keeps it (digests only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub token_digest: String,
    pub token_name: String,
    pub role: String,
    pub csrf: String,
    pub expires_at: i64,
}

/// Records a new session under the digest of its id.
pub async fn create_session(
    db: &Db,
    id_digest: &str,
    s: &Session,
    now: i64,
) -> Result<(), DbError> {
    db.sql(
        "INSERT INTO runbook_console_sessions \
         (id_digest, token_digest, token_name, role, csrf, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        vec![
            json!(id_digest),
            json!(s.token_digest),
            json!(s.token_name),
            json!(s.role),
            json!(s.csrf),
            json!(now),
            json!(s.expires_at),
        ],
    )
    .await?;
    // Expired sessions go when a new one comes, so the table holds only live ones and a few.
    db.sql(
        "DELETE FROM runbook_console_sessions WHERE expires_at <= $1",
        vec![json!(now)],
    )
    .await?;
    Ok(())
}

/// The session with this id digest, if it has not expired by `now`.
pub async fn session(db: &Db, id_digest: &str, now: i64) -> Result<Option<Session>, DbError> {
    let rows = db
        .sql(
            "SELECT token_digest, token_name, role, csrf, expires_at FROM runbook_console_sessions \
             WHERE id_digest = $1 AND expires_at > $2",
            vec![json!(id_digest), json!(now)],
        )
        .await?
        .rows;
    Ok(rows.first().map(|r| Session {
        token_digest: r["token_digest"].as_str().unwrap_or_default().to_owned(),
        token_name: r["token_name"].as_str().unwrap_or_default().to_owned(),
        role: r["role"].as_str().unwrap_or_default().to_owned(),
        csrf: r["csrf"].as_str().unwrap_or_default().to_owned(),
        expires_at: r["expires_at"].as_i64().unwrap_or(0),
    }))
}

/// Ends a session (sign-out, or a token that left the config). `true` when there was one.
pub async fn delete_session(db: &Db, id_digest: &str) -> Result<bool, DbError> {
    let r = db
        .sql(
            "DELETE FROM runbook_console_sessions WHERE id_digest = $1",
            vec![json!(id_digest)],
        )
        .await?;
    Ok(r.rows_affected > 0)
}

/// What the runs page filters by; each `None` filters nothing.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub playbook: Option<String>,
    pub status: Option<String>,
    /// The trigger's kind: `alert`, `schedule`, `api`, `cli`, `playbook`, `command`.
    pub trigger: Option<String>,
    pub alertname: Option<String>,
    /// Runs created within this long before now.
    pub since: Option<Dur>,
    /// Runs with an id below this (the next page of a newest-first list).
    pub before_id: Option<i64>,
}

fn trigger_field(d: Dialect, field: &str) -> String {
    match d {
        Dialect::Postgres => format!("(trigger->>'{field}')"),
        Dialect::Sqlite => format!("json_extract(trigger, '$.{field}')"),
    }
}

/// Runs matching `f`, newest first, at most `limit`; every value is a bound parameter.
pub async fn runs(db: &Db, f: &RunFilter, limit: i64) -> Result<Vec<Json>, DbError> {
    let d = db.dialect();
    let since = f
        .since
        .map_or_else(|| "created_at".to_owned(), |s| d.ago(s));
    let sql = format!(
        "SELECT id, playbook, status, trigger, dry_run, failed_step, waiting_step, error, version, \
                created_at, started_at, finished_at \
         FROM runbook_runs \
         WHERE (CAST($1 AS TEXT) IS NULL OR playbook = CAST($1 AS TEXT)) \
           AND (CAST($2 AS TEXT) IS NULL OR status = CAST($2 AS TEXT)) \
           AND (CAST($3 AS TEXT) IS NULL OR {kind} = CAST($3 AS TEXT)) \
           AND (CAST($4 AS TEXT) IS NULL OR {alertname} = CAST($4 AS TEXT)) \
           AND created_at >= {since} \
           AND id < $5 \
         ORDER BY id DESC LIMIT $6",
        kind = trigger_field(d, "kind"),
        alertname = trigger_field(d, "alertname"),
    );
    let rows = db
        .sql(
            &sql,
            vec![
                json!(f.playbook),
                json!(f.status),
                json!(f.trigger),
                json!(f.alertname),
                json!(f.before_id.unwrap_or(i64::MAX)),
                json!(limit),
            ],
        )
        .await?
        .rows;
    Ok(rows.into_iter().map(parsed_trigger).collect())
}

/// SQLite keeps JSON as text: the trigger as a value, on both backends.
fn parsed_trigger(mut row: Json) -> Json {
    if let Some(text) = row["trigger"].as_str() {
        row["trigger"] = serde_json::from_str(text).unwrap_or(Json::Null);
    }
    if let Some(text) = row.get("params").and_then(Json::as_str) {
        row["params"] = serde_json::from_str(text).unwrap_or(Json::Null);
    }
    row
}

/// Where a run stands, cheaply: its status and how many step attempts it has recorded (what the
/// run page's event stream reads every half second, before it reads the whole run on a change).
pub async fn progress(db: &Db, id: i64) -> Result<Option<(String, i64)>, DbError> {
    let rows = db
        .sql(
            "SELECT status, (SELECT COUNT(*) FROM runbook_step_attempts WHERE run_id = $1) AS n \
             FROM runbook_runs WHERE id = $1",
            vec![json!(id)],
        )
        .await?
        .rows;
    Ok(rows.first().map(|r| {
        (
            r["status"].as_str().unwrap_or_default().to_owned(),
            r["n"].as_i64().unwrap_or(0),
        )
    }))
}

/// Other runs started by the alert with this fingerprint, newest first.
pub async fn runs_of_fingerprint(
    db: &Db,
    fingerprint: &str,
    except: i64,
    limit: i64,
) -> Result<Vec<Json>, DbError> {
    Ok(db
        .sql(
            "SELECT r.id, r.playbook, r.status, r.created_at, a.kind FROM runbook_alert_runs a \
             JOIN runbook_runs r ON r.id = a.run_id \
             WHERE a.fingerprint = $1 AND r.id <> $2 ORDER BY r.id DESC LIMIT $3",
            vec![json!(fingerprint), json!(except), json!(limit)],
        )
        .await?
        .rows)
}

/// One alert occurrence, with its labels and annotations as objects.
pub async fn alert(db: &Db, fingerprint: &str, starts_at: &str) -> Result<Option<Json>, DbError> {
    let rows = db
        .sql(
            "SELECT fingerprint, starts_at, alertname, status, ends_at, labels, annotations, \
             generator_url, matched, notifications, first_received_at, last_received_at, resolved_at \
             FROM runbook_alerts WHERE fingerprint = $1 AND starts_at = $2",
            vec![json!(fingerprint), json!(starts_at)],
        )
        .await?
        .rows;
    Ok(rows.into_iter().next().map(|mut row| {
        for key in ["labels", "annotations"] {
            if let Some(text) = row[key].as_str() {
                row[key] = serde_json::from_str(text).unwrap_or(Json::Null);
            }
        }
        row
    }))
}

/// The runs waiting for a person, oldest first.
pub async fn waiting_runs(db: &Db) -> Result<Vec<Json>, DbError> {
    let rows = db
        .sql(
            "SELECT id, playbook, status, trigger, params, waiting_step, version, created_at, started_at \
             FROM runbook_runs WHERE status = 'waiting_approval' ORDER BY id",
            vec![],
        )
        .await?
        .rows;
    Ok(rows.into_iter().map(parsed_trigger).collect())
}

/// The params a run was started with, and its playbook and version (for a re-run).
pub async fn run_inputs(db: &Db, id: i64) -> Result<Option<Json>, DbError> {
    let rows = db
        .sql(
            "SELECT id, playbook, params, version, trigger FROM runbook_runs WHERE id = $1",
            vec![json!(id)],
        )
        .await?
        .rows;
    Ok(rows.into_iter().next().map(parsed_trigger))
}

/// DLQ entries by error type and entity, largest group first: `{error_type, entity, count,
/// oldest, newest}`, counted with `COUNT(*)` over the whole DLQ. Entries without an error type
/// form their own group, with `error_type` null.
pub async fn dlq_groups(db: &Db) -> Result<Vec<Json>, DbError> {
    Ok(db
        .sql(
            "SELECT error_type, entity, COUNT(*) AS count, \
                    MIN(updated_at) AS oldest, MAX(updated_at) AS newest \
             FROM command_queue WHERE status = 'dlq' \
             GROUP BY error_type, entity ORDER BY count DESC, error_type, entity",
            vec![],
        )
        .await?
        .rows)
}

/// The newest notifications received, with each alert's outcome.
pub async fn notifications(db: &Db, limit: i64) -> Result<Vec<Json>, DbError> {
    let rows = db
        .sql(
            "SELECT id, received_at, receiver, status, group_key, alerts, outcomes \
             FROM runbook_alert_notifications ORDER BY id DESC LIMIT $1",
            vec![json!(limit)],
        )
        .await?
        .rows;
    Ok(rows
        .into_iter()
        .map(|mut row| {
            if let Some(text) = row["outcomes"].as_str() {
                row["outcomes"] = serde_json::from_str(text).unwrap_or(Json::Null);
            }
            row
        })
        .collect())
}

/// Locks held now, oldest first: `{entity, entity_id, locked_at, locked_by, command_id}`.
pub async fn locks(db: &Db, limit: i64) -> Result<Vec<Json>, DbError> {
    Ok(db
        .sql(
            "SELECT entity, entity_id, locked_at, locked_by, command_id FROM work_state \
             WHERE state = 'updating' ORDER BY locked_at LIMIT $1",
            vec![json!(limit)],
        )
        .await?
        .rows)
}
