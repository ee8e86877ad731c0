//! The runtime's live settings (the seed's metamodel names), stored in `runtime_settings` so every
//! process sees a change; the config gives the starting values.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

use crate::{
    config::StreamingConfig,
    duration::Dur,
    store::{Db, DbError},
};

/// Names and meaning are the seed's: `workerConcurrency`, `workerBatchSize`, `maxRetries`,
/// `maxBackoffMs`, `lockTtl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    pub worker_concurrency: u32,
    pub worker_batch_size: u32,
    pub max_retries: u32,
    pub max_backoff_ms: u64,
    pub lock_ttl: Dur,
}

impl Settings {
    pub fn from_config(c: &StreamingConfig) -> Self {
        Settings {
            worker_concurrency: c.worker_concurrency,
            worker_batch_size: c.worker_batch_size,
            max_retries: c.max_retries,
            max_backoff_ms: c.max_backoff_ms,
            lock_ttl: c.lock_ttl,
        }
    }

    /// The stored values over the config's.
    pub async fn load(db: &Db, base: &StreamingConfig) -> Result<Settings, DbError> {
        let rows = db
            .sql("SELECT key, value FROM runtime_settings", vec![])
            .await?
            .rows;
        let mut merged = match serde_json::to_value(Settings::from_config(base)) {
            Ok(Json::Object(m)) => m,
            _ => Map::new(),
        };
        for row in rows {
            if let (Some(k), Some(v)) = (row["key"].as_str(), row.get("value")) {
                // SQLite keeps JSON as text: numbers come back as strings of digits.
                let v = match v {
                    Json::String(s) => serde_json::from_str(s).unwrap_or_else(|_| v.clone()),
                    other => other.clone(),
                };
                if merged.contains_key(k) {
                    merged.insert(k.to_owned(), v);
                }
            }
        }
        Ok(serde_json::from_value(Json::Object(merged))
            .unwrap_or_else(|_| Settings::from_config(base)))
    }

    pub fn to_json(&self) -> Json {
        json!(self)
    }
}
