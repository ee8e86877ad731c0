//! A soak: `runbook serve` (the real binary, workers on, on PostgreSQL; publishing to Kafka when
//! `RUNBOOK_TEST_KAFKA` names a broker, to the log otherwise) takes a steady rate of Alertmanager
//! notifications and of queued commands for `RUNBOOK_SOAK_SECS` seconds (default 3600), and the
//! process is sampled at the start, every `RUNBOOK_SOAK_EVERY` seconds (default 300) and at the
//! end: its RSS, its open file descriptors, and in that window the p50/p99 latency of a
//! notification (request to 2xx answer, its run recorded) and of a command (enqueued to completed,
//! from the store's own timestamps), with how many of each went through and how many runs and
//! commands were still open. Growth of RSS or descriptors from one sample to the next, with the
//! load unchanged, is what a leak looks like.
//!
//! Rates: `RUNBOOK_SOAK_ALERTS` notifications/s (default 20, each a new alert whose run executes)
//! and `RUNBOOK_SOAK_COMMANDS` commands/s (default 100, over 50 entities). Run it with
//! `scripts/bench soak` (which starts the services) or `cargo bench --bench soak` with PostgreSQL
//! on `RUNBOOK_TEST_PG`.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use runbook::{
    store::Db,
    stream::queue::{enqueue, NewCommand},
};
use serde_json::{json, Value as Json};

#[path = "common/mod.rs"]
mod common;

use common::{drop_store, fresh, proc_mib};

const TOKEN: &str = "soak-receiver-token-0123456789";

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not `{v}`")),
        Err(_) => default,
    }
}

