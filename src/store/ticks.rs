//! Schedule ticks (`runbook_schedule_ticks`): one row per (playbook, scheduled time) that a
//! scheduler of `runbook serve` fired, whether it ran, ran as the catch-up, or was skipped.
//!
//! The primary key is what makes a tick fire once across replicas: firing a tick is inserting its
//! row with `ON CONFLICT DO NOTHING` in a transaction ([`claim`]); only the replica whose insert
//! took the row holds a [`Claim`], enqueues the run's command in the same transaction (through
//! [`Claim::tx`]) and commits with the command's id ([`Claim::commit`]). A replica that loses the
//! race, or fails half-way, leaves nothing behind.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{runs::timestamp, Db, DbError, Tx};
use crate::{duration::Dur, template::Dialect};

/// What a fired tick did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Fired on time: a run of its own.
    Run,
    /// The newest of ticks missed while no scheduler ran; its run stands for all of them.
    CatchUp,
    /// Missed, and no run of its own.
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Run => "run",
            Outcome::CatchUp => "catch_up",
            Outcome::Skipped => "skipped",
        }
    }

    fn parse(s: &str) -> Outcome {
        match s {
            "catch_up" => Outcome::CatchUp,
            "skipped" => Outcome::Skipped,
            _ => Outcome::Run,
        }
    }
}

/// A tick about to be recorded.
#[derive(Clone, Debug)]
pub struct NewTick<'a> {
    pub playbook: &'a str,
    pub scheduled_at: DateTime<Utc>,
    pub fired_at: DateTime<Utc>,
    pub outcome: Outcome,
    /// The process firing it.
    pub fired_by: &'a str,
}

/// A recorded tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tick {
    pub playbook: String,
    pub scheduled_at: DateTime<Utc>,
    pub fired_at: DateTime<Utc>,
    pub outcome: Outcome,
    pub command_id: Option<i64>,
    pub fired_by: String,
}

/// A tick this process took: its row is inserted in [`Claim::tx`], not yet committed.
pub struct Claim {
    tx: Tx,
    playbook: String,
    scheduled_at: DateTime<Utc>,
}

/// Inserts the tick's row in a new transaction. `None` when the row is there already (another
/// replica fired the tick): nothing was written and nothing is to be done.
///
/// The transaction is the playbook's guard transaction ([`super::guards::begin`]), so the run
/// the tick starts is admitted under the playbook's guards like any other.
pub async fn claim(db: &Db, tick: &NewTick<'_>) -> Result<Option<Claim>, DbError> {
    let mut tx = super::guards::begin(db, &[tick.playbook]).await?;
    let taken = match &mut tx {
        Tx::Sqlite(tx) => sqlx::query(
            "INSERT INTO runbook_schedule_ticks (playbook, scheduled_at, fired_at, outcome, fired_by) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        )
        .bind(tick.playbook)
        .bind(timestamp(tick.scheduled_at))
        .bind(timestamp(tick.fired_at))
        .bind(tick.outcome.as_str())
        .bind(tick.fired_by)
        .execute(&mut **tx)
        .await?
        .rows_affected(),
        Tx::Postgres(tx) => sqlx::query(
            "INSERT INTO runbook_schedule_ticks (playbook, scheduled_at, fired_at, outcome, fired_by) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(tick.playbook)
        .bind(tick.scheduled_at)
        .bind(tick.fired_at)
        .bind(tick.outcome.as_str())
        .bind(tick.fired_by)
        .execute(&mut **tx)
        .await?
        .rows_affected(),
    };
    Ok((taken == 1).then(|| Claim {
        tx,
        playbook: tick.playbook.to_owned(),
        scheduled_at: tick.scheduled_at,
    }))
}

impl Claim {
    /// The claim's transaction, for the writes that go with the tick (its run's command).
    pub fn tx(&mut self) -> &mut Tx {
        &mut self.tx
    }

    /// Records the run's command (if the tick has a run) on the tick's row and commits.
    pub async fn commit(mut self, command_id: Option<i64>) -> Result<(), DbError> {
        if let Some(id) = command_id {
            match &mut self.tx {
                Tx::Sqlite(tx) => {
                    sqlx::query(
                        "UPDATE runbook_schedule_ticks SET command_id = ?1 \
                         WHERE playbook = ?2 AND scheduled_at = ?3",
                    )
                    .bind(id)
                    .bind(&self.playbook)
                    .bind(timestamp(self.scheduled_at))
                    .execute(&mut **tx)
                    .await?;
                }
                Tx::Postgres(tx) => {
                    sqlx::query(
                        "UPDATE runbook_schedule_ticks SET command_id = $1 \
                         WHERE playbook = $2 AND scheduled_at = $3",
                    )
                    .bind(id)
                    .bind(&self.playbook)
                    .bind(self.scheduled_at)
                    .execute(&mut **tx)
                    .await?;
                }
            }
        }
        self.tx.commit().await
    }
}

/// The statement that deletes the ticks fired longer than `older_than` ago, except each
/// playbook's newest: the scheduler counts missed ticks from it, so a playbook that fires less
/// often than the retention still gets its catch-up run after a downtime.
pub fn prune_sql(d: Dialect, older_than: Dur) -> (String, Vec<serde_json::Value>) {
    let sql = format!(
        "DELETE FROM runbook_schedule_ticks WHERE fired_at < {} \
         AND scheduled_at < (SELECT MAX(n.scheduled_at) FROM runbook_schedule_ticks n \
                             WHERE n.playbook = runbook_schedule_ticks.playbook)",
        d.ago(older_than)
    );
    (sql, vec![])
}

const COLUMNS: &str = "t.playbook, t.scheduled_at, t.fired_at, t.outcome, t.command_id, t.fired_by";

/// The newest recorded tick of each of `playbooks` that has one: an index lookup per playbook,
/// however many ticks the table holds (it is read at every pass of every replica's scheduler).
pub async fn latest(db: &Db, playbooks: &[String]) -> Result<BTreeMap<String, Tick>, DbError> {
    let ticks = match db {
        Db::Postgres(pool) => {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM UNNEST($1::text[]) AS p(name) CROSS JOIN LATERAL \
                 (SELECT * FROM runbook_schedule_ticks WHERE playbook = p.name \
                  ORDER BY scheduled_at DESC LIMIT 1) t"
            ))
            .bind(playbooks)
            .fetch_all(pool)
            .await?;
            rows.iter().map(pg_tick).collect::<Vec<_>>()
        }
        Db::Sqlite(pool) => {
            let sql = format!(
                "SELECT {COLUMNS} FROM runbook_schedule_ticks t WHERE t.playbook = ?1 \
                 ORDER BY t.scheduled_at DESC LIMIT 1"
            );
            let mut ticks = Vec::new();
            for name in playbooks {
                if let Some(row) = sqlx::query(&sql).bind(name).fetch_optional(pool).await? {
                    ticks.push(sqlite_tick(&row));
                }
            }
            ticks
        }
    };
    Ok(ticks.into_iter().map(|t| (t.playbook.clone(), t)).collect())
}

