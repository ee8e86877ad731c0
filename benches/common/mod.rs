//! What the benchmarks share: a fresh store per measurement (a SQLite file in a temporary folder,
//! or a PostgreSQL database created on `RUNBOOK_TEST_PG` and dropped after) and a process's memory
//! read from /proc. Included by each benchmark with `#[path]` (a folder, so cargo does not take it for a benchmark of its own).

pub struct Store {
    pub url: String,
    cleanup: Option<String>,
    _dir: Option<tempfile::TempDir>,
}
fn pg_server() -> String {
    std::env::var("RUNBOOK_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub async fn fresh(backend: &str) -> Store {
    if backend == "sqlite" {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        return Store {
            url,
            cleanup: None,
            _dir: Some(dir),
        };
    }
    let server = pg_server();
    let name = format!("runbook_bench_{}", fastrand::u32(..));
    let admin = sqlx::PgPool::connect(&server).await.expect("PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let base = server.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
    Store {
        url: format!("{base}/{name}"),
        cleanup: Some(name),
        _dir: None,
    }
}

pub async fn drop_store(s: Store) {
    if let Some(name) = s.cleanup {
        let admin = sqlx::PgPool::connect(&pg_server()).await.unwrap();
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin)
            .await;
    }
}

/// The runbook binary measured: this build, or `RUNBOOK_BENCH_BIN`.
#[allow(dead_code)] // the queue and ingest benchmarks'
pub fn runbook_bin() -> String {
    std::env::var("RUNBOOK_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_runbook").into())
}

/// A field of /proc/PID/status (`VmRSS:`, `VmHWM:`) in MiB.
pub fn proc_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU time (user and system) that process `pid` has used so far, in seconds, from
/// /proc/PID/stat (in clock ticks of 1/100 s: USER_HZ on Linux).
#[allow(dead_code)] // the ingest benchmark's
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line; 12 and 13 after the name and state.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU time used so far by every running process whose command is `comm` (PostgreSQL's
/// backends, say), in seconds.
#[allow(dead_code)] // the ingest benchmark's
pub fn cpu_secs_of(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .map(cpu_secs)
        .sum()
}

/// The machine's CPU time so far from /proc/stat, in clock ticks: (all of it, the part the
/// hypervisor gave to other guests: "steal"). On a shared virtual machine, steal during a
/// measurement says the host, not the build, made it slow.
#[allow(dead_code)] // the ingest benchmark's
pub fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is counted in user already).
    let total = fields.iter().take(8).sum();
    (total, fields.get(7).copied().unwrap_or(0))
}

/// The share of the machine's CPU time stolen by the hypervisor between two [`cpu_ticks`], in %.
#[allow(dead_code)] // the ingest benchmark's
pub fn steal_pct(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.0.saturating_sub(before.0);
    let steal = after.1.saturating_sub(before.1);
    if total == 0 {
        return 0.0;
    }
    steal as f64 * 100.0 / total as f64
}
