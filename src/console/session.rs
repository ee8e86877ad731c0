//! Sign-in with an API token, and the session it opens.
//!
//! The token is typed into a form (never a URL), checked against `auth.tokens` as the bearer API
//! checks it, and exchanged for a random session id in an `HttpOnly`, `SameSite=Lax` cookie (Lax,
//! not Strict: a link from Slack, PagerDuty or Alertmanager must arrive signed in). The store
//! keeps the session under the SHA-256 of its id, with the SHA-256 of the token, its CSRF token
//! and its expiry, so every replica accepts it and a copy of the store opens nothing. Each request
//! looks the token's digest up in the current config: a token that left the config ends its
//! sessions, and a role changed in the config applies at once. Every form carries the session's
//! CSRF token; the sign-in form, before there is a session, a double-submit cookie's.

use axum::{
    extract::{FromRequestParts, Query, State},
    http::{header, request::Parts, HeaderMap, HeaderValue, Method},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use sha2::Digest as _;
use subtle::ConstantTimeEq;

use super::{page, ConsoleError};
use crate::{
    server::{Principal, Role, Shared},
    store::console::{self as records, Session},
};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "rb_session";
/// The sign-in form's double-submit cookie.
const LOGIN_COOKIE: &str = "rb_login";

/// A signed-in request: who, with which role (from the config as it is now), and the session's
/// CSRF token for the forms of the page.
#[derive(Clone, Debug)]
pub struct Me {
    pub principal: Principal,
    pub csrf: String,
    id_digest: String,
}

impl Me {
    /// The page's view of the user: the name, the role and what the role may do.
    pub fn view(&self) -> minijinja::Value {
        minijinja::context! {
            name => self.principal.name,
            role => self.principal.role.as_str(),
            operate => self.principal.role >= Role::Operator,
            admin => self.principal.role >= Role::PlatformAdmin,
            csrf => self.csrf,
        }
    }

    /// The actor audit records and approvals name: `console:<token name>`.
    pub fn actor(&self) -> String {
        format!("console:{}", self.principal.name)
    }

    /// Refuses an action the role does not allow, naming the role it needs.
    ///
    /// # Errors
    ///
    /// [`ConsoleError::Forbidden`] when the session's role is below `need`.
    pub fn need(&self, need: Role) -> Result<(), ConsoleError> {
        if self.principal.role < need {
            return Err(ConsoleError::Forbidden(format!(
                "`{}` has role {}; this needs {need}",
                self.principal.name, self.principal.role
            )));
        }
        Ok(())
    }

    /// Checks a form's CSRF token against the session's, in constant time.
    ///
    /// # Errors
    ///
    /// [`ConsoleError::Forbidden`] when it is missing or wrong.
    pub fn check_csrf(&self, form: &Form) -> Result<(), ConsoleError> {
        let given = form.get("csrf").unwrap_or_default();
        if given.is_empty() || !bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes())) {
            return Err(ConsoleError::Forbidden(
                "the form's CSRF token is missing or stale; reload the page and try again".into(),
            ));
        }
        Ok(())
    }
}

/// The hex SHA-256 of a secret.
fn hex_digest(secret: &str) -> String {
    hex(&sha2::Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 random bytes from the operating system, as hex.
///
/// # Errors
///
/// The system's random source cannot be read.
fn random_token() -> Result<String, ConsoleError> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ConsoleError::Internal(format!("reading /dev/urandom: {e}")))?;
    Ok(hex(&bytes))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `Secure` when the request came over HTTPS (a proxy in front says so).
fn secure(headers: &HeaderMap) -> &'static str {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    if https {
        "; Secure"
    } else {
        ""
    }
}

/// A state-changing request from another origin is refused whatever it carries (the CSRF token
/// is the main defence; this is a second one that costs nothing).
fn same_origin(parts: &Parts) -> bool {
    if parts.method == Method::GET || parts.method == Method::HEAD {
        return true;
    }
    let Some(origin) = parts
        .headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority == host)
}

impl FromRequestParts<Shared> for Me {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, s: &Shared) -> Result<Me, ConsoleError> {
        let next = parts
            .uri
            .path_and_query()
            .map_or_else(|| "/ui/runs".to_owned(), |p| p.as_str().to_owned());
        let sign_in = || ConsoleError::SignIn { next: next.clone() };
        if !same_origin(parts) {
            return Err(ConsoleError::Forbidden(
                "a request from another origin cannot change anything here".into(),
            ));
        }
        let Some(id) = cookie(&parts.headers, SESSION_COOKIE).filter(|v| !v.is_empty()) else {
            return Err(sign_in());
        };
        let id_digest = hex_digest(id);
        let store = &s.services.store;
        let Some(session) = records::session(store, &id_digest, now())
            .await
            .map_err(ConsoleError::internal)?
        else {
            return Err(sign_in());
        };
        let mut digest = [0u8; 32];
        let decoded = (0..32)
            .map(|i| session.token_digest.get(i * 2..i * 2 + 2))
            .map(|h| h.and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>();
        if let Some(bytes) = decoded.filter(|b| b.len() == 32) {
            digest.copy_from_slice(&bytes);
        }
        let Some(principal) = s.tokens.holder_of(&digest) else {
            // The token left the config: the session ends here.
            tracing::info!(token = %session.token_name, "Console session of a token no longer configured ended.");
            records::delete_session(store, &id_digest)
                .await
                .map_err(ConsoleError::internal)?;
            return Err(sign_in());
        };
        Ok(Me {
            principal,
            csrf: session.csrf,
            id_digest,
        })
    }
}

