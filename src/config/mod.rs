//! `runbook.yaml`: where the store is, which outside systems playbooks may reach, who may call the
//! API, and the streaming runtime's settings. Secrets are read from the environment or files named
//! here and registered with the [`Masker`] as they are read.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use schemars::JsonSchema;
use serde::Deserialize;

use crate::{diagnostics::Diagnostic, duration::Dur, secrets::Masker};

mod handlers;

pub use handlers::{HttpHandler, PlaybookHandler, RawHandler, SimulateHandler, SqlHandler};

pub const DEFAULT_STORE: &str = "sqlite://runbook.db";

/// `runbook.yaml`: where the store is, which outside systems playbooks may reach, who may call
/// the API, and the streaming runtime's settings. Every key is optional.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The store's URL: `sqlite://FILE` or `postgres://USER@HOST/DB` (default
    /// `sqlite://runbook.db`). `--store` and `RUNBOOK_STORE` win over it.
    #[serde(default)]
    pub store: Option<String>,
    /// The playbooks folder, relative to the config file (default `./runbooks`).
    #[serde(default)]
    pub runbooks: Option<PathBuf>,
    /// The HTTP server of `runbook serve`.
    #[serde(default)]
    pub server: ServerConfig,
    /// Who may call the API and post Alertmanager notifications.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The streaming runtime's starting settings.
    #[serde(default)]
    pub streaming: StreamingConfig,
    /// Brokers for `kafka` steps and the outbox dispatcher; without it events go to a log sink.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// Prometheus for `promql` steps.
    #[serde(default)]
    pub prometheus: Option<Endpoint>,
    /// Alertmanager, for `silence` steps (its API: `POST /api/v2/silences`).
    #[serde(default)]
    pub alertmanager: Option<Endpoint>,
    /// Named databases for `sql` steps (`sql: { datasource: NAME }`).
    #[serde(default)]
    pub datasources: BTreeMap<String, DatasourceConfig>,
    /// Named channels for `notify` steps (`notify: { to: NAME }`).
    #[serde(default)]
    pub notify: BTreeMap<String, ChannelConfig>,
    /// What `shell` steps may run.
    #[serde(default)]
    pub shell: ShellConfig,
    /// The web console of `runbook serve` (`/ui`).
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Named changes outside runbook that `action` steps perform (`action: { name: NAME }`):
    /// a command (argv list, its program in `shell.allow`) or an HTTP request.
    #[serde(default)]
    pub actions: BTreeMap<String, ActionConfig>,
    /// Per playbook, param values every run of it gets (alert, schedule, CLI, API, a calling
    /// playbook) unless the run gives the param itself: they replace the playbook's defaults.
    #[serde(default)]
    pub playbooks: BTreeMap<String, PlaybookConfig>,
    /// Environment variables templates may read as `env.NAME`: a name, or
    /// `{ name: NAME, secret: true }` for a secret (masked, and only placed whole).
    #[serde(default)]
    pub env: Vec<EnvEntry>,
}

/// One `env` entry: a variable's name, or the name with `secret: true`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EnvEntry {
    Name(String),
    Var(EnvVar),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    /// The variable's name.
    pub name: String,
    /// Masked wherever it would be printed or stored, and opaque in templates.
    #[serde(default)]
    pub secret: bool,
}

impl EnvEntry {
    pub fn name(&self) -> &str {
        match self {
            EnvEntry::Name(n) => n,
            EnvEntry::Var(v) => &v.name,
        }
    }

    pub fn secret(&self) -> bool {
        matches!(self, EnvEntry::Var(EnvVar { secret: true, .. }))
    }
}

/// A secret too short to be masked, named by where the config gives it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0}: the secret is {1} characters long; secrets must have at least {min} characters to be masked in output (use a longer one)",
    min = crate::secrets::MIN_SECRET_LEN
)]
pub struct SecretTooShort(pub String, pub usize);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The address `runbook serve` listens on (`--listen` wins). Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The largest request body the API accepts: bytes with `B`, `KiB`, `MiB`, `KB` or `MB`.
    /// Default `1MiB`.
    #[serde(default)]
    pub max_body: Option<String>,
    /// How long a client may take to send a request's headers, from the moment it connects (or
    /// finished its last request); then the connection is closed. Default 10s.
    #[serde(default)]
    pub header_read_timeout: Option<Dur>,
    /// How long one request may take, reading its body included; then it is answered 503.
    /// Default 60s.
    #[serde(default)]
    pub request_timeout: Option<Dur>,
    /// Connections open at once; past it new ones wait in the listen backlog. Default: half the
    /// process's open-file limit.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            max_body: None,
            header_read_timeout: None,
            request_timeout: None,
            max_connections: None,
        }
    }
}

