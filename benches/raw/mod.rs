//! The raw SQL loops the queue benchmark measures runbook against: the same table, the same pool
//! (`Db::connect`), one statement at a time, nothing but the statements. Included by
//! `benches/queue.rs` with `#[path]` (a folder, so cargo does not take it for a benchmark of its
//! own).

use runbook::store::Db;
use serde_json::json;

use super::{completion_rate, fill, N};

/// The raw-SQL baselines on the same table: claim a batch, commit, complete by ids, commit.
/// `locked`: the claim also takes each claimed command's entity lock, as runbook's locked path
/// does (the same `work_state` upsert: where the lock is free or expired and no older command of
/// the entity is pending), and the completion releases it.
pub async fn rate(url: &str, batch: u32, locked: bool) -> f64 {
    let db = Db::connect(url, false, 2).await.unwrap();
    db.migrate().await.unwrap();
    db.sql("DELETE FROM command_queue", vec![]).await.unwrap();
    fill(&db).await;
    let done = match &db {
        Db::Postgres(pool) if locked => pg_locked(pool, batch).await,
        Db::Postgres(pool) => pg(pool, batch).await,
        Db::Sqlite(pool) if locked => sqlite_locked(pool, batch).await,
        Db::Sqlite(pool) => sqlite(pool, batch).await,
    };
    assert_eq!(done, N);
    if locked {
        let held = db
            .sql(
                "SELECT COUNT(*) AS n FROM work_state WHERE state = 'updating'",
                vec![],
            )
            .await
            .unwrap()
            .rows[0]["n"]
            .as_i64();
        assert_eq!(held, Some(0), "raw locked: every lock released");
    }
    let rate = completion_rate(&db, batch).await;
    db.close().await;
    rate
}

