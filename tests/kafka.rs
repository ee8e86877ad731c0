//! The outbox against a real Kafka-protocol broker (Tansu, started here so it can be stopped and
//! restarted), and the `kafka` step kind.

use std::{
    collections::BTreeMap,
    process::{Child, Command},
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::Headers,
    producer::{BaseProducer, BaseRecord, Producer},
    ClientConfig, Message, Offset, TopicPartitionList,
};
use serde_json::json;

use crate::util::{assert_run_error, rows, scalar, store, until_scalar, Workdir};

struct Broker {
    child: Child,
    port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    fn start(port: u16) -> Broker {
        let bin = std::env::var("RUNBOOK_TEST_TANSU_BIN")
            .expect("RUNBOOK_TEST_TANSU_BIN is not set: run the suite with scripts/test, which installs the broker");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tansu");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the broker did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every message of `topic` from the beginning, as (key, event-id), in the order read: read until
/// `n` arrived and then for two more quiet seconds, so a duplicate or an extra message is seen too.
fn consume(brokers: &str, topic: &str, n: usize) -> Vec<(String, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", fastrand::u32(..)))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline
        && (out.len() < n || quiet_since.elapsed() < Duration::from_secs(2))
    {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            quiet_since = Instant::now();
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let id = m
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "event-id")
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).parse().unwrap()))
                })
                .expect("every event carries an event-id header");
            out.push((key, id));
        }
    }
    out
}

/// Every event of `user-events` (at least `n` are awaited), read on a blocking thread.
async fn user_events(broker: &Broker, n: usize) -> Vec<(String, i64)> {
    let brokers = broker.addr();
    tokio::task::spawn_blocking(move || consume(&brokers, "user-events", n))
        .await
        .unwrap()
}

