//! `silence`: mutes an alert in Alertmanager while the run remediates it, so nobody is paged for
//! what is already being fixed.
//!
//! The silence is created through Alertmanager's API (`POST /api/v2/silences`, the config's
//! `alertmanager.url`) with the run's id in its comment. It ends when the run ends: the engine
//! expires every silence a run created as the run finishes, whatever its status
//! ([`expire_for_run`]). It never outlasts the run's deadline either, so a process killed
//! mid-run cannot leave an alert silenced past the playbook's `timeout`.
//!
//! Matchers default to the labels of the alert that started the run (every label, `=`), which is
//! exactly that alert; a run started some other way names them (`matchers: ["alertname=X"]`).

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use serde_json::{json, Value as Json};

use super::{http::send, CompileError, Flavour, Kind, StepCx, StepError, StepOutput};
use crate::{duration::Dur, services::Services};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSilence {
    /// Alertmanager matchers (`name=value`, `name!=value`, `name=~regex`, `name!~regex`),
    /// templated. Default: every label of the alert that started the run.
    #[serde(default)]
    pub matchers: Vec<String>,
    /// How long at most (default, and never past, the run's own deadline). The silence is
    /// expired when the run ends in any case.
    #[serde(default, rename = "for")]
    pub duration: Option<Dur>,
    /// Text for Alertmanager's comment, templated; the run's id and playbook are added.
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Debug)]
pub struct SilenceStep {
    pub matchers: Vec<String>,
    pub duration: Option<Dur>,
    pub comment: Option<String>,
}

/// One matcher as Alertmanager's API takes it.
#[derive(Debug, Serialize, PartialEq)]
pub struct Matcher {
    pub name: String,
    pub value: String,
    #[serde(rename = "isRegex")]
    pub is_regex: bool,
    #[serde(rename = "isEqual")]
    pub is_equal: bool,
}

#[derive(Debug, Serialize)]
pub struct Input {
    pub alertmanager: String,
    pub matchers: Vec<Matcher>,
    pub ends_in_secs: u64,
    pub comment: String,
}

impl Kind for SilenceStep {
    type Raw = RawSilence;
    type Input = Input;

    fn compile(r: RawSilence) -> Result<Self, CompileError> {
        for (i, m) in r.matchers.iter().enumerate() {
            // Templated matchers are checked once rendered; a literal one now.
            if !m.contains("{{") {
                parse_matcher(m).map_err(|e| (format!(".silence.matchers[{i}]"), e))?;
            }
        }
        Ok(SilenceStep {
            matchers: r.matchers,
            duration: r.duration,
            comment: r.comment,
        })
    }

    /// Muting an alert changes what Alertmanager pages about.
    fn is_read(&self) -> bool {
        false
    }

    fn templates(&self) -> Vec<(String, &str, Flavour)> {
        let mut t: Vec<(String, &str, Flavour)> = self
            .matchers
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("silence.matchers[{i}]"), m.as_str(), Flavour::Text))
            .collect();
        if let Some(c) = &self.comment {
            t.push(("silence.comment".into(), c.as_str(), Flavour::Text));
        }
        t
    }

    fn render(&self, cx: &StepCx<'_>) -> Result<Input, StepError> {
        let templates = &cx.services.templates;
        let matchers = if self.matchers.is_empty() {
            let labels = templates
                .eval_json("alert.labels", cx.ctx)
                .map_err(StepError::template)?;
            let matchers: Vec<Matcher> = labels
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, value)| Matcher {
                    name: name.clone(),
                    value: value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned),
                    is_regex: false,
                    is_equal: true,
                })
                .collect();
            if matchers.is_empty() {
                return Err(StepError::fatal(
                    "silence: the run was not started by an alert, so there are no labels to \
                     silence: give `matchers`",
                ));
            }
            matchers
        } else {
            self.matchers
                .iter()
                .map(|m| {
                    let text = templates.render(m, cx.ctx).map_err(StepError::template)?;
                    parse_matcher(&text).map_err(|e| StepError::fatal(format!("silence: {e}")))
                })
                .collect::<Result<_, _>>()?
        };
        let comment = match &self.comment {
            Some(c) => templates.render(c, cx.ctx).map_err(StepError::template)?,
            None => "remediation in progress".to_owned(),
        };
        let comment = format!(
            "runbook run {} ({}): {comment}; expires when the run ends",
            cx.run.id, cx.run.playbook
        );
        // Never past the run's deadline; one hour when the run has none and the step says nothing.
        let wanted = self.duration.map_or(Duration::from_secs(3600), Dur::as_std);
        let left = cx
            .run
            .deadline
            .map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let ends_in = left
            .map_or(wanted, |l| l.min(wanted))
            .max(Duration::from_secs(1));
        let alertmanager = cx
            .services
            .config
            .alertmanager
            .as_ref()
            .map(|a| a.url.trim_end_matches('/').to_owned())
            .unwrap_or_default();
        Ok(Input {
            alertmanager,
            matchers,
            ends_in_secs: ends_in.as_secs().max(1),
            comment,
        })
    }

    async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
        if i.alertmanager.is_empty() {
            return Err(StepError::fatal(
                "silence: the config has no `alertmanager.url` (where to create the silence)",
            ));
        }
        let now = Utc::now();
        let ends_at = now + chrono::Duration::seconds(i.ends_in_secs as i64);
        let body = json!({
            "matchers": i.matchers,
            "startsAt": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "endsAt": ends_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "createdBy": "runbook",
            "comment": i.comment,
        });
        let url = format!("{}/api/v2/silences", i.alertmanager);
        let (status, _, answer) = send(
            cx.services.http.post(&url).json(&body).timeout(cx.timeout),
            &cx.services.masker,
        )
        .await?;
        if !(200..300).contains(&status) {
            let msg = format!(
                "alertmanager.url answered {status} to the silence: {}",
                crate::text::truncate(&answer, 200)
            );
            return Err(if status >= 500 {
                StepError::retryable(msg)
            } else {
                StepError::fatal(msg)
            });
        }
        let id = serde_json::from_str::<Json>(&answer)
            .ok()
            .and_then(|a| a["silenceID"].as_str().map(str::to_owned))
            .ok_or_else(|| {
                StepError::fatal(format!(
                    "alertmanager.url answered {status} without a silenceID: {}",
                    crate::text::truncate(&answer, 200)
                ))
            })?;
        Ok(StepOutput::value(json!({
            "silence_id": id,
            "ends_at": ends_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "matchers": i.matchers,
        })))
    }
}

