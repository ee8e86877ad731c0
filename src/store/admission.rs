//! What an admission reads before it decides, in one go: the alert keys that already have runs,
//! the playbooks' open runs, the alerts inside their cooldown windows and the global pause. On
//! PostgreSQL the four reads are one statement (one round trip for the batch's writer instead of
//! four); on SQLite, where a statement costs no round trip, they are the four statements of
//! [`super::alerts`], [`super::guards`] and [`super::pause`]. On PostgreSQL the same statement
//! draws the ids the batch's writes asked for ([`Writes::want`]).

use std::collections::{HashMap, HashSet};

use serde_json::Value as Json;
use sqlx::Row;

use super::{
    alerts::{self, RunKey},
    batch::Writes,
    guards::{self, CoolKey, Paused},
    pause, DbError, Tx,
};
use crate::status::RunStatus;

/// What [`read`] found.
#[derive(Debug, Default)]
pub struct Found {
    /// The run each alert key already has.
    pub taken: HashMap<RunKey, i64>,
    /// The open runs of each playbook that has any.
    pub open: HashMap<String, i64>,
    /// The alerts with a run of their playbook inside their cooldown window.
    pub cooled: HashSet<CoolKey>,
    pub paused: Option<Paused>,
}

/// Reads, inside the deciding transaction, the runs of `keys`, the open runs of `playbooks`, which
/// of `cooling` (each with the start of its window) are inside their cooldown, and the pause; on
/// PostgreSQL also the ids `writes` wants, handed to it.
pub async fn read(
    tx: &mut Tx,
    keys: &[RunKey],
    playbooks: &[&str],
    cooling: &[(CoolKey, String)],
    writes: &mut Writes,
) -> Result<Found, DbError> {
    let (sequences, counts) = writes.take_wanted();
    let Tx::Postgres(pg) = tx else {
        return Ok(Found {
            taken: alerts::runs_for(tx, keys).await?,
            open: guards::open_counts(tx, playbooks).await?,
            cooled: guards::alerts_in_cooldown(tx, cooling).await?,
            paused: pause::get_in(tx).await?,
        });
    };
    let column = |f: fn(&RunKey) -> &str| keys.iter().map(|k| f(k).to_owned()).collect::<Vec<_>>();
    let cool = |f: fn(&(CoolKey, String)) -> &str| {
        cooling.iter().map(|k| f(k).to_owned()).collect::<Vec<_>>()
    };
    let rows = sqlx::query(READ)
        .bind(column(|k| &k.playbook))
        .bind(column(|k| &k.fingerprint))
        .bind(column(|k| &k.starts_at))
        .bind(column(|k| &k.kind))
        .bind(playbooks)
        .bind(cool(|(k, _)| &k.playbook))
        .bind(cool(|(k, _)| &k.fingerprint))
        .bind(cool(|(k, _)| &k.kind))
        .bind(cool(|(_, since)| since))
        .bind(RunStatus::Skipped.as_str())
        .bind(sequences.clone())
        .bind(counts)
        .fetch_all(&mut **pg)
        .await?;
    // Decoded by column, not through `decode::pg_row`: a batch of 64 reads some 200 rows (most of
    // them drawn ids), and a JSON object per row was a tenth of the writer's time inside the
    // guard locks.
    let mut found = Found::default();
    for row in &rows {
        let text = |i: usize| -> Result<String, DbError> {
            Ok(row.try_get::<Option<String>, _>(i)?.unwrap_or_default())
        };
        let n: Option<i64> = row.try_get(5)?;
        match row.try_get::<&str, _>(0)? {
            "taken" => {
                let key = RunKey {
                    playbook: text(1)?,
                    fingerprint: text(2)?,
                    starts_at: text(3)?,
                    kind: text(4)?,
                };
                if let Some(run) = n {
                    found.taken.insert(key, run);
                }
            }
            "open" => {
                if let Some(n) = n {
                    found.open.insert(text(1)?, n);
                }
            }
            "cool" => {
                found.cooled.insert(CoolKey {
                    playbook: text(1)?,
                    fingerprint: text(2)?,
                    kind: text(4)?,
                });
            }
            "id" => {
                let sequence = row.try_get::<Option<&str>, _>(1)?.unwrap_or_default();
                let drawn = sequences.iter().find(|s| **s == sequence);
                if let (Some(sequence), Some(id)) = (drawn, n) {
                    writes.drawn(sequence, id);
                }
            }
            "paused" => {
                let [reason, by, since] = [text(1)?, text(2)?, text(3)?].map(Json::from);
                found.paused = Some(pause::from_columns(&reason, &by, &since));
            }
            _ => {}
        }
    }
    Ok(found)
}

/// The four reads of [`read`] on PostgreSQL, as one statement: each row says which it answers
/// (`what`), in the columns `a` to `d` and `n`. The keys travel as one array per column; the
/// lookups are the same as the separate statements' (by the alert keys' primary key, whose leading
/// columns and included decision time also answer the cooldown, and the open-run counters'), and
/// the transaction plans them without sequential scans.
/// The last part draws `$12[i]` ids from the sequence named `$11[i]` (names this process gives,
/// bound as values).
const READ: &str = "\
SELECT 'taken' AS what, r.playbook AS a, r.fingerprint AS b, r.starts_at AS c, r.kind AS d, r.run_id AS n \
FROM UNNEST(CAST($1 AS TEXT[]), CAST($2 AS TEXT[]), CAST($3 AS TEXT[]), CAST($4 AS TEXT[])) AS k(p, f, s, kd) \
JOIN runbook_alert_runs r ON r.playbook = k.p AND r.fingerprint = k.f AND r.starts_at = k.s AND r.kind = k.kd \
UNION ALL \
SELECT 'open', o.playbook, NULL, NULL, NULL, o.open FROM runbook_open_runs o \
WHERE o.playbook = ANY(CAST($5 AS TEXT[])) \
UNION ALL \
SELECT DISTINCT 'cool', a.playbook, a.fingerprint, NULL, a.kind, CAST(NULL AS BIGINT) \
FROM UNNEST(CAST($6 AS TEXT[]), CAST($7 AS TEXT[]), CAST($8 AS TEXT[]), CAST($9 AS TEXT[])) AS k(p, f, kd, s) \
JOIN runbook_alert_runs a ON a.playbook = k.p AND a.fingerprint = k.f AND a.kind = k.kd \
AND a.decided_at >= CAST(k.s AS TIMESTAMPTZ) \
JOIN runbook_runs r ON r.id = a.run_id WHERE r.status <> $10 \
UNION ALL \
SELECT 'paused', reason, paused_by, to_char(since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), NULL, NULL \
FROM runbook_pause WHERE id = 1 \
UNION ALL \
SELECT 'id', k.s, NULL, NULL, NULL, nextval(CAST(k.s AS REGCLASS)) \
FROM UNNEST(CAST($11 AS TEXT[]), CAST($12 AS INT8[])) AS k(s, c) CROSS JOIN LATERAL generate_series(1, k.c) AS g";
