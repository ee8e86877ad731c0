//! The closed loop's harness: the server with copies of the shipped playbooks, its Alertmanager and
//! its Prometheus, a webhook inbox for the notify channels, and readers of a run's record.

use std::{
    process::Child,
    sync::{Arc, Mutex},
};

use axum::{extract::Path as UrlPath, routing::post, Json as AxumJson, Router};
use serde_json::Value as Json;

use crate::services::{scaled_rules, Alertmanager, Prometheus};
use crate::util::{eventually, free_port, listen, rows, scalar, until_scalar, Server, Workdir};

const RECEIVER: &str = "closed-loop-receiver-token";

/// The rules' durations, shortened so that an incident fires and resolves within seconds.
const RULES: &[(&str, &str)] = &[
    ("for: 5m", "for: 2s"),
    ("for: 2m", "for: 2s"),
    ("for: 1m", "for: 2s"),
    ("[5m]", "[20s]"),
    ("[15m]", "[20s]"),
];

/// Messages the notify channels received, as `(channel, text)`.
#[derive(Clone, Default)]
pub(super) struct Inbox(Arc<Mutex<Vec<(String, String)>>>);

impl Inbox {
    pub(super) fn texts(&self, channel: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _)| c == channel)
            .map(|(_, t)| t.clone())
            .collect()
    }
}

/// A Slack-style webhook per channel: `POST /<channel>` with `{"text": ...}`.
async fn inbox() -> (Inbox, String) {
    let inbox = Inbox::default();
    let seen = inbox.clone();
    let app = Router::new().route(
        "/{channel}",
        post(
            move |UrlPath(channel): UrlPath<String>, AxumJson(body): AxumJson<Json>| {
                let seen = seen.clone();
                async move {
                    let text = body["text"].as_str().unwrap_or_default().to_owned();
                    seen.0.lock().unwrap().push((channel, text));
                    "ok"
                }
            },
        ),
    );
    (inbox, listen(app).await)
}

/// One closed loop: the server with the playbooks, its Alertmanager and its Prometheus.
pub(super) struct Loop {
    pub(super) w: Workdir,
    pub(super) db: runbook::store::Db,
    pub(super) inbox: Inbox,
    // Dropped in this order: Prometheus stops sending, then Alertmanager, then the server.
    pub(super) prom: Prometheus,
    pub(super) am: Alertmanager,
    pub(super) server: Server,
    pub(super) load: Option<Child>,
}

