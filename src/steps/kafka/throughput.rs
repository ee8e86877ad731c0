//! `kafka: { op: produce_test, messages, size, partitions }`: the producer throughput the seed's
//! partition advisor needs ("measure producer throughput"), measured on a scratch topic the op
//! creates (it refuses a topic that exists, so it never writes into real data) and deletes after.
//! It writes to the cluster, so playbooks put it behind an approval.

use std::time::{Duration, Instant};

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    producer::{FutureProducer, FutureRecord, Producer},
    ClientConfig,
};
use serde_json::json;

use super::{kerr, Input};
use crate::steps::{StepError, StepOutput};

/// The most messages one run produces.
pub const MAX_MESSAGES: u32 = 1_000_000;
/// The largest message, in bytes.
pub const MAX_SIZE: u32 = 1024 * 1024;

/// Creates the scratch topic, produces to it (every message enqueued, then the acknowledgements
/// awaited: librdkafka batches them), deletes the topic, and reports messages/s.
pub async fn run(
    i: &Input,
    config: ClientConfig,
    timeout: Duration,
    budget: Duration,
) -> Result<StepOutput, StepError> {
    let topic = i.topic.clone().unwrap_or_default();
    let (messages, size) = (i.messages.unwrap_or(10_000), i.size.unwrap_or(100));
    let partitions = i.partitions.unwrap_or(1);
    let exists = tokio::task::spawn_blocking({
        let (config, topic) = (config.clone(), topic.clone());
        move || -> Result<bool, StepError> {
            let mut config = config;
            config.set("allow.auto.create.topics", "false");
            let c: BaseConsumer = config.create().map_err(|e| kerr("client", e))?;
            let md = c
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| kerr("metadata", e))?;
            Ok(md
                .topics()
                .first()
                .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty()))
        }
    })
    .await
    .map_err(|e| StepError::fatal(e.to_string()))??;
    if exists {
        return Err(StepError::fatal(format!(
            "topic {topic} exists: produce_test writes only to a scratch topic it creates (and deletes); name a new one or leave `topic` out"
        )));
    }
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(|e| kerr("client", e))?;
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let new = NewTopic::new(&topic, partitions as i32, TopicReplication::Fixed(1));
    for r in admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| kerr("create topic", e))?
    {
        r.map_err(|(t, e)| kerr(&format!("create topic {t}"), e))?;
    }
    let measured = produce(&topic, messages, size, config, budget).await;
    // The scratch topic goes whatever happened; a failure to delete it is said, not hidden.
    let deleted = match admin.delete_topics(&[&topic], &opts).await {
        Ok(results) => match results.into_iter().find_map(Result::err) {
            None => Ok(()),
            Some((t, e)) => Err(format!("delete topic {t}: {e}")),
        },
        Err(e) => Err(format!("delete topic {topic}: {e}")),
    };
    let m = measured?;
    let secs = m.elapsed.as_secs_f64().max(1e-6);
    let rate = m.delivered as f64 / secs;
    Ok(StepOutput::value(json!({
        "topic": topic,
        "partitions": partitions,
        "messages": messages,
        "size": size,
        "delivered": m.delivered,
        "failed": m.failed,
        "first_error": m.first_error,
        "stopped_early": m.stopped_early,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "messages_per_s": rate.round(),
        "bytes_per_s": (rate * f64::from(size)).round(),
        "deleted": deleted.is_ok(),
        "delete_error": deleted.err(),
    })))
}

struct Measured {
    delivered: u64,
    failed: u64,
    first_error: Option<String>,
    stopped_early: bool,
    elapsed: Duration,
}

async fn produce(
    topic: &str,
    messages: u32,
    size: u32,
    config: ClientConfig,
    budget: Duration,
) -> Result<Measured, StepError> {
    let producer: FutureProducer = config.create().map_err(|e| kerr("producer", e))?;
    let payload = vec![b'x'; size as usize];
    let started = Instant::now();
    let mut pending = Vec::with_capacity(messages as usize);
    let mut out = Measured {
        delivered: 0,
        failed: 0,
        first_error: None,
        stopped_early: false,
        elapsed: Duration::ZERO,
    };
    let note = |out: &mut Measured, e: String| {
        out.failed += 1;
        out.first_error.get_or_insert(e);
    };
    let mut i = 0u32;
    while i < messages {
        if started.elapsed() > budget {
            out.stopped_early = true;
            break;
        }
        let key = i.to_string();
        match producer.send_result(FutureRecord::to(topic).key(&key).payload(&payload)) {
            Ok(delivery) => {
                pending.push(delivery);
                i += 1;
            }
            // The local queue is full: wait for what is in flight, then go on.
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                _,
            )) => {
                for d in pending.drain(..) {
                    match d.await {
                        Ok(Ok(_)) => out.delivered += 1,
                        Ok(Err((e, _))) => note(&mut out, e.to_string()),
                        Err(_) => note(&mut out, "the producer dropped the message".into()),
                    }
                }
            }
            Err((e, _)) => {
                note(&mut out, e.to_string());
                i += 1;
            }
        }
    }
    for d in pending {
        match d.await {
            Ok(Ok(_)) => out.delivered += 1,
            Ok(Err((e, _))) => note(&mut out, e.to_string()),
            Err(_) => note(&mut out, "the producer dropped the message".into()),
        }
    }
    let _ = producer.flush(Duration::from_secs(5));
    out.elapsed = started.elapsed();
    Ok(out)
}
