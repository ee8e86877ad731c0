//! Faults of the streaming runtime and of run trees: an outbox event the broker always refuses
//! (parked; only its own entity waits), per-entity order when a command is deferred behind its
//! entity's lock, a resumed run and its `until` step, child runs cut off by their parent, and
//! playbook calls that fan out.

use std::{collections::BTreeMap, time::Duration};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::Headers,
    ClientConfig, Message, Offset, TopicPartitionList,
};
use runbook::{
    store::Db,
    stream::queue::{self, Ack, Lock, NewCommand},
};
use serde_json::{json, Value as Json};

use crate::util::{
    delete_json, eventually, get_json, post_json, rows, scalar, store, until_scalar, PgDb, Workdir,
};

const OPS_TOKEN: &str = "ops-token-faults";

/// A workdir whose config has an operator token and a short command lease.
fn workdir() -> Workdir {
    let w = Workdir::new().env("TEST_OPS_TOKEN", OPS_TOKEN);
    w.config(
        "auth:\n  tokens:\n    - { name: ops, role: operator, token_env: TEST_OPS_TOKEN }\nstreaming:\n  lease: 2s\n  poll_interval: 50ms\n",
    );
    w
}

// ---------------------------------------------------------------------------------------------
// Per-entity order under deferral.

fn command(ty: &str) -> NewCommand {
    NewCommand {
        entity: "account".into(),
        entity_id: "a1".into(),
        command_type: ty.into(),
        priority: 0,
        payload: json!({}),
    }
}

/// Commands A then B of one entity: A is deferred because another command of its entity holds
/// the lock, and B is enqueued while A waits. When the lock is free, A must be claimed first.
async fn a_deferred_command_keeps_its_place(db: &Db) {
    db.migrate().await.unwrap();
    let (lease, ttl) = (Duration::from_secs(30), Duration::from_secs(300));
    let holder = queue::enqueue(db, &[command("account.write")])
        .await
        .unwrap()[0];
    let first = queue::claim_locked(db, "w1", 10, lease, ttl, &[])
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].1, Lock::Held { takeover: false });

    let a = queue::enqueue(db, &[command("account.write")])
        .await
        .unwrap()[0];
    let second = queue::claim_locked(db, "w2", 10, lease, ttl, &[])
        .await
        .unwrap();
    let got: Vec<(i64, Lock)> = second.iter().map(|(c, l)| (c.id, *l)).collect();
    assert_eq!(got, [(a, Lock::Busy)], "A waits for the entity's lock");
    // The worker puts A back for a moment (its `run_at` moves), and B arrives meanwhile.
    queue::defer(db, "w2", &[a], Duration::from_millis(300))
        .await
        .unwrap();
    let b = queue::enqueue(db, &[command("account.write")])
        .await
        .unwrap()[0];
    let done = Ack {
        completed: vec![(holder, "account".into(), "a1".into())],
        locked: vec![holder],
        ..Ack::default()
    };
    assert_eq!(queue::ack(db, "w1", &done).await.unwrap(), [holder]);

    // The lock is free. Claim as a worker does (what cannot take the lock is deferred again)
    // until a command of the entity holds the lock: it must be A.
    let held = eventually(10, "a command of the entity to take the lock", || async {
        let batch = queue::claim_locked(db, "w3", 10, lease, ttl, &[])
            .await
            .unwrap();
        let busy: Vec<i64> = batch
            .iter()
            .filter(|(_, l)| *l == Lock::Busy)
            .map(|(c, _)| c.id)
            .collect();
        queue::defer(db, "w3", &busy, Duration::from_millis(300))
            .await
            .unwrap();
        batch
            .into_iter()
            .find(|(_, l)| *l != Lock::Busy)
            .map(|(c, _)| c.id)
    })
    .await;
    assert_eq!(held, a, "B ({b}) must not run before A ({a})");
    // Once A is done, B follows.
    let done = Ack {
        completed: vec![(a, "account".into(), "a1".into())],
        locked: vec![a],
        ..Ack::default()
    };
    queue::ack(db, "w3", &done).await.unwrap();
    let next = eventually(10, "B to take the lock", || async {
        let batch = queue::claim_locked(db, "w4", 10, lease, ttl, &[])
            .await
            .unwrap();
        (!batch.is_empty()).then_some(batch)
    })
    .await;
    let got: Vec<(i64, Lock)> = next.iter().map(|(c, l)| (c.id, *l)).collect();
    assert_eq!(got, [(b, Lock::Held { takeover: false })]);
}

