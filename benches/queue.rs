//! Queue and outbox throughput, measured side by side on the same database in one run.
//!
//! For each backend (SQLite file, PostgreSQL): 20,000 commands with a no-op handler, claimed and
//! completed by `runbook serve` (the real binary, in its own process, so its peak RSS is its own)
//! at batch sizes 1, 20, 100 and 500, next to the equivalent raw SQL (claim a batch with
//! `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n) RETURNING id`, complete by
//! id array, two commits a batch) and, on PostgreSQL, graphile-worker 0.17.3 with its batching on.
//! Then outbox events per second delivered to the broker next to a raw rdkafka producer sending
//! the same messages. Run it with `scripts/bench` (which starts the services).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rdkafka::{
    producer::{FutureProducer, FutureRecord},
    ClientConfig,
};
use runbook::{
    store::Db,
    stream::queue::{self, NewCommand},
};
use serde_json::json;

#[path = "common/mod.rs"]
mod common;

use common::{drop_store, fresh, proc_mib};

const N: usize = 20_000;
const BATCHES: [u32; 4] = [1, 20, 100, 500];
const CONCURRENCY: u32 = 10;

async fn fill(db: &Db) {
    let all: Vec<NewCommand> = (0..N)
        .map(|i| NewCommand {
            entity: "bench".into(),
            entity_id: i.to_string(),
            command_type: "bench.noop".into(),
            priority: 0,
            payload: json!({}),
        })
        .collect();
    for chunk in all.chunks(5000) {
        queue::enqueue(db, chunk).await.unwrap();
    }
    let _ = db.sql("ANALYZE command_queue", vec![]).await;
}

/// Steady-state rate from the store's own completion timestamps: the commands completed after
/// the first batch, over the time from the first batch's completion to the last one's. Process
/// start-up and the polling that detects the end stay out of it, for runbook and raw SQL alike.
async fn completion_rate(db: &Db, batch: u32) -> f64 {
    let sql = match db {
        Db::Postgres(_) => "SELECT EXTRACT(EPOCH FROM MAX(completed_at) - MIN(completed_at))::float8 AS span FROM command_queue",
        Db::Sqlite(_) => "SELECT (julianday(MAX(completed_at)) - julianday(MIN(completed_at))) * 86400.0 AS span FROM command_queue",
    };
    let span = db.sql(sql, vec![]).await.unwrap().rows[0]["span"]
        .as_f64()
        .unwrap();
    (N - batch as usize) as f64 / span.max(1e-3)
}

async fn unfinished(db: &Db) -> i64 {
    db.sql(
        "SELECT COUNT(*) AS n FROM command_queue WHERE status IN ('pending', 'processing')",
        vec![],
    )
    .await
    .unwrap()
    .rows[0]["n"]
        .as_i64()
        .unwrap()
}

