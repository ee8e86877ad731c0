//! The clients a run and a worker share, built once per process: the store, the named
//! datasources (connected on first use), the HTTP client, the template environment, the secret
//! masker and the config. Steps and handlers see these and nothing above them.

use std::{collections::HashMap, sync::Arc, time::Duration};

use serde_json::Value as Json;

use crate::{
    config::{Config, SecretError},
    secrets::Masker,
    store::{runs, Db, DbError},
    template::{Dialect, Templates},
    text::error_chain,
};

/// Why a named datasource is not available.
#[derive(Debug, thiserror::Error)]
pub enum DatasourceError {
    #[error("unknown datasource `{0}`")]
    Unknown(String),
    #[error("datasource `{name}`")]
    Url {
        name: String,
        #[source]
        source: SecretError,
    },
    /// The connection error's whole chain, masked: it may echo the URL, which may be a secret.
    #[error("datasource `{name}`: {message}")]
    Connect { name: String, message: String },
}

pub struct Services {
    pub store: Db,
    pub config: Arc<Config>,
    pub masker: Masker,
    pub templates: Templates,
    pub http: reqwest::Client,
    datasources: tokio::sync::Mutex<HashMap<String, Db>>,
}

impl Services {
    pub fn new(store: Db, config: Arc<Config>, masker: Masker) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("runbook/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("static HTTP client settings");
        Services {
            store,
            config,
            masker,
            templates: Templates::new(),
            http,
            datasources: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn has_datasource(&self, name: &str) -> bool {
        self.config.datasources.contains_key(name)
    }

    /// A named datasource's URL (a secret when it comes from the environment) and read-only flag.
    fn datasource_url(&self, name: &str) -> Result<(String, bool), DatasourceError> {
        let ds = self
            .config
            .datasources
            .get(name)
            .ok_or_else(|| DatasourceError::Unknown(name.to_owned()))?;
        let url = ds
            .url_ref()
            .resolve(&self.masker)
            .map_err(|source| DatasourceError::Url {
                name: name.to_owned(),
                source,
            })?;
        Ok((url, ds.read_only))
    }

    /// The dialect of a named datasource, from its URL's scheme, without connecting.
    pub fn datasource_dialect(&self, name: &str) -> Result<Dialect, DatasourceError> {
        let (url, _) = self.datasource_url(name)?;
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else {
            Ok(Dialect::Postgres)
        }
    }

    /// A pool for a named datasource, connected on first use.
    pub async fn datasource(&self, name: &str) -> Result<Db, DatasourceError> {
        let mut pools = self.datasources.lock().await;
        if let Some(db) = pools.get(name) {
            return Ok(db.clone());
        }
        let (url, read_only) = self.datasource_url(name)?;
        let db = Db::connect(&url, read_only, 4)
            .await
            .map_err(|e| DatasourceError::Connect {
                name: name.to_owned(),
                message: self.masker.mask_str(&error_chain(&e)),
            })?;
        pools.insert(name.to_owned(), db.clone());
        Ok(db)
    }

    /// Writes an audit record for a mutation, with secrets in its filter masked.
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
