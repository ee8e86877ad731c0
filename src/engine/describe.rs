//! A step's rendered input in words, for a plan: `would scale workerConcurrency from 3 to 6`,
//! `would send POST https://…`, `would wait 30s`. Built from the input as it is recorded
//! (masked), plus the live settings for the runtime ops that change them.

use serde_json::{json, Value as Json};

use crate::{duration::Dur, playbook::Step, steps::StepKind};

/// Header names whose values a plan never shows, whatever they hold.
const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Words that make a header sensitive anywhere in its name (`X-Api-Key`, `X-Auth-Token`).
const SENSITIVE_WORDS: &[&str] = &["token", "secret", "password", "key", "auth", "session"];

/// `input` as a plan shows it: an HTTP request's sensitive headers masked.
pub(super) fn shown_input(kind: &StepKind, input: &Json) -> Json {
    let mut input = input.clone();
    if let (StepKind::Http(_), Some(Json::Object(headers))) = (kind, input.get_mut("headers")) {
        for (name, value) in headers.iter_mut() {
            let lower = name.to_ascii_lowercase();
            if SENSITIVE_HEADERS.contains(&lower.as_str())
                || SENSITIVE_WORDS.iter().any(|w| lower.contains(w))
            {
                *value = json!("***");
            }
        }
    }
    input
}

/// What the step would do with `input` (its rendered input, as [`shown_input`] shows it), in
/// words; `runtime` is the live settings the run started with.
pub(super) fn would(step: &Step, input: &Json, runtime: &Json) -> String {
    let text = |k: &str| input.get(k).and_then(Json::as_str).unwrap_or("").to_owned();
    match &step.kind {
        StepKind::Sql(_) => format!(
            "would run on {}: {}  -- bound: {}",
            input["datasource"].as_str().unwrap_or("store"),
            one_line(&text("sql")),
            input.get("params").cloned().unwrap_or(json!([]))
        ),
        StepKind::Http(_) => {
            let mut s = format!("would send {} {}", text("method"), text("url"));
            if let Some(Json::Object(q)) = input.get("query") {
                s.push_str(&format!(" query {}", Json::Object(q.clone())));
            }
            if let Some(Json::Object(h)) = input.get("headers") {
                let list: Vec<String> = h
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("")))
                    .collect();
                s.push_str(&format!(" headers {{{}}}", list.join(", ")));
            }
            if let Some(j) = input.get("json") {
                s.push_str(&format!(" json {j}"));
            }
            if let Some(b) = input.get("body").and_then(Json::as_str) {
                s.push_str(&format!(" body {b:?}"));
            }
            s
        }
        StepKind::Shell(_) => {
            let argv: Vec<String> = input["argv"]
                .as_array()
                .map(|a| a.iter().map(|x| quoted(x.as_str().unwrap_or(""))).collect())
                .unwrap_or_default();
            format!("would run {}", argv.join(" "))
        }
        StepKind::Notify(_) => format!("would notify `{}`: {}", text("to"), text("text")),
        StepKind::Approve(_) => format!(
            "would ask for approval of \"{}\" and wait up to {} for an answer",
            text("text"),
            text("timeout")
        ),
        StepKind::Wait(_) => format!("would wait {}", text("wait")),
        StepKind::Playbook(_) => format!(
            "would run playbook `{}` with params {}",
            text("playbook"),
            input.get("params").cloned().unwrap_or(json!({}))
        ),
        StepKind::Runtime(_) => runtime_op(input, runtime),
        StepKind::Assert(_) => format!("would check `{}`", text("that")),
        StepKind::Promql(_) => format!("would query Prometheus: {}", text("query")),
        StepKind::TcpCheck(_) => format!("would connect to {}", text("address")),
        StepKind::Kafka(_) => format!("would run kafka {}", compact(input)),
        StepKind::Silence(_) => silence(input),
        StepKind::Action(_) => action(input),
    }
}

/// A configured action: the command or request it would make; an unconfigured one: what a person
/// would be told to do.
fn action(input: &Json) -> String {
    let name = input["action"].as_str().unwrap_or("");
    if input["configured"] == json!(false) {
        return format!(
            "would tell a person (action `{name}` is not configured): {}",
            input["manual"].as_str().unwrap_or("")
        );
    }
    if let Some(argv) = input["argv"].as_array() {
        let argv: Vec<String> = argv
            .iter()
            .map(|x| quoted(x.as_str().unwrap_or("")))
            .collect();
        return format!("would run action `{name}`: {}", argv.join(" "));
    }
    let mut s = format!(
        "would run action `{name}`: {} {}",
        input["method"].as_str().unwrap_or(""),
        input["url"].as_str().unwrap_or("")
    );
    if let Some(j) = input.get("json").filter(|j| !j.is_null()) {
        s.push_str(&format!(" json {j}"));
    }
    s
}