/// Starts `runbook serve` on `url` with `config`; returns the child once it listens.
fn serve(url: &str, config: &str) -> (std::process::Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("runbook.yaml"), config).unwrap();
    std::fs::create_dir(dir.path().join("runbooks")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args(["--store", url, "serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("listening on"),
        "serve did not start: {line}"
    );
    (child, dir)
}

fn stop(mut child: std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// runbook's workers: (commands/s, peak RSS MiB).
async fn runbook_rate(url: &str, batch: u32, exclusive: bool) -> (f64, f64) {
    let db = Db::connect(url, false, 2).await.unwrap();
    db.migrate().await.unwrap();
    fill(&db).await;
    let config = format!(
        "streaming:\n  workerBatchSize: {batch}\n  workerConcurrency: {CONCURRENCY}\n  poll_interval: 10ms\n  handlers:\n    bench.noop: {{ noop: {{}}, exclusive: {exclusive} }}\n"
    );
    let (child, _dir) = serve(url, &config);
    while unfinished(&db).await > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss = proc_mib(child.id(), "VmHWM:");
    stop(child);
    let completed = db
        .sql(
            "SELECT COUNT(*) AS n FROM command_queue WHERE status = 'completed'",
            vec![],
        )
        .await
        .unwrap()
        .rows[0]["n"]
        .as_i64();
    assert_eq!(completed, Some(N as i64));
    let rate = completion_rate(&db, batch).await;
    db.close().await;
    (rate, rss)
}

/// The raw-SQL baseline on the same table: claim a batch, commit, complete by ids, commit.
async fn raw_rate(url: &str, batch: u32) -> f64 {
    let db = Db::connect(url, false, 2).await.unwrap();
    db.migrate().await.unwrap();
    db.sql("DELETE FROM command_queue", vec![]).await.unwrap();
    fill(&db).await;
    let mut done = 0usize;
    match &db {
        Db::Postgres(pool) => loop {
            let mut tx = pool.begin().await.unwrap();
            let ids: Vec<i64> = sqlx::query_scalar(
                "UPDATE command_queue SET status = 'processing', locked_by = 'raw', locked_until = NOW() + interval '30 seconds', \
                        attempts = attempts + 1 \
                 WHERE id IN (SELECT id FROM command_queue WHERE status = 'pending' AND run_at <= NOW() \
                              ORDER BY priority DESC, run_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id",
            )
            .bind(batch as i64)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
            if ids.is_empty() {
                break;
            }
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("UPDATE command_queue SET status = 'completed', completed_at = NOW(), updated_at = NOW() WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            done += ids.len();
        },
        Db::Sqlite(pool) => loop {
            let mut tx = pool.begin().await.unwrap();
            let ids: Vec<i64> = sqlx::query_scalar(
                "UPDATE command_queue SET status = 'processing', locked_by = 'raw', \
                        locked_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+30 seconds'), attempts = attempts + 1 \
                 WHERE id IN (SELECT id FROM command_queue WHERE status = 'pending' AND run_at <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                              ORDER BY priority DESC, run_at, id LIMIT ?1) RETURNING id",
            )
            .bind(batch as i64)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
            if ids.is_empty() {
                break;
            }
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(
                "UPDATE command_queue SET status = 'completed', completed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
                        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id IN (SELECT value FROM json_each(?1))",
            )
            .bind(json!(ids).to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
            done += ids.len();
        },
    }
    assert_eq!(done, N);
    let rate = completion_rate(&db, batch).await;
    db.close().await;
    rate
}

/// graphile-worker 0.17.3 through benches/graphile/bench.mjs: (jobs/s, peak RSS MiB).
async fn graphile_rate() -> Option<(f64, f64)> {
    let store = fresh("postgres").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/graphile/bench.mjs");
    let out = Command::new("node")
        .args([
            script,
            "--url",
            &store.url,
            "--jobs",
            &N.to_string(),
            "--concurrency",
            &CONCURRENCY.to_string(),
        ])
        .output();
    drop_store(store).await;
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "graphile-worker failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        Err(e) => {
            eprintln!("graphile-worker not run: {e}");
            return None;
        }
    };
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((
        line["jobs_per_sec"].as_f64()?,
        line["peak_rss_mib"].as_f64()?,
    ))
}

/// Outbox dispatch to the broker next to a raw producer: (runbook events/s, raw messages/s).
async fn outbox_rates(backend: &str, brokers: &str) -> (f64, f64) {
    let store = fresh(backend).await;
    let db = Db::connect(&store.url, false, 2).await.unwrap();
    db.migrate().await.unwrap();
    let topic = format!("bench-{backend}-{}", fastrand::u32(..));
    let payload =
        json!({ "command_id": 1, "entity": "bench", "result": { "ok": true } }).to_string();
    for chunk in (0..N).collect::<Vec<_>>().chunks(5000) {
        let rows: Vec<serde_json::Value> = chunk
            .iter()
            .map(|i| json!([i.to_string(), topic]))
            .collect();
        let (sql, arg) = match backend {
            "sqlite" => (
                "INSERT INTO outbox_final (entity, entity_id, event_type, topic, payload) \
                 SELECT 'bench', json_extract(value, '$[0]'), 'bench.done', json_extract(value, '$[1]'), $2 FROM json_each($1)",
                json!(rows).to_string(),
            ),
            _ => (
                "INSERT INTO outbox_final (entity, entity_id, event_type, topic, payload) \
                 SELECT 'bench', e->>0, 'bench.done', e->>1, $2::jsonb FROM jsonb_array_elements($1::jsonb) AS e",
                json!(rows).to_string(),
            ),
        };
        db.sql(sql, vec![json!(arg), json!(payload)]).await.unwrap();
    }
    let config = format!("kafka: {{ brokers: \"{brokers}\" }}\nstreaming:\n  workers: false\n  poll_interval: 10ms\n");
    let (child, _dir) = serve(&store.url, &config);
    let started = Instant::now();
    loop {
        let n = db
            .sql(
                "SELECT COUNT(*) AS n FROM outbox_final WHERE sent_at IS NULL",
                vec![],
            )
            .await
            .unwrap()
            .rows[0]["n"]
            .as_i64()
            .unwrap();
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ours = N as f64 / started.elapsed().as_secs_f64();
    stop(child);
    db.close().await;
    drop_store(store).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let raw_topic = format!("{topic}-raw");
    let started = Instant::now();
    let mut pending = Vec::with_capacity(N);
    for i in 0..N {
        let key = i.to_string();
        let record = FutureRecord::to(&raw_topic).key(&key).payload(&payload);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
    let raw = N as f64 / started.elapsed().as_secs_f64();
    (ours, raw)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    println!("{N} commands, no-op handler, workerConcurrency {CONCURRENCY}; commands/s (higher is better)");
    println!("runbook: commands hold entity locks (the default); unlocked: `exclusive: false`, the same work as the raw SQL\n");
    println!(
        "{:<9} {:>6} {:>10} {:>10} {:>10} {:>7} {:>7} {:>12}",
        "backend", "batch", "runbook/s", "unlocked/s", "raw SQL/s", "ratio", "ratio*", "peak RSS"
    );
    let mut best_pg_runbook: (f64, f64) = (0.0, 0.0);
    let only = std::env::var("RUNBOOK_BENCH_ONLY").ok();
    // RUNBOOK_BENCH_ONLY=sqlite|postgres|outbox narrows a run while tuning.
    let backends: Vec<&str> = ["sqlite", "postgres"]
        .into_iter()
        .filter(|b| only.as_deref().is_none_or(|o| o == *b))
        .collect();
    for &backend in &backends {
        for batch in BATCHES {
            let s1 = fresh(backend).await;
            let (ours, rss) = runbook_rate(&s1.url, batch, true).await;
            drop_store(s1).await;
            let s1 = fresh(backend).await;
            let (unlocked, rss2) = runbook_rate(&s1.url, batch, false).await;
            drop_store(s1).await;
            let s2 = fresh(backend).await;
            let raw = raw_rate(&s2.url, batch).await;
            drop_store(s2).await;
            if backend == "postgres" && unlocked > best_pg_runbook.0 {
                best_pg_runbook = (unlocked, rss2.max(rss));
            }
            println!(
                "{backend:<9} {batch:>6} {ours:>10.0} {unlocked:>10.0} {raw:>10.0} {:>6.2}x {:>6.2}x {:>8.1} MiB",
                ours / raw,
                unlocked / raw,
                rss.max(rss2)
            );
        }
    }
    println!("ratio: runbook / raw SQL; ratio*: unlocked / raw SQL");
    println!();
    if backends.contains(&"postgres") {
        graphile(best_pg_runbook).await;
    }
    if only.is_none() || only.as_deref() == Some("outbox") {
        outbox().await;
    }
}

async fn graphile(best_pg_runbook: (f64, f64)) {
    match graphile_rate().await {
        Some((gw, gw_rss)) => {
            println!("graphile-worker 0.17.3 (localQueue 500, batch delays 0, concurrency {CONCURRENCY}): {gw:.0} jobs/s, peak RSS {gw_rss:.1} MiB");
            println!(
                "runbook (unlocked) best on PostgreSQL vs graphile-worker: {:.2}x the throughput, {:.2}x the peak RSS",
                best_pg_runbook.0 / gw,
                best_pg_runbook.1 / gw_rss
            );
        }
        None => println!("graphile-worker: not measured (see above)"),
    }
    println!();
}

async fn outbox() {
    match std::env::var("RUNBOOK_TEST_KAFKA") {
        Ok(brokers) => {
            println!(
                "{:<9} {:>14} {:>14} {:>7}",
                "backend", "outbox ev/s", "raw rdkafka/s", "ratio"
            );
            for backend in ["sqlite", "postgres"] {
                let (ours, raw) = outbox_rates(backend, &brokers).await;
                println!("{backend:<9} {ours:>14.0} {raw:>14.0} {:>6.2}x", ours / raw);
            }
        }
        Err(_) => {
            println!("outbox: not measured (RUNBOOK_TEST_KAFKA is not set; run scripts/bench)")
        }
    }
}
