//! The engine: shared state (store, templates, HTTP client, datasource pools, playbooks) and the
//! run loop in [`run`].

mod events;
mod run;
mod step;
mod watch;

use std::{
    path::Path,
    sync::{Arc, RwLock},
};

pub use crate::steps::{NullObserver, Observer, StepEvent};
pub use run::{RunOutcome, RunRequest};

use crate::{
    config::Config,
    metrics::Metrics,
    playbook::{Catalog, CompileEnv},
    services::Services,
    store::DbError,
};

/// Why a run could not start. (A run that starts and fails is a [`RunOutcome`], not an error.)
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown playbook `{0}` (see `runbook list`)")]
    UnknownPlaybook(String),
    #[error(transparent)]
    Params(#[from] crate::playbook::ParamProblems),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl EngineError {
    /// Usage errors (exit 2) as opposed to failures of the machinery (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            EngineError::UnknownPlaybook(_) | EngineError::Params(_)
        )
    }
}

/// Runs playbooks: the catalog, the shared services, and the engine's own metrics.
pub struct Engine {
    services: Arc<Services>,
    metrics: Arc<Metrics>,
    catalog: RwLock<Arc<Catalog>>,
    /// The runs going in this process, for a cancel made here.
    live: watch::Live,
}

impl Engine {
    pub fn new(services: Arc<Services>, metrics: Arc<Metrics>, catalog: Catalog) -> Self {
        Engine {
            services,
            metrics,
            catalog: RwLock::new(Arc::new(catalog)),
            live: Default::default(),
        }
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("catalog lock").clone()
    }

    /// Replaces the playbooks (a server keeps the last good set when a reload has errors).
    pub fn set_catalog(&self, catalog: Catalog) {
        *self.catalog.write().expect("catalog lock") = Arc::new(catalog);
    }

    /// The names compile checks against.
    pub fn compile_env(config: &Config) -> CompileEnv {
        CompileEnv {
            datasources: config.datasources.keys().cloned().collect(),
            channels: config.notify.keys().cloned().collect(),
        }
    }

    /// Loads playbooks from `dir` for this config.
    pub fn load_playbooks(
        dir: &Path,
        config: &Config,
    ) -> (Catalog, Vec<crate::diagnostics::Diagnostic>) {
        crate::playbook::load(dir, &Self::compile_env(config))
    }
}

#[cfg(test)]
mod tests;
