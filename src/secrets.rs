//! Keeping secrets out of logs, run records and API answers.
//!
//! Every secret the config resolves (tokens, passwords in datasource URLs, webhook URLs, Kafka
//! credentials) is registered here; [`Masker::mask_json`] runs over every record before it is
//! written, and header values of credential-bearing headers are masked by name.

use std::sync::{Arc, RwLock};

use serde_json::Value as Json;

pub const MASK: &str = "****";

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

    /// Registers a secret value; short values are ignored because masking them would mangle ordinary text.
    pub fn add(&self, secret: &str) {
        let s = secret.trim();
        if s.len() >= 4 {
            let mut all = self.secrets.write().expect("masker lock");
            if !all.iter().any(|x| x == s) {
                all.push(s.to_owned());
                // Longest first, so a secret that contains another is masked whole.
                all.sort_by_key(|x| std::cmp::Reverse(x.len()));
            }
        }
    }

    pub fn mask_str(&self, text: &str) -> String {
        let secrets = self.secrets.read().expect("masker lock");
        let mut out = text.to_owned();
        for s in secrets.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), MASK);
            }
        }
        out
    }

    /// Masks secret values anywhere in a JSON tree, credential headers by name, and fields
    /// configured as sensitive (`streaming.sensitive_fields`).
    pub fn mask_json(&self, v: &Json) -> Json {
        match v {
            Json::String(s) => Json::String(self.mask_str(s)),
            Json::Array(items) => Json::Array(items.iter().map(|i| self.mask_json(i)).collect()),
            Json::Object(map) => Json::Object(
                map.iter()
                    .map(|(k, v)| {
                        let lower = k.to_ascii_lowercase();
                        let hide = SECRET_HEADERS.contains(&lower.as_str())
                            || self
                                .sensitive_fields
                                .iter()
                                .any(|f| f.eq_ignore_ascii_case(k));
                        (
                            k.clone(),
                            if hide && !v.is_null() {
                                Json::String(MASK.into())
                            } else {
                                self.mask_json(v)
                            },
                        )
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }
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
}
