//! The outbox dispatcher: publishes `outbox_final` rows to Kafka (topic per entity, key =
//! entity_id, an `event-id` header) and marks them sent only after the broker acknowledged them.
//! When Kafka is down the rows stay unsent and are retried with backoff; nothing is lost.
//!
//! Order per entity: one dispatcher is active at a time (a PostgreSQL advisory lock elects it
//! among replicas), rows are sent in id order, every row of an entity goes to one partition by its
//! key, and the producer is idempotent, so the broker keeps them in order across its own retries.
//! With no brokers configured a log sink stands in.
//!
//! A row the broker keeps refusing (a message over its size limit) is parked after
//! `streaming.outbox_max_attempts` tries, keeping its `attempts` and `last_error`: it is no longer
//! sent, and the newer rows of its entity wait behind it, so one bad row stops only its own
//! entity. An operator retries or drops it ([`crate::stream::queue::parked`]).

use std::{collections::HashSet, sync::Arc, time::Duration};

use rdkafka::{
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{DeliveryFuture, FutureProducer, FutureRecord},
    ClientConfig,
};
use serde_json::{json, Value as Json};
use tokio_util::sync::CancellationToken;

use super::handlers::backoff;
use crate::{
    config::KafkaConfig,
    kafka::SecretPropertyError,
    metrics::Metrics,
    secrets::Masker,
    store::{Db, DbError},
};

/// Rows fetched per round.
const BATCH: i64 = 1000;
/// Advisory lock key electing the one active dispatcher among replicas.
const DISPATCHER_LOCK: i64 = 7_256_110_316;

/// Why the Kafka sink cannot be built from the config.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Secret(#[from] SecretPropertyError),
    #[error("kafka producer")]
    Producer(#[source] KafkaError),
}

pub enum Sink {
    Log,
    /// The producer is rebuilt after a failed round: once messages time out, an idempotent
    /// producer's sequence state no longer matches the broker's (a restarted broker forgets it),
    /// and only a new producer id gets through.
    Kafka {
        config: ClientConfig,
        producer: Option<FutureProducer>,
    },
}

impl Sink {
    /// Kafka when the config names brokers, the log sink otherwise.
    ///
    /// # Errors
    ///
    /// A secret property cannot be read, or the producer cannot be created from the properties.
    pub fn from_config(kafka: Option<&KafkaConfig>, masker: &Masker) -> Result<Sink, SinkError> {
        let Some(k) = kafka else {
            return Ok(Sink::Log);
        };
        let mut c = crate::kafka::client_config(k, masker)?;
        // Defaults the config may override: durable, ordered, and failing within seconds when the
        // broker is gone, so rows are retried by the dispatcher rather than held in memory.
        for (key, value) in [
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("message.timeout.ms", "15000"),
            ("linger.ms", "5"),
            ("compression.type", "none"),
        ] {
            if !k.properties.contains_key(key) {
                c.set(key, value);
            }
        }
        let producer = c.create().map_err(SinkError::Producer)?;
        Ok(Sink::Kafka {
            config: c,
            producer: Some(producer),
        })
    }
}

struct Row_ {
    id: i64,
    entity: String,
    entity_id: String,
    event_type: String,
    topic: String,
    payload: String,
    attempts: i32,
}

impl Row_ {
    /// The columns `fetch` selects, in its order; one mapping for both backends.
    fn from_row<R: sqlx::Row>(r: &R) -> Row_
    where
        usize: sqlx::ColumnIndex<R>,
        i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        i32: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Row_ {
            id: r.get(0),
            entity_id: r.get(1),
            event_type: r.get(2),
            topic: r.get(3),
            payload: r.get(4),
            attempts: r.get(5),
            entity: r.get(6),
        }
    }
}