/// The web console: how long a sign-in lasts, and how often the queue's depth is sampled for
/// its chart.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// How long a console session lasts from sign-in (default 12h; at least 1m).
    #[serde(default = "d_session")]
    pub session: Dur,
    /// How often `runbook serve` records the queue's depth per priority and its oldest pending
    /// age, once per interval across replicas (default 1m; at least 1s).
    #[serde(default = "d_sample_every")]
    pub queue_sample_every: Dur,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            session: d_session(),
            queue_sample_every: d_sample_every(),
        }
    }
}

impl ConsoleConfig {
    /// A session shorter than a minute, or samples more often than each second, are refused:
    /// `(key, message)`.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.session.as_std() < std::time::Duration::from_secs(60) {
            return Err((
                "session",
                format!("console.session: {} is shorter than 1m", self.session),
            ));
        }
        if self.queue_sample_every.as_std() < std::time::Duration::from_secs(1) {
            return Err((
                "queue_sample_every",
                format!(
                    "console.queue_sample_every: {} is shorter than 1s",
                    self.queue_sample_every
                ),
            ));
        }
        Ok(())
    }
}

fn d_session() -> Dur {
    Dur::from_secs(12 * 3600)
}
fn d_sample_every() -> Dur {
    Dur::from_secs(60)
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// API tokens; with none every protected API call is refused.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// The Alertmanager receiver's bearer token, or `insecure: true` to accept notifications
    /// without one.
    #[serde(default)]
    pub receiver: Option<ReceiverConfig>,
}

/// `auth.receiver`: the token Alertmanager sends (`token`, `token_env` or `token_file`), or
/// `insecure: true`. With neither, the receiver refuses every notification.
#[derive(Debug, Default, Deserialize, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// The token itself (a warning is logged: use it only for local trials).
    #[serde(default)]
    pub token: Option<String>,
    /// The environment variable that holds the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// The file that holds the token (blanks around it are trimmed).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Accept notifications without a token (a trial on one machine only).
    #[serde(default)]
    pub insecure: bool,
}

impl ReceiverConfig {
    /// The token's source; `None` when none is given.
    pub fn secret(&self) -> Option<Secret> {
        (self.token.is_some() || self.token_env.is_some() || self.token_file.is_some()).then(|| {
            Secret {
                token: self.token.clone(),
                token_env: self.token_env.clone(),
                token_file: self.token_file.clone(),
            }
        })
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Shown as the actor in audit records: `api:<name>`.
    pub name: String,
    /// `viewer`, `operator` or `PlatformAdmin` (also `platform_admin` or `admin`).
    pub role: String,
    /// The token itself (a warning is logged: use it only for local trials).
    #[serde(default)]
    pub token: Option<String>,
    /// The environment variable that holds the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// The file that holds the token (blanks around it are trimmed).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl TokenConfig {
    pub fn secret(&self) -> Secret {
        Secret {
            token: self.token.clone(),
            token_env: self.token_env.clone(),
            token_file: self.token_file.clone(),
        }
    }
}

/// A secret given literally (`token:`), by environment variable (`token_env:`) or by file (`token_file:`).
#[derive(Debug, Default, Deserialize, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// Why a secret or a URL named in the config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {var} is not set")]
    NotSet { var: String },
    #[error("environment variable {var} is not valid UTF-8")]
    NotUnicode { var: String },
    #[error("cannot read {}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no token, token_env or token_file given")]
    NoToken,
    #[error("neither url nor url_env is given")]
    NoUrl,
    #[error("neither env nor file is given")]
    NoEnvOrFile,
}

/// The value of environment variable `var`.
fn env_var(var: &str) -> Result<String, SecretError> {
    std::env::var(var).map_err(|e| match e {
        std::env::VarError::NotPresent => SecretError::NotSet {
            var: var.to_owned(),
        },
        std::env::VarError::NotUnicode(_) => SecretError::NotUnicode {
            var: var.to_owned(),
        },
    })
}

