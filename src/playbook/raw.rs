//! The serde mirror of a playbook file: exactly what YAML may say, nothing checked beyond shape.
//!
//! Every struct denies unknown keys. Step kinds are keys of the step (`- sql: ...`), not a
//! `kind:` tag, because serde's internally tagged and flattened forms buffer the input and lose
//! the line numbers that `runbook validate` prints. The JSON Schema for editors is derived from
//! these same types, so the two cannot drift apart.

use std::{borrow::Cow, collections::BTreeMap, fmt};

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{
    de::{self, value::MapAccessDeserializer, value::SeqAccessDeserializer, MapAccess, SeqAccess},
    Deserialize, Deserializer,
};

use crate::duration::Dur;

/// Any YAML value; strings inside are templates.
pub type Yaml = serde_yaml::Value;

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
    /// Cron expression with a seconds field first, e.g. `0 0 3 * * SUN`.
    #[serde(default)]
    pub schedule: Option<String>,
    /// IANA-style fixed zone for the schedule; only `UTC` is supported.
    #[serde(default)]
    pub timezone: Option<String>,
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

/// One step: the common keys and exactly one kind key (`sql`, `http`, ...).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// Unique within the playbook; later steps read `steps.<id>`.
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Expression; the step is skipped when it is false.
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub retry: Option<RawRetry>,
    #[serde(default)]
    pub continue_on_error: bool,
    /// An expression giving a list, or a literal list; the step runs once per element as `item`.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub for_each: Option<Yaml>,
    /// Expression; the step is repeated every `every` until it is true, for at most `within`.
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub every: Option<Dur>,
    #[serde(default)]
    pub within: Option<Dur>,

    #[serde(default)]
    pub sql: Option<ShortOr<RawSql>>,
    #[serde(default)]
    pub promql: Option<ShortOr<RawPromql>>,
    #[serde(default)]
    pub http: Option<RawHttp>,
    #[serde(default)]
    pub kafka: Option<RawKafka>,
    #[serde(default)]
    #[schemars(with = "Option<RuntimeSchema>")]
    pub runtime: Option<BTreeMap<String, Yaml>>,
    #[serde(default)]
    pub shell: Option<RawShell>,
    #[serde(default)]
    pub tcp_check: Option<ShortOr<RawTcpCheck>>,
    #[serde(default)]
    pub wait: Option<Dur>,
    #[serde(default)]
    pub assert: Option<ShortOr<RawAssert>>,
    #[serde(default)]
    pub approve: Option<RawApprove>,
    #[serde(default)]
    pub notify: Option<RawNotify>,
    #[serde(default)]
    pub playbook: Option<ShortOr<RawCall>>,
}

/// Schema-only description of a `runtime` step.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct RuntimeSchema {
    /// queue_stats, dlq_list, dlq_retry, dlq_cleanup, scale_workers, set_retry_policy, set_lock_ttl,
    /// release_stale_locks, purge_completed, maintenance
    op: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: u32,
    #[serde(default)]
    pub backoff: Option<Dur>,
}

/// A kind that may be written short (one string) or long (a map): `sql: "SELECT 1"` or
/// `sql: { query: ..., datasource: ... }`. The long form keeps serde_yaml's own error locations.
#[derive(Debug)]
pub struct ShortOr<T>(pub T);

/// How a kind reads its one-string short form.
pub trait FromShort: Sized {
    fn from_short(text: String) -> Self;
}

impl<'de, T: FromShort + Deserialize<'de>> Deserialize<'de> for ShortOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: FromShort + Deserialize<'de>> de::Visitor<'de> for Visitor<T> {
            type Value = ShortOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a map")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ShortOr<T>, E> {
                Ok(ShortOr(T::from_short(v.to_owned())))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ShortOr<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(ShortOr)
            }
        }
        d.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for ShortOr<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("ShortOr{}", T::schema_name()).into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let long = g.subschema_for::<T>();
        json_schema!({ "anyOf": [ { "type": "string" }, long ] })
    }
}

/// `sql: "SELECT ..."` runs on the store; the long form names a datasource.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSql {
    #[serde(default)]
    pub datasource: Option<String>,
    pub query: String,
    /// Rows kept in the result (default 1000).
    #[serde(default)]
    pub max_rows: Option<usize>,
}

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

impl FromShort for RawSql {
    fn from_short(query: String) -> Self {
        RawSql {
            datasource: None,
            query,
            max_rows: None,
        }
    }
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

impl FromShort for RawTcpCheck {
    fn from_short(address: String) -> Self {
        RawTcpCheck { address }
    }
}

impl FromShort for RawAssert {
    fn from_short(that: String) -> Self {
        RawAssert {
            that,
            message: None,
        }
    }
}

impl FromShort for RawCall {
    fn from_short(name: String) -> Self {
        RawCall {
            name,
            params: BTreeMap::new(),
        }
    }
}

impl StatusList {
    pub fn to_vec(&self) -> Vec<u16> {
        match self {
            StatusList::One(c) => vec![*c],
            StatusList::Many(c) => c.clone(),
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// list_topics, describe_topic, topic_configs, consumer_lag, log_dirs
    pub op: String,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}

/// `shell: [kubectl, get, pods]`: an argv list, each element a template rendered on its own.
#[derive(Debug, JsonSchema)]
pub struct RawShell {
    pub argv: Vec<String>,
    /// Bytes of stdout/stderr kept (default 64 KiB).
    pub max_output: Option<usize>,
}

impl<'de> Deserialize<'de> for RawShell {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Long {
            argv: Vec<String>,
            #[serde(default)]
            max_output: Option<usize>,
        }
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = RawShell;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an argv list such as [kubectl, get, pods] or {argv: [...], max_output: N}",
                )
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<RawShell, E> {
                Err(E::custom("a shell step takes an argv list, never a command line: write [cmd, arg1, arg2]"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawShell, A::Error> {
                let argv = Vec::<String>::deserialize(SeqAccessDeserializer::new(seq))?;
                Ok(RawShell {
                    argv,
                    max_output: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawShell, A::Error> {
                let l = Long::deserialize(MapAccessDeserializer::new(map))?;
                Ok(RawShell {
                    argv: l.argv,
                    max_output: l.max_output,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `tcp_check: "kafka:9092"` or `{ address: "kafka:9092" }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTcpCheck {
    pub address: String,
}

/// `assert: "expr"` or `{ that: "expr", message: "..." }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAssert {
    pub that: String,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApprove {
    /// What the operator is asked.
    pub text: String,
    /// How long to wait for an answer (default 1h); no answer rejects.
    #[serde(default)]
    pub timeout: Option<Dur>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// A channel named in the config's `notify` section.
    pub to: String,
    pub text: String,
}

/// `playbook: other-name` or `{ name: other-name, params: {...} }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCall {
    pub name: String,
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub params: BTreeMap<String, Yaml>,
}