/// The events read are exactly the outbox rows `ids`, each once; each is keyed by the entity id of
/// the command that wrote it (`e{seq % 3}`), and per key they arrive in the order the commands were
/// enqueued.
async fn assert_delivered_exactly(
    db: &runbook::store::Db,
    events: &[(String, i64)],
    ids: std::ops::RangeInclusive<i64>,
) {
    let mut got: Vec<i64> = events.iter().map(|(_, id)| *id).collect();
    got.sort();
    assert_eq!(
        got,
        ids.clone().collect::<Vec<i64>>(),
        "each of the events {ids:?} arrived exactly once, and nothing else: {events:?}"
    );
    // What the store says each event is: its entity id and the sequence number of its command.
    let mut expected: BTreeMap<i64, (String, i64)> = BTreeMap::new();
    for r in rows(
        db,
        "SELECT o.id AS id, o.entity_id AS entity_id, c.payload AS payload \
         FROM outbox_final o JOIN command_queue c ON c.id = o.command_id",
    )
    .await
    {
        let payload: serde_json::Value = match &r["payload"] {
            serde_json::Value::String(s) => serde_json::from_str(s).unwrap(),
            v => v.clone(),
        };
        expected.insert(
            r["id"].as_i64().unwrap(),
            (
                r["entity_id"].as_str().unwrap().to_owned(),
                payload["seq"].as_i64().unwrap(),
            ),
        );
    }
    let mut seqs_by_key: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (key, id) in events {
        let (entity_id, seq) = &expected[id];
        assert_eq!(key, entity_id, "event {id} is keyed by its entity id");
        assert_eq!(
            key,
            &format!("e{}", seq % 3),
            "event {id} belongs to the command it came from"
        );
        seqs_by_key.entry(key).or_default().push(*seq);
    }
    for (key, seqs) in seqs_by_key {
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(
            seqs, sorted,
            "events of entity {key} arrived in the order their commands were enqueued"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_delivers_in_order_and_survives_a_broker_outage() {
    let port = free_port();
    let mut broker = Broker::start(port);
    let w = Workdir::new();
    w.config(&format!(
        "kafka: {{ brokers: \"{}\", properties: {{ message.timeout.ms: \"3000\" }} }}\nstreaming:\n  poll_interval: 50ms\n  handlers:\n    user.update: {{ simulate: {{ latency: 1ms }} }}\n",
        broker.addr()
    ));
    let url = w.sqlite_url();
    let enqueue = |from: usize, n: usize| {
        for i in from..from + n {
            let payload = json!({ "seq": i }).to_string();
            w.enqueue(
                &url,
                "user",
                &format!("e{}", i % 3),
                "user.update",
                &payload,
            );
        }
    };
    enqueue(0, 15);
    let _server = w.serve(&[]);
    let db = store(&url).await;
    until_scalar(
        30,
        "the first events to be sent",
        &db,
        "SELECT COUNT(*) FROM outbox_final WHERE sent_at IS NOT NULL",
        |n| n == 15,
    )
    .await;
    let first = user_events(&broker, 15).await;
    assert_delivered_exactly(&db, &first, 1..=15).await;

    // Kafka goes down: commands still complete, their events wait in the outbox.
    broker.stop();
    enqueue(15, 15);
    until_scalar(
        30,
        "the commands to complete while Kafka is down",
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE status = 'completed'",
        |n| n == 30,
    )
    .await;
    until_scalar(
        30,
        "failed sends to be recorded",
        &db,
        "SELECT COUNT(*) FROM outbox_final WHERE last_error IS NOT NULL",
        |n| n > 0,
    )
    .await;
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM outbox_final WHERE sent_at IS NULL"
        )
        .await,
        15,
        "the outbox holds them"
    );

    // The broker comes back (empty: memory storage); every waiting event is delivered, in order.
    let broker = Broker::start(port);
    until_scalar(
        60,
        "the outbox to drain after the broker returned",
        &db,
        "SELECT COUNT(*) FROM outbox_final WHERE sent_at IS NULL",
        |n| n == 0,
    )
    .await;
    let second = user_events(&broker, 15).await;
    assert_delivered_exactly(&db, &second, 16..=30).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_step_lists_describes_and_reports_consumer_lag() {
    let broker = Broker::start(free_port());
    let brokers = broker.addr();
    // Produce one message a batch (the broker's high watermark is exact then) to partition 0.
    let b2 = brokers.clone();
    tokio::task::spawn_blocking(move || {
        produce_one_at_a_time(&b2, "lag-test", (0..10).map(|i| format!("m{i}")));
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b2)
            .set("group.id", "core-platform-events")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("lag-test", 0, Offset::Offset(4))
            .unwrap();
        consumer
            .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
            .unwrap();
    })
    .await
    .unwrap();
    let w = Workdir::new();
    w.config(&format!("kafka: {{ brokers: \"{brokers}\" }}\n"));
    w.playbook(
        "kafka",
        r#"name: kafka
steps:
  - id: topics
    kafka: { op: list_topics }
  - id: describe
    kafka: { op: describe_topic, topic: lag-test }
  - id: lag
    kafka: { op: consumer_lag, group: core-platform-events }
"#,
    );
    let out = tokio::task::spawn_blocking(move || w.run(&["run", "kafka", "-o", "json"]))
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    let steps = &out.run()["steps"];
    assert!(
        steps["topics"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["topic"] == "lag-test"),
        "{steps}"
    );
    let p0 = steps["describe"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["partition"] == 0)
        .unwrap()
        .clone();
    assert_eq!(p0["high"], 10);
    assert!(p0["leader"].is_i64() && p0["replicas"].is_array(), "{p0}");
    let lag = steps["lag"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["topic"] == "lag-test" && r["partition"] == 0)
        .unwrap()
        .clone();
    assert_eq!(lag["committed"], 4);
    assert_eq!(lag["lag"], 6);
    assert_eq!(steps["lag"]["output"]["total_lag"], 6, "{steps}");

    // A group that never committed an offset has an unknown lag, not a lag of 0.
    let w = Workdir::new();
    w.config(&format!("kafka: {{ brokers: \"{brokers}\" }}\n"));
    w.playbook(
        "fresh",
        "name: fresh\nsteps:\n  - id: lag\n    kafka: { op: consumer_lag, group: never-committed }\n",
    );
    let out = tokio::task::spawn_blocking(move || w.run(&["run", "fresh", "-o", "json"]))
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    let step = &out.run()["steps"]["lag"];
    assert!(step["output"]["total_lag"].is_null(), "{step}");
    let partitions = step["output"]["partitions"].as_u64().unwrap();
    assert!(partitions >= 1, "{step}");
    assert_eq!(
        step["output"]["partitions_without_offsets"], partitions,
        "{step}"
    );
    let p0 = step["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["topic"] == "lag-test" && r["partition"] == 0)
        .unwrap();
    assert!(p0["lag"].is_null() && p0["committed"].is_null(), "{p0}");
    assert_eq!(p0["high_watermark"], 10, "{p0}");

    // Kafka down is a clear, retryable step error.
    drop(broker);
    let w = Workdir::new();
    w.config(&format!("kafka: {{ brokers: \"{brokers}\" }}\n"));
    w.playbook(
        "down",
        "name: down\nsteps:\n  - id: topics\n    timeout: 5s\n    kafka: { op: list_topics }\n",
    );
    let out = tokio::task::spawn_blocking(move || w.run(&["run", "down", "-o", "json"]))
        .await
        .unwrap();
    assert_eq!(out.code, 1, "{out:?}");
    assert_run_error(&out.run(), "kafka metadata");
}

/// Issue 10: the seed's console consumer as `kafka: { op: tail }`: the last N messages of a topic,
/// read without a group, payloads masked like DLQ payloads.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_tail_reads_the_last_messages_masked_and_commits_nothing() {
    let broker = Broker::start(free_port());
    let brokers = broker.addr();
    let b2 = brokers.clone();
    tokio::task::spawn_blocking(move || {
        let payloads = (0..15).map(|i| {
            if i == 14 {
                "plain text, not JSON".to_owned()
            } else {
                json!({ "n": i, "email": format!("user{i}@example.com") }).to_string()
            }
        });
        produce_one_at_a_time(&b2, "user-events", payloads);
    })
    .await
    .unwrap();
    let w = Workdir::new();
    w.config(&format!(
        "kafka: {{ brokers: \"{brokers}\" }}\nstreaming:\n  sensitive_fields: [email]\n"
    ));
    w.playbook(
        "tail",
        "name: tail\nsteps:\n  - id: last\n    kafka: { op: tail, topic: user-events, count: 5 }\n  - id: missing\n    continue_on_error: true\n    kafka: { op: tail, topic: no-such-topic }\n",
    );
    let out = tokio::task::spawn_blocking(move || w.run(&["run", "tail", "-o", "json"]))
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.run();
    let last = &run["steps"]["last"];
    let rows = last["rows"].as_array().unwrap();
    let offsets: Vec<i64> = rows.iter().map(|r| r["offset"].as_i64().unwrap()).collect();
    assert_eq!(offsets, [10, 11, 12, 13, 14], "{last}");
    assert_eq!(rows[0]["payload"]["n"], 10, "{last}");
    assert_eq!(rows[0]["payload"]["email"], "****", "{last}");
    assert_eq!(rows[4]["payload"], "plain text, not JSON", "{last}");
    assert_eq!(last["output"]["complete"], true, "{last}");
    assert!(
        !run.to_string().contains("@example.com"),
        "an address reached the run record: {run}"
    );
    assert!(
        run["steps"]["missing"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("topic no-such-topic does not exist"),
        "{run:#}"
    );
    // Nothing was committed for the group the reader used.
    let b3 = brokers.clone();
    let committed = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b3)
            .set("group.id", "runbook-tail")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("user-events", 0);
        c.committed_offsets(tpl, Duration::from_secs(10))
            .unwrap()
            .elements()[0]
            .offset()
    })
    .await
    .unwrap();
    assert!(!matches!(committed, Offset::Offset(_)), "{committed:?}");
}

