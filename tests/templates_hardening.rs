//! Templates within limits and secrets kept secret: a heavy template leaves the server answering
//! and stopping, loading evaluates nothing, secrets are masked in every form the engine writes
//! them in and cannot be transformed, and a templated URL path segment cannot climb.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::State, http::HeaderMap, routing::get, Json, Router};
use serde_json::{json, Value};

use crate::util::{assert_run_error, listen, post_json, rows, store, until_scalar, Workdir};

const OPS_TOKEN: &str = "ops-token-templates";

/// Nested loops that would run for hours without limits.
const SPIN: &str =
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";

#[tokio::test(flavor = "multi_thread")]
async fn a_heavy_template_leaves_the_server_answering_and_stopping() {
    let w = Workdir::new().env("TEST_OPS_TOKEN", OPS_TOKEN);
    w.config(
        "auth:\n  tokens:\n    - { name: ops, role: operator, token_env: TEST_OPS_TOKEN }\nstreaming:\n  poll_interval: 50ms\n",
    );
    for name in ["heavy1", "heavy2"] {
        w.playbook(
            name,
            &format!(
                "name: {name}\ntimeout: 1m\nsteps:\n  - id: spin\n    timeout: 6s\n    assert: {{ that: \"true\", message: \"{SPIN}\" }}\n"
            ),
        );
    }
    let url = w.sqlite_url();
    let mut server = w.serve(&["--store", &url]);
    for name in ["heavy1", "heavy2"] {
        let (status, body) = post_json(
            &format!("{}/api/runs", server.base),
            Some(OPS_TOKEN),
            &json!({ "playbook": name }),
        )
        .await;
        assert!(status < 300, "{status} {body}");
    }
    let db = store(&url).await;
    until_scalar(
        20,
        "both runs to start",
        &db,
        "SELECT COUNT(*) FROM runbook_runs WHERE status = 'running'",
        |n| n == 2,
    )
    .await;
    // Both renders are going now: the API still answers, each time within a second.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    for _ in 0..5 {
        let answer = client.get(format!("{}/healthz", server.base)).send().await;
        if !matches!(&answer, Ok(a) if a.status() == 200) {
            server.kill_hard();
            panic!("/healthz did not answer within a second: {answer:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) =
        crate::util::get_text(&format!("{}/api/runs", server.base), Some(OPS_TOKEN)).await;
    assert_eq!(status, 200);
    // SIGTERM ends the process, without a kill -9.
    let pid = server.child.id();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            server.kill_hard();
            panic!(
                "runbook serve did not stop after SIGTERM:\n{}",
                server.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runs = rows(
        &db,
        "SELECT playbook, status, error FROM runbook_runs ORDER BY id",
    )
    .await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    for run in &runs {
        assert_eq!(run["status"], "failed", "a final status: {run}");
        let error = run["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("did not finish within") && error.contains("range(100000)"),
            "the error names the template and the limit: {run}"
        );
    }
}

#[test]
fn loading_a_playbook_with_huge_constants_evaluates_none() {
    let w = Workdir::new();
    let mut yaml = String::from("name: big\nsteps:\n");
    for i in 0..10 {
        yaml.push_str(&format!(
            "  - id: s{i}\n    assert: {{ that: \"true\", message: \"{{{{ 'x' * 100000000 }}}}\" }}\n"
        ));
    }
    w.playbook("big", &yaml);
    w.playbook(
        "small",
        "name: small\nsteps:\n  - id: one\n    sql: SELECT 1 AS one\n",
    );
    let started = Instant::now();
    let out = w.run(&["validate"]);
    let took = started.elapsed();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(took < Duration::from_secs(5), "validate took {took:?}");
    let started = Instant::now();
    let out = w.run(&["run", "small", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // At run time the constant is over the output limit: a step error naming the limit.
    let out = w.run(&["run", "big", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_run_error(&out.run(), "the limit of what a template may produce");
}

/// The token in every form the engine may write it in.
const TOKEN: &str = "abc+/=def-ghij";
const TOKEN_FORMS: &[&str] = &[
    "abc+/=def-ghij",
    "abc%2B%2F%3Ddef-ghij",
    "abc%2b%2f%3ddef-ghij",
    "ABC+/=DEF-GHIJ",
    "jihg-fed=/+cba",
];

type Seen = Arc<Mutex<Vec<String>>>;

async fn echo(State(seen): State<Seen>, uri: axum::http::Uri, headers: HeaderMap) -> Json<Value> {
    seen.lock().unwrap().push(uri.to_string());
    let token = headers
        .get("x-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Json(json!({ "uri": uri.to_string(), "token": token }))
}

fn secret_workdir(base: &str) -> Workdir {
    let w = Workdir::new()
        .env("SECRET_TOKEN", TOKEN)
        .env("REGION", "eu-central-1")
        .env("ECHO_URL", base);
    w.config("env:\n  - { name: SECRET_TOKEN, secret: true }\n  - REGION\n  - ECHO_URL\n");
    w
}

fn assert_no_token(what: &str, text: &str) {
    for form in TOKEN_FORMS {
        assert!(
            !text.contains(form),
            "{what} shows the secret as `{form}`:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_is_masked_in_every_form_the_engine_writes() {
    let seen: Seen = Arc::default();
    let base = listen(
        Router::new()
            .route("/x/{t}", get(echo))
            .with_state(seen.clone()),
    )
    .await;
    let w = secret_workdir(&base);
    w.playbook(
        "leak",
        r#"name: leak
steps:
  - id: call
    http:
      url: "{{ env.ECHO_URL }}/x/{{ env.SECRET_TOKEN }}?t={{ env.SECRET_TOKEN }}&r={{ env.REGION }}"
      headers: { X-Token: "{{ env.SECRET_TOKEN }}", X-Region: "{{ env.REGION }}" }
  - id: said
    assert: { that: "true", message: "region {{ env.REGION }}, token {{ env.SECRET_TOKEN }}" }
"#,
    );
    let (dry, out, shown, w) = tokio::task::spawn_blocking(move || {
        let dry = w.run(&["run", "leak", "--dry-run", "-o", "json"]);
        let out = w.run(&["run", "leak", "-o", "json"]);
        let shown = w.run(&["runs", "show", "2", "-o", "json"]);
        (dry, out, shown, w)
    })
    .await
    .unwrap();
    assert_eq!(dry.code, 0, "{dry:?}");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(shown.code, 0, "{shown:?}");
    // The server got the real token, percent-encoded in the URL.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec!["/x/abc%2B%2F%3Ddef-ghij?t=abc%2B%2F%3Ddef-ghij&r=eu-central-1".to_owned()]
    );
    for (what, text) in [
        ("--dry-run", &dry.stdout),
        ("--dry-run stderr", &dry.stderr),
        ("run -o json", &out.stdout),
        ("run stderr", &out.stderr),
        ("runs show", &shown.stdout),
    ] {
        assert_no_token(what, text);
    }
    // A plain env entry is not a secret.
    assert!(
        out.stdout.contains("region eu-central-1, token ****"),
        "{out:?}"
    );
    assert!(dry.stdout.contains("eu-central-1"), "{dry:?}");
    let run = out.run();
    assert_eq!(run["steps"]["call"]["output"]["body"]["token"], "****");
    let mut stored = std::fs::read(w.path().join("runbook.db")).unwrap();
    stored.extend(std::fs::read(w.path().join("runbook.db-wal")).unwrap_or_default());
    for form in TOKEN_FORMS {
        let needle = form.as_bytes();
        assert!(
            !stored.windows(needle.len()).any(|x| x == needle),
            "the store holds the secret as `{form}`"
        );
    }
}

#[test]
fn transforming_a_secret_is_an_error_naming_it() {
    let w = secret_workdir("http://127.0.0.1:1");
    for (i, expr) in [
        "env.SECRET_TOKEN | upper",
        "(env.SECRET_TOKEN ~ '') | reverse",
        "(env.SECRET_TOKEN ~ '')[1:]",
        "env.SECRET_TOKEN | tojson",
        "{'t': env.SECRET_TOKEN} | tojson",
        "env.SECRET_TOKEN | urlencode",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("t{i}");
        w.playbook(
            &name,
            &format!(
                "name: {name}\nsteps:\n  - id: say\n    assert: {{ that: \"true\", message: \"{{{{ {expr} }}}}\" }}\n"
            ),
        );
        let out = w.run(&["run", &name, "-o", "json"]);
        assert_eq!(out.code, 1, "{expr}: {out:?}");
        assert_run_error(&out.run(), "secret `env.SECRET_TOKEN` was changed");
        assert_no_token(expr, &out.stdout);
        assert_no_token(expr, &out.stderr);
    }
    // Placed whole, even joined with `~`, it works.
    w.playbook(
        "whole",
        "name: whole\nsteps:\n  - id: say\n    assert: { that: \"true\", message: \"{{ 'Bearer ' ~ env.SECRET_TOKEN }}\" }\n",
    );
    let out = w.run(&["run", "whole", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.run()["steps"]["say"]["output"]["message"],
        "Bearer ****"
    );
}

#[test]
fn a_secret_too_short_to_mask_is_refused_at_start() {
    let w = Workdir::new()
        .env("SHORT_TOKEN", "abc12")
        .env("API_TOKEN", "tok-1");
    w.playbook(
        "small",
        "name: small\nsteps:\n  - id: one\n    sql: SELECT 1 AS one\n",
    );
    w.config("env:\n  - { name: SHORT_TOKEN, secret: true }\n");
    for args in [&["validate"][..], &["run", "small"], &["list"]] {
        let out = w.run(args);
        assert_ne!(out.code, 0, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("SHORT_TOKEN") && out.stderr.contains("at least 8 characters"),
            "{args:?}: {out:?}"
        );
        assert!(!out.stderr.contains("abc12"), "{out:?}");
    }
    w.config("auth:\n  tokens:\n    - { name: ops, role: operator, token_env: API_TOKEN }\n");
    let out = w.run(&["run", "small"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("auth.tokens `ops`"), "{out:?}");
    // A plain env entry may be short: it is not a secret.
    w.config("env: [SHORT_TOKEN]\n");
    let out = w.run(&["run", "small"]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn a_store_password_in_the_url_query_is_masked() {
    let w = Workdir::new().env("RUNBOOK_LOG", "debug");
    let store = "postgres://postgres@127.0.0.1:1/nowhere?password=hunter2-hunter2";
    for args in [&["status"][..], &["runs", "list"]] {
        let mut all = vec!["--store", store];
        all.extend_from_slice(args);
        let out = w.run(&all);
        assert_ne!(out.code, 0, "{out:?}");
        assert!(!out.stderr.contains("hunter2-hunter2"), "{out:?}");
        assert!(!out.stdout.contains("hunter2-hunter2"), "{out:?}");
        assert!(out.stderr.contains("password=****"), "{out:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_url_userinfo_is_masked_in_its_basic_form() {
    // A hook that refuses the request and echoes the authorization it got.
    let app = Router::new().route(
        "/hook",
        axum::routing::post(|headers: HeaderMap| async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            (axum::http::StatusCode::FORBIDDEN, format!("refused {auth}"))
        }),
    );
    let base = listen(app).await;
    let url = base.replace("http://", "http://hook:hook-pass-123@") + "/hook";
    let w = Workdir::new().env("HOOK_URL", &url);
    w.config("notify:\n  chat: { webhook: { url_env: HOOK_URL } }\n");
    w.playbook(
        "page",
        "name: page\nsteps:\n  - id: tell\n    notify: { to: chat, text: hello }\n",
    );
    let out = tokio::task::spawn_blocking(move || w.run(&["run", "page", "-o", "json"]))
        .await
        .unwrap();
    assert_eq!(out.code, 1, "{out:?}");
    assert_run_error(&out.run(), "answered 403: refused Basic ****");
    let basic = "aG9vazpob29rLXBhc3MtMTIz"; // base64("hook:hook-pass-123")
    for text in [&out.stdout, &out.stderr] {
        assert!(
            !text.contains(basic) && !text.contains("hook-pass-123"),
            "{out:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_templated_path_segment_cannot_climb() {
    let hits: Seen = Arc::default();
    let app =
        Router::new()
            .route(
                "/users/{x}/profile",
                get(
                    |State(hits): State<Seen>,
                     axum::extract::Path(x): axum::extract::Path<String>| async move {
                        hits.lock().unwrap().push(format!("profile of {x}"));
                        Json(json!({ "user": x }))
                    },
                ),
            )
            .route(
                "/profile",
                get(|State(hits): State<Seen>| async move {
                    hits.lock().unwrap().push("the top profile".to_owned());
                    Json(json!({ "user": "top" }))
                }),
            )
            .with_state(hits.clone());
    let base = listen(app).await;
    let w = Workdir::new();
    w.playbook(
        "profile",
        "name: profile\nparams:\n  base: { type: string }\n  x: { type: string }\nsteps:\n  - id: get\n    http: { url: \"{{ params.base }}/users/{{ params.x }}/profile\" }\n",
    );
    let base_param = format!("base={base}");
    let (climb, dots, single, w) = tokio::task::spawn_blocking(move || {
        let run = |x: &str| {
            w.run(&[
                "run",
                "profile",
                "--param",
                &base_param,
                "--param",
                &format!("x={x}"),
                "-o",
                "json",
            ])
        };
        (run(".."), run("a.b"), run("."), w)
    })
    .await
    .unwrap();
    drop(w);
    assert_eq!(climb.code, 1, "{climb:?}");
    assert_run_error(&climb.run(), "path segment");
    assert_eq!(single.code, 1, "{single:?}");
    assert_eq!(dots.code, 0, "{dots:?}");
    assert_eq!(dots.run()["steps"]["get"]["output"]["body"]["user"], "a.b");
    assert_eq!(
        hits.lock().unwrap().clone(),
        vec!["profile of a.b".to_owned()],
        "only the user's own profile was reached"
    );
}
