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
    playbook::{Catalog, ParamProblems, Playbook, ResolvedPolicy},
    process::runs::{self, priority_for, Admission, Admit, AlertKey},
    secrets::Masker,
    services::Services,
    store::{alert_groups, alerts, batch::Writes, guards, versions, DbError},
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
    // Held until the answer: what this notification costs while it is parsed, prepared and
    // recorded, out of the receiver's budget.
    let _held = s.ingest.hold(body.len()).await;
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

/// A notification made ready for the writer by the request that brought it: matched against the
/// playbooks served now, its alerts' rows masked, each trigger's run request built. That is most
/// of the work per notification, and the requests do it side by side (on every core) while the
/// one writer records the batch before theirs: the writer keeps only what must be serial, the
/// store's statements and the guards' decisions.
struct Ready {
    n: Notification,
    /// The playbooks it was matched against (a reload meanwhile does not change its runs).
    catalog: Arc<Catalog>,
    alerts: Vec<ReadyAlert>,
    /// Its alerts as the group its runs refer to, when it has more than one.
    group: Option<alert_groups::Group>,
}

/// One alert of a [`Ready`] notification.
struct ReadyAlert {
    fingerprint: String,
    starts_at: String,
    ends_at: Option<String>,
    /// The playbooks it matched, in catalog order, each with the request of the run it
    /// triggers; `None` for a resolve the playbook's `on.resolved: skip` does not run.
    matched: Vec<(String, Option<RunRequest>)>,
    /// Its labels and annotations, masked, as recorded.
    labels: Value,
    annotations: Value,
    priority: i32,
}

impl Ready {
    fn new(n: Notification, catalog: Arc<Catalog>, masker: &Masker) -> Ready {
        let values: Vec<(String, Value)> = n
            .alerts
            .iter()
            .map(|a| {
                let fingerprint = if a.fingerprint.is_empty() {
                    fingerprint(&a.labels)
                } else {
                    a.fingerprint.clone()
                };
                let value = json!({
                    "labels": a.labels, "annotations": a.annotations, "status": a.status,
                    "startsAt": rfc3339(a.starts_at),
                    "endsAt": a.ends_at.map(rfc3339).unwrap_or_default(),
                    "fingerprint": fingerprint, "generatorURL": a.generator_url,
                    "externalURL": n.external_url,
                });
                (fingerprint, value)
            })
            .collect();
        // The group, serialized once and stored once for all the runs it starts: carried by
        // each, a notification of N alerts wrote N squared.
        let group =
            (values.len() > 1).then(|| alert_groups::Group::of(values.iter().map(|(_, v)| v)));
        let alerts = n
            .alerts
            .iter()
            .zip(values)
            .map(|(a, (fingerprint, value))| {
                let starts_at = rfc3339(a.starts_at);
                let matched = catalog
                    .matching(&a.labels)
                    .map(|pb| {
                        let runs = a.status == AlertStatus::Firing
                            || pb.triggers.resolved != ResolvedPolicy::Skip;
                        let req = runs.then(|| {
                            let version = catalog.versions.get(&pb.name).map(|v| v.hash.clone());
                            let group = group.as_ref().map(|g| g.hash.clone());
                            request(&n, a, &fingerprint, &starts_at, &value, pb, group, version)
                        });
                        (pb.name.clone(), req)
                    })
                    .collect();
                ReadyAlert {
                    ends_at: a.ends_at.filter(|t| t.timestamp() > 0).map(rfc3339),
                    matched,
                    labels: masker.mask_json(&json!(a.labels)),
                    annotations: masker.mask_json(&json!(a.annotations)),
                    priority: priority_for(a.labels.get("severity").map(String::as_str)),
                    fingerprint,
                    starts_at,
                }
            })
            .collect();
        Ready {
            n,
            catalog,
            alerts,
            group,
        }
    }
}

