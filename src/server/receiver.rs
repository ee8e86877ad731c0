//! The Alertmanager receiver: `POST /api/webhooks/alertmanager` (and the same body at
//! `POST /api/alerts`) takes a webhook notification (version 4), matches each alert against every
//! playbook's `on.alerts`, and records in one store transaction the notification, each alert's
//! occurrence and outcome, and each run it starts (`queued`, with its `runbook.run` command) or
//! skips. It answers 2xx only after that commit, so a notification Alertmanager saw accepted is
//! never lost, and 503 when the store cannot be reached, so Alertmanager tries again. Runs happen
//! on the queue, not in the request. `GET /api/alerts` lists what was received.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::{
    auth::{Digest, Role},
    AppError, Shared,
};
use crate::{
    config::Config,
    engine::{Engine, RunRequest},
    metrics::{Metrics, OutcomeLabel},
    playbook::{ParamProblems, Playbook, ResolvedPolicy},
    process::runs::{self, priority_for, Admission, Admit, AlertKey},
    secrets::Masker,
    services::Services,
    store::{alerts, guards, versions, DbError},
};

/// Alertmanager's webhook payload, version 4.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub version: String,
    #[serde(default)]
    pub group_key: String,
    #[serde(default)]
    pub truncated_alerts: u64,
    pub status: AlertStatus,
    #[serde(default)]
    pub receiver: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<Alert>,
}

/// One alert of a notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: AlertStatus,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: DateTime<Utc>,
    /// `0001-01-01T00:00:00Z` while firing.
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    /// Alertmanager's hash of the labels; computed from them when absent.
    #[serde(default)]
    pub fingerprint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// Alertmanager's fingerprint of a label set (Prometheus' `LabelSet.Fingerprint`): FNV-1a 64
/// over the sorted names and values, each followed by the byte 255, as 16 hex digits.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut add = |bytes: &[u8]| {
        for &b in bytes.iter().chain(&[255u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, value) in labels {
        add(name.as_bytes());
        add(value.as_bytes());
    }
    format!("{h:016x}")
}

/// A time as Alertmanager writes it (RFC 3339 UTC, as many fraction digits as needed).
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Who may post notifications: the configured token, anyone (`insecure: true`), or nobody.
pub enum ReceiverAuth {
    /// The token's digest.
    Token(Digest),
    Insecure,
    /// Why every notification is refused.
    Closed(String),
}

impl ReceiverAuth {
    pub fn from_config(config: &Config, masker: &Masker) -> ReceiverAuth {
        let Some(r) = &config.auth.receiver else {
            return ReceiverAuth::Closed(
                "no receiver token is configured: set auth.receiver.token_env (or token_file) and \
                 send it as `Authorization: Bearer <token>`, or set auth.receiver.insecure: true"
                    .into(),
            );
        };
        match r.secret().map(|s| s.resolve(masker)) {
            Some(Ok(token)) => ReceiverAuth::Token(Digest::of(token.trim())),
            Some(Err(e)) => ReceiverAuth::Closed(format!(
                "the receiver token cannot be read ({}); fix auth.receiver",
                crate::text::error_chain(&e)
            )),
            None if r.insecure => ReceiverAuth::Insecure,
            None => ReceiverAuth::Closed(
                "auth.receiver names no token: give token_env or token_file, or insecure: true"
                    .into(),
            ),
        }
    }

    /// What `runbook serve` prints at start.
    pub fn describe(&self) -> String {
        match self {
            ReceiverAuth::Token(_) => "alert receiver: bearer token required (auth.receiver)".into(),
            ReceiverAuth::Insecure => {
                "alert receiver: INSECURE, accepting notifications without a token (auth.receiver.insecure)".into()
            }
            ReceiverAuth::Closed(why) => format!("alert receiver: closed, refusing every notification: {why}"),
        }
    }

    pub(super) fn check(&self, headers: &HeaderMap) -> Result<(), AppError> {
        let token = match self {
            ReceiverAuth::Insecure => return Ok(()),
            ReceiverAuth::Closed(why) => return Err(AppError::Unauthorized(why.clone())),
            ReceiverAuth::Token(t) => t,
        };
        let presented = super::auth::bearer(headers).ok_or_else(|| {
            AppError::Unauthorized("a bearer token (auth.receiver) is required".into())
        })?;
        if token.matches(&Digest::of(presented)) {
            Ok(())
        } else {
            Err(AppError::Unauthorized("wrong receiver token".into()))
        }
    }
}

