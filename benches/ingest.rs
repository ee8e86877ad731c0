//! Webhook ingest, measured side by side with the store's raw durable insert rate in one run.
//!
//! For each backend (SQLite file, PostgreSQL) and each scenario, `runbook serve` (the real binary,
//! workers off, so only ingest is measured) receives Alertmanager notifications from 8 and from
//! 64 concurrent clients on loopback, one alert each with its own fingerprint, every one matching a
//! playbook: each answer 2xx means the notification, the alert and its run record (queued with its
//! queue command, or skipped by a guard with the reason) were committed. Scenarios:
//! - `storm`: alerts spread over 20 playbooks with their default guards (one run at a time), as
//!   an alert storm meets remediation: most alerts are recorded and skipped.
//! - `admit-all`: one playbook whose guard admits every alert (`concurrency: 1000000`); with the
//!   workers off every run stays queued, so each admission counts a growing number of open runs.
//!
//! Next to it, the same clients write the same rows straight to a fresh store, one transaction per
//! notification (the "raw" rate; on SQLite with `synchronous=FULL`). Then the same server at a fixed
//! 1,000 notifications/s for its latency, its RSS idle and under load, and its time from start to
//! `/readyz` answering 200. Run it with `scripts/bench` (which starts the services) or
//! `cargo bench --bench ingest` with PostgreSQL on `RUNBOOK_TEST_PG`. `RUNBOOK_BENCH_ONLY=sqlite|postgres`
//! measures one backend, `RUNBOOK_BENCH_CLIENTS=8,64,256` other numbers of clients,
//! `RUNBOOK_BENCH_N=40000` more notifications per measurement (4,000 by default),
//! `RUNBOOK_BENCH_RATE=4000` another fixed rate for the latency columns (1,000 by default),
//! `RUNBOOK_BENCH_SERVER_LOG=error,runbook::server::receiver=debug` the server's log on stderr
//! (there: each batch the receiver recorded, with its size and time), and
//! `RUNBOOK_BENCH_BIN=PATH` another build of runbook.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use runbook::store::Db;
use serde_json::{json, Value as Json};

#[path = "common/mod.rs"]
mod common;

use common::{
    cpu_secs, cpu_secs_of, cpu_ticks, drop_store, fresh, proc_mib, runbook_bin, steal_pct,
};

/// Notifications per throughput measurement (`RUNBOOK_BENCH_N` for more, for a profile).
static N: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    std::env::var("RUNBOOK_BENCH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4_000)
});
/// Concurrent clients, for runbook and the raw inserts alike: a few, as one Alertmanager pair
/// sends, and many, as a storm from several sends.
const CLIENTS: [usize; 2] = [8, 64];
/// The fixed rate of the latency measurement (`RUNBOOK_BENCH_RATE` for another), and for how
/// long.
static RATE: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    std::env::var("RUNBOOK_BENCH_RATE")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(1_000)
});
const RATE_SECS: u64 = 3;
const TOKEN: &str = "bench-receiver-token-0123456789";

struct Server {
    child: Child,
    base: String,
    ready: Duration,
    _dir: tempfile::TempDir,
}

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    playbooks: usize,
    guard: &'static str,
}

const SCENARIOS: [Scenario; 2] = [
    Scenario {
        name: "storm",
        playbooks: 20,
        guard: "",
    },
    Scenario {
        name: "admit-all",
        playbooks: 1,
        guard: "guard: { concurrency: 1000000 }\n",
    },
];

/// Creates runbook's tables in the store at `url`.
async fn migrate(url: &str) {
    let db = Db::connect(url, false, 2).await.unwrap();
    db.migrate().await.unwrap();
    db.close().await;
}

