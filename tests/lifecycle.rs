//! The run lifecycle: a cancel (CLI, API, a rejected approval, Ctrl-C) stops a run where it is,
//! inside an `until` poll, a `wait`, an `approve` or a retry backoff, and the run ends
//! `cancelled`; a run whose process was killed is found when its lease expires, and a run still
//! going in another process is not; an approval that times out says so.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value as Json};

use crate::util::{get_json, post_empty, rows, scalar, store, until_scalar, PgDb, Workdir};

const OPS_TOKEN: &str = "ops-token-lifecycle";
const VIEWER_TOKEN: &str = "viewer-token-lifecycle";

/// Tokens for the API, and a run lease short enough for a test to see one expire.
const CONFIG: &str = r#"
auth:
  tokens:
    - { name: ops, role: operator, token_env: TEST_OPS_TOKEN }
    - { name: viewer, role: viewer, token_env: TEST_VIEWER_TOKEN }
streaming:
  run_lease: 2s
  lease: 2s
  poll_interval: 50ms
"#;

/// One playbook per place a run waits, each with a quick first step to show it has started.
const WAITS: &[(&str, &str)] = &[
    (
        "poll",
        "  - id: poll\n    sql: SELECT 0 AS ok\n    until: \"steps.poll.rows[0].ok == 1\"\n    every: 30s\n    within: 10m\n",
    ),
    ("nap", "  - id: first\n    sql: SELECT 1 AS one\n  - id: nap\n    wait: 1h\n"),
    (
        "gate",
        "  - id: first\n    sql: SELECT 1 AS one\n  - id: gate\n    approve: { text: Go on?, timeout: 1h }\n",
    ),
    (
        "backoff",
        "  - id: backoff\n    retry: { attempts: 5, backoff: 1h }\n    timeout: 2s\n    tcp_check: 127.0.0.1:1\n",
    ),
];

fn workdir() -> Workdir {
    let w = Workdir::new()
        .env("TEST_OPS_TOKEN", OPS_TOKEN)
        .env("TEST_VIEWER_TOKEN", VIEWER_TOKEN)
        .env("USER", "alice");
    w.config(CONFIG);
    for (name, steps) in WAITS {
        w.playbook(
            name,
            &format!("name: {name}\ntimeout: 2h\nsteps:\n{steps}  - id: after\n    sql: SELECT 2 AS two\n"),
        );
    }
    w
}

