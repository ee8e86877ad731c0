//! `runbook` turns an operations runbook into playbooks that run themselves.
//!
//! # Layers
//!
//! Modules are declared below from the bottom up, and each uses only modules declared before it
//! (`tests/layers.rs` checks every `crate::` path against this order):
//!
//! | layer | modules | what it holds |
//! |---|---|---|
//! | leaf types | [`duration`], [`diagnostics`], [`status`], [`text`], [`window`], [`secrets`], [`template`], [`metrics`], [`config`], [`kafka`] | durations, `path:line:col` problems, run/step/command statuses and error types (one spelling for Rust, SQL and JSON), maintenance windows, masking, minijinja in text/SQL/URL flavours, Prometheus metrics, `runbook.yaml`, Kafka client settings |
//! | store | [`store`] | SQLite or PostgreSQL pools, versioned migrations, rows as JSON, run records, schedule ticks and the audit log |
//! | services | [`services`] | the clients built once per process: store, datasource pools, HTTP client, templates, masker |
//! | streaming data | [`stream`] | `command_queue`, `work_state`, `outbox_final` rows, DLQ and settings operations |
//! | steps | [`steps`] | one file per step kind: its YAML form, compile, render, execute |
//! | playbook | [`playbook`], [`schema`] | the YAML mirror, the pure compile phase, alert matchers, the catalog; the JSON Schema |
//! | engine | [`engine`], [`testing`] | the run loop (open, context, deadline, `on_failure`, record) and the step loop (`when`, `for_each`, `until`, `retry`), events |
//! | processes | [`process`] | workers and command handlers, playbook runs as commands, the cron scheduler, the outbox dispatcher, the app that wires them |
//! | faces | [`server`], [`console`], [`cli`] | the HTTP API (axum), the web console under `/ui` (server-rendered HTML on the same router), and the command line (clap; the only `anyhow`) |
//!
//! # Two data paths
//!
//! An alert label or a `--param` becomes a bound SQL parameter, never SQL text:
//!
//! ```text
//! CLI --param / POST /api/runs ─▶ engine::RunRequest ─▶ playbook params (typed, coerced)
//!   ─▶ template context ─▶ steps::sql renders `{{ expr }}` as $1/?1 + value (template::BoundSql)
//!   ─▶ store::Db::query binds it
//! ```
//!
//! A command goes through the queue and leaves as a Kafka event:
//!
//! ```text
//! stream::queue::enqueue ─▶ command_queue (pending)
//!   ─▶ process::worker claims a batch with a lease and its entities' work_state locks
//!   ─▶ process::handlers runs each (a playbook run is the `runbook.run` handler ─▶ engine)
//!   ─▶ stream::queue::ack: completed + outbox_final rows in one transaction (or retry / DLQ)
//!   ─▶ process::outbox publishes to Kafka (or the log sink) and marks the rows sent
//! ```

// Leaf types: each uses only the ones before it.
pub(crate) mod duration;
pub(crate) mod diagnostics;
pub(crate) mod status;
pub(crate) mod text;
pub(crate) mod window;
pub(crate) mod secrets;
pub(crate) mod template;
pub(crate) mod metrics;
pub mod config;
pub(crate) mod kafka;
// Storage and the clients built once per process.
pub mod store;
pub(crate) mod services;
// The streaming system's data layer.
pub mod stream;
// Playbooks: the step kinds, the playbook that holds them, the engine that runs it.
pub(crate) mod steps;
pub(crate) mod playbook;
pub(crate) mod schema;
pub(crate) mod engine;
// `runbook test`: playbooks run by the engine against a test's mocks.
pub(crate) mod testing;
// Processes: workers, handlers, the scheduler, the outbox dispatcher, the app that wires them.
pub mod process;
// Faces.
pub mod server;
pub mod console;
pub mod cli;
// Properties of the input-facing code, checked over generated inputs.
#[cfg(test)]
mod properties;