/// A secret file's contents without surrounding whitespace (editors add a final newline).
fn secret_file(path: &Path) -> Result<String, SecretError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().to_owned()),
        Err(source) => Err(SecretError::Unreadable {
            path: path.to_owned(),
            source,
        }),
    }
}

impl Secret {
    /// Reads the secret and registers it for masking.
    ///
    /// # Errors
    ///
    /// The variable is not set, the file cannot be read, or no source is given.
    pub fn resolve(&self, masker: &Masker) -> Result<String, SecretError> {
        let value = if let Some(v) = &self.token {
            tracing::warn!(
                "A literal token is configured; use token_env or token_file outside local trials."
            );
            v.clone()
        } else if let Some(var) = &self.token_env {
            env_var(var)?
        } else if let Some(file) = &self.token_file {
            secret_file(file)?
        } else {
            return Err(SecretError::NoToken);
        };
        masker.add(&value);
        Ok(value)
    }
}

/// A URL given literally or by environment variable.
#[derive(Debug, Default, Deserialize, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UrlRef {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub url_env: Option<String>,
}

impl UrlRef {
    /// Reads the URL; a URL from the environment is a secret (it may carry credentials).
    ///
    /// # Errors
    ///
    /// The variable is not set, or neither `url` nor `url_env` is given.
    pub fn resolve(&self, masker: &Masker) -> Result<String, SecretError> {
        match (&self.url, &self.url_env) {
            (Some(u), _) => {
                masker.add_url(u);
                Ok(u.clone())
            }
            (None, Some(var)) => {
                let u = env_var(var)?;
                masker.add(&u);
                masker.add_url(&u);
                Ok(u)
            }
            (None, None) => Err(SecretError::NoUrl),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasourceConfig {
    /// The URL itself; a password in it is masked.
    #[serde(default)]
    pub url: Option<String>,
    /// The environment variable that holds the URL (a secret as a whole).
    #[serde(default)]
    pub url_env: Option<String>,
    /// Open the database read-only (SQLite), or with `default_transaction_read_only`
    /// (PostgreSQL).
    #[serde(default)]
    pub read_only: bool,
}

impl DatasourceConfig {
    pub fn url_ref(&self) -> UrlRef {
        UrlRef {
            url: self.url.clone(),
            url_env: self.url_env.clone(),
        }
    }
}

impl WebhookChannel {
    pub fn url_ref(&self) -> UrlRef {
        UrlRef {
            url: self.url.clone(),
            url_env: self.url_env.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// The service's base URL.
    pub url: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// librdkafka's `bootstrap.servers`, e.g. `kafka-1:9093,kafka-2:9093`.
    pub brokers: String,
    /// librdkafka properties; numbers and booleans are written as YAML scalars.
    #[serde(default, deserialize_with = "scalar_map")]
    #[schemars(with = "BTreeMap<String, KafkaScalar>")]
    pub properties: BTreeMap<String, String>,
    /// Properties whose values are read from an environment variable or a file, and masked.
    #[serde(default)]
    pub secret_properties: BTreeMap<String, EnvOrFile>,
}

/// What [`scalar_map`] accepts as a property's value: a string, a number or a boolean.
struct KafkaScalar;

impl JsonSchema for KafkaScalar {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "KafkaScalar".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A librdkafka property's value: a string, a number or a boolean.",
            "type": ["string", "number", "boolean"]
        })
    }
}

/// A map whose values may be strings, numbers or booleans, read as text.
fn scalar_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, serde_yaml::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_yaml::Value::String(s) => s,
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "kafka property `{k}` must be a scalar, not {other:?}"
                    )))
                }
            };
            Ok((k, text))
        })
        .collect()
}

