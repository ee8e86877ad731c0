//! The serde mirror of a playbook file: exactly what YAML may say, nothing checked beyond shape.
//!
//! Every struct denies unknown keys. Step kinds are keys of the step (`- sql: ...`), not a
//! `kind:` tag, because serde's internally tagged and flattened forms buffer the input and lose
//! the line numbers that `runbook validate` prints. The JSON Schema for editors is derived from
//! these same types, so the two cannot drift apart.

use std::{borrow::Cow, collections::BTreeMap, fmt};

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{
    de::{self, MapAccess},
    Deserialize, Deserializer,
};

use crate::{
    duration::Dur,
    steps::{RawStep, Yaml},
};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// A runbook playbook: what triggers it, what it may take, and the steps it runs.
pub struct RawPlaybook {
    /// Unique name; the file name without `.yaml`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// What starts the playbook besides the CLI and the API.
    #[serde(default, rename = "on")]
    pub triggers: RawTriggers,
    /// Typed parameters with defaults, overridable with `--param k=v`.
    #[serde(default)]
    pub params: BTreeMap<String, RawParam>,
    /// Blast-radius limits.
    #[serde(default)]
    pub guard: Option<RawGuard>,
    /// Deadline for the whole run (default 15m).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// What happens to a run interrupted by a crash: mark it `interrupted`, or `resume` from the failed step.
    #[serde(default)]
    pub on_interrupt: Option<OnInterrupt>,
    pub steps: Vec<RawStep>,
    /// Steps run when a step fails; they see `failed_step`.
    #[serde(default)]
    pub on_failure: Vec<RawStep>,
    /// Text printed at the end of every run (and kept on its record): what was wrong, what was
    /// changed, what is left for a person. A template over `steps`, `params`, `alert`, `run` and
    /// `failed_step` (null unless a step failed); a step that did not run reads as skipped.
    #[serde(default)]
    pub report: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInterrupt {
    Interrupted,
    Resume,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTriggers {
    /// Any entry matches. Keys are label names with exact values; `matchers` takes Alertmanager-style matchers.
    #[serde(default)]
    pub alerts: Vec<RawAlertMatch>,
    /// What a resolved notification does: `skip` (default) or `run`.
    #[serde(default)]
    pub resolved: Option<ResolvedPolicy>,
    /// Cron expression with a seconds field first, e.g. `0 0 3 * * SUN`; `runbook serve` runs it.
    #[serde(default)]
    pub schedule: Option<String>,
    /// IANA zone whose wall clock the schedule is read on, e.g. `Europe/Berlin` (default `UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Ticks that fell due while no `runbook serve` was running: `run_once` (default) gives one
    /// catch-up run for all of them, `skip` none; either way every tick is recorded.
    #[serde(default)]
    pub missed: Option<Missed>,
}

/// What a schedule does about the ticks it missed.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// One catch-up run, at once, for however many ticks were missed.
    #[default]
    RunOnce,
    /// No run: the missed ticks are recorded as skipped, and the schedule goes on from the next one.
    Skip,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolvedPolicy {
    #[default]
    Skip,
    Run,
}

/// One alert selector: `{alertname: X, severity: critical}` or `{matchers: ['alertname=~"Streaming.*"']}`.
#[derive(Debug, Default)]
pub struct RawAlertMatch {
    pub labels: BTreeMap<String, String>,
    pub matchers: Vec<String>,
}

impl<'de> Deserialize<'de> for RawAlertMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = RawAlertMatch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of label names to values, optionally with `matchers: [...]`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawAlertMatch, A::Error> {
                let mut out = RawAlertMatch::default();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "matchers" {
                        out.matchers = map.next_value()?;
                    } else {
                        let value: String = map.next_value()?;
                        out.labels.insert(key, value);
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Visitor)
    }
}

impl JsonSchema for RawAlertMatch {
    fn schema_name() -> Cow<'static, str> {
        "AlertMatch".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "description": "Label equality (`alertname: X`) and/or Alertmanager matchers (`matchers: ['severity=~\"crit.*\"']`).",
            "properties": { "matchers": { "type": "array", "items": { "type": "string" } } },
            "additionalProperties": { "type": "string" }
        })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawParam {
    #[serde(rename = "type")]
    pub ty: ParamType,
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub default: Option<Yaml>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    Duration,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    /// Runs of this playbook at once.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// The same alert fingerprint does not start the playbook again within this.
    #[serde(default)]
    pub cooldown: Option<Dur>,
    #[serde(default)]
    pub max_runs_per_hour: Option<u32>,
}
