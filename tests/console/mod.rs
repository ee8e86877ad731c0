//! The web console in a real headless Chromium, driven over WebDriver (chromedriver, from
//! `RUNBOOK_TEST_CHROMEDRIVER_BIN`; `scripts/test` installs Debian's `chromium` and
//! `chromium-driver`), against a real `runbook serve` with its workers. One browser at a time.
//! Each test saves screenshots under `target/console-screenshots/`.

mod approval;
mod browser;
mod postgres;
mod proxy;
mod sampler;
mod shutdown;

use serde_json::{json, Value as Json};

use crate::util::{get_json, post_json, rows, store, Server, Workdir};
use browser::{Browser, BROWSERS};

const VIEWER: &str = "console-viewer-token-0001";
const OPERATOR: &str = "console-operator-token-0002";
const ADMIN: &str = "console-admin-token-0003";
const RECEIVER: &str = "console-receiver-token-0004";

fn config() -> String {
    format!(
        r#"auth:
  tokens:
    - {{ name: viewer, role: viewer, token: {VIEWER} }}
    - {{ name: ops, role: operator, token: {OPERATOR} }}
    - {{ name: admin, role: PlatformAdmin, token: {ADMIN} }}
  receiver: {{ token: {RECEIVER} }}
alertmanager: {{ url: "http://127.0.0.1:9093" }}
streaming:
  sensitive_fields: [email]
  handlers:
    demo.fail: {{ simulate: {{ latency: 1ms, error_rate: 1.0, error_type: ValidationException }} }}
"#
    )
}

/// Reads, asks a person, reads again: a run the test holds at its `approve` step.
const HELD: &str = r#"name: held
description: Reads, asks a person, then reads again.
on:
  alerts:
    - alertname: ConsoleDeepLink
steps:
  - id: look
    sql: SELECT COUNT(*) AS pending FROM command_queue WHERE status = 'pending'
  - id: ask
    approve: { text: "Go on with the second read?", timeout: 10m }
  - id: after
    sql: SELECT 42 AS answer
"#;

struct Setup {
    w: Workdir,
    server: Server,
    url: String,
}

fn setup() -> Setup {
    let w = Workdir::new();
    w.config(&config());
    w.playbook("held", HELD);
    let url = w.sqlite_url();
    let server = w.serve(&["--store", &url]);
    Setup { w, server, url }
}

