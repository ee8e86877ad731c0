//! The command queue's storage operations, one function per transition, each a single statement
//! or one transaction per batch.
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
//!
//! This file holds the types, the decisions that do not depend on the backend (which commands of
//! a claimed batch try for their entity's lock and what each got, how an [`Ack`] splits into
//! completions, retries, DLQ entries, lock releases and outbox events) and the short statements
//! ([`enqueue`], [`defer`], [`heartbeat`]) for both backends side by side. The statements that
//! carry control flow ([`claim_locked`], [`ack`], [`rescue`]) are in `postgres.rs` and `sqlite.rs`.

pub mod parked;
mod postgres;
mod sqlite;

use std::{
    collections::{HashMap, HashSet},
    sync::LazyLock,
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};
use sqlx::Row;

use crate::{
    status::{CommandStatus, ErrorType},
    store::{batch::Writes, Db, DbError, Tx},
    template::{sqlite_now_plus, SQLITE_NOW},
};

// The statuses spliced into the statements. They are literals in the SQL text, not bound values,
// so the planners can use the partial indexes on `status = 'pending'` and `status = 'processing'`;
// each statement's text is built once.
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

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
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

// ---------------------------------------------------------------------------------------------
// Decisions of a claim. PostgreSQL takes them in its one claim statement (`first`, the join with
// `l`, `ORDER BY c.priority DESC, c.id`), SQLite here, between its two statements; both map the
// lock statement's answer to a `Lock` with `lock_of`, and both leave the lock to an older
// exclusive command of the entity, of at least the same priority, pending outside the batch.

/// The order a claimed batch is handled in: highest priority first, then the oldest id.
fn sort_batch(batch: &mut [Claimed]) {
    batch.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
}

/// The commands of a batch (in [`sort_batch`] order) that try for their entity's lock: of each
/// entity, the first whose type is not `shared`. Later commands of that entity will be `Busy`.
fn lock_candidates<'a>(batch: &'a [Claimed], shared: &[String]) -> Vec<&'a Claimed> {
    let mut seen = HashSet::with_capacity(batch.len());
    batch
        .iter()
        .filter(|c| {
            !shared.contains(&c.command_type)
                && seen.insert((c.entity.as_str(), c.entity_id.as_str()))
        })
        .collect()
}

/// A claimed command's lock, from whether its type is shared and the lock statement's answer for
/// it: `Some(takeover)` when it took the lock (over an expired one when `takeover`), `None` when
/// it did not (it was not the candidate of its entity, or a live lock is held by another command).
fn lock_of(shared: bool, held: Option<bool>) -> Lock {
    match (shared, held) {
        (true, _) => Lock::Shared,
        (false, Some(takeover)) => Lock::Held { takeover },
        (false, None) => Lock::Busy,
    }
}

/// Pairs each command of a batch with its lock; `held` maps the ids that took their lock to
/// whether it was a takeover.
fn lock_outcomes(
    batch: Vec<Claimed>,
    shared: &[String],
    held: &HashMap<i64, bool>,
) -> Vec<(Claimed, Lock)> {
    batch
        .into_iter()
        .map(|c| {
            let lock = lock_of(shared.contains(&c.command_type), held.get(&c.id).copied());
            (c, lock)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Decisions of an acknowledgement.

/// What becomes of a failed command.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Disposition {
    /// Back to pending, due `delay` from now (the database's now).
    Retry { delay: Duration },
    /// To the DLQ; `run_at` stays as it was.
    Dlq,
}

impl Disposition {
    fn of(f: &Failure) -> Self {
        match f.retry_in {
            Some(delay) => Disposition::Retry { delay },
            None => Disposition::Dlq,
        }
    }

    /// Back to pending (PostgreSQL binds this as `retry`).
    fn retries(self) -> bool {
        matches!(self, Disposition::Retry { .. })
    }

    fn status(self) -> CommandStatus {
        match self {
            Disposition::Retry { .. } => CommandStatus::Pending,
            Disposition::Dlq => CommandStatus::Dlq,
        }
    }

    /// Seconds from now to the retry's `run_at`; 0 for the DLQ, where it is not used.
    fn delay_secs(self) -> f64 {
        match self {
            Disposition::Retry { delay } => secs(delay),
            Disposition::Dlq => 0.0,
        }
    }
}

/// How PostgreSQL writes an acknowledgement: the common case, completions without events or
/// failures, is one statement with no transaction round trips. SQLite, with one writer in the
/// process, always writes one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckShape {
    /// No completions, events or failures: nothing is written.
    Nothing,
    /// Completions only, no locks held: one `UPDATE`.
    Complete,
    /// Completions only, some holding locks: one statement that completes them and releases the
    /// locks the accepted ones hold.
    CompleteReleasing,
    /// Events or failures: completions, outbox rows, failures and lock releases in one transaction.
    Transaction,
}

/// An [`Ack`] taken apart for writing.
#[derive(Debug)]
struct AckPlan<'a> {
    shape: AckShape,
    /// The commands whose completion is asked for. The database accepts those whose lease is
    /// still this worker's and refuses the others.
    complete: Vec<i64>,
    /// Retries and DLQ entries; see [`Disposition::of`].
    failed: &'a [Failure],
    /// The work-state locks released with the acknowledgement.
    release: &'a [i64],
    events: &'a [Event],
}

