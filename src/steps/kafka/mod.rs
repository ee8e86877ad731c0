//! `kafka`: the seed's Kafka admin checks: list topics, describe a topic (partitions, leaders,
//! replicas), topic configs, and consumer-group lag per partition (committed offset against the
//! high watermark); the seed's console consumer (`tail`: the last messages of a topic, masked,
//! in `tail.rs`); and the producer throughput the partition advisor asks for (`produce_test`, on
//! a scratch topic it creates and deletes, in `throughput.rs`). librdkafka's calls block, so they
//! run on the blocking pool.

mod tail;
mod throughput;

use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, ResourceSpecifier},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    Offset, TopicPartitionList,
};
use serde::Serialize;
use serde_json::{json, Value as Json};

use super::{CompileError, Flavour, Kind, StepCx, StepError, StepOutput};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// list_topics, describe_topic, topic_configs, consumer_lag, tail, produce_test
    pub op: String,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// `tail`: how many of the topic's last messages (default 10, at most 1000).
    #[serde(default)]
    pub count: Option<u32>,
    /// `produce_test`: how many messages to produce (default 10000, at most 1000000).
    #[serde(default)]
    pub messages: Option<u32>,
    /// `produce_test`: bytes of each message (default 100, at most 1048576).
    #[serde(default)]
    pub size: Option<u32>,
    /// `produce_test`: partitions of the scratch topic (default 1, at most 100).
    #[serde(default)]
    pub partitions: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaOp {
    ListTopics,
    DescribeTopic,
    TopicConfigs,
    ConsumerLag,
    Tail,
    ProduceTest,
}

#[derive(Debug)]
pub struct KafkaStep {
    pub op: KafkaOp,
    pub topic: Option<String>,
    pub group: Option<String>,
    pub count: u32,
    pub messages: u32,
    pub size: u32,
    pub partitions: u32,
}

/// The ops `runbook validate` names.
const KNOWN: &str = "list_topics, describe_topic, topic_configs, consumer_lag, tail, produce_test";

impl Kind for KafkaStep {
    type Raw = RawKafka;
    type Input = Input;

    fn compile(r: RawKafka) -> Result<Self, CompileError> {
        let op = match r.op.as_str() {
            "list_topics" => KafkaOp::ListTopics,
            "describe_topic" => KafkaOp::DescribeTopic,
            "topic_configs" => KafkaOp::TopicConfigs,
            "consumer_lag" => KafkaOp::ConsumerLag,
            "tail" => KafkaOp::Tail,
            "produce_test" => KafkaOp::ProduceTest,
            "log_dirs" => {
                return Err((
                    ".kafka.op".into(),
                    "`log_dirs` is not available: librdkafka has no DescribeLogDirs call; use a shell step with kafka-log-dirs.sh".into(),
                ))
            }
            other => {
                return Err((
                    ".kafka.op".into(),
                    format!("unknown kafka op `{other}` (known: {KNOWN})"),
                ))
            }
        };
        if matches!(op, KafkaOp::DescribeTopic) && r.topic.is_none() {
            return Err((".kafka".into(), "describe_topic needs `topic`".into()));
        }
        if matches!(op, KafkaOp::ConsumerLag) && r.group.is_none() {
            return Err((".kafka".into(), "consumer_lag needs `group`".into()));
        }
        if matches!(op, KafkaOp::Tail) && r.topic.is_none() {
            return Err((".kafka".into(), "tail needs `topic`".into()));
        }
        let only = |key: &str, ops: &[KafkaOp], set: bool| -> Result<(), CompileError> {
            if set && !ops.contains(&op) {
                return Err((
                    format!(".kafka.{key}"),
                    format!(
                        "`{key}` is an argument of {}, not of `{}`",
                        match key {
                            "count" => "`tail`",
                            _ => "`produce_test`",
                        },
                        r.op
                    ),
                ));
            }
            Ok(())
        };
        only("count", &[KafkaOp::Tail], r.count.is_some())?;
        for (key, set) in [
            ("messages", r.messages.is_some()),
            ("size", r.size.is_some()),
            ("partitions", r.partitions.is_some()),
        ] {
            only(key, &[KafkaOp::ProduceTest], set)?;
        }
        let within = |key: &str, v: Option<u32>, default: u32, max: u32| match v {
            None => Ok(default),
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(n) => Err((
                format!(".kafka.{key}"),
                format!("{key} {n} is out of range (1 to {max})"),
            )),
        };
        Ok(KafkaStep {
            op,
            topic: r.topic,
            group: r.group,
            count: within("count", r.count, 10, tail::MAX_COUNT)?,
            messages: within("messages", r.messages, 10_000, throughput::MAX_MESSAGES)?,
            size: within("size", r.size, 100, throughput::MAX_SIZE)?,
            partitions: within("partitions", r.partitions, 1, 100)?,
        })
    }

