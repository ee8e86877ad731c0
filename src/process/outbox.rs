//! The outbox dispatcher: publishes `outbox_final` rows to Kafka (topic per entity, key =
//! entity_id, an `event-id` header) and marks them sent only after the broker acknowledged them.
//! When Kafka is down the rows stay unsent and are retried with backoff; nothing is lost.
//!
//! Order per entity: one dispatcher is active at a time (a PostgreSQL advisory lock elects it
//! among replicas), rows are sent in id order, every row of an entity goes to one partition by its
//! key, and the producer is idempotent, so the broker keeps them in order across its own retries.
//! With no brokers configured a log sink stands in.

use std::{sync::Arc, time::Duration};

use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use serde_json::{json, Value as Json};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::handlers::backoff;
use crate::{
    config::KafkaConfig,
    metrics::Metrics,
    secrets::Masker,
    store::{Db, DbError},
};

/// Rows fetched per round.
const BATCH: i64 = 1000;
/// Advisory lock key electing the one active dispatcher among replicas.
const DISPATCHER_LOCK: i64 = 7_256_110_316;

pub enum Sink {
    Log,
    /// The producer is rebuilt after a failed round: once messages time out, an idempotent
    /// producer's sequence state no longer matches the broker's (a restarted broker forgets it),
    /// and only a new producer id gets through.
    Kafka {
        config: rdkafka::ClientConfig,
        producer: Option<FutureProducer>,
    },
}

impl Sink {
    /// Kafka when the config names brokers, the log sink otherwise.
    pub fn from_config(kafka: Option<&KafkaConfig>, masker: &Masker) -> Result<Sink, String> {
        let Some(k) = kafka else {
            return Ok(Sink::Log);
        };
        let mut c =
            crate::kafka::client_config(k, masker).map_err(|e| crate::text::error_chain(&e))?;
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
        let producer = c.create().map_err(|e| format!("kafka producer: {e}"))?;
        Ok(Sink::Kafka {
            config: c,
            producer: Some(producer),
        })
    }
}

struct Row_ {
    id: i64,
    entity_id: String,
    event_type: String,
    topic: String,
    payload: String,
    attempts: i32,
}

async fn fetch(db: &Db, after: i64) -> Result<Vec<Row_>, DbError> {
    Ok(match db {
        Db::Postgres(pool) => sqlx::query(
            "SELECT id, entity_id, event_type, topic, payload::text, attempts FROM outbox_final \
             WHERE sent_at IS NULL AND id > $2 ORDER BY id LIMIT $1",
        )
        .bind(BATCH)
        .bind(after)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Row_ {
            id: r.get(0),
            entity_id: r.get(1),
            event_type: r.get(2),
            topic: r.get(3),
            payload: r.get(4),
            attempts: r.get(5),
        })
        .collect(),
        Db::Sqlite(pool) => sqlx::query(
            "SELECT id, entity_id, event_type, topic, payload, attempts FROM outbox_final \
             WHERE sent_at IS NULL AND id > ?2 ORDER BY id LIMIT ?1",
        )
        .bind(BATCH)
        .bind(after)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Row_ {
            id: r.get(0),
            entity_id: r.get(1),
            event_type: r.get(2),
            topic: r.get(3),
            payload: r.get(4),
            attempts: r.get(5),
        })
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

async fn mark_failed(db: &Db, id: i64, attempts: i32, error: &str) -> Result<(), DbError> {
    let delay = backoff(attempts + 1, 30_000).as_secs_f64();
    let next = match db.dialect() {
        crate::template::Dialect::Postgres => format!("NOW() + make_interval(secs => {delay})"),
        crate::template::Dialect::Sqlite => {
            crate::template::sqlite_now_plus(&format!("'+{delay:.3} seconds'"))
        }
    };
    db.sql(
        &format!("UPDATE outbox_final SET attempts = attempts + 1, last_error = $2, next_attempt_at = {next} WHERE id = $1"),
        vec![json!(id), json!(error)],
    )
    .await?;
    Ok(())
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub sent: usize,
    pub failed: usize,
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
) -> Result<Round, DbError> {
    if progress.rescanned.elapsed() >= Duration::from_secs(1) {
        progress.settle().await?;
        progress.cursor = 0;
        progress.rescanned = std::time::Instant::now();
    }
    let mut rows = fetch(db, progress.cursor).await?;
    if rows.is_empty() && progress.cursor > 0 {
        progress.settle().await?;
        progress.cursor = 0;
        rows = fetch(db, 0).await?;
    }
    if rows.is_empty() {
        progress.settle().await?;
        return Ok(Round::default());
    }
    let mut failed_rows = 0;
    let mut sent = Vec::with_capacity(rows.len());
    match sink {
        Sink::Log => {
            for r in &rows {
                tracing::info!(topic = %r.topic, key = %r.entity_id, event_id = r.id, event_type = %r.event_type, "Outbox event (log sink).");
                sent.push(r.id);
            }
        }
        Sink::Kafka {
            config,
            producer: slot,
        } => {
            if slot.is_none() {
                match config.create() {
                    Ok(p) => *slot = Some(p),
                    Err(e) => {
                        tracing::warn!(error = %e, "Creating the Kafka producer failed; retrying.");
                        return Ok(Round {
                            sent: 0,
                            failed: rows.len(),
                        });
                    }
                }
            }
            let producer = slot.as_ref().expect("created above");
            let mut failed = false;
            // Enqueue everything first, then await the acknowledgements: one linger for the batch.
            let mut pending = Vec::with_capacity(rows.len());
            for r in &rows {
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
                let record = FutureRecord::to(&r.topic)
                    .key(&r.entity_id)
                    .payload(&r.payload)
                    .headers(headers);
                match producer.send_result(record) {
                    Ok(delivery) => pending.push((r, Some(delivery), None)),
                    Err((e, _)) => pending.push((r, None, Some(e.to_string()))),
                }
            }
            for (r, delivery, error) in pending {
                let outcome = match (delivery, error) {
                    (Some(d), _) => match d.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(e.to_string()),
                        Err(_) => Err("the producer dropped the message".to_owned()),
                    },
                    (None, e) => Err(e.unwrap_or_default()),
                };
                match outcome {
                    Ok(()) => sent.push(r.id),
                    Err(e) => {
                        tracing::warn!(event_id = r.id, topic = %r.topic, error = %e, "Outbox event not delivered; will retry.");
                        mark_failed(db, r.id, r.attempts, &e).await?;
                        failed = true;
                        failed_rows += 1;
                    }
                }
            }
            if failed {
                *slot = None;
            }
        }
    }
    // One marking in flight: the previous round's must be done before this one's starts.
    progress.settle().await?;
    let count = sent.len();
    if failed_rows == 0 {
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
        failed: failed_rows,
    })
}

/// Runs the dispatcher until `shutdown`.
pub async fn run(
    db: Db,
    metrics: Arc<Metrics>,
    poll: Duration,
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
        match dispatch_once(&db, &metrics, &mut sink, &mut progress).await {
            Ok(Round { sent: 0, failed: 0 }) => wait(&shutdown, poll).await,
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
