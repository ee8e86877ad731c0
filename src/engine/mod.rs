//! The engine: shared state (store, templates, HTTP client, datasource pools, playbooks) and the
//! run loop in [`run`].

mod run;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use serde_json::Value as Json;

pub use run::{NullObserver, Observer, RunMeta, RunOutcome, RunRequest, StepEvent};

use crate::{
    config::Config,
    playbook::{Catalog, CompileEnv},
    secrets::Masker,
    store::{runs, Db, DbError},
    template::{Dialect, Templates},
};

/// Why a run could not start. (A run that starts and fails is a [`RunOutcome`], not an error.)
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown playbook `{0}` (see `runbook list`)")]
    UnknownPlaybook(String),
    #[error("{}", .0.join("\n"))]
    Params(Vec<String>),
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

pub struct Engine {
    pub templates: Templates,
    pub store: Db,
    pub config: Arc<Config>,
    pub masker: Masker,
    pub http: reqwest::Client,
    pub metrics: Arc<crate::runtime::metrics::Metrics>,
    catalog: RwLock<Arc<Catalog>>,
    datasources: tokio::sync::Mutex<HashMap<String, Db>>,
}

impl Engine {
    pub fn new(store: Db, config: Arc<Config>, masker: Masker, catalog: Catalog) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("runbook/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("static HTTP client settings");
        Engine {
            templates: Templates::new(),
            store,
            config,
            masker,
            http,
            metrics: Arc::new(crate::runtime::metrics::Metrics::new()),
            catalog: RwLock::new(Arc::new(catalog)),
            datasources: tokio::sync::Mutex::new(HashMap::new()),
        }
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

    pub fn has_datasource(&self, name: &str) -> bool {
        self.config.datasources.contains_key(name)
    }

    /// A named datasource's URL (a secret when it comes from the environment) and read-only flag.
    fn datasource_url(&self, name: &str) -> Result<(String, bool), String> {
        let ds = self
            .config
            .datasources
            .get(name)
            .ok_or_else(|| format!("unknown datasource `{name}`"))?;
        let url = ds
            .url_ref()
            .resolve(&self.masker)
            .map_err(|e| format!("datasource `{name}`: {e}"))?;
        Ok((url, ds.read_only))
    }

    /// The dialect of a named datasource, from its URL's scheme, without connecting.
    pub fn datasource_dialect(&self, name: &str) -> Result<Dialect, String> {
        let (url, _) = self.datasource_url(name)?;
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else {
            Ok(Dialect::Postgres)
        }
    }

    /// A pool for a named datasource, connected on first use.
    pub async fn datasource(&self, name: &str) -> Result<Db, String> {
        let mut pools = self.datasources.lock().await;
        if let Some(db) = pools.get(name) {
            return Ok(db.clone());
        }
        let (url, read_only) = self.datasource_url(name)?;
        let db = Db::connect(&url, read_only, 4)
            .await
            .map_err(|e| self.masker.mask_str(&format!("datasource `{name}`: {e}")))?;
        pools.insert(name.to_owned(), db.clone());
        Ok(db)
    }

    pub async fn audit(
        &self,
        actor: &str,
        op: &str,
        filter: Json,
        rows: u64,
    ) -> Result<(), DbError> {
        runs::audit(&self.store, actor, op, self.masker.mask_json(&filter), rows).await
    }
}
