//! Alerts received from Alertmanager: the notifications (`runbook_alert_notifications`), each
//! alert occurrence keyed by fingerprint and startsAt (`runbook_alerts`), and the key that gives
//! an occurrence one run per playbook and per firing/resolved (`runbook_alert_runs`). Everything
//! the receiver writes happens in one transaction ([`super::guards::begin`]).

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::{duration::Dur, template::Dialect};

use super::{
    guards::{ts_param, tx_sql},
    runs::timestamp,
    Db, DbError, Tx,
};

/// One alert of a notification, as recorded.
#[derive(Clone, Debug)]
pub struct AlertRow<'a> {
    pub fingerprint: &'a str,
    /// Normalised RFC 3339 UTC text: the occurrence's key with the fingerprint.
    pub starts_at: &'a str,
    pub alertname: &'a str,
    pub labels: Json,
    pub annotations: Json,
    /// `firing` or `resolved`.
    pub status: &'a str,
    pub ends_at: Option<&'a str>,
    pub generator_url: &'a str,
    pub matched: bool,
}

/// Records an alert occurrence, or updates it when it was seen before. A resolve is kept: an
/// older firing notification delivered late does not make it firing again.
pub async fn upsert_in(tx: &mut Tx, a: &AlertRow<'_>, now: DateTime<Utc>) -> Result<(), DbError> {
    let resolved = a.status == "resolved";
    let (t, r) = (ts_param(tx, 10), ts_param(tx, 11));
    let json = |n: usize| match tx {
        Tx::Postgres(_) => format!("CAST(${n} AS JSONB)"),
        Tx::Sqlite(_) => format!("${n}"),
    };
    let (labels, annotations) = (json(4), json(5));
    let sql = format!(
        "INSERT INTO runbook_alerts (fingerprint, starts_at, alertname, labels, annotations, status, \
         ends_at, generator_url, matched, first_received_at, last_received_at, resolved_at) \
         VALUES ($1, $2, $3, {labels}, {annotations}, $6, $7, $8, $9, {t}, {t}, {r}) \
         ON CONFLICT (fingerprint, starts_at) DO UPDATE SET \
         status = CASE WHEN runbook_alerts.resolved_at IS NULL THEN excluded.status ELSE runbook_alerts.status END, \
         ends_at = CASE WHEN runbook_alerts.resolved_at IS NULL THEN excluded.ends_at ELSE runbook_alerts.ends_at END, \
         resolved_at = COALESCE(runbook_alerts.resolved_at, excluded.resolved_at), \
         labels = excluded.labels, annotations = excluded.annotations, matched = excluded.matched, \
         last_received_at = excluded.last_received_at, notifications = runbook_alerts.notifications + 1"
    );
    let params = vec![
        json!(a.fingerprint),
        json!(a.starts_at),
        json!(a.alertname),
        json!(a.labels.to_string()),
        json!(a.annotations.to_string()),
        json!(a.status),
        json!(a.ends_at),
        json!(a.generator_url),
        json!(a.matched),
        json!(timestamp(now)),
        if resolved {
            json!(timestamp(now))
        } else {
            Json::Null
        },
    ];
    tx_sql(tx, &sql, params).await?;
    Ok(())
}

/// The run already recorded for this occurrence, playbook and kind (`firing`/`resolved`).
pub async fn run_for(
    tx: &mut Tx,
    playbook: &str,
    fingerprint: &str,
    starts_at: &str,
    kind: &str,
) -> Result<Option<i64>, DbError> {
    let rows = tx_sql(
        tx,
        "SELECT run_id FROM runbook_alert_runs WHERE playbook = $1 AND fingerprint = $2 \
         AND starts_at = $3 AND kind = $4",
        vec![
            json!(playbook),
            json!(fingerprint),
            json!(starts_at),
            json!(kind),
        ],
    )
    .await?;
    Ok(rows.first().and_then(|r| r["run_id"].as_i64()))
}

/// Takes the occurrence's key for `run_id`. Fails on a key already taken: the caller checked
/// [`run_for`] under the guard's lock, so that cannot happen unless the lock was not held.
pub async fn record_run(
    tx: &mut Tx,
    playbook: &str,
    fingerprint: &str,
    starts_at: &str,
    kind: &str,
    run_id: i64,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    let sql = format!(
        "INSERT INTO runbook_alert_runs (playbook, fingerprint, starts_at, kind, run_id, decided_at) \
         VALUES ($1, $2, $3, $4, $5, {})",
        ts_param(tx, 6)
    );
    let params = vec![
        json!(playbook),
        json!(fingerprint),
        json!(starts_at),
        json!(kind),
        json!(run_id),
        json!(timestamp(now)),
    ];
    tx_sql(tx, &sql, params).await?;
    Ok(())
}

/// A notification about to be recorded.
#[derive(Clone, Debug)]
pub struct NewNotification<'a> {
    pub receiver: &'a str,
    pub status: &'a str,
    pub group_key: &'a str,
    pub external_url: &'a str,
    pub alerts: usize,
    pub truncated_alerts: u64,
    pub outcomes: Json,
}