    /// The admin checks and `tail` read; `produce_test` writes (a scratch topic and its messages).
    fn is_read(&self) -> bool {
        match self.op {
            KafkaOp::ListTopics
            | KafkaOp::DescribeTopic
            | KafkaOp::TopicConfigs
            | KafkaOp::ConsumerLag
            | KafkaOp::Tail => true,
            KafkaOp::ProduceTest => false,
        }
    }

    fn templates(&self) -> Vec<(String, &str, Flavour)> {
        let mut v = Vec::new();
        if let Some(t) = &self.topic {
            v.push(("kafka.topic".into(), t.as_str(), Flavour::Text));
        }
        if let Some(g) = &self.group {
            v.push(("kafka.group".into(), g.as_str(), Flavour::Text));
        }
        v
    }

    fn render(&self, cx: &StepCx<'_>) -> Result<Input, StepError> {
        let r = |s: &Option<String>| {
            s.as_ref()
                .map(|s| cx.services.templates.render(s, cx.ctx))
                .transpose()
                .map_err(StepError::template)
        };
        let topic = match (self.op, r(&self.topic)?) {
            // A name no topic has yet: the op creates it and refuses one that exists.
            (KafkaOp::ProduceTest, None) => Some(format!("runbook-throughput-{}", cx.run.id)),
            (_, t) => t,
        };
        let n = |v: u32, ops: &[KafkaOp]| ops.contains(&self.op).then_some(v);
        Ok(Input {
            op: self.op,
            topic,
            group: r(&self.group)?,
            count: n(self.count, &[KafkaOp::Tail]),
            messages: n(self.messages, &[KafkaOp::ProduceTest]),
            size: n(self.size, &[KafkaOp::ProduceTest]),
            partitions: n(self.partitions, &[KafkaOp::ProduceTest]),
        })
    }

    async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
        execute(i, cx).await
    }
}

#[derive(Debug, Serialize)]
pub struct Input {
    pub op: KafkaOp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
}

fn kerr(what: &str, e: impl std::fmt::Display) -> StepError {
    StepError::retryable(format!(
        "kafka {what}: {e} (brokers from the config's `kafka.brokers`)"
    ))
}

pub async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
    let Some(kc) = &cx.services.config.kafka else {
        return Err(StepError::fatal(
            "no Kafka configured: set `kafka.brokers` in the config",
        ));
    };
    let mut config = crate::kafka::client_config(kc, &cx.services.masker)
        .map_err(|e| StepError::fatal(crate::text::error_chain(&e)))?;
    // Shorter than the step's own deadline, so an unreachable broker reports its error.
    let timeout = cx.timeout.mul_f64(0.8).min(Duration::from_secs(30));
    match i.op {
        KafkaOp::Tail => {
            let masker = cx.services.masker.clone();
            return tokio::task::spawn_blocking(move || tail::run(&i, config, timeout, &masker))
                .await
                .map_err(|e| StepError::fatal(e.to_string()))?;
        }
        KafkaOp::ProduceTest => {
            // The producing itself may take most of the step's time; admin calls keep `timeout`.
            let budget = cx.timeout.mul_f64(0.9);
            return throughput::run(&i, config, timeout, budget).await;
        }
        _ => {}
    }
    if i.op == KafkaOp::TopicConfigs {
        let admin: AdminClient<DefaultClientContext> =
            config.create().map_err(|e| kerr("client", e))?;
        let topics: Vec<String> = match &i.topic {
            Some(t) => vec![t.clone()],
            None => tokio::task::spawn_blocking({
                let config = config.clone();
                move || -> Result<Vec<String>, StepError> {
                    let c: BaseConsumer = config.create().map_err(|e| kerr("client", e))?;
                    let md = c
                        .fetch_metadata(None, timeout)
                        .map_err(|e| kerr("metadata", e))?;
                    Ok(md
                        .topics()
                        .iter()
                        .map(|t| t.name().to_owned())
                        .filter(|n| !n.starts_with("__"))
                        .collect())
                }
            })
            .await
            .map_err(|e| StepError::fatal(e.to_string()))??,
        };
        let specs: Vec<ResourceSpecifier> =
            topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
        let opts = AdminOptions::new().request_timeout(Some(timeout));
        let results = admin
            .describe_configs(&specs, &opts)
            .await
            .map_err(|e| kerr("describe configs", e))?;
        let mut rows = Vec::new();
        for (topic, res) in topics.iter().zip(results) {
            let res = res.map_err(|e| kerr(&format!("configs of {topic}"), e))?;
            for entry in res.entries {
                rows.push(json!({ "topic": topic, "name": entry.name, "value": entry.value, "default": entry.is_default, "sensitive": entry.is_sensitive }));
            }
        }
        return Ok(StepOutput {
            output: json!({ "topics": topics.len(), "entries": rows.len() }),
            rows,
        });
    }
    if let Some(g) = &i.group {
        config.set("group.id", g).set("enable.auto.commit", "false");
    }
    tokio::task::spawn_blocking(move || blocking(i, config, timeout))
        .await
        .map_err(|e| StepError::fatal(e.to_string()))?
}

