//! The streaming runtime the seed runbook operates on: settings and operator actions over
//! `command_queue`, `work_state` and `outbox_final`.

pub mod handlers;
pub mod metrics;
pub mod ops;
pub mod outbox;
pub mod queue;
pub mod runs;
pub mod settings;
pub mod worker;

pub use settings::Settings;