/// Unsent rows after `after`, in id order: neither parked nor behind a parked row of their entity.
async fn fetch(db: &Db, after: i64) -> Result<Vec<Row_>, DbError> {
    Ok(match db {
        Db::Postgres(pool) => sqlx::query(
            "SELECT id, entity_id, event_type, topic, payload::text, attempts, entity FROM outbox_final f \
             WHERE sent_at IS NULL AND parked_at IS NULL AND id > $2 \
               AND NOT EXISTS (SELECT 1 FROM outbox_final p WHERE p.parked_at IS NOT NULL AND p.sent_at IS NULL \
                                 AND p.entity = f.entity AND p.entity_id = f.entity_id AND p.id < f.id) \
             ORDER BY id LIMIT $1",
        )
        .bind(BATCH)
        .bind(after)
        .fetch_all(pool)
        .await?
        .iter()
        .map(Row_::from_row)
        .collect(),
        Db::Sqlite(pool) => sqlx::query(
            "SELECT id, entity_id, event_type, topic, payload, attempts, entity FROM outbox_final f \
             WHERE sent_at IS NULL AND parked_at IS NULL AND id > ?2 \
               AND NOT EXISTS (SELECT 1 FROM outbox_final p WHERE p.parked_at IS NOT NULL AND p.sent_at IS NULL \
                                 AND p.entity = f.entity AND p.entity_id = f.entity_id AND p.id < f.id) \
             ORDER BY id LIMIT ?1",
        )
        .bind(BATCH)
        .bind(after)
        .fetch_all(pool)
        .await?
        .iter()
        .map(Row_::from_row)
        .collect(),
    })
}

async fn mark_sent(db: &Db, ids: &[i64]) -> Result<(), DbError> {
    if ids.is_empty() {
        return Ok(());
    }
    let now = db.dialect().now();
    let filter = match db {
        Db::Postgres(_) => "id IN (SELECT jsonb_array_elements_text($1::jsonb)::int8)",
        Db::Sqlite(_) => "id IN (SELECT value FROM json_each($1))",
    };
    db.sql(
        &format!("UPDATE outbox_final SET sent_at = {now}, attempts = attempts + 1, last_error = NULL WHERE {filter}"),
        vec![Json::String(json!(ids).to_string())],
    )
    .await?;
    Ok(())
}

/// Records a refused send; parks the row when this was its `max_attempts`th try. Returns whether
/// it was parked.
async fn mark_failed(
    db: &Db,
    id: i64,
    attempts: i32,
    error: &str,
    max_attempts: u32,
) -> Result<bool, DbError> {
    let park = i64::from(attempts) + 1 >= i64::from(max_attempts.max(1));
    let parked_at = if park { db.dialect().now() } else { "NULL" };
    let delay = backoff(attempts + 1, 30_000).as_secs_f64();
    let next = match db.dialect() {
        crate::template::Dialect::Postgres => format!("NOW() + make_interval(secs => {delay})"),
        crate::template::Dialect::Sqlite => {
            crate::template::sqlite_now_plus(&format!("'+{delay:.3} seconds'"))
        }
    };
    db.sql(
        &format!("UPDATE outbox_final SET attempts = attempts + 1, last_error = $2, next_attempt_at = {next}, parked_at = {parked_at} WHERE id = $1"),
        vec![json!(id), json!(error)],
    )
    .await?;
    Ok(park)
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub sent: usize,
    /// Rows refused that will be tried again.
    pub failed: usize,
    /// Rows refused for the last time allowed, now parked.
    pub parked: usize,
}

/// Where the dispatcher is: rows up to `cursor` have been handed to the sink, and marking the
/// last round sent may still be under way while the next round is fetched and published.
pub struct Progress {
    cursor: i64,
    marking: Option<tokio::task::JoinHandle<Result<(), DbError>>>,
    rescanned: std::time::Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            cursor: 0,
            marking: None,
            rescanned: std::time::Instant::now(),
        }
    }
}