fn blocking(
    i: Input,
    config: rdkafka::ClientConfig,
    timeout: Duration,
) -> Result<StepOutput, StepError> {
    let consumer: BaseConsumer = config.create().map_err(|e| kerr("client", e))?;
    let md = consumer
        .fetch_metadata(i.topic.as_deref(), timeout)
        .map_err(|e| kerr("metadata", e))?;
    match i.op {
        KafkaOp::ListTopics => {
            let rows: Vec<Json> = md
                .topics()
                .iter()
                .map(|t| json!({ "topic": t.name(), "partitions": t.partitions().len(), "error": t.error().map(|e| format!("{e:?}")) }))
                .collect();
            let brokers: Vec<Json> = md
                .brokers()
                .iter()
                .map(|b| json!({ "id": b.id(), "host": b.host(), "port": b.port() }))
                .collect();
            Ok(StepOutput {
                output: json!({ "brokers": brokers, "topics": rows.len() }),
                rows,
            })
        }
        KafkaOp::DescribeTopic => {
            let topic = md
                .topics()
                .first()
                .ok_or_else(|| StepError::fatal("the broker returned no such topic"))?;
            if let Some(e) = topic.error() {
                return Err(StepError::fatal(format!("topic {}: {e:?}", topic.name())));
            }
            let rows: Vec<Json> = topic
                .partitions()
                .iter()
                .map(|p| {
                    let (low, high) = consumer.fetch_watermarks(topic.name(), p.id(), timeout).unwrap_or((-1, -1));
                    json!({ "partition": p.id(), "leader": p.leader(), "replicas": p.replicas(), "isr": p.isr(), "low": low, "high": high })
                })
                .collect();
            Ok(StepOutput {
                output: json!({ "topic": topic.name(), "partitions": rows.len() }),
                rows,
            })
        }
        KafkaOp::ConsumerLag => {
            let group = i.group.clone().unwrap_or_default();
            let mut tpl = TopicPartitionList::new();
            for t in md.topics().iter().filter(|t| !t.name().starts_with("__")) {
                for p in t.partitions() {
                    tpl.add_partition(t.name(), p.id());
                }
            }
            let committed = consumer
                .committed_offsets(tpl, timeout)
                .map_err(|e| kerr("committed offsets", e))?;
            // A partition the group never committed an offset for has no lag to report: it is
            // shown as unknown (null), never as 0, and so is the total when no partition has one.
            let mut rows = Vec::new();
            let mut total: Option<i64> = None;
            let mut without_offsets = 0usize;
            for e in committed.elements() {
                let (_, high) = consumer
                    .fetch_watermarks(e.topic(), e.partition(), timeout)
                    .map_err(|x| kerr("watermarks", x))?;
                let (committed, lag) = match e.offset() {
                    Offset::Offset(c) => {
                        let lag = (high - c).max(0);
                        total = Some(total.unwrap_or(0) + lag);
                        (Json::from(c), Json::from(lag))
                    }
                    _ => {
                        without_offsets += 1;
                        (Json::Null, Json::Null)
                    }
                };
                rows.push(json!({ "topic": e.topic(), "partition": e.partition(), "committed": committed, "high_watermark": high, "lag": lag }));
            }
            Ok(StepOutput {
                output: json!({
                    "group": group,
                    "total_lag": total,
                    "partitions": rows.len(),
                    "partitions_without_offsets": without_offsets,
                }),
                rows,
            })
        }
        KafkaOp::TopicConfigs | KafkaOp::Tail | KafkaOp::ProduceTest => Err(StepError::fatal(
            format!("kafka op {:?} runs elsewhere", i.op),
        )),
    }
}
