//! What a person meets at the edges: closed pipes, broken playbooks next to good ones, every
//! error of a file, the wrong folder, parameters, DLQ changes with a preview and a confirmation,
//! runtime settings, handlers, what `serve` says at start, the audit actor, and the API's errors.

use std::{
    io::{BufRead, BufReader, Write},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value as Json;

use crate::util::{free_port, get_json, post_json, rows, scalar, store, Workdir};

const GOOD: &str = "name: good\ndescription: A good one.\nsteps:\n  - id: s\n    wait: 0s\n";

#[test]
fn list_into_a_reader_that_stops_early_never_panics() {
    let w = Workdir::new();
    for i in 0..40 {
        w.playbook(
            &format!("p{i:02}"),
            &format!(
                "name: p{i:02}\ndescription: {}\nsteps:\n  - id: s\n    wait: 0s\n",
                "x".repeat(2000)
            ),
        );
    }
    // `runbook list | head -1`: the reader takes one line and goes.
    let out = w
        .command()
        .arg("list")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(|mut child| {
            let mut first = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut first)
                .unwrap();
            assert!(first.contains("p00"), "{first}");
            child.wait_with_output().unwrap()
        })
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(matches!(out.status.code(), Some(0 | 141)), "{stderr}");
}

#[test]
fn one_broken_playbook_does_not_hide_the_others_from_list() {
    let w = Workdir::new();
    w.playbook("good", GOOD);
    w.playbook(
        "other",
        "name: other\ndescription: Another.\nsteps:\n  - id: s\n    wait: 0s\n",
    );
    w.playbook("broken", "name: broken\nsteps:\n  - id: s\n    wiat: 1s\n");
    let out = w.run(&["list"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("good") && out.stdout.contains("other"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("broken"), "{out:?}");
    assert!(
        out.stderr.contains("1 playbook file did not load")
            && out
                .stderr
                .contains("broken.yaml:4:5: steps[0]: unknown field `wiat`"),
        "{out:?}"
    );
    let json = w.run(&["list", "-o", "json"]);
    assert_eq!(json.code, 1, "{json:?}");
    assert_eq!(json.json().as_array().map(Vec::len), Some(2), "{json:?}");
}

#[test]
fn validate_reports_every_error_of_a_file() {
    let w = Workdir::new();
    w.playbook(
        "bad",
        r#"name: bad
params:
  a: { type: integr }
  b:
    type: duration
    default: 30
  c: { type: boolen }
steps:
  - id: one
    sql: SELECT {{ params.a }}
  - id: two
    wiat: 1s
  - id: three
    when: "steps.one.rows | length > 0"
    sql: SELECT 1
    retry: { attempts: many }
  - id: four
    sql: SELECT {{ params.nope }}
  - id: five
    assert: { that: "steps.two.status == 'ok'" }
  - id: six
    shell: [rm, x]
"#,
    );
    w.playbook("good", GOOD);
    let out = w.run(&["validate"]);
    assert_eq!(out.code, 2, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    for expected in [
        "bad.yaml:3:14: params.a.type: unknown variant `integr`",
        "bad.yaml:6:5: default of `b`: `30` has no unit",
        "bad.yaml:7:14: params.c.type: unknown variant `boolen`",
        "bad.yaml:12:5: steps[1]: unknown field `wiat`",
        "bad.yaml:16:24: steps[2].retry.attempts: invalid type: string \"many\"",
        "bad.yaml:18:5: unknown parameter `nope`",
        "bad.yaml:20:5: `steps.two.status` is compared with `ok`",
        "bad.yaml:22:13: shell program `rm` is not allowed",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(expected)),
            "missing `{expected}`:\n{out:?}"
        );
    }
    assert!(out.stderr.contains("8 problems found"), "{out:?}");
}

#[test]
fn a_shell_program_outside_the_allowlist_is_a_validation_error() {
    let w = Workdir::new();
    w.config("shell: { allow: [echo] }\n");
    w.playbook(
        "sh",
        "name: sh\nsteps:\n  - id: ok\n    shell: [echo, hi]\n  - id: no\n    shell: [kubectl, get, pods]\n",
    );
    let out = w.run(&["validate"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stdout.contains(
            "sh.yaml:6:13: shell program `kubectl` is not allowed: add it to `shell.allow` in the config (allowed: echo)"
        ),
        "{out:?}"
    );
}

#[test]
fn read_only_commands_in_the_wrong_folder_say_what_they_looked_for_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workdir::new();
    let run = |args: &[&str]| {
        let out = w
            .command()
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for cmd in [
        &["queue", "stats"][..],
        &["dlq", "list"],
        &["runs", "list"],
        &["status"],
        &["settings"],
        &["outbox", "parked"],
    ] {
        let (code, stderr) = run(cmd);
        assert_ne!(code, 0, "{cmd:?}: {stderr}");
        assert!(
            stderr.contains("the store sqlite://runbook.db does not exist")
                && stderr.contains(&format!("looked in {}", dir.path().display()))
                && stderr.contains("runbook.yaml (not found"),
            "{cmd:?}: {stderr}"
        );
        assert!(
            !dir.path().join("runbook.db").exists(),
            "{cmd:?} created a store"
        );
    }
    // The schedule is shown without a store, and creates none.
    w.playbook(
        "nightly",
        "name: nightly\non:\n  schedule: \"0 0 3 * * *\"\nsteps:\n  - id: s\n    wait: 0s\n",
    );
    let out = w.run(&["schedule"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("nightly"), "{out:?}");
    assert!(
        !w.path().join("runbook.db").exists(),
        "schedule created a store"
    );

    let (code, stderr) = run(&["list"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "playbooks {} (no such folder)",
            dir.path().join("runbooks").display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_duration_parameter_needs_a_unit_and_a_boolean_is_true_or_false() {
    let w = Workdir::new();
    w.playbook(
        "p",
        "name: p\nparams:\n  d: { type: duration, default: 1m }\n  f: { type: boolean, default: false }\nsteps:\n  - id: s\n    wait: 0s\n",
    );
    let out = w.run(&["run", "p", "--param", "d=30"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("parameter `d`: `30` has no unit"),
        "{out:?}"
    );
    for not_bool in ["yes", "1"] {
        let out = w.run(&["run", "p", "--param", &format!("f={not_bool}")]);
        assert_eq!(out.code, 2, "{out:?}");
        assert!(
            out.stderr.contains(&format!(
                "parameter `f`: expected true or false, got `{not_bool}`"
            )),
            "{out:?}"
        );
    }
    let out = w.run(&["run", "p", "--param", "d=30s", "--param", "f=true"]);
    assert_eq!(out.code, 0, "{out:?}");
}

/// Enqueues `n` commands of `entity` and moves them to the DLQ with `error_type`.
async fn dead(w: &Workdir, entity: &str, n: usize, error_type: &str) {
    let url = w.sqlite_url();
    for i in 0..n {
        w.enqueue(&url, entity, &i.to_string(), "demo.x", "{}");
    }
    let db = store(&url).await;
    db.sql(
        "UPDATE command_queue SET status = 'dlq', error_type = $1, error_message = 'boom' \
         WHERE status = 'pending' AND entity = $2",
        vec![Json::from(error_type), Json::from(entity)],
    )
    .await
    .unwrap();
    db.close().await;
}

async fn in_dlq(w: &Workdir) -> i64 {
    let db = store(&w.sqlite_url()).await;
    let n = scalar(
        &db,
        "SELECT COUNT(*) AS n FROM command_queue WHERE status = 'dlq'",
    )
    .await;
    db.close().await;
    n
}

#[tokio::test]
async fn dlq_changes_show_a_preview_and_need_yes_without_a_terminal() {
    let w = Workdir::new().env("USER", "ops-person");
    dead(&w, "user", 3, "TimeoutException").await;
    dead(&w, "order", 2, "ValidationException").await;

    let out = w.run(&["dlq", "retry"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stdout.contains("would retry 5 DLQ entries:")
            && out.stdout.contains("3  TimeoutException")
            && out.stdout.contains("2  ValidationException"),
        "{out:?}"
    );
    assert!(out.stderr.contains("add --yes"), "{out:?}");
    assert_eq!(in_dlq(&w).await, 5, "nothing changed without --yes");

    // A type that differs only in case says so.
    let out = w.run(&["dlq", "retry", "--error-type", "timeoutexception", "--yes"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("`TimeoutException`") && out.stderr.contains("case included"),
        "{out:?}"
    );

    let out = w.run(&[
        "dlq",
        "retry",
        "--error-type",
        "TimeoutException",
        "--yes",
        "-o",
        "json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let j = out.json();
    assert_eq!(j["changed"], 3, "{j}");
    assert_eq!(j["preview"]["by_error_type"]["TimeoutException"], 3, "{j}");
    assert_eq!(in_dlq(&w).await, 2);

    let out = w.run(&["dlq", "cleanup", "--older-than", "0s", "--yes"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("would delete 2 DLQ entries")
            && out.stdout.contains("2 DLQ entries deleted"),
        "{out:?}"
    );
    assert_eq!(in_dlq(&w).await, 0);

    let db = store(&w.sqlite_url()).await;
    let audit = rows(
        &db,
        "SELECT actor, op, rows FROM runbook_audit WHERE op IN ('dlq_retry', 'dlq_cleanup') ORDER BY id",
    )
    .await;
    db.close().await;
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(audit[0]["actor"], "cli:ops-person");
    assert_eq!(audit[0]["rows"], 3);
    assert_eq!(audit[1]["rows"], 2);
}

#[tokio::test]
async fn dlq_list_says_how_many_it_shows_and_how_to_see_more() {
    let w = Workdir::new();
    dead(&w, "user", 5, "TimeoutException").await;
    let out = w.run(&["dlq", "list", "--limit", "2"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("showing 1-2 of 5")
            && out
                .stdout
                .contains("more: runbook dlq list --offset 2 --limit 2"),
        "{out:?}"
    );
    let out = w.run(&["dlq", "list", "--limit", "2", "--offset", "4"]);
    assert!(out.stdout.contains("showing 5-5 of 5"), "{out:?}");
    assert!(!out.stdout.contains("more:"), "{out:?}");
}

/// On a terminal (a pseudo-terminal from `script`), `dlq retry` asks; an entry that reaches the
/// DLQ while the question waits is not touched by the yes.
#[tokio::test]
async fn a_confirmed_dlq_retry_touches_only_the_entries_it_previewed() {
    let w = Workdir::new();
    dead(&w, "user", 3, "TimeoutException").await;
    let bin = env!("CARGO_BIN_EXE_runbook");
    let mut child = std::process::Command::new("script")
        .args(["-qfec", &format!("{bin} dlq retry"), "/dev/null"])
        .current_dir(w.path())
        .env("USER", "pty-person")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 1024];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains("[y/N]") {
        assert!(Instant::now() < deadline, "no question: {seen}");
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push_str(&chunk);
        }
    }
    assert!(seen.contains("would retry 3 DLQ entries"), "{seen}");
    // A new failure arrives between the preview and the answer.
    dead(&w, "late", 1, "TimeoutException").await;
    child.stdin.as_mut().unwrap().write_all(b"y\n").unwrap();
    let status = child.wait().unwrap();
    while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(500)) {
        seen.push_str(&chunk);
    }
    assert!(status.success(), "{seen}");
    assert!(
        seen.contains("3 DLQ entries sent back to the queue"),
        "{seen}"
    );
    let db = store(&w.sqlite_url()).await;
    let left = rows(&db, "SELECT entity FROM command_queue WHERE status = 'dlq'").await;
    let actor = rows(
        &db,
        "SELECT actor FROM runbook_audit WHERE op = 'dlq_retry'",
    )
    .await;
    db.close().await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["entity"], "late");
    assert_eq!(actor[0]["actor"], "cli:pty-person");
}

#[test]
fn settings_show_live_values_next_to_the_config_and_reset_returns_to_it() {
    let w = Workdir::new();
    w.config("streaming:\n  workerConcurrency: 3\n");
    w.playbook(
        "scale",
        "name: scale\nsteps:\n  - id: up\n    runtime: { op: scale_workers, concurrency: 7 }\n",
    );
    assert_eq!(w.run(&["run", "scale"]).code, 0);
    let out = w.run(&["settings"]);
    assert_eq!(out.code, 0, "{out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("workerConcurrency"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        line.contains(" 7 ") && line.contains(" 3 ") && line.contains("by run:1:scale"),
        "{out:?}"
    );
    assert!(out.stdout.contains("scale_workers"), "{out:?}");
    assert!(out.stdout.contains("runbook settings reset"), "{out:?}");
    let json = w.run(&["settings", "-o", "json"]).json();
    let row = json["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "workerConcurrency")
        .unwrap()
        .clone();
    assert_eq!(
        (row["live"].clone(), row["config"].clone()),
        (7.into(), 3.into())
    );

    let out = w.run(&["--actor", "bob", "settings", "reset"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("workerConcurrency: 7 -> 3"), "{out:?}");
    let json = w.run(&["settings", "-o", "json"]).json();
    assert!(
        json["settings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["live"] == r["config"] && r["changed_by"].is_null()),
        "{json}"
    );
    assert_eq!(json["history"][0]["op"], "settings_reset");
    assert_eq!(json["history"][0]["actor"], "bob");
}

#[test]
fn enqueue_says_what_it_enqueued_and_warns_without_a_handler() {
    let w = Workdir::new();
    w.config("streaming:\n  handlers:\n    known.type: { noop: {} }\n");
    let out = w.run(&[
        "queue",
        "enqueue",
        "--entity",
        "user",
        "--entity-id",
        "42",
        "--type",
        "typo.type",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("enqueued command 1: `typo.type` for user 42, priority 0, pending"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("no handler for command type `typo.type`")
            && out.stderr.contains("(configured: known.type)")
            && out.stderr.contains("UnknownCommandTypeException"),
        "{out:?}"
    );
    let out = w.run(&[
        "queue",
        "enqueue",
        "--entity",
        "user",
        "--entity-id",
        "42",
        "--type",
        "known.type",
    ]);
    assert!(!out.stderr.contains("warning"), "{out:?}");
    let out = w.run(&[
        "queue",
        "load",
        "--type",
        "typo.type",
        "--rate",
        "10/s",
        "--duration",
        "1s",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("no handler for command type `typo.type`"),
        "{out:?}"
    );
}

#[test]
fn the_audit_actor_is_a_real_name_without_user_and_actor_overrides_it() {
    let w = Workdir::new();
    let uid = rustix_uid();
    let name = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2) == Some(&uid.to_string().as_str())).then(|| f[0].to_owned())
        })
        .unwrap_or_else(|| format!("uid:{uid}"));
    let out = w
        .command()
        .env_remove("USER")
        .args(["pause", "--reason", "test"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("by cli:{name}")), "{stdout}");
    assert!(!stdout.contains("cli:unknown"), "{stdout}");
    let out = w.run(&["resume", "--actor", "carol"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = w.run(&["--actor", "dave", "pause"]);
    assert!(out.stdout.contains("by dave"), "{out:?}");
}

fn rustix_uid() -> u32 {
    let out = std::process::Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test]
async fn serve_says_what_it_serves_and_an_unset_token_is_disabled_not_fatal() {
    let w = Workdir::new()
        .env("EDGE_OPS_TOKEN", "ops-secret-4f9a2c71")
        .env("RUNBOOK_LOG", "warn");
    w.config(
        "auth:\n  tokens:\n    - { name: ops, role: operator, token_env: EDGE_OPS_TOKEN }\n    - { name: admin, role: PlatformAdmin, token_env: EDGE_UNSET_TOKEN }\n  receiver: { insecure: true }\nstreaming:\n  handlers:\n    demo.slow: { simulate: { latency: 1ms } }\n",
    );
    w.playbook(
        "nightly",
        "name: nightly\non:\n  schedule: \"0 0 3 * * *\"\nsteps:\n  - id: s\n    wait: 0s\n",
    );
    w.playbook("broken", "name: broken\nstep: []\n");
    let server = w.serve(&[]);
    let (status, body) = get_json(
        &format!("{}/api/playbooks", server.base),
        Some("ops-secret-4f9a2c71"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let log = server.log();
    for expected in [
        "store: sqlite://runbook.db",
        "playbooks: 1 loaded from runbooks, 1 file(s) not loaded:",
        "broken.yaml",
        "command handlers: demo.slow",
        "API tokens: ops (operator); 1 configured token(s) disabled",
        "EDGE_UNSET_TOKEN is not set",
        "alert receiver: INSECURE",
        "nightly `0 0 3 * * *` next ",
    ] {
        assert!(log.contains(expected), "missing `{expected}`:\n{log}");
    }
    assert!(!log.contains("ops-secret-4f9a2c71"), "{log}");
}

#[tokio::test]
async fn api_errors_are_json_roles_are_spelled_as_configured_and_dry_run_is_a_boolean() {
    let w = Workdir::new().env("EDGE_VIEW_TOKEN", "view-secret-2b7c");
    w.config("auth:\n  tokens:\n    - { name: eyes, role: viewer, token_env: EDGE_VIEW_TOKEN }\n");
    w.playbook("good", GOOD);
    let out = w.run(&["run", "good", "--dry-run"]);
    assert_eq!(out.code, 0, "{out:?}");
    let shown = w.run(&["runs", "show", "1", "-o", "json"]).json();
    assert_eq!(shown["dry_run"], Json::Bool(true), "{shown}");
    let listed = w.run(&["runs", "list", "-o", "json"]).json();
    assert_eq!(listed[0]["dry_run"], Json::Bool(true), "{listed}");

    let server = w.serve(&[]);
    let token = Some("view-secret-2b7c");
    let (status, body) = get_json(&format!("{}/api/runs/abc", server.base), token).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["status"], 400, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    let (status, body) = get_json(&format!("{}/api/runs/1", server.base), token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dry_run"], Json::Bool(true), "{body}");
    let (status, body) = post_json(
        &format!("{}/api/runs", server.base),
        token,
        &serde_json::json!({ "playbook": "good" }),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"]["message"], "token `eyes` has role viewer; this call needs operator",
        "{body}"
    );
}

#[test]
fn an_unreachable_prometheus_is_named_by_its_config_key() {
    let w = Workdir::new();
    let port = free_port();
    w.config(&format!(
        "prometheus: {{ url: \"http://127.0.0.1:{port}\" }}\n"
    ));
    w.playbook("q", "name: q\nsteps:\n  - id: up\n    promql: up\n");
    let out = w.run(&["run", "q", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    crate::util::assert_run_error(
        &out.run(),
        &format!("Prometheus at http://127.0.0.1:{port} (the config's `prometheus.url`)"),
    );
}

#[test]
fn an_unreachable_kafka_is_named_by_its_config_key() {
    let w = Workdir::new();
    let port = free_port();
    w.config(&format!("kafka: {{ brokers: \"127.0.0.1:{port}\" }}\n"));
    w.playbook(
        "down",
        "name: down\nsteps:\n  - id: topics\n    timeout: 3s\n    kafka: { op: list_topics }\n",
    );
    let out = w.run(&["run", "down", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    crate::util::assert_run_error(&out.run(), "the config's `kafka.brokers`");
}