/// A JSON error in the shape of [`AppError`]'s, for statuses it has no variant for.
fn error(status: StatusCode, message: String) -> Response {
    let body = json!({ "error": { "status": status.as_u16(), "message": message } });
    (status, Json(body)).into_response()
}

/// `POST /api/webhooks/alertmanager` and `POST /api/alerts`.
pub async fn receive(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let count = |outcome: &str| {
        s.metrics
            .webhook_requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    };
    if let Err(e) = s.receiver.check(&headers) {
        count("unauthorized");
        return e.into_response();
    }
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            count("too_large");
            return AppError::TooLarge(e.body_text()).into_response();
        }
        Err(e) => {
            count("bad_request");
            return AppError::BadRequest(e.body_text()).into_response();
        }
    };
    let notification = match parse(&body) {
        Ok(n) => n,
        Err(message) => {
            count("bad_request");
            return AppError::BadRequest(message).into_response();
        }
    };
    match s.ingest.submit(notification).await {
        Ok(answer) => {
            count("accepted");
            (StatusCode::OK, Json(answer)).into_response()
        }
        Err(message) => {
            count("unavailable");
            tracing::warn!(error = %message, "Alert notification not recorded; answering 503.");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store unavailable, nothing was recorded; send it again: {message}"),
            )
        }
    }
}

/// The body as a notification, or a message naming the field at fault.
pub fn parse(body: &[u8]) -> Result<Notification, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let n: Notification = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!("webhook body: {}", e.inner())
        } else {
            format!("webhook body at `{path}`: {}", e.inner())
        }
    })?;
    if n.version != "4" {
        return Err(format!(
            "webhook body at `version`: unsupported version `{}` (this receiver takes Alertmanager's version 4)",
            n.version
        ));
    }
    Ok(n)
}

/// One alert, prepared: its key, the playbooks it matched, and its template value.
struct Prepared<'a> {
    alert: &'a Alert,
    fingerprint: String,
    starts_at: String,
    ends_at: Option<String>,
    matched: Vec<&'a Playbook>,
    value: Value,
}

fn prepare<'a>(n: &'a Notification, catalog: &'a crate::playbook::Catalog) -> Vec<Prepared<'a>> {
    n.alerts
        .iter()
        .map(|a| {
            let fingerprint = if a.fingerprint.is_empty() {
                fingerprint(&a.labels)
            } else {
                a.fingerprint.clone()
            };
            let ends_at = a.ends_at.filter(|t| t.timestamp() > 0).map(rfc3339);
            let value = json!({
                "labels": a.labels, "annotations": a.annotations, "status": a.status,
                "startsAt": rfc3339(a.starts_at),
                "endsAt": a.ends_at.map(rfc3339).unwrap_or_default(),
                "fingerprint": fingerprint, "generatorURL": a.generator_url,
                "externalURL": n.external_url,
            });
            Prepared {
                alert: a,
                starts_at: rfc3339(a.starts_at),
                ends_at,
                matched: catalog.matching(&a.labels).collect(),
                fingerprint,
                value,
            }
        })
        .collect()
}

/// Notifications a batch takes at most.
const MAX_BATCH: usize = 64;

/// The process's one writer of notifications. Requests queue here and are recorded in batches,
/// each batch in one transaction (under the guard locks of every playbook its alerts match), so a
/// burst costs one commit per batch instead of one per notification, and the requests waiting
/// hold no store connection. A quiet receiver records each notification on its own.
pub struct Ingest {
    jobs: mpsc::Sender<Job>,
}

struct Job {
    notification: Notification,
    reply: oneshot::Sender<Result<Value, String>>,
}

/// What the writer uses.
struct Writer {
    engine: Arc<Engine>,
    services: Arc<Services>,
    metrics: Arc<Metrics>,
}

impl Ingest {
    /// Starts the writer task; it ends when the last [`Ingest`] handle is dropped.
    pub fn start(engine: Arc<Engine>, services: Arc<Services>, metrics: Arc<Metrics>) -> Ingest {
        let (jobs, rx) = mpsc::channel(4096);
        let writer = Writer {
            engine,
            services,
            metrics,
        };
        tokio::spawn(writer.run(rx));
        Ingest { jobs }
    }

