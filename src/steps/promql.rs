//! `promql`: instant and range queries against the configured Prometheus.
//!
//! Rows are one per series: its labels, and `value` (instant) or `values` (range, `[t, v]` pairs),
//! with sample values as numbers.

use serde::Serialize;
use serde_json::{json, Map, Value as Json};

use super::short::FromShort;
use super::{http::send, CompileError, Flavour, Kind, StepCx, StepError, StepOutput};
use crate::duration::Dur;
use schemars::JsonSchema;
use serde::Deserialize;

/// `promql: "up"` is an instant query; the long form adds a range.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPromql {
    pub query: String,
    /// Range query over the last `range` (e.g. 1h); instant query when absent.
    #[serde(default)]
    pub range: Option<Dur>,
    /// Resolution of a range query (default: range / 60).
    #[serde(default)]
    pub step: Option<Dur>,
}

impl FromShort for RawPromql {
    fn from_short(query: String) -> Self {
        RawPromql {
            query,
            range: None,
            step: None,
        }
    }
}

#[derive(Debug)]
pub struct PromqlStep {
    pub query: String,
    pub range: Option<Dur>,
    pub step: Option<Dur>,
}

impl Kind for PromqlStep {
    type Raw = RawPromql;
    type Input = Input;

    fn compile(r: RawPromql) -> Result<Self, CompileError> {
        Ok(PromqlStep {
            query: r.query,
            range: r.range,
            step: r.step,
        })
    }

    fn is_read(&self) -> bool {
        true
    }

    fn templates(&self) -> Vec<(String, &str, Flavour)> {
        vec![("promql".into(), self.query.as_str(), Flavour::Text)]
    }

    fn render(&self, cx: &StepCx<'_>) -> Result<Input, StepError> {
        let query = cx
            .services
            .templates
            .render(&self.query, cx.ctx)
            .map_err(StepError::template)?;
        let base = cx
            .services
            .config
            .prometheus
            .as_ref()
            .map(|p| p.url.trim_end_matches('/').to_owned())
            .unwrap_or_default();
        Ok(Input {
            prometheus: base,
            query,
            range: self.range,
            step: self.step,
        })
    }

    async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
        execute(i, cx).await
    }
}

#[derive(Debug, Serialize)]
pub struct Input {
    pub prometheus: String,
    pub query: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<Dur>,
}

fn sample(v: &Json) -> Json {
    let t = v.get(0).cloned().unwrap_or(Json::Null);
    let x = v
        .get(1)
        .and_then(Json::as_str)
        .and_then(|s| s.parse::<f64>().ok())
        .and_then(serde_json::Number::from_f64);
    json!([t, x])
}

pub async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
    if i.prometheus.is_empty() {
        return Err(StepError::fatal(
            "no Prometheus configured: set `prometheus.url` in the config",
        ));
    }
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    let req = match i.range {
        None => cx
            .services
            .http
            .get(format!("{}/api/v1/query", i.prometheus))
            .query(&[("query", i.query.clone()), ("time", now.to_string())]),
        Some(range) => {
            let step = i
                .step
                .map(|s| s.as_secs_f64())
                .unwrap_or((range.as_secs_f64() / 60.0).max(1.0));
            cx.services
                .http
                .get(format!("{}/api/v1/query_range", i.prometheus))
                .query(&[
                    ("query", i.query.clone()),
                    ("start", (now - range.as_secs_f64()).to_string()),
                    ("end", now.to_string()),
                    ("step", step.to_string()),
                ])
        }
    };
    let (status, _, body) = send(req.timeout(cx.timeout), &cx.services.masker)
        .await
        .map_err(|e| {
            e.about(&format!(
                "Prometheus at {} (the config's `prometheus.url`)",
                cx.services.masker.mask_str(&i.prometheus)
            ))
        })?;
    let parsed: Json = serde_json::from_str(&body).map_err(|_| {
        StepError::retryable(format!(
            "Prometheus answered {status} with non-JSON: {}",
            crate::text::truncate(&body, 200)
        ))
    })?;
    if parsed["status"] != "success" {
        let msg = format!(
            "Prometheus rejected `{}`: {}",
            i.query,
            parsed["error"].as_str().unwrap_or(&body)
        );
        return Err(if status >= 500 {
            StepError::retryable(msg)
        } else {
            StepError::fatal(msg)
        });
    }
    let data = &parsed["data"];
    let result_type = data["resultType"].as_str().unwrap_or("").to_owned();
    let rows = match &data["result"] {
        Json::Array(series) => series
            .iter()
            .map(|s| {
                let mut row: Map<String, Json> =
                    s["metric"].as_object().cloned().unwrap_or_default();
                if let Some(v) = s.get("value") {
                    row.insert("value".into(), sample(v)[1].clone());
                    row.insert("timestamp".into(), v[0].clone());
                }
                if let Some(Json::Array(vs)) = s.get("values") {
                    row.insert(
                        "values".into(),
                        Json::Array(vs.iter().map(sample).collect()),
                    );
                }
                Json::Object(row)
            })
            .collect(),
        // Scalars and strings: one row with the value.
        other if !other.is_null() => vec![json!({ "value": sample(other)[1] })],
        _ => Vec::new(),
    };
    Ok(StepOutput {
        output: json!({ "resultType": result_type, "series": rows.len() }),
        rows,
    })
}