/// `name=value`, `name!=value`, `name=~regex`, `name!~regex` (a value may be double-quoted).
pub fn parse_matcher(text: &str) -> Result<Matcher, String> {
    let text = text.trim();
    let name_end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .ok_or_else(|| format!("matcher `{text}` has no operator (use =, !=, =~ or !~)"))?;
    let (name, rest) = text.split_at(name_end);
    if name.is_empty() {
        return Err(format!("matcher `{text}` has no label name"));
    }
    let (op, value) = ["=~", "!~", "!=", "="]
        .iter()
        .find_map(|op| rest.trim_start().strip_prefix(op).map(|v| (*op, v.trim())))
        .ok_or_else(|| format!("matcher `{text}`: unknown operator (use =, !=, =~ or !~)"))?;
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    Ok(Matcher {
        name: name.to_owned(),
        value: value.to_owned(),
        is_regex: op.contains('~'),
        is_equal: !op.starts_with('!'),
    })
}

/// Expires the silences a run created (the `silence_id` in the outputs of its `silence` steps,
/// `ids` here), as the run ends. A failure is logged, not raised: the silence ends at its own
/// `endsAt` anyway, which is never past the run's deadline.
pub async fn expire_for_run(services: &Services, ids: &[String]) {
    let Some(am) = services.config.alertmanager.as_ref() else {
        return;
    };
    let base = am.url.trim_end_matches('/');
    for id in ids {
        let url = format!("{base}/api/v2/silence/{id}");
        let req = services.http.delete(&url).timeout(Duration::from_secs(10));
        match send(req, &services.masker).await {
            Ok((s, _, _)) if (200..300).contains(&s) => {
                tracing::info!(silence = %id, "Silence expired as the run ended.");
            }
            Ok((s, _, body)) => tracing::warn!(
                silence = %id, status = s, answer = %crate::text::truncate(&body, 200),
                "Expiring a silence failed; it ends at its own endsAt."
            ),
            Err(e) => tracing::warn!(
                silence = %id, error = %e,
                "Expiring a silence failed; it ends at its own endsAt."
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_parse_as_alertmanager_takes_them() {
        let m = |name: &str, value: &str, is_regex, is_equal| Matcher {
            name: name.into(),
            value: value.into(),
            is_regex,
            is_equal,
        };
        assert_eq!(
            parse_matcher("alertname=StreamingQueueDepthHigh").unwrap(),
            m("alertname", "StreamingQueueDepthHigh", false, true)
        );
        assert_eq!(
            parse_matcher("severity != \"page\"").unwrap(),
            m("severity", "page", false, false)
        );
        assert_eq!(
            parse_matcher("job=~\"run.*\"").unwrap(),
            m("job", "run.*", true, true)
        );
        assert_eq!(
            parse_matcher("job!~api").unwrap(),
            m("job", "api", true, false)
        );
        assert!(parse_matcher("=x").unwrap_err().contains("no label name"));
        assert!(parse_matcher("job").unwrap_err().contains("no operator"));
        assert!(parse_matcher("job<x")
            .unwrap_err()
            .contains("unknown operator"));
    }
}
