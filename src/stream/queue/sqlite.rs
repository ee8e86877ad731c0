//! The queue's SQLite statements that carry control flow: the claim and its lock upsert in one
//! transaction, the acknowledgement, and the rescue of expired leases. SQLite has no array
//! parameters: lists are bound as JSON text and read with `json_each`. Times are the store's
//! RFC 3339 text, compared as text with `SQLITE_NOW`.

use std::{collections::HashMap, sync::LazyLock, time::Duration};

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::{SqliteConnection, SqlitePool};

use super::{
    lock_candidates, lock_outcomes, sort_batch, AckPlan, Claimed, Disposition, Event, Failure,
    Lock, COMPLETED, DLQ, PENDING, PROCESSING,
};
use crate::{
    status::ErrorType,
    store::{DbError, SqlxError},
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
///
/// The transaction takes the write lock first (`BEGIN IMMEDIATE`), so that the batch it picks
/// with a read is the batch it updates: no other writer comes between. Each statement answers
/// with at most one row (the batch, then its locks, as JSON): rows cross from SQLite's thread to
/// the worker one at a time, and a hundred of them cost more than the statements themselves.
pub(super) async fn claim_locked(
    pool: &SqlitePool,
    worker: &str,
    limit: u32,
    lease: Duration,
    ttl: Duration,
    shared: &[String],
) -> Result<Vec<(Claimed, Lock)>, DbError> {
    // The commands as they will be once claimed: `attempts` counts this one.
    static PICK: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT json_group_array(json_array(id, entity, entity_id, command_type, priority, payload, attempts + 1, created_at)) \
             FROM (SELECT id, entity, entity_id, command_type, priority, payload, attempts, created_at FROM command_queue \
                   WHERE status = '{PENDING}' AND run_at <= {SQLITE_NOW} ORDER BY priority DESC, run_at, id LIMIT ?1)"
        )
    });
    static CLAIM: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE command_queue SET status = '{PROCESSING}', locked_by = ?1, \
                    locked_until = {until}, attempts = attempts + 1, updated_at = {SQLITE_NOW} \
             WHERE id IN (SELECT value FROM json_each(?2))",
            until = sqlite_now_plus("?3"),
        )
    });
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let picked: String = sqlx::query_scalar(&PICK)
        .bind(limit as i64)
        .fetch_one(&mut *tx)
        .await?;
    let mut batch = picked_batch(&picked)?;
    if batch.is_empty() {
        tx.rollback().await?;
        return Ok(Vec::new());
    }
    let claimed_ids: Vec<i64> = batch.iter().map(|c| c.id).collect();
    sqlx::query(&CLAIM)
        .bind(worker)
        .bind(ids(&claimed_ids))
        .bind(later(lease))
        .execute(&mut *tx)
        .await?;
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

/// The batch `PICK` answered: `[[id, entity, entity_id, command_type, priority, payload text,
/// attempts, created_at], ...]`.
fn picked_batch(picked: &str) -> Result<Vec<Claimed>, DbError> {
    type Row = (
        i64,
        String,
        String,
        String,
        i32,
        Option<String>,
        i32,
        String,
    );
    let rows: Vec<Row> = serde_json::from_str(picked)
        .map_err(|e| DbError::Query(SqlxError(sqlx::Error::Decode(Box::new(e)))))?;
    Ok(rows
        .into_iter()
        .map(
            |(id, entity, entity_id, command_type, priority, payload, attempts, created_at)| {
                Claimed {
                    id,
                    entity,
                    entity_id,
                    command_type,
                    priority,
                    payload: payload
                        .and_then(|p| serde_json::from_str(&p).ok())
                        .unwrap_or(Json::Null),
                    attempts,
                    created_at: parse_ts(&created_at),
                }
            },
        )
        .collect())
}

