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
//! `cargo bench --bench ingest` with PostgreSQL on `RUNBOOK_TEST_PG`.

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

use common::{drop_store, fresh, proc_mib};

/// Notifications per throughput measurement.
const N: usize = 4_000;
/// Concurrent clients, for runbook and the raw inserts alike: a few, as one Alertmanager pair
/// sends, and many, as a storm from several sends.
const CLIENTS: [usize; 2] = [8, 64];
/// The fixed rate of the latency measurement, and for how long.
const RATE: u64 = 1_000;
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
    let db = Db::connect(url, false, 2).await.unwrap();
    db.migrate().await.unwrap();
    db.close().await;
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args([
            "--store",
            url,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-workers",
        ])
        .current_dir(dir.path())
        .env("RUNBOOK_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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

/// Posts `n` notifications, numbered from `first`, from `CLIENTS` clients as fast as answers come.
async fn flood(
    base: &str,
    clients: usize,
    first: usize,
    n: usize,
    starts_at: &str,
    playbooks: usize,
) -> Load {
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(first));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (client, next, url, starts_at) = (
            client.clone(),
            next.clone(),
            format!("{base}/api/webhooks/alertmanager"),
            starts_at.to_owned(),
        );
        tasks.spawn(async move {
            let (mut lat, mut failed) = (Vec::new(), 0);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= first + n {
                    break;
                }
                let t = Instant::now();
                let ok = client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .json(&notification(i, &starts_at, playbooks))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
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

/// Posts at a fixed rate, each request on its own task (so a slow answer does not delay the next).
async fn steady(base: &str, first: usize, starts_at: &str, playbooks: usize) -> Load {
    let client = reqwest::Client::new();
    let url = format!("{base}/api/webhooks/alertmanager");
    let total = (RATE * RATE_SECS) as usize;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in first..first + total {
        tick.tick().await;
        let (client, url, body) = (
            client.clone(),
            url.clone(),
            notification(i, starts_at, playbooks),
        );
        tasks.spawn(async move {
            let t = Instant::now();
            let ok = client
                .post(&url)
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            (t.elapsed(), ok)
        });
    }
    let mut load = Load {
        per_sec: 0.0,
        latencies: Vec::new(),
        failed: 0,
    };
    while let Some(r) = tasks.join_next().await {
        let (lat, ok) = r.unwrap();
        load.latencies.push(lat);
        load.failed += usize::from(!ok);
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
/// the alert, its run key, the run record and the run's queue command.
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
        for _ in 0..clients {
            let (pool, next) = (pool.clone(), next.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= N {
                        break;
                    }
                    raw_sqlite(&pool, i).await;
                }
            });
        }
    } else {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(clients as u32)
            .connect(url)
            .await
            .unwrap();
        for _ in 0..clients {
            let (pool, next) = (pool.clone(), next.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= N {
                        break;
                    }
                    raw_pg(&pool, i).await;
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    N as f64 / started.elapsed().as_secs_f64()
}

fn raw_rows(i: usize) -> (String, Json, Json, Json) {
    let body = notification(i, "2026-11-29T03:00:00Z", 1);
    let alert = body["alerts"][0].clone();
    let fingerprint = alert["fingerprint"].as_str().unwrap().to_owned();
    let outcomes = json!([{ "fingerprint": fingerprint, "outcome": "started",
        "playbooks": [{ "playbook": "ingest", "outcome": "started" }] }]);
    let payload = json!({ "playbook": "ingest", "params": {}, "trigger": { "kind": "alert",
        "fingerprint": fingerprint }, "alert": alert, "alerts": [alert] });
    (fingerprint, alert, outcomes, payload)
}

async fn raw_sqlite(pool: &sqlx::SqlitePool, i: usize) {
    const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
    let (fp, alert, outcomes, payload) = raw_rows(i);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query(&format!("INSERT INTO runbook_alert_notifications (received_at, receiver, status, group_key, external_url, alerts, outcomes) VALUES ({NOW}, 'runbook', 'firing', ?1, 'http://alertmanager:9093', 1, ?2)"))
        .bind(format!("k{i}")).bind(outcomes.to_string()).execute(&mut *tx).await.unwrap();
    sqlx::query(&format!("INSERT INTO runbook_alerts (fingerprint, starts_at, alertname, labels, annotations, status, generator_url, first_received_at, last_received_at, matched) VALUES (?1, '2026-11-29T03:00:00Z', 'IngestBench', ?2, ?3, 'firing', 'http://prometheus:9090/graph', {NOW}, {NOW}, 1)"))
        .bind(&fp).bind(alert["labels"].to_string()).bind(alert["annotations"].to_string()).execute(&mut *tx).await.unwrap();
    let command: i64 = sqlx::query_scalar("INSERT INTO command_queue (entity, entity_id, command_type, priority, payload) VALUES ('runbook', 'ingest', 'runbook.run', 5, ?1) RETURNING id")
        .bind(payload.to_string()).fetch_one(&mut *tx).await.unwrap();
    let run: i64 = sqlx::query_scalar("INSERT INTO runbook_runs (playbook, trigger, params, status, command_id) VALUES ('ingest', ?1, '{}', 'queued', ?2) RETURNING id")
        .bind(payload["trigger"].to_string()).bind(command).fetch_one(&mut *tx).await.unwrap();
    sqlx::query(&format!("INSERT INTO runbook_alert_runs (playbook, fingerprint, starts_at, kind, run_id, decided_at) VALUES ('ingest', ?1, '2026-11-29T03:00:00Z', 'firing', ?2, {NOW})"))
        .bind(&fp).bind(run).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

async fn raw_pg(pool: &sqlx::PgPool, i: usize) {
    let (fp, alert, outcomes, payload) = raw_rows(i);
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO runbook_alert_notifications (received_at, receiver, status, group_key, external_url, alerts, outcomes) VALUES (NOW(), 'runbook', 'firing', $1, 'http://alertmanager:9093', 1, $2::jsonb)")
        .bind(format!("k{i}")).bind(outcomes.to_string()).execute(&mut *tx).await.unwrap();
    sqlx::query("INSERT INTO runbook_alerts (fingerprint, starts_at, alertname, labels, annotations, status, generator_url, first_received_at, last_received_at, matched) VALUES ($1, '2026-11-29T03:00:00Z', 'IngestBench', $2::jsonb, $3::jsonb, 'firing', 'http://prometheus:9090/graph', NOW(), NOW(), TRUE)")
        .bind(&fp).bind(alert["labels"].to_string()).bind(alert["annotations"].to_string()).execute(&mut *tx).await.unwrap();
    let command: i64 = sqlx::query_scalar("INSERT INTO command_queue (entity, entity_id, command_type, priority, payload) VALUES ('runbook', 'ingest', 'runbook.run', 5, $1::jsonb) RETURNING id")
        .bind(payload.to_string()).fetch_one(&mut *tx).await.unwrap();
    let run: i64 = sqlx::query_scalar("INSERT INTO runbook_runs (playbook, trigger, params, status, command_id) VALUES ('ingest', $1::jsonb, '{}'::jsonb, 'queued', $2) RETURNING id")
        .bind(payload["trigger"].to_string()).bind(command).fetch_one(&mut *tx).await.unwrap();
    sqlx::query("INSERT INTO runbook_alert_runs (playbook, fingerprint, starts_at, kind, run_id, decided_at) VALUES ('ingest', $1, '2026-11-29T03:00:00Z', 'firing', $2, NOW())")
        .bind(&fp).bind(run).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::main]
async fn main() {
    println!("webhook ingest: {N} notifications from {CLIENTS:?} clients, one alert each, each alert recording its run (workers off)");
    println!("raw: the same rows (a queued run and its command), one transaction per notification, same clients (SQLite: synchronous=FULL)\n");
    println!(
        "{:<9} {:<10} {:>7} {:>10} {:>8} {:>8} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
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
        "ready"
    );
    let only = std::env::var("RUNBOOK_BENCH_ONLY").ok();
    for backend in ["sqlite", "postgres"] {
        if only.as_deref().is_some_and(|o| o != backend) {
            continue;
        }
        for clients in CLIENTS {
            let raw_store = fresh(backend).await;
            let raw = raw_rate(backend, &raw_store.url, clients).await;
            drop_store(raw_store).await;
            for scenario in SCENARIOS {
                measure(backend, scenario, clients, raw).await;
            }
        }
    }
    println!("\nratio: runbook / raw; @1k: latency at a fixed {RATE} notifications/s for {RATE_SECS} s; ready: start to /readyz 200 on an existing store");
}

async fn measure(backend: &str, scenario: Scenario, clients: usize, raw: f64) {
    let store = fresh(backend).await;
    let server = serve(&store.url, scenario).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id();
    let idle = proc_mib(pid, "VmRSS:");
    let starts_at = "2026-11-29T03:00:00Z";
    let load = flood(&server.base, clients, 0, N, starts_at, scenario.playbooks).await;
    let fixed = steady(&server.base, N, starts_at, scenario.playbooks).await;
    let peak = proc_mib(pid, "VmHWM:");
    let ready = server.ready;
    stop(server.child);
    let runs = count(&store.url, "SELECT COUNT(*) AS n FROM runbook_runs").await;
    let expected = (N + (RATE * RATE_SECS) as usize) as i64;
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
        "{backend:<9} {:<10} {clients:>7} {:>10.0} {:>8.1} {:>8.1} {:>10.0} {:>6.2}x {:>9.1} {:>9.1} {:>5.1} MiB {:>5.1} MiB {:>6.0} ms",
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
    );
}