/// Starts `runbook serve` without workers on `url`; returns once `/readyz` answers 200.
async fn serve(url: &str, scenario: Scenario) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "auth:\n  receiver: {{ token: {TOKEN} }}\nserver: {{ max_body: 1MiB }}\nstreaming: {{ workers: false }}\n"
    );
    std::fs::write(dir.path().join("runbook.yaml"), config).unwrap();
    std::fs::create_dir(dir.path().join("runbooks")).unwrap();
    for k in 0..scenario.playbooks {
        let text = format!(
            "name: ingest-{k}\ndescription: Matches bench alerts IngestBench{k}.\non:\n  alerts:\n    - alertname: IngestBench{k}\n{}steps:\n  - id: ok\n    assert: 'true'\n",
            scenario.guard
        );
        std::fs::write(dir.path().join(format!("runbooks/ingest-{k}.yaml")), text).unwrap();
    }
    // The store is migrated before the clock starts: start-up is measured on a store that exists.
    migrate(url).await;
    // `RUNBOOK_BENCH_SERVER_LOG=<RUNBOOK_LOG directives>` shows the server's log on stderr.
    let server_log = std::env::var("RUNBOOK_BENCH_SERVER_LOG").ok();
    let started = Instant::now();
    let mut child = Command::new(runbook_bin())
        .args([
            "--store",
            url,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-workers",
        ])
        .current_dir(dir.path())
        .env("RUNBOOK_LOG", server_log.as_deref().unwrap_or("error"))
        .stdout(Stdio::piped())
        .stderr(if server_log.is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let base = loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            panic!("serve exited before listening");
        }
        if let Some(addr) = line.trim().strip_prefix("listening on ") {
            break addr.to_owned();
        }
    };
    // Keep reading stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in stdout.lines() {});
    let client = reqwest::Client::new();
    loop {
        let ok = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Server {
        child,
        base,
        ready: started.elapsed(),
        _dir: dir,
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// An Alertmanager webhook (version 4) with one firing alert whose labels make fingerprint `i`.
fn notification(i: usize, starts_at: &str, playbooks: usize) -> Json {
    let name = format!("IngestBench{}", i % playbooks);
    let fingerprint = format!(
        "{:016x}",
        0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1)
    );
    json!({
        "version": "4", "receiver": "runbook", "status": "firing",
        "groupKey": format!("{{}}:{{alertname=\"{name}\", n=\"{i}\"}}"),
        "truncatedAlerts": 0, "externalURL": "http://alertmanager:9093",
        "groupLabels": { "alertname": name },
        "commonLabels": { "alertname": name, "n": i.to_string() },
        "commonAnnotations": {},
        "alerts": [{
            "status": "firing",
            "labels": { "alertname": name, "n": i.to_string(), "severity": "warning" },
            "annotations": { "summary": "bench" },
            "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph", "fingerprint": fingerprint,
        }]
    })
}

struct Load {
    per_sec: f64,
    latencies: Vec<Duration>,
    failed: usize,
}

impl Load {
    fn percentile(&self, p: f64) -> f64 {
        let mut l = self.latencies.clone();
        l.sort();
        if l.is_empty() {
            return f64::NAN;
        }
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        l[i].as_secs_f64() * 1000.0
    }
}

/// One keep-alive HTTP/1.1 connection that posts prebuilt requests and reads the status of each
/// answer: the load generator shares the two cores with the server and the database, so it does
/// no more per request than write the bytes and read the answer (no client library, no JSON
/// built or encoded while the clock runs).
struct Conn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(base: &str) -> Conn {
        let addr = base.trim_start_matches("http://");
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends one request and reads its answer; the status, or `None` when the connection failed.
    async fn post(&mut self, request: &[u8]) -> Option<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream.write_all(request).await.ok()?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).ok()?;
                let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .expect("the server answers with a Content-Length");
                while self.buf.len() < end + 4 + length {
                    let n = self.stream.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return Some(status);
            }
            let n = self.stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The bytes of the HTTP request posting notification `i`, built before the clock starts.
fn request(i: usize, starts_at: &str, playbooks: usize) -> Vec<u8> {
    let body = notification(i, starts_at, playbooks).to_string();
    let mut r = format!(
        "POST /api/webhooks/alertmanager HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

/// Posts `n` notifications, numbered from `first`, from `clients` connections as fast as answers
/// come.
async fn flood(
    base: &str,
    clients: usize,
    first: usize,
    n: usize,
    starts_at: &str,
    playbooks: usize,
) -> Load {
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        (first..first + n)
            .map(|i| request(i, starts_at, playbooks))
            .collect(),
    );
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Conn::open(base).await);
    }
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let (next, requests) = (next.clone(), requests.clone());
        tasks.spawn(async move {
            let (mut lat, mut failed) = (Vec::new(), 0);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(request) = requests.get(i) else {
                    break;
                };
                let t = Instant::now();
                let ok = conn
                    .post(request)
                    .await
                    .is_some_and(|s| (200..300).contains(&s));
                lat.push(t.elapsed());
                failed += usize::from(!ok);
            }
            (lat, failed)
        });
    }
    let mut load = Load {
        per_sec: 0.0,
        latencies: Vec::new(),
        failed: 0,
    };
    while let Some(r) = tasks.join_next().await {
        let (lat, failed) = r.unwrap();
        load.latencies.extend(lat);
        load.failed += failed;
    }
    load.per_sec = n as f64 / started.elapsed().as_secs_f64();
    load
}