fn start(url: &str, dir: &std::path::Path) -> (Child, String) {
    let kafka = std::env::var("RUNBOOK_TEST_KAFKA")
        .map(|b| format!("kafka: {{ brokers: \"{b}\" }}\n"))
        .unwrap_or_default();
    let config = format!(
        "auth:\n  receiver: {{ token: {TOKEN} }}\n{kafka}streaming:\n  poll_interval: 50ms\n  handlers:\n    soak.touch: {{ simulate: {{ latency: 2ms }} }}\n"
    );
    std::fs::write(dir.join("runbook.yaml"), config).unwrap();
    std::fs::create_dir_all(dir.join("runbooks")).unwrap();
    std::fs::write(
        dir.join("runbooks/soak.yaml"),
        "name: soak\ndescription: Matches soak alerts.\non:\n  alerts:\n    - alertname: SoakAlert\nguard: { concurrency: 1000000 }\nsteps:\n  - id: look\n    sql: SELECT COUNT(*) AS n FROM command_queue WHERE status = 'pending'\n  - id: ok\n    assert: \"steps.look.rows | length == 1\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args(["--store", url, "serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env("RUNBOOK_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
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
    std::thread::spawn(move || for _ in stdout.lines() {});
    (child, base)
}

fn notification(i: u64) -> Json {
    json!({
        "version": "4", "receiver": "runbook", "status": "firing",
        "groupKey": format!("{{}}:{{alertname=\"SoakAlert\", n=\"{i}\"}}"),
        "truncatedAlerts": 0, "externalURL": "http://alertmanager:9093",
        "groupLabels": { "alertname": "SoakAlert" },
        "commonLabels": { "alertname": "SoakAlert", "n": i.to_string() },
        "commonAnnotations": {},
        "alerts": [{
            "status": "firing",
            "labels": { "alertname": "SoakAlert", "n": i.to_string() },
            "annotations": { "summary": "soak" },
            "startsAt": "2026-11-29T03:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph",
        }]
    })
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Request-to-answer times of the notifications of the current window, in ms, and failures.
#[derive(Default)]
struct Window {
    alert_ms: Vec<f64>,
    failed: u64,
}

async fn scalar(db: &Db, sql: &str) -> f64 {
    let rows = db.sql(sql, vec![]).await.unwrap().rows;
    rows[0]["v"].as_f64().unwrap_or(f64::NAN)
}

/// One line of figures for the window that ends now.
async fn sample(
    label: &str,
    pid: u32,
    db: &Db,
    window: &Mutex<Window>,
    since_cmd: &mut i64,
    started: Instant,
) {
    let w = std::mem::take(&mut *window.lock().unwrap());
    let mut alert = w.alert_ms;
    alert.sort_by(f64::total_cmp);
    let cmd: Vec<f64> = db
        .sql(
            "SELECT id, EXTRACT(EPOCH FROM (completed_at - created_at)) * 1000 AS ms FROM command_queue \
             WHERE id > $1 AND status = 'completed' AND command_type = 'soak.touch' ORDER BY id",
            vec![json!(*since_cmd)],
        )
        .await
        .unwrap()
        .rows
        .iter()
        .map(|r| {
            *since_cmd = (*since_cmd).max(r["id"].as_i64().unwrap_or(0));
            r["ms"].as_f64().unwrap_or(f64::NAN)
        })
        .collect();
    let mut cmd = cmd;
    cmd.sort_by(f64::total_cmp);
    let open_runs = scalar(
        db,
        "SELECT COUNT(*)::float8 AS v FROM runbook_runs WHERE status IN ('queued', 'running')",
    )
    .await;
    let pending = scalar(
        db,
        "SELECT COUNT(*)::float8 AS v FROM command_queue WHERE status IN ('pending', 'processing')",
    )
    .await;
    let unsent = scalar(
        db,
        "SELECT COUNT(*)::float8 AS v FROM outbox_final WHERE sent_at IS NULL",
    )
    .await;
    println!(
        "{:<6} {:>7.0} {:>8.1} {:>5} {:>7} {:>8.1} {:>8.1} {:>5} {:>7} {:>8.1} {:>8.1} {:>7} {:>7} {:>7}",
        label,
        started.elapsed().as_secs_f64(),
        proc_mib(pid, "VmRSS:"),
        open_fds(pid),
        alert.len(),
        percentile(&alert, 0.50),
        percentile(&alert, 0.99),
        w.failed,
        cmd.len(),
        percentile(&cmd, 0.50),
        percentile(&cmd, 0.99),
        open_runs,
        pending,
        unsent,
    );
}

#[tokio::main]
async fn main() {
    let secs = env_u64("RUNBOOK_SOAK_SECS", 3600);
    let every = env_u64("RUNBOOK_SOAK_EVERY", 300).max(1);
    let alerts_per_sec = env_u64("RUNBOOK_SOAK_ALERTS", 20).max(1);
    let commands_per_sec = env_u64("RUNBOOK_SOAK_COMMANDS", 100).max(1);
    let store = fresh("postgres").await;
    let db = Db::connect(&store.url, false, 2).await.unwrap();
    db.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = start(&store.url, dir.path());
    let pid = child.id();
    let client = reqwest::Client::new();
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "soak: runbook serve on PostgreSQL ({}), {alerts_per_sec} notifications/s (each a run) and {commands_per_sec} commands/s for {secs} s, sampled every {every} s",
        if std::env::var("RUNBOOK_TEST_KAFKA").is_ok() { "events to Kafka" } else { "events to the log" }
    );
    println!("latency: notification = request to 2xx answer; command = enqueued to completed (store timestamps); each over the window since the previous line\n");
    println!(
        "{:<6} {:>7} {:>8} {:>5} {:>7} {:>8} {:>8} {:>5} {:>7} {:>8} {:>8} {:>7} {:>7} {:>7}",
        "when",
        "secs",
        "RSS MiB",
        "fds",
        "alerts",
        "p50 ms",
        "p99 ms",
        "fail",
        "cmds",
        "p50 ms",
        "p99 ms",
        "runs",
        "queued",
        "unsent"
    );

    let window = Arc::new(Mutex::new(Window::default()));
    let started = Instant::now();
    let mut since_cmd = 0i64;
    sample("start", pid, &db, &window, &mut since_cmd, started).await;

    let end = started + Duration::from_secs(secs);
    // Alerts: each request on its own task, so a slow answer does not delay the next.
    let alerts = {
        let (client, base, window) = (client.clone(), base.clone(), window.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / alerts_per_sec));
            let url = format!("{base}/api/webhooks/alertmanager");
            let mut i = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                i += 1;
                let (client, url, window, body) =
                    (client.clone(), url.clone(), window.clone(), notification(i));
                tokio::spawn(async move {
                    let t = Instant::now();
                    let ok = client
                        .post(&url)
                        .bearer_auth(TOKEN)
                        .timeout(Duration::from_secs(30))
                        .json(&body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    let mut w = window.lock().unwrap();
                    if ok {
                        w.alert_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        w.failed += 1;
                    }
                });
            }
        })
    };
    // Commands: enqueued in batches ten times a second, spread over 50 entities.
    let commands = {
        let url = store.url.clone();
        tokio::spawn(async move {
            let db = Db::connect(&url, false, 2).await.unwrap();
            let per_tick = (commands_per_sec / 10).max(1);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut n = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                let batch: Vec<NewCommand> = (0..per_tick)
                    .map(|_| {
                        n += 1;
                        NewCommand {
                            entity: "soak".into(),
                            entity_id: format!("e{}", n % 50),
                            command_type: "soak.touch".into(),
                            priority: 0,
                            payload: json!({ "n": n }),
                        }
                    })
                    .collect();
                if let Err(e) = enqueue(&db, &batch).await {
                    eprintln!("enqueue failed: {e}");
                }
            }
            db.close().await;
        })
    };

    let mut next = started + Duration::from_secs(every);
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        let label = format!("{}m", (next - started).as_secs() / 60);
        sample(&label, pid, &db, &window, &mut since_cmd, started).await;
        next += Duration::from_secs(every);
    }
    tokio::time::sleep_until(end.into()).await;
    let _ = alerts.await;
    let _ = commands.await;
    // Answers still in flight land in the last window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sample("end", pid, &db, &window, &mut since_cmd, started).await;
    println!("\npeak RSS {:.1} MiB (VmHWM)", proc_mib(pid, "VmHWM:"));

    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    db.close().await;
    drop_store(store).await;
}