/// Issue 10: producer throughput for the partition advisor, measured on a scratch topic the op
/// creates and deletes; a topic that exists is refused.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_produce_test_measures_throughput_on_a_scratch_topic_it_deletes() {
    let broker = Broker::start(free_port());
    let brokers = broker.addr();
    let w = Workdir::new();
    w.config(&format!("kafka: {{ brokers: \"{brokers}\" }}\n"));
    w.playbook(
        "throughput",
        "name: throughput\nsteps:\n  - id: measure\n    kafka: { op: produce_test, topic: runbook-scratch-1, messages: 2000, size: 200, partitions: 2 }\n  - id: topics\n    kafka: { op: list_topics }\n",
    );
    let out = tokio::task::spawn_blocking(move || w.run(&["run", "throughput", "-o", "json"]))
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.run();
    let m = &run["steps"]["measure"]["output"];
    assert_eq!(m["delivered"], 2000, "{m}");
    assert_eq!(m["failed"], 0, "{m}");
    assert!(m["messages_per_s"].as_f64().unwrap() > 0.0, "{m}");
    let (mps, bps) = (
        m["messages_per_s"].as_f64().unwrap(),
        m["bytes_per_s"].as_f64().unwrap(),
    );
    // Both rounded from the same rate: at most one message's bytes apart.
    assert!((bps - mps * 200.0).abs() <= 200.0, "{m}");
    assert_eq!(m["deleted"], true, "{m}");
    let listed = run["steps"]["topics"]["rows"].as_array().unwrap();
    assert!(
        !listed.iter().any(|t| t["topic"] == "runbook-scratch-1"),
        "the scratch topic is still there: {listed:?}"
    );
    println!(
        "produce_test into the test broker: {} messages/s ({} bytes each)",
        m["messages_per_s"], m["size"]
    );

    // A topic with data is never written to.
    let b2 = brokers.clone();
    tokio::task::spawn_blocking(move || {
        produce_one_at_a_time(&b2, "orders", ["real".to_owned()]);
    })
    .await
    .unwrap();
    let w = Workdir::new();
    w.config(&format!("kafka: {{ brokers: \"{brokers}\" }}\n"));
    w.playbook(
        "refuse",
        "name: refuse\nsteps:\n  - id: measure\n    kafka: { op: produce_test, topic: orders, messages: 10 }\n",
    );
    let out = tokio::task::spawn_blocking(move || w.run(&["run", "refuse", "-o", "json"]))
        .await
        .unwrap();
    assert_eq!(out.code, 1, "{out:?}");
    assert_run_error(
        &out.run(),
        "topic orders exists: produce_test writes only to a scratch topic",
    );
}

/// Produces each payload to partition 0 of `topic` with key `k`, one message a batch and flushed
/// before the next (the broker's high watermark is exact then). Blocking: call it from
/// `spawn_blocking`.
fn produce_one_at_a_time(brokers: &str, topic: &str, payloads: impl IntoIterator<Item = String>) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    for payload in payloads {
        producer
            .send(
                BaseRecord::to(topic)
                    .partition(0)
                    .key("k")
                    .payload(&payload),
            )
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
    }
}