    /// Records a notification: its answer once committed, or why it was not recorded.
    async fn submit(&self, notification: Notification) -> Result<Value, String> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            notification,
            reply,
        };
        let gone = || "the receiver's writer has stopped".to_owned();
        self.jobs.send(job).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let notifications: Vec<&Notification> = batch.iter().map(|j| &j.notification).collect();
            match self.record(&notifications).await {
                Ok(answers) => {
                    for (job, answer) in batch.into_iter().zip(answers) {
                        let _ = job.reply.send(Ok(answer));
                    }
                }
                Err(e) => {
                    let message = self.services.masker.mask_str(&crate::text::error_chain(&e));
                    for job in batch {
                        let _ = job.reply.send(Err(message.clone()));
                    }
                }
            }
        }
    }

    /// Records a batch of notifications and starts their runs in one transaction; the answers.
    /// The store sees a fixed number of statements per batch, whatever its size (see
    /// [`runs::admit_all_in`]): a burst costs a few round trips and one commit per batch.
    async fn record(&self, batch: &[&Notification]) -> Result<Vec<Value>, DbError> {
        let catalog = self.engine.catalog();
        let prepared: Vec<Vec<Prepared>> = batch.iter().map(|n| prepare(n, &catalog)).collect();
        let mut names: Vec<&str> = prepared
            .iter()
            .flatten()
            .flat_map(|p| p.matched.iter().map(|pb| pb.name.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        // Each run is pinned to the version of its playbook served now, stored with it.
        let versions: Vec<&versions::Version> = names
            .iter()
            .filter_map(|n| catalog.versions.get(*n))
            .collect();
        let now = Utc::now();
        let mut tx = guards::begin(&self.services.store, &names).await?;
        versions::save_all_in(&mut tx, &versions).await?;
        alerts::upsert_all_in(&mut tx, &self.alert_rows(&prepared), now).await?;

        // Every (notification, alert, playbook) that is a trigger, admitted as one batch.
        let groups: Vec<Vec<Value>> = prepared
            .iter()
            .map(|p| p.iter().map(|a| a.value.clone()).collect())
            .collect();
        let mut plans = Vec::new();
        for (k, (n, alerts)) in batch.iter().zip(&prepared).enumerate() {
            for p in alerts {
                for pb in &p.matched {
                    if p.alert.status == AlertStatus::Resolved
                        && pb.triggers.resolved == ResolvedPolicy::Skip
                    {
                        continue;
                    }
                    let version = catalog.versions.get(&pb.name).map(|v| v.hash.clone());
                    plans.push((p, *pb, request(n, p, pb, &groups[k], version)));
                }
            }
        }
        let admits: Vec<Admit> = plans
            .iter()
            .map(|(p, _, req)| Admit {
                req,
                priority: priority_for(p.alert.labels.get("severity").map(String::as_str)),
                alert: Some(AlertKey {
                    fingerprint: &p.fingerprint,
                    starts_at: &p.starts_at,
                    kind: p.alert.status.as_str(),
                }),
                queue: true,
                forced_by: None,
                now,
            })
            .collect();
        let pairs: Vec<(&Playbook, &Admit)> =
            plans.iter().map(|(_, pb, _)| *pb).zip(&admits).collect();
        let mut decided = runs::admit_all_in(&mut tx, &self.services, &pairs)
            .await?
            .into_iter();

        // The answers, in the order the triggers were planned.
        let mut answers = Vec::new();
        let mut records = Vec::new();
        let mut noted = Vec::new();
        for (n, alerts) in batch.iter().zip(&prepared) {
            let mut outcomes = Vec::new();
            let mut admitted = Vec::new();
            for p in alerts {
                let mut playbooks = Vec::new();
                for pb in &p.matched {
                    if p.alert.status == AlertStatus::Resolved
                        && pb.triggers.resolved == ResolvedPolicy::Skip
                    {
                        playbooks.push(json!({ "playbook": pb.name, "outcome": "resolved_skip",
                            "reason": "the playbook's on.resolved is skip" }));
                        continue;
                    }
                    let admission = decided.next().expect("one admission per trigger");
                    let answer = answer(&pb.name, &admission);
                    if let Ok(a) = admission {
                        admitted.push((pb.name.clone(), a));
                    }
                    playbooks.push(answer);
                }
                outcomes.push(json!({
                    "fingerprint": p.fingerprint, "alertname": p.alert.labels.get("alertname"),
                    "status": p.alert.status, "starts_at": p.starts_at,
                    "outcome": alert_outcome(&playbooks), "playbooks": playbooks,
                }));
            }
            records.push(alerts::NewNotification {
                receiver: &n.receiver,
                status: n.status.as_str(),
                group_key: &n.group_key,
                external_url: &n.external_url,
                alerts: n.alerts.len(),
                truncated_alerts: n.truncated_alerts,
                outcomes: json!(outcomes),
            });
            answers.push(json!({ "status": n.status, "alerts": outcomes }));
            noted.push(admitted);
        }
        let ids = alerts::record_notifications(&mut tx, &records, now).await?;
        tx.commit().await?;
        for (((n, answer), id), admitted) in batch.iter().zip(&mut answers).zip(ids).zip(noted) {
            answer["notification_id"] = json!(id);
            self.publish(n, answer, &admitted);
        }
        Ok(answers)
    }

    /// The batch's alert occurrences, one row each (the repeats of a batch merged as the store
    /// would merge them one after the other), in key order.
    fn alert_rows<'a>(&self, prepared: &'a [Vec<Prepared<'_>>]) -> Vec<alerts::AlertRow<'a>> {
        let mut rows: BTreeMap<(&str, &str), alerts::AlertRow<'a>> = BTreeMap::new();
        for p in prepared.iter().flatten() {
            let new = alert_row(self, p);
            match rows.entry((&p.fingerprint, &p.starts_at)) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(new);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let row = o.get_mut();
                    let (status, ends_at) = if row.status == "resolved" {
                        (row.status, row.ends_at)
                    } else {
                        (new.status, new.ends_at)
                    };
                    *row = alerts::AlertRow {
                        status,
                        ends_at,
                        seen: row.seen + 1,
                        ..new
                    };
                }
            }
        }
        rows.into_values().collect()
    }

    /// After the commit: the metrics and the log line of one notification.
    fn publish(&self, n: &Notification, answer: &Value, noted: &[(String, Admission)]) {
        for (playbook, admission) in noted {
            runs::note(&self.metrics, playbook, admission);
        }
        for o in answer["alerts"].as_array().into_iter().flatten() {
            let outcome = o["outcome"].as_str().unwrap_or("error").to_owned();
            self.metrics
                .alerts_received
                .get_or_create(&OutcomeLabel { outcome })
                .inc();
        }
        tracing::info!(
            notification = answer["notification_id"].as_i64(),
            alerts = n.alerts.len(),
            status = n.status.as_str(),
            "Alert notification recorded."
        );
    }
}

