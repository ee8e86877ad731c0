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

impl RawHandler {
    fn compile(self) -> Result<Handler, String> {
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
            return Err("give exactly one of http, sql, playbook, simulate, noop".into());
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
                    return Err("simulate.error_rate must be between 0 and 1".into());
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
            Err(e) => errors.push(format!("streaming.handlers.{ty}: {e}")),
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
#[error("{}", .0.join("\n"))]
pub struct HandlerConfigError(pub Vec<String>);

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
    match handler {
        Handler::Noop => Ok(Vec::new()),
        Handler::Simulate(SimulateHandler {
            latency,
            error_rate,
            error_type,
        }) => {
            if let Some(l) = latency {
                // Exponential-ish spread around the mean: 0.5x to 1.5x.
                let factor = 0.5 + fastrand::f64();
                tokio::time::sleep(l.as_std().mul_f64(factor)).await;
            }
            if fastrand::f64() < error_rate.unwrap_or(0.0) {
                let ty = error_type
                    .as_deref()
                    .map(ErrorType::from)
                    .unwrap_or(ErrorType::TimeoutException);
                let retryable = ty.is_retryable();
                let message = format!("simulated {ty}");
                return Err(HandlerError::new(ty, message, retryable));
            }
            Ok(vec![event(cmd, json!({ "simulated": true }))])
        }
        Handler::Http(HttpHandler { url, timeout }) => {
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
            let short = crate::text::truncate(&text, 500);
            match status {
                200..=299 => Ok(vec![event(
                    cmd,
                    serde_json::from_str(&text).unwrap_or(json!({ "status": status })),
                )]),
                400..=499 => Err(HandlerError::new(
                    ErrorType::ValidationException,
                    format!("{url} answered {status}: {short}"),
                    false,
                )),
                _ => Err(HandlerError::new(
                    ErrorType::NetworkException,
                    format!("{url} answered {status}: {short}"),
                    true,
                )),
            }
        }
        Handler::Sql(SqlHandler { datasource, query }) => {
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
        Handler::Playbook(PlaybookHandler { name }) => {
            let params: BTreeMap<String, String> = cmd
                .payload
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
                .unwrap_or_default();
            let payload = serde_json::to_value(RunRequest {
                playbook: name.clone(),
                params,
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
    }
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
}
