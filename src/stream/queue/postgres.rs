//! The queue's PostgreSQL statements that carry control flow: the claim (one statement that also
//! takes the entity locks), the acknowledgement in its shapes, and the rescue of expired leases.
//! Arrays are bound as PostgreSQL arrays (`ANY($1)`, `UNNEST`).

use std::{sync::LazyLock, time::Duration};

use sqlx::{PgConnection, PgExecutor, PgPool, Row};

use super::{
    columns, lock_of, secs, AckPlan, AckShape, Claimed, Disposition, Event, Failure, Lock,
    COMPLETED, DLQ, PENDING, PROCESSING,
};
use crate::{status::ErrorType, store::DbError};

/// The claim, the choice of which command of each entity tries for its lock (`first`), the lock
/// upsert (`l`, which passes over a command with an older exclusive command of its entity, of at
/// least its priority, pending outside this batch) and the batch order, in one statement: one
/// round trip, one commit. The statement sees the table as it was before it, so the batch's own
/// commands are still `pending` to it: `NOT IN (SELECT id FROM c)` leaves them out. The older
/// command is looked for with a scalar subquery (`(...) IS NULL`), not `NOT EXISTS`, which the
/// planner may turn into an anti-join over the whole queue: this way it is one probe of
/// `command_queue_entity_pending` per entity of the batch.
pub(super) async fn claim_locked(
    pool: &PgPool,
    worker: &str,
    limit: u32,
    lease: Duration,
    ttl: Duration,
    shared: &[String],
) -> Result<Vec<(Claimed, Lock)>, DbError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH c AS ( \
               UPDATE command_queue SET status = '{PROCESSING}', locked_by = $1, \
                      locked_until = NOW() + make_interval(secs => $3), attempts = attempts + 1, updated_at = NOW() \
               WHERE id IN (SELECT id FROM command_queue WHERE status = '{PENDING}' AND run_at <= NOW() \
                            ORDER BY priority DESC, run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
               RETURNING id, entity, entity_id, command_type, priority, payload, attempts, created_at), \
             first AS ( \
               SELECT DISTINCT ON (entity, entity_id) id, entity, entity_id, priority FROM c \
               WHERE NOT (command_type = ANY($5)) ORDER BY entity, entity_id, priority DESC, id), \
             l AS ( \
               INSERT INTO work_state (entity, entity_id, state, locked_at, locked_by, command_id, takeover, updated_at) \
               SELECT entity, entity_id, 'updating', NOW(), $1, id, FALSE, NOW() FROM first \
               WHERE (SELECT o.id FROM command_queue o WHERE o.status = '{PENDING}' \
                 AND o.entity = first.entity AND o.entity_id = first.entity_id AND o.id < first.id \
                 AND o.priority >= first.priority \
                 AND NOT (o.command_type = ANY($5)) AND o.id NOT IN (SELECT id FROM c) LIMIT 1) IS NULL \
               ON CONFLICT (entity, entity_id) DO UPDATE SET state = 'updating', locked_at = NOW(), \
                  locked_by = EXCLUDED.locked_by, command_id = EXCLUDED.command_id, \
                  takeover = (work_state.state = 'updating'), \
                  expiries = work_state.expiries + CASE WHEN work_state.state = 'updating' THEN 1 ELSE 0 END, updated_at = NOW() \
               WHERE work_state.state <> 'updating' OR work_state.locked_at < NOW() - make_interval(secs => $4) \
               RETURNING command_id, takeover) \
             SELECT c.id, c.entity, c.entity_id, c.command_type, c.priority, c.payload, c.attempts, c.created_at, \
                    c.command_type = ANY($5) AS shared, l.command_id IS NOT NULL AS locked, COALESCE(l.takeover, FALSE) AS takeover \
             FROM c LEFT JOIN l ON l.command_id = c.id ORDER BY c.priority DESC, c.id"
        )
    });
    let rows = sqlx::query(&SQL)
        .bind(worker)
        .bind(limit as i64)
        .bind(secs(lease))
        .bind(secs(ttl))
        .bind(shared)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let held = r.get::<bool, _>(9).then(|| r.get::<bool, _>(10));
            let lock = lock_of(r.get(8), held);
            let c = Claimed {
                payload: r.get(5),
                created_at: r.get(7),
                ..columns(r)
            };
            (c, lock)
        })
        .collect())
}

/// Writes an acknowledgement in the shape its plan chose; returns the accepted completions.
pub(super) async fn ack(
    pool: &PgPool,
    worker: &str,
    plan: &AckPlan<'_>,
) -> Result<Vec<i64>, DbError> {
    match plan.shape {
        AckShape::Nothing => Ok(Vec::new()),
        AckShape::Complete => complete(pool, &plan.complete, worker).await,
        AckShape::CompleteReleasing => complete_releasing(pool, &plan.complete, worker).await,
        AckShape::Transaction => {
            let mut tx = pool.begin().await?;
            let accepted = if plan.complete.is_empty() {
                Vec::new()
            } else {
                complete(&mut *tx, &plan.complete, worker).await?
            };
            let events = plan.outbox(&accepted);
            if !events.is_empty() {
                insert_events(&mut tx, &events).await?;
            }
            if !plan.failed.is_empty() {
                fail(&mut tx, plan.failed, worker).await?;
            }
            if !plan.release.is_empty() {
                release(&mut tx, plan.release).await?;
            }
            tx.commit().await?;
            Ok(accepted)
        }
    }
}

