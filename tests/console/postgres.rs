//! The console on PostgreSQL, over HTTP without a browser: sessions in the store, the runs
//! filters (the trigger read out of JSONB), an approval answered with the console's form, the
//! event stream, the DLQ groups and every page, against `runbook serve --store postgres://...`.

use serde_json::json;

use super::{config, start_held, wait_status, ADMIN, HELD, OPERATOR};
use crate::util::{rows, store, PgDb, Workdir};

/// A signed-in client: the session cookie, sent by hand (no cookie jar), and the form's token.
pub(super) struct Session {
    pub http: reqwest::Client,
    base: String,
    pub cookie: String,
}

pub(super) fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field:\n{html}"));
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn set_cookie(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie"))
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

impl Session {
    pub async fn sign_in(base: &str, token: &str) -> Session {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let form = http.get(format!("{base}/ui/login")).send().await.unwrap();
        let login = set_cookie(&form, "rb_login");
        let csrf = csrf_of(&form.text().await.unwrap());
        let resp = http
            .post(format!("{base}/ui/login"))
            .header("cookie", login)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}&next=%2Fui%2Fruns&token={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 303);
        Session {
            cookie: set_cookie(&resp, "rb_session"),
            http,
            base: base.to_owned(),
        }
    }

    pub(super) async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    pub(super) async fn post(&self, path: &str, form: &str) -> u16 {
        self.http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

#[tokio::test]
async fn the_console_works_on_postgres() {
    let pg = PgDb::new().await;
    let w = Workdir::new();
    w.config(&config());
    w.playbook("held", HELD);
    let server = w.serve(&["--store", &pg.url]);
    let base = server.base.clone();
    let ops = Session::sign_in(&base, OPERATOR).await;
    let db = store(&pg.url).await;
    let sessions = rows(&db, "SELECT * FROM runbook_console_sessions").await;
    assert_eq!(sessions.len(), 1);
    assert!(!sessions[0].to_string().contains(OPERATOR), "{sessions:?}");

    let id = start_held(&base).await;
    wait_status(&base, id, "waiting_approval").await;
    let (status, page) = ops
        .get("/ui/runs?trigger=api&since=1h&status=waiting_approval")
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&format!("href=\"/ui/runs/{id}\"")), "{page}");
    let (_, page) = ops.get("/ui/runs?trigger=alert").await;
    assert!(!page.contains(&format!("href=\"/ui/runs/{id}\"")), "{page}");
    let (_, page) = ops.get("/ui/approvals").await;
    assert!(page.contains("Go on with the second read?"), "{page}");
    let csrf = csrf_of(&page);
    let answered = ops
        .post(
            &format!("/ui/runs/{id}/approve"),
            &format!("csrf={csrf}&decision=approve&comment=on+postgres"),
        )
        .await;
    assert_eq!(answered, 303);
    wait_status(&base, id, "succeeded").await;
    let (_, events) = ops.get(&format!("/ui/runs/{id}/events")).await;
    assert!(events.contains("event: end"), "{events}");
    assert!(events.contains("id: 3"), "three entries: {events}");

    // The DLQ, grouped.
    for i in 0..2 {
        let out = w.run(&[
            "--store",
            &pg.url,
            "queue",
            "enqueue",
            "--entity",
            "user",
            "--entity-id",
            &i.to_string(),
            "--type",
            "demo.fail",
            "--payload",
            "{}",
        ]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    crate::util::eventually(60, "2 DLQ entries", || async {
        let n = rows(
            &db,
            "SELECT COUNT(*) AS n FROM command_queue WHERE status = 'dlq'",
        )
        .await;
        (n[0]["n"] == json!(2)).then_some(())
    })
    .await;
    let admin = Session::sign_in(&base, ADMIN).await;
    let (status, page) = admin.get("/ui/dlq").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<td>ValidationException</td>") || page.contains(">ValidationException</a>"),
        "{page}"
    );
    assert!(page.contains("<td>2</td>"), "{page}");
    // The alerts page and the API's list read `matched` with a typed parameter (PostgreSQL could
    // not type a bare `$2 IS NULL`, and both answered 500).
    let (status, list) = crate::util::get_json(&format!("{base}/api/alerts"), Some(OPERATOR)).await;
    assert_eq!(status, 200, "{list}");
    for path in [
        "/ui/alerts",
        "/ui/alerts?unmatched=true",
        "/ui/playbooks",
        "/ui/queue",
        &format!("/ui/runs/{id}"),
    ] {
        let (status, page) = admin.get(path).await;
        assert_eq!(status, 200, "{path}: {page}");
    }
}
