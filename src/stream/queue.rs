//! The command queue's storage operations, one function per transition, each a single statement
//! or one transaction per batch, written for PostgreSQL and SQLite side by side.
//!
//! ```text
//! pending ──claim (lease)──▶ processing ──ack──▶ completed (+ outbox events, same transaction)
//!    ▲                          │  └──fail──▶ pending (run_at = now + backoff) │ dlq (after maxRetries,
//!    └──── rescue: lease expired (counts as an attempt) ┘                       or not retryable)
//! ```
//!
//! On PostgreSQL claims use `FOR UPDATE SKIP LOCKED`, so any number of processes share one queue;
//! SQLite has a single writer, so its `UPDATE ... RETURNING` is already exclusive. A completion or
//! failure from a worker whose lease was taken over matches no row and is refused.

use std::{sync::LazyLock, time::Duration};

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};
use sqlx::Row;

use crate::{
    status::{CommandStatus, ErrorType},
    store::{Db, DbError, Tx},
    template::{sqlite_now_plus, SQLITE_NOW},
};

// The statuses spliced into the statements below. They are literals in the SQL text, not bound
// values, so the planners can use the partial indexes on `status = 'pending'` and
// `status = 'processing'`; each statement's text is built once.
const PENDING: &str = CommandStatus::Pending.as_str();
const PROCESSING: &str = CommandStatus::Processing.as_str();
const COMPLETED: &str = CommandStatus::Completed.as_str();
const DLQ: &str = CommandStatus::Dlq.as_str();

/// A command to enqueue.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub entity: String,
    pub entity_id: String,
    pub command_type: String,
    pub priority: i32,
    pub payload: Json,
}

/// A claimed command, leased to one worker.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub entity: String,
    pub entity_id: String,
    pub command_type: String,
    pub priority: i32,
    pub payload: Json,
    /// Including this one.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// An event written to the outbox in the transaction that completes its command.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub command_id: i64,
    pub entity: String,
    pub entity_id: String,
    pub event_type: String,
    pub topic: String,
    pub payload: Json,
}

/// What to do with a failed command.
#[derive(Debug, Clone)]
pub struct Failure {
    pub id: i64,
    pub entity: String,
    pub entity_id: String,
    pub error_type: ErrorType,
    pub message: String,
    /// `Some(delay)`: back to pending after the delay; `None`: to the DLQ.
    pub retry_in: Option<Duration>,
}

/// A batch's outcome, acknowledged in one transaction.
#[derive(Debug, Default)]
pub struct Ack {
    pub completed: Vec<(i64, String, String)>,
    pub events: Vec<Event>,
    pub failed: Vec<Failure>,
    /// Commands of this batch that hold their entity's work-state lock; released with the acknowledgement.
    pub locked: Vec<i64>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// SQLite's "now plus `d`" in the store's timestamp format.
fn sqlite_in(d: Duration) -> String {
    format!("+{:.3} seconds", d.as_secs_f64())
}

fn parse_ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now())
}

/// Enqueues commands in one statement; returns their ids.
pub async fn enqueue(db: &Db, commands: &[NewCommand]) -> Result<Vec<i64>, DbError> {
    if commands.is_empty() {
        return Ok(Vec::new());
    }
    match db {
        Db::Postgres(pool) => {
            let rows = sqlx::query(
                "INSERT INTO command_queue (entity, entity_id, command_type, priority, payload) \
                 SELECT e, i, t, p, d::jsonb FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[]) AS u(e, i, t, p, d) \
                 RETURNING id",
            )
            .bind(commands.iter().map(|c| c.entity.as_str()).collect::<Vec<_>>())
            .bind(commands.iter().map(|c| c.entity_id.as_str()).collect::<Vec<_>>())
            .bind(commands.iter().map(|c| c.command_type.as_str()).collect::<Vec<_>>())
            .bind(commands.iter().map(|c| c.priority).collect::<Vec<_>>())
            .bind(commands.iter().map(|c| c.payload.to_string()).collect::<Vec<_>>())
            .fetch_all(pool)
            .await?;
            Ok(rows.iter().map(|r| r.get::<i64, _>(0)).collect())
        }
        Db::Sqlite(pool) => {
            let items: Vec<Json> = commands
                .iter()
                .map(|c| {
                    json!([
                        c.entity,
                        c.entity_id,
                        c.command_type,
                        c.priority,
                        c.payload.to_string()
                    ])
                })
                .collect();
            let rows = sqlx::query(
                "INSERT INTO command_queue (entity, entity_id, command_type, priority, payload) \
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), \
                        json_extract(value, '$[3]'), json_extract(value, '$[4]') FROM json_each(?1) WHERE true \
                 RETURNING id",
            )
            .bind(Json::Array(items).to_string())
            .fetch_all(pool)
            .await?;
            Ok(rows.iter().map(|r| r.get::<i64, _>(0)).collect())
        }
    }
}

