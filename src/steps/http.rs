//! `http`: one request with reqwest; JSON answers are captured as `output` (and `rows` when a list).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value as Json};

use super::Yaml;
use super::{CompileError, Flavour, Kind, StepCx, StepError, StepOutput};
use crate::{
    template::Templates,
    text::{error_chain, truncate},
};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    #[serde(default)]
    pub method: Option<String>,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query parameters, each value percent-encoded.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// JSON body; strings inside are templates.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub json: Option<Yaml>,
    /// Text body.
    #[serde(default)]
    pub body: Option<String>,
    /// Accepted status codes (default: any 2xx).
    #[serde(default)]
    pub expect: Option<StatusList>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusList {
    One(u16),
    Many(Vec<u16>),
}

impl StatusList {
    pub fn to_vec(&self) -> Vec<u16> {
        match self {
            StatusList::One(c) => vec![*c],
            StatusList::Many(c) => c.clone(),
        }
    }
}

/// Bytes of a non-JSON answer kept.
const MAX_TEXT: usize = 64 * 1024;

#[derive(Debug)]
pub struct HttpStep {
    pub method: reqwest::Method,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub query: BTreeMap<String, String>,
    pub json: Option<serde_yaml::Value>,
    pub body: Option<String>,
    pub expect: Vec<u16>,
}

impl Kind for HttpStep {
    type Raw = RawHttp;
    type Input = Input;

    fn compile(r: RawHttp) -> Result<Self, CompileError> {
        let method_text = r.method.unwrap_or_else(|| {
            if r.json.is_some() || r.body.is_some() {
                "POST".into()
            } else {
                "GET".into()
            }
        });
        let method = reqwest::Method::from_bytes(method_text.to_ascii_uppercase().as_bytes())
            .map_err(|_| {
                (
                    ".http.method".to_string(),
                    format!("unknown HTTP method `{method_text}`"),
                )
            })?;
        if r.json.is_some() && r.body.is_some() {
            return Err((
                ".http.body".into(),
                "give either `json` or `body`, not both".into(),
            ));
        }
        for k in r.headers.keys() {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                return Err((
                    format!(".http.headers.{k}"),
                    format!("`{k}` is not a valid header name"),
                ));
            }
        }
        Ok(HttpStep {
            method,
            url: r.url,
            headers: r.headers,
            query: r.query,
            json: r.json,
            body: r.body,
            expect: r.expect.map(|e| e.to_vec()).unwrap_or_default(),
        })
    }

    /// GET and HEAD read; every other method may change something.
    fn is_read(&self) -> bool {
        self.method == reqwest::Method::GET || self.method == reqwest::Method::HEAD
    }

    fn templates(&self) -> Vec<(String, &str, Flavour)> {
        let mut v = vec![("http.url".to_string(), self.url.as_str(), Flavour::Url)];
        v.extend(
            self.headers
                .iter()
                .map(|(k, h)| (format!("http.headers.{k}"), h.as_str(), Flavour::Text)),
        );
        v.extend(
            self.query
                .iter()
                .map(|(k, q)| (format!("http.query.{k}"), q.as_str(), Flavour::Text)),
        );
        if let Some(b) = &self.body {
            v.push(("http.body".into(), b.as_str(), Flavour::Text));
        }
        if let Some(j) = &self.json {
            let mut strings = Vec::new();
            Templates::tree_strings(j, "http.json".into(), &mut strings);
            v.extend(strings.into_iter().map(|(p, s)| (p, s, Flavour::Value)));
        }
        v
    }

    fn render(&self, cx: &StepCx<'_>) -> Result<Input, StepError> {
        let t = &cx.services.templates;
        let url = t
            .render_url(&self.url, cx.ctx)
            .map_err(StepError::template)?;
        let headers = self
            .headers
            .iter()
            .map(|(k, v)| Ok((k.clone(), t.render(v, cx.ctx).map_err(StepError::template)?)))
            .collect::<Result<BTreeMap<_, _>, StepError>>()?;
        let query = self
            .query
            .iter()
            .map(|(k, v)| Ok((k.clone(), t.render(v, cx.ctx).map_err(StepError::template)?)))
            .collect::<Result<BTreeMap<_, _>, StepError>>()?;
        let json = self
            .json
            .as_ref()
            .map(|j| t.render_tree(j, cx.ctx))
            .transpose()
            .map_err(StepError::template)?;
        let body = self
            .body
            .as_ref()
            .map(|b| t.render(b, cx.ctx))
            .transpose()
            .map_err(StepError::template)?;
        Ok(Input {
            method: self.method.to_string(),
            url,
            headers,
            query,
            json,
            body,
            expect: self.expect.clone(),
        })
    }

    async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
        execute(i, cx).await
    }
}