/// The body, in kibibytes, that the notifications being parsed, prepared and recorded hold
/// between them at most; the others wait their turn, holding only their body. A notification
/// costs far more memory than its body while it is in hand (its alerts as JSON values, each
/// run's request, the rows written, the answer: about 80 MiB for a body of 1 MiB with 3,000
/// alerts), so without a bound fifteen such notifications at once took the server to 977 MiB.
/// Ordinary notifications (a few kilobytes) never wait: 2 MiB is hundreds of them, more than
/// a batch ([`MAX_BATCH`]).
const BUDGET_KIB: usize = 2048;

/// Notifications a batch takes at most: while the writer records one batch, the notifications
/// arriving wait for the next, so the busier the receiver, the more each commit carries.
const MAX_BATCH: usize = 256;

/// The process's one writer of notifications. Requests queue here and are recorded in batches,
/// each batch in one transaction (under the guard locks of every playbook its alerts match), so a
/// burst costs one commit per batch instead of one per notification, and the requests waiting
/// hold no store connection. A quiet receiver records each notification on its own.
pub struct Ingest {
    jobs: mpsc::Sender<Job>,
    /// The kibibytes of body that the notifications being parsed, prepared and recorded may
    /// hold between them ([`BUDGET_KIB`]).
    budget: tokio::sync::Semaphore,
    engine: Arc<Engine>,
    services: Arc<Services>,
    metrics: Arc<Metrics>,
}

struct Job {
    ready: Ready,
    reply: oneshot::Sender<Reply>,
}

/// The writer's reply to a request: what became of its notification, and the notification
/// itself, handed back so that the request frees it and the writer goes on to the next batch.
struct Reply {
    recorded: Result<Recorded, String>,
    _ready: Ready,
}

/// What the writer answers a recorded notification: the answer, and the admissions the metrics
/// count.
struct Recorded {
    answer: Value,
    admitted: Vec<(String, Admission)>,
}

/// What the writer uses.
struct Writer {
    services: Arc<Services>,
}

impl Ingest {
    /// Starts the writer task; it ends when the last [`Ingest`] handle is dropped.
    pub fn start(engine: Arc<Engine>, services: Arc<Services>, metrics: Arc<Metrics>) -> Ingest {
        let (jobs, rx) = mpsc::channel(4096);
        let writer = Writer {
            services: services.clone(),
        };
        tokio::spawn(writer.run(rx));
        Ingest {
            jobs,
            budget: tokio::sync::Semaphore::new(BUDGET_KIB),
            engine,
            services,
            metrics,
        }
    }

