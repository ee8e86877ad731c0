//! Run records: every run, every step attempt, approvals, and the audit log of mutations. The
//! only module that reads or writes the runs, attempts and approvals tables.
//!
//! Everything written here has passed through the [`crate::secrets::Masker`] first.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value as Json};

use super::{Db, DbError};
use crate::{
    duration::Dur,
    status::{RunStatus, StepStatus},
    template::Dialect,
};

/// A timestamp parameter `$n` in the store's column type.
fn ts(d: Dialect, n: usize) -> String {
    match d {
        Dialect::Postgres => format!("${n}::timestamptz"),
        Dialect::Sqlite => format!("${n}"),
    }
}

pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A run about to be recorded.
pub struct NewRun<'a> {
    pub playbook: &'a str,
    pub trigger: Json,
    pub params: Json,
    pub dry_run: bool,
    pub parent_id: Option<i64>,
    pub command_id: Option<i64>,
    pub status: RunStatus,
    /// The content hash of the playbook version it runs (`runbook_playbook_versions`).
    pub version: Option<&'a str>,
}

/// One attempt of one step (one element of a `for_each`, one poll of an `until`).
pub struct Attempt<'a> {
    pub run_id: i64,
    pub step_id: &'a str,
    pub attempt: u32,
    pub item: Option<usize>,
    pub status: StepStatus,
    pub input: &'a Json,
    pub output: &'a Json,
    pub error: Option<&'a str>,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
}

fn first_id(r: super::SqlResult) -> Result<i64, DbError> {
    r.rows
        .first()
        .and_then(|row| row.get("id"))
        .and_then(Json::as_i64)
        .ok_or_else(|| DbError::from(sqlx::Error::RowNotFound))
}

pub async fn create_run(db: &Db, run: NewRun<'_>) -> Result<i64, DbError> {
    let started = if run.status == RunStatus::Running {
        db.dialect().now()
    } else {
        "NULL"
    };
    let sql = format!(
        "INSERT INTO runbook_runs (playbook, trigger, params, status, dry_run, parent_id, command_id, version, started_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {started}) RETURNING id"
    );
    let params = vec![
        json!(run.playbook),
        run.trigger,
        run.params,
        json!(run.status),
        json!(run.dry_run),
        run.parent_id.map(Json::from).unwrap_or(Json::Null),
        run.command_id.map(Json::from).unwrap_or(Json::Null),
        json!(run.version),
    ];
    first_id(db.sql(&sql, params).await?)
}

/// The last successful attempt of each step of a run, as `steps.<id>` results (for resuming).
pub async fn succeeded_steps(
    db: &Db,
    run_id: i64,
) -> Result<serde_json::Map<String, Json>, DbError> {
    let rows = db
        .sql(
            "SELECT step_id, output, duration_ms FROM runbook_step_attempts \
             WHERE run_id = $1 AND status = $2 AND item IS NULL ORDER BY id",
            vec![json!(run_id), json!(StepStatus::Succeeded)],
        )
        .await?
        .rows;
    let mut out = serde_json::Map::new();
    for r in rows {
        let id = r["step_id"].as_str().unwrap_or_default().to_owned();
        out.insert(
            id,
            json!({ "status": StepStatus::Succeeded, "rows": r["output"]["rows"], "output": r["output"]["output"], "error": null, "duration_ms": r["duration_ms"] }),
        );
    }
    Ok(out)
}

pub async fn finish_run(
    db: &Db,
    id: i64,
    status: RunStatus,
    failed_step: Option<&str>,
    error: Option<&str>,
) -> Result<(), DbError> {
    let now = db.dialect().now();
    db.sql(
        &format!("UPDATE runbook_runs SET status = $2, failed_step = $3, error = $4, finished_at = {now} WHERE id = $1"),
        vec![json!(id), json!(status), json!(failed_step), json!(error)],
    )
    .await?;
    Ok(())
}

