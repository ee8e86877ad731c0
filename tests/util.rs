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

    /// The whole of stdout as one JSON document (`runs show -o json`, `queue stats -o json`, ...).
    pub fn json(&self) -> Json {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{self:?}"))
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

    /// The binary, run in this folder with this workdir's environment and none of the caller's
    /// `RUNBOOK_*` settings.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runbook"));
        cmd.current_dir(self.path());
        for var in [
            "RUNBOOK_CONFIG",
            "RUNBOOK_RUNBOOKS",
            "RUNBOOK_STORE",
            "RUNBOOK_LOG_FORMAT",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let out = self
            .command()
            .args(args)
            .output()
            .expect("run the runbook binary");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}", self.path().join("runbook.db").display())
    }

    /// Creates and migrates the store at `url`, as the first command that writes to it does
    /// (a command that only reads a store never creates one).
    pub fn create_store(&self, url: &str) {
        let url = url.to_owned();
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let db = runbook::store::Db::connect(&url, false, 2).await.unwrap();
                db.migrate().await.unwrap();
                db.close().await;
            })
        })
        .join()
        .unwrap();
    }

    /// `runbook --store STORE queue enqueue ...`, which must succeed.
    pub fn enqueue(&self, store: &str, entity: &str, id: &str, ty: &str, payload: &str) {
        let out = self.run(&[
            "--store",
            store,
            "queue",
            "enqueue",
            "--entity",
            entity,
            "--entity-id",
            id,
            "--type",
            ty,
            "--payload",
            payload,
        ]);
        assert_eq!(out.code, 0, "{out:?}");
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
        self.serve_at(global, "127.0.0.1:0")
    }

    /// Starts `runbook serve` listening on `listen` (a fixed address survives a restart).
    pub fn serve_at(&self, global: &[&str], listen: &str) -> Server {
        use std::io::{BufRead, BufReader};
        let log = self.path().join(format!("serve-{}.log", fastrand::u32(..)));
        let mut cmd = self.command();
        cmd.args(global)
            .args(["serve", "--listen", listen])
            .env("RUNBOOK_LOG", "info");
        // A workdir's own RUNBOOK_LOG wins over the default.
        if let Some((k, v)) = self.env.iter().rev().find(|(k, _)| k == "RUNBOOK_LOG") {
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

    /// `GET /metrics`, which must answer 200.
    pub async fn metrics(&self) -> String {
        let (status, text) = get_text(&format!("{}/metrics", self.base), None).await;
        assert_eq!(status, 200, "{text}");
        text
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

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// Polls the one integer `sql` returns until `ok` holds for it, or panics with `what` after `secs`.
pub async fn until_scalar(
    secs: u64,
    what: &str,
    db: &runbook::store::Db,
    sql: &str,
    ok: impl Fn(i64) -> bool,
) {
    let ok = &ok;
    eventually(secs, &format!("{what} ({sql})"), || async move {
        ok(scalar(db, sql).await).then_some(())
    })
    .await
}

/// A connection to a store by URL (SQLite file or PostgreSQL), for assertions.
pub async fn store(url: &str) -> runbook::store::Db {
    runbook::store::Db::connect(url, false, 2).await.unwrap()
}

/// The rows of a query, as JSON objects.
pub async fn rows(db: &runbook::store::Db, sql: &str) -> Vec<Json> {
    db.sql(sql, vec![])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .rows
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

/// One HTTP call, with a bearer token when given and a JSON body when given: the status and the
/// body's text.
pub async fn send(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Json>,
) -> (u16, String) {
    let mut req = reqwest::Client::new().request(method.clone(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, text)
}

/// The body as JSON, or its text as a JSON string when it is not JSON (so it shows in messages).
fn json_or_text(text: String) -> Json {
    serde_json::from_str(&text).unwrap_or(Json::String(text))
}

pub async fn get_text(url: &str, token: Option<&str>) -> (u16, String) {
    send(reqwest::Method::GET, url, token, None).await
}

pub async fn get_json(url: &str, token: Option<&str>) -> (u16, Json) {
    let (status, text) = get_text(url, token).await;
    (status, json_or_text(text))
}

pub async fn post_json(url: &str, token: Option<&str>, body: &Json) -> (u16, Json) {
    let (status, text) = send(reqwest::Method::POST, url, token, Some(body)).await;
    (status, json_or_text(text))
}

/// A POST without a body.
pub async fn post_empty(url: &str, token: Option<&str>) -> (u16, Json) {
    let (status, text) = send(reqwest::Method::POST, url, token, None).await;
    (status, json_or_text(text))
}

pub async fn delete_json(url: &str, token: Option<&str>) -> (u16, Json) {
    let (status, text) = send(reqwest::Method::DELETE, url, token, None).await;
    (status, json_or_text(text))
}

/// Serves `app` on a free loopback port for the rest of the test; returns `http://127.0.0.1:PORT`.
pub async fn listen(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A run record's `error` contains `needle`.
pub fn assert_run_error(run: &Json, needle: &str) {
    let error = run["error"]
        .as_str()
        .unwrap_or_else(|| panic!("the run has no error: {run}"));
    assert!(error.contains(needle), "error without `{needle}`: {run}");
}

/// Adds `n` finished runs of a playbook `filler`, with command ids from 1,000,000,001 on: the runs
/// of a store that has been running a while.
pub async fn filler_runs(db: &runbook::store::Db, n: i64) {
    db.sql(
        &format!(
            "INSERT INTO runbook_runs (playbook, trigger, params, status, command_id, finished_at) \
             SELECT 'filler', '{{}}', '{{}}', 'succeeded', 1000000000 + i, NOW() \
             FROM generate_series(1, {n}) AS i"
        ),
        vec![],
    )
    .await
    .unwrap();
}

/// The rows of `table` that whole-table scans read on PostgreSQL (a connection's statistics are
/// written as it ends).
pub async fn seq_scanned(db: &runbook::store::Db, table: &str) -> i64 {
    scalar(
        db,
        &format!(
            "SELECT COALESCE(seq_tup_read, 0) AS n FROM pg_stat_user_tables WHERE relname = '{table}'"
        ),
    )
    .await
}