#[tokio::test]
async fn a_deferred_command_keeps_its_place_on_sqlite() {
    let w = Workdir::new();
    a_deferred_command_keeps_its_place(&store(&w.sqlite_url()).await).await;
}

#[tokio::test]
async fn a_deferred_command_keeps_its_place_on_postgres() {
    let pg = PgDb::new().await;
    a_deferred_command_keeps_its_place(&store(&pg.url).await).await;
}

// ---------------------------------------------------------------------------------------------
// A resumed run and its `until` step.

#[tokio::test]
async fn a_resumed_run_polls_again_an_until_step_whose_condition_never_held() {
    let w = workdir();
    let url = w.sqlite_url();
    let db = store(&url).await;
    db.migrate().await.unwrap();
    db.sql("CREATE TABLE go_flag (n INTEGER)", vec![])
        .await
        .unwrap();
    w.playbook(
        "waiter",
        "name: waiter\non_interrupt: resume\nsteps:\n  - id: poll\n    sql: SELECT COUNT(*) AS n FROM go_flag\n    until: \"steps.poll.rows[0].n >= 1\"\n    every: 200ms\n    within: 5m\n  - id: after\n    sql: SELECT {{ steps.poll.rows[0].n }} AS seen\n",
    );
    let mut first = w.serve(&["--store", &url]);
    let (status, body) = post_json(
        &format!("{}/api/runs", first.base),
        Some(OPS_TOKEN),
        &json!({ "playbook": "waiter" }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    until_scalar(
        20,
        "the `until` step to poll twice",
        &db,
        "SELECT COUNT(*) FROM runbook_step_attempts WHERE step_id = 'poll'",
        |n| n >= 2,
    )
    .await;
    first.kill_hard();
    // The condition never held while the first process ran; it holds now.
    db.sql("INSERT INTO go_flag (n) VALUES (1)", vec![])
        .await
        .unwrap();
    let _second = w.serve(&["--store", &url]);
    until_scalar(
        30,
        "the resumed run to finish",
        &db,
        "SELECT COUNT(*) FROM runbook_runs WHERE playbook = 'waiter' AND status = 'succeeded'",
        |n| n == 1,
    )
    .await;
    let after = rows(
        &db,
        "SELECT output FROM runbook_step_attempts WHERE step_id = 'after'",
    )
    .await;
    assert_eq!(
        after[0]["output"]["rows"][0]["seen"], 1,
        "the resumed run polled again until its condition held"
    );
    // The polls whose condition did not hold are recorded as such, not as the step's success.
    let statuses = rows(
        &db,
        "SELECT status, COUNT(*) AS n FROM runbook_step_attempts WHERE step_id = 'poll' GROUP BY status ORDER BY status",
    )
    .await;
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert_eq!(statuses[0]["status"], "polled");
    assert_eq!(statuses[1], json!({ "status": "succeeded", "n": 1 }));
}

// ---------------------------------------------------------------------------------------------
// Child runs cut off by their parent.

const CHILD: &str = "name: child\nsteps:\n  - id: nap\n    wait: 30s\n";

#[test]
fn a_child_run_cut_off_by_its_steps_timeout_ends_cancelled_with_the_reason() {
    let w = Workdir::new();
    w.playbook("child", CHILD);
    w.playbook(
        "parent",
        "name: parent\nsteps:\n  - id: call\n    timeout: 1s\n    playbook: child\n",
    );
    let started = std::time::Instant::now();
    let out = w.run(&["run", "parent", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the child was stopped, not waited for"
    );
    let run = out.run();
    assert_eq!(run["failed_step"], "call");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 1s"),
        "{run}"
    );
    let child = child_record(&w);
    assert_eq!(child["status"], "cancelled", "{child}");
    let error = child["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the calling step `call` of run") && error.contains("timed out after 1s"),
        "{child}"
    );
    assert!(child["finished_at"].is_string(), "{child}");
}

#[test]
fn a_child_run_cut_off_by_its_parents_playbook_timeout_ends_cancelled() {
    let w = Workdir::new();
    w.playbook("child", CHILD);
    w.playbook(
        "parent",
        "name: parent\ntimeout: 1s\nsteps:\n  - id: call\n    playbook: child\n",
    );
    let out = w.run(&["run", "parent", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.run()["status"], "timed_out");
    let child = child_record(&w);
    assert_eq!(child["status"], "cancelled", "{child}");
    assert!(
        child["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out: the playbook did not finish within 1s"),
        "{child}"
    );
}

/// The record of the one `child` run, as `runbook runs list` shows it.
fn child_record(w: &Workdir) -> Json {
    let list = w.run(&["runs", "list", "-o", "json"]).json();
    let children: Vec<Json> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["playbook"] == "child")
        .cloned()
        .collect();
    assert_eq!(children.len(), 1, "{list}");
    children[0].clone()
}

// ---------------------------------------------------------------------------------------------
// Bounded fan-out.

#[test]
fn playbook_calls_stop_at_the_run_tree_limit() {
    let w = Workdir::new();
    w.config("streaming:\n  max_runs_per_tree: 20\n");
    // Unbounded, this tree would hold 1 + 5 + 25 + 125 runs.
    w.playbook(
        "fan",
        "name: fan\nparams:\n  depth: { type: integer, default: 0 }\nsteps:\n  - id: more\n    when: \"params.depth < 3\"\n    for_each: \"[1, 2, 3, 4, 5]\"\n    playbook: { name: fan, params: { depth: \"{{ params.depth + 1 }}\" } }\n",
    );
    let out = w.run(&["run", "fan", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let error = out.run()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("`streaming.max_runs_per_tree` (20)"),
        "{error}"
    );
    let list = w
        .run(&["runs", "list", "--limit", "1000", "-o", "json"])
        .json();
    assert_eq!(list.as_array().unwrap().len(), 20, "{list}");
}

#[test]
fn playbook_calls_stop_at_the_call_depth_limit() {
    let w = Workdir::new();
    w.config("streaming:\n  max_call_depth: 3\n");
    w.playbook(
        "deep",
        "name: deep\nsteps:\n  - id: again\n    playbook: deep\n",
    );
    let out = w.run(&["run", "deep", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let list = w.run(&["runs", "list", "-o", "json"]).json();
    // Depths 0 to 3.
    assert_eq!(list.as_array().unwrap().len(), 4, "{list}");
    let deepest = &list[0];
    assert!(
        deepest["error"]
            .as_str()
            .unwrap_or_default()
            .contains("past `streaming.max_call_depth` (3)"),
        "{deepest}"
    );
}

// ---------------------------------------------------------------------------------------------
// A poison outbox event.

/// Every message of `topic`, as (key, event-id), read until `n` arrived (or 30 s passed).
fn consume(brokers: &str, topic: &str, n: usize) -> Vec<(String, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("faults-{}", fastrand::u32(..)))
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
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
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

async fn events(brokers: &str, topic: &str, n: usize) -> BTreeMap<String, Vec<i64>> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    let got = tokio::task::spawn_blocking(move || consume(&brokers, &topic, n))
        .await
        .unwrap();
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (k, id) in got {
        by_key.entry(k).or_default().push(id);
    }
    by_key
}

/// Inserts one outbox event as a completed command writes it; returns its id.
async fn outbox_event(db: &Db, entity: &str, entity_id: &str, payload: &Json) -> i64 {
    let r = db
        .sql(
            "INSERT INTO outbox_final (command_id, entity, entity_id, event_type, topic, payload) \
             VALUES (1, $1, $2, 'changed', $3, $4) RETURNING id",
            vec![
                json!(entity),
                json!(entity_id),
                json!(format!("{entity}-events")),
                json!(payload.to_string()),
            ],
        )
        .await
        .unwrap();
    r.rows[0]["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_outbox_event_is_parked_and_only_its_entity_waits() {
    let brokers = std::env::var("RUNBOOK_TEST_KAFKA").expect(
        "RUNBOOK_TEST_KAFKA is not set: run the suite with scripts/test, which starts the broker",
    );
    // A topic of this test's own on the shared broker.
    let entity = format!("faults{}", fastrand::u32(..));
    let topic = format!("{entity}-events");
    let w = Workdir::new().env("TEST_OPS_TOKEN", OPS_TOKEN);
    w.config(&format!(
        "kafka: {{ brokers: \"{brokers}\", properties: {{ message.timeout.ms: \"5000\" }} }}\nauth:\n  tokens:\n    - {{ name: ops, role: operator, token_env: TEST_OPS_TOKEN }}\nstreaming:\n  poll_interval: 50ms\n  outbox_max_attempts: 2\n"
    ));
    let url = w.sqlite_url();
    let db = store(&url).await;
    db.migrate().await.unwrap();
    // Entity a: an event, one over the broker's size limit (2 MB; Kafka's default is 1 MB), and
    // one behind it. Entities b and c: events before and after the oversized one.
    let small = json!({ "ok": true });
    let huge = json!({ "blob": "x".repeat(2 * 1024 * 1024) });
    let a1 = outbox_event(&db, &entity, "a", &small).await;
    let b1 = outbox_event(&db, &entity, "b", &small).await;
    let poison = outbox_event(&db, &entity, "a", &huge).await;
    let mut others = vec![b1];
    for i in 0..6 {
        let key = if i % 2 == 0 { "b" } else { "c" };
        others.push(outbox_event(&db, &entity, key, &small).await);
    }
    let a3 = outbox_event(&db, &entity, "a", &small).await;
    let server = w.serve(&["--store", &url]);

    until_scalar(
        60,
        "the oversized event to be parked",
        &db,
        &format!("SELECT COUNT(*) FROM outbox_final WHERE id = {poison} AND parked_at IS NOT NULL"),
        |n| n == 1,
    )
    .await;
    until_scalar(
        30,
        "every other entity's events to be sent",
        &db,
        &format!(
            "SELECT COUNT(*) FROM outbox_final WHERE sent_at IS NULL AND entity_id <> 'a' AND entity = '{entity}'"
        ),
        |n| n == 0,
    )
    .await;
    let parked = rows(
        &db,
        &format!("SELECT attempts, last_error, sent_at FROM outbox_final WHERE id = {poison}"),
    )
    .await;
    assert_eq!(parked[0]["attempts"], 2, "{parked:?}");
    assert!(parked[0]["sent_at"].is_null());
    let error = parked[0]["last_error"].as_str().unwrap_or_default();
    assert!(error.to_lowercase().contains("size"), "{error}");
    // The event behind it in its entity waits; it does not overtake the parked one.
    let a3_sent = scalar(
        &db,
        &format!("SELECT COUNT(*) FROM outbox_final WHERE id = {a3} AND sent_at IS NOT NULL"),
    )
    .await;
    assert_eq!(a3_sent, 0, "an entity's event overtook its parked event");

    // What arrived: a's first event, and every event of b and c, in order.
    let got = events(&brokers, &topic, 1 + others.len()).await;
    assert_eq!(got.get("a"), Some(&vec![a1]), "{got:?}");
    let mut sent: Vec<i64> = got
        .iter()
        .filter(|(k, _)| k.as_str() != "a")
        .flat_map(|(_, ids)| ids.clone())
        .collect();
    for (k, ids) in &got {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, &sorted, "events of entity {k} out of order");
    }
    sent.sort();
    assert_eq!(sent, others);

    // The operator sees it (with the event it blocks), and the gauge counts it.
    let parked_url = format!("{}/api/admin/streaming/outbox/parked", server.base);
    assert_eq!(get_json(&parked_url, None).await.0, 401);
    let (status, list) = get_json(&parked_url, Some(OPS_TOKEN)).await;
    assert_eq!(status, 200, "{list}");
    let listed = &list["parked"][0];
    assert_eq!(listed["id"], poison, "{list}");
    assert_eq!(listed["entity_id"], "a");
    assert_eq!(listed["blocked"], 1, "{list}");
    assert_eq!(listed["attempts"], 2);
    let metrics = server.metrics().await;
    assert!(metrics.contains("core_stream_outbox_parked 1"), "{metrics}");
    let cli = w
        .run(&["--store", &url, "outbox", "parked", "-o", "json"])
        .json();
    assert_eq!(cli[0]["id"], poison, "{cli}");

    // A retry sends it again with a fresh count; the broker refuses it again, so it is parked again.
    let out = w.run(&["--store", &url, "outbox", "retry", &poison.to_string()]);
    assert_eq!(out.code, 0, "{out:?}");
    until_scalar(
        60,
        "the retried event to be parked again",
        &db,
        &format!(
            "SELECT COUNT(*) FROM runbook_audit WHERE op = 'outbox_retry' AND rows = 1 \
             AND EXISTS (SELECT 1 FROM outbox_final WHERE id = {poison} AND parked_at IS NOT NULL AND attempts = 2)"
        ),
        |n| n == 1,
    )
    .await;

    // Dropping it lets its entity's next event through.
    let (status, body) = delete_json(&format!("{parked_url}/{poison}"), Some(OPS_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = delete_json(&format!("{parked_url}/{poison}"), Some(OPS_TOKEN)).await;
    assert_eq!(status, 404, "it is gone");
    until_scalar(
        30,
        "the event behind the dropped one to be sent",
        &db,
        &format!("SELECT COUNT(*) FROM outbox_final WHERE id = {a3} AND sent_at IS NOT NULL"),
        |n| n == 1,
    )
    .await;
    let got = events(&brokers, &topic, 2 + others.len()).await;
    assert_eq!(got.get("a"), Some(&vec![a1, a3]), "{got:?}");
    let audit = rows(
        &db,
        "SELECT actor, op, rows FROM runbook_audit WHERE op LIKE 'outbox_%' ORDER BY id",
    )
    .await;
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(
        audit[1],
        json!({ "actor": "api:ops", "op": "outbox_drop", "rows": 1 })
    );
    assert!(audit[0]["actor"].as_str().unwrap().starts_with("cli:"));
}

#[tokio::test]
async fn a_child_run_ends_cancelled_when_its_parent_is_cancelled() {
    let w = Workdir::new();
    let url = w.sqlite_url();
    w.playbook("child", CHILD);
    w.playbook(
        "parent",
        "name: parent\nsteps:\n  - id: call\n    playbook: child\n",
    );
    let db = store(&url).await;
    db.migrate().await.unwrap();
    let mut parent = w
        .command()
        .args(["--store", &url, "run", "parent"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start runbook run");
    until_scalar(
        20,
        "the child run to start",
        &db,
        "SELECT COUNT(*) FROM runbook_runs WHERE playbook = 'child' AND status = 'running'",
        |n| n == 1,
    )
    .await;
    let out = w.run(&["--store", &url, "runs", "cancel", "1"]);
    assert_eq!(out.code, 0, "{out:?}");
    let status = tokio::task::spawn_blocking(move || parent.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let child = child_record(&w);
    assert_eq!(child["status"], "cancelled", "{child}");
    assert!(
        child["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("cancelled by cli:"),
        "{child}"
    );
}
