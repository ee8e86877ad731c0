//! The console's router called in-process with `oneshot`: no socket, no workers. Every page and
//! every action, signed out and as each role; sessions (cookie flags, expiry, sign-out,
//! revocation when the token leaves the config), CSRF, the security headers, escaping, and a
//! render of every template. This file builds the router and signs in; the tests are by subject.

mod actions;
mod pages;
mod sessions;

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

pub(super) const VIEWER: &str = "viewer-token-111";
pub(super) const OPERATOR: &str = "operator-token-222";
pub(super) const ADMIN: &str = "admin-token-333";

pub(super) const CONFIG: &str = r#"
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
pub(super) const CONFIG_WITHOUT_OPS: &str = r#"
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

pub(super) struct Fixture {
    pub router: Router,
    pub store: Db,
    pub dir: tempfile::TempDir,
}

/// An answer: status, headers and the body as text.
pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Answer {
    pub(super) fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub(super) fn cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The first CSRF token of the page's forms.
    pub(super) fn csrf(&self) -> String {
        let at = self
            .text
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no csrf field in:\n{}", self.text));
        let rest = &self.text[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

pub(super) fn limits() -> Limits {
    Limits {
        max_body: 64 * 1024,
        header_read_timeout: std::time::Duration::from_secs(10),
        request_timeout: std::time::Duration::from_secs(60),
        max_connections: 16,
    }
}

/// The router `runbook serve` builds, with the console, on a store in `dir` and this config.
pub(super) fn build(store: &Db, dir: &Path, config: &str) -> Router {
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

pub(super) async fn fixture() -> Fixture {
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
    pub(super) async fn call(
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

    pub(super) async fn get(&self, uri: &str, cookie: Option<&str>) -> Answer {
        self.call(Method::GET, uri, cookie, None, &[]).await
    }

    pub(super) async fn post(&self, uri: &str, cookie: &str, form: &str) -> Answer {
        self.call(Method::POST, uri, Some(cookie), Some(form), &[])
            .await
    }

    /// Signs in with `token`; returns the session cookie (`rb_session=...`).
    pub(super) async fn sign_in(&self, token: &str) -> String {
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
    pub(super) async fn csrf(&self, cookie: &str) -> String {
        self.get("/ui/runs", Some(cookie)).await.csrf()
    }

    pub(super) async fn scalar(&self, sql: &str) -> Value {
        let rows = self.store.sql(sql, vec![]).await.unwrap().rows;
        rows.first()
            .and_then(|r| r.as_object())
            .and_then(|o| o.values().next().cloned())
            .unwrap_or(Value::Null)
    }
}

/// A run of `fix-dlq` started by an alert, held at its `approve` step, with its first step's
/// rows recorded. Returns its id.
pub(super) async fn waiting_run(store: &Db) -> i64 {
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
    runs::set_waiting(store, id, "ask", &Value::Null)
        .await
        .unwrap();
    id
}

/// Three DLQ entries: two `TimeoutException` of `user` (one with an e-mail in its payload), one
/// `ValidationException` of `order`.
pub(super) async fn dlq_entries(store: &Db) {
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
pub(super) const PAGES: &[(&str, &str)] = &[
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

pub(super) fn rank(role: &str) -> u8 {
    match role {
        "viewer" => 0,
        "operator" => 1,
        _ => 2,
    }
}
