//! What `runbook run` and `runbook runs show` tell a person: the rows a step found, the
//! playbook's report, notify messages to channels that are not set up, failures the run went on
//! after, grouped polls, and the spinner on a terminal.

use axum::{http::StatusCode, routing::post, Router};

use crate::util::{listen, Output, Workdir};

/// A SQLite store at `w` with DLQ entries of two error types: 2,001 commands of a type no
/// handler knows, 37 timeouts of a type the shipped config handles, so that their retry
/// completes (a validation failure would make the run wait for a person).
async fn store_with_dlq(w: &Workdir) {
    w.create_store(&w.sqlite_url());
    let pool = sqlx::SqlitePool::connect(&w.sqlite_url()).await.unwrap();
    for (n, entity, ty, error_type, message) in [
        (
            2001,
            "user",
            "user.rename",
            "UnknownCommandTypeException",
            "no handler for user.rename",
        ),
        (
            37,
            "order",
            "bench.noop",
            "TimeoutException",
            "backend timed out after 10s",
        ),
    ] {
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
             INSERT INTO command_queue (entity, entity_id, command_type, status, error_type, error_message) \
             SELECT ?2, i, ?3, 'dlq', ?4, ?5 FROM n",
        )
        .bind(n)
        .bind(entity)
        .bind(ty)
        .bind(error_type)
        .bind(message)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
}