    /// Waits until the notifications in hand hold less than [`BUDGET_KIB`] of body with this one
    /// of `len` bytes (a body larger than the budget waits for all of it), and holds its share
    /// until the permit is dropped.
    async fn hold(&self, len: usize) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let kib = len.div_ceil(1024).clamp(1, BUDGET_KIB);
        // The semaphore is never closed, so the acquire cannot fail.
        self.budget.acquire_many(kib as u32).await.ok()
    }

    /// Records a notification: its answer once committed, or why it was not recorded.
    async fn submit(&self, notification: Notification) -> Result<Value, String> {
        let ready = Ready::new(notification, self.engine.catalog(), &self.services.masker);
        let (reply, answer) = oneshot::channel();
        let gone = || "the receiver's writer has stopped".to_owned();
        self.jobs
            .send(Job { ready, reply })
            .await
            .map_err(|_| gone())?;
        let recorded = answer.await.map_err(|_| gone())?.recorded?;
        self.publish(&recorded);
        Ok(recorded.answer)
    }

    /// After the commit: the metrics and the log line of one notification.
    fn publish(&self, r: &Recorded) {
        for (playbook, admission) in &r.admitted {
            runs::note(&self.metrics, playbook, admission);
        }
        for o in r.answer["alerts"].as_array().into_iter().flatten() {
            let outcome = o["outcome"].as_str().unwrap_or("error").to_owned();
            self.metrics
                .alerts_received
                .get_or_create(&OutcomeLabel { outcome })
                .inc();
        }
        tracing::info!(
            notification = r.answer["notification_id"].as_i64(),
            alerts = r.answer["alerts"].as_array().map_or(0, Vec::len),
            status = r.answer["status"].as_str(),
            "Alert notification recorded."
        );
    }
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        // The size of the batch before, which the next one waits for; forgotten when nothing
        // came for [`BURST_OVER`] after its answers.
        let mut last = 0;
        let mut answered = tokio::time::Instant::now();
        while let Some(first) = rx.recv().await {
            if answered.elapsed() > BURST_OVER {
                last = 0;
            }
            let batch = collect(first, &mut rx, last).await;
            last = batch.len();
            let ready: Vec<&Ready> = batch.iter().map(|j| &j.ready).collect();
            let started = std::time::Instant::now();
            let recorded = self.record(&ready).await;
            tracing::debug!(
                notifications = ready.len(),
                micros = started.elapsed().as_micros() as u64,
                ok = recorded.is_ok(),
                "Notification batch recorded."
            );
            match recorded {
                Ok((recorded, written)) => {
                    for (job, r) in batch.into_iter().zip(recorded) {
                        let _ = job.reply.send(Reply {
                            recorded: Ok(r),
                            _ready: job.ready,
                        });
                    }
                    // Its rows are freed once the batch is answered.
                    drop(written);
                }
                Err(e) => {
                    let message = self.services.masker.mask_str(&crate::text::error_chain(&e));
                    for job in batch {
                        let _ = job.reply.send(Reply {
                            recorded: Err(message.clone()),
                            _ready: job.ready,
                        });
                    }
                }
            }
            answered = tokio::time::Instant::now();
        }
    }

    /// Records a batch of notifications and starts their runs in one transaction; the answers.
    /// The store sees a fixed number of statements per batch, whatever its size (see
    /// [`runs::admit_all_in`]): a burst costs a few round trips and one commit per batch.
    /// The rows written come back with the answers, for the writer to free after answering.
    async fn record(&self, batch: &[&Ready]) -> Result<(Vec<Recorded>, Writes), DbError> {
        let mut names: Vec<&str> = batch
            .iter()
            .flat_map(|r| &r.alerts)
            .flat_map(|a| a.matched.iter().map(|(name, _)| name.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        // Each run is pinned to the version of its playbook it was matched with, stored with it.
        let mut versions: Vec<&versions::Version> = batch
            .iter()
            .flat_map(|r| {
                r.alerts
                    .iter()
                    .flat_map(|a| &a.matched)
                    .filter_map(|(name, _)| r.catalog.versions.get(name))
            })
            .collect();
        versions.sort_unstable_by(|a, b| a.hash.cmp(&b.hash));
        versions.dedup_by(|a, b| a.hash == b.hash);
        let now = Utc::now();
        let mut writes = Writes::default();
        writes.want(alerts::NOTIFICATION_IDS, batch.len());
        let mut tx = guards::begin(&self.services.store, &names).await?;
        versions::save_all_in(&mut tx, &mut writes, &versions).await?;
        alerts::upsert_all_in(&mut tx, &mut writes, &alert_rows(batch), now).await?;

        // Every (notification, alert, playbook) that is a trigger, admitted as one batch.
        let mut pairs: Vec<(&Playbook, Admit)> = Vec::new();
        for r in batch {
            for (a, alert) in r.alerts.iter().zip(&r.n.alerts) {
                for (name, req) in &a.matched {
                    let (Some(req), Some(pb)) = (req, r.catalog.get(name)) else {
                        continue;
                    };
                    let admit = Admit {
                        req,
                        priority: a.priority,
                        alert: Some(AlertKey {
                            fingerprint: &a.fingerprint,
                            starts_at: &a.starts_at,
                            kind: alert.status.as_str(),
                        }),
                        queue: true,
                        forced_by: None,
                        now,
                    };
                    pairs.push((pb, admit));
                }
            }
        }
        let pairs: Vec<(&Playbook, &Admit)> = pairs.iter().map(|(pb, a)| (*pb, a)).collect();
        let mut decided = runs::admit_all_in(&mut tx, &self.services, &pairs, &mut writes)
            .await?
            .into_iter();

        // The answers, in the order the triggers were planned.
        let mut recorded = Vec::with_capacity(batch.len());
        let mut records = Vec::with_capacity(batch.len());
        let mut groups = Vec::new();
        for r in batch {
            let mut outcomes = Vec::with_capacity(r.alerts.len());
            let mut admitted = Vec::new();
            for (a, alert) in r.alerts.iter().zip(&r.n.alerts) {
                let mut playbooks = Vec::with_capacity(a.matched.len());
                for (name, req) in &a.matched {
                    if req.is_none() || r.catalog.get(name).is_none() {
                        playbooks.push(json!({ "playbook": name, "outcome": "resolved_skip",
                            "reason": "the playbook's on.resolved is skip" }));
                        continue;
                    }
                    let admission = decided.next().expect("one admission per trigger");
                    let answer = answer(name, &admission);
                    if let Ok(a) = admission {
                        admitted.push((name.clone(), a));
                    }
                    playbooks.push(answer);
                }
                outcomes.push(json!({
                    "fingerprint": a.fingerprint, "alertname": alert.labels.get("alertname"),
                    "status": alert.status, "starts_at": a.starts_at,
                    "outcome": alert_outcome(&playbooks), "playbooks": playbooks,
                }));
            }
            let queued = admitted
                .iter()
                .any(|(_, a)| matches!(a, Admission::Queued { .. }));
            if let (Some(group), true) = (&r.group, queued) {
                groups.push(group);
            }
            let outcomes = Value::Array(outcomes);
            records.push(alerts::NewNotification {
                receiver: &r.n.receiver,
                status: r.n.status.as_str(),
                group_key: &r.n.group_key,
                external_url: &r.n.external_url,
                alerts: r.n.alerts.len(),
                truncated_alerts: r.n.truncated_alerts,
                outcomes: outcomes.clone(),
            });
            recorded.push(Recorded {
                answer: json!({ "status": r.n.status, "alerts": outcomes }),
                admitted,
            });
        }
        alert_groups::save_all_in(&mut tx, &mut writes, &groups).await?;
        let ids = alerts::record_notifications(&mut tx, &mut writes, &records, now).await?;
        writes.flush(&mut tx).await?;
        tx.commit().await?;
        for (r, id) in recorded.iter_mut().zip(ids) {
            r.answer["notification_id"] = json!(id);
        }
        Ok((recorded, writes))
    }
}

/// Rounds the writer lets the requests run while notifications are still arriving.
const MAX_ROUNDS: usize = 64;

/// How long a batch waits at most for the clients of the batch before it to send again (tokio's
/// timer ticks each millisecond, so 2 to 3 ms).
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// How long the receiver goes without a notification before the next batch waits for nobody:
/// the burst the batch before came from is over. Longer than a slow machine's turnaround (from
/// a batch's answers to its clients' next notifications, up to 4 ms seen).
const BURST_OVER: std::time::Duration = std::time::Duration::from_millis(10);

/// The smallest batch whose clients the next batch waits for.
const LINGER_AFTER: usize = 8;

/// The batch that starts with `first`: every notification waiting, and those still arriving.
///
/// When a batch is answered, its clients send their next notifications together, and the
/// requests take a while to parse theirs: a writer that took only what was waiting started the
/// next batch with the first few, and paid a commit and the batch's round trips for fewer
/// notifications. So the writer yields to the requests, round after round, for as long as each
/// round brings more (up to [`MAX_ROUNDS`] rounds and [`MAX_BATCH`] notifications). A quiet
/// receiver's notification finds nothing arriving after it and goes at once.
///
/// Yielding is not enough when the clients are on the other side of a network, or on a core
/// busy with the database: the writer found the few notifications that had come while it wrote
/// (with 64 clients sending, the 8 whose clients were not in the batch before), recorded them
/// as a batch of their own, and the 56 coming back waited behind it. Batches so went big, small,
/// big, and the small one cost the fixed part of a batch (its round trips and its commit, about
/// 2 ms) for a few notifications. So a batch also waits, up to [`LINGER`], until it holds as
/// many as the batch before it (`last`): the clients that batch answered are those sending
/// now, and fewer than half of them are waiting when the batch starts. A steady stream (4,000 a
/// second fills batches of 8) has had the batch's time to arrive, about as many as before are
/// waiting, and it goes at once: waiting for it too cost 1 to 3 ms of p50 at 4,000 a second. A
/// receiver that was idle for [`BURST_OVER`] has no batch before, so the first notification
/// after a burst goes at once. After a batch of fewer than [`LINGER_AFTER`] nothing waits: a
/// receiver at ease answers each notification at once. At 1,000 notifications a second a batch
/// holds one to five (on SQLite, whose commits wait for the disk, often four or five); waiting
/// after those kept the receiver in batches of four or five, each held up to 2 ms, and doubled
/// its latency there.
async fn collect(first: Job, rx: &mut mpsc::Receiver<Job>, last: usize) -> Vec<Job> {
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut batch = vec![first];
    let mut rounds = 0;
    // How many to wait for, decided on what was waiting already: fewer than half the batch
    // before means its clients are still to send. A steady stream has had the batch's time to
    // arrive, and about as many wait as the batch before held.
    let target = if last >= LINGER_AFTER && (1 + rx.len()) * 2 < last {
        last
    } else {
        0
    };
    loop {
        let before = batch.len();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if batch.len() >= MAX_BATCH {
            break;
        }
        if batch.len() < target {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(job)) => {
                    batch.push(job);
                    continue;
                }
                Ok(None) | Err(_) => break,
            }
        }
        rounds += 1;
        if rounds > MAX_ROUNDS {
            break;
        }
        tokio::task::yield_now().await;
        if batch.len() == before && rx.is_empty() {
            break;
        }
    }
    batch
}

