//! Playbook versions (`runbook_playbook_versions`): the text of each playbook version a run was
//! enqueued or started with, by content hash. The only module that reads or writes the table.
//!
//! A run's queue command carries the hash of the version it was enqueued with; whichever replica
//! runs it reads the text here and compiles that, so an edit of `runbooks/` between the enqueue and
//! the run changes nothing for it. Rows are written with `ON CONFLICT DO NOTHING`: a version is
//! written once, however many runs and replicas use it.

use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

use super::{
    batch::{Col, Insert, Writes},
    Db, DbError,
};
use crate::{duration::Dur, template::Dialect};

/// A stored playbook version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub hash: String,
    pub name: String,
    pub text: String,
}

/// The content hash of a playbook's text: SHA-256 of its bytes, as 64 lowercase hex digits.
pub fn hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Stores a version unless it is stored already.
pub async fn save(db: &Db, v: &Version) -> Result<(), DbError> {
    db.sql(
        "INSERT INTO runbook_playbook_versions (hash, name, text) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
        vec![json!(v.hash), json!(v.name), json!(v.text)],
    )
    .await?;
    Ok(())
}

/// Stores the versions not stored yet inside `tx`, in one statement (with `writes`'): the
/// transaction that records the runs pinned to them, so a run never names a version the store
/// lacks.
pub async fn save_all_in(
    tx: &mut super::Tx,
    writes: &mut Writes,
    all: &[&Version],
) -> Result<(), DbError> {
    let rows = all
        .iter()
        .map(|v| vec![json!(v.hash), json!(v.name), json!(v.text)])
        .collect();
    save_new_by_hash(
        tx,
        writes,
        "runbook_playbook_versions (hash, name, text)",
        rows,
    )
    .await
}

/// Stores content-addressed `rows` (each led by its hash) into `table_columns` inside `tx`, one
/// row per hash and none already stored, in one statement (with `writes`'). Shared by the
/// playbook versions and the alert groups.
pub(super) async fn save_new_by_hash(
    tx: &mut super::Tx,
    writes: &mut Writes,
    table_columns: &str,
    mut rows: Vec<Vec<Json>>,
) -> Result<(), DbError> {
    // In hash order, so two writers never wait on each other's rows.
    rows.sort_by(|a, b| a[0].as_str().cmp(&b[0].as_str()));
    rows.dedup_by(|a, b| a[0] == b[0]);
    let width = rows.first().map_or(1, Vec::len);
    let insert = Insert {
        head: format!("INSERT INTO {table_columns} VALUES").into(),
        cols: vec![Col::Plain; width],
        rows,
        tail: "ON CONFLICT DO NOTHING",
    };
    writes.push(tx, insert).await
}

/// The version with content hash `hash`, if it is stored.
pub async fn get(db: &Db, hash: &str) -> Result<Option<Version>, DbError> {
    let rows = db
        .sql(
            "SELECT hash, name, text FROM runbook_playbook_versions WHERE hash = $1",
            vec![json!(hash)],
        )
        .await?
        .rows;
    Ok(rows.into_iter().next().map(|r| Version {
        hash: text(&r["hash"]),
        name: text(&r["name"]),
        text: text(&r["text"]),
    }))
}

fn text(v: &Json) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// The statement that deletes versions first seen longer than `older_than` ago that no recorded
/// run ran and no queued `runbook.run` command is waiting to run (run it after the runs are
/// pruned). A version still in `runbooks/` is stored again by its next run.
pub fn prune_sql(d: Dialect, older_than: Dur) -> (String, Vec<Json>) {
    let (waiting, params) = no_open_run_refers(d, "version", "runbook_playbook_versions.hash");
    let sql = format!(
        "DELETE FROM runbook_playbook_versions WHERE first_seen < {ago} \
         AND NOT EXISTS (SELECT 1 FROM runbook_runs r WHERE r.version = runbook_playbook_versions.hash) \
         AND {waiting}",
        ago = d.ago(older_than),
    );
    (sql, params)
}

/// The condition that no queued or running `runbook.run` command's payload has `field` equal to
/// `value` (an SQL expression), with its parameters (`$1` to `$3`): what a run reads by hash
/// when it starts is kept while it waits.
pub(super) fn no_open_run_refers(d: Dialect, field: &str, value: &str) -> (String, Vec<Json>) {
    let referred = match d {
        Dialect::Postgres => format!("c.payload->>'{field}'"),
        Dialect::Sqlite => format!("json_extract(c.payload, '$.{field}')"),
    };
    let sql = format!(
        "NOT EXISTS (SELECT 1 FROM command_queue c WHERE c.command_type = $1 \
         AND c.status IN ($2, $3) AND {referred} = {value})"
    );
    let params = vec![
        json!(RUN_COMMAND),
        json!(crate::status::CommandStatus::Pending),
        json!(crate::status::CommandStatus::Processing),
    ];
    (sql, params)
}

/// The command type of a queued playbook run (`process::runs::RUN_COMMAND`, which sits above).
const RUN_COMMAND: &str = "runbook.run";

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("runbook.db").display());
        let db = Db::connect(&url, false, 2).await.unwrap();
        db.migrate().await.unwrap();
        (dir, db)
    }

    #[test]
    fn the_hash_is_sha256_of_the_text_in_hex() {
        assert_eq!(
            hash(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_ne!(hash("name: a\n"), hash("name: a\n\n"));
    }

    #[tokio::test]
    async fn a_version_is_stored_once_and_read_back_by_hash() {
        let (_dir, db) = fresh().await;
        let v = Version {
            hash: hash("name: p\n"),
            name: "p".into(),
            text: "name: p\n".into(),
        };
        save(&db, &v).await.unwrap();
        save(&db, &v).await.unwrap();
        assert_eq!(get(&db, &v.hash).await.unwrap(), Some(v.clone()));
        assert_eq!(get(&db, &hash("other")).await.unwrap(), None);
        let n = db
            .sql(
                "SELECT COUNT(*) AS n FROM runbook_playbook_versions",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(n.rows[0]["n"], 1);
    }
}