/// The text after the line `Report`.
fn report_of(out: &Output) -> String {
    let (_, report) = out
        .stdout
        .split_once("\nReport\n")
        .unwrap_or_else(|| panic!("no Report section\n{out:?}"));
    report.to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_rate_shows_the_rows_it_found_and_reports_the_counts_per_error_type() {
    // The repository's config names the channels; their variables are not set here.
    let w = Workdir::new();
    w.shipped("dlq-rate");
    store_with_dlq(&w).await;
    // Workers, which the run's retry is verified against.
    let _server = w.serve(&[]);
    let out = tokio::task::spawn_blocking(move || (w.run(&["run", "dlq-rate"]), w))
        .await
        .unwrap();
    let (out, w) = out;
    assert_eq!(out.code, 0, "{out:?}");
    // The step's rows as a table, numbers right-aligned, not `3 rows {"row_count":3,...}`.
    assert!(!out.stdout.contains("row_count"), "{out:?}");
    for line in [
        "      count  error_type",
        "       2001  UnknownCommandTypeException",
        "         37  TimeoutException",
        "      ids                                                           ids_truncated  retried",
        "      totalElements: 2038",
        "      and 2,028 more rows",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "no line {line:?}\n{out:?}"
        );
    }
    // Not a terminal: tables fit 100 columns, and no colour or spinner reaches the pipe.
    assert!(
        out.stdout.lines().all(|l| l.chars().count() <= 100),
        "{out:?}"
    );
    assert!(!out.stdout.contains('\u{1b}'), "{out:?}");
    // The notify to ops, whose URL is empty, is said on the terminal and the run goes on.
    assert!(
        out.stdout
            .contains("notify ops (not configured): RUNBOOK_OPS_WEBHOOK_URL is not set"),
        "{out:?}"
    );
    let report = report_of(&out);
    for line in [
        "  Found 2038 command(s) in the DLQ:",
        "    2001 UnknownCommandTypeException",
        "    37 TimeoutException",
    ] {
        assert!(
            report.lines().any(|l| l == line),
            "no line {line:?} in the report:\n{report}"
        );
    }
    // Wrapped to the width; the words are all there.
    let report = report.split_whitespace().collect::<Vec<_>>().join(" ");
    for text in [
        "Changed: retried 37 TimeoutException/NetworkException command(s): 37 completed, 0 failed again.",
        "Left in the DLQ: 2001 (2001 UnknownCommandTypeException).",
        "no handler is configured for the command type",
    ] {
        assert!(
            report.contains(text),
            "no {text:?} in the report:\n{report}"
        );
    }
    // The report is on the run's record: `runs show` prints it, and its JSON (the API's) has it.
    let show = w.run(&["runs", "show", "1"]);
    assert_eq!(show.code, 0, "{show:?}");
    assert!(
        show.stdout.contains("\nReport\n")
            && show.stdout.contains("    2001 UnknownCommandTypeException"),
        "{show:?}"
    );
    let record = w.run(&["runs", "show", "1", "-o", "json"]).json();
    assert!(
        record["report"]
            .as_str()
            .is_some_and(|r| r.contains("2001 UnknownCommandTypeException")),
        "{record}"
    );
    // `-o json` is JSON lines as before, the run's end carrying the report.
    let json = w.run(&["run", "dlq-rate", "--force", "-o", "json"]);
    assert_eq!(json.code, 0, "{json:?}");
    assert!(json
        .stdout
        .lines()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    assert!(
        json.run()["report"]
            .as_str()
            .is_some_and(|r| r.contains("Found 2001")),
        "{json:?}"
    );
}

#[test]
fn a_report_renders_on_failure_and_a_broken_report_does_not_change_the_status() {
    let w = Workdir::new();
    w.playbook(
        "fails",
        "name: fails\nsteps:\n  - id: count\n    sql: \"SELECT 5051 AS n\"\n  - id: check\n    assert: { that: \"steps.count.rows[0].n < 100\", message: \"depth {{ steps.count.rows[0].n }} is over 100\" }\n  - id: later\n    sql: \"SELECT 1 AS one\"\nreport: |\n  depth was {{ steps.count.rows[0].n }}; later {{ steps.later.status }}\n  {% if failed_step %}failed at {{ failed_step.id }}: {{ failed_step.error }}{% endif %}\n",
    );
    w.playbook(
        "broken",
        "name: broken\nsteps:\n  - id: count\n    sql: \"SELECT 1 AS n\"\nreport: \"{{ steps.count.output.nothing.deeper }}\"\n",
    );
    let out = w.run(&["run", "fails"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        report_of(&out).trim_end(),
        "  depth was 5051; later skipped\n  failed at check: depth 5051 is over 100"
    );
    let out = w.run(&["run", "broken"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("✔ broken succeeded"), "{out:?}");
    assert!(
        report_of(&out).contains("the report could not be rendered"),
        "{out:?}"
    );
    // A report reading a step that does not exist is a validation error.
    w.playbook(
        "typo",
        "name: typo\nsteps:\n  - id: a\n    sql: \"SELECT 1\"\nreport: \"{{ steps.b.rows }}\"\n",
    );
    let out = w.run(&["validate"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stdout.contains("typo.yaml") && out.stdout.contains("unknown step `b`"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_to_an_unset_channel_prints_and_succeeds_while_a_500_fails_the_step() {
    let app = Router::new().route(
        "/hook",
        post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
    );
    let base = listen(app).await;
    let w = Workdir::new().env("BROKEN_HOOK", &format!("{base}/hook"));
    w.config("notify:\n  unset: { webhook: { url_env: UNSET_HOOK_FOR_TEST } }\n  broken: { webhook: { url_env: BROKEN_HOOK } }\n  pager: { pagerduty: { routing_key_env: UNSET_PD_KEY_FOR_TEST } }\n");
    w.playbook(
        "tell",
        "name: tell\nsteps:\n  - id: chat\n    notify: { to: unset, text: \"disk 97% full on db-1\" }\n  - id: page\n    notify: { to: pager, text: \"page: disk full\" }\n",
    );
    w.playbook(
        "lost",
        "name: lost\nsteps:\n  - id: chat\n    notify: { to: broken, text: \"never silent\" }\n",
    );
    let (tell, tell_json, lost) = tokio::task::spawn_blocking(move || {
        (
            w.run(&["run", "tell"]),
            w.run(&["run", "tell", "-o", "json"]),
            w.run(&["run", "lost"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(tell.code, 0, "{tell:?}");
    assert!(
        tell.stdout
            .contains("notify unset (not configured): UNSET_HOOK_FOR_TEST is not set\n      disk 97% full on db-1"),
        "{tell:?}"
    );
    assert!(
        tell.stdout
            .contains("notify pager (not configured): UNSET_PD_KEY_FOR_TEST is not set"),
        "{tell:?}"
    );
    // With JSON on stdout the message goes to stderr, and the step's output records it.
    assert_eq!(tell_json.code, 0, "{tell_json:?}");
    assert!(
        tell_json.stderr.contains("notify unset (not configured)")
            && tell_json.stderr.contains("disk 97% full on db-1"),
        "{tell_json:?}"
    );
    let chat = &tell_json.run()["steps"]["chat"]["output"];
    assert_eq!(chat["delivered"], false, "{chat}");
    assert_eq!(chat["text"], "disk 97% full on db-1", "{chat}");
    assert_eq!(chat["reason"], "UNSET_HOOK_FOR_TEST is not set", "{chat}");
    // A channel that answers an error fails the step, and the run.
    assert_eq!(lost.code, 1, "{lost:?}");
    assert!(lost.stdout.contains("answered 500"), "{lost:?}");
}

#[test]
fn a_failure_the_run_goes_on_after_is_shown_apart_from_one_that_fails_it() {
    let w = Workdir::new();
    w.playbook(
        "mixed",
        "name: mixed\nsteps:\n  - id: optional\n    continue_on_error: true\n    assert: { that: \"false\", message: \"optional check failed\" }\n  - id: required\n    assert: { that: \"false\", message: \"required check failed\" }\n",
    );
    let out = w.run(&["run", "mixed"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.lines().any(|l| l.starts_with("  ✘ optional")
            && l.ends_with("failed (continued): optional check failed")),
        "{out:?}"
    );
    assert!(
        out.stdout.lines().any(
            |l| l.starts_with("  ✘ required") && l.ends_with("  failed: required check failed")
        ),
        "{out:?}"
    );
    // No colour codes off a terminal; JSON marks the continued failure.
    assert!(!out.stdout.contains('\u{1b}'), "{out:?}");
    let json = w.run(&["run", "mixed", "-o", "json"]);
    let failed: Vec<(String, bool)> = json
        .events()
        .iter()
        .filter(|e| e["event"] == "step" && e["step"]["status"] == "failed")
        .map(|e| {
            (
                e["step"]["step"].as_str().unwrap().to_owned(),
                e["step"]["continued"] == true,
            )
        })
        .collect();
    assert_eq!(
        failed,
        vec![
            ("optional".to_owned(), true),
            ("required".to_owned(), false)
        ]
    );
}

#[test]
fn runs_show_groups_polls_and_says_how_to_get_a_long_attempt_whole() {
    let w = Workdir::new();
    // Polls until a second has passed since the run started: several polls, then success.
    w.playbook(
        "poller",
        "name: poller\nsteps:\n  - id: big\n    sql: \"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) SELECT i, 'padding padding padding' AS pad FROM n\"\n  - id: verify\n    until: \"steps.verify.rows[0].ms > 1000\"\n    every: 200ms\n    within: 20s\n    sql: \"SELECT CAST((julianday('now') - julianday({{ now }})) * 86400000 AS INTEGER) AS ms\"\n",
    );
    let out = w.run(&["run", "poller", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    // JSON lines carry each poll.
    let polls: Vec<serde_json::Value> = out
        .events()
        .into_iter()
        .filter(|e| e["step"]["status"] == "polled")
        .collect();
    assert!(polls.len() >= 3, "{out:?}");
    assert_eq!(polls[0]["step"]["poll"]["n"], 1, "{out:?}");
    assert_eq!(polls[0]["step"]["poll"]["of"], 101, "{out:?}");
    let id = out.run()["run_id"].to_string();
    let show = w.run(&["runs", "show", &id]);
    assert_eq!(show.code, 0, "{show:?}");
    let grouped = show
        .stdout
        .lines()
        .find(|l| l.starts_with("  verify: "))
        .unwrap_or_else(|| panic!("no grouped polls\n{show:?}"));
    assert!(
        grouped.contains(&format!("{} polls", polls.len()))
            && grouped.contains(", last ms ")
            && grouped.contains(&format!("runbook runs show {id} --step verify")),
        "{grouped}"
    );
    // The large attempt shows its start and says how to get it whole; that command gives it whole.
    let hint = format!("whole: runbook runs show {id} --step big --attempt 1, or -o json");
    assert!(show.stdout.contains(&hint), "{show:?}");
    let whole = w.run(&["runs", "show", &id, "--step", "big", "--attempt", "1"]);
    assert_eq!(whole.code, 0, "{whole:?}");
    assert!(
        whole
            .stdout
            .contains(r#"{"i":300,"pad":"padding padding padding"}"#)
            && !whole.stdout.contains("cut;"),
        "{whole:?}"
    );
    let every = w.run(&["runs", "show", &id, "--step", "verify"]);
    assert_eq!(
        every
            .stdout
            .lines()
            .filter(|l| l.starts_with("  verify #"))
            .count(),
        polls.len() + 1,
        "{every:?}"
    );
    let missing = w.run(&["runs", "show", &id, "--step", "big", "--attempt", "9"]);
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(
        missing.stderr.contains("has no attempt #9 of step `big`"),
        "{missing:?}"
    );
}

/// `script` (util-linux) runs the command on a pseudo-terminal and copies what it draws.
fn on_a_terminal(w: &Workdir, args: &str) -> String {
    let bin = env!("CARGO_BIN_EXE_runbook");
    let mut cmd = std::process::Command::new("script");
    cmd.current_dir(w.path());
    for var in [
        "RUNBOOK_CONFIG",
        "RUNBOOK_RUNBOOKS",
        "RUNBOOK_STORE",
        "RUNBOOK_LOG_FORMAT",
        "NO_COLOR",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .args([
            "-qfec",
            &format!("stty cols 120; {bin} {args}"),
            "/dev/null",
        ])
        .output()
        .expect("script (util-linux) runs the binary on a terminal");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_terminal_shows_a_spinner_with_the_polled_value_and_a_pipe_does_not() {
    let w = Workdir::new();
    w.playbook(
        "verify",
        "name: verify\nsteps:\n  - id: verify\n    until: \"steps.verify.rows[0].ms > 1500\"\n    every: 300ms\n    within: 20s\n    sql: \"SELECT CAST((julianday('now') - julianday({{ now }})) * 86400000 AS INTEGER) AS ms\"\n  - id: pause\n    wait: 1500ms\n",
    );
    let screen = on_a_terminal(&w, "run verify");
    assert!(
        screen.contains("✔ verify succeeded") || screen.contains("verify succeeded"),
        "{screen}"
    );
    assert!(screen.contains("verify: ms "), "{screen}");
    assert!(screen.contains(" → "), "{screen}");
    assert!(screen.contains("poll 2 of 67"), "{screen}");
    assert!(screen.contains("pause: waiting, 1 s"), "{screen}");
    // Off a terminal, and with -o json, none of it.
    let piped = w.run(&["run", "verify"]);
    assert_eq!(piped.code, 0, "{piped:?}");
    assert!(!piped.stdout.contains("poll "), "{piped:?}");
    let json = on_a_terminal(&w, "run verify -o json");
    assert!(!json.contains("poll 2 of"), "{json}");
    assert!(json.contains("\"status\":\"polled\""), "{json}");
}

#[test]
fn a_secret_found_by_a_step_is_masked_in_the_table_the_report_and_the_record() {
    let secret = "s3cr3t-token-value-42";
    let w = Workdir::new().env("FINDINGS_DB_TOKEN", secret);
    w.config("env:\n  - { name: FINDINGS_DB_TOKEN, secret: true }\n");
    w.playbook(
        "leak",
        "name: leak\nsteps:\n  - id: q\n    sql: \"SELECT {{ env.FINDINGS_DB_TOKEN }} AS token, 1 AS n\"\nreport: \"token {{ steps.q.rows[0].token }}\"\n",
    );
    let out = w.run(&["run", "leak"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("****"), "{out:?}");
    let show = w.run(&["runs", "show", "1"]);
    let json = w.run(&["runs", "show", "1", "-o", "json"]);
    for text in [&out.stdout, &out.stderr, &show.stdout, &json.stdout] {
        assert!(!text.contains(secret), "{out:?}\n{show:?}\n{json:?}");
    }
    assert!(report_of(&out).contains("token ****"), "{out:?}");
}

#[test]
fn queue_load_draws_a_progress_bar_on_a_terminal_only() {
    let w = Workdir::new();
    let args = "queue load --type demo.noop --rate 400/s --duration 2s";
    let screen = on_a_terminal(&w, args);
    assert!(screen.contains("/800 commands"), "{screen}");
    assert!(
        screen.contains("enqueued 800 `demo.noop` commands"),
        "{screen}"
    );
    let piped = w.run(&args.split(' ').collect::<Vec<_>>());
    assert_eq!(piped.code, 0, "{piped:?}");
    assert!(!piped.stdout.contains("/800 commands"), "{piped:?}");
}

/// Needs the Prometheus that `scripts/test` starts (it scrapes itself, so `up` is 1).
#[test]
fn prometheus_values_are_shown_with_their_labels_and_an_http_answer_with_its_status_and_body() {
    let prometheus = std::env::var("RUNBOOK_TEST_PROMETHEUS").expect(
        "RUNBOOK_TEST_PROMETHEUS is not set: run the suite with scripts/test, which starts Prometheus",
    );
    let w = Workdir::new();
    w.config(&format!("prometheus: {{ url: \"{prometheus}\" }}\n"));
    w.playbook(
        "prom",
        &format!(
            "name: prom\nsteps:\n  - id: up\n    promql: 'up{{job=\"prometheus\"}}'\n  - id: ready\n    http: {{ url: \"{prometheus}/-/ready\" }}\n"
        ),
    );
    let out = w.run(&["run", "prom"]);
    assert_eq!(out.code, 0, "{out:?}");
    let address = prometheus.trim_start_matches("http://");
    let series = format!(r#"      {{__name__="up", instance="{address}", job="prometheus"}}  1"#);
    assert!(
        out.stdout.lines().any(|l| l == series),
        "no {series:?}\n{out:?}"
    );
    assert!(
        out.stdout
            .contains("      status 200\n      Prometheus Server is Ready."),
        "{out:?}"
    );
}
