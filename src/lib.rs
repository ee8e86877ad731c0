//! `runbook` turns an operations runbook into playbooks that run themselves.
//!
//! ```text
//! runbooks/*.yaml ─▶ playbook (raw ▸ compile: pure, every error with file:line:col)
//!                          │
//! cli (run, validate, …) ──┼─▶ engine ─ render (template) ▸ when ▸ execute (steps) ▸ record (store)
//!                          │            │
//!                          │            └─ steps: sql · promql · http · kafka · runtime · shell
//!                          │                      tcp_check · wait · assert · approve · notify · playbook
//!                          ▼
//!                        store (SQLite or PostgreSQL): command_queue, outbox_final, work_state,
//!                        runtime_settings, runbook_runs, runbook_step_attempts, runbook_audit
//! ```
//!
//! Modules:
//! - [`cli`]: clap commands; the only place `anyhow` is used.
//! - [`config`]: `runbook.yaml`, secrets by env or file.
//! - [`playbook`]: the YAML mirror ([`playbook::raw`]), the pure compile phase, alert matchers.
//! - [`template`]: minijinja in text, SQL (bound values) and URL (encoded values) flavours.
//! - [`engine`]: shared state and the run loop (retries, timeouts, `for_each`, `until`, `on_failure`).
//! - [`steps`]: one file per step kind, rendered then executed.
//! - [`runtime`]: the streaming runtime's settings and operator actions.
//! - [`store`]: database pools, migrations, rows as JSON, run records and the audit log.
//! - [`kafka`]: Kafka client configuration.
//! - [`secrets`]: masking of secrets and sensitive fields.
//! - [`schema`]: the JSON Schema of the playbook format.
//! - [`status`]: run, step and command statuses and error types, spelled once for Rust, SQL and JSON.
//! - [`duration`], [`diagnostics`]: small shared types.

// Leaf types: depend on nothing of ours but each other, in this order.
pub mod config;
pub mod diagnostics;
// Statuses of runs, steps and commands, spelled once for Rust, SQL and JSON.
pub mod status;
// The other leaf types.
pub mod duration;
pub mod kafka;
pub mod metrics;
pub mod secrets;
pub mod template;
pub mod text;
// Storage and the clients built once per process.
pub mod services;
pub mod store;
// The streaming system's data layer.
pub mod stream;
// Playbooks: step kinds, then the playbook that holds them, then the engine that runs it.
pub mod engine;
pub mod playbook;
pub mod schema;
pub mod steps;
// Processes: workers, handlers, the outbox dispatcher.
pub mod process;
// Faces.
pub mod cli;
pub mod server;
