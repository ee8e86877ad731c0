//! The long-running processes of `runbook serve`: the worker pool that claims commands and runs
//! their handlers ([`worker`], [`handlers`]), playbook runs as commands ([`runs`]), the scheduler
//! that enqueues them at their playbooks' `on.schedule` times ([`scheduler`]), and the outbox
//! dispatcher that publishes events to Kafka ([`outbox`]), and the watcher that reloads edited
//! playbooks ([`reload`]). They sit above the engine: a playbook run is one handler among others,
//! registered by whoever builds the process ([`app`]).

pub mod app;
pub mod handlers;
pub mod outbox;
pub mod reload;
pub mod runs;
pub mod scheduler;
pub mod worker;
