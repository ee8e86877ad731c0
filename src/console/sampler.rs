//! The queue sampler of `runbook serve`: every `console.queue_sample_every` it records the
//! pending depth per priority and the oldest pending age, for the queue page's chart. Every
//! replica runs it; the store keeps one sample per interval (the first replica's), so the chart
//! reads the same however many replicas serve.

use std::sync::Arc;

use chrono::Utc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    duration::Dur,
    services::Services,
    status::CommandStatus,
    store::{
        queue_samples::{self, Sample},
        DbError,
    },
    stream::ops,
};

/// Reads the queue now and records it as the sample of the interval `now` falls in; whether
/// this call recorded it (`false`: another replica, or an earlier call, did).
///
/// # Errors
///
/// The store's.
pub async fn sample_once(services: &Services, every: Dur) -> Result<bool, DbError> {
    let now = Utc::now();
    let stats = ops::queue_stats(&services.store, &services.config.streaming).await?;
    let mut depths = std::collections::BTreeMap::new();
    for row in stats["depth"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if row["status"] != CommandStatus::Pending.as_str() {
            continue;
        }
        let priority = match &row["priority"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        *depths.entry(priority).or_insert(0) += row["count"].as_i64().unwrap_or(0);
    }
    let oldest_age_secs = stats["oldest_pending"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| (now - t.with_timezone(&Utc)).num_seconds().max(0));
    let sample = Sample {
        at: queue_samples::interval_start(now.timestamp(), every),
        total: depths.values().sum(),
        depths,
        oldest_age_secs,
    };
    queue_samples::record(&services.store, &sample).await
}

/// Starts the sampler: a sample now, then one at the start of every interval, until `shutdown`.
pub fn spawn(services: Arc<Services>, tasks: &mut JoinSet<()>, shutdown: CancellationToken) {
    let every = services.config.console.queue_sample_every;
    tasks.spawn(async move {
        loop {
            match sample_once(&services, every).await {
                Ok(recorded) => tracing::debug!(recorded, "Queue sampled."),
                Err(e) => tracing::warn!(error = %e, "Queue sample not recorded."),
            }
            let now = Utc::now();
            let next = queue_samples::interval_start(now.timestamp(), every)
                + i64::try_from(every.as_std().as_secs()).unwrap_or(60);
            let wait = (next * 1000 - now.timestamp_millis()).max(1);
            let wait = std::time::Duration::from_millis(u64::try_from(wait).unwrap_or(1000));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
    });
}
