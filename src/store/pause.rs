//! The global pause (`runbook_pause`): while its one row exists, new runs that change things are
//! recorded `skipped` instead of starting. Setting and clearing it are audited.

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use super::{
    guards::{tx_sql, Paused},
    runs::timestamp,
    Audit, Db, DbError, Tx,
};

const SELECT: &str = "SELECT reason, paused_by, since FROM runbook_pause WHERE id = 1";

fn paused(rows: Vec<Json>) -> Option<Paused> {
    rows.into_iter()
        .next()
        .map(|r| from_columns(&r["reason"], &r["paused_by"], &r["since"]))
}

/// The pause from its row's columns (`since` as RFC 3339 text from either backend).
pub(super) fn from_columns(reason: &Json, by: &Json, since: &Json) -> Paused {
    Paused {
        reason: reason.as_str().unwrap_or_default().to_owned(),
        by: by.as_str().unwrap_or_default().to_owned(),
        since: normalise(since),
    }
}

/// A stored timestamp (RFC 3339 text from either backend) in the records' format.
fn normalise(v: &Json) -> String {
    let text = v.as_str().unwrap_or_default();
    DateTime::parse_from_rfc3339(text)
        .map(|t| timestamp(t.with_timezone(&Utc)))
        .unwrap_or_else(|_| text.to_owned())
}

/// The pause, if on.
pub async fn get(db: &Db) -> Result<Option<Paused>, DbError> {
    Ok(paused(db.sql(SELECT, vec![]).await?.rows))
}

/// The pause as the deciding transaction sees it.
pub async fn get_in(tx: &mut Tx) -> Result<Option<Paused>, DbError> {
    Ok(paused(tx_sql(tx, SELECT, vec![]).await?))
}

/// Pauses (or updates the reason of a pause already on), with its audit record.
pub async fn pause(db: &Db, reason: &str, by: &str, now: DateTime<Utc>) -> Result<Paused, DbError> {
    let since = match db {
        Db::Postgres(_) => "CAST($3 AS TIMESTAMPTZ)",
        Db::Sqlite(_) => "$3",
    };
    let sql = format!(
        "INSERT INTO runbook_pause (id, reason, paused_by, since) VALUES (1, $1, $2, {since}) \
         ON CONFLICT (id) DO UPDATE SET reason = excluded.reason, paused_by = excluded.paused_by"
    );
    let audit = Audit {
        actor: by,
        op: "pause",
        filter: json!({ "reason": reason }),
    };
    db.mutate_audited(
        &sql,
        vec![json!(reason), json!(by), json!(timestamp(now))],
        audit,
    )
    .await?;
    Ok(get(db).await?.unwrap_or(Paused {
        reason: reason.to_owned(),
        by: by.to_owned(),
        since: timestamp(now),
    }))
}

/// Ends the pause; `false` when there was none.
pub async fn resume(db: &Db, by: &str) -> Result<bool, DbError> {
    let audit = Audit {
        actor: by,
        op: "resume",
        filter: json!({}),
    };
    Ok(db
        .mutate_audited("DELETE FROM runbook_pause WHERE id = 1", vec![], audit)
        .await?
        > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pause_and_resume_are_recorded_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("runbook.db").display());
        let db = Db::connect(&url, false, 2).await.unwrap();
        db.migrate().await.unwrap();
        assert_eq!(get(&db).await.unwrap(), None);
        let now = DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let p = pause(&db, "failover", "cli:ops", now).await.unwrap();
        assert_eq!(p.reason, "failover");
        assert_eq!(p.since, "2026-03-01T10:00:00.000Z");
        // Pausing again keeps the start, takes the new reason.
        let later = now + chrono::Duration::minutes(5);
        let p = pause(&db, "still failing over", "api:oncall", later)
            .await
            .unwrap();
        assert_eq!(
            (p.reason.as_str(), p.by.as_str()),
            ("still failing over", "api:oncall")
        );
        assert_eq!(p.since, "2026-03-01T10:00:00.000Z");
        let mut tx = db.begin().await.unwrap();
        assert!(get_in(&mut tx).await.unwrap().is_some());
        drop(tx);
        assert!(resume(&db, "cli:ops").await.unwrap());
        assert!(!resume(&db, "cli:ops").await.unwrap());
        assert_eq!(get(&db).await.unwrap(), None);
        let ops: Vec<Json> = db
            .sql(
                "SELECT actor, op, rows FROM runbook_audit ORDER BY id",
                vec![],
            )
            .await
            .unwrap()
            .rows;
        assert_eq!(
            ops,
            [
                json!({"actor": "cli:ops", "op": "pause", "rows": 1}),
                json!({"actor": "api:oncall", "op": "pause", "rows": 1}),
                json!({"actor": "cli:ops", "op": "resume", "rows": 1}),
                json!({"actor": "cli:ops", "op": "resume", "rows": 0}),
            ]
        );
    }
}
