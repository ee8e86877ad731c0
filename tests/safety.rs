//! Hostile values stay values: in SQL they are bound parameters, in shell steps argv elements.
//! Secrets never reach output or run records.

use crate::util::{assert_run_error, PgDb, Workdir};

const HOSTILE: &[&str] = &[
    "1'; DROP TABLE command_queue; --",
    "x\"; DELETE FROM runbook_runs; --",
    "$(touch /tmp/runbook-pwned) `id`",
    "line one\nline two; DROP TABLE work_state",
    "?1 $1 %s {{ 7 * 7 }}",
];

fn echo_playbook(w: &Workdir) {
    w.playbook(
        "echo",
        "name: echo\nparams:\n  x: { type: string }\nsteps:\n  - id: sel\n    sql: \"SELECT {{ params.x }} AS x, (SELECT COUNT(*) FROM command_queue) AS n\"\n",
    );
}

fn assert_values_stay_values(w: &Workdir, store: &[&str]) {
    for value in HOSTILE {
        let param = format!("x={value}");
        let mut args: Vec<&str> = store.to_vec();
        args.extend(["run", "echo", "--param", &param, "--output", "json"]);
        let out = w.run(&args);
        assert_eq!(out.code, 0, "{out:?}");
        let run = out.run();
        assert_eq!(
            run["steps"]["sel"]["rows"][0]["x"], *value,
            "the value came back as text"
        );
        assert_eq!(
            run["steps"]["sel"]["rows"][0]["n"], 0,
            "command_queue is intact"
        );
    }
    let mut args: Vec<&str> = store.to_vec();
    args.extend(["queue", "stats", "--output", "json"]);
    assert_eq!(
        w.run(&args).code,
        0,
        "the runtime's tables are all still there"
    );
}

#[test]
fn hostile_parameters_are_bound_on_sqlite() {
    let w = Workdir::new();
    echo_playbook(&w);
    assert_values_stay_values(&w, &[]);
    // The run record keeps the rendered SQL and the bound values apart.
    let run = w.run(&["runs", "show", "1", "-o", "json"]).json();
    assert_eq!(
        run["steps"][0]["input"]["sql"],
        "SELECT ?1 AS x, (SELECT COUNT(*) FROM command_queue) AS n"
    );
    assert_eq!(run["steps"][0]["input"]["params"][0], HOSTILE[0]);
}

#[tokio::test]
async fn hostile_parameters_are_bound_on_postgres() {
    let db = PgDb::new().await;
    let w = Workdir::new();
    echo_playbook(&w);
    assert_values_stay_values(&w, &["--store", &db.url]);
}

