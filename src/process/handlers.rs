//! What a worker does with each command type (`streaming.handlers` in the config).
//!
//! - `http`: POST the command to a service: 2xx completes, 4xx is a `ValidationException` (to the
//!   DLQ without retries), 5xx a `NetworkException` and a timeout a `TimeoutException` (retried).
//! - `sql`: one templated statement on a datasource or the store; values are bound.
//! - `playbook`: start a run of a playbook with the command's payload as parameters.
//! - `simulate`: latency, error rate and error type, for demos, scenario and load tests.
//! - `noop`: complete at once (benchmarks).
//!
//! Handlers are registered by command type ([`Handlers::register`]): whoever builds the process
//! registers the built-in `runbook.run` (playbook runs, [`super::runs`]) next to the config's.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde_json::{json, Value as Json};

use crate::{
    config::{HttpHandler, PlaybookHandler, RawHandler, SimulateHandler, SqlHandler},
    duration::Dur,
    engine::RunRequest,
    services::Services,
    status::ErrorType,
    stream::queue::{Claimed, Event},
    template::context,
};

/// What a worker does with the commands of one type.
pub trait CommandHandler: Send + Sync {
    /// Runs one command; on success returns the events to write with its completion.
    fn handle<'a>(&'a self, cmd: &'a Claimed) -> BoxFuture<'a, Result<Vec<Event>, HandlerError>>;

    /// Whether each command runs in its own task with its own acknowledgement, so a long one
    /// (a playbook run waiting for an approval) does not hold up the batch it came in.
    fn own_lane(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone)]
pub enum Handler {
    Http(HttpHandler),
    Sql(SqlHandler),
    Playbook(PlaybookHandler),
    Simulate(SimulateHandler),
    Noop,
}

/// Why one `streaming.handlers` entry does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerSpecError {
    #[error("give exactly one of http, sql, playbook, simulate, noop")]
    NotExactlyOne,
    #[error("simulate.error_rate must be between 0 and 1")]
    ErrorRate,
}

impl RawHandler {
    fn compile(self) -> Result<Handler, HandlerSpecError> {
        let count = [
            self.http.is_some(),
            self.sql.is_some(),
            self.playbook.is_some(),
            self.simulate.is_some(),
            self.noop.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if count != 1 {
            return Err(HandlerSpecError::NotExactlyOne);
        }
        Ok(match self {
            RawHandler { http: Some(h), .. } => Handler::Http(h),
            RawHandler { sql: Some(h), .. } => Handler::Sql(h),
            RawHandler {
                playbook: Some(h), ..
            } => Handler::Playbook(h),
            RawHandler {
                simulate: Some(h), ..
            } => {
                if h.error_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
                    return Err(HandlerSpecError::ErrorRate);
                }
                Handler::Simulate(h)
            }
            _ => Handler::Noop,
        })
    }
}

/// Why a command failed, in the seed's terms: an exception-like type name, and whether a retry can help.
#[derive(Debug, Clone)]
pub struct HandlerError {
    pub error_type: ErrorType,
    pub message: String,
    pub retryable: bool,
}

impl HandlerError {
    pub fn new(error_type: ErrorType, message: impl Into<String>, retryable: bool) -> Self {
        HandlerError {
            error_type,
            message: message.into(),
            retryable,
        }
    }
}

/// The handlers by command type.
#[derive(Default)]
pub struct Handlers {
    by_type: BTreeMap<String, Arc<dyn CommandHandler>>,
    /// Command types that take no work-state lock.
    shared: Vec<String>,
}

impl Handlers {
    /// Handles `command_type` with `handler`; `exclusive` commands hold their entity's lock.
    pub fn register(
        &mut self,
        command_type: &str,
        handler: Arc<dyn CommandHandler>,
        exclusive: bool,
    ) {
        self.by_type.insert(command_type.to_owned(), handler);
        self.shared.retain(|t| t != command_type);
        if !exclusive {
            self.shared.push(command_type.to_owned());
        }
    }

    /// Registers `streaming.handlers`; `playbook:` handlers start runs through `runs`.
    pub fn register_config(
        &mut self,
        raw: &BTreeMap<String, RawHandler>,
        services: &Arc<Services>,
        runs: &Arc<dyn CommandHandler>,
    ) -> Result<(), HandlerConfigError> {
        for (ty, (handler, exclusive)) in compile_config(raw)? {
            let h = ConfigHandler {
                handler,
                services: services.clone(),
                runs: runs.clone(),
            };
            self.register(&ty, Arc::new(h), exclusive);
        }
        Ok(())
    }

    pub fn shared_types(&self) -> &[String] {
        &self.shared
    }