/// Connections the fixed-rate measurement keeps open: more than it ever needs at once.
const STEADY_CONNS: usize = 64;

/// Posts at a fixed rate: request `k` is handed out `k / RATE` seconds after the start, and its
/// latency runs from then (so time spent waiting for a free connection counts, and a slow answer
/// does not hide the requests it delays).
async fn steady(base: &str, first: usize, starts_at: &str, playbooks: usize) -> Load {
    let total = (*RATE * RATE_SECS) as usize;
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        (first..first + total)
            .map(|i| request(i, starts_at, playbooks))
            .collect(),
    );
    let mut conns = Vec::with_capacity(STEADY_CONNS);
    for _ in 0..STEADY_CONNS {
        conns.push(Conn::open(base).await);
    }
    let (due_tx, due_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let due_rx = Arc::new(tokio::sync::Mutex::new(due_rx));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let (due_rx, requests) = (due_rx.clone(), requests.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let next = due_rx.lock().await.recv().await;
                let Some((k, due)) = next else { break };
                let ok = conn
                    .post(&requests[k])
                    .await
                    .is_some_and(|s| (200..300).contains(&s));
                out.push((due.elapsed(), ok));
            }
            out
        });
    }
    for k in 0..total {
        let due = started + Duration::from_micros(k as u64 * 1_000_000 / *RATE);
        tokio::time::sleep_until(due.into()).await;
        due_tx.send((k, Instant::now())).unwrap();
    }
    drop(due_tx);
    let mut load = Load {
        per_sec: 0.0,
        latencies: Vec::new(),
        failed: 0,
    };
    while let Some(r) = tasks.join_next().await {
        for (lat, ok) in r.unwrap() {
            load.latencies.push(lat);
            load.failed += usize::from(!ok);
        }
    }
    load.per_sec = total as f64 / started.elapsed().as_secs_f64();
    load
}

async fn count(url: &str, sql: &str) -> i64 {
    let db = Db::connect(url, true, 1).await.unwrap();
    let n = db.sql(sql, vec![]).await.unwrap().rows[0]["n"]
        .as_i64()
        .unwrap();
    db.close().await;
    n
}

