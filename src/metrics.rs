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
use serde_json::Value as Json;

use crate::status::{CommandStatus, RunStatus};

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
    pub dlq_size: Family<ErrorTypeLabel, Gauge>,
    pub latency: Family<EntityLabel, Histogram, fn() -> Histogram>,
    pub lock_expiries: Counter,
    pub runs: Family<RunLabels, Counter>,
    pub step_duration: Family<StepLabels, Histogram, fn() -> Histogram>,
    pub webhook_requests: Family<OutcomeLabel, Counter>,
    /// Seconds from a schedule tick's time to this process firing it (catch-ups included).
    pub scheduler_lag: Histogram,
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
            dlq_size: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            lock_expiries: Counter::default(),
            runs: Family::default(),
            step_duration: Family::new_with_constructor(step_histogram as fn() -> Histogram),
            webhook_requests: Family::default(),
            scheduler_lag: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 300.0]),
            registry: Registry::default(),
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
        Metrics { registry, ..m }
    }

    /// Sets the queue gauges from `queue_stats`.
    pub fn set_queue_gauges(&self, stats: &Json) {
        self.queue_depth.clear();
        for row in stats["depth"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["status"] == CommandStatus::Pending.as_str())
        {
            let priority = row["priority"].to_string();
            self.queue_depth
                .get_or_create(&PriorityLabel { priority })
                .set(row["count"].as_i64().unwrap_or(0));
        }
        self.dlq_size.clear();
        for row in stats["dlq"]["by_error_type"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let error_type = row["error_type"].as_str().unwrap_or("Unknown").to_owned();
            self.dlq_size
                .get_or_create(&ErrorTypeLabel { error_type })
                .set(row["count"].as_i64().unwrap_or(0));
        }
        self.outbox_unsent
            .set(stats["outbox_unsent"].as_i64().unwrap_or(0));
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
