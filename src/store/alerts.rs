//! Alerts received from Alertmanager: the notifications (`runbook_alert_notifications`), each
//! alert occurrence keyed by fingerprint and startsAt (`runbook_alerts`), and the key that gives
//! an occurrence one run per playbook and per firing/resolved (`runbook_alert_runs`). Everything
//! the receiver writes happens in one transaction ([`super::guards::begin`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::{duration::Dur, template::Dialect};

use super::{
    batch::{self, Col, Insert, Writes},
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
    /// How many deliveries of it this row stands for.
    pub seen: u32,
}

/// Records alert occurrences, or updates those seen before, in one statement per batch. Each
/// occurrence appears once in `rows` (the caller merges the repeats of a batch into one row whose
/// `seen` counts them), in key order, so two writers never wait on each other's rows. A resolve is
/// kept: an older firing notification delivered late does not make it firing again. The rows go
/// with `writes`.
pub async fn upsert_all_in(
    tx: &mut Tx,
    writes: &mut Writes,
    rows: &[AlertRow<'_>],
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    use Col::{Json as J, Plain as P, Timestamp as T};
    let cols = [P, P, P, J, J, P, P, P, P, T, T, T, P];
    let now = timestamp(now);
    let values: Vec<Vec<Json>> = rows
        .iter()
        .map(|a| {
            let resolved = if a.status == "resolved" {
                json!(now)
            } else {
                Json::Null
            };
            vec![
                json!(a.fingerprint),
                json!(a.starts_at),
                json!(a.alertname),
                json!(a.labels.to_string()),
                json!(a.annotations.to_string()),
                json!(a.status),
                json!(a.ends_at),
                json!(a.generator_url),
                json!(a.matched),
                json!(now),
                json!(now),
                resolved,
                json!(a.seen),
            ]
        })
        .collect();
    let insert = Insert {
        head: "INSERT INTO runbook_alerts (fingerprint, starts_at, alertname, labels, annotations, status, \
         ends_at, generator_url, matched, first_received_at, last_received_at, resolved_at, notifications) VALUES".into(),
        cols: cols.to_vec(),
        rows: values,
        tail: "ON CONFLICT (fingerprint, starts_at) DO UPDATE SET \
         status = CASE WHEN runbook_alerts.resolved_at IS NULL THEN excluded.status ELSE runbook_alerts.status END, \
         ends_at = CASE WHEN runbook_alerts.resolved_at IS NULL THEN excluded.ends_at ELSE runbook_alerts.ends_at END, \
         resolved_at = COALESCE(runbook_alerts.resolved_at, excluded.resolved_at), \
         labels = excluded.labels, annotations = excluded.annotations, matched = excluded.matched, \
         last_received_at = excluded.last_received_at, \
         notifications = runbook_alerts.notifications + excluded.notifications",
    };
    writes.push(tx, insert).await
}

/// The key of an alert occurrence's one run per playbook and kind (`firing`/`resolved`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunKey {
    pub playbook: String,
    pub fingerprint: String,
    pub starts_at: String,
    pub kind: String,
}

impl RunKey {
    fn params(&self) -> Vec<Json> {
        vec![
            json!(self.playbook),
            json!(self.fingerprint),
            json!(self.starts_at),
            json!(self.kind),
        ]
    }
}

/// The runs already recorded for `keys`, in one statement per batch.
pub async fn runs_for(tx: &mut Tx, keys: &[RunKey]) -> Result<HashMap<RunKey, i64>, DbError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<Vec<Json>> = keys.iter().map(RunKey::params).collect();
    let found = batch::values(
        tx,
        "SELECT playbook, fingerprint, starts_at, kind, run_id FROM runbook_alert_runs \
         WHERE (playbook, fingerprint, starts_at, kind) IN (VALUES",
        &[Col::Plain; 4],
        &rows,
        ")",
    )
    .await?;
    let text = |v: &Json| v.as_str().unwrap_or_default().to_owned();
    Ok(found
        .iter()
        .filter_map(|r| {
            let key = RunKey {
                playbook: text(&r["playbook"]),
                fingerprint: text(&r["fingerprint"]),
                starts_at: text(&r["starts_at"]),
                kind: text(&r["kind"]),
            };
            Some((key, r["run_id"].as_i64()?))
        })
        .collect())
}

/// Takes each occurrence's key for its run. Fails on a key already taken: the caller checked
/// [`runs_for`] under the guard's lock, so that cannot happen unless the lock was not held. The
/// rows go with `writes`.
pub async fn record_runs(
    tx: &mut Tx,
    writes: &mut Writes,
    taken: &[(RunKey, i64)],
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    let now = timestamp(now);
    let rows: Vec<Vec<Json>> = taken
        .iter()
        .map(|(key, run_id)| {
            let mut row = key.params();
            row.extend([json!(run_id), json!(now)]);
            row
        })
        .collect();
    let mut cols = vec![Col::Plain; 5];
    cols.push(Col::Timestamp);
    let insert = Insert {
        head: "INSERT INTO runbook_alert_runs (playbook, fingerprint, starts_at, kind, run_id, decided_at) VALUES".into(),
        cols,
        rows,
        tail: "",
    };
    writes.push(tx, insert).await
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

/// Records notifications, each with its alerts' outcomes; their ids, in order. With ids drawn for
/// them ([`NOTIFICATION_IDS`]) the rows go with `writes`; otherwise at once, ids from `RETURNING`.
pub async fn record_notifications(
    tx: &mut Tx,
    writes: &mut Writes,
    all: &[NewNotification<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<i64>, DbError> {
    use Col::{Json as J, Plain as P, Timestamp as T};
    let now = timestamp(now);
    let rows: Vec<Vec<Json>> = all
        .iter()
        .map(|n| {
            vec![
                json!(now),
                json!(n.receiver),
                json!(n.status),
                json!(n.group_key),
                json!(n.external_url),
                json!(n.alerts),
                json!(n.truncated_alerts),
                json!(n.outcomes.to_string()),
            ]
        })
        .collect();
    let cols = vec![T, P, P, P, P, P, P, J];
    let head =
        "INSERT INTO runbook_alert_notifications (received_at, receiver, status, group_key, \
                external_url, alerts, truncated_alerts, outcomes) VALUES";
    batch::insert_ids(tx, writes, NOTIFICATION_IDS, head, cols, rows).await
}

/// The sequence of the notifications' ids, for [`Writes::want`].
pub const NOTIFICATION_IDS: &str = "runbook_alert_notifications_id_seq";

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
             AND (CAST($2 AS BOOLEAN) IS NULL OR matched = CAST($2 AS BOOLEAN)) ORDER BY last_received_at DESC LIMIT $3",
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