/// Keeps a run's rendered `report:` on its record.
pub async fn set_report(db: &Db, id: i64, report: &str) -> Result<(), DbError> {
    db.sql(
        "UPDATE runbook_runs SET report = $2 WHERE id = $1",
        vec![json!(id), json!(report)],
    )
    .await?;
    Ok(())
}

/// The most bytes of one attempt's output (its rows and output as JSON) a run record keeps.
pub const MAX_RECORDED_OUTPUT: usize = 4 * 1024 * 1024;

fn json_len(v: &Json) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(0)
}

/// An attempt's `{rows, output}` as recorded: whole when its JSON fits in `max` bytes. Otherwise
/// the leading rows that fit with the whole `output`, or (when `output` alone does not fit) the
/// start of the JSON text as `start`; either way `cut` says how many bytes (and rows) were left out.
pub fn capped_output(recorded: &Json, max: usize) -> Json {
    let len = json_len(recorded);
    if len <= max {
        return recorded.clone();
    }
    // Room for the `cut` note itself.
    let max = max.saturating_sub(200);
    if let Some(rows) = recorded.get("rows").and_then(Json::as_array) {
        let output = recorded.get("output").cloned().unwrap_or(Json::Null);
        let rest = json_len(&output) + 32;
        if rest < max {
            let mut budget = max - rest;
            let mut kept = Vec::new();
            for row in rows {
                let n = json_len(row) + 1;
                if n > budget {
                    break;
                }
                budget -= n;
                kept.push(row.clone());
            }
            let left_out = rows.len() - kept.len();
            let mut capped = json!({ "rows": kept, "output": output });
            let bytes_left_out = len.saturating_sub(json_len(&capped));
            capped["cut"] = json!({ "bytes_left_out": bytes_left_out, "rows_left_out": left_out });
            return capped;
        }
    }
    let text = recorded.to_string();
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    json!({ "start": &text[..end], "cut": { "bytes_left_out": text.len() - end } })
}

pub async fn record_attempt(db: &Db, a: Attempt<'_>) -> Result<(), DbError> {
    let d = db.dialect();
    let sql = format!(
        "INSERT INTO runbook_step_attempts (run_id, step_id, attempt, item, status, input, output, error, started_at, duration_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {}, $10)",
        ts(d, 9)
    );
    db.sql(
        &sql,
        vec![
            json!(a.run_id),
            json!(a.step_id),
            json!(a.attempt),
            json!(a.item),
            json!(a.status),
            a.input.clone(),
            capped_output(a.output, MAX_RECORDED_OUTPUT),
            json!(a.error),
            json!(timestamp(a.started_at)),
            json!(a.duration_ms),
        ],
    )
    .await?;
    Ok(())
}

/// Writes one audit record: who or what changed what, with which filter, and how many rows.
pub async fn audit(db: &Db, actor: &str, op: &str, filter: Json, rows: u64) -> Result<(), DbError> {
    let record = super::Audit { actor, op, filter };
    db.sql(super::AUDIT, record.params(rows)).await?;
    Ok(())
}

pub async fn list_runs(db: &Db, playbook: Option<&str>, limit: i64) -> Result<Vec<Json>, DbError> {
    let r = db
        .sql(
            "SELECT id, playbook, status, trigger, dry_run, failed_step, error, version, created_at, started_at, finished_at \
             FROM runbook_runs WHERE (CAST($1 AS TEXT) IS NULL OR playbook = CAST($1 AS TEXT)) ORDER BY id DESC LIMIT $2",
            vec![json!(playbook), json!(limit)],
        )
        .await?;
    let mut rows = r.rows;
    rows.iter_mut().for_each(booleans);
    Ok(rows)
}

/// A run's boolean columns as JSON booleans: SQLite keeps them as 0 and 1.
fn booleans(run: &mut Json) {
    if let Some(v) = run.get_mut("dry_run") {
        if let Some(n) = v.as_i64() {
            *v = Json::Bool(n != 0);
        }
    }
}

