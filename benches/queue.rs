//! Queue and outbox throughput, measured side by side on the same database in one run.
//!
//! For each backend (SQLite file, PostgreSQL): 20,000 commands with a no-op handler, claimed and
//! completed by `runbook serve` (the real binary, in its own process, so its peak RSS is its own)
//! at batch sizes 1, 20, 100 and 500, with entity locks (the default) and without
//! (`exclusive: false`), next to two raw SQL loops on a pool opened the same way as runbook's
//! ([`Db::connect`]: the same pings and pragmas): "raw" claims a batch with `UPDATE ... WHERE id
//! IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n) RETURNING id` and completes it by id array, two
//! commits a batch; "raw locked" does the same work as runbook's locked path: it also takes each
//! claimed command's entity lock (the same `work_state` upsert) and releases it with the
//! completion. On PostgreSQL, graphile-worker 0.17.3 with its batching on.
//!
//! Every configuration runs `RUNBOOK_BENCH_ROUNDS` times (default 3), interleaved (each round
//! runs every configuration once), so a slow moment of this shared machine hits them alike; the
//! table prints medians with min–max, and ratios taken within a round. The load average is
//! printed at the start and the end. Then outbox events per second delivered to the broker next
//! to a raw rdkafka producer sending the same messages. Run it with `scripts/bench queue` (which
//! starts the services); `RUNBOOK_BENCH_ONLY=sqlite|postgres|outbox` and
//! `RUNBOOK_BENCH_BATCHES=100,500` narrow it, `RUNBOOK_BENCH_BIN` measures another build of
//! runbook (the one to compare with) with the same harness.

use std::{
    collections::HashMap,
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
#[path = "raw/mod.rs"]
mod raw;

use common::{drop_store, fresh, proc_mib, runbook_bin};

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
    let mut child = Command::new(runbook_bin())
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

/// What one measurement runs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    /// runbook's workers, every command holding its entity's lock (the default).
    Locked,
    /// runbook's workers, `exclusive: false`.
    Unlocked,
    /// The raw loop taking and releasing the same locks.
    RawLocked,
    Raw,
}

const KINDS: [Kind; 4] = [Kind::Locked, Kind::RawLocked, Kind::Unlocked, Kind::Raw];

/// One measurement on a fresh store: (commands/s, runbook's peak RSS in MiB or NaN).
async fn measure(backend: &str, batch: u32, kind: Kind) -> (f64, f64) {
    let store = fresh(backend).await;
    let out = match kind {
        Kind::Locked => runbook_rate(&store.url, batch, true).await,
        Kind::Unlocked => runbook_rate(&store.url, batch, false).await,
        Kind::RawLocked => (raw::rate(&store.url, batch, true).await, f64::NAN),
        Kind::Raw => (raw::rate(&store.url, batch, false).await, f64::NAN),
    };
    drop_store(store).await;
    out
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

/// `median× (min–max)` of ratios.
fn ratio_cell(v: &[f64]) -> String {
    let (lo, hi) = range(v);
    format!("{:.2}× ({lo:.2}–{hi:.2})", median(v))
}

/// `median (min–max)` of rates.
fn rate_cell(v: &[f64]) -> String {
    let (lo, hi) = range(v);
    format!("{:.0} ({lo:.0}–{hi:.0})", median(v))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn backend_name(backend: &str) -> &'static str {
    if backend == "sqlite" {
        "SQLite"
    } else {
        "PostgreSQL"
    }
}

type Rates<'a> = HashMap<(&'a str, u32, Kind), Vec<f64>>;