/// Takes the candidates' entity locks where they are free or expired (older than `ttl`), and no
/// older exclusive command of the entity with at least the candidate's priority is pending
/// (deferred behind the lock, or waiting for a retry: it goes first); returns the ids that took theirs, each with whether it was a takeover.
/// The batch's own commands are `processing` by now, so only commands outside it hold one back.
///
/// Which candidates took their lock is read back in one row: the `updating` locks whose
/// `command_id` is a candidate's. A command holds its lock only while it is `processing` (its
/// acknowledgement, or the rescue of its lease, releases it in the transaction that ends that),
/// so a candidate, pending until this claim, holds one only if this statement gave it. (Were a
/// pending command ever to keep its lock, it would be read as holding it, which it does: the
/// lock names it.)
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
             WHERE work_state.state <> 'updating' OR work_state.locked_at < {expired}",
            expired = sqlite_now_plus("?3"),
        )
    });
    static HELD: &str = "SELECT json_group_array(json_array(command_id, takeover)) FROM work_state \
         WHERE state = 'updating' AND command_id IN (SELECT json_extract(value, '$[2]') FROM json_each(?1))";
    let items: Vec<Json> = candidates
        .iter()
        .map(|c| serde_json::json!([c.entity, c.entity_id, c.id, c.priority]))
        .collect();
    let items = Json::Array(items).to_string();
    sqlx::query(&SQL)
        .bind(&items)
        .bind(worker)
        .bind(earlier(ttl))
        .bind(serde_json::to_string(shared).unwrap_or_default())
        .execute(&mut *tx)
        .await?;
    let held: String = sqlx::query_scalar(HELD)
        .bind(&items)
        .fetch_one(&mut *tx)
        .await?;
    let held: Vec<(i64, i64)> = serde_json::from_str(&held)
        .map_err(|e| DbError::Query(SqlxError(sqlx::Error::Decode(Box::new(e)))))?;
    Ok(held.into_iter().map(|(id, t)| (id, t != 0)).collect())
}

/// Writes an acknowledgement in one transaction (whatever its shape: SQLite has one writer, and
/// no round trip to save); returns the accepted completions.
///
/// The completions are counted, not returned (a hundred ids would cross from SQLite's thread one
/// row at a time): when every one of them is accepted, the common case, the count says so. When
/// some were refused (another worker took their lease over), the transaction is rolled back and
/// written again, learning this time which completions stand.
pub(super) async fn ack(
    pool: &SqlitePool,
    worker: &str,
    plan: &AckPlan<'_>,
) -> Result<Vec<i64>, DbError> {
    let mut tx = pool.begin().await?;
    let mut accepted = plan.complete.clone();
    if !plan.complete.is_empty() {
        let n = complete_counted(&mut tx, &plan.complete, worker).await?;
        if n != plan.complete.len() {
            tx.rollback().await?;
            tx = pool.begin().await?;
            accepted = complete_returning(&mut tx, &plan.complete, worker).await?;
        }
    }
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

/// The completion of the commands whose lease is still `worker`'s (`?1` the ids, `?2` the worker).
static COMPLETE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE command_queue SET status = '{COMPLETED}', completed_at = {SQLITE_NOW}, updated_at = {SQLITE_NOW}, \
                locked_by = NULL, locked_until = NULL, error_message = NULL, error_type = NULL \
         WHERE id IN (SELECT value FROM json_each(?1)) AND locked_by = ?2 AND status = '{PROCESSING}'"
    )
});

/// Completes the commands whose lease is still `worker`'s; returns how many.
async fn complete_counted(
    tx: &mut SqliteConnection,
    done: &[i64],
    worker: &str,
) -> Result<usize, DbError> {
    let n = sqlx::query(&COMPLETE)
        .bind(ids(done))
        .bind(worker)
        .execute(tx)
        .await?
        .rows_affected();
    Ok(n as usize)
}

