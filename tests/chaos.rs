//! Chaos: `runbook serve` on PostgreSQL (its own database, reached through a TCP proxy this test
//! owns) and a Kafka broker (Tansu, started here so it can be stopped), under a steady load of
//! queued commands and posted alerts, while its database connections are terminated, the store
//! is unreachable for seconds, the broker stops and comes back empty, and the process is
//! SIGKILLed and restarted. Afterwards every command has completed exactly once, every event
//! reached the broker in per-entity order with none missing, and no run is left open.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::Headers,
    ClientConfig, Message, Offset, TopicPartitionList,
};
use runbook::{
    store::Db,
    stream::queue::{enqueue, NewCommand},
};
use serde_json::json;

use crate::util::{eventually, free_port, pg_server, rows, scalar, until_scalar, PgDb, Workdir};

const TOKEN: &str = "chaos-receiver-token-0123456789";
/// The test's own connections, which terminating the server's connections spares.
const OWN_APP: &str = "runbook-chaos-test";
const ENTITIES: usize = 8;

/// A TCP proxy between the server and PostgreSQL that can stop forwarding (closing every
/// connection it carries and refusing new ones) and resume.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
        let up2 = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let (upstream, mut cut_rx) = (upstream.clone(), cut_rx.clone());
                // Only a cut after this connection was accepted ends it.
                cut_rx.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Proxy { port, up, cut }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn resume(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A Tansu broker with in-memory storage: it keeps nothing across a restart.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start(port: u16) -> Broker {
        let bin = std::env::var("RUNBOOK_TEST_TANSU_BIN").expect(
            "RUNBOOK_TEST_TANSU_BIN is not set: run the suite with scripts/test, which installs the broker",
        );
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads `topic` from the beginning, continuously, on a thread of its own. Each broker lifetime
/// is a session of its own (the restarted broker starts empty): `renew` starts a new consumer
/// and a new session.
/// What one consumer read: (key, event id) in the order received.
type Session = Vec<(String, i64)>;

struct Reader {
    sessions: Arc<Mutex<Vec<Session>>>,
    generation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(brokers: String, topic: String) -> Reader {
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let generation = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, g, st) = (sessions.clone(), generation.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let mine = g.load(Ordering::SeqCst);
                s.lock().unwrap().push(Vec::new());
                let Some(consumer) = assign(&brokers, &topic, &st, &g, mine) else {
                    continue;
                };
                while !st.load(Ordering::SeqCst) && g.load(Ordering::SeqCst) == mine {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                        let id = m
                            .headers()
                            .and_then(|h| {
                                h.iter().find(|h| h.key == "event-id").and_then(|h| {
                                    h.value
                                        .and_then(|v| String::from_utf8_lossy(v).parse().ok())
                                })
                            })
                            .expect("every event carries an event-id header");
                        s.lock().unwrap().last_mut().unwrap().push((key, id));
                    }
                }
            }
        });
        Reader {
            sessions,
            generation,
            stop,
            thread: Some(thread),
        }
    }

    fn renew(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Distinct event ids read in the current session.
    fn current(&self) -> BTreeSet<i64> {
        let sessions = self.sessions.lock().unwrap();
        sessions
            .last()
            .map(|s| s.iter().map(|(_, id)| *id).collect())
            .unwrap_or_default()
    }

    fn sessions(&self) -> Vec<Session> {
        self.sessions.lock().unwrap().clone()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A consumer assigned to every partition of `topic` from the beginning, once the topic exists.
fn assign(
    brokers: &str,
    topic: &str,
    stop: &AtomicBool,
    generation: &AtomicU64,
    mine: u64,
) -> Option<BaseConsumer> {
    while !stop.load(Ordering::SeqCst) && generation.load(Ordering::SeqCst) == mine {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("chaos-{}", fastrand::u32(..)))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .ok()?;
        let partitions: Vec<i32> = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(2))
            .ok()
            .and_then(|md| {
                md.topics()
                    .first()
                    .filter(|t| t.error().is_none())
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            })
            .unwrap_or_default();
        if partitions.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).ok()?;
        }
        consumer.assign(&tpl).ok()?;
        return Some(consumer);
    }
    None
}

