//! Prometheus metrics with the seed's names (`core_stream_*`) and the engine's own (`runbook_*`).
//!
//! Counters and the latency histogram are updated where things happen; the gauges that describe
//! the shared queue (depth, unsent outbox, DLQ size) are read from the store at scrape time, so
//! every replica reports the same truth.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
};

use serde_json::Value as Json;

use crate::status::{CommandStatus, ErrorType, RunStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EntityLabel {
    pub entity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub entity: String,
    pub error_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriorityLabel {
    pub priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorTypeLabel {
    pub error_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub playbook: String,
    /// What started the run: one of [`RUN_TRIGGERS`], or `other`.
    pub trigger: String,
    pub status: String,
}

/// The values of `runbook_runs_total{trigger}`: a run request's `trigger.kind`.
pub const RUN_TRIGGERS: &[&str] = &["cli", "api", "alert", "schedule", "playbook", "command"];

/// The `trigger` label of a run from its request's `trigger` (`{"kind": ...}`): its kind when it
/// is one of [`RUN_TRIGGERS`], else `other`, so the label's values stay few.
pub fn run_trigger(trigger: &Json) -> &'static str {
    let kind = trigger["kind"].as_str().unwrap_or_default();
    RUN_TRIGGERS
        .iter()
        .find(|t| **t == kind)
        .copied()
        .unwrap_or("other")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub playbook: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

// Triggers: the Alertmanager receiver and the guards.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardLabels {
    pub playbook: String,
    pub guard: String,
}

/// The priorities the depth gauge always reports: the queue's default (0) and the priorities of
/// playbook runs by alert severity (1 info, 3 none, 5 warning, 7 error, 10 critical).
pub const DEFAULT_PRIORITIES: &[i64] = &[0, 1, 3, 5, 7, 10];

/// The label values the queue gauges have reported, so an emptied queue reports 0.
#[derive(Debug)]
struct Seen {
    priorities: BTreeSet<i64>,
    error_types: BTreeSet<String>,
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            priorities: DEFAULT_PRIORITIES.iter().copied().collect(),
            error_types: ErrorType::NAMED
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect(),
        }
    }
}

/// Pending commands per priority from `queue_stats`, with 0 for every priority in `seen`; the
/// priorities found are added to `seen`.
fn depth_by_priority(stats: &Json, seen: &mut BTreeSet<i64>) -> BTreeMap<i64, i64> {
    let mut depth: BTreeMap<i64, i64> = BTreeMap::new();
    for row in stats["depth"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["status"] == CommandStatus::Pending.as_str())
    {
        let Some(priority) = row["priority"].as_i64() else {
            continue;
        };
        *depth.entry(priority).or_default() += row["count"].as_i64().unwrap_or(0);
    }
    seen.extend(depth.keys().copied());
    seen.iter()
        .map(|p| (*p, depth.get(p).copied().unwrap_or(0)))
        .collect()
}

/// DLQ commands per error type from `queue_stats`, with 0 for every error type in `seen`; the
/// error types found are added to `seen`.
fn dlq_by_error_type(stats: &Json, seen: &mut BTreeSet<String>) -> BTreeMap<String, i64> {
    let mut size: BTreeMap<String, i64> = BTreeMap::new();
    for row in stats["dlq"]["by_error_type"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let error_type = row["error_type"].as_str().unwrap_or("Unknown").to_owned();
        *size.entry(error_type).or_default() += row["count"].as_i64().unwrap_or(0);
    }
    seen.extend(size.keys().cloned());
    seen.iter()
        .map(|t| (t.clone(), size.get(t).copied().unwrap_or(0)))
        .collect()
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    ])
}

fn step_histogram() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0])
}

