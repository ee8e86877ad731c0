//! `runbook serve` and `runbook run` under hostile or careless clients: two answers to one
//! approval at the same moment, connections that never send their headers, a body that never
//! ends, and a `runbook run` stopped by SIGTERM or SIGHUP.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;

use crate::util::{get_text, post_json, rows, scalar, store, until_scalar, PgDb, Workdir};

const ALICE: &str = "alice-token-hardening";
const BOB: &str = "bob-token-hardening";

/// Two operators, each with a token of their own; a small connection cap and short timeouts.
const CONFIG: &str = r#"
server: { max_connections: 8, header_read_timeout: 1s, request_timeout: 2s }
auth:
  tokens:
    - { name: alice, role: operator, token_env: TEST_ALICE_TOKEN }
    - { name: bob, role: operator, token_env: TEST_BOB_TOKEN }
"#;

fn workdir() -> Workdir {
    let w = Workdir::new()
        .env("TEST_ALICE_TOKEN", ALICE)
        .env("TEST_BOB_TOKEN", BOB);
    w.config(CONFIG);
    w
}

/// A run waiting for an answer at step `ask`, recorded as the approve step records it.
async fn waiting_run(db: &runbook::store::Db) -> i64 {
    let r = db
        .sql(
            "INSERT INTO runbook_runs (playbook, trigger, params, status, waiting_step) \
             VALUES ('gate', '{}', '{}', 'waiting_approval', 'ask') RETURNING id",
            vec![],
        )
        .await
        .unwrap();
    r.rows[0]["id"].as_i64().unwrap()
}

/// Alice approves and Bob rejects the same run at the same moment, many times over: each time
/// one answer is recorded and answered 200, the other is refused with 409 naming the first.
async fn the_first_answer_wins(store_url: &str) {
    let w = workdir();
    let server = w.serve(&["--store", store_url]);
    let db = store(store_url).await;
    for round in 0..25 {
        let id = waiting_run(&db).await;
        let url = format!("{}/api/runs/{id}/approve", server.base);
        let (yes, no) = (json!({}), json!({ "reject": true }));
        let (approve, reject) = tokio::join!(
            post_json(&url, Some(ALICE), &yes),
            post_json(&url, Some(BOB), &no)
        );
        let mut statuses = [approve.0, reject.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "{approve:?} {reject:?}");
        let (won, lost) = if approve.0 == 200 {
            (("approved", "api:alice"), &reject.1)
        } else {
            (("rejected", "api:bob"), &approve.1)
        };
        assert_eq!(lost["error"]["status"], 409, "{lost}");
        assert_eq!(lost["decided"]["decision"], won.0, "{lost}");
        assert_eq!(lost["decided"]["by"], won.1, "{lost}");
        assert!(lost["decided"]["at"].is_string(), "{lost}");
        let message = lost["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!("run {id} was already {} by {} at ", won.0, won.1)),
            "{lost}"
        );
        let recorded = rows(
            &db,
            &format!("SELECT decision, actor FROM runbook_approvals WHERE run_id = {id}"),
        )
        .await;
        assert_eq!(
            recorded,
            vec![json!({ "decision": won.0, "actor": won.1 })],
            "one answer recorded"
        );
        let run = rows(
            &db,
            &format!("SELECT status, waiting_step FROM runbook_runs WHERE id = {id}"),
        )
        .await;
        assert_eq!(
            run,
            vec![json!({ "status": "running", "waiting_step": null })],
            "the wait is over"
        );
        let audits =
            "SELECT COUNT(*) FROM runbook_audit WHERE op IN ('run_approved', 'run_rejected')";
        assert_eq!(
            scalar(&db, audits).await,
            round + 1,
            "one audit record a run"
        );
    }
}

#[tokio::test]
async fn approve_and_reject_at_once_one_wins_on_sqlite() {
    let w = Workdir::new();
    the_first_answer_wins(&w.sqlite_url()).await;
}

#[tokio::test]
async fn approve_and_reject_at_once_one_wins_on_postgres() {
    let pg = PgDb::new().await;
    the_first_answer_wins(&pg.url).await;
}

/// The file descriptors process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/fd: {e}"))
}