/// One transaction per notification writing what the receiver writes for it: the notification,
/// the alert, its run key, the run record and the run's queue command. Each client records its
/// runs under a playbook of its own: a run counts in its playbook's open-run counter
/// (`runbook_open_runs`), whose row a transaction holds until it commits, and raw inserts take no
/// guard lock, so clients sharing one playbook would wait on each other's commits there. The
/// receiver decides a playbook's runs one batch at a time under its guard lock anyway.
async fn raw_rate(backend: &str, url: &str, clients: usize) -> f64 {
    let db = Db::connect(url, false, 2).await.unwrap();
    db.migrate().await.unwrap();
    db.close().await;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    if backend == "sqlite" {
        let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)
            .unwrap()
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(clients as u32)
            .connect_with(opts)
            .await
            .unwrap();
        for client in 0..clients {
            let (pool, next) = (pool.clone(), next.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= *N {
                        break;
                    }
                    raw_sqlite(&pool, i, client).await;
                }
            });
        }
    } else {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(clients as u32)
            .connect(url)
            .await
            .unwrap();
        for client in 0..clients {
            let (pool, next) = (pool.clone(), next.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= *N {
                        break;
                    }
                    raw_pg(&pool, i, client).await;
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    *N as f64 / started.elapsed().as_secs_f64()
}

fn raw_rows(i: usize) -> (String, Json, Json, Json) {
    let body = notification(i, "2026-11-29T03:00:00Z", 1);
    let alert = body["alerts"][0].clone();
    let fingerprint = alert["fingerprint"].as_str().unwrap().to_owned();
    let outcomes = json!([{ "fingerprint": fingerprint, "outcome": "started",
        "playbooks": [{ "playbook": "ingest", "outcome": "started" }] }]);
    let payload = json!({ "playbook": "ingest", "params": {}, "trigger": { "kind": "alert",
        "fingerprint": fingerprint }, "alert": alert, "alerts": [] });
    (fingerprint, alert, outcomes, payload)
}

async fn raw_sqlite(pool: &sqlx::SqlitePool, i: usize, client: usize) {
    const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
    let (fp, alert, outcomes, payload) = raw_rows(i);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query(&format!("INSERT INTO runbook_alert_notifications (received_at, receiver, status, group_key, external_url, alerts, outcomes) VALUES ({NOW}, 'runbook', 'firing', ?1, 'http://alertmanager:9093', 1, ?2)"))
        .bind(format!("k{i}")).bind(outcomes.to_string()).execute(&mut *tx).await.unwrap();
    sqlx::query(&format!("INSERT INTO runbook_alerts (fingerprint, starts_at, alertname, labels, annotations, status, generator_url, first_received_at, last_received_at, matched) VALUES (?1, '2026-11-29T03:00:00Z', 'IngestBench', ?2, ?3, 'firing', 'http://prometheus:9090/graph', {NOW}, {NOW}, 1)"))
        .bind(&fp).bind(alert["labels"].to_string()).bind(alert["annotations"].to_string()).execute(&mut *tx).await.unwrap();
    let command: i64 = sqlx::query_scalar("INSERT INTO command_queue (entity, entity_id, command_type, priority, payload) VALUES ('runbook', 'ingest', 'runbook.run', 5, ?1) RETURNING id")
        .bind(payload.to_string()).fetch_one(&mut *tx).await.unwrap();
    let run: i64 = sqlx::query_scalar("INSERT INTO runbook_runs (playbook, trigger, params, status, command_id) VALUES (?3, ?1, '{}', 'queued', ?2) RETURNING id")
        .bind(payload["trigger"].to_string()).bind(command).bind(format!("ingest-{client}")).fetch_one(&mut *tx).await.unwrap();
    sqlx::query(&format!("INSERT INTO runbook_alert_runs (playbook, fingerprint, starts_at, kind, run_id, decided_at) VALUES ('ingest', ?1, '2026-11-29T03:00:00Z', 'firing', ?2, {NOW})"))
        .bind(&fp).bind(run).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

async fn raw_pg(pool: &sqlx::PgPool, i: usize, client: usize) {
    let (fp, alert, outcomes, payload) = raw_rows(i);
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO runbook_alert_notifications (received_at, receiver, status, group_key, external_url, alerts, outcomes) VALUES (NOW(), 'runbook', 'firing', $1, 'http://alertmanager:9093', 1, $2::jsonb)")
        .bind(format!("k{i}")).bind(outcomes.to_string()).execute(&mut *tx).await.unwrap();
    sqlx::query("INSERT INTO runbook_alerts (fingerprint, starts_at, alertname, labels, annotations, status, generator_url, first_received_at, last_received_at, matched) VALUES ($1, '2026-11-29T03:00:00Z', 'IngestBench', $2::jsonb, $3::jsonb, 'firing', 'http://prometheus:9090/graph', NOW(), NOW(), TRUE)")
        .bind(&fp).bind(alert["labels"].to_string()).bind(alert["annotations"].to_string()).execute(&mut *tx).await.unwrap();
    let command: i64 = sqlx::query_scalar("INSERT INTO command_queue (entity, entity_id, command_type, priority, payload) VALUES ('runbook', 'ingest', 'runbook.run', 5, $1::jsonb) RETURNING id")
        .bind(payload.to_string()).fetch_one(&mut *tx).await.unwrap();
    let run: i64 = sqlx::query_scalar("INSERT INTO runbook_runs (playbook, trigger, params, status, command_id) VALUES ($3, $1::jsonb, '{}'::jsonb, 'queued', $2) RETURNING id")
        .bind(payload["trigger"].to_string()).bind(command).bind(format!("ingest-{client}")).fetch_one(&mut *tx).await.unwrap();
    sqlx::query("INSERT INTO runbook_alert_runs (playbook, fingerprint, starts_at, kind, run_id, decided_at) VALUES ('ingest', $1, '2026-11-29T03:00:00Z', 'firing', $2, NOW())")
        .bind(&fp).bind(run).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

/// Notifications per transaction of the ceiling measurement: as many as the receiver's batches
/// carry at 64 clients.
const CEILING_BATCH: i64 = 64;
/// How long each ceiling measurement writes.
const CEILING_SECS: u64 = 5;

/// The rows of `CEILING_BATCH` notifications of a scenario, as statements over
/// `generate_series` from `$1`: what the receiver writes for them (the notification with its
/// outcomes, the alert occurrence, the run and its alert key; for `admit-all` also the queue
/// command with the run's request), each JSON value different per row so PostgreSQL parses each.
fn ceiling_statements(scenario: &str) -> Vec<String> {
    let rows = format!("FROM generate_series($1::int8, $1::int8 + {CEILING_BATCH} - 1) g");
    let mut all = vec![
        format!("INSERT INTO runbook_alert_notifications (received_at, receiver, status, group_key, external_url, alerts, truncated_alerts, outcomes) \
         SELECT now(), 'runbook', 'firing', 'k' || g, 'http://alertmanager:9093', 1, 0, \
         replace('[{{\"fingerprint\":\"X\",\"alertname\":\"IngestBench0\",\"status\":\"firing\",\"starts_at\":\"2026-11-29T03:00:00Z\",\"outcome\":\"started\",\"playbooks\":[{{\"playbook\":\"ingest-0\",\"outcome\":\"started\",\"run_id\":1,\"command_id\":1}}]}}]', 'X', g::text)::jsonb \
         {rows}"),
        format!("INSERT INTO runbook_alerts (fingerprint, starts_at, alertname, labels, annotations, status, generator_url, matched, first_received_at, last_received_at, notifications) \
         SELECT md5(g::text), '2026-11-29T03:00:00Z', 'IngestBench0', replace('{{\"alertname\":\"IngestBench0\",\"n\":\"X\",\"severity\":\"warning\"}}', 'X', g::text)::jsonb, \
         '{{\"summary\":\"bench\"}}'::jsonb, 'firing', 'http://prometheus:9090/graph', true, now(), now(), 1 \
         {rows}"),
    ];
    let trigger = "{\"kind\":\"alert\",\"fingerprint\":\"X\",\"starts_at\":\"2026-11-29T03:00:00Z\",\"status\":\"firing\",\"alertname\":\"IngestBench0\",\"receiver\":\"runbook\",\"group_key\":\"kX\"}";
    if scenario == "admit-all" {
        let alert = "{\"labels\":{\"alertname\":\"IngestBench0\",\"n\":\"X\",\"severity\":\"warning\"},\"annotations\":{\"summary\":\"bench\"},\"status\":\"firing\",\"startsAt\":\"2026-11-29T03:00:00Z\",\"endsAt\":\"\",\"fingerprint\":\"X\",\"generatorURL\":\"http://prometheus:9090/graph\",\"externalURL\":\"http://alertmanager:9093\"}";
        let payload = format!("{{\"playbook\":\"ingest-0\",\"params\":{{}},\"trigger\":{trigger},\"alert\":{alert},\"alerts\":[],\"version\":\"0123456789abcdef\"}}");
        all.push(format!(
            "INSERT INTO command_queue (entity, entity_id, command_type, priority, payload) \
         SELECT 'runbook', 'ingest-0', 'runbook.run', 5, replace('{payload}', 'X', g::text)::jsonb \
         {rows}"
        ));
        all.push(format!("INSERT INTO runbook_runs (playbook, trigger, params, status, dry_run, command_id, created_at, version) \
         SELECT 'ingest-0', replace('{trigger}', 'X', g::text)::jsonb, '{{}}'::jsonb, 'queued', false, g, now(), '0123456789abcdef' \
         {rows}"));
    } else {
        all.push(format!("INSERT INTO runbook_runs (playbook, trigger, params, status, dry_run, created_at, finished_at, error, version) \
         SELECT 'ingest-0', replace('{trigger}', 'X', g::text)::jsonb, '{{}}'::jsonb, 'skipped', false, now(), now(), \
         'guard.concurrency: 1 run(s) of this playbook already queued or running (limit 1)', '0123456789abcdef' \
         {rows}"));
    }
    all.push(format!("INSERT INTO runbook_alert_runs (playbook, fingerprint, starts_at, kind, run_id, decided_at) \
     SELECT 'ingest-0', md5(g::text), '2026-11-29T03:00:00Z', 'firing', g, now() \
     {rows}"));
    all
}

/// PostgreSQL alone writing a scenario's rows, `CEILING_BATCH` notifications per transaction,
/// from `connections` connections for `CEILING_SECS`: no HTTP, no reads, no guards, no runbook.
/// Notifications per second, and the CPU each cost PostgreSQL's backends, in µs.
async fn ceiling(url: &str, scenario: &str, connections: usize) -> (f64, f64) {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections as u32)
        .connect(url)
        .await
        .unwrap();
    let statements = Arc::new(ceiling_statements(scenario));
    let next = Arc::new(std::sync::atomic::AtomicI64::new(1));
    let written = Arc::new(std::sync::atomic::AtomicI64::new(0));
    // Every connection open (its backend running) before the CPU is read.
    let mut open = Vec::new();
    for _ in 0..connections {
        open.push(pool.acquire().await.unwrap());
    }
    drop(open);
    let cpu_before = cpu_secs_of("postgres");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(CEILING_SECS);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (pool, statements, next, written) = (
            pool.clone(),
            statements.clone(),
            next.clone(),
            written.clone(),
        );
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let first = next.fetch_add(CEILING_BATCH, std::sync::atomic::Ordering::Relaxed);
                let mut tx = pool.begin().await.unwrap();
                for sql in statements.iter() {
                    sqlx::query(sql)
                        .bind(first)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
                written.fetch_add(CEILING_BATCH, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_secs_of("postgres") - cpu_before;
    pool.close().await;
    let n = written.load(std::sync::atomic::Ordering::Relaxed) as f64;
    (n / elapsed, cpu * 1e6 / n)
}

/// The ceiling table: what PostgreSQL alone can write of each scenario on this machine, with one
/// connection (as the receiver's one writer) and with two.
async fn ceilings() {
    println!("\nceiling: PostgreSQL alone writing the same rows, {CEILING_BATCH} notifications per transaction, for {CEILING_SECS} s (no HTTP, no reads, no guards)");
    println!(
        "{:<10} {:>11} {:>10} {:>14}",
        "scenario", "connections", "notif./s", "CPU µs/notif."
    );
    for scenario in SCENARIOS {
        for connections in [1, 2] {
            let store = fresh("postgres").await;
            migrate(&store.url).await;
            let (rate, cpu) = ceiling(&store.url, scenario.name, connections).await;
            drop_store(store).await;
            println!(
                "{:<10} {connections:>11} {rate:>10.0} {cpu:>14.0}",
                scenario.name
            );
        }
    }
}

// One thread for the load generator (and the raw inserts, which it drives the same way): on two
// cores it should not take more than one from the server and the database.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    // `RUNBOOK_BENCH_CLIENTS=8,64,256` measures other numbers of clients.
    let client_counts: Vec<usize> = std::env::var("RUNBOOK_BENCH_CLIENTS").map_or_else(
        |_| CLIENTS.to_vec(),
        |list| {
            list.split(',')
                .filter_map(|c| c.trim().parse().ok())
                .collect()
        },
    );
    println!("webhook ingest: {} notifications from {client_counts:?} clients, one alert each, each alert recording its run (workers off)", *N);
    println!("raw: the same rows (a queued run and its command), one transaction per notification, same clients (SQLite: synchronous=FULL)\n");
    println!(
        "{:<9} {:<10} {:>7} {:>10} {:>8} {:>8} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}  CPU µs/notification: server / PostgreSQL / client  steal",
        "backend",
        "scenario",
        "clients",
        "runbook/s",
        "p50 ms",
        "p99 ms",
        "raw/s",
        "ratio",
        "@1k p50",
        "@1k p99",
        "idle RSS",
        "load RSS",
        "ready",
    );
    let only = std::env::var("RUNBOOK_BENCH_ONLY").ok();
    for backend in ["sqlite", "postgres"] {
        if only.as_deref().is_some_and(|o| o != backend) {
            continue;
        }
        for &clients in &client_counts {
            let raw_store = fresh(backend).await;
            let raw = raw_rate(backend, &raw_store.url, clients).await;
            drop_store(raw_store).await;
            for scenario in SCENARIOS {
                measure(backend, scenario, clients, raw).await;
            }
        }
    }
    println!(
        "\nratio: runbook / raw; @1k: latency at a fixed {} notifications/s for {RATE_SECS} s; ready: start to /readyz 200 on an existing store",
        *RATE
    );
    println!("steal: the machine's CPU time the hypervisor gave to other guests during the flood (/proc/stat); above a few %, the host slowed the measurement");
    if only.as_deref() != Some("sqlite") {
        ceilings().await;
    }
}

async fn measure(backend: &str, scenario: Scenario, clients: usize, raw: f64) {
    let store = fresh(backend).await;
    let server = serve(&store.url, scenario).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id();
    let idle = proc_mib(pid, "VmRSS:");
    let starts_at = "2026-11-29T03:00:00Z";
    let cpu = |pid| {
        [
            cpu_secs(pid),
            cpu_secs_of("postgres"),
            cpu_secs(std::process::id()),
        ]
    };
    let before = cpu(pid);
    let ticks = cpu_ticks();
    let load = flood(&server.base, clients, 0, *N, starts_at, scenario.playbooks).await;
    let steal = steal_pct(ticks, cpu_ticks());
    let after = cpu(pid);
    // CPU per notification of the server, PostgreSQL's backends and this load generator.
    let per = |i: usize| (after[i] - before[i]) * 1e6 / *N as f64;
    let fixed = steady(&server.base, *N, starts_at, scenario.playbooks).await;
    let peak = proc_mib(pid, "VmHWM:");
    let ready = server.ready;
    stop(server.child);
    let runs = count(&store.url, "SELECT COUNT(*) AS n FROM runbook_runs").await;
    let expected = (*N + (*RATE * RATE_SECS) as usize) as i64;
    assert_eq!(
        load.failed + fixed.failed,
        0,
        "{backend}: answers that were not 2xx"
    );
    assert_eq!(
        runs, expected,
        "{backend}: every notification records one run"
    );
    drop_store(store).await;
    println!(
        "{backend:<9} {:<10} {clients:>7} {:>10.0} {:>8.1} {:>8.1} {:>10.0} {:>6.2}x {:>9.1} {:>9.1} {:>5.1} MiB {:>5.1} MiB {:>6.0} ms  {:>4.0} / {:>4.0} / {:>4.0}  {:>5.1}%",
        scenario.name,
        load.per_sec,
        load.percentile(0.5),
        load.percentile(0.99),
        raw,
        load.per_sec / raw,
        fixed.percentile(0.5),
        fixed.percentile(0.99),
        idle,
        peak,
        ready.as_secs_f64() * 1000.0,
        per(0),
        per(1),
        per(2),
        steal,
    );
}