fn alert_row<'a>(s: &Writer, p: &'a Prepared<'_>) -> alerts::AlertRow<'a> {
    alerts::AlertRow {
        fingerprint: &p.fingerprint,
        starts_at: &p.starts_at,
        alertname: p.alert.labels.get("alertname").map_or("", String::as_str),
        labels: s.services.masker.mask_json(&json!(p.alert.labels)),
        annotations: s.services.masker.mask_json(&json!(p.alert.annotations)),
        status: p.alert.status.as_str(),
        ends_at: p.ends_at.as_deref(),
        generator_url: &p.alert.generator_url,
        matched: !p.matched.is_empty(),
        seen: 1,
    }
}

/// The run request of one alert's trigger of one playbook.
fn request(
    n: &Notification,
    p: &Prepared<'_>,
    pb: &Playbook,
    group: &[Value],
    version: Option<String>,
) -> RunRequest {
    RunRequest {
        playbook: pb.name.clone(),
        trigger: json!({
            "kind": "alert", "fingerprint": p.fingerprint, "starts_at": p.starts_at,
            "status": p.alert.status, "alertname": p.alert.labels.get("alertname"),
            "receiver": n.receiver, "group_key": n.group_key,
        }),
        alert: Some(p.value.clone()),
        alerts: group.to_vec(),
        version,
        ..Default::default()
    }
}

/// What one trigger became, as the receiver answers it.
fn answer(playbook: &str, admission: &Result<Admission, ParamProblems>) -> Value {
    match admission {
        Err(e) => json!({ "playbook": playbook, "outcome": "error", "reason": e.to_string() }),
        Ok(Admission::Queued { run_id, command_id }) => {
            json!({ "playbook": playbook, "outcome": "started", "run_id": run_id, "command_id": command_id })
        }
        Ok(Admission::Skipped {
            run_id,
            guard,
            reason,
        }) => {
            let outcome = if *guard == "paused" {
                "paused"
            } else {
                "skipped"
            };
            json!({ "playbook": playbook, "outcome": outcome, "run_id": run_id, "guard": guard, "reason": reason })
        }
        Ok(Admission::Duplicate { run_id }) => {
            json!({ "playbook": playbook, "outcome": "duplicate", "run_id": run_id })
        }
    }
}

