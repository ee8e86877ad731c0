//! The console's router called in-process with `oneshot`: no socket, no workers. Every page and
//! every action, signed out and as each role; sessions (cookie flags, expiry, sign-out,
//! revocation when the token leaves the config), CSRF, the security headers, escaping, and a
//! render of every template.

use std::{path::Path, sync::Arc};

use axum::{
    body::Body,
    http::{header, HeaderMap, Method, Request, StatusCode},
    Router,
};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::{
    config::Config,
    process::app::App,
    secrets::Masker,
    server::{self, AppState, Limits, Tokens},
    status::{RunStatus, StepStatus},
    store::{runs, Db},
};

const VIEWER: &str = "viewer-token-111";
const OPERATOR: &str = "operator-token-222";
const ADMIN: &str = "admin-token-333";

const CONFIG: &str = r#"
auth:
  tokens:
    - { name: v, role: viewer, token: viewer-token-111 }
    - { name: ops, role: operator, token: operator-token-222 }
    - { name: admin, role: PlatformAdmin, token: admin-token-333 }
alertmanager: { url: "http://127.0.0.1:9093" }
streaming:
  sensitive_fields: [email]
"#;

/// The same config without the operator's token.
const CONFIG_WITHOUT_OPS: &str = r#"
auth:
  tokens:
    - { name: v, role: viewer, token: viewer-token-111 }
    - { name: admin, role: PlatformAdmin, token: admin-token-333 }
"#;

const HELLO: &str = r#"name: hello
description: Says hello.
params:
  who: { type: string, default: world }
steps:
  - id: greet
    sql: SELECT 1 AS one
"#;

const FIX_DLQ: &str = r#"name: fix-dlq
description: Retries the DLQ after a person says so.
on:
  alerts:
    - alertname: DlqHigh
steps:
  - id: look
    sql: SELECT COUNT(*) AS n FROM command_queue WHERE status = 'dlq'
  - id: ask
    approve: { text: "Retry the DLQ?", timeout: 10m }
  - id: retry
    runtime: { op: dlq_retry }
"#;

struct Fixture {
    router: Router,
    store: Db,
    dir: tempfile::TempDir,
}