/// An `application/x-www-form-urlencoded` body, its fields in order.
#[derive(Debug, Default)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    /// Parses a form body; a field that is not UTF-8 after decoding is refused.
    ///
    /// # Errors
    ///
    /// [`ConsoleError::BadRequest`] naming the field.
    pub fn parse(body: &[u8]) -> Result<Form, ConsoleError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| ConsoleError::BadRequest("the form is not UTF-8".into()))?;
        let decode = |s: &str| crate::secrets::percent_decode(&s.replace('+', " "));
        Ok(Form(
            text.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        ))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A field's value, trimmed, `None` when missing or blank.
    pub fn text(&self, key: &str) -> Option<String> {
        self.get(key)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }
}

/// Where to go after signing in: a path of this console, else the runs list. Never another
/// site (`//host`, `/\host`), so the sign-in page cannot be used as an open redirect.
pub fn safe_next(next: &str) -> String {
    let ok = next.starts_with("/ui")
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.starts_with("/ui/login")
        && !next.chars().any(char::is_control);
    if ok {
        next.to_owned()
    } else {
        "/ui/runs".to_owned()
    }
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// The sign-in form, with a fresh double-submit CSRF cookie.
pub async fn login_page(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Result<Response, ConsoleError> {
    login_form(
        &s,
        &headers,
        &safe_next(q.next.as_deref().unwrap_or("/ui/runs")),
        None,
    )
}

fn login_form(
    s: &Shared,
    headers: &HeaderMap,
    next: &str,
    error: Option<&str>,
) -> Result<Response, ConsoleError> {
    let csrf = random_token()?;
    let configured = s.tokens.principals().next().is_some();
    let mut resp = page(
        "login.html",
        minijinja::context! { title => "Sign in", next, csrf, error, configured },
    )?;
    let cookie = format!(
        "{LOGIN_COOKIE}={csrf}; Path=/ui/login; HttpOnly; SameSite=Strict; Max-Age=3600{}",
        secure(headers)
    );
    resp.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(ConsoleError::internal)?,
    );
    Ok(resp)
}

/// `POST /ui/login`: the token becomes a session; a wrong token shows the form again, saying so.
pub async fn login(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ConsoleError> {
    let form = Form::parse(&body)?;
    let next = safe_next(form.get("next").unwrap_or("/ui/runs"));
    let given = form.get("csrf").unwrap_or_default();
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if given.is_empty() || !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(ConsoleError::Forbidden(
            "the sign-in form is stale (its CSRF token does not match); open it again".into(),
        ));
    }
    let token = form.get("token").unwrap_or_default().trim().to_owned();
    let mut bearer = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        bearer.insert(header::AUTHORIZATION, v);
    }
    let principal = match s.tokens.authorize(&bearer, Role::Viewer) {
        Ok(p) if !token.is_empty() => p,
        Ok(_) | Err(_) => {
            tracing::info!("Console sign-in refused.");
            let mut resp = login_form(
                &s,
                &headers,
                &next,
                Some("That token is not one of the configured API tokens (auth.tokens)."),
            )?;
            *resp.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
            return Ok(resp);
        }
    };
    let id = random_token()?;
    let now = now();
    let session_seconds =
        i64::try_from(s.services.config.console.session.as_std().as_secs()).unwrap_or(i64::MAX / 2);
    let session = Session {
        token_digest: hex_digest(&token),
        token_name: principal.name.clone(),
        role: principal.role.as_str().to_owned(),
        csrf: random_token()?,
        expires_at: now + session_seconds,
    };
    records::create_session(&s.services.store, &hex_digest(&id), &session, now)
        .await
        .map_err(ConsoleError::internal)?;
    tracing::info!(token = %principal.name, role = %principal.role, "Console session opened.");
    let mut resp = Redirect::to(&next).into_response();
    let set = format!(
        "{SESSION_COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Lax; Max-Age={session_seconds}{}",
        secure(&headers)
    );
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        HeaderValue::from_str(&set).map_err(ConsoleError::internal)?,
    );
    h.append(
        header::SET_COOKIE,
        HeaderValue::from_static("rb_login=; Path=/ui/login; Max-Age=0"),
    );
    Ok(resp)
}

/// `POST /ui/logout`: ends the session in the store and clears the cookie.
pub async fn logout(
    State(s): State<Shared>,
    me: Me,
    body: axum::body::Bytes,
) -> Result<Response, ConsoleError> {
    me.check_csrf(&Form::parse(&body)?)?;
    records::delete_session(&s.services.store, &me.id_digest)
        .await
        .map_err(ConsoleError::internal)?;
    tracing::info!(token = %me.principal.name, "Console session ended.");
    let mut resp = Redirect::to("/ui/login").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("rb_session=; Path=/ui; HttpOnly; SameSite=Lax; Max-Age=0"),
    );
    Ok(resp)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn next_is_a_console_path_or_the_runs_list() {
        assert_eq!(safe_next("/ui/runs/4?x=1"), "/ui/runs/4?x=1");
        for bad in [
            "https://evil.example/",
            "//evil.example/ui",
            "/ui\\..\\x",
            "/api/runs",
            "/ui/login?next=/ui",
            "/ui/runs\r\nSet-Cookie: x",
        ] {
            assert_eq!(safe_next(bad), "/ui/runs", "{bad}");
        }
    }

    #[test]
    fn a_form_decodes_plus_and_percent() {
        let f = Form::parse(b"token=a+b%2Bc&next=%2Fui%2Fruns&empty=").unwrap();
        assert_eq!(f.get("token"), Some("a b+c"));
        assert_eq!(f.get("next"), Some("/ui/runs"));
        assert_eq!(f.text("empty"), None);
    }
}