impl<'a> AckPlan<'a> {
    fn new(ack: &'a Ack) -> Self {
        let shape = if !ack.events.is_empty() || !ack.failed.is_empty() {
            AckShape::Transaction
        } else if ack.completed.is_empty() {
            AckShape::Nothing
        } else if ack.locked.is_empty() {
            AckShape::Complete
        } else {
            AckShape::CompleteReleasing
        };
        AckPlan {
            shape,
            complete: ack.completed.iter().map(|(id, _, _)| *id).collect(),
            failed: &ack.failed,
            release: &ack.locked,
            events: &ack.events,
        }
    }

    /// The events that go to the outbox: those of accepted completions. A refused completion's
    /// events are dropped with it; the worker whose lease it now is will produce its own.
    fn outbox(&self, accepted: &[i64]) -> Vec<&'a Event> {
        self.events
            .iter()
            .filter(|e| accepted.contains(&e.command_id))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The operations.

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

/// The sequence of the commands' ids, for [`Writes::want`].
pub const COMMAND_IDS: &str = "command_queue_id_seq";

/// Enqueues commands inside `tx` (the transaction that records what they are for), in one
/// statement per batch; their ids, in order. With ids drawn for them ([`COMMAND_IDS`]) the rows
/// go with `writes`; otherwise at once, ids from `RETURNING`.
pub async fn enqueue_all_in(
    tx: &mut Tx,
    writes: &mut Writes,
    commands: &[NewCommand],
) -> Result<Vec<i64>, DbError> {
    use crate::store::batch::{self, Col};
    let rows: Vec<Vec<Json>> = commands
        .iter()
        .map(|c| {
            vec![
                json!(c.entity),
                json!(c.entity_id),
                json!(c.command_type),
                json!(c.priority),
                json!(c.payload.to_string()),
            ]
        })
        .collect();
    let cols = vec![Col::Plain, Col::Plain, Col::Plain, Col::Plain, Col::Json];
    let head =
        "INSERT INTO command_queue (entity, entity_id, command_type, priority, payload) VALUES";
    batch::insert_ids(tx, writes, COMMAND_IDS, head, cols, rows).await
}

/// Claims up to `limit` commands and takes their entities' work-state locks in one go: on
/// PostgreSQL one statement (one round trip, one commit), on SQLite one transaction. Command
/// types in `shared` take no lock. Of several commands of one entity in a batch, only the first
/// (highest priority, then oldest) tries for the lock; the others are `Busy`.
///
/// Per-entity order: a command does not take its entity's lock while an older exclusive command
/// of the entity with at least its priority is pending outside the batch, whether that one is due
/// or waits (a [`defer`] behind the lock, a retry's backoff); it is `Busy`. So a command deferred
/// behind its entity's lock keeps its place: a newer command of the entity cannot overtake it when
/// the deferral moved its `run_at`; only a higher priority goes first, as it does within a batch.
/// The check is one index probe per entity of the batch.
pub async fn claim_locked(
    db: &Db,
    worker: &str,
    limit: u32,
    lease: Duration,
    ttl: Duration,
    shared: &[String],
) -> Result<Vec<(Claimed, Lock)>, DbError> {
    match db {
        Db::Postgres(pool) => postgres::claim_locked(pool, worker, limit, lease, ttl, shared).await,
        Db::Sqlite(pool) => sqlite::claim_locked(pool, worker, limit, lease, ttl, shared).await,
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
                .bind(sqlite::ids(ids))
                .bind(worker)
                .bind(sqlite::later(delay))
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
    let plan = AckPlan::new(ack);
    match db {
        Db::Postgres(pool) => postgres::ack(pool, worker, &plan).await,
        Db::Sqlite(pool) => sqlite::ack(pool, worker, &plan).await,
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
            let ids = sqlite::ids(ids);
            sqlx::query(&RENEW)
                .bind(ids.as_str())
                .bind(worker)
                .bind(sqlite::later(lease))
                .execute(pool)
                .await?;
            static TOUCH: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "UPDATE work_state SET locked_at = {SQLITE_NOW} \
                     WHERE command_id IN (SELECT value FROM json_each(?1)) AND state = 'updating'"
                )
            });
            sqlx::query(&TOUCH).bind(ids.as_str()).execute(pool).await?;
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
        Db::Postgres(pool) => postgres::rescue(pool, max_retries).await,
        Db::Sqlite(pool) => sqlite::rescue(pool, max_retries).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(id: i64, entity_id: &str, command_type: &str, priority: i32) -> Claimed {
        Claimed {
            id,
            entity: "user".into(),
            entity_id: entity_id.into(),
            command_type: command_type.into(),
            priority,
            payload: Json::Null,
            attempts: 1,
            created_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    fn ids<'a>(cs: impl IntoIterator<Item = &'a Claimed>) -> Vec<i64> {
        cs.into_iter().map(|c| c.id).collect()
    }

    #[test]
    fn a_batch_is_handled_by_priority_then_age() {
        let mut batch = vec![
            claimed(3, "a", "t", 0),
            claimed(1, "b", "t", 0),
            claimed(4, "c", "t", 5),
            claimed(2, "d", "t", 5),
        ];
        sort_batch(&mut batch);
        assert_eq!(ids(&batch), vec![2, 4, 1, 3]);
    }

    #[test]
    fn only_the_first_command_of_an_entity_tries_for_its_lock() {
        let mut batch = vec![
            claimed(1, "a", "t", 0),
            claimed(2, "a", "t", 9),
            claimed(3, "b", "t", 0),
            claimed(4, "a", "t", 0),
        ];
        sort_batch(&mut batch);
        // Entity a's highest-priority command (2) goes first; 1 and 4 will wait.
        assert_eq!(ids(lock_candidates(&batch, &[])), vec![2, 3]);
    }

    #[test]
    fn shared_commands_take_no_lock_and_do_not_shadow_their_entity() {
        let shared = ["read".to_owned()];
        let mut batch = vec![
            claimed(1, "a", "read", 9),
            claimed(2, "a", "write", 0),
            claimed(3, "b", "read", 0),
        ];
        sort_batch(&mut batch);
        assert_eq!(ids(lock_candidates(&batch, &shared)), vec![2]);
    }

    #[test]
    fn a_lock_is_shared_held_taken_over_or_busy() {
        assert_eq!(lock_of(true, None), Lock::Shared);
        assert_eq!(lock_of(true, Some(true)), Lock::Shared);
        assert_eq!(lock_of(false, Some(false)), Lock::Held { takeover: false });
        assert_eq!(lock_of(false, Some(true)), Lock::Held { takeover: true });
        assert_eq!(lock_of(false, None), Lock::Busy);
    }

    #[test]
    fn lock_outcomes_pair_each_command_with_its_lock_in_batch_order() {
        let shared = ["read".to_owned()];
        let batch = vec![
            claimed(5, "a", "write", 1),
            claimed(6, "a", "write", 0),
            claimed(7, "b", "write", 0),
            claimed(8, "b", "read", 0),
        ];
        // 5 took a free lock, 7 took over an expired one, 6 came second for entity a.
        let held = HashMap::from([(5, false), (7, true)]);
        let out: Vec<(i64, Lock)> = lock_outcomes(batch, &shared, &held)
            .into_iter()
            .map(|(c, l)| (c.id, l))
            .collect();
        assert_eq!(
            out,
            vec![
                (5, Lock::Held { takeover: false }),
                (6, Lock::Busy),
                (7, Lock::Held { takeover: true }),
                (8, Lock::Shared),
            ]
        );
    }

    fn failure(id: i64, retry_in: Option<Duration>) -> Failure {
        Failure {
            id,
            entity: "user".into(),
            entity_id: id.to_string(),
            error_type: ErrorType::PanicException,
            message: "boom".into(),
            retry_in,
        }
    }

    fn event(command_id: i64, event_type: &str) -> Event {
        Event {
            command_id,
            entity: "user".into(),
            entity_id: command_id.to_string(),
            event_type: event_type.into(),
            topic: "events".into(),
            payload: json!({}),
        }
    }

    fn completed(ids: &[i64]) -> Vec<(i64, String, String)> {
        ids.iter()
            .map(|id| (*id, "user".into(), id.to_string()))
            .collect()
    }

    #[test]
    fn a_failure_is_retried_after_its_delay_or_sent_to_the_dlq() {
        let retry = Disposition::of(&failure(1, Some(Duration::from_millis(1500))));
        assert_eq!(
            retry,
            Disposition::Retry {
                delay: Duration::from_millis(1500)
            }
        );
        assert!(retry.retries());
        assert_eq!(retry.status(), CommandStatus::Pending);
        assert_eq!(retry.delay_secs(), 1.5);
        let dlq = Disposition::of(&failure(2, None));
        assert_eq!(dlq, Disposition::Dlq);
        assert!(!dlq.retries());
        assert_eq!(dlq.status(), CommandStatus::Dlq);
        assert_eq!(dlq.delay_secs(), 0.0);
        // A retry due now is still a retry, not a DLQ entry.
        assert_eq!(
            Disposition::of(&failure(3, Some(Duration::ZERO))).status(),
            CommandStatus::Pending
        );
    }

    #[test]
    fn an_ack_splits_into_completions_retries_dlq_entries_and_releases() {
        let ack = Ack {
            completed: completed(&[10, 11]),
            events: vec![event(10, "done"), event(11, "done"), event(10, "more")],
            failed: vec![failure(12, Some(Duration::from_secs(2))), failure(13, None)],
            locked: vec![10, 12],
        };
        let plan = AckPlan::new(&ack);
        assert_eq!(plan.shape, AckShape::Transaction);
        assert_eq!(plan.complete, vec![10, 11]);
        let failed: Vec<(i64, Disposition)> = plan
            .failed
            .iter()
            .map(|f| (f.id, Disposition::of(f)))
            .collect();
        assert_eq!(
            failed,
            vec![
                (
                    12,
                    Disposition::Retry {
                        delay: Duration::from_secs(2)
                    }
                ),
                (13, Disposition::Dlq),
            ]
        );
        // Every lock the batch holds is released, the failed commands' too.
        assert_eq!(plan.release, &[10, 12]);
    }

    #[test]
    fn only_accepted_completions_write_their_events() {
        let ack = Ack {
            completed: completed(&[10, 11]),
            events: vec![event(10, "a"), event(11, "b"), event(10, "c")],
            ..Ack::default()
        };
        let plan = AckPlan::new(&ack);
        let kept = |accepted: &[i64]| -> Vec<&str> {
            plan.outbox(accepted)
                .iter()
                .map(|e| e.event_type.as_str())
                .collect()
        };
        assert_eq!(kept(&[10, 11]), vec!["a", "b", "c"]);
        // 11's lease was taken over: its completion is refused and its event dropped.
        assert_eq!(kept(&[10]), vec!["a", "c"]);
        assert!(kept(&[]).is_empty());
    }

    #[test]
    fn the_ack_shape_follows_what_the_batch_carries() {
        let shape = |ack: Ack| AckPlan::new(&ack).shape;
        assert_eq!(shape(Ack::default()), AckShape::Nothing);
        assert_eq!(
            shape(Ack {
                completed: completed(&[1]),
                ..Ack::default()
            }),
            AckShape::Complete
        );
        assert_eq!(
            shape(Ack {
                completed: completed(&[1]),
                locked: vec![1],
                ..Ack::default()
            }),
            AckShape::CompleteReleasing
        );
        assert_eq!(
            shape(Ack {
                completed: completed(&[1]),
                events: vec![event(1, "done")],
                ..Ack::default()
            }),
            AckShape::Transaction
        );
        assert_eq!(
            shape(Ack {
                failed: vec![failure(1, None)],
                locked: vec![1],
                ..Ack::default()
            }),
            AckShape::Transaction
        );
        // Locks without completions or failures (the worker never sends this: every locked
        // command either completes or fails) write nothing on PostgreSQL.
        assert_eq!(
            shape(Ack {
                locked: vec![1],
                ..Ack::default()
            }),
            AckShape::Nothing
        );
    }

    #[test]
    fn sqlite_time_modifiers_and_id_lists() {
        assert_eq!(sqlite::later(Duration::from_millis(1500)), "+1.500 seconds");
        assert_eq!(
            sqlite::earlier(Duration::from_secs(300)),
            "-300.000 seconds"
        );
        assert_eq!(sqlite::ids(&[3, 1, 2]), json!([3, 1, 2]).to_string());
        assert_eq!(sqlite::ids(&[]), "[]");
    }

    #[test]
    fn sqlite_timestamps_parse_as_utc_or_fall_back_to_now() {
        let t = sqlite::parse_ts("2024-05-06T07:08:09.123Z");
        assert_eq!(t.to_rfc3339(), "2024-05-06T07:08:09.123+00:00");
        let before = Utc::now();
        assert!(sqlite::parse_ts("not a time") >= before);
    }
}