/// Many connections that never send a header once held a descriptor each, forever: enough of
/// them exhausted the process's descriptors and `/healthz` stopped answering. Now at most
/// `server.max_connections` (8) are open at once, each is closed after
/// `server.header_read_timeout` (1 s), and a new client gets its answer.
#[tokio::test]
async fn connections_that_never_send_headers_do_not_exhaust_the_server() {
    let w = workdir();
    let url = w.sqlite_url();
    let server = w.serve(&["--store", &url]);
    let (status, _) = get_text(&format!("{}/healthz", server.base), None).await;
    assert_eq!(status, 200);
    let pid = server.child.id();
    let before = open_fds(pid);
    let addr = server.base.trim_start_matches("http://").to_owned();

    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    // While they are held, the server's descriptors stay within the cap (plus a few for the
    // store and the workers).
    let mut most = 0;
    for _ in 0..10 {
        most = most.max(open_fds(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        most <= before + 8 + 8,
        "{most} descriptors open with 40 idle clients (before: {before}, cap 8)"
    );

    // A new client is answered once the header timeout has freed the slots before it.
    let asked = Instant::now();
    let (status, text) = get_text(&format!("{}/healthz", server.base), None).await;
    assert_eq!((status, text.as_str()), (200, "ok\n"));
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "{:?}",
        asked.elapsed()
    );
    assert!(
        server.log().contains("Connection cap reached"),
        "{}",
        server.log()
    );

    // The idle connections were closed by the server, not left hanging.
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                // hyper may answer 408 before it closes; the connection still ends.
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            }
            Err(e) => assert!(
                e.kind() == std::io::ErrorKind::ConnectionReset,
                "an idle connection was not closed: {e}"
            ),
        }
    }
}

/// A request whose body never comes to its end is answered 503 (JSON) after
/// `server.request_timeout` (2 s), instead of holding its connection and handler forever.
#[tokio::test]
async fn a_body_that_never_ends_is_cut_off_by_the_request_timeout() {
    let w = workdir();
    let url = w.sqlite_url();
    let server = w.serve(&["--store", &url]);
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut c = TcpStream::connect(&addr).unwrap();
    write!(
        c,
        "POST /api/runs/1/approve HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ALICE}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"reject\""
    )
    .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains("}}") {
        let n = c.read(&mut buf).expect("an answer before 30 s");
        assert!(n > 0, "closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("application/json"), "{answer}");
    assert!(
        answer.contains("the request took longer than server.request_timeout (2s)"),
        "{answer}"
    );
}

/// `runbook run` in the background, with its JSON events on stdout.
fn spawn_run(w: &Workdir, store: &str, name: &str) -> Child {
    w.command()
        .args(["--store", store, "run", name, "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start runbook run")
}

/// A run stopped by SIGTERM (a service manager, `kill`) or SIGHUP (its terminal closed) once
/// stayed `running` forever; now it ends `cancelled` as after Ctrl-C, and `run` exits 128 + the
/// signal's number.
#[tokio::test]
async fn sigterm_and_sighup_on_runbook_run_record_the_run_cancelled() {
    let w = Workdir::new();
    w.playbook(
        "nap",
        "name: nap\nsteps:\n  - id: first\n    sql: SELECT 1 AS one\n  - id: nap\n    wait: 1h\n  - id: after\n    sql: SELECT 2 AS two\n",
    );
    let url = w.sqlite_url();
    w.create_store(&url);
    let db = store(&url).await;
    for (n, (signal, name, code)) in [("-TERM", "SIGTERM", 143), ("-HUP", "SIGHUP", 129)]
        .into_iter()
        .enumerate()
    {
        let id = n as i64 + 1;
        let child = spawn_run(&w, &url, "nap");
        until_scalar(
            20,
            "the run to reach its wait",
            &db,
            &format!("SELECT COUNT(*) FROM runbook_step_attempts WHERE run_id = {id} AND step_id = 'first'"),
            |n| n == 1,
        )
        .await;
        // The attempt is recorded just before the wait begins.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let out = wait_with_deadline(child, 20);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{name}: {stderr}");
        let run = &rows(
            &db,
            &format!("SELECT status, failed_step, error FROM runbook_runs WHERE id = {id}"),
        )
        .await[0];
        assert_eq!(
            run,
            &json!({ "status": "cancelled", "failed_step": "nap", "error": format!("cancelled by {name}") }),
            "{stderr}"
        );
        let after = format!(
            "SELECT COUNT(*) FROM runbook_step_attempts WHERE run_id = {id} AND step_id = 'after'"
        );
        assert_eq!(scalar(&db, &after).await, 0, "nothing ran after the signal");
    }
}

/// The child's output once it exits; kills it and panics after `secs`.
fn wait_with_deadline(mut child: Child, secs: u64) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the run did not end within {secs} s:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