#[derive(Debug, Deserialize, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvOrFile {
    /// The environment variable that holds the value.
    #[serde(default)]
    pub env: Option<String>,
    /// The file that holds the value.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl EnvOrFile {
    /// Reads the secret and registers it for masking.
    ///
    /// # Errors
    ///
    /// The variable is not set, the file cannot be read, or neither is given.
    pub fn resolve(&self, masker: &Masker) -> Result<String, SecretError> {
        let value = match (&self.env, &self.file) {
            (Some(var), _) => env_var(var)?,
            (None, Some(file)) => secret_file(file)?,
            (None, None) => return Err(SecretError::NoEnvOrFile),
        };
        masker.add(&value);
        Ok(value)
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// A webhook (Slack, Mattermost or generic JSON); used when both are given.
    #[serde(default)]
    pub webhook: Option<WebhookChannel>,
    /// PagerDuty's Events API v2.
    #[serde(default)]
    pub pagerduty: Option<PagerDutyChannel>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookChannel {
    /// The URL itself; a password in it is masked.
    #[serde(default)]
    pub url: Option<String>,
    /// The environment variable that holds the URL (a secret as a whole).
    #[serde(default)]
    pub url_env: Option<String>,
    /// The body posted: `slack` or `generic` (the default).
    #[serde(default)]
    pub format: WebhookFormat,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"text": ...}`, as Slack and Mattermost incoming webhooks take it.
    Slack,
    /// `{"text", "playbook", "run_id", "step"}`.
    #[default]
    Generic,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyChannel {
    /// The environment variable that holds the Events API v2 routing key.
    pub routing_key_env: String,
    /// Events API v2 endpoint (default https://events.pagerduty.com/v2/enqueue).
    #[serde(default)]
    pub url: Option<String>,
    /// The events' severity (default `error`).
    #[serde(default)]
    pub severity: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellConfig {
    /// Program names (argv[0]) a shell step may run.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// `playbooks.NAME`: what the config sets for one playbook.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaybookConfig {
    /// Param values, checked against the playbook's declared params and their types.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, AnyValue>")]
    pub params: BTreeMap<String, serde_yaml::Value>,
}

/// Any value: what a param or a request body's field may be.
pub struct AnyValue;

impl JsonSchema for AnyValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AnyValue".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "description": "Any value." })
    }
}

/// `actions.NAME`: one change outside runbook, exactly one of `argv` or `http`. Its strings are
/// templates over `args` (what the step passes), rendered one by one.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    /// A program and its arguments, e.g. `[docker, compose, restart, kafka]`; never a shell
    /// line. The program (literal) must be in `shell.allow`.
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// An HTTP request.
    #[serde(default)]
    pub http: Option<ActionHttp>,
    /// How long the action may take (default 5m).
    #[serde(default)]
    pub timeout: Option<Dur>,
}

/// An HTTP action: values interpolated into the URL are percent-encoded.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionHttp {
    /// Default `POST`.
    #[serde(default)]
    pub method: Option<String>,
    pub url: String,
    /// A JSON object body; strings inside are templates over `args`.
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, AnyValue>>")]
    pub json: Option<serde_yaml::Value>,
    /// An environment variable holding a bearer token sent as `Authorization` (masked).
    #[serde(default)]
    pub token_env: Option<String>,
    /// Accepted status codes (default any 2xx).
    #[serde(default)]
    pub expect: Vec<u16>,
}

/// The streaming runtime's settings, with the seed's metamodel names.
#[derive(Debug, Deserialize, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamingConfig {
    /// Commands a worker process runs at once.
    #[serde(default = "d_concurrency", rename = "workerConcurrency")]
    pub worker_concurrency: u32,
    /// Commands claimed per batch.
    #[serde(default = "d_batch", rename = "workerBatchSize")]
    pub worker_batch_size: u32,
    /// Tries before a failing command goes to the DLQ.
    #[serde(default = "d_retries", rename = "maxRetries")]
    pub max_retries: u32,
    /// Cap of the retry backoff, in milliseconds.
    #[serde(default = "d_backoff", rename = "maxBackoffMs")]
    pub max_backoff_ms: u64,
    /// Age after which a work-state lock may be taken over.
    #[serde(default = "d_ttl", rename = "lockTtl")]
    pub lock_ttl: Dur,
    /// Payload field names masked in logs, DLQ listings, API answers and run records.
    #[serde(default)]
    pub sensitive_fields: Vec<String>,
    /// What a worker does with each command type.
    #[serde(default)]
    pub handlers: BTreeMap<String, RawHandler>,
    /// How long a claim lasts without a heartbeat; a crashed worker's commands return after it.
    #[serde(default = "d_lease")]
    pub lease: Dur,
    /// How long a playbook run counts as alive without renewing its lease; a run whose process
    /// died is taken for dead after it.
    #[serde(default = "d_lease")]
    pub run_lease: Dur,
    /// How often an idle worker looks for work.
    #[serde(default = "d_poll")]
    pub poll_interval: Dur,
    /// Whether `runbook serve` runs workers (a replica may serve only the API and the scheduler).
    #[serde(default = "d_true")]
    pub workers: bool,
    /// How long the `prune_records` runtime op keeps the engine's records.
    #[serde(default)]
    pub retention: Retention,
    /// Tries of an outbox event the broker refuses before it is parked for an operator.
    #[serde(default = "d_outbox_attempts")]
    pub outbox_max_attempts: u32,
    /// The most runs one run tree (a run and the runs its `playbook:` steps start, down all
    /// levels) may hold, the root included.
    #[serde(default = "d_tree_runs")]
    pub max_runs_per_tree: u32,
    /// How deep `playbook:` steps may nest (the root run is depth 0).
    #[serde(default = "d_call_depth")]
    pub max_call_depth: u32,
}

fn d_outbox_attempts() -> u32 {
    10
}
fn d_tree_runs() -> u32 {
    100
}
fn d_call_depth() -> u32 {
    8
}

/// How long records are kept before `prune_records` deletes them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Finished runs, with their step attempts and approvals (and the playbook versions only
    /// they ran).
    #[serde(default = "d_keep_runs")]
    pub runs: Dur,
    /// Schedule ticks (each playbook's newest is always kept).
    #[serde(default = "d_keep_ticks")]
    pub ticks: Dur,
    /// Alertmanager notifications, the alert occurrences they carried, and their run keys.
    #[serde(default = "d_keep_ticks")]
    pub notifications: Dur,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            runs: d_keep_runs(),
            ticks: d_keep_ticks(),
            notifications: d_keep_ticks(),
        }
    }
}

fn d_keep_runs() -> Dur {
    Dur::from_secs(30 * 86_400)
}
fn d_keep_ticks() -> Dur {
    Dur::from_secs(7 * 86_400)
}

fn d_lease() -> Dur {
    Dur::from_secs(30)
}
fn d_poll() -> Dur {
    Dur(std::time::Duration::from_millis(100))
}
fn d_true() -> bool {
    true
}

fn d_concurrency() -> u32 {
    3
}
fn d_batch() -> u32 {
    100
}
fn d_retries() -> u32 {
    5
}
fn d_backoff() -> u64 {
    60_000
}
fn d_ttl() -> Dur {
    Dur::from_secs(300)
}

impl Default for StreamingConfig {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("defaults")
    }
}

impl Config {
    /// Reads a config file; problems come back as `path:line:col: message`.
    pub fn load(path: &Path) -> Result<Config, Diagnostic> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Diagnostic::new(path, (0, 0), format!("cannot read config: {e}")))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, Diagnostic> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let config: Config = serde_yaml::from_str(text).map_err(|e| {
            let pos = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
            Diagnostic::new(path, pos, msg)
        })?;
        config.console.check().map_err(|(key, msg)| {
            // The key's line, when it is written on one of its own.
            let line = text
                .lines()
                .position(|l| {
                    l.trim_start().starts_with(&format!("{key}:"))
                        || l.contains(&format!(" {key}:"))
                })
                .map_or(1, |i| i + 1);
            Diagnostic::new(path, (line, 1), msg)
        })?;
        if let Some((name, problem)) = config.action_problem() {
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with(&format!("{name}:")))
                .map_or(1, |i| i + 1);
            return Err(Diagnostic::new(
                path,
                (line, 1),
                format!("actions.{name}: {problem}"),
            ));
        }
        Ok(config)
    }

    /// The first action that is not exactly one runnable command or request, and why.
    fn action_problem(&self) -> Option<(&str, String)> {
        for (name, a) in &self.actions {
            let problem = match (&a.argv, &a.http) {
                (None, None) | (Some(_), Some(_)) => {
                    Some("give exactly one of `argv` (a command) or `http` (a request)".to_owned())
                }
                (Some(argv), None) => match argv.first() {
                    None => Some("`argv` needs at least the program".to_owned()),
                    Some(p) if p.contains("{{") || p.contains("{%") => {
                        Some("the program (argv[0]) must be literal, not a template".to_owned())
                    }
                    Some(p) if !self.shell.allow.contains(p) => Some(format!(
                        "program `{p}` is not allowed: add it to `shell.allow`"
                    )),
                    Some(_) => None,
                },
                (None, Some(h)) => h
                    .method
                    .as_deref()
                    .filter(|m| {
                        reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).is_err()
                    })
                    .map(|m| format!("unknown HTTP method `{m}`")),
            };
            if let Some(p) = problem {
                return Some((name, p));
            }
        }
        None
    }

    /// Reads every secret the config names and registers it for masking, so that a secret
    /// reaching any output (a template reading it, an error echoing a URL) is masked. Secrets
    /// that cannot be read now are skipped here; the feature that needs one reports it.
    pub fn register_secrets(&self, masker: &Masker) {
        let quiet = |r: Result<String, SecretError>| drop(r);
        for t in &self.auth.tokens {
            match &t.token {
                Some(literal) => masker.add(literal),
                None => quiet(t.secret().resolve(masker)),
            }
        }
        if let Some(r) = self.auth.receiver.as_ref().and_then(ReceiverConfig::secret) {
            match &r.token {
                Some(literal) => masker.add(literal),
                None => quiet(r.resolve(masker)),
            }
        }
        for ds in self.datasources.values() {
            quiet(ds.url_ref().resolve(masker));
        }
        for ch in self.notify.values() {
            if let Some(w) = &ch.webhook {
                quiet(w.url_ref().resolve(masker));
            }
            if let Some(pd) = &ch.pagerduty {
                if let Ok(key) = std::env::var(&pd.routing_key_env) {
                    masker.add(&key);
                }
            }
        }
        if let Some(k) = &self.kafka {
            for s in k.secret_properties.values() {
                quiet(s.resolve(masker));
            }
        }
        for value in self.secret_env().values() {
            masker.add(value);
        }
        for a in self.actions.values() {
            if let Some(var) = a.http.as_ref().and_then(|h| h.token_env.as_ref()) {
                if let Ok(token) = std::env::var(var) {
                    masker.add(&token);
                }
            }
        }
    }

    /// Every secret the config names that can be read now, each with where it is given, and
    /// the store URL's password: a secret shorter than [`crate::secrets::MIN_SECRET_LEN`] is
    /// refused, naming the first such.
    ///
    /// # Errors
    ///
    /// The first secret too short to be masked.
    pub fn check_secrets(&self, store_url: &str) -> Result<(), SecretTooShort> {
        let scratch = Masker::default();
        let mut found: Vec<(String, String)> = Vec::new();
        // A literal token is taken as it is (resolving it would warn about it once more).
        let read = |s: Secret| s.token.clone().map_or_else(|| s.resolve(&scratch), Ok);
        for t in &self.auth.tokens {
            if let Ok(v) = read(t.secret()) {
                found.push((format!("auth.tokens `{}`", t.name), v));
            }
        }
        if let Some(r) = self.auth.receiver.as_ref().and_then(ReceiverConfig::secret) {
            if let Ok(v) = read(r) {
                found.push(("auth.receiver token".into(), v));
            }
        }
        let url_passwords = |what: String, url: &str, found: &mut Vec<(String, String)>| {
            for pw in crate::secrets::url_credentials(url).1 {
                found.push((format!("{what}: the password in the URL"), pw));
            }
        };
        url_passwords("store".into(), store_url, &mut found);
        for (name, ds) in &self.datasources {
            if let Ok(u) = ds.url_ref().resolve(&scratch) {
                url_passwords(format!("datasources.{name}"), &u, &mut found);
            }
        }
        for (name, ch) in &self.notify {
            if let Some(w) = &ch.webhook {
                if let Ok(u) = w.url_ref().resolve(&scratch) {
                    url_passwords(format!("notify.{name}.webhook"), &u, &mut found);
                }
            }
            if let Some(pd) = &ch.pagerduty {
                if let Ok(key) = std::env::var(&pd.routing_key_env) {
                    found.push((format!("notify.{name}.pagerduty routing key"), key));
                }
            }
        }
        if let Some(k) = &self.kafka {
            for (prop, s) in &k.secret_properties {
                if let Ok(v) = s.resolve(&scratch) {
                    found.push((format!("kafka.secret_properties.{prop}"), v));
                }
            }
        }
        for (name, v) in self.secret_env() {
            found.push((format!("env {name} (secret: true)"), v));
        }
        match found
            .into_iter()
            .find(|(_, v)| v.trim().chars().count() < crate::secrets::MIN_SECRET_LEN)
        {
            Some((what, v)) => Err(SecretTooShort(what, v.trim().chars().count())),
            None => Ok(()),
        }
    }

    /// The environment variables templates may read, with their current values; secrets are
    /// not among them (see [`Config::secret_env`]).
    pub fn template_env(&self) -> serde_json::Map<String, serde_json::Value> {
        self.env
            .iter()
            .filter(|e| !e.secret())
            .filter_map(|e| {
                std::env::var(e.name())
                    .ok()
                    .map(|v| (e.name().to_owned(), serde_json::Value::String(v)))
            })
            .collect()
    }

    /// The `env` entries marked `secret: true` that are set, with their values.
    pub fn secret_env(&self) -> BTreeMap<String, String> {
        self.env
            .iter()
            .filter(|e| e.secret())
            .filter_map(|e| {
                std::env::var(e.name())
                    .ok()
                    .map(|v| (e.name().to_owned(), v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_keys_default_and_refuse_too_short_values() {
        let c = Config::parse(Path::new("runbook.yaml"), "").unwrap();
        assert_eq!(c.console.session, Dur::from_secs(12 * 3600));
        assert_eq!(c.console.queue_sample_every, Dur::from_secs(60));
        let text = "store: sqlite://x.db\nconsole:\n  session: 30s\n";
        let e = Config::parse(Path::new("runbook.yaml"), text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "runbook.yaml:3:1: console.session: 30s is shorter than 1m"
        );
        let text = "console: { queue_sample_every: 100ms }\n";
        let e = Config::parse(Path::new("runbook.yaml"), text).unwrap_err();
        assert!(
            e.to_string()
                .contains("console.queue_sample_every: 100ms is shorter than 1s"),
            "{e}"
        );
    }

    #[test]
    fn empty_config_is_defaults() {
        let c = Config::parse(Path::new("runbook.yaml"), "").unwrap();
        assert_eq!(c.streaming.worker_concurrency, 3);
        assert_eq!(c.streaming.lock_ttl, Dur::from_secs(300));
    }

    #[test]
    fn unknown_keys_are_located() {
        let d = Config::parse(
            Path::new("runbook.yaml"),
            "store: sqlite://x.db\nstreamin: {}\n",
        )
        .unwrap_err();
        assert_eq!((d.line, d.col), (2, 1));
        assert!(
            d.message.contains("unknown field `streamin`"),
            "{}",
            d.message
        );
    }

    #[test]
    fn url_passwords_are_masked() {
        let m = Masker::default();
        let u = UrlRef {
            url: Some("postgres://u:hunter22@h/db".into()),
            url_env: None,
        };
        u.resolve(&m).unwrap();
        assert_eq!(
            m.mask_str("postgres://u:hunter22@h/db"),
            "postgres://u:****@h/db"
        );
    }

    #[test]
    fn a_secret_from_an_unset_variable_names_it() {
        let var = "RUNBOOK_TEST_SECRET_THAT_IS_NEVER_SET";
        let secret = Secret {
            token_env: Some(var.into()),
            ..Secret::default()
        };
        let e = secret.resolve(&Masker::default()).unwrap_err();
        assert!(
            matches!(&e, SecretError::NotSet { var: v } if v == var),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("environment variable {var} is not set")
        );
        let url = UrlRef {
            url: None,
            url_env: Some(var.into()),
        };
        let e = url.resolve(&Masker::default()).unwrap_err();
        assert!(matches!(e, SecretError::NotSet { .. }), "{e:?}");
    }

    #[test]
    fn an_unreadable_secret_file_names_the_file_once_and_keeps_the_cause() {
        let path = PathBuf::from("/nonexistent/runbook-token");
        let secret = EnvOrFile {
            env: None,
            file: Some(path.clone()),
        };
        let e = secret.resolve(&Masker::default()).unwrap_err();
        assert_eq!(e.to_string(), "cannot read /nonexistent/runbook-token");
        let cause = std::error::Error::source(&e).expect("the io error is the source");
        assert_eq!(
            cause.downcast_ref::<std::io::Error>().map(|io| io.kind()),
            Some(std::io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn a_secret_with_no_source_says_which_keys_it_takes() {
        let m = Masker::default();
        let e = Secret::default().resolve(&m).unwrap_err();
        assert_eq!(e.to_string(), "no token, token_env or token_file given");
        let e = UrlRef::default().resolve(&m).unwrap_err();
        assert_eq!(e.to_string(), "neither url nor url_env is given");
        let e = EnvOrFile {
            env: None,
            file: None,
        }
        .resolve(&m)
        .unwrap_err();
        assert_eq!(e.to_string(), "neither env nor file is given");
    }
}