impl Loop {
    /// Copies each shipped playbook as it is, writes a config that sets its `(param, value)` pairs
    /// (`playbooks: { NAME: { params: ... } }`, what shortens its waits and polls) and `streaming`
    /// (indented YAML under `streaming:`), and starts everything.
    pub(super) async fn start(playbooks: &[(&str, &[(&str, &str)])], streaming: &str) -> Loop {
        let w = Workdir::new();
        let mut params = String::new();
        for (name, values) in playbooks {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("runbooks/{name}.yaml"));
            w.playbook(name, &std::fs::read_to_string(&path).unwrap());
            if !values.is_empty() {
                let values: Vec<String> = values.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                params.push_str(&format!(
                    "  {name}: {{ params: {{ {} }} }}\n",
                    values.join(", ")
                ));
            }
        }
        if !params.is_empty() {
            params.insert_str(0, "playbooks:\n");
        }
        let (inbox, hooks) = inbox().await;
        let port = free_port();
        let prom_port = free_port();
        let am = Alertmanager::start(
            &format!("http://127.0.0.1:{port}/api/webhooks/alertmanager"),
            RECEIVER,
        )
        .await;
        w.config(&format!(
            "auth:\n  receiver: {{ token: {RECEIVER} }}\n\
             prometheus: {{ url: \"http://127.0.0.1:{prom_port}\" }}\n\
             alertmanager: {{ url: \"{am}\" }}\n\
             notify:\n  ops: {{ webhook: {{ url: \"{hooks}/ops\", format: slack }} }}\n\
             \x20 oncall: {{ webhook: {{ url: \"{hooks}/oncall\", format: slack }} }}\n\
             \x20 platform: {{ webhook: {{ url: \"{hooks}/platform\", format: slack }} }}\n\
             {params}streaming:\n  poll_interval: 50ms\n{streaming}",
            am = am.base
        ));
        let server = w.serve_at(&[], &format!("127.0.0.1:{port}"));
        let db = crate::util::store(&w.sqlite_url()).await;
        let prom = Prometheus::start(
            prom_port,
            &format!("127.0.0.1:{port}"),
            &scaled_rules(RULES),
            &am.base,
        )
        .await;
        Loop {
            w,
            db,
            inbox,
            prom,
            am,
            server,
            load: None,
        }
    }

    /// Waits until Prometheus reports `alert` firing; returns its labels.
    pub(super) async fn fires(&self, alert: &str, secs: u64) -> Json {
        eventually(secs, &format!("Prometheus to fire {alert}"), || async {
            self.prom
                .alerts()
                .await
                .into_iter()
                .find(|a| a["labels"]["alertname"] == alert && a["state"] == "firing")
                .map(|a| a["labels"].clone())
        })
        .await
    }

    /// Waits until neither Prometheus nor Alertmanager holds `alert` any more.
    pub(super) async fn resolves(&self, alert: &str, secs: u64) {
        eventually(
            secs,
            &format!("{alert} to resolve in Prometheus and Alertmanager"),
            || async {
                let in_prom = self
                    .prom
                    .alerts()
                    .await
                    .iter()
                    .any(|a| a["labels"]["alertname"] == alert);
                let in_am = self
                    .am
                    .alerts()
                    .await
                    .iter()
                    .any(|a| a["labels"]["alertname"] == alert);
                (!in_prom && !in_am).then_some(())
            },
        )
        .await
    }

    /// The id of the one run of `playbook`, once it exists.
    pub(super) async fn run_of(&self, playbook: &str, secs: u64) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM runbook_runs WHERE playbook = '{playbook}'");
        until_scalar(secs, &format!("a run of {playbook}"), &self.db, &sql, |n| {
            n >= 1
        })
        .await;
        scalar(
            &self.db,
            &format!("SELECT MIN(id) FROM runbook_runs WHERE playbook = '{playbook}'"),
        )
        .await
    }

    /// Waits until run `id` has finished; returns `runbook runs show ID -o json`.
    pub(super) async fn finished(&self, id: i64, secs: u64) -> Json {
        let sql = format!(
            "SELECT COUNT(*) FROM runbook_runs WHERE id = {id} AND finished_at IS NOT NULL"
        );
        until_scalar(secs, &format!("run {id} to finish"), &self.db, &sql, |n| {
            n == 1
        })
        .await;
        self.show(id)
    }

    pub(super) fn show(&self, id: i64) -> Json {
        let out = self.w.run(&["runs", "show", &id.to_string(), "-o", "json"]);
        assert_eq!(out.code, 0, "{out:?}");
        out.json()
    }

    /// The silence whose comment names run `id`, as Alertmanager lists it.
    pub(super) async fn silence_of(&self, id: i64) -> Option<Json> {
        let needle = format!("runbook run {id} (");
        self.am
            .silences()
            .await
            .into_iter()
            .find(|s| s["comment"].as_str().unwrap_or_default().contains(&needle))
    }

    /// Every run of every playbook: `(playbook, status)`.
    pub(super) async fn runs(&self) -> Vec<(String, String)> {
        rows(
            &self.db,
            "SELECT playbook, status FROM runbook_runs ORDER BY id",
        )
        .await
        .into_iter()
        .map(|r| {
            (
                r["playbook"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
    }

    /// Starts `runbook queue load ...` in the background (stopped when the loop is dropped).
    pub(super) fn load(&mut self, args: &[&str]) {
        let child = self
            .w
            .command()
            .args(["queue", "load"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start runbook queue load");
        self.load = Some(child);
    }

    /// Everything the services said, for a failure message.
    pub(super) fn logs(&self) -> String {
        format!(
            "--- serve\n{}\n--- prometheus\n{}\n--- alertmanager\n{}",
            tail(&self.server.log()),
            tail(&self.prom.log()),
            tail(&self.am.log())
        )
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(mut c) = self.load.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

pub(super) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The last recorded attempt of each step, in the order the steps first ran: `step_id -> attempt`.
pub(super) fn steps(shown: &Json) -> Vec<(String, Json)> {
    let mut out: Vec<(String, Json)> = Vec::new();
    for s in shown["steps"].as_array().unwrap() {
        let id = s["step_id"].as_str().unwrap().to_owned();
        match out.iter_mut().find(|(k, _)| *k == id) {
            Some(slot) => slot.1 = s.clone(),
            None => out.push((id, s.clone())),
        }
    }
    out
}

pub(super) fn step<'a>(steps: &'a [(String, Json)], id: &str) -> &'a Json {
    &steps
        .iter()
        .find(|(k, _)| k == id)
        .unwrap_or_else(|| panic!("no step {id} in {steps:?}"))
        .1
}

pub(super) fn statuses(steps: &[(String, Json)]) -> Vec<(&str, &str)> {
    steps
        .iter()
        .map(|(k, s)| (k.as_str(), s["status"].as_str().unwrap_or("?")))
        .collect()
}

/// The steps that ran (not skipped), with their status.
pub(super) fn ran(steps: &[(String, Json)]) -> Vec<(&str, &str)> {
    statuses(steps)
        .into_iter()
        .filter(|(_, s)| *s != "skipped")
        .collect()
}

/// The step did not run: skipped, or not recorded at all.
pub(super) fn skipped(steps: &[(String, Json)], id: &str) -> bool {
    steps
        .iter()
        .find(|(k, _)| k == id)
        .is_none_or(|(_, s)| s["status"] == "skipped")
}

/// Asserts the silence of run `id` was made for `alertname` and is expired now the run has ended.
pub(super) async fn assert_silenced_then_expired(l: &Loop, id: i64, alertname: &str) {
    let silence = eventually(10, "the run's silence to be expired", || async {
        let s = l.silence_of(id).await?;
        (s["status"]["state"] == "expired").then_some(s)
    })
    .await;
    assert_eq!(silence["createdBy"], "runbook", "{silence}");
    assert!(
        silence["matchers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "alertname" && m["value"] == alertname),
        "{silence}"
    );
}