async fn pg(pool: &sqlx::PgPool, batch: u32) -> usize {
    let mut done = 0;
    loop {
        let mut tx = pool.begin().await.unwrap();
        let ids: Vec<i64> = sqlx::query_scalar(
            "UPDATE command_queue SET status = 'processing', locked_by = 'raw', locked_until = NOW() + interval '30 seconds', \
                    attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM command_queue WHERE status = 'pending' AND run_at <= NOW() \
                          ORDER BY priority DESC, run_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id",
        )
        .bind(batch as i64)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        if ids.is_empty() {
            return done;
        }
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("UPDATE command_queue SET status = 'completed', completed_at = NOW(), updated_at = NOW() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        done += ids.len();
    }
}

async fn pg_locked(pool: &sqlx::PgPool, batch: u32) -> usize {
    let mut done = 0;
    loop {
        let mut tx = pool.begin().await.unwrap();
        let claimed: Vec<(i64, bool)> = sqlx::query_as(
            "WITH c AS ( \
               UPDATE command_queue SET status = 'processing', locked_by = 'raw', locked_until = NOW() + interval '30 seconds', \
                      attempts = attempts + 1 \
               WHERE id IN (SELECT id FROM command_queue WHERE status = 'pending' AND run_at <= NOW() \
                            ORDER BY priority DESC, run_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) \
               RETURNING id, entity, entity_id, priority), \
             l AS ( \
               INSERT INTO work_state (entity, entity_id, state, locked_at, locked_by, command_id, updated_at) \
               SELECT entity, entity_id, 'updating', NOW(), 'raw', id, NOW() FROM c \
               WHERE (SELECT o.id FROM command_queue o WHERE o.status = 'pending' AND o.entity = c.entity \
                      AND o.entity_id = c.entity_id AND o.id < c.id AND o.priority >= c.priority LIMIT 1) IS NULL \
               ON CONFLICT (entity, entity_id) DO UPDATE SET state = 'updating', locked_at = NOW(), \
                  locked_by = EXCLUDED.locked_by, command_id = EXCLUDED.command_id, updated_at = NOW() \
               WHERE work_state.state <> 'updating' OR work_state.locked_at < NOW() - interval '5 minutes' \
               RETURNING command_id) \
             SELECT c.id, l.command_id IS NOT NULL FROM c LEFT JOIN l ON l.command_id = c.id",
        )
        .bind(batch as i64)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        if claimed.is_empty() {
            return done;
        }
        assert!(
            claimed.iter().all(|(_, held)| *held),
            "raw locked: a lock was refused"
        );
        let ids: Vec<i64> = claimed.iter().map(|(id, _)| *id).collect();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(
            "WITH done AS ( \
               UPDATE command_queue SET status = 'completed', completed_at = NOW(), updated_at = NOW() \
               WHERE id = ANY($1) RETURNING id, entity, entity_id) \
             UPDATE work_state w SET state = 'idle', locked_at = NULL, locked_by = NULL, command_id = NULL, updated_at = NOW() \
             FROM done WHERE w.entity = done.entity AND w.entity_id = done.entity_id AND w.command_id = done.id",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        done += ids.len();
    }
}

async fn sqlite(pool: &sqlx::SqlitePool, batch: u32) -> usize {
    let mut done = 0;
    loop {
        let mut tx = pool.begin().await.unwrap();
        let ids: Vec<i64> = sqlx::query_scalar(
            "UPDATE command_queue SET status = 'processing', locked_by = 'raw', \
                    locked_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+30 seconds'), attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM command_queue WHERE status = 'pending' AND run_at <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                          ORDER BY priority DESC, run_at, id LIMIT ?1) RETURNING id",
        )
        .bind(batch as i64)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        if ids.is_empty() {
            return done;
        }
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(
            "UPDATE command_queue SET status = 'completed', completed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
                    updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json!(ids).to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        done += ids.len();
    }
}

async fn sqlite_locked(pool: &sqlx::SqlitePool, batch: u32) -> usize {
    const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
    let lock = format!(
        "INSERT INTO work_state (entity, entity_id, state, locked_at, locked_by, command_id, updated_at) \
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), 'updating', {NOW}, 'raw', json_extract(value, '$[2]'), {NOW} \
         FROM json_each(?1) WHERE NOT EXISTS (SELECT 1 FROM command_queue o WHERE o.status = 'pending' \
           AND o.entity = json_extract(value, '$[0]') AND o.entity_id = json_extract(value, '$[1]') \
           AND o.id < json_extract(value, '$[2]') AND o.priority >= json_extract(value, '$[3]')) \
         ON CONFLICT (entity, entity_id) DO UPDATE SET state = 'updating', locked_at = {NOW}, locked_by = excluded.locked_by, \
            command_id = excluded.command_id, updated_at = {NOW} \
         WHERE work_state.state <> 'updating' OR work_state.locked_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-300 seconds')"
    );
    let mut done = 0;
    loop {
        let mut tx = pool.begin().await.unwrap();
        let claimed: Vec<(i64, String, String, i32)> = sqlx::query_as(&format!(
            "UPDATE command_queue SET status = 'processing', locked_by = 'raw', \
                    locked_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+30 seconds'), attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM command_queue WHERE status = 'pending' AND run_at <= {NOW} \
                          ORDER BY priority DESC, run_at, id LIMIT ?1) RETURNING id, entity, entity_id, priority"
        ))
        .bind(batch as i64)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        if claimed.is_empty() {
            tx.commit().await.unwrap();
            return done;
        }
        let items: Vec<serde_json::Value> = claimed
            .iter()
            .map(|(id, e, i, p)| json!([e, i, id, p]))
            .collect();
        let locked = sqlx::query(&lock)
            .bind(json!(items).to_string())
            .execute(&mut *tx)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(
            locked as usize,
            claimed.len(),
            "raw locked: a lock was refused"
        );
        tx.commit().await.unwrap();
        let ids = json!(claimed.iter().map(|c| c.0).collect::<Vec<_>>()).to_string();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(&format!(
            "UPDATE command_queue SET status = 'completed', completed_at = {NOW}, updated_at = {NOW} \
             WHERE id IN (SELECT value FROM json_each(?1))"
        ))
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(&format!(
            "UPDATE work_state SET state = 'idle', locked_at = NULL, locked_by = NULL, command_id = NULL, updated_at = {NOW} \
             WHERE command_id IN (SELECT value FROM json_each(?1)) AND state = 'updating'"
        ))
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        done += claimed.len();
    }
}