/// An answer: status, headers and the body as text.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The first CSRF token of the page's forms.
    fn csrf(&self) -> String {
        let at = self
            .text
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no csrf field in:\n{}", self.text));
        let rest = &self.text[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

fn limits() -> Limits {
    Limits {
        max_body: 64 * 1024,
        header_read_timeout: std::time::Duration::from_secs(10),
        request_timeout: std::time::Duration::from_secs(60),
        max_connections: 16,
    }
}

/// The router `runbook serve` builds, with the console, on a store in `dir` and this config.
fn build(store: &Db, dir: &Path, config: &str) -> Router {
    let config = Config::parse(Path::new("runbook.yaml"), config).unwrap();
    let masker = Masker::new(config.streaming.sensitive_fields.clone());
    config.register_secrets(&masker);
    let tokens = Tokens::from_config(&config, &masker).unwrap();
    let (app, diags) = App::build(
        store.clone(),
        Arc::new(config),
        masker,
        &dir.join("runbooks"),
    )
    .unwrap();
    assert!(diags.is_empty(), "playbook problems: {diags:?}");
    let state = Arc::new(AppState {
        engine: app.engine.clone(),
        services: app.services.clone(),
        metrics: app.metrics.clone(),
        tokens,
        receiver: server::receiver::ReceiverAuth::Insecure,
        ingest: server::receiver::Ingest::start(
            app.engine.clone(),
            app.services.clone(),
            app.metrics.clone(),
        ),
    });
    let limits = limits();
    let console = super::router(&limits, tokio_util::sync::CancellationToken::new());
    server::router_with(state, &limits, console)
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir(&runbooks).unwrap();
    std::fs::write(runbooks.join("hello.yaml"), HELLO).unwrap();
    std::fs::write(runbooks.join("fix-dlq.yaml"), FIX_DLQ).unwrap();
    let url = format!("sqlite://{}/runbook.db", dir.path().display());
    let store = Db::connect(&url, false, 4).await.unwrap();
    store.migrate().await.unwrap();
    let router = build(&store, dir.path(), CONFIG);
    Fixture { router, store, dir }
}

impl Fixture {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        cookie: Option<&str>,
        form: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let body = match form {
            Some(f) => {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Body::from(f.to_owned())
            }
            None => Body::empty(),
        };
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, uri: &str, cookie: Option<&str>) -> Answer {
        self.call(Method::GET, uri, cookie, None, &[]).await
    }

    async fn post(&self, uri: &str, cookie: &str, form: &str) -> Answer {
        self.call(Method::POST, uri, Some(cookie), Some(form), &[])
            .await
    }

    /// Signs in with `token`; returns the session cookie (`rb_session=...`).
    async fn sign_in(&self, token: &str) -> String {
        let form = self.get("/ui/login?next=/ui/runs", None).await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.text);
        let login_cookie = form.cookies()[0].split(';').next().unwrap().to_owned();
        let body = format!(
            "csrf={}&next=%2Fui%2Fruns&token={}",
            form.csrf(),
            crate::secrets::percent_encode(token)
        );
        let a = self
            .call(
                Method::POST,
                "/ui/login",
                Some(&login_cookie),
                Some(&body),
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
        assert_eq!(a.location(), "/ui/runs");
        a.cookies()
            .into_iter()
            .find(|c| c.starts_with("rb_session="))
            .expect("a session cookie")
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    }

    /// The CSRF token of a signed-in page.
    async fn csrf(&self, cookie: &str) -> String {
        self.get("/ui/runs", Some(cookie)).await.csrf()
    }

    async fn scalar(&self, sql: &str) -> Value {
        let rows = self.store.sql(sql, vec![]).await.unwrap().rows;
        rows.first()
            .and_then(|r| r.as_object())
            .and_then(|o| o.values().next().cloned())
            .unwrap_or(Value::Null)
    }
}

/// A run of `fix-dlq` started by an alert, held at its `approve` step, with its first step's
/// rows recorded. Returns its id.
async fn waiting_run(store: &Db) -> i64 {
    store
        .sql(
            "INSERT INTO runbook_alerts (fingerprint, starts_at, alertname, labels, annotations, status, \
             generator_url, first_received_at, last_received_at, notifications, matched) \
             VALUES ('fp1', '2026-01-01T00:00:00Z', 'DlqHigh', $1, $2, 'firing', \
             'http://prometheus:9090/graph?g0.expr=dlq', '2026-01-01T00:00:01Z', '2026-01-01T00:00:01Z', 1, 1)",
            vec![
                json!(r#"{"alertname":"DlqHigh","severity":"critical","instance":"<b>db-1</b>"}"#),
                json!(r#"{"summary":"DLQ is filling"}"#),
            ],
        )
        .await
        .unwrap();
    let id = runs::create_run(
        store,
        runs::NewRun {
            playbook: "fix-dlq",
            trigger: json!({ "kind": "alert", "fingerprint": "fp1", "starts_at": "2026-01-01T00:00:00Z", "alertname": "DlqHigh" }),
            params: json!({}),
            dry_run: false,
            parent_id: None,
            command_id: None,
            status: RunStatus::Running,
            version: None,
        },
    )
    .await
    .unwrap();
    store
        .sql(
            "INSERT INTO runbook_alert_runs (playbook, fingerprint, starts_at, kind, run_id, decided_at) \
             VALUES ('fix-dlq', 'fp1', '2026-01-01T00:00:00Z', 'firing', $1, '2026-01-01T00:00:01Z')",
            vec![json!(id)],
        )
        .await
        .unwrap();
    runs::record_attempt(
        store,
        runs::Attempt {
            run_id: id,
            step_id: "look",
            attempt: 1,
            item: None,
            status: StepStatus::Succeeded,
            input: &json!({ "sql": "SELECT COUNT(*) AS n FROM command_queue WHERE status = 'dlq'", "params": [] }),
            output: &json!({ "rows": [{ "n": 7 }], "output": { "row_count": 1 } }),
            error: None,
            started_at: chrono::Utc::now(),
            duration_ms: 3,
        },
    )
    .await
    .unwrap();
    runs::set_waiting(store, id, "ask").await.unwrap();
    id
}

/// Three DLQ entries: two `TimeoutException` of `user` (one with an e-mail in its payload), one
/// `ValidationException` of `order`.
async fn dlq_entries(store: &Db) {
    for (entity, error_type, payload) in [
        ("user", "TimeoutException", r#"{"email":"ada@example.com"}"#),
        ("user", "TimeoutException", r#"{"name":"Bob"}"#),
        ("order", "ValidationException", r#"{"sku":"x"}"#),
    ] {
        store
            .sql(
                "INSERT INTO command_queue (entity, entity_id, command_type, payload, status, error_type, error_message, attempts) \
                 VALUES ($1, '1', 'user.update', $2, 'dlq', $3, 'it failed', 5)",
                vec![json!(entity), json!(payload), json!(error_type)],
            )
            .await
            .unwrap();
    }
}

/// Every page a signed-in user can open, and the least role it needs.
const PAGES: &[(&str, &str)] = &[
    ("/ui/runs", "viewer"),
    (
        "/ui/runs?playbook=hello&status=succeeded&trigger=alert&alertname=DlqHigh&since=24h",
        "viewer",
    ),
    ("/ui/runs/1", "viewer"),
    ("/ui/runs/1/timeline?after=0", "viewer"),
    ("/ui/approvals", "viewer"),
    ("/ui/alerts", "viewer"),
    ("/ui/alerts?status=firing&unmatched=false", "viewer"),
    ("/ui/playbooks", "viewer"),
    ("/ui/queue", "viewer"),
    ("/ui/runs/1/rerun", "operator"),
    ("/ui/playbooks/match", "operator"),
    ("/ui/dlq", "PlatformAdmin"),
    (
        "/ui/dlq?errorType=TimeoutException&entity=user",
        "PlatformAdmin",
    ),
];

fn rank(role: &str) -> u8 {
    match role {
        "viewer" => 0,
        "operator" => 1,
        _ => 2,
    }
}

#[tokio::test]
async fn every_page_answers_each_role_as_its_role_allows() {
    let f = fixture().await;
    waiting_run(&f.store).await;
    dlq_entries(&f.store).await;
    for (token, role) in [
        (VIEWER, "viewer"),
        (OPERATOR, "operator"),
        (ADMIN, "PlatformAdmin"),
    ] {
        let cookie = f.sign_in(token).await;
        for (page, need) in PAGES {
            let a = f.get(page, Some(&cookie)).await;
            if rank(role) >= rank(need) {
                assert_eq!(a.status, StatusCode::OK, "{role} {page}: {}", a.text);
            } else {
                assert_eq!(a.status, StatusCode::FORBIDDEN, "{role} {page}");
                assert!(a.text.contains(&format!("this needs {need}")), "{}", a.text);
            }
            assert_eq!(
                a.headers[header::CONTENT_SECURITY_POLICY],
                super::CSP,
                "{page}"
            );
            assert_eq!(a.headers[header::X_FRAME_OPTIONS], "DENY");
        }
        // What a role cannot do is not offered.
        let run = f.get("/ui/runs/1", Some(&cookie)).await.text;
        assert_eq!(run.contains("id=\"approve\""), role != "viewer", "{role}");
        assert_eq!(run.contains("id=\"cancel\""), role != "viewer", "{role}");
        let nav = f.get("/ui/queue", Some(&cookie)).await.text;
        assert_eq!(
            nav.contains("href=\"/ui/dlq\""),
            role == "PlatformAdmin",
            "{role}"
        );
        let cards = f.get("/ui/approvals", Some(&cookie)).await.text;
        assert_eq!(
            cards.contains("value=\"approve\""),
            role != "viewer",
            "{role}"
        );
    }
}

#[tokio::test]
async fn signed_out_every_page_and_action_goes_to_the_sign_in_page() {
    let f = fixture().await;
    for (page, _) in PAGES {
        let a = f.get(page, None).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{page}");
        assert!(
            a.location().starts_with("/ui/login?next="),
            "{page}: {}",
            a.location()
        );
    }
    // The sign-in page sends the user back where they were going.
    let a = f.get("/ui/runs/7?x=1", None).await;
    assert_eq!(a.location(), "/ui/login?next=%2Fui%2Fruns%2F7%3Fx%3D1");
    for action in [
        "/ui/runs/1/approve",
        "/ui/runs/1/cancel",
        "/ui/runs/1/rerun",
        "/ui/dlq/retry",
        "/ui/dlq/cleanup",
        "/ui/pause",
        "/ui/resume",
        "/ui/playbooks/match",
        "/ui/logout",
    ] {
        let a = f
            .call(
                Method::POST,
                action,
                Some("rb_session=made-up"),
                Some("csrf=x"),
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{action}");
        assert!(a.location().starts_with("/ui/login"), "{action}");
    }
    // The event stream too.
    let a = f.get("/ui/runs/1/events", None).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn sign_in_sets_a_lax_http_only_cookie_and_stores_only_digests() {
    let f = fixture().await;
    let form = f.get("/ui/login", None).await;
    let login_cookie = form.cookies()[0].split(';').next().unwrap().to_owned();
    let body = format!("csrf={}&next=%2Fui%2Fqueue&token={OPERATOR}", form.csrf());
    let a = f
        .call(
            Method::POST,
            "/ui/login",
            Some(&login_cookie),
            Some(&body),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.location(), "/ui/queue");
    assert!(!a.location().contains(OPERATOR));
    let set = a
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("rb_session="))
        .unwrap();
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/ui", "Max-Age=43200"] {
        assert!(set.contains(flag), "{set}");
    }
    let id = set
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("rb_session=");
    let stored = f
        .store
        .sql("SELECT * FROM runbook_console_sessions", vec![])
        .await
        .unwrap()
        .rows;
    assert_eq!(stored.len(), 1);
    let row = stored[0].to_string();
    assert!(!row.contains(OPERATOR), "the token is stored: {row}");
    assert!(!row.contains(id), "the session id is stored: {row}");
    assert_eq!(stored[0]["token_name"], "ops");
}

#[tokio::test]
async fn a_wrong_token_or_a_stale_form_is_refused_and_says_why() {
    let f = fixture().await;
    let form = f.get("/ui/login", None).await;
    let login_cookie = form.cookies()[0].split(';').next().unwrap().to_owned();
    let body = format!("csrf={}&next=%2Fui%2Fruns&token=not-a-token", form.csrf());
    let a = f
        .call(
            Method::POST,
            "/ui/login",
            Some(&login_cookie),
            Some(&body),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(
        a.text.contains("not one of the configured API tokens"),
        "{}",
        a.text
    );
    assert!(!a.text.contains("not-a-token"), "the token is echoed");
    assert!(a.cookies().iter().all(|c| !c.starts_with("rb_session=")));
    // The CSRF token of another form, or none.
    let body = format!("csrf=other&next=%2Fui%2Fruns&token={OPERATOR}");
    let a = f
        .call(
            Method::POST,
            "/ui/login",
            Some(&login_cookie),
            Some(&body),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // A `next` of another site lands on the runs list.
    let body = format!(
        "csrf={}&next=https%3A%2F%2Fevil.example%2F&token={OPERATOR}",
        form.csrf()
    );
    let a = f
        .call(
            Method::POST,
            "/ui/login",
            Some(&login_cookie),
            Some(&body),
            &[],
        )
        .await;
    assert_eq!(a.location(), "/ui/runs");
}

#[tokio::test]
async fn sign_out_expiry_and_a_token_leaving_the_config_end_the_session() {
    let f = fixture().await;
    // Sign-out.
    let cookie = f.sign_in(VIEWER).await;
    let csrf = f.csrf(&cookie).await;
    let a = f.post("/ui/logout", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert!(a
        .cookies()
        .iter()
        .any(|c| c.starts_with("rb_session=;") && c.contains("Max-Age=0")));
    assert_eq!(
        f.get("/ui/runs", Some(&cookie)).await.status,
        StatusCode::SEE_OTHER
    );
    // Expiry.
    let cookie = f.sign_in(VIEWER).await;
    f.store
        .sql("UPDATE runbook_console_sessions SET expires_at = 0", vec![])
        .await
        .unwrap();
    assert_eq!(
        f.get("/ui/runs", Some(&cookie)).await.status,
        StatusCode::SEE_OTHER
    );
    // Revocation: the same store served with a config that no longer has the token.
    let ops = f.sign_in(OPERATOR).await;
    let admin = f.sign_in(ADMIN).await;
    let revoked = build(&f.store, f.dir.path(), CONFIG_WITHOUT_OPS);
    let call = |cookie: String| {
        let router = revoked.clone();
        async move {
            router
                .oneshot(
                    Request::get("/ui/runs")
                        .header(header::COOKIE, cookie)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(call(ops.clone()).await, StatusCode::SEE_OTHER);
    assert_eq!(call(admin).await, StatusCode::OK);
    assert_eq!(
        f.scalar("SELECT COUNT(*) AS n FROM runbook_console_sessions WHERE token_name = 'ops'")
            .await,
        json!(0),
        "the revoked session is deleted"
    );
}

#[tokio::test]
async fn every_action_needs_the_sessions_csrf_token_and_the_same_origin() {
    let f = fixture().await;
    let id = waiting_run(&f.store).await;
    let cookie = f.sign_in(OPERATOR).await;
    let other = f.sign_in(ADMIN).await;
    let others_csrf = f.csrf(&other).await;
    for form in [
        "decision=approve",
        "decision=approve&csrf=",
        &format!("decision=approve&csrf={others_csrf}"),
    ] {
        let a = f
            .post(&format!("/ui/runs/{id}/approve"), &cookie, form)
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{form}");
        assert!(a.text.contains("CSRF"), "{}", a.text);
    }
    let csrf = f.csrf(&cookie).await;
    let a = f
        .call(
            Method::POST,
            &format!("/ui/runs/{id}/approve"),
            Some(&cookie),
            Some(&format!("decision=approve&csrf={csrf}")),
            &[
                ("origin", "http://evil.example"),
                ("host", "127.0.0.1:8080"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(
        f.scalar(&format!("SELECT status FROM runbook_runs WHERE id = {id}"))
            .await,
        json!("waiting_approval"),
        "nothing was decided"
    );
}

#[tokio::test]
async fn an_operator_approves_with_a_comment_a_viewer_cannot() {
    let f = fixture().await;
    let id = waiting_run(&f.store).await;
    let viewer = f.sign_in(VIEWER).await;
    let csrf = f.csrf(&viewer).await;
    let a = f
        .post(
            &format!("/ui/runs/{id}/approve"),
            &viewer,
            &format!("csrf={csrf}&decision=approve"),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let ops = f.sign_in(OPERATOR).await;
    let csrf = f.csrf(&ops).await;
    let a = f
        .post(
            &format!("/ui/runs/{id}/approve"),
            &ops,
            &format!("csrf={csrf}&decision=approve&comment=looks+right&back=%2Fui%2Fapprovals"),
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    assert_eq!(a.location(), "/ui/approvals");
    let rows = runs::approvals(&f.store, id).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["decision"], "approved");
    assert_eq!(rows[0]["actor"], "console:ops");
    assert_eq!(rows[0]["comment"], "looks right");
    assert_eq!(
        f.scalar("SELECT actor FROM runbook_audit WHERE op = 'run_approved'")
            .await,
        json!("console:ops")
    );
    // A second answer is a conflict that names the first.
    let a = f
        .post(
            &format!("/ui/runs/{id}/approve"),
            &ops,
            &format!("csrf={csrf}&decision=reject"),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert!(a.text.contains("console:ops"), "{}", a.text);
}

#[tokio::test]
async fn an_operator_cancels_and_reruns_with_edited_inputs() {
    let f = fixture().await;
    let id = runs::create_run(
        &f.store,
        runs::NewRun {
            playbook: "hello",
            trigger: json!({ "kind": "api", "by": "ops" }),
            params: json!({ "who": "ada" }),
            dry_run: false,
            parent_id: None,
            command_id: None,
            status: RunStatus::Running,
            version: None,
        },
    )
    .await
    .unwrap();
    let ops = f.sign_in(OPERATOR).await;
    let csrf = f.csrf(&ops).await;
    let a = f
        .post(
            &format!("/ui/runs/{id}/cancel"),
            &ops,
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    assert_eq!(
        f.scalar(&format!("SELECT status FROM runbook_runs WHERE id = {id}"))
            .await,
        json!("cancel_requested")
    );
    // Cancelling again: it is not running any more.
    let a = f
        .post(
            &format!("/ui/runs/{id}/cancel"),
            &ops,
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    // The run ends; its guard (one run at a time) lets the re-run in.
    runs::finish_run(&f.store, id, RunStatus::Cancelled, None, None)
        .await
        .unwrap();
    // The re-run form carries the recorded input.
    let form = f.get(&format!("/ui/runs/{id}/rerun"), Some(&ops)).await;
    assert!(
        form.text.contains("name=\"param.who\" value=\"ada\""),
        "{}",
        form.text
    );
    let a = f
        .post(
            &format!("/ui/runs/{id}/rerun"),
            &ops,
            &format!("csrf={csrf}&param.who=grace"),
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    let new_id: i64 = a
        .location()
        .trim_start_matches("/ui/runs/")
        .parse()
        .unwrap();
    let run = runs::get_run(&f.store, new_id).await.unwrap().unwrap();
    assert_eq!(run["params"]["who"], "grace");
    assert_eq!(run["trigger"]["rerun_of"], id);
    assert_eq!(run["trigger"]["by"], "ops");
    assert_eq!(run["status"], "queued");
    // A bad param is named.
    let a = f
        .post(
            &format!("/ui/runs/{id}/rerun"),
            &ops,
            &format!("csrf={csrf}&param.nope=1"),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.text.contains("nope"), "{}", a.text);
}

#[tokio::test]
async fn the_run_page_puts_the_alert_first_and_escapes_what_it_shows() {
    let f = fixture().await;
    let id = waiting_run(&f.store).await;
    let cookie = f.sign_in(VIEWER).await;
    let page = f.get(&format!("/ui/runs/{id}"), Some(&cookie)).await.text;
    let alert_at = page.find("Alert DlqHigh").expect("the alert");
    let steps_at = page.find("id=\"timeline\"").expect("the timeline");
    assert!(alert_at < steps_at, "the alert comes first");
    assert!(page.contains("&lt;b&gt;db-1&lt;"), "labels are escaped");
    assert!(!page.contains("<b>db-1</b>"));
    // minijinja escapes `/` in attributes as `&#x2f;`, which the browser reads back as `/`.
    let page = page.replace("&#x2f;", "/");
    assert!(page.contains("href=\"http://prometheus:9090/graph?g0.expr=dlq\""));
    assert!(page.contains("http://127.0.0.1:9093/#/silences/new?filter="));
    assert!(page.contains("<td>7</td>"), "the rows found, as a table");
    assert!(page.contains("data-live=\"yes\""));
}

#[tokio::test]
async fn the_event_stream_resumes_after_the_last_event_id_and_ends_with_the_run() {
    let f = fixture().await;
    let id = waiting_run(&f.store).await;
    runs::finish_run(&f.store, id, RunStatus::Succeeded, None, None)
        .await
        .unwrap();
    let cookie = f.sign_in(VIEWER).await;
    let a = f.get(&format!("/ui/runs/{id}/events"), Some(&cookie)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(a.text.contains("event: update"), "{}", a.text);
    assert!(a.text.contains("id: 1"), "{}", a.text);
    assert!(a.text.contains("attempt-1"), "{}", a.text);
    assert!(a.text.contains("event: end"), "{}", a.text);
    // Resumed after the one entry: the entry is not sent again.
    let a = f
        .call(
            Method::GET,
            &format!("/ui/runs/{id}/events"),
            Some(&cookie),
            None,
            &[("last-event-id", "1")],
        )
        .await;
    assert!(!a.text.contains("attempt-1"), "{}", a.text);
    assert!(a.text.contains("event: end"), "{}", a.text);
    // The polling fallback says the same.
    let a = f
        .get(&format!("/ui/runs/{id}/timeline?after=0"), Some(&cookie))
        .await;
    let v: Value = serde_json::from_str(&a.text).unwrap();
    assert_eq!(v["ended"], true);
    assert_eq!(v["entries"][0]["n"], 1);
    assert_eq!(v["status"], "succeeded");
}

#[tokio::test]
async fn approvals_show_the_evidence_the_question_and_the_change() {
    let f = fixture().await;
    let id = waiting_run(&f.store).await;
    let cookie = f.sign_in(OPERATOR).await;
    let page = f.get("/ui/approvals", Some(&cookie)).await.text;
    assert!(page.contains(&format!("id=\"approval-{id}\"")), "{page}");
    assert!(page.contains("Retry the DLQ?"));
    assert!(page.contains("<td>7</td>"), "the diagnosis result");
    assert!(page.contains("op: dlq_retry"), "the change that follows");
    assert!(page.contains("expires"));
}

#[tokio::test]
async fn a_dlq_bulk_retry_shows_the_count_then_acts_on_confirmation() {
    let f = fixture().await;
    dlq_entries(&f.store).await;
    let ops = f.sign_in(OPERATOR).await;
    let csrf = f.csrf(&ops).await;
    let form = format!("csrf={csrf}&errorType=TimeoutException&entity=user");
    assert_eq!(
        f.post("/ui/dlq/retry", &ops, &form).await.status,
        StatusCode::FORBIDDEN
    );
    let admin = f.sign_in(ADMIN).await;
    let csrf = f.csrf(&admin).await;
    // The group's page masks the sensitive field.
    let page = f
        .get(
            "/ui/dlq?errorType=TimeoutException&entity=user",
            Some(&admin),
        )
        .await
        .text;
    assert!(!page.contains("ada@example.com"), "{page}");
    assert!(page.contains("TimeoutException"));
    let form = format!("csrf={csrf}&errorType=TimeoutException&entity=user");
    let preview = f.post("/ui/dlq/retry", &admin, &form).await;
    assert_eq!(preview.status, StatusCode::OK);
    assert!(
        preview.text.contains("Retry 2 DLQ entries?"),
        "{}",
        preview.text
    );
    assert_eq!(
        f.scalar("SELECT COUNT(*) AS n FROM command_queue WHERE status = 'dlq'")
            .await,
        json!(3),
        "the preview changes nothing"
    );
    // A confirmation of another count (the DLQ changed since) asks again.
    let a = f
        .post("/ui/dlq/retry", &admin, &format!("{form}&confirm=5"))
        .await;
    assert!(a.text.contains("changed since"), "{}", a.text);
    let a = f
        .post("/ui/dlq/retry", &admin, &format!("{form}&confirm=2"))
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    assert_eq!(
        f.scalar("SELECT COUNT(*) AS n FROM command_queue WHERE status = 'pending'")
            .await,
        json!(2)
    );
    assert_eq!(
        f.scalar("SELECT actor FROM runbook_audit WHERE op = 'dlq_retry'")
            .await,
        json!("console:admin")
    );
    // Clean-up: the rest, after its own confirmation.
    let form = format!("csrf={csrf}&errorType=ValidationException&older_than=0s");
    let preview = f.post("/ui/dlq/cleanup", &admin, &form).await;
    assert!(
        preview.text.contains("Delete 1 DLQ entry?"),
        "{}",
        preview.text
    );
    let a = f
        .post("/ui/dlq/cleanup", &admin, &format!("{form}&confirm=1"))
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(
        f.scalar("SELECT COUNT(*) AS n FROM command_queue WHERE status = 'dlq'")
            .await,
        json!(0)
    );
}

#[tokio::test]
async fn pause_and_resume_need_an_operator() {
    let f = fixture().await;
    let viewer = f.sign_in(VIEWER).await;
    let csrf = f.csrf(&viewer).await;
    let a = f
        .post("/ui/pause", &viewer, &format!("csrf={csrf}&reason=x"))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let ops = f.sign_in(OPERATOR).await;
    let csrf = f.csrf(&ops).await;
    let a = f
        .post(
            "/ui/pause",
            &ops,
            &format!("csrf={csrf}&reason=db+failover"),
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let page = f.get("/ui/alerts", Some(&ops)).await.text;
    assert!(
        page.contains("db failover") && page.contains("console:ops"),
        "{page}"
    );
    let a = f.post("/ui/resume", &ops, &format!("csrf={csrf}")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(
        f.scalar("SELECT COUNT(*) AS n FROM runbook_pause").await,
        json!(0)
    );
}

#[tokio::test]
async fn the_match_page_plans_the_playbooks_an_alert_would_start_and_changes_nothing() {
    let f = fixture().await;
    dlq_entries(&f.store).await;
    let ops = f.sign_in(OPERATOR).await;
    let csrf = f.csrf(&ops).await;
    let a = f
        .post(
            "/ui/playbooks/match",
            &ops,
            &format!("csrf={csrf}&labels=alertname%3DDlqHigh"),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.text.contains("fix-dlq"), "{}", a.text);
    assert!(!a.text.contains("<h2>hello"), "hello has no alert matcher");
    assert_eq!(
        f.scalar("SELECT COUNT(*) AS n FROM command_queue WHERE status = 'dlq'")
            .await,
        json!(3),
        "a plan changes nothing"
    );
    let a = f
        .post(
            "/ui/playbooks/match",
            &ops,
            &format!("csrf={csrf}&labels=no+equals+sign"),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.text.contains("line 1"), "{}", a.text);
}

#[tokio::test]
async fn bad_filters_are_named_and_unknown_pages_are_html_404s() {
    let f = fixture().await;
    let cookie = f.sign_in(VIEWER).await;
    let a = f.get("/ui/runs?status=nope", Some(&cookie)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.text.contains("status: unknown run status `nope`"),
        "{}",
        a.text
    );
    let a = f.get("/ui/runs/999", Some(&cookie)).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.text.contains("no run 999"));
    let a = f.get("/ui/nothing-here", Some(&cookie)).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    // The API is as it was: JSON errors, bearer tokens.
    let a = f.get("/api/runs", None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.text.starts_with("{\"error\""), "{}", a.text);
}

#[tokio::test]
async fn the_assets_are_served_and_the_login_page_needs_no_session() {
    let f = fixture().await;
    let js = f.get("/ui/assets/console.js", None).await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.text.contains("EventSource"));
    let css = f.get("/ui/assets/console.css", None).await;
    assert!(css.text.contains("prefers-color-scheme: dark"));
    let login = f.get("/ui/login", None).await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.text.contains("type=\"password\""));
}

/// Every template renders with every part it can show, and escapes what it shows.
#[test]
fn every_template_renders() {
    let me = minijinja::context! { name => "ops", role => "operator", operate => true, admin => true, csrf => "c" };
    let evil = "<script>x</script>";
    let full = minijinja::context! {
        me, nav => "runs", title => evil, status => 400, message => evil, csrf => "c", next => "/ui/runs",
        error => evil, configured => true,
        runs => vec![json!({ "id": 1, "playbook": evil, "status": "failed", "trigger": { "kind": "alert", "alertname": evil } })],
        playbooks => vec![json!({ "name": evil, "alerts": [evil], "errors": [evil], "schedule": { "expr": "0 * * * * *", "tz": "UTC", "next": [] } })],
        statuses => vec!["queued"], triggers => vec!["alert"], f => json!({}),
        run => json!({ "id": 1, "playbook": evil, "status": "waiting_approval", "trigger": { "kind": "alert" }, "params": { "x": evil }, "report": evil, "approvals": [{ "step_id": "a", "decision": "approved", "actor": evil, "comment": evil }] }),
        alert => json!({ "alertname": evil, "status": "firing", "labels": { "a": evil }, "annotations": { "b": evil }, "fingerprint": "f", "generator_url": "http://x" }),
        others => vec![json!({ "id": 2, "playbook": "p", "status": "failed" })],
        steps => Vec::<String>::new(), live => true, cancellable => true, waiting => true,
        a => json!({ "n": 1, "step_id": evil, "attempt": 2, "status": "failed", "error": evil, "input": { "sql": evil }, "found": { "table": { "columns": [evil], "rows": [[evil]], "more": 3 }, "text": evil, "cut": 5 } }),
        id => 1, playbook => evil, fields => vec![json!({ "name": "who", "type": "string", "value": evil })], changed => true,
        cards => vec![json!({ "id": 1, "playbook": evil, "step": "ask", "question": evil, "trigger": { "kind": "alert" }, "evidence": [{ "step": "look", "found": { "text": evil } }], "changes": [{ "id": "retry", "kind": "runtime", "source": evil }], "expires": "2026-01-01T00:00:00Z" })],
        stats => json!({ "pending": 1, "processing": 0, "dlq": { "total": 1 }, "outbox_unsent": 0, "outbox_parked": 0, "locks": { "held": 1, "expired": 0, "expiries_total": 0 }, "settings": { "workerConcurrency": 3 } }),
        locks => vec![json!({ "entity": evil, "entity_id": "1" })], oldest_age => "1m", bars => vec![json!({ "y": 0, "width": 10, "label": evil, "count": 1 })], chart_height => 22,
        groups => vec![json!({ "error_type": evil, "entity": "user", "count": 2 })],
        entries => json!({ "totalElements": 3, "content": [{ "id": 1, "payload": { "e": evil } }] }),
        error_type => evil, entity => "user", verb => "retry", count => 2, changed_since => true,
        by_error_type => json!({ "T": 2 }), older_than => "7d", action => "/ui/dlq/retry",
        labels => evil, results => vec![json!({ "playbook": evil, "status": "planned", "entries": [{ "step": "s", "note": { "action": "read", "would": evil } }] })],
        alerts => vec![json!({ "alertname": evil, "status": "firing", "labels": { "a": evil }, "runs": [{ "run_id": 1, "playbook": evil }] })],
        notifications => vec![json!({ "id": 1, "status": "firing", "outcomes": [{ "fingerprint": evil, "outcome": "started", "playbooks": [{ "playbook": evil, "outcome": "started", "run_id": 1 }] }] })],
        paused => json!({ "reason": evil, "by": "ops", "since": "2026-01-01T00:00:00Z" }),
    };
    for (name, _) in super::TEMPLATES {
        let html = super::render(name, full.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!html.contains(evil), "{name} did not escape:\n{html}");
    }
}