/// Enqueues one command inside the caller's transaction, so it stands or falls with the caller's
/// other writes (a schedule tick: [`crate::store::ticks`]); returns its id.
pub async fn enqueue_in(tx: &mut Tx, c: &NewCommand) -> Result<i64, DbError> {
    Ok(match tx {
        Tx::Postgres(tx) => {
            sqlx::query_scalar(
                "INSERT INTO command_queue (entity, entity_id, command_type, priority, payload) \
                 VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING id",
            )
            .bind(&c.entity)
            .bind(&c.entity_id)
            .bind(&c.command_type)
            .bind(c.priority)
            .bind(c.payload.to_string())
            .fetch_one(&mut **tx)
            .await?
        }
        Tx::Sqlite(tx) => {
            sqlx::query_scalar(
                "INSERT INTO command_queue (entity, entity_id, command_type, priority, payload) \
                 VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
            )
            .bind(&c.entity)
            .bind(&c.entity_id)
            .bind(&c.command_type)
            .bind(c.priority)
            .bind(c.payload.to_string())
            .fetch_one(&mut **tx)
            .await?
        }
    })
}

/// The columns both backends decode alike; payload and created_at are set by the caller.
fn columns<R: Row>(r: &R) -> Claimed
where
    usize: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i32: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Claimed {
        id: r.get(0),
        entity: r.get(1),
        entity_id: r.get(2),
        command_type: r.get(3),
        priority: r.get(4),
        payload: Json::Null,
        attempts: r.get(6),
        created_at: DateTime::<Utc>::UNIX_EPOCH,
    }
}

/// What a claimed command may do about its entity's work-state lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Its command type does not take entity locks (`exclusive: false`).
    Shared,
    /// It holds the lock; `takeover` when it took over an expired one.
    Held { takeover: bool },
    /// Another command of its entity holds a live lock: it must wait.
    Busy,
}

