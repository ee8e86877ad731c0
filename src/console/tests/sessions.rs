//! Sign-in, the session cookie, expiry, sign-out, revocation, CSRF and the same-origin check.

use axum::{
    body::Body,
    http::{header, Method, Request, StatusCode},
};
use serde_json::json;
use tower::ServiceExt;

use super::*;

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
        "/ui/settings",
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
async fn the_session_length_comes_from_the_config() {
    let mut f = fixture().await;
    f.router = build(
        &f.store,
        f.dir.path(),
        &format!("{CONFIG}console: {{ session: 2h }}\n"),
    );
    let cookie = f.sign_in(VIEWER).await;
    assert!(cookie.starts_with("rb_session="));
    let form = f.get("/ui/login", None).await;
    let login_cookie = form.cookies()[0].split(';').next().unwrap().to_owned();
    let body = format!("csrf={}&next=%2Fui%2Fruns&token={VIEWER}", form.csrf());
    let a = f
        .call(
            Method::POST,
            "/ui/login",
            Some(&login_cookie),
            Some(&body),
            &[],
        )
        .await;
    let set = a
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("rb_session="))
        .unwrap();
    assert!(set.contains("Max-Age=7200"), "{set}");
    let span = f
        .scalar("SELECT MAX(expires_at - created_at) AS span FROM runbook_console_sessions")
        .await;
    assert_eq!(span, serde_json::json!(7200));
}
