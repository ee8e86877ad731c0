//! Alert groups (`runbook_alert_groups`): the alerts of a notification that carried more than
//! one, by content hash, stored once for every run the notification started. The only module
//! that reads or writes the table.
//!
//! A run sees its notification's alerts as `alerts`. Carried in each run's queue command, a
//! notification of N alerts that all start runs wrote N commands of N alerts each: a 1 MiB
//! notification of 3,000 alerts made the receiver build and write some 3 GB. The commands now
//! carry the group's hash (`alerts_ref`) and the worker that runs one reads the group here.
//! Rows are written with `ON CONFLICT DO NOTHING`, in the transaction that queues the runs.

use serde_json::{json, Value as Json};

use super::{batch::Writes, Db, DbError};
use crate::{duration::Dur, template::Dialect};

/// A group as stored: its JSON text (an array of alerts) and that text's hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub hash: String,
    pub text: String,
}

impl Group {
    /// The group of `alerts`, serialized once (as a JSON array, without copying them).
    pub fn of<'a>(alerts: impl IntoIterator<Item = &'a Json>) -> Group {
        let alerts: Vec<&Json> = alerts.into_iter().collect();
        let text = serde_json::to_string(&alerts).expect("JSON values always serialize");
        Group {
            hash: super::versions::hash(&text),
            text,
        }
    }
}

/// Stores the groups not stored yet inside `tx`, in one statement (with `writes`'): the
/// transaction that queues the runs that read them.
pub async fn save_all_in(
    tx: &mut super::Tx,
    writes: &mut Writes,
    groups: &[&Group],
) -> Result<(), DbError> {
    let rows = groups
        .iter()
        .map(|g| vec![json!(g.hash), json!(g.text)])
        .collect();
    super::versions::save_new_by_hash(tx, writes, "runbook_alert_groups (hash, alerts)", rows).await
}

/// The alerts of the group with hash `hash`, if it is stored.
pub async fn get(db: &Db, hash: &str) -> Result<Option<Vec<Json>>, DbError> {
    let rows = db
        .sql(
            "SELECT alerts FROM runbook_alert_groups WHERE hash = $1",
            vec![json!(hash)],
        )
        .await?
        .rows;
    // Text on PostgreSQL; SQLite's rows come with JSON text already parsed.
    match rows.into_iter().next().map(|mut r| r["alerts"].take()) {
        None => Ok(None),
        Some(Json::Array(alerts)) => Ok(Some(alerts)),
        Some(other) => serde_json::from_str(other.as_str().unwrap_or_default())
            .map(Some)
            .map_err(|e| DbError::from(sqlx::Error::Decode(Box::new(e)))),
    }
}

/// The statement that deletes groups first seen longer than `older_than` ago that no queued or
/// running `runbook.run` command refers to (a run that started has its group in memory; one
/// resumed after a crash is still its command's, which is still `processing`).
pub fn prune_sql(d: Dialect, older_than: Dur) -> (String, Vec<Json>) {
    let (waiting, params) =
        super::versions::no_open_run_refers(d, "alerts_ref", "runbook_alert_groups.hash");
    let sql = format!(
        "DELETE FROM runbook_alert_groups WHERE first_seen < {ago} AND {waiting}",
        ago = d.ago(older_than),
    );
    (sql, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_group_is_stored_once_and_read_back_by_hash() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("runbook.db").display());
        let db = Db::connect(&url, false, 2).await.unwrap();
        db.migrate().await.unwrap();
        let alerts = vec![
            json!({ "labels": { "n": "1" } }),
            json!({ "labels": { "n": "2" } }),
        ];
        let g = Group::of(&alerts);
        assert_eq!(g, Group::of(&alerts), "the same alerts, the same hash");
        assert_ne!(g.hash, Group::of(&alerts[..1]).hash);
        for _ in 0..2 {
            let mut tx = db.begin().await.unwrap();
            let mut writes = Writes::default();
            save_all_in(&mut tx, &mut writes, &[&g, &g]).await.unwrap();
            writes.flush(&mut tx).await.unwrap();
            tx.commit().await.unwrap();
        }
        assert_eq!(get(&db, &g.hash).await.unwrap(), Some(alerts));
        assert_eq!(get(&db, "other").await.unwrap(), None);
        let n = db
            .sql("SELECT COUNT(*) AS n FROM runbook_alert_groups", vec![])
            .await
            .unwrap();
        assert_eq!(n.rows[0]["n"], 1);
    }
}
