//! The queue's depth over time, for the console's chart: one row per sampling interval, taken by
//! whichever `runbook serve` replica gets there first (the interval's start is the key; a second
//! insert for it does nothing), pruned with the schedule ticks' retention. The only module that
//! reads or writes `runbook_queue_samples`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value as Json};

use super::{Db, DbError};
use crate::{duration::Dur, template::Dialect};

/// One sample: when its interval started (Unix seconds), the pending commands per priority,
/// their total, and how old the oldest pending command was (`None`: nothing pending).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub at: i64,
    pub depths: BTreeMap<String, i64>,
    pub total: i64,
    pub oldest_age_secs: Option<i64>,
}

/// The start of the interval of length `every` that `now` (Unix seconds) falls in.
pub fn interval_start(now: i64, every: Dur) -> i64 {
    let every = i64::try_from(every.as_std().as_secs())
        .unwrap_or(i64::MAX)
        .max(1);
    now - now.rem_euclid(every)
}

/// Records `s` unless its interval already has a sample; whether this call recorded it.
///
/// # Errors
///
/// The store's.
pub async fn record(db: &Db, s: &Sample) -> Result<bool, DbError> {
    let depths = serde_json::to_string(&s.depths).unwrap_or_else(|_| "{}".into());
    let out = db
        .sql(
            "INSERT INTO runbook_queue_samples (at, depths, total, oldest_age_secs) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (at) DO NOTHING",
            vec![
                json!(s.at),
                json!(depths),
                json!(s.total),
                json!(s.oldest_age_secs),
            ],
        )
        .await?;
    Ok(out.rows_affected == 1)
}

/// The samples taken at or after `from` (Unix seconds), oldest first.
///
/// # Errors
///
/// The store's.
pub async fn since(db: &Db, from: i64) -> Result<Vec<Sample>, DbError> {
    let rows = db
        .sql(
            "SELECT at, depths, total, oldest_age_secs FROM runbook_queue_samples \
             WHERE at >= $1 ORDER BY at",
            vec![json!(from)],
        )
        .await?
        .rows;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let depths = match &r["depths"] {
                Json::String(text) => serde_json::from_str(text).ok()?,
                other => serde_json::from_value(other.clone()).ok()?,
            };
            Some(Sample {
                at: r["at"].as_i64()?,
                depths,
                total: r["total"].as_i64()?,
                oldest_age_secs: r["oldest_age_secs"].as_i64(),
            })
        })
        .collect())
}

/// The statement that deletes the samples taken longer than `older_than` ago.
pub fn prune_sql(_: Dialect, older_than: Dur) -> (String, Vec<Json>) {
    let older = i64::try_from(older_than.as_std().as_secs()).unwrap_or(i64::MAX / 2);
    let cutoff = chrono::Utc::now().timestamp().saturating_sub(older);
    (
        "DELETE FROM runbook_queue_samples WHERE at < $1".to_owned(),
        vec![json!(cutoff)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_starts_on_a_multiple_of_its_length() {
        let minute = Dur::from_secs(60);
        assert_eq!(interval_start(120, minute), 120);
        assert_eq!(interval_start(179, minute), 120);
        assert_eq!(interval_start(180, minute), 180);
        assert_eq!(
            interval_start(1_000_000_007, Dur::from_secs(300)),
            999_999_900
        );
    }
}