/// Claims up to `limit` commands and takes their entities' work-state locks in one go: on
/// PostgreSQL one statement (one round trip, one commit), on SQLite one transaction. Command
/// types in `shared` take no lock. Of several commands of one entity in a batch, only the first
/// tries for the lock; the others are `Busy`.
pub async fn claim_locked(
    db: &Db,
    worker: &str,
    limit: u32,
    lease: Duration,
    ttl: Duration,
    shared: &[String],
) -> Result<Vec<(Claimed, Lock)>, DbError> {
    match db {
        Db::Postgres(pool) => {
            static SQL: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "WITH c AS ( \
                       UPDATE command_queue SET status = '{PROCESSING}', locked_by = $1, \
                              locked_until = NOW() + make_interval(secs => $3), attempts = attempts + 1, updated_at = NOW() \
                       WHERE id IN (SELECT id FROM command_queue WHERE status = '{PENDING}' AND run_at <= NOW() \
                                    ORDER BY priority DESC, run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                       RETURNING id, entity, entity_id, command_type, priority, payload, attempts, created_at), \
                     first AS ( \
                       SELECT DISTINCT ON (entity, entity_id) id, entity, entity_id FROM c \
                       WHERE NOT (command_type = ANY($5)) ORDER BY entity, entity_id, priority DESC, id), \
                     l AS ( \
                       INSERT INTO work_state (entity, entity_id, state, locked_at, locked_by, command_id, takeover, updated_at) \
                       SELECT entity, entity_id, 'updating', NOW(), $1, id, FALSE, NOW() FROM first \
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
                    let lock = match (r.get::<bool, _>(8), r.get::<bool, _>(9)) {
                        (true, _) => Lock::Shared,
                        (false, true) => Lock::Held {
                            takeover: r.get(10),
                        },
                        (false, false) => Lock::Busy,
                    };
                    let c = Claimed {
                        payload: r.get(5),
                        created_at: r.get(7),
                        ..columns(r)
                    };
                    (c, lock)
                })
                .collect())
        }
        Db::Sqlite(pool) => {
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
                .bind(sqlite_in(lease))
                .fetch_all(&mut *tx)
                .await?;
            let mut claimed: Vec<Claimed> = rows
                .iter()
                .map(|r| Claimed {
                    payload: serde_json::from_str(r.get::<&str, _>(5)).unwrap_or(Json::Null),
                    created_at: parse_ts(r.get::<&str, _>(7)),
                    ..columns(r)
                })
                .collect();
            claimed.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
            let mut seen = std::collections::HashSet::new();
            let first: Vec<&Claimed> = claimed
                .iter()
                .filter(|c| {
                    !shared.contains(&c.command_type)
                        && seen.insert((c.entity.clone(), c.entity_id.clone()))
                })
                .collect();
            let locked: std::collections::HashMap<i64, bool> = if first.is_empty() {
                Default::default()
            } else {
                let items: Vec<Json> = first
                    .iter()
                    .map(|c| json!([c.entity, c.entity_id, c.id]))
                    .collect();
                static LOCK: LazyLock<String> = LazyLock::new(|| {
                    format!(
                        "INSERT INTO work_state (entity, entity_id, state, locked_at, locked_by, command_id, takeover, updated_at) \
                         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), 'updating', {SQLITE_NOW}, ?2, json_extract(value, '$[2]'), 0, {SQLITE_NOW} \
                         FROM json_each(?1) WHERE true \
                         ON CONFLICT (entity, entity_id) DO UPDATE SET state = 'updating', locked_at = {SQLITE_NOW}, locked_by = excluded.locked_by, \
                            command_id = excluded.command_id, takeover = (work_state.state = 'updating'), \
                            expiries = work_state.expiries + CASE WHEN work_state.state = 'updating' THEN 1 ELSE 0 END, updated_at = {SQLITE_NOW} \
                         WHERE work_state.state <> 'updating' OR work_state.locked_at < {expired} \
                         RETURNING command_id, takeover",
                        expired = sqlite_now_plus("?3"),
                    )
                });
                sqlx::query(&LOCK)
                    .bind(Json::Array(items).to_string())
                    .bind(worker)
                    .bind(format!("-{:.3} seconds", ttl.as_secs_f64()))
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1) != 0))
                    .collect()
            };
            tx.commit().await?;
            Ok(claimed
                .into_iter()
                .map(|c| {
                    let lock = if shared.contains(&c.command_type) {
                        Lock::Shared
                    } else {
                        match locked.get(&c.id) {
                            Some(t) => Lock::Held { takeover: *t },
                            None => Lock::Busy,
                        }
                    };
                    (c, lock)
                })
                .collect())
        }
    }
}

