//! The router called in-process with `oneshot` (axum's `examples/testing` pattern): no socket,
//! no listener, no workers. The state is built as `runbook serve` builds it, on a temporary SQLite
//! store, with literal tokens and one playbook.

use std::{path::Path, sync::Arc};

use axum::{
    body::Body,
    http::{header, HeaderMap, Method, Request, StatusCode},
    Router,
};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{router, AppState, Limits, Tokens};
use crate::{config::Config, process::app::App, secrets::Masker, status::RunStatus, store::Db};

const VIEWER: &str = "viewer-token-111";
const OPERATOR: &str = "operator-token-222";
const ADMIN: &str = "admin-token-333";
const MAX_BODY: usize = 1024;

/// Literal tokens (the config warns about them outside local trials; fine for a test).
const CONFIG: &str = r#"
auth:
  tokens:
    - { name: v, role: viewer, token: viewer-token-111 }
    - { name: ops, role: operator, token: operator-token-222 }
    - { name: admin, role: PlatformAdmin, token: admin-token-333 }
streaming:
  sensitive_fields: [email]
"#;

const PLAYBOOK: &str = r#"name: hello
description: Says hello.
params:
  who: { type: string, default: world }
steps:
  - id: greet
    sql: SELECT 1 AS one
"#;

struct Fixture {
    router: Router,
    store: Db,
    _dir: tempfile::TempDir,
}

/// An answer: status, headers, the body as text and as JSON (`Null` when it is not JSON).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    json: Value,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir(&runbooks).unwrap();
    std::fs::write(runbooks.join("hello.yaml"), PLAYBOOK).unwrap();
    let url = format!("sqlite://{}/runbook.db", dir.path().display());
    let store = Db::connect(&url, false, 4).await.unwrap();
    store.migrate().await.unwrap();
    let config = Config::parse(Path::new("runbook.yaml"), CONFIG).unwrap();
    let masker = Masker::new(config.streaming.sensitive_fields.clone());
    config.register_secrets(&masker);
    let tokens = Tokens::from_config(&config, &masker).unwrap();
    let (app, diags) = App::build(store.clone(), Arc::new(config), masker, &runbooks).unwrap();
    assert!(diags.is_empty(), "playbook problems: {diags:?}");
    let state = Arc::new(AppState {
        engine: app.engine.clone(),
        services: app.services.clone(),
        metrics: app.metrics.clone(),
        tokens,
        receiver: super::receiver::ReceiverAuth::Insecure,
        ingest: super::receiver::Ingest::start(
            app.engine.clone(),
            app.services.clone(),
            app.metrics.clone(),
        ),
    });
    Fixture {
        router: router(
            state,
            &Limits {
                max_body: MAX_BODY,
                header_read_timeout: std::time::Duration::from_secs(10),
                request_timeout: std::time::Duration::from_secs(60),
                max_connections: 16,
            },
        ),
        store,
        _dir: dir,
    }
}

impl Fixture {
    /// One request; `body` is sent as `application/json` when given.
    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_owned())
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
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            text,
            json,
        }
    }

    async fn get(&self, uri: &str, token: Option<&str>) -> Answer {
        self.call(Method::GET, uri, token, None).await
    }

    async fn post(&self, uri: &str, token: Option<&str>, body: &str) -> Answer {
        self.call(Method::POST, uri, token, Some(body)).await
    }

    /// Puts a command in the DLQ directly, as a worker would after its last failure.
    async fn dead_letter(&self, entity_id: &str, error_type: &str, payload: Value) {
        self.store
            .sql(
                "INSERT INTO command_queue (entity, entity_id, command_type, payload, status, attempts, error_type, error_message) \
                 VALUES ('user', $1, 'user.update', $2, 'dlq', 1, $3, 'failed')",
                vec![json!(entity_id), json!(payload.to_string()), json!(error_type)],
            )
            .await
            .unwrap();
    }

    async fn count(&self, sql: &str) -> i64 {
        let rows = self.store.sql(sql, vec![]).await.unwrap().rows;
        rows[0]["n"]
            .as_i64()
            .unwrap_or_else(|| panic!("not a count: {rows:?}"))
    }
}

