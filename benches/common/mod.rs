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