    pub fn get(&self, command_type: &str) -> Option<&Arc<dyn CommandHandler>> {
        self.by_type.get(command_type)
    }

    /// Whether commands of this type run in their own lane.
    pub fn own_lane(&self, command_type: &str) -> bool {
        self.get(command_type).is_some_and(|h| h.own_lane())
    }

    /// Runs one command with its type's handler.
    pub async fn handle(&self, cmd: &Claimed) -> Result<Vec<Event>, HandlerError> {
        match self.get(&cmd.command_type) {
            Some(h) => h.handle(cmd).await,
            None => Err(HandlerError::new(
                ErrorType::UnknownCommandTypeException,
                format!(
                    "no handler for command type `{}` (streaming.handlers)",
                    cmd.command_type
                ),
                false,
            )),
        }
    }
}

/// Compiles `streaming.handlers` (with each type's `exclusive`); every problem is reported with
/// its command type.
fn compile_config(
    raw: &BTreeMap<String, RawHandler>,
) -> Result<BTreeMap<String, (Handler, bool)>, HandlerConfigError> {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (ty, value) in raw {
        match value.clone().compile() {
            Ok(h) => {
                out.insert(ty.clone(), (h, value.exclusive));
            }
            Err(error) => errors.push(HandlerProblem {
                command_type: ty.clone(),
                error,
            }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(HandlerConfigError(errors))
    }
}

/// `streaming.handlers` entries that do not compile, one line each.
#[derive(Debug, thiserror::Error)]
#[error("{}", lines(.0))]
pub struct HandlerConfigError(pub Vec<HandlerProblem>);

/// One entry of `streaming.handlers` that does not compile, with its command type.
#[derive(Debug, thiserror::Error)]
#[error("streaming.handlers.{command_type}: {error}")]
pub struct HandlerProblem {
    pub command_type: String,
    pub error: HandlerSpecError,
}

fn lines(problems: &[HandlerProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A handler the config declares.
struct ConfigHandler {
    handler: Handler,
    services: Arc<Services>,
    runs: Arc<dyn CommandHandler>,
}

impl CommandHandler for ConfigHandler {
    fn handle<'a>(&'a self, cmd: &'a Claimed) -> BoxFuture<'a, Result<Vec<Event>, HandlerError>> {
        Box::pin(handle_config(
            &self.handler,
            &self.services,
            &self.runs,
            cmd,
        ))
    }
}

pub fn event(cmd: &Claimed, result: Json) -> Event {
    Event {
        command_id: cmd.id,
        entity: cmd.entity.clone(),
        entity_id: cmd.entity_id.clone(),
        event_type: format!("{}.completed", cmd.command_type),
        topic: format!("{}-events", cmd.entity),
        payload: json!({
            "command_id": cmd.id, "command_type": cmd.command_type, "entity": cmd.entity,
            "entity_id": cmd.entity_id, "payload": cmd.payload, "result": result,
        }),
    }
}

async fn handle_config(
    handler: &Handler,
    services: &Services,
    runs: &Arc<dyn CommandHandler>,
    cmd: &Claimed,
) -> Result<Vec<Event>, HandlerError> {
    // The large futures (an HTTP request, a statement, a run) are boxed on their own, so this
    // one, allocated for every command, stays the size of the small ones.
    match handler {
        Handler::Noop => Ok(Vec::new()),
        Handler::Simulate(h) => simulate_handler(h, cmd).await,
        Handler::Http(h) => Box::pin(http_handler(h, services, cmd)).await,
        Handler::Sql(h) => Box::pin(sql_handler(h, services, cmd)).await,
        Handler::Playbook(h) => Box::pin(playbook_handler(h, runs, cmd)).await,
    }
}

/// Waits about `latency`, then fails at `error_rate` with `error_type` (a timeout by default).
async fn simulate_handler(h: &SimulateHandler, cmd: &Claimed) -> Result<Vec<Event>, HandlerError> {
    if let Some(l) = &h.latency {
        // Exponential-ish spread around the mean: 0.5x to 1.5x.
        let factor = 0.5 + fastrand::f64();
        tokio::time::sleep(l.as_std().mul_f64(factor)).await;
    }
    if fastrand::f64() < h.error_rate.unwrap_or(0.0) {
        return Err(simulated_error(h.error_type.as_deref()));
    }
    Ok(vec![event(cmd, json!({ "simulated": true }))])
}

/// The error a `simulate` handler fails with: its `error_type` (a `TimeoutException` when it
/// names none), retryable unless the type rules retries out.
fn simulated_error(error_type: Option<&str>) -> HandlerError {
    let ty = error_type
        .map(ErrorType::from)
        .unwrap_or(ErrorType::TimeoutException);
    let retryable = ty.is_retryable();
    let message = format!("simulated {ty}");
    HandlerError::new(ty, message, retryable)
}

/// POSTs the command to `url`; the answer's status decides the outcome ([`http_status_error`]).
async fn http_handler(
    HttpHandler { url, timeout }: &HttpHandler,
    services: &Services,
    cmd: &Claimed,
) -> Result<Vec<Event>, HandlerError> {
    let body = json!({
        "id": cmd.id, "entity": cmd.entity, "entityId": cmd.entity_id, "type": cmd.command_type,
        "priority": cmd.priority, "payload": cmd.payload, "attempt": cmd.attempts,
    });
    let timeout = timeout.map(Dur::as_std).unwrap_or(Duration::from_secs(10));
    let resp = services
        .http
        .post(url)
        .json(&body)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| {
            let masked = services.masker.mask_str(&crate::text::error_chain(&e));
            if e.is_timeout() {
                HandlerError::new(ErrorType::TimeoutException, masked, true)
            } else {
                HandlerError::new(ErrorType::NetworkException, masked, true)
            }
        })?;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    match http_status_error(status) {
        None => Ok(vec![event(
            cmd,
            serde_json::from_str(&text).unwrap_or(json!({ "status": status })),
        )]),
        Some((error_type, retryable)) => {
            let short = crate::text::truncate(&text, 500);
            Err(HandlerError::new(
                error_type,
                format!("{url} answered {status}: {short}"),
                retryable,
            ))
        }
    }
}

/// How an HTTP answer's status ends its command: `None` for a 2xx (completed); otherwise the
/// error type and whether a retry can help (a 4xx is the request's fault and never will).
fn http_status_error(status: u16) -> Option<(ErrorType, bool)> {
    match status {
        200..=299 => None,
        400..=499 => Some((ErrorType::ValidationException, false)),
        _ => Some((ErrorType::NetworkException, true)),
    }
}

/// Runs the templated statement on its datasource (the store by default), the command's fields
/// bound as values.
async fn sql_handler(
    SqlHandler { datasource, query }: &SqlHandler,
    services: &Services,
    cmd: &Claimed,
) -> Result<Vec<Event>, HandlerError> {
    let db = match datasource {
        None => services.store.clone(),
        Some(name) => services.datasource(name).await.map_err(|e| {
            HandlerError::new(
                ErrorType::NetworkException,
                crate::text::error_chain(&e),
                true,
            )
        })?,
    };
    let ctx = context(&json!({ "command": {
        "id": cmd.id, "entity": cmd.entity, "entity_id": cmd.entity_id, "type": cmd.command_type,
        "priority": cmd.priority, "payload": cmd.payload, "attempts": cmd.attempts,
    }}));
    let q = services
        .templates
        .render_sql(query, &ctx, db.dialect())
        .map_err(|e| {
            HandlerError::new(
                ErrorType::ValidationException,
                crate::template::message(&e),
                false,
            )
        })?;
    let res = db.query(&q, 100).await.map_err(|e| {
        let transient = e.is_transient();
        HandlerError::new(
            if transient {
                ErrorType::NetworkException
            } else {
                ErrorType::SqlException
            },
            services.masker.mask_str(&e.to_string()),
            transient,
        )
    })?;
    Ok(vec![event(
        cmd,
        json!({ "rows_affected": res.rows_affected, "rows": res.rows }),
    )])
}

/// Runs playbook `name` through `runs` with the command's payload as parameters; the command
/// completes with the run's result.
async fn playbook_handler(
    PlaybookHandler { name }: &PlaybookHandler,
    runs: &Arc<dyn CommandHandler>,
    cmd: &Claimed,
) -> Result<Vec<Event>, HandlerError> {
    let payload = serde_json::to_value(RunRequest {
        playbook: name.clone(),
        params: payload_params(&cmd.payload),
        trigger: json!({ "kind": "command", "command_id": cmd.id, "command_type": cmd.command_type }),
        ..Default::default()
    })
    .unwrap_or_default();
    let run_cmd = Claimed {
        payload,
        ..cmd.clone()
    };
    // The run's own event is about the run; this command completes with it as its result.
    let events = runs.handle(&run_cmd).await?;
    let result = events
        .into_iter()
        .next()
        .map(|e| e.payload["result"].clone())
        .unwrap_or(Json::Null);
    Ok(vec![event(cmd, result)])
}

/// A command payload's fields as playbook parameters: strings as they are, other values as
/// JSON text; a payload that is not an object gives none.
fn payload_params(payload: &Json) -> BTreeMap<String, String> {
    payload
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Retry delay after `attempts` tries: exponential from 100 ms, capped by `maxBackoffMs`, with
/// jitter (half to full) so retries of one burst spread out.
pub fn backoff(attempts: i32, max_backoff_ms: u64) -> Duration {
    let exp = 100u64.saturating_mul(1u64 << (attempts.max(1) - 1).min(20) as u64);
    let capped = exp.min(max_backoff_ms.max(1));
    Duration::from_millis(capped / 2 + fastrand::u64(0..=capped / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for _ in 0..100 {
            let d1 = backoff(1, 60_000).as_millis();
            assert!((50..=100).contains(&d1), "{d1}");
            let d5 = backoff(5, 60_000).as_millis();
            assert!((800..=1600).contains(&d5), "{d5}");
            let capped = backoff(30, 5_000).as_millis();
            assert!((2_500..=5_000).contains(&capped), "{capped}");
        }
    }

    #[test]
    fn handlers_are_checked() {
        let raw: BTreeMap<String, RawHandler> = serde_yaml::from_str(
            "user.update: { http: { url: 'http://x/y', timeout: 10s } }\ndemo.slow: { simulate: { latency: 200ms, error_rate: 0.05 } }\nbad: { http: { url: 'http://x' }, noop: {} }\n",
        )
        .unwrap();
        let err = compile_config(&raw).unwrap_err().to_string();
        assert!(err.starts_with("streaming.handlers.bad:"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn each_bad_entry_says_what_is_wrong() {
        let raw: BTreeMap<String, RawHandler> = serde_yaml::from_str(
            "both: { http: { url: 'http://x' }, noop: {} }\nneither: {}\nrate: { simulate: { error_rate: 1.5 } }\n",
        )
        .unwrap();
        let err = compile_config(&raw).unwrap_err();
        let problems: Vec<(&str, &HandlerSpecError)> = err
            .0
            .iter()
            .map(|p| (p.command_type.as_str(), &p.error))
            .collect();
        assert_eq!(
            problems,
            [
                ("both", &HandlerSpecError::NotExactlyOne),
                ("neither", &HandlerSpecError::NotExactlyOne),
                ("rate", &HandlerSpecError::ErrorRate),
            ]
        );
        assert_eq!(
            err.to_string(),
            "streaming.handlers.both: give exactly one of http, sql, playbook, simulate, noop\n\
             streaming.handlers.neither: give exactly one of http, sql, playbook, simulate, noop\n\
             streaming.handlers.rate: simulate.error_rate must be between 0 and 1"
        );
    }

    #[test]
    fn an_http_status_decides_completion_retry_or_dlq() {
        for ok in [200, 201, 204, 299] {
            assert_eq!(http_status_error(ok), None, "{ok}");
        }
        // The request's fault: a retry sends the same request, so straight to the DLQ.
        for client in [400, 404, 409, 422, 499] {
            assert_eq!(
                http_status_error(client),
                Some((ErrorType::ValidationException, false)),
                "{client}"
            );
        }
        // The service's fault (or an answer that is neither): retried.
        for other in [100, 301, 500, 502, 503, 599] {
            assert_eq!(
                http_status_error(other),
                Some((ErrorType::NetworkException, true)),
                "{other}"
            );
        }
    }

    #[test]
    fn a_simulated_error_is_a_timeout_unless_it_names_its_type() {
        let e = simulated_error(None);
        assert_eq!(e.error_type, ErrorType::TimeoutException);
        assert!(e.retryable);
        assert_eq!(e.message, "simulated TimeoutException");
        let e = simulated_error(Some("ValidationException"));
        assert_eq!(e.error_type, ErrorType::ValidationException);
        assert!(!e.retryable);
        let e = simulated_error(Some("QuotaException"));
        assert_eq!(e.error_type, ErrorType::Other("QuotaException".into()));
        assert!(e.retryable);
    }

    #[test]
    fn payload_fields_become_parameters() {
        let params =
            payload_params(&json!({ "host": "db-1", "port": 5432, "force": true, "tags": ["a"] }));
        assert_eq!(
            params,
            BTreeMap::from([
                ("force".to_owned(), "true".to_owned()),
                ("host".to_owned(), "db-1".to_owned()),
                ("port".to_owned(), "5432".to_owned()),
                ("tags".to_owned(), r#"["a"]"#.to_owned()),
            ])
        );
        assert!(payload_params(&json!("not an object")).is_empty());
        assert!(payload_params(&Json::Null).is_empty());
    }
}
