//! The queue's SQLite statements that carry control flow: the claim and its lock upsert in one
//! transaction, the acknowledgement, and the rescue of expired leases. SQLite has no array
//! parameters: lists are bound as JSON text and read with `json_each`. Times are the store's
//! RFC 3339 text, compared as text with `SQLITE_NOW`.

use std::{collections::HashMap, sync::LazyLock, time::Duration};

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::{
    columns, lock_candidates, lock_outcomes, sort_batch, AckPlan, Claimed, Disposition, Event,
    Failure, Lock, COMPLETED, DLQ, PENDING, PROCESSING,
};
use crate::{
    status::ErrorType,
    store::DbError,
    template::{sqlite_now_plus, SQLITE_NOW},
};

/// A modifier moving SQLite's now `d` later, for `sqlite_now_plus`.
pub(super) fn later(d: Duration) -> String {
    format!("+{:.3} seconds", d.as_secs_f64())
}

/// A modifier moving SQLite's now `d` earlier, for `sqlite_now_plus`.
pub(super) fn earlier(d: Duration) -> String {
    format!("-{:.3} seconds", d.as_secs_f64())
}

/// Ids as the JSON array `json_each(?)` reads.
pub(super) fn ids(ids: &[i64]) -> String {
    serde_json::to_string(ids).unwrap_or_default()
}

/// A timestamp column as the store writes it; now if it does not parse.
pub(super) fn parse_ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now())
}

/// Claims a batch, then takes the locks of its candidates (see `lock_candidates`), in one
/// transaction.
pub(super) async fn claim_locked(
    pool: &SqlitePool,
    worker: &str,
    limit: u32,
    lease: Duration,
    ttl: Duration,
    shared: &[String],
) -> Result<Vec<(Claimed, Lock)>, DbError> {
    static CLAIM: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE command_queue SET status = '{PROCESSING}', locked_by = ?1, \
                    locked_until = {until}, attempts = attempts + 1, updated_at = {SQLITE_NOW} \
             WHERE id IN (SELECT id FROM command_queue WHERE status = '{PENDING}' AND run_at <= {SQLITE_NOW} \
                          ORDER BY priority DESC, run_at, id LIMIT ?2) \
             RETURNING id, entity, entity_id, command_type, priority, payload, attempts, created_at",
            until = sqlite_now_plus("?3"),
        )
    });
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(&CLAIM)
        .bind(worker)
        .bind(limit as i64)
        .bind(later(lease))
        .fetch_all(&mut *tx)
        .await?;
    let mut batch: Vec<Claimed> = rows
        .iter()
        .map(|r| Claimed {
            payload: serde_json::from_str(r.get::<&str, _>(5)).unwrap_or(Json::Null),
            created_at: parse_ts(r.get::<&str, _>(7)),
            ..columns(r)
        })
        .collect();
    sort_batch(&mut batch);
    let candidates = lock_candidates(&batch, shared);
    let held = if candidates.is_empty() {
        HashMap::new()
    } else {
        lock(&mut tx, &candidates, worker, ttl, shared).await?
    };
    tx.commit().await?;
    Ok(lock_outcomes(batch, shared, &held))
}

/// Takes the candidates' entity locks where they are free or expired (older than `ttl`), and no
/// older exclusive command of the entity with at least the candidate's priority is pending
/// (deferred behind the lock, or waiting for a retry: it goes first); returns the ids that took theirs, each with whether it was a takeover.
/// The batch's own commands are `processing` by now, so only commands outside it hold one back.
async fn lock(
    tx: &mut SqliteConnection,
    candidates: &[&Claimed],
    worker: &str,
    ttl: Duration,
    shared: &[String],
) -> Result<HashMap<i64, bool>, DbError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO work_state (entity, entity_id, state, locked_at, locked_by, command_id, takeover, updated_at) \
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), 'updating', {SQLITE_NOW}, ?2, json_extract(value, '$[2]'), 0, {SQLITE_NOW} \
             FROM json_each(?1) WHERE NOT EXISTS (SELECT 1 FROM command_queue o WHERE o.status = '{PENDING}' \
               AND o.entity = json_extract(value, '$[0]') AND o.entity_id = json_extract(value, '$[1]') \
               AND o.id < json_extract(value, '$[2]') AND o.priority >= json_extract(value, '$[3]') AND o.command_type NOT IN (SELECT value FROM json_each(?4))) \
             ON CONFLICT (entity, entity_id) DO UPDATE SET state = 'updating', locked_at = {SQLITE_NOW}, locked_by = excluded.locked_by, \
                command_id = excluded.command_id, takeover = (work_state.state = 'updating'), \
                expiries = work_state.expiries + CASE WHEN work_state.state = 'updating' THEN 1 ELSE 0 END, updated_at = {SQLITE_NOW} \
             WHERE work_state.state <> 'updating' OR work_state.locked_at < {expired} \
             RETURNING command_id, takeover",
            expired = sqlite_now_plus("?3"),
        )
    });
    let items: Vec<Json> = candidates
        .iter()
        .map(|c| serde_json::json!([c.entity, c.entity_id, c.id, c.priority]))
        .collect();
    Ok(sqlx::query(&SQL)
        .bind(Json::Array(items).to_string())
        .bind(worker)
        .bind(earlier(ttl))
        .bind(serde_json::to_string(shared).unwrap_or_default())
        .fetch_all(tx)
        .await?
        .iter()
        .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1) != 0))
        .collect())
}

