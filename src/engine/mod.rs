//! The engine: shared state (store, templates, HTTP client, datasource pools, playbooks) and the
//! run loop in [`run`].

mod alert;
mod describe;
mod events;
mod plan;
mod preview;
mod report;
mod run;
mod state;
mod step;
mod unknown;
mod watch;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, RwLock},
};

pub use crate::steps::{NullObserver, Observer, PlanAction, PlanNote, RunMode, StepEvent};
pub use run::{RunOutcome, RunRequest};

use crate::{
    config::Config,
    diagnostics::Diagnostic,
    metrics::Metrics,
    playbook::{Catalog, CompileEnv, Playbook},
    services::Services,
    store::{versions, DbError},
};

/// Why a run could not start. (A run that starts and fails is a [`RunOutcome`], not an error.)
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown playbook `{0}` (see `runbook list`)")]
    UnknownPlaybook(String),
    #[error(transparent)]
    Params(#[from] crate::playbook::ParamProblems),
    #[error("playbook `{playbook}`: version {hash} is not in the store")]
    UnknownVersion { playbook: String, hash: String },
    #[error("playbook `{playbook}`: version {hash} no longer compiles: {problems}")]
    VersionInvalid {
        playbook: String,
        hash: String,
        problems: String,
    },
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
    /// The problems of the last load of the playbooks folder.
    problems: RwLock<Arc<Vec<Diagnostic>>>,
    /// Versions that queued runs are pinned to and the catalog no longer holds, compiled from
    /// the store's text, by content hash.
    pinned: Mutex<HashMap<String, Arc<Playbook>>>,
    /// The runs going in this process, for a cancel made here.
    live: watch::Live,
}

/// The most pinned versions kept compiled; past it the cache starts afresh.
const PINNED_CACHE: usize = 64;

impl Engine {
    pub fn new(services: Arc<Services>, metrics: Arc<Metrics>, catalog: Catalog) -> Self {
        Engine {
            services,
            metrics,
            catalog: RwLock::new(Arc::new(catalog)),
            problems: RwLock::default(),
            pinned: Mutex::default(),
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

    /// Records the problems of the last load of the playbooks folder (shown by the API).
    pub fn set_problems(&self, problems: Vec<Diagnostic>) {
        *self.problems.write().expect("problems lock") = Arc::new(problems);
    }

    /// The problems of the last load of the playbooks folder.
    pub fn problems(&self) -> Arc<Vec<Diagnostic>> {
        self.problems.read().expect("problems lock").clone()
    }

    /// Pins a run about to be enqueued to the catalog's current version of its playbook: stores
    /// the version's text and sets `req.version`, so whichever replica runs it runs this text. A
    /// playbook the catalog does not hold is left unpinned (the run then fails as unknown).
    pub async fn pin(&self, req: &mut RunRequest) -> Result<(), DbError> {
        let catalog = self.catalog();
        if let Some(v) = catalog.versions.get(&req.playbook) {
            versions::save(&self.services.store, v).await?;
            req.version = Some(v.hash.clone());
        }
        Ok(())
    }

    /// Version `hash` of playbook `name`, compiled from the store's text (cached).
    async fn pinned(&self, name: &str, hash: &str) -> Result<Arc<Playbook>, EngineError> {
        if let Some(pb) = self.pinned.lock().expect("pinned lock").get(hash) {
            return Ok(pb.clone());
        }
        let unknown = || EngineError::UnknownVersion {
            playbook: name.to_owned(),
            hash: hash.to_owned(),
        };
        let stored = versions::get(&self.services.store, hash)
            .await?
            .filter(|v| v.name == name)
            .ok_or_else(unknown)?;
        let path = std::path::PathBuf::from(format!("{name}.yaml@{}", &hash[..hash.len().min(12)]));
        let env = Self::compile_env(&self.services.config);
        let pb = match crate::playbook::compile_source(&path, &stored.text, &env) {
            Ok((pb, _)) => Arc::new(pb),
            Err(diags) => {
                let problems: Vec<String> = diags.iter().map(ToString::to_string).collect();
                return Err(EngineError::VersionInvalid {
                    playbook: name.to_owned(),
                    hash: hash.to_owned(),
                    problems: problems.join("; "),
                });
            }
        };
        let mut cache = self.pinned.lock().expect("pinned lock");
        if cache.len() >= PINNED_CACHE {
            cache.clear();
        }
        cache.insert(hash.to_owned(), pb.clone());
        Ok(pb)
    }

    /// The names compile checks against.
    pub fn compile_env(config: &Config) -> CompileEnv {
        CompileEnv {
            datasources: config.datasources.keys().cloned().collect(),
            channels: config.notify.keys().cloned().collect(),
            shell_allow: config.shell.allow.iter().cloned().collect(),
            actions: config.actions.keys().cloned().collect(),
            playbook_params: (config.playbooks.iter())
                .map(|(name, p)| (name.clone(), p.params.clone()))
                .collect(),
        }
    }

    /// Loads playbooks from `dir` for this config.
    pub fn load_playbooks(
        dir: &Path,
        config: &Config,
    ) -> (Catalog, Vec<crate::diagnostics::Diagnostic>) {
        crate::playbook::load(dir, &Self::compile_env(config))
    }

    /// Loads playbooks from `dir` again, keeping the last good version (in `previous`) of every
    /// file that now has problems; see [`crate::playbook::reload`].
    pub fn reload_playbooks(
        dir: &Path,
        config: &Config,
        previous: &Catalog,
    ) -> (Catalog, Vec<Diagnostic>) {
        crate::playbook::reload(dir, previous, &Self::compile_env(config))
    }
}

#[cfg(test)]
mod pinned_tests;
#[cfg(test)]
mod tests;
