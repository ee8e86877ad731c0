//! The data layer of the streaming system the seed runbook operates on: command rows and their
//! transitions ([`queue`]: claim with a lease, entity locks, acknowledge with outbox events, defer,
//! heartbeat, rescue), the live worker [`settings`], and the operator actions ([`ops`]: queue stats,
//! DLQ list/retry/cleanup, scaling, lock release, purge, maintenance) that `runtime:` steps, the CLI
//! and the admin API call. Nothing here runs on its own: the processes above drive it.

pub mod dlq;
pub mod ops;
pub mod overrides;
pub mod queue;
pub mod settings;

pub use settings::Settings;