/// Completes the commands whose lease is still `worker`'s; returns their ids (as one array, in
/// one row, not a row each). Alone, or in the batch's transaction.
async fn complete<'e>(
    db: impl PgExecutor<'e>,
    ids: &[i64],
    worker: &str,
) -> Result<Vec<i64>, DbError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH done AS (UPDATE command_queue SET status = '{COMPLETED}', completed_at = NOW(), updated_at = NOW(), \
                    locked_by = NULL, locked_until = NULL, error_message = NULL, error_type = NULL \
             WHERE id = ANY($1) AND locked_by = $2 AND status = '{PROCESSING}' RETURNING id) \
             SELECT COALESCE(array_agg(id), '{{}}') FROM done"
        )
    });
    Ok(sqlx::query_scalar(&SQL)
        .bind(ids)
        .bind(worker)
        .fetch_one(db)
        .await?)
}

/// Completes the commands whose lease is still `worker`'s and releases the locks those hold, in
/// one statement; returns the accepted ids (one array, in one row).
async fn complete_releasing(pool: &PgPool, ids: &[i64], worker: &str) -> Result<Vec<i64>, DbError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH done AS ( \
               UPDATE command_queue SET status = '{COMPLETED}', completed_at = NOW(), updated_at = NOW(), \
                      locked_by = NULL, locked_until = NULL, error_message = NULL, error_type = NULL \
               WHERE id = ANY($1) AND locked_by = $2 AND status = '{PROCESSING}' RETURNING id, entity, entity_id), \
             released AS ( \
               UPDATE work_state w SET state = 'idle', locked_at = NULL, locked_by = NULL, command_id = NULL, updated_at = NOW() \
               FROM done WHERE w.entity = done.entity AND w.entity_id = done.entity_id AND w.command_id = done.id RETURNING 1) \
             SELECT COALESCE(array_agg(id), '{{}}') FROM done"
        )
    });
    Ok(sqlx::query_scalar(&SQL)
        .bind(ids)
        .bind(worker)
        .fetch_one(pool)
        .await?)
}

async fn insert_events(tx: &mut PgConnection, events: &[&Event]) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO outbox_final (command_id, entity, entity_id, event_type, topic, payload) \
         SELECT c, e, i, t, tp, p::jsonb FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
           AS u(c, e, i, t, tp, p)",
    )
    .bind(events.iter().map(|e| e.command_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.entity.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.entity_id.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.payload.to_string()).collect::<Vec<_>>())
    .execute(tx)
    .await?;
    Ok(())
}

/// Retries and DLQ entries in one statement, each failure's disposition bound as `retry` and
/// `delay`.
async fn fail(tx: &mut PgConnection, failed: &[Failure], worker: &str) -> Result<(), DbError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE command_queue q SET status = CASE WHEN u.retry THEN '{PENDING}' ELSE '{DLQ}' END, \
                    run_at = CASE WHEN u.retry THEN NOW() + make_interval(secs => u.delay) ELSE q.run_at END, \
                    error_type = u.etype, error_message = u.msg, locked_by = NULL, locked_until = NULL, updated_at = NOW() \
             FROM UNNEST($1::int8[], $2::bool[], $3::float8[], $4::text[], $5::text[]) AS u(id, retry, delay, etype, msg) \
             WHERE q.id = u.id AND q.locked_by = $6 AND q.status = '{PROCESSING}'"
        )
    });
    sqlx::query(&SQL)
        .bind(failed.iter().map(|f| f.id).collect::<Vec<_>>())
        .bind(
            failed
                .iter()
                .map(|f| Disposition::of(f).retries())
                .collect::<Vec<_>>(),
        )
        .bind(
            failed
                .iter()
                .map(|f| Disposition::of(f).delay_secs())
                .collect::<Vec<_>>(),
        )
        .bind(
            failed
                .iter()
                .map(|f| f.error_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            failed
                .iter()
                .map(|f| f.message.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(worker)
        .execute(tx)
        .await?;
    Ok(())
}

/// Releases the work-state locks the batch's commands hold.
async fn release(tx: &mut PgConnection, ids: &[i64]) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE work_state SET state = 'idle', locked_at = NULL, locked_by = NULL, command_id = NULL, updated_at = NOW() \
         WHERE command_id = ANY($1) AND state = 'updating'",
    )
    .bind(ids)
    .execute(tx)
    .await?;
    Ok(())
}

/// Returns expired leases to the queue (to the DLQ past `max_retries`) and releases their locks,
/// counted as expiries, in one transaction.
pub(super) async fn rescue(pool: &PgPool, max_retries: u32) -> Result<(u64, u64), DbError> {
    let mut tx = pool.begin().await?;
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE command_queue SET status = CASE WHEN attempts > $1 THEN '{DLQ}' ELSE '{PENDING}' END, \
                    error_type = '{expired}', error_message = 'lease of ' || COALESCE(locked_by, '?') || ' expired', \
                    locked_by = NULL, locked_until = NULL, run_at = NOW(), updated_at = NOW() \
             WHERE id IN (SELECT id FROM command_queue WHERE status = '{PROCESSING}' AND locked_until < NOW() FOR UPDATE SKIP LOCKED) \
             RETURNING id",
            expired = ErrorType::LeaseExpiredException,
        )
    });
    let ids: Vec<i64> = sqlx::query_scalar(&SQL)
        .bind(max_retries as i32)
        .fetch_all(&mut *tx)
        .await?;
    let released = if ids.is_empty() {
        0
    } else {
        sqlx::query(
            "UPDATE work_state SET state = 'idle', locked_at = NULL, locked_by = NULL, command_id = NULL, \
                    expiries = expiries + 1, updated_at = NOW() \
             WHERE command_id = ANY($1) AND state = 'updating'",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?
        .rows_affected()
    };
    tx.commit().await?;
    Ok((ids.len() as u64, released))
}