/// Records a notification with each alert's outcome; its id.
pub async fn record_notification(
    tx: &mut Tx,
    n: &NewNotification<'_>,
    now: DateTime<Utc>,
) -> Result<i64, DbError> {
    let outcomes = match tx {
        Tx::Postgres(_) => "CAST($8 AS JSONB)",
        Tx::Sqlite(_) => "$8",
    };
    let sql = format!(
        "INSERT INTO runbook_alert_notifications (received_at, receiver, status, group_key, \
         external_url, alerts, truncated_alerts, outcomes) VALUES ({}, $2, $3, $4, $5, $6, $7, {outcomes}) \
         RETURNING id",
        ts_param(tx, 1)
    );
    let params = vec![
        json!(timestamp(now)),
        json!(n.receiver),
        json!(n.status),
        json!(n.group_key),
        json!(n.external_url),
        json!(n.alerts),
        json!(n.truncated_alerts),
        json!(n.outcomes.to_string()),
    ];
    let rows = tx_sql(tx, &sql, params).await?;
    Ok(rows
        .first()
        .and_then(|r| r["id"].as_i64())
        .unwrap_or_default())
}

/// The current `status` and `ends_at` of an occurrence (one primary-key read), for a run it
/// started: a resolve that arrives while the run goes on is visible to its next step.
pub async fn current(
    db: &Db,
    fingerprint: &str,
    starts_at: &str,
) -> Result<Option<(String, Option<String>)>, DbError> {
    let rows = db
        .sql(
            "SELECT status, ends_at FROM runbook_alerts WHERE fingerprint = $1 AND starts_at = $2",
            vec![json!(fingerprint), json!(starts_at)],
        )
        .await?
        .rows;
    Ok(rows.first().map(|r| {
        (
            r["status"].as_str().unwrap_or_default().to_owned(),
            r["ends_at"].as_str().map(str::to_owned),
        )
    }))
}

/// Recorded alerts, newest first: filtered by `status` (`firing`/`resolved`) and by whether any
/// playbook matched them; each with the runs it started (`runs: [{playbook, kind, run_id}]`).
pub async fn list(
    db: &Db,
    status: Option<&str>,
    unmatched: Option<bool>,
    limit: i64,
) -> Result<Vec<Json>, DbError> {
    let matched = unmatched.map(|u| !u);
    let mut rows = db
        .sql(
            "SELECT fingerprint, starts_at, alertname, status, ends_at, labels, annotations, \
             generator_url, matched, notifications, first_received_at, last_received_at, resolved_at \
             FROM runbook_alerts WHERE (CAST($1 AS TEXT) IS NULL OR status = CAST($1 AS TEXT)) \
             AND ($2 IS NULL OR matched = $2) ORDER BY last_received_at DESC LIMIT $3",
            vec![json!(status), json!(matched), json!(limit)],
        )
        .await?
        .rows;
    for row in &mut rows {
        if let Some(text) = row["labels"].as_str() {
            row["labels"] = serde_json::from_str(text).unwrap_or(Json::Null);
        }
        if let Some(text) = row["annotations"].as_str() {
            row["annotations"] = serde_json::from_str(text).unwrap_or(Json::Null);
        }
        row["matched"] = json!(row["matched"] == json!(true) || row["matched"] == json!(1));
        row["runs"] = Json::Array(
            db.sql(
                "SELECT playbook, kind, run_id FROM runbook_alert_runs WHERE fingerprint = $1 \
                 AND starts_at = $2 ORDER BY playbook, kind",
                vec![row["fingerprint"].clone(), row["starts_at"].clone()],
            )
            .await?
            .rows,
        );
    }
    Ok(rows)
}

/// The startsAt of the newest occurrence of an alert (by fingerprint), for `runbook alert fire
/// --resolve`, which resolves the occurrence it fired.
pub async fn latest_start(db: &Db, fingerprint: &str) -> Result<Option<String>, DbError> {
    let rows = db
        .sql(
            "SELECT starts_at FROM runbook_alerts WHERE fingerprint = $1 ORDER BY starts_at DESC LIMIT 1",
            vec![json!(fingerprint)],
        )
        .await?
        .rows;
    Ok(rows
        .first()
        .and_then(|r| r["starts_at"].as_str())
        .map(str::to_owned))
}

/// The statement that deletes the notifications received longer than `older_than` ago.
pub fn prune_notifications_sql(d: Dialect, older_than: Dur) -> (String, Vec<Json>) {
    let sql = format!(
        "DELETE FROM runbook_alert_notifications WHERE received_at < {}",
        d.ago(older_than)
    );
    (sql, vec![])
}

/// The statement that deletes the alert occurrences last received longer than `older_than` ago,
/// with the keys that gave them their runs (a repeat of so old an occurrence is a new one).
pub fn prune_alerts_sql(d: Dialect, older_than: Dur) -> (String, Vec<Json>) {
    let sql = format!(
        "DELETE FROM runbook_alerts WHERE last_received_at < {}",
        d.ago(older_than)
    );
    (sql, vec![])
}

/// The statement that deletes the run keys of occurrences no longer recorded and older than
/// `older_than`.
pub fn prune_alert_runs_sql(d: Dialect, older_than: Dur) -> (String, Vec<Json>) {
    let sql = format!(
        "DELETE FROM runbook_alert_runs WHERE decided_at < {} AND NOT EXISTS \
         (SELECT 1 FROM runbook_alerts a WHERE a.fingerprint = runbook_alert_runs.fingerprint \
          AND a.starts_at = runbook_alert_runs.starts_at)",
        d.ago(older_than)
    );
    (sql, vec![])
}