#[test]
fn hostile_alert_text_in_a_shell_step_is_one_argv_element() {
    let w = Workdir::new();
    w.config("shell: { allow: [printf] }\n");
    w.playbook(
        "sh",
        "name: sh\nparams:\n  x: { type: string }\nsteps:\n  - id: p\n    shell: [printf, \"%s|\", \"{{ params.x }}\", second]\n",
    );
    let marker = std::env::temp_dir().join(format!("runbook-pwned-{}", std::process::id()));
    let value = format!(
        "$(touch {}); echo hi > {}",
        marker.display(),
        marker.display()
    );
    let param = format!("x={value}");
    let out = w.run(&["run", "sh", "--param", &param, "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.run()["steps"]["p"]["output"]["stdout"],
        format!("{value}|second|")
    );
    assert!(!marker.exists(), "no shell ran the value");

    // Programs outside the allowlist are refused.
    w.playbook(
        "rm",
        "name: rm\nsteps:\n  - id: p\n    shell: [rm, -rf, /nonexistent]\n",
    );
    let out = w.run(&["run", "rm", "-o", "json"]);
    assert_eq!(out.code, 2, "a validation error: {out:?}");
    assert!(
        out.stderr.contains("shell program `rm` is not allowed"),
        "{out:?}"
    );
}

#[tokio::test]
async fn secrets_are_masked_in_output_logs_run_and_audit_records() {
    let w = Workdir::new()
        .env("MY_API_TOKEN", "tok-7f3a9c2e51")
        .env("RUNBOOK_LOG", "debug");
    w.config(
        r#"auth:
  tokens:
    - { name: ops, role: operator, token_env: MY_API_TOKEN }
env: [MY_API_TOKEN]
"#,
    );
    w.playbook(
        "leak",
        r#"name: leak
steps:
  - id: sel
    sql: "SELECT {{ env.MY_API_TOKEN }} AS t"
  - id: mark
    sql: "UPDATE command_queue SET error_message = {{ env.MY_API_TOKEN }} WHERE id < 0"
  - id: fail
    assert: { that: "false", message: "token is {{ env.MY_API_TOKEN }}" }
"#,
    );
    let out = w.run(&["run", "leak", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let run = out.run();
    assert_eq!(run["steps"]["sel"]["rows"][0]["t"], "****");
    assert_eq!(run["error"], "token is ****");
    let shown = w.run(&["runs", "show", "1", "-o", "json"]);
    assert!(shown.stdout.contains("****"), "{shown:?}");
    // The logs are there to be checked (the run and its steps at debug level), and hold no secret.
    assert!(
        out.stderr.contains("sel") && out.stderr.contains("mark"),
        "the steps are logged: {out:?}"
    );
    for text in [&out.stdout, &out.stderr, &shown.stdout] {
        assert!(!text.is_empty(), "{out:?}\n{shown:?}");
    }
    for text in [&out.stdout, &out.stderr, &shown.stdout, &shown.stderr] {
        assert!(!text.contains("tok-7f3a9c2e51"), "secret leaked: {text}");
    }
    // The mutation's audit record shows the bound value masked.
    let db = crate::util::store(&w.sqlite_url()).await;
    let audits = crate::util::rows(&db, "SELECT op, filter FROM runbook_audit").await;
    assert_eq!(audits.len(), 1, "{audits:?}");
    assert_eq!(audits[0]["op"], "sql:mark");
    assert_eq!(
        audits[0]["filter"]["params"],
        serde_json::json!(["****"]),
        "{audits:?}"
    );
    db.close().await;
    let raw = std::fs::read(w.path().join("runbook.db")).unwrap();
    let wal = std::fs::read(w.path().join("runbook.db-wal")).unwrap_or_default();
    let needle = b"tok-7f3a9c2e51";
    assert!(
        !raw.windows(needle.len()).any(|x| x == needle),
        "secret stored in runbook.db"
    );
    assert!(
        !wal.windows(needle.len()).any(|x| x == needle),
        "secret stored in the WAL"
    );
}

#[test]
fn a_templated_shell_argument_cannot_become_an_option() {
    let w = Workdir::new();
    w.config("shell: { allow: [printf] }\n");
    w.playbook(
        "opt",
        "name: opt\nparams:\n  pod: { type: string }\nsteps:\n  - id: p\n    shell: [printf, \"%s\", \"{{ params.pod }}\"]\n  - id: q\n    shell: [printf, \"%s|%s\", \"--\", \"{{ params.pod }}\"]\n",
    );
    let out = w.run(&["run", "opt", "--param", "pod=--all", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let run = out.run();
    assert_eq!(run["failed_step"], "p");
    assert_run_error(&run, "`--all` would be read as an option");
    // After a literal `--` the value is positional, so it is allowed.
    w.playbook("opt", "name: opt\nparams:\n  pod: { type: string }\nsteps:\n  - id: q\n    shell: [printf, \"%s|%s\", \"--\", \"{{ params.pod }}\"]\n");
    let out = w.run(&["run", "opt", "--param", "pod=--all", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.run()["steps"]["q"]["output"]["stdout"], "--|--all");
}