/// An Alertmanager silence: its matchers as Alertmanager writes them, and for how long.
fn silence(input: &Json) -> String {
    let matchers: Vec<String> = input["matchers"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    let op = match (m["isEqual"].as_bool(), m["isRegex"].as_bool()) {
                        (Some(false), Some(true)) => "!~",
                        (Some(false), _) => "!=",
                        (_, Some(true)) => "=~",
                        _ => "=",
                    };
                    format!(
                        "{}{op}{:?}",
                        m["name"].as_str().unwrap_or(""),
                        m["value"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let secs = input["ends_in_secs"].as_u64().unwrap_or(0);
    format!(
        "would silence {{{}}} in Alertmanager {} for {} (until the run ends)",
        matchers.join(", "),
        input["alertmanager"].as_str().unwrap_or(""),
        Dur(std::time::Duration::from_secs(secs))
    )
}

/// `every`/`within`/`until` in words.
pub(super) fn poll(
    every: impl std::fmt::Display,
    within: impl std::fmt::Display,
    until: &str,
) -> String {
    format!("would poll every {every} for up to {within} until `{until}`")
}

/// A runtime op: what it changes, with the live value it starts from.
fn runtime_op(input: &Json, runtime: &Json) -> String {
    let op = input["op"].as_str().unwrap_or("");
    let set = |pairs: &[(&str, &str)]| {
        let changes: Vec<String> = pairs
            .iter()
            .filter_map(|(arg, setting)| {
                let to = input.get(*arg).filter(|v| !v.is_null())?;
                let from = runtime.get(*setting).map_or("?".into(), plain);
                Some(format!("{setting} from {from} to {}", plain(to)))
            })
            .collect();
        if changes.is_empty() {
            format!("would run {op} changing nothing (no value given)")
        } else {
            changes.join(" and ")
        }
    };
    let older = || plain(input.get("older_than").unwrap_or(&Json::Null));
    let filter = || {
        let mut f = Vec::new();
        if let Some(e) = input.get("entity").and_then(Json::as_str) {
            f.push(format!("entity {e}"));
        }
        if let Some(e) = input.get("error_type").and_then(Json::as_str) {
            f.push(format!("error type {e}"));
        }
        if f.is_empty() {
            String::new()
        } else {
            format!(" of {}", f.join(", "))
        }
    };
    match op {
        "scale_workers" => format!(
            "would scale {}",
            set(&[
                ("concurrency", "workerConcurrency"),
                ("batch_size", "workerBatchSize")
            ])
        ),
        "set_retry_policy" => format!(
            "would set {}",
            set(&[
                ("maxRetries", "maxRetries"),
                ("maxBackoffMs", "maxBackoffMs")
            ])
        ),
        "set_lock_ttl" => format!("would set {}", set(&[("ttl", "lockTtl")])),
        "dlq_retry" => format!("would retry every DLQ entry{}", filter()),
        "dlq_cleanup" => format!("would delete DLQ entries older than {}", older()),
        "purge_completed" => format!("would delete completed commands older than {}", older()),
        "release_stale_locks" => {
            format!("would release work-state locks older than {}", older())
        }
        "maintenance" => format!(
            "would run {} on {}",
            plain(&input["action"]),
            input
                .get("tables")
                .filter(|t| !t.is_null())
                .map_or("the runtime's tables".into(), compact)
        ),
        "prune_records" => {
            "would delete run records, ticks and notifications past their retention".to_owned()
        }
        _ => format!("would run runtime op {}", compact(input)),
    }
}

/// A JSON value as text: a string without quotes.
fn plain(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn compact(v: &Json) -> String {
    v.to_string()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An argv element as a shell would need it to be read back.
fn quoted(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_ops_say_what_they_change_from_and_to() {
        let runtime = json!({ "workerConcurrency": 3, "workerBatchSize": 100, "lockTtl": "5m" });
        let scale = json!({ "op": "scale_workers", "concurrency": 6, "batch_size": null });
        assert_eq!(
            runtime_op(&scale, &runtime),
            "would scale workerConcurrency from 3 to 6"
        );
        let ttl = json!({ "op": "set_lock_ttl", "ttl": "10m" });
        assert_eq!(
            runtime_op(&ttl, &runtime),
            "would set lockTtl from 5m to 10m"
        );
        let retry = json!({ "op": "dlq_retry", "error_type": "TimeoutException" });
        assert_eq!(
            runtime_op(&retry, &runtime),
            "would retry every DLQ entry of error type TimeoutException"
        );
    }

    #[test]
    fn a_silence_shows_its_matchers_and_length() {
        let input = json!({
            "alertmanager": "http://127.0.0.1:9093",
            "matchers": [
                { "name": "alertname", "value": "QueueDepthHigh", "isRegex": false, "isEqual": true },
                { "name": "env", "value": "dev|test", "isRegex": true, "isEqual": false },
            ],
            "ends_in_secs": 1800,
            "comment": "run 7",
        });
        assert_eq!(
            silence(&input),
            "would silence {alertname=\"QueueDepthHigh\", env!~\"dev|test\"} in Alertmanager \
             http://127.0.0.1:9093 for 30m (until the run ends)"
        );
    }

    #[test]
    fn argv_is_quoted_as_a_shell_reads_it() {
        assert_eq!(quoted("kubectl"), "kubectl");
        assert_eq!(quoted("a b"), "'a b'");
        assert_eq!(quoted("it's"), r"'it'\''s'");
        assert_eq!(quoted(""), "''");
    }
}
