//! `kafka: { op: tail, topic, count }`: the seed's console consumer (`kafka-console-consumer.sh
//! --from-beginning`) made safe for on-call: the last `count` messages of a topic, read without a
//! consumer group (nothing is committed, no group rebalances), their payloads masked like DLQ
//! payloads (`streaming.sensitive_fields` inside JSON, secrets anywhere).

use std::time::{Duration, Instant};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    ClientConfig, Message, Offset, TopicPartitionList,
};
use serde_json::{json, Value as Json};

use super::{kerr, Input};
use crate::{
    secrets::Masker,
    steps::{StepError, StepOutput},
};

/// The most messages one `tail` returns.
pub const MAX_COUNT: u32 = 1000;
/// Characters of a payload that is not JSON kept in a row.
const MAX_TEXT: usize = 2000;

/// Reads the last `i.count` messages of `i.topic`, newest last.
pub fn run(
    i: &Input,
    mut config: ClientConfig,
    timeout: Duration,
    masker: &Masker,
) -> Result<StepOutput, StepError> {
    let topic = i.topic.clone().unwrap_or_default();
    let count = i64::from(i.count.unwrap_or(10));
    // Assigned partitions, no group: nothing is committed and no group is joined.
    config
        .set("group.id", "runbook-tail")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("allow.auto.create.topics", "false");
    let consumer: BaseConsumer = config.create().map_err(|e| kerr("client", e))?;
    let md = consumer
        .fetch_metadata(Some(&topic), timeout)
        .map_err(|e| kerr("metadata", e))?;
    let t = md
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| StepError::fatal(format!("topic {topic} does not exist")))?;
    // Per partition: from `count` before the high watermark (or the first kept offset).
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(&topic, p.id(), timeout)
            .map_err(|e| kerr("watermarks", e))?;
        let start = (high - count).max(low);
        if high > start {
            tpl.add_partition_offset(&topic, p.id(), Offset::Offset(start))
                .map_err(|e| kerr("assign", e))?;
            ends.push((p.id(), high));
        }
    }
    let mut rows: Vec<(i64, i32, i64, Json)> = Vec::new();
    let mut complete = true;
    if !ends.is_empty() {
        consumer.assign(&tpl).map_err(|e| kerr("assign", e))?;
        let deadline = Instant::now() + timeout;
        let mut next: Vec<(i32, i64, i64)> =
            ends.iter().map(|(p, high)| (*p, i64::MIN, *high)).collect();
        while next.iter().any(|(_, seen, high)| *seen < high - 1) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                complete = false;
                break;
            }
            let Some(m) = consumer.poll(left.min(Duration::from_millis(200))) else {
                continue;
            };
            let m = m.map_err(|e| kerr("poll", e))?;
            if let Some(n) = next.iter_mut().find(|(p, _, _)| *p == m.partition()) {
                n.1 = n.1.max(m.offset());
            }
            let ts = m.timestamp().to_millis().unwrap_or(0);
            rows.push((ts, m.partition(), m.offset(), row(&m, masker)));
        }
    }
    // Newest last; only the last `count` over all partitions.
    rows.sort_by_key(|(ts, p, o, _)| (*ts, *p, *o));
    let skip = rows.len().saturating_sub(count as usize);
    let rows: Vec<Json> = rows.into_iter().skip(skip).map(|(.., r)| r).collect();
    Ok(StepOutput {
        output: json!({
            "topic": topic,
            "messages": rows.len(),
            "partitions": t.partitions().len(),
            // False when the messages up to the high watermark did not all arrive in time.
            "complete": complete,
        }),
        rows,
    })
}

/// One message as a row: a JSON payload masked field by field, any other payload as text
/// (secrets masked, cut at [`MAX_TEXT`] characters).
fn row(m: &rdkafka::message::BorrowedMessage<'_>, masker: &Masker) -> Json {
    let payload = match m.payload() {
        None => Json::Null,
        Some(bytes) => match serde_json::from_slice::<Json>(bytes) {
            Ok(v) => masker.mask_json(&v),
            Err(_) => {
                let text: String = String::from_utf8_lossy(bytes)
                    .chars()
                    .take(MAX_TEXT)
                    .collect();
                Json::String(masker.mask_str(&text))
            }
        },
    };
    let key = m
        .key()
        .map(|k| Json::String(masker.mask_str(&String::from_utf8_lossy(k))))
        .unwrap_or(Json::Null);
    let timestamp = m
        .timestamp()
        .to_millis()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| Json::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Json::Null);
    json!({
        "partition": m.partition(),
        "offset": m.offset(),
        "timestamp": timestamp,
        "key": key,
        "payload": payload,
    })
}