/// Each round's `a` at `batch` over the same round's `b` at `b_batch`.
fn per_round(rates: &Rates, backend: &str, batch: u32, a: Kind, b: Kind, b_batch: u32) -> Vec<f64> {
    let (x, y) = (&rates[&(backend, batch, a)], &rates[&(backend, b_batch, b)]);
    x.iter().zip(y).map(|(x, y)| x / y).collect()
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let only = std::env::var("RUNBOOK_BENCH_ONLY").ok();
    let rounds: usize = std::env::var("RUNBOOK_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let batches: Vec<u32> = std::env::var("RUNBOOK_BENCH_BATCHES")
        .map(|b| {
            b.split(',')
                .map(|x| {
                    x.trim()
                        .parse()
                        .expect("RUNBOOK_BENCH_BATCHES: whole numbers")
                })
                .collect()
        })
        .unwrap_or_else(|_| BATCHES.to_vec());
    // RUNBOOK_BENCH_ONLY=sqlite|postgres|outbox narrows a run while tuning.
    let backends: Vec<&str> = ["sqlite", "postgres"]
        .into_iter()
        .filter(|b| only.as_deref().is_none_or(|o| o == *b))
        .collect();
    println!("{N} commands, no-op handler, workerConcurrency {CONCURRENCY}; commands/s (higher is better)");
    println!(
        "{rounds} rounds, every configuration once a round; load average at the start: {}",
        load_average()
    );
    println!("runbook: commands hold entity locks (the default); unlocked: `exclusive: false`");
    println!("raw: claim by id, complete by ids; raw locked: the same, taking and releasing the same entity locks\n");

    let mut rates: Rates = HashMap::new();
    let mut rss: HashMap<(&str, u32), f64> = HashMap::new();
    let mut gw: Vec<(f64, f64)> = Vec::new();
    for round in 1..=rounds {
        for &backend in &backends {
            for &batch in &batches {
                for kind in KINDS {
                    let (rate, mib) = measure(backend, batch, kind).await;
                    eprintln!("round {round} {backend} batch {batch} {kind:?}: {rate:.0}/s");
                    rates.entry((backend, batch, kind)).or_default().push(rate);
                    if mib.is_finite() {
                        let peak = rss.entry((backend, batch)).or_insert(0.0);
                        *peak = peak.max(mib);
                    }
                }
            }
            if backend == "postgres" {
                if let Some(g) = graphile_rate().await {
                    eprintln!("round {round} graphile-worker: {:.0}/s", g.0);
                    gw.push(g);
                }
            }
        }
    }

    // Ratios are taken within a round, whose configurations ran a minute apart.
    println!("| backend | batch | runbook/s | raw locked/s | runbook / raw locked | unlocked/s | raw/s | unlocked / raw | runbook / raw | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &backend in &backends {
        for &batch in &batches {
            let r = |k| &rates[&(backend, batch, k)];
            let ratio = |a, b| ratio_cell(&per_round(&rates, backend, batch, a, b, batch));
            println!(
                "| {} | {batch} | {} | {} | {} | {} | {} | {} | {} | {:.1} MiB |",
                backend_name(backend),
                rate_cell(r(Kind::Locked)),
                rate_cell(r(Kind::RawLocked)),
                ratio(Kind::Locked, Kind::RawLocked),
                rate_cell(r(Kind::Unlocked)),
                rate_cell(r(Kind::Raw)),
                ratio(Kind::Unlocked, Kind::Raw),
                ratio(Kind::Locked, Kind::Raw),
                rss.get(&(backend, batch)).copied().unwrap_or(f64::NAN),
            );
        }
    }
    println!("ratios: median (min–max) of the rounds' own ratios; rates: median (min–max)");
    println!();
    if backends.contains(&"postgres") {
        postgres_against_peers(&rates, &batches, &gw);
    }
    println!("load average at the end: {}", load_average());
    println!();
    if only.is_none() || only.as_deref() == Some("outbox") {
        outbox().await;
    }
}

/// PostgreSQL at each batch against the raw loop at batch 100 (claim-100) and graphile-worker,
/// round by round.
fn postgres_against_peers(rates: &Rates, batches: &[u32], gw: &[(f64, f64)]) {
    let gw_rates: Vec<f64> = gw.iter().map(|g| g.0).collect();
    let vs_gw = |kind, batch| -> String {
        let ours = &rates[&("postgres", batch, kind)];
        if gw_rates.len() != ours.len() {
            return "not measured".into();
        }
        let v: Vec<f64> = ours.iter().zip(&gw_rates).map(|(x, g)| x / g).collect();
        ratio_cell(&v)
    };
    println!("PostgreSQL against the raw loop at batch 100 (claim-100) and graphile-worker, ratios per round:");
    println!("| batch | runbook / raw claim-100 | unlocked / raw claim-100 | runbook / graphile-worker | unlocked / graphile-worker |");
    println!("|---:|---:|---:|---:|---:|");
    for &batch in batches {
        let vs_raw = |kind| {
            if batches.contains(&100) {
                ratio_cell(&per_round(rates, "postgres", batch, kind, Kind::Raw, 100))
            } else {
                "not measured".into()
            }
        };
        println!(
            "| {batch} | {} | {} | {} | {} |",
            vs_raw(Kind::Locked),
            vs_raw(Kind::Unlocked),
            vs_gw(Kind::Locked, batch),
            vs_gw(Kind::Unlocked, batch),
        );
    }
    println!();
    if gw.is_empty() {
        println!("graphile-worker: not measured (see above)");
    } else {
        let mib: Vec<f64> = gw.iter().map(|g| g.1).collect();
        println!(
            "graphile-worker 0.17.3 (localQueue 500, batch delays 0, concurrency {CONCURRENCY}): {} jobs/s, peak RSS {:.1} MiB",
            rate_cell(&gw_rates),
            range(&mib).1
        );
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