/// An alert's outcome from its playbooks' (the first that applies): `started`, `duplicate`,
/// `paused`, `skipped`, `resolved_skip`, `error`; `unmatched` when no playbook matched.
fn alert_outcome(playbooks: &[Value]) -> &'static str {
    const ORDER: [&str; 6] = [
        "started",
        "duplicate",
        "paused",
        "skipped",
        "resolved_skip",
        "error",
    ];
    if playbooks.is_empty() {
        return "unmatched";
    }
    ORDER
        .into_iter()
        .find(|o| playbooks.iter().any(|p| p["outcome"] == *o))
        .unwrap_or("error")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    status: Option<String>,
    unmatched: Option<bool>,
    limit: Option<i64>,
}

/// `GET /api/alerts?status=firing|resolved&unmatched=true|false&limit=`: received alerts, newest
/// first, with the runs each started.
pub async fn list(
    State(s): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<AlertsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, AppError> {
    s.tokens.authorize(&headers, Role::Viewer)?;
    let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
    if let Some(st) = q
        .status
        .as_deref()
        .filter(|st| !matches!(*st, "firing" | "resolved"))
    {
        return Err(AppError::BadRequest(format!(
            "status: `{st}` is neither firing nor resolved"
        )));
    }
    let rows = alerts::list(
        &s.services.store,
        q.status.as_deref(),
        q.unmatched,
        q.limit.unwrap_or(100).clamp(1, 1000),
    )
    .await
    .map_err(AppError::internal)?;
    Ok(Json(json!(rows)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_alertmanagers() {
        // Prometheus' model: the empty label set hashes to the FNV offset basis.
        assert_eq!(fingerprint(&BTreeMap::new()), "cbf29ce484222325");
        let labels: BTreeMap<String, String> = [("alertname", "A"), ("severity", "critical")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        let fp = fingerprint(&labels);
        assert_eq!(fp.len(), 16);
        assert_eq!(fp, fingerprint(&labels.clone()));
        let mut other = labels.clone();
        other.insert("severity".into(), "warning".into());
        assert_ne!(fp, fingerprint(&other));
    }

    #[test]
    fn the_receiver_token_matches_only_itself() {
        let auth = ReceiverAuth::Token(Digest::of("secret-token"));
        let call = |token: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                axum::http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
            auth.check(&h).is_ok()
        };
        assert!(call("secret-token"));
        for wrong in ["secret-tokeN", "secret", "secret-token-", "", "x"] {
            assert!(!call(wrong), "`{wrong}` is not the token");
        }
        assert!(auth.check(&HeaderMap::new()).is_err());
    }

    #[test]
    fn a_bad_body_names_the_field() {
        let e = parse(br#"{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{},"startsAt":"yesterday"}]}"#)
            .unwrap_err();
        assert!(
            e.starts_with("webhook body at `alerts[0].startsAt`:"),
            "{e}"
        );
        let e = parse(br#"{"version":"4","status":"burning","alerts":[]}"#).unwrap_err();
        assert!(
            e.starts_with("webhook body at `status`: unknown variant `burning`"),
            "{e}"
        );
        let e = parse(br#"{"version":"3","status":"firing","alerts":[]}"#).unwrap_err();
        assert!(e.contains("unsupported version `3`"), "{e}");
        let e = parse(b"not json").unwrap_err();
        assert!(e.starts_with("webhook body: expected"), "{e}");
        let e = parse(br#"{"version":"4","status":"firing"}"#).unwrap_err();
        assert!(e.contains("missing field `alerts`"), "{e}");
    }

    #[test]
    fn alert_outcomes() {
        assert_eq!(alert_outcome(&[]), "unmatched");
        let p = |o: &str| json!({ "outcome": o });
        assert_eq!(alert_outcome(&[p("skipped"), p("started")]), "started");
        assert_eq!(alert_outcome(&[p("skipped"), p("paused")]), "paused");
        assert_eq!(alert_outcome(&[p("resolved_skip")]), "resolved_skip");
    }
}
