//! Real monitoring services for the tests: an Alertmanager that posts to `runbook serve`'s receiver
//! and a Prometheus that scrapes its `/metrics` and evaluates alert rules. Each runs on a free
//! loopback port with a fresh storage folder and is stopped when dropped.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

use serde_json::Value as Json;

use crate::util::{eventually, free_port, get_json, send};

/// The tests that start Alertmanager or Prometheus share the machine's two cores: one at a time.
pub static MONITORING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A real Alertmanager on a free loopback port, without clustering, sending every alert at once
/// to `webhook` with `token` as its bearer token; stopped when dropped.
pub struct Alertmanager {
    child: Child,
    pub base: String,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    pub async fn start(webhook: &str, token: &str) -> Alertmanager {
        let bin = std::env::var("RUNBOOK_TEST_ALERTMANAGER_BIN").expect(
            "RUNBOOK_TEST_ALERTMANAGER_BIN names the Alertmanager binary (scripts/test sets it)",
        );
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "route:\n  receiver: runbook\n  group_by: ['...']\n  group_wait: 0s\n  group_interval: 100ms\n  repeat_interval: 1h\n\
             receivers:\n  - name: runbook\n    webhook_configs:\n      - url: {webhook}\n        send_resolved: true\n\
             \x20       http_config:\n          authorization: {{ type: Bearer, credentials: {token} }}\n"
        );
        std::fs::write(dir.path().join("am.yml"), config).unwrap();
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("am.yml").display()
            ))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--web.external-url={base}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("am.log")).unwrap())
            .spawn()
            .expect("start alertmanager");
        let am = Alertmanager { child, base, dir };
        let ready = format!("{}/-/ready", am.base);
        eventually(15, "alertmanager to be ready", || {
            let ready = ready.clone();
            async move {
                let r = reqwest::get(&ready).await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        am
    }

    /// Posts alerts to its API (`/api/v2/alerts`), as Prometheus does.
    pub async fn post(&self, alerts: &Json) {
        let (status, text) = send(
            reqwest::Method::POST,
            &format!("{}/api/v2/alerts", self.base),
            None,
            Some(alerts),
        )
        .await;
        assert_eq!(status, 200, "{text}");
    }

    /// The alerts it holds that are not resolved (`GET /api/v2/alerts`), with their
    /// `status.state` (`active`, `suppressed`).
    pub async fn alerts(&self) -> Vec<Json> {
        let (status, list) = get_json(&format!("{}/api/v2/alerts", self.base), None).await;
        assert_eq!(status, 200, "{list}");
        list.as_array().cloned().unwrap_or_default()
    }

    /// Every silence it knows (`GET /api/v2/silences`), active or expired.
    pub async fn silences(&self) -> Vec<Json> {
        let (status, list) = get_json(&format!("{}/api/v2/silences", self.base), None).await;
        assert_eq!(status, 200, "{list}");
        list.as_array().cloned().unwrap_or_default()
    }

    /// Its log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("am.log")).unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Prometheus on a free loopback port scraping one target every second, evaluating
/// `rules` every second and sending its alerts to one Alertmanager; stopped when dropped.
pub struct Prometheus {
    child: Child,
    pub base: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Listens on `port`; `target` is `host:port` of a `/metrics` endpoint; `alertmanager` an
    /// Alertmanager's base URL.
    pub async fn start(port: u16, target: &str, rules: &str, alertmanager: &str) -> Prometheus {
        let bin = std::env::var("RUNBOOK_TEST_PROMETHEUS_BIN").expect(
            "RUNBOOK_TEST_PROMETHEUS_BIN names the Prometheus binary (scripts/test sets it)",
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yml"), rules).unwrap();
        let am = alertmanager
            .strip_prefix("http://")
            .unwrap_or(alertmanager)
            .trim_end_matches('/');
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             rule_files: ['{rules}']\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{am}']\n\
             scrape_configs:\n  - job_name: runbook\n    static_configs:\n      - targets: ['{target}']\n",
            rules = dir.path().join("rules.yml").display(),
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, base, dir };
        // Ready, with the rules loaded and the target scraped once.
        eventually(
            30,
            "prometheus to scrape runbook serve (up == 1)",
            || async {
                let v = p.query("up").await?;
                (v.first()?["value"][1] == "1").then_some(())
            },
        )
        .await;
        p
    }

    /// An instant query's result vector; `None` while Prometheus does not answer.
    pub async fn query(&self, promql: &str) -> Option<Vec<Json>> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.base),
            &[("query", promql)],
        )
        .ok()?;
        let r = reqwest::get(url).await.ok()?;
        let body: Json = r.json().await.ok()?;
        body["data"]["result"].as_array().cloned()
    }

    /// One number from an instant query (the first series), `None` when there is none.
    pub async fn value(&self, promql: &str) -> Option<f64> {
        let v = self.query(promql).await?;
        v.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Its alerts (`/api/v1/alerts`): pending and firing, each with `labels` and `state`.
    pub async fn alerts(&self) -> Vec<Json> {
        let (status, body) = get_json(&format!("{}/api/v1/alerts", self.base), None).await;
        assert_eq!(status, 200, "{body}");
        body["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Its log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository's alert rules with every `for:` and range shortened by text substitution (each
/// pair must match at least once, so a changed rule file fails loudly here rather than silently
/// testing the long durations).
pub fn scaled_rules(substitutions: &[(&str, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("alerts/streaming.rules.yml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in substitutions {
        assert!(
            text.contains(from),
            "{} has no `{from}` to shorten",
            path.display()
        );
        text = text.replace(from, to);
    }
    text
}