/// Completes the commands whose lease is still `worker`'s; returns their ids.
async fn complete_returning(
    tx: &mut SqliteConnection,
    done: &[i64],
    worker: &str,
) -> Result<Vec<i64>, DbError> {
    static SQL: LazyLock<String> = LazyLock::new(|| format!("{} RETURNING id", *COMPLETE));
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value as Json};

    use super::super::{ack, claim_locked, enqueue, rescue, Ack, Event, Lock, NewCommand};
    use crate::store::Db;

    const LEASE: Duration = Duration::from_secs(30);
    const TTL: Duration = Duration::from_secs(300);

    fn command(entity_id: &str) -> NewCommand {
        NewCommand {
            entity: "user".into(),
            entity_id: entity_id.into(),
            command_type: "user.update".into(),
            priority: 0,
            payload: json!({ "n": entity_id }),
        }
    }

    fn event(command_id: i64, entity_id: &str) -> Event {
        Event {
            command_id,
            entity: "user".into(),
            entity_id: entity_id.into(),
            event_type: "user.update.completed".into(),
            topic: "user-events".into(),
            payload: json!({}),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_batch_whose_lease_was_partly_taken_over_completes_the_rest_with_their_events() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("q.db").display());
        let db = Db::connect(&url, false, 2).await.unwrap();
        db.migrate().await.unwrap();
        let ids = enqueue(&db, &[command("1"), command("2")]).await.unwrap();
        let a = claim_locked(&db, "worker-a", 10, LEASE, TTL, &[])
            .await
            .unwrap();
        let claimed: Vec<(i64, Lock, i32, Json)> = a
            .iter()
            .map(|(c, l)| (c.id, *l, c.attempts, c.payload.clone()))
            .collect();
        let held = Lock::Held { takeover: false };
        assert_eq!(
            claimed,
            vec![
                (ids[0], held, 1, json!({ "n": "1" })),
                (ids[1], held, 1, json!({ "n": "2" })),
            ]
        );
        // The first command's lease runs out and worker B claims it again.
        db.sql(
            "UPDATE command_queue SET locked_until = '2000-01-01T00:00:00.000Z' WHERE id = $1",
            vec![json!(ids[0])],
        )
        .await
        .unwrap();
        assert_eq!(rescue(&db, 5).await.unwrap(), (1, 1));
        let b = claim_locked(&db, "worker-b", 10, LEASE, TTL, &[])
            .await
            .unwrap();
        assert_eq!(
            b.iter()
                .map(|(c, l)| (c.id, *l, c.attempts))
                .collect::<Vec<_>>(),
            vec![(ids[0], held, 2)]
        );
        // Worker A's acknowledgement of both: its completion of the first is refused, with its
        // event; the second completes with its event.
        let late = Ack {
            completed: vec![
                (ids[0], "user".into(), "1".into()),
                (ids[1], "user".into(), "2".into()),
            ],
            events: vec![event(ids[0], "1"), event(ids[1], "2")],
            locked: vec![ids[1]],
            ..Ack::default()
        };
        assert_eq!(ack(&db, "worker-a", &late).await.unwrap(), vec![ids[1]]);
        let rows = db
            .sql(
                "SELECT id, status, locked_by FROM command_queue ORDER BY id",
                vec![],
            )
            .await
            .unwrap()
            .rows;
        assert_eq!(
            rows,
            vec![
                json!({ "id": ids[0], "status": "processing", "locked_by": "worker-b" }),
                json!({ "id": ids[1], "status": "completed", "locked_by": null }),
            ]
        );
        let events = db
            .sql("SELECT command_id FROM outbox_final", vec![])
            .await
            .unwrap()
            .rows;
        assert_eq!(events, vec![json!({ "command_id": ids[1] })]);
        let locks = db
            .sql(
                "SELECT entity_id, state, command_id FROM work_state ORDER BY entity_id",
                vec![],
            )
            .await
            .unwrap()
            .rows;
        assert_eq!(
            locks,
            vec![
                json!({ "entity_id": "1", "state": "updating", "command_id": ids[0] }),
                json!({ "entity_id": "2", "state": "idle", "command_id": null }),
            ]
        );
    }
}
