//! `streaming.handlers`: what a worker does with each command type, as the config writes it.
//! The workers compile these into handlers (`process::handlers`).

use schemars::JsonSchema;
use serde::Deserialize;

use crate::duration::Dur;

/// One handler as the config writes it: exactly one of the keys.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHandler {
    /// POST the command to a URL.
    #[serde(default)]
    pub http: Option<HttpHandler>,
    /// Run a query with the command's fields as bound values.
    #[serde(default)]
    pub sql: Option<SqlHandler>,
    /// Run a playbook with the command's payload fields as parameters.
    #[serde(default)]
    pub playbook: Option<PlaybookHandler>,
    /// Wait and fail at a rate, for demos and load tests.
    #[serde(default)]
    pub simulate: Option<SimulateHandler>,
    /// Complete at once (any value, e.g. `{}`).
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub noop: Option<serde_yaml::Value>,
    /// Whether a command of this type holds its entity's work-state lock while it runs (default
    /// true). Types that do not change entity state (notifications, audit writes) may say false.
    #[serde(default = "exclusive_default")]
    pub exclusive: bool,
}

fn exclusive_default() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpHandler {
    /// Where the command is posted.
    pub url: String,
    /// How long a call may take (default `10s`).
    #[serde(default)]
    pub timeout: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlHandler {
    /// A datasource's name; the store without it.
    #[serde(default)]
    pub datasource: Option<String>,
    /// The query; `command.*` values are bound, never spliced.
    pub query: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaybookHandler {
    /// The playbook's name.
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateHandler {
    /// How long each command takes.
    #[serde(default)]
    pub latency: Option<Dur>,
    /// The share of commands that fail, 0 to 1.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub error_rate: Option<f64>,
    /// The error type of a failure (default `TimeoutException`).
    #[serde(default)]
    pub error_type: Option<String>,
}