/// The content hash of the playbook version run `id` runs, if it has one.
pub async fn get_run_version(db: &Db, id: i64) -> Result<Option<String>, DbError> {
    let r = db
        .sql(
            "SELECT version FROM runbook_runs WHERE id = $1",
            vec![json!(id)],
        )
        .await?;
    Ok(r.rows
        .first()
        .and_then(|row| row["version"].as_str())
        .map(str::to_owned))
}

/// A run with its step attempts and the answers to its `approve` steps, or `None`.
pub async fn get_run(db: &Db, id: i64) -> Result<Option<Json>, DbError> {
    let run = db
        .sql("SELECT * FROM runbook_runs WHERE id = $1", vec![json!(id)])
        .await?;
    let Some(mut run) = run.rows.into_iter().next() else {
        return Ok(None);
    };
    booleans(&mut run);
    // Stored as JSON text on both backends.
    if let Some(text) = run.get("waiting_changes").and_then(Json::as_str) {
        run["waiting_changes"] = serde_json::from_str(text).unwrap_or(Json::Null);
    }
    let steps = db
        .sql(
            "SELECT step_id, attempt, item, status, input, output, error, started_at, duration_ms \
             FROM runbook_step_attempts WHERE run_id = $1 ORDER BY id",
            vec![json!(id)],
        )
        .await?;
    run["steps"] = Json::Array(steps.rows);
    run["approvals"] = Json::Array(approvals(db, id).await?);
    Ok(Some(run))
}