/// Puts back commands that could not take their entity's lock, without counting the attempt.
pub async fn defer(db: &Db, worker: &str, ids: &[i64], delay: Duration) -> Result<(), DbError> {
    if ids.is_empty() {
        return Ok(());
    }
    match db {
        Db::Postgres(pool) => {
            static SQL: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "UPDATE command_queue SET status = '{PENDING}', attempts = attempts - 1, locked_by = NULL, locked_until = NULL, \
                            run_at = NOW() + make_interval(secs => $3), updated_at = NOW() \
                     WHERE id = ANY($1) AND locked_by = $2 AND status = '{PROCESSING}'"
                )
            });
            sqlx::query(&SQL)
                .bind(ids)
                .bind(worker)
                .bind(secs(delay))
                .execute(pool)
                .await?;
        }
        Db::Sqlite(pool) => {
            static SQL: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "UPDATE command_queue SET status = '{PENDING}', attempts = attempts - 1, locked_by = NULL, locked_until = NULL, \
                            run_at = {run_at}, updated_at = {SQLITE_NOW} \
                     WHERE id IN (SELECT value FROM json_each(?1)) AND locked_by = ?2 AND status = '{PROCESSING}'",
                    run_at = sqlite_now_plus("?3"),
                )
            });
            sqlx::query(&SQL)
                .bind(json!(ids).to_string())
                .bind(worker)
                .bind(sqlite_in(delay))
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// Acknowledges a batch in one transaction: completions (with their outbox events), failures,
/// and the release of the entities' locks. Returns the ids whose completion was accepted; a
/// command whose lease another worker took over is refused (its events are not written).
pub async fn ack(db: &Db, worker: &str, ack: &Ack) -> Result<Vec<i64>, DbError> {
    /// Completions on PostgreSQL, alone or in the batch's transaction.
    static COMPLETE_PG: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE command_queue SET status = '{COMPLETED}', completed_at = NOW(), updated_at = NOW(), \
                    locked_by = NULL, locked_until = NULL, error_message = NULL, error_type = NULL \
             WHERE id = ANY($1) AND locked_by = $2 AND status = '{PROCESSING}' RETURNING id"
        )
    });
    let done_ids: Vec<i64> = ack.completed.iter().map(|(id, _, _)| *id).collect();
    let lock_ids = &ack.locked;
    match db {
        // The common case, completions without events or failures: one statement, no transaction
        // round trips. The locks released are those the completed commands hold.
        Db::Postgres(pool)
            if ack.events.is_empty() && ack.failed.is_empty() && ack.locked.is_empty() =>
        {
            if done_ids.is_empty() {
                return Ok(Vec::new());
            }
            Ok(sqlx::query_scalar(&COMPLETE_PG)
                .bind(&done_ids)
                .bind(worker)
                .fetch_all(pool)
                .await?)
        }
        Db::Postgres(pool) if ack.events.is_empty() && ack.failed.is_empty() => {
            if done_ids.is_empty() {
                return Ok(Vec::new());
            }
            static SQL: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "WITH done AS ( \
                       UPDATE command_queue SET status = '{COMPLETED}', completed_at = NOW(), updated_at = NOW(), \
                              locked_by = NULL, locked_until = NULL, error_message = NULL, error_type = NULL \
                       WHERE id = ANY($1) AND locked_by = $2 AND status = '{PROCESSING}' RETURNING id, entity, entity_id), \
                     released AS ( \
                       UPDATE work_state w SET state = 'idle', locked_at = NULL, locked_by = NULL, command_id = NULL, updated_at = NOW() \
                       FROM done WHERE w.entity = done.entity AND w.entity_id = done.entity_id AND w.command_id = done.id RETURNING 1) \
                     SELECT id FROM done"
                )
            });
            Ok(sqlx::query_scalar(&SQL)
                .bind(&done_ids)
                .bind(worker)
                .fetch_all(pool)
                .await?)
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            let accepted: Vec<i64> = if done_ids.is_empty() {
                Vec::new()
            } else {
                sqlx::query_scalar(&COMPLETE_PG)
                    .bind(&done_ids)
                    .bind(worker)
                    .fetch_all(&mut *tx)
                    .await?
            };
            let events: Vec<&Event> = ack
                .events
                .iter()
                .filter(|e| accepted.contains(&e.command_id))
                .collect();
            if !events.is_empty() {
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
                .execute(&mut *tx)
                .await?;
            }
            if !ack.failed.is_empty() {
                static FAIL: LazyLock<String> = LazyLock::new(|| {
                    format!(
                        "UPDATE command_queue q SET status = CASE WHEN u.retry THEN '{PENDING}' ELSE '{DLQ}' END, \
                                run_at = CASE WHEN u.retry THEN NOW() + make_interval(secs => u.delay) ELSE q.run_at END, \
                                error_type = u.etype, error_message = u.msg, locked_by = NULL, locked_until = NULL, updated_at = NOW() \
                         FROM UNNEST($1::int8[], $2::bool[], $3::float8[], $4::text[], $5::text[]) AS u(id, retry, delay, etype, msg) \
                         WHERE q.id = u.id AND q.locked_by = $6 AND q.status = '{PROCESSING}'"
                    )
                });
                let f = &ack.failed;
                sqlx::query(&FAIL)
                    .bind(f.iter().map(|x| x.id).collect::<Vec<_>>())
                    .bind(f.iter().map(|x| x.retry_in.is_some()).collect::<Vec<_>>())
                    .bind(
                        f.iter()
                            .map(|x| x.retry_in.map(secs).unwrap_or(0.0))
                            .collect::<Vec<_>>(),
                    )
                    .bind(f.iter().map(|x| x.error_type.as_str()).collect::<Vec<_>>())
                    .bind(f.iter().map(|x| x.message.as_str()).collect::<Vec<_>>())
                    .bind(worker)
                    .execute(&mut *tx)
                    .await?;
            }
            if !lock_ids.is_empty() {
                sqlx::query(
                    "UPDATE work_state SET state = 'idle', locked_at = NULL, locked_by = NULL, command_id = NULL, updated_at = NOW() \
                     WHERE command_id = ANY($1) AND state = 'updating'",
                )
                .bind(lock_ids)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(accepted)
        }
        Db::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let accepted: Vec<i64> = if done_ids.is_empty() {
                Vec::new()
            } else {
                static COMPLETE: LazyLock<String> = LazyLock::new(|| {
                    format!(
                        "UPDATE command_queue SET status = '{COMPLETED}', completed_at = {SQLITE_NOW}, updated_at = {SQLITE_NOW}, \
                                locked_by = NULL, locked_until = NULL, error_message = NULL, error_type = NULL \
                         WHERE id IN (SELECT value FROM json_each(?1)) AND locked_by = ?2 AND status = '{PROCESSING}' RETURNING id"
                    )
                });
                sqlx::query_scalar(&COMPLETE)
                    .bind(json!(done_ids).to_string())
                    .bind(worker)
                    .fetch_all(&mut *tx)
                    .await?
            };
            let events: Vec<&Event> = ack
                .events
                .iter()
                .filter(|e| accepted.contains(&e.command_id))
                .collect();
            if !events.is_empty() {
                sqlx::query(
                    "INSERT INTO outbox_final (command_id, entity, entity_id, event_type, topic, payload) \
                     SELECT json_extract(value, '$.command_id'), json_extract(value, '$.entity'), json_extract(value, '$.entity_id'), \
                            json_extract(value, '$.event_type'), json_extract(value, '$.topic'), json_extract(value, '$.payload') \
                     FROM json_each(?1)",
                )
                .bind(serde_json::to_string(&events).unwrap_or_default())
                .execute(&mut *tx)
                .await?;
            }
            for f in &ack.failed {
                let (status, run_at) = match f.retry_in {
                    Some(d) => (
                        CommandStatus::Pending,
                        sqlite_now_plus(&format!("'{}'", sqlite_in(d))),
                    ),
                    None => (CommandStatus::Dlq, "run_at".to_owned()),
                };
                sqlx::query(&format!(
                    "UPDATE command_queue SET status = ?1, run_at = {run_at}, error_type = ?2, error_message = ?3, \
                            locked_by = NULL, locked_until = NULL, updated_at = {SQLITE_NOW} \
                     WHERE id = ?4 AND locked_by = ?5 AND status = '{PROCESSING}'"
                ))
                .bind(status.as_str())
                .bind(f.error_type.as_str())
                .bind(&f.message)
                .bind(f.id)
                .bind(worker)
                .execute(&mut *tx)
                .await?;
            }
            if !lock_ids.is_empty() {
                static RELEASE: LazyLock<String> = LazyLock::new(|| {
                    format!(
                        "UPDATE work_state SET state = 'idle', locked_at = NULL, locked_by = NULL, command_id = NULL, updated_at = {SQLITE_NOW} \
                         WHERE command_id IN (SELECT value FROM json_each(?1)) AND state = 'updating'"
                    )
                });
                sqlx::query(&RELEASE)
                    .bind(json!(lock_ids).to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(accepted)
        }
    }
}