fn notification(i: u64) -> serde_json::Value {
    json!({
        "version": "4", "receiver": "runbook", "status": "firing",
        "groupKey": format!("{{}}:{{alertname=\"ChaosAlert\", n=\"{i}\"}}"),
        "truncatedAlerts": 0, "externalURL": "http://alertmanager:9093",
        "groupLabels": { "alertname": "ChaosAlert" },
        "commonLabels": { "alertname": "ChaosAlert", "n": i.to_string() },
        "commonAnnotations": {},
        "alerts": [{
            "status": "firing",
            "labels": { "alertname": "ChaosAlert", "n": i.to_string() },
            "annotations": {},
            "startsAt": "2026-11-29T03:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph",
        }]
    })
}

/// The load: commands enqueued (straight into the store, as another service would) and alerts
/// posted (each sent again until answered 2xx, as Alertmanager does), until `stop`; `paused`
/// holds the commands back.
struct Load {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(db: Db, base: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let commands = {
            let (stop, paused) = (stop.clone(), paused.clone());
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if paused.load(Ordering::SeqCst) {
                        continue;
                    }
                    let batch: Vec<NewCommand> = (n..n + 4)
                        .map(|i| NewCommand {
                            entity: "chaos".into(),
                            entity_id: format!("e{}", i % ENTITIES),
                            command_type: "chaos.touch".into(),
                            priority: 0,
                            payload: json!({ "n": i }),
                        })
                        .collect();
                    // A failed enqueue (our own connection may be cut too) is tried again.
                    if enqueue(&db, &batch).await.is_ok() {
                        n += 4;
                    }
                }
            })
        };
        let alerts = {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let url = format!("{base}/api/webhooks/alertmanager");
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    let ok = client
                        .post(&url)
                        .bearer_auth(TOKEN)
                        .timeout(Duration::from_secs(10))
                        .json(&notification(i))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if ok {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        i += 1;
                    }
                }
            })
        };
        Load {
            stop,
            paused,
            accepted,
            tasks: vec![commands, alerts],
        }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn completed(db: &Db) -> i64 {
    scalar(
        db,
        "SELECT COUNT(*) FROM command_queue WHERE command_type = 'chaos.touch' AND status = 'completed'",
    )
    .await
}

/// Waits until `more` further commands have completed: the server is making progress again.
async fn progress(db: &Db, what: &str, more: i64) {
    let from = completed(db).await;
    let what = format!("{more} more commands to complete {what}");
    eventually(30, &what, || async move {
        (completed(db).await >= from + more).then_some(())
    })
    .await;
}

/// Waits until every command has completed; otherwise fails naming where the others stand.
async fn settled(db: &Db, server: &crate::util::Server, when: &str) {
    drained(
        db,
        server,
        &format!("commands not completed {when}"),
        "SELECT COUNT(*) FROM command_queue WHERE status <> 'completed' AND command_type = 'chaos.touch'",
        "SELECT status, error_type, error_message, COUNT(*) AS n FROM command_queue \
         WHERE status <> 'completed' AND command_type = 'chaos.touch' GROUP BY 1, 2, 3",
    )
    .await;
}

/// Waits until every run has ended; otherwise fails with the runs still open and their commands.
async fn runs_ended(db: &Db, server: &crate::util::Server) {
    drained(
        db,
        server,
        "runs not ended",
        "SELECT COUNT(*) FROM runbook_runs WHERE status IN ('queued', 'running')",
        "SELECT r.id, r.status, r.command_id, c.status AS command_status, c.attempts, \
         c.error_message, CAST(r.created_at AS TEXT) AS created_at \
         FROM runbook_runs r LEFT JOIN command_queue c ON c.id = r.command_id \
         WHERE r.status IN ('queued', 'running') ORDER BY r.id LIMIT 20",
    )
    .await;
}

