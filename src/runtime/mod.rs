//! The streaming runtime the seed runbook operates on: settings and operator actions over
//! `command_queue`, `work_state` and `outbox_final`.

pub mod ops;
pub mod settings;

pub use settings::Settings;