#[derive(Debug, Serialize)]
pub struct Input {
    pub method: String,
    pub url: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expect: Vec<u16>,
}

pub async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
    let method = reqwest::Method::from_bytes(i.method.as_bytes())
        .map_err(|e| StepError::fatal(e.to_string()))?;
    let url = reqwest::Url::parse(&i.url).map_err(|e| {
        StepError::fatal(format!(
            "bad URL `{}`: {e}",
            cx.services.masker.mask_str(&i.url)
        ))
    })?;
    let mut req = cx.services.http.request(method, url).timeout(cx.timeout);
    for (k, v) in &i.headers {
        req = req.header(k, v);
    }
    if !i.query.is_empty() {
        req = req.query(&i.query);
    }
    if let Some(j) = &i.json {
        req = req.json(j);
    } else if let Some(b) = i.body {
        req = req.body(b);
    }
    let Answer {
        status,
        headers,
        body,
        cut,
    } = send_capped(req, &cx.services.masker).await?;
    let ok = if i.expect.is_empty() {
        (200..300).contains(&status)
    } else {
        i.expect.contains(&status)
    };
    // A cut body is not parsed: the start of a JSON document is not one.
    let parsed: Option<Json> = if cut {
        None
    } else {
        serde_json::from_str(&body).ok()
    };
    let body_json = parsed
        .clone()
        .unwrap_or_else(|| Json::String(truncate(&body, MAX_TEXT)));
    if !ok {
        let msg = format!(
            "{} {} answered {status}: {}",
            i.method,
            cx.services.masker.mask_str(&i.url),
            truncate(&body, 300)
        );
        return Err(if status >= 500 || status == 429 {
            StepError::retryable(msg)
        } else {
            StepError::fatal(msg)
        });
    }
    let rows = match &parsed {
        Some(Json::Array(items)) => items.clone(),
        _ => Vec::new(),
    };
    let mut output = json!({ "status": status, "headers": headers, "body": body_json });
    if cut {
        output["truncated"] = Json::Bool(true);
        output["truncated_reason"] = Json::String(format!(
            "the answer is larger than {} MiB: only that much was read, and `body` is its first {} KiB as text",
            MAX_BODY / (1024 * 1024),
            MAX_TEXT / 1024
        ));
    }
    Ok(StepOutput { rows, output })
}

/// The most bytes of an answer's body read. An `http` step keeps the start of a longer body
/// and says it was cut; a Prometheus or notification answer that long is an error.
pub const MAX_BODY: usize = 10 * 1024 * 1024;

/// An answer: status, the headers steps see, the body (at most [`MAX_BODY`] bytes of it), and
/// whether the body went on past that.
pub struct Answer {
    pub status: u16,
    pub headers: Json,
    pub body: String,
    pub cut: bool,
}

/// Sends a request; connection problems and timeouts are retryable. An answer longer than
/// [`MAX_BODY`] is an error.
pub async fn send(
    req: reqwest::RequestBuilder,
    masker: &crate::secrets::Masker,
) -> Result<(u16, Json, String), StepError> {
    let a = send_capped(req, masker).await?;
    if a.cut {
        return Err(StepError::fatal(format!(
            "the answer (status {}) is larger than {} MiB, more than runbook reads",
            a.status,
            MAX_BODY / (1024 * 1024)
        )));
    }
    Ok((a.status, a.headers, a.body))
}

/// Sends a request and reads at most [`MAX_BODY`] bytes of the answer, chunk by chunk, so a
/// huge answer is never held whole.
pub async fn send_capped(
    req: reqwest::RequestBuilder,
    masker: &crate::secrets::Masker,
) -> Result<Answer, StepError> {
    let mut resp = req.send().await.map_err(|e| {
        let msg = masker.mask_str(&format!("request failed: {}", error_chain(&e)));
        if e.is_builder() {
            StepError::fatal(msg)
        } else {
            StepError::retryable(msg)
        }
    })?;
    let status = resp.status().as_u16();
    let headers: serde_json::Map<String, Json> = resp
        .headers()
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "content-type" | "location" | "retry-after"))
        .map(|(k, v)| {
            (
                k.to_string(),
                Json::String(v.to_str().unwrap_or("").to_owned()),
            )
        })
        .collect();
    let mut body: Vec<u8> = Vec::new();
    let mut cut = false;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| StepError::retryable(format!("reading the answer failed: {e}")))?
    {
        let room = MAX_BODY - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            cut = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        headers: Json::Object(headers),
        body: String::from_utf8_lossy(&body).into_owned(),
        cut,
    })
}
