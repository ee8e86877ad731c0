//! Keeping secrets out of logs, run records and API answers.
//!
//! Every secret the config resolves (tokens, passwords in datasource URLs, webhook URLs, Kafka
//! credentials) is registered here; [`Masker::mask_json`] runs over every record before it is
//! written, and header values of credential-bearing headers are masked by name.

use std::sync::{Arc, RwLock};

use serde_json::Value as Json;

pub const MASK: &str = "****";

/// Secrets shorter than this are refused: masking them would mangle ordinary text, and leaving
/// them unmasked would print them.
pub const MIN_SECRET_LEN: usize = 8;

/// RFC 3986 unreserved characters stay; everything else is percent-encoded.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The forms the engine itself may write a secret in: as it is, percent-encoded (URLs, with
/// lower- or upper-case hex digits, `+` for spaces in form encoding), JSON-escaped.
fn encoded_forms(secret: &str) -> Vec<String> {
    let pct = percent_encode(secret);
    let mut forms = vec![
        secret.to_owned(),
        pct.clone(),
        lower_hex(&pct),
        pct.replace("%20", "+"),
    ];
    if let Ok(json) = serde_json::to_string(secret) {
        forms.push(json[1..json.len() - 1].to_owned());
    }
    forms.sort();
    forms.dedup();
    forms
}

/// `%2F` as `%2f`.
fn lower_hex(pct: &str) -> String {
    let mut out = String::with_capacity(pct.len());
    let mut hex_left = 0;
    for c in pct.chars() {
        if c == '%' {
            hex_left = 2;
            out.push(c);
        } else if hex_left > 0 {
            hex_left -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The `Authorization: Basic` value an HTTP client sends for a URL's `user:password`.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// Percent-decoding, for credentials in URLs.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The credentials a URL carries: the user and password of its userinfo (as written and
/// percent-decoded), and the value of a `password=` (or `pass=`, `pwd=`) query parameter.
pub fn url_credentials(url: &str) -> (Option<(String, String)>, Vec<String>) {
    let mut passwords = Vec::new();
    let userinfo = url.find("://").and_then(|s| {
        let rest = &url[s + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let at = authority.rfind('@')?;
        let creds = &authority[..at];
        let (user, pw) = creds.split_once(':')?;
        Some((user.to_owned(), pw.to_owned()))
    });
    if let Some((_, pw)) = &userinfo {
        passwords.push(pw.clone());
        passwords.push(percent_decode(pw));
    }
    if let Some(q) = url.split_once('?').map(|(_, q)| q) {
        let q = q.split('#').next().unwrap_or_default();
        for pair in q.split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                if matches!(
                    k.to_ascii_lowercase().as_str(),
                    "password" | "pass" | "pwd" | "sslpassword"
                ) && !v.is_empty()
                {
                    passwords.push(v.to_owned());
                    passwords.push(percent_decode(v));
                }
            }
        }
    }
    passwords.dedup();
    (userinfo, passwords)
}

/// Header names whose values are always masked in records.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "x-auth-token",
];

#[derive(Clone, Default, Debug)]
pub struct Masker {
    secrets: Arc<RwLock<Vec<String>>>,
    sensitive_fields: Arc<Vec<String>>,
}

impl Masker {
    pub fn new(sensitive_fields: Vec<String>) -> Self {
        Masker {
            secrets: Arc::default(),
            sensitive_fields: Arc::new(sensitive_fields),
        }
    }

    /// Registers a secret value, with the forms the engine may encode it in (percent-encoded,
    /// JSON-escaped). Values shorter than 4 characters are ignored because masking them would
    /// mangle ordinary text; the config refuses secrets under [`MIN_SECRET_LEN`] at start.
    pub fn add(&self, secret: &str) {
        let s = secret.trim();
        if s.len() < 4 {
            return;
        }
        let mut all = self.secrets.write().expect("masker lock");
        for form in encoded_forms(s) {
            if !all.contains(&form) {
                all.push(form);
            }
        }
        // Longest first, so a secret that contains another is masked whole.
        all.sort_by_key(|x| std::cmp::Reverse(x.len()));
    }

    /// Registers the credentials a URL carries: its password (userinfo or `password=` query
    /// parameter, as written and decoded) and the `Basic` authorization an HTTP client makes of
    /// its userinfo.
    pub fn add_url(&self, url: &str) {
        let (userinfo, passwords) = url_credentials(url);
        for pw in &passwords {
            self.add(pw);
        }
        if let Some((user, pw)) = userinfo {
            self.add(&basic_auth(&percent_decode(&user), &percent_decode(&pw)));
            self.add(&basic_auth(&user, &pw));
        }
    }

    pub fn mask_str(&self, text: &str) -> String {
        mask_with(text, &self.secrets.read().expect("masker lock"))
    }

    /// Masks secret values anywhere in a JSON tree, credential headers by name, and fields
    /// configured as sensitive (`streaming.sensitive_fields`). The secrets are read once for the
    /// whole tree (the receiver masks every alert's labels and annotations and every run's
    /// trigger, from every request at once).
    pub fn mask_json(&self, v: &Json) -> Json {
        self.mask_tree(v, &self.secrets.read().expect("masker lock"))
    }

    fn mask_tree(&self, v: &Json, secrets: &[String]) -> Json {
        match v {
            Json::String(s) => Json::String(mask_with(s, secrets)),
            Json::Array(items) => {
                Json::Array(items.iter().map(|i| self.mask_tree(i, secrets)).collect())
            }
            Json::Object(map) => Json::Object(
                map.iter()
                    .map(|(k, v)| {
                        let hide = SECRET_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(k))
                            || self
                                .sensitive_fields
                                .iter()
                                .any(|f| f.eq_ignore_ascii_case(k));
                        (
                            k.clone(),
                            if hide && !v.is_null() {
                                Json::String(MASK.into())
                            } else {
                                self.mask_tree(v, secrets)
                            },
                        )
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// `text` with every one of `secrets` (longest first) replaced by the mask.
fn mask_with(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_values_headers_and_fields() {
        let m = Masker::new(vec!["email".into()]);
        m.add("s3cr3t-token");
        let v = json!({"url": "http://x/?k=s3cr3t-token", "headers": {"Authorization": "Bearer abc"}, "payload": {"email": "a@b.c", "n": 1}});
        let out = m.mask_json(&v);
        assert_eq!(out["url"], "http://x/?k=****");
        assert_eq!(out["headers"]["Authorization"], "****");
        assert_eq!(out["payload"]["email"], "****");
        assert_eq!(out["payload"]["n"], 1);
    }

    #[test]
    fn encoded_forms_are_masked() {
        let m = Masker::default();
        m.add("abc+/=defgh\"x");
        for form in [
            "abc+/=defgh\"x",
            "abc%2B%2F%3Ddefgh%22x",
            "abc%2b%2f%3ddefgh%22x",
            "abc+/=defgh\\\"x",
        ] {
            assert_eq!(m.mask_str(&format!("a {form} b")), "a **** b", "{form}");
        }
        m.add_url("https://hook:s3cr%40t-pass@example.net/x");
        let basic = basic_auth("hook", "s3cr@t-pass");
        assert_eq!(m.mask_str(&format!("Basic {basic}")), "Basic ****");
        assert_eq!(m.mask_str("pw s3cr@t-pass"), "pw ****");
        m.add_url("postgres://u@h/db?password=qwertyuiop&sslmode=disable");
        assert_eq!(
            m.mask_str("postgres://u@h/db?password=qwertyuiop"),
            "postgres://u@h/db?password=****"
        );
    }
}