impl Progress {
    async fn settle(&mut self) -> Result<(), DbError> {
        match self.marking.take() {
            Some(h) => h.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

/// Publishes one round of unsent rows in id order. A failed row is retried in a later round, not
/// skipped: after a failure the next round starts again from the oldest unsent row, so an
/// entity's events never overtake each other; the backoff is the dispatcher's, between rounds.
/// The cursor also goes back to the start every second and whenever it runs dry, which picks up
/// rows that committed after rows with higher ids.
pub async fn dispatch_once(
    db: &Db,
    metrics: &Arc<Metrics>,
    sink: &mut Sink,
    progress: &mut Progress,
    max_attempts: u32,
) -> Result<Round, DbError> {
    let rows = next_rows(db, progress).await?;
    if rows.is_empty() {
        progress.settle().await?;
        return Ok(Round::default());
    }
    let (sent, failed, parked) = match sink {
        Sink::Log => (log_rows(&rows), 0, 0),
        Sink::Kafka {
            config,
            producer: slot,
        } => {
            let Some(producer) = producer(config, slot) else {
                return Ok(Round {
                    sent: 0,
                    failed: rows.len(),
                    parked: 0,
                });
            };
            let out = publish(db, producer, &rows, max_attempts).await?;
            if out.failed + out.parked > 0 {
                *slot = None;
            }
            (out.sent, out.failed, out.parked)
        }
    };
    let mut round = finish_round(db, metrics, progress, &rows, sent, failed).await?;
    round.parked = parked;
    Ok(round)
}

/// The rows after the cursor; from the start once a second, and when the cursor runs dry.
async fn next_rows(db: &Db, progress: &mut Progress) -> Result<Vec<Row_>, DbError> {
    if progress.rescanned.elapsed() >= Duration::from_secs(1) {
        progress.settle().await?;
        progress.cursor = 0;
        progress.rescanned = std::time::Instant::now();
    }
    let rows = fetch(db, progress.cursor).await?;
    if rows.is_empty() && progress.cursor > 0 {
        progress.settle().await?;
        progress.cursor = 0;
        return fetch(db, 0).await;
    }
    Ok(rows)
}

/// The log sink: every row is "sent" by logging it.
fn log_rows(rows: &[Row_]) -> Vec<i64> {
    rows.iter()
        .map(|r| {
            tracing::info!(topic = %r.topic, key = %r.entity_id, event_id = r.id, event_type = %r.event_type, "Outbox event (log sink).");
            r.id
        })
        .collect()
}

/// The Kafka producer, created again if a failed round dropped it; `None` if that fails.
fn producer<'p>(
    config: &ClientConfig,
    slot: &'p mut Option<FutureProducer>,
) -> Option<&'p FutureProducer> {
    if slot.is_none() {
        match config.create() {
            Ok(p) => *slot = Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "Creating the Kafka producer failed; retrying.");
                return None;
            }
        }
    }
    slot.as_ref()
}

/// What [`publish`] made of a round's rows.
struct Published {
    /// The ids the broker acknowledged.
    sent: Vec<i64>,
    /// Rows refused, marked failed, to be retried in a later round.
    failed: usize,
    /// Rows refused for the last time allowed, now parked.
    parked: usize,
}

/// Sends `rows` and waits for the broker. A row the producer refuses at once (a message over
/// the size limit) holds back the later rows of its entity in this round: they are not sent,
/// and come again in a later round behind it.
async fn publish(
    db: &Db,
    producer: &FutureProducer,
    rows: &[Row_],
    max_attempts: u32,
) -> Result<Published, DbError> {
    // Enqueue everything first, then await the acknowledgements: one linger for the batch.
    let mut refused: HashSet<(&str, &str)> = HashSet::new();
    let mut pending: Vec<(&Row_, Result<DeliveryFuture, String>)> = Vec::with_capacity(rows.len());
    for r in rows {
        let entity = (r.entity.as_str(), r.entity_id.as_str());
        if refused.contains(&entity) {
            continue;
        }
        let delivery = producer
            .send_result(record(r))
            .map_err(|(e, _)| e.to_string());
        if delivery.is_err() {
            refused.insert(entity);
        }
        pending.push((r, delivery));
    }
    let mut out = Published {
        sent: Vec::with_capacity(rows.len()),
        failed: 0,
        parked: 0,
    };
    for (r, delivery) in pending {
        let outcome = match delivery {
            Ok(d) => delivered(d).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => out.sent.push(r.id),
            Err(e) => {
                if mark_failed(db, r.id, r.attempts, &e, max_attempts).await? {
                    tracing::error!(event_id = r.id, topic = %r.topic, entity = %r.entity, entity_id = %r.entity_id, attempts = r.attempts + 1, error = %e,
                        "Outbox event parked: the broker refused it outbox_max_attempts times. Its entity's newer events wait behind it; retry or drop it with `runbook outbox`.");
                    out.parked += 1;
                } else {
                    tracing::warn!(event_id = r.id, topic = %r.topic, error = %e, "Outbox event not delivered; will retry.");
                    out.failed += 1;
                }
            }
        }
    }
    Ok(out)
}