/// Why a decision on a run could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no run {0}")]
    NoRun(i64),
    #[error("run {0} is {1}, not waiting for approval")]
    NotWaiting(i64, String),
    /// Someone answered first: the wait is over, and this answer was not recorded.
    #[error("run {run_id} was already {decision} by {actor} at {at} (step `{step}`); this answer was not recorded")]
    AlreadyDecided {
        run_id: i64,
        step: String,
        decision: String,
        actor: String,
        at: String,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Records an operator's answer to the `approve` step a run waits at, with its audit record.
/// Returns the step answered.
///
/// The first answer wins: one transaction moves the run from `waiting_approval` back to
/// `running` (an update guarded by the waiting state, so of two answers at the same moment
/// only one changes the row) and records the answer and its audit record. The later one is
/// refused with [`DecideError::AlreadyDecided`], naming who decided what and when.
pub async fn decide(
    db: &Db,
    run_id: i64,
    approve: bool,
    actor: &str,
    comment: Option<&str>,
) -> Result<String, DecideError> {
    use super::guards::tx_sql;
    let decision = if approve { "approved" } else { "rejected" };
    // The guarded update comes first, so on SQLite the transaction takes the write lock before
    // it reads anything (a read first could not be upgraded once another answer committed).
    let mut tx = db.begin().await?;
    let claimed = tx_sql(
        &mut tx,
        "UPDATE runbook_runs SET status = $2 \
         WHERE id = $1 AND status = $3 AND waiting_step IS NOT NULL RETURNING waiting_step",
        vec![
            json!(run_id),
            json!(RunStatus::Running),
            json!(RunStatus::WaitingApproval),
        ],
    )
    .await?;
    let Some(step) = claimed
        .first()
        .and_then(|r| r["waiting_step"].as_str())
        .map(str::to_owned)
    else {
        drop(tx);
        return Err(not_decided(db, run_id).await);
    };
    // The wait is over, as `resume_waiting` leaves it.
    tx_sql(
        &mut tx,
        "UPDATE runbook_runs SET waiting_step = NULL WHERE id = $1",
        vec![json!(run_id)],
    )
    .await?;
    tx_sql(
        &mut tx,
        "INSERT INTO runbook_approvals (run_id, step_id, decision, actor, comment) VALUES ($1, $2, $3, $4, $5)",
        vec![json!(run_id), json!(step), json!(decision), json!(actor), json!(comment)],
    )
    .await?;
    let record = super::Audit {
        actor,
        op: &format!("run_{decision}"),
        filter: json!({ "run_id": run_id, "step": step }),
    };
    tx_sql(&mut tx, super::AUDIT, record.params(1)).await?;
    tx.commit().await?;
    Ok(step)
}

/// Why run `run_id` took no answer: it does not exist, it has ended, someone answered its wait
/// first (it is still going, and its latest answer says who), or it is not waiting at all.
async fn not_decided(db: &Db, run_id: i64) -> DecideError {
    let run = match db
        .sql(
            "SELECT status FROM runbook_runs WHERE id = $1",
            vec![json!(run_id)],
        )
        .await
    {
        Ok(r) => r.rows,
        Err(e) => return e.into(),
    };
    let Some(run) = run.first() else {
        return DecideError::NoRun(run_id);
    };
    let status = run["status"].as_str().unwrap_or("?").to_owned();
    if run_status(&run["status"]).map_or(true, |s| s.is_final()) {
        return DecideError::NotWaiting(run_id, status);
    }
    let latest = match db
        .sql(
            "SELECT step_id, decision, actor, at FROM runbook_approvals WHERE run_id = $1 ORDER BY id DESC LIMIT 1",
            vec![json!(run_id)],
        )
        .await
    {
        Ok(r) => r.rows,
        Err(e) => return e.into(),
    };
    match latest.first() {
        Some(a) => {
            let text = |k: &str| a[k].as_str().unwrap_or("?").to_owned();
            DecideError::AlreadyDecided {
                run_id,
                step: text("step_id"),
                decision: text("decision"),
                actor: text("actor"),
                at: text("at"),
            }
        }
        None => DecideError::NotWaiting(run_id, status),
    }
}

/// The statement that deletes the runs that finished longer than `older_than` ago (their step
/// attempts and approvals go with them: the foreign keys cascade). Runs not yet finished stay.
pub fn prune_sql(d: Dialect, older_than: Dur) -> (String, Vec<Json>) {
    let finals: Vec<Json> = RunStatus::ALL
        .iter()
        .filter(|s| s.is_final())
        .map(|s| json!(s))
        .collect();
    let placeholders: Vec<String> = (1..=finals.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "DELETE FROM runbook_runs WHERE finished_at < {} AND status IN ({})",
        d.ago(older_than),
        placeholders.join(", ")
    );
    (sql, finals)
}

/// Marks run `id` as waiting for an operator's answer at `step`, with what approving it lets
/// happen (`changes`: the following steps rendered; kept after the answer).
pub async fn set_waiting(db: &Db, id: i64, step: &str, changes: &Json) -> Result<(), DbError> {
    db.sql(
        "UPDATE runbook_runs SET status = $3, waiting_step = $2, waiting_changes = $4 WHERE id = $1",
        vec![
            json!(id),
            json!(step),
            json!(RunStatus::WaitingApproval),
            json!(changes.to_string()),
        ],
    )
    .await?;
    Ok(())
}

/// Marks run `id` as running again after a wait for approval, unless it was cancelled meanwhile.
pub async fn resume_waiting(db: &Db, id: i64) -> Result<(), DbError> {
    db.sql(
        "UPDATE runbook_runs SET status = $2, waiting_step = NULL WHERE id = $1 AND status = $3",
        vec![
            json!(id),
            json!(RunStatus::Running),
            json!(RunStatus::WaitingApproval),
        ],
    )
    .await?;
    Ok(())
}

/// The latest answer to the `approve` step `step` of run `run_id`: `{decision, actor, comment}`.
pub async fn decision(db: &Db, run_id: i64, step: &str) -> Result<Option<Json>, DbError> {
    let rows = db
        .sql(
            "SELECT decision, actor, comment FROM runbook_approvals WHERE run_id = $1 AND step_id = $2 ORDER BY id DESC LIMIT 1",
            vec![json!(run_id), json!(step)],
        )
        .await?
        .rows;
    Ok(rows.into_iter().next())
}

/// The latest run a queue command started: its id and status.
pub async fn latest_for_command(
    db: &Db,
    command_id: i64,
) -> Result<Option<(i64, RunStatus)>, DbError> {
    let rows = db
        .sql(
            "SELECT id, status FROM runbook_runs WHERE command_id = $1 ORDER BY id DESC LIMIT 1",
            vec![json!(command_id)],
        )
        .await?
        .rows;
    let Some(run) = rows.first() else {
        return Ok(None);
    };
    let status = run["status"]
        .as_str()
        .unwrap_or_default()
        .parse::<RunStatus>()
        .map_err(|e| DbError::from(sqlx::Error::Decode(Box::new(e))))?;
    Ok(Some((run["id"].as_i64().unwrap_or_default(), status)))
}

/// Records runs decided in `tx` (queued or skipped: a final status gets `finished_at`), each with
/// its error (a skipped run's reason), in one statement per batch; their ids, in order. With ids
/// drawn for them ([`RUN_IDS`]) the rows go with `writes`; otherwise at once, ids from
/// `RETURNING`.
pub async fn create_runs_in(
    tx: &mut super::Tx,
    writes: &mut super::batch::Writes,
    runs: &[(NewRun<'_>, Option<String>)],
    now: DateTime<Utc>,
) -> Result<Vec<i64>, DbError> {
    use super::batch::{self, Col};
    let now = timestamp(now);
    let rows: Vec<Vec<Json>> = runs
        .iter()
        .map(|(run, error)| {
            let finished = if run.status.is_final() {
                json!(now)
            } else {
                Json::Null
            };
            vec![
                json!(run.playbook),
                json!(run.trigger.to_string()),
                json!(run.params.to_string()),
                json!(run.status),
                json!(run.dry_run),
                run.parent_id.map(Json::from).unwrap_or(Json::Null),
                run.command_id.map(Json::from).unwrap_or(Json::Null),
                json!(now),
                finished,
                json!(error),
                json!(run.version),
            ]
        })
        .collect();
    use Col::{Json as J, Plain as P, Timestamp as T};
    let cols = vec![P, J, J, P, P, P, P, T, T, P, P];
    let head = "INSERT INTO runbook_runs (playbook, trigger, params, status, dry_run, parent_id, \
                command_id, created_at, finished_at, error, version) VALUES";
    batch::insert_ids(tx, writes, RUN_IDS, head, cols, rows).await
}

/// The sequence of the runs' ids, for [`super::batch::Writes::want`].
pub const RUN_IDS: &str = "runbook_runs_id_seq";

/// Marks a queued run as running; `false` when it is not queued any more (cancelled meanwhile).
pub async fn start_queued(db: &Db, id: i64) -> Result<bool, DbError> {
    let now = db.dialect().now();
    let r = db
        .sql(
            &format!("UPDATE runbook_runs SET status = $2, started_at = {now} WHERE id = $1 AND status = $3"),
            vec![json!(id), json!(RunStatus::Running), json!(RunStatus::Queued)],
        )
        .await?;
    Ok(r.rows_affected == 1)
}

/// A status column's text as a [`RunStatus`].
fn run_status(v: &Json) -> Result<RunStatus, DbError> {
    v.as_str()
        .unwrap_or_default()
        .parse::<RunStatus>()
        .map_err(|e| DbError::from(sqlx::Error::Decode(Box::new(e))))
}

/// A timestamp column (RFC 3339 text on both backends, as rows decode it).
fn run_time(v: &Json) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Why an operator's cancel was refused.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no run {0}")]
    NoRun(i64),
    #[error("run {0} is {1}; only a run that is running or waiting for approval can be cancelled")]
    NotRunning(i64, RunStatus),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Run `id`'s status, for [`cancel`].
async fn status_of(db: &Db, id: i64) -> Result<RunStatus, CancelError> {
    let rows = db
        .sql(
            "SELECT status FROM runbook_runs WHERE id = $1",
            vec![json!(id)],
        )
        .await?
        .rows;
    Ok(run_status(
        &rows.first().ok_or(CancelError::NoRun(id))?["status"],
    )?)
}

/// Asks run `id` to stop, on behalf of `actor` (`cli:<user>`, `api:<token name>`), with its audit
/// record. The run's own process sees it within a second (its watcher reads the status), stops
/// where it is and ends `cancelled` with the reason `cancelled by <actor>`.
pub async fn cancel(db: &Db, id: i64, actor: &str) -> Result<(), CancelError> {
    let status = status_of(db, id).await?;
    if !status.is_cancellable() {
        return Err(CancelError::NotRunning(id, status));
    }
    let audit = super::Audit {
        actor,
        op: "run_cancel",
        filter: json!({ "run_id": id }),
    };
    let changed = db
        .mutate_audited(
            "UPDATE runbook_runs SET status = $2, error = $3 WHERE id = $1 AND status = $4",
            vec![
                json!(id),
                json!(RunStatus::CancelRequested),
                json!(format!("cancelled by {actor}")),
                json!(status),
            ],
            audit,
        )
        .await?;
    if changed == 0 {
        // It ended (or changed) between the read and the update: say how it stands now.
        let now = status_of(db, id).await?;
        if now != RunStatus::CancelRequested {
            return Err(CancelError::NotRunning(id, now));
        }
    }
    Ok(())
}

/// Where a run stands, as its watcher reads it: the status, and the record's error (the reason,
/// once an operator asked it to stop).
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub status: RunStatus,
    pub error: Option<String>,
}

fn standing_of(rows: Vec<Json>) -> Result<Option<Standing>, DbError> {
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    Ok(Some(Standing {
        status: run_status(&row["status"])?,
        error: row["error"].as_str().map(str::to_owned),
    }))
}

/// Run `id`'s status and error: one read by primary key.
pub async fn standing(db: &Db, id: i64) -> Result<Option<Standing>, DbError> {
    let rows = db
        .sql(
            "SELECT status, error FROM runbook_runs WHERE id = $1",
            vec![json!(id)],
        )
        .await?
        .rows;
    standing_of(rows)
}

/// Renews run `id`'s lease: `heartbeat_at` is now and `lease_until` now plus `lease`, by the
/// store's clock (so replicas whose clocks differ agree). Returns where the run stands.
pub async fn heartbeat(
    db: &Db,
    id: i64,
    lease: std::time::Duration,
) -> Result<Option<Standing>, DbError> {
    let d = db.dialect();
    let (until, param) = match d {
        Dialect::Postgres => (
            "NOW() + make_interval(secs => $2)".to_owned(),
            json!(lease.as_secs_f64()),
        ),
        Dialect::Sqlite => (
            crate::template::sqlite_now_plus("$2"),
            json!(format!("+{:.3} seconds", lease.as_secs_f64())),
        ),
    };
    let sql = format!(
        "UPDATE runbook_runs SET heartbeat_at = {now}, lease_until = {until} WHERE id = $1 \
         RETURNING status, error",
        now = d.now()
    );
    standing_of(db.sql(&sql, vec![json!(id), param]).await?.rows)
}

/// A run that has not ended, as the reaper of dead runs sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenRun {
    pub id: i64,
    pub playbook: String,
    pub status: RunStatus,
    pub command_id: Option<i64>,
    /// `None` for a run recorded before leases, or not yet renewed once.
    pub lease_until: Option<DateTime<Utc>>,
}

/// The runs that have not ended (running, waiting for approval, asked to stop), and the store's
/// clock now (`None` when there are none).
pub async fn open_runs(db: &Db) -> Result<(Vec<OpenRun>, Option<DateTime<Utc>>), DbError> {
    let open = [
        RunStatus::Running,
        RunStatus::WaitingApproval,
        RunStatus::CancelRequested,
    ];
    let sql = format!(
        "SELECT id, playbook, status, command_id, lease_until, {} AS now FROM runbook_runs \
         WHERE status IN ($1, $2, $3) ORDER BY id",
        db.dialect().now()
    );
    let rows = db
        .sql(&sql, open.iter().map(|s| json!(s)).collect())
        .await?
        .rows;
    let now = rows.first().and_then(|r| run_time(&r["now"]));
    let runs = rows
        .iter()
        .map(|r| {
            Ok(OpenRun {
                id: r["id"].as_i64().unwrap_or_default(),
                playbook: r["playbook"].as_str().unwrap_or_default().to_owned(),
                status: run_status(&r["status"])?,
                command_id: r["command_id"].as_i64(),
                lease_until: run_time(&r["lease_until"]),
            })
        })
        .collect::<Result<_, DbError>>()?;
    Ok((runs, now))
}

/// Ends a run whose lease expired (`status` becomes `to`, with `error`), unless it renewed its
/// lease or changed status meanwhile; audited as `actor`. Returns whether it was ended.
pub async fn end_dead(
    db: &Db,
    run: &OpenRun,
    to: RunStatus,
    error: &str,
    actor: &str,
) -> Result<bool, DbError> {
    let now = db.dialect().now();
    let audit = super::Audit {
        actor,
        op: "run_dead",
        filter: json!({ "run_id": run.id, "status": to }),
    };
    let changed = db
        .mutate_audited(
            &format!(
                "UPDATE runbook_runs SET status = $2, error = $3, finished_at = {now} \
                 WHERE id = $1 AND status = $4 AND lease_until < {now}"
            ),
            vec![json!(run.id), json!(to), json!(error), json!(run.status)],
            audit,
        )
        .await?;
    Ok(changed > 0)
}

/// The answers to a run's `approve` steps, oldest first: `{step_id, decision, actor, comment, at}`.
pub async fn approvals(db: &Db, run_id: i64) -> Result<Vec<Json>, DbError> {
    Ok(db
        .sql(
            "SELECT step_id, decision, actor, comment, at FROM runbook_approvals \
             WHERE run_id = $1 ORDER BY id",
            vec![json!(run_id)],
        )
        .await?
        .rows)
}

#[cfg(test)]
mod capped_tests {
    use super::*;

    #[test]
    fn an_output_over_the_cap_keeps_its_leading_rows_and_says_what_was_cut() {
        let rows: Vec<Json> = (0..1000)
            .map(|i| json!({ "n": i, "pad": "x".repeat(100) }))
            .collect();
        let whole = json!({ "rows": rows, "output": { "row_count": 1000 } });
        assert_eq!(capped_output(&whole, usize::MAX), whole);
        let capped = capped_output(&whole, 20_000);
        assert!(json_len(&capped) <= 20_000, "{}", json_len(&capped));
        let kept = capped["rows"].as_array().unwrap();
        assert!(!kept.is_empty() && kept.len() < 1000);
        assert_eq!(kept[0]["n"], 0);
        assert_eq!(capped["output"]["row_count"], 1000);
        assert_eq!(capped["cut"]["rows_left_out"], 1000 - kept.len());
        assert!(capped["cut"]["bytes_left_out"].as_u64().unwrap() > 90_000);
        // An output too big by itself keeps the start of its text.
        let body = json!({ "rows": [], "output": { "body": "y".repeat(50_000) } });
        let capped = capped_output(&body, 10_000);
        assert!(capped["start"].as_str().unwrap().starts_with('{'));
        assert!(json_len(&capped) <= 10_000);
        assert!(capped["cut"]["bytes_left_out"].as_u64().unwrap() > 40_000);
    }
}