/// A JSON error as `AppError` writes it: `{"error": {"status", "message"}}`.
fn assert_error(a: &Answer, status: StatusCode, says: &str) {
    assert_eq!(a.status, status, "{}", a.text);
    assert_eq!(a.json["error"]["status"], status.as_u16(), "{}", a.text);
    let message = a.json["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(says),
        "error message should say `{says}`: {}",
        a.text
    );
}

#[tokio::test]
async fn protected_routes_refuse_a_missing_or_unknown_token() {
    let fx = fixture().await;
    for (method, uri) in [
        (Method::GET, "/api/playbooks"),
        (Method::GET, "/api/runs"),
        (Method::GET, "/api/runs/1"),
        (Method::POST, "/api/runs"),
        (Method::GET, "/api/admin/streaming/dlq"),
        (Method::POST, "/api/admin/streaming/dlq/retry-all"),
        (Method::DELETE, "/api/admin/streaming/dlq/cleanup"),
        (Method::GET, "/api/admin/streaming/stats"),
    ] {
        let body = (method == Method::POST).then_some(r#"{"playbook": "hello"}"#);
        let a = fx.call(method.clone(), uri, None, body).await;
        assert_error(&a, StatusCode::UNAUTHORIZED, "a bearer token is required");
        assert_eq!(
            a.headers[header::WWW_AUTHENTICATE],
            "Bearer",
            "{method} {uri}"
        );
        let a = fx
            .call(method.clone(), uri, Some("not-a-token"), body)
            .await;
        assert_error(&a, StatusCode::UNAUTHORIZED, "unknown token");
    }
    assert_eq!(
        fx.count("SELECT COUNT(*) AS n FROM command_queue").await,
        0,
        "a refused POST /api/runs queued nothing"
    );
}

#[tokio::test]
async fn a_role_below_the_route_is_forbidden() {
    let fx = fixture().await;
    fx.dead_letter("u1", "TimeoutException", json!({})).await;
    let retry = "/api/admin/streaming/dlq/retry-all";

    let a = fx.post(retry, Some(VIEWER), "").await;
    assert_error(
        &a,
        StatusCode::FORBIDDEN,
        "token `v` has role viewer; this call needs PlatformAdmin",
    );
    let a = fx.post(retry, Some(OPERATOR), "").await;
    assert_error(
        &a,
        StatusCode::FORBIDDEN,
        "token `ops` has role operator; this call needs PlatformAdmin",
    );
    let a = fx.get("/api/admin/streaming/dlq", Some(OPERATOR)).await;
    assert_error(&a, StatusCode::FORBIDDEN, "needs PlatformAdmin");
    let a = fx
        .call(
            Method::DELETE,
            "/api/admin/streaming/dlq/cleanup?olderThan=0s",
            Some(OPERATOR),
            None,
        )
        .await;
    assert_error(&a, StatusCode::FORBIDDEN, "needs PlatformAdmin");
    let a = fx
        .post("/api/runs", Some(VIEWER), r#"{"playbook": "hello"}"#)
        .await;
    assert_error(&a, StatusCode::FORBIDDEN, "this call needs operator");
    assert_eq!(
        fx.count("SELECT COUNT(*) AS n FROM command_queue WHERE status = 'dlq'")
            .await,
        1,
        "a forbidden retry or cleanup leaves the DLQ as it was"
    );
    assert_eq!(
        fx.count("SELECT COUNT(*) AS n FROM command_queue WHERE status = 'pending'")
            .await,
        0,
        "a forbidden run queues nothing"
    );

    // The same call with the role it needs goes through.
    let a = fx.post(retry, Some(ADMIN), "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json, json!({ "retried": 1 }));
}

#[tokio::test]
async fn health_and_readiness_answer_without_a_token() {
    let fx = fixture().await;
    let a = fx.get("/healthz", None).await;
    assert_eq!((a.status, a.text.as_str()), (StatusCode::OK, "ok\n"));
    let a = fx.get("/readyz", None).await;
    assert_eq!((a.status, a.text.as_str()), (StatusCode::OK, "ready\n"));
}

#[tokio::test]
async fn metrics_are_openmetrics_and_show_the_queue_depth() {
    let fx = fixture().await;
    let a = fx.get("/metrics", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers[header::CONTENT_TYPE],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(
        a.text.contains("# TYPE core_stream_cmd_queue_depth gauge"),
        "{}",
        a.text
    );
    assert!(a.text.ends_with("# EOF\n"), "{}", a.text);
    // An empty queue reports 0 for the priorities runs use, rather than no series.
    assert!(
        a.text
            .contains("core_stream_cmd_queue_depth{priority=\"3\"} 0\n"),
        "{}",
        a.text
    );
    // Run counters start at 0 per playbook, trigger and status.
    assert!(
        a.text.contains(
            "runbook_runs_total{playbook=\"hello\",trigger=\"alert\",status=\"failed\"} 0\n"
        ),
        "{}",
        a.text
    );

    // The gauge is read from the queue at each scrape.
    let run = fx
        .post("/api/runs", Some(OPERATOR), r#"{"playbook": "hello"}"#)
        .await;
    assert_eq!(run.status, StatusCode::ACCEPTED, "{}", run.text);
    let a = fx.get("/metrics", None).await;
    assert!(
        a.text
            .contains("core_stream_cmd_queue_depth{priority=\"3\"} 1\n"),
        "{}",
        a.text
    );
}

#[tokio::test]
async fn playbooks_lists_the_loaded_playbook() {
    let fx = fixture().await;
    let a = fx.get("/api/playbooks", Some(VIEWER)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let path = a.json[0]["path"].as_str().unwrap().to_owned();
    assert!(path.ends_with("runbooks/hello.yaml"), "{path}");
    assert_eq!(
        a.json,
        json!([{
            "name": "hello",
            "description": "Says hello.",
            "path": path,
            "version": crate::store::versions::hash(PLAYBOOK),
            "loaded": true,
            "valid": true,
            "errors": [],
            "schedule": null,
            "changes_things": false,
            "params": [{ "name": "who", "type": "string", "default": "world" }],
        }])
    );
}

#[tokio::test]
async fn a_run_of_an_unknown_playbook_is_404_naming_it() {
    let fx = fixture().await;
    let a = fx
        .post("/api/runs", Some(OPERATOR), r#"{"playbook": "nope"}"#)
        .await;
    assert_error(&a, StatusCode::NOT_FOUND, "unknown playbook `nope`");
    assert_eq!(fx.count("SELECT COUNT(*) AS n FROM command_queue").await, 0);
}

#[tokio::test]
async fn a_run_is_accepted_and_its_command_queued() {
    let fx = fixture().await;
    let a = fx
        .post(
            "/api/runs",
            Some(OPERATOR),
            r#"{"playbook": "hello", "params": {"who": "ops"}, "priority": 5}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.json["playbook"], "hello");
    let id = a.json["command_id"].as_i64().expect("command_id");

    let rows = fx
        .store
        .sql(
            "SELECT entity, entity_id, command_type, priority, status, payload FROM command_queue WHERE id = $1",
            vec![json!(id)],
        )
        .await
        .unwrap()
        .rows;
    assert_eq!(rows.len(), 1, "command {id} is in the queue");
    let row = &rows[0];
    assert_eq!(row["entity"], "runbook");
    assert_eq!(row["entity_id"], "hello");
    assert_eq!(row["command_type"], "runbook.run");
    assert_eq!(row["priority"], 5);
    assert_eq!(row["status"], "pending");
    let payload = &row["payload"];
    assert_eq!(payload["playbook"], "hello");
    assert_eq!(payload["params"], json!({ "who": "ops" }));
    assert_eq!(payload["trigger"], json!({ "kind": "api", "by": "ops" }));
}

/// A decision of exactly `len` bytes, for `POST /api/runs/{id}/approve`.
fn decision_of(len: usize) -> String {
    let frame = r#"{"comment": ""}"#.len();
    format!(r#"{{"comment": "{}"}}"#, "x".repeat(len - frame))
}

#[tokio::test]
async fn a_body_over_max_body_is_413() {
    let fx = fixture().await;
    let approve = "/api/runs/1/approve";
    // Up to max_body the body is read (and the missing run is the answer) ...
    let a = fx
        .post(approve, Some(OPERATOR), &decision_of(MAX_BODY))
        .await;
    assert_error(&a, StatusCode::NOT_FOUND, "no run 1");
    // ... one byte more is refused before the handler reads it.
    let a = fx
        .post(approve, Some(OPERATOR), &decision_of(MAX_BODY + 1))
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text);
}

/// `runs_create` once turned every `JsonRejection` into a 400, so a body over the limit
/// answered 400 "length limit exceeded" instead of 413.
#[tokio::test]
async fn a_run_body_over_max_body_is_413() {
    let fx = fixture().await;
    let big = format!(
        r#"{{"playbook": "hello", "params": {{"who": "{}"}}}}"#,
        "x".repeat(MAX_BODY)
    );
    let a = fx.post("/api/runs", Some(OPERATOR), &big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text);
    assert_eq!(fx.count("SELECT COUNT(*) AS n FROM command_queue").await, 0);
}

#[tokio::test]
async fn malformed_json_is_400_with_a_json_error() {
    let fx = fixture().await;
    let a = fx
        .post("/api/runs", Some(OPERATOR), r#"{"playbook": "hello""#)
        .await;
    assert_error(
        &a,
        StatusCode::BAD_REQUEST,
        "Failed to parse the request body as JSON",
    );
    let a = fx
        .post(
            "/api/runs",
            Some(OPERATOR),
            r#"{"playbook": "hello", "prio": 1}"#,
        )
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "unknown field `prio`");
    let a = fx
        .post("/api/runs/1/approve", Some(OPERATOR), "{not json")
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "decision:");
    assert_eq!(fx.count("SELECT COUNT(*) AS n FROM command_queue").await, 0);
}

#[tokio::test]
async fn a_missing_run_is_404() {
    let fx = fixture().await;
    let a = fx.get("/api/runs/4242", Some(VIEWER)).await;
    assert_error(&a, StatusCode::NOT_FOUND, "no run 4242");
}

#[tokio::test]
async fn dlq_list_answers_with_total_elements() {
    let fx = fixture().await;
    let dlq = "/api/admin/streaming/dlq";
    let a = fx.get(dlq, Some(ADMIN)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["totalElements"], 0);
    assert_eq!(a.json["content"], json!([]));

    fx.dead_letter(
        "u1",
        "ValidationException",
        json!({ "email": "a@example.com" }),
    )
    .await;
    fx.dead_letter("u2", "TimeoutException", json!({})).await;
    let a = fx.get(dlq, Some(ADMIN)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["totalElements"], 2);
    assert_eq!(a.json["totalPages"], 1);
    assert_eq!(
        (a.json["page"].clone(), a.json["size"].clone()),
        (json!(0), json!(20))
    );
    assert_eq!(a.json["content"].as_array().unwrap().len(), 2);

    let a = fx
        .get(
            &format!("{dlq}?errorType=ValidationException&size=1"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["totalElements"], 1);
    assert_eq!(a.json["content"][0]["entity_id"], "u1");
    assert_eq!(
        a.json["content"][0]["payload"]["email"], "****",
        "sensitive fields are masked"
    );
}

#[tokio::test]
async fn cancel_needs_an_operator_and_a_run_that_has_not_ended() {
    let fx = fixture().await;
    let new_run = |status: RunStatus| crate::store::runs::NewRun {
        playbook: "hello",
        trigger: json!({ "kind": "cli" }),
        params: json!({}),
        dry_run: false,
        parent_id: None,
        command_id: None,
        status,
        version: None,
    };
    let running = crate::store::runs::create_run(&fx.store, new_run(RunStatus::Running))
        .await
        .unwrap();
    let done = crate::store::runs::create_run(&fx.store, new_run(RunStatus::Succeeded))
        .await
        .unwrap();
    let cancel = |id: i64| format!("/api/runs/{id}/cancel");

    let a = fx.post(&cancel(running), None, "").await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "a bearer token is required");
    let a = fx.post(&cancel(running), Some(VIEWER), "").await;
    assert_error(&a, StatusCode::FORBIDDEN, "this call needs operator");
    let a = fx.post(&cancel(4242), Some(OPERATOR), "").await;
    assert_error(&a, StatusCode::NOT_FOUND, "no run 4242");
    let a = fx.post(&cancel(done), Some(OPERATOR), "").await;
    assert_error(
        &a,
        StatusCode::BAD_REQUEST,
        &format!("run {done} is succeeded; only a run that is running or waiting for approval can be cancelled"),
    );
    assert_eq!(
        fx.count("SELECT COUNT(*) AS n FROM runbook_audit").await,
        0,
        "a refused cancel changes nothing"
    );

    let a = fx.post(&cancel(running), Some(OPERATOR), "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.json,
        json!({ "run_id": running, "status": "cancel_requested", "by": "api:ops" })
    );
    let run = fx.get(&format!("/api/runs/{running}"), Some(VIEWER)).await;
    assert_eq!(run.json["status"], "cancel_requested");
    assert_eq!(run.json["error"], "cancelled by api:ops");
    assert_eq!(
        fx.count(
            "SELECT COUNT(*) AS n FROM runbook_audit WHERE actor = 'api:ops' AND op = 'run_cancel'"
        )
        .await,
        1
    );
}

/// Once, `Path` and `Query` rejections (text/plain) came before the token check, so a caller
/// without a token learnt which routes and parameters exist. Now any `/api/` request without a
/// valid token is a 401, whatever its path, method, query or body.
#[tokio::test]
async fn without_a_token_every_api_request_is_401_whatever_its_path_or_query() {
    let fx = fixture().await;
    let cases = [
        (Method::GET, "/api/no-such-route"),
        (Method::GET, "/api"),
        (Method::GET, "/api/runs/not-a-number"),
        (Method::POST, "/api/runs/not-a-number/approve"),
        (Method::GET, "/api/admin/streaming/dlq?page=abc&size=-4"),
        (Method::GET, "/api/runs?limit=many"),
        (Method::PUT, "/api/runs"),
        (Method::GET, "/api/runs/1/approve"),
        (
            Method::DELETE,
            "/api/admin/streaming/dlq/cleanup?olderThan=forever",
        ),
    ];
    for (method, uri) in cases {
        for token in [None, Some("not-a-token")] {
            let a = fx.call(method.clone(), uri, token, Some("{not json")).await;
            let says = if token.is_none() {
                "a bearer token is required"
            } else {
                "unknown token"
            };
            assert_error(&a, StatusCode::UNAUTHORIZED, says);
            assert_eq!(
                a.headers[header::WWW_AUTHENTICATE],
                "Bearer",
                "{method} {uri}"
            );
        }
    }
    // Over the body limit, too.
    let a = fx
        .call(
            Method::POST,
            "/api/runs/1/approve",
            None,
            Some(&decision_of(MAX_BODY + 1)),
        )
        .await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "a bearer token is required");
}

/// The router's own answers (404, 405) were empty and the extractors' rejections text/plain;
/// every error answer is now JSON in the API's shape.
#[tokio::test]
async fn every_error_answer_is_json() {
    let fx = fixture().await;
    let a = fx.get("/api/no-such-route", Some(VIEWER)).await;
    assert_error(
        &a,
        StatusCode::NOT_FOUND,
        "no such endpoint: GET /api/no-such-route",
    );
    let a = fx.get("/no-such-page", None).await;
    assert_error(
        &a,
        StatusCode::NOT_FOUND,
        "no such endpoint: GET /no-such-page",
    );

    let a = fx
        .call(Method::PUT, "/api/runs", Some(OPERATOR), None)
        .await;
    assert_error(
        &a,
        StatusCode::METHOD_NOT_ALLOWED,
        "PUT is not allowed on /api/runs",
    );
    assert!(a.headers.contains_key(header::ALLOW), "{:?}", a.headers);
    let a = fx.call(Method::POST, "/healthz", None, None).await;
    assert_error(
        &a,
        StatusCode::METHOD_NOT_ALLOWED,
        "POST is not allowed on /healthz",
    );

    let a = fx.get("/api/runs/not-a-number", Some(VIEWER)).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "Cannot parse");
    let a = fx.get("/api/runs?limit=many", Some(VIEWER)).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "limit");

    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/runs")
        .header(header::AUTHORIZATION, format!("Bearer {OPERATOR}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(r#"{"playbook": "hello"}"#))
        .unwrap();
    let resp = fx.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let json: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["error"]["status"], 415, "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Content-Type"),
        "{json}"
    );

    let a = fx
        .post(
            "/api/runs/1/approve",
            Some(OPERATOR),
            &decision_of(MAX_BODY + 1),
        )
        .await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded");
    assert_eq!(fx.count("SELECT COUNT(*) AS n FROM command_queue").await, 0);
}

/// `page * size` once overflowed: `page=9223372036854775807&size=2` answered the first page
/// labelled as that page. Page and size are bounded, and out of bounds is a 400 naming which.
#[tokio::test]
async fn dlq_paging_is_bounded_and_names_the_parameter_at_fault() {
    let fx = fixture().await;
    let dlq = "/api/admin/streaming/dlq";
    fx.dead_letter("u1", "TimeoutException", json!({})).await;
    fx.dead_letter("u2", "TimeoutException", json!({})).await;
    fx.dead_letter("u3", "TimeoutException", json!({})).await;

    for (query, says) in [
        (
            "page=9223372036854775807&size=2",
            "page: 9223372036854775807 is out of bounds",
        ),
        ("page=-1", "page: -1 is out of bounds"),
        ("page=10001&size=1000", "page: 10001 is out of bounds"),
        ("size=0", "size: 0 is out of bounds"),
        ("size=1001", "size: 1001 is out of bounds"),
        (
            "size=-9223372036854775808",
            "size: -9223372036854775808 is out of bounds",
        ),
        ("page=99999999999999999999", "page"),
    ] {
        let a = fx.get(&format!("{dlq}?{query}"), Some(ADMIN)).await;
        assert_error(&a, StatusCode::BAD_REQUEST, says);
    }

    let a = fx.get(&format!("{dlq}?page=1&size=2"), Some(ADMIN)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        (
            &a.json["page"],
            &a.json["size"],
            &a.json["totalElements"],
            &a.json["totalPages"]
        ),
        (&json!(1), &json!(2), &json!(3), &json!(2))
    );
    let ids: Vec<&Value> = a.json["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["entity_id"])
        .collect();
    assert_eq!(ids, [&json!("u3")]);
    let a = fx
        .get(&format!("{dlq}?page=10000&size=1000"), Some(ADMIN))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["content"], json!([]));
}
