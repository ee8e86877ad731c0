//! `notify`: a message to a named channel from the config: a Slack-style or generic webhook, or
//! PagerDuty Events v2. A channel whose address is not set (its environment variable unset or
//! empty) sends nothing: the step succeeds with `delivered: false` and the text, which
//! `runbook run` prints. A channel that answers an error fails the step.

use serde::Serialize;
use serde_json::json;

use super::{
    http::send,
    names::{self, Names},
    CompileError, Flavour, Kind, StepCx, StepError, StepOutput,
};
use crate::config::{ChannelConfig, WebhookFormat};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// A channel named in the config's `notify` section.
    pub to: String,
    pub text: String,
}

const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

#[derive(Debug)]
pub struct NotifyStep {
    pub to: String,
    pub text: String,
}

impl Kind for NotifyStep {
    type Raw = RawNotify;
    type Input = Input;

    fn compile(r: RawNotify) -> Result<Self, CompileError> {
        Ok(NotifyStep {
            to: r.to,
            text: r.text,
        })
    }

    /// A message to people is a change (it pages, posts, opens incidents).
    fn is_read(&self) -> bool {
        false
    }

    fn templates(&self) -> Vec<(String, &str, Flavour)> {
        vec![("notify.text".into(), self.text.as_str(), Flavour::Text)]
    }

    fn check_names(&self, names: &Names) -> Vec<(String, String)> {
        if names.channels.contains(&self.to) {
            return vec![];
        }
        vec![(
            "notify.to".into(),
            format!(
                "unknown notify channel `{}` (the config's `notify` names: {})",
                self.to,
                names::list(&names.channels)
            ),
        )]
    }

    fn render(&self, cx: &StepCx<'_>) -> Result<Input, StepError> {
        Ok(Input {
            to: self.to.clone(),
            text: cx
                .services
                .templates
                .render(&self.text, cx.ctx)
                .map_err(StepError::template)?,
        })
    }

    async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
        execute(i, cx).await
    }
}

#[derive(Debug, Serialize)]
pub struct Input {
    pub to: String,
    pub text: String,
}

pub async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
    let services = cx.services;
    let channel = services
        .config
        .notify
        .get(&i.to)
        .ok_or_else(|| StepError::fatal(format!("unknown notify channel `{}`", i.to)))?;
    if let Some(reason) = not_configured(channel) {
        // Nobody is told through the channel, so the message is said where the run is watched
        // (the CLI prints it) and kept on the run's record; the step goes on.
        tracing::warn!(channel = %i.to, reason = %reason, "Notify channel not configured; the message is on the run's record.");
        return Ok(StepOutput::value(json!({
            "channel": i.to, "delivered": false, "reason": reason, "text": i.text,
        })));
    }
    let (url, body) = if let Some(w) = &channel.webhook {
        let url = w
            .url_ref()
            .resolve(&services.masker)
            .map_err(|e| StepError::fatal(format!("channel `{}`: {e}", i.to)))?;
        let body = match w.format {
            WebhookFormat::Slack => json!({ "text": i.text }),
            WebhookFormat::Generic => json!({
                "text": i.text, "playbook": cx.run.playbook, "run_id": cx.run.id, "step": cx.step_id, "channel": i.to,
            }),
        };
        (url, body)
    } else if let Some(pd) = &channel.pagerduty {
        let key = std::env::var(&pd.routing_key_env).map_err(|_| {
            StepError::fatal(format!(
                "channel `{}`: environment variable {} is not set",
                i.to, pd.routing_key_env
            ))
        })?;
        services.masker.add(&key);
        let body = json!({
            "routing_key": key,
            "event_action": "trigger",
            "dedup_key": format!("runbook-{}-{}", cx.run.playbook, cx.run.id),
            "payload": { "summary": i.text, "source": "runbook", "severity": pd.severity.as_deref().unwrap_or("error"),
                         "custom_details": { "playbook": cx.run.playbook, "run_id": cx.run.id } },
        });
        (pd.url.clone().unwrap_or_else(|| PAGERDUTY_URL.into()), body)
    } else {
        return Err(StepError::fatal(format!(
            "channel `{}` has neither webhook nor pagerduty",
            i.to
        )));
    };
    let (status, _, answer) = send(
        services.http.post(&url).json(&body).timeout(cx.timeout),
        &services.masker,
    )
    .await?;
    if !(200..300).contains(&status) {
        let msg = format!(
            "channel `{}` answered {status}: {}",
            i.to,
            crate::text::truncate(&answer, 200)
        );
        return Err(if status >= 500 || status == 429 {
            StepError::retryable(msg)
        } else {
            StepError::fatal(msg)
        });
    }
    Ok(StepOutput::value(
        json!({ "channel": i.to, "delivered": true, "status": status }),
    ))
}

/// Why `channel` has no address to send to, when it has none: the environment variable that
/// holds its URL (or PagerDuty routing key) is unset or empty.
fn not_configured(channel: &ChannelConfig) -> Option<String> {
    let unset = |var: &str| std::env::var(var).map_or(true, |v| v.trim().is_empty());
    if let Some(w) = &channel.webhook {
        let r = w.url_ref();
        return match (&r.url, &r.url_env) {
            (Some(u), _) if u.trim().is_empty() => Some("its `url` is empty".to_owned()),
            (None, Some(var)) if unset(var) => Some(format!("{var} is not set")),
            _ => None,
        };
    }
    if let Some(pd) = &channel.pagerduty {
        if unset(&pd.routing_key_env) {
            return Some(format!("{} is not set", pd.routing_key_env));
        }
    }
    None
}