/// Writes an acknowledgement in one transaction (whatever its shape: SQLite has one writer, and
/// no round trip to save); returns the accepted completions.
pub(super) async fn ack(
    pool: &SqlitePool,
    worker: &str,
    plan: &AckPlan<'_>,
) -> Result<Vec<i64>, DbError> {
    let mut tx = pool.begin().await?;
    let accepted = if plan.complete.is_empty() {
        Vec::new()
    } else {
        complete(&mut tx, &plan.complete, worker).await?
    };
    let events = plan.outbox(&accepted);
    if !events.is_empty() {
        insert_events(&mut tx, &events).await?;
    }
    for f in plan.failed {
        fail(&mut tx, f, worker).await?;
    }
    if !plan.release.is_empty() {
        release(&mut tx, plan.release).await?;
    }
    tx.commit().await?;
    Ok(accepted)
}

/// Completes the commands whose lease is still `worker`'s; returns their ids.
async fn complete(
    tx: &mut SqliteConnection,
    done: &[i64],
    worker: &str,
) -> Result<Vec<i64>, DbError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE command_queue SET status = '{COMPLETED}', completed_at = {SQLITE_NOW}, updated_at = {SQLITE_NOW}, \
                    locked_by = NULL, locked_until = NULL, error_message = NULL, error_type = NULL \
             WHERE id IN (SELECT value FROM json_each(?1)) AND locked_by = ?2 AND status = '{PROCESSING}' RETURNING id"
        )
    });
    Ok(sqlx::query_scalar(&SQL)
        .bind(ids(done))
        .bind(worker)
        .fetch_all(tx)
        .await?)
}

async fn insert_events(tx: &mut SqliteConnection, events: &[&Event]) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO outbox_final (command_id, entity, entity_id, event_type, topic, payload) \
         SELECT json_extract(value, '$.command_id'), json_extract(value, '$.entity'), json_extract(value, '$.entity_id'), \
                json_extract(value, '$.event_type'), json_extract(value, '$.topic'), json_extract(value, '$.payload') \
         FROM json_each(?1)",
    )
    .bind(serde_json::to_string(events).unwrap_or_default())
    .execute(tx)
    .await?;
    Ok(())
}

/// Sends one failed command back to pending (due after its delay) or to the DLQ. The two
/// statements differ only in `run_at`; the retry's delay is a bound modifier, so each text is
/// built, and prepared, once.
async fn fail(tx: &mut SqliteConnection, f: &Failure, worker: &str) -> Result<(), DbError> {
    fn statement(run_at: &str) -> String {
        format!(
            "UPDATE command_queue SET status = ?1, run_at = {run_at}, error_type = ?2, error_message = ?3, \
                    locked_by = NULL, locked_until = NULL, updated_at = {SQLITE_NOW} \
             WHERE id = ?4 AND locked_by = ?5 AND status = '{PROCESSING}'"
        )
    }
    static RETRY: LazyLock<String> = LazyLock::new(|| statement(&sqlite_now_plus("?6")));
    static TO_DLQ: LazyLock<String> = LazyLock::new(|| statement("run_at"));
    let disposition = Disposition::of(f);
    let query = match disposition {
        Disposition::Retry { .. } => sqlx::query(&RETRY),
        Disposition::Dlq => sqlx::query(&TO_DLQ),
    }
    .bind(disposition.status().as_str())
    .bind(f.error_type.as_str())
    .bind(&f.message)
    .bind(f.id)
    .bind(worker);
    match disposition {
        Disposition::Retry { delay } => query.bind(later(delay)),
        Disposition::Dlq => query,
    }
    .execute(tx)
    .await?;
    Ok(())
}

/// Releases the work-state locks the batch's commands hold.
async fn release(tx: &mut SqliteConnection, locked: &[i64]) -> Result<(), DbError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE work_state SET state = 'idle', locked_at = NULL, locked_by = NULL, command_id = NULL, updated_at = {SQLITE_NOW} \
             WHERE command_id IN (SELECT value FROM json_each(?1)) AND state = 'updating'"
        )
    });
    sqlx::query(&SQL).bind(ids(locked)).execute(tx).await?;
    Ok(())
}

/// Returns expired leases to the queue (to the DLQ past `max_retries`) and releases their locks,
/// counted as expiries, in one transaction.
pub(super) async fn rescue(pool: &SqlitePool, max_retries: u32) -> Result<(u64, u64), DbError> {
    static RESCUE: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE command_queue SET status = CASE WHEN attempts > ?1 THEN '{DLQ}' ELSE '{PENDING}' END, \
                    error_type = '{expired}', error_message = 'lease of ' || COALESCE(locked_by, '?') || ' expired', \
                    locked_by = NULL, locked_until = NULL, run_at = {SQLITE_NOW}, updated_at = {SQLITE_NOW} \
             WHERE status = '{PROCESSING}' AND locked_until < {SQLITE_NOW} RETURNING id",
            expired = ErrorType::LeaseExpiredException,
        )
    });
    static RELEASE: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE work_state SET state = 'idle', locked_at = NULL, locked_by = NULL, command_id = NULL, \
                    expiries = expiries + 1, updated_at = {SQLITE_NOW} \
             WHERE command_id IN (SELECT value FROM json_each(?1)) AND state = 'updating'"
        )
    });
    let mut tx = pool.begin().await?;
    let returned: Vec<i64> = sqlx::query_scalar(&RESCUE)
        .bind(max_retries as i32)
        .fetch_all(&mut *tx)
        .await?;
    let released = if returned.is_empty() {
        0
    } else {
        sqlx::query(&RELEASE)
            .bind(ids(&returned))
            .execute(&mut *tx)
            .await?
            .rows_affected()
    };
    tx.commit().await?;
    Ok((returned.len() as u64, released))
}