/// Every recorded tick of `playbook`, oldest first.
pub async fn of_playbook(db: &Db, playbook: &str) -> Result<Vec<Tick>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM runbook_schedule_ticks t WHERE t.playbook = $1 ORDER BY t.scheduled_at"
    );
    match db {
        Db::Sqlite(pool) => {
            let rows = sqlx::query(&super::dollar_to_question(&sql))
                .bind(playbook)
                .fetch_all(pool)
                .await?;
            Ok(rows.iter().map(sqlite_tick).collect())
        }
        Db::Postgres(pool) => {
            let rows = sqlx::query(&sql).bind(playbook).fetch_all(pool).await?;
            Ok(rows.iter().map(pg_tick).collect())
        }
    }
}

fn parse_ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn sqlite_tick(r: &sqlx::sqlite::SqliteRow) -> Tick {
    Tick {
        playbook: r.get(0),
        scheduled_at: parse_ts(r.get(1)),
        fired_at: parse_ts(r.get(2)),
        outcome: Outcome::parse(r.get(3)),
        command_id: r.get(4),
        fired_by: r.get(5),
    }
}

fn pg_tick(r: &sqlx::postgres::PgRow) -> Tick {
    Tick {
        playbook: r.get(0),
        scheduled_at: r.get(1),
        fired_at: r.get(2),
        outcome: Outcome::parse(r.get(3)),
        command_id: r.get(4),
        fired_by: r.get(5),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    async fn fresh() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("runbook.db").display());
        let db = Db::connect(&url, false, 4).await.unwrap();
        db.migrate().await.unwrap();
        (dir, db)
    }

    fn tick(playbook: &str, secs: i64, outcome: Outcome) -> NewTick<'_> {
        let scheduled_at = Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap();
        NewTick {
            playbook,
            scheduled_at,
            fired_at: scheduled_at + chrono::Duration::milliseconds(250),
            outcome,
            fired_by: "test",
        }
    }

    #[tokio::test]
    async fn a_tick_is_claimed_once_and_a_dropped_claim_leaves_nothing() {
        let (_dir, db) = fresh().await;
        let first = tick("p", 0, Outcome::Run);
        let taken = claim(&db, &first).await.unwrap().expect("the first claim");
        taken.commit(Some(42)).await.unwrap();
        assert!(claim(&db, &first).await.unwrap().is_none(), "taken already");
        // A claim dropped before its commit rolls back.
        drop(claim(&db, &tick("p", 60, Outcome::Run)).await.unwrap());
        claim(&db, &tick("q", 0, Outcome::Skipped))
            .await
            .unwrap()
            .unwrap()
            .commit(None)
            .await
            .unwrap();
        let p = of_playbook(&db, "p").await.unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].command_id, Some(42));
        assert_eq!(p[0].scheduled_at, first.scheduled_at);
        assert_eq!(p[0].fired_at, first.fired_at);
        let names = ["p", "q", "r"].map(String::from);
        let latest = latest(&db, &names).await.unwrap();
        assert_eq!(latest.len(), 2, "r has none");
        assert_eq!(latest["q"].outcome, Outcome::Skipped);
        assert_eq!(latest["q"].command_id, None);
    }
}