/// Extends the lease of commands still running.
pub async fn heartbeat(db: &Db, worker: &str, ids: &[i64], lease: Duration) -> Result<(), DbError> {
    if ids.is_empty() {
        return Ok(());
    }
    match db {
        Db::Postgres(pool) => {
            // The entity locks are kept fresh too, so a long command is not taken for a dead one.
            sqlx::query(
                "WITH h AS (UPDATE command_queue SET locked_until = NOW() + make_interval(secs => $3) \
                            WHERE id = ANY($1) AND locked_by = $2 RETURNING id) \
                 UPDATE work_state SET locked_at = NOW() WHERE command_id IN (SELECT id FROM h) AND state = 'updating'",
            )
            .bind(ids)
            .bind(worker)
            .bind(secs(lease))
            .execute(pool)
            .await?;
        }
        Db::Sqlite(pool) => {
            static RENEW: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "UPDATE command_queue SET locked_until = {until} \
                         WHERE id IN (SELECT value FROM json_each(?1)) AND locked_by = ?2",
                    until = sqlite_now_plus("?3"),
                )
            });
            sqlx::query(&RENEW)
                .bind(json!(ids).to_string())
                .bind(worker)
                .bind(sqlite_in(lease))
                .execute(pool)
                .await?;
            static TOUCH: LazyLock<String> = LazyLock::new(|| {
                format!(
                        "UPDATE work_state SET locked_at = {SQLITE_NOW} \
                         WHERE command_id IN (SELECT value FROM json_each(?1)) AND state = 'updating'"
                )
            });
            sqlx::query(&TOUCH)
                .bind(json!(ids).to_string())
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// Returns commands whose lease expired (their worker crashed) to the queue; the lost attempt
/// counts, so a command that keeps killing its worker ends in the DLQ after `max_retries`. The
/// dead worker's work-state locks on those commands are released in the same transaction and
/// counted as lock expiries. Returns (commands returned, locks released).
pub async fn rescue(db: &Db, max_retries: u32) -> Result<(u64, u64), DbError> {
    match db {
        Db::Postgres(pool) => {
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
        Db::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            static RESCUE: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "UPDATE command_queue SET status = CASE WHEN attempts > ?1 THEN '{DLQ}' ELSE '{PENDING}' END, \
                            error_type = '{expired}', error_message = 'lease of ' || COALESCE(locked_by, '?') || ' expired', \
                            locked_by = NULL, locked_until = NULL, run_at = {SQLITE_NOW}, updated_at = {SQLITE_NOW} \
                     WHERE status = '{PROCESSING}' AND locked_until < {SQLITE_NOW} RETURNING id",
                    expired = ErrorType::LeaseExpiredException,
                )
            });
            let ids: Vec<i64> = sqlx::query_scalar(&RESCUE)
                .bind(max_retries as i32)
                .fetch_all(&mut *tx)
                .await?;
            let released = if ids.is_empty() {
                0
            } else {
                static RELEASE: LazyLock<String> = LazyLock::new(|| {
                    format!(
                        "UPDATE work_state SET state = 'idle', locked_at = NULL, locked_by = NULL, command_id = NULL, \
                                expiries = expiries + 1, updated_at = {SQLITE_NOW} \
                         WHERE command_id IN (SELECT value FROM json_each(?1)) AND state = 'updating'"
                    )
                });
                sqlx::query(&RELEASE)
                    .bind(json!(ids).to_string())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            };
            tx.commit().await?;
            Ok((ids.len() as u64, released))
        }
    }
}