/// Starts a run of `held` through the API; its id.
async fn start_held(base: &str) -> i64 {
    let (status, body) = post_json(
        &format!("{base}/api/runs"),
        Some(OPERATOR),
        &json!({ "playbook": "held" }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body["run_id"].as_i64().unwrap()
}

async fn run_status(base: &str, id: i64) -> String {
    let (_, run) = get_json(&format!("{base}/api/runs/{id}"), Some(VIEWER)).await;
    run["status"].as_str().unwrap_or_default().to_owned()
}

async fn wait_status(base: &str, id: i64, want: &str) {
    crate::util::eventually(60, &format!("run {id} {want}"), || async {
        (run_status(base, id).await == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn sign_in_with_a_token_opens_the_runs_list() {
    let _one = BROWSERS.lock().await;
    let s = setup();
    let b = Browser::start().await;
    b.goto(&format!("{}/ui/runs", s.server.base)).await;
    // Signed out: the sign-in page, which says what a wrong token is.
    b.wait_text("h1", "Sign in").await;
    b.fill("#token", "not-a-token").await;
    b.click("button[type=submit]").await;
    b.wait_text("p.error", "not one of the configured API tokens")
        .await;
    assert!(!b.url().await.contains("not-a-token"), "a token in a URL");
    b.screenshot("sign-in").await;
    b.fill("#token", OPERATOR).await;
    b.click("button[type=submit]").await;
    b.wait_text("h1", "Runs").await;
    let url = b.url().await;
    assert!(url.ends_with("/ui/runs"), "{url}");
    assert!(!url.contains(OPERATOR));
    b.wait_text("header .who", "ops · operator").await;
    b.close().await;
}

#[tokio::test]
async fn a_run_held_at_its_approval_is_watched_live_to_its_end() {
    let _one = BROWSERS.lock().await;
    let s = setup();
    let base = s.server.base.clone();
    let id = start_held(&base).await;
    let b = Browser::start().await;
    // As an operator: the page offers approve, reject and cancel (the test answers through the API).
    b.sign_in(&base, OPERATOR).await;
    b.goto(&format!("{base}/ui/runs/{id}")).await;
    // A mark on the page: still there at the end means the page was never reloaded by the browser.
    b.js("window.__sameDocument = 'yes'; return true;").await;
    b.wait_text("#run-status", "waiting_approval").await;
    b.wait_present("#attempt-1").await;
    assert_eq!(b.text("#live-state").await, "live");
    b.screenshot("run-waiting").await;
    // The test answers the approval; the page follows without a reload.
    let (status, body) = post_json(
        &format!("{base}/api/runs/{id}/approve"),
        Some(OPERATOR),
        &json!({ "comment": "from the browser test" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    b.wait_text("#run-status", "succeeded").await;
    b.wait_text("#timeline", "answer").await;
    b.wait_text("#live-state", "ended").await;
    assert_eq!(b.js("return window.__sameDocument;").await, json!("yes"));
    // Reconciled at the end: the whole run, its answer included.
    b.wait_text("#run", "approved by api:ops").await;
    b.screenshot("run-live-ended").await;
    b.close().await;
}

#[tokio::test]
async fn a_waiting_run_is_approved_from_a_phone_sized_window() {
    let _one = BROWSERS.lock().await;
    let s = setup();
    let base = s.server.base.clone();
    let id = start_held(&base).await;
    wait_status(&base, id, "waiting_approval").await;
    let b = Browser::start().await;
    b.client.set_window_size(390, 844).await.unwrap();
    b.sign_in(&base, OPERATOR).await;
    b.goto(&format!("{base}/ui/approvals")).await;
    let card = format!("#approval-{id}");
    b.wait_text(&card, "Go on with the second read?").await;
    b.wait_text(&card, "What the diagnosis found").await;
    // The page fits the phone's width, and the button is a thumb's size.
    let width = b.js("return document.documentElement.scrollWidth;").await;
    assert!(
        width.as_i64().unwrap() <= 390,
        "the page scrolls sideways: {width}"
    );
    let button = format!("{card} button[value=approve]");
    let (_, _, w, h) = b.find(&button).await.rectangle().await.unwrap();
    assert!(w >= 44.0 && h >= 44.0, "approve button {w}x{h}");
    b.screenshot("approve-phone").await;
    b.fill(&format!("{card} input[name=comment]"), "ok from my phone")
        .await;
    b.click(&button).await;
    wait_status(&base, id, "succeeded").await;
    let (_, run) = get_json(&format!("{base}/api/runs/{id}"), Some(VIEWER)).await;
    assert_eq!(run["approvals"][0]["actor"], "console:ops");
    assert_eq!(run["approvals"][0]["comment"], "ok from my phone");
    b.close().await;
}

#[tokio::test]
async fn a_dlq_group_is_retried_after_its_confirmation() {
    let _one = BROWSERS.lock().await;
    let s = setup();
    let base = s.server.base.clone();
    for i in 0..3 {
        let out = s.w.run(&[
            "--store",
            &s.url,
            "queue",
            "enqueue",
            "--entity",
            "user",
            "--entity-id",
            &i.to_string(),
            "--type",
            "demo.fail",
            "--payload",
            r#"{"email": "ada@example.com"}"#,
        ]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    crate::util::eventually(60, "3 DLQ entries", || async {
        let (_, stats) = get_json(&format!("{base}/api/admin/streaming/stats"), Some(ADMIN)).await;
        (stats["dlq"]["total"] == 3).then_some(())
    })
    .await;
    let b = Browser::start().await;
    b.sign_in(&base, ADMIN).await;
    b.goto(&format!(
        "{base}/ui/dlq?errorType=ValidationException&entity=user"
    ))
    .await;
    b.wait_text("main", "ValidationException").await;
    let page = b.text("main").await;
    assert!(
        !page.contains("ada@example.com"),
        "an unmasked payload: {page}"
    );
    b.click("button.retry-group[data-group='ValidationException/user']")
        .await;
    b.wait_text("h1", "Retry 3 DLQ entries?").await;
    b.screenshot("dlq-confirm").await;
    let db = store(&s.url).await;
    assert!(
        rows(&db, "SELECT id FROM runbook_audit WHERE op = 'dlq_retry'")
            .await
            .is_empty(),
        "retried before the confirmation"
    );
    b.click("#confirm").await;
    b.wait_text("#done", "3 entries retried").await;
    let audit: Vec<Json> = rows(
        &db,
        "SELECT actor, rows FROM runbook_audit WHERE op = 'dlq_retry'",
    )
    .await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["actor"], "console:admin");
    assert_eq!(audit[0]["rows"], 3);
    b.close().await;
}

#[tokio::test]
async fn an_alerts_deep_link_from_another_site_arrives_signed_in() {
    let _one = BROWSERS.lock().await;
    let s = setup();
    let base = s.server.base.clone();
    // An alert starts a run of `held`.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = json!({
        "version": "4", "groupKey": "{}:{alertname=\"ConsoleDeepLink\"}", "truncatedAlerts": 0,
        "status": "firing", "receiver": "runbook", "groupLabels": {}, "commonLabels": {},
        "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093",
        "alerts": [{
            "status": "firing", "labels": { "alertname": "ConsoleDeepLink", "severity": "warning", "instance": "db-1" },
            "annotations": { "summary": "the deep link test" }, "startsAt": now,
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://127.0.0.1:9090/graph", "fingerprint": "deadbeef01",
        }],
    });
    let (status, answer) = post_json(
        &format!("{base}/api/webhooks/alertmanager"),
        Some(RECEIVER),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (_, list) = get_json(&format!("{base}/api/runs?playbook=held"), Some(VIEWER)).await;
    let id = list[0]["id"].as_i64().expect("the alert's run");
    // A page on another site (localhost, not 127.0.0.1) links to the run.
    let run_url = format!("{base}/ui/runs/{id}");
    let other = crate::util::listen(axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let link = run_url.clone();
            async move {
                axum::response::Html(format!(
                    "<!doctype html><title>chat</title><p>Alert fired: <a id=\"go\" href=\"{link}\">open the run</a></p>"
                ))
            }
        }),
    ))
    .await;
    let other = other.replace("127.0.0.1", "localhost");
    let b = Browser::start().await;
    // Signed out, the link goes through the sign-in page and on to the run.
    b.goto(&other).await;
    b.click("#go").await;
    b.wait_text("h1", "Sign in").await;
    b.fill("#token", OPERATOR).await;
    b.click("button[type=submit]").await;
    b.wait_text("h1", &format!("Run {id}")).await;
    // Signed in, the link from the other site arrives at the run directly (SameSite=Lax).
    b.goto(&other).await;
    b.click("#go").await;
    b.wait_text("h1", &format!("Run {id}")).await;
    b.wait_text(".alert", "ConsoleDeepLink").await;
    b.wait_text(".alert", "deadbeef01").await;
    let url = b.url().await;
    assert!(url.ends_with(&format!("/ui/runs/{id}")), "{url}");
    b.screenshot("run-from-alert").await;
    b.close().await;
}

/// Approves run `id` through the API, as the operator.
async fn approve(base: &str, id: i64) {
    let (status, body) = post_json(
        &format!("{base}/api/runs/{id}/approve"),
        Some(OPERATOR),
        &json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// The run page after its end: three entries (no duplicate, none missed), the same document.
async fn ended_whole(b: &Browser) {
    b.wait_text("#run-status", "succeeded").await;
    b.wait_text("#live-state", "ended").await;
    let entries = b
        .js("return document.querySelectorAll('#timeline li.step').length;")
        .await;
    assert_eq!(entries, json!(3), "look, ask and after, once each");
    assert_eq!(b.js("return window.__sameDocument;").await, json!("yes"));
}

/// Cut every connection while the page follows a run: the browser reconnects with the resume
/// point (`Last-Event-ID`), and the page reaches the end with every step once. Prints how long
/// the page took to show the end after the approval.
#[tokio::test]
async fn the_live_view_resumes_after_the_stream_is_cut() {
    let _one = BROWSERS.lock().await;
    let s = setup();
    let base = s.server.base.clone();
    let proxy = proxy::Proxy::start(base.trim_start_matches("http://")).await;
    let id = start_held(&base).await;
    wait_status(&base, id, "waiting_approval").await;
    let b = Browser::start().await;
    b.sign_in(&proxy.base, VIEWER).await;
    b.goto(&format!("{}/ui/runs/{id}", proxy.base)).await;
    b.js("window.__sameDocument = 'yes'; return true;").await;
    b.wait_present("#attempt-1").await;
    b.wait_text("#live-state", "live").await;
    let cut = std::time::Instant::now();
    proxy.cut();
    // The browser reconnects by itself and says where it was.
    crate::util::eventually(60, "the event stream to reconnect", || async {
        (proxy.stream_requests().len() >= 2).then_some(())
    })
    .await;
    let reconnected = cut.elapsed();
    assert_eq!(
        proxy.stream_requests()[1].as_deref(),
        Some("1"),
        "the reconnect resumes after the one entry the page had: {:?}",
        proxy.stream_requests()
    );
    let approved = std::time::Instant::now();
    approve(&base, id).await;
    ended_whole(&b).await;
    eprintln!(
        "stream cut: reconnected after {:.1} s with Last-Event-ID 1; the end showed {:.1} s after the approval",
        reconnected.as_secs_f64(),
        approved.elapsed().as_secs_f64()
    );
    b.close().await;
}

/// A proxy that holds back the event stream (it buffers): the page notices the silence, polls,
/// and reaches the end with every step once. Prints how long it took to fall back.
#[tokio::test]
async fn the_live_view_polls_when_a_proxy_mutes_the_stream() {
    let _one = BROWSERS.lock().await;
    let s = setup();
    let base = s.server.base.clone();
    let proxy = proxy::Proxy::start(base.trim_start_matches("http://")).await;
    proxy.mute_streams(true);
    let id = start_held(&base).await;
    wait_status(&base, id, "waiting_approval").await;
    let b = Browser::start().await;
    b.sign_in(&proxy.base, VIEWER).await;
    let opened = std::time::Instant::now();
    b.goto(&format!("{}/ui/runs/{id}", proxy.base)).await;
    b.js("window.__sameDocument = 'yes'; return true;").await;
    b.wait_text("#live-state", "polling").await;
    let fell_back = opened.elapsed();
    let approved = std::time::Instant::now();
    approve(&base, id).await;
    ended_whole(&b).await;
    eprintln!(
        "muted stream: polling after {:.1} s; the end showed {:.1} s after the approval",
        fell_back.as_secs_f64(),
        approved.elapsed().as_secs_f64()
    );
    b.close().await;
}
