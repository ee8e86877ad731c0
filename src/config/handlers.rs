//! `streaming.handlers`: what a worker does with each command type, as the config writes it.
//! The workers compile these into handlers (`process::handlers`).

use serde::Deserialize;

use crate::duration::Dur;

/// One handler as the config writes it: exactly one of the keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHandler {
    #[serde(default)]
    pub http: Option<HttpHandler>,
    #[serde(default)]
    pub sql: Option<SqlHandler>,
    #[serde(default)]
    pub playbook: Option<PlaybookHandler>,
    #[serde(default)]
    pub simulate: Option<SimulateHandler>,
    #[serde(default)]
    pub noop: Option<serde_yaml::Value>,
    /// Whether a command of this type holds its entity's work-state lock while it runs (default
    /// true). Types that do not change entity state (notifications, audit writes) may say false.
    #[serde(default = "exclusive_default")]
    pub exclusive: bool,
}

fn exclusive_default() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHandler {
    pub url: String,
    #[serde(default)]
    pub timeout: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlHandler {
    #[serde(default)]
    pub datasource: Option<String>,
    pub query: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookHandler {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulateHandler {
    #[serde(default)]
    pub latency: Option<Dur>,
    #[serde(default)]
    pub error_rate: Option<f64>,
    #[serde(default)]
    pub error_type: Option<String>,
}
