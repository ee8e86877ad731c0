//! Integration tests: the `runbook` binary run as a user runs it, against real SQLite files, the
//! real PostgreSQL server, and HTTP servers the tests start.

mod alerts;
mod console;
mod coverage;
mod chaos;
mod closed_loop;
mod dlq_retry;
mod docs;
mod edges;
mod engine;
mod findings;
mod http;
mod kafka;
mod layers;
mod lifecycle;
mod locks;
mod maintenance;
mod logs;
mod migrations;
mod plan;
mod playbook_tests;
mod postgres;
mod readme;
mod reload;
mod retention;
mod robustness;
mod runtime;
mod runtime_faults;
mod safety;
mod services;
mod scheduler;
mod server_hardening;
mod sql_hardening;
mod templates_hardening;
mod util;
mod validate;
