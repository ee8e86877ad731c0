//! The composition root of `runbook serve`: builds the services, the engine and the handler
//! registry from a config and a store, and starts the workers, the scheduler, the outbox
//! dispatcher and the playbooks watcher. The CLI and the tests build the same [`App`].

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    handlers::{CommandHandler, HandlerConfigError, Handlers},
    outbox, reload,
    runs::{RunHandler, RUN_COMMAND},
    scheduler::{Scheduler, SystemClock},
    worker::{WorkerCx, Workers},
};
use crate::{
    config::Config, diagnostics::Diagnostic, engine::Engine, metrics::Metrics, playbook::Catalog,
    secrets::Masker, services::Services, store::Db,
};

/// Why the processes cannot be built from this config.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Handlers(#[from] HandlerConfigError),
    #[error("kafka")]
    Kafka(#[from] outbox::SinkError),
}

/// Everything `runbook serve` runs, built once.
pub struct App {
    pub services: Arc<Services>,
    pub metrics: Arc<Metrics>,
    pub engine: Arc<Engine>,
    handlers: Option<Handlers>,
    sink: Option<outbox::Sink>,
    /// The playbooks folder, watched for edits, and what it looked like when it was loaded.
    runbooks: PathBuf,
    seen: reload::Fingerprint,
}

impl App {
    /// Builds the app on a migrated store; returns it with the problems of playbooks that did
    /// not load (they do not stop the others). A file with problems is left out, as a reload
    /// leaves out a new file with problems.
    pub fn build(
        store: Db,
        config: Arc<Config>,
        masker: Masker,
        runbooks: &Path,
    ) -> Result<(App, Vec<Diagnostic>), AppError> {
        let seen = reload::fingerprint(runbooks);
        let (catalog, diags) = Engine::reload_playbooks(runbooks, &config, &Catalog::default());
        let services = Arc::new(Services::new(store, config.clone(), masker));
        let metrics = Arc::new(Metrics::new());
        let engine = Arc::new(Engine::new(services.clone(), metrics.clone(), catalog));
        engine.set_problems(diags.clone());
        let names: Vec<String> = engine.catalog().playbooks.keys().cloned().collect();
        metrics.init_runs(names.iter().map(String::as_str));

        let runs: Arc<dyn CommandHandler> = Arc::new(RunHandler::new(engine.clone()));
        let mut handlers = Handlers::default();
        // Not exclusive: a playbook's guard.concurrency decides at admission how many of its
        // runs go at once (see runs::admit), not one work-state lock per playbook.
        handlers.register(RUN_COMMAND, runs.clone(), false);
        handlers.register_config(&config.streaming.handlers, &services, &runs)?;
        let sink = outbox::Sink::from_config(config.kafka.as_ref(), &services.masker)?;
        Ok((
            App {
                services,
                metrics,
                engine,
                handlers: Some(handlers),
                sink: Some(sink),
                runbooks: runbooks.to_owned(),
                seen,
            },
            diags,
        ))
    }

    /// Starts the workers (unless `workers` is false), the scheduler, the outbox dispatcher and
    /// the playbooks watcher on `tasks`; they stop when `shutdown` is cancelled, after finishing
    /// the work in hand.
    pub fn start(&mut self, workers: bool, tasks: &mut JoinSet<()>, shutdown: &CancellationToken) {
        let config = &self.services.config;
        if let Some(handlers) = self.handlers.take() {
            if workers && config.streaming.workers {
                let cx = WorkerCx {
                    services: self.services.clone(),
                    metrics: self.metrics.clone(),
                };
                tasks.spawn(Workers::new(cx, handlers).run(shutdown.clone()));
                tasks.spawn(super::runs::reap_dead_runs(
                    self.engine.clone(),
                    shutdown.clone(),
                ));
            }
        }
        tasks.spawn(
            Scheduler::new(self.engine.clone(), Arc::new(SystemClock)).run(shutdown.clone()),
        );
        tasks.spawn(reload::run(
            self.engine.clone(),
            self.runbooks.clone(),
            self.seen.take(),
            shutdown.clone(),
        ));
        if let Some(sink) = self.sink.take() {
            tasks.spawn(outbox::run(
                self.services.store.clone(),
                self.metrics.clone(),
                config.streaming.poll_interval.as_std(),
                config.streaming.outbox_max_attempts,
                sink,
                shutdown.clone(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::KafkaConfig, text::error_chain};

    fn sink_error(kafka: &str) -> AppError {
        let k: KafkaConfig = serde_yaml::from_str(kafka).unwrap();
        match outbox::Sink::from_config(Some(&k), &Masker::default()) {
            Ok(_) => panic!("the sink was built from {kafka}"),
            Err(e) => AppError::from(e),
        }
    }

    #[test]
    fn a_kafka_sink_that_cannot_be_built_says_why() {
        let e = sink_error(
            "brokers: kafka:9093\nsecret_properties: { sasl.password: { env: RUNBOOK_TEST_SINK_NEVER_SET } }\n",
        );
        assert_eq!(
            error_chain(&e),
            "kafka: kafka property sasl.password: environment variable RUNBOOK_TEST_SINK_NEVER_SET is not set"
        );
        let e = sink_error("brokers: kafka:9093\nproperties: { no.such.property: x }\n");
        let chain = error_chain(&e);
        assert!(chain.starts_with("kafka: kafka producer: "), "{chain}");
        assert!(chain.contains("no.such.property"), "{chain}");
    }
}