/// A row as a Kafka record: keyed by its entity, with `event-id` and `event-type` headers.
fn record(r: &Row_) -> FutureRecord<'_, String, String> {
    let event_id = r.id.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "event-id",
            value: Some(&event_id),
        })
        .insert(Header {
            key: "event-type",
            value: Some(&r.event_type),
        });
    FutureRecord::to(&r.topic)
        .key(&r.entity_id)
        .payload(&r.payload)
        .headers(headers)
}

/// Whether the broker acknowledged a record, and why not.
async fn delivered(delivery: DeliveryFuture) -> Result<(), String> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e.to_string()),
        Err(_) => Err("the producer dropped the message".to_owned()),
    }
}

/// Marks the round's `sent` rows. After a clean round the marking runs in the background while
/// the next round is fetched and the cursor moves past the round; after a failure the rows are
/// marked before returning and the cursor goes back to the start.
async fn finish_round(
    db: &Db,
    metrics: &Arc<Metrics>,
    progress: &mut Progress,
    rows: &[Row_],
    sent: Vec<i64>,
    failed: usize,
) -> Result<Round, DbError> {
    // One marking in flight: the previous round's must be done before this one's starts.
    progress.settle().await?;
    let count = sent.len();
    if failed == 0 {
        progress.cursor = rows.last().map(|r| r.id).unwrap_or(progress.cursor);
        let (db, metrics) = (db.clone(), metrics.clone());
        progress.marking = Some(tokio::spawn(async move {
            mark_sent(&db, &sent).await?;
            metrics.outbox_sent.inc_by(sent.len() as u64);
            Ok(())
        }));
    } else {
        mark_sent(db, &sent).await?;
        metrics.outbox_sent.inc_by(count as u64);
        progress.cursor = 0;
    }
    Ok(Round {
        sent: count,
        failed,
        parked: 0,
    })
}

/// Runs the dispatcher until `shutdown`; a row refused `max_attempts` times is parked.
pub async fn run(
    db: Db,
    metrics: Arc<Metrics>,
    poll: Duration,
    max_attempts: u32,
    mut sink: Sink,
    shutdown: CancellationToken,
) {
    // On PostgreSQL only the replica holding the advisory lock dispatches.
    let mut leader: Option<sqlx::pool::PoolConnection<sqlx::Postgres>> = None;
    let mut failed_rounds = 0;
    let mut progress = Progress::default();
    while !shutdown.is_cancelled() {
        if let Db::Postgres(pool) = &db {
            if leader.is_none() {
                if let Ok(mut conn) = pool.acquire().await {
                    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                        .bind(DISPATCHER_LOCK)
                        .fetch_one(&mut *conn)
                        .await
                        .unwrap_or(false);
                    if got {
                        tracing::info!("This process dispatches the outbox.");
                        leader = Some(conn);
                    }
                }
                if leader.is_none() {
                    wait(&shutdown, Duration::from_secs(2)).await;
                    continue;
                }
            }
        }
        match dispatch_once(&db, &metrics, &mut sink, &mut progress, max_attempts).await {
            Ok(Round {
                sent: 0,
                failed: 0,
                parked: 0,
            }) => wait(&shutdown, poll).await,
            // A round whose only refusals were parked goes on at once: the rows left flow.
            Ok(Round { failed: 0, .. }) => failed_rounds = 0,
            Ok(Round { failed, .. }) => {
                failed_rounds += 1;
                let pause = backoff(failed_rounds, 30_000);
                tracing::warn!(
                    failed,
                    pause_ms = pause.as_millis() as u64,
                    "Outbox round had undelivered events; pausing."
                );
                wait(&shutdown, pause).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Outbox dispatch failed; retrying.");
                progress = Progress::default();
                // Close the session rather than return it to the pool: the advisory lock goes with
                // it, so another replica (or this one, later) can take over dispatching.
                if let Some(conn) = leader.take() {
                    use sqlx::Connection;
                    let _ = conn.detach().close().await;
                }
                wait(&shutdown, Duration::from_secs(1)).await;
            }
        }
    }
    // Events handed to the broker are marked sent before the process exits.
    if let Err(e) = progress.settle().await {
        tracing::warn!(error = %e, "Marking the last outbox round sent failed; those events will be sent again.");
    }
}

async fn wait(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.cancelled() => {}
    }
}
