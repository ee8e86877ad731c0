//! Shared helpers: a scratch folder per test, the binary run as a user runs it, and a fresh
//! PostgreSQL database per test.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value as Json;

/// A scratch folder with `runbooks/` and the binary run inside it.
pub struct Workdir {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The `--output json` lines.
    pub fn events(&self) -> Vec<Json> {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The final run record of `run --output json`.
    pub fn run(&self) -> Json {
        self.events()
            .into_iter()
            .rev()
            .find(|e| e["event"] == "run")
            .map(|e| e["run"].clone())
            .unwrap_or_else(|| {
                panic!(
                    "no run event in output\nstdout:\n{}\nstderr:\n{}",
                    self.stdout, self.stderr
                )
            })
    }
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Workdir {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("runbooks")).unwrap();
        Workdir {
            dir,
            env: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn playbook(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self.path().join("runbooks").join(format!("{name}.yaml"));
        std::fs::write(&p, yaml).unwrap();
        p
    }

    /// Copies a playbook shipped in `runbooks/`, with the repository's `runbook.yaml` it is validated against.
    pub fn shipped(&self, name: &str) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::copy(
            root.join(format!("runbooks/{name}.yaml")),
            self.path().join(format!("runbooks/{name}.yaml")),
        )
        .unwrap();
        std::fs::copy(root.join("runbook.yaml"), self.path().join("runbook.yaml")).unwrap();
    }

    pub fn config(&self, yaml: &str) {
        std::fs::write(self.path().join("runbook.yaml"), yaml).unwrap();
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runbook"));
        cmd.args(args).current_dir(self.path());
        for var in ["RUNBOOK_CONFIG", "RUNBOOK_RUNBOOKS", "RUNBOOK_STORE"] {
            cmd.env_remove(var);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run the runbook binary");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}", self.path().join("runbook.db").display())
    }
}

/// The PostgreSQL server the tests use (the test script exports it; the machine's default otherwise).
pub fn pg_server() -> String {
    std::env::var("RUNBOOK_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, empty database for one test; dropped when the guard goes.
pub struct PgDb {
    pub url: String,
    name: String,
}

impl PgDb {
    pub async fn new() -> PgDb {
        let server = pg_server();
        let name = format!("runbook_test_{}_{}", std::process::id(), fastrand::u64(..));
        let admin = sqlx::PgPool::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is required for this test ({server}): {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let base = server
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .unwrap_or(server);
        PgDb {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let server = pg_server();
        let name = self.name.clone();
        // Best effort, on a thread of its own because Drop cannot await.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(admin) = sqlx::PgPool::connect(&server).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                }
            })
        })
        .join();
    }
}

/// A `runbook serve` process in a workdir; stopped (SIGTERM) when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub base: String,
    pub log: PathBuf,
}

impl Workdir {
    /// Starts `runbook serve` with `args` before the subcommand and waits until it listens.
    pub fn serve(&self, global: &[&str]) -> Server {
        use std::io::{BufRead, BufReader};
        let log = self.path().join(format!("serve-{}.log", fastrand::u32(..)));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runbook"));
        cmd.args(global)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .current_dir(self.path());
        for var in ["RUNBOOK_CONFIG", "RUNBOOK_RUNBOOKS", "RUNBOOK_STORE"] {
            cmd.env_remove(var);
        }
        cmd.env("RUNBOOK_LOG", "info");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("start runbook serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "serve did not start: {line}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_owned();
        Server { child, base, log }
    }
}

impl Server {
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stop(&mut self) {
        unsafe_sigterm(self.child.id());
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some`, or panics with `what` after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A connection to a store by URL (SQLite file or PostgreSQL), for assertions.
pub async fn store(url: &str) -> runbook::store::Db {
    runbook::store::Db::connect(url, false, 2).await.unwrap()
}

/// One integer from a query.
pub async fn scalar(db: &runbook::store::Db, sql: &str) -> i64 {
    let r = db.sql(sql, vec![]).await.unwrap();
    let row = r.rows.into_iter().next().expect("a row");
    row.as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_i64()
        .unwrap_or_else(|| panic!("not an integer: {row}"))
}