/// `runbook --store STORE run NAME -o json`, in the background.
fn spawn_run(w: &Workdir, store: &str, name: &str) -> Child {
    w.command()
        .args(["--store", store, "run", name, "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start runbook run")
}

/// Waits until the newest run of `playbook` (with an id above `after`) is waiting where the
/// test wants it: at its approval, past its first attempt (in the poll's pause, the backoff), or
/// past its first step (in the wait). Returns its id.
async fn in_its_wait(db: &runbook::store::Db, playbook: &str, after: i64) -> i64 {
    let run = format!("r.playbook = '{playbook}' AND r.id > {after}");
    let ready = match playbook {
        "gate" => format!(
            "SELECT COUNT(*) FROM runbook_runs r WHERE {run} AND r.status = 'waiting_approval'"
        ),
        _ => format!(
            "SELECT COUNT(*) FROM runbook_step_attempts a JOIN runbook_runs r ON r.id = a.run_id \
             WHERE {run}"
        ),
    };
    until_scalar(20, &format!("{playbook} to wait"), db, &ready, |n| n >= 1).await;
    // The attempt is recorded just before the pause (or the next step) begins.
    tokio::time::sleep(Duration::from_millis(300)).await;
    scalar(
        db,
        &format!("SELECT MAX(r.id) FROM runbook_runs r WHERE {run}"),
    )
    .await
}

/// The child's exit code and its final run event, once it exits; panics after `secs`.
fn finished(mut child: Child, secs: u64) -> (i32, Json) {
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
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let run = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(|e| e["event"] == "run")
        .map(|e| e["run"].clone())
        .next_back()
        .unwrap_or_else(|| {
            panic!(
                "no run event:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (out.status.code().unwrap_or(-1), run)
}

/// A run that ended `cancelled` at `step` with `reason`, and never reached the step after it.
async fn assert_cancelled(db: &runbook::store::Db, id: i64, step: &str, reason: &str) {
    let run = &rows(
        db,
        &format!(
            "SELECT status, failed_step, error, finished_at FROM runbook_runs WHERE id = {id}"
        ),
    )
    .await[0];
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(run["failed_step"], step, "{run}");
    assert_eq!(run["error"], reason, "{run}");
    assert!(run["finished_at"].is_string(), "{run}");
    let after = scalar(
        db,
        &format!(
            "SELECT COUNT(*) FROM runbook_step_attempts WHERE run_id = {id} AND step_id = 'after'"
        ),
    )
    .await;
    assert_eq!(after, 0, "run {id} went on after its cancel");
}

/// Runs every waiting playbook in its own `runbook run`, cancels each with `cancel(id)` once it
/// waits, and checks that it ends `cancelled` within about a second, where it was.
async fn cancels_stop_runs_where_they_wait<F, Fut>(
    w: &Workdir,
    store_url: &str,
    by: &str,
    cancel: F,
) where
    F: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let db = store(store_url).await;
    let children: Vec<(&str, Child)> = WAITS
        .iter()
        .map(|(name, _)| (*name, spawn_run(w, store_url, name)))
        .collect();
    for (name, child) in children {
        let id = in_its_wait(&db, name, 0).await;
        let asked = Instant::now();
        cancel(id).await;
        let (code, run) = finished(child, 10);
        let took = asked.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "{name} took {took:?} to stop"
        );
        assert_eq!(code, 1, "{run}");
        assert_eq!(run["status"], "cancelled", "{run}");
        let reason = format!("cancelled by {by}");
        assert_eq!(run["error"], reason.as_str(), "{run}");
        assert_cancelled(&db, id, name, &reason).await;
    }
    let audits = rows(
        &db,
        "SELECT actor, op FROM runbook_audit WHERE op = 'run_cancel' ORDER BY id",
    )
    .await;
    assert_eq!(
        audits,
        vec![json!({ "actor": by, "op": "run_cancel" }); WAITS.len()]
    );
}

#[tokio::test]
async fn runs_cancel_stops_a_run_in_a_poll_a_wait_an_approval_and_a_backoff_on_sqlite() {
    let w = workdir();
    let url = w.sqlite_url();
    w.create_store(&url);
    let cancel = |id: i64| {
        let out = w.run(&["--store", &url, "runs", "cancel", &id.to_string()]);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("cancel requested"), "{out:?}");
        async {}
    };
    cancels_stop_runs_where_they_wait(&w, &url, "cli:alice", cancel).await;
    // A run that has ended cannot be cancelled; one that does not exist is named.
    let out = w.run(&["--store", &url, "runs", "cancel", "1"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("run 1 is cancelled; only a run that is running or waiting for approval can be cancelled"), "{out:?}");
    let out = w.run(&["--store", &url, "runs", "cancel", "99"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("no run 99"), "{out:?}");
}

#[tokio::test]
async fn the_api_cancels_runs_of_other_processes_and_its_own_on_postgres() {
    let pg = PgDb::new().await;
    let w = workdir();
    let server = w.serve(&["--store", &pg.url]);
    let cancel_url = |id: i64| format!("{}/api/runs/{id}/cancel", server.base);
    // Runs of `runbook run` in other processes: their watchers see the request.
    let cancel = |id: i64| {
        let url = cancel_url(id);
        async move {
            let (status, body) = post_empty(&url, Some(OPS_TOKEN)).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                body,
                json!({ "run_id": id, "status": "cancel_requested", "by": "api:ops" })
            );
        }
    };
    cancels_stop_runs_where_they_wait(&w, &pg.url, "api:ops", cancel).await;

    // A run the server runs itself stops at once.
    let db = store(&pg.url).await;
    let (status, body) = crate::util::post_json(
        &format!("{}/api/runs", server.base),
        Some(OPS_TOKEN),
        &json!({ "playbook": "nap" }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // The run is recorded (queued) when it is admitted; the answer names it.
    let before = body["run_id"].as_i64().unwrap() - 1;
    let id = in_its_wait(&db, "nap", before).await;
    let (status, body) = post_empty(&cancel_url(id), Some(VIEWER_TOKEN)).await;
    assert_eq!(status, 403, "a viewer cannot cancel: {body}");
    let asked = Instant::now();
    let (status, body) = post_empty(&cancel_url(id), Some(OPS_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    until_scalar(
        3,
        "the server's own run to end cancelled",
        &db,
        &format!("SELECT COUNT(*) FROM runbook_runs WHERE id = {id} AND status = 'cancelled'"),
        |n| n == 1,
    )
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert_cancelled(&db, id, "nap", "cancelled by api:ops").await;
    let (status, body) = post_empty(&cancel_url(id), Some(OPS_TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("is cancelled"), "{body}");
    let (status, _) = post_empty(&cancel_url(9999), Some(OPS_TOKEN)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn ctrl_c_on_runbook_run_records_the_run_cancelled_and_exits_130() {
    let w = workdir();
    let url = w.sqlite_url();
    let db = store(&url).await;
    let _ = w.run(&["--store", &url, "queue", "stats"]);
    let child = spawn_run(&w, &url, "nap");
    let id = in_its_wait(&db, "nap", 0).await;
    let asked = Instant::now();
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let (code, run) = finished(child, 10);
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(code, 130, "{run}");
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_cancelled(&db, id, "nap", "cancelled by Ctrl-C").await;
}

/// A killed `runbook run` leaves its run `running`; `runbook serve` finds it once its lease
/// (2 s here) has expired, while a run going on in another process keeps its lease fresh.
async fn killed_runs_are_found_and_live_ones_are_not(store_url: &str) {
    let w = workdir();
    let _ = w.run(&["--store", store_url, "queue", "stats"]);
    let db = store(store_url).await;
    let _server = w.serve(&["--store", store_url]);
    let mut killed = spawn_run(&w, store_url, "nap");
    let killed_id = in_its_wait(&db, "nap", 0).await;
    let alive = spawn_run(&w, store_url, "gate");
    let alive_id = in_its_wait(&db, "gate", 0).await;
    killed.kill().unwrap();
    let _ = killed.wait();
    let killed_at = Instant::now();
    until_scalar(
        8,
        "the killed run to be marked interrupted",
        &db,
        &format!(
            "SELECT COUNT(*) FROM runbook_runs WHERE id = {killed_id} AND status = 'interrupted'"
        ),
        |n| n == 1,
    )
    .await;
    assert!(
        killed_at.elapsed() >= Duration::from_secs(1),
        "before its lease could expire"
    );
    let run = &rows(
        &db,
        &format!("SELECT error, finished_at FROM runbook_runs WHERE id = {killed_id}"),
    )
    .await[0];
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the process running it stopped: its lease expired at"),
        "{run}"
    );
    assert!(run["finished_at"].is_string(), "{run}");
    // Several leases later, the run in the other terminal is still waiting, untouched.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = &rows(
        &db,
        &format!("SELECT status FROM runbook_runs WHERE id = {alive_id}"),
    )
    .await[0];
    assert_eq!(status["status"], "waiting_approval");
    let audit = rows(
        &db,
        "SELECT op, filter FROM runbook_audit WHERE op = 'run_dead'",
    )
    .await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["filter"]["run_id"], killed_id);
    // Rejecting its approval stops it: it ends cancelled, with who and why.
    let out = w.run(&[
        "--store",
        store_url,
        "runs",
        "approve",
        &alive_id.to_string(),
        "--reject",
        "--comment",
        "not today",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let (code, run) = finished(alive, 5);
    assert_eq!(code, 1, "{run}");
    assert_cancelled(&db, alive_id, "gate", "rejected by cli:alice: not today").await;
}

#[tokio::test]
async fn a_killed_run_is_marked_interrupted_when_its_lease_expires_on_sqlite() {
    let w = Workdir::new();
    killed_runs_are_found_and_live_ones_are_not(&w.sqlite_url()).await;
}

#[tokio::test]
async fn a_killed_run_is_marked_interrupted_when_its_lease_expires_on_postgres() {
    let pg = PgDb::new().await;
    killed_runs_are_found_and_live_ones_are_not(&pg.url).await;
}

#[tokio::test]
async fn approvals_show_who_answered_and_a_timeout_says_how_to_answer() {
    let w = workdir();
    let url = w.sqlite_url();
    w.playbook(
        "quick",
        "name: quick\nsteps:\n  - id: ask\n    approve: { text: Go?, timeout: 1s }\n",
    );
    let out = w.run(&["--store", &url, "run", "quick", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let run = out.run();
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["failed_step"], "ask", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.starts_with("timed out after 1s waiting for approval"),
        "{error}"
    );
    let id = run["run_id"].as_i64().unwrap();
    assert!(
        error.contains(&format!("`runbook runs approve {id}`")),
        "{error}"
    );
    assert!(
        error.contains(&format!("POST /api/runs/{id}/approve")),
        "{error}"
    );

    // An approval: the run goes on, and the record names who approved and why.
    let db = store(&url).await;
    let child = spawn_run(&w, &url, "gate");
    let id = in_its_wait(&db, "gate", 0).await;
    let out = w.run(&[
        "--store",
        &url,
        "runs",
        "approve",
        &id.to_string(),
        "--comment",
        "checked the DLQ",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let (code, run) = finished(child, 5);
    assert_eq!((code, &run["status"]), (0, &json!("succeeded")), "{run}");
    let show = w.run(&["--store", &url, "runs", "show", &id.to_string()]);
    assert!(
        show.stdout
            .contains("approval gate  approved by cli:alice at ")
            && show.stdout.contains(": checked the DLQ"),
        "{show:?}"
    );
    let show = w
        .run(&[
            "--store",
            &url,
            "runs",
            "show",
            &id.to_string(),
            "-o",
            "json",
        ])
        .json();
    let approval = &show["approvals"][0];
    assert_eq!(
        (
            &approval["step_id"],
            &approval["decision"],
            &approval["actor"],
            &approval["comment"]
        ),
        (
            &json!("gate"),
            &json!("approved"),
            &json!("cli:alice"),
            &json!("checked the DLQ")
        ),
        "{show}"
    );
    // The API shows the same.
    let server = w.serve(&["--store", &url]);
    let (status, body) = get_json(
        &format!("{}/api/runs/{id}", server.base),
        Some(VIEWER_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["approvals"], show["approvals"]);
}

/// More runs than run slots: a process starts a run only with a slot free and leaves the rest
/// on the queue, so no run waits `processing` without a heartbeat, none is claimed twice, and
/// all of them end. (Runs claimed beyond the slots used to wait in memory holding their claim:
/// under a backlog their leases expired, they were claimed again, and memory grew.)
#[tokio::test]
async fn runs_beyond_the_run_slots_wait_on_the_queue_not_in_memory() {
    let w = Workdir::new().env("TEST_OPS_TOKEN", OPS_TOKEN);
    w.config(
        "auth:\n  tokens:\n    - { name: ops, role: operator, token_env: TEST_OPS_TOKEN }\n\
         streaming:\n  workerConcurrency: 2\n  lease: 2s\n  run_lease: 2s\n  poll_interval: 50ms\n",
    );
    w.playbook(
        "nap",
        "name: nap\nguard: { concurrency: 100 }\nsteps:\n  - id: nap\n    wait: 1500ms\n",
    );
    let url = w.sqlite_url();
    let server = w.serve(&[]);
    for _ in 0..8 {
        let (status, body) = crate::util::post_json(
            &format!("{}/api/runs", server.base),
            Some(OPS_TOKEN),
            &json!({ "playbook": "nap" }),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
    let db = store(&url).await;
    // Samples that saw more runs claimed than there are slots: a claim beyond the slots is
    // `processing` only for the moment before the worker hands it back, so such samples are
    // rare; with runs waiting in memory they were nearly all of them.
    let (mut samples, mut over) = (0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let processing = scalar(
            &db,
            "SELECT COUNT(*) FROM command_queue WHERE command_type = 'runbook.run' AND status = 'processing'",
        )
        .await;
        samples += 1;
        if processing > 2 {
            over += 1;
        }
        let done = scalar(
            &db,
            "SELECT COUNT(*) FROM runbook_runs WHERE playbook = 'nap' AND status = 'succeeded'",
        )
        .await;
        if done == 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of 8 runs ended within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        over * 5 < samples,
        "more runs than the 2 run slots were held in {over} of {samples} samples"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM runbook_runs WHERE playbook = 'nap'"
        )
        .await,
        8
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT MAX(attempts) FROM command_queue WHERE command_type = 'runbook.run'"
        )
        .await,
        1,
        "a run command was claimed again after its lease expired"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM runbook_step_attempts s JOIN runbook_runs r ON r.id = s.run_id \
             WHERE r.playbook = 'nap'"
        )
        .await,
        8,
        "each run's step ran once"
    );
}