/// Waits up to 45 s for `count` to reach 0; otherwise fails with `what`, the rows of `detail` and
/// the server's log.
async fn drained(db: &Db, server: &crate::util::Server, what: &str, count: &str, detail: &str) {
    let deadline = Instant::now() + Duration::from_secs(45);
    while scalar(db, count).await > 0 {
        if Instant::now() > deadline {
            let left = rows(db, detail).await;
            panic!("{what}: {left:?}\n{}", server.log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Terminates every connection of the server to its database (ours are spared).
async fn terminate_server_connections(admin: &Db, database: &str) -> i64 {
    let r = admin
        .sql(
            "SELECT COUNT(*) AS n FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid() AND application_name <> $2) t",
            vec![json!(database), json!(OWN_APP)],
        )
        .await
        .unwrap();
    r.rows[0]["n"].as_i64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_keeps_its_promises_through_store_broker_and_process_failures() {
    let pg = PgDb::new().await;
    let database = pg.url.rsplit_once('/').unwrap().1.to_owned();
    let own_url = format!("{}?application_name={OWN_APP}", pg.url);
    let db = Db::connect(&own_url, false, 4).await.unwrap();
    db.migrate().await.unwrap();
    db.sql(
        "CREATE TABLE chaos_handled (command_id BIGINT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT NOW())",
        vec![],
    )
    .await
    .unwrap();
    let admin = Db::connect(
        &format!("{}?application_name={OWN_APP}", pg_server()),
        false,
        1,
    )
    .await
    .unwrap();

    let upstream = pg_server()
        .rsplit_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(hostport, _)| hostport.to_owned())
        .expect("RUNBOOK_TEST_PG is postgres://user@host:port/db");
    let proxy = Proxy::start(upstream).await;
    let store_url = format!("postgres://postgres@127.0.0.1:{}/{database}", proxy.port);

    let broker_port = free_port();
    let mut broker = Broker::start(broker_port);
    let brokers = format!("127.0.0.1:{}", broker.port);

    let w = Workdir::new();
    w.config(&format!(
        "auth:\n  receiver: {{ token: {TOKEN} }}\n\
         kafka: {{ brokers: \"{brokers}\", properties: {{ message.timeout.ms: \"3000\" }} }}\n\
         streaming:\n  poll_interval: 50ms\n  lease: 2s\n  run_lease: 2s\n  maxRetries: 1000\n  maxBackoffMs: 500\n  lockTtl: 3s\n  handlers:\n    \
         chaos.touch: {{ sql: {{ query: \"INSERT INTO chaos_handled (command_id) VALUES ({{{{ command.id }}}})\" }} }}\n"
    ));
    w.playbook(
        "chaos",
        "name: chaos\non:\n  alerts:\n    - alertname: ChaosAlert\nguard: { concurrency: 1000000 }\nsteps:\n  - id: look\n    sql: SELECT COUNT(*) AS n FROM command_queue\n  - id: pause\n    wait: 300ms\n",
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = w.serve_at(&["--store", store_url.as_str()], &listen);
    let base = server.base.clone();

    let load = Load::start(db.clone(), base.clone());
    progress(&db, "under load", 40).await;
    let topic = rows(
        &db,
        "SELECT DISTINCT topic FROM outbox_final WHERE entity = 'chaos'",
    )
    .await;
    let topic = topic[0]["topic"].as_str().unwrap().to_owned();
    let reader = Reader::start(brokers.clone(), topic.clone());

    // 1. Its database connections are terminated, three times over.
    for _ in 0..3 {
        terminate_server_connections(&admin, &database).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    progress(&db, "after its connections were terminated", 40).await;

    // 2. The store is unreachable for four seconds.
    proxy.down();
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.resume();
    progress(&db, "after the store came back", 40).await;

    // 3. The broker stops and comes back empty. Before it stops, the load pauses until every
    // event was sent and read, so that what the first broker acknowledged is all on record here
    // (a memory broker loses the rest); commands are enqueued again while it is down.
    load.paused.store(true, Ordering::SeqCst);
    settled(&db, &server, "before the broker stops").await;
    until_scalar(
        30,
        "the outbox to drain before the broker stops",
        &db,
        "SELECT COUNT(*) FROM outbox_final WHERE sent_at IS NULL",
        |n| n == 0,
    )
    .await;
    let sent: BTreeSet<i64> = rows(
        &db,
        &format!("SELECT id FROM outbox_final WHERE topic = '{topic}'"),
    )
    .await
    .iter()
    .map(|r| r["id"].as_i64().unwrap())
    .collect();
    let reader_ref = &reader;
    let sent_ref = &sent;
    eventually(30, "the reader to have every sent event", || async move {
        sent_ref.is_subset(&reader_ref.current()).then_some(())
    })
    .await;
    broker.stop();
    load.paused.store(false, Ordering::SeqCst);
    progress(&db, "while the broker is down", 40).await;
    let _broker = Broker::start(broker_port);
    reader.renew();

    // 4. The process is SIGKILLed and started again.
    server.kill_hard();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = w.serve_at(&["--store", store_url.as_str()], &listen);
    progress(&db, "after a restart", 40).await;

    // The load ends; everything settles.
    let accepted = load.finish().await;
    settled(&db, &server, "after the load").await;
    runs_ended(&db, &server).await;
    until_scalar(
        45,
        "the outbox to drain",
        &db,
        "SELECT COUNT(*) FROM outbox_final WHERE sent_at IS NULL",
        |n| n == 0,
    )
    .await;

    // Every command completed exactly once: one completion event each, whatever the number of
    // times its handler ran.
    let commands = scalar(
        &db,
        "SELECT COUNT(*) FROM command_queue WHERE command_type = 'chaos.touch'",
    )
    .await;
    assert!(commands > 200, "the load ran: {commands} commands");
    let wrong = rows(
        &db,
        "SELECT c.id, COUNT(o.id) AS events FROM command_queue c LEFT JOIN outbox_final o ON o.command_id = c.id \
         WHERE c.command_type = 'chaos.touch' GROUP BY c.id HAVING COUNT(o.id) <> 1 ORDER BY c.id LIMIT 10",
    )
    .await;
    assert!(
        wrong.is_empty(),
        "commands without exactly one completion: {wrong:?}\n{}",
        server.log()
    );
    let unhandled = scalar(
        &db,
        "SELECT COUNT(*) FROM command_queue c WHERE c.command_type = 'chaos.touch' \
         AND NOT EXISTS (SELECT 1 FROM chaos_handled h WHERE h.command_id = c.id)",
    )
    .await;
    assert_eq!(unhandled, 0, "a completed command whose handler never ran");

    // No run is left open, and the alerts' runs are on record.
    let runs = rows(
        &db,
        "SELECT status, COUNT(*) AS n FROM runbook_runs GROUP BY status ORDER BY status",
    )
    .await;
    let by_status: BTreeMap<String, i64> = runs
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap().to_owned(),
                r["n"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(
        !by_status.contains_key("running") && !by_status.contains_key("queued"),
        "{by_status:?}"
    );
    assert!(
        by_status.get("succeeded").copied().unwrap_or(0) > 0,
        "{by_status:?}"
    );
    let alert_runs = scalar(&db, "SELECT COUNT(*) FROM runbook_runs").await;
    assert!(
        alert_runs as u64 >= accepted,
        "{accepted} alerts accepted, {alert_runs} runs recorded"
    );

    // Every event reached the broker, in per-entity order: across both brokers' sessions, each
    // entity's events, first deliveries taken, are that entity's outbox rows in id order, with
    // none missing (a repeat delivery after a crash is allowed; a gap or a reorder is not).
    let all: Vec<(String, i64)> = rows(
        &db,
        &format!("SELECT entity_id, id FROM outbox_final WHERE topic = '{topic}' ORDER BY id"),
    )
    .await
    .iter()
    .map(|r| {
        (
            r["entity_id"].as_str().unwrap().to_owned(),
            r["id"].as_i64().unwrap(),
        )
    })
    .collect();
    let ids: BTreeSet<i64> = all.iter().map(|(_, id)| *id).collect();
    let (ids_ref, reader_ref) = (&ids, &reader);
    eventually(30, "the reader to have every event", || async move {
        let seen: BTreeSet<i64> = reader_ref
            .sessions()
            .into_iter()
            .flatten()
            .map(|(_, id)| id)
            .collect();
        ids_ref.is_subset(&seen).then_some(())
    })
    .await;
    let mut expected: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (k, id) in &all {
        expected.entry(k.clone()).or_default().push(*id);
    }
    let mut delivered: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut first = BTreeSet::new();
    for (k, id) in reader.sessions().into_iter().flatten() {
        if first.insert(id) {
            delivered.entry(k).or_default().push(id);
        }
    }
    assert_eq!(delivered.len(), ENTITIES, "every entity's events arrived");
    for (k, ids) in &expected {
        assert_eq!(
            delivered.get(k),
            Some(ids),
            "entity {k}: delivered in order, none missing"
        );
    }
    drop(reader);
    drop(server);
}