/// The batch's alert occurrences, one row each (the repeats of a batch merged as the store would
/// merge them one after the other), in key order.
fn alert_rows<'a>(batch: &[&'a Ready]) -> Vec<alerts::AlertRow<'a>> {
    let mut rows: BTreeMap<(&str, &str), alerts::AlertRow<'a>> = BTreeMap::new();
    for r in batch {
        for (p, alert) in r.alerts.iter().zip(&r.n.alerts) {
            let new = alerts::AlertRow {
                fingerprint: &p.fingerprint,
                starts_at: &p.starts_at,
                alertname: alert.labels.get("alertname").map_or("", String::as_str),
                labels: p.labels.clone(),
                annotations: p.annotations.clone(),
                status: alert.status.as_str(),
                ends_at: p.ends_at.as_deref(),
                generator_url: &alert.generator_url,
                matched: !p.matched.is_empty(),
                seen: 1,
            };
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
    }
    rows.into_values().collect()
}

/// The run request of one alert's trigger of one playbook.
#[allow(clippy::too_many_arguments)]
fn request(
    n: &Notification,
    a: &Alert,
    fingerprint: &str,
    starts_at: &str,
    value: &Value,
    pb: &Playbook,
    group: Option<String>,
    version: Option<String>,
) -> RunRequest {
    RunRequest {
        playbook: pb.name.clone(),
        trigger: json!({
            "kind": "alert", "fingerprint": fingerprint, "starts_at": starts_at,
            "status": a.status, "alertname": a.labels.get("alertname"),
            "receiver": n.receiver, "group_key": n.group_key,
        }),
        alert: Some(value.clone()),
        alerts_ref: group,
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