/// Every metric the process exports.
pub struct Metrics {
    registry: Registry,
    pub queue_depth: Family<PriorityLabel, Gauge>,
    pub worker_success: Family<EntityLabel, Counter>,
    pub worker_error: Family<ErrorLabels, Counter>,
    pub outbox_unsent: Gauge,
    pub outbox_sent: Counter,
    /// Outbox events parked after `streaming.outbox_max_attempts` refusals (read from the store).
    pub outbox_parked: Gauge,
    pub dlq_size: Family<ErrorTypeLabel, Gauge>,
    pub latency: Family<EntityLabel, Histogram, fn() -> Histogram>,
    pub lock_expiries: Counter,
    pub runs: Family<RunLabels, Counter>,
    pub step_duration: Family<StepLabels, Histogram, fn() -> Histogram>,
    pub webhook_requests: Family<OutcomeLabel, Counter>,
    /// Seconds from a schedule tick's time to this process firing it (catch-ups included).
    pub scheduler_lag: Histogram,
    /// Alerts received by the receiver, by outcome (`started`, `duplicate`, `skipped`,
    /// `paused`, `unmatched`, `resolved_skip`, `error`).
    pub alerts_received: Family<OutcomeLabel, Counter>,
    /// Triggers a guard (or the pause) recorded as `skipped`, by playbook and guard.
    pub guard_refusals: Family<GuardLabels, Counter>,
    seen: Mutex<Seen>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            queue_depth: Family::default(),
            worker_success: Family::default(),
            worker_error: Family::default(),
            outbox_unsent: Gauge::default(),
            outbox_sent: Counter::default(),
            outbox_parked: Gauge::default(),
            dlq_size: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            lock_expiries: Counter::default(),
            runs: Family::default(),
            step_duration: Family::new_with_constructor(step_histogram as fn() -> Histogram),
            webhook_requests: Family::default(),
            scheduler_lag: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 300.0]),
            alerts_received: Family::default(),
            guard_refusals: Family::default(),
            registry: Registry::default(),
            seen: Mutex::default(),
        };
        registry.register(
            "core_stream_cmd_queue_depth",
            "Pending commands per priority",
            m.queue_depth.clone(),
        );
        registry.register(
            "core_stream_worker_success",
            "Commands completed, by entity",
            m.worker_success.clone(),
        );
        registry.register(
            "core_stream_worker_error",
            "Command failures, by entity and error type",
            m.worker_error.clone(),
        );
        registry.register(
            "core_stream_outbox_unsent",
            "Outbox events not yet acknowledged by the broker",
            m.outbox_unsent.clone(),
        );
        registry.register(
            "core_stream_outbox_sent",
            "Outbox events delivered by this process",
            m.outbox_sent.clone(),
        );
        registry.register(
            "core_stream_outbox_parked",
            "Outbox events parked after the broker refused them outbox_max_attempts times",
            m.outbox_parked.clone(),
        );
        registry.register(
            "core_stream_dlq_size",
            "Commands in the dead-letter queue, by error type",
            m.dlq_size.clone(),
        );
        registry.register(
            "core_stream_cmd_latency_seconds",
            "Enqueue-to-completion latency",
            m.latency.clone(),
        );
        registry.register(
            "core_stream_lock_expiries",
            "Expired work-state locks taken over",
            m.lock_expiries.clone(),
        );
        registry.register(
            "runbook_runs",
            "Playbook runs by playbook, trigger and final status",
            m.runs.clone(),
        );
        registry.register(
            "runbook_step_duration_seconds",
            "Step durations by playbook and kind",
            m.step_duration.clone(),
        );
        registry.register(
            "runbook_webhook_requests",
            "Alertmanager webhook requests by outcome",
            m.webhook_requests.clone(),
        );
        registry.register(
            "runbook_scheduler_lag_seconds",
            "Time from a schedule tick's time to this process firing it",
            m.scheduler_lag.clone(),
        );
        m.register_triggers(&mut registry);
        Metrics { registry, ..m }
    }

    /// The receiver's and the guards' metrics, with the outcomes a dashboard expects at zero.
    fn register_triggers(&self, registry: &mut Registry) {
        registry.register(
            "runbook_alerts_received",
            "Alerts received from Alertmanager, by outcome (unmatched: no playbook matched)",
            self.alerts_received.clone(),
        );
        registry.register(
            "runbook_guard_refusals",
            "Triggers recorded as skipped by a guard or the pause, by playbook and guard",
            self.guard_refusals.clone(),
        );
        for outcome in [
            "accepted",
            "unauthorized",
            "bad_request",
            "too_large",
            "unavailable",
        ] {
            let _ = self.webhook_requests.get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            });
        }
        for outcome in ["started", "unmatched"] {
            let _ = self.alerts_received.get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            });
        }
    }

    /// Sets the queue gauges from `queue_stats`.
    /// Sets the queue gauges from `queue_stats`. A series once reported stays, at 0 when its
    /// queue is empty, rather than disappearing (a rule then sees the fall to 0, and `increase`
    /// the first rise): the depth reports [`DEFAULT_PRIORITIES`] and every priority seen since
    /// the process started, the DLQ size every named error type and every other one seen.
    pub fn set_queue_gauges(&self, stats: &Json) {
        let mut seen = self.seen.lock().expect("seen lock");
        for (priority, n) in depth_by_priority(stats, &mut seen.priorities) {
            self.queue_depth
                .get_or_create(&PriorityLabel {
                    priority: priority.to_string(),
                })
                .set(n);
        }
        for (error_type, n) in dlq_by_error_type(stats, &mut seen.error_types) {
            self.dlq_size
                .get_or_create(&ErrorTypeLabel { error_type })
                .set(n);
        }
        self.outbox_unsent
            .set(stats["outbox_unsent"].as_i64().unwrap_or(0));
        self.outbox_parked
            .set(stats["outbox_parked"].as_i64().unwrap_or(0));
    }

    /// Starts every playbook's run counters at zero for each trigger a server sees (all but
    /// `cli`, whose runs are counted by the `runbook run` process), so the first failure is an
    /// increase. Idempotent: a reload calls it again for the playbooks it added.
    pub fn init_runs<'a>(&self, playbooks: impl Iterator<Item = &'a str>) {
        for p in playbooks {
            for trigger in RUN_TRIGGERS.iter().filter(|t| **t != "cli") {
                for status in [
                    RunStatus::Succeeded,
                    RunStatus::Failed,
                    RunStatus::TimedOut,
                    RunStatus::Interrupted,
                ] {
                    let _ = self.runs.get_or_create(&RunLabels {
                        playbook: p.to_owned(),
                        trigger: (*trigger).to_owned(),
                        status: status.to_string(),
                    });
                }
            }
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_emptied_priority_reports_zero_and_the_defaults_are_always_there() {
        let mut seen: BTreeSet<i64> = DEFAULT_PRIORITIES.iter().copied().collect();
        let busy = json!({ "depth": [
            { "priority": 42, "status": "pending", "count": 4 },
            { "priority": 42, "status": "processing", "count": 9 },
            { "priority": 3, "status": "pending", "count": 2 },
        ]});
        let depth = depth_by_priority(&busy, &mut seen);
        assert_eq!(
            depth.into_iter().collect::<Vec<_>>(),
            [(0, 0), (1, 0), (3, 2), (5, 0), (7, 0), (10, 0), (42, 4)]
        );
        let depth = depth_by_priority(&json!({ "depth": [] }), &mut seen);
        assert_eq!(depth.get(&42), Some(&0), "a priority seen once stays, at 0");
        assert!(depth.values().all(|n| *n == 0));
    }

    #[test]
    fn the_dlq_size_reports_every_named_error_type_and_the_others_seen() {
        let mut seen = Seen::default().error_types;
        let dlq = json!({ "dlq": { "by_error_type": [
            { "error_type": "DeadlockException", "count": 2 },
            { "error_type": "TimeoutException", "count": 1 },
        ]}});
        let size = dlq_by_error_type(&dlq, &mut seen);
        assert_eq!(size["DeadlockException"], 2);
        assert_eq!(size["TimeoutException"], 1);
        assert_eq!(size["ValidationException"], 0);
        assert_eq!(size.len(), ErrorType::NAMED.len() + 1);
        let size = dlq_by_error_type(&json!({}), &mut seen);
        assert_eq!(size["DeadlockException"], 0);
    }

    #[test]
    fn the_trigger_label_is_one_of_few_values() {
        assert_eq!(run_trigger(&json!({ "kind": "alert", "x": 1 })), "alert");
        assert_eq!(run_trigger(&json!({ "kind": "api" })), "api");
        assert_eq!(run_trigger(&json!({ "kind": "mystery" })), "other");
        assert_eq!(run_trigger(&json!(null)), "other");
    }
}
